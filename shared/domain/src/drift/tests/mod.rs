use super::*;
use crate::event::{Email, Sku};
use crate::lifecycle::{after, Changes, Profile};

fn profile(products: &[&str], name: &str) -> Profile {
    Profile {
        name: name.into(),
        email: Email::parse("maria@example.com.br").expect("valid e-mail"),
        phone: None,
        products: products
            .iter()
            .map(|s| Sku::parse(s).expect("valid SKU"))
            .collect(),
    }
}

fn held(status: Status, products: &[&str], name: &str) -> Held {
    Held {
        profile: profile(products, name),
        status,
    }
}

fn present(status: Status) -> Target {
    Target::Present(held(status, &["SKEELO-AUDIO", "SKEELO-EBOOKS"], "Maria"))
}

const STATUSES: [Status; 3] = [Status::Active, Status::Inactive, Status::Cancelled];

fn targets() -> Vec<Target> {
    let mut t = vec![Target::Absent, Target::Withdrawn];
    t.extend(STATUSES.map(present));
    t
}

/// Every subscription Skeelo could hold for the targets above: nothing, or any status
/// with the right or fewer products and the right or another name.
fn helds() -> Vec<Option<Held>> {
    let mut h = vec![None];
    for status in STATUSES {
        for products in [
            &["SKEELO-AUDIO", "SKEELO-EBOOKS"][..],
            &["SKEELO-EBOOKS"][..],
        ] {
            for name in ["Maria", "Maria S."] {
                h.push(Some(held(status, products, name)));
            }
        }
    }
    h
}

#[test]
fn no_drift_exactly_when_skeelo_holds_the_target_and_no_call_is_due() {
    for t in targets() {
        for h in helds() {
            let none =
                lifecycle::holds(&t, h.as_ref()) && lifecycle::plan(h.as_ref(), &t).is_empty();
            assert_eq!(drift(&t, h.as_ref()).is_none(), none, "{t:?} / {h:?}");
        }
    }
}

#[test]
fn every_repair_converges_and_none_calls_a_cancelled_subscription() {
    for t in targets() {
        for h in helds() {
            let Some(d) = drift(&t, h.as_ref()) else {
                continue;
            };
            assert!(!d.kinds.is_empty());
            if h.as_ref().is_some_and(|h| h.status == Status::Cancelled) {
                assert!(d.calls.is_empty(), "a call after a cancel: {t:?} / {h:?}");
            }
            if d.repairable() {
                let now = after(h.as_ref(), &t, &d.calls);
                assert_eq!(drift(&t, now.as_ref()), None, "{t:?} / {h:?} → {now:?}");
            }
        }
    }
}

#[test]
fn only_the_kinds_for_people_are_left_unrepaired() {
    for t in targets() {
        for h in helds() {
            let Some(d) = drift(&t, h.as_ref()) else {
                continue;
            };
            let for_people = d
                .kinds
                .iter()
                .any(|k| matches!(k, Kind::CancelledAtSkeelo | Kind::Unexpected));
            assert_eq!(!d.repairable(), for_people, "{t:?} / {h:?}: {d:?}");
        }
    }
}

#[test]
fn a_product_stripped_behind_the_fleets_back_is_set_again() {
    let h = held(Status::Active, &["SKEELO-EBOOKS"], "Maria");
    let d = drift(&present(Status::Active), Some(&h)).expect("drift");
    assert_eq!(d.kinds, vec![Kind::Products]);
    let Some(Call::Update(Changes { products, name, .. })) = d.calls.first() else {
        panic!("expected an update: {d:?}");
    };
    assert_eq!(products.as_ref().map(Vec::len), Some(2));
    assert_eq!(name, &None);
}

#[test]
fn a_subscription_reactivated_behind_the_fleets_back_is_suspended_again() {
    let h = held(Status::Active, &["SKEELO-AUDIO", "SKEELO-EBOOKS"], "Maria");
    let d = drift(&present(Status::Inactive), Some(&h)).expect("drift");
    assert_eq!(d.kinds, vec![Kind::Status]);
    assert_eq!(d.calls, vec![Call::SetStatus(Status::Inactive)]);
    // A contract cancelled in the ERP whose subscription came back: cancelled again.
    let d = drift(&present(Status::Cancelled), Some(&h)).expect("drift");
    assert_eq!(d.calls, vec![Call::SetStatus(Status::Cancelled)]);
    let d = drift(&Target::Withdrawn, Some(&h)).expect("drift");
    assert_eq!(d.calls, vec![Call::SetStatus(Status::Cancelled)]);
}

#[test]
fn a_subscription_cancelled_behind_the_fleets_back_is_left_for_people() {
    let h = held(
        Status::Cancelled,
        &["SKEELO-AUDIO", "SKEELO-EBOOKS"],
        "Maria",
    );
    for status in [Status::Active, Status::Inactive] {
        let d = drift(&present(status), Some(&h)).expect("drift");
        assert_eq!(d.kinds, vec![Kind::CancelledAtSkeelo]);
        assert!(d.calls.is_empty());
    }
}

#[test]
fn a_missing_subscription_is_created_in_its_status() {
    let d = drift(&present(Status::Active), None).expect("drift");
    assert_eq!(
        (d.kinds, d.calls),
        (vec![Kind::Missing], vec![Call::Create])
    );
    let d = drift(&present(Status::Inactive), None).expect("drift");
    assert_eq!(
        d.calls,
        vec![Call::Create, Call::SetStatus(Status::Inactive)]
    );
    assert_eq!(drift(&present(Status::Cancelled), None), None);
}

#[test]
fn several_kinds_are_named_together_in_order() {
    let h = held(Status::Active, &["SKEELO-EBOOKS"], "Maria S.");
    let d = drift(&present(Status::Inactive), Some(&h)).expect("drift");
    assert_eq!(d.kinds, vec![Kind::Status, Kind::Products, Kind::Contact]);
    let names: Vec<&str> = d.kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ["status", "products", "contact"]);
}

#[test]
fn a_subscription_the_facts_never_asked_for_is_unexpected() {
    let h = held(Status::Active, &["SKEELO-EBOOKS"], "Maria");
    let d = drift(&Target::Absent, Some(&h)).expect("drift");
    assert_eq!(d.kinds, vec![Kind::Unexpected]);
    assert!(!d.repairable());
    let gone = held(Status::Cancelled, &["SKEELO-EBOOKS"], "Maria");
    assert_eq!(drift(&Target::Absent, Some(&gone)), None);
}
