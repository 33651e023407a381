//! Logging, set up once per process: one JSON object per line on stderr, filtered by
//! `RUST_LOG` (default `info`). The fields of the span an event is handled in (event
//! id, contract id, type) appear on every line written while handling it.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber. A second call (tests start several fleets in one
/// process) keeps the first and changes nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
