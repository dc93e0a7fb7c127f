//! Issue 16 through keysweep's own client (`AdminClient::key_events`, `usage_by_key`) against
//! the simulator over HTTP: the log's creators and scopes, the usage and cost per key, and a
//! disabled log read as "unavailable", never as a failure.

use std::collections::HashMap;

use keysweep::openai::{IntelError, KeyEventKind};
use keysweep::sim::{SimHistory, SimKeyHistory, SimOptions, SimOrg, SimUsage};

use crate::support::listing::{ADMIN_KEY, limits, setup};
use crate::support::sim::start_sim_with;

/// 2026-12-01T00:00:00Z.
const NOW: i64 = 1_796_083_200;
const DAY: i64 = 86_400;

fn options() -> SimOptions {
    SimOptions {
        now: Some(NOW),
        freeze_clock: true,
        ..SimOptions::new(ADMIN_KEY)
    }
}

#[tokio::test]
async fn key_events_give_every_keys_creator_and_scopes_as_the_log_records_them() {
    let org = SimOrg::generate(3, 40, 12, NOW);
    let p = &org.projects[0];
    let unlogged = &p.keys[0];
    let mut history = SimHistory::default();
    let no_scopes = SimKeyHistory {
        scopes_logged: Some(false),
        ..SimKeyHistory::default()
    };
    history.keys.insert(unlogged.id.clone(), no_scopes);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    let events = s.clients[0].key_events(0).await.unwrap();
    // More than one page of 100.
    assert!(events.len() > 100, "{}", events.len());
    let created: HashMap<&str, _> = events
        .iter()
        .filter_map(|e| match &e.kind {
            KeyEventKind::Created { scopes } => Some((e.key_id.as_deref().unwrap(), (e, scopes))),
            _ => None,
        })
        .collect();
    let email = |id: &str| org.users.iter().find(|u| u.id == id).unwrap().email.clone();
    for k in org.projects.iter().flat_map(|p| &p.keys) {
        let (e, scopes) = created[k.id.as_str()];
        if k.id == unlogged.id {
            assert_eq!(*scopes, None, "a missing data.scopes is unknown");
        } else {
            assert_eq!(scopes.as_ref(), Some(&k.scopes));
        }
        assert_eq!(e.effective_at, k.created_at);
        if !k.owner.is_service_account() {
            assert_eq!(e.actor.email, Some(email(k.owner.id())));
        } else {
            assert!(e.actor.email.is_some());
        }
    }
    // `since` reads only what is new: a delete through the API, by the admin key.
    let victim = &p.keys[1];
    s.clients[0].delete_key(&p.id, &victim.id).await.unwrap();
    let new = s.clients[0].key_events(NOW).await.unwrap();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].kind, KeyEventKind::Deleted);
    assert_eq!(new[0].key_id.as_deref(), Some(victim.id.as_str()));
    assert_eq!(new[0].actor.kind, "api_key");
    assert!(new[0].actor.api_key_id.is_some());
}

#[tokio::test]
async fn usage_by_key_sums_requests_and_cost_over_the_window() {
    let org = SimOrg::generate(1, 6, 3, NOW);
    let k = &org.projects[0].keys[0];
    let mut history = SimHistory::default();
    let usage = vec![
        SimUsage {
            at: NOW - 40 * DAY,
            requests: 999,
            cost_usd: 9.0,
        },
        SimUsage {
            at: NOW - 20 * DAY,
            requests: 1_200,
            cost_usd: 3.0,
        },
        SimUsage {
            at: NOW - 3 * DAY + 7,
            requests: 40,
            cost_usd: 0.1,
        },
    ];
    let explicit = SimKeyHistory {
        usage: Some(usage),
        ..SimKeyHistory::default()
    };
    history.keys.insert(k.id.clone(), explicit);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    let got = s.clients[0]
        .usage_by_key(NOW - 30 * DAY, NOW)
        .await
        .unwrap();
    let u = &got[&k.id];
    assert_eq!(
        u.requests, 1_240,
        "the record 40 days back is outside the window"
    );
    assert!((u.cost_usd - 3.1).abs() < 1e-9, "{}", u.cost_usd);
    assert_eq!(
        u.last_used_bucket,
        Some((NOW - 3 * DAY).div_euclid(DAY) * DAY)
    );
    // Every key the simulator says was used in the window has usage, and only those.
    for other in org
        .projects
        .iter()
        .flat_map(|p| &p.keys)
        .filter(|o| o.id != k.id)
    {
        let used = other
            .last_used_at
            .is_some_and(|t| (NOW - 30 * DAY..NOW).contains(&t));
        if used {
            assert!(got[&other.id].requests > 0, "{}", other.id);
        }
    }
}

#[tokio::test]
async fn a_disabled_audit_log_is_unavailable_and_usage_still_answers() {
    let org = SimOrg::generate(1, 5, 2, NOW);
    let sim = start_sim_with(
        org,
        SimOptions {
            audit_logging: false,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    match s.clients[0].key_events(0).await {
        Err(IntelError::Unavailable {
            status, message, ..
        }) => {
            assert_eq!(status, 403);
            assert!(message.unwrap().contains("not enabled"));
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(s.clients[0].usage_by_key(NOW - 30 * DAY, NOW).await.is_ok());
}
