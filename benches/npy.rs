//! Summing a 1 GiB `.npy` file by columns: mapped from the page cache and lent to 2 workers, against
//! reading it into a `Vec` first and summing in one process — joblib's memmap against `np.load`.
//! `cargo bench --bench npy --features npy`.
//!
//! The file (`f64`, C order, 2^23 rows × 16 columns = 1 GiB) is written once to the temporary
//! directory and read once before timing, so every variant reads from a warm page cache.
//!
//! | variant | what one run does |
//! |---|---|
//! | read | `read` the header, allocate a `Vec<f64>`, `read_exact` the data into it (the fastest load: one copy from the page cache, no parsing), sum the columns |
//! | mapped, pool | `MappedArray::open_npy` (header validated, file mapped), `pool.map` over row chunks: each worker maps the file and sums its rows' columns in place |
//! | mapped, 1 process | `MappedArray::open_npy`, the same column sums in this process |
//!
//! Each pool run uses a pool started before the clock (its workers have not mapped the file yet, so
//! their page-table faults are counted; starting processes is not, as the read variant starts none).
//! The variants are sampled in round-robin; figures are medians with min..max. Every result is
//! checked against the read variant's. `MPROC_BENCH_QUICK=1` takes fewer samples.
//!
//! What the ratio depends on: the read variant pays a copy (~12 GB/s here) and a first-touch fault
//! per 4 KiB page of its fresh `Vec` (~2.3 µs each: ~600 ms per GiB on this VM), the mapped variants
//! only map page-cache pages; the pool adds a second core. A machine with cheaper page faults (or
//! huge pages for the `Vec`) shows a smaller ratio.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mproc::integrations::npy::{write_npy, MappedArray, NpyChunk};
use mproc::Pool;

#[path = "common/mod.rs"]
mod common;

const COLS: usize = 16;
const ROWS: usize = (1 << 30) / 8 / COLS;
/// Rows per pool task: 16 tasks, 64 MiB each.
const CHUNK_ROWS: usize = ROWS / 16;

fn col_sums(rows: &[f64]) -> Vec<f64> {
    let mut s = vec![0.0; COLS];
    for row in rows.chunks_exact(COLS) {
        for (acc, x) in s.iter_mut().zip(row) {
            *acc += x;
        }
    }
    s
}

fn chunk_sums(c: NpyChunk<f64>) -> Vec<f64> {
    col_sums(c.as_slice())
}

fn add(total: &mut [f64], part: &[f64]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

/// Writes the file with `write_npy`: values `i % 1000` (exact in f64, so every sum is exact and the
/// variants must agree to the bit).
fn write_file(path: &Path) {
    let data: Vec<f64> = (0..ROWS * COLS).map(|i| (i % 1000) as f64).collect();
    let a = ndarray::Array2::from_shape_vec((ROWS, COLS), data).expect("shape");
    write_npy(path, &a).expect("write the bench file");
}

/// The read variant: header, then the data read straight into a `Vec<f64>`.
fn read_and_sum(path: &Path) -> Vec<f64> {
    let mut file = File::open(path).expect("open");
    let mut pre = [0u8; 10];
    file.read_exact(&mut pre).expect("read the header");
    assert_eq!(&pre[..8], b"\x93NUMPY\x01\x00", "a version 1.0 .npy file");
    let header_len = usize::from(u16::from_le_bytes([pre[8], pre[9]]));
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).expect("read the header");
    let mut data = vec![0f64; ROWS * COLS];
    file.read_exact(bytemuck::cast_slice_mut(&mut data))
        .expect("read the data");
    col_sums(&data)
}

fn mapped_pool(path: &Path, pool: &Pool) -> Vec<f64> {
    let a = MappedArray::<f64>::open_npy(path).expect("map");
    let parts = pool
        .map(chunk_sums, a.chunks(CHUNK_ROWS))
        .expect("pool map");
    let mut total = vec![0.0; COLS];
    parts.iter().for_each(|p| add(&mut total, p));
    total
}

fn mapped_local(path: &Path) -> Vec<f64> {
    let a = MappedArray::<f64>::open_npy(path).expect("map");
    col_sums(a.as_slice())
}

fn main() {
    let quick = common::quick();
    let reps = if quick { 3 } else { 9 };
    let path: PathBuf =
        std::env::temp_dir().join(format!("mproc-bench-npy-{}.npy", std::process::id()));
    let t = Instant::now();
    write_file(&path);
    println!(
        "wrote {} ({} MiB) in {:.2} s",
        path.display(),
        std::fs::metadata(&path).map_or(0, |m| m.len() >> 20),
        t.elapsed().as_secs_f64()
    );
    let want = read_and_sum(&path); // also warms the page cache

    // Variant 1 needs a fresh pool per run, made before the clock starts.
    let mut next_pool = Some(Pool::builder().workers(2).build().expect("pool"));
    let mut variants = [0u8, 1, 2];
    let stats = common::round_robin(reps, &mut variants, |i, _| {
        let (got, secs) = match i {
            0 => {
                let t = Instant::now();
                let got = read_and_sum(&path);
                (got, t.elapsed().as_secs_f64())
            }
            1 => {
                let pool = next_pool.take().expect("a pool is ready");
                let t = Instant::now();
                let got = mapped_pool(&path, &pool);
                let secs = t.elapsed().as_secs_f64();
                drop(pool);
                next_pool = Some(Pool::builder().workers(2).build().expect("pool"));
                (got, secs)
            }
            _ => {
                let t = Instant::now();
                let got = mapped_local(&path);
                (got, t.elapsed().as_secs_f64())
            }
        };
        assert_eq!(got, want, "variant {i} disagrees with the read variant");
        secs
    });
    let _ = std::fs::remove_file(&path);

    let names = [
        "read into a Vec, 1 process",
        "mapped, pool of 2",
        "mapped, 1 process",
    ];
    for (name, s) in names.iter().zip(&stats) {
        println!(
            "{name:<28} {:>8.1} ms  ({:.1}..{:.1})",
            s.median * 1e3,
            s.min * 1e3,
            s.max * 1e3
        );
    }
    let (read, pool, local) = (stats[0].median, stats[1].median, stats[2].median);
    println!("{reps} samples per variant; ratios are of medians (time of read / time of variant)");
    common::result("npy_mapped_vs_read_1GiB", read / pool, 2, "x");
    common::result("npy_mapped_1proc_vs_read_1GiB", read / local, 2, "x");
    common::result("npy_mapped_pool_ms_1GiB", pool * 1e3, 1, "ms");
    common::result("npy_read_ms_1GiB", read * 1e3, 1, "ms");
}
