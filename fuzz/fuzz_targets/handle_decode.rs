//! Handles decoded from peer bytes and re-attached: the `Deserialize` impls of public types that re-open
//! a region (`RegionHandle` + `Region::from_handle`, `Queue`, `Lock`, `Value`, `Manager`, a manager's
//! `Dict`), and `parallel::Arr`, whose shared form is a block handle (region, offset, len) attached as a
//! view of another process's arena (`heap::Block::from_handle`, `parallel::lease`).
//!
//! Mode 0 feeds the raw input to postcard as one of those types. Mode 1 builds the handle from parts so
//! that it reaches real things: a named arena file made here as another process would (header written
//! by hand, so it is not one of this process's arenas), `/proc/<pid>/fd/<n>` of this process's own
//! descriptors (anonymous regions, a queue, a manager, a pipe, a socket, `/dev/null`, an unsealed
//! region-like memfd-less file), of pid 1, or any pid; then attaches and reads what it got.
//!
//! Promise under test: a typed error, never a panic, never a read outside a region or an arena, never a
//! wait (opening from a handle never waits) or an allocation sized by the handle.
#![no_main]

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mproc::parallel::Arr;
use mproc::{Dict, Lock, Manager, Queue, Region, RegionHandle, Value};
use mproc_fuzz::{run, write_shm, Bytes, HandleMirror, SourceMirror};
use serde::{Deserialize, Serialize};

/// FNV-1a as `region::header::layout_hash` computes it (documented there): name, size, align, format.
fn layout_hash(type_name: &str, size: u64, align: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(type_name.as_bytes());
    eat(&size.to_le_bytes());
    eat(&align.to_le_bytes());
    eat(&2u32.to_le_bytes()); // FORMAT_VERSION
    h
}

const ARENA_ID: u64 = 0x4152_454e_4146_5a31;
const ARENA_PAYLOAD: usize = 64 << 10;

/// A region header (`region/header.rs` layout) followed by `payload` bytes.
fn region_file(type_hash: u64, id: u64, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 128 + payload];
    f[0..8].copy_from_slice(b"MPROCRG1");
    f[8..12].copy_from_slice(&2u32.to_le_bytes());
    f[12..16].copy_from_slice(&64u32.to_le_bytes());
    f[16..24].copy_from_slice(&type_hash.to_le_bytes());
    f[24..32].copy_from_slice(&(payload as u64).to_le_bytes());
    f[32..40].copy_from_slice(&id.to_le_bytes());
    f[40..44].copy_from_slice(&1u32.to_le_bytes()); // creator pid 1: alive, never judged dead
    f[44..48].copy_from_slice(&1u32.to_le_bytes()); // persistent
    f[56..60].copy_from_slice(&0x5245_4459u32.to_le_bytes()); // READY
    for (i, b) in f[128..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    f
}

#[allow(dead_code)]
struct Fixtures {
    arena_name: String,
    /// Handles (as mirrors) of live objects of this process, to aim at.
    handles: Vec<HandleMirror>,
    region: Region,
    queue: Queue<u8>,
    lock: Lock,
    value: Value<u64>,
    manager: Manager,
    fds: Vec<OwnedFd>,
    files: Vec<std::fs::File>,
    /// Descriptor numbers worth aiming at.
    fd_numbers: Vec<i32>,
}

fn mirror_of(h: &RegionHandle) -> HandleMirror {
    #[derive(Deserialize)]
    struct M {
        id: u64,
        source: S,
    }
    #[derive(Deserialize)]
    enum S {
        Named(String),
        Fd { pid: u32, fd: i32 },
    }
    let m: M = postcard::from_bytes(&postcard::to_allocvec(h).unwrap()).unwrap();
    HandleMirror {
        id: m.id,
        source: match m.source {
            S::Named(n) => SourceMirror::Named(n),
            S::Fd { pid, fd } => SourceMirror::Fd { pid, fd },
        },
    }
}

extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

/// Statics are never dropped: remove the fixture files (the arena, the queue's anchor) at exit.
extern "C" fn remove_fixture_files() {
    let pid = std::process::id();
    mproc_fuzz::remove_shm_prefix(&format!("fzh{pid}"));
    if let Some(f) = FIXTURES.get() {
        let id = f.handles[2].id;
        mproc_fuzz::remove_shm_prefix(&mproc_fuzz::queue_group_prefix(id));
    }
}

static FIXTURES: OnceLock<Fixtures> = OnceLock::new();

fn fixtures() -> &'static Fixtures {
    FIXTURES.get_or_init(|| {
        mproc_fuzz::install_panic_hook();
        // SAFETY: registers a plain `extern "C" fn` with libc's atexit.
        unsafe { atexit(remove_fixture_files) };
        let pid = std::process::id();
        let arena_name = format!("fzh{pid}arena");
        let arena_hash = layout_hash("mproc::heap::Arena", 1, 4096);
        write_shm(
            &arena_name,
            &region_file(arena_hash, ARENA_ID, ARENA_PAYLOAD),
        )
        .unwrap();
        // A region-like regular file that is not a sealed memfd (what a forged Fd handle may name).
        let plain_path = std::env::temp_dir().join(format!("mproc-fuzz-plain-{pid}"));
        let _ = std::fs::remove_file(&plain_path);
        let mut plain = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&plain_path)
            .unwrap();
        plain
            .write_all(&region_file(arena_hash, ARENA_ID + 1, 4096))
            .unwrap();
        let _ = std::fs::remove_file(&plain_path);
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let (s1, s2) = std::os::unix::net::UnixStream::pair().unwrap();
        let region = Region::anonymous(4096).unwrap();
        let queue: Queue<u8> = Queue::new(4).unwrap();
        queue.put(&9).unwrap();
        let lock = Lock::new().unwrap();
        let value = Value::new(5u64).unwrap();
        let manager = Manager::new().unwrap();
        manager
            .dict::<String, u64>("d")
            .unwrap()
            .insert(&"k".into(), &1)
            .unwrap();
        let handles = vec![
            HandleMirror::named(ARENA_ID, &arena_name),
            mirror_of(&region.handle()),
            mirror_of(&queue.handle()),
            mirror_of(&lock.handle()),
            mirror_of(&value.handle()),
            mirror_of(&manager.handle()),
        ];
        let mut fd_numbers: Vec<i32> = vec![0, 1, 2];
        for h in &handles {
            if let SourceMirror::Fd { fd, .. } = h.source {
                fd_numbers.push(fd);
            }
        }
        fd_numbers.extend([
            plain.as_raw_fd(),
            devnull.as_raw_fd(),
            r.as_raw_fd(),
            w.as_raw_fd(),
            s1.as_raw_fd(),
            s2.as_raw_fd(),
        ]);
        Fixtures {
            arena_name,
            handles,
            region,
            queue,
            lock,
            value,
            manager,
            fds: vec![
                OwnedFd::from(r),
                OwnedFd::from(w),
                OwnedFd::from(s1),
                OwnedFd::from(s2),
            ],
            files: vec![plain, devnull],
            fd_numbers,
        }
    })
}

#[derive(Serialize)]
struct BlockMirror {
    region: HandleMirror,
    offset: u64,
    len: u64,
}

#[derive(Serialize)]
enum WireMirror {
    #[allow(dead_code)]
    Inline(Vec<u8>),
    Shared(BlockMirror),
}

#[derive(Serialize)]
struct ContainerMirror {
    manager: HandleMirror,
    name: String,
}

fn decode_as(ty: u8, bytes: &[u8]) {
    match ty % 8 {
        0 => {
            if let Ok(h) = postcard::from_bytes::<RegionHandle>(bytes) {
                if let Ok(r) = Region::from_handle(&h) {
                    let mut acc = 0u8;
                    for i in 0..r.len().min(1 << 20) {
                        // SAFETY: `len()` bytes from `as_ptr()` are the payload (the API's promise).
                        acc ^= unsafe { std::ptr::read_volatile(r.as_ptr().add(i)) };
                    }
                    std::hint::black_box(acc);
                }
            }
        }
        1 => {
            if let Ok(q) = postcard::from_bytes::<Queue<u8>>(bytes) {
                std::hint::black_box(q.len());
            }
        }
        2 => {
            if let Ok(l) = postcard::from_bytes::<Lock>(bytes) {
                let _ = l.try_lock().map(drop);
            }
        }
        3 => {
            if let Ok(v) = postcard::from_bytes::<Value<u64>>(bytes) {
                std::hint::black_box(v.handle());
            }
        }
        4 => {
            if let Ok(m) = postcard::from_bytes::<Manager>(bytes) {
                let _ = m.names();
            }
        }
        5 => {
            if let Ok(d) = postcard::from_bytes::<Dict<String, u64>>(bytes) {
                let _ = d.get("k");
            }
        }
        6 => {
            if let Ok(a) = postcard::from_bytes::<Arr<'static, u8>>(bytes) {
                let s: &[u8] = &a;
                std::hint::black_box(s.iter().fold(0u8, |x, y| x ^ y));
            }
        }
        _ => {
            if let Ok(a) = postcard::from_bytes::<Arr<'static, u64>>(bytes) {
                let s: &[u64] = &a;
                std::hint::black_box(s.iter().fold(0u64, |x, y| x ^ y));
            }
        }
    }
}

fn debug(ty: u8, bytes: &[u8]) {
    let e = |r: Result<String, postcard::Error>| match r {
        Ok(s) => s,
        Err(e) => format!("Err({e})"),
    };
    let out =
        match ty % 8 {
            0 => e(postcard::from_bytes::<RegionHandle>(bytes)
                .map(|h| format!("{:?}", Region::from_handle(&h).map(|r| r.len())))),
            1 => {
                e(postcard::from_bytes::<Queue<u8>>(bytes)
                    .map(|q| format!("queue len {}", q.len())))
            }
            2 => e(postcard::from_bytes::<Lock>(bytes).map(|_| "lock".into())),
            3 => e(postcard::from_bytes::<Value<u64>>(bytes).map(|_| "value".into())),
            4 => e(postcard::from_bytes::<Manager>(bytes).map(|m| format!("{:?}", m.names()))),
            5 => e(postcard::from_bytes::<Dict<String, u64>>(bytes)
                .map(|d| format!("{:?}", d.get("k")))),
            6 => e(postcard::from_bytes::<Arr<'static, u8>>(bytes)
                .map(|a| format!("arr of {}", a.len()))),
            _ => e(postcard::from_bytes::<Arr<'static, u64>>(bytes)
                .map(|a| format!("arr of {}", a.len()))),
        };
    eprintln!("ty {} -> {out}", ty % 8);
}

/// Mostly offsets near the arena (64 KiB), sometimes any `u64` (bit 63 set).
fn small_or_raw(x: u64) -> u64 {
    if x >> 63 == 1 {
        x
    } else {
        x % (1 << 17)
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixtures();
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let ty = b.u8();
    if mode & 1 == 0 {
        let bytes = b.data;
        run("decode raw bytes", || decode_as(ty, bytes));
        return;
    }
    // Structured: a handle aimed at something real.
    let s = b.u8();
    let mut h = fx.handles[usize::from(s >> 4) % fx.handles.len()].clone();
    match s & 7 {
        0 => {} // a genuine handle, as is
        1 => h.id = b.u64(),
        2 => {
            h.source = SourceMirror::Fd {
                pid: std::process::id(),
                fd: fx.fd_numbers[usize::from(b.u8()) % fx.fd_numbers.len()],
            }
        }
        3 => {
            h.source = SourceMirror::Fd {
                pid: std::process::id(),
                fd: i32::from(b.u8()),
            }
        }
        4 => {
            h.source = SourceMirror::Fd {
                pid: [1, std::os::unix::process::parent_id(), b.u32()][usize::from(b.u8() % 3)],
                fd: i32::from(b.u8()),
            }
        }
        5 => {
            let n = usize::from(b.u8() % 64);
            h.source = SourceMirror::Named(String::from_utf8_lossy(b.take(n)).into_owned())
        }
        _ => {}
    }
    if s & 8 != 0 && !matches!(s & 7, 1) {
        // Keep the id of whatever the handle now names? The caller cannot know it; try a guess.
        h.id ^= u64::from(b.u8());
    }
    let bytes = match ty % 8 {
        5 => postcard::to_allocvec(&ContainerMirror {
            manager: h,
            name: {
                let n = usize::from(b.u8() % 48);
                String::from_utf8_lossy(b.take(n)).into_owned()
            },
        })
        .unwrap(),
        6 | 7 => postcard::to_allocvec(&WireMirror::Shared(BlockMirror {
            region: h,
            offset: small_or_raw(b.u64()),
            len: small_or_raw(b.u64()),
        }))
        .unwrap(),
        _ => h.to_bytes(),
    };
    if std::env::var_os("MPROC_FUZZ_DEBUG").is_some() {
        debug(ty, &bytes);
    }
    run("decode a structured handle", || decode_as(ty, &bytes));
});
