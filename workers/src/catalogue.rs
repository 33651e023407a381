//! Skeelo's catalogue, as events are checked against it.
//!
//! Loaded from `GET /v1/products` at start and kept in the database (so a worker that
//! starts while Skeelo is down still knows it). A SKU that is not in it triggers one
//! refresh before the event is called invalid: the ISP may have just registered a
//! new product, and a stale list must not dead-letter a valid sync.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use skeelo_shared::event::Event;
use skeelo_shared::skeelo::{SkeeloClient, SkeeloError};
use skeelo_shared::store::Store;
use tokio::sync::Mutex;

/// How often an unknown SKU may send the fleet back to Skeelo for the list.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) struct Catalogue {
    skus: RwLock<BTreeSet<String>>,
    last_refresh: Mutex<Option<Instant>>,
}

impl Catalogue {
    /// Loads from Skeelo; falls back to the stored copy when Skeelo cannot answer.
    pub(crate) async fn load(store: &Store, skeelo: &SkeeloClient) -> anyhow::Result<Catalogue> {
        let catalogue = Catalogue {
            skus: RwLock::new(BTreeSet::new()),
            last_refresh: Mutex::new(None),
        };
        match catalogue.refresh(store, skeelo).await {
            Ok(()) => {}
            Err(e) => {
                let stored = store.catalogue().await?;
                tracing::warn!(error = %e, stored = stored.len(), "cannot read Skeelo's catalogue; using the stored copy");
                catalogue.replace(stored);
            }
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
            *s = skus;
        }
    }

    fn missing(&self, wanted: &[String]) -> Vec<String> {
        let Ok(skus) = self.skus.read() else {
            return Vec::new();
        };
        wanted
            .iter()
            .filter(|p| !skus.contains(*p))
            .cloned()
            .collect()
    }

    /// The SKUs of a sync that Skeelo does not sell, after one refresh; `Err` when the
    /// refresh itself failed (the event should wait, not be judged on a stale list).
    pub(crate) async fn unknown_products(
        &self,
        store: &Store,
        skeelo: &SkeeloClient,
        event: &Event,
    ) -> Result<Option<Vec<String>>, SkeeloError> {
        let Some(sync) = &event.sync else {
            return Ok(None);
        };
        if self.missing(&sync.products).is_empty() {
            return Ok(None);
        }
        {
            let mut last = self.last_refresh.lock().await;
            if last.is_none_or(|t| t.elapsed() >= MIN_REFRESH_INTERVAL) {
                *last = Some(Instant::now());
                self.refresh(store, skeelo).await?;
            }
        }
        let missing = self.missing(&sync.products);
        Ok((!missing.is_empty()).then_some(missing))
    }
}
