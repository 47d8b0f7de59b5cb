//! Python's `multiprocessing`, done in shared memory for Rust.
#![warn(clippy::undocumented_unsafe_blocks)]

mod error;
pub mod region;
pub mod sync;
pub(crate) mod sys;

pub use error::{Error, LockResult, OwnerDied, Result, TryLockError};
pub use region::{cleanup_stale, Region, RegionHandle};
pub use sync::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockGuard, RLock, RLockGuard, Semaphore, SemaphoreGuard, Value, ValueGuard,
};
