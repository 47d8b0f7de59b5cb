//! Regressions for the region findings of the 2026-11-30 security review (S4, R5, R6, S6) and of the
//! 2026-12-01 region review (R7): forged anonymous-region handles, handles whose decoding used to stall
//! or open devices, janitor sweeps that used to remove what they could not judge, and opens a lease
//! used to stall.
//!
//! Each test fails on the code the review read (4351a93) and passes since; its doc comment names the
//! finding. The forging helpers and header offsets are those of `region.rs`. Sweeps take `region.rs`'s
//! sweep lock, and every forged segment under the `mproc.` prefix either must survive a sweep (that is
//! what the tests here assert) or names this live process as its creator.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use libtest_mimic::Trial;
use mproc::{Error, Lock, Region};

use crate::common::{self, say, shm_path, Kid, Role};
use crate::region::{
    forge_named, forge_sealed, handle, lock_header, sweep_lock, Forged, HandleMirror, Hdr,
    SourceMirror, BOUND, CREATOR_PID, CREATOR_PIDNS, PAYLOAD_OFFSET, READY, READY_WORD, REGION_ID,
    VERSION,
};

pub const ROLES: &[Role] = &[
    ("secregion_unsealed_lock", unsealed_lock),
    ("secregion_lease_squatter", lease_squatter),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("security_region", name, f);
    vec![
        t(
            "s4_unsealed_anonymous_handle_is_refused",
            s4_unsealed_anonymous_handle_is_refused,
        ),
        t(
            "r5_forged_named_handles_do_not_stall_decoding",
            r5_forged_named_handles_do_not_stall_decoding,
        ),
        t(
            "r5_fifo_behind_a_handle_is_never_opened",
            r5_fifo_behind_a_handle_is_never_opened,
        ),
        t(
            "r6_janitor_keeps_what_it_cannot_judge",
            r6_janitor_keeps_what_it_cannot_judge,
        ),
        t(
            "s6_creator_of_another_pid_namespace_is_never_judged_dead",
            s6_creator_of_another_pid_namespace_is_never_judged_dead,
        ),
        t(
            "r7_a_leased_file_stalls_neither_open_nor_the_janitor",
            r7_a_leased_file_stalls_neither_open_nor_the_janitor,
        ),
    ]
}

/// Child role: plants `/dev/shm/mproc.<name>` (0600, a page of garbage), holds a read lease on it and
/// ignores the signal that asks it to give the lease up, as a squatter would.
fn lease_squatter(name: &str) {
    let path = shm_path(name);
    std::fs::write(&path, [0x5au8; 4096]).expect("plant the file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = File::open(&path).expect("open read-only");
    // SAFETY: setting SIGIO's disposition to "ignore" affects only this process, which has no
    // handler of its own for it.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    // SAFETY: F_SETLEASE takes an int argument and only records a lease on the description we own.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    assert_eq!(r, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
    say("ready");
    std::thread::sleep(BOUND);
}

/// R7 (review of 2026-12-01): a process of the same user holding a read lease on a file under our
/// prefix made every open of it for writing wait for the lease to break (`lease-break-time`, 45 s):
/// `Region::open` of that name and every `cleanup_stale` (which peeks at each file) stalled. Opens
/// are non-blocking now: the lease makes them fail at once, with a typed error.
fn r7_a_leased_file_stalls_neither_open_nor_the_janitor() {
    const NO_STALL: Duration = Duration::from_secs(30);
    let name = common::unique_name("r7-lease");
    let mut squatter = Kid::spawn("secregion_lease_squatter", &name, BOUND);
    squatter.expect_line("ready");
    let opened = common::bounded("Region::open of a leased file", NO_STALL, {
        let name = name.clone();
        move || Region::open(&name).map(drop)
    });
    assert!(opened.is_err(), "a page of garbage opened as a region");
    let _sweep = sweep_lock();
    let swept = common::bounded("cleanup_stale beside a leased file", NO_STALL, || {
        mproc::cleanup_stale()
    });
    assert!(!swept.unwrap().contains(&name));
    squatter.kill_and_wait();
    std::fs::remove_file(shm_path(&name)).expect("remove the planted file");
}

/// A pid no process can have (above PID_MAX_LIMIT, proc(5)).
const GHOST_PID: u32 = 0x7fff_fff0;

fn err<T: std::fmt::Debug>(r: mproc::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// A handle to descriptor `fd` of this process, as postcard bytes (what a peer would send).
fn fd_handle_bytes(id: u64, fd: i32) -> Vec<u8> {
    postcard::to_stdvec(&HandleMirror {
        id,
        source: SourceMirror::Fd {
            pid: std::process::id(),
            fd,
        },
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------------- S4

/// A memfd of mode 0600 that can be sealed, holding `h` and sized `len`, sealed with `seals` only.
fn memfd(h: &Hdr, len: u64, seals: i32) -> File {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create only reads it.
    let fd = unsafe {
        libc::memfd_create(
            c"half-sealed".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    f.write_all_at(&h.0, 0).unwrap();
    f.set_len(len).unwrap();
    // SAFETY: F_ADD_SEALS takes an int and only changes this memfd's seal set.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }, 0);
    f
}

/// Child role, the review's reproduction A4: an unsealed memfd holding a hand-written `Lock` header,
/// decoded as a `Lock` from postcard bytes. The code the review read accepted it; truncating the memfd
/// then killed us with SIGBUS on the next `lock()`. Prints "refused <error>" if the decode is refused.
fn unsealed_lock(_: &str) {
    // Without MFD_ALLOW_SEALING: the memfd can never be sealed (its seal set is F_SEAL_SEAL).
    // SAFETY: the name is a valid NUL-terminated string; memfd_create only reads it.
    let fd = unsafe { libc::memfd_create(c"forged-lock".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    f.set_len(4096).unwrap();
    let h = lock_header();
    f.write_all_at(&h.0, 0).unwrap();
    let bytes = fd_handle_bytes(h.u64(REGION_ID), f.as_raw_fd());
    match postcard::from_bytes::<Lock>(&bytes) {
        Ok(lock) => {
            say("opened");
            drop(lock.lock());
            f.set_len(0).unwrap();
            drop(lock.lock()); // SIGBUS on the old code
            say("survived");
        }
        // postcard keeps only "Serde Deserialization Error": ask the typed API why.
        Err(_) => {
            let m = postcard::from_bytes(&bytes).unwrap();
            say(&format!(
                "refused {:?}",
                err(Lock::from_handle(&handle(&m)))
            ));
        }
    }
}

/// S4: an anonymous-region handle opens only a memfd sealed against shrinking and growing. An unsealed
/// memfd (A4), a memfd sealed one way only and a plain tmpfs file are all refused with `NotSealed`
/// before they are mapped, so no SIGBUS is reachable; a real anonymous `Lock` still travels.
fn s4_unsealed_anonymous_handle_is_refused() {
    let mut kid = Kid::spawn("secregion_unsealed_lock", "", BOUND);
    let line = kid.next_line();
    assert!(
        line.starts_with("refused NotSealed {")
            && line.contains(&format!("seals: Some({})", libc::F_SEAL_SEAL)),
        "the forged unsealed handle was not refused: {line:?}"
    );
    assert!(kid.wait().success());

    let h = lock_header();
    let id = h.u64(REGION_ID);
    let len = PAYLOAD_OFFSET + 16;
    let open = |fd: i32| {
        let m = postcard::from_bytes(&fd_handle_bytes(id, fd)).unwrap();
        Lock::from_handle(&handle(&m))
    };

    // Sealed against shrinking only (it could still grow), or against growing only (it could be
    // truncated): both refused, the error names the seals found.
    for seals in [libc::F_SEAL_SHRINK, libc::F_SEAL_GROW] {
        let f = memfd(&h, len, seals);
        let e = err(open(f.as_raw_fd()));
        assert!(
            matches!(e, Error::NotSealed { seals: Some(s), .. } if s == seals as u32),
            "{seals:#x}: {e:?}"
        );
    }

    // A regular tmpfs file of ours, mode 0600, with a perfect header: tmpfs files other than memfds
    // carry F_SEAL_SEAL from birth (memfd_create(2)), so they can never be size-sealed.
    let path = PathBuf::from(format!("/dev/shm/{}", common::unique_name("unsealed")));
    let _guard = Forged(path.clone());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all_at(&h.0, 0).unwrap();
    f.set_len(len).unwrap();
    let e = err(open(f.as_raw_fd()));
    assert!(
        matches!(e, Error::NotSealed { seals: Some(s), .. } if s == libc::F_SEAL_SEAL as u32),
        "{e:?}"
    );

    // The control: the same header in a sealed memfd opens, and a real anonymous Lock travels.
    let sealed = forge_sealed(&h.0, len, 0o600);
    let lock = open(sealed.as_raw_fd()).expect("a sealed memfd with a valid header opens");
    drop(lock.try_lock());
    let real = Lock::new().unwrap();
    let bytes = postcard::to_stdvec(&real).unwrap();
    let back: Lock = postcard::from_bytes(&bytes).expect("a real anonymous Lock travels");
    drop(back.lock());
}

// ---------------------------------------------------------------------------------------------- R5

/// R5: decoding handles from untrusted bytes never waits. A peer hands us handles naming regions that
/// are never published (the creator, this very process, is alive, so an open *by name* would rightly
/// wait for it): each decode used to wait the full 10 s open timeout, so n messages cost n × 10 s. Now
/// each is refused at once with `NotReady`; the bound only proves "no stall" (12 decodes × 10 s would
/// exceed it).
fn r5_forged_named_handles_do_not_stall_decoding() {
    let h = lock_header().set32(READY_WORD, 0);
    let forged: Vec<(String, Forged)> = (0..12)
        .map(|_| {
            let name = common::unique_name("r5stall");
            let f = forge_named(&name, &h, PAYLOAD_OFFSET + 16);
            (name, f)
        })
        .collect();
    let names: Vec<String> = forged.iter().map(|(n, _)| n.clone()).collect();
    let id = h.u64(REGION_ID);
    let me = std::process::id();
    let errors = common::bounded("decoding 12 forged named handles", BOUND / 2, move || {
        names
            .iter()
            .map(|n| {
                let bytes = postcard::to_stdvec(&HandleMirror {
                    id,
                    source: SourceMirror::Named(n.clone()),
                })
                .unwrap();
                let m: HandleMirror = postcard::from_bytes(&bytes).unwrap();
                Lock::from_handle(&handle(&m)).map(drop)
            })
            .collect::<Vec<_>>()
    });
    for e in errors {
        assert!(
            matches!(e, Err(Error::NotReady { creator_pid, .. }) if creator_pid == me),
            "{e:?}"
        );
    }
    drop(forged);
}

/// R5: a handle naming a FIFO (or a device) is refused without the FIFO ever being opened. The old code
/// opened `/proc/<pid>/fd/<fd>` read-write before looking at the file type, which on a FIFO acts as a
/// reader: a writer blocked in `open(2)` on it was released. Now the file is looked at through an
/// `O_PATH` descriptor first, and the writer stays blocked until we open the reading end ourselves.
fn r5_fifo_behind_a_handle_is_never_opened() {
    let path = PathBuf::from(format!("/dev/shm/{}", common::unique_name("fifo")));
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _guard = Forged(path.clone());
    // Our own descriptor to it, without opening it (O_PATH does not count as a reader or a writer).
    let opath = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&path)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn({
        let path = path.clone();
        // Blocks until somebody opens the FIFO for reading (fifo(7)).
        move || tx.send(OpenOptions::new().write(true).open(&path).map(drop))
    });
    let m = postcard::from_bytes(&fd_handle_bytes(1, opath.as_raw_fd())).unwrap();
    let e = err(Region::from_handle(&handle(&m)));
    assert!(
        matches!(&e, Error::Os { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput),
        "{e:?}"
    );
    let released = rx.recv_timeout(Duration::from_secs(2));
    // Release the writer ourselves, whatever happened, so the thread ends.
    let _reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    writer.join().unwrap().ok();
    assert!(
        matches!(released, Err(RecvTimeoutError::Timeout)),
        "decoding the handle opened the FIFO: {released:?}"
    );
}

// ---------------------------------------------------------------------------------------------- R6

/// Makes the file at `path` look `age` old.
fn age(path: &PathBuf, age: Duration) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

/// R6: the janitor removes only segments whose creator it proved dead. Files it cannot judge stay,
/// however old: one without our magic (another tool, another format), one shorter than a header, one
/// with our magic but another format version. The old janitor unlinked the first two once 30 s old,
/// and judged the third by fields whose meaning it did not know. The control, our format with a dead
/// creator of our pid namespace, goes.
fn r6_janitor_keeps_what_it_cannot_judge() {
    let _sweep = sweep_lock();
    let good = lock_header();
    let mut garbage = [0u8; 64];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5a;
    }
    let dead = good.set32(READY_WORD, 0).set32(CREATOR_PID, GHOST_PID);
    let cases = [
        ("r6foreign", Hdr(garbage), PAYLOAD_OFFSET + 64),
        ("r6short", Hdr([0; 64]), 10),
        ("r6version", dead.set32(VERSION, 1), PAYLOAD_OFFSET + 16),
    ];
    let kept: Vec<(String, Forged)> = cases
        .iter()
        .map(|(tag, h, len)| {
            let name = common::unique_name(tag);
            let f = forge_named(&name, h, *len);
            age(&f.0, Duration::from_secs(3600));
            (name, f)
        })
        .collect();
    let control = common::unique_name("r6dead");
    let _control = forge_named(&control, &dead, PAYLOAD_OFFSET + 16);

    let removed = mproc::cleanup_stale().unwrap();
    for (name, f) in &kept {
        assert!(
            f.0.exists() && !removed.contains(name),
            "{name} was removed: {removed:?}"
        );
    }
    // The manager tests sweep without the region sweep lock: the control may be theirs to remove.
    assert!(
        !shm_path(&control).exists(),
        "a dead creator's region survived a sweep: {removed:?}"
    );
}

// ---------------------------------------------------------------------------------------------- S6

/// S6: a creator recorded in another pid namespace (a container sharing `/dev/shm`), or in an unknown
/// one, is never judged by our `/proc`, where its pid means nothing. The janitor keeps its unpublished
/// segment, and an opener waits for it: published while it waits, the region opens; never published,
/// the opener reports `NotReady` once its bound (10 s) expires. The old code took the creator for dead
/// at once: the janitor unlinked its segment, and the opener failed without waiting.
fn s6_creator_of_another_pid_namespace_is_never_judged_dead() {
    let good = lock_header();
    // Our namespace as the template recorded it: whatever it is, `own ^ 1` and 0 are not it.
    let own = good.u32(CREATOR_PIDNS);
    let ghost = good.set32(READY_WORD, 0).set32(CREATOR_PID, GHOST_PID);
    let forged: Vec<(String, Forged)> = [own ^ 1, 0]
        .iter()
        .map(|ns| {
            let name = common::unique_name("s6ns");
            let f = forge_named(&name, &ghost.set32(CREATOR_PIDNS, *ns), PAYLOAD_OFFSET + 16);
            (name, f)
        })
        .collect();
    {
        let _sweep = sweep_lock();
        let removed = mproc::cleanup_stale().unwrap();
        for (name, f) in &forged {
            assert!(
                f.0.exists() && !removed.contains(name),
                "{name} was removed: {removed:?}"
            );
        }
    }

    for (name, f) in &forged {
        // Published while the opener waits: it opens.
        let opener = std::thread::spawn({
            let name = name.clone();
            move || Lock::open(&name).map(drop)
        });
        std::thread::sleep(Duration::from_millis(200));
        let file = File::options().write(true).open(&f.0).unwrap();
        file.write_all_at(&READY.to_ne_bytes(), READY_WORD as u64)
            .unwrap();
        let opened = common::bounded("open while the creator publishes", BOUND, move || {
            opener.join().unwrap()
        });
        assert!(opened.is_ok(), "{name}: {opened:?}");
        file.write_all_at(&0u32.to_ne_bytes(), READY_WORD as u64)
            .unwrap();
    }
    // Never published: a typed error once the open timeout expires, not a hang and not a verdict.
    let name = forged[0].0.clone();
    let e = common::bounded("open of a never-published region", BOUND, move || {
        Lock::open(&name).map(drop)
    });
    assert!(
        matches!(
            e,
            Err(Error::NotReady {
                creator_pid: GHOST_PID,
                ..
            })
        ),
        "{e:?}"
    );
}
