//! What the simulator answers: OpenAI's JSON and error envelope, the wording of each refusal,
//! and scripted faults rendered on top of a normal answer (status, delay, reset, distortions).
//!
//! [`answer`] is the one shape every API handler shares: match a fault, let it answer first
//! (or wait, or change the world), run the operation, then render the result through the fault.
//! Nothing here echoes the admin key or a minted key's value into an error.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::conn::ConnCtl;
use super::faults::{FaultKind, FaultRequest, Fired};
use super::shared::Shared;
use super::state::Refusal;
use super::wire;

/// Runs one API request: the fault check before any effect, the operation `op` (which sees the
/// fault, for the list distortions decided before selection), and the fault's rendering after.
pub(crate) async fn answer(
    s: &Shared,
    conn: &ConnCtl,
    req: FaultRequest<'_>,
    op: impl FnOnce(Option<&Fired>) -> Result<Vec<u8>, Refusal>,
) -> Response {
    let fired = s.faults.take(&req);
    if let Some(resp) = before(s, fired.as_ref(), conn).await {
        return resp;
    }
    let result = op(fired.as_ref());
    finish(s, fired, conn, result).await
}

pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// OpenAI's `ErrorResponse` envelope.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = wire::ErrorResponse {
        error: wire::ErrorBody {
            message,
            kind,
            param,
            code,
        },
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// An error for a bare status code, worded and typed the way OpenAI does for that status.
pub(crate) fn status_error(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (message, kind, err_code) = match status.as_u16() {
        400 => ("Invalid request.", "invalid_request_error", None),
        401 => (
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => (
            "You have insufficient permissions for this operation. Missing scopes: api.management.read.",
            "invalid_request_error",
            None,
        ),
        404 => ("Not found.", "invalid_request_error", None),
        409 => (
            "Conflict: the resource was modified concurrently.",
            "invalid_request_error",
            None,
        ),
        429 => (
            "Rate limit reached for requests.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500..=599 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        _ => ("Request failed.", "invalid_request_error", None),
    };
    error(status, message, kind, None, err_code)
}

pub(crate) fn too_many_requests(wait: Duration) -> Response {
    let ms = wait.as_millis().max(1);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = status_error(429);
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
    resp
}

pub(crate) fn refusal(r: Refusal) -> Response {
    let (status, message, param) = match &r {
        Refusal::NoProject(id) => (
            StatusCode::NOT_FOUND,
            format!("No project found with id '{id}'."),
            Some("project_id"),
        ),
        Refusal::NoKey(id) => (
            StatusCode::NOT_FOUND,
            format!("No API key found with id '{id}'."),
            Some("api_key_id"),
        ),
        Refusal::NoServiceAccount(id) => (
            StatusCode::NOT_FOUND,
            format!("No service account found with id '{id}'."),
            Some("service_account_id"),
        ),
        Refusal::Archived(id) => (
            StatusCode::BAD_REQUEST,
            format!("Project '{id}' is archived."),
            None,
        ),
        // Only under the August 2026 rule (`refuse_service_account_key_delete`).
        Refusal::ServiceAccountKey(id) => (
            StatusCode::BAD_REQUEST,
            format!(
                "API key '{id}' belongs to a service account and cannot be deleted; delete the \
                 service account instead."
            ),
            None,
        ),
        Refusal::BadCursor(_) => (
            StatusCode::BAD_REQUEST,
            "Invalid 'after': no such object.".to_string(),
            Some("after"),
        ),
        Refusal::Expired(id) => (
            StatusCode::BAD_REQUEST,
            format!("API key '{id}' has expired. Expired keys cannot be updated."),
            None,
        ),
        Refusal::ExpiryPolicy { requested, limit } => (
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid 'expires_in_seconds': {requested} exceeds the organization's maximum \
                 API key lifetime of {limit} seconds."
            ),
            Some("expires_in_seconds"),
        ),
    };
    error(status, &message, "invalid_request_error", param, None)
}

/// A query parameter OpenAI would refuse with 400.
#[derive(Debug)]
pub(crate) struct BadParam {
    param: &'static str,
    message: String,
}

pub(crate) fn bad_param(param: &'static str, message: String) -> BadParam {
    BadParam { param, message }
}

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            &self.message,
            "invalid_request_error",
            Some(self.param),
            None,
        )
    }
}

/// Applies the part of a fault that replaces or precedes the normal processing. `Some` is the
/// final answer; `None` means "carry on" (possibly after a delay).
async fn before(s: &Shared, fired: Option<&Fired>, conn: &ConnCtl) -> Option<Response> {
    let f = fired.filter(|f| !f.after_effect)?;
    interrupt(s, &f.kind, conn).await
}

async fn interrupt(s: &Shared, kind: &FaultKind, conn: &ConnCtl) -> Option<Response> {
    match kind {
        FaultKind::Status(code) => Some(status_error(*code)),
        FaultKind::StatusMessage { status, message } => Some(error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            message,
            "invalid_request_error",
            None,
            None,
        )),
        FaultKind::Foreign { status, body } => {
            let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (code, body.clone()).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            Some(resp)
        }
        FaultKind::RateLimited { retry_after_secs } => {
            let mut resp = status_error(429);
            let headers = resp.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(retry_after_secs.saturating_mul(1000)),
            );
            Some(resp)
        }
        FaultKind::Redirect { status, location } => {
            let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            let mut resp = code.into_response();
            if let Ok(v) = HeaderValue::from_str(location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Some(resp)
        }
        FaultKind::ConnectionReset => {
            conn.kill();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        FaultKind::Delay(d) => {
            s.sleep(*d).await;
            None
        }
        FaultKind::Apply(effect) => {
            s.apply(effect);
            None
        }
        _ => None,
    }
}

/// Renders a normal answer through the fault's body distortion, if any.
async fn finish(
    s: &Shared,
    fired: Option<Fired>,
    conn: &ConnCtl,
    result: Result<Vec<u8>, Refusal>,
) -> Response {
    let body = match result {
        Ok(body) => body,
        Err(r) => return refusal(r),
    };
    let Some(f) = fired else {
        return json(StatusCode::OK, body);
    };
    if f.after_effect
        && let Some(resp) = interrupt(s, &f.kind, conn).await
    {
        return resp;
    }
    json(StatusCode::OK, distort(&f.kind, body))
}

fn distort(kind: &FaultKind, body: Vec<u8>) -> Vec<u8> {
    match kind {
        FaultKind::Truncated => {
            let mut body = body;
            body.truncate(body.len() / 2);
            body
        }
        FaultKind::Malformed => {
            let mut body = body;
            if let Some(i) = body.iter().position(|&b| b == b':') {
                body[i] = b'=';
            }
            body
        }
        FaultKind::Oversized(limit) => {
            let need = limit.saturating_sub(body.len()) + 1;
            let pad = "x".repeat(need);
            let mut out = Vec::with_capacity(body.len() + need + 32);
            out.extend_from_slice(b"{\"x_sim_padding\":\"");
            out.extend_from_slice(pad.as_bytes());
            out.extend_from_slice(b"\",");
            out.extend_from_slice(body.get(1..).unwrap_or_default());
            out
        }
        FaultKind::Patch(fields) => {
            let (Ok(mut v), Some(fields)) =
                (serde_json::from_slice::<Value>(&body), fields.as_object())
            else {
                return body;
            };
            for_each_object(&mut v, |o| {
                o.extend(fields.iter().map(|(k, f)| (k.clone(), f.clone())));
            });
            serde_json::to_vec(&v).unwrap_or(body)
        }
        FaultKind::WrongTypes
        | FaultKind::OmitLastUsed
        | FaultKind::OmitExpiresAt
        | FaultKind::ExtraFields => {
            let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                return body;
            };
            match kind {
                FaultKind::WrongTypes => wrong_types(&mut v),
                FaultKind::OmitLastUsed => for_each_object(&mut v, |o| {
                    o.remove("last_used_at");
                }),
                FaultKind::OmitExpiresAt => for_each_object(&mut v, |o| {
                    o.remove("expires_at");
                }),
                _ => extra_fields(&mut v),
            }
            serde_json::to_vec(&v).unwrap_or(body)
        }
        _ => body,
    }
}

/// Calls `f` on the answer's object(s): the single object, or every item of a list.
fn for_each_object(v: &mut Value, f: impl Fn(&mut serde_json::Map<String, Value>)) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if obj.get("object").and_then(Value::as_str) == Some("list") {
        if let Some(items) = obj.get_mut("data").and_then(Value::as_array_mut) {
            for item in items {
                if let Some(o) = item.as_object_mut() {
                    f(o);
                }
            }
        }
    } else {
        f(obj);
    }
}

fn wrong_types(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                match (k.as_str(), &*field) {
                    ("created_at", Value::Number(n)) => *field = Value::String(n.to_string()),
                    ("deleted", Value::Bool(b)) => *field = Value::String(b.to_string()),
                    _ => wrong_types(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(wrong_types),
        _ => {}
    }
}

fn extra_fields(v: &mut Value) {
    if let Some(top) = v.as_object_mut() {
        top.insert(
            "x_sim_envelope_extra".into(),
            serde_json::json!({"note": "unknown field", "n": [1, 2, 3]}),
        );
    }
    for_each_object(v, |o| {
        o.insert(
            "x_sim_unknown".into(),
            serde_json::json!({"nested": [true, null]}),
        );
        // A nullable field from a future API version (`expires_at` was one until November 2026).
        o.insert("x_sim_future_nullable".into(), Value::Null);
        if let Some(owner) = o.get_mut("owner").and_then(Value::as_object_mut) {
            owner.insert("x_sim_owner_extra".into(), serde_json::json!(42));
        }
    });
}
