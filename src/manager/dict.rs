//! [`Dict<K, V>`]: a hash map in a managed heap.
//!
//! Header (4 words): `len`, `cap`, `table`, `tombstones`. The table is `cap` pairs `(tag, entry)`: tag 0 is
//! an empty slot, 1 a removed one, anything else the key's FNV-1a hash with bit 1 set. An entry is a blob
//! `key length (u64) | key bytes | value bytes`, encoded with the dict's [`Codec`]. Linear probing; the
//! table is rebuilt at 3/4 load into fresh memory, so growing journals only the header words.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::sync::Arc;

use super::heap::{at, CopyBudget, HeapRef, JournaledHeap, Tx};
use crate::codec::{Codec, KeyCodec, Serde};
use crate::error::{Error, Result};

const LEN: u64 = 0;
const CAP: u64 = 8;
const TABLE: u64 = 16;
const TOMBS: u64 = 24;
pub(crate) const HEADER_WORDS: u64 = 4;
const EMPTY: u64 = 0;
const REMOVED: u64 = 1;

fn tag_of(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 2
}

/// Marks which key and value types a dict holds, without owning any (so `Dict` is `Send`/`Sync` whatever
/// they are: it holds only handles to shared memory).
type KeyValue<K, V> = fn(K, V) -> (K, V);

/// A dictionary shared by every process that opens its [`Manager`](super::Manager), like a Python
/// manager's `dict()` — but in shared memory, with no server round trip.
///
/// Every operation runs under the heap's robust lock as one transaction: a process killed in the
/// middle of `insert` leaves the dict as it was before (see the heap docs). Keys and values are encoded
/// with `C`: [`Serde`] by default, or [`Raw`](crate::codec::Raw) for `Pod` types, stored inline as bytes.
///
/// A dict passes to a child process as an argument (it serializes as its manager's handle and its
/// name; the child re-opens both):
///
/// ```
/// use mproc::{Dict, Process};
///
/// fn count(words: Dict<String, u64>) {
///     for w in ["tea", "tea", "cake"] {
///         words.update(&w.to_string(), |n| n.unwrap_or(0) + 1).unwrap();
///     }
/// }
///
/// let m = mproc::Manager::new()?;
/// let words = m.dict::<String, u64>("words")?;
/// let mut child = Process::new(count, words.clone())?;
/// child.start()?;
/// child.join()?;
/// assert_eq!(words.get("tea")?, Some(2));
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Dict<K, V, C = Serde> {
    heap: Arc<JournaledHeap>,
    obj: u64,
    /// The name in the manager's directory (what the dict serializes as, with the manager's handle).
    name: Arc<str>,
    _t: PhantomData<KeyValue<K, V>>,
    _c: PhantomData<C>,
}

impl<K, V, C> Clone for Dict<K, V, C> {
    fn clone(&self) -> Self {
        Dict {
            heap: self.heap.clone(),
            obj: self.obj,
            name: self.name.clone(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }
}

impl<K, V, C> std::fmt::Debug for Dict<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dict")
            .field("name", &self.name)
            .field("offset", &self.obj)
            .finish_non_exhaustive()
    }
}

impl<K, V, C> Dict<K, V, C> {
    /// The name of the dict in its manager.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A handle to the dict's manager.
    pub(crate) fn manager_handle(&self) -> crate::RegionHandle {
        self.heap.region().handle()
    }
}

/// Finds `key`: `Ok(slot index)` if present, `Err(first free slot)` if not.
fn find(
    h: HeapRef<'_>,
    table: u64,
    cap: u64,
    key: &[u8],
    tag: u64,
) -> Result<std::result::Result<u64, u64>> {
    if cap == 0 {
        return Err(Error::Corrupted("a dict table of capacity 0".into()));
    }
    let mut free = None;
    let mut i = tag % cap;
    for _ in 0..cap {
        let slot = at(table, i, 16)?;
        match h.get(slot)? {
            EMPTY => return Ok(Err(free.unwrap_or(i))),
            REMOVED => {
                free.get_or_insert(i);
            }
            t if t == tag => {
                let e = h.get(slot + 8)?;
                if h.get(e)? >= 8 && h.get(e + 8)? == key.len() as u64 && h.bytes_eq(e + 16, key)? {
                    return Ok(Ok(i));
                }
            }
            _ => {}
        }
        i = (i + 1) % cap;
    }
    free.map(Err)
        .ok_or_else(|| Error::Corrupted("a full dict table".into()))
        .map(Ok)?
}

/// The first empty slot of `table` probing from `start % cap`, within `cap` steps and what is left of
/// `probes`, which the caller shares between every entry it places. Only this transaction fills a fresh
/// table, and it puts at most `live` < cap / 2 entries in it, so an empty slot is always there; if
/// another process wrote garbage into it meanwhile, the probe ends as `Corrupted` instead of spinning
/// forever (review R4). The shared budget bounds a whole rebuild, should the table change under it.
fn free_slot(h: HeapRef<'_>, table: u64, cap: u64, start: u64, probes: &mut u64) -> Result<u64> {
    if cap == 0 {
        return Err(Error::Corrupted("a dict table of capacity 0".into()));
    }
    let mut j = start % cap;
    for _ in 0..cap {
        *probes = probes.checked_sub(1).ok_or_else(|| {
            Error::Corrupted("a dict table whose entries collide far more than hashes do".into())
        })?;
        if h.get(at(table, j, 16)?)? == EMPTY {
            return Ok(j);
        }
        j = (j + 1) % cap;
    }
    Err(Error::Corrupted(
        "a fresh dict table has no empty slot (written by another process)".into(),
    ))
}

/// Probes a rebuild may make per slot of its new table: placed in the order of their homes, entries
/// take about two each whatever their hashes; the rest is room to spare.
const REBUILD_PROBES_PER_SLOT: u64 = 64;

/// The value bytes of the entry blob at `e`.
fn value_of(h: HeapRef<'_>, e: u64) -> Result<Vec<u8>> {
    let blob = h.blob(e)?;
    let klen = blob
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let start = klen
        .and_then(|k| usize::try_from(k).ok())
        .and_then(|k| k.checked_add(8));
    match start {
        Some(s) if s <= blob.len() => Ok(blob[s..].to_vec()),
        _ => Err(Error::Corrupted(format!(
            "dict entry at {e:#x} is malformed"
        ))),
    }
}

/// Calls `f` with the value bytes of the entry blob at `e`, in place. Layout: blob length, key length,
/// key, value; the blob is checked as every blob read out of the heap is ([`HeapRef::with_blob`]), and
/// the key length against it.
fn with_value<R>(h: HeapRef<'_>, e: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    h.with_blob(e, |blob| {
        let klen = blob
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let start = klen
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| k.checked_add(8))
            .filter(|&s| s <= blob.len());
        start.map(|s| f(&blob[s..]))
    })?
    .ok_or_else(|| Error::Corrupted(format!("dict entry at {e:#x} is malformed")))
}

fn entry_bytes(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + key.len() + value.len());
    v.extend_from_slice(&(key.len() as u64).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

impl<K, V, C: Codec<K> + Codec<V>> Dict<K, V, C> {
    pub(crate) fn attach(heap: Arc<JournaledHeap>, obj: u64, name: &str) -> Self {
        Dict {
            heap,
            obj,
            name: name.into(),
            _t: PhantomData,
            _c: PhantomData,
        }
    }

    /// Initialises a fresh header (in the creating transaction).
    pub(crate) fn init(tx: &mut Tx<'_>, obj: u64) -> Result<()> {
        let cap = 8;
        let table = Self::fresh_table(tx, cap)?;
        tx.init(obj + LEN, 0)?;
        tx.init(obj + CAP, cap)?;
        tx.init(obj + TABLE, table)?;
        tx.init(obj + TOMBS, 0)
    }

    /// The same dict, read as holding values of type `W` (tests store values of another type).
    #[cfg(test)]
    pub(crate) fn retyped_for_test<W>(&self) -> Dict<K, W, C>
    where
        C: Codec<W>,
    {
        Dict::attach(self.heap.clone(), self.obj, &self.name)
    }

    /// The offset of the dict's header (tests corrupt it).
    #[cfg(test)]
    pub(crate) fn offset(&self) -> u64 {
        self.obj
    }

    fn fresh_table(tx: &mut Tx<'_>, cap: u64) -> Result<u64> {
        let bytes = cap.checked_mul(16).ok_or(Error::OutOfMemory {
            requested: u64::MAX,
            available: 0,
        })?;
        let table = tx.alloc(bytes)?;
        for i in 0..cap.saturating_mul(2) {
            tx.init(at(table, i, 8)?, 0)?;
        }
        Ok(table)
    }

    fn key_bytes(key: &K) -> Result<Vec<u8>> {
        <C as Codec<K>>::with_bytes(key, <[u8]>::to_vec)
    }

    /// The value for `key`, if any. Like `HashMap::get`, `key` may be any borrowed form of `K`
    /// (`&str` for a `String` key): see [`KeyCodec`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::anonymous(1 << 20)?;
    /// let d = m.dict::<String, f64>("prices")?;
    /// d.insert(&"tea".to_owned(), &2.5)?;
    /// assert_eq!(d.get("tea")?, Some(2.5));
    /// assert_eq!(d.get("coffee")?, None);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Decode`] if the stored value is not a `V`; [`Error::Corrupted`] if the heap is damaged.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        let obj = self.obj;
        // The key is hashed and compared where the codec put it, and the value decoded where the heap
        // holds it: a lookup copies nothing but the decoded value out. A value that does not decode
        // there is copied out and decoded again after the transaction: a container of this manager
        // stored as the value decodes by looking its name up, a transaction of its own, which is
        // refused under this one's lock (found by review: `get` of such a value always failed, where
        // `items` returned it). Only a failed decode pays for the copy.
        let found = <C as KeyCodec<Q>>::with_key_bytes(key, |k| {
            self.heap.transact(|tx| {
                let h = tx.heap();
                let (cap, table) = (h.get(obj + CAP)?, h.get(obj + TABLE)?);
                match find(h, table, cap, k, tag_of(k))? {
                    Ok(i) => {
                        let e = h.get(at(table, i, 16)? + 8)?;
                        match with_value(h, e, <C as Codec<V>>::decode)? {
                            Ok(v) => Ok(Some(Ok(v))),
                            Err(_) => value_of(h, e).map(|bytes| Some(Err(bytes))),
                        }
                    }
                    Err(_) => Ok(None),
                }
            })
        })??;
        match found {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(bytes)) => <C as Codec<V>>::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `key` (or a borrowed form of it, see [`get`](Dict::get)) is present.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the heap is damaged.
    pub fn contains<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        let k = <C as KeyCodec<Q>>::with_key_bytes(key, <[u8]>::to_vec)?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            let h = tx.heap();
            Ok(find(h, h.get(obj + TABLE)?, h.get(obj + CAP)?, &k, tag_of(&k))?.is_ok())
        })
    }

    /// Sets `key` to `value`; returns the value it replaced, if the key was present (as
    /// `HashMap::insert` does).
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::anonymous(1 << 20)?;
    /// let d = m.dict::<String, u32>("stock")?;
    /// assert_eq!(d.insert(&"pens".to_owned(), &10)?, None);
    /// assert_eq!(d.insert(&"pens".to_owned(), &12)?, Some(10));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] (the dict is unchanged then), [`Error::Encode`], [`Error::Corrupted`];
    /// [`Error::Decode`] if the replaced value is not a `V` (it is replaced all the same).
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>> {
        let old = self.encode_and_put(key, value, true)?;
        old.map(|b| <C as Codec<V>>::decode(&b)).transpose()
    }

    /// As [`insert`](Dict::insert), without reading the replaced value: an error means nothing was
    /// changed (`Namespace::set`; found by review: a replaced value of another type made `set` report
    /// a `Decode` error after it had committed).
    pub(crate) fn set(&self, key: &K, value: &V) -> Result<()> {
        self.encode_and_put(key, value, false).map(drop)
    }

    /// Encodes `key` and `value` and sets the entry in one transaction; with `keep_old`, the bytes of
    /// the value it replaced.
    fn encode_and_put(&self, key: &K, value: &V, keep_old: bool) -> Result<Option<Vec<u8>>> {
        let k = Self::key_bytes(key)?;
        let v = <C as Codec<V>>::with_bytes(value, <[u8]>::to_vec)?;
        let obj = self.obj;
        let (_, old) = self
            .heap
            .transact(|tx| Self::put(tx, obj, &k, &v, keep_old))?;
        Ok(old)
    }

    /// Sets the entry of `k` to `v`. Returns whether the key was present, and (with `keep_old`) the
    /// bytes of the value it replaced, read before they are overwritten or freed.
    fn put(
        tx: &mut Tx<'_>,
        obj: u64,
        k: &[u8],
        v: &[u8],
        keep_old: bool,
    ) -> Result<(bool, Option<Vec<u8>>)> {
        let tag = tag_of(k);
        let (len, cap, tombs) = (tx.get(obj + LEN)?, tx.get(obj + CAP)?, tx.get(obj + TOMBS)?);
        // Saturating: the three words may be garbage; a nonsense answer only triggers a rebuild, which
        // counts the live entries itself.
        if len
            .saturating_add(tombs)
            .saturating_add(1)
            .saturating_mul(4)
            > cap.saturating_mul(3)
        {
            Self::rebuild(tx, obj)?;
        }
        let (cap, table) = (tx.get(obj + CAP)?, tx.get(obj + TABLE)?);
        match find(tx.heap(), table, cap, k, tag)? {
            Ok(i) => {
                let slot = at(table, i, 16)?;
                let old = tx.get(slot + 8)?;
                let old_value = keep_old.then(|| value_of(tx.heap(), old)).transpose()?;
                if Self::overwrite_in_place(tx, old, k.len(), v)? {
                    return Ok((true, old_value));
                }
                let entry = tx.alloc_blob(&entry_bytes(k, v))?;
                tx.set(slot + 8, entry)?;
                tx.free(old)?;
                Ok((true, old_value))
            }
            Err(i) => {
                let entry = tx.alloc_blob(&entry_bytes(k, v))?;
                let slot = at(table, i, 16)?;
                if tx.get(slot)? == REMOVED {
                    tx.set(obj + TOMBS, tx.get(obj + TOMBS)?.saturating_sub(1))?;
                }
                tx.set(slot + 8, entry)?;
                tx.set(slot, tag)?;
                tx.set(obj + LEN, tx.get(obj + LEN)?.saturating_add(1))?;
                Ok((false, None))
            }
        }
    }

    /// Replaces the value of the entry blob at `e` by `v` word by word, journaled, when it has the same
    /// length, is word-aligned and small (a `Pod` value, or a short string): no allocation, no free. Returns
    /// whether it did.
    fn overwrite_in_place(tx: &mut Tx<'_>, e: u64, klen: usize, v: &[u8]) -> Result<bool> {
        const MAX_WORDS: usize = 8;
        let blob_len = tx.get(e)?;
        let start = e + 16 + klen as u64;
        let same_len = blob_len == 8 + klen as u64 + v.len() as u64;
        if !same_len
            || !start.is_multiple_of(8)
            || !v.len().is_multiple_of(8)
            || v.len() > MAX_WORDS * 8
        {
            return Ok(false);
        }
        for (i, word) in v.chunks_exact(8).enumerate() {
            let w = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
            tx.set(start + i as u64 * 8, w)?;
        }
        Ok(true)
    }

    /// Moves every entry into a fresh table, twice as large as the live entries need, dropping
    /// tombstones. The live entries are counted here rather than trusted from `len`, so a damaged `len`
    /// cannot make the new table too small (a probe that never finds an empty slot). Only the header words
    /// are journaled; the old table is freed.
    ///
    /// The entries are placed in the order of their home slots, each probe starting where the last one
    /// ended if its home is already covered: about two probes per entry whatever the hashes. Placed in
    /// table order, entries sharing a home cost n²/2 probes; keys a user picked to share the low bits of
    /// their hash (as easy as trying a few hundred keys per bit) made an honest dict of a few hundred
    /// entries fail every insert with `Corrupted` once that exceeded the probe budget (found by review).
    fn rebuild(tx: &mut Tx<'_>, obj: u64) -> Result<()> {
        let (old_cap, old_table) = (tx.get(obj + CAP)?, tx.get(obj + TABLE)?);
        tx.heap().check_array(old_table, old_cap, 16)?;
        // (tag, old slot) of every live entry: at most one per 16 bytes of old table, which the loop
        // reads from the heap, so this is bounded by the heap's size; asked for, not assumed.
        let mut order: Vec<(u64, u64)> = Vec::new();
        for i in 0..old_cap {
            let tag = tx.get(at(old_table, i, 16)?)?;
            if tag != EMPTY && tag != REMOVED {
                order.try_reserve(1).map_err(|_| Error::OutOfMemory {
                    requested: (order.len() as u64).saturating_mul(16),
                    available: 0,
                })?;
                order.push((tag, i));
            }
        }
        let live = order.len() as u64;
        let cap = live
            .saturating_add(1)
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(8);
        let table = Self::fresh_table(tx, cap)?;
        for entry in &mut order {
            entry.0 %= cap;
        }
        order.sort_unstable();
        let mut probes = cap.saturating_mul(REBUILD_PROBES_PER_SLOT);
        // One past the last slot filled, counting from the home of the first entry and going on past
        // `cap` once a run wraps round to slot 0. Entries come in the order of their homes, so every
        // slot from an entry's home up to `next` is filled: its probe may start at `next`.
        let mut next = 0u64;
        for (home, i) in order {
            let e = tx.get(at(old_table, i, 16)? + 8)?;
            let tag = tx.get(at(old_table, i, 16)?)?;
            let start = home.max(next);
            let j = free_slot(tx.heap(), table, cap, start, &mut probes)?;
            tx.init(at(table, j, 16)?, tag)?;
            tx.init(at(table, j, 16)? + 8, e)?;
            // The probe went from `start % cap` to `j`, possibly round past the end.
            let steps = (j + cap - start % cap) % cap;
            next = start.saturating_add(steps).saturating_add(1);
        }
        tx.set(obj + LEN, live)?;
        tx.set(obj + TABLE, table)?;
        tx.set(obj + CAP, cap)?;
        tx.set(obj + TOMBS, 0)?;
        tx.free(old_table)
    }

    /// Removes `key` (or a borrowed form of it, see [`get`](Dict::get)); returns its value if it was
    /// present.
    ///
    /// # Errors
    /// [`Error::Decode`] if the removed value is not a `V` (it is removed all the same),
    /// [`Error::Corrupted`].
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        let bytes = self.remove_bytes(key)?;
        bytes.map(|b| <C as Codec<V>>::decode(&b)).transpose()
    }

    /// As [`remove`](Dict::remove), without decoding the removed value: whether it was present, and
    /// an error only if nothing was changed (`Namespace::remove`, as [`Dict::set`]).
    pub(crate) fn discard<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        Ok(self.remove_bytes(key)?.is_some())
    }

    /// Removes `key`; the bytes of its value if it was present.
    fn remove_bytes<Q>(&self, key: &Q) -> Result<Option<Vec<u8>>>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        let k = <C as KeyCodec<Q>>::with_key_bytes(key, <[u8]>::to_vec)?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            let (cap, table) = (tx.get(obj + CAP)?, tx.get(obj + TABLE)?);
            let Ok(i) = find(tx.heap(), table, cap, &k, tag_of(&k))? else {
                return Ok(None);
            };
            let slot = at(table, i, 16)?;
            let e = tx.get(slot + 8)?;
            let value = value_of(tx.heap(), e)?;
            tx.set(slot, REMOVED)?;
            tx.set(obj + TOMBS, tx.get(obj + TOMBS)?.saturating_add(1))?;
            tx.set(obj + LEN, tx.get(obj + LEN)?.saturating_sub(1))?;
            tx.free(e)?;
            Ok(Some(value))
        })
    }

    /// Reads, changes and writes back the value of `key` in one transaction: no other process sees or
    /// makes a change in between (a counter incremented this way from many processes loses nothing).
    /// `f` gets the current value (`None` if absent) and returns the new one. `f` runs under the
    /// manager's lock: a call of this manager from inside it fails with
    /// [`Error::ManagerReentered`](crate::Error::ManagerReentered) (read what `f` needs before).
    ///
    /// # Errors
    /// As [`get`](Dict::get) and [`insert`](Dict::insert).
    pub fn update(&self, key: &K, f: impl FnOnce(Option<V>) -> V) -> Result<()> {
        let k = Self::key_bytes(key)?;
        let obj = self.obj;
        self.heap.transact(|tx| {
            let h = tx.heap();
            let (cap, table) = (h.get(obj + CAP)?, h.get(obj + TABLE)?);
            let old = match find(h, table, cap, &k, tag_of(&k))? {
                Ok(i) => Some(<C as Codec<V>>::decode(&value_of(
                    h,
                    h.get(at(table, i, 16)? + 8)?,
                )?)?),
                Err(_) => None,
            };
            let v = <C as Codec<V>>::with_bytes(&f(old), <[u8]>::to_vec)?;
            Self::put(tx, obj, &k, &v, false).map(drop)
        })
    }

    /// The entry of `key` (or a borrowed form of it, see [`get`](Dict::get)), for a read-modify-write
    /// in one transaction, as `HashMap::entry`: `and_modify` changes a present value, `or_insert` and
    /// its kin supply an absent one, and the terminal call runs it all under the dict's lock, so no
    /// other process changes the value in between. Returns the value as it is afterwards.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let stock = m.dict::<String, u32>("stock")?;
    /// assert_eq!(stock.entry("pens").and_modify(|n| *n += 5).or_insert(10)?, 10);
    /// assert_eq!(stock.entry("pens").and_modify(|n| *n += 5).or_insert(10)?, 15);
    /// assert_eq!(stock.entry("ink").or_default()?, 0);
    /// assert_eq!(stock.entry("pens").or_insert_with(|| unreachable!())?, 15);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn entry<'d, Q>(&'d self, key: &Q) -> DictEntry<'d, K, V, C>
    where
        K: Borrow<Q>,
        Q: ?Sized,
        C: KeyCodec<Q>,
    {
        DictEntry {
            dict: self,
            key: <C as KeyCodec<Q>>::with_key_bytes(key, <[u8]>::to_vec),
            modify: None,
        }
    }

    /// The number of entries.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn len(&self) -> Result<usize> {
        let obj = self.obj;
        self.heap.transact(|tx| Ok(tx.get(obj + LEN)? as usize))
    }

    /// Whether the dict is empty.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A snapshot of every (key, value), taken in one transaction.
    ///
    /// Bounded by the heap, whatever its words say: the table must lie inside the heap, each entry
    /// inside its block, and all the entries together copy at most the heap's size; a damaged dict is
    /// [`Error::Corrupted`], never a huge allocation.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::anonymous(1 << 20)?;
    /// let d = m.dict::<String, u32>("ages")?;
    /// d.insert(&"ada".to_string(), &36)?;
    /// assert_eq!(d.items()?, vec![("ada".to_string(), 36)]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Decode`], [`Error::Corrupted`].
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        let obj = self.obj;
        let raw: Vec<(Vec<u8>, Vec<u8>)> = self.heap.transact(|tx| {
            let h = tx.heap();
            let (cap, table) = (h.get(obj + CAP)?, h.get(obj + TABLE)?);
            h.check_array(table, cap, 16)?;
            let mut budget = CopyBudget::of(h);
            let mut out = Vec::new();
            for i in 0..cap {
                let tag = h.get(at(table, i, 16)?)?;
                if tag == EMPTY || tag == REMOVED {
                    continue;
                }
                let blob = h.blob_within(h.get(at(table, i, 16)? + 8)?, &mut budget)?;
                let klen = blob
                    .get(..8)
                    .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")));
                let split = usize::try_from(klen)
                    .ok()
                    .and_then(|k| k.checked_add(8))
                    .filter(|&s| s <= blob.len());
                let Some(split) = split else {
                    return Err(Error::Corrupted("a malformed dict entry".into()));
                };
                out.push((blob[8..split].to_vec(), blob[split..].to_vec()));
            }
            Ok(out)
        })?;
        raw.iter()
            .map(|(k, v)| Ok((<C as Codec<K>>::decode(k)?, <C as Codec<V>>::decode(v)?)))
            .collect()
    }

    /// A snapshot of the keys.
    ///
    /// # Errors
    /// As [`items`](Dict::items).
    pub fn keys(&self) -> Result<Vec<K>> {
        Ok(self.items()?.into_iter().map(|(k, _)| k).collect())
    }

    /// A snapshot of the values.
    ///
    /// # Errors
    /// As [`items`](Dict::items).
    pub fn values(&self) -> Result<Vec<V>> {
        Ok(self.items()?.into_iter().map(|(_, v)| v).collect())
    }

    /// Removes every entry.
    ///
    /// Two transactions: the first swaps in an empty table and detaches the old one (a few journaled
    /// words, however large the dict); the second frees the old entries (see the heap's
    /// `free_detached_table`). A process killed between the two leaves a cleared dict, and the next
    /// operation on the heap finishes the freeing.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`], [`Error::Corrupted`].
    pub fn clear(&self) -> Result<()> {
        let obj = self.obj;
        self.heap.transact(|tx| {
            let (cap, table) = (tx.get(obj + CAP)?, tx.get(obj + TABLE)?);
            let fresh = Self::fresh_table(tx, 8)?;
            tx.set(obj + TABLE, fresh)?;
            tx.set(obj + CAP, 8)?;
            tx.set(obj + LEN, 0)?;
            tx.set(obj + TOMBS, 0)?;
            tx.detach_table(table, cap)
        })?;
        // Starting a transaction finishes a detached table's freeing; this one has nothing else to do.
        // The dict is cleared whatever it says: an error here (found by review: it was returned, so
        // `clear` reported a failure after clearing) leaves the freeing to the next transaction,
        // which meets the same error and reports it as its own.
        let _ = self.heap.transact(|_| Ok(()));
        Ok(())
    }
}

/// A change `DictEntry::and_modify` queues for a present value.
type Modify<'d, V> = Box<dyn FnOnce(&mut V) + 'd>;

/// The entry of one key of a [`Dict`], made by [`Dict::entry`]. It does nothing until a terminal call
/// ([`or_insert`](DictEntry::or_insert), [`or_insert_with`](DictEntry::or_insert_with),
/// [`or_default`](DictEntry::or_default)) runs it as one transaction.
#[must_use = "an entry does nothing until or_insert, or_insert_with or or_default runs it"]
pub struct DictEntry<'d, K, V, C = Serde> {
    dict: &'d Dict<K, V, C>,
    /// The encoded key (an encoding error is reported by the terminal call).
    key: Result<Vec<u8>>,
    modify: Option<Modify<'d, V>>,
}

impl<K, V, C> std::fmt::Debug for DictEntry<'_, K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DictEntry")
            .field("dict", &self.dict)
            .field("modify", &self.modify.is_some())
            .finish_non_exhaustive()
    }
}

impl<'d, K, V, C: Codec<K> + Codec<V>> DictEntry<'d, K, V, C> {
    /// Changes the value if the key is present (after any earlier `and_modify`), when the entry runs.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let d = m.pod_dict::<u32, u64>("hits")?;
    /// d.insert(&7, &1)?;
    /// assert_eq!(d.entry(&7).and_modify(|n| *n *= 10).or_insert(0)?, 10);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn and_modify(mut self, f: impl FnOnce(&mut V) + 'd) -> Self {
        self.modify = Some(match self.modify.take() {
            None => Box::new(f),
            Some(first) => Box::new(move |v: &mut V| {
                first(v);
                f(v);
            }),
        });
        self
    }

    /// Runs the entry: modifies a present value, or inserts `default`; returns the value now stored.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let d = m.dict::<String, Vec<String>>("groups")?;
    /// d.entry("a").and_modify(|v| v.push("x".into())).or_insert(vec!["first".into()])?;
    /// let now = d.entry("a").and_modify(|v| v.push("y".into())).or_insert(vec![])?;
    /// assert_eq!(now, ["first", "y"]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Dict::get`] and [`Dict::insert`]; the dict is unchanged then.
    pub fn or_insert(self, default: V) -> Result<V> {
        self.run(move || default)
    }

    /// As [`or_insert`](DictEntry::or_insert), computing the value to insert only if the key is absent.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let d = m.dict::<String, String>("names")?;
    /// assert_eq!(d.entry("ada").or_insert_with(|| "Lovelace".into())?, "Lovelace");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// `default` runs under the manager's lock, as [`Dict::update`]'s closure does.
    ///
    /// # Errors
    /// As [`or_insert`](DictEntry::or_insert).
    pub fn or_insert_with(self, default: impl FnOnce() -> V) -> Result<V> {
        self.run(default)
    }

    /// As [`or_insert`](DictEntry::or_insert) with `V::default()`.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let d = m.dict::<String, u64>("counts")?;
    /// d.entry("x").and_modify(|n| *n += 1).or_default()?;
    /// assert_eq!(d.entry("x").and_modify(|n| *n += 1).or_default()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`or_insert`](DictEntry::or_insert).
    pub fn or_default(self) -> Result<V>
    where
        V: Default,
    {
        self.run(V::default)
    }

    /// The whole read-modify-write, in one transaction: nothing is written if a present value has no
    /// `and_modify` to apply.
    fn run(self, default: impl FnOnce() -> V) -> Result<V> {
        let k = self.key?;
        let obj = self.dict.obj;
        let modify = self.modify;
        self.dict.heap.transact(|tx| {
            let h = tx.heap();
            let (cap, table) = (h.get(obj + CAP)?, h.get(obj + TABLE)?);
            let (value, write) = match find(h, table, cap, &k, tag_of(&k))? {
                Ok(i) => {
                    let e = h.get(at(table, i, 16)? + 8)?;
                    let mut v = with_value(h, e, <C as Codec<V>>::decode)??;
                    let write = modify.is_some();
                    if let Some(f) = modify {
                        f(&mut v);
                    }
                    (v, write)
                }
                Err(_) => (default(), true),
            };
            if write {
                let bytes = <C as Codec<V>>::with_bytes(&value, <[u8]>::to_vec)?;
                Dict::<K, V, C>::put(tx, obj, &k, &bytes, false)?;
            }
            Ok(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review R4: `rebuild`'s probe for an empty slot spun forever when another process filled the
    /// fresh table; it now gives up after `cap` slots.
    #[test]
    fn probing_a_full_table_ends() {
        let m = crate::Manager::anonymous(1 << 20).unwrap();
        let d = m.dict::<u8, u8>("d").unwrap();
        let (table, cap) = d
            .heap
            .transact(|tx| Ok((tx.get(d.obj + TABLE)?, tx.get(d.obj + CAP)?)))
            .unwrap();
        let r = d.heap.transact(|tx| {
            for i in 0..cap {
                tx.set(at(table, i, 16)?, 6)?;
            }
            let found = free_slot(tx.heap(), table, cap, 6, &mut { u64::MAX });
            Err::<(), _>(found.err().unwrap_or(Error::Timeout))
        });
        assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
        assert_eq!(d.len().unwrap(), 0, "the scribble was rolled back");
    }

    /// Found by review: a rebuild placed the entries one by one by linear probing, so a table whose
    /// tags were all made equal (one write each) cost n²/2 probes under the heap's lock: hours for a
    /// table of millions. The entries are now placed in the order of their homes, about two probes
    /// each: the rebuild finishes, and the dict counts every entry.
    #[test]
    fn a_rebuild_of_colliding_tags_is_bounded() {
        let m = crate::Manager::anonymous(4 << 20).unwrap();
        let d = m.dict::<u32, u32>("d").unwrap();
        let n = 700;
        for i in 0..n {
            d.insert(&i, &i).unwrap();
        }
        d.heap
            .transact(|tx| {
                let (table, cap) = (tx.get(d.obj + TABLE)?, tx.get(d.obj + CAP)?);
                for i in 0..cap {
                    if tx.get(at(table, i, 16)?)? > REMOVED {
                        tx.set(at(table, i, 16)?, 6)?;
                    }
                }
                // Enough tombstones to make the next insert rebuild.
                tx.set(d.obj + TOMBS, cap)
            })
            .unwrap();
        assert_eq!(d.insert(&n, &n).unwrap(), None);
        assert_eq!(d.len().unwrap(), n as usize + 1);
        assert_eq!(d.get(&n).unwrap(), Some(n));
    }

    /// Found by review: keys whose hashes share their low bits (a few hundred tries per key find
    /// them, so any program storing keys its users choose can be sent them) all have one home slot.
    /// The rebuild placing them cost n²/2 probes, past its budget at a few hundred keys: every insert
    /// of an honest dict failed with `Corrupted`, for good.
    #[test]
    fn keys_sharing_a_home_slot_do_not_break_a_dict() {
        let m = crate::Manager::anonymous(4 << 20).unwrap();
        let d = m.pod_dict::<u64, u64>("d").unwrap();
        // One home in every table up to 1024 slots, which 600 entries need.
        let home = |k: u64| tag_of(&k.to_ne_bytes()) % 1024;
        let keys: Vec<u64> = (0u64..).filter(|&k| home(k) == home(0)).take(600).collect();
        for (n, k) in keys.iter().enumerate() {
            let r = d.insert(k, &(n as u64));
            assert!(r.is_ok(), "insert {n}: {r:?}");
        }
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(d.get(k).unwrap(), Some(n as u64));
        }
        assert_eq!(d.len().unwrap(), keys.len());
    }
}
