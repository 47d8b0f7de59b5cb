//! Leases: how the parent knows when it may reuse the memory of an [`Arr`](super::Arr) it lent.
//!
//! A shared copy made by a `Parallel` call is a heap block laid out as
//!
//! | offset            | what                                                                     |
//! |-------------------|--------------------------------------------------------------------------|
//! | 0                 | the lease count, an `AtomicU64`: how many views of the copy exist         |
//! | [`HEADER`]        | the elements (the handle that travels names only these)                   |
//!
//! A process that decodes a view increments the count before handing the view to a task, and decrements
//! it when its last clone of the view is dropped (Release). When the call ends, the parent reads the count
//! (Acquire): zero means every view is gone and every read of the elements happened before, so the block
//! may be freed and reused; anything else means a task kept its view (a task declared with
//! `Arr<'static, T>` can), and the block is *quarantined*: never written, never reused, until its count
//! drops to zero or the `Parallel` that lent it is dropped, which kills and reaps its workers first.
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

/// Bytes before the elements: the count, padded so that the elements keep the block's 64-byte alignment.
pub(super) const HEADER: usize = 64;

/// The lease count at the start of `block`.
fn count(block: &Block) -> Result<&AtomicU64> {
    let p = block.ptr();
    if block.len < 8 || !(p as usize).is_multiple_of(std::mem::align_of::<AtomicU64>()) {
        return Err(Error::Corrupted(format!(
            "a lease word at offset {} is misaligned or outside its block",
            block.offset
        )));
    }
    // SAFETY: `p` is 8-aligned (checked) and points at 8 bytes inside a live mapping (a block of at least
    // 8 bytes, bounds-checked when it was allocated or attached), which the returned reference cannot
    // outlive: it borrows `block`, whose `Arc<Region>` keeps the mapping. Any bits are a valid u64, and
    // every process touches this word only with atomic operations.
    Ok(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
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
        count(&block)?.store(0, Ordering::Relaxed);
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

    /// Whether no view of the copy is left anywhere (as far as the count tells).
    fn unused(&self) -> bool {
        // Acquire: pairs with the Release decrement of the last view, so every read through the views
        // happened before the reuse that may follow.
        count(&self.block).is_ok_and(|c| c.load(Ordering::Acquire) == 0)
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
            len: 8,
        })?;
        // Relaxed is enough for the increment itself: the parent reads the count only after this
        // process's result for the task reached it, through the result queue (Release/Acquire).
        count(&lease)?.fetch_add(1, Ordering::Relaxed);
        Ok(Leased { view, lease })
    }

    pub(super) fn elements(&self) -> &[T] {
        &self.view
    }
}

impl<T: Pod> Drop for Leased<T> {
    fn drop(&mut self) {
        if let Ok(c) = count(&self.lease) {
            // Release: every read through this view (and, through `Arc`, through its clones) happens
            // before the parent's Acquire load that lets it reuse the block.
            c.fetch_sub(1, Ordering::Release);
        }
    }
}
