//! Helpers shared by the fuzz targets (see `README.md`).
//!
//! Nothing here reaches into `mproc`'s private items: the first five targets go through the crate's
//! public API (or serde impls of public types), as a hostile peer's bytes would; `pool_wire`,
//! `spawn_handshake` and `cluster_wire` call the crate's `pub(crate)` wire decoders through
//! `mproc::fuzz_hooks`, which exists only under `--cfg fuzzing` (`src/fuzz_hooks.rs`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use serde::Serialize;

/// libfuzzer-sys installs a panic hook that aborts at once, before unwinding. `mproc` itself catches
/// one panic on purpose (`npyz`'s header parser, in `integrations/npy/header.rs`), so that hook would
/// report a documented, handled panic as a crash. This replaces it with one that only prints (the
/// message, and a backtrace with `RUST_BACKTRACE=1`); [`run`] aborts when a panic escapes the call
/// under test, which is the crash we are after.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // libfuzzer-sys's own hook aborts: drop it rather than chain to it.
        drop(panic::take_hook());
        panic::set_hook(Box::new(move |info| {
            eprintln!("==mproc-fuzz== panic (aborts only if it escapes the API call): {info}");
            if std::env::var_os("RUST_BACKTRACE").is_some() {
                eprintln!("{}", std::backtrace::Backtrace::force_capture());
            }
        }));
    });
}

/// Runs `f`; a panic that escapes it aborts the process (a crash for libFuzzer), with `what` printed.
pub fn run<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    install_panic_hook();
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            eprintln!("==mproc-fuzz== a panic escaped `{what}`: this is a bug (a typed error was promised)");
            std::process::abort();
        }
    }
}

/// The serde shape of `mproc::RegionHandle` (`{ id: u64, source: Source }`, `Source` =
/// `Named(String)` | `Fd { pid: u32, fd: i32 }`), so a target can make one from parts. A handle is
/// public data that travels in messages; this is what a peer writing a message would do.
#[derive(Serialize, Clone, Debug)]
pub struct HandleMirror {
    pub id: u64,
    pub source: SourceMirror,
}

#[derive(Serialize, Clone, Debug)]
pub enum SourceMirror {
    Named(String),
    Fd { pid: u32, fd: i32 },
}

impl HandleMirror {
    pub fn named(id: u64, name: &str) -> HandleMirror {
        HandleMirror {
            id,
            source: SourceMirror::Named(name.to_owned()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a mirror serializes")
    }

    /// The real handle, through its public `Deserialize`.
    pub fn handle(&self) -> mproc::RegionHandle {
        postcard::from_bytes(&self.to_bytes()).expect("the mirror has the handle's shape")
    }
}

/// Writes `/dev/shm/mproc.<name>` (mode 0600, replacing it), as a same-user peer can.
pub fn write_shm(name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = format!("/dev/shm/mproc.{name}");
    let _ = fs::remove_file(&path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(bytes)
}

/// Removes every `/dev/shm/mproc.<prefix>*` entry.
pub fn remove_shm_prefix(prefix: &str) {
    let full = format!("mproc.{prefix}");
    if let Ok(dir) = fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&full) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The bytes of `/dev/shm/mproc.<name>`.
pub fn read_shm(name: &str) -> Vec<u8> {
    fs::read(format!("/dev/shm/mproc.{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// Names (without `mproc.`) of the `/dev/shm` entries starting with `mproc.<prefix>`.
pub fn list_shm(prefix: &str) -> Vec<String> {
    let full = format!("mproc.{prefix}");
    let mut v: Vec<String> = fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&full))
                .map(|n| n["mproc.".len()..].to_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The prefix of a queue's blocks (`q<id>-`), as `region::janitor::group_prefix` makes it.
pub fn queue_group_prefix(id: u64) -> String {
    format!("q{id:016x}-")
}

/// The region id a header holds (offset 32, little-endian).
pub fn header_region_id(file: &[u8]) -> u64 {
    file.get(32..40)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Whether `tid` names a live thread/process in our pid namespace (`/proc/<tid>` exists).
pub fn tid_alive(tid: u32) -> bool {
    tid != 0 && std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// A little reader over fuzz bytes.
pub struct Bytes<'a> {
    pub data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A global allocator that forwards to `System` and, inside [`record`] only, records what is
/// allocated: the largest single request, the largest request for byte buffers (alignment 1: a
/// `Vec<u8>` or a `String`, what a decoder sizes by its input), and the net bytes allocated minus freed.
/// A target installs it with `#[global_allocator] static A: mproc_fuzz::Recording = mproc_fuzz::Recording;`.
/// Recording is process-wide (the targets are single-threaded).
#[derive(Debug)]
pub struct Recording;

mod recording {
    use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize};
    pub static ON: AtomicBool = AtomicBool::new(false);
    pub static LARGEST: AtomicUsize = AtomicUsize::new(0);
    pub static LARGEST_BYTES: AtomicUsize = AtomicUsize::new(0);
    pub static NET: AtomicIsize = AtomicIsize::new(0);
}

fn note(l: std::alloc::Layout, size: usize, freed: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    if !recording::ON.load(Relaxed) {
        return;
    }
    recording::LARGEST.fetch_max(size, Relaxed);
    if l.align() == 1 {
        recording::LARGEST_BYTES.fetch_max(size, Relaxed);
    }
    recording::NET.fetch_add(size as isize - freed as isize, Relaxed);
}

// SAFETY: forwards every call to `System` unchanged; only records the requested sizes in atomics
// (which do not allocate).
unsafe impl std::alloc::GlobalAlloc for Recording {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l, l.size(), 0);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l, l.size(), 0);
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        note(l, 0, l.size());
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        note(l, new, l.size());
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

/// What [`record`] saw while its closure ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    /// The largest single allocation (or reallocation's new size), in bytes.
    pub largest: usize,
    /// The largest one with alignment 1 (byte buffers, strings).
    pub largest_bytes: usize,
    /// Bytes allocated minus bytes freed (what the closure left allocated, its result included).
    pub net: isize,
}

/// Runs `f` (through [`run`]: a panic escaping it aborts) and records its allocations; needs
/// [`Recording`] as the global allocator, else the record is all zeros.
pub fn record<R>(what: &str, f: impl FnOnce() -> R) -> (R, Record) {
    use std::sync::atomic::Ordering::Relaxed;
    install_panic_hook();
    recording::LARGEST.store(0, Relaxed);
    recording::LARGEST_BYTES.store(0, Relaxed);
    recording::NET.store(0, Relaxed);
    recording::ON.store(true, Relaxed);
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    recording::ON.store(false, Relaxed);
    let rec = Record {
        largest: recording::LARGEST.load(Relaxed),
        largest_bytes: recording::LARGEST_BYTES.load(Relaxed),
        net: recording::NET.load(Relaxed),
    };
    match r {
        Ok(r) => (r, rec),
        Err(_) => {
            eprintln!("==mproc-fuzz== a panic escaped `{what}`: this is a bug (a typed error was promised)");
            std::process::abort();
        }
    }
}

/// Aborts (a crash for libFuzzer) with `msg` unless `ok`: a broken property of a target.
#[track_caller]
pub fn check(ok: bool, msg: impl FnOnce() -> String) {
    if !ok {
        eprintln!(
            "==mproc-fuzz== property broken at {}: {}",
            std::panic::Location::caller(),
            msg()
        );
        std::process::abort();
    }
}
