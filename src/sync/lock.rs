//! [`Lock`]: a robust mutual-exclusion lock shared between processes.

use std::marker::PhantomData;
use std::time::Duration;

use super::raw_lock::{Acquired, Nesting, RawLock};
use crate::error::{LockResult, OwnerDied, Result, TryLockError};
use crate::region::shared::{impl_shared_object, Shared};

/// A lock shared between processes, like Python's `multiprocessing.Lock`, that survives the death of
/// its holder.
///
/// If a process (or thread) dies while holding it, the next `lock` returns [`OwnerDied`] carrying the
/// guard — reported exactly once, like a poisoned [`std::sync::Mutex`] — and the lock is usable again.
/// Waiters notice the death within about 50 ms: they sleep on the futex with a timeout and then check
/// the holder's thread id and start time in `/proc`.
///
/// Uncontended `lock`/`unlock` is one compare-and-swap and one swap, with no system call.
///
/// A `Lock` lives in its own shared region. It reaches another process by being inherited across
/// `fork`, by being passed to a spawned process as an argument (it serializes as a
/// [`RegionHandle`](crate::RegionHandle)), or by name ([`Lock::create`] / [`Lock::open`]). Clones share one
/// mapping.
///
/// # Examples
/// ```
/// let lock = mproc::Lock::new()?;
/// {
///     let _guard = lock.lock().unwrap(); // a fresh lock has no dead holder to report
///     assert!(lock.try_lock().is_err());
/// }
/// assert!(lock.try_lock().is_ok());
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A guard cannot outlive its lock:
/// ```compile_fail
/// let guard;
/// {
///     let lock = mproc::Lock::new().unwrap();
///     guard = lock.lock().unwrap();
/// }
/// drop(guard);
/// ```
///
/// and cannot move to another thread (the thread that locked must unlock):
/// ```compile_fail
/// let lock = mproc::Lock::new().unwrap();
/// let guard = lock.lock().unwrap();
/// std::thread::scope(|s| { s.spawn(move || drop(guard)); });
/// ```
#[derive(Clone)]
pub struct Lock {
    shared: Shared<RawLock>,
}

impl_shared_object!(Lock, RawLock, "mproc::Lock");

impl Lock {
    /// Creates an anonymous lock (reachable by fork and by handle).
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory cannot be created.
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            shared: Shared::create(Self::layout(), None, false, |_| {})?,
        })
    }

    /// Creates a lock under `name`, failing if the name is taken. The name is removed when this handle
    /// (in this process) is dropped.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists), [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn create(name: &str) -> Result<Lock> {
        Ok(Lock {
            shared: Shared::create(Self::layout(), Some(name), false, |_| {})?,
        })
    }

    /// Opens the lock `name`, creating a persistent one if none exists (remove it with
    /// [`Region::unlink`](crate::Region::unlink)). Concurrent callers agree on one lock.
    ///
    /// # Errors
    /// As [`Lock::open`].
    pub fn open_or_create(name: &str) -> Result<Lock> {
        Ok(Lock {
            shared: Shared::open_or_create(name, Self::layout(), true, |_| {})?,
        })
    }

    #[inline]
    pub(crate) fn raw(&self) -> &RawLock {
        &self.shared
    }

    /// Blocks until the lock is held by the calling thread. Like [`std::sync::Mutex::lock`], calling it
    /// while this thread holds the lock deadlocks; [`Lock::lock_timeout`] and [`Lock::try_lock`] refuse
    /// at once instead.
    ///
    /// # Errors
    /// [`OwnerDied`] (still holding the guard) if the previous holder died while holding it.
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        let acquired = self
            .raw()
            .lock_until(None)
            .expect("an untimed lock cannot time out");
        guard_result(LockGuard::new(self.raw()), acquired)
    }

    /// Acquires the lock only if it is free now.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if another thread holds it, [`TryLockError::OwnerDied`] as in
    /// [`Lock::lock`].
    #[inline]
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError<LockGuard<'_>>> {
        match self.raw().try_lock() {
            None => Err(TryLockError::WouldBlock),
            Some(a) => Ok(guard_result(LockGuard::new(self.raw()), a)?),
        }
    }

    /// Blocks for at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if the time ran out, or at once if the calling thread holds this
    /// lock already (waiting would be a self-deadlock); [`TryLockError::OwnerDied`] as in [`Lock::lock`].
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, TryLockError<LockGuard<'_>>> {
        match self
            .raw()
            .lock_as(crate::sync::wait::deadline_in(timeout), Nesting::MayHold)
        {
            Err(_) => Err(TryLockError::WouldBlock),
            Ok(a) => Ok(guard_result(LockGuard::new(self.raw()), a)?),
        }
    }
}

#[inline]
pub(crate) fn guard_result<G>(guard: G, acquired: Acquired) -> LockResult<G> {
    match acquired {
        Acquired::Clean => Ok(guard),
        Acquired::OwnerDied(tid) => Err(OwnerDied::new(guard, tid)),
    }
}

/// Holds a [`Lock`]; releases it when dropped. Not `Send`: the thread that locked must unlock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    raw: &'a RawLock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    #[inline]
    pub(crate) fn new(raw: &'a RawLock) -> Self {
        LockGuard {
            raw,
            _not_send: PhantomData,
        }
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its thread holds the lock (it is created right after a
        // successful acquire and is not Send), and each guard unlocks exactly once.
        unsafe { self.raw.unlock() }
    }
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}
