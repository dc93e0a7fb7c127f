//! The simulated usage endpoints: `GET /v1/organization/usage/completions` and
//! `GET /v1/organization/costs`, read from openai-python 3.51.0
//! (`resources/admin/organization/usage.py`, `types/admin/organization/usage_completions_*`,
//! `usage_costs_*`).
//!
//! Parameters: `start_time` (required), `end_time` (default: the clock), `bucket_width` (`1m`,
//! `1h`, `1d`; costs `1d` only; default `1d`), `limit` (buckets per page: 1d 7/31, 1h 24/168,
//! 1m 60/1440 default/max; costs 7/180), `page` (the previous answer's `next_page`),
//! `group_by[]` (`api_key_id`, `project_id` honoured; others accepted and left null),
//! `api_key_ids[]`, `project_ids[]`. Buckets start at `start_time` floored to the width; a
//! bucket with no usage has `results: []`. Completions results count `num_model_requests` (and
//! made-up tokens: 300 in, 100 out per request); costs results carry `amount.value` in USD.
//!
//! Records come from `history` (consistent with `last_used_at`) and from
//! `SimServer::set_last_used`, which adds one request at the moment given. Never reads the clock.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::history::{SimHistory, UsageRecord, derive};
use super::model::SimOrg;
use super::respond::{BadParam, bad_param};

/// Which endpoint is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsageKind {
    Completions,
    Costs,
}

/// A result's grouping: (`api_key_id`, `project_id`) when grouped by them.
type Group<'a> = (Option<&'a str>, Option<&'a str>);

pub(crate) struct UsageBook {
    /// The organisation file's explicit history, applied when usage is first read.
    history: SimHistory,
    book: Mutex<Book>,
}

/// The records, and whether they are in time order: a page looks up each bucket's records by
/// bisection instead of scanning them all once per bucket (at 100k keys, millions of records
/// and hundreds of buckets per sweep).
#[derive(Default)]
struct Book {
    seeded: bool,
    records: Vec<UsageRecord>,
    sorted: bool,
}

/// A parsed usage query.
#[derive(Debug)]
pub(crate) struct UsageQuery {
    start: i64,
    end: i64,
    width: i64,
    limit: i64,
    by_key: bool,
    by_project: bool,
    key_ids: Vec<String>,
    project_ids: Vec<String>,
}

impl UsageBook {
    /// Usage derived from the organisation at the first read (as the audit log's past), plus
    /// what hooks add meanwhile.
    pub fn new(history: SimHistory) -> Self {
        UsageBook {
            history,
            book: Mutex::new(Book::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, r: UsageRecord) {
        let mut book = self.lock();
        book.records.push(r);
        book.sorted = false;
    }

    /// Derives each key's past usage from `org` (the organisation now) unless done already.
    pub fn seed_with(&self, org: impl FnOnce() -> SimOrg) {
        if self.lock().seeded {
            return;
        }
        let (_, mut past) = derive(&org(), &self.history);
        let mut book = self.lock();
        if !book.seeded {
            book.records.append(&mut past);
            book.seeded = true;
            book.sorted = false;
        }
    }

    /// One page of buckets as the API's `page` object.
    pub fn page(&self, kind: UsageKind, q: &UsageQuery) -> Vec<u8> {
        let mut book = self.lock();
        if !book.sorted {
            book.records.sort_by_key(|r| r.at);
            book.sorted = true;
        }
        let records = &book.records;
        let mut data = Vec::new();
        let mut start = q.start;
        while start < q.end && data.len() < usize::try_from(q.limit).unwrap_or(usize::MAX) {
            let end = start + q.width;
            let mut groups: BTreeMap<Group<'_>, (u64, u64)> = BTreeMap::new();
            let first = records.partition_point(|r| r.at < start);
            let past = records.partition_point(|r| r.at < end);
            for r in &records[first..past] {
                if !q.admits(r) {
                    continue;
                }
                let g = (
                    q.by_key.then_some(r.key.as_str()),
                    q.by_project.then_some(r.project.as_str()),
                );
                let e = groups.entry(g).or_default();
                e.0 += r.requests;
                e.1 += r.cost_micros;
            }
            let results: Vec<Value> = groups
                .into_iter()
                .map(|((key, project), (n, micros))| result(kind, key, project, n, micros))
                .collect();
            data.push(
                json!({"object": "bucket", "start_time": start, "end_time": end,
                             "results": results}),
            );
            start = end;
        }
        let has_more = start < q.end;
        let body = json!({
            "object": "page",
            "data": data,
            "has_more": has_more,
            "next_page": has_more.then(|| format!("page_{start}")),
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

fn result(kind: UsageKind, key: Option<&str>, project: Option<&str>, n: u64, micros: u64) -> Value {
    match kind {
        UsageKind::Completions => json!({
            "object": "organization.usage.completions.result",
            "input_tokens": n * 300,
            "output_tokens": n * 100,
            "input_cached_tokens": 0,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": n,
            "project_id": project,
            "user_id": null,
            "api_key_id": key,
            "model": null,
            "batch": null,
            "service_tier": null,
        }),
        UsageKind::Costs => {
            // Micro-dollars to dollars; exact for any realistic amount.
            #[allow(clippy::cast_precision_loss)]
            let value = micros as f64 / 1_000_000.0;
            json!({
                "object": "organization.costs.result",
                "amount": {"value": value, "currency": "usd"},
                "line_item": null,
                "project_id": project,
                "api_key_id": key,
            })
        }
    }
}

impl UsageQuery {
    fn admits(&self, r: &UsageRecord) -> bool {
        (self.key_ids.is_empty() || self.key_ids.contains(&r.key))
            && (self.project_ids.is_empty() || self.project_ids.contains(&r.project))
    }

    /// Parses and checks a query as the API would (`now` is the default `end_time`).
    pub fn parse(kind: UsageKind, raw: Option<&str>, now: i64) -> Result<Self, BadParam> {
        let mut start = None;
        let mut end = None;
        let mut width = "1d".to_string();
        let mut limit = None;
        let mut page = None;
        let mut q = UsageQuery {
            start: 0,
            end: now,
            width: 86_400,
            limit: 7,
            by_key: false,
            by_project: false,
            key_ids: Vec::new(),
            project_ids: Vec::new(),
        };
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let int = |param: &'static str| {
                v.parse::<i64>().map_err(|_| {
                    bad_param(param, format!("Invalid '{param}': expected an integer."))
                })
            };
            match k.trim_end_matches("[]") {
                "start_time" => start = Some(int("start_time")?),
                "end_time" => end = Some(int("end_time")?),
                "bucket_width" => width = v.to_string(),
                "limit" => limit = Some(int("limit")?),
                "page" => page = Some(v.to_string()),
                "group_by" => match &*v {
                    "api_key_id" => q.by_key = true,
                    "project_id" => q.by_project = true,
                    _ => {}
                },
                "api_key_ids" => q.key_ids.push(v.to_string()),
                "project_ids" => q.project_ids.push(v.to_string()),
                _ => {}
            }
        }
        let start = start.ok_or_else(|| {
            bad_param(
                "start_time",
                "Missing required parameter: 'start_time'.".into(),
            )
        })?;
        let (w, default, max) = match (kind, width.as_str()) {
            (UsageKind::Costs, "1d") => (86_400, 7, 180),
            (UsageKind::Completions, "1d") => (86_400, 7, 31),
            (UsageKind::Completions, "1h") => (3_600, 24, 168),
            (UsageKind::Completions, "1m") => (60, 60, 1_440),
            _ => {
                return Err(bad_param(
                    "bucket_width",
                    format!("Invalid 'bucket_width': '{width}' is not supported here."),
                ));
            }
        };
        q.width = w;
        q.limit = limit.unwrap_or(default);
        if !(1..=max).contains(&q.limit) {
            return Err(bad_param(
                "limit",
                format!("Invalid 'limit': must be 1 to {max}."),
            ));
        }
        q.end = end.unwrap_or(now);
        q.start = start.div_euclid(w) * w;
        if let Some(p) = page {
            let at = p
                .strip_prefix("page_")
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|&at| at >= q.start && (at - q.start) % w == 0)
                .ok_or_else(|| bad_param("page", "Invalid 'page'.".into()))?;
            q.start = at;
        }
        Ok(q)
    }
}
