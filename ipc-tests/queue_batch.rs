//! Batch queue operations under SIGKILL (issue 12): a producer killed between claiming a run of slots
//! with `put_many` and publishing them, and a consumer killed in the middle of `get_many` with a run of
//! messages claimed. The kills land exactly there, not by chance: the victim's codec stops (prints
//! `stalled` and sleeps) while encoding or decoding one chosen message, which `put_many`/`get_many` do
//! with the whole run already claimed. The survivors must carry on with a consistent queue: published
//! messages are delivered once and in order, abandoned ones never (a `put_many` batch is published at
//! its end, so the victim's messages of its unfinished batch are all abandoned), nothing twice,
//! every call returns a typed result within [`BOUND`] (which proves "no hang", never a speed).

use std::sync::atomic::{AtomicU64, Ordering};

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
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue_batch", name, f);
    vec![
        t(
            "producer_killed_between_claim_and_publish",
            producer_killed_mid_put_many,
        ),
        t("consumer_killed_mid_get_many", consumer_killed_mid_get_many),
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
