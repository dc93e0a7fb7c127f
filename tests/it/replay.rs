//! Issue 13, "Done when": what keysweep announces is what it does. Successive enforce sweeps
//! run against the simulated Administration API, the sweep's `now` and the simulator's clock
//! moved together; every notice goes to real receivers (a webhook receiver for the team and ops
//! channel, a real SMTP server with STARTTLS and AUTH for owners) and is read back as a person
//! or a webhook consumer reads it: the title, the key's status line, its deadline. What each
//! message announced is then compared, key by key, with what later sweeps did to the key in the
//! simulator (deleted, its expiry set, left alone).
//!
//! Run on the demo organisation with the demo's policies (`config/demo.toml`), and on a
//! generated organisation whose revocations a small per-run cap spreads over several sweeps.
//! These tests talk only to loopback and never sleep to wait for anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keysweep::metrics::Metrics;
use keysweep::sim::{SimOrg, SimServer};
use keysweep::state::Store;
use keysweep::sweep::{SweepOptions, Sweeper};

use crate::support::config::config_from_toml;
use crate::support::receivers::Receiver;
use crate::support::smtp_server::{self, SmtpServer, TestPki};
use crate::support::time::{DAY, unix_now};

const ADMIN_KEY: &str = "sk-admin-REPLAY-3c1d7e99aa-DO-NOT-LEAK";
const SMTP_USER: &str = "keysweep-replay";
const SMTP_PASSWORD: &str = "replay-smtp-password-do-not-leak";
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// How far an expiry read back may be from the deadline announced: the simulator times the
/// update itself, a moment after the client computed `expires_in_seconds`.
const SLACK: i64 = 5;

/// One key as a message told it.
#[derive(Debug, Clone)]
struct Told {
    sweep: usize,
    kind: String,
    project: String,
    key: String,
    status: String,
    deadline: Option<i64>,
}

/// What one message claimed in its title: a count per verb, and the keys it listed.
#[derive(Debug)]
struct Message {
    sweep: usize,
    title: String,
    keys: BTreeSet<(String, String)>,
    /// The keys listed with the status each got (a key may be listed under two policies).
    statuses: Vec<((String, String), String)>,
    /// E-mail only: each project header's key count, and the keys listed under it.
    headers: Vec<(usize, usize)>,
}

/// What the sweeps did to a key, seen in the simulator after each sweep.
#[derive(Debug, Default, Clone)]
struct Fate {
    /// The sweep after which the key was gone.
    deleted_in: Option<usize>,
    /// Its expiry before the first sweep and at the end.
    expires_before: Option<i64>,
    expires_after: Option<i64>,
    /// Its expiry after each sweep (`None` once deleted).
    expires_seen: Vec<Option<i64>>,
}

struct Replay {
    sim: SimServer,
    hook: Receiver,
    smtp: SmtpServer,
    sweeper: Sweeper,
    _dir: tempfile::TempDir,
    _pki: TestPki,
    /// Sweep times, in order.
    times: Vec<i64>,
    /// The sweep's clock minus the wall clock, at each sweep: an expiry is written against the
    /// wall clock (`expires_in_seconds = target − wall clock`) and the simulator adds that to
    /// its own clock, which the replay moved ahead; a write in a later sweep lands that much
    /// after its target.
    offsets: Vec<i64>,
    told: Vec<Told>,
    messages: Vec<Message>,
    fates: BTreeMap<(String, String), Fate>,
    hook_seen: usize,
    mail_seen: usize,
}

/// The demo's configuration, in enforce mode, with its two channels pointed at real receivers:
/// `security-team` (policies and ops alerts) a signed webhook, `owners` e-mail over STARTTLS.
fn config_text(
    sim: &SimServer,
    db: &std::path::Path,
    hook: &Receiver,
    smtp: &SmtpServer,
    pki: &TestPki,
    safety: Option<&str>,
) -> String {
    let head = DEMO_CONFIG
        .split("# In the demo, messages are rendered")
        .next()
        .unwrap()
        .replace("mode = \"dry-run\"", "mode = \"enforce\"")
        .replace("http://127.0.0.1:8089/v1", &sim.base_url())
        .replace(
            "\"keysweep-demo.db\"",
            &format!("{:?}", db.display().to_string()),
        );
    let head = match safety {
        Some(s) => {
            let cut = head.find("[safety]").unwrap();
            format!("{}{s}\n", &head[..cut])
        }
        None => head,
    };
    format!(
        "{head}\n[notifications]\nrepeat_interval = \"2d\"\n\n\
         [[channels]]\nname = \"security-team\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         secret_env = \"REPLAY_WEBHOOK_SECRET\"\n\n\
         [[channels]]\nname = \"owners\"\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\n\
         smtp_port = {}\nsmtp_tls = \"starttls\"\nsmtp_ca_file = \"{}\"\n\
         smtp_username_env = \"REPLAY_SMTP_USER\"\nsmtp_password_env = \"REPLAY_SMTP_PASSWORD\"\n\
         from = \"keysweep@acme.example\"\nowner = true\n",
        hook.url("/team"),
        smtp.port,
        pki.ca_pem.display()
    )
}

impl Replay {
    async fn start(org: SimOrg, safety: Option<&str>, revoke_only: bool) -> Replay {
        let sim = crate::support::sim::start_sim(org, ADMIN_KEY).await;
        let hook = Receiver::start().await;
        let pki = TestPki::new();
        let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        let mut text = config_text(&sim, &dir.path().join("s.db"), &hook, &smtp, &pki, safety);
        if revoke_only {
            // Expiries are written against the wall clock, which a replay of weeks does not move:
            // a later sweep's write would land off by the replay's offset.
            text = text.replace("action = \"expire\"", "action = \"revoke\"");
        }
        let secret = crate::support::secrets::whsec(b"replay-webhook-signing-key-0123");
        let config = config_from_toml(
            &text,
            &[
                ("OPENAI_ADMIN_KEY", ADMIN_KEY),
                ("REPLAY_SMTP_USER", SMTP_USER),
                ("REPLAY_SMTP_PASSWORD", SMTP_PASSWORD),
                ("REPLAY_WEBHOOK_SECRET", secret.as_str()),
            ],
        );
        let store = Store::open(&config.state_path).unwrap();
        let sweeper = Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap();
        let mut fates = BTreeMap::new();
        for p in sim.org().projects {
            for k in sim.keys(&p.id) {
                fates.insert(
                    (p.id.clone(), k.id.clone()),
                    Fate {
                        expires_before: k.expires_at,
                        ..Fate::default()
                    },
                );
            }
        }
        Replay {
            sim,
            hook,
            smtp,
            sweeper,
            _dir: dir,
            _pki: pki,
            times: Vec::new(),
            offsets: Vec::new(),
            told: Vec::new(),
            messages: Vec::new(),
            fates,
            hook_seen: 0,
            mail_seen: 0,
        }
    }

    /// One sweep at `t`, on both clocks, then reads what it delivered and what it did.
    async fn sweep(&mut self, t: i64) {
        self.sim.set_clock(t);
        self.offsets.push(t - unix_now());
        let report = self.sweeper.run_once(&SweepOptions::new(t)).await.unwrap();
        assert!(report.complete(), "sweep at {t} was incomplete");
        assert_eq!(
            report.delivery.failed + report.delivery.dead,
            0,
            "every message delivered"
        );
        let i = self.times.len();
        self.times.push(t);
        self.read_webhooks(i);
        self.read_mail(i);
        for ((project, key), fate) in &mut self.fates {
            let now = self.sim.key(project, key);
            if now.is_none() && fate.deleted_in.is_none() {
                fate.deleted_in = Some(i);
            }
            fate.expires_seen
                .push(now.as_ref().and_then(|k| k.expires_at));
            if let Some(k) = now {
                fate.expires_after = k.expires_at;
            }
        }
    }

    fn read_webhooks(&mut self, sweep: usize) {
        let requests = self.hook.requests("/team");
        for r in &requests[self.hook_seen..] {
            let body = r.json();
            let notices = body["notices"].as_array().cloned().unwrap_or_default();
            if notices.is_empty() {
                continue;
            }
            let mut m = Message {
                sweep,
                title: body["title"].as_str().unwrap().to_string(),
                keys: BTreeSet::new(),
                statuses: Vec::new(),
                headers: Vec::new(),
            };
            for n in notices {
                let id = (
                    n["project_id"].as_str().unwrap().to_string(),
                    n["key_id"].as_str().unwrap().to_string(),
                );
                let status = n["status"].as_str().unwrap().to_string();
                m.keys.insert(id.clone());
                m.statuses.push((id.clone(), status.clone()));
                self.told.push(Told {
                    sweep,
                    kind: n["kind"].as_str().unwrap().to_string(),
                    project: id.0,
                    key: id.1,
                    status,
                    deadline: n["deadline_unix"]
                        .as_i64()
                        .filter(|_| !n["deadline"].is_null()),
                });
            }
            self.messages.push(m);
        }
        self.hook_seen = requests.len();
    }

    /// The owners' e-mails: the text part read block by block (`Status` … `Key id`), the
    /// project headers' key counts checked against the blocks under them.
    fn read_mail(&mut self, sweep: usize) {
        let mails = self.smtp.messages();
        for r in &mails[self.mail_seen..] {
            let parsed = mail_parser::MessageParser::default()
                .parse(&r.data[..])
                .unwrap();
            let subject = parsed.subject().unwrap().to_string();
            let text = parsed.body_text(0).unwrap().to_string();
            let m = mail_message(sweep, &subject, &text);
            if !m.keys.is_empty() {
                self.messages.push(m);
            }
        }
        self.mail_seen = mails.len();
    }
}

/// Reads one notice e-mail's text part.
fn mail_message(sweep: usize, subject: &str, text: &str) -> Message {
    let mut m = Message {
        sweep,
        title: subject.trim_start_matches("[keysweep] ").to_string(),
        keys: BTreeSet::new(),
        statuses: Vec::new(),
        headers: Vec::new(),
    };
    let mut header: Option<(usize, BTreeSet<String>)> = None;
    let mut project = String::new();
    let mut status = String::new();
    for line in text.lines() {
        if line.starts_with("Project ") && line.contains(" — organization ") {
            if let Some((n, keys)) = header.take() {
                m.headers.push((n, keys.len()));
            }
            let count = line.rsplit(" — ").next().unwrap();
            let n: usize = count.split(' ').next().unwrap().parse().unwrap();
            header = Some((n, BTreeSet::new()));
            let label = line
                .trim_start_matches("Project ")
                .split(" — ")
                .next()
                .unwrap();
            // `name (proj_…)` or the id alone.
            project = match label.rsplit_once(" (") {
                Some((_, id)) => id.trim_end_matches(')').to_string(),
                None => label.to_string(),
            };
        }
        let field = line.trim_start();
        if let Some(v) = field.strip_prefix("Status ") {
            status = v.trim().to_string();
        }
        if let Some(v) = field.strip_prefix("Key id ") {
            let key = v.trim().to_string();
            if let Some((_, keys)) = &mut header {
                keys.insert(key.clone());
            }
            m.keys.insert((project.clone(), key.clone()));
            m.statuses.push(((project.clone(), key), status.clone()));
        }
    }
    if let Some((n, keys)) = header.take() {
        m.headers.push((n, keys.len()));
    }
    m
}

/// A title of a warning, reminder or final notice (the ones that announce).
fn is_notice_title(title: &str) -> bool {
    ["violate", "Final notice", "Reminder"]
        .iter()
        .any(|w| title.contains(w))
}

/// What a title claims: (how many keys, verb), the verb as the reader reads it.
fn title_claims(title: &str) -> (usize, Vec<(usize, &'static str)>) {
    let title = title.split(" (part ").next().unwrap();
    let body = title
        .trim_start_matches("Final notice: ")
        .trim_start_matches("Reminder: ");
    let n: usize = body.split(' ').next().unwrap().parse().unwrap();
    let rest = body.split_once(" API key").unwrap().1;
    let verb = |s: &str| {
        if s.contains("will be revoked") {
            Some("revoke")
        } else if s.contains("expiry") || s.contains("end at the deadline") {
            Some("expire")
        } else if s.contains("only reported") {
            Some("reported")
        } else if s.contains("postponed") {
            Some("postponed")
        } else {
            None
        }
    };
    let mut claims = Vec::new();
    if let Some((_, list)) = rest.split_once("; ").or_else(|| rest.split_once(": ")) {
        for part in list.split(", ") {
            let count: usize = part.split(' ').next().unwrap().parse().unwrap();
            claims.extend(verb(part).map(|v| (count, v)));
        }
    } else if let Some(v) = verb(rest) {
        claims.push((n, v));
    }
    (n, claims)
}

impl Replay {
    /// Every key's fate and every message's claims, compared.
    fn check(&self) {
        for m in &self.messages {
            self.check_message(m);
        }
        for t in &self.told {
            self.check_told(t);
        }
        for m in &self.messages {
            self.check_count(m);
        }
        self.check_no_contradiction();
        // Every key keysweep deleted was announced as "will be revoked" before, in a warning
        // or a final notice.
        for (id, fate) in &self.fates {
            let Some(i) = fate.deleted_in else { continue };
            let announced = self.told.iter().any(|t| {
                (t.project.as_str(), t.key.as_str()) == (id.0.as_str(), id.1.as_str())
                    && t.sweep <= i
                    && t.kind == "final_notice"
                    && t.status.starts_with("will be revoked at")
            });
            assert!(
                announced,
                "{id:?} deleted in sweep {i} without a final notice saying so"
            );
        }
    }

    fn fate(&self, project: &str, key: &str) -> &Fate {
        &self.fates[&(project.to_string(), key.to_string())]
    }

    /// The title counts distinct keys, and each verb's count is the number of listed keys the
    /// sweeps then treated that way.
    fn check_message(&self, m: &Message) {
        if !is_notice_title(&m.title) {
            return;
        }
        let (_, claims) = title_claims(&m.title);
        for (count, verb) in claims {
            let actual = m
                .keys
                .iter()
                .filter(|(p, k)| {
                    let f = self.fate(p, k);
                    match verb {
                        "revoke" => f.deleted_in.is_some(),
                        "expire" => f.deleted_in.is_none() && f.expires_after.is_some(),
                        "reported" => f.deleted_in.is_none() && f.expires_after == f.expires_before,
                        _ => true,
                    }
                })
                .count();
            let fates: Vec<_> = m
                .statuses
                .iter()
                .map(|(id, s)| (id, s, self.fate(&id.0, &id.1)))
                .filter(|(_, s, f)| s.starts_with("will be revoked") != f.deleted_in.is_some())
                .collect();
            assert!(
                actual >= count && (verb != "revoke" || count == self.revoke_told(m)),
                "sweep {}: {:?} claims {count} {verb}, but {actual} listed keys were: {fates:#?}",
                m.sweep,
                m.title
            );
        }
    }

    /// The title's count is the number of distinct keys listed (the project headers' counts
    /// are checked as the e-mails are read).
    fn check_count(&self, m: &Message) {
        if !is_notice_title(&m.title) {
            return;
        }
        let (n, _) = title_claims(&m.title);
        assert_eq!(
            n,
            m.keys.len(),
            "{:?} counts its keys: {:?}",
            m.title,
            m.keys
        );
        for (said, listed) in &m.headers {
            assert_eq!(
                said, listed,
                "{:?}: a project header counts its keys",
                m.title
            );
        }
    }

    /// Listed keys whose own status says "will be revoked".
    fn revoke_told(&self, m: &Message) -> usize {
        let keys: BTreeSet<&(String, String)> = m
            .statuses
            .iter()
            .filter(|(_, s)| s.starts_with("will be revoked"))
            .map(|(id, _)| id)
            .collect();
        keys.len()
    }

    /// One key's status line against its fate.
    fn check_told(&self, t: &Told) {
        let f = self.fate(&t.project, &t.key);
        let what = format!(
            "sweep {} ({}) told {}/{}: {:?}",
            t.sweep, t.kind, t.project, t.key, t.status
        );
        let s = t.status.as_str();
        if s.starts_with("will be revoked at") {
            self.check_revoke(t, f, &what);
        } else if s.starts_with("the expiry is set to")
            || s.starts_with("the expiry is already set")
        {
            self.check_expiry(t, f, &what);
        } else if s.starts_with("the key already expires at")
            || s.starts_with("notification only: service-account keys")
        {
            assert!(f.deleted_in.is_none(), "{what}, but it was deleted");
            assert_eq!(
                f.expires_after, f.expires_before,
                "{what}, but its expiry changed"
            );
        } else if s.starts_with("postponed:") {
            assert!(s.contains("safety."), "{what}: names no setting");
            assert_ne!(
                f.deleted_in,
                Some(t.sweep),
                "{what}, but it was deleted in that sweep"
            );
        } else if s.starts_with("revoked at") {
            assert_eq!(f.deleted_in, Some(t.sweep), "{what}");
        }
    }

    /// "will be revoked at D": deleted, at or after the earliest deadline announced for the key
    /// (another policy's may come first), and every sweep from then on that did not delete it
    /// said it postponed.
    fn check_revoke(&self, t: &Told, f: &Fate, what: &str) {
        let i = f
            .deleted_in
            .unwrap_or_else(|| panic!("{what}, but it was never deleted"));
        let deadline = self
            .told
            .iter()
            .filter(|o| (&o.project, &o.key) == (&t.project, &t.key))
            .filter(|o| o.status.starts_with("will be revoked at"))
            .filter_map(|o| o.deadline)
            .min()
            .unwrap();
        assert!(
            self.times[i] >= deadline,
            "{what}, deleted before the deadline"
        );
        for (j, &tj) in self.times.iter().enumerate().take(i).skip(t.sweep) {
            if tj >= deadline {
                assert!(
                    self.told_kind(j, &t.project, &t.key, "postponed"),
                    "{what}; due in sweep {j} but neither deleted nor postponed"
                );
            }
        }
    }

    /// "the expiry is (already) set to D": not deleted, and right after the sweep that wrote
    /// it, its expiry is D, give or take where the wall clock was then (see
    /// [`Replay::offsets`]; a later sweep finds it off by that much and writes it again, further
    /// off each time, so only the first write can be compared).
    fn check_expiry(&self, t: &Told, f: &Fate, what: &str) {
        assert!(f.deleted_in.is_none(), "{what}, but it was deleted");
        let deadline = t.deadline.unwrap();
        // The sweep that wrote it: the first to say it is set.
        let wrote = self
            .told
            .iter()
            .find(|o| {
                (&o.project, &o.key) == (&t.project, &t.key)
                    && o.status.starts_with("the expiry is set to")
            })
            .map_or(t.sweep, |o| o.sweep);
        let at = f.expires_seen[wrote].unwrap_or_else(|| panic!("{what}, but it has no expiry"));
        let lands = |target: i64| (target - 1..=target + SLACK).contains(&at);
        assert!(
            lands(deadline) || lands(deadline + self.offsets[wrote]),
            "{what}, expiry is {at}"
        );
    }

    fn told_kind(&self, sweep: usize, project: &str, key: &str, kind: &str) -> bool {
        self.told
            .iter()
            .any(|t| t.sweep == sweep && t.project == project && t.key == key && t.kind == kind)
    }

    /// No key gets a reminder in the sweep that revokes it.
    fn check_no_contradiction(&self) {
        for t in self.told.iter().filter(|t| t.kind == "revoked") {
            assert!(
                !self.told_kind(t.sweep, &t.project, &t.key, "reminder"),
                "sweep {}: {}/{} reminded and revoked",
                t.sweep,
                t.project,
                t.key
            );
        }
    }
}

/// Sweep times: days after the first sweep, a little past each deadline so that a sweep at
/// the deadline is at or after it.
fn schedule(start: i64, days: &[i64]) -> Vec<i64> {
    days.iter()
        .map(|d| start + d * DAY + if *d > 0 { 120 } else { 0 })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_the_demo_organisation_what_was_announced_is_what_happened() {
    let now = unix_now();
    let mut r = Replay::start(SimOrg::demo(now), None, false).await;
    for t in schedule(now, &[0, 3, 6, 7, 8, 13, 14, 16, 21]) {
        r.sweep(t).await;
    }
    // The service-account key the issue names is announced, never written to.
    assert!(
        r.told.iter().any(|t| t
            .status
            .starts_with("notification only: service-account keys")),
        "no service-account key was told it is only reported"
    );
    assert!(
        r.fates.values().any(|f| f.deleted_in.is_some()),
        "nothing was revoked"
    );
    r.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_a_generated_organisation_under_a_small_cap_postpones_and_says_so() {
    let now = unix_now();
    let org = SimOrg::generate(3, 14, 13, now);
    // The demo's policies, `rotate-90d` revoking; a cap of 5 a run spreads the revocations over
    // several sweeps.
    let safety = "[safety]\nmax_revocations_per_run = 5\nmax_revocations_per_project_percent = 100\n\
                  max_revocations_per_day = 1000\n";
    let mut r = Replay::start(org, Some(safety), true).await;
    let days = [
        0, 3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 28,
    ];
    for t in schedule(now, &days) {
        r.sweep(t).await;
    }
    r.check();
    assert!(
        r.told.iter().any(|t| t.kind == "postponed"),
        "the cap never postponed anything: the test would prove nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_under_the_kill_switch_nothing_is_announced_as_revoked_and_nothing_is() {
    let now = unix_now();
    let switch = tempfile::tempdir().unwrap();
    let file = switch.path().join("STOP");
    std::fs::write(&file, "stop").unwrap();
    let safety = format!(
        "[safety]\nmax_revocations_per_run = 1000\nmax_revocations_per_project_percent = 100\n\
         max_revocations_per_day = 1000\nkill_switch_file = {:?}\n",
        file.display().to_string()
    );
    let mut r = Replay::start(SimOrg::generate(2, 10, 29, now), Some(&safety), true).await;
    for t in schedule(now, &[0, 6, 7, 8, 14, 15]) {
        r.sweep(t).await;
    }
    assert!(r.fates.values().all(|f| f.deleted_in.is_none()));
    let said: Vec<&Told> = r
        .told
        .iter()
        .filter(|t| t.status.contains("will be revoked") || t.status.contains("revoked at"))
        .collect();
    assert!(
        said.is_empty(),
        "announced revocations under the kill switch: {said:#?}"
    );
    assert!(
        r.told
            .iter()
            .any(|t| t.status.contains("safety.kill_switch_file")),
        "no status names the kill switch"
    );
    r.check();
}
