//! Python's `multiprocessing`, done in shared memory for Rust.
#![warn(clippy::undocumented_unsafe_blocks)]
// On the `process` branch, parts of the skeleton (`sys::proc` identities, `ShmSafe`, `OwnerDied::new`) are
// used only by the sync layer, which is merged separately. Remove this allow when merging with it.
#![allow(dead_code)]

mod error;
pub mod process;
pub mod region;
pub(crate) mod sys;

pub use error::{Error, LockResult, OwnerDied, Result, TryLockError};
pub use process::{init, Builder as ProcessBuilder, Process, StartMethod};
pub use region::{cleanup_stale, Region, RegionHandle};
