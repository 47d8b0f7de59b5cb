//! Which files this process maps, so that a writable mapping never aliases another mapping of the
//! same file: [`MappedArray::as_mut_slice`](super::MappedArray::as_mut_slice) hands out a `&mut [T]`,
//! and a `&[T]` of the same bytes through a second mapping (another `MappedArray`, an `NpyChunk`, a
//! hard link, another path to the file) would break Rust's aliasing rules in safe code.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The mappings of one file (by device and inode) live in this process.
#[derive(Debug, Default)]
struct Holds {
    readers: usize,
    writer: bool,
}

fn table() -> &'static Mutex<HashMap<(u64, u64), Holds>> {
    static TABLE: OnceLock<Mutex<HashMap<(u64, u64), Holds>>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The table's lock, held across a fork (see [`ForkNpyLocks`](super::ForkNpyLocks)).
pub(super) struct ForkTable {
    _table: MutexGuard<'static, HashMap<(u64, u64), Holds>>,
}

impl ForkTable {
    pub(super) fn before_fork() -> ForkTable {
        ForkTable {
            _table: table().lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// A live mapping's place in the table, given back when it is dropped (with the mapping it guards).
#[derive(Debug)]
pub(super) struct MappingHold {
    file: (u64, u64),
    writable: bool,
}

impl MappingHold {
    /// Records a mapping of the file `(dev, ino)`, or `None` if it would alias a writable one: a
    /// writable mapping is allowed only while no other mapping of the file is live, and no mapping
    /// while a writable one is.
    pub(super) fn take(dev: u64, ino: u64, writable: bool) -> Option<MappingHold> {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        let holds = t.entry((dev, ino)).or_default();
        if holds.writer || (writable && holds.readers > 0) {
            // Never a fresh entry: a fresh one holds nothing, and so refuses nothing.
            return None;
        }
        if writable {
            holds.writer = true;
        } else {
            holds.readers += 1;
        }
        Some(MappingHold {
            file: (dev, ino),
            writable,
        })
    }
}

impl Drop for MappingHold {
    fn drop(&mut self) {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(holds) = t.get_mut(&self.file) {
            if self.writable {
                holds.writer = false;
            } else {
                holds.readers = holds.readers.saturating_sub(1);
            }
            if !holds.writer && holds.readers == 0 {
                t.remove(&self.file);
            }
        }
    }
}
