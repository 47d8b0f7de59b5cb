//! A counter in shared memory, incremented by several processes at once — without and with a
//! [`Lock`], as in the classic Python `multiprocessing.Lock` demo.
//!
//! Each increment reads the counter, then writes the value read plus one. Without the lock two processes
//! that read the same value both write the same successor, and increments are lost. Under the lock the
//! read and the write happen with no other process in between, and the total is exact.
//!
//! Run with `cargo run --release --example lock_counter`.

use std::sync::atomic::{AtomicU64, Ordering};

use mproc::{Event, Lock, Process, Region};

const WORKERS: u64 = 4;
const INCREMENTS: u64 = 1_000_000;

/// What every worker gets: the counter's region, the lock, whether to use it, and a start signal so
/// that the workers really overlap. All travel to each spawned worker as handles.
type Shared = (mproc::RegionHandle, Lock, bool, Event);

/// The counter: the first 8 bytes of the region.
fn counter(region: &Region) -> &AtomicU64 {
    assert!(region.len() >= 8);
    // SAFETY: the payload is at least 8 bytes and page-aligned plus 128 (it follows the region header),
    // so aligned for u64; every process touches these bytes only through this AtomicU64.
    unsafe { &*(region.as_ptr() as *const AtomicU64) }
}

/// One worker's increments: a load, then a store of the value loaded plus one — two steps another
/// process can slip between, unless the lock keeps it out.
fn worker((handle, lock, use_lock, go): Shared) -> u64 {
    let region = Region::from_handle(&handle).expect("open the shared counter");
    let c = counter(&region);
    go.wait();
    for _ in 0..INCREMENTS {
        // A previous holder that died would be reported once (OwnerDied); there is none here.
        let _held = use_lock.then(|| lock.lock().unwrap_or_else(|died| died.into_inner()));
        let v = c.load(Ordering::Relaxed);
        std::hint::black_box(v); // a little work between read and write, as in real code
        c.store(v + 1, Ordering::Relaxed);
    }
    INCREMENTS
}

fn run(use_lock: bool) -> Result<u64, mproc::Error> {
    let (region, lock, go) = (Region::anonymous(8)?, Lock::new()?, Event::new()?);
    let mut procs = Vec::new();
    for _ in 0..WORKERS {
        let mut p = Process::new(
            worker,
            (region.handle(), lock.clone(), use_lock, go.clone()),
        )?;
        p.start()?;
        procs.push(p);
    }
    go.set();
    for p in &mut procs {
        p.join()?;
    }
    let total = counter(&region).load(Ordering::SeqCst);
    let how = if use_lock {
        "with the lock"
    } else {
        "without a lock"
    };
    println!(
        "{how:>16}: {total:>8} of {:>8} increments counted",
        WORKERS * INCREMENTS
    );
    Ok(total)
}

fn main() -> Result<(), mproc::Error> {
    let racy = run(false)?;
    if racy < WORKERS * INCREMENTS {
        println!(
            "{:>16}  {} increments lost to the race",
            "",
            WORKERS * INCREMENTS - racy
        );
    } else {
        println!(
            "{:>16}  no increment lost this time (try again, or more increments)",
            ""
        );
    }
    let exact = run(true)?;
    assert_eq!(
        exact,
        WORKERS * INCREMENTS,
        "increments under the lock are never lost"
    );
    Ok(())
}
