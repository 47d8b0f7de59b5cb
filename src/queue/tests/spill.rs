//! Spilled messages (larger than a slot) and the unbounded queue: garbage references, reclaiming
//! blocks, late attachers, a dead lock holder.

use super::*;

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

/// Runs `child` in a forked child and waits for it (bounded, to prove no hang); what it returned, if
/// it returned (a child that dies at a `Death` point does not).
fn in_forked_child(child: impl FnOnce() -> u64 + Send + 'static) -> Option<u64> {
    let mut p = crate::Process::builder().daemon(true).fork(child);
    p.start().expect("fork");
    let got = p.join_timeout(Duration::from_secs(60));
    if matches!(got, Err(Error::Timeout)) {
        let _ = p.kill();
        panic!("the forked child hung");
    }
    got.ok()
}

/// Found by review: a consumer killed inside the hand-over from a finished segment to the next one
/// (`Log::move_head`: between its store of the read offset, 0, and of the head segment) left the read
/// offset at the start of the finished segment, whose name was not yet removed: the next consumer
/// delivered every message of that segment again. Each intermediate step of the hand-over is a kill
/// point here; every message must come out once.
#[test]
fn unbounded_consumer_killed_moving_to_the_next_segment_delivers_nothing_twice() {
    for step in 1..=3 {
        let q: Queue<Vec<u8>> = Queue::unbounded().unwrap();
        q.put(&vec![1; 600_000]).unwrap();
        q.put(&vec![2; 600_000]).unwrap(); // a second segment
        q.put(&vec![3; 10]).unwrap();
        assert_eq!(q.get().unwrap()[0], 1); // segment 1 is read; the head is still on it
        let q2 = q.clone();
        let in_child = in_forked_child(move || {
            super::unbounded::Log::die_at_for_test(super::unbounded::Death::MovingHead(step));
            q2.get().map_or(0, |m| u64::from(m[0]))
        });
        let mut got: Vec<u8> = in_child.map(|v| v as u8).into_iter().collect();
        loop {
            match q.try_get() {
                Ok(m) => got.push(m[0]),
                Err(Error::Empty) => break,
                Err(e) => panic!("step {step}: {e}"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, [2, 3], "step {step}: each message once");
    }
}

/// Found by review: an unbounded queue keeps every message in blocks (its segments) whatever its
/// codec, but one whose codec never spills held no anchor of its group, so nobody ever removed its
/// segments: each stayed in `/dev/shm` after the last handle was dropped.
#[test]
fn an_unbounded_queue_of_a_codec_that_never_spills_leaves_no_segment_behind() {
    let q: Queue<Vec<u8>, NoSpill> = Queue::unbounded().unwrap();
    q.put(&vec![1; 10]).unwrap();
    let files = q.block_files();
    assert!(!files.is_empty(), "a segment holds the message");
    drop(q);
    for n in files {
        let path = std::path::Path::new("/dev/shm").join(&n);
        let left = path.exists();
        let _ = std::fs::remove_file(&path);
        assert!(!left, "{n} outlived the queue");
    }
}
