//! `Ring`: a bounded multi-producer multi-consumer ring of variable-length messages in a region, that
//! survives producers and consumers killed at any instruction.
//!
//! # Algorithm
//! Dmitry Vyukov's bounded MPMC queue, with crossbeam's `{ lap, index }` stamps, changed in one way:
//! a slot is **claimed with a compare-and-swap on the slot itself**, which records the claimer's thread
//! id, *before* the shared `tail`/`head` index is moved. Anybody who then finds the index lagging behind a
//! claimed slot moves it on ("helping"). The indices are only hints of where to look — the slot CAS is
//! the claim — so the claimer moves its index with a plain store, which may briefly move it back behind a
//! helper; a thread reading a stale index finds slots past it and helps it forward (every stamp below the
//! largest index ever written was claimed, so no stale stamp can be claimed twice). So at every instant a
//! slot that is in use names the thread using it, and a thread that dies mid-operation can be recognised
//! and cleaned up after.
//!
//! Stamps: `one_lap` is the smallest power of two above `capacity`; a stamp is `lap + index`. After
//! index `capacity - 1` the next stamp is `lap + one_lap`. Only the low 32 bits of a stamp are stored in
//! a slot; comparisons use wrapping differences, valid because live stamps differ by at most `one_lap`
//! (≤ 2^30).
//!
//! Slot `state` (64 bits) = `seq` (high 32) | `who` (low 32), where `who` is [`IDLE`], a claimer's tid,
//! or [`TOMBSTONE`]. For the slot at index `i` and a stamp `s` with that index:
//!
//! | state                  | meaning                                                              |
//! |------------------------|----------------------------------------------------------------------|
//! | `{ s, IDLE }`          | empty, free for the producer of stamp `s`                            |
//! | `{ s, tid }`           | a producer (tid) is writing the message of stamp `s`                 |
//! | `{ s + 1, IDLE }`      | holds the message of stamp `s`, ready for the consumer of `s`        |
//! | `{ s + 1, TOMBSTONE }` | stamp `s` was abandoned by a dead producer: consumers skip it        |
//! | `{ s + 1, tid }`       | a consumer (tid) is reading the message of stamp `s`                 |
//! | `{ s + one_lap, IDLE }`| consumed: free for the producer of the next lap                      |
//!
//! - **push** at `tail = s`: CAS `{s, IDLE}` → `{s, me}` (SeqCst); store `tail` = next; if the ring
//!   is closed now, CAS `{s, me}` → `{s + 1, TOMBSTONE}` and fail (`Ring::claimed_after_close`); copy
//!   the message in; CAS `{s, me}` → `{s + 1, IDLE}` (Release: the bytes happen-before the consumer's
//!   Acquire). A consumer that finds the slot empty and the ring closed reads the slot again before it
//!   says `Closed`.
//! - **pop** at `head = s`: CAS `{s + 1, IDLE}` → `{s + 1, me}` (Acquire: sees the bytes); store `head` =
//!   next; copy the message out; CAS `{s + 1, me}` → `{s + one_lap, IDLE}` (Release: our reads
//!   happen-before the next producer overwrites).
//!
//! The final steps are CASes, not stores, so a claim revoked by a thread that took the claimer for dead
//! can never be overwritten: a revoked producer pushes its message again under a new stamp; a revoked
//! consumer discards what it read and takes the next message. A claimer is taken for dead only when its
//! tid no longer exists (or is a zombie) — never merely because it is slow.
//!
//! Each of these costs two locked instructions per side, four per message through the ring, and none
//! can go: the claim CAS is what makes a claim exclusive and names the claimer; the final CAS is at once
//! the guard against a revoked claim and the SeqCst read-modify-write that [`WaitWord::notify`] needs
//! to pair with a sleeper's re-check (a Release store would need a SeqCst fence for that, an `mfence`
//! that costs at least as much as the `lock cmpxchg` it replaces). The index moves (`tail`/`head`) are
//! plain stores, and the notify a plain load while nobody sleeps.
//!
//! # Batches
//! `put_many`/`get_many` claim a run of up to [`MAX_BATCH`] consecutive stamps in one pass:
//!
//! - **push batch** at `tail = s`: the first claim as in push; then for `s' = s + 1, s + 2, …` while the
//!   slot reads `{s', IDLE}`, CAS it to `{s', me}` (Acquire), stopping at the first slot that is not
//!   free. Store `tail` = the stamp after the run, once. If the ring is closed now, give the run back
//!   (tombstones, as below) and fail, as a single push does. For each slot: copy the message in. Then,
//!   for each filled slot in order, **store** `{s', me}` → `{s' + 1, IDLE}` (Release): a batch's messages
//!   are published after all are copied (or, before a large message is spilled, those copied so far).
//!   Unused claims (an encode error) are given back as `{s' + 1, TOMBSTONE}`. Then one `fence(SeqCst)`
//!   and one notify for the whole batch (and one more for what is published before each spill).
//! - **pop batch** at `head = s`: likewise, claiming `{s' + 1, IDLE | TOMBSTONE}` → `{s' + 1, me}`
//!   (Acquire) while ready; `head` stored once; each slot read, then **stored** to `{s' + one_lap, IDLE}`
//!   (Release); one fence, one notify. A queue's run also ends after a slot holding a spill reference
//!   (a message of exactly the slot's size, read after its claim): the consumer takes that message's
//!   block only once the run is released, and that copy can be long, so no slot behind it may be
//!   claimed meanwhile (a consumer killed during the copy would take them with it).
//!
//! Each slot still moves through exactly the states of the table, one claimer at a time, and names its
//! claimer while claimed; a run is only several single-slot claims by one thread. So the guarantees
//! below hold slot by slot: a consumer never sees a half-written message (it claims only `{s' + 1, …}`,
//! which the producer stores after the copy, with Release); nothing is delivered twice (each message's
//! slot is claimed by one consumer CAS); a dead batch claimer's slots are recovered as a single
//! claimer's are, the whole run at once (see "Deaths"). The batch saves, per message, the second locked
//! instruction of each side (a Release store instead, argued at `Ring::publish_batch_slot`: only a dead
//! thread's claim is ever revoked by an honest peer, and we are alive), the index store, and the wake-up
//! (one per batch, made safe by one SeqCst fence, argued at `Ring::end_batch`). A claim of k stamps by
//! one CAS on `tail` is not possible here: the index is a hint and the slot CAS is the claim.
//!
//! A push batch publishes at its end rather than slot by slot because a consumer that keeps up with
//! the producer otherwise takes each message the moment it is published, claiming (and so pulling
//! away) the slot line next to the one the producer is writing, message after message: 64 B messages
//! in batches of 64 between two processes moved 20–22 M msgs/s that way here, 24–25.6 M publishing at
//! the end (builds run alternately). The cost is latency within a batch: its first message waits for
//! the others to be encoded and copied (about a microsecond for 63 small raw messages; as long as the
//! codec takes for slow ones). A message spilled to a block of its own publishes what precedes it
//! first: its block and copy take far longer than the line transfers saved. Pop batches free their
//! slots one by one: freeing them at the end measured no faster (nor did a 16-byte slot head, two
//! lines per 64 B message instead of three, on 2026-12-01).
//!
//! A run's lines were last written by the other process, so each claim misses; and a locked
//! instruction lets no later load start before it completes, so those misses were taken one after
//! another. A run therefore prefetches its slots [`PREFETCH_AHEAD`] ahead of its claims (never past
//! `want`), and every claim, single or batch, prefetches the line its message starts on just before
//! its CAS, so that that line's transfer overlaps the head line's (`sys::cpu`). Measured on
//! 2026-12-01 between two processes pinned to the two CPUs (interleaved builds, 12 runs each, medians):
//! 64 B in batches of 64 moved 25 M msgs/s against 18 M before; a single-message round trip between
//! CPUs that share no core was 1.06 µs against 1.20 µs.
//!
//! # Deaths
//! Claimers are judged dead only while every process attached to the ring lives in our pid namespace
//! (`Config::ns`, written at creation and marked mixed by any opener from elsewhere): a tid means
//! nothing in another namespace. In a ring shared across namespaces a dead claimer's slot stays claimed;
//! blocking calls wait and timed calls return [`Error::Timeout`].
//!
//! - A producer dead while holding `{s, tid}`: the consumer waiting at `head = s` checks the claimer's
//!   liveness when its timed sleep expires and replaces the state with `{s + 1, TOMBSTONE}` (one CAS, so
//!   only one waiter does it, and never while the producer lives). Consumers skip tombstones. The
//!   half-written message is never seen.
//! - A consumer dead while holding `{s + 1, tid}`: the producer waiting for that slot frees it with a CAS
//!   to `{s + one_lap, IDLE}`. The message was handed out to the dead consumer and is lost: delivery is
//!   **at most once** for a message whose consumer dies inside `get`; no message is delivered twice, and
//!   no message that no consumer took is lost.
//! - A claimer dead before moving `tail`/`head`: the next thread to find the claimed slot moves it.
//! - A batch claimer (`put_many`/`get_many`) dead with a run of stamps claimed: the waiter that recovers
//!   the first slot of the run recovers the following slots claimed by the same dead tid too, each with
//!   its own liveness check and CAS (tombstones for a producer's, freed slots for a consumer's). A
//!   producer publishes a batch only at its end, so a producer killed while filling a batch delivers
//!   none of it (at most [`MAX_BATCH`] messages; with spilled messages, those before the last spill
//!   went out), and one killed while publishing delivers a prefix; messages of a consumer's run are
//!   lost, each at most once, as for a single `get`.
//! - The same checks run, too, when a timed or `try_` call is about to return [`Error::Timeout`] behind
//!   a claim that already blocked an earlier such call of this process (`Ring::recover_before_timeout`):
//!   a caller that polls never sleeps long enough for the check above, and would otherwise wait behind
//!   a dead claimer for ever.
//! - A JoinableQueue producer's count is a mark in its claimed slot, so a producer dead before its
//!   publish leaves no count with its tombstone ("JoinableQueue accounting" at `Ring::take_count`).
//!
//! # Peers on one CPU
//! Next to `tail` and `head`, in the line it writes anyway, each side records the CPU it last ran on
//! (`Cursor::cpu`, stored only when it changes). A waiter whose peer last ran on its own CPU does not
//! spin: it sleeps at once (`Backoff::snooze_beside`, "Stream waiters sleep, the others yield"), since
//! the peer cannot run while we spin there. Without this, a pool round trip whose two ends the
//! scheduler put on one CPU cost 100–200 µs; with it, 16–24 µs (7 µs across two CPUs). A thread
//! confined to one CPU by its affinity mask yields in its waits instead of pausing (`sync::wait`). A thread
//! that both puts and gets on one ring finds its own CPU recorded and sleeps early: a slower wait,
//! never a wrong answer. The word is a hint: a stale or forged value only picks between spinning and
//! sleeping early, which is a wait all the same (with its deadline and liveness checks), and touches
//! no slot. The peer's CPU is read afresh after every sleep, so a wrong verdict costs one sleep.
//!
//! # Garbage
//! Capacity and slot size are read from shared memory once, at open, and checked against the region's
//! real size; indices are always `stamp & (one_lap - 1)` checked against the capacity, and a message
//! length is checked against the slot size before any copy. Garbage can make an operation fail with
//! [`Error::Corrupted`] or make it wait; it cannot make us touch memory outside the region. Timed and
//! `try_` calls keep their deadlines whatever the words say. A slot forged to name a live claimer makes
//! blocking calls wait behind it (a live peer could do the same). Garbage `head`/`tail` hints heal
//! ([`Ring::heal`]): they are re-derived from the slot stamps. Garbage in `unfinished` changes what
//! `join` waits for, as it would for any shared counter.
//!
//! # Proof obligations
//! This protocol is argued here and exercised by a stress test (many producer and consumer processes,
//! every message delivered exactly once, per-producer order kept) plus kill tests; it is not model-checked.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::wait::{slice_until, Backoff, StuckWatch, WaitWord, MAX_CHECK};

use super::tally;
use crate::error::{Error, Result};
use crate::region::{Region, ShmSafe};
use crate::sys::cpu;
use crate::sys::proc::{self, Identity};

mod claim;
mod recover;
#[cfg(test)]
pub(crate) mod tests;

use claim::BatchAttempt;
pub(crate) use claim::{PushBatch, Taken, MAX_BATCH};
use recover::Phase;

/// Folded into a queue's layout hash (in place of a size, which varies per queue): bump it whenever the
/// meaning of a field of [`RingHeader`] or [`SlotHead`] changes, so that builds that disagree refuse to
/// share a ring. 2: `Config::ns` (was padding). 3: `Cursor::cpu` (was padding). 4: the
/// [`COUNTED`] bit of `SlotHead::len`, and `Config::unfinished` counting taken messages only. 5:
/// `Config::unfinished` is a [`tally`](super::tally) word.
pub(crate) const LAYOUT_REVISION: usize = 5;

/// `Config::ns` once processes of different pid namespaces attached.
const MIXED_NS: u32 = u32::MAX;

const IDLE: u32 = 0;
const TOMBSTONE: u32 = 0x8000_0000;
/// The most slots a producer that found the ring full waits to see freed before it puts again
/// ([`Ring::spin_for_room`]); a quarter of the capacity in smaller rings. 8, 32, 128 and 256 moved
/// 13.8, 16.5, 17.8 and 17.4 M msgs/s of 64 B in the queue bench here: past 32 the run gains little
/// and a slower consumer needs longer to free it.
const ROOM_RUN: u32 = 32;

/// Largest capacity: stamps must stay well inside 32-bit wrapping comparisons.
pub(crate) const MAX_CAPACITY: u32 = 1 << 28;
/// Largest slot: a message is copied in one piece, and a region holds `capacity` slots.
pub(crate) const MAX_SLOT_SIZE: u32 = 1 << 30;
/// The top bit of a slot's `len`: its message was put by a JoinableQueue and counts as unfinished
/// until a consumer takes it (see "JoinableQueue accounting"). Above every length a slot can hold.
const COUNTED: u32 = 1 << 31;
const _: () = assert!(MAX_SLOT_SIZE < COUNTED);

/// A slot's `len` word without its [`COUNTED`] mark: the message's length (still to be checked
/// against the slot size).
fn len_of(word: u32) -> usize {
    (word & !COUNTED) as usize
}

fn seq(state: u64) -> u32 {
    (state >> 32) as u32
}
fn who(state: u64) -> u32 {
    state as u32
}
fn state(seq: u32, who: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(who)
}
/// `a - b` as a signed distance between 32-bit stamps.
fn dist(a: u32, b: u64) -> i32 {
    a.wrapping_sub(b as u32) as i32
}
/// Whether slot state `st` holds stamp `s`'s message (or its tombstone), ready for a consumer to claim:
/// `{ s + 1, IDLE | TOMBSTONE }`.
fn ready_for(st: u64, s: u64) -> bool {
    dist(seq(st), s.wrapping_add(1)) == 0 && (who(st) == IDLE || who(st) == TOMBSTONE)
}

/// A cache line of its own, so producers' and consumers' hot words do not share one.
#[repr(C, align(64))]
#[derive(Debug, Default)]
struct Line<T>(T);

#[repr(C)]
#[derive(Debug, Default)]
struct Config {
    capacity: AtomicU32,
    slot_size: AtomicU32,
    closed: AtomicU32,
    /// The pid namespace of every process that attached: the creator's [`proc::pid_ns_tag`], or
    /// [`MIXED_NS`] once a process of another (or an unknown) namespace attached. Claimers' tids are
    /// judged only while it names our namespace (see "Deaths").
    ns: AtomicU32,
    /// JoinableQueue: messages taken from the ring and not yet marked done, as a signed count (see
    /// "JoinableQueue accounting" in `Ring`) in a [`tally`](super::tally) word; messages still in the
    /// ring count by their slot's mark.
    unfinished: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Config>() == 24);

/// One side's index hint and the CPU that side last ran on, in the line that side writes anyway.
#[repr(C)]
#[derive(Debug, Default)]
struct Cursor {
    /// `tail` or `head`: a hint of where to look (see the module docs).
    pos: AtomicU64,
    /// The CPU of the thread that last moved `pos` ([`proc::current_cpu`]): a waiter on the other side
    /// whose peer ran on its own CPU does not spin (see "Peers on one CPU").
    cpu: AtomicU32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RingHeader {
    config: Line<Config>,
    tail: Line<Cursor>,
    head: Line<Cursor>,
    /// Consumers sleep here, producers notify.
    items: Line<WaitWord>,
    /// Producers sleep here, consumers notify.
    space: Line<WaitWord>,
    /// `join` sleeps here, `task_done` notifies.
    done: Line<WaitWord>,
}

// Six cache lines, each its own; a layout change is a compile error (the type hash covers the rest).
const _: () = assert!(std::mem::size_of::<RingHeader>() == 6 * 64);
const _: () = assert!(std::mem::align_of::<RingHeader>() == 64);

// SAFETY: atomics only (with alignment padding); any bit pattern is a valid state.
unsafe impl ShmSafe for RingHeader {}

/// A slot's header: a whole cache line, so the message bytes after it start 64-byte aligned (a
/// misaligned 64 KiB `memcpy` hit a 15x slow path in this machine's glibc) and a small message and its
/// state do not straddle more lines than they must.
#[repr(C, align(64))]
#[derive(Debug)]
struct SlotHead {
    /// `{ seq, who }`: `seq` (high 32 bits) is the stamp this slot is at, `who` (low 32) is `IDLE`, the
    /// tid of the thread that claimed it, or `TOMBSTONE`. For the slot's stamp `s` it moves only
    /// `{s, IDLE}` → `{s, producer}` → `{s + 1, IDLE}` (or `{s + 1, TOMBSTONE}` if the producer died)
    /// → `{s + 1, consumer}` → `{s + one_lap, IDLE}`, every step one CAS (see the module docs' table).
    /// Claims are Acquire, releases Release; anything else read here is garbage and handled as such.
    state: AtomicU64,
    /// The message's length in bytes, written by the producer before its releasing CAS; checked against
    /// the slot size before any copy.
    len: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<SlotHead>() == 64);

// SAFETY: atomics only.
unsafe impl ShmSafe for SlotHead {}

const SLOT_HEAD: usize = std::mem::size_of::<SlotHead>();
/// How many slots ahead of the one it claims a batch prefetches (`sys::cpu`): enough misses in flight
/// to overlap, few enough that the lines are still there when the claim reaches them.
const PREFETCH_AHEAD: u32 = 8;
const HEADER: usize = std::mem::size_of::<RingHeader>();

/// Records the calling thread's CPU in `cursor` for the other side's waiters ("Peers on one CPU"), in
/// the line the claim just wrote `pos` to (see [`note_cpu`](crate::sync::wait::note_cpu)).
#[inline]
fn note_cpu(cursor: &Cursor) {
    crate::sync::wait::note_cpu(&cursor.cpu);
}

/// The geometry of a ring, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub capacity: u32,
    pub slot_size: u32,
}

impl Geometry {
    /// Bytes from one slot to the next: whole cache lines, so that slots share none.
    fn stride(self) -> usize {
        (SLOT_HEAD + self.slot_size as usize).next_multiple_of(64)
    }

    /// Bytes of payload a ring of this geometry needs, or `None` on overflow.
    pub(crate) fn payload_size(self) -> Option<usize> {
        self.stride()
            .checked_mul(self.capacity as usize)?
            .checked_add(HEADER)
    }
}

/// The ring protocol over a mapped region. See the module docs.
#[derive(Debug)]
pub(crate) struct Ring {
    base: *mut u8,
    geo: Geometry,
    one_lap: u64,
    /// `geo.stride()`, computed once: every slot access needs it.
    stride: usize,
    /// `proc::monotonic_ms()` of this process's last survey of the ring ([`Ring::heal`]); process-local,
    /// so that a peer cannot make us skip or repeat surveys.
    last_survey_ms: AtomicU64,
    /// The peer CPUs last read for a waiting producer (from `head`) and a waiting consumer (from
    /// `tail`), indexed by [`Side`], with how many more waits may use them (`left << 32 | cpu`; 0: read
    /// on the next wait): see [`Ring::peer_cpu`]. Process-local.
    cpu_seen: [AtomicU64; 2],
    /// Per [`Side`]: `proc::monotonic_ms()` of this process's last look, at a timed-out call's end, at
    /// the claim that blocked it ([`Ring::recover_before_timeout`]), and the slot state it saw then.
    /// Process-local, as `last_survey_ms`.
    timeout_check_ms: [AtomicU64; 2],
    timeout_check_seen: [AtomicU64; 2],
}

/// How long (ms) a claim must have blocked timed-out calls, from one to a later one, before such a call
/// checks its claimer ([`Ring::recover_before_timeout`]): 2, so that at least one whole millisecond
/// passed whatever the clock's rounding. Also the least time between two such checks per process and
/// side, so that a loop of `try_` calls behind a live claimer costs one `/proc` read per 2 ms at most.
const TIMEOUT_CHECK_MS: u64 = 2;

/// Waits that use a peer CPU read from the ring before it is read again ([`Ring::peer_cpu`]).
pub(crate) const PEER_CPU_REFRESH: u32 = 64;

// SAFETY: `base` points into a mapping kept alive by the owner of the Ring (the queue holds the Region
// in an Arc next to it); all shared state behind it is atomics, and message bytes are only touched by
// the thread that claimed their slot.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// Which end of the ring a waiter is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Producer = 0,
    Consumer = 1,
}

/// What one attempt may still spend on helping a lagging index ([`Ring::help_budget`] steps) and
/// whether it has healed a garbage one yet (once per attempt). One `Help` serves every claim of an
/// attempt: a single push claims again after a revoked publish, a single pop after a tombstone or a
/// revoked claim, and a budget per claim would let a peer who writes garbage make one attempt walk the
/// ring once per claim, quadratic in the capacity, instead of at most twice in all.
struct Help {
    steps: u32,
    healed: bool,
}

/// What one push attempt found.
enum Attempt {
    Done,
    /// Full: the slot for stamp `pos` is still in `state`.
    Blocked {
        pos: u64,
        state: u64,
    },
    /// Spent its help budget without an answer (only garbage indices, or claims revoked again and
    /// again, do that); look at the clock.
    Busy,
    /// Closed between the caller's look at the flag and the claim ([`Ring::claimed_after_close`]).
    Closed,
}

/// What one attempt of [`Ring::wait_for`]'s caller found: done, or wait (a producer names the slot it
/// found full, its stamp and the state it held, to sleep until that slot changes).
enum Turn<T> {
    Done(T),
    Wait(Option<(u64, u64)>),
}

pub(crate) enum Pop<R> {
    Got(R),
    Empty,
    Closed,
}

impl Ring {
    /// Initialises a fresh, zeroed region as a ring (before it is published).
    pub(crate) fn init(region: &Region, geo: Geometry) -> Result<()> {
        let ring = Ring::attach_unchecked(region, geo)?;
        let h = ring.header();
        h.config.0.capacity.store(geo.capacity, Ordering::Relaxed);
        h.config.0.slot_size.store(geo.slot_size, Ordering::Relaxed);
        h.config.0.ns.store(proc::pid_ns_tag(), Ordering::Relaxed);
        // Zero would name CPU 0: nobody has run yet.
        h.tail.0.cpu.store(proc::UNKNOWN_CPU, Ordering::Relaxed);
        h.head.0.cpu.store(proc::UNKNOWN_CPU, Ordering::Relaxed);
        for i in 0..geo.capacity {
            ring.slot(u64::from(i))
                .state
                .store(state(i, IDLE), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Attaches to an initialised ring, reading its geometry once and checking it against the region.
    pub(crate) fn attach(region: &Region) -> Result<Ring> {
        let h: &RingHeader = region.payload_ref(0)?;
        let geo = Geometry {
            capacity: h.config.0.capacity.load(Ordering::Relaxed),
            slot_size: h.config.0.slot_size.load(Ordering::Relaxed),
        };
        if geo.capacity == 0 || geo.capacity > MAX_CAPACITY || geo.slot_size > MAX_SLOT_SIZE {
            return Err(Error::Corrupted(format!(
                "queue geometry {geo:?} is out of range"
            )));
        }
        if geo.payload_size() != Some(region.len()) {
            return Err(Error::SizeMismatch {
                expected: geo.payload_size().unwrap_or(usize::MAX) as u64,
                found: region.len() as u64,
            });
        }
        let ring = Ring::attach_unchecked(region, geo)?;
        ring.announce_namespace();
        Ok(ring)
    }

    /// Marks the ring [`MIXED_NS`] if we live in another pid namespace than the processes that attached
    /// before us, before we claim any slot.
    ///
    /// Ordering: the Release fence makes this store visible to whoever reads, with Acquire, the value
    /// of any atomic we write after it (every claim CAS): a waiter that sees one of our claims also sees
    /// the mark, and so never judges our tid by its own `/proc`.
    fn announce_namespace(&self) {
        let ns = &self.header().config.0.ns;
        let here = proc::pid_ns_tag();
        let recorded = ns.load(Ordering::Relaxed);
        if here == 0 || recorded != here {
            ns.store(MIXED_NS, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Release);
    }

    fn attach_unchecked(region: &Region, geo: Geometry) -> Result<Ring> {
        if geo.payload_size().is_none_or(|s| s > region.len()) {
            return Err(Error::Truncated {
                needed: geo.payload_size().unwrap_or(usize::MAX) as u64,
                actual: region.len() as u64,
            });
        }
        // The header is all atomics; payload_ref checks bounds and alignment once.
        region.payload_ref::<RingHeader>(0)?;
        let one_lap = u64::from(geo.capacity).next_power_of_two().max(2);
        let one_lap = if one_lap == u64::from(geo.capacity) {
            one_lap * 2
        } else {
            one_lap
        };
        Ok(Ring {
            base: region.as_ptr(),
            geo,
            one_lap,
            stride: geo.stride(),
            last_survey_ms: AtomicU64::new(0),
            cpu_seen: [AtomicU64::new(0), AtomicU64::new(0)],
            timeout_check_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            timeout_check_seen: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `attach_unchecked` checked the region holds a RingHeader at offset 0 (bounds and
        // alignment via payload_ref); the mapping outlives `self` (see the Send impl); all atomics.
        unsafe { &*(self.base as *const RingHeader) }
    }

    /// The slot for stamp `s`. The index is masked, and reduced below `capacity` if it is not already
    /// (only a garbage stamp from shared memory can need that), so it is always in bounds.
    #[inline]
    fn slot(&self, s: u64) -> &SlotHead {
        let cap = u64::from(self.geo.capacity);
        let mut index = s & (self.one_lap - 1);
        if index >= cap {
            index %= cap;
        }
        let off = HEADER + index as usize * self.stride;
        // SAFETY: index < capacity, so [off, off + stride) lies inside the payload (payload_size was
        // checked against the region); off is a multiple of 64 from a 64-aligned base; SlotHead is atomics.
        unsafe { &*(self.base.add(off) as *const SlotHead) }
    }

    /// The message bytes of `slot` (a reference obtained from [`Ring::slot`]).
    #[inline]
    fn data(slot: &SlotHead) -> *mut u8 {
        (slot as *const SlotHead as *mut u8).wrapping_add(SLOT_HEAD)
    }

    /// Prefetches the slot of stamp `s`: its head line for writing (a claim writes it), and the line
    /// its message starts on ([`Ring::prefetch_message`]).
    #[inline(always)]
    fn prefetch_slot(&self, s: u64, fill: bool) {
        cpu::prefetch_for_write(self.slot(s) as *const SlotHead as *const u8);
        self.prefetch_message(s, fill);
    }

    /// Prefetches the first line of the message in the slot of stamp `s` (a longer message is copied by
    /// `memcpy`, which streams): for writing when we are about to fill it (`fill`), for reading when
    /// about to read it. Issued before the claim's compare-and-swap, this line's transfer overlaps the
    /// head line's, where after it the two would be taken one after the other.
    #[inline(always)]
    fn prefetch_message(&self, s: u64, fill: bool) {
        let data = Self::data(self.slot(s));
        if fill {
            cpu::prefetch_for_write(data);
        } else {
            cpu::prefetch_for_read(data);
        }
    }

    #[inline]
    fn next(&self, s: u64) -> u64 {
        let index = s & (self.one_lap - 1);
        if index + 1 < u64::from(self.geo.capacity) {
            s.wrapping_add(1)
        } else {
            (s & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// How many slots one attempt may step over while helping a lagging index: two laps of honest
    /// helping, after which the attempt gives up so its caller can look at the clock (a garbage index
    /// written by another process could otherwise keep it helping for 2^31 steps).
    fn help_budget(&self) -> u32 {
        self.geo.capacity.saturating_mul(2).saturating_add(8)
    }

    /// A fresh [`Help`] for one attempt.
    fn help(&self) -> Help {
        Help {
            steps: self.help_budget(),
            healed: false,
        }
    }

    /// The CPU the other side last ran on, for a waiting `side`: a producer waits for consumers (who
    /// move `head`), a consumer for producers (`tail`). A hint from shared memory ("Peers on one CPU").
    ///
    /// Read from the shared line on one wait in [`PEER_CPU_REFRESH`] per side and process, and on the
    /// first wait after a sleep ([`Ring::forget_peer_cpu`]); from `cpu_seen` on the others: the other side writes that line with every message, and reading it on
    /// every wait of a busy stream would pull it away from the writer each time.
    fn peer_cpu(&self, side: Side) -> u32 {
        let h = self.header();
        let cursor = match side {
            Side::Producer => &h.head.0,
            Side::Consumer => &h.tail.0,
        };
        let seen = &self.cpu_seen[side as usize];
        // Load and store, not an RMW: two threads of this process racing here at worst both refresh,
        // or one writes back a copy another just forgot; a hint then stale for up to 64 more waits.
        let cached = seen.load(Ordering::Relaxed);
        let left = (cached >> 32) as u32;
        if left > 0 {
            seen.store(cached - (1 << 32), Ordering::Relaxed);
            return cached as u32;
        }
        let cpu = cursor.cpu.load(Ordering::Relaxed);
        seen.store(
            (u64::from(PEER_CPU_REFRESH) << 32) | u64::from(cpu),
            Ordering::Relaxed,
        );
        cpu
    }

    /// Drops this process's copy of the peer's CPU for a waiting `side`, so that the next wait reads it
    /// afresh: called before a sleep, whose futex call costs far more than one read of the line, and
    /// after which the peer may well run somewhere else (a scheduler that packs tasks moves them).
    fn forget_peer_cpu(&self, side: Side) {
        self.cpu_seen[side as usize].store(0, Ordering::Relaxed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SeqCst: sleepers re-check this after announcing themselves (see `WaitWord::notify`).
        self.header().config.0.closed.load(Ordering::SeqCst) != 0
    }

    /// Whether the ring was closed once a producer's claim is made: a look at the flag after the
    /// claim (SeqCst, after the SeqCst claim CAS), on top of the caller's look before it. Found by
    /// review: a close, and a consumer that then found the ring closed and empty (the end of the
    /// stream), could come between the caller's look and the claim, and the put then succeeded, its
    /// message in the ring after the end, which a pipe's receiver never reads. Now either the producer
    /// sees the close here and gives its slot back (and fails with [`Error::Closed`]), or the
    /// consumer, which reads the slot again after it saw the flag (`try_claim_pop`), sees the claim
    /// and waits for the message.
    #[inline]
    pub(super) fn claimed_after_close(&self) -> bool {
        self.is_closed()
    }

    pub(crate) fn close(&self) {
        let h = self.header();
        h.config.0.closed.store(1, Ordering::SeqCst);
        // Wake everyone so blocked callers see the flag.
        for w in [&h.items.0, &h.space.0, &h.done.0] {
            w.wake_everyone();
        }
    }

    /// Messages in the ring right now (approximate under concurrency).
    pub(crate) fn len(&self) -> usize {
        let h = self.header();
        let (head, tail) = (
            h.head.0.pos.load(Ordering::Relaxed),
            h.tail.0.pos.load(Ordering::Relaxed),
        );
        let lap_of = |s: u64| {
            (s / self.one_lap)
                .wrapping_mul(u64::from(self.geo.capacity))
                .wrapping_add(s & (self.one_lap - 1))
        };
        // Either index may lag or briefly run back (they are hints): clamp to 0..=capacity.
        (lap_of(tail).saturating_sub(lap_of(head)) as usize).min(self.geo.capacity as usize)
    }

    /// One attempt to append `bytes`: the claim is [`Ring::try_claim_push`]'s for one stamp (which
    /// helps a lagging `tail` and heals a garbage one), then the copy and the publishing CAS; a revoked
    /// claim sends the message to the next stamp, out of the same help budget.
    fn try_push(&self, bytes: &[u8], me: Identity, count: bool) -> Attempt {
        let mut help = self.help();
        loop {
            let pos = match self.try_claim_push(me, 1, &mut help) {
                BatchAttempt::Claimed { first, .. } => first,
                BatchAttempt::Blocked { pos, state } => return Attempt::Blocked { pos, state },
                BatchAttempt::Closed | BatchAttempt::Busy => return Attempt::Busy,
            };
            let slot = self.slot(pos);
            let claimed = state(pos as u32, me.tid);
            if self.claimed_after_close() {
                // {pos, me} → {pos + 1, TOMBSTONE}: given back, as a batch gives back what it did
                // not fill (consumers skip it; no count was marked yet).
                let _ = slot.state.compare_exchange(
                    claimed,
                    state((pos as u32).wrapping_add(1), TOMBSTONE),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
                self.header().items.0.notify();
                return Attempt::Closed;
            }
            // JoinableQueue: the count is the COUNTED mark of the slot, stored with the length (no
            // extra instruction), so it lives and dies with the claim: a producer killed before its
            // publish leaves a tombstone and no count (see "JoinableQueue accounting").
            let mark = if count { COUNTED } else { 0 };
            slot.len.store(bytes.len() as u32 | mark, Ordering::Relaxed);
            // SAFETY: we own the slot (claimed above: `{pos, me}`); bytes.len() <= slot_size was
            // checked by `push`, so the copy stays inside this slot's stride, inside the region.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), Self::data(slot), bytes.len()) };
            #[cfg(test)]
            if tests::vanishing() {
                return Attempt::Done;
            }
            // {pos, me} → {pos + 1, IDLE}: published. Release: the bytes above happen-before the
            // consumer's Acquire CAS. A CAS, not a store: if a consumer took us for dead and tombstoned
            // the slot, our claim is void and the message must go out again (the next round). It is
            // also the SeqCst RMW that `notify` below pairs with a sleeper's re-check; a Release store
            // would need an `mfence` for that, no cheaper than this `lock cmpxchg` (the batch path pays
            // that fence once per batch instead: `Ring::end_batch`).
            let published = state((pos as u32).wrapping_add(1), IDLE);
            let ok = slot.state.compare_exchange(
                claimed,
                published,
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
            self.header().items.0.notify();
            if ok.is_ok() {
                return Attempt::Done;
            }
        }
    }

    /// Appends `bytes`, waiting for space until `deadline`.
    #[cfg(test)]
    pub(crate) fn push(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.push_counting(bytes, deadline, &mut || {}, false)
    }

    /// [`Ring::push`], calling `watch` after every sleep of its wait (never on the fast path): the
    /// place where a caller checks the liveness of whoever should make room, and closes the ring if
    /// nobody will (the next round then returns [`Error::Closed`]). `watch` budgets itself in time.
    ///
    /// With `count`, also adds one to the JoinableQueue count once the message has its slot (see
    /// `try_push`): an error leaves the count as it was.
    pub(crate) fn push_counting(
        &self,
        bytes: &[u8],
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
        count: bool,
    ) -> Result<()> {
        if bytes.len() > self.geo.slot_size as usize {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: self.geo.slot_size as usize,
            });
        }
        self.wait_for(Side::Producer, deadline, watch, |me| {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            Ok(match self.try_push(bytes, me, count) {
                Attempt::Done => Turn::Done(()),
                Attempt::Closed => return Err(Error::Closed),
                Attempt::Blocked { pos, state } => Turn::Wait(Some((pos, state))),
                Attempt::Busy => Turn::Wait(None),
            })
        })
    }

    /// The wait of every blocking ring call (`push`, `pop`, `claim_push`, `claim_pop`): `attempt` until
    /// it is done or fails; between attempts, heal the indices if a survey is due, spin beside `side`'s
    /// peer (yielding if it runs on this CPU), then sleep a slice on the side's word ([`Ring::sleep_for_space`],
    /// [`Ring::sleep_for_items`], which also look for a dead peer holding the slot) and call `watch`.
    ///
    /// # Errors
    /// What `attempt` returns; [`Error::Timeout`] once `deadline` passes (at once, without spinning, for
    /// a deadline already past).
    fn wait_for<T>(
        &self,
        side: Side,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
        mut attempt: impl FnMut(Identity) -> Result<Turn<T>>,
    ) -> Result<T> {
        let me = proc::current();
        let mut backoff = Backoff::new().until(deadline);
        let mut stuck = StuckWatch::new();
        loop {
            let blocked = match attempt(me)? {
                Turn::Done(t) => return Ok(t),
                Turn::Wait(blocked) => blocked,
            };
            // Blocked by the hint's slot; the hint may be wrong in a way that slot cannot show.
            if self.survey_due() && self.heal() {
                continue;
            }
            if side == Side::Producer {
                if let Some((pos, _)) = blocked {
                    if self.spin_for_room(pos, &mut backoff) {
                        continue;
                    }
                }
            } else if backoff.snooze_beside(|| self.peer_cpu(side)) {
                continue;
            }
            let slice = match slice_until(deadline, stuck.interval) {
                Ok(slice) => slice,
                // Recovered: one more attempt (a check is due at most once per TIMEOUT_CHECK_MS, so
                // this cannot loop).
                Err(_) if self.recover_before_timeout(side, blocked) => continue,
                Err(e) => return Err(e),
            };
            match side {
                Side::Producer => self.sleep_for_space(blocked, slice, &mut stuck),
                Side::Consumer => self.sleep_for_items(blocked, slice, &mut stuck),
            }
            watch();
        }
    }

    /// A producer's spin on a full ring, blocked at stamp `pos`: until room for a run of messages is
    /// made, not for one slot. Returns whether to attempt again (false: the spin budget is spent,
    /// sleep).
    ///
    /// Why: a producer faster than its consumer finds the ring full at every message, and the slot it
    /// waits for is the one the consumer is taking right then. Polling that slot pulled its cache line
    /// away from the consumer between the consumer's claim and its release, message after message:
    /// the consumer, the bottleneck, spent most of its cycles waiting for lines (its two CASes took
    /// half of them in a profile), and 64 B messages between two processes moved 9–11 M msgs/s here.
    /// So the producer watches the slot [`ROOM_RUN`] stamps further on, which the consumer reaches
    /// only that many messages later, and then fills the run in one go: 16.5–18 M msgs/s. The ring
    /// still holds `capacity - ROOM_RUN` messages when the producer resumes, so the consumer never
    /// waits for it.
    ///
    /// A consumer that stops within the run (it took its last message for now), or one slow enough
    /// that the run outlasts the spin budget, leaves the producer to sleep on `pos` as before, woken
    /// by the release of `pos` itself: for a consumer that takes microseconds a message, one wake-up
    /// per run. Looking at `pos` now and then during the spin as well (every 8th snooze) lost most of
    /// the gain: the producer resumed after a few slots again.
    fn spin_for_room(&self, pos: u64, backoff: &mut Backoff) -> bool {
        let run = (self.geo.capacity / 4).min(ROOM_RUN);
        let mut far = pos;
        for _ in 0..run {
            far = self.next(far);
        }
        let far_slot = self.slot(far);
        // The message of the lap before, still there: {far + 1 - one_lap, IDLE}. Anything else (taken
        // already, claimed, a tombstone, garbage) ends the spin: attempt again.
        let full = state(
            (far as u32)
                .wrapping_add(1)
                .wrapping_sub(self.one_lap as u32),
            IDLE,
        );
        // Every call snoozes at least once, as the plain spin does, so that the budget ends the spin
        // whatever the slots say: a consumer killed holding `pos` while others took `far` would
        // otherwise send the producer round its attempts without ever sleeping, and so without ever
        // looking at the dead claimer (which only a sleep does).
        let mut snoozed = false;
        loop {
            if run < 2 || far_slot.state.load(Ordering::Relaxed) != full || self.is_closed() {
                return snoozed || backoff.snooze_beside(|| self.peer_cpu(Side::Producer));
            }
            if !backoff.snooze_beside(|| self.peer_cpu(Side::Producer)) {
                return false;
            }
            snoozed = true;
        }
    }

    /// A timed call that is about to return [`Error::Timeout`] behind a claimed slot (a consumer
    /// behind a producer's `{s, tid}` at `head`, or at `blocked`; a producer behind a consumer's
    /// `{s + 1 - one_lap, tid}` at `blocked`): if this process saw the very same claim block a timed-out
    /// call at least [`TIMEOUT_CHECK_MS`] before, check whether its claimer died, and recover the slot
    /// if so ([`Ring::abandon_if_writer_died`], [`Ring::free_if_reader_died`]). Returns whether it
    /// recovered anything (the caller then tries once more).
    ///
    /// Why (found by review): the only other place a claimer is checked is after a sleep of
    /// [`Ring::wait_for`] ([`StuckWatch`], whose first check comes [`MIN_CHECK`](crate::sync::wait::MIN_CHECK)
    /// into one call). A caller that polls with `try_get`/`try_put` or timeouts shorter than that never
    /// sleeps long enough, so a claim left by a process killed mid-`put` (or mid-`get`) was never
    /// recovered: `Empty`/`Full` (or a pipe's `Timeout`, never `Closed`) for ever, with messages
    /// waiting behind it. The check is remembered across calls here, process-local, since each call
    /// starts a fresh `StuckWatch`.
    ///
    /// Cost: nothing unless a claim blocks the call (an empty or full ring reads no clock); then a
    /// clock read, and a `/proc` look at most once per [`TIMEOUT_CHECK_MS`] per process and side.
    /// Never on a fast path: only a call that is about to time out gets here.
    fn recover_before_timeout(&self, side: Side, blocked: Option<(u64, u64)>) -> bool {
        let (pos, st) = match (side, blocked) {
            (_, Some(b)) => b,
            (Side::Consumer, None) => {
                let head = self.header().head.0.pos.load(Ordering::Relaxed);
                (head, self.slot(head).state.load(Ordering::Acquire))
            }
            (Side::Producer, None) => return false,
        };
        let writing = dist(seq(st), pos) == 0;
        // Only a claim can be recovered: a writer's for a consumer, a reader's for a producer.
        if who(st) == IDLE || who(st) == TOMBSTONE || writing != (side == Side::Consumer) {
            return false;
        }
        let i = side as usize;
        let now = proc::monotonic_ms();
        let last = self.timeout_check_ms[i].load(Ordering::Relaxed);
        if now.saturating_sub(last) < TIMEOUT_CHECK_MS
            || self.timeout_check_ms[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // The state names the stamp and the claimer: unchanged since the last look means this claim
        // has blocked us for at least TIMEOUT_CHECK_MS.
        if self.timeout_check_seen[i].swap(st, Ordering::Relaxed) != st {
            return false;
        }
        match side {
            Side::Consumer => self.abandon_if_writer_died(pos, st),
            Side::Producer => self.free_if_reader_died(pos, st),
        }
    }

    /// A producer's sleep once its spin is spent: until the slot it found full (`blocked`: its stamp
    /// and the state it held) changes, the ring is closed, or `slice` ends; then, if that slot stayed
    /// unchanged long enough, whether the consumer holding it died ([`Ring::free_if_reader_died`]).
    /// With no slot (`None`: out of help budget, garbage only), a nap rather than a spin.
    fn sleep_for_space(
        &self,
        blocked: Option<(u64, u64)>,
        slice: Duration,
        watch: &mut StuckWatch,
    ) {
        self.forget_peer_cpu(Side::Producer);
        let space = &self.header().space.0;
        let Some((pos, st)) = blocked else {
            space.sleep(slice, || false);
            return;
        };
        // A closed ring ends every producer's call at the top of its loop, so closing is a change.
        let still_full = || self.slot(pos).state.load(Ordering::SeqCst) == st && !self.is_closed();
        space.sleep(slice, || !still_full());
        if still_full() && watch.due(pos, st) {
            self.free_if_reader_died(pos, st);
        }
    }

    /// A consumer's sleep once its spin is spent: until the slot at `head` changes, the ring is closed,
    /// or `slice` ends; then, if that slot stayed unchanged long enough, whether the producer writing it
    /// died ([`Ring::abandon_if_writer_died`]).
    ///
    /// A consumer behind a claimed slot goes on waiting after a close (the ring is not empty yet), so
    /// only the close itself counts as a change: a check of "closed" in its place made every such
    /// consumer spin without sleeping and never look at the claimer, which a producer killed before the
    /// close then held for good.
    ///
    /// `blocked`: the slot the caller's attempt stopped at and the state it read there, when that is
    /// not the head's (`wait_nonempty` looks past tombstones and taken slots): the sleep then watches
    /// that slot. Watching the head there found it "ready" (a tombstone) and never slept: a `poll`
    /// spun for its whole timeout (found by review).
    fn sleep_for_items(
        &self,
        blocked: Option<(u64, u64)>,
        slice: Duration,
        watch: &mut StuckWatch,
    ) {
        let h = self.header();
        let head = h.head.0.pos.load(Ordering::Relaxed);
        let closed = self.is_closed();
        let (pos, st) = match blocked {
            Some(b) => b,
            None => {
                let st = self.slot(head).state.load(Ordering::Acquire);
                // This snapshot, not the caller's attempt, is what the sleep compares against: what
                // changed in between and would make the next attempt succeed (a message published, a
                // close with no claim to wait behind) is a reason not to sleep at all, since its
                // wake-up found no sleeper.
                let writing = dist(seq(st), head) == 0 && who(st) != IDLE;
                if ready_for(st, head) || (closed && !writing) {
                    return;
                }
                (head, st)
            }
        };
        let unchanged = || {
            h.head.0.pos.load(Ordering::Relaxed) == head
                && self.slot(pos).state.load(Ordering::SeqCst) == st
                && self.is_closed() == closed
        };
        if !unchanged() {
            return;
        }
        self.forget_peer_cpu(Side::Consumer);
        h.items.0.sleep(slice, || !unchanged());
        if unchanged() && watch.due(pos, st) {
            self.abandon_if_writer_died(pos, st);
        }
    }

    /// One attempt to take a message, passing its bytes to `f` while the slot is held. `f` may run more
    /// than once if a claim is revoked under it (its result is then discarded), so it must not have side
    /// effects beyond producing `R`.
    fn try_pop<R>(&self, me: Identity, f: &mut impl FnMut(&[u8]) -> R) -> Result<Pop<R>> {
        // Each round takes one stamp; a tombstone or a revoked claim moves on to the next one. A ring
        // of garbage cannot keep us here: every round spends at least one step of the one help budget.
        let mut help = self.help();
        loop {
            let (pos, tomb) = match self.try_claim_pop(me, 1, None, &mut help) {
                BatchAttempt::Claimed { first, tombs, .. } => (first, tombs & 1 != 0),
                // Empty, or a producer is writing the next message (the caller may check that it
                // is alive), or out of help budget.
                BatchAttempt::Blocked { .. } | BatchAttempt::Busy => return Ok(Pop::Empty),
                BatchAttempt::Closed => return Ok(Pop::Closed),
            };
            let slot = self.slot(pos);
            let claimed = state((pos as u32).wrapping_add(1), me.tid);
            let freed = state(pos.wrapping_add(self.one_lap) as u32, IDLE);
            let word = slot.len.load(Ordering::Relaxed);
            let len = len_of(word);
            let counted = !tomb && word & COUNTED != 0;
            // If `f` panics (a codec's), the slot must not stay claimed by this thread, which lives
            // on: nobody would ever free it. The message is lost, as with a consumer that dies; a
            // counted one keeps its count, as if taken and never marked done.
            struct FreeOnUnwind<'a>(&'a Ring, &'a SlotHead, u64, u64, bool);
            impl Drop for FreeOnUnwind<'_> {
                fn drop(&mut self) {
                    if self.4 {
                        self.0.take_count();
                    }
                    let _ = self.1.state.compare_exchange(
                        self.2,
                        self.3,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                    self.0.header().space.0.notify();
                }
            }
            let guard = FreeOnUnwind(self, slot, claimed, freed, counted);
            let result = if tomb {
                None
            } else if len > self.geo.slot_size as usize {
                Some(Err(Error::Corrupted(format!(
                    "message length {len} exceeds the slot size {}",
                    self.geo.slot_size
                ))))
            } else {
                // SAFETY: we own the slot (claimed above: `{pos + 1, me}`); len <= slot_size keeps
                // the range inside this slot's stride, inside the region. Producers do not write a
                // claimed slot.
                let bytes = unsafe { std::slice::from_raw_parts(Self::data(slot), len) };
                Some(Ok(f(bytes)))
            };
            // {pos + 1, me} → {pos + one_lap, IDLE}: free for the next lap. Release: our reads of the
            // bytes happen-before the next producer's Acquire CAS and its writes. If a producer took us
            // for dead and freed the slot, it may have overwritten what we read: discard it. SeqCst RMW
            // for `notify`, as the publish in `try_push`.
            std::mem::forget(guard);
            // A counted message's count moves from the slot to `unfinished` while we still hold the
            // slot (see "JoinableQueue accounting").
            if counted {
                self.take_count();
            }
            let released =
                slot.state
                    .compare_exchange(claimed, freed, Ordering::SeqCst, Ordering::Relaxed);
            self.header().space.0.notify();
            if released.is_err() && counted {
                // Revoked (garbage only): the message is not ours, nor is its count.
                self.give_back_count();
            }
            match (released, result) {
                (Err(_), _) | (Ok(_), None) => continue, // revoked, or a tombstone: next message
                (Ok(_), Some(Ok(r))) => return Ok(Pop::Got(r)),
                (Ok(_), Some(Err(e))) => return Err(e),
            }
        }
    }

    /// Takes the next message, waiting until `deadline`; `f` sees its bytes in place (see
    /// [`Ring::try_pop`] for why it is `FnMut`).
    #[cfg(test)]
    pub(crate) fn pop<R>(&self, deadline: Option<Instant>, f: impl FnMut(&[u8]) -> R) -> Result<R> {
        self.pop_watching(deadline, f, &mut || {})
    }

    /// [`Ring::pop`], calling `watch` after every sleep of its wait (never on the fast path): the
    /// place where a caller checks the liveness of whoever should produce, and closes the ring if
    /// nobody will (the ring is then drained, and the call returns [`Error::Closed`]). `watch` budgets
    /// itself in time.
    pub(crate) fn pop_watching<R>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&[u8]) -> R,
        watch: &mut dyn FnMut(),
    ) -> Result<R> {
        self.wait_for(Side::Consumer, deadline, watch, |me| {
            match self.try_pop(me, &mut f)? {
                Pop::Got(r) => Ok(Turn::Done(r)),
                Pop::Closed => Err(Error::Closed),
                Pop::Empty => Ok(Turn::Wait(None)),
            }
        })
    }

    // ---- JoinableQueue accounting ----
    //
    // A JoinableQueue's message counts as unfinished from its `put` to its `task_done`. Until a
    // consumer takes it, its count is the COUNTED mark in its slot's `len`, written by the producer
    // with the length, after its claim and before its publish; a consumer that takes a marked message
    // adds one to `Config::unfinished` while it still holds the slot, before it frees it; `task_done`
    // takes one away. So `join`'s total is `unfinished` plus the marked messages in the ring (being
    // written, published, or being taken; not tombstones, not free slots).
    //
    // Why (found by review): the producer used to add to `unfinished` itself, after its claim and
    // before its publish; one killed in between left a count whose message was tombstoned, never
    // delivered, never marked done, and `join` waited for good. A mark in the slot dies with the
    // claim: a tombstone carries no count. It also costs the producer nothing (the length is stored
    // anyway) where the shared counter cost it a locked instruction; the consumer of a marked message
    // pays that one instead, and an unmarked message costs nobody anything.
    //
    // Why the total is right: the scan reads every slot, then `unfinished` (SeqCst). A message put
    // before `join` began is either still marked in its slot when the scan reads it, or was taken
    // before: its consumer's add to `unfinished` precedes its free of the slot, which precedes the
    // scan's read of it, which precedes the read of `unfinished`. A consumer killed between its claim
    // and its add takes the count with it (the message is lost, at most once); one killed after it
    // leaves the count, as one killed between `get` and `task_done` does.
    //
    // `unfinished` may go below zero (two's complement): a `task_done` for a message still
    // in the ring, which Python allows, is taken from it before the message's consumer adds to it.
    //
    // The scan is not one snapshot, though: a worker's follow-up put into a slot the scan already
    // passed, then its `task_done` of the message it came from, both before the read of `unfinished`,
    // summed to 0 with the follow-up unfinished (found by review). So `unfinished` is a `tally` word,
    // read before and after the scan: unchanged, nothing was taken or marked done meanwhile, and every
    // message in the ring when the scan began was still marked in its slot when the scan read it.

    /// A consumer took a marked message: its count moves from the slot to `unfinished`.
    fn take_count(&self) {
        self.header()
            .config
            .0
            .unfinished
            .fetch_add(tally::TAKE, Ordering::SeqCst);
    }

    /// Undoes [`Ring::take_count`] for a claim found revoked (garbage only).
    fn give_back_count(&self) {
        self.header()
            .config
            .0
            .unfinished
            .fetch_add(tally::DONE, Ordering::SeqCst);
    }

    /// Marked messages in the ring now: in slots being written (a live producer's `put`), published,
    /// or being taken. O(capacity): `join`, `unfinished` and an unusual `task_done` only.
    fn counted_in_slots(&self) -> u64 {
        let mut n = 0u64;
        for i in 0..self.geo.capacity {
            let slot = self.slot(u64::from(i));
            // SeqCst, then the mark: a published state's Release (or a consumer's claim continuing
            // its release sequence) makes the producer's mark visible.
            let st = slot.state.load(Ordering::SeqCst);
            let holds = match self.phase(i, st) {
                Some((_, Phase::Writing | Phase::Reading)) => true,
                Some((_, Phase::Ready)) => who(st) != TOMBSTONE,
                Some((_, Phase::Free)) | None => false,
            };
            if !holds {
                continue;
            }
            if slot.len.load(Ordering::Relaxed) & COUNTED != 0 {
                n += 1;
            }
        }
        n
    }

    /// `unfinished` read as the signed count it is, plus the marked messages in the ring, at least 0,
    /// at one moment: `None` if `unfinished` changed during every one of a few scans (messages taken
    /// or marked done meanwhile), since a scan that is not one snapshot can miss a message put into a
    /// slot it passed while the message it came from was marked done (module `tally`).
    fn total_unfinished(&self) -> Option<i64> {
        let u = &self.header().config.0.unfinished;
        for _ in 0..tally::TRIES {
            let before = u.load(Ordering::SeqCst);
            let n = self.counted_in_slots();
            // SeqCst, last: the re-check `notify` needs.
            let after = u.load(Ordering::SeqCst);
            if before == after {
                return Some(tally::count(after).saturating_add(n as i64).max(0));
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Marks one message done. Returns false if none was outstanding.
    pub(crate) fn task_done(&self) -> bool {
        // The scan of the slots is the cost of an unusual call only: a `task_done` with nothing
        // taken outstanding.
        let queued = || self.counted_in_slots() as i64;
        match tally::mark_done(&self.header().config.0.unfinished, queued) {
            None => false,
            Some(wake) => {
                if wake {
                    self.header().done.0.notify();
                }
                true
            }
        }
    }

    pub(crate) fn unfinished(&self) -> u64 {
        match self.total_unfinished() {
            Some(n) => n as u64,
            // Busy: a count of some moment during the scan, give or take what moved meanwhile.
            None => {
                let n = self.counted_in_slots() as i64;
                let taken = tally::count(self.header().config.0.unfinished.load(Ordering::SeqCst));
                taken.saturating_add(n).max(0) as u64
            }
        }
    }

    /// Waits until every message put has been marked done.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        let mut slept = false;
        while self.total_unfinished() != Some(0) {
            // A slice ended with work still counted: a dead claim may hold a mark nobody else will
            // recover (`recover_counted_claims`). Not before the first sleep: a `join` that returns
            // at once costs no `/proc` look.
            if slept && self.recover_counted_claims() {
                continue;
            }
            let slice = slice_until(deadline, MAX_CHECK)?;
            // `total_unfinished` is SeqCst-read last, after the slots: the re-check `notify` needs.
            self.header()
                .done
                .0
                .sleep(slice, || self.total_unfinished() == Some(0));
            slept = true;
        }
        Ok(())
    }

    /// What a `pop` would find now, without taking anything: `Ok` if a message (not a tombstone)
    /// waits, walking from `head` past tombstones, slots another consumer claimed and slots already
    /// taken (a `head` that lags, as `try_claim_pop` helps it on); else the first slot that is not
    /// ready (empty, or a producer writing it) and its state; `None` once the walk's budget is spent
    /// (garbage indices).
    fn peek_ready(&self) -> std::result::Result<(), Option<(u64, u64)>> {
        let mut pos = self.header().head.0.pos.load(Ordering::Relaxed);
        for _ in 0..self.help_budget() {
            let st = self.slot(pos).state.load(Ordering::SeqCst);
            let d = dist(seq(st), pos.wrapping_add(1));
            if d == 0 && who(st) == IDLE {
                return Ok(());
            }
            if !(0..=self.one_lap as i32).contains(&d) {
                return Err(Some((pos, st)));
            }
            pos = self.next(pos);
        }
        Err(None)
    }

    /// Waits until a message is available (without taking it), the ring is closed and empty, or
    /// `deadline` passes: `Some(true)`, `Some(false)`, `None`. It waits as `pop` does
    /// ([`Ring::wait_for`]), calling `watch` after every sleep: it heals garbage indices and recovers
    /// a slot whose writer died, so a message is reported only when a `pop` would take it. Before
    /// (found by review), it went by the indices' count, which a dead writer's claim kept above zero
    /// (a pipe's `poll` said yes and the `recv` after it waited), and which a lagging `head` kept right.
    pub(crate) fn wait_nonempty(
        &self,
        deadline: Option<Instant>,
        watch: &mut dyn FnMut(),
    ) -> Option<bool> {
        self.wait_for(Side::Consumer, deadline, watch, |_| {
            Ok(match self.peek_ready() {
                Ok(()) => Turn::Done(true),
                // Closed, and nobody writing where the next message would be: none will come.
                // The slot is read again after the flag, as `try_claim_pop` does: a message put
                // before the close may have come in since.
                Err(Some((pos, st)))
                    if self.is_closed()
                        && !(dist(seq(st), pos) == 0 && who(st) != IDLE)
                        && self.slot(pos).state.load(Ordering::SeqCst) == st =>
                {
                    Turn::Done(false)
                }
                Err(blocked) => Turn::Wait(blocked),
            })
        })
        .ok()
    }
}
