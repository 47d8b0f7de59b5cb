//! `RawLock`: a robust, process-shared mutex made of two atomics.
//!
//! # Protocol
//! The 32-bit futex `word` uses the kernel's robust-futex layout:
//!
//! | bits  | meaning                                                            |
//! |-------|--------------------------------------------------------------------|
//! | 0–29  | tid of the holder (0 = free)                                       |
//! | 30    | unused (the kernel's `FUTEX_OWNER_DIED`; we never set it)          |
//! | 31    | `WAITERS`: someone may sleep on the word; the unlocker must wake  |
//!
//! - **lock, uncontended:** `CAS 0 → tid` (Acquire), then store the holder's identity (tid + start time)
//!   into `owner` with Relaxed. No syscall.
//! - **lock, contended:** spin a little, then set `WAITERS` and `FUTEX_WAIT` on the word. The sleep has a
//!   timeout; when it expires the waiter checks whether the holder still lives (`sys::proc::is_alive`,
//!   pid-reuse safe). If it died, the waiter takes the lock with `CAS dead_word → tid|WAITERS` — exactly
//!   one waiter wins that CAS — and reports [`Acquired::OwnerDied`]. The slice grows from 1 ms to
//!   [`MAX_CHECK_INTERVAL`], which bounds how long a dead holder can block the others.
//! - **unlock:** `swap → 0` (Release); `FUTEX_WAKE` one only if `WAITERS` was set.
//!
//! A waiter that acquires through the slow path always sets `WAITERS` (it cannot know whether others
//! still sleep), so one extra wake may follow contention: the classic trade of Drepper's "Futexes are
//! tricky", mutex 2.
//!
//! # Why not the kernel's robust list
//! The kernel can mark a robust futex `OWNER_DIED` at thread exit, but each thread has one robust list,
//! and glibc owns it for `pthread_mutex_t`. Joining glibc's list means depending on its private mutex
//! layout. Liveness checks on a timed wait cost nothing on the fast path and bound recovery at
//! ~[`MAX_CHECK_INTERVAL`]; they are what this crate does for every primitive.
//!
//! # Garbage
//! Any bit pattern is a valid state: a garbage tid that is not a live thread is a dead holder and the
//! next waiter recovers the lock. A garbage tid that *is* a live thread makes waiters wait as if that
//! thread held the lock — the same as a hostile process simply holding the lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::region::ShmSafe;
use crate::sys::futex;
use crate::sys::proc::{self, Identity};

const TID_MASK: u32 = 0x3fff_ffff;
const WAITERS: u32 = 0x8000_0000;
const SPINS: u32 = 100;
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);
/// The longest a waiter sleeps before checking whether the holder is alive.
pub(crate) const MAX_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From a live holder, or a free lock.
    Clean,
    /// Taken over from a holder that died; carries its tid.
    OwnerDied(u32),
}

/// The raw state of a robust lock. See the module docs for the protocol.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawLock {
    /// Holder tid | `WAITERS`, or 0 when free.
    word: AtomicU32,
    _pad: AtomicU32,
    /// `Identity::pack()` of the last holder. Stale after unlock; trusted only when its tid equals the
    /// word's tid (otherwise the holder is between its CAS and this store, and only existence is checked).
    owner: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<RawLock>() == 16);

// SAFETY: all fields are atomics of integers: any bit pattern is valid and all mutation is atomic.
unsafe impl ShmSafe for RawLock {}

impl RawLock {
    /// Tries once, without blocking.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Acquired> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Some(Acquired::Clean);
        }
        // A free-looking word may still belong to a dead holder only if it is non-zero; try a takeover
        // only when the holder is demonstrably gone (costs a /proc read, so only on this cold path).
        let v = self.word.load(Ordering::Relaxed);
        if v != 0 && v & TID_MASK != me.tid && !self.holder_alive(v) {
            return self.take_over(v, me);
        }
        None
    }

    /// Blocks until acquired, or until `deadline` passes (`None` = forever).
    #[inline]
    pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Some(Acquired::Clean);
        }
        self.lock_slow(me, deadline)
    }

    /// The fast path: `CAS 0 → tid` (Acquire: the previous holder's critical section happens-before
    /// ours), then record who we are for waiters' liveness checks.
    #[inline]
    fn acquire_free(&self, me: Identity) -> bool {
        let won = self
            .word
            .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if won {
            self.owner.store(me.pack(), Ordering::Relaxed);
        }
        won
    }

    #[cold]
    fn lock_slow(&self, me: Identity, deadline: Option<Instant>) -> Option<Acquired> {
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.word.load(Ordering::Relaxed) == 0
                && self
                    .word
                    .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.owner.store(me.pack(), Ordering::Relaxed);
                return Some(Acquired::Clean);
            }
        }
        let mut interval = MIN_CHECK_INTERVAL;
        loop {
            let v = self.word.load(Ordering::Relaxed);
            if v == 0 {
                // Others may be asleep behind us: keep WAITERS so our unlock wakes one of them.
                if self
                    .word
                    .compare_exchange(0, me.tid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.owner.store(me.pack(), Ordering::Relaxed);
                    return Some(Acquired::Clean);
                }
                continue;
            }
            if v & WAITERS == 0
                && self
                    .word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let mut slice = interval;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                slice = slice.min(d - now);
            }
            if futex::wait(&self.word, v | WAITERS, Some(slice)) == futex::WaitOutcome::TimedOut {
                let cur = self.word.load(Ordering::Relaxed);
                if cur != 0 && !self.holder_alive(cur) {
                    if let Some(a) = self.take_over(cur, me) {
                        return Some(a);
                    }
                }
                interval = (interval * 2).min(MAX_CHECK_INTERVAL);
            }
        }
    }

    fn holder_alive(&self, word: u32) -> bool {
        let tid = word & TID_MASK;
        let recorded = Identity::unpack(self.owner.load(Ordering::Relaxed));
        let id = if recorded.tid == tid {
            recorded
        } else {
            Identity { tid, start: 0 }
        };
        proc::is_alive(id)
    }

    /// Replaces a dead holder's word with ours. Exactly one contender can succeed for a given `dead`.
    fn take_over(&self, dead: u32, me: Identity) -> Option<Acquired> {
        self.word
            .compare_exchange(dead, me.tid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.owner.store(me.pack(), Ordering::Relaxed);
        Some(Acquired::OwnerDied(dead & TID_MASK))
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// May only be called by the thread that holds the lock (acquired by `try_lock`/`lock_until` and not
    /// yet unlocked); otherwise it releases someone else's critical section.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        // Release: our critical section happens-before the next acquirer's Acquire CAS.
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            futex::wake(&self.word, 1);
        }
    }

    /// Whether the calling thread holds the lock (for reentrant locks and condition variables).
    #[inline]
    pub(crate) fn held_by_current_thread(&self) -> bool {
        self.word.load(Ordering::Relaxed) & TID_MASK == proc::current().tid
    }
}

#[cfg(test)]
impl RawLock {
    /// Makes the lock look held by `word` (tests simulate dead holders with impossible tids).
    pub(crate) fn force_word_for_test(&self, word: u32) {
        self.word.store(word, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lock_unlock_and_contention_between_threads() {
        let l = Arc::new(RawLock::default());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, c) = (l.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert_eq!(l.lock_until(None), Some(Acquired::Clean));
                        // A non-atomic read-modify-write: only correct under mutual exclusion.
                        let v = c.load(Ordering::Relaxed);
                        c.store(v + 1, Ordering::Relaxed);
                        // SAFETY: this thread acquired the lock just above.
                        unsafe { l.unlock() };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn timeout_expires_while_held() {
        let l = RawLock::default();
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
        let other = std::thread::scope(|s| {
            s.spawn(|| l.lock_until(Some(Instant::now() + Duration::from_millis(20))))
                .join()
                .unwrap()
        });
        assert_eq!(other, None);
        // SAFETY: this thread holds it.
        unsafe { l.unlock() };
    }

    #[test]
    fn dead_holder_is_taken_over_once() {
        let l = RawLock::default();
        // A holder that cannot exist: tid 0x3fff_fffe is above pid_max.
        l.word.store(0x3fff_fffe, Ordering::Relaxed);
        assert_eq!(l.lock_until(None), Some(Acquired::OwnerDied(0x3fff_fffe)));
        // SAFETY: we hold it now.
        unsafe { l.unlock() };
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
    }

    #[test]
    fn thread_that_exited_holding_is_detected() {
        let l = Arc::new(RawLock::default());
        let l2 = l.clone();
        std::thread::spawn(move || assert_eq!(l2.try_lock(), Some(Acquired::Clean)))
            .join()
            .unwrap();
        assert!(matches!(l.lock_until(None), Some(Acquired::OwnerDied(_))));
    }
}
