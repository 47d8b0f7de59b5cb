//! The janitor: removes named regions whose creator it proved dead.
//!
//! The rule it applies, and what it means for processes still using a removed region, are in the docs of
//! [`cleanup_stale`] (public, since a user decides when to call it).

use super::header::{Header, FLAG_PERSISTENT, FORMAT_VERSION, MAGIC};
use super::{creator_known_dead, Region, SHM_PREFIX};
use crate::error::Result;
use crate::sys::{proc, shm};

/// Unlinks every non-persistent named region of this user whose creating process is proved gone, and
/// returns their names.
///
/// A creator normally unlinks its region when its handle drops; a creator killed with SIGKILL cannot, and
/// its region would stay in `/dev/shm` until reboot. Call this at start-up, or from a test suite, to reclaim
/// them. Persistent regions, regions of other users, files that are not regions of this format, and
/// regions whose creator still runs or cannot be judged (another pid namespace) are left alone. The
/// creator is identified by pid *and* start time, so a recycled pid does not keep a region alive.
///
/// # What is removed, and what is not
///
/// A segment is removed only if all of these hold:
/// - it is a regular file of this user under the `mproc.` prefix;
/// - it carries this format's magic, version and header size, so its creator fields can be read;
/// - its creator is recorded (pid, start time) in *our* pid namespace, and is proved gone: no such
///   pid in our `/proc`, a zombie, or a pid now used by a process with another start time;
/// - it is not a published persistent region.
///
/// Everything else is kept, whatever its age: a file without our magic (another tool using the prefix,
/// another format), a creator in another pid namespace or in an unknown one (a container sharing
/// `/dev/shm` sees other pids than ours), a creator whose liveness `/proc` cannot tell.
/// Nothing of ours needs age to be judged: named regions are created unnamed and linked under their name
/// only once published, so no half-made region of ours ever carries a name.
///
/// # Names of regions still in use
///
/// The janitor removes a *name*, never memory. When the creator of a non-persistent region dies while
/// other processes still use the region, those processes keep their mappings and keep working with each
/// other; the memory is freed when the last of them unmaps it. But once the janitor has removed the
/// name, a later `open` of it fails with [`Error::NotFound`](crate::Error::NotFound), and a later
/// `create` (or `open_or_create`) of that name makes a *new, separate* region: the old users and the new
/// ones no longer share anything. This is the same rule as for a creator that drops its handle while
/// others use the region: the name of a non-persistent region lives as long as its creator. A region
/// whose name must outlive its creator is made persistent (`open_or_create` objects are); the janitor
/// never removes a published persistent region.
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

/// Judges one entry and removes it if it is proved stale; `Some(true)` if it was removed.
pub(super) fn is_stale(shm_name: &str) -> Option<bool> {
    // Regular files only: open_named never opens a FIFO or device for real.
    let file = shm::open_named(shm_name, shm_name).ok()?;
    let info = shm::file_info(&file).ok()?;
    if info.uid != proc::euid() {
        return Some(false);
    }
    let inode_file = file.try_clone().ok()?;
    // None: shorter than a header. A zero snapshot: not our magic. Neither is judged, so neither goes.
    let (h, ready) = Region::peek_header(file)?;
    let ours = h.magic == MAGIC
        && h.version == FORMAT_VERSION
        && h.header_size as usize == std::mem::size_of::<Header>();
    if !ours {
        return Some(false);
    }
    // A persistent region outlives its creator only once published: one whose creator died half-way
    // (made by an older build, which named regions before publishing them) would block its name forever.
    let keep = h.flags & FLAG_PERSISTENT != 0 && ready;
    if keep || !creator_known_dead(h.creator_pid, h.creator_start, h.creator_pidns) {
        return Some(false);
    }
    // Remove it only if the name still refers to the file we judged.
    let user_name = &shm_name[SHM_PREFIX.len()..];
    Some(shm::unlink_named_if_same(shm_name, user_name, &inode_file).unwrap_or(false))
}
