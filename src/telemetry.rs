//! Logging: one tracing subscriber per process, writing to stderr.
//!
//! `RUST_LOG` selects what is logged (default `info`). A malformed directive is not silently
//! dropped: it is named on stderr (and again as a warning in the log itself), and the valid
//! directives still apply. The format is `json` (one object per line, with the current span's
//! fields such as `run_id` in every record) or `pretty` (human-readable lines); without a choice,
//! pretty on a terminal and JSON otherwise.
//!
//! This module must never log a secret; it only decides where records go.

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::Once;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Directive, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("logging is already initialised in this process: {0}")]
    AlreadyInitialized(String),
}

/// The filter built from a `RUST_LOG` value, and the directives that were refused.
pub struct ParsedFilter {
    pub filter: EnvFilter,
    /// One human-readable line per refused directive, naming it.
    pub problems: Vec<String>,
}

/// Parses a `RUST_LOG`-style spec directive by directive, keeping the valid ones. An empty spec,
/// or one with no valid directive, means `info`.
pub fn parse_filter(spec: &str) -> ParsedFilter {
    let mut problems = Vec::new();
    let mut directives = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Directive::from_str(part) {
            Ok(d) => directives.push(d),
            Err(e) => problems.push(format!("ignoring invalid directive `{part}`: {e}")),
        }
    }
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy("");
    for d in directives {
        filter = filter.add_directive(d);
    }
    ParsedFilter { filter, problems }
}

/// Reads `RUST_LOG` (a non-UTF-8 value is reported and ignored).
fn filter_from_env(default: &str) -> ParsedFilter {
    match std::env::var("RUST_LOG") {
        Ok(spec) => parse_filter(&spec),
        Err(std::env::VarError::NotPresent) => parse_filter(default),
        Err(std::env::VarError::NotUnicode(_)) => {
            let mut parsed = parse_filter("");
            parsed
                .problems
                .push("ignoring RUST_LOG: it is not valid UTF-8; using `info`".to_string());
            parsed
        }
    }
}

/// Installs the process-wide subscriber. Call once, early in `main`; a second call returns
/// [`TelemetryError::AlreadyInitialized`] and changes nothing.
pub fn init(format: Option<LogFormat>) -> Result<(), TelemetryError> {
    init_with_default(format, "")
}

/// Like [`init`], with `default` as the filter when `RUST_LOG` is not set (the interactive
/// commands use `warn`, so their own output is not drowned in progress logs).
pub fn init_with_default(format: Option<LogFormat>, default: &str) -> Result<(), TelemetryError> {
    let ParsedFilter { filter, problems } = filter_from_env(default);
    // Report before installing, so the message reaches stderr even if installing fails.
    for p in &problems {
        eprintln!("keysweep: RUST_LOG: {p}");
    }
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(format, std::io::stderr))
        .try_init();
    installed.map_err(|e| TelemetryError::AlreadyInitialized(e.to_string()))?;
    for p in &problems {
        tracing::warn!(problem = %p, "RUST_LOG directive refused");
    }
    Ok(())
}

/// A new sweep's `run_id`, one format everywhere (the daemon's log span, `run --once`, the
/// audit trail): `20261201T235829Z-ab850f9d`, its start in UTC and 8 random hex digits.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &rand[..8])
}

/// The formatting layer for `format`, writing to `writer`.
fn fmt_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        // Span fields (organisation, run id) go into every record: `span` is the innermost one,
        // `spans` the whole stack.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .boxed(),
    }
}

/// For tests: installs a subscriber that writes through the test harness's capture, once per
/// process; later calls (and a subscriber installed elsewhere) are fine.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ParsedFilter { filter, .. } = filter_from_env("");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_directive_is_named_and_the_valid_ones_kept() {
        let parsed = parse_filter("warn,keysweep=loud,keysweep::daemon=debug");
        assert_eq!(parsed.problems.len(), 1, "{:?}", parsed.problems);
        assert!(
            parsed.problems[0].contains("`keysweep=loud`"),
            "{:?}",
            parsed.problems
        );
        let rendered = parsed.filter.to_string();
        assert!(rendered.contains("keysweep::daemon=debug"), "{rendered}");
        assert!(rendered.contains("warn"), "{rendered}");
    }

    #[test]
    fn empty_means_info() {
        let parsed = parse_filter("");
        assert!(parsed.problems.is_empty());
        assert_eq!(parsed.filter.to_string(), "info");
    }

    #[test]
    fn json_records_carry_the_sweep_span_fields() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber =
            tracing_subscriber::registry().with(fmt_layer(LogFormat::Json, move || out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("sweep", organization = "acme", run_id = "run-1");
            span.in_scope(|| tracing::info!(keys = 3, "listed"));
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "listed", "{text}");
        assert_eq!(line["keys"], 3, "{text}");
        assert_eq!(line["span"]["run_id"], "run-1", "{text}");
        assert_eq!(line["span"]["organization"], "acme", "{text}");
    }

    #[test]
    fn init_twice_reports_instead_of_panicking() {
        // Whichever test installs first wins; the second call must be an error, not a panic.
        init_for_tests();
        assert!(init(Some(LogFormat::Json)).is_err());
    }
}
