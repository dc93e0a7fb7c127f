//! A real SMTP server for tests: mailin-embedded (a third-party SMTP implementation) with
//! STARTTLS (rustls, certificate from a throwaway CA made with rcgen) and AUTH PLAIN/LOGIN.
//!
//! mailin refuses AUTH before STARTTLS and requires AUTH before MAIL, so a delivered message
//! proves the client upgraded to TLS, verified our CA and authenticated. The server thread runs
//! until the test process exits (mailin has no stop); tests that need "server down" simply
//! start it later on a reserved port. Never used outside tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mailin_embedded::response::{AUTH_OK, INVALID_CREDENTIALS, OK};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

/// Files of a throwaway CA and a server certificate for 127.0.0.1 / localhost.
pub struct TestPki {
    /// Keeps the files alive for the server's lifetime.
    _dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keysweep test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let ca_pem = dir.path().join("ca.pem");
        let cert_pem = dir.path().join("server.pem");
        let key_pem = dir.path().join("server.key");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(&cert_pem, leaf.pem()).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        TestPki {
            _dir: dir,
            ca_pem,
            cert_pem,
            key_pem,
        }
    }
}

/// Handle on a running server: what it received and who logged in.
#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Usernames of successful logins.
    pub logins: Arc<Mutex<Vec<String>>>,
    refusals: Refusals,
}

/// Recipients the server refuses at `RCPT`, with the reply code (550: for good, 451: for now).
type Refusals = Arc<Mutex<Vec<(String, u16)>>>;

impl SmtpServer {
    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Refuses `address` at `RCPT` with `code` from now on.
    pub fn refuse(&self, address: &str, code: u16) {
        self.refusals
            .lock()
            .unwrap()
            .push((address.to_string(), code));
    }

    /// Takes `address` again.
    pub fn accept(&self, address: &str) {
        self.refusals.lock().unwrap().retain(|(a, _)| a != address);
    }
}

#[derive(Clone)]
struct RecordingHandler {
    received: Arc<Mutex<Vec<Received>>>,
    logins: Arc<Mutex<Vec<String>>>,
    username: String,
    password: String,
    current: Option<Received>,
    /// Held before answering EHLO, MAIL, RCPT, AUTH and the start and the end of DATA (a relay
    /// slow at every step, that scans what it gets).
    slow: std::time::Duration,
    refusals: Refusals,
}

impl RecordingHandler {
    fn check(&mut self, user: &str, pass: &str) -> Response {
        std::thread::sleep(self.slow);
        if user == self.username && pass == self.password {
            self.logins.lock().unwrap().push(user.to_string());
            AUTH_OK
        } else {
            INVALID_CREDENTIALS
        }
    }
}

impl Handler for RecordingHandler {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> Response {
        std::thread::sleep(self.slow);
        OK
    }

    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        std::thread::sleep(self.slow);
        OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        std::thread::sleep(self.slow);
        let refusals = self.refusals.lock().unwrap();
        match refusals.iter().find(|(a, _)| a.eq_ignore_ascii_case(to)) {
            Some((_, code)) => Response::custom(*code, format!("no mail for {to} today")),
            None => OK,
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        std::thread::sleep(self.slow);
        self.current = Some(Received {
            from: from.to_string(),
            to: to.to_vec(),
            data: Vec::new(),
        });
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(c) = &mut self.current {
            c.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        // Taken before the slow answer: a client that gives up now has sent the message anyway.
        if let Some(c) = self.current.take() {
            self.received.lock().unwrap().push(c);
        }
        std::thread::sleep(self.slow);
        OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, pass: &str) -> Response {
        self.check(user, pass)
    }

    fn auth_login(&mut self, user: &str, pass: &str) -> Response {
        self.check(user, pass)
    }
}

/// Starts the server on `port` (0 = any) with STARTTLS and AUTH PLAIN/LOGIN.
pub fn start(pki: &TestPki, port: u16, username: &str, password: &str) -> SmtpServer {
    start_slow(pki, port, (username, password), std::time::Duration::ZERO)
}

/// [`start`], answering EHLO, MAIL, RCPT, AUTH and the start and end of each DATA only after
/// `slow`.
pub fn start_slow(
    pki: &TestPki,
    port: u16,
    (username, password): (&str, &str),
    slow: std::time::Duration,
) -> SmtpServer {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let logins = Arc::new(Mutex::new(Vec::new()));
    let refusals = Refusals::default();
    let handler = RecordingHandler {
        refusals: refusals.clone(),
        received: received.clone(),
        logins: logins.clone(),
        username: username.to_string(),
        password: password.to_string(),
        current: None,
        slow,
    };
    let mut server = Server::new(handler);
    server
        .with_name("smtp.test")
        .with_ssl(SslConfig::SelfSigned {
            cert_path: pki.cert_pem.to_string_lossy().into_owned(),
            key_path: pki.key_pem.to_string_lossy().into_owned(),
        })
        .unwrap()
        .with_auth(AuthMechanism::Plain)
        .with_auth(AuthMechanism::Login)
        .with_num_threads(2)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    SmtpServer {
        port,
        received,
        logins,
        refusals,
    }
}
