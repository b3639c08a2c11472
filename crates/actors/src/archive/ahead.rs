//! Work done ahead of a consumer that must go in order: [`Ahead`] runs a function over jobs
//! on a few threads and hands the results back in the order the jobs were submitted.
//!
//! The backup reads small files this way (`build.rs`): opening, reading, checking and hashing
//! half a million files one after the other leaves the disk with one request at a time when
//! the page cache is cold (a nightly backup), and leaves a second core idle when it is warm.
//! Jobs are meant to be batches (a few dozen files), so that the threads meet about once per
//! batch, not once per file.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Jobs of type `J` turned into results of type `R` by `threads` threads; results are taken
/// in submission order. Dropping it stops the threads after the job each is on.
pub(super) struct Ahead<J: Send + 'static, R: Send + 'static> {
    shared: Arc<Shared<J, R>>,
    threads: Vec<JoinHandle<()>>,
    submitted: u64,
    taken: u64,
}

struct Shared<J, R> {
    state: Mutex<State<J, R>>,
    /// Signalled when a job is queued or the queue closes.
    work: Condvar,
    /// Signalled when the result the consumer waits for is in.
    done: Condvar,
}

struct State<J, R> {
    jobs: VecDeque<(u64, J)>,
    /// Finished jobs' results; `None` for a job whose function panicked.
    results: HashMap<u64, Option<R>>,
    /// The result the consumer is waiting for, if it is.
    awaited: Option<u64>,
    closed: bool,
    /// A job panicked: results after it may never come.
    broken: bool,
}

impl<J: Send + 'static, R: Send + 'static> Ahead<J, R> {
    /// Starts `threads` (at least one) threads named `name` running `f`.
    pub(super) fn new<F>(threads: usize, name: &str, f: F) -> std::io::Result<Self>
    where
        F: Fn(J) -> R + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                results: HashMap::new(),
                awaited: None,
                closed: false,
                broken: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let f = Arc::new(f);
        let mut ahead = Ahead {
            shared,
            threads: Vec::new(),
            submitted: 0,
            taken: 0,
        };
        for _ in 0..threads.max(1) {
            let (shared, f) = (Arc::clone(&ahead.shared), Arc::clone(&f));
            // On an error the threads started so far are stopped by `ahead`'s drop.
            let handle = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || work(&shared, &*f))?;
            ahead.threads.push(handle);
        }
        Ok(ahead)
    }

    /// Queues a job.
    pub(super) fn submit(&mut self, job: J) {
        let n = self.submitted;
        self.submitted += 1;
        self.shared.lock().jobs.push_back((n, job));
        self.shared.work.notify_one();
    }

    /// Jobs submitted whose results have not been taken.
    #[cfg(test)]
    fn in_flight(&self) -> u64 {
        self.submitted - self.taken
    }

    /// The result of the oldest job not taken yet, waiting for it; `None` when every
    /// submitted job's result has been taken, or when that job or an earlier one panicked
    /// (the pool is then of no further use).
    pub(super) fn take(&mut self) -> Option<R> {
        if self.taken == self.submitted {
            return None;
        }
        let n = self.taken;
        let mut state = self.shared.lock();
        loop {
            if let Some(r) = state.results.remove(&n) {
                state.awaited = None;
                self.taken += 1;
                return r;
            }
            if state.broken {
                return None;
            }
            state.awaited = Some(n);
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<J, R> Shared<J, R> {
    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn work<J, R>(shared: &Shared<J, R>, f: &dyn Fn(J) -> R) {
    loop {
        let (n, job) = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        let mut guard = Deliver {
            shared,
            n,
            result: None,
        };
        guard.result = Some(f(job));
    }
}

/// Delivers job `n`'s result when dropped: `None` when the job panicked (the thread then
/// ends, and the consumer learns it instead of waiting for ever).
struct Deliver<'a, J, R> {
    shared: &'a Shared<J, R>,
    n: u64,
    result: Option<R>,
}

impl<J, R> Drop for Deliver<'_, J, R> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let result = self.result.take();
        state.broken |= result.is_none();
        let wake = state.awaited.is_some() && (state.broken || state.awaited == Some(self.n));
        state.results.insert(self.n, result);
        drop(state);
        if wake {
            self.shared.done.notify_one();
        }
    }
}

impl<J: Send + 'static, R: Send + 'static> Drop for Ahead<J, R> {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            state.jobs.clear();
        }
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_come_back_in_submission_order_whatever_order_they_finish_in() {
        let mut ahead = Ahead::new(4, "t-ahead", |n: u64| {
            // Early jobs take longest, so later ones finish first.
            std::thread::sleep(std::time::Duration::from_millis((20 - n % 20) / 4));
            n * n
        })
        .unwrap();
        let mut got = Vec::new();
        for n in 0..200u64 {
            ahead.submit(n);
            if ahead.in_flight() > 16 {
                got.push(ahead.take().unwrap());
            }
        }
        while let Some(r) = ahead.take() {
            got.push(r);
        }
        let want: Vec<u64> = (0..200u64).map(|n| n * n).collect();
        assert_eq!(got, want);
        assert_eq!(ahead.in_flight(), 0);
    }

    #[test]
    fn drop_stops_the_threads_and_skips_queued_jobs() {
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let mut ahead = Ahead::new(2, "t-ahead", move |_: u64| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        for n in 0..100 {
            ahead.submit(n);
        }
        drop(ahead);
        // At most the jobs the two threads were on, and maybe the next ones they took.
        assert!(ran.load(Ordering::SeqCst) < 10, "ran {ran:?}");
    }

    #[test]
    fn a_panicking_job_ends_the_results_instead_of_hanging() {
        let mut ahead = Ahead::new(3, "t-ahead", |n: u64| {
            assert!(n != 3, "job 3 fails");
            n
        })
        .unwrap();
        for n in 0..6 {
            ahead.submit(n);
        }
        let got: Vec<u64> = std::iter::from_fn(|| ahead.take()).collect();
        assert_eq!(got, vec![0, 1, 2]);
    }
}
