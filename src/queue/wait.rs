//! How a blocked side of a ring waits: a short adaptive spin, then a futex sleep that the other side
//! wakes at most once per sleep.

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

/// Spinning before sleeping: a few rounds of exponentially more `pause`s, then a few `yield`s (on two
/// cores the other side may need ours to make progress). Roughly the cost of a futex wake-up in all.
pub(super) struct Backoff {
    step: u32,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff { step: 0 }
    }

    /// Waits a little; returns false once it is time to sleep instead.
    pub(super) fn snooze(&mut self) -> bool {
        match self.step {
            0..=6 => {
                for _ in 0..(1u32 << self.step) {
                    std::hint::spin_loop();
                }
            }
            7..=10 => std::thread::yield_now(),
            _ => return false,
        }
        self.step += 1;
        true
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
