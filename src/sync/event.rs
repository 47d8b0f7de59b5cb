//! [`Event`]: a flag that processes can wait on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::wait::{note_cpu, Waiter, Wake, MAX_CHECK};
use crate::error::Result;
use crate::region::shared::{impl_shared_object, Shared};
use crate::region::ShmSafe;
use crate::sys::futex;

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawEvent {
    /// The flag (bit 0, [`FLAG`]) and the count of `set`s (the bits above it), in one word: the futex
    /// word. Every `set` moves it in one step, so a waiter that found the flag clear returns once the
    /// word moved, even if a `clear` came right after (a `set(); clear()` pulse wakes every waiter, as
    /// in Python, instead of being lost to a waiter that re-checks the flag).
    ///
    /// One word, not a flag and a counter beside it: `set` stored the flag, then bumped the counter,
    /// and a waiter that saw the flag, cleared it and waited again could take the counter's value from
    /// before that bump as its start. The bump then ended its new wait at once, a set it had already
    /// answered: a ping-pong of two events lost a turn and both sides waited for good (found by the sync
    /// bench's hand-off rows, within 200 000 round trips).
    state: AtomicU32,
    /// Threads that may be asleep on `state`. `set` skips the wake syscall when this is 0. A waiter
    /// killed while counted leaves it too high, which only costs `set` one needless wake.
    sleepers: AtomicU32,
    /// The CPU the last `set` ran on: a waiter whose setter last ran on its own CPU yields instead of
    /// pausing, since the setter cannot run while it spins there ([`note_cpu`]; a hint only).
    setter_cpu: AtomicU32,
    /// Never read or written: with `setter_cpu`, it gives the layout a size no earlier build used (see
    /// below).
    _unused: AtomicU32,
}

/// Bit 0 of [`RawEvent::state`]: the flag is set.
const FLAG: u32 = 1;

// The layout hash covers the size, and builds that read these words otherwise must refuse each other's
// events (a layout mismatch error, never a misread): 16 bytes, where 0.1.0 had 8 (a flag and
// `sleepers`) and the builds after it 12 (a flag, `sleepers` and a count of sets).
const _: () = assert!(std::mem::size_of::<RawEvent>() == 16);

// SAFETY: atomics only; any bit pattern is a valid state.
unsafe impl ShmSafe for RawEvent {}

/// A flag shared between processes, like Python's `multiprocessing.Event`: `set` wakes every waiter
/// (a waiter asleep during `set(); clear()` wakes too), `clear` resets it. An event holds nothing, so a
/// process dying around it leaves nothing to recover: a setter killed between setting the flag and
/// waking the waiters delays them by about 50 ms.
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
        self.shared.state.load(Ordering::Acquire) & FLAG != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let raw = &*self.shared;
        // One SeqCst RMW that sets the flag and counts the set (bits above FLAG, wrapping), then a SeqCst
        // load, against the waiter's SeqCst increment then load (Dekker): either we see its sleeper
        // count, or it sees the moved word before sleeping. No lost wake-up.
        let _ = raw
            .state
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |w| {
                Some((w | FLAG).wrapping_add(2))
            });
        if raw.sleepers.load(Ordering::SeqCst) != 0 {
            futex::wake_all(&raw.state);
        }
        note_cpu(&raw.setter_cpu);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        // Only the flag bit: the count of sets is what sleeping waiters compare against. A clear event
        // is left alone, with no locked instruction.
        let state = &self.shared.state;
        if state.load(Ordering::Relaxed) & FLAG != 0 {
            state.fetch_and(!FLAG, Ordering::Release);
        }
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Blocks until the flag is set or `timeout` passes; returns whether it was set while waiting (it
    /// may be clear again by the time this returns, after a `set(); clear()` pulse).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(crate::sync::wait::deadline_in(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let raw = &*self.shared;
        let start = raw.state.load(Ordering::SeqCst);
        if start & FLAG != 0 {
            return true;
        }
        // Spin, then sleep on `state` until the deadline, counted in `sleepers` (see `set`). With the
        // flag clear at `start`, only a `set` moves the word (a `clear` of a clear flag writes nothing):
        // a move is a set since `start`, whatever the flag says now.
        let was_set = || raw.state.load(Ordering::SeqCst) != start;
        // In slices of `MAX_CHECK`, each ended by a look at the word: a setter killed between its move
        // of the word and its `FUTEX_WAKE` (or any writer of the region that sets the flag without
        // a wake) would otherwise leave a waiter asleep for good on a set event. Until 2026-12-03 a
        // waiter slept in one piece until its deadline, and `wait()` never returned (found by
        // review). An idle waiter pays one wake-up per slice.
        let mut waiter = Waiter::new(deadline).checking(MAX_CHECK, MAX_CHECK);
        let sleepers = Some(&raw.sleepers);
        let setter_cpu = || raw.setter_cpu.load(Ordering::Relaxed);
        loop {
            match waiter.wait_until_beside(&was_set, &raw.state, start, sleepers, setter_cpu) {
                Wake::Ready => return true,
                // Nothing to check but the word, which the wait looks at first when called again.
                Wake::SliceEnded => {}
                // The flag may have been set on the way out.
                Wake::Deadline => return was_set(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter tells from `setter_cpu` whether the setter last ran on its own CPU (and then yields
    /// instead of spinning for a peer that cannot run): every `set` records its CPU.
    #[test]
    fn a_set_records_the_setters_cpu() {
        let e = Event::new().unwrap();
        e.shared
            .setter_cpu
            .store(crate::sys::proc::UNKNOWN_CPU, Ordering::Relaxed);
        let cpu = std::thread::scope(|s| {
            s.spawn(|| {
                let cpu = crate::sys::proc::pin_current_thread_for_test();
                e.set();
                cpu
            })
            .join()
            .unwrap()
        });
        assert_eq!(e.shared.setter_cpu.load(Ordering::Relaxed), cpu);
    }

    /// Found by review: a setter killed between moving the word and its `FUTEX_WAKE` (or one that
    /// never wakes: any writer of the region can set the flag) left a `wait()` asleep for good on an
    /// event that was set: its futex sleep had no end. Waiters now look again every `MAX_CHECK`.
    #[test]
    fn a_set_whose_wake_never_came_still_ends_the_wait() {
        let e = Event::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let e = e.clone();
            std::thread::spawn(move || {
                e.wait();
                let _ = tx.send(());
            })
        };
        // Bounded, to prove no hang: until the waiter is counted as asleep.
        let end = Instant::now() + Duration::from_secs(60);
        while e.shared.sleepers.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < end, "the waiter never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        // What `set` does before its wake, and no wake: the setter was killed there.
        let raw = &*e.shared;
        let _ = raw
            .state
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |w| {
                Some((w | FLAG).wrapping_add(2))
            });
        assert!(e.is_set());
        let woke = rx.recv_timeout(Duration::from_secs(30));
        // Release a waiter of the old code, so the thread does not outlive the test.
        e.set();
        waiter.join().unwrap();
        assert!(woke.is_ok(), "a waiter slept on through a set event");
    }

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
