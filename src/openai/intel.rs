//! The audit log and the usage endpoints, read for what they say about keys: who created each
//! key and with which scopes (`api_key.created`, `api_key.updated`, `api_key.deleted` from
//! `GET /organization/audit_logs`), and each key's requests and cost over a window
//! (`GET /organization/usage/completions` and `GET /organization/costs`, grouped by
//! `api_key_id`, daily buckets).
//!
//! Wire shapes from `openapi-admin.yaml` (`AuditLog`) and openai-python 3.51.0
//! (`audit_log_list_response.py`, `usage_completions_response.py`, `usage_costs_response.py`);
//! every field the SDK makes optional is optional here. Requests go through the organisation's
//! transport (pacing, bearer header, body cap, retries); the audit log through the cursor pager
//! (loops, duplicate ids, runaway chains are errors), the usage pages through `next_page` with
//! their own bound.
//!
//! A 4xx other than 429 from these endpoints (audit logging off, a key without the scope, an
//! endpoint this organisation does not have) is [`IntelError::Unavailable`]: the caller goes on
//! without the data and says so, it is never a sweep failure. The log's key id is the key's
//! "tracking ID", which the API does not promise to be the key's id: callers match it and count
//! what does not match. This module never writes and never holds a secret beyond the transport's.

use std::collections::{BTreeMap, HashSet};

use reqwest::Method;
use serde::Deserialize;

use crate::openai::client::AdminClient;
use crate::openai::error::Error;
use crate::openai::transport::RetryMode;
use crate::openai::types::HasId;

/// `GET /organization/audit_logs`.
pub const AUDIT_LOGS: &str = "GET /organization/audit_logs";
/// `GET /organization/usage/completions`.
pub const USAGE_COMPLETIONS: &str = "GET /organization/usage/completions";
/// `GET /organization/costs`.
pub const COSTS: &str = "GET /organization/costs";

/// A usage listing longer than this many pages is treated as a runaway pager.
const MAX_USAGE_PAGES: usize = 1_000;

/// Daily buckets asked for per usage page at first: a month's window in one page.
const USAGE_BUCKETS_PER_PAGE: u32 = 31;

/// Why the audit log or the usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IntelError {
    /// A 4xx (not 429): the organisation does not give this data to this key (audit logging
    /// off, a missing scope, an endpoint it lacks). Expected; the caller degrades.
    #[error("{endpoint} is unavailable (HTTP {status}){}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Unavailable {
        endpoint: &'static str,
        status: u16,
        message: Option<String>,
    },
    /// Anything else (5xx after retries, timeouts, a malformed answer): also not a sweep
    /// failure, but not a property of the organisation either.
    #[error(transparent)]
    Failed(Error),
}

impl IntelError {
    fn from_error(endpoint: &'static str, e: Error) -> Self {
        match e.status() {
            // A stray 404 is a glitch on the way, not the organisation's answer.
            _ if matches!(e, Error::StrayNotFound { .. }) => IntelError::Failed(e),
            Some(status) if (400..500).contains(&status) && status != 429 => {
                let message = match &e {
                    Error::Unauthorized { api, .. }
                    | Error::NotFound { api, .. }
                    | Error::Refused { api, .. } => api.message.clone(),
                    _ => None,
                };
                IntelError::Unavailable {
                    endpoint,
                    status,
                    message,
                }
            }
            _ => IntelError::Failed(e),
        }
    }
}

/// What happened to a key, per the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEventKind {
    /// `scopes`: `data.scopes`, `None` when the event does not carry them (unknown, never "all").
    Created {
        scopes: Option<Vec<String>>,
    },
    /// `scopes`: `changes_requested.scopes` when the update changed them;
    /// `expires_in_seconds`: the expiry it set (from `effective_at`).
    Updated {
        scopes: Option<Vec<String>>,
        expires_in_seconds: Option<i64>,
    },
    Deleted,
}

/// Who acted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// `session` or `api_key` (as the API says; empty when absent).
    pub kind: String,
    /// The person's e-mail (a session's user, or the user owning the acting key).
    pub email: Option<String>,
    pub user_id: Option<String>,
    /// The acting key's tracking id (`actor.api_key.id`).
    pub api_key_id: Option<String>,
}

/// One `api_key.*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub id: String,
    pub effective_at: i64,
    /// The key's tracking id as the log gives it (`None` when absent).
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    pub kind: KeyEventKind,
    pub actor: Actor,
}

/// A key's usage over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyUsage {
    pub requests: u64,
    pub cost_usd: f64,
    /// The start of the last daily bucket with requests (Unix seconds).
    pub last_used_bucket: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct WireEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    effective_at: i64,
    #[serde(default)]
    project: Option<WireRef>,
    #[serde(default)]
    actor: Option<WireActor>,
    #[serde(default, rename = "api_key.created")]
    created: Option<WireKeyDetails>,
    #[serde(default, rename = "api_key.updated")]
    updated: Option<WireKeyDetails>,
    #[serde(default, rename = "api_key.deleted")]
    deleted: Option<WireKeyDetails>,
}

impl HasId for WireEvent {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Deserialize)]
struct WireRef {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUser {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireActor {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    session: Option<WireSession>,
    #[serde(default)]
    api_key: Option<WireActorKey>,
}

#[derive(Debug, Deserialize)]
struct WireSession {
    #[serde(default)]
    user: Option<WireUser>,
}

#[derive(Debug, Deserialize)]
struct WireActorKey {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    user: Option<WireUser>,
}

#[derive(Debug, Deserialize)]
struct WireKeyDetails {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    data: Option<WireScopes>,
    #[serde(default)]
    changes_requested: Option<WireScopes>,
}

#[derive(Debug, Deserialize)]
struct WireScopes {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    expires_in_seconds: Option<i64>,
}

impl WireEvent {
    fn into_domain(self) -> Option<KeyEvent> {
        let (details, kind) = match self.kind.as_str() {
            "api_key.created" => {
                let d = self.created?;
                let scopes = d.data.as_ref().and_then(|s| s.scopes.clone());
                (d, KeyEventKind::Created { scopes })
            }
            "api_key.updated" => {
                let d = self.updated?;
                let changes = d.changes_requested.as_ref();
                let scopes = changes.and_then(|s| s.scopes.clone());
                let expires_in_seconds = changes.and_then(|s| s.expires_in_seconds);
                let kind = KeyEventKind::Updated {
                    scopes,
                    expires_in_seconds,
                };
                (d, kind)
            }
            "api_key.deleted" => (self.deleted?, KeyEventKind::Deleted),
            _ => return None,
        };
        let actor = self.actor.map(|a| {
            let (user, api_key_id) = match (a.session, a.api_key) {
                (Some(s), _) => (s.user, None),
                (None, Some(k)) => (k.user, k.id),
                (None, None) => (None, None),
            };
            let user = user.unwrap_or_default();
            Actor {
                kind: a.kind.unwrap_or_default(),
                email: user.email,
                user_id: user.id,
                api_key_id,
            }
        });
        Some(KeyEvent {
            id: self.id,
            effective_at: self.effective_at,
            key_id: details.id,
            project_id: self.project.and_then(|p| p.id),
            kind,
            actor: actor.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct WireUsagePage {
    data: Vec<WireBucket>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next_page: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireBucket {
    start_time: i64,
    #[serde(default)]
    results: Vec<WireResult>,
}

#[derive(Debug, Deserialize)]
struct WireResult {
    #[serde(default)]
    api_key_id: Option<String>,
    #[serde(default)]
    num_model_requests: Option<u64>,
    #[serde(default)]
    amount: Option<WireAmount>,
}

#[derive(Debug, Deserialize)]
struct WireAmount {
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    currency: Option<String>,
}

impl AdminClient {
    /// Every `api_key.*` event with `effective_at >= since`, newest first as the log lists them.
    /// Events of other types, or without their details object, are skipped.
    pub async fn key_events(&self, since: i64) -> Result<Vec<KeyEvent>, IntelError> {
        let mut out = Vec::new();
        self.each_key_event(since, |e| out.push(e)).await?;
        Ok(out)
    }

    /// [`AdminClient::key_events`], each event handed to `each` as its page is read, for a
    /// caller that keeps less of it than the whole event (a first read of a large organisation
    /// is 100k events).
    pub async fn each_key_event(
        &self,
        since: i64,
        mut each: impl FnMut(KeyEvent),
    ) -> Result<(), IntelError> {
        let ep = AUDIT_LOGS;
        let mut url = self
            .url(&["organization", "audit_logs"], ep, None)
            .map_err(IntelError::Failed)?;
        {
            let mut q = url.query_pairs_mut();
            for t in ["api_key.created", "api_key.updated", "api_key.deleted"] {
                q.append_pair("event_types[]", t);
            }
            q.append_pair("effective_at[gte]", &since.to_string());
        }
        self.list_all::<WireEvent>(ep, None, url, |e| {
            e.into_domain().into_iter().for_each(&mut each)
        })
        .await
        .map_err(|e| IntelError::from_error(ep, e))
    }

    /// Each key's requests (completions) and cost (costs) over `[start, end)`, daily buckets,
    /// grouped by `api_key_id`. Results without an `api_key_id` are left out; costs in a
    /// currency other than USD are left out.
    pub async fn usage_by_key(
        &self,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<String, KeyUsage>, IntelError> {
        let mut out: BTreeMap<String, KeyUsage> = BTreeMap::new();
        let segs: &[&str] = &["organization", "usage", "completions"];
        self.usage_pages(USAGE_COMPLETIONS, segs, start, end, |bucket, key, r| {
            let n = r.num_model_requests.unwrap_or(0);
            let u = out.entry(key).or_default();
            u.requests += n;
            if n > 0 {
                u.last_used_bucket = u.last_used_bucket.max(Some(bucket));
            }
        })
        .await?;
        self.usage_pages(
            COSTS,
            &["organization", "costs"],
            start,
            end,
            |_, key, r| {
                let amount = r.amount.as_ref();
                let usd = amount.is_none_or(|a| a.currency.as_deref().is_none_or(|c| c == "usd"));
                if let Some(v) = amount
                    .and_then(|a| a.value)
                    .filter(|v| usd && v.is_finite())
                {
                    out.entry(key).or_default().cost_usd += v;
                }
            },
        )
        .await?;
        Ok(out)
    }

    /// Pages through one usage endpoint, handing each grouped result to `each`.
    ///
    /// A page holds `limit` daily buckets, each with a result per key used that day: at 100k
    /// keys a month in one page is 150 MB, far over `max_response_bytes`. A page refused as too
    /// large is asked for again with half the buckets, down to one (which only a day's usage
    /// over the cap still fails), and later pages keep the smaller size. So do later reads by
    /// the same client (a daemon's sweeps, until a reload builds new clients): a refused page
    /// costs the server its whole answer and this process up to `max_response_bytes` read for
    /// nothing (at 100k keys, 150 MB made three times each sweep). A smaller size is never
    /// grown again; it only costs more pages of one request each.
    async fn usage_pages(
        &self,
        ep: &'static str,
        segments: &[&str],
        start: i64,
        end: i64,
        mut each: impl FnMut(i64, String, &WireResult),
    ) -> Result<(), IntelError> {
        let fail = |e| IntelError::from_error(ep, e);
        let base = self.url(segments, ep, None).map_err(IntelError::Failed)?;
        let ctx = self.ctx(ep, None);
        let mut page: Option<String> = None;
        let mut seen = HashSet::new();
        let mut limit = self.usage_buckets(ep).unwrap_or(USAGE_BUCKETS_PER_PAGE);
        for _ in 0..MAX_USAGE_PAGES {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("start_time", &start.to_string())
                    .append_pair("end_time", &end.to_string())
                    .append_pair("bucket_width", "1d")
                    .append_pair("group_by[]", "api_key_id")
                    .append_pair("limit", &limit.to_string());
                if let Some(p) = &page {
                    q.append_pair("page", p);
                }
            }
            let ans = match (self.transport())
                .call(Method::GET, &url, &ctx, RetryMode::Idempotent)
                .await
            {
                Err(Error::BodyTooLarge { .. }) if limit > 1 => {
                    limit /= 2;
                    tracing::debug!(endpoint = ep, limit, "usage page too large; fewer buckets");
                    continue;
                }
                other => other.map_err(fail)?,
            };
            let body: WireUsagePage = self.transport().decode(&ctx, &ans).map_err(fail)?;
            for b in &body.data {
                for r in &b.results {
                    if let Some(key) = &r.api_key_id {
                        each(b.start_time, key.clone(), r);
                    }
                }
            }
            match body.next_page.filter(|_| body.has_more) {
                // More to come and no way to it: what was read is part of the usage, and a
                // part would judge `max_idle` by the oldest days alone.
                None if body.has_more => {
                    let detail = "has_more without a next_page".to_string();
                    return Err(fail(Error::Pagination { ctx, detail }));
                }
                Some(next) if seen.insert(next.clone()) => page = Some(next),
                Some(cursor) => return Err(fail(Error::CursorLoop { ctx, cursor })),
                None => {
                    self.set_usage_buckets(ep, limit);
                    return Ok(());
                }
            }
        }
        let cursor = page.unwrap_or_default();
        Err(fail(Error::CursorLoop { ctx, cursor }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::error::{ApiErrorBody, RequestContext};

    fn event(json: &str) -> Option<KeyEvent> {
        serde_json::from_str::<WireEvent>(json)
            .unwrap()
            .into_domain()
    }

    #[test]
    fn a_creation_without_data_scopes_has_unknown_scopes_never_all() {
        let base = r#""id":"audit_log-1","type":"api_key.created","effective_at":5"#;
        let none = event(&format!(r#"{{{base},"api_key.created":{{"id":"key_a"}}}}"#)).unwrap();
        assert_eq!(none.kind, KeyEventKind::Created { scopes: None });
        let empty_data = format!(r#"{{{base},"api_key.created":{{"id":"key_a","data":{{}}}}}}"#);
        assert_eq!(
            event(&empty_data).unwrap().kind,
            KeyEventKind::Created { scopes: None }
        );
        let all =
            format!(r#"{{{base},"api_key.created":{{"id":"key_a","data":{{"scopes":[]}}}}}}"#);
        assert_eq!(
            event(&all).unwrap().kind,
            KeyEventKind::Created {
                scopes: Some(vec![])
            }
        );
        assert_eq!(none.key_id.as_deref(), Some("key_a"));
        assert_eq!(none.actor, Actor::default());
    }

    #[test]
    fn actors_updates_deletions_and_other_types() {
        let upd = event(
            r#"{"id":"a","type":"api_key.updated","effective_at":1,"project":{"id":"proj_1"},
                "actor":{"type":"api_key","api_key":{"id":"key_adm","type":"user",
                         "user":{"id":"user_1","email":"o@example.com"}}},
                "api_key.updated":{"id":"key_b","changes_requested":{"expires_in_seconds":9}}}"#,
        )
        .unwrap();
        let want = KeyEventKind::Updated {
            scopes: None,
            expires_in_seconds: Some(9),
        };
        assert_eq!(upd.kind, want);
        assert_eq!(upd.project_id.as_deref(), Some("proj_1"));
        assert_eq!(upd.actor.kind, "api_key");
        assert_eq!(upd.actor.api_key_id.as_deref(), Some("key_adm"));
        assert_eq!(upd.actor.email.as_deref(), Some("o@example.com"));
        let del = event(
            r#"{"id":"b","type":"api_key.deleted","effective_at":2,
                "actor":{"type":"session","session":{"user":{"email":"p@example.com"}}},
                "api_key.deleted":{"id":"key_c"}}"#,
        )
        .unwrap();
        assert_eq!(del.kind, KeyEventKind::Deleted);
        assert_eq!(del.actor.email.as_deref(), Some("p@example.com"));
        assert!(event(r#"{"id":"c","type":"project.archived","effective_at":3}"#).is_none());
        // The details object missing: nothing to learn.
        assert!(event(r#"{"id":"d","type":"api_key.deleted","effective_at":3}"#).is_none());
    }

    fn ctx() -> RequestContext {
        RequestContext {
            organization: "acme".into(),
            project: None,
            endpoint: AUDIT_LOGS,
        }
    }

    #[test]
    fn a_4xx_is_unavailable_and_anything_else_a_failure() {
        let api = || {
            Box::new(ApiErrorBody {
                message: Some("Audit logging is not enabled".into()),
                ..ApiErrorBody::default()
            })
        };
        let refused = Error::Refused {
            ctx: ctx(),
            status: 400,
            api: api(),
        };
        let forbidden = Error::Unauthorized {
            ctx: ctx(),
            status: 403,
            api: api(),
        };
        let server = Error::Server {
            ctx: ctx(),
            status: 503,
            api: api(),
        };
        for e in [refused, forbidden] {
            let got = IntelError::from_error(AUDIT_LOGS, e);
            assert!(matches!(got, IntelError::Unavailable { .. }), "{got:?}");
            assert!(got.to_string().contains("not enabled"), "{got}");
        }
        let got = IntelError::from_error(AUDIT_LOGS, server);
        assert!(matches!(got, IntelError::Failed(_)), "{got:?}");
        let limited = Error::RateLimited {
            ctx: ctx(),
            retry_after: None,
            api: api(),
        };
        let got = IntelError::from_error(AUDIT_LOGS, limited);
        assert!(
            matches!(got, IntelError::Failed(_)),
            "429 is not 'unavailable': {got:?}"
        );
    }
}
