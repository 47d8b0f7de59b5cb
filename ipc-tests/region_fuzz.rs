//! Regions fed hostile input: proptest fuzzing of forged headers and lengths (opened by name and by
//! handle, as bytes and as a `Lock`) and of forged handles, and a live `Lock` whose bytes another process
//! scribbles on (DESIGN.md invariants 2 and 3).
//!
//! The forging helpers and the header layout are those of `region.rs`, which also explains why every
//! forged header here is safe from the janitor test sweeping `/dev/shm` meanwhile.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Lock, Region, RegionHandle, TryLockError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use crate::common::{self, say, shm_path, Kid, Role};
use crate::region::{
    bytes_header, fd_handle, forge_named, forge_sealed, handle, lock_header, mirror,
    read_payload_byte, HandleMirror, Hdr, SourceMirror, BOUND, CREATOR_PID, CREATOR_PIDNS,
    CREATOR_START, FLAGS, FLAG_PERSISTENT, HEADER_SIZE, MAGIC, NEVER_A_PID, PAYLOAD_OFFSET,
    PAYLOAD_SIZE, READY, READY_WORD, REGION_ID, TYPE_HASH, VERSION,
};

/// Above Linux's PID_MAX_LIMIT (2^22 on 64-bit, proc(5)): no process or thread can ever have this id.
const PID_MAX_LIMIT: u32 = 1 << 22;
/// A lock word naming a holder that cannot exist (the lock keeps 30 bits of tid).
const DEAD_TID: u32 = 0x3fff_fffe;

pub const ROLES: &[Role] = &[
    ("region_scribble_lock", scribble_lock),
    ("region_fuzz_headers", fuzz_headers),
    ("region_fuzz_handles", fuzz_handles),
];

pub fn tests() -> Vec<Trial> {
    // Named `region::…` as before the split of region.rs, so that existing filters still select them.
    let t = |name: &str, f: fn()| common::trial("region", name, f);
    vec![
        t("fuzz_forged_headers", || {
            run_fuzz_child("region_fuzz_headers", "fz")
        }),
        t("fuzz_forged_handles", || {
            run_fuzz_child("region_fuzz_handles", "fzh")
        }),
        t(
            "lock_survives_garbage_from_another_process",
            lock_survives_garbage,
        ),
    ]
}

// ------------------------------------------------------------------------------------ 1. fuzzing

/// Runs a fuzzing role in a child, so that a SIGBUS (or any other fatal signal) shows as a failed exit
/// status instead of taking the whole suite down. `what` is the word the role's region names carry
/// (`common::unique_name(what)`).
fn run_fuzz_child(role: &str, what: &str) {
    // The headers child forges unpublished segments of dead creators, which a sweep may rightly
    // remove (a persistent region is spared only once published): none runs meanwhile.
    let _sweep = crate::region::sweep_lock();
    let st = Kid::spawn(role, "", BOUND).wait();
    // A crashed child cannot clean up: remove what it left, so the failure is reported once, here.
    // Only its own names (`<tag>-<what>-<n>`): the two fuzzing children run at the same time, and a
    // bare `<tag>-fz` would also remove the other child's live `<tag>-fzh-0` under its feet.
    let prefix = format!("{}-{what}-", common::run_tag());
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        if e.file_name().to_string_lossy().contains(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    assert!(
        st.success(),
        "{role}: {st} (a signal here, e.g. SIGBUS, means an open crashed)"
    );
}

fn runner(seed: u64) -> TestRunner {
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    })
}

/// The variant of an error, for comparing with what a forged input justifies.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "NotFound",
        Error::InvalidName { .. } => "InvalidName",
        Error::NotPrivate { .. } => "NotPrivate",
        Error::BadMagic { .. } => "BadMagic",
        Error::VersionMismatch { .. } => "VersionMismatch",
        Error::TypeMismatch { .. } => "TypeMismatch",
        Error::SizeMismatch { .. } => "SizeMismatch",
        Error::Truncated { .. } => "Truncated",
        Error::NotReady { .. } => "NotReady",
        Error::StaleHandle(_) => "StaleHandle",
        Error::Corrupted(_) => "Corrupted",
        Error::Os { .. } => "Os",
        _ => "other",
    }
}

#[derive(Clone, Copy, Debug)]
enum Opener {
    Bytes,
    Lock,
}

/// What a fuzzing child knows of real headers.
#[derive(Clone, Copy)]
struct Truth {
    bytes_hash: u64,
    lock_hash: u64,
}

/// The errors a segment with header `h` and `len` bytes justifies for `opener`; empty: it must open.
fn justified(h: &Hdr, len: u64, opener: Opener, t: Truth, by_handle: bool) -> Vec<&'static str> {
    if by_handle && len < PAYLOAD_OFFSET {
        return vec!["Truncated"];
    }
    match h.u32(READY_WORD) {
        READY => {}
        // Unpublished: a foreign magic is refused as such, our magic (or none yet) waits for the creator.
        0 if h.0[..8] != *b"MPROCRG1" && h.0[..8] != [0; 8] => return vec!["BadMagic"],
        0 => return vec!["NotReady"],
        _ => return vec!["Corrupted"],
    }
    let mut v = Vec::new();
    if h.0[..8] != *b"MPROCRG1" {
        v.push("BadMagic");
    }
    if h.u32(VERSION) != 2 {
        v.push("VersionMismatch");
    }
    if h.u32(HEADER_SIZE) != 64 {
        v.push("Corrupted");
    }
    let (hash, size) = match opener {
        Opener::Bytes => (t.bytes_hash, None),
        Opener::Lock => (t.lock_hash, Some(16)),
    };
    if h.u64(TYPE_HASH) != hash {
        v.push("TypeMismatch");
    }
    let payload = h.u64(PAYLOAD_SIZE);
    if size.is_some_and(|s| payload != s) {
        v.push("SizeMismatch");
    }
    if payload.saturating_add(PAYLOAD_OFFSET) > len {
        v.push("Truncated");
    }
    v
}

/// Checks that `got` is one of the `allowed` outcomes and that the error's fields tell the truth about
/// the forged segment.
fn check_open<T>(
    what: &str,
    got: mproc::Result<T>,
    allowed: &[&str],
    h: &Hdr,
    len: u64,
) -> Result<Option<T>, TestCaseError> {
    let e = match got {
        Ok(v) => {
            prop_assert!(
                allowed.is_empty(),
                "{what}: opened, but one of {allowed:?} was due"
            );
            return Ok(Some(v));
        }
        Err(e) => e,
    };
    prop_assert!(
        allowed.contains(&kind(&e)),
        "{what}: {e:?} is not among {allowed:?}"
    );
    let truthful = match &e {
        Error::BadMagic { found } => found[..] == h.0[..8],
        Error::VersionMismatch { expected, found } => *expected == 2 && *found == h.u32(VERSION),
        Error::TypeMismatch { found_hash, .. } => *found_hash == h.u64(TYPE_HASH),
        Error::SizeMismatch { expected, found } => *expected == 16 && *found == h.u64(PAYLOAD_SIZE),
        Error::Truncated { needed, actual } => {
            *actual == len
                && (*needed == PAYLOAD_OFFSET
                    || *needed == h.u64(PAYLOAD_SIZE).saturating_add(PAYLOAD_OFFSET))
        }
        Error::NotReady { creator_pid, .. } => *creator_pid == h.u32(CREATOR_PID),
        _ => true,
    };
    prop_assert!(
        truthful,
        "{what}: {e:?} misreports the segment ({len} bytes, {h:?})"
    );
    Ok(None)
}

fn check_region(r: &Region, h: &Hdr, len: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.len() as u64, h.u64(PAYLOAD_SIZE));
    prop_assert!(r.len() as u64 + PAYLOAD_OFFSET <= len);
    if !r.is_empty() {
        // Touching both ends of the payload proves the mapping covers it (no SIGBUS).
        read_payload_byte(r, 0);
        read_payload_byte(r, r.len() - 1);
    }
    Ok(())
}

/// Headers biased towards valid fields, so that every check (and success) is reached, plus raw bytes.
fn header_strategy(bytes: Hdr, lock: Hdr) -> impl Strategy<Value = Hdr> {
    let me = (bytes.u32(CREATOR_PID), bytes.u64(CREATOR_START));
    let structured = (
        prop_oneof![6 => Just(bytes.u64(MAGIC)), 1 => any::<u64>()],
        prop_oneof![6 => Just(2u32), 1 => any::<u32>()],
        prop_oneof![6 => Just(64u32), 1 => any::<u32>()],
        prop_oneof![2 => Just(bytes.u64(TYPE_HASH)), 2 => Just(lock.u64(TYPE_HASH)), 1 => any::<u64>()],
        prop_oneof![1 => 0u64..64, 2 => Just(16u64), 1 => 0u64..4400, 1 => any::<u64>()],
        any::<u64>(),
        prop_oneof![Just(me), (any::<u32>(), any::<u64>())],
        any::<u32>(),
        prop_oneof![6 => Just(READY), 1 => Just(0u32), 1 => any::<u32>()],
        prop_oneof![Just(bytes.u32(CREATOR_PIDNS)), any::<u32>()],
    )
        .prop_map(|(magic, version, hsize, hash, payload, id, (pid, start), flags, ready, pidns)| {
            Hdr([0; 64])
                .set64(MAGIC, magic)
                .set32(VERSION, version)
                .set32(HEADER_SIZE, hsize)
                .set64(TYPE_HASH, hash)
                .set64(PAYLOAD_SIZE, payload)
                .set64(REGION_ID, id)
                .set32(CREATOR_PID, pid)
                .set32(FLAGS, flags)
                .set64(CREATOR_START, start)
                .set32(READY_WORD, ready)
                .set32(CREATOR_PIDNS, pidns)
        });
    let raw = any::<[u8; 64]>().prop_map(Hdr);
    prop_oneof![5 => structured, 1 => raw]
}

/// Child role: arbitrary headers and lengths, opened by name and by handle, as bytes and as a Lock.
fn fuzz_headers(_: &str) {
    let (bytes, lock) = (bytes_header(16), lock_header());
    let truth = Truth {
        bytes_hash: bytes.u64(TYPE_HASH),
        lock_hash: lock.u64(TYPE_HASH),
    };
    let strategy = (header_strategy(bytes, lock), 0u64..4400, any::<bool>());
    let result = runner(0x6d70_726f_6331).run(&strategy, |(h, len, same_id)| {
        // By name. A header still "initialising" (ready 0) is waited for while its creator lives (10 s):
        // name a dead creator (in our pid namespace, or it is waited for as well). Short files by name
        // are `short_named_file_is_truncated`'s; here the file is at least a header long. Persistent,
        // which keeps a published one from the janitor; an unpublished one of a dead creator is stale,
        // so the parent holds off the suite's sweeps while this runs (`run_fuzz_child`).
        let mut named = h.set32(FLAGS, h.u32(FLAGS) | FLAG_PERSISTENT);
        if named.u32(READY_WORD) == 0 {
            named = named
                .set32(CREATOR_PID, NEVER_A_PID)
                .set32(CREATOR_PIDNS, bytes.u32(CREATOR_PIDNS));
        }
        let named_len = PAYLOAD_OFFSET + len;
        let name = common::unique_name("fz");
        let f = forge_named(&name, &named, named_len);
        for opener in [Opener::Bytes, Opener::Lock] {
            let allowed = justified(&named, named_len, opener, truth, false);
            let what = format!("open {opener:?} by name");
            match opener {
                Opener::Bytes => {
                    if let Some(r) =
                        check_open(&what, Region::open(&name), &allowed, &named, named_len)?
                    {
                        check_region(&r, &named, named_len)?;
                    }
                }
                Opener::Lock => {
                    if let Some(l) =
                        check_open(&what, Lock::open(&name), &allowed, &named, named_len)?
                    {
                        drop(l.try_lock());
                    }
                }
            }
        }
        drop(f);

        // By handle, any length: nothing waits on this path. Sealed, as a handle's file must be.
        let file = forge_sealed(&h.0, len, 0o600);
        let id = if same_id {
            h.u64(REGION_ID)
        } else {
            h.u64(REGION_ID).wrapping_add(1)
        };
        let hd = fd_handle(id, file.as_raw_fd());
        for opener in [Opener::Bytes, Opener::Lock] {
            let mut allowed = justified(&h, len, opener, truth, true);
            if allowed.is_empty() && !same_id {
                allowed.push("StaleHandle");
            }
            let what = format!("open {opener:?} by handle");
            match opener {
                Opener::Bytes => {
                    if let Some(r) = check_open(&what, Region::from_handle(&hd), &allowed, &h, len)?
                    {
                        check_region(&r, &h, len)?;
                    }
                }
                Opener::Lock => {
                    if let Some(l) = check_open(&what, Lock::from_handle(&hd), &allowed, &h, len)? {
                        drop(l.try_lock());
                    }
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz_forged_headers: {e}");
    }
}

/// Whether `Region::open` would accept `n` as a name (its documented rule), to predict the error.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 200
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Child role: handles decoded from arbitrary bytes, and structured handles with arbitrary pid, fd and
/// id, next to real ones. Descriptors are drawn only among the ones this child knows (its regions,
/// /dev/null on 0, its stdout pipe on 1, unused numbers) and pids only among itself and pids that cannot
/// exist: a forged handle must not make the suite open another process's files.
fn fuzz_handles(_: &str) {
    let me = std::process::id();
    let anon = Region::anonymous(16).unwrap();
    let lock = Lock::new().unwrap();
    let named_name = common::unique_name("fzh");
    let named = Region::create(&named_name, 16, false).unwrap();
    let (anon_h, lock_h, named_h) = (
        mirror(&anon.handle()),
        mirror(&lock.handle()),
        mirror(&named.handle()),
    );
    let fd_of = |m: &HandleMirror| match m.source {
        SourceMirror::Fd { fd, .. } => fd,
        SourceMirror::Named(_) => unreachable!("an anonymous region's handle names a descriptor"),
    };
    let (anon_fd, lock_fd) = (fd_of(&anon_h), fd_of(&lock_h));
    let known_fds = [0, 1, anon_fd, lock_fd];
    let unused = |fd: i32| !(0..900).contains(&fd) || known_fds.contains(&fd);
    let ids = [anon_h.id, lock_h.id, named_h.id];

    // (a) arbitrary bytes, and mutations of real encodings, through postcard.
    let encodings: Vec<Vec<u8>> = [&anon_h, &lock_h, &named_h]
        .iter()
        .map(|m| postcard::to_stdvec(m).unwrap())
        .collect();
    let edits = proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3);
    let mutated = (proptest::sample::select(encodings), edits, any::<usize>()).prop_map(
        |(mut b, edits, cut)| {
            for (at, v) in edits {
                let i = at % b.len();
                b[i] = v;
            }
            if cut % 8 == 0 {
                b.pop(); // now too short, or a shorter string
            }
            b
        },
    );
    let bytes = prop_oneof![1 => proptest::collection::vec(any::<u8>(), 0..48), 3 => mutated];
    let result = runner(0x6d70_726f_6332).run(&bytes, |b| {
        let Ok(h) = postcard::from_bytes::<RegionHandle>(&b) else {
            return Ok(());
        };
        let mut m = mirror(&h);
        if let SourceMirror::Fd { pid, fd } = &mut m.source {
            if *pid != me && *pid <= PID_MAX_LIMIT {
                *pid += PID_MAX_LIMIT + 1; // keep away from real processes: now it cannot exist
            }
            if *pid == me && !unused(*fd) {
                *fd += 1000;
            }
        }
        let h = handle(&m);
        for got in [
            Region::from_handle(&h).map(drop),
            Lock::from_handle(&h).map(drop),
        ] {
            if let Err(e) = got {
                prop_assert!(kind(&e) != "other", "{m:?}: {e:?}");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz_forged_handles (bytes): {e}");
    }

    // (b) structured handles with exact expectations.
    let own_fd = prop_oneof![
        Just(anon_fd),
        Just(lock_fd),
        Just(0),
        Just(1),
        -4i32..0,
        900i32..1000,
        any::<i32>()
    ]
    .prop_map(move |fd| if unused(fd) { fd } else { fd + 1000 })
    .prop_map(move |fd| SourceMirror::Fd { pid: me, fd });
    let ghost = (PID_MAX_LIMIT + 1..=u32::MAX, any::<i32>())
        .prop_map(|(pid, fd)| SourceMirror::Fd { pid, fd });
    let name = prop_oneof![Just(named_name.clone()), "[a-z.]{1,8}", any::<String>()]
        .prop_map(SourceMirror::Named);
    let id = prop_oneof![proptest::sample::select(ids.to_vec()), any::<u64>()];
    let strategy =
        (id, prop_oneof![own_fd, ghost, name]).prop_map(|(id, source)| HandleMirror { id, source });
    let result = runner(0x6d70_726f_6333).run(&strategy, |m| {
        let h = handle(&m);
        let same = |real: &HandleMirror| if m.id == real.id { "ok" } else { "StaleHandle" };
        // (expected for Region::from_handle, expected for Lock::from_handle)
        let (want_bytes, want_lock) = match &m.source {
            SourceMirror::Fd { pid, fd } if *pid == me && *fd == anon_fd => {
                (same(&anon_h), "TypeMismatch")
            }
            SourceMirror::Fd { pid, fd } if *pid == me && *fd == lock_fd => {
                ("TypeMismatch", same(&lock_h))
            }
            // /dev/null and a pipe: refused before anything else as not regular files.
            SourceMirror::Fd { pid, fd: 0 | 1 } if *pid == me => ("Os", "Os"),
            SourceMirror::Fd { .. } => ("StaleHandle", "StaleHandle"),
            SourceMirror::Named(n) if *n == named_name => (same(&named_h), "TypeMismatch"),
            SourceMirror::Named(n) if valid_name(n) => ("NotFound", "NotFound"),
            SourceMirror::Named(_) => ("InvalidName", "InvalidName"),
        };
        let got_bytes = Region::from_handle(&h).map_or_else(|e| kind(&e), |_| "ok");
        let got_lock = Lock::from_handle(&h).map_or_else(|e| kind(&e), |_| "ok");
        prop_assert_eq!((got_bytes, got_lock), (want_bytes, want_lock), "{:?}", m);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz_forged_handles (structured): {e}");
    }
    drop(named);
}

// ------------------------------------------------------------------------- 2. garbage in a Lock

/// Child role: writes garbage over the 16-byte lock state of the named Lock `arg` until killed.
fn scribble_lock(name: &str) {
    let f = OpenOptions::new()
        .write(true)
        .open(shm_path(name))
        .expect("open the lock's segment");
    say("go");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15; // xorshift64: a fixed, reproducible sequence
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word: u32 = match x % 4 {
            0 => 0,                              // free
            1 => DEAD_TID,                       // held by a thread that cannot exist
            2 => 0x8000_0000 | (x >> 40) as u32, // "waiters" and a random holder
            _ => (x >> 32) as u32,               // anything
        };
        let mut state = [0u8; 16];
        state[..4].copy_from_slice(&word.to_ne_bytes());
        state[4..].copy_from_slice(&x.rotate_left(17).to_ne_bytes()[..4].repeat(3));
        f.write_at(&state, PAYLOAD_OFFSET).expect("scribble");
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn lock_survives_garbage() {
    let name = common::unique_name("garbage");
    let lock = Lock::create(&name).unwrap();
    let mut kid = Kid::spawn("region_scribble_lock", &name, BOUND);
    assert_eq!(kid.next_line(), "go");

    // The attempts run in a thread so that a hang is reported (after BOUND) instead of hanging the suite.
    let (tx, rx) = mpsc::channel();
    let l = lock.clone();
    std::thread::spawn(move || {
        let (mut ok, mut died, mut busy) = (0u32, 0u32, 0u32);
        for _ in 0..300 {
            match l.lock_timeout(Duration::from_millis(10)) {
                Ok(g) => {
                    ok += 1;
                    drop(g);
                }
                Err(TryLockError::OwnerDied(e)) => {
                    died += 1;
                    drop(e.into_inner());
                }
                Err(TryLockError::WouldBlock) => busy += 1,
            }
        }
        let _ = tx.send((ok, died, busy));
    });
    let (ok, died, busy) = rx
        .recv_timeout(BOUND)
        .expect("lock_timeout hung (or panicked) under garbage");
    assert_eq!(ok + died + busy, 300);
    assert!(!kid.kill_and_wait().success());

    // Recovery: whatever the garbage left, a dead holder is reported once and the lock works again.
    let mut state = [0u8; 16];
    state[..4].copy_from_slice(&DEAD_TID.to_ne_bytes());
    OpenOptions::new()
        .write(true)
        .open(shm_path(&name))
        .unwrap()
        .write_at(&state, PAYLOAD_OFFSET)
        .unwrap();
    match lock.lock_timeout(BOUND) {
        Err(TryLockError::OwnerDied(e)) => assert_eq!(e.dead_tid(), DEAD_TID),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(lock.try_lock().is_ok());
}
