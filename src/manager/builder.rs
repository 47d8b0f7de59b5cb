//! [`ManagerBuilder`]: the initial size and the hard limit of a manager's heap.

use super::heap::{JournaledHeap, HEAP_LIMIT};
use super::Manager;
use crate::error::Result;
use crate::sys::shm;

/// The size a heap starts at unless told otherwise: small enough to cost nothing (pages are allocated
/// when first written), large enough that a few small containers never grow it.
const DEFAULT_INITIAL: usize = 1 << 20;

/// Sizes for a new [`Manager`]: where its heap starts and how far it may grow. Made by
/// [`Manager::builder`].
///
/// Guidance: most programs need neither knob. The heap doubles when full (each growth costs about
/// the first touch of the new pages, and happens a logarithmic number of times), so the initial size
/// matters only to skip the first few growths when you know the data is large. The limit is what
/// protects the machine: by default half its memory, the size tmpfs gives `/dev/shm`; set
/// [`max_size`](Self::max_size) to the most this manager should ever take, and allocations beyond it
/// fail with [`Error::OutOfMemory`](crate::Error::OutOfMemory), leaving the containers as they were.
/// A manager whose `max_size` equals its `initial_size` never grows.
///
/// # Examples
/// ```
/// let m = mproc::Manager::builder()
///     .initial_size(8 << 20) // expect a lot of data
///     .max_size(256 << 20) // but never more than 256 MiB
///     .anonymous()?;
/// assert_eq!(m.size()?, 8 << 20);
/// assert_eq!(m.max_size()?, 256 << 20);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ManagerBuilder {
    initial: Option<usize>,
    max: Option<usize>,
}

impl ManagerBuilder {
    /// The size the heap starts at (default 1 MiB; at least about 37 KiB, for the heap's journal and
    /// directory; at most the limit).
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::builder().initial_size(4 << 20).anonymous()?;
    /// assert_eq!(m.size()?, 4 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn initial_size(mut self, bytes: usize) -> Self {
        self.initial = Some(bytes);
        self
    }

    /// The hard limit the heap may grow to (default: half the machine's physical memory; at most
    /// 1 TiB). Allocations that would pass it fail with
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory).
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::builder().max_size(1 << 20).anonymous()?;
    /// let l = m.list::<Vec<u8>>("big")?;
    /// let r = (0..100).try_for_each(|_| l.push(&vec![0u8; 100_000]));
    /// assert!(matches!(r, Err(mproc::Error::OutOfMemory { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max = Some(bytes);
        self
    }

    /// (initial size, limit), reconciled: the minimum first, then the limit, then the initial size
    /// within it. An explicit limit below the initial size wins over the default initial size, and
    /// an explicit initial size above the default limit raises it.
    fn sizes(&self) -> (usize, u64) {
        let min = JournaledHeap::min_size();
        let limit = match self.max {
            Some(max) => (max as u64).clamp(min as u64, HEAP_LIMIT),
            None => shm::default_size_limit()
                .max(self.initial.unwrap_or(0) as u64)
                .clamp(min as u64, HEAP_LIMIT),
        };
        let initial = self.initial.unwrap_or(DEFAULT_INITIAL).max(min);
        let initial = usize::try_from((initial as u64).min(limit)).unwrap_or(min);
        (initial, limit)
    }

    /// An anonymous manager with these sizes (see [`Manager::new`]).
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) if shared memory cannot be created.
    pub fn anonymous(&self) -> Result<Manager> {
        let (initial, limit) = self.sizes();
        Manager::create_in(None, initial, limit, false)
    }

    /// A manager under `name` with these sizes (see [`Manager::create`]).
    ///
    /// # Examples
    /// ```
    /// # let name = format!("doc-mgr-builder-{}", std::process::id());
    /// let m = mproc::Manager::builder().max_size(8 << 20).create(&name)?;
    /// assert_eq!(mproc::Manager::open(&name)?.max_size()?, 8 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists),
    /// [`Error::InvalidName`](crate::Error::InvalidName), [`Error::Os`](crate::Error::Os).
    pub fn create(&self, name: &str) -> Result<Manager> {
        let (initial, limit) = self.sizes();
        Manager::create_in(Some(name), initial, limit, false)
    }

    /// Opens the manager `name`, or creates a persistent one with these sizes (see
    /// [`Manager::open_or_create`]; an existing manager keeps its own sizes).
    ///
    /// # Errors
    /// As [`Manager::open`] and [`ManagerBuilder::create`].
    pub fn open_or_create(&self, name: &str) -> Result<Manager> {
        let (initial, limit) = self.sizes();
        crate::region::create_or_open(
            name,
            || Manager::create_in(Some(name), initial, limit, true),
            || Manager::open(name),
        )
    }
}
