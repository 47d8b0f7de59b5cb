//! Blocks a queue keeps outside its own region: messages too large for a ring slot ("spilled" to a
//! block of their own) and the segments of an unbounded queue; and how the last process to let go of a
//! queue finds out it is the last, and removes what is left of them.
//!
//! # Names
//! A queue's blocks are named regions (`/dev/shm/mproc.q<queue id>-…`), so that any process attached to
//! the queue can open them, whoever made them and whether or not their maker still lives: a spilled
//! message must outlive the producer that put it. Names are derived here from the queue's own region id
//! (known to this process, never read from the queue's shared words) and a number read from the queue:
//! whatever a peer writes in a slot, the name we open stays under this queue's prefix, and the block is
//! then validated like any region (magic, version, type hash, size against the file) before any byte of
//! it is used. Blocks are created persistent: the region's drop in their maker does not unlink them, and
//! the janitor (`cleanup_stale`) does not judge them by their maker. They are unlinked by the consumer
//! that takes them, and whatever a killed process left behind (a block made but never referenced, a
//! block referenced but not yet unlinked) by the last user of the queue ([`Attachment::release`]), or,
//! if every user was killed, by `cleanup_stale`.
//!
//! # The last user
//! A queue's blocks form a *group* with an *anchor*, `/dev/shm/mproc.q<queue id>-anchor` (the protocol
//! is the region layer's, `region::janitor`, since the janitor applies it too). Every attachment to a
//! queue holds a shared `flock` on its own open file description of the anchor, for its whole life;
//! attaching makes the anchor if there is none, before the attachment can make any block, and checks
//! after taking the lock that the name still refers to the file it locked. Dropping the last handle in
//! a process closes that description and then tries an exclusive lock on a fresh one: only when no
//! other attachment anywhere holds the shared lock does it succeed, and then the group's blocks are
//! removed, the anchor last. The kernel drops the locks of a killed process with its descriptors, so a
//! SIGKILLed user never keeps the blocks alive, and never needs to. Letting go unlocks the description
//! before closing it: a child that another thread is spawning holds a copy of every descriptor until it
//! execs, and must not keep the lock (and the blocks) alive past the last user. A child forked by this
//! crate gets a description and lock of its own on every anchor its parent holds, before the fork, and
//! lets go of them all when it ends (it `_exit`s without dropping its copies of the parent's handles).
//!
//! If *every* process attached to a queue is killed, nobody is left to take the exclusive lock; the
//! janitor (`cleanup_stale`) does, without waiting, for every group it finds, and removes the group's
//! blocks and anchor when it succeeds: never while any process is attached. A process that attaches
//! through a handle while the last other user (or the janitor) is removing the queue's group may find
//! the queue's spilled messages gone: each such message then fails its `get` with [`Error::Corrupted`].

use crate::error::{Error, Result};
use crate::region::janitor::{block_type_hash, group_prefix, GroupAnchor, BLOCK_TYPES};
use crate::region::{Layout, Region};
use crate::sys::proc;

/// Bytes of a spill reference at the start of a slot: magic, nonce, length (little-endian `u64`s).
pub(crate) const REF_LEN: usize = 24;
/// First word of a spill reference.
const REF_MAGIC: u64 = u64::from_le_bytes(*b"MPQSPIL1");

/// Where a spilled message is: read from a ring slot, so untrusted until its block is opened and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpillRef {
    /// Names the block (with the queue's id); any value only ever names a block of this queue.
    pub nonce: u64,
    /// The message's length: must equal the validated payload size of the block.
    pub len: u64,
}

impl SpillRef {
    /// Writes the reference into the first [`REF_LEN`] bytes of `out`.
    pub(crate) fn encode(self, out: &mut [u8]) {
        out[..8].copy_from_slice(&REF_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
    }

    /// Reads a reference from slot bytes (any bytes: a peer may have written them).
    pub(crate) fn parse(bytes: &[u8]) -> Result<SpillRef> {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        match (word(0), word(1), word(2)) {
            (Some(REF_MAGIC), Some(nonce), Some(len)) => Ok(SpillRef { nonce, len }),
            _ => Err(Error::Corrupted(
                "a queue slot that should hold a spilled-message reference holds garbage".into(),
            )),
        }
    }
}

/// The names of one queue's blocks, and their creation, opening and removal.
#[derive(Debug, Clone)]
pub(crate) struct Blocks {
    queue_id: u64,
}

impl Blocks {
    pub(crate) fn new(queue_id: u64) -> Blocks {
        Blocks { queue_id }
    }

    fn prefix(&self) -> String {
        group_prefix(self.queue_id)
    }

    /// The name of spilled message `nonce`.
    pub(crate) fn spill_name(&self, nonce: u64) -> String {
        format!("{}s{nonce:016x}", self.prefix())
    }

    /// The name of unbounded-queue segment `n`.
    pub(crate) fn segment_name(&self, n: u64) -> String {
        format!("{}g{n:016x}", self.prefix())
    }

    /// The layout of a block of `what` (one of the janitor's [`BLOCK_TYPES`], the only types its
    /// sweeps remove).
    pub(crate) fn layout(what: &'static str, size: Option<usize>) -> Layout {
        debug_assert!(BLOCK_TYPES.contains(&what), "{what} is not a block type");
        Layout {
            type_name: what,
            hash: block_type_hash(what),
            size,
        }
    }

    /// Creates the block `name` of `size` payload bytes, filled by `init` before it is published and
    /// named (a block is never seen half-made). Persistent: see the module docs.
    pub(crate) fn create(
        &self,
        name: &str,
        layout: Layout,
        init: impl FnOnce(&Region) -> Result<()>,
    ) -> Result<Region> {
        Region::create_block(layout, name, init)
    }

    /// Opens the block `name`, validated against `layout`; never waits (a block is named only once
    /// published). A missing block is [`Error::Corrupted`] naming it: the reference to it was garbage,
    /// or the queue was reclaimed under a late attacher (module docs).
    pub(crate) fn open(&self, name: &str, layout: Layout) -> Result<Region> {
        self.open_if_exists(name, layout)?.ok_or_else(|| {
            Error::Corrupted(format!(
                "block {name} referenced by the queue does not exist"
            ))
        })
    }

    /// As [`Blocks::open`], a missing block `None`: the unbounded queue repairs the loss of a segment.
    pub(crate) fn open_if_exists(&self, name: &str, layout: Layout) -> Result<Option<Region>> {
        match Region::open_block(name, layout) {
            Ok(region) => Ok(Some(region)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the name of a block (its mappings stay valid); a block already gone is fine.
    pub(crate) fn unlink(&self, name: &str) {
        // Errors ignored: NotFound means somebody (the last user's sweep) removed it already; any
        // other failure leaves a name that the last user's sweep removes.
        let _ = Region::unlink_block(name);
    }

    /// Creates a spill block holding `bytes` under a fresh random name; returns its reference.
    pub(crate) fn spill(&self, bytes: &[u8]) -> Result<SpillRef> {
        for _ in 0..8 {
            let nonce = proc::random_u64();
            let name = self.spill_name(nonce);
            let layout = Self::layout("mproc queue spill block", Some(bytes.len()));
            match self.create(&name, layout, |r| r.write_payload_at(0, bytes)) {
                Ok(_region) => {
                    return Ok(SpillRef {
                        nonce,
                        len: bytes.len() as u64,
                    })
                }
                // 64 random bits collided with a live block: draw again.
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Corrupted(
            "eight random spill names in a row were taken".into(),
        ))
    }

    /// Opens the block a reference names, checks it, removes its name (the message is ours now, at most
    /// once), and passes its bytes to `f`.
    pub(crate) fn take<R>(&self, r: SpillRef, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let name = self.spill_name(r.nonce);
        // The message left the ring with its reference: whatever fails from here, nobody else will
        // take the block, so its name goes on every path (an open that failed for want of descriptors
        // or memory left it in /dev/shm until the queue's last user let go; found by review).
        let block = match self.open(&name, Self::layout("mproc queue spill block", None)) {
            Ok(b) => b,
            Err(e) => {
                self.unlink(&name);
                return Err(e);
            }
        };
        // The block's size was checked against the file on open; the reference must agree with it, so
        // nothing is ever sized by the reference's word alone.
        if block.len() as u64 != r.len {
            self.unlink(&name);
            return Err(Error::Corrupted(format!(
                "spilled message {name} holds {} bytes, its reference says {}",
                block.len(),
                r.len
            )));
        }
        if !block
            .holds_memory(0, block.len())
            .inspect_err(|_| self.unlink(&name))?
        {
            self.unlink(&name);
            return Err(Error::Corrupted(format!(
                "spilled message {name} of {} bytes is a sparse file: not what a producer writes",
                block.len()
            )));
        }
        self.unlink(&name);
        // SAFETY: the payload of `block` is `block.len()` mapped bytes (validated against the file's
        // size when it was opened), alive while `block` is. Its name is gone, so no honest process
        // writes it any more; a hostile writer of the same user can change bytes under the decoder,
        // which sees them as any other untrusted input (the same trust as a ring slot's bytes).
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), block.len()) };
        Ok(f(bytes))
    }
}

/// This attachment's shared lock on the anchor of the queue's block group (see "The last user" in the
/// module docs).
#[derive(Debug)]
pub(crate) struct Attachment {
    anchor: Option<GroupAnchor>,
}

impl Attachment {
    /// Takes the shared lock, making the anchor if there is none, and waiting (bounded) while a last
    /// user's or the janitor's clean-up holds the exclusive one.
    pub(crate) fn attach(region: &Region) -> Result<Attachment> {
        Ok(Attachment {
            anchor: Some(GroupAnchor::hold(region.id())?),
        })
    }

    /// No attachment: for a queue that never spills (it has no blocks to guard).
    pub(crate) fn detached() -> Attachment {
        Attachment { anchor: None }
    }

    /// Lets go of the queue; if no other attachment anywhere remains, removes the queue's blocks and
    /// its anchor. (`region` stays mapped meanwhile; the group is found from `blocks` alone.)
    pub(crate) fn release(&mut self, _region: &Region, blocks: &Blocks) {
        if let Some(anchor) = self.anchor.take() {
            anchor.release(blocks.queue_id);
        }
    }
}
