//! Message passing between processes through rings in shared memory: [`Queue`], [`SimpleQueue`],
//! [`JoinableQueue`] and [`Pipe`], after Python's names. No kernel pipe is in the data path: a message is
//! copied into a slot of a shared ring and out of it, and a blocked side sleeps on a futex that is only
//! woken when somebody sleeps.
//!
//! The ring's algorithm, its orderings and its guarantees when a producer or consumer dies mid-message
//! are documented in `src/queue/ring.rs`. In short: a consumer never sees a half-written message; a
//! message whose consumer is killed inside `get` is lost (at most once); nothing is delivered twice.

mod joinable;
mod pipe;
pub(crate) mod ring;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{Codec, Serde};
use crate::error::{Error, Result};
use crate::region::{layout_hash, Layout, Region, RegionHandle, DEFAULT_OPEN_TIMEOUT};
pub use joinable::{JoinableQueue, SimpleQueue};
pub use pipe::{Connection, Pipe};
use ring::{Geometry, Ring, MAX_CAPACITY, MAX_SLOT_SIZE};

struct Inner {
    ring: Ring,
    // Declared after `ring`, whose pointer it keeps valid.
    region: Region,
}

/// A bounded multi-producer, multi-consumer queue between processes, like Python's
/// `multiprocessing.Queue`.
///
/// Capacity is fixed at creation, in messages, with a maximum encoded message size; a message larger
/// than that is refused by `put` with [`Error::MessageTooLarge`]. Values travel through a [`Codec`]:
/// [`Serde`] (postcard) by default, or [`Raw`](crate::codec::Raw) for `Pod` types, which copies their
/// bytes with no serialization.
///
/// A put into a non-full queue and a get from a non-empty one are atomics and a copy, no system call.
/// `len` is a snapshot that may be stale by the time it returns.
///
/// # Examples
/// ```
/// let q: mproc::Queue<String> = mproc::Queue::new(16)?;
/// q.put(&"hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// assert!(matches!(q.try_get(), Err(mproc::Error::Empty)));
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
            hash: layout_hash(name, ring::LAYOUT_REVISION, 64),
            size,
        }
    }

    #[track_caller]
    fn geometry(capacity: usize, max_message: usize) -> Geometry {
        assert!(
            (1..=MAX_CAPACITY as usize).contains(&capacity),
            "queue capacity must be in 1..={MAX_CAPACITY}, not {capacity}"
        );
        assert!(
            max_message <= MAX_SLOT_SIZE as usize,
            "max message size must be at most {MAX_SLOT_SIZE} bytes"
        );
        Geometry {
            capacity: capacity as u32,
            slot_size: max_message as u32,
        }
    }

    fn create_in(name: Option<&str>, geo: Geometry) -> Result<Self> {
        let size = geo.payload_size().ok_or(Error::SizeOverflow {
            what: "the queue (capacity × slot size)".into(),
        })?;
        let region = Region::create_with(Self::layout(Some(size)), name, false, |r| {
            Ring::init(r, geo)
        })?;
        Self::wrap(region)
    }

    fn wrap(region: Region) -> Result<Self> {
        let ring = Ring::attach(&region)?;
        Ok(Queue {
            inner: Arc::new(Inner { ring, region }),
            _t: PhantomData,
            _c: PhantomData,
        })
    }

    /// An anonymous queue of `capacity` messages of at most the codec's default size (1 KiB encoded for
    /// serde, `size_of::<T>()` for raw).
    ///
    /// # Panics
    /// If `capacity` is 0 or above 2^28.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn new(capacity: usize) -> Result<Self> {
        Self::with_max_message(capacity, C::default_max_size())
    }

    /// An anonymous queue of `capacity` messages of at most `max_message` encoded bytes. It takes about
    /// `capacity × (max_message + 16)` bytes of shared memory.
    ///
    /// # Panics
    /// If `capacity` is 0 or above 2^28, or `max_message` above 1 GiB.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    #[track_caller]
    pub fn with_max_message(capacity: usize, max_message: usize) -> Result<Self> {
        Self::create_in(None, Self::geometry(capacity, max_message))
    }

    /// A queue under `name`, openable by other processes (removed when this handle is dropped here).
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

    /// Opens the queue `name`; its geometry is read from the region and checked against its size.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] if it carries another message type or codec, or
    /// another validation error.
    pub fn open(name: &str) -> Result<Self> {
        Self::wrap(Region::open_with(
            name,
            Self::layout(None),
            DEFAULT_OPEN_TIMEOUT,
        )?)
    }

    /// A handle another process can re-attach with [`Queue::from_handle`].
    pub fn handle(&self) -> RegionHandle {
        self.inner.region.handle()
    }

    /// Re-attaches to a queue from its handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`], or a validation error.
    pub fn from_handle(handle: &RegionHandle) -> Result<Self> {
        Self::wrap(Region::open_handle(handle, Self::layout(None))?)
    }

    fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// Appends a message, waiting while the queue is full.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::MessageTooLarge`], [`Error::Encode`].
    pub fn put(&self, value: &T) -> Result<()> {
        self.put_until(value, None)
    }

    /// Appends a message, waiting at most `timeout` for space.
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`Queue::put`].
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.put_until(value, Some(Instant::now() + timeout))
    }

    /// Appends a message only if there is space now.
    ///
    /// # Errors
    /// [`Error::Full`], and as [`Queue::put`].
    pub fn try_put(&self, value: &T) -> Result<()> {
        match self.put_until(value, Some(Instant::now())) {
            Err(Error::Timeout) => Err(Error::Full),
            r => r,
        }
    }

    pub(crate) fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        C::with_bytes(value, |bytes| self.ring().push(bytes, deadline))?
    }

    /// Takes the next message, waiting while the queue is empty.
    ///
    /// # Errors
    /// [`Error::Closed`] once the queue is closed and drained; [`Error::Decode`] if the message is not a
    /// `T`; [`Error::Corrupted`] if its slot was damaged. The message is consumed either way.
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// Takes the next message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Some(Instant::now() + timeout))
    }

    /// Takes the next message if one is there now.
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
        self.ring().pop(deadline, C::decode)?
    }

    /// Messages in the queue (a snapshot).
    pub fn len(&self) -> usize {
        self.ring().len()
    }

    /// Whether the queue looked empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity in messages.
    pub fn capacity(&self) -> usize {
        self.ring().geometry().capacity as usize
    }

    /// The largest encoded message accepted.
    pub fn max_message_size(&self) -> usize {
        self.ring().geometry().slot_size as usize
    }

    /// Closes the queue for everyone: puts fail with [`Error::Closed`]; gets drain what is left, then fail
    /// with [`Error::Closed`]. Wakes every blocked caller.
    pub fn close(&self) {
        self.ring().close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.ring().is_closed()
    }

    pub(crate) fn wait_nonempty(&self, deadline: Option<Instant>) -> bool {
        self.ring().wait_nonempty(deadline)
    }
}

impl<T, C: Codec<T>> std::fmt::Debug for Queue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("region", &self.handle())
            .field("capacity", &self.capacity())
            .field("max_message_size", &self.max_message_size())
            .finish()
    }
}

crate::region::shared::serde_as_handle!([T, C: Codec<T>] Queue<T, C>);

#[cfg(test)]
mod tests;
