//! `Log`: the unbounded queue, a chain of append-only segments in shared memory under a robust lock.
//!
//! # Layout
//! The queue's own region holds a [`LogControl`]: the lock, the chain's ends and counters. The messages
//! live in *segments*, named blocks of the queue (`q<id>-g<n>`, see `spill.rs`) numbered 1, 2, 3, …
//! in the order they were made. A segment starts with a [`SegHead`] (`next`: the number of the segment
//! after it, 0 while it is the last; `used`: bytes of committed records), then records, each a
//! little-endian `u64` length followed by the message, padded to 8 bytes.
//!
//! # Protocol
//! Every operation runs under the lock (a robust `RawLock`: a holder that dies is taken over by the
//! next caller, who is told and repairs, see below). Producers append to the tail segment; when the
//! record does not fit, they make a new segment (twice the last one's size, at least the record) and
//! link it: `last_seg` (the numbers handed out) first, then the block is made and named, then
//! `tail.next`, then `tail_seg`. A record is written past `used` and committed by storing `used`
//! (Release) after its bytes. Consumers find the record at `head_off` of segment `head_seg`, move
//! `head_off` past it, and decode it after releasing the lock (from their mapping of the segment, which
//! they keep until then); at the end of a segment that has a `next`, they move `head_seg` on and only
//! then unlink the finished segment's name. So puts never wait for space, a message of any size fits
//! (in a segment sized for it), and the lock is held for one copy of a put message at most.
//!
//! # Deaths
//! A producer killed before its `used` store leaves a record nobody sees (the next producer writes
//! over it); after it, a committed message. One killed between naming a new segment and linking it
//! leaves an orphan block; one killed between `tail.next` and `tail_seg` leaves `tail_seg` behind,
//! which the next holder repairs by following `next`. A consumer killed before its `head_off` store
//! took nothing: the message goes to the next consumer; one killed after it, while decoding, lost
//! that message (at most once, as a bounded queue's consumer killed inside `get`). A consumer
//! killed while moving the head onto the next segment leaves `head_off` naming the segment it moved
//! from, and the next holder finishes the move ([`Log::move_head`]); killed after moving it and
//! before unlinking, it leaves an orphan block. Orphans are removed by the queue's last user
//! (`spill.rs`). The message count (`len`, for `len()` only) is recounted on repair.
//!
//! # JoinableQueue accounting
//! A JoinableQueue's message counts as unfinished from its `put` to its `task_done`. In the chain,
//! its count is the [`COUNTED`] bit of its record's length word, written with the record and so
//! committed with it by the store of `used`, and summed in `queued_counted` under the lock, before
//! the commit, with one RMW that also sets [`IN_FLIGHT`], cleared after the commit: a holder
//! killed between the two leaves the flag, and the repair of the next holder keeps the count or
//! takes it back as the commit was made or not ([`Log::settle_in_flight`]; `join`, which reads
//! without the lock, takes the lock over when a wait finds work still counted). A consumer that
//! takes a counted record (under the lock, after moving `head_off` past it) adds one to
//! `unfinished`, then takes one from `queued_counted`; `task_done` takes one from `unfinished`;
//! `join` waits for `queued_counted` plus `unfinished` to be 0, with `unfinished` (a `tally` word)
//! read before and after `queued_counted` and unchanged: the sum of one moment. Before (found by
//! review), the producer added to `unfinished` before it appended: one killed in between (waiting
//! for the lock, say) left a count for a message that never went in, and `join` waited for good. `unfinished` may go below zero (two's complement): a
//! `task_done` before the matching `get`, as Python allows.
//!
//! # Garbage
//! Every word of the control and of a segment head is checked before use: segment numbers must move
//! forward and stay within `last_seg`, offsets and lengths inside the segment's validated size, and a
//! segment is opened only under this queue's prefix and validated as a region. Garbage makes an
//! operation fail with [`Error::Corrupted`], and the queue gets past it where it can: a bad read offset
//! or record skips the rest of its segment, a head or tail segment that does not exist (also what a
//! process attaching while the last user's sweep ran finds) drops the chain, the queue starting again
//! empty. Walks along the chain are bounded by a step budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::spill::Blocks;
use super::tally;
use crate::error::{Error, Result};
use crate::region::{Region, ShmSafe};
use crate::sync::raw_lock::{Acquired, LockFail, Nesting, RawLock, TRY_BOUND};
use crate::sync::wait::{slice_until, Backoff, WaitWord, MAX_CHECK};

/// The smallest segment (payload after the head), and the largest a segment grows to by doubling
/// (a single larger message gets a segment of its own size).
const SEG_MIN: usize = 1 << 20;
const SEG_MAX: usize = 64 << 20;
/// The top bit of a record's length word: a JoinableQueue message, counted as unfinished while in the
/// chain (see "JoinableQueue accounting" in the module docs).
const COUNTED: u64 = 1 << 63;

/// Records above this size are checked to be memory the segment holds before they are copied out.
const SPARSE_CHECK_MIN: usize = 64 << 10;
/// Where records start in a segment: a cache line after the head.
const SEG_DATA: usize = 64;
/// How many segments one operation may step over (exhausted ones, or while repairing): a garbage
/// chain cannot keep a caller walking.
const STEP_BUDGET: usize = 1 << 16;

/// The shared state of an unbounded queue, at offset 0 of its region.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LogControl {
    /// Guards every field below except the wait words and `puts`/`closed`, which are also read without it.
    lock: RawLock,
    closed: AtomicU32,
    _pad: AtomicU32,
    /// The segment consumers read (0: none made yet).
    head_seg: AtomicU64,
    /// Offset, in `head_seg`'s records, of the next message.
    head_off: AtomicU64,
    /// The segment producers append to (0: none made yet).
    tail_seg: AtomicU64,
    /// The largest segment number handed out.
    last_seg: AtomicU64,
    /// Messages in the queue (for `len()`; recounted on repair).
    len: AtomicU64,
    /// Messages ever put: sleepers wait for it to change (SeqCst RMW, see `WaitWord::notify`).
    puts: AtomicU64,
    /// JoinableQueue: messages taken and not yet marked done, as a signed count (see "JoinableQueue
    /// accounting"), in a [`tally`] word. Read without the lock.
    unfinished: AtomicU64,
    /// JoinableQueue: counted messages in the chain (records with [`COUNTED`]); written under the lock,
    /// recounted on repair, read without the lock by `join`. [`IN_FLIGHT`] is set with the count of a
    /// record about to be committed, and cleared once it is ([`Log::commit_counting`]).
    queued_counted: AtomicU64,
    /// What the commit of the counted record in flight stores ([`InFlight`]): how the repair after
    /// its producer's death tells whether it was committed. Written under the lock.
    in_flight: AtomicU64,
    /// Consumers sleep here, producers notify.
    items: WaitWord,
    /// `join` sleeps here, `task_done` notifies.
    done: WaitWord,
}

const _: () = assert!(std::mem::size_of::<LogControl>() == 112);
const _: () = assert!(std::mem::align_of::<LogControl>() == 8);

// SAFETY: atomics only (RawLock and WaitWord are atomics too); any bit pattern is a valid state.
unsafe impl ShmSafe for LogControl {}

/// The head of a segment.
#[repr(C)]
#[derive(Debug, Default)]
struct SegHead {
    /// The number of the next segment, 0 while this one is the tail.
    next: AtomicU64,
    /// Bytes of committed records after [`SEG_DATA`]; a multiple of 8.
    used: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<SegHead>() == 16);

// SAFETY: atomics only.
unsafe impl ShmSafe for SegHead {}

/// `head_off` while the head moves on from segment `from` ([`Log::move_head`]): odd, which no read
/// offset is (records start at multiples of 8), and naming `from`, so that the repair after a consumer
/// killed in the middle knows whether `head_seg` moved yet. (Only a garbage segment number, above
/// 2^63, loses its top bit here; the repair then takes the offset for garbage.)
fn moving_from(from: u64) -> u64 {
    from.wrapping_shl(1) | 1
}

/// The bit of `queued_counted` that says a producer counted a record it has not committed yet.
/// Found by review: counted first and committed after as two steps, a producer killed between them
/// left a count for a message never put, which only a recount of the whole chain took back, and the
/// recount gives up on a chain longer than its bound (a walk over garbage must end): `join` then
/// waited for good. The count and this bit go in with one RMW, and the bit goes after the commit, so
/// the repair after such a death knows a commit was pending and, from [`LogControl::in_flight`],
/// whether it was made.
const IN_FLIGHT: u64 = 1 << 63;

/// The counted messages a `queued_counted` word says are in the chain: a record being committed
/// counts (module docs, "JoinableQueue accounting").
fn queued(word: u64) -> i64 {
    (word & !IN_FLIGHT) as i64
}

/// The commit of a counted record in flight, as [`LogControl::in_flight`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// Into the tail segment: its `used` becomes this (a multiple of 8: tagged by the low bit).
    Used(u64),
    /// As the first record of this new segment, linked after the tail (or made the head).
    Linked(u64),
}

impl InFlight {
    fn pack(self) -> u64 {
        match self {
            InFlight::Used(u) => u | 1,
            InFlight::Linked(n) => n.wrapping_shl(1),
        }
    }

    fn unpack(w: u64) -> InFlight {
        if w & 1 != 0 {
            InFlight::Used(w & !1)
        } else {
            InFlight::Linked(w >> 1)
        }
    }
}

/// The bytes a record of a `len`-byte message takes, or `None` on overflow.
fn record_size(len: usize) -> Option<usize> {
    len.checked_next_multiple_of(8)?.checked_add(8)
}

/// The unbounded queue protocol over a mapped control region. See the module docs.
#[derive(Debug)]
pub(crate) struct Log {
    ctl: *const LogControl,
    blocks: Blocks,
    /// Segments this process has mapped, by number: after each put or take only the head and tail
    /// segments stay (a mapping of any other would pin memory the queue has finished with). Shared with
    /// a [`Record`] taken and not yet decoded.
    segs: Mutex<BTreeMap<u64, Arc<Region>>>,
}

// SAFETY: `ctl` points into the queue's region, kept mapped by the owner of the Log (the queue's Inner
// holds the Region next to it and drops it last); the control is atomics only. Segments are Regions.
unsafe impl Send for Log {}
// SAFETY: as above; the map of segments is behind a Mutex.
unsafe impl Sync for Log {}

/// Releases the lock when dropped (an error or a panicking decoder cannot leave it held by a live
/// thread, which nobody would take over).
struct Held<'a>(&'a RawLock);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: a `Held` is made only right after this thread acquired the lock, and dropped once.
        unsafe { self.0.unlock() }
    }
}

/// What one attempt to take found.
pub(crate) enum Took<R> {
    Got(R),
    Empty,
    Closed,
}

/// What [`Log::take_locked`] found in the head segment.
enum Step {
    Got(Record),
    /// Every record of the segment was taken; the number of the next segment (0: none yet).
    Finished(u64),
    /// The segment's `used` is garbage; the number of the next segment, and the error.
    Garbage(u64, Error),
}

/// A message taken from a segment (the read offset moved past it) and not yet decoded: decoded after
/// the lock is released, so a large message does not keep producers and other consumers waiting (found
/// by review: `try_put` failed with `Full` while a 32 MiB message was decoded). Its bytes stay mapped
/// while it lives, the segment's name unlinked or not.
struct Record {
    seg: Arc<Region>,
    /// Offset of the message's bytes in the segment's payload, and their length: inside the payload.
    at: usize,
    len: usize,
}

impl Record {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `take_locked` made this record from a committed record of `seg`: [at, at + len) is
        // inside its payload (checked against the segment's validated size there), the mapping lives as
        // long as `self.seg`, and no producer writes below `used` nor any consumer past a read offset
        // that moved beyond the record.
        unsafe { std::slice::from_raw_parts(self.seg.as_ptr().add(self.at), self.len) }
    }
}

fn corrupted(what: String) -> Error {
    Error::Corrupted(format!("unbounded queue: {what}"))
}

impl Log {
    /// The control's size: the payload of an unbounded queue's region.
    pub(crate) const CONTROL_SIZE: usize = std::mem::size_of::<LogControl>();

    /// Attaches to the control at offset 0 of `region` (zeroed is a valid, empty queue).
    pub(crate) fn attach(region: &Region, blocks: Blocks) -> Result<Log> {
        let ctl: &LogControl = region.payload_ref(0)?;
        Ok(Log {
            ctl,
            blocks,
            segs: Mutex::new(BTreeMap::new()),
        })
    }

    fn ctl(&self) -> &LogControl {
        // SAFETY: checked by payload_ref in `attach` (bounds, alignment); the mapping outlives `self`
        // (see the Send impl); LogControl is atomics only.
        unsafe { &*self.ctl }
    }

    /// Takes the lock until `deadline`; repairs what a dead holder left.
    fn lock(&self, deadline: Option<Instant>) -> Result<Held<'_>> {
        let lock = &self.ctl().lock;
        match lock.lock_as(deadline, Nesting::NeverHeld) {
            Ok(Acquired::Clean) => Ok(Held(lock)),
            Ok(Acquired::OwnerDied(_)) => {
                let held = Held(lock);
                self.repair();
                Ok(held)
            }
            Err(LockFail::TimedOut) => Err(Error::Timeout),
            Err(LockFail::WouldDeadlock) => Err(corrupted(
                "its lock names this thread, which does not hold it".into(),
            )),
        }
    }

    /// Segment `n`, opened (and validated) first if this process has not yet; `None` if there is no
    /// such segment: nothing under its name, or a file that is not one (garbage under the name is as
    /// lost as a missing segment, found by review: it stopped the queue for good). A system error
    /// (out of descriptors, say) is an error: the segment may be fine.
    fn seg(&self, n: u64) -> Result<Option<Arc<Region>>> {
        let mut segs = self.segs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(region) = segs.get(&n) {
            return Ok(Some(Arc::clone(region)));
        }
        let name = self.blocks.segment_name(n);
        let layout = Blocks::layout("mproc queue segment", None);
        let region = match self.blocks.open_if_exists(&name, layout) {
            Ok(Some(region)) if region.len() >= SEG_DATA => region,
            Err(e @ Error::Os { .. }) => return Err(e),
            Ok(_) | Err(_) => return Ok(None),
        };
        let region = Arc::new(region);
        segs.insert(n, Arc::clone(&region));
        Ok(Some(region))
    }

    /// Runs `f` on segment `n` (see [`Log::seg`]); a segment that does not exist is an error.
    fn with_seg<R>(
        &self,
        n: u64,
        f: impl FnOnce(&Arc<Region>, &SegHead) -> Result<R>,
    ) -> Result<R> {
        let region = self.seg(n)?.ok_or_else(|| {
            corrupted(format!(
                "segment {} referenced by the queue does not exist",
                self.blocks.segment_name(n)
            ))
        })?;
        f(&region, region.payload_ref::<SegHead>(0)?)
    }

    /// The chain's head or tail names segment `n`, which does not exist (lock held): the last user's
    /// sweep removed the queue's segments while this process was attaching (see `spill.rs`), or
    /// garbage named a segment never made. Nothing after a missing segment can be reached, so the
    /// chain is dropped and the queue starts again empty; the error returned reports the loss, to this
    /// caller only. Before (found by review), every later `put` and `get` failed on the missing
    /// segment, for good. Segments of the dropped chain that still exist are orphans, removed by the
    /// queue's last user. `last_seg` stays: a new segment never takes an orphan's name.
    fn lose_chain(&self, n: u64) -> Error {
        self.drop_chain(format!(
            "segment {} does not exist, or is not a segment (removed by the last user while this \
             process attached, or garbage)",
            self.blocks.segment_name(n)
        ))
    }

    /// Drops the chain (lock held; see [`Log::lose_chain`]), for the reason `why`.
    fn drop_chain(&self, why: String) -> Error {
        let c = self.ctl();
        let lost = c.len.swap(0, Ordering::Relaxed);
        // Lost messages are never delivered, so never marked done: their counts go with them.
        c.queued_counted.store(0, Ordering::SeqCst);
        c.head_seg.store(0, Ordering::Relaxed);
        c.head_off.store(0, Ordering::Relaxed);
        c.tail_seg.store(0, Ordering::Relaxed);
        self.segs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        corrupted(format!(
            "{why}: the queue starts again empty, {lost} message(s) lost"
        ))
    }

    /// Keeps only the mappings of the head and tail segments (lock held): any other segment is either
    /// finished (and soon unlinked: a mapping would pin its memory) or reopened when reached.
    fn trim(&self) {
        let c = self.ctl();
        let (h, t) = (
            c.head_seg.load(Ordering::Relaxed),
            c.tail_seg.load(Ordering::Relaxed),
        );
        self.segs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&k, _| k == h || k == t);
    }

    /// `used` of a segment, checked against its real size.
    fn used(region: &Region, head: &SegHead) -> Result<usize> {
        let used = head.used.load(Ordering::Acquire);
        let cap = region.len() - SEG_DATA;
        match usize::try_from(used) {
            Ok(u) if u <= cap && u % 8 == 0 => Ok(u),
            _ => Err(corrupted(format!(
                "a segment says {used} bytes are used of {cap}"
            ))),
        }
    }

    /// A segment number read from shared memory, checked: after `after` and not past `last_seg`.
    fn check_next(&self, next: u64, after: u64) -> Result<u64> {
        let last = self.ctl().last_seg.load(Ordering::Relaxed);
        if next > after && next <= last {
            Ok(next)
        } else {
            Err(corrupted(format!(
                "segment {after} links to {next} (segments go up to {last})"
            )))
        }
    }

    // ---- put ----

    /// Appends `bytes`; waits only for the lock (at most until `deadline`, stretched to a short
    /// bound so that `try_put` does not fail on a lock held for a moment).
    /// With `count`, the message is a JoinableQueue's: counted as unfinished once committed (module
    /// docs, "JoinableQueue accounting").
    pub(crate) fn push(&self, bytes: &[u8], deadline: Option<Instant>, count: bool) -> Result<()> {
        let c = self.ctl();
        if c.closed.load(Ordering::SeqCst) != 0 {
            return Err(Error::Closed);
        }
        let rec = record_size(bytes.len()).ok_or(Error::SizeOverflow {
            what: "an unbounded queue's record".into(),
        })?;
        #[cfg(test)]
        if VANISH.with(|v| v.replace(false)) {
            return Ok(());
        }
        {
            let _held = self.lock(deadline.map(|d| d.max(Instant::now() + TRY_BOUND)))?;
            if c.closed.load(Ordering::Relaxed) != 0 {
                return Err(Error::Closed);
            }
            let mark = if count { COUNTED } else { 0 };
            // A counted record is counted in `queued_counted` at its commit ([`Log::commit_counting`]).
            let appended = self.append(bytes, rec, mark);
            self.trim();
            appended?;
            c.len.fetch_add(1, Ordering::Relaxed);
            // SeqCst RMW, then notify (WaitWord's contract).
            c.puts.fetch_add(1, Ordering::SeqCst);
        }
        c.items.notify();
        Ok(())
    }

    /// Writes one record at the tail (lock held), its length word or-ed with `mark` ([`COUNTED`] or 0).
    fn append(&self, bytes: &[u8], rec: usize, mark: u64) -> Result<()> {
        let c = self.ctl();
        let tail = c.tail_seg.load(Ordering::Relaxed);
        let mut grow_from = 0;
        if tail != 0 {
            if self.seg(tail)?.is_none() {
                return Err(self.lose_chain(tail));
            }
            let done = self.with_seg(tail, |region, head| {
                let cap = region.len() - SEG_DATA;
                grow_from = cap;
                // A `used` that is garbage: nothing more goes in this segment; a new one is linked
                // after it, and consumers move on to it ([`Log::take_locked`]).
                let Ok(used) = Self::used(region, head) else {
                    return Ok(false);
                };
                if rec > cap - used {
                    return Ok(false);
                }
                let at = SEG_DATA + used;
                let len = (bytes.len() as u64 | mark).to_le_bytes();
                // SAFETY: [at, at + rec) lies inside the payload (used + rec <= cap, checked above);
                // the lock is held and the bytes are past `used`, so no consumer reads them and no
                // producer writes them; `bytes` is our own memory, not overlapping the mapping.
                unsafe {
                    let dst = region.as_ptr().add(at);
                    std::ptr::copy_nonoverlapping(len.as_ptr(), dst, 8);
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add(8), bytes.len());
                }
                let now = (used + rec) as u64;
                self.commit_counting(mark, InFlight::Used(now), || {
                    // Release: the record happens-before any consumer's Acquire load of `used`.
                    head.used.store(now, Ordering::Release);
                });
                Ok(true)
            })?;
            if done {
                return Ok(());
            }
        }
        // A new segment: twice the last one (up to SEG_MAX), and at least this record.
        let size = grow_from
            .saturating_mul(2)
            .clamp(SEG_MIN, SEG_MAX)
            .max(rec)
            .checked_add(SEG_DATA)
            .ok_or(Error::SizeOverflow {
                what: "an unbounded queue's segment".into(),
            })?;
        let n = c
            .last_seg
            .load(Ordering::Relaxed)
            .checked_add(1)
            .ok_or_else(|| corrupted("segment numbers are exhausted".into()))?;
        // Handed out before the block exists: a death past this point leaves at most an orphan.
        c.last_seg.store(n, Ordering::Relaxed);
        let name = self.blocks.segment_name(n);
        let region = self.blocks.create(
            &name,
            Blocks::layout("mproc queue segment", Some(size)),
            |r| {
                let mut rec_head = [0u8; 8];
                rec_head.copy_from_slice(&(bytes.len() as u64 | mark).to_le_bytes());
                // pwrite: the kernel fills fresh pages without a fault per page.
                r.write_payload_at(SEG_DATA, &rec_head)?;
                r.write_payload_at(SEG_DATA + 8, bytes)?;
                r.payload_ref::<SegHead>(0)?
                    .used
                    .store(rec as u64, Ordering::Relaxed);
                Ok(())
            },
        )?;
        // Link it: the old tail's `next` first, then `tail_seg` (a death between is repaired).
        if tail != 0 {
            self.with_seg(tail, |_, head| {
                self.commit_counting(mark, InFlight::Linked(n), || {
                    head.next.store(n, Ordering::Release);
                });
                Ok(())
            })?;
        } else {
            c.head_off.store(0, Ordering::Relaxed);
            self.commit_counting(mark, InFlight::Linked(n), || {
                c.head_seg.store(n, Ordering::Relaxed);
            });
        }
        c.tail_seg.store(n, Ordering::Relaxed);
        self.segs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(n, Arc::new(region));
        Ok(())
    }

    /// Runs `commit`, the store that puts a record in the chain (lock held); for a counted record
    /// (`mark` is [`COUNTED`]), counts it in `queued_counted` first, flagged [`IN_FLIGHT`] until the
    /// commit is made, with `commit_is` saying what the commit stores ([`Log::settle_in_flight`]).
    /// Counted before the commit, not after: `join`, which takes no lock, must never see a committed
    /// record uncounted (found by review: a producer killed between its commit and its count left the
    /// message in the chain, and `join` summed 0 and returned). SeqCst: `join` reads the count
    /// without the lock.
    fn commit_counting(&self, mark: u64, commit_is: InFlight, commit: impl FnOnce()) {
        let c = self.ctl();
        let counted = mark & COUNTED != 0;
        if counted {
            c.in_flight.store(commit_is.pack(), Ordering::Relaxed);
            c.queued_counted.fetch_add(IN_FLIGHT | 1, Ordering::SeqCst);
        }
        #[cfg(test)]
        die_at(Death::BeforeCommit);
        commit();
        #[cfg(test)]
        die_at(Death::AfterCommit);
        if counted {
            c.queued_counted.fetch_and(!IN_FLIGHT, Ordering::SeqCst);
        }
    }

    // ---- get ----

    /// One attempt to take the next message, passing its bytes to `f` (once).
    pub(crate) fn try_take<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Took<R>> {
        let held = self.lock(deadline.map(|d| d.max(Instant::now() + TRY_BOUND)))?;
        let r = self.take_locked();
        self.trim();
        drop(held);
        Ok(match r? {
            Took::Got(record) => Took::Got(f(record.bytes())),
            Took::Empty => Took::Empty,
            Took::Closed => Took::Closed,
        })
    }

    /// Moves the head of the chain from segment `head` to `next` and unlinks `head` (lock held).
    ///
    /// Two words move, and a consumer killed between two stores must leave neither the read offset 0
    /// in the finished segment (its messages were delivered again: found by review) nor the finished
    /// segment's offset in the next one (its messages lost, or read from the middle of a record). So
    /// the offset first says which segment the head is moving from ([`moving_from`]), and the repair
    /// after such a death finishes the move ([`Log::finish_head_move`]). Release stores: each is
    /// ordered after the one before it, for a process killed between them as for a reader.
    fn move_head(&self, head: u64, next: u64) {
        let c = self.ctl();
        c.head_off.store(moving_from(head), Ordering::Release);
        #[cfg(test)]
        die_at(Death::MovingHead(1));
        c.head_seg.store(next, Ordering::Release);
        #[cfg(test)]
        die_at(Death::MovingHead(2));
        c.head_off.store(0, Ordering::Release);
        #[cfg(test)]
        die_at(Death::MovingHead(3));
        self.segs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&head);
        self.blocks.unlink(&self.blocks.segment_name(head));
    }

    /// Moves the read offset to `off` of the head segment past garbage (lock held), and recounts `len`:
    /// the messages skipped are lost, and a count still naming them would tell `wait_nonempty` the
    /// queue holds messages it cannot give.
    fn skip_to(&self, off: usize) {
        let c = self.ctl();
        c.head_off.store(off as u64, Ordering::Relaxed);
        self.recount();
    }

    /// Takes the next record (lock held), moving the read offset past it: see [`Record`].
    fn take_locked(&self) -> Result<Took<Record>> {
        let c = self.ctl();
        for _ in 0..STEP_BUDGET {
            let head = c.head_seg.load(Ordering::Relaxed);
            if head == 0 {
                break;
            }
            if self.seg(head)?.is_none() {
                return Err(self.lose_chain(head));
            }
            let off = c.head_off.load(Ordering::Relaxed);
            let step = self.with_seg(head, |region, sh| {
                let used = match Self::used(region, sh) {
                    Ok(used) => used,
                    Err(e) => return Ok(Step::Garbage(sh.next.load(Ordering::Acquire), e)),
                };
                let off = match usize::try_from(off) {
                    Ok(o) if o <= used && o % 8 == 0 => o,
                    _ => {
                        // Skip the rest of the segment, as for a bad length below: failing here
                        // again at every call would stop the queue for good.
                        self.skip_to(used);
                        return Err(corrupted(format!(
                            "the read offset {off} is outside the {used} bytes used"
                        )));
                    }
                };
                if off == used {
                    return Ok(Step::Finished(sh.next.load(Ordering::Acquire)));
                }
                let at = SEG_DATA + off;
                let mut word = [0u8; 8];
                // SAFETY: off < used <= cap and both are multiples of 8, so [at, at + 8) is inside
                // the payload; committed bytes are not written while the lock is held by us.
                unsafe {
                    std::ptr::copy_nonoverlapping(region.as_ptr().add(at), word.as_mut_ptr(), 8)
                };
                let word = u64::from_le_bytes(word);
                let (len, counted) = (word & !COUNTED, word & COUNTED != 0);
                let room = (used - off - 8) as u64;
                if len > room {
                    // Skip the rest of the segment: the next `get` goes on past the garbage.
                    self.skip_to(used);
                    return Err(corrupted(format!(
                        "a record of {len} bytes where {room} remain"
                    )));
                }
                let len = len as usize;
                // A large record must be memory the segment really holds: a peer can truncate a
                // segment file huge for free and write a length claiming it all (a small one costs a
                // syscall per message for nothing: its copy is small whatever its bytes).
                if len > SPARSE_CHECK_MIN && !region.holds_memory(at + 8, len)? {
                    self.skip_to(used);
                    return Err(corrupted(format!(
                        "a record of {len} bytes in a segment with holes: not what a producer writes"
                    )));
                }
                // [at + 8, at + 8 + len) lies inside the committed records (len <= room).
                let record = Record {
                    seg: Arc::clone(region),
                    at: at + 8,
                    len,
                };
                let next_off = off + record_size(len).expect("len <= room: no overflow");
                c.head_off.store(next_off as u64, Ordering::Relaxed);
                if counted {
                    // Its count moves to `unfinished` (first, so `join` never misses it) and
                    // leaves the chain's (module docs, "JoinableQueue accounting").
                    c.unfinished.fetch_add(tally::TAKE, Ordering::SeqCst);
                    let _ = c.queued_counted.fetch_update(
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    );
                }
                Ok(Step::Got(record))
            })?;
            match step {
                Step::Got(r) => {
                    let _ = c
                        .len
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1));
                    return Ok(Took::Got(r));
                }
                Step::Finished(0) => break,
                Step::Finished(next) => match self.check_next(next, head) {
                    // Finished, and it has a successor: move on, then unlink it.
                    Ok(next) => self.move_head(head, next),
                    // The tail's own `next` is garbage: it has no successor yet.
                    Err(e) if head == c.tail_seg.load(Ordering::Relaxed) => {
                        self.with_seg(head, |_, sh| {
                            sh.next.store(0, Ordering::Relaxed);
                            Ok(())
                        })?;
                        return Err(e);
                    }
                    Err(e) => return Err(self.drop_chain(e.to_string())),
                },
                // A `used` that is garbage: the rest of the segment is lost. Producers moved on to
                // a segment linked after it (`append`), where the queue goes on; with none, the
                // chain is dropped.
                Step::Garbage(next, e) => {
                    let Ok(next) = self.check_next(next, head) else {
                        return Err(self.drop_chain(e.to_string()));
                    };
                    self.move_head(head, next);
                    self.recount();
                    return Err(e);
                }
            }
        }
        Ok(if c.closed.load(Ordering::SeqCst) != 0 {
            Took::Closed
        } else {
            Took::Empty
        })
    }

    /// Takes the next message, waiting until `deadline`.
    pub(crate) fn pop<R>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&[u8]) -> R,
    ) -> Result<R> {
        let c = self.ctl();
        let mut backoff = Backoff::new().until(deadline);
        loop {
            let seen = c.puts.load(Ordering::SeqCst);
            match self.try_take(deadline, &mut f)? {
                Took::Got(r) => return Ok(r),
                Took::Closed => return Err(Error::Closed),
                Took::Empty => {}
            }
            if backoff.snooze() {
                continue;
            }
            let slice = slice_until(deadline, MAX_CHECK)?;
            c.items.sleep(slice, || {
                c.puts.load(Ordering::SeqCst) != seen || c.closed.load(Ordering::SeqCst) != 0
            });
        }
    }

    // ---- repair after a dead holder ----

    /// A consumer killed inside [`Log::move_head`] left the read offset saying which segment the head
    /// was moving from (lock held, a holder died): if `head_seg` is still that segment, move it onto
    /// its successor; either way, the read offset is the start of the new head segment. The finished
    /// segment's name, if not removed yet, is an orphan (module docs, "Deaths"). An odd offset that
    /// names another segment, or one with no valid successor, is garbage: left to `take_locked`.
    fn finish_head_move(&self) {
        let c = self.ctl();
        let off = c.head_off.load(Ordering::Relaxed);
        if off & 1 == 0 {
            return;
        }
        let head = c.head_seg.load(Ordering::Relaxed);
        if head != 0 && moving_from(head) == off {
            let next = self.with_seg(head, |_, sh| Ok(sh.next.load(Ordering::Acquire)));
            let Ok(next) = next.and_then(|n| self.check_next(n, head)) else {
                return;
            };
            c.head_seg.store(next, Ordering::Release);
        } else if self.check_next(head, off >> 1).is_err() {
            // The head is not past the segment the offset names: not a move of ours.
            return;
        }
        c.head_off.store(0, Ordering::Release);
    }

    /// A producer killed inside [`Log::commit_counting`] left its record counted and flagged in flight
    /// (lock held, a holder died, `tail_seg` repaired): the count stays if the commit was made, and
    /// goes if not; the flag goes either way. Exact whatever the chain's length, which the recount
    /// after it is not (it gives up on a long chain).
    fn settle_in_flight(&self) {
        let c = self.ctl();
        // Acquire: the flag's RMW (a release) makes the dead producer's `in_flight` visible.
        let word = c.queued_counted.load(Ordering::Acquire);
        if word & IN_FLIGHT == 0 {
            return;
        }
        let tail = c.tail_seg.load(Ordering::Relaxed);
        let committed = match InFlight::unpack(c.in_flight.load(Ordering::Relaxed)) {
            // Its `used` store made, or a later one (garbage only: no later producer came).
            InFlight::Used(u) => self
                .with_seg(tail, |_, h| Ok(h.used.load(Ordering::Acquire) >= u))
                .unwrap_or(false),
            // Linked: the repair's walk from the tail reached it.
            InFlight::Linked(n) => tail == n,
        };
        let word = word & !IN_FLIGHT;
        let word = if committed {
            word
        } else {
            word.saturating_sub(1)
        };
        c.queued_counted.store(word, Ordering::SeqCst);
    }

    /// Finishes a hand-over a dead consumer left half-done, puts `tail_seg` on the last linked segment,
    /// settles a counted record a dead producer left in flight, and recounts `len` (lock held, a
    /// holder died).
    fn repair(&self) {
        let c = self.ctl();
        self.finish_head_move();
        let mut tail = c.tail_seg.load(Ordering::Relaxed);
        if tail == 0 {
            tail = c.head_seg.load(Ordering::Relaxed);
        }
        // No chain yet: nothing to walk, but a first segment's producer may have died before
        // making it the head, its record counted (`settle_in_flight`).
        if tail != 0 {
            for _ in 0..STEP_BUDGET {
                let next = self.with_seg(tail, |_, h| Ok(h.next.load(Ordering::Acquire)));
                match next.map(|n| (n, self.check_next(n, tail))) {
                    Ok((n, Ok(_))) if n != 0 => tail = n,
                    _ => break,
                }
            }
            c.tail_seg.store(tail, Ordering::Relaxed);
        }
        self.settle_in_flight();
        self.recount();
    }

    /// Recounts `len` and `queued_counted` from the records (lock held), if the chain can be walked.
    fn recount(&self) {
        let c = self.ctl();
        if let Some((n, counted)) = self.count() {
            c.len.store(n, Ordering::Relaxed);
            c.queued_counted.store(counted, Ordering::SeqCst);
        }
    }

    /// Counts the messages from the head to the end of the chain, and the counted ones among them
    /// (`None` on garbage or a budget spent).
    fn count(&self) -> Option<(u64, u64)> {
        let c = self.ctl();
        let mut seg = c.head_seg.load(Ordering::Relaxed);
        // A multiple of 8, as every record starts at one: the reads below rely on it (found by review:
        // an odd offset from garbage made this read up to 7 bytes past the segment's end).
        let mut off = usize::try_from(c.head_off.load(Ordering::Relaxed))
            .ok()
            .filter(|o| o % 8 == 0)?;
        let (mut n, mut counted) = (0u64, 0u64);
        let mut budget = STEP_BUDGET * 64;
        while seg != 0 {
            let next = self
                .with_seg(seg, |region, h| {
                    let used = Self::used(region, h)?;
                    while off < used {
                        budget = budget.checked_sub(1).ok_or(Error::Timeout)?;
                        let mut word = [0u8; 8];
                        // SAFETY: off < used <= cap, off a multiple of 8 (records are padded to 8 and
                        // `used` is checked to be a multiple of 8), so 8 bytes at off are in the payload.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                region.as_ptr().add(SEG_DATA + off),
                                word.as_mut_ptr(),
                                8,
                            )
                        };
                        let word = u64::from_le_bytes(word);
                        counted += u64::from(word & COUNTED != 0);
                        let len = usize::try_from(word & !COUNTED).map_err(|_| Error::Timeout)?;
                        off = record_size(len)
                            .and_then(|r| off.checked_add(r))
                            .filter(|&e| e <= used)
                            .ok_or(Error::Timeout)?;
                        n += 1;
                    }
                    Ok(h.next.load(Ordering::Acquire))
                })
                .ok()?;
            if next == 0 {
                break;
            }
            seg = self.check_next(next, seg).ok()?;
            off = 0;
        }
        Some((n, counted))
    }

    // ---- state ----

    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.ctl().len.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.ctl().closed.load(Ordering::SeqCst) != 0
    }

    pub(crate) fn close(&self) {
        let c = self.ctl();
        c.closed.store(1, Ordering::SeqCst);
        c.items.wake_everyone();
        c.done.wake_everyone();
    }

    /// Waits until a message is likely there, the queue is closed, or `deadline` passes.
    pub(crate) fn wait_nonempty(&self, deadline: Option<Instant>) -> bool {
        let c = self.ctl();
        let mut backoff = Backoff::new().until(deadline);
        loop {
            let seen = c.puts.load(Ordering::SeqCst);
            if self.len() > 0 {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            if backoff.snooze() {
                continue;
            }
            let Ok(slice) = slice_until(deadline, MAX_CHECK) else {
                return false;
            };
            c.items.sleep(slice, || {
                c.puts.load(Ordering::SeqCst) != seen || self.is_closed()
            });
        }
    }

    // ---- JoinableQueue accounting ----

    /// `queued_counted` plus `unfinished` as the signed count it is, at least 0, at one moment:
    /// `unfinished` read before and after `queued_counted`, unchanged (module `tally`; found by review:
    /// a worker's follow-up `put` between the two reads, then its `task_done` of the message it came
    /// from, summed to 0 while the follow-up was unfinished). `None` if it changed every time.
    fn total_unfinished(&self) -> Option<i64> {
        let c = self.ctl();
        for _ in 0..tally::TRIES {
            let before = c.unfinished.load(Ordering::SeqCst);
            let queued = queued(c.queued_counted.load(Ordering::SeqCst));
            let after = c.unfinished.load(Ordering::SeqCst);
            if before == after {
                return Some(tally::count(after).saturating_add(queued.max(0)).max(0));
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Marks one message done. Returns false if none was outstanding.
    pub(crate) fn task_done(&self) -> bool {
        let c = self.ctl();
        let queued = || queued(c.queued_counted.load(Ordering::SeqCst));
        match tally::mark_done(&c.unfinished, queued) {
            None => false,
            Some(wake) => {
                if wake {
                    c.done.notify();
                }
                true
            }
        }
    }

    pub(crate) fn unfinished(&self) -> u64 {
        match self.total_unfinished() {
            Some(n) => n as u64,
            None => {
                let c = self.ctl();
                let queued = queued(c.queued_counted.load(Ordering::SeqCst));
                let taken = tally::count(c.unfinished.load(Ordering::SeqCst));
                taken.saturating_add(queued.max(0)).max(0) as u64
            }
        }
    }

    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        let mut slept = false;
        while self.total_unfinished() != Some(0) {
            // A slice ended with work still counted: a producer killed between counting its message
            // and committing it holds the lock, dead, and its count stays until a holder repairs
            // it; with no other caller left, that is us. Not before the first sleep: a `join` that
            // returns at once costs no lock.
            if slept && self.repair_if_holder_died() {
                continue;
            }
            let slice = slice_until(deadline, MAX_CHECK)?;
            self.ctl()
                .done
                .sleep(slice, || self.total_unfinished() == Some(0));
            slept = true;
        }
        Ok(())
    }

    /// Takes the lock without waiting, if it is free or its holder died, and lets go of it at once:
    /// a dead holder's leftovers are repaired on the way, as by [`Log::lock`]. Returns whether there
    /// was a dead holder.
    fn repair_if_holder_died(&self) -> bool {
        let lock = &self.ctl().lock;
        match lock.try_lock_as(Nesting::NeverHeld) {
            Ok(Acquired::OwnerDied(_)) => {
                let _held = Held(lock);
                self.repair();
                self.trim();
                true
            }
            Ok(Acquired::Clean) => {
                drop(Held(lock));
                false
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Set by [`Log::vanish_before_commit_for_test`].
    static VANISH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set by [`Log::die_at_for_test`].
    static DIE_AT: std::cell::Cell<Option<Death>> = const { std::cell::Cell::new(None) };
}

/// A point where a test's forked child ends at once, holding the lock, as a process killed there.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Death {
    /// In `append`, with a record written (and counted, if it counts) and not committed
    /// ([`Log::commit_counting`]).
    BeforeCommit,
    /// In `append`, right after the record's commit (its count still flagged in flight).
    AfterCommit,
    /// In `move_head`, after its `n`-th store.
    MovingHead(u32),
}

/// Ends the process if the calling thread was told to die here ([`Log::die_at_for_test`]).
#[cfg(test)]
fn die_at(point: Death) {
    if DIE_AT.with(|d| d.get()) == Some(point) {
        crate::sys::process::exit_immediately(0);
    }
}

#[cfg(test)]
impl Log {
    /// Makes the next `push` of the calling thread return before it takes the lock, as if done: a
    /// thread that then exits leaves what a producer killed there leaves (waiting for the lock, say).
    pub(crate) fn vanish_before_commit_for_test() {
        VANISH.with(|v| v.set(true));
    }

    /// Makes the calling thread's process end at once at `point` (a forked child of a test only).
    pub(crate) fn die_at_for_test(point: Death) {
        DIE_AT.with(|d| d.set(Some(point)));
    }

    /// Overwrites the control's `head_off` (as garbage from another process would).
    pub(crate) fn force_head_off_for_test(&self, v: u64) {
        self.ctl().head_off.store(v, Ordering::Relaxed);
    }

    /// Overwrites `head_seg`.
    pub(crate) fn force_head_seg_for_test(&self, v: u64) {
        self.ctl().head_seg.store(v, Ordering::Relaxed);
    }

    /// Makes the lock look held by a dead thread (an impossible tid), as a killed holder leaves it.
    pub(crate) fn force_dead_holder_for_test(&self) {
        self.ctl().lock.force_word_for_test(0x3fff_fff0);
    }

    /// Overwrites `used` in the head of segment `n`.
    pub(crate) fn force_seg_used_for_test(&self, n: u64, v: u64) {
        self.with_seg(n, |_, head| {
            head.used.store(v, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    }

    /// Overwrites `tail_seg` (a producer killed between linking and moving it).
    pub(crate) fn force_tail_seg_for_test(&self, v: u64) {
        self.ctl().tail_seg.store(v, Ordering::Relaxed);
    }
}
