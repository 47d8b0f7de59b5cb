//! Child processes: fork, pidfds, waiting, signals, immediate exit, and the identity of the running
//! executable.
//!
//! Waiting and signalling go through a pidfd (pidfd_open(2), Linux 5.3+) wherever a race with pid reuse
//! is possible: a pidfd names one process for its whole life, so a signal sent through it after the child
//! was reaped fails with `ESRCH` instead of hitting whoever got the pid next.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `SIGKILL`, for [`send_signal`].
pub(crate) const SIGKILL: i32 = libc::SIGKILL;
/// `SIGTERM`, for [`send_signal`].
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// `SIGABRT`: how a `panic = "abort"` program ends.
pub(crate) const SIGABRT: i32 = libc::SIGABRT;

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// What [`fork`] returned in this process.
#[derive(Debug)]
pub(crate) enum Fork {
    /// We are the parent; the child has this pid.
    Parent(u32),
    /// We are the child.
    Child,
}

/// Forks the calling process.
///
/// # Safety
/// In the child only the calling thread exists. Until it calls [`exit_immediately`], the child must not
/// take any lock another thread of the parent may have held at the time of the fork (stdout, a `Mutex`, a
/// pool lock); glibc's `malloc` is made safe across fork by glibc itself. The child must never return into
/// code that assumes the parent's other threads still run.
pub(crate) unsafe fn fork() -> Result<Fork> {
    // SAFETY: fork(2) itself has no preconditions; what the child may do afterwards is the caller's
    // contract, stated above.
    match unsafe { libc::fork() } {
        -1 => Err(Error::last_os("fork")),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid as u32)),
    }
}

/// Ends the calling process at once with `code`: no atexit handlers, no destructors, no stdio flush.
/// The only correct way out of a forked child (the parent's atexit handlers must not run twice).
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// A pidfd for `pid`, close-on-exec. The caller must make sure `pid` is not recycled meanwhile: it is an
/// unreaped child of ours.
pub(crate) fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word (0: the descriptor is close-on-exec by default,
    // pidfd_open(2)) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Error::last_os("pidfd_open"));
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The pid of the parent a child must die with (0: not armed). Read by the signal handler.
static LIFELINE_PARENT: AtomicU32 = AtomicU32::new(0);
static LIFELINE_EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// The signal the kernel sends us when our parent goes away. A real-time signal that no library we know
/// of uses; a task that installs its own handler for it gives up death-with-parent.
fn lifeline_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_parent_death(_: libc::c_int) {
    // Async-signal-safe: an atomic load, getppid and _exit only.
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() } as u32;
    if ppid != LIFELINE_PARENT.load(Ordering::Relaxed) {
        exit_immediately(LIFELINE_EXIT_CODE.load(Ordering::Relaxed));
    }
}

/// Makes this process `_exit(code)` as soon as the process `parent` (which must be our parent) has
/// terminated, or right now if it already has.
///
/// Built on `PR_SET_PDEATHSIG`, whose signal the kernel sends not only when the parent process dies but
/// whenever this process is re-parented, which includes the exit of the parent *thread* that created us
/// (we are then handed to another thread of the same process, kernel/exit.c, `forget_original_parent`:
/// the signal goes out on every re-parenting, and the setting stays armed). So the handler does not exit
/// on the signal alone: it exits only if `getppid()` no longer names `parent`, which is true exactly when
/// the whole parent process is gone (we were handed to a subreaper or init). The setting survives
/// `execve` of a normal binary (prctl(2)), and is not inherited by our own children.
pub(crate) fn exit_with_parent(parent: u32, code: i32) -> Result<()> {
    LIFELINE_PARENT.store(parent, Ordering::Relaxed);
    LIFELINE_EXIT_CODE.store(code, Ordering::Relaxed);
    let sig = lifeline_signal();
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); we then set a handler of the type
    // sa_sigaction expects for a handler without SA_SIGINFO, `extern "C" fn(c_int)`, which is
    // async-signal-safe (see `on_parent_death`).
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(Error::last_os("sigaction"));
    }
    // A blocked signal stays pending and its handler never runs. A forked child inherits the signal
    // mask of the thread that forked it, and a program that blocks every signal in every thread (to
    // take them with `sigwait` or a `signalfd`, a classic pattern) left its forked children running
    // after its death (found by review). Only this signal is unblocked, in this thread, which is the
    // child's only one at this point (threads it starts later inherit the mask).
    // SAFETY: `set` is a local sigset_t, initialised by sigemptyset before sigaddset and
    // pthread_sigmask read it; a null old-set pointer is allowed (pthread_sigmask(3)).
    let r = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(Error::os(
            "pthread_sigmask",
            std::io::Error::from_raw_os_error(r),
        ));
    }
    // SAFETY: PR_SET_PDEATHSIG takes a signal number as its only argument (prctl(2)).
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Error::last_os("prctl(PR_SET_PDEATHSIG)"));
    }
    // If the parent died before the prctl, no signal will come: check once by hand, after arming.
    on_parent_death(sig);
    Ok(())
}

/// Waits until `fd` (a pidfd or pipe) is readable, for at most `timeout` (`None`: forever). Returns
/// whether it became readable. A pidfd becomes readable when its process has terminated (pidfd_open(2)).
pub(crate) fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> Result<bool> {
    wait_polled(fd.as_fd(), libc::POLLIN, timeout)
}

/// Waits until `fd` reports one of `events` (`poll(2)`: `POLLIN`, `POLLOUT`), for at most `timeout`
/// (`None`: forever). Returns whether it did.
pub(crate) fn wait_polled(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t)); // past the range: none
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that we never wake early and spin with a zero timeout.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd on this stack frame, and we pass a count of 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::os("poll", err));
        }
    }
}

/// Reaps child `pid` if it has ended (`block`: waits until it does). `Ok(None)` means it still runs.
pub(crate) fn waitpid(pid: u32, block: bool) -> Result<Option<WaitStatus>> {
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live int for the kernel to fill; `pid` is a child of ours.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, flags) };
        if r == 0 {
            return Ok(None);
        }
        if r > 0 {
            return Ok(Some(if libc::WIFSIGNALED(status) {
                WaitStatus::Signaled(libc::WTERMSIG(status))
            } else {
                WaitStatus::Exited(libc::WEXITSTATUS(status))
            }));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::os("waitpid", err));
        }
    }
}

/// Reaps the ended process of `pidfd` if it is a child of this process (`waitid(P_PIDFD, WNOHANG)`,
/// Linux 5.4): a process this one did not fork becomes its child when its parent dies and this
/// process is its subreaper (`PR_SET_CHILD_SUBREAPER`, or pid 1 in a container). `None`: not ended,
/// or not ours to reap. Never another process: the pidfd names this one process, whatever its pid.
pub(crate) fn reap_if_child(pidfd: &OwnedFd) -> Option<WaitStatus> {
    loop {
        // SAFETY: siginfo_t is plain data, for which all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live siginfo_t for the kernel to fill; P_PIDFD takes the descriptor,
        // which we hold, as the id (waitid(2)); WNOHANG: never blocks.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r == 0 {
            // SAFETY: filled by a successful waitid: `si_pid` is 0 when nothing was reaped (WNOHANG),
            // else `si_code` and `si_status` say how the process ended (waitid(2)).
            let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
            if pid == 0 {
                return None;
            }
            return Some(if code == libc::CLD_EXITED {
                WaitStatus::Exited(status)
            } else {
                WaitStatus::Signaled(status)
            });
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None; // ECHILD: not our child (or a kernel without P_PIDFD)
        }
    }
}

/// Sends `signal` to the process of `pidfd`. Returns `Ok(false)` if it has already terminated.
pub(crate) fn send_signal(pidfd: &OwnedFd, signal: i32) -> Result<bool> {
    // SAFETY: pidfd_send_signal takes a pidfd, a signal number, a null siginfo (meaning: as kill(2)
    // would fill it) and flags 0 (pidfd_send_signal(2)).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(false);
    }
    Err(Error::os("pidfd_send_signal", err))
}

/// Kills and reaps our unreaped child `pid` (used only when no pidfd could be made for it). While we have
/// not reaped it, `pid` cannot be recycled, so `kill` reaches the right process.
pub(crate) fn kill_and_reap(pid: u32) {
    // SAFETY: kill(2) with a valid signal has no memory-safety preconditions; `pid` is our unreaped
    // child (see above).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let _ = waitpid(pid, true);
}

/// Makes the C allocator (glibc's malloc, which Rust's `System` allocator is) keep the memory this
/// process frees, mapped and ready for its next allocation, instead of handing it back to the kernel:
/// no allocation is served by its own `mmap` (glibc always does that for blocks above 32 MiB, and
/// `munmap`s them when freed), and the top of the heap is trimmed only past 2 GiB of free memory.
///
/// For a pool worker, whose calls allocate the same large buffers again and again (a 64 MiB `Vec`
/// decoded per call), this turns every call after the first from a first-touch page fault per 4 KiB
/// (1–3.5 µs each on this crate's VMs: ~30 ms for 64 MiB) into reuse of pages already mapped. The
/// price is that the process's resident size stays at its peak. Harmless with any other global
/// allocator: these are glibc's parameters only.
pub(crate) fn retain_freed_memory() {
    // SAFETY: mallopt(3) only sets malloc's tuning parameters (under malloc's own lock); any values
    // are valid and no memory is touched. M_MMAP_MAX 0: never mmap an allocation of its own;
    // M_TRIM_THRESHOLD: return free heap top to the kernel only past 2 GiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Writes `bytes` to standard error with one `write(2)`, taking no lock (usable in a forked child and in
/// a panic hook). Errors are ignored: there is nowhere left to report them.
pub(crate) fn write_stderr_raw(bytes: &[u8]) {
    // SAFETY: the pointer and length describe a live byte slice; fd 2 is not owned by Rust code that
    // could be confused by a write.
    let _ = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Writes the whole of `bytes` at offset 0 of the file open as `fd`, after truncating it, taking no lock.
/// Used by a child to publish its result into the memfd its parent reads.
pub(crate) fn replace_contents(fd: RawFd, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: `fd` is open for the whole call (the caller keeps it open); ManuallyDrop keeps this
    // borrowed File from closing it.
    let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(0)?;
    file.write_all_at(bytes, 0)
}

/// The identity of an executable file: a file replaced on disk (rebuilt, upgraded) differs in at least
/// one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExeId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

/// The identity of the file this process is running (`/proc/self/exe`, which keeps naming the same
/// inode even if the path was since replaced or deleted).
pub(crate) fn current_exe_id() -> Result<ExeId> {
    let m =
        std::fs::metadata("/proc/self/exe").map_err(|e| Error::os("stat(/proc/self/exe)", e))?;
    Ok(ExeId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// The load address of the executable or shared object containing `addr`, if any.
pub(crate) fn object_base(addr: usize) -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads its address argument (it is not dereferenced) and fills `info`, a live
    // Dl_info on this stack frame; zeroed is a valid bit pattern for it (null pointers).
    let r = unsafe { libc::dladdr(addr as *const libc::c_void, info.as_mut_ptr()) };
    if r == 0 {
        return None;
    }
    // SAFETY: dladdr returned non-zero, so it filled the structure (dladdr(3)).
    let info = unsafe { info.assume_init() };
    (!info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// The load address of the main executable (the program the kernel exec'd), found from the program
/// headers the kernel hands the loader (`AT_PHDR`, getauxval(3)), which lie inside its first segment.
/// `None` if that cannot be told (dladdr fails, e.g. in a static binary): callers then refuse to turn
/// offsets into code.
pub(crate) fn main_executable_base() -> Option<usize> {
    static BASE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not supply.
        let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
        if phdr == 0 {
            return None;
        }
        object_base(phdr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_id_is_stable() {
        assert_eq!(current_exe_id().unwrap(), current_exe_id().unwrap());
    }

    #[test]
    fn object_base_of_our_code() {
        let here = object_base_of_our_code as fn() as usize;
        let base = object_base(here).unwrap();
        assert!(base <= here);
        assert_eq!(object_base(0), None);
        // Unit tests run in the main executable: our code is in it.
        assert_eq!(main_executable_base(), Some(base));
    }

    #[test]
    fn pidfd_of_self_is_not_readable() {
        let fd = pidfd_open(std::process::id()).unwrap();
        assert!(!wait_readable(&fd, Some(Duration::ZERO)).unwrap());
    }
}
