//! The janitor: removes named regions whose creator it proved dead, and the block groups of queues
//! nobody is attached to any more.
//!
//! The rule it applies, and what it means for processes still using a removed region, are in the docs of
//! [`cleanup_stale`] (public, since a user decides when to call it).
//!
//! # Block groups and their anchor
//! A queue keeps blocks outside its own region (spilled messages, segments of an unbounded queue: see
//! the queue layer), named `q<id>-<letter><16 hex>` where `<id>` is the queue region's id in 16 lower-case
//! hex digits. Their maker being dead says nothing about whether the queue still needs them, so they are
//! judged by the group they belong to, through the group's *anchor* `q<id>-anchor`: an empty regular
//! file of this user on which every attachment to the queue holds a shared `flock` ([`GroupAnchor`])
//! for as long as it is attached. Whoever takes the exclusive lock (without waiting) has proved that
//! nobody is attached; it then removes the group's blocks, and the anchor last, while it holds the lock.
//! This is how the last user of a queue cleans up when it lets go, and how [`cleanup_stale`] cleans up
//! after queues whose every user was killed.
//!
//! Why it is race-free:
//! - an anchor is created unnamed, locked shared, and only then named (`O_TMPFILE`, then `link`): no
//!   process ever finds an anchor of a live attachment unlocked;
//! - an attacher opens the anchor by name, waits (bounded) for its shared lock, and then checks that
//!   the name still refers to the file it locked: if a sweep removed it in between, the attacher starts
//!   again with the current anchor (or makes one). So every attachment holds the lock on the anchor that
//!   is named, and a sweep, which unlinks the anchor only while it holds it exclusively, never removes
//!   one that an attachment holds;
//! - a sweep likewise checks, once it holds the exclusive lock, that the name still refers to its file
//!   (another sweep may have removed it, and a new attacher made a new one, in between);
//! - blocks are made only by attached processes, so a group without an anchor has no attachment. A
//!   sweep of such a group makes an anchor itself, locked exclusively before it is named; if an attacher
//!   named one first, the sweep leaves the group alone.
//!
//! Descriptors copied into children: a child another thread is spawning holds a copy of each of our
//! descriptors, and so of each attachment's locked description, until it execs (close-on-exec). The
//! last user therefore *unlocks* its description before closing it (`flock(LOCK_UN)` acts on the
//! description, whatever copies exist), or its exclusive attempt would fail against its own lock and
//! nobody would remove the group. A child forked by this crate, which goes on running with copies of
//! its parent's handles, is given descriptions of its own, locked before the fork ([`ForkAnchors`]),
//! and lets go of them all before it `_exit`s.
//!
//! What a sweep cannot know: a process that holds a queue's region but is not yet attached to it (it
//! is opening a handle whose other users have all let go or died). It finds the queue's blocks gone,
//! and each spilled message then fails its `get` with [`Error::Corrupted`](crate::Error::Corrupted).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::header::{layout_hash, Header, HeaderSnapshot, FLAG_PERSISTENT, FORMAT_VERSION, MAGIC};
use super::{aside_name, creator_known_dead, Region, ASIDE_PREFIX, SHM_PREFIX};
use crate::error::{Error, Result};
use crate::sys::{proc, shm};

/// How long attaching waits for a sweep of the group (an exclusive lock held for a directory scan) to
/// finish before it reports [`Error::Timeout`]: not a wait a peer can stretch without bound.
const ANCHOR_WAIT: Duration = Duration::from_secs(2);

/// The type names of a queue's blocks (spilled messages, segments of an unbounded queue): the only
/// regions a sweep removes from a group.
pub(crate) const BLOCK_TYPES: [&str; 2] = ["mproc queue spill block", "mproc queue segment"];

/// Folded into the type hash of blocks: bump it when their layout or their protocol changes.
/// 2: attachments hold the group's anchor (a process of an older build, which locks the queue's own
/// segment instead, would not keep this build's blocks alive, so the two must not share blocks).
const BLOCK_REVISION: usize = 2;

/// The type hash of a block of type `what` (one of [`BLOCK_TYPES`]).
pub(crate) fn block_type_hash(what: &str) -> u64 {
    layout_hash(what, BLOCK_REVISION, 64)
}

/// Unlinks every non-persistent named region of this user whose creating process is proved gone, and
/// the blocks of queues nobody is attached to any more, and returns their names.
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
/// Names `mproc..aside-…` are where a process moves a name it is removing, for an instant (so that it
/// removes only the file it judged, even if the name was re-created meanwhile): such a name is removed
/// once the process recorded in it is proved gone, as for a creator.
///
/// # Blocks of queues
///
/// A queue's spilled messages and an unbounded queue's segments are named `q<queue id>-…` (ids are 16
/// lower-case hex digits; such names are reserved for queues). They are removed, with the queue's
/// anchor `q<queue id>-anchor`, when no process is attached to the queue any more: the exclusive
/// `flock` on the anchor, tried without waiting, succeeds only then, since every attachment holds a
/// shared one for its whole life (and the kernel drops those of a killed process). The queue's last
/// user does the same when it lets go; the janitor covers queues whose every user was killed. A
/// group's entries are removed only if they are published persistent regions of this user and
/// format named like blocks; an anchor that is not an empty regular file of this user (a symlink, a
/// file of another user, anything with bytes in it) keeps its whole group. A group with blocks and no
/// anchor has no attachment (blocks are only made by attached processes): the janitor anchors it
/// itself, exclusively locked, and removes it.
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
        // Judged by the process that moved it there, not by its header (module `shm`).
        if user_name.starts_with(ASIDE_PREFIX) {
            if reclaim_aside(&shm_name) {
                removed.push(user_name.to_owned());
            }
            continue;
        }
        if is_stale(&shm_name).unwrap_or(false) {
            removed.push(user_name.to_owned());
        }
    }
    let mut groups: Vec<u64> = shm::list_named(SHM_PREFIX)
        .iter()
        .filter_map(|n| group_of(n))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for id in groups {
        removed.extend(reclaim_group(id));
    }
    Ok(removed)
}

/// The header of the segment `shm_name` if it is a regular file of this user long enough to have one
/// (the snapshot is all zero if it lacks our magic), with whether it is published, and a descriptor of
/// the same file (to unlink the name only if it still refers to it).
fn peek_ours(shm_name: &str) -> Option<(File, HeaderSnapshot, bool)> {
    // Regular files only: open_named never opens a FIFO or device for real.
    let file = shm::open_named(shm_name, shm_name).ok()?;
    let info = shm::file_info(&file).ok()?;
    if info.uid != proc::euid() {
        return None;
    }
    let inode_file = file.try_clone().ok()?;
    // None: shorter than a header. A zero snapshot: not our magic.
    let (h, ready) = Region::peek_header(file)?;
    let ours = h.magic == MAGIC
        && h.version == FORMAT_VERSION
        && h.header_size as usize == std::mem::size_of::<Header>();
    ours.then_some((inode_file, h, ready))
}

/// Judges one entry and removes it if it is proved stale; `Some(true)` if it was removed.
pub(super) fn is_stale(shm_name: &str) -> Option<bool> {
    // Not ours (another user, too short for a header, not our magic or format): not judged, never goes.
    let Some((inode_file, h, ready)) = peek_ours(shm_name) else {
        return Some(false);
    };
    // A persistent region outlives its creator only once published: one whose creator died half-way
    // (made by an older build, which named regions before publishing them) would block its name forever.
    let keep = h.flags & FLAG_PERSISTENT != 0 && ready;
    if keep || !creator_known_dead(h.creator_pid, h.creator_start, h.creator_pidns) {
        return Some(false);
    }
    // Remove it only if the name still refers to the file we judged.
    let user_name = &shm_name[SHM_PREFIX.len()..];
    Some(
        shm::unlink_named_if_same(shm_name, user_name, &inode_file, &aside_name()).unwrap_or(false),
    )
}

/// Removes `shm_name`, a name that a process moved a file to in order to remove it
/// ([`aside_name`], [`shm::unlink_named_if_same`]), if that process is proved gone: killed between
/// the move and the unlink, it left the file there, where nobody opens it by name any more. While
/// its maker lives (or cannot be judged) it is left alone: the maker is about to remove it, or to
/// move it back. Only a regular file of this user; `true` if it was removed.
pub(super) fn reclaim_aside(shm_name: &str) -> bool {
    let Some(rest) = shm_name
        .strip_prefix(SHM_PREFIX)
        .and_then(|n| n.strip_prefix(ASIDE_PREFIX))
    else {
        return false;
    };
    // `<pid namespace, hex>-<pid>-<start time>-<nonce>`; anything else is not an aside name of ours.
    let mut fields = rest.split('-');
    let (Some(ns), Some(pid), Some(start), Some(_nonce), None) = (
        fields.next().and_then(|f| u32::from_str_radix(f, 16).ok()),
        fields.next().and_then(|f| f.parse::<u32>().ok()),
        fields.next().and_then(|f| f.parse::<u64>().ok()),
        fields.next(),
        fields.next(),
    ) else {
        return false;
    };
    if !creator_known_dead(pid, start, ns) {
        return false;
    }
    // Regular files of this user only (no symlink followed, nothing of another user touched).
    let Ok(file) = shm::open_named(shm_name, shm_name) else {
        return false;
    };
    if !shm::file_info(&file).is_ok_and(|i| i.uid == proc::euid()) {
        return false;
    }
    shm::unlink_named_if_same(shm_name, shm_name, &file, &aside_name()).unwrap_or(false)
}

// ------------------------------------------------------------------------------------- block groups

/// The prefix of the names of queue `id`'s blocks (without [`SHM_PREFIX`]): `q<id in 16 hex>-`.
pub(crate) fn group_prefix(id: u64) -> String {
    format!("q{id:016x}-")
}

/// The `/dev/shm` name of group `id`'s anchor.
fn anchor_shm_name(id: u64) -> String {
    format!("{SHM_PREFIX}{}anchor", group_prefix(id))
}

/// 16 lower-case hex digits (how [`group_prefix`] writes a number; an upper-case spelling would name
/// another group than the one it parses to).
fn hex16(s: &str) -> Option<u64> {
    let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

/// The group of a `/dev/shm` name: `Some(id)` for `mproc.q<id>-…`.
fn group_of(shm_name: &str) -> Option<u64> {
    let rest = shm_name.strip_prefix(SHM_PREFIX)?.strip_prefix('q')?;
    let (hex, tail) = rest.split_at_checked(16)?;
    tail.starts_with('-').then_some(())?;
    hex16(hex)
}

/// Whether a user's name (without [`SHM_PREFIX`]) has the form reserved for the blocks of queues,
/// `q<16 hex digits>-…` (a group's anchor included).
pub(crate) fn is_group_name(name: &str) -> bool {
    group_of(&format!("{SHM_PREFIX}{name}")).is_some()
}

/// Whether the part of a name after its group prefix names a block: one letter, 16 hex digits.
fn is_block_tail(tail: &str) -> bool {
    let mut chars = tail.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && hex16(chars.as_str()).is_some()
}

/// Opens the anchor `shm_name`: a regular file (no symlink followed, no FIFO or device opened) of this
/// user, and empty (an anchor never holds a byte). Anything else under the name is not ours to use.
fn open_anchor(shm_name: &str) -> Result<File> {
    let file = shm::open_named(shm_name, shm_name)?;
    let info = shm::file_info(&file)?;
    if info.uid != proc::euid() || info.size != 0 {
        return Err(Error::Corrupted(format!(
            "{shm_name} is not a queue anchor (owner {}, {} bytes)",
            info.uid, info.size
        )));
    }
    Ok(file)
}

/// Makes group `id`'s anchor, locked (shared, or `exclusive`) before it is named, so that nobody ever
/// finds it unlocked. [`Error::AlreadyExists`] if somebody named one first.
fn make_anchor(id: u64, exclusive: bool) -> Result<File> {
    let name = anchor_shm_name(id);
    let file = shm::create_unnamed_shm()?;
    // A description nobody else has: the lock is free.
    if !shm::try_flock(&file, exclusive)? {
        return Err(Error::Corrupted(format!(
            "a fresh anchor for {name} was locked by another process"
        )));
    }
    shm::link_named(&file, &name, &name)?;
    Ok(file)
}

/// One attachment's shared lock on its block group's anchor (see the module docs): while it is held,
/// neither a queue's last user nor [`cleanup_stale`] removes the group's blocks.
///
/// Dropping it lets go without cleaning up; [`GroupAnchor::release`] lets go and cleans up if it was
/// the last. A child forked by this crate gets a lock of its own on every anchor the parent holds
/// ([`ForkAnchors`]). A child forked otherwise shares the parent's description: it never unlocks it
/// (its `release` only closes its copy, as before), but the parent's `release` does, so such a child
/// must attach from a handle to count as a user once its parent has let go.
#[derive(Debug)]
pub(crate) struct GroupAnchor {
    file: File,
}

/// A live [`GroupAnchor`] of this process, for [`ForkAnchors`] and [`GroupAnchor::release`].
#[derive(Clone, Copy)]
struct LiveAnchor {
    fd: RawFd,
    /// The group's queue id.
    id: u64,
    /// The process that locked the description `fd` refers to. A child forked outside this crate
    /// inherits the list with its parent's pid in it: the description is the parent's too, and the
    /// child must not unlock it.
    owner: u32,
}

/// This process's live anchors. An anchor is listed from just after its lock is taken until just
/// before it is unlocked or closed.
static LIVE_ANCHORS: Mutex<Vec<LiveAnchor>> = Mutex::new(Vec::new());

fn live_anchors() -> MutexGuard<'static, Vec<LiveAnchor>> {
    // The list is a plain Vec of integers, consistent after any panic: poisoning says nothing about it.
    LIVE_ANCHORS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unlists the anchor `fd`; returns its entry.
fn unlist(fd: RawFd) -> Option<LiveAnchor> {
    let mut live = live_anchors();
    let at = live.iter().position(|a| a.fd == fd)?;
    Some(live.swap_remove(at))
}

impl Drop for GroupAnchor {
    fn drop(&mut self) {
        unlist(self.file.as_raw_fd());
    }
}

/// Locks of their own, for a child about to be forked, on every anchor this process holds: made before
/// the fork (new descriptions of the same files, locked shared), installed in the child over the
/// inherited descriptors ([`ForkAnchors::in_child`]), closed in the parent ([`ForkAnchors::in_parent`]).
/// Without them the child would share each lock with the parent, and the parent's
/// [`GroupAnchor::release`], which unlocks its description whatever copies of it exist, would leave a
/// child still using the queue unprotected. Holds the list of live anchors across the fork, so none is
/// added or released meanwhile (and the child's copy of the list is not left locked).
pub(crate) struct ForkAnchors {
    live: MutexGuard<'static, Vec<LiveAnchor>>,
    /// The child's description for each entry of `live`, in the same order.
    own: Vec<File>,
}

impl ForkAnchors {
    /// Prepares the child's locks (in the parent, before `fork`): one more descriptor per live anchor
    /// until the fork is done.
    ///
    /// # Errors
    /// [`Error::Os`] if a description cannot be made (out of descriptors, no `/proc`): the fork must not
    /// go ahead, since the child would share that lock with us and either side's letting go would
    /// unlock it for the other.
    pub(crate) fn before_fork() -> Result<ForkAnchors> {
        let live = live_anchors();
        let mut own = Vec::with_capacity(live.len());
        for a in live.iter() {
            let file = shm::reopen_fd(a.fd)?;
            // Compatible with our own shared lock; refused only while a sweep holds the anchor
            // exclusively, which it cannot while we hold it.
            if !shm::try_flock(&file, false)? {
                return Err(Error::Corrupted(format!(
                    "the anchor of queue {:016x} is locked exclusively while we hold it",
                    a.id
                )));
            }
            own.push(file);
        }
        Ok(ForkAnchors { live, own })
    }

    /// In the child: each inherited anchor descriptor now refers to the child's own locked description,
    /// and its entry names the child as the owner. Only `dup3`, `getpid`, `close`, a `free` and the unlock
    /// of the list (async-signal-safe, or safe after glibc's `fork`).
    pub(crate) fn in_child(mut self) {
        let me = proc::pid();
        for (a, file) in self.live.iter_mut().zip(&self.own) {
            // On failure the descriptor keeps the parent's description and the entry its owner: the
            // child then never unlocks it, as a child forked outside this crate would not.
            if shm::dup_over(file, a.fd).is_ok() {
                a.owner = me;
            }
        }
    }

    /// In the parent: the new descriptions are the child's now (or, if the fork failed, nobody's).
    pub(crate) fn in_parent(self) {}

    /// In a forked child about to end (it `_exit`s, dropping nothing): lets go of every anchor it holds
    /// as [`GroupAnchor::release`] would, removing the groups of which it was the last user. Its handles
    /// of a queue include copies of the parent's, which it never drops, so without this a child that
    /// outlived every other user would leave the queue's blocks to [`cleanup_stale`].
    pub(crate) fn release_all_before_exit() {
        let held = std::mem::take(&mut *live_anchors());
        let me = proc::pid();
        for a in held {
            if a.owner == me {
                // Still open: its `GroupAnchor` is never dropped in this process.
                let _ = shm::unlock_fd_flock(a.fd);
            }
            reclaim_group(a.id);
        }
    }
}

impl GroupAnchor {
    /// Takes a shared lock on group `id`'s anchor, making the anchor if there is none; waits (at most
    /// two seconds, then [`Error::Timeout`]) while a sweep of the group holds it exclusively.
    ///
    /// Once this returns, the group's blocks that exist stay until every holder has let go.
    pub(crate) fn hold(id: u64) -> Result<GroupAnchor> {
        let name = anchor_shm_name(id);
        let deadline = Instant::now() + ANCHOR_WAIT;
        loop {
            let file = match open_anchor(&name) {
                Ok(file) => file,
                Err(Error::NotFound { .. }) => match make_anchor(id, false) {
                    Ok(file) => return Ok(Self::listed(file, id)),
                    // Somebody named one between our open and our link: use theirs.
                    Err(Error::AlreadyExists { .. }) => {
                        Self::pause(deadline)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
            while !shm::try_flock(&file, false)? {
                Self::pause(deadline)?;
            }
            // Locked: a sweep can no longer unlink this name; but one may have, before we locked.
            if shm::names_file(&name, &file)? {
                return Ok(Self::listed(file, id));
            }
            Self::pause(deadline)?;
        }
    }

    /// The anchor of a locked `file`, listed for [`ForkAnchors`].
    fn listed(file: File, id: u64) -> GroupAnchor {
        live_anchors().push(LiveAnchor {
            fd: file.as_raw_fd(),
            id,
            owner: proc::pid(),
        });
        GroupAnchor { file }
    }

    /// A short sleep before the next attempt, or [`Error::Timeout`] once `deadline` has passed.
    fn pause(deadline: Instant) -> Result<()> {
        if Instant::now() >= deadline {
            return Err(Error::Timeout);
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }

    /// Lets go of group `id`; if no other holder anywhere remains, removes the group's blocks and its
    /// anchor. Returns the names removed.
    pub(crate) fn release(self, id: u64) -> Vec<String> {
        // Unlisted first, so that no fork from here on gives a child a lock on this anchor.
        let entry = unlist(self.file.as_raw_fd());
        // Then unlocked, not only closed: a child that another thread of ours is spawning holds a copy
        // of every descriptor until it execs, and a close would leave the lock to that copy; the
        // exclusive attempt below would fail and nobody would remove the group. (Children forked by
        // this crate hold locks of their own: `ForkAnchors`.) Only a description this process locked:
        // in a child forked outside this crate it is still the parent's lock. An error leaves the lock
        // to the close.
        if entry.is_some_and(|a| a.owner == proc::pid()) {
            let _ = shm::unlock_flock(&self.file);
        }
        drop(self);
        reclaim_group(id)
    }
}

/// Removes group `id` (its blocks, then its anchor) if nobody holds its anchor; returns the names
/// removed (without [`SHM_PREFIX`]). See the module docs for why this is race-free.
fn reclaim_group(id: u64) -> Vec<String> {
    let name = anchor_shm_name(id);
    let anchor = match open_anchor(&name) {
        Ok(file) => file,
        // No anchor, so no attachment: hold one of our own while we sweep. If an attacher named one
        // first, the group is theirs.
        Err(Error::NotFound { .. }) => match make_anchor(id, true) {
            Ok(file) => file,
            Err(_) => return Vec::new(),
        },
        // A symlink, another user's file, a file with bytes: not an anchor of ours, not our group.
        Err(_) => return Vec::new(),
    };
    // Errors count as "held": when in doubt, keep.
    if !shm::try_flock(&anchor, true).unwrap_or(false) {
        return Vec::new();
    }
    // Another sweep may have removed this anchor (and an attacher made a new one) before we locked.
    if !shm::names_file(&name, &anchor).unwrap_or(false) {
        return Vec::new();
    }
    let prefix = format!("{SHM_PREFIX}{}", group_prefix(id));
    let mut removed = Vec::new();
    for shm_name in shm::list_named(&prefix) {
        if !is_block_tail(&shm_name[prefix.len()..]) {
            continue;
        }
        // Blocks are persistent regions of a block's type, named only once published; anything
        // else is not one: a user's persistent region may bear a name like a block's (found by
        // review: `cleanup_stale` removed one, which it promises never to do).
        let Some((file, h, ready)) = peek_ours(&shm_name) else {
            continue;
        };
        let a_block = BLOCK_TYPES
            .iter()
            .any(|&what| h.type_hash == block_type_hash(what));
        if h.flags & FLAG_PERSISTENT == 0 || !ready || !a_block {
            continue;
        }
        if shm::unlink_named_if_same(&shm_name, &shm_name, &file, &aside_name()).unwrap_or(false) {
            removed.push(shm_name[SHM_PREFIX.len()..].to_owned());
        }
    }
    // The anchor last, still locked: an attacher waiting on it finds it gone and starts afresh.
    if shm::unlink_named_if_same(&name, &name, &anchor, &aside_name()).unwrap_or(false) {
        removed.push(name[SHM_PREFIX.len()..].to_owned());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child holds and lets go of a queue's anchor while another thread of its parent holds
    /// the list of anchors (as every hold and release does). Held across the fork since
    /// `ForkAnchors`: a guard.
    #[test]
    fn a_forked_child_holds_an_anchor_whatever_another_thread_holds_the_list() {
        let got = crate::process::forklocks::tests::fork_while_held(live_anchors, || {
            let id = proc::random_u64();
            let anchor = GroupAnchor::hold(id).expect("an anchor in the child");
            let removed = anchor.release(id);
            // Its only holder: the anchor itself is removed.
            removed.len() as u64 + 41
        });
        assert_eq!(got, Ok(42));
    }

    /// A persistent region whose name only looks like a queue's block is not a block: the janitor,
    /// which never removes a published persistent region otherwise, removed it with the "group"
    /// (there is no anchor, so nobody is attached). Users' constructors refuse such names now
    /// (`validate_name`); a region of another type under one (another build's, another program's)
    /// is still not the janitor's to remove.
    #[test]
    fn janitor_spares_a_persistent_region_named_like_a_block() {
        let id = proc::random_u64();
        let name = format!("{}a{:016x}", group_prefix(id), proc::random_u64());
        let bytes = super::super::Layout::bytes(Some(8));
        let r = Region::create_block(bytes, &name, |_| Ok(())).expect("a persistent region");
        let removed = reclaim_group(id);
        let still = Region::open_block(&name, super::super::Layout::bytes(None)).is_ok();
        let _ = Region::unlink_block(&name);
        drop(r);
        assert!(!removed.contains(&name), "removed {removed:?}");
        assert!(still, "the user's region lost its name");
    }
}
