//! The pool as a data-parallel engine, against threads, in one run: `cargo bench --bench pool`.
//!
//! A 256 MiB `f64` array (32 Mi elements) is processed in chunks of [`CHUNK`] elements by
//!
//! | engine | how |
//! |---|---|
//! | this pool | 2 worker processes; `map_chunks` (reductions) or `transform` (array → array) over a `SharedArray` |
//! | rayon | a 2-thread `ThreadPool`; `par_chunks` / `par_chunks_mut` over a `Vec<f64>`, the same chunks |
//! | one thread | the same chunks, one after the other, in this thread |
//! | (stream only) rayon into a `SharedArray` | as rayon, writing into shared memory: the engine without the kind of memory |
//!
//! with three kernels, the same `fn` for every engine:
//! - *membound*: the sum of squares of each chunk (reads 256 MiB, ~2 flops per element);
//! - *stream*: `out = 2 x + 1` into a second 256 MiB array (reads 256 MiB, writes 256 MiB);
//! - *compute*: a degree-24 polynomial and a division per element (~50 flops), summed per chunk.
//!
//! Then the throughput of 100 000 tiny tasks (`map` of `fn(u32) -> u32` with the default chunksize), and
//! for context the same with a chunksize of 1 (every item its own task).
//!
//! Timing, for a noisy 2-vCPU VM: each variant is warmed up, then the variants of a kernel are timed in
//! round-robin; a figure is the median, with min..max. Results are checked equal across engines (every
//! engine computes each chunk with the same code, so they agree exactly). `MPROC_BENCH_QUICK=1` takes
//! fewer repetitions. The last lines are `result: NAME VALUE UNIT` (see DESIGN.md, "The benchmark
//! contract"); ratios are throughput ratios, 1.0 = as fast as the baseline.

use std::hint::black_box;
use std::time::Instant;

use mproc::{Pool, SharedArray};
use rayon::prelude::*;

#[path = "common/mod.rs"]
mod common;

use common::Stats;

/// Elements of the array: 256 MiB of f64.
const LEN: usize = 32 << 20;
/// Elements per chunk (8 MiB): 32 chunks, 16 per worker.
const CHUNK: usize = 1 << 20;
const WORKERS: usize = 2;
const TINY_TASKS: u32 = 100_000;

// ---------------------------------------------------------------------------------------------------
// Kernels: plain `fn` items, as the pool requires; the other engines call the same ones.

/// Sum of squares, with independent accumulators so that memory, not the add latency, is the limit.
fn sum_squares(a: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|x| x * x).sum::<f64>()
}

/// `out = 2 x + 1` over `out`'s part of the input.
fn stream(input: &[f64], out: &mut [f64], start: usize) {
    let src = &input[start..start + out.len()];
    for (o, &x) in out.iter_mut().zip(src) {
        *o = 2.0 * x + 1.0;
    }
}

/// ~50 flops per element: a degree-24 polynomial (Horner) over a rational term.
#[inline]
fn heavy(x: f64) -> f64 {
    let mut p = 1.0f64;
    for k in 0..24 {
        p = p * x + (1.0 / (k as f64 + 2.0));
    }
    p / (1.0 + x * x)
}

fn compute(a: &[f64]) -> f64 {
    a.iter().map(|&x| heavy(x)).sum()
}

fn tiny(x: u32) -> u32 {
    x.wrapping_mul(2_654_435_761).rotate_left(7)
}

// ---------------------------------------------------------------------------------------------------
// Measurement.

type Variant<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Warms each variant up once, then times them in round-robin `reps` times.
fn compare(reps: usize, variants: &mut [Variant<'_>]) -> Vec<Stats> {
    for (_, run) in variants.iter_mut() {
        run();
    }
    common::round_robin(reps, variants, |_, (_, run)| {
        let t = Instant::now();
        run();
        t.elapsed().as_secs_f64()
    })
}

/// Prints a kernel's table: time, throughput in GB/s of input, and the ratios to rayon (the second
/// variant) and to one thread (the third). Returns the stats.
fn group(title: &str, reps: usize, mut variants: Vec<Variant<'_>>) -> Vec<Stats> {
    let stats = compare(reps, &mut variants);
    println!("\n{title}");
    println!(
        "  {:<36} {:>10} {:>21} {:>9} {:>12} {:>12}",
        "engine", "time", "min..max", "GB/s in", "vs rayon", "vs 1 thread"
    );
    let bytes = (LEN * 8) as f64;
    for ((name, _), s) in variants.iter().zip(&stats) {
        println!(
            "  {:<36} {:>7.1} ms {:>21} {:>9.2} {:>10.3} x {:>10.2} x",
            name,
            s.median * 1e3,
            format!("{:.1}..{:.1} ms", s.min * 1e3, s.max * 1e3),
            bytes / s.median / 1e9,
            stats[1].median / s.median,
            stats[2].median / s.median,
        );
    }
    stats
}

fn main() {
    let quick = common::quick();
    let reps = if quick { 3 } else { 9 };
    println!(
        "mproc pool bench{}: 256 MiB of f64 in {} chunks of {} elements; pool of {WORKERS} processes vs a rayon pool of {WORKERS} threads vs one thread; {reps} reps (median)",
        if quick { " (quick)" } else { "" },
        LEN / CHUNK,
        CHUNK
    );

    let pool = Pool::builder()
        .workers(WORKERS)
        .build()
        .expect("start the pool");
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .expect("start rayon");

    let data: Vec<f64> = (0..LEN)
        .map(|i| ((i % 4096) as f64) / 4096.0 - 0.5)
        .collect();
    let shared = SharedArray::from_slice(&data).expect("SharedArray");
    let mut shared_out = SharedArray::<f64>::zeroed(LEN).expect("SharedArray");
    let mut vec_out = vec![0.0f64; LEN];
    let mut serial_out = vec![0.0f64; LEN];
    // Rayon writing into shared memory: separates the engine from the kind of memory written.
    let mut rayon_shared_out = SharedArray::<f64>::zeroed(LEN).expect("SharedArray");

    // Reductions: every engine's per-chunk results, checked equal after the runs.
    let reduce = |name: &'static str, f: fn(&[f64]) -> f64| -> Vec<Stats> {
        let serial: Vec<f64> = data.chunks(CHUNK).map(f).collect();
        let variants: Vec<Variant<'_>> = vec![
            (
                "mproc pool, map_chunks",
                Box::new(|| {
                    let r = pool.map_chunks(&shared, CHUNK, f).expect("map_chunks");
                    assert_eq!(r, serial, "the pool's {name} differs");
                }),
            ),
            (
                "rayon, par_chunks",
                Box::new(|| {
                    let r: Vec<f64> = threads.install(|| data.par_chunks(CHUNK).map(f).collect());
                    assert_eq!(r, serial, "rayon's {name} differs");
                }),
            ),
            (
                "one thread, chunks",
                Box::new(|| {
                    black_box(data.chunks(CHUNK).map(f).collect::<Vec<f64>>());
                }),
            ),
        ];
        group(
            &format!("{name}: per-chunk f(&[f64]) -> f64 over 256 MiB"),
            reps,
            variants,
        )
    };
    let membound = reduce("membound (sum of squares)", sum_squares);

    let streamed = {
        let variants: Vec<Variant<'_>> = vec![
            (
                "mproc pool, transform",
                Box::new(|| {
                    pool.transform(&shared, &mut shared_out, CHUNK, stream)
                        .expect("transform");
                }),
            ),
            (
                "rayon, par_chunks_mut",
                Box::new(|| {
                    threads.install(|| {
                        vec_out
                            .par_chunks_mut(CHUNK)
                            .enumerate()
                            .for_each(|(i, out)| stream(&data, out, i * CHUNK));
                    });
                }),
            ),
            (
                "one thread, chunks_mut",
                Box::new(|| {
                    for (i, o) in serial_out.chunks_mut(CHUNK).enumerate() {
                        stream(&data, o, i * CHUNK);
                    }
                }),
            ),
            (
                "rayon, into a SharedArray (context)",
                Box::new(|| {
                    threads.install(|| {
                        rayon_shared_out
                            .par_chunks_mut(CHUNK)
                            .enumerate()
                            .for_each(|(i, out)| stream(&data, out, i * CHUNK));
                    });
                }),
            ),
        ];
        group(
            "stream (out = 2x + 1): transform, 256 MiB in + 256 MiB out",
            reps,
            variants,
        )
    };
    assert!(
        shared_out.iter().zip(&vec_out).all(|(a, b)| a == b),
        "the pool's stream output differs from rayon's"
    );
    assert!(vec_out == serial_out, "rayon's stream output differs");
    assert!(
        *vec_out == *rayon_shared_out,
        "rayon's stream output differs"
    );
    drop((serial_out, rayon_shared_out));

    let compute_stats = reduce("compute (~50 flops per element)", compute);

    // Tiny tasks.
    let items: Vec<u32> = (0..TINY_TASKS).collect();
    let expect: Vec<u32> = items.iter().map(|&x| tiny(x)).collect();
    let one_by_one: Vec<u32> = (0..2000).collect();
    let tiny_stats = {
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "pool.map, default chunksize",
                Box::new(|| {
                    let r = pool.map(tiny, items.iter().copied()).expect("map");
                    assert_eq!(r, expect);
                }),
            ),
            (
                "pool.map_chunksize(1), 2000 items",
                Box::new(|| {
                    black_box(
                        pool.map_chunksize(tiny, one_by_one.iter().copied(), 1)
                            .expect("map"),
                    );
                }),
            ),
            (
                "rayon, into_par_iter().map",
                Box::new(|| {
                    let r: Vec<u32> =
                        threads.install(|| items.par_iter().map(|&x| tiny(x)).collect());
                    assert_eq!(r, expect);
                }),
            ),
        ];
        compare(reps, &mut variants)
    };
    let per_s = |s: &Stats, n: u32| f64::from(n) / s.median;
    println!("\ntiny tasks: map of fn(u32) -> u32");
    println!(
        "  {:<44} {:>10} {:>21} {:>14}",
        "variant", "time", "min..max", "tasks/s"
    );
    for (name, s, n) in [
        (
            "pool.map, 100 000 items, default chunksize",
            &tiny_stats[0],
            TINY_TASKS,
        ),
        ("pool.map_chunksize(1), 2 000 items", &tiny_stats[1], 2000),
        (
            "rayon par_iter (threads; context)",
            &tiny_stats[2],
            TINY_TASKS,
        ),
    ] {
        println!(
            "  {:<44} {:>7.2} ms {:>21} {:>14.0}",
            name,
            s.median * 1e3,
            format!("{:.2}..{:.2} ms", s.min * 1e3, s.max * 1e3),
            per_s(s, n)
        );
    }

    println!();
    common::result(
        "pool_vs_rayon_membound",
        membound[1].median / membound[0].median,
        3,
        "x",
    );
    common::result(
        "pool_vs_rayon_compute",
        compute_stats[1].median / compute_stats[0].median,
        3,
        "x",
    );
    common::result(
        "pool_vs_serial_compute",
        compute_stats[2].median / compute_stats[0].median,
        2,
        "x",
    );
    common::result(
        "tiny_tasks_per_s",
        per_s(&tiny_stats[0], TINY_TASKS),
        0,
        "tasks/s",
    );
    common::result(
        "pool_vs_rayon_stream",
        streamed[1].median / streamed[0].median,
        3,
        "x",
    );
    common::result(
        "rayon_vs_serial_compute",
        compute_stats[2].median / compute_stats[1].median,
        2,
        "x",
    );
    common::result(
        "pool_vs_serial_membound",
        membound[2].median / membound[0].median,
        2,
        "x",
    );
    common::result(
        "chunksize1_tasks_per_s",
        per_s(&tiny_stats[1], 2000),
        0,
        "tasks/s",
    );
}
