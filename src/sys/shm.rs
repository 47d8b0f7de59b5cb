//! Shared-memory objects (memfd and `/dev/shm`) and shared mappings of them.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where POSIX shared memory objects live on Linux; `shm_open(3)` is an `open(2)` in this directory.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// Creates an anonymous memory file (memfd_create(2)), close-on-exec and sealable.
pub(crate) fn create_memfd(debug_name: &str) -> Result<File> {
    let name = std::ffi::CString::new(debug_name).map_err(|_| Error::InvalidName {
        name: debug_name.to_owned(),
        reason: "contains a NUL byte".into(),
    })?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags are valid.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::last_os("memfd_create"));
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    // A memfd starts with mode 0777; others could open it through /proc/<pid>/fd if they could reach
    // that directory. Least privilege: 0600 like the named segments.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::os("fchmod", e))?;
    Ok(file)
}

/// Forbids any later change of a memfd's size, so no process can truncate it under a mapping (which would
/// turn our reads into SIGBUS). Named `/dev/shm` files cannot be sealed; see the region docs.
pub(crate) fn seal_size(file: &File) -> Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an int argument and only changes the file's seal set.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
    }
    Ok(())
}

/// Forbids shrinking a memfd and adding or removing any seal, but lets it grow: a heap that grows in
/// place (the manager's) extends its file while other processes keep their mappings. Growing never
/// invalidates a mapped page, so no process can be made to fault on a page it mapped (only shrinking
/// could, and that is sealed).
pub(crate) fn seal_shrink(file: &File) -> Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an int argument and only changes the file's seal set.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
    }
    Ok(())
}

/// Whether a seal set forbids shrinking the file (what [`seal_shrink`] and [`seal_size`] set) and any
/// further change of the seals: its pages, once mapped, stay valid for good.
pub(crate) fn shrink_is_sealed(seals: u32) -> bool {
    let needed = (libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL) as u32;
    seals & needed == needed
}

/// Allocates the pages of `[offset, offset + len)` of `file` (fallocate(2), mode 0), growing the file
/// if the range ends beyond it. On tmpfs this is where a full file system or memory cgroup says so,
/// as `ENOSPC`/`ENOMEM`, instead of a SIGBUS on the first write to a page that could not be allocated.
///
/// # Errors
/// [`Error::OutOfMemory`] if the system refuses the space (`ENOSPC`, `ENOMEM`, `EFBIG`), [`Error::Os`]
/// otherwise.
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> Result<()> {
    let refused = Error::OutOfMemory {
        requested: len,
        available: 0,
    };
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(refused);
    };
    loop {
        // SAFETY: fallocate only changes the file behind a descriptor we own for the whole call; the
        // range is non-negative (converted above).
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, n) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // fallocate(2): EINTR if a signal arrived; the allocation may be partial and is redone.
            Some(libc::EINTR) => {}
            Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG) => return Err(refused),
            _ => return Err(Error::os("fallocate", e)),
        }
    }
}

/// Gives back the memory of `[offset, offset + len)` of `file` (fallocate(2) with
/// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`): the range becomes a hole that reads as zeroes, and the
/// file keeps its size, so a mapping of it anywhere stays valid (no `SIGBUS`). Unlike closing and
/// unmapping, this frees the pages while other processes still map the file.
///
/// # Errors
/// [`Error::Os`] if the kernel refuses (a file sealed against writes, say).
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(Error::os(
            "fallocate(PUNCH_HOLE)",
            std::io::Error::from_raw_os_error(libc::EFBIG),
        ));
    };
    loop {
        // SAFETY: fallocate only changes the file behind a descriptor we own for the whole call; the
        // range is non-negative (converted above). A hole reads as zeroes through every mapping.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::os("fallocate(PUNCH_HOLE)", e));
        }
    }
}

/// Whether `[offset, offset + len)` of `file` is data all through: no hole (a range of a sparse file
/// that holds no memory and reads as zeroes), and not past the end. `lseek(SEEK_HOLE)`, which tmpfs
/// answers exactly; a page swapped out counts as data.
///
/// # Errors
/// [`Error::Os`] if `lseek` fails for another reason than the offset lying past the end.
pub(crate) fn is_all_data(file: &File, offset: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let (Ok(off), Some(end)) = (libc::off_t::try_from(offset), offset.checked_add(len)) else {
        return Ok(false);
    };
    // SAFETY: lseek only reads the file's extent map and moves the offset of a description we own;
    // nothing here reads or writes through that offset (every access is positional or mapped).
    let hole = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_HOLE) };
    if hole < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // lseek(2): ENXIO when the offset is at or past the end of the file.
            Some(libc::ENXIO) => Ok(false),
            _ => Err(Error::os("lseek(SEEK_HOLE)", e)),
        };
    }
    Ok(hole as u64 >= end)
}

/// Half the machine's physical memory: the size tmpfs gives `/dev/shm` by default (tmpfs(5)), used as
/// the default limit of a growing shared heap, so that a runaway writer gets an error instead of
/// waking the OOM killer (a memfd, unlike `/dev/shm`, has no size limit of its own). 1 GiB if
/// sysconf(3) cannot tell.
pub(crate) fn default_size_limit() -> u64 {
    // SAFETY: sysconf only reads system configuration; it has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(n), Ok(p)) if n > 0 && p > 0 => n.saturating_mul(p) / 2,
        _ => 1 << 30,
    }
}

fn shm_path(shm_name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(shm_name)
}

/// Creates an unnamed shared-memory file in `/dev/shm` (`O_TMPFILE`, mode 0600), to be given its name by
/// [`link_named`] once its header is complete.
///
/// Nothing can find or open the file before it is linked, so a named region never appears half-made:
/// there is no window in which a creator killed between "name taken" and "header written" leaves a
/// file the janitor could not judge. tmpfs supports `O_TMPFILE` since Linux 3.11 (open(2)); the crate
/// already needs later kernels (pidfd_open, 5.3).
pub(crate) fn create_unnamed_shm() -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        // Without O_EXCL: open(2) says an O_TMPFILE file opened with O_EXCL can never be linked.
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(SHM_DIR)
        .map_err(|e| Error::os("open(/dev/shm, O_TMPFILE)", e))?;
    // The mode given to open(2) is less the umask: under a umask such as 0277 the file was 0400, and
    // no other process of the user could open the region for writing (found by review). Set it.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::os("fchmod", e))?;
    Ok(file)
}

/// Gives the unnamed file made by [`create_unnamed_shm`] the name `/dev/shm/<shm_name>`, failing with
/// [`Error::AlreadyExists`] if the name is taken: link(2) never replaces an existing entry, which gives
/// the same exclusivity as `O_CREAT|O_EXCL`.
pub(crate) fn link_named(file: &File, shm_name: &str, user_name: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = proc_self_fd(file)?;
    let to = std::ffi::CString::new(shm_path(shm_name).as_os_str().as_bytes()).map_err(|_| {
        Error::InvalidName {
            name: user_name.to_owned(),
            reason: "contains a NUL byte".into(),
        }
    })?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; linkat only reads them.
    // Linking through /proc/self/fd/N with AT_SYMLINK_FOLLOW is the unprivileged way open(2) documents
    // for naming an O_TMPFILE file (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists {
                name: user_name.to_owned(),
            },
            _ => Error::os("linkat(/dev/shm)", e),
        });
    }
    Ok(())
}

/// `/proc/self/fd/<fd of file>`, as a C string.
fn proc_self_fd(file: &File) -> Result<std::ffi::CString> {
    // Digits only: never contains a NUL.
    std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| Error::os("CString", std::io::Error::other(e)))
}

/// Opens an existing `/dev/shm/<shm_name>` read-write, without following symlinks, and only if it is a
/// regular file (see [`open_regular`]: a FIFO or device planted under the name is never really opened).
pub(crate) fn open_named(shm_name: &str, user_name: &str) -> Result<File> {
    let path = OpenOptions::new()
        .read(true)
        // O_PATH|O_NOFOLLOW opens a symlink itself rather than failing (open(2)); it is refused below
        // with the ELOOP a plain O_NOFOLLOW open would have given.
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(shm_path(shm_name))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                name: user_name.to_owned(),
            },
            _ => Error::os("shm_open", e),
        })?;
    let kind = path.metadata().map_err(|e| Error::os("fstat", e))?;
    if kind.file_type().is_symlink() {
        return Err(Error::os(
            "shm_open",
            std::io::Error::from_raw_os_error(libc::ELOOP),
        ));
    }
    // Another user's file is never opened for real: its owner could hold a lease on it, and an open
    // for writing would wait for the lease to break (45 s by default).
    if kind.uid() != crate::sys::proc::euid() {
        return Err(Error::NotPrivate {
            name: user_name.to_owned(),
            owner_uid: kind.uid(),
            mode: kind.mode() & 0o7777,
        });
    }
    open_regular(path, &format!("shared region {user_name:?}"))
}

/// Removes `/dev/shm/<shm_name>`. Existing mappings stay valid (shm_unlink(3)).
pub(crate) fn unlink_named(shm_name: &str, user_name: &str) -> Result<()> {
    std::fs::remove_file(shm_path(shm_name)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            name: user_name.to_owned(),
        },
        _ => Error::os("shm_unlink", e),
    })
}

/// Removes `/dev/shm/<shm_name>` only if it is still the file `file` (same device and inode);
/// `Ok(false)` if the name refers to another file.
///
/// Linux has no "unlink this name if it is this file", and a check followed by an unlink removes
/// whatever the name refers to by the time of the unlink: a name removed and re-created in between
/// (a second janitor or an explicit unlink, then a live creator) lost its new file. So the name is
/// first *moved*, atomically, to `aside` (a fresh name of this process's own, made by the caller; the
/// move never replaces an entry): the file moved is judged there, where nobody else looks, and unlinked
/// only if it is `file`; another file is moved back. If the name was taken once more while that file
/// was aside (a third process created it), the file cannot get its name back and is unlinked: it had
/// lost its name to the newcomer either way. A process killed between the move and the unlink leaves
/// `aside` behind, for the janitor to remove once that process is gone.
pub(crate) fn unlink_named_if_same(
    shm_name: &str,
    user_name: &str,
    file: &File,
    aside: &str,
) -> Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let ours = file.metadata().map_err(|e| Error::os("fstat", e))?;
    let same = |m: &std::fs::Metadata| (m.dev(), m.ino()) == (ours.dev(), ours.ino());
    let not_found = |e: std::io::Error, op: &'static str| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            name: user_name.to_owned(),
        },
        _ => Error::os(op, e),
    };
    // A name that refers to another file already is never moved, not even for a moment.
    let named = std::fs::symlink_metadata(shm_path(shm_name)).map_err(|e| not_found(e, "stat"))?;
    if !same(&named) {
        return Ok(false);
    }
    match rename_noreplace(shm_name, aside) {
        Ok(()) => {}
        // A `/dev/shm` whose filesystem lacks RENAME_NOREPLACE (tmpfs has it): check, then unlink.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return unlink_named(shm_name, user_name).map(|()| true)
        }
        Err(e) => return Err(not_found(e, "renameat2(/dev/shm)")),
    }
    match std::fs::symlink_metadata(shm_path(aside)) {
        Ok(moved) if same(&moved) => {
            unlink_named(aside, user_name)?;
            Ok(true)
        }
        // Somebody else's file (or one we cannot even stat): its name goes back where it was.
        _ => {
            if rename_noreplace(aside, shm_name).is_err() {
                let _ = unlink_named(aside, user_name);
            }
            Ok(false)
        }
    }
}

/// Renames `/dev/shm/<from>` to `/dev/shm/<to>` (`renameat2(RENAME_NOREPLACE)`, which tmpfs
/// supports): atomic, and failing with `EEXIST` rather than replacing an entry named `to`.
fn rename_noreplace(from: &str, to: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |name: &str| {
        std::ffi::CString::new(shm_path(name).as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; renameat2 only reads
    // them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Names of the entries of `/dev/shm` that start with `prefix`.
pub(crate) fn list_named(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Whether `e` says this process ran out of a resource (descriptors, memory) rather than that what it
/// opened or mapped was wrong: the one kind of failure that says nothing about the file.
pub(crate) fn is_out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

/// Re-opens a file held by another process of the same user through `/proc/<pid>/fd/<fd>`, only if it
/// is a regular file (see [`open_regular`]).
///
/// A forged handle may name any descriptor of any process: a device, a FIFO, a socket. Those are
/// refused before they are opened for real, so no driver's `open` runs and nothing blocks.
pub(crate) fn open_proc_fd(pid: u32, fd: i32) -> Result<File> {
    let path = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::StaleHandle(format!("process {pid} no longer holds descriptor {fd}"))
            }
            _ => Error::os("open(/proc/<pid>/fd/<fd>)", e),
        })?;
    // Only a memfd (the kernel's internal shm mount) or a /dev/shm file, judged by
    // statx(AT_STATX_DONT_SYNC), which never sends a request to the file's filesystem: opening a FUSE
    // file for real asks its server, which may never answer.
    let what = format!("anonymous region of process {pid}");
    let (dev, uid, mode) = stat_no_sync(&path)?;
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::os(
            "open shared region",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("descriptor {fd} of process {pid} is not a regular file"),
            ),
        ));
    }
    if uid != crate::sys::proc::euid() || mode & 0o077 != 0 {
        return Err(Error::NotPrivate {
            name: what,
            owner_uid: uid,
            mode: mode & 0o7777,
        });
    }
    let shm_dev = std::fs::metadata(SHM_DIR)
        .map(|m| (libc::major(m.dev()), libc::minor(m.dev())))
        .ok();
    if dev != memfd_device()? && Some(dev) != shm_dev {
        // Neither a memfd nor a /dev/shm file (a disk or FUSE file, say): not one of ours.
        return Err(Error::NotSealed {
            name: what,
            seals: None,
        });
    }
    open_regular(path, &format!("descriptor {fd} of process {pid}"))
}

/// (device, uid, mode) of `f` by statx(AT_STATX_DONT_SYNC): never a request to a FUSE server.
fn stat_no_sync(f: &File) -> Result<((u32, u32), u32, u32)> {
    // SAFETY: `statx` is a plain C struct of integers, for which all-zero bytes are a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    let mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID;
    // SAFETY: statx writes at most one struct statx into `st`, a live local; the path is a valid,
    // empty C string, which AT_EMPTY_PATH makes name `f` itself, a descriptor we hold for the call.
    let r = unsafe { libc::statx(f.as_raw_fd(), c"".as_ptr(), flags, mask, &mut st) };
    if r < 0 {
        return Err(Error::last_os("statx"));
    }
    Ok((
        (st.stx_dev_major, st.stx_dev_minor),
        st.stx_uid,
        u32::from(st.stx_mode),
    ))
}

/// The device every memfd lives on (the kernel's internal shm mount), learnt once from a memfd of our
/// own that is closed again.
fn memfd_device() -> Result<(u32, u32)> {
    static DEVICE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    if let Some(&d) = DEVICE.get() {
        return Ok(d);
    }
    let probe = create_memfd("mproc-probe")?;
    let (dev, _, _) = stat_no_sync(&probe)?;
    Ok(*DEVICE.get_or_init(|| dev))
}

/// Upgrades an `O_PATH` descriptor to a read-write one if, and only if, it names a regular file.
///
/// An `O_PATH` open does not open the file itself: no permission check on the file, no driver `open`,
/// no FIFO rendezvous (open(2), "O_PATH"); `fstat` works on it. Once `fstat` says "regular file", the
/// file is opened for real through `/proc/self/fd/N`, which names exactly the inode the `O_PATH`
/// descriptor holds (it cannot be swapped in between); the device and inode are compared anyway.
fn open_regular(path: File, what: &str) -> Result<File> {
    let before = path.metadata().map_err(|e| Error::os("fstat", e))?;
    if !before.file_type().is_file() {
        return Err(Error::os(
            "open shared region",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{what} is not a regular file"),
            ),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", path.as_raw_fd()))
        .map_err(|e| Error::os("open(/proc/self/fd/<fd>)", e))?;
    let after = file.metadata().map_err(|e| Error::os("fstat", e))?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(Error::os(
            "open shared region",
            std::io::Error::other(format!("{what} changed while it was opened")),
        ));
    }
    Ok(file)
}

/// The seals of a file (`F_GET_SEALS`, fcntl(2)), or `None` if its filesystem has no seals at all (EINVAL).
/// A tmpfs file that is not a sealable memfd (a `/dev/shm` file, or a memfd made without
/// `MFD_ALLOW_SEALING`) reports `F_SEAL_SEAL` only: it can never be sealed.
pub(crate) fn seals(file: &File) -> Result<Option<u32>> {
    // SAFETY: F_GET_SEALS takes no argument and only reads the file's seal set; `file` is an open
    // descriptor we own for the duration of the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // fcntl(2): EINVAL if the file does not support sealing.
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(None);
        }
        return Err(Error::os("fcntl(F_GET_SEALS)", e));
    }
    Ok(Some(r as u32))
}

/// Whether a seal set forbids every change of the file's size (what [`seal_size`] sets). Seals can be
/// added but never removed (fcntl(2)), so a file that has these now keeps its size for good.
pub(crate) fn size_is_sealed(seals: u32) -> bool {
    let needed = (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) as u32;
    seals & needed == needed
}

/// The facts about a segment that opening checks before mapping it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInfo {
    pub is_file: bool,
    pub size: u64,
    pub uid: u32,
    pub mode: u32,
}

pub(crate) fn file_info(file: &File) -> Result<FileInfo> {
    let m = file.metadata().map_err(|e| Error::os("fstat", e))?;
    Ok(FileInfo {
        is_file: m.file_type().is_file(),
        size: m.len(),
        uid: m.uid(),
        mode: m.mode() & 0o7777,
    })
}

/// The device and inode of `file`: which file it is, as no content of it can say.
pub(crate) fn file_key(file: &File) -> Result<(u64, u64)> {
    let m = file.metadata().map_err(|e| Error::os("fstat", e))?;
    Ok((m.dev(), m.ino()))
}

/// A shared read-write mapping of a whole segment. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: memmap2::MmapRaw,
}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared and writable. `populate` pre-faults the pages
    /// (MAP_POPULATE), which is much cheaper than taking the faults one by one for a populated segment.
    ///
    /// The caller must have checked that the file is at least `len` bytes long: touching a page past the
    /// end of the file raises SIGBUS.
    pub(crate) fn new(file: &File, len: usize, populate: bool) -> Result<Self> {
        let mut opts = memmap2::MmapOptions::new();
        opts.len(len);
        if populate {
            opts.populate();
        }
        let map = opts.map_raw(file).map_err(|e| Error::os("mmap", e))?;
        Ok(Mapping { map })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether every page of bytes `[offset, offset + len)` of the mapping is in memory now, without
    /// faulting any in: `mincore(2)`, which for a file mapping answers from the file's page cache,
    /// whether or not this process touched the page. A hole of a sparse file is not in memory (a read
    /// fault there would allocate it), nor is a page swapped out: `false` tells a caller to ask
    /// [`is_all_data`]. `false` too for a range outside the mapping, or if the kernel refuses.
    ///
    /// One call per 16 MiB, whatever lies after the range: unlike `lseek(SEEK_HOLE)`, which walks the
    /// file from the offset to its first hole, however far that is.
    pub(crate) fn resident(&self, offset: usize, len: usize) -> bool {
        const CHUNK: usize = 4096;
        let page = page_size();
        let base = self.map.as_mut_ptr() as usize;
        let Some(end) = offset.checked_add(len).filter(|&e| e <= self.map.len()) else {
            return false;
        };
        if len == 0 {
            return true;
        }
        // The mapping starts on a page: rounding inside it stays inside it.
        let mut at = offset - offset % page;
        let mut vec = [0u8; CHUNK];
        while at < end {
            let n = (end - at).min(CHUNK * page);
            let pages = n.div_ceil(page);
            // SAFETY: `[base + at, base + at + n)` lies in our live mapping (page-rounded inside it:
            // the mapping's pages cover its whole length); mincore only reads the page tables and the
            // page cache, and writes one byte per page, `pages <= CHUNK`, into `vec`.
            let r = unsafe {
                libc::mincore(
                    (base + at) as *mut libc::c_void,
                    n,
                    vec.as_mut_ptr().cast::<libc::c_uchar>(),
                )
            };
            if r != 0 || vec[..pages].iter().any(|&b| b & 1 == 0) {
                return false;
            }
            at += n;
        }
        true
    }
}

/// The size of a page (4 KiB if sysconf(3) cannot tell).
fn page_size() -> usize {
    // SAFETY: sysconf only reads system configuration; it has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Tries to take a `flock(2)` on `file`'s open file description, without waiting: shared, or
/// `exclusive`. `Ok(false)` if another description holds a conflicting lock.
///
/// `flock` locks belong to the open file description, not the process: a forked child that inherited
/// the descriptor holds the same lock, and the kernel drops it when the last descriptor of the
/// description is closed, SIGKILL included (flock(2)). Taking a lock this description already holds
/// converts it (shared to exclusive or back).
pub(crate) fn try_flock(file: &File, exclusive: bool) -> Result<bool> {
    let r = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match r {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::os("flock", e)),
    }
}

/// Whether `/dev/shm/<shm_name>` is, right now, the file `file` (same device and inode; the name itself
/// is not followed if it is a symlink). A missing name is `Ok(false)`.
pub(crate) fn names_file(shm_name: &str, file: &File) -> Result<bool> {
    let ours = file.metadata().map_err(|e| Error::os("fstat", e))?;
    match std::fs::symlink_metadata(shm_path(shm_name)) {
        Ok(named) => Ok((named.dev(), named.ino()) == (ours.dev(), ours.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::os("stat", e)),
    }
}

/// Lets go of the `flock` lock of `file`'s open file description, whatever other descriptors of that
/// description exist: unlike closing `file`, which only unlocks once the last descriptor of the
/// description is gone (a copy in a child that another thread is spawning counts, until that child
/// execs).
pub(crate) fn unlock_flock(file: &File) -> Result<()> {
    file.unlock().map_err(|e| Error::os("flock(LOCK_UN)", e))
}

/// [`unlock_flock`] for a descriptor known by number only (one that a value this process will never
/// drop still owns).
pub(crate) fn unlock_fd_flock(fd: RawFd) -> Result<()> {
    // SAFETY: flock takes an integer and a flag and touches no memory of ours; on a number that is not
    // an open descriptor it fails with EBADF, which is returned.
    if unsafe { libc::flock(fd, libc::LOCK_UN) } < 0 {
        return Err(Error::os("flock(LOCK_UN)", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A new open file description of the file `fd` refers to (through `/proc/self/fd`), read-only and
/// close-on-exec: a `flock` taken on it is independent of the locks of `fd`'s description.
pub(crate) fn reopen_fd(fd: RawFd) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| Error::os("open(/proc/self/fd)", e))
}

/// Makes descriptor `fd` refer to `src`'s open file description (close-on-exec), closing what `fd`
/// referred to: `dup3(2)`, which is async-signal-safe, so a forked child may call it.
pub(crate) fn dup_over(src: &File, fd: RawFd) -> Result<()> {
    // SAFETY: dup3 takes two integers and a flag; it touches no memory of ours. `src` is open for the
    // duration of the call; whatever `fd` was, it is atomically replaced (the caller owns that number).
    if unsafe { libc::dup3(src.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
        return Err(Error::os("dup3", std::io::Error::last_os_error()));
    }
    Ok(())
}
