//! The binary under test as a child process: `keysweep` commands (async and blocking), a running
//! process with its output captured, `keysweep simulate` as a child, and signals.
//!
//! Every launcher starts from a clean environment for the variables keysweep reads
//! (`RUST_LOG`, `KEYSWEEP_CONFIG`) and kills its child when dropped, so a failing test never
//! leaves a process behind. Secrets are passed in the environment, never on a command line.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::net::free_port;
use super::secrets::assert_no_secret;
use super::wait::PATIENCE;

/// The binary under test (async), args and env set, stdin closed, both outputs piped.
pub fn keysweep<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    args: &[&str],
    env: &[(K, V)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keysweep"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("KEYSWEEP_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary under test for a test that runs without an async runtime.
pub fn keysweep_blocking() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keysweep"));
    cmd.env_remove("RUST_LOG")
        .env_remove("KEYSWEEP_CONFIG")
        .stdin(Stdio::null());
    cmd
}

/// Runs a one-shot command to its end (hang guard: [`PATIENCE`]): (status, stdout, stderr).
pub async fn run_to_end<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    args: &[&str],
    env: &[(K, V)],
) -> (ExitStatus, String, String) {
    let out = output(keysweep(args, env)).await;
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` to its end (hang guard: [`PATIENCE`]).
pub async fn output(mut cmd: tokio::process::Command) -> Output {
    tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("the command hung")
        .unwrap()
}

/// Exit status and both outputs, for an assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout followed by stderr, as one text.
pub fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends `sig` (e.g. `-TERM`) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// A running `keysweep` process with its stdout and stderr captured line by line.
pub struct Proc {
    child: tokio::process::Child,
    pub pid: u32,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

impl Proc {
    /// Spawns `cmd` (built by [`keysweep`], so both outputs are piped).
    pub fn spawn(mut cmd: tokio::process::Command) -> Proc {
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout: Pipe = Box::new(child.stdout.take().unwrap());
        let stderr: Pipe = Box::new(child.stderr.take().unwrap());
        for (pipe, sink) in [(stdout, out.clone()), (stderr, err.clone())] {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            child,
            pid,
            out,
            err,
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Every stderr line, which must all be JSON log records (`[log] format = "json"`).
    pub fn log(&self) -> Vec<Value> {
        self.stderr()
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"))
            })
            .collect()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid, sig);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit (hang guard: [`PATIENCE`]) and returns the status and how long it took.
    pub async fn wait(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the process exited")
            .unwrap();
        (status, start.elapsed())
    }

    /// Neither stream may hold any of `secrets`.
    pub fn assert_no_secret(&self, secrets: &[&str]) {
        for line in self.stdout().iter().chain(self.stderr().iter()) {
            assert_no_secret("the output", line, secrets);
        }
    }
}

/// `keysweep simulate` as a child process on a free port; killed on drop.
pub struct Simulator {
    child: std::process::Child,
    pub port: u16,
}

impl Simulator {
    /// Starts it with `args` (e.g. `--projects 7`) accepting `admin_key`, and waits until it
    /// announces that it listens.
    pub fn start(args: &[&str], admin_key: &str) -> Simulator {
        let port = free_port();
        let mut child = keysweep_blocking()
            .arg("simulate")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .args(["--admin-key", admin_key])
            .env_remove("OPENAI_ADMIN_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "simulator did not start");
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(_) => {}
                None => panic!("simulator exited early"),
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Simulator { child, port }
    }

    /// `GET /_sim/stats` over a tiny HTTP/1.0 request, so blocking tests need no HTTP client.
    pub fn stats(&self) -> Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET /_sim/stats HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking child that is killed and reaped when dropped, so a failing test leaves no daemon.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
