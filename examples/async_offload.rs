//! A tokio program that offloads CPU-heavy jobs to a process pool and stays responsive, and survives
//! a job that crashes its worker: `cargo run --release --features async --example async_offload`.
//!
//! - Eight jobs count primes below a few million each, in worker processes, awaited as they finish
//!   (`AsyncResult` is a `Future`; the pool wakes the task, no runtime of ours involved).
//! - One job aborts its worker (think: a C library that segfaults). Its `.await` gives
//!   `Error::WorkerDied` with the signal; the pool replaces the worker and the other jobs go on.
//! - Meanwhile a ticker on the same single-threaded runtime fires every 10 ms and records how late it
//!   was: the runtime's one thread never blocks on the pool, so the ticks stay on time.
//!
//! `--small` runs smaller jobs (for CI); `--one-worker` leaves a core to the runtime.
//!
//! On a loaded 2-core machine the ticker can still fire late: the OS gives the cores to the busy
//! workers. The program also prints the longest single poll of an awaited result, which is what
//! the runtime's thread spends on the pool (a non-blocking look at the result ring).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mproc::{Error, Pool};

/// The number of primes below `n` (trial division: deliberately CPU-heavy).
fn count_primes(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

/// A future that records the longest single `poll` of the one it wraps, in µs: the proof that
/// awaiting the pool never blocks the runtime's thread (lateness of the ticker beyond that is the OS
/// giving the CPU to the busy workers).
struct Timed<F> {
    inner: Pin<Box<F>>,
    longest: Arc<AtomicU64>,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let t = Instant::now();
        let r = self.inner.as_mut().poll(cx);
        self.longest
            .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }
}

/// Ends its worker the way a crashing native library would.
fn crash(_: u64) -> u64 {
    std::process::abort()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let small = std::env::args().any(|a| a == "--small");
    let base: u64 = if small { 20_000 } else { 2_000_000 };
    let workers = if std::env::args().any(|a| a == "--one-worker") {
        1
    } else {
        2
    };
    let pool = Pool::builder().workers(workers).build()?;
    println!(
        "pool of {} worker processes; runtime: tokio, one thread",
        pool.workers()
    );

    // The responsiveness probe: how late does a 10 ms timer fire while the pool works?
    let probe = Arc::new((AtomicU64::new(0), AtomicU64::new(0))); // (ticks, worst lateness in µs)
    let ticker = tokio::spawn({
        let probe = probe.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = interval.tick().await;
                let late = Instant::now().saturating_duration_since(due.into_std());
                probe.0.fetch_add(1, Ordering::Relaxed);
                probe
                    .1
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
            }
        }
    });

    let t0 = Instant::now();
    let longest_poll = Arc::new(AtomicU64::new(0));
    let timed = |f| Timed {
        inner: Box::pin(f),
        longest: longest_poll.clone(),
    };
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..8u64 {
        let n = base + i * base / 8;
        let pending = timed(pool.apply_async(count_primes, n)?);
        jobs.spawn(async move { (format!("primes below {n}"), pending.await) });
    }
    let doomed = timed(pool.apply_async(crash, 0)?);
    jobs.spawn(async move { ("a job that aborts its worker".to_string(), doomed.await) });

    let (mut done, mut died) = (0, 0);
    while let Some(joined) = jobs.join_next().await {
        let (what, result) = joined.expect("the job tasks do not panic");
        match result {
            Ok(v) => {
                done += 1;
                println!("{:>7.3} s  {what}: {v}", t0.elapsed().as_secs_f64());
            }
            Err(Error::WorkerDied { signal, .. }) => {
                died += 1;
                println!(
                    "{:>7.3} s  {what}: its worker died (signal {signal:?}); the pool replaced it",
                    t0.elapsed().as_secs_f64()
                );
            }
            Err(e) => return Err(e),
        }
    }
    // The pool still serves after the crash.
    let after = pool.apply_async(count_primes, 1_000)?.await?;
    ticker.abort();
    println!(
        "meanwhile the 10 ms ticker on the same thread fired {} times, at worst {:.2} ms late",
        probe.0.load(Ordering::Relaxed),
        probe.1.load(Ordering::Relaxed) as f64 / 1e3
    );
    println!(
        "the longest poll of an awaited pool result took {} µs: awaiting never blocks the thread",
        longest_poll.load(Ordering::Relaxed)
    );
    println!(
        "{done} jobs finished, {died} worker death reported, then one more job: {after} primes below 1000"
    );
    assert_eq!((done, died, after), (8, 1, 168));
    Ok(())
}
