use super::ring::Ring;
use super::*;
use crate::codec::Raw;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn smoke() {
    let q: Queue<String> = Queue::new(4).unwrap();
    q.put(&"a".into()).unwrap();
    q.put(&"b".into()).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.get().unwrap(), "b");
    assert!(q.is_empty());
}

#[test]
fn capacity_one_and_full() {
    let q: Queue<u64, Raw> = Queue::new(1).unwrap();
    q.try_put(&1).unwrap();
    assert!(matches!(q.try_put(&2), Err(Error::Full)));
    assert!(matches!(
        q.put_timeout(&2, Duration::from_millis(2)),
        Err(Error::Timeout)
    ));
    assert_eq!(q.try_get().unwrap(), 1);
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    for i in 0..10 {
        q.put(&i).unwrap();
        assert_eq!(q.get().unwrap(), i);
    }
}

#[test]
fn capacity_exact_for_odd_sizes() {
    for cap in [2, 3, 5, 7, 8] {
        let q: Queue<u32, Raw> = Queue::new(cap).unwrap();
        for i in 0..cap as u32 {
            q.try_put(&i).unwrap();
        }
        assert!(matches!(q.try_put(&99), Err(Error::Full)), "cap {cap}");
        assert_eq!(q.len(), cap);
        for lap in 0..3u32 {
            for i in 0..cap as u32 {
                assert_eq!(q.try_get().unwrap(), i + lap * 100);
                q.try_put(&(i + (lap + 1) * 100)).unwrap();
            }
        }
    }
}

#[test]
fn too_large_is_refused_at_put() {
    let q: Queue<Vec<u8>> = Queue::with_max_message(2, 16).unwrap();
    assert!(matches!(
        q.put(&vec![0; 100]),
        Err(Error::MessageTooLarge { max: 16, .. })
    ));
    q.put(&vec![1; 10]).unwrap();
    assert_eq!(q.get().unwrap(), vec![1; 10]);
}

#[test]
fn close_drains_then_fails() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    q.put(&1).unwrap();
    q.close();
    assert!(matches!(q.put(&2), Err(Error::Closed)));
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get(), Err(Error::Closed)));
}

#[test]
fn close_wakes_a_blocked_getter() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| q.get());
        while !h.is_finished() {
            q.close();
            std::thread::yield_now();
        }
        assert!(matches!(h.join().unwrap(), Err(Error::Closed)));
    });
}

#[test]
fn mpmc_exactly_once_in_producer_order() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 20_000;
    let q: Queue<u64, Raw> = Queue::new(64).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let taken = AtomicU64::new(0);
    std::thread::scope(|s| {
        for p in 0..PRODUCERS {
            let q = &q;
            s.spawn(move || {
                for i in 0..PER {
                    q.put(&(p << 32 | i)).unwrap();
                }
            });
        }
        for _ in 0..4 {
            s.spawn(|| {
                let mut mine = Vec::new();
                while taken.fetch_add(1, Ordering::Relaxed) < PRODUCERS * PER {
                    mine.push(q.get().unwrap());
                }
                seen.lock().unwrap().push(mine);
            });
        }
    });
    let all = seen.into_inner().unwrap();
    let mut set = HashSet::new();
    for mine in &all {
        // Per producer, a consumer sees increasing sequence numbers.
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

fn ring_of<T, C: Codec<T>>(q: &Queue<T, C>) -> &Ring {
    q.ring()
}

#[test]
fn dead_producer_claim_becomes_a_tombstone() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    // A producer (impossible tid: above pid_max) claimed stamp 0 and died before publishing.
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, false);
    q.put(&7).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 7);
}

#[test]
fn dead_consumer_claim_frees_the_slot() {
    let q: Queue<u32, Raw> = Queue::new(1).unwrap();
    q.put(&1).unwrap();
    // A consumer claimed the message of stamp 0 and died before releasing the slot.
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, true);
    q.put_timeout(&2, Duration::from_secs(30)).unwrap();
    assert_eq!(q.get().unwrap(), 2);
}

#[test]
fn corrupted_length_is_an_error_not_a_read() {
    let q: Queue<u32, Raw> = Queue::new(2).unwrap();
    q.put(&1).unwrap();
    ring_of(&q).force_len_for_test(0, u32::MAX);
    assert!(matches!(q.get(), Err(Error::Corrupted(_))));
    q.put(&2).unwrap();
    assert_eq!(q.get().unwrap(), 2);
}

#[test]
fn wrong_type_is_refused_at_open() {
    let q: Queue<Vec<u8>> = Queue::new(2).unwrap();
    q.put(&vec![0xff, 0xff]).unwrap();
    let h = q.handle();
    assert!(matches!(
        Queue::<String>::from_handle(&h),
        Err(Error::TypeMismatch { .. })
    ));
}

/// Forged `tail`/`head` hints (issue 17): whatever value, the next try_put/try_get heals the hint from the
/// slot stamps, and every message still comes out exactly once. (Not necessarily in order: a forged
/// `head` that points at a later message which is really there looks exactly like an honest one.)
#[test]
fn forged_hints_heal() {
    let nasty = [
        0u64,
        1,
        2,
        3,
        4,
        7,
        8,
        9,
        0xff,
        u64::from(crate::sys::proc::current().tid),
        1 << 31,
        (1 << 31) + 64,
        1 << 32,
        u64::MAX,
        u64::MAX - 8,
        1024 - 8,
        1024 + 8,
    ];
    for cap in [1usize, 4, 5] {
        for tail in [true, false] {
            for &v in &nasty {
                let q: Queue<u64, Raw> = Queue::new(cap).unwrap();
                let held = cap.min(3) as u64;
                for i in 0..held {
                    q.try_put(&i).unwrap();
                }
                q.ring().force_hint_for_test(tail, v);
                let what = format!("cap {cap}, {} = {v:#x}", if tail { "tail" } else { "head" });
                let mut expect = 0..held;
                if held < cap as u64 {
                    q.try_put(&held)
                        .unwrap_or_else(|e| panic!("{what}: try_put: {e}"));
                    expect = 0..held + 1;
                }
                let mut got = Vec::new();
                while let Ok(x) = q.try_get() {
                    got.push(x);
                    assert!(got.len() <= cap, "{what}: more out than in: {got:?}");
                }
                let want: Vec<u64> = expect.collect();
                got.sort_unstable();
                assert_eq!(got, want, "{what}");
                // And the ring keeps working.
                for i in 0..2 * cap as u64 {
                    q.try_put(&i)
                        .unwrap_or_else(|e| panic!("{what}: after: {e}"));
                    assert_eq!(q.try_get().unwrap(), i, "{what}");
                }
            }
        }
    }
}

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

#[test]
fn batch_put_that_fails_midway_leaves_a_consistent_ring() {
    let q: Queue<Vec<u8>> = Queue::with_max_message(4, 16).unwrap();
    let items = [vec![1], vec![2], vec![0; 100], vec![4]];
    assert!(matches!(
        q.put_many(&items),
        Err(Error::MessageTooLarge { max: 16, .. })
    ));
    // The two before the bad one went in; the slots claimed for the rest were given back (tombstones),
    // which consumers skip.
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 10).unwrap(), 2);
    assert_eq!(out, [vec![1], vec![2]]);
    // Every slot works again, across a lap.
    for lap in 0..3u8 {
        q.put_many(&[vec![lap], vec![lap, 1], vec![lap, 2], vec![lap, 3]])
            .unwrap();
        out.clear();
        assert_eq!(q.get_many(&mut out, 4).unwrap(), 4);
        assert_eq!(out[3], [lap, 3]);
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
