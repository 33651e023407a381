//! Bringing one subscription at Skeelo to what the lifecycle rules say it should be.
//! Events and drift repairs both go through here, so they make the same calls for the
//! same difference and never one the rules forbid (nothing after a cancel).

use skeelo_domain::lifecycle::{self, Call, Held, Target};

use crate::api::{NewSubscription, SkeeloClient, SkeeloError};

/// Most calls one convergence makes before it gives up: a plan never needs more than
/// three, so more means Skeelo keeps answering something else than asked.
const MOST_CALLS: i32 = 6;

/// Calls Skeelo until it holds `target`, starting from `held`, re-planning after every
/// answer (an adopted subscription, or one changed behind the fleet's back, may need
/// other calls than first planned). Returns what Skeelo holds afterwards and how many
/// calls it took. `document` (digits) is needed only to create.
pub async fn converge(
    skeelo: &SkeeloClient,
    contract_id: &str,
    document: Option<&str>,
    mut held: Option<Held>,
    target: &Target,
) -> Result<(Option<Held>, i32), SkeeloError> {
    let mut made = 0;
    loop {
        let calls = lifecycle::plan(held.as_ref(), target);
        let Some(call) = calls.first() else {
            return Ok((held, made));
        };
        if made >= MOST_CALLS {
            return Err(SkeeloError::Transient(format!(
                "Skeelo did not reach the expected state after {MOST_CALLS} calls"
            )));
        }
        made += 1;
        held = match (call, target) {
            (Call::Create, Target::Present(want)) => {
                let new = NewSubscription {
                    external_id: contract_id,
                    document: document.unwrap_or_default(),
                    profile: &want.profile,
                };
                Some(skeelo.create(&new).await?.held())
            }
            (Call::Create, _) => held,
            (Call::Update(changes), _) => {
                skeelo.update(contract_id, changes).await?.map(|s| s.held())
            }
            (Call::SetStatus(to), _) => {
                skeelo.set_status(contract_id, *to).await?.map(|s| s.held())
            }
        };
    }
}
