//! Table tests of `policy::plan::verdict`: what keysweep will do to a key under each mode,
//! per-key rule and rail, and the configuration key each withheld verdict names.

use crate::config::Action;
use crate::config::{Mode, ServiceAccountKeys};
use crate::inventory::OwnerType;
use crate::policy::finding::Finding;
use crate::policy::lifecycle::{Observation, advance};
use crate::policy::observation::Violation;
use crate::policy::plan::Withheld;
use crate::policy::plan::verdict;
use crate::policy::verdict::{NotifyOnlyBy, Rules, Verdict};

fn finding(action: Action, owner: OwnerType) -> Finding {
    let mut key = super::key("key_1");
    key.owner.kind = owner;
    let v = Violation {
        policy: "p".into(),
        action,
        reason: "old".into(),
        violating_since: 10,
        warn_before: 10,
        final_notice: 5,
    };
    let t = advance(
        None,
        100,
        Observation::Violating {
            key: &key,
            violation: &v,
        },
        0,
        None,
        false,
    );
    t.next.unwrap_or_else(|| unreachable!())
}

fn rules(mode: Mode, sa: ServiceAccountKeys, kill_switch: bool) -> Rules {
    Rules {
        mode,
        service_account_keys: sa,
        kill_switch,
    }
}

fn of(action: Action, owner: OwnerType, r: Rules, withheld: Option<Withheld>) -> Verdict {
    verdict(&finding(action, owner), &r, withheld)
}

#[test]
fn one_verdict_per_mode_rule_and_rail() {
    use Action::{Expire, Notify, Revoke};
    use OwnerType::{ServiceAccount as Sa, User};
    use ServiceAccountKeys::{Enforce as SaOn, NotifyOnly as SaOff};
    let enforce = rules(Mode::Enforce, SaOff, false);
    let dry = rules(Mode::DryRun, SaOff, false);
    let sa_only = Verdict::NotifyOnly {
        by: NotifyOnlyBy::ServiceAccountKeys,
    };
    assert_eq!(of(Revoke, User, enforce, None), Verdict::Revoke);
    assert_eq!(of(Expire, User, enforce, None), Verdict::Expire);
    assert_eq!(of(Revoke, User, dry, None), Verdict::WouldRevoke);
    assert_eq!(of(Expire, User, dry, None), Verdict::WouldExpire);
    assert_eq!(of(Revoke, Sa, enforce, None), sa_only);
    assert_eq!(of(Expire, Sa, dry, None), sa_only);
    let sa_on = rules(Mode::Enforce, SaOn, false);
    assert_eq!(of(Revoke, Sa, sa_on, None), Verdict::Revoke);
    assert_eq!(
        of(Notify, User, enforce, None),
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::PolicyAction
        }
    );
    let killed = rules(Mode::Enforce, SaOff, true);
    let kill = Verdict::Postponed {
        by: Withheld::KillSwitch,
    };
    assert_eq!(of(Revoke, User, killed, None), kill);
    let cap = Some(Withheld::CapPerDay);
    let capped = Verdict::Postponed {
        by: Withheld::CapPerDay,
    };
    assert_eq!(of(Revoke, User, enforce, cap), capped);
    // The service-account rule wins over a cap: the key is never written to at all.
    assert_eq!(of(Revoke, Sa, enforce, cap), sa_only);
}

#[test]
fn a_withheld_verdict_names_the_configuration_key() {
    let v = Verdict::Postponed {
        by: Withheld::CapPerRun,
    };
    assert_eq!(v.withheld_by(), Some("safety.max_revocations_per_run"));
    let sa = Verdict::NotifyOnly {
        by: NotifyOnlyBy::ServiceAccountKeys,
    };
    assert_eq!(sa.withheld_by(), Some("safety.service_account_keys"));
    assert_eq!(Verdict::Revoke.withheld_by(), None);
}

#[test]
fn a_rotate_policy_turns_the_expiry_verdicts_of_service_account_keys_into_rotations() {
    use crate::policy::plan::verdict_rotating;
    use ServiceAccountKeys::{Enforce as SaOn, NotifyOnly as SaOff};
    let sa = finding(Action::Expire, OwnerType::ServiceAccount);
    let user = finding(Action::Expire, OwnerType::User);
    let on = |mode| rules(mode, SaOn, false);
    let rot = |f: &Finding, r: Rules, o| verdict_rotating(f, &r, None, o);
    let day = Some(86_400);
    assert_eq!(
        rot(&sa, on(Mode::Enforce), day),
        Verdict::Rotate { overlap: 86_400 }
    );
    assert_eq!(
        rot(&sa, on(Mode::DryRun), day),
        Verdict::WouldRotate {
            overlap: 86_400,
            by: Withheld::DryRun
        }
    );
    assert_eq!(
        rot(&sa, rules(Mode::Enforce, SaOff, false), day),
        Verdict::WouldRotate {
            overlap: 86_400,
            by: Withheld::ServiceAccountNotifyOnly
        }
    );
    // Not a rotate policy, a user key (cannot be minted: expire), a rail: unchanged.
    assert_eq!(rot(&sa, on(Mode::Enforce), None), Verdict::Expire);
    assert_eq!(rot(&user, on(Mode::Enforce), day), Verdict::Expire);
    assert_eq!(
        verdict_rotating(&sa, &on(Mode::Enforce), Some(Withheld::CapPerRun), day),
        Verdict::Postponed {
            by: Withheld::CapPerRun
        }
    );
}
