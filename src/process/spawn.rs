//! Starting a child by re-executing the running executable (the default start method).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::bootstrap::{self, SpawnKind, SpawnTask};
use super::fnref::{Content, FnKey, LocalFn};
use super::Child;
use crate::error::{Error, Result};
use crate::sys::channel;
use crate::sys::process::{self as psys, ExeId};
use crate::sys::shm;

/// How long `start` waits for a child that may outlive us to check that we are its parent
/// (`channel::wait_for_ack`). A child reaches that check about a millisecond after its `exec` here;
/// this bounds the wait for one held up before it (another library's constructor, say).
const ACK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

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

/// Starts `/proc/self/exe` to run `func(args)` and returns the running child.
///
/// The child inherits three descriptors (see `sys::channel`): the task in a memfd sealed before the child
/// exists, the key that authenticates the task's function reference in a socket no other process can
/// re-open, and an empty memfd for the result. This process closes its copies of the first two as soon
/// as the child is started, so nothing secret stays reachable through `/proc/<our pid>/fd`; the result
/// memfd is all it keeps.
///
/// `std::process::Command` is what makes this safe from a multi-threaded parent: between its fork and
/// `exec` it runs only async-signal-safe code (here: clearing close-on-exec on the three descriptors),
/// so no lock held by another thread is ever needed in the child, and the descriptors stay
/// close-on-exec in this process, so programs other threads start meanwhile never inherit them.
pub(super) fn start(
    func: LocalFn<SpawnKind>,
    key: FnKey,
    args: &[u8],
    die_with_parent: bool,
) -> Result<Child> {
    start_inheriting(func, key, args, die_with_parent, None)
}

/// As [`start`], and the child also inherits `extra` (the fork server's request socket), under the same
/// number; the task's argument names it. Like the other three, it stays close-on-exec in this process.
pub(super) fn start_inheriting(
    func: LocalFn<SpawnKind>,
    key: FnKey,
    args: &[u8],
    die_with_parent: bool,
    extra: Option<RawFd>,
) -> Result<Child> {
    // Keep the pre-main constructor in every program that can spawn: referring to the static makes the
    // linker include the object file that holds it (and its `.init_array` entry).
    std::hint::black_box(&bootstrap::CONSTRUCTOR);
    channel::refuse_if_sigchld_ignored("spawn")?;
    channel::refuse_if_exec_is_secure("spawn")?;
    channel::refuse_if_started_by_loader("spawn")?;
    let task = SpawnTask {
        exe: exe_id()?,
        func: func.sign(&key),
        args: args.to_vec(),
        parent_pid: std::process::id(),
        die_with_parent,
    };
    let frame = bootstrap::encode_spawn_task(&task);
    if frame.len() as u64 > bootstrap::MAX_TASK_BYTES {
        return Err(Error::MessageTooLarge {
            size: frame.len(),
            max: bootstrap::MAX_TASK_BYTES as usize,
        });
    }
    let task_file = File::from(channel::above_standard(
        shm::create_memfd("mproc-task")?.into(),
    )?);
    task_file
        .write_all_at(&frame, 0)
        .map_err(|e| Error::os("write task", e))?;
    channel::seal_contents(&task_file)?;
    let (key_ours, key_theirs) = channel::key_socketpair()?;
    let key_theirs = channel::above_standard(key_theirs)?;
    // The key, and the MAC of the task under it: until `seal_contents` the memfd could be re-opened
    // and rewritten by any process of our uid, so the child checks it runs exactly this frame.
    channel::send_packet(
        &key_ours,
        &channel::key_packet(key.to_bytes(), key.content_mac(Content::SpawnTask, &frame)),
    )?;
    let result = File::from(channel::above_standard(
        shm::create_memfd("mproc-result")?.into(),
    )?);

    let fds = [
        task_file.as_raw_fd(),
        key_theirs.as_raw_fd(),
        result.as_raw_fd(),
        // A duplicate of one of the three when there is no extra: clearing close-on-exec twice on the
        // same descriptor is harmless.
        extra.unwrap_or(result.as_raw_fd()),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(
        bootstrap::ENV_VAR,
        format!("{}:{}:{}:{}", std::process::id(), fds[0], fds[1], fds[2]),
    )
    .stdin(Stdio::null());
    channel::inherit_on_exec(&mut cmd, fds);
    let spawned = cmd.spawn();
    // The child has its copies now (or never will): ours go, key first, but for a child that may
    // outlive us, which must find us alive until it has checked that we are its parent: ours waits for
    // its ack (`channel::wait_for_ack`), after its end is gone from this process.
    if die_with_parent {
        drop(key_ours);
        drop(key_theirs);
        drop(task_file);
    } else {
        drop(key_theirs);
        drop(task_file);
        if spawned.is_ok() {
            channel::wait_for_ack(&key_ours, ACK_PATIENCE);
        }
        drop(key_ours);
    }
    let mut child = spawned.map_err(|e| Error::os("spawn /proc/self/exe", e))?;
    let pid = child.id();
    match psys::pidfd_open(pid) {
        Ok(pidfd) => Ok(Child {
            pid,
            pidfd,
            result,
            via_server: None,
        }),
        Err(e) => {
            // Without a pidfd we cannot manage it safely: do not leave it running or unreaped.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
