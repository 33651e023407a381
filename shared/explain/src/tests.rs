use super::*;
use skeelo_domain::event::{self, EventType};
use skeelo_domain::sample;

/// The facts after these events, as the fleet's rules decide them.
fn facts(events: &[(EventType, i64)]) -> Facts {
    let mut f = Facts::default();
    for (t, v) in events {
        let body = sample::event(*t, "EX1", *v, &["SKEELO-EBOOKS"]);
        let Ok(e) = event::parse(&t.routing_key(), body.to_string().as_bytes()) else {
            panic!("a sample {t:?} event is valid");
        };
        f = lifecycle::decide(&f, &e).facts;
    }
    f
}

fn held_as_target(f: &Facts) -> Live {
    match lifecycle::target(f) {
        Target::Present(h) => Live::Holds(Some(h)),
        _ => Live::Holds(None),
    }
}

fn kinds(found: &[Finding]) -> Vec<String> {
    found
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .map(|v| v["kind"].as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn an_active_contract_that_skeelo_matches_has_access_and_nothing_pending() {
    let f = facts(&[(EventType::Sync, 1)]);
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &held_as_target(&f),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["has_access", "nothing_pending"]);
    assert_eq!(Lang::En.headline(&found), "HAS ACCESS");
    assert_eq!(Lang::PtBr.headline(&found), "TEM ACESSO");
}

#[test]
fn a_contract_without_its_sync_waits_for_it() {
    let f = facts(&[(EventType::Suspend, 2)]);
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &Live::Holds(None),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["awaiting_sync"]);
    assert!(Lang::En.headline(&found).contains("NO ACCESS YET"));
    assert!(Lang::PtBr.headline(&found).contains("SEM ACESSO AINDA"));
}

#[test]
fn suspended_and_blocked_are_both_named() {
    let f = facts(&[
        (EventType::Sync, 1),
        (EventType::Suspend, 2),
        (EventType::Block, 3),
    ]);
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &held_as_target(&f),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["suspended", "blocked", "nothing_pending"]);
    assert_eq!(
        Lang::En.headline(&found),
        "NO ACCESS: suspended and blocked"
    );
}

#[test]
fn an_active_contract_skeelo_cancelled_behind_the_back_is_drift() {
    let f = facts(&[(EventType::Sync, 1)]);
    let Live::Holds(Some(mut h)) = held_as_target(&f) else {
        panic!("a synced contract has a target");
    };
    h.status = Status::Cancelled;
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &Live::Holds(Some(h)),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["drift"]);
    assert!(Lang::En.finding(&found[0]).contains("should be active"));
    assert!(Lang::En.finding(&found[0]).contains("holds cancelled"));
    assert!(Lang::En.headline(&found).contains("Skeelo differs"));
}

#[test]
fn skeelo_unreachable_is_said_and_nothing_is_claimed_about_access() {
    let f = facts(&[(EventType::Sync, 1)]);
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &Live::Unreachable("timeout".into()),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["skeelo_unreachable"]);
    assert!(Lang::En.headline(&found).contains("could not be asked"));
}

#[test]
fn calls_in_flight_are_pending() {
    let f = facts(&[(EventType::Sync, 1)]);
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &held_as_target(&f),
        &Waiting {
            in_flight: Some(Duration::from_millis(2500)),
            ..Waiting::default()
        },
        Lang::En,
    );
    assert_eq!(kinds(&found), ["has_access", "calls_in_flight"]);
}

#[test]
fn languages_parse_with_a_clear_error() {
    assert_eq!(Lang::parse("pt-BR"), Ok(Lang::PtBr));
    assert_eq!(Lang::parse("pt_br"), Ok(Lang::PtBr));
    assert_eq!(Lang::parse("EN"), Ok(Lang::En));
    let e = Lang::parse("fr").expect_err("not offered");
    assert!(e.contains("en and pt-BR"), "{e}");
}

#[test]
fn every_finding_is_said_in_both_languages_differently() {
    let event = Some(EventRef {
        version: 2,
        at: Some("2026-11-29T10:00:00Z".into()),
        actor: Some("ana".into()),
    });
    let all = [
        Finding::HasAccess { products: vec![] },
        Finding::AwaitingSync {
            recorded: 1,
            sync_parked: false,
            sync_requeued: false,
        },
        Finding::Suspended {
            event: event.clone(),
        },
        Finding::Blocked {
            event: event.clone(),
        },
        Finding::Cancelled { event },
        Finding::CancelledBeforeSync,
        Finding::RejectedAfterCancel { count: 1 },
        Finding::Drift {
            should: "active".into(),
            holds: "cancelled".into(),
            gives_access: false,
            repairable: false,
        },
        Finding::Drift {
            should: "inactive".into(),
            holds: "active".into(),
            gives_access: true,
            repairable: true,
        },
        Finding::SkeeloUnreachable { error: "x".into() },
        Finding::CallsInFlight { for_seconds: 1 },
        Finding::Parked {
            id: 7,
            event_type: "sync".into(),
            reason: "invalid".into(),
            error_class: "unknown_product".into(),
            error: "products Skeelo does not sell: X".into(),
            fix: Fix::ProductThenRequeue,
        },
        Finding::Requeued {
            id: 8,
            by: "ana".into(),
            at: "2026-11-30T10:00:00Z".into(),
        },
        Finding::Retrying {
            event_type: "sync".into(),
            attempt: 2,
            at: "2026-11-30T10:00:00Z".into(),
            error: "Skeelo failed".into(),
        },
        Finding::Outage {
            since: "2026-11-30T10:00:00Z".into(),
            error: "timeout".into(),
        },
        Finding::NothingPending,
    ];
    for f in &all {
        let (en, pt) = (Lang::En.finding(f), Lang::PtBr.finding(f));
        assert!(!en.is_empty() && en != pt, "{f:?}: {en} / {pt}");
        assert_eq!(
            Lang::En.next(f).is_some(),
            Lang::PtBr.next(f).is_some(),
            "{f:?}"
        );
    }
    let parked = &all[11];
    assert!(Lang::En
        .next(parked)
        .is_some_and(|n| n.contains("skeelo-ops dead requeue 7")));
    assert!(Lang::PtBr
        .next(parked)
        .is_some_and(|n| n.contains("catálogo da Skeelo")));
}

#[test]
fn a_suspended_contract_skeelo_still_serves_has_access_against_the_facts() {
    let active = facts(&[(EventType::Sync, 1)]);
    let suspended = facts(&[(EventType::Sync, 1), (EventType::Suspend, 2)]);
    let found = findings(
        &suspended,
        &[],
        &[],
        &[],
        &held_as_target(&active),
        &Waiting::default(),
        Lang::PtBr,
    );
    assert_eq!(kinds(&found), ["suspended", "drift"]);
    assert_eq!(
        Lang::En.headline(&found),
        "HAS ACCESS at Skeelo, but should not: Skeelo differs"
    );
    assert!(Lang::PtBr
        .finding(&found[1])
        .contains("deveria ser inativo"));
}

#[test]
fn products_that_differ_are_not_called_access_as_the_erp_says() {
    let f = facts(&[(EventType::Sync, 1)]);
    let Live::Holds(Some(mut h)) = held_as_target(&f) else {
        panic!("a synced contract has a target");
    };
    h.profile.products.clear();
    let found = findings(
        &f,
        &[],
        &[],
        &[],
        &Live::Holds(Some(h)),
        &Waiting::default(),
        Lang::En,
    );
    assert_eq!(kinds(&found), ["drift"]);
    assert!(Lang::En
        .headline(&found)
        .starts_with("HAS ACCESS at Skeelo"));
}

#[test]
fn a_retry_and_an_outage_are_what_happens_next() {
    let f = facts(&[(EventType::Sync, 1)]);
    let at = time::OffsetDateTime::UNIX_EPOCH;
    let waiting = Waiting {
        in_flight: None,
        retries: vec![skeelo_store::waits::Retry {
            event_id: "e1".into(),
            event_type: "suspend".into(),
            attempt: 2,
            next_at: at,
            last_error: "Skeelo failed: 500".into(),
        }],
        outage: Some(skeelo_store::waits::Outage {
            downstream: "skeelo".into(),
            since: at,
            last_error: "connection refused".into(),
        }),
    };
    let found = findings(&f, &[], &[], &[], &held_as_target(&f), &waiting, Lang::En);
    assert_eq!(kinds(&found), ["has_access", "outage", "retrying"]);
    let said: Vec<String> = found.iter().map(|x| Lang::En.finding(x)).collect();
    assert!(
        said[1].contains("outage mode for Skeelo since 1970-01-01T00:00:00Z"),
        "{said:?}"
    );
    assert!(
        said[2].contains(
            "tried again by itself at about 1970-01-01T00:00:00Z (2 attempt(s) used so far)"
        ),
        "{said:?}"
    );
    let pt: Vec<String> = found.iter().map(|x| Lang::PtBr.finding(x)).collect();
    assert!(pt[2].contains("tentado de novo sozinho"), "{pt:?}");
    assert!(Lang::En
        .next(&found[2])
        .is_some_and(|n| n.contains("parked as a dead letter")));
}
