//! The pool's engine: the [`Dispatcher`] under a lock, a *reader role* on the shared result ring, and a
//! background thread for the duties nobody else is around for.
//!
//! ## Two hops per round trip
//! A caller submits by putting its task straight on a worker's ring (under the dispatcher's lock). While
//! it waits for the answer it takes the reader role and sleeps on the result ring itself, so the worker's
//! answer wakes the caller directly: two wake-ups per round trip (caller → worker → caller), none when
//! both sides are awake and spinning. Before, a dispatcher thread sat in the middle and a round trip took
//! four.
//!
//! Fragments of one message must be taken off the ring in order by one thread, hence one reader at a
//! time. Other waiters sleep on the [`Bell`], which rings when a job changes and when the role is
//! released, and take the role in turn.
//!
//! The background thread ticks every [`LIVENESS_EVERY`]: if nobody holds the reader role it takes it
//! (work submitted asynchronously still progresses with no caller waiting), and with it notices dead
//! workers, fails or requeues exactly their tasks, and replaces them; it stops the workers of a closed
//! pool once the work is done, and kills them when the pool is terminated. A reader does the same
//! liveness check at the same pace, so a death is noticed within about 10 ms whoever reads. The dead
//! workers themselves are reaped by the background thread with no lock held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::dispatcher::{Dispatcher, PoolConfig, TaskSpec, LIVENESS_EVERY};
use super::results::{Bell, ProgressCallback, Wakeups};
use super::worker::FrameQueue;
use crate::error::{Error, Result};

/// How long the background thread waits for a frame when the result ring is not empty yet has nothing
/// to take: its next slot is claimed by a producer that has not published it, in the middle of its put
/// or killed there. Only a blocking get runs the ring's recovery of a dead producer's slot (after about
/// half a millisecond unchanged, `sync::wait::MIN_CHECK`); a `try_get` never does. Found by review: with
/// only the background thread reading (async results, `ready()` polled), a worker SIGKILLed in the
/// middle of a put stalled the result ring for good, and every later answer with it. A live producer
/// publishes within microseconds.
const CLAIMED_PATIENCE: Duration = Duration::from_millis(5);

/// The dispatcher, locked; on drop it releases the lock and then wakes the tasks that awaited jobs
/// finished meanwhile (`Dispatcher::wake_later`). A waker may poll its task inline, and that task may
/// call this pool on this thread: woken under the lock, a submit deadlocked the pool for good. A
/// holder of the reader role takes the wake-ups out first ([`LockedDispatcher::take_wakeups`]) and
/// wakes them once the role is released too: a blocking call made from the wake-up waits for a role
/// its own thread held, and hung.
struct LockedDispatcher<'a>(Option<MutexGuard<'a, Dispatcher>>);

impl std::ops::Deref for LockedDispatcher<'_> {
    type Target = Dispatcher;
    fn deref(&self) -> &Dispatcher {
        self.0.as_deref().expect("the guard is taken only in drop")
    }
}

impl std::ops::DerefMut for LockedDispatcher<'_> {
    fn deref_mut(&mut self) -> &mut Dispatcher {
        self.0
            .as_deref_mut()
            .expect("the guard is taken only in drop")
    }
}

impl LockedDispatcher<'_> {
    /// The wake-ups owed so far, for a caller to wake once it holds no pool lock.
    fn take_wakeups(&mut self) -> Wakeups {
        std::mem::take(&mut self.wake_later)
    }
}

impl Drop for LockedDispatcher<'_> {
    fn drop(&mut self) {
        if let Some(mut d) = self.0.take() {
            let owed = std::mem::take(&mut d.wake_later);
            drop(d);
            owed.wake_all();
        }
    }
}

/// See the [module docs](self).
pub(crate) struct Engine {
    dispatcher: Mutex<Dispatcher>,
    results: FrameQueue,
    /// Held by whoever takes frames off the result ring.
    reader: Mutex<()>,
    bell: Arc<Bell>,
    /// Set by `terminate`: the background thread kills the workers and exits.
    stop: AtomicBool,
    /// Handed to every job (see `Job::report_progress`).
    progress: Option<ProgressCallback>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the workers and the background thread.
    pub(crate) fn start(
        cfg: PoolConfig,
        results: FrameQueue,
        progress: Option<ProgressCallback>,
    ) -> Result<(Arc<Engine>, JoinHandle<()>)> {
        let dispatcher = Dispatcher::new(cfg, results.clone())?;
        let engine = Arc::new(Engine {
            dispatcher: Mutex::new(dispatcher),
            results,
            reader: Mutex::new(()),
            bell: Arc::new(Bell::default()),
            stop: AtomicBool::new(false),
            progress,
        });
        let background = engine.clone();
        let thread = std::thread::Builder::new()
            .name("mproc-pool".into())
            .spawn(move || background.background())
            .map_err(|e| Error::os("spawn the pool's background thread", e))?;
        Ok((engine, thread))
    }

    pub(crate) fn bell(&self) -> Arc<Bell> {
        self.bell.clone()
    }

    pub(crate) fn progress(&self) -> Option<ProgressCallback> {
        self.progress.clone()
    }

    fn dispatcher(&self) -> LockedDispatcher<'_> {
        // A panic while holding it (a bug) leaves consistent-enough bookkeeping: tasks are only ever
        // moved between maps; keep serving rather than poisoning every later call.
        LockedDispatcher(Some(
            self.dispatcher.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// Takes tasks and puts what fits on the workers' rings at once.
    ///
    /// # Errors
    /// [`Error::PoolClosed`] once the pool was closed or terminated.
    pub(crate) fn submit(&self, specs: Vec<TaskSpec>) -> Result<()> {
        let mut d = self.dispatcher();
        if d.closing || d.finished {
            return Err(Error::PoolClosed);
        }
        d.submit(specs);
        Ok(())
    }

    /// Spends at most `slice` helping the pool along for a waiter that last saw the bell at `seen`: as
    /// the reader, sleeping on the result ring; otherwise, sleeping on the bell.
    pub(crate) fn serve(&self, seen: u64, slice: Duration) {
        let Ok(role) = self.reader.try_lock() else {
            self.bell.wait_after(seen, slice);
            return;
        };
        // The dispatcher is locked after the wait, never across it: submitters must not wait on it.
        let got = self.results.get_timeout(slice);
        let mut d = self.dispatcher();
        match got {
            Ok(frame) => {
                d.on_frame(&frame);
                d.tick(true);
            }
            Err(Error::Timeout) => d.tick(true),
            // The result ring is broken (garbage written into it): nothing can come back.
            Err(_) => d.terminate(),
        }
        // Woken with no lock and no role held: see `LockedDispatcher`.
        let owed = d.take_wakeups();
        drop(d);
        drop(role);
        owed.wake_all();
        // Let a waiter that could not read take the role now rather than at the end of its slice.
        self.bell.ring_if_waited();
    }

    /// Stops taking work; the work submitted still runs, then the workers stop.
    pub(crate) fn close(&self) {
        self.dispatcher().closing = true;
    }

    /// See `Dispatcher::worker_pids`.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.dispatcher().worker_pids()
    }

    /// Whether `close` or `terminate` was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.dispatcher().closing
    }

    /// Asks the background thread to kill the workers and fail what is outstanding.
    pub(crate) fn terminate(&self) {
        self.dispatcher().closing = true;
        self.stop.store(true, Ordering::Release);
    }

    fn background(&self) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                let mut d = self.dispatcher();
                d.terminate();
                // The dead workers a reader replaced since the last tick: let go of their descriptors
                // now (with no lock held, as below), not when the pool is dropped.
                let dead = std::mem::take(&mut d.dead);
                drop(d);
                drop(dead);
                return;
            }
            {
                let role = self.reader.try_lock();
                let read = role.is_ok();
                // Outside the dispatcher's lock, as `serve` waits: see `CLAIMED_PATIENCE`.
                let got = (read && !self.results.is_empty())
                    .then(|| self.results.get_timeout(CLAIMED_PATIENCE));
                let mut d = self.dispatcher();
                match got {
                    Some(Ok(frame)) => d.on_frame(&frame),
                    None | Some(Err(Error::Timeout)) => {}
                    // The result ring is broken (garbage written into it): nothing can come back.
                    Some(Err(_)) => d.terminate(),
                }
                d.tick(read);
                let finished = d.finished;
                let dead = std::mem::take(&mut d.dead);
                let owed = d.take_wakeups();
                drop(d);
                drop(role);
                // Reaped here, with no lock held (see `Dispatcher::dead`).
                drop(dead);
                // A waker that panics (an executor's bug; the panic hook has reported it) must not end
                // this thread: every later death and asynchronous result depends on it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| owed.wake_all()));
                if finished {
                    return;
                }
                if read {
                    // A caller that found the role taken sleeps on the bell: hand it over now, not at the
                    // end of its slice.
                    self.bell.ring_if_waited();
                }
            }
            std::thread::park_timeout(LIVENESS_EVERY);
        }
    }
}
