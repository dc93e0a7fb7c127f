//! Scripted faults: precise, deterministic misbehaviour for tests of the client.
//!
//! A test arms a [`Fault`] on a running server; the fault matches requests by route, optionally
//! project, object id (key or service account) and page number, fires a given number of times
//! (unlimited by default) and then stops matching:
//!
//! ```no_run
//! # use keysweep::sim::{Fault, FaultKind, SimServer};
//! # fn f(sim: &SimServer) {
//! // Page 3 of proj_x's key list answers 500 twice, then works.
//! sim.faults().add(Fault::on_list_keys("proj_x").page(3).times(2).respond(FaultKind::Status(500)));
//! # }
//! ```
//!
//! Page numbers are 1-based and counted per project from the request's `after` cursor and
//! `limit` (`page = position of the first item returned / limit + 1`), so a retry of page 3 is
//! still page 3. Faults are checked in the order they were added; the first match fires.
//! A fault fires *before* the request has any effect (a faulted DELETE deletes nothing, a
//! faulted update changes nothing, a faulted mint mints nothing) unless armed with
//! [`Fault::after_effect`], which models "deleted (updated, minted), but the answer was lost".
//!
//! One kind is not a misbehaviour of the server but of the world around it:
//! [`FaultKind::Apply`] changes the organisation (a [`SimEffect`]: a key used, renamed or deleted
//! by its owner) at the moment a matching request arrives, then answers normally. It scripts a
//! race precisely, e.g. "the key is used between keysweep's listing and its re-check":
//!
//! ```no_run
//! # use keysweep::sim::{Fault, FaultKind, SimEffect, SimServer};
//! # fn f(sim: &SimServer) {
//! // The first GET of key_x (the re-check before a DELETE) sees it freshly used.
//! sim.faults().add(
//!     Fault::on_get_key("proj_x", "key_x")
//!         .once()
//!         .respond(FaultKind::Apply(SimEffect::set_last_used("proj_x", "key_x", Some(1_767_225_600)))),
//! );
//! # }
//! ```
//!
//! This module only decides *whether* and *what*; the server renders the misbehaviour and applies
//! effects. It never touches the organisation's data itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The routes a fault can be armed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultRoute {
    ListProjects,
    GetProject,
    ListKeys,
    GetKey,
    DeleteKey,
    /// `POST …/api_keys/{api_key_id}` (November 2026); the object is the key.
    UpdateKey,
    ListServiceAccounts,
    /// `POST …/service_accounts/{id}/api_keys` (November 2026); the object is the account.
    CreateServiceAccountKey,
    DeleteServiceAccount,
    ListUsers,
    ListAdminKeys,
    /// `GET /organization/audit_logs` (issue 16). Page 1 is the request without a cursor;
    /// every later page (any `after` or `before`) is page 2.
    AuditLogs,
    /// `GET /organization/usage/completions`; page 1 without `page`, page 2 with one.
    UsageCompletions,
    /// `GET /organization/costs`; page 1 without `page`, page 2 with one.
    Costs,
}

/// What a fired fault does to the response.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// This HTTP status with OpenAI's error envelope (`type`/`code` chosen like OpenAI's).
    Status(u16),
    /// This HTTP status with OpenAI's error envelope carrying this message: the API's own
    /// wording, which echoes the ids and names it was sent.
    StatusMessage { status: u16, message: String },
    /// This HTTP status with a body that is not OpenAI's error envelope (a proxy's, gateway's
    /// or load balancer's page): not the API's answer.
    Foreign { status: u16, body: String },
    /// 429 with `Retry-After: <secs>` and `retry-after-ms`.
    RateLimited { retry_after_secs: u64 },
    /// The normal body cut in half: valid HTTP, broken JSON.
    Truncated,
    /// A body that is not JSON at all (`=` instead of the first `:`).
    Malformed,
    /// `created_at` as a string (and `deleted` as a string on DELETE answers).
    WrongTypes,
    /// Lists only: `has_more: true` and `last_id` equal to the request's `after` (null on the
    /// first page), so the cursor never advances.
    CursorLoop,
    /// Lists only: the first item is replaced by the last item of the previous page (on page 1,
    /// the second item repeats the first); the cursor still advances.
    DuplicateIds,
    /// Lists only: `last_id` names the next page's first item instead of this page's last,
    /// so a client that takes it for the cursor (as the SDK does) skips that item; keysweep
    /// pages on from the last item received.
    LastIdAhead,
    /// Valid JSON padded with an unknown string field until the body exceeds this many bytes.
    Oversized(usize),
    /// Waits this long, then answers normally (longer than the client's timeout, typically).
    Delay(Duration),
    /// Closes the TCP connection with a reset and no response at all.
    ConnectionReset,
    /// Leaves the `last_used_at` field out of every key object (older API versions).
    OmitLastUsed,
    /// Leaves the `expires_at` field out of every key object (an API before November 2026).
    OmitExpiresAt,
    /// Adds unknown fields to the envelope, each object and each key owner.
    ExtraFields,
    /// Answers with this 3xx status and a `Location` header (resolved against the request's
    /// URL by the client), and no effect: a misbehaving API or a hijacked path that tries to
    /// make the client re-send its request (a DELETE, with the admin key) elsewhere.
    Redirect { status: u16, location: String },
    /// Merges these fields into the answer's object(s) (each item of a list): an `id` or an
    /// `owner` other than the real one, e.g. a re-read answering for another key.
    Patch(serde_json::Value),
    /// Changes the organisation first (before the request's own effect, or after it with
    /// [`Fault::after_effect`]), then answers normally: someone else acted between two of the
    /// client's requests. Arm it with [`Fault::once`] unless it should repeat.
    Apply(SimEffect),
}

/// A change to the organisation made by someone other than the client (see
/// [`FaultKind::Apply`]). It names its own target, so it can be triggered by any request. A
/// target that does not exist (any more) is ignored: the effect models the world, not the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEffect {
    /// The key was used at this time (`None`: never used).
    SetLastUsed {
        project: String,
        key: String,
        at: Option<i64>,
    },
    /// The key was renamed.
    Rename {
        project: String,
        key: String,
        name: String,
    },
    /// The key was deleted by its owner (in the dashboard, behind the API's back).
    RemoveKey { project: String, key: String },
    /// The key's expiry was moved (or removed: `None`) in the dashboard.
    SetExpiresAt {
        project: String,
        key: String,
        at: Option<i64>,
    },
}

impl SimEffect {
    pub fn set_last_used(
        project: impl Into<String>,
        key: impl Into<String>,
        at: Option<i64>,
    ) -> Self {
        SimEffect::SetLastUsed {
            project: project.into(),
            key: key.into(),
            at,
        }
    }

    pub fn rename(
        project: impl Into<String>,
        key: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        SimEffect::Rename {
            project: project.into(),
            key: key.into(),
            name: name.into(),
        }
    }

    pub fn set_expires_at(
        project: impl Into<String>,
        key: impl Into<String>,
        at: Option<i64>,
    ) -> Self {
        SimEffect::SetExpiresAt {
            project: project.into(),
            key: key.into(),
            at,
        }
    }

    pub fn remove_key(project: impl Into<String>, key: impl Into<String>) -> Self {
        SimEffect::RemoveKey {
            project: project.into(),
            key: key.into(),
        }
    }
}

/// A fault to arm; build with the `on_*` constructors and finish with [`Fault::respond`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub(crate) route: FaultRoute,
    pub(crate) project: Option<String>,
    pub(crate) object: Option<String>,
    pub(crate) page: Option<u32>,
    pub(crate) times: Option<u32>,
    pub(crate) after_effect: bool,
    pub(crate) kind: FaultKind,
}

impl Fault {
    /// Any request on `route` (narrow with [`Fault::project`], [`Fault::object`], [`Fault::page`]).
    pub fn on(route: FaultRoute) -> Self {
        Fault {
            route,
            project: None,
            object: None,
            page: None,
            times: None,
            after_effect: false,
            kind: FaultKind::Status(500),
        }
    }

    /// `GET /organization/projects`.
    pub fn on_list_projects() -> Self {
        Self::on(FaultRoute::ListProjects)
    }

    /// `GET /organization/projects/{project}/api_keys` of one project.
    pub fn on_list_keys(project: impl Into<String>) -> Self {
        Self::on(FaultRoute::ListKeys).project(project)
    }

    /// `GET /organization/projects/{any}/api_keys`.
    pub fn on_any_list_keys() -> Self {
        Self::on(FaultRoute::ListKeys)
    }

    /// `GET …/{project}/api_keys/{key}`.
    pub fn on_get_key(project: impl Into<String>, key: impl Into<String>) -> Self {
        Self::on(FaultRoute::GetKey).project(project).object(key)
    }

    /// `DELETE …/{project}/api_keys/{key}`.
    pub fn on_delete_key(project: impl Into<String>, key: impl Into<String>) -> Self {
        Self::on(FaultRoute::DeleteKey).project(project).object(key)
    }

    /// `POST …/{project}/api_keys/{key}`: the update of a key's expiry or scopes.
    pub fn on_update_key(project: impl Into<String>, key: impl Into<String>) -> Self {
        Self::on(FaultRoute::UpdateKey).project(project).object(key)
    }

    /// `POST …/{project}/service_accounts/{service_account}/api_keys`: minting a key.
    pub fn on_create_service_account_key(
        project: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self::on(FaultRoute::CreateServiceAccountKey)
            .project(project)
            .object(service_account)
    }

    /// `DELETE …/{project}/service_accounts/{service_account}`.
    pub fn on_delete_service_account(
        project: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self::on(FaultRoute::DeleteServiceAccount)
            .project(project)
            .object(service_account)
    }

    /// `GET /organization/admin_api_keys`.
    pub fn on_list_admin_keys() -> Self {
        Self::on(FaultRoute::ListAdminKeys)
    }

    /// `GET /organization/audit_logs`.
    pub fn on_audit_logs() -> Self {
        Self::on(FaultRoute::AuditLogs)
    }

    /// `GET /organization/usage/completions`.
    pub fn on_usage_completions() -> Self {
        Self::on(FaultRoute::UsageCompletions)
    }

    /// `GET /organization/costs`.
    pub fn on_costs() -> Self {
        Self::on(FaultRoute::Costs)
    }

    /// Only requests for this project.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// Only requests for this key or service account id.
    pub fn object(mut self, id: impl Into<String>) -> Self {
        self.object = Some(id.into());
        self
    }

    /// Only this page (1-based) of a list; non-list requests are page 1.
    pub fn page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }

    /// Fire at most `n` times (default: every matching request).
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Fire once.
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Let the request take effect first (a DELETE really deletes), then misbehave.
    pub fn after_effect(mut self) -> Self {
        self.after_effect = true;
        self
    }

    /// What to answer; ends the builder.
    pub fn respond(mut self, kind: FaultKind) -> Self {
        self.kind = kind;
        self
    }
}

/// Identifies an armed fault, to ask how often it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

/// One request as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultRequest<'a> {
    pub route: FaultRoute,
    pub project: Option<&'a str>,
    pub object: Option<&'a str>,
    pub page: u32,
}

/// A fault that fired for a request.
#[derive(Debug, Clone)]
pub(crate) struct Fired {
    pub kind: FaultKind,
    pub after_effect: bool,
}

#[derive(Debug)]
struct Armed {
    id: FaultId,
    fault: Fault,
    remaining: Option<u32>,
    hits: u32,
}

/// The server's set of armed faults (see [`crate::sim::SimServer::faults`]).
#[derive(Debug, Default)]
pub struct FaultBook {
    armed: Mutex<Vec<Armed>>,
    next_id: AtomicUsize,
    /// Number of armed faults that can still fire: lets the hot path skip the lock (and the page
    /// computation) entirely when no test scripted anything.
    live: AtomicUsize,
}

impl FaultBook {
    /// Arms a fault; it fires on the next matching requests.
    pub fn add(&self, fault: Fault) -> FaultId {
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed) as u64);
        let remaining = fault.times;
        let mut armed = self.lock();
        if remaining != Some(0) {
            self.live.fetch_add(1, Ordering::SeqCst);
        }
        armed.push(Armed {
            id,
            fault,
            remaining,
            hits: 0,
        });
        id
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        let mut armed = self.lock();
        armed.clear();
        self.live.store(0, Ordering::SeqCst);
    }

    /// How many times this fault fired so far.
    pub fn hits(&self, id: FaultId) -> u32 {
        self.lock()
            .iter()
            .find(|a| a.id == id)
            .map_or(0, |a| a.hits)
    }

    /// Number of armed faults that can still fire.
    pub fn pending(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether any live fault is armed on this route (cheap; no lock when nothing is armed).
    pub(crate) fn any_on(&self, route: FaultRoute) -> bool {
        if self.live.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.lock()
            .iter()
            .any(|a| a.fault.route == route && a.remaining != Some(0))
    }

    /// Finds the first live fault matching `req`, counts the hit and returns what to do.
    pub(crate) fn take(&self, req: &FaultRequest<'_>) -> Option<Fired> {
        if self.live.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut armed = self.lock();
        let a = armed.iter_mut().find(|a| {
            let f = &a.fault;
            a.remaining != Some(0)
                && f.route == req.route
                && f.project.as_deref().is_none_or(|p| Some(p) == req.project)
                && f.object.as_deref().is_none_or(|o| Some(o) == req.object)
                && f.page.is_none_or(|p| p == req.page)
        })?;
        a.hits += 1;
        if let Some(n) = a.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.live.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Some(Fired {
            kind: a.fault.kind.clone(),
            after_effect: a.fault.after_effect,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Armed>> {
        // A panic while holding this lock cannot leave the list half-updated in a way that
        // matters to a test double; keep serving.
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(route: FaultRoute, project: &str, page: u32) -> FaultRequest<'_> {
        FaultRequest {
            route,
            project: Some(project),
            object: None,
            page,
        }
    }

    #[test]
    fn matches_route_project_page_and_counts_down() {
        let book = FaultBook::default();
        let id = book.add(
            Fault::on_list_keys("p1")
                .page(3)
                .times(2)
                .respond(FaultKind::Status(503)),
        );
        assert!(book.take(&req(FaultRoute::ListKeys, "p1", 2)).is_none());
        assert!(book.take(&req(FaultRoute::ListKeys, "p2", 3)).is_none());
        assert!(book.take(&req(FaultRoute::GetKey, "p1", 3)).is_none());
        let f = book.take(&req(FaultRoute::ListKeys, "p1", 3)).unwrap();
        assert_eq!(f.kind, FaultKind::Status(503));
        assert!(book.take(&req(FaultRoute::ListKeys, "p1", 3)).is_some());
        assert!(book.take(&req(FaultRoute::ListKeys, "p1", 3)).is_none());
        assert_eq!(book.hits(id), 2);
        assert_eq!(book.pending(), 0);
    }

    #[test]
    fn unlimited_by_default_and_clear() {
        let book = FaultBook::default();
        book.add(Fault::on_list_projects().respond(FaultKind::Truncated));
        for _ in 0..5 {
            assert!(book.take(&req(FaultRoute::ListProjects, "x", 1)).is_some());
        }
        assert!(book.any_on(FaultRoute::ListProjects));
        book.clear();
        assert!(!book.any_on(FaultRoute::ListProjects));
        assert!(book.take(&req(FaultRoute::ListProjects, "x", 1)).is_none());
    }
}
