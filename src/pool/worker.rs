//! The worker process: its main loop, and the adapters that run one task.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::answer;
use super::item_wire::{ValueFromWire, ValueToWire};
use super::wire::{self, ItemBytes, ItemFailure, ItemResults, PayloadRef, KIND_RESULT, KIND_TASK};
use crate::codec::{Codec, RawSlice};
use crate::error::{Error, Result};
use crate::heap::{BlockHandle, SharedArray};
use crate::process::fnref::{AdapterKind, FnAddr, FnKey, FnRef, LocalFn};
use crate::process::{bootstrap, forkserver};
use crate::queue::Queue;

/// A byte-frame ring, the transport of every pool message.
pub(crate) type FrameQueue = Queue<Vec<u8>, Frames>;

/// The codec of the pool's rings: raw bytes, as [`RawSlice<u8>`], in queues that never spill. Every
/// writer of a pool ring cuts its message into frames of at most the ring's inline size (`wire`), so
/// a frame never needs a block of its own; such queues hold no anchor file in `/dev/shm`, and a pool
/// whose processes are all killed (Ctrl-C on a program) leaves nothing behind.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Frames;

impl Codec<Vec<u8>> for Frames {
    const NAME: &'static str = "pool-frames";
    const SPILLS: bool = false;

    fn with_bytes<R>(value: &Vec<u8>, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        <RawSlice<u8> as Codec<Vec<u8>>>::with_bytes(value, f)
    }

    fn decode(bytes: &[u8]) -> Result<Vec<u8>> {
        <RawSlice<u8> as Codec<Vec<u8>>>::decode(bytes)
    }
}

/// The adapter kind of pool tasks: runs the user's function on a payload and encodes the per-item
/// results. `Err` means the whole task could not run (its items all fail with the message).
pub(crate) struct TaskKind;

impl AdapterKind for TaskKind {
    type Adapter = fn(FnAddr, &[u8]) -> Result<ItemResults, String>;
    const DOMAIN: u64 = 0x6d70_706f_6f6c_7401; // "mppoolt" 1
    const NAME: &'static str = "pool task";
}

/// What a worker is started with (through the spawn task). The pool's key is not here: it arrives as the
/// spawn key, over the socket no other process can open (see `process::fnref`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub tasks: FrameQueue,
    pub results: FrameQueue,
    /// This worker's id, written into every result frame: the parent accepts a result only from the
    /// worker it gave the task to. Each worker the pool starts gets a new one (a replacement too), so
    /// what a dead worker left in the result ring is never taken for its replacement's.
    pub id: u32,
    /// The initializer, a `fn()` paired with [`init_adapter`], signed with the pool's key.
    pub initializer: Option<FnRef>,
    /// Exit after this many tasks (the parent starts a fresh worker).
    pub max_tasks: Option<u64>,
    /// The largest task body the worker reassembles; a larger one fails that task.
    pub max_body: u64,
    /// Keep what tasks free for the next ones (`PoolBuilder::retain_worker_memory`).
    pub retain_memory: bool,
}

thread_local! {
    /// The message and location of the last panic on this thread, recorded by the worker's hook.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// The task running on this thread, and the results of its items so far.
    static RUNNING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

/// A task in progress in this worker.
struct Running {
    task: u64,
    /// How many items the task has (set once its payload decoded).
    total: usize,
    /// The results of the items that finished, in order.
    done: ItemResults,
}

/// Where a worker's panic hook sends its task's answer itself when the program is built with
/// `panic = "abort"`: no unwinding will reach [`catch`], and the process aborts right after the hook.
struct AbortReport {
    results: FrameQueue,
    id: u32,
    max_frame: usize,
}

static ABORT_REPORT: std::sync::OnceLock<AbortReport> = std::sync::OnceLock::new();

/// The shared result ring, in a worker (for tests whose task writes it itself: a producer that dies,
/// or stalls, with a slot of it claimed).
#[cfg(test)]
pub(super) fn result_ring_for_tests() -> Option<FrameQueue> {
    ABORT_REPORT.get().map(|r| r.results.clone())
}

/// In a worker, inside a task: the task's id, this worker's id and the shared result ring (for tests
/// whose task writes its own answer).
#[cfg(test)]
pub(super) fn running_task_for_tests() -> Option<(u64, u32, FrameQueue)> {
    let task = RUNNING.with(|r| r.borrow().as_ref().map(|run| run.task))?;
    ABORT_REPORT.get().map(|r| (task, r.id, r.results.clone()))
}

fn install_panic_hook() {
    // Replaces the spawn bootstrap's hook: a task's panic is reported with its task, not as the process's
    // outcome, and caught panics must not print (the caller gets the message).
    panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_owned(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "Box<dyn Any>".into()),
        };
        let location = info
            .location()
            .map_or_else(|| "<unknown>".into(), |l| l.to_string());
        if cfg!(panic = "abort") {
            report_before_abort(message, location);
        } else {
            let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some((message, location)));
        }
    }));
}

/// Under `panic = "abort"`: answers the running task as the unwinding path would have (the items done,
/// the panicking one as `Panicked`, the rest as not run), so the caller gets `TaskPanicked` with the
/// message and location; the parent then sees this worker die and replaces it as after any death.
fn report_before_abort(message: String, location: String) {
    let Some(run) = RUNNING.try_with(|r| r.borrow_mut().take()).ok().flatten() else {
        return; // not inside a task (the initializer): the death says enough
    };
    let Some(report) = ABORT_REPORT.get() else {
        return;
    };
    let mut results = run.done;
    results.push(Err(ItemFailure::Panicked { message, location }));
    while results.len() < run.total {
        results.push(Err(ItemFailure::Failed(
            "not run: the worker aborted on the panic of an earlier item of its task".into(),
        )));
    }
    // Inline: no shared block to allocate and keep in a process about to abort.
    let encoded = answer::inline(&Ok(results));
    let _ = wire::fragments(
        run.task,
        KIND_RESULT,
        report.id,
        &encoded,
        report.max_frame,
        |f| report.results.put(f),
    );
    // Then say this worker is going: the parent gives it no more work, and knows that the tasks still
    // in its ring never started (they are requeued, not failed as if they had crashed it).
    let _ = report
        .results
        .put(&wire::frame(0, wire::KIND_EXITING, true, report.id, &[]));
}

/// Runs `f`, turning a panic into the failure the hook recorded.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, ItemFailure> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        let (message, location) = LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| ("<panic>".into(), "<unknown>".into()));
        ItemFailure::Panicked { message, location }
    })
}

/// Runs `one` on every item, recording each result where the abort-mode hook can find it.
fn run_items<X>(
    items: Vec<X>,
    mut one: impl FnMut(X) -> Result<ItemBytes, ItemFailure>,
) -> ItemResults {
    let with_running = |f: &mut dyn FnMut(&mut Running)| {
        RUNNING.with(|r| {
            if let Some(run) = r.borrow_mut().as_mut() {
                f(run);
            }
        })
    };
    let mut mine = Vec::new();
    with_running(&mut |run| {
        run.total = items.len();
        run.done.clear();
    });
    for x in items {
        let r = one(x);
        if cfg!(panic = "abort") {
            // Only the abort-mode hook reads these; with unwinding, `catch` reports the panic and this
            // copy is not made.
            with_running(&mut |run| run.done.push(r.clone()));
        }
        mine.push(r);
    }
    mine
}

/// The worker's main function, run in a spawned child. Returns when the parent closes its task ring or
/// after `max_tasks` tasks; the parent sees the exit and decides whether to start another.
pub(crate) fn worker_main(args: WorkerArgs) {
    install_panic_hook();
    if args.retain_memory {
        crate::sys::process::retain_freed_memory();
    }
    // A worker is always started with the pool's key (`Builder::spawn_key`); without one it was not
    // started by a pool and can authenticate nothing. Through the fork server the key comes with the
    // request, and `spawn_key()` would be the server's own: the requester's key comes first.
    let Some(key) = forkserver::requester_key().or_else(bootstrap::spawn_key) else {
        std::process::exit(3);
    };
    if let Some(init) = args.initializer {
        if run_fn(init, &[], &key).is_err() {
            std::process::exit(3);
        }
    }
    let max_frame = args.results.max_message_size();
    let _ = ABORT_REPORT.set(AbortReport {
        results: args.results.clone(),
        id: args.id,
        max_frame,
    });
    // Only the parent writes this ring, one task at a time; a body past the cap is garbage, and that
    // task fails rather than growing our memory, and so do bodies of task ids garbage invents.
    let mut partial = wire::Reassembly::one_at_a_time(args.max_body);
    let mut done = 0u64;
    let mut lent = answer::LentAnswers::default();
    loop {
        let frame = match args.tasks.get() {
            Ok(f) => f,
            // Closed: the pool is shutting down. Anything else: the ring is unusable; exit and let the
            // parent account for our tasks.
            Err(_) => return,
        };
        let Ok((head, fragment)) = wire::parse(&frame) else {
            continue;
        };
        if head.kind != KIND_TASK {
            continue;
        }
        let Some(body) = partial.push(head.task, head.last, fragment) else {
            continue;
        };
        RUNNING.with(|r| {
            *r.borrow_mut() = Some(Running {
                task: head.task,
                total: 0,
                done: Vec::new(),
            })
        });
        let outcome = body.and_then(|body| run_task(&body, &key));
        RUNNING.with(|r| *r.borrow_mut() = None);
        let encoded = lent.answer(&outcome);
        if wire::fragments(head.task, KIND_RESULT, args.id, &encoded, max_frame, |f| {
            args.results.put(f)
        })
        .is_err()
        {
            return;
        }
        done += 1;
        if args.max_tasks.is_some_and(|m| done >= m) {
            lent.wait_attached();
            return;
        }
    }
}

/// Checks a task's function reference and runs it on its payload, read in place from a shared block
/// when the parent lent one.
fn run_task(body: &[u8], key: &FnKey) -> Result<ItemResults, String> {
    let (f, payload) = wire::decode_task(body).ok_or("a task frame shorter than its header")?;
    match payload {
        PayloadRef::Inline(bytes) => run_fn(f, bytes, key),
        PayloadRef::Shared(handle) => {
            // The parent keeps the block, unchanged, until this task is over: decoding from the
            // mapping is decoding from bytes nobody writes meanwhile.
            let block = SharedArray::<u8>::view(&handle).map_err(|e| e.to_string())?;
            let bytes = block
                .range(0..block.len())
                .ok_or("the lent payload left its block")?;
            run_fn(f, bytes, key)
        }
    }
}

fn run_fn(f: FnRef, payload: &[u8], key: &FnKey) -> Result<ItemResults, String> {
    let (func, adapter) = f
        .resolve::<TaskKind>(key)
        .map_err(|e| e.to_string())?
        .parts();
    adapter(func, payload)
}

/// The initializer `f` as a pool function (run once per worker with an empty payload).
pub(crate) fn init_fn(f: fn()) -> LocalFn<TaskKind> {
    // SAFETY: `init_adapter` calls its address as a `fn()`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, init_adapter) }
}

fn init_adapter(func: FnAddr, _payload: &[u8]) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn()` (`init_fn`).
    let f = unsafe { func.get::<fn()>() };
    f();
    Ok(Vec::new())
}

/// A result in the form of [`item_wire`](super::item_wire) (a `Vec<f64>` as its bytes).
fn encode<R: Serialize>(r: &R) -> Result<ItemBytes, ItemFailure> {
    postcard::to_allocvec(&ValueToWire(r))
        .map(ItemBytes::Owned)
        .map_err(|e| ItemFailure::Failed(format!("cannot encode the result: {e}")))
}

/// The arguments of a payload's items, each decoded in the form of [`item_wire`](super::item_wire).
fn args<A>(items: Vec<ValueFromWire<A>>) -> Vec<A> {
    items.into_iter().map(|a| a.0).collect()
}

/// Not held to the whole payload, as every other message is (`codec::postcard_whole`): a payload lent
/// in a block may end in zeros after its value, where a `Serialize` impl wrote less than it measured
/// (`wire::encode_into`). The bytes are the parent's, whose function reference the worker checked.
fn decode_payload<P: DeserializeOwned>(payload: &[u8]) -> Result<P, String> {
    postcard::from_bytes(payload).map_err(|e| {
        format!(
            "cannot decode the task as {}: {e}",
            std::any::type_name::<P>()
        )
    })
}

/// `map`: `f` over a payload that is a `Vec<A>`.
pub(crate) fn map_fn<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> LocalFn<TaskKind> {
    // SAFETY: `map_adapter::<A, R>` calls its address as a `fn(A) -> R`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, map_adapter::<A, R>) }
}

/// `map`: the payload is a `Vec<A>`; each item is run (and may panic) on its own.
fn map_adapter<A: DeserializeOwned, R: Serialize>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(A) -> R` for these types (`map_fn`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    let items = args(decode_payload(payload)?);
    Ok(run_items(items, |a| {
        catch(move || f(a)).and_then(|r| encode(&r))
    }))
}

/// `map_with`: `f` over a payload that is `(P, Vec<A>)`.
pub(crate) fn map_with_fn<P: DeserializeOwned, A: DeserializeOwned, R: Serialize>(
    f: fn(&P, A) -> R,
) -> LocalFn<TaskKind> {
    // SAFETY: `map_with_adapter::<P, A, R>` calls its address as a `fn(&P, A) -> R`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, map_with_adapter::<P, A, R>) }
}

fn map_with_adapter<P: DeserializeOwned, A: DeserializeOwned, R: Serialize>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(&P, A) -> R` for these types (`map_with_fn`).
    let f = unsafe { func.get::<fn(&P, A) -> R>() };
    let (params, items): (P, Vec<ValueFromWire<A>>) = decode_payload(payload)?;
    let items = args(items);
    Ok(run_items(items, |a| {
        catch(|| f(&params, a)).and_then(|r| encode(&r))
    }))
}

/// `starmap`: `f` over a payload that is a `Vec<(A, B)>`.
pub(crate) fn star_fn<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(
    f: fn(A, B) -> R,
) -> LocalFn<TaskKind> {
    // SAFETY: `star_adapter::<A, B, R>` calls its address as a `fn(A, B) -> R`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, star_adapter::<A, B, R>) }
}

fn star_adapter<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(A, B) -> R` for these types (`star_fn`).
    let f = unsafe { func.get::<fn(A, B) -> R>() };
    let items: Vec<(A, B)> = args(decode_payload(payload)?);
    Ok(run_items(items, |(a, b)| {
        catch(move || f(a, b)).and_then(|r| encode(&r))
    }))
}

/// A part of a shared array lent to a task: where it is, and which elements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ArrayPart {
    pub block: BlockHandle,
    pub start: u64,
    pub end: u64,
}

/// The lent array and the checked range of this task's elements.
fn view<T: Pod>(part: &ArrayPart) -> Result<(SharedArray<T>, std::ops::Range<usize>), String> {
    let a = SharedArray::<T>::view(&part.block).map_err(|e: Error| e.to_string())?;
    let (start, end) = (part.start, part.end);
    if start > end || end > a.len() as u64 {
        return Err(format!(
            "elements {start}..{end} are outside an array of {}",
            a.len()
        ));
    }
    Ok((a, start as usize..end as usize))
}

/// The lent input range and this task's output range, each a slice of just those elements.
fn lent_parts<'a, T: Pod, U: Pod>(
    inp: &'a SharedArray<T>,
    in_range: std::ops::Range<usize>,
    out: &'a mut SharedArray<U>,
    out_range: std::ops::Range<usize>,
) -> Result<(&'a [T], &'a mut [U]), String> {
    let i = inp
        .range(in_range)
        .ok_or("the lent input range left the array")?;
    let o = out
        .range_mut(out_range)
        .ok_or("the lent output range left the array")?;
    Ok((i, o))
}

/// `map_chunks`: `f` over one lent part of an array.
pub(crate) fn chunk_fn<T: Pod, R: Serialize>(f: fn(&[T]) -> R) -> LocalFn<TaskKind> {
    // SAFETY: `chunk_adapter::<T, R>` calls its address as a `fn(&[T]) -> R`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, chunk_adapter::<T, R>) }
}

/// `map_chunks`: the payload is one [`ArrayPart`] (and `()`); the function reads those elements in place.
fn chunk_adapter<T: Pod, R: Serialize>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(&[T]) -> R` for these types (`chunk_fn`).
    let f = unsafe { func.get::<fn(&[T]) -> R>() };
    let (part, ()): (ArrayPart, ()) = decode_payload(payload)?;
    let (a, range) = view::<T>(&part)?;
    // Only this task's elements are referenced, never the whole array (review S5).
    let items = a.range(range).ok_or("the lent range left the array")?;
    Ok(run_items(vec![items], |items| {
        catch(|| f(items)).and_then(|r| encode(&r))
    }))
}

/// `map_chunks_with`: `f` over one lent part of an array, with parameters.
pub(crate) fn chunk_with_fn<T: Pod, P: DeserializeOwned, R: Serialize>(
    f: fn(&P, &[T]) -> R,
) -> LocalFn<TaskKind> {
    // SAFETY: `chunk_with_adapter::<T, P, R>` calls its address as a `fn(&P, &[T]) -> R`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, chunk_with_adapter::<T, P, R>) }
}

fn chunk_with_adapter<T: Pod, P: DeserializeOwned, R: Serialize>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(&P, &[T]) -> R` for these types (`chunk_with_fn`).
    let f = unsafe { func.get::<fn(&P, &[T]) -> R>() };
    run_chunk_with(payload, f)
}

/// A `map_chunks_with` task: `f(params, chunk)` on the lent chunk its payload names.
pub(super) fn run_chunk_with<T: Pod, P: DeserializeOwned, R: Serialize>(
    payload: &[u8],
    f: impl Fn(&P, &[T]) -> R,
) -> Result<ItemResults, String> {
    let (part, params): (ArrayPart, P) = decode_payload(payload)?;
    let (a, range) = view::<T>(&part)?;
    let items = a.range(range).ok_or("the lent range left the array")?;
    Ok(run_items(vec![items], |items| {
        catch(|| f(&params, items)).and_then(|r| encode(&r))
    }))
}

/// `transform`: `f` from a lent input into this task's part of a lent output.
pub(crate) fn transform_fn<T: Pod, U: Pod>(f: fn(&[T], &mut [U], usize)) -> LocalFn<TaskKind> {
    // SAFETY: `transform_adapter::<T, U>` calls its address as a `fn(&[T], &mut [U], usize)`, which `f`
    // is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, transform_adapter::<T, U>) }
}

/// `transform`: the payload is the input part and this task's part of the output (and `()`).
fn transform_adapter<T: Pod, U: Pod>(func: FnAddr, payload: &[u8]) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(&[T], &mut [U], usize)` for these types (`transform_fn`).
    let f = unsafe { func.get::<fn(&[T], &mut [U], usize)>() };
    let (input, output, ()): (ArrayPart, ArrayPart, ()) = decode_payload(payload)?;
    let ((inp, in_range), (mut out, out_range)) = (view::<T>(&input)?, view::<U>(&output)?);
    let start = out_range.start;
    // Slices of this task's elements only: the parent lent the output with disjoint ranges, and other
    // tasks write theirs meanwhile, so a `&mut` to the whole output would alias them (review S5).
    let (i, o) = lent_parts(&inp, in_range, &mut out, out_range)?;
    Ok(run_items(vec![(i, o)], |(i, o)| {
        catch(|| f(i, o, start)).and_then(|()| encode(&()))
    }))
}

/// `transform_with`: as `transform`, with parameters.
pub(crate) fn transform_with_fn<T: Pod, U: Pod, P: DeserializeOwned>(
    f: fn(&P, &[T], &mut [U], usize),
) -> LocalFn<TaskKind> {
    // SAFETY: `transform_with_adapter::<T, U, P>` calls its address as a
    // `fn(&P, &[T], &mut [U], usize)`, which `f` is.
    unsafe { LocalFn::<TaskKind>::pair(f as usize, transform_with_adapter::<T, U, P>) }
}

fn transform_with_adapter<T: Pod, U: Pod, P: DeserializeOwned>(
    func: FnAddr,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: paired only with a `fn(&P, &[T], &mut [U], usize)` for these types
    // (`transform_with_fn`).
    let f = unsafe { func.get::<fn(&P, &[T], &mut [U], usize)>() };
    run_transform_with(payload, f)
}

/// A `transform_with` task: `f(params, input, out, start)` on the lent input and output part its
/// payload names.
pub(super) fn run_transform_with<T: Pod, U: Pod, P: DeserializeOwned>(
    payload: &[u8],
    f: impl Fn(&P, &[T], &mut [U], usize),
) -> Result<ItemResults, String> {
    let (input, output, params): (ArrayPart, ArrayPart, P) = decode_payload(payload)?;
    let ((inp, in_range), (mut out, out_range)) = (view::<T>(&input)?, view::<U>(&output)?);
    let start = out_range.start;
    let (i, o) = lent_parts(&inp, in_range, &mut out, out_range)?;
    Ok(run_items(vec![(i, o)], |(i, o)| {
        catch(|| f(&params, i, o, start)).and_then(|()| encode(&()))
    }))
}
