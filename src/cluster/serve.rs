//! What travels for a call, and what a serving rank does with it.
//!
//! A call is a [`Command`] broadcast by rank 0: a function reference of [`ClusterKind`] — the user's
//! function paired with the *serving adapter* instantiated for its types — and the call's arguments.
//! A serving rank resolves the reference with the job's key and calls the adapter, which receives the
//! rank's share, runs it on the rank's local pool and replies. Rank 0 runs its own share with the same
//! `submit_*` helpers, so a share is computed the same way wherever it runs.

use std::ops::Range;

use bytemuck::Pod;
use mpi::topology::SimpleCommunicator;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::transport::{self, Traffic, MAX_MESSAGE, TAG_ITEM, TAG_REPLY, TAG_SHARE};
use crate::error::{Error, Result};
use crate::heap::{BlockHandle, SharedArray};
use crate::pool::worker::{self, ArrayPart, TaskKind};
use crate::pool::{AsyncResult, Pool};
use crate::process::fnref::{AdapterKind, FnAddr, FnRef, LocalFn};

/// The adapter kind of cluster calls: the serving side of one call, instantiated for its types.
pub(super) struct ClusterKind;

impl AdapterKind for ClusterKind {
    type Adapter = fn(FnAddr, &SimpleCommunicator, &Pool, &[u8], &mut Traffic);
    const DOMAIN: u64 = 0x6d70_636c_7573_7401; // "mpclust" 1
    const NAME: &'static str = "cluster call";
}

/// What rank 0 broadcasts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Command {
    /// `run` is over: serving ranks return.
    Stop,
    /// A call: the serving adapter and the user's function, and the call's arguments.
    Call { op: FnRef, args: Vec<u8> },
}

/// A serving rank's context while its adapter runs.
pub(super) struct Serving<'a> {
    pub world: &'a SimpleCommunicator,
    pub pool: &'a Pool,
    pub args: &'a [u8],
    pub traffic: &'a mut Traffic,
}

/// Why a rank's share (or one of its items) failed, as it travels to rank 0. Task indices are the
/// rank's own; rank 0 adds the share's first index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum RemoteFailure {
    Panicked {
        task: u64,
        message: String,
        location: String,
    },
    WorkerDied {
        task: u64,
        signal: Option<i32>,
        exit_code: Option<i32>,
    },
    Other(String),
}

impl From<Error> for RemoteFailure {
    fn from(e: Error) -> Self {
        match e {
            Error::TaskPanicked {
                task,
                message,
                location,
            } => RemoteFailure::Panicked {
                task: task as u64,
                message,
                location,
            },
            Error::WorkerDied {
                task,
                signal,
                exit_code,
            } => RemoteFailure::WorkerDied {
                task: task as u64,
                signal,
                exit_code,
            },
            other => RemoteFailure::Other(other.to_string()),
        }
    }
}

impl RemoteFailure {
    /// The error on rank 0, and the index in the whole input it belongs to (for "the lowest failing
    /// index" rule), for a share of `rank` that starts at `base`.
    pub(super) fn into_error(self, rank: usize, base: usize) -> (usize, Error) {
        // A task index outside the share is a broken invariant; it is clamped, not trusted.
        let at = |task: u64| base.saturating_add(usize::try_from(task).unwrap_or(usize::MAX));
        match self {
            RemoteFailure::Panicked {
                task,
                message,
                location,
            } => (
                at(task),
                Error::TaskPanicked {
                    task: at(task),
                    message,
                    location,
                },
            ),
            RemoteFailure::WorkerDied {
                task,
                signal,
                exit_code,
            } => (
                at(task),
                Error::WorkerDied {
                    task: at(task),
                    signal,
                    exit_code,
                },
            ),
            RemoteFailure::Other(message) => (base, Error::RankFailed { rank, message }),
        }
    }
}

/// One message of `imap_unordered` from a serving rank.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum StreamItem<R> {
    Item {
        index: u64,
        result: std::result::Result<R, RemoteFailure>,
    },
    /// The rank's last message; `failure` says why items are missing, if some are.
    End { failure: Option<String> },
}

/// Where a rank finds the elements of its share of an array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ArrayShare {
    /// How many elements.
    pub elems: u64,
    /// A handle to exactly those elements of rank 0's array (a rank on rank 0's node), or `None`: they
    /// travel as array bytes.
    pub shared: Option<BlockHandle>,
}

/// A `transform` share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TransformShare {
    pub input: ArrayShare,
    pub output: ArrayShare,
}

/// The reply of a `transform` share: whether it ran, and whether its output bytes follow.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TransformReply {
    pub outcome: std::result::Result<(), RemoteFailure>,
    pub data_follows: bool,
}

/// The arguments every rank gets for `map_chunks`/`transform`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ArrayArgs {
    pub chunk_len: u64,
    /// The user's parameters, already encoded (empty for the calls without).
    pub params: Vec<u8>,
}

pub(super) fn encode<X: Serialize + ?Sized>(x: &X) -> Result<Vec<u8>> {
    postcard::to_allocvec(x).map_err(|e| Error::Encode(e.to_string()))
}

pub(super) fn decode<X: DeserializeOwned>(bytes: &[u8]) -> Result<X> {
    postcard::from_bytes(bytes).map_err(|e| Error::Decode {
        ty: std::any::type_name::<X>(),
        reason: e.to_string(),
    })
}

/// Contiguous shares of `total` in proportion to `weights` (the ranks' worker counts).
pub(super) fn split(total: usize, weights: &[usize]) -> Vec<Range<usize>> {
    let sum: u128 = weights.iter().map(|&w| w as u128).sum::<u128>().max(1);
    let mut acc = 0u128;
    weights
        .iter()
        .map(|&w| {
            let lo = (total as u128 * acc / sum) as usize;
            acc += w as u128;
            let hi = (total as u128 * acc / sum) as usize;
            lo..hi
        })
        .collect()
}

/// The consecutive chunks of `chunk` elements of `0..len` (the last may be shorter).
pub(super) fn chunk_ranges(len: usize, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(len))
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
    let payloads = items.chunks(size).map(encode).collect::<Result<Vec<_>>>()?;
    let lens = items.chunks(size).map(<[A]>::len).collect();
    let job = pool.submit(task, payloads)?;
    Ok(AsyncResult::all_items(job, lens))
}

/// Submits one `map_chunks` task per chunk of the `elems` elements `block` names.
pub(super) fn submit_chunks<R: DeserializeOwned>(
    pool: &Pool,
    task: LocalFn<TaskKind>,
    block: &BlockHandle,
    elems: usize,
    args: &ArrayArgs,
) -> Result<AsyncResult<Vec<R>>> {
    let payloads = chunk_ranges(elems, args.chunk_len as usize)
        .map(|r| {
            let part = ArrayPart {
                block: block.clone(),
                start: r.start as u64,
                end: r.end as u64,
            };
            // A tuple encodes as its fields one after the other: (part, params) is these bytes.
            let mut p = encode(&part)?;
            p.extend_from_slice(&args.params);
            Ok(p)
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
            Ok(p)
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

fn serve_map<A, R>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A) -> R` for these types (`map_op`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
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

fn serve_star<A, B, R>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A, B) -> R` for these types (`star_op`).
    let f = unsafe { func.get::<fn(A, B) -> R>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
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
fn serve_imap_unordered<A, R>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(A) -> R` for these types (`imap_unordered_op`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
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

/// Receives this rank's share of an array: a handle into rank 0's memory, or the elements themselves
/// into an array of this rank (returned, to keep it alive while the tasks run). On failure the array
/// bytes rank 0 sends anyway are received and dropped, so the protocol stays in step.
fn receive_share<T: Pod>(
    s: &mut Serving<'_>,
    share: &ArrayShare,
) -> Result<(BlockHandle, usize, Option<SharedArray<T>>)> {
    let size = std::mem::size_of::<T>() as u64;
    let Some(bytes) = share.elems.checked_mul(size) else {
        transport::violation(s.world, "an array share larger than memory was announced");
    };
    let elems = usize::try_from(share.elems).unwrap_or(usize::MAX);
    if let Some(h) = &share.shared {
        if h.len != bytes {
            return Err(Error::Corrupted(format!(
                "a share of {elems} elements came with a handle of {} bytes",
                h.len
            )));
        }
        return Ok((h.clone(), elems, None));
    }
    match SharedArray::<T>::zeroed(elems) {
        Ok(mut local) => {
            s.traffic
                .receive_array(s.world, 0, bytemuck::cast_slice_mut(&mut local[..]));
            Ok((local.block_handle(), elems, Some(local)))
        }
        Err(e) => {
            s.traffic.discard_array(s.world, 0, bytes);
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

fn serve_chunks<T: Pod, R: Serialize + DeserializeOwned>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) {
    // SAFETY: paired only with a `fn(&[T]) -> R` for these types (`chunks_op`).
    let f = unsafe { func.get::<fn(&[T]) -> R>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
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

fn serve_chunks_with<T: Pod, P, R>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) where
    P: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(&P, &[T]) -> R` for these types (`chunks_with_op`).
    let f = unsafe { func.get::<fn(&P, &[T]) -> R>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
    serve_chunks_with_task::<T, R>(s, worker::chunk_with_fn(f));
}

fn serve_chunks_with_task<T: Pod, R: Serialize + DeserializeOwned>(
    s: &mut Serving<'_>,
    task: LocalFn<TaskKind>,
) {
    let bytes = s.share();
    let outcome = (|| {
        let share: ArrayShare = match decode(&bytes) {
            Ok(share) => share,
            Err(_) => transport::violation(s.world, "an undecodable array share"),
        };
        if share.elems == 0 {
            return Ok(Vec::new()); // no chunks here, and no bytes travel for them
        }
        // Received before anything else can fail, so that the ranks stay in step.
        let (handle, elems, _local) = receive_share::<T>(s, &share)?;
        let args: ArrayArgs = decode(s.args)?;
        if args.chunk_len == 0 {
            return Err(Error::Corrupted("a chunk length of 0".into()));
        }
        submit_chunks::<R>(s.pool, task, &handle, elems, &args)?.get()
    })()
    .map_err(RemoteFailure::from);
    s.reply(&outcome);
}

/// The `transform` call of `f`.
pub(super) fn transform_op<T: Pod, U: Pod>(f: fn(&[T], &mut [U], usize)) -> LocalFn<ClusterKind> {
    // SAFETY: `serve_transform::<T, U>` calls its address as a `fn(&[T], &mut [U], usize)`, which `f` is.
    unsafe { LocalFn::<ClusterKind>::pair(f as usize, serve_transform::<T, U>) }
}

fn serve_transform<T: Pod, U: Pod>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) {
    // SAFETY: paired only with a `fn(&[T], &mut [U], usize)` for these types (`transform_op`).
    let f = unsafe { func.get::<fn(&[T], &mut [U], usize)>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
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

fn serve_transform_with<T: Pod, U: Pod, P>(
    func: FnAddr,
    world: &SimpleCommunicator,
    pool: &Pool,
    args: &[u8],
    traffic: &mut Traffic,
) where
    P: Serialize + DeserializeOwned,
{
    // SAFETY: paired only with a `fn(&P, &[T], &mut [U], usize)` for these types
    // (`transform_with_op`).
    let f = unsafe { func.get::<fn(&P, &[T], &mut [U], usize)>() };
    let s = &mut Serving {
        world,
        pool,
        args,
        traffic,
    };
    serve_transform_with_task::<T, U>(s, worker::transform_with_fn(f));
}

fn serve_transform_with_task<T: Pod, U: Pod>(s: &mut Serving<'_>, task: LocalFn<TaskKind>) {
    let bytes = s.share();
    let share: TransformShare = match decode(&bytes) {
        Ok(share) => share,
        Err(_) => transport::violation(s.world, "an undecodable transform share"),
    };
    if share.output.elems == 0 {
        // Rank 0 gives every rank a run of whole output chunks; an empty run has no input either,
        // and no bytes travel for it.
        s.reply(&TransformReply {
            outcome: Ok(()),
            data_follows: false,
        });
        return;
    }
    let sent_output = share.output.shared.is_none();
    let input = receive_share::<T>(s, &share.input);
    // A sent output is computed here and sent back; a shared one is written in place.
    let mut output: Result<(BlockHandle, usize, Option<SharedArray<U>>)> =
        match &share.output.shared {
            Some(h) => Ok((
                h.clone(),
                usize::try_from(share.output.elems).unwrap_or(usize::MAX),
                None,
            )),
            None => usize::try_from(share.output.elems)
                .map_err(|_| Error::Corrupted("an output share larger than memory".into()))
                .and_then(SharedArray::<U>::zeroed)
                .map(|a| (a.block_handle(), a.len(), Some(a))),
        };
    let outcome = (|| -> std::result::Result<Vec<()>, RemoteFailure> {
        let args: ArrayArgs = decode(s.args)?;
        if args.chunk_len == 0 {
            return Err(Error::Corrupted("a chunk length of 0".into()).into());
        }
        let (ih, ie, _keep) = input?;
        let (oh, oe) = match &output {
            Ok((h, e, _)) => (h, *e),
            Err(e) => {
                return Err(RemoteFailure::Other(format!(
                    "cannot make its share of the output: {e}"
                )))
            }
        };
        if let Some(h) = &share.output.shared {
            if Some(h.len)
                != share
                    .output
                    .elems
                    .checked_mul(std::mem::size_of::<U>() as u64)
            {
                return Err(Error::Corrupted("an output handle of the wrong size".into()).into());
            }
        }
        Ok(submit_transform(s.pool, task, (&ih, ie), (oh, oe), &args)?.get()?)
    })()
    .map(drop);
    let local_out = output.as_mut().ok().and_then(|o| o.2.as_ref());
    let data_follows = sent_output && local_out.is_some();
    s.reply(&TransformReply {
        outcome,
        data_follows,
    });
    if let (true, Some(out)) = (data_follows, local_out) {
        s.traffic
            .send_array(s.world, 0, bytemuck::cast_slice(&out[..]));
    }
}
