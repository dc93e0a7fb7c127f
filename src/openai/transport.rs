//! [`Transport`]: how one organisation's requests are sent, read, retried and turned into errors.
//!
//! Every request goes through [`Transport::call`]: the shared requests-per-second pacer, the
//! bearer header, a body read that refuses more than `max_response_bytes` whatever
//! `Content-Length` claims, one metrics record per attempt, and the retry policy of `retry.rs`.
//! GETs are retried blindly; a DELETE is re-sent directly only when it surely never reached the
//! server (connect error), otherwise [`Transport::delete_checked`] looks the object up first and
//! a 404 means it is gone. A POST carries a body rebuilt at every attempt ([`BodyFn`]): an
//! expiry update is retried like a GET because its body names an absolute moment, a mint only
//! when surely unsent.
//!
//! This is the only place the admin key is exposed: to `bearer_auth`, and to [`Transport::scrub`]
//! to remove it from every text the server sends back. It must never reach an error, a log line
//! or a `Debug` output. It knows no endpoint and no path: the client builds the URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{Limits, OrgConfig};
use crate::metrics::Metrics;
use crate::openai::error::{ApiErrorBody, Error, RequestContext};
use crate::openai::ratelimit::RateLimiter;
use crate::openai::retry::{self, ServerDelay};
use crate::openai::types::{self, DecodeError, WireDeleted, WireErrorEnvelope};

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

/// One organisation's connection to the API: the admin key, the HTTP client and the limits.
/// No `Debug`: it holds the admin key (the client's `Debug` names the organisation only).
pub(super) struct Transport {
    org: String,
    admin_key: SecretString,
    http: reqwest::Client,
    max_retries: u32,
    max_body: usize,
    timeout: Duration,
    shared: ClientShared,
    /// The API's clock minus ours, in milliseconds, from the last answer's `Date` header
    /// (see [`Transport::api_now`]).
    api_clock_offset_ms: AtomicI64,
}

/// A response that arrived in full (any status).
pub(super) struct Answer {
    pub(super) status: u16,
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
pub(super) enum RetryMode {
    /// GETs: retry every transient failure.
    Idempotent,
    /// DELETEs: re-send only when the request surely did not reach the server.
    ConnectOnly,
}

/// A request body, built afresh for each attempt: an expiry update recomputes
/// `expires_in_seconds` from its absolute target at every attempt, so a retry can never push the
/// deadline. `Err` stops the request before it is sent (the target has passed meanwhile).
pub(super) type BodyFn<'a> = &'a (dyn Fn() -> Result<Vec<u8>, Error> + Sync);

/// One DELETE and the GET that checks on it after an ambiguous failure.
pub(super) struct DeleteRequest<'a> {
    pub(super) delete: (&'static str, Url),
    pub(super) check: (&'static str, Url),
    pub(super) project_id: &'a str,
    pub(super) object_id: &'a str,
}

impl Transport {
    /// reqwest with rustls, `limits.request_timeout` per request, 5 s to connect, user agent
    /// `keysweep/<version>`, no redirects (a 3xx is [`Error::Redirected`]: a redirect followed
    /// would re-send a DELETE, admin key included, to another path), system proxies
    /// (`HTTPS_PROXY`, `NO_PROXY`) except for a loopback `base_url` (the admin key must not cross
    /// a proxy to reach this host), and `org.ca_file` (PEM, one or more certificates) added to
    /// the trusted roots.
    pub(super) fn new(
        org: &OrgConfig,
        limits: &Limits,
        shared: ClientShared,
    ) -> Result<Self, Error> {
        let setup = |detail: String| Error::Setup {
            organization: org.name.clone(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(limits.request_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keysweep/", env!("CARGO_PKG_VERSION")));
        if org
            .base_url
            .host_str()
            .is_some_and(crate::config::is_loopback_host)
        {
            builder = builder.no_proxy();
        }
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
        let http = builder.build().map_err(|e| {
            setup(format!(
                "cannot build the HTTP client: {}",
                crate::error_chain(&e)
            ))
        })?;
        Ok(Self {
            org: org.name.clone(),
            admin_key: org.admin_key.clone(),
            http,
            max_retries: limits.max_retries,
            max_body: limits.max_response_bytes,
            timeout: limits.request_timeout,
            shared,
            api_clock_offset_ms: AtomicI64::new(0),
        })
    }

    /// The API's "now": the wall clock moved by the offset the last answer's `Date` header
    /// showed. An expiry is sent as seconds from now and the API adds them to *its* clock, so
    /// this is the clock `expires_in_seconds` must count from; with an API clock ahead of ours
    /// by a minute, counting from ours would end the key a minute before its deadline. `Date`
    /// has one-second resolution and is truncated, so a matching clock reads up to a second
    /// behind: the expiry lands up to a second later, never earlier. Before any answer: ours.
    pub(super) fn api_now(&self) -> SystemTime {
        let offset = self.api_clock_offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            now.checked_add(by).unwrap_or(now)
        } else {
            now.checked_sub(by).unwrap_or(UNIX_EPOCH)
        }
    }

    /// Records the API's clock from an answer's `Date` header (absent or unreadable: kept).
    fn observe_date(&self, headers: &HeaderMap) {
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        else {
            return;
        };
        let ours = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let offset = date.timestamp_millis().saturating_sub(ours);
        self.api_clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    pub(super) fn org(&self) -> &str {
        &self.org
    }

    /// Whether the admin key ends with `suffix` (a redacted value's visible end): the one
    /// question about the key answered outside this file, and never the key itself.
    pub(super) fn key_ends_with(&self, suffix: &str) -> bool {
        self.admin_key.expose_secret().ends_with(suffix)
    }

    pub(super) fn ctx(&self, endpoint: &'static str, project: Option<&str>) -> RequestContext {
        RequestContext {
            organization: self.org.clone(),
            project: project.map(str::to_string),
            endpoint,
        }
    }

    /// Replaces any occurrence of the admin key, makes a server-supplied text one inert line
    /// (the API echoes the ids and names it was sent, and every error reaches logs, alerts and
    /// terminals through `Display`), and bounds its length.
    pub(super) fn scrub(&self, text: &str) -> String {
        let key = self.admin_key.expose_secret();
        let cleaned = if key.len() >= 4 && text.contains(key) {
            text.replace(key, "[REDACTED]")
        } else {
            text.to_string()
        };
        types::truncate(&crate::text::one_line(&cleaned), MAX_API_TEXT)
    }

    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        ans: &Answer,
    ) -> Result<T, Error> {
        types::decode(&ans.body).map_err(|e: DecodeError| Error::Decode {
            ctx: ctx.clone(),
            status: ans.status,
            detail: self.scrub(&e.to_string()),
        })
    }

    /// OpenAI's error envelope, if the body is one.
    fn api_error(&self, body: &[u8]) -> Option<ApiErrorBody> {
        match types::decode::<WireErrorEnvelope>(body) {
            Ok(env) => Some(ApiErrorBody {
                error_type: env.error.kind.map(|t| self.scrub(&t)),
                message: env.error.message.map(|m| self.scrub(&m)),
                code: env.error.code.and_then(|c| match c {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(self.scrub(&s)),
                    other => Some(self.scrub(&other.to_string())),
                }),
                param: env.error.param.map(|p| self.scrub(&p)),
            }),
            Err(_) => None,
        }
    }

    /// The error for a complete non-2xx answer.
    fn status_error(&self, ctx: &RequestContext, ans: &Answer, delay: ServerDelay) -> Error {
        let api = self.api_error(&ans.body);
        let ctx = ctx.clone();
        if ans.status == 404 && api.is_none() {
            return Error::StrayNotFound { ctx };
        }
        let api = Box::new(api.unwrap_or_default());
        match ans.status {
            401 | 403 => Error::Unauthorized {
                ctx,
                status: ans.status,
                api,
            },
            404 => Error::NotFound { ctx, api },
            300..=399 => Error::Redirected {
                ctx,
                status: ans.status,
            },
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
                api,
            },
        }
    }

    /// One attempt: pace, send, read the body within the size limit, record the metric.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        ctx: &RequestContext,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, AttemptFailure> {
        if let Some(rate) = &self.shared.rate {
            rate.acquire().await;
        }
        let metrics = &self.shared.metrics;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(self.admin_key.expose_secret())
            .header("accept", "application/json");
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let sent = req.send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                metrics.api_request(&self.org, ctx.endpoint, 0);
                return Err(self.classify(&e));
            }
        };
        let status = resp.status().as_u16();
        metrics.api_request(&self.org, ctx.endpoint, status);
        let headers = resp.headers().clone();
        self.observe_date(&headers);
        let body = self.read_body(resp, ctx).await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The whole body, refused as soon as it exceeds `max_response_bytes`.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        ctx: &RequestContext,
    ) -> Result<Vec<u8>, AttemptFailure> {
        let limit = self.max_body;
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
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.classify(&e)),
            }
        }
    }

    fn classify(&self, e: &reqwest::Error) -> AttemptFailure {
        if e.is_timeout() {
            AttemptFailure::Timeout
        } else if e.is_connect() {
            AttemptFailure::Connect(self.scrub(&crate::error_chain(e)))
        } else {
            AttemptFailure::Other(self.scrub(&crate::error_chain(e)))
        }
    }

    /// Sends until a 2xx answer, a non-retryable failure, or the retries run out.
    pub(super) async fn call(
        &self,
        method: Method,
        url: &Url,
        ctx: &RequestContext,
        mode: RetryMode,
    ) -> Result<Answer, Error> {
        self.call_with_body(method, url, ctx, mode, None).await
    }

    /// [`Self::call`] with a JSON body built by `body` before each attempt (retries included).
    pub(super) async fn call_with_body(
        &self,
        method: Method,
        url: &Url,
        ctx: &RequestContext,
        mode: RetryMode,
        body: Option<BodyFn<'_>>,
    ) -> Result<Answer, Error> {
        let mut retries: u32 = 0;
        // A write's earlier attempt that may have applied (its answer lost, a 5xx): a later
        // refusal then cannot say "nothing changed" (`Error::nothing_applied`).
        let write = method != Method::GET;
        let mut earlier: Option<Error> = None;
        loop {
            let bytes = match body.map(|b| b()).transpose() {
                Ok(b) => b,
                Err(e) => return Err(settle(e, earlier)),
            };
            let answer = self.attempt(&method, url, ctx, bytes).await;
            // Whether this attempt may have changed something: it reached the server and its
            // answer is lost or a server error. A connect error or a refusal changed nothing.
            let reached = match &answer {
                // A gateway's 404 may come after the API applied the write, like a 502.
                Ok(ans) if ans.status == 404 => self.api_error(&ans.body).is_none(),
                Ok(ans) => ans.status >= 500 || ans.status == 408,
                Err(f) => matches!(f, AttemptFailure::Timeout | AttemptFailure::Other(_)),
            };
            let failure = match answer {
                Ok(ans) if (200..300).contains(&ans.status) => return Ok(ans),
                Ok(ans) => match self.judge_answer(ctx, &ans, retries, mode) {
                    Ok(r) => r,
                    Err(e) => return Err(settle(e, earlier)),
                },
                Err(AttemptFailure::Fatal(e)) => return Err(settle(e, earlier)),
                Err(f) => self.judge_failure(ctx, f, retries, mode),
            };
            let Retry {
                retryable,
                delay,
                err,
            } = failure;
            if !retryable || retries >= self.max_retries {
                return Err(settle(err, earlier));
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
            if write && reached && earlier.is_none() {
                earlier = Some(err);
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// A complete non-2xx answer: its error, and whether and when to try again. `Err` when the
    /// server wants a longer wait than we are willing to give.
    fn judge_answer(
        &self,
        ctx: &RequestContext,
        ans: &Answer,
        retries: u32,
        mode: RetryMode,
    ) -> Result<Retry, Error> {
        let delay = retry::server_delay(&ans.headers, SystemTime::now());
        let err = self.status_error(ctx, ans, delay);
        if matches!(err, Error::Redirected { .. }) {
            // Never retried, whatever the server's headers ask: nothing is re-sent after a 3xx.
            return Err(err);
        }
        // A stray 404 is a glitch between us and the API, like a 502.
        let stray = matches!(err, Error::StrayNotFound { .. });
        let wanted = retry::should_retry_override(&ans.headers)
            .unwrap_or_else(|| stray || retry::is_retryable_status(ans.status));
        let delay = match delay {
            // The server wants longer than we are willing to wait: give up now.
            ServerDelay::TooLong(_) => return Err(err),
            ServerDelay::Wait(d) => d,
            ServerDelay::None => retry::backoff(retries, rand::random()),
        };
        Ok(Retry {
            retryable: wanted && mode == RetryMode::Idempotent,
            delay,
            err,
        })
    }

    /// An attempt that got no answer: its error, and whether to try again. Only a connect
    /// failure is surely unsent, so only it is retried for a DELETE.
    fn judge_failure(
        &self,
        ctx: &RequestContext,
        failure: AttemptFailure,
        retries: u32,
        mode: RetryMode,
    ) -> Retry {
        let ctx = ctx.clone();
        let (retryable, err) = match failure {
            AttemptFailure::Connect(detail) => (true, Error::Transport { ctx, detail }),
            AttemptFailure::Timeout => (
                mode == RetryMode::Idempotent,
                Error::Timeout {
                    ctx,
                    after: self.timeout,
                },
            ),
            AttemptFailure::Other(detail) => (
                mode == RetryMode::Idempotent,
                Error::Transport { ctx, detail },
            ),
            AttemptFailure::Fatal(err) => (false, err),
        };
        Retry {
            retryable,
            delay: retry::backoff(retries, rand::random()),
            err,
        }
    }

    /// DELETE without blind retries: after an ambiguous failure (timeout, reset, 408/409/429,
    /// 5xx) the object is looked up first; 404 there means the earlier DELETE (or someone else)
    /// already removed it.
    pub(super) async fn delete_checked(
        &self,
        req: DeleteRequest<'_>,
    ) -> Result<DeleteOutcome, Error> {
        let DeleteRequest {
            delete: (delete_ep, url),
            check: (check_ep, check),
            project_id,
            object_id,
        } = req;
        let ctx = self.ctx(delete_ep, Some(project_id));
        let check_ctx = self.ctx(check_ep, Some(project_id));
        let mut rounds: u32 = 0;
        loop {
            let err = match self
                .call(Method::DELETE, &url, &ctx, RetryMode::ConnectOnly)
                .await
            {
                Ok(ans) => return self.confirmed(ctx, &ans, object_id),
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
                | Error::StrayNotFound { .. }
                | Error::Timeout { .. }
                | Error::Transport { .. } => retry::backoff(rounds, rand::random()),
                _ => return Err(err),
            };
            if rounds >= self.max_retries || delay > retry::MAX_SERVER_DELAY {
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

    /// A 2xx answer to a DELETE: deleted only if the body says `deleted: true` of this very
    /// object (an answer about another id confirms nothing about this one).
    fn confirmed(
        &self,
        ctx: RequestContext,
        ans: &Answer,
        object_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let confirmed: WireDeleted = self.decode(&ctx, ans)?;
        if !confirmed.deleted || confirmed.id != object_id {
            return Err(Error::NotDeleted {
                ctx,
                status: ans.status,
                id: object_id.to_string(),
            });
        }
        let body = self.decode::<serde_json::Value>(&ctx, ans)?;
        Ok(DeleteOutcome::Deleted {
            status: ans.status,
            body,
        })
    }
}

/// A failed attempt, judged: its error, and whether and after how long to try again.
struct Retry {
    retryable: bool,
    delay: Duration,
    err: Error,
}

/// The error a write ends with: `last`, unless it says nothing changed while an `earlier`
/// attempt may have applied (it reached the server: its answer lost, a 5xx). Then the earlier
/// one, so the caller treats the outcome as unknown instead of recording a refusal.
fn settle(last: Error, earlier: Option<Error>) -> Error {
    match earlier {
        Some(first) if last.nothing_applied() => {
            tracing::warn!(
                last = %last,
                earlier = %first,
                "a write was refused after an earlier attempt that may have applied; its outcome is unknown"
            );
            first
        }
        _ => last,
    }
}
