//! Regions across processes: named open from an unrelated process, wrong types and sizes, forged
//! headers and short segments, private segments, symlinks and invalid names, the janitor, and stale
//! handles (DESIGN.md invariants 3, 6 and 7). The fuzzing of headers and handles, and garbage written
//! into a live lock, are in `region_fuzz.rs`, which uses the forging helpers defined here.
//!
//! Segments are forged by writing `/dev/shm/mproc.<name>` with `std::fs`, following the header layout of
//! `src/region/header.rs`. `janitor_removes_only_stale` sweeps `/dev/shm` while the other tests (of this
//! file and of `region_fuzz.rs`) run, so every forged header that carries the real magic names this
//! (live) process as its creator or is flagged persistent and published: the janitor must never be
//! right to take one of them for a leftover. The few that name a dead creator on purpose are forged
//! under `sweep_lock`, which every sweep of the suite holds. Forged segments opened by handle live
//! outside the `mproc.` prefix, where the janitor never looks.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Lock, Region, RegionHandle};
use serde::{Deserialize, Serialize};

use crate::common::{self, handle_from_hex, handle_to_hex, say, shm_path, Kid, Role};

pub const ROLES: &[Role] = &[
    ("region_open_and_check", region_open_and_check),
    ("region_create_and_linger", create_and_linger),
    ("region_create_and_vanish", create_and_vanish),
    ("region_anon_handle", anon_handle),
    (
        "region_create_then_end_main_thread",
        create_then_end_main_thread,
    ),
    ("region_create_under_umask", create_under_umask),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("region", name, f);
    vec![
        t(
            "named_open_from_other_process",
            named_open_from_other_process,
        ),
        t("wrong_type_is_type_mismatch", wrong_type_is_type_mismatch),
        t(
            "named_region_is_owner_read_write_whatever_the_umask",
            named_region_is_owner_read_write_whatever_the_umask,
        ),
        t("wrong_size_is_size_mismatch", wrong_size_is_size_mismatch),
        t(
            "forged_headers_are_typed_errors",
            forged_headers_are_typed_errors,
        ),
        t(
            "short_named_file_is_truncated_at_once",
            short_named_file_is_truncated,
        ),
        t(
            "short_segment_by_handle_is_truncated_at_once",
            short_segment_by_handle_is_truncated,
        ),
        t("missing_name_is_not_found", missing_name_is_not_found),
        t(
            "shared_or_foreign_segment_is_not_private",
            shared_or_foreign_segment_is_not_private,
        ),
        t(
            "symlink_and_directory_are_refused",
            symlink_and_directory_are_refused,
        ),
        t("invalid_names_are_refused", invalid_names_are_refused),
        t("janitor_removes_only_stale", janitor_removes_only_stale),
        t(
            "janitor_keeps_the_region_of_a_process_whose_main_thread_ended",
            janitor_keeps_zombie_leaders_region,
        ),
        t(
            "handle_of_exited_process_is_stale",
            handle_of_exited_process_is_stale,
        ),
        t(
            "handle_with_wrong_id_is_stale",
            handle_with_wrong_id_is_stale,
        ),
        // Regressions for bugs found by this suite (see the functions).
        t(
            "creator_drop_spares_a_replacement",
            creator_drop_spares_a_replacement,
        ),
        t(
            "janitor_removes_unpublished_persistent_region",
            janitor_removes_unpublished_persistent,
        ),
        t(
            "janitor_spares_a_header_being_written",
            janitor_spares_a_header_being_written,
        ),
    ]
}

// ------------------------------------------------------------------------------------------ helpers
//
// The `pub(crate)` ones are shared with region_fuzz.rs.

/// Where the payload starts, and the smallest segment an opener accepts.
pub(crate) const PAYLOAD_OFFSET: u64 = 128;
/// Value of the `ready` word of a published region ("REDY").
pub(crate) const READY: u32 = 0x5245_4459;
pub(crate) const FLAG_PERSISTENT: u32 = 1;
pub(crate) const NEVER_A_PID: u32 = 0x7fff_fff0;
/// Generous bound on anything a child or a blocked call does: proves "no hang", asserts no speed.
pub(crate) const BOUND: Duration = Duration::from_secs(120);

// Header field offsets (src/region/header.rs).
pub(crate) const MAGIC: usize = 0;
pub(crate) const VERSION: usize = 8;
pub(crate) const HEADER_SIZE: usize = 12;
pub(crate) const TYPE_HASH: usize = 16;
pub(crate) const PAYLOAD_SIZE: usize = 24;
pub(crate) const REGION_ID: usize = 32;
pub(crate) const CREATOR_PID: usize = 40;
pub(crate) const FLAGS: usize = 44;
pub(crate) const CREATOR_START: usize = 48;
pub(crate) const READY_WORD: usize = 56;
/// The creator's pid namespace (the inode of `/proc/<pid>/ns/pid`, 32 bits); 0 = unknown.
pub(crate) const CREATOR_PIDNS: usize = 60;

/// The 64 header bytes of a region. Fields are native-endian words.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hdr(pub(crate) [u8; 64]);

impl Hdr {
    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().unwrap())
    }
    pub(crate) fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.0[at..at + 8].try_into().unwrap())
    }
    pub(crate) fn set32(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn set64(mut self, at: usize, v: u64) -> Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn read_header(name: &str) -> Hdr {
    let mut h = [0; 64];
    File::open(shm_path(name))
        .and_then(|mut f| f.read_exact(&mut h))
        .expect("read a region header");
    Hdr(h)
}

/// The header of a real, published region of `payload` untyped bytes, created (and removed again) by
/// this process: right magic, version, sizes and type hash, and this live process as its creator.
pub(crate) fn bytes_header(payload: usize) -> Hdr {
    let name = common::unique_name("tmpl");
    let _r = Region::create(&name, payload, false).expect("create a template region");
    read_header(&name)
}

/// The header of a real `Lock`, made like [`bytes_header`].
pub(crate) fn lock_header() -> Hdr {
    let name = common::unique_name("tmpl");
    let _l = Lock::create(&name).expect("create a template lock");
    read_header(&name)
}

/// A file forged in `/dev/shm`, removed when dropped (ignoring a file already gone).
pub(crate) struct Forged(pub(crate) PathBuf);

impl Drop for Forged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates `path` exclusively: the first bytes of `header` (as many as fit), zeros up to `len`, then `mode`.
fn forge(path: PathBuf, header: &[u8], len: u64, mode: u32) -> Forged {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("forge {}: {e}", path.display()));
    let forged = Forged(path);
    let n = header.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    f.write_all(&header[..n]).expect("write forged header");
    f.set_len(len).expect("size forged segment");
    // Explicitly: the mode given at creation is filtered by the umask.
    f.set_permissions(Permissions::from_mode(mode))
        .expect("chmod forged segment");
    forged
}

/// A forged segment in a memfd sealed against shrinking and growing, like every anonymous region: what a
/// peer has to make for an anonymous-region handle to be accepted at all (review S4; an unsealed file is
/// refused with `NotSealed` before its header is read). The first bytes of `header`, zeros up to `len`.
pub(crate) fn forge_sealed(header: &[u8], len: u64, mode: u32) -> File {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create only reads it.
    let fd = unsafe {
        libc::memfd_create(
            c"mproc-test-forged".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    let n = header.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    f.write_all_at(&header[..n], 0)
        .expect("write forged header");
    f.set_len(len).expect("size forged segment");
    f.set_permissions(Permissions::from_mode(mode))
        .expect("chmod forged segment");
    // SAFETY: F_ADD_SEALS takes an int and only changes this memfd's seal set.
    let r = unsafe {
        libc::fcntl(
            f.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(r, 0, "seal: {}", std::io::Error::last_os_error());
    f
}

pub(crate) fn forge_named(name: &str, h: &Hdr, len: u64) -> Forged {
    forge(shm_path(name), &h.0, len, 0o600)
}

/// A forged segment outside the `mproc.` prefix, for opening by handle.
pub(crate) fn forge_loose(what: &str, h: &[u8], len: u64, mode: u32) -> Forged {
    forge(
        PathBuf::from(format!("/dev/shm/{}", common::unique_name(what))),
        h,
        len,
        mode,
    )
}

fn err<T: std::fmt::Debug>(r: mproc::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// The same serde shape as `RegionHandle` (whose fields are private), to forge handles. postcard is not
/// self-describing, so equal shapes encode alike; `handle_with_wrong_id_is_stale` checks the round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HandleMirror {
    pub(crate) id: u64,
    pub(crate) source: SourceMirror,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum SourceMirror {
    Named(String),
    Fd { pid: u32, fd: i32 },
}

pub(crate) fn mirror(h: &RegionHandle) -> HandleMirror {
    postcard::from_bytes(&postcard::to_stdvec(h).unwrap())
        .expect("RegionHandle has the mirrored shape")
}

pub(crate) fn handle(m: &HandleMirror) -> RegionHandle {
    postcard::from_bytes(&postcard::to_stdvec(m).unwrap())
        .expect("the mirror has RegionHandle's shape")
}

/// A handle to descriptor `fd` of this process.
pub(crate) fn fd_handle(id: u64, fd: i32) -> RegionHandle {
    handle(&HandleMirror {
        id,
        source: SourceMirror::Fd {
            pid: std::process::id(),
            fd,
        },
    })
}

pub(crate) fn read_payload_byte(r: &Region, at: usize) -> u8 {
    assert!(at < r.len());
    // SAFETY: `at` is inside the payload, which lies inside the mapping (validated at open); a volatile
    // byte read tolerates other processes writing it.
    unsafe { r.as_ptr().add(at).read_volatile() }
}

// ------------------------------------------------------------------------- 1. validation on open

fn region_open_and_check(name: &str) {
    let r = Region::open(name).expect("child opens region");
    // SAFETY: the payload is 8 bytes; the parent wrote it before starting us.
    let v = unsafe { (r.as_ptr() as *const u64).read_volatile() };
    assert_eq!(v, 0xfeed_f00d);
    // SAFETY: as above; the parent reads it after we exit.
    unsafe { (r.as_ptr() as *mut u64).write_volatile(7) };
}

fn named_open_from_other_process() {
    let name = common::unique_name("open");
    let r = Region::create(&name, 8, false).unwrap();
    // SAFETY: 8-byte payload, not yet shared.
    unsafe { (r.as_ptr() as *mut u64).write_volatile(0xfeed_f00d) };
    let mut c = common::spawn_role("region_open_and_check", &name);
    assert!(common::wait_bounded(&mut c, Duration::from_secs(60)).success());
    // SAFETY: the child has exited; 8-byte payload.
    assert_eq!(unsafe { (r.as_ptr() as *const u64).read_volatile() }, 7);
    drop(r);
    assert!(matches!(Region::open(&name), Err(Error::NotFound { .. })));
}

fn wrong_type_is_type_mismatch() {
    let name = common::unique_name("type");
    let lock = Lock::create(&name).unwrap();
    let lock_hash = read_header(&name).u64(TYPE_HASH);
    let e = err(Region::open(&name));
    assert!(
        matches!(&e, Error::TypeMismatch { expected, found_hash, .. } if expected == "bytes" && *found_hash == lock_hash),
        "{e:?}"
    );
    drop(lock);
    // Same payload size as a lock (16 bytes): only the type differs.
    let r = Region::create(&name, 16, false).unwrap();
    let e = err(Lock::open(&name));
    assert!(
        matches!(&e, Error::TypeMismatch { expected, .. } if expected == "mproc::Lock"),
        "{e:?}"
    );
    let e = err(Lock::from_handle(&r.handle()));
    assert!(
        matches!(&e, Error::TypeMismatch { expected, .. } if expected == "mproc::Lock"),
        "{e:?}"
    );
    drop(r);
}

fn wrong_size_is_size_mismatch() {
    // A real Lock header, claiming a 32-byte payload (the file really has 32).
    let h = lock_header().set64(PAYLOAD_SIZE, 32);
    let name = common::unique_name("size");
    let _f = forge_named(&name, &h, PAYLOAD_OFFSET + 32);
    let e = err(Lock::open(&name));
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 16,
                found: 32
            }
        ),
        "{e:?}"
    );
}

fn forged_headers_are_typed_errors() {
    let good = bytes_header(8);
    let len = PAYLOAD_OFFSET + 8;
    let open = |h: Hdr| {
        let name = common::unique_name("hdr");
        let _f = forge_named(&name, &h, len);
        Region::open(&name)
    };
    // The control: a faithful copy opens.
    assert_eq!(open(good).expect("an intact copy opens").len(), 8);

    let e = err(open(good.set64(MAGIC, u64::from_ne_bytes(*b"NOTMPROC"))));
    assert!(
        matches!(e, Error::BadMagic { found } if found == *b"NOTMPROC"),
        "{e:?}"
    );
    let e = err(open(good.set64(MAGIC, 0)));
    assert!(
        matches!(
            e,
            Error::BadMagic {
                found: [0, 0, 0, 0, 0, 0, 0, 0]
            }
        ),
        "{e:?}"
    );
    // The previous format (1) is refused like any other.
    let e = err(open(good.set32(VERSION, 1)));
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                expected: 2,
                found: 1
            }
        ),
        "{e:?}"
    );
    let e = err(open(good.set32(VERSION, u32::MAX)));
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                expected: 2,
                found: u32::MAX
            }
        ),
        "{e:?}"
    );
    let e = err(open(good.set32(HEADER_SIZE, 65)));
    assert!(matches!(e, Error::Corrupted(_)), "{e:?}");
    let e = err(open(good.set64(TYPE_HASH, good.u64(TYPE_HASH) ^ 1)));
    assert!(
        matches!(&e, Error::TypeMismatch { expected, .. } if expected == "bytes"),
        "{e:?}"
    );

    // payload_size larger than the file, by one byte, by a lot, and so large that adding the header overflows.
    let e = err(open(good.set64(PAYLOAD_SIZE, 9)));
    assert!(
        matches!(
            e,
            Error::Truncated {
                needed: 137,
                actual: 136
            }
        ),
        "{e:?}"
    );
    let e = err(open(good.set64(PAYLOAD_SIZE, 1 << 40)));
    assert!(
        matches!(e, Error::Truncated { needed, actual: 136 } if needed == (1 << 40) + 128),
        "{e:?}"
    );
    let e = err(open(good.set64(PAYLOAD_SIZE, u64::MAX - 64)));
    assert!(
        matches!(
            e,
            Error::Truncated {
                needed: u64::MAX,
                actual: 136
            }
        ),
        "{e:?}"
    );

    // A ready flag that is neither "initialising" (0) nor READY is garbage, reported without waiting.
    for garbage in [1, 0xdead_beef, READY ^ 1, u32::MAX] {
        let e = err(open(good.set32(READY_WORD, garbage)));
        assert!(matches!(e, Error::Corrupted(_)), "{garbage:#x}: {e:?}");
    }
    // Not yet published, and the creator is dead (no such pid; or our pid with another start time, as
    // after pid reuse): NotReady at once rather than after the open timeout. Such a segment is stale
    // (persistent spares only a published one), so no sweep of the suite may run meanwhile.
    let _sweep = sweep_lock();
    let unpublished = good.set32(READY_WORD, 0).set32(FLAGS, FLAG_PERSISTENT);
    let e = err(open(unpublished.set32(CREATOR_PID, NEVER_A_PID)));
    assert!(
        matches!(
            e,
            Error::NotReady {
                creator_pid: NEVER_A_PID,
                ..
            }
        ),
        "{e:?}"
    );
    let reused = unpublished.set64(CREATOR_START, good.u64(CREATOR_START) + 1);
    let e = err(open(reused));
    assert!(
        matches!(e, Error::NotReady { creator_pid, .. } if creator_pid == std::process::id()),
        "{e:?}"
    );
}

/// A named file shorter than a header is never one still being made (a region is named only once
/// made and sized), so it is refused at once. Before (found by review), the opener waited the whole
/// open timeout (10 s) for it to grow; the bound below is that timeout's half, generous for a refusal.
fn short_named_file_is_truncated() {
    let name = common::unique_name("short");
    let _f = forge_named(&name, &Hdr([0; 64]), 10);
    let t = std::time::Instant::now();
    let e = err(Region::open(&name));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "a short file was waited for"
    );
    assert!(
        matches!(
            e,
            Error::Truncated {
                needed: 128,
                actual: 10
            }
        ),
        "{e:?}"
    );
}

/// By handle nobody can be still creating the segment, so a short one is refused at once.
fn short_segment_by_handle_is_truncated() {
    let good = bytes_header(8);
    for len in [0, 10, 63, 64, 127] {
        let file = forge_sealed(&good.0, len, 0o600);
        let e = err(Region::from_handle(&fd_handle(
            good.u64(REGION_ID),
            file.as_raw_fd(),
        )));
        assert!(
            matches!(e, Error::Truncated { needed: 128, actual } if actual == len),
            "{len}: {e:?}"
        );
    }
}

fn missing_name_is_not_found() {
    let name = common::unique_name("missing");
    let e = err(Region::open(&name));
    assert!(
        matches!(&e, Error::NotFound { name: n } if *n == name),
        "{e:?}"
    );
    let e = err(Lock::open(&name));
    assert!(
        matches!(&e, Error::NotFound { name: n } if *n == name),
        "{e:?}"
    );
    let e = err(Region::unlink(&name));
    assert!(
        matches!(&e, Error::NotFound { name: n } if *n == name),
        "{e:?}"
    );
}

fn shared_or_foreign_segment_is_not_private() {
    let good = bytes_header(8);
    let len = PAYLOAD_OFFSET + 8;
    // Readable or writable by group or others, by name and by handle.
    for mode in [0o644, 0o604, 0o660, 0o606, 0o666] {
        let name = common::unique_name("mode");
        let f = forge(shm_path(&name), &good.0, len, mode);
        let uid = std::fs::metadata(&f.0).unwrap().uid();
        let e = err(Region::open(&name));
        assert!(
            matches!(&e, Error::NotPrivate { name: n, owner_uid, mode: m }
                if *n == name && *owner_uid == uid && *m == mode),
            "{mode:o}: {e:?}"
        );
        let file = File::open(&f.0).unwrap();
        let e = err(Region::from_handle(&fd_handle(
            good.u64(REGION_ID),
            file.as_raw_fd(),
        )));
        assert!(
            matches!(e, Error::NotPrivate { mode: m, .. } if m == mode),
            "{mode:o}: {e:?}"
        );
    }
    // Mode 0600 but owned by another user: only possible to set up as root.
    let name = common::unique_name("owner");
    let f = forge_named(&name, &good, len);
    match std::os::unix::fs::chown(&f.0, Some(12345), Some(12345)) {
        Ok(()) => {
            let e = err(Region::open(&name));
            assert!(
                matches!(
                    e,
                    Error::NotPrivate {
                        owner_uid: 12345,
                        mode: 0o600,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        Err(e) => eprintln!(
            "region::shared_or_foreign_segment_is_not_private: cannot chown ({e}), not checked"
        ),
    }
}

fn symlink_and_directory_are_refused() {
    let good = bytes_header(8);
    let target = forge_loose("target", &good.0, PAYLOAD_OFFSET + 8, 0o600);
    let name = common::unique_name("symlink");
    std::os::unix::fs::symlink(&target.0, shm_path(&name)).unwrap();
    let _link = Forged(shm_path(&name));
    // O_NOFOLLOW: a name planted as a symlink is never followed (ELOOP).
    let e = err(Region::open(&name));
    assert!(
        matches!(&e, Error::Os { source, .. } if source.raw_os_error() == Some(40)),
        "{e:?}"
    );

    let name = common::unique_name("dir");
    std::fs::create_dir(shm_path(&name)).unwrap();
    let e = err(Region::open(&name));
    std::fs::remove_dir(shm_path(&name)).unwrap();
    assert!(matches!(e, Error::Os { .. }), "{e:?}");
}

fn invalid_names_are_refused() {
    let long = "x".repeat(201);
    for n in [
        "", ".", "..", ".hidden", "a/b", "../x", "/abs", "sp ace", "tab\t", "nul\0", "é", "a\\b",
        &long,
    ] {
        let is_invalid = |e: Error| matches!(&e, Error::InvalidName { name, .. } if name == n);
        assert!(is_invalid(err(Region::open(n))), "open {n:?}");
        assert!(is_invalid(err(Region::create(n, 8, false))), "create {n:?}");
        assert!(is_invalid(err(Region::unlink(n))), "unlink {n:?}");
        assert!(is_invalid(err(Lock::open(n))), "Lock::open {n:?}");
        assert!(is_invalid(err(Lock::create(n))), "Lock::create {n:?}");
        let named = handle(&HandleMirror {
            id: 1,
            source: SourceMirror::Named(n.to_owned()),
        });
        assert!(
            is_invalid(err(Region::from_handle(&named))),
            "from_handle {n:?}"
        );
    }
    // The boundary: 200 bytes is a valid (missing) name.
    let mut at_limit = common::unique_name("long");
    at_limit.push_str(&"y".repeat(200 - at_limit.len()));
    assert!(matches!(
        err(Region::open(&at_limit)),
        Error::NotFound { .. }
    ));
}

// ------------------------------------------------------------------------------------- 2. janitor

/// Child role: creates a non-persistent region called `arg`, says so, and waits to be killed.
fn create_and_linger(name: &str) {
    let _r = Region::create(name, 64, false).expect("create");
    say("ready");
    std::thread::sleep(BOUND);
}

/// Child role: `arg` is "<name> <persistent 0|1>"; creates the region and exits without dropping it.
fn create_and_vanish(arg: &str) {
    let (name, persistent) = arg.split_once(' ').expect("name and flag");
    let r = Region::create(name, 64, persistent == "1").expect("create");
    std::mem::forget(r);
    std::process::exit(0);
}

/// Child role: creates the region `name`, hands it to a thread that keeps it (and says `ready`), and
/// ends its main thread alone: the process lives on, its leader a zombie in `/proc`.
fn create_then_end_main_thread(name: &str) {
    let r = Region::create(name, 64, false).expect("create");
    let keeper = std::thread::spawn(move || {
        let _r = r;
        say("ready");
        std::thread::sleep(BOUND);
    });
    std::mem::forget(keeper);
    // SAFETY: exit(2) ends only the calling thread (what pthread_exit does, without unwinding): no
    // destructor of this thread's frames runs, none of them owns anything another thread uses.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit(2) returned");
}

/// A process whose main thread ended while another thread still uses its region reads as a zombie
/// (`Z`) in `/proc/<pid>/stat`; the janitor must not take it for dead (until 2026-12-01 it removed
/// the live process's region; found by review).
fn janitor_keeps_zombie_leaders_region() {
    let _sweep = sweep_lock();
    let name = common::unique_name("jan-zleader");
    let mut kid = Kid::spawn("region_create_then_end_main_thread", &name, BOUND);
    kid.expect_line("ready");
    let pid = kid.pid() as i32;
    common::eventually("the leader is a zombie", BOUND, || {
        common::stat(pid).is_some_and(|(state, _)| state == 'Z')
    });
    let removed = mproc::cleanup_stale().unwrap();
    assert!(!removed.contains(&name), "{removed:?}");
    assert!(shm_path(&name).exists());
    kid.kill_and_wait();
    let removed = mproc::cleanup_stale().unwrap();
    assert!(
        removed.contains(&name),
        "once the process is dead: {removed:?}"
    );
}

/// Tests that sweep hold `sweep_lock`: another sweep running in parallel could take the stale regions
/// first and the "removed" list would miss them.
fn janitor_removes_only_stale() {
    let _sweep = sweep_lock();
    let [killed, exited, persistent, own] =
        ["jan-killed", "jan-exited", "jan-persist", "jan-own"].map(common::unique_name);
    let mine = Region::create(&own, 64, false).unwrap();
    let mut lingering = Kid::spawn("region_create_and_linger", &killed, BOUND);
    assert_eq!(lingering.next_line(), "ready");
    assert!(
        Kid::spawn("region_create_and_vanish", &format!("{exited} 0"), BOUND)
            .wait()
            .success()
    );
    assert!(Kid::spawn(
        "region_create_and_vanish",
        &format!("{persistent} 1"),
        BOUND
    )
    .wait()
    .success());
    let exists = |n: &str| shm_path(n).exists();

    // The lingering child is alive: its region stays; the one whose creator exited without dropping goes.
    let removed = mproc::cleanup_stale().unwrap();
    assert!(removed.contains(&exited), "{removed:?}");
    for n in [&killed, &persistent, &own] {
        assert!(
            !removed.contains(n) && exists(n),
            "{n} was removed: {removed:?}"
        );
    }
    assert!(!exists(&exited));

    // SIGKILL: no destructor ran, the region is left behind until the next sweep.
    assert!(!lingering.kill_and_wait().success());
    assert!(exists(&killed));
    let removed = mproc::cleanup_stale().unwrap();
    assert!(removed.contains(&killed), "{removed:?}");
    assert!(!exists(&killed));
    for n in [&persistent, &own] {
        assert!(
            !removed.contains(n) && exists(n),
            "{n} was removed: {removed:?}"
        );
    }
    assert!(Region::open(&persistent).is_ok());

    drop(mine);
    assert!(!exists(&own));
    Region::unlink(&persistent).unwrap();
}

// ----------------------------------------------------------------------------- 3. stale handles

/// Child role: makes an anonymous region holding 0x5a, prints its handle, and lingers if `arg` says so.
fn anon_handle(arg: &str) {
    let r = Region::anonymous(64).unwrap();
    // SAFETY: byte 0 of a 64-byte payload nobody else can reach yet.
    unsafe { r.as_ptr().write_volatile(0x5a) };
    say(&handle_to_hex(&r.handle()));
    if arg == "linger" {
        std::thread::sleep(BOUND);
    }
}

fn handle_of_exited_process_is_stale() {
    let read_handle =
        |kid: &mut Kid| -> RegionHandle { handle_from_hex(&kid.next_line()).unwrap() };
    // Alive: the handle opens, and shows what the child wrote.
    let mut kid = Kid::spawn("region_anon_handle", "linger", BOUND);
    let h = read_handle(&mut kid);
    let r = Region::from_handle(&h).expect("a live process's handle opens");
    assert_eq!((r.len(), read_payload_byte(&r, 0)), (64, 0x5a));
    kid.kill_and_wait();
    // Our mapping outlives the creator, but the handle does not: it named the creator's descriptor.
    assert_eq!(read_payload_byte(&r, 0), 0x5a);
    let e = err(Region::from_handle(&h));
    assert!(matches!(e, Error::StaleHandle(_)), "{e:?}");

    // Exited but not yet reaped (a zombie has no descriptors left).
    let mut kid = Kid::spawn("region_anon_handle", "exit", BOUND);
    let h = read_handle(&mut kid);
    let pid = kid.pid() as i32;
    common::eventually("child becomes a zombie", BOUND, || {
        common::stat(pid).map(|(state, _)| state) == Some('Z')
    });
    let e = err(Region::from_handle(&h));
    assert!(matches!(e, Error::StaleHandle(_)), "zombie: {e:?}");
    assert!(kid.wait().success());
    let e = err(Region::from_handle(&h));
    assert!(matches!(e, Error::StaleHandle(_)), "reaped: {e:?}");
}

fn handle_with_wrong_id_is_stale() {
    // Anonymous: the right descriptor, the wrong id.
    let anon = Region::anonymous(8).unwrap();
    let real = anon.handle();
    let m = mirror(&real);
    assert_eq!(handle(&m), real, "the mirror must round-trip");
    let forged = handle(&HandleMirror { id: m.id ^ 1, ..m });
    assert!(matches!(
        err(Region::from_handle(&forged)),
        Error::StaleHandle(_)
    ));
    assert!(Region::from_handle(&real).is_ok());

    // Named: a wrong id, then the name taken over by a new region (same name, new id).
    let name = common::unique_name("stale");
    let first = Region::create(&name, 8, false).unwrap();
    let old = first.handle();
    let m = mirror(&old);
    let forged = handle(&HandleMirror {
        id: m.id.wrapping_add(1),
        ..m
    });
    assert!(matches!(
        err(Region::from_handle(&forged)),
        Error::StaleHandle(_)
    ));
    drop(first);
    let second = Region::create(&name, 8, false).unwrap();
    assert!(matches!(
        err(Region::from_handle(&old)),
        Error::StaleHandle(_)
    ));
    assert!(Region::from_handle(&second.handle()).is_ok());
    drop(second);
    // Gone altogether: reported as NotFound (the name's own error), although `from_handle`'s docs
    // promise StaleHandle "if the region is gone".
    assert!(matches!(
        err(Region::from_handle(&old)),
        Error::NotFound { .. }
    ));
}

// ------------------------------------------------------------------------------------ known bugs

/// Regression: dropping a non-persistent region used to unlink unlinks its *name*, whatever the name
/// referred to by then. If the name was removed (`Region::unlink`, the janitor) and re-created by someone
/// else, the first creator's drop deletes the newcomer's name: its other users get NotFound, and a
/// persistent region is lost. The drop (like the janitor's unlink) should check that the name still
/// refers to its own segment (same inode, or same region id) before unlinking.
fn creator_drop_spares_a_replacement() {
    let name = common::unique_name("replaced");
    let first = Region::create(&name, 8, false).unwrap();
    Region::unlink(&name).unwrap();
    let second = Region::create(&name, 8, true).unwrap();
    drop(first);
    let reopened = Region::open(&name).map(|r| r.handle() == second.handle());
    let _ = Region::unlink(&name);
    assert!(
        matches!(reopened, Ok(true)),
        "the replacement's name was removed: {reopened:?}"
    );
}

/// Regression: a creator killed after writing the header but before publishing leaves
/// `ready == 0`. For a non-persistent region the janitor removes it; for a persistent one it does not
/// (persistent regions are always left alone), although a region that was never published can never be
/// used. Worse, the name is then blocked for good: `Lock::open_or_create` (which makes persistent locks)
/// gets AlreadyExists, then NotReady, forever. This forges exactly what such a kill leaves behind.
fn janitor_removes_unpublished_persistent() {
    let _sweep = sweep_lock();
    let name = common::unique_name("unpublished");
    let h = lock_header()
        .set32(READY_WORD, 0)
        .set32(FLAGS, FLAG_PERSISTENT)
        .set32(CREATOR_PID, NEVER_A_PID);
    let _f = forge_named(&name, &h, PAYLOAD_OFFSET + 16);
    let e = err(Lock::open_or_create(&name));
    assert!(matches!(e, Error::NotReady { .. }), "{e:?}");
    let removed = mproc::cleanup_stale().unwrap();
    assert!(
        removed.contains(&name),
        "a never-published region of a dead creator was kept: {removed:?}"
    );
    let reopened = Lock::open_or_create(&name).map(drop); // persistent: unlinked just below
    let _ = Region::unlink(&name);
    assert!(reopened.is_ok(), "{reopened:?}");
}

/// Regression: the creator used to store the header fields one by one (magic first, `Relaxed`), and
/// the janitor read them without looking at `ready`; now the magic is stored last (Release). A sweep that lands after the magic store and
/// before `creator_pid`/`flags` sees "ours, not persistent, creator pid 0" — and `process_alive(0, _)` is
/// false — so it unlinks a region its live creator is initialising (even a persistent one). This forges
/// the header exactly as the creator has it after its first store; a fresh all-zero one is (rightly) kept.
fn janitor_spares_a_header_being_written() {
    let _sweep = sweep_lock();
    let name = common::unique_name("halfwritten");
    let h = Hdr([0; 64]).set64(MAGIC, u64::from_ne_bytes(*b"MPROCRG1"));
    let f = forge_named(&name, &h, PAYLOAD_OFFSET + 16);
    let removed = mproc::cleanup_stale().unwrap();
    let kept = f.0.exists();
    assert!(
        kept && !removed.contains(&name),
        "a header being written was taken for a dead creator's"
    );
}

/// Sweeps (`cleanup_stale`) of this file (and of `security_region.rs`) run one at a time: each asserts
/// what *its* sweep removed.
pub(crate) fn sweep_lock() -> std::sync::MutexGuard<'static, ()> {
    static SWEEP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SWEEP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Found by review: a named region's file got mode 0600 less the creator's umask, so under a umask
/// such as 0277 it was 0400 and no other process of the user could open it for writing (root
/// aside). The mode is set explicitly now. In a child: the umask is the whole process's.
fn named_region_is_owner_read_write_whatever_the_umask() {
    let name = common::unique_name("umask");
    common::run_role_ok("region_create_under_umask", &name, Duration::from_secs(60));
}

/// Child role: under umask 0277, creates a named region and a named queue (both persistent, so that
/// the files outlive nothing: they are removed here) and checks their files' modes.
fn create_under_umask(name: &str) {
    // SAFETY: umask only sets the process's file-mode mask; this child runs nothing else meanwhile.
    unsafe { libc::umask(0o277) };
    let region = Region::create(name, 64, true).unwrap();
    let mode = std::fs::metadata(shm_path(name)).unwrap().mode() & 0o7777;
    Region::unlink(name).unwrap();
    drop(region);
    assert_eq!(mode, 0o600, "region file mode {mode:o}");
    let q = format!("{name}-q");
    let queue: mproc::Queue<u32> = mproc::Queue::create(&q, 4, 64).unwrap();
    let mode = std::fs::metadata(shm_path(&q)).unwrap().mode() & 0o7777;
    drop(queue);
    assert_eq!(mode, 0o600, "queue file mode {mode:o}");
}
