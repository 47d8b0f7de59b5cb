//! What a spawned function may take as its argument: [`ProcessArg`].
//!
//! A spawned (or forked, or fork-served) child runs **one** call and then exits, so whatever the
//! argument borrows can be kept alive until the child exits. That makes borrowed arguments sound for any
//! function pointer, which a pool worker (many calls, one process) cannot offer; see
//! [`PoolArg`](crate::pool::PoolArg) for the pool's rule.
//!
//! Why the shapes are these, and not "any `&T`, `&str` or `&[T]`": `&str` and `&[u8]` already implement
//! serde's `Deserialize<'static>` (they borrow from the input), so they travel as the blanket case. A
//! second impl for `&[T]` would overlap with it for `&[u8]`, and rustc, which ignores lifetimes while
//! choosing an impl, would answer "type annotations needed" for every `fn(&[u8])`. So slices of other
//! element types are refused with a message that says to take a `Vec<T>`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The markers that keep the two impls of [`ProcessArg`] apart (a type is one or the other; the
/// compiler infers which). Public because they appear in public impls, in a private module because
/// nobody needs to name them.
pub(crate) mod kind {
    /// A type that decodes itself: any owned serde type, `&str`, `&[u8]`, `Cow<str>`, `#[serde(borrow)]`
    /// structs.
    #[derive(Debug)]
    pub enum Value {}
    /// `&T` for an owned serde `T`: decoded as a `T` that the child keeps until it exits.
    #[derive(Debug)]
    pub enum Ref {}
}

mod sealed {
    /// The decoding half of [`ProcessArg`](super::ProcessArg), private so that the trait stays sealed
    /// and this method is no public API.
    pub trait Decode<M>: Sized {
        /// Decodes the argument from bytes that stay allocated until this process exits: whatever the
        /// result borrows, from these bytes or from a value leaked here, outlives every use the
        /// function can make of it, including one stashed in a `static` or handed to a thread.
        /// All of `bytes` must be the argument: bytes left over are an error (why, as text), as they
        /// are for every message the crate decodes.
        fn decode_kept(bytes: &'static [u8]) -> Result<Self, String>;
    }
}

#[cfg(test)]
use sealed::Decode;

/// A type a spawned function can take as its argument (see [`Process::new`](crate::Process::new)).
///
/// Implemented (and only implementable here) for:
/// - every owned serde type (`Serialize + DeserializeOwned`): `u64`, `String`, `Vec<T>`, your
///   `#[derive(Serialize, Deserialize)]` structs, tuples of these, shared objects such as
///   [`RegionHandle`](crate::RegionHandle);
/// - `&str`, `&[u8]`, `Cow<str>` and structs whose fields borrow with `#[serde(borrow)]`: anything that is
///   `Deserialize<'static>`, decoded in place from the child's copy of the argument bytes;
/// - `&T` for an owned serde `T` (`fn show(c: &Config)`): the child decodes a `T` and lends it.
///
/// The child keeps the argument until it exits (it runs one call), so a borrowed argument is sound
/// whatever the function does with the reference.
///
/// `&[T]` other than `&[u8]` is refused: take `Vec<T>` (or a [`SharedArray`](crate::SharedArray), lent by
/// handle, for large arrays). `&mut T` is refused: a child cannot write into its parent's value; return
/// the new value instead. rustc says so:
///
/// ```text
/// error[E0277]: `&[f64]` cannot be the argument of a spawned function
///   |     Process::new(total, &v)
///   |     ^^^^^^^^^^^^ the function takes `&[f64]`
///   = note: a spawned function takes an owned serde type, `&str`, `&[u8]` or `&T` (T an owned serde type)
///   = note: for `&[T]` take `Vec<T>` (or lend a `SharedArray`); for `&mut T` take `T` and return the new value
/// ```
///
/// # Examples
/// ```
/// use mproc::Process;
///
/// fn greet(name: &str) -> String {
///     format!("hello, {name}")
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Config {
///     scale: u32,
/// }
///
/// fn scaled(c: &Config) -> u32 {
///     c.scale * 10
/// }
///
/// let mut p = Process::new(greet, "Bob")?;
/// p.start()?;
/// assert_eq!(p.join()?, "hello, Bob");
///
/// let mut p = Process::new(scaled, &Config { scale: 4 })?;
/// p.start()?;
/// assert_eq!(p.join()?, 40);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A slice of anything but bytes does not compile; take a `Vec`:
/// ```compile_fail,E0277
/// fn total(v: &[f64]) -> f64 {
///     v.iter().sum()
/// }
/// let v = vec![1.0, 2.0];
/// let p = mproc::Process::new(total, &v);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the argument of a spawned function",
    label = "the function takes `{Self}`",
    note = "a spawned function takes an owned serde type, `&str`, `&[u8]` or `&T` (T an owned serde type)",
    note = "for `&[T]` take `Vec<T>` (or lend a `SharedArray`); for `&mut T` take `T` and return the new value"
)]
pub trait ProcessArg<M>: Serialize + sealed::Decode<M> {}

impl<T: Serialize + Deserialize<'static>> sealed::Decode<kind::Value> for T {
    fn decode_kept(bytes: &'static [u8]) -> Result<T, String> {
        crate::codec::postcard_exact(bytes)
    }
}

impl<T: Serialize + Deserialize<'static>> ProcessArg<kind::Value> for T {}

impl<'a, T: Serialize + DeserializeOwned> sealed::Decode<kind::Ref> for &'a T {
    fn decode_kept(bytes: &'static [u8]) -> Result<&'a T, String> {
        // Leaked, not dropped: the function may keep the reference (a `fn(&'static T)` can), and the
        // child exits after this one call, so nothing accumulates.
        Ok(Box::leak(Box::new(crate::codec::postcard_exact::<T>(
            bytes,
        )?)))
    }
}

impl<T: Serialize + DeserializeOwned> ProcessArg<kind::Ref> for &T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept<A: ProcessArg<M>, M>(a: A) -> A {
        let bytes: &'static [u8] = Vec::leak(postcard::to_allocvec(&a).unwrap());
        A::decode_kept(bytes).unwrap()
    }

    #[test]
    fn owned_borrowed_in_place_and_by_reference_round_trip() {
        assert_eq!(kept(42u64), 42);
        assert_eq!(kept("Bob"), "Bob");
        assert_eq!(kept(&b"\x00\xff"[..]), b"\x00\xff");
        assert_eq!(*kept(&7u64), 7);
        assert_eq!(kept(&vec![1.5f64, 2.5]), &vec![1.5, 2.5]);
        assert_eq!(
            kept(std::borrow::Cow::Borrowed("cow")),
            std::borrow::Cow::<str>::Borrowed("cow")
        );
    }

    fn double(x: u64) -> u64 {
        x * 2
    }

    /// `a`'s encoding and one byte more, kept as argument bytes are.
    fn with_a_byte_over<A: Serialize + ?Sized>(a: &A) -> &'static [u8] {
        let mut bytes = postcard::to_allocvec(a).unwrap();
        bytes.push(0);
        Vec::leak(bytes)
    }

    /// Found by review: bytes after the argument were ignored, where every other message the crate
    /// decodes must be its value whole.
    #[test]
    fn bytes_left_over_after_the_argument_are_refused() {
        let e = <u64 as Decode<kind::Value>>::decode_kept(with_a_byte_over(&42u64)).unwrap_err();
        assert!(e.contains("1 bytes left over"), "{e}");
        assert!(<&str as Decode<kind::Value>>::decode_kept(with_a_byte_over("Bob")).is_err());
        let v = vec![1.5f64];
        assert!(<&Vec<f64> as Decode<kind::Ref>>::decode_kept(with_a_byte_over(&v)).is_err());
        // Through a spawn target's adapter: the failure the parent reports as `Error::Decode`.
        let (f, adapter) = super::super::bootstrap::spawn_fn(double).parts();
        assert!(matches!(
            adapter(f, with_a_byte_over(&21u64)),
            Err(super::super::bootstrap::Failure::ArgDecode(..))
        ));
        assert!(adapter(f, Vec::leak(postcard::to_allocvec(&21u64).unwrap())).is_ok());
    }

    #[test]
    fn a_str_decodes_in_place_from_the_kept_bytes() {
        let bytes: &'static [u8] = Vec::leak(postcard::to_allocvec("in place").unwrap());
        let s = <&str as Decode<kind::Value>>::decode_kept(bytes).unwrap();
        assert!(bytes.as_ptr_range().contains(&s.as_ptr()));
    }
}
