//! What the benches share: quick mode, the statistics of repetitions, round-robin timing, the `result:`
//! lines of the benchmark contract (DESIGN.md), and in [`os`] the unsafe process and memory plumbing.
//!
//! Each bench is a crate of its own that includes this file with `#[path = "common/mod.rs"] mod common;`.
//! Not every bench uses every item, and an item unused by one crate is dead code there; hence the allow.
#![allow(dead_code)]

pub mod os;

/// Whether `MPROC_BENCH_QUICK` asks for a short run (set, non-empty and not `0`).
pub fn quick() -> bool {
    std::env::var("MPROC_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Median, min and max of the repetitions of one figure.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        Stats {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// Takes `reps` samples of every variant in round-robin (A B C, A B C, ...), so that a slow period of a
/// noisy machine hits all of them alike; `sample(i, variant)` measures variant `i` once. Warming up is
/// the caller's. Returns the stats of each variant's samples.
pub fn round_robin<V>(
    reps: usize,
    variants: &mut [V],
    mut sample: impl FnMut(usize, &mut V) -> f64,
) -> Vec<Stats> {
    let mut samples = vec![Vec::with_capacity(reps); variants.len()];
    for _ in 0..reps {
        for (i, v) in variants.iter_mut().enumerate() {
            samples[i].push(sample(i, v));
        }
    }
    samples.into_iter().map(Stats::of).collect()
}

/// Prints `result: NAME VALUE UNIT`, the value with `decimals` digits after the point.
pub fn result(name: &str, value: f64, decimals: usize, unit: &str) {
    println!("result: {name} {value:.decimals$} {unit}");
}
