//! [`Condition`]: a condition variable shared between processes, with its own robust lock.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::lock::guard_result;
use super::raw_lock::{Acquired, Nesting, RawLock};
use super::wait::{Waiter, Wake, MAX_CHECK};
use crate::error::{LockResult, OwnerDied, Result, TryLockError};
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;
use crate::sys::futex;

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawCondition {
    lock: RawLock,
    /// Bumped by every notify; waiters sleep on it. Wraps freely.
    seq: AtomicU32,
    /// Threads that may sleep on `seq`; notify skips the syscall when 0.
    sleepers: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<RawCondition>() == 24);

// SAFETY: atomics only; any bit pattern is a valid state.
unsafe impl ShmSafe for RawCondition {}

/// A condition variable shared between processes, like Python's `multiprocessing.Condition`: a robust
/// lock plus wait/notify.
///
/// [`wait`](Condition::wait) releases the lock, sleeps until notified, and takes the lock again. As with
/// every condition variable, a wait may return without a matching notify: check your condition in a loop,
/// or use [`wait_while`](Condition::wait_while).
///
/// Deaths: a process killed while waiting holds nothing. A process killed while holding the lock is
/// reported to the next holder as [`OwnerDied`]. A notify is not lost when the waiter it woke is killed
/// right after waking: every waiter also looks at the notify count at least every 50 ms, and returns
/// once it moved, so the others return within that. (This is also why a `notify(1)` may let more than
/// one waiter return; as the paragraph above says, a waiter checks its condition in a loop anyway.)
///
/// # Examples
/// ```
/// let c = mproc::Condition::new()?;
/// let g = c.lock().unwrap();
/// let (g, timed_out) = c.wait_timeout(g, std::time::Duration::from_millis(1)).unwrap();
/// assert!(timed_out);
/// drop(g);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Condition {
    shared: Shared<RawCondition>,
}

impl_shared_object!(Condition, RawCondition, "mproc::Condition");

/// Holds a [`Condition`]'s lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    raw: &'a RawCondition,
    /// The condition's region ([`Region::file_key`](crate::region::Region::file_key)): what a wait
    /// checks the guard against (another handle to the same condition, opened again in this process,
    /// maps it elsewhere). Not the header's id, which any writer of the file can rewrite: a guard of
    /// another condition forged to bear this one's id passed the check (found by review).
    region: (u64, u64),
    _not_send: PhantomData<*const ()>,
}

impl Drop for ConditionGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its (non-Send) thread holds the lock; released once.
        unsafe { self.raw.lock.unlock() }
    }
}

impl std::fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConditionGuard")
    }
}

impl Condition {
    /// Creates an anonymous condition.
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory cannot be created.
    pub fn new() -> Result<Condition> {
        Ok(Condition {
            shared: Shared::create(Self::layout(), None, false, |_| {})?,
        })
    }

    /// Creates a condition under `name` (removed when this handle is dropped in this process).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists), [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn create(name: &str) -> Result<Condition> {
        Ok(Condition {
            shared: Shared::create(Self::layout(), Some(name), false, |_| {})?,
        })
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard {
            raw: &self.shared,
            region: self.shared.region().file_key(),
            _not_send: PhantomData,
        }
    }

    /// Takes the condition's lock. Like [`Lock::lock`](crate::Lock::lock), calling it while this thread
    /// holds the lock deadlocks.
    ///
    /// # Errors
    /// [`OwnerDied`] with the guard if the previous holder died holding it.
    #[inline]
    pub fn lock(&self) -> LockResult<ConditionGuard<'_>> {
        let a = self
            .shared
            .lock
            .lock_until(None)
            .expect("an untimed lock cannot time out");
        guard_result(self.guard(), a)
    }

    /// Takes the condition's lock only if it is free now.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if another thread (or this one) holds it; [`TryLockError::OwnerDied`]
    /// as in [`lock`](Condition::lock).
    pub fn try_lock(&self) -> Result<ConditionGuard<'_>, TryLockError<ConditionGuard<'_>>> {
        match self.shared.lock.try_lock() {
            None => Err(TryLockError::WouldBlock),
            Some(a) => Ok(guard_result(self.guard(), a)?),
        }
    }

    /// Takes the condition's lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if the time ran out, or at once if this thread holds the lock;
    /// [`TryLockError::OwnerDied`] as in [`lock`](Condition::lock).
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ConditionGuard<'_>, TryLockError<ConditionGuard<'_>>> {
        let deadline = crate::sync::wait::deadline_in(timeout);
        match self.shared.lock.lock_as(deadline, Nesting::MayHold) {
            Err(_) => Err(TryLockError::WouldBlock),
            Ok(a) => Ok(guard_result(self.guard(), a)?),
        }
    }

    /// Releases the lock, sleeps until notified (or spuriously woken), and re-takes the lock.
    ///
    /// # Panics
    /// If `guard` is another condition's (as `std::sync::Condvar` panics when used with two
    /// mutexes); so do the other waits.
    ///
    /// # Errors
    /// [`OwnerDied`] with the re-taken guard if a holder died while we slept.
    pub fn wait<'a>(&'a self, guard: ConditionGuard<'a>) -> LockResult<ConditionGuard<'a>> {
        self.wait_until(guard, None)
            .map(|(g, _)| g)
            .map_err(|e| e.map(|(g, _)| g))
    }

    /// Like [`wait`](Condition::wait) for at most `timeout`; the flag says whether the time ran out.
    ///
    /// Returns by the deadline plus [`RELOCK_GRACE`](Condition::RELOCK_GRACE) whatever the shared
    /// memory says (a timeout past the clock's range, `Duration::MAX`, is no deadline at all): re-taking the lock is part of the wait, and if another thread still holds it then
    /// (a long critical section, a hung or hostile peer, or garbage naming a live thread), the call
    /// gives up without the lock.
    ///
    /// # Errors
    /// [`TryLockError::OwnerDied`] as in [`wait`](Condition::wait); [`TryLockError::WouldBlock`] if
    /// the lock could not be re-taken in time: the guard is gone and this thread does **not** hold the
    /// lock.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        timeout: Duration,
    ) -> Result<(ConditionGuard<'a>, bool), TryLockError<(ConditionGuard<'a>, bool)>> {
        let deadline = crate::sync::wait::deadline_in(timeout);
        let timed_out = self.release_and_sleep(guard, deadline);
        let relock = deadline.and_then(|d| d.checked_add(Self::RELOCK_GRACE));
        match self.shared.lock.lock_as(relock, Nesting::NeverHeld) {
            Err(_) => Err(TryLockError::WouldBlock),
            Ok(Acquired::Clean) => Ok((self.guard(), timed_out)),
            Ok(Acquired::OwnerDied(tid)) => Err(TryLockError::OwnerDied(OwnerDied::new(
                (self.guard(), timed_out),
                tid,
            ))),
        }
    }

    /// How long past its deadline [`wait_timeout`](Condition::wait_timeout) may spend re-taking the
    /// lock: a live holder's critical section usually ends within it, and a dead holder is judged
    /// within it.
    pub const RELOCK_GRACE: Duration = MAX_CHECK;

    /// Waits while `condition` holds, re-checking it after every wake-up and at least every 50 ms.
    ///
    /// # Errors
    /// [`OwnerDied`] as in [`wait`](Condition::wait); the predicate is not re-checked then.
    pub fn wait_while<'a>(
        &'a self,
        mut guard: ConditionGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> LockResult<ConditionGuard<'a>> {
        while condition() {
            let deadline = Instant::now() + MAX_CHECK;
            guard = match self.wait_until(guard, Some(deadline)) {
                Ok((g, _)) => g,
                Err(e) => return Err(e.map(|(g, _)| g)),
            };
        }
        Ok(guard)
    }

    /// Waits until `deadline` and re-takes the lock with no deadline.
    fn wait_until<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        deadline: Option<Instant>,
    ) -> LockResult<(ConditionGuard<'a>, bool)> {
        let t = self.release_and_sleep(guard, deadline);
        // The caller gave its guard up, so it does not hold the lock: a word naming this thread is
        // garbage and taken over (Nesting::NeverHeld), which also means that an untimed `lock_as` can
        // fail neither way; the loop only spells that out without a panic.
        let a = loop {
            if let Ok(a) = self.shared.lock.lock_as(None, Nesting::NeverHeld) {
                break a;
            }
        };
        match a {
            Acquired::Clean => Ok((self.guard(), t)),
            Acquired::OwnerDied(tid) => Err(OwnerDied::new((self.guard(), t), tid)),
        }
    }

    /// Releases `guard` and waits until notified or `deadline`; returns whether the wait timed out.
    /// The caller re-takes the lock.
    fn release_and_sleep(&self, guard: ConditionGuard<'_>, deadline: Option<Instant>) -> bool {
        let raw = &*self.shared;
        // As std's `Condvar`: a wait with the guard of another condition would release that one's lock
        // and re-take this one's, which this thread may already hold: the re-take takes a word naming
        // this thread for garbage (`Nesting::NeverHeld`), and two guards of one lock then exist in
        // safe code (found by review).
        assert!(
            guard.region == self.shared.region().file_key(),
            "Condition::wait with the guard of another Condition"
        );
        // Read the sequence while still holding the lock: a notify after our unlock changes it, so the
        // futex wait below returns at once instead of missing it.
        let seq = raw.seq.load(Ordering::SeqCst);
        drop(guard);
        // Spin, then sleep on the sequence counted in `sleepers` (see `notify`): a notify that comes
        // within the spin budget costs the notifier no system call.
        let notified = || raw.seq.load(Ordering::SeqCst) != seq;
        // In slices of `MAX_CHECK`, each ended by a look at the sequence: a notifier killed between its
        // bump and its `FUTEX_WAKE` (or any writer of the region that bumps without a wake) left a
        // `wait()` asleep until some later notify, maybe never (found by review, as for `Event`). An
        // idle waiter pays one wake-up per slice.
        let mut waiter = Waiter::new(deadline).checking(MAX_CHECK, MAX_CHECK);
        loop {
            match waiter.wait_until(notified, &raw.seq, seq, Some(&raw.sleepers)) {
                Wake::Ready => return false,
                // Nothing to check but the sequence, which the wait looks at first when called again.
                Wake::SliceEnded => {}
                // Timed out, unless a notify came on the way out.
                Wake::Deadline => return raw.seq.load(Ordering::SeqCst) == seq,
            }
        }
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) {
        let raw = &*self.shared;
        raw.seq.fetch_add(1, Ordering::SeqCst);
        if raw.sleepers.load(Ordering::SeqCst) != 0 {
            futex::wake(&raw.seq, n);
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a wait took any condition's guard, released that condition's lock and
    /// re-took its own, which this thread could already hold: two guards of one lock in safe code.
    #[test]
    #[should_panic(expected = "the guard of another Condition")]
    fn a_wait_with_another_conditions_guard_panics() {
        let (c1, c2) = (Condition::new().unwrap(), Condition::new().unwrap());
        let _g1 = c1.lock().unwrap();
        let g2 = c2.lock().unwrap();
        let _ = c1.wait_timeout(g2, Duration::from_millis(1));
    }

    /// As above, with the other condition's header rewritten (by any writer of its file) to bear this
    /// one's region id: the check must not trust the id. Found by review: it passed, and the wait
    /// took over the lock this thread held through `_g1`.
    #[test]
    #[should_panic(expected = "the guard of another Condition")]
    fn a_wait_with_the_guard_of_a_condition_forged_to_bear_our_id_panics() {
        use std::os::unix::fs::FileExt;
        let c1 = Condition::new().unwrap();
        let name = crate::region::tests::unique("cond-forged");
        let _creator = Condition::create(&name).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{}{name}", crate::region::SHM_PREFIX))
            .unwrap()
            // The header's `region_id` (region/header.rs).
            .write_all_at(&c1.shared.region().id().to_le_bytes(), 32)
            .unwrap();
        let c2 = Condition::open(&name).unwrap();
        assert_eq!(c2.shared.region().id(), c1.shared.region().id());
        let _g1 = c1.lock().unwrap();
        let g2 = c2.lock().unwrap();
        let _ = c1.wait_timeout(g2, Duration::from_millis(1));
    }

    /// Found by review: a notifier killed between its bump of the sequence and its `FUTEX_WAKE` left a
    /// bare `wait()` asleep until a later notify (maybe never). Waiters now look every `MAX_CHECK`;
    /// the same look returns the others when the waiter a notify woke is killed (the type's docs).
    #[test]
    fn a_notify_whose_wake_never_came_still_ends_the_wait() {
        let c = Condition::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                let g = c.lock().unwrap();
                let g = c.wait(g).unwrap();
                drop(g);
                let _ = tx.send(());
            })
        };
        // Bounded, to prove no hang: until the waiter is counted as asleep.
        let end = Instant::now() + Duration::from_secs(60);
        while c.shared.sleepers.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < end, "the waiter never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        // What `notify` does before its wake, and no wake: the notifier was killed there.
        c.shared.seq.fetch_add(1, Ordering::SeqCst);
        let woke = rx.recv_timeout(Duration::from_secs(30));
        // Release a waiter of the old code, so the thread does not outlive the test.
        c.notify_all();
        waiter.join().unwrap();
        assert!(woke.is_ok(), "a waiter slept on through a notify");
    }

    /// A clone, or the same condition opened again (another mapping), is the same condition.
    #[test]
    fn a_wait_with_the_guard_of_another_handle_to_it_is_fine() {
        let name = crate::region::tests::unique("cond");
        let c = Condition::create(&name).unwrap();
        for other in [c.clone(), Condition::open(&name).unwrap()] {
            let g = other.lock().unwrap();
            let (g, timed_out) = c.wait_timeout(g, Duration::from_millis(1)).unwrap();
            assert!(timed_out);
            drop(g);
        }
    }
}
