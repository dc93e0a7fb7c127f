//! What an id from the API may look like, and whether a key re-read before a write is still the
//! key that was listed.
//!
//! Every OpenAI id (`proj_…`, `key_…`, `user_…`, `svc_acct_…`) is 1 to 128 characters of
//! `[A-Za-z0-9_-]`. An id of any other shape is refused where it enters (the pager): `..`, `.`,
//! a tab or a newline could be normalised by URL building into another path (`…/api_keys`,
//! `…/projects/P/`), so such an id must never reach a URL. Pure: no I/O, no clock. It must never
//! accept an id that is not plain ASCII letters, digits, `_` or `-`.

use crate::inventory::Key;

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;

/// True when `id` matches `^[A-Za-z0-9_-]{1,128}$`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why the re-read key `fresh` is not the key that was `listed` (another id, another owner),
/// or `None` when it is the same key. A write is skipped with this reason: the listing's
/// decision was about another object.
pub fn identity_changed(listed: &Key, fresh: &Key) -> Option<String> {
    if fresh.id != listed.id {
        return Some(format!(
            "the re-read answered for another key id ({:?}, listed {:?})",
            fresh.id, listed.id
        ));
    }
    if fresh.owner.kind != listed.owner.kind || fresh.owner.id != listed.owner.id {
        return Some(format!(
            "the key's owner changed since it was listed ({} {:?}, listed {} {:?})",
            fresh.owner.kind.as_str(),
            fresh.owner.id.as_deref().unwrap_or("unknown"),
            listed.owner.kind.as_str(),
            listed.owner.id.as_deref().unwrap_or("unknown"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_api_shape_only() {
        for ok in ["key_abc", "proj-1", "svc_acct_X9", "a", &"x".repeat(128)] {
            assert!(is_valid_id(ok), "{ok:?}");
        }
        let long = "x".repeat(129);
        for bad in [
            "", "..", ".", ".\t.", "key_b\n", "a/b", "a%2F", "é", "a b", "a?b", "a#b", &long,
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
