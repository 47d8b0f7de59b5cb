//! Queues across processes (issue 4): many producers and consumers moving a million messages exactly
//! once, messages that do not decode, `JoinableQueue` and `Pipe` between processes, and messages too
//! large for the queue. Producers and consumers killed in the middle of a message, and bytes of the ring
//! corrupted by another process, are in `queue_faults.rs`.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" (DESIGN.md, invariant 4) and
//! never measures speed.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::codec::Raw;
use mproc::{Connection, Error, Event, JoinableQueue, Pipe, Queue};

use crate::common::{
    self, bounded, fields, handle_from_hex, handle_to_hex, say, shm_path, wait_for_start, Kid, Role,
};

/// How long anything may take before we call it a hang (shared with queue_faults.rs).
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// The many-producers test: processes on each side, and messages in all.
const MPMC_PRODUCERS: usize = 4;
const MPMC_CONSUMERS: usize = 4;
const MPMC_TOTAL: u64 = 1_000_000;

pub const ROLES: &[Role] = &[
    ("queue_mpmc_producer", mpmc_producer),
    ("queue_mpmc_consumer", mpmc_consumer),
    ("queue_decode_reader", decode_reader),
    ("queue_joinable_worker", joinable_worker),
    ("queue_pipe_echo", pipe_echo),
    ("queue_too_large", too_large_child),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue", name, f);
    vec![
        t("mpmc_4x4_processes_a_million_messages", mpmc_million),
        t("undecodable_message_and_type_mismatch", undecodable_message),
        t("joinable_queue_across_processes", joinable_across_processes),
        t("pipe_across_processes", pipe_across_processes),
        t("message_larger_than_a_slot_spills", message_too_large),
    ]
}

// --------------------------------------------------------------------- 1. many producers and consumers

/// What one consumer saw of one producer's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    count: u64,
    /// Sum of the sequence numbers.
    sum: u64,
    /// Sum of their squares (wrapping): with `sum`, makes a duplicate hiding a loss implausible.
    squares: u64,
    /// Whether the sequence numbers were strictly increasing (per-producer FIFO, and no duplicate).
    ordered: bool,
    last: Option<u64>,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            count: 0,
            sum: 0,
            squares: 0,
            ordered: true,
            last: None,
        }
    }

    fn see(&mut self, seq: u64) {
        self.count += 1;
        self.sum += seq;
        self.squares = self.squares.wrapping_add(seq.wrapping_mul(seq));
        if self.last.is_some_and(|l| seq <= l) {
            self.ordered = false;
        }
        self.last = Some(seq);
    }

    fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.count, self.sum, self.squares, self.ordered as u8
        )
    }

    fn decode(s: &str) -> Tally {
        let [c, s, q, o] = s.split(':').collect::<Vec<_>>()[..] else {
            panic!("bad tally {s:?}")
        };
        Tally {
            count: c.parse().expect("count"),
            sum: s.parse().expect("sum"),
            squares: q.parse().expect("squares"),
            ordered: o == "1",
            last: None,
        }
    }
}

/// Child: puts `producer << 32 | seq` for `seq` in `0..count`.
fn mpmc_producer(arg: &str) {
    let [name, go, producer, count] = fields(arg, ',');
    let q = Queue::<u64, Raw>::open(name).expect("open queue");
    let producer: u64 = producer.parse().expect("producer id");
    let count: u64 = count.parse().expect("count");
    wait_for_start(go, BOUND);
    for seq in 0..count {
        q.put(&(producer << 32 | seq)).expect("put");
    }
}

/// Child: takes messages until the queue is closed and drained, then prints `summary BAD TALLY...`.
fn mpmc_consumer(arg: &str) {
    let [name, go] = fields(arg, ',');
    let q = Queue::<u64, Raw>::open(name).expect("open queue");
    wait_for_start(go, BOUND);
    let mut tallies = [Tally::new(); MPMC_PRODUCERS];
    let mut bad = 0u64;
    loop {
        match q.get() {
            Ok(v) => match tallies.get_mut((v >> 32) as usize) {
                Some(t) => t.see(v & 0xffff_ffff),
                None => bad += 1,
            },
            Err(Error::Closed) => break,
            Err(e) => panic!("get failed: {e}"),
        }
    }
    let tallies: Vec<String> = tallies.iter().map(Tally::encode).collect();
    say(&format!("summary {bad} {}", tallies.join(" ")));
}

/// Four producer processes and four consumer processes move a million `u64`s through one queue: every
/// message is delivered exactly once (per producer: the counts add up, and so do the sums of sequence
/// numbers and of their squares), and each consumer sees each producer's messages in order.
fn mpmc_million() {
    let per_producer = MPMC_TOTAL / MPMC_PRODUCERS as u64;
    let name = common::unique_name("mpmc");
    let q = Queue::<u64, Raw>::create(&name, 1024, 8).expect("create queue");
    let go_name = common::unique_name("go");
    let go = Event::create(&go_name).expect("create start event");
    let mut consumers: Vec<Kid> = (0..MPMC_CONSUMERS)
        .map(|_| Kid::spawn("queue_mpmc_consumer", &format!("{name},{go_name}"), BOUND))
        .collect();
    let mut producers: Vec<Kid> = (0..MPMC_PRODUCERS)
        .map(|p| {
            let arg = format!("{name},{go_name},{p},{per_producer}");
            Kid::spawn("queue_mpmc_producer", &arg, BOUND)
        })
        .collect();
    go.set();
    for k in &mut producers {
        k.join_ok();
    }
    // Every message is in the queue or taken: consumers drain what is left, then see `Closed`.
    q.close();
    let mut total = [(0u64, 0u64, 0u64); MPMC_PRODUCERS];
    for (c, k) in consumers.iter_mut().enumerate() {
        let line = k.next_line();
        k.join_ok();
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("summary"), "consumer {c}: {line:?}");
        let bad: u64 = words.next().expect("bad count").parse().expect("bad count");
        assert_eq!(bad, 0, "consumer {c} got messages of unknown producers");
        for (p, w) in words.enumerate() {
            let t = Tally::decode(w);
            assert!(
                t.ordered,
                "consumer {c} saw producer {p}'s messages out of order (or twice)"
            );
            total[p].0 += t.count;
            total[p].1 += t.sum;
            total[p].2 = total[p].2.wrapping_add(t.squares);
        }
    }
    let n = u128::from(per_producer);
    let want_sum = (n * (n - 1) / 2) as u64;
    let want_squares = ((n - 1) * n * (2 * n - 1) / 6) as u64;
    for (p, &(count, sum, squares)) in total.iter().enumerate() {
        assert_eq!(count, per_producer, "producer {p}: messages delivered");
        assert_eq!(
            sum, want_sum,
            "producer {p}: a message lost and another duplicated"
        );
        assert_eq!(
            squares, want_squares,
            "producer {p}: messages lost and duplicated"
        );
    }
    assert!(q.is_empty());
}

// ------------------------------------------------------------------------ 2. a message that is not a T

/// Child: opening the queue with another type fails at open; then the damaged message is a `Decode`
/// error and the next one is read intact.
fn decode_reader(name: &str) {
    let e = Queue::<Vec<u8>>::open(name).expect_err("a queue of String opened as Vec<u8>");
    assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
    let e = Queue::<u64, Raw>::open(name).expect_err("a queue of String opened as raw u64");
    assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
    let q = Queue::<String>::open(name).expect("open queue");
    match q.get_timeout(BOUND) {
        Err(Error::Decode { ty, .. }) => assert!(ty.contains("String"), "{ty}"),
        other => panic!("expected a Decode error, got {other:?}"),
    }
    assert_eq!(q.get_timeout(BOUND).expect("the next message"), "second");
    say("ok");
}

/// A message whose bytes were overwritten (by another process, through the segment's file) with invalid
/// UTF-8 is an `Error::Decode` on `get` in the reading process, and the message after it is intact.
fn undecodable_message() {
    let name = common::unique_name("decode");
    let q = Queue::<String>::create(&name, 4, 64).expect("create queue");
    let marker = format!("marker-{name}");
    q.put(&marker).expect("put");
    q.put(&"second".to_string()).expect("put");
    // Find the first message's bytes in the segment (no layout assumed) and make them invalid UTF-8,
    // leaving its length prefix alone.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .expect("open the segment's file");
    let bytes = std::fs::read(shm_path(&name)).expect("read the segment");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the message is in the segment");
    f.write_all_at(&vec![0xff; marker.len()], at as u64)
        .expect("overwrite the message");
    let mut kid = Kid::spawn("queue_decode_reader", &name, BOUND);
    kid.expect_line("ok");
    kid.join_ok();
    assert!(q.is_empty());
}

// ------------------------------------------------------------------------ 3. JoinableQueue

const TASKS: u32 = 100;

/// Child: gets tasks and marks each done until the queue is closed; prints how many it did.
fn joinable_worker(hex: &str) {
    let q: JoinableQueue<u32> = handle_from_hex(hex).expect("deserialize queue");
    let mut done = 0u32;
    loop {
        match q.get() {
            Ok(_) => {
                done += 1;
                q.task_done().expect("task_done after get");
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("get failed: {e}"),
        }
    }
    say(&format!("done {done}"));
}

/// The parent puts 100 tasks into a `JoinableQueue` of 16 handed to three worker processes as a
/// serialized handle; `join` returns once all are done, and one `task_done` too many is an error.
fn joinable_across_processes() {
    let q = JoinableQueue::<u32>::new(16).expect("create queue");
    q.join_timeout(Duration::ZERO)
        .expect("nothing put: join returns at once");
    for t in 0..10 {
        q.put(&t).expect("put");
    }
    assert!(
        matches!(
            q.join_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ),
        "10 tasks not done: join must wait"
    );
    let hex = handle_to_hex(&q);
    let mut kids: Vec<Kid> = (0..3)
        .map(|_| Kid::spawn("queue_joinable_worker", &hex, BOUND))
        .collect();
    let q2 = q.clone();
    bounded("put 100 tasks and join", BOUND, move || {
        for t in 10..TASKS {
            q2.put(&t).expect("put");
        }
        q2.join().expect("join");
    });
    assert_eq!(q.unfinished(), 0);
    assert!(
        matches!(q.task_done(), Err(Error::ReleasedTooManyTimes(_))),
        "task_done with nothing outstanding"
    );
    q.close();
    let mut done = 0;
    for k in &mut kids {
        let line = k.next_line();
        k.join_ok();
        let n: u32 = line
            .strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        done += n;
    }
    assert_eq!(done, TASKS, "tasks taken by the workers");
}

// ------------------------------------------------------------------------------------------ 4. Pipe

const PINGS: u64 = 1000;

/// Child: answers `x` with `x + 1`, `PINGS` times; then sends 7, 8, 9 and closes the pipe.
fn pipe_echo(hex: &str) {
    let conn: Connection<u64> = handle_from_hex(hex).expect("deserialize end");
    for _ in 0..PINGS {
        let x = conn.recv_timeout(BOUND).expect("ping");
        conn.send(&(x + 1)).expect("pong");
    }
    for x in [7, 8, 9] {
        conn.send(&x).expect("send before close");
    }
    conn.close();
    assert!(matches!(conn.send(&0), Err(Error::Closed)));
}

/// One end of a duplex pipe goes to a child as a serialized handle: `poll` is false while nothing was
/// sent, 1000 round trips, and the child's `close` makes our `recv` return what was sent, then `Closed`
/// (and `poll` true: `recv` returns at once).
fn pipe_across_processes() {
    let (ours, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let hex = handle_to_hex(&theirs);
    drop(theirs);
    let mut kid = Kid::spawn("queue_pipe_echo", &hex, BOUND);
    assert!(
        !ours.poll(Duration::from_millis(50)),
        "nothing was sent: poll must be false"
    );
    bounded("ping-pong and close", BOUND, move || {
        for i in 0..PINGS {
            ours.send(&(2 * i)).expect("ping");
            assert!(ours.poll(BOUND), "a pong is coming");
            assert_eq!(ours.recv_timeout(BOUND).expect("pong"), 2 * i + 1);
        }
        for x in [7, 8, 9] {
            assert_eq!(ours.recv_timeout(BOUND).expect("sent before close"), x);
        }
        match ours.recv_timeout(BOUND) {
            Err(Error::Closed) => {}
            other => panic!("expected Closed after draining, got {other:?}"),
        }
        assert!(matches!(ours.send(&0), Err(Error::Closed)));
        // As Python's `poll` at end of file: true, and `recv` says `Closed` at once.
        assert!(ours.poll(Duration::from_millis(10)), "closed and drained");
    });
    kid.join_ok();
}

// ------------------------------------------------------------------------------- 5. too large

/// Child: the queue is full; a message larger than a slot waits for space like any other (it is
/// spilled, not refused: issue 13).
fn too_large_child(name: &str) {
    let q = Queue::<Vec<u8>>::open(name).expect("open queue");
    assert_eq!(q.max_message_size(), 64);
    assert!(matches!(
        q.put_timeout(&vec![0; 1000], Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    assert!(matches!(q.try_put(&vec![0; 1000]), Err(Error::Full)));
    assert!(matches!(q.try_put(&vec![0; 1]), Err(Error::Full)));
    say("ok");
}

/// A message larger than the queue's inline size is spilled, not refused (issue 13): in another
/// process it waits for space on a full queue like any message; the inline limit is on the encoded
/// size, exactly (both sides of it arrive); and a raw `Pod` larger than the slot arrives too.
fn message_too_large() {
    let name = common::unique_name("large");
    let q = Queue::<Vec<u8>>::create(&name, 2, 64).expect("create queue");
    q.put(&vec![1]).expect("put");
    q.put(&vec![2]).expect("put");
    let mut kid = Kid::spawn("queue_too_large", &name, BOUND);
    kid.expect_line("ok");
    kid.join_ok();
    bounded("both sides of the inline limit arrive", BOUND, move || {
        q.get().expect("get");
        q.get().expect("get");
        // postcard: a one-byte length, then the bytes: 64 encoded bytes inline, 65 spilled.
        q.put(&vec![0; 63]).expect("64 encoded bytes fit");
        q.put(&vec![9; 64]).expect("65 encoded bytes spill");
        assert_eq!(q.get().expect("get"), vec![0; 63]);
        assert_eq!(q.get().expect("get"), vec![9; 64]);
    });
    let raw = Queue::<[u8; 128], Raw>::with_max_message(2, 64).expect("create raw queue");
    raw.put(&[3; 128])
        .expect("a raw message larger than the slot spills");
    assert_eq!(raw.get().expect("get"), [3; 128]);
}
