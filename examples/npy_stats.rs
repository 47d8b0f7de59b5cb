//! Per-column mean, standard deviation, minimum and maximum of a 2-D float `.npy` file, computed by a
//! process pool reading the file straight from the page cache: the file is mapped, never loaded, and
//! each worker maps it too and reads only its chunk (joblib's memmap, without numpy).
//!
//! ```text
//! cargo run --release --features npy --example npy_stats -- data.npy    # a file numpy wrote (f8 or f4)
//! cargo run --release --features npy --example npy_stats                # a generated 200 000 x 8 file
//! options: --workers N, --chunk N (rows per task in C order, columns in Fortran order)
//! ```
//!
//! A C-order file is cut into row chunks (each worker returns partial statistics of every column,
//! merged with Chan et al.'s parallel variance formula); a Fortran-order file into column chunks (each
//! worker returns the full statistics of its columns). Either way the result is checked against a
//! single pass in this process, and the program exits non-zero if they differ.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mproc::integrations::ndarray::Order;
use mproc::integrations::npy::{write_npy, Element, MappedArray, NpyChunk};
use mproc::{FileProblem, Pool};
use ndarray::{ArrayView2, Axis, Ix2};
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Running statistics of one column: count, mean, sum of squared deviations, min, max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Stats {
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Stats {
    const EMPTY: Stats = Stats {
        n: 0,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Chan, Golub and LeVeque's merge of two partial results.
    fn merge(self, o: Stats) -> Stats {
        if self.n == 0 {
            return o;
        }
        if o.n == 0 {
            return self;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        Stats {
            n,
            mean: self.mean + d * o.n as f64 / n as f64,
            m2: self.m2 + o.m2 + d * d * (self.n as f64 * o.n as f64 / n as f64),
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }

    fn std(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }

    fn close_to(&self, o: &Stats) -> bool {
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
        self.n == o.n
            && near(self.mean, o.mean)
            && near(self.m2, o.m2)
            && self.min == o.min
            && self.max == o.max
    }
}

/// Statistics of the columns of `v`, numbered from `first_col`.
fn column_stats<T: Copy + Into<f64>>(
    v: ArrayView2<'_, T>,
    first_col: usize,
) -> Vec<(usize, Stats)> {
    v.axis_iter(Axis(1))
        .enumerate()
        .map(|(j, col)| {
            let mut s = Stats::EMPTY;
            col.iter().for_each(|&x| s.push(x.into()));
            (first_col + j, s)
        })
        .collect()
}

/// The pool task: a chunk of rows (C order) or of columns (Fortran order), in place.
fn chunk_stats<T: Element + Into<f64>>(chunk: NpyChunk<T>) -> Vec<(usize, Stats)> {
    let fortran = chunk.order() == Order::Fortran;
    let v = chunk
        .view()
        .into_dimensionality::<Ix2>()
        .expect("a 2-D file (checked before the chunks were made)");
    column_stats(v, if fortran { chunk.first() } else { 0 })
}

fn merge_all(cols: usize, parts: Vec<Vec<(usize, Stats)>>) -> Vec<Stats> {
    let mut total = vec![Stats::EMPTY; cols];
    for (j, s) in parts.into_iter().flatten() {
        total[j] = total[j].merge(s);
    }
    total
}

fn run_typed<T>(pool: &Pool, path: &Path, chunk: Option<usize>) -> Res<()>
where
    T: Element + Into<f64>,
{
    let a = MappedArray::<T>::open_npy(path)?;
    let &[rows, cols] = a.shape() else {
        return Err(format!(
            "{}: a 2-D array is needed, not {:?}",
            path.display(),
            a.shape()
        )
        .into());
    };
    let along = if a.order() == Order::C { rows } else { cols };
    let chunk = chunk.unwrap_or_else(|| along.div_ceil(pool.workers() * 4).max(1));
    let t = Instant::now();
    let chunks = a.chunks(chunk);
    let tasks = chunks.len();
    let stats = merge_all(cols, pool.map(chunk_stats::<T>, chunks)?);
    let pool_time = t.elapsed();

    let view = a.view().into_dimensionality::<Ix2>()?;
    let t = Instant::now();
    let reference = merge_all(cols, vec![column_stats(view, 0)]);
    let single_time = t.elapsed();

    println!(
        "{}: {rows} x {cols} {}, {} order, {:.1} MiB mapped",
        path.display(),
        std::any::type_name::<T>(),
        a.order().name(),
        (rows * cols * std::mem::size_of::<T>()) as f64 / (1 << 20) as f64
    );
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>14}",
        "column", "mean", "std", "min", "max"
    );
    for (j, s) in stats.iter().enumerate() {
        println!(
            "{j:>6} {:>14.6} {:>14.6} {:>14.6} {:>14.6}",
            s.mean,
            s.std(),
            s.min,
            s.max
        );
    }
    if let Some(j) = (0..cols).find(|&j| !stats[j].close_to(&reference[j])) {
        return Err(format!(
            "column {j}: the pool's statistics {:?} differ from one pass's {:?}",
            stats[j], reference[j]
        )
        .into());
    }
    println!(
        "pool of {} workers, {tasks} tasks: {:.1} ms; one pass in this process: {:.1} ms; results agree",
        pool.workers(),
        pool_time.as_secs_f64() * 1e3,
        single_time.as_secs_f64() * 1e3
    );
    Ok(())
}

/// A 200 000 x 8 `f64` file: column j holds a ramp plus j times a sawtooth.
fn generate() -> Res<PathBuf> {
    let path = std::env::temp_dir().join("mproc-npy-stats-example.npy");
    let a = ndarray::Array2::from_shape_fn((200_000, 8), |(i, j)| {
        (i % 1000) as f64 * 0.001 + j as f64 * ((i * 7) % 13) as f64
    });
    write_npy(&path, &a)?;
    println!("no file given: wrote {}", path.display());
    Ok(path)
}

fn run() -> Res<()> {
    let (mut path, mut workers, mut chunk) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--workers" => workers = Some(value("--workers")?.parse()?),
            "--chunk" => chunk = Some(value("--chunk")?.parse()?),
            "-h" | "--help" => {
                println!("usage: npy_stats [FILE.npy] [--workers N] [--chunk N]");
                return Ok(());
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}").into()),
            _ => path = Some(PathBuf::from(a)),
        }
    }
    let path = match path {
        Some(p) => p,
        None => generate()?,
    };
    let mut builder = Pool::builder();
    if let Some(n) = workers {
        builder = builder.workers(n);
    }
    let pool = builder.build()?;
    // f8 first; a file of f4 is refused with a typed error that says so, and read as f32.
    match run_typed::<f64>(&pool, &path, chunk) {
        Err(e)
            if matches!(
                e.downcast_ref::<mproc::Error>(),
                Some(mproc::Error::BadFile { problem: FileProblem::Dtype { found, .. }, .. }) if found == "<f4"
            ) =>
        {
            run_typed::<f32>(&pool, &path, chunk)
        }
        r => r,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("npy_stats: error: {e}");
            ExitCode::FAILURE
        }
    }
}
