//! Logging, set up once per process: one JSON object per line on stderr, filtered by
//! `RUST_LOG` (default `info`). The fields of the span an event is handled in (event
//! id, contract id, type) appear on every line written while handling it. Libraries that
//! would log the data they carry stay at `info` (see [`DATA_CARRIERS`]).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber. A second call (tests start several fleets in one
/// process) keeps the first and changes nothing.
pub fn init() {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let filter =
        EnvFilter::try_new(with_data_caps(&wanted)).unwrap_or_else(|_| EnvFilter::new("info"));
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

/// Libraries whose debug logs print the data they carry (SQL parameters hold CPFs and
/// e-mails): capped at `info` even when `RUST_LOG` asks for `debug`, unless it names
/// them itself.
const DATA_CARRIERS: [&str; 3] = ["tokio_postgres", "hyper", "reqwest"];

fn with_data_caps(wanted: &str) -> String {
    let mut directives = wanted.to_string();
    for target in DATA_CARRIERS {
        if !wanted.contains(target) {
            directives.push_str(&format!(",{target}=info"));
        }
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_logs_never_open_the_data_carriers() {
        assert_eq!(
            with_data_caps("debug"),
            "debug,tokio_postgres=info,hyper=info,reqwest=info"
        );
        assert_eq!(
            with_data_caps("info,tokio_postgres=trace"),
            "info,tokio_postgres=trace,hyper=info,reqwest=info",
            "an operator who names one gets it"
        );
    }
}
