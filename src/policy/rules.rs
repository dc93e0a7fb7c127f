//! Policy rules: the configured `[[policies]]` and `[[exemptions]]`, compiled once, and the pure
//! judgement of one key against them.
//!
//! [`Policies::compile`] turns the validated policies and exemptions (never the whole `Config`)
//! into matchers (globs via `globset`, regexes already compiled by the config loader) so every
//! sweep evaluates thousands of keys without re-parsing a pattern. [`Policies::evaluate`] answers, for one key at a time, which policies it
//! violates, since when, and whether an exemption covers it.
//!
//! This module must never do I/O, read a clock (`now` is always passed in, Unix seconds) or
//! decide an action: it only says what is true of a key. The lifecycle (`policy::lifecycle`)
//! decides what to tell people and when a revocation is due, and `policy::plan` decides what may
//! actually be deleted. It judges **one key at a time** and never widens a finding to every key of
//! a principal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};

use crate::config::{ExemptionConfig, OwnerTypeSelector, PolicyConfig, Selector};
use crate::inventory::{EXPIRY_TOLERANCE, Expiry, Key, OwnerAccess, OwnerType};
use crate::policy::facts::{KeyFacts, Scopes};
use crate::policy::observation::Observation;
pub use crate::policy::observation::Violation;

/// Why the configured policies or exemptions cannot be used. Every variant names the entry
/// (`policies[i]` / `exemptions[i]`) so an operator can find it in the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy without a condition would match every selected key; that is never what an
    /// operator meant, and with `action = "revoke"` it would be a mass deletion.
    #[error(
        "policies[{index}] ({name}): no condition; set at least one of max_age, max_idle, \
         owner_lost_access, name_pattern, max_lifetime, unrestricted"
    )]
    NoCondition { index: usize, name: String },
    /// Policy names identify findings in state and alerts, so they must be present and unique.
    #[error("policies[{index}]: policy name is empty")]
    EmptyName { index: usize },
    #[error("policies[{index}]: duplicate policy name {name:?}")]
    DuplicateName { index: usize, name: String },
    #[error("policies[{index}] ({name}).match.{field}: invalid glob {pattern:?}")]
    PolicyGlob {
        index: usize,
        name: String,
        field: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    /// An exemption naming nothing would exempt every key and silently disable enforcement.
    #[error("exemptions[{index}]: names no key_id, key_name or project; it would exempt every key")]
    EmptyExemption { index: usize },
    #[error("exemptions[{index}].{field}: invalid glob {pattern:?}")]
    ExemptionGlob {
        index: usize,
        field: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
}

/// The compiled policies and exemptions. Built once per configuration (and again on reload), so
/// a bad pattern is a startup error rather than a surprise in the middle of a sweep.
#[derive(Debug, Clone)]
pub struct Policies {
    policies: Vec<CompiledPolicy>,
    exemptions: Vec<CompiledExemption>,
    /// What the audit log and usage say (issue 16); empty unless [`Policies::with_facts`].
    facts: Arc<KeyFacts>,
}

/// The verdict on one key: what it violates and whether that may be acted on.
///
/// Violations are computed even for an exempted key, so reports can say "exempted from
/// rotate-90d"; anything that acts must check [`Evaluation::is_exempt`] first (or use
/// [`Evaluation::observation`], which does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The first active exemption (in config order) that covers the key.
    pub exemption: Option<ExemptionHit>,
    /// Exemptions that would cover the key but whose `until` has passed: reported so an operator
    /// notices a lapsed exemption before the key is acted on, never applied.
    pub expired_exemptions: Vec<ExemptionHit>,
    /// One entry per policy that selects the key and whose every condition holds, in config
    /// order.
    pub violations: Vec<Violation>,
    /// Policies that select the key and whose every other condition holds, but whose
    /// `unrestricted` condition cannot be judged (the audit log could not be read): neither
    /// violating nor compliant. A finding of such a policy is left as it is.
    pub undecided: Vec<String>,
}

/// An exemption that matched a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemptionHit {
    /// The operator's justification, repeated in reports and resolved notices.
    pub reason: String,
    /// Unix seconds after which the exemption no longer applies.
    pub until: Option<i64>,
    /// Position in `[[exemptions]]`, so a report can point at the entry.
    pub index: usize,
}

impl Evaluation {
    /// True when an active exemption covers the key: nothing may be acted on.
    pub fn is_exempt(&self) -> bool {
        self.exemption.is_some()
    }

    /// The violation of `policy`, if any (regardless of exemption).
    pub fn violation(&self, policy: &str) -> Option<&Violation> {
        self.violations.iter().find(|v| v.policy == policy)
    }

    /// What the lifecycle should be told about (`key`, `policy`): exempted beats violating, and
    /// a policy that no longer selects or flags the key counts as "no longer violates". Keeping
    /// this precedence here means the sweep cannot forget the exemption check.
    pub fn observation<'a>(&'a self, key: &'a Key, policy: &str) -> Observation<'a> {
        if let Some(hit) = &self.exemption {
            return Observation::Exempted {
                reason: &hit.reason,
            };
        }
        match self.violation(policy) {
            Some(violation) => Observation::Violating { key, violation },
            None => Observation::Compliant,
        }
    }
}

impl Policies {
    /// Compiles the `[[policies]]` and `[[exemptions]]` of a validated configuration: only
    /// what is evaluated reaches `policy/`, never the whole `Config` (and so never a secret).
    pub fn compile(
        policies: &[PolicyConfig],
        exemptions: &[ExemptionConfig],
    ) -> Result<Policies, PolicyError> {
        let mut names = BTreeSet::new();
        let mut compiled = Vec::with_capacity(policies.len());
        for (index, p) in policies.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(PolicyError::EmptyName { index });
            }
            if !names.insert(p.name.as_str()) {
                return Err(PolicyError::DuplicateName {
                    index,
                    name: p.name.clone(),
                });
            }
            compiled.push(CompiledPolicy::new(index, p)?);
        }
        let exemptions = exemptions
            .iter()
            .enumerate()
            .map(|(index, e)| CompiledExemption::new(index, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policies {
            policies: compiled,
            exemptions,
            facts: Arc::default(),
        })
    }

    /// The same policies judging with `facts` (the audit log's scopes and the usage buckets of
    /// one sweep). Cheap: the compiled matchers are shared.
    #[must_use]
    pub fn with_facts(&self, facts: Arc<KeyFacts>) -> Policies {
        Policies {
            facts,
            ..self.clone()
        }
    }

    /// Policy names in config order (the sweep uses them to find findings whose policy was
    /// removed from the configuration).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| p.config.name.as_str())
    }

    /// Whether `policy` looks at when a key was last used (`max_idle`, with its grace for
    /// never-used keys): only then is a use since the listing a reason to keep a due key.
    pub fn depends_on_use(&self, policy: &str) -> bool {
        self.policies
            .iter()
            .any(|p| p.config.name == policy && p.config.max_idle.is_some())
    }

    /// Judges one key as of `now` (Unix seconds). Pure: the same inputs give the same answer.
    pub fn evaluate(&self, key: &Key, now: i64) -> Evaluation {
        let mut exemption = None;
        let mut expired_exemptions = Vec::new();
        for e in &self.exemptions {
            if !e.matches(key) {
                continue;
            }
            let hit = ExemptionHit {
                reason: e.reason.clone(),
                until: e.until,
                index: e.index,
            };
            // `until` is the last second the exemption covers (end of the given day), so it
            // lapses strictly after it.
            if e.until.is_some_and(|until| now > until) {
                expired_exemptions.push(hit);
            } else if exemption.is_none() {
                exemption = Some(hit);
            }
        }
        let mut violations = Vec::new();
        let mut undecided = Vec::new();
        for p in self.policies.iter().filter(|p| p.selects(key)) {
            match p.judge(key, &self.facts, now) {
                Judged::Violates(v) => violations.push(v),
                Judged::Undecided => undecided.push(p.config.name.clone()),
                Judged::Complies => {}
            }
        }
        Evaluation {
            exemption,
            expired_exemptions,
            violations,
            undecided,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledPolicy {
    config: PolicyConfig,
    organizations: Vec<GlobMatcher>,
    projects: ProjectMatcher,
    key_name: Vec<GlobMatcher>,
    owner_email: Vec<GlobMatcher>,
}

impl CompiledPolicy {
    fn new(index: usize, p: &PolicyConfig) -> Result<CompiledPolicy, PolicyError> {
        let has_condition = p.max_age.is_some()
            || p.max_idle.is_some()
            || p.max_lifetime.is_some()
            || p.owner_lost_access
            || p.name_pattern.is_some()
            || p.unrestricted;
        if !has_condition {
            return Err(PolicyError::NoCondition {
                index,
                name: p.name.clone(),
            });
        }
        let err = |field: &'static str| {
            move |(pattern, source): (String, globset::Error)| PolicyError::PolicyGlob {
                index,
                name: p.name.clone(),
                field,
                pattern,
                source,
            }
        };
        let Selector {
            organizations,
            projects,
            owner_type: _,
            key_name,
            owner_email,
        } = &p.selector;
        Ok(CompiledPolicy {
            organizations: globs(organizations, false).map_err(err("organizations"))?,
            projects: ProjectMatcher::new(projects).map_err(err("projects"))?,
            key_name: globs(key_name, false).map_err(err("key_name"))?,
            // E-mail addresses are case-insensitive in practice; a policy for `*@Example.com`
            // must not miss `alice@example.com`.
            owner_email: globs(owner_email, true).map_err(err("owner_email"))?,
            config: p.clone(),
        })
    }

    /// Selector lists are ANDed; entries within one list are ORed; an empty list selects all.
    fn selects(&self, key: &Key) -> bool {
        let sel = &self.config.selector;
        if !self.organizations.is_empty()
            && !self
                .organizations
                .iter()
                .any(|g| g.is_match(&key.organization))
        {
            return false;
        }
        if !self.projects.is_empty() && !self.projects.matches(key) {
            return false;
        }
        // A key of unknown owner type matches neither `user` nor `service_account`: a selector
        // that narrows by owner must not guess.
        if let Some(want) = sel.owner_type {
            let ok = matches!(
                (want, key.owner.kind),
                (OwnerTypeSelector::User, OwnerType::User)
                    | (OwnerTypeSelector::ServiceAccount, OwnerType::ServiceAccount)
            );
            if !ok {
                return false;
            }
        }
        if !self.key_name.is_empty() && !self.key_name.iter().any(|g| g.is_match(&key.name)) {
            return false;
        }
        if !self.owner_email.is_empty() {
            // A key without an owner e-mail cannot match an e-mail selector.
            let Some(email) = key.owner.email.as_deref() else {
                return false;
            };
            if !self.owner_email.iter().any(|g| g.is_match(email)) {
                return false;
            }
        }
        true
    }

    /// Every configured condition must hold; the violation starts when the last of them began.
    /// `unrestricted` is judged last: when every other condition holds and the scopes are
    /// unknowable (the log could not be read), the policy is undecided for the key.
    fn judge(&self, key: &Key, facts: &KeyFacts, now: i64) -> Judged {
        let p = &self.config;
        let Some(Listed {
            mut since,
            mut reasons,
            input_unknown,
        }) = self.judge_listed(key, facts, now)
        else {
            return Judged::Complies;
        };
        if p.unrestricted {
            match facts.scopes(&key.organization, &key.id) {
                Scopes::Unrestricted => {
                    // The log's creation or update that gave All permissions may be older than
                    // what was read: count from detection, like a name.
                    since = since.max(now);
                    reasons.push("has All permissions (scopes [] in the audit log)".to_string());
                }
                Scopes::NotKnownUnrestricted => return Judged::Complies,
                Scopes::Undecided => return Judged::Undecided,
            }
        }
        // Every other condition holds, and when the key was last used or when it ends is
        // unknown (the listing omitted `last_used_at`, and usage did not see the key, or
        // `expires_at`): a malformed answer decides nothing.
        if input_unknown {
            return Judged::Undecided;
        }
        // `compile` rejects condition-less policies; this keeps `judge` total anyway.
        if reasons.is_empty() {
            return Judged::Complies;
        }
        Judged::Violates(Violation {
            policy: p.name.clone(),
            action: p.action,
            reason: reasons.join("; "),
            violating_since: since,
            warn_before: secs(p.warn_before),
            final_notice: secs(p.final_notice),
        })
    }

    /// The conditions on what the listing (and usage) says: `None` as soon as one fails, else
    /// when the last of them began and their reasons.
    fn judge_listed(&self, key: &Key, facts: &KeyFacts, now: i64) -> Option<Listed> {
        let p = &self.config;
        let mut since = i64::MIN;
        let mut reasons = Vec::new();
        let mut input_unknown = false;

        if let Some(max_age) = p.max_age {
            let max_age = secs(max_age);
            let age = now.saturating_sub(key.created_at);
            if age <= max_age {
                return None;
            }
            since = since.max(key.created_at.saturating_add(max_age));
            reasons.push(format!(
                "older than {} (created {}, {} ago)",
                fmt_duration(max_age),
                fmt_date(key.created_at),
                fmt_days(age)
            ));
        }

        if let Some(max_idle) = p.max_idle {
            let used = facts.used_at(&key.organization, &key.id);
            if key.last_used_unknown && used.is_none() {
                input_unknown = true;
            } else {
                let (start, reason) = idle_condition(key, used, secs(max_idle), p, now)?;
                since = since.max(start);
                reasons.push(reason);
            }
        }

        if p.owner_lost_access {
            if key.owner_access != OwnerAccess::Inactive {
                return None;
            }
            // The API does not say when access was lost; count from now so the deadline runs
            // from detection and never lands in the past.
            since = since.max(now);
            reasons.push("owner no longer has access to the project".to_string());
        }

        if let Some(re) = &p.name_pattern {
            if re.is_match(&key.name) {
                return None;
            }
            // A rename is invisible to us, so the start is unknown too: count from now.
            since = since.max(now);
            reasons.push(format!("name {:?} does not match /{}/", key.name, re));
        }

        if let Some(max_lifetime) = p.max_lifetime {
            // A listing that left `expires_at` out says nothing about the key's end: neither a
            // violation nor compliance (which would close an open finding, and let the next
            // whole listing open a new one with a later deadline).
            if key.expires_at.is_unknown() {
                input_unknown = true;
            } else {
                let (start, reason) = lifetime_condition(key, secs(max_lifetime))?;
                since = since.max(start);
                reasons.push(reason);
            }
        }
        Some(Listed {
            since,
            reasons,
            input_unknown,
        })
    }
}

/// The conditions on what the listing says, all holding: when the last of them began, their
/// reasons, and whether `max_idle` could not be answered (the key's last use is unknown).
struct Listed {
    since: i64,
    reasons: Vec<String>,
    input_unknown: bool,
}

/// What one policy says of one key.
enum Judged {
    Violates(Violation),
    Complies,
    /// Every condition the listing can answer holds, and `unrestricted` (the audit log could not
    /// be read) or `max_idle` (the listing omitted `last_used_at`) cannot be answered.
    Undecided,
}

/// `max_idle`: the key was last used at the later of its `last_used_at` and `usage` (when the
/// usage endpoints last saw it used); a key used neither way is idle since its creation, once
/// the grace for new keys is over. Then `(when it became idle too long, reason)`.
fn idle_condition(
    key: &Key,
    usage: Option<i64>,
    max_idle: i64,
    p: &PolicyConfig,
    now: i64,
) -> Option<(i64, String)> {
    let last = match (key.last_used_at, usage) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let Some(last) = last else {
        let grace = p.never_used_grace.map_or(max_idle, secs);
        let age = now.saturating_sub(key.created_at);
        if age <= grace {
            return None;
        }
        return Some((
            key.created_at.saturating_add(grace),
            format!(
                "never used in the {} since creation (created {}, grace {})",
                fmt_days(age),
                fmt_date(key.created_at),
                fmt_duration(grace)
            ),
        ));
    };
    let idle = now.saturating_sub(last);
    if idle <= max_idle {
        return None;
    }
    let by_usage = usage.is_some_and(|u| key.last_used_at.is_none_or(|l| u > l));
    Some((
        last.saturating_add(max_idle),
        format!(
            "unused for more than {} (last used {}{}, {} ago)",
            fmt_duration(max_idle),
            fmt_date(last),
            if by_usage { " per its usage" } else { "" },
            fmt_days(idle)
        ),
    ))
}

/// `max_lifetime`: holds when the key never expires or expires later than `created_at +
/// max_lifetime`; then `(when the key was meant to end, reason)`. The key was meant to end at
/// that limit, so the deadline counts from it (and never before the warning period): a key
/// older than max_lifetime gets the warning period and no less.
fn lifetime_condition(key: &Key, max_lifetime: i64) -> Option<(i64, String)> {
    let limit = key.created_at.saturating_add(max_lifetime);
    let expiry = match key.expires_at {
        // Unknown is never a reason to act: the key may well expire in time.
        Expiry::Unknown => return None,
        Expiry::At(t) if t <= limit.saturating_add(EXPIRY_TOLERANCE) => return None,
        Expiry::At(t) => format!("expires {}", fmt_date(t)),
        Expiry::Never => "never expires".to_string(),
    };
    Some((
        limit,
        format!(
            "{expiry}, later than {} after its creation ({})",
            fmt_duration(max_lifetime),
            fmt_date(key.created_at)
        ),
    ))
}

#[derive(Debug, Clone)]
struct CompiledExemption {
    index: usize,
    key_id: Option<String>,
    key_name: Option<GlobMatcher>,
    project: Option<ProjectMatcher>,
    reason: String,
    until: Option<i64>,
}

impl CompiledExemption {
    fn new(index: usize, e: &ExemptionConfig) -> Result<CompiledExemption, PolicyError> {
        if e.key_id.is_none() && e.key_name.is_none() && e.project.is_none() {
            return Err(PolicyError::EmptyExemption { index });
        }
        let err = |field: &'static str| {
            move |(pattern, source): (String, globset::Error)| PolicyError::ExemptionGlob {
                index,
                field,
                pattern,
                source,
            }
        };
        let key_name = match &e.key_name {
            Some(p) => Some(glob(p, false).map_err(|s| err("key_name")((p.clone(), s)))?),
            None => None,
        };
        let project = match &e.project {
            Some(p) => Some(ProjectMatcher::new(std::slice::from_ref(p)).map_err(err("project"))?),
            None => None,
        };
        Ok(CompiledExemption {
            index,
            key_id: e.key_id.clone(),
            key_name,
            project,
            reason: e.reason.clone(),
            until: e.until,
        })
    }

    /// Every field given must match (AND), so an exemption is as narrow as written.
    fn matches(&self, key: &Key) -> bool {
        self.key_id.as_ref().is_none_or(|id| *id == key.id)
            && self.key_name.as_ref().is_none_or(|g| g.is_match(&key.name))
            && self.project.as_ref().is_none_or(|p| p.matches(key))
    }
}

/// Project entries match the project id exactly or the project name by glob: ids are opaque
/// (`proj_…`) while names are what people write patterns for.
#[derive(Debug, Clone)]
struct ProjectMatcher {
    entries: Vec<(String, GlobMatcher)>,
}

impl ProjectMatcher {
    fn new(patterns: &[String]) -> Result<ProjectMatcher, (String, globset::Error)> {
        let entries = patterns
            .iter()
            .map(|p| {
                glob(p, false)
                    .map(|g| (p.clone(), g))
                    .map_err(|e| (p.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProjectMatcher { entries })
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A project id entry matches the id only; anything else globs the project's name (which
    /// its owner chooses: `check-config` warns about such entries).
    fn matches(&self, key: &Key) -> bool {
        self.entries.iter().any(|(raw, g)| {
            if crate::config::is_project_id_pattern(raw) {
                *raw == key.project_id
            } else {
                *raw == key.project_id || key.project_name.as_deref().is_some_and(|n| g.is_match(n))
            }
        })
    }
}

fn glob(pattern: &str, case_insensitive: bool) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        // Names are not paths: `*` should cross a `/` in "team/service".
        .literal_separator(false)
        .build()?
        .compile_matcher())
}

fn globs(
    patterns: &[String],
    case_insensitive: bool,
) -> Result<Vec<GlobMatcher>, (String, globset::Error)> {
    patterns
        .iter()
        .map(|p| glob(p, case_insensitive).map_err(|e| (p.clone(), e)))
        .collect()
}

/// Durations beyond `i64` seconds saturate: a 292-billion-year `max_age` is "never".
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Compact config-style rendering ("90d", "12h", "30m", "45s") so reasons read like the config.
pub(crate) fn fmt_duration(secs: i64) -> String {
    match secs {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn fmt_days(secs: i64) -> String {
    let days = secs / 86_400;
    if days == 1 {
        "1 day".to_string()
    } else {
        format!("{days} days")
    }
}

/// `YYYY-MM-DD` in UTC; out-of-range timestamps fall back to the raw number.
pub(crate) fn fmt_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("@{unix}"))
}
