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
    // A use since the listing matters only to a policy about use (`max_idle`): under
    // `max_age` a key in use is exactly what the policy is about.
    if fresh.last_used_at != listed.last_used_at
        && policies.iter().any(|p| ctx.policies.depends_on_use(p))
    {
        return Some("the key was used since it was listed".into());
    }
    // Someone is acting on the key right now: the next sweep decides on what it then lists.
    if fresh.name != listed.name {
        return Some(format!(
            "the key was renamed to {:?}",
            crate::text::log_field(&fresh.name)
        ));
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
