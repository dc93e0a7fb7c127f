//! Builds simulated organisations: a seeded random one of any size, and the curated demo.
//!
//! Generation is deterministic: the same `(projects, keys_per_project, seed, now)` always gives
//! the same organisation, byte for byte, on every platform and every version of `rand`, because
//! the generator is a small SplitMix64 of our own. Ids are unique *by construction* (a bijective
//! mix of a counter), so no set of seen ids is kept even for a million keys.
//!
//! Nothing here reads the clock: `now` is always passed in.

use std::collections::HashSet;

use super::model::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServiceAccount, SimUser,
};

const DAY: i64 = 86_400;
/// Keys are created at most this long before `now` ("ages up to 2 years").
const MAX_KEY_AGE: i64 = 730 * DAY;

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Karim",
    "Lena", "Mallory", "Niaj", "Olivia", "Peggy", "Quentin", "Rupert", "Sybil", "Trent", "Uma",
    "Victor", "Wendy", "Xavier", "Yara", "Zoe", "Amara", "Bruno", "Chen", "Dmitri", "Elif",
    "Farah",
];
const LAST_NAMES: &[&str] = &[
    "Martin", "Nguyen", "Okafor", "Schmidt", "Rossi", "Tanaka", "Kowalski", "Silva", "Haddad",
    "Larsen", "Dubois", "Ivanova", "Garcia", "Novak", "Murphy", "Costa", "Yilmaz", "Berg",
];
const PROJECT_WORDS: &[&str] = &[
    "Payments",
    "Search",
    "Support Bot",
    "Data Science",
    "Growth",
    "Billing",
    "Onboarding",
    "Recommendations",
    "Fraud",
    "Docs Assistant",
    "Analytics",
    "Platform",
    "Mobile",
    "Sales Copilot",
    "Ingestion",
    "Translation",
    "Moderation",
    "Research",
];
const USER_KEY_SUFFIXES: &[&str] = &[
    "laptop",
    "dev",
    "notebook",
    "experiments",
    "local",
    "test",
    "scratch",
    "jupyter",
    "colab",
];
const SHARED_KEY_NAMES: &[&str] = &[
    "ci-deploy",
    "staging",
    "prod-backend",
    "eval-runner",
    "data-pipeline",
    "support-bot",
    "batch-worker",
    "webhook-relay",
    "load-test",
    "migration-2024",
    "prototype",
    "Secret Key",
];
const SA_NAMES: &[&str] = &[
    "deploy-bot",
    "batch-bot",
    "etl-pipeline",
    "billing-service",
    "search-indexer",
    "support-agent",
    "nightly-evals",
    "webhooks",
];

impl SimOrg {
    /// `projects` active projects with exactly `keys_per_project` keys each, plus one archived
    /// project with a few keys; see the module doc for the mix.
    pub fn generate(projects: usize, keys_per_project: usize, seed: u64, now: i64) -> Self {
        Self::generate_range(projects, keys_per_project, keys_per_project, seed, now)
    }

    /// Like [`SimOrg::generate`] but each active project gets a key count drawn uniformly from
    /// `min_keys..=max_keys` (the benchmark's "1,000 projects × 100–300 keys").
    pub fn generate_range(
        projects: usize,
        min_keys: usize,
        max_keys: usize,
        seed: u64,
        now: i64,
    ) -> Self {
        Generator::new(seed, now).org(projects, min_keys, max_keys.max(min_keys))
    }

    /// A small curated organisation for `keysweep demo`: every interesting case once, with
    /// stable ids and ages relative to `now`.
    pub fn demo(now: i64) -> Self {
        demo_org(now)
    }
}

/// SplitMix64: tiny, fast, and its output for a seed never changes.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for test data and branch-free.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as u64) as i64
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn base62(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| BASE62[self.below(62) as usize] as char)
            .collect()
    }
}

/// The SplitMix64 finaliser; a bijection on `u64`, which is what makes ids unique.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 11 base62 digits hold any `u64`.
fn base62_u64(mut v: u64) -> String {
    let mut out = [b'0'; 11];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Hands out ids of one kind: `prefix` + unique 11 digits + random padding to OpenAI's length.
struct IdMint {
    prefix: &'static str,
    salt: u64,
    counter: u64,
    total_len: usize,
}

impl IdMint {
    fn new(prefix: &'static str, seed: u64, kind: u64, total_len: usize) -> Self {
        IdMint {
            prefix,
            salt: mix64(seed ^ kind.wrapping_mul(0xA24B_AED4_963E_E407)),
            counter: 0,
            total_len,
        }
    }

    fn next(&mut self, rng: &mut Rng) -> String {
        self.counter += 1;
        // `salt ^ counter` is distinct for distinct counters, and mix64 is a bijection.
        let mut id = String::with_capacity(self.total_len);
        id.push_str(self.prefix);
        id.push_str(&base62_u64(mix64(self.salt ^ self.counter)));
        let pad = self.total_len.saturating_sub(id.len());
        id.push_str(&rng.base62(pad));
        id
    }
}

struct Generator {
    rng: Rng,
    /// A separate stream for the November 2026 fields (`expires_at`), so that adding them left
    /// every older field of a seeded organisation exactly as it was.
    expiry_rng: Rng,
    now: i64,
    project_ids: IdMint,
    key_ids: IdMint,
    user_ids: IdMint,
    sa_ids: IdMint,
}

impl Generator {
    fn new(seed: u64, now: i64) -> Self {
        Generator {
            rng: Rng::new(seed),
            expiry_rng: Rng::new(mix64(seed ^ 0x5EED_0E59_1E55_2026)),
            now,
            project_ids: IdMint::new("proj_", seed, 1, 29),
            key_ids: IdMint::new("key_", seed, 2, 20),
            user_ids: IdMint::new("user_", seed, 3, 29),
            sa_ids: IdMint::new("svc_acct_", seed, 4, 33),
        }
    }

    fn org(mut self, projects: usize, min_keys: usize, max_keys: usize) -> SimOrg {
        let total_estimate = projects * (min_keys + max_keys) / 2;
        // Enough people that most own a few keys, capped so that huge orgs stay cheap.
        let user_count = (total_estimate / 6).clamp(8, 2000);
        let users = self.users(user_count);
        let mut out = Vec::with_capacity(projects + 1);
        let mut project_names = HashSet::new();
        for i in 0..projects {
            let n = min_keys + self.rng.below((max_keys - min_keys + 1) as u64) as usize;
            let name = self.project_name(i, &mut project_names);
            out.push(self.project(name, &users, n, None));
        }
        // The archived project: old, a few keys, hidden from default listings.
        let archived_at = self.now - self.rng.range_i64(30 * DAY, 300 * DAY);
        let name = String::from("Legacy Prototype (archived)");
        let keys = 3 + self.rng.below(3) as usize;
        out.push(self.project(name, &users, keys, Some(archived_at)));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let admin_api_keys = self.admin_keys(&users);
        SimOrg {
            format: FORMAT_VERSION,
            generated_at: self.now,
            users,
            admin_api_keys,
            projects: out,
        }
    }

    fn project_name(&mut self, i: usize, seen: &mut HashSet<String>) -> String {
        let base = self.rng.pick(PROJECT_WORDS);
        let mut name = base.to_string();
        if !seen.insert(name.clone()) {
            name = format!("{base} {}", i + 1);
            seen.insert(name.clone());
        }
        name
    }

    fn users(&mut self, n: usize) -> Vec<SimUser> {
        let mut emails = HashSet::with_capacity(n);
        (0..n)
            .map(|i| {
                let first = self.rng.pick(FIRST_NAMES);
                let last = self.rng.pick(LAST_NAMES);
                let mut email = format!(
                    "{}.{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                );
                if !emails.insert(email.clone()) {
                    email = format!(
                        "{}.{}{}@example.com",
                        first.to_lowercase(),
                        last.to_lowercase(),
                        i
                    );
                    emails.insert(email.clone());
                }
                SimUser {
                    id: self.user_ids.next(&mut self.rng),
                    name: format!("{first} {last}"),
                    email,
                    created_at: self.now - self.rng.range_i64(760 * DAY, 1400 * DAY),
                }
            })
            .collect()
    }

    fn project(
        &mut self,
        name: String,
        users: &[SimUser],
        keys: usize,
        archived_at: Option<i64>,
    ) -> SimProject {
        let created_at = self.now - self.rng.range_i64(740 * DAY, 1000 * DAY);
        let member_count = (keys / 4).clamp(1, 150).min(users.len());
        let mut chosen = HashSet::with_capacity(member_count);
        let mut members = Vec::with_capacity(member_count);
        // Lower-case first names of the members, for key names like `alice-laptop`.
        let mut first_names = Vec::with_capacity(member_count);
        while members.len() < member_count {
            let u = &users[self.rng.below(users.len() as u64) as usize];
            if !chosen.insert(u.id.as_str()) {
                continue;
            }
            first_names.push(u.name.split(' ').next().unwrap_or("dev").to_lowercase());
            members.push(SimMember {
                user_id: u.id.clone(),
                role: if self.rng.chance(0.1) {
                    "owner"
                } else {
                    "member"
                }
                .to_string(),
                added_at: created_at.max(u.created_at) + self.rng.range_i64(0, 5 * DAY),
                access: SimAccess::Active,
            });
        }
        // About one member in ten lost access; keys are then drawn so that ~7% of all keys
        // belong to such an owner (the share does not depend on how many keys each user has).
        let inactive = if member_count >= 3 {
            (member_count / 10).max(1)
        } else {
            0
        };
        for m in members.iter_mut().take(inactive) {
            m.access = SimAccess::Inactive;
        }
        let sa_count = (keys / 25).clamp(1, 20);
        let service_accounts: Vec<SimServiceAccount> = (0..sa_count)
            .map(|i| {
                let base = SA_NAMES[i % SA_NAMES.len()];
                SimServiceAccount {
                    id: self.sa_ids.next(&mut self.rng),
                    name: if i < SA_NAMES.len() {
                        base.to_string()
                    } else {
                        format!("{base}-{i}")
                    },
                    role: "member".to_string(),
                    created_at: created_at + self.rng.range_i64(0, 30 * DAY),
                    access: SimAccess::Active,
                }
            })
            .collect();
        let mut out_keys = Vec::with_capacity(keys);
        for _ in 0..keys {
            out_keys.push(self.key(&members, &first_names, inactive, &service_accounts));
        }
        out_keys.sort_by(|a, b| a.id.cmp(&b.id));
        SimProject {
            id: self.project_ids.next(&mut self.rng),
            name: Some(name),
            created_at,
            archived_at,
            external_key_id: None,
            members,
            service_accounts,
            keys: out_keys,
        }
    }

    fn key(
        &mut self,
        members: &[SimMember],
        first_names: &[String],
        inactive: usize,
        sas: &[SimServiceAccount],
    ) -> SimKey {
        let created_at = self.now - self.rng.range_i64(0, MAX_KEY_AGE);
        let last_used_at = if self.rng.chance(0.15) {
            None
        } else if self.rng.chance(0.5) {
            // Busy keys: used in the last week (but never before they existed).
            Some((self.now - self.rng.range_i64(0, 7 * DAY)).max(created_at))
        } else {
            Some(self.rng.range_i64(created_at, self.now + 1))
        };
        let id = self.key_ids.next(&mut self.rng);
        let suffix = self.rng.base62(4);
        if self.rng.chance(0.2) && !sas.is_empty() {
            let sa = &sas[self.rng.below(sas.len() as u64) as usize];
            let name = if self.rng.chance(0.5) {
                sa.name.clone()
            } else {
                self.rng.pick(SHARED_KEY_NAMES).to_string()
            };
            return SimKey {
                id,
                name,
                redacted_value: format!("sk-svcacct-****{suffix}"),
                created_at,
                last_used_at,
                owner: SimOwnerRef::ServiceAccount { id: sa.id.clone() },
                expires_at: self.expiry(created_at, last_used_at),
                scopes: Vec::new(),
            };
        }
        // 0.07 / 0.8: the share of user keys that must go to inactive owners for ~7% overall.
        let m = if inactive > 0 && self.rng.chance(0.0875) {
            self.rng.below(inactive as u64) as usize
        } else if members.len() > inactive {
            inactive + self.rng.below((members.len() - inactive) as u64) as usize
        } else {
            self.rng.below(members.len() as u64) as usize
        };
        let member = &members[m];
        let name = if self.rng.chance(0.5) {
            format!("{}-{}", first_names[m], self.rng.pick(USER_KEY_SUFFIXES))
        } else {
            self.rng.pick(SHARED_KEY_NAMES).to_string()
        };
        SimKey {
            id,
            name,
            redacted_value: format!("sk-proj-****{suffix}"),
            created_at,
            last_used_at,
            owner: SimOwnerRef::User {
                id: member.user_id.clone(),
            },
            expires_at: self.expiry(created_at, last_used_at),
            scopes: Vec::new(),
        }
    }

    /// About 70% of keys never expire, 20% expire within the next 180 days and 10% have already
    /// expired (after their creation and their last use: an expired key cannot be used).
    fn expiry(&mut self, created_at: i64, last_used_at: Option<i64>) -> Option<i64> {
        let roll = self.expiry_rng.unit();
        if roll < 0.7 {
            None
        } else if roll < 0.9 {
            Some(self.now + self.expiry_rng.range_i64(DAY, 180 * DAY))
        } else {
            let after = last_used_at.unwrap_or(created_at).max(created_at) + 1;
            // A key used at this very second cannot have expired yet: it never expires instead.
            (after < self.now).then(|| self.expiry_rng.range_i64(after, self.now))
        }
    }

    fn admin_keys(&mut self, users: &[SimUser]) -> Vec<SimAdminKey> {
        let owner = users.first().map(|u| u.id.clone()).unwrap_or_default();
        let mut keys = vec![
            SimAdminKey {
                id: self.key_ids.next(&mut self.rng),
                name: Some("Main Admin Key".to_string()),
                redacted_value: format!("sk-admin-****{}", self.rng.base62(4)),
                created_at: self.now - 400 * DAY,
                expires_at: None,
                last_used_at: Some(self.now - 3 * DAY),
                owner_user_id: owner.clone(),
            },
            SimAdminKey {
                id: self.key_ids.next(&mut self.rng),
                name: Some("keysweep".to_string()),
                redacted_value: format!("sk-admin-****{}", self.rng.base62(4)),
                created_at: self.now - 20 * DAY,
                expires_at: Some(self.now + 70 * DAY),
                last_used_at: Some(self.now - 60),
                owner_user_id: owner.clone(),
            },
            SimAdminKey {
                id: self.key_ids.next(&mut self.rng),
                name: None,
                redacted_value: format!("sk-admin-****{}", self.rng.base62(4)),
                created_at: self.now - 200 * DAY,
                expires_at: Some(self.now - 10 * DAY),
                last_used_at: None,
                owner_user_id: owner,
            },
        ];
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        keys
    }
}

/// An id that only depends on `label`: the demo's ids never change between runs or versions.
fn stable_id(prefix: &str, label: &str, len: usize) -> String {
    // FNV-1a, then SplitMix64 as a seed for the digits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut rng = Rng::new(h);
    let mut id = String::from(prefix);
    id.push_str(&rng.base62(len.saturating_sub(prefix.len())));
    id
}

fn demo_org(now: i64) -> SimOrg {
    let d = Demo { now };
    let mut projects = vec![d.payments(), d.data_science(), d.support(), d.legacy()];
    projects.sort_by(|a, b| a.id.cmp(&b.id));
    SimOrg {
        format: FORMAT_VERSION,
        generated_at: now,
        admin_api_keys: vec![SimAdminKey {
            id: stable_id("key_", "admin/keysweep", 20),
            name: Some("keysweep (demo)".to_string()),
            redacted_value: "sk-admin-****dEm0".to_string(),
            created_at: d.day(78),
            expires_at: Some(now + 12 * DAY),
            last_used_at: Some(now - 3600),
            owner_user_id: uid("Olivia"),
        }],
        users: d.users(),
        projects,
    }
}

/// Who owns a demo key: a member by first name, or a service account by name.
enum Owner<'a> {
    User(&'a str),
    Sa(&'a str),
}

/// One demo key: name, owner, created days ago, last used days ago (`None`: never), and
/// expiry in days from now (`None`: never; negative: already expired).
type Spec<'a> = (&'a str, Owner<'a>, i64, Option<i64>, Option<i64>);

fn uid(first: &str) -> String {
    stable_id("user_", first, 29)
}

/// The demo organisation's parts, each with ages relative to `now`.
struct Demo {
    now: i64,
}

impl Demo {
    fn day(&self, d: i64) -> i64 {
        self.now - d * DAY
    }

    fn users(&self) -> Vec<SimUser> {
        let person = |first: &str, last: &str, created_days: i64| SimUser {
            id: uid(first),
            name: format!("{first} {last}"),
            email: format!(
                "{}.{}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            created_at: self.day(created_days),
        };
        vec![
            person("Alice", "Martin", 900),
            person("Bob", "Nguyen", 800),
            person("Carol", "Okafor", 700),
            person("Dave", "Schmidt", 600),
            person("Erin", "Rossi", 500),
            person("Frank", "Tanaka", 450),
            person("Grace", "Kowalski", 400),
            person("Heidi", "Silva", 350),
            person("Ivan", "Haddad", 340),
            person("Olivia", "Larsen", 1000),
        ]
    }

    fn member(&self, first: &str, role: &str, access: SimAccess) -> SimMember {
        SimMember {
            user_id: uid(first),
            role: role.to_string(),
            added_at: self.day(330),
            access,
        }
    }

    fn sa(&self, project: &str, name: &str, created_days: i64) -> SimServiceAccount {
        SimServiceAccount {
            id: stable_id("svc_acct_", &format!("{project}/{name}"), 33),
            name: name.to_string(),
            role: "member".to_string(),
            created_at: self.day(created_days),
            access: SimAccess::Active,
        }
    }

    fn keys(&self, project: &str, sas: &[SimServiceAccount], specs: &[Spec<'_>]) -> Vec<SimKey> {
        let mut out: Vec<SimKey> = specs
            .iter()
            .map(|(name, owner, created, used, expires)| {
                let id = stable_id("key_", &format!("{project}/{name}"), 20);
                let tail = &id[id.len() - 4..];
                let (owner, redacted_value) = match owner {
                    Owner::User(first) => (
                        SimOwnerRef::User { id: uid(first) },
                        format!("sk-proj-****{tail}"),
                    ),
                    Owner::Sa(sa_name) => (
                        SimOwnerRef::ServiceAccount {
                            id: sas
                                .iter()
                                .find(|s| s.name == *sa_name)
                                .map(|s| s.id.clone())
                                .unwrap_or_default(),
                        },
                        format!("sk-svcacct-****{tail}"),
                    ),
                };
                SimKey {
                    id,
                    name: (*name).to_string(),
                    redacted_value,
                    // A few hours past the day boundary so "older than 90d" is unambiguous.
                    created_at: self.day(*created) - 3600,
                    last_used_at: used.map(|d| self.day(d) - 1800),
                    owner,
                    expires_at: expires.map(|d| self.now + d * DAY),
                    scopes: Vec::new(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn project(
        &self,
        label: &str,
        name: &str,
        created_days: i64,
        members: Vec<SimMember>,
        service_accounts: Vec<SimServiceAccount>,
        specs: &[Spec<'_>],
    ) -> SimProject {
        SimProject {
            id: stable_id("proj_", label, 29),
            name: Some(name.to_string()),
            created_at: self.day(created_days),
            archived_at: None,
            external_key_id: None,
            members,
            keys: self.keys(label, &service_accounts, specs),
            service_accounts,
        }
    }

    fn payments(&self) -> SimProject {
        use SimAccess::{Active, Inactive};
        let members = vec![
            self.member("Olivia", "owner", Active),
            self.member("Alice", "member", Active),
            self.member("Bob", "member", Active),
            self.member("Carol", "member", Inactive),
            self.member("Dave", "member", Active),
        ];
        let sas = vec![self.sa("payments", "payments-backend", 420)];
        let specs = [
            (
                "payments-prod-backend",
                Owner::Sa("payments-backend"),
                400,
                Some(0),
                None,
            ),
            ("break-glass-prod", Owner::User("Olivia"), 500, None, None),
            ("alice-laptop", Owner::User("Alice"), 200, Some(120), None),
            ("ci-deploy", Owner::User("Bob"), 30, Some(0), Some(60)),
            ("carol-notebook", Owner::User("Carol"), 60, Some(50), None),
            ("webhook-relay", Owner::User("Dave"), 10, None, None),
        ];
        self.project("payments", "Payments API", 950, members, sas, &specs)
    }

    fn data_science(&self) -> SimProject {
        use SimAccess::{Active, Inactive};
        let members = vec![
            self.member("Alice", "member", Active),
            self.member("Erin", "owner", Active),
            self.member("Frank", "member", Active),
            self.member("Grace", "member", Inactive),
        ];
        let sas = vec![self.sa("data-science", "nightly-evals", 300)];
        let specs = [
            (
                "eval-runner",
                Owner::Sa("nightly-evals"),
                20,
                Some(0),
                Some(70),
            ),
            ("erin-jupyter", Owner::User("Erin"), 150, Some(2), None),
            ("frank-experiments", Owner::User("Frank"), 95, None, None),
            (
                "old-scraper",
                Owner::User("Alice"),
                700,
                Some(400),
                Some(-30),
            ),
            ("gpu-batch", Owner::User("Grace"), 45, Some(44), None),
            ("erin-colab", Owner::User("Erin"), 5, Some(1), Some(25)),
        ];
        self.project("data-science", "Data Science", 800, members, sas, &specs)
    }

    fn support(&self) -> SimProject {
        let members = vec![
            self.member("Bob", "owner", SimAccess::Active),
            self.member("Heidi", "member", SimAccess::Active),
            self.member("Ivan", "member", SimAccess::Active),
        ];
        let sas = vec![self.sa("support", "support-agent", 100)];
        let specs = [
            (
                "support-bot-prod",
                Owner::Sa("support-agent"),
                60,
                Some(0),
                None,
            ),
            ("support-staging", Owner::User("Bob"), 89, Some(10), None),
            ("heidi-test", Owner::User("Heidi"), 91, Some(46), None),
            ("zendesk-sync", Owner::User("Heidi"), 14, Some(0), None),
            ("ivan-temp", Owner::User("Ivan"), 300, None, Some(-5)),
        ];
        self.project("support", "Support Bot", 500, members, sas, &specs)
    }

    fn legacy(&self) -> SimProject {
        let members = vec![self.member("Alice", "owner", SimAccess::Active)];
        let specs = [("legacy-demo", Owner::User("Alice"), 800, Some(210), None)];
        SimProject {
            archived_at: Some(self.day(200)),
            ..self.project(
                "legacy",
                "Legacy Prototype",
                1100,
                members,
                Vec::new(),
                &specs,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn generate_is_deterministic_and_exact() {
        let a = SimOrg::generate(5, 37, 42, NOW);
        let b = SimOrg::generate(5, 37, 42, NOW);
        assert_eq!(a, b);
        assert_ne!(a, SimOrg::generate(5, 37, 43, NOW));
        assert_eq!(a.projects.len(), 6);
        assert_eq!(a.projects.iter().filter(|p| p.is_archived()).count(), 1);
        for p in a.projects.iter().filter(|p| !p.is_archived()) {
            assert_eq!(p.keys.len(), 37);
        }
        assert_eq!(a.key_count(), 5 * 37);
        a.validate().unwrap();
    }

    #[test]
    fn generated_mix_is_realistic() {
        let org = SimOrg::generate(20, 250, 7, NOW);
        let keys: Vec<&SimKey> = org.projects.iter().flat_map(|p| &p.keys).collect();
        let n = keys.len() as f64;
        let never = keys.iter().filter(|k| k.last_used_at.is_none()).count() as f64 / n;
        let sa = keys.iter().filter(|k| k.owner.is_service_account()).count() as f64 / n;
        assert!((0.11..0.19).contains(&never), "never used {never}");
        assert!((0.16..0.24).contains(&sa), "service accounts {sa}");
        let mut inactive = 0usize;
        for p in &org.projects {
            for k in &p.keys {
                if let SimOwnerRef::User { id } = &k.owner {
                    let m = p.members.iter().find(|m| &m.user_id == id).unwrap();
                    inactive += usize::from(m.access == SimAccess::Inactive);
                }
            }
        }
        let inactive = inactive as f64 / n;
        assert!((0.04..0.10).contains(&inactive), "inactive {inactive}");
        for k in &keys {
            assert!(k.created_at <= NOW && k.created_at >= NOW - MAX_KEY_AGE);
            if let Some(u) = k.last_used_at {
                assert!(u >= k.created_at && u <= NOW);
            }
            assert!(k.id.starts_with("key_") && k.id.len() == 20);
        }
    }

    #[test]
    fn demo_is_stable_and_valid() {
        let a = SimOrg::demo(NOW);
        a.validate().unwrap();
        assert_eq!(a, SimOrg::demo(NOW));
        // Same ids whatever the clock.
        let b = SimOrg::demo(NOW + 1000);
        let ids = |o: &SimOrg| -> Vec<String> {
            o.projects
                .iter()
                .flat_map(|p| p.keys.iter().map(|k| k.id.clone()))
                .collect()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.projects.len(), 4);
        assert_eq!(a.key_count(), 17);
        assert!(
            a.projects
                .iter()
                .flat_map(|p| &p.keys)
                .any(|k| k.name == "break-glass-prod")
        );
    }

    #[test]
    fn json_round_trip() {
        let org = SimOrg::generate(2, 5, 1, NOW);
        let back = SimOrg::from_json_str(&org.to_json_pretty()).unwrap();
        assert_eq!(org, back);
    }

    #[test]
    fn invalid_file_names_the_field() {
        let mut org = SimOrg::generate(1, 3, 1, NOW);
        org.projects[0].keys[1].id = org.projects[0].keys[0].id.clone();
        let err = SimOrg::from_json_str(&org.to_json_pretty()).unwrap_err();
        assert!(err.to_string().contains("keys[1].id"), "{err}");
        let err = SimOrg::from_json_str(r#"{"format": 1, "generated_at": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("generated_at"), "{err}");
    }
}
