//! The Skeelo bridge's shared library.
//!
//! The domain — the ERP's event contract ([`event`]), the lifecycle rules
//! ([`lifecycle`]) and the results the ERP gets back ([`outcome`]) — is kept apart from
//! the adapters that talk to the world: RabbitMQ ([`broker`]), PostgreSQL ([`store`]) and
//! the Skeelo partner API ([`skeelo`]). Binaries stay thin and build on these.

pub mod broker;
pub mod decide;
pub mod event;
pub mod lifecycle;
pub mod mask;
pub mod metrics;
pub mod outcome;
pub mod pacer;
pub mod policy;
pub mod sample;
pub mod skeelo;
pub mod store;
pub mod telemetry;
