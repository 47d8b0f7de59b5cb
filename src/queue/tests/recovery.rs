//! Dead claimers and panicking codecs: polling callers recover a dead claim, a live one is left
//! alone, a panic while a slot is held does not wedge it.

use super::*;

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
