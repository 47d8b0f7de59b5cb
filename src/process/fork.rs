//! Starting a child with `fork(2)` (Linux, opt-in).

use std::io::Write;
use std::os::fd::AsRawFd;

use super::bootstrap::{self, Failure};
use super::forklocks::ForkLocks;
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
    // The child starts with a copy of our stdout buffer: an unfinished line we had printed was printed
    // again by the child's first line (found by review). Flushed, as Python flushes before it forks,
    // but only by a thread that runs alone: stdout's lock is then free or ours (it is reentrant).
    // Another thread may hold it while it waits for this one, e.g. to join the child we start, and a
    // flush would wait for it for good (`no_deadlock_on_locks_held_by_other_threads` in the ipc
    // tests). stderr is unbuffered.
    if crate::sys::proc::single_threaded() {
        let _ = std::io::stdout().flush();
    }
    // Every lock of the crate a forked child may take, so that the child finds them free, with
    // what the child needs to own of our queues and pipes: its own locks on the queue anchors we hold
    // (so that our letting go of a queue never leaves the child's copy of it unprotected) and its own
    // attachments to every pipe end we hold (so that the child counts as a holder and our letting go
    // does not close a pipe it still uses). See `ForkLocks` for the order and why it cannot deadlock.
    let locks = ForkLocks::before_fork()?;
    // SAFETY: the child branch below runs only `locks.in_child` (the unlock of the mutexes this
    // thread holds: an atomic swap each, and a futex wake of nobody; stores into this process's
    // memory and `getpid` for the pipes' attachments; `dup3`, `getpid`, `close` and a `free` for the
    // anchors), `ForkHolds::release_all_before_exit` after the closure (the list of attachments, free
    // again; the pipes' robust locks in shared memory, a `/proc` read, allocations),
    // `ForkAnchors::release_all_before_exit` after the closure (the list of anchors, free again;
    // `flock`, and the sweep's directory listing and `unlink`s, with allocations), `watch_parent`
    // (`sigaction`, `prctl(PR_SET_PDEATHSIG)` and `getppid`, none of which takes a lock), `run_child`
    // (an atomic store, the user's closure, and a publish made of one allocation — glibc's malloc is
    // fork-safe — and raw `ftruncate`/`pwrite` calls) and the panic hook installed above. Every
    // crate-global lock the user's closure can take was held by this thread across the fork and is
    // free in the child (`ForkLocks`); the locks inside objects other threads use, and those beyond
    // the crate, carry the documented fork caveats. Then it `_exit`s and never returns into the caller.
    let forked = unsafe { psys::fork() };
    let forked = match forked {
        Ok(Fork::Child) => {
            locks.in_child();
            Fork::Child
        }
        other => {
            locks.in_parent(match &other {
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
            // made here reused the block the child was still writing): `locks.in_parent` recorded
            // the child in the heap before it let go of the heap's locks. A fork nested in the drops
            // of the closure (user code) records its own child and ends nothing of this one's.
            drop(body);
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
