//! Request bodies and query strings, validated the way OpenAI validates them: a wrong type, a
//! null where none is allowed or an unknown field is a 400 naming the parameter.
//!
//! Bodies of the two November 2026 writes (read from openai-python 3.51.0 and
//! `openapi-admin.yaml`):
//! * `UpdateProjectApiKeyBody` `{expires_in_seconds?: int, scopes?: [string]}`: at least one
//!   field, neither accepts null, the expiry is a positive number of seconds;
//! * `CreateProjectServiceAccountApiKeyBody` `{name?: string, scopes?: [string],
//!   expires_in_seconds?: int | null}`: every field optional, a null expiry means "never".
//!
//! Pure functions: nothing here knows the organisation or the clock.

use serde_json::{Map, Value};

use super::respond::{BadParam, bad_param};
use super::state::{AccessFilter, KeyUpdate, MintRequest};

/// The query of a list request.
pub(crate) struct ListParams {
    pub limit: usize,
    pub after: Option<String>,
    pub include_archived: bool,
    pub access: AccessFilter,
    pub desc: bool,
}

/// Parses a list query; unknown parameters are ignored, as OpenAI does.
pub(crate) fn parse_list(raw: Option<&str>) -> Result<ListParams, BadParam> {
    let mut p = ListParams {
        limit: 20,
        after: None,
        include_archived: false,
        // Omitted: OpenAI's membership rules hide keys whose owner lost access.
        access: AccessFilter::Active,
        desc: false,
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => p.limit = parse_limit(&v)?,
            "after" => p.after = Some(v.into_owned()).filter(|a| !a.is_empty()),
            "include_archived" => {
                p.include_archived = one_of(
                    "include_archived",
                    "a boolean",
                    &v,
                    &[("true", true), ("false", false)],
                )?;
            }
            "owner_project_access" => {
                p.access = one_of(
                    "owner_project_access",
                    "one of active, inactive, any",
                    &v,
                    &[
                        ("active", AccessFilter::Active),
                        ("inactive", AccessFilter::Inactive),
                        ("any", AccessFilter::Any),
                    ],
                )?;
            }
            "order" => {
                p.desc = one_of(
                    "order",
                    "asc or desc",
                    &v,
                    &[("asc", false), ("desc", true)],
                )?;
            }
            _ => {}
        }
    }
    Ok(p)
}

fn parse_limit(v: &str) -> Result<usize, BadParam> {
    let n: i64 = v.parse().map_err(|_| {
        bad_param(
            "limit",
            format!("Invalid 'limit': expected an integer, got '{v}'."),
        )
    })?;
    if !(1..=100).contains(&n) {
        return Err(bad_param(
            "limit",
            format!("Invalid 'limit': must be between 1 and 100, got {n}."),
        ));
    }
    Ok(usize::try_from(n).unwrap_or(20))
}

/// A query value that must be one of a few spellings.
fn one_of<T: Copy>(
    param: &'static str,
    expected: &str,
    v: &str,
    choices: &[(&str, T)],
) -> Result<T, BadParam> {
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            bad_param(
                param,
                format!("Invalid '{param}': expected {expected}, got '{v}'."),
            )
        })
}

/// The body as a JSON object; an empty body counts as `{}` when `empty_ok`.
fn object(raw: &[u8], empty_ok: bool) -> Result<Map<String, Value>, BadParam> {
    if raw.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_param(
            "body",
            "We could not parse the JSON body of your request. The body must be a JSON object."
                .to_string(),
        )),
    }
}

/// Refuses fields the operation does not know.
fn only(map: &Map<String, Value>, known: &[&str]) -> Result<(), BadParam> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(bad_param(
            "body",
            format!("Unrecognized request argument supplied: {k}"),
        )),
        None => Ok(()),
    }
}

fn null_refused(param: &'static str) -> BadParam {
    bad_param(
        param,
        format!("Invalid '{param}': null is not allowed; omit the field to leave it unchanged."),
    )
}

/// A positive integer number of seconds (`null` is the caller's business).
fn seconds(param: &'static str, v: &Value) -> Result<i64, BadParam> {
    match v.as_i64() {
        Some(n) if n > 0 => Ok(n),
        Some(n) => Err(bad_param(
            param,
            format!("Invalid '{param}': must be a positive integer, got {n}."),
        )),
        None => Err(bad_param(
            param,
            format!("Invalid '{param}': expected an integer, got {v}."),
        )),
    }
}

fn scopes(v: &Value) -> Result<Vec<String>, BadParam> {
    let invalid = || {
        bad_param(
            "scopes",
            "Invalid 'scopes': expected an array of non-empty strings.".to_string(),
        )
    };
    let items = v.as_array().ok_or_else(invalid)?;
    items
        .iter()
        .map(|s| {
            s.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(invalid)
        })
        .collect()
}

/// `UpdateProjectApiKeyBody`.
pub(crate) fn key_update(raw: &[u8]) -> Result<KeyUpdate, BadParam> {
    let map = object(raw, false)?;
    only(&map, &["expires_in_seconds", "scopes"])?;
    let expires_in_seconds = match map.get("expires_in_seconds") {
        None => None,
        Some(Value::Null) => return Err(null_refused("expires_in_seconds")),
        Some(v) => Some(seconds("expires_in_seconds", v)?),
    };
    let scopes = match map.get("scopes") {
        None => None,
        Some(Value::Null) => return Err(null_refused("scopes")),
        Some(v) => Some(scopes(v)?),
    };
    if expires_in_seconds.is_none() && scopes.is_none() {
        return Err(bad_param(
            "body",
            "Provide at least one of 'expires_in_seconds' or 'scopes'.".to_string(),
        ));
    }
    Ok(KeyUpdate {
        expires_in_seconds,
        scopes,
    })
}

/// `CreateProjectServiceAccountApiKeyBody`.
pub(crate) fn mint_request(raw: &[u8]) -> Result<MintRequest, BadParam> {
    let map = object(raw, true)?;
    only(&map, &["name", "scopes", "expires_in_seconds"])?;
    let name = match map.get("name") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(bad_param(
                "name",
                "Invalid 'name': expected a string.".to_string(),
            ));
        }
    };
    let scopes = match map.get("scopes") {
        None => Vec::new(),
        Some(Value::Null) => return Err(null_refused("scopes")),
        Some(v) => scopes(v)?,
    };
    let expires_in_seconds = match map.get("expires_in_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(seconds("expires_in_seconds", v)?),
    };
    Ok(MintRequest {
        name,
        scopes,
        expires_in_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_bodies() {
        let ok = key_update(br#"{"expires_in_seconds": 60}"#).unwrap();
        assert_eq!(ok.expires_in_seconds, Some(60));
        assert_eq!(ok.scopes, None);
        let ok = key_update(br#"{"scopes": []}"#).unwrap();
        assert_eq!(ok.scopes, Some(Vec::new()));
        for bad in [
            &b"{}"[..],
            b"",
            b"[]",
            b"not json",
            br#"{"expires_in_seconds": null}"#,
            br#"{"scopes": null}"#,
            br#"{"expires_in_seconds": 0}"#,
            br#"{"expires_in_seconds": -5}"#,
            br#"{"expires_in_seconds": 1.5}"#,
            br#"{"expires_in_seconds": "60"}"#,
            br#"{"scopes": "api.all.read"}"#,
            br#"{"scopes": [1]}"#,
            br#"{"scopes": [""]}"#,
            br#"{"name": "x"}"#,
        ] {
            assert!(key_update(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn mint_bodies() {
        assert_eq!(mint_request(b"").unwrap(), MintRequest::default());
        assert_eq!(mint_request(b"{}").unwrap(), MintRequest::default());
        let m = mint_request(br#"{"name": "n", "scopes": ["a.b"], "expires_in_seconds": null}"#)
            .unwrap();
        assert_eq!(m.name.as_deref(), Some("n"));
        assert_eq!(m.expires_in_seconds, None);
        for bad in [
            &br#"{"name": null}"#[..],
            br#"{"expires_in_seconds": 0}"#,
            br#"{"scopes": null}"#,
            br#"{"owner": "x"}"#,
        ] {
            assert!(mint_request(bad).is_err());
        }
    }
}
