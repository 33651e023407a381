//! The lifecycle rules of CONTRACT §2, with no I/O.
//!
//! The queues are separate, so a contract's events arrive in any order. Instead of
//! replaying history, each contract keeps four independent facts, each moved only by its
//! own pair of events and guarded by the version that last moved it. Applying an event
//! is then a pure function of (facts, event), and the Skeelo status follows from the
//! facts alone — which is what makes every delivery order converge.
//!
//! [`decide`] says what an event does to the facts; [`target`] says what Skeelo should
//! hold; [`plan`] lists the fewest Skeelo calls that get it there from what Skeelo holds.

use serde::{Deserialize, Serialize};

use crate::event::{Email, Event, EventType, Phone, Sku, SyncDetails, Version};

/// The subscription status at Skeelo (CONTRACT §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The subscriber can read.
    Active,
    /// Suspended or blocked: no access, but it can come back.
    Inactive,
    /// Terminal.
    Cancelled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses the wire name.
    pub fn from_name(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "inactive" => Some(Status::Inactive),
            "cancelled" => Some(Status::Cancelled),
            _ => None,
        }
    }
}

/// A fact moved by a pair of events (suspend/reactivate, block/unblock): the last
/// writer by version wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toggle {
    /// Version of the event that set it last.
    pub version: Version,
    /// `true` after suspend/block, `false` after reactivate/unblock.
    pub on: bool,
}

/// The latest `sync` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// Its version.
    pub version: Version,
    /// What it carried.
    pub details: SyncDetails,
}

/// The four facts the fleet keeps per contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Subscriber details and products, from the latest sync.
    pub synced: Option<Synced>,
    /// suspend / reactivate.
    pub suspended: Option<Toggle>,
    /// block / unblock.
    pub blocked: Option<Toggle>,
    /// The version of the earliest cancel seen; once set, never cleared.
    pub cancelled: Option<Version>,
}

impl Facts {
    /// `true` while a suspend is in force.
    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some_and(|t| t.on)
    }

    /// `true` while a manual block is in force.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some_and(|t| t.on)
    }
}

/// What an event did, before any Skeelo call (duplicates are found by the store, which
/// knows the event ids; invalid input never gets this far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The facts changed; Skeelo is brought in line.
    Applied,
    /// Recorded; takes effect when the contract's sync arrives.
    Deferred,
    /// A newer event of the same pair (or the cancel) already decided this; nothing changes.
    Superseded,
    /// Not allowed after a cancel: the ERP must create a new contract.
    Rejected,
}

/// The result of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happened to the event.
    pub verdict: Verdict,
    /// The facts after it.
    pub facts: Facts,
    /// Why, in words for the ERP's result message.
    pub detail: String,
}

/// Applies one event to a contract's facts.
pub fn decide(facts: &Facts, event: &Event) -> Decision {
    let v = event.version;
    let mut next = facts.clone();
    let done = |verdict, facts, detail: String| Decision {
        verdict,
        facts,
        detail,
    };

    if let Some(cancel_v) = facts.cancelled {
        if event.event_type == EventType::Cancel {
            if v < cancel_v {
                // An earlier cancel arriving late: keep the earliest, so the facts do not
                // depend on which cancel came first.
                next.cancelled = Some(v);
            }
            return done(
                Verdict::Superseded,
                next,
                format!("contract already cancelled ({cancel_v})"),
            );
        }
        if v <= cancel_v {
            return done(
                Verdict::Superseded,
                next,
                format!("contract was cancelled at {cancel_v}, after this {v}"),
            );
        }
        return match event.event_type {
            EventType::Sync | EventType::Reactivate | EventType::Unblock => done(
                Verdict::Rejected,
                next,
                format!(
                    "contract was cancelled at {cancel_v}; a cancelled contract cannot come back: create a new contract"
                ),
            ),
            _ => done(
                Verdict::Superseded,
                next,
                format!("contract is cancelled ({cancel_v}); nothing left to remove"),
            ),
        };
    }

    let synced = facts.synced.is_some();
    let (slot, on) = match event.event_type {
        EventType::Sync => {
            if let Some(s) = &facts.synced {
                if s.version >= v {
                    return done(
                        Verdict::Superseded,
                        next,
                        format!("sync {} already applied", s.version),
                    );
                }
            }
            let Some(details) = event.sync.clone() else {
                // `event::parse` guarantees details on every sync; an Event built by
                // hand without them cannot change what Skeelo holds.
                return done(Verdict::Superseded, next, "sync without details".into());
            };
            next.synced = Some(Synced {
                version: v,
                details,
            });
            let what = if synced {
                "subscription updated"
            } else {
                "subscription created"
            };
            return done(Verdict::Applied, next, what.into());
        }
        EventType::Cancel => {
            next.cancelled = Some(v);
            return if synced {
                done(Verdict::Applied, next, "contract cancelled".into())
            } else {
                done(
                    Verdict::Applied,
                    next,
                    "contract cancelled before it reached Skeelo; it will never be created there"
                        .into(),
                )
            };
        }
        EventType::Suspend => (&mut next.suspended, true),
        EventType::Reactivate => (&mut next.suspended, false),
        EventType::Block => (&mut next.blocked, true),
        EventType::Unblock => (&mut next.blocked, false),
    };
    if let Some(current) = slot {
        if current.version >= v {
            let by = current.version;
            return done(
                Verdict::Superseded,
                next,
                format!("a newer event of this pair ({by}) was already applied"),
            );
        }
    }
    *slot = Some(Toggle { version: v, on });
    if synced {
        done(
            Verdict::Applied,
            next,
            format!("{} recorded", event.event_type),
        )
    } else {
        done(
            Verdict::Deferred,
            next,
            format!(
                "{} recorded; takes effect when the contract is synced",
                event.event_type
            ),
        )
    }
}

/// What Skeelo holds for one subscription, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Full name.
    pub name: String,
    /// Contact address.
    pub email: Email,
    /// Optional contact number.
    pub phone: Option<Phone>,
    /// Sorted SKUs.
    pub products: Vec<Sku>,
}

impl Profile {
    /// The profile a sync asks for.
    pub fn from_sync(details: &SyncDetails) -> Profile {
        Profile {
            name: details.subscriber.name.clone(),
            email: details.subscriber.email.clone(),
            phone: details.subscriber.phone.clone(),
            products: details.products.clone(),
        }
    }
}

/// A subscription as Skeelo holds it (or as the fleet last saw it there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Contact data and products.
    pub profile: Profile,
    /// Its status.
    pub status: Status,
}

/// What Skeelo should hold for a contract: nothing, or a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Not synced yet: nothing to do at Skeelo.
    Absent,
    /// Cancelled before its sync was applied: Skeelo must not give access. Nothing is
    /// created for it; a subscription left there by an interrupted earlier attempt
    /// is cancelled.
    Withdrawn,
    /// The subscription Skeelo should hold.
    Present(Held),
}

/// The Skeelo status the facts call for (CONTRACT §2).
pub fn target(facts: &Facts) -> Target {
    let Some(synced) = &facts.synced else {
        return if facts.cancelled.is_some() {
            Target::Withdrawn
        } else {
            Target::Absent
        };
    };
    let status = if facts.cancelled.is_some() {
        Status::Cancelled
    } else if facts.is_suspended() || facts.is_blocked() {
        Status::Inactive
    } else {
        Status::Active
    };
    Target::Present(Held {
        profile: Profile::from_sync(&synced.details),
        status,
    })
}

/// The fields of a PATCH; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New name.
    pub name: Option<String>,
    /// New e-mail.
    pub email: Option<Email>,
    /// New phone (`Some(None)` clears it).
    pub phone: Option<Option<Phone>>,
    /// New product list.
    pub products: Option<Vec<Sku>>,
}

/// One call to Skeelo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/subscriptions` (Skeelo creates it active).
    Create,
    /// `PATCH /v1/subscriptions/{id}`.
    Update(Changes),
    /// `PUT /v1/subscriptions/{id}/status`.
    SetStatus(Status),
}

/// The fewest calls that take Skeelo from `held` to `target`.
///
/// Nothing is ever created only to be cancelled, and nothing is sent to a cancelled
/// subscription: Skeelo refuses both, and a correct client does not try.
pub fn plan(held: Option<&Held>, target: &Target) -> Vec<Call> {
    let want = match target {
        Target::Present(want) => want,
        Target::Absent => return Vec::new(),
        Target::Withdrawn => {
            return match held {
                Some(h) if h.status != Status::Cancelled => {
                    vec![Call::SetStatus(Status::Cancelled)]
                }
                _ => Vec::new(),
            }
        }
    };
    match held {
        None => match want.status {
            Status::Cancelled => Vec::new(),
            Status::Active => vec![Call::Create],
            Status::Inactive => vec![Call::Create, Call::SetStatus(Status::Inactive)],
        },
        Some(have) if have.status == Status::Cancelled => Vec::new(),
        Some(have) => {
            let mut calls = Vec::new();
            if want.status != Status::Cancelled {
                let changes = diff(&have.profile, &want.profile);
                if changes != Changes::default() {
                    calls.push(Call::Update(changes));
                }
            }
            if have.status != want.status {
                calls.push(Call::SetStatus(want.status));
            }
            calls
        }
    }
}

fn diff(have: &Profile, want: &Profile) -> Changes {
    Changes {
        name: (have.name != want.name).then(|| want.name.clone()),
        email: (have.email != want.email).then(|| want.email.clone()),
        phone: (have.phone != want.phone).then(|| want.phone.clone()),
        products: (have.products != want.products).then(|| want.products.clone()),
    }
}

/// Skeelo holds what the facts call for (the drift check operators run): where no
/// access should exist, nothing or a cancelled subscription; otherwise the same status
/// and the same products.
pub fn holds(target: &Target, held: Option<&Held>) -> bool {
    let no_access = |h: Option<&Held>| h.is_none_or(|h| h.status == Status::Cancelled);
    match target {
        Target::Absent | Target::Withdrawn => no_access(held),
        Target::Present(want) if want.status == Status::Cancelled => no_access(held),
        Target::Present(want) => held.is_some_and(|h| {
            h.status == want.status && h.profile.products == want.profile.products
        }),
    }
}

/// What Skeelo holds after `calls` succeed, starting from `held` (used to check plans).
pub fn after(held: Option<&Held>, target: &Target, calls: &[Call]) -> Option<Held> {
    let mut now = held.cloned();
    for call in calls {
        match call {
            Call::Create => {
                if let Target::Present(want) = target {
                    now = Some(Held {
                        profile: want.profile.clone(),
                        status: Status::Active,
                    })
                }
            }
            Call::Update(c) => {
                if let Some(h) = now.as_mut() {
                    if let Some(n) = &c.name {
                        h.profile.name = n.clone();
                    }
                    if let Some(e) = &c.email {
                        h.profile.email = e.clone();
                    }
                    if let Some(p) = &c.phone {
                        h.profile.phone = p.clone();
                    }
                    if let Some(p) = &c.products {
                        h.profile.products = p.clone();
                    }
                }
            }
            Call::SetStatus(s) => {
                if let Some(h) = now.as_mut() {
                    h.status = *s;
                }
            }
        }
    }
    now
}

#[cfg(test)]
mod tests;
