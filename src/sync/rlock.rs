//! [`RLock`]: a reentrant robust lock shared between processes.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::lock::guard_result;
use super::raw_lock::{Acquired, RawLock};
use crate::error::{LockResult, Result, TryLockError};
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawRLock {
    lock: RawLock,
    /// How many times the holder has acquired it. Only the holding thread reads or writes it.
    depth: AtomicU32,
    _pad: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<RawRLock>() == 24);

// SAFETY: atomics only; any bit pattern is a valid state (a garbage depth is reset on acquisition).
unsafe impl ShmSafe for RawRLock {}

/// A reentrant lock shared between processes, like Python's `multiprocessing.RLock`: the thread that
/// holds it may acquire it again; it is released when every guard is dropped.
///
/// Robust like [`Lock`](crate::Lock): if the holder dies, the next acquirer gets
/// [`OwnerDied`](crate::OwnerDied) once, with the depth reset to one.
///
/// # Examples
/// ```
/// let r = mproc::RLock::new()?;
/// let outer = r.lock().unwrap();
/// let inner = r.lock().unwrap(); // same thread: no deadlock
/// drop(inner);
/// drop(outer);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    shared: Shared<RawRLock>,
}

impl_shared_object!(RLock, RawRLock, "mproc::RLock");

impl RLock {
    /// Creates an anonymous reentrant lock.
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory cannot be created.
    pub fn new() -> Result<RLock> {
        Ok(RLock {
            shared: Shared::create(Self::layout(), None, false, |_| {})?,
        })
    }

    /// Creates a reentrant lock under `name` (removed when this handle is dropped in this process).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists), [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn create(name: &str) -> Result<RLock> {
        Ok(RLock {
            shared: Shared::create(Self::layout(), Some(name), false, |_| {})?,
        })
    }

    fn acquire(&self, deadline: Option<Option<Instant>>) -> Option<Acquired> {
        let raw = &*self.shared;
        if raw.lock.held_by_current_thread() {
            // Only the holder touches `depth`: Relaxed suffices. Saturate rather than wrap on garbage.
            let d = raw.depth.load(Ordering::Relaxed);
            raw.depth.store(d.saturating_add(1), Ordering::Relaxed);
            return Some(Acquired::Clean);
        }
        let a = match deadline {
            None => raw.lock.try_lock(),
            Some(d) => raw.lock.lock_until(d),
        }?;
        raw.depth.store(1, Ordering::Relaxed);
        Some(a)
    }

    /// Blocks until held by this thread (at once if it already holds it).
    ///
    /// # Errors
    /// [`OwnerDied`](crate::OwnerDied) if the previous holder died holding it.
    #[inline]
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        let a = self
            .acquire(Some(None))
            .expect("an untimed lock cannot time out");
        guard_result(RLockGuard::new(&self.shared), a)
    }

    /// Acquires without blocking.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if another thread holds it; [`TryLockError::OwnerDied`].
    pub fn try_lock(&self) -> Result<RLockGuard<'_>, TryLockError<RLockGuard<'_>>> {
        let a = self.acquire(None).ok_or(TryLockError::WouldBlock)?;
        Ok(guard_result(RLockGuard::new(&self.shared), a)?)
    }

    /// Blocks for at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when the time runs out; [`TryLockError::OwnerDied`].
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, TryLockError<RLockGuard<'_>>> {
        let a = self
            .acquire(Some(crate::sync::wait::deadline_in(timeout)))
            .ok_or(TryLockError::WouldBlock)?;
        Ok(guard_result(RLockGuard::new(&self.shared), a)?)
    }
}

/// One level of holding an [`RLock`]; the lock is released when the last guard drops.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    raw: &'a RawRLock,
    _not_send: PhantomData<*const ()>,
}

impl<'a> RLockGuard<'a> {
    fn new(raw: &'a RawRLock) -> Self {
        RLockGuard {
            raw,
            _not_send: PhantomData,
        }
    }
}

impl Drop for RLockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // A depth a peer lowered under us (garbage) made an inner guard release the lock already:
        // this guard holds nothing now, and must not release (or count down) another thread's
        // holding (found by review).
        if !self.raw.lock.held_by_current_thread() {
            return;
        }
        let d = self.raw.depth.load(Ordering::Relaxed);
        if d > 1 {
            self.raw.depth.store(d - 1, Ordering::Relaxed);
        } else {
            self.raw.depth.store(0, Ordering::Relaxed);
            // SAFETY: this thread holds the lock (checked above; guards are not Send) and this is
            // the outermost level, so the lock is released exactly once.
            unsafe { self.raw.lock.unlock() }
        }
    }
}

impl std::fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RLockGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a depth lowered by a peer made an inner guard release the lock, and the outer
    /// guard then released the lock of whichever thread took it next.
    #[test]
    fn a_lowered_depth_never_releases_another_threads_holding() {
        let r = RLock::new().unwrap();
        let outer = r.lock().unwrap();
        let inner = r.lock().unwrap();
        r.shared.depth.store(1, Ordering::Relaxed); // garbage: the depth says one level
        drop(inner); // released, as the depth said
        std::thread::scope(|s| {
            let (took, dropped) = (
                std::sync::mpsc::channel::<()>(),
                std::sync::mpsc::channel::<()>(),
            );
            let (took_tx, took_rx) = took;
            let (dropped_tx, dropped_rx) = dropped;
            let r = &r;
            let other = s.spawn(move || {
                let g = r.lock().unwrap();
                took_tx.send(()).unwrap();
                dropped_rx.recv().unwrap();
                let still = r.shared.lock.held_by_current_thread();
                drop(g);
                still
            });
            took_rx.recv().unwrap();
            drop(outer); // must leave the other thread's holding alone
            dropped_tx.send(()).unwrap();
            assert!(other.join().unwrap(), "the outer guard released it");
        });
    }
}
