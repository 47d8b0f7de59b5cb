//! The platform layer: the only module that talks to the operating system.
//!
//! Everything above `sys` is platform-free: it never names `libc`, never calls `mmap`, `futex` or `fork`
//! itself. Linux is the only target today; a port replaces the files of this folder and nothing else.
//!
//! - [`shm`]: memfd and `/dev/shm` objects, sealing, and shared mappings of them.
//! - [`channel`]: the descriptors a spawned child inherits, and the checks it makes before trusting them.
//! - [`futex`]: wait and wake on a 32-bit atomic in shared memory, with timeouts.
//! - [`process`]: fork, pidfds, waiting and signalling child processes, the running executable's identity.
//! - [`unix_socket`]: `AF_UNIX` packets carrying descriptors (`SCM_RIGHTS`) and `poll` over several
//!   descriptors, for the fork server.
//! - [`pidfd`]: the exit status of a process another process reaped (`PIDFD_GET_INFO`).
//! - [`cpu`]: cache prefetch hints for the ring's claims.
//! - `filemap` (features `npy`, `image`): user files, opened with care and mapped `MAP_SHARED`.
//! - [`proc`]: pids, thread ids, start times and liveness checks used to detect dead lock holders.

pub(crate) mod channel;
pub(crate) mod cpu;
// The `image` feature opens user files through it too, but maps none.
#[cfg(any(feature = "npy", feature = "image"))]
#[cfg_attr(not(feature = "npy"), allow(dead_code))]
pub(crate) mod filemap;
pub(crate) mod futex;
pub(crate) mod pidfd;
pub(crate) mod proc;
pub(crate) mod process;
pub(crate) mod shm;
pub(crate) mod unix_socket;
