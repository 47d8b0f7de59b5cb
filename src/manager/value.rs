//! [`ManagedValue`]: one serde value in a managed heap.

use std::marker::PhantomData;
use std::sync::Arc;

use super::heap::{JournaledHeap, Tx};
use crate::codec::{Codec, Serde};
use crate::error::Result;

/// A single value in a managed heap, like a Python manager's `Value` (any serde type; for `Pod` types
/// with their own lock, see [`crate::Value`]).
///
/// A managed value passes to a child process as an argument, like a [`Dict`](super::Dict):
///
/// ```
/// fn bump(best: mproc::ManagedValue<(String, f64)>) {
///     best.update(|(_, score)| ("child".to_string(), score + 1.0)).unwrap();
/// }
///
/// let m = mproc::Manager::new()?;
/// let best = m.value("best", &("parent".to_string(), 1.5))?;
/// let mut child = mproc::Process::new(bump, best.clone())?;
/// child.start()?;
/// child.join()?;
/// assert_eq!(best.get()?, ("child".to_string(), 2.5));
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct ManagedValue<T, C = Serde> {
    heap: Arc<JournaledHeap>,
    obj: u64,
    /// The name in the manager's directory (what the value serializes as).
    name: Arc<str>,
    _t: PhantomData<fn(T) -> T>,
    _c: PhantomData<C>,
}

impl<T, C> Clone for ManagedValue<T, C> {
    fn clone(&self) -> Self {
        ManagedValue {
            heap: self.heap.clone(),
            obj: self.obj,
            name: self.name.clone(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }
}

impl<T, C> std::fmt::Debug for ManagedValue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedValue")
            .field("name", &self.name)
            .field("offset", &self.obj)
            .finish_non_exhaustive()
    }
}

impl<T, C> ManagedValue<T, C> {
    /// The name of the value in its manager.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A handle to the value's manager.
    pub(crate) fn manager_handle(&self) -> crate::RegionHandle {
        self.heap.region().handle()
    }
}

impl<T, C: Codec<T>> ManagedValue<T, C> {
    pub(crate) fn attach(heap: Arc<JournaledHeap>, obj: u64, name: &str) -> Self {
        ManagedValue {
            heap,
            obj,
            name: name.into(),
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
    /// [`Error::Decode`](crate::Error::Decode), [`Error::Corrupted`](crate::Error::Corrupted).
    pub fn get(&self) -> Result<T> {
        let obj = self.obj;
        let b = self.heap.transact(|tx| tx.heap().blob(tx.get(obj)?))?;
        C::decode(&b)
    }

    /// Replaces the value.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory), [`Error::Encode`](crate::Error::Encode), [`Error::Corrupted`](crate::Error::Corrupted).
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

    /// Reads, changes and writes back the value in one transaction. `f` runs under the manager's lock,
    /// as [`Dict::update`](crate::Dict::update)'s closure does.
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
