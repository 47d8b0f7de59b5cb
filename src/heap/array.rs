//! [`SharedArray<T>`]: a `[T]` in the shared heap, owned by the process that made it.
//!
//! # Why handing out `&[T]` and `&mut [T]` over shared memory is sound
//! A `SharedArray` derefs to a slice whose bytes live in an arena other processes can map. A Rust
//! reference promises that nothing else writes (for `&[T]`) or even reads (for `&mut [T]`) those bytes
//! while it lives. Here is who else can reach them, and why the promise holds.
//!
//! - **This process.** Only through the `SharedArray` that owns the block: `&self` gives `&[T]`,
//!   `&mut self` the only `&mut [T]`. No second object can name the same bytes: a handle decoded here
//!   (a `BlockHandle` inside any message, forged or not) is refused if it names an arena this process
//!   owns, so it never becomes a view aliasing an array this process mutates.
//! - **Other processes, cooperating.** They get a handle only when this process lends the array: the
//!   pool's chunk and transform calls hold the caller's `&SharedArray` (readers) or `&mut SharedArray`
//!   (the output, one disjoint range per task) until every task has finished, so the owner cannot touch
//!   the elements while they are lent, and the borrows the workers build cover only what they were
//!   given. Copies a `Parallel` call lends are never written and not reused while a view of them lives
//!   (see [`crate::parallel`]).
//! - **Other processes, not cooperating.** A process of the same user can open any arena through
//!   `/proc` and write it at any time. The trust model (DESIGN.md) is precise about what that buys
//!   it: *processes of the same user that can write a region are trusted not to break the aliasing
//!   rules of the data they deliberately share; they can never make this process read or write outside
//!   a region or jump to code.* Such a writer can make this process see elements change under a
//!   `&[T]` (a data race on the shared elements, which is the cooperation asked of peers), and nothing
//!   more: lengths and offsets this process uses are its own (from its allocator, in private memory) or
//!   checked against the arena's validated size with checked arithmetic before any reference is made,
//!   no pointer is ever read from shared memory, and `T: Pod` makes every bit pattern a valid `T`.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;

use super::{Block, BlockHandle, Heap};
use crate::error::{Error, Result};

/// A fixed-length array of `Pod` values in shared memory, for handing large data to other processes
/// without copying it: what travels is its (region, offset, length), never the elements.
///
/// The process that creates a `SharedArray` owns it: it reads and writes it like a slice (it derefs to
/// `[T]`), and dropping it returns the memory to the heap for reuse (fresh shared memory costs a page
/// fault per 4 KiB on first touch, so reuse matters). Other processes get access only through the pool,
/// which lends them the array for the duration of a call while the borrow checker keeps the owner out.
///
/// # Examples
/// ```
/// let mut a = mproc::SharedArray::from_slice(&[1.0f64, 2.0, 3.0])?;
/// a[0] = 10.0;
/// assert_eq!(a.iter().sum::<f64>(), 15.0);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct SharedArray<T: Pod> {
    block: Block,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> SharedArray<T> {
    fn alloc(len: usize) -> Result<Self> {
        const {
            assert!(
                std::mem::align_of::<T>() <= 64,
                "element alignment above 64 is not supported"
            )
        };
        // Checked: `len` is the caller's, and a wrapped product would allocate too little (review S3).
        // `Heap::alloc` refuses anything above `isize::MAX` bytes.
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(Error::OutOfMemory {
                requested: u64::MAX,
                available: isize::MAX as u64,
            })?;
        Ok(SharedArray {
            block: Heap::alloc(bytes)?,
            len,
            _t: PhantomData,
        })
    }

    /// `len` elements holding whatever their memory held: zeroes where it is fresh, and where the heap
    /// reuses a block (in whole or in part), whatever was last written there — an earlier array's
    /// elements, an earlier payload's encoding, or what workers wrote into a lent output range.
    /// Sound for any `T: Pod`, which every bit pattern is. It saves zeroing memory that is about to
    /// be overwritten (a 64 MiB `memset` of a reused block took 2–3.5 ms here).
    ///
    /// The rule for a caller: every element is written before the array is read or lent to anyone,
    /// and on an error the array is dropped without being lent. The pool's payload encoder
    /// (`pool::wire::encode_into`) is the one caller; its test shows a stale tail being zeroed.
    ///
    /// # Errors
    /// As [`SharedArray::zeroed`].
    pub(crate) fn for_overwrite(len: usize) -> Result<Self> {
        Self::alloc(len)
    }

    /// `len` zeroes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if `len` elements would exceed `isize::MAX` bytes; [`Error::Os`] if
    /// shared memory cannot be created.
    pub fn zeroed(len: usize) -> Result<Self> {
        let mut a = Self::alloc(len)?;
        // Memory the heap never handed out is zero already: writing it would only fault its pages in.
        let warm = a.block.warm_len().min(a.len * std::mem::size_of::<T>());
        let n = warm.div_ceil(std::mem::size_of::<T>().max(1)).min(a.len);
        a[..n].fill(T::zeroed());
        Ok(a)
    }

    /// A copy of `data`. Into a reused block it is one `memcpy`; into shared memory never used before,
    /// the bytes go to the kernel with `pwrite`, which fills the new pages without zeroing them first
    /// and without a page fault per 4 KiB page (1.4–3x faster than a `memcpy` through fresh pages here).
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created or its pages cannot be allocated.
    pub fn from_slice(data: &[T]) -> Result<Self> {
        let mut a = Self::alloc(data.len())?;
        a.block.copy_in(bytemuck::cast_slice(data))?;
        Ok(a)
    }

    /// A 2-D view with `cols` columns (row-major), or `None` unless the length is a whole number of rows.
    pub fn grid(&self, cols: usize) -> Option<super::Grid<'_, T>> {
        super::Grid::new(self, cols)
    }

    /// A mutable 2-D view with `cols` columns, or `None` unless the length is a whole number of rows.
    pub fn grid_mut(&mut self, cols: usize) -> Option<super::GridMut<'_, T>> {
        super::GridMut::new(self, cols)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn block_handle(&self) -> BlockHandle {
        self.block.handle()
    }

    /// Attaches to the elements another process lent us (crate use only: the lender's borrow guarantees
    /// exclusivity while we hold this).
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the handle names an arena this process owns (a view would alias the
    /// owner's `&mut`), lies outside its arena, or is not an aligned whole number of `T`; the errors of
    /// mapping another process's arena.
    pub(crate) fn view(h: &BlockHandle) -> Result<Self> {
        let block = Block::from_handle(h)?;
        let size = std::mem::size_of::<T>();
        if size == 0
            || block.len % size != 0
            || !(block.ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        {
            return Err(Error::Corrupted(format!(
                "a block of {} bytes is not an aligned array of {}",
                block.len,
                std::any::type_name::<T>()
            )));
        }
        let len = block.len / size;
        Ok(SharedArray {
            block,
            len,
            _t: PhantomData,
        })
    }

    /// Elements `range`, as a slice made from raw parts: unlike `&self[range]` it never materialises a
    /// reference to the whole array, so a process lent only `range` references only `range`. `None` if
    /// the range is not inside the array.
    pub(crate) fn range(&self, range: std::ops::Range<usize>) -> Option<&[T]> {
        let n = range
            .end
            .checked_sub(range.start)
            .filter(|_| range.end <= self.len)?;
        // SAFETY: `start..end` is inside the `len` elements of the block (checked), which lie in a live
        // mapping aligned for T (see `deref`); the slice borrows `self`. Only these elements are
        // referenced, which is what a process lent this range may reference.
        Some(unsafe {
            std::slice::from_raw_parts(self.block.ptr().cast::<T>().add(range.start), n)
        })
    }

    /// Elements `range`, mutably, from raw parts (see [`range`](Self::range)): a task lent one output
    /// range holds a `&mut` to that range only, not to the whole array that other tasks write.
    pub(crate) fn range_mut(&mut self, range: std::ops::Range<usize>) -> Option<&mut [T]> {
        let n = range
            .end
            .checked_sub(range.start)
            .filter(|_| range.end <= self.len)?;
        // SAFETY: as in `range`; `&mut self` makes this the only reference made by this object, and
        // the lender guarantees no other process references these elements while they are lent.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.block.ptr().cast::<T>().add(range.start), n)
        })
    }

    /// Whether every byte of the array is memory its arena holds, not a hole of a sparse file (see
    /// `Region::holds_memory`). A reader that walks a whole foreign block must ask first: a read
    /// fault on a hole of a memfd allocates a page here, so a peer's free sparse block would cost
    /// this process its whole size.
    ///
    /// # Errors
    /// [`Error::Os`] if the arena's file cannot be asked.
    pub(crate) fn holds_memory(&self) -> Result<bool> {
        self.block.holds_memory()
    }

    /// The block's first 8 bytes as an atomic word (`None` if the block is shorter), for a word both
    /// processes of a lent block read and write (the pool's answer blocks: `pool::answer`). Made from
    /// the raw pointer, so no slice reference covers it while others write it.
    pub(crate) fn head_word(&self) -> Option<&std::sync::atomic::AtomicU64> {
        let ptr = self.block.ptr();
        // A foreign block's offset comes from its handle, which anybody could have forged: check.
        if self.len.checked_mul(std::mem::size_of::<T>())? < 8 || !(ptr as usize).is_multiple_of(8)
        {
            return None;
        }
        // SAFETY: the block is at least 8 bytes inside a live mapping that `self` keeps (checked at
        // allocation or in `view`, and the length above), and `ptr` is 8-aligned (checked), so the
        // word is a valid, aligned `AtomicU64` (any 8 bytes are one). The reference borrows `self`,
        // so the mapping outlives it.
        Some(unsafe { &*ptr.cast::<std::sync::atomic::AtomicU64>() })
    }

    /// Whether this process owns (and will free) the array.
    #[cfg(test)]
    pub(crate) fn is_owner(&self) -> bool {
        self.block.is_owned()
    }
}

impl<T: Pod> Deref for SharedArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the block is `len * size_of::<T>()` bytes inside a live mapping (checked at allocation
        // or in `view`), aligned for T (blocks are 64-aligned and T's alignment is at most 64, or checked
        // in `view`); T: Pod accepts any bytes. Other processes only touch it while the pool lends it,
        // during which the owner's borrow is held by the pool call.
        unsafe { std::slice::from_raw_parts(self.block.ptr().cast::<T>(), self.len) }
    }
}

impl<T: Pod> DerefMut for SharedArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference in this process.
        unsafe { std::slice::from_raw_parts_mut(self.block.ptr().cast::<T>(), self.len) }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArray")
            .field("len", &self.len)
            .field("region", &self.block.region_id())
            .field("offset", &self.block.offset)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_really_zeroes_a_reused_block() {
        let mut a = SharedArray::<u64>::zeroed(1000).unwrap();
        a.fill(7);
        drop(a);
        let b = SharedArray::<u64>::zeroed(1000).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    /// Review S5 (gap 2): the process that owns an array cannot get a view of it from a handle (a
    /// forged one in a message, say), which would alias its `&mut`; a whole number of aligned elements
    /// is still required of views.
    #[test]
    fn views_only_of_other_processes_arrays() {
        let a = SharedArray::from_slice(&[1u32, 2, 3]).unwrap();
        assert!(matches!(
            SharedArray::<u32>::view(&a.block_handle()),
            Err(Error::Corrupted(_))
        ));
        assert!(a.is_owner());
    }

    #[test]
    fn view_sees_another_arenas_data() {
        use crate::heap::tests::{foreign_arena, handle_in};
        let r = foreign_arena(1 << 16);
        // SAFETY: the region is 64 KiB, page-aligned, and nothing else uses it yet.
        unsafe {
            r.as_ptr()
                .cast::<u32>()
                .copy_from_nonoverlapping([1u32, 2, 3].as_ptr(), 3)
        };
        let v = SharedArray::<u32>::view(&handle_in(&r, 0, 12)).unwrap();
        assert_eq!(&*v, &[1, 2, 3]);
        assert!(!v.is_owner());
        assert!(SharedArray::<[u8; 3]>::view(&handle_in(&r, 0, 4)).is_err());
        assert!(
            SharedArray::<u32>::view(&handle_in(&r, 2, 4)).is_err(),
            "misaligned"
        );
    }

    #[test]
    fn ranges_are_checked() {
        let mut a = SharedArray::from_slice(&[1u8, 2, 3, 4]).unwrap();
        assert_eq!(a.range(1..3), Some(&[2u8, 3][..]));
        assert_eq!(a.range(4..4), Some(&[][..]));
        assert_eq!(a.range(3..5), None);
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 3..1;
        assert_eq!(a.range(backwards), None);
        a.range_mut(0..2).unwrap().fill(9);
        assert_eq!(&*a, &[9, 9, 3, 4]);
        assert!(a.range_mut(usize::MAX..usize::MAX).is_none());
    }

    /// Review S3: the reproduction of the review, in debug and release builds alike.
    #[test]
    fn huge_arrays_are_errors() {
        let _small = SharedArray::<u8>::zeroed(10).unwrap();
        assert!(matches!(
            SharedArray::<u8>::zeroed(usize::MAX - 4095),
            Err(Error::OutOfMemory { .. })
        ));
        assert!(matches!(
            SharedArray::<u64>::zeroed(usize::MAX / 8),
            Err(Error::OutOfMemory { .. })
        ));
        assert!(matches!(
            SharedArray::<u64>::zeroed(usize::MAX / 4),
            Err(Error::OutOfMemory { .. })
        ));
    }

    #[test]
    fn fresh_arrays_are_zero_and_copies_exact() {
        // Serial, so that the last array reuses the dirty block of the one before.
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let z = SharedArray::<u64>::zeroed(3 << 20).unwrap();
        assert!(z.iter().all(|&x| x == 0));
        drop(z);
        let src: Vec<u32> = (0..(1u32 << 20))
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let a = SharedArray::from_slice(&src).unwrap();
        assert_eq!(&*a, &src[..]);
        drop(a);
        // Reused, so dirty: `zeroed` must write zeroes there.
        let z = SharedArray::<u32>::zeroed(1 << 20).unwrap();
        assert!(z.iter().all(|&x| x == 0));
    }

    /// Review (heap/fork): a `SharedArray` moved into a `fork` closure is dropped by the parent right
    /// after the fork (`process::fork::start` drops its copy of the closure), so the parent's heap
    /// hands the same block to its next array while the child still writes the old one: two processes
    /// each hold what safe code promises is the only `&mut` to those elements.
    #[test]
    fn an_array_moved_into_a_forked_child_is_not_reused_while_the_child_lives() {
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut a = SharedArray::<u64>::zeroed(4096).unwrap();
        let (id, off) = (a.block.region_id(), a.block.offset);
        let mut p = crate::Process::builder().fork(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            a.fill(0xdead);
            0u8
        });
        p.start().unwrap();
        // The parent's own new array, never shared with anyone.
        let b = SharedArray::<u64>::zeroed(4096).unwrap();
        let same = (b.block.region_id(), b.block.offset) == (id, off);
        p.join().unwrap();
        assert!(
            !same && b.iter().all(|&x| x == 0),
            "the parent's new array (same block: {same}) was written by the forked child"
        );
    }

    /// Found by review: only the arrays the parent's copy of a fork closure dropped were kept for the
    /// child. An array shared with the child through an `Arc` went back to the heap when the parent
    /// dropped its own `Arc` later (the child's clone lives in the child's memory, so the parent's
    /// count reached zero), and the parent's next array took its block: the child summed the parent's
    /// sevens through what safe code promised was an unchanging `&[u64]` of ones.
    #[test]
    fn an_array_a_forked_child_holds_through_an_arc_is_not_reused_while_the_child_lives() {
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let a = std::sync::Arc::new(SharedArray::<u64>::from_slice(&[1; 4096]).unwrap());
        let (id, off) = (a.block.region_id(), a.block.offset);
        let kept = a.clone();
        let (go_tx, go_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = crate::Process::builder().fork::<_, u64>(move || {
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut &go_rx, &mut b);
            kept.iter().sum()
        });
        p.start().unwrap();
        // The parent's last `Arc`: the child still holds its clone.
        drop(a);
        // The parent's own new array, never shared with anyone.
        let mut b = SharedArray::<u64>::zeroed(4096).unwrap();
        let same = (b.block.region_id(), b.block.offset) == (id, off);
        b.fill(7);
        // A byte, not an end of file: the child holds a copy of `go_tx` too.
        std::io::Write::write_all(&mut &go_tx, b"g").unwrap();
        let got = p.join_timeout(std::time::Duration::from_secs(20));
        let _ = p.kill();
        assert!(
            !same && got.as_ref().is_ok_and(|&s| s == 4096),
            "the parent's new array took the block of the child's (same block: {same}; the \
             child summed {got:?})"
        );
    }

    /// Review (heap/own-arena check): `Block::from_handle` decides "own arena" by the id in the handle,
    /// which must equal the id in the arena's header; but the header is shared memory that any process
    /// of our uid can open (through `/proc/<pid>/fd`) and rewrite. A peer that rewrites our arena's id
    /// and sends a handle with the new id gets this process to build a view aliasing its own array
    /// (a `&[T]` to memory a live `&mut [T]` of this process mutates).
    #[test]
    fn a_rewritten_header_id_does_not_make_an_own_arena_foreign() {
        #[derive(serde::Serialize, serde::Deserialize)]
        enum Src {
            Named(String),
            Fd { pid: u32, fd: i32 },
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Rh {
            id: u64,
            source: Src,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Bh {
            region: Rh,
            offset: u64,
            len: u64,
        }
        // An array that fills an arena of its own (64 MiB, never touched), so that rewriting its
        // header disturbs no other test's arrays.
        let mut held = Vec::new();
        let mine = loop {
            let a = SharedArray::<u8>::zeroed(crate::heap::ARENA_MIN).unwrap();
            if a.block.offset == 0 && a.block.region.len() == a.len() {
                break a;
            }
            held.push(a);
        };
        let h = mine.block_handle();
        let mut m: Bh = postcard::from_bytes(&postcard::to_allocvec(&h).unwrap()).unwrap();
        let old_id = m.region.id;
        let new_id = old_id ^ 0x5a5a_5a5a;
        m.region.id = new_id;
        assert!(matches!(m.region.source, Src::Fd { .. }));
        // What the peer does to our arena's header (region_id is at offset 32 of the mapping).
        let header = mine
            .block
            .region
            .as_ptr()
            .wrapping_sub(crate::region::PAYLOAD_OFFSET);
        // SAFETY: the header's region_id word, 8-aligned, inside our live mapping, atomic.
        let id_word =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(header.add(32).cast::<u64>()) };
        id_word.store(new_id, std::sync::atomic::Ordering::Relaxed);
        let forged: BlockHandle =
            postcard::from_bytes(&postcard::to_allocvec(&m).unwrap()).unwrap();
        let view = SharedArray::<u8>::view(&forged);
        id_word.store(old_id, std::sync::atomic::Ordering::Relaxed);
        let aliases = view
            .as_ref()
            .is_ok_and(|v| v.block.offset == mine.block.offset);
        assert!(
            view.is_err(),
            "a view of this process's own arena was built from a forged handle (aliases our \
             array: {aliases})"
        );
    }

    /// Review (heap/fork): a forked child's blocks were judged by its *main thread* (`is_alive` on
    /// the pid as a tid): a child whose main thread exited while another thread still wrote its
    /// captured array (its leader a zombie) counted as gone, and the parent reused the block under
    /// that thread. The lease words of `parallel` judge a process, for this reason; so must the heap.
    #[test]
    fn a_forked_child_with_an_exited_main_thread_keeps_its_arrays() {
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let a = SharedArray::<u64>::zeroed(4096).unwrap();
        let (id, off) = (a.block.region_id(), a.block.offset);
        let mut p = crate::Process::builder().fork::<_, u8>(move || {
            let writer = std::thread::spawn::<_, ()>(move || {
                let mut a = a;
                std::thread::sleep(std::time::Duration::from_millis(500));
                a.fill(0xdead);
                crate::sys::process::exit_immediately(0)
            });
            std::mem::forget(writer);
            // SAFETY: SYS_exit ends the calling thread only (not the group); it never returns, and
            // the writer thread ends the process.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("SYS_exit returned")
        });
        p.start().unwrap();
        let pid = p.pid().unwrap();
        // Wait (bounded) for the child's main thread to be gone, its leader a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            if state == Some('Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The parent's own new array, never shared with anyone.
        let b = SharedArray::<u64>::zeroed(4096).unwrap();
        let same = (b.block.region_id(), b.block.offset) == (id, off);
        let _ = p.join_timeout(std::time::Duration::from_secs(20));
        let _ = p.kill();
        let _ = p.join();
        assert!(
            !same && b.iter().all(|&x| x == 0),
            "the parent's new array (same block: {same}) was written by the forked child"
        );
    }

    /// Review (fork re-entrancy): the parent's copy of a forked child's closure is dropped with its
    /// blocks deferred until that child is gone (`heap::record_forked`). A captured value
    /// whose drop forks a child of its own (user code runs in those drops) ended the deferral for
    /// everything dropped after it: the nested call cleared the mark instead of restoring the outer
    /// one, and the next array of the parent reused the block the first child still held.
    #[test]
    fn a_fork_inside_the_drop_of_a_captured_value_keeps_the_deferral() {
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        struct ForksOnDrop;
        impl Drop for ForksOnDrop {
            fn drop(&mut self) {
                let mut p = crate::Process::builder().fork(|| 1u8);
                p.start().expect("the nested fork");
                let _ = p.join();
            }
        }
        let a = SharedArray::<u64>::zeroed(4096).unwrap();
        let (id, off) = (a.block.region_id(), a.block.offset);
        // A tuple drops its fields in order: the nested fork first, then the array.
        let captured = (ForksOnDrop, a);
        let (go_tx, go_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = crate::Process::builder().fork::<_, u64>(move || {
            let (_, a) = &captured;
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut &go_rx, &mut b);
            a.iter().sum()
        });
        p.start().unwrap();
        // The parent's own new array, never shared with anyone.
        let mut b = SharedArray::<u64>::zeroed(4096).unwrap();
        let same = (b.block.region_id(), b.block.offset) == (id, off);
        b.fill(7);
        // A byte, not an end of file: the child holds a copy of `go_tx` too.
        std::io::Write::write_all(&mut &go_tx, b"g").unwrap();
        let got = p.join_timeout(std::time::Duration::from_secs(20));
        let _ = p.kill();
        assert!(
            !same && got.as_ref().is_ok_and(|&s| s == 0),
            "the parent's new array took the block of the child's (same block: {same}; the \
             child summed {got:?})"
        );
    }

    /// A forked child sees an array its parent made after the fork, in an arena the child inherited
    /// (sent to it as a handle, as through a queue): the arena was its parent's, never the child's to
    /// allocate from, so the child's own-arena refusal must not take it for one of its own (a review
    /// proposed counting every inherited arena as the child's; this pins why that was not done).
    #[test]
    fn a_forked_child_views_an_array_its_parent_made_after_the_fork() {
        let _serial = crate::heap::tests::SERIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // An arena of this process exists before the fork.
        let _before = SharedArray::<u64>::zeroed(16).unwrap();
        let q = crate::Queue::<BlockHandle>::new(1).unwrap();
        let q2 = q.clone();
        let mut p = crate::Process::builder().fork(move || {
            let h = q2.get().expect("the handle");
            SharedArray::<u64>::view(&h).map(|v| v[0]).unwrap_or(0)
        });
        p.start().unwrap();
        let mut b = SharedArray::<u64>::zeroed(16).unwrap();
        assert!(
            Heap::is_own(b.block.region_id()),
            "made in an arena of this process"
        );
        b[0] = 42;
        q.put(&b.block_handle()).unwrap();
        let got = p.join_timeout(std::time::Duration::from_secs(60));
        if got.is_err() {
            let _ = p.kill();
        }
        assert_eq!(got.unwrap(), 42);
    }

    #[test]
    fn empty_arrays_work() {
        let a = SharedArray::<f64>::from_slice(&[]).unwrap();
        assert!(a.is_empty());
    }
}
