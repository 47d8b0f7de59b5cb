//! [`List<T>`]: a list of values in a managed heap (the managed value and the namespace live in `value.rs` and
//! `namespace.rs`).

use std::marker::PhantomData;
use std::sync::Arc;

use super::heap::{at, CopyBudget, JournaledHeap, Tx};
use crate::codec::{Codec, Serde};

use crate::error::{Error, Result};

const LEN: u64 = 0;
const CAP: u64 = 8;
const ITEMS: u64 = 16;
pub(crate) const LIST_WORDS: u64 = 3;

/// A list shared by every process that opens its [`Manager`](super::Manager), like a Python manager's
/// `list()`. Each element is a blob encoded with `C`; the list is an array of their offsets that doubles
/// when full. Every operation is one crash-safe transaction.
///
/// A list passes to a child process as an argument, like a [`Dict`](super::Dict):
///
/// ```
/// fn report(lines: mproc::List<String>) {
///     lines.push(&format!("child {} was here", std::process::id())).unwrap();
/// }
///
/// let m = mproc::Manager::new()?;
/// let lines = m.list::<String>("lines")?;
/// let mut child = mproc::Process::new(report, lines.clone())?;
/// child.start()?;
/// child.join()?;
/// assert_eq!(lines.len()?, 1);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct List<T, C = Serde> {
    heap: Arc<JournaledHeap>,
    obj: u64,
    /// The name in the manager's directory (what the list serializes as).
    name: Arc<str>,
    _t: PhantomData<fn(T) -> T>,
    _c: PhantomData<C>,
}

impl<T, C> Clone for List<T, C> {
    fn clone(&self) -> Self {
        List {
            heap: self.heap.clone(),
            obj: self.obj,
            name: self.name.clone(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }
}

impl<T, C> std::fmt::Debug for List<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("List")
            .field("name", &self.name)
            .field("offset", &self.obj)
            .finish_non_exhaustive()
    }
}

impl<T, C> List<T, C> {
    /// The name of the list in its manager.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A handle to the list's manager.
    pub(crate) fn manager_handle(&self) -> crate::RegionHandle {
        self.heap.region().handle()
    }
}

impl<T, C: Codec<T>> List<T, C> {
    pub(crate) fn attach(heap: Arc<JournaledHeap>, obj: u64, name: &str) -> Self {
        List {
            heap,
            obj,
            name: name.into(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }

    pub(crate) fn init(tx: &mut Tx<'_>, obj: u64) -> Result<()> {
        let items = tx.alloc(8 * 8)?;
        tx.init(obj + LEN, 0)?;
        tx.init(obj + CAP, 8)?;
        tx.init(obj + ITEMS, items)
    }

    /// The offset of the list's header (tests corrupt it).
    #[cfg(test)]
    pub(crate) fn offset(&self) -> u64 {
        self.obj
    }

    fn encode(v: &T) -> Result<Vec<u8>> {
        C::with_bytes(v, <[u8]>::to_vec)
    }

    /// Checked (len, items) of the list.
    fn shape(tx: &Tx<'_>, obj: u64) -> Result<(u64, u64, u64)> {
        let (len, cap, items) = (tx.get(obj + LEN)?, tx.get(obj + CAP)?, tx.get(obj + ITEMS)?);
        if len > cap {
            return Err(Error::Corrupted(format!(
                "a list of length {len} and capacity {cap}"
            )));
        }
        Ok((len, cap, items))
    }

    fn push_encoded(tx: &mut Tx<'_>, obj: u64, bytes: &[u8]) -> Result<()> {
        let (len, cap, mut items) = Self::shape(tx, obj)?;
        if len == cap {
            // The array the capacity word describes must be in the heap before it sizes a new one:
            // garbage there made an honest push grow the heap to twice it (found by review).
            tx.heap().check_array(items, cap, 8)?;
            let new_cap = cap.saturating_mul(2).max(8);
            let fresh = tx.alloc(new_cap.checked_mul(8).ok_or(Error::OutOfMemory {
                requested: u64::MAX,
                available: 0,
            })?)?;
            for i in 0..len {
                let v = tx.get(at(items, i, 8)?)?;
                tx.init(at(fresh, i, 8)?, v)?;
            }
            tx.set(obj + ITEMS, fresh)?;
            tx.set(obj + CAP, new_cap)?;
            tx.free(items)?;
            items = fresh;
        }
        let blob = tx.alloc_blob(bytes)?;
        // Beyond `len`: not yet part of the list, so it needs no journal entry.
        tx.init(at(items, len, 8)?, blob)?;
        tx.set(obj + LEN, len.saturating_add(1))
    }

    /// Appends `value`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] (the list is unchanged), [`Error::Encode`], [`Error::Corrupted`].
    pub fn push(&self, value: &T) -> Result<()> {
        let bytes = Self::encode(value)?;
        let obj = self.obj;
        self.heap.transact(|tx| Self::push_encoded(tx, obj, &bytes))
    }

    /// Appends every value, all in one transaction (all or nothing).
    ///
    /// # Errors
    /// As [`push`](List::push); [`Error::ManagerTransactionTooLarge`] (the list is unchanged) for about
    /// a thousand values or more once the heap reuses freed memory (each reused block is one entry of
    /// the transaction's undo journal): extend in parts.
    pub fn extend<'a>(&self, values: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let encoded = values
            .into_iter()
            .map(Self::encode)
            .collect::<Result<Vec<_>>>()?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            encoded
                .iter()
                .try_for_each(|b| Self::push_encoded(tx, obj, b))
        })
    }

    /// Removes and returns the last element.
    ///
    /// # Errors
    /// [`Error::Decode`], [`Error::Corrupted`].
    pub fn pop(&self) -> Result<Option<T>> {
        let obj = self.obj;
        let bytes = self.heap.transact(|tx| {
            let (len, _, items) = Self::shape(tx, obj)?;
            if len == 0 {
                return Ok(None);
            }
            let blob = tx.get(at(items, len - 1, 8)?)?;
            let bytes = tx.heap().blob(blob)?;
            tx.set(obj + LEN, len - 1)?;
            tx.free(blob)?;
            Ok(Some(bytes))
        })?;
        bytes.map(|b| C::decode(&b)).transpose()
    }

    /// Element `i`, if `i < len`.
    ///
    /// # Errors
    /// [`Error::Decode`], [`Error::Corrupted`].
    pub fn get(&self, i: usize) -> Result<Option<T>> {
        let obj = self.obj;
        let bytes = self.heap.transact(|tx| {
            let (len, _, items) = Self::shape(tx, obj)?;
            if i as u64 >= len {
                return Ok(None);
            }
            tx.heap().blob(tx.get(at(items, i as u64, 8)?)?).map(Some)
        })?;
        bytes.map(|b| C::decode(&b)).transpose()
    }

    /// Replaces element `i`.
    ///
    /// # Errors
    /// [`Error::Corrupted`] also if `i` is out of range (Python's IndexError), [`Error::OutOfMemory`].
    pub fn set(&self, i: usize, value: &T) -> Result<()> {
        let bytes = Self::encode(value)?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            let (len, _, items) = Self::shape(tx, obj)?;
            if i as u64 >= len {
                return Err(Error::Corrupted(format!(
                    "list index {i} out of range for length {len}"
                )));
            }
            let slot = at(items, i as u64, 8)?;
            let old = tx.get(slot)?;
            let blob = tx.alloc_blob(&bytes)?;
            tx.set(slot, blob)?;
            tx.free(old)
        })
    }

    /// The number of elements.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn len(&self) -> Result<usize> {
        let obj = self.obj;
        self.heap
            .transact(|tx| Ok(Self::shape(tx, obj)?.0 as usize))
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A snapshot of every element, taken in one transaction.
    ///
    /// Bounded by the heap, whatever its words say: the item array must lie inside the heap, each
    /// element inside its block, and all of them together copy at most the heap's size; a damaged list
    /// is [`Error::Corrupted`], never a huge allocation.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::anonymous(1 << 20)?;
    /// let l = m.list::<u32>("l")?;
    /// l.extend(&[1, 2, 3])?;
    /// assert_eq!(l.to_vec()?, vec![1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Decode`], [`Error::Corrupted`].
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let obj = self.obj;
        let raw = self.heap.transact(|tx| {
            let (len, _, items) = Self::shape(tx, obj)?;
            let h = tx.heap();
            h.check_array(items, len, 8)?;
            let mut budget = CopyBudget::of(h);
            (0..len)
                .map(|i| h.blob_within(tx.get(at(items, i, 8)?)?, &mut budget))
                .collect::<Result<Vec<_>>>()
        })?;
        raw.iter().map(|b| C::decode(b)).collect()
    }
}
