//! Batch queue operations under SIGKILL (issue 12): a producer killed between claiming a run of slots
//! with `put_many` and publishing them, and a consumer killed in the middle of `get_many` with a run of
//! messages claimed. The kills land exactly there, not by chance: the victim's codec stops (prints
//! `stalled` and sleeps) while encoding or decoding one chosen message, which `put_many`/`get_many` do
//! with the whole run already claimed. The survivors must carry on with a consistent queue: published
//! messages are delivered once and in order, abandoned ones never (a `put_many` batch is published at
//! its end, so the victim's messages of its unfinished batch are all abandoned), nothing twice,
//! every call returns a typed result within [`BOUND`] (which proves "no hang", never a speed).
//!
//! A consumer killed while `get_many` takes a spilled (large) message, a long copy, is killed the same
//! way, its decoder stalling on that message: it must lose that message only, never the small ones
//! behind it (a reviewer's reproducer, made deterministic).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use libtest_mimic::Trial;
use mproc::{Error, Queue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::{self, bounded, fields, say, Kid, Role};
use crate::queue::BOUND;

/// Slots of the queues below: the victim's batches fill it (the producer's two, the consumer's one).
const CAPACITY: usize = 16;

pub const ROLES: &[Role] = &[
    ("queue_batch_stalled_producer", stalled_producer),
    ("queue_batch_stalled_consumer", stalled_consumer),
    ("queue_batch_stalled_spill_consumer", stalled_spill_consumer),
    ("queue_joinable_blocked_producer", joinable_blocked_producer),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue_batch", name, f);
    vec![
        t(
            "producer_killed_between_claim_and_publish",
            producer_killed_mid_put_many,
        ),
        t("consumer_killed_mid_get_many", consumer_killed_mid_get_many),
        t(
            "consumer_killed_taking_a_spilled_message_loses_only_it",
            consumer_killed_taking_a_spill,
        ),
        t(
            "joinable_producer_killed_while_blocked_does_not_hang_join",
            joinable_producer_killed_while_blocked,
        ),
    ]
}

/// In this process, encoding or decoding the message with this id stalls for good (see [`Msg`]).
static STALL_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// A message id whose serde impls stall on the id in [`STALL_AT`]: the victim is then inside
/// `put_many`/`get_many`, between the claim of its run of slots and their publication (or release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg(u64);

fn stall_if_chosen(id: u64) {
    if STALL_AT.load(Ordering::Relaxed) == id {
        say("stalled");
        common::sleep_forever();
    }
}

impl Serialize for Msg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        stall_if_chosen(self.0);
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Msg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        stall_if_chosen(id);
        Ok(Msg(id))
    }
}

fn msgs(ids: std::ops::Range<u64>) -> Vec<Msg> {
    ids.map(Msg).collect()
}

/// Takes messages until `n` arrived, each call bounded; panics on anything but a message or a timeout.
fn take(q: &Queue<Msg>, n: usize, what: &str) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let want = n - out.len();
        match q.get_many_timeout(&mut out, want, BOUND) {
            Ok(_) => {}
            Err(e) => panic!("{what}: get_many after {} messages: {e}", out.len()),
        }
    }
    out.into_iter().map(|m| m.0).collect()
}

/// Child: `put_many` of ids `0..8`, then of `8..16`, stalling while encoding id 10: the first batch is
/// published, ids 8 and 9 of the second are copied into their claimed slots and not published (a batch
/// publishes at its end), the slots claimed for ids 10..16 are not written.
fn stalled_producer(arg: &str) {
    let [name] = fields(arg, ',');
    let q = Queue::<Msg>::open(name).expect("open queue");
    STALL_AT.store(10, Ordering::Relaxed);
    q.put_many(&msgs(0..8)).expect("put_many");
    q.put_many(&msgs(8..16)).expect("put_many");
    unreachable!("the encode of id 10 stalls");
}

/// Child: `get_many` of up to 16 ids, stalling while decoding id 5: ids 0..5 are taken and their slots
/// freed, the messages 5..16 are claimed and not.
fn stalled_consumer(arg: &str) {
    let [name] = fields(arg, ',');
    let q = Queue::<Msg>::open(name).expect("open queue");
    STALL_AT.store(5, Ordering::Relaxed);
    let mut out = Vec::new();
    q.get_many(&mut out, CAPACITY).expect("get_many");
    unreachable!("the decode of id 5 stalls");
}

/// Fills and drains the whole ring twice from this process: every slot is usable, in order.
fn fill_and_drain(q: &Queue<Msg>, base: u64) {
    for lap in 0..2 {
        let from = base + lap * CAPACITY as u64;
        let ids = msgs(from..from + CAPACITY as u64);
        assert_eq!(
            q.put_many_timeout(&ids, BOUND).expect("put_many after"),
            CAPACITY
        );
        assert_eq!(
            take(q, CAPACITY, "drain"),
            (from..from + CAPACITY as u64).collect::<Vec<_>>()
        );
    }
    assert!(q.is_empty());
}

/// The producer dies holding eight claimed, unpublished slots (two of them already written) after a
/// published batch of eight. A consumer gets those eight, then (once it has found the claimer dead)
/// skips the whole abandoned run, written messages included; a new producer's messages follow, once
/// each and in order; the ring is whole afterwards.
fn producer_killed_mid_put_many() {
    let name = common::unique_name("bprod");
    let q = Queue::<Msg>::create(&name, CAPACITY, 64).expect("create queue");
    let mut kid = Kid::spawn("queue_batch_stalled_producer", &name, BOUND);
    kid.expect_line("stalled");
    assert_eq!(
        q.len(),
        16,
        "the victim claimed its whole second batch first"
    );
    kid.kill();
    bounded("survivors after a producer killed mid put_many", BOUND, {
        let q = q.clone();
        move || {
            let producer = {
                let q = q.clone();
                std::thread::spawn(move || q.put_many(&msgs(100..140)))
            };
            let got = take(&q, 8 + 40, "consumer");
            assert_eq!(
                producer.join().expect("producer thread").expect("put_many"),
                40
            );
            // Checked before the ring is reused, so that a wrong delivery fails here, by name.
            let mut want: Vec<u64> = (0..8).collect();
            want.extend(100..140);
            assert_eq!(
                got, want,
                "published ids once and in order, abandoned ones (8 and 9 were written) never"
            );
            fill_and_drain(&q, 1000);
        }
    });
    assert!(matches!(q.try_get(), Err(Error::Empty)));
}

/// The consumer dies with eleven messages claimed (ids 5..16) after taking five. A producer that needs
/// their slots frees them (the messages are lost: they were handed to the dead consumer, and nobody
/// else gets them); everything put afterwards is delivered once and in order.
fn consumer_killed_mid_get_many() {
    let name = common::unique_name("bcons");
    let q = Queue::<Msg>::create(&name, CAPACITY, 64).expect("create queue");
    assert_eq!(q.try_put_many(&msgs(0..16)).expect("fill"), CAPACITY);
    let mut kid = Kid::spawn("queue_batch_stalled_consumer", &name, BOUND);
    kid.expect_line("stalled");
    kid.kill();
    let got = bounded("survivors after a consumer killed mid get_many", BOUND, {
        let q = q.clone();
        move || {
            let producer = {
                let q = q.clone();
                std::thread::spawn(move || q.put_many(&msgs(16..64)))
            };
            let got = take(&q, 48, "consumer");
            assert_eq!(
                producer.join().expect("producer thread").expect("put_many"),
                48
            );
            fill_and_drain(&q, 1000);
            got
        }
    });
    assert_eq!(
        got,
        (16..64).collect::<Vec<_>>(),
        "ids 0..5 were taken by the victim, 5..16 lost with it; nothing twice"
    );
    assert!(matches!(q.try_get(), Err(Error::Empty)));
}

// ------------------------------------------------------- a consumer killed while taking a spilled message

/// Slots (of [`SLOT_BYTES`] bytes) of the queue below: room for every message at once.
const SPILL_CAPACITY: usize = 128;
const SLOT_BYTES: usize = 64;
/// The spilled message's padding: well past a slot, so it goes to a block of its own.
const BIG: usize = 16 << 10;
/// Small messages behind the spilled one: more than one batch's worth.
const SMALL_AFTER: u64 = 64;

/// In this process, decoding an [`Item`] prints `decoded <id>` (the victim's record of what it took).
static REPORT: AtomicBool = AtomicBool::new(false);

/// A message with an id and some padding, whose decoder stalls on the id in [`STALL_AT`] (after
/// reading the id, before the padding: inside the copy of a spilled message, whose block `get_many`
/// has opened and unlinked by then) and, in the victim, reports every id it decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    id: u64,
    pad: Vec<u8>,
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.id, &self.pad).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an id and its padding")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Item, A::Error> {
                use serde::de::Error as _;
                let id: u64 = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                stall_if_chosen(id);
                let pad = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if REPORT.load(Ordering::Relaxed) {
                    say(&format!("decoded {id}"));
                }
                Ok(Item { id, pad })
            }
        }
        d.deserialize_tuple(2, V)
    }
}

fn item(id: u64, spilled: bool) -> Item {
    let pad = if spilled { BIG } else { 8 };
    Item {
        id,
        pad: vec![id as u8; pad],
    }
}

/// Child: `get_many` of up to 64 messages, reporting each message it decoded and stalling in the copy
/// of the spilled message `stall`.
fn stalled_spill_consumer(arg: &str) {
    let [name, stall] = fields(arg, ',');
    let q = Queue::<Item>::open(name).expect("open queue");
    STALL_AT.store(stall.parse().expect("an id"), Ordering::Relaxed);
    REPORT.store(true, Ordering::Relaxed);
    let mut out = Vec::new();
    q.get_many(&mut out, 64).expect("get_many");
    unreachable!("the decode of the spilled message stalls");
}

/// Small messages `0..before`, a spilled one (id `before`), then [`SMALL_AFTER`] small ones; a
/// consumer's `get_many` of 64 stalls copying the spilled message and is killed there. The module docs
/// of the queue promise it loses that message, besides what it had already taken: so every small
/// message is either one the victim decoded or one a survivor gets, once, in order, and those behind
/// the spilled one are all a survivor's (the victim's run ended at it); the victim holds
/// no slot (the whole ring can be filled at once); the spilled message's block is gone (unlinked when
/// it was opened). Before the fix the victim's run went on past the spilled message and stayed
/// claimed during the copy, and its messages were freed with their slots: lost without being taken.
/// No timing: the kill lands in the stalled decoder, after the victim said so.
fn consumer_killed_taking_a_spill() {
    // The spilled message first (a run of its own), and after a few small ones (the end of a run).
    for before in [0, 8] {
        let name = common::unique_name("bspill");
        let q = Queue::<Item>::create(&name, SPILL_CAPACITY, SLOT_BYTES).expect("create queue");
        let id = crate::queue_unbounded::queue_id(&q.handle());
        let spill_blocks = || {
            crate::queue_unbounded::group_files(id)
                .into_iter()
                .filter(|n| n.contains("-s"))
                .count()
        };
        let last = before + SMALL_AFTER;
        let items: Vec<Item> = (0..=last).map(|i| item(i, i == before)).collect();
        assert_eq!(q.try_put_many(&items).expect("fill"), items.len());
        assert_eq!(spill_blocks(), 1, "the large message is spilled");
        let mut kid = Kid::spawn(
            "queue_batch_stalled_spill_consumer",
            &format!("{name},{before}"),
            BOUND,
        );
        let mut taken_by_victim = Vec::new();
        loop {
            let line = kid.next_line();
            if line == "stalled" {
                break;
            }
            let got = line
                .strip_prefix("decoded ")
                .and_then(|n| n.parse::<u64>().ok());
            taken_by_victim.push(got.unwrap_or_else(|| panic!("the victim said {line:?}")));
        }
        kid.kill();
        let survivors = bounded(
            "a survivor after a consumer killed taking a spill",
            BOUND,
            {
                let q = q.clone();
                move || {
                    let mut out = Vec::new();
                    loop {
                        match q.try_get_many(&mut out, SPILL_CAPACITY) {
                            Ok(_) => {}
                            Err(Error::Empty) => break,
                            Err(e) => panic!("get_many after {} messages: {e}", out.len()),
                        }
                    }
                    out
                }
            },
        );
        let mut ids: Vec<u64> = survivors.iter().map(|m| m.id).collect();
        assert!(
            survivors.iter().all(|m| *m == item(m.id, false)),
            "messages intact"
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
        ids.extend(&taken_by_victim);
        ids.sort_unstable();
        let small: Vec<u64> = (0..=last).filter(|&i| i != before).collect();
        assert_eq!(
            ids, small,
            "with the spilled message {before} being copied, every small message is taken once, by \
             the victim (before it: {taken_by_victim:?}) or by a survivor, none lost with the victim"
        );
        // And the victim took none of those behind the spilled message (its run ended there): they
        // were still in the queue during the copy, and a survivor got them.
        assert!(
            taken_by_victim.iter().all(|&i| i < before),
            "the victim took {taken_by_victim:?} before copying the spilled message {before}"
        );
        assert_eq!(spill_blocks(), 0, "the spilled message's block was removed");
        // The victim holds no slot: the whole ring takes messages at once, and gives them back.
        let refill: Vec<Item> = (1000..1000 + SPILL_CAPACITY as u64)
            .map(|i| item(i, false))
            .collect();
        assert_eq!(q.try_put_many(&refill).expect("refill"), SPILL_CAPACITY);
        let mut out = Vec::new();
        assert_eq!(
            q.try_get_many(&mut out, SPILL_CAPACITY).expect("drain"),
            SPILL_CAPACITY
        );
        assert_eq!(out, refill);
        // The suite's leak check knows only names with the run's tag; a queue's group is checked here:
        // with its last handle dropped (the victim's went with it), nothing of it is left.
        drop(q);
        let left = crate::queue_unbounded::group_files_once_released(id);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

// ---- review (rev-queue): JoinableQueue's count and a producer killed inside `put` ----

/// Child: a `JoinableQueue::put` into the full queue `name`, which blocks (the queue is full).
fn joinable_blocked_producer(arg: &str) {
    let [name] = fields(arg, ',');
    let q = mproc::JoinableQueue::from_queue(Queue::<u64>::open(name).expect("open queue"));
    say("putting");
    q.put(&2).expect("put");
    unreachable!("the queue stays full until the parent kills us");
}

/// A producer SIGKILLed while its `JoinableQueue::put` waits for space (an unbounded wait, the normal
/// state of a producer ahead of its consumers) never put its message, yet `put` counted it before
/// waiting: the count stays one above the messages that exist, and `join` without a timeout never
/// returns, though every message put was taken and marked done. (Python counts only once the queue
/// had room: its `put` acquires the bounded semaphore before `_unfinished_tasks.release()`.)
fn joinable_producer_killed_while_blocked() {
    let name = common::unique_name("jprod");
    let q = mproc::JoinableQueue::from_queue(Queue::<u64>::create(&name, 1, 64).expect("create"));
    q.put(&1).expect("fill the one slot");
    let mut kid = Kid::spawn("queue_joinable_blocked_producer", &name, BOUND);
    kid.expect_line("putting");
    // The child is now inside `put`, waiting for space (before the fix it has already counted its
    // message: `unfinished` reads 2 here).
    std::thread::sleep(std::time::Duration::from_millis(200));
    kid.assert_running();
    kid.kill();
    assert_eq!(q.get().expect("get"), 1);
    q.task_done().expect("task_done");
    assert!(q.queue().try_get().is_err(), "nothing else was ever put");
    let r = q.join_timeout(std::time::Duration::from_secs(2));
    assert!(
        r.is_ok(),
        "join: {r:?} with every message put taken and done (unfinished = {}): a plain join() hangs forever",
        q.unfinished()
    );
}
