//! Running a function in another process, like Python's `multiprocessing.Process`.
//!
//! ```
//! use mproc::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let mut p = Process::new(square, 12)?;
//! p.start()?;
//! assert_eq!(p.join()?, 144);
//! assert_eq!(p.exitcode(), Some(0));
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Start methods
//! - [`StartMethod::Spawn`] (the default) re-executes the running program (`/proc/self/exe`) and runs the
//!   function in the fresh process. The child shares nothing with the parent but the arguments, so it is
//!   safe from any parent: one with many threads (a test harness, a tokio runtime, a thread pool), locks
//!   held, a huge heap. Starting costs an `exec` and the program's start-up (about 1 ms here).
//! - [`StartMethod::Fork`] (Linux, opt-in) forks the parent. It is several times faster to start, and it
//!   can run any `FnOnce() -> R + Send` closure, capturing whatever it likes, because the child is a copy
//!   of the parent's memory. Use it for short-lived children of a parent that is single-threaded, or whose
//!   threads you control, and whose heap is small. See [the caveats](#fork-caveats).
//!
//! - [`StartMethod::ForkServer`] (Linux, opt-in; Python 3.14's default there) asks a single-threaded
//!   server process, spawned once per process, to fork the child. It starts at fork speed from any
//!   parent, however many threads it runs, and runs what spawn runs (a function pointer and serialized
//!   arguments). See [the fork server](#the-fork-server).
//!
//! When in doubt, spawn. Use fork when start-up latency matters and the caveats are understood, or when
//! the work is a closure over state that cannot be serialized; use the fork server when start-up latency
//! matters in a multi-threaded parent.
//!
//! # What a spawned child can run
//! Only a **function pointer** `fn(A) -> R` with `R: Serialize + DeserializeOwned` and an argument `A`
//! that is an owned serde type, `&str`, `&[u8]` or `&T` of an owned serde type ([`ProcessArg`]): a plain
//! `fn` item or a closure that captures nothing (it coerces). So `fn greet(name: &str)` runs as
//! `Process::new(greet, "Bob")`. A borrowed argument is decoded in the child and kept until it exits;
//! other borrowed types (`&[f64]`, `&mut T`) are refused at compile time with a message naming the type
//! and what to take instead.
//! The function is sent as its offset from a fixed function of this crate, which is the same in every
//! process running the same executable file whatever address the loader picked, paired with the adapter
//! that knows its types and authenticated with a key that only parent and child hold: the child never jumps anywhere but the start of a function its parent handed to
//! [`Process::new`]. The argument travels serialized (postcard) and the result comes back the same way.
//! The child execs the parent's own `/proc/self/exe`, so it runs the very same file even if the program
//! was rebuilt meanwhile; it checks that anyway (device, inode and size: not the times, which
//! `touch` changes on the very same file) and reports
//! [`Error::ExecutableMismatch`] rather than calling anything. A capturing closure is rejected at compile
//! time (see [`Process::new`]); a function that lives in a dynamic library rather than in the executable
//! (or mproc itself linked into a `cdylib`) is rejected with a panic when the process is created.
//!
//! Shared objects travel as arguments: a [`RegionHandle`](crate::RegionHandle) (and every shared object
//! built on regions) serializes as a handle and re-attaches in the child.
//!
//! # No ceremony: the pre-main constructor
//! A spawned child must run the task instead of the program's `main`. This crate places a function
//! pointer in the executable's `.init_array` section, which the dynamic loader runs before `main` in every
//! Linux executable; it looks for the environment variable `MPROC_SPAWN_CHILD`, and if it is set, removes
//! it (so that programs the child starts are not mistaken for children), runs the task and exits. It
//! never reaches `main`. So spawning works unchanged from binaries, `cargo test` unit and integration
//! tests (including custom harnesses), doctests, examples and benches. The static is referenced from
//! [`Process::start`], so the linker keeps it in every program that can spawn. [`init`] is
//! an explicit alternative for toolchains that drop `.init_array` entries: call it first thing in `main`;
//! where the constructor already ran it does nothing.
//!
//! The constructor trusts nothing in that variable. A program linking mproc behaves exactly as without
//! it unless its own parent spawned it: under `AT_SECURE` (setuid, setgid, file capabilities) the
//! variable is ignored; otherwise the task is accepted only from `getppid()`, over descriptors the parent
//! handed down by inheritance (a sealed memfd of our uid for the task, capped at 1 GiB; an `AF_UNIX`
//! socket made by that parent for the key; an empty memfd of ours for the result), and a variable that
//! fails any check makes the process print why and exit with code 126 having written to no file.
//! So a program whose re-executed child would be `AT_SECURE` (one running setuid or setgid, or whose
//! file is set-user-ID or set-group-ID to another user or group, or carries capabilities) cannot
//! spawn: such a child would run `main` again instead of its task. [`Process::start`] (and a pool,
//! and the fork server, which spawn) refuses with [`Error::Os`] there; [`StartMethod::Fork`] works.
//! It refuses as well in a program started through its dynamic loader (`ld.so PROGRAM`), whose
//! `/proc/self/exe` is the loader.
//!
//! # Children die with their parent
//! Unless [`Builder::die_with_parent`] is set to `false`, a child exits (code 125) as soon as its parent
//! **process** has terminated, however it died, so a crashed parent leaves no orphans spinning. The child
//! arms `PR_SET_PDEATHSIG` with a real-time signal (`SIGRTMIN + 3`) whose handler exits only if
//! `getppid()` no longer names the parent. The check matters: the kernel sends that signal whenever the
//! child is re-parented, including when merely the parent *thread* that started it exits (a worker of a
//! thread pool or test harness); the child is then handed to another thread of the same process and
//! `getppid()` is unchanged. Only when the whole process is gone does the child move to a subreaper or
//! init, and exit. A child that installs its own handler for that signal gives this up. (A watcher thread
//! on a pidfd of the parent works too, but costs a thread per child, several hundred microseconds of
//! start-up on this machine.)
//!
//! # Results, panics, signals
//! [`Process::join`] returns the function's value. A panic in the child becomes
//! [`Error::ProcessPanicked`] with the message and `file:line:column`; a child killed by a signal
//! becomes [`Error::ProcessKilled`] and [`Process::exitcode`] reports `-signum`, as Python does; a child
//! that exits (for instance with `std::process::exit`) without returning becomes
//! [`Error::ProcessExited`]. The result travels through a memfd, so a result of any size comes back
//! without the parent and child blocking on each other.
//!
//! # Dropping a running process
//! As in Python, a child is *non-daemon* by default: dropping its [`Process`] unjoined **waits for it
//! to finish** (and reaps it), so its work and side effects are never lost because the handle went out
//! of scope, at the end of `main` included. Its result is discarded; join to keep it. A child started
//! with [`Builder::daemon`]`(true)` is **killed** (`SIGKILL`) and reaped when dropped instead: for work
//! that is worthless once nobody waits for it, and for children that may never finish on their own.
//! Either way no zombie and no orphan is left (with the default [`Builder::die_with_parent`]).
//!
//! # The fork server
//! The first [`StartMethod::ForkServer`] process of a program spawns its server (one re-exec, about a
//! millisecond); every later one costs a request, a `fork` of the small single-threaded server and an
//! answer. Children are reported exactly like spawned ones (value, panic with location, signal, exit
//! code), die with the requesting process (through the server, which dies with it and is their real
//! parent), and are waited for, signalled and killed through a pidfd the server sends over a socket only
//! parent and server hold, which no pid reuse can redirect. A server that died is restarted by the next
//! start; a child whose server died before reporting its end is reported from its pidfd where the
//! kernel keeps the status (Linux 6.15+), else as [`Error::ForkServer`]. The
//! server's children share the server's memory at the time of the fork, i.e. a fresh program's start-up
//! state, not the parent's: like spawned children, they get only their arguments, and, like spawned
//! children, the parent's environment and working directory as they are when the child is started
//! (each request carries them; Python's fork server gives its children the server's instead).
//!
//! # Fork caveats
//! - Only the thread that called [`Process::start`] exists in the child. A lock another thread held at
//!   the moment of the fork (stdout, a `Mutex`, an allocator other than glibc's, a logger) stays locked in
//!   the child forever: a closure that takes it hangs. The crate's own child code takes no such lock,
//!   and every crate-global lock a child may take (the shared heap's, the fork server's, the lists of
//!   queue and pipe attachments, the `.npy` caches, …) is held by [`Process::start`] across the fork,
//!   so a child that makes arrays, queues or processes finds them free. Locks inside an object (a
//!   [`Pool`](crate::Pool)'s, an unbounded [`Queue`](crate::Queue)'s) are not: a child should not
//!   use an object that another thread of the parent may be using at the fork.
//! - The child exits with `_exit`: no destructors, no `atexit` handlers, and stdout is not flushed (it is
//!   line-buffered, so only an unfinished line is lost). The child starts with a copy of this
//!   process's stdout buffer: an unfinished line printed before [`Process::start`] would be printed
//!   again by the child's next line. In a process that runs one thread, `start` flushes stdout before
//!   it forks, as Python does. With more threads it does not, since that would wait for whichever
//!   thread holds stdout, maybe for good (one that holds it while it waits for this one); flush it
//!   yourself first if you print partial lines there.
//! - A [`SharedArray`](crate::SharedArray) that exists at the fork is not copied: the child's copy
//!   names the same shared memory. So that the parent never reuses memory the child may still read,
//!   the block of such an array, once the parent drops it, stays allocated until every child forked
//!   after the array was made has exited. A parent that forks a long-lived child and then drops large
//!   arrays it had before the fork holds their memory until that child ends; arrays made after the
//!   fork are not affected.
//! - Fork copies the parent's page tables: forking a parent with 1 GiB of touched heap costs 28–35 ms
//!   here, plus about 200 ms of copy-on-write faults in the parent afterwards. Spawn pays part of this
//!   too today: handing the child its descriptors takes a `pre_exec` hook, with which the standard
//!   library forks (copying the page tables) rather than using `posix_spawn`; the child then execs at
//!   once, so only the page-table copy and the parent's later write faults remain. The fork server avoids
//!   both.
//! - Panics in the child are reported through a panic hook that the parent installs (once, chaining to
//!   the hook it replaces) *before* its first fork, because installing one in the child could wait
//!   forever on a lock another thread held at the fork. If the program replaces the panic hook after
//!   that, a forked child's panic is still reported, with its message but without its location.
//! - The child inherits every descriptor and mapping of the parent: its regions, its pools' rings and
//!   the keys in their memory. A forked child is trusted like the parent itself.
//! - The child is a user of every queue its parent held at the fork, used or not: it gets a lock of its
//!   own on each queue's block group (one spare descriptor per queue that can spill, for the moment of
//!   the fork; [`Process::start`] fails with [`Error::Os`] without it), so spilled
//!   messages and segments stay while it lives, and when its closure returns it lets go of them all,
//!   removing those it was the last user of. A child that ends otherwise (`std::process::exit`,
//!   `panic = "abort"`, a signal) leaves that to [`cleanup_stale`](crate::cleanup_stale).

mod arg;
pub(crate) mod bootstrap;
pub(crate) mod fnref;
mod fork;
pub(crate) mod forklocks;
pub(crate) mod forkserver;
mod spawn;

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sys::process::{self as psys, WaitStatus};
pub use arg::ProcessArg;
use bootstrap::{Failure, Outcome, SpawnKind};
use fnref::{FnKey, LocalFn};

/// How a [`Process`] is started. See the [module docs](crate::process#start-methods).
///
/// # Examples
/// ```
/// use mproc::{Process, StartMethod};
///
/// for method in [StartMethod::Spawn, StartMethod::Fork, StartMethod::ForkServer] {
///     let mut p = Process::builder().start_method(method).target(|x: u32| x * 2, 21)?;
///     p.start()?;
///     assert_eq!(p.join()?, 42);
/// }
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMethod {
    /// Re-execute the running executable and run the function there (the default; safe everywhere).
    #[default]
    Spawn,
    /// `fork(2)` the parent (Linux). Faster to start; see the [fork caveats](crate::process#fork-caveats).
    Fork,
    /// Ask this process's fork server, a single-threaded process spawned once, to fork the child (Linux;
    /// Python 3.14's default there). Starts at fork speed from any parent, runs what spawn runs; see
    /// [the fork server](crate::process#the-fork-server).
    ForkServer,
}

/// Runs a spawned child's task if this process is one, otherwise does nothing.
///
/// Not needed on Linux with the standard toolchains: a pre-main constructor does this before `main`
/// (see the [process docs](crate::process#no-ceremony-the-pre-main-constructor)). Call it first thing in
/// `main`, before starting any thread, if your toolchain drops `.init_array` entries.
///
/// # Examples
/// ```
/// // First thing in `main`:
/// mproc::init();
/// ```
pub fn init() {
    std::hint::black_box(&bootstrap::CONSTRUCTOR);
    bootstrap::child_main_if_spawned();
}

/// Signals one child through a pidfd of its own: once the child is reaped, a signal reaches nobody
/// (`ESRCH`), never a process that inherited its pid.
#[cfg(feature = "async")]
#[derive(Debug)]
pub(crate) struct Signaller(OwnedFd);

#[cfg(feature = "async")]
impl Signaller {
    /// `SIGKILL`, as [`Process::kill`]; nothing if the child has ended.
    pub(crate) fn kill(&self) -> Result<()> {
        psys::send_signal(&self.0, psys::SIGKILL).map(drop)
    }

    #[cfg(test)]
    pub(crate) fn duplicate_for_test(&self) -> Signaller {
        Signaller(self.0.try_clone().expect("dup a pidfd"))
    }

    /// `SIGTERM`, as [`Process::terminate`]; nothing if the child has ended.
    pub(crate) fn terminate(&self) -> Result<()> {
        psys::send_signal(&self.0, psys::SIGTERM).map(drop)
    }
}

/// A started child: its pid, a pidfd naming it for its whole life, and the memfd of its task and result.
#[derive(Debug)]
struct Child {
    pid: u32,
    pidfd: OwnedFd,
    result: File,
    /// For a child of the fork server (not ours to `waitpid`): where the server reports its end.
    via_server: Option<forkserver::Status>,
}

impl Child {
    /// Reaps the child if it has ended (`block`: waits until it has) and says how it ended.
    /// `patience` bounds only the wait for a child of a dead fork server to be reaped by its new
    /// parent (see `forkserver::Status::wait`).
    fn reap(&self, block: bool, patience: Duration) -> Result<Option<WaitStatus>> {
        match &self.via_server {
            None => psys::waitpid(self.pid, block),
            Some(status) => status.wait(self.pid, &self.pidfd, block, patience),
        }
    }
}

enum Target {
    Function {
        func: LocalFn<SpawnKind>,
        args: Vec<u8>,
    },
    Closure(fork::Body),
}

/// Configures a [`Process`]: name, start method, death with the parent.
///
/// # Examples
/// ```
/// use mproc::{Process, StartMethod};
///
/// let mut p = Process::builder()
///     .name("worker-1")
///     .start_method(StartMethod::Fork)
///     .target(|v: Vec<u32>| v.iter().sum::<u32>(), vec![1, 2, 3])?;
/// p.start()?;
/// assert_eq!(p.name(), "worker-1");
/// assert_eq!(p.join()?, 6);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    name: Option<String>,
    method: StartMethod,
    die_with_parent: bool,
    /// The key the spawn task is authenticated with (default: a fresh random one per process).
    key: Option<FnKey>,
    daemon: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            method: StartMethod::Spawn,
            die_with_parent: true,
            key: None,
            daemon: false,
        }
    }
}

impl Builder {
    /// A builder with the defaults: a generated name, [`StartMethod::Spawn`], dying with the parent.
    ///
    /// # Examples
    /// ```
    /// let mut p = mproc::process::Builder::new().target(|(): ()| 7u8, ())?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 7);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Self {
        Builder::default()
    }

    /// Names the process (default: `Process-<n>`, like Python).
    ///
    /// # Examples
    /// ```
    /// let p = mproc::Process::builder().name("loader").target(|(): ()| (), ())?;
    /// assert_eq!(p.name(), "loader");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Chooses how the process is started (default [`StartMethod::Spawn`]).
    ///
    /// # Examples
    /// ```
    /// use mproc::StartMethod;
    /// let p = mproc::Process::builder()
    ///     .start_method(StartMethod::ForkServer)
    ///     .target(|(): ()| (), ())?;
    /// assert_eq!(p.start_method(), StartMethod::ForkServer);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = method;
        self
    }

    /// Whether the child exits when this process dies (default `true`). See the
    /// [module docs](crate::process#children-die-with-their-parent).
    ///
    /// With `false`, this process may exit right after [`start`](Process::start): for the spawn start
    /// method `start` returns only once the child has checked that this process is its parent (about a
    /// millisecond after its `exec` here; at most 10 s for a child held up before that check).
    ///
    /// # Examples
    /// ```
    /// // A child that may outlive us (it still ends when its work is done):
    /// let mut p = mproc::Process::builder()
    ///     .die_with_parent(false)
    ///     .target(|n: u64| (1..=n).product::<u64>(), 5)?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 120);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn die_with_parent(mut self, yes: bool) -> Self {
        self.die_with_parent = yes;
        self
    }

    /// Whether the child is a daemon (default `false`): a daemon is killed when its [`Process`] is
    /// dropped unjoined, a non-daemon is waited for. See the
    /// [module docs](crate::process#dropping-a-running-process).
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::builder().daemon(true).target(forever, ())?;
    /// p.start()?;
    /// drop(p); // killed and reaped: a non-daemon would be waited for forever
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn daemon(mut self, yes: bool) -> Self {
        self.daemon = yes;
        self
    }

    /// Spawns with `key` as the key of the spawn channel; the child can read it back with
    /// `bootstrap::spawn_key()` (a child of the fork server: `forkserver::requester_key()`). A pool
    /// hands its workers the pool's key this way.
    pub(crate) fn spawn_key(mut self, key: FnKey) -> Self {
        self.key = Some(key);
        self
    }

    /// A process that will run `f(args)`, with the start method chosen. Not started yet. The argument may
    /// be borrowed as for [`Process::new`] (see [`ProcessArg`]), with every start method.
    ///
    /// # Examples
    /// ```
    /// use mproc::{Process, StartMethod};
    ///
    /// fn shout(word: &str) -> String {
    ///     word.to_uppercase()
    /// }
    ///
    /// let mut p = Process::builder().start_method(StartMethod::Fork).target(shout, "hey")?;
    /// p.start()?;
    /// assert_eq!(p.join()?, "HEY");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`] if `args` cannot be serialized.
    ///
    /// # Panics
    /// With [`StartMethod::Spawn`], if `f` is not code of the running executable (a function of a
    /// dynamic library): its offset would mean nothing in the child.
    #[track_caller]
    pub fn target<A, M, R>(self, f: fn(A) -> R, args: A) -> Result<Process<R>>
    where
        A: ProcessArg<M>,
        R: Serialize + DeserializeOwned,
    {
        let func = bootstrap::spawn_fn(f);
        if self.method != StartMethod::Fork {
            assert!(
                func.is_in_main_executable(),
                "mproc: a spawned process can only run a function of the main executable"
            );
        }
        let args = postcard::to_allocvec(&args).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(self.build(Target::Function { func, args }))
    }

    /// A process that will run the closure `f` in a forked child (the start method is always
    /// [`StartMethod::Fork`] for closures). Not started yet. See the [fork caveats](crate::process#fork-caveats).
    ///
    /// # Examples
    /// ```
    /// let data = vec![3u64, 4, 5];
    /// let mut p = mproc::Process::builder().fork(move || data.iter().product::<u64>());
    /// p.start()?;
    /// assert_eq!(p.join()?, 60);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn fork<F, R>(mut self, f: F) -> Process<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Serialize + DeserializeOwned,
    {
        self.method = StartMethod::Fork;
        let body: fork::Body = Box::new(move || {
            postcard::to_allocvec(&f()).map_err(|e| Failure::ResultEncode(e.to_string()))
        });
        self.build(Target::Closure(body))
    }

    fn build<R>(self, target: Target) -> Process<R> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = self
            .name
            .unwrap_or_else(|| format!("Process-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        Process {
            name,
            method: self.method,
            die_with_parent: self.die_with_parent,
            key: self.key,
            daemon: self.daemon,
            target: Some(target),
            child: None,
            status: Cell::new(None),
            joined: false,
            _result: PhantomData,
        }
    }
}

/// A function running (or to be run) in a child process, returning an `R`.
///
/// Created by [`Process::new`] or a [`Builder`], started by [`Process::start`], finished by
/// [`Process::join`]. Dropping a started process that was not joined waits for it (or kills it, for a
/// [daemon](Builder::daemon)); see the
/// [module docs](crate::process#dropping-a-running-process).
///
/// # Examples
/// ```
/// fn greet(name: String) -> String {
///     format!("hello, {name}")
/// }
///
/// let mut p = mproc::Process::new(greet, "Bob".to_owned())?;
/// p.start()?;
/// assert_eq!(p.join()?, "hello, Bob");
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), mproc::Error>(())
/// ```
#[must_use = "a process does nothing until started"]
pub struct Process<R> {
    name: String,
    method: StartMethod,
    die_with_parent: bool,
    key: Option<FnKey>,
    daemon: bool,
    target: Option<Target>,
    child: Option<Child>,
    /// How the child ended, once reaped.
    status: Cell<Option<WaitStatus>>,
    joined: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("pid", &self.pid())
            .field("status", &self.status.get())
            .finish_non_exhaustive()
    }
}

impl<R: Serialize + DeserializeOwned> Process<R> {
    /// A process that will run `f(args)` with the default settings ([`StartMethod::Spawn`]).
    ///
    /// `f` must be a function pointer: a `fn` item or a closure that captures nothing.
    ///
    /// # Errors
    /// [`Error::Encode`] if `args` cannot be serialized.
    ///
    /// # Panics
    /// If `f` is not code of the running executable (see [`Builder::target`]).
    ///
    /// # Examples
    /// ```
    /// let mut p = mproc::Process::new(|s: String| s.len(), "hello".to_owned())?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// The argument may be borrowed: `&str`, `&[u8]`, or `&T` of a serde type (see [`ProcessArg`]).
    /// ```
    /// fn greet(name: &str) -> String {
    ///     format!("hello, {name}")
    /// }
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Job {
    ///     words: Vec<String>,
    /// }
    ///
    /// fn count(job: &Job) -> usize {
    ///     job.words.len()
    /// }
    ///
    /// let mut p = mproc::Process::new(greet, "Bob")?;
    /// p.start()?;
    /// assert_eq!(p.join()?, "hello, Bob");
    ///
    /// let job = Job { words: vec!["a".into(), "b".into()] };
    /// let mut p = mproc::Process::new(count, &job)?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// A capturing closure cannot be sent to another executable image, and does not compile:
    /// ```compile_fail
    /// let k = 10u32;
    /// let p = mproc::Process::new(move |x: u32| x + k, 1);
    /// ```
    #[track_caller]
    pub fn new<A: ProcessArg<M>, M>(f: fn(A) -> R, args: A) -> Result<Self> {
        Builder::new().target(f, args)
    }
}

impl Process<()> {
    /// A [`Builder`] with the defaults.
    ///
    /// # Examples
    /// ```
    /// let mut p = mproc::Process::builder().name("sq").target(|x: i32| x * x, -4)?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 16);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<R> Process<R> {
    /// The process's name.
    ///
    /// # Examples
    /// ```
    /// let p = mproc::Process::new(|(): ()| (), ())?;
    /// assert!(p.name().starts_with("Process-")); // Python's default naming
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it is (or will be) started.
    ///
    /// # Examples
    /// ```
    /// let p = mproc::Process::new(|(): ()| (), ())?;
    /// assert_eq!(p.start_method(), mproc::StartMethod::Spawn);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Starts the child.
    ///
    /// # Errors
    /// [`Error::ProcessState`] if it was already started; [`Error::Os`] if the system refuses to create
    /// the process, or if this process ignores `SIGCHLD` (the kernel would reap the child unasked:
    /// its end could not be reported) and the start method is fork or spawn.
    ///
    /// # Examples
    /// ```
    /// let mut p = mproc::Process::new(|x: u8| x, 1)?;
    /// p.start()?;
    /// assert!(matches!(p.start(), Err(mproc::Error::ProcessState(_)))); // once only
    /// assert_eq!(p.join()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start(&mut self) -> Result<()> {
        let target = self.target.take().ok_or(Error::ProcessState(
            "the process was already started".into(),
        ))?;
        let child = match (self.method, target) {
            (StartMethod::Spawn, Target::Function { func, args }) => {
                let key = self.key.unwrap_or_else(FnKey::random);
                spawn::start(func, key, &args, self.die_with_parent)?
            }
            (StartMethod::ForkServer, Target::Function { func, args }) => {
                forkserver::start(func, &args, self.die_with_parent, self.key)?
            }
            (StartMethod::Fork, Target::Function { func, args }) => {
                let (f, adapter) = func.parts();
                // Leaked in the child only (it runs once and exits): the argument may borrow from it.
                fork::start(
                    Box::new(move || adapter(f, Vec::leak(args))),
                    self.die_with_parent,
                )?
            }
            (_, Target::Closure(body)) => fork::start(body, self.die_with_parent)?,
        };
        self.child = Some(child);
        Ok(())
    }

    /// The child's pid, once started.
    ///
    /// # Examples
    /// ```
    /// let mut p = mproc::Process::new(|(): ()| std::process::id(), ())?;
    /// assert_eq!(p.pid(), None);
    /// p.start()?;
    /// let pid = p.pid().expect("started");
    /// assert_eq!(p.join()?, pid); // the child saw the same pid
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Whether the child was started and has not terminated yet.
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::builder().daemon(true).target(forever, ())?;
    /// assert!(!p.is_alive());
    /// p.start()?;
    /// assert!(p.is_alive());
    /// p.kill()?;
    /// assert!(p.join().is_err());
    /// assert!(!p.is_alive());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_alive(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        if self.poll().is_some() {
            return false;
        }
        // A fork-server child whose server died may have ended with nobody able to say how (see
        // `forkserver::orphan_status`): `poll` then knows nothing, but its pidfd still says it ended.
        child.via_server.is_none()
            || !psys::wait_readable(&child.pidfd, Some(Duration::ZERO)).unwrap_or(false)
    }

    /// Whether the process is still alive after waiting up to `patience` for it to end: woken by its
    /// pidfd the moment it terminates, not by polling. The verdict is [`Process::is_alive`]'s, which
    /// reaps an ended child of ours (its status is kept for `exitcode` and join); not started: `false`.
    pub(crate) fn alive_after(&self, patience: Duration) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        // A pidfd turns readable when its process has terminated, whoever its parent is. An error of
        // the poll (none is expected on a pidfd we hold) leaves the verdict to `is_alive`.
        let _ = psys::wait_readable(&child.pidfd, Some(patience));
        self.is_alive()
    }

    /// The exit code once the child has terminated: its code, or `-signum` if a signal killed it (as in
    /// Python). `None` while it runs or before it starts.
    ///
    /// # Examples
    /// ```
    /// fn quit(code: i32) {
    ///     std::process::exit(code)
    /// }
    ///
    /// let mut p = mproc::Process::new(quit, 3)?;
    /// p.start()?;
    /// assert!(matches!(p.join(), Err(mproc::Error::ProcessExited { .. })));
    /// assert_eq!(p.exitcode(), Some(3));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn exitcode(&self) -> Option<i32> {
        self.poll().map(|s| match s {
            WaitStatus::Exited(c) => c,
            WaitStatus::Signaled(s) => -s,
        })
    }

    /// Sends `SIGTERM` to the child. Does nothing if it has already terminated.
    ///
    /// # Errors
    /// [`Error::ProcessState`] if it was not started.
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::new(forever, ())?;
    /// p.start()?;
    /// p.terminate()?;
    /// assert!(matches!(p.join(), Err(mproc::Error::ProcessKilled { .. })));
    /// assert_eq!(p.exitcode(), Some(-15)); // -SIGTERM, as in Python
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&self) -> Result<()> {
        self.signal(psys::SIGTERM)
    }

    /// Sends `SIGKILL` to the child. Does nothing if it has already terminated.
    ///
    /// # Errors
    /// [`Error::ProcessState`] if it was not started.
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::new(forever, ())?;
    /// assert!(matches!(p.kill(), Err(mproc::Error::ProcessState(_)))); // not started
    /// p.start()?;
    /// p.kill()?;
    /// assert!(matches!(p.join(), Err(mproc::Error::ProcessKilled { .. })));
    /// assert_eq!(p.exitcode(), Some(-9));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn kill(&self) -> Result<()> {
        self.signal(psys::SIGKILL)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or(Error::ProcessState("the process was not started".into()))?;
        // Through the pidfd: after the child is reaped this fails with ESRCH instead of reaching a
        // process that inherited its pid.
        psys::send_signal(&child.pidfd, sig).map(drop)
    }

    /// What signals the child after this `Process` moved elsewhere (to the thread that joins it for
    /// a [`JoinFuture`](crate::integrations::future::JoinFuture)), and whether dropping it unjoined
    /// should kill the child (a daemon). `None` if the child was not started.
    ///
    /// # Errors
    /// [`Error::Os`] if the pidfd cannot be duplicated (out of descriptors).
    #[cfg(feature = "async")]
    pub(crate) fn signaller(&self) -> Result<Option<(Signaller, bool)>> {
        let Some(child) = &self.child else {
            return Ok(None);
        };
        let pidfd = child
            .pidfd
            .try_clone()
            .map_err(|e| Error::os("duplicate a pidfd", e))?;
        Ok(Some((Signaller(pidfd), self.daemon)))
    }

    /// Reaps the child if it has terminated, and returns how it ended.
    fn poll(&self) -> Option<WaitStatus> {
        if let Some(s) = self.status.get() {
            return Some(s);
        }
        let child = self.child.as_ref()?;
        let s = child.reap(false, Duration::ZERO).ok()??;
        self.status.set(Some(s));
        Some(s)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to finish and returns its result.
    ///
    /// # Errors
    /// - [`Error::ProcessPanicked`] if the function panicked, with its message and location;
    /// - [`Error::ProcessKilled`] if a signal killed the child;
    /// - [`Error::ProcessExited`] if it exited without returning (e.g. `std::process::exit`);
    /// - [`Error::Decode`] / [`Error::Encode`] if the argument or result did not (de)serialize;
    /// - [`Error::ExecutableMismatch`] if the child found a different executable file;
    /// - [`Error::ProcessState`] if it was not started, or already joined.
    ///
    /// # Examples
    /// ```
    /// fn risky(x: i32) -> i32 {
    ///     assert!(x >= 0, "negative input");
    ///     x
    /// }
    ///
    /// let mut ok = mproc::Process::new(risky, 5)?;
    /// let mut bad = mproc::Process::new(risky, -1)?;
    /// ok.start()?;
    /// bad.start()?;
    /// assert_eq!(ok.join()?, 5);
    /// match bad.join() {
    ///     Err(mproc::Error::ProcessPanicked { message, .. }) => assert!(message.contains("negative")),
    ///     other => panic!("expected a panic report, got {other:?}"),
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join(&mut self) -> Result<R> {
        self.join_inner(None)
    }

    /// Like [`join`](Process::join), but gives up after `timeout`, leaving the child running.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the child is still running after `timeout` (join again later), otherwise as
    /// [`join`](Process::join).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::builder().daemon(true).target(forever, ())?;
    /// p.start()?;
    /// assert!(matches!(p.join_timeout(Duration::from_millis(10)), Err(mproc::Error::Timeout)));
    /// p.kill()?;
    /// assert!(p.join_timeout(Duration::from_secs(10)).is_err()); // killed, reported as such
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_inner(Some(timeout))
    }

    fn join_inner(&mut self, timeout: Option<Duration>) -> Result<R> {
        if self.joined {
            return Err(Error::ProcessState("the process was already joined".into()));
        }
        let child = self
            .child
            .as_ref()
            .ok_or(Error::ProcessState("the process was not started".into()))?;
        let status = match self.status.get() {
            Some(s) => s,
            None => {
                let s = match &child.via_server {
                    // A child of the fork server: its end is reported on its status socket, which
                    // `Status::join` waits on (not on the pidfd: see there), within `timeout`.
                    Some(server) => server.join(child.pid, &child.pidfd, timeout)?,
                    None => {
                        if !psys::wait_readable(&child.pidfd, timeout)? {
                            return Err(Error::Timeout);
                        }
                        // The pidfd is readable: our own child has terminated, so this does not
                        // block.
                        child
                            .reap(true, Duration::ZERO)?
                            .ok_or(Error::ProcessState("lost the child".into()))?
                    }
                };
                self.status.set(Some(s));
                s
            }
        };
        self.joined = true;
        let outcome = read_outcome(&child.result)?;
        outcome_to_result(status, outcome, (child.pid, &self.name))
    }
}

/// Reads the outcome frame a child left in its result memfd. The memfd is writable by the child (and by
/// any process of our uid that re-opens it), so nothing about it is trusted: the frame header is read
/// first, and a body larger than [`bootstrap::MAX_RESULT_BYTES`] is an error, never an allocation.
/// `Ok(None)`: no complete report (the child died before writing one, or wrote garbage).
fn read_outcome(file: &File) -> Result<Option<Outcome>> {
    let mut head = [0u8; 16];
    match file.read_exact_at(&mut head, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::os("read result", e)),
    }
    let Some(len) = bootstrap::announced_len(bootstrap::OUTCOME_MAGIC, &head) else {
        return Ok(None);
    };
    if len > bootstrap::MAX_RESULT_BYTES {
        return Err(Error::MessageTooLarge {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max: bootstrap::MAX_RESULT_BYTES as usize,
        });
    }
    // `len` is capped above. A file shorter than the frame it announces is a child that died
    // mid-write: no report, and nothing allocated for it.
    let size = file.metadata().map_err(|e| Error::os("fstat", e))?.len();
    if size < 16 + len {
        return Ok(None);
    }
    // Another process of our uid can re-open the memfd and grow it sparse for free, with a header
    // announcing all of it: the child writes every byte it reports, so a body with holes is garbage,
    // and nothing is allocated for it.
    if !crate::sys::shm::is_all_data(file, 16, len)? {
        return Ok(None);
    }
    let mut bytes = vec![0u8; 16 + len as usize];
    bytes[..16].copy_from_slice(&head);
    match file.read_exact_at(&mut bytes[16..], 16) {
        Ok(()) => Ok(bootstrap::decode_outcome(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::os("read result", e)),
    }
}

/// The child's result, or the error that says how it failed; `who` is its (pid, name).
fn outcome_to_result<R: DeserializeOwned>(
    status: WaitStatus,
    outcome: Option<Outcome>,
    who: (u32, &str),
) -> Result<R> {
    match (outcome, status) {
        // A panic report stands for how the child ended only if it ended as a panicking task does
        // (exit code 101 after unwinding, or SIGABRT under `panic = "abort"`): a child that published
        // a panic and then exited otherwise, or was killed, is reported by how it really ended.
        (Some(Outcome::Panic { message, location }), s)
            if s == WaitStatus::Exited(bootstrap::EXIT_PANIC)
                || s == WaitStatus::Signaled(psys::SIGABRT) =>
        {
            Err(Error::ProcessPanicked { message, location })
        }
        (Some(Outcome::Failed(f)), _) => Err(match f {
            Failure::ArgDecode(ty, reason) => Error::Decode {
                ty: "the process argument".into(),
                reason: format!("{ty}: {reason}"),
            },
            Failure::ResultEncode(reason) => Error::Encode(reason),
            Failure::ExeMismatch(what) => Error::ExecutableMismatch(what),
            Failure::Setup(what) => Error::os("child process setup", std::io::Error::other(what)),
        }),
        // All of it, as `Serde` decodes: a remainder means the child wrote something else.
        (Some(Outcome::Value(v)), WaitStatus::Exited(0)) => crate::codec::postcard_whole(&v),
        (_, WaitStatus::Signaled(signal)) => Err(Error::ProcessKilled {
            signal,
            pid: who.0,
            name: who.1.to_owned(),
        }),
        (_, WaitStatus::Exited(code)) => Err(Error::ProcessExited {
            code,
            pid: who.0,
            name: who.1.to_owned(),
        }),
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        let Some(child) = &self.child else { return };
        if self.status.get().is_some() {
            return;
        }
        // A daemon is killed, a non-daemon waited for (see the module docs); both are reaped. Errors
        // are ignored: ESRCH means it already ended, and the blocking reap collects it either way.
        if self.daemon {
            let _ = psys::send_signal(&child.pidfd, psys::SIGKILL);
        }
        let _ = child.reap(true, forkserver::ORPHAN_REAP_WAIT);
    }
}
