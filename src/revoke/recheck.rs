//! The re-check's judgement: the key re-read just before a write that ends or shortens it
//! (a DELETE, an expiry set), compared with the key as listed. One judgement for both writes,
//! so each keeps a key for the same reasons. It does no I/O and never writes; the callers
//! re-read the key and record what it decides.

use crate::inventory::Key;

use super::context::Context;

/// Why the re-read key `fresh` must not be written to under `policies` (the findings the
/// write answers), or `None` when the listing's decision still holds. Fills in what the
/// retrieve endpoint leaves out (the project's name) from `listed`.
pub(super) fn reason_to_keep(
    ctx: &Context<'_>,
    listed: &Key,
    fresh: &mut Key,
    policies: &[&str],
) -> Option<String> {
    if let Some(reason) = crate::openai::identity_changed(listed, fresh) {
        return Some(reason);
    }
    // The retrieve endpoint does not carry the project name; keep the listing's for selectors.
    if fresh.project_name.is_none() {
        fresh.project_name = listed.project_name.clone();
    }
    let about_use = policies.iter().any(|p| ctx.policies.depends_on_use(p));
    if let Some(reason) = acted_on_since(&listed.name, listed.last_used_at, fresh, about_use) {
        return Some(reason);
    }
    let eval = ctx.policies.evaluate(fresh, ctx.now);
    if let Some(hit) = &eval.exemption {
        return Some(format!("the key is now exempted: {}", hit.reason));
    }
    // For an expiry, a max_lifetime finding whose key now ends by its deadline reads as "no
    // longer violates" too: either way nothing needs writing.
    if let Some(p) = policies.iter().find(|p| eval.violation(p).is_none()) {
        return Some(format!("the key no longer violates {p}"));
    }
    None
}

/// Why `fresh` shows someone acting on the key since it was listed as `name`, last used at
/// `last_used_at`: renamed (the next sweep decides on what it then lists), or used when a
/// policy the write answers is about use (`about_use`: `max_idle`; under `max_age` a key in use
/// is exactly what the policy is about). Shared by the re-check before a rotation's mint.
pub(crate) fn acted_on_since(
    name: &str,
    last_used_at: Option<i64>,
    fresh: &Key,
    about_use: bool,
) -> Option<String> {
    if about_use && fresh.last_used_unknown {
        return Some("the API did not say when the key was last used".into());
    }
    if about_use && fresh.last_used_at != last_used_at {
        return Some("the key was used since it was listed".into());
    }
    if fresh.name != name {
        let name = crate::text::log_field(&fresh.name);
        return Some(format!("the key was renamed to {name:?}"));
    }
    None
}
