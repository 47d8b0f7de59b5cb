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
//! `fn(A) -> R` of the main executable with serde arguments and result, exactly as for
//! [`Process::new`](crate::Process::new): capturing closures do not compile, and a function is sent as an
//! offset checked against the executable. Task messages cross shared memory, so the offsets carry a MAC
//! keyed with a secret of this pool: a process that scribbles on the rings cannot make a worker jump
//! anywhere else.
//!
//! # Arrays by offset
//! [`map_chunks`](Pool::map_chunks) and [`transform`](Pool::transform) lend a [`SharedArray`] to the
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
//! - Python's `Pool` hangs forever in that case, and `concurrent.futures` breaks the whole pool.
//!
//! # Lifecycle
//! [`close`](Pool::close) stops new work; [`join`](Pool::join) waits for the work submitted and for the
//! workers to exit; [`terminate`](Pool::terminate) kills the workers now, failing what is outstanding
//! with [`Error::PoolClosed`]. Dropping a pool terminates it (as in Python), also after `close` if `join`
//! was not called: it neither hangs nor leaves a worker behind.

mod dispatcher;
mod engine;
mod results;
#[cfg(test)]
mod tests;
pub(crate) mod wire;
pub(crate) mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::heap::SharedArray;
use crate::process::fnref::{FnKey, FnRef, LocalFn};
use dispatcher::{task_body, Config, TaskSpec};
use engine::Engine;
use results::Job;
pub use results::{AsyncResult, Imap, ImapUnordered};
use worker::{FrameQueue, TaskKind};

/// Largest frame on a pool ring; bigger messages travel in several.
const FRAME_SIZE: usize = 64 << 10;
/// Frames the shared result ring holds.
const RESULT_RING: usize = 64;
/// The largest task (encoded items of one chunk) or result (encoded results of one chunk) a pool moves.
/// Both ends reassemble fragments up to this and no further, so a garbage writer of a ring cannot grow
/// their memory without bound; a larger message fails its task with a message saying so. Large arrays
/// do not count against it: they travel by offset.
pub(crate) const MAX_MESSAGE_BYTES: u64 = 256 << 20;

/// Configures a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    initializer: Option<fn()>,
    max_tasks_per_child: Option<u64>,
    retry: bool,
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
    /// [`Error::WorkerDied`]. Only for tasks that are safe to run twice.
    pub fn retry_on_worker_death(mut self, yes: bool) -> Self {
        self.retry = yes;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory or a worker process cannot be created.
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
        let cfg = Config {
            workers,
            key,
            initializer,
            max_tasks: self.max_tasks_per_child,
            retries: u8::from(self.retry),
            frame_size: FRAME_SIZE,
            max_body: MAX_MESSAGE_BYTES,
        };
        let results = FrameQueue::with_max_message(RESULT_RING, FRAME_SIZE)?;
        let (engine, background) = Engine::start(cfg, results)?;
        Ok(Pool {
            engine,
            key,
            workers,
            background: Some(background),
        })
    }
}

/// A pool of worker processes. See the [module docs](self).
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
    pub fn new() -> Result<Pool> {
        PoolBuilder::default().build()
    }

    /// A builder for a pool with other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Submits one task per payload (crate use: `cluster` builds the tasks of a rank's share itself).
    #[track_caller]
    pub(crate) fn submit(
        &self,
        func: LocalFn<TaskKind>,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Arc<Job>> {
        let f = func.sign(&self.key);
        let limit = MAX_MESSAGE_BYTES as usize - FnRef::LEN;
        if let Some(p) = payloads.iter().find(|p| p.len() > limit) {
            return Err(Error::MessageTooLarge {
                size: p.len(),
                max: limit,
            });
        }
        let job = Job::new(payloads.len(), &self.engine);
        let specs = payloads
            .iter()
            .enumerate()
            .map(|(chunk, p)| TaskSpec {
                job: job.clone(),
                chunk,
                body: task_body(f, p),
            })
            .collect();
        self.engine.submit(specs)?;
        Ok(job)
    }

    fn chunk_items<A: Serialize>(
        &self,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<(Vec<Vec<u8>>, Vec<usize>)> {
        let items: Vec<A> = items.into_iter().collect();
        let size = chunksize
            .unwrap_or_else(|| default_chunksize(items.len(), self.workers))
            .max(1);
        let mut payloads = Vec::with_capacity(items.len().div_ceil(size));
        let mut lens = Vec::with_capacity(payloads.capacity());
        for chunk in items.chunks(size) {
            payloads.push(postcard::to_allocvec(chunk).map_err(|e| Error::Encode(e.to_string()))?);
            lens.push(chunk.len());
        }
        Ok((payloads, lens))
    }

    /// Starts `f` on every item; results come back through the returned handle. Items are sent in chunks
    /// of `chunksize` (default: about four chunks per worker).
    ///
    /// # Errors
    /// [`Error::Encode`] if an item cannot be serialized, [`Error::PoolClosed`].
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (payloads, lens) = self.chunk_items(items, chunksize)?;
        let job = self.submit(worker::map_fn(f), payloads)?;
        Ok(AsyncResult::all_items(job, lens))
    }

    /// `f` applied to every item, in order, like Python's `Pool.map`.
    ///
    /// # Errors
    /// The error of the lowest-index item that failed ([`Error::TaskPanicked`], [`Error::WorkerDied`], a
    /// decode error), after every item has finished; [`Error::PoolClosed`]. Use
    /// [`map_each`](Pool::map_each) to keep the results of the items that succeeded.
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.map_async(f, items, None)?.get()
    }

    /// Like [`map`](Pool::map) with an explicit chunk size.
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_chunksize<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.map_async(f, items, Some(chunksize))?.get()
    }

    /// `f` applied to every item, each item's own result in order: a failing item does not hide the
    /// others' work.
    ///
    /// # Errors
    /// Only for the call as a whole: [`Error::Encode`], [`Error::PoolClosed`].
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_each<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Result<R>>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        Ok(self.imap(f, items, None)?.collect())
    }

    /// Results in order as they become available (Python's `imap`).
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::PoolClosed`]; each item's own error comes from the iterator.
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Imap<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (payloads, lens) = self.chunk_items(items, chunksize)?;
        let job = self.submit(worker::map_fn(f), payloads)?;
        Ok(Imap::new(job, lens))
    }

    /// Results as each chunk finishes, in any order, each with its item index (Python's
    /// `imap_unordered`).
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn imap_unordered<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<ImapUnordered<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (payloads, lens) = self.chunk_items(items, chunksize)?;
        let job = self.submit(worker::map_fn(f), payloads)?;
        Ok(ImapUnordered::new(job, lens))
    }

    /// `f(a, b)` for every pair, in order (Python's `starmap`).
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        B: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (payloads, lens) = self.chunk_items(items, None)?;
        let job = self.submit(worker::star_fn(f), payloads)?;
        AsyncResult::all_items(job, lens).get()
    }

    /// Starts `f(args)` on a worker (Python's `apply_async`).
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::PoolClosed`].
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (payloads, lens) = self.chunk_items([args], Some(1))?;
        let job = self.submit(worker::map_fn(f), payloads)?;
        Ok(AsyncResult::one_item(job, lens))
    }

    /// `f(args)` on a worker, waiting for the result (Python's `apply`).
    ///
    /// # Errors
    /// [`Error::TaskPanicked`], [`Error::WorkerDied`], [`Error::Encode`], [`Error::PoolClosed`].
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    #[track_caller]
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.apply_async(f, args)?.get()
    }

    /// `f` on consecutive chunks of `chunk_len` elements of `array` (the last may be shorter), one result
    /// per chunk, in order. The elements are read in place by the workers: only (region, offset, range)
    /// travels.
    ///
    /// # Errors
    /// As [`map`](Pool::map), with chunk indices as task indices.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_chunks<T, R>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        f: fn(&[T]) -> R,
    ) -> Result<Vec<R>>
    where
        T: Pod,
        R: Serialize + DeserializeOwned,
    {
        self.chunk_tasks(array, chunk_len, &(), worker::chunk_fn(f))
    }

    /// Like [`map_chunks`](Pool::map_chunks), with parameters every task receives (an image's width, a
    /// histogram's range): `f(&params, chunk)`. The parameters travel serialized, once per task.
    ///
    /// # Examples
    /// ```
    /// fn count_in_range(&(lo, hi): &(f64, f64), chunk: &[f64]) -> usize {
    ///     chunk.iter().filter(|&&x| lo <= x && x < hi).count()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let data = mproc::SharedArray::from_slice(&(0..1000).map(f64::from).collect::<Vec<_>>())?;
    /// let counts = pool.map_chunks_with(&data, 300, &(100.0, 200.0), count_in_range)?;
    /// assert_eq!(counts.iter().sum::<usize>(), 100);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_chunks`](Pool::map_chunks); [`Error::Encode`] if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`map_chunks`](Pool::map_chunks).
    #[track_caller]
    pub fn map_chunks_with<T, P, R>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T]) -> R,
    ) -> Result<Vec<R>>
    where
        T: Pod,
        P: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.chunk_tasks(array, chunk_len, params, worker::chunk_with_fn(f))
    }

    /// One task per chunk of `array`, each carrying its part and `extra`; waits for all of them.
    #[track_caller]
    fn chunk_tasks<T: Pod, X: Serialize, R: DeserializeOwned>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        extra: &X,
        func: LocalFn<TaskKind>,
    ) -> Result<Vec<R>> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let block = array.block_handle();
        let payloads = ranges(array.len(), chunk_len)
            .map(|(start, end)| {
                let part = worker::ArrayPart {
                    block: block.clone(),
                    start: start as u64,
                    end: end as u64,
                };
                postcard::to_allocvec(&(&part, extra)).map_err(|e| Error::Encode(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let lens = vec![1; payloads.len()];
        let job = self.submit(func, payloads)?;
        // `array` stays borrowed until every task has finished: `get` waits for all of them.
        AsyncResult::all_items(job, lens).get()
    }

    /// Fills `output` in parallel: each task calls `f(input, out_chunk, start)` where `out_chunk` is
    /// `output[start..start + chunk_len]` (the last may be shorter) and `input` is the whole input, so a
    /// task may read around its own range (a blur reading neighbouring rows). Nothing but handles travels.
    ///
    /// # Errors
    /// As [`map`](Pool::map), with chunk indices as task indices. Chunks whose task failed may be partly
    /// written.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or `f` is not a function of the main executable.
    #[track_caller]
    pub fn transform<T: Pod, U: Pod>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        f: fn(&[T], &mut [U], usize),
    ) -> Result<()> {
        self.transform_tasks(input, output, chunk_len, &(), worker::transform_fn(f))
    }

    /// Like [`transform`](Pool::transform), with parameters every task receives:
    /// `f(&params, input, out_chunk, start)` (say, the image's width and height for a blur over rows).
    ///
    /// # Examples
    /// ```
    /// // Each output element is the sum of its row in a `width`-wide matrix.
    /// fn row_sums(&width: &usize, input: &[u32], out: &mut [u32], start: usize) {
    ///     for (k, o) in out.iter_mut().enumerate() {
    ///         let row = start + k;
    ///         *o = input[row * width..(row + 1) * width].iter().sum();
    ///     }
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let (width, rows) = (4, 10);
    /// let matrix = mproc::SharedArray::from_slice(&vec![1u32; width * rows])?;
    /// let mut sums = mproc::SharedArray::<u32>::zeroed(rows)?;
    /// pool.transform_with(&matrix, &mut sums, 3, &width, row_sums)?;
    /// assert!(sums.iter().all(|&s| s == 4));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`transform`](Pool::transform); [`Error::Encode`] if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`transform`](Pool::transform).
    #[track_caller]
    pub fn transform_with<T: Pod, U: Pod, P: Serialize + DeserializeOwned>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T], &mut [U], usize),
    ) -> Result<()> {
        self.transform_tasks(
            input,
            output,
            chunk_len,
            params,
            worker::transform_with_fn(f),
        )
    }

    /// One task per output chunk, each carrying the whole input, its output part and `extra`.
    #[track_caller]
    fn transform_tasks<T: Pod, U: Pod, X: Serialize>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        extra: &X,
        func: LocalFn<TaskKind>,
    ) -> Result<()> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let whole = worker::ArrayPart {
            block: input.block_handle(),
            start: 0,
            end: input.len() as u64,
        };
        let out = output.block_handle();
        let payloads = ranges(output.len(), chunk_len)
            .map(|(start, end)| {
                let part = worker::ArrayPart {
                    block: out.clone(),
                    start: start as u64,
                    end: end as u64,
                };
                postcard::to_allocvec(&(&whole, &part, extra))
                    .map_err(|e| Error::Encode(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let lens = vec![1; payloads.len()];
        let job = self.submit(func, payloads)?;
        // Both borrows stay held until every task has finished: `get` waits for all of them.
        AsyncResult::<Vec<()>>::all_items(job, lens).get().map(drop)
    }

    /// Stops taking work; what was submitted still runs. Workers exit once it is done.
    pub fn close(&self) {
        self.engine.close();
    }

    /// Waits for the submitted work to finish and the workers to exit. Call [`close`](Pool::close) (or
    /// [`terminate`](Pool::terminate)) first.
    ///
    /// # Errors
    /// [`Error::ProcessState`] if the pool is still open.
    pub fn join(&mut self) -> Result<()> {
        if !self.engine.is_closing() {
            return Err(Error::ProcessState(
                "join() needs close() or terminate() first",
            ));
        }
        if let Some(t) = self.background.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        Ok(())
    }

    /// Kills the workers now; outstanding work fails with [`Error::PoolClosed`].
    pub fn terminate(&mut self) {
        let Some(t) = self.background.take() else {
            return;
        };
        self.engine.terminate();
        t.thread().unpark();
        let _ = t.join();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn ranges(len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len.div_ceil(chunk)).map(move |i| (i * chunk, ((i + 1) * chunk).min(len)))
}
