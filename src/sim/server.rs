//! The HTTP side of the simulator: axum routes under `/v1`, the middleware stack (request
//! counting, latency, rate limit, Bearer auth, random failures), scripted-fault rendering, and
//! the [`SimServer`] handle tests hold.
//!
//! Middleware order, outermost first: count → latency → rate limit → auth → random 5xx →
//! handler (→ scripted fault). So every request that reaches a route is counted, 401s and 429s
//! included, and the latency applies to every answer. Latency and `Delay` faults are plain tokio
//! sleeps taken while holding no lock, so concurrent requests overlap exactly as they would on a
//! real server.
//!
//! Invariants: the admin key is never echoed (not in errors, not in logs, not in `Debug`); no
//! lock is held across an `.await`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::{ConnCtl, SimListener};
use super::faults::{FaultBook, FaultKind, FaultRequest, FaultRoute, Fired, SimEffect};
use super::generate::mix64;
use super::model::{SimAccess, SimKey, SimOrg};
use super::state::{AccessFilter, OrgState, PageQuery, PageTwist, Refusal, SimKeySnapshot};
use super::wire;
use super::{SimError, SimOptions};

/// A running simulated Administration API. Dropping it stops the server.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Binds `listen` (port 0 picks a free port) and starts serving `org`.
    pub async fn start(listen: SocketAddr, org: SimOrg, opts: SimOptions) -> io::Result<SimServer> {
        org.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(org, opts));
        let app = router(shared.clone());
        let cancel = shared.cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(
                SimListener(listener),
                app.into_make_service_with_connect_info::<ConnCtl>(),
            )
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
        });
        Ok(SimServer {
            addr,
            shared,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`: what goes into keysweep's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (sleeps are cut short), and waits up to
    /// a few seconds for the server task.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// The scripted faults of this server (see [`crate::sim::Fault`]).
    pub fn faults(&self) -> &FaultBook {
        &self.shared.faults
    }

    /// Requests served per `METHOD /route/template`, the same map as `GET /_sim/stats`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.shared.stats_snapshot()
    }

    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Replaces the accepted admin key: requests with the old one get 401 from now on
    /// (an admin key revoked mid-sweep).
    pub fn set_admin_key(&self, new: impl Into<String>) {
        *self
            .shared
            .admin_key
            .write()
            .unwrap_or_else(|e| e.into_inner()) = new.into();
    }

    /// Marks a key as used at `ts` (`None`: never used).
    pub fn set_last_used(&self, project: &str, key: &str, ts: Option<i64>) -> Result<(), SimError> {
        self.shared.org.set_last_used(project, key, ts)
    }

    pub fn rename_key(&self, project: &str, key: &str, name: &str) -> Result<(), SimError> {
        self.shared.org.rename_key(project, key, name)
    }

    /// Adds a key owned by an existing member or service account of the project.
    pub fn add_key(&self, project: &str, key: SimKey) -> Result<(), SimError> {
        self.shared.org.add_key(project, key)
    }

    /// Removes a key behind the API's back (as if deleted in the dashboard).
    pub fn remove_key(&self, project: &str, key: &str) -> Result<(), SimError> {
        self.shared.org.remove_key(project, key)
    }

    /// Sets `owner_project_access` of the key's owner: every key that owner holds in the
    /// project follows, as on OpenAI where access belongs to the membership.
    pub fn set_owner_access(
        &self,
        project: &str,
        key: &str,
        access: SimAccess,
    ) -> Result<(), SimError> {
        self.shared.org.set_owner_access(project, key, access)
    }

    /// The project's keys now, in list order (empty for an unknown project).
    pub fn keys(&self, project: &str) -> Vec<SimKeySnapshot> {
        self.shared.org.keys(project)
    }

    pub fn key(&self, project: &str, key: &str) -> Option<SimKeySnapshot> {
        self.shared.org.key(project, key)
    }

    pub fn key_exists(&self, project: &str, key: &str) -> bool {
        self.shared.org.key(project, key).is_some()
    }

    pub fn service_account_exists(&self, project: &str, service_account: &str) -> bool {
        self.shared
            .org
            .service_account_exists(project, service_account)
    }

    /// The whole organisation as it is now.
    pub fn org(&self) -> SimOrg {
        self.shared.org.snapshot()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

// ---- shared state ------------------------------------------------------------------------

struct Shared {
    org: OrgState,
    admin_key: RwLock<String>,
    faults: FaultBook,
    /// `METHOD template` → count. A short lock per request; contention is negligible next to
    /// the latency being simulated.
    stats: Mutex<BTreeMap<String, u64>>,
    latency: Duration,
    fail_rate: f64,
    seed: u64,
    limiter: Option<Mutex<Bucket>>,
    request_counter: AtomicU64,
    cancel: CancellationToken,
}

impl Shared {
    fn new(org: SimOrg, opts: SimOptions) -> Self {
        let SimOptions {
            admin_key,
            latency,
            fail_rate,
            rate_limit,
            seed,
        } = opts;
        Shared {
            org: OrgState::new(org),
            admin_key: RwLock::new(admin_key),
            faults: FaultBook::default(),
            stats: Mutex::new(BTreeMap::new()),
            latency,
            fail_rate: fail_rate.clamp(0.0, 1.0),
            seed,
            limiter: rate_limit
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| Mutex::new(Bucket::new(r))),
            request_counter: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        }
    }

    fn stats_snapshot(&self) -> BTreeMap<String, u64> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reset_stats(&self) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn count(&self, method: &Method, template: &str) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{method} {template}");
        *stats.entry(key).or_insert(0) += 1;
    }

    /// Sleeps, but returns early when the server shuts down.
    async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.cancel.cancelled() => {}
        }
    }

    fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        let Some(token) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        let key = self.admin_key.read().unwrap_or_else(|e| e.into_inner());
        constant_time_eq(token.trim().as_bytes(), key.as_bytes())
    }

    /// Applies a scripted change of the world ([`FaultKind::Apply`]). A missing target is not
    /// an error: the effect describes what someone else did, and they may have been too late.
    fn apply(&self, effect: &SimEffect) {
        let result = match effect {
            SimEffect::SetLastUsed { project, key, at } => {
                self.org.set_last_used(project, key, *at)
            }
            SimEffect::Rename { project, key, name } => self.org.rename_key(project, key, name),
            SimEffect::RemoveKey { project, key } => self.org.remove_key(project, key),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "scripted effect had no target");
        }
    }

    /// Seeded coin for `fail_rate`: deterministic for a seed and request order.
    fn random_failure(&self) -> bool {
        if self.fail_rate <= 0.0 {
            return false;
        }
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let r = (mix64(self.seed ^ mix64(n)) >> 11) as f64 / (1u64 << 53) as f64;
        r < self.fail_rate
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token bucket: `rate` tokens per second, burst of one second's worth (at least one).
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let capacity = rate.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

// ---- router and middleware -------------------------------------------------------------

type S = Arc<Shared>;

const P_PROJECTS: &str = "/v1/organization/projects";
const P_PROJECT: &str = "/v1/organization/projects/{project_id}";
const P_KEYS: &str = "/v1/organization/projects/{project_id}/api_keys";
const P_KEY: &str = "/v1/organization/projects/{project_id}/api_keys/{api_key_id}";
const P_SAS: &str = "/v1/organization/projects/{project_id}/service_accounts";
const P_SA: &str = "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}";
const P_USERS: &str = "/v1/organization/projects/{project_id}/users";
const P_ADMIN_KEYS: &str = "/v1/organization/admin_api_keys";

fn router(shared: S) -> Router {
    let api = Router::new()
        .route(P_PROJECTS, get(list_projects))
        .route(P_PROJECT, get(get_project))
        .route(P_KEYS, get(list_keys))
        .route(P_KEY, get(get_key).delete(delete_key))
        .route(P_SAS, get(list_service_accounts))
        .route(
            P_SA,
            get(get_service_account).delete(delete_service_account),
        )
        .route(P_USERS, get(list_users))
        .route(P_ADMIN_KEYS, get(list_admin_keys))
        // Innermost first: each route_layer wraps the ones added before it.
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            random_failures,
        ))
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth))
        .route_layer(middleware::from_fn_with_state(shared.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(shared.clone(), latency))
        .route_layer(middleware::from_fn_with_state(shared.clone(), count));
    let control = Router::new()
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/reset-stats", post(sim_reset_stats));
    api.merge(control)
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .with_state(shared)
}

async fn count(State(s): State<S>, req: Request, next: Next) -> Response {
    if let Some(path) = req.extensions().get::<MatchedPath>() {
        s.count(req.method(), path.as_str());
    }
    next.run(req).await
}

async fn latency(State(s): State<S>, req: Request, next: Next) -> Response {
    s.sleep(s.latency).await;
    next.run(req).await
}

async fn rate_limit(State(s): State<S>, req: Request, next: Next) -> Response {
    if let Some(bucket) = &s.limiter {
        let verdict = bucket.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(wait) = verdict {
            return too_many_requests(wait);
        }
    }
    next.run(req).await
}

async fn auth(State(s): State<S>, req: Request, next: Next) -> Response {
    if !s.authorized(req.headers().get(header::AUTHORIZATION)) {
        let missing = !req.headers().contains_key(header::AUTHORIZATION);
        let message = if missing {
            "You didn't provide an API key. You need to provide your API key in an Authorization \
             header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        } else {
            // OpenAI echoes a redacted form of the key here; we echo nothing at all.
            "Incorrect API key provided. You can find your API key at \
             https://platform.openai.com/account/api-keys."
        };
        return error(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
    }
    next.run(req).await
}

async fn random_failures(State(s): State<S>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET && s.random_failure() {
        return status_error(500);
    }
    next.run(req).await
}

async fn unknown_route(req: Request) -> Response {
    let message = format!("Invalid URL ({} {})", req.method(), req.uri().path());
    error(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        None,
        None,
    )
}

async fn sim_stats(State(s): State<S>) -> Response {
    let body = serde_json::json!({ "requests": s.stats_snapshot() });
    json(StatusCode::OK, body.to_string().into_bytes())
}

async fn sim_reset_stats(State(s): State<S>) -> Response {
    s.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

// ---- responses ---------------------------------------------------------------------------

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// OpenAI's `ErrorResponse` envelope.
fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = wire::ErrorResponse {
        error: wire::ErrorBody {
            message,
            kind,
            param,
            code,
        },
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// An error for a bare status code, worded and typed the way OpenAI does for that status.
fn status_error(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (message, kind, err_code) = match status.as_u16() {
        400 => ("Invalid request.", "invalid_request_error", None),
        401 => (
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => (
            "You have insufficient permissions for this operation. Missing scopes: api.management.read.",
            "invalid_request_error",
            None,
        ),
        404 => ("Not found.", "invalid_request_error", None),
        409 => (
            "Conflict: the resource was modified concurrently.",
            "invalid_request_error",
            None,
        ),
        429 => (
            "Rate limit reached for requests.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500..=599 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        _ => ("Request failed.", "invalid_request_error", None),
    };
    error(status, message, kind, None, err_code)
}

fn too_many_requests(wait: Duration) -> Response {
    let ms = wait.as_millis().max(1);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = status_error(429);
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
    resp
}

fn refusal(r: Refusal) -> Response {
    let (status, message, param) = match &r {
        Refusal::NoProject(id) => (
            StatusCode::NOT_FOUND,
            format!("No project found with id '{id}'."),
            Some("project_id"),
        ),
        Refusal::NoKey(id) => (
            StatusCode::NOT_FOUND,
            format!("No API key found with id '{id}'."),
            Some("api_key_id"),
        ),
        Refusal::NoServiceAccount(id) => (
            StatusCode::NOT_FOUND,
            format!("No service account found with id '{id}'."),
            Some("service_account_id"),
        ),
        Refusal::Archived(id) => (
            StatusCode::BAD_REQUEST,
            format!("Project '{id}' is archived."),
            None,
        ),
        Refusal::ServiceAccountKey(id) => (
            StatusCode::BAD_REQUEST,
            format!(
                "API key '{id}' belongs to a service account and cannot be deleted; delete the \
                 service account instead."
            ),
            None,
        ),
        Refusal::BadCursor(_) => (
            StatusCode::BAD_REQUEST,
            "Invalid 'after': no such object.".to_string(),
            Some("after"),
        ),
    };
    error(status, &message, "invalid_request_error", param, None)
}

/// A query parameter OpenAI would refuse with 400.
struct BadParam {
    param: &'static str,
    message: String,
}

fn bad_param(param: &'static str, message: String) -> BadParam {
    BadParam { param, message }
}

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            &self.message,
            "invalid_request_error",
            Some(self.param),
            None,
        )
    }
}

// ---- query parsing -----------------------------------------------------------------------

struct ListParams {
    limit: usize,
    after: Option<String>,
    include_archived: bool,
    access: AccessFilter,
    desc: bool,
}

fn parse_list(raw: Option<&str>) -> Result<ListParams, BadParam> {
    let mut p = ListParams {
        limit: 20,
        after: None,
        include_archived: false,
        // Omitted: OpenAI's membership rules hide keys whose owner lost access.
        access: AccessFilter::Active,
        desc: false,
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => {
                let n: i64 = v.parse().map_err(|_| {
                    bad_param(
                        "limit",
                        format!("Invalid 'limit': expected an integer, got '{v}'."),
                    )
                })?;
                if !(1..=100).contains(&n) {
                    return Err(bad_param(
                        "limit",
                        format!("Invalid 'limit': must be between 1 and 100, got {n}."),
                    ));
                }
                p.limit = n as usize;
            }
            "after" => p.after = Some(v.into_owned()).filter(|a| !a.is_empty()),
            "include_archived" => {
                p.include_archived = match &*v {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(bad_param(
                            "include_archived",
                            format!(
                                "Invalid 'include_archived': expected a boolean, got '{other}'."
                            ),
                        ));
                    }
                }
            }
            "owner_project_access" => {
                p.access = match &*v {
                    "active" => AccessFilter::Active,
                    "inactive" => AccessFilter::Inactive,
                    "any" => AccessFilter::Any,
                    other => {
                        return Err(bad_param(
                            "owner_project_access",
                            format!(
                                "Invalid 'owner_project_access': expected one of active, inactive, \
                                 any, got '{other}'."
                            ),
                        ));
                    }
                }
            }
            "order" => {
                p.desc = match &*v {
                    "asc" => false,
                    "desc" => true,
                    other => {
                        return Err(bad_param(
                            "order",
                            format!("Invalid 'order': expected asc or desc, got '{other}'."),
                        ));
                    }
                }
            }
            // Unknown parameters are ignored, as OpenAI does.
            _ => {}
        }
    }
    Ok(p)
}

impl ListParams {
    fn query(&self, fired: Option<&Fired>) -> PageQuery {
        let twist = match fired.map(|f| &f.kind) {
            Some(FaultKind::CursorLoop) => PageTwist::CursorLoop,
            Some(FaultKind::DuplicateIds) => PageTwist::DuplicateIds,
            _ => PageTwist::None,
        };
        PageQuery {
            limit: self.limit,
            after: self.after.clone(),
            twist,
        }
    }
}

// ---- fault rendering ---------------------------------------------------------------------

/// Applies the part of a fault that replaces or precedes the normal processing. `Some` is the
/// final answer; `None` means "carry on" (possibly after a delay).
async fn before(s: &Shared, fired: Option<&Fired>, conn: &ConnCtl) -> Option<Response> {
    let f = fired.filter(|f| !f.after_effect)?;
    interrupt(s, &f.kind, conn).await
}

async fn interrupt(s: &Shared, kind: &FaultKind, conn: &ConnCtl) -> Option<Response> {
    match kind {
        FaultKind::Status(code) => Some(status_error(*code)),
        FaultKind::RateLimited { retry_after_secs } => {
            let mut resp = status_error(429);
            let headers = resp.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(retry_after_secs.saturating_mul(1000)),
            );
            Some(resp)
        }
        FaultKind::ConnectionReset => {
            conn.kill();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        FaultKind::Delay(d) => {
            s.sleep(*d).await;
            None
        }
        FaultKind::Apply(effect) => {
            s.apply(effect);
            None
        }
        _ => None,
    }
}

/// Renders a normal answer through the fault's body distortion, if any.
async fn finish(
    s: &Shared,
    fired: Option<Fired>,
    conn: &ConnCtl,
    result: Result<Vec<u8>, Refusal>,
) -> Response {
    let body = match result {
        Ok(body) => body,
        Err(r) => return refusal(r),
    };
    let Some(f) = fired else {
        return json(StatusCode::OK, body);
    };
    if f.after_effect
        && let Some(resp) = interrupt(s, &f.kind, conn).await
    {
        return resp;
    }
    json(StatusCode::OK, distort(&f.kind, body))
}

fn distort(kind: &FaultKind, body: Vec<u8>) -> Vec<u8> {
    match kind {
        FaultKind::Truncated => {
            let mut body = body;
            body.truncate(body.len() / 2);
            body
        }
        FaultKind::Malformed => {
            let mut body = body;
            if let Some(i) = body.iter().position(|&b| b == b':') {
                body[i] = b'=';
            }
            body
        }
        FaultKind::Oversized(limit) => {
            let need = limit.saturating_sub(body.len()) + 1;
            let pad = "x".repeat(need);
            let mut out = Vec::with_capacity(body.len() + need + 32);
            out.extend_from_slice(b"{\"x_sim_padding\":\"");
            out.extend_from_slice(pad.as_bytes());
            out.extend_from_slice(b"\",");
            out.extend_from_slice(body.get(1..).unwrap_or_default());
            out
        }
        FaultKind::WrongTypes | FaultKind::OmitLastUsed | FaultKind::ExtraFields => {
            let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                return body;
            };
            match kind {
                FaultKind::WrongTypes => wrong_types(&mut v),
                FaultKind::OmitLastUsed => for_each_object(&mut v, |o| {
                    o.remove("last_used_at");
                }),
                _ => extra_fields(&mut v),
            }
            serde_json::to_vec(&v).unwrap_or(body)
        }
        _ => body,
    }
}

/// Calls `f` on the answer's object(s): the single object, or every item of a list.
fn for_each_object(v: &mut Value, f: impl Fn(&mut serde_json::Map<String, Value>)) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if obj.get("object").and_then(Value::as_str) == Some("list") {
        if let Some(items) = obj.get_mut("data").and_then(Value::as_array_mut) {
            for item in items {
                if let Some(o) = item.as_object_mut() {
                    f(o);
                }
            }
        }
    } else {
        f(obj);
    }
}

fn wrong_types(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                match (k.as_str(), &*field) {
                    ("created_at", Value::Number(n)) => *field = Value::String(n.to_string()),
                    ("deleted", Value::Bool(b)) => *field = Value::String(b.to_string()),
                    _ => wrong_types(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(wrong_types),
        _ => {}
    }
}

fn extra_fields(v: &mut Value) {
    if let Some(top) = v.as_object_mut() {
        top.insert(
            "x_sim_envelope_extra".into(),
            serde_json::json!({"note": "unknown field", "n": [1, 2, 3]}),
        );
    }
    for_each_object(v, |o| {
        o.insert(
            "x_sim_unknown".into(),
            serde_json::json!({"nested": [true, null]}),
        );
        o.insert("expires_at".into(), Value::Null);
        if let Some(owner) = o.get_mut("owner").and_then(Value::as_object_mut) {
            owner.insert("x_sim_owner_extra".into(), serde_json::json!(42));
        }
    });
}

// ---- handlers ----------------------------------------------------------------------------

type Conn = ConnectInfo<ConnCtl>;

async fn list_projects(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match parse_list(raw.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let route = FaultRoute::ListProjects;
    let page = if s.faults.any_on(route) {
        s.org
            .projects_page_number(p.include_archived, &p.query(None))
    } else {
        1
    };
    let fired = s.faults.take(&FaultRequest {
        route,
        project: None,
        object: None,
        page,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let body = s
        .org
        .list_projects(p.include_archived, &p.query(fired.as_ref()));
    finish(&s, fired, &conn, Ok(body)).await
}

async fn get_project(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
) -> Response {
    let fired = s.faults.take(&FaultRequest {
        route: FaultRoute::GetProject,
        project: Some(&project),
        object: None,
        page: 1,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.get_project(&project);
    finish(&s, fired, &conn, result).await
}

async fn list_keys(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match parse_list(raw.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let route = FaultRoute::ListKeys;
    let page = if s.faults.any_on(route) {
        s.org.keys_page_number(&project, p.access, &p.query(None))
    } else {
        1
    };
    let fired = s.faults.take(&FaultRequest {
        route,
        project: Some(&project),
        object: None,
        page,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s
        .org
        .list_keys(&project, p.access, &p.query(fired.as_ref()));
    finish(&s, fired, &conn, result).await
}

async fn get_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, key)): Path<(String, String)>,
) -> Response {
    let fired = s.faults.take(&FaultRequest {
        route: FaultRoute::GetKey,
        project: Some(&project),
        object: Some(&key),
        page: 1,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.get_key(&project, &key);
    finish(&s, fired, &conn, result).await
}

async fn delete_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, key)): Path<(String, String)>,
) -> Response {
    let fired = s.faults.take(&FaultRequest {
        route: FaultRoute::DeleteKey,
        project: Some(&project),
        object: Some(&key),
        page: 1,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.delete_key(&project, &key);
    finish(&s, fired, &conn, result).await
}

async fn list_service_accounts(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match parse_list(raw.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let route = FaultRoute::ListServiceAccounts;
    let page = if s.faults.any_on(route) {
        s.org.service_accounts_page_number(&project, &p.query(None))
    } else {
        1
    };
    let fired = s.faults.take(&FaultRequest {
        route,
        project: Some(&project),
        object: None,
        page,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s
        .org
        .list_service_accounts(&project, &p.query(fired.as_ref()));
    finish(&s, fired, &conn, result).await
}

async fn get_service_account(
    State(s): State<S>,
    Path((project, sa)): Path<(String, String)>,
) -> Response {
    match s.org.get_service_account(&project, &sa) {
        Ok(body) => json(StatusCode::OK, body),
        Err(r) => refusal(r),
    }
}

async fn delete_service_account(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, sa)): Path<(String, String)>,
) -> Response {
    let fired = s.faults.take(&FaultRequest {
        route: FaultRoute::DeleteServiceAccount,
        project: Some(&project),
        object: Some(&sa),
        page: 1,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.delete_service_account(&project, &sa);
    finish(&s, fired, &conn, result).await
}

async fn list_users(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match parse_list(raw.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let route = FaultRoute::ListUsers;
    let page = if s.faults.any_on(route) {
        s.org.users_page_number(&project, &p.query(None))
    } else {
        1
    };
    let fired = s.faults.take(&FaultRequest {
        route,
        project: Some(&project),
        object: None,
        page,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.list_users(&project, &p.query(fired.as_ref()));
    finish(&s, fired, &conn, result).await
}

async fn list_admin_keys(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match parse_list(raw.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.into_response(),
    };
    let route = FaultRoute::ListAdminKeys;
    let page = if s.faults.any_on(route) {
        s.org.admin_keys_page_number(p.desc, &p.query(None))
    } else {
        1
    };
    let fired = s.faults.take(&FaultRequest {
        route,
        project: None,
        object: None,
        page,
    });
    if let Some(resp) = before(&s, fired.as_ref(), &conn).await {
        return resp;
    }
    let result = s.org.list_admin_keys(p.desc, &p.query(fired.as_ref()));
    finish(&s, fired, &conn, result).await
}
