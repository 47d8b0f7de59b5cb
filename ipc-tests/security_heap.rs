//! Regression tests for the heap, parallel and manager findings of the security review of 2026-11-30
//! (issue 11): S3 (a huge `SharedArray` wrapped the allocator's arithmetic), R4 (a damaged manager heap
//! made `items`/`to_vec` allocate heap² bytes), R5 (a worker attaching to an arena populated all of
//! it, whatever its size). The S5 gaps are tested where the views are made (`src/heap`,
//! `src/parallel`), with real worker processes for the kept `Arr<'static, T>`.
//!
//! Everything that could crash on the old code runs in a child role or a worker, so that a SIGSEGV
//! there is a failed test, not a dead suite. Every wait is bounded by [`BOUND`], generously: it proves
//! "no hang" and never measures speed.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::parallel::Arr;
use mproc::{Error, Manager, Parallel, SharedArray};

use crate::common::{self, say, shm_path, Kid, Role};

/// How long anything may take before we call it a hang.
const BOUND: Duration = Duration::from_secs(60);

/// The managed heap's layout (src/manager/heap.rs), as offsets in the file: the payload starts 128
/// bytes in, the directory after the lock, metadata and journal, in entries of 8 words (kind hash,
/// object offset, name length, name).
const PAYLOAD: u64 = 128;
const DIRECTORY: u64 = 512 + 1024 * 16;
const DIR_ENTRY: u64 = 64;
const DIR_CAP: u64 = 256;

pub const ROLES: &[Role] = &[
    ("security_heap_huge_array", huge_array_role),
    ("security_heap_scribble", scribble_role),
    ("heap_growing_arrays", growing_arrays_role),
    ("heap_growing_lent_arrays", growing_lent_arrays_role),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("security_heap", name, f);
    vec![
        t("s3_huge_shared_array_is_an_error", huge_shared_array),
        t(
            "r4_damaged_manager_containers_read_as_corrupted",
            damaged_manager_reads,
        ),
        t(
            "r5_a_worker_does_not_populate_the_whole_arena",
            worker_does_not_populate_arena,
        ),
        t(
            "arrays_of_growing_sizes_hold_no_more_than_the_largest",
            || common::run_role_ok("heap_growing_arrays", "", BOUND),
        ),
        t(
            "arenas_let_go_hold_no_memory_in_the_workers_that_read_them",
            || common::run_role_ok("heap_growing_lent_arrays", "", BOUND),
        ),
    ]
}

/// Bytes of shared memory this process holds in memfds (arenas, and whatever else it made).
fn memfd_bytes() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let link = std::fs::read_link(&path).ok()?;
            let memfd = link.to_string_lossy().starts_with("/memfd:");
            memfd.then(|| std::fs::metadata(&path).ok().map(|m| m.blocks() * 512))?
        })
        .sum()
}

/// Child (alone in its process, so nothing else allocates): 100, 200 and 300 MiB arrays made and
/// dropped in turn. Found by review: arenas were kept for good, so this held 600 MiB of shared memory;
/// now an arena with nothing in it is let go when an array fits no arena, and the last one stays.
fn growing_arrays_role(_: &str) {
    let before = memfd_bytes();
    for mib in [100usize, 200, 300] {
        let a = SharedArray::from_slice(&vec![1u8; mib << 20]).expect("an array");
        drop(a);
    }
    let held = memfd_bytes() - before;
    assert!(held <= (300 << 20) + (4 << 20), "{} MiB held", held >> 20);
    // The one kept is reused: a second 300 MiB array takes no more.
    let again = SharedArray::from_slice(&vec![2u8; 300 << 20]).expect("an array");
    assert_eq!(again[0], 2);
    assert!(memfd_bytes() - before <= (300 << 20) + (4 << 20));
}

/// Task: how many elements it was lent.
fn lent_len(a: Arr<'_, u8>) -> usize {
    a.len()
}

/// Task: the bytes of shared memory in the memfds this worker holds open (its own, and the arenas of
/// the parent it mapped to read them).
fn worker_memfd_bytes(_: u8) -> u64 {
    memfd_bytes()
}

/// Child (alone in its process): `Parallel` calls lend 70, 140 and 210 MiB arrays in turn to one
/// worker. Each copy fits no arena of the one before, so the parent lets go of the empty arena, as in
/// `growing_arrays_role`; found by review: the worker kept every arena it had read mapped in its cache
/// of foreign arenas (up to 16 of them, 64 GiB), and a mapped memfd keeps its pages: the worker held
/// all three arenas' memory, 420 MiB, for as long as it lived.
fn growing_lent_arrays_role(_: &str) {
    let par = Parallel::new(1);
    for mib in [70usize, 140, 210] {
        let data = vec![1u8; mib << 20];
        let got = par.map(lent_len, [Arr::from(&data)]).expect("map");
        assert_eq!(got, [mib << 20]);
    }
    let held = par.map(worker_memfd_bytes, [0u8]).expect("map")[0];
    assert!(
        held <= (210 << 20) + (16 << 20),
        "the worker holds {} MiB of shared memory",
        held >> 20
    );
}

// ------------------------------------------------------------------------------------------------- S3

/// Child: the review's reproduction. On the old code, release builds wrote past the arena (SIGSEGV)
/// and debug builds panicked on the overflow: either is a failed exit here.
fn huge_array_role(_: &str) {
    let _small = SharedArray::<u8>::zeroed(10).expect("a small array");
    match SharedArray::<u8>::zeroed(usize::MAX - 4095) {
        Err(Error::OutOfMemory { .. }) => {}
        Err(e) => panic!("an error, but not the expected one: {e:?}"),
        Ok(a) => panic!("an array of {} bytes was made", a.len()),
    }
    match SharedArray::<u64>::zeroed(usize::MAX / 8) {
        Err(Error::OutOfMemory { .. }) => {}
        other => panic!("{other:?}"),
    }
    say("refused");
}

/// Review S3: `SharedArray::zeroed(usize::MAX - 4095)` after a small allocation returns
/// `OutOfMemory`, in debug and release builds alike (the check asserts the `Err`, it does not rely on
/// an overflow panic).
fn huge_shared_array() {
    let mut kid = Kid::spawn("security_heap_huge_array", "", BOUND);
    kid.expect_line("refused");
    kid.join_ok();
}

// ------------------------------------------------------------------------------------------------- R4

fn word(f: &std::fs::File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, PAYLOAD + off)
        .expect("read a heap word");
    u64::from_le_bytes(b)
}

fn set_word(f: &std::fs::File, off: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), PAYLOAD + off)
        .expect("write a heap word");
}

/// The object offset of the directory entry `name`.
fn object(f: &std::fs::File, name: &str) -> u64 {
    (0..DIR_CAP)
        .map(|i| DIRECTORY + i * DIR_ENTRY)
        .find(|&e| {
            let len = word(f, e + 16) as usize;
            let mut n = [0u8; 40];
            f.read_exact_at(&mut n, PAYLOAD + e + 24)
                .expect("read a name");
            word(f, e) != 0 && len == name.len() && &n[..len] == name.as_bytes()
        })
        .map(|e| word(f, e + 8))
        .unwrap_or_else(|| panic!("no directory entry {name:?}"))
}

/// Child, a hostile peer: opens the manager's file and points every slot of dict `d` at its biggest
/// entry, and every item of list `l` (up to its capacity, which becomes its length) at its first.
fn scribble_role(name: &str) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .expect("open the manager's file");
    // Dict header: len, cap, table, tombstones; table slots: (tag, entry); entry blob: length first.
    let d = object(&f, "d");
    let (cap, table) = (word(&f, d + 8), word(&f, d + 16));
    let big = (0..cap)
        .filter(|i| word(&f, table + i * 16) > 1)
        .map(|i| word(&f, table + i * 16 + 8))
        .max_by_key(|&e| word(&f, e))
        .expect("a live entry");
    for i in 0..cap {
        set_word(&f, table + i * 16, 6);
        set_word(&f, table + i * 16 + 8, big);
    }
    // List header: len, cap, items.
    let l = object(&f, "l");
    let (cap, items) = (word(&f, l + 8), word(&f, l + 16));
    let first = word(&f, items);
    for i in 0..cap {
        set_word(&f, items + i * 8, first);
    }
    set_word(&f, l, cap);
    say("scribbled");
}

/// Review R4: another process damages a dict and a list so that every entry points at one big blob.
/// `items`, `keys`, `values` and `to_vec` then return `Corrupted` (after copying at most the heap's
/// size) instead of one copy of the blob per slot — heap²/16 bytes and an abort on a full table.
fn damaged_manager_reads() {
    let name = common::unique_name("sec-heap-r4");
    let m = Manager::create(&name, 1 << 20).expect("create manager");
    let d = m.dict::<String, Vec<u8>>("d").expect("dict");
    let l = m.list::<Vec<u8>>("l").expect("list");
    d.insert(&"big".to_string(), &vec![7; 200_000]).unwrap();
    l.push(&vec![1; 200_000]).unwrap();
    for i in 0..40 {
        d.insert(&format!("k{i}"), &vec![]).unwrap();
        l.push(&vec![]).unwrap();
    }
    assert_eq!(d.items().unwrap().len(), 41, "honest before the scribble");
    assert_eq!(l.to_vec().unwrap().len(), 41);
    let mut kid = Kid::spawn("security_heap_scribble", &name, BOUND);
    kid.expect_line("scribbled");
    kid.join_ok();
    let corrupted = |r: mproc::Result<usize>| matches!(r, Err(Error::Corrupted(_)));
    assert!(corrupted(d.items().map(|v| v.len())), "items");
    assert!(corrupted(d.keys().map(|v| v.len())), "keys");
    assert!(corrupted(d.values().map(|v| v.len())), "values");
    assert!(corrupted(l.to_vec().map(|v| v.len())), "to_vec");
}

// ------------------------------------------------------------------------------------------------- R5

/// Task: reads its array, then reports how much shared memory this worker has mapped (kB).
fn shmem_after_reading(a: Arr<'_, u8>) -> (u64, u64) {
    let sum = a.iter().map(|&x| u64::from(x)).sum();
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssShmem in /proc/self/status");
    (sum, kb)
}

/// Review R5: a worker handed a 2 MiB array in the parent's arena (at least 64 MiB) maps the arena
/// without `MAP_POPULATE`, whose size the sender of a handle chooses: it has only the pages it read
/// (plus its rings), not the whole arena, mapped afterwards.
fn worker_does_not_populate_arena() {
    let data = vec![1u8; 2 << 20];
    let par = Parallel::new(1);
    let got = common::bounded("parallel map", BOUND, move || {
        par.map(shmem_after_reading, [Arr::from(&data)])
    })
    .expect("map");
    let (sum, shmem_kb) = got[0];
    assert_eq!(sum, 2 << 20);
    assert!(
        shmem_kb < 32 << 10,
        "the worker has {shmem_kb} kB of shared memory mapped after reading 2 MiB"
    );
}
