//! The partner's access token, shared by every call of a process: one task fetches it
//! while the others wait, and they are all woken together when it comes.
//!
//! An async mutex held across the fetch does the same with less code, but it hands
//! the token on one waiter at a time (each woken only after the previous one ran), and
//! when the fetch fails each waiter in turn fetches again: a token endpoint that is
//! down got one request per waiting call, paced one after the other in the partner's
//! rate. Here whoever waited for a fetch gets its result, token or error.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// A token and when it stops being used (a little before it expires).
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) expires: Instant,
}

/// The token in hand, and the fetch under way if any.
pub(crate) struct Tokens<E> {
    state: Mutex<State<E>>,
    fetched: Notify,
}

struct State<E> {
    current: Option<Token>,
    fetching: bool,
    /// Fetches ended so far (a waiter tells from it that the fetch it waited for ended).
    ended: u64,
    /// The last fetch's error, and which fetch that was: whoever waited for it gets the
    /// same error rather than fetching again in turn (one call, not one per waiter,
    /// while the token endpoint fails).
    failed: Option<(u64, E)>,
}

impl<E: Clone> Tokens<E> {
    pub(crate) fn new() -> Tokens<E> {
        Tokens {
            state: Mutex::new(State {
                current: None,
                fetching: false,
                ended: 0,
                failed: None,
            }),
            fetched: Notify::new(),
        }
    }

    /// The token in hand if it is still good, else one from `fetch` — called by one
    /// task at a time; the others wait for its result.
    pub(crate) async fn get<F, Fut>(&self, fetch: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>>,
    {
        let mut waited_for = None;
        loop {
            // Registered before the state is read, so that a fetch ending in between
            // still wakes this task.
            let notified = self.fetched.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if let Some(t) = s.current.as_ref().filter(|t| t.expires > Instant::now()) {
                    return Ok(t.value.clone());
                }
                if let (Some(seen), Some((ended, e))) = (waited_for, s.failed.as_ref()) {
                    if *ended > seen {
                        return Err(e.clone());
                    }
                }
                if !s.fetching {
                    s.fetching = true;
                    break;
                }
                waited_for = Some(s.ended);
            }
            notified.await;
        }
        // This task fetches. The guard ends the fetch even if the task is dropped
        // halfway (its round ran out of time): a waiter then fetches instead.
        let mut guard = Ending {
            tokens: self,
            armed: true,
        };
        let fetched = fetch().await;
        guard.end(Some(&fetched));
        fetched.map(|t| t.value)
    }

    /// Skeelo refused `stale`: the next call fetches a new one (unless another task
    /// already has).
    pub(crate) fn forget(&self, stale: &str) {
        let mut s = self.lock();
        if s.current.as_ref().is_some_and(|t| t.value == stale) {
            s.current = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<E>> {
        // The state is a few plain fields, never left half written: a panic elsewhere
        // while it was held does not make it wrong.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Ends a fetch: its result (if it came) and its end are written at once, so that a
/// task arriving in between never waits for a fetch that is over, then every waiter
/// is woken.
struct Ending<'a, E: Clone> {
    tokens: &'a Tokens<E>,
    armed: bool,
}

impl<E: Clone> Ending<'_, E> {
    fn end(&mut self, fetched: Option<&Result<Token, E>>) {
        if !std::mem::replace(&mut self.armed, false) {
            return;
        }
        {
            let mut s = self.tokens.lock();
            s.ended += 1;
            s.fetching = false;
            match fetched {
                Some(Ok(t)) => {
                    s.current = Some(t.clone());
                    s.failed = None;
                }
                Some(Err(e)) => s.failed = Some((s.ended, e.clone())),
                None => {}
            }
        }
        self.tokens.fetched.notify_waiters();
    }
}

impl<E: Clone> Drop for Ending<'_, E> {
    fn drop(&mut self) {
        self.end(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn token(value: &str, ttl: Duration) -> Token {
        Token {
            value: value.into(),
            expires: Instant::now() + ttl,
        }
    }

    /// Many tasks at once: one fetch, and every waiter has its token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_for_many_waiters() {
        let tokens = Arc::new(Tokens::<String>::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (tokens, fetches, gate) = (tokens.clone(), fetches.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let got = tokens
                    .get(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.acquire().await;
                        Ok(token("t1", Duration::from_secs(60)))
                    })
                    .await;
                got
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.add_permits(1);
        for t in tasks {
            let got = tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("every waiter woken")
                .expect("task");
            assert_eq!(got.as_deref(), Ok("t1"));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    /// Those who waited for a failed fetch get its error; the next call fetches
    /// again.
    #[tokio::test]
    async fn a_failed_fetch_fails_its_waiters_once_and_the_next_call_tries_again() {
        let tokens = Arc::new(Tokens::<String>::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (tokens, fetches, gate) = (tokens.clone(), fetches.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                tokens
                    .get(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.acquire().await;
                        Err::<Token, _>("down".to_string())
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(1);
        for t in tasks {
            assert_eq!(t.await.expect("task"), Err("down".to_string()));
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "one call, not one per waiter"
        );
        let again = tokens
            .get(|| async { Ok::<_, String>(token("t2", Duration::from_secs(60))) })
            .await;
        assert_eq!(again.as_deref(), Ok("t2"));
    }

    /// A fetcher dropped halfway (its round ran out of time) hands the fetch to a
    /// waiter instead of leaving everyone waiting.
    #[tokio::test]
    async fn a_fetcher_dropped_halfway_hands_the_fetch_on() {
        let tokens = Arc::new(Tokens::<String>::new());
        let first = {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                tokens
                    .get(std::future::pending::<Result<Token, String>>)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                tokens
                    .get(|| async { Ok(token("t3", Duration::from_secs(60))) })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let got = tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("the waiter fetched")
            .expect("task");
        assert_eq!(got.as_deref(), Ok("t3"));
    }

    /// An expired or forgotten token is fetched again; forgetting another value
    /// keeps the one in hand.
    #[tokio::test]
    async fn expired_or_forgotten_tokens_are_fetched_again() {
        let tokens = Tokens::<String>::new();
        let expired = tokens
            .get(|| async { Ok(token("old", Duration::ZERO)) })
            .await;
        assert_eq!(expired.as_deref(), Ok("old"));
        let fresh = tokens
            .get(|| async { Ok(token("new", Duration::from_secs(60))) })
            .await;
        assert_eq!(fresh.as_deref(), Ok("new"));
        tokens.forget("old");
        let kept = tokens
            .get(|| async { Ok(token("unwanted", Duration::from_secs(60))) })
            .await;
        assert_eq!(kept.as_deref(), Ok("new"));
        tokens.forget("new");
        let after = tokens
            .get(|| async { Ok(token("newer", Duration::from_secs(60))) })
            .await;
        assert_eq!(after.as_deref(), Ok("newer"));
    }
}
