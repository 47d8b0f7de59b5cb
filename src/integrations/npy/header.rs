//! Reading and validating a `.npy` header as hostile input (see the [parent module](super)): a
//! bounded prefix, parsed by `npyz`, checked against the element type, the order asked for and the
//! file's length.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytemuck::Pod;
use npyz::{DType, Endianness, TypeStr};
use serde::{Deserialize, Serialize};

use super::{bad, Element, MAX_HEADER};
use crate::error::{Error, FileProblem, Result};
use crate::integrations::ndarray::{NdLayout, Order};

/// What opening a file established: where the data starts and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Facts {
    pub(super) data_offset: usize,
    pub(super) layout: NdLayout,
    /// Elements (the product of the shape).
    pub(super) len: usize,
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
pub(super) fn read_npy_header<T: Element>(
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
    // The prefix read may already hold more than the whole header (a v1 header of 0 or 1 bytes).
    let have = got.min(data_offset);
    let mut header = vec![0u8; data_offset];
    header[..have].copy_from_slice(&pre[..have]);
    read_exact_at_most(&mut file, &mut header[have..]).map_err(|e| Error::os("read", e))?;
    // npyz's parser of the dict (a PEG grammar) takes about three times longer per level of nested
    // brackets: 12 levels in a 13-byte header took seconds (found by fuzzing). A plain dtype's header
    // nests two (the dict, the shape), a structured one's four; anything deeper is refused unparsed.
    let depth = nesting_depth(&header[prefix..]);
    if depth > MAX_NESTING {
        return Err(not_npy(format!(
            "its header nests brackets {depth} deep (at most {MAX_NESTING})"
        )));
    }
    // npyz multiplies the shape's lengths unchecked, the element count and the strides (a panic in
    // debug builds, a wrapped product in release): a shape whose lengths, zeros aside, multiply past
    // a u64 is refused before it sees it. The scan must read the shape npyz will read, so it accepts
    // only what numpy writes (found by review: a list, hex lengths, a second 'shape' key, or a zero
    // axis beside huge ones got past the old scan, and npyz panicked).
    match shape_in(&header[prefix..]) {
        ShapeScan::Absent => {} // npyz reports the missing key
        ShapeScan::Refused(why) => return Err(not_npy(why)),
        ShapeScan::Found(shape) => {
            if shape
                .iter()
                .try_fold(1u64, |a, &n| a.checked_mul(n.max(1)))
                .is_none()
            {
                return Err(bad(path, FileProblem::ShapeOverflow { shape }));
            }
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
                expected: want.name().into(),
                found: file_order.name().into(),
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
pub(super) fn facts<T: Pod>(
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
    // ndarray refuses a shape whose nonzero lengths multiply past `isize::MAX` even when another
    // length is 0 (no elements at all), so such a shape could not be viewed: refuse it here.
    shape
        .iter()
        .try_fold(std::mem::size_of::<T>().max(1), |acc, &n| {
            acc.checked_mul(n.max(1))
        })
        .filter(|&b| b <= isize::MAX as usize)
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

/// What [`shape_in`] found.
#[derive(Debug, PartialEq, Eq)]
enum ShapeScan {
    /// No `'shape'` key: left to the parser, which refuses the header.
    Absent,
    /// A shape not as numpy writes it: refused, since the parser might read it otherwise.
    Refused(String),
    Found(Vec<u64>),
}

/// The lengths of the `'shape': (…)` entry of a header's dict text, as numpy writes it: one
/// `'shape'` (or `"shape"`) key followed by a colon, its value a tuple of decimal lengths.
fn shape_in(text: &[u8]) -> ShapeScan {
    let Ok(text) = std::str::from_utf8(text) else {
        return ShapeScan::Refused("its header is not UTF-8".into());
    };
    // Keys are Python string literals, whose escapes the parser decodes: `'\x73hape'` or
    // `'sh\u0061pe'` is the key `'shape'` to it, which a scan of the text does not see (found by
    // review: such a key hid a shape whose product overflowed, and npyz panicked). numpy writes
    // no backslash in the header of a plain dtype, so a header holding one is refused unparsed.
    if text.contains('\\') {
        return ShapeScan::Refused("its header holds a backslash (an escape in a string)".into());
    }
    // A key is followed by a colon; a field of a structured dtype named "shape" is not.
    let mut values = ["'shape'", "\"shape\""].iter().flat_map(|key| {
        text.match_indices(key).filter_map(|(at, key)| {
            let rest = text[at + key.len()..].trim_start();
            rest.strip_prefix(':').map(str::trim_start)
        })
    });
    let Some(value) = values.next() else {
        return ShapeScan::Absent;
    };
    if values.next().is_some() {
        return ShapeScan::Refused("its header names the shape twice".into());
    }
    let refused = || ShapeScan::Refused("its shape is not a tuple of decimal lengths".into());
    let Some((inside, _)) = value.strip_prefix('(').and_then(|v| v.split_once(')')) else {
        return refused();
    };
    let lengths: Option<Vec<u64>> = inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse::<u64>().ok())
                .flatten()
        })
        .collect();
    match lengths {
        Some(lengths) => ShapeScan::Found(lengths),
        // Digits past a u64 are a length too large for any file.
        None if inside
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b' ') =>
        {
            ShapeScan::Refused("a length of its shape does not fit 64 bits".into())
        }
        None => refused(),
    }
}

/// The deepest nesting of brackets a header may have: `{'descr': [('f', '<f8', (2,))], …}`.
const MAX_NESTING: usize = 4;

/// The deepest nesting of `(`, `[` and `{` in a header's dict text, counting every byte, inside string
/// literals too: a scan that skipped strings would have to agree with the parser on where each one
/// ends, and a plain dtype's header has no bracket in a string. An unbalanced closer just lowers the
/// count (never below zero); the parser judges the rest.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in text {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
