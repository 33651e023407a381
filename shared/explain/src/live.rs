//! Reading Skeelo for people (the command line, the console): the partner settings
//! each such program takes, and a read that rides out a passing failure. The reads
//! take their turns in the fleet's partner rate (through the database), in the lane of
//! calls made for no event, so an operator's question never costs the fleet a 429.

use std::num::NonZeroU32;
use std::time::Duration;

use skeelo_partner::api::{ClientConfig, Credentials, SkeeloClient, SkeeloError, Subscription};
use skeelo_partner::pacer::{Margin, Pacer, Weights};
use skeelo_store::Store;
use skeelo_telemetry::metrics::Metrics;

/// The partner settings, from the fleet's own variables.
#[derive(clap::Args, Debug, Clone)]
pub struct PartnerArgs {
    /// The partner rate (requests per second, or `unlimited`), shared with the fleet
    /// through the database: these reads take their turns with the fleet's calls.
    #[arg(long, env = "SKEELO_RATE_PER_SECOND", value_parser = parse_rate)]
    rate: Rate,
    /// The least share of the rate left unused, in percent, as the fleet's own
    /// setting (0.5 to 25).
    #[arg(long, env = "SKEELO_RATE_MARGIN_PERCENT", default_value_t = skeelo_partner::pacer::Margin::FLOOR * 100.0)]
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

/// A partner rate, or none (`unlimited`, as the fleet accepts it).
#[derive(Debug, Clone, Copy)]
struct Rate(Option<NonZeroU32>);

fn parse_rate(raw: &str) -> Result<Rate, String> {
    skeelo_partner::pacer::parse_rate(raw).map(Rate)
}

impl PartnerArgs {
    /// The partner rate the fleet is allowed, per second; `None` when unlimited.
    pub fn rate(&self) -> Option<NonZeroU32> {
        self.rate.0
    }

    /// A client paced with the fleet through `store`, whose calls each wait `timeout`
    /// at most.
    pub fn client(&self, store: &Store, timeout: Duration) -> Result<SkeeloClient, SetupError> {
        Ok(SkeeloClient::new(
            ClientConfig {
                base_url: self.skeelo_base_url.clone(),
                credentials: Credentials {
                    client_id: self.skeelo_client_id.clone(),
                    client_secret: self.skeelo_client_secret.clone(),
                },
                timeout,
            },
            Metrics::new().map_err(|e| SetupError::Metrics(e.to_string()))?,
            match self.rate.0 {
                Some(rate) => Pacer::fleet(
                    store.clone(),
                    rate,
                    Weights::default(),
                    Margin::new(self.rate_margin_percent / 100.0),
                ),
                None => Pacer::unlimited(),
            },
        )?)
    }
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The metrics registry refused.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The partner settings are not usable.
    #[error(transparent)]
    Partner(#[from] SkeeloError),
}

/// How long a reader waits for Skeelo: a command line can wait for a passing failure
/// to pass; a web page should answer in seconds and say Skeelo did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Up to five tries.
    Patient,
    /// One retry at most.
    Brief,
}

/// What Skeelo holds for a contract now. A read may be retried freely: a few tries
/// ride out a passing failure. A brief read gives up after [`BRIEF`] in all, its turn
/// in the partner rate included.
pub async fn ask(
    skeelo: &SkeeloClient,
    id: &str,
    patience: Patience,
) -> Result<Option<Subscription>, SkeeloError> {
    match patience {
        Patience::Patient => read(skeelo, id, 5).await,
        Patience::Brief => tokio::time::timeout(BRIEF, read(skeelo, id, 2))
            .await
            .unwrap_or_else(|_| {
                Err(SkeeloError::Transient(format!(
                    "no answer within {} s, the wait for a turn in the fleet's partner rate included",
                    BRIEF.as_secs()
                )))
            }),
    }
}

/// How long a brief read may take.
pub const BRIEF: Duration = Duration::from_secs(6);

async fn read(
    skeelo: &SkeeloClient,
    id: &str,
    most: u64,
) -> Result<Option<Subscription>, SkeeloError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match skeelo.get(id).await {
            Err(e) if e.is_transient() && tries < most => {
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            other => return other,
        }
    }
}
