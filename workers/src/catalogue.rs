//! Skeelo's catalogue, as events are checked against it.
//!
//! Read from `GET /v1/products` when the first sync is judged, or a second after
//! start if no sync came by then, and kept in the database: a worker starts with the
//! stored copy, so one that starts while Skeelo is down still knows it. Not at once:
//! the two calls (token, catalogue) would take the partner rate's first slots and
//! leave the next ones unused while the consumers start; made when the first sync
//! needs them, they run back to back with its own, and made while the process is idle
//! they are out of the way of the first burst.
//!
//! When Skeelo cannot answer, what the stored copy knows is judged on it, and the
//! next try waits [`RETRY_AFTER`] rather than costing every sync a call.
//!
//! A SKU that is not in the list triggers a refresh before the event is called
//! invalid: the ISP may have just registered a new product, and a stale list must not
//! dead-letter a valid sync. Refreshes are coalesced: a task that finds an unknown SKU
//! waits for the refresh under way, and only refreshes itself if none finished since
//! it looked.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use skeelo_domain::event::Sku;
use skeelo_partner::api::{SkeeloClient, SkeeloError};
use skeelo_store::Store;
use tokio::sync::Mutex;

/// How long a failed read is not tried again for SKUs the list already knows.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);

pub(crate) struct Catalogue {
    /// The SKUs, and how many refreshes from Skeelo produced them (0: the stored copy).
    skus: RwLock<(BTreeSet<String>, u64)>,
    refreshing: Mutex<()>,
    /// The generation of the newest list written (or tried) to the database. The copy
    /// is written apart from the refresh, so that the rounds waiting for the list do
    /// not wait for the copy too (their first calls would leave the partner's slots
    /// unused), and an older list never overwrites a newer one. A process stopped
    /// right after a refresh may not have stored it: the next one starts from the
    /// older copy and reads Skeelo's list again anyway.
    stored: std::sync::Arc<Mutex<u64>>,
    /// When a read from Skeelo last failed.
    failed_at: std::sync::Mutex<Option<Instant>>,
}

impl Catalogue {
    /// The stored copy; Skeelo's own list is read when the first sync is judged.
    pub(crate) async fn load(store: &Store) -> anyhow::Result<Catalogue> {
        let stored = store.catalogue().await?;
        Ok(Catalogue {
            skus: RwLock::new((stored, 0)),
            refreshing: Mutex::new(()),
            stored: std::sync::Arc::new(Mutex::new(0)),
            failed_at: std::sync::Mutex::new(None),
        })
    }

    /// Reads Skeelo's list unless a sync has already made it read.
    pub(crate) async fn warm(&self, store: &Store, skeelo: &SkeeloClient) {
        if let Err(e) = self.unknown(store, skeelo, &[]).await {
            tracing::warn!(error = %e, "cannot read Skeelo's catalogue now");
        }
    }

    fn failed_lately(&self) -> bool {
        self.failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    async fn refresh(&self, store: &Store, skeelo: &SkeeloClient) -> Result<(), SkeeloError> {
        let products = skeelo.products().await?;
        tracing::info!(products = products.len(), "catalogue loaded from Skeelo");
        let generation = self.replace(products.iter().map(|p| p.sku.clone()).collect());
        let (store, stored) = (store.clone(), self.stored.clone());
        tokio::spawn(async move {
            let mut written = stored.lock().await;
            if *written >= generation {
                return;
            }
            // Taken even if the write fails: an older list must not be written after it.
            *written = generation;
            if let Err(e) = store.replace_catalogue(&products).await {
                tracing::warn!(error = %e, "could not store the catalogue");
            }
        });
        Ok(())
    }

    /// Reads Skeelo's list now: the SKUs it sells. The probe of dead letters waiting
    /// for a product; it takes its turn in the caller's lane (the lowest) without the
    /// refresh lock, so syncs that need a refresh never wait behind it.
    pub(crate) async fn probe(
        &self,
        store: &Store,
        skeelo: &SkeeloClient,
    ) -> Result<BTreeSet<String>, SkeeloError> {
        self.refresh(store, skeelo).await?;
        Ok(self.skus.read().map(|s| s.0.clone()).unwrap_or_default())
    }

    /// Takes `skus` as the list; returns its generation.
    fn replace(&self, skus: BTreeSet<String>) -> u64 {
        match self.skus.write() {
            Ok(mut s) => {
                s.1 += 1;
                s.0 = skus;
                s.1
            }
            Err(_) => 0,
        }
    }

    /// The unknown SKUs and the generation of the list they were checked against.
    fn missing(&self, wanted: &[Sku]) -> (Vec<Sku>, u64) {
        let Ok(s) = self.skus.read() else {
            return (Vec::new(), 0);
        };
        let missing = wanted
            .iter()
            .filter(|p| !s.0.contains(p.as_str()))
            .cloned()
            .collect();
        (missing, s.1)
    }

    /// Of `products`, those the list in hand does not know (no refresh).
    pub(crate) fn unknown_now(&self, products: &[Sku]) -> BTreeSet<Sku> {
        self.missing(products).0.into_iter().collect()
    }

    /// The SKUs Skeelo does not sell, checked against a list read after this call
    /// began; `Err` when that refresh failed (the event should wait, not be judged on
    /// a stale list).
    pub(crate) async fn unknown(
        &self,
        store: &Store,
        skeelo: &SkeeloClient,
        products: &[Sku],
    ) -> Result<Option<Vec<Sku>>, SkeeloError> {
        let (missing, seen) = self.missing(products);
        if missing.is_empty() && (seen > 0 || self.failed_lately()) {
            return Ok(None);
        }
        {
            let _one_at_a_time = self.refreshing.lock().await;
            // Another task may have read it, or failed to, while this one waited.
            let failed_meanwhile = missing.is_empty() && self.failed_lately();
            if self.missing(products).1 == seen && !failed_meanwhile {
                match self.refresh(store, skeelo).await {
                    Ok(()) => {}
                    // Skeelo cannot say now; what the stored copy knows is judged on it
                    // (the event's own calls will meet the same fault), an unknown SKU
                    // waits.
                    Err(e) if missing.is_empty() => {
                        tracing::warn!(error = %e, "cannot read Skeelo's catalogue; judging on the stored copy");
                        if let Ok(mut f) = self.failed_at.lock() {
                            *f = Some(Instant::now());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let (missing, _) = self.missing(products);
        Ok((!missing.is_empty()).then_some(missing))
    }
}
