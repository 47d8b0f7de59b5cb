//! The worker process: its main loop, and the adapters ("trampolines") that run one task.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::wire::{self, FnRef, ItemFailure, ItemResults, KIND_RESULT, KIND_TASK};
use crate::codec::RawSlice;
use crate::error::Error;
use crate::heap::{BlockHandle, SharedArray};
use crate::process::bootstrap;
use crate::queue::Queue;
use crate::sys::process as psys;

/// A byte-frame ring, the transport of every pool message.
pub(crate) type FrameQueue = Queue<Vec<u8>, RawSlice<u8>>;

/// The adapter of one kind of task: runs the user's function at `func` on a payload and encodes the
/// per-item results. `Err` means the whole task could not run (its items all fail with the message).
pub(crate) type Trampoline = fn(func: usize, payload: &[u8]) -> Result<ItemResults, String>;

/// What a worker is started with (through the spawn task, i.e. private to parent and worker).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub tasks: FrameQueue,
    pub results: FrameQueue,
    /// The MAC key for function references.
    pub key: (u64, u64),
    /// Offset of the initializer `fn()` from the anchor, if any.
    pub initializer: Option<i64>,
    /// Exit after this many tasks (the parent starts a fresh worker).
    pub max_tasks: Option<u64>,
}

thread_local! {
    /// The message and location of the last panic on this thread, recorded by the worker's hook.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
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
        let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some((message, location)));
    }));
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

/// The worker's main function, run in a spawned child. Returns when the parent closes its task ring or
/// after `max_tasks` tasks; the parent sees the exit and decides whether to start another.
pub(crate) fn worker_main(args: WorkerArgs) {
    install_panic_hook();
    if let Some(init) = args.initializer {
        let f = bootstrap::anchor_addr().wrapping_add_signed(init as isize);
        if psys::object_base(f) != psys::object_base(bootstrap::anchor_addr()) {
            std::process::exit(3);
        }
        // SAFETY: the parent took `init` from a `fn()` of this same executable (the spawn bootstrap
        // checked we run the same file), and it came through the spawn task, private to the two of us.
        let init = unsafe { std::mem::transmute::<usize, fn()>(f) };
        init();
    }
    let max_frame = args.results.max_message_size();
    let mut partial: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut done = 0u64;
    loop {
        let frame = match args.tasks.get() {
            Ok(f) => f,
            // Closed: the pool is shutting down. Anything else: the ring is unusable; exit and let the
            // parent account for our tasks.
            Err(_) => return,
        };
        let Ok((head, body)) = wire::parse(&frame) else {
            continue;
        };
        if head.kind != KIND_TASK {
            continue;
        }
        let buf = partial.entry(head.task).or_default();
        buf.extend_from_slice(body);
        if !head.last {
            continue;
        }
        let body = partial.remove(&head.task).unwrap_or_default();
        let outcome = run_task(&body, args.key);
        let encoded = match postcard::to_allocvec(&outcome) {
            Ok(v) => v,
            Err(e) => postcard::to_allocvec(&Err::<ItemResults, String>(e.to_string()))
                .unwrap_or_default(),
        };
        if wire::fragments(head.task, KIND_RESULT, &encoded, max_frame, |f| {
            args.results.put(f)
        })
        .is_err()
        {
            return;
        }
        done += 1;
        if args.max_tasks.is_some_and(|m| done >= m) {
            return;
        }
    }
}

/// Checks a task's function reference and runs it.
fn run_task(body: &[u8], key: (u64, u64)) -> Result<ItemResults, String> {
    let (f, payload) = wire::decode_task(body).ok_or("a task frame shorter than its header")?;
    if wire::mac(key, f.func, f.tramp) != f.mac {
        return Err("the task's function reference failed its authentication check".into());
    }
    let anchor = bootstrap::anchor_addr();
    let func = anchor.wrapping_add_signed(f.func as isize);
    let tramp = anchor.wrapping_add_signed(f.tramp as isize);
    let base = psys::object_base(anchor);
    if psys::object_base(func) != base || psys::object_base(tramp) != base {
        return Err("function offsets point outside the executable".into());
    }
    // SAFETY: the MAC proves the parent made this pair with the pool's key, from a `Trampoline` and the
    // function it adapts, both in this executable file (which the spawn bootstrap checked we run), so
    // the same offsets from the anchor are the same functions here.
    let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(tramp) };
    tramp(func, payload)
}

/// The offset of the function at `func` from the anchor.
///
/// # Panics
/// If `func` is not code of the main executable (a function of a dynamic library has no stable offset).
#[track_caller]
pub(crate) fn exe_offset(func: usize) -> i64 {
    let anchor = bootstrap::anchor_addr();
    let base = psys::object_base(anchor);
    assert!(
        base.is_some() && psys::object_base(func) == base,
        "mproc: a pool can only run functions of the main executable"
    );
    func as i64 - anchor as i64
}

/// A function reference for `func` run through `tramp`, authenticated with `key`.
///
/// # Panics
/// As [`exe_offset`].
#[track_caller]
pub(crate) fn fn_ref(key: (u64, u64), func: usize, tramp: Trampoline) -> FnRef {
    let func = exe_offset(func);
    let tramp = exe_offset(tramp as usize);
    FnRef {
        func,
        tramp,
        mac: wire::mac(key, func, tramp),
    }
}

fn encode<R: Serialize>(r: &R) -> Result<Vec<u8>, ItemFailure> {
    postcard::to_allocvec(r)
        .map_err(|e| ItemFailure::Failed(format!("cannot encode the result: {e}")))
}

fn decode_payload<P: DeserializeOwned>(payload: &[u8]) -> Result<P, String> {
    postcard::from_bytes(payload).map_err(|e| {
        format!(
            "cannot decode the task as {}: {e}",
            std::any::type_name::<P>()
        )
    })
}

/// `map`: the payload is a `Vec<A>`; each item is run (and may panic) on its own.
pub(crate) fn map_tramp<A: DeserializeOwned, R: Serialize>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: `func` is a `fn(A) -> R` for exactly these types: the parent pairs this trampoline with the
    // function in `Pool::submit_map`, and the pair is authenticated (see `run_task`).
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let items: Vec<A> = decode_payload(payload)?;
    Ok(items
        .into_iter()
        .map(|a| catch(move || f(a)).and_then(|r| encode(&r)))
        .collect())
}

/// `starmap`: the payload is a `Vec<(A, B)>`.
pub(crate) fn star_tramp<A: DeserializeOwned, B: DeserializeOwned, R: Serialize>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: as in `map_tramp`, for a `fn(A, B) -> R`.
    let f = unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(func) };
    let items: Vec<(A, B)> = decode_payload(payload)?;
    Ok(items
        .into_iter()
        .map(|(a, b)| catch(move || f(a, b)).and_then(|r| encode(&r)))
        .collect())
}

/// A part of a shared array lent to a task: where it is, and which elements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ArrayPart {
    pub block: BlockHandle,
    pub start: u64,
    pub end: u64,
}

fn view<T: Pod>(part: &ArrayPart) -> Result<(SharedArray<T>, std::ops::Range<usize>), String> {
    let a = SharedArray::<T>::view(&part.block).map_err(|e: Error| e.to_string())?;
    let (start, end) = (part.start as usize, part.end as usize);
    if start > end || end > a.len() {
        return Err(format!(
            "elements {start}..{end} are outside an array of {}",
            a.len()
        ));
    }
    Ok((a, start..end))
}

/// `map_chunks`: the payload is one [`ArrayPart`] (and `()`); the function reads those elements in place.
pub(crate) fn chunk_tramp<T: Pod, R: Serialize>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: as in `map_tramp`, for a `fn(&[T]) -> R` (paired in `Pool::map_chunks`).
    let f = unsafe { std::mem::transmute::<usize, fn(&[T]) -> R>(func) };
    let (part, ()): (ArrayPart, ()) = decode_payload(payload)?;
    let (a, range) = view::<T>(&part)?;
    Ok(vec![catch(|| f(&a[range])).and_then(|r| encode(&r))])
}

/// `map_chunks_with`: the payload is one [`ArrayPart`] and the parameters.
pub(crate) fn chunk_with_tramp<T: Pod, P: DeserializeOwned, R: Serialize>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: as in `map_tramp`, for a `fn(&P, &[T]) -> R` (paired in `Pool::map_chunks_with`).
    let f = unsafe { std::mem::transmute::<usize, fn(&P, &[T]) -> R>(func) };
    let (part, params): (ArrayPart, P) = decode_payload(payload)?;
    let (a, range) = view::<T>(&part)?;
    Ok(vec![
        catch(|| f(&params, &a[range])).and_then(|r| encode(&r))
    ])
}

/// `transform`: the payload is the whole input and this task's part of the output (and `()`); the
/// function reads any of the input and writes only its own output elements.
pub(crate) fn transform_tramp<T: Pod, U: Pod>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: as in `map_tramp`, for a `fn(&[T], &mut [U], usize)` (paired in `Pool::transform`).
    let f = unsafe { std::mem::transmute::<usize, fn(&[T], &mut [U], usize)>(func) };
    let (input, output, ()): (ArrayPart, ArrayPart, ()) = decode_payload(payload)?;
    // The parent holds `&input` and `&mut output` for the whole call and gives each task a disjoint
    // output range, so this task's `&mut` is the only one to these elements anywhere.
    let ((inp, in_range), (mut out, out_range)) = (view::<T>(&input)?, view::<U>(&output)?);
    let start = out_range.start;
    Ok(vec![catch(|| {
        f(&inp[in_range], &mut out[out_range], start)
    })
    .and_then(|()| encode(&()))])
}

/// `transform_with`: as `transform`, with the parameters.
pub(crate) fn transform_with_tramp<T: Pod, U: Pod, P: DeserializeOwned>(
    func: usize,
    payload: &[u8],
) -> Result<ItemResults, String> {
    // SAFETY: as in `map_tramp`, for a `fn(&P, &[T], &mut [U], usize)` (paired in
    // `Pool::transform_with`).
    let f = unsafe { std::mem::transmute::<usize, fn(&P, &[T], &mut [U], usize)>(func) };
    let (input, output, params): (ArrayPart, ArrayPart, P) = decode_payload(payload)?;
    // Disjoint output ranges under the parent's `&mut`: see `transform_tramp`.
    let ((inp, in_range), (mut out, out_range)) = (view::<T>(&input)?, view::<U>(&output)?);
    let start = out_range.start;
    Ok(vec![catch(|| {
        f(&params, &inp[in_range], &mut out[out_range], start)
    })
    .and_then(|()| encode(&()))])
}
