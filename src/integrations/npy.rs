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
//!   claims, and lets `npyz` parse only those bytes;
//! - refuses element types other than the one asked for ([`FileProblem::Dtype`]), big-endian data
//!   ([`FileProblem::ByteOrder`]), the other memory order if one was required
//!   ([`FileProblem::Order`]), a shape whose size overflows ([`FileProblem::ShapeOverflow`]), and a
//!   file whose length is not exactly header + data ([`FileProblem::Length`]: truncated, or a header
//!   that lies about the shape);
//! - in a worker, checks the file is still the one the parent opened (device, inode, length,
//!   modification time) and that the chunk's range lies inside it.
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

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ::ndarray::{ArrayBase, ArrayViewD, ArrayViewMutD, Data, Dimension, IxDyn};
use bytemuck::Pod;
use npyz::{DType, Endianness, TypeStr, WriterBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ndarray::{NdLayout, Order, SharedNdArray};
use crate::error::{Error, FileProblem, Result};
use crate::sys::filemap::{self, FileId, FileMap};

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

/// What opening a file established: where the data starts and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Facts {
    data_offset: usize,
    layout: NdLayout,
    /// Elements (the product of the shape).
    len: usize,
}

/// Checks that `dtype` is `T` in little-endian (or byte-order-free) form.
fn check_dtype<T: Element>(path: &Path, dtype: &DType) -> Result<()> {
    let DType::Plain(want) = T::default_dtype() else {
        unreachable!("every Element is a plain number")
    };
    let found = match dtype {
        DType::Plain(t) => t,
        other => {
            return Err(bad(
                path,
                FileProblem::Dtype {
                    expected: want.to_string(),
                    found: other.descr(),
                },
            ))
        }
    };
    let same_kind =
        |t: &TypeStr| t.type_char() == want.type_char() && t.size_field() == want.size_field();
    if !same_kind(found) {
        return Err(bad(
            path,
            FileProblem::Dtype {
                expected: want.to_string(),
                found: found.to_string(),
            },
        ));
    }
    if found.endianness() == Endianness::Big && want.size_field() > 1 {
        return Err(bad(
            path,
            FileProblem::ByteOrder {
                found: found.to_string(),
            },
        ));
    }
    Ok(())
}

/// Reads and validates the header of the `.npy` file `file` (`file_len` bytes long) as an array of
/// `T`; see the [module docs](self) for every check.
fn read_npy_header<T: Element>(
    path: &Path,
    mut file: &File,
    file_len: u64,
    order: Option<Order>,
) -> Result<Facts> {
    let not_npy = |why: String| bad(path, FileProblem::NotNpy(why));
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut file, &mut pre).map_err(|e| Error::os("read", e))?;
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(not_npy("no .npy magic".into()));
    }
    let (prefix, header_len) = match pre[6] {
        1 => (10usize, usize::from(u16::from_le_bytes([pre[8], pre[9]]))),
        2 | 3 if got == 12 => (
            12,
            usize::try_from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))
                .unwrap_or(usize::MAX),
        ),
        v => return Err(not_npy(format!("unknown format version {v}.{}", pre[7]))),
    };
    if header_len > MAX_HEADER {
        return Err(not_npy(format!(
            "a header of {header_len} bytes (at most {MAX_HEADER} are read)"
        )));
    }
    let data_offset = prefix + header_len; // both small: no overflow
    if data_offset as u64 > file_len {
        return Err(bad(
            path,
            FileProblem::Length {
                expected: data_offset as u64,
                found: file_len,
            },
        ));
    }
    let mut header = vec![0u8; data_offset];
    header[..got].copy_from_slice(&pre[..got]);
    read_exact_at_most(&mut file, &mut header[got..]).map_err(|e| Error::os("read", e))?;
    // npyz multiplies the shape's lengths unchecked (a panic in debug builds, a wrapped product in
    // release): a shape whose element count overflows is refused before it sees it.
    if let Some(shape) = shape_in(&header[prefix..]) {
        if shape
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .is_none()
        {
            return Err(bad(path, FileProblem::ShapeOverflow { shape }));
        }
    }
    // npyz parses exactly these bytes: it can neither read further nor allocate more. A panic in it
    // (an arithmetic overflow the scan above missed, in a debug build) is a malformed header too.
    let parsed = std::panic::catch_unwind(|| npyz::NpyHeader::from_reader(&header[..]))
        .map_err(|_| not_npy("its header could not be parsed".into()))?
        .map_err(|e| not_npy(e.to_string()))?;
    check_dtype::<T>(path, &parsed.dtype())?;
    let file_order = match parsed.order() {
        npyz::Order::C => Order::C,
        npyz::Order::Fortran => Order::Fortran,
    };
    if let Some(want) = order.filter(|&o| o != file_order) {
        return Err(bad(
            path,
            FileProblem::Order {
                expected: want.name(),
                found: file_order.name(),
            },
        ));
    }
    let shape = parsed
        .shape()
        .iter()
        .map(|&n| usize::try_from(n).ok())
        .collect::<Option<Vec<usize>>>();
    let overflow = || {
        bad(
            path,
            FileProblem::ShapeOverflow {
                shape: parsed.shape().to_vec(),
            },
        )
    };
    let shape = shape.ok_or_else(overflow)?;
    facts::<T>(path, shape, file_order, data_offset, file_len).map_err(|e| match e {
        Error::Shape(_) => overflow(),
        e => e,
    })
}

/// The facts of `shape` elements of `T` at `data_offset` in a file of `file_len` bytes, checked: the
/// size does not overflow, the file is exactly that long, and the data is aligned for `T`.
fn facts<T: Pod>(
    path: &Path,
    shape: Vec<usize>,
    order: Order,
    data_offset: usize,
    file_len: u64,
) -> Result<Facts> {
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| Error::Shape("the shape's size overflows".into()))?;
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Error::Shape("the data's size overflows".into()))?;
    let expected = (data_offset as u64)
        .checked_add(bytes as u64)
        .ok_or_else(|| Error::Shape("the file's size overflows".into()))?;
    if expected != file_len {
        return Err(bad(
            path,
            FileProblem::Length {
                expected,
                found: file_len,
            },
        ));
    }
    if !data_offset.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(bad(
            path,
            FileProblem::NotNpy(format!(
                "its data starts at byte {data_offset}, not aligned for {}",
                std::any::type_name::<T>()
            )),
        ));
    }
    Ok(Facts {
        data_offset,
        layout: NdLayout { shape, order },
        len,
    })
}

/// The lengths of the `'shape': (…)` entry of a header's dict text, if it can be found and every
/// length is a number; `None` leaves the judgement to the parser.
fn shape_in(text: &[u8]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(text).ok()?;
    let key = text.find("'shape'").or_else(|| text.find("\"shape\""))?;
    let rest = &text[key + 7..];
    let open = rest.find('(')?;
    let close = rest[open..].find(')')? + open;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok())
        .collect()
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Fills `buf`; the caller checked the file is long enough, so a short read means it shrank.
fn read_exact_at_most(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    if read_up_to(r, buf)? < buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file shrank while its header was read",
        ));
    }
    Ok(())
}

/// A mapped file and what its header said.
#[derive(Debug)]
struct Mapped {
    /// `None` for a file without data bytes (no mapping of length 0 exists).
    map: Option<FileMap>,
    path: PathBuf,
    id: FileId,
    facts: Facts,
    /// A raw file: its layout was given by the caller, not read from a header.
    raw: bool,
    /// The element type it was validated for (its numpy descriptor): a mapping validated for one
    /// type is never reused for another.
    descr: String,
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
        let (file, id) = filemap::open_regular(path, writable)?;
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

    /// Opens and maps a `.npy` file of `T`s.
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
    /// byte `offset` to the end of the file.
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
    /// with `f: fn(NpyChunk<T>) -> R`. Each worker maps the file and reads its chunk in place. An
    /// array without elements has no chunks.
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
        let inner = facts.layout.inner().unwrap_or(0);
        let Some(step) = inner.checked_mul(chunk).filter(|&s| s > 0) else {
            return Vec::new();
        };
        let path = std::path::absolute(&self.mapped.path).unwrap_or(self.mapped.path.clone());
        (0..facts.len.div_ceil(step))
            .map(|i| {
                let start = i * step;
                NpyChunk {
                    handle: ChunkHandle {
                        path: path.clone(),
                        id: self.mapped.id,
                        facts: facts.clone(),
                        raw: self.mapped.raw,
                        start,
                        end: (start + step).min(facts.len),
                    },
                    mapped: Ok(self.mapped.clone()),
                    _t: PhantomData,
                }
            })
            .collect()
    }
}

/// What a chunk is, as it travels to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkHandle {
    path: PathBuf,
    id: FileId,
    facts: Facts,
    /// A raw file (no header): the layout in `facts` is the parent's, checked against the file's
    /// length; a `.npy` file's header is re-read and must say what `facts` says.
    raw: bool,
    /// Element range, in memory order.
    start: usize,
    end: usize,
}

/// A chunk of a [`MappedArray`], as a pool task receives it: the worker has mapped the file itself
/// and the chunk's elements are read in place. Made by [`MappedArray::chunks`]; it serializes as the
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
    handle: ChunkHandle,
    mapped: std::result::Result<Arc<Mapped>, Error>,
    _t: PhantomData<T>,
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
    fn attach(h: ChunkHandle) -> Result<Arc<Mapped>> {
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
        if !(h.start <= h.end
            && h.end <= mapped.facts.len
            && whole(h.start)
            && whole(h.end - h.start))
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
/// same file reuse the mapping (and its page tables). Bounded, like the heap's foreign arenas.
const CACHED_FILES: usize = 4;

fn cached(
    h: &ChunkHandle,
    descr: &str,
    open: impl FnOnce() -> Result<Mapped>,
) -> Result<Arc<Mapped>> {
    static CACHE: OnceLock<Mutex<VecDeque<Arc<Mapped>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(VecDeque::new()));
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

/// Writes `a` as a `.npy` file (this machine's little-endian descriptor), replacing `path`. A C- or
/// Fortran-contiguous array is written in its memory order with one `write` of its bytes; any other
/// layout is first copied into C order.
///
/// # Errors
/// [`Error::Os`] if the file cannot be written.
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
    let mut file = File::create(path.as_ref()).map_err(|e| Error::os("create", e))?;
    file.write_all(&header).map_err(io)?;
    file.write_all(bytemuck::cast_slice(data)).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ::ndarray::{Array2, Axis, ShapeBuilder};

    use super::*;
    use crate::Pool;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/integrations/testdata");

    fn fixture(name: &str) -> PathBuf {
        Path::new(FIXTURES).join(name)
    }

    /// A file in the temporary directory, removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(ext: &str) -> Temp {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Temp(
                std::env::temp_dir()
                    .join(format!("mproc-npy-test-{}-{n}.{ext}", std::process::id())),
            )
        }

        fn with(bytes: &[u8]) -> Temp {
            let t = Temp::new("npy");
            std::fs::write(&t.0, bytes).unwrap();
            t
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len(), "the header keeps its length");
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("found in the header");
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to.as_bytes());
        out
    }

    fn problem<T: std::fmt::Debug>(r: Result<T>) -> FileProblem {
        match r {
            Err(Error::BadFile { problem, .. }) => problem,
            other => panic!("expected BadFile, got {other:?}"),
        }
    }

    #[test]
    fn files_written_by_numpy_map_as_written() {
        let want = Array2::from_shape_fn((3, 4), |(r, c)| (r * 4 + c) as f64 * 1.5);
        let c = MappedArray::<f64>::open_npy(fixture("f8_c_3x4.npy")).unwrap();
        assert_eq!((c.order(), c.view()), (Order::C, want.view().into_dyn()));
        let f = MappedArray::<f64>::open_npy(fixture("f8_fortran_3x4.npy")).unwrap();
        assert_eq!(
            (f.order(), f.view()),
            (Order::Fortran, want.view().into_dyn())
        );
        assert_eq!(
            f.as_slice()[..3],
            [0.0, 6.0, 12.0],
            "column-major in memory"
        );
        let u = MappedArray::<u8>::open_npy(fixture("u1_2x3.npy")).unwrap();
        assert_eq!(u.as_slice(), &[0, 1, 2, 3, 4, 5]);
        let v2 = MappedArray::<i32>::open_npy(fixture("i4_v2_2x2x2.npy")).unwrap();
        assert_eq!((v2.shape(), v2.view()[[1, 1, 0]]), (&[2, 2, 2][..], 6));
        let scalar = MappedArray::<f32>::open_npy(fixture("f4_scalar.npy")).unwrap();
        assert_eq!(
            (scalar.shape(), scalar.as_slice()),
            (&[][..], &[7.5f32][..])
        );
        let empty = MappedArray::<i64>::open_npy(fixture("i8_empty_0x3.npy")).unwrap();
        assert_eq!((empty.shape(), empty.as_slice().len()), (&[0, 3][..], 0));
        assert!(empty.chunks(4).is_empty());
        let t = Temp::new("npy");
        write_npy(&t.0, &Array2::<u32>::zeros((3, 0))).unwrap();
        let no_cols = MappedArray::<u32>::open_npy(&t.0).unwrap();
        assert_eq!(
            (no_cols.view().shape(), no_cols.chunks(1).len()),
            (&[3, 0][..], 0)
        );
    }

    #[test]
    fn wrong_types_orders_and_byte_orders_are_typed_errors() {
        assert!(matches!(
            problem(MappedArray::<f32>::open_npy(fixture("f8_c_3x4.npy"))),
            FileProblem::Dtype { expected, found } if expected == "<f4" && found == "<f8"
        ));
        assert!(matches!(
            problem(MappedArray::<i64>::open_npy(fixture("f8_c_3x4.npy"))),
            FileProblem::Dtype { .. }
        ));
        assert!(matches!(
            problem(MappedArray::<f64>::open_npy(fixture("f8_bigendian_6.npy"))),
            FileProblem::ByteOrder { found } if found == ">f8"
        ));
        assert!(matches!(
            problem(MappedArray::<f64>::open_npy(fixture("record.npy"))),
            FileProblem::Dtype { .. }
        ));
        assert_eq!(
            problem(
                MappedArray::<f64>::options()
                    .order(Order::C)
                    .open_npy(fixture("f8_fortran_3x4.npy"))
            ),
            FileProblem::Order {
                expected: "C",
                found: "Fortran"
            }
        );
    }

    #[test]
    fn truncated_and_lying_files_are_typed_errors() {
        let good = std::fs::read(fixture("f8_c_3x4.npy")).unwrap();
        let truncated = Temp::with(&good[..good.len() - 8]);
        assert_eq!(
            problem(MappedArray::<f64>::open_npy(&truncated.0)),
            FileProblem::Length {
                expected: good.len() as u64,
                found: good.len() as u64 - 8
            }
        );
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(
            problem(MappedArray::<f64>::open_npy(&Temp::with(&longer).0)),
            FileProblem::Length { .. }
        ));
        // A header that claims more rows than the file holds (same header length).
        let lying = replaced(&good, "(3, 4)", "(9, 4)");
        assert_eq!(
            problem(MappedArray::<f64>::open_npy(&Temp::with(&lying).0)),
            FileProblem::Length {
                expected: 128 + 9 * 4 * 8,
                found: good.len() as u64
            }
        );
        // A shape whose size overflows.
        let from = format!("(3, 4), }}{}", " ".repeat(18));
        let overflow = replaced(&good, &from, "(4294967296, 4294967296), }");
        assert!(matches!(
            problem(MappedArray::<f64>::open_npy(&Temp::with(&overflow).0)),
            FileProblem::ShapeOverflow { .. }
        ));
        // Header only, cut in the middle; no magic; unknown version; a v2 header "of 1 GiB".
        for bytes in [
            &good[..40],
            &b"PK\x03\x04 not numpy at all"[..],
            &b"\x93NUMPY\x09\x00\x10\x00{}"[..],
            &b"\x93NUMPY\x02\x00\x00\x00\x00\x40{}"[..],
        ] {
            let p = problem(MappedArray::<f64>::open_npy(&Temp::with(bytes).0));
            assert!(
                matches!(p, FileProblem::NotNpy(_) | FileProblem::Length { .. }),
                "{p:?}"
            );
        }
        // A dict that lacks a key.
        let no_order = replaced(&good, "'fortran_order': False, ", &" ".repeat(24));
        assert!(matches!(
            problem(MappedArray::<f64>::open_npy(&Temp::with(&no_order).0)),
            FileProblem::NotNpy(_)
        ));
    }

    #[test]
    fn only_regular_files_are_opened() {
        assert_eq!(
            problem(MappedArray::<f64>::open_npy(FIXTURES)),
            FileProblem::NotRegular
        );
        let fifo = Temp::new("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo.0).status();
        if made.is_ok_and(|s| s.success()) {
            // Opening a FIFO for reading would block until a writer came: it must not even try.
            assert_eq!(
                problem(MappedArray::<f64>::open_npy(&fifo.0)),
                FileProblem::NotRegular
            );
        }
        assert!(matches!(
            MappedArray::<f64>::open_npy("/nonexistent/mproc.npy"),
            Err(Error::Os { .. })
        ));
    }

    #[test]
    fn written_files_read_back_and_writable_mappings_persist() {
        let t = Temp::new("npy");
        let a = Array2::from_shape_fn((5, 3).f(), |(r, c)| (r * 10 + c) as i16);
        write_npy(&t.0, &a).unwrap();
        let m = MappedArray::<i16>::open_npy(&t.0).unwrap();
        assert_eq!((m.order(), m.view()), (Order::Fortran, a.view().into_dyn()));
        // Neither C nor Fortran contiguous: written in C order.
        let every_other = a.slice(::ndarray::s![..;2, ..]);
        let t2 = Temp::new("npy");
        write_npy(&t2.0, &every_other).unwrap();
        let m = MappedArray::<i16>::open_npy(&t2.0).unwrap();
        assert_eq!((m.order(), m.view()), (Order::C, every_other.into_dyn()));
        drop(m);
        let mut w = MappedArray::<i16>::options()
            .writable(true)
            .open_npy(&t.0)
            .unwrap();
        w.view_mut()[[4, 2]] = -1;
        w.flush().unwrap();
        drop(w);
        assert_eq!(
            MappedArray::<i16>::open_npy(&t.0).unwrap().view()[[4, 2]],
            -1
        );
        let raw = Temp::new("bin");
        std::fs::write(&raw.0, [0u8; 4 + 12 * 4]).unwrap();
        let r = MappedArray::<u32>::options()
            .order(Order::Fortran)
            .open_raw(&raw.0, &[3, 4], 4)
            .unwrap();
        assert_eq!((r.order(), r.view().shape()), (Order::Fortran, &[3, 4][..]));
        assert!(matches!(
            problem(MappedArray::<u32>::options().open_raw(&raw.0, &[3, 4], 2)),
            FileProblem::Length { .. }
        ));
    }

    fn chunk_col_sums(c: NpyChunk<f64>) -> (usize, Vec<f64>) {
        let v = c.view().into_dimensionality::<::ndarray::Ix2>().unwrap();
        (c.first(), v.sum_axis(Axis(0)).to_vec())
    }

    fn chunk_row_sums(c: NpyChunk<f64>) -> (usize, Vec<f64>) {
        let v = c.view().into_dimensionality::<::ndarray::Ix2>().unwrap();
        (c.first(), v.sum_axis(Axis(1)).to_vec())
    }

    #[test]
    fn workers_read_chunks_in_place() {
        let pool = Pool::builder().workers(2).build().unwrap();
        let want = Array2::from_shape_fn((3, 4), |(r, c)| (r * 4 + c) as f64 * 1.5);
        let c = MappedArray::<f64>::open_npy(fixture("f8_c_3x4.npy")).unwrap();
        let parts = pool.map(chunk_col_sums, c.chunks(2)).unwrap();
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2]);
        let cols = parts.iter().fold(vec![0.0; 4], |acc, (_, p)| {
            acc.iter().zip(p).map(|(a, b)| a + b).collect()
        });
        assert_eq!(cols, want.sum_axis(Axis(0)).to_vec());
        // Fortran order: chunks are columns.
        let f = MappedArray::<f64>::open_npy(fixture("f8_fortran_3x4.npy")).unwrap();
        let parts = pool.map(chunk_row_sums, f.chunks(3)).unwrap();
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 3]);
        let rows = parts.iter().fold(vec![0.0; 3], |acc, (_, p)| {
            acc.iter().zip(p).map(|(a, b)| a + b).collect()
        });
        assert_eq!(rows, want.sum_axis(Axis(1)).to_vec());
    }

    /// A file replaced after the parent opened it is refused by the worker, which never maps the new
    /// one as if it were the old.
    #[test]
    fn a_changed_file_fails_the_task() {
        let pool = Pool::builder().workers(1).build().unwrap();
        let t = Temp::new("npy");
        write_npy(&t.0, &Array2::<f64>::ones((4, 2))).unwrap();
        let a = MappedArray::<f64>::open_npy(&t.0).unwrap();
        let chunks = a.chunks(2);
        write_npy(&t.0, &Array2::<f64>::ones((6, 2))).unwrap();
        let r = pool.map(chunk_col_sums, chunks);
        assert!(
            matches!(&r, Err(Error::TaskPanicked { message, .. }) if message.contains("changed")),
            "{r:?}"
        );
    }

    #[test]
    fn forged_ranges_are_refused() {
        let a = MappedArray::<f64>::open_npy(fixture("f8_c_3x4.npy")).unwrap();
        let good = a.chunks(1).remove(0).handle;
        for (start, end) in [
            (0, 13),
            (1, 4),
            (4, 2),
            (0, 3),
            (usize::MAX - 3, usize::MAX),
        ] {
            let h = ChunkHandle {
                start,
                end,
                ..good.clone()
            };
            assert!(
                matches!(NpyChunk::<f64>::attach(h), Err(Error::Corrupted(_))),
                "{start}..{end}"
            );
        }
        // A mapping validated for f64 is never reused for another element type.
        assert!(matches!(
            NpyChunk::<f32>::attach(good.clone()),
            Err(Error::BadFile {
                problem: FileProblem::Dtype { .. },
                ..
            })
        ));
        assert!(NpyChunk::<f64>::attach(good.clone()).is_ok());
        let bytes = postcard::to_allocvec(&good).unwrap();
        let chunk: NpyChunk<f64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(chunk.as_slice(), &[0.0, 1.5, 3.0, 4.5]);
        let gone = ChunkHandle {
            path: "/nonexistent/x.npy".into(),
            ..good
        };
        let bytes = postcard::to_allocvec(&gone).unwrap();
        let chunk: NpyChunk<f64> = postcard::from_bytes(&bytes).unwrap();
        assert!(chunk.try_view().is_err());
    }
}
