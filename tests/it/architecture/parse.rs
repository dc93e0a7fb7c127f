//! What one source file holds, as far as the architecture checks care: the module it is, the
//! items it defines, its `use` declarations, the paths its code names, its child modules and which
//! of it is test-only.
//!
//! It reads tokens, not a syntax tree: it must never need a parser dependency, and it only has to
//! be exact for the shapes this crate uses (items at module level, `use` trees, `a::b::c` paths,
//! inline `mod x { … }` blocks).

use super::lex::{Tok, Token, lex};

/// Words that can follow an item keyword without being the item's name.
const KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod", "unsafe", "async",
    "extern", "impl", "pub", "use", "mut", "_",
];

/// Keywords that introduce a named item.
const ITEM_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "union",
];

/// One module scope: the file's own module, or an inline `mod x { … }` inside it.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Full module path from the crate root, e.g. `["notify", "deliver", "tests"]`.
    pub path: Vec<String>,
    /// Under `#[cfg(test)]`, itself or through a parent.
    pub test: bool,
}

/// A name brought in by `use`.
#[derive(Debug, Clone)]
pub struct UseLeaf {
    pub scope: usize,
    /// The path as written, e.g. `["crate", "notify", "outbox"]`.
    pub path: Vec<String>,
    /// The name it is known by here; `None` for a glob (`*`).
    pub alias: Option<String>,
    /// A `pub use` (any visibility): a re-export.
    pub public: bool,
    pub line: usize,
}

/// A path of two or more segments written in code (`outbox::enqueue`, `crate::x::Y`).
#[derive(Debug, Clone)]
pub struct PathRef {
    pub scope: usize,
    pub segments: Vec<String>,
    pub line: usize,
}

/// An item defined at module level.
#[derive(Debug, Clone)]
pub struct Item {
    pub scope: usize,
    pub name: String,
}

/// A `mod x;` declaration: its file is the child module `x`.
#[derive(Debug, Clone)]
pub struct ChildDecl {
    pub scope: usize,
    pub name: String,
    /// Declared under `#[cfg(test)]` (or inside a test scope): the child is test-only.
    pub test: bool,
}

/// One parsed source file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to `src/`, with `/` separators, e.g. `notify/deliver.rs`.
    pub rel: String,
    pub tokens: Vec<Token>,
    /// Scope of each token.
    pub token_scope: Vec<usize>,
    /// `scopes[0]` is the file's own module.
    pub scopes: Vec<Scope>,
    pub items: Vec<Item>,
    pub uses: Vec<UseLeaf>,
    pub paths: Vec<PathRef>,
    pub children: Vec<ChildDecl>,
    /// Inline `#[cfg(test)] mod … { … }` blocks as inclusive line ranges.
    pub test_lines: Vec<(usize, usize)>,
    pub line_count: usize,
}

/// The module path of a file under `src/`: `lib.rs` is the root, `a/mod.rs` and `a.rs` are `a`.
pub fn module_of(rel: &str) -> Vec<String> {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

pub fn parse(rel: &str, text: &str) -> SourceFile {
    let mut f = SourceFile {
        rel: rel.to_string(),
        tokens: lex(text),
        token_scope: Vec::new(),
        scopes: vec![Scope {
            path: module_of(rel),
            test: false,
        }],
        items: Vec::new(),
        uses: Vec::new(),
        paths: Vec::new(),
        children: Vec::new(),
        test_lines: Vec::new(),
        line_count: text.lines().count(),
    };
    Walker::default().run(&mut f);
    f
}

/// An open inline module: the brace depth its body starts at.
struct Open {
    scope: usize,
    depth: usize,
    first_line: usize,
}

#[derive(Default)]
struct Walker {
    depth: usize,
    stack: Vec<Open>,
    /// An inline module whose `{` comes next: (scope, first line).
    pending: Option<(usize, usize)>,
}

impl Walker {
    fn scope(&self) -> usize {
        self.stack.last().map_or(0, |o| o.scope)
    }

    /// True at the level where a module's items are written.
    fn module_level(&self) -> bool {
        self.depth == self.stack.last().map_or(0, |o| o.depth)
    }

    fn run(&mut self, f: &mut SourceFile) {
        let mut i = 0;
        while i < f.tokens.len() {
            let scope = self.scope();
            f.token_scope.resize(i, scope);
            let t = f.tokens[i].clone();
            match &t.tok {
                Tok::Punct('{') => self.open(),
                Tok::Punct('}') => self.close(f, t.line),
                Tok::Ident(word) if word == "use" => {
                    let public = is_public(&f.tokens, i);
                    let line = t.line;
                    i += 1;
                    parse_use_tree(&f.tokens, &mut i, Vec::new(), &mut |path, alias| {
                        f.uses.push(UseLeaf {
                            scope,
                            path,
                            alias,
                            public,
                            line,
                        });
                    });
                    continue;
                }
                Tok::Ident(word) if self.module_level() => self.item(f, i, word),
                _ => {}
            }
            if let Some(path) = path_at(&f.tokens, i) {
                f.paths.push(PathRef {
                    scope,
                    line: f.tokens[i].line,
                    segments: path,
                });
            }
            i += 1;
        }
        let scope = self.scope();
        f.token_scope.resize(f.tokens.len(), scope);
    }

    fn open(&mut self) {
        self.depth += 1;
        if let Some((scope, first_line)) = self.pending.take() {
            self.stack.push(Open {
                scope,
                depth: self.depth,
                first_line,
            });
        }
    }

    fn close(&mut self, f: &mut SourceFile, line: usize) {
        if let Some(open) = self.stack.last()
            && open.depth == self.depth
        {
            if f.scopes[open.scope].test && !f.scopes[self.parent_of_top()].test {
                f.test_lines.push((open.first_line, line));
            }
            self.stack.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }

    fn parent_of_top(&self) -> usize {
        match self.stack.len() {
            0 | 1 => 0,
            n => self.stack[n - 2].scope,
        }
    }

    /// An item keyword at module level: records the item, a `mod x;` child or an inline module.
    fn item(&mut self, f: &mut SourceFile, i: usize, word: &str) {
        let scope = self.scope();
        let Some(name) = f.tokens.get(i + 1).and_then(Token::ident) else {
            return;
        };
        if KEYWORDS.contains(&name) {
            return;
        }
        let name = name.to_string();
        if word == "mod" {
            let attrs = attributes_before(&f.tokens, i);
            let test = f.scopes[scope].test || attrs.iter().any(|a| a == "cfg(test)");
            if f.tokens.get(i + 2).is_some_and(|t| t.is_punct(';')) {
                f.children.push(ChildDecl { scope, name, test });
                return;
            }
            let mut path = f.scopes[scope].path.clone();
            path.push(name.clone());
            f.scopes.push(Scope { path, test });
            let first_line = attrs_first_line(&f.tokens, i);
            self.pending = Some((f.scopes.len() - 1, first_line));
            f.items.push(Item { scope, name });
        } else if ITEM_KEYWORDS.contains(&word) {
            f.items.push(Item { scope, name });
        }
    }
}

/// True when the `use` at `i` is preceded by a visibility (`pub`, `pub(crate)`, …).
fn is_public(tokens: &[Token], i: usize) -> bool {
    let mut j = i;
    if j > 0 && tokens[j - 1].is_punct(')') {
        while j > 0 && !tokens[j - 1].is_punct('(') {
            j -= 1;
        }
        j = j.saturating_sub(1);
    }
    j > 0 && tokens[j - 1].is_ident("pub")
}

/// The outer attributes written before the item at `i`, as compact text (`cfg(test)`).
pub fn attributes_before(tokens: &[Token], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut j = skip_visibility_back(tokens, i);
    while j >= 2 && tokens[j - 1].is_punct(']') {
        let mut k = j - 1;
        let mut depth = 0;
        loop {
            if tokens[k].is_punct(']') {
                depth += 1;
            } else if tokens[k].is_punct('[') {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            if k == 0 {
                return out;
            }
            k -= 1;
        }
        if k == 0 || !tokens[k - 1].is_punct('#') {
            return out;
        }
        out.push(tokens[k + 1..j - 1].iter().map(token_text).collect());
        j = k - 1;
    }
    out
}

fn attrs_first_line(tokens: &[Token], i: usize) -> usize {
    let mut j = skip_visibility_back(tokens, i);
    while j >= 2 && tokens[j - 1].is_punct(']') {
        while j > 0 && !tokens[j - 1].is_punct('#') {
            j -= 1;
        }
        j = j.saturating_sub(1);
    }
    tokens[j.min(i)].line
}

fn skip_visibility_back(tokens: &[Token], i: usize) -> usize {
    let mut j = i;
    if j > 0 && tokens[j - 1].is_punct(')') {
        let mut k = j - 1;
        while k > 0 && !tokens[k].is_punct('(') {
            k -= 1;
        }
        if k > 0 && tokens[k - 1].is_ident("pub") {
            j = k - 1;
        }
    } else if j > 0 && tokens[j - 1].is_ident("pub") {
        j -= 1;
    }
    j
}

fn token_text(t: &Token) -> String {
    match &t.tok {
        Tok::Ident(s) => s.clone(),
        Tok::Str(s) => format!("{s:?}"),
        Tok::PathSep => "::".to_string(),
        Tok::Punct(c) => c.to_string(),
        Tok::Other => "_".to_string(),
    }
}

/// A path of at least two segments starting at `i` (and not in the middle of a longer one).
fn path_at(tokens: &[Token], i: usize) -> Option<Vec<String>> {
    let first = tokens[i].ident()?;
    if i > 0 && tokens[i - 1].tok == Tok::PathSep {
        return None;
    }
    let mut segments = vec![first.to_string()];
    let mut j = i + 1;
    while j + 1 < tokens.len() && tokens[j].tok == Tok::PathSep {
        match tokens[j + 1].ident() {
            Some(s) => segments.push(s.to_string()),
            None => break,
        }
        j += 2;
    }
    (segments.len() >= 2).then_some(segments)
}

/// Parses one `use` tree from `i`, calling `leaf(path, alias)` for each name it brings in
/// (`alias` is `None` for a glob). Leaves `i` after the tree.
fn parse_use_tree(
    tokens: &[Token],
    i: &mut usize,
    mut path: Vec<String>,
    leaf: &mut dyn FnMut(Vec<String>, Option<String>),
) {
    loop {
        let Some(t) = tokens.get(*i) else { return };
        match &t.tok {
            Tok::PathSep => *i += 1,
            Tok::Ident(s) => {
                path.push(s.clone());
                *i += 1;
                if tokens.get(*i).is_some_and(|t| t.tok == Tok::PathSep) {
                    continue;
                }
                let alias = if tokens.get(*i).is_some_and(|t| t.is_ident("as")) {
                    *i += 2;
                    tokens
                        .get(*i - 1)
                        .and_then(Token::ident)
                        .map(str::to_string)
                } else {
                    None
                };
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                let name = alias.or_else(|| path.last().cloned());
                leaf(path, name);
                return;
            }
            Tok::Punct('{') => {
                *i += 1;
                while let Some(t) = tokens.get(*i) {
                    if t.is_punct('}') {
                        *i += 1;
                        break;
                    }
                    if t.is_punct(',') {
                        *i += 1;
                        continue;
                    }
                    let before = *i;
                    parse_use_tree(tokens, i, path.clone(), leaf);
                    if *i == before {
                        // Something this reader does not know: skip it rather than loop.
                        *i += 1;
                    }
                }
                return;
            }
            Tok::Punct('*') => {
                *i += 1;
                leaf(path, None);
                return;
            }
            _ => return,
        }
    }
}
