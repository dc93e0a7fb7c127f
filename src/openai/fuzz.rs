//! Property tests of the response parsers (issue 7, item 3): arbitrary JSON, arbitrary bytes and
//! mutated valid bodies are fed to every parser the client uses. Each must return `Ok` or a
//! `DecodeError` with a path and a message, and never panic, whatever the input.

use proptest::prelude::*;
use serde_json::Value;

use crate::inventory::Expiry;
use crate::inventory::ProjectRef;
use crate::openai::types::{
    DecodeError, ListPage, WireAdminKey, WireDeleted, WireErrorEnvelope, WireKey, WireMintedKey,
    WireProject, WireProjectUser, WireServiceAccount, decode,
};

const CASES: u32 = 10_000;

/// One valid body per parser, as the API sends them.
const VALID: &[&str] = &[
    r#"{"object":"list","data":[{"object":"organization.project.api_key","id":"key_1","name":"ci","redacted_value":"sk-a...b","created_at":1735689600,"last_used_at":null,"owner_project_access":"active","owner":{"type":"user","user":{"id":"user_1","name":"Dana","email":"dana@example.com","role":"member","created_at":1700000000}}},{"object":"organization.project.api_key","id":"key_2","name":"bot","redacted_value":"sk-c...d","created_at":1735689601,"owner_project_access":"inactive","owner":{"type":"service_account","service_account":{"id":"svc_acct_1","name":"batch","role":"member","created_at":1730000000}}}],"first_id":"key_1","last_id":"key_2","has_more":true}"#,
    r#"{"object":"list","data":[{"id":"proj_1","object":"organization.project","name":"Payments","created_at":1711471533,"archived_at":null,"status":"active"}],"first_id":"proj_1","last_id":"proj_1","has_more":false}"#,
    r#"{"object":"organization.project.api_key","id":"key_1","name":"ci","redacted_value":"sk-a...b","created_at":1,"last_used_at":2,"owner_project_access":"active","owner":{"type":"user","user":{"id":"user_1","email":"a@b.c"}}}"#,
    r#"{"object":"organization.project.api_key.deleted","id":"key_1","deleted":true}"#,
    r#"{"object":"list","data":[{"object":"organization.admin_api_key","id":"key_a","name":"Admin","redacted_value":"sk-admin...x","created_at":1,"expires_at":null,"last_used_at":5}],"has_more":false}"#,
    r#"{"error":{"type":"invalid_request_error","message":"Incorrect API key provided","param":null,"code":"invalid_api_key"}}"#,
    r#"{"object":"list","data":[{"object":"organization.project.service_account","id":"svc_acct_1","name":"bot","role":"member","created_at":1}],"has_more":false}"#,
    r#"{"object":"list","data":[{"object":"organization.project.user","id":"user_1","name":null,"email":"a@b.c","role":"owner","added_at":1}],"has_more":false}"#,
    // November 2026: keys with `expires_at` (a number, null) and a minted service-account key.
    r#"{"object":"list","data":[{"object":"organization.project.api_key","id":"key_1","name":"ci","redacted_value":"sk-a...b","created_at":1735689600,"last_used_at":null,"owner_project_access":"active","expires_at":1790000000,"owner":{"type":"user","user":{"id":"user_1","email":"a@b.c"}}},{"object":"organization.project.api_key","id":"key_2","name":"bot","redacted_value":"sk-c...d","created_at":1735689601,"owner_project_access":"active","expires_at":null,"owner":{"type":"service_account","service_account":{"id":"svc_acct_1","name":"batch"}}}],"has_more":false}"#,
    r#"{"object":"organization.project.service_account.api_key","id":"key_m","name":"deploy","created_at":1,"value":"sk-svcacct-fuzzseed","expires_at":null}"#,
    r#"{"error":{"type":"invalid_request_error","message":"Invalid 'expires_in_seconds': too long","param":"expires_in_seconds","code":null}}"#,
];

fn check(r: Result<(), DecodeError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(!e.path.is_empty(), "decode error without a path");
        prop_assert!(!e.message.is_empty(), "decode error without a message");
        prop_assert!(
            e.message.len() <= 310,
            "unbounded message: {}",
            e.message.len()
        );
    }
    Ok(())
}

/// Feeds `bytes` to every parser, converting what decodes into domain types.
fn feed_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    let project = ProjectRef {
        organization: "acme".into(),
        id: "proj_1".into(),
        name: None,
        archived: false,
    };
    check(decode::<ListPage<WireKey>>(bytes).map(|p| {
        for k in p.data {
            let _ = k.into_domain(&project);
        }
    }))?;
    check(decode::<ListPage<WireProject>>(bytes).map(|p| {
        for x in p.data {
            let _ = x.into_domain("acme");
        }
    }))?;
    check(decode::<WireKey>(bytes).map(|k| {
        let _ = k.into_domain(&project);
    }))?;
    check(decode::<WireDeleted>(bytes).map(|_| ()))?;
    check(decode::<ListPage<WireAdminKey>>(bytes).map(|p| {
        for x in p.data {
            let _ = x.into_domain();
        }
    }))?;
    check(decode::<WireErrorEnvelope>(bytes).map(|_| ()))?;
    check(decode::<ListPage<WireServiceAccount>>(bytes).map(|p| {
        for x in p.data {
            let _ = x.into_domain();
        }
    }))?;
    check(decode::<ListPage<WireProjectUser>>(bytes).map(|p| {
        for x in p.data {
            let _ = x.into_domain();
        }
    }))?;
    check(decode::<WireMintedKey>(bytes).map(|k| {
        let _ = k.into_domain();
    }))?;
    Ok(())
}

/// Field names the parsers look for, so arbitrary objects reach deep into the structs.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "object", "data", "has_more", "first_id", "last_id", "id", "name", "redacted_value",
            "created_at", "last_used_at", "owner_project_access", "owner", "type", "user",
            "service_account", "email", "role", "deleted", "expires_at", "error", "message",
            "code", "param", "status", "archived_at", "added_at", "value", "scopes",
            "expires_in_seconds",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{0,8}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "user",
            "service_account",
            "active",
            "inactive",
            "archived",
            "list"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Replaces (or removes) the value at a pseudo-random position of `v`, steered by `choices`.
fn mutate_value(v: &mut Value, choices: &[usize], replacement: Value) {
    let Some((&c, rest)) = choices.split_first() else {
        *v = replacement;
        return;
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(c % map.len()).cloned().unwrap_or_default();
            if rest.is_empty() && c % 5 == 0 {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                mutate_value(child, rest, replacement);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            if rest.is_empty() && c % 5 == 0 {
                items.remove(c % n);
            } else {
                mutate_value(&mut items[c % n], rest, replacement);
            }
        }
        _ => *v = replacement,
    }
}

#[derive(Debug, Clone)]
enum ByteMutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        any::<usize>().prop_map(ByteMutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteMutation::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| ByteMutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| ByteMutation::Delete(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &ByteMutation) {
    let len = bytes.len().max(1);
    match m {
        ByteMutation::Truncate(i) => bytes.truncate(i % len),
        ByteMutation::Flip(i, b) => {
            if let Some(x) = bytes.get_mut(i % len) {
                *x = *b;
            }
        }
        ByteMutation::Insert(i, b) => {
            let at = (i % len).min(bytes.len());
            bytes.splice(at..at, b.iter().copied());
        }
        ByteMutation::Delete(i, n) => {
            let at = (i % len).min(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

proptest! {
    // Failing seeds are kept beside this file (`fuzz.regressions`) and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::with_cases(CASES)
    })]

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        feed_all(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        feed_all(&bytes)?;
    }

    #[test]
    fn mutated_bodies_never_panic(
        which in 0..VALID.len(),
        muts in prop::collection::vec(byte_mutation(), 1..4),
    ) {
        let mut bytes = VALID[which].as_bytes().to_vec();
        for m in &muts {
            apply(&mut bytes, m);
        }
        feed_all(&bytes)?;
        // `decode` checks UTF-8 once and parses text: it must accept exactly what serde_json
        // accepts from the bytes, invalid UTF-8 inside a string included.
        prop_assert_eq!(
            decode::<ListPage<WireKey>>(&bytes).is_ok(),
            serde_json::from_slice::<ListPage<WireKey>>(&bytes).is_ok()
        );
    }

    #[test]
    fn structurally_mutated_bodies_never_panic(
        which in 0..VALID.len(),
        path in prop::collection::vec(any::<usize>(), 0..6),
        replacement in json_value(),
    ) {
        let mut v: Value = serde_json::from_str(VALID[which]).unwrap();
        mutate_value(&mut v, &path, replacement);
        let bytes = serde_json::to_vec(&v).unwrap();
        feed_all(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        cases: 2_000,
        ..ProptestConfig::default()
    })]

    /// `expires_at` absent, null or any number: the key decodes, and into the matching case.
    #[test]
    fn expires_at_keeps_its_three_cases(field in prop::option::of(prop::option::of(any::<i64>()))) {
        let mut key: Value = serde_json::from_str(VALID[2]).unwrap();
        if let Some(v) = field {
            key["expires_at"] = serde_json::to_value(v).unwrap();
        }
        let project = ProjectRef {
            organization: "acme".into(),
            id: "proj_1".into(),
            name: None,
            archived: false,
        };
        let k = decode::<WireKey>(&serde_json::to_vec(&key).unwrap()).unwrap().into_domain(&project);
        let want = match field {
            None => Expiry::Unknown,
            Some(None) => Expiry::Never,
            Some(Some(at)) => Expiry::At(at),
        };
        prop_assert_eq!(k.expires_at, want);
    }

    /// An error's `param` of any JSON type never hides the envelope.
    #[test]
    fn error_param_of_any_type_is_tolerated(param in json_value()) {
        let mut env: Value = serde_json::from_str(VALID[5]).unwrap();
        env["error"]["param"] = param.clone();
        let e = decode::<WireErrorEnvelope>(&serde_json::to_vec(&env).unwrap()).unwrap();
        prop_assert_eq!(e.error.param, param.as_str().map(str::to_string));
    }
}

#[test]
fn valid_bodies_decode() {
    // The mutation tests only mean something if the seeds themselves are valid.
    assert!(decode::<ListPage<WireKey>>(VALID[0].as_bytes()).is_ok());
    assert!(decode::<ListPage<WireProject>>(VALID[1].as_bytes()).is_ok());
    assert!(decode::<WireKey>(VALID[2].as_bytes()).is_ok());
    assert!(decode::<WireDeleted>(VALID[3].as_bytes()).is_ok());
    assert!(decode::<ListPage<WireAdminKey>>(VALID[4].as_bytes()).is_ok());
    assert!(decode::<WireErrorEnvelope>(VALID[5].as_bytes()).is_ok());
    assert!(decode::<ListPage<WireServiceAccount>>(VALID[6].as_bytes()).is_ok());
    assert!(decode::<ListPage<WireProjectUser>>(VALID[7].as_bytes()).is_ok());
    let keys = decode::<ListPage<WireKey>>(VALID[8].as_bytes()).unwrap();
    assert_eq!(keys.data[0].expires_at, Some(Some(1_790_000_000)));
    assert_eq!(keys.data[1].expires_at, Some(None));
    assert!(decode::<WireMintedKey>(VALID[9].as_bytes()).is_ok());
    let err = decode::<WireErrorEnvelope>(VALID[10].as_bytes()).unwrap();
    assert_eq!(err.error.param.as_deref(), Some("expires_in_seconds"));
}
