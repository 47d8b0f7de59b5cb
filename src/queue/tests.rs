use super::ring::Ring;
use super::spill::{SpillRef, REF_LEN};
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
fn large_message_spills_and_small_stays_inline() {
    let q: Queue<Vec<u8>> = Queue::with_max_message(2, 16).unwrap();
    assert!(q.max_message_size() >= 16);
    q.put(&vec![0; 100]).unwrap();
    assert_eq!(q.block_files().len(), 1, "the large one is in a block");
    q.put(&vec![1; 10]).unwrap();
    assert_eq!(q.get().unwrap(), vec![0; 100]);
    assert_eq!(q.get().unwrap(), vec![1; 10]);
    assert!(q.block_files().is_empty(), "taken blocks are unlinked");
    // Every length around the boundary, in order.
    for len in 0..40 {
        q.put(&vec![len as u8; len]).unwrap();
        assert_eq!(q.get().unwrap(), vec![len as u8; len], "length {len}");
    }
    // Raw codec, a Pod larger than its own slot would be if someone asked for less.
    let raw: Queue<[u8; 128], Raw> = Queue::with_max_message(2, 8).unwrap();
    raw.put(&[9; 128]).unwrap();
    assert_eq!(raw.get().unwrap(), [9; 128]);
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

// ---- spilled messages and the unbounded queue (issue 13) ----

/// Slot bytes of exactly the slot size, as a peer could push them: `head` then zeroes.
fn forged_slot(q: &Queue<Vec<u8>>, head: &[u8]) -> Vec<u8> {
    let mut slot = vec![0u8; q.max_message_size() + 1];
    slot[..head.len()].copy_from_slice(head);
    slot
}

#[test]
fn garbage_spill_references_are_typed_errors() {
    let q: Queue<Vec<u8>> = Queue::with_max_message(4, 32).unwrap();
    let mut forged = Vec::new();
    // Not a reference at all (bad magic).
    forged.push(forged_slot(&q, &[0xAB; REF_LEN]));
    // A reference to a block that does not exist.
    let mut r = [0u8; REF_LEN];
    SpillRef {
        nonce: 0xdead_beef,
        len: 1 << 40,
    }
    .encode(&mut r);
    forged.push(forged_slot(&q, &r));
    for slot in &forged {
        q.ring().push(slot, None).unwrap();
        assert!(matches!(q.try_get(), Err(Error::Corrupted(_))), "{slot:?}");
    }
    // A real block, but the reference lies about its length: refused, and the block removed.
    q.put(&vec![5; 1000]).unwrap();
    let honest = q.ring().pop(None, SpillRef::parse).unwrap().unwrap();
    let mut r = [0u8; REF_LEN];
    SpillRef {
        nonce: honest.nonce,
        len: honest.len + 1,
    }
    .encode(&mut r);
    q.ring().push(&forged_slot(&q, &r), None).unwrap();
    assert!(matches!(q.try_get(), Err(Error::Corrupted(_))));
    assert!(q.block_files().is_empty());
    // The queue goes on.
    q.put(&vec![6; 1000]).unwrap();
    assert_eq!(q.get().unwrap(), vec![6; 1000]);
}

#[test]
fn unspilled_blocks_are_reclaimed_by_the_last_handle() {
    let q: Queue<Vec<u8>> = Queue::with_max_message(8, 16).unwrap();
    for i in 0..5u8 {
        q.put(&vec![i; 4096]).unwrap();
    }
    let names = q.block_files();
    assert_eq!(names.len(), 5);
    // A second attachment in this process (as a child's would be) keeps them alive.
    let other: Queue<Vec<u8>> = Queue::from_handle(&q.handle()).unwrap();
    let clone = q.clone();
    drop(q);
    drop(clone);
    assert_eq!(other.block_files().len(), 5, "another attachment remains");
    assert_eq!(other.get().unwrap(), vec![0; 4096]);
    drop(other);
    for n in names {
        assert!(
            !std::path::Path::new("/dev/shm").join(&n).exists(),
            "{n} left behind"
        );
    }
}

#[test]
fn unbounded_never_waits_and_keeps_order() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    assert!(q.is_unbounded());
    // 5 MiB in 20 KiB messages: several segments (1 MiB, then 2, then 4).
    let n = 256u32;
    for i in 0..n {
        let mut m = vec![i as u8; 20 * 1024];
        m[..4].copy_from_slice(&i.to_le_bytes());
        q.try_put(&m).unwrap();
    }
    assert_eq!(q.len(), n as usize);
    assert!(q.block_files().len() >= 3, "{:?}", q.block_files());
    for i in 0..n {
        let m = q.get().unwrap();
        assert_eq!(m[..4], i.to_le_bytes());
        assert!(m[4..].iter().all(|&b| b == i as u8));
    }
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    assert_eq!(q.block_files().len(), 1, "finished segments are unlinked");
    // A message larger than any segment gets its own.
    q.put(&vec![3; 70 << 20]).unwrap();
    q.put(&vec![4; 10]).unwrap();
    assert_eq!(q.get().unwrap().len(), 70 << 20);
    assert_eq!(q.get().unwrap(), vec![4; 10]);
    q.close();
    assert!(matches!(q.get(), Err(Error::Closed)));
    assert!(matches!(q.put(&vec![]), Err(Error::Closed)));
}

#[test]
fn unbounded_between_threads_and_reclaimed_on_drop() {
    let q: Queue<u64, Raw> = Queue::unbounded().unwrap();
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    q.put(&(p << 32 | i)).unwrap();
                }
            })
        })
        .collect();
    let mut last = [None::<u64>; 3];
    for _ in 0..60_000 {
        let v = q.get_timeout(Duration::from_secs(30)).unwrap();
        let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
        assert!(
            last[p].is_none_or(|l| l < i),
            "producer {p}: {i} after {last:?}"
        );
        last[p] = Some(i);
    }
    for p in producers {
        p.join().unwrap();
    }
    // Leave some in, then drop: everything goes.
    for i in 0..1000 {
        q.put(&i).unwrap();
    }
    let names = q.block_files();
    assert!(!names.is_empty());
    drop(q);
    for n in names {
        assert!(!std::path::Path::new("/dev/shm").join(&n).exists(), "{n}");
    }
}

#[test]
fn unbounded_garbage_is_a_typed_error() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    q.put(&vec![1; 100]).unwrap();
    q.put(&vec![2; 100]).unwrap();
    // A read offset that is not a record boundary, then one past the end.
    for off in [3, 1 << 40] {
        q.log().force_head_off_for_test(off);
        assert!(matches!(q.try_get(), Err(Error::Corrupted(_))), "{off}");
    }
    // A head segment that was never made.
    q.log().force_head_off_for_test(0);
    q.log().force_head_seg_for_test(77);
    assert!(matches!(q.try_get(), Err(Error::Corrupted(_))));
    q.log().force_head_seg_for_test(1);
    assert_eq!(q.get().unwrap(), vec![1; 100]);
    assert_eq!(q.get().unwrap(), vec![2; 100]);
}

#[test]
fn unbounded_dead_holder_is_taken_over_and_repaired() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    q.put(&vec![1; 600_000]).unwrap();
    q.put(&vec![2; 600_000]).unwrap(); // a second segment
                                       // A producer killed after linking segment 2 but before moving `tail_seg`, holding the lock.
    q.log().force_tail_seg_for_test(1);
    q.log().force_dead_holder_for_test();
    q.put(&vec![3; 10]).unwrap();
    for want in [vec![1; 600_000], vec![2; 600_000], vec![3; 10]] {
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), want);
    }
}

#[test]
fn joinable_unbounded() {
    let q = JoinableQueue::from_queue(Queue::<u8>::unbounded().unwrap());
    q.put(&1).unwrap();
    assert_eq!(q.unfinished(), 1);
    q.get().unwrap();
    q.task_done().unwrap();
    q.join_timeout(Duration::from_secs(5)).unwrap();
    assert!(q.task_done().is_err());
}
