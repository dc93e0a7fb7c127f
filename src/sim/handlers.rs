//! The API's route handlers under `/v1`: each parses its input, names its fault request and lets
//! [`answer`] run the shared fault check around the organisation's operation.
//!
//! Handlers read the simulator's clock once per request and pass it down; they never hold a
//! lock across an `.await` (the organisation's locks live inside each synchronous operation).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;

use super::body::{ListParams, key_update, mint_request, parse_list};
use super::conn::ConnCtl;
use super::faults::{FaultKind, FaultRequest, FaultRoute, Fired};
use super::intel_handlers::{Write, log_write};
use super::respond::{BadParam, answer, bad_param, json, refusal};
use super::shared::Shared;
use super::state::{KeyFilter, KeyUpdate, MintRequest, PageQuery, PageTwist};

type S = Arc<Shared>;
type Conn = ConnectInfo<ConnCtl>;

/// A list's query, refused with OpenAI's 400 before the handler runs.
impl<St: Send + Sync> FromRequestParts<St> for ListParams {
    type Rejection = BadParam;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, BadParam> {
        parse_list(parts.uri.query())
    }
}

async fn body_bytes<St: Send + Sync>(req: Request, state: &St) -> Result<Bytes, BadParam> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| bad_param("body", format!("Could not read the request body: {e}")))
}

/// The update's body, validated before any fault or lookup, as OpenAI validates first.
impl<St: Send + Sync> FromRequest<St> for KeyUpdate {
    type Rejection = BadParam;

    async fn from_request(req: Request, state: &St) -> Result<Self, BadParam> {
        key_update(&body_bytes(req, state).await?)
    }
}

impl<St: Send + Sync> FromRequest<St> for MintRequest {
    type Rejection = BadParam;

    async fn from_request(req: Request, state: &St) -> Result<Self, BadParam> {
        mint_request(&body_bytes(req, state).await?)
    }
}

impl ListParams {
    fn query(&self, fired: Option<&Fired>) -> PageQuery {
        let twist = match fired.map(|f| &f.kind) {
            Some(FaultKind::CursorLoop) => PageTwist::CursorLoop,
            Some(FaultKind::DuplicateIds) => PageTwist::DuplicateIds,
            Some(FaultKind::LastIdAhead) => PageTwist::LastIdAhead,
            _ => PageTwist::None,
        };
        PageQuery {
            limit: self.limit,
            after: self.after.clone(),
            twist,
        }
    }
}

/// The fault request of a list: its page number is only worth computing when a fault is armed
/// on the route (it costs a scan up to the cursor).
fn list_request<'a>(
    s: &Shared,
    route: FaultRoute,
    project: Option<&'a str>,
    page: impl FnOnce() -> u32,
) -> FaultRequest<'a> {
    FaultRequest {
        route,
        project,
        object: None,
        page: if s.faults.any_on(route) { page() } else { 1 },
    }
}

/// The fault request of a single object.
fn object_request<'a>(route: FaultRoute, project: &'a str, object: &'a str) -> FaultRequest<'a> {
    FaultRequest {
        route,
        project: Some(project),
        object: Some(object),
        page: 1,
    }
}

pub(crate) async fn list_projects(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    p: ListParams,
) -> Response {
    let req = list_request(&s, FaultRoute::ListProjects, None, || {
        s.org
            .projects_page_number(p.include_archived, &p.query(None))
    });
    answer(&s, &conn, req, |f| {
        Ok(s.org.list_projects(p.include_archived, &p.query(f)))
    })
    .await
}

pub(crate) async fn get_project(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
) -> Response {
    let req = FaultRequest {
        route: FaultRoute::GetProject,
        project: Some(&project),
        object: None,
        page: 1,
    };
    answer(&s, &conn, req, |_| s.org.get_project(&project)).await
}

pub(crate) async fn list_keys(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    p: ListParams,
) -> Response {
    let filter = KeyFilter {
        access: p.access,
        now: s.clock.now(),
    };
    let req = list_request(&s, FaultRoute::ListKeys, Some(&project), || {
        s.org.keys_page_number(&project, filter, &p.query(None))
    });
    answer(&s, &conn, req, |f| {
        s.org.list_keys(&project, filter, &p.query(f))
    })
    .await
}

pub(crate) async fn get_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, key)): Path<(String, String)>,
) -> Response {
    let req = object_request(FaultRoute::GetKey, &project, &key);
    answer(&s, &conn, req, |_| {
        s.org.get_key(&project, &key, s.clock.now())
    })
    .await
}

pub(crate) async fn delete_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, key)): Path<(String, String)>,
) -> Response {
    let req = object_request(FaultRoute::DeleteKey, &project, &key);
    answer(&s, &conn, req, |_| {
        let now = s.clock.now();
        let r = s.org.delete_key(&project, &key, now);
        if r.is_ok() {
            let (project, key) = (project.as_str(), key.as_str());
            log_write(&s, now, &Write::KeyDeleted { project, key });
        }
        r
    })
    .await
}

/// `POST …/api_keys/{api_key_id}` (November 2026).
pub(crate) async fn update_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, key)): Path<(String, String)>,
    update: KeyUpdate,
) -> Response {
    let req = object_request(FaultRoute::UpdateKey, &project, &key);
    answer(&s, &conn, req, |_| {
        let now = s.clock.now();
        let r = s.org.update_key(&project, &key, &update, now);
        if r.is_ok() {
            let w = Write::KeyUpdated {
                project: &project,
                key: &key,
                expires_in_seconds: update.expires_in_seconds,
                scopes: update.scopes.as_deref(),
            };
            log_write(&s, now, &w);
        }
        r
    })
    .await
}

pub(crate) async fn list_service_accounts(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    p: ListParams,
) -> Response {
    let req = list_request(&s, FaultRoute::ListServiceAccounts, Some(&project), || {
        s.org.service_accounts_page_number(&project, &p.query(None))
    });
    answer(&s, &conn, req, |f| {
        s.org.list_service_accounts(&project, &p.query(f))
    })
    .await
}

pub(crate) async fn get_service_account(
    State(s): State<S>,
    Path((project, sa)): Path<(String, String)>,
) -> Response {
    match s.org.get_service_account(&project, &sa) {
        Ok(body) => json(StatusCode::OK, body),
        Err(r) => refusal(r),
    }
}

pub(crate) async fn delete_service_account(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, sa)): Path<(String, String)>,
) -> Response {
    let req = object_request(FaultRoute::DeleteServiceAccount, &project, &sa);
    answer(&s, &conn, req, |_| {
        let keys: Vec<String> = (s.org.keys(&project).into_iter())
            .filter(|k| k.owner.is_service_account() && k.owner.id() == sa)
            .map(|k| k.id)
            .collect();
        let r = s.org.delete_service_account(&project, &sa);
        if r.is_ok() {
            let (project, sa, keys) = (project.as_str(), sa.as_str(), keys.as_slice());
            log_write(
                &s,
                s.clock.now(),
                &Write::ServiceAccountDeleted { project, sa, keys },
            );
        }
        r
    })
    .await
}

/// `POST …/service_accounts/{service_account_id}/api_keys`: mints a key; the fault's object is
/// the service account.
pub(crate) async fn create_service_account_key(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path((project, sa)): Path<(String, String)>,
    mint: MintRequest,
) -> Response {
    let req = object_request(FaultRoute::CreateServiceAccountKey, &project, &sa);
    answer(&s, &conn, req, |_| {
        let now = s.clock.now();
        let r = s.org.mint_service_account_key(&project, &sa, &mint, now);
        if let Ok(body) = &r {
            let w = Write::KeyMinted {
                project: &project,
                body,
                scopes: &mint.scopes,
            };
            log_write(&s, now, &w);
        }
        r
    })
    .await
}

pub(crate) async fn list_users(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    Path(project): Path<String>,
    p: ListParams,
) -> Response {
    let req = list_request(&s, FaultRoute::ListUsers, Some(&project), || {
        s.org.users_page_number(&project, &p.query(None))
    });
    answer(&s, &conn, req, |f| s.org.list_users(&project, &p.query(f))).await
}

pub(crate) async fn list_admin_keys(
    State(s): State<S>,
    ConnectInfo(conn): Conn,
    p: ListParams,
) -> Response {
    let req = list_request(&s, FaultRoute::ListAdminKeys, None, || {
        s.org.admin_keys_page_number(p.desc, &p.query(None))
    });
    answer(&s, &conn, req, |f| {
        s.org.list_admin_keys(p.desc, &p.query(f))
    })
    .await
}
