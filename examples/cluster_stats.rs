//! Per-column statistics (count, mean, standard deviation, min, max) of a large generated table split
//! across the ranks of an MPI job, checked against the same computation on one host.
//!
//! ```text
//! cargo build --release --features mpi --example cluster_stats
//! mpirun -n 2 target/release/examples/cluster_stats                 # one host, or a hostfile
//! srun -N 2 --ntasks-per-node=1 target/release/examples/cluster_stats   # under Slurm
//! ```
//! Options: `--rows N` (default 4 Mi rows of 8 `f64` columns: 256 MiB), `--workers N` per rank.
//!
//! Rank 0 generates the table in a `SharedArray` and drives; every rank's local pool computes the
//! statistics of whole chunks of rows, and only the rows a rank works on travel to it (a rank on rank
//! 0's node reads them in place). Each chunk's statistics merge in chunk order with Chan et al.'s
//! pairwise update, on the cluster and on one host alike, so the two results are equal bit for bit.
//! Exits non-zero if they differ.

use std::process::ExitCode;
use std::time::Instant;

use mproc::cluster::{Cluster, ClusterPool};
use mproc::{Error, SharedArray};

const COLS: usize = 8;
/// Rows per task.
const CHUNK_ROWS: usize = 1 << 15;

/// Statistics of one column over some rows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stats {
    n: u64,
    mean: f64,
    /// Sum of squared deviations from the mean.
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

    /// Chan, Golub and LeVeque's pairwise combination of two partial results.
    fn merge(self, o: Stats) -> Stats {
        if o.n == 0 {
            return self;
        }
        if self.n == 0 {
            return o;
        }
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        let mean = self.mean + delta * o.n as f64 / n as f64;
        let m2 = self.m2 + o.m2 + delta * delta * (self.n as f64 * o.n as f64) / n as f64;
        Stats {
            n,
            mean,
            m2,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }

    fn std(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).sqrt()
        }
    }
}

/// Welford's one-pass statistics of every column of a chunk of rows (`cols` values per row).
fn column_stats(&cols: &usize, rows: &[f64]) -> Vec<Stats> {
    let mut out = vec![Stats::EMPTY; cols];
    for row in rows.chunks_exact(cols) {
        for (s, &x) in out.iter_mut().zip(row) {
            s.n += 1;
            let delta = x - s.mean;
            s.mean += delta / s.n as f64;
            s.m2 += delta * (x - s.mean);
            s.min = s.min.min(x);
            s.max = s.max.max(x);
        }
    }
    out
}

/// Every chunk's column statistics merged in chunk order.
fn merge_all(chunks: &[Vec<Stats>]) -> Vec<Stats> {
    chunks.iter().fold(vec![Stats::EMPTY; COLS], |acc, c| {
        acc.iter().zip(c).map(|(a, b)| a.merge(*b)).collect()
    })
}

/// A deterministic table: column `c` is roughly uniform around `10 * c` with a spread growing with `c`.
fn generate(rows: usize) -> Result<SharedArray<f64>, Error> {
    let mut table = SharedArray::<f64>::zeroed(rows * COLS)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, x) in table.iter_mut().enumerate() {
        // xorshift64*: fast, reproducible, good enough for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let u = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let c = (i % COLS) as f64;
        *x = 10.0 * c + (u - 0.5) * (1.0 + c);
    }
    Ok(table)
}

fn parse_args() -> Result<(usize, Option<usize>), String> {
    let (mut rows, mut workers) = (1usize << 22, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&v: &usize| v > 0)
                .ok_or(format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--rows" => rows = value("--rows")?,
            "--workers" => workers = Some(value("--workers")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((rows, workers))
}

fn run() -> Result<bool, String> {
    let (rows, workers) = parse_args()?;
    let cluster = Cluster::init().map_err(|e| e.to_string())?;
    let mut builder = ClusterPool::builder();
    if let Some(w) = workers {
        builder = builder.workers(w);
    }
    let mut pool = builder.build(&cluster).map_err(|e| e.to_string())?;
    // Only rank 0 holds the table; the others get what they work on.
    // Rank 0 cannot just return an error here: the others would wait for it in `run` forever.
    let table = (cluster.rank() == 0).then(|| {
        generate(rows).unwrap_or_else(|e| cluster.abort(1, &format!("cannot make the table: {e}")))
    });
    let outcome = pool.run(|pool| {
        let table = table.as_ref().expect("rank 0 has the table");
        let start = Instant::now();
        let chunks = pool.map_chunks_with(table, CHUNK_ROWS * COLS, &COLS, column_stats)?;
        let elapsed = start.elapsed();
        let sent: Vec<u64> = (1..cluster.size()).map(|r| pool.bytes_sent_to(r)).collect();
        Ok::<_, Error>((chunks, elapsed, sent))
    });
    let Some(outcome) = outcome else {
        return Ok(true); // a serving rank: rank 0 reports
    };
    let (chunks, elapsed, sent) = outcome.map_err(|e| e.to_string())?;
    let table = table.expect("rank 0 has the table");
    let cluster_stats = merge_all(&chunks);

    println!(
        "{rows} rows x {COLS} columns ({} MiB) on {} ranks, {} nodes: {:.1} ms",
        (rows * COLS * 8) >> 20,
        cluster.size(),
        cluster.nodes(),
        elapsed.as_secs_f64() * 1e3
    );
    for (r, bytes) in sent.iter().enumerate() {
        let how = if pool.shares_memory_with(r + 1) {
            "shares rank 0's memory"
        } else {
            "was sent its rows"
        };
        println!("  rank {}: {bytes} bytes over MPI ({how})", r + 1);
    }
    println!("column        n         mean          std          min          max");
    for (c, s) in cluster_stats.iter().enumerate() {
        println!(
            "{c:>6} {:>8} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
            s.n,
            s.mean,
            s.std(),
            s.min,
            s.max
        );
    }

    // The same statistics on one host, sequentially, merged in the same order.
    let single: Vec<Vec<Stats>> = table
        .chunks(CHUNK_ROWS * COLS)
        .map(|c| column_stats(&COLS, c))
        .collect();
    let equal = merge_all(&single) == cluster_stats;
    println!(
        "equal to the single-host result: {}",
        if equal { "yes" } else { "NO" }
    );
    Ok(equal)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cluster_stats: error: {e}");
            ExitCode::FAILURE
        }
    }
}
