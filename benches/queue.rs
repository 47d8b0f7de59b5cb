//! `mproc::Queue` against a pipe and a Unix stream socket, in one run: `cargo bench --bench queue`.
//!
//! | group | mproc | baselines |
//! |---|---|---|
//! | throughput, 64 B messages | `Queue<[u8; 64], Raw>`, 1024 slots (64 KiB of payload) | pipe (default 64 KiB buffer), `UnixStream::pair()` |
//! | throughput, 64 B messages in batches | the same queue through `put_many`/`get_many`, 64 messages a batch | pipe, one 64 B `write` per message (the same bytes) |
//! | throughput, 64 KiB messages | `Queue<[[u8; 4096]; 16], Raw>` and `Queue<Vec<u8>, RawSlice<u8>>`, 8 slots | pipe (default 64 KiB, and resized to 512 KiB), `UnixStream::pair()` |
//! | round trip, 64 B | ping-pong over two `Queue<[u8; 64], Raw>` | ping-pong over two pipes; the floor: one shared cache line each way, both sides spinning (`queue_rtt_vs_spin_rtt`) |
//! | floors | put + get in one process, 64 B and 64 KiB | write + read of a pipe in one process |
//! | ceiling, 64 B | — | crossbeam's `ArrayQueue` (1024 slots) between two threads of this process on the same two CPUs, both spinning: what a ring of 64 B messages between these cores moves with no process boundary, no kill recovery and no sleeping (`queue_vs_threads_ring_64B`) |
//!
//! Every transport runs between two processes: the bench creates the channel, forks, and the child is the
//! producer (or the echoer); the parent consumes and times. Parent and child are pinned to two different
//! CPUs, so every message crosses cores. Throughput is timed from the first message received to the last,
//! so fork and start-up are not counted; every message carries its sequence number (in its first and last
//! 8 bytes) and the consumer checks it, so every transport does the same work and nothing is lost or torn.
//!
//! Timing, for a noisy 2-vCPU VM: each channel is created once and warmed up; then the variants of a group
//! are timed in round-robin (A B C, A B C, ...) so that a slow period hits all of them alike; each figure is
//! the median of the repetitions, with min..max beside it. `MPROC_BENCH_QUICK=1` runs fewer messages and
//! repetitions. The last lines are `result: NAME VALUE UNIT` for scripts (see DESIGN.md, "The benchmark
//! contract").
//!
//! Round trips are timed one by one with `Instant::now()` (the cost of one clock read, printed, is inside
//! every sample). In the queue ping-pong both sides spin between messages (a `get` spins before it sleeps
//! on a futex), so it measures the queue "when both sides are awake"; the pipe ping-pong sleeps in the
//! kernel on every message, as pipes do.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mproc::codec::{Raw, RawSlice};
use mproc::Queue;

#[path = "common/mod.rs"]
mod common;

use common::Stats;

const SMALL: usize = 64;
const BIG: usize = 64 * 1024;
type Small = [u8; SMALL];
/// 64 KiB as a `Pod` array: without its `min_const_generics` feature bytemuck implements `Pod` for
/// `[T; N]` only up to N = 4096, so the array is nested.
type Big = [[u8; 4096]; 16];
const _: () = assert!(std::mem::size_of::<Big>() == BIG);

/// Slots of the 64 B queue: 64 KiB of payload, the same as a pipe's default buffer.
const SMALL_SLOTS: usize = 1024;
/// Slots of the 64 KiB queues (512 KiB of payload; the resized pipe gets the same).
const BIG_SLOTS: usize = 8;

/// Message counts and repetitions for one run.
struct Config {
    quick: bool,
    reps: usize,
    small_msgs: u64,
    big_msgs: u64,
    rtt_queue: usize,
    rtt_pipe: usize,
    /// Round trips before the timed ones, discarded.
    rtt_warm: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = common::quick();
        if quick {
            Config {
                quick,
                reps: 3,
                small_msgs: 200_000,
                big_msgs: 2_000,
                rtt_queue: 20_000,
                rtt_pipe: 2_000,
                rtt_warm: 500,
            }
        } else {
            Config {
                quick,
                reps: 5,
                small_msgs: 2_000_000,
                big_msgs: 20_000,
                rtt_queue: 100_000,
                rtt_pipe: 20_000,
                rtt_warm: 2_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Channels

/// A one-way channel used by two processes: the forked child sends, the parent receives.
trait Channel {
    /// Sends message number `i` (child side).
    fn send(&mut self, i: u64);
    /// Receives the next message and returns its sequence number (parent side); panics if torn.
    fn recv(&mut self) -> u64;
    /// Messages one `send_range` sends at a time in the one-process floor (1: one by one).
    fn batch(&self) -> u64 {
        1
    }
    /// Sends messages `from..to` (child side). Batching transports send several per call.
    fn send_range(&mut self, from: u64, to: u64) {
        for i in from..to {
            self.send(i);
        }
    }
    /// Receives messages `from..to` (parent side), checking each one's sequence number.
    fn recv_range(&mut self, from: u64, to: u64) {
        for i in from..to {
            assert_eq!(self.recv(), i, "message out of order or lost");
        }
    }
}

/// Writes `i` into the first and last 8 bytes of a message.
fn stamp(msg: &mut [u8], i: u64) {
    let n = msg.len();
    msg[..8].copy_from_slice(&i.to_le_bytes());
    msg[n - 8..].copy_from_slice(&i.to_le_bytes());
}

/// The sequence number of a message, checking both of its copies.
fn seq_of(msg: &[u8]) -> u64 {
    let n = msg.len();
    let head = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
    let tail = u64::from_le_bytes(msg[n - 8..].try_into().expect("8 bytes"));
    assert_eq!(head, tail, "torn message");
    head
}

struct QueueSmall {
    q: Queue<Small, Raw>,
    buf: Small,
}

impl Channel for QueueSmall {
    fn send(&mut self, i: u64) {
        stamp(&mut self.buf, i);
        self.q.put(&self.buf).expect("put");
    }
    fn recv(&mut self) -> u64 {
        seq_of(&self.q.get().expect("get"))
    }
}

/// Messages per `put_many` / most per `get_many` in the batched group.
const BATCH: usize = 64;

/// The 64 B queue driven in batches: `put_many` of [`BATCH`] messages, `get_many` of up to as many.
struct QueueBatch {
    q: Queue<Small, Raw>,
    bufs: Vec<Small>,
    out: Vec<Small>,
}

impl Channel for QueueBatch {
    fn batch(&self) -> u64 {
        BATCH as u64
    }
    fn send(&mut self, i: u64) {
        self.send_range(i, i + 1);
    }
    fn recv(&mut self) -> u64 {
        self.out.clear();
        self.q.get_many(&mut self.out, 1).expect("get_many");
        seq_of(&self.out[0])
    }
    fn send_range(&mut self, from: u64, to: u64) {
        let mut i = from;
        while i < to {
            let k = (to - i).min(BATCH as u64) as usize;
            for (j, buf) in self.bufs[..k].iter_mut().enumerate() {
                stamp(buf, i + j as u64);
            }
            let put = self.q.put_many(&self.bufs[..k]).expect("put_many");
            assert_eq!(put, k);
            i += k as u64;
        }
    }
    fn recv_range(&mut self, from: u64, to: u64) {
        let mut next = from;
        while next < to {
            self.out.clear();
            let max = (to - next).min(BATCH as u64) as usize;
            let n = self.q.get_many(&mut self.out, max).expect("get_many");
            assert_eq!(n, self.out.len());
            for m in &self.out {
                assert_eq!(seq_of(m), next, "message out of order or lost");
                next += 1;
            }
        }
    }
}

struct QueueBig {
    q: Queue<Big, Raw>,
    buf: Box<Big>,
}

impl Channel for QueueBig {
    fn send(&mut self, i: u64) {
        stamp(bytemuck::bytes_of_mut(&mut *self.buf), i);
        self.q.put(&self.buf).expect("put");
    }
    fn recv(&mut self) -> u64 {
        let m: Big = self.q.get().expect("get");
        seq_of(bytemuck::bytes_of(&m))
    }
}

struct QueueVec {
    q: Queue<Vec<u8>, RawSlice<u8>>,
    buf: Vec<u8>,
}

impl Channel for QueueVec {
    fn send(&mut self, i: u64) {
        stamp(&mut self.buf, i);
        self.q.put(&self.buf).expect("put");
    }
    fn recv(&mut self) -> u64 {
        let m = self.q.get().expect("get");
        assert_eq!(m.len(), self.buf.len());
        seq_of(&m)
    }
}

/// A byte stream (pipe or socket): whole messages written with `write_all`, read with `read_exact`
/// (a read-until-full loop), into one reused buffer.
struct Stream<R, W> {
    r: R,
    w: W,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> Channel for Stream<R, W> {
    fn send(&mut self, i: u64) {
        stamp(&mut self.buf, i);
        self.w.write_all(&self.buf).expect("write");
    }
    fn recv(&mut self) -> u64 {
        self.r.read_exact(&mut self.buf).expect("read");
        seq_of(&self.buf)
    }
}

fn pipe_channel(size: usize, pipe_buf: Option<usize>) -> Stream<File, File> {
    let (r, w) = os::pipe();
    if let Some(b) = pipe_buf {
        os::set_pipe_size(&w, b);
    }
    Stream {
        r,
        w,
        buf: vec![0; size],
    }
}

fn socket_channel(size: usize) -> Stream<UnixStream, UnixStream> {
    let (a, b) = UnixStream::pair().expect("socketpair");
    Stream {
        r: a,
        w: b,
        buf: vec![0; size],
    }
}

/// Messages per second from a child producing `n` messages to this process, first to last message.
fn throughput_once(ch: &mut dyn Channel, n: u64) -> f64 {
    let child = os::fork(|| {
        os::pin_child();
        ch.send_range(0, n);
    });
    ch.recv_range(0, 1);
    let t = Instant::now();
    ch.recv_range(1, n);
    let secs = t.elapsed().as_secs_f64();
    assert!(child.wait(), "producer failed");
    (n - 1) as f64 / secs
}

/// The ceiling of a ring of 64 B messages between the two CPUs this bench uses: crossbeam's
/// `ArrayQueue` (a bounded in-process queue, 1024 slots like ours) between two threads of this process,
/// pinned as the producer and consumer processes are, both spinning. It has no claim records, no
/// recovery from a killed peer and no sleeping: what cache-line transfers alone allow on this machine.
/// Messages per second, first to last message, as in [`throughput_once`].
fn threads_ring_once(n: u64) -> f64 {
    let q = crossbeam_queue::ArrayQueue::<Small>::new(SMALL_SLOTS);
    std::thread::scope(|s| {
        s.spawn(|| {
            os::pin_child();
            let mut m: Small = [0; SMALL];
            for i in 0..n {
                stamp(&mut m, i);
                while q.push(m).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let next = |i: u64| loop {
            if let Some(m) = q.pop() {
                assert_eq!(seq_of(&m), i, "message out of order or lost");
                return;
            }
            std::hint::spin_loop();
        };
        next(0);
        let t = Instant::now();
        for i in 1..n {
            next(i);
        }
        (n - 1) as f64 / t.elapsed().as_secs_f64()
    })
}

/// Warms every channel up, then times them in round-robin; messages/s per channel.
fn throughput(cfg: &Config, n: u64, chans: &mut [(&str, Box<dyn Channel>)]) -> Vec<Stats> {
    for (_, ch) in chans.iter_mut() {
        throughput_once(&mut **ch, n / 10 + 2);
    }
    common::round_robin(cfg.reps, chans, |_, (_, ch)| throughput_once(&mut **ch, n))
}

fn print_throughput(label: &str, size: usize, names: &[&str], stats: &[Stats], pipe: usize) {
    println!();
    println!("throughput, {label} messages, one producer process -> one consumer process");
    println!(
        "  {:<46} {:>12} {:>9} {:>19} {:>9}",
        "transport", "msgs/s", "GB/s", "min..max msgs/s", "vs pipe"
    );
    for (name, s) in names.iter().zip(stats) {
        println!(
            "  {:<46} {:>10.3} M {:>9.3} {:>8.3}..{:<8.3}M  {:>7.2}x",
            name,
            s.median / 1e6,
            s.median * size as f64 / 1e9,
            s.min / 1e6,
            s.max / 1e6,
            s.median / stats[pipe].median
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Round trips

/// Two one-way channels for a ping-pong: the parent sends and waits for the echo.
trait PingPong {
    /// Parent: sends `i` and returns the echoed sequence number.
    fn ping(&mut self, i: u64) -> u64;
    /// Child: receives one message and sends it back.
    fn pong(&mut self);
}

struct QueuePingPong {
    there: Queue<Small, Raw>,
    back: Queue<Small, Raw>,
    buf: Small,
}

impl PingPong for QueuePingPong {
    fn ping(&mut self, i: u64) -> u64 {
        stamp(&mut self.buf, i);
        self.there.put(&self.buf).expect("put");
        seq_of(&self.back.get().expect("get"))
    }
    fn pong(&mut self) {
        let m = self.there.get().expect("get");
        self.back.put(&m).expect("put");
    }
}

struct PipePingPong {
    there: (File, File),
    back: (File, File),
    buf: Small,
}

impl PingPong for PipePingPong {
    fn ping(&mut self, i: u64) -> u64 {
        stamp(&mut self.buf, i);
        self.there.1.write_all(&self.buf).expect("write");
        self.back.0.read_exact(&mut self.buf).expect("read");
        seq_of(&self.buf)
    }
    fn pong(&mut self) {
        self.there.0.read_exact(&mut self.buf).expect("read");
        self.back.1.write_all(&self.buf).expect("write");
    }
}

/// The floor of a round trip between the two CPUs this bench uses: two cache lines of a shared mapping,
/// one per direction, each side spinning on the line the other writes. A round trip is two line
/// transfers and nothing else: no slots, no claims, no copies, no sleeping, no recovery. The ratio of the
/// queue's round trip to this one travels between machines better than either figure does, since both
/// move with how far apart the host runs the two vCPUs.
struct SpinPingPong {
    lines: os::SharedLines,
    /// The last token sent (parent) or echoed (child); the child's copy is the parent's at the fork, so
    /// both agree on which token is new.
    token: u64,
}

impl PingPong for SpinPingPong {
    fn ping(&mut self, i: u64) -> u64 {
        self.token += 1;
        let [there, back] = self.lines.get();
        there.store(self.token, Ordering::Release);
        while back.load(Ordering::Acquire) != self.token {
            std::hint::spin_loop();
        }
        i
    }
    fn pong(&mut self) {
        let [there, back] = self.lines.get();
        let token = loop {
            let t = there.load(Ordering::Acquire);
            if t != self.token {
                break t;
            }
            std::hint::spin_loop();
        };
        self.token = token;
        back.store(token, Ordering::Release);
    }
}

/// (p50, p99, max) of `n` timed round trips in ns, after `warm` untimed ones.
fn rtt_once(pp: &mut dyn PingPong, warm: usize, n: usize) -> (f64, f64, f64) {
    let child = os::fork(|| {
        os::pin_child();
        for _ in 0..warm + n {
            pp.pong();
        }
    });
    let mut ns = Vec::with_capacity(n);
    for i in 0..(warm + n) as u64 {
        let t = Instant::now();
        let s = pp.ping(i);
        let dt = t.elapsed().as_nanos() as u64;
        assert_eq!(s, i, "echo out of order");
        if i as usize >= warm {
            ns.push(dt);
        }
    }
    assert!(child.wait(), "echoer failed");
    ns.sort_unstable();
    let pct = |p: usize| ns[(ns.len() * p / 100).min(ns.len() - 1)] as f64;
    (pct(50), pct(99), ns[ns.len() - 1] as f64)
}

/// Per ping-pong: (p50, p99, max) stats over the repetitions, interleaved.
fn rtt(cfg: &Config, pps: &mut [(&str, usize, Box<dyn PingPong>)]) -> Vec<[Stats; 3]> {
    let mut samples = vec![[vec![], vec![], vec![]]; pps.len()];
    for _ in 0..cfg.reps {
        for (i, (_, n, pp)) in pps.iter_mut().enumerate() {
            let (p50, p99, max) = rtt_once(&mut **pp, cfg.rtt_warm, *n);
            samples[i][0].push(p50);
            samples[i][1].push(p99);
            samples[i][2].push(max);
        }
    }
    samples
        .into_iter()
        .map(|[a, b, c]| [Stats::of(a), Stats::of(b), Stats::of(c)])
        .collect()
}

/// Median ns of one `Instant::now()`.
fn clock_cost() -> f64 {
    let mut v = Vec::with_capacity(21);
    for _ in 0..21 {
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(Instant::now());
        }
        v.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    Stats::of(v).median
}

// ---------------------------------------------------------------------------------------------------------
// Floors: the same operations with no second process (no cache line crosses cores, nobody waits).

/// ns per message sent and received back-to-back by this one process.
fn floor_once(ch: &mut dyn Channel, n: u64) -> f64 {
    let k = ch.batch();
    let t = Instant::now();
    for i in (0..n).step_by(k as usize) {
        let end = (i + k).min(n);
        ch.send_range(i, end);
        ch.recv_range(i, end);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Warms up, then times every channel in round-robin; ns per message.
fn floors(cfg: &Config, chans: &mut [(&str, u64, Box<dyn Channel>)]) -> Vec<Stats> {
    for (_, n, ch) in chans.iter_mut() {
        floor_once(&mut **ch, *n / 10 + 1);
    }
    common::round_robin(cfg.reps, chans, |_, (_, n, ch)| floor_once(&mut **ch, *n))
}

fn main() {
    let cfg = Config::from_env();
    let cpus = os::pin_parent();
    let placement = match cpus {
        Some((p, c)) => format!("parent pinned to CPU {p}, child to CPU {c}"),
        None => "not pinned (MPROC_BENCH_NO_PIN)".to_string(),
    };
    println!(
        "mproc queue bench{}: {} repetitions per figure (median, min..max); {placement}",
        if cfg.quick { " (quick)" } else { "" },
        cfg.reps,
    );

    // ---- 64 B ----
    let mut small: Vec<(&str, Box<dyn Channel>)> = vec![
        (
            "mproc::Queue<[u8; 64], Raw> (1024 slots)",
            Box::new(QueueSmall {
                q: Queue::new(SMALL_SLOTS).expect("queue"),
                buf: [0; SMALL],
            }),
        ),
        ("pipe (64 KiB buffer)", Box::new(pipe_channel(SMALL, None))),
        ("unix stream socket pair", Box::new(socket_channel(SMALL))),
    ];
    let small_stats = throughput(&cfg, cfg.small_msgs, &mut small);
    let names: Vec<&str> = small.iter().map(|c| c.0).collect();
    print_throughput(
        &format!("64 B ({} per run)", cfg.small_msgs),
        SMALL,
        &names,
        &small_stats,
        1,
    );
    drop(small);
    threads_ring_once(cfg.small_msgs / 10 + 2);
    let ring_ceiling = Stats::of(
        (0..cfg.reps)
            .map(|_| threads_ring_once(cfg.small_msgs))
            .collect(),
    );
    println!(
        "  ceiling: crossbeam ArrayQueue<[u8; 64]>, two threads on the same two CPUs, spinning: {:.3} M \
         msgs/s ({:.3}..{:.3}); the queue moves {:.2} of it",
        ring_ceiling.median / 1e6,
        ring_ceiling.min / 1e6,
        ring_ceiling.max / 1e6,
        small_stats[0].median / ring_ceiling.median
    );

    // ---- 64 B in batches ----
    let mut batched: Vec<(&str, Box<dyn Channel>)> = vec![
        (
            "mproc::Queue put_many/get_many, 64 a batch",
            Box::new(QueueBatch {
                q: Queue::new(SMALL_SLOTS).expect("queue"),
                bufs: vec![[0; SMALL]; BATCH],
                out: Vec::with_capacity(BATCH),
            }),
        ),
        (
            "pipe (64 KiB buffer), one write per message",
            Box::new(pipe_channel(SMALL, None)),
        ),
    ];
    let batch_stats = throughput(&cfg, cfg.small_msgs, &mut batched);
    let names: Vec<&str> = batched.iter().map(|c| c.0).collect();
    print_throughput(
        &format!("64 B in batches ({} per run)", cfg.small_msgs),
        SMALL,
        &names,
        &batch_stats,
        1,
    );
    drop(batched);

    // ---- 64 KiB ----
    let mut big: Vec<(&str, Box<dyn Channel>)> = vec![
        (
            "mproc::Queue<[[u8; 4096]; 16], Raw> (8 slots)",
            Box::new(QueueBig {
                q: Queue::new(BIG_SLOTS).expect("queue"),
                buf: Box::new([[0; 4096]; 16]),
            }),
        ),
        (
            "mproc::Queue<Vec<u8>, RawSlice<u8>> (8 slots)",
            Box::new(QueueVec {
                q: Queue::with_max_message(BIG_SLOTS, BIG).expect("queue"),
                buf: vec![0; BIG],
            }),
        ),
        ("pipe (64 KiB buffer)", Box::new(pipe_channel(BIG, None))),
        (
            "pipe (512 KiB buffer, F_SETPIPE_SZ)",
            Box::new(pipe_channel(BIG, Some(BIG_SLOTS * BIG))),
        ),
        ("unix stream socket pair", Box::new(socket_channel(BIG))),
    ];
    let big_stats = throughput(&cfg, cfg.big_msgs, &mut big);
    let names: Vec<&str> = big.iter().map(|c| c.0).collect();
    print_throughput(
        &format!("64 KiB ({} per run)", cfg.big_msgs),
        BIG,
        &names,
        &big_stats,
        2,
    );
    drop(big);

    // ---- round trips ----
    let clock = clock_cost();
    let mut pps: Vec<(&str, usize, Box<dyn PingPong>)> = vec![
        (
            "mproc::Queue<[u8; 64], Raw> x2 (spinning)",
            cfg.rtt_queue,
            Box::new(QueuePingPong {
                there: Queue::new(16).expect("queue"),
                back: Queue::new(16).expect("queue"),
                buf: [0; SMALL],
            }),
        ),
        (
            "floor: one cache line each way, spinning",
            cfg.rtt_queue,
            Box::new(SpinPingPong {
                lines: os::SharedLines::new(),
                token: 0,
            }),
        ),
        (
            "pipe x2 (sleeping in read)",
            cfg.rtt_pipe,
            Box::new(PipePingPong {
                there: os::pipe(),
                back: os::pipe(),
                buf: [0; SMALL],
            }),
        ),
    ];
    let rtt_stats = rtt(&cfg, &mut pps);
    println!();
    println!("round trip of a 64 B message (ping-pong between two processes; one clock read = {clock:.0} ns is in each sample)");
    println!(
        "  {:<46} {:>10} {:>10} {:>10} {:>19} {:>12}",
        "transport", "round trips", "p50 ns", "p99 ns", "min..max p50 ns", "max ns"
    );
    for ((name, n, _), [p50, p99, max]) in pps.iter().zip(&rtt_stats) {
        println!(
            "  {:<46} {:>10} {:>10.0} {:>10.0} {:>9.0}..{:<9.0} {:>12.0}",
            name, n, p50.median, p99.median, p50.min, p50.max, max.median
        );
    }
    drop(pps);

    // ---- floors ----
    let (fs, fb) = if cfg.quick {
        (200_000, 2_000)
    } else {
        (2_000_000, 20_000)
    };
    let mut fl: Vec<(&str, u64, Box<dyn Channel>)> = vec![
        (
            "64 B   mproc::Queue<[u8; 64], Raw>",
            fs,
            Box::new(QueueSmall {
                q: Queue::new(SMALL_SLOTS).expect("queue"),
                buf: [0; SMALL],
            }),
        ),
        (
            "64 B   mproc::Queue put_many/get_many of 64",
            fs,
            Box::new(QueueBatch {
                q: Queue::new(SMALL_SLOTS).expect("queue"),
                bufs: vec![[0; SMALL]; BATCH],
                out: Vec::with_capacity(BATCH),
            }),
        ),
        ("64 B   pipe", fs / 10, Box::new(pipe_channel(SMALL, None))),
        (
            "64 KiB mproc::Queue<[[u8; 4096]; 16], Raw>",
            fb,
            Box::new(QueueBig {
                q: Queue::new(BIG_SLOTS).expect("queue"),
                buf: Box::new([[0; 4096]; 16]),
            }),
        ),
        (
            "64 KiB mproc::Queue<Vec<u8>, RawSlice<u8>>",
            fb,
            Box::new(QueueVec {
                q: Queue::with_max_message(BIG_SLOTS, BIG).expect("queue"),
                buf: vec![0; BIG],
            }),
        ),
        ("64 KiB pipe", fb, Box::new(pipe_channel(BIG, None))),
    ];
    let floor_stats = floors(&cfg, &mut fl);
    println!();
    println!("floors: a message sent and received back-to-back by one process (no second core, nobody waits)");
    for ((name, _, _), s) in fl.iter().zip(&floor_stats) {
        println!(
            "  {:<46} {:>10.1} ns/msg  ({:.1}..{:.1})",
            name, s.median, s.min, s.max
        );
    }
    drop(fl);

    // ---- headline ----
    println!();
    let ratio = |s: &[Stats], a: usize, b: usize| s[a].median / s[b].median;
    common::result("queue_vs_pipe_64B", ratio(&small_stats, 0, 1), 2, "x");
    common::result("queue_vs_pipe_64KiB", ratio(&big_stats, 1, 2), 2, "x");
    common::result("queue_rtt_p50_ns", rtt_stats[0][0].median, 0, "ns");
    common::result("queue_rtt_p99_ns", rtt_stats[0][1].median, 0, "ns");
    common::result("spin_rtt_p50_ns", rtt_stats[1][0].median, 0, "ns");
    common::result(
        "queue_rtt_vs_spin_rtt",
        rtt_stats[0][0].median / rtt_stats[1][0].median,
        2,
        "x",
    );
    common::result("pipe_rtt_p50_ns", rtt_stats[2][0].median, 0, "ns");
    common::result(
        "queue_vs_unix_socket_64B",
        ratio(&small_stats, 0, 2),
        2,
        "x",
    );
    common::result(
        "queue_vs_unix_socket_64KiB",
        ratio(&big_stats, 0, 4),
        2,
        "x",
    );
    common::result("queue_array_vs_pipe_64KiB", ratio(&big_stats, 0, 2), 2, "x");
    common::result("queue_vs_pipe512k_64KiB", ratio(&big_stats, 0, 3), 2, "x");
    common::result(
        "queue_msgs_per_s_64B",
        small_stats[0].median / 1e6,
        2,
        "M/s",
    );
    common::result("pipe_msgs_per_s_64B", small_stats[1].median / 1e6, 2, "M/s");
    common::result(
        "threads_ring_msgs_per_s_64B",
        ring_ceiling.median / 1e6,
        2,
        "M/s",
    );
    common::result(
        "queue_vs_threads_ring_64B",
        small_stats[0].median / ring_ceiling.median,
        2,
        "x",
    );
    common::result(
        "queue_gb_per_s_64KiB",
        big_stats[0].median * BIG as f64 / 1e9,
        2,
        "GB/s",
    );
    common::result(
        "queue_put_get_same_process_ns",
        floor_stats[0].median,
        1,
        "ns",
    );
    common::result(
        "queue_batch_put_get_same_process_ns",
        floor_stats[1].median,
        1,
        "ns",
    );
    common::result(
        "queue_batch_msgs_per_s_64B",
        batch_stats[0].median / 1e6,
        2,
        "M/s",
    );
    common::result("queue_batch_vs_pipe_64B", ratio(&batch_stats, 0, 1), 2, "x");
}

/// The unsafe code of this bench beyond `common::os` (fork, pipes), which it re-exports: CPU affinity.
mod os {
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    pub use crate::common::os::{fork, pipe, set_pipe_size};

    /// The CPU forked children pin themselves to (the second one this process may run on).
    static CHILD_CPU: AtomicUsize = AtomicUsize::new(0);
    static CHILD_PINNED: AtomicBool = AtomicBool::new(false);

    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live cpu_set_t and the size passed is its size; pid 0 = this thread.
        let r =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(
            r,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: CPU_ISSET reads a bit of `set`; every index below CPU_SETSIZE is inside it.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    fn pin(cpu: usize) {
        // SAFETY: as in `allowed_cpus`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes a bit of `set`; `cpu` came from CPU_ISSET, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 = the calling thread.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Pins the calling (main, only) thread to the first allowed CPU and picks the child's CPU; on a
    /// one-CPU machine both share it.
    pub fn pin_parent() -> Option<(usize, usize)> {
        if std::env::var("MPROC_BENCH_NO_PIN").is_ok_and(|v| !v.is_empty() && v != "0") {
            return None;
        }
        let cpus = allowed_cpus();
        let pair = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));
        CHILD_CPU.store(pair.1, Ordering::Relaxed);
        CHILD_PINNED.store(true, Ordering::Relaxed);
        pin(pair.0);
        Some(pair)
    }

    /// Two 128-byte-aligned atomic words in a page of shared anonymous memory, so a forked child
    /// writes the same lines as its parent. 128 bytes apart: adjacent-line prefetch pairs 64 B lines.
    pub struct SharedLines(NonNull<[Line; 2]>);

    #[repr(C, align(128))]
    pub struct Line(AtomicU64);

    impl SharedLines {
        pub fn new() -> SharedLines {
            const LEN: usize = std::mem::size_of::<[Line; 2]>();
            // SAFETY: a new anonymous mapping, no address hint, no fd: touches no existing memory.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            // Zero-filled pages are two `AtomicU64`s holding 0, suitably aligned (page-aligned).
            SharedLines(NonNull::new(p.cast()).expect("mmap returned null"))
        }

        pub fn get(&self) -> [&AtomicU64; 2] {
            // SAFETY: the mapping lives until `drop`, holds two initialised `Line`s (zero bytes are a
            // valid `AtomicU64`), and is only ever accessed through atomics, by any process.
            let lines = unsafe { self.0.as_ref() };
            [&lines[0].0, &lines[1].0]
        }
    }

    impl Drop for SharedLines {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, of that length; no reference from `get` outlives `self`.
            unsafe { libc::munmap(self.0.as_ptr().cast(), std::mem::size_of::<[Line; 2]>()) };
        }
    }

    /// Pins a forked child to the second CPU.
    pub fn pin_child() {
        if CHILD_PINNED.load(Ordering::Relaxed) {
            pin(CHILD_CPU.load(Ordering::Relaxed));
        }
    }
}
