//! [`Event`]: a flag that processes can wait on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::wait::{Waiter, Wake};
use crate::error::Result;
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;
use crate::sys::futex;

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawEvent {
    /// 0 = clear, anything else = set. The futex word.
    flag: AtomicU32,
    /// Threads that may be asleep on `flag`. `set` skips the wake syscall when this is 0. A waiter killed
    /// while counted leaves it too high, which only costs `set` one needless wake.
    sleepers: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<RawEvent>() == 8);

// SAFETY: atomics only; any bit pattern is a valid state.
unsafe impl ShmSafe for RawEvent {}

/// A flag shared between processes, like Python's `multiprocessing.Event`: `set` wakes every waiter,
/// `clear` resets it. An event holds nothing, so a process dying around it leaves nothing to recover.
///
/// # Examples
/// ```
/// let e = mproc::Event::new()?;
/// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
/// e.set();
/// assert!(e.is_set());
/// e.wait(); // returns at once
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    shared: Shared<RawEvent>,
}

impl_shared_object!(Event, RawEvent, "mproc::Event");

impl Event {
    /// Creates an anonymous, cleared event.
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory cannot be created.
    pub fn new() -> Result<Event> {
        Ok(Event {
            shared: Shared::create(Self::layout(), None, false, |_| {})?,
        })
    }

    /// Creates a cleared event under `name` (removed when this handle is dropped in this process).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists), [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn create(name: &str) -> Result<Event> {
        Ok(Event {
            shared: Shared::create(Self::layout(), Some(name), false, |_| {})?,
        })
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.shared.flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let raw = &*self.shared;
        // SeqCst store then SeqCst load, against the waiter's SeqCst increment then load (Dekker): either
        // we see its sleeper count, or it sees our flag before sleeping. No lost wake-up.
        raw.flag.store(1, Ordering::SeqCst);
        if raw.sleepers.load(Ordering::SeqCst) != 0 {
            futex::wake_all(&raw.flag);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.shared.flag.store(0, Ordering::Release);
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Blocks until the flag is set or `timeout` passes; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let raw = &*self.shared;
        if raw.flag.load(Ordering::Acquire) != 0 {
            return true;
        }
        // Spin, then sleep on the flag until the deadline, counted in `sleepers` (see `set`).
        let is_set = || raw.flag.load(Ordering::SeqCst) != 0;
        match Waiter::new(deadline).wait_until(is_set, &raw.flag, 0, Some(&raw.sleepers)) {
            Wake::Ready => true,
            // The deadline (a waiter with no liveness checks never sees a slice end): the flag may
            // have been set on the way out.
            Wake::SliceEnded | Wake::Deadline => raw.flag.load(Ordering::Acquire) != 0,
        }
    }
}
