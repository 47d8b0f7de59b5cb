//! `put_many`/`get_many`: order, partial batches, dead batch claimers, a model check, and claims
//! revoked while a message is decoded.

use super::*;

// ---- batches: put_many / get_many (issue 12) ----

#[test]
fn batch_keeps_order_across_laps_and_batch_sizes() {
    let q: Queue<u64, Raw> = Queue::new(7).unwrap();
    let items: Vec<u64> = (0..1000).collect();
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(q.put_many(&items).unwrap(), 1000));
        let mut out = Vec::new();
        let mut max = 1;
        while out.len() < 1000 {
            let before = out.len();
            let n = q.get_many(&mut out, max).unwrap();
            assert!((1..=max).contains(&n), "took {n} with max {max}");
            assert_eq!(out.len(), before + n);
            max = max % 70 + 1; // every size from 1 to past a whole batch (64)
        }
        assert_eq!(out, items);
    });
    assert!(q.is_empty());
}

#[test]
fn a_push_batch_appears_to_consumers_at_its_end() {
    let q: Queue<u32, Raw> = Queue::new(8).unwrap();
    let mut batch = ring_of(&q).claim_push(3, None).unwrap();
    assert_eq!(batch.remaining(), 3);
    for v in [1u32, 2] {
        assert!(batch.write(&v.to_le_bytes()).unwrap());
    }
    // Two messages are copied in, and nothing is published yet.
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    // The drop publishes both, in order, and gives the unused third slot back.
    drop(batch);
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 8).unwrap(), 2);
    assert_eq!(out, [1, 2]);
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    // The ring goes on from the stamp after the batch.
    q.put(&3).unwrap();
    assert_eq!(q.get().unwrap(), 3);
}

#[test]
fn publish_filled_sends_what_is_copied_and_never_a_revoked_slot() {
    let q: Queue<u32, Raw> = Queue::new(8).unwrap();
    let ring = ring_of(&q);
    let me = crate::sys::proc::current().tid;
    let mut batch = ring.claim_push(4, None).unwrap();
    assert!(batch.write(&1u32.to_le_bytes()).unwrap());
    // Garbage from another process revokes the next claim: the message goes into the slot after it.
    ring.force_claim_for_test(1, 0x3fff_fffe, false);
    assert!(!batch.write(&2u32.to_le_bytes()).unwrap());
    assert!(batch.write(&2u32.to_le_bytes()).unwrap());
    // More garbage writes our claim back into the revoked slot: it is still not ours to publish (it
    // holds no message of ours).
    ring.force_claim_for_test(1, me, false);
    batch.publish_filled();
    let mut out = Vec::new();
    assert_eq!(
        q.try_get_many(&mut out, 8).unwrap(),
        1,
        "out early, in order"
    );
    assert_eq!(out, [1]);
    // The last claimed slot, filled after that, goes out with the drop, and only then.
    assert!(batch.write(&3u32.to_le_bytes()).unwrap());
    assert_eq!(batch.remaining(), 0);
    // Once the revoked slot names a dead claimer, consumers skip it.
    ring.force_claim_for_test(1, 0x3fff_fffe, false);
    let bound = Duration::from_secs(30);
    assert_eq!(q.get_many_timeout(&mut out, 8, bound).unwrap(), 1);
    assert_eq!(out, [1, 2], "3 is not published before the drop");
    drop(batch);
    assert_eq!(q.get_many_timeout(&mut out, 8, bound).unwrap(), 1);
    assert_eq!(out, [1, 2, 3]);
    q.put(&4).unwrap();
    assert_eq!(q.get_timeout(bound).unwrap(), 4);
}

#[test]
fn batch_larger_than_the_ring_and_than_a_batch() {
    let q: Queue<u32, Raw> = Queue::new(100).unwrap();
    let items: Vec<u32> = (0..100).collect();
    assert_eq!(q.try_put_many(&items).unwrap(), 100);
    assert_eq!(q.len(), 100);
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 1000).unwrap(), 100);
    assert_eq!(out, items);
    assert_eq!(q.get_many(&mut out, 0).unwrap(), 0);
}

#[test]
fn partial_batches_when_nearly_full_or_nearly_empty() {
    let q: Queue<u32, Raw> = Queue::new(8).unwrap();
    q.put_many(&[0, 1, 2, 3, 4]).unwrap();
    // Nearly full: only the first three of six fit, in order.
    assert_eq!(q.try_put_many(&[5, 6, 7, 8, 9, 10]).unwrap(), 3);
    assert!(matches!(q.try_put_many(&[8]), Err(Error::Full)));
    assert_eq!(
        q.put_many_timeout(&[], Duration::from_millis(1)).unwrap(),
        0
    );
    assert!(matches!(
        q.put_many_timeout(&[8, 9], Duration::from_millis(2)),
        Err(Error::Timeout)
    ));
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 6).unwrap(), 6);
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    // Six free now: a timed put of ten puts six and says so.
    let ten: Vec<u32> = (8..18).collect();
    assert_eq!(
        q.put_many_timeout(&ten, Duration::from_millis(2)).unwrap(),
        6
    );
    // Nearly empty after this: two left are all a get_many of ten takes.
    out.clear();
    assert_eq!(q.get_many(&mut out, 7).unwrap(), 7);
    assert_eq!(out, [6, 7, 8, 9, 10, 11, 12]);
    out.clear();
    assert_eq!(q.get_many(&mut out, 10).unwrap(), 1);
    assert_eq!(out, [13]);
    assert!(matches!(q.try_get_many(&mut out, 3), Err(Error::Empty)));
    assert!(matches!(
        q.get_many_timeout(&mut out, 3, Duration::from_millis(2)),
        Err(Error::Timeout)
    ));
    assert_eq!(out, [13]);
}

/// A message that refuses to be encoded when it holds 0: a put of it fails midway through a batch.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Refusing(u8);

impl serde::Serialize for Refusing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return Err(serde::ser::Error::custom("zero is refused"));
        }
        s.serialize_newtype_struct("Refusing", &self.0)
    }
}

#[test]
fn batch_put_that_fails_midway_leaves_a_consistent_ring() {
    let q: Queue<Refusing> = Queue::with_max_message(4, 16).unwrap();
    let items = [Refusing(1), Refusing(2), Refusing(0), Refusing(4)];
    assert!(matches!(q.put_many(&items), Err(Error::Encode(_))));
    // The two before the bad one went in; the slots claimed for the rest were given back (tombstones),
    // which consumers skip.
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 10).unwrap(), 2);
    assert_eq!(out, [Refusing(1), Refusing(2)]);
    // Every slot works again, across a lap.
    for lap in 1..4u8 {
        q.put_many(&[
            Refusing(lap),
            Refusing(lap + 10),
            Refusing(lap + 20),
            Refusing(lap + 30),
        ])
        .unwrap();
        out.clear();
        assert_eq!(q.get_many(&mut out, 4).unwrap(), 4);
        assert_eq!(out[3], Refusing(lap + 30));
    }
}

#[test]
fn batch_get_reports_a_bad_message_and_keeps_the_others() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    q.put_many(&[1, 2, 3]).unwrap();
    ring_of(&q).force_len_for_test(1, u32::MAX);
    let mut out = Vec::new();
    assert!(matches!(q.get_many(&mut out, 3), Err(Error::Corrupted(_))));
    assert_eq!(out, [1, 3]);
    q.put(&4).unwrap();
    assert_eq!(q.get().unwrap(), 4);
}

#[test]
fn batch_close_drains_then_fails() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    q.put_many(&[1, 2]).unwrap();
    q.close();
    assert!(matches!(q.put_many(&[3]), Err(Error::Closed)));
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 10).unwrap(), 2);
    assert!(matches!(q.get_many(&mut out, 10), Err(Error::Closed)));
    assert_eq!(out, [1, 2]);
}

#[test]
fn close_wakes_a_blocked_batch_getter_and_putter() {
    let q: Queue<u32, Raw> = Queue::new(2).unwrap();
    std::thread::scope(|s| {
        let g = s.spawn(|| q.get_many(&mut Vec::new(), 4));
        while !g.is_finished() {
            q.close();
            std::thread::yield_now();
        }
        assert!(matches!(g.join().unwrap(), Err(Error::Closed)));
    });
    let q: Queue<u32, Raw> = Queue::new(2).unwrap();
    q.put_many(&[1, 2]).unwrap();
    std::thread::scope(|s| {
        let p = s.spawn(|| q.put_many(&[3, 4]));
        while !p.is_finished() {
            q.close();
            std::thread::yield_now();
        }
        assert!(matches!(p.join().unwrap(), Err(Error::Closed)));
    });
}

#[test]
fn dead_batch_producer_run_becomes_tombstones() {
    let q: Queue<u32, Raw> = Queue::new(8).unwrap();
    // A batch producer (impossible tid: above pid_max) claimed stamps 0, 1, 2 and died before
    // publishing any of them.
    for s in 0..3 {
        ring_of(&q).force_claim_for_test(s, 0x3fff_fffe, false);
    }
    q.put_many(&[7, 8]).unwrap();
    let mut out = Vec::new();
    let n = q
        .get_many_timeout(&mut out, 8, Duration::from_secs(30))
        .unwrap();
    assert_eq!((n, &out[..]), (2, &[7, 8][..]));
    // The whole ring is usable again.
    let eight: Vec<u32> = (0..8).collect();
    assert_eq!(q.try_put_many(&eight).unwrap(), 8);
    out.clear();
    assert_eq!(q.try_get_many(&mut out, 8).unwrap(), 8);
    assert_eq!(out, eight);
}

#[test]
fn dead_batch_consumer_run_frees_its_slots() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    q.put_many(&[0, 1, 2, 3]).unwrap();
    // A batch consumer claimed the messages of stamps 0 and 1 and died before freeing the slots.
    for s in 0..2 {
        ring_of(&q).force_claim_for_test(s, 0x3fff_fffe, true);
    }
    assert_eq!(
        q.put_many_timeout(&[4, 5], Duration::from_secs(30))
            .unwrap(),
        2
    );
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 8).unwrap(), 4);
    // 0 and 1 were handed to the dead consumer: lost, once.
    assert_eq!(out, [2, 3, 4, 5]);
}

/// Single and batch producers and consumers on one small ring: every message comes out exactly once,
/// and each consumer sees each producer's messages in order.
#[test]
fn mixed_single_and_batch_producers_and_consumers() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 10_000;
    let q: Queue<u64, Raw> = Queue::new(16).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let taken = AtomicU64::new(0);
    std::thread::scope(|s| {
        for p in 0..PRODUCERS {
            let q = &q;
            s.spawn(move || {
                let items: Vec<u64> = (0..PER).map(|i| p << 32 | i).collect();
                if p % 2 == 0 {
                    for v in &items {
                        q.put(v).unwrap();
                    }
                } else {
                    // Batches of varying size, some larger than the ring.
                    let mut rest = &items[..];
                    let mut k = 1;
                    while !rest.is_empty() {
                        let (now, later) = rest.split_at(k.min(rest.len()));
                        assert_eq!(q.put_many(now).unwrap(), now.len());
                        rest = later;
                        k = k % 40 + 1;
                    }
                }
            });
        }
        for c in 0..4 {
            let (q, taken, seen) = (&q, &taken, &seen);
            s.spawn(move || {
                let mut mine = Vec::new();
                let total = PRODUCERS * PER;
                loop {
                    let done = taken.load(Ordering::Relaxed);
                    if done >= total {
                        break;
                    }
                    if c % 2 == 0 {
                        match q.get_timeout(Duration::from_millis(20)) {
                            Ok(v) => {
                                mine.push(v);
                                taken.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(Error::Timeout) => {}
                            Err(e) => panic!("get: {e}"),
                        }
                    } else {
                        let before = mine.len();
                        match q.get_many_timeout(&mut mine, 1 + c * 9, Duration::from_millis(20)) {
                            Ok(n) => {
                                assert_eq!(mine.len(), before + n);
                                taken.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(Error::Timeout) => {}
                            Err(e) => panic!("get_many: {e}"),
                        }
                    }
                }
                seen.lock().unwrap().push(mine);
            });
        }
    });
    let all = seen.into_inner().unwrap();
    let mut set = HashSet::new();
    for mine in &all {
        let mut last = [None::<u64>; PRODUCERS as usize];
        for &v in mine {
            assert!(set.insert(v), "duplicate {v:#x}");
            let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
            assert!(
                last[p].is_none_or(|l| l < i),
                "order broken for producer {p}"
            );
            last[p] = Some(i);
        }
    }
    assert_eq!(set.len() as u64, PRODUCERS * PER);
}

mod batch_model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8),
        PutMany(Vec<u8>),
        Get,
        GetMany(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Put),
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::PutMany),
            Just(Op::Get),
            (0usize..80).prop_map(Op::GetMany),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// One thread, `try_` calls only: the queue behaves as a bounded FIFO (`VecDeque` capped at the
        /// capacity), whatever mix of single and batch calls, across many laps of odd-sized rings.
        #[test]
        fn single_and_batch_calls_match_a_bounded_fifo(
            cap in 1usize..20,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let q: Queue<u8, Raw> = Queue::new(cap).unwrap();
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Put(v) => match q.try_put(&v) {
                        Ok(()) => model.push_back(v),
                        Err(Error::Full) => prop_assert_eq!(model.len(), cap),
                        Err(e) => panic!("try_put: {e}"),
                    },
                    Op::PutMany(vs) => {
                        let room = cap - model.len();
                        match q.try_put_many(&vs) {
                            Ok(n) => {
                                prop_assert_eq!(n, vs.len().min(room));
                                model.extend(&vs[..n]);
                            }
                            Err(Error::Full) => prop_assert!(room == 0 && !vs.is_empty()),
                            Err(e) => panic!("try_put_many: {e}"),
                        }
                    }
                    Op::Get => match q.try_get() {
                        Ok(v) => prop_assert_eq!(Some(v), model.pop_front()),
                        Err(Error::Empty) => prop_assert!(model.is_empty()),
                        Err(e) => panic!("try_get: {e}"),
                    },
                    Op::GetMany(max) => {
                        let mut out = Vec::new();
                        match q.try_get_many(&mut out, max) {
                            Ok(n) => {
                                prop_assert_eq!(n, max.min(model.len()));
                                let want: Vec<u8> = model.drain(..n).collect();
                                prop_assert_eq!(out, want);
                            }
                            Err(Error::Empty) => prop_assert!(model.is_empty() && max > 0),
                            Err(e) => panic!("try_get_many: {e}"),
                        }
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}

#[test]
fn batches_spill_large_messages_and_take_them_back() {
    // Messages at, around and far above the inline limit, mixed with small ones, in one batch each way.
    let q: Queue<Vec<u8>> = Queue::with_max_message(8, 64).unwrap();
    let inline = q.max_message_size();
    let sizes = [1, inline - 2, inline - 1, inline, inline + 1, 10_000, 3];
    let items: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| vec![i as u8; n])
        .collect();
    assert_eq!(q.put_many(&items).unwrap(), items.len());
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 100).unwrap(), items.len());
    assert_eq!(out, items);
    assert!(q.is_empty());
}

#[test]
fn a_batch_run_ends_after_a_spilled_message() {
    // The block of a spilled message is taken after the run is released (a long copy): the run must
    // not hold, nor take, the messages behind it.
    let q: Queue<Vec<u8>> = Queue::with_max_message(16, 32).unwrap();
    let slot_size = q.max_message_size() + 1;
    let items: Vec<Vec<u8>> = [3, 4, 5000, 6, 7000, 7000, 8]
        .iter()
        .enumerate()
        .map(|(i, &n)| vec![i as u8; n])
        .collect();
    assert_eq!(q.put_many(&items).unwrap(), items.len());
    let run = |q: &Queue<Vec<u8>>| {
        let mut batch = q
            .ring()
            .claim_pop(64, Some(slot_size as u32), Some(Instant::now()))
            .unwrap();
        let mut lens = Vec::new();
        while let Some(m) = batch.next(|b| b.len()) {
            match m {
                Taken::Message(len) => lens.push(len),
                Taken::Nothing | Taken::BadLength(_) => panic!("an honest run holds messages only"),
            }
        }
        lens
    };
    // Runs (of encoded lengths: postcard puts a one-byte length first): two inline messages and a
    // reference; one and a reference; a reference alone; the rest.
    assert_eq!(run(&q), [4, 5, slot_size]);
    assert_eq!(run(&q), [7, slot_size]);
    assert_eq!(run(&q), [slot_size]);
    assert_eq!(run(&q), [9]);
    // The references taken above were never opened: their blocks wait for the last handle.
    assert_eq!(q.block_files().len(), 3);
    // `get_many` still takes everything there in one call, spilled messages in their places.
    assert_eq!(q.put_many(&items).unwrap(), items.len());
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 100).unwrap(), items.len());
    assert_eq!(out, items);
    assert_eq!(q.block_files().len(), 3);
}

#[test]
fn a_spill_reference_taken_and_never_opened_loses_its_message_not_its_block() {
    // What a consumer killed inside `get_many` between releasing its run and opening a spilled
    // message's block leaves: the reference is out of the ring, the block is named, nobody else will
    // take it (the message is lost, once), and the queue's last handle removes the file.
    let q: Queue<Vec<u8>> = Queue::with_max_message(4, 32).unwrap();
    q.put_many(&[vec![1; 4000], vec![2; 3]]).unwrap();
    let names = q.block_files();
    assert_eq!(names.len(), 1);
    let other: Queue<Vec<u8>> = Queue::from_handle(&q.handle()).unwrap();
    let r = q.ring().pop(None, SpillRef::parse).unwrap().unwrap();
    assert_eq!(r.len, 4002, "postcard: two bytes of length, then the bytes");
    drop(q);
    let mut out = Vec::new();
    assert_eq!(other.try_get_many(&mut out, 4).unwrap(), 1);
    assert_eq!(out, [vec![2; 3]]);
    assert!(matches!(other.try_get(), Err(Error::Empty)));
    assert_eq!(
        other.block_files(),
        names,
        "named until the last handle drops"
    );
    drop(other);
    for n in names {
        assert!(
            !std::path::Path::new("/dev/shm").join(&n).exists(),
            "{n} left behind"
        );
    }
}

#[test]
fn batches_on_an_unbounded_queue_keep_order_and_counts() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    let items: Vec<Vec<u8>> = (0..200u32)
        .map(|i| vec![i as u8; (i as usize * 37) % 5000])
        .collect();
    assert_eq!(q.put_many(&items).unwrap(), 200);
    assert_eq!(q.try_put_many(&items[..3]).unwrap(), 3);
    let mut out = Vec::new();
    assert_eq!(q.get_many(&mut out, 150).unwrap(), 150);
    assert_eq!(q.try_get_many(&mut out, 1000).unwrap(), 53);
    assert_eq!(&out[..200], &items[..]);
    assert_eq!(&out[200..], &items[..3]);
    assert!(matches!(q.try_get_many(&mut out, 4), Err(Error::Empty)));
    assert!(matches!(
        q.get_many_timeout(&mut out, 4, Duration::from_millis(5)),
        Err(Error::Timeout)
    ));
    q.close();
    assert!(matches!(q.get_many(&mut out, 4), Err(Error::Closed)));
}

thread_local! {
    /// The ring and stamp whose consumer claim [`RevokingCodec`] revokes while it decodes.
    static REVOKE_WHILE_DECODING: std::cell::Cell<Option<(Queue<u32, RevokingCodec>, u64)>> =
        const { std::cell::Cell::new(None) };
}

/// `Raw` for `u32`, except that its first `decode` after [`REVOKE_WHILE_DECODING`] is set hands the
/// slot being read to another claimer first, as garbage from another process could.
struct RevokingCodec;

impl Codec<u32> for RevokingCodec {
    const NAME: &'static str = "raw-revoking-test";

    fn default_max_size() -> usize {
        4
    }

    fn with_bytes<R>(value: &u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        <Raw as Codec<u32>>::with_bytes(value, f)
    }

    fn decode(bytes: &[u8]) -> Result<u32> {
        if let Some((q, s)) = REVOKE_WHILE_DECODING.take() {
            ring_of(&q).force_claim_for_test(s, 0x3fff_fffe, true);
        }
        <Raw as Codec<u32>>::decode(bytes)
    }
}

#[test]
fn get_many_drops_a_message_whose_claim_was_revoked_while_it_was_decoded() {
    // `get_many` decodes each message straight into the caller's vector; a claim revoked meanwhile
    // means its bytes may be another producer's half-written message, so the value must come out again.
    let q: Queue<u32, RevokingCodec> = Queue::new(8).unwrap();
    assert_eq!(q.put_many(&[10, 11, 12]).unwrap(), 3);
    REVOKE_WHILE_DECODING.set(Some((q.clone(), 1)));
    let mut out = vec![7];
    assert_eq!(q.try_get_many(&mut out, 8).unwrap(), 2);
    assert_eq!(
        out,
        [7, 10, 12],
        "the revoked message is not delivered, the others are"
    );
    assert!(REVOKE_WHILE_DECODING.take().is_none(), "the revoke ran");
}
