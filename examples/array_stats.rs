//! Mean, variance, minimum, maximum and a histogram of a large `f64` array in shared memory, over a
//! process pool with [`Pool::map_chunks`]: each worker reads its chunks in place (only their offsets
//! travel), returns a small summary, and the summaries are merged with Chan et al.'s pairwise update.
//! The result is checked against a plain sequential computation.
//!
//! ```text
//! cargo run --release --example array_stats               # 10^8 elements (800 MB)
//! cargo run --release --example array_stats -- --n 1000000 --workers 2
//! ```

use std::process::ExitCode;
use std::time::Instant;

use mproc::{Pool, SharedArray};
use serde::{Deserialize, Serialize};

/// The histogram covers `[LO, HI)` in `BINS` equal bins; values outside are counted apart. The range is a
/// constant because pool tasks are plain functions: they cannot capture a range chosen at run time.
const LO: f64 = -6.0;
const HI: f64 = 6.0;
const BINS: usize = 48;
/// Elements per task: 8 MiB of `f64`.
const CHUNK: usize = 1 << 20;

/// The summary of some elements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Summary {
    n: u64,
    mean: f64,
    /// Sum of squared deviations from `mean`.
    m2: f64,
    min: f64,
    max: f64,
    hist: Vec<u64>,
    below: u64,
    above: u64,
}

fn bin(x: f64) -> Option<usize> {
    // The same expression in the workers and in the reference, so the bins agree exactly.
    let b = ((x - LO) * (BINS as f64 / (HI - LO))).floor();
    (b >= 0.0 && b < BINS as f64).then_some(b as usize)
}

/// One chunk, in two passes over it (it is in cache by the second): sum, extremes and histogram, then
/// the squared deviations from the chunk's own mean, which keeps `m2` accurate.
fn summarize(chunk: &[f64]) -> Summary {
    let mut s = Summary {
        n: chunk.len() as u64,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        hist: vec![0; BINS],
        below: 0,
        above: 0,
    };
    let mut sum = 0.0;
    for &x in chunk {
        sum += x;
        s.min = s.min.min(x);
        s.max = s.max.max(x);
        match bin(x) {
            Some(b) => s.hist[b] += 1,
            None if x < LO => s.below += 1,
            None => s.above += 1,
        }
    }
    if s.n > 0 {
        s.mean = sum / s.n as f64;
        s.m2 = chunk.iter().map(|&x| (x - s.mean) * (x - s.mean)).sum();
    }
    s
}

/// Chan, Golub and LeVeque's pairwise combination of (n, mean, M2).
fn merge(a: Summary, b: Summary) -> Summary {
    if a.n == 0 {
        return b;
    }
    if b.n == 0 {
        return a;
    }
    let n = a.n + b.n;
    let delta = b.mean - a.mean;
    let mean = a.mean + delta * (b.n as f64 / n as f64);
    let m2 = a.m2 + b.m2 + delta * delta * (a.n as f64 * b.n as f64 / n as f64);
    Summary {
        n,
        mean,
        m2,
        min: a.min.min(b.min),
        max: a.max.max(b.max),
        hist: a.hist.iter().zip(&b.hist).map(|(x, y)| x + y).collect(),
        below: a.below + b.below,
        above: a.above + b.above,
    }
}

/// The reference: the textbook formulas, one element at a time, in this process.
fn reference(data: &[f64]) -> Summary {
    let n = data.len() as u64;
    let mean = data.iter().sum::<f64>() / n as f64;
    let m2 = data.iter().map(|&x| (x - mean).powi(2)).sum();
    let mut hist = vec![0; BINS];
    let (mut below, mut above) = (0, 0);
    for &x in data {
        match bin(x) {
            Some(b) => hist[b] += 1,
            None if x < LO => below += 1,
            None => above += 1,
        }
    }
    Summary {
        n,
        mean,
        m2,
        min: data.iter().copied().fold(f64::INFINITY, f64::min),
        max: data.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        hist,
        below,
        above,
    }
}

/// Deterministic, roughly normal data: the sum of four uniforms from SplitMix64, centred and scaled.
fn fill(data: &mut [f64]) {
    let mut state = 0x5eed_u64;
    let mut uniform = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    for x in data {
        let s = uniform() + uniform() + uniform() + uniform();
        *x = (s - 2.0) * 3.0f64.sqrt() * 1.5 + 0.25;
    }
}

fn close(what: &str, got: f64, want: f64) -> Result<(), String> {
    let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
    if rel > 1e-9 {
        return Err(format!(
            "{what}: {got} over the pool, {want} sequentially (relative error {rel:e})"
        ));
    }
    Ok(())
}

fn check(got: &Summary, want: &Summary) -> Result<(), String> {
    let exact = |what: &str, ok: bool, g: &dyn std::fmt::Debug, w: &dyn std::fmt::Debug| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {g:?} over the pool, {w:?} sequentially"))
        }
    };
    exact("count", got.n == want.n, &got.n, &want.n)?;
    exact("min", got.min == want.min, &got.min, &want.min)?;
    exact("max", got.max == want.max, &got.max, &want.max)?;
    exact("histogram", got.hist == want.hist, &got.hist, &want.hist)?;
    exact(
        "out of range",
        (got.below, got.above) == (want.below, want.above),
        &(got.below, got.above),
        &(want.below, want.above),
    )?;
    close("mean", got.mean, want.mean)?;
    close("variance", got.m2 / got.n as f64, want.m2 / want.n as f64)
}

/// A no-op task, to warm the pool up.
fn ready(x: u32) -> u32 {
    x
}

fn parse_args() -> Result<(usize, Option<usize>), String> {
    let (mut n, mut workers) = (100_000_000usize, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.replace('_', "").parse::<f64>().ok())
                .ok_or(format!("{a} needs a number"))
        };
        match a.as_str() {
            "--n" => n = value()? as usize,
            "--workers" => workers = Some(value()? as usize),
            _ => {
                return Err(format!(
                    "unknown argument {a}; usage: array_stats [--n N] [--workers N]"
                ))
            }
        }
    }
    if n == 0 {
        return Err("--n must be at least 1".into());
    }
    Ok((n, workers))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (n, workers) = parse_args()?;
    let mut builder = Pool::builder();
    if let Some(w) = workers {
        builder = builder.workers(w);
    }
    let pool = builder.build()?;

    let t = Instant::now();
    let mut data = SharedArray::<f64>::zeroed(n)?;
    fill(&mut data);
    println!(
        "{n} f64 ({:.0} MiB) generated in shared memory in {:.2} s; pool of {} workers",
        (n * 8) as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        pool.workers()
    );

    // Off the clock: make sure every worker has started.
    pool.map_chunksize(ready, 0..pool.workers() as u32, 1)?;
    let t = Instant::now();
    let parts = pool.map_chunks(&data, CHUNK, summarize)?;
    let stats = parts.into_iter().reduce(merge).expect("n > 0");
    let pool_time = t.elapsed();

    let t = Instant::now();
    let single = data
        .chunks(CHUNK)
        .map(summarize)
        .reduce(merge)
        .expect("n > 0");
    let single_time = t.elapsed();

    let t = Instant::now();
    let want = reference(&data);
    let reference_time = t.elapsed();

    check(&stats, &want)?;
    check(&single, &want)?;

    let var = stats.m2 / stats.n as f64;
    println!(
        "mean {:.6}  variance {:.6}  std {:.6}  min {:.6}  max {:.6}",
        stats.mean,
        var,
        var.sqrt(),
        stats.min,
        stats.max
    );
    // Printed three bins to a line.
    let rows: Vec<u64> = stats.hist.chunks(3).map(|c| c.iter().sum()).collect();
    let peak = rows.iter().copied().max().unwrap_or(1).max(1) as f64;
    let width = (HI - LO) * 3.0 / BINS as f64;
    for (i, &count) in rows.iter().enumerate() {
        let lo = LO + width * i as f64;
        let bar = "#".repeat((count as f64 / peak * 50.0).round() as usize);
        println!("  [{lo:5.2}, {:5.2})  {count:>11}  {bar}", lo + width);
    }
    println!(
        "  outside [{LO}, {HI}): {} below, {} above",
        stats.below, stats.above
    );
    println!(
        "pool ({} chunks over {} workers) {:.3} s; the same code in one process {:.3} s ({:.2}x); \
         textbook sequential {:.3} s",
        n.div_ceil(CHUNK),
        pool.workers(),
        pool_time.as_secs_f64(),
        single_time.as_secs_f64(),
        single_time.as_secs_f64() / pool_time.as_secs_f64(),
        reference_time.as_secs_f64()
    );
    println!("checked: counts, min, max and histogram exact, mean and variance within 1e-9 of sequential");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("array_stats: error: {e}");
            ExitCode::FAILURE
        }
    }
}
