//! `AdminClient`: one per organisation, the only holder of that organisation's admin key.
//!
//! Every request goes through [`AdminClient::call`]: the shared requests-per-second pacer, the
//! bearer header, a body read that refuses more than `max_response_bytes` whatever
//! `Content-Length` claims, one metrics record per attempt, and the retry policy of `retry.rs`.
//! GETs are retried blindly; a DELETE is re-sent directly only when it surely never reached the
//! server (connect error), otherwise the object is looked up first and a 404 means it is gone.
//! Listings go through one pager that stops on `has_more = false` and treats a cursor that does
//! not advance or comes back, an id listed twice, or an endless chain of pages as errors.
//!
//! The admin key is exposed only to `bearer_auth`; it must never reach an error, a log line or a
//! `Debug` output, and every text the server sends back is scrubbed of it before use.

use std::collections::HashSet;
use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{Limits, OrgConfig};
use crate::inventory::{AdminKeyInfo, Key, ProjectRef};
use crate::metrics::Metrics;
use crate::openai::error::{ApiErrorBody, Error, RequestContext};
use crate::openai::ratelimit::RateLimiter;
use crate::openai::retry::{self, ServerDelay};
use crate::openai::types::{
    self, DecodeError, HasId, ListPage, WireAdminKey, WireDeleted, WireErrorEnvelope, WireKey,
    WireProject, WireProjectUser, WireServiceAccount,
};
use crate::openai::{ProjectUser, ServiceAccount};

/// Route templates, used for metrics labels and error messages.
pub mod endpoint {
    pub const LIST_PROJECTS: &str = "GET /organization/projects";
    pub const LIST_KEYS: &str = "GET /organization/projects/{project_id}/api_keys";
    pub const GET_KEY: &str = "GET /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const DELETE_KEY: &str = "DELETE /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const LIST_SERVICE_ACCOUNTS: &str =
        "GET /organization/projects/{project_id}/service_accounts";
    pub const GET_SERVICE_ACCOUNT: &str =
        "GET /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const DELETE_SERVICE_ACCOUNT: &str =
        "DELETE /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const LIST_PROJECT_USERS: &str = "GET /organization/projects/{project_id}/users";
    pub const LIST_ADMIN_KEYS: &str = "GET /organization/admin_api_keys";
}

/// Page size: the documented maximum.
const PAGE_LIMIT: &str = "100";
/// A listing longer than this many pages (a million objects) is treated as a runaway pager.
const MAX_PAGES: usize = 10_000;
/// Connect timeout, as in OpenAI's SDKs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest server-supplied text kept in an error.
const MAX_API_TEXT: usize = 500;
/// Initial body buffer: enough for a typical page without trusting `Content-Length`.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// What every client of a process shares: the metrics handle and the optional global
/// requests-per-second ceiling (one [`RateLimiter`] for all organisations).
#[derive(Clone, Default)]
pub struct ClientShared {
    pub metrics: Metrics,
    pub rate: Option<Arc<RateLimiter>>,
}

impl ClientShared {
    /// Builds the shared part from the global limits.
    pub fn new(metrics: Metrics, limits: &Limits) -> Self {
        Self {
            metrics,
            rate: limits
                .requests_per_second
                .and_then(RateLimiter::new)
                .map(Arc::new),
        }
    }
}

/// Result of a delete call.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// The API confirmed (`deleted: true`); `body` is its answer, for the audit log.
    Deleted {
        status: u16,
        body: serde_json::Value,
    },
    /// The object was already gone (404 on the DELETE or on the check after an ambiguous
    /// failure).
    AlreadyGone,
}

/// Client for one organisation. Cheap to clone (shared inner state).
#[derive(Clone)]
pub struct AdminClient {
    inner: Arc<Inner>,
}

struct Inner {
    org: String,
    base: Url,
    admin_key: SecretString,
    http: reqwest::Client,
    max_retries: u32,
    max_body: usize,
    timeout: Duration,
    include_archived: bool,
    shared: ClientShared,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("org", &self.inner.org)
            .field("base", &self.inner.base.as_str())
            .field("admin_key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// A response that arrived in full (any status).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// How one attempt failed before a full answer arrived.
enum AttemptFailure {
    /// Connection refused, DNS, TLS handshake: the request surely never reached the server.
    Connect(String),
    Timeout,
    /// Anything else at the transport level (reset mid-request, broken body).
    Other(String),
    /// Not worth retrying (body over the limit).
    Fatal(Error),
}

/// Whether a request may be re-sent after an ambiguous failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RetryMode {
    /// GETs: retry every transient failure.
    Idempotent,
    /// DELETEs: re-send only when the request surely did not reach the server.
    ConnectOnly,
}

impl AdminClient {
    /// Builds the client: reqwest with rustls, `limits.request_timeout` per request, 5 s to
    /// connect, user agent `keysweep/<version>`, system proxies (`HTTPS_PROXY`, `NO_PROXY`), and
    /// `org.ca_file` (PEM, one or more certificates) added to the trusted roots.
    pub fn new(org: &OrgConfig, limits: &Limits, shared: ClientShared) -> Result<Self, Error> {
        let setup = |detail: String| Error::Setup {
            organization: org.name.clone(),
            detail,
        };
        if org.base_url.cannot_be_a_base() {
            return Err(setup(format!(
                "base_url {} cannot take a path",
                org.base_url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(limits.request_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("keysweep/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &org.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("ca_file {} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(setup(format!(
                    "ca_file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(Self {
            inner: Arc::new(Inner {
                org: org.name.clone(),
                base: org.base_url.clone(),
                admin_key: org.admin_key.clone(),
                http,
                max_retries: limits.max_retries,
                max_body: limits.max_response_bytes,
                timeout: limits.request_timeout,
                include_archived: org.include_archived,
                shared,
            }),
        })
    }

    pub fn org_name(&self) -> &str {
        &self.inner.org
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
        let org = self.inner.org.clone();
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
        Ok(KeyPages {
            client: self.clone(),
            project: project.clone(),
            pager: Pager::new(self.ctx(ep, Some(&project.id)), url),
        })
    }

    /// One key, or `None` when the API answers 404. The key's `project_name` is not known here.
    pub async fn retrieve_key(&self, project_id: &str, key_id: &str) -> Result<Option<Key>, Error> {
        let ep = endpoint::GET_KEY;
        let url = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            ep,
            Some(project_id),
        )?;
        let ctx = self.ctx(ep, Some(project_id));
        match self
            .call(Method::GET, &url, &ctx, RetryMode::Idempotent)
            .await
        {
            Ok(ans) => {
                let wire: WireKey = self.decode(&ctx, &ans)?;
                let project = ProjectRef {
                    organization: self.inner.org.clone(),
                    id: project_id.to_string(),
                    name: None,
                    archived: false,
                };
                Ok(Some(wire.into_domain(&project)))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a project key (permanent). A 400 (the key belongs to a service account) is
    /// [`Error::Refused`]; a 2xx without `deleted: true` is [`Error::NotDeleted`].
    pub async fn delete_key(&self, project_id: &str, key_id: &str) -> Result<DeleteOutcome, Error> {
        let url = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            endpoint::DELETE_KEY,
            Some(project_id),
        )?;
        let check = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            endpoint::GET_KEY,
            Some(project_id),
        )?;
        self.delete_checked(
            endpoint::DELETE_KEY,
            endpoint::GET_KEY,
            project_id,
            key_id,
            url,
            check,
        )
        .await
    }

    /// Deletes a project service account, and with it every key it owns (permanent).
    pub async fn delete_service_account(
        &self,
        project_id: &str,
        service_account_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let segs = [
            "organization",
            "projects",
            project_id,
            "service_accounts",
            service_account_id,
        ];
        let url = self.url(&segs, endpoint::DELETE_SERVICE_ACCOUNT, Some(project_id))?;
        let check = self.url(&segs, endpoint::GET_SERVICE_ACCOUNT, Some(project_id))?;
        self.delete_checked(
            endpoint::DELETE_SERVICE_ACCOUNT,
            endpoint::GET_SERVICE_ACCOUNT,
            project_id,
            service_account_id,
            url,
            check,
        )
        .await
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

    fn ctx(&self, endpoint: &'static str, project: Option<&str>) -> RequestContext {
        RequestContext {
            organization: self.inner.org.clone(),
            project: project.map(str::to_string),
            endpoint,
        }
    }

    /// `base_url` + path segments, each percent-encoded (an id can never add a path level).
    fn url(
        &self,
        segments: &[&str],
        endpoint: &'static str,
        project: Option<&str>,
    ) -> Result<Url, Error> {
        let mut url = self.inner.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::Setup {
                organization: self.inner.org.clone(),
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

    /// Replaces any occurrence of the admin key and bounds the length of a server-supplied text.
    fn scrub(&self, text: &str) -> String {
        let key = self.inner.admin_key.expose_secret();
        let cleaned = if key.len() >= 4 && text.contains(key) {
            text.replace(key, "[REDACTED]")
        } else {
            text.to_string()
        };
        types::truncate(&cleaned, MAX_API_TEXT)
    }

    fn decode<T: DeserializeOwned>(&self, ctx: &RequestContext, ans: &Answer) -> Result<T, Error> {
        types::decode(&ans.body).map_err(|e: DecodeError| Error::Decode {
            ctx: ctx.clone(),
            status: ans.status,
            detail: self.scrub(&e.to_string()),
        })
    }

    /// OpenAI's error envelope, if the body is one.
    fn api_error(&self, body: &[u8]) -> ApiErrorBody {
        match types::decode::<WireErrorEnvelope>(body) {
            Ok(env) => ApiErrorBody {
                error_type: env.error.kind.map(|t| self.scrub(&t)),
                message: env.error.message.map(|m| self.scrub(&m)),
                code: env.error.code.and_then(|c| match c {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(self.scrub(&s)),
                    other => Some(self.scrub(&other.to_string())),
                }),
            },
            Err(_) => ApiErrorBody::default(),
        }
    }

    /// The error for a complete non-2xx answer.
    fn status_error(&self, ctx: &RequestContext, ans: &Answer, delay: ServerDelay) -> Error {
        let api = Box::new(self.api_error(&ans.body));
        let ctx = ctx.clone();
        match ans.status {
            401 | 403 => Error::Unauthorized {
                ctx,
                status: ans.status,
                api,
            },
            404 => Error::NotFound { ctx, api },
            429 => Error::RateLimited {
                ctx,
                retry_after: match delay {
                    ServerDelay::Wait(d) | ServerDelay::TooLong(d) => Some(d),
                    ServerDelay::None => None,
                },
                api,
            },
            s if retry::is_retryable_status(s) => Error::Server {
                ctx,
                status: s,
                api,
            },
            s => Error::Refused {
                ctx,
                status: s,
                error_type: api.error_type,
                message: api.message,
            },
        }
    }

    /// One attempt: pace, send, read the body within the size limit, record the metric.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        ctx: &RequestContext,
    ) -> Result<Answer, AttemptFailure> {
        if let Some(rate) = &self.inner.shared.rate {
            rate.acquire().await;
        }
        let metrics = &self.inner.shared.metrics;
        let sent = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(self.inner.admin_key.expose_secret())
            .header("accept", "application/json")
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                metrics.api_request(&self.inner.org, ctx.endpoint, 0);
                return Err(self.classify(&e));
            }
        };
        let status = resp.status().as_u16();
        metrics.api_request(&self.inner.org, ctx.endpoint, status);
        let headers = resp.headers().clone();
        let limit = self.inner.max_body;
        let too_large = || {
            AttemptFailure::Fatal(Error::BodyTooLarge {
                ctx: ctx.clone(),
                limit,
            })
        };
        // An announced length over the limit is refused at once; a smaller (or absent) one is
        // not trusted: the count below is what enforces the limit.
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let capacity = resp
            .content_length()
            .map_or(INITIAL_BODY_CAPACITY, |n| n as usize)
            .min(limit)
            .min(INITIAL_BODY_CAPACITY);
        let mut body = Vec::with_capacity(capacity);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.classify(&e)),
            }
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn classify(&self, e: &reqwest::Error) -> AttemptFailure {
        if e.is_timeout() {
            AttemptFailure::Timeout
        } else if e.is_connect() {
            AttemptFailure::Connect(self.scrub(&chain(e)))
        } else {
            AttemptFailure::Other(self.scrub(&chain(e)))
        }
    }

    /// Sends until a 2xx answer, a non-retryable failure, or the retries run out.
    async fn call(
        &self,
        method: Method,
        url: &Url,
        ctx: &RequestContext,
        mode: RetryMode,
    ) -> Result<Answer, Error> {
        let mut retries: u32 = 0;
        loop {
            let (retryable, delay, err) = match self.attempt(&method, url, ctx).await {
                Ok(ans) if (200..300).contains(&ans.status) => return Ok(ans),
                Ok(ans) => {
                    let delay = retry::server_delay(&ans.headers, SystemTime::now());
                    let err = self.status_error(ctx, &ans, delay);
                    let wanted = retry::should_retry_override(&ans.headers)
                        .unwrap_or_else(|| retry::is_retryable_status(ans.status));
                    let delay = match delay {
                        // The server wants longer than we are willing to wait: give up now.
                        ServerDelay::TooLong(_) => return Err(err),
                        ServerDelay::Wait(d) => d,
                        ServerDelay::None => retry::backoff(retries, rand::random()),
                    };
                    (wanted && mode == RetryMode::Idempotent, delay, err)
                }
                Err(AttemptFailure::Connect(detail)) => (
                    true,
                    retry::backoff(retries, rand::random()),
                    Error::Transport {
                        ctx: ctx.clone(),
                        detail,
                    },
                ),
                Err(AttemptFailure::Timeout) => (
                    mode == RetryMode::Idempotent,
                    retry::backoff(retries, rand::random()),
                    Error::Timeout {
                        ctx: ctx.clone(),
                        after: self.inner.timeout,
                    },
                ),
                Err(AttemptFailure::Other(detail)) => (
                    mode == RetryMode::Idempotent,
                    retry::backoff(retries, rand::random()),
                    Error::Transport {
                        ctx: ctx.clone(),
                        detail,
                    },
                ),
                Err(AttemptFailure::Fatal(e)) => return Err(e),
            };
            if !retryable || retries >= self.inner.max_retries {
                return Err(err);
            }
            retries += 1;
            tracing::warn!(
                organization = %ctx.organization,
                project = ctx.project.as_deref().unwrap_or(""),
                endpoint = ctx.endpoint,
                retry = retries,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "retrying Administration API request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// DELETE without blind retries: after an ambiguous failure (timeout, reset, 408/409/429,
    /// 5xx) the object is looked up first; 404 there means the earlier DELETE (or someone else)
    /// already removed it.
    async fn delete_checked(
        &self,
        delete_ep: &'static str,
        check_ep: &'static str,
        project_id: &str,
        object_id: &str,
        url: Url,
        check: Url,
    ) -> Result<DeleteOutcome, Error> {
        let ctx = self.ctx(delete_ep, Some(project_id));
        let check_ctx = self.ctx(check_ep, Some(project_id));
        let mut rounds: u32 = 0;
        loop {
            let err = match self
                .call(Method::DELETE, &url, &ctx, RetryMode::ConnectOnly)
                .await
            {
                Ok(ans) => {
                    let confirmed: WireDeleted = self.decode(&ctx, &ans)?;
                    if !confirmed.deleted {
                        return Err(Error::NotDeleted {
                            ctx,
                            status: ans.status,
                            id: object_id.to_string(),
                        });
                    }
                    let body = self.decode::<serde_json::Value>(&ctx, &ans)?;
                    return Ok(DeleteOutcome::Deleted {
                        status: ans.status,
                        body,
                    });
                }
                Err(Error::NotFound { .. }) => return Ok(DeleteOutcome::AlreadyGone),
                Err(e) => e,
            };
            let delay = match &err {
                Error::RateLimited {
                    retry_after: Some(d),
                    ..
                } => *d,
                Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Transport { .. } => retry::backoff(rounds, rand::random()),
                _ => return Err(err),
            };
            if rounds >= self.inner.max_retries || delay > retry::MAX_SERVER_DELAY {
                return Err(err);
            }
            rounds += 1;
            tracing::warn!(
                organization = %ctx.organization,
                project = project_id,
                endpoint = delete_ep,
                object = object_id,
                error = %err,
                "delete outcome unknown; checking whether the object still exists"
            );
            tokio::time::sleep(delay).await;
            match self
                .call(Method::GET, &check, &check_ctx, RetryMode::Idempotent)
                .await
            {
                Ok(_) => continue,
                Err(Error::NotFound { .. }) => return Ok(DeleteOutcome::AlreadyGone),
                // The check failed too: report the delete's own failure, state unknown.
                Err(_) => return Err(err),
            }
        }
    }

    /// Every item of a listing, handed to `each` in order.
    async fn list_all<W: DeserializeOwned + HasId>(
        &self,
        ep: &'static str,
        project: Option<&str>,
        url: Url,
        mut each: impl FnMut(W),
    ) -> Result<(), Error> {
        let mut pager = Pager::new(self.ctx(ep, project), url);
        while let Some(page) = pager.next(self).await? {
            page.into_iter().for_each(&mut each);
        }
        Ok(())
    }
}

/// A project's keys, one page at a time, so a caller can process and drop each page before the
/// next one arrives instead of holding the whole project.
pub struct KeyPages {
    client: AdminClient,
    project: ProjectRef,
    pager: Pager<WireKey>,
}

impl KeyPages {
    pub fn project(&self) -> &ProjectRef {
        &self.project
    }

    /// The next page of keys, or `None` after the last one. After an error the listing is over:
    /// the keys handed out so far are not the whole project.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Key>>, Error> {
        let Some(page) = self.pager.next(&self.client).await? else {
            return Ok(None);
        };
        Ok(Some(
            page.into_iter()
                .map(|k| k.into_domain(&self.project))
                .collect(),
        ))
    }
}

/// The pager. Sends `limit=100` and `after=<cursor>`, where the cursor is `last_id` (or the last
/// item's id when `last_id` is absent); ends on `has_more = false`.
struct Pager<W> {
    ctx: RequestContext,
    url: Url,
    cursor: Option<String>,
    cursors_seen: HashSet<String>,
    ids_seen: HashSet<String>,
    pages: usize,
    state: PagerState,
    _item: std::marker::PhantomData<fn() -> W>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PagerState {
    /// More pages to fetch.
    Open,
    /// The last page arrived.
    Done,
    /// A page failed: the listing is over and must never look finished.
    Failed,
}

impl<W: DeserializeOwned + HasId> Pager<W> {
    fn new(ctx: RequestContext, url: Url) -> Self {
        Self {
            ctx,
            url,
            cursor: None,
            cursors_seen: HashSet::new(),
            ids_seen: HashSet::new(),
            pages: 0,
            state: PagerState::Open,
            _item: std::marker::PhantomData,
        }
    }

    async fn next(&mut self, client: &AdminClient) -> Result<Option<Vec<W>>, Error> {
        match self.state {
            PagerState::Failed => {
                return Err(Error::Pagination {
                    ctx: self.ctx.clone(),
                    detail: "an earlier page of this listing failed".to_string(),
                });
            }
            PagerState::Done => return Ok(None),
            PagerState::Open => {}
        }
        // Any early return below is a failed page; only the end of this function clears it.
        self.state = PagerState::Failed;
        if self.pages == MAX_PAGES {
            return Err(Error::Pagination {
                ctx: self.ctx.clone(),
                detail: format!("more than {MAX_PAGES} pages"),
            });
        }
        self.pages += 1;
        let mut page_url = self.url.clone();
        {
            let mut q = page_url.query_pairs_mut();
            q.append_pair("limit", PAGE_LIMIT);
            if let Some(c) = &self.cursor {
                q.append_pair("after", c);
            }
        }
        let ans = client
            .call(Method::GET, &page_url, &self.ctx, RetryMode::Idempotent)
            .await?;
        let page: ListPage<W> = client.decode(&self.ctx, &ans)?;
        // Decide the next cursor before looking at the items, so a page served twice is
        // reported as the cursor loop it is rather than as duplicate ids.
        let next = if page.has_more {
            let next = page
                .last_id
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| page.data.last().map(|w| w.id().to_string()));
            let Some(next) = next else {
                return Err(Error::Pagination {
                    ctx: self.ctx.clone(),
                    detail: "has_more is true but the page is empty and has no last_id".to_string(),
                });
            };
            if self.cursor.as_deref() == Some(next.as_str())
                || !self.cursors_seen.insert(next.clone())
            {
                return Err(Error::CursorLoop {
                    ctx: self.ctx.clone(),
                    cursor: client.scrub(&next),
                });
            }
            Some(next)
        } else {
            None
        };
        for item in &page.data {
            if !self.ids_seen.insert(item.id().to_string()) {
                return Err(Error::DuplicateIds {
                    ctx: self.ctx.clone(),
                    id: client.scrub(item.id()),
                });
            }
        }
        self.state = if next.is_none() {
            PagerState::Done
        } else {
            PagerState::Open
        };
        self.cursor = next;
        Ok(Some(page.data))
    }
}

/// An error and its sources, `: `-joined (reqwest's own Display hides the cause).
fn chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
