//! OpenMetrics text (what `/metrics` serves and `Metrics::encode` writes), parsed and validated
//! line by line so a test can read sums of samples: `# HELP`/`# TYPE`/`# UNIT` lines, `# EOF`
//! last, every sample well-formed and of a declared family. A parser for tests only: it panics
//! on anything malformed and never accepts a line it does not understand.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: name, labels and value (the timestamp is checked, then dropped).
#[derive(Debug, Clone)]
pub struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A whole exposition: its samples and the families it declares.
#[derive(Debug)]
pub struct Metrics {
    samples: Vec<Sample>,
    /// family → type
    pub types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
}

impl Metrics {
    /// Parses and validates: `# HELP`/`# TYPE`/`# UNIT` lines, `# EOF` as the last line, every
    /// sample well-formed and belonging to a family declared before it.
    pub fn parse(text: &str) -> Metrics {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end:\n{text}");
        assert_eq!(
            lines.iter().filter(|l| **l == "# EOF").count(),
            1,
            "# EOF more than once"
        );
        let mut m = Metrics {
            samples: Vec::new(),
            types: BTreeMap::new(),
            helps: BTreeSet::new(),
        };
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, family) = (parts.next().unwrap(), parts.next().unwrap_or(""));
                assert!(valid_name(family), "bad family name in {line:?}");
                let arg = parts.next().unwrap_or("");
                match kw {
                    "HELP" => {
                        assert!(!arg.is_empty(), "empty HELP: {line:?}");
                        m.helps.insert(family.to_string());
                    }
                    "TYPE" => {
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "histogram",
                                "gaugehistogram",
                                "summary",
                                "info",
                                "stateset",
                                "unknown"
                            ]
                            .contains(&arg),
                            "bad TYPE: {line:?}"
                        );
                        m.types.insert(family.to_string(), arg.to_string());
                    }
                    "UNIT" => {}
                    _ => panic!("unknown metadata line {line:?}"),
                }
                continue;
            }
            let s = parse_sample(line);
            let family = m
                .types
                .keys()
                .filter(|f| {
                    s.name == **f
                        || ["_total", "_created", "_bucket", "_sum", "_count", "_info"]
                            .iter()
                            .any(|suf| s.name == format!("{f}{suf}"))
                })
                .max_by_key(|f| f.len());
            assert!(family.is_some(), "sample of an undeclared family: {line:?}");
            m.samples.push(s);
        }
        for f in m.types.keys() {
            assert!(m.helps.contains(f), "family {f} has TYPE but no HELP");
        }
        m
    }

    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn label_values(&self) -> impl Iterator<Item = &String> {
        self.samples.iter().flat_map(|s| s.labels.values())
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",…} value [timestamp]`, with `\\`, `\"` and `\n` escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad metric name: {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).unwrap();
            if r[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = r[start..]
                .find('=')
                .map(|i| start + i)
                .unwrap_or_else(|| panic!("no '=' in labels: {line:?}"));
            let key = &r[start..eq];
            assert!(valid_name(key), "bad label name {key:?}: {line:?}");
            assert_eq!(&r[eq + 1..eq + 2], "\"", "unquoted label value: {line:?}");
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated label value: {line:?}"));
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line:?}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.to_string(), value);
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i + 1;
                    break;
                }
                other => panic!("bad label separator {other:?}: {line:?}"),
            }
        }
        rest = &r[end..];
    }
    let rest = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value {v:?} ({e}): {line:?}")),
    };
    if let Some(ts) = parts.next() {
        ts.parse::<f64>()
            .unwrap_or_else(|e| panic!("bad timestamp ({e}): {line:?}"));
    }
    assert!(parts.next().is_none(), "trailing fields: {line:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}
