//! A counter in shared memory, incremented by several processes at once — without and with its lock,
//! as in the classic Python `multiprocessing.Value` / `Lock` demo. No `unsafe`: `Value<u64>` is the
//! shared counter and carries a robust lock.
//!
//! Each increment reads the counter, then writes the value read plus one. Without the lock two processes
//! that read the same value both write the same successor, and increments are lost. Under the lock the
//! read and the write happen with no other process in between, and the total is exact.
//!
//! Run with `cargo run --release --example lock_counter`.

use mproc::{Event, Process, Value};

const WORKERS: u64 = 4;
const INCREMENTS: u64 = 200_000;

/// What every worker gets: the shared counter (a `Value<u64>`, which carries its own robust lock), whether
/// to hold the lock across the read and the write, and a start signal so that the workers really
/// overlap. Both objects travel to each spawned worker as handles.
type Shared = (Value<u64>, bool, Event);

/// One worker's increments: a read, then a write of the value read plus one — two steps another process
/// can slip between, unless the lock keeps it out.
fn worker((counter, use_lock, go): Shared) -> u64 {
    go.wait();
    for _ in 0..INCREMENTS {
        if use_lock {
            // One critical section around the read and the write. A previous holder that died would be
            // reported once (OwnerDied, carrying the guard); there is none here.
            let mut held = counter.lock().unwrap_or_else(|died| died.into_inner());
            *held += 1;
        } else {
            // Each call locks on its own, so the pair is not atomic: increments get lost.
            let v = counter.get();
            std::hint::black_box(v); // a little work between read and write, as in real code
            counter.set(v + 1);
        }
    }
    INCREMENTS
}

fn run(use_lock: bool) -> Result<u64, mproc::Error> {
    let (counter, go) = (Value::new(0u64)?, Event::new()?);
    let mut procs = Vec::new();
    for _ in 0..WORKERS {
        let mut p = Process::new(worker, (counter.clone(), use_lock, go.clone()))?;
        p.start()?;
        procs.push(p);
    }
    go.set();
    for p in &mut procs {
        p.join()?;
    }
    let total = counter.get();
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
