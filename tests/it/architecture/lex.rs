//! A small Rust lexer for the architecture checks: identifiers, `::`, punctuation and the text
//! of string literals, each with its line. Comments vanish, so a word in a comment or a doc
//! never counts as code; string contents are kept apart so they are never mistaken for paths.
//!
//! It must never need the crate to compile or pull in a parser dependency: the checks read the
//! sources as text, in the spirit of rust-analyzer's tidy tests.

/// One lexed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    /// The contents of a string literal (normal, raw, byte or C string), escapes left as written.
    Str(String),
    /// `::`
    PathSep,
    Punct(char),
    /// Numbers, characters and lifetimes: present only so that neighbours stay neighbours.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    /// 1-based line of the token's first character.
    pub line: usize,
}

impl Token {
    pub fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_ident(&self, word: &str) -> bool {
        self.ident() == Some(word)
    }

    pub fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Vec<Token>,
}

/// Splits Rust source text into tokens.
pub fn lex(src: &str) -> Vec<Token> {
    let mut l = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    while l.pos < l.chars.len() {
        l.step();
    }
    l.out
}

impl Lexer {
    fn peek(&self, ahead: usize) -> char {
        self.chars.get(self.pos + ahead).copied().unwrap_or('\0')
    }

    fn bump(&mut self) -> char {
        let c = self.peek(0);
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        c
    }

    fn push(&mut self, tok: Tok, line: usize) {
        self.out.push(Token { tok, line });
    }

    fn step(&mut self) {
        let line = self.line;
        let c = self.peek(0);
        match c {
            c if c.is_whitespace() => {
                self.bump();
            }
            '/' if self.peek(1) == '/' => self.skip_line(),
            '/' if self.peek(1) == '*' => self.skip_block_comment(),
            '"' => {
                self.bump();
                let s = self.quoted();
                self.push(Tok::Str(s), line);
            }
            '\'' => self.char_or_lifetime(),
            ':' if self.peek(1) == ':' => {
                self.pos += 2;
                self.push(Tok::PathSep, line);
            }
            c if c.is_ascii_digit() => self.number(),
            c if c == '_' || c.is_alphabetic() => self.word(),
            c => {
                self.bump();
                self.push(Tok::Punct(c), line);
            }
        }
    }

    fn skip_line(&mut self) {
        while self.pos < self.chars.len() && self.peek(0) != '\n' {
            self.bump();
        }
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0;
        while self.pos < self.chars.len() {
            if self.peek(0) == '/' && self.peek(1) == '*' {
                depth += 1;
                self.pos += 2;
            } else if self.peek(0) == '*' && self.peek(1) == '/' {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// The rest of a `"…"` literal after its opening quote.
    fn quoted(&mut self) -> String {
        let mut s = String::new();
        while self.pos < self.chars.len() {
            match self.bump() {
                '\\' => {
                    s.push('\\');
                    s.push(self.bump());
                }
                '"' => break,
                c => s.push(c),
            }
        }
        s
    }

    /// The rest of a raw literal after its `r`: `#…#"…"#…#`.
    fn raw(&mut self) -> String {
        let mut hashes = 0;
        while self.peek(0) == '#' {
            hashes += 1;
            self.bump();
        }
        self.bump(); // the opening quote
        let mut s = String::new();
        while self.pos < self.chars.len() {
            let c = self.bump();
            if c == '"' && (0..hashes).all(|i| self.peek(i) == '#') {
                self.pos += hashes;
                break;
            }
            s.push(c);
        }
        s
    }

    fn char_or_lifetime(&mut self) {
        let line = self.line;
        self.bump();
        if self.peek(0) == '\\' {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            self.bump();
            self.bump();
            while self.pos < self.chars.len() && self.bump() != '\'' {}
        } else if self.peek(1) == '\'' {
            self.pos += 2;
        } else {
            // A lifetime or label: its name is no path.
            while self.peek(0) == '_' || self.peek(0).is_alphanumeric() {
                self.bump();
            }
        }
        self.push(Tok::Other, line);
    }

    fn number(&mut self) {
        let line = self.line;
        while self.peek(0).is_alphanumeric()
            || self.peek(0) == '_'
            || (self.peek(0) == '.' && self.peek(1).is_ascii_digit())
        {
            self.bump();
        }
        self.push(Tok::Other, line);
    }

    fn word(&mut self) {
        let line = self.line;
        let start = self.pos;
        while self.peek(0) == '_' || self.peek(0).is_alphanumeric() {
            self.bump();
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        let next = self.peek(0);
        let string_prefix = matches!(word.as_str(), "r" | "b" | "br" | "c" | "cr");
        if string_prefix && word.ends_with('r') && (next == '"' || next == '#') {
            if next == '#' && self.peek(1) != '"' && self.peek(1) != '#' {
                // `r#ident`: a raw identifier.
                self.bump();
                return self.word();
            }
            let s = self.raw();
            self.push(Tok::Str(s), line);
        } else if string_prefix && next == '"' {
            self.bump();
            let s = self.quoted();
            self.push(Tok::Str(s), line);
        } else if word == "b" && next == '\'' {
            self.char_or_lifetime();
        } else {
            self.push(Tok::Ident(word), line);
        }
    }
}
