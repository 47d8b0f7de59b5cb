//! Synchronization primitives against their baselines, in one run: `cargo bench --bench sync`.
//!
//! | group | mproc | baselines |
//! |---|---|---|
//! | uncontended lock | `Lock::lock` + guard drop | `std::sync::Mutex<()>`, process-shared robust and non-robust pthread mutexes in a `MAP_SHARED` page |
//! | event | `Event` set + is_set + clear; `wait` on a set event | `Mutex<bool>` + `Condvar` doing the same |
//! | semaphore | `Semaphore::acquire` + guard drop | process-shared POSIX `sem_t` (`sem_wait` + `sem_post`) |
//! | contended counter | two forked processes incrementing one `Value<u64>` | the same with a robust pthread mutex across `fork`; two threads on a `std::sync::Mutex<u64>` |
//! | hand-off round trip | two forked processes passing the turn back and forth through two `Semaphore`s, two `Event`s, or meeting at a 2-party `Barrier` | the same ping-pong over two process-shared POSIX `sem_t` |
//!
//! Timing, for a noisy 2-vCPU VM: every variant of a group is warmed up, then the variants are timed in
//! round-robin (A B C, A B C, ...) so that a slow period hits all of them alike; each figure is the median
//! of the repetitions, with min..max beside it. `MPROC_BENCH_QUICK=1` runs fewer iterations and
//! repetitions. The last lines are `result: NAME VALUE UNIT` for scripts (see DESIGN.md, "The benchmark
//! contract").
//!
//! The "model" rows rebuild `RawLock`'s uncontended fast path inline, step by step, so the cost of each
//! step can be read off (see `src/sync/raw_lock.rs`).

use std::cell::Cell;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use mproc::{Barrier, Event, Lock, Semaphore, Value};

#[path = "common/mod.rs"]
mod common;

use common::{os, Stats};

/// Iteration counts and repetitions for one run.
struct Config {
    reps: usize,
    /// Operations per timed repetition of an uncontended benchmark.
    iters: u64,
    /// Increments per process (or thread) in the contended counter.
    contended: u64,
    /// Timed round trips per repetition of a hand-off ping-pong.
    handoffs: u64,
}

impl Config {
    fn from_env() -> (Config, bool) {
        let quick = common::quick();
        let cfg = if quick {
            Config {
                reps: 3,
                iters: 200_000,
                contended: 100_000,
                handoffs: 2_000,
            }
        } else {
            Config {
                reps: 7,
                iters: 3_000_000,
                contended: 1_000_000,
                handoffs: 20_000,
            }
        };
        (cfg, quick)
    }
}

/// One benchmark variant: `run(n)` performs `n` operations.
type Body<'a> = (&'a str, Box<dyn FnMut(u64) + 'a>);

/// Warms every variant up, then times them in round-robin; returns ns/op per variant.
fn compare(cfg: &Config, iters: u64, variants: &mut [Body<'_>]) -> Vec<Stats> {
    for (_, run) in variants.iter_mut() {
        run(iters / 2 + 1);
    }
    common::round_robin(cfg.reps, variants, |_, (_, run)| {
        let t = Instant::now();
        run(iters);
        t.elapsed().as_nanos() as f64 / iters as f64
    })
}

/// Prints a group: the first variant is the subject, the others its baselines.
fn table(title: &str, names: &[&str], stats: &[Stats]) {
    println!("\n{title}");
    println!(
        "  {:<46} {:>9} {:>19} {:>14}",
        "variant", "ns/op", "min..max", "first / this"
    );
    for (i, (name, s)) in names.iter().zip(stats).enumerate() {
        let ratio = if i == 0 {
            "-".to_string()
        } else {
            format!("{:.2} x", stats[0].median / s.median)
        };
        let range = format!("{:.1}..{:.1}", s.min, s.max);
        println!(
            "  {:<46} {:>9.1} {:>19} {:>14}",
            name, s.median, range, ratio
        );
    }
}

/// Runs `variants` through [`compare`] and prints them as one table.
fn group(cfg: &Config, title: &str, iters: u64, mut variants: Vec<Body<'_>>) -> Vec<Stats> {
    let stats = compare(cfg, iters, &mut variants);
    let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
    table(title, &names, &stats);
    stats
}

/// The guard of a `LockResult`, whether or not a previous holder died (none does in this bench).
fn guard<G>(r: mproc::LockResult<G>) -> G {
    r.unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------------
// A model of RawLock's uncontended fast path, rebuilt here step by step to attribute its cost.

#[derive(Clone, Copy)]
struct Identity {
    tid: u32,
    start: u32,
}

thread_local! {
    static MODEL_ID: Cell<Identity> = const { Cell::new(Identity { tid: 0, start: 0 }) };
}

#[inline]
fn model_identity() -> Identity {
    let id = MODEL_ID.with(Cell::get);
    if id.tid != 0 {
        return id;
    }
    model_identity_slow()
}

#[cold]
#[inline(never)]
fn model_identity_slow() -> Identity {
    // The library also reads /proc/<tid>/stat here, once per thread; the start time does not matter
    // for the model.
    let id = Identity {
        tid: std::process::id(),
        start: 1,
    };
    MODEL_ID.with(|c| c.set(id));
    id
}

const WAITERS: u32 = 0x8000_0000;

/// `word` and `owner` as in `RawLock`, in shared memory.
struct ModelLock<'a> {
    word: &'a AtomicU32,
    owner: &'a AtomicU64,
}

impl ModelLock<'_> {
    /// CAS 0 → tid, then swap → 0 and test `WAITERS`: the atomics alone.
    #[inline]
    fn cas_swap(&self, tid: u32) {
        if self
            .word
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            && self.word.swap(0, Ordering::Release) & WAITERS != 0
        {
            unreachable!("no waiters in an uncontended model");
        }
    }

    /// The whole fast path: thread-local identity, CAS, Relaxed owner store, swap, waiter test.
    #[inline]
    fn full(&self) {
        let me = model_identity();
        if self
            .word
            .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.owner.store(
                (u64::from(me.tid) << 32) | u64::from(me.start),
                Ordering::Relaxed,
            );
            if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
                unreachable!("no waiters in an uncontended model");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Contended counter: two processes (fork) or two threads, started together through a gate.

/// Start and finish flags shared by the two participants.
struct Gate<'a> {
    ready: &'a AtomicU32,
    go: &'a AtomicU32,
    done: &'a AtomicU32,
    /// How long the worker's own loop took, in ns.
    worker_ns: &'a AtomicU64,
}

/// One contended run.
struct Run {
    /// Wall time per increment, in ns.
    ns: f64,
    /// When the first participant finished, as a fraction of the wall time: 0.5 means the two ran one
    /// after the other (the lock never changed hands mid-run), 1.0 that they interleaved throughout.
    overlap: f64,
}

impl Gate<'_> {
    fn reset(&self) {
        for a in [self.ready, self.go, self.done] {
            a.store(0, Ordering::SeqCst);
        }
        self.worker_ns.store(0, Ordering::SeqCst);
    }

    /// The second participant: announce, wait for the start, run, report.
    fn worker(&self, n: u64, inc: &impl Fn()) {
        self.ready.store(1, Ordering::SeqCst);
        while self.go.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        for _ in 0..n {
            inc();
        }
        self.worker_ns
            .store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The first participant: wait for the worker, start the clock, run, wait for both to finish.
    fn lead(&self, n: u64, inc: &impl Fn()) -> Run {
        while self.ready.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        self.go.store(1, Ordering::Release);
        for _ in 0..n {
            inc();
        }
        let own = t.elapsed().as_nanos() as f64;
        self.done.fetch_add(1, Ordering::AcqRel);
        while self.done.load(Ordering::Acquire) < 2 {
            // Only 2 vCPUs: give the worker the core rather than spin against it.
            std::thread::yield_now();
        }
        let wall = t.elapsed().as_nanos() as f64;
        let worker = self.worker_ns.load(Ordering::Relaxed) as f64;
        Run {
            ns: wall / (2 * n) as f64,
            overlap: own.min(worker) / wall,
        }
    }
}

/// Runs the worker in a forked child; checks that `read()` ends at exactly 2n.
fn contended_fork(
    gate: &Gate<'_>,
    n: u64,
    inc: &impl Fn(),
    reset: &impl Fn(),
    read: &impl Fn() -> u64,
) -> Run {
    reset();
    gate.reset();
    let child = os::fork(|| gate.worker(n, inc));
    let run = gate.lead(n, inc);
    assert!(child.wait(), "the counting child failed");
    assert_eq!(read(), 2 * n, "lost or doubled increments");
    run
}

/// Runs the worker in a second thread; checks the final count.
fn contended_threads(
    gate: &Gate<'_>,
    n: u64,
    inc: &(impl Fn() + Sync),
    reset: &impl Fn(),
    read: &impl Fn() -> u64,
) -> Run {
    reset();
    gate.reset();
    let run = std::thread::scope(|s| {
        s.spawn(|| gate.worker(n, inc));
        gate.lead(n, inc)
    });
    assert_eq!(read(), 2 * n, "lost or doubled increments");
    run
}

// ---------------------------------------------------------------------------------------------------
// Hand-off round trips: a forked child answers every `ping` of the parent with a `pong`.

/// One ping-pong: `ping` passes the turn to the other process and waits for it back; `pong` waits for
/// the turn and passes it back.
type HandOff<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);

/// Mean ns per round trip of `n` timed round trips, after `n / 10` untimed ones.
///
/// This measures waking a peer *while both sides wait actively*: what the spin phase of a waiter is
/// for. Whether a side catches the turn spinning or asleep on its futex (40–90 µs cross-core here) is
/// decided by the spin budget against the peer's answer time, so the figure shows which regime the
/// primitive stays in.
fn handoff_once(n: u64, ping: &dyn Fn(), pong: &dyn Fn()) -> f64 {
    let warm = n / 10;
    let child = os::fork(|| {
        for _ in 0..warm + n {
            pong();
        }
    });
    for _ in 0..warm {
        ping();
    }
    let t = Instant::now();
    for _ in 0..n {
        ping();
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    assert!(child.wait(), "the answering child failed");
    ns
}

fn main() {
    let (cfg, quick) = Config::from_env();
    let n = cfg.iters;
    println!(
        "mproc sync bench{}: {} reps (median), {} ops per uncontended rep, {} increments per process contended",
        if quick { " (quick)" } else { "" },
        cfg.reps,
        n,
        cfg.contended
    );

    // 1. Uncontended lock + unlock. Each guard is used the way callers use it (unwrapped, then dropped).
    // Not `black_box(lock.lock())`: that made rustc copy the 16-byte `LockResult` with one vector load
    // over the two 8-byte stores `Lock::lock` (not inlined across crates) had just made, a
    // store-forwarding stall that tripled the measured time (18.5 instead of ~5.5 ns).
    let lock = Lock::new().expect("create Lock");
    let std_mutex = Mutex::new(());
    let robust = raw::PthreadMutex::new(true);
    let plain = raw::PthreadMutex::new(false);
    let model_page = os::ShmPage::new();
    let model = ModelLock {
        word: model_page.atomic_u32(0),
        owner: model_page.atomic_u64(8),
    };
    let tid = std::process::id();
    let lock_stats = group(
        &cfg,
        "1. uncontended lock + unlock",
        n,
        vec![
            (
                "mproc::Lock lock + guard drop",
                Box::new(|k| {
                    for _ in 0..k {
                        let g = guard(lock.lock());
                        black_box(&g);
                        drop(g);
                    }
                }),
            ),
            (
                "std::sync::Mutex<()>",
                Box::new(|k| {
                    for _ in 0..k {
                        let g = std_mutex.lock().unwrap();
                        black_box(&g);
                        drop(g);
                    }
                }),
            ),
            (
                "pthread mutex, pshared + ROBUST",
                Box::new(|k| {
                    for _ in 0..k {
                        robust.lock();
                        robust.unlock();
                    }
                }),
            ),
            (
                "pthread mutex, pshared, not robust",
                Box::new(|k| {
                    for _ in 0..k {
                        plain.lock();
                        plain.unlock();
                    }
                }),
            ),
            (
                "model: CAS + swap only",
                Box::new(|k| {
                    for _ in 0..k {
                        black_box(&model).cas_swap(tid);
                    }
                }),
            ),
            (
                "model: + TLS identity + Relaxed owner store",
                Box::new(|k| {
                    for _ in 0..k {
                        black_box(&model).full();
                    }
                }),
            ),
            (
                "mproc::Lock try_lock + guard drop",
                Box::new(|k| {
                    for _ in 0..k {
                        if let Ok(g) = lock.try_lock() {
                            black_box(&g);
                        }
                    }
                }),
            ),
        ],
    );

    // 2. Event.
    let event = Event::new().expect("create Event");
    let cv = (Mutex::new(false), Condvar::new());
    let cv_set = |(m, c): &(Mutex<bool>, Condvar)| {
        *m.lock().unwrap() = true;
        c.notify_all();
    };
    let cv_clear = |(m, _): &(Mutex<bool>, Condvar)| *m.lock().unwrap() = false;
    let cv_is_set = |(m, _): &(Mutex<bool>, Condvar)| *m.lock().unwrap();
    let cv_wait = |(m, c): &(Mutex<bool>, Condvar)| {
        drop(c.wait_while(m.lock().unwrap(), |set| !*set).unwrap())
    };
    let event_cycle = group(
        &cfg,
        "2a. event set + is_set + clear (no waiter)",
        n,
        vec![
            (
                "mproc::Event",
                Box::new(|k| {
                    for _ in 0..k {
                        event.set();
                        black_box(event.is_set());
                        event.clear();
                    }
                }),
            ),
            (
                "Mutex<bool> + Condvar (notify_all)",
                Box::new(|k| {
                    for _ in 0..k {
                        cv_set(&cv);
                        black_box(cv_is_set(&cv));
                        cv_clear(&cv);
                    }
                }),
            ),
        ],
    );
    event.set();
    cv_set(&cv);
    let event_wait = group(
        &cfg,
        "2b. wait on an event that is already set",
        n,
        vec![
            (
                "mproc::Event::wait",
                Box::new(|k| {
                    for _ in 0..k {
                        black_box(&event).wait();
                    }
                }),
            ),
            (
                "Condvar::wait_while on Mutex<bool>",
                Box::new(|k| {
                    for _ in 0..k {
                        cv_wait(black_box(&cv));
                    }
                }),
            ),
        ],
    );
    let event_pair = group(
        &cfg,
        "2c. set + wait + clear (one thread)",
        n,
        vec![
            (
                "mproc::Event",
                Box::new(|k| {
                    for _ in 0..k {
                        event.set();
                        event.wait();
                        event.clear();
                    }
                }),
            ),
            (
                "Mutex<bool> + Condvar",
                Box::new(|k| {
                    for _ in 0..k {
                        cv_set(&cv);
                        cv_wait(&cv);
                        cv_clear(&cv);
                    }
                }),
            ),
        ],
    );

    // 3. Semaphore.
    let sem = Semaphore::new(1).expect("create Semaphore");
    let posix = raw::PosixSem::new(1);
    let sem_stats = group(
        &cfg,
        "3. semaphore acquire + release, uncontended",
        n / 4,
        vec![
            (
                "mproc::Semaphore acquire + guard drop",
                Box::new(|k| {
                    for _ in 0..k {
                        let g = sem.acquire();
                        black_box(&g);
                        drop(g);
                    }
                }),
            ),
            (
                "POSIX sem_t, pshared (sem_wait + sem_post)",
                Box::new(|k| {
                    for _ in 0..k {
                        posix.wait();
                        posix.post();
                    }
                }),
            ),
            (
                "mproc::Semaphore try_acquire + guard drop",
                Box::new(|k| {
                    for _ in 0..k {
                        let g = sem.try_acquire();
                        black_box(&g);
                        drop(g);
                    }
                }),
            ),
        ],
    );

    // 4. Contended counter: two participants, N increments each, under a lock.
    let gate_page = os::ShmPage::new();
    let gate = Gate {
        ready: gate_page.atomic_u32(0),
        go: gate_page.atomic_u32(64),
        done: gate_page.atomic_u32(128),
        worker_ns: gate_page.atomic_u64(192),
    };
    let value = Value::new(0u64).expect("create Value");
    let counter = raw::PthreadMutex::new(true);
    let std_counter = Mutex::new(0u64);
    let c = cfg.contended;
    let value_inc = || *guard(value.lock()) += 1;
    let value_reset = || value.set(0);
    let value_read = || value.get();
    let counter_inc = || counter.add(1);
    let counter_reset = || counter.set(0);
    let counter_read = || counter.get();
    let std_inc = || *std_counter.lock().unwrap() += 1;
    let std_reset = || *std_counter.lock().unwrap() = 0;
    let std_read = || *std_counter.lock().unwrap();
    // Warm-up, then round-robin repetitions as in `compare`.
    let warm = (c / 10).max(1);
    contended_fork(&gate, warm, &value_inc, &value_reset, &value_read);
    contended_fork(&gate, warm, &counter_inc, &counter_reset, &counter_read);
    contended_threads(&gate, warm, &std_inc, &std_reset, &std_read);
    let mut runs: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..cfg.reps {
        runs[0].push(contended_fork(
            &gate,
            c,
            &value_inc,
            &value_reset,
            &value_read,
        ));
        runs[1].push(contended_fork(
            &gate,
            c,
            &counter_inc,
            &counter_reset,
            &counter_read,
        ));
        runs[2].push(contended_threads(&gate, c, &std_inc, &std_reset, &std_read));
    }
    let contended = runs
        .each_ref()
        .map(|r| Stats::of(r.iter().map(|x| x.ns).collect()));
    let overlap = runs
        .each_ref()
        .map(|r| Stats::of(r.iter().map(|x| x.overlap).collect()).median);
    let names = [
        "mproc::Value<u64>, 2 processes (fork)",
        "robust pshared pthread mutex, 2 processes",
        "std::sync::Mutex<u64>, 2 threads",
    ];
    table(
        "4. contended counter: 2 participants x N increments under a lock (ns per increment, wall)",
        &names,
        &contended,
    );
    println!("  first participant done at (median; 0.50 = ran one after the other, 1.00 = interleaved throughout):");
    for (name, o) in names.iter().zip(overlap) {
        println!("    {name:<44} {o:.2} of the wall time");
    }

    // 5. Hand-off round trips between two processes. Every object starts with the turn on the parent's
    // side and ends each round trip there again, so repetitions can reuse them.
    let sem_there = Semaphore::new(0).expect("create Semaphore");
    let sem_back = Semaphore::new(0).expect("create Semaphore");
    let ev_there = Event::new().expect("create Event");
    let ev_back = Event::new().expect("create Event");
    let barrier = Barrier::new(2).expect("create Barrier");
    let posix_there = raw::PosixSem::new(0);
    let posix_back = raw::PosixSem::new(0);
    let mut handoffs: Vec<HandOff<'_>> = vec![
        (
            "mproc::Semaphore x2 (release / acquire + forget)",
            Box::new(|| {
                sem_there.release().expect("release");
                sem_back.acquire().forget();
            }),
            Box::new(|| {
                sem_there.acquire().forget();
                sem_back.release().expect("release");
            }),
        ),
        (
            "mproc::Event x2 (set / wait + clear)",
            Box::new(|| {
                ev_there.set();
                ev_back.wait();
                ev_back.clear();
            }),
            Box::new(|| {
                ev_there.wait();
                ev_there.clear();
                ev_back.set();
            }),
        ),
        (
            "mproc::Barrier, 2 parties (one trip)",
            Box::new(|| {
                barrier.wait().expect("barrier");
            }),
            Box::new(|| {
                barrier.wait().expect("barrier");
            }),
        ),
        (
            "POSIX sem_t x2, pshared (sem_post / sem_wait)",
            Box::new(|| {
                posix_there.post();
                posix_back.wait();
            }),
            Box::new(|| {
                posix_there.wait();
                posix_back.post();
            }),
        ),
    ];
    let handoff = common::round_robin(cfg.reps, &mut handoffs, |_, (_, ping, pong)| {
        handoff_once(cfg.handoffs, &**ping, &**pong)
    });
    let names: Vec<&str> = handoffs.iter().map(|(n, _, _)| *n).collect();
    // The baseline is the last row here: show every row against it.
    println!("\n5. hand-off round trip between two processes (fork; mean ns per round trip)");
    println!(
        "  {:<46} {:>9} {:>19} {:>14}",
        "variant", "ns/rtt", "min..max", "this / sem_t"
    );
    let base = handoff[handoff.len() - 1].median;
    for (name, s) in names.iter().zip(&handoff) {
        let range = format!("{:.0}..{:.0}", s.min, s.max);
        println!(
            "  {:<46} {:>9.0} {:>19} {:>12.2} x",
            name,
            s.median,
            range,
            s.median / base
        );
    }

    println!();
    let _ = std::io::stdout().flush();
    common::result(
        "lock_vs_pthread_robust",
        lock_stats[0].median / lock_stats[2].median,
        2,
        "x",
    );
    common::result("lock_uncontended_ns", lock_stats[0].median, 1, "ns");
    common::result(
        "lock_vs_pthread_plain",
        lock_stats[0].median / lock_stats[3].median,
        2,
        "x",
    );
    common::result(
        "lock_vs_std_mutex",
        lock_stats[0].median / lock_stats[1].median,
        2,
        "x",
    );
    common::result("event_set_is_set_clear_ns", event_cycle[0].median, 1, "ns");
    common::result("event_wait_set_ns", event_wait[0].median, 1, "ns");
    common::result("event_set_wait_ns", event_pair[0].median, 1, "ns");
    common::result(
        "event_set_wait_vs_condvar",
        event_pair[0].median / event_pair[1].median,
        2,
        "x",
    );
    common::result("semaphore_uncontended_ns", sem_stats[0].median, 1, "ns");
    common::result(
        "semaphore_vs_posix_sem",
        sem_stats[0].median / sem_stats[1].median,
        2,
        "x",
    );
    common::result("contended_counter_ns", contended[0].median, 1, "ns");
    common::result(
        "contended_counter_vs_pthread_robust",
        contended[0].median / contended[1].median,
        2,
        "x",
    );
    common::result(
        "contended_counter_vs_std_threads",
        contended[0].median / contended[2].median,
        2,
        "x",
    );
    common::result("semaphore_rtt_ns", handoff[0].median, 0, "ns");
    common::result("event_rtt_ns", handoff[1].median, 0, "ns");
    common::result("barrier_rtt_ns", handoff[2].median, 0, "ns");
    common::result("posix_sem_rtt_ns", handoff[3].median, 0, "ns");
    common::result(
        "semaphore_rtt_vs_posix_sem",
        handoff[0].median / base,
        2,
        "x",
    );
}

/// The unsafe code of this bench beyond `common::os`: pthread mutexes and POSIX semaphores in a shared
/// page.
mod raw {
    use crate::common::os::ShmPage;

    /// A process-shared pthread mutex (optionally robust) and a `u64` it guards, in a shared page.
    pub struct PthreadMutex {
        page: ShmPage,
    }

    const COUNTER_AT: usize = 128;

    impl PthreadMutex {
        pub fn new(robust: bool) -> PthreadMutex {
            let page = ShmPage::new();
            let m = page.at::<libc::pthread_mutex_t>(0);
            // SAFETY: `attr` is initialised by pthread_mutexattr_init before any other use and destroyed
            // after the mutex is initialised (pthread_mutexattr_destroy(3): destroying an attribute object
            // does not affect mutexes made with it); `m` is in bounds and aligned (checked by `at`), and is
            // initialised exactly once, before anyone else can see it.
            unsafe {
                let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
                assert_eq!(libc::pthread_mutexattr_init(attr.as_mut_ptr()), 0);
                let a = attr.as_mut_ptr();
                assert_eq!(
                    libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED),
                    0
                );
                if robust {
                    assert_eq!(
                        libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST),
                        0
                    );
                }
                assert_eq!(libc::pthread_mutex_init(m, a), 0);
                libc::pthread_mutexattr_destroy(a);
            }
            PthreadMutex { page }
        }

        fn mutex(&self) -> *mut libc::pthread_mutex_t {
            self.page.at(0)
        }

        #[inline]
        pub fn lock(&self) {
            // SAFETY: the mutex was initialised in `new` and lives in the page `self` owns.
            let rc = unsafe { libc::pthread_mutex_lock(self.mutex()) };
            if rc != 0 {
                self.lock_failed(rc);
            }
        }

        #[cold]
        fn lock_failed(&self, rc: i32) {
            assert_eq!(rc, libc::EOWNERDEAD, "pthread_mutex_lock failed: {rc}");
            // SAFETY: EOWNERDEAD means we now hold the mutex (pthread_mutex_lock(3)); marking it
            // consistent is what its next holder must do. Nothing in this bench dies holding it.
            unsafe { libc::pthread_mutex_consistent(self.mutex()) };
        }

        /// Unlocks.
        ///
        /// # Panics
        /// If the caller does not hold the mutex (glibc reports EPERM for robust mutexes).
        #[inline]
        pub fn unlock(&self) {
            // SAFETY: callers pair every `unlock` with a preceding `lock` on this thread.
            let rc = unsafe { libc::pthread_mutex_unlock(self.mutex()) };
            debug_assert_eq!(rc, 0);
        }

        /// Adds to the guarded counter under the mutex.
        #[inline]
        pub fn add(&self, d: u64) {
            self.lock();
            // SAFETY: the counter is in bounds and aligned (checked by `at`) and only touched under the
            // mutex, which this thread holds; processes forked from us share the page, not a copy.
            unsafe { *self.page.at::<u64>(COUNTER_AT) += d };
            self.unlock();
        }

        pub fn set(&self, v: u64) {
            self.lock();
            // SAFETY: as in `add`.
            unsafe { *self.page.at::<u64>(COUNTER_AT) = v };
            self.unlock();
        }

        pub fn get(&self) -> u64 {
            self.lock();
            // SAFETY: as in `add`.
            let v = unsafe { *self.page.at::<u64>(COUNTER_AT) };
            self.unlock();
            v
        }
    }

    impl Drop for PthreadMutex {
        fn drop(&mut self) {
            // SAFETY: the mutex is initialised and unlocked (every lock is paired with an unlock) and no
            // other process still uses it (children are waited for). Errors are ignored in drop.
            unsafe { libc::pthread_mutex_destroy(self.mutex()) };
        }
    }

    /// A process-shared POSIX semaphore in a shared page.
    pub struct PosixSem {
        page: ShmPage,
    }

    impl PosixSem {
        pub fn new(value: u32) -> PosixSem {
            let page = ShmPage::new();
            // SAFETY: the sem_t is in bounds and aligned (checked by `at`) in a shared mapping, as
            // sem_init(3) requires for pshared != 0, and is initialised once.
            let rc = unsafe { libc::sem_init(page.at(0), 1, value) };
            assert_eq!(rc, 0, "sem_init: {}", std::io::Error::last_os_error());
            PosixSem { page }
        }

        fn sem(&self) -> *mut libc::sem_t {
            self.page.at(0)
        }

        #[inline]
        pub fn wait(&self) {
            // SAFETY: initialised in `new`, alive as long as `self`.
            while unsafe { libc::sem_wait(self.sem()) } != 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EINTR), "sem_wait: {e}");
            }
        }

        #[inline]
        pub fn post(&self) {
            // SAFETY: as in `wait`.
            let rc = unsafe { libc::sem_post(self.sem()) };
            debug_assert_eq!(rc, 0);
        }
    }

    impl Drop for PosixSem {
        fn drop(&mut self) {
            // SAFETY: initialised, and nobody waits on it any more. Errors are ignored in drop.
            unsafe { libc::sem_destroy(self.sem()) };
        }
    }
}
