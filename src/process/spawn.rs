//! Starting a child by re-executing the running executable (the default start method).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::bootstrap::{self, Task, Trampoline};
use super::Child;
use crate::error::{Error, Result};
use crate::sys::process::{self as psys, ExeId};
use crate::sys::shm;

fn exe_id() -> Result<ExeId> {
    // Stat once: the child compares against the file this process started from, and /proc/self/exe
    // keeps naming that inode even after the path is replaced.
    static ID: OnceLock<ExeId> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(*id);
    }
    let id = psys::current_exe_id()?;
    Ok(*ID.get_or_init(|| id))
}

/// Starts `/proc/self/exe` with the task in an inherited-by-name memfd and returns the running child.
///
/// `std::process::Command` is what makes this safe from a multi-threaded parent: between its fork (or
/// `posix_spawn`) and `exec` it runs only async-signal-safe code, so no lock held by another thread is
/// ever needed in the child. The child re-opens the memfd through `/proc/<parent>/fd/<n>` rather than
/// inheriting it, so the descriptor can stay close-on-exec and never leaks into unrelated programs that
/// other threads start meanwhile.
pub(super) fn start(
    func: usize,
    trampoline: Trampoline,
    args: &[u8],
    die_with_parent: bool,
) -> Result<Child> {
    // Keep the pre-main constructor in every program that can spawn: referring to the static makes the
    // linker include the object file that holds it (and its `.init_array` entry).
    std::hint::black_box(&bootstrap::CONSTRUCTOR);
    let anchor = bootstrap::anchor_addr() as i64;
    let task = Task {
        exe: exe_id()?,
        func: func as i64 - anchor,
        trampoline: trampoline as usize as i64 - anchor,
        args: args.to_vec(),
        parent_pid: std::process::id(),
        die_with_parent,
    };
    let result: File = shm::create_memfd("mproc-process")?;
    result
        .write_all_at(&bootstrap::encode_task(&task), 0)
        .map_err(|e| Error::os("write task", e))?;

    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(
        bootstrap::ENV_VAR,
        format!("{}:{}", std::process::id(), result.as_raw_fd()),
    )
    .stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::os("spawn /proc/self/exe", e))?;
    let pid = child.id();
    match psys::pidfd_open(pid) {
        Ok(pidfd) => Ok(Child { pid, pidfd, result }),
        Err(e) => {
            // Without a pidfd we cannot manage it safely: do not leave it running or unreaped.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
