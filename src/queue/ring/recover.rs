//! Recovery: a claimer that died is found and its slots given back ("Deaths" in the module docs), and
//! `head`/`tail` hints that garbage moved are re-derived from the slots' stamps ("Garbage").

use std::sync::atomic::Ordering;

use super::{dist, seq, state, who, Ring, COUNTED, IDLE, MAX_BATCH, TOMBSTONE};
use crate::sys::proc::{self, Identity};

/// How often one process may survey a ring whose hints look right but that a full/empty answer makes
/// suspect (a survey reads every slot's state once): every 10 ms, plus 1 ms per 1000 slots so that
/// surveys of a big ring stay a small fraction of a blocked caller's time.
const SURVEY_INTERVAL_MS: u64 = 10;

/// What a slot's state says about the stamp it belongs to (see the state table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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

impl Ring {
    /// A consumer died holding the slot the producer of stamp `pos` needs: free it for `pos`, and the
    /// slots after it that the same dead consumer claimed in the same batch (`get_many`), each with the
    /// same checks as in [`Ring::abandon_if_writer_died`]. The messages in them were handed to the dead
    /// consumer and are lost: at most once, never twice. Returns whether it freed any.
    pub(super) fn free_if_reader_died(&self, pos: u64, st: u64) -> bool {
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
        freed_any
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

    /// The producer claimed stamp `pos` and has not published it; if it died, tombstone the slot, and the
    /// slots after it that the same dead producer claimed in the same batch (`put_many` claims a run of
    /// consecutive stamps; without this, each of them would cost the waiting consumer one more
    /// [`StuckWatch`](crate::sync::wait::StuckWatch) interval, up to
    /// [`MAX_CHECK`](crate::sync::wait::MAX_CHECK) each).
    ///
    /// Liveness is asked again for every slot of the run: a dead claimer's tid may be recycled by a
    /// live thread that claims a later stamp; that thread is judged alive and the walk stops there.
    /// Each step is one CAS from the exact state read, so no claim made since is ever tombstoned (a
    /// stamp's state never returns to an earlier value). Returns whether it tombstoned any.
    pub(super) fn abandon_if_writer_died(&self, pos: u64, st: u64) -> bool {
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
            // A JoinableQueue count may have died with the claim (a tombstone carries none): a
            // `join` waiting for it looks again.
            self.header().done.0.notify();
        }
        abandoned
    }

    /// Recovers every claim of a marked (JoinableQueue-counted) message whose claimer died: a dead
    /// producer's is tombstoned ([`Ring::abandon_if_writer_died`]), a dead consumer's slot freed
    /// ([`Ring::free_if_reader_died`]); either way the mark dies with the claim. Returns whether it
    /// recovered any. O(capacity), plus a `/proc` look per claimed marked slot: `join` calls it once
    /// per [`MAX_CHECK`](crate::sync::wait::MAX_CHECK) slice that ended with work still counted.
    ///
    /// Why (found by review): only a peer blocked behind a claim recovered it (a consumer behind a
    /// writer's, a producer behind a reader's). With no consumer left (or no producer), a `join` summed
    /// the dead claim's mark for good: a producer killed between its claim and its publish, or a
    /// consumer killed between its claim and its take of the count, hung `join` with nobody to blame.
    pub(super) fn recover_counted_claims(&self) -> bool {
        let mut recovered = false;
        for i in 0..self.geo.capacity {
            let slot = self.slot(u64::from(i));
            let st = slot.state.load(Ordering::SeqCst);
            let Some((stamp, phase)) = self.phase(i, st) else {
                continue;
            };
            if matches!(phase, Phase::Free | Phase::Ready)
                || slot.len.load(Ordering::Relaxed) & COUNTED == 0
            {
                continue;
            }
            let pos = u64::from(stamp);
            recovered |= match phase {
                Phase::Writing => self.abandon_if_writer_died(pos, st),
                // The reader's claim is freed for the producer of the next lap, as that producer would.
                _ => self.free_if_reader_died(pos.wrapping_add(self.one_lap), st),
            };
        }
        recovered
    }

    // ---- healing the hints ----

    /// Whether this process may survey the ring now (see [`SURVEY_INTERVAL_MS`]).
    pub(super) fn survey_due(&self) -> bool {
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
    pub(super) fn phase(&self, i: u32, st: u64) -> Option<(u32, Phase)> {
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
    pub(super) fn heal(&self) -> bool {
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
}
