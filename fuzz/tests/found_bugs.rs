//! The bugs the fuzz targets found, as plain tests of the promised behaviour (no fuzzer, stable is
//! enough). Each failed when it was written; all are fixed in the crate now (each fix has its own test
//! there too), and these stay as regression tests of the reproducers. Run with
//! `cargo test --manifest-path fuzz/Cargo.toml --test found_bugs`. The bugs found in the crate's
//! internal wire formats (P*) are reached through `mproc::fuzz_hooks`, which exists only under
//! `--cfg fuzzing`: `RUSTFLAGS="--cfg fuzzing" cargo +nightly test --manifest-path fuzz/Cargo.toml
//! --test found_bugs` runs them too (without it they are listed as ignored).
//!
//! The promise is the crate's: a hostile file or handle gives a typed `mproc::Error`, never a panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use mproc::integrations::npy::{MappedArray, NpyChunk};
use serde::Serialize;

/// Records, per thread, the largest single heap request (I2 checks what `image::open` allocates; tests
/// run on threads of their own, so one test's allocations never count for another).
struct Tracking;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: forwards every call to `System` unchanged; only records the requested sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note_alloc(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note_alloc(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note_alloc(new);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mproc-known-bug-{name}-{}", std::process::id()))
}

fn npy_v1(dict: &str) -> Vec<u8> {
    let pre = 10;
    let hl = dict.len() + 1;
    let pad = (64 - (pre + hl) % 64) % 64;
    let h = format!("{dict}{}\n", " ".repeat(pad));
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(h.len() as u16).to_le_bytes());
    f.extend_from_slice(h.as_bytes());
    f
}

/// N1: a v1.0 header whose length field is 0 (or 1), in a file of 11 bytes or more. Expected:
/// `Err(BadFile { NotNpy })`; found: a panic in `read_npy_header` (`header[..got]`, header.rs).
#[test]
fn n1_npy_v1_header_shorter_than_the_prefix_read() {
    let path = tmp("n1");
    std::fs::write(&path, b"\x93NUMPY\x01\x00\x00\x00\x00\x00").unwrap();
    let r = catch_unwind(|| MappedArray::<u8>::open_npy(&path).map(drop));
    std::fs::remove_file(&path).unwrap();
    match r {
        Ok(Err(mproc::Error::BadFile { .. })) => {}
        Ok(other) => panic!("expected BadFile, got {other:?}"),
        Err(_) => panic!("open_npy panicked on a malformed header"),
    }
}

/// N2: a `.npy` file of 0 elements whose other axis is longer than `isize::MAX`: `open_npy` accepts it
/// (the length check sees 0 bytes), then `view()` panics ("the shape was checked against the file's
/// length at open", mod.rs) because ndarray refuses the shape.
#[test]
fn n2_npy_zero_axis_with_huge_axis_view() {
    let path = tmp("n2");
    std::fs::write(
        &path,
        npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (0, 9223372036854775808), }"),
    )
    .unwrap();
    let opened = MappedArray::<u8>::open_npy(&path);
    std::fs::remove_file(&path).unwrap();
    let Ok(a) = opened else {
        return; // refused at open with a typed error: fixed that way
    };
    let r = catch_unwind(AssertUnwindSafe(|| a.view().len()));
    assert!(
        r.is_ok(),
        "MappedArray::view panicked on an array open_npy accepted"
    );
}

/// N2 in a worker: a chunk handle decoded from a task message (what `NpyChunk`'s `Deserialize`
/// reads) naming a raw file with such a layout. `try_view` is documented to return the error; it
/// panics instead ("a chunk is whole slices of its array (checked when it was attached)", chunk.rs).
#[test]
fn n2_forged_chunk_try_view() {
    use std::os::unix::fs::MetadataExt;
    #[derive(Serialize)]
    struct FileId {
        dev: u64,
        ino: u64,
        len: u64,
        mtime_ns: i128,
    }
    #[derive(Serialize)]
    enum Order {
        C,
    }
    #[derive(Serialize)]
    struct NdLayout {
        shape: Vec<usize>,
        order: Order,
    }
    #[derive(Serialize)]
    struct Facts {
        data_offset: usize,
        layout: NdLayout,
        len: usize,
    }
    #[derive(Serialize)]
    struct ChunkHandle {
        path: PathBuf,
        id: FileId,
        facts: Facts,
        raw: bool,
        start: usize,
        end: usize,
    }
    let path = tmp("n2chunk");
    std::fs::write(&path, b"").unwrap();
    let m = std::fs::metadata(&path).unwrap();
    let h = ChunkHandle {
        path: path.clone(),
        id: FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        },
        facts: Facts {
            data_offset: 0,
            layout: NdLayout {
                shape: vec![0, 1 << 63],
                order: Order::C,
            },
            len: 0,
        },
        raw: true,
        start: 0,
        end: 0,
    };
    let bytes = postcard::to_allocvec(&h).unwrap();
    let chunk: NpyChunk<u8> = postcard::from_bytes(&bytes).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        chunk.try_view().map(|v| v.len()).is_ok()
    }));
    std::fs::remove_file(&path).unwrap();
    assert!(
        r.is_ok(),
        "NpyChunk::try_view panicked on a forged chunk handle"
    );
}

/// H1: a `.npy` header of nested `{` (here 14 of them, a 15-byte header) keeps `open_npy` parsing for
/// a time that grows about threefold per brace (`npyz` → `py_literal`'s pest grammar backtracks):
/// CPU time sized by the file, bounded only by `MAX_HEADER` (64 KiB, astronomically). Expected: an
/// error within milliseconds. Fails if it has not returned after 5 s (the parse goes on in the
/// background until the test process exits).
#[test]
fn h1_npy_nested_braces_parse_time() {
    let path = tmp("h1");
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    let h = format!("{}\n", "{".repeat(14));
    f.extend_from_slice(&(h.len() as u16).to_le_bytes());
    f.extend_from_slice(h.as_bytes());
    std::fs::write(&path, &f).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let r = MappedArray::<u8>::open_npy(&p).map(drop);
        let _ = tx.send(r.is_err());
    });
    let r = rx.recv_timeout(std::time::Duration::from_secs(5));
    std::fs::remove_file(&path).unwrap();
    assert!(
        r.is_ok(),
        "open_npy still parsing a 17-byte file (15-byte header) after 5 s"
    );
}

/// A PNG chunk: length, type, data, CRC-32.
fn chunk(t: &[u8], d: &[u8]) -> Vec<u8> {
    let mut v = (d.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(t);
    v.extend_from_slice(d);
    let mut crc_in = t.to_vec();
    crc_in.extend_from_slice(d);
    v.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    v
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// I1: `integrations::image::open` of a 70-byte PNG whose header claims 40000×40000 RGB (4.8 GB)
/// creates a 4.8 GB shared arena before the decoder fails on the missing data, and keeps it mapped
/// (the heap keeps its arenas). The docs promise the `image` crate's default limits (512 MiB per
/// allocation); `open` uses `ImageReader::into_decoder`, which does not reserve the output buffer
/// against `max_alloc` (only `ImageReader::decode` does). Expected: an error before any allocation.
#[test]
fn i1_image_open_huge_header_allocates() {
    let mut ihdr = 40000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&40000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", b""));
    let path = tmp("i1.png");
    std::fs::write(&path, &png).unwrap();
    let r = mproc::integrations::image::open::<image::Rgb<u8>>(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(r.is_err());
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let biggest = maps
        .lines()
        .filter(|l| l.contains("memfd:mproc"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .max()
        .unwrap_or(0);
    assert!(
        biggest <= 512 << 20,
        "image::open of a {}-byte file made a {biggest}-byte shared mapping",
        png.len()
    );
}

/// I2: `integrations::image::open` of a 66-byte PNG whose header claims 16384×16384 RGBA with 16-bit
/// channels, asked for as `Luma<u8>`. The shared buffer (256 MiB) passes the limit check that fixed
/// I1, but the file's pixel type is not the one asked for, so `open` takes the conversion path:
/// `DynamicImage::from_decoder` (image.rs) allocates the decoder's whole output, 2 GiB, as a `Vec`
/// sized by the header. `ImageReader::decode` reserves that buffer against the limits first; `open`
/// does not. Expected (docs: "the image crate's default limits apply (512 MiB per allocation)"): an
/// error before any allocation above 512 MiB. An RGB JPEG of 16384×16384 asked for as `Luma<u8>`
/// does the same with 768 MiB (and decodes "successfully" from 544 bytes, touching all of it).
/// Reproducer of the fuzzer (a 41-byte PNG of 5892×65540 RGB as `Luma<u8>`: a 1.16 GB `Vec`):
/// `repro/image_open-rgb-5892x65540-as-luma8-alloc.bin`.
#[test]
fn i2_image_open_conversion_path_allocates_past_the_limit() {
    let mut ihdr = 16384u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&16384u32.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit RGBA: 8 bytes a pixel
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", b""));
    let path = tmp("i2.png");
    std::fs::write(&path, &png).unwrap();
    LARGEST_ALLOC.with(|c| c.set(0));
    let r = mproc::integrations::image::open::<image::Luma<u8>>(&path).map(|i| i.dimensions());
    let largest = LARGEST_ALLOC.with(|c| c.get());
    std::fs::remove_file(&path).unwrap();
    assert!(
        largest <= 512 << 20,
        "image::open of a {}-byte file made a {largest}-byte heap allocation (result: {r:?})",
        png.len()
    );
}

/// I3: `integrations::image::open` of a 1×1 indexed PNG whose `PLTE` chunk is 4 bytes long (not a
/// whole number of RGB entries) panics: `png` 0.18.1 accepts the chunk, then slices 3 bytes out of
/// the 1-byte remainder when it builds its palette table (`decoder/transform/palette.rs:74`, reached
/// from `ImageDecoder::read_image` or `DynamicImage::from_decoder` in image.rs). Upstream:
/// image-rs/image-png#694. Expected: a typed error (`BadFile`), as for any other malformed image.
/// Reproducer of the fuzzer: `repro/image_open-plte-len-not-multiple-of-3.bin`.
#[test]
fn i3_image_open_short_palette_entry_panics() {
    let mut ihdr = 1u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]); // 8-bit indexed
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"PLTE", &[10, 20, 30, 40]));
    // One row: filter 0, index 0 (zlib of [0, 0]).
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", b""));
    let path = tmp("i3.png");
    std::fs::write(&path, &png).unwrap();
    for luma in [false, true] {
        let r = catch_unwind(|| {
            if luma {
                // The conversion path (`DynamicImage::from_decoder`).
                mproc::integrations::image::open::<image::Luma<u8>>(&path).map(|i| i.dimensions())
            } else {
                // The direct path (`read_image` into the shared buffer).
                mproc::integrations::image::open::<image::Rgb<u8>>(&path).map(|i| i.dimensions())
            }
        });
        if r.is_err() {
            std::fs::remove_file(&path).unwrap();
            panic!("image::open panicked on a PNG whose PLTE is 4 bytes long (luma: {luma})");
        }
    }
    std::fs::remove_file(&path).unwrap();
}

/// P1 (`pool_wire`, campaign of 2026-12-01): `pool::wire::Reassembly` let its buffer grow past its
/// cap. A task's fragments of 336 and then 4 bytes under a cap of 512 made a 672-byte buffer: `Vec`
/// doubles its capacity, so a body just under the pool's 256 MiB cap held 512 MiB in a worker or the
/// parent, whoever wrote the frames. Reproducer `repro/pool_wire-reassembly-capacity-past-cap.bin`
/// (mode 1 of the target: pushes and forgets under a cap of 512).
#[cfg(fuzzing)]
#[test]
fn p1_pool_reassembly_grows_past_its_cap() {
    use mproc::fuzz_hooks::pool::Reassembly;
    let (a, b) = (vec![1u8; 336], vec![2u8; 4]);
    let mut r = Reassembly::new(512);
    LARGEST_ALLOC.with(|c| c.set(0));
    assert_eq!(r.push(0, false, &a), None);
    assert_eq!(r.push(0, false, &b), None);
    let largest = LARGEST_ALLOC.with(|c| c.get());
    assert!(largest <= 512, "a {largest}-byte buffer under a cap of 512");
    let body = r.push(0, true, &[]).unwrap().unwrap();
    assert_eq!((body.len(), body.capacity() <= 512), (340, true));
}

#[cfg(not(fuzzing))]
#[test]
#[ignore = "needs mproc::fuzz_hooks: RUSTFLAGS=\"--cfg fuzzing\" cargo +nightly test --test found_bugs"]
fn p1_pool_reassembly_grows_past_its_cap() {}
