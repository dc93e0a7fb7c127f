//! The pager every listing goes through, and [`KeyPages`], a project's keys one page at a time.
//!
//! Sends `limit=100` and `after=<cursor>`, where the cursor is the last item's id (REFERENCE
//! §3; `last_id` when the page is empty, and a `last_id` equal to the request's cursor is a
//! loop); ends on `has_more = false`. A cursor that does not advance or comes
//! back, an id listed twice or not of the shape every id has (`identity.rs`; a key's owner id
//! included), an empty page claiming more, or an endless chain of pages is an error, and after
//! any error the listing is over: it must never look finished when a page is missing.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use crate::inventory::{Key, ProjectRef};
use crate::openai::error::{Error, RequestContext};
use crate::openai::identity::is_valid_id;
use crate::openai::transport::{RetryMode, Transport};
use crate::openai::types::{HasId, ListPage, WireKey};
use crate::text::log_field;

/// Page size: the documented maximum.
const PAGE_LIMIT: &str = "100";
/// A listing longer than this many pages (a million objects) is treated as a runaway pager.
const MAX_PAGES: usize = 10_000;

/// Every item of the listing at `url`, handed to `each` in order.
pub(super) async fn list_all<W: DeserializeOwned + HasId>(
    transport: &Transport,
    ctx: RequestContext,
    url: Url,
    mut each: impl FnMut(W),
) -> Result<(), Error> {
    let mut pager = Pager::new(ctx, url);
    while let Some(page) = pager.next(transport).await? {
        page.into_iter().for_each(&mut each);
    }
    Ok(())
}

/// A project's keys, one page at a time, so a caller can process and drop each page before the
/// next one arrives instead of holding the whole project.
pub struct KeyPages {
    transport: Arc<Transport>,
    project: ProjectRef,
    pager: Pager<WireKey>,
}

impl KeyPages {
    /// Nothing is requested until the first `next_page`.
    pub(super) fn new(
        transport: Arc<Transport>,
        project: ProjectRef,
        ctx: RequestContext,
        url: Url,
    ) -> Self {
        Self {
            transport,
            project,
            pager: Pager::new(ctx, url),
        }
    }

    pub fn project(&self) -> &ProjectRef {
        &self.project
    }

    /// The next page of keys, or `None` after the last one. After an error the listing is over:
    /// the keys handed out so far are not the whole project.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Key>>, Error> {
        let Some(page) = self.pager.next(&self.transport).await? else {
            return Ok(None);
        };
        Ok(Some(
            page.into_iter()
                .map(|k| k.into_domain(&self.project))
                .collect(),
        ))
    }
}

/// One listing's progress: where the next page starts and everything seen so far.
struct Pager<W> {
    ctx: RequestContext,
    url: Url,
    cursor: Option<String>,
    cursors_seen: HashSet<String>,
    /// Every item's id, as a 64-bit hash under a seed of this listing's own: 8 bytes per key
    /// instead of a copy of its id (5 MB at 100k keys). Two ids that collide (2^-64 a pair,
    /// and no one can aim at a seed nobody knows) look like a duplicate: the listing fails
    /// and nothing in it is acted on, the safe way to be wrong.
    ids_seen: foldhash::HashSet<u64>,
    id_hasher: foldhash::quality::RandomState,
    pages: usize,
    state: PagerState,
    _item: std::marker::PhantomData<fn() -> W>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PagerState {
    /// More pages to fetch.
    Open,
    /// The last page arrived.
    Done,
    /// A page failed: the listing is over and must never look finished.
    Failed,
}

impl<W: DeserializeOwned + HasId> Pager<W> {
    fn new(ctx: RequestContext, url: Url) -> Self {
        Self {
            ctx,
            url,
            cursor: None,
            cursors_seen: HashSet::new(),
            ids_seen: foldhash::HashSet::default(),
            id_hasher: foldhash::quality::RandomState::default(),
            pages: 0,
            state: PagerState::Open,
            _item: std::marker::PhantomData,
        }
    }

    async fn next(&mut self, transport: &Transport) -> Result<Option<Vec<W>>, Error> {
        match self.state {
            PagerState::Failed => {
                return Err(self.inconsistent("an earlier page of this listing failed".into()));
            }
            PagerState::Done => return Ok(None),
            PagerState::Open => {}
        }
        // Any early return below is a failed page; only the end of this function clears it.
        self.state = PagerState::Failed;
        if self.pages == MAX_PAGES {
            return Err(self.inconsistent(format!("more than {MAX_PAGES} pages")));
        }
        self.pages += 1;
        let ans = transport
            .call(
                Method::GET,
                &self.page_url(),
                &self.ctx,
                RetryMode::Idempotent,
            )
            .await?;
        let page: ListPage<W> = transport.decode(&self.ctx, &ans)?;
        // Decide the next cursor before looking at the items, so a page served twice is
        // reported as the cursor loop it is rather than as duplicate ids.
        let next = self.next_cursor(transport, &page)?;
        for item in &page.data {
            if let Some(bad) = std::iter::once(item.id())
                .chain(item.other_ids())
                .find(|id| !is_valid_id(id))
            {
                return Err(Error::BadId {
                    ctx: self.ctx.clone(),
                    id: transport.scrub(bad),
                });
            }
            if !self.ids_seen.insert(self.id_hasher.hash_one(item.id())) {
                return Err(Error::DuplicateIds {
                    ctx: self.ctx.clone(),
                    id: transport.scrub(item.id()),
                });
            }
        }
        self.state = if next.is_none() {
            PagerState::Done
        } else {
            PagerState::Open
        };
        self.cursor = next;
        Ok(Some(page.data))
    }

    /// The listing's URL with the page size and the cursor.
    fn page_url(&self) -> Url {
        let mut page_url = self.url.clone();
        {
            let mut q = page_url.query_pairs_mut();
            q.append_pair("limit", PAGE_LIMIT);
            if let Some(c) = &self.cursor {
                q.append_pair("after", c);
            }
        }
        page_url
    }

    /// The cursor of the page after `page`, `None` after the last one; an error when there
    /// should be a next page but no new cursor to ask for it.
    fn next_cursor(
        &mut self,
        transport: &Transport,
        page: &ListPage<W>,
    ) -> Result<Option<String>, Error> {
        if !page.has_more {
            return Ok(None);
        }
        let last_id = page.last_id.as_deref().filter(|s| !s.is_empty());
        let last_item = page.data.last().map(HasId::id);
        let next = match (last_id, last_item) {
            // The server says to go on from where this page started: a loop.
            (Some(l), _) if self.cursor.as_deref() == Some(l) => l,
            // The cursor is the id of the last item received (REFERENCE §3): a `last_id`
            // naming another item would skip the keys between, which would then be taken for
            // gone. Paging on from the last item skips nothing.
            (Some(l), Some(item)) if l != item => {
                // Not shape-checked yet: made safe for the log like any API text.
                let (said, last) = (
                    log_field(&transport.scrub(l)),
                    log_field(&transport.scrub(item)),
                );
                tracing::debug!(last_id = %said, last_item = %last, "last_id is not the page's last item; paging on from the item");
                item
            }
            (Some(l), _) => l,
            (None, Some(item)) => item,
            (None, None) => {
                return Err(self.inconsistent(
                    "has_more is true but the page is empty and has no last_id".to_string(),
                ));
            }
        };
        let next = next.to_string();
        if self.cursor.as_deref() == Some(next.as_str()) || !self.cursors_seen.insert(next.clone())
        {
            return Err(Error::CursorLoop {
                ctx: self.ctx.clone(),
                cursor: transport.scrub(&next),
            });
        }
        Ok(Some(next))
    }

    fn inconsistent(&self, detail: String) -> Error {
        Error::Pagination {
            ctx: self.ctx.clone(),
            detail,
        }
    }
}
