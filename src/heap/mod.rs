//! The shared heap: large arrays in shared memory, handed to other processes as (region, offset, len).
//!
//! Arrays are carved out of *arenas*: anonymous regions of at least [`ARENA_MIN`] bytes. The allocator's
//! bookkeeping (a first-fit free list per arena, coalescing on free) lives in the private memory of the
//! process that allocates, because only that process allocates and frees; other processes only map
//! arenas and read the (region, offset, len) handles they are given, which they bounds-check against the
//! arena's validated size. Nothing in shared memory can steer the allocator.
//!
//! Memory facts that shape it (measured on this machine): first touch of shared memory costs ~2.3 µs
//! per 4 KiB page warm and 8–10 µs cold, so freed blocks are reused and arenas are kept for the life of
//! the process rather than unmapped; a process attaching to an arena maps it with `MAP_POPULATE`.

mod array;
mod grid;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::{Error, Result};
use crate::region::{layout_hash, Layout, Region, RegionHandle};
pub use array::SharedArray;
pub use grid::{Grid, GridMut};

/// The smallest arena: smaller arrays share one.
pub(crate) const ARENA_MIN: usize = 64 << 20;
/// Blocks start on a cache line, and large ones on a page, so SIMD loads and huge copies align.
const SMALL_ALIGN: usize = 64;
const PAGE: usize = 4096;

fn arena_layout(size: Option<usize>) -> Layout {
    Layout {
        type_name: "mproc::heap::Arena",
        hash: layout_hash("mproc::heap::Arena", 1, PAGE),
        size,
    }
}

struct Arena {
    region: Arc<Region>,
    /// offset → length of each free range, non-adjacent (coalesced).
    free: BTreeMap<usize, usize>,
}

impl Arena {
    fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let (&start, &size, at) = self.free.iter().find_map(|(start, size)| {
            let at = start.next_multiple_of(align);
            (at + len <= start + size).then_some((start, size, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if at + len < start + size {
            self.free.insert(at + len, start + size - at - len);
        }
        Some(at)
    }

    fn release(&mut self, mut offset: usize, mut len: usize) {
        if let Some((&prev, &plen)) = self.free.range(..offset).next_back() {
            if prev + plen == offset {
                self.free.remove(&prev);
                offset = prev;
                len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += nlen;
        }
        self.free.insert(offset, len);
    }
}

/// The allocating side of the heap; one per process.
pub(crate) struct Heap {
    arenas: Mutex<Vec<Arena>>,
}

/// A block of an arena, freed when dropped (in the process that allocated it).
pub(crate) struct Block {
    pub(crate) region: Arc<Region>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    owned: bool,
}

impl Heap {
    fn global() -> &'static Heap {
        static HEAP: OnceLock<Heap> = OnceLock::new();
        HEAP.get_or_init(|| Heap {
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// Allocates `len` bytes (uninitialised contents: zero for fresh memory, old data for reused blocks).
    pub(crate) fn alloc(len: usize) -> Result<Block> {
        let align = if len >= PAGE { PAGE } else { SMALL_ALIGN };
        let len = len.max(1);
        let heap = Heap::global();
        let mut arenas = heap.arenas.lock().unwrap_or_else(|e| e.into_inner());
        for arena in arenas.iter_mut() {
            if let Some(offset) = arena.alloc(len, align) {
                return Ok(Block {
                    region: arena.region.clone(),
                    offset,
                    len,
                    owned: true,
                });
            }
        }
        let size = len.next_multiple_of(2 << 20).max(ARENA_MIN);
        let region = Arc::new(Region::create_with(
            arena_layout(Some(size)),
            None,
            false,
            |_| Ok(()),
        )?);
        register(&region);
        let mut arena = Arena {
            region: region.clone(),
            free: BTreeMap::from([(0, size)]),
        };
        let offset = arena
            .alloc(len, align)
            .expect("a fresh arena fits its first block");
        arenas.push(arena);
        Ok(Block {
            region,
            offset,
            len,
            owned: true,
        })
    }

    fn release(block: &Block) {
        let heap = Heap::global();
        let mut arenas = heap.arenas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = arenas
            .iter_mut()
            .find(|a| Arc::ptr_eq(&a.region, &block.region))
        {
            a.release(block.offset, block.len);
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.owned {
            Heap::release(self);
        }
    }
}

/// Arenas mapped in this process, by region id: its own, and those of others it was handed.
fn mapped() -> &'static Mutex<HashMap<u64, Weak<Region>>> {
    static MAPPED: OnceLock<Mutex<HashMap<u64, Weak<Region>>>> = OnceLock::new();
    MAPPED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Arenas of other processes this process attached to (kept mapped; see `Block::from_handle`).
fn foreign() -> &'static Mutex<Vec<Arc<Region>>> {
    static FOREIGN: OnceLock<Mutex<Vec<Arc<Region>>>> = OnceLock::new();
    FOREIGN.get_or_init(|| Mutex::new(Vec::new()))
}

fn register(region: &Arc<Region>) {
    let mut m = mapped().lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|_, w| w.strong_count() > 0);
    m.insert(region.id(), Arc::downgrade(region));
}

/// Where a block lives, as it travels between processes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BlockHandle {
    pub(crate) region: RegionHandle,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Block {
    pub(crate) fn handle(&self) -> BlockHandle {
        BlockHandle {
            region: self.region.handle(),
            offset: self.offset as u64,
            len: self.len as u64,
        }
    }

    /// Attaches to a block made elsewhere: maps its arena (once per process, with MAP_POPULATE) and checks
    /// the range lies inside it. The block is a view: dropping it frees nothing.
    pub(crate) fn from_handle(h: &BlockHandle) -> Result<Block> {
        let region_id = h.region.id();
        let region = {
            let existing = mapped()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&region_id)
                .and_then(Weak::upgrade);
            match existing {
                Some(r) => r,
                None => {
                    let r = Arc::new(Region::open_handle_with(
                        &h.region,
                        arena_layout(None),
                        true,
                    )?);
                    register(&r);
                    // Another process's arena stays mapped for the life of this one: a worker is handed
                    // blocks of the same few arenas task after task, and re-mapping (with MAP_POPULATE)
                    // each time would cost more than the task.
                    foreign()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(r.clone());
                    r
                }
            }
        };
        let (offset, len) = (usize::try_from(h.offset), usize::try_from(h.len));
        let (Ok(offset), Ok(len)) = (offset, len) else {
            return Err(Error::Corrupted(format!(
                "block {}+{} does not fit this platform",
                h.offset, h.len
            )));
        };
        if offset.checked_add(len).is_none_or(|end| end > region.len()) {
            return Err(Error::Corrupted(format!(
                "block {offset}+{len} lies outside its {}-byte arena",
                region.len()
            )));
        }
        Ok(Block {
            region,
            offset,
            len,
            owned: false,
        })
    }

    pub(crate) fn region_id(&self) -> u64 {
        self.region.id()
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        // In bounds: checked at allocation or in `from_handle`.
        self.region.as_ptr().wrapping_add(self.offset)
    }

    #[cfg(test)]
    pub(crate) fn is_owned(&self) -> bool {
        self.owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_first_fit_and_coalescing() {
        let region = Arc::new(
            Region::create_with(arena_layout(Some(1 << 16)), None, false, |_| Ok(())).unwrap(),
        );
        let mut a = Arena {
            region,
            free: BTreeMap::from([(0, 1 << 16)]),
        };
        let x = a.alloc(100, 64).unwrap();
        let y = a.alloc(100, 64).unwrap();
        let z = a.alloc(100, 64).unwrap();
        assert_eq!((x, y, z), (0, 128, 256));
        a.release(y, 100);
        assert_eq!(a.alloc(50, 64), Some(128), "the hole is reused");
        a.release(128, 50);
        a.release(x, 100);
        a.release(z, 100);
        assert_eq!(
            a.free,
            BTreeMap::from([(0, 1 << 16)]),
            "everything coalesced back"
        );
        assert_eq!(a.alloc(1 << 17, 64), None);
    }

    /// Tests that check *where* a block lands must not race other tests allocating from the same heap.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn blocks_are_reused_after_drop() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let b = Heap::alloc(10_000).unwrap();
        let (id, off) = (b.region_id(), b.offset);
        drop(b);
        let c = Heap::alloc(10_000).unwrap();
        assert_eq!((c.region_id(), c.offset), (id, off));
    }

    #[test]
    fn handle_outside_the_arena_is_refused() {
        let b = Heap::alloc(100).unwrap();
        let mut h = b.handle();
        h.offset = u64::MAX - 10;
        assert!(matches!(Block::from_handle(&h), Err(Error::Corrupted(_))));
        h.offset = b.region.len() as u64;
        assert!(matches!(Block::from_handle(&h), Err(Error::Corrupted(_))));
    }
}
