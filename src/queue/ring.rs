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
//! - **push** at `tail = s`: CAS `{s, IDLE}` → `{s, me}` (Acquire); store `tail` = next; copy the message
//!   in; CAS `{s, me}` → `{s + 1, IDLE}` (Release: the bytes happen-before the consumer's Acquire).
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
//!   free. Store `tail` = the stamp after the run, once. For each slot: copy the message in. Then, for
//!   each filled slot in order, **store** `{s', me}` → `{s' + 1, IDLE}` (Release): a batch's messages
//!   are published after all are copied (or, before a large message is spilled, those copied so far).
//!   Unused claims (an encode error) are given back as `{s' + 1, TOMBSTONE}`. Then one `fence(SeqCst)`
//!   and one notify for the whole batch (and one more for what is published before each spill).
//! - **pop batch** at `head = s`: likewise, claiming `{s' + 1, IDLE | TOMBSTONE}` → `{s' + 1, me}`
//!   (Acquire) while ready; `head` stored once; each slot read, then **stored** to `{s' + one_lap, IDLE}`
//!   (Release); one fence, one notify.
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
//! slots one by one: freeing them at the end measured no faster.
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

use crate::error::{Error, Result};
use crate::region::{Region, ShmSafe};
use crate::sys::proc::{self, Identity};

/// Folded into a queue's layout hash (in place of a size, which varies per queue): bump it whenever the
/// meaning of a field of [`RingHeader`] or [`SlotHead`] changes, so that builds that disagree refuse to
/// share a ring. 2: `Config::ns` (was padding). 3: `Cursor::cpu` (was padding).
pub(crate) const LAYOUT_REVISION: usize = 3;

/// `Config::ns` once processes of different pid namespaces attached.
const MIXED_NS: u32 = u32::MAX;

const IDLE: u32 = 0;
const TOMBSTONE: u32 = 0x8000_0000;
/// Largest capacity: stamps must stay well inside 32-bit wrapping comparisons.
pub(crate) const MAX_CAPACITY: u32 = 1 << 28;
/// Largest slot: a message is copied in one piece, and a region holds `capacity` slots.
pub(crate) const MAX_SLOT_SIZE: u32 = 1 << 30;

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
    /// Messages put and not yet marked done (JoinableQueue).
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
const HEADER: usize = std::mem::size_of::<RingHeader>();

/// Records the calling thread's CPU in `cursor` for the other side's waiters ("Peers on one CPU").
/// The line is the one the claim just wrote `pos` to, and the store is skipped while the CPU stays the
/// same, so the fast path gains no cache-line transfer; it gains a `sched_getcpu`, a load from the
/// thread's rseq area with glibc 2.35 or later (about 3 ns here), a vDSO call before that.
#[inline]
fn note_cpu(cursor: &Cursor) {
    let cpu = proc::current_cpu();
    if cursor.cpu.load(Ordering::Relaxed) != cpu {
        cursor.cpu.store(cpu, Ordering::Relaxed);
    }
}

/// The geometry of a ring, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub capacity: u32,
    pub slot_size: u32,
}

impl Geometry {
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
    /// `proc::monotonic_ms()` of this process's last survey of the ring ([`Ring::heal`]); process-local,
    /// so that a peer cannot make us skip or repeat surveys.
    last_survey_ms: AtomicU64,
    /// The peer CPUs last read for a waiting producer (from `head`) and a waiting consumer (from
    /// `tail`), indexed by [`Side`], with how many more waits may use them (`left << 32 | cpu`; 0: read
    /// on the next wait): see [`Ring::peer_cpu`]. Process-local.
    cpu_seen: [AtomicU64; 2],
}

/// Waits that use a peer CPU read from the ring before it is read again ([`Ring::peer_cpu`]).
pub(crate) const PEER_CPU_REFRESH: u32 = 64;

/// How often one process may survey a ring whose hints look right but that a full/empty answer makes
/// suspect (a survey reads every slot's state once): every 10 ms, plus 1 ms per 1000 slots so that
/// surveys of a big ring stay a small fraction of a blocked caller's time.
const SURVEY_INTERVAL_MS: u64 = 10;

/// What a slot's state says about the stamp it belongs to (see the state table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `{ s, IDLE }`: free for the producer of `s`.
    Free,
    /// `{ s, tid }`: a producer is writing `s`.
    Writing,
    /// `{ s + 1, IDLE | TOMBSTONE }`: `s` is published (or abandoned) and not yet taken.
    Ready,
    /// `{ s + 1, tid }`: a consumer is reading `s`.
    Reading,
}

/// One survey of every slot, with stamps as signed distances from a reference stamp.
#[derive(Debug, Default)]
struct Survey {
    reference: u32,
    /// Slots whose stamp lies within two laps of the reference (the others are garbage, left alone).
    counted: u32,
    min_free: Option<i64>,
    /// Smallest stamp a consumer must take next: Ready or Writing.
    min_pending: Option<i64>,
    min_ready: Option<i64>,
    /// Largest stamp in use (Writing, Ready or Reading).
    max_used: Option<i64>,
}

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
            last_survey_ms: AtomicU64::new(0),
            cpu_seen: [AtomicU64::new(0), AtomicU64::new(0)],
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
        let off = HEADER + index as usize * self.geo.stride();
        // SAFETY: index < capacity, so [off, off + stride) lies inside the payload (payload_size was
        // checked against the region); off is a multiple of 64 from a 64-aligned base; SlotHead is atomics.
        unsafe { &*(self.base.add(off) as *const SlotHead) }
    }

    /// The message bytes of `slot` (a reference obtained from [`Ring::slot`]).
    #[inline]
    fn data(slot: &SlotHead) -> *mut u8 {
        (slot as *const SlotHead as *mut u8).wrapping_add(SLOT_HEAD)
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
    fn try_push(&self, bytes: &[u8], me: Identity) -> Attempt {
        let mut help = self.help();
        loop {
            let pos = match self.try_claim_push(me, 1, &mut help) {
                BatchAttempt::Claimed { first, .. } => first,
                BatchAttempt::Blocked { pos, state } => return Attempt::Blocked { pos, state },
                BatchAttempt::Closed | BatchAttempt::Busy => return Attempt::Busy,
            };
            let slot = self.slot(pos);
            let claimed = state(pos as u32, me.tid);
            slot.len.store(bytes.len() as u32, Ordering::Relaxed);
            // SAFETY: we own the slot (claimed above: `{pos, me}`); bytes.len() <= slot_size was
            // checked by `push`, so the copy stays inside this slot's stride, inside the region.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), Self::data(slot), bytes.len()) };
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
    pub(crate) fn push(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        if bytes.len() > self.geo.slot_size as usize {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: self.geo.slot_size as usize,
            });
        }
        let me = proc::current();
        let mut backoff = Backoff::new().until(deadline);
        let mut watch = StuckWatch::new();
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let blocked = match self.try_push(bytes, me) {
                Attempt::Done => return Ok(()),
                Attempt::Blocked { pos, state } => Some((pos, state)),
                Attempt::Busy => None,
            };
            // Full by the hint's slot; the hint may be wrong in a way that slot cannot show.
            if self.survey_due() && self.heal() {
                continue;
            }
            if backoff.snooze_beside(|| self.peer_cpu(Side::Producer)) {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            self.sleep_for_space(blocked, slice, &mut watch);
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
    fn sleep_for_items(&self, slice: Duration, watch: &mut StuckWatch) {
        let h = self.header();
        let pos = h.head.0.pos.load(Ordering::Relaxed);
        let st = self.slot(pos).state.load(Ordering::Acquire);
        let closed = self.is_closed();
        // This snapshot, not the caller's attempt, is what the sleep compares against: what changed in
        // between and would make the next attempt succeed (a message published, a close with no claim
        // to wait behind) is a reason not to sleep at all, since its wake-up found no sleeper.
        let writing = dist(seq(st), pos) == 0 && who(st) != IDLE;
        if ready_for(st, pos) || (closed && !writing) {
            return;
        }
        let unchanged = || {
            h.head.0.pos.load(Ordering::Relaxed) == pos
                && self.slot(pos).state.load(Ordering::SeqCst) == st
                && self.is_closed() == closed
        };
        self.forget_peer_cpu(Side::Consumer);
        h.items.0.sleep(slice, || !unchanged());
        if unchanged() && watch.due(pos, st) {
            self.abandon_if_writer_died(pos, st);
        }
    }

    /// A consumer died holding the slot the producer of stamp `pos` needs: free it for `pos`, and the
    /// slots after it that the same dead consumer claimed in the same batch (`get_many`), each with the
    /// same checks as in [`Ring::abandon_if_writer_died`]. The messages in them were handed to the dead
    /// consumer and are lost: at most once, never twice.
    fn free_if_reader_died(&self, pos: u64, st: u64) {
        let reader = who(st);
        let (mut pos, mut st) = (pos, st);
        let mut freed_any = false;
        for _ in 0..MAX_BATCH {
            let prev_lap = pos.wrapping_sub(self.one_lap);
            let is_reader_claim = dist(seq(st), prev_lap) == 1
                && who(st) == reader
                && reader != IDLE
                && reader != TOMBSTONE;
            if !is_reader_claim || self.claimer_alive(reader) {
                break;
            }
            let freed = state(pos as u32, IDLE);
            if self
                .slot(pos)
                .state
                .compare_exchange(st, freed, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                break;
            }
            freed_any = true;
            pos = self.next(pos);
            st = self.slot(pos).state.load(Ordering::Acquire);
        }
        if freed_any {
            self.header().space.0.notify();
        }
    }

    /// Whether the thread that claimed a slot still exists. Existence only (no start-time check): a
    /// live claimer preempted between its claim and any bookkeeping must never be taken for dead,
    /// while a recycled tid (pid_max is 4M here) merely delays the recovery until that thread exits.
    /// Only while every process attached to the ring shares our pid namespace (`Config::ns`); otherwise
    /// a tid cannot be judged from our `/proc`, and the claimer counts as alive (S6).
    fn claimer_alive(&self, tid: u32) -> bool {
        if tid > proc::PID_MAX_LIMIT {
            return false; // no namespace has such a tid: garbage
        }
        let ns = self.header().config.0.ns.load(Ordering::Relaxed);
        if !proc::same_pid_ns_tag(ns) {
            return true;
        }
        proc::is_alive(Identity { tid, start: 0 })
    }

    /// One attempt to take a message, passing its bytes to `f` while the slot is held. `f` may run more
    /// than once if a claim is revoked under it (its result is then discarded), so it must not have side
    /// effects beyond producing `R`.
    fn try_pop<R>(&self, me: Identity, f: &mut impl FnMut(&[u8]) -> R) -> Result<Pop<R>> {
        // Each round takes one stamp; a tombstone or a revoked claim moves on to the next one. A ring
        // of garbage cannot keep us here: every round spends at least one step of the one help budget.
        let mut help = self.help();
        loop {
            let (pos, tomb) = match self.try_claim_pop(me, 1, &mut help) {
                BatchAttempt::Claimed { first, tombs, .. } => (first, tombs & 1 != 0),
                // Empty, or a producer is writing the next message (the caller may check that it
                // is alive), or out of help budget.
                BatchAttempt::Blocked { .. } | BatchAttempt::Busy => return Ok(Pop::Empty),
                BatchAttempt::Closed => return Ok(Pop::Closed),
            };
            let slot = self.slot(pos);
            let claimed = state((pos as u32).wrapping_add(1), me.tid);
            let len = slot.len.load(Ordering::Relaxed) as usize;
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
            let freed = state(pos.wrapping_add(self.one_lap) as u32, IDLE);
            let released =
                slot.state
                    .compare_exchange(claimed, freed, Ordering::SeqCst, Ordering::Relaxed);
            self.header().space.0.notify();
            match (released, result) {
                (Err(_), _) | (Ok(_), None) => continue, // revoked, or a tombstone: next message
                (Ok(_), Some(Ok(r))) => return Ok(Pop::Got(r)),
                (Ok(_), Some(Err(e))) => return Err(e),
            }
        }
    }

    /// Takes the next message, waiting until `deadline`; `f` sees its bytes in place (see
    /// [`Ring::try_pop`] for why it is `FnMut`).
    pub(crate) fn pop<R>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&[u8]) -> R,
    ) -> Result<R> {
        let me = proc::current();
        let mut backoff = Backoff::new().until(deadline);
        let mut watch = StuckWatch::new();
        loop {
            match self.try_pop(me, &mut f)? {
                Pop::Got(r) => return Ok(r),
                Pop::Closed => return Err(Error::Closed),
                Pop::Empty => {}
            }
            // Empty by the hint's slot; the hint may be wrong in a way that slot cannot show.
            if self.survey_due() && self.heal() {
                continue;
            }
            if backoff.snooze_beside(|| self.peer_cpu(Side::Consumer)) {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            self.sleep_for_items(slice, &mut watch);
        }
    }

    /// The producer claimed stamp `pos` and has not published it; if it died, tombstone the slot, and the
    /// slots after it that the same dead producer claimed in the same batch (`put_many` claims a run of
    /// consecutive stamps; without this, each of them would cost the waiting consumer one more
    /// [`StuckWatch`] interval, up to [`MAX_CHECK`] each).
    ///
    /// Liveness is asked again for every slot of the run: a dead claimer's tid may be recycled by a
    /// live thread that claims a later stamp; that thread is judged alive and the walk stops there.
    /// Each step is one CAS from the exact state read, so no claim made since is ever tombstoned (a
    /// stamp's state never returns to an earlier value).
    fn abandon_if_writer_died(&self, pos: u64, st: u64) {
        let writer = who(st);
        let (mut pos, mut st) = (pos, st);
        let mut abandoned = false;
        for _ in 0..MAX_BATCH {
            if dist(seq(st), pos) != 0
                || who(st) != writer
                || writer == IDLE
                || writer == TOMBSTONE
                || self.claimer_alive(writer)
            {
                break;
            }
            let tomb = state((pos as u32).wrapping_add(1), TOMBSTONE);
            if self
                .slot(pos)
                .state
                .compare_exchange(st, tomb, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                break;
            }
            abandoned = true;
            pos = self.next(pos);
            st = self.slot(pos).state.load(Ordering::Acquire);
        }
        if abandoned {
            self.header().items.0.notify();
        }
    }

    // ---- healing the hints ----

    /// Whether this process may survey the ring now (see [`SURVEY_INTERVAL_MS`]).
    fn survey_due(&self) -> bool {
        let now = proc::monotonic_ms();
        let last = self.last_survey_ms.load(Ordering::Relaxed);
        let interval = SURVEY_INTERVAL_MS + u64::from(self.geo.capacity) / 1000;
        now.saturating_sub(last) >= interval
            && self
                .last_survey_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The stamp and phase slot `i`'s state `st` belongs to, or `None` if its sequence number does not
    /// fit the slot's index (garbage).
    fn phase(&self, i: u32, st: u64) -> Option<(u32, Phase)> {
        let q = seq(st);
        let index = q & (self.one_lap as u32 - 1);
        let w = who(st);
        if index == i {
            match w {
                IDLE => Some((q, Phase::Free)),
                TOMBSTONE => None,
                _ => Some((q, Phase::Writing)),
            }
        } else if index == i + 1 {
            let s = q.wrapping_sub(1);
            Some((
                s,
                if w == IDLE || w == TOMBSTONE {
                    Phase::Ready
                } else {
                    Phase::Reading
                },
            ))
        } else {
            None
        }
    }

    /// Reads every slot once and places its stamp relative to `reference`.
    fn survey(&self, reference: u32) -> Survey {
        let window = 2 * self.one_lap as i64;
        let mut v = Survey {
            reference,
            ..Survey::default()
        };
        let lower = |m: &mut Option<i64>, x: i64| *m = Some(m.map_or(x, |m| m.min(x)));
        for i in 0..self.geo.capacity {
            let st = self.slot(u64::from(i)).state.load(Ordering::Acquire);
            let Some((s, phase)) = self.phase(i, st) else {
                continue;
            };
            let rel = i64::from(s.wrapping_sub(reference) as i32);
            if rel.abs() > window {
                continue;
            }
            v.counted += 1;
            match phase {
                Phase::Free => lower(&mut v.min_free, rel),
                Phase::Writing => lower(&mut v.min_pending, rel),
                Phase::Ready => {
                    lower(&mut v.min_pending, rel);
                    lower(&mut v.min_ready, rel);
                }
                Phase::Reading => {}
            }
            if phase != Phase::Free {
                v.max_used = Some(v.max_used.map_or(rel, |m| m.max(rel)));
            }
        }
        v
    }

    /// Re-derives `head` and `tail` from the slots' stamps where they provably disagree; returns whether
    /// it changed anything. O(capacity); run only when a hint looks wrong, or when an operation found
    /// the ring full/empty (at most every [`SURVEY_INTERVAL_MS`] per process).
    ///
    /// Both hints are read *before* the survey. A stamp's state only moves forward and never returns, so:
    /// a slot still free for a stamp below the `tail` read earlier, or still holding an untaken message
    /// below the `head` read earlier, cannot happen honestly (an honest index only passes claimed stamps)
    /// and proves the hint garbage; so does a hint more than two laps from every stamp. A free stamp
    /// below a stamp in use is a hole no producer will fill in order: it is tombstoned with a CAS from
    /// exactly that free state, which fails if a producer claims it meanwhile. Exactly-once delivery
    /// never depends on any of this: only the slot CASes claim.
    fn heal(&self) -> bool {
        let h = self.header();
        let (tail, head) = (
            h.tail.0.pos.load(Ordering::Acquire),
            h.head.0.pos.load(Ordering::Acquire),
        );
        // The reference: a stamp of the ring itself. A garbage slot could make a bad one, so the one of
        // three candidates that places the most slots within the window wins.
        let cap = self.geo.capacity;
        let mut best: Option<Survey> = None;
        for i in [0, cap / 3, 2 * cap / 3] {
            let st = self.slot(u64::from(i)).state.load(Ordering::Acquire);
            let Some((reference, _)) = self.phase(i, st) else {
                continue;
            };
            let v = self.survey(reference);
            if best.as_ref().is_none_or(|b| v.counted > b.counted) {
                best = Some(v);
            }
        }
        let Some(v) = best else {
            return false;
        };
        let window = 2 * self.one_lap as i64;
        let rel = |hint: u64| i64::from((hint as u32).wrapping_sub(v.reference) as i32);
        let at = |hint: u64, target: i64| {
            // The 64-bit value nearest `hint` whose low 32 bits are the target stamp.
            let stamp = v.reference.wrapping_add(target as i32 as u32);
            hint.wrapping_add(i64::from(stamp.wrapping_sub(hint as u32) as i32) as u64)
        };
        let mut changed = false;
        // Holes: free stamps below the largest stamp in use.
        let mut min_pending = v.min_pending;
        if let (Some(max_used), Some(min_free)) = (v.max_used, v.min_free) {
            if min_free < max_used {
                for i in 0..cap {
                    let slot = self.slot(u64::from(i));
                    let st = slot.state.load(Ordering::Acquire);
                    let Some((s, Phase::Free)) = self.phase(i, st) else {
                        continue;
                    };
                    let r = i64::from(s.wrapping_sub(v.reference) as i32);
                    if r.abs() > window || r >= max_used {
                        continue;
                    }
                    // {s, IDLE} → {s + 1, TOMBSTONE}: abandoned, consumers skip it.
                    let tomb = state(s.wrapping_add(1), TOMBSTONE);
                    if slot
                        .state
                        .compare_exchange(st, tomb, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        changed = true;
                        min_pending = Some(min_pending.map_or(r, |m| m.min(r)));
                    }
                }
            }
        }
        let free_after_holes = if changed {
            // Recount what is still free above the holes.
            self.survey(v.reference).min_free
        } else {
            v.min_free
        };
        // tail: onto the first free stamp if it is past one, or nowhere near any stamp.
        let t = rel(tail);
        // Full: the stamp after the last one in use.
        let tail_target = match (free_after_holes, v.max_used) {
            (Some(f), _) => Some(at(tail, f)),
            (None, Some(m)) => Some(self.next(at(tail, m))),
            (None, None) => None,
        };
        if let Some(target) = tail_target {
            let ahead = free_after_holes.is_some_and(|f| f < t);
            if (ahead || t.abs() > window)
                && h.tail
                    .0
                    .pos
                    .compare_exchange(tail, target, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                changed = true;
            }
        }
        // head: onto the first untaken stamp if it is past one, or nowhere near any stamp.
        let hd = rel(head);
        if let Some(target) = min_pending.or(free_after_holes) {
            let ahead = v.min_ready.is_some_and(|r| r < hd) || min_pending.is_some_and(|p| p < hd);
            if (ahead || hd.abs() > window)
                && h.head
                    .0
                    .pos
                    .compare_exchange(head, at(head, target), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                changed = true;
            }
        }
        if changed {
            h.items.0.notify();
            h.space.0.notify();
        }
        changed
    }

    // ---- JoinableQueue accounting ----

    pub(crate) fn add_unfinished(&self) {
        self.header()
            .config
            .0
            .unfinished
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Marks one message done. Returns false if none was outstanding.
    pub(crate) fn task_done(&self) -> bool {
        let u = &self.header().config.0.unfinished;
        let mut cur = u.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return false;
            }
            match u.compare_exchange_weak(cur, cur - 1, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        if cur == 1 {
            self.header().done.0.notify();
        }
        true
    }

    pub(crate) fn unfinished(&self) -> u64 {
        // SeqCst: `join` re-checks this after announcing itself (see `WaitWord::notify`).
        self.header().config.0.unfinished.load(Ordering::SeqCst)
    }

    /// Waits until every message put has been marked done.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        while self.unfinished() != 0 {
            let slice = slice_until(deadline, MAX_CHECK)?;
            self.header().done.0.sleep(slice, || self.unfinished() == 0);
        }
        Ok(())
    }

    /// Whether the slot at `head` holds a published message (or a tombstone): a SeqCst load of the word
    /// producers publish with a SeqCst CAS, so it can serve as a sleeper's re-check.
    fn head_published(&self) -> bool {
        let pos = self.header().head.0.pos.load(Ordering::Relaxed);
        let st = self.slot(pos).state.load(Ordering::SeqCst);
        dist(seq(st), pos.wrapping_add(1)) == 0 && (who(st) == IDLE || who(st) == TOMBSTONE)
    }

    /// Waits until a message is likely available (without taking it), the ring is closed, or
    /// `deadline` passes. Returns whether a message is there.
    pub(crate) fn wait_nonempty(&self, deadline: Option<Instant>) -> bool {
        let mut backoff = Backoff::new().until(deadline);
        loop {
            if self.len() > 0 {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            if backoff.snooze_beside(|| self.peer_cpu(Side::Consumer)) {
                continue;
            }
            let Ok(slice) = slice_until(deadline, MAX_CHECK) else {
                return false;
            };
            self.forget_peer_cpu(Side::Consumer);
            self.header()
                .items
                .0
                .sleep(slice, || self.head_published() || self.is_closed());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Batches (`Queue::put_many` / `get_many`)

/// The most slots one batch claims: the tombstone bitmask of a [`PopBatch`] is one `u64`, and the walk
/// that recovers a dead batch claimer's run ([`Ring::abandon_if_writer_died`]) is bounded by it.
pub(crate) const MAX_BATCH: usize = 64;

/// What one batch claim attempt found.
enum BatchAttempt {
    /// Claimed `n >= 1` consecutive stamps from `first`.
    Claimed { first: u64, n: u32, tombs: u64 },
    /// Full (push) or empty (pop) at the slot of stamp `pos`, still in `state`.
    Blocked { pos: u64, state: u64 },
    /// Empty and closed (pop only).
    Closed,
    /// Out of help budget (garbage indices only); look at the clock.
    Busy,
}

/// Slots one producer claimed for a batch: consecutive stamps from `first`, each `{s, me}`. Every
/// [`PushBatch::write`] fills the next one; the filled ones are published in order when the batch is
/// dropped (see "Batches" in the module docs for why not one by one), or earlier by
/// [`PushBatch::publish_filled`]. Dropping the batch also tombstones the slots left unfilled (an encode
/// error, a message too large, a panic in the codec), then makes the batch's stores visible to sleepers
/// and wakes them, once.
pub(crate) struct PushBatch<'r> {
    ring: &'r Ring,
    me: u32,
    /// The first stamp not published yet.
    first: u64,
    /// Slots from `first` that [`PushBatch::write`] has passed: filled, or found revoked.
    filled: u32,
    /// Bit i: the i-th of those was found revoked, and is not ours to publish whatever it reads later.
    revoked: u64,
    /// The next claimed slot to fill, and how many claimed slots are left from it.
    pos: u64,
    left: u32,
}

impl PushBatch<'_> {
    /// Slots claimed and not yet filled.
    pub(crate) fn remaining(&self) -> usize {
        self.left as usize
    }

    /// Copies `bytes` into the next claimed slot, which the batch publishes when it is dropped (or at
    /// [`PushBatch::publish_filled`]).
    /// `Ok(false)`: the slot's claim had been revoked (only garbage written by another process does
    /// that, see `Ring::publish_batch_slot`): nothing was written and the caller writes the same message
    /// into the next slot.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`]; the slot stays claimed, and is tombstoned when the batch is dropped.
    ///
    /// # Panics
    /// If no claimed slot is left (a bug of the caller).
    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<bool> {
        assert!(self.left > 0, "PushBatch::write past the claimed slots");
        let ring = self.ring;
        if bytes.len() > ring.geo.slot_size as usize {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: ring.geo.slot_size as usize,
            });
        }
        let pos = self.pos;
        let slot = ring.slot(pos);
        let claimed = state(pos as u32, self.me);
        self.pos = ring.next(pos);
        self.left -= 1;
        self.filled += 1;
        // A plain load, no lock: only garbage changes a live claimer's state (see `Ring::publish_batch_slot`).
        if slot.state.load(Ordering::Relaxed) != claimed {
            // `filled` <= MAX_BATCH = 64: the bit fits.
            self.revoked |= 1 << (self.filled - 1);
            return Ok(false);
        }
        slot.len.store(bytes.len() as u32, Ordering::Relaxed);
        // SAFETY: we own the slot (claimed by `try_claim_push`, checked just above); bytes.len() <=
        // slot_size was checked above, so the copy stays inside this slot's stride, inside the region.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), Ring::data(slot), bytes.len()) };
        Ok(true)
    }
}

impl PushBatch<'_> {
    /// Publishes the slots filled so far, in order (`{s, me}` → `{s + 1, IDLE}`), and wakes a sleeping
    /// consumer: what the drop does, done early. [`Queue::put_many`](crate::Queue::put_many) calls it
    /// before spilling a large message, whose block and copy take far longer than the line transfers
    /// that publishing at the end saves. A slot found revoked while filling (garbage only) is left to
    /// whoever holds it now, whatever it reads by then.
    pub(crate) fn publish_filled(&mut self) {
        if self.filled > 0 {
            self.publish_filled_slots();
            self.ring.end_batch(&self.ring.header().items.0);
        }
    }

    /// [`PushBatch::publish_filled`] without the wake-up, which the caller owes.
    fn publish_filled_slots(&mut self) {
        let ring = self.ring;
        let mut pos = self.first;
        for i in 0..self.filled {
            let slot = ring.slot(pos);
            if self.revoked & (1 << i) == 0
                && slot.state.load(Ordering::Relaxed) == state(pos as u32, self.me)
            {
                ring.publish_batch_slot(slot, state((pos as u32).wrapping_add(1), IDLE));
            }
            pos = ring.next(pos);
        }
        (self.first, self.filled, self.revoked) = (pos, 0, 0);
    }
}

impl Drop for PushBatch<'_> {
    fn drop(&mut self) {
        let ring = self.ring;
        self.publish_filled_slots();
        while self.left > 0 {
            // {s, me} → {s + 1, TOMBSTONE}: given back; consumers skip it. Not `{s, IDLE}`: every stamp
            // below the largest `tail` ever written must stay claimed (see the module docs), and `tail`
            // is already past this one.
            let pos = self.pos;
            let slot = ring.slot(pos);
            if slot.state.load(Ordering::Relaxed) == state(pos as u32, self.me) {
                ring.publish_batch_slot(slot, state((pos as u32).wrapping_add(1), TOMBSTONE));
            }
            self.pos = ring.next(pos);
            self.left -= 1;
        }
        ring.end_batch(&ring.header().items.0);
    }
}

/// Messages one consumer claimed for a batch: `left` consecutive stamps from `pos`, each `{s + 1, me}`.
/// [`PopBatch::next`] reads and frees them one by one; dropping the batch frees those left unread (their
/// messages are lost with it, as with a consumer that dies: only a panic in the codec does that), then
/// makes the frees visible to sleepers and wakes them, once.
pub(crate) struct PopBatch<'r> {
    ring: &'r Ring,
    me: u32,
    pos: u64,
    left: u32,
    /// Bit i: the i-th claimed slot was a tombstone (a message abandoned by a dead producer).
    tombs: u64,
}

impl PopBatch<'_> {
    /// Claimed slots not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.left as usize
    }

    /// Reads the next claimed slot, passing its bytes to `f` while the slot is held, and frees it.
    /// `None` once the batch is used up; `Some(Ok(None))` for a tombstone or a revoked claim (nothing to
    /// deliver); `Some(Err(Corrupted))` for a damaged length (the slot is consumed either way).
    #[inline]
    pub(crate) fn next<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<Option<R>>> {
        if self.left == 0 {
            return None;
        }
        let ring = self.ring;
        let pos = self.pos;
        let slot = ring.slot(pos);
        let claimed = state((pos as u32).wrapping_add(1), self.me);
        let tomb = self.tombs & 1 != 0;
        self.tombs >>= 1;
        self.pos = ring.next(pos);
        self.left -= 1;
        let len = slot.len.load(Ordering::Relaxed) as usize;
        let result = if tomb {
            Ok(None)
        } else if len > ring.geo.slot_size as usize {
            Err(Error::Corrupted(format!(
                "message length {len} exceeds the slot size {}",
                ring.geo.slot_size
            )))
        } else {
            // SAFETY: we own the slot (claimed by `try_claim_pop`); len <= slot_size keeps the range
            // inside this slot's stride, inside the region. Producers do not write a claimed slot.
            let bytes = unsafe { std::slice::from_raw_parts(Ring::data(slot), len) };
            Ok(Some(f(bytes)))
        };
        // A revoked claim (garbage only) may have let a producer overwrite what we read: discard it, and
        // leave the slot to whoever holds it now.
        if slot.state.load(Ordering::Relaxed) != claimed {
            return Some(Ok(None));
        }
        ring.publish_batch_slot(slot, state(pos.wrapping_add(ring.one_lap) as u32, IDLE));
        Some(result)
    }
}

impl Drop for PopBatch<'_> {
    fn drop(&mut self) {
        let ring = self.ring;
        while self.left > 0 {
            let pos = self.pos;
            let slot = ring.slot(pos);
            if slot.state.load(Ordering::Relaxed) == state((pos as u32).wrapping_add(1), self.me) {
                ring.publish_batch_slot(slot, state(pos.wrapping_add(ring.one_lap) as u32, IDLE));
            }
            self.pos = ring.next(pos);
            self.left -= 1;
        }
        ring.end_batch(&ring.header().space.0);
    }
}

impl Ring {
    /// The last step of a batched slot, `{s, me}` → `{s + 1, IDLE | TOMBSTONE}` (publish or give back)
    /// or `{s + 1, me}` → `{s + one_lap, IDLE}` (free): a **Release store**, not the CAS the single-slot
    /// path uses, so a batch of k messages costs k locked instructions per side (the claims) instead of
    /// 2k.
    ///
    /// Why a store is enough here:
    /// - Ordering: Release makes the message bytes and `len` (producer), or our reads of them
    ///   (consumer), happen-before whoever claims the slot next with its Acquire CAS, exactly as the
    ///   single path's Release half of its SeqCst CAS does.
    /// - Exclusivity: the single path's CAS guards against a claim revoked by a thread that took the
    ///   claimer for dead. An honest peer revokes a claim only when [`Ring::claimer_alive`] says its tid
    ///   no longer exists or is a zombie; we are running this code, so our tid exists and is not a
    ///   zombie, and every "cannot tell" answer counts as alive. So only garbage written by another
    ///   process can change our claimed slot; the callers' plain load just before catches that in the
    ///   common case, and what slips through that window is garbage against garbage, which the "Garbage"
    ///   section allows (no memory is touched outside the region, deadlines hold).
    /// - Wake-ups: [`WaitWord::notify`] needs the state change to be ordered before its load of the
    ///   waiters' bit by a SeqCst operation. A store is not; [`Ring::end_batch`] issues one SeqCst fence
    ///   for the whole batch instead (one `mfence`, against k locked CASes).
    #[inline]
    fn publish_batch_slot(&self, slot: &SlotHead, new: u64) {
        slot.state.store(new, Ordering::Release);
    }

    /// Ends a batch: one SeqCst fence, then one notify of `word`.
    ///
    /// The fence pairs with a sleeper's SeqCst RMW on `word` and its SeqCst re-check of a slot state
    /// (`WaitWord::sleep`): in the single total order of SeqCst operations either our fence comes first,
    /// and then the sleeper's re-check, which follows it, must see our stores (they are sequenced before
    /// the fence: C++20 [atomics.order] ¶4), or the sleeper's RMW comes first, and then our SeqCst load
    /// of `word` in `notify`, sequenced after the fence, sees its waiting bit. Either the sleeper does
    /// not sleep or we wake it: no lost wake-up, one wake per batch.
    fn end_batch(&self, word: &WaitWord) {
        std::sync::atomic::fence(Ordering::SeqCst);
        word.notify();
    }

    /// One attempt to claim up to `want` (1..=[`MAX_BATCH`]) consecutive free stamps from `tail`: the
    /// claim of [`Ring::try_push`] (`want` = 1) and of `put_many`.
    ///
    /// The first claim helps a lagging `tail` and heals a garbage one, spending `help` (shared by all
    /// the claims of one attempt). Each further stamp is claimed only if its slot is `{s, IDLE}` right
    /// now, with the same Acquire CAS
    /// `{s, IDLE}` → `{s, me}`; the run stops at the first slot that is not (full, or another producer
    /// got there first), so a batch is whatever prefix was free. The claim of each slot is its own CAS
    /// (not one CAS on `tail` for k stamps, as in a ring whose index is the claim): here `tail` is only
    /// a hint and the slot CAS is what makes a claim exclusive and names the claimer, which is how a
    /// dead claimer is found and recovered. A CAS on a line the producer is about to write anyway costs
    /// little more than the write. `tail` is moved once per batch, by a plain store past the last stamp
    /// claimed: every stamp below it is claimed, which is all the module docs' argument needs; producers
    /// that read it stale meanwhile find claimed slots and help it on.
    #[inline(always)]
    fn try_claim_push(&self, me: Identity, want: u32, help: &mut Help) -> BatchAttempt {
        let h = self.header();
        while help.steps > 0 {
            help.steps -= 1;
            let pos = h.tail.0.pos.load(Ordering::Relaxed);
            let slot = self.slot(pos);
            let st = slot.state.load(Ordering::Acquire);
            let d = dist(seq(st), pos);
            // An honest `tail` is at most a lap stale, and a slot in its way holds the previous lap
            // (d = 1 - one_lap, or -one_lap while its producer still writes). Anything else is a
            // garbage hint: re-derive it from the stamps, once per attempt.
            let lap = self.one_lap as i32;
            let honest = (0..=lap).contains(&d) || d == 1 - lap || d == -lap;
            if !honest && !help.healed {
                help.healed = true;
                self.heal();
                continue;
            }
            if d == 0 && who(st) == IDLE {
                // {pos, IDLE} → {pos, me}: the slot is ours and says so.
                if slot
                    .state
                    .compare_exchange_weak(
                        st,
                        state(pos as u32, me.tid),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_err()
                {
                    continue;
                }
                let (mut n, mut last) = (1u32, pos);
                while n < want {
                    let s = self.next(last);
                    let free = state(s as u32, IDLE);
                    let next_slot = self.slot(s);
                    // A plain load first: a slot that is not free is not worth a locked instruction.
                    if next_slot.state.load(Ordering::Relaxed) != free
                        || next_slot
                            .state
                            .compare_exchange(
                                free,
                                state(s as u32, me.tid),
                                Ordering::Acquire,
                                Ordering::Relaxed,
                            )
                            .is_err()
                    {
                        break;
                    }
                    n += 1;
                    last = s;
                }
                // `tail` is only a hint of where to look: the slot CASes above are the claim. A plain
                // store (not a CAS, one locked instruction less per call) may move it back behind a
                // helper that already moved it further; whoever then reads the stale value finds
                // slots that are past it and helps it forward (`d > 0` below). It can never make a
                // claim wrong.
                h.tail.0.pos.store(self.next(last), Ordering::Relaxed);
                note_cpu(&h.tail.0);
                return BatchAttempt::Claimed {
                    first: pos,
                    n,
                    tombs: 0,
                };
            } else if d >= 0 {
                // {pos, tid}: claimed by a producer that has not moved `tail` yet (maybe dead); or the
                // slot is already past `pos`: `tail` is stale. Help it on and retry (a garbage `tail`
                // far behind is healed above instead of walked).
                let _ = h.tail.0.pos.compare_exchange(
                    pos,
                    self.next(pos),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                // Still holding the previous lap's message (or being read): full.
                return BatchAttempt::Blocked { pos, state: st };
            }
        }
        BatchAttempt::Busy
    }

    /// One attempt to claim up to `want` (1..=[`MAX_BATCH`]) consecutive published messages (or
    /// tombstones) from `head`, for [`Ring::try_pop`] (`want` = 1) and `get_many`: the first claim
    /// helps a lagging `head` and heals a garbage one (spending `help`, as in
    /// [`Ring::try_claim_push`]), then `{s + 1, IDLE | TOMBSTONE}` →
    /// `{s + 1, me}` (Acquire: sees each message's bytes) for each following slot that is ready right
    /// now, stopping at the first that is not. `head` moves once, as `tail` in [`Ring::try_claim_push`].
    #[inline(always)]
    fn try_claim_pop(&self, me: Identity, want: u32, help: &mut Help) -> BatchAttempt {
        let h = self.header();
        while help.steps > 0 {
            help.steps -= 1;
            let pos = h.head.0.pos.load(Ordering::Relaxed);
            let slot = self.slot(pos);
            let st = slot.state.load(Ordering::Acquire);
            let d = dist(seq(st), pos.wrapping_add(1));
            // An honest `head` is at most a lap stale (0 <= d <= one_lap), or sits on the next stamp to
            // be produced (d = -1). Anything else is a garbage hint: re-derive it, once per attempt.
            let honest = (0..=self.one_lap as i32).contains(&d) || d == -1;
            if !honest && !help.healed {
                help.healed = true;
                self.heal();
                continue;
            }
            if ready_for(st, pos) {
                // {pos + 1, IDLE | TOMBSTONE} → {pos + 1, me}: the message (or tombstone) is ours.
                if slot
                    .state
                    .compare_exchange_weak(
                        st,
                        state(seq(st), me.tid),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_err()
                {
                    continue;
                }
                let mut tombs = u64::from(who(st) == TOMBSTONE);
                let (mut n, mut last) = (1u32, pos);
                while n < want {
                    let s = self.next(last);
                    let next_slot = self.slot(s);
                    let st = next_slot.state.load(Ordering::Relaxed);
                    if !ready_for(st, s)
                        || next_slot
                            .state
                            .compare_exchange(
                                st,
                                state(seq(st), me.tid),
                                Ordering::Acquire,
                                Ordering::Relaxed,
                            )
                            .is_err()
                    {
                        break;
                    }
                    tombs |= u64::from(who(st) == TOMBSTONE) << n;
                    n += 1;
                    last = s;
                }
                // A hint, like `tail` in `try_claim_push`.
                h.head.0.pos.store(self.next(last), Ordering::Relaxed);
                note_cpu(&h.head.0);
                return BatchAttempt::Claimed {
                    first: pos,
                    n,
                    tombs,
                };
            } else if d >= 0 {
                // {pos + 1, tid}: another consumer claimed it and has not moved `head`; or `head` is
                // stale. Help it on.
                let _ = h.head.0.pos.compare_exchange(
                    pos,
                    self.next(pos),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else if who(st) != IDLE && dist(seq(st), pos) == 0 {
                // {pos, tid}: a producer is writing it.
                return BatchAttempt::Blocked { pos, state: st };
            } else if self.is_closed() {
                return BatchAttempt::Closed;
            } else {
                return BatchAttempt::Blocked { pos, state: st };
            }
        }
        BatchAttempt::Busy
    }

    /// Claims 1..=`want` consecutive free slots (at most [`MAX_BATCH`]), waiting for the first until
    /// `deadline`: whatever is free at that moment, up to `want`, is claimed; the batch never waits for
    /// more. Waiting, helping, healing and dead-consumer recovery are [`Ring::push`]'s.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Timeout`] once `deadline` passes (at once, without spinning, for a
    /// deadline already past: the `try_` calls).
    pub(crate) fn claim_push(
        &self,
        want: usize,
        deadline: Option<Instant>,
    ) -> Result<PushBatch<'_>> {
        let want = want.clamp(1, MAX_BATCH) as u32;
        let me = proc::current();
        let mut backoff = Backoff::new().until(deadline);
        let mut watch = StuckWatch::new();
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let blocked = match self.try_claim_push(me, want, &mut self.help()) {
                BatchAttempt::Claimed { first, n, .. } => {
                    return Ok(PushBatch {
                        ring: self,
                        me: me.tid,
                        first,
                        filled: 0,
                        revoked: 0,
                        pos: first,
                        left: n,
                    })
                }
                BatchAttempt::Blocked { pos, state } => Some((pos, state)),
                BatchAttempt::Busy | BatchAttempt::Closed => None,
            };
            if self.survey_due() && self.heal() {
                continue;
            }
            if backoff.snooze_beside(|| self.peer_cpu(Side::Producer)) {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            self.sleep_for_space(blocked, slice, &mut watch);
        }
    }

    /// Claims 1..=`want` consecutive messages (at most [`MAX_BATCH`]; tombstones count, and are skipped
    /// by [`PopBatch::next`]), waiting for the first until `deadline`. Waiting, helping, healing and
    /// dead-producer recovery are [`Ring::pop`]'s.
    ///
    /// # Errors
    /// [`Error::Closed`] once the ring is closed and empty; [`Error::Timeout`] as in
    /// [`Ring::claim_push`].
    pub(crate) fn claim_pop(&self, want: usize, deadline: Option<Instant>) -> Result<PopBatch<'_>> {
        let want = want.clamp(1, MAX_BATCH) as u32;
        let me = proc::current();
        let mut backoff = Backoff::new().until(deadline);
        let mut watch = StuckWatch::new();
        loop {
            match self.try_claim_pop(me, want, &mut self.help()) {
                BatchAttempt::Claimed { first, n, tombs } => {
                    return Ok(PopBatch {
                        ring: self,
                        me: me.tid,
                        pos: first,
                        left: n,
                        tombs,
                    })
                }
                BatchAttempt::Closed => return Err(Error::Closed),
                BatchAttempt::Blocked { .. } | BatchAttempt::Busy => {}
            }
            if self.survey_due() && self.heal() {
                continue;
            }
            if backoff.snooze_beside(|| self.peer_cpu(Side::Consumer)) {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            self.sleep_for_items(slice, &mut watch);
        }
    }
}

#[cfg(test)]
impl Ring {
    /// Makes stamp `s` look claimed by `tid`: by a producer (before publish) or a consumer (after).
    pub(crate) fn force_claim_for_test(&self, s: u64, tid: u32, consumer: bool) {
        let h = self.header();
        let slot = self.slot(s);
        if consumer {
            slot.state
                .store(state((s as u32).wrapping_add(1), tid), Ordering::Release);
            h.head.0.pos.store(self.next(s), Ordering::Relaxed);
        } else {
            slot.state.store(state(s as u32, tid), Ordering::Release);
            h.tail.0.pos.store(self.next(s), Ordering::Relaxed);
        }
    }

    /// Overwrites the `tail` (or `head`) hint, as garbage from another process would.
    pub(crate) fn force_hint_for_test(&self, tail: bool, v: u64) {
        let h = self.header();
        if tail {
            h.tail.0.pos.store(v, Ordering::Relaxed);
        } else {
            h.head.0.pos.store(v, Ordering::Relaxed);
        }
    }

    /// The CPUs recorded in the `tail` and `head` lines.
    pub(crate) fn cursor_cpus_for_test(&self) -> (u32, u32) {
        let h = self.header();
        (
            h.tail.0.cpu.load(Ordering::Relaxed),
            h.head.0.cpu.load(Ordering::Relaxed),
        )
    }

    /// Overwrites the CPUs recorded in the `tail` and `head` lines, as another process could; with
    /// `forget`, this process's copies of them too.
    pub(crate) fn force_cursor_cpus_for_test(&self, tail: u32, head: u32, forget: bool) {
        let h = self.header();
        h.tail.0.cpu.store(tail, Ordering::Relaxed);
        h.head.0.cpu.store(head, Ordering::Relaxed);
        if forget {
            for seen in &self.cpu_seen {
                seen.store(0, Ordering::Relaxed);
            }
        }
    }

    /// What a waiting consumer (`consumer`) or producer is told about its peer's CPU.
    pub(crate) fn peer_cpu_for_test(&self, consumer: bool) -> u32 {
        self.peer_cpu(if consumer {
            Side::Consumer
        } else {
            Side::Producer
        })
    }

    pub(crate) fn force_len_for_test(&self, s: u64, len: u32) {
        self.slot(s).len.store(len, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Raw;
    use crate::queue::Queue;

    /// A peer that writes garbage revokes each claim of a `try_pop` while its `f` runs and moves `head`
    /// back to the start of the lap, so that each next claim walks over every slot taken so far (claim
    /// `k` costs `k + 1` steps). All the claims of one attempt share one help budget, so the steps add
    /// up to at most [`Ring::help_budget`] — about 63 claims at capacity 1024 — where a budget per claim
    /// let one attempt make 1024 claims and walk half a million slots (quadratic in the capacity).
    #[test]
    fn one_pop_attempt_spends_one_help_budget_whatever_a_peer_writes() {
        let q: Queue<u64, Raw> = Queue::new(1024).unwrap();
        let ring = q.ring();
        let lap = ring.one_lap;
        for i in 0..u64::from(ring.geo.capacity) {
            let s = lap + i;
            ring.slot(s)
                .state
                .store(state((s as u32).wrapping_add(1), IDLE), Ordering::SeqCst);
            ring.slot(s).len.store(8, Ordering::Relaxed);
        }
        ring.force_hint_for_test(false, lap);
        ring.force_hint_for_test(true, lap + u64::from(ring.geo.capacity));
        let mut claims = 0u64;
        let r = ring.try_pop(proc::current(), &mut |_: &[u8]| {
            // The claim of stamp `lap + claims` is revoked (its slot freed under us) and `head` sent back.
            let s = lap + claims;
            claims += 1;
            ring.slot(s)
                .state
                .store(state(s.wrapping_add(lap) as u32, IDLE), Ordering::SeqCst);
            ring.force_hint_for_test(false, lap);
        });
        assert!(matches!(r, Ok(Pop::Empty)), "{:?}", r.map(|_| ()));
        let steps = claims * (claims + 1) / 2;
        assert!(
            claims > 1,
            "the attempt claimed again after a revoked claim"
        );
        assert!(
            steps <= u64::from(ring.help_budget()),
            "{claims} claims walked {steps} slots, more than one help budget ({})",
            ring.help_budget()
        );
    }
}
