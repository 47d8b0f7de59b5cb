//! `integrations::image::open` (feature `image`) on a hostile image file: the `image` crate's decoder
//! reads the header, then `open` allocates the shared pixel buffer (`SharedArray::zeroed`) from the
//! header's dimensions and decodes into it. The module docs promise the `image` crate's default limits
//! apply (512 MiB per allocation), and the trust model says no allocation is sized by what a peer wrote.
//!
//! Besides panics, the harness checks `/proc/self/maps` after each call: a shared-memory mapping of
//! mproc's (`/memfd:mproc…`) larger than 512 MiB means `open` sized a buffer by the file's header beyond
//! the promised limit (the heap keeps its arenas mapped for the life of the process, so the mapping is
//! still there after `open` returned an error). That is reported as a crash (abort). A heap arena is
//! the buffer rounded up to 2 MiB plus a region header, so the mapping may exceed the buffer by that
//! much ([`MAPPING_SLACK`]).
//!
//! The same promise for the heap: the target's global allocator records the largest single request
//! made during the call; one above 512 MiB (a `Vec` sized by the file's header past the limit, e.g.
//! the decoder's own buffer when the file's pixel type is not the one asked for) is a crash too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproc_fuzz::run;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const LIMIT: u64 = 512 << 20;
/// What a heap arena adds to the buffer it holds: rounding up to 2 MiB, and the region's header page.
const MAPPING_SLACK: u64 = (2 << 20) + 4096;

/// The largest single heap request since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Tracking;

// SAFETY: forwards every call to `System` unchanged; only records the requested sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn path() -> &'static std::path::PathBuf {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| std::env::temp_dir().join(format!("mproc-fuzz-img-{}", std::process::id())))
}

/// The largest mapping of an mproc memfd, in bytes.
fn largest_mproc_mapping() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("memfd:mproc"))
        .filter_map(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .max()
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let _ = std::fs::remove_file(path());
    std::fs::write(path(), file).unwrap();
    LARGEST.store(0, Ordering::Relaxed);
    let r: Option<String> = match sel % 4 {
        0 => run("image::open Rgb8", || {
            mproc::integrations::image::open::<image::Rgb<u8>>(path())
                .map(|i| i.dimensions())
                .map_err(|e| e.to_string())
                .err()
        }),
        1 => run("image::open Luma8", || {
            mproc::integrations::image::open::<image::Luma<u8>>(path())
                .map(|i| i.dimensions())
                .map_err(|e| e.to_string())
                .err()
        }),
        2 => run("image::open Rgba16", || {
            mproc::integrations::image::open::<image::Rgba<u16>>(path())
                .map(|i| i.dimensions())
                .map_err(|e| e.to_string())
                .err()
        }),
        _ => run("image::open Rgb32F", || {
            mproc::integrations::image::open::<image::Rgb<f32>>(path())
                .map(|i| i.dimensions())
                .map_err(|e| e.to_string())
                .err()
        }),
    }
    .flatten();
    let largest_alloc = LARGEST.load(Ordering::Relaxed) as u64;
    let _ = std::fs::remove_file(path());
    if largest_alloc > LIMIT {
        eprintln!(
            "==mproc-fuzz== image::open made a {largest_alloc}-byte heap allocation (limit {LIMIT}); its result: {r:?}"
        );
        std::process::abort();
    }
    let big = largest_mproc_mapping();
    if std::env::var_os("MPROC_FUZZ_DEBUG").is_some() {
        eprintln!(
            "sel {}: {r:?}; largest allocation {largest_alloc}, largest mapping {big}",
            sel % 4
        );
    }
    if big > LIMIT + MAPPING_SLACK {
        eprintln!(
            "==mproc-fuzz== image::open left a {big}-byte shared mapping (limit {LIMIT}); its result: {r:?}"
        );
        std::process::abort();
    }
});
