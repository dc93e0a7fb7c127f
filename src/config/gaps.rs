//! What a valid configuration silently leaves out: no policy (nothing can ever be found), no
//! ops channel (enforcer alerts reach no one). Not errors — the README's minimal file is valid
//! and lists keys — but a person must be told, by `check-config`, `scan` and `run`.
//!
//! Pure: reads the validated [`Config`], never the environment or a secret.

use super::Config;

/// One sentence per gap: what is missing and what it means.
pub fn gaps(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.policies.is_empty() {
        out.push(
            "no [[policies]] configured: keysweep lists the keys, but no key can violate \
             anything, so nothing is ever reported, warned about, expired or revoked; add a \
             [[policies]] entry (config/keysweep.example.toml has examples)"
                .to_string(),
        );
    }
    if config.ops_channels.is_empty() {
        out.push(
            "ops_channels is empty: enforcer alerts (incomplete listings, a refused or expiring \
             admin key, caps, the kill switch, dead letters) go to the log and the audit trail \
             only, and reach no one; name a [[channels]] entry in ops_channels"
                .to_string(),
        );
    }
    out
}
