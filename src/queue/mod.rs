//! Message passing between processes through rings in shared memory: [`Queue`], [`SimpleQueue`],
//! [`JoinableQueue`] and [`Pipe`], after Python's names. No kernel pipe is in the data path: a message is
//! copied into a slot of a shared ring and out of it, and a blocked side sleeps on a futex that is only
//! woken when somebody sleeps.
//!
//! When a producer or consumer dies mid-message (the ring's algorithm and orderings are documented
//! beside its code, for contributors): a consumer never sees a half-written message; a message whose
//! consumer is killed inside `get` is lost (at most once); nothing is delivered twice. A producer killed
//! inside [`Queue::put_many`] loses the batch it had not published yet (up to 64 messages, see there).
//! A consumer killed inside [`Queue::get_many`] loses, besides what it had taken, the rest of the run
//! of slots it was reading (up to 63 messages), or, if it was taking a spilled (large) message, that
//! message alone (see there).

mod batch;
mod joinable;
mod pipe;
pub(crate) mod ring;
mod spill;
mod unbounded;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{Codec, Serde};
use crate::error::{Error, Result};
use crate::region::{layout_hash, Layout, Region, RegionHandle, DEFAULT_OPEN_TIMEOUT};
use crate::sync::raw_lock::INTERNAL_BOUND;
pub use joinable::{JoinableQueue, SimpleQueue};
pub(crate) use pipe::ForkHolds;
pub use pipe::{Connection, Pipe};
use ring::{Geometry, Ring, MAX_CAPACITY, MAX_SLOT_SIZE};
use spill::{Attachment, Blocks, SpillRef, REF_LEN};
use unbounded::Log;

/// Folded into a bounded queue's layout hash with the ring's own revision: bump it when the meaning of
/// slot contents changes. 1: a slot of exactly `slot_size` bytes carries a spill reference.
const SPILL_FORMAT: usize = 1;
/// Folded into an unbounded queue's layout hash: bump it when `unbounded::LogControl` or the segment
/// format changes.
/// 2: `LogControl::queued_counted`, and the COUNTED bit of a record's length word. 3: `unfinished`
/// is a [`tally`] word. 4: an odd `head_off` names the segment a consumer moved the head from. 5:
/// `LogControl::in_flight`, and the `IN_FLIGHT` bit of `queued_counted`.
const UNBOUNDED_FORMAT: usize = 5;

/// A JoinableQueue's `unfinished` word (ring and unbounded engines alike): its low 32 bits are the
/// signed count of messages taken and not yet marked done; every update also adds one to the word's
/// high half, so the word never comes back to a value it held (within 2^31 updates). A reader that
/// reads it before and after summing the counts still in the queue (slot marks, `queued_counted`)
/// and finds it unchanged knows that no message was taken or marked done in between: the sum is the
/// count at one moment. Found by review: without that check, a worker's follow-up `put` into a slot
/// `join`'s scan had passed, and then its `task_done` of the message it came from, summed to 0 while
/// the follow-up was unfinished (and `task_done` said "too many" when a `get` moved the only count
/// from the queue to this word between its two reads).
pub(crate) mod tally {
    /// A consumer took a counted message: one more update, one more taken.
    pub(crate) const TAKE: u64 = (1 << 32) + 1;
    /// A `task_done` (or a take undone): one more update, one fewer taken.
    pub(crate) const DONE: u64 = (1 << 32) - 1;

    /// The signed count of taken, not done messages in an `unfinished` word.
    pub(crate) fn count(word: u64) -> i64 {
        i64::from(word as u32 as i32)
    }

    /// How many times a reader re-reads before it settles for a count that may be stale.
    pub(crate) const TRIES: u32 = 8;

    /// `task_done` of both engines: marks one message done in `unfinished`. `queued()` counts the
    /// counted messages still in the queue (slot marks, `queued_counted`); it is read only when
    /// nothing taken is outstanding, and trusted only with `unfinished` unchanged around it (a `get`
    /// moving the only count out of the queue between the two reads would hide it from both).
    /// `None`: nothing was outstanding (one `task_done` too many); else whether the count reached
    /// zero, when `join`'s sleepers must be woken.
    pub(crate) fn mark_done(
        unfinished: &std::sync::atomic::AtomicU64,
        queued: impl Fn() -> i64,
    ) -> Option<bool> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut cur = unfinished.load(SeqCst);
        loop {
            if count(cur) <= 0 {
                let queued = queued();
                let now = unfinished.load(SeqCst);
                if now != cur {
                    cur = now;
                    continue;
                }
                if count(cur).saturating_add(queued.max(0)) <= 0 {
                    return None;
                }
            }
            match unfinished.compare_exchange(cur, cur.wrapping_add(DONE), SeqCst, SeqCst) {
                Ok(_) => return Some(count(cur) <= 1),
                Err(v) => cur = v,
            }
        }
    }
}

/// The two engines behind a [`Queue`].
enum Engine {
    /// A ring of slots; messages of `slot_size` bytes or more are spilled to a block of their own and
    /// the slot carries a reference, `slot_size` bytes long (the only slot length an inline message
    /// can never have).
    Bounded { ring: Ring, slot_size: usize },
    /// A chain of segments: puts never wait for space.
    Unbounded(Log),
}

struct Inner {
    engine: Engine,
    blocks: Blocks,
    attachment: Attachment,
    // Declared last: `engine` points into it, and `Drop` below still uses it.
    region: Region,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last user anywhere removes the queue's blocks (spill.rs, "The last user").
        self.attachment.release(&self.region, &self.blocks);
    }
}

/// A multi-producer, multi-consumer queue between processes, like Python's `multiprocessing.Queue`:
/// bounded ([`Queue::new`]: `put` waits while it holds `capacity` messages) or unbounded
/// ([`Queue::unbounded`], Python's `Queue()`: `put` never waits for space).
///
/// Messages of any size are accepted. A bounded queue copies a message of up to
/// [`max_message_size`](Queue::max_message_size) encoded bytes (1 KiB by default for serde) through
/// its ring with no system call; a larger one is *spilled*: written to a shared block of its own, whose
/// reference travels through the ring, and which the consumer maps and removes. An unbounded queue
/// appends messages to shared segments it adds as it grows. The only limit is the space of `/dev/shm`
/// (a put that does not fit fails with [`Error::Os`]). Values travel through a [`Codec`]: [`Serde`]
/// (postcard) by default, or [`Raw`](crate::codec::Raw) for `Pod` types, which copies their bytes with
/// no serialization.
///
/// A put of a small message into a non-full bounded queue and a get from a non-empty one are atomics
/// and a copy, no system call. `len` is a snapshot that may be stale by the time it returns.
///
/// Spilled messages and segments not yet consumed are removed when the last handle to the queue, in
/// any process, is dropped (a process killed with SIGKILL lets go of its handles with its descriptors).
///
/// # Examples
/// ```
/// let q: mproc::Queue<String> = mproc::Queue::new(16)?;
/// q.put(&"hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// assert!(matches!(q.try_get(), Err(mproc::Error::Empty)));
/// // A message far larger than a slot is spilled, not refused.
/// q.put(&"x".repeat(100_000))?;
/// assert_eq!(q.get()?.len(), 100_000);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// Raw `Pod` messages:
/// ```
/// use mproc::{codec::Raw, Queue};
/// let q: Queue<[f32; 4], Raw> = Queue::new(8)?;
/// q.put(&[1.0, 2.0, 3.0, 4.0])?;
/// assert_eq!(q.get()?, [1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Queue<T, C: Codec<T> = Serde> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(T) -> T>,
    _c: PhantomData<C>,
}

/// A queue's handle that can only close it, for any message type: what a pipe's clean-up keeps (see
/// `pipe.rs`, "Who holds an end").
#[derive(Clone)]
pub(crate) struct Closer(Arc<Inner>);

impl Closer {
    /// [`Queue::close`].
    pub(crate) fn close(&self) {
        match &self.0.engine {
            Engine::Bounded { ring, .. } => ring.close(),
            Engine::Unbounded(log) => log.close(),
        }
    }
}

impl<T, C: Codec<T>> Clone for Queue<T, C> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }
}

impl<T, C: Codec<T>> Queue<T, C> {
    fn layout(size: Option<usize>) -> Layout {
        let name = std::any::type_name::<Queue<T, C>>();
        Layout {
            type_name: name,
            hash: layout_hash(name, ring::LAYOUT_REVISION << 8 | SPILL_FORMAT, 64),
            size,
        }
    }

    fn unbounded_layout(size: Option<usize>) -> Layout {
        let name = std::any::type_name::<Queue<T, C>>();
        Layout {
            type_name: name,
            hash: layout_hash(name, Log::CONTROL_SIZE << 8 | UNBOUNDED_FORMAT, 8),
            size,
        }
    }

    #[track_caller]
    fn geometry(capacity: usize, max_message: usize) -> Geometry {
        assert!(
            capacity != 0,
            "a queue of capacity 0 holds nothing: for Python's Queue(maxsize=0), an unbounded queue, \
             use Queue::unbounded()"
        );
        assert!(
            capacity <= MAX_CAPACITY as usize,
            "queue capacity must be in 1..={MAX_CAPACITY}, not {capacity}"
        );
        assert!(
            max_message < MAX_SLOT_SIZE as usize,
            "the inline message size must be below {MAX_SLOT_SIZE} bytes (larger messages spill anyway)"
        );
        // One byte more than the largest inline message: a slot of exactly `slot_size` bytes is then
        // unambiguously a spill reference.
        Geometry {
            capacity: capacity as u32,
            slot_size: (max_message + 1).max(REF_LEN) as u32,
        }
    }

    fn create_in(name: Option<&str>, geo: Geometry) -> Result<Self> {
        let size = geo.payload_size().ok_or(Error::SizeOverflow {
            what: "the queue (capacity × slot size)".into(),
        })?;
        let region = Region::create_with(Self::layout(Some(size)), name, false, |r| {
            Ring::init(r, geo)
        })?;
        Self::wrap(region, false)
    }

    fn create_unbounded_in(name: Option<&str>) -> Result<Self> {
        // A zeroed control is an empty queue.
        let layout = Self::unbounded_layout(Some(Log::CONTROL_SIZE));
        Self::wrap(Region::create_with(layout, name, false, |_| Ok(()))?, true)
    }

    /// Attaches to a region validated against [`Self::unbounded_layout`] (`unbounded`) or
    /// [`Self::layout`].
    fn wrap(region: Region, unbounded: bool) -> Result<Self> {
        let blocks = Blocks::new(region.id());
        let engine = if unbounded {
            Engine::Unbounded(Log::attach(&region, blocks.clone())?)
        } else {
            let ring = Ring::attach(&region)?;
            let slot_size = ring.geometry().slot_size as usize;
            if slot_size < REF_LEN {
                return Err(Error::Corrupted(format!(
                    "queue slots of {slot_size} bytes cannot hold a spill reference"
                )));
            }
            Engine::Bounded { ring, slot_size }
        };
        // A bounded queue that never spills has no blocks, so no group to hold an anchor of. An
        // unbounded one keeps every message in blocks, its segments, whatever its codec (found by
        // review: without an anchor, nobody removed them after its last user).
        let attachment = if C::SPILLS || unbounded {
            Attachment::attach(&region)?
        } else {
            Attachment::detached()
        };
        Ok(Queue {
            inner: Arc::new(Inner {
                engine,
                blocks,
                attachment,
                region,
            }),
            _t: PhantomData,
            _c: PhantomData,
        })
    }

    /// Opens a region that holds either kind of queue of this type.
    fn open_either(open: impl Fn(Layout) -> Result<Region>) -> Result<Self> {
        match open(Self::layout(None)) {
            Err(Error::TypeMismatch { found_hash, .. })
                if found_hash == Self::unbounded_layout(None).hash =>
            {
                Self::wrap(open(Self::unbounded_layout(None))?, true)
            }
            r => Self::wrap(r?, false),
        }
    }

    /// An anonymous bounded queue of `capacity` messages; messages of up to the codec's default size
    /// (1 KiB encoded for serde, `size_of::<T>()` for raw) are copied inline, larger ones spill.
    ///
    /// Python's `Queue(maxsize=0)` (unbounded) is [`Queue::unbounded`] here: a capacity of 0 is a
    /// programming error, not a request for an unbounded queue, so that a computed capacity that
    /// comes out 0 is not silently turned into an unbounded one.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u32> = mproc::Queue::new(2)?;
    /// q.put(&1)?;
    /// q.put(&2)?;
    /// assert!(matches!(q.try_put(&3), Err(mproc::Error::Full)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `capacity` is 0 (the message points to [`Queue::unbounded`]) or above 2^28.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn new(capacity: usize) -> Result<Self> {
        Self::with_max_message(capacity, C::default_max_size())
    }

    /// An anonymous unbounded queue, like Python's `multiprocessing.Queue()`: `put` never waits for
    /// space and accepts messages of any size; the queue grows in shared memory (segments of 1 MiB,
    /// doubling up to 64 MiB, and one of its own for a larger message) and gives the memory back as
    /// consumers drain it.
    ///
    /// Every operation takes a short robust lock (a process killed holding it is taken over, and what
    /// it left half-done repaired), so it is slower per message than a bounded queue's lock-free ring;
    /// prefer [`Queue::new`] where a bound is natural.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<Vec<u8>> = mproc::Queue::unbounded()?;
    /// for i in 0..1000u32 {
    ///     q.put(&vec![i as u8; 4096])?; // never waits, though nobody reads yet
    /// }
    /// assert_eq!(q.len(), 1000);
    /// assert_eq!(q.get()?, vec![0; 4096]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn unbounded() -> Result<Self> {
        Self::create_unbounded_in(None)
    }

    /// An unbounded queue under `name`, openable by other processes with [`Queue::open`] (the name is
    /// removed when this handle is dropped here).
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-unbounded-{}", std::process::id());
    /// let q: mproc::Queue<String> = mproc::Queue::create_unbounded(&name)?;
    /// let other: mproc::Queue<String> = mproc::Queue::open(&name)?;
    /// q.put(&"hi".to_string())?;
    /// assert_eq!(other.get()?, "hi");
    /// assert!(other.is_unbounded());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    pub fn create_unbounded(name: &str) -> Result<Self> {
        Self::create_unbounded_in(Some(name))
    }

    /// An anonymous bounded queue of `capacity` messages that copies messages of up to `max_message`
    /// encoded bytes through its ring; larger ones spill to a shared block of their own (a system call
    /// or a few each way, then a copy), so `max_message` is a speed knob, not a limit. The ring takes
    /// about `capacity × (max_message + 65)` bytes of shared memory.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<Vec<u8>> = mproc::Queue::with_max_message(4, 64 * 1024)?;
    /// q.put(&vec![1; 60_000])?; // inline
    /// q.put(&vec![2; 1 << 20])?; // spilled
    /// assert_eq!(q.get()?.len(), 60_000);
    /// assert_eq!(q.get()?.len(), 1 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `capacity` is 0 or above 2^28, or `max_message` is 1 GiB or more.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn with_max_message(capacity: usize, max_message: usize) -> Result<Self> {
        Self::create_in(None, Self::geometry(capacity, max_message))
    }

    /// A bounded queue under `name`, openable by other processes (removed when this handle is dropped
    /// here). `max_message` is as in [`Queue::with_max_message`].
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-queue-{}", std::process::id());
    /// let q: mproc::Queue<u64> = mproc::Queue::create(&name, 8, 64)?;
    /// let other: mproc::Queue<u64> = mproc::Queue::open(&name)?;
    /// q.put(&42)?;
    /// assert_eq!(other.get()?, 42);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// As [`Queue::with_max_message`].
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`].
    #[track_caller]
    pub fn create(name: &str, capacity: usize, max_message: usize) -> Result<Self> {
        Self::create_in(Some(name), Self::geometry(capacity, max_message))
    }

    /// Opens the queue `name`, bounded or unbounded; a bounded queue's geometry is read from the
    /// region and checked against its size.
    ///
    /// # Examples
    /// ```
    /// assert!(matches!(
    ///     mproc::Queue::<u8>::open("no-such-queue-here"),
    ///     Err(mproc::Error::NotFound { .. })
    /// ));
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] if it carries another message type or codec, or
    /// another validation error.
    pub fn open(name: &str) -> Result<Self> {
        Self::open_either(|layout| Region::open_with(name, layout, DEFAULT_OPEN_TIMEOUT))
    }

    /// A handle another process can re-attach with [`Queue::from_handle`] (this is also how a queue
    /// travels as an argument to a spawned process).
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::unbounded()?;
    /// let again: mproc::Queue<u8> = mproc::Queue::from_handle(&q.handle())?;
    /// q.put(&7)?;
    /// assert_eq!(again.get()?, 7);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn handle(&self) -> RegionHandle {
        self.inner.region.handle()
    }

    /// Re-attaches to a queue, bounded or unbounded, from its handle.
    ///
    /// # Examples
    /// ```
    /// use mproc::{codec::Serde, Queue, RegionHandle};
    ///
    /// fn report(h: RegionHandle) {
    ///     let q = Queue::<u64, Serde>::from_handle(&h).expect("the parent's queue");
    ///     q.put(&42).expect("put");
    /// }
    ///
    /// let q = Queue::<u64, Serde>::new(4)?;
    /// let mut child = mproc::Process::new(report, q.handle())?;
    /// child.start()?;
    /// assert_eq!(q.get()?, 42);
    /// child.join()?;
    /// // A handle of something else is refused, never misread.
    /// let value = mproc::Value::new(0u64)?;
    /// assert!(Queue::<u64, Serde>::from_handle(&value.handle()).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::StaleHandle`], or a validation error.
    pub fn from_handle(handle: &RegionHandle) -> Result<Self> {
        Self::open_either(|layout| Region::open_handle(handle, layout))
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Appends a message, waiting while a bounded queue is full.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<(u32, String)> = mproc::Queue::new(4)?;
    /// q.put(&(1, "one".into()))?;
    /// assert_eq!(q.get()?, (1, "one".into()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Encode`]; [`Error::Os`] if a large message cannot be spilled (no
    /// room left in `/dev/shm`).
    pub fn put(&self, value: &T) -> Result<()> {
        self.put_until(value, None)
    }

    /// Appends a message, waiting at most `timeout` for space.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::new(1)?;
    /// q.put_timeout(&1, std::time::Duration::from_millis(10))?;
    /// assert!(matches!(
    ///     q.put_timeout(&2, std::time::Duration::from_millis(10)),
    ///     Err(mproc::Error::Timeout)
    /// ));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`Queue::put`].
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.put_until(value, crate::sync::wait::deadline_in(timeout))
    }

    /// Appends a message only if there is space now (an unbounded queue always has space).
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::new(1)?;
    /// q.try_put(&1)?;
    /// assert!(matches!(q.try_put(&2), Err(mproc::Error::Full)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Full`], and as [`Queue::put`]. An unbounded queue is never full: it waits for its
    /// internal lock (held for one copy of a message by another put, or a take) at most 2 s, and
    /// returns [`Error::Timeout`] if a hung process holds it longer.
    pub fn try_put(&self, value: &T) -> Result<()> {
        if let Engine::Unbounded(_) = self.engine() {
            return self.put_until(value, Some(Instant::now() + INTERNAL_BOUND));
        }
        match self.put_until(value, Some(Instant::now())) {
            Err(Error::Timeout) => Err(Error::Full),
            r => r,
        }
    }

    pub(crate) fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        self.put_watching(value, deadline, &mut || {})
    }

    /// [`Queue::put_until`], calling `watch` after every sleep of a bounded queue's wait (see
    /// [`Ring::push_counting`]); an unbounded queue never waits for space, so never calls it.
    pub(crate) fn put_watching(
        &self,
        value: &T,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
    ) -> Result<()> {
        self.put_counting(value, deadline, watch, false)
    }

    /// A JoinableQueue's put: the message counts as unfinished from the moment it is in the queue
    /// (a mark in its slot or record: `ring` and `unbounded`, "JoinableQueue accounting"); an error,
    /// or a producer killed before the message went in, leaves the count as it was.
    pub(crate) fn put_counted(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        self.put_counting(value, deadline, &mut || {}, true)
    }

    fn put_counting(
        &self,
        value: &T,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
        count: bool,
    ) -> Result<()> {
        match self.engine() {
            Engine::Bounded { ring, slot_size } => C::with_bytes(value, |bytes| {
                // The fast path: one comparison more than the ring's own length check.
                if bytes.len() < *slot_size {
                    ring.push_counting(bytes, deadline, watch, count)
                } else if C::SPILLS {
                    self.spill_put(ring, *slot_size, bytes, deadline, watch, count)
                } else {
                    Err(Error::MessageTooLarge {
                        size: bytes.len(),
                        max: *slot_size - 1,
                    })
                }
            })?,
            Engine::Unbounded(log) => {
                C::with_bytes(value, |bytes| log.push(bytes, deadline, count))?
            }
        }
    }

    /// Writes `bytes` to a block of their own and puts its reference through the ring.
    #[cold]
    fn spill_put(
        &self,
        ring: &Ring,
        slot_size: usize,
        bytes: &[u8],
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
        count: bool,
    ) -> Result<()> {
        if ring.is_closed() {
            return Err(Error::Closed);
        }
        let blocks = &self.inner.blocks;
        let r = blocks.spill(bytes)?;
        let mut slot = vec![0u8; slot_size];
        r.encode(&mut slot);
        let pushed = ring.push_counting(&slot, deadline, watch, count);
        if pushed.is_err() {
            // Not queued: nobody will take the block.
            blocks.unlink(&blocks.spill_name(r.nonce));
        }
        pushed
    }

    /// Takes the next message, waiting while the queue is empty.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<String> = mproc::Queue::new(4)?;
    /// q.put(&"a".into())?;
    /// q.close();
    /// assert_eq!(q.get()?, "a"); // what was put before `close` is still delivered
    /// assert!(matches!(q.get(), Err(mproc::Error::Closed)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`] once the queue is closed and drained; [`Error::Decode`] if the message is not a
    /// `T`; [`Error::Corrupted`] if its slot, segment or spilled block was damaged. The message is
    /// consumed either way.
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// Takes the next message, waiting at most `timeout`.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::unbounded()?;
    /// let r = q.get_timeout(std::time::Duration::from_millis(10));
    /// assert!(matches!(r, Err(mproc::Error::Timeout)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(crate::sync::wait::deadline_in(timeout))
    }

    /// Takes the next message if one is there now.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::new(4)?;
    /// assert!(matches!(q.try_get(), Err(mproc::Error::Empty)));
    /// q.put(&3)?;
    /// assert_eq!(q.try_get()?, 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Empty`], and as [`Queue::get`].
    pub fn try_get(&self) -> Result<T> {
        match self.get_until(Some(Instant::now())) {
            Err(Error::Timeout) => Err(Error::Empty),
            r => r,
        }
    }

    pub(crate) fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        self.get_watching(deadline, &mut || {})
    }

    /// [`Queue::get_until`], calling `watch` after every sleep of a bounded queue's wait (see
    /// [`Ring::pop_watching`]). An unbounded queue's wait does not call it: callers that rely on it
    /// (a [`Connection`]) hold bounded queues only.
    pub(crate) fn get_watching(
        &self,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
    ) -> Result<T> {
        match self.engine() {
            Engine::Bounded { ring, slot_size } => {
                let slot_size = *slot_size;
                // The closure may run more than once (ring/mod.rs, `try_pop`): it only reads. The block
                // a reference names is opened and removed after the slot is released.
                let popped = ring.pop_watching(
                    deadline,
                    |b| {
                        if b.len() == slot_size && C::SPILLS {
                            Err(SpillRef::parse(b))
                        } else {
                            Ok(C::decode(b))
                        }
                    },
                    watch,
                );
                match popped? {
                    Ok(value) => value,
                    Err(r) => self.inner.blocks.take(r?, C::decode)?,
                }
            }
            Engine::Unbounded(log) => log.pop(deadline, C::decode)?,
        }
    }

    /// Messages in the queue (a snapshot).
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::new(4)?;
    /// q.put(&1)?;
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.len(),
            Engine::Unbounded(log) => log.len(),
        }
    }

    /// Whether the queue looked empty.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::unbounded()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue is unbounded (made by [`Queue::unbounded`] or [`Queue::create_unbounded`]).
    ///
    /// # Examples
    /// ```
    /// assert!(mproc::Queue::<u8>::unbounded()?.is_unbounded());
    /// assert!(!mproc::Queue::<u8>::new(1)?.is_unbounded());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_unbounded(&self) -> bool {
        matches!(self.engine(), Engine::Unbounded(_))
    }

    /// The capacity in messages; `usize::MAX` for an unbounded queue.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Queue::<u8>::new(5)?.capacity(), 5);
    /// assert_eq!(mproc::Queue::<u8>::unbounded()?.capacity(), usize::MAX);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn capacity(&self) -> usize {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.geometry().capacity as usize,
            Engine::Unbounded(_) => usize::MAX,
        }
    }

    /// The largest encoded message copied inline through a bounded queue's ring (larger ones spill, see
    /// [`Queue::with_max_message`]); `usize::MAX` for an unbounded queue, which has no ring.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<Vec<u8>> = mproc::Queue::with_max_message(2, 100)?;
    /// assert_eq!(q.max_message_size(), 100);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_message_size(&self) -> usize {
        match self.engine() {
            Engine::Bounded { slot_size, .. } => slot_size - 1,
            Engine::Unbounded(_) => usize::MAX,
        }
    }

    /// Closes the queue for everyone: puts fail with [`Error::Closed`]; gets drain what is left, then fail
    /// with [`Error::Closed`]. Wakes every blocked caller.
    ///
    /// # Examples
    /// ```
    /// let q: mproc::Queue<u8> = mproc::Queue::unbounded()?;
    /// q.close();
    /// assert!(q.is_closed());
    /// assert!(matches!(q.put(&1), Err(mproc::Error::Closed)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.close(),
            Engine::Unbounded(log) => log.close(),
        }
    }

    /// A handle that can only close this queue.
    pub(crate) fn closer(&self) -> Closer {
        Closer(self.inner.clone())
    }

    /// Whether the queue was closed.
    ///
    /// # Examples
    /// ```
    /// let q = mproc::Queue::<u8>::new(2)?;
    /// assert!(!q.is_closed());
    /// q.clone().close(); // any handle closes it for all
    /// assert!(q.is_closed());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.is_closed(),
            Engine::Unbounded(log) => log.is_closed(),
        }
    }

    /// Waits until a message can be taken (`Some(true)`), the queue is closed and empty
    /// (`Some(false)`), or `deadline` passes (`None`). `watch` as in [`Queue::get_watching`] (a
    /// bounded queue's only).
    pub(crate) fn wait_nonempty(
        &self,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
    ) -> Option<bool> {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.wait_nonempty(deadline, watch),
            Engine::Unbounded(log) => match log.wait_nonempty(deadline) {
                true => Some(true),
                false if log.is_closed() => Some(false),
                false => None,
            },
        }
    }

    // ---- JoinableQueue accounting, on either engine ----

    pub(crate) fn task_done(&self) -> bool {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.task_done(),
            Engine::Unbounded(log) => log.task_done(),
        }
    }

    pub(crate) fn unfinished(&self) -> u64 {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.unfinished(),
            Engine::Unbounded(log) => log.unfinished(),
        }
    }

    pub(crate) fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring.join(deadline),
            Engine::Unbounded(log) => log.join(deadline),
        }
    }
}

impl<T, C: Codec<T>> std::fmt::Debug for Queue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("region", &self.handle())
            .field("unbounded", &self.is_unbounded())
            .field("capacity", &self.capacity())
            .field("max_message_size", &self.max_message_size())
            .finish()
    }
}

crate::region::shared::serde_as_handle!([T, C: Codec<T>] Queue<T, C>);

#[cfg(test)]
impl<T, C: Codec<T>> Queue<T, C> {
    /// The ring of a bounded queue.
    pub(crate) fn ring(&self) -> &Ring {
        match self.engine() {
            Engine::Bounded { ring, .. } => ring,
            Engine::Unbounded(_) => panic!("an unbounded queue has no ring"),
        }
    }

    /// The log of an unbounded queue.
    pub(crate) fn log(&self) -> &Log {
        match self.engine() {
            Engine::Unbounded(log) => log,
            Engine::Bounded { .. } => panic!("a bounded queue has no log"),
        }
    }

    /// The `/dev/shm` entries of this queue's blocks (spilled messages, segments), not its anchor.
    pub(crate) fn block_files(&self) -> Vec<String> {
        let prefix = format!("mproc.q{:016x}-", self.inner.region.id());
        let mut files = crate::sys::shm::list_named(&prefix);
        files.retain(|n| !n.ends_with("-anchor"));
        files
    }
}

#[cfg(test)]
mod tests;
