//! Regions across processes: named open from an unrelated process, garbage and truncated segments.

use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Region};

use crate::common::{self, Role};

pub const ROLES: &[Role] = &[("region_open_and_check", region_open_and_check)];

pub fn tests() -> Vec<Trial> {
    vec![Trial::test("region::named_open_from_other_process", || {
        named_open_from_other_process();
        Ok(())
    })]
}

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
