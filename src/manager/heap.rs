//! The managed heap: an allocator and a directory in one shared region that grows, changed only inside
//! transactions that survive the death of the process running them.
//!
//! # Layout (offsets from the payload start; every word is an `AtomicU64`)
//!
//! | offset              | what                                                                 |
//! |---------------------|----------------------------------------------------------------------|
//! | 0                   | [`RawLock`] (16 bytes) guarding everything below                      |
//! | 16                  | journal length, bump pointer, arena end, then one free-list head per size class |
//! | 448                 | a dict table being freed by `Dict::clear` and its capacity            |
//! | [`MAX_END`]         | the limit the arena end may grow to                                   |
//! | [`JOURNAL`]         | the undo journal: `JOURNAL_CAP` pairs (offset, old value)            |
//! | [`DIRECTORY`]       | `DIR_CAP` directory entries of [`DIR_WORDS`] words                    |
//! | [`ARENA`]           | blocks: one header word (size class) then the payload                |
//!
//! # Transactions
//! Every change to a word that was reachable before the transaction goes through [`Tx::set`], which
//! first appends (offset, old value) to the journal, bumps the journal length (Release), and only then
//! stores the new value (Release). Memory that was free before the transaction (fresh blocks) is written
//! directly: if the transaction is undone, its allocation is undone too and the bytes are garbage in a
//! free block. A block freed by the transaction goes on its free list only at commit (journaled too),
//! so the transaction cannot allocate it again and write it unjournaled while an undo would make it
//! reachable again. Commit empties the journal. When a process dies holding the heap's lock, the next holder
//! gets `OwnerDied` from the robust lock and replays the journal backwards: every operation either
//! happened completely or not at all, and the free lists are consistent.
//!
//! # Allocation
//! Power-of-two size classes from 32 bytes, each with a free list (the next pointer lives in the freed
//! block), and a bump pointer for fresh space. Freed blocks are reused by later allocations of the same
//! class; blocks are not split or merged, so internal fragmentation is up to half a block, and memory
//! freed in one class is not available to another.
//!
//! # Growth
//! The heap is one file (a memfd sealed against shrinking only, or a `/dev/shm` file) whose payload
//! offsets are heap offsets, and the arena end word says how much of it the heap uses. When the bump
//! pointer would pass the end, the allocating transaction grows the heap: it extends the file with
//! `fallocate` (pages allocated now, so a full `/dev/shm` is an [`Error::OutOfMemory`] here rather than
//! a SIGBUS later), maps the whole file anew, and only then changes the end word, journaled like any
//! other. The new end is about twice the old one (in whole pages), capped by the limit word; if the
//! system refuses that much, exactly what the allocation needs is tried. A process killed part-way
//! leaves either the old end (the file is longer than it says, which is harmless: the next grow reuses
//! the pages) or, once committed, the new one. Growing creates no new file, so nothing can leak in
//! `/dev/shm` whatever dies when; the one file goes as it did before (unlinked by its creator, or freed
//! with its last descriptor).
//!
//! Every other process learns of growth at the start of its next transaction, under the lock: if the end
//! word passes what it has mapped, it checks the word against the file's real size (a larger word is
//! [`Error::Corrupted`]: an honest grower extends the file first) and [`HEAP_LIMIT`], and maps the whole
//! file again. An older mapping is kept until the next transaction starts, since references into it live
//! as long as the transaction that made them (and no longer: the closure's signature keeps them in), so
//! a process holds at most two: a peer that bumps the end word a page at a time, the file grown sparse
//! for nothing, cannot make it pile up a mapping per transaction (found by review).
//! When the limit is reached, allocation fails with [`Error::OutOfMemory`] and the heap is unchanged.
//!
//! # Garbage
//! Every offset and length read from the heap is checked against the region before use; a bad one is
//! [`Error::Corrupted`].

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::region::{Region, PAYLOAD_OFFSET};
use crate::sync::raw_lock::{Acquired, Nesting, RawLock};
use crate::sys::shm;

const W: u64 = 8;
/// Journal length word.
const JLEN: u64 = 16;
const BUMP: u64 = 24;
const END: u64 = 32;
/// First free-list head; class `k` (blocks of 2^k bytes) is at `FREE + 8 * (k - MIN_CLASS)`.
const FREE: u64 = 40;
/// A dict table detached by `Dict::clear` whose entries are still to be freed (0: none), and its capacity.
const PENDING_TABLE: u64 = 448;
const PENDING_CAP: u64 = 456;
/// The limit of the arena end word (bytes of payload), set at creation: growth stops there.
pub(crate) const MAX_END: u64 = 464;
/// No heap grows past 1 TiB of payload (the largest size class), whatever its limit word says.
pub(crate) const HEAP_LIMIT: u64 = 1 << MAX_CLASS;
/// Growth rounds the file up to whole pages.
const PAGE: u64 = 4096;
const MIN_CLASS: u32 = 5;
const MAX_CLASS: u32 = 40;
const JOURNAL: u64 = 512;
pub(crate) const JOURNAL_CAP: u64 = 1024;
pub(crate) const DIRECTORY: u64 = JOURNAL + JOURNAL_CAP * 16;
/// Words per directory entry: kind hash, object offset, name length, then the name (40 bytes).
pub(crate) const DIR_WORDS: u64 = 8;
pub(crate) const DIR_NAME_MAX: usize = 40;
pub(crate) const DIR_CAP: u64 = 256;
pub(crate) const ARENA: u64 = DIRECTORY + DIR_CAP * DIR_WORDS * W;

const _: () = assert!(FREE + (MAX_CLASS - MIN_CLASS + 1) as u64 * W <= PENDING_TABLE);
const _: () = assert!(PENDING_CAP + W <= MAX_END && MAX_END + W <= JOURNAL);

/// `base + i * size` for an element of an array in the heap, or `Corrupted` if that overflows or lands
/// beyond any heap (2^62): `base` and `i` may come from garbage in shared memory, and arithmetic on them
/// must fail as an error, never panic or wrap into a valid-looking offset.
pub(crate) fn at(base: u64, i: u64, size: u64) -> Result<u64> {
    i.checked_mul(size)
        .and_then(|o| base.checked_add(o))
        .filter(|&o| o < 1 << 62)
        .ok_or_else(|| {
            Error::Corrupted(format!(
                "element {i} of the array at {base:#x} is beyond the heap"
            ))
        })
}

/// How many heaps' transactions one thread can be inside at once (one transaction's closure calling
/// another manager's, and so on): [`InTransaction::enter`] fails past it.
const NESTED_HEAPS_MAX: usize = 32;

thread_local! {
    /// The region ids of the heaps this thread is inside a transaction of, `None` in the free places.
    ///
    /// A fixed array of `Cell`s, not a `Vec`: a thread-local with no destructor is never destroyed, so
    /// a manager operation from the `Drop` of a user's thread-local at thread exit still finds it.
    /// With a `Vec`, destroyed first, `with` panicked there, and a panic in a thread-local's
    /// destructor aborts the process (found by review, as for the codec's buffer).
    static IN_TRANSACTION: [std::cell::Cell<Option<u64>>; NESTED_HEAPS_MAX] =
        const { [const { std::cell::Cell::new(None) }; NESTED_HEAPS_MAX] };
}

/// This thread's mark of being inside a transaction of one heap, removed when dropped (also when a
/// closure panics through the transaction).
struct InTransaction(usize);

impl InTransaction {
    /// # Errors
    /// [`Error::ManagerReentered`] if this thread is inside a transaction of `heap` already, or of
    /// [`NESTED_HEAPS_MAX`] heaps.
    fn enter(heap: u64) -> Result<InTransaction> {
        IN_TRANSACTION.with(|marks| {
            if marks.iter().any(|m| m.get() == Some(heap)) {
                return Err(Error::ManagerReentered);
            }
            let free = marks
                .iter()
                .position(|m| m.get().is_none())
                .ok_or(Error::ManagerReentered)?;
            marks[free].set(Some(heap));
            Ok(InTransaction(free))
        })
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        IN_TRANSACTION.with(|marks| marks[self.0].set(None));
    }
}

/// A view of a managed heap region: checked word access, the lock, and the mappings of its growth.
#[derive(Debug)]
pub(crate) struct JournaledHeap {
    region: Region,
    /// Mappings of the whole file made each time this process found the heap larger than it had
    /// mapped (see "Growth" in the module docs). All but the newest are let go of when the next
    /// transaction starts; each transaction holds its own `Arc` of the mappings it reads through,
    /// so none is unmapped under it, even if a peer that wrote the lock's word lets two transactions
    /// of this process run at once (found by review: without the `Arc`s, that unmapped a mapping a
    /// transaction was using: SIGSEGV).
    grown: Mutex<Vec<Arc<shm::Mapping>>>,
    /// Payload start and length of the largest mapping (the region's own at first). Changed only
    /// under `grown`'s mutex, with the mapping they point into ([`JournaledHeap::current`]).
    base: AtomicPtr<u8>,
    len: AtomicU64,
}

impl JournaledHeap {
    pub(crate) fn min_size() -> usize {
        ARENA as usize + 4096
    }

    /// Sets up a fresh, zeroed region (before it is published); the arena may grow to `limit` bytes of
    /// payload (at least the region's size, at most [`HEAP_LIMIT`]).
    pub(crate) fn init(region: &Region, limit: u64) -> Result<()> {
        let h = JournaledHeap::view(region);
        h.word(BUMP)?.store(ARENA, Ordering::Relaxed);
        h.word(END)?.store(region.len() as u64, Ordering::Relaxed);
        let limit = limit.clamp(region.len() as u64, HEAP_LIMIT.max(region.len() as u64));
        h.word(MAX_END)?.store(limit, Ordering::Relaxed);
        Ok(())
    }

    fn view(region: &Region) -> HeapRef<'_> {
        HeapRef {
            base: region.as_ptr(),
            len: region.len() as u64,
            region,
        }
    }

    pub(crate) fn new(region: Region) -> JournaledHeap {
        let (base, len) = (region.as_ptr(), region.len() as u64);
        JournaledHeap {
            region,
            grown: Mutex::default(),
            base: AtomicPtr::new(base),
            len: AtomicU64::new(len),
        }
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    fn r(&self) -> HeapRef<'_> {
        HeapRef {
            base: self.base.load(Ordering::Acquire),
            len: self.len.load(Ordering::Acquire),
            region: &self.region,
        }
    }

    /// The view of the largest mapping, and that mapping (`None`: the region's own, which lives as
    /// long as `self`), for a transaction to keep while it reads through the view.
    fn current(&self) -> (HeapRef<'_>, Option<Arc<shm::Mapping>>) {
        let grown = self.grown.lock().unwrap_or_else(|e| e.into_inner());
        (self.r(), grown.last().cloned())
    }

    /// Makes sure this process maps the first `end` bytes of payload. `end` comes from shared memory:
    /// it must lie within [`HEAP_LIMIT`] and the file's real size (an honest grower extends the file
    /// before it publishes a larger end), else the heap is [`Error::Corrupted`]. Only with the lock held.
    fn map_to(&self, end: u64) -> Result<()> {
        if end <= self.len.load(Ordering::Acquire) {
            return Ok(());
        }
        let file = self.region.file();
        let size = shm::file_info(file)?.size;
        let total = end
            .checked_add(PAYLOAD_OFFSET as u64)
            .filter(|&t| end <= HEAP_LIMIT && t <= size)
            .ok_or_else(|| {
                Error::Corrupted(format!(
                    "the heap's end word says {end} bytes, but its file holds {} (limit {HEAP_LIMIT})",
                    size.saturating_sub(PAYLOAD_OFFSET as u64)
                ))
            })?;
        let total = usize::try_from(total)
            .map_err(|_| Error::Corrupted(format!("a heap of {end} bytes")))?;
        // The file is at least `total` bytes (checked just above) and never shrinks (a memfd is sealed
        // against it; see the region docs for named files), so every page of this mapping is backed.
        let map = shm::Mapping::new(file, total, false)?;
        let base = map.as_ptr().wrapping_add(PAYLOAD_OFFSET);
        let mut grown = self.grown.lock().unwrap_or_else(|e| e.into_inner());
        grown.push(Arc::new(map));
        self.base.store(base, Ordering::Release);
        self.len.store(end, Ordering::Release);
        Ok(())
    }

    /// Lets go of every grown mapping but the newest (before a transaction): each is unmapped once no
    /// transaction holds it ([`JournaledHeap::grown`]).
    fn unmap_older(&self) {
        let mut grown = self.grown.lock().unwrap_or_else(|e| e.into_inner());
        let older = grown.len().saturating_sub(1);
        grown.drain(..older);
    }

    /// Extends the file to hold `end` bytes of payload, allocating the new pages.
    fn extend_file(&self, end: u64) -> Result<()> {
        let file = self.region.file();
        let total = end.saturating_add(PAYLOAD_OFFSET as u64);
        let size = shm::file_info(file)?.size;
        if size >= total {
            // A grower died after extending the file and before its end word committed: reuse.
            return Ok(());
        }
        shm::allocate(file, size, total - size)
    }

    fn lock(&self) -> &RawLock {
        // Offset 0 holds the lock; the region is at least ARENA bytes (checked at open).
        self.region
            .payload_ref::<RawLock>(0)
            .expect("the heap region holds its lock at offset 0")
    }

    /// The arena end (the heap's size now) and the limit it may grow to.
    pub(crate) fn size(&self) -> Result<(u64, u64)> {
        self.transact(|tx| Ok((tx.get(END)?, tx.get(MAX_END)?.min(HEAP_LIMIT))))
    }

    /// Runs `f` as one transaction under the heap's lock; commits if it returns `Ok`, rolls back if it
    /// returns `Err` (so a failed operation, e.g. out of memory half-way, changes nothing).
    ///
    /// # Errors
    /// [`Error::ManagerReentered`] if this thread is already inside a transaction of this heap (a user
    /// closure run by `Dict::update` and its relatives called the manager): the lock is this thread's,
    /// and taking it over would let the two transactions interleave unjournaled and corrupt the heap.
    /// Also if it is inside transactions of [`NESTED_HEAPS_MAX`] heaps already.
    pub(crate) fn transact<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<R> {
        let _inside = InTransaction::enter(self.region.id())?;
        // Whether the previous holder died (OwnerDied) or not, a non-empty journal means a transaction
        // that never finished — a death, or a panic that unwound through `f` — and is undone first.
        // The heap's lock is internal: taken and released inside this call, never held by the caller
        // when it gets here, so a word naming this thread is garbage and taken over, not waited on
        // forever (issue 17).
        let _acquired: Acquired = self
            .lock()
            .lock_as(None, Nesting::NeverHeld)
            .expect("an untimed internal lock neither times out nor is held by its caller");
        let guard = Unlock(self.lock());
        self.unmap_older();
        // Another process may have grown the heap since our last transaction: map what it added
        // before anything (the journal included) may point there.
        self.map_to(self.r().get(END)?)?;
        let (heap, mapping) = self.current();
        let mut tx = Tx {
            heap,
            owner: self,
            mappings: mapping.into_iter().collect(),
            journaled: Vec::new(),
            freed: Vec::new(),
        };
        if tx.get(JLEN)? != 0 {
            tx.roll_back()?;
        }
        if tx.get(PENDING_TABLE)? != 0 {
            // A `clear` whose second half never ran (its process died): finish it first.
            tx.free_detached_table()?;
            tx.commit()?;
        }
        let r = f(&mut tx);
        match &r {
            Ok(_) => {
                if let Err(e) = tx.commit() {
                    // The blocks freed could not go on their free lists (a full journal, garbage):
                    // the operation is undone, not left half-committed for the next holder.
                    tx.roll_back()?;
                    return Err(e);
                }
            }
            Err(_) => tx.roll_back()?,
        }
        drop(guard);
        r
    }
}

struct Unlock<'a>(&'a RawLock);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        // SAFETY: constructed right after this thread acquired the lock in `transact`; dropped once.
        unsafe { self.0.unlock() }
    }
}

/// Checked access to the words and bytes of a heap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeapRef<'a> {
    base: *mut u8,
    len: u64,
    /// The region it points into (whose file says which bytes are memory, see `read_bytes`).
    region: &'a Region,
}

impl<'a> HeapRef<'a> {
    pub(crate) fn word(&self, off: u64) -> Result<&'a AtomicU64> {
        if !off.is_multiple_of(W) || off.checked_add(W).is_none_or(|e| e > self.len) {
            return Err(Error::Corrupted(format!(
                "heap offset {off:#x} is outside the heap or misaligned"
            )));
        }
        // SAFETY: [off, off + 8) lies inside the payload of a live mapping (checked above against its
        // length), off is 8-aligned and the payload starts 128 bytes into a page-aligned mapping; an
        // AtomicU64 accepts any bits. The mapping outlives every use: a HeapRef is used only within
        // the transaction it came from (`transact`'s closure cannot return one), and the transaction
        // holds the mapping (`Tx::mappings`; the region's own lives as long as the JournaledHeap).
        Ok(unsafe { &*(self.base.add(off as usize) as *const AtomicU64) })
    }

    pub(crate) fn get(&self, off: u64) -> Result<u64> {
        Ok(self.word(off)?.load(Ordering::Acquire))
    }

    fn check_range(&self, off: u64, n: usize) -> Result<()> {
        if off.checked_add(n as u64).is_none_or(|e| e > self.len) {
            return Err(Error::Corrupted(format!(
                "{n} bytes at heap offset {off:#x} are outside the heap"
            )));
        }
        Ok(())
    }

    /// Copies `n` bytes out of the heap.
    ///
    /// A large copy must be of memory the heap's file holds: a peer can grow a named heap's file
    /// sparse, for free, and write a blob length claiming it (an honest heap wrote every byte of a
    /// blob). And the allocation is asked for, not assumed: its failure is an error, not an abort.
    pub(crate) fn read_bytes(&self, off: u64, n: usize) -> Result<Vec<u8>> {
        self.check_memory(off, n)?;
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
            requested: n as u64,
            available: 0,
        })?;
        v.resize(n, 0);
        // SAFETY: the range is inside the mapping (checked); `v` is a distinct local buffer of n bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off as usize), v.as_mut_ptr(), n) };
        Ok(v)
    }

    /// Checks that the `n` bytes at `off` are inside the heap and, if many, memory its file holds
    /// rather than holes (see [`read_bytes`](Self::read_bytes)): what may be decoded or copied out.
    fn check_memory(&self, off: u64, n: usize) -> Result<()> {
        /// Copies up to this size are not worth a system call: small whatever the bytes say.
        const SPARSE_CHECK_MIN: usize = 64 << 10;
        self.check_range(off, n)?;
        // `off + n <= len`, the mapped payload (checked just above), so `off` fits a usize.
        if n > SPARSE_CHECK_MIN && !self.region.holds_memory(off as usize, n)? {
            return Err(Error::Corrupted(format!(
                "{n} bytes at heap offset {off:#x} are holes of a sparse file, not a blob"
            )));
        }
        Ok(())
    }

    /// Whether the `n` bytes at `off` equal `bytes` (without copying them out).
    pub(crate) fn bytes_eq(&self, off: u64, bytes: &[u8]) -> Result<bool> {
        self.with_bytes(off, bytes.len(), |here| here == bytes)
    }

    /// Calls `f` with the `n` bytes at `off`, in place (no copy). Only while the caller holds the heap's
    /// lock, as every `HeapRef` user does inside a transaction.
    pub(crate) fn with_bytes<R>(
        &self,
        off: u64,
        n: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.check_range(off, n)?;
        // SAFETY: the range is inside the mapping (checked) and the mapping outlives 'a; u8 accepts any
        // value. Other processes only write heap bytes under the lock, which the caller holds, and the
        // slice does not outlive this call.
        let here = unsafe { std::slice::from_raw_parts(self.base.add(off as usize), n) };
        Ok(f(here))
    }
}

/// One transaction; see the module docs.
pub(crate) struct Tx<'a> {
    heap: HeapRef<'a>,
    /// The heap this transaction runs on, to grow it.
    owner: &'a JournaledHeap,
    /// The grown mappings `heap` pointed into since the transaction began: kept mapped until it ends.
    mappings: Vec<Arc<shm::Mapping>>,
    /// Offsets journaled so far: a word needs its *first* old value only, so repeated changes (a
    /// free-list head during `clear`) take one journal entry, not one each.
    journaled: Vec<u64>,
    /// Blocks freed by this transaction (payload offsets), put on their free lists at commit. Until
    /// then they hold live data should the transaction be undone, so no `alloc` of the same
    /// transaction may hand them out: it wrote the new contents unjournaled (`init`), and an undo made
    /// the old block reachable again holding them (found by review: a list whose item array grew
    /// reused the old array for the element's blob, and a failed `extend` left the list corrupted).
    freed: Vec<u64>,
}

impl<'a> Tx<'a> {
    pub(crate) fn heap(&self) -> HeapRef<'a> {
        self.heap
    }

    pub(crate) fn get(&self, off: u64) -> Result<u64> {
        self.heap.get(off)
    }

    /// Changes a word that existed before this transaction, journaling its old value first.
    pub(crate) fn set(&mut self, off: u64, value: u64) -> Result<()> {
        let w = self.heap.word(off)?;
        if self.journaled.contains(&off) {
            w.store(value, Ordering::Release);
            return Ok(());
        }
        let n = self.heap.get(JLEN)?;
        if n >= JOURNAL_CAP {
            // An honest operation too large for one transaction (rolled back by `transact`), or a
            // garbage length (above the cap): either way nothing is changed.
            return Err(if n == JOURNAL_CAP {
                Error::ManagerTransactionTooLarge { limit: JOURNAL_CAP }
            } else {
                Error::Corrupted("the heap's undo journal is full".into())
            });
        }
        let entry = JOURNAL + n * 16;
        self.heap.word(entry)?.store(off, Ordering::Relaxed);
        self.heap
            .word(entry + W)?
            .store(w.load(Ordering::Relaxed), Ordering::Relaxed);
        // Release: the entry is in memory before the length that makes it count, and the length before
        // the change it covers (the store below is Release too). A death between any two is undone.
        self.heap.word(JLEN)?.store(n + 1, Ordering::Release);
        w.store(value, Ordering::Release);
        self.journaled.push(off);
        Ok(())
    }

    /// Writes a word of a block allocated in this transaction (no journal needed: undoing the
    /// transaction frees the block).
    pub(crate) fn init(&mut self, off: u64, value: u64) -> Result<()> {
        self.heap.word(off)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Writes bytes into a block allocated in this transaction.
    pub(crate) fn init_bytes(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.heap.check_range(off, bytes.len())?;
        // SAFETY: the range is inside the mapping (checked); it belongs to a block this transaction
        // allocated, which no other thread or process reads before commit (they need the lock).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.heap.base.add(off as usize),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Puts the blocks this transaction freed on their free lists (journaled, so a death before the
    /// journal is emptied undoes them with the rest), then empties the journal.
    pub(crate) fn commit(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.freed) {
            self.push_free(p, true)?;
        }
        self.end()
    }

    /// Ends the transaction: the journal is emptied.
    fn end(&mut self) -> Result<()> {
        self.journaled.clear();
        self.heap.word(JLEN)?.store(0, Ordering::Release);
        Ok(())
    }

    fn roll_back(&mut self) -> Result<()> {
        self.freed.clear();
        let n = self.heap.get(JLEN)?.min(JOURNAL_CAP);
        for i in (0..n).rev() {
            let entry = JOURNAL + i * 16;
            let off = self.heap.get(entry)?;
            let old = self.heap.get(entry + W)?;
            // A garbage journal entry pointing outside the heap is skipped, not followed.
            if let Ok(w) = self.heap.word(off) {
                w.store(old, Ordering::Release);
            }
        }
        self.end()
    }

    fn class_of(size: u64) -> Result<u32> {
        let total = size.checked_add(W).ok_or(Error::OutOfMemory {
            requested: size,
            available: 0,
        })?;
        let k = total
            .max(1 << MIN_CLASS)
            .next_power_of_two()
            .trailing_zeros();
        if k > MAX_CLASS {
            return Err(Error::OutOfMemory {
                requested: size,
                available: 0,
            });
        }
        Ok(k)
    }

    /// Allocates a block with room for `size` bytes; returns the payload offset.
    pub(crate) fn alloc(&mut self, size: u64) -> Result<u64> {
        let k = Self::class_of(size)?;
        let head = FREE + u64::from(k - MIN_CLASS) * W;
        let block = self.get(head)?;
        let block = if block != 0 {
            // Pop: the next pointer is the block's first payload word. Journal it (unchanged) before the
            // caller overwrites the payload: if this transaction is undone, the block goes back on the
            // list and its link must be what it was.
            let next = self.get(
                block
                    .checked_add(W)
                    .ok_or_else(|| Error::Corrupted("free list".into()))?,
            )?;
            self.set(block + W, next)?;
            self.set(head, next)?;
            block
        } else {
            let bump = self.get(BUMP)?;
            let end = self.get(END)?.min(self.heap.len);
            // The bump pointer never passes the end in an honest heap. Checked, because growth is sized
            // from it: garbage here must not make this process allocate memory for nothing.
            let new_bump = bump
                .checked_add(1 << k)
                .filter(|_| bump <= end)
                .ok_or_else(|| {
                    Error::Corrupted(format!(
                        "the heap's bump pointer {bump:#x} is past its end {end:#x}"
                    ))
                })?;
            if new_bump > end {
                self.grow(new_bump, size, bump)?;
            }
            self.set(BUMP, new_bump)?;
            bump
        };
        if block < ARENA || block % W != 0 {
            return Err(Error::Corrupted(format!(
                "free list of class {k} points at {block:#x}"
            )));
        }
        self.init(block, u64::from(k))?;
        Ok(block + W)
    }

    /// Grows the heap so that its arena ends at `needed` or beyond (see "Growth" in the module docs).
    /// `requested` and `bump` are for the error.
    fn grow(&mut self, needed: u64, requested: u64, bump: u64) -> Result<()> {
        let end = self.get(END)?.min(self.heap.len);
        let limit = self.get(MAX_END)?.min(HEAP_LIMIT);
        let oom = || Error::OutOfMemory {
            requested,
            available: limit.saturating_sub(bump),
        };
        // Whole pages of the file (its payload starts PAYLOAD_OFFSET bytes in), within the limit.
        let pages = |payload: u64| -> u64 {
            let file = payload.saturating_add(PAYLOAD_OFFSET as u64);
            file.div_ceil(PAGE)
                .saturating_mul(PAGE)
                .saturating_sub(PAYLOAD_OFFSET as u64)
                .min(limit)
        };
        if needed > limit {
            return Err(oom());
        }
        // Doubling keeps the number of grows (and of mappings) logarithmic in the heap's size.
        let preferred = pages(end.saturating_mul(2).max(needed));
        let least = pages(needed);
        for target in [preferred, least] {
            match self.owner.extend_file(target) {
                Ok(()) => {
                    self.owner.map_to(target)?;
                    let (heap, mapping) = self.owner.current();
                    self.heap = heap;
                    self.mappings.extend(mapping);
                    return self.set(END, target);
                }
                // The system refused that much memory: try exactly what is needed, then give up.
                Err(Error::OutOfMemory { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(oom())
    }

    /// Frees the block at payload offset `p`, at commit (see [`Tx::freed`]); checked now.
    pub(crate) fn free(&mut self, p: u64) -> Result<()> {
        self.free_list_of(p)?;
        self.freed.push(p);
        Ok(())
    }

    /// The free-list head word for the block at payload offset `p`, from its class word, checked.
    fn free_list_of(&self, p: u64) -> Result<u64> {
        let block = p.checked_sub(W).filter(|&b| b >= ARENA).ok_or_else(|| {
            Error::Corrupted(format!("freeing {p:#x}, which is not a heap block"))
        })?;
        let k = self.get(block)?;
        if !(u64::from(MIN_CLASS)..=u64::from(MAX_CLASS)).contains(&k) {
            return Err(Error::Corrupted(format!("block at {p:#x} has class {k}")));
        }
        Ok(FREE + (k - u64::from(MIN_CLASS)) * W)
    }

    /// Pushes the block at payload offset `p` on its free list now. The link goes into the block's
    /// first payload word, which is live data until commit when the block is reachable: then
    /// (`journal_link`) it is journaled, so undoing the transaction gives the block back its contents.
    fn push_free(&mut self, p: u64, journal_link: bool) -> Result<()> {
        let head = self.free_list_of(p)?;
        let old = self.get(head)?;
        if journal_link {
            self.set(p, old)?;
        } else {
            self.init(p, old)?;
        }
        self.set(head, p - W)
    }

    /// Hands a dict table, already unreachable from its dict, to the second half of a clear (see
    /// [`Tx::free_detached_table`]).
    pub(crate) fn detach_table(&mut self, table: u64, cap: u64) -> Result<()> {
        self.set(PENDING_CAP, cap)?;
        self.set(PENDING_TABLE, table)
    }

    /// Frees a detached dict table and every entry it points to.
    ///
    /// Freeing an entry writes the free-list link into it; a journaled write per entry would overflow the
    /// journal for a large dict. It needs none: the entries became unreachable when the table was detached
    /// (in an earlier, committed transaction), so if this one is undone they are unreachable garbage
    /// again, the free-list heads are restored, and the next transaction frees them anew. The table is
    /// read, never written, until its own (journaled) free at the end, so redoing this is idempotent.
    /// Damaged bookkeeping is given up on (its blocks leak) rather than allowed to block every later
    /// transaction.
    pub(crate) fn free_detached_table(&mut self) -> Result<()> {
        let (table, cap) = (self.get(PENDING_TABLE)?, self.get(PENDING_CAP)?);
        let freed = (|| -> Result<()> {
            self.heap.check_array(table, cap, 16)?;
            for i in 0..cap {
                let tag = self.get(at(table, i, 16)?)?;
                if tag > 1 {
                    let e = self.get(at(table, i, 16)? + W)?;
                    self.push_free(e, false)?;
                }
            }
            self.free(table)
        })();
        self.set(PENDING_TABLE, 0)?;
        self.set(PENDING_CAP, 0)?;
        match freed {
            Ok(()) => Ok(()),
            // Not an error for the caller's own operation: leak the rest and go on.
            Err(_) => Ok(()),
        }
    }

    /// Allocates a blob holding `bytes`, prefixed by their length; returns its offset.
    pub(crate) fn alloc_blob(&mut self, bytes: &[u8]) -> Result<u64> {
        let p = self.alloc(W + bytes.len() as u64)?;
        self.init(p, bytes.len() as u64)?;
        self.init_bytes(p + W, bytes)?;
        Ok(p)
    }
}

/// How many bytes one operation may still copy out of a heap: reads that copy several blobs (`items`,
/// `to_vec`) charge each blob's whole block. An honest heap holds each block once, so an operation on it
/// never copies more than the heap's size; garbage that points many entries at one big blob runs out of
/// budget and is [`Error::Corrupted`] instead of a copy of heap² bytes (review R4).
#[derive(Debug)]
pub(crate) struct CopyBudget {
    left: u64,
}

impl CopyBudget {
    /// A budget of one heap's size.
    pub(crate) fn of(h: HeapRef<'_>) -> CopyBudget {
        CopyBudget { left: h.len }
    }

    fn take(&mut self, bytes: u64) -> Result<()> {
        self.left = self.left.checked_sub(bytes).ok_or_else(|| {
            Error::Corrupted(
                "the entries point at more bytes than the heap holds (a damaged container)".into(),
            )
        })?;
        Ok(())
    }
}

impl HeapRef<'_> {
    /// The start and size of the block whose payload starts at `p`, checked: a header word holding a
    /// size class, and the whole block inside the heap.
    fn block_of(&self, p: u64) -> Result<(u64, u64)> {
        let block = p
            .checked_sub(W)
            .filter(|&b| b >= ARENA && b % W == 0)
            .ok_or_else(|| Error::Corrupted(format!("{p:#x} is not a heap block")))?;
        let k = self.get(block)?;
        if !(u64::from(MIN_CLASS)..=u64::from(MAX_CLASS)).contains(&k) {
            return Err(Error::Corrupted(format!("block at {p:#x} has class {k}")));
        }
        let size = 1u64 << k;
        if block.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(Error::Corrupted(format!(
                "block at {p:#x} of {size} bytes ends beyond the heap"
            )));
        }
        Ok((block, size))
    }

    /// The length of the blob made by [`Tx::alloc_blob`] at `p`, checked against its block (length word
    /// and bytes fit in the block's `2^k − 8` payload bytes), and the block's size.
    fn blob_len(&self, p: u64) -> Result<(usize, u64)> {
        let (_, size) = self.block_of(p)?;
        let n = self.get(p)?;
        if n > size - 2 * W {
            return Err(Error::Corrupted(format!(
                "a blob of {n} bytes at {p:#x} in a block of {size}"
            )));
        }
        let n = usize::try_from(n).map_err(|_| Error::Corrupted("blob length".into()))?;
        Ok((n, size))
    }

    /// The bytes of a blob made by [`Tx::alloc_blob`], checked against its block.
    pub(crate) fn blob(&self, p: u64) -> Result<Vec<u8>> {
        let (n, _) = self.blob_len(p)?;
        self.read_bytes(p + W, n)
    }

    /// Calls `f` with the bytes of the blob made by [`Tx::alloc_blob`] at `p`, in place (no copy),
    /// checked as [`blob`](Self::blob) checks them: inside its block, and memory the file holds. A
    /// decoder reading them may allocate as much as they say (a string's length), so they must be
    /// bytes some process wrote, not holes a peer got for free (found by review: `Dict::get` decoded
    /// a value checked against the mapping only).
    pub(crate) fn with_blob<R>(&self, p: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let (n, _) = self.blob_len(p)?;
        // `blob_len` checked the block lies in the heap, so `p + W` does not overflow.
        self.check_memory(p + W, n)?;
        self.with_bytes(p + W, n, f)
    }

    /// As [`blob`](Self::blob), charging the blob's block to `budget` first.
    pub(crate) fn blob_within(&self, p: u64, budget: &mut CopyBudget) -> Result<Vec<u8>> {
        let (n, size) = self.blob_len(p)?;
        budget.take(size)?;
        self.read_bytes(p + W, n)
    }

    /// Checks that an array of `n` elements of `size` bytes at `base` lies inside the heap and is
    /// memory its file holds, so a loop over it is bounded by the heap's real size, not by a length
    /// word. Inside the mapping is not enough: a peer grows the file sparse for free, and reading a
    /// hole of a shared mapping allocates its page, so a loop over holes would make this process
    /// allocate as much as the peer's words say (found by review). Every array an honest heap loops
    /// over was written whole (a fresh dict table word by word, a full list's items one by one).
    pub(crate) fn check_array(&self, base: u64, n: u64, size: u64) -> Result<()> {
        let bytes = n.checked_mul(size).ok_or_else(|| {
            Error::Corrupted(format!("an array of {n} elements is larger than any heap"))
        })?;
        self.check_memory(
            base,
            usize::try_from(bytes).map_err(|_| Error::Corrupted("array size".into()))?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob's bytes are copied out only if they are memory: the holes of a sparse file (what a peer
    /// gets for free by growing a named heap's file) are refused, not copied as zeroes into an
    /// allocation their length sized.
    #[test]
    fn large_reads_of_holes_are_refused() {
        let region = Region::anonymous(4 << 20).unwrap(); // a fresh memfd: holes all through
        let heap = JournaledHeap::view(&region);
        let big = 1 << 20;
        assert!(matches!(
            heap.read_bytes(1 << 20, big),
            Err(Error::Corrupted(_))
        ));
        region.write_payload_at(1 << 20, &vec![7u8; big]).unwrap();
        assert_eq!(heap.read_bytes(1 << 20, big).unwrap(), vec![7u8; big]);
        // Small reads are not checked: zeroes of a hole, at a small cost.
        assert_eq!(heap.read_bytes(3 << 20, 100).unwrap(), vec![0u8; 100]);
    }

    /// A heap of 1 MiB that may grow to the limit, in an anonymous region made as a manager makes it.
    fn growable_heap() -> JournaledHeap {
        let layout = crate::manager::heap_layout(Some(1 << 20));
        let region =
            Region::create_growable(layout, None, false, |r| JournaledHeap::init(r, HEAP_LIMIT))
                .unwrap();
        JournaledHeap::new(region)
    }

    /// Found by review: with the lock's word cleared by a peer, two transactions of this process ran
    /// at once, and one that started after the other grew the heap unmapped the mapping the first
    /// was reading through: SIGSEGV. Each transaction keeps its mappings.
    #[test]
    fn a_transaction_keeps_its_mapping_when_the_lock_is_forged() {
        let heap = growable_heap();
        // A first growth: transactions now read through a grown mapping.
        heap.transact(|tx| tx.alloc(2 << 20).map(drop)).unwrap();
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let h = &heap;
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                h.transact(|tx| {
                    inside_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    tx.get(END)
                })
            });
            inside_rx.recv().unwrap();
            // The peer's write: the lock looks free while the reader is inside.
            heap.lock().force_word_for_test(0);
            heap.transact(|tx| tx.alloc(8 << 20).map(drop)).unwrap(); // grows: a new mapping
            heap.lock().force_word_for_test(0);
            heap.size().unwrap(); // starts a transaction: lets go of the older mappings
            go_tx.send(()).unwrap();
            assert!(reader.join().unwrap().is_ok());
        });
    }

    /// Found by review: every transaction that found the end word past what this process mapped
    /// mapped the file anew and kept the old mapping, so a peer bumping the word a page at a time (the
    /// file grown sparse, for nothing) piled up mappings until `mmap` failed. A process now keeps two.
    #[test]
    fn a_peer_bumping_the_end_word_piles_up_no_mappings() {
        let heap = growable_heap();
        for _ in 0..20 {
            let end = heap.r().get(END).unwrap() + PAGE;
            let file = heap.region().file();
            file.set_len(end + PAYLOAD_OFFSET as u64).unwrap();
            heap.r().word(END).unwrap().store(end, Ordering::Relaxed);
            heap.size().unwrap();
        }
        assert_eq!(heap.r().get(END).unwrap(), (1 << 20) + 20 * PAGE);
        let mappings = heap.grown.lock().unwrap().len();
        assert!(mappings <= 2, "{mappings} mappings");
    }
}
