//! [`Parallel`]: joblib's `Parallel(n_jobs)(delayed(f)(x) for x in xs)` for Rust, over a process
//! [`Pool`], with large array arguments passed by handle.
//!
//! ```
//! use mproc::parallel::{delayed, Arr, Parallel};
//!
//! fn norm(v: Arr<'_, f64>) -> f64 {
//!     v.iter().map(|x| x * x).sum::<f64>().sqrt()
//! }
//!
//! fn dot((a, b): (Arr<'_, f64>, Arr<'_, f64>)) -> f64 {
//!     a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
//! }
//!
//! let rows: Vec<Vec<f64>> = (0..8).map(|i| vec![i as f64; 100]).collect();
//! let par = Parallel::new(2);
//!
//! // joblib: Parallel(n_jobs=2)(delayed(norm)(r) for r in rows)
//! let norms = par.run(rows.iter().map(|r| delayed(norm, Arr::from(r))))?;
//! assert_eq!(norms[3], 30.0);
//!
//! // A 4 MiB array is above the 1 MiB threshold: it is copied into shared memory once, and every
//! // task gets its handle, not its elements.
//! let big: Vec<f64> = (0..1 << 19).map(|i| (i % 7) as f64).collect();
//! let ones = vec![1.0; big.len()];
//! let sums = par.map(dot, (0..4).map(|_| (Arr::from(&big), Arr::from(&ones))))?;
//! assert!(sums.iter().all(|&s| s == big.iter().sum::<f64>()));
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Functions and arguments
//! A task is a [`Delayed`]: a function pointer `fn(A) -> R` and its argument, made by [`delayed`]. As
//! for every [`Pool`] task, the function is a plain `fn` item (or a closure that captures nothing) of the
//! main executable, and `A` and `R` travel through serde; several arguments travel as a tuple. Tasks of
//! one call may use different functions of the same type: each function's tasks are sent to the pool
//! as one batch, and the results come back in the order of the tasks.
//!
//! # Large arrays travel by handle
//! joblib memory-maps NumPy arrays larger than `max_nbytes` (1 MiB by default) so that workers read the
//! parent's copy instead of receiving a pickle of it. [`Arr<T>`] does the same for a slice of `Pod`
//! values: serialized while a [`Parallel`] call sends its tasks, an array of at most
//! [`max_nbytes`](Parallel::max_nbytes) bytes travels inline, and a larger one is copied once into
//! shared memory, and only its handle travels; the worker maps it and reads it in place. The same
//! slice passed to many tasks is copied once per call. Serialized anywhere else (in a plain
//! [`Pool::map`], a [`Queue`](crate::Queue), a [`Process`](crate::Process)), an `Arr` always travels
//! inline, which is always sound.
//!
//! ## Why it is sound
//! A worker's `Arr` derefs to a `&[T]` over memory another process (the parent) allocated. That is
//! sound if nothing writes those elements while any such reference exists, which holds because:
//! - **Nobody writes them while they are lent.** The parent made the copy from the caller's data before
//!   sending its handle, keeps no reference to it, and hands out no `&mut`; a worker only gets `&[T]`
//!   through [`Arr`]'s `Deref`.
//! - **The parent reuses a copy only when no view of it is left.** Each copy starts with lease words
//!   (atomics in the copy's block) that count each process's views under its pid. A process that
//!   decodes a view counts it, and uncounts it when the view and all its clones are dropped. When the
//!   call ends (also when it returns early with an error, or the progress callback panics: it first
//!   waits for what it started), a copy with no view left in a live process is freed for reuse; any
//!   other stays *quarantined* — never written, never reused — until its views are gone (a process
//!   that died holding one holds it no more) or the [`Parallel`] is dropped, which first kills and
//!   reaps its workers. So a task that keeps its view past its call keeps reading that call's data,
//!   unchanged: not memory reused by later calls.
//! - **Tasks normally cannot keep a view.** A task receives `Arr<'a, T>` for some lifetime `'a` of the
//!   call, so a task `fn(Arr<'_, T>)` cannot store its argument (it cannot be put in a `static`). A
//!   task declared as `fn(Arr<'static, T>)` *can*; Rust has no way to refuse that signature (lifetimes
//!   are erased before the worker decodes the argument, and no bound says "not `'static`"), and that is
//!   what the lease is for: it turns the kept view into a leak of the call's copy until the `Parallel`
//!   is dropped, never into a read of reused memory. Do not do it anyway: the memory stays taken.
//!
//!   ```compile_fail
//!   use std::sync::Mutex;
//!   use mproc::parallel::Arr;
//!
//!   static KEPT: Mutex<Vec<Arr<'static, f64>>> = Mutex::new(Vec::new());
//!
//!   fn task(a: Arr<'_, f64>) -> usize {
//!       KEPT.lock().unwrap().push(a); // error: borrowed data escapes the function
//!       0
//!   }
//!   ```
//! - **A view is only ever of another process's memory.** What a process decodes is checked like every
//!   handle: inside a mapped arena, aligned, a whole number of `T` (and any bytes are a valid
//!   `T: Pod`), and an arena that the decoding process owns is refused. So a forged result in the
//!   parent (an `R` containing an `Arr` that names one of the parent's own arrays) is a decode error,
//!   never a `&[T]` aliasing a [`SharedArray`](crate::SharedArray) the parent mutates.
//! - **What is trusted.** Processes of the same user that can write a region are trusted not to break
//!   the aliasing rules of the data they deliberately share: a peer that writes into a copy while it is
//!   lent, or lies about its lease count, can make the views of that data see changing values (a data
//!   race in those readers). Nothing a peer writes can make this process read or write outside a region,
//!   or jump to code. A process forked (not spawned) from a worker while it holds a view shares that
//!   view without a lease of its own: do not keep views in forked children.
//!
//! # Progress
//! [`progress(true)`](Parallel::progress) prints joblib-style lines to stderr;
//! [`on_progress`](Parallel::on_progress) calls a function with `(done, total)` instead: once with
//! `(0, total)` when the tasks are sent, then as results arrive.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pool::{ImapUnordered, Pool, PoolArg};

mod arr;
mod lease;

pub use arr::Arr;
use arr::{with_context, CallCopies};
pub(crate) use lease::ForkQuarantine;

/// The default of [`Parallel::max_nbytes`]: 1 MiB, as in joblib.
///
/// # Examples
/// ```
/// assert_eq!(mproc::parallel::DEFAULT_MAX_NBYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_NBYTES: usize = 1 << 20;

/// A function and its argument, waiting to be run by [`Parallel::run`] (joblib's `delayed(f)(x)`).
///
/// Made by [`delayed`]; tasks of different functions mix in one call as long as they share argument
/// and result types.
///
/// # Examples
/// ```
/// use mproc::parallel::{delayed, Delayed, Parallel};
///
/// fn square(x: i64) -> i64 { x * x }
/// fn negate(x: i64) -> i64 { -x }
///
/// let tasks: Vec<Delayed<i64, i64>> = vec![delayed(square, 3), delayed(negate, 3)];
/// assert_eq!(Parallel::new(2).run(tasks)?, vec![9, -3]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Delayed<A, R> {
    f: fn(A) -> R,
    args: A,
}

impl<A, R> fmt::Debug for Delayed<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delayed")
            .field("f", &(self.f as usize as *const ()))
            .field("args", &std::any::type_name::<A>())
            .finish()
    }
}

/// `f(args)`, to be run later by [`Parallel::run`].
///
/// # Examples
/// ```
/// use mproc::parallel::{delayed, Parallel};
///
/// fn add((a, b): (u32, u32)) -> u32 {
///     a + b
/// }
///
/// let tasks = (0..4).map(|i| delayed(add, (i, 10)));
/// assert_eq!(Parallel::new(2).run(tasks)?, vec![10, 11, 12, 13]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn delayed<A, R>(f: fn(A) -> R, args: A) -> Delayed<A, R> {
    Delayed { f, args }
}

enum Progress {
    Off,
    Stderr,
    Callback(Arc<dyn Fn(usize, usize) + Send + Sync>),
}

/// Runs tasks on a pool of worker processes, results in order, like joblib's `Parallel`. See the
/// [module docs](self).
///
/// The pool is started by the first call and reused by the next ones; it stops when the `Parallel` is
/// dropped.
///
/// # Examples
/// ```
/// fn mean(v: Vec<f64>) -> f64 {
///     v.iter().sum::<f64>() / v.len() as f64
/// }
///
/// let par = mproc::Parallel::new(2);
/// let rows = vec![vec![1.0, 3.0], vec![2.0, 4.0, 6.0]];
/// assert_eq!(par.map(mean, rows)?, vec![2.0, 4.0]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Parallel {
    /// Names this `Parallel` in the lease quarantine (see `lease`).
    id: u64,
    n_jobs: Option<usize>,
    max_nbytes: usize,
    batch_size: Option<usize>,
    progress: Progress,
    pool: OnceLock<Pool>,
}

impl fmt::Debug for Parallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parallel")
            .field("n_jobs", &self.n_jobs())
            .field("max_nbytes", &self.max_nbytes)
            .field("batch_size", &self.batch_size)
            .field("started", &self.pool.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Parallel {
    /// One worker per available CPU (joblib's `n_jobs=-1`).
    fn default() -> Self {
        Parallel::with_jobs(None)
    }
}

impl Drop for Parallel {
    /// Stops the pool (its workers are killed and reaped), then frees the shared copies that a task
    /// kept a view of: no process that held such a view is left.
    fn drop(&mut self) {
        drop(self.pool.take());
        lease::release_all(self.id);
    }
}

impl Parallel {
    fn with_jobs(n_jobs: Option<usize>) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Parallel {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            n_jobs,
            max_nbytes: DEFAULT_MAX_NBYTES,
            batch_size: None,
            progress: Progress::Off,
            pool: OnceLock::new(),
        }
    }

    /// Runs tasks on `n_jobs` worker processes. [`Parallel::default`] uses one per CPU.
    ///
    /// # Examples
    /// ```
    /// let par = mproc::Parallel::new(2);
    /// assert_eq!(par.n_jobs(), 2);
    /// ```
    ///
    /// # Panics
    /// If `n_jobs` is 0.
    #[track_caller]
    pub fn new(n_jobs: usize) -> Self {
        assert!(n_jobs > 0, "Parallel needs at least one job");
        Parallel::with_jobs(Some(n_jobs))
    }

    /// Runs tasks on an existing pool (which this `Parallel` then owns).
    ///
    /// # Examples
    /// ```
    /// let pool = mproc::Pool::builder().workers(1).build()?;
    /// let par = mproc::Parallel::with_pool(pool);
    /// assert_eq!(par.n_jobs(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn with_pool(pool: Pool) -> Self {
        let n = pool.workers();
        let par = Parallel::new(n);
        let _ = par.pool.set(pool);
        par
    }

    /// Arrays ([`Arr`]) larger than `n` bytes are passed to workers by handle, the others inline
    /// (default [`DEFAULT_MAX_NBYTES`], 1 MiB; `usize::MAX` never shares).
    ///
    /// # Examples
    /// ```
    /// let par = mproc::Parallel::new(2).max_nbytes(64 << 10);
    /// ```
    pub fn max_nbytes(mut self, n: usize) -> Self {
        self.max_nbytes = n;
        self
    }

    /// Tasks per message to a worker (default: about four batches per worker, as in
    /// [`Pool::map`]). Small batches balance uneven tasks and report progress more often.
    ///
    /// # Examples
    /// ```
    /// let par = mproc::Parallel::new(2).batch_size(1);
    /// ```
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn batch_size(mut self, n: usize) -> Self {
        assert!(n > 0, "batch_size must be at least 1");
        self.batch_size = Some(n);
        self
    }

    /// Prints progress to stderr (joblib's `verbose`): `[Parallel(n_jobs=2)]: Done 10 of 40 tasks |
    /// elapsed: 0.2s`, at most about ten lines a second, and always the last.
    ///
    /// # Examples
    /// ```
    /// let par = mproc::Parallel::new(2).progress(true);
    /// ```
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = if yes { Progress::Stderr } else { Progress::Off };
        self
    }

    /// Calls `f(done, total)` once with `done == 0` when a call has sent its tasks, then each time a
    /// result arrives (in the calling thread, between results).
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// fn double(x: u32) -> u32 {
    ///     x * 2
    /// }
    ///
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let s = seen.clone();
    /// let par = mproc::Parallel::new(2).on_progress(move |done, _total| {
    ///     s.store(done, Ordering::Relaxed);
    /// });
    /// par.map(double, 0..10)?;
    /// assert_eq!(seen.load(Ordering::Relaxed), 10);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn on_progress(mut self, f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        self.progress = Progress::Callback(Arc::new(f));
        self
    }

    /// The number of worker processes.
    ///
    /// # Examples
    /// ```
    /// let n = mproc::Parallel::default().n_jobs();
    /// assert_eq!(n, std::thread::available_parallelism().map_or(1, |n| n.get()));
    /// ```
    pub fn n_jobs(&self) -> usize {
        match (self.pool.get(), self.n_jobs) {
            (Some(p), _) => p.workers(),
            (None, Some(n)) => n,
            (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn pool(&self) -> Result<&Pool> {
        if let Some(p) = self.pool.get() {
            return Ok(p);
        }
        let mut b = Pool::builder();
        if let Some(n) = self.n_jobs {
            b = b.workers(n);
        }
        // If another thread started one meanwhile, ours is dropped (terminated) and theirs is used.
        let _ = self.pool.set(b.build()?);
        Ok(self.pool.get().expect("set just above"))
    }

    /// Runs every task, results in task order (joblib's `Parallel(n)(tasks)`).
    ///
    /// # Errors
    /// The error of the lowest-index task that failed ([`Error::TaskPanicked`], [`Error::WorkerDied`],
    /// …), after every task has finished; [`Error::Encode`], [`Error::Os`] (a pool or shared array
    /// could not be made), [`Error::PoolClosed`]. [`run_each`](Parallel::run_each) keeps every task's
    /// own result.
    ///
    /// # Panics
    /// If a task's function is not a function of the main executable.
    ///
    /// # Examples
    /// ```
    /// use mproc::parallel::{delayed, Parallel};
    ///
    /// fn count_words(text: String) -> usize {
    ///     text.split_whitespace().count()
    /// }
    ///
    /// let docs = ["a b c", "d e", ""];
    /// let tasks = docs.iter().map(|d| delayed(count_words, d.to_string()));
    /// assert_eq!(Parallel::new(2).run(tasks)?, vec![3, 2, 0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn run<A, R>(&self, tasks: impl IntoIterator<Item = Delayed<A, R>>) -> Result<Vec<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.run_each(tasks)?.into_iter().collect()
    }

    /// `f` on every item, results in order: `run` of `delayed(f, item)` for each item.
    ///
    /// # Errors
    /// As [`run`](Parallel::run).
    ///
    /// # Panics
    /// If `f` is not a function of the main executable.
    ///
    /// # Examples
    /// ```
    /// fn cube(x: u64) -> u64 {
    ///     x * x * x
    /// }
    ///
    /// assert_eq!(mproc::Parallel::new(2).map(cube, 1..=4)?, vec![1, 8, 27, 64]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// As for a [`Pool`] task, a borrowed parameter does not compile, and rustc says what to take:
    /// ```compile_fail,E0277
    /// fn cube(x: &u64) -> u64 {
    ///     x * x * x
    /// }
    ///
    /// let cubes = mproc::Parallel::new(2).map(cube, [&1, &2]);
    /// ```
    #[track_caller]
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        self.run(items.into_iter().map(|a| delayed(f, a)))
    }

    /// Runs every task, each task's own result in task order: a failing task does not hide the others'
    /// work.
    ///
    /// # Errors
    /// Only for the call as a whole: [`Error::Encode`], [`Error::Os`], [`Error::PoolClosed`] (after
    /// the tasks already sent have finished).
    ///
    /// # Panics
    /// If a task's function is not a function of the main executable.
    ///
    /// # Examples
    /// ```
    /// use mproc::parallel::{delayed, Parallel};
    ///
    /// fn checked_div((a, b): (u32, u32)) -> u32 {
    ///     assert!(b != 0, "division by zero");
    ///     a / b
    /// }
    ///
    /// let tasks = [(8, 2), (1, 0), (9, 3)].map(|t| delayed(checked_div, t));
    /// let results = Parallel::new(2).run_each(tasks)?;
    /// assert_eq!(results[0].as_ref().ok(), Some(&4));
    /// assert!(matches!(results[1], Err(mproc::Error::TaskPanicked { .. })));
    /// assert_eq!(results[2].as_ref().ok(), Some(&3));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn run_each<A, R>(
        &self,
        tasks: impl IntoIterator<Item = Delayed<A, R>>,
    ) -> Result<Vec<Result<R>>>
    where
        A: PoolArg,
        R: Serialize + DeserializeOwned,
    {
        // Group the tasks by function, remembering each one's place.
        let mut groups: Vec<Group<A, R>> = Vec::new();
        let mut total = 0;
        for (i, d) in tasks.into_iter().enumerate() {
            total += 1;
            match groups.iter_mut().find(|g| g.0 as usize == d.f as usize) {
                Some(g) => {
                    g.1.push(i);
                    g.2.push(d.args);
                }
                None => groups.push((d.f, vec![i], vec![d.args])),
            }
        }
        if total == 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool()?;
        let mut flight = InFlight {
            batches: Vec::new(),
            shared: CallCopies::for_owner(self.id),
        };
        let mut failed = None;
        for (f, places, args) in groups {
            // `imap_unordered` serializes the arguments in this thread before it returns: that is when
            // `Arr` sees the context and moves big arrays into `flight.shared`.
            match with_context(self.max_nbytes, &mut flight.shared, || {
                pool.imap_unordered(f, args, self.batch_size)
            }) {
                Ok(it) => flight.batches.push((places, it)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut out: Vec<Option<Result<R>>> = (0..total).map(|_| None).collect();
        let mut report = Reporter::new(&self.progress, self.n_jobs(), total);
        report.update(0);
        let mut done = 0;
        while let Some((places, it)) = flight.batches.first_mut() {
            for (k, r) in it.by_ref() {
                if let Some(slot) = places.get(k).and_then(|&i| out.get_mut(i)) {
                    *slot = Some(r);
                }
                done += 1;
                report.update(done);
            }
            flight.batches.remove(0);
        }
        drop(flight);
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| Err(Error::Corrupted(format!("the pool lost task {i}"))))
            })
            .collect())
    }
}

/// The tasks of one call that use one function: the function, each task's place, its arguments.
type Group<A, R> = (fn(A) -> R, Vec<usize>, Vec<A>);

/// The tasks of one call still running and the shared copies they read. Dropping it waits for the
/// tasks before freeing the copies, whatever the reason for the drop (an error, a panic).
struct InFlight<R: DeserializeOwned> {
    batches: Vec<(Vec<usize>, ImapUnordered<R>)>,
    shared: CallCopies,
}

impl<R: DeserializeOwned> Drop for InFlight<R> {
    fn drop(&mut self) {
        // Draining an `ImapUnordered` returns once each of its tasks has finished, failed, or been
        // cancelled by the pool closing: it never hangs on a dead worker. Only then may `shared` go.
        for (_, it) in &mut self.batches {
            it.for_each(drop);
        }
    }
}

struct Reporter<'a> {
    progress: &'a Progress,
    n_jobs: usize,
    total: usize,
    start: Instant,
    last: Option<Instant>,
}

impl<'a> Reporter<'a> {
    fn new(progress: &'a Progress, n_jobs: usize, total: usize) -> Self {
        Reporter {
            progress,
            n_jobs,
            total,
            start: Instant::now(),
            last: None,
        }
    }

    fn update(&mut self, done: usize) {
        match self.progress {
            Progress::Off => {}
            Progress::Callback(f) => f(done, self.total),
            Progress::Stderr => {
                let now = Instant::now();
                let due = self
                    .last
                    .is_none_or(|t| now - t >= Duration::from_millis(100));
                if done == self.total || (done > 0 && due) {
                    self.last = Some(now);
                    eprintln!(
                        "[Parallel(n_jobs={})]: Done {done:>width$} of {} tasks | elapsed: {:.1}s",
                        self.n_jobs,
                        self.total,
                        (now - self.start).as_secs_f64(),
                        width = self.total.to_string().len(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
