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

use crate::sync::wait::{Backoff, StuckWatch, WaitWord, MAX_CHECK};

use crate::error::{Error, Result};
use crate::region::{Region, ShmSafe};
use crate::sys::proc::{self, Identity};

/// Folded into a queue's layout hash (in place of a size, which varies per queue): bump it whenever the
/// meaning of a field of [`RingHeader`] or [`SlotHead`] changes, so that builds that disagree refuse to
/// share a ring. 2: `Config::ns` (was padding).
pub(crate) const LAYOUT_REVISION: usize = 2;

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

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RingHeader {
    config: Line<Config>,
    tail: Line<AtomicU64>,
    head: Line<AtomicU64>,
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
}

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

/// What one push attempt found.
enum Attempt {
    Done,
    /// Full: the slot for stamp `pos` is still in `state`.
    Blocked {
        pos: u64,
        state: u64,
    },
    /// Spent its help budget without an answer (only garbage indices do that); look at the clock.
    Busy,
}

/// The time to sleep next: `interval`, cut short by the deadline; `Err(Timeout)` once it has passed.
fn slice_until(deadline: Option<Instant>, interval: Duration) -> Result<Duration> {
    match deadline {
        None => Ok(interval),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left.min(interval)),
            _ => Err(Error::Timeout),
        },
    }
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
            h.head.0.load(Ordering::Relaxed),
            h.tail.0.load(Ordering::Relaxed),
        );
        let lap_of = |s: u64| {
            (s / self.one_lap)
                .wrapping_mul(u64::from(self.geo.capacity))
                .wrapping_add(s & (self.one_lap - 1))
        };
        // Either index may lag or briefly run back (they are hints): clamp to 0..=capacity.
        (lap_of(tail).saturating_sub(lap_of(head)) as usize).min(self.geo.capacity as usize)
    }

    /// One attempt to append `bytes`.
    fn try_push(&self, bytes: &[u8], me: Identity) -> Attempt {
        let h = self.header();
        let mut healed = false;
        for _ in 0..self.help_budget() {
            let pos = h.tail.0.load(Ordering::Relaxed);
            let slot = self.slot(pos);
            let st = slot.state.load(Ordering::Acquire);
            let d = dist(seq(st), pos);
            // An honest `tail` is at most a lap stale, and a slot in its way holds the previous lap
            // (d = 1 - one_lap, or -one_lap while its producer still writes). Anything else is a
            // garbage hint: re-derive it from the stamps, once per attempt.
            let lap = self.one_lap as i32;
            let honest = (0..=lap).contains(&d) || d == 1 - lap || d == -lap;
            if !honest && !healed {
                healed = true;
                self.heal();
                continue;
            }
            if d == 0 && who(st) == IDLE {
                // {pos, IDLE} → {pos, me}: the slot is ours and says so.
                let claimed = state(pos as u32, me.tid);
                if slot
                    .state
                    .compare_exchange_weak(st, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // `tail` is only a hint of where to look: the slot CAS above is the claim. A plain store
                // (not a CAS, one locked instruction less per message) may move it back behind a helper
                // that already moved it further; whoever then reads the stale value finds slots that are
                // past it and helps it forward (`d > 0` below). It can never make a claim wrong.
                h.tail.0.store(self.next(pos), Ordering::Relaxed);
                slot.len.store(bytes.len() as u32, Ordering::Relaxed);
                // SAFETY: we own the slot (claimed above); bytes.len() <= slot_size was checked by
                // `push`, so the copy stays inside this slot's stride, inside the region.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), Self::data(slot), bytes.len())
                };
                // {pos, me} → {pos + 1, IDLE}: published. Release: the bytes above happen-before the
                // consumer's Acquire CAS. A CAS, not a store: if a consumer took us for dead and
                // tombstoned the slot, our claim is void and the message must go out again.
                let published = state((pos as u32).wrapping_add(1), IDLE);
                let ok = slot.state.compare_exchange(
                    claimed,
                    published,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
                h.items.0.notify();
                if ok.is_ok() {
                    return Attempt::Done;
                }
            } else if d >= 0 {
                // {pos, tid}: claimed by a producer that has not moved `tail` yet (maybe dead); or the
                // slot is already past `pos`: `tail` is stale. Help it on and retry (a garbage `tail`
                // far behind is healed above instead of walked).
                let _ = h.tail.0.compare_exchange(
                    pos,
                    self.next(pos),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                // Still holding the previous lap's message (or being read): full.
                return Attempt::Blocked { pos, state: st };
            }
        }
        Attempt::Busy
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
        let mut backoff = Backoff::new();
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
            if backoff.snooze() {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            let Some((pos, st)) = blocked else {
                // Out of help budget (garbage only): nap rather than spin until the deadline.
                self.header().space.0.sleep(slice, || false);
                continue;
            };
            let still_full =
                || self.slot(pos).state.load(Ordering::SeqCst) == st && !self.is_closed();
            self.header().space.0.sleep(slice, || !still_full());
            if still_full() && watch.due(pos, st) {
                self.free_if_reader_died(pos, st);
            }
        }
    }

    /// A consumer died holding the slot the producer of stamp `pos` needs: free it for `pos`.
    fn free_if_reader_died(&self, pos: u64, st: u64) {
        let reader = who(st);
        let prev_lap = pos.wrapping_sub(self.one_lap);
        let is_reader_claim = dist(seq(st), prev_lap) == 1 && reader != IDLE && reader != TOMBSTONE;
        if is_reader_claim && !self.claimer_alive(reader) {
            let freed = state(pos as u32, IDLE);
            if self
                .slot(pos)
                .state
                .compare_exchange(st, freed, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                self.header().space.0.notify();
            }
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
        let h = self.header();
        let mut healed = false;
        for _ in 0..self.help_budget() {
            let pos = h.head.0.load(Ordering::Relaxed);
            let slot = self.slot(pos);
            let st = slot.state.load(Ordering::Acquire);
            let d = dist(seq(st), pos.wrapping_add(1));
            // An honest `head` is at most a lap stale (0 <= d <= one_lap), or sits on the next stamp to
            // be produced (d = -1). Anything else is a garbage hint: re-derive it, once per attempt.
            let honest = (0..=self.one_lap as i32).contains(&d) || d == -1;
            if !honest && !healed {
                healed = true;
                self.heal();
                continue;
            }
            if d == 0 && (who(st) == IDLE || who(st) == TOMBSTONE) {
                // {pos + 1, IDLE | TOMBSTONE} → {pos + 1, me}: the message (or tombstone) is ours.
                let claimed = state(seq(st), me.tid);
                if slot
                    .state
                    .compare_exchange_weak(st, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // A hint, like `tail` in `try_push`.
                h.head.0.store(self.next(pos), Ordering::Relaxed);
                let len = slot.len.load(Ordering::Relaxed) as usize;
                let result = if who(st) == TOMBSTONE {
                    None
                } else if len > self.geo.slot_size as usize {
                    Some(Err(Error::Corrupted(format!(
                        "message length {len} exceeds the slot size {}",
                        self.geo.slot_size
                    ))))
                } else {
                    // SAFETY: we own the slot; len <= slot_size keeps the range inside this slot's
                    // stride, inside the region. Producers do not write a claimed slot.
                    let bytes = unsafe { std::slice::from_raw_parts(Self::data(slot), len) };
                    Some(Ok(f(bytes)))
                };
                // {pos + 1, me} → {pos + one_lap, IDLE}: free for the next lap. Release: our reads of
                // the bytes happen-before the next producer's Acquire CAS and its writes. If a producer
                // took us for dead and freed the slot, it may have overwritten what we read: discard it.
                let freed = state(pos.wrapping_add(self.one_lap) as u32, IDLE);
                let released = slot.state.compare_exchange(
                    claimed,
                    freed,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
                h.space.0.notify();
                match (released, result) {
                    (Err(_), _) | (Ok(_), None) => continue, // revoked, or a tombstone: next message
                    (Ok(_), Some(Ok(r))) => return Ok(Pop::Got(r)),
                    (Ok(_), Some(Err(e))) => return Err(e),
                }
            } else if d >= 0 {
                // {pos + 1, tid}: another consumer claimed it and has not moved `head`; or `head` is
                // stale. Help it on.
                let _ = h.head.0.compare_exchange(
                    pos,
                    self.next(pos),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else if who(st) != IDLE && dist(seq(st), pos) == 0 {
                // {pos, tid}: a producer is writing it. Not ready; the caller may check it is alive.
                return Ok(Pop::Empty);
            } else {
                return Ok(if self.is_closed() {
                    Pop::Closed
                } else {
                    Pop::Empty
                });
            }
        }
        Ok(Pop::Empty)
    }

    /// Takes the next message, waiting until `deadline`; `f` sees its bytes in place (see
    /// [`Ring::try_pop`] for why it is `FnMut`).
    pub(crate) fn pop<R>(
        &self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&[u8]) -> R,
    ) -> Result<R> {
        let me = proc::current();
        let mut backoff = Backoff::new();
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
            if backoff.snooze() {
                continue;
            }
            let slice = slice_until(deadline, watch.interval)?;
            let h = self.header();
            let pos = h.head.0.load(Ordering::Relaxed);
            let st = self.slot(pos).state.load(Ordering::Acquire);
            let unchanged = || {
                h.head.0.load(Ordering::Relaxed) == pos
                    && self.slot(pos).state.load(Ordering::SeqCst) == st
                    && !self.is_closed()
            };
            h.items.0.sleep(slice, || !unchanged());
            if unchanged() && watch.due(pos, st) {
                self.abandon_if_writer_died(pos, st);
            }
        }
    }

    /// The producer claimed stamp `pos` and has not published it; if it died, tombstone the slot.
    fn abandon_if_writer_died(&self, pos: u64, st: u64) {
        let writer = who(st);
        if dist(seq(st), pos) == 0
            && writer != IDLE
            && writer != TOMBSTONE
            && !self.claimer_alive(writer)
        {
            let tomb = state((pos as u32).wrapping_add(1), TOMBSTONE);
            if self
                .slot(pos)
                .state
                .compare_exchange(st, tomb, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                self.header().items.0.notify();
            }
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
            h.tail.0.load(Ordering::Acquire),
            h.head.0.load(Ordering::Acquire),
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
        let pos = self.header().head.0.load(Ordering::Relaxed);
        let st = self.slot(pos).state.load(Ordering::SeqCst);
        dist(seq(st), pos.wrapping_add(1)) == 0 && (who(st) == IDLE || who(st) == TOMBSTONE)
    }

    /// Waits until a message is likely available (without taking it), the ring is closed, or
    /// `deadline` passes. Returns whether a message is there.
    pub(crate) fn wait_nonempty(&self, deadline: Option<Instant>) -> bool {
        let mut backoff = Backoff::new();
        loop {
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
            self.header()
                .items
                .0
                .sleep(slice, || self.head_published() || self.is_closed());
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
            h.head.0.store(self.next(s), Ordering::Relaxed);
        } else {
            slot.state.store(state(s as u32, tid), Ordering::Release);
            h.tail.0.store(self.next(s), Ordering::Relaxed);
        }
    }

    /// Overwrites the `tail` (or `head`) hint, as garbage from another process would.
    pub(crate) fn force_hint_for_test(&self, tail: bool, v: u64) {
        let h = self.header();
        if tail {
            h.tail.0.store(v, Ordering::Relaxed);
        } else {
            h.head.0.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn force_len_for_test(&self, s: u64, len: u32) {
        self.slot(s).len.store(len, Ordering::Relaxed);
    }
}
