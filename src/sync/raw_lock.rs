//! `RawLock`: a robust, process-shared mutex made of three atomics.
//!
//! # Layout
//!
//! | offset | field   | meaning                                                                     |
//! |-------:|---------|-----------------------------------------------------------------------------|
//! | 0      | `word`  | the futex word: holder tid (bits 0–29) \| `WAITERS` (bit 31); 0 = free      |
//! | 4      | `ns`    | [`proc::pid_ns_tag`] of the holder recorded in `owner` (0 = unknown)        |
//! | 8      | `owner` | `Identity::pack()` (tid, start time) of the holder; 0 = none recorded       |
//!
//! Bit 30 of the word is the kernel's `FUTEX_OWNER_DIED`; we never set it.
//!
//! # Protocol
//! - **lock, uncontended:** `CAS word 0 → tid` (Acquire), then store `ns` and `owner` (Release, so a
//!   waiter that reads our `owner` with Acquire also reads our `ns`). No syscall.
//! - **unlock:** store `owner = 0`, then `swap word → 0` (Release); `FUTEX_WAKE` one only if `WAITERS` was
//!   set. Clearing `owner` first means that a record read after acquiring-loading a held word never
//!   belongs to an *earlier* holding: the clear is in the release sequence every later acquirer reads
//!   from. So `owner` names the current holder, or is 0 while the holder is between its CAS and its
//!   record (or died there, or died between the clear and the swap).
//! - **lock, contended:** spin for the thread's lock budget of time ([`Backoff`], class
//!   [`SpinClass::Lock`]), then set `WAITERS` and `FUTEX_WAIT` on the word ([`Sleeper`]). The sleep has a
//!   timeout; when it expires the waiter judges the holder ([`RawLock::judge`]):
//!   - *recorded* (`owner` names the word's tid): the full identity decides — tid **and** start time,
//!     so a recycled tid is never the old holder — and only in the holder's own pid namespace
//!     ([`proc::holder_alive`]); a holder recorded in another namespace is taken for alive.
//!   - *unrecorded* (`owner` is 0, or names another tid: a taker between its two CASes, below): the
//!     holder may be a live thread preempted between its CAS and its record. A tid that no namespace
//!     can contain is garbage and dead at once; otherwise the waiter judges only after the pair
//!     (`word`, `owner`) stayed unchanged for [`UNRECORDED_GRACE`] (counted per process, across
//!     calls), and then by existence of the tid in its own namespace (its own tid counts as dead: it
//!     is waiting here, so it is not the holder), or by the death of the other thread the record
//!     names (a taker killed mid-take-over, whose take-over nobody else finishes). This recovers
//!     garbage and a holder that died inside that two-instruction window. Its one blind spot: a live
//!     holder in *another* pid namespace stopped in that window for the whole grace period can be
//!     taken for dead.
//! - **take-over** ([`RawLock::take_over`]): re-read `word` and `owner`, require both unchanged since
//!   the judgement (R3 of the 2026-11-30 review), then `CAS owner: observed → ours` — this serialises
//!   rival takers, and fails if the holder unlocked (it clears `owner`) or a new holder recorded itself —
//!   then `CAS word: dead tid (± WAITERS) → ours | WAITERS`. Exactly one contender wins, and reports
//!   [`Acquired::OwnerDied`].
//!
//! A waiter that acquires through the slow path always sets `WAITERS` (it cannot know whether others
//! still sleep), so one extra wake may follow contention: the classic trade of Drepper's "Futexes are
//! tricky", mutex 2.
//!
//! # Who am I
//! "This thread holds the lock" is `word`'s tid, `owner` and `ns` all equal to ours: the tid alone is not
//! enough, since a dead holder's tid can be recycled to us (R3).
//!
//! # Why not the kernel's robust list
//! The kernel can mark a robust futex `OWNER_DIED` at thread exit, but each thread has one robust list,
//! and glibc owns it for `pthread_mutex_t`. Joining glibc's list means depending on its private mutex
//! layout. Liveness checks on a timed wait cost nothing on the fast path and bound recovery at
//! ~[`MAX_CHECK`]; they are what this crate does for every primitive.
//!
//! # Garbage
//! Any bit pattern is a valid state. A garbage tid that is not a live thread is a dead holder and the
//! next waiter recovers the lock. A garbage tid that *is* a live thread (or a record from another
//! namespace) makes waiters wait as if that thread held the lock — the same as a hostile process simply
//! holding it; `try_lock` never waits and `lock_until` keeps its deadline whatever the words say. A word
//! forged to name the calling thread itself is, for a user-facing lock, "held by me": `try_lock` and timed
//! calls refuse at once ([`LockFail::WouldDeadlock`]); for an object's internal lock, which is never held
//! across calls, it is garbage and taken over ([`Nesting::NeverHeld`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::wait::{Backoff, Sleeper, Slept, SpinClass, MAX_CHECK};
use crate::region::ShmSafe;
use crate::sys::futex;
use crate::sys::proc::{self, Identity};

const TID_MASK: u32 = 0x3fff_ffff;
const WAITERS: u32 = 0x8000_0000;
/// The first sleep slice of a waiter, after which it judges the holder (a `/proc` read); the slices
/// then double up to [`MAX_CHECK`].
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);
/// How long a holder with no record must stay unchanged before a waiter judges it by its tid alone.
/// A live holder records itself one store after its CAS; this is many scheduler time slices.
pub(crate) const UNRECORDED_GRACE: Duration = Duration::from_millis(200);
/// How long a `try_*` call of an object with an internal lock (semaphore, barrier) waits for it: a live
/// peer holds it for a few stores; longer means a hung or hostile peer, or garbage.
pub(crate) const TRY_BOUND: Duration = Duration::from_millis(2);
/// How long a call with no deadline of its own that must not block (a semaphore's release, a barrier's
/// abort) waits for an internal lock before giving up (or acting without it).
pub(crate) const INTERNAL_BOUND: Duration = Duration::from_secs(2);
/// Attempts at the final word CAS of a take-over while only `WAITERS` changes under it.
const TAKE_OVER_TRIES: u32 = 64;

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From a live holder, or a free lock.
    Clean,
    /// Taken over from a holder that died; carries its tid.
    OwnerDied(u32),
}

/// Why a bounded acquisition did not acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockFail {
    /// Held by someone else until the deadline (or now, for `try_lock`).
    TimedOut,
    /// The word, owner and namespace name the calling thread: it holds the lock already (or a forger
    /// copied its identity), and waiting would be a self-deadlock.
    WouldDeadlock,
}

/// Whether the caller may already hold the lock it is acquiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nesting {
    /// A user-facing lock: the caller may hold a guard already, so "held by me" is a self-deadlock.
    MayHold,
    /// An object's internal lock, taken and released inside one call: the caller never holds it when
    /// acquiring, so a word naming it is garbage, taken over like a dead holder's.
    NeverHeld,
}

/// What a waiter concluded about the holder a word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Alive,
    /// Dead (or garbage): take over from the observed `owner`.
    Dead {
        owner: u64,
    },
    /// No record names the word's tid: judge only after [`UNRECORDED_GRACE`] of no change.
    Unrecorded {
        owner: u64,
    },
    /// The calling thread, by its full identity.
    Me,
}

/// The raw state of a robust lock. See the module docs for the layout and protocol.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawLock {
    /// Holder tid | `WAITERS`, or 0 when free.
    word: AtomicU32,
    /// `proc::pid_ns_tag()` of the holder recorded in `owner`.
    ns: AtomicU32,
    /// `Identity::pack()` of the holder, cleared on unlock; 0 while none is recorded.
    owner: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<RawLock>() == 16);

// SAFETY: all fields are atomics of integers: any bit pattern is valid and all mutation is atomic.
unsafe impl ShmSafe for RawLock {}

/// How many locks [`grace_expired`] remembers at once (stale sightings go first, then the least recently seen).
const GRACE_ENTRIES: usize = 4096;

/// One lock's unrecorded holder as this process saw it: the lock's address, (`word`, `owner`), and
/// when that pair was first and last seen.
struct Sighting {
    lock: usize,
    pair: (u32, u64),
    first: Instant,
    last: Instant,
}

/// The sightings of [`grace_expired`].
static SEEN: Mutex<Vec<Sighting>> = Mutex::new(Vec::new());

/// The sightings' lock, held by the thread that forks a child across the `fork` (see
/// `process::forklocks::ForkLocks`): a forked child waiting on any lock of this crate may take it.
/// Nothing is taken while it is held, so it comes last.
pub(crate) struct ForkSightings {
    _seen: MutexGuard<'static, Vec<Sighting>>,
}

impl ForkSightings {
    pub(crate) fn before_fork() -> ForkSightings {
        ForkSightings {
            _seen: SEEN.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Whether lock `lock`'s (`word`, `owner`), judged unrecorded, has been seen unchanged by this process
/// for [`UNRECORDED_GRACE`], looked at again at least every [`UNRECORDED_GRACE`] meanwhile. The
/// sightings are remembered per process, by the lock's address, so that short calls add up: until
/// 2026-12-02 they lived in one call, and `try_lock`, a `lock_timeout` under the grace, or a
/// semaphore's 2 ms internal lock never recovered a holder killed between its CAS and its record
/// (found by review). A gap longer than the grace starts over: the same pair seen twice far apart
/// may be two holdings (every fresh holder shows `(tid, 0)` in its window). Reached only on the slow
/// path, after a sleep or a failed try.
fn grace_expired(lock: &RawLock, word: u32, owner: u64) -> bool {
    let key = lock as *const RawLock as usize;
    let now = Instant::now();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = Sighting {
        lock: key,
        pair: (word, owner),
        first: now,
        last: now,
    };
    if let Some(e) = seen.iter_mut().find(|e| e.lock == key) {
        let continuous = now.duration_since(e.last) <= UNRECORDED_GRACE;
        if e.pair == fresh.pair && continuous {
            e.last = now;
            return now.duration_since(e.first) >= UNRECORDED_GRACE;
        }
        *e = fresh;
        return false;
    }
    // Room for a new lock: first forget sightings too old to count (a gap longer than the grace starts
    // over anyway), then, past the cap, the one seen least recently. Before (found by review), the
    // oldest *entry* went at 64: a process watching more than 64 such locks in turn evicted each before
    // it came round again, and none was ever recovered.
    if seen.len() >= GRACE_ENTRIES {
        seen.retain(|e| now.duration_since(e.last) <= UNRECORDED_GRACE);
    }
    if seen.len() >= GRACE_ENTRIES {
        if let Some(i) = (0..seen.len()).min_by_key(|&i| seen[i].last) {
            seen.swap_remove(i);
        }
    }
    seen.push(fresh);
    false
}

impl RawLock {
    /// Tries once, without blocking (a `/proc` read at most, to judge a holder that looks dead).
    /// `None` if held; a user-facing lock held by the calling thread itself is also `None`.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Acquired> {
        self.try_lock_as(Nesting::MayHold).ok()
    }

    /// Tries once, without blocking; says why not.
    #[inline]
    pub(crate) fn try_lock_as(&self, nesting: Nesting) -> Result<Acquired, LockFail> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Ok(Acquired::Clean);
        }
        self.try_slow(me, nesting)
    }

    #[cold]
    fn try_slow(&self, me: Identity, nesting: Nesting) -> Result<Acquired, LockFail> {
        // Acquire: see the record of whoever set this word (module docs, "unlock").
        let v = self.word.load(Ordering::Acquire);
        if v == 0 {
            // Released since our CAS: one more try, still without waiting.
            return if self.acquire_free(me) {
                Ok(Acquired::Clean)
            } else {
                Err(LockFail::TimedOut)
            };
        }
        let owner = match self.judge(v, me, nesting) {
            Verdict::Me => return Err(LockFail::WouldDeadlock),
            Verdict::Alive => return Err(LockFail::TimedOut),
            Verdict::Unrecorded { owner } => self
                .unrecorded_dead(v, owner, me)
                .ok_or(LockFail::TimedOut)?,
            Verdict::Dead { owner } => owner,
        };
        self.take_over(v, owner, me).ok_or(LockFail::TimedOut)
    }

    /// Blocks until acquired, or until `deadline` passes (`None` = forever). `None` only on a deadline.
    /// A user-facing lock held by the calling thread waits (a self-deadlock, like `std`'s); use
    /// [`RawLock::lock_as`] to be told instead.
    #[inline]
    pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> Option<Acquired> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Some(Acquired::Clean);
        }
        self.lock_slow(me, deadline, None).ok()
    }

    /// Blocks until acquired or `deadline` passes; reports a self-deadlock instead of waiting on it.
    #[inline]
    pub(crate) fn lock_as(
        &self,
        deadline: Option<Instant>,
        nesting: Nesting,
    ) -> Result<Acquired, LockFail> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Ok(Acquired::Clean);
        }
        self.lock_slow(me, deadline, Some(nesting))
    }

    /// Like [`RawLock::lock_as`] with a deadline `bound` from now, read from the clock only if the lock
    /// is not free: the uncontended path stays free of the clock (a vDSO call costs several times
    /// the lock itself).
    #[inline]
    pub(crate) fn lock_within(
        &self,
        bound: Duration,
        nesting: Nesting,
    ) -> Result<Acquired, LockFail> {
        let me = proc::current();
        if self.acquire_free(me) {
            return Ok(Acquired::Clean);
        }
        self.lock_slow(me, Some(Instant::now() + bound), Some(nesting))
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
            self.record(me);
        }
        won
    }

    /// Records `me` as the holder: `ns` first, then `owner` with Release, so that whoever reads this
    /// `owner` with Acquire reads this `ns` too.
    #[inline]
    fn record(&self, me: Identity) {
        // Almost always the namespace is already ours: a load, not a store, keeps the fast path at the
        // stores it had before namespaces were recorded (an extra store measurably slowed it).
        let ns = proc::pid_ns_tag();
        if self.ns.load(Ordering::Relaxed) != ns {
            self.ns.store(ns, Ordering::Relaxed);
        }
        self.owner.store(me.pack(), Ordering::Release);
    }

    /// `nesting` is `None` for [`RawLock::lock_until`]'s legacy contract: a self-held lock waits.
    #[cold]
    fn lock_slow(
        &self,
        me: Identity,
        deadline: Option<Instant>,
        nesting: Option<Nesting>,
    ) -> Result<Acquired, LockFail> {
        // Spin while the word names another thread that may hold it: a critical section usually ends
        // within the spin budget (see `wait::Backoff`). A word naming no possible thread or this very
        // thread is judged at once below: spinning cannot free it.
        let mut backoff = Backoff::for_class(SpinClass::Lock).until(deadline);
        loop {
            let v = self.word.load(Ordering::Relaxed);
            let tid = v & TID_MASK;
            if v == 0 {
                if self
                    .word
                    .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.record(me);
                    return Ok(Acquired::Clean);
                }
            } else if tid == me.tid || tid == 0 || tid > proc::PID_MAX_LIMIT {
                break;
            }
            if !backoff.snooze() {
                break;
            }
        }
        let mut sleeper = Sleeper::new(deadline).checking(MIN_CHECK_INTERVAL, MAX_CHECK);
        // Judging costs a /proc read, so a live holder is judged only after a sleep timed out. A word
        // that names no possible thread, or this very thread, is judged at once (no /proc read needed
        // for the first, and a self-held lock must not be slept on).
        let mut due = false;
        // Whether an unlock's wake may have gone to us (our last sleep ended early) and we have not set
        // `WAITERS` again since.
        let mut woken = false;
        loop {
            let v = self.word.load(Ordering::Acquire);
            if v == 0 {
                // Others may be asleep behind us: keep WAITERS so our unlock wakes one of them.
                if self
                    .word
                    .compare_exchange(0, me.tid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.record(me);
                    return Ok(Acquired::Clean);
                }
                // Taken in between: look again, unless the deadline passed (a word that garbage keeps
                // flipping must not keep us here past it).
                if sleeper.passed() {
                    return Err(self.time_out(woken));
                }
                continue;
            }
            let tid = v & TID_MASK;
            if due || tid == me.tid || tid == 0 || tid > proc::PID_MAX_LIMIT {
                due = false;
                let verdict = self.judge(v, me, nesting.unwrap_or(Nesting::MayHold));
                let dead_owner = match verdict {
                    Verdict::Dead { owner } => Some(owner),
                    Verdict::Unrecorded { owner } => self.unrecorded_dead(v, owner, me),
                    Verdict::Me if nesting.is_some() => return Err(LockFail::WouldDeadlock),
                    _ => None,
                };
                if let Some(owner) = dead_owner {
                    if let Some(a) = self.take_over(v, owner, me) {
                        return Ok(a);
                    }
                    if sleeper.passed() {
                        return Err(self.time_out(woken));
                    }
                    continue;
                }
            }
            // Checked on every pass, not only by the sleep: a word that keeps changing under our CAS
            // (garbage written continuously) must not keep us past the deadline.
            if sleeper.passed() {
                return Err(self.time_out(woken));
            }
            if v & WAITERS == 0
                && self
                    .word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            // The word carries `WAITERS` now: an unlock will wake a sleeper, nothing is owed.
            woken = false;
            match sleeper.sleep(&self.word, v | WAITERS, None, || false) {
                Slept::Woken => woken = true,
                Slept::SliceEnded => due = true,
                Slept::Deadline => return Err(LockFail::TimedOut),
            }
        }
    }

    /// The record to take over from, if the holder of `word`, which no record names (`owner` is
    /// another's or none), is dead. Only once the pair stayed unchanged for the grace
    /// ([`grace_expired`]); then the word's tid must not exist in our namespace (our own tid counts
    /// as dead: we are waiting here), or the record must name another thread that is dead by its
    /// full identity: a taker killed between its two CASes ([`RawLock::take_over`]), whose take-over
    /// nobody else finishes. Left to the tid, a live thread that inherited the dead holder's tid kept
    /// the lock held for good (found by review). Not without the grace: a record can also name a
    /// dead taker that lost its race and died before giving the record back, while a fresh holder
    /// sits between its CAS and its record (found by review of the first fix: two holders).
    fn unrecorded_dead(&self, word: u32, owner: u64, me: Identity) -> Option<u64> {
        let tid = word & TID_MASK;
        if !grace_expired(self, word, owner) {
            return None;
        }
        let recorded = Identity::unpack(owner);
        let dead_taker = owner != 0
            && recorded.tid != tid
            && !proc::holder_alive(recorded, self.ns.load(Ordering::Relaxed));
        (tid == me.tid || dead_taker || !proc::is_alive(Identity { tid, start: 0 }))
            .then_some(owner)
    }

    /// A waiter gives up at its deadline. If it was woken since it last set or saw `WAITERS` on the
    /// word, the wake was meant for whoever sleeps behind it: an unlock clears `WAITERS` and wakes one
    /// sleeper, and if a spinner took the lock before the woken waiter could (without `WAITERS`, which
    /// it sets only once it slept), the remaining sleepers would wait for their slices to end. The wake
    /// is passed on; a sleeper that finds the lock held sets `WAITERS` again and sleeps (a spurious
    /// wake costs it one look).
    #[cold]
    fn time_out(&self, woken: bool) -> LockFail {
        if woken {
            futex::wake(&self.word, 1);
        }
        LockFail::TimedOut
    }

    /// Judges the holder named by `word` (loaded with Acquire by the caller). Reads `owner` (Acquire)
    /// and then `ns`, which pairs them (see [`RawLock::record`]).
    fn judge(&self, word: u32, me: Identity, nesting: Nesting) -> Verdict {
        let tid = word & TID_MASK;
        let owner = self.owner.load(Ordering::Acquire);
        let ns = self.ns.load(Ordering::Relaxed);
        let recorded = Identity::unpack(owner);
        if tid == 0 || tid > proc::PID_MAX_LIMIT {
            // Only garbage sets a word with no possible holder (a bare WAITERS or bit 30, a huge tid).
            return Verdict::Dead { owner };
        }
        if owner == 0 || recorded.tid != tid {
            // No record of the word's tid: a holder between its CAS and its record, or a taker between
            // its two CASes (see `unrecorded_dead`), or garbage.
            return Verdict::Unrecorded { owner };
        }
        if owner == me.pack() && ns == proc::pid_ns_tag() {
            return match nesting {
                Nesting::MayHold => Verdict::Me,
                Nesting::NeverHeld => Verdict::Dead { owner },
            };
        }
        if proc::holder_alive(recorded, ns) {
            Verdict::Alive
        } else {
            Verdict::Dead { owner }
        }
    }

    /// Replaces the holder of `dead` (judged dead with record `owner`) by us. Exactly one contender can
    /// succeed for a given holding; see the module docs ("take-over").
    fn take_over(&self, dead: u32, owner: u64, me: Identity) -> Option<Acquired> {
        // R3: the word and the record must still be those we judged. Acquire on the word: a change of
        // holder since then comes with its record.
        if self.word.load(Ordering::Acquire) & TID_MASK != dead & TID_MASK
            || self.owner.load(Ordering::Acquire) != owner
        {
            return None;
        }
        let mine = me.pack();
        // Claim the record. Fails if the holder unlocked since (it cleared `owner`), if a new holder
        // recorded itself, or if a rival taker got here first.
        if mine != owner {
            self.owner
                .compare_exchange(owner, mine, Ordering::AcqRel, Ordering::Relaxed)
                .ok()?;
        }
        self.ns.store(proc::pid_ns_tag(), Ordering::Relaxed);
        let mut cur = self.word.load(Ordering::Relaxed);
        for _ in 0..TAKE_OVER_TRIES {
            if cur & TID_MASK != dead & TID_MASK {
                break;
            }
            // AcqRel: our `ns` store above is seen by whoever reads this word with Acquire.
            match self.word.compare_exchange_weak(
                cur,
                me.tid | WAITERS,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.owner.store(mine, Ordering::Release);
                    return Some(Acquired::OwnerDied(dead & TID_MASK));
                }
                Err(v) => cur = v,
            }
        }
        // The word moved to someone else (only garbage can do that while the record is ours): give the
        // record back so that the holder's waiters judge it as before.
        let _ = self
            .owner
            .compare_exchange(mine, owner, Ordering::Relaxed, Ordering::Relaxed);
        None
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// May only be called by the thread that holds the lock (acquired by `try_lock`/`lock_until` and not
    /// yet unlocked); otherwise it releases someone else's critical section.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        // The record goes first: whoever acquires after the swap below sees 0 or a later record.
        self.owner.store(0, Ordering::Relaxed);
        // Release: our critical section (and the clear above) happens-before the next acquirer's
        // Acquire CAS, and before any waiter's Acquire load of a later value of the word.
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            futex::wake(&self.word, 1);
        }
    }

    /// Whether the calling thread holds the lock (for reentrant locks and condition variables): the
    /// word's tid, the record and the namespace are all ours. The tid alone is not enough (R3).
    #[inline]
    pub(crate) fn held_by_current_thread(&self) -> bool {
        let me = proc::current();
        self.word.load(Ordering::Relaxed) & TID_MASK == me.tid
            && self.owner.load(Ordering::Relaxed) == me.pack()
            && self.ns.load(Ordering::Relaxed) == proc::pid_ns_tag()
    }
}

#[cfg(test)]
impl RawLock {
    /// The tid the word names as the holder (0: free).
    pub(crate) fn holder_tid_for_test(&self) -> u32 {
        self.word.load(Ordering::Relaxed) & TID_MASK
    }

    /// Makes the lock look held by `word` (tests simulate dead holders with impossible tids).
    pub(crate) fn force_word_for_test(&self, word: u32) {
        self.word.store(word, Ordering::Relaxed);
    }

    /// Makes the lock look held by `word` with the record `owner` in namespace `ns`.
    pub(crate) fn force_for_test(&self, word: u32, owner: Identity, ns: u32) {
        self.ns.store(ns, Ordering::Relaxed);
        self.owner.store(owner.pack(), Ordering::Relaxed);
        self.word.store(word, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A forked child judges a lock's unrecorded holder (as any wait on a lock of the crate may)
    /// while another thread of its parent holds the sightings. Until the fix the child inherited the
    /// lock held by a thread it does not have, and hung for good.
    #[test]
    fn a_forked_child_judges_a_holder_whatever_another_thread_holds_the_sightings() {
        let got = crate::process::forklocks::tests::fork_while_held(
            || SEEN.lock().unwrap_or_else(|e| e.into_inner()),
            || {
                let lock = RawLock::default();
                // A first sighting: not expired.
                if grace_expired(&lock, 1, 0) {
                    0
                } else {
                    42
                }
            },
        );
        assert_eq!(got, Ok(42));
    }

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

    /// A waiter timing out after a wake passes the wake on to a sleeper of the word; one that was not
    /// woken since it set `WAITERS` owes nothing and its time-out wakes nobody.
    #[test]
    fn a_woken_waiter_that_times_out_passes_the_wake_on() {
        let l = RawLock::default();
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
        let held = l.word.load(Ordering::Relaxed);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let sleeper = s.spawn(|| {
                let outcome = futex::wait(&l.word, held, Some(Duration::from_secs(60)));
                done.store(true, Ordering::SeqCst);
                outcome
            });
            // Given time to fall asleep, a time-out that owes no wake must not end its sleep.
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(l.time_out(false), LockFail::TimedOut);
            std::thread::sleep(Duration::from_millis(50));
            let early = done.load(Ordering::SeqCst);
            // Repeated, in case the sleeper was not asleep yet: a wake before its sleep is lost.
            let bound = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::SeqCst) && Instant::now() < bound {
                assert_eq!(l.time_out(true), LockFail::TimedOut);
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(sleeper.join().unwrap(), futex::WaitOutcome::Woken);
            assert!(!early, "a time-out that owed nothing woke the sleeper");
        });
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
    fn recycled_tid_is_not_me_and_is_taken_over() {
        let l = RawLock::default();
        let me = proc::current();
        let old = Identity {
            tid: me.tid,
            start: me.start.wrapping_add(1),
        };
        l.force_for_test(me.tid, old, proc::pid_ns_tag());
        assert!(!l.held_by_current_thread());
        assert_eq!(l.try_lock(), Some(Acquired::OwnerDied(me.tid)));
        assert!(l.held_by_current_thread());
        // SAFETY: we hold it now.
        unsafe { l.unlock() };
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
    }

    #[test]
    fn holder_in_another_namespace_is_not_judged() {
        let l = RawLock::default();
        let me = proc::current();
        let dead = Identity {
            tid: me.tid,
            start: me.start.wrapping_add(1),
        };
        l.force_for_test(me.tid, dead, proc::pid_ns_tag() ^ 1);
        assert_eq!(l.try_lock(), None);
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            l.lock_as(Some(soon), Nesting::MayHold),
            Err(LockFail::TimedOut)
        );
        l.force_for_test(me.tid, dead, proc::pid_ns_tag());
        assert_eq!(l.lock_until(None), Some(Acquired::OwnerDied(me.tid)));
    }

    #[test]
    fn self_held_is_would_deadlock_or_garbage() {
        let l = RawLock::default();
        assert_eq!(l.try_lock(), Some(Acquired::Clean));
        assert_eq!(
            l.try_lock_as(Nesting::MayHold),
            Err(LockFail::WouldDeadlock)
        );
        assert_eq!(
            l.lock_as(None, Nesting::MayHold),
            Err(LockFail::WouldDeadlock)
        );
        // An internal lock is never held across calls: a word naming us is garbage.
        let me = proc::current().tid;
        assert_eq!(
            l.lock_as(None, Nesting::NeverHeld),
            Ok(Acquired::OwnerDied(me))
        );
        // SAFETY: we hold it.
        unsafe { l.unlock() };
    }

    #[test]
    fn unrecorded_dead_holder_is_recovered_after_the_grace() {
        let l = RawLock::default();
        // A tid that fits a namespace but is not running here (a holder that died between its CAS and
        // its record): no record, so only existence after the grace decides.
        let tid = std::thread::spawn(|| proc::current().tid).join().unwrap();
        l.word.store(tid, Ordering::Relaxed);
        assert_eq!(l.try_lock(), None, "the grace has not passed");
        assert_eq!(l.lock_until(None), Some(Acquired::OwnerDied(tid)));
    }

    /// Found by review: a taker killed between recording itself and moving the word left the word
    /// naming the dead holder, whose tid a live thread may have inherited: the lock stayed held for
    /// good. The dead taker's record now decides.
    #[test]
    fn a_taker_killed_mid_take_over_is_taken_over() {
        let l = RawLock::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        // The word's tid: a live thread (the dead holder's tid, recycled).
        let live = std::thread::spawn(move || {
            tx.send(proc::current().tid).unwrap();
            let _ = stop_rx.recv();
        });
        let live_tid = rx.recv().unwrap();
        // The record: a taker that has exited.
        let taker = std::thread::spawn(proc::current).join().unwrap();
        l.force_for_test(live_tid, taker, proc::pid_ns_tag());
        // Not at once: the same state is a fresh holder between its CAS and its record, beside a
        // record a dead taker left (found by review of the first fix).
        assert_eq!(l.try_lock(), None);
        let got = l.lock_as(
            Some(Instant::now() + Duration::from_secs(60)),
            Nesting::MayHold,
        );
        assert!(matches!(got, Ok(Acquired::OwnerDied(_))), "{got:?}");
        // SAFETY: taken just above.
        unsafe { l.unlock() };
        drop(stop_tx);
        live.join().unwrap();
    }

    /// Found by review: the grace counted from a pair's first sighting to any later one, so the same
    /// pair seen twice far apart (two holdings, each in its window) counted as unchanged all along.
    #[test]
    fn sightings_far_apart_start_the_grace_over() {
        let l = RawLock::default();
        let tid = std::thread::spawn(|| proc::current().tid).join().unwrap();
        l.word.store(tid, Ordering::Relaxed);
        assert_eq!(l.try_lock(), None);
        std::thread::sleep(UNRECORDED_GRACE + Duration::from_millis(100));
        assert_eq!(
            l.try_lock(),
            None,
            "a gap longer than the grace starts it over"
        );
    }

    /// Found by review: the grace was counted within one call, so only a wait longer than it could
    /// recover such a holder: `try_lock` never did. Calls now add up.
    #[test]
    fn short_calls_add_up_to_the_grace() {
        let l = RawLock::default();
        let tid = std::thread::spawn(|| proc::current().tid).join().unwrap();
        l.word.store(tid, Ordering::Relaxed);
        // Bounded, to prove no hang.
        let end = Instant::now() + Duration::from_secs(60);
        let got = loop {
            if let Some(a) = l.try_lock() {
                break a;
            }
            assert!(Instant::now() < end, "never recovered");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(got, Acquired::OwnerDied(tid));
    }

    /// Found by review: the sightings kept 64 locks and evicted the oldest entry, so a process looking
    /// at more locks than that in turn, each held by an unrecorded dead holder, never recovered any.
    #[test]
    fn many_locks_watched_in_turn_are_all_recovered() {
        let tid = std::thread::spawn(|| proc::current().tid).join().unwrap();
        let locks: Vec<RawLock> = (0..100).map(|_| RawLock::default()).collect();
        for l in &locks {
            l.word.store(tid, Ordering::Relaxed);
        }
        let mut left: Vec<&RawLock> = locks.iter().collect();
        // Bounded, to prove no hang (the grace is 200 ms).
        let end = Instant::now() + Duration::from_secs(30);
        while !left.is_empty() {
            left.retain(|l| match l.try_lock() {
                Some(a) => {
                    assert_eq!(a, Acquired::OwnerDied(tid));
                    false
                }
                None => true,
            });
            assert!(Instant::now() < end, "{} never recovered", left.len());
            std::thread::sleep(Duration::from_millis(10));
        }
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
