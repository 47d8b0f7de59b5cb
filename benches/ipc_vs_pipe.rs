//! The crate's headline benchmark: handing an `f64` array to a warm worker process, by offset in shared
//! memory against the ordinary way (a pipe), in one run: `cargo bench --bench ipc_vs_pipe`.
//!
//! Arrays of 4 KiB, 1 MiB, 64 MiB and 256 MiB go to a worker that is already running and has already
//! served a task, in two tasks: *deliver* (the worker answers the first and last elements: the cost is
//! getting the data there) and *sum* (the worker answers the sum: the cost includes reading it all).
//! The other direction is the last task of each size, *answer*: the worker returns a new `Vec<f64>` of
//! that size (`make_answer`: filled with one value, which the pool's worker and the pipe child alike
//! pay for on every call), and the cost is getting it back to the caller as a `Vec<f64>` of its own.
//!
//! | column | how the array gets to the worker |
//! |---|---|
//! | (a) pipe + serde | a forked child reads a length-prefixed postcard `Vec<f64>` from a pipe, deserializes it, answers on a second pipe |
//! | (b) pipe, raw bytes | the same child reads the bytes straight into its `[f64]` buffer (`bytemuck`, no serde) |
//! | (c) pool, by offset | `Pool::map_chunks` over a `SharedArray` filled beforehand, one chunk = the whole array |
//! | (d) pool, from a `Vec` | `SharedArray::from_slice(&vec)` (one copy in) + the same `map_chunks`; the array is dropped each time, so its block is reused |
//! | (e) in process | the same function called on the `Vec` in this process: no IPC at all, the floor |
//! | (f) pool.map of a `Vec` | `Pool::map(f, [&vec])` with `f: fn(Vec<f64>) -> …`: the user's first try, with no change to their code; a large argument is encoded straight into a shared block the worker decodes in place, and a `Vec` of numbers travels as its bytes (one copy in, one out), not element by element |
//! | (a') pipe + serde, kept memory | as (a), with a second forked child that keeps the memory it frees, as pool workers do: the baseline of (f) |
//!
//! | answer column | how the `Vec<f64>` gets back from the worker |
//! |---|---|
//! | (r') pipe + serde, kept memory | the child of (a') makes the `Vec`, serializes it with postcard into its reused buffer and writes it, length first, to the answer pipe; this process reads it into its reused buffer and deserializes a new `Vec<f64>`: the baseline of (r), and the first column of the row (its speed-ups are against it) |
//! | (r) pool.apply returning a Vec | `pool.apply(make_answer, n)`: the worker encodes the large answer (its bytes) straight into a block of its own heap, of which only the handle crosses the result ring; the caller decodes its `Vec` from the block in place |
//!
//! The pipes are given 1 MiB buffers (`F_SETPIPE_SZ`, the unprivileged maximum) and both pipe columns
//! reuse their buffers on both sides, so the baseline pays no page faults for fresh buffers; only the
//! `Vec<f64>` that deserialization must produce is new each time, as it is for any serde user. The
//! worker of (c)/(d) is a pool of one worker, the same process for every call. Pool workers keep the
//! memory their tasks free (`PoolBuilder::retain_worker_memory`, on by default), so the `Vec` a worker
//! decodes for (f) is made of pages already mapped. (a) is the ordinary way, with the allocator as it
//! comes; (a') is the same pipe child with the workers' allocator setting, and is what (f) is compared
//! with (`pool_map_vec_64MiB_vs_pipe_serde`): that ratio compares the transports, not the settings.
//! (r') uses that child too, so `pool_answer_vec_64MiB_vs_pipe_serde` (time of (r') / time of (r)) is
//! the same comparison in the answer's direction; `pool_answer_vec_64MiB_ms` is (r)'s time. Both columns
//! check every answer's length, middle element and ends.
//!
//! Timing, for a noisy 2-vCPU VM: each column is warmed up (which also calibrates how many calls one
//! sample batches: ~20 ms worth, at least one), then the columns are sampled in round-robin so that a
//! slow period hits all of them alike; a figure is the median time per call over the samples, with
//! min..max. Every answer is checked against the in-process one. `MPROC_BENCH_QUICK=1` runs three
//! sizes with fewer samples. A second part times the pool's round trip in pieces (see "round trip").
//! A third part sums one 64 MiB `SharedArray` four ways, sampled in round-robin in the same run with
//! more samples than the table: in this process on one core, by the pool of one worker
//! (`pool_sum_vs_local_64MiB`: what the hand-off costs), by a pool of *two* workers (`map_chunks`, one
//! half each: `pool2_sum_vs_local_64MiB`), and by two threads of this process, one half each, its
//! ceiling (`threads2_sum_vs_local_64MiB`: what two cores' memory bandwidth gives over one on this
//! machine; `pool2_sum_vs_threads2_64MiB`: how much of it the pool gets). All four read the same
//! memory: two 64 MiB buffers of one process, summed in round-robin, ran up to 10 % apart here, an
//! effect of where the VM put their pages that a comparison of two buffers would count as IPC. A
//! fifth column sums the `Vec` the array was copied from, in this process, and
//! `local_shared_vs_vec_sum_64MiB` prints how the two buffers compared in this run (above 1: the
//! `SharedArray` summed faster), so a machine where shared memory is slower to read (say, ordinary
//! memory on transparent huge pages and shared memory not) shows it. The table's (c) and (e) columns
//! still print the pool and the `Vec` at the table's few samples; the result lines come from here.
//! The last lines are `result: NAME VALUE UNIT` (see DESIGN.md, "The benchmark contract").

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mproc::{Pool, SharedArray};

#[path = "common/mod.rs"]
mod common;

use common::Stats;

// ---------------------------------------------------------------------------------------------------
// The two tasks, the same code in every column.

/// The first and last elements.
fn deliver(a: &[f64]) -> (f64, f64) {
    (
        a.first().copied().unwrap_or(f64::NAN),
        a.last().copied().unwrap_or(f64::NAN),
    )
}

/// The sum, with eight accumulators so that it runs at memory speed rather than at one dependent add
/// per element.
fn sum(a: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f64>() + rest.iter().sum::<f64>()
}

/// The answer of the *answer* rows: `n` elements, all 1.5 but the last, which is `n` (so that a short or
/// shifted answer shows). The same code in the pool's worker and the pipe child: a fill, no more.
fn make_answer(n: usize) -> Vec<f64> {
    let mut v = vec![1.5f64; n];
    if let Some(last) = v.last_mut() {
        *last = n as f64;
    }
    v
}

/// Checks an answer of `make_answer(n)` as received (length and middle element) and returns its ends,
/// `[1.5, n]` when it is right.
fn check_answer(v: &[f64], n: usize) -> [f64; 2] {
    assert_eq!(v.len(), n, "an answer of the wrong length");
    assert_eq!(v[n / 2], 1.5, "an answer with a wrong middle element");
    deliver(v).into()
}

fn noop(x: u32) -> u32 {
    x
}

/// When the worker ran the task: CLOCK_MONOTONIC, which every process on the host shares.
fn stamp(_: u32) -> u64 {
    os::monotonic_ns()
}

/// The sum, and when the worker started and ended it (CLOCK_MONOTONIC, ns).
fn stamped_sum(a: &[f64]) -> (f64, u64, u64) {
    let t = os::monotonic_ns();
    let s = sum(a);
    (s, t, os::monotonic_ns())
}

/// The sum and how long it took inside the worker, in ns.
fn timed_sum(a: &[f64]) -> (f64, u64) {
    let t = Instant::now();
    let s = sum(a);
    (s, t.elapsed().as_nanos() as u64)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Task {
    Deliver,
    Sum,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Deliver => "deliver",
            Task::Sum => "sum",
        }
    }

    fn code(self) -> u8 {
        match self {
            Task::Deliver => 1,
            Task::Sum => 2,
        }
    }

    /// The answer as two numbers, whatever the task.
    fn run(self, a: &[f64]) -> [f64; 2] {
        match self {
            Task::Deliver => {
                let (x, y) = deliver(a);
                [x, y]
            }
            Task::Sum => [sum(a), 0.0],
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The pipe baseline: one forked child serving both pipe columns.

const MODE_QUIT: u8 = 0;
const MODE_SERDE: u8 = 1;
const MODE_RAW: u8 = 2;
/// Asks for `make_answer(n)`, `n` in the header's length field; no payload. The child answers the
/// postcard bytes' length (u64 LE), then the bytes.
const MODE_ANSWER: u8 = 3;
/// Request header: mode, task, 6 bytes of padding, the payload length (u64 LE).
const HEAD: usize = 16;
const PIPE_BUF: usize = 1 << 20;

/// The child's loop: read a request, decode it, run the task, answer 16 bytes (or, for `MODE_ANSWER`,
/// a serialized `Vec<f64>`).
fn serve(mut req: File, mut rep: File) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut raw: Vec<f64> = Vec::new();
    // The serialized answer of `MODE_ANSWER`, reused.
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut h = [0u8; HEAD];
        if req.read_exact(&mut h).is_err() {
            return;
        }
        let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")) as usize;
        let task = if h[1] == Task::Deliver.code() {
            Task::Deliver
        } else {
            Task::Sum
        };
        let answer = match h[0] {
            MODE_SERDE => {
                if bytes.len() < len {
                    bytes.resize(len, 0);
                }
                req.read_exact(&mut bytes[..len]).expect("read a request");
                let v: Vec<f64> = postcard::from_bytes(&bytes[..len]).expect("deserialize");
                task.run(&v)
            }
            MODE_RAW => {
                let n = len / 8;
                if raw.len() < n {
                    raw.resize(n, 0.0);
                }
                req.read_exact(bytemuck::cast_slice_mut(&mut raw[..n]))
                    .expect("read a request");
                task.run(&raw[..n])
            }
            MODE_ANSWER => {
                let v = make_answer(len);
                out.clear();
                out = postcard::to_extend(&v, std::mem::take(&mut out)).expect("serialize");
                drop(v);
                rep.write_all(&(out.len() as u64).to_le_bytes())
                    .expect("write an answer's length");
                rep.write_all(&out).expect("write an answer");
                continue;
            }
            _ => return,
        };
        rep.write_all(bytemuck::cast_slice(&answer))
            .expect("write an answer");
    }
}

struct PipeServer {
    req: File,
    rep: File,
    child: Option<os::Child>,
    /// The serialized request, reused.
    buf: Vec<u8>,
    /// The serialized answer of `answer_vec`, reused.
    back: Vec<u8>,
}

impl PipeServer {
    /// Forks the server; `keep_memory`: with the allocator setting of the pool's workers. Call while this
    /// process is single-threaded (before the pool exists).
    fn start(keep_memory: bool) -> PipeServer {
        let (req_r, req_w) = os::pipe();
        let (rep_r, rep_w) = os::pipe();
        for end in [&req_w, &rep_w] {
            os::set_pipe_size(end, PIPE_BUF);
        }
        let child = os::fork(move || {
            if keep_memory {
                os::retain_freed_memory();
            }
            serve(req_r, rep_w)
        });
        PipeServer {
            req: req_w,
            rep: rep_r,
            child: Some(child),
            buf: Vec::new(),
            back: Vec::new(),
        }
    }

    fn header(mode: u8, task: Task, len: usize) -> [u8; HEAD] {
        let mut h = [0u8; HEAD];
        h[0] = mode;
        h[1] = task.code();
        h[8..16].copy_from_slice(&(len as u64).to_le_bytes());
        h
    }

    fn answer(&mut self) -> [f64; 2] {
        let mut a = [0.0f64; 2];
        self.rep
            .read_exact(bytemuck::cast_slice_mut(&mut a))
            .expect("read the answer");
        a
    }

    /// (a): serialize, write, (the child reads, deserializes, runs), read the answer.
    fn serde(&mut self, task: Task, v: &[f64]) -> [f64; 2] {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let buf = postcard::to_extend(&v, buf).expect("serialize");
        self.req
            .write_all(&Self::header(MODE_SERDE, task, buf.len()))
            .expect("write");
        self.req.write_all(&buf).expect("write");
        self.buf = buf;
        self.answer()
    }

    /// (r'): asks the child for `make_answer(n)`, reads its postcard bytes into the reused buffer and
    /// deserializes them into a new `Vec`.
    fn answer_vec(&mut self, n: usize) -> Vec<f64> {
        self.req
            .write_all(&Self::header(MODE_ANSWER, Task::Deliver, n))
            .expect("write");
        let mut len = [0u8; 8];
        self.rep
            .read_exact(&mut len)
            .expect("read the answer's length");
        let len = u64::from_le_bytes(len) as usize;
        if self.back.len() < len {
            self.back.resize(len, 0);
        }
        self.rep
            .read_exact(&mut self.back[..len])
            .expect("read the answer");
        postcard::from_bytes(&self.back[..len]).expect("deserialize the answer")
    }

    /// (b): the bytes of the slice as they are.
    fn raw(&mut self, task: Task, v: &[f64]) -> [f64; 2] {
        let bytes: &[u8] = bytemuck::cast_slice(v);
        self.req
            .write_all(&Self::header(MODE_RAW, task, bytes.len()))
            .expect("write");
        self.req.write_all(bytes).expect("write");
        self.answer()
    }
}

impl Drop for PipeServer {
    fn drop(&mut self) {
        let _ = self.req.write_all(&Self::header(MODE_QUIT, Task::Sum, 0));
        if let Some(c) = self.child.take() {
            if !std::thread::panicking() {
                assert!(c.wait(), "the pipe server failed");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The pool columns.

fn pool_offset(pool: &Pool, task: Task, a: &SharedArray<f64>) -> [f64; 2] {
    let len = a.len().max(1);
    match task {
        Task::Deliver => {
            let r = pool.map_chunks(a, len, deliver).expect("map_chunks");
            [r[0].0, r[0].1]
        }
        Task::Sum => [pool.map_chunks(a, len, sum).expect("map_chunks")[0], 0.0],
    }
}

fn deliver_vec(v: Vec<f64>) -> [f64; 2] {
    Task::Deliver.run(&v)
}

fn sum_vec(v: Vec<f64>) -> [f64; 2] {
    Task::Sum.run(&v)
}

/// (f): the whole `Vec` as one `map` item, encoded as the pool encodes it (its bytes).
fn pool_map_vec(pool: &Pool, task: Task, v: &Vec<f64>) -> [f64; 2] {
    let f = match task {
        Task::Deliver => deliver_vec,
        Task::Sum => sum_vec,
    };
    pool.map(f, [v]).expect("map")[0]
}

/// The sum over a pool of two workers: one half each, the two partial sums added here.
fn pool2_sum(pool: &Pool, a: &SharedArray<f64>) -> [f64; 2] {
    let halves = pool
        .map_chunks(a, a.len().div_ceil(2).max(1), sum)
        .expect("map_chunks");
    [halves.iter().sum(), 0.0]
}

fn pool_from_vec(pool: &Pool, task: Task, v: &[f64]) -> [f64; 2] {
    let a = SharedArray::from_slice(v).expect("SharedArray::from_slice");
    let r = pool_offset(pool, task, &a);
    drop(a); // back to the heap: the next call reuses the block
    r
}

// ---------------------------------------------------------------------------------------------------
// Measurement.

fn fmt_time(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.3} s", s)
    }
}

fn fmt_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// One column of one row: a call returning the answer.
type Column<'a> = (&'static str, Box<dyn FnMut() -> [f64; 2] + 'a>);

/// Aim of one sample's duration; short calls are batched up to it.
const SAMPLE: Duration = Duration::from_millis(20);

/// Warms every column up (twice; the second call calibrates the batch), checks its answer, then samples
/// the columns in round-robin. Returns seconds per call, per column.
fn compare(samples: usize, expect: [f64; 2], cols: &mut [Column<'_>]) -> Vec<Stats> {
    let mut batch = Vec::with_capacity(cols.len());
    for (name, call) in cols.iter_mut() {
        assert_eq!(call(), expect, "column {name} answered wrongly");
        let t = Instant::now();
        black_box(call());
        let once = t.elapsed().as_secs_f64().max(1e-7);
        batch.push(((SAMPLE.as_secs_f64() / once) as usize).clamp(1, 5000));
    }
    common::round_robin(samples, cols, |i, (_, call)| {
        let t = Instant::now();
        for _ in 0..batch[i] {
            black_box(call());
        }
        t.elapsed().as_secs_f64() / batch[i] as f64
    })
}

/// Times `f` call by call; returns (p10, p50, p90) in seconds.
fn percentiles(n: usize, gap: Option<Duration>, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..3 {
        f();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[n / 10], v[n / 2], v[n * 9 / 10])
}

/// Round trip of a ping-pong between this thread and another through `Mutex` + `Condvar`: the cost of
/// waking a sleeping thread and being woken back, which the pool pays on its way to the caller.
fn condvar_rtt(n: usize) -> (f64, f64, f64) {
    let state = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new(), Condvar::new()));
    let s2 = state.clone();
    let peer = std::thread::spawn(move || {
        let (m, ping, pong) = &*s2;
        let mut g = m.lock().unwrap();
        loop {
            while g.0 == g.1 {
                g = ping.wait(g).unwrap();
            }
            if g.0 == u64::MAX {
                return;
            }
            g.1 = g.0;
            pong.notify_one();
        }
    });
    let (m, ping, pong) = &*state;
    let r = percentiles(n, None, || {
        let mut g = m.lock().unwrap();
        g.0 += 1;
        ping.notify_one();
        while g.1 != g.0 {
            g = pong.wait(g).unwrap();
        }
    });
    m.lock().unwrap().0 = u64::MAX;
    ping.notify_one();
    peer.join().unwrap();
    r
}

/// The two legs of a pool call, timed with CLOCK_MONOTONIC on both sides: caller → task running in the
/// worker (submit, manager thread, task ring, worker wake-up, decode), and worker → caller (encode, result
/// ring, manager thread, Condvar wake-up of the caller); then a 64 MiB sum, whose time inside the worker
/// is subtracted from the call's.
fn legs(pool: &Pool, n: usize) -> Vec<(&'static str, (f64, f64, f64))> {
    let (mut out, mut back) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 3 {
        let t0 = os::monotonic_ns();
        let tw = pool.apply(stamp, 0).expect("apply");
        let t1 = os::monotonic_ns();
        if i >= 3 {
            out.push(tw.saturating_sub(t0) as f64 * 1e-9);
            back.push(t1.saturating_sub(tw) as f64 * 1e-9);
        }
    }
    let big = SharedArray::<f64>::zeroed(8 << 20).expect("SharedArray");
    let mut extra = Vec::new();
    let calls = (n / 100).max(5);
    for i in 0..calls + 1 {
        let t = Instant::now();
        let r = pool
            .map_chunks(&big, big.len(), timed_sum)
            .expect("map_chunks");
        let call = t.elapsed().as_secs_f64();
        if i > 0 {
            extra.push(call - r[0].1 as f64 * 1e-9);
        }
    }
    let p = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let k = v.len();
        (v[k / 10], v[k / 2], v[k * 9 / 10])
    };
    vec![
        ("  leg 1: caller -> task starts in the worker", p(out)),
        ("  leg 2: task returns -> caller has the result", p(back)),
        (
            "map_chunks(64 MiB, sum): call minus time in worker",
            p(extra),
        ),
    ]
}

struct Config {
    sizes: Vec<usize>,
    samples: fn(usize) -> usize,
    rtt_calls: usize,
}

fn config(quick: bool) -> Config {
    if quick {
        Config {
            sizes: vec![4 << 10, 64 << 20, 256 << 20],
            samples: |_| 3,
            rtt_calls: 200,
        }
    } else {
        Config {
            sizes: vec![4 << 10, 1 << 20, 64 << 20, 256 << 20],
            samples: |bytes| if bytes >= 256 << 20 { 5 } else { 9 },
            rtt_calls: 2000,
        }
    }
}

fn main() {
    let quick = common::quick();
    let cfg = config(quick);
    // Fork the pipe servers first, while this process has one thread and no large allocation.
    let mut pipe = PipeServer::start(false);
    let mut pipe_kept = PipeServer::start(true);
    let pool = Pool::builder().workers(1).build().expect("start the pool");
    pool.apply(noop, 1).expect("warm the worker");

    // Round trip, in pieces: where the time of a small pool call goes. Timed first, before the large
    // arrays: after them (hundreds of MiB allocated, kept or unmapped by this process, the worker and
    // the pipe children) the round trips of this bench and even its in-process thread ping-pong ran
    // 2-3 times slower in most quick runs, with every build tried.
    println!(
        "\nround trip of one pool call (calls timed one by one, {} calls; p10 / p50 / p90)",
        cfg.rtt_calls
    );
    let small = SharedArray::from_slice(&[1.0f64; 512]).expect("SharedArray");
    let n = cfg.rtt_calls;
    let rows: Vec<(&'static str, (f64, f64, f64))> = vec![
        (
            "pool.apply(noop), back to back",
            percentiles(n, None, || {
                black_box(pool.apply(noop, 7).expect("apply"));
            }),
        ),
        (
            "pool.map_chunks(4 KiB, deliver), back to back",
            percentiles(n, None, || {
                black_box(pool_offset(&pool, Task::Deliver, &small));
            }),
        ),
        (
            "pool.apply(noop) after 2 ms idle",
            percentiles(n / 10, Some(Duration::from_millis(2)), || {
                black_box(pool.apply(noop, 7).expect("apply"));
            }),
        ),
        (
            "pipe, raw 8 bytes (two pipes, child asleep in read)",
            percentiles(n, None, || {
                black_box(pipe.raw(Task::Deliver, &[1.0]));
            }),
        ),
        ("thread ping-pong, Mutex + Condvar", condvar_rtt(n)),
    ];
    let legs = legs(&pool, n);
    for (name, (p10, p50, p90)) in rows.iter().chain(&legs) {
        println!(
            "  {:<56} {:>10} {:>10} {:>10}",
            name,
            fmt_time(*p10),
            fmt_time(*p50),
            fmt_time(*p90)
        );
    }

    println!(
        "mproc ipc_vs_pipe{}: f64 arrays to a warm worker (pool of 1 / forked pipe server), median time per call, min..max",
        if quick { " (quick)" } else { "" }
    );
    println!("speed-up = time of (a) / time of the column; (a) pipe + postcard serde is the ordinary way");
    println!(
        "answer rows: the worker returns a Vec<f64> of the size; speed-up = time of (r') pipe + serde / time of the column"
    );

    // (size in bytes, task) → stats of (a), (b), (c), (d), (e), (f), (a').
    let mut table: Vec<(usize, Task, Vec<Stats>)> = Vec::new();
    // (size in bytes) → stats of (r'), (r).
    let mut answers: Vec<(usize, Vec<Stats>)> = Vec::new();
    for &bytes in &cfg.sizes {
        let n = bytes / 8;
        let v: Vec<f64> = (0..n).map(|i| (i % 1024) as f64 * 0.25).collect();
        let shared = SharedArray::from_slice(&v).expect("SharedArray");
        let samples = (cfg.samples)(bytes);
        println!("\n{} ({} f64), {} samples", fmt_size(bytes), n, samples);
        println!(
            "  {:<8} {:<36} {:>11} {:>23} {:>11}",
            "task", "column", "time/call", "min..max", "speed-up"
        );
        for task in [Task::Deliver, Task::Sum] {
            let expect = task.run(&v);
            let pipe_cell = std::cell::RefCell::new(&mut pipe);
            let kept_cell = std::cell::RefCell::new(&mut pipe_kept);
            let mut cols: Vec<Column<'_>> = vec![
                (
                    "(a) pipe + postcard serde",
                    Box::new(|| pipe_cell.borrow_mut().serde(task, &v)),
                ),
                (
                    "(b) pipe, raw bytes",
                    Box::new(|| pipe_cell.borrow_mut().raw(task, &v)),
                ),
                (
                    "(c) pool, by offset",
                    Box::new(|| pool_offset(&pool, task, &shared)),
                ),
                (
                    "(d) pool, from a Vec (one copy in)",
                    Box::new(|| pool_from_vec(&pool, task, &v)),
                ),
                (
                    "(e) in process, no IPC (floor)",
                    Box::new(|| task.run(black_box(&v))),
                ),
                (
                    "(f) pool.map of the Vec",
                    Box::new(|| pool_map_vec(&pool, task, &v)),
                ),
                (
                    "(a') pipe + serde, kept memory",
                    Box::new(|| kept_cell.borrow_mut().serde(task, &v)),
                ),
            ];
            let stats = compare(samples, expect, &mut cols);
            for ((name, _), s) in cols.iter().zip(&stats) {
                println!(
                    "  {:<8} {:<36} {:>11} {:>23} {:>9.1} x",
                    task.name(),
                    name,
                    fmt_time(s.median),
                    format!("{}..{}", fmt_time(s.min), fmt_time(s.max)),
                    stats[0].median / s.median
                );
            }
            table.push((bytes, task, stats));
        }
        // The other direction: a Vec<f64> of this size back from the worker.
        let kept = &mut pipe_kept;
        let mut cols: Vec<Column<'_>> = vec![
            (
                "(r') pipe + serde, kept memory",
                Box::new(|| check_answer(&kept.answer_vec(n), n)),
            ),
            (
                "(r) pool.apply returning a Vec",
                Box::new(|| check_answer(&pool.apply(make_answer, n).expect("apply"), n)),
            ),
        ];
        let stats = compare(samples, [1.5, n as f64], &mut cols);
        for ((name, _), s) in cols.iter().zip(&stats) {
            println!(
                "  {:<8} {:<36} {:>11} {:>23} {:>9.1} x",
                "answer",
                name,
                fmt_time(s.median),
                format!("{}..{}", fmt_time(s.min), fmt_time(s.max)),
                stats[0].median / s.median
            );
        }
        drop(cols);
        answers.push((bytes, stats));
    }

    drop(pipe_kept);

    // One and two workers, and two threads, against one core in this process, on the same 64 MiB.
    let sums = sum_ways(&pool, if quick { 15 } else { 31 });

    let find = |bytes: usize, task: Task| {
        table
            .iter()
            .find(|(b, t, _)| *b == bytes && *t == task)
            .map(|(_, _, s)| s.clone())
            .expect("measured")
    };
    println!();
    for (mib, tag) in [(64usize, "64MiB"), (256, "256MiB")] {
        let d = find(mib << 20, Task::Deliver);
        let s = find(mib << 20, Task::Sum);
        common::result(
            &format!("deliver_vs_pipe_serde_{tag}"),
            d[0].median / d[2].median,
            0,
            "x",
        );
        common::result(
            &format!("sum_vs_pipe_serde_{tag}"),
            s[0].median / s[2].median,
            1,
            "x",
        );
    }
    let s64 = find(64 << 20, Task::Sum);
    let d64 = find(64 << 20, Task::Deliver);
    common::result(
        "vec_sum_vs_pipe_serde_64MiB",
        s64[0].median / s64[3].median,
        1,
        "x",
    );
    common::result(
        "deliver_vs_pipe_raw_64MiB",
        d64[1].median / d64[2].median,
        0,
        "x",
    );
    common::result("pool_deliver_64MiB_us", d64[2].median * 1e6, 1, "us");
    common::result("pipe_serde_deliver_64MiB_ms", d64[0].median * 1e3, 1, "ms");
    common::result(
        "pool_sum_vs_local_64MiB",
        sums[0].median / sums[1].median,
        2,
        "x",
    );
    common::result("pool_apply_rtt_p50_us", rows[0].1 .1 * 1e6, 1, "us");
    common::result(
        "pool_map_vec_64MiB_vs_pipe_serde",
        s64[6].median / s64[5].median,
        2,
        "x",
    );
    common::result(
        "pool2_sum_vs_local_64MiB",
        sums[0].median / sums[2].median,
        2,
        "x",
    );
    common::result(
        "threads2_sum_vs_local_64MiB",
        sums[0].median / sums[3].median,
        2,
        "x",
    );
    common::result(
        "local_shared_vs_vec_sum_64MiB",
        sums[4].median / sums[0].median,
        2,
        "x",
    );
    common::result(
        "pool2_sum_vs_threads2_64MiB",
        sums[3].median / sums[2].median,
        2,
        "x",
    );
    let a64 = &answers
        .iter()
        .find(|(b, _)| *b == 64 << 20)
        .expect("measured")
        .1;
    common::result("pool_answer_vec_64MiB_ms", a64[1].median * 1e3, 1, "ms");
    common::result(
        "pool_answer_vec_64MiB_vs_pipe_serde",
        a64[0].median / a64[1].median,
        2,
        "x",
    );
    drop(pool);
    drop(pipe);
}

/// The sum of one 64 MiB `SharedArray` in this process vs the pool of one worker `pool1`, vs a pool of
/// two workers, one half each (`map_chunks`), and vs two threads of this process (the ceiling two
/// cores' memory bandwidth allows), all sampled in round-robin; prints them and returns their stats
/// (in process, pool of one, pool of two, threads, and in process over the `Vec` the array was
/// copied from).
fn sum_ways(pool1: &Pool, samples: usize) -> Vec<Stats> {
    let pool2 = Pool::builder()
        .workers(2)
        .build()
        .expect("start the pool of two");
    let n = (64 << 20) / 8;
    let v: Vec<f64> = (0..n).map(|i| (i % 1024) as f64 * 0.25).collect();
    let shared = SharedArray::from_slice(&v).expect("SharedArray");
    // Every element is a multiple of 1/4 and every partial sum stays far below 2^51: the halves add up
    // to exactly the whole sum, whatever the order.
    let expect = Task::Sum.run(&v);
    // The ceiling: the same two halves summed by two threads of this process that are already
    // running (a 2-thread rayon pool), i.e. what two cores' memory bandwidth gives on this machine.
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a 2-thread rayon pool");
    let (lo, hi) = shared.split_at(shared.len().div_ceil(2));
    let mut cols: Vec<Column<'_>> = vec![
        (
            "(e') in process, one core",
            Box::new(|| Task::Sum.run(black_box(&shared))),
        ),
        (
            "(c') pool of 1, map_chunks, the whole array",
            Box::new(|| pool_offset(pool1, Task::Sum, &shared)),
        ),
        (
            "(g) pool of 2, map_chunks, one half each",
            Box::new(|| pool2_sum(&pool2, &shared)),
        ),
        (
            "(h) 2 threads in process, one half each",
            Box::new(|| {
                let (a, b) =
                    threads.install(|| rayon::join(|| sum(black_box(lo)), || sum(black_box(hi))));
                [a + b, 0.0]
            }),
        ),
        (
            "(v) in process, one core, the source Vec",
            Box::new(|| Task::Sum.run(black_box(&v))),
        ),
    ];
    let stats = compare(samples, expect, &mut cols);
    println!(
        "\nsum of one 64 MiB SharedArray: one and two workers, and two threads in process, vs one core \
         in process, {samples} samples"
    );
    for ((name, _), s) in cols.iter().zip(&stats) {
        println!(
            "  {:<44} {:>11} {:>23} {:>9.2} x",
            name,
            fmt_time(s.median),
            format!("{}..{}", fmt_time(s.min), fmt_time(s.max)),
            stats[0].median / s.median
        );
    }
    drop(cols);
    // Where the time of (g) goes, from CLOCK_MONOTONIC stamps taken here and in the workers: until the
    // first half starts, how far apart the halves start, how long the slower half runs, from its end to
    // the caller having both; and how much the two halves overlapped in time. Halves that overlap
    // little ran one after the other: the machine did not give the two workers two cores at once.
    let mut pieces: [Vec<f64>; 5] = Default::default();
    for _ in 0..samples {
        let t0 = os::monotonic_ns();
        let h = pool2
            .map_chunks(&shared, shared.len().div_ceil(2), stamped_sum)
            .expect("map_chunks");
        let t1 = os::monotonic_ns();
        let (s0, s1) = (h[0].1.min(h[1].1), h[0].1.max(h[1].1));
        let (e0, e1) = (h[0].2.min(h[1].2), h[0].2.max(h[1].2));
        let run = (h[0].2.saturating_sub(h[0].1)).max(h[1].2.saturating_sub(h[1].1));
        let overlap = e0.saturating_sub(s1) as f64 / run.max(1) as f64;
        let ms = |ns: u64| ns as f64 * 1e-9;
        for (v, x) in pieces.iter_mut().zip([
            ms(s0.saturating_sub(t0)),
            ms(s1 - s0),
            ms(run),
            ms(t1.saturating_sub(e1)),
            overlap,
        ]) {
            v.push(x);
        }
    }
    let [to_start, skew, run, back, overlap] = pieces.map(|v| Stats::of(v).median);
    println!(
        "  (g) in pieces (medians): to the first start {}, start skew {}, slower half {} (half of (e'): {}), \
         end to caller {}; the halves overlapped {:.0}% of a half",
        fmt_time(to_start),
        fmt_time(skew),
        fmt_time(run),
        fmt_time(stats[0].median / 2.0),
        fmt_time(back),
        overlap * 100.0
    );
    stats
}

/// The unsafe code of this bench beyond `common::os` (fork, pipes), which it re-exports: the clock.
mod os {
    pub use crate::common::os::{fork, pipe, retain_freed_memory, set_pipe_size, Child};

    /// CLOCK_MONOTONIC in ns: one clock for every process of the machine.
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a live timespec for clock_gettime(2) to fill; CLOCK_MONOTONIC always exists.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        debug_assert_eq!(r, 0);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}
