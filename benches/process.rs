//! Start + join of a trivial process: fork vs spawn (re-exec of this executable) vs
//! `std::process::Command::new("/bin/true")`, medians and ratios; then the fork server, from a parent that
//! runs four extra threads (the case it is for), against fork from that same parent; then a pool of two
//! workers started through the fork server against one whose workers are spawned.
//!
//! `MPROC_BENCH_QUICK=1` runs a few iterations only. Ends with the `result:` lines of the bench contract.

use std::time::Instant;

use mproc::{Pool, Process, StartMethod};

#[path = "common/mod.rs"]
mod common;

use common::Stats;

fn identity(x: u32) -> u32 {
    x
}

/// Median microseconds of `f` over `iters` calls, after a warm-up.
fn measure(iters: usize, mut f: impl FnMut(u32)) -> f64 {
    // Warm-up: page cache, lazily initialised state.
    for i in 0..3 {
        f(i);
    }
    let times = (0..iters as u32)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    Stats::of(times).median
}

fn start_join(method: StartMethod, i: u32) {
    let mut p = Process::builder()
        .start_method(method)
        .target(identity, i)
        .expect("target");
    p.start().expect("start");
    assert_eq!(p.join().expect("join"), i);
}

/// Microseconds from `build` until every one of `workers` workers has answered a task, median over
/// `iters` pools (after a warm-up); each pool is dropped (its workers killed) off the clock.
fn pool_start(method: StartMethod, workers: usize, iters: usize) -> Stats {
    let once = || {
        let t = Instant::now();
        let pool = Pool::builder()
            .workers(workers)
            .start_method(method)
            .build()
            .expect("build");
        // One item per worker: the pool gives each worker its first task before any gets a second.
        let n = workers as u32;
        assert_eq!(
            pool.map_chunksize(identity, 0..n, 1).expect("map"),
            (0..n).collect::<Vec<_>>()
        );
        let us = t.elapsed().as_secs_f64() * 1e6;
        drop(pool);
        us
    };
    for _ in 0..2 {
        once();
    }
    Stats::of((0..iters).map(|_| once()).collect())
}

fn main() {
    let quick = common::quick();
    let iters = if quick { 20 } else { 300 };
    println!("process start+join, median of {iters} runs");

    let fork = measure(iters, |i| start_join(StartMethod::Fork, i));
    let spawn = measure(iters, |i| start_join(StartMethod::Spawn, i));
    let command = measure(iters, |_| {
        let st = std::process::Command::new("/bin/true")
            .status()
            .expect("/bin/true");
        assert!(st.success());
    });

    println!(
        "  fork  (closure in a forked child)   {fork:>9.1} us   {:>5.2}x /bin/true",
        fork / command
    );
    println!(
        "  spawn (re-exec of this executable)  {spawn:>9.1} us   {:>5.2}x /bin/true",
        spawn / command
    );
    println!("  Command::new(\"/bin/true\")           {command:>9.1} us   1.00x");
    println!(
        "  spawn / fork                                      {:>5.2}x",
        spawn / fork
    );

    // The fork server, from a parent running four extra threads (two sleeping, two spinning with
    // yields, like a busy application). The server is started once, in the warm-up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let extra: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if i < 2 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let server = measure(iters, |i| start_join(StartMethod::ForkServer, i));
    let fork_threads = measure(iters, |i| start_join(StartMethod::Fork, i));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in extra {
        t.join().expect("extra thread");
    }
    println!("  with 4 extra threads in the parent:");
    println!(
        "  forkserver (fork of the server)     {server:>9.1} us   {:>5.2}x fork from this parent",
        server / fork_threads
    );
    println!("  fork  (closure in a forked child)   {fork_threads:>9.1} us   1.00x");

    // A pool's start: both ways run what a pool runs (the worker loop), the fork server forks it from
    // its small single-threaded process, spawn re-executes this program once per worker.
    let pools = if quick { 10 } else { 50 };
    let workers = 2;
    let pool_spawn = pool_start(StartMethod::Spawn, workers, pools);
    let pool_server = pool_start(StartMethod::ForkServer, workers, pools);
    println!("pool of {workers} workers, build until every worker answered, median of {pools} pools, min..max:");
    for (name, s) in [("spawn", pool_spawn), ("forkserver", pool_server)] {
        println!(
            "  {name:<11} {:>9.1} us   {:.1}..{:.1} us   {:>5.2}x faster than spawn",
            s.median,
            s.min,
            s.max,
            pool_spawn.median / s.median
        );
    }
    common::result("fork_start_join_us", fork, 1, "us");
    common::result("spawn_start_join_us", spawn, 1, "us");
    common::result("forkserver_start_join_us", server, 1, "us");
    common::result(
        "pool_start_forkserver_vs_spawn",
        pool_spawn.median / pool_server.median,
        2,
        "x",
    );
}
