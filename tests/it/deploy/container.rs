//! The container image (`deploy/container/`): the Dockerfile's paths exist and agree with the
//! container configuration, the compose file is locked down like the image, and the image's
//! HEALTHCHECK command, run with the shell it names, answers for a running daemon. Without
//! that shell the last check is skipped locally and fails under `CI`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::kit::{
    DummySecrets, at, duration_secs, listen_on_all_interfaces, read, repo, toml_table, yaml_docs,
    yaml_seq, yaml_str,
};
use crate::support::net::free_port;
use crate::support::process::{Reaped, keysweep_blocking};
use crate::support::tools;
use crate::support::wait::PATIENCE;

/// Dockerfile instructions (continuation lines joined), as (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("deploy/container/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = l.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(l);
        if let Some((ins, args)) = current.trim().split_once(char::is_whitespace) {
            out.push((ins.to_uppercase(), args.trim().to_string()));
        }
        current.clear();
    }
    out
}

fn docker_args<'a>(d: &'a [(String, String)], ins: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(i, _)| i == ins)
        .map(|(_, a)| a.as_str())
        .collect()
}

fn container_config() -> toml::Table {
    toml_table(
        &read(&repo().join("deploy/container/keysweep.toml")),
        "deploy/container/keysweep.toml",
    )
}

/// The HEALTHCHECK's exec-form command.
fn healthcheck_command(d: &[(String, String)]) -> Vec<String> {
    let hc = docker_args(d, "HEALTHCHECK");
    assert_eq!(hc.len(), 1, "one HEALTHCHECK");
    let json = &hc[0][hc[0].find("CMD [").expect("exec-form HEALTHCHECK CMD") + 4..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not JSON: {e}"))
}

#[test]
fn dockerfile_paths_exist_and_match_the_container_config() {
    let d = dockerfile();
    let froms = docker_args(&d, "FROM");
    assert_eq!(froms.len(), 2, "multi-stage: a builder and a runtime");
    assert!(froms[0].starts_with("rust:1.9") && froms[0].contains("bookworm"));
    assert!(froms[1].starts_with("debian:bookworm-slim"));
    let runs = docker_args(&d, "RUN").join("\n");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");

    // COPY sources exist and the Dockerfile's own ignore file lets them into the context.
    let ignore = read(&repo().join("deploy/container/Dockerfile.dockerignore"));
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut config_dest = None;
    for copy in docker_args(&d, "COPY") {
        if copy.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for src in sources {
            let src = src.trim_end_matches('/');
            assert!(
                repo().join(src).exists(),
                "COPY source {src} does not exist"
            );
            assert!(
                allowed.contains(&src),
                "COPY source {src} is excluded by Dockerfile.dockerignore"
            );
            if src == "deploy/container/keysweep.toml" {
                config_dest = Some(dest.to_string());
            }
        }
    }
    let config_dest = config_dest.expect("the image ships deploy/container/keysweep.toml");

    // Runs as a numeric non-root user.
    let user = docker_args(&d, "USER");
    let uid: u32 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0);

    // ENTRYPOINT/CMD run the daemon on the shipped config.
    assert_eq!(docker_args(&d, "ENTRYPOINT"), vec![r#"["keysweep"]"#]);
    let cmd: Vec<String> = serde_json::from_str(docker_args(&d, "CMD").last().unwrap()).unwrap();
    assert_eq!(cmd, ["run", "--config", config_dest.as_str()]);

    // The config listens on all interfaces at the exposed port, keeps its state on the volume.
    let config = container_config();
    let listen = listen_on_all_interfaces(&config, "a container");
    assert_eq!(docker_args(&d, "EXPOSE"), vec![listen.port().to_string()]);
    let state = Path::new(config["state_path"].as_str().unwrap());
    let volume: Vec<String> = serde_json::from_str(docker_args(&d, "VOLUME")[0]).unwrap();
    assert!(
        volume.iter().any(|v| state.starts_with(v)),
        "state_path {} is not on the VOLUME {volume:?}",
        state.display()
    );

    // The health check probes /healthz on that port.
    let hc = healthcheck_command(&d).join(" ");
    assert!(
        hc.contains(&format!("/dev/tcp/127.0.0.1/{}", listen.port())),
        "{hc}"
    );
    assert!(hc.contains("GET /healthz "), "{hc}");
}

#[test]
fn compose_file_is_locked_down_like_the_image() {
    let compose = yaml_docs(&repo().join("deploy/container/compose.yaml")).remove(0);
    let svc = at(&compose, "services.keysweep");
    let context = repo()
        .join("deploy/container")
        .join(yaml_str(svc, "build.context"));
    assert!(context.join(yaml_str(svc, "build.dockerfile")).is_file());
    assert_eq!(svc["read_only"].as_bool(), Some(true));
    assert_eq!(yaml_seq(svc, "cap_drop")[0].as_str(), Some("ALL"));
    assert!(
        yaml_seq(svc, "security_opt")
            .iter()
            .any(|o| o.as_str() == Some("no-new-privileges:true"))
    );
    let grace = duration_secs(
        container_config()["shutdown_grace"]
            .as_str()
            .unwrap_or("30s"),
    );
    assert!(duration_secs(yaml_str(svc, "stop_grace_period")) > grace);
    let d = dockerfile();
    let volume: Vec<String> = serde_json::from_str(docker_args(&d, "VOLUME")[0]).unwrap();
    let cmd: Vec<String> = serde_json::from_str(docker_args(&d, "CMD").last().unwrap()).unwrap();
    let mounts: Vec<&str> = yaml_seq(svc, "volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}", volume[0]))),
        "state volume: {mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}:ro", cmd[2]))),
        "config read-only: {mounts:?}"
    );
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// The image's HEALTHCHECK command, run as Docker would, against the real daemon.
#[test]
fn container_healthcheck_command_answers_for_a_running_daemon() {
    let d = dockerfile();
    let cmd = healthcheck_command(&d);
    let shell_name = Path::new(&cmd[0]).file_name().unwrap().to_str().unwrap();
    let Some(shell) = tools::required(shell_name, "the container HEALTHCHECK") else {
        return;
    };
    let image_port = container_config()["server"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("keysweep.toml");
    // The container's config with a loopback address, a private state file and no sweep
    // during the test (the API address answers nothing).
    let mut t = container_config();
    t.insert(
        "state_path".into(),
        dir.path().join("state.db").display().to_string().into(),
    );
    t.insert("run_on_start".into(), false.into());
    t.insert("schedule".into(), "0 0 1 1 *".into());
    t["server"]
        .as_table_mut()
        .unwrap()
        .insert("listen".into(), format!("127.0.0.1:{port}").into());
    t["organizations"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert("base_url".into(), "http://127.0.0.1:9/v1".into());
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let secrets = DummySecrets::for_config(&t);
    let mut daemon = Reaped(
        keysweep_blocking()
            .env_clear()
            .envs(secrets.env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while http_get_status(port, "/healthz") != Some(200) {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!(
                "the daemon exited ({status}):\n{}",
                read(&dir.path().join("daemon.log"))
            );
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the daemon never answered /healthz:\n{}",
            read(&dir.path().join("daemon.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let probe = |path: &str| -> Output {
        let script = cmd[2]
            .replace(
                &format!("/127.0.0.1/{image_port}"),
                &format!("/127.0.0.1/{port}"),
            )
            .replace("GET /healthz ", &format!("GET {path} "));
        Command::new(&shell)
            .args(&cmd[1..2])
            .arg(script)
            .output()
            .unwrap()
    };
    let ok = probe("/healthz");
    assert!(
        ok.status.success(),
        "HEALTHCHECK failed against a healthy daemon: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // And it is not always true: a 404 is unhealthy.
    assert!(!probe("/no-such-path").status.success());
}
