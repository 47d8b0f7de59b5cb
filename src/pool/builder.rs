//! [`PoolBuilder`]: a pool's settings.

use super::dispatcher::PoolConfig;
use super::engine::Engine;
use super::results::ProgressCallback;
use super::worker::{self, FrameQueue};
use super::{Pool, FRAME_SIZE, MAX_MESSAGE_BYTES, RESULT_RING};
use crate::error::Result;
use crate::process::fnref::FnKey;
use crate::process::StartMethod;

/// Configures a [`Pool`].
///
/// # Examples
/// ```
/// fn setup() {}
///
/// let pool = mproc::Pool::builder()
///     .workers(2)
///     .initializer(setup)
///     .max_tasks_per_child(1000)
///     .retry_on_worker_death(true)
///     .build()?;
/// assert_eq!(pool.workers(), 2);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    initializer: Option<fn()>,
    max_tasks_per_child: Option<u64>,
    retry: bool,
    progress: Option<ProgressCallback>,
    start_method: StartMethod,
    /// Workers hand freed memory back to the system (`retain_worker_memory(false)`); `false` by
    /// default, so that the derived `Default` is the documented default.
    release_worker_memory: bool,
}

impl PoolBuilder {
    /// The number of worker processes (default: the available CPUs).
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n > 0, "a pool needs at least one worker");
        self.workers = Some(n);
        self
    }

    /// A function every worker runs once when it starts (Python's `initializer`).
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
        self
    }

    /// Replace each worker after it has run `n` tasks (Python's `maxtasksperchild`). A task is one chunk.
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        assert!(n > 0, "max_tasks_per_child must be at least 1");
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Run a task whose worker died once more on another worker before failing it with
    /// [`Error::WorkerDied`](crate::Error::WorkerDied). Only for tasks that are safe to run twice.
    pub fn retry_on_worker_death(mut self, yes: bool) -> Self {
        self.retry = yes;
        self
    }

    /// Calls `f(done, total)` as the tasks of a call finish (a task is one chunk of items, or one part
    /// of an array): once with what is done when the caller starts waiting, then each time a task
    /// finishes. It runs in the thread that waits for the results (`map`, `get`, an `imap` iterator, …),
    /// between results, so it should be quick; a call nobody waits for reports nothing. Like `Parallel`'s
    /// [`on_progress`](crate::Parallel::on_progress).
    ///
    /// Within a call `done` only grows, and `f` is never run by two threads at once for one call:
    /// when several threads wait for the same call, one reports at a time, and a thread that finds
    /// another reporting leaves the newer count to it (so that thread's wait may end before the count
    /// it saw is reported).
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let last = Arc::new(AtomicUsize::new(0));
    /// let seen = last.clone();
    /// let pool = mproc::Pool::builder()
    ///     .workers(2)
    ///     .on_progress(move |done, total| {
    ///         assert!(done <= total);
    ///         seen.store(done, Ordering::Relaxed);
    ///     })
    ///     .build()?;
    /// pool.map_chunksize(square, 0..100u64, 10)?;
    /// assert_eq!(last.load(Ordering::Relaxed), 10); // the last report: 10 of 10 tasks
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn on_progress(mut self, f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        self.progress = Some(ProgressCallback(std::sync::Arc::new(f)));
        self
    }

    /// How the workers are started, the first ones and those replacing a worker that died or reached
    /// [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child): [`StartMethod::Spawn`] (the default,
    /// a re-exec each) or [`StartMethod::ForkServer`] (a fork of this process's single-threaded fork
    /// server each: several times faster, from any parent; see
    /// [the fork server](crate::process#the-fork-server)). Failures are handled alike: a worker that
    /// dies fails (or retries) exactly its tasks and is replaced through the same method; if the fork
    /// server itself dies, the workers die with it, their tasks fail with
    /// [`Error::WorkerDied`](crate::Error::WorkerDied), and the replacements start through a new server.
    ///
    /// # Panics
    /// With [`StartMethod::Fork`]: workers run functions by reference, as spawned processes do, and
    /// forking this process (which runs the pool's thread) is what the fork server is for.
    ///
    /// # Examples
    /// ```
    /// use mproc::{Pool, StartMethod};
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .workers(2)
    ///     .start_method(StartMethod::ForkServer)
    ///     .build()?;
    /// assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn start_method(mut self, method: StartMethod) -> Self {
        assert!(
            method != StartMethod::Fork,
            "a pool starts its workers with StartMethod::Spawn or StartMethod::ForkServer"
        );
        self.start_method = method;
        self
    }

    /// Whether each worker keeps the memory its tasks free, for its next tasks (default `true`).
    ///
    /// A task that builds large values (a 64 MiB `Vec` argument decoded for it, a big result) would
    /// otherwise get fresh pages from the kernel on every call and pay a first-touch fault per 4 KiB:
    /// glibc's malloc serves blocks above 32 MiB with `mmap` and unmaps them when freed. Kept, the next
    /// call reuses pages already mapped; passing a 64 MiB `Vec<f64>` through `Pool::map` takes 19 ms
    /// instead of 50 ms here. The price: a worker's resident memory stays at the peak its tasks
    /// reached, until it exits (see [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child)). This
    /// tunes glibc's allocator, which is Rust's default; a program with another global allocator
    /// (jemalloc, mimalloc) keeps that allocator's own policy either way.
    ///
    /// # Examples
    /// ```
    /// fn total(v: Vec<u64>) -> u64 {
    ///     v.iter().sum()
    /// }
    ///
    /// // Workers that hand freed memory back to the system, as a plain process does.
    /// let pool = mproc::Pool::builder().workers(1).retain_worker_memory(false).build()?;
    /// assert_eq!(pool.apply(total, vec![1, 2, 3])?, 6);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn retain_worker_memory(mut self, yes: bool) -> Self {
        self.release_worker_memory = !yes;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory or a worker process cannot be created.
    ///
    /// # Panics
    /// If the initializer is not a function of the main executable.
    #[track_caller]
    pub fn build(self) -> Result<Pool> {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let key = FnKey::random();
        let initializer = self.initializer.map(|f| worker::init_fn(f).sign(&key));
        let cfg = PoolConfig {
            workers,
            key,
            initializer,
            max_tasks: self.max_tasks_per_child,
            retries: u8::from(self.retry),
            frame_size: FRAME_SIZE,
            max_body: MAX_MESSAGE_BYTES,
            start_method: self.start_method,
            retain_memory: !self.release_worker_memory,
        };
        let results = FrameQueue::with_max_message(RESULT_RING, FRAME_SIZE)?;
        let (engine, background) = Engine::start(cfg, results, self.progress)?;
        Ok(Pool {
            engine,
            key,
            workers,
            background: Some(background),
        })
    }
}
