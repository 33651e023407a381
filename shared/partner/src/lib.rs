//! The Skeelo partner API: the client ([`api`], the only module that knows the API, so
//! the real one can replace the model in one place) and the [`pacer`] that keeps the
//! whole fleet's calls within the partner's rate, through a ledger it is given.

mod answer;
pub mod api;
pub mod backoff;
pub mod converge;
mod lenient;
pub mod pacer;
pub mod schedule;
mod token;
mod wire;
