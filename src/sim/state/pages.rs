//! Read-only answers: list pages (selection after the cursor, page numbers for fault matching,
//! the list envelope) and single-object GETs, serialised while the project's read lock is held.
//!
//! Nothing here changes the organisation.

use super::{KeyFilter, OrgState, PageQuery, PageTwist, Refusal, sa_wire};
use crate::sim::model::{SimAccess, SimAdminKey, SimKey};
use crate::sim::wire;

/// What a list selection produced, as indices into the sorted vector.
struct Selection {
    items: Vec<usize>,
    has_more: bool,
    /// The real cursor for the next page (id of the last item selected).
    last: Option<usize>,
}

/// Selects one page: the items strictly after `after` in id order that pass `admit`.
fn select<T>(
    items: &[T],
    id: impl Fn(&T) -> &str,
    admit: impl Fn(&T) -> bool,
    q: &PageQuery,
) -> Selection {
    let start = match &q.after {
        Some(a) => items.partition_point(|x| id(x) <= a.as_str()),
        None => 0,
    };
    let mut out = Vec::with_capacity(q.limit.min(items.len()));
    let mut has_more = false;
    let mut next = None;
    for (i, item) in items.iter().enumerate().skip(start) {
        if !admit(item) {
            continue;
        }
        if out.len() == q.limit {
            has_more = true;
            next = Some(i);
            break;
        }
        out.push(i);
    }
    let mut last = out.last().copied();
    match q.twist {
        PageTwist::None | PageTwist::CursorLoop => {}
        // The cursor names the next page's first item, which a client trusting it skips.
        PageTwist::LastIdAhead => last = next.or(last),
        PageTwist::DuplicateIds => {
            let prev = items[..start].iter().rposition(&admit);
            match (prev, out.len()) {
                (Some(p), n) if n > 0 => out[0] = p,
                (None, n) if n >= 2 => out[1] = out[0],
                _ => {}
            }
        }
    }
    Selection {
        items: out,
        has_more,
        last,
    }
}

/// 1-based page number of a request: admitted items before the cursor / limit + 1.
fn page_number<T>(
    items: &[T],
    id: impl Fn(&T) -> &str,
    admit: impl Fn(&T) -> bool,
    after: Option<&str>,
    limit: usize,
) -> u32 {
    let before = match after {
        Some(a) => {
            let start = items.partition_point(|x| id(x) <= a);
            items[..start].iter().filter(|x| admit(x)).count()
        }
        None => 0,
    };
    u32::try_from(before / limit.max(1) + 1).unwrap_or(u32::MAX)
}

fn list_json<T: serde::Serialize>(
    data: Vec<T>,
    first_id: Option<&str>,
    last_id: Option<&str>,
    has_more: bool,
) -> Vec<u8> {
    let list = wire::List {
        object: wire::OBJ_LIST,
        data,
        first_id,
        last_id,
        has_more,
    };
    // Sized for a page of keys (~370 bytes each) so the buffer never regrows mid-page.
    let mut buf = Vec::with_capacity(128 + list.data.len() * 448);
    // Serialising borrowed strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, &list);
    buf
}

/// `last_id`/`has_more` as sent: the real cursor, or a non-advancing one for `CursorLoop`.
fn cursor<'a>(q: &'a PageQuery, last: Option<&'a str>, has_more: bool) -> (Option<&'a str>, bool) {
    match q.twist {
        PageTwist::CursorLoop => (q.after.as_deref(), true),
        PageTwist::None | PageTwist::DuplicateIds | PageTwist::LastIdAhead => (last, has_more),
    }
}

impl OrgState {
    pub fn projects_page_number(&self, include_archived: bool, q: &PageQuery) -> u32 {
        page_number(
            &self.projects,
            |p| &p.id,
            |p| include_archived || !p.is_archived(),
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn list_projects(&self, include_archived: bool, q: &PageQuery) -> Vec<u8> {
        let sel = select(
            &self.projects,
            |p| &p.id,
            |p| include_archived || !p.is_archived(),
            q,
        );
        let data: Vec<_> = sel.items.iter().map(|&i| self.projects[i].wire()).collect();
        let first = sel.items.first().map(|&i| self.projects[i].id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| self.projects[i].id.as_str()),
            sel.has_more,
        );
        list_json(data, first, last, has_more)
    }

    pub fn get_project(&self, project: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        Ok(serde_json::to_vec(&p.wire()).unwrap_or_default())
    }

    pub fn keys_page_number(&self, project: &str, filter: KeyFilter, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.keys,
            |k| &k.id,
            |k| self.visible(k, filter.now) && filter.access.admits_key(&data, k),
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn list_keys(
        &self,
        project: &str,
        filter: KeyFilter,
        q: &PageQuery,
    ) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let admit = |k: &SimKey| self.visible(k, filter.now) && filter.access.admits_key(&data, k);
        let sel = select(&data.keys, |k| &k.id, admit, q);
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| self.key_wire(&data, &data.keys[i]))
            .collect();
        let first = sel.items.first().map(|&i| data.keys[i].id.as_str());
        let (last, has_more) = cursor(q, sel.last.map(|i| data.keys[i].id.as_str()), sel.has_more);
        Ok(list_json(items, first, last, has_more))
    }

    pub fn get_key(&self, project: &str, key: &str, now: i64) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let i = self.find_key(&data, key, now)?;
        Ok(serde_json::to_vec(&self.key_wire(&data, &data.keys[i])).unwrap_or_default())
    }

    pub fn list_service_accounts(&self, project: &str, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        let data = p.read();
        let sel = select(&data.service_accounts, |s| &s.id, |_| true, q);
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| sa_wire(&data.service_accounts[i]))
            .collect();
        let first = sel
            .items
            .first()
            .map(|&i| data.service_accounts[i].id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| data.service_accounts[i].id.as_str()),
            sel.has_more,
        );
        Ok(list_json(items, first, last, has_more))
    }

    pub fn service_accounts_page_number(&self, project: &str, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.service_accounts,
            |s| &s.id,
            |_| true,
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn get_service_account(&self, project: &str, sa: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let s = data
            .service_account(sa)
            .ok_or_else(|| Refusal::NoServiceAccount(sa.to_string()))?;
        Ok(serde_json::to_vec(&sa_wire(s)).unwrap_or_default())
    }

    /// Project users: the members who currently have access.
    pub fn list_users(&self, project: &str, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        let data = p.read();
        let sel = select(
            &data.members,
            |m| &m.user_id,
            |m| m.access == SimAccess::Active,
            q,
        );
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| {
                let m = &data.members[i];
                let u = self.user(&m.user_id);
                wire::ProjectUser {
                    object: wire::OBJ_PROJECT_USER,
                    id: &m.user_id,
                    name: u.map(|u| u.name.as_str()),
                    email: u.map(|u| u.email.as_str()),
                    role: &m.role,
                    added_at: m.added_at,
                }
            })
            .collect();
        let first = sel.items.first().map(|&i| data.members[i].user_id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| data.members[i].user_id.as_str()),
            sel.has_more,
        );
        Ok(list_json(items, first, last, has_more))
    }

    pub fn users_page_number(&self, project: &str, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.members,
            |m| &m.user_id,
            |m| m.access == SimAccess::Active,
            q.after.as_deref(),
            q.limit,
        )
    }

    /// Admin keys, ordered by creation time (`asc` or `desc`), cursor = id of the last one seen.
    pub fn list_admin_keys(&self, desc: bool, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let ordered: Vec<&SimAdminKey> = if desc {
            self.admin_keys.iter().rev().collect()
        } else {
            self.admin_keys.iter().collect()
        };
        let start = match &q.after {
            Some(a) => {
                ordered
                    .iter()
                    .position(|k| &k.id == a)
                    .ok_or_else(|| Refusal::BadCursor(a.clone()))?
                    + 1
            }
            None => 0,
        };
        let end = (start + q.limit).min(ordered.len());
        let mut page: Vec<&SimAdminKey> = ordered[start..end].to_vec();
        let has_more = end < ordered.len();
        let last_real = page.last().map(|k| k.id.as_str());
        if q.twist == PageTwist::DuplicateIds {
            if start > 0 && !page.is_empty() {
                page[0] = ordered[start - 1];
            } else if page.len() >= 2 {
                page[1] = page[0];
            }
        }
        let items: Vec<_> = page
            .iter()
            .map(|k| {
                let owner = self.user(&k.owner_user_id);
                wire::AdminApiKey {
                    object: wire::OBJ_ADMIN_KEY,
                    id: &k.id,
                    name: k.name.as_deref(),
                    redacted_value: &k.redacted_value,
                    created_at: k.created_at,
                    expires_at: k.expires_at,
                    last_used_at: k.last_used_at,
                    owner: wire::AdminKeyOwner {
                        kind: "user",
                        object: "organization.user",
                        id: &k.owner_user_id,
                        name: owner.map_or("", |u| u.name.as_str()),
                        created_at: owner.map_or(0, |u| u.created_at),
                        role: "owner",
                    },
                }
            })
            .collect();
        let first = page.first().map(|k| k.id.as_str());
        let (last, has_more) = cursor(q, last_real, has_more);
        Ok(list_json(items, first, last, has_more))
    }

    pub fn admin_keys_page_number(&self, desc: bool, q: &PageQuery) -> u32 {
        let pos = match &q.after {
            Some(a) => {
                let found = if desc {
                    self.admin_keys.iter().rev().position(|k| &k.id == a)
                } else {
                    self.admin_keys.iter().position(|k| &k.id == a)
                };
                found.map_or(0, |i| i + 1)
            }
            None => 0,
        };
        u32::try_from(pos / q.limit.max(1) + 1).unwrap_or(u32::MAX)
    }
}
