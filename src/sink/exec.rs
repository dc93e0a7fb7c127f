//! The `exec` sink: the operator's program, run without a shell, the secret on its stdin, the
//! key's metadata in `KEYSWEEP_*` variables, in a cleared environment (`PATH` and the names the
//! sink's `env = [...]` lists, nothing else), killed at its timeout (an unknown answer:
//! [`Unconfirmed::killed`]). Exit 0 confirms, any other status refuses.
//!
//! It must never pass keysweep's own environment on (the admin key, channel secrets), never put
//! the secret in an argument or a variable (other users can read those in /proc), and never log
//! or return what the program printed: only how many bytes it printed.

use std::process::Stdio;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::{AsyncRead, AsyncWriteExt as _};
use tokio::process::Command;

use super::meta::KeyMeta;

/// The variables a program gets about the key (never the secret).
fn key_vars(sink: &str, meta: &KeyMeta) -> [(&'static str, String); 9] {
    [
        ("KEYSWEEP_SINK", sink.to_string()),
        ("KEYSWEEP_ORGANIZATION", meta.organization.clone()),
        ("KEYSWEEP_PROJECT_ID", meta.project_id.clone()),
        (
            "KEYSWEEP_SERVICE_ACCOUNT_ID",
            meta.service_account_id.clone(),
        ),
        ("KEYSWEEP_KEY_ID", meta.key_id.clone()),
        ("KEYSWEEP_KEY_NAME", meta.key_name.clone()),
        ("KEYSWEEP_REDACTED_VALUE", meta.redacted_value.clone()),
        ("KEYSWEEP_OLD_KEY_ID", meta.old_key_id.clone()),
        (
            "KEYSWEEP_EXPIRES_AT",
            meta.expires_at.map(|t| t.to_string()).unwrap_or_default(),
        ),
    ]
}

/// Counts what a stream carries and drops it.
async fn count(stream: Option<impl AsyncRead + Unpin>) -> u64 {
    match stream {
        Some(mut s) => tokio::io::copy(&mut s, &mut tokio::io::sink())
            .await
            .unwrap_or(0),
        None => 0,
    }
}

/// Runs the program; `Err` says why it did not confirm (exit status, timeout, output lengths).
pub(super) async fn run(
    sink: &str,
    command: &[String],
    pass_env: &[String],
    timeout: Duration,
    meta: &KeyMeta,
    secret: &SecretString,
) -> Result<(), Unconfirmed> {
    let Some((program, args)) = command.split_first() else {
        return Err(String::from("no command").into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for name in pass_env {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.envs(key_vars(sink, meta));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let stdout = tokio::spawn(count(child.stdout.take()));
    let stderr = tokio::spawn(count(child.stderr.take()));
    let fed = match child.stdin.take() {
        Some(mut stdin) => {
            let w = async {
                stdin.write_all(secret.expose_secret().as_bytes()).await?;
                stdin.write_all(b"\n").await?;
                stdin.shutdown().await
            };
            tokio::time::timeout(timeout, w).await
        }
        None => Ok(Err(std::io::Error::other("no stdin"))),
    };
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let Ok(status) = status else {
        let _ = child.kill().await;
        stdout.abort();
        stderr.abort();
        return Err(Unconfirmed {
            message: format!(
                "{program:?} did not finish within {}s and was killed",
                timeout.as_secs()
            ),
            killed: true,
        });
    };
    // A program that left a child behind holding its output must not hold the sweep up.
    let settle = Duration::from_secs(2);
    let out = match tokio::time::timeout(settle, stdout).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    let err = match tokio::time::timeout(settle, stderr).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    let status = status.map_err(|e| format!("cannot wait for {program:?}: {e}"))?;
    let printed = format!("printed {out} bytes on stdout and {err} on stderr, not shown");
    if !status.success() {
        return Err(format!("{program:?} exited with {status}; {printed}").into());
    }
    match fed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "{program:?} exited 0 but did not read the key from stdin ({e}); {printed}"
        )
        .into()),
        Err(_) => Err(format!(
            "{program:?} did not read the key from stdin within {}s; {printed}",
            timeout.as_secs()
        )
        .into()),
    }
}

/// Why the program did not confirm.
pub(super) struct Unconfirmed {
    pub message: String,
    /// It ran past its `timeout` and was killed: it may have stored the key before it hung
    /// (a recipe that writes, then waits on something else), so its answer is unknown.
    pub killed: bool,
}

impl From<String> for Unconfirmed {
    fn from(message: String) -> Self {
        Unconfirmed {
            message,
            killed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const SECRET: &str = "sk-svcacct-EXECSECRET9876";

    fn meta() -> KeyMeta {
        KeyMeta {
            organization: "acme".into(),
            project_id: "proj_1".into(),
            service_account_id: "svc_1".into(),
            key_id: "key_new".into(),
            key_name: "bot".into(),
            redacted_value: "sk-...9876".into(),
            old_key_id: "key_old".into(),
            expires_at: Some(1_900_000_000),
        }
    }

    fn script(dir: &std::path::Path, body: &str) -> String {
        let p = dir.join("sink.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// The run's result (the message, and whether it was killed) and what the script wrote.
    async fn go(
        body: &str,
        env: &[String],
        timeout: Duration,
    ) -> (Result<(), (String, bool)>, String) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let body = body.replace("$OUT", out.to_str().unwrap());
        let prog = script(dir.path(), &body);
        let secret = SecretString::from(SECRET.to_string());
        let r = (run("s", &[prog], env, timeout, &meta(), &secret).await)
            .map_err(|u| (u.message, u.killed));
        (r, std::fs::read_to_string(out).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_secret_comes_on_stdin_and_the_environment_is_cleared() {
        let (r, out) = go(
            "read -r k; printf '%s|%s|%s|%s|%s\\n' \"$k\" \"$KEYSWEEP_KEY_ID\" \
             \"$KEYSWEEP_EXPIRES_AT\" \"${HOME:-unset}\" \"$(env | grep -c .)\" > $OUT; echo chatter",
            &[],
            Duration::from_secs(20),
        )
        .await;
        r.unwrap();
        let parts: Vec<&str> = out.trim().split('|').collect();
        assert_eq!(parts[..4], [SECRET, "key_new", "1900000000", "unset"]);
        // PATH, PWD (set by sh) and the nine KEYSWEEP_ variables at most.
        let n: usize = parts[4].parse().unwrap();
        assert!(n <= 12, "{n} variables");
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_an_error_that_shows_no_output() {
        let (r, _) = go(
            "read -r k; echo \"$k\" >&2; exit 3",
            &[],
            Duration::from_secs(20),
        )
        .await;
        let (e, killed) = r.unwrap_err();
        assert!(!killed, "a refusal is an answer");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("on stderr, not shown"), "{e}");
        assert!(!e.contains("EXECSECRET"), "{e}");
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed() {
        let (r, _) = go("read -r k; sleep 30", &[], Duration::from_millis(500)).await;
        let (e, killed) = r.unwrap_err();
        assert!(e.contains("killed") && killed, "{e}");
    }
}
