//! A recording HTTP receiver for Slack, PagerDuty and webhook tests: a small axum server on
//! 127.0.0.1 that keeps every request (path, headers, body) and answers with a status that the
//! test can change per path prefix (e.g. 500 while "down"). Never used outside tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Request>>,
    /// Path prefix → status to answer; default 200.
    statuses: Mutex<HashMap<String, u16>>,
    /// Path prefix → body to answer with; default empty.
    bodies: Mutex<HashMap<String, String>>,
    /// How long to hold every answer (a slow receiver), after recording the request.
    delay: Mutex<std::time::Duration>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// Serves on a given port (0 = any), e.g. to bring a "down" receiver back where the
    /// channel points.
    pub async fn start_on(port: u16) -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(record).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Hold every answer this long after the request arrived (a slow receiver).
    pub fn set_delay(&self, delay: std::time::Duration) {
        *self.inner.delay.lock().unwrap() = delay;
    }

    /// Answer `status` to requests whose path starts with `prefix`.
    pub fn set_status(&self, prefix: &str, status: u16) {
        self.inner
            .statuses
            .lock()
            .unwrap()
            .insert(prefix.to_string(), status);
    }

    /// Answer `body` to requests whose path starts with `prefix`.
    pub fn set_body(&self, prefix: &str, body: &str) {
        (self.inner.bodies.lock().unwrap()).insert(prefix.to_string(), body.to_string());
    }

    /// Every request received so far whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<Request> {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path().to_string();
    let status = longest_prefix(&inner.statuses.lock().unwrap(), &path).unwrap_or(200);
    let answer = longest_prefix(&inner.bodies.lock().unwrap(), &path).unwrap_or_default();
    inner.requests.lock().unwrap().push(Request {
        path,
        headers,
        body,
    });
    let delay = *inner.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), answer)
}

/// The value set for the longest prefix of `path`.
fn longest_prefix<T: Clone>(set: &HashMap<String, T>, path: &str) -> Option<T> {
    (set.iter())
        .filter(|(p, _)| path.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| v.clone())
}
