//! joblib's `Parallel(n_jobs)(delayed(f)(x) for x in xs)`, in Rust, over worker processes.
//!
//! ```python
//! from joblib import Parallel, delayed
//! Parallel(n_jobs=2)(delayed(sqrt)(i ** 2) for i in range(10))
//! ```
//!
//! becomes
//!
//! ```text
//! Parallel::new(2).run((0..10).map(|i| delayed(sqrt, i * i)))
//! ```
//!
//! The tour: results in order, progress on stderr, a failing task, and a large array passed to many
//! tasks by handle (as joblib memory-maps arrays above `max_nbytes`) against the same array copied into
//! every task. Each result is checked against a sequential computation.
//!
//! ```text
//! cargo run --release --example parallel_delayed            # a 64 MiB array
//! cargo run --release --example parallel_delayed -- --small # a 4 MiB array
//! ```

use std::process::ExitCode;
use std::time::Instant;

use mproc::parallel::{delayed, Arr, Parallel};

fn isqrt(x: u64) -> u64 {
    (x as f64).sqrt() as u64
}

/// Slow on purpose, so that progress has something to show.
fn collatz_longest((from, to): (u64, u64)) -> (u64, u32) {
    let steps = |mut n: u64| {
        let mut s = 0u32;
        while n != 1 {
            n = if n.is_multiple_of(2) {
                n / 2
            } else {
                3 * n + 1
            };
            s += 1;
        }
        s
    };
    (from..to)
        .map(|n| (n, steps(n)))
        .max_by_key(|&(_, s)| s)
        .expect("non-empty range")
}

fn reciprocal(x: i64) -> i64 {
    assert!(x != 0, "division by zero");
    1_000_000 / x
}

/// Sum of squares of `data[range]`, and whether `data` arrived by handle.
fn sum_squares((data, from, to): (Arr<'_, f64>, usize, usize)) -> (f64, bool) {
    (data[from..to].iter().map(|x| x * x).sum(), data.is_shared())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let small = std::env::args().any(|a| a == "--small");
    let par = Parallel::new(2);

    // 1. Results in order.
    let roots = par.run((0..10u64).map(|i| delayed(isqrt, i * i)))?;
    assert_eq!(roots, (0..10).collect::<Vec<_>>());
    println!("1. Parallel::new(2).run((0..10).map(|i| delayed(isqrt, i * i))) = {roots:?}");

    // 2. Progress on stderr, one task at a time.
    let step = if small { 2_000 } else { 100_000 };
    let ranges: Vec<(u64, u64)> = (0..16)
        .map(|i| (1 + i * step, 1 + (i + 1) * step))
        .collect();
    let longest = Parallel::new(2)
        .progress(true)
        .batch_size(1)
        .map(collatz_longest, ranges.iter().copied())?;
    let expected: Vec<_> = ranges.iter().map(|&r| collatz_longest(r)).collect();
    assert_eq!(longest, expected);
    let best = longest.iter().max_by_key(|&&(_, s)| s).expect("16 ranges");
    println!(
        "2. longest Collatz chain below {}: {} ({} steps), with progress",
        16 * step + 1,
        best.0,
        best.1
    );

    // 3. A failing task: `run` reports the first one, `run_each` every task's own result.
    let inputs = [5i64, 0, 20, 0];
    match par.map(reciprocal, inputs) {
        Err(mproc::Error::TaskPanicked { task, message, .. }) => {
            assert_eq!(task, 1);
            println!("3. task {task} failed: {message}");
        }
        other => return Err(format!("expected task 1 to fail, got {other:?}").into()),
    }
    let each = par.run_each(inputs.iter().map(|&x| delayed(reciprocal, x)))?;
    let ok: Vec<bool> = each.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, false]);
    println!(
        "   run_each: {:?}",
        each.iter().map(|r| r.as_ref().ok()).collect::<Vec<_>>()
    );

    // 4. A big array for many tasks: by handle (one copy into shared memory) against inline.
    let n = if small { 1 << 19 } else { 1 << 23 };
    let data: Vec<f64> = (0..n)
        .map(|i| ((i % 1000) as f64 - 500.0) / 100.0)
        .collect();
    let tasks = 16;
    let per = n / tasks;
    let args = || (0..tasks).map(|t| (Arr::from(&data), t * per, (t + 1) * per));
    let want: f64 = data.iter().map(|x| x * x).sum();

    let t = Instant::now();
    let by_handle = par.map(sum_squares, args())?;
    let handle_time = t.elapsed();
    let inline = Parallel::new(2).max_nbytes(usize::MAX);
    inline.map(sum_squares, [(Arr::from(&data[..8]), 0, 1)])?; // start its workers off the clock
    let t = Instant::now();
    let copied = inline.map(sum_squares, args())?;
    let inline_time = t.elapsed();

    for (what, results, shared) in [("by handle", &by_handle, true), ("inline", &copied, false)] {
        assert!(
            results.iter().all(|&(_, s)| s == shared),
            "{what}: the array did not travel as expected"
        );
        let got: f64 = results.iter().map(|&(s, _)| s).sum();
        let rel = (got - want).abs() / want;
        assert!(rel < 1e-9, "{what}: {got} instead of {want}");
    }
    println!(
        "4. {tasks} tasks reading one {} MiB array: by handle {:.3} s, copied into every task {:.3} s \
         ({:.1}x); sums match the sequential one",
        (n * 8) >> 20,
        handle_time.as_secs_f64(),
        inline_time.as_secs_f64(),
        inline_time.as_secs_f64() / handle_time.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parallel_delayed: error: {e}");
            ExitCode::FAILURE
        }
    }
}
