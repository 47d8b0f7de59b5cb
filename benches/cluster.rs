//! The cluster pool against one local pool, and MPI over TCP against raw TCP (feature `mpi`):
//! `cargo bench --features mpi --bench cluster` (it starts itself under `mpirun -n 2 --bind-to none` when
//! no MPI launcher started it: a rank's workers inherit its CPU binding), or over two network namespaces
//! joined by a veth pair:
//! `.ci/mpi-netns target/release/deps/cluster-… --tcp-peer 10.77.0.1`.
//!
//! - **`cluster_vs_local_pool_256MiB`** (one host): a memory-bound `map_chunks` (sum of squares) over a
//!   256 MiB `f64` array, 2 ranks of 1 worker each vs one local `Pool` of 2 workers, timed in
//!   round-robin; the throughput ratio (1.0 = as fast as the local pool). The ranks share a node, so rank
//!   1 reads rank 0's array in place. For context, `cluster_sent_vs_local_pool_256MiB` is the same with
//!   node sharing turned off: rank 1 is sent its half over MPI (shared-memory transport on one host).
//!   The bytes MPI moved per rank are printed for each.
//! - **`cluster_tcp_efficiency`** (two hosts): the same call with rank 1 on the other host, so its half
//!   travels over TCP; the achieved GB/s (bytes sent to rank 1 / call time) divided by what one raw TCP
//!   stream between the same two hosts carries (`iperf`-style: rank 0 writes, rank 1 reads, timed by the
//!   reader). Printed only when the ranks are on two nodes and `--tcp-peer ADDR` names rank 0's address.
//!   Beside it, plain MPI messages of 8 MiB over the same link (`mpi_tcp_gbps`): the ceiling Open MPI's
//!   TCP transport sets, and `cluster_vs_plain_mpi_tcp`, how much of it the cluster pool keeps.
//!
//! Figures depend on the machine: on a 2-vCPU VM the ranks, their workers and MPI's progress share two
//! cores, and a veth pair's TCP speed is the kernel's loopback-like path, not a NIC's. `MPROC_BENCH_QUICK=1`
//! takes fewer repetitions (and 64 MiB for the TCP part). The last lines are `result: NAME VALUE UNIT`
//! (DESIGN.md, "The benchmark contract").

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode};
use std::time::Instant;

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{Destination, Source};
use mproc::cluster::{Cluster, ClusterPool};
use mproc::{Pool, SharedArray};

#[path = "common/mod.rs"]
mod common;

/// Elements of the array: 256 MiB of f64.
const LEN: usize = 32 << 20;
/// Elements per chunk (8 MiB): 32 chunks.
const CHUNK: usize = 1 << 20;
/// This bench's own MPI tag (for the raw TCP part), apart from the cluster pool's.
const TAG_BENCH: i32 = 77;

fn sum_squares(c: &[f64]) -> f64 {
    c.iter().map(|x| x * x).sum()
}

/// Starts this program again under `mpirun -n 2` if no MPI launcher started it.
fn relaunch_under_mpirun() -> Option<ExitCode> {
    let launched = [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if launched {
        return None;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    println!(
        "(not started by an MPI launcher: running `mpirun -n 2 --oversubscribe` on this bench)"
    );
    let status = Command::new("mpirun")
        // Unbound: Open MPI binds each of 2 ranks to one core by default, and a rank's workers inherit
        // that binding (the local pool of 2 would share one core).
        .args(["-n", "2", "--oversubscribe", "--bind-to", "none"])
        .arg(exe)
        .args(std::env::args().skip(1))
        // Open MPI refuses root without these; harmless otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .status();
    Some(match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("mpirun: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run mpirun ({e}): install openmpi-bin, or start this bench under an MPI launcher");
            ExitCode::FAILURE
        }
    })
}

fn tcp_peer() -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--tcp-peer" {
            return it.next();
        }
    }
    None
}

/// One raw TCP stream of `bytes` (rank 0's figure) from rank 0 to rank 1, rank 0 listening on `addr`;
/// the rate in GB/s as the reader (rank 1) timed it until the writer closed, sent back to rank 0.
fn raw_tcp(world: &SimpleCommunicator, addr: &str, bytes: usize) -> f64 {
    let block = vec![0x5au8; 1 << 20];
    if world.rank() == 0 {
        let listener = TcpListener::bind((addr, 0)).expect("listen on the peer address");
        let port = listener.local_addr().expect("a port").port();
        world.process_at_rank(1).send_with_tag(&port, TAG_BENCH);
        let (mut s, _) = listener.accept().expect("rank 1 connects");
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len());
            s.write_all(&block[..n]).expect("write");
            left -= n;
        }
        drop(s);
        let (gbps, _) = world.process_at_rank(1).receive_with_tag::<f64>(TAG_BENCH);
        gbps
    } else {
        let (port, _) = world.process_at_rank(0).receive_with_tag::<u16>(TAG_BENCH);
        let mut s = TcpStream::connect((addr, port)).expect("connect to rank 0");
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        // Until the writer closes: only rank 0 knows how many bytes the cluster call moved.
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        let gbps = got as f64 / start.elapsed().as_secs_f64() / 1e9;
        world.process_at_rank(0).send_with_tag(&gbps, TAG_BENCH);
        gbps
    }
}

/// Plain MPI messages of `bytes` in all (8 MiB each, as the cluster pool sends array bytes) from rank 0
/// to rank 1: MPI's own rate over this link, in GB/s as the receiver timed it, sent back to rank 0.
fn raw_mpi(world: &SimpleCommunicator, bytes: usize) -> f64 {
    let piece = 8 << 20;
    let mut buf = vec![0x5au8; piece];
    let mut total = [bytes as u64];
    if world.rank() == 0 {
        world
            .process_at_rank(1)
            .send_with_tag(&total[..], TAG_BENCH);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(piece);
            world.process_at_rank(1).send_with_tag(&buf[..n], TAG_BENCH);
            left -= n;
        }
        world
            .process_at_rank(1)
            .receive_with_tag::<f64>(TAG_BENCH)
            .0
    } else {
        world
            .process_at_rank(0)
            .receive_into_with_tag(&mut total[..], TAG_BENCH);
        let start = Instant::now();
        let mut left = total[0] as usize;
        while left > 0 {
            let n = left.min(piece);
            world
                .process_at_rank(0)
                .receive_into_with_tag(&mut buf[..n], TAG_BENCH);
            left -= n;
        }
        let gbps = total[0] as f64 / start.elapsed().as_secs_f64() / 1e9;
        world.process_at_rank(0).send_with_tag(&gbps, TAG_BENCH);
        gbps
    }
}

fn main() -> ExitCode {
    if let Some(code) = relaunch_under_mpirun() {
        return code;
    }
    let quick = common::quick();
    let reps = if quick { 3 } else { 9 };
    let cluster = Cluster::init().expect("MPI starts");
    let world = SimpleCommunicator::world();
    let rank = cluster.rank();
    let two_nodes = cluster.size() == 2 && cluster.node_of(0) != cluster.node_of(1);
    if rank == 0 {
        println!(
            "mproc cluster bench{}: {} ranks on {} nodes; 256 MiB of f64 in chunks of {CHUNK}; {reps} reps (median)",
            if quick { " (quick)" } else { "" },
            cluster.size(),
            cluster.nodes(),
        );
        if cluster.size() != 2 {
            println!(
                "(the figures below are defined for 2 ranks; this run has {})",
                cluster.size()
            );
        }
    }

    let data = (rank == 0).then(|| {
        let v: Vec<f64> = (0..LEN)
            .map(|i| ((i % 4096) as f64) / 4096.0 - 0.5)
            .collect();
        SharedArray::from_slice(&v).expect("SharedArray")
    });
    // Every variant's per-chunk results must equal these (each chunk is summed by the same code).
    let serial: Vec<f64> = data
        .as_ref()
        .map(|d| d.chunks(CHUNK).map(sum_squares).collect())
        .unwrap_or_default();
    let mut shared = ClusterPool::builder()
        .workers(1)
        .build(&cluster)
        .expect("cluster pool");
    let mut sent = ClusterPool::builder()
        .workers(1)
        .share_node_memory(false)
        .build(&cluster)
        .expect("cluster pool");

    if !two_nodes {
        // One host: the local pool of 2 against 2 ranks of 1, shared and sent.
        let local = (rank == 0).then(|| Pool::builder().workers(2).build().expect("pool"));
        // Rank 0 drives `shared`; inside it, `sent` cannot serve (the ranks serve one pool at a time),
        // so each cluster variant is one `run` of its own pool per sample.
        let mut samples: [Vec<f64>; 3] = Default::default();
        let mut moved = [0u64; 2];
        for rep in 0..=reps {
            for v in 0..3 {
                let t = match v {
                    0 => {
                        let Some(local) = &local else { continue };
                        let data = data.as_ref().expect("rank 0's data");
                        let t = Instant::now();
                        let r = local
                            .map_chunks(data, CHUNK, sum_squares)
                            .expect("local pool");
                        let t = t.elapsed().as_secs_f64();
                        assert!(r == serial, "a variant computed other sums");
                        Some(t)
                    }
                    _ => {
                        let pool = if v == 1 { &mut shared } else { &mut sent };
                        pool.run(|p| {
                            let data = data.as_ref().expect("rank 0's data");
                            let before = p.bytes_sent_to(1) + p.bytes_received_from(1);
                            let t = Instant::now();
                            let r = p
                                .map_chunks(data, CHUNK, sum_squares)
                                .expect("cluster pool");
                            let t = t.elapsed().as_secs_f64();
                            assert!(r == serial, "a variant computed other sums");
                            moved[v - 1] = p.bytes_sent_to(1) + p.bytes_received_from(1) - before;
                            t
                        })
                    }
                };
                // The first round warms up (mapping, first touch, MPI's connections).
                if let (Some(t), true) = (t, rep > 0) {
                    samples[v].push(t);
                }
            }
        }
        if rank == 0 {
            let [l, s, x] = samples.map(common::Stats::of);
            let gbs = |t: f64| (LEN * 8) as f64 / t / 1e9;
            println!(
                "  local Pool, 2 workers:           {:7.1} ms ({:.1}..{:.1}), {:5.2} GB/s",
                l.median * 1e3,
                l.min * 1e3,
                l.max * 1e3,
                gbs(l.median)
            );
            println!("  2 ranks x 1 worker, node shared: {:7.1} ms ({:.1}..{:.1}), {:5.2} GB/s; MPI moved {} bytes to/from rank 1 per call", s.median * 1e3, s.min * 1e3, s.max * 1e3, gbs(s.median), moved[0]);
            println!("  2 ranks x 1 worker, half sent:   {:7.1} ms ({:.1}..{:.1}), {:5.2} GB/s; MPI moved {} bytes to/from rank 1 per call", x.median * 1e3, x.min * 1e3, x.max * 1e3, gbs(x.median), moved[1]);
            common::result(
                "cluster_vs_local_pool_256MiB",
                l.median / s.median,
                2,
                "ratio",
            );
            common::result(
                "cluster_sent_vs_local_pool_256MiB",
                l.median / x.median,
                2,
                "ratio",
            );
            common::result(
                "cluster_bytes_moved_per_rank_256MiB",
                moved[0] as f64,
                0,
                "bytes",
            );
        }
    } else {
        // Two hosts: rank 1's half crosses TCP.
        let len = if quick { LEN / 4 } else { LEN };
        let small = (rank == 0).then(|| {
            let data = data.as_ref().expect("rank 0's data");
            SharedArray::from_slice(&data[..len]).expect("SharedArray")
        });
        let mut times = Vec::new();
        let mut moved = 0u64;
        for rep in 0..=reps {
            if let Some((t, m)) = sent.run(|p| {
                let data = small.as_ref().expect("rank 0's data");
                let before = p.bytes_sent_to(1);
                let t = Instant::now();
                let r = p
                    .map_chunks(data, CHUNK, sum_squares)
                    .expect("cluster pool");
                assert!(r[..] == serial[..r.len()], "the two-host sums differ");
                (t.elapsed().as_secs_f64(), p.bytes_sent_to(1) - before)
            }) {
                if rep > 0 {
                    times.push(t);
                }
                moved = m;
            }
        }
        let Some(addr) = tcp_peer() else {
            if rank == 0 {
                println!("(two nodes, but no --tcp-peer ADDR naming rank 0's address: no raw TCP baseline)");
            }
            return ExitCode::SUCCESS;
        };
        let mut raw = Vec::new();
        let mut mpi = Vec::new();
        for rep in 0..=reps {
            let r = raw_tcp(&world, &addr, moved as usize);
            let m = raw_mpi(&world, moved as usize);
            if rep > 0 {
                raw.push(r);
                mpi.push(m);
            }
        }
        if rank == 0 {
            let t = common::Stats::of(times);
            let raw = common::Stats::of(raw);
            let achieved = moved as f64 / t.median / 1e9;
            println!(
                "  {} MiB, half to rank 1 over TCP: {:.1} ms ({:.1}..{:.1}); {moved} bytes to rank 1: {achieved:.2} GB/s",
                (len * 8) >> 20,
                t.median * 1e3,
                t.min * 1e3,
                t.max * 1e3
            );
            println!(
                "  raw TCP stream, same hosts, {moved} bytes: {:.2} GB/s ({:.2}..{:.2})",
                raw.median, raw.min, raw.max
            );
            let mpi = common::Stats::of(mpi);
            println!(
                "  plain MPI messages of 8 MiB, same hosts: {:.2} GB/s ({:.2}..{:.2})",
                mpi.median, mpi.min, mpi.max
            );
            common::result("cluster_tcp_gbps", achieved, 2, "GB/s");
            common::result("mpi_tcp_gbps", mpi.median, 2, "GB/s");
            common::result("raw_tcp_gbps", raw.median, 2, "GB/s");
            common::result("cluster_tcp_efficiency", achieved / raw.median, 2, "ratio");
            common::result(
                "cluster_vs_plain_mpi_tcp",
                achieved / mpi.median,
                2,
                "ratio",
            );
        }
    }
    ExitCode::SUCCESS
}
