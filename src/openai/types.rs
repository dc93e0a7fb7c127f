//! Wire types of the Administration API, field by field as in OpenAI's spec (commit f85dbe2),
//! and their conversion into the crate's own `inventory` types.
//!
//! These structs are the only place that knows the JSON shapes; nothing outside `openai/` ever
//! sees them. They tolerate unknown fields (OpenAI adds fields often, so no
//! `deny_unknown_fields`), distinguish a missing `last_used_at` from `null`, and treat optional
//! owner sub-objects as optional. Parsing must never panic on hostile input: every body goes
//! through [`decode`], which turns any failure into a [`DecodeError`] naming the JSON path.
//! This module must never print a secret. Only one field carries one: a minted service-account
//! key's `value`, decoded straight into a `SecretString` (never `Debug`, never logged).

use secrecy::SecretString;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

use crate::inventory::{
    AdminKeyInfo, Expiry, Key, Owner, OwnerAccess, OwnerType, ProjectRef, ProjectUser,
    ServiceAccount,
};

/// A body that could not be decoded: malformed, truncated, or of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// JSON path of the offending value (`data[3].created_at`), `.` for the root.
    pub path: String,
    /// serde's description. It may quote the offending input, so the client scrubs and
    /// shortens it before it goes into an error (scrubbing must come first: a cut could leave
    /// half a secret behind).
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.path, self.message)
    }
}

/// Decodes `bytes` as `T`, reporting the path of the first offending value.
///
/// serde_json limits nesting depth (128), so arbitrarily deep input cannot overflow the stack.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    // Fast path: path tracking wraps every value of every page (a third of the client's CPU
    // on a 200k-key sweep) and is only needed to describe a failure. serde_json accepts exactly
    // the same inputs either way (trailing data included), so a body that fails here fails the
    // same way below, which then names the path.
    // The body's UTF-8 is checked once, a word at a time, rather than string by string as
    // `from_slice` does (a tenth of a page's decoding); a body that is not UTF-8 takes the
    // slow path below, which refuses it as `from_slice` does.
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(value) = serde_json::from_str(text)
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError {
        path: match e.path().to_string() {
            // A syntax error before the first value has no path: call it the root.
            p if p.is_empty() => ".".to_string(),
            p => p,
        },
        message: e.inner().to_string(),
    })?;
    // Trailing garbage after a complete value means the body is not what the API sent.
    de.end().map_err(|e| DecodeError {
        path: ".".to_string(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deserializes a field that may be missing (outer `None`, via `#[serde(default)]`) or `null`
/// (`Some(None)`).
fn missing_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The list envelope shared by every list endpoint. Only `object`, `data` and `has_more` are
/// required by the spec; `first_id`/`last_id` are `string | null` and may be absent.
#[derive(Debug, Deserialize)]
pub(crate) struct ListPage<T> {
    #[serde(default)]
    #[allow(dead_code)]
    pub object: Option<String>,
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub first_id: Option<String>,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// Objects that have an id, used by the pager for cursors and duplicate detection.
pub(crate) trait HasId {
    fn id(&self) -> &str;

    /// Other ids the object carries that a URL may later be built from (a key's owner).
    fn other_ids(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// `Project` (`organization.project`).
#[derive(Debug, Deserialize)]
pub(crate) struct WireProject {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[allow(dead_code)]
    pub created_at: i64,
    /// Free-form in the current spec (`active` or `archived`).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub archived_at: Option<i64>,
}

impl HasId for WireProject {
    fn id(&self) -> &str {
        &self.id
    }
}

impl WireProject {
    pub fn into_domain(self, organization: &str) -> ProjectRef {
        let archived = self.status.as_deref() == Some("archived") || self.archived_at.is_some();
        ProjectRef {
            organization: organization.to_string(),
            id: self.id,
            name: self.name,
            archived,
        }
    }
}

/// `ProjectApiKey` (`organization.project.api_key`).
#[derive(Debug, Deserialize)]
pub(crate) struct WireKey {
    pub id: String,
    pub name: String,
    pub redacted_value: String,
    pub created_at: i64,
    /// Outer `None`: absent (an older API, or a malformed answer: the spec requires it), which
    /// is unknown; `Some(None)`: `null`, no use recorded.
    #[serde(default, deserialize_with = "missing_or_null")]
    pub last_used_at: Option<Option<i64>>,
    /// Required in the current spec, absent from older answers and mocks. Read into an enum,
    /// not a `String`: one allocation less per listed key.
    #[serde(default)]
    pub owner_project_access: Option<WireOwnerAccess>,
    /// Required in the spec, but none of its sub-fields is; tolerate its absence too.
    #[serde(default)]
    pub owner: Option<WireOwner>,
    /// November 2026. Outer `None`: absent (older answers: unknown); `Some(None)`: `null`
    /// (never expires). The two must stay apart: only a known "never" may lead to a write.
    #[serde(default, deserialize_with = "missing_or_null")]
    pub expires_at: Option<Option<i64>>,
}

impl HasId for WireKey {
    fn id(&self) -> &str {
        &self.id
    }

    fn other_ids(&self) -> Vec<&str> {
        let Some(owner) = &self.owner else {
            return Vec::new();
        };
        let user = owner.user.as_ref().and_then(|u| u.id.as_deref());
        let account = owner.service_account.as_ref().and_then(|s| s.id.as_deref());
        user.into_iter().chain(account).collect()
    }
}

/// `owner_project_access`: a string, `active` or `inactive` in the current spec; any other
/// string is kept as not known (never as active).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireOwnerAccess {
    Active,
    Inactive,
    #[serde(other)]
    Other,
}

/// `owner.type`: a string, `user` or `service_account`; any other string is an owner of a
/// kind keysweep does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireOwnerKind {
    User,
    ServiceAccount,
    #[serde(other)]
    Other,
}

/// A string field the client checks is a string but does not keep (an owner's `role`):
/// decoded without an allocation.
#[derive(Debug)]
pub(crate) struct UnkeptString;

impl<'de> Deserialize<'de> for UnkeptString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Check;
        impl serde::de::Visitor<'_> for Check {
            type Value = UnkeptString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<UnkeptString, E> {
                Ok(UnkeptString)
            }
        }
        d.deserialize_str(Check)
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireOwner {
    #[serde(default, rename = "type")]
    pub kind: Option<WireOwnerKind>,
    #[serde(default)]
    pub user: Option<WireOwnerUser>,
    #[serde(default)]
    pub service_account: Option<WireOwnerServiceAccount>,
}

/// `ProjectApiKeyOwnerUser`. The spec requires all five fields, but a missing e-mail is a case
/// the collector handles (it fills it from the project's users), so every field is optional here
/// rather than failing the whole page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireOwnerUser {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub created_at: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    pub role: Option<UnkeptString>,
}

/// `ProjectApiKeyOwnerServiceAccount`; see [`WireOwnerUser`] for why fields are optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireOwnerServiceAccount {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub created_at: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    pub role: Option<UnkeptString>,
}

impl WireOwner {
    /// Decides on `owner.type` and reads the matching sub-object (mocks may send both with a
    /// `type` that does not match). Without a type, a lone sub-object decides.
    fn into_domain(self) -> Owner {
        let kind = match self.kind {
            Some(WireOwnerKind::User) => OwnerType::User,
            Some(WireOwnerKind::ServiceAccount) => OwnerType::ServiceAccount,
            Some(WireOwnerKind::Other) => OwnerType::Unknown,
            None => match (&self.user, &self.service_account) {
                (Some(_), None) => OwnerType::User,
                (None, Some(_)) => OwnerType::ServiceAccount,
                _ => OwnerType::Unknown,
            },
        };
        match kind {
            OwnerType::User => {
                let u = self.user.unwrap_or_default();
                Owner {
                    kind,
                    id: u.id,
                    name: u.name,
                    email: u.email.filter(|e| !e.is_empty()),
                }
            }
            OwnerType::ServiceAccount => {
                let s = self.service_account.unwrap_or_default();
                Owner {
                    kind,
                    id: s.id,
                    name: s.name,
                    email: None,
                }
            }
            OwnerType::Unknown => Owner {
                kind,
                id: None,
                name: None,
                email: None,
            },
        }
    }
}

impl WireKey {
    pub fn into_domain(self, project: &ProjectRef) -> Key {
        let owner_access = match self.owner_project_access {
            Some(WireOwnerAccess::Active) => OwnerAccess::Active,
            Some(WireOwnerAccess::Inactive) => OwnerAccess::Inactive,
            Some(WireOwnerAccess::Other) | None => OwnerAccess::Unknown,
        };
        Key {
            organization: project.organization.clone(),
            project_id: project.id.clone(),
            project_name: project.name.clone(),
            id: self.id,
            name: self.name,
            redacted_value: self.redacted_value,
            created_at: self.created_at,
            last_used_unknown: self.last_used_at.is_none(),
            last_used_at: self.last_used_at.flatten(),
            owner: self.owner.unwrap_or_default().into_domain(),
            owner_access,
            expires_at: Expiry::from_wire(self.expires_at),
        }
    }
}

/// `UpdateProjectApiKeyBody` (November 2026): at least one field, neither ever null (the API
/// refuses a null expiry: an expiry can be moved, never removed).
#[derive(Debug, Serialize)]
pub(crate) struct WireKeyUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<&'a [String]>,
}

/// The body of `POST …/service_accounts/{id}/api_keys`: every field optional.
#[derive(Debug, Serialize)]
pub(crate) struct WireMintRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
}

/// `ServiceAccountApiKeyBody`: a minted key, with its plaintext `value` (returned once). No
/// `Debug`: the value is a secret; it goes straight into a `SecretString`.
#[derive(Deserialize)]
pub(crate) struct WireMintedKey {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub created_at: i64,
    pub value: SecretString,
    #[serde(default, deserialize_with = "missing_or_null")]
    pub expires_at: Option<Option<i64>>,
}

impl WireMintedKey {
    pub fn into_domain(self) -> MintedKey {
        MintedKey {
            id: self.id,
            name: self.name.unwrap_or_default(),
            created_at: self.created_at,
            expires_at: Expiry::from_wire(self.expires_at),
            value: self.value,
        }
    }
}

/// A freshly minted service-account key. `value` is the key's secret, shown by the API this
/// once: keysweep hands it to the caller and never logs, prints or stores it (`Debug` redacts it).
pub struct MintedKey {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Expiry,
    pub value: SecretString,
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// `ProjectApiKeyDeleteResponse` and `ProjectServiceAccountDeleteResponse`: all three fields
/// are required.
#[derive(Debug, Deserialize)]
pub(crate) struct WireDeleted {
    #[allow(dead_code)]
    pub object: String,
    pub id: String,
    pub deleted: bool,
}

/// `AdminApiKey` (`organization.admin_api_key`).
#[derive(Debug, Deserialize)]
pub(crate) struct WireAdminKey {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub redacted_value: String,
    #[allow(dead_code)]
    pub created_at: i64,
    /// Required but nullable in the spec; tolerate absence as "no expiry known".
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "missing_or_null")]
    #[allow(dead_code)]
    pub last_used_at: Option<Option<i64>>,
}

impl HasId for WireAdminKey {
    fn id(&self) -> &str {
        &self.id
    }
}

impl WireAdminKey {
    pub fn into_domain(self) -> AdminKeyInfo {
        AdminKeyInfo {
            id: self.id,
            name: self.name,
            redacted_value: self.redacted_value,
            expires_at: self.expires_at,
        }
    }
}

/// `ProjectServiceAccount`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireServiceAccount {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
}

impl HasId for WireServiceAccount {
    fn id(&self) -> &str {
        &self.id
    }
}

impl WireServiceAccount {
    pub fn into_domain(self) -> ServiceAccount {
        ServiceAccount {
            id: self.id,
            name: self.name,
            role: self.role,
            created_at: self.created_at,
        }
    }
}

/// `ProjectUser`: `name` and `email` are optional and nullable.
#[derive(Debug, Deserialize)]
pub(crate) struct WireProjectUser {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub role: String,
    #[allow(dead_code)]
    pub added_at: i64,
}

impl HasId for WireProjectUser {
    fn id(&self) -> &str {
        &self.id
    }
}

impl WireProjectUser {
    pub fn into_domain(self) -> ProjectUser {
        ProjectUser {
            id: self.id,
            name: self.name,
            email: self.email.filter(|e| !e.is_empty()),
            role: self.role,
        }
    }
}

/// `ErrorResponse`. The spec requires all four inner fields, but an error body is read only to
/// enrich a message, so every field is optional: a half-formed error body must not hide the
/// HTTP status behind a decode error.
#[derive(Debug, Deserialize)]
pub(crate) struct WireErrorEnvelope {
    pub error: WireError,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireError {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    /// The request field the error is about (`expires_in_seconds` for an expiry refused by
    /// the organisation's policy). A non-string is ignored rather than failing the envelope.
    #[serde(default, deserialize_with = "string_or_none")]
    pub param: Option<String>,
}

/// A string, or `None` for `null` or any other JSON value.
fn string_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> ProjectRef {
        ProjectRef {
            organization: "acme".into(),
            id: "proj_1".into(),
            name: Some("Payments".into()),
            archived: false,
        }
    }

    const KEY: &str = r#"{"object":"organization.project.api_key","id":"key_7f3a","name":"ci",
        "redacted_value":"sk-pro...Qx9","created_at":1735689600,"last_used_at":null,
        "owner_project_access":"active","residency":"EU",
        "owner":{"type":"user","user":{"id":"user_1","name":"Dana","email":"dana@example.com",
        "role":"member","created_at":1700000000}}}"#;

    #[test]
    fn key_missing_vs_null_last_used() {
        let k: WireKey = decode(KEY.as_bytes()).unwrap();
        assert_eq!(k.last_used_at, Some(None));
        let missing = KEY.replace(r#""last_used_at":null,"#, "");
        let k: WireKey = decode(missing.as_bytes()).unwrap();
        assert_eq!(k.last_used_at, None);
        let used = KEY.replace(r#""last_used_at":null"#, r#""last_used_at":1736000000"#);
        let k: WireKey = decode(used.as_bytes()).unwrap();
        assert_eq!(k.last_used_at, Some(Some(1_736_000_000)));
        assert_eq!(k.into_domain(&project()).last_used_at, Some(1_736_000_000));
    }

    #[test]
    fn key_expiry_absent_null_number_stay_apart() {
        // KEY has no `expires_at`: an older answer, so the expiry is unknown.
        let key = decode::<WireKey>(KEY.as_bytes())
            .unwrap()
            .into_domain(&project());
        assert_eq!(key.expires_at, Expiry::Unknown);
        let json = serde_json::to_value(&key).unwrap();
        assert!(json.get("expires_at").is_none(), "{json}");

        let null = KEY.replace(
            r#""created_at":1735689600,"#,
            r#""created_at":1735689600,"expires_at":null,"#,
        );
        let key = decode::<WireKey>(null.as_bytes())
            .unwrap()
            .into_domain(&project());
        assert_eq!(key.expires_at, Expiry::Never);
        assert!(!key.expires_at.is_expired(i64::MAX));
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(json.get("expires_at"), Some(&serde_json::Value::Null));

        let at = KEY.replace(
            r#""created_at":1735689600,"#,
            r#""created_at":1735689600,"expires_at":1790000000,"#,
        );
        let key = decode::<WireKey>(at.as_bytes())
            .unwrap()
            .into_domain(&project());
        assert_eq!(key.expires_at, Expiry::At(1_790_000_000));
        assert!(key.expires_at.is_expired(1_790_000_000));
        assert!(!key.expires_at.is_expired(1_789_999_999));
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(
            json.get("expires_at"),
            Some(&serde_json::json!(1_790_000_000))
        );

        let wrong = KEY.replace(
            r#""created_at":1735689600,"#,
            r#""created_at":1735689600,"expires_at":"soon","#,
        );
        assert_eq!(
            decode::<WireKey>(wrong.as_bytes()).unwrap_err().path,
            "expires_at"
        );
    }

    #[test]
    fn key_converts_user_owner() {
        let k: WireKey = decode(KEY.as_bytes()).unwrap();
        let key = k.into_domain(&project());
        assert_eq!(key.owner.kind, OwnerType::User);
        assert_eq!(key.owner.email.as_deref(), Some("dana@example.com"));
        assert_eq!(key.owner_access, OwnerAccess::Active);
        assert_eq!(key.project_name.as_deref(), Some("Payments"));
        assert_eq!(key.last_used_at, None);
    }

    #[test]
    fn owner_type_decides_even_when_both_sub_objects_present() {
        let body = r#"{"id":"key_1","name":"n","redacted_value":"sk-...","created_at":1,
            "owner":{"type":"service_account",
              "user":{"id":"user_1","email":"x@example.com"},
              "service_account":{"id":"svc_acct_1","name":"bot","role":"member","created_at":1}}}"#;
        let k: WireKey = decode(body.as_bytes()).unwrap();
        let key = k.into_domain(&project());
        assert_eq!(key.owner.kind, OwnerType::ServiceAccount);
        assert_eq!(key.owner.id.as_deref(), Some("svc_acct_1"));
        assert_eq!(key.owner.email, None);
        assert_eq!(key.owner_access, OwnerAccess::Unknown);
    }

    /// The enums and the unkept `role` keep the strings' strictness: an unknown word is an
    /// unknown owner or access (never active), a value that is not a string fails the page.
    #[test]
    fn unknown_words_are_unknown_and_non_strings_fail() {
        let body = r#"{"id":"key_1","name":"n","redacted_value":"sk-...","created_at":1,
            "owner_project_access":"suspended",
            "owner":{"type":"robot","user":{"id":"user_1","role":"owner"}}}"#;
        let key = decode::<WireKey>(body.as_bytes())
            .unwrap()
            .into_domain(&project());
        assert_eq!(key.owner.kind, OwnerType::Unknown);
        assert_eq!(key.owner.id, None);
        assert_eq!(key.owner_access, OwnerAccess::Unknown);
        for (bad, path) in [
            (r#""owner_project_access":1"#, "owner_project_access"),
            (r#""owner":{"type":7}"#, "owner.type"),
            (
                r#""owner":{"type":"user","user":{"role":{}}}"#,
                "owner.user.role",
            ),
            (
                r#""owner":{"type":"service_account","service_account":{"role":false}}"#,
                "owner.service_account.role",
            ),
        ] {
            let body = format!(
                r#"{{"id":"key_1","name":"n","redacted_value":"sk","created_at":1,{bad}}}"#
            );
            let err = decode::<WireKey>(body.as_bytes()).unwrap_err();
            assert_eq!(err.path, path, "{bad}");
        }
    }

    #[test]
    fn owner_missing_is_unknown() {
        let body = r#"{"id":"key_1","name":"n","redacted_value":"sk-...","created_at":1}"#;
        let key = decode::<WireKey>(body.as_bytes())
            .unwrap()
            .into_domain(&project());
        assert_eq!(key.owner.kind, OwnerType::Unknown);
    }

    #[test]
    fn wrong_type_names_the_path() {
        let body = r#"{"object":"list","has_more":false,"data":[{"id":"key_1","name":"n",
            "redacted_value":"sk","created_at":"yesterday"}]}"#;
        let err = decode::<ListPage<WireKey>>(body.as_bytes()).unwrap_err();
        assert_eq!(err.path, "data[0].created_at");
        assert!(err.message.contains("invalid type"), "{err}");
    }

    #[test]
    fn truncated_and_trailing_garbage_are_errors() {
        let body = r#"{"object":"list","has_more":false,"data":[]}"#;
        assert!(decode::<ListPage<WireKey>>(body.as_bytes()).is_ok());
        assert!(decode::<ListPage<WireKey>>(&body.as_bytes()[..20]).is_err());
        let trailing = format!("{body} x");
        assert!(decode::<ListPage<WireKey>>(trailing.as_bytes()).is_err());
    }

    #[test]
    fn project_archived_from_status_or_timestamp() {
        let p: WireProject =
            decode(br#"{"id":"proj_1","object":"organization.project","created_at":1,"status":"archived","archived_at":null}"#)
                .unwrap();
        assert!(p.into_domain("acme").archived);
        let p: WireProject =
            decode(br#"{"id":"proj_2","created_at":1,"name":null,"archived_at":5}"#).unwrap();
        let p = p.into_domain("acme");
        assert!(p.archived);
        assert_eq!(p.name, None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
