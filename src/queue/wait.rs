//! How a blocked side of a ring waits: a spin budgeted in time and adapted per thread, then a futex
//! sleep that the other side wakes at most once per sleep.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex;

/// The first check for a dead claimer happens after this much unchanged waiting; it then backs off.
pub(super) const MIN_CHECK: Duration = Duration::from_micros(500);
/// The longest a waiter goes between checks for a dead claimer.
pub(super) const MAX_CHECK: Duration = Duration::from_millis(50);

/// Bit 0 of [`WaitWord::seq`]: somebody sleeps, or is about to, on the current value.
const WAITING: u32 = 1;

/// A futex "something changed" word. Sleepers set [`WAITING`] and sleep on the word's value; a notifier
/// that sees the bit clears it (by bumping the counter) and makes the one `FUTEX_WAKE` that wakes them
/// all. Every other notify, including all of those while the woken side is still getting up, is a
/// fence and a load: no system call. (A needless wake costs ~330 ns here; a woken futex waiter takes
/// 40–50 µs to run, and notifying on every message during that window used to collapse throughput.)
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct WaitWord {
    seq: AtomicU32,
    _pad: AtomicU32,
}

// Lives in shared memory: a layout change must be a compile error, not a type-hash mismatch at run time.
const _: () = assert!(std::mem::size_of::<WaitWord>() == 8);
const _: () = assert!(std::mem::align_of::<WaitWord>() == 4);

impl WaitWord {
    /// Wakes the sleepers, if any.
    ///
    /// The caller must have made its state change with a **SeqCst read-modify-write** (every caller
    /// publishes with a SeqCst compare-and-swap). That RMW and the SeqCst load here, against the sleeper's
    /// SeqCst RMW of this word and its SeqCst re-check of the state, form a Dekker pair in the single
    /// total order of SeqCst operations: either we see [`WAITING`], or the sleeper's re-check sees the
    /// change. On x86 the RMW is the `lock cmpxchg` the publish needs anyway and the load is a plain
    /// `mov`: the notify costs no fence (a separate `mfence` here cost a good part of a 64-byte message).
    #[inline]
    pub(crate) fn notify(&self) {
        let s = self.seq.load(Ordering::SeqCst);
        // s is odd: s + 1 clears the bit and moves the value the sleepers wait on.
        if s & WAITING != 0
            && self
                .seq
                .compare_exchange(s, s.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            futex::wake_all(&self.seq);
        }
    }

    /// Wakes every sleeper unconditionally (closing a queue).
    pub(crate) fn wake_everyone(&self) {
        // +2 keeps the bit as it is and changes the value, so a sleeper about to sleep returns at once.
        self.seq.fetch_add(2, Ordering::SeqCst);
        futex::wake_all(&self.seq);
    }

    /// Sleeps until notified, until `slice` passes, or not at all if `ready()` holds once we are
    /// registered. Every return may be spurious; the caller re-checks.
    pub(crate) fn sleep(&self, slice: Duration, ready: impl Fn() -> bool) {
        let mut s = self.seq.load(Ordering::Relaxed);
        if s & WAITING == 0 {
            match self
                .seq
                .compare_exchange(s, s | WAITING, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => s |= WAITING,
                // Changed under us: a notify happened; let the caller look again.
                Err(_) => return,
            }
        } else {
            fence(Ordering::SeqCst);
        }
        // `ready` must read the state with SeqCst loads (see `notify`).
        if !ready() {
            futex::wait(&self.seq, s, Some(slice));
        }
    }
}

/// The longest a waiter spins (then as long again yielding) before it sleeps.
const SPIN_MAX: Duration = Duration::from_micros(60);
/// The shortest spin budget a thread adapts down to.
const SPIN_MIN: Duration = Duration::from_micros(2);

thread_local! {
    /// This thread's spin budget, adapted from what its recent waits needed (see [`Backoff`]).
    static SPIN_BUDGET: Cell<Duration> = const { Cell::new(Duration::from_micros(30)) };
}

/// Spinning before sleeping, budgeted in **time**, not in iterations: a `pause` costs very different
/// times on different CPUs (127 of them were ~1 µs on one VM of this kind and far less than a futex
/// wake-up on another), while a futex wake-up costs 20–80 µs on either. A waiter spins for its thread's
/// budget, then yields for as long again (on two cores the other side may need ours to make progress),
/// then sleeps.
///
/// The budget adapts per thread: a wait that ended within reach of spinning (the peer answered within
/// a few budgets) sets the budget to 1.5 times what it needed, between [`SPIN_MIN`] and [`SPIN_MAX`], so
/// a ping-pong with a peer that answers in microseconds stays in the spinning regime; a wait that needed
/// a long sleep (an idle peer) halves it, so an idle waiter burns next to no CPU. The first
/// [`QUICK_SNOOZES`] snoozes are single pauses with no clock read at all. The clock is read only once a
/// caller is blocked: the fast paths never get here.
pub(super) struct Backoff {
    /// Snoozes so far that were a single `pause` each, before the clock is consulted at all.
    quick: u32,
    /// When the first timed snooze happened (`None`: the wait ended before).
    start: Option<Instant>,
    /// Whether this wait went to sleep.
    slept: bool,
}

/// Snoozes of one `pause` each that come first: a peer that answers within a few hundred ns (both
/// sides awake) is caught without a clock read or a batch of pauses in between.
const QUICK_SNOOZES: u32 = 4;

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff {
            quick: 0,
            start: None,
            slept: false,
        }
    }

    /// Waits a little; returns false once it is time to sleep instead.
    pub(super) fn snooze(&mut self) -> bool {
        if self.quick < QUICK_SNOOZES {
            self.quick += 1;
            std::hint::spin_loop();
            return true;
        }
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        let spent = now - start;
        let budget = SPIN_BUDGET.with(Cell::get);
        if spent < budget {
            // A few pauses between clock reads (a clock read is ~20 ns through the vDSO): the caller
            // re-checks its condition after each call, so a longer batch only adds latency.
            for _ in 0..4 {
                std::hint::spin_loop();
            }
            return true;
        }
        if spent < budget * 2 {
            std::thread::yield_now();
            return true;
        }
        self.slept = true;
        false
    }
}

impl Drop for Backoff {
    fn drop(&mut self) {
        let Some(start) = self.start else {
            return; // never blocked: nothing learned
        };
        let needed = start.elapsed();
        SPIN_BUDGET.with(|b| {
            let next = if !self.slept || needed < SPIN_MAX * 2 {
                // Within reach of spinning: spin about that long next time. Tracking down as well as
                // up matters on two cores: a waiter that spins far longer than its peer needs can sit
                // on the very CPU the peer needs to answer.
                (needed + needed / 2).clamp(SPIN_MIN, SPIN_MAX)
            } else {
                // A long sleep: the peer is idle, and spinning for it burns CPU for nothing.
                (b.get() / 2).max(SPIN_MIN)
            };
            b.set(next);
        });
    }
}

/// Tells when the slot a caller waits on has stayed in the same state long enough to check whether its
/// claimer died. Measured by the clock, not by our own sleep timeouts: other traffic may keep waking us
/// early, and a dead claimer must still be noticed.
pub(super) struct StuckWatch {
    key: Option<(u64, u64, Instant)>,
    pub(super) interval: Duration,
}

impl StuckWatch {
    /// Reads no clock: a put or get that never has to wait should not pay for one.
    pub(super) fn new() -> Self {
        StuckWatch {
            key: None,
            interval: MIN_CHECK,
        }
    }

    /// Whether (`pos`, `state`) has been seen unchanged for the current interval; backs off after each yes.
    pub(super) fn due(&mut self, pos: u64, state: u64) -> bool {
        let now = Instant::now();
        match self.key {
            Some((p, s, since)) if (p, s) == (pos, state) => {
                if now.duration_since(since) < self.interval {
                    return false;
                }
                self.key = Some((pos, state, now));
                self.interval = (self.interval * 2).min(MAX_CHECK);
                true
            }
            _ => {
                self.key = Some((pos, state, now));
                false
            }
        }
    }
}
