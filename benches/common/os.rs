//! The unsafe code the benches share: fork with a reaped child, pipes, and a page shared with forked
//! children.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A forked child, killed and reaped on drop unless waited for.
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Makes glibc's malloc keep what this process (and the children it forks afterwards) frees, as a pool's
/// workers do by default (`PoolBuilder::retain_worker_memory`): no allocation gets an `mmap` of its own,
/// and free memory is trimmed only past 2 GiB. A bench that compares the pool with pipes calls it first,
/// so that its baseline's processes pay no more page faults for fresh buffers than the workers do.
#[allow(dead_code)] // not every bench compares against its own processes
pub fn retain_freed_memory() {
    // SAFETY: mallopt(3) only sets malloc's tuning parameters, under malloc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Runs `f` in a forked child that exits with `_exit` (0 if `f` returned, 1 if it panicked).
///
/// The benches call this only while they are single-threaded (thread variants join their threads, pools
/// are built after the fork), so the child inherits no lock held by a vanished thread.
pub fn fork(f: impl FnOnce()) -> Child {
    // Unflushed output would otherwise be printed twice; the child never flushes it (it `_exit`s).
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: fork(2) has no memory-safety preconditions. After a fork of a multi-threaded process the
    // child may only call async-signal-safe functions; the process is single-threaded here (see above),
    // so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: _exit ends the child without running destructors or atexit handlers (which would
        // unmap, unlink or close what the parent still uses); it has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    Child { pid, reaped: false }
}

impl Child {
    /// Waits for the child; whether it exited with status 0.
    pub fn wait(mut self) -> bool {
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our own child, not yet reaped; `status` is a live c_int.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.reaped = true;
                return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "waitpid: {e}");
        }
    }
}

impl Drop for Child {
    /// Reached unwaited only when the parent panics mid-measurement: the child may be blocked on a full
    /// channel, so kill it rather than leave it behind. Errors are ignored: we are unwinding.
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: `pid` is our own unreaped child, so it cannot have been recycled for another
            // process; kill and waitpid touch no memory but the live `status`.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// A pipe, as (read end, write end), close-on-exec so that spawned (exec'd) processes such as pool
/// workers do not inherit it; forked children do (fork keeps every fd).
pub fn pipe() -> (File, File) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of two c_ints, as pipe2(2) requires.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2(2) succeeded, so both fds are open and owned by nobody else: each File takes sole
    // ownership and closes it on drop.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Resizes a pipe's buffer (fcntl F_SETPIPE_SZ); the kernel may round it up.
pub fn set_pipe_size(end: &File, bytes: usize) {
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours; the fd is open (owned by `end`).
    let r = unsafe { libc::fcntl(end.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
    assert!(
        r >= bytes as libc::c_int,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

const PAGE: usize = 4096;

/// One zeroed `MAP_SHARED | MAP_ANONYMOUS` page: shared with children forked after it is made.
pub struct ShmPage {
    ptr: *mut u8,
}

impl ShmPage {
    pub fn new() -> ShmPage {
        // SAFETY: a fresh anonymous mapping with a null address hint does not touch any existing
        // mapping (mmap(2)); the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        ShmPage { ptr: p.cast() }
    }

    /// A typed pointer at `offset`, checked to fit in the page and be aligned for `T`.
    pub fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + std::mem::size_of::<T>() <= PAGE
                && offset.is_multiple_of(std::mem::align_of::<T>())
        );
        self.ptr.wrapping_add(offset).cast()
    }

    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `at` checked bounds and alignment; the page is zero-initialised (mmap(2): anonymous
        // mappings are zero-filled), a valid AtomicU32 (same layout as u32), lives as long as `self`,
        // and is only accessed atomically.
        unsafe { AtomicU32::from_ptr(self.at(offset)) }
    }

    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in `atomic_u32`; page offsets that are multiples of 8 are 8-aligned.
        unsafe { AtomicU64::from_ptr(self.at(offset)) }
    }
}

impl Drop for ShmPage {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the PAGE-long mapping made in `new`, unmapped once; every reference into it
        // borrows `self`, so none outlives this. An error cannot be acted on in drop: ignored.
        unsafe { libc::munmap(self.ptr.cast(), PAGE) };
    }
}
