//! The crate's one error type.
//!
//! Every failure that depends on another process or on the operating system is an [`Error`]; programmer
//! bugs (a zero-length name, a barrier of zero parties) panic at the call site instead. Lock acquisition
//! has its own small result types ([`OwnerDied`], [`TryLockError`]) because, like
//! [`std::sync::PoisonError`], they hand back the guard.

use std::borrow::Cow;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// Convenience alias for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `mproc`.
///
/// An `Error` crosses process boundaries: it is `Serialize` and `Deserialize`, keeping its variant and
/// message (an OS error keeps its errno), so a spawned function or a pool task may return
/// `mproc::Result<T>` and the caller gets the error back as it was.
///
/// # Examples
/// ```
/// use mproc::{Error, Process};
///
/// fn open_missing(name: String) -> mproc::Result<u64> {
///     let r = mproc::Region::open(&name)?; // fails in the child
///     Ok(r.len() as u64)
/// }
///
/// let mut p = Process::new(open_missing, "no-such-region-here".to_owned())?;
/// p.start()?;
/// match p.join()? {
///     Err(Error::NotFound { name }) => assert_eq!(name, "no-such-region-here"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// Variants are grouped by layer. The `Display` text is a lowercase sentence meant for a log line; match on
/// the variant to decide what to do.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed; `op` names it.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation that failed, e.g. `"shm_open"`.
        op: Cow<'static, str>,
        /// The OS error.
        #[source]
        #[serde(with = "io_error_serde")]
        source: io::Error,
    },

    // ---- region: naming and opening ----
    /// No shared object with this name exists.
    #[error("no shared region named {name:?}")]
    NotFound {
        /// The name that was looked up.
        name: String,
    },
    /// `create` was asked for a name that is already taken.
    #[error("a shared region named {name:?} already exists")]
    AlreadyExists {
        /// The name that was taken.
        name: String,
    },
    /// The segment belongs to another user or is readable by others: we refuse to trust it.
    #[error(
        "shared region {name:?} is not private to this user (owner uid {owner_uid}, mode {mode:o})"
    )]
    NotPrivate {
        /// The name of the segment.
        name: String,
        /// The uid that owns the segment.
        owner_uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A handle to an anonymous region named a file whose size is not sealed: it could be truncated under
    /// our mapping, so it is refused. Every anonymous region this crate makes is a size-sealed memfd.
    #[error("{name} is not a size-sealed memfd (seals: {seals:?}); refused")]
    NotSealed {
        /// What the handle named, e.g. `"anonymous region of process 42"`.
        name: String,
        /// The file's seals (`F_GET_SEALS`), or `None` if its filesystem has no seals at all.
        seals: Option<u32>,
    },
    /// A name that cannot be used for a shared segment: empty, longer than 200 bytes, starting with a
    /// dot, with a byte other than ASCII letters, digits, `.`, `_` and `-`, or of the form
    /// `q<16 lower-case hex digits>-…`, reserved for the blocks of queues.
    #[error("invalid region name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: Cow<'static, str>,
    },

    // ---- region: header validation ----
    /// The segment does not start with the `mproc` magic bytes: it is not one of ours, or it was overwritten.
    #[error("not an mproc region: bad magic {found:02x?}")]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The segment was written by an incompatible version of the crate.
    #[error("region format version {found} is not the supported version {expected}")]
    VersionMismatch {
        /// Our format version.
        expected: u32,
        /// The version in the header.
        found: u32,
    },
    /// The segment holds a different type than the one asked for.
    #[error("region holds a different type: expected {expected} (hash {expected_hash:#018x}), found hash {found_hash:#018x}")]
    TypeMismatch {
        /// The type that was asked for.
        expected: Cow<'static, str>,
        /// Its layout hash.
        expected_hash: u64,
        /// The layout hash in the header.
        found_hash: u64,
    },
    /// The payload size in the header differs from the one expected, or from the segment's real size.
    #[error("region size mismatch: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The size expected.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A size computed from the caller's arguments (a queue's capacity times its slot size, say) does not
    /// fit in the address space: nothing was allocated.
    #[error("{what} is too large to fit in memory")]
    SizeOverflow {
        /// What was being sized.
        what: Cow<'static, str>,
    },
    /// The segment is shorter than its header says it is.
    #[error("region is truncated: it needs {needed} bytes but the segment has {actual}")]
    Truncated {
        /// The bytes the header requires.
        needed: u64,
        /// The real size of the segment.
        actual: u64,
    },
    /// The region's creator did not finish initialising it in time (it may have died).
    #[error("region {name:?} was not initialised by its creator (pid {creator_pid}) in time")]
    NotReady {
        /// The name or handle of the region.
        name: String,
        /// The pid that created it.
        creator_pid: u32,
    },
    /// A handle refers to a region that no longer exists or was replaced by another one.
    #[error("stale handle: {0}")]
    StaleHandle(String),
    /// Shared state failed a consistency check: some process wrote garbage into it.
    #[error("shared state is corrupted: {0}")]
    Corrupted(String),

    // ---- sync ----
    /// The process holding a lock died; the caller now holds it. Returned once, after which the lock is
    /// ordinary again. (Lock methods return [`OwnerDied`] with the guard instead; this variant is what it
    /// converts into.)
    #[error("the previous holder of the lock (tid {tid}) died while holding it")]
    OwnerDied {
        /// The thread id of the holder that died.
        tid: u32,
    },
    /// A timed operation ran out of time.
    #[error("timed out")]
    Timeout,
    /// A thread tried to release a lock or semaphore it does not hold, or more times than allowed.
    #[error("released too many times: {0}")]
    ReleasedTooManyTimes(Cow<'static, str>),
    /// A [`Barrier`](crate::Barrier) was broken (by `abort`, a timeout, or a party that died).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A [`Manager`](crate::Manager) operation was called from inside a closure that another operation
    /// of the same manager runs under its lock ([`Dict::update`](crate::Dict::update),
    /// [`DictEntry`](crate::DictEntry)'s closures, [`ManagedValue::update`](crate::ManagedValue::update)):
    /// it would break the transaction the closure runs in. Read what the closure needs before the call.
    /// Also returned for an operation nested inside the closures of 32 managers' operations at once.
    #[error("a manager operation was called from inside another operation's closure on the same manager")]
    ManagerReentered,
    /// One [`Manager`](crate::Manager) operation would change more words that existed before it than
    /// its undo journal holds (`limit`): about a thousand values added in one call
    /// ([`List::extend`](crate::List::extend)) once the heap reuses freed memory. Nothing was changed;
    /// split the operation.
    #[error("a manager operation too large for one transaction (more than {limit} journaled words): split it")]
    ManagerTransactionTooLarge {
        /// The undo journal's capacity, in words.
        limit: u64,
    },

    // ---- messaging ----
    /// A non-blocking put found the queue full (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// A non-blocking get found the queue empty (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// The queue or pipe was closed.
    #[error("the channel is closed")]
    Closed,
    /// The message does not fit in the queue at all.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The encoded size of the message.
        size: usize,
        /// The largest message the channel accepts.
        max: usize,
    },
    /// A value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// Bytes could not be decoded as the expected type.
    #[error("cannot decode value as {ty}: {reason}")]
    Decode {
        /// The type asked for.
        ty: Cow<'static, str>,
        /// What went wrong.
        reason: String,
    },

    // ---- process ----
    /// A child process panicked; carries the panic message and location.
    #[error("child process panicked at {location}: {message}")]
    ProcessPanicked {
        /// The panic payload, if it was a string.
        message: String,
        /// `file:line:column` of the panic, or `"<unknown>"`.
        location: String,
    },
    /// A child process was killed by a signal (Python reports this as a negative exit code).
    #[error("child process {name} (pid {pid}) was killed by signal {signal}")]
    ProcessKilled {
        /// The signal number.
        signal: i32,
        /// The child's pid (already reaped: it names nobody now).
        pid: u32,
        /// The child's name (`Process::name`).
        name: String,
    },
    /// A child process exited without producing its result.
    #[error("child process {name} (pid {pid}) exited with code {code} without a result")]
    ProcessExited {
        /// The exit code.
        code: i32,
        /// The child's pid (already reaped: it names nobody now).
        pid: u32,
        /// The child's name (`Process::name`).
        name: String,
    },
    /// A spawned child found that it does not run the same executable file as its parent (the file was
    /// replaced on disk in between), so the function reference it was given cannot be trusted. Nothing
    /// was run.
    #[error("the child process runs a different executable than its parent: {0}")]
    ExecutableMismatch(String),
    /// The fork server (`StartMethod::ForkServer`) died or failed while starting a process or before
    /// reporting how one ended; the message says which. The next process started restarts it.
    #[error("fork server: {0}")]
    ForkServer(String),
    /// The process was not started, or was already joined.
    #[error("process is not running: {0}")]
    ProcessState(Cow<'static, str>),

    // ---- pool ----
    /// A task panicked in a pool worker. `task` is the index of the item (in the input of `map` and its
    /// relatives, or 0 for `apply`) whose call panicked.
    #[error("task {task} panicked at {location}: {message}")]
    TaskPanicked {
        /// Index of the failing item.
        task: usize,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
    },
    /// The worker running a task died (killed by a signal, aborted, out of memory, or exited). `task` is
    /// the index of the item; `signal` or `exit_code` says how the worker ended.
    #[error("the worker running task {task} died ({})", died_how(*.signal, *.exit_code))]
    WorkerDied {
        /// Index of the item whose task was in flight.
        task: usize,
        /// The signal that killed the worker, if any.
        signal: Option<i32>,
        /// The worker's exit code, if it exited.
        exit_code: Option<i32>,
    },
    /// A managed heap has no block left of the size asked for.
    #[error("the shared heap is out of memory: {requested} bytes requested, {available} bytes of fresh space left")]
    OutOfMemory {
        /// The size asked for.
        requested: u64,
        /// Never-used space left in the heap (freed blocks of other sizes are not counted).
        available: u64,
    },
    /// The pool was closed or terminated; it takes no more work.
    #[error("the pool is closed")]
    PoolClosed,

    // ---- integrations (features `ndarray`, `image`, `npy`) ----
    /// A shape does not fit the data it is to describe: an n-d view of a `SharedArray` whose length
    /// is not the product of the shape, an image whose buffer is not `width × height × channels`.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A file is not what it was opened as; `problem` says precisely how. Every field of a `.npy`
    /// header is checked against the element type asked for and against the file's length before
    /// anything is mapped.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file, as given.
        path: String,
        /// What is wrong with it.
        problem: FileProblem,
    },

    // ---- cluster (feature `mpi`) ----
    /// MPI could not be started, or was started by someone else first.
    #[error("MPI: {0}")]
    Mpi(String),
    /// Not every rank of the MPI job runs the same executable file as rank 0: function references are
    /// offsets in that file, so the job refuses to start rather than call the wrong code. Every rank
    /// gets this error, naming the first rank that differs.
    #[error("rank {rank} runs a different executable than rank 0 ({detail})")]
    RankExecutableMismatch {
        /// The first rank whose executable differs from rank 0's.
        rank: usize,
        /// What differs (size and content hash of both files).
        detail: String,
    },
    /// A rank of a cluster pool could not run its share of a call for a reason other than a task's
    /// panic or a worker's death (those keep their own variants, with the item's index in the whole
    /// input).
    #[error("rank {rank}: {message}")]
    RankFailed {
        /// The rank that failed.
        rank: usize,
        /// What went wrong there.
        message: String,
    },
}

/// What is wrong with a file opened by an integration (see [`Error::BadFile`]).
///
/// # Examples
/// ```
/// let problem = mproc::FileProblem::Length { expected: 224, found: 216 };
/// assert_eq!(problem.to_string(), "it should be 224 bytes long by its header, but it is 216");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FileProblem {
    /// Not a regular file (a directory, a FIFO, a device): refused before reading anything from it.
    #[error("not a regular file")]
    NotRegular,
    /// Not a `.npy` file, or its header is malformed (bad magic, unknown version, a header longer
    /// than the limit, a dict that does not parse or lacks a key).
    #[error("not a valid .npy file: {0}")]
    NotNpy(String),
    /// The file holds elements of another type than the one asked for.
    #[error("its elements are {found}, not {expected}")]
    Dtype {
        /// The type asked for, as a numpy descriptor (e.g. `<f8`).
        expected: String,
        /// The descriptor in the file.
        found: String,
    },
    /// The data is big-endian; only little-endian (this machine's order) can be mapped as is.
    #[error("its elements are big-endian ({found}); only little-endian data can be mapped")]
    ByteOrder {
        /// The descriptor in the file.
        found: String,
    },
    /// The data is in the other memory order than the one asked for.
    #[error("its data is in {found} order, not {expected} order")]
    Order {
        /// The order asked for (`"C"` or `"Fortran"`).
        expected: Cow<'static, str>,
        /// The order of the file.
        found: Cow<'static, str>,
    },
    /// The header's shape, times the element size, does not fit in memory (`usize`).
    #[error("its shape {shape:?} overflows the address space")]
    ShapeOverflow {
        /// The shape in the header.
        shape: Vec<u64>,
    },
    /// The file's length is not header + data as the header describes: truncated, or with bytes
    /// after the data (a lying header).
    #[error("it should be {expected} bytes long by its header, but it is {found}")]
    Length {
        /// Header plus data, by the header.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// The file is not the one a handle named any more (replaced, or resized).
    #[error("it changed since it was opened: {0}")]
    Changed(String),
    /// This process maps the file writable already, or a writable mapping was asked for while it
    /// maps the file already: two mappings of one file, one of them writable, would alias a `&mut`.
    #[error("this process maps it already, and one of the two mappings would be writable")]
    MappedWritable,
    /// An image that cannot be decoded or encoded (the `image` crate's message).
    #[error("image: {0}")]
    Image(String),
}

fn died_how(signal: Option<i32>, exit_code: Option<i32>) -> String {
    match (signal, exit_code) {
        (Some(s), _) => format!("killed by signal {s}"),
        (None, Some(c)) => format!("exited with code {c}"),
        (None, None) => "vanished".to_owned(),
    }
}

impl Error {
    /// Builds [`Error::Os`] from `errno`.
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::os(op, io::Error::last_os_error())
    }

    /// Builds [`Error::Os`] from an `io::Error`.
    pub(crate) fn os(op: &'static str, source: io::Error) -> Self {
        Error::Os {
            op: op.into(),
            source,
        }
    }
}

/// How an `io::Error` crosses a process boundary: its OS error number if it has one (rebuilt exactly),
/// else its kind and message.
mod io_error_serde {
    use std::io;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum IoError {
        Os(i32),
        Other { kind: String, message: String },
    }

    pub(super) fn serialize<S: Serializer>(e: &io::Error, s: S) -> Result<S::Ok, S::Error> {
        match e.raw_os_error() {
            Some(code) => IoError::Os(code),
            None => IoError::Other {
                kind: format!("{:?}", e.kind()),
                message: e.to_string(),
            },
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<io::Error, D::Error> {
        Ok(match IoError::deserialize(d)? {
            IoError::Os(code) => io::Error::from_raw_os_error(code),
            IoError::Other { kind, message } => io::Error::new(kind_named(&kind), message),
        })
    }

    /// `ErrorKind` has no parser: the kinds this crate produces by name, anything else as `Other`.
    fn kind_named(name: &str) -> io::ErrorKind {
        use io::ErrorKind as K;
        [
            K::NotFound,
            K::PermissionDenied,
            K::AlreadyExists,
            K::InvalidInput,
            K::InvalidData,
            K::TimedOut,
            K::UnexpectedEof,
            K::OutOfMemory,
            K::Unsupported,
            K::BrokenPipe,
            K::Interrupted,
        ]
        .into_iter()
        .find(|k| format!("{k:?}") == name)
        .unwrap_or(K::Other)
    }
}

/// A lock was acquired, but its previous holder died while holding it.
///
/// Like [`std::sync::PoisonError`] this carries the guard: the caller holds the lock and may repair whatever
/// the dead holder left half-done. It is reported to exactly one acquirer; once that guard is released the
/// lock behaves normally again.
pub struct OwnerDied<G> {
    guard: G,
    tid: u32,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G, tid: u32) -> Self {
        OwnerDied { guard, tid }
    }

    /// The guard of the lock, now held by the caller.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// The thread id that held the lock when it died.
    pub fn dead_tid(&self) -> u32 {
        self.tid
    }

    /// Maps the guard, keeping the death report.
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> OwnerDied<H> {
        OwnerDied {
            guard: f(self.guard),
            tid: self.tid,
        }
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("tid", &self.tid)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the previous holder of the lock (tid {}) died while holding it",
            self.tid
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

impl<G> From<OwnerDied<G>> for Error {
    fn from(e: OwnerDied<G>) -> Self {
        Error::OwnerDied { tid: e.tid }
    }
}

/// The result of a blocking lock: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = std::result::Result<G, OwnerDied<G>>;

/// Why a non-blocking or timed lock attempt did not simply succeed.
pub enum TryLockError<G> {
    /// The lock is held by someone else (or the timeout expired).
    WouldBlock,
    /// The lock was acquired, but its previous holder had died.
    OwnerDied(OwnerDied<G>),
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::OwnerDied(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => {
                f.write_str("the lock is held by another thread or process")
            }
            TryLockError::OwnerDied(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(e)
    }
}

impl<G> From<TryLockError<G>> for Error {
    fn from(e: TryLockError<G>) -> Self {
        match e {
            TryLockError::WouldBlock => Error::Timeout,
            TryLockError::OwnerDied(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: &Error) -> Error {
        postcard::from_bytes(&postcard::to_allocvec(e).unwrap()).unwrap()
    }

    #[test]
    fn errors_cross_processes_with_variant_and_message() {
        let cases = [
            Error::os("shm_open", io::Error::from_raw_os_error(libc::ENOENT)),
            Error::os("decode", io::Error::other("a message")),
            Error::TypeMismatch {
                expected: "mproc::Lock".into(),
                expected_hash: 1,
                found_hash: 2,
            },
            Error::ProcessState("already joined".into()),
            Error::Timeout,
            Error::WorkerDied {
                task: 3,
                signal: Some(9),
                exit_code: None,
            },
        ];
        for e in &cases {
            let back = round_trip(e);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(e),
                "{e:?}"
            );
        }
        match round_trip(&cases[0]) {
            Error::Os { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
    }
}
