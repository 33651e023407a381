//! Skeelo's catalogue, as events are checked against it.
//!
//! Loaded from `GET /v1/products` at start and kept in the database (so a worker that
//! starts while Skeelo is down still knows it). A SKU that is not in it triggers a
//! refresh before the event is called invalid: the ISP may have just registered a new
//! product, and a stale list must not dead-letter a valid sync. Refreshes are
//! coalesced: a task that finds an unknown SKU waits for the refresh under way, and
//! only refreshes itself if none finished since it looked.

use std::collections::BTreeSet;
use std::sync::RwLock;

use skeelo_domain::event::Sku;
use skeelo_partner::api::{SkeeloClient, SkeeloError};
use skeelo_store::Store;
use tokio::sync::Mutex;

pub(crate) struct Catalogue {
    /// The SKUs, and how many refreshes produced them.
    skus: RwLock<(BTreeSet<String>, u64)>,
    refreshing: Mutex<()>,
}

impl Catalogue {
    /// Loads from Skeelo; falls back to the stored copy when Skeelo cannot answer.
    pub(crate) async fn load(store: &Store, skeelo: &SkeeloClient) -> anyhow::Result<Catalogue> {
        let catalogue = Catalogue {
            skus: RwLock::new((BTreeSet::new(), 0)),
            refreshing: Mutex::new(()),
        };
        if let Err(e) = catalogue.refresh(store, skeelo).await {
            let stored = store.catalogue().await?;
            tracing::warn!(error = %e, stored = stored.len(), "cannot read Skeelo's catalogue; using the stored copy");
            catalogue.replace(stored);
        }
        Ok(catalogue)
    }

    async fn refresh(&self, store: &Store, skeelo: &SkeeloClient) -> Result<(), SkeeloError> {
        let products = skeelo.products().await?;
        if let Err(e) = store.replace_catalogue(&products).await {
            tracing::warn!(error = %e, "could not store the catalogue");
        }
        tracing::info!(products = products.len(), "catalogue loaded from Skeelo");
        self.replace(products.into_iter().map(|p| p.sku).collect());
        Ok(())
    }

    fn replace(&self, skus: BTreeSet<String>) {
        if let Ok(mut s) = self.skus.write() {
            s.1 += 1;
            s.0 = skus;
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
        if missing.is_empty() {
            return Ok(None);
        }
        {
            let _one_at_a_time = self.refreshing.lock().await;
            if self.missing(products).1 == seen {
                self.refresh(store, skeelo).await?;
            }
        }
        let (missing, _) = self.missing(products);
        Ok((!missing.is_empty()).then_some(missing))
    }
}
