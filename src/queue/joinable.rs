//! [`SimpleQueue`] and [`JoinableQueue`]: Python's two variations on [`Queue`].

use std::time::{Duration, Instant};

use super::Queue;
use crate::codec::{Codec, Serde};
use crate::error::{Error, Result};
use crate::region::RegionHandle;

/// A queue with only blocking `put` and `get`, like Python's `multiprocessing.SimpleQueue`. It is
/// bounded underneath (a full queue makes `put` wait, never fail).
///
/// # Examples
/// ```
/// let q: mproc::SimpleQueue<u32> = mproc::SimpleQueue::new()?;
/// q.put(&7)?;
/// assert!(!q.empty());
/// assert_eq!(q.get()?, 7);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T, C: Codec<T> = Serde> {
    queue: Queue<T, C>,
}

impl<T, C: Codec<T>> SimpleQueue<T, C> {
    /// Capacity used by [`SimpleQueue::new`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// An anonymous simple queue of [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) messages of the codec's
    /// default maximum size.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue {
            queue: Queue::new(Self::DEFAULT_CAPACITY)?,
        })
    }

    /// Wraps an existing queue.
    pub fn from_queue(queue: Queue<T, C>) -> Self {
        SimpleQueue { queue }
    }

    /// Appends, waiting while full.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, value: &T) -> Result<()> {
        self.queue.put(value)
    }

    /// Takes the next message, waiting while empty.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Whether the queue looked empty.
    pub fn empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Closes the queue (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close();
    }
}

/// A queue that counts unfinished work, like Python's `multiprocessing.JoinableQueue`: every `put` adds
/// one, every [`task_done`](JoinableQueue::task_done) takes one away, and [`join`](JoinableQueue::join)
/// waits for zero.
///
/// A consumer that dies between `get` and `task_done` leaves the count above zero, as in Python; use
/// [`join_timeout`](JoinableQueue::join_timeout) where consumers may crash.
///
/// # Examples
/// ```
/// let q: mproc::JoinableQueue<u32> = mproc::JoinableQueue::new(8)?;
/// q.put(&1)?;
/// let _ = q.get()?;
/// q.task_done()?;
/// q.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T, C: Codec<T> = Serde> {
    queue: Queue<T, C>,
}

impl<T, C: Codec<T>> JoinableQueue<T, C> {
    /// An anonymous joinable queue of `capacity` messages of the codec's default maximum size.
    ///
    /// # Panics
    /// As [`Queue::new`].
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn new(capacity: usize) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::new(capacity)?,
        })
    }

    /// Wraps an existing queue (for example one created with a name or a larger message size).
    pub fn from_queue(queue: Queue<T, C>) -> Self {
        JoinableQueue { queue }
    }

    /// The underlying queue, for what this type does not wrap (`get_many`, `try_get`, `len`...).
    ///
    /// Its puts are not counted: [`join`](JoinableQueue::join) does not wait for a message put through
    /// it, and a [`task_done`](JoinableQueue::task_done) for one spends the count of another task (or
    /// fails when none is left). Put through [`put`](JoinableQueue::put) what `join` should wait for.
    pub fn queue(&self) -> &Queue<T, C> {
        &self.queue
    }

    /// A handle for another process.
    pub fn handle(&self) -> RegionHandle {
        self.queue.handle()
    }

    /// Appends and counts one unfinished task.
    ///
    /// # Errors
    /// As [`Queue::put`]; the count is unchanged on error.
    pub fn put(&self, value: &T) -> Result<()> {
        self.put_until(value, None)
    }

    /// Appends within `timeout` and counts one unfinished task.
    ///
    /// # Errors
    /// As [`Queue::put_timeout`].
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.put_until(value, crate::sync::wait::deadline_in(timeout))
    }

    fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        // Counted by a mark the message carries into the queue (its ring slot's, or its log
        // record's), so `join` can never see zero while the message is in the queue, and a producer
        // killed before its message went in leaves no count behind: counting before the wait for
        // space, and then (found by review) before the publish, made `join` hang for good.
        self.queue.put_counted(value, deadline)
    }

    /// Takes the next message.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Takes the next message within `timeout`.
    ///
    /// # Errors
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout)
    }

    /// Marks one task done.
    ///
    /// # Errors
    /// [`Error::ReleasedTooManyTimes`] if called more times than messages were put (Python's ValueError).
    pub fn task_done(&self) -> Result<()> {
        if self.queue.task_done() {
            Ok(())
        } else {
            Err(Error::ReleasedTooManyTimes(
                "task_done called more times than items were put".into(),
            ))
        }
    }

    /// Tasks put and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        self.queue.unfinished()
    }

    /// Waits until every task put has been marked done.
    ///
    /// # Errors
    /// None today; the `Result` matches [`join_timeout`](Self::join_timeout).
    pub fn join(&self) -> Result<()> {
        self.queue.join_until(None)
    }

    /// Waits at most `timeout` for every task to be marked done.
    ///
    /// # Errors
    /// [`Error::Timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.queue
            .join_until(crate::sync::wait::deadline_in(timeout))
    }

    /// Closes the queue (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close();
    }
}
