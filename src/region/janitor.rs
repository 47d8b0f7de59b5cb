//! The janitor: removes named regions whose creator died without unlinking them.

use std::time::{Duration, SystemTime};

use super::header::{FLAG_PERSISTENT, MAGIC};
use super::{creator_known_dead, Region, SHM_PREFIX};
use crate::error::Result;
use crate::sys::{proc, shm};

/// A file of ours shorter than a header is normally a region being created right now (the creator makes
/// the name with O_EXCL, then sizes it). Only one this old is taken for the leftover of a killed creator.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// Unlinks every non-persistent named region of this user whose creating process is gone, and returns
/// their names. A creator recorded in another (or an unknown) pid namespace is never judged gone: its
/// pid means nothing in our `/proc`.
///
/// A creator normally unlinks its region when its handle drops; a creator killed with SIGKILL cannot, and
/// its region would stay in `/dev/shm` until reboot. Call this at start-up, or from a test suite, to reclaim
/// them. Persistent regions, regions of other users and regions whose creator still runs are left alone.
/// The creator is identified by pid *and* start time, so a recycled pid does not keep a region alive.
///
/// # Errors
/// None today: entries that cannot be read are skipped. The `Result` leaves room for platforms where
/// listing can fail.
///
/// # Examples
/// ```
/// let removed = mproc::cleanup_stale()?;
/// println!("reclaimed {} stale regions", removed.len());
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for shm_name in shm::list_named(SHM_PREFIX) {
        let user_name = &shm_name[SHM_PREFIX.len()..];
        if is_stale(&shm_name).unwrap_or(false) {
            removed.push(user_name.to_owned());
        }
    }
    Ok(removed)
}

pub(super) fn is_stale(shm_name: &str) -> Option<bool> {
    let file = shm::open_named(shm_name, shm_name).ok()?;
    let info = shm::file_info(&file).ok()?;
    if info.uid != proc::euid() {
        return Some(false);
    }
    let inode_file = file.try_clone().ok()?;
    let header = Region::peek_header(file).filter(|(h, _)| h.magic == MAGIC && h.creator_pid != 0);
    let stale = match header {
        // Too short for a header, or its magic not yet written: a creator still at work, or one killed
        // before it got that far. Only age can tell them apart.
        None => {
            let age = std::fs::metadata(format!("{}/{shm_name}", shm::SHM_DIR))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())?;
            age > ABANDONED_AFTER
        }
        Some((h, ready)) => {
            // A persistent region outlives its creator only once published: one whose creator died
            // half-way would block its name forever.
            let keep = h.flags & FLAG_PERSISTENT != 0 && ready;
            !keep && creator_known_dead(h.creator_pid, h.creator_start, h.creator_pidns)
        }
    };
    if stale {
        // Remove it only if the name still refers to the file we judged.
        let user_name = &shm_name[SHM_PREFIX.len()..];
        return Some(shm::unlink_named_if_same(shm_name, user_name, &inode_file).unwrap_or(false));
    }
    Some(false)
}
