//! Starting a child with `fork(2)` (Linux, opt-in).

use std::os::fd::AsRawFd;

use super::bootstrap::{self, Failure};
use super::Child;
use crate::error::Result;
use crate::sys::process::{self as psys, Fork};
use crate::sys::shm;

/// What a forked child runs: the user's closure, already wrapped to encode its result.
pub(super) type Body = Box<dyn FnOnce() -> Result<Vec<u8>, Failure> + Send>;

/// Forks; the child runs `body`, publishes its outcome into the memfd it shares with us and `_exit`s.
pub(super) fn start(body: Body, die_with_parent: bool) -> Result<Child> {
    let result = shm::create_memfd("mproc-process")?;
    let parent = std::process::id();
    // SAFETY: the child branch below runs only `watch_parent` (a pidfd, a poll and a thread start, none
    // of which takes a lock the parent's other threads can hold; glibc resets its own thread-stack and
    // malloc locks at fork), `run_child` (which publishes with raw writes) and the user's closure, whose
    // obligations are the documented fork caveats; then it `_exit`s and never returns into the caller.
    match unsafe { psys::fork()? } {
        Fork::Child => {
            let fd = result.as_raw_fd();
            let code = bootstrap::run_child(fd, move || {
                if die_with_parent {
                    bootstrap::watch_parent(parent)?;
                }
                body()
            });
            psys::exit_immediately(code)
        }
        Fork::Parent(pid) => match psys::pidfd_open(pid) {
            Ok(pidfd) => Ok(Child { pid, pidfd, result }),
            Err(e) => {
                // Cannot happen for an unreaped child short of running out of descriptors; do not leave
                // it behind in that case either.
                psys::kill_and_reap(pid);
                Err(e)
            }
        },
    }
}
