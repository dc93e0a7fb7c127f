//! The simulator's own rendering of OpenAI's wire objects, written from
//! `openapi-admin.yaml` (spec commit f85dbe2, plus the November 2026 additions taken from
//! openai-python 3.51.0: `ProjectApiKey.expires_at` and `ServiceAccountApiKeyBody`) field by
//! field, in the spec's order.
//!
//! Required-and-nullable fields (`last_used_at`, `first_id`, `last_id`, `expires_at`, the
//! error's `param` and `code`) are always present, as `null` when empty; so is the optional but
//! nullable `expires_at` of keys (null: never expires), as OpenAI sends it; optional fields that
//! do not apply (`owner.user` of a service-account key) are left out. These structs borrow from
//! the server state so that a page is serialised straight from it, without copies.
//!
//! This module must never import `crate::openai`: the simulator is an independent
//! implementation of the spec, so that a mistake in the client is not mirrored here.

use serde::Serialize;

/// `ProjectApiKeyListResponse`, `ProjectListResponse`, … : the common list envelope.
#[derive(Debug, Serialize)]
pub struct List<'a, T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
    pub has_more: bool,
}

/// `Project`.
#[derive(Debug, Serialize)]
pub struct Project<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub name: Option<&'a str>,
    pub created_at: i64,
    pub archived_at: Option<i64>,
    /// "`active` or `archived`"; a free-form nullable string in the spec.
    pub status: Option<&'static str>,
    pub external_key_id: Option<&'a str>,
}

/// `ProjectApiKey`.
#[derive(Debug, Serialize)]
pub struct ProjectApiKey<'a> {
    pub object: &'static str,
    pub redacted_value: &'a str,
    pub name: &'a str,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub id: &'a str,
    pub owner_project_access: &'static str,
    /// Unix seconds, or null when the key never expires (November 2026).
    pub expires_at: Option<i64>,
    pub owner: KeyOwner<'a>,
}

/// `ServiceAccountApiKeyBody`: a minted service-account key with its plaintext `value`. No
/// `Debug`: the value is a secret and must never reach a log.
#[derive(Serialize)]
pub struct ServiceAccountApiKey<'a> {
    pub object: &'static str,
    pub value: &'a str,
    pub name: &'a str,
    pub created_at: i64,
    pub id: &'a str,
    pub expires_at: Option<i64>,
}

/// `ProjectApiKey.owner`: `type` plus the one matching sub-object.
#[derive(Debug, Serialize)]
pub struct KeyOwner<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<KeyOwnerUser<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<KeyOwnerServiceAccount<'a>>,
}

/// `ProjectApiKeyOwnerUser`: all five fields required.
#[derive(Debug, Serialize)]
pub struct KeyOwnerUser<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub created_at: i64,
}

/// `ProjectApiKeyOwnerServiceAccount`: no email.
#[derive(Debug, Serialize)]
pub struct KeyOwnerServiceAccount<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub created_at: i64,
}

/// `ProjectApiKeyDeleteResponse`, `ProjectServiceAccountDeleteResponse`.
#[derive(Debug, Serialize)]
pub struct Deleted<'a> {
    pub object: &'static str,
    pub id: &'a str,
    pub deleted: bool,
}

/// `ProjectServiceAccount`.
#[derive(Debug, Serialize)]
pub struct ProjectServiceAccount<'a> {
    pub object: &'static str,
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub created_at: i64,
}

/// `ProjectUser` (`name` and `email` are nullable in the spec; ours always have both).
#[derive(Debug, Serialize)]
pub struct ProjectUser<'a> {
    pub object: &'static str,
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub role: &'a str,
    pub added_at: i64,
}

/// `AdminApiKey`.
#[derive(Debug, Serialize)]
pub struct AdminApiKey<'a> {
    pub object: &'static str,
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub redacted_value: &'a str,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub owner: AdminKeyOwner<'a>,
}

#[derive(Debug, Serialize)]
pub struct AdminKeyOwner<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub object: &'static str,
    pub id: &'a str,
    pub name: &'a str,
    pub created_at: i64,
    pub role: &'static str,
}

/// `ErrorResponse`: `error` with all four fields present, `param`/`code` possibly null.
#[derive(Debug, Serialize)]
pub struct ErrorResponse<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

pub const OBJ_LIST: &str = "list";
pub const OBJ_PROJECT: &str = "organization.project";
pub const OBJ_KEY: &str = "organization.project.api_key";
pub const OBJ_KEY_DELETED: &str = "organization.project.api_key.deleted";
pub const OBJ_SA: &str = "organization.project.service_account";
pub const OBJ_SA_KEY: &str = "organization.project.service_account.api_key";
pub const OBJ_SA_DELETED: &str = "organization.project.service_account.deleted";
pub const OBJ_PROJECT_USER: &str = "organization.project.user";
pub const OBJ_ADMIN_KEY: &str = "organization.admin_api_key";
