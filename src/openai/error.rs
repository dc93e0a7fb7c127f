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
    #[error("{ctx}: HTTP 404 not found{api}")]
    NotFound {
        ctx: RequestContext,
        api: Box<ApiErrorBody>,
    },
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
    /// Any other 4xx: the API refused the request (e.g. 400 when deleting a key owned by a
    /// service account). Never retried.
    #[error("{ctx}: HTTP {status}: refused{}", fmt_api(.error_type, .message))]
    Refused {
        ctx: RequestContext,
        status: u16,
        error_type: Option<String>,
        message: Option<String>,
    },
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

fn fmt_api(error_type: &Option<String>, message: &Option<String>) -> String {
    ApiErrorBody {
        error_type: error_type.clone(),
        message: message.clone(),
        code: None,
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
    /// The HTTP status involved, or `None` for transport-level and client-side failures.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. }
            | Error::Server { status, .. }
            | Error::Refused { status, .. }
            | Error::Decode { status, .. }
            | Error::NotDeleted { status, .. } => Some(*status),
            Error::NotFound { .. } => Some(404),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// True when the admin key itself was refused: the whole organisation is unusable.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. })
    }

    pub fn context(&self) -> Option<&RequestContext> {
        match self {
            Error::Setup { .. } => None,
            Error::Unauthorized { ctx, .. }
            | Error::NotFound { ctx, .. }
            | Error::RateLimited { ctx, .. }
            | Error::Server { ctx, .. }
            | Error::Refused { ctx, .. }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            error_type: Some("invalid_request_error".into()),
            message: Some("service account key".into()),
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
}
