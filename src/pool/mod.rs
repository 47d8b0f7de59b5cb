//! [`Pool`]: a process pool like Python's `multiprocessing.Pool`, that hands shared arrays to its
//! workers by offset and survives workers that die.
//!
//! ```
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = mproc::Pool::new()?;
//! assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Functions
//! Workers are spawned processes (see [`process`](crate::process)), so a task is a **function pointer**
//! `fn(A) -> R` of the main executable with serde arguments and result, as for
//! [`Process::new`](crate::Process::new): capturing closures do not compile, and a function is sent as an
//! offset checked against the executable. Unlike a spawned function, a task takes its argument by
//! value (`fn square(x: u64)`, not `x: &u64`; the items you pass may be borrowed): see [`PoolArg`] for
//! why, and for the message rustc gives otherwise. Task messages cross shared memory, so the offsets carry a MAC
//! keyed with a secret of this pool: a process that scribbles on the rings cannot make a worker jump
//! anywhere else.
//!
//! # Arrays by offset
//! [`map_chunks`](Pool::map_chunks) and [`transform`](Pool::transform) lend a [`SharedArray`](crate::SharedArray) to the
//! workers: a task carries (region, offset, range), never the elements, and each worker maps the array
//! once and computes on it in place. The borrow checker keeps the parent off the array while they work:
//! `map_chunks` takes `&SharedArray` (everyone reads), `transform` takes `&SharedArray` for the input and
//! `&mut SharedArray` for the output, and gives each task a disjoint output range; both return only when
//! every task has finished.
//!
//! # Failures
//! - A task that panics: its item fails with [`Error::TaskPanicked`] (message, location, item index);
//!   the other items still run. [`map`](Pool::map) returns the error of the lowest failing index;
//!   [`map_each`](Pool::map_each) returns every item's own result, so no work is lost.
//! - A worker that dies (SIGKILL, abort, segfault, out of memory): exactly the tasks it had in flight fail
//!   with [`Error::WorkerDied`] — or run once more elsewhere, if the pool was built with
//!   [`PoolBuilder::retry_on_worker_death`] — a replacement worker starts, and the pool goes on. The
//!   manager notices a death within about 10 ms; no call ever waits on a dead worker.
//! - A replacement that cannot start (out of processes, descriptors or memory) is tried again at every
//!   check; once starts have failed for a second with no worker left at all, the work not yet handed
//!   out fails with the error that start met, rather than wait for a worker that may never come.
//! - Workers that die without ever being given a task, more than a few in a row in one place (an
//!   initializer that fails), are replaced after a delay that doubles up to a second while no work
//!   waits, not at every check; work that waits gets a worker at once (each death then fails, or
//!   retries, one of its tasks).
//! - Python's `Pool` hangs forever in that case, and `concurrent.futures` breaks the whole pool.
//!
//! # Lifecycle
//! [`close`](Pool::close) stops new work; [`join`](Pool::join) waits for the work submitted and for the
//! workers to exit; [`terminate`](Pool::terminate) kills the workers now, failing what is outstanding
//! with [`Error::PoolClosed`]. Dropping a pool terminates it (as in Python), also after `close` if `join`
//! was not called: it neither hangs nor leaves a worker behind.

pub(crate) mod answer;
mod arrays;
mod builder;
mod dispatcher;
mod engine;
pub(crate) mod item_wire;
mod map;
mod results;
#[cfg(test)]
mod tests;
#[cfg(any(feature = "ndarray", feature = "image"))]
pub(crate) mod via;
pub(crate) mod wire;
pub(crate) mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::process::fnref::{FnKey, FnRef, LocalFn};
pub use builder::PoolBuilder;
use dispatcher::task_spec;
use engine::Engine;
pub use map::PoolArg;
use results::Job;
pub use results::{AsyncResult, Imap, ImapUnordered};
use wire::Payload;
use worker::TaskKind;

/// Largest frame on a pool ring; bigger messages travel in several.
const FRAME_SIZE: usize = 64 << 10;
/// Frames the shared result ring holds.
const RESULT_RING: usize = 64;
/// The largest task (encoded items of one chunk) or result (encoded results of one chunk) a pool moves
/// through its rings. Both ends reassemble fragments up to this and no further, so a garbage writer of a
/// ring cannot grow their memory without bound; a larger message fails its task with a message saying
/// so. Large arrays do not count against it (they travel by offset), nor do payloads and answers from
/// 1 MiB on, which travel in shared blocks (`wire::Payload`, `answer`).
pub(crate) const MAX_MESSAGE_BYTES: u64 = 256 << 20;

/// A pool of worker processes. See the [module docs](self).
///
/// # Examples
/// ```
/// fn word_len(w: String) -> usize {
///     w.len()
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let words = ["spam", "eggs", "ham"].map(String::from);
/// assert_eq!(pool.map(word_len, &words)?, vec![4, 4, 3]); // items may be borrowed
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Pool {
    engine: Arc<Engine>,
    key: FnKey,
    workers: usize,
    /// The background thread (see `engine`); `None` once joined.
    background: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

fn default_chunksize(items: usize, workers: usize) -> usize {
    // Python's rule: about four chunks per worker.
    items.div_ceil(workers * 4).max(1)
}

impl Pool {
    /// A pool with one worker per available CPU.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    ///
    /// # Examples
    /// ```
    /// let pool = mproc::Pool::new()?;
    /// assert_eq!(pool.workers(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Pool> {
        PoolBuilder::default().build()
    }

    /// A builder for a pool with other settings.
    ///
    /// # Examples
    /// ```
    /// fn triple(x: i32) -> i32 {
    ///     3 * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.apply(triple, 14)?, 42);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    ///
    /// # Examples
    /// ```
    /// let pool = mproc::Pool::builder().workers(3).build()?;
    /// assert_eq!(pool.workers(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The pids of the worker processes right now. A worker that died is replaced by a new process, so
    /// the list can change between calls; once the pool is closed and joined it is empty.
    ///
    /// # Examples
    /// ```
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// assert!(!pids.contains(&std::process::id()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        self.engine.worker_pids()
    }

    /// Submits one task per payload (crate use: `cluster` builds the tasks of a rank's share itself).
    #[track_caller]
    pub(crate) fn submit(
        &self,
        func: LocalFn<TaskKind>,
        payloads: Vec<Payload>,
    ) -> Result<Arc<Job>> {
        let f = func.sign(&self.key);
        let limit = MAX_MESSAGE_BYTES as usize - FnRef::LEN - 1;
        for p in &payloads {
            if let Payload::Inline(p) = p {
                if p.len() > limit {
                    return Err(Error::MessageTooLarge {
                        size: p.len(),
                        max: limit,
                    });
                }
            }
        }
        let job = Job::new(payloads.len(), &self.engine);
        let specs = payloads
            .into_iter()
            .enumerate()
            .map(|(chunk, p)| task_spec(job.clone(), chunk, f, p))
            .collect::<Result<Vec<_>>>()?;
        self.engine.submit(specs)?;
        Ok(job)
    }

    /// Stops taking work; what was submitted still runs. Workers exit once it is done.
    ///
    /// # Examples
    /// ```
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let mut pool = mproc::Pool::builder().workers(1).build()?;
    /// let pending = pool.map_async(id, [1, 2, 3], None)?;
    /// pool.close();
    /// assert!(matches!(pool.apply(id, 4), Err(mproc::Error::PoolClosed)));
    /// pool.join()?;
    /// assert_eq!(pending.get()?, vec![1, 2, 3]); // submitted before close: still done
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        self.engine.close();
    }

    /// Waits for the submitted work to finish and the workers to exit. Call [`close`](Pool::close) (or
    /// [`terminate`](Pool::terminate)) first. Workers that have not exited 10 s after the work is done
    /// (stopped, or stuck) are killed then, all at once: a `join` never waits longer for them.
    ///
    /// # Errors
    /// [`Error::ProcessState`] if the pool is still open.
    ///
    /// # Examples
    /// ```
    /// let mut pool = mproc::Pool::builder().workers(1).build()?;
    /// assert!(matches!(pool.join(), Err(mproc::Error::ProcessState(_)))); // close() first
    /// pool.close();
    /// pool.join()?;
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join(&mut self) -> Result<()> {
        if !self.engine.is_closing() {
            return Err(Error::ProcessState(
                "join() needs close() or terminate() first".into(),
            ));
        }
        if let Some(t) = self.background.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        Ok(())
    }

    /// Kills the workers now; outstanding work fails with [`Error::PoolClosed`].
    ///
    /// # Examples
    /// ```
    /// fn sleepy(ms: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let mut pool = mproc::Pool::builder().workers(1).build()?;
    /// let slow = pool.apply_async(sleepy, 60_000)?;
    /// pool.terminate();
    /// assert!(matches!(slow.get(), Err(mproc::Error::PoolClosed)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&mut self) {
        let Some(t) = self.background.take() else {
            return;
        };
        self.engine.terminate();
        t.thread().unpark();
        // A pool dropped by a task its own background thread woke (an awaiting task polled inline
        // that held the last `Pool`): that thread cannot join itself; it sees `stop` and ends.
        if t.thread().id() != std::thread::current().id() {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}
