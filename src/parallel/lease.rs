//! Leases: how the parent knows when it may reuse the memory of an [`Arr`](super::Arr) it lent.
//!
//! A shared copy made by a `Parallel` call is a heap block laid out as
//!
//! | offset            | what                                                                     |
//! |-------------------|--------------------------------------------------------------------------|
//! | 0                 | [`HOLDERS`] lease words, `AtomicU64`s: `pid << 32 \| views` of one process |
//! | 4088              | the overflow count: views of processes that found no word free            |
//! | [`HEADER`]        | the elements (the handle that travels names only these)                   |
//!
//! A process that decodes a view takes a lease before handing the view to a task: it counts the view
//! in the word that names its pid (claiming a free word, `0`, if none does; the overflow count if none
//! is free), and gives it back when the view is dropped (Release). When the call ends, the parent reads
//! the words (Acquire): no view left anywhere means every read of the elements happened before, so the
//! block may be freed and reused; anything else means a task kept its view (a task declared with
//! `Arr<'static, T>` can), and the block is *quarantined*: never written, never reused, until its views
//! are gone or the `Parallel` that lent it is dropped, which kills and reaps its workers first. Views of
//! a process that has died are gone too: a worker killed while it held one (SIGKILL, the OOM killer, an
//! abort) never gives its lease back, and its word names a pid that no longer exists. Without the pid,
//! each such death kept its copies until the `Parallel` was dropped. A pid reused since counts as alive:
//! the copy is kept, never freed early. The overflow count names nobody, so a view counted there that
//! dies with its process is never given back: hence a page of holder words (511), not a cache line
//! (7 words: a pool of 8 or more workers reading one array overflowed it, and each crash among them
//! then kept the copy until the `Parallel` was dropped; found by review). Only more than 511 processes
//! holding views of one copy at once overflow it now.
//!
//! The count lives in memory other processes can write. A peer that lies about it can make this process
//! keep a block (a leak of memory this process chose to lend, bounded by what it lent) or reuse one early;
//! the latter only breaks the views of processes that share the data, which the trust model leaves to
//! cooperating peers (see the [module's soundness argument](super#why-it-is-sound)). It can never
//! make this process read or write outside a block.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::heap::{Block, BlockHandle, Heap, SharedArray};

/// Bytes before the elements: the lease words, a page, so that every worker of any likely pool has a
/// holder word of its own (see the module docs), and the elements keep the block's alignment (a page:
/// a copy is at least `HEADER` bytes, and such blocks are page-aligned). A page per copy is little
/// beside the arrays that are copied (above 1 MiB by default).
pub(super) const HEADER: usize = 4096;
/// Lease words that name a holder process; the last word of the header is the overflow count.
const HOLDERS: usize = HEADER / 8 - 1;

/// The lease words at the start of `block`: [`HOLDERS`] holder words, then the overflow count.
fn words(block: &Block) -> Result<&[AtomicU64; HEADER / 8]> {
    let p = block.ptr();
    if block.len < HEADER || !(p as usize).is_multiple_of(std::mem::align_of::<AtomicU64>()) {
        return Err(Error::Corrupted(format!(
            "the lease words at offset {} are misaligned or outside their block",
            block.offset
        )));
    }
    // SAFETY: `p` is 8-aligned (checked) and points at `HEADER` bytes inside a live mapping (a block of
    // at least that, bounds-checked when it was allocated or attached), which the returned reference
    // cannot outlive: it borrows `block`, whose `Arc<Region>` keeps the mapping. Any bits are a valid
    // u64, and every process touches these words only with atomic operations.
    Ok(unsafe { &*p.cast::<[AtomicU64; HEADER / 8]>() })
}

/// A holder word: the holder's pid and its number of views.
fn holder(pid: u32, views: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(views)
}

/// Where one view's lease is counted: a holder word (by index) or the overflow count.
#[derive(Clone, Copy)]
enum Slot {
    Holder(usize),
    Overflow,
}

/// Counts one more view of this process in `w`: in the word naming our pid, else a free word, else
/// the overflow count. Relaxed is enough: the parent reads the words only after this process's result
/// for the task reached it, through the result queue (Release/Acquire).
fn take_lease(w: &[AtomicU64; HEADER / 8]) -> Slot {
    let me = crate::sys::proc::pid();
    for (i, word) in w.iter().take(HOLDERS).enumerate() {
        let mut v = word.load(Ordering::Relaxed);
        loop {
            let next = if v == 0 {
                holder(me, 1)
            } else if (v >> 32) as u32 == me && (v as u32) < u32::MAX {
                v + 1
            } else {
                break;
            };
            match word.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Slot::Holder(i),
                Err(now) => v = now,
            }
        }
    }
    w[HOLDERS].fetch_add(1, Ordering::Relaxed);
    Slot::Overflow
}

/// Gives back one view's lease (Release: every read through the view happens before the parent's
/// Acquire load that lets it reuse the block). A holder word left at zero views is freed for others.
fn give_lease(w: &[AtomicU64; HEADER / 8], slot: Slot) {
    match slot {
        Slot::Overflow => {
            w[HOLDERS].fetch_sub(1, Ordering::Release);
        }
        Slot::Holder(i) => {
            let before = w[i].fetch_sub(1, Ordering::Release);
            if before as u32 == 1 {
                // Ours at zero views: free the word, unless a view of ours was taken meanwhile.
                let _ = w[i].compare_exchange(before - 1, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }
}

/// Whether no view of the copy is left in a live process (Acquire: pairs with the Release of each
/// view's drop, so every read through the views happened before a reuse that may follow).
fn no_live_views(w: &[AtomicU64; HEADER / 8]) -> bool {
    w[HOLDERS].load(Ordering::Acquire) == 0
        && w.iter().take(HOLDERS).all(|word| {
            let v = word.load(Ordering::Acquire);
            let (pid, views) = ((v >> 32) as u32, v as u32);
            // A process, not a thread: `process_alive` counts a process whose main thread exited
            // while its other threads (which may hold views) run as alive; the thread check
            // (`proc::is_alive`) would take its zombie leader for a dead process and reuse the block
            // under their views.
            views == 0 || !crate::sys::proc::process_alive(pid, 0)
        })
}

/// A shared copy this process made and lent: the block, lease count first.
pub(super) struct Lent {
    block: Block,
}

impl Lent {
    /// Copies `bytes` into a fresh block after a zero lease count.
    pub(super) fn copy_of(bytes: &[u8]) -> Result<Lent> {
        let total = bytes.len().checked_add(HEADER).ok_or(Error::OutOfMemory {
            requested: u64::MAX,
            available: isize::MAX as u64,
        })?;
        let mut block = Heap::alloc(total)?;
        for w in words(&block)? {
            w.store(0, Ordering::Relaxed);
        }
        // No other process knows of the block until its handle is sent (after this copy; the queue
        // that carries it orders the two). At memory speed into fresh memory too (`copy_in`: found
        // by review, a copy through the mapping paid a page fault per 4 KiB of a new arena).
        block.copy_in_at(HEADER, bytes)?;
        Ok(Lent { block })
    }

    /// The handle of the elements (not of the count).
    pub(super) fn handle(&self) -> BlockHandle {
        let mut h = self.block.handle();
        h.offset += HEADER as u64;
        h.len -= HEADER as u64;
        h
    }

    /// The copied bytes (after the count).
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the block holds `HEADER` bytes of count then the copy (`copy_of`), inside a live
        // mapping the returned slice cannot outlive (it borrows `self`, whose block keeps its region).
        // Nobody writes those bytes after `copy_of`: views are read-only, and the count is a separate
        // word before them.
        unsafe { std::slice::from_raw_parts(self.block.ptr().add(HEADER), self.block.len - HEADER) }
    }

    /// Whether no view of the copy is left in a live process (as far as the lease words tell).
    fn unused(&self) -> bool {
        words(&self.block).is_ok_and(no_live_views)
    }
}

/// Copies whose lease was still held when their call ended, with the id of the `Parallel` that lent them.
static QUARANTINE: Mutex<Vec<(u64, Lent)>> = Mutex::new(Vec::new());

/// The quarantine's lock, held by the thread that forks a child across the `fork` (see
/// `process::forklocks::ForkLocks`): a forked child that runs a `Parallel` call takes it. Held, it
/// may drop copies, whose blocks go back to the heap: it comes before the heap's locks.
pub(crate) struct ForkQuarantine {
    _quarantine: MutexGuard<'static, Vec<(u64, Lent)>>,
}

impl ForkQuarantine {
    pub(crate) fn before_fork() -> ForkQuarantine {
        ForkQuarantine {
            _quarantine: QUARANTINE.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Ends the lending of the copies of one call of `Parallel` number `owner`: the unused are freed, the
/// others quarantined. Also frees the quarantined copies whose views have all gone since.
pub(super) fn give_back(owner: u64, lent: Vec<Lent>) {
    let mut q = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    q.retain(|(_, l)| !l.unused());
    q.extend(lent.into_iter().filter(|l| !l.unused()).map(|l| (owner, l)));
}

/// Frees every copy `Parallel` number `owner` lent, once no process that could hold a view of them is
/// alive (its pool's workers were killed and reaped).
pub(super) fn release_all(owner: u64) {
    let mut q = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    q.retain(|(o, l)| *o != owner && !l.unused());
}

/// How many copies are quarantined (for tests).
#[cfg(test)]
pub(super) fn quarantined(owner: u64) -> usize {
    let q = QUARANTINE.lock().unwrap_or_else(|e| e.into_inner());
    q.iter().filter(|(o, _)| *o == owner).count()
}

/// A view of another process's shared copy, holding one lease on it for as long as it lives.
pub(super) struct Leased<T: Pod> {
    view: SharedArray<T>,
    lease: Block,
    slot: Slot,
}

impl<T: Pod> Leased<T> {
    /// Attaches to the elements named by `h` (checked: another process's arena, inside it, aligned, a
    /// whole number of `T`) and takes a lease on them.
    pub(super) fn attach(h: &BlockHandle) -> Result<Self> {
        let view = SharedArray::<T>::view(h)?;
        let at = h.offset.checked_sub(HEADER as u64).ok_or_else(|| {
            Error::Corrupted(format!(
                "a shared array at offset {} has no lease",
                h.offset
            ))
        })?;
        let lease = Block::from_handle(&BlockHandle {
            region: h.region.clone(),
            offset: at,
            len: HEADER as u64,
        })?;
        let slot = take_lease(words(&lease)?);
        Ok(Leased { view, lease, slot })
    }

    pub(super) fn elements(&self) -> &[T] {
        &self.view
    }
}

#[cfg(test)]
impl<T: Pod> Leased<T> {
    /// How many views the lease words count: every holder word's, and the overflow count.
    pub(super) fn views_counted(&self) -> u64 {
        words(&self.lease).map_or(0, |w| {
            let holders: u64 = w
                .iter()
                .take(HOLDERS)
                .map(|word| u64::from(word.load(Ordering::Relaxed) as u32))
                .sum();
            holders + w[HOLDERS].load(Ordering::Relaxed)
        })
    }
}

impl<T: Pod> Drop for Leased<T> {
    fn drop(&mut self) {
        if let Ok(w) = words(&self.lease) {
            // Every read through this view (and, through `Arc`, through its clones) happens before.
            give_lease(w, self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child ends a `Parallel` call's lending while another thread of its parent holds the
    /// quarantine (as every call's end does). Until the fix the child inherited the lock held by a
    /// thread it does not have, and hung for good.
    #[test]
    fn a_forked_child_gives_back_copies_whatever_another_thread_holds_the_quarantine() {
        let got = crate::process::forklocks::tests::fork_while_held(
            || QUARANTINE.lock().unwrap_or_else(|e| e.into_inner()),
            || {
                give_back(u64::MAX, Vec::new());
                release_all(u64::MAX);
                42
            },
        );
        assert_eq!(got, Ok(42));
    }

    /// A forked child whose main thread has exited while another of its threads still runs (as after
    /// `pthread_exit` in `main`): its leader is a zombie, the process is alive. Killed and reaped by
    /// the caller.
    fn child_with_exited_main_thread() -> u32 {
        extern "C" fn linger(_: *mut libc::c_void) -> *mut libc::c_void {
            let ts = libc::timespec {
                tv_sec: 30,
                tv_nsec: 0,
            };
            // SAFETY: nanosleep reads a live timespec and may write nothing (null remainder).
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            crate::sys::process::exit_immediately(0)
        }
        // SAFETY: the child only calls pthread_create (glibc's fork leaves it usable), then ends its
        // own thread; it never returns into the test harness and takes none of its locks.
        match unsafe { crate::sys::process::fork() }.unwrap() {
            crate::sys::process::Fork::Child => {
                let mut t: libc::pthread_t = 0;
                // SAFETY: `t` is a live local for the id; default attributes; `linger` never returns
                // into Rust code that assumes anything of this process.
                if unsafe {
                    libc::pthread_create(&mut t, std::ptr::null(), linger, std::ptr::null_mut())
                } != 0
                {
                    crate::sys::process::exit_immediately(1);
                }
                // SAFETY: SYS_exit ends the calling thread only (not the group, unlike `_exit`); it
                // never returns.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
                unreachable!("SYS_exit returned")
            }
            crate::sys::process::Fork::Parent(pid) => pid,
        }
    }

    #[test]
    fn views_of_a_process_whose_main_thread_exited_are_alive() {
        let pid = child_with_exited_main_thread();
        // Wait (bounded) for its leader to become a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let leader_gone = loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            if state == Some('Z') || std::time::Instant::now() >= deadline {
                break state == Some('Z');
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let w: [AtomicU64; HEADER / 8] = std::array::from_fn(|_| AtomicU64::new(0));
        w[0].store(holder(pid, 1), Ordering::Relaxed);
        let live = !no_live_views(&w);
        crate::sys::process::kill_and_reap(pid);
        assert!(leader_gone, "the child's main thread did not exit");
        assert!(live, "a live process's view was counted as gone");
        // Once it is reaped, its view is gone.
        assert!(no_live_views(&w));
    }
}
