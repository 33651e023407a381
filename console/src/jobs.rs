//! Long actions run as jobs, so the operator sees how far they got: a requeue of
//! thousands of letters takes minutes at the partner's rate (its letters are published
//! at once; the fleet works them off in the requeue queue). A job outlives the request
//! that started it and writes its audit line when it ends.
//!
//! Jobs live in the console's memory: a restart forgets their pages (their audit lines
//! and the letters' states stay in the database), and behind a load balancer the page
//! is found only on the console that runs the job.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many finished jobs are kept for their pages.
const KEPT: usize = 50;

/// How a job ended: letters done and why it stopped early, or why it failed.
pub(crate) type Ended = Result<(usize, Option<String>), String>;

/// One job.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) who: String,
    pub(crate) what: String,
    /// Letters that matched when it began.
    pub(crate) of: i64,
    state: Mutex<State>,
}

/// Where a job stands.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub(crate) done: usize,
    pub(crate) ended: Option<Ended>,
}

impl Job {
    /// `n` letters done so far.
    pub(crate) fn advance(&self, n: usize) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done = n;
    }

    pub(crate) fn finish(&self, ended: Ended) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok((n, _)) = &ended {
            s.done = *n;
        }
        s.ended = Some(ended);
    }

    pub(crate) fn state(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What [`Jobs::start_unless_running`] did.
pub(crate) enum Started {
    /// Started this one.
    New(Arc<Job>),
    /// The same job runs already.
    Already(Arc<Job>),
    /// Too many run.
    TooMany,
}

/// The console's jobs.
#[derive(Debug)]
pub(crate) struct Jobs {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Default for Jobs {
    /// Numbered from the time the console started, so that a page left open from
    /// before a restart does not show another job under its number.
    fn default() -> Jobs {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            * 1_000;
        Jobs {
            next: AtomicU64::new(start),
            all: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Jobs {
    /// A new job (tests start them directly).
    #[cfg(test)]
    fn start(&self, who: &str, what: &str, of: i64) -> Arc<Job> {
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        self.insert(&mut all, who, what, of)
    }

    /// A new job, kept for its page; the oldest finished ones are forgotten.
    fn insert(
        &self,
        all: &mut BTreeMap<u64, Arc<Job>>,
        who: &str,
        what: &str,
        of: i64,
    ) -> Arc<Job> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            id,
            who: who.to_string(),
            what: what.to_string(),
            of,
            state: Mutex::new(State::default()),
        });
        all.insert(id, job.clone());
        let finished: Vec<u64> = all
            .iter()
            .filter(|(_, j)| j.state().ended.is_some())
            .map(|(id, _)| *id)
            .collect();
        for old in finished.iter().take(finished.len().saturating_sub(KEPT)) {
            all.remove(old);
        }
        job
    }

    /// Starts a job unless one doing `what` runs already (a double click) or `most`
    /// run: one look under one lock, so two requests at once cannot both start.
    pub(crate) fn start_unless_running(
        &self,
        who: &str,
        what: &str,
        of: i64,
        most: usize,
    ) -> Started {
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        let running: Vec<&Arc<Job>> = all.values().filter(|j| j.state().ended.is_none()).collect();
        if let Some(same) = running.iter().find(|j| j.what == what) {
            return Started::Already(Arc::clone(same));
        }
        if running.len() >= most {
            return Started::TooMany;
        }
        Started::New(self.insert(&mut all, who, what, of))
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reports_its_progress_and_its_end() {
        let jobs = Jobs::default();
        let job = jobs.start("ana", "class unknown_product", 3);
        job.advance(2);
        assert_eq!(jobs.get(job.id).map(|j| j.state().done), Some(2));
        assert!(matches!(
            jobs.start_unless_running("bia", "class unknown_product", 3, 4),
            Started::Already(j) if j.id == job.id
        ));
        assert!(matches!(
            jobs.start_unless_running("bia", "class other", 3, 1),
            Started::TooMany
        ));
        assert!(job.state().ended.is_none());
        job.finish(Ok((3, None)));
        let s = job.state();
        assert_eq!(s.done, 3);
        assert_eq!(s.ended, Some(Ok((3, None))));
        assert!(matches!(
            jobs.start_unless_running("bia", "class unknown_product", 3, 1),
            Started::New(j) if j.id != job.id
        ));
    }

    #[test]
    fn only_the_latest_finished_jobs_are_kept_and_running_ones_never_dropped() {
        let jobs = Jobs::default();
        let running = jobs.start("ana", "long", 1_000);
        let mut first = None;
        let mut last = None;
        for _ in 0..(KEPT + 10) {
            let j = jobs.start("ana", "short", 1);
            j.finish(Ok((1, None)));
            first = first.or(Some(j.id));
            last = Some(j.id);
        }
        jobs.start("ana", "one more", 1);
        assert!(jobs.get(running.id).is_some(), "a running job stays");
        let first = first.expect("a first short job");
        assert!(
            jobs.get(first).is_none(),
            "the oldest finished job is forgotten"
        );
        assert!(last.and_then(|id| jobs.get(id)).is_some());
    }
}
