//! keysweep keeps an organisation's OpenAI project API keys clean.
//!
//! The modules follow the data flow: `config` → inventory (`openai`, `inventory`) → `policy` →
//! actions (`revoke`, `notify`) → `state` (findings, audit, outbox), with `sweep` tying one pass
//! together and `daemon`, `ops` and `metrics` around it. `sim` is the simulated Administration
//! API used by tests, the benchmark and the demo. See ARCHITECTURE.md for the invariants.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod intel;
pub mod inventory;
pub mod malloc;
pub mod metrics;
pub mod notify;
pub mod openai;
pub mod ops;
pub mod policy;
pub mod report;
pub mod revoke;
pub mod rotate;
pub mod sim;
pub mod sink;
pub mod state;
pub mod sweep;
pub mod telemetry;
pub mod text;
pub mod timefmt;

/// `e` and its sources, `: `-joined, as anyhow's `{:#}` prints them. An error's own message
/// never repeats its source, so wherever an error is shown other than through anyhow (a log
/// field, a stored reason, a line of output) this is how the whole cause is said, once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
