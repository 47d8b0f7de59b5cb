use super::*;
use std::fs::File;

/// A region name no other test (nor another run) uses: `unit-<tag>-<pid>-<random>`.
pub(crate) fn unique(tag: &str) -> String {
    format!("unit-{tag}-{}-{:x}", proc::pid(), proc::random_u64())
}

#[test]
fn anonymous_roundtrip_through_handle() {
    let r = Region::anonymous(100).unwrap();
    // SAFETY: the payload is 100 bytes long and nobody else has the region.
    unsafe { r.as_ptr().write(42) };
    let h = r.handle();
    let r2 = Region::from_handle(&h).unwrap();
    // SAFETY: same region, byte 0 is in bounds.
    assert_eq!(unsafe { r2.as_ptr().read() }, 42);
    assert_eq!(r2.len(), 100);
}

#[test]
fn named_create_open_unlink_on_drop() {
    let name = unique("named");
    let r = Region::create(&name, 64, false).unwrap();
    assert!(matches!(
        Region::create(&name, 64, false),
        Err(Error::AlreadyExists { .. })
    ));
    let o = Region::open(&name).unwrap();
    assert_eq!(o.len(), 64);
    assert_eq!(o.creator_pid(), proc::pid());
    drop(o); // an opener never unlinks
    assert!(Region::open(&name).is_ok());
    drop(r);
    assert!(matches!(Region::open(&name), Err(Error::NotFound { .. })));
}

#[test]
fn persistent_survives_its_creator_handle() {
    let name = unique("persist");
    drop(Region::create(&name, 8, true).unwrap());
    assert!(Region::open(&name).unwrap().is_persistent());
    Region::unlink(&name).unwrap();
    assert!(matches!(Region::unlink(&name), Err(Error::NotFound { .. })));
}

#[test]
fn bad_names_are_refused() {
    for n in ["", ".hidden", "a/b", "sp ace", &"x".repeat(201)] {
        assert!(
            matches!(Region::create(n, 8, false), Err(Error::InvalidName { .. })),
            "{n:?}"
        );
    }
}

/// Found by review: `q<16 hex>-…` names are the blocks of queues, which the janitor (and a queue's
/// last user) removes once nobody is attached to the queue: a user's persistent region of such a
/// name was swept under its user. Every public way to a name refuses them; blocks still work.
#[test]
fn names_reserved_for_queue_blocks_are_refused() {
    let reserved = [
        "q0123456789abcdef-s0123456789abcdef",
        "q0123456789abcdef-anchor",
        "q0123456789abcdef-",
    ];
    for n in reserved {
        let refused = |r: Result<Region>| matches!(r, Err(Error::InvalidName { .. }));
        assert!(refused(Region::create(n, 8, true)), "{n}");
        assert!(refused(Region::open(n)), "{n}");
        assert!(
            matches!(Region::unlink(n), Err(Error::InvalidName { .. })),
            "{n}"
        );
        assert!(
            matches!(
                crate::Queue::<u32>::create(n, 4, 64),
                Err(Error::InvalidName { .. })
            ),
            "{n}"
        );
    }
    // Near misses are users' names as before.
    let pid = std::process::id();
    for n in [
        "q0123456789abcdef",
        "q0123456789ABCDEF-",
        "q0123456789abcde-",
    ] {
        let name = format!("{n}{pid}");
        let r = Region::create(&name, 8, false);
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    // A bounded queue's spilled message and an unbounded queue's segments are such blocks.
    let q: crate::Queue<Vec<u8>> = crate::Queue::with_max_message(2, 64).unwrap();
    q.put(&vec![7u8; 4096]).unwrap();
    assert_eq!(q.get().unwrap(), vec![7u8; 4096]);
    let u: crate::Queue<u32> = crate::Queue::unbounded().unwrap();
    for i in 0..10_000 {
        u.put(&i).unwrap();
    }
    assert_eq!(u.get().unwrap(), 0);
}

#[test]
fn wrong_type_and_size_are_named() {
    let name = unique("typed");
    let layout = Layout {
        type_name: "A",
        hash: layout_hash("A", 8, 8),
        size: Some(8),
    };
    let _r = Region::create_with(layout, Some(&name), false, |_| Ok(())).unwrap();
    let other = Layout {
        type_name: "B",
        hash: layout_hash("B", 8, 8),
        size: Some(8),
    };
    let e = Region::open_with(&name, other, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(&e, Error::TypeMismatch { expected, .. } if expected == "B"),
        "{e}"
    );
    let bigger = Layout {
        size: Some(16),
        ..layout
    };
    let e = Region::open_with(&name, bigger, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 16,
                found: 8
            }
        ),
        "{e}"
    );
}

#[test]
fn payload_ref_checks_bounds_and_alignment() {
    let r = Region::anonymous(16).unwrap();
    assert!(r.payload_ref::<AtomicU64>(8).is_ok());
    assert!(r.payload_ref::<AtomicU64>(9).is_err());
    assert!(r.payload_ref::<AtomicU64>(16).is_err());
    assert!(r.payload_ref::<AtomicU64>(usize::MAX).is_err());
}

#[test]
fn failed_init_leaves_no_name() {
    let name = unique("failinit");
    let e = Region::create_with(Layout::bytes(Some(8)), Some(&name), true, |_| {
        Err(Error::Timeout)
    });
    assert!(matches!(e, Err(Error::Timeout)));
    assert!(matches!(Region::open(&name), Err(Error::NotFound { .. })));
}

/// A copy of `r`'s whole segment (header and payload) in a fresh memfd of mode 0600, size-sealed or not:
/// what a peer forging an anonymous-region handle can make. (Seals of one kind only are tried by the
/// `security_region` ipc tests, which may call fcntl themselves.)
fn copy_into_memfd(r: &Region, sealed: bool) -> File {
    use std::os::unix::fs::FileExt;
    let f = shm::create_memfd("unit-forged").unwrap();
    let len = PAYLOAD_OFFSET + r.len();
    // SAFETY: the mapping is `len` bytes long (header plus payload) and lives as long as `r`; nobody else
    // writes this fresh region.
    let bytes = unsafe { std::slice::from_raw_parts(r.map.as_ptr(), len) };
    f.write_all_at(bytes, 0).unwrap();
    if sealed {
        shm::seal_size(&f).unwrap();
    }
    f
}

/// S4: an anonymous-region handle opens only a memfd sealed against shrinking and growing.
#[test]
fn anonymous_handle_needs_a_size_sealed_memfd() {
    let r = Region::anonymous(64).unwrap();
    let h = |f: &File| RegionHandle {
        id: r.id(),
        source: Source::Fd {
            pid: proc::pid(),
            fd: f.as_raw_fd(),
        },
    };
    let f = copy_into_memfd(&r, false);
    let e = Region::from_handle(&h(&f)).unwrap_err();
    assert!(
        matches!(e, Error::NotSealed { seals: Some(0), .. }),
        "{e:?}"
    );
    let f = copy_into_memfd(&r, true);
    assert_eq!(Region::from_handle(&h(&f)).unwrap().len(), 64);
}

/// A named region whose header says "not yet published, created by a process that cannot exist, in pid
/// namespace `pidns`".
fn unpublished_by_ghost(tag: &str, pidns: u32) -> (String, Region) {
    let name = unique(tag);
    let r = Region::create(&name, 8, false).unwrap();
    let h = r.raw_header();
    h.ready.store(0, Ordering::Release);
    h.creator_pid.store(0x7fff_fff0, Ordering::Relaxed);
    h.creator_pidns.store(pidns, Ordering::Relaxed);
    (name, r)
}

/// S6: a creator of another (or an unknown) pid namespace is never judged by our /proc: an opener waits
/// for it up to its bound, and the janitor keeps its segment. The same ghost in our namespace is dead.
#[test]
fn creator_of_another_pid_namespace_is_never_judged() {
    let own = own_pid_namespace();
    assert_ne!(own, 0);
    assert!(creator_known_dead(0x7fff_fff0, 0, own));
    for pidns in [own ^ 1, 0] {
        assert!(!creator_known_dead(0x7fff_fff0, 0, pidns));
        let (name, r) = unpublished_by_ghost("ns", pidns);
        let shm = shm_name(&name);
        assert_eq!(janitor::is_stale(&shm), Some(false), "{pidns:#x}");
        // Waited for: published while we wait, it opens.
        let opener = std::thread::spawn({
            let name = name.clone();
            move || Region::open_with(&name, Layout::bytes(None), Duration::from_secs(60))
        });
        std::thread::sleep(Duration::from_millis(50));
        r.raw_header().ready.store(READY, Ordering::Release);
        assert!(opener.join().unwrap().is_ok(), "{pidns:#x}");
        // Never published: the bound expires and NotReady names the creator.
        r.raw_header().ready.store(0, Ordering::Release);
        let e = Region::open_with(&name, Layout::bytes(None), Duration::from_millis(100));
        assert!(
            matches!(
                e,
                Err(Error::NotReady {
                    creator_pid: 0x7fff_fff0,
                    ..
                })
            ),
            "{e:?}"
        );
    }
    let (name, _r) = unpublished_by_ghost("ownns", own);
    assert_eq!(janitor::is_stale(&shm_name(&name)), Some(true));
}

/// R5: opening a handle never waits for publication (a genuine handle's region is already published).
#[test]
fn handle_open_does_not_wait() {
    let name = unique("nowait");
    let r = Region::create(&name, 8, false).unwrap();
    let handle = r.handle();
    r.raw_header().ready.store(0, Ordering::Release);
    // The creator (this process) lives: an open by name would wait for it, up to 10 s.
    let started = Instant::now();
    let e = Region::from_handle(&handle).unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e:?}");
    assert!(started.elapsed() < DEFAULT_OPEN_TIMEOUT, "it waited");
}

/// R6: a named region is linked under its name only once published: a failed create leaves nothing,
/// and the loser of a race gets AlreadyExists without disturbing the winner.
#[test]
fn named_region_appears_published() {
    let name = unique("published");
    let r = Region::create(&name, 8, false).unwrap();
    let f = shm::open_named(&shm_name(&name), &name).unwrap();
    assert!(matches!(
        Region::peek_header(f),
        Some((s, true)) if s.magic == MAGIC && s.region_id == r.id()
    ));
    assert!(matches!(
        Region::create(&name, 8, false),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(Region::open(&name).unwrap().id(), r.id());
}

// ------------------------------------------------------------------------------------- review 2026-12

/// Forks a child that runs `f` (bounded by `alarm`) and `_exit`s with what it returns; the child never
/// returns into the test harness.
fn fork_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` and `_exit`s; glibc's fork resets malloc's locks in the child.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: alarm and _exit have no preconditions.
        unsafe { libc::alarm(30) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit has no preconditions; this forked child never returns into the harness.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// The wait status of our child `pid`.
fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Exit code of a child that could not set up its namespace (not root, no namespaces): the test is
/// then skipped.
const SKIP: i32 = 77;

fn skipped(status: i32) -> bool {
    let skip = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == SKIP;
    if skip {
        eprintln!("skipped: the namespace could not be set up (needs root)");
    }
    skip
}

/// What a forked creator runs in the janitor tests: creates region `name`, reports its pid on
/// `ready_w`, and lives (holding the region) until the test closes the other end of `hold_r`
/// ([`let_the_creator_end`]). Returns the child's exit status: 0, or 3 if the region could not be made.
///
/// # Safety
/// In a forked child only, with `ready_w` and `hold_r` its own open descriptors.
unsafe fn live_creator(name: &str, ready_w: i32, hold_r: i32) -> i32 {
    match Region::create(name, 8, false) {
        Ok(r) => {
            let pid = crate::sys::proc::pid().to_ne_bytes();
            // SAFETY: 4 bytes of a live local, to a descriptor of ours (the caller's contract).
            unsafe { libc::write(ready_w, pid.as_ptr().cast(), 4) };
            let mut b = 0u8;
            // SAFETY: 1 byte into a live local, from a descriptor of ours: returns once the test
            // closes the write end.
            unsafe { libc::read(hold_r, (&mut b as *mut u8).cast(), 1) };
            std::mem::forget(r); // the test unlinks the name
            0
        }
        Err(_) => 3,
    }
}

/// In the test, after forking a [`live_creator`]: closes our copies of the children's ends and reads
/// the creator's pid (as its pid namespace numbers it); `None` if no creator reported.
fn creator_pid(ready: [i32; 2], hold: [i32; 2]) -> Option<u32> {
    let mut pid = [0u8; 4];
    // SAFETY: closing our copies of the children's ends (ours, open), reading 4 bytes into a live
    // local.
    let got = unsafe {
        libc::close(ready[1]);
        libc::close(hold[0]);
        libc::read(ready[0], pid.as_mut_ptr().cast(), 4)
    };
    (got == 4).then(|| u32::from_ne_bytes(pid))
}

/// Lets a [`live_creator`] end: closes the test's remaining ends of the two pipes.
fn let_the_creator_end(ready: [i32; 2], hold: [i32; 2]) {
    // SAFETY: closing our own open descriptors, once.
    unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
    }
}

/// A named region is a sparse `/dev/shm` file (`ftruncate`): its pages are allocated at first touch,
/// and on a full tmpfs (any user can fill `/dev/shm`, it is world-writable) that first touch is a
/// SIGBUS in the creator or in any opener, not an error. The manager allocates its growth with
/// `fallocate` for exactly this reason (`shm::allocate`); a plain named region does not.
/// Demonstrated on a private 64 KiB tmpfs mounted over `/dev/shm` in a child's own mount namespace.
#[test]
fn named_region_on_a_full_dev_shm_is_an_error_not_sigbus() {
    let status = wait_child(fork_child(|| {
        // SAFETY: unshare and mount take valid C strings and flags; they change only this child.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return SKIP;
            }
            let (none, root) = (c"none", c"/");
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return SKIP;
            }
            let (tmpfs, at, opts) = (c"tmpfs", c"/dev/shm", c"size=64k,mode=1777");
            if libc::mount(
                tmpfs.as_ptr(),
                at.as_ptr(),
                tmpfs.as_ptr(),
                0,
                opts.as_ptr().cast(),
            ) != 0
            {
                return SKIP;
            }
        }
        match Region::create("review-full", 1 << 20, false) {
            // What it should be: the space is refused at creation.
            Err(Error::OutOfMemory { .. }) => 0,
            Err(e) => {
                eprintln!("unexpected error {e:?}");
                2
            }
            Ok(r) => {
                // Created: then every page must be usable (current code dies here).
                for off in (0..r.len()).step_by(4096) {
                    // SAFETY: in bounds of the payload; nobody else maps this region.
                    unsafe { r.as_ptr().add(off).write_volatile(1) };
                }
                0
            }
        }
    }));
    if skipped(status) {
        return;
    }
    assert!(
        !libc::WIFSIGNALED(status),
        "the creator died of signal {} (7 = SIGBUS) touching the region it created",
        libc::WTERMSIG(status)
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}

/// `proc::pid_namespace` (and `pid_ns_tag`) are cached for the life of the process, and the cache is
/// inherited across `fork`. A child forked into a new pid namespace (after `unshare(CLONE_NEWPID)` or
/// `setns`) therefore records its *new* namespace's pid under its parent's namespace inode: a checker
/// in the parent namespace judges that pid by its own `/proc` (an unrelated, here absent, process),
/// and the janitor unlinks the region of a creator that is alive. Computed afresh in the child, the
/// namespace is 0 ("unknown": its `/proc` belongs to the parent namespace, `NSpid` has two entries),
/// which is never judged.
#[test]
fn janitor_spares_a_live_creator_forked_into_a_new_pid_namespace() {
    // Any process that used a lock or a region has its namespace cached.
    assert_ne!(own_pid_namespace(), 0);
    let name = unique("pidns");
    // A pid that nothing in our namespace uses: the creator gets it in its own namespace.
    let free = (1000..30000u32)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let (mut ready, mut hold) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two descriptors into each live array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
    }
    let created = name.clone();
    // SAFETY: (the whole child tree) plain system calls on descriptors and memory of these children.
    let outer = fork_child(move || unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return SKIP;
        }
        // The first child is the new namespace's init; it makes the next pid there `free`.
        let init = libc::fork();
        if init == 0 {
            let ok =
                std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", free - 1)).is_ok();
            let creator = if ok { libc::fork() } else { -1 };
            if creator == 0 {
                libc::_exit(live_creator(&created, ready[1], hold[0]));
            }
            if creator < 0 {
                libc::_exit(SKIP);
            }
            let mut st = 0;
            libc::waitpid(creator, &mut st, 0);
            libc::_exit(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                4
            });
        }
        let mut st = 0;
        libc::waitpid(init, &mut st, 0);
        if libc::WIFEXITED(st) {
            libc::WEXITSTATUS(st)
        } else {
            5
        }
    });
    let pid = creator_pid(ready, hold);
    let verdict = if let Some(pid) = pid {
        // The creator runs (it waits on `hold`) as pid `free` of its namespace.
        assert_eq!(pid, free);
        let verdict = janitor::is_stale(&shm_name(&name));
        let still_named = Region::open(&name).is_ok();
        Some((verdict, still_named))
    } else {
        None
    };
    let_the_creator_end(ready, hold);
    let status = wait_child(outer);
    let _ = Region::unlink(&name);
    if skipped(status) {
        return;
    }
    let (verdict, still_named) = verdict.expect("the creator reported");
    assert_eq!(status, 0, "status {status:#x}");
    assert_eq!(
        verdict,
        Some(false),
        "the janitor judged a live creator dead (and unlinked its region: still named = {still_named})"
    );
    assert!(still_named);
}

/// R7 (review of 2026-12-01) was fixed for `/dev/shm` segments (`shm::open_regular` opens with
/// `O_NONBLOCK`), not for its twin `filemap::open_regular`, which opens user files (`.npy` chunks,
/// whose paths arrive in deserialized `ChunkHandle`s): the owner of a file holding a read lease on
/// it makes every open of it for writing wait for the lease to break, `lease-break-time` (45 s).
#[cfg(any(feature = "npy", feature = "image"))]
#[test]
fn filemap_open_does_not_wait_for_a_lease() {
    let path = std::env::temp_dir().join(format!("{}.npy", unique("lease")));
    std::fs::write(&path, b"data").unwrap();
    let (mut ready, mut hold) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two descriptors into each live array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
    }
    let leased = path.clone();
    // SAFETY: (the whole child) system calls on this child's own descriptors and signal disposition.
    let holder = fork_child(move || unsafe {
        libc::close(hold[1]);
        let f = File::open(&leased).unwrap();
        libc::signal(libc::SIGIO, libc::SIG_IGN);
        let r = libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK);
        libc::write(
            ready[1],
            if r == 0 { b"l" } else { b"s" }.as_ptr().cast(),
            1,
        );
        let mut b = 0u8;
        libc::read(hold[0], (&mut b as *mut u8).cast(), 1);
        0
    });
    let mut b = 0u8;
    // SAFETY: reads one byte into a live local; closes our copies of the child's ends.
    unsafe {
        libc::close(ready[1]);
        libc::close(hold[0]);
        assert_eq!(libc::read(ready[0], (&mut b as *mut u8).cast(), 1), 1);
    }
    let started = Instant::now();
    let opened = if b == b'l' {
        Some(crate::sys::filemap::open_regular(&path, true).map(|_| ()))
    } else {
        None
    };
    let waited = started.elapsed();
    // SAFETY: closing our own descriptors lets the holder end.
    unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
    }
    wait_child(holder);
    let _ = std::fs::remove_file(&path);
    let Some(opened) = opened else {
        eprintln!("skipped: no lease on {}", path.display());
        return;
    };
    assert!(
        waited < Duration::from_secs(5),
        "opening a leased file for writing waited {waited:?} ({opened:?})"
    );
}

/// `/proc/<pid>/stat`'s start time is shifted by the *reader's* time namespace boottime offset
/// (`timens_add_boottime_ns` in `do_task_stat`). A creator in a time namespace of its own (same pid
/// namespace: `unshare --time --fork`, a container runtime that virtualises clocks, a CRIU restore)
/// records its start time as its namespace shows it; the janitor in the initial time namespace read
/// another number for the same live process, took the creator for a recycled pid, and unlinked the
/// region of a creator that was alive.
#[test]
fn janitor_spares_a_live_creator_in_another_time_namespace() {
    let name = unique("timens");
    let (mut ready, mut hold) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two descriptors into each live array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
    }
    let created = name.clone();
    // SAFETY: (the whole child tree) plain system calls on descriptors and memory of these children.
    let outer = fork_child(move || unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
        // The new time namespace is the one of the children forked from here on; its offsets can be
        // set only before any process lives in it.
        if libc::unshare(libc::CLONE_NEWTIME) != 0 {
            return SKIP;
        }
        if std::fs::write("/proc/self/timens_offsets", "boottime 1000 0\n").is_err() {
            return SKIP;
        }
        let creator = libc::fork();
        if creator == 0 {
            libc::_exit(live_creator(&created, ready[1], hold[0]));
        }
        if creator < 0 {
            return SKIP;
        }
        let mut st = 0;
        libc::waitpid(creator, &mut st, 0);
        if libc::WIFEXITED(st) {
            libc::WEXITSTATUS(st)
        } else {
            4
        }
    });
    let pid = creator_pid(ready, hold);
    let verdict = pid.map(|pid| {
        // The creator runs (it waits on `hold`): our /proc shows it.
        assert!(proc::start_time(pid).is_some());
        let verdict = janitor::is_stale(&shm_name(&name));
        (verdict, Region::open(&name).is_ok())
    });
    let_the_creator_end(ready, hold);
    let status = wait_child(outer);
    let _ = Region::unlink(&name);
    if skipped(status) {
        return;
    }
    let (verdict, still_named) = verdict.expect("the creator reported");
    assert_eq!(status, 0, "status {status:#x}");
    assert_eq!(
        verdict,
        Some(false),
        "the janitor judged a live creator dead (and unlinked its region: still named = {still_named})"
    );
    assert!(still_named);
}

/// `/proc/self/timens_offsets` shows the offsets of the time namespace of the process's *children*
/// (`timens_for_children_get` in `proc_timens_show_offsets`), which differs from its own after
/// `unshare(CLONE_NEWTIME)`: the caller stays in its namespace, only the children it forks from then
/// on enter the new one. A process that had unshared a time namespace for its children, then made a
/// region, took the children's boottime offset off its own start time: its header recorded a start
/// time no other process reads, and the janitor unlinked the region of a live creator (as this
/// process would judge every live holder dead).
#[test]
fn janitor_spares_a_live_creator_that_unshared_a_time_namespace_for_its_children() {
    let name = unique("timens-children");
    let (mut ready, mut hold) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two descriptors into each live array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
    }
    let created = name.clone();
    // SAFETY: (the whole child) plain system calls on descriptors and memory of this child.
    let creator = fork_child(move || unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
        // This child stays in the initial time namespace; the new one is its future children's.
        if libc::unshare(libc::CLONE_NEWTIME) != 0 {
            return SKIP;
        }
        if std::fs::write("/proc/self/timens_offsets", "boottime 1000 0\n").is_err() {
            return SKIP;
        }
        live_creator(&created, ready[1], hold[0])
    });
    let verdict = creator_pid(ready, hold).map(|pid| {
        assert!(proc::start_time(pid).is_some());
        let verdict = janitor::is_stale(&shm_name(&name));
        (verdict, Region::open(&name).is_ok())
    });
    let_the_creator_end(ready, hold);
    let status = wait_child(creator);
    let _ = Region::unlink(&name);
    if skipped(status) {
        return;
    }
    let (verdict, still_named) = verdict.expect("the creator reported");
    assert_eq!(status, 0, "status {status:#x}");
    assert_eq!(
        verdict,
        Some(false),
        "the janitor judged a live creator dead (and unlinked its region: still named = {still_named})"
    );
    assert!(still_named);
}

/// Drops this (forked, root) child to uid and gid `id`, with no supplementary groups. Like any change
/// of credentials, it makes the process non-dumpable (`commit_creds`): what a daemon that starts as
/// root and then runs as its own user looks like.
fn become_user(id: u32) -> bool {
    // SAFETY: plain credential system calls on this child only; a null list with size 0 is valid.
    unsafe {
        libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(id) == 0 && libc::setuid(id) == 0
    }
}

/// A `/proc` mounted `hidepid=invisible` (hardened hosts; systemd's `ProtectProc=invisible`) hides
/// every process the reader may not ptrace, which includes non-dumpable processes of the *same* user
/// (a daemon that dropped privileges) and processes of the same user with other groups: `/proc/<pid>`
/// is simply absent (ENOENT), exactly as for a process that is gone. The janitor took that absence for
/// proof of death and unlinked the region of a creator that was alive. A pid that `kill(pid, 0)` still
/// finds is not gone, whatever `/proc` shows.
#[test]
fn janitor_spares_a_live_creator_hidden_by_hidepid() {
    const NOBODY: u32 = 65534;
    let name = unique("hidepid");
    let path = std::path::Path::new(shm::SHM_DIR).join(shm_name(&name));
    let (mut ready, mut hold) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two descriptors into each live array.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
    }
    let created = name.clone();
    // SAFETY: (the whole child) plain system calls on this child's own descriptors and memory.
    let creator = fork_child(move || unsafe {
        libc::close(hold[1]);
        libc::close(ready[0]);
        if !become_user(NOBODY) {
            return SKIP;
        }
        live_creator(&created, ready[1], hold[0])
    });
    let janitor = creator_pid(ready, hold).map(|_| {
        let judged = shm_name(&name);
        // SAFETY: (the whole child) mount and credential calls that change only this child.
        fork_child(move || unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return SKIP;
            }
            let (none, root) = (c"none", c"/");
            let private = libc::MS_REC | libc::MS_PRIVATE;
            let null = std::ptr::null();
            if libc::mount(none.as_ptr(), root.as_ptr(), null, private, null.cast()) != 0 {
                return SKIP;
            }
            let (procfs, at, opts) = (c"proc", c"/proc", c"hidepid=invisible");
            let (src, fs) = (procfs.as_ptr(), procfs.as_ptr());
            if libc::mount(src, at.as_ptr(), fs, 0, opts.as_ptr().cast()) != 0
                || !become_user(NOBODY)
            {
                return SKIP;
            }
            match janitor::is_stale(&judged) {
                Some(false) => 0,
                Some(true) => 1,
                None => 2,
            }
        })
    });
    let status = janitor.map(wait_child);
    let still_named = path.exists();
    let_the_creator_end(ready, hold);
    let creator_status = wait_child(creator);
    let _ = std::fs::remove_file(&path);
    if skipped(creator_status) {
        return;
    }
    let status = status.expect("the creator reported");
    if skipped(status) {
        return;
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the janitor judged a live creator dead (status {status:#x}, still named = {still_named})"
    );
    assert!(still_named);
}

/// Stops the calling thread (only: no `SECCOMP_FILTER_FLAG_TSYNC`) at each of its `unlink`, `unlinkat`,
/// `rename`, `renameat` and `renameat2` calls until the returned listener answers (seccomp user
/// notification): a deterministic window between a check and the name operation that follows it.
#[cfg(target_arch = "x86_64")]
fn stop_at_name_changes() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: i64, jt: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf: 0,
        k: k as u32,
    };
    let trapped = [
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
    ];
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let mut prog = vec![
        stmt(load, 4), // seccomp_data.arch
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(libc::BPF_RET, libc::SECCOMP_RET_ALLOW),
        stmt(load, 0), // seccomp_data.nr
    ];
    for (i, nr) in trapped.iter().enumerate() {
        // Jump over the remaining tests and the ALLOW to the USER_NOTIF return.
        prog.push(jeq(*nr, (trapped.len() - i) as u8));
    }
    prog.push(stmt(libc::BPF_RET, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(libc::BPF_RET, libc::SECCOMP_RET_USER_NOTIF));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `prog`, live for the call; the kernel copies the filter. The filter
    // applies to this thread only, which the caller dedicates to the code under test.
    let fd = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    assert!(fd >= 0, "seccomp: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh listener descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Serves the notifications of `listener` until `done` says the stopped thread finished: the first
/// one runs `first` while the thread is stopped; every one then lets the call proceed as made.
#[cfg(target_arch = "x86_64")]
fn serve_name_changes(
    listener: &std::os::fd::OwnedFd,
    done: impl Fn() -> bool,
    mut first: impl FnMut(),
) -> usize {
    let mut served = 0;
    while !done() {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd; the timeout only paces the check of `done`.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: seccomp_notif is plain integers; the kernel wants it zeroed before RECV.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into the live local.
        if unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut notif,
            )
        } != 0
        {
            continue;
        }
        if served == 0 {
            first();
        }
        served += 1;
        let mut resp = libc::seccomp_notif_resp {
            id: notif.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from the live local.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp,
            )
        };
    }
    served
}

/// The janitor checks that a name still refers to the segment it judged, then unlinks the name: two
/// steps. If, in between, another unlinker (a second janitor, an explicit `Region::unlink`) removes
/// the name and a live process creates a new region under it, the janitor's unlink removed the *new*
/// region's name: the live creator's region was no longer reachable by name, and a later `create`
/// made a second, separate region. Here the janitor is stopped (seccomp user notification) at its
/// first name-changing system call, and the name is replaced meanwhile.
#[cfg(target_arch = "x86_64")]
#[test]
fn janitor_spares_a_name_recreated_between_its_check_and_its_unlink() {
    let name = unique("toctou");
    let shm = shm_name(&name);
    // Stale: published, its creator a pid nothing uses, in our own namespace.
    let stale = Region::create(&name, 8, false).unwrap();
    stale
        .raw_header()
        .creator_pid
        .store(0x7fff_fff0, Ordering::Relaxed);
    let (tx, rx) = std::sync::mpsc::channel();
    let janitor = std::thread::spawn(move || {
        tx.send(stop_at_name_changes()).unwrap();
        janitor::is_stale(&shm)
    });
    let listener = rx.recv().unwrap();
    let mut replacement = None;
    let served = serve_name_changes(
        &listener,
        || janitor.is_finished(),
        || {
            // Another unlinker removes the stale name, and a live creator (us) takes the name.
            Region::unlink(&name).unwrap();
            replacement = Some(Region::create(&name, 8, false).unwrap());
        },
    );
    let verdict = janitor.join().unwrap();
    let replacement = replacement.expect("the janitor changed a name");
    assert!(served >= 1);
    let now = Region::open(&name).map(|r| r.id());
    drop(stale);
    assert_eq!(
        now.as_ref().ok(),
        Some(&replacement.id()),
        "the janitor (verdict {verdict:?}) removed the name of a live creator's region: {now:?}"
    );
}

/// A process killed between moving a name aside and unlinking it (`shm::unlink_named_if_same`) leaves
/// the aside name: the janitor removes it once that process is proved gone, never while it lives.
#[test]
fn janitor_removes_an_aside_name_only_once_its_maker_is_gone() {
    let ns = own_pid_namespace();
    let me = proc::pid();
    let nonce = proc::random_u64();
    let live = format!(
        "{SHM_PREFIX}{ASIDE_PREFIX}{ns:x}-{me}-{}-{nonce:016x}",
        proc::start_time(me).unwrap()
    );
    let ghost = format!(
        "{SHM_PREFIX}{ASIDE_PREFIX}{ns:x}-{}-0-{nonce:016x}",
        0x7fff_fff0u32
    );
    let foreign_ns = format!(
        "{SHM_PREFIX}{ASIDE_PREFIX}{:x}-{}-0-{nonce:016x}",
        ns ^ 1,
        0x7fff_fff0u32
    );
    for name in [&live, &ghost, &foreign_ns] {
        let f = shm::create_unnamed_shm().unwrap();
        shm::link_named(&f, name, name).unwrap();
    }
    let present = |n: &str| std::path::Path::new(shm::SHM_DIR).join(n).exists();
    assert!(!janitor::reclaim_aside(&live));
    assert!(!janitor::reclaim_aside(&foreign_ns));
    assert!(janitor::reclaim_aside(&ghost));
    let (live_kept, foreign_kept, ghost_kept) =
        (present(&live), present(&foreign_ns), present(&ghost));
    for name in [&live, &foreign_ns, &ghost] {
        let _ = shm::unlink_named(name, name);
    }
    assert!(live_kept && foreign_kept && !ghost_kept);
}

/// A peer can make a file of any size for free (a sparse memfd, sealed; a sparse named file), with
/// the genuine header of a small object at its start. Opening it mapped the whole *file*, not the
/// payload its header declares: every handle decoded (a `Lock` in a message, a manager entry) could
/// take tens of TiB of our address space, and a few such objects kept alive leave none for our own
/// allocations (a failed allocation aborts the process). The mapping is the header's payload now.
#[test]
fn open_maps_the_declared_payload_not_the_whole_file() {
    use std::os::unix::fs::FileExt;
    const HUGE: u64 = 1 << 44; // 16 TiB of holes: free to make, free to map
    let r = Region::anonymous(64).unwrap();
    // SAFETY: the mapping is PAYLOAD_OFFSET + 64 bytes and lives as long as `r`.
    let segment = unsafe { std::slice::from_raw_parts(r.map.as_ptr(), PAYLOAD_OFFSET + 64) };
    let want = PAYLOAD_OFFSET + 64;

    // Anonymous: a size-sealed memfd, as every handle's must be.
    let f = shm::create_memfd("unit-huge").unwrap();
    f.write_all_at(segment, 0).unwrap();
    f.set_len(HUGE).unwrap();
    shm::seal_size(&f).unwrap();
    let h = RegionHandle {
        id: r.id(),
        source: Source::Fd {
            pid: proc::pid(),
            fd: f.as_raw_fd(),
        },
    };
    for layout in [Layout::bytes(None), Layout::bytes(Some(64))] {
        let o = Region::open_handle(&h, layout).unwrap();
        assert_eq!((o.len(), o.map.len()), (64, want), "{layout:?}");
    }

    // Named: a region whose file a peer grew (sparse) after it was made.
    let name = unique("huge");
    let n = Region::create(&name, 64, false).unwrap();
    n.file.set_len(HUGE).unwrap();
    for layout in [Layout::bytes(None), Layout::bytes(Some(64))] {
        let o = Region::open_with(&name, layout, Duration::ZERO).unwrap();
        assert_eq!((o.len(), o.map.len()), (64, want), "{layout:?}");
    }
}

/// A size no region can have (its header and payload past `isize::MAX` bytes, or past `usize::MAX`)
/// is the caller's size overflowing: `SizeOverflow`, anonymous or named, and no name is left. It was
/// `SizeMismatch { expected: u64::MAX, found: u64::MAX }` (or, just below, whatever the kernel said
/// of the memfd, the file or the mapping).
#[test]
fn a_region_too_large_for_the_address_space_is_size_overflow() {
    for size in [usize::MAX, usize::MAX - PAYLOAD_OFFSET, isize::MAX as usize] {
        let e = Region::anonymous(size).unwrap_err();
        assert!(matches!(e, Error::SizeOverflow { .. }), "{size}: {e:?}");
        let name = unique("overflow");
        let e = Region::create(&name, size, false).unwrap_err();
        assert!(matches!(e, Error::SizeOverflow { .. }), "{size}: {e:?}");
        assert!(matches!(Region::open(&name), Err(Error::NotFound { .. })));
    }
}

/// `holds_memory_bounded` answers as `holds_memory` does (written pages are memory, holes are not,
/// a range past the payload is not; both by the file's pages, the payload starting 128 bytes into
/// the first), through the page cache when it can: a range of written pages is found resident by
/// `mincore`, without the walk to the file's first hole.
#[test]
fn holds_memory_bounded_tells_written_pages_from_holes() {
    let r = Region::anonymous(1 << 20).unwrap();
    r.write_payload_at(0, &[7u8; 256 << 10]).unwrap();
    let half = 512 << 10;
    r.write_payload_at(half, &[9u8; 4096]).unwrap();
    for (offset, len) in [
        (0, 256 << 10),
        (100, 5000),
        (half, 4096),
        (half + 10, 10),
        (3, 0),
    ] {
        assert!(
            r.holds_memory_bounded(offset, len).unwrap(),
            "{offset}+{len}"
        );
        assert!(
            r.map.resident(PAYLOAD_OFFSET + offset, len),
            "{offset}+{len}: not found in the page cache"
        );
    }
    for (offset, len) in [
        (0, 300 << 10),
        (256 << 10, 4096),
        (half - 4096, 4096),
        (half, 8192),
        (1 << 20, 1),
        (usize::MAX, 2),
    ] {
        assert!(
            !r.holds_memory_bounded(offset, len).unwrap(),
            "{offset}+{len}"
        );
    }
}

/// Found by review: nothing bounded the bytes of the regions a process opens, whose sizes are their
/// makers' choice (a sparse file of any size is free): a message naming a few forged handles to
/// regions of terabytes (a `Vec<Array<u8>>`, queues) took the whole address space, and this process's
/// own allocations then failed. Opens now count their payloads within `OPENED_MAX`: past it, an open
/// is `OutOfMemory` before its payload is mapped, and a region dropped gives its bytes back.
#[test]
fn opened_regions_are_bounded_in_bytes() {
    const BIG: usize = 17 << 40; // more than half of OPENED_MAX: two at once do not fit
    let r = Region::anonymous(BIG).unwrap();
    let h = r.handle();
    let first = Region::open_handle(&h, Layout::bytes(None)).unwrap();
    assert_eq!(first.len(), BIG);
    match Region::open_handle(&h, Layout::bytes(None)) {
        Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, BIG as u64),
        other => panic!(
            "a second {BIG}-byte open was not refused: {:?}",
            other.map(|o| o.len())
        ),
    }
    drop(first);
    let again = Region::open_handle(&h, Layout::bytes(None)).unwrap();
    assert_eq!(again.len(), BIG);
    // Small opens are not refused meanwhile.
    let small = Region::anonymous(64).unwrap();
    assert!(Region::open_handle(&small.handle(), Layout::bytes(None)).is_ok());
}
