//! [`Arr`]: an array argument of a `Parallel` task, inline or by handle, and the thread-local context
//! that decides which while a call serializes its tasks.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use bytemuck::Pod;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::lease::{self, Leased, Lent};
use crate::heap::BlockHandle;

/// The shared copies made while one call sends its tasks, and what keeps their sources alive.
#[derive(Default)]
pub(super) struct CallCopies {
    /// The id of the `Parallel` making the call (0 outside one).
    pub(super) owner: u64,
    /// The copies, given back (freed, or quarantined while a view remains) when the call is done.
    pub(super) arrays: Vec<Lent>,
    /// Keeps alive the owned data the `seen` keys point into, so no address is reused during the call.
    pub(super) sources: Vec<Box<dyn Any>>,
    /// (address, length, element type) of a source → its shared copy (an index into `arrays`), and
    /// whether that source is kept alive in `sources` (then its address is its own for the call).
    seen: HashMap<(usize, usize, TypeId), (usize, bool)>,
}

impl CallCopies {
    pub(super) fn for_owner(owner: u64) -> CallCopies {
        let mut s = CallCopies::default();
        s.owner = owner;
        s
    }
}

impl Drop for CallCopies {
    fn drop(&mut self) {
        lease::give_back(self.owner, std::mem::take(&mut self.arrays));
    }
}

struct Context {
    max_nbytes: usize,
    shared: CallCopies,
}

thread_local! {
    /// Set while a `Parallel` call serializes its tasks on this thread.
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Runs `f` with `Arr` serialization in "share above `max_nbytes`" mode; the copies it makes are added
/// to `shared`, also if `f` panics.
pub(super) fn with_context<T>(
    max_nbytes: usize,
    shared: &mut CallCopies,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore<'a> {
        shared: &'a mut CallCopies,
        previous: Option<Context>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let ours = CONTEXT.with(|c| c.replace(self.previous.take()));
            if let Some(ctx) = ours {
                *self.shared = ctx.shared;
            }
        }
    }
    // Gone already (the thread's locals are being destroyed: a call from the `Drop` of another
    // thread-local at thread exit): `f` runs with no context, and every array travels inline.
    let Ok(previous) = CONTEXT.try_with(|c| {
        c.replace(Some(Context {
            max_nbytes,
            shared: std::mem::take(shared),
        }))
    }) else {
        return f();
    };
    let _restore = Restore { shared, previous };
    f()
}

enum Repr<'a, T: Pod> {
    Borrowed(&'a [T]),
    Owned(Arc<[T]>),
    /// Received by handle: a view of another process's shared copy, with a lease on it.
    Shared(Arc<Leased<T>>),
}

/// An array argument for a [`Parallel`](crate::Parallel) task: small ones travel inline, large ones by handle. See
/// [the module docs](crate::parallel#large-arrays-travel-by-handle).
///
/// Made from a borrowed slice (`Arr::from(&v)`, no copy until it must travel) or an owned `Vec`; a
/// task reads it as a `&[T]` through `Deref`. Cloning is cheap (no element is copied).
///
/// # Examples
/// ```
/// use mproc::parallel::Arr;
///
/// let v = vec![1u32, 2, 3];
/// let a = Arr::from(&v);
/// assert_eq!(a.iter().sum::<u32>(), 6);
/// assert!(!a.is_shared());
/// ```
pub struct Arr<'a, T: Pod> {
    repr: Repr<'a, T>,
}

impl<T: Pod> Arr<'_, T> {
    const NOT_ZST: () = assert!(
        std::mem::size_of::<T>() > 0,
        "Arr of a zero-sized type is not supported"
    );

    /// Whether this array was received by handle, reading another process's shared copy in place.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Shared(_))
    }
}

#[cfg(test)]
impl<T: Pod> Arr<'_, T> {
    /// How many views of this array's shared copy its lease words count (`None` unless by handle).
    pub(super) fn views_counted(&self) -> Option<u64> {
        match &self.repr {
            Repr::Shared(l) => Some(l.views_counted()),
            _ => None,
        }
    }
}

impl<'a, T: Pod> From<&'a [T]> for Arr<'a, T> {
    fn from(s: &'a [T]) -> Self {
        let () = Self::NOT_ZST;
        Arr {
            repr: Repr::Borrowed(s),
        }
    }
}

impl<'a, T: Pod> From<&'a Vec<T>> for Arr<'a, T> {
    fn from(v: &'a Vec<T>) -> Self {
        Arr::from(v.as_slice())
    }
}

impl<T: Pod> From<Vec<T>> for Arr<'_, T> {
    fn from(v: Vec<T>) -> Self {
        let () = Self::NOT_ZST;
        Arr {
            repr: Repr::Owned(v.into()),
        }
    }
}

impl<T: Pod> Deref for Arr<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Borrowed(s) => s,
            Repr::Owned(v) => v,
            Repr::Shared(a) => a.elements(),
        }
    }
}

impl<T: Pod> Clone for Arr<'_, T> {
    fn clone(&self) -> Self {
        let repr = match &self.repr {
            Repr::Borrowed(s) => Repr::Borrowed(s),
            Repr::Owned(v) => Repr::Owned(v.clone()),
            Repr::Shared(a) => Repr::Shared(a.clone()),
        };
        Arr { repr }
    }
}

impl<T: Pod> fmt::Debug for Arr<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arr")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// How an `Arr` travels.
#[derive(Serialize)]
pub(super) enum WireOut<'x> {
    Inline(Bytes<'x>),
    Shared(BlockHandle),
}

#[derive(Deserialize)]
#[serde(bound = "T: Pod")]
pub(super) enum WireIn<T: Pod> {
    Inline(PodVec<T>),
    Shared(BlockHandle),
}

pub(super) struct Bytes<'x>(&'x [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Elements that arrived inline as bytes, copied once into an aligned `Vec<T>`.
pub(super) struct PodVec<T>(pub(super) Vec<T>);

impl<'de, T: Pod> Deserialize<'de> for PodVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Pod> V<T> {
            fn cast<E: serde::de::Error>(bytes: &[u8]) -> std::result::Result<PodVec<T>, E> {
                if !bytes.len().is_multiple_of(std::mem::size_of::<T>()) {
                    return Err(E::custom(format!(
                        "{} bytes are not a whole number of {}",
                        bytes.len(),
                        std::any::type_name::<T>()
                    )));
                }
                let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
                bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
                Ok(PodVec(v))
            }
        }
        impl<'de, T: Pod> Visitor<'de> for V<T> {
            type Value = PodVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the bytes of a [{}]", std::any::type_name::<T>())
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                v: &[u8],
            ) -> std::result::Result<Self::Value, E> {
                Self::cast(v)
            }
            fn visit_seq<S: SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> std::result::Result<Self::Value, S::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Self::cast(&bytes)
            }
        }
        d.deserialize_bytes(V(PhantomData))
    }
}

impl<T: Pod> Serialize for Arr<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let data: &[T] = self;
        // `try_with`: an `Arr` serialized while the thread's locals are destroyed (in the `Drop` of
        // another thread-local at thread exit) finds no context, and travels inline. `with` panicked
        // there, and a panic in a thread-local's destructor aborts the process (found by review).
        let shared = CONTEXT.try_with(|c| {
            let mut c = c.borrow_mut();
            let ctx = c.as_mut()?;
            if std::mem::size_of_val(data) <= ctx.max_nbytes {
                return None;
            }
            let key = (data.as_ptr() as usize, data.len(), TypeId::of::<T>());
            let bytes: &[u8] = bytemuck::cast_slice(data);
            if let Some(&(i, kept)) = ctx.shared.seen.get(&key) {
                let copy = &ctx.shared.arrays[i];
                // A source kept alive (owned, shared) owns its address for the whole call, so an
                // array at that address is that source. A borrow usually outlives the call too, but a
                // `Serialize` that borrows a temporary frees it, and the next allocation — another
                // temporary, or the `Arc` of an owned array — may get its address: the same address
                // then means the same array only if the bytes are the same (a compare costs less
                // than the copy it saves). What matters is how the *first* source was held, not how
                // this one is (found by review: an owned array at a freed borrow's address got the
                // borrow's copy).
                if kept || copy.bytes() == bytes {
                    return Some(Ok(copy.handle()));
                }
            }
            Some(Lent::copy_of(bytes).map(|copy| {
                let h = copy.handle();
                let kept = !matches!(self.repr, Repr::Borrowed(_));
                ctx.shared.seen.insert(key, (ctx.shared.arrays.len(), kept));
                ctx.shared.arrays.push(copy);
                match &self.repr {
                    Repr::Borrowed(_) => {}
                    Repr::Owned(v) => ctx.shared.sources.push(Box::new(v.clone())),
                    Repr::Shared(a) => ctx.shared.sources.push(Box::new(a.clone())),
                }
                h
            }))
        });
        match shared.ok().flatten() {
            None => WireOut::Inline(Bytes(bytemuck::cast_slice(data))).serialize(s),
            Some(Ok(h)) => WireOut::Shared(h).serialize(s),
            Some(Err(e)) => Err(serde::ser::Error::custom(format!(
                "cannot copy an array of {} bytes into shared memory: {e}",
                std::mem::size_of_val(data)
            ))),
        }
    }
}

impl<'de, T: Pod> Deserialize<'de> for Arr<'_, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let () = Self::NOT_ZST;
        let repr = match WireIn::<T>::deserialize(d)? {
            WireIn::Inline(PodVec(v)) => Repr::Owned(v.into()),
            // Checked on the way in: another process's arena, inside it, aligned, a whole number of
            // `T`; and leased, so the sender does not reuse it while this view lives.
            WireIn::Shared(h) => Repr::Shared(Arc::new(
                Leased::attach(&h).map_err(serde::de::Error::custom)?,
            )),
        };
        Ok(Arr { repr })
    }
}
