//! The `/v1` handlers of the audit log and usage endpoints (`audit_log`, `usage`), and the
//! audit events of the API's writes (`handlers` calls [`log_write`] after each write succeeded).
//!
//! Auth, latency, rate limit and random failures apply as for every route (the router's
//! layers), and so do scripted faults ([`FaultRoute::AuditLogs`], [`FaultRoute::UsageCompletions`],
//! [`FaultRoute::Costs`]; page 1 is the request without a cursor, page 2 any later one). Every
//! audit-log query string is recorded, so tests can see what a client asked for
//! (`SimServer::audit_log_queries`). Never holds a lock across an `.await`.

use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::audit_log::{Actor, AuditQuery};
use super::conn::ConnCtl;
use super::faults::{FaultRequest, FaultRoute};
use super::respond::{answer, error};
use super::shared::Shared;
use super::usage::{UsageKind, UsageQuery};

type S = Arc<Shared>;

/// A write through the API that the audit log records, with keysweep's admin key as actor.
pub(crate) enum Write<'a> {
    KeyDeleted {
        project: &'a str,
        key: &'a str,
    },
    KeyUpdated {
        project: &'a str,
        key: &'a str,
        expires_in_seconds: Option<i64>,
        scopes: Option<&'a [String]>,
    },
    KeyMinted {
        project: &'a str,
        body: &'a [u8],
        scopes: &'a [String],
    },
    ServiceAccountDeleted {
        project: &'a str,
        sa: &'a str,
        keys: &'a [String],
    },
}

/// Records a successful write in the audit log at `now`.
pub(crate) fn log_write(s: &Shared, now: i64, w: &Write<'_>) {
    let a = &s.audit;
    match w {
        Write::KeyDeleted { project, key } => a.key_deleted(now, project, key, &Actor::AdminKey),
        Write::KeyUpdated {
            project,
            key,
            expires_in_seconds,
            scopes,
        } => a.key_updated(now, project, key, *expires_in_seconds, *scopes),
        Write::KeyMinted {
            project,
            body,
            scopes,
        } => {
            let id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string));
            if let Some(key) = id {
                let c = super::history::Creation {
                    project: (*project).to_string(),
                    key,
                    at: now,
                    creator: String::new(),
                    scopes: Some(scopes.to_vec()),
                };
                a.key_created(&c, &Actor::AdminKey);
            }
        }
        Write::ServiceAccountDeleted { project, sa, keys } => {
            for key in *keys {
                a.key_deleted(now, project, key, &Actor::AdminKey);
            }
            a.service_account_deleted(now, project, sa);
        }
    }
}

/// A fault request on an intel route: page 1 without a cursor, page 2 with one.
fn fault_request(route: FaultRoute, raw: Option<&str>, cursors: &[&str]) -> FaultRequest<'static> {
    let later = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .any(|(k, v)| cursors.contains(&&*k) && !v.is_empty());
    FaultRequest {
        route,
        project: None,
        object: None,
        page: if later { 2 } else { 1 },
    }
}

/// `GET /organization/audit_logs`.
pub(crate) async fn audit_logs(
    State(s): State<S>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    RawQuery(raw): RawQuery,
) -> Response {
    s.audit.record_query(raw.as_deref().unwrap_or(""));
    if !s.audit.enabled() {
        return error(
            StatusCode::FORBIDDEN,
            "Audit logging is not enabled for this organization. An organization owner can \
             enable it in the organization's data controls settings.",
            "invalid_request_error",
            None,
            None,
        );
    }
    s.audit.seed_with(|| s.org.snapshot());
    let req = fault_request(FaultRoute::AuditLogs, raw.as_deref(), &["after", "before"]);
    let q = match AuditQuery::parse(raw.as_deref()) {
        Ok(q) => q,
        Err(bad) => return bad.into_response(),
    };
    match s.audit.page(&q) {
        Ok(body) => answer(&s, &conn, req, |_| Ok(body)).await,
        Err(bad) => bad.into_response(),
    }
}

async fn usage(s: &Shared, conn: &ConnCtl, kind: UsageKind, raw: Option<&str>) -> Response {
    let route = match kind {
        UsageKind::Completions => FaultRoute::UsageCompletions,
        UsageKind::Costs => FaultRoute::Costs,
    };
    match UsageQuery::parse(kind, raw, s.clock.now()) {
        Ok(q) => {
            s.usage.seed_with(|| s.org.snapshot());
            let body = s.usage.page(kind, &q);
            answer(s, conn, fault_request(route, raw, &["page"]), |_| Ok(body)).await
        }
        Err(bad) => bad.into_response(),
    }
}

/// `GET /organization/usage/completions`.
pub(crate) async fn usage_completions(
    State(s): State<S>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    RawQuery(raw): RawQuery,
) -> Response {
    usage(&s, &conn, UsageKind::Completions, raw.as_deref()).await
}

/// `GET /organization/costs`.
pub(crate) async fn costs(
    State(s): State<S>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    RawQuery(raw): RawQuery,
) -> Response {
    usage(&s, &conn, UsageKind::Costs, raw.as_deref()).await
}
