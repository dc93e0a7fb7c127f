//! The systemd unit (`deploy/systemd/`): hardened, consistent with its configuration and env
//! example, and accepted by `systemd-analyze verify` with the built binary in place, with a low
//! exposure score. Without systemd-analyze the check is skipped locally and fails under `CI`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kit::{credential_refs, duration_secs, env_refs, keysweep_bin, read, repo, toml_table};
use crate::support::tools;

/// `Key=value` lines of a unit file (comments dropped), in order; repeated keys kept.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn systemd_unit() -> String {
    read(&repo().join("deploy/systemd/keysweep.service"))
}

/// Directives the unit must carry: its hardening, its reload and its command line.
const UNIT_DIRECTIVES: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("StateDirectory", "keysweep"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallArchitectures", "native"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("UMask", "0077"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("Restart", "on-failure"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("EnvironmentFile", "-/etc/keysweep/keysweep.env"),
    (
        "ExecStart",
        "/usr/local/bin/keysweep run --config /etc/keysweep/keysweep.toml",
    ),
];

#[test]
fn systemd_unit_is_hardened_and_matches_its_config() {
    let unit = systemd_unit();
    let d = unit_directives(&unit);
    for &(key, want) in UNIT_DIRECTIVES {
        assert!(
            unit_values(&d, key).contains(&want),
            "keysweep.service: want {key}={want}, have {:?}",
            unit_values(&d, key)
        );
    }

    let config = toml_table(
        &read(&repo().join("deploy/systemd/keysweep.toml")),
        "deploy/systemd/keysweep.toml",
    );
    // The admin key comes through the credential the unit loads.
    let creds = credential_refs(&config);
    assert_eq!(
        creds.len(),
        1,
        "the systemd config reads the admin key as a credential"
    );
    let loaded: Vec<&str> = unit_values(&d, "LoadCredential")
        .iter()
        .filter_map(|v| v.split_once(':').map(|(name, _)| name))
        .collect();
    assert!(
        loaded.contains(&creds[0].as_str()),
        "LoadCredential= {loaded:?} lacks {}",
        creds[0]
    );
    // The state lives in the StateDirectory, the only writable path.
    let state = config["state_path"].as_str().unwrap();
    assert!(
        Path::new(state).starts_with("/var/lib/keysweep"),
        "state_path {state} is outside StateDirectory=keysweep"
    );
    // Stop waits longer than the configuration's shutdown grace plus an exec sink's default
    // timeout (60 s): a rotation handing its key to a sink runs to its end on SIGTERM.
    let grace = duration_secs(config["shutdown_grace"].as_str().unwrap_or("30s"));
    let stop = duration_secs(unit_values(&d, "TimeoutStopSec")[0]);
    assert!(
        stop > grace + 60,
        "TimeoutStopSec {stop}s must exceed shutdown_grace {grace}s plus a sink's 60s timeout"
    );
    // Only keysweep gets the SIGTERM: an exec sink signalled too would fail its hand-over.
    assert_eq!(
        unit_values(&d, "KillMode"),
        ["mixed"],
        "KillMode must be mixed"
    );
    // The unit reads the file this config is installed as.
    assert!(unit.contains("--config /etc/keysweep/keysweep.toml"));

    // The env example defines every variable the config's *_env keys name, and nothing else
    // that looks like an assignment.
    let mut refs = BTreeMap::new();
    env_refs(&toml::Value::Table(config), &mut refs);
    let env_example = read(&repo().join("deploy/systemd/keysweep.env.example"));
    let defined: BTreeSet<&str> = env_example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let wanted: BTreeSet<&str> = refs.keys().map(String::as_str).collect();
    assert_eq!(
        defined, wanted,
        "keysweep.env.example vs the config's *_env keys"
    );
}

/// The unit with ExecStart pointing at the binary under test, in a fresh directory.
fn unit_with_binary(dir: &Path, binary: &Path) -> PathBuf {
    let unit = systemd_unit();
    assert!(unit.contains("ExecStart=/usr/local/bin/keysweep "));
    let text = unit.replace(
        "ExecStart=/usr/local/bin/keysweep ",
        &format!("ExecStart={} ", binary.display()),
    );
    let path = dir.join("keysweep.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_with_the_built_binary() {
    let Some(analyze) = tools::required("systemd-analyze", "keysweep.service") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A copy of the binary under test, as the installed /usr/local/bin/keysweep would be.
    let installed = dir.path().join("bin/keysweep");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(keysweep_bin(), &installed).unwrap();
    let unit = unit_with_binary(dir.path(), &installed);

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("keysweep.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // The check is real: the same unit with a missing binary is refused.
    let missing_dir = tempfile::tempdir().unwrap();
    let missing = unit_with_binary(
        missing_dir.path(),
        &missing_dir.path().join("nope/keysweep"),
    );
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "systemd-analyze verify accepted a unit whose binary does not exist"
    );

    // The hardening adds up: systemd's own exposure score stays at or below 2.0 ("OK").
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        report.lines().last().unwrap_or_default()
    );
}
