//! A process pool: `map` over a list, and a reduction over a large shared array whose elements are read
//! in place by the workers (only their offsets travel).
//!
//! Run with `cargo run --release --example pool_map`.

use mproc::{Pool, SharedArray};

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn sum(chunk: &[f64]) -> f64 {
    chunk.iter().sum()
}

fn main() -> Result<(), mproc::Error> {
    let pool = Pool::new()?;
    println!("pool of {} worker processes", pool.workers());

    let inputs: Vec<u64> = (1..=10_000).collect();
    let steps = pool.map(collatz_steps, inputs.iter().copied())?;
    let expected: Vec<u32> = inputs.iter().map(|&n| collatz_steps(n)).collect();
    assert_eq!(steps, expected, "pool.map differs from a sequential map");
    let (best, n) = steps.iter().zip(&inputs).max().expect("non-empty");
    println!("longest Collatz chain below 10000: {n} ({best} steps)");

    let n = 10_000_000;
    let data: Vec<f64> = (0..n).map(|i| (i % 1000) as f64).collect();
    let array = SharedArray::from_slice(&data)?;
    let partial_sums = pool.map_chunks(&array, 1 << 20, sum)?;
    let total: f64 = partial_sums.iter().sum();
    let expected: f64 = data.iter().sum();
    assert_eq!(total, expected, "chunked sum differs from a sequential sum");
    println!(
        "sum of {n} f64 in shared memory over {} chunks: {total}",
        partial_sums.len()
    );
    Ok(())
}
