//! Tests of issue 12's configuration keys: `action = "expire"`, `max_lifetime`,
//! `[safety] service_account_keys` and `restore_expiry`, and the removed
//! `service_accounts = "delete-service-account"`. Only loads text; never touches a secret.

use std::time::Duration;

use super::{Action, ServiceAccountKeys, load_from_str};

const BASE: &str = "[[organizations]]\nname = \"a\"\n";

fn load(extra: &str) -> Result<super::Config, String> {
    load_from_str(
        &format!("{BASE}{extra}"),
        &[("OPENAI_ADMIN_KEY".into(), "sk-admin-test".into())],
    )
    .map_err(|e| format!("{e:#}"))
}

#[test]
fn expire_max_lifetime_and_the_safety_keys_load_with_their_defaults() {
    let c = load("[[policies]]\nname = \"life\"\nmax_lifetime = \"90d\"\naction = \"expire\"\n")
        .unwrap();
    assert_eq!(c.policies[0].action, Action::Expire);
    assert_eq!(
        c.policies[0].max_lifetime,
        Some(Duration::from_secs(90 * 86_400))
    );
    assert_eq!(
        c.safety.service_account_keys,
        ServiceAccountKeys::NotifyOnly
    );
    assert_eq!(c.safety.restore_expiry, Duration::from_secs(365 * 86_400));
    let c =
        load("[safety]\nservice_account_keys = \"enforce\"\nrestore_expiry = \"60d\"\n").unwrap();
    assert_eq!(c.safety.service_account_keys, ServiceAccountKeys::Enforce);
    assert_eq!(c.safety.restore_expiry, Duration::from_secs(60 * 86_400));
}

#[test]
fn the_old_spelling_still_reads_and_the_removed_value_says_what_replaced_it() {
    let c = load("[safety]\nservice_accounts = \"notify-only\"\n").unwrap();
    assert_eq!(
        c.safety.service_account_keys,
        ServiceAccountKeys::NotifyOnly
    );
    let e = load("[safety]\nservice_accounts = \"delete-service-account\"\n").unwrap_err();
    assert!(e.contains("safety.service_accounts"), "{e}");
    assert!(e.contains("service_account_keys"), "{e}");
    assert!(e.contains("removed"), "{e}");
    let e =
        load("[safety]\nservice_accounts = \"notify-only\"\nservice_account_keys = \"enforce\"\n")
            .unwrap_err();
    assert!(e.contains("old spelling"), "{e}");
}

#[test]
fn a_restore_expiry_under_30_days_and_a_zero_max_lifetime_are_refused() {
    let e = load("[safety]\nrestore_expiry = \"7d\"\n").unwrap_err();
    assert!(e.contains("safety.restore_expiry"), "{e}");
    let e = load("[[policies]]\nname = \"l\"\nmax_lifetime = \"0s\"\n").unwrap_err();
    assert!(e.contains("policies[0].max_lifetime"), "{e}");
}
