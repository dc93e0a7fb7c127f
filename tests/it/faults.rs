//! The fault matrix (issue 7, item 2): one test per fault, each against the simulated
//! Administration API with scripted faults, real receivers (an SMTP server with STARTTLS + AUTH,
//! an HTTP webhook receiver) and a real SQLite state file, in `mode = "enforce"`.
//!
//! Every API-fault test tells the same story. Sweep 1 (T1) warns about the old key(s) of every
//! project; the fault is armed; sweep 2 (T2, past the warning period) would revoke them. For a
//! fault that outlasts the retries it then checks what the issue demands: the sweep returns (no
//! panic, the other projects are complete and enforced), the faulted project is reported
//! incomplete, none of its keys is deleted and none of its findings is closed, the audit chain
//! verifies, every notification reached its receiver, and the enforcer alert is raised (an
//! `alert` audit record and a message to `ops_channels`). Sweep 3 (T3), fault gone, on the same
//! `Sweeper` (what the daemon keeps between sweeps) shows it recovers and finishes the job.
//! A transient fault that succeeds within the retries must end complete instead.
//!
//! SIGTERM and SIGKILL run the real binary as a child process against the in-process simulator.
//! `docs-fault-matrix.md` (the "Fault matrix" section of ARCHITECTURE.md) lists every test here.
//! Speed is never asserted; the one timing check is a lower bound (waited at least Retry-After).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keysweep::config::Config;
use keysweep::inventory::Listing;
use keysweep::metrics::Metrics;
use keysweep::notify::alert::EnforcerAlert;
use keysweep::notify::outbox::{self, StoredMessage};
use keysweep::policy::finding::Finding;
use keysweep::sim::{
    FORMAT_VERSION, Fault, FaultKind, FaultRoute, SimAccess, SimKey, SimMember, SimOrg,
    SimOwnerRef, SimProject, SimServer, SimUser,
};
use keysweep::state::audit::{self, AuditKind, AuditRow};
use keysweep::state::{self, Store};
use keysweep::sweep::{SweepOptions, SweepReport, Sweeper};

use crate::support::net::free_port;
use crate::support::process::{combined, keysweep, output, signal};
use crate::support::receivers::Receiver;
use crate::support::secrets::{self, whsec};
use crate::support::sim::start_sim;
use crate::support::smtp_server::{self, SmtpServer, TestPki};
use crate::support::time::{DAY, rfc3339};
use crate::support::wait::{PATIENCE, eventually};

/// 2026-03-01T09:00:00Z: the organisation's clock for the in-process tests.
const BASE: i64 = 1_772_355_600;
/// Sweep 1: the old keys are detected and warned about.
const T1: i64 = BASE;
/// Sweep 2: past `warn_before` (7 d): final notices go out and the revocations are due.
const T2: i64 = BASE + 8 * DAY;
/// Sweep 3: the fault is gone; whatever sweep 2 withheld is enforced now.
const T3: i64 = BASE + 9 * DAY;

const ACME_KEY: &str = "sk-admin-acme-faults-never-shown";
const GLOBEX_KEY: &str = "sk-admin-globex-faults-never-shown";
const SMTP_USER: &str = "faults-mailer";
const SMTP_PASSWORD: &str = "faults-smtp-Pa55word-never-shown";
const WEBHOOK_KEY: &[u8] = b"faults-webhook-key-never-shown!!";

/// acme: a small healthy project …
const PROJ_A: &str = "proj_alpha";
/// … and the project every fault is aimed at: 101 keys, so its listing takes two pages.
const PROJ_F: &str = "proj_faulty";
/// globex: another organisation on another simulated API.
const PROJ_G: &str = "proj_gamma";
const DUE_A: &str = "key_a0";
/// One old key on page 1 and one on page 2 of the faulted project.
const DUE_F: [&str; 2] = ["key_f000", "key_f100"];
const DUE_G: &str = "key_g0";

fn webhook_secret() -> String {
    whsec(WEBHOOK_KEY)
}

fn secrets() -> Vec<String> {
    vec![
        ACME_KEY.to_string(),
        GLOBEX_KEY.to_string(),
        SMTP_PASSWORD.to_string(),
        webhook_secret(),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    secrets::assert_no_secret(what, text, &secrets());
}

// ---------------------------------------------------------------------------------------------
// The simulated organisations

fn sim_key(id: &str, created_at: i64) -> SimKey {
    SimKey {
        id: id.to_string(),
        name: format!("{id}-name"),
        redacted_value: format!("sk-proj-****{}", &id[id.len() - 3..]),
        created_at,
        last_used_at: None,
        owner: SimOwnerRef::User {
            id: "user_dana".into(),
        },
        expires_at: None,
        scopes: Vec::new(),
    }
}

fn sim_project(id: &str, base: i64, keys: Vec<SimKey>) -> SimProject {
    SimProject {
        id: id.to_string(),
        name: Some(id.trim_start_matches("proj_").to_string()),
        created_at: base - 400 * DAY,
        archived_at: None,
        external_key_id: None,
        members: vec![SimMember {
            user_id: "user_dana".into(),
            role: "owner".into(),
            added_at: base - 400 * DAY,
            access: SimAccess::Active,
        }],
        service_accounts: vec![],
        keys,
    }
}

/// Old keys (200 days) violate `max_age = 90d`; fresh ones (5 days before `base`) do not.
fn sim_org(base: i64, projects: Vec<SimProject>) -> SimOrg {
    SimOrg {
        format: FORMAT_VERSION,
        generated_at: base,
        users: vec![SimUser {
            id: "user_dana".into(),
            name: "Dana Owner".into(),
            email: "dana@example.com".into(),
            created_at: base - 500 * DAY,
        }],
        admin_api_keys: vec![],
        projects,
    }
}

fn acme_org(base: i64) -> SimOrg {
    let old = base - 200 * DAY;
    let fresh = base - 5 * DAY;
    let faulty = (0..=100)
        .map(|i| {
            let id = format!("key_f{i:03}");
            let created = if DUE_F.contains(&id.as_str()) {
                old
            } else {
                fresh
            };
            sim_key(&id, created)
        })
        .collect();
    sim_org(
        base,
        vec![
            sim_project(
                PROJ_A,
                base,
                vec![sim_key(DUE_A, old), sim_key("key_a1", fresh)],
            ),
            sim_project(PROJ_F, base, faulty),
        ],
    )
}

fn globex_org(base: i64) -> SimOrg {
    sim_org(
        base,
        vec![sim_project(
            PROJ_G,
            base,
            vec![
                sim_key(DUE_G, base - 200 * DAY),
                sim_key("key_g1", base - 5 * DAY),
            ],
        )],
    )
}

// ---------------------------------------------------------------------------------------------
// The world: two simulated APIs, two receivers, a state file, a configuration, a sweeper

#[derive(Debug, Clone)]
struct Knobs {
    /// The organisations' clock (ages of the keys are relative to it).
    base: i64,
    request_timeout: &'static str,
    max_retries: u32,
    max_response_bytes: usize,
    max_attempts: u32,
    /// Start the SMTP server / webhook receiver now; otherwise its port stays closed until
    /// [`World::start_smtp`] / [`World::start_hook`].
    smtp_up: bool,
    hook_up: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            base: BASE,
            request_timeout: "30s",
            max_retries: 2,
            max_response_bytes: 1 << 20,
            max_attempts: 5,
            smtp_up: true,
            hook_up: true,
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    acme: Arc<SimServer>,
    globex: Arc<SimServer>,
    pki: TestPki,
    smtp_port: u16,
    smtp: Option<SmtpServer>,
    hook_port: u16,
    hook: Option<Receiver>,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    config: Arc<Config>,
    sweeper: Sweeper,
    metrics: Metrics,
}

/// Everything but the channels: enforce mode, both organisations, the limits under test, a
/// revoking policy with a 7-day warning, and lifted caps.
fn core_toml(knobs: &Knobs, state: &Path, acme: &SimServer, globex: &SimServer) -> String {
    format!(
        r#"
mode = "enforce"
state_path = "{state}"
schedule = "0 0 1 1 *"
timezone = "UTC"
run_on_start = true
shutdown_grace = "60s"
ops_channels = ["mail", "hook"]

[[organizations]]
name = "acme"
base_url = "{acme}"
admin_key_env = "FAULTS_ACME_ADMIN_KEY"

[[organizations]]
name = "globex"
base_url = "{globex}"
admin_key_env = "FAULTS_GLOBEX_ADMIN_KEY"

[limits]
concurrency = 4
max_retries = {max_retries}
request_timeout = "{timeout}"
max_response_bytes = {max_bytes}

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "7d"
final_notice = "1d"
notify = ["mail", "hook"]

[safety]
max_revocations_per_run = 100
max_revocations_per_project_percent = 100
max_revocations_per_day = 1000

"#,
        state = state.display(),
        acme = acme.base_url(),
        globex = globex.base_url(),
        max_retries = knobs.max_retries,
        timeout = knobs.request_timeout,
        max_bytes = knobs.max_response_bytes,
    )
}

/// The two channels (e-mail over STARTTLS + AUTH, a signed webhook), which are also the ops
/// channels, and the delivery settings.
fn channels_toml(knobs: &Knobs, smtp_port: u16, pki: &TestPki, hook_port: u16) -> String {
    format!(
        r#"[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "FAULTS_SMTP_USERNAME"
smtp_password_env = "FAULTS_SMTP_PASSWORD"
from = "keysweep@example.com"
to = ["security@example.com"]
send_timeout = "20s"

[[channels]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret_env = "FAULTS_WEBHOOK_SECRET"

[notifications]
repeat_interval = "24h"
max_attempts = {max_attempts}

[server]
listen = "127.0.0.1:0"
"#,
        ca = pki.ca_pem.display(),
        max_attempts = knobs.max_attempts,
    )
}

impl World {
    async fn new(knobs: Knobs) -> World {
        keysweep::telemetry::init_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let acme = start_sim(acme_org(knobs.base), ACME_KEY).await;
        let globex = start_sim(globex_org(knobs.base), GLOBEX_KEY).await;
        let pki = TestPki::new();
        let (smtp_port, smtp) = if knobs.smtp_up {
            let s = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
            (s.port, Some(s))
        } else {
            (free_port(), None)
        };
        let (hook_port, hook) = if knobs.hook_up {
            let r = Receiver::start().await;
            (r.addr.port(), Some(r))
        } else {
            (free_port(), None)
        };
        let state_path = dir.path().join("state.db");
        let toml = format!(
            "{}{}",
            core_toml(&knobs, &state_path, &acme, &globex),
            channels_toml(&knobs, smtp_port, &pki, hook_port)
        );
        let config_path = dir.path().join("keysweep.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let env: Vec<(String, String)> = [
            ("FAULTS_ACME_ADMIN_KEY", ACME_KEY.to_string()),
            ("FAULTS_GLOBEX_ADMIN_KEY", GLOBEX_KEY.to_string()),
            ("FAULTS_SMTP_USERNAME", SMTP_USER.to_string()),
            ("FAULTS_SMTP_PASSWORD", SMTP_PASSWORD.to_string()),
            ("FAULTS_WEBHOOK_SECRET", webhook_secret()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let config = Arc::new(keysweep::config::load_from_str(&toml, &env).unwrap());
        let store = Store::open(&state_path).unwrap();
        let metrics = Metrics::new();
        let sweeper = Sweeper::new(config.clone(), Some(store), metrics.clone()).unwrap();
        World {
            dir,
            acme: Arc::new(acme),
            globex: Arc::new(globex),
            pki,
            smtp_port,
            smtp,
            hook_port,
            hook,
            config_path,
            env,
            config,
            sweeper,
            metrics,
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// One sweep, as the daemon runs it (`run_once` with delivery).
    async fn sweep(&self, now: i64) -> SweepReport {
        tokio::time::timeout(PATIENCE, self.sweeper.run_once(&SweepOptions::new(now)))
            .await
            .expect("the sweep hung")
            .expect("the sweep returned an error instead of a report")
    }

    /// One delivery pass of the outbox at `now` (what the next sweep would start with).
    async fn deliver(&self, now: i64) -> keysweep::notify::DeliveryReport {
        let store = self.db();
        keysweep::notify::deliver_due(&store, &self.config.as_ref().into(), now)
            .await
            .unwrap()
    }

    fn start_smtp(&mut self) {
        self.smtp = Some(smtp_server::start(
            &self.pki,
            self.smtp_port,
            SMTP_USER,
            SMTP_PASSWORD,
        ));
    }

    async fn start_hook(&mut self) {
        self.hook = Some(Receiver::start_on(self.hook_port).await);
    }

    /// A separate connection to the state file (the sweeper keeps its own).
    fn db(&self) -> Store {
        Store::open_existing(&self.state_path()).unwrap()
    }

    fn audit(&self) -> Vec<AuditRow> {
        self.db().with_conn(|c| audit::list(c, None)).unwrap()
    }

    fn outbox(&self) -> Vec<StoredMessage> {
        self.db()
            .with_conn(|c| Ok(outbox::all(c).map_err(|e| e.to_string())))
            .unwrap()
            .unwrap()
    }

    fn findings(&self) -> Vec<Finding> {
        self.db().with_conn(state::findings::all_findings).unwrap()
    }

    /// The one finding of key `key` (the scenario gives each due key one policy).
    fn finding(&self, key: &str) -> Finding {
        let found = self.findings().into_iter().find(|f| f.id.key_id == key);
        found.unwrap_or_else(|| panic!("no finding of {key}"))
    }

    fn unmatched_intents(&self) -> Vec<AuditRow> {
        self.db().with_conn(audit::unmatched_intents).unwrap()
    }

    /// The hash chain recomputes from the first record to the head.
    fn assert_audit_verifies(&self) {
        let verified = self
            .db()
            .with_conn(|c| Ok(audit::verify(c).map_err(|e| e.to_string())))
            .unwrap();
        let report = verified.unwrap_or_else(|e| panic!("audit verify failed: {e}"));
        assert!(report.records > 0);
        for row in self.audit() {
            let text = serde_json::to_string(&row.record).unwrap();
            assert_no_secret("an audit record", &text);
        }
    }

    fn sim(&self, org: &str) -> &SimServer {
        match org {
            "acme" => &self.acme,
            _ => &self.globex,
        }
    }

    fn exists(&self, org: &str, project: &str, key: &str) -> bool {
        self.sim(org).key_exists(project, key)
    }

    /// Every due key of the scenario: (organisation, project, key).
    fn due_keys() -> Vec<(&'static str, &'static str, &'static str)> {
        vec![
            ("acme", PROJ_A, DUE_A),
            ("acme", PROJ_F, DUE_F[0]),
            ("acme", PROJ_F, DUE_F[1]),
            ("globex", PROJ_G, DUE_G),
        ]
    }

    /// Every outbox row was accepted by its receiver, and each receiver holds each row's id
    /// (same `Message-ID` / `webhook-id` as stored): nothing composed was lost on the way.
    fn assert_every_message_delivered(&self) {
        let rows = self.outbox();
        assert!(!rows.is_empty(), "nothing was ever queued");
        self.assert_rows_received(rows.iter().collect::<Vec<_>>().as_slice());
        for r in &rows {
            assert_eq!(
                r.status,
                "sent",
                "message {} ({} to {}) not delivered: {:?}",
                r.message_id,
                r.kind.as_str(),
                r.channel,
                r.last_error
            );
        }
    }

    fn assert_rows_received(&self, rows: &[&StoredMessage]) {
        let hook_ids: BTreeSet<String> = self
            .hook
            .as_ref()
            .map(|h| {
                h.requests("/hook")
                    .iter()
                    .filter_map(|r| r.header("webhook-id"))
                    .collect()
            })
            .unwrap_or_default();
        let mails: Vec<String> = self
            .smtp
            .as_ref()
            .map(|s| {
                s.messages()
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.data).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for r in rows.iter().filter(|r| r.status == "sent") {
            match r.channel.as_str() {
                "hook" => assert!(
                    hook_ids.contains(&r.message_id),
                    "webhook receiver never got {}",
                    r.message_id
                ),
                "mail" => {
                    let id = format!("<{}@keysweep>", r.message_id);
                    assert!(
                        mails.iter().any(|m| m.contains(&id)),
                        "SMTP server never got {id}"
                    );
                }
                other => panic!("unexpected channel {other}"),
            }
        }
        for m in &mails {
            assert_no_secret("an e-mail", m);
        }
        if let Some(h) = &self.hook {
            for r in h.requests("/") {
                assert_no_secret("a webhook body", &String::from_utf8_lossy(&r.body));
            }
        }
    }

    /// The webhook receiver got a `keysweep.alerts` body with an alert of this type whose
    /// fields contain `needle`.
    fn hook_got_alert(&self, alert: &str, needle: &str) -> bool {
        self.hook.as_ref().is_some_and(|h| {
            h.requests("/hook").iter().any(|r| {
                let v = r.json();
                v["type"] == "keysweep.alerts"
                    && v["alerts"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x["alert"] == alert && x.to_string().contains(needle))
                    })
            })
        })
    }

    /// An `alert` audit record of this type mentioning `needle`.
    fn audit_has_alert(&self, alert: &str, needle: &str) -> bool {
        self.audit().iter().any(|r| {
            r.record.kind == AuditKind::Alert
                && r.record.response["alert"] == alert
                && r.record.response.to_string().contains(needle)
        })
    }

    /// An `alert` message was queued for both ops channels and delivered to each.
    fn assert_alert_raised(&self, alert: &str, needle: &str) {
        assert!(
            self.audit_has_alert(alert, needle),
            "no `alert` audit record {alert} mentioning {needle}"
        );
        assert!(
            self.hook_got_alert(alert, needle),
            "the webhook ops channel never got the {alert} alert"
        );
        let mail_alerts: Vec<StoredMessage> = self
            .outbox()
            .into_iter()
            .filter(|m| m.channel == "mail" && m.payload.to_string().contains(needle))
            .filter(|m| m.kind == keysweep::notify::MessageKind::Alert)
            .collect();
        assert!(
            !mail_alerts.is_empty(),
            "no alert e-mail mentioning {needle} was queued for the ops mailbox"
        );
    }
}

fn listing<'a>(r: &'a SweepReport, org: &str, project: &str) -> &'a Listing {
    let o = r
        .inventory
        .orgs
        .iter()
        .find(|o| o.organization == org)
        .unwrap_or_else(|| panic!("organisation {org} missing from the report"));
    &o.projects
        .iter()
        .find(|p| p.project.id == project)
        .unwrap_or_else(|| panic!("project {project} missing from the report"))
        .listing
}

fn deleted_in(r: &SweepReport, key: &str) -> bool {
    r.revocations
        .iter()
        .any(|x| x.deleted() && x.key_ids.iter().any(|k| k == key))
}

// ---------------------------------------------------------------------------------------------
// The common story

/// Sweep 1 at T1: every listing complete, the four old keys warned about, nothing deleted.
async fn warn_first(w: &World) {
    let r1 = w.sweep(T1).await;
    assert!(r1.complete(), "sweep 1 was meant to run without faults");
    assert_eq!(r1.revoked_count(), 0);
    let open: BTreeSet<String> = w
        .findings()
        .iter()
        .filter(|f| f.stage.is_open())
        .map(|f| f.id.key_id.clone())
        .collect();
    let due: BTreeSet<String> = World::due_keys().iter().map(|k| k.2.to_string()).collect();
    assert_eq!(open, due, "sweep 1 did not open one finding per old key");
}

/// After a sweep at T2 in which `PROJ_F`'s listing failed: the sweep ran to the end, the other
/// projects were complete and enforced, nothing in `PROJ_F` was touched, the chain verifies,
/// every message arrived, and the incomplete-listing alert went out. `reason` must appear in
/// the listing's reason (case-insensitive).
fn assert_hands_off(w: &World, r: &SweepReport, reason: &str) {
    match listing(r, "acme", PROJ_F) {
        Listing::Incomplete(why) => assert!(
            why.to_lowercase().contains(&reason.to_lowercase()),
            "incomplete for another reason than {reason:?}: {why}"
        ),
        Listing::Complete => panic!("{PROJ_F} was reported complete despite the fault"),
    }
    assert!(!r.complete());
    // The other projects, in this and the other organisation, were complete and enforced.
    assert_eq!(listing(r, "acme", PROJ_A), &Listing::Complete);
    assert_eq!(listing(r, "globex", PROJ_G), &Listing::Complete);
    assert!(deleted_in(r, DUE_A) && !w.exists("acme", PROJ_A, DUE_A));
    assert!(deleted_in(r, DUE_G) && !w.exists("globex", PROJ_G, DUE_G));
    // Nothing in the faulted project was deleted, attempted, or closed as gone.
    for key in DUE_F {
        assert!(w.exists("acme", PROJ_F, key), "{key} was deleted");
        assert!(!deleted_in(r, key));
    }
    let audit = w.audit();
    assert!(
        !audit.iter().any(|row| {
            matches!(row.record.kind, AuditKind::Intent | AuditKind::Outcome)
                && row.record.project_id.as_deref() == Some(PROJ_F)
        }),
        "a DELETE was attempted in the incomplete project"
    );
    // The sweep itself is on record as incomplete, with the count of incomplete projects.
    assert!(
        audit.iter().any(|row| {
            row.record.kind == AuditKind::Sweep
                && row.record.run_id == r.run_id
                && row.record.organization.as_deref() == Some("acme")
                && row.record.message == "sweep incomplete"
                && row.record.inputs["incomplete_projects"] == 1
        }),
        "no `sweep incomplete` audit record for acme"
    );
    let findings = w.findings();
    for key in DUE_F {
        let f = findings
            .iter()
            .find(|f| f.id.key_id == key)
            .unwrap_or_else(|| panic!("finding for {key} lost"));
        assert!(
            f.stage.is_open(),
            "the finding for {key} was closed ({:?}) on an incomplete listing",
            f.stage
        );
    }
    // The alert: in the report, in the audit log, and delivered to both ops channels.
    assert!(
        r.alerts.iter().any(|a| matches!(a,
            EnforcerAlert::IncompleteListing { project_id, .. } if project_id == PROJ_F)),
        "no incomplete-listing alert in the report: {:?}",
        r.alerts
    );
    w.assert_alert_raised("incomplete_listing", PROJ_F);
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

/// Sweep 3 at T3 with the fault gone: the same sweeper lists everything and revokes what sweep 2
/// had to leave alone.
async fn recovers(w: &World) {
    w.acme.faults().clear();
    let r3 = w.sweep(T3).await;
    assert!(r3.complete(), "still incomplete after the fault cleared");
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} survived the recovery");
    }
    assert!(w.unmatched_intents().is_empty());
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

/// The whole story for a fault that outlasts the retries.
async fn persistent_fault(knobs: Knobs, fault: Fault, min_hits: u32, reason: &str) -> World {
    let w = World::new(knobs).await;
    warn_first(&w).await;
    let id = w.acme.faults().add(fault);
    let r2 = w.sweep(T2).await;
    assert!(
        w.acme.faults().hits(id) >= min_hits,
        "the fault fired {} times, expected at least {min_hits}",
        w.acme.faults().hits(id)
    );
    assert_hands_off(&w, &r2, reason);
    recovers(&w).await;
    w
}

/// The story for a fault that heals within the retries: sweep 2 is complete and enforced.
async fn transient_fault(knobs: Knobs, fault: Fault, hits: u32) -> (World, SweepReport) {
    let w = World::new(knobs).await;
    warn_first(&w).await;
    let id = w.acme.faults().add(fault);
    let r2 = w.sweep(T2).await;
    assert_eq!(w.acme.faults().hits(id), hits, "the fault did not fire");
    assert!(r2.complete(), "a transient fault left the sweep incomplete");
    for (org, project, key) in World::due_keys() {
        assert!(deleted_in(&r2, key), "{key} was not revoked");
        assert!(!w.exists(org, project, key));
    }
    assert!(
        !r2.alerts
            .iter()
            .any(|a| matches!(a, EnforcerAlert::IncompleteListing { .. })),
        "an incomplete-listing alert for a fault the retries absorbed"
    );
    assert!(w.unmatched_intents().is_empty());
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
    (w, r2)
}

// ---------------------------------------------------------------------------------------------
// The state file

/// An open finding whose stored JSON is damaged fails the sweep (its error names the table),
/// and nothing is written to any organisation's API: no key deleted, no intent recorded. The
/// findings are read while the listing runs, so the sweep has read (GET) and may have saved
/// the audit log's history before it fails. The next sweep, on a repaired file, revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_open_finding_fails_the_sweep_before_any_write() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    let conn = rusqlite::Connection::open(w.state_path()).unwrap();
    let good: String = conn
        .query_row(
            "SELECT data FROM findings WHERE key_id = ?1",
            [DUE_G],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE findings SET data = '{\"id\": 7' WHERE key_id = ?1",
        [DUE_G],
    )
    .unwrap();
    // Requests other than GETs, to either organisation.
    let writes = |w: &World| -> u64 {
        [&w.acme, &w.globex]
            .iter()
            .flat_map(|sim| sim.stats())
            .filter(|(route, _)| !route.starts_with("GET "))
            .map(|(_, n)| n)
            .sum()
    };
    let before = writes(&w);
    let err = tokio::time::timeout(PATIENCE, w.sweeper.run_once(&SweepOptions::new(T2)))
        .await
        .expect("the sweep hung")
        .expect_err("a sweep on a damaged finding returned a report");
    let chain = keysweep::error_chain(&err);
    assert!(chain.contains("findings"), "{chain}");
    assert_eq!(writes(&w), before, "the API was written to");
    for (org, project, key) in World::due_keys() {
        assert!(w.exists(org, project, key), "{key} was deleted");
    }
    assert!(
        !w.audit()
            .iter()
            .any(|row| row.record.kind == AuditKind::Intent),
        "an intent was recorded"
    );
    conn.execute(
        "UPDATE findings SET data = ?1 WHERE key_id = ?2",
        [good.as_str(), DUE_G],
    )
    .unwrap();
    drop(conn);
    recovers(&w).await;
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storm_longer_than_the_retries_leaves_the_project_incomplete() {
    // max_retries = 2: three answers of 429, each honoured (Retry-After: 1) before giving up.
    let started = Instant::now();
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .respond(FaultKind::RateLimited {
                retry_after_secs: 1,
            }),
        3,
        "429",
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_burst_within_the_retries_waits_retry_after_and_ends_complete() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    let id = w
        .acme
        .faults()
        .add(
            Fault::on_list_keys(PROJ_F)
                .page(2)
                .times(2)
                .respond(FaultKind::RateLimited {
                    retry_after_secs: 1,
                }),
        );
    let started = Instant::now();
    let r2 = w.sweep(T2).await;
    // A lower bound, not a speed test: two Retry-After: 1 were honoured before the page came.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "did not wait for Retry-After"
    );
    assert_eq!(w.acme.faults().hits(id), 2);
    assert!(r2.complete());
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} was not revoked");
    }
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

// ---------------------------------------------------------------------------------------------
// Server errors and transport failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_burst_longer_than_the_retries_leaves_the_project_incomplete() {
    let w = persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .respond(FaultKind::Status(503)),
        3,
        "503",
    )
    .await;
    // The real binary says so too: `scan` exits 1 and names the project while the fault lasts
    // (page 1 now: the recovery revoked the key that made a second page).
    w.acme.faults().add(
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .respond(FaultKind::Status(503)),
    );
    let out = tokio::time::timeout(
        PATIENCE,
        keysweep_cmd(&w)
            .args(["scan", "--format", "json", "--now", &rfc3339(T3)])
            .output(),
    )
    .await
    .expect("scan hung")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(PROJ_F) && stderr.contains("listing incomplete"),
        "{stderr}"
    );
    assert_no_secret("scan output", &stderr);
    assert_no_secret("scan output", &String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_burst_within_the_retries_ends_complete() {
    transient_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .times(2)
            .respond(FaultKind::Status(500)),
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_leave_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .respond(FaultKind::ConnectionReset),
        3,
        "transport error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_connection_reset_is_retried_and_ends_complete() {
    transient_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .once()
            .respond(FaultKind::ConnectionReset),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_slower_than_the_timeout_leave_the_project_incomplete() {
    persistent_fault(
        Knobs {
            request_timeout: "2s",
            ..Knobs::default()
        },
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .respond(FaultKind::Delay(Duration::from_secs(6))),
        3,
        "no answer within",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_response_slower_than_the_timeout_is_retried_and_ends_complete() {
    transient_fault(
        Knobs {
            request_timeout: "2s",
            ..Knobs::default()
        },
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(6))),
        1,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bodies that cannot be trusted: one bad page is enough (a 200 with a broken body is not
// retried: the same request would most likely get the same answer).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_leaves_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .once()
            .respond(FaultKind::Truncated),
        1,
        "cannot decode",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_leaves_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .once()
            .respond(FaultKind::Malformed),
        1,
        "cannot decode",
    )
    .await;
}

/// The API's error text echoes what it was sent, so it is hostile too: a refusal whose message
/// carries a line break, a terminal escape and a bidirectional override leaves the project
/// incomplete with a reason (and an alert) of one inert line, its words kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_error_text_reaches_the_report_and_alerts_as_one_inert_line() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    let message = "No key 'k'\n2026-01-01 INFO forged line \u{1b}]52;c;AAAA\u{7} \u{202E}txet";
    w.acme.faults().add(
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .respond(FaultKind::StatusMessage {
                status: 400,
                message: message.into(),
            }),
    );
    let r = w.sweep(T2).await;
    let Listing::Incomplete(why) = listing(&r, "acme", PROJ_F) else {
        panic!("{PROJ_F} was reported complete despite the fault");
    };
    assert!(why.contains("forged line"), "{why}");
    assert!(!why.chars().any(keysweep::text::is_unsafe), "{why:?}");
    let alert = r
        .alerts
        .iter()
        .find(|a| matches!(a, EnforcerAlert::IncompleteListing { .. }))
        .expect("an incomplete-listing alert");
    let text = keysweep::notify::digest::alert_text(alert);
    assert!(text.contains("forged line"), "{text}");
    assert!(!text.chars().any(keysweep::text::is_unsafe), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_field_types_leave_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .once()
            .respond(FaultKind::WrongTypes),
        1,
        "created_at",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_that_loops_leaves_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .respond(FaultKind::CursorLoop),
        1,
        "cursor",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_across_pages_leave_the_project_incomplete() {
    persistent_fault(
        Knobs::default(),
        Fault::on_list_keys(PROJ_F)
            .page(2)
            .once()
            .respond(FaultKind::DuplicateIds),
        1,
        "key_f099",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_leaves_the_project_incomplete() {
    let limit = 256 * 1024;
    persistent_fault(
        Knobs {
            max_response_bytes: limit,
            ..Knobs::default()
        },
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .once()
            .respond(FaultKind::Oversized(limit)),
        1,
        &limit.to_string(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The admin key revoked mid-sweep

/// An organisation whose project list fails keeps the key gauges of its last complete
/// listing: before, they read as no keys at all (and an alert on keys without an expiry
/// resolved while the API was down). The other organisation's are updated as usual.
#[tokio::test]
async fn a_failed_listing_leaves_the_key_gauges_as_the_last_complete_one_set() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    let gauges = |org: &str| -> Vec<String> {
        let org = format!("organization=\"{org}\"");
        (w.metrics.encode().lines())
            .filter(|l| l.starts_with("keysweep_keys") && l.contains(&org))
            .map(str::to_string)
            .collect()
    };
    let before = gauges("acme");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("keysweep_keys_by_expiry{")),
        "{before:?}"
    );
    w.acme
        .faults()
        .add(Fault::on_list_projects().respond(FaultKind::Status(503)));
    let r2 = w.sweep(T2).await;
    assert!(!r2.complete());
    assert_eq!(gauges("acme"), before);
    assert!(!gauges("globex").is_empty());
    // One project stops short: its series stay, the complete ones follow (a key revoked).
    w.acme.faults().clear();
    w.acme
        .faults()
        .add(Fault::on_list_keys(PROJ_F).respond(FaultKind::Status(503)));
    let r3 = w.sweep(T2 + 60).await;
    assert!(deleted_in(&r3, DUE_A));
    // Counted by the listing after the DELETE.
    w.sweep(T2 + 120).await;
    let of = |lines: &[String], project: &str| -> Vec<String> {
        let project = format!("project=\"{project}\"");
        lines
            .iter()
            .filter(|l| l.contains(&project))
            .cloned()
            .collect()
    };
    let after = gauges("acme");
    assert_eq!(of(&after, PROJ_F), of(&before, PROJ_F));
    assert!(!of(&before, PROJ_F).is_empty());
    assert_ne!(of(&after, PROJ_A), of(&before, PROJ_A));
}

/// One sweep raises alerts in two phases: the incomplete listing when it commits, the failed
/// DELETE when it enforces. Both reach the ops channels. Before, every phase composed its alert
/// digest under the same message id, and the outbox kept only the first: the failed revocation
/// was recorded as raised and never sent.
#[tokio::test]
async fn alerts_of_two_phases_of_one_sweep_both_reach_the_ops_channels() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    w.acme
        .faults()
        .add(Fault::on_list_keys(PROJ_F).respond(FaultKind::Status(503)));
    w.acme
        .faults()
        .add(Fault::on_delete_key(PROJ_A, DUE_A).respond(FaultKind::Status(400)));
    let r2 = w.sweep(T2).await;
    assert!(w.exists("acme", PROJ_A, DUE_A));
    assert!(
        r2.alerts.iter().any(|a| matches!(a,
            EnforcerAlert::RevocationFailed { key_id, .. } if key_id == DUE_A)),
        "{:?}",
        r2.alerts
    );
    w.assert_alert_raised("incomplete_listing", PROJ_F);
    w.assert_alert_raised("revocation_failed", DUE_A);
    w.assert_every_message_delivered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_revoked_mid_sweep_stops_that_organisation_only() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    // Page 1 of the faulted project is held for a moment; while it is, the key is revoked, so
    // page 2 (and anything after) gets 401. Page 1 itself was authenticated before the flip.
    let id = w.acme.faults().add(
        Fault::on_list_keys(PROJ_F)
            .page(1)
            .once()
            .respond(FaultKind::Delay(Duration::from_millis(1500))),
    );
    let sim = w.acme.clone();
    let flip = tokio::spawn(async move {
        let start = Instant::now();
        while sim.faults().hits(id) == 0 {
            assert!(start.elapsed() < PATIENCE, "page 1 was never requested");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sim.set_admin_key("sk-admin-acme-rotated-by-someone-else");
    });
    let r2 = w.sweep(T2).await;
    flip.await.unwrap();

    let acme = r2
        .inventory
        .orgs
        .iter()
        .find(|o| o.organization == "acme")
        .unwrap();
    assert!(
        acme.unauthorized,
        "the 401 was not recognised: {:?}",
        acme.error
    );
    assert!(matches!(
        listing(&r2, "acme", PROJ_F),
        Listing::Incomplete(_)
    ));
    assert!(!r2.complete());
    // Nothing at all in acme was deleted: with the key refused, the organisation is not
    // trusted as listed, not even its projects listed before the flip.
    for key in [DUE_A, DUE_F[0], DUE_F[1]] {
        let project = if key == DUE_A { PROJ_A } else { PROJ_F };
        assert!(w.exists("acme", project, key), "{key} was deleted");
    }
    assert!(!w.audit().iter().any(|row| {
        row.record.kind == AuditKind::Intent && row.record.organization.as_deref() == Some("acme")
    }));
    for f in w.findings().iter().filter(|f| f.id.organization == "acme") {
        assert!(f.stage.is_open(), "{:?} closed on a refused listing", f.id);
    }
    // The other organisation went on and was enforced.
    assert_eq!(listing(&r2, "globex", PROJ_G), &Listing::Complete);
    assert!(!w.exists("globex", PROJ_G, DUE_G));
    assert!(
        r2.alerts
            .iter()
            .any(|a| matches!(a, EnforcerAlert::AuthenticationFailed { organization, .. } if organization == "acme")),
        "{:?}",
        r2.alerts
    );
    w.assert_alert_raised("authentication_failed", "acme");
    w.assert_audit_verifies();
    w.assert_every_message_delivered();

    // The key is restored (in real life: a new key configured and SIGHUP); the same sweeper
    // finishes the job.
    w.acme.set_admin_key(ACME_KEY);
    recovers(&w).await;
}

// ---------------------------------------------------------------------------------------------
// Receivers down

/// Which receiver is down for the whole first part of the story.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Down {
    Smtp,
    Webhook,
}

// ---------------------------------------------------------------------------------------------
// The state database refuses writes mid-sweep

/// The observations the recorder writes while the listing runs are refused (as a full disk or
/// a read-only volume would): the sweep fails as a whole, before any plan or delete, and the
/// next sweep on a healthy database does everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_database_refusing_writes_mid_listing_fails_the_sweep_before_any_delete() {
    let w = World::new(Knobs::default()).await;
    warn_first(&w).await;
    let findings_before = w.findings();
    let audit_before = w.audit().len();
    // A temporary trigger lives on the sweeper's own connection only.
    let store = w.sweeper.store().unwrap().clone();
    store
        .with_conn(|c| {
            Ok(c.execute_batch(
                "CREATE TEMP TRIGGER refuse_insert BEFORE INSERT ON main.key_observations
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;
                 CREATE TEMP TRIGGER refuse_update BEFORE UPDATE ON main.key_observations
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;
                 CREATE TEMP TRIGGER refuse_listed BEFORE INSERT ON main.project_listings
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;",
            )?)
        })
        .unwrap();
    let err = tokio::time::timeout(PATIENCE, w.sweeper.run_once(&SweepOptions::new(T2)))
        .await
        .expect("the sweep hung")
        .expect_err("a sweep whose observations could not be written reported success");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("injected"), "{chain}");
    for (org, project, key) in World::due_keys() {
        assert!(
            w.exists(org, project, key),
            "{key} deleted by a failed sweep"
        );
    }
    assert!(
        !w.audit()[audit_before..]
            .iter()
            .any(|row| matches!(row.record.kind, AuditKind::Intent | AuditKind::Outcome)),
        "a DELETE was attempted by a failed sweep"
    );
    assert_eq!(
        w.findings(),
        findings_before,
        "findings changed by a failed sweep"
    );
    w.assert_audit_verifies();

    store
        .with_conn(|c| {
            Ok(c.execute_batch(
                "DROP TRIGGER temp.refuse_insert; DROP TRIGGER temp.refuse_update;
                 DROP TRIGGER temp.refuse_listed;",
            )?)
        })
        .unwrap();
    recovers(&w).await;
}

/// The API is fine, so the sweeps are complete and enforced; the messages for the dead receiver
/// wait in the outbox and are retried. With `max_attempts = 3`, sweep 1's warning is
/// dead-lettered on the third failure and a `delivery_failed` alert goes out through the other
/// ops channel; everything queued later is delivered, with its original id, once the receiver
/// is back.
async fn receiver_down(down: Down) {
    let mut w = World::new(Knobs {
        max_attempts: 3,
        smtp_up: down != Down::Smtp,
        hook_up: down != Down::Webhook,
        ..Knobs::default()
    })
    .await;
    let dead_channel = match down {
        Down::Smtp => "mail",
        Down::Webhook => "hook",
    };
    enforcement_goes_on(&w, dead_channel).await;
    let at = dead_letter_raises_an_alert(&w, down, dead_channel).await;
    match down {
        Down::Smtp => w.start_smtp(),
        Down::Webhook => w.start_hook().await,
    }
    let rows = the_rest_arrives_when_back(&w, dead_channel, at + 3600).await;
    the_operator_requeues_the_dead_letters(&w, dead_channel, &rows).await;
}

/// The sweeps are complete and enforced; what is owed to the dead receiver waits in the outbox.
async fn enforcement_goes_on(w: &World, dead_channel: &str) {
    let r1 = w.sweep(T1).await;
    assert!(r1.complete());
    assert!(
        r1.delivery.failed > 0,
        "nothing failed with a receiver down"
    );
    let r2 = w.sweep(T2).await;
    assert!(
        r2.complete(),
        "a receiver outage made the listing incomplete"
    );
    // Notices are queued before the delete (the deadline rule needs them queued, not read),
    // so enforcement goes on; what is owed to the dead receiver waits in the outbox.
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} was not revoked");
    }
    let pending: Vec<StoredMessage> = w
        .outbox()
        .into_iter()
        .filter(|m| m.channel == dead_channel)
        .collect();
    assert!(
        pending.len() >= 3,
        "warning, final notice and revoked notice"
    );
    // Each delivery call tries the dead receiver once: the first message in line spends an
    // attempt, the others wait for its next one, untried.
    let attempts: Vec<u32> = pending.iter().map(|m| m.attempts).collect();
    assert!(
        pending.iter().all(|m| m.status == "pending"),
        "{attempts:?}"
    );
    let tried = pending.iter().filter(|m| m.attempts >= 1);
    assert!(
        tried.clone().all(|m| m.last_error.is_some()),
        "{attempts:?}"
    );
    let tried = tried.count();
    assert!(tried >= 1 && tried < pending.len(), "{attempts:?}");
}

/// A message's third failure: dead-lettered, and the other ops channel hears of it. One
/// message is tried per delivery call (an hour apart here), so the first death may take a few
/// calls. Returns the time of the call that saw it.
async fn dead_letter_raises_an_alert(w: &World, down: Down, dead_channel: &str) -> i64 {
    let mut at = T2;
    let mut d = keysweep::notify::DeliveryReport::default();
    for _ in 0..6 {
        at += 3600;
        d = w.deliver(at).await;
        if d.dead > 0 {
            break;
        }
    }
    assert_eq!(d.dead, 1, "{d:?}");
    let dead: Vec<StoredMessage> = w
        .outbox()
        .into_iter()
        .filter(|m| m.status == "dead")
        .collect();
    assert!(
        dead.iter()
            .all(|m| m.channel == dead_channel && m.attempts == 3)
    );
    let first_dead = &dead[0].message_id;
    assert!(d.alerts.iter().any(|a| matches!(a,
        EnforcerAlert::DeliveryFailed { channel, message_id, .. }
            if channel == dead_channel && message_id == first_dead)));
    match down {
        Down::Smtp => assert!(
            w.hook_got_alert("delivery_failed", first_dead),
            "the webhook ops channel never heard of the dead letter"
        ),
        Down::Webhook => {
            let alert_mail = w.outbox().into_iter().find(|m| {
                m.channel == "mail"
                    && m.kind == keysweep::notify::MessageKind::DeliveryAlert
                    && m.payload.to_string().contains(first_dead.as_str())
            });
            let alert_mail = alert_mail.expect("no delivery alert e-mail queued");
            assert_eq!(alert_mail.status, "sent");
        }
    }
    at
}

/// The receiver is back: everything not dead-lettered arrives, ids unchanged. Returns the
/// outbox rows.
async fn the_rest_arrives_when_back(w: &World, dead_channel: &str, at: i64) -> Vec<StoredMessage> {
    let d = w.deliver(at).await;
    assert_eq!(d.failed + d.dead, 0, "{d:?}");
    let rows = w.outbox();
    for m in &rows {
        if m.status == "dead" {
            // Kept with its payload and error for the operator; its alert was delivered.
            assert!(m.last_error.is_some());
            assert_eq!(m.channel, dead_channel);
        } else {
            assert_eq!(m.status, "sent", "{m:?}");
        }
    }
    let received: Vec<&StoredMessage> = rows.iter().collect();
    w.assert_rows_received(&received);
    let sent_to_dead = rows
        .iter()
        .filter(|m| m.channel == dead_channel && m.status == "sent")
        .count();
    assert!(sent_to_dead >= 2, "the final and revoked notices were lost");

    rows
}

/// The operator, channel fixed, puts the dead letters back (`notify retry-dead`, the real
/// binary); the next delivery sends them with their original ids, and nothing is left.
async fn the_operator_requeues_the_dead_letters(
    w: &World,
    dead_channel: &str,
    rows: &[StoredMessage],
) {
    let dead_ids: Vec<&str> = rows
        .iter()
        .filter(|m| m.status == "dead")
        .map(|m| m.message_id.as_str())
        .collect();
    assert!(!dead_ids.is_empty());
    let unknown = keysweep_cmd(w)
        .args(["notify", "retry-dead", "--channel", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no channel named \"nope\""));
    let out = keysweep_cmd(w)
        .args(["notify", "retry-dead", "--channel", dead_channel])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("requeued {} dead-lettered", dead_ids.len())),
        "{stdout}"
    );
    let d = w.deliver(T2 + 3 * 3600).await;
    assert_eq!(d.failed + d.dead, 0, "{d:?}");
    assert_eq!(d.sent as usize, dead_ids.len(), "{d:?}");
    let rows = w.outbox();
    assert!(
        rows.iter().all(|m| m.status == "sent"),
        "{:?}",
        rows.iter()
            .filter(|m| m.status != "sent")
            .collect::<Vec<_>>()
    );
    let received: Vec<&StoredMessage> = rows.iter().collect();
    w.assert_rows_received(&received);
    w.assert_audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_receiver_down_keeps_messages_in_the_outbox_until_it_returns() {
    receiver_down(Down::Smtp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_down_keeps_messages_in_the_outbox_until_it_returns() {
    receiver_down(Down::Webhook).await;
}

// ---------------------------------------------------------------------------------------------
// Signals: the real binary as a child process

/// The binary with this world's configuration and secrets.
fn keysweep_cmd(w: &World) -> tokio::process::Command {
    let mut c = keysweep(&["--config", w.config_path.to_str().unwrap()], &w.env);
    c.env("RUST_LOG", "info");
    c
}

/// `keysweep run --once --now T`; returns the exit code and the combined output.
async fn run_once(w: &World, now: i64) -> (Option<i32>, String) {
    let mut cmd = keysweep_cmd(w);
    cmd.args(["run", "--once", "--now", &rfc3339(now)]);
    let out = output(cmd).await;
    let text = combined(&out);
    assert_no_secret("keysweep output", &text);
    (out.status.code(), text)
}

fn log_file(dir: &Path, name: &str) -> (Stdio, PathBuf) {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    (Stdio::from(f), path)
}

async fn wait_for_hits(sim: &SimServer, id: keysweep::sim::FaultId) {
    eventually("the DELETE", || sim.faults().hits(id) > 0).await;
}

/// The daemon (`keysweep run`) gets SIGTERM while a DELETE is in flight: that delete's intent
/// and outcome are both written (the pair is never separated), no further delete starts, the
/// outbox is flushed and the daemon exits 0. Restarted, it finishes the revocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_sweep_finishes_the_delete_in_flight_and_a_restart_finishes_the_rest() {
    // The daemon reads the wall clock: build the organisation around it.
    let base = chrono::Utc::now().timestamp();
    let w = World::new(Knobs {
        base,
        ..Knobs::default()
    })
    .await;
    let (code, out) = run_once(&w, base - 8 * DAY).await;
    assert_eq!(code, Some(0), "{out}");

    // acme's first DELETE takes 3 s; its later ones run one at a time after it.
    let id = w.acme.faults().add(
        Fault::on(FaultRoute::DeleteKey)
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(3))),
    );
    let (stdout, out_path) = log_file(w.dir.path(), "daemon.out");
    let (stderr, err_path) = log_file(w.dir.path(), "daemon.err");
    let mut daemon = keysweep_cmd(&w)
        .arg("run")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for_hits(&w.acme, id).await;
    signal(daemon.id().unwrap(), "-TERM");
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .expect("the daemon did not stop after SIGTERM")
        .unwrap();
    let log = format!(
        "{}{}",
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&err_path).unwrap()
    );
    assert!(status.success(), "daemon exited with {status}: {log}");
    assert_no_secret("daemon log", &log);

    // Every intent has its outcome; each confirmed delete really happened; acme stopped after
    // the delete in flight, so at least two of its due keys are still there.
    assert!(
        w.unmatched_intents().is_empty(),
        "SIGTERM separated an intent from its outcome"
    );
    let audit = w.audit();
    let intents = audit
        .iter()
        .filter(|r| r.record.kind == AuditKind::Intent)
        .count();
    let outcomes: Vec<&AuditRow> = audit
        .iter()
        .filter(|r| r.record.kind == AuditKind::Outcome)
        .collect();
    assert_eq!(intents, outcomes.len());
    for o in &outcomes {
        let (org, project, key) = (
            o.record.organization.as_deref().unwrap(),
            o.record.project_id.as_deref().unwrap(),
            o.record.key_id.as_deref().unwrap(),
        );
        assert!(!w.exists(org, project, key), "outcome says deleted: {key}");
    }
    let acme_left = World::due_keys()
        .into_iter()
        .filter(|(org, p, k)| *org == "acme" && w.exists(org, p, k))
        .count();
    assert!(
        acme_left >= 2,
        "deletes went on after SIGTERM ({acme_left} left)"
    );
    w.assert_audit_verifies();
    w.assert_every_message_delivered();

    // Restart: the rest is revoked, nothing is left to reconcile.
    let (code, out) = run_once(&w, chrono::Utc::now().timestamp()).await;
    assert_eq!(code, Some(0), "{out}");
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} survived the restart");
    }
    assert!(w.unmatched_intents().is_empty());
    assert!(
        !w.audit()
            .iter()
            .any(|r| r.record.kind == AuditKind::Reconciled)
    );
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

/// Runs `run --once` at T2 and SIGKILLs it once fault `id` on acme was hit (a DELETE that
/// hangs), after a moment for an effect applied as the request is handled to land.
async fn kill_run_once_at(w: &World, id: keysweep::sim::FaultId) {
    let (stdout, _) = log_file(w.dir.path(), "killed.out");
    let (stderr, _) = log_file(w.dir.path(), "killed.err");
    let mut child = keysweep_cmd(w)
        .args(["run", "--once", "--now", &rfc3339(T2)])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for_hits(&w.acme, id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the child was not killed");
}

/// Runs `run --once` at T2 and SIGKILLs it while the first acme DELETE hangs after taking
/// effect ("deleted, but the answer was lost"). Returns the one intent left without outcome.
async fn killed_after_a_delete_took_effect(w: &World) -> AuditRow {
    // The first acme DELETE deletes, then hangs: "deleted, but the answer was lost".
    let id = w.acme.faults().add(
        Fault::on(FaultRoute::DeleteKey)
            .once()
            .after_effect()
            .respond(FaultKind::Delay(Duration::from_secs(120))),
    );
    kill_run_once_at(w, id).await;

    let pending = w.unmatched_intents();
    assert_eq!(pending.len(), 1, "expected exactly one interrupted delete");
    let intent = pending[0].clone();
    let key = intent.record.key_id.clone().unwrap();
    let project = intent.record.project_id.clone().unwrap();
    assert!(
        !w.exists("acme", &project, &key),
        "the delete did not take effect before the kill"
    );
    w.assert_audit_verifies();
    intent
}

/// `keysweep run --once` is killed (SIGKILL) after a DELETE took effect but before its answer
/// came back: the intent is left without outcome. The restarted run reconciles it first (GET:
/// gone → `reconciled`, counted as a revocation, finding closed as revoked, owner told), then
/// revokes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sweep_leaves_an_intent_that_the_restart_reconciles() {
    let w = World::new(Knobs::default()).await;
    let (code, out) = run_once(&w, T1).await;
    assert_eq!(code, Some(0), "{out}");

    let intent = killed_after_a_delete_took_effect(&w).await;
    let key = intent.record.key_id.clone().unwrap();

    // Restart (same moment): reconcile first, then the remaining revocations.
    w.acme.faults().clear();
    let (code, out) = run_once(&w, T2).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(w.unmatched_intents().is_empty());
    let audit = w.audit();
    let reconciled: Vec<&AuditRow> = audit
        .iter()
        .filter(|r| r.record.kind == AuditKind::Reconciled)
        .collect();
    assert_eq!(reconciled.len(), 1);
    assert_eq!(reconciled[0].record.refers_to, Some(intent.seq));
    assert_eq!(reconciled[0].record.key_id.as_deref(), Some(key.as_str()));
    assert_eq!(reconciled[0].record.response["deleted"], true);
    // Counted once towards the caps, never deleted twice.
    let revocations: i64 = w
        .db()
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM revocations WHERE key_id = ?1",
                [&key],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(revocations, 1);
    assert!(
        !audit.iter().any(|r| r.record.kind == AuditKind::Intent
            && r.record.key_id.as_deref() == Some(key.as_str())
            && r.seq != intent.seq),
        "the reconciled key was deleted again"
    );
    let f = w.finding(&key);
    assert_eq!(f.stage.as_str(), "revoked");
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} survived the restart");
    }
    // The owner hears of the revocation the crash interrupted, like of any other.
    let hook = w.hook.as_ref().unwrap();
    assert!(
        hook.requests("/hook").iter().any(|r| {
            let v = r.json();
            v["type"] == "keysweep.notices.revoked" && v.to_string().contains(key.as_str())
        }),
        "no revoked notice for the reconciled key {key}"
    );
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

/// `keysweep run --once` is killed (SIGKILL) while a DELETE hangs, after earlier deletes of
/// the same sweep had their outcomes recorded: their keys are gone, but the sweep closes
/// revoked findings and queues the owners' notices only once its writes are done, so their
/// findings are still open. The restart closes them as revoked (not "key deleted", which the
/// listing would say) and tells their owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_deletes_went_through_still_closes_their_findings_as_revoked() {
    let w = World::new(Knobs::default()).await;
    let (code, out) = run_once(&w, T1).await;
    assert_eq!(code, Some(0), "{out}");

    // acme deletes in (project, key) order: key_a0 and key_f000 go through, key_f100 hangs
    // without taking effect.
    let id = w.acme.faults().add(
        Fault::on_delete_key(PROJ_F, DUE_F[1])
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(120))),
    );
    kill_run_once_at(&w, id).await;
    let gone = [DUE_A, DUE_F[0]];
    for key in gone {
        assert!(
            !w.exists("acme", key_project(key), key),
            "{key} was not deleted"
        );
        let f = w.finding(key);
        assert!(
            f.stage.is_open(),
            "{key}'s finding was closed before the kill"
        );
    }

    // A `run --once --now` far in the future finished a sweep meanwhile: the deletes that
    // follow it in real time are still looked at.
    let db = rusqlite::Connection::open(w.state_path()).unwrap();
    db.execute(
        "INSERT INTO sweeps (run_id, organization, started_at, finished_at, status)
         VALUES ('future', 'acme', ?1, ?1, 'completed')",
        [T2 + 365 * DAY],
    )
    .unwrap();
    drop(db);
    w.acme.faults().clear();
    let (code, out) = run_once(&w, T2).await;
    assert_eq!(code, Some(0), "{out}");
    let findings = w.findings();
    let hook = w.hook.as_ref().unwrap();
    let revoked_notices: Vec<String> = (hook.requests("/hook").iter())
        .map(|r| r.json())
        .filter(|v| v["type"] == "keysweep.notices.revoked")
        .map(|v| v.to_string())
        .collect();
    for key in gone {
        let f = findings.iter().find(|f| f.id.key_id == key).unwrap();
        assert_eq!(f.stage.as_str(), "revoked", "{key}: {:?}", f.resolution);
        assert!(
            revoked_notices.iter().any(|n| n.contains(key)),
            "no revoked notice for {key}"
        );
    }
    for (org, project, key) in World::due_keys() {
        assert!(!w.exists(org, project, key), "{key} survived the restart");
    }
    w.assert_audit_verifies();
    w.assert_every_message_delivered();
}

fn key_project(key: &str) -> &'static str {
    if key == DUE_A { PROJ_A } else { PROJ_F }
}
