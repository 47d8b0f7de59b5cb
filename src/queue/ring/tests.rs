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
