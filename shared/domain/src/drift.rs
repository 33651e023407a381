//! Drift: how what Skeelo holds differs from what a contract's facts call for, and
//! whether calls the lifecycle rules allow can bring it back. Skeelo's state changes
//! behind the fleet's back (its support cancels or reactivates a subscription, removes
//! a product); a repair must then go through [`lifecycle::plan`] like any event, so it
//! never makes a call the rules forbid — above all, nothing after a cancel.

use serde::Serialize;

use crate::lifecycle::{self, Call, Held, Status, Target};

/// A kind of difference, as counted in repair runs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The facts call for a subscription that Skeelo does not hold: it is created.
    Missing,
    /// Skeelo's status is not the one the facts call for (reactivated or suspended
    /// behind the fleet's back, or not cancelled): it is set.
    Status,
    /// Skeelo's products are not the contract's: they are set.
    Products,
    /// Name, e-mail or phone differ: they are set.
    Contact,
    /// Skeelo cancelled a subscription the facts keep: a cancel is final there, so no
    /// call can restore it. People decide (the ERP creates a new contract, or Skeelo's
    /// support restores it).
    CancelledAtSkeelo,
    /// Skeelo gives access for a contract the facts never synced: the fleet did not
    /// create it and the rules have no call for it. People decide.
    Unexpected,
}

impl Kind {
    /// The name in runs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Status => "status",
            Kind::Products => "products",
            Kind::Contact => "contact",
            Kind::CancelledAtSkeelo => "cancelled_at_skeelo",
            Kind::Unexpected => "unexpected",
        }
    }

    /// Every kind, for metrics that should exist before the first difference.
    pub const ALL: [Kind; 6] = [
        Kind::Missing,
        Kind::Status,
        Kind::Products,
        Kind::Contact,
        Kind::CancelledAtSkeelo,
        Kind::Unexpected,
    ];
}

/// How one contract differs from Skeelo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The kinds of difference, sorted, at least one.
    pub kinds: Vec<Kind>,
    /// The calls that repair it ([`lifecycle::plan`]'s); empty when none may.
    pub calls: Vec<Call>,
}

impl Drift {
    /// Calls the rules allow can repair it.
    pub fn repairable(&self) -> bool {
        !self.calls.is_empty()
    }
}

/// How Skeelo's `held` differs from `target`; `None` when it holds what the facts say
/// (the same status, products and contact data; a cancelled subscription where no
/// access should exist).
pub fn drift(target: &Target, held: Option<&Held>) -> Option<Drift> {
    let calls = lifecycle::plan(held, target);
    if calls.is_empty() && lifecycle::holds(target, held) {
        return None;
    }
    let mut kinds = Vec::new();
    match (target, held) {
        (Target::Absent, Some(_)) => kinds.push(Kind::Unexpected),
        (Target::Present(want), None) if want.status != Status::Cancelled => {
            kinds.push(Kind::Missing)
        }
        (Target::Present(want), Some(have))
            if have.status == Status::Cancelled && want.status != Status::Cancelled =>
        {
            kinds.push(Kind::CancelledAtSkeelo)
        }
        (Target::Present(want), Some(have)) => {
            if have.status != want.status {
                kinds.push(Kind::Status);
            }
            if want.status != Status::Cancelled {
                if have.profile.products != want.profile.products {
                    kinds.push(Kind::Products);
                }
                if have.profile.name != want.profile.name
                    || have.profile.email != want.profile.email
                    || have.profile.phone != want.profile.phone
                {
                    kinds.push(Kind::Contact);
                }
            }
        }
        (Target::Withdrawn, Some(_)) => kinds.push(Kind::Status),
        // Nothing held where nothing or a cancel is wanted holds already.
        (Target::Absent | Target::Withdrawn | Target::Present(_), None) => {}
    }
    if kinds.is_empty() {
        // `holds` and `plan` disagree with every kind above: name it by the calls.
        kinds.push(Kind::Status);
    }
    kinds.sort();
    Some(Drift { kinds, calls })
}

#[cfg(test)]
mod tests;
