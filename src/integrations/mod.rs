//! Integrations with the data ecosystem, each behind its own cargo feature (all off by default) and
//! each built on the well-kept crate of its field rather than re-implemented:
//!
//! | feature | module | built on | what it gives |
//! |---|---|---|---|
//! | `ndarray` | `ndarray` | `ndarray` | `SharedArray` as `ArrayView`s of any shape, shared n-d arrays, pool maps over axis chunks |
//! | `image` | `image` | `image` | images decoded straight into shared memory as `ImageBuffer`s, processed in row bands |
//! | `npy` | `npy` | `npyz` (+ `ndarray`) | `.npy` files mapped from disk, handed to workers with no copy; `.npy` output |
//! | `async` | `future` | `futures-core` | `Future` for `AsyncResult` and process joins, `Stream` for `imap` |
//! | `progress` | `progress` | `indicatif` | a progress bar for every call of a `Pool` (`PoolBuilder::progress_bar`) |
//!
//! # Examples
//! Turn a feature on in `Cargo.toml` (`mproc = { version = "0.1", features = ["ndarray"] }`), and a
//! shared array becomes an `ndarray` view in place:
//! ```
//! let a = mproc::SharedArray::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! #[cfg(feature = "ndarray")]
//! {
//!     let m = a.as_array((2, 3))?; // 2 rows of 3, no copy
//!     assert_eq!(m[[1, 0]], 4.0);
//! }
//! assert_eq!(a.len(), 6);
//! # Ok::<(), mproc::Error>(())
//! ```

#[cfg(feature = "async")]
pub mod future;
#[cfg(feature = "image")]
pub mod image;
#[cfg(feature = "ndarray")]
pub mod ndarray;
#[cfg(feature = "npy")]
pub mod npy;
#[cfg(feature = "progress")]
pub mod progress;

/// The value of a zero-sized `Copy` type: how a worker gets the function it was sent, from the
/// function's type alone (the type is the function: a `fn` item or a non-capturing closure).
///
/// Capturing closures are refused at compile time (they are not zero-sized), so nothing the caller
/// captured is ever conjured here.
#[cfg(any(feature = "ndarray", feature = "image"))]
pub(crate) fn conjure<F: Copy>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a function handed to workers must be a `fn` item or a closure that captures nothing \
             (it captures data)"
        )
    };
    // SAFETY: `F` is zero-sized (checked at compile time), so a value of it has no bytes to be
    // invalid: the value is its type. `F` is inhabited, since the caller handed us one (every API
    // that reaches this takes an `F` by value), and `Copy`, so it has no destructor and making one
    // more is exactly what copying the caller's would do. The types this is used for are `Fn` items
    // and closures, which carry no safety invariant beyond their (empty) captures.
    unsafe { std::mem::zeroed::<F>() }
}
