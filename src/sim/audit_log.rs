//! The simulated audit log: `GET /v1/organization/audit_logs`, read from `openapi-admin.yaml`
//! (`AuditLog`, `ListAuditLogsResponse`) and openai-python 3.51.0
//! (`types/admin/organization/audit_log_list_response.py`).
//!
//! Events: `api_key.created` (`data.scopes`, absent when the history says so), `api_key.updated`
//! (`changes_requested.{expires_in_seconds, scopes}`), `api_key.deleted`,
//! `service_account.created`/`deleted` (`data.role`), `user.added` (`data.role`). The past comes
//! from `history`; every write through the API (DELETE, update, mint, service-account DELETE)
//! adds its event at the simulator's clock with the admin key as the actor (`actor.type =
//! "api_key"`, the oldest admin key's id and owner). Newest first; filters `effective_at[gt|gte|
//! lt|lte]`, `event_types[]`, `project_ids[]`, `resource_ids[]`, `actor_ids[]`, `actor_emails[]`;
//! cursor paging with `limit` (1–100, default 20), `after`, `before`, `first_id`/`last_id`,
//! `has_more`. With audit logging off every request answers 403.
//!
//! The past is derived from the organisation at the first read of the log (so a large
//! organisation that is never asked pays nothing): a key deleted through the API before that
//! read has its deletion in the log but not its creation, like a key older than the log.
//! `SimServer::remove_key` derives it first, so the removed key's creation stays.
//!
//! It never imports `crate::openai`, holds no lock across an `.await`, and never reads the
//! clock (handlers pass `now`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use super::history::SimHistory;
use super::history::{Creation, derive, emails, org_owner};
use super::model::SimOrg;
use super::respond::{BadParam, bad_param};

/// One stored event: the JSON served, and the fields the filters read.
struct Event {
    seq: u64,
    effective_at: i64,
    kind: String,
    project: Option<String>,
    resource: String,
    actor_id: Option<String>,
    actor_email: Option<String>,
    json: Value,
}

/// (effective_at, type, project, resource id, actor, the type's details object).
type EventArgs<'a> = (i64, &'a str, &'a str, &'a str, &'a Actor<'a>, Value);

/// `api_key.created`'s details: the id, and `data.scopes` when the history logs them.
fn created_details(c: &Creation) -> Value {
    let mut details = json!({"id": c.key});
    if let Some(scopes) = &c.scopes {
        details["data"] = json!({"scopes": scopes});
    }
    details
}

/// Who acted: a person in the dashboard, or an API key.
pub(crate) enum Actor<'a> {
    Session { user: &'a str },
    AdminKey,
}

pub(crate) struct AuditLog {
    enabled: AtomicBool,
    book: Mutex<Book>,
    /// The organisation file's explicit history, applied when the past is first read.
    history: SimHistory,
    emails: HashMap<String, String>,
    /// The admin key that acts for keysweep: (its id, its owner's user id).
    admin: (String, String),
    owner: Option<String>,
    projects: HashMap<String, Option<String>>,
    /// Every query string the audit-log route received, in order (tests read them).
    queries: Mutex<Vec<String>>,
}

/// The events. The past (memberships, service accounts, every listed key's creation) is
/// derived from the organisation the first time the log is read, not at start: a benchmark
/// organisation of a million keys that never reads the log pays nothing for it.
#[derive(Default)]
struct Book {
    seeded: bool,
    /// Sorted by `(effective_at, seq)`, oldest first.
    events: Vec<Event>,
    next_seq: u64,
    /// Keys whose creation was logged live (hooks, mints) before the past was derived.
    created_live: HashSet<String>,
}

/// The parsed query of a list request.
#[derive(Debug, Default)]
pub(crate) struct AuditQuery {
    pub limit: usize,
    pub after: Option<String>,
    pub before: Option<String>,
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
    pub event_types: Vec<String>,
    pub project_ids: Vec<String>,
    pub resource_ids: Vec<String>,
    pub actor_ids: Vec<String>,
    pub actor_emails: Vec<String>,
}

impl AuditLog {
    /// The log of `org` (its past is derived at the first read, see [`Book`]).
    pub fn new(org: &SimOrg, history: SimHistory, enabled: bool) -> Self {
        let admin = org
            .admin_api_keys
            .iter()
            .min_by_key(|k| (k.created_at, k.id.clone()))
            .map(|k| (k.id.clone(), k.owner_user_id.clone()))
            .unwrap_or_else(|| ("key_admin".to_string(), String::new()));
        AuditLog {
            enabled: AtomicBool::new(enabled),
            book: Mutex::new(Book::default()),
            history,
            emails: emails(org),
            admin,
            owner: org_owner(org),
            projects: org
                .projects
                .iter()
                .map(|p| (p.id.clone(), p.name.clone()))
                .collect(),
            queries: Mutex::new(Vec::new()),
        }
    }

    /// Records one request's query string.
    pub fn record_query(&self, raw: &str) {
        let mut q = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        q.push(raw.to_string());
    }

    /// Every query string received so far.
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Derives the past from `org` (the organisation now) unless done already.
    pub fn seed_with(&self, org: impl FnOnce() -> SimOrg) {
        if self.lock().seeded {
            return;
        }
        let org = org();
        let (creations, _) = derive(&org, &self.history);
        let owner = self.owner.clone().unwrap_or_default();
        let session = Actor::Session { user: &owner };
        let mut book = self.lock();
        if book.seeded {
            return;
        }
        let mut past = Vec::new();
        for p in &org.projects {
            for m in &p.members {
                let data = json!({"id": m.user_id, "data": {"role": m.role}});
                let e = (
                    m.added_at,
                    "user.added",
                    p.id.as_str(),
                    m.user_id.as_str(),
                    &session,
                    data,
                );
                past.push(self.event(&mut book, e));
            }
            for sa in &p.service_accounts {
                let data = json!({"id": sa.id, "data": {"role": sa.role}});
                let kind = "service_account.created";
                let e = (
                    sa.created_at,
                    kind,
                    p.id.as_str(),
                    sa.id.as_str(),
                    &session,
                    data,
                );
                past.push(self.event(&mut book, e));
            }
        }
        let fresh: Vec<&Creation> = (creations.iter())
            .filter(|c| !book.created_live.contains(&c.key))
            .collect();
        for c in fresh {
            let actor = Actor::Session { user: &c.creator };
            let details = created_details(c);
            let e = (
                c.at,
                "api_key.created",
                c.project.as_str(),
                c.key.as_str(),
                &actor,
                details,
            );
            past.push(self.event(&mut book, e));
        }
        book.events.append(&mut past);
        book.events.sort_by_key(|e| (e.effective_at, e.seq));
        book.seeded = true;
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    fn actor_json(&self, actor: &Actor<'_>) -> (Value, Option<String>, Option<String>) {
        let (user, id) = match actor {
            Actor::Session { user } => (*user, None),
            Actor::AdminKey => (self.admin.1.as_str(), Some(self.admin.0.clone())),
        };
        let email = self.emails.get(user).cloned();
        let u = json!({"id": user, "email": email});
        match actor {
            Actor::Session { .. } => (
                json!({"type": "session", "session": {"user": u, "ip_address": "203.0.113.7"}}),
                Some(user.to_string()),
                email,
            ),
            Actor::AdminKey => (
                json!({"type": "api_key", "api_key": {"id": id, "type": "user", "user": u}}),
                id,
                email,
            ),
        }
    }

    /// Builds an event with the next sequence number.
    fn event(&self, book: &mut Book, e: EventArgs<'_>) -> Event {
        let (at, kind, project, resource, actor, details) = e;
        let (actor_json, actor_id, actor_email) = self.actor_json(actor);
        book.next_seq += 1;
        let seq = book.next_seq;
        let id = format!("audit_log-{seq:08}");
        let mut obj = json!({"id": id, "type": kind, "effective_at": at, "actor": actor_json});
        let name = self.projects.get(project).cloned().flatten();
        obj["project"] = json!({"id": project, "name": name});
        obj[kind] = details;
        Event {
            seq,
            effective_at: at,
            kind: kind.to_string(),
            project: Some(project.to_string()),
            resource: resource.to_string(),
            actor_id,
            actor_email,
            json: obj,
        }
    }

    /// Appends an event at `at` (kept in order even when the clock was moved back).
    fn push(&self, e: EventArgs<'_>) {
        let mut book = self.lock();
        if e.1 == "api_key.created" && !book.seeded {
            book.created_live.insert(e.3.to_string());
        }
        let event = self.event(&mut book, e);
        let pos = (book.events)
            .partition_point(|x| (x.effective_at, x.seq) <= (event.effective_at, event.seq));
        book.events.insert(pos, event);
    }

    pub fn key_created(&self, c: &Creation, actor: &Actor<'_>) {
        let details = created_details(c);
        self.push((c.at, "api_key.created", &c.project, &c.key, actor, details));
    }

    pub fn key_deleted(&self, at: i64, project: &str, key: &str, actor: &Actor<'_>) {
        let details = json!({"id": key});
        self.push((at, "api_key.deleted", project, key, actor, details));
    }

    pub fn key_updated(
        &self,
        at: i64,
        project: &str,
        key: &str,
        expires_in_seconds: Option<i64>,
        scopes: Option<&[String]>,
    ) {
        let mut changes = json!({});
        if let Some(s) = expires_in_seconds {
            changes["expires_in_seconds"] = json!(s);
        }
        if let Some(s) = scopes {
            changes["scopes"] = json!(s);
        }
        let details = json!({"id": key, "changes_requested": changes});
        let actor = Actor::AdminKey;
        self.push((at, "api_key.updated", project, key, &actor, details));
    }

    pub fn service_account_deleted(&self, at: i64, project: &str, sa: &str) {
        let details = json!({"id": sa});
        let actor = Actor::AdminKey;
        self.push((at, "service_account.deleted", project, sa, &actor, details));
    }

    /// One page as `ListAuditLogsResponse` JSON, or the cursor that matched nothing.
    pub fn page(&self, q: &AuditQuery) -> Result<Vec<u8>, BadParam> {
        let book = self.lock();
        let events = &book.events;
        // Newest first.
        let matching: Vec<&Event> = events.iter().rev().filter(|e| q.admits(e)).collect();
        let position = |id: &str, param: &'static str| {
            matching
                .iter()
                .position(|e| e.json["id"] == id)
                .ok_or_else(|| bad_param(param, format!("Invalid '{param}': no such object.")))
        };
        let (from, to, has_more) = if let Some(after) = &q.after {
            let start = position(after, "after")? + 1;
            let end = (start + q.limit).min(matching.len());
            (start, end, end < matching.len())
        } else if let Some(before) = &q.before {
            let end = position(before, "before")?;
            let start = end.saturating_sub(q.limit);
            (start, end, start > 0)
        } else {
            let end = q.limit.min(matching.len());
            (0, end, end < matching.len())
        };
        let data: Vec<&Value> = matching[from..to].iter().map(|e| &e.json).collect();
        let body = json!({
            "object": "list",
            "data": data,
            "first_id": data.first().map(|v| v["id"].clone()),
            "last_id": data.last().map(|v| v["id"].clone()),
            "has_more": has_more,
        });
        Ok(serde_json::to_vec(&body).unwrap_or_default())
    }
}

impl AuditQuery {
    fn admits(&self, e: &Event) -> bool {
        let t = e.effective_at;
        let any = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
        };
        self.gt.is_none_or(|x| t > x)
            && self.gte.is_none_or(|x| t >= x)
            && self.lt.is_none_or(|x| t < x)
            && self.lte.is_none_or(|x| t <= x)
            && any(&self.event_types, Some(&e.kind))
            && any(&self.project_ids, e.project.as_deref())
            && any(&self.resource_ids, Some(&e.resource))
            && any(&self.actor_ids, e.actor_id.as_deref())
            && any(&self.actor_emails, e.actor_email.as_deref())
    }

    /// Parses the query string; unknown parameters are ignored, as OpenAI does.
    pub fn parse(raw: Option<&str>) -> Result<Self, BadParam> {
        let mut q = AuditQuery {
            limit: 20,
            ..AuditQuery::default()
        };
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let int = |param: &'static str| {
                v.parse::<i64>().map_err(|_| {
                    bad_param(param, format!("Invalid '{param}': expected an integer."))
                })
            };
            match k.trim_end_matches("[]") {
                "limit" => {
                    q.limit = int("limit")
                        .ok()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            bad_param("limit", "Invalid 'limit': must be 1 to 100.".into())
                        })?;
                }
                "after" => q.after = Some(v.to_string()).filter(|s| !s.is_empty()),
                "before" => q.before = Some(v.to_string()).filter(|s| !s.is_empty()),
                "effective_at[gt]" => q.gt = Some(int("effective_at[gt]")?),
                "effective_at[gte]" => q.gte = Some(int("effective_at[gte]")?),
                "effective_at[lt]" => q.lt = Some(int("effective_at[lt]")?),
                "effective_at[lte]" => q.lte = Some(int("effective_at[lte]")?),
                "event_types" => q.event_types.push(v.to_string()),
                "project_ids" => q.project_ids.push(v.to_string()),
                "resource_ids" => q.resource_ids.push(v.to_string()),
                "actor_ids" => q.actor_ids.push(v.to_string()),
                "actor_emails" => q.actor_emails.push(v.to_string()),
                _ => {}
            }
        }
        Ok(q)
    }
}
