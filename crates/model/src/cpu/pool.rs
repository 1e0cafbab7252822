//! A small persistent pool for the matmuls: the calling thread works too; helpers wait for the
//! next job by spinning briefly, then yielding, then sleeping.
//!
//! Why not rayon here: a parallel iterator started from a thread outside rayon's pool is
//! injected into it and the caller sleeps on a latch, so each of the ~200 matmuls of a decode
//! step paid a futex wake-up and sleep (40% of single-thread decode time, measured with perf).
//! Here the caller publishes a job with one atomic store and starts on it at once; helpers
//! still spinning from the last job join within a microsecond, sleeping ones when woken. The
//! caller never waits for a helper that has not started: it waits only for chunks in progress.
//!
//! Chunks are claimed by compare-and-swap on one word holding (generation, chunk count, next
//! chunk), so a helper that wakes late can never claim a chunk of a finished job, and the job
//! pointer it reads after a successful claim belongs to a job that cannot finish before that
//! chunk is done.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called with chunk indices `0..n_chunks`, from several threads at once.
type Job = dyn Fn(usize) + Sync;

/// Field widths of the claim word: generation | chunk count | next chunk.
const IDX_BITS: u32 = 22;
const MAX_CHUNKS: usize = (1 << IDX_BITS) - 1;
const GEN_MASK: u64 = (1 << (64 - 2 * IDX_BITS)) - 1;

fn pack(generation: u64, n: usize, next: usize) -> u64 {
    ((generation & GEN_MASK) << (2 * IDX_BITS)) | ((n as u64) << IDX_BITS) | next as u64
}

fn unpack(v: u64) -> (usize, usize) {
    let mask = (1u64 << IDX_BITS) - 1;
    (((v >> IDX_BITS) & mask) as usize, (v & mask) as usize)
}

struct Shared {
    /// (generation, chunk count, next chunk to claim).
    claim: AtomicU64,
    /// The current job: a lifetime-erased `*const &Job` (a thin pointer to the caller's fat
    /// reference), valid while any chunk of the current generation is unfinished.
    job: AtomicPtr<&'static Job>,
    /// Chunks of the current generation finished.
    done: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// The pool: `n_threads - 1` helper threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls (one job at a time) and counts generations.
    running: Mutex<u64>,
}

/// How long an idle helper spins, then yields, before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
const YIELD: Duration = Duration::from_millis(3);

impl Pool {
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let helpers = (1..n_threads.max(1))
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("realizar-mm-{i}"))
                    .spawn(move || helper(&s))
                    .ok()
            })
            .collect();
        Pool {
            shared,
            helpers,
            running: Mutex::new(0),
        }
    }

    /// Threads working on a job (helpers plus the caller).
    pub fn n_threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Calls `f(i)` for every `i < n_chunks`, spread over the pool; returns when all are done.
    /// Panics (after every call has returned) if a call panicked.
    pub fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let mut generation = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if self.helpers.is_empty() || n_chunks <= 1 || n_chunks > MAX_CHUNKS {
            (0..n_chunks).for_each(f);
            return;
        }
        *generation += 1;
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. Helpers dereference the pointer only after
        // claiming an unfinished chunk of this generation, and this function returns only
        // after every chunk is finished, so `f` (and `fref`) outlive every use.
        let fref: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        s.job
            .store((&fref as *const &Job).cast_mut(), Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.claim
            .store(pack(*generation, n_chunks, 0), Ordering::Release);
        if *s.sleepers.lock().unwrap_or_else(|p| p.into_inner()) > 0 {
            s.wake.notify_all();
        }
        while let Some(i) = claim(s, *generation) {
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n_chunks {
            if spins < 1 << 14 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a matmul task panicked");
        }
    }
}

/// Claim the next chunk of `generation` (`None` when it has none left or is over).
fn claim(s: &Shared, generation: u64) -> Option<usize> {
    let mut v = s.claim.load(Ordering::Acquire);
    loop {
        if (v >> (2 * IDX_BITS)) != (generation & GEN_MASK) {
            return None;
        }
        let (n, next) = unpack(v);
        if next >= n {
            return None;
        }
        match s
            .claim
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(next),
            Err(now) => v = now,
        }
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a job of a new generation: spin, yield, then sleep.
        let start = Instant::now();
        let generation = loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let v = s.claim.load(Ordering::Acquire);
            let (n, next) = unpack(v);
            let g = v >> (2 * IDX_BITS);
            if g != seen && next < n {
                break g;
            }
            let waited = start.elapsed();
            if waited < SPIN {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                continue;
            }
            if waited < YIELD {
                // Give the core to other runnable threads (rayon's, during attention) while
                // staying ready for the next matmul.
                std::thread::yield_now();
                continue;
            }
            let mut sleepers = s.sleepers.lock().unwrap_or_else(|p| p.into_inner());
            *sleepers += 1;
            loop {
                let v = s.claim.load(Ordering::Acquire);
                let (n, next) = unpack(v);
                if s.shutdown.load(Ordering::Acquire) || (v >> (2 * IDX_BITS) != seen && next < n) {
                    break;
                }
                sleepers = s.wake.wait(sleepers).unwrap_or_else(|p| p.into_inner());
            }
            *sleepers -= 1;
        };
        seen = generation;
        while let Some(i) = claim(s, generation) {
            // SAFETY: we hold an unfinished chunk of `generation`, so its `run` is still
            // waiting and the job pointer it stored (before publishing the generation, which
            // our claim acquired) is alive and unchanged.
            let f: &Job = unsafe { *s.job.load(Ordering::Relaxed) };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _n = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        let pool = Pool::new(3);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // After the helpers went to sleep.
        std::thread::sleep(YIELD * 2);
        for _ in 0..200 {
            let sum = AtomicUsize::new(0);
            pool.run(50, &|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 49 * 50 / 2);
        }
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(10, &|i| assert!(i != 5, "chunk 5"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
