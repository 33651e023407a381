//! Logging, set up once per process: one JSON object per line on stderr, filtered by
//! `RUST_LOG` (default `info`). The fields of the span an event is handled in (event
//! id, contract id, type) appear on every line written while handling it. Libraries that
//! would log the data they carry stay at `info` (see [`DATA_CARRIERS`]).

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines held for the writer's thread at most; beyond them lines are dropped (and
/// counted) rather than making the process wait. The queue's slots are allocated at
/// start (half a megabyte); at info level a worker writes a line an event, so this is
/// seconds of a full-speed backlog, and minutes of a rate-limited one.
const BUFFERED_LINES: usize = 16_384;

/// The count of lines dropped because the writer's thread had fallen that far behind.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the log writer's thread until the process ends: dropped at the end of
/// `main`, it writes out what is buffered, waiting about a second at most (a reader
/// of stderr that never reads again does not hold the exit).
#[must_use = "logs are written until this is dropped"]
pub struct Logs {
    _writer: Option<WorkerGuard>,
}

/// Installs the JSON subscriber. A second call (tests start several fleets in one
/// process) keeps the first and changes nothing.
///
/// Lines are written by a thread of their own: a thread that logs only hands its line
/// over. Written where it was logged, a line waits for stderr's reader, and when that
/// reader stalls (a log collector that is restarting, a full pipe) every thread of the
/// process stops at its next line: the partner's thread with a call between its turn
/// and the wire, which then reaches the partner late (docs/performance.md, "Lines
/// written where they were logged"). A reader that stalls for good costs lines
/// (those dropped for a full queue are counted in `skeelo_log_lines_dropped_total`),
/// never the fleet's work.
pub fn init() -> Logs {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let filter =
        EnvFilter::try_new(with_data_caps(&wanted)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("skeelo-logs")
        .finish(std::io::stderr());
    let counter = writer.error_counter();
    let installed = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_writer(writer)
        .try_init()
        .is_ok();
    if !installed {
        return Logs { _writer: None };
    }
    let _ = DROPPED.set(counter);
    Logs {
        _writer: Some(guard),
    }
}

/// Lines dropped so far because stderr's reader fell too far behind.
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
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
