//! The Skeelo bridge's domain, with no I/O: the ERP's event contract ([`event`]), the
//! lifecycle rules ([`lifecycle`]), what a batch of events does to a contract
//! ([`decide`]), what follows a failure ([`policy`]), the results the ERP gets back
//! ([`outcome`]), Skeelo's catalogue ([`product`]), and the masking of personal data in
//! what people read ([`mask`]). The adapters (store, broker, partner API) build on it;
//! it depends on none of them.

pub mod decide;
pub mod drift;
pub mod event;
pub mod ids;
pub mod lifecycle;
pub mod mask;
pub mod outcome;
pub mod policy;
pub mod product;
pub mod sample;
