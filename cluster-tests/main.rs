//! Tests of `mproc::cluster` (feature `mpi`). Run under MPI by `.ci/mpi-tests`, e.g.
//! `mpirun -n 3 --oversubscribe target/debug/deps/cluster-… suite`, and as a single rank by
//! `cargo test --features mpi` (MPI's singleton start: one rank, the same checks).
//!
//! Every rank runs the same checks collectively; rank 0 compares each call with a sequential
//! computation, prints `ok: NAME` or `FAILED: NAME: why`, and exits non-zero if any failed (so `mpirun`
//! does too). Modes (first argument):
//! - `suite` (default): the map family, with and without sharing rank 0's memory on its node;
//!   failures below a rank (a task's panic on the last rank, a worker killed inside one rank's pool,
//!   with and without retry); the bytes MPI moves.
//! - `expect-exe-mismatch`: run as `mpirun -n 1 A expect-exe-mismatch : -n 1 B expect-exe-mismatch`
//!   with B a different file; every rank must get `RankExecutableMismatch { rank: 1 }`.
//! - `rank-death`: every rank but 0 dies (SIGABRT) while rank 0 waits for it in a call; the launcher
//!   must end the job (the script checks it does, with a non-zero status and a message, and in bounded
//!   time).
//! - `rank-panic`: every rank but 0 panics (unwinding) while rank 0 waits for it in a call; and
//!   `rank0-panic`: rank 0's code panics between two calls. Either way the job must end with an error
//!   in bounded time: before, the unwinding rank waited in `MPI_Finalize` for ranks waiting for it.
//! - `foreign-array`: a `DistributedArray` of one pool used with another must stop the job (rank 0
//!   panics, naming the mistake); before, the serving ranks computed over the other pool's part.

use std::process::ExitCode;

use mproc::cluster::{Cluster, ClusterPool};
use mproc::{Error, Pool, SharedArray};

fn square(x: u64) -> u64 {
    x * x
}

fn describe(a: u32, b: String) -> String {
    format!("{b}{a}")
}

fn chunk_sum(c: &[u64]) -> u64 {
    c.iter().sum()
}

fn chunk_weighted(&(w, shift): &(u64, u32), c: &[u64]) -> u64 {
    c.iter().map(|x| (x * w) >> shift).sum()
}

const WIDTH: usize = 3;

fn row_sums(input: &[u64], out: &mut [u64], start: usize) {
    for (j, o) in out.iter_mut().enumerate() {
        let row = start + j;
        *o = input[row * WIDTH..(row + 1) * WIDTH].iter().sum();
    }
}

fn scaled(&by: &f64, input: &[f64], out: &mut [f64], start: usize) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = input[start + j] * by;
    }
}

/// The rank whose worker runs this, as the launcher told it (workers inherit the rank's environment).
fn my_rank() -> String {
    std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_else(|_| "0".into())
}

/// Panics on item `bad`, saying on which rank it ran.
fn panic_on((x, bad): (u64, u64)) -> u64 {
    if x == bad {
        panic!("boom on item {x} at rank {}", my_rank());
    }
    x
}

fn panic_in_chunk(c: &[u64]) -> u64 {
    if c.contains(&7777) {
        panic!("chunk with 7777 at rank {}", my_rank());
    }
    c.len() as u64
}

/// Kills its own worker on item `victim`.
fn die_on((x, victim): (u64, u64)) -> u64 {
    if x == victim {
        std::process::abort();
    }
    x + 1
}

/// Kills its own worker on item `victim`, the first time only (a marker file says it was done).
fn die_once((x, victim, marker): (u64, u64, String)) -> u64 {
    if x == victim && std::fs::File::create_new(&marker).is_ok() {
        std::process::abort();
    }
    x + 1
}

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

/// An item's index and its result, as `imap_unordered` yields them.
type Indexed = (usize, Result<u64, Error>);

struct Report {
    failed: Vec<String>,
    passed: usize,
}

impl Report {
    fn check(&mut self, name: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                println!("ok: {name}");
            }
            Err(why) => {
                println!("FAILED: {name}: {why}");
                self.failed.push(name.to_owned());
            }
        }
    }
}

fn eq<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        let (g, w) = (format!("{got:?}"), format!("{want:?}"));
        Err(format!(
            "got {}, want {}",
            &g[..g.len().min(300)],
            &w[..w.len().min(300)]
        ))
    }
}

/// The map family against sequential computations, with uneven sizes.
fn map_family(pool: &mut ClusterPool<'_>, size: usize, tag: &str, r: &mut Report) {
    for n in [0u64, 1, 7, 1001] {
        let got = pool.map(square, 0..n).map_err(|e| e.to_string());
        r.check(
            &format!("{tag}: map of {n} items"),
            got.and_then(|v| eq(v, (0..n).map(square).collect())),
        );
    }
    let pairs: Vec<(u32, String)> = (0..53).map(|i| (i, format!("p{}", i % 5))).collect();
    let want: Vec<String> = pairs.iter().cloned().map(|(a, b)| describe(a, b)).collect();
    let got = pool.starmap(describe, pairs).map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: starmap of 53 pairs"),
        got.and_then(|v| eq(v, want)),
    );

    for chunksize in [None, Some(1), Some(10)] {
        let got: Result<Vec<(usize, u64)>, String> = pool
            .imap_unordered(square, 0..500u64, chunksize)
            .map_err(|e| e.to_string())
            .and_then(|it| {
                it.map(|(i, v)| v.map(|v| (i, v)).map_err(|e| e.to_string()))
                    .collect()
            });
        r.check(
            &format!("{tag}: imap_unordered of 500 items, chunksize {chunksize:?}"),
            got.and_then(|mut v| {
                v.sort_unstable();
                eq(v, (0..500u64).map(|i| (i as usize, square(i))).collect())
            }),
        );
    }
    // Dropped after two results: the rest are drained, and the next call works.
    let early = pool
        .imap_unordered(square, 0..300u64, Some(7))
        .map(|it| it.take(2).count());
    let next = pool.map(square, 0..5u64);
    r.check(
        &format!("{tag}: imap_unordered dropped early, then map"),
        match (early, next) {
            (Ok(2), Ok(v)) => eq(v, vec![0, 1, 4, 9, 16]),
            (a, b) => Err(format!("{a:?} / {b:?}")),
        },
    );

    let data: Vec<u64> = (0..100_003u64).map(|i| i * 3 + 1).collect();
    let array = SharedArray::from_slice(&data).expect("shared memory");
    // usize::MAX / 4: a chunk longer than the array, whose byte size overflowed on rank 0 (debug).
    for chunk_len in [997usize, 100_003, 1 << 20, 33_335, usize::MAX / 4] {
        let want: Vec<u64> = data.chunks(chunk_len).map(chunk_sum).collect();
        let got = pool
            .map_chunks(&array, chunk_len, chunk_sum)
            .map_err(|e| e.to_string());
        r.check(
            &format!("{tag}: map_chunks of 100003 elements by {chunk_len}"),
            got.and_then(|v| eq(v, want)),
        );
    }
    // Several pieces of array bytes per rank (8 MiB each when sent): their chunks start while the
    // next pieces travel, and a panic in a later piece keeps its chunk index.
    let big: Vec<u64> = (0..(3u64 << 20))
        .map(|i| (i ^ 0x5555) + 10_000_000)
        .collect();
    let big_array = SharedArray::from_slice(&big).expect("shared memory");
    let chunk = 1 << 15;
    let got = pool
        .map_chunks(&big_array, chunk, chunk_sum)
        .map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: map_chunks of 24 MiB in chunks of 256 KiB"),
        got.and_then(|v| eq(v, big.chunks(chunk).map(chunk_sum).collect())),
    );
    let bad_chunk = big.len() / chunk - 3; // near the end: the last rank's last piece
    let mut marked = big.clone();
    marked[bad_chunk * chunk + 5] = 7777;
    let marked = SharedArray::from_slice(&marked).expect("shared memory");
    r.check(
        &format!("{tag}: a panic in a later piece names its chunk"),
        match pool.map_chunks(&marked, chunk, panic_in_chunk) {
            Err(Error::TaskPanicked { task, .. }) => eq(task, bad_chunk),
            other => Err(format!("{:?}", other.map(|v| v.len()))),
        },
    );
    let p = (5u64, 2u32);
    let want: Vec<u64> = data.chunks(4099).map(|c| chunk_weighted(&p, c)).collect();
    let got = pool
        .map_chunks_with(&array, 4099, &p, chunk_weighted)
        .map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: map_chunks_with"),
        got.and_then(|v| eq(v, want)),
    );
    // Fewer chunks than ranks: some ranks get nothing.
    let small = SharedArray::from_slice(&[1u64, 2, 3, 4, 5]).expect("shared memory");
    let got = pool
        .map_chunks(&small, 10, chunk_sum)
        .map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: map_chunks with fewer chunks than {size} ranks"),
        got.and_then(|v| eq(v, vec![15])),
    );

    let rows = 20_011usize;
    let matrix: Vec<u64> = (0..(rows * WIDTH) as u64).collect();
    let input = SharedArray::from_slice(&matrix).expect("shared memory");
    let mut out = SharedArray::<u64>::zeroed(rows).expect("shared memory");
    let want: Vec<u64> = matrix.chunks(WIDTH).map(|row| row.iter().sum()).collect();
    let got = pool
        .transform(&input, &mut out, 101, row_sums)
        .map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: transform of {rows} rows of {WIDTH}"),
        got.and_then(|()| eq(out.to_vec(), want)),
    );
    let xs: Vec<f64> = (0..7777).map(f64::from).collect();
    let x = SharedArray::from_slice(&xs).expect("shared memory");
    let mut y = SharedArray::<f64>::zeroed(xs.len()).expect("shared memory");
    let got = pool
        .transform_with(&x, &mut y, 1000, &0.5, scaled)
        .map_err(|e| e.to_string());
    r.check(
        &format!("{tag}: transform_with, element-wise"),
        got.and_then(|()| eq(y.to_vec(), xs.iter().map(|v| v * 0.5).collect())),
    );
}

/// Failures below a rank reach rank 0 with the item's index in the whole input.
fn failures(pool: &mut ClusterPool<'_>, size: usize, r: &mut Report) {
    let last = (size - 1).to_string();
    let bad = 299u64; // the last item: in the last rank's share
    match pool.map(panic_on, (0..300u64).map(|x| (x, bad))) {
        Err(Error::TaskPanicked {
            task,
            message,
            location,
        }) => r.check(
            &format!("a task panic on rank {last} reaches rank 0"),
            eq(
                (task, message, location.contains("cluster-tests/main.rs")),
                (
                    bad as usize,
                    format!("boom on item {bad} at rank {last}"),
                    true,
                ),
            ),
        ),
        other => r.check(
            "a task panic on the last rank reaches rank 0",
            Err(format!("{other:?}")),
        ),
    }
    // A chunk index, not an element index.
    let data: Vec<u64> = (0..10_000u64).collect();
    let array = SharedArray::from_slice(&data).expect("shared memory");
    match pool.map_chunks(&array, 1000, panic_in_chunk) {
        Err(Error::TaskPanicked { task, message, .. }) => r.check(
            "a chunk's panic names its chunk index",
            eq(
                (task, message.starts_with("chunk with 7777 at rank ")),
                (7, true),
            ),
        ),
        other => r.check(
            "a chunk's panic names its chunk index",
            Err(format!("{other:?}")),
        ),
    }

    // A worker killed inside the last rank's pool: exactly its item fails, the others succeed.
    let victim = 190u64;
    let got: Result<Vec<Indexed>, Error> = pool
        .imap_unordered(die_on, (0..200u64).map(|x| (x, victim)), Some(1))
        .map(Iterator::collect);
    r.check(
        "a worker killed in one rank's pool fails exactly its task",
        match got {
            Ok(mut v) => {
                v.sort_by_key(|(i, _)| *i);
                let wrong: Vec<String> = v
                    .iter()
                    .filter(|(i, res)| match res {
                        Ok(y) => *i as u64 == victim || *y != *i as u64 + 1,
                        Err(Error::WorkerDied { task, signal, .. }) => {
                            *i as u64 != victim || *task != *i || *signal != Some(6)
                        }
                        Err(_) => true,
                    })
                    .map(|(i, res)| format!("{i}: {res:?}"))
                    .collect();
                if v.len() == 200 && wrong.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} results, wrong: {wrong:?}", v.len()))
                }
            }
            Err(e) => Err(e.to_string()),
        },
    );
    // The local pools recovered: the next call runs everywhere.
    r.check(
        "the pools are usable after a worker's death",
        pool.map(square, 0..100u64)
            .map_err(|e| e.to_string())
            .and_then(|v| eq(v, (0..100).map(square).collect())),
    );
}

fn suite(cluster: &Cluster) -> Result<bool, Error> {
    let size = cluster.size();
    let mut report = Report {
        failed: Vec::new(),
        passed: 0,
    };
    if cluster.rank() == 0 {
        println!(
            "cluster tests: {size} ranks on {} nodes (rank 0 pid {})",
            cluster.nodes(),
            std::process::id()
        );
    }

    for share in [true, false] {
        let mut pool = ClusterPool::builder()
            .workers(2)
            .share_node_memory(share)
            .build(cluster)?;
        let tag = if share {
            "node memory shared"
        } else {
            "elements sent"
        };
        if let Some(shared) = pool.run(|pool| {
            map_family(pool, size, tag, &mut report);
            (1..size).filter(|&r| pool.shares_memory_with(r)).count()
        }) {
            // Every rank on rank 0's node can open its memory here (one user, one pid namespace).
            let node_mates = (1..size)
                .filter(|&r| cluster.node_of(r) == cluster.node_of(0))
                .count();
            let want = if share { node_mates } else { 0 };
            report.check(
                &format!("{tag}: ranks sharing rank 0's memory"),
                eq(shared, want),
            );
        }
    }

    // Only what a rank needs travels: with sharing off, rank r receives its share of the array and
    // no more.
    let mut pool = ClusterPool::builder()
        .workers(1)
        .share_node_memory(false)
        .build(cluster)?;
    let len = 3 * 1024 * 1024usize;
    let array = SharedArray::<u64>::zeroed(len)?;
    if let Some(outcome) = pool.run(|pool| {
        let sums = pool.map_chunks(&array, 1 << 16, chunk_sum)?;
        Ok::<_, Error>((
            sums.len(),
            (1..size).map(|r| pool.bytes_sent_to(r)).collect::<Vec<_>>(),
        ))
    }) {
        let total = (len * 8) as u64;
        report.check(
            "each rank is sent only its share of the array",
            outcome.map_err(|e| e.to_string()).and_then(|(n, sent)| {
                let share = total / size as u64;
                let chunk = (8u64) << 16;
                let ok = n == len >> 16
                    && sent
                        .iter()
                        .all(|&s| s + chunk >= share && s <= share + chunk + 4096);
                println!("  bytes sent to ranks 1..: {sent:?} (array {total} bytes, {size} ranks)");
                if ok {
                    Ok(())
                } else {
                    Err(format!("sent {sent:?} for shares of about {share}"))
                }
            }),
        );
    }
    drop(pool);

    // An array already distributed: each rank made its own part (of a different length), nothing
    // travels, and the chunks come back in rank order.
    let mut pool = ClusterPool::builder().workers(2).build(cluster)?;
    let part_of = |r: usize| -> Vec<u64> {
        (0..(1000 + 777 * r) as u64)
            .map(|i| i * 10 + r as u64)
            .collect()
    };
    let data = pool.distribute(SharedArray::from_slice(&part_of(cluster.rank()))?)?;
    let other = pool.distribute(SharedArray::from_slice(&part_of(cluster.rank()))?)?;
    // The serving ranks' programs let go of their parts of `other`: a call on it must fail with the
    // rank's name, not read freed memory.
    let other = (cluster.rank() == 0).then_some(other);
    if let Some((got, with, moved, gone)) = pool.run(|pool| {
        let before: u64 = (1..size).map(|r| pool.bytes_sent_to(r)).sum();
        let got = pool.map_chunks_distributed(&data, 100, chunk_sum);
        let with = pool.map_chunks_distributed_with(&data, 333, &(3u64, 1u32), chunk_weighted);
        let moved = (1..size).map(|r| pool.bytes_sent_to(r)).sum::<u64>() - before;
        let other = other.as_ref().expect("rank 0 kept its part");
        let gone = pool.map_chunks_distributed(other, 100, chunk_sum);
        (got, with, moved, gone)
    }) {
        let per_part = |chunk: usize, f: &dyn Fn(&[u64]) -> u64| -> Vec<u64> {
            (0..size)
                .flat_map(|r| part_of(r).chunks(chunk).map(f).collect::<Vec<_>>())
                .collect()
        };
        let want = per_part(100, &chunk_sum);
        report.check(
            "distributed array: map_chunks_distributed over each rank's own part",
            got.map_err(|e| e.to_string())
                .and_then(|v| eq(v, want.clone())),
        );
        report.check(
            "distributed array: map_chunks_distributed_with",
            with.map_err(|e| e.to_string())
                .and_then(|v| eq(v, per_part(333, &|c: &[u64]| chunk_weighted(&(3, 1), c)))),
        );
        report.check(
            "distributed array: no elements travel (only small messages)",
            eq(moved < 2048 * size as u64, true),
        );
        report.check(
            "distributed array: a part its rank dropped fails the call, naming the rank",
            match (size, gone) {
                (1, Ok(v)) => eq(v, want),
                (_, Err(Error::RankFailed { rank: 1, message })) => {
                    eq(message.contains("was dropped"), true)
                }
                (_, other) => Err(format!("{:?}", other.map(|v| v.len()))),
            },
        );
    }
    drop(pool);

    let mut pool = ClusterPool::builder().workers(2).build(cluster)?;
    pool.run(|pool| failures(pool, size, &mut report));
    drop(pool);

    // With retry on worker death: the killed task runs again and the call succeeds.
    let marker =
        std::env::temp_dir().join(format!("mproc-cluster-die-once-{}", std::process::id()));
    let mut pool = ClusterPool::builder()
        .workers(2)
        .local(Pool::builder().retry_on_worker_death(true))
        .build(cluster)?;
    if let Some(got) = pool.run(|pool| {
        let m = marker.to_string_lossy().into_owned();
        pool.map(die_once, (0..120u64).map(|x| (x, 119, m.clone())))
    }) {
        let died = marker.exists();
        let _ = std::fs::remove_file(&marker);
        report.check(
            "a worker killed with retry on: its task runs again",
            got.map_err(|e| e.to_string())
                .and_then(|v| eq((v, died), ((1..=120).collect(), true))),
        );
    }
    drop(pool);

    // A chunk of items larger than a pool ring's reassembly cap (256 MiB): the local pool hands such a
    // task to its worker in a shared block, and so must a rank. Before, every rank sent its tasks inline
    // in the ring, and the call failed with `MessageTooLarge` where `Pool::map` succeeded.
    let mut pool = ClusterPool::builder().workers(1).build(cluster)?;
    if let Some(got) = pool.run(|pool| {
        let n = (256 << 20) + 4096;
        // One item per rank (equal workers): the large one is rank 0's, which runs it as every rank runs
        // its share (`serve::submit_items`); it does not travel over MPI, whose share encoding of
        // 256 MiB of single bytes takes half a minute in a debug build.
        let lens = |r: usize| if r == 0 { n } else { r };
        pool.map(byte_len, (0..size).map(|r| vec![r as u8; lens(r)]))
            .map(|v| v == (0..size).map(lens).collect::<Vec<_>>())
    }) {
        report.check(
            "an item above a ring's message cap runs in a rank's share",
            got.map_err(|e| e.to_string()).and_then(|ok| eq(ok, true)),
        );
    }
    drop(pool);

    // A remote rank's failed transform must not copy an earlier call's output into rank 0's array.
    if !review(cluster)? {
        report.failed.push("review probes".into());
    }

    if cluster.rank() == 0 {
        println!(
            "cluster tests: {} passed, {} failed on {size} ranks",
            report.passed,
            report.failed.len()
        );
    }
    Ok(report.failed.is_empty())
}

// ---- a failed remote transform share and an empty transform input ----

fn fill_777(_input: &[u64], out: &mut [u64], _start: usize) {
    out.fill(777);
}

/// Panics on the output chunk that starts at `start == 0` of the last rank's block, before writing.
fn panic_before_write(input: &[u64], out: &mut [u64], start: usize) {
    if input.first() == Some(&4242) && start == 0 {
        panic!("no write at rank {}", my_rank());
    }
    out.fill(1);
}

fn zero_input(_input: &[u64], out: &mut [u64], _start: usize) {
    out.fill(5);
}

fn review(cluster: &Cluster) -> Result<bool, Error> {
    let size = cluster.size();
    let mut report = Report {
        failed: Vec::new(),
        passed: 0,
    };
    let mut pool = ClusterPool::builder()
        .workers(1)
        .share_node_memory(false)
        .build(cluster)?;
    pool.run(|pool| {
        // 1. A transform whose task fails on a remote rank must not write another call's data into
        //    the failed chunk of rank 0's output.
        let n = 3000usize;
        let input = SharedArray::from_slice(&vec![1u64; n]).expect("memory");
        let mut first = SharedArray::<u64>::zeroed(n).expect("memory");
        let _ = pool.transform(&input, &mut first, 100, fill_777);
        let mut marked = vec![1u64; n];
        // The first element of the last rank's block (its input block starts at its first row).
        let last_start = n - n / size; // equal workers: the last rank's block of whole chunks
        marked[last_start - last_start % 100] = 4242;
        let marked = SharedArray::from_slice(&marked).expect("memory");
        let mut second = SharedArray::<u64>::zeroed(n).expect("memory");
        let got = pool.transform(&marked, &mut second, 100, panic_before_write);
        report.check(
            "review: transform_failed_chunk_keeps_old_output",
            match got {
                // One rank: no share travels, nothing to check.
                Err(Error::TaskPanicked { .. }) if size == 1 => Ok(()),
                Err(Error::TaskPanicked { .. }) => {
                    let stale = second.iter().filter(|&&v| v == 777).count();
                    eq(stale, 0)
                }
                other => Err(format!("{other:?}")),
            },
        );
        // 2. A transform with an empty input (k = 0).
        let empty = SharedArray::<u64>::zeroed(0).expect("memory");
        let mut out = SharedArray::<u64>::zeroed(1000).expect("memory");
        let got = pool.transform(&empty, &mut out, 10, zero_input);
        report.check(
            "review: transform_empty_input",
            got.map_err(|e| e.to_string())
                .and_then(|()| eq(out.iter().all(|&v| v == 5), true)),
        );
    });
    drop(pool);
    if cluster.rank() == 0 {
        println!(
            "review: {} passed, {} failed",
            report.passed,
            report.failed.len()
        );
    }
    Ok(report.failed.is_empty())
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "suite".into());
    // `cargo test` passes libtest's flags; they mean the default suite here.
    let mode = if mode.starts_with('-') {
        "suite".into()
    } else {
        mode
    };
    match mode.as_str() {
        "expect-exe-mismatch" => match Cluster::init() {
            Err(Error::RankExecutableMismatch { rank: 1, detail }) => {
                println!("ok: a different executable on rank 1 is refused ({detail})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("FAILED: exe mismatch: got {e}");
                ExitCode::FAILURE
            }
            Ok(_) => {
                println!("FAILED: exe mismatch: the job started");
                ExitCode::FAILURE
            }
        },
        "rank-death" => {
            let cluster = Cluster::init().expect("MPI starts");
            let mut pool = ClusterPool::builder()
                .workers(1)
                .build(&cluster)
                .expect("pools start");
            if cluster.rank() != 0 {
                eprintln!("rank {}: dying now", cluster.rank());
                std::process::abort();
            }
            let got = pool.run(|pool| pool.map(square, 0..1000u64));
            // Unreachable when the launcher does its job: it ends the job once a rank died.
            println!("FAILED: rank 0 went on after a rank died: {got:?}");
            ExitCode::FAILURE
        }
        "rank-panic" | "rank0-panic" => {
            let cluster = Cluster::init().expect("MPI starts");
            let mut pool = ClusterPool::builder()
                .workers(1)
                .build(&cluster)
                .expect("pools start");
            if mode == "rank-panic" && cluster.rank() != 0 {
                panic!("rank {}: a panic in the user's code", cluster.rank());
            }
            let first = pool.run(|pool| pool.map(square, 0..10u64));
            if mode == "rank0-panic" && cluster.rank() == 0 {
                panic!("rank 0: a panic between two calls");
            }
            let second = pool.run(|pool| pool.map(square, 0..10u64));
            // Unreachable when the job ends as it must.
            println!(
                "FAILED: rank {} went on after a panic: {first:?} {second:?}",
                cluster.rank()
            );
            ExitCode::FAILURE
        }
        "foreign-array" => {
            let cluster = Cluster::init().expect("MPI starts");
            let mut first = ClusterPool::builder()
                .workers(1)
                .build(&cluster)
                .expect("pools start");
            let mut second = ClusterPool::builder()
                .workers(1)
                .build(&cluster)
                .expect("pools start");
            let ones = first
                .distribute(SharedArray::from_slice(&[1u64; 10]).expect("memory"))
                .expect("distribute");
            let _thousands = second
                .distribute(SharedArray::from_slice(&[1000u64; 10]).expect("memory"))
                .expect("distribute");
            // The second pool's array has the same id: before, the serving ranks summed it.
            let got = second.run(|pool| pool.map_chunks_distributed(&ones, 5, chunk_sum));
            println!("FAILED: an array of another pool was used: {got:?}");
            ExitCode::FAILURE
        }
        "review" => {
            let cluster = Cluster::init().expect("MPI starts");
            match review(&cluster) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    println!("FAILED: rank {}: {e}", cluster.rank());
                    ExitCode::FAILURE
                }
            }
        }
        "suite" => {
            let cluster = match Cluster::init() {
                Ok(c) => c,
                Err(e) => {
                    println!("FAILED: Cluster::init: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match suite(&cluster) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    println!("FAILED: rank {}: {e}", cluster.rank());
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!("unknown mode {other}");
            ExitCode::from(2)
        }
    }
}
