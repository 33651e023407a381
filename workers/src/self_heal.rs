//! Dead letters that requeue themselves once their cause clears.
//!
//! Every `SKEELO_SELF_HEAL_INTERVAL`, if letters are parked for a cause that can clear
//! ([`policy::heals`]), one probe — Skeelo's catalogue, read in the partner rate's
//! lowest lane, which also needs our credentials to work — shows which causes are gone:
//! a product now sold clears the letters waiting for it; any answer clears the letters
//! whose attempts ran out while Skeelo failed. Those are requeued through the requeue
//! queue, like an operator's requeue, with the fleet named in the audit trail.
//!
//! At most once per change of the cause: each cause's state is kept in the database
//! with the time it last changed, and a letter is requeued under that token only if
//! its message was not requeued under it before. A letter that fails again for the
//! same cause (its own product still refused, Skeelo failing only for it) stays
//! parked for people until the cause changes again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use skeelo_domain::event;
use skeelo_domain::policy::{self, Heals};
use skeelo_partner::pacer;
use skeelo_store::self_heal::Candidate;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::App;

/// Letters read from the database at once.
const PAGE: i64 = 500;
/// Letters looked at per sweep at most (the rest wait for the next).
const MOST_PER_SWEEP: usize = 20_000;
/// Who the audit trail names.
const BY: &str = "fleet";

pub(crate) async fn run(app: Arc<App>, stop: CancellationToken) {
    let Some(every) = app.settings.self_heal else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep(&app).await {
            tracing::warn!(error = %e, "could not look at the dead letters that heal by themselves; trying again later");
        }
    }
}

async fn sweep(app: &App) -> anyhow::Result<()> {
    let first = app.store.healable_letters(0, PAGE).await?;
    if first.is_empty() || app.db_health.is_down() {
        return Ok(());
    }
    let probe = pacer::LANE
        .scope(
            pacer::BACKGROUND,
            app.catalogue.probe(&app.store, &app.skeelo),
        )
        .await;
    let sold = match probe {
        Ok(skus) => skus,
        Err(e) => {
            // Down only once the fleet itself says so (outage mode, after several
            // failures): one probe that timed out or was throttled changes nothing, so
            // the cause's state does not flap and requeue the same letters again.
            if app.skeelo_health.is_down() {
                app.store.cause_state("partner", "down").await?;
            }
            tracing::debug!(error = %e, "the self-heal probe got no answer from Skeelo");
            return Ok(());
        }
    };
    let partner_since = app.store.cause_state("partner", "up").await?;
    let catalogue: Vec<&str> = sold.iter().map(String::as_str).collect();
    let catalogue_since = app
        .store
        .cause_state("catalogue", &catalogue.join(","))
        .await?;
    let token = |cause: Heals, since: time::OffsetDateTime| {
        format!(
            "{}:{}",
            cause.as_str(),
            since.format(&Rfc3339).unwrap_or_default()
        )
    };
    let mut requeued: Vec<(Heals, i64)> = Vec::new();
    let mut page = first;
    let mut looked = 0;
    'pages: while !page.is_empty() && looked < MOST_PER_SWEEP {
        let last = page.last().map_or(0, |l| l.id);
        looked += page.len();
        for letter in page {
            let Some(cause) = policy::heals(&letter.reason, &letter.error_class) else {
                continue;
            };
            let cleared = match cause {
                Heals::Partner => Some(token(cause, partner_since)),
                Heals::Catalogue => {
                    products_sold(&letter, &sold).then(|| token(cause, catalogue_since))
                }
            };
            let Some(token) = cleared else {
                continue;
            };
            if app
                .store
                .requeued_under(&letter.message_key, &token)
                .await?
            {
                continue;
            }
            // Published first, marked once confirmed: a stop in between leaves it
            // parked (the next sweep sends it again, and the event path knows the copy).
            if let Err(e) = publish(app, &letter).await {
                tracing::warn!(letter = letter.id, error = %e, "could not requeue a dead letter whose cause cleared; the next sweep tries again");
                break 'pages;
            }
            let by = format!("{BY} ({} cleared)", cause.as_str());
            if app.store.mark_auto_requeued(letter.id, &token, &by).await? {
                app.metrics
                    .self_requeued
                    .with_label_values(&[cause.as_str()])
                    .inc();
                requeued.push((cause, letter.id));
            }
        }
        page = app.store.healable_letters(last, PAGE).await?;
    }
    for cause in [Heals::Catalogue, Heals::Partner] {
        let ids: Vec<i64> = requeued
            .iter()
            .filter(|(c, _)| *c == cause)
            .map(|(_, id)| *id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let what = match cause {
            Heals::Catalogue => "dead letters waiting for a product Skeelo now sells",
            Heals::Partner => {
                "dead letters whose attempts ran out while Skeelo failed; Skeelo answers again"
            }
        };
        tracing::info!(
            cause = cause.as_str(),
            letters = ids.len(),
            "requeued {what}"
        );
        let shown: Vec<i64> = ids.iter().take(1000).copied().collect();
        app.store
            .audit(
                BY,
                "requeue",
                &format!("{what} (by itself)"),
                ids.len() as i64,
                &serde_json::json!({ "ids": shown, "cause": cause.as_str() }),
            )
            .await?;
    }
    Ok(())
}

/// Every product the letter's sync names is sold now. A body that no longer reads
/// (it was parked as unknown_product, so it did once) is left for people.
fn products_sold(letter: &Candidate, sold: &BTreeSet<String>) -> bool {
    match event::parse_encoded(&letter.routing_key, None, &letter.body) {
        Ok(e) => e
            .sync
            .is_some_and(|s| s.products.iter().all(|p| sold.contains(p.as_str()))),
        Err(_) => false,
    }
}

async fn publish(app: &App, letter: &Candidate) -> anyhow::Result<()> {
    let Some(publisher) = app.publisher().await else {
        anyhow::bail!("no broker session");
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        skeelo_broker::requeue_letter(
            &publisher,
            letter.id,
            &letter.routing_key,
            &letter.message_id,
            &letter.body,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the broker did not confirm within 10 s"))??;
    Ok(())
}
