//! Sending parked dead letters back, as operators do from the command line or the
//! console: every letter matching a filter (not a page of them), each marked requeued
//! only once the broker confirmed its copy, and one line in the audit trail.

use serde::Serialize;
use serde_json::json;
use skeelo_broker::{self as broker, Publisher};
use skeelo_store::dead::{Filter, LetterState};
use skeelo_store::{Store, StoreError};

/// What a requeue did.
#[derive(Debug, Clone, Serialize)]
pub struct Requeued {
    /// The letters sent back (their copies confirmed by the broker).
    pub ids: Vec<i64>,
    /// Why it stopped before the last match, if it did (the rest stay parked).
    pub stopped_early: Option<String>,
}

/// Letters read from the database at once.
const PAGE: usize = 500;
/// The most letters one requeue takes (a larger selection is narrowed first).
pub const MOST: i64 = 100_000;

/// Requeues the parked letters matching `filter` as `who` — those that match when it
/// begins, no others: a letter the fleet parks again while this runs (its cause not
/// cleared yet) waits for the next requeue, so a requeue always ends. `what` describes
/// the selection in the audit trail; `progress` hears the count so far and answers
/// whether to go on (a stopping program says no: the requeue ends there, with its
/// audit line for what it did).
pub async fn matching(
    store: &Store,
    publisher: &Publisher,
    filter: &Filter,
    who: &str,
    what: &str,
    progress: &mut (dyn FnMut(usize) -> bool + Send),
) -> Result<Requeued, StoreError> {
    // One more than it takes: a selection larger than that is cut short, and says so.
    let mut selection = store.dead_letter_ids(filter, MOST + 1).await?;
    let cut = selection.len() > MOST as usize;
    selection.truncate(MOST as usize);
    let mut ids = Vec::new();
    let mut stopped_early: Option<String> = None;
    // Whatever stops it half-way, the letters sent back so far get their audit line.
    'pages: for chunk in selection.chunks(PAGE) {
        let page = match store
            .dead_letters(
                &Filter {
                    ids: chunk.to_vec(),
                    state: Some(LetterState::Parked),
                    ..Filter::default()
                },
                PAGE as i64,
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                stopped_early = Some(format!("reading the letters: {e}"));
                break 'pages;
            }
        };
        for d in page {
            let message_id = d
                .event_id
                .clone()
                .or(d.message_id.clone())
                .unwrap_or_default();
            if let Err(e) =
                broker::requeue_letter(publisher, d.id, &d.routing_key, &message_id, &d.body).await
            {
                stopped_early = Some(format!("dead letter {}: {e}", d.id));
                break 'pages;
            }
            match store.mark_requeued(d.id, who).await {
                Ok(true) => ids.push(d.id),
                Ok(false) => {}
                Err(e) => {
                    // Published, not marked: it may be sent back once more later.
                    ids.push(d.id);
                    stopped_early = Some(format!("marking dead letter {}: {e}", d.id));
                    break 'pages;
                }
            }
            if !progress(ids.len()) {
                stopped_early = Some("stopped: the program is shutting down".into());
                break 'pages;
            }
        }
    }
    if cut && stopped_early.is_none() {
        stopped_early = Some(format!(
            "more than {MOST} letters matched: the first {MOST} were taken; run it again for the rest"
        ));
    }
    let shown: Vec<i64> = ids.iter().take(1000).copied().collect();
    store
        .audit(
            who,
            "requeue",
            what,
            ids.len() as i64,
            &json!({ "ids": shown }),
        )
        .await?;
    Ok(Requeued { ids, stopped_early })
}
