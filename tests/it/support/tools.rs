//! External tools some tests run (systemd-analyze, promtool, bash). Locally a missing tool skips
//! its check with a message; where the environment variable `CI` is set (`.ci/run` sets it and
//! installs every tool) a missing tool fails the test, so a check can never pass unrun in CI.

use std::path::PathBuf;

/// The executable `name` on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether this is a CI run: `CI` is set to anything but empty, `0` or `false`.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The tool `name` for checking `what`. When it is missing: `None` with a loud message, or a
/// panic under `CI`.
pub fn required(name: &str, what: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is not installed, so {what} cannot be checked; CI must install it (.ci/run)"
        );
        eprintln!("SKIPPED: {name} is not installed here, so {what} was not checked");
    }
    found
}
