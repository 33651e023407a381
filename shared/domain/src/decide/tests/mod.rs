use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::event::{
    ContractId, Document, Email, EventType, Plan, Sku, Subscriber, SyncDetails, Version,
};

fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid SKU")
}

fn event(t: EventType, version: i64, products: &[&str]) -> Event {
    Event {
        event_id: Uuid::new_v4(),
        event_type: t,
        occurred_at: OffsetDateTime::UNIX_EPOCH,
        contract_id: ContractId::parse("48213").expect("valid id"),
        version: Version::new(version).expect("version ≥ 1"),
        sync: (t == EventType::Sync).then(|| SyncDetails {
            plan: Plan {
                code: "SVA-LEITURA".into(),
                months: 12,
                monthly_value: "9.90".into(),
            },
            products: products.iter().map(|p| sku(p)).collect(),
            subscriber: Subscriber {
                id: "10077".into(),
                name: "Maria".into(),
                document: Document::parse("52998224725").expect("valid CPF"),
                email: Email::parse("maria@example.com.br").expect("valid e-mail"),
                phone: None,
            },
        }),
        actor: None,
    }
}

fn ev(t: EventType, version: i64) -> Event {
    event(t, version, &["SKEELO-EBOOKS"])
}

fn fresh<'a>(events: &'a [Event]) -> Vec<Incoming<'a>> {
    events
        .iter()
        .map(|event| Incoming {
            event,
            repeat_first: false,
        })
        .collect()
}

fn none_unknown() -> BTreeSet<Sku> {
    BTreeSet::new()
}

fn verdict(step: &Step) -> Option<Verdict> {
    match step {
        Step::Apply { decision, .. } => Some(decision.verdict),
        _ => None,
    }
}

fn first(outcome: Outcome) -> Processed {
    Processed {
        outcome,
        skeelo_status: Some(Status::Active),
        detail: "subscription created".into(),
    }
}

/// Facts and Skeelo's state after the steps, as the event path would leave them if
/// every call succeeded.
fn end_state(facts: &Facts, plan: &ContractPlan) -> Facts {
    plan.steps
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::Apply { decision, .. } => Some(decision.facts.clone()),
            _ => None,
        })
        .unwrap_or_else(|| facts.clone())
}

#[test]
fn a_table_of_single_events() {
    use EventType::*;
    struct Case {
        name: &'static str,
        seen: Option<Outcome>,
        repeat_first: bool,
        unknown: &'static [&'static str],
        event: Event,
        want: fn(&Step) -> bool,
        calls: bool,
    }
    let cases = [
        Case {
            name: "a new sync applies and calls Skeelo",
            seen: None,
            repeat_first: false,
            unknown: &[],
            event: ev(Sync, 1),
            want: |s| verdict(s) == Some(Verdict::Applied),
            calls: true,
        },
        Case {
            name: "a suspend before the sync is deferred and calls nothing",
            seen: None,
            repeat_first: false,
            unknown: &[],
            event: ev(Suspend, 2),
            want: |s| verdict(s) == Some(Verdict::Deferred),
            calls: false,
        },
        Case {
            name: "an event id decided before is a duplicate",
            seen: Some(Outcome::Applied),
            repeat_first: false,
            unknown: &[],
            event: ev(Sync, 1),
            want: |s| {
                *s == Step::Duplicate {
                    first: Outcome::Applied,
                }
            },
            calls: false,
        },
        Case {
            name: "a redelivered event decided before repeats its first result",
            seen: Some(Outcome::Deferred),
            repeat_first: true,
            unknown: &[],
            event: ev(Block, 3),
            want: |s| *s == Step::Repeat(first(Outcome::Deferred)),
            calls: false,
        },
        Case {
            name: "a sync naming an unknown product is not decided",
            seen: None,
            repeat_first: false,
            unknown: &["SKEELO-KIDS"],
            event: event(Sync, 1, &["SKEELO-EBOOKS", "SKEELO-KIDS"]),
            want: |s| *s == Step::UnknownProduct(vec![sku("SKEELO-KIDS")]),
            calls: false,
        },
        Case {
            name: "a duplicate sync is not judged against the catalogue",
            seen: Some(Outcome::Applied),
            repeat_first: false,
            unknown: &["SKEELO-KIDS"],
            event: event(Sync, 1, &["SKEELO-KIDS"]),
            want: |s| matches!(s, Step::Duplicate { .. }),
            calls: false,
        },
    ];
    for case in cases {
        let mut seen = HashMap::new();
        if let Some(o) = case.seen {
            seen.insert(case.event.event_id, first(o));
        }
        let unknown: BTreeSet<Sku> = case.unknown.iter().map(|s| sku(s)).collect();
        let plan = contract(
            &Facts::default(),
            None,
            &seen,
            &unknown,
            &[Incoming {
                event: &case.event,
                repeat_first: case.repeat_first,
            }],
        );
        assert_eq!(plan.steps.len(), 1, "{}", case.name);
        assert!(
            (case.want)(&plan.steps[0]),
            "{}: {:?}",
            case.name,
            plan.steps[0]
        );
        assert_eq!(plan.calls, case.calls, "{}: calls", case.name);
    }
}

#[test]
fn a_late_sync_is_superseded_not_judged_against_the_catalogue() {
    let events = [ev(EventType::Sync, 5), event(EventType::Sync, 2, &["GONE"])];
    let unknown = BTreeSet::from([sku("GONE")]);
    let plan = contract(
        &Facts::default(),
        None,
        &HashMap::new(),
        &unknown,
        &fresh(&events),
    );
    assert_eq!(verdict(&plan.steps[1]), Some(Verdict::Superseded));
}

#[test]
fn an_unknown_product_leaves_the_facts_as_they_were_for_the_next_events() {
    let events = [
        event(EventType::Sync, 1, &["GONE"]),
        ev(EventType::Suspend, 2),
    ];
    let unknown = BTreeSet::from([sku("GONE")]);
    let plan = contract(
        &Facts::default(),
        None,
        &HashMap::new(),
        &unknown,
        &fresh(&events),
    );
    assert!(matches!(plan.steps[0], Step::UnknownProduct(_)));
    // Never synced: the suspend waits for a sync that is valid.
    assert_eq!(verdict(&plan.steps[1]), Some(Verdict::Deferred));
    assert!(!plan.calls);
}

#[test]
fn events_of_one_contract_in_one_batch_see_each_others_facts() {
    let events = [ev(EventType::Sync, 1), ev(EventType::Suspend, 2)];
    let plan = contract(
        &Facts::default(),
        None,
        &HashMap::new(),
        &none_unknown(),
        &fresh(&events),
    );
    assert_eq!(verdict(&plan.steps[0]), Some(Verdict::Applied));
    assert_eq!(verdict(&plan.steps[1]), Some(Verdict::Applied));
    match &plan.steps[1] {
        Step::Apply {
            target: Target::Present(h),
            ..
        } => assert_eq!(h.status, Status::Inactive),
        other => panic!("expected a present target, got {other:?}"),
    }
    assert!(plan.calls);
}

#[test]
fn a_second_copy_in_the_same_batch_is_a_duplicate_or_an_echo() {
    let sync = ev(EventType::Sync, 1);
    let copy = sync.clone();
    let incoming = [
        Incoming {
            event: &sync,
            repeat_first: false,
        },
        Incoming {
            event: &copy,
            repeat_first: false,
        },
        Incoming {
            event: &copy,
            repeat_first: true,
        },
    ];
    let plan = contract(
        &Facts::default(),
        None,
        &HashMap::new(),
        &none_unknown(),
        &incoming,
    );
    assert_eq!(
        plan.steps[1],
        Step::Duplicate {
            first: Outcome::Applied
        }
    );
    assert_eq!(plan.steps[2], Step::Echo { of: 0 });

    let mut reports: Vec<Option<Report>> = Vec::new();
    for step in &plan.steps {
        let r = step.report(Some(Status::Active), &reports);
        reports.push(r);
    }
    let told: Vec<Outcome> = reports.iter().flatten().map(|r| r.told).collect();
    assert_eq!(
        told,
        [Outcome::Applied, Outcome::Duplicate, Outcome::Applied]
    );
    let decides: Vec<bool> = reports.iter().flatten().map(|r| r.decides).collect();
    assert_eq!(decides, [true, false, false], "only the first copy decides");
    let recorded: Vec<Outcome> = reports.iter().flatten().map(|r| r.recorded).collect();
    assert_eq!(
        recorded,
        [Outcome::Applied, Outcome::Duplicate, Outcome::Duplicate]
    );
}

#[test]
fn nothing_calls_when_skeelo_already_holds_the_target() {
    // Synced and active at Skeelo; a stale suspend changes nothing.
    let sync = ev(EventType::Sync, 3);
    let synced = lifecycle::decide(&Facts::default(), &sync);
    let held = match lifecycle::target(&synced.facts) {
        Target::Present(h) => h,
        other => panic!("expected a present target, got {other:?}"),
    };
    let mut facts = synced.facts.clone();
    let reactivate = ev(EventType::Reactivate, 5);
    facts = lifecycle::decide(&facts, &reactivate).facts;
    let events = [ev(EventType::Suspend, 4)];
    let plan = contract(
        &facts,
        Some(&held),
        &HashMap::new(),
        &none_unknown(),
        &fresh(&events),
    );
    assert_eq!(verdict(&plan.steps[0]), Some(Verdict::Superseded));
    assert!(!plan.calls);
}

#[test]
fn reports_say_what_the_erp_is_told() {
    let repeat = Step::Repeat(first(Outcome::Deferred)).report(Some(Status::Inactive), &[]);
    assert_eq!(
        repeat,
        Some(Report {
            told: Outcome::Deferred,
            skeelo_status: Some(Status::Active),
            detail: "subscription created".into(),
            recorded: Outcome::Duplicate,
            decides: false,
        })
    );
    let dup = Step::Duplicate {
        first: Outcome::Rejected,
    }
    .report(Some(Status::Cancelled), &[])
    .expect("a report");
    assert_eq!(dup.told, Outcome::Duplicate);
    assert_eq!(dup.skeelo_status, Some(Status::Cancelled));
    assert_eq!(dup.detail, "event already handled (rejected)");
    assert_eq!(Step::UnknownProduct(vec![sku("X")]).report(None, &[]), None);
    assert_eq!(
        Step::Echo { of: 3 }.report(None, &[]),
        None,
        "nothing to echo"
    );
}

fn arbitrary_history() -> impl Strategy<Value = Vec<(usize, i64, bool)>> {
    // (event type, version, delivered twice)
    prop::collection::vec((0usize..6, 1i64..8, any::<bool>()), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A batch decides exactly what the same events decide one by one, each in a batch
    /// of its own with the previous ones' decisions recorded.
    #[test]
    fn a_batch_decides_what_one_by_one_decides(history in arbitrary_history()) {
        let mut events = Vec::new();
        for (t, v, twice) in history {
            let e = ev(EventType::ALL[t], v);
            if twice {
                events.push(e.clone());
            }
            events.push(e);
        }
        let batch = contract(&Facts::default(), None, &HashMap::new(), &none_unknown(), &fresh(&events));

        let mut facts = Facts::default();
        let mut seen: HashMap<Uuid, Processed> = HashMap::new();
        let mut alone = Vec::new();
        for e in &events {
            let plan = contract(&facts, None, &seen, &none_unknown(), &fresh(std::slice::from_ref(e)));
            let step = plan.steps[0].clone();
            if let Step::Apply { decision, .. } = &step {
                facts = decision.facts.clone();
                seen.insert(e.event_id, Processed {
                    outcome: Outcome::from(decision.verdict),
                    skeelo_status: None,
                    detail: decision.detail.clone(),
                });
            }
            alone.push(step);
        }
        prop_assert_eq!(&batch.steps, &alone);
        prop_assert_eq!(end_state(&Facts::default(), &batch), facts);
    }
}
