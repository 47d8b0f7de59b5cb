//! `.npy` and raw binary files mapped from disk (feature `npy`): joblib's memmap, without numpy.
//!
//! [`MappedArray::open_npy`] maps a `.npy` file `MAP_SHARED` after validating its header against
//! the element type asked for and against the file's length; views of it read the page cache in
//! place — no load step, no copy. [`MappedArray::chunks`] cuts it into [`NpyChunk`]s that a
//! [`Pool`](crate::Pool) hands to its workers: a chunk travels as (file identity, header facts,
//! range), and the worker maps the same file itself and reads its range straight from the page
//! cache, so nothing is copied from disk to worker. [`write_npy`] writes results back as `.npy`.
//!
//! The format is read and written with [`npyz`]: it parses a header on its own (`NpyHeader`: dtype,
//! shape, order), without touching the data, which is what a file we map ourselves needs (the
//! alternative, `ndarray-npy`, only views a whole file given as one slice).
//!
//! # Hostile files
//! A file (or a chunk's handle, decoded from a task message) is untrusted, so opening one:
//! - opens only regular files (a FIFO or device is refused without being opened for real);
//! - reads a header of at most [`MAX_HEADER`] bytes (a v2/v3 header may claim 4 GiB), whatever it
//!   claims, and lets `npyz` parse only those bytes, and only if its brackets nest at most four deep
//!   (`npyz`'s parser takes about three times longer per level: twelve levels in a 13-byte header
//!   took seconds) and it holds no backslash (an escape could spell a key the checks do not see);
//! - refuses element types other than the one asked for ([`FileProblem::Dtype`]), big-endian data
//!   ([`FileProblem::ByteOrder`]), the other memory order if one was required
//!   ([`FileProblem::Order`]), a shape whose size overflows ([`FileProblem::ShapeOverflow`]; also one
//!   with a zero length whose other lengths multiply past `isize::MAX`, which ndarray cannot view),
//!   and a file whose length is not exactly header + data ([`FileProblem::Length`]: truncated, or a
//!   header that lies about the shape);
//! - in a worker, checks the file is still the one the parent opened (device, inode, length,
//!   modification time) and that the chunk's range lies inside it; a mapping the worker kept from an
//!   earlier chunk is reused only while the chunk's path still names the file it maps.
//!
//! # A file truncated under a mapping
//! Files cannot be sealed: if another process truncates a mapped file, touching a page past its new
//! end kills the toucher with `SIGBUS` (as with `np.memmap` or any mapped reader). In a worker that
//! is a worker death, reported as [`Error::WorkerDied`] for its task; in
//! the parent it is fatal. Do not truncate files that are mapped.
//!
//! # Writable mappings
//! [`MappedArrayOptions::writable`] maps the file read-write in this process (changes go to the file;
//! [`MappedArray::flush`] writes them back now). Such a mapping is never lent to workers
//! ([`MappedArray::chunks`] panics on it): workers could otherwise read elements this process is
//! writing. Lend a read-only mapping; write results with [`write_npy`] or into a
//! [`SharedArray`](crate::SharedArray).
//!
//! A writable mapping is also the only mapping of its file in this process: opening a file (by any
//! path or hard link: files are told apart by device and inode) that this process maps writable, or
//! opening writable a file it maps already, is [`FileProblem::MappedWritable`] (the mappings a pool
//! worker caches for chunks it was lent count only while a chunk uses them: the others are let go of
//! when the file is opened writable). Its
//! [`as_mut_slice`](MappedArray::as_mut_slice) is a `&mut [T]`, and a `&[T]` of the same bytes
//! through a second mapping would break Rust's aliasing rules in safe code. Other processes writing
//! the file are outside what this process can check, as for any `MAP_SHARED` file (or `np.memmap`):
//! what they write shows in the mapping, elements of a `Pod` type accept any bytes, and the views
//! never reach outside the file's length as it was at open.

mod chunk;
mod header;
mod holds;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::ndarray::{ArrayBase, ArrayViewD, ArrayViewMutD, Data, Dimension, IxDyn};
use bytemuck::Pod;
use npyz::{DType, WriterBuilder};

use super::ndarray::{NdLayout, Order, SharedNdArray};
use crate::error::{Error, FileProblem, Result};
use crate::sys::filemap::{self, FileId, FileMap};
use chunk::ChunkHandle;
pub use chunk::NpyChunk;
use header::{facts, read_npy_header, Facts};
use holds::MappingHold;

/// The `.npy` integration's process-local locks, held by the thread that forks a child across the
/// `fork` (see `process::forklocks::ForkLocks`): a forked child that maps a file or attaches a chunk
/// takes them. The cache's before the table's: dropping a cached mapping under the cache's lock
/// gives its hold back under the table's; nothing is taken while the table's is held.
pub(crate) struct ForkNpyLocks {
    _cache: chunk::ForkCache,
    _table: holds::ForkTable,
}

impl ForkNpyLocks {
    pub(crate) fn before_fork() -> ForkNpyLocks {
        let cache = chunk::ForkCache::before_fork();
        let table = holds::ForkTable::before_fork();
        ForkNpyLocks {
            _cache: cache,
            _table: table,
        }
    }
}

/// The longest header read (bytes after the 8-byte magic and version). numpy writes a few hundred
/// bytes; its own reader refuses more than 10 000 unless told otherwise.
///
/// # Examples
/// ```
/// use mproc::integrations::npy::{MappedArray, MAX_HEADER};
/// # let path = std::env::temp_dir().join(format!("mproc-doc-mh-{}.npy", std::process::id()));
/// // A version 2.0 header claiming 1 GiB is refused before anything is read past its first bytes.
/// std::fs::write(&path, b"\x93NUMPY\x02\x00\x00\x00\x00\x40{}").unwrap();
/// assert!(MAX_HEADER < 1 << 30);
/// assert!(matches!(
///     MappedArray::<f64>::open_npy(&path),
///     Err(mproc::Error::BadFile { problem: mproc::FileProblem::NotNpy(_), .. })
/// ));
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub const MAX_HEADER: usize = 64 << 10;

mod sealed {
    pub trait Sealed {}
}

/// Element types a `.npy` file can be mapped as: the fixed-size numbers numpy and Rust agree on.
///
/// # Examples
/// ```
/// use mproc::integrations::npy::Element;
/// assert_eq!(<f64 as Element>::descr(), "<f8");
/// ```
pub trait Element: Pod + npyz::AutoSerialize + sealed::Sealed {
    /// The numpy descriptor this type is written with (`<f8`, `|u1`, …).
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::npy::Element;
    /// assert_eq!(<u8 as Element>::descr(), "|u1");
    /// ```
    fn descr() -> String {
        match Self::default_dtype() {
            DType::Plain(t) => t.to_string(),
            other => other.descr(),
        }
    }
}

macro_rules! elements {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {}
    )*};
}
elements!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

fn bad(path: &Path, problem: FileProblem) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        problem,
    }
}
/// A mapped file and what its header said.
#[derive(Debug)]
struct Mapped {
    /// `None` for a file without data bytes (no mapping of length 0 exists).
    map: Option<FileMap>,
    /// Absolute (made so at open, against the working directory of then).
    path: PathBuf,
    id: FileId,
    facts: Facts,
    /// A raw file: its layout was given by the caller, not read from a header.
    raw: bool,
    /// The element type it was validated for (its numpy descriptor): a mapping validated for one
    /// type is never reused for another.
    descr: String,
    /// Its entry among this process's mappings of the file: dropped after `map` (fields drop in
    /// order), so the file is not taken for unmapped while it still is.
    _hold: MappingHold,
}

impl Mapped {
    /// Opens and maps `path`; `layout` is `None` for a `.npy` file, or the shape and order of a raw
    /// file's data.
    fn open<T: Element>(
        path: &Path,
        writable: bool,
        order: Option<Order>,
        raw: Option<(NdLayout, usize)>,
    ) -> Result<Mapped> {
        // Absolute now: the path a chunk carries must name this file in a worker (whose working
        // directory may differ) and after this process changes its own.
        let path = &std::path::absolute(path).map_err(|e| Error::os("getcwd", e))?;
        let (file, id) = filemap::open_regular(path, writable)?;
        let hold = match MappingHold::take(id.dev, id.ino, writable) {
            Some(hold) => hold,
            // Mappings a worker caches for chunks of the file it was lent, and that no chunk uses
            // any more, must not keep a writer out for good: let them go and ask again.
            None if writable => {
                chunk::release_unused(id.dev, id.ino);
                MappingHold::take(id.dev, id.ino, writable)
                    .ok_or_else(|| bad(path, FileProblem::MappedWritable))?
            }
            None => return Err(bad(path, FileProblem::MappedWritable)),
        };
        let is_raw = raw.is_some();
        let facts = match raw {
            None => read_npy_header::<T>(path, &file, id.len, order)?,
            Some((layout, offset)) => facts::<T>(path, layout.shape, layout.order, offset, id.len)?,
        };
        let len = usize::try_from(id.len).map_err(|_| {
            bad(
                path,
                FileProblem::ShapeOverflow {
                    shape: facts.layout.shape.iter().map(|&n| n as u64).collect(),
                },
            )
        })?;
        let map = FileMap::new(&file, if facts.len == 0 { 0 } else { len }, writable)?;
        // The size was read before mapping: a file that changed in between is refused.
        if filemap::id(&file)? != id {
            return Err(bad(
                path,
                FileProblem::Changed("resized while it was opened".into()),
            ));
        }
        Ok(Mapped {
            map,
            path: path.to_path_buf(),
            id,
            facts,
            raw: is_raw,
            descr: T::descr(),
            _hold: hold,
        })
    }

    /// The `facts.len` elements, `T` as checked at open (type, alignment, length).
    fn elements<T: Pod>(&self) -> *mut T {
        match &self.map {
            // In bounds: `data_offset + len * size_of::<T>() == file length == mapping length`.
            Some(m) => m.as_ptr().wrapping_add(self.facts.data_offset).cast::<T>(),
            None => std::ptr::NonNull::<T>::dangling().as_ptr(),
        }
    }

    fn slice<T: Pod>(&self, range: std::ops::Range<usize>) -> &[T] {
        assert!(range.start <= range.end && range.end <= self.facts.len);
        // SAFETY: the mapping holds `facts.len` elements of `T` from `elements()` (the file's length
        // was checked to be exactly header + data before mapping, the mapping covers the whole file,
        // and the data offset is aligned for `T` in a page-aligned mapping; an empty file has no
        // mapping and a dangling, aligned pointer serves for zero elements); `range` lies inside them
        // (asserted). `T: Pod` accepts any bytes. The slice borrows `self`, which keeps the mapping.
        // Other writers of the file are the cooperation the trust model asks of peers (and a truncation
        // is a SIGBUS, documented), never an access outside the mapping.
        unsafe { std::slice::from_raw_parts(self.elements::<T>().add(range.start), range.len()) }
    }
}

/// An array mapped from a file (`MAP_SHARED`): a `.npy` file or raw binary data.
///
/// # Examples
/// ```
/// use mproc::integrations::npy::{write_npy, MappedArray};
///
/// let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
/// write_npy(&path, &ndarray::array![[1.0f64, 2.0], [3.0, 4.0]])?;
/// let a = MappedArray::<f64>::open_npy(&path)?; // mapped, not read
/// assert_eq!(a.view().shape(), &[2, 2]);
/// assert_eq!(a.as_slice().iter().sum::<f64>(), 10.0);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct MappedArray<T: Element> {
    mapped: Arc<Mapped>,
    _t: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for MappedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedArray")
            .field("path", &self.mapped.path)
            .field("shape", &self.mapped.facts.layout.shape)
            .field("order", &self.mapped.facts.layout.order)
            .field("writable", &self.is_writable())
            .finish()
    }
}

/// How to open a [`MappedArray`]: read-only or read-write, any order or one required.
///
/// # Examples
/// ```
/// use mproc::integrations::{ndarray::Order, npy::{write_npy, MappedArray}};
/// # let path = std::env::temp_dir().join(format!("mproc-doc-opt-{}.npy", std::process::id()));
/// write_npy(&path, &ndarray::array![[1i32, 2], [3, 4]])?;
/// let a = MappedArray::<i32>::options().order(Order::C).writable(true).open_npy(&path)?;
/// assert!(a.is_writable());
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct MappedArrayOptions<T> {
    writable: bool,
    order: Option<Order>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for MappedArrayOptions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedArrayOptions")
            .field("writable", &self.writable)
            .field("order", &self.order)
            .finish()
    }
}

impl<T: Element> MappedArrayOptions<T> {
    /// Map the file read-write (changes go to the file). Default: read-only.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    ///
    /// let path = std::env::temp_dir().join(format!("mproc-doc-w-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::array![1u32, 2, 3])?;
    /// let mut a = MappedArray::<u32>::options().writable(true).open_npy(&path)?;
    /// a.as_mut_slice()[0] = 10;
    /// a.flush()?;
    /// drop(a);
    /// assert_eq!(MappedArray::<u32>::open_npy(&path)?.as_slice(), &[10, 2, 3]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn writable(mut self, yes: bool) -> Self {
        self.writable = yes;
        self
    }

    /// Require this memory order ([`FileProblem::Order`] otherwise). Default: either.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::{ndarray::Order, npy::{write_npy, MappedArray}};
    ///
    /// let path = std::env::temp_dir().join(format!("mproc-doc-o-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::array![[1u8, 2], [3, 4]])?;
    /// assert!(MappedArray::<u8>::options().order(Order::C).open_npy(&path).is_ok());
    /// assert!(MappedArray::<u8>::options().order(Order::Fortran).open_npy(&path).is_err());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn order(mut self, order: Order) -> Self {
        self.order = Some(order);
        self
    }

    /// Opens and maps a `.npy` file of `T`s. A relative `path` is made absolute against the current
    /// directory now: that is the path its [chunks](MappedArray::chunks) name the file by.
    ///
    /// # Errors
    /// [`Error::BadFile`] for a file that is not a regular `.npy` file of `T`s of the right order and
    /// length (see the [module docs](self)); [`Error::Os`] if it cannot be opened or mapped.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let a = MappedArray::<f32>::options().open_npy(&path)?;
    /// assert_eq!(a.shape(), &[3, 2]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open_npy(self, path: impl AsRef<Path>) -> Result<MappedArray<T>> {
        let mapped = Mapped::open::<T>(path.as_ref(), self.writable, self.order, None)?;
        Ok(MappedArray {
            mapped: Arc::new(mapped),
            _t: PhantomData,
        })
    }

    /// Opens and maps a raw binary file: `shape` elements of `T` in this order (default C) from
    /// byte `offset` to the end of the file. A relative `path` is made absolute now, as by
    /// [`open_npy`](Self::open_npy).
    ///
    /// # Errors
    /// [`Error::BadFile`] unless the file is exactly `offset` + the data long and the data is aligned
    /// for `T`; [`Error::Os`] if it cannot be opened or mapped.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::npy::MappedArray;
    ///
    /// let path = std::env::temp_dir().join(format!("mproc-doc-raw-{}.bin", std::process::id()));
    /// std::fs::write(&path, [1u16, 2, 3, 4, 5, 6].map(u16::to_le_bytes).concat()).unwrap();
    /// let a = MappedArray::<u16>::options().open_raw(&path, &[2, 3], 0)?;
    /// assert_eq!(a.view()[[1, 2]], 6);
    /// assert!(MappedArray::<u16>::options().open_raw(&path, &[4, 4], 0).is_err());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open_raw(
        self,
        path: impl AsRef<Path>,
        shape: &[usize],
        offset: usize,
    ) -> Result<MappedArray<T>> {
        let layout = NdLayout {
            shape: shape.to_vec(),
            order: self.order.unwrap_or(Order::C),
        };
        let mapped = Mapped::open::<T>(path.as_ref(), self.writable, None, Some((layout, offset)))?;
        Ok(MappedArray {
            mapped: Arc::new(mapped),
            _t: PhantomData,
        })
    }
}

impl<T: Element> MappedArray<T> {
    /// Opens and maps a `.npy` file of `T`s read-only, in either order.
    ///
    /// # Errors
    /// As [`MappedArrayOptions::open_npy`].
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let a = MappedArray::<f32>::open_npy(&path)?;
    /// assert_eq!(a.shape(), &[3, 2]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open_npy(path: impl AsRef<Path>) -> Result<Self> {
        Self::options().open_npy(path)
    }

    /// Options to open with (read-write, a required order, a raw file).
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let a = MappedArray::<f32>::options().writable(true).open_npy(&path)?;
    /// assert!(a.is_writable());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn options() -> MappedArrayOptions<T> {
        MappedArrayOptions {
            writable: false,
            order: None,
            _t: PhantomData,
        }
    }

    /// The lengths of the axes.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// assert_eq!(MappedArray::<f32>::open_npy(&path)?.shape(), &[3, 2]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.mapped.facts.layout.shape
    }

    /// The memory order of the data.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// use mproc::integrations::ndarray::Order;
    /// assert_eq!(MappedArray::<f32>::open_npy(&path)?.order(), Order::C);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn order(&self) -> Order {
        self.mapped.facts.layout.order
    }

    /// Whether the mapping is writable.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// assert!(!MappedArray::<f32>::open_npy(&path)?.is_writable());
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_writable(&self) -> bool {
        self.mapped.map.as_ref().is_some_and(FileMap::is_writable)
    }

    /// The elements in memory order.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// assert_eq!(MappedArray::<f32>::open_npy(&path)?.as_slice(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_slice(&self) -> &[T] {
        self.mapped.slice(0..self.mapped.facts.len)
    }

    /// The elements in memory order, mutably.
    ///
    /// # Panics
    /// If the file was mapped read-only (an array without elements gives an empty slice either way).
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let mut a = MappedArray::<f32>::options().writable(true).open_npy(&path)?;
    /// a.as_mut_slice()[5] = 60.0;
    /// assert_eq!(a.view()[[2, 1]], 60.0);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let len = self.mapped.facts.len;
        if len == 0 {
            return &mut [];
        }
        assert!(self.is_writable(), "the file was mapped read-only");
        let ptr = self.mapped.elements::<T>();
        // SAFETY: as in `Mapped::slice` for the whole range; the mapping is writable (asserted), and
        // `&mut self` makes this the only reference made by this process: chunks (the only other way
        // in) are never made of a writable mapping, and `MappedArray` is not `Clone`.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// An n-d view (with the file's strides: C or Fortran).
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// assert_eq!(MappedArray::<f32>::open_npy(&path)?.view()[[2, 0]], 5.0);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn view(&self) -> ArrayViewD<'_, T> {
        self.mapped
            .facts
            .layout
            .view::<T, IxDyn>(self.as_slice())
            .expect("the shape was checked against the file's length at open")
    }

    /// A mutable n-d view.
    ///
    /// # Panics
    /// If the file was mapped read-only.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    ///
    /// let path = std::env::temp_dir().join(format!("mproc-doc-vm-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::Array2::<f32>::zeros((2, 3)))?;
    /// let mut a = MappedArray::<f32>::options().writable(true).open_npy(&path)?;
    /// a.view_mut().fill(0.5);
    /// assert_eq!(a.view().sum(), 3.0);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn view_mut(&mut self) -> ArrayViewMutD<'_, T> {
        let layout = self.mapped.facts.layout.clone();
        layout
            .view_mut::<T, IxDyn>(self.as_mut_slice())
            .expect("the shape was checked against the file's length at open")
    }

    /// Writes changes back to the file now (`msync`); a no-op for a read-only mapping.
    ///
    /// # Errors
    /// [`Error::Os`] if `msync` fails.
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
    /// let mut a = MappedArray::<f32>::options().writable(true).open_npy(&path)?;
    /// a.view_mut()[[0, 0]] = -1.0;
    /// a.flush()?; // on disk now
    /// drop(a);
    /// assert_eq!(MappedArray::<f32>::open_npy(&path)?.as_slice()[0], -1.0);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        match &self.mapped.map {
            Some(m) if m.is_writable() => m.flush(),
            _ => Ok(()),
        }
    }

    /// A copy in shared memory (one pass over the page cache), for the pool calls that take a
    /// [`SharedArray`](crate::SharedArray) — `transform` writing an output next to it, say. Keeps
    /// the shape and order.
    ///
    /// # Errors
    /// As [`SharedArray::from_slice`](crate::SharedArray::from_slice).
    ///
    /// # Examples
    /// ```
    /// # let path = std::env::temp_dir().join(format!("mproc-doc-ts-{}.npy", std::process::id()));
    /// use mproc::integrations::npy::{write_npy, MappedArray};
    /// write_npy(&path, &ndarray::array![[1u8, 2], [3, 4]])?;
    /// let shared = MappedArray::<u8>::open_npy(&path)?.to_shared()?;
    /// assert_eq!(shared.view()[[1, 0]], 3);
    /// assert_eq!(shared.as_shared().len(), 4);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn to_shared(&self) -> Result<SharedNdArray<T, IxDyn>> {
        let data = crate::SharedArray::from_slice(self.as_slice())?;
        SharedNdArray::from_shared(data, IxDyn(self.shape()), self.order())
    }

    /// The array cut into chunks of `chunk` indices along its outer axis in memory (rows of a C-order
    /// array, columns of a Fortran-order one), to hand to a pool's workers: `pool.map(f, a.chunks(n))`
    /// with `f: fn(NpyChunk<T>) -> R`. Each worker maps the file and reads its chunk in place. A
    /// `chunk` past the axis's length (`usize::MAX`, say) is one chunk of the whole array; an array
    /// without elements has no chunks.
    ///
    /// # Panics
    /// If `chunk` is 0, or the file was mapped writable (workers would read what this process
    /// writes; see the [module docs](self#writable-mappings)).
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::npy::{write_npy, MappedArray, NpyChunk};
    ///
    /// fn chunk_sum(c: NpyChunk<f64>) -> f64 {
    ///     c.view().sum()
    /// }
    ///
    /// let path = std::env::temp_dir().join(format!("mproc-doc-ch-{}.npy", std::process::id()));
    /// write_npy(&path, &ndarray::Array2::<f64>::ones((10, 4)))?;
    /// let a = MappedArray::<f64>::open_npy(&path)?;
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let sums = pool.map(chunk_sum, a.chunks(3))?; // rows 0..3, 3..6, 6..9, 9..10
    /// assert_eq!(sums, [12.0, 12.0, 12.0, 4.0]);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn chunks(&self, chunk: usize) -> Vec<NpyChunk<T>> {
        assert!(chunk > 0, "chunk must be at least 1");
        assert!(
            !self.is_writable(),
            "a writable mapping is not lent to workers: open the file read-only"
        );
        let facts = &self.mapped.facts;
        // Elements per index of the chunked axis; none (or an overflow, refused at open unless
        // another axis is empty) means no elements.
        let Some(inner) = facts.layout.inner().filter(|&i| i > 0) else {
            return Vec::new();
        };
        // A chunk past the axis's length is the whole array: `chunk * inner` may overflow, and
        // `len` is a whole number of `inner`s, so the step is at most `len` and never overflows.
        let Some(step) = inner
            .checked_mul(chunk.min(facts.len / inner))
            .filter(|&s| s > 0)
        else {
            return Vec::new();
        };
        (0..facts.len.div_ceil(step))
            .map(|i| {
                let start = i * step; // < len: `i < len / step` rounded up
                NpyChunk {
                    handle: ChunkHandle {
                        path: self.mapped.path.clone(),
                        id: self.mapped.id,
                        facts: facts.clone(),
                        raw: self.mapped.raw,
                        start,
                        end: start + step.min(facts.len - start),
                    },
                    mapped: Ok(self.mapped.clone()),
                    _t: PhantomData,
                }
            })
            .collect()
    }
}

/// Writes `a` as a `.npy` file (this machine's little-endian descriptor), replacing `path`. A C- or
/// Fortran-contiguous array is written in its memory order with one `write` of its bytes; any other
/// layout is first copied into C order.
///
/// The file is written beside `path` under a temporary name and renamed over it (through a symbolic
/// link to a file, over the link's target; a link to nothing is itself replaced by the new file), so
/// `path` never names a half-written file, and a process that maps the old file (this one included:
/// a [`MappedArray`] of it, a worker's chunk) keeps its old contents: truncating a mapped file in
/// place would kill whoever touches the lost pages (`SIGBUS`). A file that existed keeps its
/// permission bits, not its inode (hard links to it keep the old contents). Like `np.save`, nothing
/// is synced to disk.
///
/// # Errors
/// [`Error::BadFile`] with [`FileProblem::NotRegular`] if `path` names something other than a
/// regular file (a directory, a FIFO, a device), which is left as it is; [`Error::Os`] if the file
/// cannot be written (its temporary file is removed).
///
/// # Examples
/// ```
/// # let path = std::env::temp_dir().join(format!("mproc-doc-{}.npy", std::process::id()));
/// use mproc::integrations::npy::{write_npy, MappedArray};
/// write_npy(&path, &ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]])?;
/// let back = MappedArray::<f32>::open_npy(&path)?;
/// assert_eq!(back.view().sum(), 21.0);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn write_npy<T, S, D>(path: impl AsRef<Path>, a: &ArrayBase<S, D>) -> Result<()>
where
    T: Element,
    S: Data<Elem = T>,
    D: Dimension,
{
    use std::io::Write;
    let io = |e| Error::os("write .npy", e);
    let (order, standard);
    let data: &[T] = if let Some(s) = a.as_slice() {
        order = npyz::Order::C;
        s
    } else if a.view().reversed_axes().as_slice().is_some() {
        order = npyz::Order::Fortran;
        a.as_slice_memory_order().unwrap_or_default()
    } else {
        order = npyz::Order::C;
        standard = a.as_standard_layout();
        standard.as_slice().unwrap_or_default()
    };
    let shape: Vec<u64> = a.shape().iter().map(|&n| n as u64).collect();
    // The header, by npyz: it pads the dict and picks the format version. Its writer is dropped
    // before any element is written; its `Drop` then ignores the count mismatch (documented), and
    // the elements follow as raw bytes, which is what the header's native-endian dtype describes.
    let mut header = Vec::new();
    drop(
        npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(&shape)
            .order(order)
            .writer(&mut header)
            .begin_nd()
            .map_err(io)?,
    );
    let target = replaced_file(path.as_ref());
    // Only a regular file is replaced: the rename would put a regular file in the place of a FIFO or
    // a device (run as root, `write_npy("/dev/null", ..)` replaced the system's `/dev/null`; found
    // by review), and writing into one instead could block (a FIFO without a reader).
    if std::fs::metadata(&target).is_ok_and(|m| !m.is_file()) {
        return Err(bad(path.as_ref(), FileProblem::NotRegular));
    }
    let (mut file, temp) = create_beside(&target)?;
    let written = file
        .write_all(&header)
        .and_then(|()| file.write_all(bytemuck::cast_slice(data)))
        .map_err(io)
        .and_then(|()| {
            if let Ok(old) = std::fs::metadata(&target) {
                file.set_permissions(old.permissions())
                    .map_err(|e| Error::os("fchmod", e))?;
            }
            std::fs::rename(&temp, &target).map_err(|e| Error::os("rename", e))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The file [`write_npy`] replaces for `path`: the target of a symbolic link (so the link stays one),
/// else `path` itself, a link to nothing included (its target cannot be resolved).
fn replaced_file(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The most bytes of the target's file name a temporary file's name carries: with the dots, the pid
/// (10 digits at most), a counter (20) and the suffix, it stays far below `NAME_MAX` (255 bytes), which
/// the target's own name may come close to.
const TEMP_STEM: usize = 64;

/// A new file in `target`'s directory, named after it, that nobody else has opened (`O_EXCL`).
fn create_beside(target: &Path) -> Result<(File, PathBuf)> {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().unwrap_or_default().as_bytes();
    let stem = OsStr::from_bytes(&name[..name.len().min(TEMP_STEM)]);
    loop {
        let mut temp_name = OsString::from(".");
        temp_name.push(stem);
        temp_name.push(format!(
            ".{}.{}.mproc-tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut temp = target.to_path_buf();
        temp.set_file_name(temp_name);
        match File::options().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((f, temp)),
            // A leftover of a process that had our pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::os("create", e)),
        }
    }
}
