//! [`ManagedValue`]: one serde value in a managed heap.

use std::marker::PhantomData;
use std::sync::Arc;

use super::heap::{JournaledHeap, Tx};
use crate::codec::{Codec, Serde};
use crate::error::Result;

/// A single value in a managed heap, like a Python manager's `Value` (any serde type; for `Pod` types
/// with their own lock, see [`crate::Value`]).
pub struct ManagedValue<T, C = Serde> {
    heap: Arc<JournaledHeap>,
    obj: u64,
    _t: PhantomData<fn(T) -> T>,
    _c: PhantomData<C>,
}

impl<T, C> std::fmt::Debug for ManagedValue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedValue")
            .field("offset", &self.obj)
            .finish_non_exhaustive()
    }
}

impl<T, C: Codec<T>> ManagedValue<T, C> {
    pub(crate) fn attach(heap: Arc<JournaledHeap>, obj: u64) -> Self {
        ManagedValue {
            heap,
            obj,
            _t: PhantomData,
            _c: PhantomData,
        }
    }

    pub(crate) fn init(tx: &mut Tx<'_>, obj: u64, initial: &[u8]) -> Result<()> {
        let blob = tx.alloc_blob(initial)?;
        tx.init(obj, blob)
    }

    /// The current value.
    ///
    /// # Errors
    /// [`Error::Decode`], [`Error::Corrupted`].
    pub fn get(&self) -> Result<T> {
        let obj = self.obj;
        let b = self.heap.transact(|tx| tx.heap().blob(tx.get(obj)?))?;
        C::decode(&b)
    }

    /// Replaces the value.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`], [`Error::Encode`], [`Error::Corrupted`].
    pub fn set(&self, v: &T) -> Result<()> {
        let bytes = C::with_bytes(v, <[u8]>::to_vec)?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            let old = tx.get(obj)?;
            let blob = tx.alloc_blob(&bytes)?;
            tx.set(obj, blob)?;
            tx.free(old)
        })
    }

    /// Reads, changes and writes back the value in one transaction.
    ///
    /// # Errors
    /// As [`get`](ManagedValue::get) and [`set`](ManagedValue::set).
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<()> {
        let obj = self.obj;
        self.heap.transact(|tx| {
            let old = tx.get(obj)?;
            let v = f(C::decode(&tx.heap().blob(old)?)?);
            let blob = tx.alloc_blob(&C::with_bytes(&v, <[u8]>::to_vec)?)?;
            tx.set(obj, blob)?;
            tx.free(old)
        })
    }
}
