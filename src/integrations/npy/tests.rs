//! Tests of the `.npy` integration: numpy-written fixtures (`../testdata`), hostile headers,
//! workers reading chunks in place, changed files and forged handles.

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
        Temp(std::env::temp_dir().join(format!("mproc-npy-test-{}-{n}.{ext}", std::process::id())))
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
            expected: "C".into(),
            found: "Fortran".into()
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
    drop(m); // a file is mapped writable only while nothing else in this process maps it
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

#[test]
fn a_writable_mapping_is_the_only_mapping_of_its_file() {
    let t = Temp::new("npy");
    write_npy(&t.0, &::ndarray::array![1u32, 2, 3]).unwrap();
    let link = Temp::new("npy");
    std::fs::hard_link(&t.0, &link.0).unwrap();
    let writable = || MappedArray::<u32>::options().writable(true).open_npy(&t.0);
    // A reader (through another name of the same inode) keeps writers out...
    let r = MappedArray::<u32>::open_npy(&link.0).unwrap();
    assert_eq!(problem(writable()), FileProblem::MappedWritable);
    // ...and its chunks (which share its mapping) too, until the last is gone.
    let chunks = r.chunks(1);
    drop(r);
    assert_eq!(problem(writable()), FileProblem::MappedWritable);
    drop(chunks);
    // A writer keeps everyone out, readers and writers, by any name.
    let mut w = writable().unwrap();
    assert_eq!(
        problem(MappedArray::<u32>::open_npy(&link.0)),
        FileProblem::MappedWritable
    );
    assert_eq!(problem(writable()), FileProblem::MappedWritable);
    w.as_mut_slice()[0] = 7;
    drop(w);
    // Readers share.
    let (a, b) = (
        MappedArray::<u32>::open_npy(&t.0).unwrap(),
        MappedArray::<u32>::open_npy(&link.0).unwrap(),
    );
    assert_eq!(
        (a.as_slice(), b.as_slice()),
        (&[7, 2, 3][..], &[7, 2, 3][..])
    );
}

#[test]
fn write_npy_replaces_a_mapped_file_without_touching_its_mapping() {
    let dir = Temp::new("dir");
    std::fs::create_dir(&dir.0).unwrap();
    let path = dir.0.join("a.npy");
    write_npy(&path, &::ndarray::array![1.0f64, 2.0, 3.0]).unwrap();
    let old = MappedArray::<f64>::open_npy(&path).unwrap();
    // The same size: written in place, the old mapping would show the new values (and a shorter
    // file would have been truncated under it: SIGBUS).
    write_npy(&path, &::ndarray::array![4.0f64, 5.0, 6.0]).unwrap();
    assert_eq!(
        old.as_slice(),
        [1.0, 2.0, 3.0],
        "the old mapping keeps the old file"
    );
    let new = MappedArray::<f64>::open_npy(&path).unwrap();
    assert_eq!(new.as_slice(), [4.0, 5.0, 6.0]);
    // A link stays a link, and its target is what is replaced; no temporary file is left.
    let link = dir.0.join("link.npy");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    write_npy(&link, &::ndarray::array![7.0f64]).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        MappedArray::<f64>::open_npy(&path).unwrap().as_slice(),
        [7.0]
    );
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a.npy", "link.npy"]);
    drop((old, new));
    // A link to nothing is itself replaced by the new file (documented); nothing is made where it
    // pointed.
    let dangling = dir.0.join("dangling.npy");
    let nowhere = dir.0.join("nowhere.npy");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    write_npy(&dangling, &::ndarray::array![8.0f64]).unwrap();
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_file());
    assert!(!nowhere.exists());
    assert_eq!(
        MappedArray::<f64>::open_npy(&dangling).unwrap().as_slice(),
        [8.0]
    );
    std::fs::remove_file(&dangling).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir(&dir.0).unwrap();
}

/// Found by review: `write_npy` renamed its file over whatever the path named, so a FIFO (or, as
/// root, `/dev/null` or the `/dev/stdout` link) was replaced by a regular file. Only a regular file
/// (or a new name) is replaced; anything else is refused and left as it was.
#[test]
fn write_npy_replaces_only_regular_files() {
    use std::os::unix::fs::FileTypeExt;
    let dir = Temp::new("dir");
    std::fs::create_dir(&dir.0).unwrap();
    let fifo = dir.0.join("fifo.npy");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let link = dir.0.join("link.npy");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for path in [&fifo, &link] {
        let r = write_npy(path, &::ndarray::array![1u8, 2]);
        assert!(
            matches!(
                r,
                Err(Error::BadFile {
                    problem: FileProblem::NotRegular,
                    ..
                })
            ),
            "{}: {r:?}",
            path.display()
        );
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["fifo.npy", "link.npy"], "no temporary file is left");
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    std::fs::remove_dir(&dir.0).unwrap();
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

/// Found by review: a worker's cached mapping of a file was checked by device and inode only, so a
/// file truncated in place after the first chunk was mapped was read through that mapping: SIGBUS.
#[test]
fn a_file_changed_in_place_is_not_read_through_a_cached_mapping() {
    let t = Temp::new("npy");
    write_npy(&t.0, &Array2::<f64>::ones((4, 2))).unwrap();
    let a = MappedArray::<f64>::open_npy(&t.0).unwrap();
    let h = a.chunks(1).remove(0).handle;
    assert!(NpyChunk::<f64>::attach(h.clone()).is_ok()); // now cached
    drop(a);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(64)
        .unwrap();
    assert!(NpyChunk::<f64>::attach(h).is_err());
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
    // A 0-d array has one chunk, its one element: an empty range is not a view of it (this attached,
    // then `try_view` panicked where it returns an error).
    let scalar = MappedArray::<f32>::open_npy(fixture("f4_scalar.npy")).unwrap();
    let whole = scalar.chunks(1).remove(0).handle;
    assert_eq!((whole.start, whole.end), (0, 1));
    let empty = ChunkHandle {
        start: 0,
        end: 0,
        ..whole.clone()
    };
    assert!(matches!(
        NpyChunk::<f32>::attach(empty),
        Err(Error::Corrupted(_))
    ));
    assert!(NpyChunk::<f32>::attach(whole).is_ok());
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

/// A version 1.0 `.npy` file: `dict` padded with spaces to a 64-byte boundary, then `data`.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn headers_found_by_fuzzing_are_typed_errors() {
    // A v1 header of 0 or 1 bytes in a file longer than the 12 bytes first read (this panicked:
    // the prefix read held more than the whole header).
    for (len, tail) in [(0u8, &b"\0\0\0\0\0"[..]), (1, &b"{\0\0\0"[..])] {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&[len, 0]);
        bytes.extend_from_slice(tail);
        let p = problem(MappedArray::<f64>::open_npy(&Temp::with(&bytes).0));
        assert!(matches!(p, FileProblem::NotNpy(_)), "{p:?}");
    }
    // Deeply nested brackets: npyz's parser takes ~3x longer per level (days at 20). Refused unparsed,
    // whether the brackets close or not.
    for dict in [
        format!("{}}}", "{".repeat(30)),
        format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': (3, {}4{}), }}",
            "[".repeat(25),
            "]".repeat(25)
        ),
    ] {
        let p = problem(MappedArray::<f64>::open_npy(
            &Temp::with(&npy_v1(&dict, &[])).0,
        ));
        assert!(
            matches!(&p, FileProblem::NotNpy(why) if why.contains("nests")),
            "{p:?}"
        );
    }
    // A structured dtype nests four levels: still parsed, and refused for its type.
    let structured = "{'descr': [('a', '<f8', (2,))], 'fortran_order': False, 'shape': (1,), }";
    let p = problem(MappedArray::<f64>::open_npy(
        &Temp::with(&npy_v1(structured, &[0; 16])).0,
    ));
    assert!(matches!(p, FileProblem::Dtype { .. }), "{p:?}");
    // A zero axis beside one of 2^63: no elements, but ndarray refuses such a shape, so `view` could
    // not be built (this opened, then `view` panicked). Either order of the axes.
    for shape in ["(0, 9223372036854775808)", "(9223372036854775808, 0)"] {
        let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        let p = problem(MappedArray::<u8>::open_npy(
            &Temp::with(&npy_v1(&dict, &[])).0,
        ));
        assert!(matches!(p, FileProblem::ShapeOverflow { .. }), "{p:?}");
    }
    // Found by review: shapes the old scan misread, on which npyz's unchecked arithmetic panicked
    // (caught, but a process built with `panic = "abort"` died): refused before it parses them.
    for shape in [
        "(0, 4294967296, 4294967296)",
        "[4294967296, 4294967296]",
        "(0x100000000, 0x100000000)",
        "(1,), 'shape': (4294967296, 4294967296)",
        "(99999999999999999999999,)",
    ] {
        let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        let p = problem(MappedArray::<u8>::open_npy(
            &Temp::with(&npy_v1(&dict, &[])).0,
        ));
        assert!(
            match &p {
                FileProblem::ShapeOverflow { .. } => true,
                FileProblem::NotNpy(why) => !why.contains("could not be parsed"),
                _ => false,
            },
            "{shape}: {p:?}"
        );
    }
    // A key is a Python string literal: npyz decodes its escapes, so `'\x73hape'` is `'shape'` to it
    // (alone, or after a harmless `'shape'`, where the last one counts). Such a spelling got past the
    // scan, and npyz's unchecked product of the lengths panicked again. (A triple-quoted key, which
    // the parser does not take for one, is refused too.)
    for shape in [
        r"'\x73hape': (4294967296, 4294967296)",
        r"'sh\u0061pe': (4294967296, 4294967296)",
        r"'''shape''': (4294967296, 4294967296)",
        r#""""shape""": (4294967296, 4294967296)"#,
        r"'shape': (1,), 'sha\160e': (4294967296, 4294967296)",
        r"'sha\
pe': (4294967296, 4294967296)",
    ] {
        let dict = format!("{{'descr': '|u1', 'fortran_order': False, {shape}, }}");
        let p = problem(MappedArray::<u8>::open_npy(
            &Temp::with(&npy_v1(&dict, &[])).0,
        ));
        assert!(
            matches!(&p, FileProblem::NotNpy(why) if !why.contains("could not be parsed")),
            "{shape}: {p:?}"
        );
    }
    // A structured dtype with a field named "shape" is not a second shape.
    let field = "{'descr': [('shape', '<f8')], 'fortran_order': False, 'shape': (1,), }";
    let p = problem(MappedArray::<f64>::open_npy(
        &Temp::with(&npy_v1(field, &[0; 8])).0,
    ));
    assert!(matches!(p, FileProblem::Dtype { .. }), "{p:?}");
    // The fixtures' own headers are untouched by these checks.
    let ok = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 0), }";
    let a = MappedArray::<f64>::open_npy(&Temp::with(&npy_v1(ok, &[])).0).unwrap();
    assert_eq!(a.view().shape(), &[2, 0]);
}

#[test]
fn a_file_whose_name_is_not_utf8_is_lent_to_workers() {
    use std::os::unix::ffi::OsStrExt;
    let dir = Temp::new("dir");
    std::fs::create_dir(&dir.0).unwrap();
    let path = dir.0.join(std::ffi::OsStr::from_bytes(b"caf\xe9.npy"));
    write_npy(&path, &Array2::<f64>::ones((4, 2))).unwrap();
    let a = MappedArray::<f64>::open_npy(&path).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let parts = pool.map(chunk_col_sums, a.chunks(3)).unwrap();
    assert_eq!(parts, [(0, vec![3.0, 3.0]), (3, vec![1.0, 1.0])]);
    drop(a);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir(&dir.0).unwrap();
}

#[test]
fn chunk_handles_naming_impossible_paths_do_not_decode() {
    use std::os::unix::ffi::OsStringExt;
    let a = MappedArray::<f64>::open_npy(fixture("f8_c_3x4.npy")).unwrap();
    let chunk = a.chunks(1).remove(0);
    let decode = |path: Vec<u8>| {
        let mut h = chunk.handle.clone();
        h.path = std::ffi::OsString::from_vec(path).into();
        let bytes = postcard::to_allocvec(&h).unwrap();
        postcard::from_bytes::<NpyChunk<f64>>(&bytes).map(|c| c.as_slice().len())
    };
    // The honest handle, re-encoded, attaches; a NUL byte or a path past PATH_MAX does not decode.
    assert_eq!(
        decode(chunk.handle.path.clone().into_os_string().into_vec()).unwrap(),
        4
    );
    assert!(decode(b"/tmp/a\0b.npy".to_vec()).is_err());
    // A relative path would be resolved against the decoding process's working directory: refused,
    // even one that names the very file from here (lib tests run in the package root).
    let relative = b"src/integrations/testdata/f8_c_3x4.npy";
    assert!(decode(relative.to_vec()).is_err());
    assert!(decode(Vec::new()).is_err());
    assert!(decode([b"/".as_slice(), &[b'a'; 5000]].concat()).is_err());
}

/// A chunk size past the array's outer length (up to `usize::MAX`, whose size in elements overflows)
/// is one chunk of the whole array (it was no chunk at all when the product overflowed).
#[test]
fn huge_chunk_sizes_are_capped_to_the_whole_array() {
    let a = MappedArray::<f64>::open_npy(fixture("f8_c_3x4.npy")).unwrap();
    for chunk in [3, 4, 1 << 40, usize::MAX / 4 + 1, usize::MAX] {
        let chunks = a.chunks(chunk);
        assert_eq!(chunks.len(), 1, "chunk {chunk}");
        let h = &chunks[0].handle;
        assert_eq!((h.start, h.end), (0, 12), "chunk {chunk}");
        assert_eq!(chunks[0].view().shape(), &[3, 4]);
    }
    let f = MappedArray::<f64>::open_npy(fixture("f8_fortran_3x4.npy")).unwrap();
    let chunks = f.chunks(usize::MAX);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].view().shape(), &[3, 4]);
    let t = Temp::new("npy");
    write_npy(&t.0, &::ndarray::array![1u8, 2, 3]).unwrap();
    let flat = MappedArray::<u8>::open_npy(&t.0).unwrap();
    for chunk in [2, usize::MAX] {
        let ends: Vec<_> = flat.chunks(chunk).iter().map(|c| c.handle.end).collect();
        assert_eq!(ends, if chunk == 2 { vec![2, 3] } else { vec![3] });
    }
}

/// A worker keeps the mappings of files it was lent in its cache; a task that then opens one of those
/// files writable must not be refused for good (`MappedWritable`) by mappings no chunk uses any more.
#[test]
fn opening_writable_releases_unused_cached_mappings() {
    let t = Temp::new("npy");
    write_npy(&t.0, &::ndarray::array![1u32, 2, 3]).unwrap();
    let handle = MappedArray::<u32>::open_npy(&t.0)
        .unwrap()
        .chunks(3)
        .remove(0)
        .handle;
    // As in a worker: attached through the cache, which keeps the mapping after the chunk is gone.
    let attached = NpyChunk::<u32>::attach(handle).unwrap();
    let writable = || MappedArray::<u32>::options().writable(true).open_npy(&t.0);
    assert_eq!(
        problem(writable()),
        FileProblem::MappedWritable,
        "a mapping in use still keeps writers out"
    );
    drop(attached);
    let mut w = writable().expect("the cache let go of its unused mapping");
    w.as_mut_slice()[0] = 9;
    drop(w);
    assert_eq!(
        MappedArray::<u32>::open_npy(&t.0).unwrap().as_slice(),
        [9, 2, 3]
    );
}

/// A cache hit re-checks that the chunk's path still names the file that was mapped: a file replaced
/// (by `write_npy`'s rename) is refused as it is without the cache, never served from the old mapping.
#[test]
fn a_cached_mapping_of_a_replaced_file_is_not_served() {
    let t = Temp::new("npy");
    write_npy(&t.0, &::ndarray::array![1.0f64, 2.0]).unwrap();
    let a = MappedArray::<f64>::open_npy(&t.0).unwrap();
    let handle = a.chunks(2).remove(0).handle;
    let first = NpyChunk::<f64>::attach(handle.clone()).unwrap();
    assert_eq!(first.slice::<f64>(0..2), [1.0, 2.0]);
    drop(first);
    write_npy(&t.0, &::ndarray::array![3.0f64, 4.0]).unwrap();
    let again = NpyChunk::<f64>::attach(handle);
    assert!(
        matches!(
            &again,
            Err(Error::BadFile {
                problem: FileProblem::Changed(_),
                ..
            })
        ),
        "{again:?}"
    );
}

/// A chunk's path is made absolute when the array is opened, so it names the file that was opened
/// (a worker's working directory, or this process's later one, may differ; the multi-process test is
/// `ecosystem::npy_relative_path_is_resolved_when_opened`).
#[test]
fn a_relative_path_is_made_absolute_when_opened() {
    let relative = Path::new("src/integrations/testdata/f8_c_3x4.npy");
    let Ok(abs) = std::path::absolute(relative) else {
        return;
    };
    if !abs.exists() {
        return; // not run from the package root
    }
    let a = MappedArray::<f64>::open_npy(relative).unwrap();
    assert_eq!(a.chunks(2)[0].handle.path, abs);
    assert!(format!("{a:?}").contains(abs.to_str().unwrap()));
}

/// `write_npy`'s temporary file is named after the target, within `NAME_MAX` (255 bytes) even for a
/// target whose own name is near it (it failed with `ENAMETOOLONG`).
#[test]
fn write_npy_replaces_a_file_whose_name_is_250_bytes_long() {
    let dir = Temp::new("dir");
    std::fs::create_dir(&dir.0).unwrap();
    let name = format!("{}.npy", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let path = dir.0.join(&name);
    write_npy(&path, &::ndarray::array![1u8, 2]).unwrap();
    write_npy(&path, &::ndarray::array![3u8]).unwrap();
    assert_eq!(MappedArray::<u8>::open_npy(&path).unwrap().as_slice(), [3]);
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [name.as_str()], "no temporary file is left");
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir(&dir.0).unwrap();
}

/// A forked child looks at the chunk cache while another thread of its parent holds it (as every
/// chunk attach does). Until the fix the child inherited the lock held by a thread it does not have,
/// and hung for good.
#[test]
fn a_forked_child_uses_the_chunk_cache_whatever_another_thread_holds() {
    let got =
        crate::process::forklocks::tests::fork_while_held(chunk::ForkCache::before_fork, || {
            chunk::release_unused(0, 0);
            42
        });
    assert_eq!(got, Ok(42));
}

/// As above, with the table of mapped files (taken by every mapping made and dropped).
#[test]
fn a_forked_child_maps_whatever_another_thread_holds_the_table_of_mappings() {
    let got =
        crate::process::forklocks::tests::fork_while_held(holds::ForkTable::before_fork, || {
            let hold = holds::MappingHold::take(0, 0, false).expect("nothing maps file (0, 0)");
            drop(hold);
            42
        });
    assert_eq!(got, Ok(42));
}
