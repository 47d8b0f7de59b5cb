//! `JoinableQueue`: counts that follow their messages, dead producers and consumers, `join` under
//! follow-up tasks.

use super::*;

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

/// Puts `v` into `q` from a forked child that ends at `death`, inside the put, holding the queue's
/// lock as a process killed there would; returns once the child has ended.
fn put_dying_at<T: Copy + Send + 'static>(
    q: &JoinableQueue<T, Raw>,
    death: super::unbounded::Death,
    v: T,
) where
    Raw: Codec<T>,
{
    let q2 = q.clone();
    let mut child = crate::Process::builder().daemon(true).fork(move || {
        super::unbounded::Log::die_at_for_test(death);
        let _ = q2.put(&v);
        0
    });
    child.start().unwrap();
    assert!(!matches!(
        child.join_timeout(Duration::from_secs(60)),
        Err(Error::Timeout)
    ));
}

/// Found by review: an unbounded JoinableQueue's producer killed right after committing its record
/// and before adding it to `queued_counted` (a robust lock's holder dies; the next holder repairs the
/// count, but `join` takes no lock): `join` summed 0 and returned with the message still in the
/// queue, never taken nor marked done.
#[test]
fn unbounded_join_waits_for_a_message_whose_producer_died_after_committing_it() {
    let q = JoinableQueue::from_queue(Queue::<u32, Raw>::unbounded().unwrap());
    q.put(&1).unwrap(); // the segment exists: the next put appends to it
    assert_eq!(q.get().unwrap(), 1);
    q.task_done().unwrap();
    put_dying_at(&q, super::unbounded::Death::AfterCommit, 7);
    let r = q.join_timeout(Duration::from_millis(100));
    assert!(
        matches!(r, Err(Error::Timeout)),
        "join returned with a counted message in the queue: {r:?}"
    );
    assert_eq!(q.unfinished(), 1);
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 7);
    q.task_done().unwrap();
    q.join_timeout(Duration::from_secs(10)).unwrap();
}

/// The same producer killed before its commit, once its count is taken: `join` (with no other
/// caller to take the lock over and repair) must still get past it.
#[test]
fn unbounded_join_returns_after_a_producer_killed_before_committing() {
    let q = JoinableQueue::from_queue(Queue::<u32, Raw>::unbounded().unwrap());
    q.put(&1).unwrap();
    assert_eq!(q.get().unwrap(), 1);
    q.task_done().unwrap();
    put_dying_at(&q, super::unbounded::Death::BeforeCommit, 7);
    let r = q.join_timeout(Duration::from_secs(30));
    assert!(r.is_ok(), "join waits for a message never committed: {r:?}");
    assert!(matches!(q.queue().try_get(), Err(Error::Empty)));
    q.put(&8).unwrap();
    assert_eq!(q.get().unwrap(), 8);
    q.task_done().unwrap();
    q.join_timeout(Duration::from_secs(10)).unwrap();
}

/// The same producer killed before its commit, in a queue holding more records than the repair's
/// recount walks (it gives up past 2^22, the bound on a walk over garbage): the count it took for
/// a message that never went in must still go. It stayed (found by review), and `join` waited for
/// good once every real message was marked done.
#[test]
fn unbounded_join_returns_after_a_producer_killed_before_committing_into_a_long_queue() {
    let q = JoinableQueue::from_queue(Queue::<u8, Raw>::unbounded().unwrap());
    let n = (1usize << 22) + 8;
    for _ in 0..n {
        q.put(&1).unwrap();
    }
    put_dying_at(&q, super::unbounded::Death::BeforeCommit, 7);
    // The first `get` takes the dead producer's lock over, and repairs.
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(
        q.unfinished() as usize,
        n,
        "a count for a message never put"
    );
    q.task_done().unwrap();
    for _ in 1..n {
        assert_eq!(q.get().unwrap(), 1);
        q.task_done().unwrap();
    }
    assert!(matches!(q.queue().try_get(), Err(Error::Empty)));
    let r = q.join_timeout(Duration::from_secs(10));
    assert!(r.is_ok(), "join waits for a message never committed: {r:?}");
}

/// A producer killed inside the first put into an unbounded JoinableQueue (its record the first of
/// a new segment, committed by making that segment the head), before or after that commit: the
/// next holder's repair leaves the count of what is really in the queue.
#[test]
fn unbounded_producer_killed_around_committing_the_first_segment_leaves_the_right_count() {
    use super::unbounded::Death;
    for (death, queued) in [(Death::BeforeCommit, 0), (Death::AfterCommit, 1)] {
        let q = JoinableQueue::from_queue(Queue::<u32, Raw>::unbounded().unwrap());
        put_dying_at(&q, death, 7);
        // A `put` takes the dead producer's lock over, and repairs.
        q.put(&8).unwrap();
        assert_eq!(q.unfinished(), queued + 1, "{death:?}");
        let mut got = Vec::new();
        while let Ok(v) = q.queue().try_get() {
            got.push(v);
            q.task_done().unwrap();
        }
        let want: &[u32] = if queued == 1 { &[7, 8] } else { &[8] };
        assert_eq!(got, want, "{death:?}");
        q.join_timeout(Duration::from_secs(10)).unwrap();
    }
}
