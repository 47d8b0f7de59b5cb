//! How one task argument is written into a payload: postcard, except a `Vec` of a primitive number
//! type, which travels as its bytes.
//!
//! serde sees a `Vec<f64>` as a sequence of 8 M separate `f64`s: postcard writes and reads them one call
//! at a time, and serde's `Vec` visitor grows its buffer from 1 MiB by doubling (its pre-allocation is
//! capped against hostile lengths), copying what it holds at each step. For the argument a pool user
//! writes first, `fn f(v: Vec<f64>)`, that was half the cost of a `Pool::map` of a 64 MiB vector
//! (issue 12). Both ends of a payload are the same executable with the same argument type `A` (the
//! worker decodes with the adapter monomorphised for the task's function), so they can agree on a
//! different wire form for some `A` without any tag: when `A` *is* `Vec<T>` for a `T` of the list below,
//! the argument is written as postcard bytes (a length, then the elements' memory) and read back with
//! one allocation of exactly that size and one copy.
//!
//! Rust has no specialisation, so "is `A` a `Vec<f64>`" is a [`TypeId`] comparison. `A` need not be
//! `'static` (`parallel::Arr<'a, T>` borrows on the caller's side), so it is `typeid::of::<A>()`: the
//! `TypeId` of `A` with its lifetimes made `'static`. Equal to `TypeId::of::<Vec<f64>>()`, it proves
//! `A` *is* `Vec<f64>`, which has no lifetime to differ in. The list is closed: `Vec<[f32; 3]>` or a
//! user's `Pod` struct still goes element by element (a `SharedArray` and `map_chunks` is the way for
//! those, with no copy at all).
//!
//! The bytes come from another process: their length must be a whole number of elements, and the
//! allocation is the size of bytes that are present in the payload, never a length field's claim.

use std::any::TypeId;
use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use bytemuck::Pod;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Calls `$each!(T)` for every element type whose `Vec` travels as bytes.
macro_rules! for_each_byte_vec_elem {
    ($each:ident) => {
        $each!(u8);
        $each!(i8);
        $each!(u16);
        $each!(i16);
        $each!(u32);
        $each!(i32);
        $each!(u64);
        $each!(i64);
        $each!(u128);
        $each!(i128);
        $each!(usize);
        $each!(isize);
        $each!(f32);
        $each!(f64);
    };
}

/// A slice of items serialized as a sequence of `A` (postcard's `Vec<A>`), each item as
/// [`ValueToWire`], whatever borrows them: the payload of a `map` task.
pub(crate) struct ArgsToWire<'a, A, B>(&'a [B], PhantomData<fn(&A)>);

impl<'a, A, B: Borrow<A>> ArgsToWire<'a, A, B> {
    pub(crate) fn new(items: &'a [B]) -> Self {
        ArgsToWire(items, PhantomData)
    }
}

impl<A: Serialize, B: Borrow<A>> Serialize for ArgsToWire<'_, A, B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|b| ValueToWire(b.borrow())))
    }
}

/// An argument to encode: `Serialize` as the module describes.
pub(crate) struct ValueToWire<'a, A>(pub(crate) &'a A);

impl<A: Serialize> Serialize for ValueToWire<'_, A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match vec_bytes(self.0) {
            Some(bytes) => s.serialize_bytes(bytes),
            None => self.0.serialize(s),
        }
    }
}

/// The memory of `a`'s elements, if `a` is a `Vec` of a listed type.
fn vec_bytes<A>(a: &A) -> Option<&[u8]> {
    macro_rules! try_elem {
        ($t:ty) => {
            if typeid::of::<A>() == TypeId::of::<Vec<$t>>() {
                // SAFETY: `A` with its lifetimes made `'static` is `Vec<$t>`, which has no lifetimes:
                // `A` is `Vec<$t>` (the module's comment), so the reference points at one.
                let v = unsafe { &*std::ptr::from_ref(a).cast::<Vec<$t>>() };
                return Some(bytemuck::cast_slice::<$t, u8>(v));
            }
        };
    }
    for_each_byte_vec_elem!(try_elem);
    None
}

/// A decoded argument: `Deserialize` as the module describes.
#[repr(transparent)]
pub(crate) struct ValueFromWire<A>(pub(crate) A);

impl<'de, A: DeserializeOwned> Deserialize<'de> for ValueFromWire<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        macro_rules! try_elem {
            ($t:ty) => {
                if typeid::of::<A>() == TypeId::of::<Vec<$t>>() {
                    let v = d.deserialize_bytes(VecFromBytes::<$t>(PhantomData))?;
                    let v = std::mem::ManuallyDrop::new(v);
                    // SAFETY: `A` is `Vec<$t>` (as in `vec_bytes`): reading the `Vec` as an `A` moves
                    // it, and `ManuallyDrop` keeps the original from being dropped as well.
                    return Ok(ValueFromWire(unsafe {
                        std::ptr::read(std::ptr::from_ref(&*v).cast::<A>())
                    }));
                }
            };
        }
        for_each_byte_vec_elem!(try_elem);
        A::deserialize(d).map(ValueFromWire)
    }
}

/// Builds a `Vec<T>` from the bytes of its elements.
struct VecFromBytes<T>(PhantomData<T>);

impl<T: Pod> Visitor<'_> for VecFromBytes<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the bytes of a Vec<{}> (a multiple of {} bytes)",
            std::any::type_name::<T>(),
            std::mem::size_of::<T>()
        )
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<T>, E> {
        let size = std::mem::size_of::<T>();
        if size == 0 || !bytes.len().is_multiple_of(size) {
            return Err(E::invalid_length(bytes.len(), &self));
        }
        let n = bytes.len() / size;
        let mut v = Vec::<T>::with_capacity(n);
        // SAFETY: `v` has room for `n` elements, `n * size_of::<T>() == bytes.len()` bytes, in a new
        // allocation that cannot overlap `bytes`; a byte copy needs no alignment of the source. `T` is
        // `Pod`, so any bytes are a valid `T`: after the copy the first `n` elements are initialised,
        // which is what `set_len(n)` asserts.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
            v.set_len(n);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<A: Serialize + DeserializeOwned>(a: &A) -> (Vec<u8>, A) {
        let bytes = postcard::to_allocvec(&ValueToWire(a)).unwrap();
        let back: ValueFromWire<A> = postcard::from_bytes(&bytes).unwrap();
        (bytes, back.0)
    }

    #[test]
    fn vectors_of_numbers_travel_as_their_bytes() {
        let v: Vec<f64> = (0..1000).map(|i| i as f64 * 0.5 - 3.0).collect();
        let (bytes, back) = round_trip(&v);
        assert_eq!(back, v);
        // A varint length (8000 takes two bytes), then the elements' memory.
        assert_eq!(bytes.len(), 2 + 8000);
        assert_eq!(&bytes[2..10], &v[0].to_ne_bytes());

        let small: Vec<u16> = vec![1, 300, 65535];
        let (bytes, back) = round_trip(&small);
        assert_eq!(back, small);
        assert_eq!(bytes.len(), 1 + 6, "fixed width, not postcard's varints");
        let empty: Vec<i128> = Vec::new();
        assert_eq!(round_trip(&empty).1, empty);
    }

    #[test]
    fn other_arguments_are_plain_postcard() {
        let args = (vec![1.0f64, 2.0], "x".to_owned());
        let (bytes, back) = round_trip(&args);
        assert_eq!(back, args);
        assert_eq!(bytes, postcard::to_allocvec(&args).unwrap());
        let points: Vec<[f32; 2]> = vec![[1.0, 2.0]];
        let (bytes, back) = round_trip(&points);
        assert_eq!(back, points);
        assert_eq!(bytes, postcard::to_allocvec(&points).unwrap());
    }

    #[test]
    fn bytes_that_are_not_whole_elements_do_not_decode() {
        // 7 bytes claimed and present: not a whole f64.
        let forged = [7u8, 1, 2, 3, 4, 5, 6, 7];
        assert!(postcard::from_bytes::<ValueFromWire<Vec<f64>>>(&forged).is_err());
        // A length longer than what follows: postcard refuses before anything is allocated.
        let forged = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        assert!(postcard::from_bytes::<ValueFromWire<Vec<u32>>>(&forged).is_err());
    }
}
