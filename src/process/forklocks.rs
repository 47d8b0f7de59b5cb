//! The crate's process-local locks, held by the thread that forks a child
//! ([`StartMethod::Fork`](super::StartMethod::Fork)) across the `fork`, and let go of on both sides after
//! it.
//!
//! A forked child has only the thread that forked it, and every `std::sync::Mutex` of its parent in the
//! state it had at the fork: one that another thread held then is held in the child by a thread that
//! does not exist there, and the child's first use of it waits forever (found by review: a child making
//! a `SharedArray` while another thread of its parent allocated one hung for good). So the forking
//! thread takes every crate-global lock a forked child may take before the fork, and the child gets
//! them unlocked: the fork waits for whichever thread holds one instead.

use super::forkserver::ServerForkLocks;
use crate::error::Result;
use crate::heap::ForkHeapLocks;
use crate::parallel::ForkQuarantine;
use crate::queue::ForkHolds;
use crate::region::janitor::ForkAnchors;
use crate::sync::raw_lock::ForkSightings;

/// Every crate-global lock a forked child may take, held across the `fork`.
///
/// # The order
/// Taken in this order, one after the other, each waited for while those before it are held:
///
/// 1. `region::janitor::LIVE_ANCHORS` (in [`ForkAnchors`], which reopens and locks descriptors with it
///    held);
/// 2. `queue::pipe::LIVE` (in [`ForkHolds`], which reserves a place in each pipe's control block with
///    it held: a robust lock in shared memory, taken within `INTERNAL_BOUND`, whose slow path takes
///    11.);
/// 3. the fork server's `SERVER`, 4. its `LAST_ENVIRONMENT` ([`ServerForkLocks`]; held, they spawn
///    or reap a server and make a memfd: no lock of this crate);
/// 5. `parallel::lease::QUARANTINE` ([`ForkQuarantine`]; held, it drops copies whose blocks go back
///    to the heap: 7., or 6. while a parent drops its copy of a forked child's closure);
/// 6. the heap's `FORKED` (its forked children), then `DEFERRED`, 7. its list of arenas, 8. its map
///    of mapped arenas, 9. its cache of foreign arenas ([`ForkHeapLocks`]; held, 7. makes and
///    registers an arena: 8.);
/// 10. with feature `npy`, the chunk cache, then the table of mapped files (`ForkNpyLocks`; held,
///     the cache drops a mapping, which gives its place in the table back);
/// 11. `sync::raw_lock::SEEN` ([`ForkSightings`]; held, nothing is taken).
///
/// # Why it cannot deadlock
/// Every place where the crate takes one of these locks while it holds another is listed above, and
/// each goes forward in this order (2. → 11., 5. → 6. and 7., 7. → 8., the cache → the table); no
/// other two of them are ever held together (checked against every `lock()` of them: the other paths
/// take one and let go of it before taking the next, or take nothing more). So a thread that holds
/// some of them waits only for later ones, never for one the forking thread may hold while it waits
/// for an earlier one: the usual lock-ordering argument, whatever the other threads do. Nor does a
/// holder wait for anything else: under these locks the crate only makes, maps and drops regions and
/// memfds, spawns or kills and reaps a fork server, reads `/proc`, and takes a pipe's robust lock
/// within a bound; it never runs user code and never waits for a lock a user holds. And the forking
/// thread holds none of them when it starts: `Process::start` is never called under one.
///
/// The child gets them all free ([`ForkLocks::in_child`]); the parent lets go of them after the fork
/// ([`ForkLocks::in_parent`]), the later ones first, since the parent's part of [`ForkHolds`] takes
/// pipe locks (hence `SEEN`).
///
/// # Left out
/// - Test-only locks (`heap::tests::SERIAL` and the like): no child runs them.
/// - Locks inside objects (a pool's dispatcher, an unbounded queue's segments, a manager's heap, a
///   `Future`'s slot): not global, they cannot be listed here; a child that uses an object a parent
///   thread uses at the fork inherits its lock as it was, like any other `Mutex` of the program (see
///   the process docs, "Fork caveats").
/// - The standard library's own locks (the environment's, stdout's): not the crate's to take.
pub(crate) struct ForkLocks {
    // Taken in the reverse order of the fields (see `before_fork`); let go of in this order.
    sightings: ForkSightings,
    #[cfg(feature = "npy")]
    npy: crate::integrations::npy::ForkNpyLocks,
    heap: ForkHeapLocks,
    quarantine: ForkQuarantine,
    server: ServerForkLocks,
    holds: ForkHolds,
    anchors: ForkAnchors,
}

impl ForkLocks {
    /// Takes them all, in the documented order (in the parent, before `fork`), and prepares what the
    /// child will own of its parent's queues and pipes ([`ForkAnchors`], [`ForkHolds`]).
    ///
    /// # Errors
    /// Those of [`ForkAnchors::before_fork`]: the fork must not go ahead (nothing is held then).
    pub(crate) fn before_fork() -> Result<ForkLocks> {
        let anchors = ForkAnchors::before_fork()?;
        let holds = ForkHolds::before_fork();
        let server = ServerForkLocks::before_fork();
        let quarantine = ForkQuarantine::before_fork();
        let heap = ForkHeapLocks::before_fork();
        #[cfg(feature = "npy")]
        let npy = crate::integrations::npy::ForkNpyLocks::before_fork();
        let sightings = ForkSightings::before_fork();
        Ok(ForkLocks {
            sightings,
            #[cfg(feature = "npy")]
            npy,
            heap,
            quarantine,
            server,
            holds,
            anchors,
        })
    }

    /// Lets go of every lock after `pipe::LIVE`, in the reverse order of taking them, and returns the
    /// two lists (`LIVE_ANCHORS`, `LIVE`) still held, for their own side of the fork: the parent's
    /// part of [`ForkHolds`] takes each pipe's robust lock, whose slow path takes `SEEN`, which this
    /// thread must no longer hold then (`std` mutexes are not re-entrant).
    fn release_all_but_the_lists(self) -> (ForkHolds, ForkAnchors) {
        let ForkLocks {
            sightings,
            #[cfg(feature = "npy")]
            npy,
            heap,
            quarantine,
            server,
            holds,
            anchors,
        } = self;
        drop(sightings);
        #[cfg(feature = "npy")]
        drop(npy);
        drop((heap, quarantine, server));
        (holds, anchors)
    }

    /// In the child: lets go of every lock, installing its own pipe attachments and anchors before it
    /// lets go of their lists. Only what [`ForkHolds::in_child`] and [`ForkAnchors::in_child`] do, and
    /// the unlock of each mutex this thread holds (an atomic swap, and at most a futex wake of nobody):
    /// no other lock. The heap marks the arenas the child inherited as its parent's first
    /// ([`ForkHeapLocks::in_child`]).
    pub(crate) fn in_child(mut self) {
        self.heap.in_child();
        let (holds, anchors) = self.release_all_but_the_lists();
        holds.in_child();
        anchors.in_child();
    }

    /// In the parent: the heap records child `pid` while its locks are held, and the child's anchors
    /// and attachments name it or, if the fork failed (`None`), nobody; every lock is let go of, the
    /// lists of those last.
    pub(crate) fn in_parent(mut self, child: Option<u32>) {
        // Before anything is let go of: a drop by another thread must find the child recorded.
        if let Some(pid) = child {
            self.heap.in_parent(pid);
        }
        let (holds, anchors) = self.release_all_but_the_lists();
        holds.in_parent(child);
        anchors.in_parent();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    /// Forks a child that runs `child` while another thread of this process holds what `hold` took
    /// (taken before the fork starts, let go of 300 ms later), and returns what the child returned, or
    /// why it did not within a minute (then it is killed). A child that inherited a lock held by a
    /// thread it does not have waits for it forever: only such a hang takes that long. A pass does not
    /// depend on the 300 ms: with the locks held across the fork, the fork waits for the holder.
    pub(crate) fn fork_while_held<G>(
        hold: impl FnOnce() -> G + Send + 'static,
        child: impl FnOnce() -> u64 + Send + 'static,
    ) -> Result<u64, String> {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let guard = hold();
            held_tx.send(()).expect("the test waits");
            std::thread::sleep(Duration::from_millis(300));
            drop(guard);
        });
        held_rx.recv().expect("the holder took the lock");
        let mut p = crate::Process::builder().daemon(true).fork(child);
        p.start().expect("fork");
        let got = p.join_timeout(Duration::from_secs(60));
        holder.join().expect("holder");
        if got.is_err() {
            let _ = p.kill();
        }
        got.map_err(|e| format!("the forked child did not finish (hung on a lock?): {e}"))
    }
}
