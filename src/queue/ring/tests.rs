//! Test hooks that forge slot and cursor states, and the ring's own unit tests.

use super::*;

thread_local! {
    /// Set by [`vanish_before_publish_for_test`]: the next single `push` of this thread stops right
    /// before its publishing CAS, as a producer killed there would.
    static VANISH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the next single `push` of the calling thread stop just before it publishes (its message
/// copied, its slot claimed, its JoinableQueue count made) and return as if done: a thread that then
/// exits leaves exactly what a producer killed at that instruction leaves.
pub(crate) fn vanish_before_publish_for_test() {
    VANISH.with(|v| v.set(true));
}

/// Whether this `push` is the one to stop before publishing (and clears the request).
pub(super) fn vanishing() -> bool {
    VANISH.with(|v| v.replace(false))
}

/// A point in the middle of a ring operation where a test runs code of its own ([`run_at_for_test`]),
/// as another process could run there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// In `try_claim_push`, before its claim: the caller has checked `closed`.
    BeforePushClaim,
    /// In `try_claim_pop`, with the head's slot read empty, before `closed` is read.
    PopFoundEmpty,
}

/// A test's code, and where it runs.
type Hook = (Point, Box<dyn FnOnce()>);

thread_local! {
    /// Set by [`run_at_for_test`].
    static HOOK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

/// Makes the calling thread run `f` (once) the next time one of its ring operations reaches `point`.
pub(crate) fn run_at_for_test(point: Point, f: impl FnOnce() + 'static) {
    HOOK.with(|h| *h.borrow_mut() = Some((point, Box::new(f))));
}

/// Runs the hook set for `point`, if any (taken first: the hook may use the ring).
pub(super) fn hook(point: Point) {
    let f = HOOK.with(|h| {
        let mut h = h.borrow_mut();
        match h.take() {
            Some((p, f)) if p == point => Some(f),
            other => {
                *h = other;
                None
            }
        }
    });
    if let Some(f) = f {
        f();
    }
}

impl Ring {
    /// Makes stamp `s` look claimed by `tid`: by a producer (before publish) or a consumer (after).
    pub(crate) fn force_claim_for_test(&self, s: u64, tid: u32, consumer: bool) {
        let h = self.header();
        let slot = self.slot(s);
        if consumer {
            slot.state
                .store(state((s as u32).wrapping_add(1), tid), Ordering::Release);
            h.head.0.pos.store(self.next(s), Ordering::Relaxed);
        } else {
            slot.state.store(state(s as u32, tid), Ordering::Release);
            h.tail.0.pos.store(self.next(s), Ordering::Relaxed);
        }
    }

    /// Overwrites the `tail` (or `head`) hint, as garbage from another process would.
    pub(crate) fn force_hint_for_test(&self, tail: bool, v: u64) {
        let h = self.header();
        if tail {
            h.tail.0.pos.store(v, Ordering::Relaxed);
        } else {
            h.head.0.pos.store(v, Ordering::Relaxed);
        }
    }

    /// The CPUs recorded in the `tail` and `head` lines.
    pub(crate) fn cursor_cpus_for_test(&self) -> (u32, u32) {
        let h = self.header();
        (
            h.tail.0.cpu.load(Ordering::Relaxed),
            h.head.0.cpu.load(Ordering::Relaxed),
        )
    }

    /// Overwrites the CPUs recorded in the `tail` and `head` lines, as another process could; with
    /// `forget`, this process's copies of them too.
    pub(crate) fn force_cursor_cpus_for_test(&self, tail: u32, head: u32, forget: bool) {
        let h = self.header();
        h.tail.0.cpu.store(tail, Ordering::Relaxed);
        h.head.0.cpu.store(head, Ordering::Relaxed);
        if forget {
            for seen in &self.cpu_seen {
                seen.store(0, Ordering::Relaxed);
            }
        }
    }

    /// What a waiting consumer (`consumer`) or producer is told about its peer's CPU.
    pub(crate) fn peer_cpu_for_test(&self, consumer: bool) -> u32 {
        self.peer_cpu(if consumer {
            Side::Consumer
        } else {
            Side::Producer
        })
    }

    pub(crate) fn force_len_for_test(&self, s: u64, len: u32) {
        self.slot(s).len.store(len, Ordering::Relaxed);
    }

    /// Marks stamp `s`'s slot as holding a JoinableQueue count, as a producer's `put` does.
    pub(crate) fn force_mark_for_test(&self, s: u64) {
        self.slot(s).len.fetch_or(COUNTED, Ordering::Relaxed);
    }
}

mod unit {
    use super::*;
    use crate::codec::Raw;
    use crate::queue::Queue;

    /// Found by review: a `put` checked `closed`, a `close` and a consumer's `get` came before its
    /// claim (the `get` found the ring closed and empty: the end of the stream), and the `put` then
    /// claimed a slot, published and returned `Ok`: a message after the end, which a pipe's receiver
    /// never reads. The put now looks at `closed` again after its claim, and fails.
    #[test]
    fn a_put_overtaken_by_a_close_and_the_end_of_the_stream_fails() {
        for batch in [false, true] {
            let q: Queue<u64, Raw> = Queue::new(4).unwrap();
            let (q2, ended) = (q.clone(), std::rc::Rc::new(std::cell::Cell::new(None)));
            let ended2 = ended.clone();
            run_at_for_test(Point::BeforePushClaim, move || {
                q2.close();
                ended2.set(Some(matches!(q2.try_get(), Err(Error::Closed))));
            });
            let put = if batch {
                q.put_many(&[1, 2]).map(|_| ())
            } else {
                q.put(&1)
            };
            assert_eq!(ended.get(), Some(true), "{batch}: the get saw the end");
            assert!(matches!(put, Err(Error::Closed)), "{batch}: {put:?}");
            assert!(matches!(q.try_get(), Err(Error::Closed)), "{batch}");
        }
    }

    /// Found by review: a `get` read the head's slot empty, then a producer put a message and closed
    /// the ring, and the `get` then read `closed`: it said `Closed` (the end of the stream) with the
    /// message in the ring. It now reads the slot again after the flag.
    #[test]
    fn a_get_that_found_the_ring_empty_before_a_put_and_a_close_takes_the_message() {
        for batch in [false, true] {
            let q: Queue<u64, Raw> = Queue::new(4).unwrap();
            let q2 = q.clone();
            run_at_for_test(Point::PopFoundEmpty, move || {
                q2.put(&7).unwrap();
                q2.close();
            });
            let got = if batch {
                let mut out = Vec::new();
                q.try_get_many(&mut out, 4).map(|_| out)
            } else {
                q.try_get().map(|v| vec![v])
            };
            assert_eq!(got.ok(), Some(vec![7]), "{batch}");
            assert!(matches!(q.try_get(), Err(Error::Closed)), "{batch}");
        }
    }

    /// A peer that writes garbage revokes each claim of a `try_pop` while its `f` runs and moves `head`
    /// back to the start of the lap, so that each next claim walks over every slot taken so far (claim
    /// `k` costs `k + 1` steps). All the claims of one attempt share one help budget, so the steps add
    /// up to at most [`Ring::help_budget`] — about 63 claims at capacity 1024 — where a budget per claim
    /// let one attempt make 1024 claims and walk half a million slots (quadratic in the capacity).
    #[test]
    fn one_pop_attempt_spends_one_help_budget_whatever_a_peer_writes() {
        let q: Queue<u64, Raw> = Queue::new(1024).unwrap();
        let ring = q.ring();
        let lap = ring.one_lap;
        for i in 0..u64::from(ring.geo.capacity) {
            let s = lap + i;
            ring.slot(s)
                .state
                .store(state((s as u32).wrapping_add(1), IDLE), Ordering::SeqCst);
            ring.slot(s).len.store(8, Ordering::Relaxed);
        }
        ring.force_hint_for_test(false, lap);
        ring.force_hint_for_test(true, lap + u64::from(ring.geo.capacity));
        let mut claims = 0u64;
        let r = ring.try_pop(proc::current(), &mut |_: &[u8]| {
            // The claim of stamp `lap + claims` is revoked (its slot freed under us) and `head` sent back.
            let s = lap + claims;
            claims += 1;
            ring.slot(s)
                .state
                .store(state(s.wrapping_add(lap) as u32, IDLE), Ordering::SeqCst);
            ring.force_hint_for_test(false, lap);
        });
        assert!(matches!(r, Ok(Pop::Empty)), "{:?}", r.map(|_| ()));
        let steps = claims * (claims + 1) / 2;
        assert!(
            claims > 1,
            "the attempt claimed again after a revoked claim"
        );
        assert!(
            steps <= u64::from(ring.help_budget()),
            "{claims} claims walked {steps} slots, more than one help budget ({})",
            ring.help_budget()
        );
    }
}
