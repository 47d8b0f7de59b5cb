//! Handles on work in flight: [`AsyncResult`], [`Imap`], [`ImapUnordered`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::engine::Engine;
use super::item_wire::ValueFromWire;
use super::wire::{ItemFailure, ItemResults};
use crate::error::{Error, Result};

/// How one task (a chunk of items) ended.
#[derive(Debug, Clone)]
pub(crate) enum ChunkOutcome {
    Ran(std::result::Result<ItemResults, String>),
    WorkerDied {
        signal: Option<i32>,
        exit_code: Option<i32>,
    },
    Closed,
    /// Never given to a worker: none was left, and a new one could not be started. The error that
    /// start met, in postcard (an [`Error`] is not `Clone`, but it crosses processes as bytes).
    NoWorker(Vec<u8>),
    /// Its items were decoded and handed out by an `imap` iterator or stream, which then let go of
    /// what the worker sent: an answer block stays lent to the parent (the worker cannot reuse it)
    /// for as long as its outcome is kept (found by review: a long `imap` of large results grew the
    /// worker's heap by every result already consumed).
    Yielded,
}

/// Rung whenever a job of the pool changes or the reader role is released: what a caller waits on
/// while another thread reads the results. Ringing costs a lock and, only if someone waits, a wake-up.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    /// (times rung, threads waiting)
    state: Mutex<(u64, usize)>,
    rung: Condvar,
}

impl Bell {
    fn lock(&self) -> MutexGuard<'_, (u64, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ring(&self) {
        let mut s = self.lock();
        s.0 = s.0.wrapping_add(1);
        if s.1 > 0 {
            self.rung.notify_all();
        }
    }

    /// Rings only if someone waits (the reader releasing its role: nobody to tell is the common case).
    pub(crate) fn ring_if_waited(&self) {
        let mut s = self.lock();
        if s.1 > 0 {
            s.0 = s.0.wrapping_add(1);
            self.rung.notify_all();
        }
    }

    /// How many times it has rung (to wait for the next ring without missing one).
    pub(crate) fn count(&self) -> u64 {
        self.lock().0
    }

    /// Waits at most `timeout` for a ring after the `seen`-th.
    pub(crate) fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut s = self.lock();
        s.1 += 1;
        let mut s = self
            .rung
            .wait_timeout_while(s, timeout, |s| s.0 == seen)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        s.1 -= 1;
    }
}

/// A pool's progress callback: `f(done, total)` with the tasks (chunks) of one call, called in the
/// thread that waits for the call's results (see [`PoolBuilder::on_progress`](super::PoolBuilder::on_progress)).
#[derive(Clone)]
pub(crate) struct ProgressCallback(pub(crate) Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for ProgressCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressCallback(..)")
    }
}

/// The shared record of one call (`map`, `apply`, …): its chunks' outcomes as they arrive.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) state: Mutex<JobState>,
    bell: Arc<Bell>,
    /// The engine that produces the outcomes: a waiter helps drive it (reads results) while it waits.
    engine: Weak<Engine>,
    /// The pool's progress callback, and `1 +` the `done` count it was last called with (0: never).
    progress: Option<ProgressCallback>,
    reported: AtomicUsize,
    /// Held by the thread calling the callback: one report at a time, so no report overtakes a newer
    /// one ([`Job::report_progress`]).
    reporting: Mutex<()>,
    /// Set by a thread that found another reporting: the reporter counts again before it leaves.
    report_wanted: AtomicBool,
}

#[derive(Debug, Default)]
pub(crate) struct JobState {
    pub(crate) chunks: Vec<Option<ChunkOutcome>>,
    pub(crate) remaining: usize,
    /// The task awaiting this job (the last `Future`/`Stream` poll), woken by [`Job::finish`].
    /// Registered under the same lock `finish` records an outcome under, so a wake-up is never lost
    /// between a poll's check and its registration. One, not a list: a job has a single future or
    /// stream, polled through `&mut`, and only its latest waker needs the wake-up.
    #[cfg(feature = "async")]
    pub(crate) waker: Option<std::task::Waker>,
}

impl Job {
    pub(crate) fn new(chunks: usize, engine: &Arc<Engine>) -> Arc<Job> {
        Arc::new(Job {
            state: Mutex::new(JobState {
                chunks: vec![None; chunks],
                remaining: chunks,
                #[cfg(feature = "async")]
                waker: None,
            }),
            bell: engine.bell(),
            engine: Arc::downgrade(engine),
            progress: engine.progress(),
            reported: AtomicUsize::new(0),
            reporting: Mutex::new(()),
            report_wanted: AtomicBool::new(false),
        })
    }

    /// Calls the progress callback, outside the job's state lock, if more tasks are finished than
    /// when it was last called (and once at the start, with what is done so far).
    ///
    /// One thread reports at a time, and only a count above the last: found by review, two threads
    /// waiting for one call each counted and then called the callback, so the smaller count could
    /// arrive last and move a progress bar back. A thread that finds another reporting does not wait
    /// for it (the callback may itself wait on this job, on the reporting thread): it asks it to count
    /// again ([`Job::report_wanted`]) and leaves. Either the reporter sees the request after its
    /// callback, or it had already let go of its turn and this thread takes it on its second try.
    fn report_progress(&self) {
        let Some(cb) = &self.progress else {
            return;
        };
        loop {
            let turn = match self.reporting.try_lock() {
                Ok(turn) => turn,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    self.report_wanted.store(true, Ordering::SeqCst);
                    // Pairs with the reporter's fence: it sees the request, or this try succeeds.
                    fence(Ordering::SeqCst);
                    match self.reporting.try_lock() {
                        Ok(turn) => turn,
                        Err(TryLockError::Poisoned(e)) => e.into_inner(),
                        Err(TryLockError::WouldBlock) => return,
                    }
                }
            };
            self.report_wanted.store(false, Ordering::SeqCst);
            let (done, total) = {
                let s = lock(self);
                (s.chunks.len() - s.remaining, s.chunks.len())
            };
            // Counted under the turn, after every earlier report: never below the last one.
            let last = self.reported.load(Ordering::Relaxed);
            if last == 0 || done >= last {
                self.reported.store(done + 1, Ordering::Relaxed);
                (cb.0)(done, total);
            }
            drop(turn);
            fence(Ordering::SeqCst);
            if !self.report_wanted.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Records chunk `chunk`'s outcome and rings the bell. The tasks awaiting the job are not woken
    /// here but returned: the caller holds the dispatcher's lock, and a waker may run its task inline,
    /// which may call into the same pool (submit again) and so take that lock on this thread. The
    /// engine wakes them once it has let go of the lock ([`Wakeups`]).
    #[must_use = "the awaiting tasks must be woken once no pool lock is held"]
    pub(crate) fn finish(&self, chunk: usize, outcome: ChunkOutcome) -> Wakeups {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot @ None) = s.chunks.get_mut(chunk) else {
            return Wakeups::default();
        };
        *slot = Some(outcome);
        s.remaining -= 1;
        let owed = Wakeups {
            #[cfg(feature = "async")]
            wakers: s.waker.take().into_iter().collect(),
        };
        drop(s);
        self.bell.ring();
        owed
    }
}

/// Tasks to wake (`Future`/`Stream` polls of finished jobs), collected while the dispatcher's lock is
/// held and woken after it is released (see [`Job::finish`]). Empty without the `async` feature.
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    #[cfg(feature = "async")]
    wakers: Vec<std::task::Waker>,
}

impl Wakeups {
    /// Adds `other`'s wakers to these.
    pub(crate) fn absorb(&mut self, other: Wakeups) {
        #[cfg(feature = "async")]
        self.wakers.extend(other.wakers);
        #[cfg(not(feature = "async"))]
        let _ = other;
    }

    /// Wakes them all. Call with no pool lock held. A waker that panics (an executor's bug) does not
    /// cost the others their wake-up: all are woken, then the first panic goes on.
    pub(crate) fn wake_all(self) {
        #[cfg(feature = "async")]
        {
            let mut first_panic = None;
            for w in self.wakers {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()))
                {
                    first_panic.get_or_insert(p);
                }
            }
            if let Some(p) = first_panic {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// Item `k` of a finished chunk, whose first item has index `first` in the call's input.
fn item<R: DeserializeOwned>(outcome: &ChunkOutcome, k: usize, first: usize) -> Result<R> {
    let index = first + k;
    match outcome {
        ChunkOutcome::Ran(Ok(items)) => match items.get(k) {
            Some(Ok(bytes)) => crate::codec::postcard_exact::<ValueFromWire<R>>(bytes.as_slice())
                .map(|v| v.0)
                .map_err(|reason| Error::Decode {
                    ty: std::any::type_name::<R>().into(),
                    reason,
                }),
            Some(Err(ItemFailure::Panicked { message, location })) => Err(Error::TaskPanicked {
                task: index,
                message: message.clone(),
                location: location.clone(),
            }),
            Some(Err(ItemFailure::Failed(reason))) => Err(Error::Decode {
                ty: "a pool task".into(),
                reason: reason.clone(),
            }),
            None => Err(Error::Corrupted(format!(
                "a worker returned no result for task {index}"
            ))),
        },
        ChunkOutcome::Ran(Err(reason)) => Err(Error::Corrupted(format!(
            "task {index} could not run: {reason}"
        ))),
        ChunkOutcome::WorkerDied { signal, exit_code } => Err(Error::WorkerDied {
            task: index,
            signal: *signal,
            exit_code: *exit_code,
        }),
        ChunkOutcome::Closed => Err(Error::PoolClosed),
        ChunkOutcome::NoWorker(why) => {
            Err(crate::codec::postcard_exact(why).unwrap_or_else(|_| {
                Error::ProcessState("no pool worker is alive and none could be started".into())
            }))
        }
        ChunkOutcome::Yielded => Err(Error::Corrupted(format!(
            "the result of task {index} was already handed out"
        ))),
    }
}

/// Decodes the `len` items of finished chunk `c` (its first item is input item `first`), each with
/// its index, and lets go of its outcome ([`ChunkOutcome::Yielded`]): for `imap`, which reads each
/// chunk once.
fn take_items<R: DeserializeOwned>(
    s: &mut JobState,
    c: usize,
    len: usize,
    first: usize,
) -> Vec<(usize, Result<R>)> {
    let outcome = s.chunks[c]
        .replace(ChunkOutcome::Yielded)
        .expect("a finished chunk");
    (0..len)
        .map(|k| (first + k, item(&outcome, k, first)))
        .collect()
}

fn lock(job: &Job) -> MutexGuard<'_, JobState> {
    job.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `done(state)` or the deadline; returns the guard and whether `done` holds. While it
/// waits it helps: it takes the reader role of the pool's result ring when nobody holds it, so the
/// worker's answer wakes this very thread (see `engine`).
fn wait_for<'a>(
    job: &'a Job,
    deadline: Option<Instant>,
    done: impl Fn(&JobState) -> bool,
) -> (MutexGuard<'a, JobState>, bool) {
    loop {
        let seen = job.bell.count();
        let s = lock(job);
        let finished = done(&s);
        drop(s);
        // After the check: a task that finished between a report and the check is reported too
        // (found by review: the last one was not, and the bar stayed short of the end).
        job.report_progress();
        if finished {
            return (lock(job), true);
        }
        let slice = match deadline {
            None => super::dispatcher::LIVENESS_EVERY,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => left.min(super::dispatcher::LIVENESS_EVERY),
                None => return (lock(job), false),
            },
        };
        match job.engine.upgrade() {
            Some(engine) => engine.serve(seen, slice),
            // The pool is gone; it failed everything it had before it went, so this only waits for a
            // ring that already came (or gives the deadline its due).
            None => job.bell.wait_after(seen, slice),
        }
    }
}

/// The result of work started with `map_async` or `apply_async`, like Python's `AsyncResult`.
///
/// # Examples
/// ```
/// use std::time::Duration;
///
/// fn slow_square(x: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(20));
///     x * x
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let squares = pool.map_async(slow_square, 1..=4, None)?;
/// let one = pool.apply_async(slow_square, 9)?;
/// // ... the caller does other work meanwhile ...
/// assert_eq!(squares.get()?, vec![1, 4, 9, 16]);
/// assert_eq!(one.get_timeout(Duration::from_secs(30))?, 81);
/// assert!(one.ready());
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct AsyncResult<T> {
    job: Arc<Job>,
    /// Items per chunk.
    lens: Vec<usize>,
    decode: fn(&JobState, &[usize]) -> Result<T>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R: DeserializeOwned> AsyncResult<Vec<R>> {
    pub(crate) fn all_items(job: Arc<Job>, lens: Vec<usize>) -> Self {
        fn decode<R: DeserializeOwned>(s: &JobState, lens: &[usize]) -> Result<Vec<R>> {
            let mut out = Vec::with_capacity(lens.iter().sum());
            let mut first = 0;
            for (chunk, &len) in s.chunks.iter().zip(lens) {
                let outcome = chunk.as_ref().ok_or(Error::Timeout)?;
                for k in 0..len {
                    out.push(item(outcome, k, first)?);
                }
                first += len;
            }
            Ok(out)
        }
        AsyncResult {
            job,
            lens,
            decode: decode::<R>,
        }
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    pub(crate) fn one_item(job: Arc<Job>, lens: Vec<usize>) -> Self {
        fn decode<R: DeserializeOwned>(s: &JobState, _: &[usize]) -> Result<R> {
            item(
                s.chunks
                    .first()
                    .and_then(Option::as_ref)
                    .ok_or(Error::Timeout)?,
                0,
                0,
            )
        }
        AsyncResult {
            job,
            lens,
            decode: decode::<R>,
        }
    }
}

impl<T> AsyncResult<T> {
    /// Whether every task has finished.
    ///
    /// # Examples
    /// ```
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// let r = pool.apply_async(id, 5)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        lock(&self.job).remaining == 0
    }

    /// Waits until every task has finished.
    pub fn wait(&self) {
        drop(wait_for(&self.job, None, |s| s.remaining == 0));
    }

    /// Waits at most `timeout`; returns whether every task has finished.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) {
    ///     std::thread::sleep(Duration::from_millis(ms));
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// let r = pool.apply_async(nap, 2_000)?;
    /// assert!(!r.wait_timeout(Duration::from_millis(1))); // still running
    /// assert!(r.wait_timeout(Duration::from_secs(60)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        wait_for(&self.job, crate::sync::wait::deadline_in(timeout), |s| {
            s.remaining == 0
        })
        .1
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// The error of the lowest-index item that failed (see [`Pool::map`](super::Pool::map)).
    ///
    /// # Examples
    /// ```
    /// fn inverse(x: i32) -> i32 {
    ///     assert!(x != 0, "no inverse of zero");
    ///     100 / x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.map_async(inverse, [1, 2, 4], None)?.get()?, vec![100, 50, 25]);
    /// let failed = pool.map_async(inverse, [5, 0, 10], None)?;
    /// assert!(matches!(failed.get(), Err(mproc::Error::TaskPanicked { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<T> {
        let (s, _) = wait_for(&self.job, None, |s| s.remaining == 0);
        (self.decode)(&s, &self.lens)
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not ready by then (the work goes on; ask again), otherwise as
    /// [`get`](AsyncResult::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let (s, done) = wait_for(&self.job, crate::sync::wait::deadline_in(timeout), |s| {
            s.remaining == 0
        });
        if !done {
            return Err(Error::Timeout);
        }
        (self.decode)(&s, &self.lens)
    }
}

/// Results of [`Pool::imap`](super::Pool::imap), in input order, each as soon as it and every earlier
/// one is ready.
///
/// # Examples
/// ```
/// fn shout(s: String) -> String {
///     s.to_uppercase()
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let lines = ["a", "b", "c"].map(String::from);
/// let mut out = Vec::new();
/// for r in pool.imap(shout, &lines, Some(1))? {
///     out.push(r?); // in input order, while later ones are still running
/// }
/// assert_eq!(out, ["A", "B", "C"]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Imap<R> {
    job: Arc<Job>,
    lens: Vec<usize>,
    next_chunk: usize,
    first: usize,
    buffer: VecDeque<Result<R>>,
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> Imap<R> {
    pub(crate) fn new(job: Arc<Job>, lens: Vec<usize>) -> Self {
        Imap {
            job,
            lens,
            next_chunk: 0,
            first: 0,
            buffer: VecDeque::new(),
        }
    }
}

impl<R: DeserializeOwned> Iterator for Imap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        while self.buffer.is_empty() {
            let c = self.next_chunk;
            let len = *self.lens.get(c)?;
            let (mut s, _) = wait_for(&self.job, None, |s| s.chunks[c].is_some());
            let items = take_items(&mut s, c, len, self.first);
            drop(s);
            self.buffer.extend(items.into_iter().map(|(_, r)| r));
            self.first += len;
            self.next_chunk += 1;
        }
        self.buffer.pop_front()
    }
}

/// Results of [`Pool::imap_unordered`](super::Pool::imap_unordered) as chunks finish, each with its item
/// index in the input.
///
/// # Examples
/// ```
/// fn cube(x: u32) -> u32 {
///     x * x * x
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let mut out = vec![0; 5];
/// for (i, r) in pool.imap_unordered(cube, 0..5, Some(1))? {
///     out[i] = r?; // whichever finished first comes first; the index says where it goes
/// }
/// assert_eq!(out, [0, 1, 8, 27, 64]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct ImapUnordered<R> {
    job: Arc<Job>,
    /// Per chunk: its first item's index, or `None` once yielded.
    firsts: Vec<Option<usize>>,
    lens: Vec<usize>,
    buffer: VecDeque<(usize, Result<R>)>,
    _r: PhantomData<R>,
}

impl<R> std::fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnordered").finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> ImapUnordered<R> {
    pub(crate) fn new(job: Arc<Job>, lens: Vec<usize>) -> Self {
        let mut first = 0;
        let firsts = lens
            .iter()
            .map(|&l| {
                let f = first;
                first += l;
                Some(f)
            })
            .collect();
        ImapUnordered {
            job,
            firsts,
            lens,
            buffer: VecDeque::new(),
            _r: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> Iterator for ImapUnordered<R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        while self.buffer.is_empty() {
            if self.firsts.iter().all(Option::is_none) {
                return None;
            }
            let firsts = &self.firsts;
            let (mut s, _) = wait_for(&self.job, None, |s| {
                s.chunks
                    .iter()
                    .zip(firsts)
                    .any(|(c, f)| c.is_some() && f.is_some())
            });
            for c in 0..s.chunks.len() {
                let (true, Some(first)) = (s.chunks[c].is_some(), self.firsts[c]) else {
                    continue;
                };
                self.buffer
                    .extend(take_items(&mut s, c, self.lens[c], first));
                self.firsts[c] = None;
            }
        }
        self.buffer.pop_front()
    }
}

/// `Future` for [`AsyncResult`], `Stream` for [`Imap`] and [`ImapUnordered`] (feature `async`).
///
/// # Who reads the results while only a future waits
/// A blocking waiter takes the pool's *reader role* and sleeps on the result ring. A future cannot
/// sleep in `poll`, and it does not read either: the pool's background thread reads every
/// `LIVENESS_EVERY` (10 ms) while nobody holds the role (and any blocking waiter reads while it
/// waits), and `Job::finish` wakes the registered wakers. An awaited result thus arrives at most
/// about 10 ms after the worker wrote it (plus the executor's own wake-up), and a dead worker is
/// noticed on the same tick, failing the awaited tasks with [`Error::WorkerDied`].
///
/// Why `poll` makes no read of its own: reading means taking the dispatcher's lock and, on a
/// liveness tick, replacing dead workers (a process spawn); measured in `examples/async_offload`
/// on a loaded 2-core VM, a poll that did one non-blocking `Engine::serve` took up to 54 ms — an
/// executor thread must never wait like that. A poll now only locks its job's state (microseconds).
/// The alternative, a thread per pending future that takes the reader role and blocks, would give
/// microsecond latency but a thread per `await`; work worth offloading to another process takes
/// milliseconds at least, and a caller that wants the fastest round trip can still call the
/// blocking [`AsyncResult::get`] (in `spawn_blocking`, say).
///
/// No runtime is involved: wakers are plain `std::task::Waker`s, so any executor works (tokio,
/// async-std, smol, `futures::executor`, a hand-written one).
#[cfg(feature = "async")]
mod awaitable {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_core::Stream;
    use serde::de::DeserializeOwned;

    use super::{lock, take_items, AsyncResult, Imap, ImapUnordered, Job, JobState};
    use crate::error::Result;

    /// `Ready` with the state once `done` holds; otherwise registers `cx`'s waker (under the state's
    /// lock, which `Job::finish` takes to record an outcome, so no wake-up is lost) and is `Pending`.
    fn poll_job<'a>(
        job: &'a Job,
        cx: &mut Context<'_>,
        done: impl Fn(&JobState) -> bool,
    ) -> Poll<std::sync::MutexGuard<'a, JobState>> {
        // Progress is reported from the polling thread, as `wait_for` does from a blocking waiter
        // (found by review: an awaited call reported nothing). After the check, outside the lock.
        let s = lock(job);
        let finished = done(&s);
        drop(s);
        job.report_progress();
        let mut s = lock(job);
        if finished || done(&s) {
            if !finished {
                drop(s);
                job.report_progress();
                s = lock(job);
            }
            return Poll::Ready(s);
        }
        // The latest waker replaces the last, as `AtomicWaker` does (found by review: each poll with
        // a new waker, a future moved between tasks or re-polled by `select!`, was added to a list
        // kept until a task of the job finished, memory growing with the polls).
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Awaiting an `AsyncResult` gives what [`get`](AsyncResult::get) would, without blocking the
    /// executor's thread.
    ///
    /// **Dropping the future (or the `AsyncResult`) cancels nothing**: the tasks already submitted run
    /// to completion on the workers and their results are discarded when they arrive. To stop work
    /// that is running, terminate the pool ([`Pool::terminate`](crate::Pool::terminate), or drop it).
    ///
    /// # Examples
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// let pending = pool.apply_async(square, 7)?;
    /// // Any executor will do; this one is the test's own tiny `block_on`.
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark {
    /// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
    /// #     }
    /// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// assert_eq!(block_on(pending)?, 49);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    impl<T> Future for AsyncResult<T> {
        type Output = Result<T>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
            let this = self.get_mut();
            poll_job(&this.job, cx, |s| s.remaining == 0).map(|s| (this.decode)(&s, &this.lens))
        }
    }

    // The streams never pin what they hold: results sit in a `VecDeque` and are moved out by value, so
    // they are `Unpin` whatever `R` is (`Unpin` is a safe trait; this only lifts the auto-trait's
    // conservative `R: Unpin` bound).
    impl<R> Unpin for Imap<R> {}
    impl<R> Unpin for ImapUnordered<R> {}

    /// The results of [`Pool::imap`](crate::Pool::imap) as a `Stream`, in input order; the same items
    /// the iterator yields. Dropping the stream cancels nothing (see [`AsyncResult`]'s `Future`).
    ///
    /// # Examples
    /// ```
    /// use futures_core::Stream;
    ///
    /// fn double(x: u32) -> u32 {
    ///     2 * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let mut results = std::pin::pin!(pool.imap(double, 1..=3, Some(1))?);
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark {
    /// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
    /// #     }
    /// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// let mut got = Vec::new();
    /// while let Some(r) = block_on(std::future::poll_fn(|cx| results.as_mut().poll_next(cx))) {
    ///     got.push(r?);
    /// }
    /// assert_eq!(got, [2, 4, 6]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    impl<R: DeserializeOwned> Stream for Imap<R> {
        type Item = Result<R>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<R>>> {
            let this = self.get_mut();
            while this.buffer.is_empty() {
                let c = this.next_chunk;
                let Some(&len) = this.lens.get(c) else {
                    return Poll::Ready(None);
                };
                let mut s = match poll_job(&this.job, cx, |s| s.chunks[c].is_some()) {
                    Poll::Ready(s) => s,
                    Poll::Pending => return Poll::Pending,
                };
                let items = take_items(&mut s, c, len, this.first);
                drop(s);
                this.buffer.extend(items.into_iter().map(|(_, r)| r));
                this.first += len;
                this.next_chunk += 1;
            }
            Poll::Ready(this.buffer.pop_front())
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            let left = self.buffer.len() + self.lens.iter().skip(self.next_chunk).sum::<usize>();
            (left, Some(left))
        }
    }

    /// The results of [`Pool::imap_unordered`](crate::Pool::imap_unordered) as a `Stream`, each with
    /// its item index, as chunks finish. Dropping the stream cancels nothing.
    ///
    /// # Examples
    /// ```
    /// use futures_core::Stream;
    ///
    /// fn double(x: u32) -> u32 {
    ///     2 * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let mut results = std::pin::pin!(pool.imap_unordered(double, 1..=3, Some(1))?);
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark {
    /// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
    /// #     }
    /// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// let mut got = Vec::new();
    /// while let Some((i, r)) = block_on(std::future::poll_fn(|cx| results.as_mut().poll_next(cx))) {
    ///     got.push((i, r?));
    /// }
    /// got.sort();
    /// assert_eq!(got, [(0, 2), (1, 4), (2, 6)]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    impl<R: DeserializeOwned> Stream for ImapUnordered<R> {
        type Item = (usize, Result<R>);

        fn poll_next(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<(usize, Result<R>)>> {
            let this = self.get_mut();
            while this.buffer.is_empty() {
                if this.firsts.iter().all(Option::is_none) {
                    return Poll::Ready(None);
                }
                let firsts = &this.firsts;
                let mut s = match poll_job(&this.job, cx, |s| {
                    s.chunks
                        .iter()
                        .zip(firsts)
                        .any(|(c, f)| c.is_some() && f.is_some())
                }) {
                    Poll::Ready(s) => s,
                    Poll::Pending => return Poll::Pending,
                };
                for c in 0..s.chunks.len() {
                    let (true, Some(first)) = (s.chunks[c].is_some(), this.firsts[c]) else {
                        continue;
                    };
                    this.buffer
                        .extend(take_items(&mut s, c, this.lens[c], first));
                    this.firsts[c] = None;
                }
            }
            Poll::Ready(this.buffer.pop_front())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twice(x: u32) -> Vec<u32> {
        vec![x, x]
    }

    /// Found by review: `imap` kept the outcome of every chunk it had handed out, so each answer block
    /// stayed lent (and the worker's heap grew) until the iterator was dropped. An outcome is let go
    /// of once its items are decoded, unordered too.
    #[test]
    fn imap_lets_go_of_what_it_handed_out() {
        let pool = crate::Pool::builder().workers(1).build().unwrap();
        let mut it = pool.imap(twice, 0..3u32, Some(1)).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), vec![0, 0]);
        assert!(matches!(
            lock(&it.job).chunks[0],
            Some(ChunkOutcome::Yielded)
        ));
        assert_eq!(it.map(Result::unwrap).collect::<Vec<_>>(), [[1, 1], [2, 2]]);
        let it = pool.imap_unordered(twice, 0..3u32, Some(1)).unwrap();
        let job = Arc::clone(&it.job);
        let mut got: Vec<_> = it.map(|(i, r)| (i, r.unwrap())).collect();
        got.sort();
        assert_eq!(got, [(0, vec![0, 0]), (1, vec![1, 1]), (2, vec![2, 2])]);
        assert!(lock(&job)
            .chunks
            .iter()
            .all(|c| matches!(c, Some(ChunkOutcome::Yielded))));
    }

    /// Found by review: two threads waiting for one call each counted the finished tasks and then
    /// called the progress callback, both at once, so a smaller count could arrive after a larger
    /// one (a progress bar moved back). Here a second thread reports while the first is inside the
    /// callback: it must not call it alongside; the first reports the newer count once it is back.
    #[test]
    fn progress_is_reported_by_one_thread_at_a_time_and_never_backwards() {
        use std::sync::atomic::AtomicBool;
        use std::sync::OnceLock;
        let job_cell: Arc<OnceLock<Arc<Job>>> = Arc::new(OnceLock::new());
        let calls: Arc<Mutex<Vec<(usize, bool)>>> = Arc::default();
        let inside = Arc::new(AtomicBool::new(false));
        let (cell, seen, busy) = (job_cell.clone(), calls.clone(), inside.clone());
        let pool = crate::Pool::builder()
            .workers(1)
            .on_progress(move |done, _| {
                let alongside = busy.swap(true, Ordering::SeqCst);
                seen.lock().unwrap().push((done, alongside));
                if done == 0 {
                    let job = Arc::clone(cell.get().unwrap());
                    let _ = job.finish(0, ChunkOutcome::Closed);
                    let (tx, rx) = std::sync::mpsc::channel();
                    std::thread::spawn(move || {
                        job.report_progress();
                        let _ = tx.send(());
                    });
                    rx.recv_timeout(Duration::from_secs(30))
                        .expect("the second report waits for the first (a hang)");
                }
                busy.store(alongside, Ordering::SeqCst);
            })
            .build()
            .unwrap();
        let job = Job::new(2, &pool.engine);
        job_cell.set(Arc::clone(&job)).unwrap();
        job.report_progress();
        assert_eq!(*calls.lock().unwrap(), [(0, false), (1, false)]);
        // Counts only grow within a call: a report of what was already reported calls nothing.
        job.report_progress();
        assert_eq!(calls.lock().unwrap().len(), 2);
        let _ = job.finish(1, ChunkOutcome::Closed);
    }
}
