//! Starting a child with `fork(2)` (Linux, opt-in).

use std::os::fd::AsRawFd;

use super::bootstrap::{self, Failure};
use super::forkserver::ForkLocks;
use super::Child;
use crate::error::Result;
use crate::queue::ForkHolds;
use crate::region::janitor::ForkAnchors;
use crate::sys::process::{self as psys, Fork};
use crate::sys::shm;

/// What a forked child runs: the user's closure, already wrapped to encode its result.
pub(super) type Body = Box<dyn FnOnce() -> Result<Vec<u8>, Failure> + Send>;

/// Forks; the child runs `body`, publishes its outcome into the memfd it shares with us and `_exit`s.
pub(super) fn start(body: Body, die_with_parent: bool) -> Result<Child> {
    // As for spawn (found by review: a forked child of a process that ignores SIGCHLD was reaped by
    // the kernel, `is_alive` said true for good and `join` failed with ECHILD, its value lost).
    crate::sys::channel::refuse_if_sigchld_ignored("fork")?;
    let result = shm::create_memfd("mproc-result")?;
    let parent = std::process::id();
    // Here, before the fork, never in the child (review H4): `set_hook` takes a process-wide lock.
    bootstrap::install_child_panic_hook();
    // The child's own locks on the queue anchors we hold, so that our letting go of a queue never
    // leaves the child's copy of it unprotected (held across the fork: see `ForkAnchors`).
    let anchors = ForkAnchors::before_fork()?;
    // Attachments of its own to every pipe end we hold, so that the child counts as a holder and our
    // letting go does not close a pipe it still uses (see `queue::pipe`, "Who holds an end").
    let holds = ForkHolds::before_fork();
    // The fork server's locks, so that the child finds them free (see `ForkLocks`).
    let server_locks = ForkLocks::before_fork();
    // SAFETY: the child branch below runs only `server_locks.after_fork` (the unlock of two mutexes
    // this thread holds: an atomic swap each, and a futex wake of nobody), `anchors.in_child`
    // (`dup3`, `getpid`, `close`, a `free`, and the unlock of a mutex this thread holds: an atomic
    // swap, and a futex wake of nobody),
    // `holds.in_child` (stores into this process's memory, `getpid`, and the unlock of another mutex
    // this thread holds), `ForkHolds::release_all_before_exit` after the closure (that mutex, free
    // again; the pipes' robust locks in shared memory, a `/proc` read, allocations),
    // `ForkAnchors::release_all_before_exit` after the closure (that mutex, free again; `flock`, and
    // the sweep's directory listing and `unlink`s, with allocations), `watch_parent`
    // (`sigaction`, `prctl(PR_SET_PDEATHSIG)` and `getppid`, none of which takes a lock), `run_child`
    // (an atomic store, the user's closure, and a publish made of one allocation — glibc's malloc is
    // fork-safe — and raw `ftruncate`/`pwrite` calls) and the panic hook installed above; the user's
    // closure carries the documented fork caveats. Then it `_exit`s and never returns into the caller.
    let forked = unsafe { psys::fork() };
    let forked = match forked {
        Ok(Fork::Child) => {
            server_locks.after_fork();
            anchors.in_child();
            holds.in_child();
            Fork::Child
        }
        other => {
            server_locks.after_fork();
            anchors.in_parent();
            holds.in_parent(match &other {
                Ok(Fork::Parent(pid)) => Some(*pid),
                _ => None,
            });
            other?
        }
    };
    match forked {
        Fork::Child => {
            let fd = result.as_raw_fd();
            let code = bootstrap::run_child(fd, move || {
                if die_with_parent {
                    bootstrap::watch_parent(parent)?;
                }
                body()
            });
            // `_exit` drops nothing: let go of the queues' anchors as their drops would have. A panic
            // there must not unwind into the caller's frames, which belong to the parent's program.
            let _ = std::panic::catch_unwind(ForkHolds::release_all_before_exit);
            let _ = std::panic::catch_unwind(ForkAnchors::release_all_before_exit);
            psys::exit_immediately(code)
        }
        Fork::Parent(pid) => {
            // The child runs the closure with everything it captured; our copy goes now, but shared
            // arrays it held stay allocated until the child is gone (found by review: the next array
            // made here reused the block the child was still writing).
            crate::heap::dropping_closure_of_child(pid, move || drop(body));
            match psys::pidfd_open(pid) {
                Ok(pidfd) => Ok(Child {
                    pid,
                    pidfd,
                    result,
                    via_server: None,
                }),
                Err(e) => {
                    // Cannot happen for an unreaped child short of running out of descriptors; do not leave
                    // it behind in that case either.
                    psys::kill_and_reap(pid);
                    Err(e)
                }
            }
        }
    }
}
