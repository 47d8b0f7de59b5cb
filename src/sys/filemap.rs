//! Shared mappings of user files (`MAP_SHARED`), for arrays mapped straight from disk (feature `npy`).
//!
//! A user file differs from our segments in two ways that matter here: anyone may have made it (so it
//! is opened with the same care as a handle's file: only a regular file is ever opened for real), and
//! it cannot be sealed, so another process may truncate it while it is mapped. Touching a page past
//! the new end then raises `SIGBUS` (mmap(2)) — the same contract as numpy's `np.memmap` and every
//! mapped-file reader; callers document it. Sizes are checked at open, so a file is never mapped past
//! its end as it was then.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, FileProblem, Result};

/// What identifies a file's contents well enough to notice it was replaced or resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub(crate) mtime_ns: i128,
}

fn id_of(m: &std::fs::Metadata) -> FileId {
    FileId {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    }
}

fn bad(path: &Path, problem: FileProblem) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        problem,
    }
}

/// Opens `path` for reading (and writing if `writable`) if, and only if, it is a regular file.
///
/// The path is first opened `O_PATH` (open(2): no permission check on the file, no driver `open`, no
/// FIFO rendezvous, so a FIFO or a device named by a forged handle can neither block nor be poked);
/// `fstat` on that descriptor decides, and only then is the very same inode opened for real through
/// `/proc/self/fd/N`; device and inode are compared anyway.
pub(crate) fn open_regular(path: &Path, writable: bool) -> Result<(File, FileId)> {
    open_regular_as(path, true, writable)
}

/// [`open_regular`] for writing only: what a file that is only written (`image::save`) needs, and all
/// that a file its caller may write but not read (mode `0o222`) allows. Found by review: opened for
/// reading too, such a file was refused with `EACCES`, where `File::create` overwrote it.
pub(crate) fn open_regular_write_only(path: &Path) -> Result<File> {
    open_regular_as(path, false, true).map(|(file, _)| file)
}

fn open_regular_as(path: &Path, read: bool, write: bool) -> Result<(File, FileId)> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::os("open", e))?;
    let before = handle.metadata().map_err(|e| Error::os("fstat", e))?;
    if !before.file_type().is_file() {
        return Err(bad(path, FileProblem::NotRegular));
    }
    let file = OpenOptions::new()
        .read(read)
        .write(write)
        // O_NONBLOCK: a lease on the file makes the open fail with EWOULDBLOCK at once instead of
        // waiting up to lease-break-time (45 s) for it to break (as `shm::open_regular`, review R7).
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| Error::os("open(/proc/self/fd/<fd>)", e))?;
    let after = file.metadata().map_err(|e| Error::os("fstat", e))?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(bad(
            path,
            FileProblem::Changed("replaced while it was opened".into()),
        ));
    }
    Ok((file, id_of(&after)))
}

/// The identity of an open file now.
pub(crate) fn id(file: &File) -> Result<FileId> {
    Ok(id_of(&file.metadata().map_err(|e| Error::os("fstat", e))?))
}

/// The identity of the file `path` names now (device, inode, length, modification time), following
/// symbolic links as an open does (stat(2), which opens nothing): what a mapping made by opening
/// `path` earlier is compared with, to notice that the path was given to another file since (a rename
/// over it, a removal and a new file) or that the file was truncated or rewritten in place.
///
/// # Errors
/// As stat(2): the path names nothing any more, or a directory on it cannot be searched.
pub(crate) fn id_at(path: &Path) -> std::io::Result<FileId> {
    Ok(id_of(&std::fs::metadata(path)?))
}

/// A shared mapping of the first `len` bytes of a file, read-only or read-write. Unmapped on drop
/// (memmap2's `Drop` ignores `munmap` errors: the only ones are for arguments it made itself).
#[derive(Debug)]
pub(crate) struct FileMap {
    map: memmap2::MmapRaw,
    writable: bool,
}

impl FileMap {
    /// Maps `len` bytes of `file` from its start, `MAP_SHARED`: writes go to the file, and other
    /// processes mapping it see the same page cache pages. `len` must not exceed the file's length
    /// as checked by the caller (a page past the end would raise `SIGBUS` when touched); 0 is refused
    /// by mmap(2), so an empty file is mapped as nothing.
    pub(crate) fn new(file: &File, len: usize, writable: bool) -> Result<Option<FileMap>> {
        if len == 0 {
            return Ok(None);
        }
        let mut opts = memmap2::MmapOptions::new();
        opts.len(len);
        let map = if writable {
            opts.map_raw(file)
        } else {
            opts.map_raw_read_only(file)
        }
        .map_err(|e| Error::os("mmap", e))?;
        Ok(Some(FileMap { map, writable }))
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// Asks the kernel to map `len` bytes at `offset` now (`MADV_POPULATE_READ`, Linux 5.14), so a
    /// task that reads its whole range takes one system call instead of a fault per 64 KiB. Only an
    /// optimisation: kernels without it (EINVAL) just fault as the range is read.
    pub(crate) fn prefault(&self, offset: usize, len: usize) {
        if len > 0 && offset.checked_add(len).is_some_and(|end| end <= self.len()) {
            let _ = self
                .map
                .advise_range(memmap2::Advice::PopulateRead, offset, len);
        }
    }

    /// Writes the dirty pages back to the file (`msync(MS_SYNC)`).
    pub(crate) fn flush(&self) -> Result<()> {
        self.map.flush().map_err(|e| Error::os("msync", e))
    }
}
