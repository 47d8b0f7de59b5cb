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
