//! Python's `multiprocessing`, done in shared memory for Rust.
//!
//! `mproc` gives Rust programs what Python's `multiprocessing` gives Python — processes, a process pool,
//! queues, locks and friends, a manager of shared containers — built on shared memory, with three
//! promises Python does not make:
//!
//! - **Arrays travel by offset.** A [`Pool`] hands a [`SharedArray`] to its workers as (region, offset,
//!   range); each worker maps the array once and computes on it in place. The cost of a task no longer
//!   grows with its data, and a data-parallel map runs as fast as threads — with crash isolation.
//! - **Nobody hangs on a dead process.** Everything that can be held records who holds it. When a holder
//!   is killed (SIGKILL, abort, segfault, out of memory) the survivors get a typed error — [`OwnerDied`]
//!   for a lock, reported once like a poisoned [`std::sync::Mutex`]; [`Error::WorkerDied`] for exactly
//!   the pool tasks the dead worker had — or get the resource back, within a bounded time.
//! - **Shared memory is never trusted.** Every region starts with a header validated on every open
//!   (magic, format version, type hash, size), and every offset, length or index read from shared memory
//!   is checked. A process writing garbage can make an operation fail with an error; it cannot make
//!   another process read or write outside a region.
//!
//! # Getting started
//! ```toml
//! [dependencies]
//! mproc = "0.1"
//! serde = { version = "1", features = ["derive"] }    # your own argument and result types
//! bytemuck = { version = "1", features = ["derive"] } # your own plain-data types in shared memory
//! ```
//! Arguments and results travel serialized (serde, postcard): derive `Serialize` and `Deserialize` on
//! your types. Data that lives *in* shared memory ([`SharedArray<T>`](SharedArray), [`Value<T>`](Value),
//! raw queues) must be `bytemuck::Pod`: no pointers, any bytes valid. A spawned function may take its
//! argument borrowed (`fn greet(name: &str)`); a pool task takes it by value (`fn square(x: u64)`), and
//! the forms that cannot work are compile errors that name the type and what to take instead.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Job {
//!     id: u32,
//!     path: String,
//! }
//!
//! fn describe(job: &Job) -> String {
//!     format!("job {} reads {}", job.id, job.path)
//! }
//!
//! let mut p = mproc::Process::new(describe, &Job { id: 7, path: "in.png".into() })?;
//! p.start()?;
//! assert_eq!(p.join()?, "job 7 reads in.png");
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! The mistakes Python's multiprocessing tutorials warn about, and the answer here: state is not shared
//! unless it lives in shared memory (use [`Value`], [`SharedArray`], a [`Manager`]); more workers than
//! CPUs only adds switching ([`Pool::new`] starts one per CPU); a read-modify-write of shared state needs
//! a lock ([`Value::lock`], `Dict::entry`); large data should not be copied to each task (a
//! [`SharedArray`] travels by offset); and a failed task or child is an error value to handle
//! ([`Error::TaskPanicked`], [`Error::WorkerDied`], [`Error::ProcessKilled`]), never a hang.
//!
//! # Which item for which job
//! | job | item |
//! |---|---|
//! | run a function in another process | [`Process`] (see [`process`] for the start methods) |
//! | map a function over many inputs on all CPUs | [`Pool`]: `map`, `imap`, `imap_unordered`, `starmap`, `apply`, `*_async` |
//! | joblib-style `Parallel(n)(delayed(f)(x) ...)`, big arrays passed by handle | [`Parallel`], [`delayed`], [`parallel::Arr`] |
//! | work on a large array in parallel, zero-copy | [`SharedArray`] + [`Pool::map_chunks`] / [`Pool::transform`] |
//! | send messages between processes | [`Queue`], [`SimpleQueue`], [`JoinableQueue`], [`Pipe`] |
//! | share a dict, list, value or namespace by name | [`Manager`]: [`Dict`], [`List`], [`ManagedValue`], [`Namespace`] |
//! | mutual exclusion | [`Lock`], or [`RLock`] if the holder re-enters |
//! | a number or fixed array under a lock | [`Value<T>`](Value), [`Array<T>`](Array) |
//! | limit concurrent use of a resource | [`Semaphore`], [`BoundedSemaphore`] |
//! | wake processes when something happens / wait for a state | [`Event`] / [`Condition`] |
//! | let `n` processes meet | [`Barrier`] |
//! | raw bytes in shared memory | [`Region`] |
//! | remove what crashed processes left in `/dev/shm` | [`cleanup_stale`] |
//! | `ndarray` views, images, `.npy` files mapped from disk, `.await` on results (cargo features) | [`integrations`] |
//!
//! # Start methods
//! [`Process`] and the pool's workers **spawn** by default: they re-execute the running program, and a
//! function placed in the executable's `.init_array` runs the task before `main` — so spawning works
//! unchanged in binaries, test binaries, doctests, examples and benches, from a multi-threaded parent. A
//! task is a plain `fn(A) -> R` (capturing closures do not compile) with serde arguments; it travels as
//! an offset checked against the executable file. **Fork** is opt-in ([`ProcessBuilder::fork`]): faster to
//! start and it runs any closure, with the usual caveats (only the forking thread survives; a big heap is
//! costly to fork). The **fork server** ([`StartMethod::ForkServer`], Python 3.14's Linux default) runs
//! what spawn runs at fork speed from any parent: a single-threaded server, spawned once, forks each
//! child. See [`process`].
//!
//! # Getting an object to another process
//! Every shared object lives in a region and reaches another process in one of three ways:
//! 1. **fork**: the mapping is shared, so a child forked after creation uses the same object;
//! 2. **as an argument**: objects implement `serde::Serialize`/`Deserialize` as a [`RegionHandle`]; the
//!    receiving process re-attaches and re-validates the region;
//! 3. **by name**: `X::create(name)` in one process, `X::open(name)` in any other of the same user. Named
//!    objects live in `/dev/shm/mproc.<name>`, mode 0600, created with `O_EXCL`.
//!
//! # Example
//! ```
//! use mproc::{Pool, SharedArray};
//!
//! fn sum(chunk: &[f64]) -> f64 {
//!     chunk.iter().sum()
//! }
//!
//! let pool = Pool::builder().workers(2).build()?;
//! let data = SharedArray::from_slice(&[1.5f64; 100_000])?;
//! let partial_sums = pool.map_chunks(&data, 10_000, sum)?; // only offsets travel
//! assert_eq!(partial_sums.iter().sum::<f64>(), 150_000.0);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Failure semantics
//! | item | when a participant dies |
//! |---|---|
//! | [`Lock`], [`RLock`], [`Value`], [`Array`], [`Condition`]'s lock | the next acquirer gets [`OwnerDied`] (carrying the guard) once; waiters notice within ~50 ms |
//! | [`Semaphore`], [`BoundedSemaphore`] | permits held through guards come back to waiters within ~50 ms |
//! | [`Barrier`] | the barrier breaks; waiters get [`Error::BrokenBarrier`] |
//! | [`Event`] | holds nothing; nothing to recover |
//! | [`Queue`] and friends | a half-written message is never seen; a message whose consumer dies inside `get` is lost, none is delivered twice; a producer killed inside `put_many` loses the batch (up to 64 messages) it had not published |
//! | [`Pool`] | the dead worker's tasks fail with [`Error::WorkerDied`] (or run once more), the worker is replaced |
//! | [`Manager`] containers | the dead process's half-done update is rolled back by the next caller |
//! | [`Process`] | `join` reports the panic (message and location), the signal, or the exit code |
//! | named regions | unlinked by their creator; [`cleanup_stale`] removes those of dead creators |
//!
//! # Compared with Python's `multiprocessing`
//! Python pickles every argument through a pipe, so a 64 MiB array costs ~180 ms per task on this
//! project's machine; a `SharedArray` costs 40–110 µs whatever its size. Python's `Pool` hangs forever when a
//! worker is killed; here the call returns [`Error::WorkerDied`]. Python's `Manager` proxies every call
//! to a server process over a socket; here the containers are in shared memory and each operation is a
//! short transaction run by the caller. Python's `Lock` stays locked forever when its holder dies; here
//! the next acquirer is told and carries on.

#[cfg(feature = "mpi")]
pub mod cluster;
pub mod codec;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz_hooks;
pub(crate) mod heap;
pub mod integrations;
pub mod manager;
pub mod parallel;
pub mod pool;
pub mod process;
pub mod queue;
pub mod region;
pub mod sync;
pub(crate) mod sys;

pub use error::{Error, FileProblem, LockResult, OwnerDied, Result, TryLockError};
pub use heap::{Grid, GridMut, SharedArray};
pub use manager::{Dict, DictEntry, List, ManagedValue, Manager, ManagerBuilder, Namespace};
pub use parallel::{delayed, Parallel};
pub use pool::{AsyncResult, Pool, PoolBuilder};
pub use process::{init, Builder as ProcessBuilder, Process, StartMethod};
pub use queue::{Connection, JoinableQueue, Pipe, Queue, SimpleQueue};
pub use region::{cleanup_stale, Region, RegionHandle};
pub use sync::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockGuard, RLock, RLockGuard, Semaphore, SemaphoreGuard, Value, ValueGuard,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
