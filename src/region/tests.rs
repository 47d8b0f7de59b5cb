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
