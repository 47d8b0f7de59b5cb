//! [`Barrier`]: processes wait until `parties` of them arrived, or until the barrier breaks.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::raw_lock::{Acquired, Nesting, RawLock, INTERNAL_BOUND, TRY_BOUND};
use super::wait::{note_cpu, Waiter, Wake, MAX_CHECK};
use crate::error::{Error, Result};
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;
use crate::sys::futex;
use crate::sys::proc::{self, Identity};

/// The most parties a barrier can have: each one that arrived is recorded so its death can be noticed.
pub const MAX_PARTIES: u32 = 256;

#[repr(C)]
pub(crate) struct RawBarrier {
    lock: RawLock,
    parties: AtomicU32,
    /// Parties that arrived in the current generation.
    count: AtomicU32,
    /// Bumped each time the barrier trips or breaks; the futex word waiters sleep on.
    generation: AtomicU32,
    broken: AtomicU32,
    /// How each of the last 64 rounds ended: bit `g % 64` is set if the round that ended by moving
    /// `generation` from `g` broke, clear if it tripped. Written before the move (Release), read by a
    /// waiter of round `g` once it sees the move: its own round's outcome, not the barrier's state when
    /// it wakes (a `reset` since, or a later round broken by a faster party, changed that).
    outcomes: AtomicU64,
    /// `Identity::pack()` of each party that arrived in this generation, in arrival order.
    arrived: [AtomicU64; MAX_PARTIES as usize],
    /// `proc::pid_ns_tag()` of each party in `arrived`: its death is judged only from that namespace.
    arrived_ns: [AtomicU32; MAX_PARTIES as usize],
    /// The CPU of the last party to arrive (in this round, or the one that tripped the last): a party
    /// that then waits takes it as where its peer last ran, and yields instead of pausing when that is
    /// its own CPU ([`note_cpu`]; a hint only).
    last_cpu: AtomicU32,
    _pad: AtomicU32,
}

// The layout hash covers the size: adding the parties' namespaces (S6), then the rounds' outcomes, then
// the last arrival's CPU changed it, so builds before and after each change refuse each other's barriers.
const _: () = assert!(std::mem::size_of::<RawBarrier>() == 3120);

// SAFETY: atomics only; every bit pattern is a valid state (counts are clamped to MAX_PARTIES before
// indexing).
unsafe impl ShmSafe for RawBarrier {}

/// A barrier for `parties` processes or threads, like Python's `multiprocessing.Barrier`.
///
/// `wait_timeout` returns by its deadline (plus a couple of milliseconds) whatever the shared memory
/// says, and `abort` never blocks for long; garbage that changes the count or the generation changes
/// the outcome of a round (an early trip, a spurious break), as it would for any shared counter.
///
/// [`wait`](Barrier::wait) blocks until `parties` callers have arrived, then releases them all and
/// returns each a distinct index in `0..parties`. The barrier is then reusable. It *breaks* —
/// every current and future `wait` returns [`Error::BrokenBarrier`] until [`reset`](Barrier::reset) —
/// when a waiter times out, when [`abort`](Barrier::abort) is called, or when a party that arrived dies
/// before the barrier trips (noticed within about 50 ms). So a crashed participant never leaves the
/// others hanging.
///
/// # Examples
/// ```
/// let b = mproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0); // a one-party barrier trips at once
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    shared: Shared<RawBarrier>,
}

impl_shared_object!(Barrier, RawBarrier, "mproc::Barrier");

impl Barrier {
    #[track_caller]
    fn init(parties: u32) -> impl Fn(&RawBarrier) {
        assert!(
            (1..=MAX_PARTIES).contains(&parties),
            "a barrier needs 1..={MAX_PARTIES} parties, not {parties}"
        );
        move |r| r.parties.store(parties, Ordering::Relaxed)
    }

    /// Creates an anonymous barrier for `parties` participants.
    ///
    /// # Panics
    /// If `parties` is 0 or above [`MAX_PARTIES`].
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn new(parties: u32) -> Result<Barrier> {
        Ok(Barrier {
            shared: Shared::create(Self::layout(), None, false, Self::init(parties))?,
        })
    }

    /// Creates a named barrier (removed when this handle is dropped in this process).
    ///
    /// # Panics
    /// If `parties` is 0 or above [`MAX_PARTIES`].
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    #[track_caller]
    pub fn create(name: &str, parties: u32) -> Result<Barrier> {
        Ok(Barrier {
            shared: Shared::create(Self::layout(), Some(name), false, Self::init(parties))?,
        })
    }

    /// The number of parties needed to trip the barrier.
    pub fn parties(&self) -> u32 {
        self.shared
            .parties
            .load(Ordering::Relaxed)
            .clamp(1, MAX_PARTIES)
    }

    /// The number of parties waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.shared.count.load(Ordering::Relaxed).min(MAX_PARTIES)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire) != 0
    }

    /// Waits for the other parties; returns this caller's arrival index.
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if the barrier is or becomes broken.
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(None)
    }

    /// Waits at most `timeout`; running out of time breaks the barrier (as in Python).
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if the barrier is or becomes broken, including by this timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// Breaks the barrier: every waiter (now and later) gets [`Error::BrokenBarrier`]. Never blocks
    /// for long: if another thread keeps the internal lock past a couple of milliseconds (hung, hostile,
    /// or garbage naming a live thread), the barrier is broken without it — every field is an atomic,
    /// and breaking is what a waiter of a stuck round needs anyway.
    pub fn abort(&self) {
        self.locked_or_forced(TRY_BOUND, |r| r.break_now());
    }

    /// Mends a broken barrier and forgets the parties waiting (they get [`Error::BrokenBarrier`]).
    /// Waits at most 2 s for the internal lock, then mends without it (see [`Barrier::abort`]).
    pub fn reset(&self) {
        self.locked_or_forced(INTERNAL_BOUND, |r| {
            if r.count.load(Ordering::Relaxed) != 0 {
                r.break_now();
            }
            r.count.store(0, Ordering::Relaxed);
            r.broken.store(0, Ordering::Release);
        });
    }

    /// Runs `f` under the internal lock; `None` if it could not be taken by `deadline`. The internal
    /// lock is never held across calls, so a word naming this thread is garbage ([`Nesting::NeverHeld`]).
    fn locked<R>(&self, deadline: Option<Instant>, f: impl FnOnce(&RawBarrier) -> R) -> Option<R> {
        let raw = &*self.shared;
        let a = raw.lock.lock_as(deadline, Nesting::NeverHeld).ok()?;
        if a != Acquired::Clean {
            // A party died mid-update: the count or the arrival list may be half-written. Breaking is the
            // consistent answer: everyone learns the round failed.
            raw.break_now();
        }
        let r = f(raw);
        // SAFETY: acquired above by this thread; released once.
        unsafe { raw.lock.unlock() };
        Some(r)
    }

    /// Runs `f` under the internal lock if it can be taken within `bound`, else without it.
    fn locked_or_forced<R>(&self, bound: Duration, f: impl Fn(&RawBarrier) -> R) -> R {
        match self.locked(Some(Instant::now() + bound), &f) {
            Some(r) => r,
            None => f(&self.shared),
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let me = proc::current();
        let parties = self.parties();
        // The internal lock is held for a few stores (or a liveness check): waited for up to
        // `TRY_BOUND` whatever the timeout, so that a tiny timeout does not break the barrier over it.
        let lock_by = deadline.map(|d| d.max(Instant::now() + TRY_BOUND));
        let arrival = self.locked(lock_by, |r| {
            if r.broken.load(Ordering::Relaxed) != 0 {
                return Err(Error::BrokenBarrier);
            }
            let index = r.count.load(Ordering::Relaxed).min(parties - 1);
            let generation = r.generation.load(Ordering::Relaxed);
            let peer_cpu = r.last_cpu.load(Ordering::Relaxed);
            note_cpu(&r.last_cpu);
            if index + 1 == parties {
                r.count.store(0, Ordering::Relaxed);
                // Release: see `round_broke` (the word reached `generation` before this rewrite).
                r.outcomes
                    .fetch_and(!(1 << (generation % 64)), Ordering::Release);
                r.generation
                    .store(generation.wrapping_add(1), Ordering::Release);
                futex::wake_all(&r.generation);
                return Ok((index, None));
            }
            r.arrived[index as usize].store(me.pack(), Ordering::Relaxed);
            r.arrived_ns[index as usize].store(proc::pid_ns_tag(), Ordering::Relaxed);
            r.count.store(index + 1, Ordering::Relaxed);
            Ok((index, Some((generation, peer_cpu))))
        });
        let Some(arrival) = arrival else {
            // The internal lock stayed held until our deadline: time out as a waiter would (Python's
            // rule: a timeout breaks the barrier).
            self.abort();
            return Err(Error::BrokenBarrier);
        };
        let arrival = arrival?;
        let (index, Some((generation, peer_cpu))) = arrival else {
            return Ok(arrival.0);
        };
        let raw = &*self.shared;
        // Spin, then sleep on the generation in slices growing from 1 ms to `MAX_CHECK`; each slice that
        // runs out checks whether a party that arrived has died (see `wait::Waiter`).
        let mut waiter = Waiter::new(deadline).checking(Duration::from_millis(1), MAX_CHECK);
        loop {
            let tripped = || raw.generation.load(Ordering::SeqCst) != generation;
            match waiter.wait_until_beside(tripped, &raw.generation, generation, None, || peer_cpu)
            {
                Wake::Ready => {
                    return if raw.round_broke(generation) {
                        Err(Error::BrokenBarrier)
                    } else {
                        Ok(index)
                    };
                }
                Wake::Deadline => return self.time_out(generation, index),
                Wake::SliceEnded => {
                    let _ = self.locked(deadline, |r| {
                        if r.generation.load(Ordering::Relaxed) != generation {
                            return;
                        }
                        let n = r.count.load(Ordering::Relaxed).min(MAX_PARTIES) as usize;
                        // A party recorded in another pid namespace cannot be judged here: alive (S6).
                        let someone_died =
                            r.arrived[..n]
                                .iter()
                                .zip(&r.arrived_ns[..n])
                                .any(|(a, ns)| {
                                    !proc::holder_alive(
                                        Identity::unpack(a.load(Ordering::Relaxed)),
                                        ns.load(Ordering::Relaxed),
                                    )
                                });
                        if someone_died {
                            r.break_now();
                        }
                    });
                }
            }
        }
    }
}

impl Barrier {
    /// Ends the wait of the party that arrived `index`-th in round `generation`, whose deadline passed:
    /// breaks that round (Python's rule: a timeout breaks the barrier), if it is still the current one.
    ///
    /// The round may have tripped between the waiter's last look and its clock read (found by review).
    /// Breaking then hit the *next* round: this party got `BrokenBarrier` for a round that tripped,
    /// while the others got `Ok` for it, and their next round failed. So the check and the break are
    /// made together, under the internal lock (or without it if it stays held past [`TRY_BOUND`], as
    /// [`Barrier::abort`] does: the deadline has passed), and a round that ended meanwhile is reported
    /// as it ended.
    fn time_out(&self, generation: u32, index: u32) -> Result<u32> {
        let ended = self.locked_or_forced(TRY_BOUND, |r| {
            if r.generation.load(Ordering::Relaxed) != generation {
                return true;
            }
            r.break_now();
            false
        });
        if ended && !self.shared.round_broke(generation) {
            Ok(index)
        } else {
            Err(Error::BrokenBarrier)
        }
    }
}

impl RawBarrier {
    /// Marks the barrier broken and releases everyone waiting in this generation. Caller holds the lock.
    fn break_now(&self) {
        self.broken.store(1, Ordering::Release);
        self.count.store(0, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Relaxed);
        // Release: see `round_broke`.
        self.outcomes
            .fetch_or(1 << (generation % 64), Ordering::Release);
        self.generation.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.generation);
    }

    /// Whether the round that waited on `generation` ended broken (the caller saw `generation` move,
    /// with a load of any ordering). Known for the last 63 rounds; a waiter that slept through more
    /// (other processes than the barrier's parties completed rounds meanwhile) gets the barrier's
    /// state now.
    fn round_broke(&self, generation: u32) -> bool {
        // The caller's load may be Relaxed (`Barrier::time_out` reads the word under the lock, or
        // without it once forced): this fence makes it synchronize with the Release move it read, so
        // the bit of round `g`, written before that move, is visible to the load of the bits below.
        fence(Ordering::Acquire);
        // The bit of round `g` is rewritten by round `g + 64`, whose writer read the word as `g + 64`
        // before its Release RMW of the bits. So the bits are read first and the word after (the
        // Acquire load orders them), as a seqlock's reader does: if the bits carry that rewrite, the
        // writer's read of the word happens-before ours, which then reads `g + 64` or more, and the bit
        // is not used. Reading the word first, as until 2026-12-02, let a round end between the two
        // loads and rewrite the bit read.
        let bits = self.outcomes.load(Ordering::Acquire);
        let now = self.generation.load(Ordering::Acquire);
        if now.wrapping_sub(generation) >= 64 {
            return self.broken.load(Ordering::Acquire) != 0;
        }
        bits & (1 << (generation % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round's outcome is read from its bit while fewer than 64 rounds ended since; from 64 on, the
    /// bit may already be the outcome of the round 64 later (or being rewritten): the barrier's state
    /// now is reported instead.
    #[test]
    fn a_rounds_bit_is_trusted_for_63_rounds_only() {
        let b = Barrier::new(2).unwrap();
        let r = &*b.shared;
        // Round 5 broke (its bit set), and the barrier is not broken now.
        r.outcomes.store(1 << 5, Ordering::Relaxed);
        r.broken.store(0, Ordering::Relaxed);
        r.generation.store(5 + 63, Ordering::Relaxed);
        assert!(r.round_broke(5));
        r.generation.store(5 + 64, Ordering::Relaxed);
        assert!(!r.round_broke(5), "round 69's bit may be read as round 5's");
        r.broken.store(1, Ordering::Relaxed);
        assert!(r.round_broke(5));
        // Across the word's wrap.
        r.outcomes.store(1 << (u32::MAX % 64), Ordering::Relaxed);
        r.broken.store(0, Ordering::Relaxed);
        r.generation.store(62, Ordering::Relaxed);
        assert!(r.round_broke(u32::MAX));
    }

    /// A party that waits takes the CPU of the last arrival as its peer's: every arrival, the tripping
    /// one included, records its CPU.
    #[test]
    fn every_arrival_records_its_cpu() {
        let b = Barrier::new(1).unwrap();
        b.shared
            .last_cpu
            .store(proc::UNKNOWN_CPU, Ordering::Relaxed);
        let cpu = std::thread::scope(|s| {
            s.spawn(|| {
                let cpu = proc::pin_current_thread_for_test();
                assert_eq!(b.wait().unwrap(), 0);
                cpu
            })
            .join()
            .unwrap()
        });
        assert_eq!(b.shared.last_cpu.load(Ordering::Relaxed), cpu);
    }

    /// Found by review: a waiter whose deadline passed just after its round tripped broke the next
    /// round. Its time-out now reports the round it waited on, and leaves the next one alone.
    #[test]
    fn a_time_out_after_the_round_tripped_reports_the_trip_and_breaks_nothing() {
        let b = Barrier::new(2).unwrap();
        let generation = b.shared.generation.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            let first = s.spawn(|| b.wait());
            // Bounded, to prove no hang: until the first party is counted as arrived.
            let end = Instant::now() + Duration::from_secs(60);
            while b.n_waiting() == 0 {
                assert!(Instant::now() < end, "the first party never arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(b.wait().unwrap(), 1);
            assert_eq!(first.join().unwrap().unwrap(), 0);
        });
        // The first party's wait, had its deadline passed right after the trip:
        assert_eq!(b.time_out(generation, 0).unwrap(), 0);
        assert!(!b.broken(), "the next round was broken");
        // A time-out in the current round still breaks it.
        let now = b.shared.generation.load(Ordering::SeqCst);
        assert!(matches!(b.time_out(now, 0), Err(Error::BrokenBarrier)));
        assert!(b.broken());
    }

    #[test]
    fn trips_and_is_reusable() {
        let b = Barrier::new(3).unwrap();
        for _ in 0..3 {
            let mut idx: Vec<u32> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..3).map(|_| s.spawn(|| b.wait().unwrap())).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            idx.sort();
            assert_eq!(idx, vec![0, 1, 2]);
        }
    }

    #[test]
    fn timeout_breaks_and_reset_mends() {
        let b = Barrier::new(2).unwrap();
        assert!(matches!(
            b.wait_timeout(Duration::from_millis(5)),
            Err(Error::BrokenBarrier)
        ));
        assert!(b.broken());
        assert!(matches!(b.wait(), Err(Error::BrokenBarrier)));
        b.reset();
        assert!(!b.broken());
    }

    /// Waits (bounded, to prove no hang) until `n` parties wait on `b`.
    fn until_waiting(b: &Barrier, n: u32) {
        let end = Instant::now() + Duration::from_secs(60);
        while b.n_waiting() < n {
            assert!(Instant::now() < end, "parties never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Found by review: `reset` broke the round and cleared `broken` at once, so the woken waiters read
    /// "not broken" and returned `Ok` with only two of three parties arrived.
    #[test]
    fn reset_fails_the_parties_of_the_round_it_forgets() {
        let b = Barrier::new(3).unwrap();
        for _ in 0..5 {
            let got: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2).map(|_| s.spawn(|| b.wait())).collect();
                until_waiting(&b, 2);
                b.reset();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(
                got.iter().all(|r| matches!(r, Err(Error::BrokenBarrier))),
                "{got:?}"
            );
            assert!(!b.broken());
        }
    }

    /// Found by review: a party of a round that tripped read the barrier's state when it woke, which
    /// a faster party had already broken in the next round: it got `BrokenBarrier` for a round that
    /// succeeded.
    #[test]
    fn a_tripped_round_succeeds_whatever_the_next_round_does() {
        for _ in 0..5 {
            let b = Barrier::new(2).unwrap();
            let slow = std::thread::scope(|s| {
                let h = s.spawn(|| b.wait());
                until_waiting(&b, 1);
                assert!(b.wait().is_ok(), "trips the round");
                // The next round times out at once, which breaks the barrier.
                assert!(matches!(
                    b.wait_timeout(Duration::ZERO),
                    Err(Error::BrokenBarrier)
                ));
                h.join().unwrap()
            });
            assert!(slow.is_ok(), "{slow:?}");
        }
    }

    #[test]
    fn dead_party_breaks_the_barrier() {
        let b = Barrier::new(3).unwrap();
        // A party that arrived and then exited (its thread is gone) before the barrier tripped.
        std::thread::scope(|s| {
            s.spawn(|| {
                let raw = &*b.shared;
                let a = raw.lock.lock_until(None).unwrap();
                assert_eq!(a, Acquired::Clean);
                raw.arrived[0].store(proc::current().pack(), Ordering::Relaxed);
                raw.arrived_ns[0].store(proc::pid_ns_tag(), Ordering::Relaxed);
                raw.count.store(1, Ordering::Relaxed);
                // SAFETY: this thread took the lock just above.
                unsafe { raw.lock.unlock() };
            });
        });
        assert!(matches!(
            b.wait_timeout(Duration::from_secs(60)),
            Err(Error::BrokenBarrier)
        ));
    }
}
