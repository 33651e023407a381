//! What the fleet tells SREs: Prometheus [`metrics`] (CONTRACT §5 and more) and
//! one-JSON-object-per-line [`logs`].

pub mod logs;
pub mod metrics;
