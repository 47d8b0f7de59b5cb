use super::ring::{Ring, Taken};
use super::spill::{SpillRef, REF_LEN};
use super::*;
use crate::codec::Raw;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

mod batch;
mod joinable;
mod pipe_ends;
mod recovery;
mod spill;

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

/// Runs `f` in a thread and returns its result, failing the test if it takes longer than a generous
/// bound (proves "no hang", asserts no speed).
fn within_bound<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("hung (or panicked)")
}

/// A producer that finds the ring full spins for room for a run of messages, watching a slot further
/// on (`Ring::spin_for_room`): a consumer that then takes a single message and no more must still
/// let it put, once the spin's time budget is spent, at the slot that one message freed.
#[test]
fn a_producer_on_a_full_ring_puts_when_a_single_slot_frees() {
    let q: Queue<u32, Raw> = Queue::new(64).unwrap();
    for i in 0..64 {
        q.try_put(&i).unwrap();
    }
    let q2 = q.clone();
    let producer = std::thread::spawn(move || q2.put(&64));
    // Taken while the producer waits (or before it starts: then its put does not wait at all).
    assert_eq!(q.get().unwrap(), 0);
    within_bound(move || producer.join().unwrap()).unwrap();
    for i in 1..=64 {
        assert_eq!(q.try_get().unwrap(), i);
    }
}

/// The slot a blocked producer waits for is held by a consumer that died, while other consumers took
/// the messages after it, the slot `spin_for_room` watches included. The producer must still spend its
/// spin, sleep, find the dead claimer and put; not go round its attempts without ever sleeping.
#[test]
fn a_producer_behind_a_dead_consumer_while_others_moved_on_puts() {
    let q: Queue<u32, Raw> = Queue::new(64).unwrap();
    for i in 0..64 {
        q.try_put(&i).unwrap();
    }
    // A consumer claimed the message of stamp 0 and died before releasing the slot.
    ring_of(&q).force_claim_for_test(0, 0x3fff_fffe, true);
    for i in 1..40 {
        assert_eq!(q.try_get().unwrap(), i);
    }
    // The next put goes to the dead consumer's slot: the ring fills in stamp order.
    assert!(matches!(q.try_put(&7), Err(Error::Full)));
    let q2 = q.clone();
    within_bound(move || q2.put_timeout(&7, Duration::from_secs(30))).unwrap();
    for i in 40..64 {
        assert_eq!(q.try_get().unwrap(), i);
    }
    assert_eq!(q.try_get().unwrap(), 7);
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
