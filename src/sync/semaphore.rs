//! [`Semaphore`] and [`BoundedSemaphore`], with permits that come back when their holder dies.
//!
//! # Layout and protocol
//! All state is guarded by a robust [`RawLock`]; `value` (free permits) doubles as the futex word that
//! waiters sleep on. Permits taken through a guard are recorded in `holders` per holding thread, so a
//! waiter that finds no permit free can give back those of dead holders.
//!
//! Every update under the lock first writes an undo record (`journal`), then changes `value` and one
//! holder slot, then clears the record. If the lock's previous holder died, the next one rolls back an
//! undo record it finds: the interrupted update did not happen. No permit is ever lost or doubled by a
//! death inside the critical section.
//!
//! Each holder slot records the thread's identity (tid, start time) and its pid namespace; a waiter
//! gives back only the permits of holders it can judge dead from its own namespace
//! ([`proc::holder_alive`]): those of a holder in another pid namespace stay taken.
//!
//! # Garbage and deadlines
//! Any bytes are a valid state. `try_acquire` waits at most [`TRY_BOUND`] and `acquire_timeout` at most
//! its timeout, internal lock included (except that its first look waits for the internal lock up to
//! [`TRY_BOUND`] too, as `try_acquire` does); `release`, a guard's drop and `forget` wait at most
//! [`INTERNAL_BOUND`] for it. Garbage that changes a counter (`value`, a holder's count) changes the
//! outcome — permits appear or vanish — as it would for any shared counter.
//!
//! More than [`HOLDER_SLOTS`] threads holding permits at once is allowed, but the permits beyond the
//! table are not tracked (they are not returned if their holder dies).

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::raw_lock::{Acquired, Nesting, RawLock, INTERNAL_BOUND, TRY_BOUND};
use super::wait::{note_cpu, Backoff, Sleeper, Slept, SpinClass, MAX_CHECK};
use crate::error::{Error, Result};
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;
use crate::sys::futex;
use crate::sys::proc::{self, Identity};

/// Threads that can hold tracked permits at once.
pub const HOLDER_SLOTS: usize = 64;
const NO_SLOT: u32 = u32::MAX;

#[repr(C)]
#[derive(Debug, Default)]
struct Holder {
    /// `Identity::pack()` of the holding thread, or 0 when the slot is free.
    owner: AtomicU64,
    /// Permits it holds.
    count: AtomicU32,
    /// `proc::pid_ns_tag()` of the holding thread: its death is judged only from that namespace.
    ns: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Holder>() == 16);

/// The undo record: values of `value` and of one holder slot before the update in progress.
#[repr(C)]
#[derive(Debug, Default)]
struct Journal {
    /// Non-zero while an update is in progress.
    active: AtomicU32,
    value: AtomicU32,
    slot: AtomicU32,
    slot_count: AtomicU32,
    slot_owner: AtomicU64,
    slot_ns: AtomicU32,
    _pad: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Journal>() == 32);

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RawSemaphore {
    lock: RawLock,
    /// Free permits; the futex word.
    value: AtomicU32,
    /// Ceiling for `release` (`u32::MAX` when unbounded).
    max: AtomicU32,
    /// Threads that may sleep on `value`.
    sleepers: AtomicU32,
    /// The CPU the last release ran on: an acquirer whose releaser last ran on its own CPU yields
    /// instead of pausing ([`note_cpu`]; a hint only). Builds before it left this word 0 (padding), a
    /// hint like any other, so the layout did not change.
    releaser_cpu: AtomicU32,
    /// `sys::proc::monotonic_ms()` of the last scan for dead holders, by any waiter in any process.
    last_scan_ms: AtomicU64,
    journal: Journal,
    holders: [Holder; HOLDER_SLOTS],
}

// The layout hash covers the size: growing the journal by the holder's namespace (S6) changed it, so a
// build before that change refuses to open a semaphore of a build after it, and the reverse.
const _: () = assert!(std::mem::size_of::<RawSemaphore>() == 1096);

// SAFETY: atomics only; every bit pattern is a valid state (slot indices are bounds-checked, counts
// saturate), and all mutation is atomic.
unsafe impl ShmSafe for RawSemaphore {}

/// How long a call may wait for the internal lock.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Until this deadline (`None`: forever).
    Until(Option<Instant>),
    /// For this long from the moment the lock is found taken (no clock read when it is free).
    Within(Duration),
}

/// What one update under the lock does to `value` and to the caller's holder slot.
enum Update {
    Take,
    /// `tracked`: the permit is a guard's that the caller's holder slot records (see
    /// [`SemaphoreGuard`]); a loose `release`, and a guard taken while the table was full, are not.
    Give {
        tracked: bool,
    },
}

impl RawSemaphore {
    fn init(&self, value: u32, max: u32) {
        self.value.store(value, Ordering::Relaxed);
        self.max.store(max, Ordering::Relaxed);
    }

    /// Runs `f` under the internal lock, after rolling back an update a dead holder left half-done;
    /// `None` if the lock could not be taken by `deadline` (a peer holds it: hung, hostile, or the
    /// words are garbage naming a live thread). The internal lock is never held across calls, so a
    /// word naming this thread is garbage and taken over ([`Nesting::NeverHeld`]).
    fn locked<R>(&self, wait: Wait, f: impl FnOnce(&Self) -> R) -> Option<R> {
        let acquired = match wait {
            Wait::Until(deadline) => self.lock.lock_as(deadline, Nesting::NeverHeld),
            Wait::Within(bound) => self.lock.lock_within(bound, Nesting::NeverHeld),
        }
        .ok()?;
        if acquired != Acquired::Clean {
            self.roll_back();
        }
        let r = f(self);
        // SAFETY: acquired just above by this thread, released once.
        unsafe { self.lock.unlock() };
        Some(r)
    }

    fn roll_back(&self) {
        let j = &self.journal;
        if j.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.value
            .store(j.value.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(h) = self.holders.get(j.slot.load(Ordering::Relaxed) as usize) {
            h.owner
                .store(j.slot_owner.load(Ordering::Relaxed), Ordering::Relaxed);
            h.count
                .store(j.slot_count.load(Ordering::Relaxed), Ordering::Relaxed);
            h.ns.store(j.slot_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        j.active.store(0, Ordering::Relaxed);
    }

    /// Applies `update` for thread `me`; the caller holds the lock. `None` if it cannot apply (no free
    /// permit, or the ceiling would be passed: a guard's record is dropped even then); else whether a
    /// holder slot records the change (a permit taken while all [`HOLDER_SLOTS`] hold other threads'
    /// is not tracked).
    fn apply(&self, update: Update, me: Identity) -> Option<bool> {
        let value = self.value.load(Ordering::Relaxed);
        let at_ceiling = value >= self.max.load(Ordering::Relaxed);
        let new_value = match update {
            Update::Take if value == 0 => return None,
            Update::Take => value - 1,
            Update::Give { tracked: false } if at_ceiling => return None,
            // A guard's permit given back at the ceiling (a loose `release` already gave one back
            // while the guard was out): the value stays, but the guard's record goes. Left in place,
            // it was handed back once more when the thread died (found by review: two holders of a
            // `BoundedSemaphore(1)`).
            Update::Give { tracked: true } if at_ceiling => value,
            Update::Give { .. } => value + 1,
        };
        let track = matches!(update, Update::Take | Update::Give { tracked: true });
        let slot = if track {
            self.slot_for(me, matches!(update, Update::Take))
        } else {
            NO_SLOT
        };
        self.journaled(slot, || {
            self.value.store(new_value, Ordering::Relaxed);
            if let Some(h) = self.holders.get(slot as usize) {
                let c = h.count.load(Ordering::Relaxed);
                let c = if matches!(update, Update::Take) {
                    c.saturating_add(1)
                } else {
                    c.saturating_sub(1)
                };
                h.count.store(c, Ordering::Relaxed);
                h.owner
                    .store(if c == 0 { 0 } else { me.pack() }, Ordering::Relaxed);
                h.ns.store(proc::pid_ns_tag(), Ordering::Relaxed);
            }
        });
        (new_value != value).then_some(slot != NO_SLOT)
    }

    /// Runs `change` (which may modify `value` and holder slot `slot`) with an undo record of both
    /// written first, so that a holder of the lock dying inside `change` is rolled back by the next one.
    /// The caller holds the lock; its Release/Acquire orders these Relaxed stores for the next holder,
    /// the journal's only reader.
    fn journaled(&self, slot: u32, change: impl FnOnce()) {
        let j = &self.journal;
        j.value
            .store(self.value.load(Ordering::Relaxed), Ordering::Relaxed);
        j.slot.store(slot, Ordering::Relaxed);
        if let Some(h) = self.holders.get(slot as usize) {
            j.slot_owner
                .store(h.owner.load(Ordering::Relaxed), Ordering::Relaxed);
            j.slot_count
                .store(h.count.load(Ordering::Relaxed), Ordering::Relaxed);
            j.slot_ns
                .store(h.ns.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        j.active.store(1, Ordering::Relaxed);
        change();
        j.active.store(0, Ordering::Relaxed);
    }

    /// The slot recording `me`, or (when `claim`) a free one; `NO_SLOT` if none.
    ///
    /// A thread usually acquires the same semaphore again and again, and its slot is freed each time its
    /// guard drops; a per-thread hint of the last slot used makes that case one load instead of a scan of
    /// all [`HOLDER_SLOTS`] (16 cache lines).
    fn slot_for(&self, me: Identity, claim: bool) -> u32 {
        thread_local! {
            static HINT: std::cell::Cell<(usize, u32)> = const { std::cell::Cell::new((0, NO_SLOT)) };
        }
        let key = self as *const Self as usize;
        let mine = me.pack();
        let ns = proc::pid_ns_tag();
        // The same (tid, start) in another pid namespace is another thread.
        let is_mine = |h: &Holder| {
            h.owner.load(Ordering::Relaxed) == mine && h.ns.load(Ordering::Relaxed) == ns
        };
        let (hint_key, hint) = HINT.with(|h| h.get());
        if hint_key == key {
            if let Some(h) = self.holders.get(hint as usize) {
                if is_mine(h) || (claim && h.owner.load(Ordering::Relaxed) == 0) {
                    return hint;
                }
            }
        }
        let mut free = NO_SLOT;
        let mut found = NO_SLOT;
        for (i, h) in self.holders.iter().enumerate() {
            if is_mine(h) {
                found = i as u32;
                break;
            }
            if h.owner.load(Ordering::Relaxed) == 0 && free == NO_SLOT {
                free = i as u32;
            }
        }
        let slot = if found != NO_SLOT || !claim {
            found
        } else {
            free
        };
        if slot != NO_SLOT {
            HINT.with(|h| h.set((key, slot)));
        }
        slot
    }

    /// Gives back the permits of holders that died; returns how many. The caller holds the lock.
    fn reclaim_dead(&self) -> u32 {
        let mut back = 0u32;
        for (i, h) in self.holders.iter().enumerate() {
            let o = h.owner.load(Ordering::Relaxed);
            // A holder recorded in another pid namespace cannot be judged here: alive (S6).
            if o == 0 || proc::holder_alive(Identity::unpack(o), h.ns.load(Ordering::Relaxed)) {
                continue;
            }
            let count = h.count.load(Ordering::Relaxed);
            self.journaled(i as u32, || {
                let (value, max) = (
                    self.value.load(Ordering::Relaxed),
                    self.max.load(Ordering::Relaxed),
                );
                self.value
                    .store(value.saturating_add(count).min(max), Ordering::Relaxed);
                h.count.store(0, Ordering::Relaxed);
                h.owner.store(0, Ordering::Relaxed);
            });
            back = back.saturating_add(count);
        }
        back
    }

    fn wake_sleepers(&self, n: u32) {
        if n == 0 {
            return;
        }
        // The Dekker pair with a sleeping acquirer (its SeqCst increment of `sleepers`, then its SeqCst
        // load of `value`): `value` was stored Relaxed under the internal lock, and the unlock is a
        // Release swap, neither of which orders that store before our load of `sleepers` in the
        // language's memory model (x86's `xchg` happens to; the model does not promise it). This fence
        // does: either we see the sleeper, or its load sees the new value. Found by review; without it
        // a wake could be skipped, costing the sleeper a slice (`MAX_CHECK`).
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            futex::wake(&self.value, n);
        }
    }

    /// One attempt to take a permit; the internal lock is waited for until `deadline` at most. `None`
    /// if not taken, else whether the permit is tracked (see [`RawSemaphore::apply`]).
    fn try_take(&self, me: Identity, wait: Wait) -> Option<bool> {
        self.locked(wait, |s| s.apply(Update::Take, me)).flatten()
    }

    /// [`RawSemaphore::try_take`] that, finding no permit free, gives back the permits of dead holders
    /// if a scan is due ([`RawSemaphore::claim_scan`]) and tries again, in the same holding of the
    /// internal lock (so `try_acquire` waits for it once, as documented). Until 2026-12-03 only a
    /// waiter that went to sleep scanned: a caller polling with `try_acquire`, or with timeouts
    /// shorter than the spin, never got back the permits of a holder that died (found by review).
    fn take_or_reclaim(&self, me: Identity, wait: Wait) -> Option<bool> {
        let (taken, back) = self.locked(wait, |s| match s.apply(Update::Take, me) {
            Some(tracked) => (Some(tracked), 0),
            None if s.claim_scan(|| true) => {
                let back = s.reclaim_dead();
                (s.apply(Update::Take, me), back)
            }
            None => (None, 0),
        })?;
        // We took one of those that came back, if any: wake sleepers for the rest.
        self.wake_sleepers(back.saturating_sub(u32::from(taken.is_some())));
        taken
    }

    /// Takes a permit by `deadline`; `None` if it passed, else whether the permit is tracked.
    fn acquire_until(&self, deadline: Option<Instant>) -> Option<bool> {
        let me = proc::current();
        let wait = Wait::Until(deadline);
        // The first attempt waits for the internal lock as `try_acquire` does: a peer holds it for a
        // few stores, and a permit that is free must not be missed because of them, whatever the
        // timeout (a zero one included).
        let first = if deadline.is_some() {
            Wait::Within(TRY_BOUND)
        } else {
            wait
        };
        if let Some(tracked) = self.take_or_reclaim(me, first) {
            return Some(tracked);
        }
        // Spin phase (see `wait::Backoff`): a permit released within the budget is taken with no system
        // call on either side (the releaser sees no sleeper and skips its wake).
        let mut backoff = Backoff::for_class(SpinClass::Handoff).until(deadline);
        while backoff.snooze_beside(|| self.releaser_cpu.load(Ordering::Relaxed)) {
            if self.value.load(Ordering::Relaxed) != 0 {
                if let Some(tracked) = self.try_take(me, wait) {
                    return Some(tracked);
                }
            }
        }
        // Sleep phase, in slices of `MAX_CHECK`: the check for dead holders is on a clock of its own.
        let mut sleeper = Sleeper::new(deadline).checking(MAX_CHECK, MAX_CHECK);
        loop {
            // Reclaim on a clock shared by every waiter in every process, not on our own timeouts: under
            // churn the live holders keep waking us early, and a dead holder's permits would come back
            // only when, by chance, nobody released one for a whole slice.
            self.reclaim_if_due(deadline);
            // Counted in `sleepers`, re-checking `value` with SeqCst: the Dekker pair with `release`
            // (the change under the lock, a SeqCst fence, then the SeqCst load of `sleepers` in
            // `wake_sleepers`).
            let ready = || self.value.load(Ordering::SeqCst) != 0;
            if sleeper.sleep(&self.value, 0, Some(&self.sleepers), ready) == Slept::Deadline {
                // A release's wake may have gone to us after all, and our `try_take` past the deadline
                // may have lost the internal lock to a peer: a free permit would then wait for another
                // sleeper's slice to end. Pass the wake on (a spurious one costs that sleeper a look).
                if self.value.load(Ordering::SeqCst) != 0 {
                    self.wake_sleepers(1);
                }
                return None;
            }
            if let Some(tracked) = self.try_take(me, wait) {
                return Some(tracked);
            }
        }
    }

    /// Scans for dead holders if nobody did in the last [`MAX_CHECK`]; at most one waiter (the
    /// CAS winner) scans per interval.
    fn reclaim_if_due(&self, deadline: Option<Instant>) {
        // Past the deadline the lock below would not be waited for, and the scan this caller claims
        // would be skipped for everyone until the next interval (the clock is read only when due).
        if self.claim_scan(|| deadline.is_none_or(|d| Instant::now() < d)) {
            let back = self
                .locked(Wait::Until(deadline), |s| s.reclaim_dead())
                .unwrap_or(0);
            // We may take one of them ourselves; wake others for the rest.
            self.wake_sleepers(back);
        }
    }

    /// Whether a scan for dead holders is due (nobody made one in the last [`MAX_CHECK`], on a clock
    /// every process shares) and `also()` holds; if so, this caller has claimed it: at most one caller
    /// (the CAS winner) scans per interval.
    fn claim_scan(&self, also: impl FnOnce() -> bool) -> bool {
        let now = proc::monotonic_ms();
        let last = self.last_scan_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= MAX_CHECK.as_millis() as u64 || last > now;
        due && also()
            && self
                .last_scan_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Gives a permit back. `Some(false)` at the ceiling; `None` if the internal lock stayed held by a
    /// peer for [`INTERNAL_BOUND`] (the permit is then not given back).
    fn give(&self, tracked: bool) -> Option<bool> {
        let me = proc::current();
        let wait = Wait::Within(INTERNAL_BOUND);
        let ok = self.locked(wait, |s| s.apply(Update::Give { tracked }, me).is_some())?;
        if ok {
            self.wake_sleepers(1);
            note_cpu(&self.releaser_cpu);
        }
        Some(ok)
    }
}

/// A counting semaphore shared between processes, like Python's `multiprocessing.Semaphore`.
///
/// [`acquire`](Semaphore::acquire) returns a guard that gives the permit back when dropped. Permits held
/// through guards are recorded per thread: if the holder dies, a waiter that finds no permit free gets
/// them back within about 50 ms. For Python's "acquire here, release elsewhere" signalling, turn the
/// guard into a loose permit with [`SemaphoreGuard::forget`] and call [`Semaphore::release`] anywhere.
///
/// # Examples
/// ```
/// let s = mproc::Semaphore::new(2)?;
/// let a = s.acquire();
/// let b = s.acquire();
/// assert!(s.try_acquire().is_none());
/// drop(a);
/// assert!(s.try_acquire().is_some());
/// # drop(b);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    shared: Shared<RawSemaphore>,
}

impl_shared_object!(Semaphore, RawSemaphore, "mproc::Semaphore");

impl Semaphore {
    /// Creates an anonymous semaphore with `value` permits.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn new(value: u32) -> Result<Semaphore> {
        Ok(Semaphore {
            shared: Shared::create(Self::layout(), None, false, |r: &RawSemaphore| {
                r.init(value, u32::MAX)
            })?,
        })
    }

    /// Creates a semaphore with `value` permits under `name` (removed when this handle is dropped here).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    pub fn create(name: &str, value: u32) -> Result<Semaphore> {
        let shared = Shared::create(Self::layout(), Some(name), false, |r: &RawSemaphore| {
            r.init(value, u32::MAX)
        })?;
        Ok(Semaphore { shared })
    }

    /// Blocks until a permit is free and takes it.
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        let tracked = self.shared.acquire_until(None);
        debug_assert!(tracked.is_some(), "an untimed acquire cannot time out");
        SemaphoreGuard::new(&self.shared, tracked.unwrap_or(false))
    }

    /// Takes a permit if one is free now. Never waits (beyond a couple of milliseconds for the
    /// semaphore's internal lock, which a peer holds for a few stores at a time). Finding none free, it
    /// gives back the permits of dead holders, as a waiter does (a scan of the holders' liveness, made
    /// by one caller in 50 ms at most).
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.shared
            .take_or_reclaim(proc::current(), Wait::Within(TRY_BOUND))
            .map(|tracked| SemaphoreGuard::new(&self.shared, tracked))
    }

    /// Waits at most `timeout` for a permit, whatever the shared memory says (the internal lock too is
    /// waited for only until then).
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.shared
            .acquire_until(crate::sync::wait::deadline_in(timeout))
            .map(|tracked| SemaphoreGuard::new(&self.shared, tracked))
    }

    /// Adds one permit (Python's `release()`), e.g. one taken elsewhere and [`forgotten`](SemaphoreGuard::forget).
    ///
    /// # Errors
    /// [`Error::ReleasedTooManyTimes`] if a [`BoundedSemaphore`] would exceed its initial value, or an
    /// unbounded one would exceed `u32::MAX` permits. [`Error::Timeout`] (the permit was not added)
    /// if another thread kept the semaphore's internal lock for 2 s: it is hung, or hostile, or garbage
    /// in the shared memory names a live thread as its holder.
    pub fn release(&self) -> Result<()> {
        match self.shared.give(false) {
            Some(true) => Ok(()),
            Some(false) => Err(Error::ReleasedTooManyTimes(
                "the semaphore is at its maximum value".into(),
            )),
            None => Err(Error::Timeout),
        }
    }

    /// The number of free permits right now (a snapshot; other processes may change it at once).
    pub fn value(&self) -> u32 {
        self.shared.value.load(Ordering::Relaxed)
    }
}

/// A semaphore whose value may never exceed its initial value, like Python's `BoundedSemaphore`:
/// [`release`](Semaphore::release) beyond it is an error. Derefs to [`Semaphore`] for every operation.
///
/// # Examples
/// ```
/// let s = mproc::BoundedSemaphore::new(1)?;
/// assert!(s.release().is_err()); // already at its initial value
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl BoundedSemaphore {
    fn layout() -> crate::region::Layout {
        Shared::<RawSemaphore>::layout("mproc::BoundedSemaphore")
    }

    /// Creates an anonymous bounded semaphore with `value` permits (also its ceiling).
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn new(value: u32) -> Result<Self> {
        let shared = Shared::create(Self::layout(), None, false, |r: &RawSemaphore| {
            r.init(value, value)
        })?;
        Ok(BoundedSemaphore {
            inner: Semaphore { shared },
        })
    }

    /// Creates a named bounded semaphore (removed when this handle is dropped here).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    pub fn create(name: &str, value: u32) -> Result<Self> {
        let shared = Shared::create(Self::layout(), Some(name), false, |r: &RawSemaphore| {
            r.init(value, value)
        })?;
        Ok(BoundedSemaphore {
            inner: Semaphore { shared },
        })
    }

    /// Opens the bounded semaphore `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] (for example if it is an unbounded one).
    pub fn open(name: &str) -> Result<Self> {
        Ok(BoundedSemaphore {
            inner: Semaphore {
                shared: Shared::open(name, Self::layout())?,
            },
        })
    }

    /// Re-attaches from a handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] or a validation error.
    pub fn from_handle(handle: &crate::region::RegionHandle) -> Result<Self> {
        Ok(BoundedSemaphore {
            inner: Semaphore {
                shared: Shared::from_handle(handle, Self::layout())?,
            },
        })
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    fn deref(&self) -> &Semaphore {
        &self.inner
    }
}

crate::region::shared::serde_as_handle!([] BoundedSemaphore);

/// A permit of a [`Semaphore`], given back when dropped. Not `Send`: the permit is recorded as held by
/// this thread.
#[must_use = "the permit is given back as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    raw: &'a RawSemaphore,
    /// Whether this thread's holder slot counts the permit: not if all [`HOLDER_SLOTS`] held other
    /// threads' when it was taken. Such a permit is given back (or forgotten) without touching the
    /// slot, which may since record permits this thread took later: until 2026-12-03 it went through
    /// that slot, and one of them was then held with no record, lost for good if the thread died
    /// (found by review).
    tracked: bool,
    _not_send: PhantomData<*const ()>,
}

impl<'a> SemaphoreGuard<'a> {
    fn new(raw: &'a RawSemaphore, tracked: bool) -> Self {
        SemaphoreGuard {
            raw,
            tracked,
            _not_send: PhantomData,
        }
    }

    /// Keeps the permit taken but stops tracking it: it is no longer given back on drop nor on this
    /// thread's death. Give it back with [`Semaphore::release`], from any process.
    pub fn forget(self) {
        if !self.tracked {
            // No record to drop.
            std::mem::forget(self);
            return;
        }
        let me = proc::current();
        // Bounded like a release (see `Semaphore::release`): on timeout the permit stays tracked.
        self.raw.locked(Wait::Within(INTERNAL_BOUND), |s| {
            let slot = s.slot_for(me, false);
            if let Some(h) = s.holders.get(slot as usize) {
                let c = h.count.load(Ordering::Relaxed).saturating_sub(1);
                h.count.store(c, Ordering::Relaxed);
                if c == 0 {
                    h.owner.store(0, Ordering::Relaxed);
                }
            }
        });
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // Cannot fail for a permit we hold: value < max while it is out (unless garbage was written, in
        // which case the permit is dropped rather than pushed past the ceiling), nor take longer than
        // `INTERNAL_BOUND` (a peer keeping the internal lock that long loses us this permit).
        // An untracked permit at the ceiling is dropped just the same (`apply`).
        self.raw.give(self.tracked);
    }
}

impl std::fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SemaphoreGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a guard given back at the ceiling (a loose `release` had given a permit back
    /// while the guard was out) left its holder record, and the permit was handed back once more when
    /// its thread died: two holders of a `BoundedSemaphore(1)`.
    #[test]
    fn a_guard_given_back_at_the_ceiling_leaves_no_record() {
        let s = BoundedSemaphore::new(1).unwrap();
        std::thread::scope(|t| {
            t.spawn(|| {
                let g = s.acquire();
                s.release().unwrap(); // allowed: the permit is out
                drop(g); // at the ceiling
            });
        });
        let recorded: u32 = (s.inner.shared.holders.iter())
            .map(|h| h.count.load(Ordering::Relaxed))
            .sum();
        assert_eq!(recorded, 0, "a record of a permit nobody holds");
        let held = s.acquire();
        let second = std::thread::scope(|t| {
            t.spawn(|| {
                s.acquire_timeout(Duration::from_millis(300))
                    .map(|g| g.forget())
            })
            .join()
            .unwrap()
        });
        assert!(second.is_none(), "two holders of a BoundedSemaphore(1)");
        drop(held);
    }

    /// An acquirer tells from `releaser_cpu` whether the releaser last ran on its own CPU: every
    /// release records its CPU, a failed one (at the ceiling) does not.
    #[test]
    fn a_release_records_the_releasers_cpu() {
        let s = BoundedSemaphore::new(1).unwrap();
        let unknown = crate::sys::proc::UNKNOWN_CPU;
        s.inner
            .shared
            .releaser_cpu
            .store(unknown, Ordering::Relaxed);
        let cpu = std::thread::scope(|t| {
            t.spawn(|| {
                let cpu = crate::sys::proc::pin_current_thread_for_test();
                assert!(s.release().is_err(), "at the ceiling");
                assert_eq!(s.inner.shared.releaser_cpu.load(Ordering::Relaxed), unknown);
                s.acquire().forget();
                s.release().unwrap();
                cpu
            })
            .join()
            .unwrap()
        });
        assert_eq!(s.inner.shared.releaser_cpu.load(Ordering::Relaxed), cpu);
    }

    /// Found by review: a guard taken while the holder table was full (its permit untracked) gave
    /// its permit back, or was forgotten, through whatever slot recorded its thread: that of a permit
    /// the thread took later, tracked. That permit was then held with no record, and lost for good
    /// when its thread died.
    #[test]
    fn an_untracked_guard_leaves_the_threads_tracked_permits_alone() {
        let s = Semaphore::new(3).unwrap();
        let raw = &*s.shared;
        // A live thread, parked, as the holder of every slot: the table is full.
        let (park_tx, park_rx) = std::sync::mpsc::channel::<()>();
        let (id_tx, id_rx) = std::sync::mpsc::channel();
        let parked = std::thread::spawn(move || {
            id_tx.send(proc::current()).unwrap();
            let _ = park_rx.recv();
        });
        let other = id_rx.recv().unwrap();
        for h in &raw.holders {
            h.owner.store(other.pack(), Ordering::Relaxed);
            h.count.store(1, Ordering::Relaxed);
            h.ns.store(proc::pid_ns_tag(), Ordering::Relaxed);
        }
        std::thread::scope(|t| {
            t.spawn(|| {
                let untracked = s.acquire(); // the table is full
                                             // One of the holders gives its (recorded) permit back: a slot is free again.
                raw.holders[0].owner.store(0, Ordering::Relaxed);
                raw.holders[0].count.store(0, Ordering::Relaxed);
                let tracked = s.acquire(); // recorded in slot 0
                untracked.forget();
                let untracked = s.acquire(); // the table is full again
                drop(untracked);
                // This thread dies holding `tracked`: its record must say so.
                std::mem::forget(tracked);
            });
        });
        assert_eq!(
            s.value(),
            1,
            "one permit forgotten, one held by a dead thread"
        );
        let mine = s.acquire_timeout(Duration::from_secs(10));
        assert!(mine.is_some());
        // The dead thread's permit comes back; the forgotten one does not.
        let back = s.acquire_timeout(Duration::from_secs(10));
        assert!(back.is_some(), "the dead thread's tracked permit was lost");
        drop((mine, back));
        drop(park_tx);
        parked.join().unwrap();
    }

    #[test]
    fn dead_thread_permits_come_back() {
        let s = Semaphore::new(1).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| std::mem::forget(s.acquire()));
        });
        assert_eq!(s.value(), 0);
        // The holder thread exited without giving it back; a waiter reclaims it.
        let g = s.acquire_timeout(Duration::from_secs(30));
        assert!(g.is_some());
    }

    /// Found by review: only a waiter that went to sleep looked for dead holders. A caller polling with
    /// `try_acquire`, or with timeouts shorter than the spin, never got back the permit of a holder that
    /// died: a semaphore whose holders all died stayed empty for it for good.
    #[test]
    fn a_poller_gets_a_dead_threads_permit_back() {
        type Poll = fn(&Semaphore) -> Option<SemaphoreGuard<'_>>;
        let polls: [Poll; 2] = [|s| s.try_acquire(), |s| s.acquire_timeout(Duration::ZERO)];
        for poll in polls {
            let s = Semaphore::new(1).unwrap();
            std::thread::scope(|sc| {
                sc.spawn(|| std::mem::forget(s.acquire()));
            });
            assert_eq!(s.value(), 0);
            // Bounded, to prove no hang: a dead holder's permit comes back within about MAX_CHECK.
            let end = Instant::now() + Duration::from_secs(10);
            let got = loop {
                if let Some(g) = poll(&s) {
                    break Some(g);
                }
                if Instant::now() > end {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            assert!(got.is_some(), "a poller never got the dead thread's permit");
        }
    }

    #[test]
    fn forgotten_permit_is_not_reclaimed_and_release_returns_it() {
        let s = Semaphore::new(1).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| s.acquire().forget());
        });
        assert!(s.acquire_timeout(Duration::from_millis(200)).is_none());
        s.release().unwrap();
        assert!(s.try_acquire().is_some());
    }

    #[test]
    fn journal_rolls_back_a_half_done_update() {
        let s = Semaphore::new(3).unwrap();
        let raw = &*s.shared;
        // Simulate a holder that died after journaling and decrementing, before recording its slot.
        raw.journal.value.store(3, Ordering::Relaxed);
        raw.journal.slot.store(0, Ordering::Relaxed);
        raw.journal.active.store(1, Ordering::Relaxed);
        raw.value.store(2, Ordering::Relaxed);
        raw.lock_for_test_as_dead();
        assert!(s.try_acquire().is_some());
        assert_eq!(s.value(), 3, "rolled back to 3, took one, gave it back");
    }

    #[test]
    fn bounded_refuses_extra_release() {
        let s = BoundedSemaphore::new(2).unwrap();
        assert!(matches!(s.release(), Err(Error::ReleasedTooManyTimes(_))));
        let g = s.acquire();
        g.forget();
        s.release().unwrap();
        assert!(s.release().is_err());
    }

    /// The limit `release`'s docs state: an unbounded semaphore holds up to `u32::MAX` permits, and
    /// only the release past that fails (the docs said `u32::MAX - 1` until 2026-12-03).
    #[test]
    fn unbounded_release_stops_at_u32_max() {
        let s = Semaphore::new(u32::MAX - 1).unwrap();
        s.release().unwrap();
        assert_eq!(s.value(), u32::MAX);
        assert!(matches!(s.release(), Err(Error::ReleasedTooManyTimes(_))));
        assert_eq!(s.value(), u32::MAX);
    }

    impl RawSemaphore {
        fn lock_for_test_as_dead(&self) {
            self.lock.force_word_for_test(0x3fff_fffe);
        }
    }
}
