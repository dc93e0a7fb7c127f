//! The plan a person can act on: for one finding, what keysweep does next and when (warn, final
//! notice, remind, expire, revoke), how the key ends (`revoke`, `expire`, `rotate` — the owner
//! must, keysweep will not — or `nothing`), and what withholds it, named by the configuration
//! key a person would change (`safety.max_revocations_per_run`, `safety.service_account_keys`,
//! `mode`, `exemptions[2]`, …), never by an internal code.
//!
//! [`next_step`] is the ONE place that derives it, from the finding as the sweep (or `scan`'s
//! preview) left it and the revocation plan's word on it; `scan`, `run --once` and the demo all
//! go through it. Pure: no I/O, no clock (`now` is passed in), and it must never decide anything
//! the sweep does not — it only reads the sweep's own decision back.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{Action, Config, Mode, ServiceAccountKeys};
use crate::daemon::schedule::{Cadence, effective_schedule};
use crate::policy::finding::{Finding, FindingId, Stage};
use crate::policy::plan::{Plan, Withheld, Write, verdict};
use crate::policy::rules::Policies;
use crate::policy::verdict::{NotifyOnlyBy, Rules, Verdict, withheld_config_key};
use crate::timefmt::rfc3339;

/// What the plan knows besides the finding: the rules in force and whether this is a read-only
/// preview (`scan`), where nothing the preview decided has been sent or written yet.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    /// `scan`: the preview's transitions are what the *next* sweep will do.
    pub read_only: bool,
    /// `mode = "dry-run"` (or `--dry-run`).
    pub dry_run: bool,
    /// `[safety] service_account_keys = "enforce"`.
    pub service_account_keys_enforced: bool,
    /// The `[safety] kill_switch_file` exists now.
    pub kill_switch_on: bool,
    /// Each policy's `final_notice`, in seconds.
    pub final_notice: HashMap<String, i64>,
    /// `notifications.repeat_interval` in seconds (0: no reminders).
    pub repeat_interval: i64,
    /// `(organization, project, key)` → the `[[exemptions]]` entry that covers the key.
    pub exemptions: HashMap<(String, String, String), usize>,
    /// Each organisation's schedule: which sweep sends a final notice.
    pub cadences: HashMap<String, Cadence>,
}

impl PlanContext {
    /// The rules the verdict reads, as this context sees them.
    pub fn rules(&self) -> Rules {
        Rules {
            mode: if self.dry_run {
                Mode::DryRun
            } else {
                Mode::Enforce
            },
            service_account_keys: if self.service_account_keys_enforced {
                ServiceAccountKeys::Enforce
            } else {
                ServiceAccountKeys::NotifyOnly
            },
            kill_switch: self.kill_switch_on,
        }
    }

    /// The context of `config`; `force_dry_run` is `--dry-run`.
    pub fn from_config(config: &Config, read_only: bool, force_dry_run: bool) -> PlanContext {
        PlanContext {
            read_only,
            dry_run: force_dry_run || config.mode == Mode::DryRun,
            service_account_keys_enforced: config.safety.service_account_keys
                == ServiceAccountKeys::Enforce,
            kill_switch_on: false,
            final_notice: config
                .policies
                .iter()
                .map(|p| (p.name.clone(), secs(p.final_notice)))
                .collect(),
            repeat_interval: secs(config.notifications.repeat_interval),
            exemptions: HashMap::new(),
            cadences: (config.organizations.iter())
                .filter_map(|org| {
                    let cadence = Cadence::of(effective_schedule(config, org))?;
                    Some((org.name.clone(), cadence))
                })
                .collect(),
        }
    }

    /// When the final notice of `f`, due at `due`, goes out after `now`: in the last scheduled
    /// sweep before a sweep would come too late (`policy::lifecycle`), else at `due`.
    fn final_notice_at(&self, f: &Finding, due: i64, now: i64) -> i64 {
        (self.cadences.get(&f.id.organization)).map_or(due, |c| c.sweep_sending(due, now))
    }

    /// Records which `[[exemptions]]` entry covers each key the report found exempted, so the
    /// plan can name it (`exemptions[2]`).
    pub fn with_exemptions(
        mut self,
        config: &Config,
        report: &crate::sweep::SweepReport,
        now: i64,
    ) -> PlanContext {
        let Ok(rules) = Policies::compile(&config.policies, &config.exemptions) else {
            return self;
        };
        for (key, _) in &report.exempted {
            if let Some(hit) = rules.evaluate(key, now).exemption {
                let id = (
                    key.organization.clone(),
                    key.project_id.clone(),
                    key.id.clone(),
                );
                self.exemptions.insert(id, hit.index);
            }
        }
        self
    }

    /// The exemption entry that covers a key, as the configuration names it.
    pub fn exemption_key(&self, organization: &str, project: &str, key: &str) -> String {
        let id = (organization.into(), project.into(), key.into());
        self.exemptions
            .get(&id)
            .map_or_else(|| "exemptions".to_string(), |i| format!("exemptions[{i}]"))
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// What the revocation plan of this sweep says about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// Written in this sweep (`scan`: by the next sweep).
    Now(Write),
    /// Due, and withheld by this rail.
    Withheld(Write, Withheld),
    /// Not due.
    NotDue,
}

impl Planned {
    /// The plan's word on each finding it names (the first action naming it), indexed: a
    /// dry-run plan withholds every due key, and a search per finding would be quadratic.
    pub fn index(plan: &Plan) -> HashMap<&FindingId, Planned> {
        let mut out = HashMap::new();
        for a in &plan.revoke {
            for id in &a.findings {
                out.entry(id).or_insert(Planned::Now(a.write));
            }
        }
        for w in &plan.withheld {
            for id in &w.action.findings {
                out.entry(id)
                    .or_insert(Planned::Withheld(w.action.write, w.reason));
            }
        }
        out
    }
}

/// One finding's place in the plan. Times are Unix seconds here; every output writes them in
/// RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextStep {
    /// The finding's stage as a person should read it: `new` in a read-only scan (nothing was
    /// sent yet), else the stored stage (`warned`, `final_notice`, …).
    pub state: String,
    /// `warn`, `final-notice`, `remind`, `expire`, `revoke`, `rotate` or `nothing`.
    pub next: &'static str,
    #[serde(serialize_with = "ser_time")]
    pub next_at: Option<i64>,
    /// How the key ends: `revoke`, `expire` (OpenAI ends it at its expiry), `rotate` (the owner
    /// must; keysweep never writes to it) or `nothing`.
    pub then: &'static str,
    #[serde(serialize_with = "ser_time")]
    pub then_at: Option<i64>,
    /// The configuration key that stops it, if any (or `listing incomplete`).
    pub withheld_by: Option<String>,
    /// One sentence a person can act on.
    pub why: String,
}

fn ser_time<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// The configuration key behind a rail.
pub fn rail_key(w: Withheld) -> &'static str {
    match w {
        Withheld::DryRun => "mode",
        Withheld::IncompleteListing => "listing incomplete",
        Withheld::KillSwitch => "safety.kill_switch_file",
        Withheld::CapPerRun => "safety.max_revocations_per_run",
        Withheld::CapPerProjectPercent => "safety.max_revocations_per_project_percent",
        Withheld::CapPerDay => "safety.max_revocations_per_day",
        Withheld::ServiceAccountNotifyOnly => "safety.service_account_keys",
    }
}

/// What happens next to the key of `f`, and what withholds it: THE derivation (see the module
/// docs). `f` is the finding as the sweep or preview left it at `now`.
pub fn next_step(f: &Finding, planned: Planned, ctx: &PlanContext, now: i64) -> NextStep {
    let preview_closed = ctx.read_only && f.closed_at == Some(now);
    let state = shown_state(f, ctx, now);
    if !f.stage.is_open() {
        let withheld_by = (f.stage == Stage::Exempted)
            .then(|| ctx.exemption_key(&f.id.organization, &f.id.project_id, &f.id.key_id));
        let resolution = f.resolution.as_deref().unwrap_or(f.stage.as_str());
        let why = if preview_closed {
            format!("the next sweep closes the finding ({resolution}) and tells the owner")
        } else {
            format!("closed: {resolution}")
        };
        return step(state, "nothing", None, ("nothing", None), withheld_by, why);
    }
    let end = ending(f, ctx);
    match planned {
        Planned::Now(w) => due_step(f, w, None, ctx, now, state),
        Planned::Withheld(w, rail) => due_step(f, w, Some(rail), ctx, now, state),
        Planned::NotDue => {
            let new = ctx.read_only && f.detected_at == now && f.warned_at == Some(now);
            let fn_secs = ctx.final_notice.get(&f.id.policy).copied().unwrap_or(0);
            let (next, at) = if new {
                ("warn", Some(now))
            } else if f.action.enforces()
                && (f.final_notice_at.is_none() || f.final_notice_at == Some(now) && ctx.read_only)
            {
                let due = f.deadline.saturating_sub(fn_secs);
                let at = if f.final_notice_at == Some(now) {
                    now
                } else {
                    ctx.final_notice_at(f, due, now).max(now)
                };
                ("final-notice", Some(at))
            } else if f.action == Action::Notify && ctx.repeat_interval > 0 {
                let last = f.last_notified_at.or(f.warned_at).unwrap_or(f.detected_at);
                (
                    "remind",
                    Some(last.saturating_add(ctx.repeat_interval).max(now)),
                )
            } else {
                end.would
            };
            step(
                state,
                next,
                at,
                (end.then, end.then_at),
                end.withheld_by,
                end.why,
            )
        }
    }
}

/// A due write: made by this sweep (`scan`: due for the next one), or withheld by `rail`.
fn due_step(
    f: &Finding,
    w: Write,
    rail: Option<Withheld>,
    ctx: &PlanContext,
    now: i64,
    state: String,
) -> NextStep {
    let (verb, then_at) = written(w, now);
    let Some(rail) = rail else {
        let what = match w {
            Write::Delete => "revokes the key".to_string(),
            Write::SetExpiry { to } => format!("sets the expiry to {}", rfc3339(to)),
        };
        if ctx.read_only {
            let why = format!("due: the next sweep {what}");
            return step(state, verb, Some(now), (verb, then_at), None, why);
        }
        // This sweep made the write; its outcome is among the sweep's results.
        return step(
            state,
            verb,
            then_at,
            (verb, then_at),
            None,
            format!("this sweep {what}"),
        );
    };
    let why = match w {
        Write::Delete => format!("due since {}: would revoke it now", rfc3339(f.deadline)),
        Write::SetExpiry { to } => format!("would set the expiry to {} now", rfc3339(to)),
    };
    // A cap or an incomplete listing only postpones it; the other rails stop it.
    let stops = matches!(
        rail,
        Withheld::DryRun | Withheld::KillSwitch | Withheld::ServiceAccountNotifyOnly
    );
    let then = if stops { "nothing" } else { verb };
    let by = Some(rail_key(rail).to_string());
    step(state, verb, Some(now), (then, None), by, why)
}

/// How an open finding's key ends if nothing changes.
struct Ending {
    /// What keysweep would do next at the deadline were nothing in the way.
    would: (&'static str, Option<i64>),
    then: &'static str,
    then_at: Option<i64>,
    withheld_by: Option<String>,
    why: String,
}

fn ending(f: &Finding, ctx: &PlanContext) -> Ending {
    let deadline = rfc3339(f.deadline);
    let would = match f.action {
        Action::Notify => ("rotate", None),
        Action::Revoke => ("revoke", Some(f.deadline)),
        Action::Expire => ("expire", Some(f.deadline)),
    };
    let end = |then, then_at, withheld_by: Option<&str>, why: String| Ending {
        would,
        then,
        then_at,
        withheld_by: withheld_by.map(str::to_string),
        why,
    };
    if f.action == Action::Notify {
        return end(
            "rotate",
            None,
            None,
            "action = notify: keysweep only reminds; the owner must rotate the key".into(),
        );
    }
    let verb = if f.action == Action::Revoke {
        "revoke"
    } else {
        "expire"
    };
    // The verdict is the one decision notices and counts read; the plan only words it.
    let rail = |key: &str, what: &str| {
        end(
            "nothing",
            None,
            Some(key),
            format!("would {verb} at {deadline}, but {what}"),
        )
    };
    match verdict(f, &ctx.rules(), None) {
        // Nothing is written at the deadline: what comes next is the owner's rotation.
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::ExpiryRefused,
        } => Ending {
            would: ("rotate", None),
            ..end("rotate", None, None, refused_why(f, &deadline))
        },
        Verdict::NotifyOnly { by } => {
            rail(by.config_key(), "a service-account key is only reported")
        }
        Verdict::Postponed { by } => rail(withheld_config_key(by), "the kill switch is on"),
        Verdict::WouldRevoke | Verdict::WouldExpire => rail("mode", "dry-run only announces it"),
        // keysweep writes nothing: the key's own expiry, before the deadline, is what comes.
        Verdict::Ends => Ending {
            would: ("expire", f.expires_at.at()),
            ..end(
                "expire",
                f.expires_at.at(),
                None,
                "the key's own expiry ends it first; keysweep writes nothing".into(),
            )
        },
        // `verdict` never gives these (`verdict_rotating` does): an expire, as the plan sees it.
        Verdict::Expire
        | Verdict::Revoke
        | Verdict::Rotate { .. }
        | Verdict::WouldRotate { .. } => match f.expiry.set {
            Some(set) => end(
                "expire",
                Some(set.to),
                None,
                "expiry set by keysweep: OpenAI ends the key then".into(),
            ),
            None => end(
                verb,
                Some(f.deadline),
                None,
                format!("{verb} at the deadline unless rotated first"),
            ),
        },
    }
}

/// Why a finding whose expiry the organisation refused ends with the owner's rotation.
fn refused_why(f: &Finding, deadline: &str) -> String {
    let refused = f.expiry.refused.as_deref().unwrap_or("refused");
    format!("the organisation refused the expiry ({refused}): rotate before {deadline}")
}

fn written(w: Write, now: i64) -> (&'static str, Option<i64>) {
    match w {
        Write::Delete => ("revoke", Some(now)),
        Write::SetExpiry { to } => ("expire", Some(to)),
    }
}

/// `step` for a key under `action = "rotate"` whose rotation starts at `start` (deadline −
/// overlap): a new key goes to the sink, then the old key expires at `deadline`. The rails the
/// verdict named (mode, the service-account rule, the kill switch) still hold it back, and a
/// warning or final notice due before `start` still comes first. A rotation already due is
/// shown at `now`, the next sweep's, not at a start that has passed.
pub fn rotation_step(step: NextStep, start: i64, deadline: i64, now: i64) -> NextStep {
    let when = format!(
        "rotate at {} (deadline {})",
        rfc3339(start),
        rfc3339(deadline)
    );
    if step.next == "nothing" || step.withheld_by.is_some() {
        let why = match &step.withheld_by {
            Some(by) => format!("would {when}, but {by} withholds it"),
            None => format!("{when}: {}", step.why),
        };
        return NextStep { why, ..step };
    }
    let start = start.max(now);
    let told_first = matches!(step.next, "warn" | "final-notice" | "remind")
        && step.next_at.is_some_and(|at| at < start);
    // THEN keeps how the key ends (its expiry at the deadline); `rotate` there would mean the
    // owner must rotate, and keysweep does it here.
    if told_first {
        return NextStep {
            then: "expire",
            then_at: Some(deadline),
            why: format!(
                "{} first, then {when}: a new key goes to the sink, then the old key expires",
                step.next
            ),
            ..step
        };
    }
    NextStep {
        next: "rotate",
        next_at: Some(start),
        then: "expire",
        then_at: Some(deadline),
        why: format!("{when}: a new key goes to the sink, then the old key expires"),
        ..step
    }
}

/// A step where nothing happens to the key, for `withheld_by` (if any) and `why`.
pub fn nothing(state: &str, withheld_by: Option<String>, why: String) -> NextStep {
    step(
        state.into(),
        "nothing",
        None,
        ("nothing", None),
        withheld_by,
        why,
    )
}

fn step(
    state: String,
    next: &'static str,
    next_at: Option<i64>,
    (then, then_at): (&'static str, Option<i64>),
    withheld_by: Option<String>,
    why: String,
) -> NextStep {
    NextStep {
        state,
        next,
        next_at,
        then,
        then_at,
        withheld_by,
        why,
    }
}

/// The stage a person should read: in a read-only scan, the stage before the preview's step
/// (nothing it decided was sent), `new` for a finding no sweep has seen.
fn shown_state(f: &Finding, ctx: &PlanContext, now: i64) -> String {
    if !ctx.read_only {
        return f.stage.as_str().into();
    }
    if f.detected_at == now && f.warned_at == Some(now) {
        return "new".into();
    }
    let moved_now = f.closed_at == Some(now) || f.final_notice_at == Some(now);
    if !moved_now {
        return f.stage.as_str().into();
    }
    match f.final_notice_at {
        Some(t) if t < now => Stage::FinalNotice.as_str().into(),
        _ => Stage::Warned.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Expiry, OwnerType};
    use crate::policy::finding::ExpiryState;

    const NOW: i64 = 1_796_000_000;
    const DAY: i64 = 86_400;

    /// A `revoke` finding on a user key, warned 3 days ago, due in 4.
    fn warned() -> Finding {
        Finding {
            id: FindingId {
                organization: "acme".into(),
                project_id: "proj_1".into(),
                key_id: "key_1".into(),
                policy: "old".into(),
            },
            project_name: None,
            key_name: "ci".into(),
            redacted_value: "sk-…abc".into(),
            owner_type: OwnerType::User,
            owner: "dana@example.com".into(),
            owner_email: None,
            created_at: NOW - 400 * DAY,
            last_used_at: None,
            last_used_unknown: false,
            expires_at: Expiry::Never,
            action: Action::Revoke,
            reason: "older than 90d".into(),
            stage: Stage::Warned,
            detected_at: NOW - 3 * DAY,
            deadline: NOW + 4 * DAY,
            warned_at: Some(NOW - 3 * DAY),
            final_notice_at: None,
            last_notified_at: Some(NOW - 3 * DAY),
            closed_at: None,
            resolution: None,
            dry_run_noted_at: None,
            warned_dry_run: false,
            final_notice_dry_run: false,
            withheld: None,
            rotation_withheld: None,
            expiry: ExpiryState::default(),
        }
    }

    /// [`warned`] as a read-only scan sees a finding it detects now.
    fn detected_now() -> Finding {
        Finding {
            detected_at: NOW,
            warned_at: Some(NOW),
            ..warned()
        }
    }

    fn ctx(read_only: bool, dry_run: bool) -> PlanContext {
        PlanContext {
            read_only,
            dry_run,
            final_notice: [("old".to_string(), DAY)].into(),
            repeat_interval: DAY,
            ..PlanContext::default()
        }
    }

    #[test]
    fn a_new_finding_in_a_scan_is_new_and_the_next_sweep_warns() {
        let f = detected_now();
        let s = next_step(&f, Planned::NotDue, &ctx(true, false), NOW);
        assert_eq!(
            (s.state.as_str(), s.next, s.next_at),
            ("new", "warn", Some(NOW))
        );
        assert_eq!((s.then, s.then_at), ("revoke", Some(f.deadline)));
        assert_eq!(s.withheld_by, None);
    }

    #[test]
    fn the_final_notice_comes_first_then_the_revocation_unless_a_rail_stops_it() {
        let s = next_step(&warned(), Planned::NotDue, &ctx(true, false), NOW);
        assert_eq!((s.next, s.next_at), ("final-notice", Some(NOW + 3 * DAY)));
        assert_eq!(s.then, "revoke");
        let s = next_step(&warned(), Planned::NotDue, &ctx(true, true), NOW);
        assert_eq!(
            (s.then, s.withheld_by.as_deref()),
            ("nothing", Some("mode"))
        );
        let sa = Finding {
            owner_type: OwnerType::ServiceAccount,
            ..warned()
        };
        let s = next_step(&sa, Planned::NotDue, &ctx(true, false), NOW);
        assert_eq!(
            s.withheld_by.as_deref(),
            Some("safety.service_account_keys")
        );
        assert_eq!(s.then, "nothing");
    }

    /// Past the final notice, NEXT names what really comes: never a write keysweep will not make
    /// (a key whose own expiry comes first, an expiry the organisation refused).
    #[test]
    fn next_never_names_a_write_the_verdict_rules_out() {
        let noticed = Finding {
            final_notice_at: Some(NOW - DAY / 2),
            ..warned()
        };
        let ends = Finding {
            expires_at: Expiry::At(NOW + 2 * DAY),
            ..noticed.clone()
        };
        let s = next_step(&ends, Planned::NotDue, &ctx(false, false), NOW);
        assert_eq!((s.next, s.next_at), ("expire", Some(NOW + 2 * DAY)));
        let mut refused = Finding {
            action: Action::Expire,
            ..noticed
        };
        refused.expiry.refused = Some("max 30 days".into());
        let s = next_step(&refused, Planned::NotDue, &ctx(false, false), NOW);
        assert_eq!((s.next, s.next_at), ("rotate", None));
        assert_eq!(s.withheld_by, None);
    }

    #[test]
    fn the_final_notice_is_shown_at_the_sweep_that_sends_it() {
        // Daily sweeps at 00:00 UTC; NOW is 00:53:20, so the notice due at NOW + 3 days goes
        // out in that day's 00:00 sweep: the next one, a day later, would bring it too late.
        let mut c = ctx(true, false);
        let daily = crate::config::Schedule {
            cron: "0 0 * * *".into(),
            timezone: chrono_tz::UTC,
            run_on_start: true,
            jitter: std::time::Duration::ZERO,
            retry_failed_after: crate::config::DEFAULT_RETRY_FAILED_AFTER,
        };
        let cadence = Cadence::of(&daily).unwrap_or_else(|| unreachable!());
        c.cadences.insert("acme".into(), cadence);
        let s = next_step(&warned(), Planned::NotDue, &c, NOW);
        assert_eq!(NOW % DAY, 3200);
        assert_eq!(
            (s.next, s.next_at),
            ("final-notice", Some(NOW + 3 * DAY - 3200))
        );
    }

    /// A rotation row keeps the warning (or final notice) that comes before the rotation, and
    /// shows a rotation already due at the next sweep, never at a start that has passed.
    #[test]
    fn a_rotation_comes_after_the_notices_due_before_it_and_never_in_the_past() {
        let s = next_step(&detected_now(), Planned::NotDue, &ctx(true, false), NOW);
        let start = NOW + 3 * DAY;
        let r = rotation_step(s, start, start + DAY, NOW);
        assert_eq!((r.next, r.next_at), ("warn", Some(NOW)));
        assert_eq!((r.then, r.then_at), ("expire", Some(start + DAY)));
        assert!(r.why.starts_with("warn first, then rotate at"), "{}", r.why);
        let noticed = Finding {
            final_notice_at: Some(NOW - DAY),
            ..warned()
        };
        let s = next_step(&noticed, Planned::NotDue, &ctx(false, false), NOW);
        let r = rotation_step(s, NOW - DAY, NOW, NOW);
        assert_eq!((r.next, r.next_at), ("rotate", Some(NOW)));
    }

    #[test]
    fn a_due_revocation_over_a_cap_is_postponed_not_stopped() {
        let f = Finding {
            final_notice_at: Some(NOW - DAY),
            deadline: NOW - 60,
            ..warned()
        };
        let capped = Planned::Withheld(Write::Delete, Withheld::CapPerRun);
        let s = next_step(&f, capped, &ctx(true, false), NOW);
        assert_eq!(s.next, "revoke");
        assert_eq!(s.then, "revoke");
        assert_eq!(
            s.withheld_by.as_deref(),
            Some("safety.max_revocations_per_run")
        );
        let s = next_step(&f, Planned::Now(Write::Delete), &ctx(true, false), NOW);
        assert_eq!(
            (s.next, s.next_at, s.withheld_by),
            ("revoke", Some(NOW), None)
        );
    }

    #[test]
    fn an_exempted_finding_names_its_exemption_entry() {
        let f = Finding {
            stage: Stage::Exempted,
            closed_at: Some(NOW),
            resolution: Some("exempted: SEC-142".into()),
            ..warned()
        };
        let mut c = ctx(true, false);
        c.exemptions
            .insert(("acme".into(), "proj_1".into(), "key_1".into()), 2);
        let s = next_step(&f, Planned::NotDue, &c, NOW);
        assert_eq!(s.next, "nothing");
        assert_eq!(s.withheld_by.as_deref(), Some("exemptions[2]"));
        // A scan shows the stage the finding has until the next sweep closes it.
        assert_eq!(s.state, "warned");
    }
}
