//! `.npy` files as hostile input (feature `npy`): the header parser and validation of
//! `MappedArray::open_npy` (`integrations/npy/header.rs`), then everything a caller may do with an array
//! that opened (`as_slice`, `view`, `shape`, `chunks`), and the worker side of a chunk: an `NpyChunk`
//! decoded from a task message (`Deserialize`, which re-opens and re-validates the file), from the
//! genuine serialized chunk with fuzz bytes XORed over it (a forged handle: range, facts, raw flag).
//!
//! Input: `[elem type][options][xor len][xor bytes...][file bytes...]`. The low 6 bits of `xor len` are
//! the number of xor bytes; they are XORed over the start of the serialized chunk (its path and file
//! identity), or, if bit 6 is set, over its end (the facts' tail, the raw flag, the range), which the
//! start's 63 bytes never reach.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mproc::integrations::ndarray::Order;
use mproc::integrations::npy::{Element, MappedArray, NpyChunk};
use mproc_fuzz::{run, Bytes};

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("mproc-fuzz-npy-{}.npy", std::process::id()))
    })
}

fn exercise<T: Element + std::fmt::Debug>(opts: u8, xor: &[u8], at_end: bool) {
    let p = path();
    let mut o = MappedArray::<T>::options();
    match opts & 3 {
        1 => o = o.order(Order::C),
        2 => o = o.order(Order::Fortran),
        _ => {}
    }
    let opened = run("MappedArray::open_npy", || o.open_npy(p));
    let debug = std::env::var_os("MPROC_FUZZ_DEBUG").is_some();
    if debug {
        // What this input reaches (a check that the harness gets past the header).
        match &opened {
            Some(Ok(a)) => eprintln!("{}: open ok {:?}", T::descr(), a.shape()),
            Some(Err(e)) => eprintln!("{}: open err {e}", T::descr()),
            None => {}
        }
    }
    let Some(Ok(a)) = opened else { return };
    run("MappedArray accessors", || {
        let s = a.as_slice();
        let mut acc = 0u8;
        for b in bytemuck::cast_slice::<T, u8>(s) {
            acc ^= *b;
        }
        std::hint::black_box(acc);
        let v = a.view();
        std::hint::black_box((v.len(), v.shape().len()));
        std::hint::black_box((a.shape().len(), a.order()));
    });
    let chunk = usize::from(opts >> 2).max(1);
    let chunks = run("MappedArray::chunks", || a.chunks(chunk)).unwrap();
    for c in chunks.iter().take(4) {
        let mut bytes = postcard::to_allocvec(c).expect("a chunk serializes");
        let from = if at_end {
            bytes.len().saturating_sub(xor.len())
        } else {
            0
        };
        for (i, x) in xor.iter().enumerate() {
            if let Some(b) = bytes.get_mut(from + i) {
                *b ^= x;
            }
        }
        let back = run("NpyChunk deserialize", || {
            postcard::from_bytes::<NpyChunk<T>>(&bytes)
        });
        if debug {
            let what = match &back {
                Some(Ok(c)) => match c.try_as_slice() {
                    Ok(s) => format!("attached, {} elements", s.len()),
                    Err(e) => format!("decoded, not attached: {e}"),
                },
                Some(Err(e)) => format!("decode err {e}"),
                None => String::new(),
            };
            eprintln!("  chunk: {what}");
        }
        if let Some(Ok(c)) = back {
            run("NpyChunk accessors", || {
                if let Ok(s) = c.try_as_slice() {
                    std::hint::black_box(
                        bytemuck::cast_slice::<T, u8>(s)
                            .iter()
                            .fold(0u8, |a, b| a ^ b),
                    );
                }
                if let Ok(v) = c.try_view() {
                    std::hint::black_box(v.shape().len());
                }
                std::hint::black_box((c.first(), c.order()));
            });
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let ty = b.u8();
    let opts = b.u8();
    let xb = b.u8();
    let xor = b.take(usize::from(xb & 0x3f));
    let at_end = xb & 0x40 != 0;
    let file = b.data;
    // A new inode each time: the worker-side cache of mapped files (chunk.rs) keys on it, and a
    // mapping of a previous input must never see this one's length.
    let _ = std::fs::remove_file(path());
    std::fs::write(path(), file).expect("write the fuzz file");
    match ty % 10 {
        0 => exercise::<u8>(opts, xor, at_end),
        1 => exercise::<i8>(opts, xor, at_end),
        2 => exercise::<u16>(opts, xor, at_end),
        3 => exercise::<i16>(opts, xor, at_end),
        4 => exercise::<u32>(opts, xor, at_end),
        5 => exercise::<i32>(opts, xor, at_end),
        6 => exercise::<u64>(opts, xor, at_end),
        7 => exercise::<i64>(opts, xor, at_end),
        8 => exercise::<f32>(opts, xor, at_end),
        _ => exercise::<f64>(opts, xor, at_end),
    }
    let _ = std::fs::remove_file(path());
});
