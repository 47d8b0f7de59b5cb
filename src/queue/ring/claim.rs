//! Claims of runs of slots: the one claim path of single and batch operations
//! ([`Ring::try_claim_push`], [`Ring::try_claim_pop`]), and the batches `Queue::put_many`/`get_many` hold
//! ("Batches" in the module docs).

use super::*;

/// The most slots one batch claims: the tombstone bitmask of a [`PopBatch`] is one `u64`, and the walk
/// that recovers a dead batch claimer's run ([`Ring::abandon_if_writer_died`]) is bounded by it.
pub(crate) const MAX_BATCH: usize = 64;

/// What one batch claim attempt found.
pub(super) enum BatchAttempt {
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

    /// Reads the next claimed slot, passing its bytes to `f` while the slot is held; the batch frees
    /// it when dropped. `None` once the batch is used up. The answer is small on purpose: this runs
    /// once per message, and an [`Error`] inside it made every answer a copy of its size.
    #[inline]
    pub(crate) fn next<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<Taken<R>> {
        if self.left == 0 {
            return None;
        }
        let ring = self.ring;
        let pos = self.pos;
        let slot = ring.slot(pos);
        let claimed = state((pos as u32).wrapping_add(1), self.me);
        let tomb = self.tombs & 1 != 0;
        let word = slot.len.load(Ordering::Relaxed);
        let len = len_of(word);
        let result = if tomb {
            Taken::Nothing
        } else if len > ring.geo.slot_size as usize {
            Taken::BadLength(len)
        } else {
            // SAFETY: we own the slot (claimed by `try_claim_pop`); len <= slot_size keeps the range
            // inside this slot's stride, inside the region. Producers do not write a claimed slot.
            let bytes = unsafe { std::slice::from_raw_parts(Ring::data(slot), len) };
            Taken::Message(f(bytes))
        };
        // Moved on only now: if `f` panicked, the drop frees this slot too (it starts at `pos`, with
        // this slot's tombstone bit), and moves its count.
        self.pos = ring.next(pos);
        self.left -= 1;
        self.tombs >>= 1;
        // A counted message's count moves to `unfinished` while we still hold its slot (see
        // "JoinableQueue accounting" in `Ring`).
        let counted = !tomb && word & COUNTED != 0;
        if counted {
            ring.take_count();
        }
        // A revoked claim (garbage only) may have let a producer overwrite what we read: discard it, and
        // leave the slot to whoever holds it now.
        if slot.state.load(Ordering::Relaxed) != claimed {
            if counted {
                ring.give_back_count();
            }
            return Some(Taken::Nothing);
        }
        ring.publish_batch_slot(slot, state(pos.wrapping_add(ring.one_lap) as u32, IDLE));
        Some(result)
    }
}

/// What [`PopBatch::next`] found in a claimed slot.
pub(crate) enum Taken<R> {
    /// A message, and what the caller's function made of its bytes.
    Message(R),
    /// A tombstone, or a claim revoked while we read (garbage only): nothing to deliver.
    Nothing,
    /// A length larger than the slot (garbage): the slot is consumed, its bytes never read.
    BadLength(usize),
}

impl Ring {
    /// The error for a message length `len` found larger than the slot ([`Taken::BadLength`]).
    pub(crate) fn bad_length(&self, len: usize) -> Error {
        Error::Corrupted(format!(
            "message length {len} exceeds the slot size {}",
            self.geo.slot_size
        ))
    }
}

impl Drop for PopBatch<'_> {
    fn drop(&mut self) {
        let ring = self.ring;
        while self.left > 0 {
            let pos = self.pos;
            let slot = ring.slot(pos);
            if slot.state.load(Ordering::Relaxed) == state((pos as u32).wrapping_add(1), self.me) {
                // A counted message lost with the batch (a codec's panic) keeps its count, as one
                // taken by `next` would: the caller took it and never marked it done.
                let tomb = self.tombs & 1 != 0;
                if !tomb && slot.len.load(Ordering::Relaxed) & COUNTED != 0 {
                    ring.take_count();
                }
                ring.publish_batch_slot(slot, state(pos.wrapping_add(ring.one_lap) as u32, IDLE));
            }
            self.tombs >>= 1;
            self.pos = ring.next(pos);
            self.left -= 1;
        }
        ring.end_batch(&ring.header().space.0);
    }
}

/// Prefetches the slots of a run [`PREFETCH_AHEAD`] ahead of its claims (see `sys::cpu` for why),
/// never past the `want` slots the run may claim.
struct Prefetcher<'r> {
    ring: &'r Ring,
    /// The last stamp prefetched, and how many more the run may claim beyond it.
    at: u64,
    left: u32,
    fill: bool,
}

impl<'r> Prefetcher<'r> {
    /// Starts after the run's first stamp `first` (claimed already), prefetching the next
    /// [`PREFETCH_AHEAD`] of the `want - 1` slots the run may still claim.
    #[inline(always)]
    fn new(ring: &'r Ring, first: u64, want: u32, fill: bool) -> Self {
        let mut p = Prefetcher {
            ring,
            at: first,
            left: want.saturating_sub(1),
            fill,
        };
        for _ in 0..PREFETCH_AHEAD {
            p.step();
        }
        p
    }

    /// Prefetches the next slot of the run, if the run may reach it.
    #[inline(always)]
    fn step(&mut self) {
        if self.left > 0 {
            self.left -= 1;
            self.at = self.ring.next(self.at);
            self.ring.prefetch_slot(self.at, self.fill);
        }
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
    pub(super) fn try_claim_push(&self, me: Identity, want: u32, help: &mut Help) -> BatchAttempt {
        let h = self.header();
        #[cfg(test)]
        tests::hook(tests::Point::BeforePushClaim);
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
                self.prefetch_message(pos, true);
                // {pos, IDLE} → {pos, me}: the slot is ours and says so. SeqCst (on x86 the same
                // `lock cmpxchg` as Acquire): ordered before the caller's look at `closed` after it
                // ([`Ring::claimed_after_close`]).
                if slot
                    .state
                    .compare_exchange_weak(
                        st,
                        state(pos as u32, me.tid),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_err()
                {
                    continue;
                }
                let (mut n, mut last) = (1u32, pos);
                let mut ahead = Prefetcher::new(self, pos, want, true);
                while n < want {
                    let s = self.next(last);
                    ahead.step();
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
    ///
    /// With `end_len = Some(l)`, the run also ends *after* the first message of exactly `l` bytes (a
    /// queue's spill reference): its caller takes that message's block, a long copy, once the run is
    /// released, and the messages behind it must not stay claimed (or taken) meanwhile ("Batches" in
    /// the module docs). The length is read after the slot's Acquire claim, so it is the producer's.
    #[inline(always)]
    pub(super) fn try_claim_pop(
        &self,
        me: Identity,
        want: u32,
        end_len: Option<u32>,
        help: &mut Help,
    ) -> BatchAttempt {
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
                self.prefetch_message(pos, false);
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
                // Whether the message in `slot`, claimed by us in state `st`, ends the run. A tombstone
                // carries no message, whatever length its dead producer left.
                let ends_run = |slot: &SlotHead, st: u64| {
                    end_len.is_some_and(|l| {
                        who(st) != TOMBSTONE
                            && len_of(slot.len.load(Ordering::Relaxed)) == l as usize
                    })
                };
                let (mut n, mut last) = (1u32, pos);
                // `want > 1` first: the single `pop` (want = 1, inlined) reads no length here.
                let mut more = want > 1 && !ends_run(slot, st);
                let mut ahead = Prefetcher::new(self, pos, if more { want } else { 1 }, false);
                while more && n < want {
                    let s = self.next(last);
                    ahead.step();
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
                    more = !ends_run(next_slot, st);
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
            } else {
                #[cfg(test)]
                tests::hook(tests::Point::PopFoundEmpty);
                if self.is_closed() {
                    // Empty when `st` was read, closed now: but a message may have come in between,
                    // put by a producer that checked the flag before the close. Closed and empty
                    // only if the slot is unchanged, read again after the flag (found by review:
                    // `Closed`, the end of the stream, with a message put before the close still in
                    // the ring). SeqCst: with the producer's SeqCst claim and its own look at the flag
                    // after it ([`Ring::claimed_after_close`]), either it sees the close and gives its
                    // slot back, or this read sees its claim.
                    if slot.state.load(Ordering::SeqCst) != st {
                        continue;
                    }
                    return BatchAttempt::Closed;
                }
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
        self.wait_for(Side::Producer, deadline, &mut || {}, |me| {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            Ok(match self.try_claim_push(me, want, &mut self.help()) {
                BatchAttempt::Claimed { first, n, .. } => {
                    let batch = PushBatch {
                        ring: self,
                        me: me.tid,
                        first,
                        filled: 0,
                        revoked: 0,
                        pos: first,
                        left: n,
                    };
                    if self.claimed_after_close() {
                        // Dropped unfilled: every claimed slot is given back as a tombstone.
                        drop(batch);
                        return Err(Error::Closed);
                    }
                    Turn::Done(batch)
                }
                BatchAttempt::Blocked { pos, state } => Turn::Wait(Some((pos, state))),
                BatchAttempt::Busy | BatchAttempt::Closed => Turn::Wait(None),
            })
        })
    }

    /// Claims 1..=`want` consecutive messages (at most [`MAX_BATCH`]; tombstones count, and are skipped
    /// by [`PopBatch::next`]), waiting for the first until `deadline`. The run ends after the first
    /// message of `end_len` bytes, if any (see [`Ring::try_claim_pop`]). Waiting, helping, healing and
    /// dead-producer recovery are [`Ring::pop`]'s.
    ///
    /// # Errors
    /// [`Error::Closed`] once the ring is closed and empty; [`Error::Timeout`] as in
    /// [`Ring::claim_push`].
    pub(crate) fn claim_pop(
        &self,
        want: usize,
        end_len: Option<u32>,
        deadline: Option<Instant>,
    ) -> Result<PopBatch<'_>> {
        let want = want.clamp(1, MAX_BATCH) as u32;
        self.wait_for(Side::Consumer, deadline, &mut || {}, |me| {
            match self.try_claim_pop(me, want, end_len, &mut self.help()) {
                BatchAttempt::Claimed { first, n, tombs } => Ok(Turn::Done(PopBatch {
                    ring: self,
                    me: me.tid,
                    pos: first,
                    left: n,
                    tombs,
                })),
                BatchAttempt::Closed => Err(Error::Closed),
                BatchAttempt::Blocked { .. } | BatchAttempt::Busy => Ok(Turn::Wait(None)),
            }
        })
    }
}
