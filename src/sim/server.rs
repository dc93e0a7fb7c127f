//! The HTTP side of the simulator: the [`SimServer`] handle tests hold, the axum router (`/v1`
//! routes from `handlers`, `/_sim/` routes from `control`) and the middleware stack (request
//! counting, latency, rate limit, Bearer auth, random failures). Faults are rendered by
//! `respond`; the shared state is `shared`.
//!
//! Middleware order, outermost first: date → count → latency → rate limit → auth → random 5xx
//! → handler (→ scripted fault). So every request that reaches a route is counted, 401s and
//! 429s included, and the latency applies to every answer: it is the least time from a request
//! to its answer. Everything inside it acts when the request arrives (the rate limit, auth, a
//! state change, a `ConnectionReset` fault) and the answer waits for the rest of the latency; a
//! `Delay` fault's sleep counts within it (the answer comes after the longer of the two).
//! Latency and `Delay` faults are plain tokio sleeps taken while holding no lock, so concurrent
//! requests overlap exactly as they would on a real server.
//!
//! Invariants: the admin key is never echoed (not in errors, not in logs, not in `Debug`); no
//! lock is held across an `.await`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::audit_log::Actor;
use super::conn::{ConnCtl, SimListener};
use super::control;
use super::faults::FaultBook;
use super::handlers as h;
use super::history::{Creation, SimUsage, UsageRecord, derived_creator, micros, org_owner};
use super::intel_handlers as intel;
use super::model::{SimAccess, SimKey, SimOrg};
use super::options::{SimError, SimOptions};
use super::respond::{error, status_error, too_many_requests};
use super::shared::Shared;
use super::state::SimKeySnapshot;

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

    /// Marks a key as used at `ts` (`None`: never used); a use also adds one request (no cost)
    /// at `ts` to the usage records, so the usage endpoints agree.
    pub fn set_last_used(&self, project: &str, key: &str, ts: Option<i64>) -> Result<(), SimError> {
        self.shared.org.set_last_used(project, key, ts)?;
        if let Some(at) = ts {
            self.add_usage(
                project,
                key,
                &SimUsage {
                    at,
                    requests: 1,
                    cost_usd: 0.0,
                },
            );
        }
        Ok(())
    }

    /// Adds usage of a key (what the usage endpoints sum into their buckets).
    pub fn add_usage(&self, project: &str, key: &str, u: &SimUsage) {
        self.shared.usage.record(UsageRecord {
            project: project.to_string(),
            key: key.to_string(),
            at: u.at,
            requests: u.requests,
            cost_micros: micros(u.cost_usd),
        });
    }

    /// Every query string `GET /organization/audit_logs` received, in order (issue 16: what a
    /// client asked the log for, e.g. its `effective_at[gte]`).
    pub fn audit_log_queries(&self) -> Vec<String> {
        self.shared.audit.queries()
    }

    /// Turns the organisation's audit logging on or off (off: the audit log answers 403).
    pub fn set_audit_logging(&self, on: bool) {
        self.shared.audit.set_enabled(on);
    }

    /// Adds an `api_key.created` event at `at` by the user `creator` (a session), with
    /// `data.scopes` when `scopes` is `Some`: a key the log knows, whether or not it is listed.
    pub fn log_key_created(
        &self,
        project: &str,
        key: &str,
        creator: &str,
        scopes: Option<Vec<String>>,
        at: i64,
    ) {
        let c = Creation {
            project: project.to_string(),
            key: key.to_string(),
            at,
            creator: creator.to_string(),
            scopes,
        };
        self.shared
            .audit
            .key_created(&c, &Actor::Session { user: creator });
    }

    /// Adds an `api_key.deleted` event at `at` by the user `by` (a session).
    pub fn log_key_deleted(&self, project: &str, key: &str, by: &str, at: i64) {
        let actor = Actor::Session { user: by };
        self.shared.audit.key_deleted(at, project, key, &actor);
    }

    pub fn rename_key(&self, project: &str, key: &str, name: &str) -> Result<(), SimError> {
        self.shared.org.rename_key(project, key, name)
    }

    /// Adds a key owned by an existing member or service account of the project, and its
    /// `api_key.created` event (by its derived creator, with its scopes) to the audit log.
    pub fn add_key(&self, project: &str, key: SimKey) -> Result<(), SimError> {
        let id = key.id.clone();
        self.shared.org.add_key(project, key)?;
        let org = self.shared.org.snapshot();
        let owner = org_owner(&org);
        let Some(p) = org.project(project) else {
            return Ok(());
        };
        if let Some(k) = p.keys.iter().find(|k| k.id == id)
            && let Some(creator) = derived_creator(p, k, owner.as_deref())
        {
            let scopes = Some(k.scopes.clone());
            self.log_key_created(project, &id, &creator, scopes, k.created_at);
        }
        Ok(())
    }

    /// Removes a key behind the API's back (as if deleted in the dashboard).
    /// The audit log keeps the key's creation and records no deletion: a key gone from the
    /// listing without a trace (an inventory gap), unless the test logs one
    /// ([`Self::log_key_deleted`]).
    pub fn remove_key(&self, project: &str, key: &str) -> Result<(), SimError> {
        // The log's past is derived at its first read: derive it now, while the key is here.
        self.shared.audit.seed_with(|| self.shared.org.snapshot());
        self.shared.usage.seed_with(|| self.shared.org.snapshot());
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

    /// Moves (or removes: `None`) a key's expiry behind the API's back, as the dashboard can.
    pub fn set_expires_at(
        &self,
        project: &str,
        key: &str,
        at: Option<i64>,
    ) -> Result<(), SimError> {
        self.shared.org.set_expires_at(project, key, at)
    }

    /// Replaces a key's stored scopes behind the API's back.
    pub fn set_scopes(&self, project: &str, key: &str, scopes: &[String]) -> Result<(), SimError> {
        self.shared.org.set_scopes(project, key, scopes)
    }

    /// The simulator's clock, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.shared.clock.now()
    }

    /// Sets the clock (it keeps running unless frozen).
    pub fn set_clock(&self, at: i64) {
        self.shared.clock.set(at, None);
    }

    /// Moves the clock by `seconds` (negative: back).
    pub fn advance_clock(&self, seconds: i64) {
        self.shared.clock.advance(seconds, None);
    }

    /// Stops (`true`) or restarts the clock at its current reading.
    pub fn freeze_clock(&self, frozen: bool) {
        self.shared.clock.advance(0, Some(frozen));
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

type S = Arc<Shared>;

const P_PROJECTS: &str = "/v1/organization/projects";
const P_PROJECT: &str = "/v1/organization/projects/{project_id}";
const P_KEYS: &str = "/v1/organization/projects/{project_id}/api_keys";
const P_KEY: &str = "/v1/organization/projects/{project_id}/api_keys/{api_key_id}";
const P_SAS: &str = "/v1/organization/projects/{project_id}/service_accounts";
const P_SA: &str = "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}";
const P_SA_KEYS: &str =
    "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys";
const P_USERS: &str = "/v1/organization/projects/{project_id}/users";
const P_ADMIN_KEYS: &str = "/v1/organization/admin_api_keys";
const P_AUDIT_LOGS: &str = "/v1/organization/audit_logs";
const P_USAGE_COMPLETIONS: &str = "/v1/organization/usage/completions";
const P_COSTS: &str = "/v1/organization/costs";

fn router(shared: S) -> Router {
    let api = Router::new()
        .route(P_PROJECTS, get(h::list_projects))
        .route(P_PROJECT, get(h::get_project))
        .route(P_KEYS, get(h::list_keys))
        .route(
            P_KEY,
            get(h::get_key).post(h::update_key).delete(h::delete_key),
        )
        .route(P_SAS, get(h::list_service_accounts))
        .route(
            P_SA,
            get(h::get_service_account).delete(h::delete_service_account),
        )
        .route(P_SA_KEYS, post(h::create_service_account_key))
        .route(P_USERS, get(h::list_users))
        .route(P_ADMIN_KEYS, get(h::list_admin_keys))
        .route(P_AUDIT_LOGS, get(intel::audit_logs))
        .route(P_USAGE_COMPLETIONS, get(intel::usage_completions))
        .route(P_COSTS, get(intel::costs))
        // Innermost first: each route_layer wraps the ones added before it.
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            random_failures,
        ))
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth))
        .route_layer(middleware::from_fn_with_state(shared.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(shared.clone(), latency))
        .route_layer(middleware::from_fn_with_state(shared.clone(), count))
        .route_layer(middleware::from_fn_with_state(shared.clone(), date));
    let control = Router::new()
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/reset-stats", post(control::reset_stats))
        .route(
            "/_sim/clock",
            get(control::get_clock).post(control::set_clock),
        )
        .route(
            "/_sim/projects/{project_id}/api_keys/{api_key_id}",
            get(control::inspect_key),
        );
    api.merge(control)
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .with_state(shared)
}

/// Every answer's `Date` is the simulated clock, as the real API's is its own: a client that
/// counts expiries from the API's clock then lands them where the simulator's rules expect.
async fn date(State(s): State<S>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let text = chrono::DateTime::from_timestamp(s.clock.now(), 0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
    if let Some(v) = text.and_then(|t| header::HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

async fn count(State(s): State<S>, req: Request, next: Next) -> Response {
    if let Some(path) = req.extensions().get::<MatchedPath>() {
        s.count(req.method(), path.as_str());
    }
    next.run(req).await
}

/// The answer leaves `latency` after the request arrived, or when it is ready if that is
/// later: the latency is the whole time a request takes, the server's work included, as on a
/// real API whose servers are not the client's. Rendering after the sleep instead put the
/// simulator's own CPU time (on the client's cores, in tests and the benchmark) on top of it.
async fn latency(State(s): State<S>, req: Request, next: Next) -> Response {
    let end = std::time::Instant::now() + s.latency;
    let resp = next.run(req).await;
    s.sleep_until(end).await;
    resp
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
