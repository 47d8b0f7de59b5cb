//! [`NpyChunk`]: a chunk of a mapped file as it travels to a worker and is attached there.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ::ndarray::{ArrayViewD, IxDyn};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::header::Facts;
use super::{bad, Element, Mapped};
use crate::error::{Error, FileProblem, Result};
use crate::integrations::ndarray::{NdLayout, Order};
use crate::sys::filemap::{self, FileId};

/// What a chunk is, as it travels to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChunkHandle {
    /// Absolute (made so when the array was opened: a worker's working directory may differ; a
    /// relative one does not decode), and carried as the OS's bytes: a file name need not be UTF-8.
    #[serde(with = "path_as_bytes")]
    pub(super) path: PathBuf,
    pub(super) id: FileId,
    pub(super) facts: Facts,
    /// A raw file (no header): the layout in `facts` is the parent's, checked against the file's
    /// length; a `.npy` file's header is re-read and must say what `facts` says.
    pub(super) raw: bool,
    /// Element range, in memory order.
    pub(super) start: usize,
    pub(super) end: usize,
}

/// A path as the bytes the OS knows it by. Decoding refuses what no open could take anyway (a NUL
/// byte, more than `PATH_MAX` bytes) and a relative path (which the decoding process would resolve
/// against its own working directory: a file the parent never opened), so a forged handle names at
/// most an ordinary absolute path.
mod path_as_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::de::Error as _;
    use serde::{Deserializer, Serializer};

    /// `PATH_MAX` on Linux, terminating NUL included.
    const PATH_MAX: usize = 4096;

    pub(super) fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes = serde_bytes_vec(d)?;
        if bytes.first() != Some(&b'/') || bytes.len() >= PATH_MAX || bytes.contains(&0) {
            return Err(D::Error::custom(
                "a chunk's path is not absolute, is longer than PATH_MAX or holds a NUL byte",
            ));
        }
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }

    /// Bytes as `serialize_bytes` wrote them (postcard: a length, then the bytes; the length is
    /// bounded by the message that holds them).
    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path's bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// A chunk of a [`MappedArray`](super::MappedArray), as a pool task receives it: the worker has mapped the file itself
/// and the chunk's elements are read in place. Made by [`MappedArray::chunks`](super::MappedArray::chunks); it serializes as the
/// file's identity and its range, never as elements.
///
/// # Examples
/// ```
/// use mproc::integrations::npy::{write_npy, MappedArray, NpyChunk};
///
/// fn rows_in(c: NpyChunk<u16>) -> usize {
///     c.view().shape()[0]
/// }
///
/// # let path = std::env::temp_dir().join(format!("mproc-doc-nc-{}.npy", std::process::id()));
/// write_npy(&path, &ndarray::Array2::<u16>::zeros((7, 3)))?;
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let a = MappedArray::<u16>::open_npy(&path)?;
/// assert_eq!(pool.map(rows_in, a.chunks(3))?, [3, 3, 1]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # When the worker cannot attach
/// Deserializing a chunk in the worker re-opens and re-validates the file. If that fails (the file
/// was replaced, resized or removed; a forged handle), the chunk carries the error:
/// [`try_view`](Self::try_view) and [`try_as_slice`](Self::try_as_slice) return it, and
/// [`view`](Self::view) and [`as_slice`](Self::as_slice) panic with its message, which the pool
/// reports to the caller as [`Error::TaskPanicked`] for that item. (The pool's wire format carries a
/// decode failure's kind but not its message, so failing the decode itself would lose the reason.)
pub struct NpyChunk<T: Element> {
    pub(super) handle: ChunkHandle,
    pub(super) mapped: std::result::Result<Arc<Mapped>, Error>,
    pub(super) _t: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for NpyChunk<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyChunk")
            .field("path", &self.handle.path)
            .field("range", &(self.handle.start..self.handle.end))
            .finish()
    }
}

impl<T: Element> NpyChunk<T> {
    /// The chunk as an n-d view: the whole array's shape with the outer axis in memory cut to the
    /// chunk's indices (rows of a C-order array, columns of a Fortran-order one).
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let chunks = MappedArray::<f32>::open_npy(&path)?.chunks(2); // rows 0..2 and 2..3
    /// assert_eq!(chunks[1].view().shape(), &[1, 2]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the worker could not attach to the file (see [`NpyChunk`]); the message is the error's.
    #[track_caller]
    pub fn view(&self) -> ArrayViewD<'_, T> {
        self.try_view().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The chunk as an n-d view, or why the worker could not attach to the file.
    ///
    /// # Errors
    /// [`Error::BadFile`] if the file is not the one the parent opened any more (or not a valid file
    /// of `T`s); [`Error::Corrupted`] for a range that is not whole slices inside the array;
    /// [`Error::Os`] if it could not be opened or mapped.
    ///
    /// # Examples
    /// ```
    /// # use mproc::integrations::npy::{write_npy, MappedArray};
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-tv-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::array![[1u8, 2], [3, 4], [5, 6]])?;
    /// let chunks = MappedArray::<u8>::open_npy(&path)?.chunks(2);
    /// assert_eq!(chunks[0].try_view().unwrap().shape(), &[2, 2]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_view(&self) -> std::result::Result<ArrayViewD<'_, T>, &Error> {
        let slice = self.try_as_slice()?;
        Ok(self
            .handle
            .facts
            .layout
            .view::<T, IxDyn>(slice)
            .expect("a chunk is whole slices of its array (checked when it was attached)"))
    }

    /// The chunk's elements, in memory order.
    ///
    /// # Examples
    /// ```
    /// # use mproc::integrations::npy::{write_npy, MappedArray};
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-cs-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::array![[1u8, 2], [3, 4], [5, 6]])?;
    /// let chunks = MappedArray::<u8>::open_npy(&path)?.chunks(2);
    /// assert_eq!(chunks[1].as_slice(), &[5, 6]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the worker could not attach to the file (see [`NpyChunk`]).
    #[track_caller]
    pub fn as_slice(&self) -> &[T] {
        self.try_as_slice().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The chunk's elements, or why the worker could not attach to the file.
    ///
    /// # Errors
    /// As [`try_view`](Self::try_view).
    ///
    /// # Examples
    /// ```
    /// # use mproc::integrations::npy::{write_npy, MappedArray};
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-ts-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::array![7i64, 8, 9])?;
    /// let chunks = MappedArray::<i64>::open_npy(&path)?.chunks(2);
    /// assert_eq!(chunks[1].try_as_slice().unwrap(), &[9]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_as_slice(&self) -> std::result::Result<&[T], &Error> {
        let m = self.mapped.as_ref()?;
        Ok(m.slice(self.handle.start..self.handle.end))
    }

    /// The memory order of the whole array, which says which axis the chunk cuts: axis 0 (rows) in
    /// C order, the last axis (columns) in Fortran order.
    ///
    /// # Examples
    /// ```
    /// # use mproc::integrations::{ndarray::Order, npy::{write_npy, MappedArray}};
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-co-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::Array2::<u8>::zeros((3, 2)))?;
    /// assert_eq!(MappedArray::<u8>::open_npy(&path)?.chunks(1)[0].order(), Order::C);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn order(&self) -> Order {
        self.handle.facts.layout.order
    }

    /// The chunk's first index along the chunked axis (its first row, for a C-order array).
    ///
    /// # Examples
    /// ```
    /// # use mproc::integrations::npy::{write_npy, MappedArray};
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-cf-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::Array2::<i32>::zeros((5, 2)))?;
    /// let firsts: Vec<usize> = MappedArray::<i32>::open_npy(&path)?.chunks(2).iter().map(|c| c.first()).collect();
    /// assert_eq!(firsts, [0, 2, 4]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn first(&self) -> usize {
        let inner = self.handle.facts.layout.inner().unwrap_or(0);
        self.handle.start.checked_div(inner).unwrap_or(0)
    }

    /// Attaches to the file a handle names, in a worker: re-opens and re-validates it, checks it is
    /// the very file the parent opened and that the range is whole slices inside it.
    pub(super) fn attach(h: ChunkHandle) -> Result<Arc<Mapped>> {
        let mapped = cached(&h, &T::descr(), || {
            let m = Mapped::open::<T>(&h.path, false, Some(h.facts.layout.order), raw_of(&h))?;
            if m.id != h.id || m.facts != h.facts || m.raw != h.raw {
                return Err(bad(
                    &h.path,
                    FileProblem::Changed(
                        "it is not the file the parent process opened any more".into(),
                    ),
                ));
            }
            Ok(m)
        })?;
        let inner = h.facts.layout.inner().filter(|&i| i > 0);
        let whole = |x: usize| inner.is_some_and(|i| x.is_multiple_of(i));
        // A 0-d array has no axis to cut: its one chunk is its one element, and any other range
        // (an empty one is whole slices of 1) has no view (found by review: `try_view` panicked).
        let cuttable = h.facts.layout.axis().is_some();
        if !(h.start <= h.end
            && h.end <= mapped.facts.len
            && whole(h.start)
            && whole(h.end - h.start)
            && (cuttable || h.end - h.start == mapped.facts.len))
        {
            return Err(Error::Corrupted(format!(
                "chunk {}..{} is not whole slices of a {}-element array",
                h.start, h.end, mapped.facts.len
            )));
        }
        if let Some(m) = &mapped.map {
            let size = std::mem::size_of::<T>();
            m.prefault(
                mapped.facts.data_offset + h.start * size,
                (h.end - h.start) * size,
            );
        }
        Ok(mapped)
    }
}

/// The layout `Mapped::open` is to assume: a raw file's, from the handle (checked against the file's
/// length there); none for a `.npy` file, whose header is re-read, never taken from the handle.
fn raw_of(h: &ChunkHandle) -> Option<(NdLayout, usize)> {
    h.raw.then(|| (h.facts.layout.clone(), h.facts.data_offset))
}

/// Mappings a worker keeps for the files its chunks name, most recently used last: tasks over the
/// same file reuse the mapping (and its page tables) while the chunk's path still names the file that
/// was mapped (checked on every hit). Bounded, like the heap's foreign arenas.
const CACHED_FILES: usize = 4;

/// The cache: each entry is a reference to a mapping, cloned only under this lock, so an entry whose
/// reference is the only one (`Arc::strong_count == 1`, read under the lock) is used by no chunk and
/// cannot become used while the lock is held.
fn cache() -> &'static Mutex<VecDeque<Arc<Mapped>>> {
    static CACHE: OnceLock<Mutex<VecDeque<Arc<Mapped>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// The cache's lock, held across a fork (see [`ForkNpyLocks`](super::ForkNpyLocks)).
pub(super) struct ForkCache {
    _cache: MutexGuard<'static, VecDeque<Arc<Mapped>>>,
}

impl ForkCache {
    pub(super) fn before_fork() -> ForkCache {
        ForkCache {
            _cache: cache().lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Lets go of the cached mappings of the file `(dev, ino)` that no chunk uses, so that this process
/// may map it writable (a writable mapping must be its file's only one): a worker that was lent
/// chunks of a file would otherwise refuse to open it writable for as long as it lives.
pub(super) fn release_unused(dev: u64, ino: u64) {
    let unused: VecDeque<Arc<Mapped>> = {
        let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
        let (unused, kept) = c
            .drain(..)
            .partition(|m| (m.id.dev, m.id.ino) == (dev, ino) && Arc::strong_count(m) == 1);
        *c = kept;
        unused
    };
    // Dropped outside the cache's lock: unmapping gives the mapping's hold back under its own lock.
    drop(unused);
}

fn cached(
    h: &ChunkHandle,
    descr: &str,
    open: impl FnOnce() -> Result<Mapped>,
) -> Result<Arc<Mapped>> {
    let cache = cache();
    let hit = {
        let c = cache.lock().unwrap_or_else(|e| e.into_inner());
        c.iter()
            .find(|m| {
                m.id == h.id
                    && m.path == h.path
                    && m.facts == h.facts
                    && m.raw == h.raw
                    && m.descr == descr
            })
            .cloned()
    };
    // The hit is the file the path named when it was mapped, as it was then; the path may name
    // another file now (`write_npy` renames a new one over it), or the file may have been truncated
    // or rewritten in place, which a fresh open refuses as changed: so must a hit (found by review: a
    // hit checked device and inode only, and a worker read a truncated file's mapping: SIGBUS).
    // Stat'ed outside the lock; a stale entry is dropped from the cache (and unmapped) here.
    let hit = match hit {
        Some(m) if filemap::id_at(&h.path).is_ok_and(|now| now == m.id) => Some(m),
        Some(stale) => {
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            c.retain(|x| !Arc::ptr_eq(x, &stale));
            drop(c);
            drop(stale);
            None
        }
        None => None,
    };
    let m = match hit {
        Some(m) => m,
        None => Arc::new(open()?),
    };
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    c.retain(|x| !Arc::ptr_eq(x, &m));
    c.push_back(m.clone());
    while c.len() > CACHED_FILES {
        c.pop_front();
    }
    Ok(m)
}

impl<T: Element> Serialize for NpyChunk<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.handle.serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for NpyChunk<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let handle = ChunkHandle::deserialize(d)?;
        // Not a decode error: the pool's wire format would keep only "a deserialization error", and
        // the caller should learn that the file changed (see "When the worker cannot attach").
        let mapped = NpyChunk::<T>::attach(handle.clone());
        Ok(NpyChunk {
            handle,
            mapped,
            _t: PhantomData,
        })
    }
}
