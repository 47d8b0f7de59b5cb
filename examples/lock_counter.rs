//! A counter in shared memory, incremented by several processes at once.
//!
//! First with a plain read-modify-write (a load, then a store of the loaded value plus one): two processes
//! that read the same value both store the same successor, and increments are lost. Then with one atomic
//! `fetch_add` per increment, which the hardware makes indivisible: the total is exact.
//!
//! Run with `cargo run --release --example lock_counter`.

use std::sync::atomic::{AtomicU64, Ordering};

use mproc::{Process, Region, RegionHandle};

const WORKERS: u64 = 4;
const INCREMENTS: u64 = 2_000_000;

/// The region's payload: word 0 is the counter, word 1 the "go" flag that starts all workers together.
fn words(region: &Region) -> &[AtomicU64; 2] {
    assert!(region.len() >= 16);
    // SAFETY: the payload is at least 16 bytes and page-aligned (it follows the region header), and every
    // process accesses these bytes only through these `AtomicU64`s, which may be shared between processes
    // like between threads: atomics are plain memory operations on a shared mapping.
    unsafe { &*(region.as_ptr() as *const [AtomicU64; 2]) }
}

/// Opens the region and waits until the parent has started every worker, so that they really overlap.
fn attach(handle: &RegionHandle) -> Region {
    let region = Region::from_handle(handle).expect("open the shared counter");
    while words(&region)[1].load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    region
}

/// Increments without atomicity: `load` then `store` are two separate steps another process can slip
/// between.
fn racy(handle: RegionHandle) {
    let region = attach(&handle);
    let c = &words(&region)[0];
    for _ in 0..INCREMENTS {
        let v = c.load(Ordering::Relaxed);
        std::hint::black_box(v); // a little work between read and write, as in real code
        c.store(v + 1, Ordering::Relaxed);
    }
}

/// Increments atomically.
fn atomic(handle: RegionHandle) {
    let region = attach(&handle);
    let c = &words(&region)[0];
    for _ in 0..INCREMENTS {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn run(name: &str, f: fn(RegionHandle)) -> Result<u64, mproc::Error> {
    let region = Region::anonymous(16)?;
    let mut procs = Vec::new();
    for _ in 0..WORKERS {
        let mut p = Process::new(f, region.handle())?;
        p.start()?;
        procs.push(p);
    }
    words(&region)[1].store(1, Ordering::Release);
    for p in &mut procs {
        p.join()?;
    }
    let total = words(&region)[0].load(Ordering::SeqCst);
    println!(
        "{name:>28}: {total:>8} of {:>8} increments counted",
        WORKERS * INCREMENTS
    );
    Ok(total)
}

fn main() -> Result<(), mproc::Error> {
    let lost = run("load + store (racy)", racy)?;
    if lost < WORKERS * INCREMENTS {
        println!(
            "{:>28}  {} increments lost to the race",
            "",
            WORKERS * INCREMENTS - lost
        );
    } else {
        println!(
            "{:>28}  no increment lost this time (try again, or more increments)",
            ""
        );
    }
    let exact = run("fetch_add (atomic)", atomic)?;
    assert_eq!(
        exact,
        WORKERS * INCREMENTS,
        "atomic increments are never lost"
    );
    Ok(())
}
