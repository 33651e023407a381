//! Reading Skeelo from the command line: the partner settings every such command
//! takes, and a read that rides out a passing failure. The reads take their turns in
//! the fleet's partner rate (through the database), in the lane of calls made for no
//! event, so an operator's question never costs the fleet a 429.

use std::num::NonZeroU32;
use std::time::Duration;

use skeelo_partner::api::{ClientConfig, Credentials, SkeeloClient, SkeeloError, Subscription};
use skeelo_partner::pacer::{Margin, Pacer, Weights};
use skeelo_store::Store;
use skeelo_telemetry::metrics::Metrics;

#[derive(clap::Args, Debug)]
pub(crate) struct PartnerArgs {
    /// The partner rate (requests per second), shared with the fleet through the
    /// database: these reads take their turns with the fleet's calls.
    #[arg(long, env = "SKEELO_RATE_PER_SECOND")]
    rate: NonZeroU32,
    /// The least share of the rate left unused, in percent, as the fleet's own
    /// setting (0.5 to 25).
    #[arg(long, env = "SKEELO_RATE_MARGIN_PERCENT", default_value_t = 1.0)]
    rate_margin_percent: f64,
    /// The Skeelo partner API.
    #[arg(long, env = "SKEELO_BASE_URL")]
    skeelo_base_url: String,
    /// Partner client id.
    #[arg(long, env = "SKEELO_CLIENT_ID")]
    skeelo_client_id: String,
    /// Partner client secret.
    #[arg(long, env = "SKEELO_CLIENT_SECRET", hide_env_values = true)]
    skeelo_client_secret: String,
}

impl PartnerArgs {
    /// A client paced with the fleet through `store`.
    pub(crate) fn client(&self, store: &Store) -> anyhow::Result<SkeeloClient> {
        Ok(SkeeloClient::new(
            ClientConfig {
                base_url: self.skeelo_base_url.clone(),
                credentials: Credentials {
                    client_id: self.skeelo_client_id.clone(),
                    client_secret: self.skeelo_client_secret.clone(),
                },
                timeout: Duration::from_secs(10),
            },
            Metrics::new()?,
            Pacer::fleet(
                store.clone(),
                self.rate,
                Weights::default(),
                Margin::new(self.rate_margin_percent / 100.0),
            ),
        )?)
    }
}

/// What Skeelo holds for a contract now. A read may be retried freely: a few tries
/// ride out a passing failure.
pub(crate) async fn ask(
    skeelo: &SkeeloClient,
    id: &str,
) -> Result<Option<Subscription>, SkeeloError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match skeelo.get(id).await {
            Err(e) if e.is_transient() && tries < 5 => {
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            other => return other,
        }
    }
}
