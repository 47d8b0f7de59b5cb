//! The spawn channel's platform calls: the descriptors a parent hands to a re-executed child, and the
//! checks a child makes before it believes any of them.
//!
//! A spawned child inherits three descriptors, named in its environment (`process::bootstrap`):
//! - the **task**: a memfd sealed against writes, shrinking and growing before the child exists. Sealing
//!   comes after writing, and until then any process of our uid can re-open the memfd through
//!   `/proc/<parent>/fd` and rewrite it: what the child may trust is the MAC beside the key;
//! - the **key socket**: one end of an `AF_UNIX` socketpair holding one packet: the 16-byte key that
//!   authenticates the task's function reference, and the 8-byte MAC of the whole task frame under it
//!   ([`key_packet`]). A socket cannot be re-opened through `/proc/<pid>/fd` (open(2) on it fails with
//!   `ENXIO`), so no other process can read the key or forge the MAC; taking the descriptor itself
//!   (`pidfd_getfd`) needs ptrace rights over the child, which are enough to take the child over anyway;
//! - the **result**: an empty memfd the child writes its outcome into.
//!
//! They are close-on-exec in the parent, and made inheritable only in the forked child between `fork`
//! and `exec` (`pre_exec`), so programs that other threads of the parent start meanwhile never get them.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::error::{Error, Result};

/// Whether this process runs with elevated privileges it did not have before `exec` (setuid, setgid,
/// file capabilities, an LSM transition): the loader's `AT_SECURE` (getauxval(3)). Such a process must
/// not trust its environment.
pub(crate) fn at_secure() -> bool {
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not supply.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The pid of this process's parent.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Whether `SIGCHLD` is ignored in this process. The kernel then reaps children on its own
/// (sigaction(2), "SA_NOCLDWAIT"), so a child's pid can be recycled before we wait for it or open a
/// pidfd on it: spawning is refused rather than risking signals to a stranger.
pub(crate) fn sigchld_ignored() -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action sigaction only writes the current one into `old`, a live local.
    let r = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), old.as_mut_ptr()) };
    if r != 0 {
        return false;
    }
    // SAFETY: sigaction succeeded and filled `old` (zeroed is a valid bit pattern anyway).
    let old = unsafe { old.assume_init() };
    old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0
}

/// `Err` if SIGCHLD is ignored in this process ([`sigchld_ignored`]): the kernel would then reap
/// our children behind our back (no status to report, and their pids free for reuse), so starting
/// one by `method` is refused.
pub(crate) fn refuse_if_sigchld_ignored(method: &'static str) -> Result<()> {
    if sigchld_ignored() {
        return Err(Error::os(
            method,
            std::io::Error::other(
                "SIGCHLD is ignored in this process, so the kernel would reap children behind our \
                 back and their pids could be recycled; restore its default disposition to start one",
            ),
        ));
    }
    Ok(())
}

/// `Err` if a child that this process starts by executing its own file (`/proc/self/exe`) would run
/// with `AT_SECURE`: such a child ignores `MPROC_SPAWN_CHILD` (it must: `process::bootstrap`'s
/// environment contract) and runs `main` instead of its task, and that `main`, being this program's,
/// would spawn again, each generation waiting for the next, without end (found by review).
///
/// The kernel marks an exec secure when it leaves the effective ids unlike the real ones
/// (`cap_bprm_creds_from_file`): for certain when ours already differ (a setuid or setgid program
/// that kept its privileges), and when the file is set-user-ID to another user than ours or
/// set-group-ID to another group, or carries capabilities (and we are not root), unless these are
/// ignored: all of them on a `nosuid` mount, the set-id bits only under `no_new_privs` (which keeps
/// the capabilities from being granted, not the exec from being secure). Not told apart here: LSM
/// transitions, whose child ignores its task as well.
pub(crate) fn refuse_if_exec_is_secure(method: &'static str) -> Result<()> {
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids into the live locals they are given.
    let ok = unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid) == 0
            && libc::getresgid(&mut rgid, &mut egid, &mut sgid) == 0
    };
    if !ok {
        return Err(Error::last_os("getresuid"));
    }
    let mut secure = ruid != euid || rgid != egid;
    if !secure {
        let exe = std::fs::metadata("/proc/self/exe")
            .map_err(|e| Error::os("stat(/proc/self/exe)", e))?;
        let mode = exe.mode();
        let setuid = mode & libc::S_ISUID != 0 && exe.uid() != ruid;
        // Set-group-ID without group execute is the mandatory-locking mark, not a set-id program.
        let setgid = mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0 && exe.gid() != rgid;
        // File capabilities raise a process that is not root (the kernel skips the test for root).
        let root = ruid == 0 && euid == 0;
        // Under no_new_privs the kernel ignores the set-id bits, but an exec of a capability-bearing
        // file by a process that is not root is still secure (found by review: taking no_new_privs to
        // cancel both let such a program spawn a child that ran `main`).
        let set_id = (setuid || setgid) && !no_new_privs();
        secure = (set_id || (!root && has_file_capabilities())) && !nosuid_exe();
    }
    if secure {
        return Err(Error::os(
            method,
            std::io::Error::other(
                "this program runs with privileges its caller does not have, or its file is \
                 set-user-ID, set-group-ID or has capabilities: a re-executed child would run with \
                 AT_SECURE, which ignores the spawn channel and runs main instead of the task \
                 (StartMethod::Fork does not re-execute)",
            ),
        ));
    }
    Ok(())
}

/// `Err` if this program was started by running its dynamic loader explicitly (`ld.so PROGRAM`):
/// the kernel then exec'd the loader, so `/proc/self/exe`, which a spawned child executes, names the
/// loader, and the child would run the loader with no program (it prints "missing program name" and
/// exits). Found by review: every spawn then failed with the child's exit code, saying nothing of why.
///
/// Told apart without reading any file: the kernel passes `AT_BASE` (where it loaded the program's
/// interpreter) only when the program it exec'd names one (`PT_INTERP`); the loader rewrites
/// `AT_PHDR` to the program it loaded itself, whose headers do name one. So an interpreter named by
/// the program with no `AT_BASE` is a loader the kernel ran as the program. A static program names
/// none and passes.
pub(crate) fn refuse_if_started_by_loader(method: &'static str) -> Result<()> {
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not supply.
    let (base, phdr, phnum) = unsafe {
        (
            libc::getauxval(libc::AT_BASE),
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
        )
    };
    if base != 0 || phdr == 0 {
        return Ok(());
    }
    #[cfg(target_pointer_width = "64")]
    type Phdr = libc::Elf64_Phdr;
    #[cfg(target_pointer_width = "32")]
    type Phdr = libc::Elf32_Phdr;
    // SAFETY: `AT_PHDR` is the address of the main program's `AT_PHNUM` program headers, mapped (in
    // its first segment) for the life of the process and never written after loading; the ELF
    // format aligns them for `Phdr`.
    let headers = unsafe { std::slice::from_raw_parts(phdr as *const Phdr, phnum) };
    if headers.iter().any(|h| h.p_type == libc::PT_INTERP) {
        return Err(Error::os(
            method,
            std::io::Error::other(
                "this program was started through its dynamic loader (`ld.so PROGRAM`): the \
                 running executable is the loader, and a re-executed child would run the loader \
                 without the program (StartMethod::Fork does not re-execute)",
            ),
        ));
    }
    Ok(())
}

/// Whether our own file carries capabilities (`security.capability`, set by setcap(8)).
fn has_file_capabilities() -> bool {
    // SAFETY: both strings are NUL-terminated literals; with a null buffer of size 0 getxattr(2) only
    // returns the attribute's size (or -1, ENODATA when there is none) and writes nothing.
    let n = unsafe {
        libc::getxattr(
            c"/proc/self/exe".as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// Whether this process runs under `no_new_privs` (an exec then ignores set-id bits). Where that
/// cannot be told, no (refusing to spawn is the safe answer).
fn no_new_privs() -> bool {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no argument beyond the option and returns 0 or 1 (or -1).
    unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 }
}

/// Whether our own file is on a `nosuid` mount, where an `exec` ignores both its set-id bits and
/// its capabilities. Where that cannot be told, no (refusing to spawn is the safe answer).
fn nosuid_exe() -> bool {
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: the path is a NUL-terminated literal; statvfs writes one `statvfs` into `vfs`, a live
    // local (zeroed is a valid bit pattern for it).
    if unsafe { libc::statvfs(c"/proc/self/exe".as_ptr(), vfs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statvfs succeeded and filled `vfs`.
    let vfs = unsafe { vfs.assume_init() };
    vfs.f_flag & libc::ST_NOSUID != 0
}

/// Seals a memfd's contents for good: no more writes, no size change, no seal change.
pub(crate) fn seal_contents(file: &File) -> Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an int argument and only changes the file's seal set.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
    }
    Ok(())
}

/// A connected pair of `AF_UNIX` sequenced-packet sockets, close-on-exec: (parent's end, child's end).
pub(crate) fn key_socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, a live array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::last_os("socketpair"));
    }
    // SAFETY: socketpair succeeded: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd` itself, or, if it is 0, 1 or 2 (a parent started with its standard descriptors closed gets
/// those numbers for its next files), a close-on-exec duplicate numbered 3 or above. A spawned child's
/// 0-2 are set up by `Command` (to `/dev/null` or the parent's), over any channel descriptor that had
/// one of those numbers, and the child refuses a channel there.
pub(crate) fn above_standard(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC takes an int (the lowest number acceptable) and returns a new descriptor
    // of the same open file, or -1; `fd` stays open for the call.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(Error::last_os("fcntl(F_DUPFD_CLOEXEC)"));
    }
    // SAFETY: fcntl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Sends one packet. Used before the child exists: a fresh socket's buffer always has room for a key
/// packet, so this never blocks.
pub(crate) fn send_packet(sock: &OwnedFd, bytes: &[u8]) -> Result<()> {
    // SAFETY: the pointer and length describe a live byte slice; `sock` is an open socket.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n != bytes.len() as isize {
        return Err(Error::last_os("send(key socket)"));
    }
    Ok(())
}

/// Makes `fds` survive the `exec` of `cmd`'s child (only there: they stay close-on-exec here).
pub(crate) fn inherit_on_exec<const N: usize>(cmd: &mut Command, fds: [RawFd; N]) {
    let hook = move || {
        for fd in fds {
            // Async-signal-safe: fcntl only (signal-safety(7)).
            // SAFETY: F_SETFD with 0 clears FD_CLOEXEC on a descriptor this forked child inherited
            // from the parent's table; it touches no memory.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(hook) };
}

/// Ignores `SIGINT` (`yes`) or restores its default action: the fork server ignores an interactive
/// Ctrl-C aimed at its process group, and its children get the default back.
pub(crate) fn set_sigint_ignored(yes: bool) {
    let action = if yes { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: setting SIG_IGN or SIG_DFL installs no handler code; signal(2) only changes the
    // disposition. The previous disposition is not needed.
    unsafe { libc::signal(libc::SIGINT, action) };
}

/// Does what Rust's runtime does before `main`, for a child whose task runs before `main` (from the
/// `.init_array` constructor, see `process::bootstrap`) and so never gets it: `SIGPIPE` ignored, so
/// that a write to a closed pipe is an `Err(BrokenPipe)` as in any Rust program instead of death by
/// signal; and descriptors 0–2 open (on `/dev/null` where closed), so that the first file the task
/// opens never becomes its standard output. Programs the child starts with `std::process::Command`
/// get `SIGPIPE`'s default back, as from any Rust program.
///
/// Not done: std's stack-overflow handler (a `SIGSEGV` handler on an alternate stack that prints
/// "has overflowed its stack" before aborting), which is private to std. A task that overflows the
/// stack in a spawned child (or in a thread it starts: std installs that handler only from its own
/// runtime start) dies of `SIGSEGV` without that message, and its parent reports
/// `ProcessKilled { signal: 11 }`.
pub(crate) fn prepare_as_rust_main() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor's flags; it fails with EBADF for a closed number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // `open` returns the lowest free number: this one, since the lower ones are open. Kept open
        // for the process's life on purpose, as the runtime does. Best effort: with no descriptor
        // left, the task runs with the number closed, as it would have before.
        // SAFETY: the path is a NUL-terminated literal; the flags create nothing.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    }
    // SAFETY: setting SIG_IGN installs no handler code; signal(2) only changes the disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// A descriptor of the current working directory (`O_PATH`: it names the directory even if it was
/// renamed or removed), for a fork-server child to [`enter_dir`] so that it starts where its
/// requester is now, as a spawned child does. Opened through `/proc/self/cwd`, whose link the kernel
/// follows with no permission on the directory itself (`"."` needs search permission on it, which a
/// process may have given up after entering it); `"."` where `/proc` is not mounted.
pub(crate) fn open_current_dir() -> Result<OwnedFd> {
    let mut last = None;
    for path in [c"/proc/self/cwd", c"."] {
        // SAFETY: the path is a NUL-terminated literal; the flags create nothing. The returned
        // number is new and owned by nobody else.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by open(2) and is owned by nothing else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        last = Some(std::io::Error::last_os_error());
    }
    Err(Error::os(
        "open the working directory",
        last.unwrap_or_else(std::io::Error::last_os_error),
    ))
}

/// Makes the directory `dir` names the working directory (`fchdir`). A descriptor of anything but a
/// directory is refused by the kernel (`ENOTDIR`).
pub(crate) fn enter_dir(dir: BorrowedFd<'_>) -> std::result::Result<(), ChannelError> {
    // SAFETY: fchdir(2) takes a descriptor and touches no memory of ours.
    if unsafe { libc::fchdir(dir.as_raw_fd()) } != 0 {
        return Err(format!(
            "fchdir to the requester's working directory: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

extern "C" {
    /// The C library's environment (environ(7)): what `getenv`, `std::env` and `exec` read.
    static mut environ: *mut *mut libc::c_char;
}

/// Makes `entries` (each `name=value`) the whole environment of this process at once: a new
/// `environ` array, left to the process (it ends with it). One allocation, no scan: replacing
/// variable by variable costs a scan of the environment per call (4000 variables took 48 ms), and
/// `unsetenv` refuses names that the C library itself let into the environment (a name starting
/// with `=`), which `std::env::remove_var` turns into a panic.
///
/// # Safety
/// The calling process has a single thread: nothing reads or writes the environment meanwhile
/// (`std::env`'s lock is not taken). A later `setenv` copies the array (glibc reallocates an
/// `environ` it did not allocate), so the entries may stay leaked.
pub(crate) unsafe fn replace_environment(entries: Vec<std::ffi::CString>) {
    let mut array: Vec<*mut libc::c_char> = entries
        .into_iter()
        .map(std::ffi::CString::into_raw)
        .collect();
    array.push(std::ptr::null_mut());
    let array = Box::leak(array.into_boxed_slice());
    // SAFETY: single-threaded (the caller's contract), so no one reads `environ` while it changes;
    // the new array is NUL-terminated entries ending in a null pointer, as environ(7) requires, and
    // leaked, so it lives as long as the process.
    unsafe { environ = array.as_mut_ptr() };
}

/// Closes descriptor `fd` in a forked child that will never return into the code owning it.
///
/// # Safety
/// `fd` may be owned by an [`OwnedFd`] of the calling process; that owner must never be used or dropped
/// afterwards (the caller ends with `_exit`), or it would close a number that may have been reused.
pub(crate) unsafe fn close_in_forked_child(fd: RawFd) {
    // SAFETY: close(2) on a number has no memory-safety preconditions; the caller guarantees that no
    // owner of `fd` acts on it afterwards.
    unsafe { libc::close(fd) };
}

/// Why a child refuses what its environment names as its spawn channel. The message goes to stderr.
pub(crate) type ChannelError = String;

/// Takes ownership of an inherited descriptor named by the environment, if it is open. The number comes
/// from a variable anyone could have set; a closed or standard descriptor is refused.
fn adopt(fd: RawFd, what: &str) -> std::result::Result<OwnedFd, ChannelError> {
    // SAFETY: F_GETFD only queries the descriptor's flags; it fails with EBADF for a closed number.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("the {what} descriptor {fd} is not open"));
    }
    // SAFETY: the descriptor is open and was handed down to this process for this purpose; nothing else
    // in a process that is still before `main` owns it (checked by the caller's protocol: the parent
    // names it only in our environment, which we read once).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again, so it never reaches programs this child starts.
    // SAFETY: F_SETFD on an owned, open descriptor touches no memory.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(owned)
}

/// Whether the socket `sock`'s peer end was made by process `pid` with our effective uid *and* gid
/// (`SO_PEERCRED`: the creator's credentials when it made the pair, so it still names a parent that
/// has died since). A spawned child runs with exactly its parent's credentials (it execs
/// `/proc/self/exe`, and a set-id executable sets `AT_SECURE`, which ignores the channel). Other
/// credentials mean something changed them between the socket's maker and us, a set-id wrapper that
/// kept the environment and the descriptors, say: the maker chose the key, so it would choose what
/// we run with privileges it does not have. Comparing the uid alone let a setgid wrapper through
/// (found by review), and so did comparing uid and gid alone a wrapper that adds a supplementary
/// group (`setpriv --groups`, found by review): the creator's groups (`SO_PEERGROUPS`) must be ours
/// as well, as a set. Where the kernel cannot report them (before 4.13) they are not compared:
/// refusing there would make every real child run `main`, which spawns again, without end.
pub(crate) fn made_by(sock: BorrowedFd<'_>, pid: u32) -> bool {
    let same_ids = super::unix_socket::peer_cred(sock).is_ok_and(|(peer, uid, gid)| {
        peer == pid && uid == crate::sys::proc::euid() && gid == crate::sys::proc::egid()
    });
    // Our own groups unreadable (cannot happen before `main`): not compared either.
    same_ids
        && own_groups().is_none_or(|ours| {
            // Room for exactly our count: a creator with more groups is an error (ERANGE), not ours.
            match super::unix_socket::peer_groups(sock, ours.len()) {
                Ok(Some(theirs)) => theirs == ours,
                Ok(None) => true,
                Err(_) => false,
            }
        })
}

/// This thread's supplementary groups, sorted (getgroups(2)); `None` if they cannot be read.
fn own_groups() -> Option<Vec<u32>> {
    // SAFETY: with a size of 0, getgroups only returns the number of groups and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups = vec![0 as libc::gid_t; usize::try_from(n).ok()?];
    // SAFETY: getgroups writes at most `n` gids into `groups`, a live vector of `n` of them. Our
    // groups cannot change meanwhile unless another thread changes them; then it fails with EINVAL.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(got).ok()?);
    groups.sort_unstable();
    Some(groups)
}

/// Whether descriptor `fd` is a socket made by process `pid` with our credentials ([`made_by`]).
/// Only looks: the descriptor is not taken or closed, whatever it is (it may be the program's own).
pub(crate) fn is_socket_of(fd: RawFd, pid: u32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor's flags; it fails with EBADF for a closed number.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return false;
    }
    // SAFETY: `fd` is open (checked just above) and stays open for this call: this process is still
    // before `main`, single-threaded, and nothing here closes it.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    // SO_PEERCRED fails (ENOTSOCK) on anything but a socket, and names no pid for a socket that is
    // not a local one.
    made_by(sock, pid)
}

/// The memfd's seals; `None` for a file that has none to report (not shmem) or an error.
fn seals(file: &File) -> Option<u32> {
    super::shm::seals(file).ok().flatten()
}

/// The task the parent wrote: checked to be a memfd of our uid sealed against any change, at most `cap`
/// bytes, and read whole. The descriptor is closed afterwards.
pub(crate) fn read_task(fd: RawFd, cap: u64) -> std::result::Result<Vec<u8>, ChannelError> {
    read_sealed(adopt(fd, "task")?, "task", cap)
}

/// As [`read_task`], for a descriptor already owned (the fork server's, received with `SCM_RIGHTS`).
pub(crate) fn read_sealed(
    owned: OwnedFd,
    what: &str,
    cap: u64,
) -> std::result::Result<Vec<u8>, ChannelError> {
    let file = File::from(owned);
    let m = file.metadata().map_err(|e| format!("fstat({what}): {e}"))?;
    if !m.file_type().is_file() || m.uid() != crate::sys::proc::euid() {
        return Err(format!("the {what} descriptor is not a file of this user"));
    }
    let need = (libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) as u32;
    match seals(&file) {
        Some(s) if s & need == need => {}
        _ => return Err(format!("the {what} file is not a sealed memfd")),
    }
    if m.len() > cap {
        return Err(format!(
            "the {what} file has {} bytes, more than {cap}",
            m.len()
        ));
    }
    // Until it was sealed, any process of our uid could re-open the memfd (module docs) and grow it
    // sparse for free up to `cap`: the MAC would refuse it, but only after this process had allocated
    // and read all of it. Whoever really made it wrote every byte (`write_all_at`), so a hole means a
    // file nobody wrote, refused before anything is allocated for it (as `process` does for a grown
    // result memfd).
    match super::shm::is_all_data(&file, 0, m.len()) {
        Ok(true) => {}
        Ok(false) => return Err(format!("the {what} file has holes: nobody wrote all of it")),
        Err(e) => return Err(format!("lseek({what}): {e}")),
    }
    // The size is sealed (and capped above), so `m.len()` is exactly what there is to read. Positional
    // read: the descriptor's file offset is whatever the parent left it at.
    let mut bytes = vec![0u8; m.len() as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("read({what}): {e}"))?;
    Ok(bytes)
}

/// The 16-byte key from the inherited key socket, whose other end must have been made by `parent`
/// with our credentials ([`made_by`]). The descriptor is closed afterwards.
pub(crate) fn read_key(fd: RawFd, parent: u32) -> std::result::Result<KeyPacket, ChannelError> {
    let sock = adopt(fd, "key")?;
    let file = File::from(sock);
    let m = file.metadata().map_err(|e| format!("fstat(key): {e}"))?;
    if !m.file_type().is_socket() {
        return Err("the key descriptor is not a socket".into());
    }
    if !made_by(file.as_fd(), parent) {
        return Err("the key socket was not made by this process's parent".into());
    }
    // One packet of exactly KEY_PACKET bytes, already queued before we were started: never wait for
    // it. A longer packet is cut one byte past that and refused.
    let mut buf = [0u8; KEY_PACKET + 1];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, a live local array.
    let n = unsafe {
        libc::recv(
            file.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n != KEY_PACKET as isize {
        return Err("the key socket did not hold a key".into());
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&buf[..16]);
    let mut mac = [0u8; 8];
    mac.copy_from_slice(&buf[16..KEY_PACKET]);
    Ok(KeyPacket {
        key,
        task_mac: u64::from_le_bytes(mac),
        sock: file,
    })
}

/// Tells the parent that this child accepted its task, on the key socket `packet` came from: the ack
/// a parent that lets its child outlive it waits for ([`wait_for_ack`]). Sent only once every check
/// passed, so a child that refuses its task writes to none of its channel's descriptors. Best effort:
/// a parent that does not wait has closed its end already (EPIPE, and no signal with MSG_NOSIGNAL).
pub(crate) fn send_ack(packet: &KeyPacket) {
    // SAFETY: the pointer and length describe a live one-byte array; `sock` is an open socket.
    let _ = unsafe {
        libc::send(
            packet.sock.as_raw_fd(),
            [ACK].as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// The bytes of the key socket's packet.
const KEY_PACKET: usize = 24;

/// The byte a spawned child sends back on its key socket once it accepted its task ([`send_ack`]).
const ACK: u8 = 0xac;

/// Waits until the child at the other end of `key_ours` has accepted its task (its ack, [`ACK`]), has
/// closed its end (it died, or refused its task), or `patience` has passed; returns whether the ack
/// came.
///
/// Why: a child checks that the pid its task names is its parent's (`getppid()`) before it reads its
/// key. A parent that lets its child outlive it (`die_with_parent(false)`) and exits right after
/// `start` could be gone by then: the child, reparented, refused its task (found by review: a
/// launcher that starts a child and exits lost it about one time in three). Waiting for the ack,
/// which comes after every check, closes that window; the patience bounds the wait for a child stuck before it (another library's
/// constructor, say) or for an end some other process inherited and keeps open.
pub(crate) fn wait_for_ack(key_ours: &OwnedFd, patience: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + patience;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: key_ours.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms =
            libc::c_int::try_from(left.as_millis().saturating_add(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll reads and writes one `pollfd`, a live local, for an open descriptor.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            // Retried only while patience is left: each `poll` waits at least a millisecond, so
            // signals more frequent than that (an interval timer) would otherwise retry forever.
            if std::time::Instant::now() < end {
                continue;
            }
            return false;
        }
        if r <= 0 {
            return false; // patience spent (or poll failed: not worth more than a bounded wait)
        }
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`, a live local.
        let n = unsafe {
            libc::recv(
                key_ours.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_DONTWAIT,
            )
        };
        return n == 1 && byte == ACK;
    }
}

/// What the key socket holds: the key, and the MAC of the task frame under it; and the socket, for
/// the ack ([`send_ack`]).
pub(crate) struct KeyPacket {
    pub key: [u8; 16],
    pub task_mac: u64,
    sock: File,
}

/// The key socket's packet: `key`, then the task's MAC (little-endian).
pub(crate) fn key_packet(key: [u8; 16], task_mac: u64) -> [u8; KEY_PACKET] {
    let mut packet = [0u8; KEY_PACKET];
    packet[..16].copy_from_slice(&key);
    packet[16..].copy_from_slice(&task_mac.to_le_bytes());
    packet
}

/// The result channel: an empty, unsealed memfd of our uid.
pub(crate) fn adopt_result(fd: RawFd) -> std::result::Result<File, ChannelError> {
    adopt_result_fd(adopt(fd, "result")?)
}

/// As [`adopt_result`], for a descriptor already owned (the fork server's, received with `SCM_RIGHTS`).
pub(crate) fn adopt_result_fd(owned: OwnedFd) -> std::result::Result<File, ChannelError> {
    let file = File::from(owned);
    let m = file.metadata().map_err(|e| format!("fstat(result): {e}"))?;
    let ok = m.file_type().is_file()
        && m.uid() == crate::sys::proc::euid()
        && m.len() == 0
        // A memfd made with MFD_ALLOW_SEALING starts with no seals at all; any other tmpfs file
        // reports F_SEAL_SEAL, and a non-shmem file has no seals to report.
        && seals(&file) == Some(0);
    if !ok {
        return Err("the result descriptor is not an empty memfd of this user".into());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd() -> File {
        crate::sys::shm::create_memfd("mproc-test").unwrap()
    }

    fn leak(f: impl Into<OwnedFd>) -> RawFd {
        std::os::fd::IntoRawFd::into_raw_fd(f.into())
    }

    #[test]
    fn a_sealed_task_is_read_and_an_unsealed_one_refused() {
        let mut f = memfd();
        f.write_all(b"hello").unwrap();
        let unsealed = leak(f.try_clone().unwrap());
        assert!(read_task(unsealed, 100).unwrap_err().contains("sealed"));
        seal_contents(&f).unwrap();
        assert_eq!(
            read_task(leak(f.try_clone().unwrap()), 100).unwrap(),
            b"hello"
        );
        assert!(read_task(leak(f), 4).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_sparse_task_is_refused_before_anything_is_allocated_for_it() {
        // What a process of our uid can do to the task memfd before it is sealed: grow it, for free.
        let mut f = memfd();
        f.write_all(b"hello").unwrap();
        f.set_len(64 << 20).unwrap();
        seal_contents(&f).unwrap();
        let why = read_task(leak(f), 1 << 30).unwrap_err();
        assert!(why.contains("holes"), "{why}");
        // A task written in full, zeroes included, is data all through.
        let mut f = memfd();
        f.write_all(&[0; 10_000]).unwrap();
        seal_contents(&f).unwrap();
        assert_eq!(read_task(leak(f), 1 << 30).unwrap(), [0; 10_000]);
    }

    #[test]
    fn closed_and_standard_descriptors_are_refused() {
        assert!(read_task(1, 100).is_err());
        assert!(read_task(100_000, 100).is_err());
        assert!(adopt_result(-1).is_err());
    }

    #[test]
    fn the_key_comes_only_from_the_named_parent() {
        let (a, b) = key_socketpair().unwrap();
        send_packet(&a, &key_packet([7; 16], 0x0102_0304_0506_0708)).unwrap();
        // The pair was made by this very process, so "parent" is our own pid here.
        let me = std::process::id();
        let b2 = b.try_clone().unwrap();
        assert!(read_key(leak(b2), me + 1).is_err());
        let packet = read_key(leak(b), me).ok().unwrap();
        assert_eq!(packet.key, [7; 16]);
        assert_eq!(packet.task_mac, 0x0102_0304_0506_0708);
        let (_c, d) = key_socketpair().unwrap();
        assert!(read_key(leak(d), me)
            .err()
            .unwrap()
            .contains("did not hold"));
        let (e, f) = key_socketpair().unwrap();
        send_packet(&e, &[7; 16]).unwrap();
        assert!(
            read_key(leak(f), me)
                .err()
                .unwrap()
                .contains("did not hold"),
            "a key without the task's MAC"
        );
    }

    /// A socketpair made by this process while its group was another (a thread's own credentials:
    /// the raw syscall, unlike glibc's `setresgid`, changes only the calling thread's).
    fn socketpair_as_group(gid: libc::gid_t) -> (OwnedFd, OwnedFd) {
        std::thread::spawn(move || {
            // SAFETY: setresgid(2) takes three ids and touches no memory; made as a raw syscall it
            // changes the credentials of this thread only, which ends right after.
            let r = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
            assert_eq!(r, 0, "setresgid: {}", std::io::Error::last_os_error());
            key_socketpair().unwrap()
        })
        .join()
        .unwrap()
    }

    /// The socket's creator must have had our uid *and* our gid. Found by review: only the uid was
    /// compared, so a program exec'd through a setgid wrapper (or run with its group changed by
    /// `setpriv`/`sg`) by a parent that kept its environment and descriptors took a task from that
    /// parent, whose key it chose: any signed offsets, run with the group the parent did not have.
    /// Needs root (to change a thread's group); without it this checks nothing.
    #[test]
    fn a_key_socket_made_with_another_group_is_not_the_parents() {
        if crate::sys::proc::euid() != 0 {
            eprintln!("a_key_socket_made_with_another_group_is_not_the_parents: skipped, not root");
            return;
        }
        // SAFETY: getegid has no preconditions and cannot fail.
        let other = if unsafe { libc::getegid() } == 65534 {
            65533
        } else {
            65534
        };
        let (a, b) = socketpair_as_group(other);
        send_packet(&a, &key_packet([7; 16], 1)).unwrap();
        let me = std::process::id();
        assert!(!is_socket_of(b.as_raw_fd(), me), "claimed as a channel");
        assert!(read_key(leak(b), me)
            .err()
            .expect("the key was read")
            .contains("not made by"));
        // The same pair made with our own group is the parent's.
        let (a, b) = key_socketpair().unwrap();
        send_packet(&a, &key_packet([7; 16], 1)).unwrap();
        assert!(is_socket_of(b.as_raw_fd(), me));
        assert!(read_key(leak(b), me).is_ok());
    }

    /// A socketpair made by this process while its supplementary groups were `groups` (changed for
    /// one thread only, as in [`socketpair_as_group`]).
    fn socketpair_with_groups(groups: Vec<libc::gid_t>) -> (OwnedFd, OwnedFd) {
        std::thread::spawn(move || {
            // SAFETY: setgroups(2) reads `groups.len()` gids from a live vector and touches no other
            // memory; made as a raw syscall it changes the credentials of this thread only, which ends
            // right after.
            let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
            assert_eq!(r, 0, "setgroups: {}", std::io::Error::last_os_error());
            key_socketpair().unwrap()
        })
        .join()
        .unwrap()
    }

    /// The socket's creator must have had our supplementary groups too. Found by review: only the
    /// uid and gid were compared, so a program exec'd through a wrapper that adds a group and keeps
    /// the uid, the gid, the environment and the descriptors (`setpriv --groups`, a set-user-ID
    /// helper that grants a group and drops back to its caller) took a task from the process that
    /// ran the wrapper, whose key it chose: any signed offsets, run with a group that process did not
    /// have. Needs root (to change a thread's groups); without it this checks nothing.
    #[test]
    fn a_key_socket_made_with_other_supplementary_groups_is_not_the_parents() {
        if crate::sys::proc::euid() != 0 {
            eprintln!(
                "a_key_socket_made_with_other_supplementary_groups_is_not_the_parents: skipped"
            );
            return;
        }
        let me = std::process::id();
        let ours = own_groups().expect("getgroups");
        let mut more = ours.clone();
        more.push(if ours.contains(&65534) { 65533 } else { 65534 });
        let fewer = ours.iter().copied().skip(1).collect::<Vec<_>>();
        for (groups, case) in [(more, "one group more"), (fewer, "one group fewer")] {
            if groups == ours {
                continue; // "fewer" than no group at all
            }
            let (a, b) = socketpair_with_groups(groups);
            send_packet(&a, &key_packet([7; 16], 1)).unwrap();
            assert!(
                !is_socket_of(b.as_raw_fd(), me),
                "{case}: claimed as a channel"
            );
            assert!(
                read_key(leak(b), me)
                    .err()
                    .expect("the key was read")
                    .contains("not made by"),
                "{case}"
            );
        }
        // The same groups in another order are the same set.
        let mut reversed = ours.clone();
        reversed.reverse();
        let (a, b) = socketpair_with_groups(reversed);
        send_packet(&a, &key_packet([7; 16], 1)).unwrap();
        assert!(is_socket_of(b.as_raw_fd(), me));
        assert!(read_key(leak(b), me).is_ok());
    }

    /// The wait for a child's ack ends once its patience is spent, even for a thread that signals
    /// interrupt all the time (a profiler's interval timer, say; here every 100 µs). Found by review:
    /// an interrupted `poll` was retried with at least a millisecond to wait, deadline passed or not,
    /// so signals more frequent than that kept `start` waiting for as long as they came.
    #[test]
    fn the_wait_for_an_ack_ends_under_a_stream_of_signals() {
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a zeroed sigaction is valid; the handler does nothing (async-signal-safe), and no
        // SA_RESTART, so that a blocked call returns EINTR. SIGURG is ignored by default and sent
        // by nobody else in this test binary.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(libc::sigaction(libc::SIGURG, &sa, std::ptr::null_mut()), 0);
        }
        // A timer that signals this thread every 100 µs, from the kernel: no other thread needs to
        // be scheduled for the signals to keep coming.
        // SAFETY: a zeroed sigevent is valid.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGURG;
        // SAFETY: gettid has no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: timer_create reads `ev` and writes the new timer's id into `timer`, both live.
        let made = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) };
        assert_eq!(made, 0);
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000,
        };
        let spec = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        // The timer stops after 20 s at the latest, deleted by another thread if this one is stuck.
        let timer_id = timer as usize;
        let (done, stopped) = std::sync::mpsc::channel::<()>();
        let stopper = std::thread::spawn(move || {
            let _ = stopped.recv_timeout(std::time::Duration::from_secs(20));
            // SAFETY: deletes the timer made above, once, here only.
            unsafe { libc::timer_delete(timer_id as libc::timer_t) };
        });
        // SAFETY: arms the live timer with `spec`, a live local; the old value is not wanted.
        let armed = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
        assert_eq!(armed, 0);
        // The child's end stays open: no ack and no end-of-file, only the patience ends the wait.
        let (ours, _theirs) = key_socketpair().unwrap();
        let began = std::time::Instant::now();
        let acked = wait_for_ack(&ours, std::time::Duration::from_millis(20));
        let took = began.elapsed();
        drop(done);
        stopper.join().unwrap();
        assert!(!acked);
        // Generous: proves the wait ended while the signals still came, asserts no speed.
        assert!(
            took < std::time::Duration::from_secs(10),
            "waited {took:?} for a patience of 20 ms"
        );
    }

    /// This test binary was exec'd by the kernel (its loader came with it): spawning is not refused.
    /// The refusal itself is `security_spawn::a_program_started_through_the_loader_cannot_spawn_and_says_so`.
    #[test]
    fn a_program_the_kernel_exec_d_is_not_taken_for_one_started_by_its_loader() {
        assert!(refuse_if_started_by_loader("spawn").is_ok());
    }

    #[test]
    fn a_result_channel_must_be_an_empty_memfd() {
        assert!(adopt_result(leak(memfd())).is_ok());
        let mut f = memfd();
        f.write_all(b"x").unwrap();
        assert!(adopt_result(leak(f)).is_err());
        let (a, _b) = key_socketpair().unwrap();
        assert!(adopt_result(leak(a)).is_err());
        // An empty tmpfs file that is not a memfd (F_GET_SEALS says F_SEAL_SEAL there).
        let path = format!("/dev/shm/mproc-test-result-{}", std::process::id());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(adopt_result(leak(f)).is_err());
    }
}
