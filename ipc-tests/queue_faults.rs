//! Queues under faults (issue 4): producers and consumers SIGKILLed in the middle of a message, bytes of
//! the ring corrupted by another process, an index word pushed 2^31 stamps behind, and a consumer's claim
//! revoked while it is inside `get`.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" (DESIGN.md, invariant 4) and
//! never measures speed. Kill storms print their random seed in every failure message.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use mproc::codec::{Raw, RawSlice};
use mproc::{Error, Queue};

use crate::common::{self, bounded, fields, next_random, say, shm_path, Kid, Role};
use crate::queue::BOUND;

/// Kill storms: rounds (one SIGKILL each) and the processes alive at any time.
const STORM_ROUNDS: usize = 100;
const STORM_PROCS: usize = 3;
/// Largest message of the producer kill storm, and its queue's capacity in messages.
const STORM_SLOT: usize = 64 * 1024;
const STORM_CAPACITY: usize = 4;

/// Queues the corrupting child damages, one after the other, and for how long each.
const CORRUPTED_QUEUES: usize = 8;
const CORRUPT_EACH: Duration = Duration::from_millis(250);
/// Size of the region header in front of the ring (`src/region/header.rs`, `PAYLOAD_OFFSET`).
const REGION_HEADER: u64 = 128;

pub const ROLES: &[Role] = &[
    ("queue_storm_producer", storm_producer),
    ("queue_storm_consumer", storm_consumer),
    ("queue_corruptor", corruptor),
    ("queue_index_victim", index_victim),
    ("queue_claim_victim", claim_victim),
];

pub fn tests() -> Vec<Trial> {
    // Named `queue::…` as before the split of queue.rs, so that existing filters still select them.
    let t = |name: &str, f: fn()| common::trial("queue", name, f);
    vec![
        t("producer_kill_storm_no_torn_message", producer_kill_storm),
        t("consumer_kill_storm_no_duplicate", consumer_kill_storm),
        t("corrupted_ring_typed_errors_only", corrupted_ring),
        t("corrupted_index_ends_within_timeout", corrupted_index),
        t(
            "consumer_claim_revoked_mid_get_no_panic",
            consumer_claim_revoked_mid_get,
        ),
    ]
}

// ------------------------------------------------------------------------------------------------ helpers

/// A random delay in `[lo, hi)` microseconds.
fn random_micros(rng: &mut u64, lo: u64, hi: u64) -> Duration {
    Duration::from_micros(lo + next_random(rng) % (hi - lo))
}

/// A thread that runs until told to stop. Dropping it (a failing test) stops it and waits for it too,
/// so that it does not outlive the test holding a queue whose segment would then be left behind.
struct Worker<T> {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Runs `f`, which must return soon after the flag it is given is set.
    fn spawn(f: impl FnOnce(&AtomicBool) -> T + Send + 'static) -> Worker<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = Some(std::thread::spawn(move || f(&flag)));
        Worker { stop, handle }
    }

    /// Tells the thread to stop and returns its result (bounded).
    #[track_caller]
    fn finish(mut self, what: &str) -> T {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("finished once");
        match bounded(what, BOUND, move || h.join()) {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ------------------------------------------------------------------------ 1. producers killed mid-put

/// splitmix64's finaliser: message lengths and tags that differ between neighbouring ids.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Message `id`: 16..64 KiB, its first 8 bytes the id, every other byte the id's tag. A message torn by
/// a half-finished write, or mixed with the previous one in the same slot, breaks one of the three.
fn storm_len(id: u64) -> usize {
    const MIN: usize = 16 * 1024;
    MIN + (mix(id) % (STORM_SLOT - MIN + 1) as u64) as usize
}

fn storm_tag(id: u64) -> u8 {
    (mix(id) >> 56) as u8
}

fn storm_message(id: u64) -> Vec<u8> {
    let mut m = vec![storm_tag(id); storm_len(id)];
    m[..8].copy_from_slice(&id.to_le_bytes());
    m
}

/// The id of an intact message, or what is wrong with it.
fn storm_check(m: &[u8]) -> Result<u64, String> {
    let Some(head) = m.get(..8) else {
        return Err(format!("a message of {} bytes", m.len()));
    };
    let id = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    if m.len() != storm_len(id) {
        return Err(format!(
            "message {id:#x} has {} bytes, expected {}",
            m.len(),
            storm_len(id)
        ));
    }
    let tag = storm_tag(id);
    // memcmp against a reference first: fast even in a debug build.
    if m[8..] != vec![tag; m.len() - 8][..] {
        let at = 8 + m[8..].iter().position(|&b| b != tag).expect("differs");
        return Err(format!(
            "message {id:#x} is torn: byte {at} is {:#04x}, its tag is {tag:#04x}",
            m[at]
        ));
    }
    Ok(id)
}

type Storm = Queue<Vec<u8>, RawSlice<u8>>;

/// Child: puts messages `producer << 32 | seq` for ever (until killed, or the queue is closed).
fn storm_producer(arg: &str) {
    let [name, producer] = fields(arg, ',');
    let q = Storm::open(name).expect("open queue");
    let producer: u64 = producer.parse().expect("producer id");
    say("ready");
    for seq in 0.. {
        match q.put(&storm_message(producer << 32 | seq)) {
            Ok(()) => {}
            Err(Error::Closed) => return,
            Err(e) => panic!("put failed: {e}"),
        }
    }
}

/// Best effort, for the report only: whether a slot of the storm queue is claimed by thread `tid`, i.e.
/// the kill landed between the claim and the publication of a message. Reads the layout documented in
/// `src/queue/ring/mod.rs` (384-byte ring header; each slot a 64-byte `SlotHead { state: u64, len: u32 }`
/// then the bytes, in 64-byte strides; `who` is the low half of `state`). A slot holds one byte more
/// than the largest inline message: a record of exactly the slot's size is a spill reference. Says
/// false if the file does not fit that layout.
fn slot_claimed_by(name: &str, tid: u32) -> bool {
    const RING_HEADER: u64 = 384;
    let stride = (64 + STORM_SLOT as u64 + 1).next_multiple_of(64);
    let Ok(f) = std::fs::File::open(shm_path(name)) else {
        return false;
    };
    let fits = f.metadata().map(|m| m.len()).unwrap_or(0)
        >= REGION_HEADER + RING_HEADER + stride * STORM_CAPACITY as u64;
    fits && (0..STORM_CAPACITY as u64).any(|i| {
        let mut word = [0u8; 8];
        let at = REGION_HEADER + RING_HEADER + i * stride;
        f.read_exact_at(&mut word, at).is_ok() && u64::from_le_bytes(word) as u32 == tid
    })
}

/// What the reading side of a storm saw.
#[derive(Debug, Default)]
struct Seen {
    messages: u64,
    /// Per producer, the last sequence number seen.
    last: BTreeMap<u64, u64>,
    problems: Vec<String>,
}

impl Seen {
    fn take(&mut self, m: &[u8]) {
        match storm_check(m) {
            Ok(id) => {
                self.messages += 1;
                let (producer, seq) = (id >> 32, id & 0xffff_ffff);
                if let Some(&prev) = self.last.get(&producer) {
                    if seq <= prev {
                        self.problems.push(format!(
                            "producer {producer}: seq {seq} after {prev} (reordered or duplicated)"
                        ));
                    }
                }
                self.last.insert(producer, seq);
            }
            Err(e) => self.problems.push(e),
        }
    }
}

fn spawn_storm_producer(name: &str, next_id: &mut u64) -> Kid {
    let mut k = Kid::spawn("queue_storm_producer", &format!("{name},{next_id}"), BOUND);
    *next_id += 1;
    k.expect_line("ready");
    k
}

/// Producer processes putting 16–64 KiB messages are SIGKILLed at random moments, 100 times, while the
/// parent reads. Every message read is whole (length, id and every byte agree), each producer's messages
/// come in order and once, and afterwards every slot of the queue is usable again, by the parent and by a
/// new producer process. A kill rarely lands inside the copy of a message; the test prints how many did.
fn producer_kill_storm() {
    let seed = common::seed();
    let mut rng = seed;
    let name = common::unique_name("pstorm");
    let q = Storm::create(&name, STORM_CAPACITY, STORM_SLOT).expect("create queue");
    let reader = {
        let q = q.clone();
        Worker::spawn(move |stop| {
            let mut seen = Seen::default();
            loop {
                match q.get_timeout(Duration::from_millis(50)) {
                    Ok(m) => seen.take(&m),
                    Err(Error::Timeout) if stop.load(Ordering::Relaxed) => break,
                    Err(Error::Timeout) => {}
                    Err(e) => seen.problems.push(format!("get failed: {e}")),
                }
            }
            seen
        })
    };
    let mut next_id = 0;
    let mut kids: Vec<Kid> = (0..STORM_PROCS)
        .map(|_| spawn_storm_producer(&name, &mut next_id))
        .collect();
    let mut mid_put = 0;
    for _ in 0..STORM_ROUNDS {
        std::thread::sleep(random_micros(&mut rng, 200, 10_000));
        let i = (next_random(&mut rng) % kids.len() as u64) as usize;
        let pid = kids[i].pid();
        kids[i].kill();
        mid_put += usize::from(slot_claimed_by(&name, pid));
        kids[i] = spawn_storm_producer(&name, &mut next_id);
    }
    for k in &mut kids {
        k.kill();
    }
    let mut seen = reader.finish(&format!("seed {seed:#x}: drain the queue after the storm"));
    eprintln!(
        "queue::producer_kill_storm: {} messages read; {mid_put} of {STORM_ROUNDS} kills landed inside a put",
        seen.messages
    );
    assert!(seen.messages > 0, "seed {seed:#x}: nothing was read");

    // Every slot is usable again: fill the queue to capacity and drain it, from the parent.
    let after = bounded("fill and drain after the storm", BOUND, move || {
        for k in 0..STORM_CAPACITY as u64 {
            q.put_timeout(&storm_message(0xffff_fffe << 32 | k), BOUND)
                .expect("put after the storm");
        }
        for _ in 0..STORM_CAPACITY {
            seen.take(&q.get_timeout(BOUND).expect("get after the storm"));
        }
        // And a new producer process is heard.
        let mut kid = spawn_storm_producer(&name, &mut next_id);
        for _ in 0..16 {
            seen.take(&q.get_timeout(BOUND).expect("get from a new producer"));
        }
        kid.kill();
        seen
    });
    assert!(
        after.problems.is_empty(),
        "seed {seed:#x}: {} problems, first ones: {:#?}",
        after.problems.len(),
        &after.problems[..after.problems.len().min(10)]
    );
}

// ------------------------------------------------------------------------ 2. consumers killed mid-get

/// Child: takes `u64` ids for ever and prints each one as soon as it has it.
fn storm_consumer(name: &str) {
    let q = Queue::<u64, Raw>::open(name).expect("open queue");
    say("ready");
    loop {
        match q.get() {
            Ok(id) => say(&id.to_string()),
            Err(Error::Closed) => return,
            Err(e) => panic!("get failed: {e}"),
        }
    }
}

/// Consumer processes are SIGKILLed at random moments, 100 times, while the parent puts ids `0, 1, 2, …`.
/// A consumer prints each id it gets, in one `write`, right after `get` returns it.
///
/// The guarantee tested (src/queue/ring/mod.rs, "Deaths"): no id is received twice, and an id is missing only
/// if a killed consumer had claimed it. A killed consumer accounts for at most one missing id: the one it
/// had claimed inside `get` (lost with it, delivery is at most once), or the one `get` had returned to it
/// and it had not printed yet (delivered, but the test cannot know). So: duplicates = 0 and
/// missing ≤ kills.
fn consumer_kill_storm() {
    let seed = common::seed();
    let mut rng = seed;
    let name = common::unique_name("cstorm");
    let q = Queue::<u64, Raw>::create(&name, 16, 8).expect("create queue");
    let producer = {
        let q = q.clone();
        Worker::spawn(move |stop| {
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match q.put_timeout(&id, Duration::from_millis(20)) {
                    Ok(()) => id += 1,
                    // Not put: try the same id again.
                    Err(Error::Timeout) => {}
                    Err(e) => panic!("put failed: {e}"),
                }
            }
            id
        })
    };
    let spawn = || {
        let mut k = Kid::spawn("queue_storm_consumer", &name, BOUND);
        k.expect_line("ready");
        k
    };
    let mut kids: Vec<Kid> = (0..STORM_PROCS).map(|_| spawn()).collect();
    let mut lines = Vec::new();
    for _ in 0..STORM_ROUNDS {
        std::thread::sleep(random_micros(&mut rng, 200, 10_000));
        let i = (next_random(&mut rng) % kids.len() as u64) as usize;
        kids[i].kill();
        lines.extend(kids[i].rest());
        kids[i] = spawn();
    }
    let produced = producer.finish("stop the producer");
    q.close();
    for k in &mut kids {
        k.join_ok();
        lines.extend(k.rest());
    }
    let mut times = vec![0u32; produced as usize];
    for line in &lines {
        let id: u64 = line.parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
        assert!(id < produced, "seed {seed:#x}: id {id} was never put");
        times[id as usize] += 1;
    }
    let twice: Vec<usize> = (0..times.len()).filter(|&i| times[i] > 1).collect();
    let missing: Vec<usize> = (0..times.len()).filter(|&i| times[i] == 0).collect();
    assert!(
        twice.is_empty(),
        "seed {seed:#x}: {} ids delivered twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert!(
        missing.len() <= STORM_ROUNDS,
        "seed {seed:#x}: {} ids lost by {STORM_ROUNDS} kills (at most one each), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "queue::consumer_kill_storm: {produced} ids put, {} missing after {STORM_ROUNDS} kills",
        missing.len()
    );
}

// --------------------------------------------------------------------------------- 3. corrupted ring

/// Child: for each queue in turn (`;`-separated names), for [`CORRUPT_EACH`], writes 1..8 random bytes
/// at a random offset of the ring (past the region header) every 50 µs – 1 ms: slowly enough that the
/// queue works between hits and the damage shows up as bad lengths, sequence numbers and message bytes
/// in live traffic. The queue's config line (capacity, slot size, closed flag) is spared during the first
/// four fifths of each turn: a garbage `closed` closes the queue for good, a typed outcome that ends the
/// interesting part.
fn corruptor(arg: &str) {
    let [names, seed] = fields(arg, ',');
    let mut rng: u64 = seed.parse().expect("seed");
    let files: Vec<std::fs::File> = names
        .split(';')
        .map(|name| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(shm_path(name))
                .expect("open the segment's file")
        })
        .collect();
    say("started");
    let start = Instant::now();
    for (k, f) in files.iter().enumerate() {
        let len = f.metadata().expect("stat").len();
        let end = CORRUPT_EACH * (k as u32 + 1);
        while start.elapsed() < end {
            let spare = if start.elapsed() + CORRUPT_EACH / 5 < end {
                64
            } else {
                0
            };
            let lo = REGION_HEADER + spare;
            let mut at = lo + next_random(&mut rng) % (len - lo - 8);
            if next_random(&mut rng).is_multiple_of(2) {
                at &= !7; // whole words: states, lengths, indices
            }
            let garbage = next_random(&mut rng).to_le_bytes();
            let n = 1 + (next_random(&mut rng) % 8) as usize;
            f.write_all_at(&garbage[..n], at).expect("write garbage");
            std::thread::sleep(random_micros(&mut rng, 50, 1000));
        }
    }
}

/// A child writes random bytes into the rings of [`CORRUPTED_QUEUES`] queues, one after the other, while
/// the parent puts and gets with timeouts on the one being damaged. Every operation returns Ok or a typed
/// error, each within its timeout plus a bounded margin; none crashes or hangs. A queue may be damaged for
/// good: only the absence of UB, crash and hang is tested.
fn corrupted_ring() {
    let seed = common::seed();
    let names: Vec<String> = (0..CORRUPTED_QUEUES)
        .map(|_| common::unique_name("corrupt"))
        .collect();
    let queues: Vec<Queue<Vec<u8>>> = names
        .iter()
        .map(|n| Queue::create(n, 8, 64).expect("create queue"))
        .collect();
    let mut kid = Kid::spawn(
        "queue_corruptor",
        &format!("{},{seed}", names.join(";")),
        BOUND,
    );
    kid.expect_line("started");
    let (outcomes, slowest) = bounded("queue operations on a corrupted ring", BOUND, move || {
        let op_timeout = Duration::from_millis(5);
        let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut slowest = (Duration::ZERO, "");
        let start = Instant::now();
        let mut i = 0u8;
        for (k, q) in queues.iter().enumerate() {
            while start.elapsed() < CORRUPT_EACH * (k as u32 + 1) {
                i = i.wrapping_add(1);
                let msg = vec![i; usize::from(i % 50)];
                let t0 = Instant::now();
                let r = match i % 4 {
                    0 => q.put_timeout(&msg, op_timeout),
                    1 => q.get_timeout(op_timeout).map(drop),
                    2 => q.try_put(&msg),
                    _ => q.try_get().map(drop),
                };
                slowest = slowest.max((
                    t0.elapsed(),
                    ["put_timeout", "get_timeout", "try_put", "try_get"][usize::from(i % 4)],
                ));
                let what = match r {
                    Ok(()) => "ok",
                    Err(Error::Corrupted(_)) => "corrupted",
                    Err(Error::Decode { .. }) => "decode",
                    Err(Error::Timeout) => "timeout",
                    Err(Error::Full) => "full",
                    Err(Error::Empty) => "empty",
                    Err(Error::Closed) => "closed",
                    Err(Error::MessageTooLarge { .. }) => "too large",
                    Err(e) => {
                        panic!("seed {seed:#x}: an untyped outcome on a corrupted ring: {e:?}")
                    }
                };
                *outcomes.entry(what).or_default() += 1;
            }
        }
        (outcomes, slowest)
    });
    kid.join_ok();
    eprintln!("queue::corrupted_ring: outcomes {outcomes:?}, slowest operation {slowest:?}");
    assert!(
        slowest.0 < Duration::from_secs(10),
        "seed {seed:#x}: {} with a 5 ms timeout took {:?}",
        slowest.1,
        slowest.0
    );
}

/// Child: one operation with a 5 ms timeout on a queue whose index was corrupted; prints its outcome.
fn index_victim(arg: &str) {
    let [name, op] = fields(arg, ',');
    let q = Queue::<Vec<u8>>::open(name).expect("open queue");
    let t0 = Instant::now();
    let r = match op {
        "put" => q.put_timeout(&vec![1, 2, 3], Duration::from_millis(5)),
        _ => q.get_timeout(Duration::from_millis(5)).map(drop),
    };
    say(&format!("{op} returned {r:?} after {:?}", t0.elapsed()));
}

/// A `tail` (or `head`) index overwritten with a value 2^31 stamps behind the slots' sequence numbers —
/// one garbage word, as another process could write it — must not keep a `put_timeout` (`get_timeout`)
/// of 5 ms busy for seconds: it must end, within a generous bound, with Ok or a typed error.
///
/// Layout used (src/queue/ring/mod.rs, `RingHeader`): after the 128-byte region header, the ring header is
/// six 64-byte lines: config, `tail`, `head`, … So `tail` is at file offset 192 and `head` at 256. After
/// one message in and out, a ring of 8 slots (`one_lap` 16) has slot 0 at `{ seq: 16, IDLE }` and slot
/// `i > 0` at `{ seq: i, IDLE }`: every one of them far ahead of the corrupted index.
fn corrupted_index() {
    const TAIL: u64 = REGION_HEADER + 64;
    const HEAD: u64 = REGION_HEADER + 128;
    // Low 32 bits 0x8000_0040: index 0 of a lap, 2^31 - 64 stamps behind every slot's sequence number.
    const BEHIND: u64 = (1 << 31) + 64;
    let limit = Duration::from_secs(5);
    let mut hung = Vec::new();
    for (op, at, index) in [("put", TAIL, "tail"), ("get", HEAD, "head")] {
        let name = common::unique_name("index");
        let q = Queue::<Vec<u8>>::create(&name, 8, 64).expect("create queue");
        q.put(&vec![1]).expect("put");
        q.get().expect("get");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(shm_path(&name))
            .expect("open the segment's file");
        // One message in and out: both indices are 1, which checks the offsets this test relies on.
        for word_at in [TAIL, HEAD] {
            let mut word = [0u8; 8];
            f.read_exact_at(&mut word, word_at).expect("read an index");
            assert_eq!(
                u64::from_le_bytes(word),
                1,
                "ring layout changed: no index at {word_at}"
            );
        }
        f.write_all_at(&BEHIND.to_le_bytes(), at)
            .expect("overwrite the index");
        let mut kid = Kid::spawn("queue_index_victim", &format!("{name},{op}"), BOUND);
        match kid.line_within(limit) {
            Ok(line) => {
                kid.join_ok();
                assert!(line.starts_with(&format!("{op} returned ")), "{line}");
            }
            Err(_) => {
                kid.kill();
                hung.push(format!(
                    "{op}_timeout(5 ms) with `{index}` 2^31 stamps behind the slots did not return \
                     within {limit:?}"
                ));
            }
        }
    }
    // The helping branch of try_push / try_pop walks the index on one slot per iteration, about 2^30
    // iterations here, without looking at the deadline.
    assert!(hung.is_empty(), "{hung:#?}");
}

/// Child: takes the big message (a slow decode) and then the small one; prints what each `get` returned.
fn claim_victim(name: &str) {
    let q = Queue::<Vec<u8>>::open(name).expect("open queue");
    for _ in 0..2 {
        let r = q.get_timeout(Duration::from_millis(200));
        say(&format!("{:?}", r.map(|v| v.len())));
    }
}

/// While a consumer process is inside `get` (decoding a 4 MiB message, slot claimed), its slot's state
/// word is overwritten from outside with `{ pos + one_lap, IDLE }`: exactly what a producer writes when it
/// takes the reader for dead, here written as one garbage word. The module docs of src/queue/ring/mod.rs say
/// a revoked consumer "discards what it read and takes the next message"; anything typed would do. The
/// consumer must not panic.
///
/// Layout used: slot 0's state word is the first word after the 128-byte region header and the 384-byte
/// ring header (src/queue/ring/mod.rs); a ring of 2 slots has `one_lap` 4.
fn consumer_claim_revoked_mid_get() {
    const STATE0: u64 = REGION_HEADER + 384;
    const BIG: usize = 4 << 20;
    let name = common::unique_name("revoke");
    let q = Queue::<Vec<u8>>::create(&name, 2, BIG + 16).expect("create queue");
    q.put(&vec![7; BIG]).expect("put the big message");
    q.put(&vec![1, 2, 3]).expect("put the small message");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .expect("open the segment's file");
    let mut kid = Kid::spawn("queue_claim_victim", &name, BOUND);
    let victim = kid.pid();
    let deadline = Instant::now() + BOUND;
    let claimed = loop {
        let mut word = [0u8; 8];
        f.read_exact_at(&mut word, STATE0).expect("read slot 0");
        let st = u64::from_le_bytes(word);
        if st as u32 == victim {
            break st;
        }
        assert!(Instant::now() < deadline, "the child never claimed slot 0");
    };
    assert_eq!(claimed >> 32, 1, "claimed as the consumer of stamp 0");
    f.write_all_at(&(4u64 << 32).to_le_bytes(), STATE0)
        .expect("revoke the claim");
    let first = kid.next_line();
    let second = kid.next_line();
    kid.join_ok();
    assert!(
        first.starts_with("Ok(") || first.starts_with("Err("),
        "{first}"
    );
    assert!(
        second.starts_with("Ok(") || second.starts_with("Err("),
        "{second}"
    );
}
