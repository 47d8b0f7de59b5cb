//! How a value becomes bytes in shared memory.
//!
//! A [`Codec`] turns a `T` into bytes and back. Two are provided:
//! - [`Serde`] (the default): any `T: Serialize + DeserializeOwned`, in postcard's compact binary format;
//! - [`Raw`]: any `T: bytemuck::Pod`, as its raw bytes — no serialization at all, one `memcpy` each way.
//!   [`RawSlice`] does the same for a `Vec<T: Pod>` of any length.
//!
//! Decoding never trusts its input: bytes of the wrong length or that do not parse are an
//! [`Error::Decode`] naming the expected type, never a panic.
//!
//! # Examples
//! A queue picks its codec by its second type parameter:
//! ```
//! use mproc::codec::{Raw, RawSlice, Serde};
//! use mproc::Queue;
//!
//! let text: Queue<String, Serde> = Queue::new(4)?; // same as Queue<String>
//! let points: Queue<[f32; 2], Raw> = Queue::new(4)?;
//! let samples: Queue<Vec<u16>, RawSlice<u16>> = Queue::with_max_message(4, 64)?;
//! text.put(&"hi".to_owned())?;
//! points.put(&[1.0, 2.0])?;
//! samples.put(&vec![7, 8, 9])?;
//! assert_eq!(samples.get()?, vec![7, 8, 9]);
//! # Ok::<(), mproc::Error>(())
//! ```

use std::marker::PhantomData;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Converts values of `T` to and from bytes.
///
/// # Examples
/// A codec is used through its associated functions; the queue and the manager call them for you.
/// ```
/// use mproc::codec::{Codec, Serde};
///
/// let bytes = Serde::with_bytes(&(1u8, "two".to_owned()), |b| b.to_vec())?;
/// let back: (u8, String) = Serde::decode(&bytes)?;
/// assert_eq!(back, (1, "two".to_owned()));
/// # Ok::<(), mproc::Error>(())
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// A name for the format, part of a queue's type check (a queue of one codec will not open as another).
    const NAME: &'static str;

    /// The largest message a queue of this codec accepts unless told otherwise.
    ///
    /// # Examples
    /// ```
    /// use mproc::codec::{Codec, Raw, Serde};
    /// assert_eq!(<Raw as Codec<u64>>::default_max_size(), 8); // exactly one value
    /// assert_eq!(<Serde as Codec<String>>::default_max_size(), 1024);
    /// ```
    fn default_max_size() -> usize {
        1024
    }

    /// Whether a queue of this codec spills a message too large for its slots to a block of its own
    /// (every public codec does). The pool's internal frame codec says no: its writers cut every
    /// message into frames that fit a slot, so its (bounded) queues need no blocks, and so no anchor
    /// file in `/dev/shm` that a killed pool would leave behind. An unbounded queue keeps its messages
    /// in blocks whatever its codec, so it holds an anchor regardless.
    #[doc(hidden)]
    const SPILLS: bool = true;

    /// Calls `f` with the encoded bytes of `value` (a codec may borrow them from `value` itself).
    ///
    /// # Errors
    /// [`Error::Encode`] if the value cannot be encoded.
    ///
    /// # Examples
    /// ```
    /// use mproc::codec::{Codec, Raw};
    /// let len = Raw::with_bytes(&[1u32, 2, 3], |bytes| bytes.len())?;
    /// assert_eq!(len, 12); // the value's own bytes, borrowed
    /// # Ok::<(), mproc::Error>(())
    /// ```
    fn with_bytes<R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> Result<R>;

    /// Decodes a value from `bytes`.
    ///
    /// # Errors
    /// [`Error::Decode`] if the bytes are not a valid encoding of a `T`.
    ///
    /// # Examples
    /// Bytes that do not parse are an error naming the type, never a panic:
    /// ```
    /// use mproc::codec::{Codec, Raw};
    /// assert_eq!(<Raw as Codec<u16>>::decode(&[1, 0])?, 1);
    /// let err = <Raw as Codec<u16>>::decode(&[1, 0, 0]).unwrap_err();
    /// assert!(matches!(err, mproc::Error::Decode { .. }));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    fn decode(bytes: &[u8]) -> Result<T>;

    /// Decodes a value from `bytes` onto the end of `out`: what `Queue::get_many` calls for each
    /// message. A codec may write the value in place instead of returning it (a 64-byte value passed
    /// back by `decode` was copied more often than its bytes were read).
    ///
    /// # Errors
    /// As [`Codec::decode`]; `out` is unchanged then.
    #[doc(hidden)]
    fn decode_push(bytes: &[u8], out: &mut Vec<T>) -> Result<()> {
        out.push(Self::decode(bytes)?);
        Ok(())
    }
}

// Decoding untrusted bytes (review H5). postcard allocates no more than its input can justify: serde
// caps pre-allocation at 1 MiB (`size_hint::cautious`) and every element of a sequence consumes at
// least one input byte, except zero-sized ones. Two limits remain, and they are the caller's choice of
// type, not the peer's: a recursive user type can nest as deep as the input is long (stack overflow on
// a forged message), and a `Vec` of a zero-sized type with a forged length loops that many times. Every
// channel that carries peer bytes caps their length (a queue's slot size, a pool's `MAX_MESSAGE_BYTES`,
// a spawn task's 1 GiB), which bounds the first; types sent between processes should not be recursive
// or zero-sized, and the crate's own wire types are neither.

/// The serde codec: postcard's compact binary format.
///
/// # Examples
/// Any serde type, your own included:
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, path: String }
///
/// let q: mproc::Queue<Job> = mproc::Queue::new(8)?; // the codec defaults to `Serde`
/// q.put(&Job { id: 1, path: "a.png".into() })?;
/// assert_eq!(q.get()?, Job { id: 1, path: "a.png".into() });
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Serde;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The capacity a thread's encoding buffer keeps from one message to the next. A larger encoding (a
/// message that spills to a block of its own) gets a buffer of its size for that message only: kept,
/// one 1 GiB value held 1 GiB of the thread's memory for the thread's life (found by review).
const SCRATCH_KEEP: usize = 1 << 20;

/// Calls `f` with the postcard encoding of `value`, in a buffer reused per thread: a steady stream of
/// messages up to [`SCRATCH_KEEP`] allocates nothing.
///
/// The buffer is taken out of the thread's slot while `value` is encoded and `f` runs, not borrowed
/// across them: an encoding inside `f` or inside a `Serialize` impl (a `put` while encoding) finds the
/// slot empty and grows a buffer of its own, where a borrow held across `f` failed it with
/// "re-entrant encode". And while the thread's locals are destroyed (a value encoded in the `Drop` of
/// another thread-local, after the slot's own destructor ran), the slot is gone: `try_with` then gives
/// a fresh buffer, where `with` panicked — and a panic in a thread-local's destructor aborts the
/// process (both found by review).
fn postcard_with_bytes<T: Serialize + ?Sized, R>(
    value: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    let taken = SCRATCH
        .try_with(std::cell::RefCell::take)
        .unwrap_or_default();
    let mut out = postcard::to_extend(value, taken).map_err(|e| Error::Encode(e.to_string()))?;
    let r = f(&out);
    out.clear();
    if out.capacity() > SCRATCH_KEEP {
        out.shrink_to(SCRATCH_KEEP);
    }
    // Gone already (the thread's locals are being destroyed): the buffer is simply freed.
    let _ = SCRATCH.try_with(|cell| cell.replace(out));
    Ok(r)
}

impl<T: Serialize + DeserializeOwned> Codec<T> for Serde {
    const NAME: &'static str = "postcard";

    fn with_bytes<R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        postcard_with_bytes(value, f)
    }

    fn decode(bytes: &[u8]) -> Result<T> {
        postcard_whole(bytes)
    }
}

/// Decodes `bytes`, all of them, as one postcard `T`. The whole message must be the value: bytes left
/// over mean a message of another type or a forged one (found by review: `postcard::from_bytes`
/// ignored them, where `Raw` refuses a wrong length). `T` may borrow from `bytes` (`&str`, `&[u8]`).
pub(crate) fn postcard_whole<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    postcard_exact(bytes).map_err(|reason| Error::Decode {
        ty: std::any::type_name::<T>().into(),
        reason,
    })
}

/// [`postcard_whole`] for a caller that reports the failure in its own form: the value, or why the
/// bytes are not exactly one.
pub(crate) fn postcard_exact<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
) -> std::result::Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes left over after the value", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// How a codec encodes a *borrowed form* `Q` of a key, for lookups: `dict.get("ada")` in a
/// `Dict<String, _>`. The encoding of `Q` must equal the encoding of the key that borrows as it, as
/// `str` and `String`, `[T]` and `Vec<T>`, `T` and `Box<T>` do under serde (the same contract as
/// `Borrow` with `Hash` and `Eq`).
///
/// # Examples
/// ```
/// let m = mproc::Manager::anonymous(1 << 20)?;
/// let d = m.dict::<String, u32>("ages")?;
/// d.insert(&"ada".to_owned(), &36)?;
/// assert_eq!(d.get("ada")?, Some(36)); // a `&str`, no `String` needed
/// # Ok::<(), mproc::Error>(())
/// ```
pub trait KeyCodec<Q: ?Sized> {
    /// Calls `f` with the encoded bytes of `key`.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be encoded.
    ///
    /// # Examples
    /// A `&str` encodes to the same bytes as the `String` it borrows from:
    /// ```
    /// use mproc::codec::{KeyCodec, Serde};
    /// let a = <Serde as KeyCodec<str>>::with_key_bytes("ada", |b| b.to_vec())?;
    /// let b = <Serde as KeyCodec<String>>::with_key_bytes(&"ada".to_owned(), |b| b.to_vec())?;
    /// assert_eq!(a, b);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    fn with_key_bytes<R>(key: &Q, f: impl FnOnce(&[u8]) -> R) -> Result<R>;
}

impl<Q: Serialize + ?Sized> KeyCodec<Q> for Serde {
    fn with_key_bytes<R>(key: &Q, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        postcard_with_bytes(key, f)
    }
}

impl<Q: Pod> KeyCodec<Q> for Raw {
    fn with_key_bytes<R>(key: &Q, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(f(bytemuck::bytes_of(key)))
    }
}

/// The raw codec for `Pod` values: the value's bytes, copied.
///
/// # Examples
/// Your own `Pod` type, with bytemuck's derives:
/// ```
/// use bytemuck::{Pod, Zeroable};
/// use mproc::{codec::Raw, Queue};
///
/// #[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
/// #[repr(C)]
/// struct Pixel { r: u8, g: u8, b: u8, a: u8 }
///
/// let q: Queue<Pixel, Raw> = Queue::new(16)?;
/// q.put(&Pixel { r: 1, g: 2, b: 3, a: 255 })?;
/// assert_eq!(q.get()?.a, 255);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl<T: Pod> Codec<T> for Raw {
    const NAME: &'static str = "raw";

    fn default_max_size() -> usize {
        std::mem::size_of::<T>()
    }

    fn with_bytes<R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(f(bytemuck::bytes_of(value)))
    }

    fn decode(bytes: &[u8]) -> Result<T> {
        if bytes.len() != std::mem::size_of::<T>() {
            return Err(Error::Decode {
                ty: std::any::type_name::<T>().into(),
                reason: format!(
                    "{} bytes, expected {}",
                    bytes.len(),
                    std::mem::size_of::<T>()
                ),
            });
        }
        Ok(bytemuck::pod_read_unaligned(bytes))
    }

    fn decode_push(bytes: &[u8], out: &mut Vec<T>) -> Result<()> {
        if bytes.len() != std::mem::size_of::<T>() {
            return <Self as Codec<T>>::decode(bytes).map(|_| ());
        }
        // In place: a zeroed element, then its bytes (both `Pod`, so any bytes are a value).
        out.push(T::zeroed());
        let last = out.last_mut().expect("an element was just pushed");
        bytemuck::bytes_of_mut(last).copy_from_slice(bytes);
        Ok(())
    }
}

/// The raw codec for `Vec<T: Pod>`: the elements' bytes, copied.
///
/// # Examples
/// ```
/// use mproc::codec::{Codec, RawSlice};
/// let v = vec![1.5f64, -2.0];
/// let bytes = RawSlice::<f64>::with_bytes(&v, |b| b.to_vec())?;
/// assert_eq!(bytes.len(), 16);
/// assert_eq!(RawSlice::<f64>::decode(&bytes)?, v);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RawSlice<T>(PhantomData<T>);

impl<T: Pod + Send + Sync> Codec<Vec<T>> for RawSlice<T> {
    const NAME: &'static str = "raw-slice";

    fn with_bytes<R>(value: &Vec<T>, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        Ok(f(bytemuck::cast_slice(value)))
    }

    fn decode(bytes: &[u8]) -> Result<Vec<T>> {
        // A zero-sized element has no bytes: its vector encodes as nothing (the length is not carried),
        // so nothing else decodes. Without this check a peer's non-empty message would reach the copy
        // below into a vector of zero bytes, which panics.
        if std::mem::size_of::<T>() == 0 && !bytes.is_empty() {
            return Err(Error::Decode {
                ty: std::any::type_name::<Vec<T>>().into(),
                reason: format!(
                    "{} bytes for elements of zero bytes (their vectors encode as nothing)",
                    bytes.len()
                ),
            });
        }
        let size = std::mem::size_of::<T>().max(1);
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::Decode {
                ty: std::any::type_name::<Vec<T>>().into(),
                reason: format!(
                    "{} bytes is not a whole number of {size}-byte elements",
                    bytes.len()
                ),
            });
        }
        // The length comes from another process: an allocation it cannot get is an error, not an abort.
        let n = bytes.len() / size;
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
            requested: bytes.len() as u64,
            available: 0,
        })?;
        v.resize(n, T::zeroed());
        bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_roundtrip_and_garbage() {
        let v = (1u32, String::from("hi"), vec![1.5f64]);
        let bytes = Serde::with_bytes(&v, |b| b.to_vec()).unwrap();
        assert_eq!(
            <Serde as Codec<(u32, String, Vec<f64>)>>::decode(&bytes).unwrap(),
            v
        );
        let e = <Serde as Codec<(u32, String, Vec<f64>)>>::decode(&[0xff; 3]).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
    }

    /// Found by review: bytes after the value were ignored (a `u8` decoded from a `u64`'s message).
    #[test]
    fn serde_refuses_bytes_left_over() {
        let bytes = Serde::with_bytes(&(7u32, 9u32), |b| b.to_vec()).unwrap();
        let e = <Serde as Codec<u32>>::decode(&bytes).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        let mut out = Vec::new();
        assert!(<Serde as Codec<u32>>::decode_push(&bytes, &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(
            <Serde as Codec<(u32, u32)>>::decode(&bytes).unwrap(),
            (7, 9)
        );
    }

    /// Found by review: the encoding buffer of a thread kept the capacity of its largest message for
    /// the thread's life.
    #[test]
    fn the_encoding_buffer_gives_back_what_a_large_message_took() {
        let kept = || SCRATCH.with(|cell| cell.borrow().capacity());
        let big = vec![7u8; 8 * SCRATCH_KEEP];
        let len = Serde::with_bytes(&big, |b| b.len()).unwrap();
        assert!(len > big.len());
        assert!(kept() <= SCRATCH_KEEP, "{} bytes kept", kept());
        // A small message still reuses the buffer it left.
        Serde::with_bytes(&(1u32, "x".to_owned()), |b| assert_eq!(b.len(), 3)).unwrap();
        assert!(
            kept() > 0 && kept() <= SCRATCH_KEEP,
            "{} bytes kept",
            kept()
        );
    }

    /// Found by review: a value encoded while the thread's locals are being destroyed (a `Drop` of a
    /// user's thread-local that puts a last message, after the encoding buffer was destroyed) panicked
    /// in `LocalKey::with`, and a panic in a thread-local's destructor aborts the process.
    #[test]
    fn a_value_encodes_while_the_threads_locals_are_destroyed() {
        struct EncodesOnDrop(std::sync::mpsc::Sender<std::thread::Result<Result<Vec<u8>>>>);
        impl Drop for EncodesOnDrop {
            fn drop(&mut self) {
                let r = std::panic::catch_unwind(|| {
                    Serde::with_bytes(&(5u32, "bye".to_owned()), |b| b.to_vec())
                });
                let _ = self.0.send(r);
            }
        }
        thread_local! {
            static LAST: std::cell::RefCell<Option<EncodesOnDrop>> =
                const { std::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Registered first, so destroyed after the encoding buffer (destructors run in reverse).
            LAST.with(|l| *l.borrow_mut() = Some(EncodesOnDrop(tx)));
            Serde::with_bytes(&1u8, |_| ()).unwrap();
        })
        .join()
        .unwrap();
        let got = rx.recv().unwrap();
        let bytes = got.expect("encoding panicked").unwrap();
        assert_eq!(
            <Serde as Codec<(u32, String)>>::decode(&bytes).unwrap(),
            (5, "bye".to_owned())
        );
    }

    /// Found by review: an encoding inside another's `f` (or inside a `Serialize` impl) failed with
    /// "re-entrant encode": the thread's buffer stayed borrowed while `f` ran.
    #[test]
    fn an_encoding_inside_another_encodings_callback_succeeds() {
        let (outer, inner) = Serde::with_bytes(&"outer".to_owned(), |o| {
            let inner = Serde::with_bytes(&(7u64, 9u8), |i| i.to_vec()).unwrap();
            (o.to_vec(), inner)
        })
        .unwrap();
        assert_eq!(<Serde as Codec<String>>::decode(&outer).unwrap(), "outer");
        assert_eq!(<Serde as Codec<(u64, u8)>>::decode(&inner).unwrap(), (7, 9));
        // The thread's buffer is still reused afterwards.
        Serde::with_bytes(&1u8, |_| ()).unwrap();
        assert!(SCRATCH.with(|cell| cell.borrow().capacity()) > 0);
    }

    #[test]
    fn raw_roundtrip_and_wrong_length() {
        let b = Raw::with_bytes(&0x0102_0304u32, |b| b.to_vec()).unwrap();
        assert_eq!(<Raw as Codec<u32>>::decode(&b).unwrap(), 0x0102_0304);
        assert!(<Raw as Codec<u32>>::decode(&b[..3]).is_err());
        let s = RawSlice::<u16>::with_bytes(&vec![1u16, 2, 3], |b| b.to_vec()).unwrap();
        assert_eq!(RawSlice::<u16>::decode(&s).unwrap(), vec![1, 2, 3]);
        assert!(RawSlice::<u16>::decode(&s[..5]).is_err());
    }

    #[test]
    fn raw_slice_of_zero_sized_elements_refuses_bytes_instead_of_panicking() {
        // `()` and `[u8; 0]` are `Pod`: a `Queue<Vec<()>, RawSlice<()>>` is a valid type, and what a
        // peer wrote into its slot must come back as an error, whatever it is.
        let e = RawSlice::<()>::decode(&[1, 2, 3]).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        assert!(RawSlice::<[u8; 0]>::decode(&[0]).is_err());
        let bytes = RawSlice::<()>::with_bytes(&vec![(); 3], |b| b.to_vec()).unwrap();
        assert!(bytes.is_empty());
        assert_eq!(RawSlice::<()>::decode(&bytes).unwrap(), Vec::<()>::new());
    }
}
