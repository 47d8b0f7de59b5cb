//! Array tasks whose user function is called through a wrapper of this crate: the integrations'
//! tasks (an image band, an ndarray view), which hand the user's function slices adapted to its
//! types.
//!
//! The user's function pointer travels as the task's function, signed like any other; the wrapper
//! is named by a type and its code is this crate's. A worker never makes a value from a type alone:
//! until 2026-12-02 the integrations took any zero-sized closure and re-created it in the worker
//! with `mem::zeroed`, which also re-created whatever zero-sized value the closure captured (a token
//! that proves something about the process that made it, say) in a process that never made it
//! (found by review). A function pointer captures nothing, and a capturing closure does not coerce
//! to one, so the compiler refuses it.

use bytemuck::Pod;
use serde::de::DeserializeOwned;
#[cfg(feature = "ndarray")]
use serde::Serialize;

use super::wire::ItemResults;
#[cfg(feature = "ndarray")]
use super::worker::run_chunk_with;
use super::worker::{run_transform_with, TaskKind};
use crate::process::fnref::{FnAddr, LocalFn};

#[cfg(feature = "ndarray")]
/// How a `map_chunks_with` task calls a user's function of type [`User`](ChunkVia::User) on its
/// chunk.
///
/// # Safety
/// `User` must be a function-pointer type (`fn(…) -> …`): its address is what travels to the worker,
/// and the worker calls it as a `User`.
pub(crate) unsafe trait ChunkVia<T, P, R> {
    /// The user's function-pointer type.
    type User: Copy;
    /// Calls `user` on `chunk`, adapted by the task's parameters.
    fn call(user: Self::User, params: &P, chunk: &[T]) -> R;
}

/// How a `transform_with` task calls a user's function of type [`User`](TransformVia::User) on its
/// input and its part of the output.
///
/// # Safety
/// As [`ChunkVia`]: `User` must be a function-pointer type.
pub(crate) unsafe trait TransformVia<T, U, P> {
    /// The user's function-pointer type.
    type User: Copy;
    /// Calls `user` on the input and the output part that starts at element `start`.
    fn call(user: Self::User, params: &P, input: &[T], out: &mut [U], start: usize);
}

/// The address of `f`, a function pointer.
///
/// # Safety
/// `F` must be a function-pointer type (every bit of it is the address, no padding).
unsafe fn fn_addr<F: Copy>(f: F) -> usize {
    const {
        assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>());
    }
    // SAFETY: `F` is a function-pointer type by the caller's contract, of the size of a `usize`
    // (checked at compile time): its bits are the address, all initialised.
    unsafe { std::mem::transmute_copy::<F, usize>(&f) }
}

#[cfg(feature = "ndarray")]
/// The task function of a `map_chunks_with` call that runs `user` through `W`.
pub(crate) fn chunk_via_fn<T, P, R, W>(user: W::User) -> LocalFn<TaskKind>
where
    T: Pod,
    P: DeserializeOwned,
    R: Serialize,
    W: ChunkVia<T, P, R>,
{
    // SAFETY: `W::User` is a function-pointer type (`ChunkVia`'s contract), so `fn_addr` may read it,
    // and `chunk_via_adapter::<T, P, R, W>` calls the address as exactly a `W::User`.
    unsafe { LocalFn::<TaskKind>::pair(fn_addr(user), chunk_via_adapter::<T, P, R, W>) }
}

#[cfg(feature = "ndarray")]
fn chunk_via_adapter<T, P, R, W>(func: FnAddr, payload: &[u8]) -> Result<ItemResults, String>
where
    T: Pod,
    P: DeserializeOwned,
    R: Serialize,
    W: ChunkVia<T, P, R>,
{
    // SAFETY: paired only with a `W::User`, a function-pointer type (`chunk_via_fn`).
    let user = unsafe { func.get::<W::User>() };
    run_chunk_with(payload, |params: &P, chunk: &[T]| {
        W::call(user, params, chunk)
    })
}

/// The task function of a `transform_with` call that runs `user` through `W`.
pub(crate) fn transform_via_fn<T, U, P, W>(user: W::User) -> LocalFn<TaskKind>
where
    T: Pod,
    U: Pod,
    P: DeserializeOwned,
    W: TransformVia<T, U, P>,
{
    // SAFETY: `W::User` is a function-pointer type (`TransformVia`'s contract), so `fn_addr` may read
    // it, and `transform_via_adapter::<T, U, P, W>` calls the address as exactly a `W::User`.
    unsafe { LocalFn::<TaskKind>::pair(fn_addr(user), transform_via_adapter::<T, U, P, W>) }
}

fn transform_via_adapter<T, U, P, W>(func: FnAddr, payload: &[u8]) -> Result<ItemResults, String>
where
    T: Pod,
    U: Pod,
    P: DeserializeOwned,
    W: TransformVia<T, U, P>,
{
    // SAFETY: paired only with a `W::User`, a function-pointer type (`transform_via_fn`).
    let user = unsafe { func.get::<W::User>() };
    run_transform_with(payload, |params: &P, input: &[T], out: &mut [U], start| {
        W::call(user, params, input, out, start)
    })
}
