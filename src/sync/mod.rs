//! Synchronization primitives that live in shared memory.
//!
//! Each primitive is a `#[repr(C)]` struct of atomics inside a region (the *raw* state, never trusted:
//! any bytes are a valid state) and a typed handle outside it that hands out RAII guards.
//!
//! | primitive | how a dead participant is detected and what the survivors see |
//! |---|---|
//! | [`Lock`], [`RLock`], [`Value`], [`Array`] | holder tid + start time in the lock; a waiter's timed sleep checks it; the next acquirer gets [`OwnerDied`](crate::OwnerDied) once |
//! | [`Semaphore`], [`BoundedSemaphore`] | permits taken through a guard are recorded per holder thread; a caller that finds none free (waiting or trying) reclaims the permits of dead holders |
//! | [`Condition`] | its lock is a robust [`Lock`]; a waiter killed while waiting holds nothing |
//! | [`Barrier`] | parties that arrived are recorded; if one dies before the barrier trips, the barrier breaks and waiters get [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) |
//! | [`Event`] | holds nothing; nothing to recover |
//!
//! Every recorded holder carries its pid namespace beside its tid and start time: a holder recorded in
//! another pid namespace (containers sharing `/dev/shm`) is never judged dead from ours, so recovery from
//! dead holders needs the cooperating processes to share one pid namespace; across namespaces, waiters
//! wait, and timed calls return at their deadline.
//!
//! Garbage written into an object by another process never makes a `try_*` call wait, a `*_timeout`
//! call overstep its deadline (internal locks included), or a call touch memory outside the region; but
//! garbage that changes a counter (a semaphore's value, an event's flag, a barrier's count) changes the
//! outcome of the calls that read it, as it would for any shared counter.
//!
//! # Examples
//! A lock survives the death of its holder: the next caller is told, and carries on.
//! ```
//! use mproc::{Lock, Process};
//!
//! fn die_holding(lock: Lock) {
//!     let _guard = lock.lock().expect("lock");
//!     std::process::abort(); // killed with the lock held
//! }
//!
//! let lock = Lock::new()?;
//! let mut p = Process::new(die_holding, lock.clone())?;
//! p.start()?;
//! assert!(p.join().is_err());
//! match lock.lock() {
//!     Err(died) => drop(died.into_inner()), // reported once, with the guard
//!     Ok(_) => panic!("the death must be reported"),
//! }
//! assert!(lock.lock().is_ok()); // and the lock is usable again
//! # Ok::<(), mproc::Error>(())
//! ```

mod barrier;
mod condition;
mod event;
mod lock;
pub(crate) mod raw_lock;
mod rlock;
mod semaphore;
mod value;
pub(crate) mod wait;

pub use barrier::{Barrier, MAX_PARTIES};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard, HOLDER_SLOTS};
pub use value::{Array, ArrayGuard, Value, ValueGuard};

#[cfg(test)]
mod tests;
