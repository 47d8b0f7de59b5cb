//! What a pidfd can tell about a process this process did not fork: its wait status, after whoever
//! was its parent reaped it (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`, Linux 6.15+). Used when a fork
//! server died before it reported how one of its children ended: the child is then reparented (to init
//! or a subreaper), reaped there, and the kernel keeps its status for the pidfd's holders.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::process::WaitStatus;

/// `struct pidfd_info` of `<linux/pidfd.h>`, its first version (`PIDFD_INFO_SIZE_VER0`, 64 bytes):
/// Linux 6.13 defined it with a spare word at offset 60, which 6.15 turned into `exit_code`.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    /// The wait status, as `waitpid` returns it, once the process was reaped.
    exit_code: i32,
}

const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// `PIDFD_INFO_EXIT`: ask for (and, in the answer, got) the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO` = `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`: direction read|write
/// (3) in bits 30-31, the struct's size in bits 16-29, the magic in bits 8-15, the number in bits 0-7.
/// The kernel accepts any size from `PIDFD_INFO_SIZE_VER0` up (an extensible ioctl).
const PIDFD_GET_INFO: u64 =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// What the kernel says of how the process of a pidfd ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitInfo {
    /// Ended and reaped: how.
    Known(WaitStatus),
    /// Still running, or ended and not reaped (yet) by its parent.
    NotYet,
    /// The kernel keeps no exit status for pidfds (before Linux 6.15): asking again cannot help.
    Unavailable,
}

/// The wait status of the ended process of `pidfd`, once it has been reaped by its parent, waiting at
/// most `patience` for the reaping.
pub(crate) fn exit_status(pidfd: &OwnedFd, patience: Duration) -> ExitInfo {
    let deadline = Instant::now() + patience;
    loop {
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_EXIT,
            ..PidfdInfo::default()
        };
        // SAFETY: PIDFD_GET_INFO reads `mask` from and writes at most `size_of::<PidfdInfo>()` bytes (the
        // size encoded in the request number) into `info`, a live, properly sized local; on kernels
        // without it the ioctl fails (ENOTTY/EINVAL) and writes nothing.
        let r = unsafe {
            libc::ioctl(
                pidfd.as_raw_fd(),
                PIDFD_GET_INFO as _,
                &mut info as *mut PidfdInfo,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if r == 0 && info.mask & PIDFD_INFO_EXIT != 0 {
            let s = info.exit_code;
            return ExitInfo::Known(if libc::WIFSIGNALED(s) {
                WaitStatus::Signaled(libc::WTERMSIG(s))
            } else {
                WaitStatus::Exited(libc::WEXITSTATUS(s))
            });
        }
        // Running, or ended and not reaped yet (ESRCH without exit information): wait a little. Any
        // other failure means the kernel cannot tell.
        if r != 0 && errno != Some(libc::ESRCH) {
            return ExitInfo::Unavailable;
        }
        if Instant::now() >= deadline {
            return ExitInfo::NotYet;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_process_has_its_exit_status_on_new_kernels() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pidfd = super::super::process::pidfd_open(child.id()).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(7));
        let got = exit_status(&pidfd, Duration::from_millis(100));
        assert!(
            matches!(
                got,
                ExitInfo::Unavailable | ExitInfo::Known(WaitStatus::Exited(7))
            ),
            "{got:?}"
        );
    }

    #[test]
    fn a_running_process_has_no_exit_status() {
        let me = super::super::process::pidfd_open(std::process::id()).unwrap();
        assert!(matches!(
            exit_status(&me, Duration::ZERO),
            ExitInfo::NotYet | ExitInfo::Unavailable
        ));
    }
}
