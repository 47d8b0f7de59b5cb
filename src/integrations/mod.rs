//! Integrations with the data ecosystem, each behind its own cargo feature (all off by default) and
//! each built on the well-kept crate of its field rather than re-implemented:
//!
//! | feature | module | built on | what it gives |
//! |---|---|---|---|
//! | `ndarray` | [`ndarray`](self::ndarray) | `ndarray` | `SharedArray` as `ArrayView`s of any shape, shared n-d arrays, pool maps over axis chunks |
//! | `image` | [`image`](self::image) | `image` | images decoded straight into shared memory as `ImageBuffer`s, processed in row bands |
//! | `npy` | [`npy`] | `npyz` (+ `ndarray`) | `.npy` files mapped from disk, handed to workers with no copy; `.npy` output |
//! | `async` | [`future`] | `futures-core` | `Future` for `AsyncResult` and process joins, `Stream` for `imap` |

#[cfg(feature = "async")]
pub mod future;
#[cfg(feature = "ndarray")]
pub mod ndarray;
#[cfg(feature = "npy")]
pub mod npy;
