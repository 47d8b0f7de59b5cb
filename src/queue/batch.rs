//! Batch operations on a [`Queue`]: [`Queue::put_many`] and [`Queue::get_many`], with their timed and
//! `try_` forms. A batch claims up to [`MAX_BATCH`] consecutive ring slots in one pass, publishes (or
//! frees) each with a plain store instead of a second compare-and-swap, and wakes the other side once per
//! batch rather than once per message. A push batch publishes its messages in order once all are
//! copied in (or, before a message that spills, those copied so far). The protocol and why it keeps the
//! ring's guarantees are in `ring/mod.rs` ("Batches").
//!
//! A message too large for a slot is spilled to a block of its own inside a batch exactly as `put`
//! spills it. A batch read ends its run of slots at such a message's reference and takes the block
//! (a long copy for a large message) only once the run is released, as `get` takes it once its slot
//! is released: a consumer killed during that copy holds no slot, and no message behind the spilled
//! one is taken with it. An unbounded queue has no ring: its batch forms are loops of single
//! operations with the same results (order, counts, errors).

use std::time::{Duration, Instant};

use super::ring::{PushBatch, Taken, MAX_BATCH};
use super::spill::SpillRef;
use super::{Engine, Queue};
use crate::codec::Codec;
use crate::error::{Error, Result};

impl<T, C: Codec<T>> Queue<T, C> {
    /// Appends every item, in order, waiting while the queue is full; returns how many were put (all of
    /// them). Items go in batches of up to 64: each batch claims as many consecutive free slots as there
    /// are (up to the items left), copies the messages in, then publishes them in order and wakes a
    /// sleeping consumer once (a message large enough to spill to a block of its own publishes those
    /// before it first). A producer killed inside `put_many` while copying therefore loses what it
    /// had not published of the batch it was copying (up to 64 messages), and one killed while
    /// publishing loses the rest of its batch; earlier batches are delivered whole.
    ///
    /// Messages of one `put_many` keep their order, but another producer's messages may come between two
    /// batches, as between two `put`s.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Encode`], [`Error::Os`] (no room left in shared memory for a large
    /// message): the items before the failing one have been put, the rest have not.
    ///
    /// # Examples
    /// ```
    /// use mproc::{codec::Raw, Queue};
    /// let q: Queue<u64, Raw> = Queue::new(8)?;
    /// assert_eq!(q.put_many(&[1, 2, 3])?, 3);
    /// assert_eq!(q.put_many((4..6).collect::<Vec<_>>().iter())?, 2);
    /// let mut out = Vec::new();
    /// assert_eq!(q.get_many(&mut out, 10)?, 5);
    /// assert_eq!(out, [1, 2, 3, 4, 5]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put_many<'a, I>(&self, items: I) -> Result<usize>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let (put, r) = self.put_many_until(items.into_iter(), None);
        r.map(|()| put)
    }

    /// Appends the leading items of `items`, in order, waiting at most `timeout` for space; returns how
    /// many were put, which is fewer than `items.len()` if the time ran out first.
    ///
    /// # Errors
    /// [`Error::Timeout`] if not even the first item could be put; otherwise as [`Queue::put_many`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use mproc::{codec::Raw, Queue};
    /// let q: Queue<u32, Raw> = Queue::new(2)?;
    /// assert_eq!(q.put_many_timeout(&[7, 8, 9], Duration::from_millis(5))?, 2);
    /// assert!(matches!(
    ///     q.put_many_timeout(&[9], Duration::from_millis(5)),
    ///     Err(mproc::Error::Timeout)
    /// ));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put_many_timeout(&self, items: &[T], timeout: Duration) -> Result<usize> {
        match self.put_many_until(items.iter(), crate::sync::wait::deadline_in(timeout)) {
            (n, Err(Error::Timeout)) if n > 0 => Ok(n),
            (n, r) => r.map(|()| n),
        }
    }

    /// Appends as many leading items of `items` as there is space for now, in order; returns how many.
    ///
    /// # Errors
    /// [`Error::Full`] if there was no space for the first; otherwise as [`Queue::put_many`].
    ///
    /// # Examples
    /// ```
    /// use mproc::{codec::Raw, Queue};
    /// let q: Queue<u32, Raw> = Queue::new(4)?;
    /// assert_eq!(q.try_put_many(&[1, 2, 3, 4, 5, 6])?, 4);
    /// assert!(matches!(q.try_put_many(&[5, 6]), Err(mproc::Error::Full)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_put_many(&self, items: &[T]) -> Result<usize> {
        match self.put_many_until(items.iter(), Some(Instant::now())) {
            (0, Err(Error::Timeout)) => Err(Error::Full),
            (n, Err(Error::Timeout)) => Ok(n),
            (n, r) => r.map(|()| n),
        }
    }

    /// Puts items from `items` until it ends, an error, or `deadline`; returns how many were put, and how
    /// it ended.
    fn put_many_until<'a>(
        &self,
        mut items: impl Iterator<Item = &'a T>,
        deadline: Option<Instant>,
    ) -> (usize, Result<()>)
    where
        T: 'a,
    {
        // Items taken from the iterator and not put yet: `pending[lo..hi]`. Refilled up to a batch before
        // each claim, so that a claim is never larger than what can be written into it.
        let (ring, slot_size) = match self.engine() {
            Engine::Bounded { ring, slot_size } => (ring, *slot_size),
            Engine::Unbounded(_) => return self.put_each_until(items, deadline),
        };
        let mut pending: [Option<&T>; MAX_BATCH] = [None; MAX_BATCH];
        let (mut lo, mut hi) = (0, 0);
        let mut put = 0;
        let mut exhausted = false;
        loop {
            pending.copy_within(lo..hi, 0);
            hi -= lo;
            lo = 0;
            while hi < MAX_BATCH && !exhausted {
                match items.next() {
                    Some(item) => {
                        pending[hi] = Some(item);
                        hi += 1;
                    }
                    None => exhausted = true,
                }
            }
            if hi == 0 {
                return (put, Ok(()));
            }
            let mut batch = match ring.claim_push(hi, deadline) {
                Ok(b) => b,
                Err(e) => return (put, Err(e)),
            };
            while batch.remaining() > 0 && lo < hi {
                let item = pending[lo].expect("pending items are Some");
                match C::with_bytes(item, |bytes| self.write_slot(&mut batch, slot_size, bytes)) {
                    Ok(Ok(true)) => {
                        lo += 1;
                        put += 1;
                    }
                    // The slot's claim was revoked (garbage only): the same item goes into the next one.
                    Ok(Ok(false)) => {}
                    // Dropping `batch` publishes the filled slots, tombstones the unused ones and wakes
                    // consumers.
                    Ok(Err(e)) | Err(e) => return (put, Err(e)),
                }
            }
        }
    }

    /// Writes one message into the batch's next slot: inline, or, at `slot_size` bytes or more, spilled
    /// to a block of its own whose reference fills the slot (as [`Queue::put`] does).
    fn write_slot(
        &self,
        batch: &mut PushBatch<'_>,
        slot_size: usize,
        bytes: &[u8],
    ) -> Result<bool> {
        if bytes.len() < slot_size {
            return batch.write(bytes);
        }
        if !C::SPILLS {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: slot_size - 1,
            });
        }
        // A spill (a block of its own, and a copy of a large message) takes far longer than what
        // publishing a batch at its end saves: what is filled goes out first.
        batch.publish_filled();
        let blocks = &self.inner.blocks;
        let r = blocks.spill(bytes)?;
        let mut slot = vec![0u8; slot_size];
        r.encode(&mut slot);
        let written = batch.write(&slot);
        if !matches!(written, Ok(true)) {
            // Not queued (a revoked claim retries the message in the next slot, spilling it anew):
            // nobody will ever take this block.
            blocks.unlink(&blocks.spill_name(r.nonce));
        }
        written
    }

    /// `put_many` on an unbounded queue: one `put` per item (which never waits for space).
    fn put_each_until<'a>(
        &self,
        items: impl Iterator<Item = &'a T>,
        deadline: Option<Instant>,
    ) -> (usize, Result<()>)
    where
        T: 'a,
    {
        let mut put = 0;
        for item in items {
            if let Err(e) = self.put_until(item, deadline) {
                return (put, Err(e));
            }
            put += 1;
        }
        (put, Ok(()))
    }

    /// Takes up to `max` messages into `out` (appended, in queue order): waits until at least one is
    /// there, then takes those that are there now, without waiting for more; returns how many it
    /// appended. Messages are claimed up to 64 consecutive slots at a time, and a producer waiting for
    /// space is woken once per batch. A run of slots ends after a message spilled to a block of its
    /// own (one of [`Queue::max_message_size`] bytes or more), whose block is read once the run's
    /// slots are released.
    ///
    /// `max == 0` returns `Ok(0)` at once.
    ///
    /// # A consumer killed inside `get_many`
    /// What it had already taken in the call dies with it, as a message `get` has returned would.
    /// Besides that, a consumer killed (SIGKILL, a crash) inside `get_many` loses:
    /// - while it reads a claimed run (inline messages are decoded in their slots, as `get` decodes
    ///   them), the messages of that run it had not read yet, up to 63: the dead claimer's slots are
    ///   freed for others by the recovery of dead claims, without their messages;
    /// - while it takes a spilled message (opens its block, checks it, copies it out: hundreds of
    ///   milliseconds for a message of hundreds of MiB), that message only. It holds no slot then, and
    ///   the messages behind the spilled one are still in the queue for other consumers. If it was
    ///   killed after the reference left the ring but before it opened the block, the block's file
    ///   stays in `/dev/shm`, referenced by nobody, until the queue's last handle anywhere is dropped
    ///   (that clean-up removes it; [`cleanup_stale`](crate::cleanup_stale) does if every user was
    ///   killed). Once opened, the block's name is removed before its bytes are copied.
    ///
    /// Never is a message delivered twice.
    ///
    /// # Errors
    /// [`Error::Closed`] once the queue is closed and drained. [`Error::Decode`] if a message is not a
    /// `T`, [`Error::Corrupted`] if its slot was damaged: that message is consumed, and the others taken
    /// in the same call, before and after it, are in `out`.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<String> = mproc::Queue::new(8)?;
    /// q.put_many(&["a".to_string(), "b".to_string(), "c".to_string()])?;
    /// let mut out = Vec::new();
    /// assert_eq!(q.get_many(&mut out, 2)?, 2);
    /// assert_eq!(q.get_many(&mut out, 2)?, 1);
    /// assert_eq!(out, ["a", "b", "c"]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_many(&self, out: &mut Vec<T>, max: usize) -> Result<usize> {
        self.get_many_until(out, max, None)
    }

    /// As [`Queue::get_many`], waiting at most `timeout` for the first message.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came; otherwise as [`Queue::get_many`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use mproc::{codec::Raw, Queue};
    /// let q: Queue<u8, Raw> = Queue::new(4)?;
    /// let mut out = Vec::new();
    /// assert!(matches!(
    ///     q.get_many_timeout(&mut out, 4, Duration::from_millis(5)),
    ///     Err(mproc::Error::Timeout)
    /// ));
    /// q.put(&1)?;
    /// assert_eq!(q.get_many_timeout(&mut out, 4, Duration::from_millis(5))?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_many_timeout(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize> {
        self.get_many_until(out, max, crate::sync::wait::deadline_in(timeout))
    }

    /// As [`Queue::get_many`], taking only the messages that are there now.
    ///
    /// # Errors
    /// [`Error::Empty`] if there were none; otherwise as [`Queue::get_many`].
    ///
    /// # Examples
    /// ```
    /// use mproc::{codec::Raw, Queue};
    /// let q: Queue<u8, Raw> = Queue::new(4)?;
    /// let mut out = Vec::new();
    /// assert!(matches!(q.try_get_many(&mut out, 4), Err(mproc::Error::Empty)));
    /// q.put_many(&[1, 2])?;
    /// assert_eq!(q.try_get_many(&mut out, 4)?, 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_get_many(&self, out: &mut Vec<T>, max: usize) -> Result<usize> {
        match self.get_many_until(out, max, Some(Instant::now())) {
            Err(Error::Timeout) => Err(Error::Empty),
            r => r,
        }
    }

    fn get_many_until(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize> {
        let (ring, slot_size) = match self.engine() {
            Engine::Bounded { ring, slot_size } => (ring, *slot_size),
            Engine::Unbounded(_) => return self.get_each_until(out, max, deadline),
        };
        let mut got = 0;
        let mut first_err: Option<Error> = None;
        // Slots taken so far, messages or not (tombstones, revoked claims, errors).
        let mut taken = 0;
        // A run ends after a spill reference (a slot of exactly `slot_size` bytes), when there can be
        // one; `slot_size` fits in a `u32` (it is the ring's).
        let spill_len = C::SPILLS.then(|| u32::try_from(slot_size).unwrap_or(u32::MAX));
        // The spill references of the current run, with the index in `out` where each message goes.
        // Allocated at the first one only.
        let mut spilled: Vec<(usize, Result<SpillRef>)> = Vec::new();
        while taken < max {
            let want = (max - taken).min(MAX_BATCH);
            // Wait for the first message only; once something was taken, take what is there now.
            let until = if taken == 0 {
                deadline
            } else {
                Some(Instant::now())
            };
            let mut batch = match ring.claim_pop(want, spill_len, until) {
                Ok(b) => b,
                Err(Error::Timeout | Error::Closed) if taken > 0 => break,
                Err(e) => return Err(e),
            };
            // A run shorter than asked for stopped at a slot that was not ready (nothing more is there
            // now, and another attempt would only cost a failed claim and a clock read), or right
            // after a spill reference (see below), with more maybe behind it.
            let short = batch.remaining() < want;
            let mut ended_at_spill = false;
            // Inline messages are decoded while their slot is held, as `get` does, straight into `out`.
            // A slot of exactly `slot_size` bytes is a spill reference: only the reference is kept
            // here (with its place in `out`), and its block is opened once every slot of the run is
            // released. What a slot gave beyond a verdict goes through `spill` and `failure`, so that
            // what `next` returns stays a byte: 64 B values, references and errors passed back through
            // its nested results were copied more often than their bytes were read.
            let (mut spill, mut failure) = (None, None);
            loop {
                let before = out.len();
                let Some(m) = batch.next(|b| {
                    if b.len() == slot_size && C::SPILLS {
                        spill = Some(SpillRef::parse(b));
                        return Slot::Spilled;
                    }
                    match C::decode_push(b, out) {
                        Ok(()) => Slot::Pushed,
                        Err(e) => {
                            failure = Some(e);
                            Slot::Failed
                        }
                    }
                }) else {
                    break;
                };
                ended_at_spill = false;
                match m {
                    Taken::Message(Slot::Pushed) => {
                        got += 1;
                        taken += 1;
                    }
                    Taken::Message(Slot::Spilled) => {
                        if let Some(r) = spill.take() {
                            spilled.push((out.len(), r));
                        }
                        taken += 1;
                        ended_at_spill = true;
                    }
                    Taken::Message(Slot::Failed) => {
                        taken += 1;
                        if let Some(e) = failure.take() {
                            first_err.get_or_insert(e);
                        }
                    }
                    // A tombstone; or a claim revoked while we read (garbage only), whose bytes,
                    // decoded and pushed already, may be another producer's half-written message.
                    Taken::Nothing => {
                        out.truncate(before);
                        (spill, failure) = (None, None);
                    }
                    Taken::BadLength(len) => {
                        taken += 1;
                        first_err.get_or_insert(ring.bad_length(len));
                    }
                }
            }
            // Frees the run's slots (read or not: only a panic in the codec leaves some unread) and
            // wakes producers: no slot is claimed by us from here on.
            drop(batch);
            // The run ends after the first spill reference (`Ring::claim_pop`), so an honest queue
            // gives at most one, the run's last, and it is appended; a peer's garbage may give more,
            // each inserted at its place. Each is taken (opened, checked, unlinked, decoded) with no
            // slot claimed, so a consumer killed meanwhile loses that message only, and the messages
            // behind it stay in the ring for others.
            let mut inserted = 0;
            for (at, r) in spilled.drain(..) {
                match r.and_then(|r| self.inner.blocks.take(r, C::decode)?) {
                    Ok(v) => {
                        out.insert(at + inserted, v);
                        inserted += 1;
                        got += 1;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if short && taken > 0 && !ended_at_spill {
                break;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(got),
        }
    }

    /// `get_many` on an unbounded queue: one `get` per message, waiting only for the first, with the
    /// batch form's results (a bad message is consumed and reported after the others are taken).
    fn get_each_until(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize> {
        let mut got = 0;
        let mut first_err: Option<Error> = None;
        let mut taken = 0;
        while taken < max {
            let until = if taken == 0 {
                deadline
            } else {
                Some(Instant::now())
            };
            match self.get_until(until) {
                Ok(v) => {
                    out.push(v);
                    got += 1;
                }
                Err(Error::Timeout | Error::Closed) if taken > 0 => break,
                Err(e @ (Error::Timeout | Error::Closed)) => return Err(e),
                // A message that did not decode was taken: go on with the next one.
                Err(e @ Error::Decode { .. }) => {
                    first_err.get_or_insert(e);
                }
                // Anything else may take nothing (garbage the queue cannot get past): stop, where
                // going on retried it up to `max` times (found by review: `usize::MAX` never returned).
                Err(e) => {
                    first_err.get_or_insert(e);
                    break;
                }
            }
            taken += 1;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(got),
        }
    }
}

/// What `get_many` did with one claimed slot's bytes.
#[derive(Clone, Copy)]
enum Slot {
    /// Decoded and pushed onto the caller's vector.
    Pushed,
    /// A spill reference (parsed or not), taken once the run is released.
    Spilled,
    /// Not decodable: consumed, and reported after the others are taken.
    Failed,
}
