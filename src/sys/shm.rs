//! Shared-memory objects (memfd and `/dev/shm`) and shared mappings of them.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where POSIX shared memory objects live on Linux; `shm_open(3)` is an `open(2)` in this directory.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// Creates an anonymous memory file (memfd_create(2)), close-on-exec and sealable.
pub(crate) fn create_memfd(debug_name: &str) -> Result<File> {
    let name = std::ffi::CString::new(debug_name).map_err(|_| Error::InvalidName {
        name: debug_name.to_owned(),
        reason: "contains a NUL byte",
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

fn shm_path(shm_name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(shm_name)
}

/// Creates `/dev/shm/<shm_name>` exclusively (O_EXCL) with mode 0600.
pub(crate) fn create_named(shm_name: &str, user_name: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(shm_path(shm_name))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists {
                name: user_name.to_owned(),
            },
            _ => Error::os("shm_open(O_CREAT|O_EXCL)", e),
        })
}

/// Opens an existing `/dev/shm/<shm_name>` read-write, without following symlinks.
pub(crate) fn open_named(shm_name: &str, user_name: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(shm_path(shm_name))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                name: user_name.to_owned(),
            },
            _ => Error::os("shm_open", e),
        })
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

/// Names of the entries of `/dev/shm` that start with `prefix`.
pub(crate) fn list_named(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Re-opens a memfd held by another process of the same user through `/proc/<pid>/fd/<fd>`.
pub(crate) fn open_proc_fd(pid: u32, fd: i32) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::StaleHandle(format!("process {pid} no longer holds descriptor {fd}"))
            }
            _ => Error::os("open(/proc/<pid>/fd/<fd>)", e),
        })
}

/// The facts about a segment that opening checks before mapping it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInfo {
    pub size: u64,
    pub uid: u32,
    pub mode: u32,
    pub ino: u64,
}

pub(crate) fn file_info(file: &File) -> Result<FileInfo> {
    let m = file.metadata().map_err(|e| Error::os("fstat", e))?;
    Ok(FileInfo {
        size: m.len(),
        uid: m.uid(),
        mode: m.mode() & 0o7777,
        ino: m.ino(),
    })
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
}
