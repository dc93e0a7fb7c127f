//! The small organisation "acme" that both end-to-end files (`daemon_bin`, `alerts_e2e`) run
//! against, with the admin key the simulator accepts for it. Ages are relative to the `now`
//! the test passes, so the daemon's wall clock and the fixture always agree.
//!
//! The admin key here is made up; it must never appear in any output the tests read.

use keysweep::sim::{
    SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject, SimServer,
    SimServiceAccount, SimUser,
};

use super::time::DAY;

/// The admin key the simulator accepts. It must never show up in the daemon's output.
pub const ADMIN_KEY: &str = "sk-admin-e2e-NEVER-PRINT-7f3a9c51d2";
/// The environment variable the configurations name for it.
pub const ADMIN_KEY_ENV: &str = "KEYSWEEP_E2E_ADMIN_KEY";

/// A key of the fixture: (project, id, name, redacted value).
pub type FixtureKey = (&'static str, &'static str, &'static str, &'static str);

pub const CI_DEPLOY: FixtureKey = (
    "proj_pay",
    "key_pay_ci_deploy",
    "ci-deploy",
    "sk-proj-****A1b2",
);
pub const OLD_BATCH: FixtureKey = (
    "proj_pay",
    "key_pay_old_batch",
    "old-batch",
    "sk-proj-****C3d4",
);
pub const FRESH: FixtureKey = ("proj_pay", "key_pay_fresh", "fresh-key", "sk-proj-****E5f6");
pub const SVC_BOT: FixtureKey = (
    "proj_pay",
    "key_pay_svc_bot",
    "svc-bot",
    "sk-svcacct-****G7h8",
);
pub const WEB: FixtureKey = (
    "proj_web",
    "key_web_frontend",
    "web-frontend",
    "sk-proj-****J9k0",
);

/// Every key of the fixture.
pub const ALL_KEYS: [FixtureKey; 5] = [CI_DEPLOY, OLD_BATCH, FRESH, SVC_BOT, WEB];

/// A small organisation, ages relative to `now`: under a 90-day `max_age` policy exactly
/// `ci-deploy` (alice, 400 days), `old-batch` (bob, 200 days, never used) and `svc-bot` (a
/// service account, 300 days) violate; `fresh-key` and `web-frontend` do not.
pub fn org(now: i64) -> SimOrg {
    let ages = Ages { now };
    SimOrg {
        format: keysweep::sim::FORMAT_VERSION,
        generated_at: now,
        users: vec![
            ages.user("user_alice", "Alice Martin", "alice@example.com"),
            ages.user("user_bob", "Bob Nguyen", "bob@example.com"),
            ages.user("user_olivia", "Olivia Larsen", "olivia@example.com"),
        ],
        admin_api_keys: vec![SimAdminKey {
            id: "key_admin_main".into(),
            name: Some("keysweep".into()),
            redacted_value: "sk-admin-****Zz99".into(),
            created_at: ages.day(30),
            expires_at: None,
            last_used_at: Some(ages.day(1)),
            owner_user_id: "user_olivia".into(),
        }],
        projects: vec![payments(&ages), website(&ages)],
    }
}

/// The simulator serving [`org`] with [`ADMIN_KEY`].
pub async fn start_sim(now: i64) -> SimServer {
    super::sim::start_sim(org(now), ADMIN_KEY).await
}

/// Builds the fixture's objects with timestamps `d` days before `now`.
struct Ages {
    now: i64,
}

impl Ages {
    fn day(&self, d: i64) -> i64 {
        self.now - d * DAY
    }

    fn user(&self, id: &str, name: &str, email: &str) -> SimUser {
        SimUser {
            id: id.into(),
            name: name.into(),
            email: email.into(),
            created_at: self.day(900),
        }
    }

    fn member(&self, id: &str) -> SimMember {
        SimMember {
            user_id: id.into(),
            role: "member".into(),
            added_at: self.day(800),
            access: SimAccess::Active,
        }
    }

    fn key(&self, k: FixtureKey, created: i64, used: Option<i64>, owner: SimOwnerRef) -> SimKey {
        SimKey {
            id: k.1.into(),
            name: k.2.into(),
            redacted_value: k.3.into(),
            created_at: self.day(created),
            last_used_at: used.map(|d| self.day(d)),
            expires_at: None,
            scopes: Vec::new(),
            owner,
        }
    }
}

fn user_ref(id: &str) -> SimOwnerRef {
    SimOwnerRef::User { id: id.into() }
}

fn payments(ages: &Ages) -> SimProject {
    SimProject {
        id: "proj_pay".into(),
        name: Some("payments".into()),
        created_at: ages.day(850),
        archived_at: None,
        external_key_id: None,
        members: vec![ages.member("user_alice"), ages.member("user_bob")],
        service_accounts: vec![SimServiceAccount {
            id: "svc_acct_bot".into(),
            name: "deploy-bot".into(),
            role: "member".into(),
            created_at: ages.day(700),
            access: SimAccess::Active,
        }],
        keys: vec![
            ages.key(CI_DEPLOY, 400, Some(1), user_ref("user_alice")),
            ages.key(OLD_BATCH, 200, None, user_ref("user_bob")),
            ages.key(FRESH, 10, Some(2), user_ref("user_alice")),
            ages.key(
                SVC_BOT,
                300,
                Some(3),
                SimOwnerRef::ServiceAccount {
                    id: "svc_acct_bot".into(),
                },
            ),
        ],
    }
}

fn website(ages: &Ages) -> SimProject {
    SimProject {
        id: "proj_web".into(),
        name: Some("website".into()),
        created_at: ages.day(600),
        archived_at: None,
        external_key_id: None,
        members: vec![ages.member("user_alice")],
        service_accounts: vec![],
        keys: vec![ages.key(WEB, 20, Some(1), user_ref("user_alice"))],
    }
}
