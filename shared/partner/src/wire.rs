//! The thread the partner's calls leave from: a runtime of its own, apart from the
//! event path's.
//!
//! A call's slot says when it should reach the partner; the pacer drops a turn
//! reached too late, but what happens after the turn is out of its sight. On the
//! process's main runtime, busy with rounds, database and broker work, a call on a
//! connection still to be opened waited for the runtime to notice the connection was
//! up: the request left 2.5–6.4 ms after the connection's first packet, while a call on
//! an open connection left within 0.4 ms (packet captures, docs/performance.md, "Where
//! a call's lateness comes from"). A runtime that does nothing else notices at once.
//! The pacer's dispatcher runs here too, so that its timers fire on time however
//! busy the rest of the process is (the ledger's database connection, opened at
//! start-up, is driven by the main runtime: how long its answers take sets the lead
//! of a lease; one a lease reopens later is driven here).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The runtime's handle, started on first use (`None`: the thread could not be
/// started, and calls leave from the caller's runtime, as they would without it).
fn handle() -> Option<&'static Handle> {
    static WIRE: OnceLock<Option<Handle>> = OnceLock::new();
    WIRE.get_or_init(|| {
        // Built on its own thread and never dropped: a runtime dropped inside another
        // one's task would panic.
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("skeelo-partner".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        let handle = match started {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err("its thread ended before it started".into())),
            Err(e) => Err(e.to_string()),
        };
        handle
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot start the partner calls' own runtime; they share the main one");
            })
            .ok()
    })
    .as_ref()
}

/// Runs `task` on the partner's thread, detached (the dispatcher lives as long as
/// its pacer and ends by itself).
pub(crate) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match handle() {
        Some(h) => drop(h.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

/// Runs `task` on the partner's thread and waits for its output. Dropping the wait
/// cancels the task, as dropping the future itself would: a call given up (its round
/// ran out of time) does not go on without anyone to read its answer.
pub(crate) async fn run<F>(task: F) -> Result<F::Output, tokio::task::JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut joined = Aborting(match handle() {
        Some(h) => h.spawn(task),
        None => tokio::spawn(task),
    });
    // Awaited through the guard, which aborts the task if this future is dropped
    // before it ends.
    (&mut joined.0).await
}

/// Aborts the task it holds when dropped (a finished task is not affected).
struct Aborting<T>(JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_runs_on_the_partners_thread_and_its_output_comes_back() {
        let name = run(async { std::thread::current().name().map(str::to_string) })
            .await
            .expect("the task ends");
        assert_eq!(name.as_deref(), Some("skeelo-partner"));
    }

    #[tokio::test]
    async fn dropping_the_wait_cancels_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = run(async move {
            // Held until the task is dropped: the receiver then sees the sender go.
            let _tx = tx;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let _ = tokio::time::timeout(Duration::from_millis(50), waiting).await;
        let gone = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert!(
            matches!(gone, Ok(Err(_))),
            "the task was dropped, not left running: {gone:?}"
        );
    }
}
