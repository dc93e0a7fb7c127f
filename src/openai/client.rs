//! `AdminClient`: one per organisation, the Administration API's endpoints in the crate's terms.
//!
//! Each method builds its URL from `base_url` and percent-encoded path segments (an id can never
//! add a path level), and hands the request to the organisation's `Transport` (pacing, the
//! bearer header, bounded bodies, retries, error mapping) and listings to the pager. Wire types
//! are turned into `crate::inventory` types before they leave.
//!
//! The admin key lives in the transport; this file never sees it, and the client's `Debug` names
//! the organisation and the base URL only.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{Limits, OrgConfig};
use crate::inventory::{AdminKeyInfo, Key, ProjectRef, ProjectUser, ServiceAccount};
use crate::openai::error::{Error, RequestContext};
use crate::openai::identity::is_valid_id;
use crate::openai::pager::{self, KeyPages};
use crate::openai::transport::{
    BodyFn, ClientShared, DeleteOutcome, DeleteRequest, RetryMode, Transport,
};
use crate::openai::types::{
    HasId, MintedKey, WireAdminKey, WireKey, WireKeyUpdate, WireMintRequest, WireMintedKey,
    WireProject, WireProjectUser, WireServiceAccount,
};

/// Route templates, used for metrics labels and error messages.
pub mod endpoint {
    pub const LIST_PROJECTS: &str = "GET /organization/projects";
    pub const LIST_KEYS: &str = "GET /organization/projects/{project_id}/api_keys";
    pub const GET_KEY: &str = "GET /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const DELETE_KEY: &str = "DELETE /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const UPDATE_KEY: &str = "POST /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const CREATE_SERVICE_ACCOUNT_KEY: &str =
        "POST /organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys";
    pub const LIST_SERVICE_ACCOUNTS: &str =
        "GET /organization/projects/{project_id}/service_accounts";
    pub const GET_SERVICE_ACCOUNT: &str =
        "GET /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const DELETE_SERVICE_ACCOUNT: &str =
        "DELETE /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const LIST_PROJECT_USERS: &str = "GET /organization/projects/{project_id}/users";
    pub const LIST_ADMIN_KEYS: &str = "GET /organization/admin_api_keys";
}

/// A change to one key (`POST …/api_keys/{api_key_id}`). At least one field must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// The ABSOLUTE moment (Unix seconds, wall clock) the key must expire. The request carries
    /// `expires_in_seconds = ceil(expires_at − the API's now)`, recomputed at every attempt, so
    /// a retry lands on the same moment. `--now` never enters this: the API's clock does (the
    /// wall clock moved by what the last answer's `Date` header showed; see `Transport::api_now`).
    pub expires_at: Option<i64>,
    /// Replaces the key's scopes (`[]` means all permissions, not none).
    pub scopes: Option<Vec<String>>,
}

/// A service-account key to mint. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MintRequest {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// Absolute expiry (Unix seconds, wall clock), sent as seconds from now as for an update.
    pub expires_at: Option<i64>,
}

/// `ceil(target − now)` in whole seconds, or `None` when that is not positive (the target has
/// passed, or is less than a second away in the past). Pure: the caller reads the clock.
pub fn expires_in_seconds(target: i64, now: SystemTime) -> Option<i64> {
    let now_ms = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_millis()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_millis()).unwrap_or(i128::MAX),
    };
    let left_ms = i128::from(target) * 1000 - now_ms;
    // Ceiling division of a positive number: a key never expires before its target.
    (left_ms > 0)
        .then(|| (left_ms + 999) / 1000)
        .and_then(|s| i64::try_from(s).ok())
}

/// Client for one organisation. Cheap to clone (shared inner state).
#[derive(Clone)]
pub struct AdminClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: Url,
    include_archived: bool,
    transport: Arc<Transport>,
    /// Per usage endpoint, the daily buckets per page that last fitted under
    /// `max_response_bytes` (`intel.rs`): a daemon's later sweeps start there.
    usage_buckets: std::sync::Mutex<std::collections::HashMap<&'static str, u32>>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("org", &self.inner.transport.org())
            .field("base", &self.inner.base.as_str())
            .field("admin_key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Builds the client and its transport (see `Transport::new`: TLS roots, timeouts, user
    /// agent, proxies). A `base_url` that cannot take a path is refused here.
    pub fn new(org: &OrgConfig, limits: &Limits, shared: ClientShared) -> Result<Self, Error> {
        if org.base_url.cannot_be_a_base() {
            return Err(Error::Setup {
                organization: org.name.clone(),
                detail: format!("base_url {} cannot take a path", org.base_url),
            });
        }
        let transport = Transport::new(org, limits, shared)?;
        Ok(Self {
            inner: Arc::new(Inner {
                base: org.base_url.clone(),
                include_archived: org.include_archived,
                transport: Arc::new(transport),
                usage_buckets: std::sync::Mutex::default(),
            }),
        })
    }

    /// The daily buckets per page that last fitted for the usage endpoint `ep`, if any.
    pub(super) fn usage_buckets(&self, ep: &'static str) -> Option<u32> {
        let fit = (self.inner.usage_buckets.lock()).unwrap_or_else(|e| e.into_inner());
        fit.get(ep).copied()
    }

    /// Remembers that `buckets` daily buckets per page fitted for the usage endpoint `ep`.
    pub(super) fn set_usage_buckets(&self, ep: &'static str, buckets: u32) {
        let mut fit = (self.inner.usage_buckets.lock()).unwrap_or_else(|e| e.into_inner());
        fit.insert(ep, buckets);
    }

    pub fn org_name(&self) -> &str {
        self.transport().org()
    }

    /// The API's clock now (Unix seconds), as its last answer's `Date` header put it: the
    /// clock an expiry is counted against (`expires_in_seconds`).
    pub fn api_now_secs(&self) -> i64 {
        match self.transport().api_now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    /// Whether an admin key's `redacted_value` (e.g. `sk-admin-****dEm0`, `sk-abc...def`) could
    /// be this client's own admin key: its visible suffix — what follows the last `*` or `.` —
    /// is non-empty and ends this client's key. Only the suffix is compared; the key itself
    /// never leaves the transport.
    pub fn admin_key_matches_redacted(&self, redacted_value: &str) -> bool {
        let suffix = redacted_value.rsplit(['*', '.']).next().unwrap_or_default();
        suffix.len() >= 3
            && redacted_value.len() > suffix.len()
            && self.transport().key_ends_with(suffix)
    }

    /// Every project of the organisation (archived ones too when `include_archived`), pages of
    /// 100.
    pub async fn list_projects(&self) -> Result<Vec<ProjectRef>, Error> {
        let mut out = Vec::new();
        self.list_projects_each(|p| out.push(p)).await?;
        Ok(out)
    }

    /// Like [`Self::list_projects`], handing each project over as soon as its page arrives so
    /// the caller can start listing its keys while later pages load.
    pub async fn list_projects_each(&self, mut each: impl FnMut(ProjectRef)) -> Result<(), Error> {
        let mut url = self.url(&["organization", "projects"], endpoint::LIST_PROJECTS, None)?;
        if self.inner.include_archived {
            url.query_pairs_mut()
                .append_pair("include_archived", "true");
        }
        let org = self.org_name().to_string();
        self.list_all::<WireProject>(endpoint::LIST_PROJECTS, None, url, |p| {
            each(p.into_domain(&org))
        })
        .await
    }

    /// Every key of the project, whatever its owner's access (`owner_project_access=any`), all
    /// pages of 100.
    pub async fn list_project_keys(&self, project: &ProjectRef) -> Result<Vec<Key>, Error> {
        let mut pages = self.key_pages(project)?;
        let mut keys = Vec::new();
        while let Some(page) = pages.next_page().await? {
            keys.extend(page);
        }
        Ok(keys)
    }

    /// The project's keys as [`KeyPages`]: nothing is requested until the first `next_page`.
    pub fn key_pages(&self, project: &ProjectRef) -> Result<KeyPages, Error> {
        let ep = endpoint::LIST_KEYS;
        let mut url = self.url(
            &["organization", "projects", &project.id, "api_keys"],
            ep,
            Some(&project.id),
        )?;
        url.query_pairs_mut()
            .append_pair("owner_project_access", "any");
        Ok(KeyPages::new(
            self.inner.transport.clone(),
            project.clone(),
            self.ctx(ep, Some(&project.id)),
            url,
        ))
    }

    /// One key (its `expires_at` included), or `None` when the API answers 404 (deleted, or
    /// expired where the API hides expired keys). The key's `project_name` is not known here.
    /// Right after an update it may still show the old expiry: a caller checking an expiry
    /// it wrote allows one re-read after a short wait before concluding.
    pub async fn retrieve_key(&self, project_id: &str, key_id: &str) -> Result<Option<Key>, Error> {
        let ep = endpoint::GET_KEY;
        let url = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            ep,
            Some(project_id),
        )?;
        let ctx = self.ctx(ep, Some(project_id));
        match self
            .transport()
            .call(Method::GET, &url, &ctx, RetryMode::Idempotent)
            .await
        {
            Ok(ans) => {
                let wire: WireKey = self.transport().decode(&ctx, &ans)?;
                if wire.id != key_id {
                    return Err(Error::UnexpectedId {
                        ctx,
                        expected: key_id.to_string(),
                        got: self.transport().scrub(&wire.id),
                    });
                }
                Ok(Some(wire.into_domain(&self.bare_project(project_id))))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into_key_ended_if_expired()),
        }
    }

    /// [`Self::retrieve_key`], read once more after `wait` when the first answer is not yet
    /// `settled` (e.g. its expiry is not the one just written): OpenAI may answer a read right
    /// after an update with the old expiry. Whatever the second read shows is the answer; the
    /// caller decides what a still unsettled key means (an alert, never a second write in a loop).
    pub async fn reread_key(
        &self,
        project_id: &str,
        key_id: &str,
        wait: std::time::Duration,
        settled: impl Fn(&Key) -> bool,
    ) -> Result<Option<Key>, Error> {
        match self.retrieve_key(project_id, key_id).await? {
            Some(k) if !settled(&k) => {
                tokio::time::sleep(wait).await;
                self.retrieve_key(project_id, key_id).await
            }
            other => Ok(other),
        }
    }

    /// Deletes a project key (permanent), service-account keys included (November 2026: only
    /// that key goes). A 400 saying the key has expired is [`Error::KeyEnded`]; any other 400
    /// (the August 2026 API refused service-account keys) is [`Error::Refused`]; a 2xx without
    /// `deleted: true` is [`Error::NotDeleted`].
    pub async fn delete_key(&self, project_id: &str, key_id: &str) -> Result<DeleteOutcome, Error> {
        let eps = (endpoint::DELETE_KEY, endpoint::GET_KEY);
        self.delete(eps, project_id, "api_keys", key_id)
            .await
            .map_err(Error::into_key_ended_if_expired)
    }

    /// Deletes a project service account, and with it every key it owns (permanent).
    pub async fn delete_service_account(
        &self,
        project_id: &str,
        service_account_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let eps = (
            endpoint::DELETE_SERVICE_ACCOUNT,
            endpoint::GET_SERVICE_ACCOUNT,
        );
        self.delete(eps, project_id, "service_accounts", service_account_id)
            .await
    }

    /// Updates a key's expiry and/or scopes and answers with the key as the API returns it
    /// (whose `expires_at` may lag; re-read with [`Self::retrieve_key`] to check). Retried like
    /// a GET: given the absolute target, sending it twice lands on the same expiry.
    ///
    /// Errors of their own: [`Error::ExpiryRefused`] (the expiry policy),
    /// [`Error::KeyEnded`] (expired, or 404), [`Error::ExpiryPassed`] (target already past,
    /// nothing sent).
    pub async fn update_key(
        &self,
        project_id: &str,
        key_id: &str,
        update: &KeyUpdate,
    ) -> Result<Key, Error> {
        let ep = endpoint::UPDATE_KEY;
        let url = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            ep,
            Some(project_id),
        )?;
        let ctx = self.ctx(ep, Some(project_id));
        let scopes = update.scopes.as_deref();
        let body = |now| {
            let secs = update
                .expires_at
                .map(|target| {
                    expires_in_seconds(target, now).ok_or_else(|| Error::ExpiryPassed {
                        ctx: ctx.clone(),
                        target,
                    })
                })
                .transpose()?;
            Ok(serde_json::to_vec(&WireKeyUpdate {
                expires_in_seconds: secs,
                scopes,
            })
            .unwrap_or_default())
        };
        let body = move || body(self.transport().api_now());
        let ans = match self
            .transport()
            .call_with_body(Method::POST, &url, &ctx, RetryMode::Idempotent, Some(&body))
            .await
            .map_err(Error::into_expiry_error)
        {
            Ok(ans) => ans,
            Err(e @ Error::KeyEnded { status: 404, .. }) => {
                return Err(self.confirm_ended(project_id, key_id, e).await);
            }
            Err(e) => return Err(e),
        };
        let wire: WireKey = self.transport().decode(&ctx, &ans)?;
        // An answer about another key confirms nothing about this one: the outcome is unknown
        // (`UnexpectedId` is no "nothing applied"), and the caller reads the key back.
        if wire.id != key_id {
            return Err(Error::UnexpectedId {
                ctx,
                expected: key_id.to_string(),
                got: self.transport().scrub(&wire.id),
            });
        }
        Ok(wire.into_domain(&self.bare_project(project_id)))
    }

    /// An update's 404 (`ended`) stands as "the key ended" only when a read agrees: gone, or
    /// listed with an expiry already past. A 404 from a gateway or an API without the update
    /// route says nothing about the key, whatever its wording, and closing the finding of a
    /// key that still exists would let it escape its deadline. Otherwise, and when the read
    /// fails, it is a plain not-found failure: nothing was written, and the finding stays.
    async fn confirm_ended(&self, project_id: &str, key_id: &str, ended: Error) -> Error {
        let now = self.api_now_secs();
        match self.retrieve_key(project_id, key_id).await {
            Ok(None) | Err(Error::KeyEnded { .. }) => ended,
            Ok(Some(k)) if k.expires_at.is_expired(now) => ended,
            _ => ended.into_not_found(),
        }
    }

    /// Moves a key's expiry to `target` (Unix seconds, wall clock): [`Self::update_key`] with
    /// only the expiry.
    pub async fn set_key_expiry(
        &self,
        project_id: &str,
        key_id: &str,
        target: i64,
    ) -> Result<Key, Error> {
        let update = KeyUpdate {
            expires_at: Some(target),
            scopes: None,
        };
        self.update_key(project_id, key_id, &update).await
    }

    /// Mints a key for a service account. Its `value` is answered once: it is returned in a
    /// `SecretString` and never logged. Not idempotent (a second request mints a second key),
    /// so it is re-sent only when the first surely never reached the server; after a timeout or
    /// a 5xx a key may have been minted all the same (list the account's keys to know).
    pub async fn mint_service_account_key(
        &self,
        project_id: &str,
        service_account_id: &str,
        req: &MintRequest,
    ) -> Result<MintedKey, Error> {
        let ep = endpoint::CREATE_SERVICE_ACCOUNT_KEY;
        let segs = [
            "organization",
            "projects",
            project_id,
            "service_accounts",
            service_account_id,
            "api_keys",
        ];
        let url = self.url(&segs, ep, Some(project_id))?;
        let ctx = self.ctx(ep, Some(project_id));
        let body = || {
            let secs = req
                .expires_at
                .map(|target| {
                    expires_in_seconds(target, self.transport().api_now()).ok_or_else(|| {
                        Error::ExpiryPassed {
                            ctx: ctx.clone(),
                            target,
                        }
                    })
                })
                .transpose()?;
            Ok(serde_json::to_vec(&WireMintRequest {
                name: req.name.as_deref(),
                scopes: req.scopes.as_deref(),
                expires_in_seconds: secs,
            })
            .unwrap_or_default())
        };
        let body: BodyFn<'_> = &body;
        let ans = self
            .transport()
            .call_with_body(Method::POST, &url, &ctx, RetryMode::ConnectOnly, Some(body))
            .await
            // Only a 400 is read as an expiry refusal: a 404 here is the account or the
            // project, not a key, and stays a plain `NotFound`.
            .map_err(|e| match e {
                Error::Refused { .. } => e.into_expiry_error(),
                other => other,
            })?;
        let wire: WireMintedKey = self.transport().decode(&ctx, &ans)?;
        Ok(wire.into_domain())
    }

    /// The project's service accounts (all pages).
    pub async fn list_service_accounts(
        &self,
        project_id: &str,
    ) -> Result<Vec<ServiceAccount>, Error> {
        let ep = endpoint::LIST_SERVICE_ACCOUNTS;
        let url = self.url(
            &["organization", "projects", project_id, "service_accounts"],
            ep,
            Some(project_id),
        )?;
        let mut out = Vec::new();
        self.list_all::<WireServiceAccount>(ep, Some(project_id), url, |s| {
            out.push(s.into_domain())
        })
        .await?;
        Ok(out)
    }

    /// The project's users (all pages), for owner e-mails the key listing lacked.
    pub async fn list_project_users(&self, project_id: &str) -> Result<Vec<ProjectUser>, Error> {
        let ep = endpoint::LIST_PROJECT_USERS;
        let url = self.url(
            &["organization", "projects", project_id, "users"],
            ep,
            Some(project_id),
        )?;
        let mut out = Vec::new();
        self.list_all::<WireProjectUser>(ep, Some(project_id), url, |u| out.push(u.into_domain()))
            .await?;
        Ok(out)
    }

    /// The organisation's admin keys (for their `expires_at`).
    pub async fn list_admin_keys(&self) -> Result<Vec<AdminKeyInfo>, Error> {
        let ep = endpoint::LIST_ADMIN_KEYS;
        let url = self.url(&["organization", "admin_api_keys"], ep, None)?;
        let mut out = Vec::new();
        self.list_all::<WireAdminKey>(ep, None, url, |k| out.push(k.into_domain()))
            .await?;
        Ok(out)
    }

    // ---- internals -------------------------------------------------------------------------

    /// The project of a single-key answer, whose name the endpoint does not give.
    fn bare_project(&self, project_id: &str) -> ProjectRef {
        ProjectRef {
            organization: self.org_name().to_string(),
            id: project_id.to_string(),
            name: None,
            archived: false,
        }
    }

    pub(super) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    pub(super) fn ctx(&self, endpoint: &'static str, project: Option<&str>) -> RequestContext {
        self.transport().ctx(endpoint, project)
    }

    /// Every item of a listing, handed to `each` in order.
    pub(super) async fn list_all<W: DeserializeOwned + HasId>(
        &self,
        ep: &'static str,
        project: Option<&str>,
        url: Url,
        each: impl FnMut(W),
    ) -> Result<(), Error> {
        pager::list_all(self.transport(), self.ctx(ep, project), url, each).await
    }

    /// Deletes `…/projects/{project_id}/{collection}/{object_id}`, checking on it with the GET
    /// of the same path after an ambiguous failure (`eps`: the DELETE's and the GET's templates).
    async fn delete(
        &self,
        (delete, check): (&'static str, &'static str),
        project_id: &str,
        collection: &str,
        object_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let segs = [
            "organization",
            "projects",
            project_id,
            collection,
            object_id,
        ];
        let req = DeleteRequest {
            delete: (delete, self.url(&segs, delete, Some(project_id))?),
            check: (check, self.url(&segs, check, Some(project_id))?),
            project_id,
            object_id,
        };
        self.transport().delete_checked(req).await
    }

    /// `base_url` + path segments, each percent-encoded (an id can never add a path level). A
    /// segment that is not of an id's shape (`..`, `.`, a control character: URL building would
    /// drop or normalise it into another path) is refused, wherever the id came from (the API,
    /// the state database, the configuration).
    pub(super) fn url(
        &self,
        segments: &[&str],
        endpoint: &'static str,
        project: Option<&str>,
    ) -> Result<Url, Error> {
        if let Some(bad) = segments.iter().find(|s| !is_valid_id(s)) {
            return Err(Error::BadId {
                ctx: self.ctx(endpoint, project.filter(|p| is_valid_id(p))),
                id: self.transport().scrub(bad),
            });
        }
        let mut url = self.inner.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::Setup {
                organization: self.org_name().to_string(),
                detail: format!(
                    "base_url cannot take a path ({endpoint}{})",
                    project
                        .map(|p| format!(", project {p}"))
                        .unwrap_or_default()
                ),
            })?;
            path.pop_if_empty().extend(segments);
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn expires_in_seconds_rounds_up_and_refuses_the_past() {
        assert_eq!(expires_in_seconds(1_000, at(900, 0)), Some(100));
        // 99.5 s left: 100, so the key never expires before its target.
        assert_eq!(expires_in_seconds(1_000, at(900, 500)), Some(100));
        assert_eq!(expires_in_seconds(1_000, at(999, 999)), Some(1));
        assert_eq!(expires_in_seconds(1_000, at(1_000, 0)), None);
        assert_eq!(expires_in_seconds(1_000, at(1_000, 1)), None);
        assert_eq!(expires_in_seconds(i64::MIN, at(0, 0)), None);
        assert_eq!(
            expires_in_seconds(i64::MAX, at(0, 0)),
            Some(i64::MAX),
            "no overflow"
        );
    }
}
