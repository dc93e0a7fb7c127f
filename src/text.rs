//! Neutralisers for text that organisation members control (key, project and user names) on
//! its way to a human: one function per kind of output.
//!
//! Any member names their keys, project owners name their projects: those names reach terminals,
//! spreadsheets, Slack and mail clients. Each function here makes a name inert for one output
//! kind: no control or bidirectional-override character (a terminal escape, an OSC 52 clipboard
//! write, a reordered line), no line break where a line is promised (a forged `Status:` line),
//! no formula cell, no live link or mention. Pure: no I/O, no allocation beyond the result, and
//! never used to decide anything (policies match ids, see `policy/rules.rs`).
//!
//! Must never: hide that something was replaced (a replaced character becomes U+FFFD or a
//! visible defanged form), or be skipped for an output that shows a name.

use std::borrow::Cow;

/// Replaces a character that must never reach a human untouched.
const REPLACEMENT: char = '\u{FFFD}';

/// Bidirectional formatting characters: embeddings and overrides (U+202A–202E), isolates
/// (U+2066–2069) and the marks U+200E, U+200F, U+061C. They reorder what a reader sees.
pub fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Characters that show nothing: zero-width ones that hide text inside a word
/// (`ht\u{200B}tp`), fillers and invisible format characters that make two names look alike,
/// and the tag characters and variation selectors that can carry a hidden text. U+FE0F (an
/// emoji's presentation) is let through: alone it hides nothing, and names use it.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180E}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206A}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0E}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// A line break of any kind: the C0/C1 ones and Unicode's line and paragraph separators.
pub fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Whether `c` is never let through by any neutraliser: C0/C1 controls (escape sequences,
/// line breaks, tabs), bidirectional formatting, zero-width characters, line separators.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_bidi(c) || is_invisible(c) || is_line_break(c)
}

/// For a terminal (the scan table, the audit listing, `run --once`, pretty log lines): every
/// unsafe character becomes U+FFFD, everything else is shown as it is.
pub fn terminal(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { REPLACEMENT } else { c })
        .collect()
}

/// For a CSV cell: [`terminal`], and a cell a spreadsheet would evaluate as a formula (first
/// visible character `=`, `+`, `-`, `@` or their full-width forms) gets a leading `'`.
pub fn csv(s: &str) -> String {
    let t = terminal(s);
    if starts_a_formula(&t) {
        format!("'{t}")
    } else {
        t
    }
}

/// Whether a spreadsheet would read a cell starting like `s` as a formula.
fn starts_a_formula(s: &str) -> bool {
    matches!(
        s.chars().find(|c| !c.is_whitespace()),
        Some('=' | '+' | '-' | '@' | '\u{FF1D}' | '\u{FF0B}' | '\u{FF0D}' | '\u{FF20}')
    )
}

/// For a line of a plain-text e-mail, and any one-line summary (a PagerDuty summary, a
/// webhook title): line breaks and tabs become spaces, other unsafe characters U+FFFD, and
/// links are defanged (see [`defang`]).
pub fn mail_text(s: &str) -> String {
    // Most names need nothing but the defanging: no second copy for them. Printable ASCII
    // (almost every name) has nothing unsafe; otherwise `is_unsafe` covers line breaks and tabs.
    let plain_ascii = s.bytes().all(|b| (0x20..0x7f).contains(&b));
    if plain_ascii || !s.chars().any(is_unsafe) {
        return defang(s).into_owned();
    }
    defang(&one_line(s)).into_owned()
}

/// One line of text from elsewhere (a receiver's or relay's error answer): line breaks and
/// tabs become spaces, other unsafe characters U+FFFD. Safe in a log line, a terminal, an
/// alert; nothing is defanged (error texts keep no URL: `notify::scrub` removed them).
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if is_line_break(c) || c == '\t' {
                ' '
            } else if is_unsafe(c) {
                REPLACEMENT
            } else {
                c
            }
        })
        .collect()
}

/// For one-line summaries in JSON payloads (PagerDuty `summary`, webhook `title`): the same as
/// [`mail_text`]. The structured fields of those payloads keep the name as it is, escaped by
/// construction (serde).
pub fn summary(s: &str) -> String {
    mail_text(s)
}

/// For HTML e-mail: [`mail_text`], then HTML-escaped (`&`, `<`, `>`, `"`, `'`).
pub fn mail_html(s: &str) -> String {
    let t = mail_text(s);
    if !t.contains(['&', '<', '>', '"', '\'']) {
        return t;
    }
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// For Slack mrkdwn (sent with `verbatim: true`): [`mail_text`], then `&`, `<`, `>` escaped (so
/// no `<!here>`, `<@U…>`, `<#C…>` or `<url|label>` survives) and the words `@here`,
/// `@channel` and `@everyone` get a full-width `＠`, which Slack never treats as a mention.
pub fn slack(s: &str) -> String {
    let t = mail_text(s);
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    neutralise_mentions(&out)
}

fn neutralise_mentions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('@') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let lower = after.to_ascii_lowercase();
        if ["here", "channel", "everyone"]
            .iter()
            .any(|w| lower.starts_with(w))
        {
            out.push('\u{FF20}');
        } else {
            out.push('@');
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// For a field of a log line: [`terminal`] (the JSON format escapes controls itself, but not
/// bidirectional overrides, and the pretty format escapes nothing).
pub fn log_field(s: &str) -> String {
    terminal(s)
}

/// For JSON shown on a terminal (`scan --format json`, `audit --format json`): `json` is a
/// serialized document; every unsafe character serde leaves raw (DEL, C1 controls,
/// bidirectional formatting, zero-width characters, U+2028/2029) becomes its `\uXXXX` escape.
/// The document stays valid and decodes to the same data: the name is shown as it is.
pub fn json(json: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) && !matches!(c, '\n' | '\r' | '\t') {
            // JSON escapes UTF-16 units: a character beyond the Basic Multilingual Plane (a
            // tag character) is two of them.
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes links inert: `https://evil.example/x` → `hxxps://evil[.]example/x`, any other
/// `scheme://` → `scheme[:]//`, and a dot between a letter or digit and a letter (a bare
/// domain: `evil.example/x`, `www.evil.example`) → `[.]`. The ideographic and full-width full
/// stops count as dots.
pub fn defang(s: &str) -> Cow<'_, str> {
    // Most text has dots that join nothing (`sk-...abcd`, `v1.2`): it comes back as it is,
    // without the copy and the per-character pass of `defang_all` (a digest line's cost).
    if !needs_defang(s) {
        return Cow::Borrowed(s);
    }
    defang_all(s)
}

fn is_dot(c: char) -> bool {
    matches!(c, '.' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}')
}

/// Whether `c`, between `before` and `after`, is a dot that joins two labels of a domain
/// (after a letter, digit, `-` or `_` and before a letter): the dots [`defang`] brackets.
fn joins_labels(before: Option<char>, c: char, after: Option<char>) -> bool {
    is_dot(c)
        && before.is_some_and(|b| b.is_alphanumeric() || b == '-' || b == '_')
        && after.is_some_and(char::is_alphabetic)
}

/// Whether [`defang_all`] changes anything in `s`: it has a `://`, or a dot between a label and
/// a letter. Only the bytes that can start one are looked at (a digest renders every name
/// twice, and most names have neither): `:`, `.`, and the lead byte of U+3002 (`E3`) or of
/// U+FF0E and U+FF61 (`EF`). A lead byte is never inside another character's encoding, so
/// each hit starts a character.
fn needs_defang(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(at) = (bytes.get(from..).unwrap_or_default().iter())
        .position(|&b| matches!(b, b':' | b'.' | 0xE3 | 0xEF))
        .map(|off| from + off)
    {
        if bytes.get(at..at + 3) == Some(b"://".as_slice()) {
            return true;
        }
        let mut after = s.get(at..).unwrap_or_default().chars();
        let Some(c) = after.next() else {
            return false;
        };
        let before = s.get(..at).and_then(|b| b.chars().next_back());
        if joins_labels(before, c, after.next()) {
            return true;
        }
        from = at + c.len_utf8();
    }
    false
}

/// [`defang`] without its shortcut: every scheme and every dot between a label and a letter.
fn defang_all(s: &str) -> Cow<'_, str> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == ':' && chars.get(i + 1) == Some(&'/') && chars.get(i + 2) == Some(&'/') {
            // The scheme: the ASCII letters, digits, `+`, `-`, `.` just before the colon.
            let mut start = out.len();
            for (pos, ch) in out.char_indices().rev() {
                if ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-') {
                    start = pos;
                } else {
                    break;
                }
            }
            let scheme = out[start..].to_ascii_lowercase();
            if scheme == "http" || scheme == "https" {
                let tail = if scheme == "https" { "hxxps" } else { "hxxp" };
                out.truncate(start);
                out.push_str(tail);
                out.push_str("://");
            } else {
                out.push_str("[:]//");
            }
            i += 3;
            continue;
        }
        let before = i.checked_sub(1).map(|j| chars[j]);
        if joins_labels(before, c, chars.get(i + 1).copied()) {
            out.push_str("[.]");
        } else {
            out.push(c);
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_unsafe(s: &str) -> bool {
        !s.chars().any(is_unsafe)
    }

    fn no_live_link(s: &str) -> bool {
        let l = s.to_lowercase();
        !l.contains("http://") && !l.contains("https://")
    }

    #[test]
    fn examples() {
        assert_eq!(
            mail_text("see https://evil.example/x"),
            "see hxxps://evil[.]example/x"
        );
        assert_eq!(mail_text("evil.example/x"), "evil[.]example/x");
        assert_eq!(mail_text("HTTP://a.b"), "hxxp://a[.]b");
        assert_eq!(mail_text("ftp://x"), "ftp[:]//x");
        assert_eq!(mail_text("a\nStatus: revoked"), "a Status: revoked");
        assert_eq!(
            terminal("\u{1b}]52;c;ZXZpbA==\u{7}x"),
            "\u{FFFD}]52;c;ZXZpbA==\u{FFFD}x"
        );
        assert_eq!(terminal("a\u{202E}b\u{2066}c"), "a\u{FFFD}b\u{FFFD}c");
        // Hidden text and look-alike fillers: tags, a soft hyphen, a Hangul filler, a
        // variation selector; an emoji's U+FE0F stays.
        assert_eq!(
            terminal("a\u{E0041}\u{AD}b\u{3164}c\u{FE01}\u{2764}\u{FE0F}"),
            "a\u{FFFD}\u{FFFD}b\u{FFFD}c\u{FFFD}\u{2764}\u{FE0F}"
        );
        assert_eq!(csv("=1+1"), "'=1+1");
        assert_eq!(csv(" @SUM(A1)"), "' @SUM(A1)");
        assert_eq!(csv("\t=1"), "\u{FFFD}=1");
        assert_eq!(
            slack("<!here> @channel <https://e.x|y>"),
            "&lt;!here&gt; \u{FF20}channel &lt;hxxps://e[.]x|y&gt;"
        );
        assert_eq!(mail_html("<b a=\"1\">"), "&lt;b a=&quot;1&quot;&gt;");
        assert_eq!(mail_text("v1.2 key_a"), "v1.2 key_a");
    }

    proptest! {
        // Failing seeds are kept beside this file (`text.regressions`) and replayed first: the
        // default would put them in a directory at the top of the repository.
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
            )),
            ..ProptestConfig::with_cases(512)
        })]

        #[test]
        fn every_neutraliser_holds_its_promise(s in "\\PC*|(\\p{Any}|https?://|@here|<!channel>|=|\\.)*") {
            let t = terminal(&s);
            prop_assert!(no_unsafe(&t));
            prop_assert_eq!(t.chars().count(), s.chars().count());

            let c = csv(&s);
            prop_assert!(no_unsafe(&c));
            prop_assert!(!starts_a_formula(&c));

            for m in [mail_text(&s), summary(&s)] {
                prop_assert!(no_unsafe(&m));
                prop_assert!(no_live_link(&m), "{m:?}");
            }

            let h = mail_html(&s);
            prop_assert!(no_unsafe(&h));
            prop_assert!(no_live_link(&h));
            prop_assert!(!h.contains(['<', '>', '"', '\'']));

            let k = slack(&s);
            prop_assert!(no_unsafe(&k));
            prop_assert!(no_live_link(&k));
            prop_assert!(!k.contains(['<', '>']));
            let lower = k.to_lowercase();
            for m in ["@here", "@channel", "@everyone"] {
                prop_assert!(!lower.contains(m));
            }

            prop_assert!(no_unsafe(&log_field(&s)));

            let doc = serde_json::to_string_pretty(&serde_json::json!({ "name": s })).unwrap();
            let shown = json(&doc);
            prop_assert!(!shown.chars().any(|c| is_unsafe(c) && c != '\n'));
            let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
            prop_assert_eq!(back["name"].as_str(), Some(s.as_str()));
        }

        /// The shortcuts change nothing: `defang` is `defang_all` (mixed dots, schemes and
        /// letters), and `mail_html` of text with nothing to escape is `mail_text`.
        #[test]
        fn the_shortcuts_agree_with_the_full_pass(s in "([a-z0-9_-]|[.\u{3002}\u{FF0E}\u{FF61}]|://|\\PC)*") {
            prop_assert_eq!(defang(&s), defang_all(&s));
            let t = mail_text(&s);
            if !t.contains(['&', '<', '>', '"', '\'']) {
                prop_assert_eq!(mail_html(&s), t);
            }
        }

        #[test]
        fn no_dot_between_a_label_and_a_letter_stays(s in "[a-z.\u{3002}/:]*") {
            let m = mail_text(&s);
            let chars: Vec<char> = m.chars().collect();
            for w in chars.windows(3) {
                prop_assert!(!(w[0].is_alphanumeric() && matches!(w[1], '.' | '\u{3002}') && w[2].is_alphabetic()), "{m:?}");
            }
        }
    }
}
