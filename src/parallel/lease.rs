//! Leases: how the parent knows when it may reuse the memory of an [`Arr`](super::Arr) it lent.
//!
//! A shared copy made by a `Parallel` call is a heap block laid out as
//!
//! | offset            | what                                                                     |
//! |-------------------|--------------------------------------------------------------------------|
//! | 0                 | [`HOLDERS`] lease words, `AtomicU64`s: `pid << 32 \| views` of one process |
//! | 56                | the overflow count: views of processes that found no word free            |
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
//! the copy is kept, never freed early.
//!
//! The count lives in memory other processes can write. A peer that lies about it can make this process
//! keep a block (a leak of memory this process chose to lend, bounded by what it lent) or reuse one early;
//! the latter only breaks the views of processes that share the data, which the trust model leaves to
//! cooperating peers (see the [module's soundness argument](super#why-it-is-sound)). It can never
//! make this process read or write outside a block.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::heap::{Block, BlockHandle, Heap, SharedArray};

/// Bytes before the elements: the lease words, a cache line, so the elements keep the block's 64-byte
/// alignment.
pub(super) const HEADER: usize = 64;
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
            views == 0
                || !crate::sys::proc::is_alive(crate::sys::proc::Identity { tid: pid, start: 0 })
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
        let block = Heap::alloc(total)?;
        for w in words(&block)? {
            w.store(0, Ordering::Relaxed);
        }
        // SAFETY: the block is `HEADER + bytes.len()` bytes of a live mapping that this process just
        // allocated, so no other reference to it exists here, and no other process knows of it until its
        // handle is sent (after this copy; the queue that carries it orders the two). `bytes` is a
        // distinct local slice. `HEADER + len` cannot overflow (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), block.ptr().add(HEADER), bytes.len())
        };
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

impl<T: Pod> Drop for Leased<T> {
    fn drop(&mut self) {
        if let Ok(w) = words(&self.lease) {
            // Every read through this view (and, through `Arc`, through its clones) happens before.
            give_lease(w, self.slot);
        }
    }
}
