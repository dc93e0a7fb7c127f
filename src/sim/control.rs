//! The simulator's own endpoints under `/_sim/` (no auth, never counted, never faulted): what
//! tests and scripts use to look behind the API and to move time.
//!
//! * `GET /_sim/stats` → `{"requests": {"METHOD /route/template": n, …}}`;
//!   `POST /_sim/reset-stats` zeroes it (204).
//! * `GET /_sim/clock` → `{"now": <unix s>, "frozen": bool}`;
//!   `POST /_sim/clock` with `{"now": <unix s>}` (set) or `{"advance_seconds": <n>}` (move by
//!   n, negative allowed), optionally `"frozen": bool`; answers the new clock.
//! * `GET /_sim/projects/{project_id}/api_keys/{api_key_id}` → the key as stored: the
//!   `ProjectApiKey` fields that matter plus `scopes` (which the API never shows) and
//!   `expired` (by the simulator's clock). Expired keys are shown even when the API hides them.
//!
//! Nothing here ever returns a secret (the organisation holds none).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::respond::{error, json};
use super::shared::Shared;

type S = Arc<Shared>;

pub(crate) async fn stats(State(s): State<S>) -> Response {
    let body = json!({ "requests": s.stats_snapshot() });
    json(StatusCode::OK, body.to_string().into_bytes())
}

pub(crate) async fn reset_stats(State(s): State<S>) -> Response {
    s.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

fn clock_json(s: &Shared) -> Response {
    let body = json!({ "now": s.clock.now(), "frozen": s.clock.frozen() });
    json(StatusCode::OK, body.to_string().into_bytes())
}

pub(crate) async fn get_clock(State(s): State<S>) -> Response {
    clock_json(&s)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    now: Option<i64>,
    advance_seconds: Option<i64>,
    frozen: Option<bool>,
}

fn bad_request(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        None,
    )
}

pub(crate) async fn set_clock(State(s): State<S>, body: Bytes) -> Response {
    let Ok(change) = serde_json::from_slice::<ClockChange>(&body) else {
        return bad_request(
            "expected {\"now\": <unix seconds>} or {\"advance_seconds\": <n>}, optionally with \
             \"frozen\": <bool>",
        );
    };
    match (change.now, change.advance_seconds) {
        (Some(_), Some(_)) => return bad_request("give either 'now' or 'advance_seconds'"),
        (Some(at), None) => s.clock.set(at, change.frozen),
        (None, Some(by)) => s.clock.advance(by, change.frozen),
        (None, None) => s.clock.advance(0, change.frozen),
    }
    clock_json(&s)
}

pub(crate) async fn inspect_key(
    State(s): State<S>,
    Path((project, key)): Path<(String, String)>,
) -> Response {
    let Some(k) = s.org.key(&project, &key) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("No API key '{key}' in project '{project}'."),
            "invalid_request_error",
            None,
            None,
        );
    };
    let expired = k.expires_at.is_some_and(|at| at <= s.clock.now());
    let mut body = serde_json::to_value(&k).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert("project_id".into(), json!(project));
        o.insert("expired".into(), json!(expired));
    }
    json(StatusCode::OK, body.to_string().into_bytes())
}
