use std::collections::HashSet;

use proptest::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::event::{ContractId, Document, Plan, Sku, Subscriber};

fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid SKU")
}

fn details(products: &[&str], name: &str) -> SyncDetails {
    let mut products: Vec<Sku> = products.iter().map(|s| sku(s)).collect();
    products.sort();
    SyncDetails {
        plan: Plan {
            code: "SVA-LEITURA".into(),
            months: 12,
            monthly_value: "9.90".into(),
        },
        products,
        subscriber: Subscriber {
            id: "10077".into(),
            name: name.into(),
            document: Document::parse("52998224725").expect("valid CPF"),
            email: Email::parse("maria@example.com.br").expect("valid e-mail"),
            phone: None,
        },
    }
}

fn ev(t: EventType, version: i64) -> Event {
    Event {
        event_id: Uuid::new_v4(),
        event_type: t,
        occurred_at: OffsetDateTime::UNIX_EPOCH,
        contract_id: ContractId::parse("48213").expect("valid id"),
        version: Version::new(version).expect("version ≥ 1"),
        sync: (t == EventType::Sync).then(|| details(&["SKEELO-EBOOKS"], "Maria")),
        actor: None,
    }
}

fn sync_with(version: i64, products: &[&str]) -> Event {
    let mut e = ev(EventType::Sync, version);
    e.sync = Some(details(products, "Maria"));
    e
}

/// What a delivery does end to end in the rules: decide, plan, and what Skeelo holds after.
#[derive(Default, Clone)]
struct World {
    facts: Facts,
    held: Option<Held>,
    seen: HashSet<Uuid>,
    calls: Vec<Call>,
}

impl World {
    fn deliver(&mut self, e: &Event) -> Option<Verdict> {
        if !self.seen.insert(e.event_id) {
            return None; // duplicate: no decision, no call
        }
        let d = decide(&self.facts, e);
        self.facts = d.facts;
        let t = target(&self.facts);
        let calls = plan(self.held.as_ref(), &t);
        if let Some(h) = &self.held {
            assert!(
                h.status != Status::Cancelled || calls.is_empty(),
                "a call to a cancelled subscription"
            );
        }
        assert!(
            calls.len() <= 3,
            "more calls than any change needs: {calls:?}"
        );
        self.held = after(self.held.as_ref(), &t, &calls);
        assert!(
            plan(self.held.as_ref(), &t).is_empty(),
            "the plan did not reach its target"
        );
        self.calls.extend(calls);
        Some(d.verdict)
    }

    fn status(&self) -> Option<Status> {
        self.held.as_ref().map(|h| h.status)
    }
}

fn run(events: &[Event]) -> World {
    let mut w = World::default();
    for e in events {
        w.deliver(e);
    }
    w
}

#[test]
fn sync_creates_an_active_subscription() {
    let w = run(&[ev(EventType::Sync, 1)]);
    assert_eq!(w.status(), Some(Status::Active));
    assert_eq!(w.calls, vec![Call::Create]);
}

#[test]
fn a_suspend_before_its_sync_is_deferred_then_takes_effect() {
    let mut w = World::default();
    assert_eq!(
        w.deliver(&ev(EventType::Suspend, 2)),
        Some(Verdict::Deferred)
    );
    assert!(w.calls.is_empty());
    assert_eq!(w.deliver(&ev(EventType::Sync, 1)), Some(Verdict::Applied));
    assert_eq!(w.status(), Some(Status::Inactive));
    assert_eq!(
        w.calls,
        vec![Call::Create, Call::SetStatus(Status::Inactive)]
    );
}

#[test]
fn a_late_event_of_the_same_pair_is_superseded() {
    let mut w = run(&[ev(EventType::Sync, 1), ev(EventType::Reactivate, 5)]);
    assert_eq!(
        w.deliver(&ev(EventType::Suspend, 3)),
        Some(Verdict::Superseded)
    );
    assert_eq!(w.status(), Some(Status::Active));
}

#[test]
fn pairs_never_supersede_each_other() {
    let mut w = run(&[ev(EventType::Sync, 1), ev(EventType::Suspend, 5)]);
    assert_eq!(w.deliver(&ev(EventType::Block, 4)), Some(Verdict::Applied));
    assert_eq!(
        w.deliver(&ev(EventType::Reactivate, 6)),
        Some(Verdict::Applied)
    );
    assert_eq!(w.status(), Some(Status::Inactive), "still blocked by hand");
    assert_eq!(
        w.deliver(&ev(EventType::Unblock, 7)),
        Some(Verdict::Applied)
    );
    assert_eq!(w.status(), Some(Status::Active));
}

#[test]
fn blocked_and_suspended_needs_one_status_call() {
    let w = run(&[
        ev(EventType::Sync, 1),
        ev(EventType::Suspend, 2),
        ev(EventType::Block, 3),
    ]);
    assert_eq!(
        w.calls,
        vec![Call::Create, Call::SetStatus(Status::Inactive)],
        "the block changes nothing at Skeelo"
    );
}

#[test]
fn reactivate_after_cancel_is_rejected() {
    let mut w = run(&[ev(EventType::Sync, 1), ev(EventType::Cancel, 2)]);
    assert_eq!(w.status(), Some(Status::Cancelled));
    let calls_before = w.calls.len();
    for t in [EventType::Reactivate, EventType::Unblock, EventType::Sync] {
        assert_eq!(w.deliver(&ev(t, 3)), Some(Verdict::Rejected), "{t}");
    }
    assert_eq!(
        w.deliver(&ev(EventType::Suspend, 4)),
        Some(Verdict::Superseded)
    );
    assert_eq!(
        w.deliver(&ev(EventType::Reactivate, 1)),
        Some(Verdict::Superseded)
    );
    assert_eq!(w.calls.len(), calls_before, "no call after cancel");
    assert_eq!(w.status(), Some(Status::Cancelled));
}

#[test]
fn a_contract_cancelled_before_its_sync_is_never_created() {
    let mut w = World::default();
    assert_eq!(w.deliver(&ev(EventType::Cancel, 2)), Some(Verdict::Applied));
    assert_eq!(
        w.deliver(&ev(EventType::Sync, 1)),
        Some(Verdict::Superseded)
    );
    assert!(w.calls.is_empty());
    assert_eq!(w.status(), None);
}

#[test]
fn a_subscription_left_by_an_interrupted_sync_is_cancelled_when_the_cancel_wins() {
    // The sync's create reached Skeelo, but its transaction never committed; the cancel
    // then came first. What Skeelo holds is read back and cancelled.
    let mut facts = Facts::default();
    facts = decide(&facts, &ev(EventType::Cancel, 2)).facts;
    let leftover = Held {
        profile: Profile::from_sync(&details(&["SKEELO-EBOOKS"], "Maria")),
        status: Status::Active,
    };
    let t = target(&facts);
    assert_eq!(t, Target::Withdrawn);
    assert_eq!(
        plan(Some(&leftover), &t),
        vec![Call::SetStatus(Status::Cancelled)]
    );
    assert_eq!(
        plan(None, &t),
        vec![],
        "nothing is created only to be cancelled"
    );
}

#[test]
fn a_later_sync_changes_products_with_one_patch() {
    let mut w = run(&[sync_with(1, &["SKEELO-EBOOKS"])]);
    assert_eq!(
        w.deliver(&sync_with(2, &["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS"])),
        Some(Verdict::Applied)
    );
    let last = w.calls.last().cloned();
    let Some(Call::Update(c)) = last else {
        panic!("expected an update, got {last:?}");
    };
    assert_eq!(
        c.products,
        Some(vec![sku("SKEELO-AUDIOBOOKS"), sku("SKEELO-EBOOKS")])
    );
    assert_eq!(c.name, None, "unchanged fields are not sent");
    // The older sync arriving late changes nothing.
    assert_eq!(
        w.deliver(&sync_with(1, &["SKEELO-MINIBOOKS"])),
        Some(Verdict::Superseded)
    );
    let products = w.held.as_ref().map(|h| h.profile.products.clone());
    assert_eq!(
        products,
        Some(vec![sku("SKEELO-AUDIOBOOKS"), sku("SKEELO-EBOOKS")])
    );
}

#[test]
fn the_same_sync_twice_makes_no_second_call() {
    let first = sync_with(1, &["SKEELO-EBOOKS"]);
    let mut w = run(std::slice::from_ref(&first));
    assert_eq!(w.deliver(&first), None);
    assert_eq!(w.calls, vec![Call::Create]);
}

#[test]
fn an_earlier_cancel_arriving_late_keeps_the_earliest_version() {
    let mut w = run(&[ev(EventType::Sync, 1), ev(EventType::Cancel, 7)]);
    assert_eq!(
        w.deliver(&ev(EventType::Cancel, 5)),
        Some(Verdict::Superseded)
    );
    assert_eq!(w.facts.cancelled.map(Version::get), Some(5));
    assert_eq!(
        w.deliver(&ev(EventType::Reactivate, 6)),
        Some(Verdict::Rejected)
    );
}

#[test]
fn an_inactive_contract_that_is_cancelled_gets_one_call() {
    let w = run(&[
        ev(EventType::Sync, 1),
        ev(EventType::Block, 2),
        ev(EventType::Cancel, 3),
    ]);
    assert_eq!(
        w.calls,
        vec![
            Call::Create,
            Call::SetStatus(Status::Inactive),
            Call::SetStatus(Status::Cancelled)
        ]
    );
}

/// What counts as "the same end at Skeelo": a cancelled subscription and one that was
/// never created are both gone for good (CONTRACT §2: a contract cancelled before it
/// reached Skeelo is never created there), and a gone subscription's products no
/// longer matter.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Gone,
    Live(Status, Vec<Sku>),
}

fn end(w: &World) -> End {
    match &w.held {
        None => End::Gone,
        Some(h) if h.status == Status::Cancelled => End::Gone,
        Some(h) => End::Live(h.status, h.profile.products.clone()),
    }
}

const SKUS: [&str; 3] = ["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS", "SKEELO-MINIBOOKS"];

/// A contract's history as the ERP makes it: versions grow by one per change. After a
/// cancel the ERP may still try to sync (only when the contract had been synced before),
/// reactivate or unblock: those are the attempts the fleet must reject.
fn history() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (0usize..6, prop::sample::subsequence(SKUS.to_vec(), 1..=3)),
        1..10,
    )
    .prop_map(|steps| {
        let mut events = Vec::new();
        let mut synced_before_cancel = false;
        let mut cancelled = false;
        for (i, (t, products)) in steps.into_iter().enumerate() {
            let mut t = EventType::ALL[t];
            if t == EventType::Sync && cancelled && !synced_before_cancel {
                t = EventType::Reactivate;
            }
            match t {
                EventType::Sync if !cancelled => synced_before_cancel = true,
                EventType::Cancel => cancelled = true,
                _ => {}
            }
            let version = i as i64 + 1;
            events.push(if t == EventType::Sync {
                sync_with(version, &products)
            } else {
                ev(t, version)
            });
        }
        events
    })
}

/// A delivery order: any permutation, with some events delivered again.
fn delivery(events: Vec<Event>) -> impl Strategy<Value = (Vec<Event>, Vec<Event>)> {
    let n = events.len();
    (
        Just(events.clone()).prop_shuffle(),
        prop::collection::vec(0..n, 0..4),
    )
        .prop_map(move |(mut shuffled, dups)| {
            for (k, i) in dups.into_iter().enumerate() {
                let at = (i + k) % (shuffled.len() + 1);
                shuffled.insert(at, events[i].clone());
            }
            (events.clone(), shuffled)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_order_ends_where_in_order_delivery_ends(
        (in_order, shuffled) in history().prop_flat_map(delivery)
    ) {
        let expected = run(&in_order);
        let got = run(&shuffled);
        prop_assert_eq!(end(&got), end(&expected));
    }

    #[test]
    fn applying_twice_changes_nothing(events in history()) {
        let w = run(&events);
        for e in &events {
            let d = decide(&w.facts, e);
            prop_assert_eq!(&d.facts, &w.facts);
            prop_assert!(d.verdict != Verdict::Applied && d.verdict != Verdict::Deferred);
        }
    }

    #[test]
    fn skeelo_is_never_called_after_cancel(events in history().prop_flat_map(delivery)) {
        let (_, shuffled) = events;
        let mut w = World::default();
        for e in &shuffled {
            let cancelled_before = w.status() == Some(Status::Cancelled);
            let calls_before = w.calls.len();
            w.deliver(e);
            prop_assert!(!cancelled_before || w.calls.len() == calls_before);
        }
    }
}

#[test]
fn holds_tells_drift_from_agreement() {
    let facts = decide(&Facts::default(), &ev(EventType::Sync, 1)).facts;
    let Target::Present(active) = target(&facts) else {
        panic!("a synced contract has a subscription");
    };
    let with = |status, products: &[&str]| Held {
        profile: Profile {
            products: products.iter().map(|p| sku(p)).collect(),
            ..active.profile.clone()
        },
        status,
    };
    let present = Target::Present(active.clone());
    assert!(holds(&present, Some(&active)));
    assert!(!holds(&present, None), "missing at Skeelo");
    assert!(!holds(
        &present,
        Some(&with(Status::Inactive, &["SKEELO-EBOOKS"]))
    ));
    assert!(
        !holds(&present, Some(&with(Status::Active, &["SKEELO-KIDS"]))),
        "other products"
    );
    for gone in [Target::Absent, Target::Withdrawn] {
        assert!(holds(&gone, None));
        assert!(holds(&gone, Some(&with(Status::Cancelled, &[]))));
        assert!(!holds(&gone, Some(&active)), "access that should not exist");
    }
    let cancelled = Target::Present(with(Status::Cancelled, &["SKEELO-EBOOKS"]));
    assert!(holds(&cancelled, None));
    assert!(!holds(&cancelled, Some(&with(Status::Inactive, &[]))));
}
