//! What a serving rank does with a call (the messages themselves are in `wire`).
//!
//! A call is a [`Command`] sent by rank 0 to every other rank: a function reference of [`ClusterKind`]
//! — the user's function paired with the *serving adapter* instantiated for its types — and the call's
//! arguments.
//! A serving rank resolves the reference with the job's key and calls the adapter, which receives the
//! rank's share, runs it on the rank's local pool and replies. Rank 0 runs its own share with the same
//! `submit_*` helpers, so a share is computed the same way wherever it runs.

use std::ops::Range;

use bytemuck::Pod;
use mpi::topology::SimpleCommunicator;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::transport::{self, Traffic, MAX_MESSAGE, PIECE, TAG_ITEM, TAG_REPLY, TAG_SHARE};
pub(super) use super::wire::{
    chunk_ranges, decode, encode, split, ArrayArgs, ArrayShare, Command, RemoteFailure, StreamItem,
    TransformReply, TransformShare,
};
use crate::error::{Error, Result};
use crate::heap::{BlockHandle, SharedArray};
use crate::pool::item_wire::ArgsToWire;
use crate::pool::wire::{Payload, SHARED_PAYLOAD_BYTES};
use crate::pool::worker::{self, ArrayPart, TaskKind};
use crate::pool::{AsyncResult, Pool};
use crate::process::fnref::{AdapterKind, FnAddr, LocalFn};

/// The adapter kind of cluster calls: the serving side of one call, instantiated for its types.
pub(super) struct ClusterKind;

impl AdapterKind for ClusterKind {
    type Adapter = fn(FnAddr, &mut Serving<'_>);
    const DOMAIN: u64 = 0x6d70_636c_7573_7401; // "mpclust" 1
    const NAME: &'static str = "cluster call";
}

/// A serving rank's context while its adapter runs.
pub(super) struct Serving<'a> {
    pub world: &'a SimpleCommunicator,
    pub pool: &'a Pool,
    pub args: &'a [u8],
    pub traffic: &'a mut Traffic,
    pub store: &'a mut RankStore,
}

/// What a rank keeps across calls.
///
/// - Shared memory for the elements it is sent (`inbox`) and the output it sends back (`outbox`): fresh
///   shared memory costs a page fault per 4 KiB page on first touch (150 ms per 256 MiB here), so each
///   is made once, replaced only by a larger one when a share needs more, and reused. Every call's tasks
///   have finished before the call replies, so no task ever sees the next call's bytes.
/// - Its parts of distributed arrays, by id: the handle its workers are lent, and a weak reference to
///   the part, so that a call on a part this rank's program dropped fails rather than reads freed memory.
#[derive(Default)]
pub(super) struct RankStore {
    inbox: Option<SharedArray<u8>>,
    outbox: Option<SharedArray<u8>>,
    pub parts: std::collections::HashMap<u64, KeptPart>,
}

impl RankStore {
    /// Records this rank's part `id`, and forgets the parts this rank's program dropped: their ids can
    /// never be called again (a call on one fails as "dropped" whether its record is there or not), and
    /// kept, one record per `distribute` stayed for the life of the pool (found by review: a long job
    /// distributing over and over grew the map without end).
    pub fn keep_part(&mut self, id: u64, part: KeptPart) {
        self.parts.retain(|_, k| k.alive.strong_count() > 0);
        self.parts.insert(id, part);
    }
}

/// This rank's part of a distributed array.
pub(super) struct KeptPart {
    pub handle: BlockHandle,
    pub bytes: u64,
    pub alive: std::rc::Weak<dyn std::any::Any>,
}

/// `slot`'s buffer, made at least `bytes` long.
fn buffer(slot: &mut Option<SharedArray<u8>>, bytes: usize) -> Result<&mut SharedArray<u8>> {
    if slot.as_ref().is_none_or(|b| b.len() < bytes) {
        *slot = None; // the old one goes first: never both at once
        *slot = Some(SharedArray::zeroed(bytes)?);
    }
    Ok(slot.as_mut().expect("made above"))
}

/// A task error of a job whose task 0 is chunk `first`, with the chunk's index in the rank's share.
fn shifted(e: Error, first: usize) -> Error {
    match e {
        Error::TaskPanicked {
            task,
            message,
            location,
        } => Error::TaskPanicked {
            task: task + first,
            message,
            location,
        },
        Error::WorkerDied {
            task,
            signal,
            exit_code,
        } => Error::WorkerDied {
            task: task + first,
            signal,
            exit_code,
        },
        other => other,
    }
}

/// A handle to elements `range` of the array `h` names (elements of `T`): a block of its own, so that
/// a worker given it maps and references those elements only, indexed from 0.
pub(super) fn sub_handle<T: Pod>(h: &BlockHandle, range: Range<usize>) -> BlockHandle {
    let size = std::mem::size_of::<T>() as u64;
    BlockHandle {
        region: h.region.clone(),
        offset: h.offset + range.start as u64 * size,
        len: range.len() as u64 * size,
    }
}

/// Rank 0's handle to elements `range` of `array`, to lend to its own and its node's workers.
pub(super) fn lend<T: Pod>(array: &SharedArray<T>, range: Range<usize>) -> BlockHandle {
    sub_handle::<T>(&array.block_handle(), range)
}

// ---- the local half of each call, the same on every rank ----

/// Submits `items` to `pool` in chunks (`chunksize`, default about four per worker) as `task`.
pub(super) fn submit_items<A: Serialize, R: DeserializeOwned>(
    pool: &Pool,
    task: LocalFn<TaskKind>,
    items: &[A],
    chunksize: Option<usize>,
) -> Result<AsyncResult<Vec<R>>> {
    let size = chunksize
        .unwrap_or_else(|| items.len().div_ceil(pool.workers() * 4))
        .max(1);
    // In the pool's own form of task arguments (a `Vec<f64>` item as its bytes), which its workers
    // decode: not `encode`'s plain postcard. And placed as the pool places them (`Payload::encode`):
    // inline in the task ring while small, in a shared block from 1 MiB on. Always inline, a chunk
    // above the ring's reassembly cap (256 MiB) failed with `MessageTooLarge`, where `Pool::map` of
    // the same items succeeds.
    let payloads = items
        .chunks(size)
        .map(|chunk| Payload::encode(&ArgsToWire::<A, A>::new(chunk)))
        .collect::<Result<Vec<_>>>()?;
    let lens = items.chunks(size).map(<[A]>::len).collect();
    let job = pool.submit(task, payloads)?;
    Ok(AsyncResult::all_items(job, lens))
}

/// A task's payload put together from parts encoded apart (a chunk's part, then the call's encoded
/// parameters), placed as `Payload::encode` places a value: inline in the task ring while small, in a
/// shared block from 1 MiB on. Always inline, parameters above the ring's reassembly cap (256 MiB)
/// failed the call with `MessageTooLarge`, where the local pool's `map_chunks_with` succeeds.
fn payload(bytes: Vec<u8>) -> Result<Payload> {
    if bytes.len() < SHARED_PAYLOAD_BYTES {
        return Ok(Payload::Inline(bytes));
    }
    SharedArray::from_slice(&bytes).map(Payload::Shared)
}

/// Submits one `map_chunks` task for each of `chunks` (chunk indices) of the `elems` elements `block`
/// names; the job's task `i` is chunk `chunks.start + i`.
pub(super) fn submit_chunks<R: DeserializeOwned>(
    pool: &Pool,
    task: LocalFn<TaskKind>,
    block: &BlockHandle,
    elems: usize,
    chunks: Range<usize>,
    args: &ArrayArgs,
) -> Result<AsyncResult<Vec<R>>> {
    let payloads = chunk_ranges(elems, args.chunk_len as usize)
        .skip(chunks.start)
        .take(chunks.len())
        .map(|r| {
            let part = ArrayPart {
                block: block.clone(),
                start: r.start as u64,
                end: r.end as u64,
            };
            // A tuple encodes as its fields one after the other: (part, params) is these bytes.
            let mut p = encode(&part)?;
            p.extend_from_slice(&args.params);
            payload(p)
        })
        .collect::<Result<Vec<_>>>()?;
    let lens = vec![1; payloads.len()];
    let job = pool.submit(task, payloads)?;
    Ok(AsyncResult::all_items(job, lens))
}

/// Submits one `transform` task per chunk of the output `out` names, each lent the whole input `inp`.
pub(super) fn submit_transform(
    pool: &Pool,
    task: LocalFn<TaskKind>,
    (inp, in_elems): (&BlockHandle, usize),
    (out, out_elems): (&BlockHandle, usize),
    args: &ArrayArgs,
) -> Result<AsyncResult<Vec<()>>> {
    let whole = ArrayPart {
        block: inp.clone(),
        start: 0,
        end: in_elems as u64,
    };
    let payloads = chunk_ranges(out_elems, args.chunk_len as usize)
        .map(|r| {
            let part = ArrayPart {
                block: out.clone(),
                start: r.start as u64,
                end: r.end as u64,
            };
            let mut p = encode(&(&whole, &part))?;
            p.extend_from_slice(&args.params);
            payload(p)
        })
        .collect::<Result<Vec<_>>>()?;
    let lens = vec![1; payloads.len()];
    let job = pool.submit(task, payloads)?;
    Ok(AsyncResult::all_items(job, lens))
}

// ---- serving adapters: one per call kind, instantiated for the call's types on rank 0 ----

impl Serving<'_> {
    fn reply<X: Serialize>(&mut self, x: &X) {
        let bytes = encode(x).and_then(|b| {
            if b.len() > MAX_MESSAGE {
                Err(Error::MessageTooLarge {
                    size: b.len(),
                    max: MAX_MESSAGE,
                })
            } else {
                Ok(b)
            }
        });
        let bytes = match bytes {
            Ok(b) => b,
            // The reply's type is the call's; a failure of the same type always encodes.
            Err(e) => encode(&Err::<(), _>(RemoteFailure::Other(e.to_string())))
                .expect("a failure encodes"),
        };
        self.traffic.send_message(self.world, 0, TAG_REPLY, &bytes);
    }

    fn share(&mut self) -> Vec<u8> {
        self.traffic
            .receive_message(self.world, 0, TAG_SHARE, MAX_MESSAGE)
    }
}

/// The items of this rank's share, or why they could not be had.
fn items_share<A: DeserializeOwned>(s: &mut Serving<'_>) -> Result<(Vec<A>, Option<usize>)> {
    let bytes = s.share();
    let chunksize: Option<u64> = decode(s.args)?;
    Ok((decode(&bytes)?, chunksize.map(|c| c as usize)))
}

/// `map` and `starmap`: receive the items, run them, reply with their results (or the lowest failure).
fn serve_items<A: DeserializeOwned + Serialize, R: DeserializeOwned + Serialize>(
    s: &mut Serving<'_>,
    task: LocalFn<TaskKind>,
) {
    let outcome = items_share::<A>(s)
        .and_then(|(items, chunksize)| submit_items::<A, R>(s.pool, task, &items, chunksize))
        .and_then(|pending| pending.get())
        .map_err(RemoteFailure::from);
    s.reply(&outcome);
}

/// The `map` call of `f`.
pub(super) fn map_op<A, R>(f: fn(A) -> R) -> LocalFn<ClusterKind>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_map::<A, R>` calls its address as a `fn(A) -> R`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_map::<A, R>) }
}

fn serve_map<A, R>(func: FnAddr, s: &mut Serving<'_>)
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A) -> R` for these types (`map_op`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    serve_items::<A, R>(s, worker::map_fn(f));
}

/// The `starmap` call of `f`.
pub(super) fn star_op<A, B, R>(f: fn(A, B) -> R) -> LocalFn<ClusterKind>
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_star::<A, B, R>` calls its address as a `fn(A, B) -> R`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_star::<A, B, R>) }
}

fn serve_star<A, B, R>(func: FnAddr, s: &mut Serving<'_>)
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A, B) -> R` for these types (`star_op`).
    let f = unsafe { func.get::<fn(A, B) -> R>() };
    serve_items::<(A, B), R>(s, worker::star_fn(f));
}

/// The `imap_unordered` call of `f`.
pub(super) fn imap_unordered_op<A, R>(f: fn(A) -> R) -> LocalFn<ClusterKind>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_imap_unordered::<A, R>` calls its address as a `fn(A) -> R`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_imap_unordered::<A, R>) }
}

/// `imap_unordered`: every item's result goes to rank 0 as it finishes, then an end marker.
fn serve_imap_unordered<A, R>(func: FnAddr, s: &mut Serving<'_>)
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A) -> R` for these types (`imap_unordered_op`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    let results = items_share::<A>(s)
        .and_then(|(items, chunksize)| s.pool.imap_unordered(f, items, chunksize));
    let failure = match results {
        Ok(results) => {
            for (index, result) in results {
                let item = StreamItem::Item {
                    index: index as u64,
                    result: result.map_err(RemoteFailure::from),
                };
                let bytes = encode(&item)
                    .ok()
                    .filter(|b| b.len() <= MAX_MESSAGE)
                    .unwrap_or_else(|| {
                        encode(&StreamItem::<R>::Item {
                            index: index as u64,
                            result: Err(RemoteFailure::Other(
                                "the result does not fit one MPI message".into(),
                            )),
                        })
                        .expect("a failure encodes")
                    });
                s.traffic.send_message(s.world, 0, TAG_ITEM, &bytes);
            }
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let end = encode(&StreamItem::<R>::End { failure }).expect("an end marker encodes");
    s.traffic.send_message(s.world, 0, TAG_ITEM, &end);
}

/// Receives this rank's whole share of an array (sent in pieces of `unit` bytes) into `slot`'s buffer,
/// or takes the handle into rank 0's memory it came with. Returns the handle to lend to the workers.
/// On failure the array bytes rank 0 sends anyway are received and dropped, so the ranks stay in step.
fn receive_share<T: Pod>(
    world: &SimpleCommunicator,
    traffic: &mut Traffic,
    slot: &mut Option<SharedArray<u8>>,
    share: &ArrayShare,
    unit: usize,
) -> Result<BlockHandle> {
    let Some(total) = usize::try_from(share.elems)
        .ok()
        .and_then(|e| e.checked_mul(std::mem::size_of::<T>()))
    else {
        transport::violation(world, "an array share larger than memory was announced");
    };
    if let Some(h) = &share.shared {
        if h.len != total as u64 {
            return Err(Error::Corrupted(format!(
                "a share of {} elements came with a handle of {} bytes",
                share.elems, h.len
            )));
        }
        return Ok(h.clone());
    }
    match buffer(slot, total) {
        Ok(buf) => {
            let part = buf.range_mut(0..total).expect("the buffer holds the share");
            traffic.receive_array(world, 0, part, unit);
            Ok(sub_handle::<u8>(&buf.block_handle(), 0..total))
        }
        Err(e) => {
            traffic.discard_array(world, 0, total as u64, unit);
            Err(e)
        }
    }
}

/// The `map_chunks` call of `f`.
pub(super) fn chunks_op<T: Pod, R>(f: fn(&[T]) -> R) -> LocalFn<ClusterKind>
where
    R: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_chunks::<T, R>` calls its address as a `fn(&[T]) -> R`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_chunks::<T, R>) }
}

fn serve_chunks<T: Pod, R: Serialize + DeserializeOwned>(func: FnAddr, s: &mut Serving<'_>) {
    // SAFETY: paired only with a `fn(&[T]) -> R` for these types (`chunks_op`).
    let f = unsafe { func.get::<fn(&[T]) -> R>() };
    serve_chunks_with_task::<T, R>(s, worker::chunk_fn(f));
}

/// The `map_chunks_with` call of `f`.
pub(super) fn chunks_with_op<T: Pod, P, R>(f: fn(&P, &[T]) -> R) -> LocalFn<ClusterKind>
where
    P: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_chunks_with::<T, P, R>` calls its address as a `fn(&P, &[T]) -> R`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_chunks_with::<T, P, R>) }
}

fn serve_chunks_with<T: Pod, P, R>(func: FnAddr, s: &mut Serving<'_>)
where
    P: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(&P, &[T]) -> R` for these types (`chunks_with_op`).
    let f = unsafe { func.get::<fn(&P, &[T]) -> R>() };
    serve_chunks_with_task::<T, R>(s, worker::chunk_with_fn(f));
}

fn serve_chunks_with_task<T: Pod, R: Serialize + DeserializeOwned>(
    s: &mut Serving<'_>,
    task: LocalFn<TaskKind>,
) {
    let bytes = s.share();
    // Rank 0 never sends these undecodable or a chunk length of 0; and without them the array bytes on
    // the way cannot even be counted.
    let (Ok(share), Ok(args)) = (decode::<ArrayShare>(&bytes), decode::<ArrayArgs>(s.args)) else {
        transport::violation(s.world, "an undecodable array share");
    };
    if args.chunk_len == 0 {
        transport::violation(s.world, "a chunk length of 0");
    }
    let outcome = run_chunks::<T, R>(s, task, &share, &args).map_err(RemoteFailure::from);
    s.reply(&outcome);
}

/// This rank's `map_chunks` share. Sent elements are worked on as they arrive: the tasks of a piece's
/// chunks start as soon as the piece is in, while the next pieces are on the way.
fn run_chunks<T: Pod, R: Serialize + DeserializeOwned>(
    s: &mut Serving<'_>,
    task: LocalFn<TaskKind>,
    share: &ArrayShare,
    args: &ArrayArgs,
) -> Result<Vec<R>> {
    let Some(elems) = usize::try_from(share.elems).ok() else {
        transport::violation(s.world, "an array share larger than memory was announced");
    };
    if elems == 0 {
        return Ok(Vec::new()); // no chunks here, and no bytes travel for them
    }
    let chunk_len = usize::try_from(args.chunk_len).unwrap_or(usize::MAX);
    let chunks = elems.div_ceil(chunk_len);
    let size = std::mem::size_of::<T>();
    let unit = chunk_len.saturating_mul(size);
    if let Some(id) = share.part {
        let kept = s.store.parts.get(&id);
        // Held until the tasks are done: the part cannot be freed under the workers.
        let alive = kept.and_then(|k| k.alive.upgrade());
        let (Some(kept), Some(_alive)) = (kept, alive) else {
            return Err(Error::Corrupted(format!(
                "this rank's part of distributed array {id} was dropped"
            )));
        };
        if Some(kept.bytes) != share.elems.checked_mul(size as u64) {
            return Err(Error::Corrupted(format!(
                "distributed array {id}: a share of {} elements for a part of {} bytes",
                share.elems, kept.bytes
            )));
        }
        let handle = kept.handle.clone();
        return submit_chunks::<R>(s.pool, task, &handle, elems, 0..chunks, args)?.get();
    }
    if share.shared.is_some() {
        let h = receive_share::<T>(s.world, s.traffic, &mut s.store.inbox, share, unit)?;
        return submit_chunks::<R>(s.pool, task, &h, elems, 0..chunks, args)?.get();
    }
    let Some(total) = elems.checked_mul(size) else {
        transport::violation(s.world, "an array share larger than memory was announced");
    };
    let buf = match buffer(&mut s.store.inbox, total) {
        Ok(buf) => buf,
        Err(e) => {
            s.traffic.discard_array(s.world, 0, total as u64, unit);
            return Err(e);
        }
    };
    let handle = sub_handle::<u8>(&buf.block_handle(), 0..total);
    let mut jobs = Vec::new();
    let mut failure = None;
    let mut submitted = 0;
    for piece in transport::pieces(total, unit) {
        let end = piece.end;
        // Only this piece is referenced while the workers read the pieces before it.
        let part = buf.range_mut(piece).expect("the buffer holds the share");
        s.traffic.receive_piece(s.world, 0, part);
        let ready = if end == total { chunks } else { end / unit };
        if ready > submitted && failure.is_none() {
            match submit_chunks::<R>(s.pool, task, &handle, elems, submitted..ready, args) {
                Ok(job) => jobs.push((submitted, job)),
                Err(e) => failure = Some(e),
            }
            submitted = ready;
        }
    }
    // Every job is waited for, also after a failure: their workers read the buffer the next call reuses.
    let mut out = Vec::with_capacity(chunks);
    for (first, job) in jobs {
        match job.get() {
            Ok(v) => out.extend(v),
            Err(e) => {
                failure.get_or_insert(shifted(e, first));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The `transform` call of `f`.
pub(super) fn transform_op<T: Pod, U: Pod>(f: fn(&[T], &mut [U], usize)) -> LocalFn<ClusterKind> {
    // SAFETY: `serve_transform::<T, U>` calls its address as a `fn(&[T], &mut [U], usize)`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_transform::<T, U>) }
}

fn serve_transform<T: Pod, U: Pod>(func: FnAddr, s: &mut Serving<'_>) {
    // SAFETY: paired only with a `fn(&[T], &mut [U], usize)` for these types (`transform_op`).
    let f = unsafe { func.get::<fn(&[T], &mut [U], usize)>() };
    serve_transform_with_task::<T, U>(s, worker::transform_fn(f));
}

/// The `transform_with` call of `f`.
pub(super) fn transform_with_op<T: Pod, U: Pod, P>(
    f: fn(&P, &[T], &mut [U], usize),
) -> LocalFn<ClusterKind>
where
    P: Serialize + DeserializeOwned,
{
    // SAFETY: `serve_transform_with::<T, U, P>` calls its address as a
    // `fn(&P, &[T], &mut [U], usize)`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_transform_with::<T, U, P>) }
}

fn serve_transform_with<T: Pod, U: Pod, P>(func: FnAddr, s: &mut Serving<'_>)
where
    P: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(&P, &[T], &mut [U], usize)` for these types
    // (`transform_with_op`).
    let f = unsafe { func.get::<fn(&P, &[T], &mut [U], usize)>() };
    serve_transform_with_task::<T, U>(s, worker::transform_with_fn(f));
}

fn serve_transform_with_task<T: Pod, U: Pod>(s: &mut Serving<'_>, task: LocalFn<TaskKind>) {
    let bytes = s.share();
    let (Ok(share), Ok(args)) = (
        decode::<TransformShare>(&bytes),
        decode::<ArrayArgs>(s.args),
    ) else {
        transport::violation(s.world, "an undecodable transform share");
    };
    if args.chunk_len == 0 {
        transport::violation(s.world, "a chunk length of 0");
    }
    if share.output.elems == 0 {
        // Rank 0 gives every rank a run of whole output chunks; an empty run has no input either,
        // and no bytes travel for it.
        s.reply(&TransformReply {
            outcome: Ok(()),
            data_follows: false,
        });
        return;
    }
    // The input arrives whole (a task may read any input row of its rank's block), in pieces of at
    // most `PIECE` bytes; received before anything else can fail, so that the ranks stay in step.
    let input = receive_share::<T>(s.world, s.traffic, &mut s.store.inbox, &share.input, PIECE);
    let sent_output = share.output.shared.is_none();
    let out_elems = usize::try_from(share.output.elems).unwrap_or(usize::MAX);
    let out_bytes = out_elems.saturating_mul(std::mem::size_of::<U>());
    // A sent output is computed into this rank's outbox and sent back; a shared one is written in place.
    let output: Result<BlockHandle> = match &share.output.shared {
        Some(h) if h.len == out_bytes as u64 => Ok(h.clone()),
        Some(_) => Err(Error::Corrupted(
            "an output handle of the wrong size".into(),
        )),
        None => buffer(&mut s.store.outbox, out_bytes)
            .map(|b| sub_handle::<u8>(&b.block_handle(), 0..out_bytes)),
    };
    let in_elems = usize::try_from(share.input.elems).unwrap_or(usize::MAX);
    let outcome = match (input, &output) {
        (Err(e), _) => Err(RemoteFailure::from(e)),
        (Ok(_), Err(e)) => Err(RemoteFailure::Other(format!(
            "cannot make its share of the output: {e}"
        ))),
        (Ok(ih), Ok(oh)) => submit_transform(s.pool, task, (&ih, in_elems), (oh, out_elems), &args)
            .and_then(|pending| pending.get())
            .map(drop)
            .map_err(RemoteFailure::from),
    };
    // Only a share whose every task ran and succeeded goes back: the outbox is reused across calls,
    // so the chunks of a failed task (or all of them, if the input never arrived) still hold an
    // earlier call's output, which must not land in rank 0's array.
    let data_follows = sent_output && output.is_ok() && outcome.is_ok();
    s.reply(&TransformReply {
        outcome,
        data_follows,
    });
    if data_follows {
        let out = s.store.outbox.as_ref().expect("made above");
        let out = out.range(0..out_bytes).expect("the outbox holds the share");
        s.traffic.send_array(s.world, 0, out, PIECE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_in_order_in_proportion() {
        for total in [0usize, 1, 7, 100, 1001] {
            for weights in [vec![1], vec![1, 1], vec![2, 1, 1], vec![1, 3, 0, 2]] {
                let shares = split(total, &weights);
                assert_eq!(shares.len(), weights.len());
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares.last().unwrap().end, total);
                for w in shares.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sum: usize = weights.iter().sum();
                for (s, &w) in shares.iter().zip(&weights) {
                    // Within one item of the exact proportion.
                    assert!(
                        s.len().abs_diff(total * w / sum) <= 1,
                        "{total} {weights:?}"
                    );
                }
            }
        }
    }

    // `&P` with `P = String`: a task's parameters are a reference to their decoded type.
    #[allow(clippy::ptr_arg)]
    fn params_len(p: &String, chunk: &[u64]) -> u64 {
        p.len() as u64 + chunk.len() as u64
    }

    #[allow(clippy::ptr_arg)]
    fn params_fill(p: &String, _input: &[u64], out: &mut [u64], _start: usize) {
        out.fill(p.len() as u64);
    }

    fn byte_len(v: Vec<u8>) -> usize {
        v.len()
    }

    /// Every rank runs its share with these helpers: an item, or the call's parameters, above the pool
    /// ring's reassembly cap (256 MiB) reaches the worker in a shared block, as with the local pool.
    /// Before, every task went inline and failed with `MessageTooLarge`.
    #[test]
    fn a_share_above_the_rings_message_cap_runs() {
        let pool = Pool::builder().workers(1).build().unwrap();
        let n = (crate::pool::MAX_MESSAGE_BYTES as usize) + 4096;
        let items = vec![vec![7u8; n], vec![1u8; 3]];
        let got = submit_items::<Vec<u8>, usize>(&pool, worker::map_fn(byte_len), &items, Some(1))
            .and_then(|p| p.get());
        assert_eq!(got.unwrap(), vec![n, 3]);
        drop(items);

        // A `String` encodes in one piece: the parameters as rank 0 sends them.
        let args = ArrayArgs {
            chunk_len: 2,
            params: encode(&"p".repeat(n)).unwrap(),
        };
        let input = SharedArray::from_slice(&[0u64; 3]).unwrap();
        let task = worker::chunk_with_fn(params_len);
        let got = submit_chunks::<u64>(&pool, task, &lend(&input, 0..3), 3, 0..2, &args)
            .and_then(|p| p.get());
        assert_eq!(got.unwrap(), vec![n as u64 + 2, n as u64 + 1]);
        let output = SharedArray::<u64>::zeroed(3).unwrap();
        let task = worker::transform_with_fn(params_fill);
        let (ih, oh) = (lend(&input, 0..3), lend(&output, 0..3));
        submit_transform(&pool, task, (&ih, 3), (&oh, 3), &args)
            .and_then(|p| p.get())
            .unwrap();
        assert_eq!(output.to_vec(), vec![n as u64; 3]);
    }

    /// Found by review: every `distribute` left a record here for the life of the pool, dropped or
    /// not. A record now goes with the next `distribute` once its part is dropped.
    #[test]
    fn the_store_forgets_dropped_parts() {
        let mut store = RankStore::default();
        let mut live = Vec::new();
        for id in 0..100u64 {
            let part = std::rc::Rc::new(SharedArray::from_slice(&[id; 4]).unwrap());
            let alive: std::rc::Rc<dyn std::any::Any> = part.clone();
            store.keep_part(
                id,
                KeptPart {
                    handle: part.block_handle(),
                    bytes: 32,
                    alive: std::rc::Rc::downgrade(&alive),
                },
            );
            // Every tenth part is kept alive by the program; the others are dropped at once.
            if id % 10 == 0 {
                live.push((id, alive));
            }
        }
        // The last one's record is there until the next `distribute`, dropped or not.
        assert_eq!(store.parts.len(), live.len() + 1);
        for (id, _) in &live {
            assert!(store.parts[id].alive.upgrade().is_some());
        }
    }

    #[test]
    fn chunk_ranges_are_whole_chunks_and_a_shorter_last() {
        let r: Vec<_> = chunk_ranges(10, 4).collect();
        assert_eq!(r, [0..4, 4..8, 8..10]);
        assert_eq!(chunk_ranges(0, 4).count(), 0);
    }

    #[test]
    fn remote_failures_land_on_their_index_in_the_whole_input() {
        let (at, e) = RemoteFailure::Panicked {
            task: 3,
            message: "m".into(),
            location: "l".into(),
        }
        .into_error(2, 100);
        assert_eq!(at, 103);
        assert!(matches!(e, Error::TaskPanicked { task: 103, .. }));
        let (at, e) = RemoteFailure::Other("why".into()).into_error(1, 40);
        assert_eq!(at, 40);
        assert!(matches!(e, Error::RankFailed { rank: 1, ref message } if message == "why"));
        // An index no share has is clamped, never wrapped.
        let (at, _) = RemoteFailure::WorkerDied {
            task: u64::MAX,
            signal: Some(9),
            exit_code: None,
        }
        .into_error(1, 5);
        assert_eq!(at, usize::MAX);
        assert!(matches!(
            shifted(
                Error::WorkerDied {
                    task: 1,
                    signal: None,
                    exit_code: Some(3)
                },
                10
            ),
            Error::WorkerDied { task: 11, .. }
        ));
    }
}
