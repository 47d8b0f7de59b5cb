//! `integrations::image::open` (feature `image`) on a hostile image file: the `image` crate's decoder
//! reads the header, then `open` allocates the shared pixel buffer (`SharedArray::zeroed`) from the
//! header's dimensions and decodes into it. The module docs promise the `image` crate's default limits
//! apply (512 MiB per allocation), and the trust model says no allocation is sized by what a peer wrote.
//!
//! Besides panics, the harness checks `/proc/self/maps` after each call: a shared-memory mapping of
//! mproc's (`/memfd:mproc…`) larger than 512 MiB means `open` sized a buffer by the file's header beyond
//! the promised limit (the heap keeps its arenas mapped for the life of the process, so the mapping is
//! still there after `open` returned an error). That is reported as a crash (abort).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproc_fuzz::run;
use std::sync::OnceLock;

const LIMIT: u64 = 512 << 20;

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
    let _ = std::fs::remove_file(path());
    let big = largest_mproc_mapping();
    if big > LIMIT {
        eprintln!(
            "==mproc-fuzz== image::open left a {big}-byte shared mapping (limit {LIMIT}); its result: {r:?}"
        );
        std::process::abort();
    }
});
