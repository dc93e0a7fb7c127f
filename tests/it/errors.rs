//! Errors are said once: every error type of the crate, rendered as the binary reports it
//! (anyhow's `{:#}`, the whole chain on one line), names each cause exactly once.
//!
//! An error either returns its cause as its source or prints it in its message, never both;
//! otherwise `error: cannot open …: file is not a database: file is not a database` reaches the
//! operator. Every variant that has a source is built here; the others are built too where they
//! are cheap, to show they render. This test must not depend on the network or a clock.

use std::path::PathBuf;

use keysweep::daemon::schedule::ScheduleError;
use keysweep::daemon::{DaemonError, ReloadError};
use keysweep::notify::NotifyError;
use keysweep::notify::webhook::SignError;
use keysweep::openai::{self, RequestContext};
use keysweep::policy::PolicyError;
use keysweep::sim::SimError;
use keysweep::state::StateError;
use keysweep::state::audit::AuditError;
use keysweep::sweep::SweepError;
use keysweep::telemetry::TelemetryError;

/// Renders `e` with its chain and checks that every cause in it appears exactly once: present
/// (the chain is not lost) and not repeated (no message prints its own source). Returns the
/// rendering for further checks.
fn said_once(e: impl Into<anyhow::Error>) -> String {
    let e: anyhow::Error = e.into();
    let rendered = format!("{e:#}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        assert!(!text.is_empty(), "an empty cause in {rendered:?}");
        assert_eq!(
            rendered.matches(text.as_str()).count(),
            1,
            "cause {text:?} is not said exactly once in {rendered:?}"
        );
    }
    rendered
}

/// Like [`said_once`], for an error that must have a source: checks that it does.
fn with_cause(e: impl Into<anyhow::Error>, cause: &str) -> String {
    let e: anyhow::Error = e.into();
    assert!(e.source().is_some(), "{e:?} has no source");
    let rendered = said_once(e);
    assert!(
        rendered.contains(cause),
        "{cause:?} missing from {rendered:?}"
    );
    rendered
}

/// A real SQLite error (not a made-up one), with a distinctive text.
fn sqlite() -> rusqlite::Error {
    rusqlite::Connection::open_in_memory()
        .unwrap()
        .execute_batch("SELECT * FROM table_that_is_not_there")
        .unwrap_err()
}

const SQLITE_CAUSE: &str = "table_that_is_not_there";

fn json() -> serde_json::Error {
    serde_json::from_str::<serde_json::Value>("{not json").unwrap_err()
}

fn io(text: &str) -> std::io::Error {
    std::io::Error::other(text.to_string())
}

fn glob() -> globset::Error {
    globset::Glob::new("team-[").unwrap_err()
}

fn path() -> PathBuf {
    PathBuf::from("/var/lib/keysweep/state.db")
}

#[test]
fn state_errors_say_their_cause_once() {
    let cases: Vec<(StateError, &str)> = vec![
        (
            StateError::CreateDir {
                path: path(),
                source: io("disk on fire"),
            },
            "disk on fire",
        ),
        (
            StateError::CreateFile {
                path: path(),
                source: io("quota exceeded here"),
            },
            "quota exceeded here",
        ),
        (
            StateError::Open {
                path: path(),
                source: sqlite(),
            },
            SQLITE_CAUSE,
        ),
        (
            StateError::Migration {
                version: 3,
                source: sqlite(),
            },
            SQLITE_CAUSE,
        ),
        (StateError::Sqlite(sqlite()), SQLITE_CAUSE),
        (
            StateError::Corrupt {
                table: "findings",
                row: "42".into(),
                source: json(),
            },
            "key must be a string",
        ),
        (
            StateError::Encode {
                what: "an audit record",
                source: json(),
            },
            "key must be a string",
        ),
        (
            StateError::Output(io("broken pipe here")),
            "broken pipe here",
        ),
    ];
    for (e, cause) in cases {
        with_cause(e, cause);
    }
    // Without a source: the message is the whole story.
    said_once(StateError::Missing { path: path() });
    said_once(StateError::TooNew {
        path: path(),
        found: 9,
        known: 4,
    });
}

#[test]
fn an_outbox_error_inside_a_notify_error_keeps_its_cause() {
    // The outbox lives in the state database: notify passes its error on as it is.
    let e = NotifyError::from(StateError::Sqlite(sqlite()));
    let rendered = said_once(e);
    assert!(rendered.contains(SQLITE_CAUSE), "{rendered}");
}

#[test]
fn audit_errors_say_their_cause_once() {
    let rendered = with_cause(
        AuditError::Unreadable(StateError::Sqlite(sqlite())),
        SQLITE_CAUSE,
    );
    assert!(rendered.starts_with("audit log unreadable: "), "{rendered}");
    said_once(AuditError::Broken {
        seq: 7,
        reason: "hash mismatch".into(),
    });
}

#[test]
fn notify_errors_say_their_cause_once() {
    with_cause(
        NotifyError::State(StateError::Sqlite(sqlite())),
        SQLITE_CAUSE,
    );
    with_cause(
        NotifyError::State(StateError::Corrupt {
            table: "outbox",
            row: "digest:abc".into(),
            source: json(),
        }),
        "key must be a string",
    );
    said_once(NotifyError::UnknownChannel("ops".into()));
    said_once(NotifyError::Channel {
        channel: "ops".into(),
        message: "no recipients".into(),
    });
    said_once(NotifyError::HttpClient("tls backend missing".into()));
    said_once(NotifyError::Send {
        channel: "ops".into(),
        error: "HTTP 500".into(),
    });
    said_once(SignError::BadSecret);
}

#[test]
fn daemon_errors_say_their_cause_once() {
    let rendered = with_cause(
        DaemonError::Bind {
            addr: "127.0.0.1:9464".parse().unwrap(),
            source: io("address already taken here"),
        },
        "address already taken here",
    );
    assert_eq!(
        rendered,
        "cannot listen on 127.0.0.1:9464: address already taken here"
    );
    said_once(DaemonError::Signals(io("no signals")));
    said_once(DaemonError::Ops(io("ops died")));
    said_once(DaemonError::Supervisor("panicked".into()));
    said_once(ReloadError::Invalid("bad toml".into()));
    said_once(ReloadError::Stopped);
    said_once(ScheduleError::Invalid {
        expr: "* * *".into(),
        reason: "too short".into(),
    });
}

#[test]
fn policy_errors_say_their_cause_once() {
    let rendered = with_cause(
        PolicyError::PolicyGlob {
            index: 1,
            name: "age".into(),
            field: "key_name",
            pattern: "team-[".into(),
            source: glob(),
        },
        "unclosed character class",
    );
    assert!(
        rendered.starts_with("policies[1] (age).match.key_name: invalid glob \"team-[\": "),
        "{rendered}"
    );
    with_cause(
        PolicyError::ExemptionGlob {
            index: 0,
            field: "project",
            pattern: "team-[".into(),
            source: glob(),
        },
        "unclosed character class",
    );
    said_once(PolicyError::NoCondition {
        index: 0,
        name: "empty".into(),
    });
    said_once(PolicyError::EmptyName { index: 0 });
    said_once(PolicyError::DuplicateName {
        index: 1,
        name: "age".into(),
    });
    said_once(PolicyError::EmptyExemption { index: 0 });
}

#[test]
fn sweep_errors_say_their_cause_once() {
    let rendered = with_cause(
        SweepError::State(StateError::Open {
            path: path(),
            source: sqlite(),
        }),
        SQLITE_CAUSE,
    );
    assert!(
        rendered.contains("/var/lib/keysweep/state.db"),
        "{rendered}"
    );
    with_cause(
        SweepError::Notify(NotifyError::State(StateError::Sqlite(sqlite()))),
        SQLITE_CAUSE,
    );
    with_cause(
        SweepError::Policy(PolicyError::EmptyName { index: 3 }),
        "policies[3]",
    );
    with_cause(
        SweepError::Client {
            organization: "acme".into(),
            source: Box::new(openai::Error::Setup {
                organization: "acme".into(),
                detail: "base_url cannot take a path".into(),
            }),
        },
        "base_url cannot take a path",
    );
    said_once(SweepError::Recorder("task died".into()));
}

#[test]
fn the_other_errors_say_their_cause_once() {
    with_cause(
        SimError::ReadOrg {
            path: PathBuf::from("org.json"),
            source: io("no such organisation file here"),
        },
        "no such organisation file here",
    );
    said_once(SimError::InvalidOrg("duplicate key".into()));
    said_once(TelemetryError::AlreadyInitialized("set twice".into()));
    said_once(keysweep::config::LoadError::Invalid {
        file: "keysweep.toml".into(),
        key: "mode".into(),
        message: "unknown variant".into(),
    });
    let ctx = RequestContext {
        organization: "acme".into(),
        project: Some("proj_1".into()),
        endpoint: openai::endpoint::LIST_KEYS,
    };
    said_once(openai::Error::Transport {
        ctx: ctx.clone(),
        detail: "connection reset".into(),
    });
    said_once(openai::Error::Decode {
        ctx,
        status: 200,
        detail: "at data[0].id: invalid type".into(),
    });
}
