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
    /// 0 = clear, anything else = set.
    flag: AtomicU32,
    /// Threads that may be asleep on `sets`. `set` skips the wake syscall when this is 0. A waiter killed
    /// while counted leaves it too high, which only costs `set` one needless wake.
    sleepers: AtomicU32,
    /// Bumped by every `set`: the futex word. A waiter returns once it moved, even if a `clear` came
    /// right after (a `set(); clear()` pulse wakes every waiter, as in Python, instead of being lost to
    /// a waiter that re-checks the flag).
    sets: AtomicU32,
}

// The layout hash covers the size: `sets` (12 bytes, was 8) makes builds before and after it refuse
// each other's events.
const _: () = assert!(std::mem::size_of::<RawEvent>() == 12);

// SAFETY: atomics only; any bit pattern is a valid state.
unsafe impl ShmSafe for RawEvent {}

/// A flag shared between processes, like Python's `multiprocessing.Event`: `set` wakes every waiter
/// (a waiter asleep during `set(); clear()` wakes too), `clear` resets it. An event holds nothing, so a process dying around it leaves nothing to recover.
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
        raw.sets.fetch_add(1, Ordering::SeqCst);
        if raw.sleepers.load(Ordering::SeqCst) != 0 {
            futex::wake_all(&raw.sets);
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

    /// Blocks until the flag is set or `timeout` passes; returns whether it was set while waiting (it
    /// may be clear again by the time this returns, after a `set(); clear()` pulse).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let raw = &*self.shared;
        let start = raw.sets.load(Ordering::SeqCst);
        if raw.flag.load(Ordering::Acquire) != 0 {
            return true;
        }
        // Spin, then sleep on `sets` until the deadline, counted in `sleepers` (see `set`). A set since
        // `start` is enough, whatever the flag says now.
        let was_set =
            || raw.sets.load(Ordering::SeqCst) != start || raw.flag.load(Ordering::SeqCst) != 0;
        match Waiter::new(deadline).wait_until(was_set, &raw.sets, start, Some(&raw.sleepers)) {
            Wake::Ready => true,
            // The deadline (a waiter with no liveness checks never sees a slice end): the flag may
            // have been set on the way out.
            Wake::SliceEnded | Wake::Deadline => was_set(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a waiter asleep during `set(); clear()` was woken, found the flag clear and
    /// slept again (a `wait()` hung for good). Every waiter returns on a set, as in Python.
    #[test]
    fn a_set_clear_pulse_wakes_a_sleeping_waiter() {
        let e = Event::new().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| e.wait_timeout(Duration::from_secs(60)));
            // Bounded, to prove no hang: until the waiter is counted as asleep (its start is taken).
            let end = Instant::now() + Duration::from_secs(60);
            while e.shared.sleepers.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < end, "the waiter never slept");
                std::thread::sleep(Duration::from_millis(1));
            }
            e.set();
            e.clear();
            assert!(waiter.join().unwrap(), "the pulse was lost");
        });
        assert!(!e.is_set());
        assert!(!e.wait_timeout(Duration::from_millis(1)));
    }
}
