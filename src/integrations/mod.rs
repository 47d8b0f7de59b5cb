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
