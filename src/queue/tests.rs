use super::ring::{Ring, Taken};
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
fn a_dead_claim_is_recovered_after_close_too() {
    // A producer (impossible tid) claimed stamp 0 and died; a message went in after it; then the queue
    // was closed. Consumers still wait behind the claim, sleep, find the claimer dead, and drain.
    for batch in [false, true] {
        let q: Queue<u32, Raw> = Queue::new(4).unwrap();
        ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, false);
        q.put(&7).unwrap();
        q.close();
        let bound = Duration::from_secs(30);
        if batch {
            let mut out = Vec::new();
            assert_eq!(q.get_many_timeout(&mut out, 4, bound).unwrap(), 1);
            assert_eq!(out, [7]);
            assert!(matches!(
                q.get_many_timeout(&mut out, 4, bound),
                Err(Error::Closed)
            ));
        } else {
            assert_eq!(q.get_timeout(bound).unwrap(), 7);
            assert!(matches!(q.get_timeout(bound), Err(Error::Closed)));
        }
    }
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

/// Garbage in the control is a typed error for the call that meets it, and the queue goes on (found
/// by review: each of these failed every later call): a read offset between records, or past the end,
/// skips the rest of its segment (its messages are lost, and `len` says so); a head segment that does
/// not exist drops the chain.
#[test]
fn unbounded_garbage_is_a_typed_error_once() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    for off in [3, 1 << 40] {
        q.put(&vec![1; 100]).unwrap();
        q.put(&vec![2; 100]).unwrap();
        q.log().force_head_off_for_test(off);
        assert!(matches!(q.try_get(), Err(Error::Corrupted(_))), "{off}");
        assert_eq!(q.len(), 0, "{off}");
        assert!(matches!(q.try_get(), Err(Error::Empty)), "{off}");
        q.put(&vec![3; 10]).unwrap();
        assert_eq!(q.try_get().unwrap(), vec![3; 10]);
    }
    // A head segment that was never made.
    q.put(&vec![4; 10]).unwrap();
    q.log().force_head_seg_for_test(77);
    assert!(matches!(q.try_get(), Err(Error::Corrupted(_))));
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    q.put(&vec![5; 10]).unwrap();
    assert_eq!(q.get().unwrap(), vec![5; 10]);
}

/// Found by review: a process that attached while the last other user let go found the queue's
/// segments removed by that user's sweep, and every later put and get failed on them. The first call
/// now reports the loss and the queue starts again empty.
#[test]
fn unbounded_late_attacher_reports_the_lost_segments_once() {
    let name = crate::region::tests::unique("queue-late");
    let q: Queue<Vec<u8>> = Queue::create_unbounded(&name).unwrap();
    q.put(&vec![1; 100]).unwrap();
    q.put(&vec![2; 100]).unwrap();
    let region = Region::open_with(
        &name,
        Queue::<Vec<u8>>::unbounded_layout(None),
        DEFAULT_OPEN_TIMEOUT,
    )
    .unwrap();
    drop(q); // the last attached user: its sweep removes the segments
    let late = Queue::<Vec<u8>>::wrap(region, true).unwrap();
    assert!(matches!(late.put(&vec![3; 10]), Err(Error::Corrupted(_))));
    late.put(&vec![4; 10]).unwrap();
    assert_eq!(late.try_get().unwrap(), vec![4; 10]);
}

/// A segment whose `used` is garbage: the call that meets it says so, and what it hid is dropped
/// (here the whole chain: nothing follows it), so the queue goes on.
#[test]
fn unbounded_garbage_used_is_reported_once() {
    let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
    q.put(&vec![1; 10]).unwrap();
    q.put(&vec![2; 10]).unwrap();
    q.log().force_seg_used_for_test(1, 3); // not a multiple of 8
    assert!(matches!(q.try_get(), Err(Error::Corrupted(_))));
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    q.put(&vec![3; 10]).unwrap();
    assert_eq!(q.try_get().unwrap(), vec![3; 10]);
}

/// Found by review: a segment whose file garbage overwrote (seen by an attachment that had not mapped
/// it yet) failed its validation at every call, and `get_many` on an unbounded queue went on after an
/// error that took nothing, up to `max` times (with `usize::MAX`, for good). The call that meets it
/// now reports the loss, and the queue goes on; `get_many` also stops at the first error that takes
/// nothing (no such error is left to show it with: a defence).
#[test]
fn unbounded_get_many_returns_at_a_garbage_segment_and_the_queue_goes_on() {
    use std::os::unix::fs::FileExt;
    let name = crate::region::tests::unique("queue-stuck");
    let q: Queue<Vec<u8>> = Queue::create_unbounded(&name).unwrap();
    q.put(&vec![1; 10]).unwrap();
    let [segment] = &q.block_files()[..] else {
        panic!("one segment: {:?}", q.block_files())
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(std::path::Path::new("/dev/shm").join(segment))
        .unwrap()
        .write_all_at(b"garbage!", 0)
        .unwrap();
    let other: Queue<Vec<u8>> = Queue::open(&name).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = tx.send(other.get_many(&mut out, usize::MAX).map(|_| out.len()));
    });
    // Bounded, to prove no hang.
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("get_many returned");
    assert!(matches!(got, Err(Error::Corrupted(_))), "{got:?}");
    getter.join().unwrap();
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    q.put(&vec![2; 10]).unwrap();
    assert_eq!(q.try_get().unwrap(), vec![2; 10]);
    // The sweep of the queue's last user leaves a file with a header not of this crate alone.
    std::fs::remove_file(std::path::Path::new("/dev/shm").join(segment)).unwrap();
}

std::thread_local! {
    /// Run (once) by [`PutWhileDecoding::decode`].
    static WHILE_DECODING: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(None);
}

/// `u64`s as their bytes; `decode` first runs the hook set in [`WHILE_DECODING`].
struct PutWhileDecoding;

impl Codec<u64> for PutWhileDecoding {
    const NAME: &'static str = "test: runs a hook while decoding";

    fn with_bytes<R>(value: &u64, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(f(&value.to_le_bytes()))
    }

    fn decode(bytes: &[u8]) -> Result<u64> {
        if let Some(hook) = WHILE_DECODING.with(|h| h.borrow_mut().take()) {
            hook();
        }
        let bytes = bytes.try_into().map_err(|_| Error::Decode {
            ty: "u64".into(),
            reason: format!("{} bytes", bytes.len()),
        })?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// Found by review: an unbounded queue decoded each message under its lock, so every other put and
/// get waited for the decode of a large one (a `try_put` failed with `Full`). A put made by another
/// thread while the decode runs shows the lock is free by then: under it, the put failed (after
/// waiting for the lock, which the decoding thread held until the put gave up).
#[test]
fn unbounded_decodes_without_its_lock() {
    let q: Queue<u64, PutWhileDecoding> = Queue::unbounded().unwrap();
    q.put(&1).unwrap();
    let put = std::rc::Rc::new(std::cell::Cell::new(None));
    let (q2, put2) = (q.clone(), put.clone());
    WHILE_DECODING.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            let ok = std::thread::scope(|s| s.spawn(|| q2.try_put(&2).is_ok()).join().unwrap());
            put2.set(Some(ok));
        }))
    });
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(put.get(), Some(true), "the put made while decoding failed");
    assert_eq!(q.get().unwrap(), 2);
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

/// Found by review: a producer killed inside `JoinableQueue::put` after its message was counted and
/// before it was published left a count that nothing ever took away: the slot is tombstoned (the
/// message is never delivered, so never marked done) and `join` waited for good.
#[test]
fn join_returns_after_a_producer_killed_between_counting_and_publishing() {
    let q: JoinableQueue<u32, Raw> = JoinableQueue::new(4).unwrap();
    let q2 = q.clone();
    // A thread that stops right before its publish and exits: its tid is then dead, as a killed
    // producer's is.
    std::thread::spawn(move || {
        super::ring::tests::vanish_before_publish_for_test();
        q2.put(&1).unwrap();
    })
    .join()
    .unwrap();
    q.put(&2).unwrap();
    // The consumer gets past the dead claim and takes the message put after it.
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
    q.task_done().unwrap();
    let r = q.join_timeout(Duration::from_secs(10));
    assert!(
        r.is_ok(),
        "join waits for the dead producer's message: {r:?}"
    );
    assert_eq!(q.unfinished(), 0);
    assert!(q.task_done().is_err());
}

/// Found by review: the same dead producer, with no consumer ever running. Only a consumer waiting
/// behind the claim used to recover it, so `join` alone counted the dead claim's mark for good.
#[test]
fn join_alone_returns_after_a_producer_killed_before_publishing() {
    let q: JoinableQueue<u32, Raw> = JoinableQueue::new(4).unwrap();
    let q2 = q.clone();
    std::thread::spawn(move || {
        super::ring::tests::vanish_before_publish_for_test();
        q2.put(&1).unwrap();
    })
    .join()
    .unwrap();
    let r = q.join_timeout(Duration::from_secs(10));
    assert!(r.is_ok(), "join waits for a message never published: {r:?}");
    assert_eq!(q.unfinished(), 0);
    // The queue carries on.
    q.put(&2).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
    q.task_done().unwrap();
    q.join_timeout(Duration::from_secs(10)).unwrap();
}

/// Found by review: a consumer killed after claiming a counted message and before taking its count
/// left the slot claimed and marked; only a producer needing that slot freed it, so `join` with no
/// producer left counted the lost message for good. The message is lost (at most once); its count
/// goes with it.
#[test]
fn join_returns_after_a_consumer_killed_before_taking_the_count() {
    let q: JoinableQueue<u32, Raw> = JoinableQueue::new(4).unwrap();
    q.put(&1).unwrap();
    ring_of(q.queue()).force_claim_for_test(0, 0x3fff_fffe, true);
    let r = q.join_timeout(Duration::from_secs(10));
    assert!(r.is_ok(), "join waits for a dead consumer's claim: {r:?}");
    assert_eq!(q.unfinished(), 0);
    q.put(&2).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
}

/// A live producer's or consumer's claim is never taken by `join`: it times out, and the message
/// behind the live claim is still counted.
#[test]
fn join_leaves_live_claims_alone() {
    for consumer in [false, true] {
        let (tx, h, tid) = live_tid();
        let q: JoinableQueue<u32, Raw> = JoinableQueue::new(4).unwrap();
        if consumer {
            q.put(&1).unwrap();
            ring_of(q.queue()).force_claim_for_test(0, tid, true);
        } else {
            // Stamp 0 claimed by a live producer that wrote a counted message and has not published.
            ring_of(q.queue()).force_claim_for_test(0, tid, false);
            ring_of(q.queue()).force_mark_for_test(0);
        }
        let r = q.join_timeout(Duration::from_millis(300));
        assert!(matches!(r, Err(Error::Timeout)), "{consumer}: {r:?}");
        assert_eq!(q.unfinished(), 1, "{consumer}");
        drop(tx);
        h.join().unwrap();
    }
}

/// The unbounded engine's side of `join_returns_after_a_producer_killed_between_counting_and_publishing`:
/// its `put` counted first and appended after (under the log's lock), so a producer killed in
/// between (waiting for a lock another process held, say) left a count that nothing took away.
#[test]
fn unbounded_join_returns_after_a_producer_killed_between_counting_and_appending() {
    let q = JoinableQueue::from_queue(Queue::<u32, Raw>::unbounded().unwrap());
    let q2 = q.clone();
    std::thread::spawn(move || {
        super::unbounded::Log::vanish_before_commit_for_test();
        q2.put(&1).unwrap();
    })
    .join()
    .unwrap();
    q.put(&2).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
    q.task_done().unwrap();
    let r = q.join_timeout(Duration::from_secs(5));
    assert!(r.is_ok(), "join waits for a message never appended: {r:?}");
    assert_eq!(q.unfinished(), 0);
}

/// The count of a JoinableQueue message lives in its slot until it is taken (the fix of
/// `join_returns_after_a_producer_killed_between_counting_and_publishing`): what Python allows still
/// holds, a `task_done` before the matching `get`, and a batch `get_many` takes counts as `get` does.
#[test]
fn joinable_counts_follow_the_messages() {
    let q: JoinableQueue<u32, Raw> = JoinableQueue::new(4).unwrap();
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    assert_eq!(q.unfinished(), 2);
    q.task_done().unwrap(); // before any get: allowed, as in Python
    assert_eq!(q.unfinished(), 1);
    let mut out = Vec::new();
    assert_eq!(q.queue().get_many(&mut out, 4).unwrap(), 2);
    assert_eq!(q.unfinished(), 1);
    q.task_done().unwrap();
    q.join_timeout(Duration::from_secs(5)).unwrap();
    assert!(q.task_done().is_err());
    // An uncounted put through the plain queue counts for nothing, in a slot a counted one used.
    for _ in 0..4 {
        q.queue().put(&3).unwrap();
        q.get().unwrap();
    }
    assert_eq!(q.unfinished(), 0);
    assert!(q.task_done().is_err());
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

/// A codec whose queues never spill, as the pool's frame codec.
struct NoSpill;

impl Codec<Vec<u8>> for NoSpill {
    const NAME: &'static str = "test-no-spill";
    const SPILLS: bool = false;

    fn with_bytes<R>(value: &Vec<u8>, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(f(value))
    }

    fn decode(bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }
}

#[test]
fn a_queue_that_never_spills_makes_no_file_and_refuses_what_does_not_fit() {
    let group_files = |id: u64| crate::sys::shm::list_named(&format!("mproc.q{id:016x}-"));
    // A queue that may spill holds an anchor for its blocks from the start...
    let spilling: Queue<Vec<u8>> = Queue::with_max_message(4, 64).unwrap();
    assert_eq!(group_files(spilling.inner.region.id()).len(), 1);
    // ... one that never spills has no group at all, so a killed user leaves nothing behind.
    let q: Queue<Vec<u8>, NoSpill> = Queue::with_max_message(4, 64).unwrap();
    let id = q.inner.region.id();
    let fits = vec![7u8; q.max_message_size()];
    q.put(&fits).unwrap();
    assert_eq!(q.get().unwrap(), fits);
    let too_big = vec![7u8; q.max_message_size() + 1];
    assert!(matches!(
        q.put(&too_big),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(matches!(
        q.put_many([&fits, &too_big]),
        Err(Error::MessageTooLarge { .. })
    ));
    let mut out = Vec::new();
    assert_eq!(q.try_get_many(&mut out, 4).unwrap(), 1); // the one before the refused one
    assert!(group_files(id).is_empty());
}

#[test]
fn each_side_records_its_cpu_for_the_other_sides_waiters() {
    let q: Queue<u64, Raw> = Queue::new(2).unwrap();
    let unknown = crate::sys::proc::UNKNOWN_CPU;
    assert_eq!(
        q.ring().cursor_cpus_for_test(),
        (unknown, unknown),
        "nobody ran yet"
    );
    // A thread pinned to one CPU, so that "the CPU it ran on" is a known answer.
    std::thread::scope(|s| {
        s.spawn(|| {
            let cpu = crate::sys::proc::pin_current_thread_for_test();
            q.put(&1).unwrap();
            assert_eq!(
                q.ring().cursor_cpus_for_test(),
                (cpu, unknown),
                "a put records tail's"
            );
            assert_eq!(q.get().unwrap(), 1);
            assert_eq!(
                q.ring().cursor_cpus_for_test(),
                (cpu, cpu),
                "a get records head's"
            );
        });
    });
    // A waiting consumer is told the producers' CPU (tail's line), a waiting producer the consumers'.
    q.ring().force_cursor_cpus_for_test(7, 9, true);
    assert_eq!(q.ring().peer_cpu_for_test(true), 7);
    assert_eq!(q.ring().peer_cpu_for_test(false), 9);
    // The answer is kept for PEER_CPU_REFRESH waits, then read again from the shared line.
    q.ring().force_cursor_cpus_for_test(70, 90, false);
    for _ in 0..ring::PEER_CPU_REFRESH {
        assert_eq!(q.ring().peer_cpu_for_test(true), 7);
    }
    assert_eq!(q.ring().peer_cpu_for_test(true), 70);
    // A wait that sleeps drops the copy: the next one reads the line again. (The generous deadline
    // only makes sure the empty queue's `get` reaches its sleep before it times out.)
    q.ring().force_cursor_cpus_for_test(71, 91, false);
    assert_eq!(q.ring().peer_cpu_for_test(true), 70, "still the copy");
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    assert_eq!(
        q.ring().peer_cpu_for_test(true),
        71,
        "read afresh after the sleep"
    );
}

#[test]
fn a_forged_cpu_only_changes_how_we_wait() {
    let q: Queue<u64, Raw> = Queue::new(2).unwrap();
    let unknown = crate::sys::proc::UNKNOWN_CPU;
    // Our own CPU (a peer beside us), garbage, or a CPU that does not exist: waits keep their
    // deadlines, and messages still go through.
    for forged in [crate::sys::proc::current_cpu(), 0, unknown - 1, 0xdead_beef] {
        q.ring().force_cursor_cpus_for_test(forged, forged, true);
        assert!(matches!(
            q.get_timeout(Duration::from_millis(5)),
            Err(Error::Timeout)
        ));
        q.put(&7).unwrap();
        q.put(&8).unwrap();
        assert!(matches!(
            q.put_timeout(&9, Duration::from_millis(5)),
            Err(Error::Timeout)
        ));
        assert_eq!(q.get().unwrap(), 7);
        assert_eq!(q.get().unwrap(), 8);
    }
}

// ---- Pipe: who holds an end (pipe.rs, "Who holds an end") ----

const SHORT: Duration = Duration::from_millis(30);
/// Generous: proves "no hang", never measures speed.
const LONG: Duration = Duration::from_secs(20);

#[test]
fn pipe_drop_of_the_last_handle_closes_after_draining() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    b.send(&1).unwrap();
    b.send(&2).unwrap();
    let b2 = b.clone();
    drop(b);
    // A clone still holds the end.
    a.send(&5).unwrap();
    assert!(matches!(a.recv_timeout(SHORT), Ok(1)));
    assert_eq!(b2.recv().unwrap(), 5);
    drop(b2);
    assert_eq!(a.recv_timeout(LONG).unwrap(), 2, "sent before the drop");
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    assert!(matches!(a.recv(), Err(Error::Closed)));
    assert!(matches!(a.send(&3), Err(Error::Closed)));

    let (r, s) = Pipe::one_way::<u64>().unwrap();
    s.send(&9).unwrap();
    drop(s);
    assert_eq!(r.recv().unwrap(), 9);
    assert!(matches!(r.recv(), Err(Error::Closed)));
}

#[test]
fn pipe_serialized_copy_holds_the_end_until_it_attaches() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let bytes = postcard::to_allocvec(&b).unwrap();
    drop(b);
    assert!(!a.peer_gone_for_test(), "the copy in flight holds the end");
    assert!(matches!(a.recv_timeout(SHORT), Err(Error::Timeout)));
    let b: Connection<u64> = postcard::from_bytes(&bytes).unwrap();
    b.send(&7).unwrap();
    assert_eq!(a.recv().unwrap(), 7);
    assert!(!a.peer_gone_for_test());
    drop(b);
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
}

#[test]
fn pipe_copy_never_attached_holds_the_end_only_for_the_grace() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let bytes = postcard::to_allocvec(&b).unwrap();
    drop(b);
    assert!(!a.peer_gone_for_test());
    a.age_peer_tokens_for_test();
    assert!(a.peer_gone_for_test(), "an expired token holds nothing");
    // A waiting recv notices it and closes the pipe.
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    // Attached too late: a closed connection, not an error.
    let late: Connection<u64> = postcard::from_bytes(&bytes).unwrap();
    assert!(matches!(late.recv_timeout(LONG), Err(Error::Closed)));
    assert!(matches!(late.send(&1), Err(Error::Closed)));
}

/// Found by review: a loop of short `recv_timeout`s (each looked at the other end only 5 ms into its
/// own wait) never noticed a gone peer. The looks add up across calls now.
#[test]
fn pipe_short_recvs_notice_a_gone_peer() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let _bytes = postcard::to_allocvec(&b).unwrap(); // a copy never attached: a token
    drop(b);
    a.age_peer_tokens_for_test();
    // Bounded, to prove no hang.
    let end = Instant::now() + LONG;
    let r = loop {
        match a.recv_timeout(Duration::from_millis(1)) {
            Err(Error::Timeout) => assert!(Instant::now() < end, "never noticed"),
            r => break r,
        }
    };
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[test]
fn pipe_dead_holders_do_not_hold_and_live_ones_do() {
    let pid = crate::sys::proc::pid();
    let start = crate::sys::proc::start_time(pid).unwrap();
    // A recorded holder with our pid and another start time: a process that died, its pid reused.
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.add_peer_holder_for_test(pid, start + 1);
    b.send(&1).unwrap();
    drop(b);
    assert_eq!(a.recv_timeout(LONG).unwrap(), 1);
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    // A live one (ourselves, recorded again) keeps the end.
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.add_peer_holder_for_test(pid, start);
    drop(b);
    assert!(!a.peer_gone_for_test());
    assert!(matches!(a.recv_timeout(SHORT), Err(Error::Timeout)));
}

#[test]
fn pipe_full_table_falls_back_without_a_false_close() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    // More copies than slots: the last ones hold the end by the lease.
    let copies: Vec<Vec<u8>> = (0..pipe::SLOTS + 8)
        .map(|_| postcard::to_allocvec(&b).unwrap())
        .collect();
    drop(b);
    // More attachments than slots: some are unrecorded, counted exactly.
    let ends: Vec<Connection<u64>> = copies
        .iter()
        .map(|c| postcard::from_bytes(c).unwrap())
        .collect();
    ends[ends.len() - 1].send(&3).unwrap();
    drop(ends);
    assert!(
        !a.peer_gone_for_test(),
        "the lease of the unrecorded copies"
    );
    assert_eq!(a.recv_timeout(LONG).unwrap(), 3);
    a.age_peer_tokens_for_test();
    assert!(
        a.peer_gone_for_test(),
        "every attachment let go, the lease over"
    );
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
}

#[test]
fn pipe_connection_refuses_queues_of_another_pipe() {
    let (a, _b) = Pipe::duplex::<u64>().unwrap();
    let (c, _d) = Pipe::duplex::<u64>().unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Wire {
        rx: Option<RegionHandle>,
        tx: Option<RegionHandle>,
        control: RegionHandle,
        end: u8,
        token: u64,
    }
    let mut w: Wire = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
    let theirs: Wire = postcard::from_bytes(&postcard::to_allocvec(&c).unwrap()).unwrap();
    w.rx = theirs.rx;
    let forged = postcard::to_allocvec(&w).unwrap();
    assert!(postcard::from_bytes::<Connection<u64>>(&forged).is_err());
    w.end = 2;
    let forged = postcard::to_allocvec(&w).unwrap();
    assert!(postcard::from_bytes::<Connection<u64>>(&forged).is_err());
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

// ---- review (rev-queue): a panic in the codec while a slot is held ----

/// A `u32` whose decoder panics on 666 (a user's `Deserialize`/`Codec` that asserts, say). A caller that
/// catches the panic (`catch_unwind`, a tokio task, a server's per-request guard) keeps its thread alive.
#[derive(Debug)]
struct PanickyCodec;

impl Codec<u32> for PanickyCodec {
    const NAME: &'static str = "review-panicky";

    fn default_max_size() -> usize {
        4
    }

    fn with_bytes<R>(value: &u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        <Raw as Codec<u32>>::with_bytes(value, f)
    }

    fn decode(bytes: &[u8]) -> Result<u32> {
        let v = <Raw as Codec<u32>>::decode(bytes)?;
        assert_ne!(v, 666, "the codec refuses 666 by panicking");
        Ok(v)
    }
}

/// A panic in the decoder while `get` holds the slot leaves the slot claimed by this (live) thread for
/// good: no producer can ever reuse it, so the queue loses one slot of capacity per such panic, and a
/// queue of capacity 1 is wedged. `PopBatch`'s docs promise the batch path frees what it claimed on a
/// codec panic; neither path frees the slot being decoded.
#[test]
fn a_panic_in_decode_during_get_does_not_wedge_the_slot() {
    let q: Queue<u32, PanickyCodec> = Queue::new(2).unwrap();
    q.put(&666).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.get()));
    assert!(caught.is_err(), "the codec panicked");
    // Two free slots' worth of room again: the message was taken.
    q.put_timeout(&1, Duration::from_secs(1)).unwrap();
    let r = q.put_timeout(&2, Duration::from_secs(1));
    assert!(
        r.is_ok(),
        "the slot of the panicked get is still claimed: {r:?}"
    );
}

#[test]
fn a_panic_in_decode_during_get_many_does_not_wedge_the_slot() {
    let q: Queue<u32, PanickyCodec> = Queue::new(4).unwrap();
    q.put_many(&[1, 666, 3]).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        q.get_many(&mut Vec::new(), 4)
    }));
    assert!(caught.is_err(), "the codec panicked");
    // All three were claimed by the batch and are gone; the ring should hold four again.
    let r = q.put_many_timeout(&[10, 11, 12, 13], Duration::from_secs(1));
    assert!(
        matches!(r, Ok(4)),
        "a slot of the panicked get_many is still claimed: {r:?}"
    );
}

/// Calls `f` in a loop, with a short pause between calls (as a polling caller would), until it
/// returns `Some` or `bound` passes.
fn poll_until<R>(bound: Duration, mut f: impl FnMut() -> Option<R>) -> Option<R> {
    let end = Instant::now() + bound;
    while Instant::now() < end {
        if let Some(r) = f() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Found by review: a producer killed between its claim and its publish leaves the head slot claimed,
/// and only a wait that *slept* looked at the claimer. A caller that polls with `try_get` (or
/// `get_timeout(0)`) never sleeps in the ring, so the dead claim was never recovered and every call
/// returned `Empty`, for ever, with a message waiting behind it.
#[test]
fn polling_gets_recover_a_dead_producers_claim() {
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, false); // a producer that cannot exist
    q.put(&7).unwrap();
    let got = poll_until(Duration::from_secs(20), || match q.try_get() {
        Err(Error::Empty) => None,
        r => Some(r),
    });
    assert_eq!(
        got.map(|r| r.unwrap()),
        Some(7),
        "try_get never got past the claim"
    );
    // And with a zero timeout, and after a close: the drain reaches `Closed`.
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, false);
    q.close();
    let got = poll_until(Duration::from_secs(20), || {
        match q.get_timeout(Duration::ZERO) {
            Err(Error::Timeout) => None,
            r => Some(r),
        }
    });
    assert!(matches!(got, Some(Err(Error::Closed))), "{got:?}");
}

/// The producer's side of [`polling_gets_recover_a_dead_producers_claim`]: a consumer killed holding
/// the only slot of a full queue; `try_put` in a loop must get the slot back.
#[test]
fn polling_puts_recover_a_dead_consumers_claim() {
    let q: Queue<u32, Raw> = Queue::new(1).unwrap();
    q.put(&1).unwrap();
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, true);
    let put = poll_until(Duration::from_secs(20), || match q.try_put(&2) {
        Err(Error::Full) => None,
        r => Some(r),
    });
    assert!(
        matches!(put, Some(Ok(()))),
        "try_put never got past the claim: {put:?}"
    );
    assert_eq!(q.try_get().unwrap(), 2);
}

/// A worker that takes task k, puts task k + 1 (a follow-up it found), and only then marks task k
/// done: at every moment from the first `put` until the chain ends, at least one task is put and not
/// done, so `join` must not return before the chain ends (Python's count never reaches 0). Attack on
/// the slot-mark accounting: `join`'s scan of the slots is not one snapshot, so a follow-up put into a
/// slot the scan already passed, and the `task_done` of the task it came from before the scan read
/// `unfinished`, summed to 0.
fn join_waits_for_a_chain_of_follow_ups(q: JoinableQueue<u64, Raw>, bound: Duration) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let finished = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + bound;
    let mut early = 0u32;
    let mut rounds = 0u32;
    while Instant::now() < end && early == 0 {
        finished.store(false, Ordering::SeqCst);
        stop.store(false, Ordering::SeqCst);
        q.put(&0).unwrap();
        let (q2, fin, st) = (q.clone(), finished.clone(), stop.clone());
        let worker = std::thread::spawn(move || loop {
            let k = q2.get().unwrap();
            if st.load(Ordering::SeqCst) || k >= 200_000 {
                fin.store(true, Ordering::SeqCst);
                q2.task_done().unwrap();
                return;
            }
            q2.put(&(k + 1)).unwrap();
            q2.task_done().unwrap();
        });
        for _ in 0..20 {
            q.join_timeout(Duration::from_secs(60)).unwrap();
            if !finished.load(Ordering::SeqCst) {
                early += 1;
            }
            if finished.load(Ordering::SeqCst) {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        q.join_timeout(Duration::from_secs(60)).unwrap();
        rounds += 1;
    }
    assert_eq!(
        early, 0,
        "join returned {early} times while a task was unfinished ({rounds} rounds)"
    );
}

#[test]
fn join_waits_for_follow_up_tasks_ring() {
    join_waits_for_a_chain_of_follow_ups(
        JoinableQueue::new(1 << 14).unwrap(),
        Duration::from_secs(5),
    );
}

#[test]
fn join_waits_for_follow_up_tasks_small_ring() {
    join_waits_for_a_chain_of_follow_ups(JoinableQueue::new(4).unwrap(), Duration::from_secs(5));
}

#[test]
fn join_waits_for_follow_up_tasks_unbounded() {
    join_waits_for_a_chain_of_follow_ups(
        JoinableQueue::from_queue(Queue::<u64, Raw>::unbounded().unwrap()),
        Duration::from_secs(5),
    );
}

/// `task_done` for the one message put, racing with its `get` in another thread: exactly one
/// message is put and not done, so `task_done` must succeed, whatever the interleaving. Attack:
/// `task_done` reads `unfinished` (0) before its scan, the consumer moves the count from the slot to
/// `unfinished` and frees the slot, and the scan then finds no mark: 0 + 0, "too many".
#[test]
fn task_done_racing_the_get_of_the_only_message() {
    let q: JoinableQueue<u64, Raw> = JoinableQueue::new(1 << 12).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let mut wrong = 0u32;
    let mut n = 0u32;
    while Instant::now() < end && wrong == 0 {
        q.put(&1).unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.get().unwrap());
        if q.task_done().is_err() {
            wrong += 1;
        }
        t.join().unwrap();
        n += 1;
        if wrong == 0 {
            q.join_timeout(Duration::from_secs(10)).unwrap();
        }
    }
    assert_eq!(
        wrong, 0,
        "task_done said 'too many' with one message outstanding ({n} rounds)"
    );
}

/// Workers take batches (`get_many`, or `get`), put each task's children (a tree of known size), then
/// mark the task done: once `join` returns, every task of the tree must have been marked done. (The
/// ring holds the whole tree: workers that also put would deadlock on a full one.)
fn join_after_a_tree_of_tasks(make: impl Fn() -> JoinableQueue<u64, Raw>, bound: Duration) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    const FAN: u64 = 3;
    const DEPTH: u64 = 6; // tasks per root: (3^7 - 1) / 2 = 1093
    let per_root = (FAN.pow(DEPTH as u32 + 1) - 1) / (FAN - 1);
    let end = Instant::now() + bound;
    let mut rounds = 0;
    while Instant::now() < end {
        let q = make();
        let done = Arc::new(AtomicU64::new(0));
        let quit = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (q, done, quit) = (q.clone(), done.clone(), quit.clone());
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !quit.load(Ordering::SeqCst) {
                        out.clear();
                        if w == 0 {
                            match q.get_timeout(Duration::from_millis(5)) {
                                Ok(v) => out.push(v),
                                Err(Error::Timeout) => continue,
                                Err(e) => panic!("{e:?}"),
                            }
                        } else {
                            match q
                                .queue()
                                .get_many_timeout(&mut out, 4, Duration::from_millis(5))
                            {
                                Ok(_) => {}
                                Err(Error::Timeout) => continue,
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                        for &v in &out {
                            if v < DEPTH {
                                for _ in 0..FAN {
                                    q.put(&(v + 1)).unwrap();
                                }
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                            q.task_done().unwrap();
                        }
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            q.put(&0).unwrap();
        }
        q.join_timeout(Duration::from_secs(60)).unwrap();
        let d = done.load(Ordering::SeqCst);
        quit.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(
            d,
            2 * per_root,
            "join returned with tasks unfinished (round {rounds})"
        );
        assert_eq!(q.unfinished(), 0);
        assert!(q.task_done().is_err());
        rounds += 1;
    }
}

#[test]
fn join_after_a_tree_of_tasks_big_ring() {
    join_after_a_tree_of_tasks(|| JoinableQueue::new(4096).unwrap(), Duration::from_secs(4));
}

#[test]
fn join_after_a_tree_of_tasks_unbounded() {
    join_after_a_tree_of_tasks(
        || JoinableQueue::from_queue(Queue::<u64, Raw>::unbounded().unwrap()),
        Duration::from_secs(4),
    );
}

/// A live thread (parked until the returned sender is dropped) and its tid.
fn live_tid() -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
    u32,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ttx, trx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        ttx.send(crate::sys::proc::tid()).unwrap();
        let _ = rx.recv();
    });
    (tx, h, trx.recv().unwrap())
}

/// `recover_before_timeout` must never take a live (slow) producer's claim: polling `try_get` and
/// `get_timeout(0)` for well past its 2 ms checks, the message behind the claim stays behind it.
#[test]
fn polling_gets_leave_a_live_producers_claim_alone() {
    let (tx, h, tid) = live_tid();
    let q: Queue<u32, Raw> = Queue::new(4).unwrap();
    ring_of(&q).force_claim_for_test(0, tid, false);
    q.put(&7).unwrap();
    for i in 0..100 {
        let r = if i % 2 == 0 {
            q.try_get()
        } else {
            q.get_timeout(Duration::ZERO)
        };
        assert!(
            matches!(r, Err(Error::Empty | Error::Timeout)),
            "a live claim was taken: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    h.join().unwrap();
}

/// The producer's side: a live consumer's claim of the only slot is never freed by polling `try_put`.
#[test]
fn polling_puts_leave_a_live_consumers_claim_alone() {
    let (tx, h, tid) = live_tid();
    let q: Queue<u32, Raw> = Queue::new(1).unwrap();
    q.put(&1).unwrap();
    ring_of(&q).force_claim_for_test(0, tid, true);
    for _ in 0..100 {
        let r = q.try_put(&2);
        assert!(
            matches!(r, Err(Error::Full)),
            "a live claim was freed: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    h.join().unwrap();
}
