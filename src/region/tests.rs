use super::*;

fn unique(tag: &str) -> String {
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
        matches!(e, Error::TypeMismatch { expected: "B", .. }),
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
