//! Shared memory regions: a validated header followed by a payload, mapped in every process that uses it.
//!
//! A region is either
//! - **anonymous**: a sealed memfd. It is inherited across `fork`, handed to other processes as a
//!   [`RegionHandle`] (pid + descriptor number, re-opened through `/proc/<pid>/fd/<fd>` while that process
//!   still holds it), and freed by the kernel when the last mapping and descriptor are gone. Its size is
//!   sealed (`F_SEAL_SHRINK | F_SEAL_GROW`), so no process can truncate it under another's mapping, and
//!   opening checks it: a handle naming anything but a size-sealed memfd of this user with mode 0600
//!   (an unsealed memfd, a tmpfs file, a device, a pipe) is refused with [`Error::NotSealed`] or another
//!   typed error before it is mapped, so a forged handle cannot lead to SIGBUS.
//! - **named**: a `/dev/shm/mproc.<name>` file of mode 0600, openable by any process of the same user
//!   that knows the name. It is made unnamed (`O_TMPFILE`), initialised and published, and only then
//!   linked under its name, which fails with [`Error::AlreadyExists`] if the name is taken (the same
//!   exclusivity as `O_EXCL`): no process ever finds a named region half-made. Its creator unlinks it
//!   when its handle is dropped, unless it was made persistent; [`cleanup_stale`] unlinks the
//!   non-persistent regions whose creator it proved dead (see its docs for the exact rule, and for what
//!   happens to processes still using such a region). Named files cannot be sealed: a process of
//!   the same user that truncates one can make other processes fault on access. We do not claim to
//!   defend named regions against that; use anonymous regions where it matters.
//!
//! Opening always validates the header (magic, format version, the payload's type and size, the creator's
//! identity) and fails with a typed [`Error`] naming what differs. Nothing read from the header is trusted before it is checked against the real size of the
//! segment, and nothing is re-read after the open.
//!
//! # Names carry no nonce
//!
//! A name is the caller's own, used verbatim: processes meet by knowing it, which a nonce added by this
//! crate would defeat. Anyone who can guess a name can *squat* it, but that costs availability only:
//! - another user's file under the name is never used: creating gets [`Error::AlreadyExists`], opening
//!   gets [`Error::NotPrivate`] (owner and mode are checked), symlinks are never followed, and the
//!   sticky `/dev/shm` keeps others from removing or replacing our files;
//! - a process of the same user can squat as well, but it can also write the region directly: such
//!   peers are not a boundary named regions defend (see the crate's trust model).
//!
//! Callers who need unguessable names add their own random part and hand the name to the processes that
//! must meet; anonymous regions have no name at all. Every region carries a random 64-bit id in its
//! header, and a handle opens only the region with that id.
//!
//! A name is 1 to 200 bytes of ASCII letters, digits, `.`, `_` and `-`, not starting with a dot.
//! Names of the form `q<16 lower-case hex digits>-…` are reserved: they are the blocks of queues
//! (spilled messages, segments, anchors), which the janitor removes once nobody is attached to the
//! queue, so every public constructor refuses them with [`Error::InvalidName`].
//!
//! # Decoding handles from untrusted bytes
//!
//! A handle can come from any peer (a queue message, a manager entry), so opening one costs bounded
//! time and resources: it never waits for a region to be published (see `HANDLE_OPEN_WAIT`), opens only
//! regular files (an `O_PATH` open and `fstat` come first, so a device or FIFO is never opened for real),
//! and maps, without touching it (unless the caller asked for `MAP_POPULATE`), only the header and the
//! payload the header declares, never the rest of a file whose size its maker chose. The payloads of
//! all the regions a process opened (rather than made) take at most 32 TiB of its address space at
//! once: an open past that is [`Error::OutOfMemory`], and nothing of it is mapped.
//!
//! # Pid namespaces
//!
//! The header records the creator's pid, start time *and pid namespace*. A pid means something only in
//! the namespace that wrote it, so a creator of another namespace (a container sharing `/dev/shm`) is
//! never judged dead from here: an opener waits for it up to its bound, then reports
//! [`Error::NotReady`], and the janitor never removes its segments.
//!
//! # Examples
//! Two handles on one named region see each other's writes:
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let name = format!("doc-region-{}", std::process::id());
//! let a = mproc::Region::create(&name, 8, false)?;
//! let b = mproc::Region::open(&name)?;
//! // SAFETY: the payload is 8 bytes, 8-aligned, and touched only through this atomic.
//! let word = |r: &mproc::Region| unsafe { &*(r.as_ptr() as *const AtomicU64) };
//! word(&a).store(42, Ordering::Release);
//! assert_eq!(word(&b).load(Ordering::Acquire), 42);
//! # Ok::<(), mproc::Error>(())
//! ```

mod header;
pub(crate) mod janitor;
pub(crate) mod shared;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::{futex, proc, shm};
pub(crate) use header::layout_hash;
pub(crate) use header::PAYLOAD_OFFSET;
use header::{Header, HeaderSnapshot, FLAG_PERSISTENT, FORMAT_VERSION, MAGIC, READY};
pub use janitor::cleanup_stale;

/// Prefix of every `/dev/shm` entry this crate creates.
pub(crate) const SHM_PREFIX: &str = "mproc.";
/// Prefix (after [`SHM_PREFIX`]) of the names a process moves a name to just before it removes it
/// ([`aside_name`]). A user's name never starts with a dot, so no region is ever named like this.
pub(crate) const ASIDE_PREFIX: &str = ".aside-";
/// How long an opener by name waits for a named region's creator to publish it.
///
/// Opening from a [`RegionHandle`] never waits: a handle names a region that is already published.
///
/// # Examples
/// ```
/// assert_eq!(mproc::region::DEFAULT_OPEN_TIMEOUT, std::time::Duration::from_secs(10));
/// ```
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a region from a [`RegionHandle`] waits for it to be published: not at all.
///
/// A handle is made only from a `Region`, and a `Region` exists only once published (creation returns
/// after storing the ready flag, an open after seeing it), so the region a genuine handle names is
/// already published. An unpublished segment behind a handle is a forgery, or a replacement under the
/// same name whose id differs anyway. Waiting for it would only let whoever wrote the handle's bytes
/// stall the decoder: a forged `Vec<Lock>` of n named handles used to cost n × 10 s (review R5). So
/// decoding a handle costs a bounded number of system calls (open, fstat, fcntl, mmap) and no wait.
const HANDLE_OPEN_WAIT: Duration = Duration::ZERO;
const MAX_NAME_LEN: usize = 200;

/// Opens the named object, or creates it if the name is free: exactly one of several concurrent callers
/// creates, the others open (and wait for it to be published). A creator may unlink the name between our
/// failed create and our open, so this retries a few times before reporting `NotFound`.
pub(crate) fn create_or_open<T>(
    name: &str,
    mut create: impl FnMut() -> Result<T>,
    mut open: impl FnMut() -> Result<T>,
) -> Result<T> {
    for _ in 0..8 {
        match create() {
            Err(Error::AlreadyExists { .. }) => {}
            other => return other,
        }
        match open() {
            Err(Error::NotFound { .. }) => std::thread::sleep(Duration::from_millis(1)),
            other => return other,
        }
    }
    Err(Error::NotFound {
        name: name.to_owned(),
    })
}

/// What a region is expected to hold: checked against the header on every open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Human-readable type, for error messages.
    pub type_name: &'static str,
    /// [`layout_hash`] of the payload type.
    pub hash: u64,
    /// Exact payload size, or `None` when the opener learns it from the header (variable-length objects
    /// such as arrays check it themselves).
    pub size: Option<usize>,
}

impl Layout {
    /// The layout of a region of untyped bytes.
    pub(crate) fn bytes(size: Option<usize>) -> Self {
        Layout {
            type_name: "bytes",
            hash: layout_hash("bytes", 1, 1),
            size,
        }
    }
}

/// Types that may be viewed in place inside a region.
///
/// # Safety
/// Every bit pattern must be a valid value of the type, it must contain no references or pointers, and
/// all mutation through a shared reference must go through atomics or `UnsafeCell` — another process may
/// write any bytes into it at any time.
pub(crate) unsafe trait ShmSafe {}

// SAFETY: atomics of integers accept any bit pattern and are mutated only atomically.
unsafe impl ShmSafe for AtomicU32 {}
// SAFETY: as above.
unsafe impl ShmSafe for AtomicU64 {}

#[derive(Debug)]
enum Naming {
    Anonymous,
    Named {
        name: String,
        shm_name: String,
        /// The pid whose drop of this handle unlinks the name (the creator, unless persistent). A forked
        /// child inherits the handle but has another pid, so it never unlinks its parent's region.
        unlink_by: Option<u32>,
    },
}

/// A serializable reference to a region, enough for another process of the same user to open it.
///
/// Handles are how shared objects travel to a spawned process: they serialize as this, and re-attach on
/// the other side with full validation. A handle to an anonymous region stays valid while some process
/// that serialized it still holds the region.
///
/// # Examples
/// A handle is plain data: send it any way you like, then open it on the other side.
/// ```
/// let region = mproc::Region::anonymous(64)?;
/// let handle = region.handle();
/// let bytes = postcard::to_allocvec(&handle).expect("a handle serializes");
/// let back: mproc::RegionHandle = postcard::from_bytes(&bytes).expect("and deserializes");
/// let again = mproc::Region::from_handle(&back)?;
/// assert_eq!(again.len(), 64);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionHandle {
    id: u64,
    source: Source,
}

impl RegionHandle {
    /// The region id the handle names (equal ids mean the same region).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the handle names an anonymous region (a sealed memfd of a process, whose size nobody
    /// can change once it is validated), not a named file in `/dev/shm` (which anyone with access may
    /// truncate under a mapping: `SIGBUS`).
    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self.source, Source::Fd { .. })
    }

    /// The process whose descriptor an anonymous region's handle names (`None` for a named one).
    pub(crate) fn owner_pid(&self) -> Option<u32> {
        match self.source {
            Source::Fd { pid, .. } => Some(pid),
            Source::Named(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Source {
    Named(String),
    Fd { pid: u32, fd: i32 },
}

/// A mapped shared-memory segment with a validated header. See the [module docs](self).
///
/// Most programs never touch a `Region`: the typed objects (`Value`, `SharedArray`, `Queue`, …) are
/// built on it. Use it for a layout of your own, through atomics.
///
/// # Examples
/// ```
/// let r = mproc::Region::anonymous(4096)?;
/// assert_eq!((r.len(), r.name()), (4096, None));
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Region {
    map: shm::Mapping,
    file: File,
    header: HeaderSnapshot,
    naming: Naming,
    /// See [`Region::file_key`].
    file_key: (u64, u64),
    /// The payload bytes this region counts in [`OPENED_BYTES`] (an open's; 0 for a region we made).
    opened: u64,
}

/// The most payload bytes of regions opened (not created) by this process mapped at once: address
/// space, nothing populated. A region's size is its maker's choice, and a sparse file of any size
/// costs nothing to make: without this bound (found by review), a message naming a few forged
/// handles to regions of 16 TiB (a `Vec<Array<u8>>`, queues) took the whole address space (128 TiB
/// on x86-64), and this process's own allocations then failed (an abort). A quarter of it leaves room
/// for everything else; honest regions this large would need a machine with that much memory.
const OPENED_MAX: u64 = 32 << 40;

/// Payload bytes of the regions this process opened and still maps (see [`OPENED_MAX`]).
static OPENED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts `bytes` more opened payload in [`OPENED_BYTES`], within [`OPENED_MAX`].
///
/// # Errors
/// [`Error::OutOfMemory`] past it (nothing counted).
fn count_opened(bytes: u64) -> Result<()> {
    OPENED_BYTES
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
            now.checked_add(bytes).filter(|&n| n <= OPENED_MAX)
        })
        .map(drop)
        .map_err(|now| Error::OutOfMemory {
            requested: bytes,
            available: OPENED_MAX.saturating_sub(now),
        })
}

/// A check of a region's name: [`validate_name`] for users' names, [`validate_block_name`] for blocks'.
type NameCheck = fn(&str) -> Result<()>;

fn validate_name(name: &str) -> Result<()> {
    validate_syntax(name)?;
    // Found by review: the janitor and a queue's last user remove `q<id>-…` entries as the blocks of
    // queue `id` once nobody is attached to it, so a user's region of such a name could be swept
    // under its user (documented as reserved, and now refused).
    if janitor::is_group_name(name) {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "names of the form q<16 hex digits>-… are reserved for queues' blocks".into(),
        });
    }
    Ok(())
}

/// As [`validate_name`], for the name of a queue's block (made by `queue::spill::Blocks`): the
/// reserved form is the point.
fn validate_block_name(name: &str) -> Result<()> {
    validate_syntax(name)?;
    if !janitor::is_group_name(name) {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "not the name of a queue's block".into(),
        });
    }
    Ok(())
}

fn validate_syntax(name: &str) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn shm_name(name: &str) -> String {
    format!("{SHM_PREFIX}{name}")
}

/// A fresh `/dev/shm` name for [`shm::unlink_named_if_same`] to move a name to before removing it:
/// `mproc..aside-<pid namespace, hex>-<pid>-<start time>-<nonce>`, naming its maker so that the
/// janitor can remove one left by a maker killed half-way (`janitor::reclaim_aside`).
pub(crate) fn aside_name() -> String {
    let me = proc::pid();
    format!(
        "{SHM_PREFIX}{ASIDE_PREFIX}{:x}-{me}-{}-{:016x}",
        own_pid_namespace(),
        proc::start_time(me).unwrap_or(0),
        proc::random_u64()
    )
}

impl Region {
    // ---------------------------------------------------------------- public, untyped bytes

    /// Creates an anonymous region of `size` zeroed bytes.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] if `size` plus the header exceeds `isize::MAX` bytes; [`Error::Os`] if
    /// the kernel refuses the memfd or the mapping.
    ///
    /// # Examples
    /// ```
    /// let r = mproc::Region::anonymous(4096)?;
    /// assert_eq!(r.len(), 4096);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn anonymous(size: usize) -> Result<Region> {
        Region::create_with(Layout::bytes(Some(size)), None, false, |_| Ok(()))
    }

    /// Creates a named region of `size` zeroed bytes, failing if the name is taken. The region is unlinked
    /// when this handle is dropped, unless `persistent` is set (then [`Region::unlink`] removes it).
    /// The name is used as given, with no nonce added: see "Names carry no nonce" in the
    /// [module docs](self).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::SizeOverflow`] (as for
    /// [`Region::anonymous`]), [`Error::OutOfMemory`] if `/dev/shm` cannot hold it, or [`Error::Os`].
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-create-{}", std::process::id());
    /// let r = mproc::Region::create(&name, 1024, false)?;
    /// assert_eq!(r.name(), Some(name.as_str()));
    /// assert!(matches!(
    ///     mproc::Region::create(&name, 1024, false),
    ///     Err(mproc::Error::AlreadyExists { .. })
    /// ));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn create(name: &str, size: usize, persistent: bool) -> Result<Region> {
        Region::create_with(
            Layout::bytes(Some(size)),
            Some(name),
            persistent,
            |_| Ok(()),
        )
    }

    /// Opens a named region of untyped bytes created by [`Region::create`].
    ///
    /// # Errors
    /// [`Error::NotFound`], a validation error ([`Error::TypeMismatch`], [`Error::Truncated`], …), or
    /// [`Error::NotReady`] if the creator did not publish it within [`DEFAULT_OPEN_TIMEOUT`] (at once if
    /// the creator is proved dead; a creator of another pid namespace is waited for).
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-open-{}", std::process::id());
    /// let created = mproc::Region::create(&name, 256, false)?;
    /// let opened = mproc::Region::open(&name)?;
    /// assert_eq!(opened.len(), 256);
    /// assert_eq!(opened.creator_pid(), std::process::id());
    /// drop((opened, created)); // the creator's drop unlinks the name
    /// assert!(matches!(mproc::Region::open(&name), Err(mproc::Error::NotFound { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Region> {
        Region::open_with(name, Layout::bytes(None), DEFAULT_OPEN_TIMEOUT)
    }

    /// Removes the name of a region. Processes that have it mapped keep using it.
    ///
    /// # Errors
    /// [`Error::NotFound`] or [`Error::Os`].
    ///
    /// # Examples
    /// A persistent region outlives its handle until it is unlinked:
    /// ```
    /// let name = format!("doc-unlink-{}", std::process::id());
    /// drop(mproc::Region::create(&name, 64, true)?);
    /// assert!(mproc::Region::open(&name)?.is_persistent());
    /// mproc::Region::unlink(&name)?;
    /// assert!(matches!(mproc::Region::open(&name), Err(mproc::Error::NotFound { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn unlink(name: &str) -> Result<()> {
        validate_name(name)?;
        shm::unlink_named(&shm_name(name), name)
    }

    /// As [`Region::unlink`], for a queue's block (`queue::spill::Blocks`).
    pub(crate) fn unlink_block(name: &str) -> Result<()> {
        validate_block_name(name)?;
        shm::unlink_named(&shm_name(name), name)
    }

    /// The payload bytes, as a raw pointer. Other processes may write them at any time: read and write
    /// through atomics or volatile accesses, and validate what you read.
    ///
    /// The payload starts 64-byte aligned, and the pointer is valid for [`len`](Region::len) bytes while
    /// the `Region` lives.
    ///
    /// # Examples
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// let r = mproc::Region::anonymous(4)?;
    /// assert_eq!(r.as_ptr() as usize % 64, 0);
    /// // SAFETY: 4 aligned bytes of the live region, accessed only atomically.
    /// let n = unsafe { &*(r.as_ptr() as *const AtomicU32) };
    /// n.fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(n.load(Ordering::Relaxed), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        // PAYLOAD_OFFSET < the mapping length, checked at creation and open.
        self.map.as_ptr().wrapping_add(PAYLOAD_OFFSET)
    }

    /// The payload size in bytes.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Region::anonymous(100)?.len(), 100);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.header.payload_size as usize
    }

    /// Whether payload bytes `[offset, offset + len)` are memory the file really holds, not holes of
    /// a sparse file. A peer can make a named file of any size for free by truncating it larger, and
    /// write a length word claiming all of it; a reader that copies a message must not size its
    /// allocation by such bytes (they read as zeroes for as long as one cares to copy them). Every
    /// byte an honest writer publishes was written, so its ranges pass.
    ///
    /// # Errors
    /// [`Error::Os`] if the file cannot be asked.
    pub(crate) fn holds_memory(&self, offset: usize, len: usize) -> Result<bool> {
        let start = (PAYLOAD_OFFSET as u64).saturating_add(offset as u64);
        shm::is_all_data(&self.file, start, len as u64)
    }

    /// As [`holds_memory`](Self::holds_memory), at a cost bounded by `len`: first asked of the page
    /// cache through our mapping (`mincore`, no page faulted in), and only for a range with pages
    /// that are not in memory (holes, or pages swapped out) of the file's extents, whose answer costs
    /// a walk from `offset` to the file's first hole after it, however far.
    ///
    /// # Errors
    /// As [`holds_memory`](Self::holds_memory).
    pub(crate) fn holds_memory_bounded(&self, offset: usize, len: usize) -> Result<bool> {
        let in_map = PAYLOAD_OFFSET.checked_add(offset);
        if in_map.is_some_and(|at| self.map.resident(at, len)) {
            return Ok(true);
        }
        self.holds_memory(offset, len)
    }

    /// Whether the payload is empty.
    ///
    /// # Examples
    /// ```
    /// assert!(!mproc::Region::anonymous(1)?.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user-given name, for a named region.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Region::anonymous(8)?.name(), None);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn name(&self) -> Option<&str> {
        match &self.naming {
            Naming::Named { name, .. } => Some(name),
            Naming::Anonymous => None,
        }
    }

    /// The random id in the header: equal ids mean the same region.
    pub(crate) fn id(&self) -> u64 {
        self.header.region_id
    }

    /// The device and inode of the file the region maps, read once when it was made or opened: who the
    /// region is, whatever its header says. Unlike [`Region::id`] (shared memory, which any writer of
    /// the file can rewrite between two opens), no peer can give one file two keys, nor two files one.
    /// `sync` tells locks apart by it (`Value`, `Array`, `Condition`).
    pub(crate) fn file_key(&self) -> (u64, u64) {
        self.file_key
    }

    /// Whether `self` and `other` map the same file (device and inode), whatever their headers say:
    /// a header is shared memory that any process of the user can rewrite, the inode is not.
    pub(crate) fn same_file(&self, other: &Region) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            // Cannot tell: say "same", so that the caller refuses rather than aliases.
            _ => true,
        }
    }

    /// The pid of the process that created the region.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Region::anonymous(8)?.creator_pid(), std::process::id());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn creator_pid(&self) -> u32 {
        self.header.creator_pid
    }

    /// A handle another process can open this region with. See [`RegionHandle`].
    ///
    /// # Examples
    /// ```
    /// let r = mproc::Region::anonymous(8)?;
    /// assert_eq!(r.handle(), r.handle()); // the same region, the same handle
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn handle(&self) -> RegionHandle {
        let source = match &self.naming {
            Naming::Named { name, .. } => Source::Named(name.clone()),
            Naming::Anonymous => Source::Fd {
                pid: proc::pid(),
                fd: self.file.as_raw_fd(),
            },
        };
        RegionHandle {
            id: self.header.region_id,
            source,
        }
    }

    /// Opens an untyped region from a handle made by [`Region::handle`] in any process.
    ///
    /// The handle may come from an untrusted peer: opening it never waits and never opens anything but a
    /// regular file (see "Decoding handles from untrusted bytes" in the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::StaleHandle`] if the region is gone or was replaced; [`Error::NotSealed`] if an
    /// anonymous-region handle names a file that is not a size-sealed memfd; [`Error::NotReady`] at once
    /// if the region is not published; or another validation error.
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-from-handle-{}", std::process::id());
    /// let r = mproc::Region::create(&name, 32, false)?;
    /// let same = mproc::Region::from_handle(&r.handle())?;
    /// assert_eq!(same.name(), Some(name.as_str()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_handle(handle: &RegionHandle) -> Result<Region> {
        Region::open_handle(handle, Layout::bytes(None))
    }

    // ---------------------------------------------------------------- crate API for typed objects

    /// Creates a region for `layout` (whose `size` must be set), runs `init` on it, then publishes it.
    pub(crate) fn create_with(
        layout: Layout,
        name: Option<&str>,
        persistent: bool,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        Region::create_sealed(
            layout,
            name.map(|n| (n, validate_name as NameCheck)),
            persistent,
            false,
            init,
        )
    }

    /// As [`Region::create_with`], persistent, for a queue's block (`queue::spill::Blocks`): its name
    /// is of the form reserved for blocks, which every other creation refuses.
    pub(crate) fn create_block(
        layout: Layout,
        name: &str,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        Region::create_sealed(
            layout,
            Some((name, validate_block_name as NameCheck)),
            true,
            false,
            init,
        )
    }

    /// As [`Region::create_with`], but an anonymous region's memfd is sealed against shrinking only, so
    /// its owner may extend the file past the payload (the manager's growing heap). Open it from a handle
    /// with [`Region::open_handle_growable`].
    pub(crate) fn create_growable(
        layout: Layout,
        name: Option<&str>,
        persistent: bool,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        Region::create_sealed(
            layout,
            name.map(|n| (n, validate_name as NameCheck)),
            persistent,
            true,
            init,
        )
    }

    fn create_sealed(
        layout: Layout,
        named: Option<(&str, NameCheck)>,
        persistent: bool,
        growable: bool,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        let payload_size = layout
            .size
            .expect("creating a region needs its payload size");
        // No mapping (nor file) can be larger than `isize::MAX` bytes. A size past it is the caller's
        // argument overflowing, not a mismatch with anything: it was reported as `SizeMismatch`
        // "expected 18446744073709551615 bytes, found 18446744073709551615" (found by review), or as
        // whatever the kernel said of the file or the mapping.
        let total = PAYLOAD_OFFSET
            .checked_add(payload_size)
            .filter(|&t| isize::try_from(t).is_ok())
            .ok_or(Error::SizeOverflow {
                what: "the region (its header and payload)".into(),
            })?;
        // A named region is made unnamed and given its name only once published (below), so no
        // process, the janitor included, ever sees a named region half-made, and a failure part-way
        // leaves no name behind.
        let name = named.map(|(n, _)| n);
        let file = match named {
            None => shm::create_memfd("mproc")?,
            Some((name, check)) => {
                check(name)?;
                shm::create_unnamed_shm()?
            }
        };
        if name.is_some() {
            // A /dev/shm file is limited by its tmpfs: allocate every page now, so that a full
            // /dev/shm is `OutOfMemory` here rather than a SIGBUS at the first touch of a page, in
            // this process or in any opener (review 2026-12). A memfd has no such limit.
            shm::allocate(&file, 0, total as u64)?;
        } else {
            file.set_len(total as u64)
                .map_err(|e| Error::os("ftruncate", e))?;
        }
        if name.is_none() {
            if growable {
                shm::seal_shrink(&file)?;
            } else {
                shm::seal_size(&file)?;
            }
        }
        let map = shm::Mapping::new(&file, total, false)?;
        let file_key = shm::file_key(&file)?;
        let me = proc::pid();
        let header = HeaderSnapshot {
            magic: MAGIC,
            version: FORMAT_VERSION,
            header_size: std::mem::size_of::<Header>() as u32,
            type_hash: layout.hash,
            payload_size: payload_size as u64,
            region_id: proc::random_u64(),
            creator_pid: me,
            flags: if persistent { FLAG_PERSISTENT } else { 0 },
            creator_start: proc::start_time(me).unwrap_or(0),
            creator_pidns: own_pid_namespace(),
        };
        let naming = match name {
            None => Naming::Anonymous,
            Some(name) => Naming::Named {
                name: name.to_owned(),
                shm_name: shm_name(name),
                unlink_by: (!persistent).then_some(me),
            },
        };
        let mut region = Region {
            map,
            file,
            header,
            naming,
            file_key,
            opened: 0,
        };
        let h = region.raw_header();
        h.write(&header);
        init(&region)?;
        // Publish: everything above happens-before any opener's Acquire load of `ready`.
        h.ready.store(READY, Ordering::Release);
        futex::wake_all(&h.ready);
        if let Naming::Named { name, shm_name, .. } = &region.naming {
            if let Err(e) = shm::link_named(&region.file, shm_name, name) {
                // The name belongs to somebody else (AlreadyExists): our drop must not touch it.
                region.naming = Naming::Anonymous;
                return Err(e);
            }
        }
        Ok(region)
    }

    /// Opens the named region `name`, waiting up to `timeout` for its creator to publish it.
    pub(crate) fn open_with(name: &str, layout: Layout, timeout: Duration) -> Result<Region> {
        validate_name(name)?;
        Region::open_checked(name, layout, timeout)
    }

    /// As [`Region::open_with`] without waiting, for a queue's block (`queue::spill::Blocks`).
    pub(crate) fn open_block(name: &str, layout: Layout) -> Result<Region> {
        validate_block_name(name)?;
        Region::open_checked(name, layout, Duration::ZERO)
    }

    /// [`Region::open_with`] once `name` has passed the check its caller owes it.
    fn open_checked(name: &str, layout: Layout, timeout: Duration) -> Result<Region> {
        Region::open_checked_within(name, layout, timeout, u64::MAX)
    }

    /// [`Region::open_checked`], refusing a payload above `max_payload` bytes before mapping it.
    fn open_checked_within(
        name: &str,
        layout: Layout,
        timeout: Duration,
        max_payload: u64,
    ) -> Result<Region> {
        let shm_name = shm_name(name);
        // A timeout past the clock's range waits as long as a year does (`Duration::MAX` panicked).
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let file = shm::open_named(&shm_name, name)?;
        let size = check_private(&file, name)?.size;
        // A named file is linked only once made and sized (`create_sealed`: O_TMPFILE, then link), so a
        // short one is never one still being made: refused at once. Before (found by review), the
        // opener waited the whole timeout (10 s) for it to grow, a relic of O_EXCL creation.
        if size < PAYLOAD_OFFSET as u64 {
            return Err(Error::Truncated {
                needed: PAYLOAD_OFFSET as u64,
                actual: size,
            });
        }
        let naming = Naming::Named {
            name: name.to_owned(),
            shm_name,
            unlink_by: None,
        };
        let opening = Opening {
            size,
            deadline,
            populate: false,
            max_payload,
        };
        Region::finish_open(file, opening, naming, layout, name)
    }

    /// Opens the region a handle refers to and checks it is the very region the handle was made from.
    pub(crate) fn open_handle(handle: &RegionHandle, layout: Layout) -> Result<Region> {
        Region::open_handle_with(handle, layout, false)
    }

    /// As [`Region::open_handle`], for a region made by [`Region::create_growable`]: an anonymous
    /// region's memfd must be sealed against shrinking (and against seal changes), not against growing.
    /// The mapping covers the payload the header declares; the owner maps what it grows by itself.
    pub(crate) fn open_handle_growable(handle: &RegionHandle, layout: Layout) -> Result<Region> {
        Region::open_handle_sealed(handle, layout, false, true, u64::MAX)
    }

    /// The file behind the region (the manager's heap grows it and maps the new part itself).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// As [`Region::open_handle`]; `populate` pre-faults the whole mapping (MAP_POPULATE), far cheaper
    /// than faulting page by page when the creator already filled the region.
    pub(crate) fn open_handle_with(
        handle: &RegionHandle,
        layout: Layout,
        populate: bool,
    ) -> Result<Region> {
        Region::open_handle_sealed(handle, layout, populate, false, u64::MAX)
    }

    /// As [`Region::open_handle`], refusing a region whose header declares a payload above
    /// `max_payload` bytes before that payload is mapped.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for a payload above `max_payload` (`available` is `max_payload`); the
    /// errors of [`Region::open_handle`].
    pub(crate) fn open_handle_within(
        handle: &RegionHandle,
        layout: Layout,
        max_payload: u64,
    ) -> Result<Region> {
        Region::open_handle_sealed(handle, layout, false, false, max_payload)
    }

    fn open_handle_sealed(
        handle: &RegionHandle,
        layout: Layout,
        populate: bool,
        growable: bool,
        max_payload: u64,
    ) -> Result<Region> {
        let region = match &handle.source {
            Source::Named(name) => {
                validate_name(name)?;
                Region::open_checked_within(name, layout, HANDLE_OPEN_WAIT, max_payload)?
            }
            Source::Fd { pid, fd } => {
                let what = format!("anonymous region of process {pid}");
                // Regular files only: a device or FIFO is never opened for real (see open_proc_fd).
                let file = shm::open_proc_fd(*pid, *fd)?;
                check_private(&file, &what)?;
                check_size_sealed(&file, &what, growable)?;
                // Sealed against shrinking and growing: this size is final, and no process can truncate
                // the file under our mapping (which would turn our reads into SIGBUS).
                let size = shm::file_info(&file)?.size;
                let opening = Opening {
                    size,
                    deadline: Instant::now() + HANDLE_OPEN_WAIT,
                    populate,
                    max_payload,
                };
                Region::finish_open(file, opening, Naming::Anonymous, layout, &what)?
            }
        };
        if region.header.region_id != handle.id {
            return Err(Error::StaleHandle(format!(
                "region id {:#x} was expected but {:#x} was found",
                handle.id, region.header.region_id
            )));
        }
        Ok(region)
    }

    /// Maps the segment `file` (of `opening.size` bytes), waits for it to be published, and validates
    /// its header.
    ///
    /// The mapping is the header's payload, never the whole file: the file's size is whatever its
    /// maker chose (a sparse memfd or `/dev/shm` file of any size costs nothing), and mapping it all
    /// let every handle a peer forged around a small object's header take tens of TiB of our address
    /// space, until our own allocations failed (found by review). So the header is mapped alone (with
    /// the payload when the layout fixes its size), and the payload the validated header declares is
    /// mapped once it is checked against the file.
    fn finish_open(
        file: File,
        opening: Opening,
        naming: Naming,
        layout: Layout,
        what: &str,
    ) -> Result<Region> {
        let Opening {
            size,
            deadline,
            populate,
            max_payload,
        } = opening;
        let first = layout
            .size
            .map_or(PAYLOAD_OFFSET as u64, |n| {
                (PAYLOAD_OFFSET as u64).saturating_add(n as u64)
            })
            .min(size);
        let map = map_segment(&file, first, populate && layout.size.is_some())?;
        let file_key = shm::file_key(&file)?;
        let mut region = Region {
            map,
            file,
            header: zero_snapshot(),
            naming,
            file_key,
            opened: 0,
        };
        let h = region.raw_header();
        loop {
            let ready = h.ready.load(Ordering::Acquire);
            if ready == READY {
                break;
            }
            if ready != 0 {
                // Neither "initialising" nor READY: somebody wrote garbage over the flag.
                return Err(Error::Corrupted(format!(
                    "ready flag of {what} is {ready:#x}"
                )));
            }
            // The creator's identity is only meaningful once the magic is in (written last, Release).
            // No magic yet means a header being written; any other magic is not ours at all.
            let magic = h.magic_acquire();
            if magic != MAGIC && magic != [0; 8] {
                return Err(Error::BadMagic { found: magic });
            }
            // The creator's identity is stored before the magic; if it is visible, it can be judged already.
            let creator = h.creator_pid.load(Ordering::Relaxed);
            let start = h.creator_start.load(Ordering::Relaxed);
            let pidns = h.creator_pidns.load(Ordering::Relaxed);
            let now = Instant::now();
            // A creator that died before publishing will never publish; say so at once rather than wait.
            // One of another pid namespace cannot be judged from here: it is waited for, up to the bound.
            let creator_dead = creator_known_dead(creator, start, pidns);
            if now >= deadline || creator_dead {
                return Err(Error::NotReady {
                    name: what.to_owned(),
                    creator_pid: creator,
                });
            }
            let slice = (deadline - now).min(Duration::from_millis(10));
            futex::wait(&h.ready, ready, Some(slice));
        }
        let s = h.snapshot();
        region.header = s;
        validate(&s, &layout, size)?;
        // Refused before the payload is mapped: the caller bounds what a handle can take of our
        // address space (the heap's foreign arenas, whose size is the sender's choice).
        if s.payload_size > max_payload {
            return Err(Error::OutOfMemory {
                requested: s.payload_size,
                available: max_payload,
            });
        }
        // Counted before the payload is mapped (and uncounted when the region is dropped): the
        // bound on what opens take of our address space, whoever made the region.
        count_opened(s.payload_size)?;
        region.opened = s.payload_size;
        // Validated: PAYLOAD_OFFSET + payload_size <= size, so this cannot overflow and every page of
        // the mapping is backed.
        let declared = PAYLOAD_OFFSET as u64 + s.payload_size;
        if region.map.len() as u64 != declared {
            region.map = map_segment(&region.file, declared, populate)?;
        }
        Ok(region)
    }

    /// A reference to a `T` at `offset` in the payload, after checking bounds and alignment.
    pub(crate) fn payload_ref<T: ShmSafe>(&self, offset: usize) -> Result<&T> {
        let size = std::mem::size_of::<T>();
        let in_bounds = offset.checked_add(size).is_some_and(|e| e <= self.len());
        let addr = (self.as_ptr() as usize).wrapping_add(offset);
        if !in_bounds || !addr.is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Error::Corrupted(format!(
                "{} bytes at offset {offset} do not fit a {}-byte payload",
                size,
                self.len()
            )));
        }
        // SAFETY: the range [offset, offset + size) lies inside the payload, which lies inside our live
        // mapping (validated against the segment's real size at create/open); the address is aligned
        // for T; T: ShmSafe accepts any bytes and is only mutated through atomics or UnsafeCell, so other
        // processes writing it concurrently cannot produce an invalid value. The reference lives no
        // longer than `self`, which keeps the mapping.
        Ok(unsafe { &*(addr as *const T) })
    }

    /// Writes `bytes` at `offset` of the payload through the file (`pwrite(2)`), not the mapping: the
    /// kernel puts them straight into the pages of the segment, allocating the pages that do not exist
    /// yet without zeroing them first and without a page fault per page (the heap's copy into fresh
    /// memory, see `heap::Block::copy_in`). Coherent with every mapping of the segment.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the range is not inside the payload; [`Error::Os`] if the write fails.
    pub(crate) fn write_payload_at(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        let end = offset.checked_add(bytes.len());
        if end.is_none_or(|e| e > self.len()) {
            return Err(Error::Corrupted(format!(
                "{} bytes at offset {offset} do not fit a {}-byte payload",
                bytes.len(),
                self.len()
            )));
        }
        // In bounds of the payload, so of the file (PAYLOAD_OFFSET + len is its size): cannot overflow.
        let at = (PAYLOAD_OFFSET + offset) as u64;
        std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, at)
            .map_err(|e| Error::os("pwrite(region)", e))
    }

    fn raw_header(&self) -> &Header {
        // SAFETY: every mapping is at least PAYLOAD_OFFSET (> size_of::<Header>()) bytes (checked before
        // mapping), mmap returns page-aligned addresses, and Header is all atomics, so any bytes are valid.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// Reads the header of a segment without validating it (for the janitor): the snapshot (all zero
    /// while the magic is not yet written) and whether it was published; `None` if the segment is shorter
    /// than a header.
    fn peek_header(file: File) -> Option<(HeaderSnapshot, bool)> {
        // Read, not mapped: the janitor peeks at every file under our prefix, and one that shrinks
        // between the size check and the read is a short read here, where a mapping would be SIGBUS.
        if shm::file_info(&file).ok()?.size < PAYLOAD_OFFSET as u64 {
            return None;
        }
        let mut bytes = [0u8; 64];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).ok()?;
        let (snapshot, ready) = HeaderSnapshot::from_bytes(&bytes);
        if snapshot.magic != MAGIC {
            return Some((zero_snapshot(), false));
        }
        Some((snapshot, ready == READY))
    }

    /// Whether the region outlives its creator's handle (see [`Region::create`]).
    ///
    /// # Examples
    /// ```
    /// assert!(!mproc::Region::anonymous(8)?.is_persistent());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_persistent(&self) -> bool {
        self.header.flags & FLAG_PERSISTENT != 0
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Naming::Named {
            shm_name,
            unlink_by: Some(pid),
            name,
        } = &self.naming
        {
            if *pid == proc::pid() {
                // Only if the name still refers to our segment: after an explicit unlink somebody may
                // have created a new region under the same name. Errors are ignored: another process (or
                // the janitor) may have unlinked it already, and the mapping stays valid either way.
                let _ = shm::unlink_named_if_same(shm_name, name, &self.file, &aside_name());
            }
        }
        OPENED_BYTES.fetch_sub(self.opened, Ordering::Relaxed);
        // The mapping and the descriptor are released by their own drops.
    }
}

fn zero_snapshot() -> HeaderSnapshot {
    HeaderSnapshot {
        magic: [0; 8],
        version: 0,
        header_size: 0,
        type_hash: 0,
        payload_size: 0,
        region_id: 0,
        creator_pid: 0,
        flags: 0,
        creator_start: 0,
        creator_pidns: 0,
    }
}

/// What [`Region::finish_open`] needs to know about a segment it opens: its file's size (read once,
/// before anything is mapped), how long to wait for it to be published, and whether to pre-fault the
/// payload's mapping (`MAP_POPULATE`), and the largest payload the caller accepts to map.
struct Opening {
    size: u64,
    deadline: Instant,
    populate: bool,
    max_payload: u64,
}

/// Maps the first `size` bytes of a segment, which the caller checked the file holds, after checking
/// they can hold a header (a shorter mapping would fault when the header is read).
fn map_segment(file: &File, size: u64, populate: bool) -> Result<shm::Mapping> {
    if size < PAYLOAD_OFFSET as u64 {
        return Err(Error::Truncated {
            needed: PAYLOAD_OFFSET as u64,
            actual: size,
        });
    }
    let len = usize::try_from(size).map_err(|_| Error::SizeMismatch {
        expected: usize::MAX as u64,
        found: size,
    })?;
    shm::Mapping::new(file, len, populate)
}

fn check_private(file: &File, what: &str) -> Result<shm::FileInfo> {
    let info = shm::file_info(file)?;
    if !info.is_file {
        return Err(Error::Os {
            op: "open shared region".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{what} is not a regular file"),
            ),
        });
    }
    if info.uid != proc::euid() || info.mode & 0o077 != 0 {
        return Err(Error::NotPrivate {
            name: what.to_owned(),
            owner_uid: info.uid,
            mode: info.mode,
        });
    }
    Ok(info)
}

/// Refuses a file whose size is not sealed: only a memfd this crate made (sealed at creation) may be
/// reached through an anonymous-region handle. A forged handle to an unsealed file could truncate it
/// under our mapping and kill us with SIGBUS (review S4). A named region never travels this way: its
/// handle names it.
///
/// A `growable` region's memfd may grow (never shrink): growth cannot invalidate a mapped page, and the
/// mapping made here covers only the size read after this check.
fn check_size_sealed(file: &File, what: &str, growable: bool) -> Result<()> {
    match shm::seals(file)? {
        Some(seals) if shm::size_is_sealed(seals) => Ok(()),
        Some(seals) if growable && shm::shrink_is_sealed(seals) => Ok(()),
        seals => Err(Error::NotSealed {
            name: what.to_owned(),
            seals,
        }),
    }
}

/// This process's pid namespace as recorded in a header (0, "unknown", if it does not fit 32 bits).
fn own_pid_namespace() -> u32 {
    u32::try_from(proc::pid_namespace()).unwrap_or(0)
}

/// Whether the creator recorded in a header is *proved* dead: recorded at all, of our own pid namespace
/// (a pid means something only in the namespace that wrote it; an unknown or foreign namespace is
/// never judged, review S6), and gone from our `/proc` or replaced by a process with another start time.
/// The janitor removes a segment, and an opener stops waiting for one, only on this proof.
fn creator_known_dead(pid: u32, start: u64, pidns: u32) -> bool {
    pid != 0 && proc::same_pid_namespace(u64::from(pidns)) && !proc::process_alive(pid, start)
}

/// Checks a header snapshot against the expected layout and the segment's real size.
fn validate(s: &HeaderSnapshot, layout: &Layout, segment_size: u64) -> Result<()> {
    if s.magic != MAGIC {
        return Err(Error::BadMagic { found: s.magic });
    }
    if s.version != FORMAT_VERSION {
        return Err(Error::VersionMismatch {
            expected: FORMAT_VERSION,
            found: s.version,
        });
    }
    if s.header_size as usize != std::mem::size_of::<Header>() {
        return Err(Error::Corrupted(format!(
            "header size {} is not 64",
            s.header_size
        )));
    }
    if s.type_hash != layout.hash {
        return Err(Error::TypeMismatch {
            expected: layout.type_name.into(),
            expected_hash: layout.hash,
            found_hash: s.type_hash,
        });
    }
    if let Some(size) = layout.size {
        if s.payload_size != size as u64 {
            return Err(Error::SizeMismatch {
                expected: size as u64,
                found: s.payload_size,
            });
        }
    }
    let needed = s.payload_size.saturating_add(PAYLOAD_OFFSET as u64);
    if needed > segment_size {
        return Err(Error::Truncated {
            needed,
            actual: segment_size,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
