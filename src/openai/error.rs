//! Errors of the Administration API client.
//!
//! Every variant carries a [`RequestContext`] (organisation, project, endpoint template) so a
//! message read in a log or an alert says where it happened, plus the HTTP status and OpenAI's
//! own error type and message when there was one. The admin key must never appear here: the
//! client scrubs every server-supplied text of it before building an error, and no variant holds
//! a header or the request itself.

use std::fmt;
use std::time::Duration;

/// Where a request went, for error messages. Holds nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub organization: String,
    pub project: Option<String>,
    /// Route template, e.g. `GET /organization/projects/{project_id}/api_keys`.
    pub endpoint: &'static str,
}

impl fmt::Display for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "organization {}", self.organization)?;
        if let Some(p) = &self.project {
            write!(f, ", project {p}")?;
        }
        write!(f, ", {}", self.endpoint)
    }
}

/// OpenAI's `{"error": {type, message, code}}`, already scrubbed and bounded in length
/// (boxed in [`Error`] to keep the `Result`s small).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub code: Option<String>,
    /// The request field the error is about, when the API names one.
    pub param: Option<String>,
}

impl fmt::Display for ApiErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.error_type, &self.message) {
            (Some(t), Some(m)) => write!(f, ": {t}: {m}"),
            (Some(t), None) => write!(f, ": {t}"),
            (None, Some(m)) => write!(f, ": {m}"),
            (None, None) => Ok(()),
        }?;
        if let Some(c) = &self.code {
            write!(f, " (code {c})")?;
        }
        Ok(())
    }
}

/// Why an Administration API call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be built (bad CA file, unusable base URL).
    #[error("organization {organization}: cannot set up the API client: {detail}")]
    Setup {
        organization: String,
        detail: String,
    },
    /// 401 or 403: the admin key is wrong, revoked, or lacks a scope.
    #[error("{ctx}: HTTP {status}: the admin key was refused{api}")]
    Unauthorized {
        ctx: RequestContext,
        status: u16,
        api: Box<ApiErrorBody>,
    },
    /// A 404 carrying OpenAI's `{"error": …}` envelope: the API itself says the object (or the
    /// route) does not exist.
    #[error("{ctx}: HTTP 404 not found{api}")]
    NotFound {
        ctx: RequestContext,
        api: Box<ApiErrorBody>,
    },
    /// A 404 without OpenAI's error envelope: a proxy, gateway or load balancer answered, not
    /// the API, so it says nothing about the object. Never read as "gone" (that would record a
    /// live key as deleted, or drop a restore it is owed); retried like a 5xx, and a write that
    /// met it may or may not have landed.
    #[error(
        "{ctx}: HTTP 404 without OpenAI's error body (a proxy or gateway answered, not the API): nothing is known of the object"
    )]
    StrayNotFound { ctx: RequestContext },
    /// 429 after the retries ran out, or with a server-directed delay too long to wait.
    #[error("{ctx}: HTTP 429 rate limited{}{api}", fmt_retry_after(*.retry_after))]
    RateLimited {
        ctx: RequestContext,
        retry_after: Option<Duration>,
        api: Box<ApiErrorBody>,
    },
    /// 5xx (or 408/409) after the retries ran out.
    #[error("{ctx}: HTTP {status} server error{api}")]
    Server {
        ctx: RequestContext,
        status: u16,
        api: Box<ApiErrorBody>,
    },
    /// A 3xx: redirects are refused (never followed, never retried), since following one would
    /// re-send the request, a DELETE and the admin key included, somewhere else.
    #[error("{ctx}: HTTP {status}: the API answered with a redirect, and redirects are refused")]
    Redirected { ctx: RequestContext, status: u16 },
    /// Any other 4xx: the API refused the request (e.g. 400 when deleting a key owned by a
    /// service account). Never retried.
    #[error("{ctx}: HTTP {status}: refused{api}")]
    Refused {
        ctx: RequestContext,
        status: u16,
        /// OpenAI's error, its `param` (the request field blamed) included.
        api: Box<ApiErrorBody>,
    },
    /// An update (or a mint) asked for an expiry the organisation's or project's expiry policy
    /// does not allow (HTTP 400 about `expires_in_seconds`). Never retried; `message` is the
    /// API's own wording (the limit itself is not visible through the API).
    #[error("{ctx}: HTTP {status}: the expiry policy refused the expiry{}", fmt_api(&None, .message))]
    ExpiryRefused {
        ctx: RequestContext,
        status: u16,
        message: Option<String>,
    },
    /// An update found the key ended: 400 says it has expired ("Expired keys cannot be
    /// updated"); 404 says it is gone — deleted, or expired where the API hides expired keys (the
    /// API documents neither, so both end here and `status` tells which was seen).
    #[error("{ctx}: HTTP {status}: the key has expired or is gone{}", fmt_api(&None, .message))]
    KeyEnded {
        ctx: RequestContext,
        status: u16,
        message: Option<String>,
    },
    /// An expiry's absolute target had already passed when a request was about to be sent
    /// (`expires_in_seconds` would not be positive): nothing was sent.
    #[error("{ctx}: the expiry target {target} (Unix seconds) has already passed; nothing sent")]
    ExpiryPassed { ctx: RequestContext, target: i64 },
    /// Connection refused or reset, DNS failure, TLS failure, broken body stream.
    #[error("{ctx}: transport error: {detail}")]
    Transport { ctx: RequestContext, detail: String },
    #[error("{ctx}: no answer within {}s", .after.as_secs_f64())]
    Timeout {
        ctx: RequestContext,
        after: Duration,
    },
    /// Malformed, truncated or wrongly typed JSON.
    #[error("{ctx}: HTTP {status}: cannot decode the response: {detail}")]
    Decode {
        ctx: RequestContext,
        status: u16,
        detail: String,
    },
    /// The pager's cursor did not advance or came back a second time.
    #[error("{ctx}: pagination cursor loops (cursor {cursor:?} seen before)")]
    CursorLoop { ctx: RequestContext, cursor: String },
    /// An id (of a listed object, or of a key's owner) is not `^[A-Za-z0-9_-]{1,128}$`: it could
    /// turn into another path when a URL is built from it, so the listing is incomplete.
    #[error("{ctx}: malformed id {id:?} (ids must be 1 to 128 of A-Z a-z 0-9 _ -)")]
    BadId { ctx: RequestContext, id: String },
    /// A single-object read answered for another object than the one asked for.
    #[error("{ctx}: asked for {expected:?}, the API answered with id {got:?}")]
    UnexpectedId {
        ctx: RequestContext,
        expected: String,
        got: String,
    },
    /// The same object id came back twice in one listing.
    #[error("{ctx}: id {id:?} listed twice")]
    DuplicateIds { ctx: RequestContext, id: String },
    /// Any other inconsistency of a paged listing (empty page with `has_more`, too many pages).
    #[error("{ctx}: inconsistent pagination: {detail}")]
    Pagination { ctx: RequestContext, detail: String },
    #[error("{ctx}: response body larger than the limit of {limit} bytes")]
    BodyTooLarge { ctx: RequestContext, limit: usize },
    /// A DELETE answered 2xx but `deleted` was not true.
    #[error("{ctx}: the API answered HTTP {status} but did not confirm the deletion of {id}")]
    NotDeleted {
        ctx: RequestContext,
        status: u16,
        id: String,
    },
}

/// What a 400 on an expiry write was about.
#[derive(Debug, PartialEq, Eq)]
enum ExpiryRefusal {
    KeyExpired,
    Policy,
}

fn expiry_refusal(message: Option<&str>, param: Option<&str>) -> Option<ExpiryRefusal> {
    let text = message.unwrap_or("").to_ascii_lowercase();
    let about_expiry = param == Some("expires_in_seconds");
    if !about_expiry && text.contains("expired") {
        return Some(ExpiryRefusal::KeyExpired);
    }
    let policy_words = ["polic", "maximum", "lifetime", "exceed", "longer"];
    (about_expiry || (text.contains("expir") && policy_words.iter().any(|w| text.contains(w))))
        .then_some(ExpiryRefusal::Policy)
}

fn fmt_api(error_type: &Option<String>, message: &Option<String>) -> String {
    ApiErrorBody {
        error_type: error_type.clone(),
        message: message.clone(),
        code: None,
        param: None,
    }
    .to_string()
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (server asked to wait {}s)", d.as_secs_f64()),
        None => String::new(),
    }
}

impl Error {
    /// Whether a write that failed with this error certainly changed nothing: the API refused
    /// it (401/403, 404, another 4xx, a redirect, the expiry policy, a key already ended), or it
    /// was never sent. A timeout, a lost connection, a 5xx, a 429 after retries (an earlier
    /// attempt may have applied) or an answer that cannot be read may have changed the key.
    pub fn nothing_applied(&self) -> bool {
        matches!(
            self,
            Error::Setup { .. }
                | Error::Unauthorized { .. }
                | Error::NotFound { .. }
                | Error::Redirected { .. }
                | Error::Refused { .. }
                | Error::ExpiryRefused { .. }
                | Error::KeyEnded { .. }
                | Error::ExpiryPassed { .. }
        )
    }

    /// The HTTP status involved, or `None` for transport-level and client-side failures.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. }
            | Error::Server { status, .. }
            | Error::Refused { status, .. }
            | Error::ExpiryRefused { status, .. }
            | Error::KeyEnded { status, .. }
            | Error::Decode { status, .. }
            | Error::NotDeleted { status, .. }
            | Error::Redirected { status, .. } => Some(*status),
            Error::NotFound { .. } | Error::StrayNotFound { .. } => Some(404),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// True when the admin key itself was refused: the whole organisation is unusable.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. })
    }

    /// Reads an update's (or a mint's) failure in the terms of an expiry write: a 400 about the
    /// expiry becomes [`Error::ExpiryRefused`], a 400 saying the key expired or a 404 about the
    /// key becomes [`Error::KeyEnded`]; anything else is returned unchanged.
    ///
    /// The API's wording is not documented, so this reads the error's `param` first (the field
    /// blamed: keysweep only ever sends a positive whole number, so a 400 about
    /// `expires_in_seconds` can only be the policy) and falls back to the message. A key
    /// expired message ("has expired", "Expired keys cannot be updated") is told apart from a
    /// policy message ("expiry policy", "maximum … lifetime") by the word "expired".
    pub fn into_expiry_error(self) -> Error {
        match self {
            Error::Refused {
                ctx,
                status: 400,
                api,
            } => match expiry_refusal(api.message.as_deref(), api.param.as_deref()) {
                Some(ExpiryRefusal::KeyExpired) => Error::KeyEnded {
                    ctx,
                    status: 400,
                    message: api.message,
                },
                Some(ExpiryRefusal::Policy) => Error::ExpiryRefused {
                    ctx,
                    status: 400,
                    message: api.message,
                },
                None => Error::Refused {
                    ctx,
                    status: 400,
                    api,
                },
            },
            // A 404 about the route (an API without the November 2026 update endpoint answers
            // "Invalid URL (POST …)") or about the project is no key that ended: the write was
            // not possible, and saying the key ended would close its finding.
            Error::NotFound { ctx, api } if !about_route_or_project(&api) => Error::KeyEnded {
                ctx,
                status: 404,
                message: api.message,
            },
            other => other,
        }
    }

    /// For a read or a DELETE of a key: a 400 saying the key has expired becomes
    /// [`Error::KeyEnded`] (the API documents neither this answer nor 404 nor 200 for an
    /// expired key, so all three must be handled); anything else is returned unchanged.
    pub fn into_key_ended_if_expired(self) -> Error {
        match self {
            Error::Refused {
                ctx,
                status: 400,
                api,
            } if expiry_refusal(api.message.as_deref(), api.param.as_deref())
                == Some(ExpiryRefusal::KeyExpired) =>
            {
                Error::KeyEnded {
                    ctx,
                    status: 400,
                    message: api.message,
                }
            }
            other => other,
        }
    }

    /// A [`Error::KeyEnded`] that a read did not confirm, as the plain 404 it was: the write
    /// changed nothing, and says nothing about the key. Any other error is returned unchanged.
    pub(super) fn into_not_found(self) -> Error {
        match self {
            Error::KeyEnded {
                ctx,
                status: 404,
                message,
            } => Error::NotFound {
                ctx,
                api: Box::new(ApiErrorBody {
                    message,
                    ..ApiErrorBody::default()
                }),
            },
            other => other,
        }
    }

    /// True when an update found the key expired or gone ([`Error::KeyEnded`]).
    pub fn is_key_ended(&self) -> bool {
        matches!(self, Error::KeyEnded { .. })
    }

    pub fn context(&self) -> Option<&RequestContext> {
        match self {
            Error::Setup { .. } => None,
            Error::Unauthorized { ctx, .. }
            | Error::NotFound { ctx, .. }
            | Error::StrayNotFound { ctx }
            | Error::RateLimited { ctx, .. }
            | Error::Server { ctx, .. }
            | Error::Refused { ctx, .. }
            | Error::Redirected { ctx, .. }
            | Error::BadId { ctx, .. }
            | Error::UnexpectedId { ctx, .. }
            | Error::ExpiryRefused { ctx, .. }
            | Error::KeyEnded { ctx, .. }
            | Error::ExpiryPassed { ctx, .. }
            | Error::Transport { ctx, .. }
            | Error::Timeout { ctx, .. }
            | Error::Decode { ctx, .. }
            | Error::CursorLoop { ctx, .. }
            | Error::DuplicateIds { ctx, .. }
            | Error::Pagination { ctx, .. }
            | Error::BodyTooLarge { ctx, .. }
            | Error::NotDeleted { ctx, .. } => Some(ctx),
        }
    }
}

/// Whether a 404's body blames the route or the project rather than the key.
fn about_route_or_project(api: &ApiErrorBody) -> bool {
    api.param.as_deref() == Some("project_id")
        || (api.message.as_deref()).is_some_and(|m| m.starts_with("Invalid URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An expiry update's 404: the key ended, unless the body blames the route (an API
    /// without the update endpoint) or the project.
    #[test]
    fn an_update_404_is_a_key_that_ended_only_when_it_is_about_the_key() {
        let not_found = |message: &str, param: Option<&str>| Error::NotFound {
            ctx: ctx(),
            api: Box::new(ApiErrorBody {
                error_type: Some("invalid_request_error".into()),
                message: Some(message.into()),
                code: None,
                param: param.map(str::to_string),
            }),
        };
        let key = not_found("No API key found with id 'key_1'.", Some("api_key_id"));
        assert!(matches!(key.into_expiry_error(), Error::KeyEnded { .. }));
        let plain = not_found("Not found.", None);
        assert!(matches!(plain.into_expiry_error(), Error::KeyEnded { .. }));
        let route = not_found(
            "Invalid URL (POST /v1/organization/projects/p/api_keys/k)",
            None,
        );
        assert!(matches!(route.into_expiry_error(), Error::NotFound { .. }));
        let project = not_found("No project found with id 'proj_1'.", Some("project_id"));
        assert!(matches!(
            project.into_expiry_error(),
            Error::NotFound { .. }
        ));
    }

    fn ctx() -> RequestContext {
        RequestContext {
            organization: "acme".into(),
            project: Some("proj_1".into()),
            endpoint: "GET /organization/projects/{project_id}/api_keys",
        }
    }

    #[test]
    fn messages_name_org_project_endpoint_status_and_api_text() {
        let e = Error::Unauthorized {
            ctx: ctx(),
            status: 401,
            api: Box::new(ApiErrorBody {
                error_type: Some("invalid_request_error".into()),
                message: Some("Incorrect API key provided".into()),
                code: Some("invalid_api_key".into()),
                param: None,
            }),
        };
        assert_eq!(
            e.to_string(),
            "organization acme, project proj_1, GET /organization/projects/{project_id}/api_keys: \
             HTTP 401: the admin key was refused: invalid_request_error: Incorrect API key provided \
             (code invalid_api_key)"
        );
        let e = Error::Refused {
            ctx: ctx(),
            status: 400,
            api: Box::new(ApiErrorBody {
                error_type: Some("invalid_request_error".into()),
                message: Some("service account key".into()),
                code: None,
                param: None,
            }),
        };
        assert!(
            e.to_string()
                .ends_with("HTTP 400: refused: invalid_request_error: service account key")
        );
        let e = Error::RateLimited {
            ctx: ctx(),
            retry_after: Some(Duration::from_secs(300)),
            api: Box::default(),
        };
        assert!(
            e.to_string()
                .ends_with("HTTP 429 rate limited (server asked to wait 300s)")
        );
        assert_eq!(e.status(), Some(429));
    }

    #[test]
    fn expiry_refusals_are_told_apart() {
        use ExpiryRefusal::*;
        let cases = [
            // The simulator's wordings.
            (
                "Invalid 'expires_in_seconds': 999 exceeds the organization's maximum API key \
                 lifetime of 10 seconds.",
                Some("expires_in_seconds"),
                Some(Policy),
            ),
            (
                "API key 'key_1' has expired. Expired keys cannot be updated.",
                None,
                Some(KeyExpired),
            ),
            // The API's documented phrase, without a param.
            (
                "The expiry must comply with the organization and project expiry policies.",
                None,
                Some(Policy),
            ),
            ("Expired keys cannot be updated.", None, Some(KeyExpired)),
            ("Invalid request.", None, None),
            (
                "Provide at least one of 'expires_in_seconds' or 'scopes'.",
                None,
                None,
            ),
        ];
        for (message, param, want) in cases {
            assert_eq!(expiry_refusal(Some(message), param), want, "{message}");
        }
        let refused = |message: &str, param: Option<&str>| Error::Refused {
            ctx: ctx(),
            status: 400,
            api: Box::new(ApiErrorBody {
                error_type: Some("invalid_request_error".into()),
                message: Some(message.into()),
                code: None,
                param: param.map(str::to_string),
            }),
        };
        assert!(matches!(
            refused("x", Some("expires_in_seconds")).into_expiry_error(),
            Error::ExpiryRefused { status: 400, .. }
        ));
        assert!(
            refused("API key has expired.", None)
                .into_expiry_error()
                .is_key_ended()
        );
        assert!(matches!(
            refused("Invalid request.", Some("scopes")).into_expiry_error(),
            Error::Refused { ref api, .. } if api.error_type.is_some() && api.param.is_some()
        ));
        let gone = Error::NotFound {
            ctx: ctx(),
            api: Box::default(),
        }
        .into_expiry_error();
        assert!(
            matches!(gone, Error::KeyEnded { status: 404, .. }),
            "{gone}"
        );
        let expired_delete = refused("API key 'key_1' has expired.", None);
        assert!(expired_delete.into_key_ended_if_expired().is_key_ended());
        let sa_delete = refused("API key 'k' belongs to a service account", None);
        assert!(matches!(
            sa_delete.into_key_ended_if_expired(),
            Error::Refused { status: 400, .. }
        ));
        let policy = refused("x", Some("expires_in_seconds"));
        assert!(matches!(
            policy.into_key_ended_if_expired(),
            Error::Refused { .. }
        ));
        let server = Error::Server {
            ctx: ctx(),
            status: 503,
            api: Box::default(),
        };
        assert!(matches!(server.into_expiry_error(), Error::Server { .. }));
    }
}
