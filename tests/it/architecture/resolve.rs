//! The crate as a whole: which file defines each module and item, and which file each path in
//! the code names.
//!
//! Resolution follows Rust's rules as far as this crate uses them: `crate::`, `self::`,
//! `super::` (also from inline modules), a child module's relative path, names brought in by
//! `use` (also `as` and `{self}`), and glob imports. A `pub use` re-export is transparent: a path
//! through it names the file that defines the item, and the re-export itself names nothing (like
//! `mod child;`, it only says where a name is visible). Paths into other crates resolve to
//! nothing. It must never guess: what it cannot resolve, it leaves out.

use std::collections::{BTreeMap, BTreeSet};

use super::parse::{SourceFile, parse};

/// Where one file names an item of another file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub line: usize,
    /// The path as written (or the imported name, for a glob).
    pub path: String,
}

pub struct Crate {
    pub files: Vec<SourceFile>,
    /// Module path → (file, scope) of its definition.
    modules: BTreeMap<Vec<String>, (usize, usize)>,
    /// (module path, name) → file that defines the item.
    items: BTreeMap<(Vec<String>, String), usize>,
    /// (module path, name) → the absolute path a `pub use` there stands for.
    reexports: BTreeMap<(Vec<String>, String), Vec<String>>,
    /// Files that are test-only: declared under `#[cfg(test)]`, or inside such a module.
    pub test_files: BTreeSet<usize>,
}

impl Crate {
    /// Builds the model from `(path relative to src/, text)` pairs. `main.rs` is a crate of its
    /// own (it reaches the library as `keysweep::`), so it is kept only for the text checks.
    pub fn new(sources: &[(String, String)]) -> Crate {
        let files: Vec<SourceFile> = sources.iter().map(|(rel, text)| parse(rel, text)).collect();
        let mut c = Crate {
            files,
            modules: BTreeMap::new(),
            items: BTreeMap::new(),
            reexports: BTreeMap::new(),
            test_files: BTreeSet::new(),
        };
        c.index();
        c
    }

    fn in_library(&self, file: usize) -> bool {
        self.files[file].rel != "main.rs"
    }

    fn index(&mut self) {
        for (fi, f) in self.files.iter().enumerate() {
            if f.rel == "main.rs" {
                continue;
            }
            for (si, s) in f.scopes.iter().enumerate() {
                self.modules.insert(s.path.clone(), (fi, si));
            }
            for item in &f.items {
                let module = f.scopes[item.scope].path.clone();
                self.items.insert((module, item.name.clone()), fi);
            }
        }
        let mut reexports = BTreeMap::new();
        for (fi, f) in self.files.iter().enumerate() {
            for u in f.uses.iter().filter(|u| u.public) {
                if let (Some(alias), Some(target)) = (&u.alias, self.absolute(fi, u.scope, &u.path))
                {
                    reexports.insert((f.scopes[u.scope].path.clone(), alias.clone()), target);
                }
            }
        }
        self.reexports = reexports;
        self.mark_test_files();
    }

    fn mark_test_files(&mut self) {
        // A test-only file makes its children test-only too: iterate to a fixpoint.
        loop {
            let mut found = Vec::new();
            for (fi, f) in self.files.iter().enumerate() {
                let parent_test = self.test_files.contains(&fi);
                for child in f.children.iter().filter(|c| c.test || parent_test) {
                    let mut path = f.scopes[child.scope].path.clone();
                    path.push(child.name.clone());
                    found.extend(self.file_of_module(&path));
                }
            }
            let before = self.test_files.len();
            self.test_files.extend(found);
            if self.test_files.len() == before {
                return;
            }
        }
    }

    fn file_of_module(&self, path: &[String]) -> Option<usize> {
        self.modules.get(path).map(|&(fi, _)| fi)
    }

    /// The index of the file at `rel` (e.g. `notify/deliver.rs`).
    pub fn file(&self, rel: &str) -> Option<usize> {
        self.files.iter().position(|f| f.rel == rel)
    }

    /// Turns a path as written in `file`/`scope` into an absolute one (without `crate`), or
    /// `None` when it leads out of the crate.
    pub fn absolute(&self, file: usize, scope: usize, path: &[String]) -> Option<Vec<String>> {
        if !self.in_library(file) {
            return None;
        }
        let f = &self.files[file];
        let here = &f.scopes[scope].path;
        let (first, rest) = path.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => {
                let mut p = here.clone();
                p.pop()?;
                let mut rest = rest;
                while let Some(("super", r)) = rest.split_first().map(|(a, r)| (a.as_str(), r)) {
                    p.pop()?;
                    rest = r;
                }
                return Some(p.into_iter().chain(rest.iter().cloned()).collect());
            }
            name => {
                let mut child = here.clone();
                child.push(name.to_string());
                if self.modules.contains_key(&child) {
                    child.pop();
                    child
                } else {
                    let target = self.alias(file, scope, name)?;
                    return Some(target.into_iter().chain(rest.iter().cloned()).collect());
                }
            }
        };
        if first != "crate" && first != "self" {
            base.push(first.clone());
        }
        Some(base.into_iter().chain(rest.iter().cloned()).collect())
    }

    /// What `name` stands for in `scope` of `file` through a (non-glob) `use`, looking outwards
    /// through the enclosing inline modules.
    fn alias(&self, file: usize, scope: usize, name: &str) -> Option<Vec<String>> {
        let f = &self.files[file];
        let mut path = f.scopes[scope].path.clone();
        loop {
            let found = f
                .uses
                .iter()
                .find(|u| u.alias.as_deref() == Some(name) && f.scopes[u.scope].path == path);
            if let Some(u) = found {
                // Guard against `use x as x;` style self-reference.
                if u.path.first().map(String::as_str) == Some(name) && u.path.len() == 1 {
                    return None;
                }
                return self.absolute(file, u.scope, &u.path);
            }
            if path.len() <= f.scopes[0].path.len() {
                return None;
            }
            path.pop();
        }
    }

    /// The file that defines what an absolute path names, following re-exports.
    pub fn defining_file(&self, path: &[String]) -> Option<usize> {
        self.defining(path, 0)
    }

    fn defining(&self, path: &[String], hops: usize) -> Option<usize> {
        if hops > 16 {
            return None;
        }
        // The longest prefix that is a module; the next segment is the item.
        let split = (0..path.len())
            .rev()
            .find(|&n| self.modules.contains_key(&path[..n]))?;
        let module = &path[..split];
        let name = path.get(split)?;
        let key = (module.to_vec(), name.clone());
        if let Some(&fi) = self.items.get(&key) {
            return Some(fi);
        }
        let target = self.reexports.get(&key)?;
        let full: Vec<String> = target.iter().chain(&path[split + 1..]).cloned().collect();
        if full == path {
            return None;
        }
        self.defining(&full, hops + 1)
    }

    /// Every place a file names an item defined in another file of the library.
    pub fn edges(&self) -> Vec<Edge> {
        let mut out = BTreeSet::new();
        for (fi, f) in self.files.iter().enumerate() {
            if !self.in_library(fi) {
                continue;
            }
            let mut add = |path: &[String], scope: usize, line: usize, shown: String| {
                if let Some(abs) = self.absolute(fi, scope, path)
                    && let Some(to) = self.defining_file(&abs)
                    && to != fi
                {
                    out.insert(Edge {
                        from: fi,
                        to,
                        line,
                        path: shown,
                    });
                }
            };
            for u in f.uses.iter().filter(|u| !u.public && u.alias.is_some()) {
                add(&u.path, u.scope, u.line, u.path.join("::"));
            }
            for p in &f.paths {
                add(&p.segments, p.scope, p.line, p.segments.join("::"));
            }
            out.extend(self.glob_edges(fi));
        }
        out.into_iter().collect()
    }

    /// Names used in a file that a glob import (`use a::b::*`) brings from another file.
    fn glob_edges(&self, fi: usize) -> Vec<Edge> {
        let f = &self.files[fi];
        let mut out = Vec::new();
        for u in f.uses.iter().filter(|u| u.alias.is_none()) {
            let Some(module) = self.absolute(fi, u.scope, &u.path) else {
                continue;
            };
            let scope_path = &f.scopes[u.scope].path;
            for (ti, t) in f.tokens.iter().enumerate() {
                let Some(word) = t.ident() else { continue };
                if !f.scopes[f.token_scope[ti]].path.starts_with(scope_path) {
                    continue;
                }
                let mut path = module.clone();
                path.push(word.to_string());
                if let Some(to) = self.defining_file(&path)
                    && to != fi
                {
                    out.push(Edge {
                        from: fi,
                        to,
                        line: t.line,
                        path: format!("{}::* ({word})", u.path.join("::")),
                    });
                }
            }
        }
        out
    }
}
