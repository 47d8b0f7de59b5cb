//! Python's `multiprocessing`, done in shared memory for Rust.
//!
//! `mproc` gives Rust programs the primitives of Python's `multiprocessing` — locks, semaphores,
//! events, conditions, barriers, shared values and arrays — as objects that live in shared memory and
//! work across processes, with two promises Python does not make:
//!
//! - **Nobody hangs on a dead process.** Everything that can be held records who holds it. When a holder
//!   is killed (SIGKILL, abort, segfault), the survivors get a typed error — [`OwnerDied`] for a lock,
//!   reported once like a poisoned [`std::sync::Mutex`] — or get the resource back, within a bounded time.
//! - **Shared memory is never trusted.** Every region starts with a header that is validated on every
//!   open (magic, format version, type hash, size) and every offset or length read from shared memory is
//!   checked. A process writing garbage can make an operation fail; it cannot make another read or write
//!   outside a region.
//!
//! # How to use
//! - Mutual exclusion between processes: [`Lock`] (or [`RLock`] if the holder re-enters).
//! - A number shared by processes: [`Value<T>`](Value); a fixed-size array: [`Array<T>`](Array).
//! - Limit how many processes use a resource: [`Semaphore`], [`BoundedSemaphore`].
//! - Wake processes when something happens: [`Event`]; wait for a state under a lock: [`Condition`].
//! - Let `n` processes meet: [`Barrier`].
//! - Raw bytes in shared memory, by name or anonymous: [`Region`].
//! - Run a function in another process: [`Process`] (spawn, the default, or fork; see [`process`]).
//! - Send messages between processes: [`Queue`], [`SimpleQueue`], [`JoinableQueue`], [`Pipe`].
//! - Put a large array in shared memory: [`SharedArray`].
//! - Clean up after crashed processes: [`cleanup_stale`].
//!
//! # Getting an object to another process
//! Every object lives in its own shared region and reaches another process in one of three ways:
//! 1. **fork**: the mapping is shared, so a child forked after creation uses the same object;
//! 2. **as an argument**: objects implement `serde::Serialize`/`Deserialize` as a [`RegionHandle`]; the
//!    receiving process re-attaches and re-validates the region;
//! 3. **by name**: `X::create(name)` in one process, `X::open(name)` in any other of the same user. Named
//!    objects live in `/dev/shm/mproc.<name>`, mode 0600, created with `O_EXCL`.
//!
//! # Example
//! ```
//! use mproc::{Lock, Value};
//!
//! let counter = Value::new(0u64)?;
//! let lock = Lock::new()?;
//! {
//!     let _held = lock.lock().unwrap();
//!     *counter.lock().unwrap() += 1;
//! }
//! assert_eq!(counter.get(), 1);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Failure semantics
//! | primitive | when a participant dies |
//! |---|---|
//! | [`Lock`], [`RLock`], [`Value`], [`Array`], [`Condition`]'s lock | the next acquirer gets [`OwnerDied`] (carrying the guard) once; waiters notice within ~50 ms |
//! | [`Semaphore`], [`BoundedSemaphore`] | permits held through guards come back to waiters within ~50 ms |
//! | [`Barrier`] | the barrier breaks; waiters get [`Error::BrokenBarrier`] |
//! | [`Event`] | holds nothing; nothing to recover |
//! | named regions | unlinked by their creator; [`cleanup_stale`] removes those of dead creators |
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod codec;
mod error;
pub(crate) mod heap;
pub mod manager;
pub mod pool;
pub mod process;
pub mod queue;
pub mod region;
pub mod sync;
pub(crate) mod sys;

pub use error::{Error, LockResult, OwnerDied, Result, TryLockError};
pub use heap::SharedArray;
pub use manager::{Dict, List, ManagedValue, Manager, Namespace};
pub use pool::{AsyncResult, Pool, PoolBuilder};
pub use process::{init, Builder as ProcessBuilder, Process, StartMethod};
pub use queue::{Connection, JoinableQueue, Pipe, Queue, SimpleQueue};
pub use region::{cleanup_stale, Region, RegionHandle};
pub use sync::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockGuard, RLock, RLockGuard, Semaphore, SemaphoreGuard, Value, ValueGuard,
};
