//! [`Manager`]: a managed shared heap with a directory of named objects — Python's `Manager` without
//! the server process.
//!
//! Python's manager keeps shared objects in a server process and proxies every call over a socket. Here
//! the objects live in one shared region: an allocator, an undo journal and a directory (layout and
//! crash semantics in `src/manager/heap.rs`), and every operation is a short transaction under the heap's
//! robust lock, run by the calling process itself. Any process of the same user that knows the name opens
//! the manager and works on the same objects; a process killed in the middle of `Dict::insert` or
//! `List::push` leaves every container as it was before that call, and the next caller rolls the half-done
//! change back before going on.
//!
//! ```
//! let m = mproc::Manager::anonymous(1 << 20)?;
//! let counts = m.dict::<String, u64>("counts")?;
//! counts.update(&"apples".to_string(), |n| n.unwrap_or(0) + 3)?;
//! assert_eq!(counts.get(&"apples".to_string())?, Some(3));
//! // Opening a name as another type is an error, not a reinterpretation:
//! assert!(m.list::<f64>("counts").is_err());
//! # Ok::<(), mproc::Error>(())
//! ```

mod dict;
mod heap;
mod list;
mod namespace;
mod objects;
mod value;

use std::sync::Arc;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, Raw, Serde};
use crate::error::{Error, Result};
use crate::region::{layout_hash, Layout, Region, RegionHandle, DEFAULT_OPEN_TIMEOUT};
pub use dict::Dict;
use heap::{JournaledHeap, Tx, DIRECTORY, DIR_CAP, DIR_NAME_MAX, DIR_WORDS};
pub use list::List;
pub use namespace::Namespace;
pub use value::ManagedValue;

fn heap_layout(size: Option<usize>) -> Layout {
    Layout {
        type_name: "mproc::Manager",
        hash: layout_hash("mproc::Manager", 1, 8),
        size,
    }
}

/// A managed shared heap of named containers. See the [module docs](self).
#[derive(Clone)]
pub struct Manager {
    heap: Arc<JournaledHeap>,
    /// Objects this process registered in the directory (see `objects.rs`): their regions stay
    /// reachable by handle while this manager lives.
    keep: Arc<std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("region", &self.heap.region().handle())
            .finish()
    }
}

impl Manager {
    fn create_in(name: Option<&str>, size: usize, persistent: bool) -> Result<Manager> {
        let size = size.max(JournaledHeap::min_size());
        let region = Region::create_with(
            heap_layout(Some(size)),
            name,
            persistent,
            JournaledHeap::init,
        )?;
        Ok(Manager {
            heap: Arc::new(JournaledHeap::new(region)),
            keep: Arc::default(),
        })
    }

    fn wrap(region: Region) -> Result<Manager> {
        if region.len() < JournaledHeap::min_size() {
            return Err(Error::Truncated {
                needed: JournaledHeap::min_size() as u64,
                actual: region.len() as u64,
            });
        }
        Ok(Manager {
            heap: Arc::new(JournaledHeap::new(region)),
            keep: Arc::default(),
        })
    }

    /// An anonymous manager of `size` bytes, for a process and its children (pass it as an argument, or
    /// inherit it across fork).
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn anonymous(size: usize) -> Result<Manager> {
        Manager::create_in(None, size, false)
    }

    /// A manager of `size` bytes under `name`, openable by any process of this user. It is removed when
    /// this handle is dropped (other processes that have it open keep using it).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::Os`].
    pub fn create(name: &str, size: usize) -> Result<Manager> {
        Manager::create_in(Some(name), size, false)
    }

    /// Opens the manager `name`, or creates a persistent one of `size` bytes (remove it with
    /// [`Region::unlink`]). Concurrent callers agree on one manager.
    ///
    /// # Errors
    /// As [`Manager::open`] and [`Manager::create`].
    pub fn open_or_create(name: &str, size: usize) -> Result<Manager> {
        crate::region::create_or_open(
            name,
            || Manager::create_in(Some(name), size, true),
            || Manager::open(name),
        )
    }

    /// Opens the manager `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] if the name holds something else, or another
    /// validation error.
    pub fn open(name: &str) -> Result<Manager> {
        Manager::wrap(Region::open_with(
            name,
            heap_layout(None),
            DEFAULT_OPEN_TIMEOUT,
        )?)
    }

    /// A handle another process can open with [`Manager::from_handle`].
    pub fn handle(&self) -> RegionHandle {
        self.heap.region().handle()
    }

    /// Re-attaches from a handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] or a validation error.
    pub fn from_handle(handle: &RegionHandle) -> Result<Manager> {
        Manager::wrap(Region::open_handle(handle, heap_layout(None))?)
    }

    /// Finds `name` in the directory, or creates it with `init` (`words` header words); checks the kind.
    fn object(
        &self,
        name: &str,
        kind: &'static str,
        words: u64,
        init: impl FnOnce(&mut Tx<'_>, u64) -> Result<()>,
    ) -> Result<u64> {
        if name.is_empty() || name.len() > DIR_NAME_MAX {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                reason: "names are 1 to 40 bytes".into(),
            });
        }
        let want = kind_hash(kind);
        self.heap.transact(|tx| {
            let free = match find_entry(tx, name, kind)? {
                Found::Object(obj) => return Ok(obj),
                Found::Free(free) => free,
            };
            let e = free.ok_or(Error::OutOfMemory {
                requested: 1,
                available: 0,
            })?;
            let obj = tx.alloc(words * 8)?;
            init(tx, obj)?;
            let mut name_words = [0u64; DIR_NAME_MAX / 8];
            for (i, b) in name.bytes().enumerate() {
                name_words[i / 8] |= u64::from(b) << ((i % 8) * 8);
            }
            for (i, w) in name_words.iter().enumerate() {
                tx.set(e + 24 + i as u64 * 8, *w)?;
            }
            tx.set(e + 16, name.len() as u64)?;
            tx.set(e + 8, obj)?;
            // The kind hash last: it is what makes the entry count.
            tx.set(e, want)?;
            Ok(obj)
        })
    }

    /// The blob stored under `name` if it exists with this kind.
    fn lookup_blob(&self, name: &str, kind: &'static str) -> Result<Option<Vec<u8>>> {
        self.heap.transact(|tx| match find_entry(tx, name, kind)? {
            Found::Object(obj) => tx.heap().blob(tx.get(obj)?).map(Some),
            Found::Free(_) => Ok(None),
        })
    }

    /// Registers `bytes` under `name` unless the name exists; returns what is stored under it.
    fn register_blob(&self, name: &str, kind: &'static str, bytes: &[u8]) -> Result<Vec<u8>> {
        let obj = self.object(name, kind, 1, |tx, obj| {
            let blob = tx.alloc_blob(bytes)?;
            tx.init(obj, blob)
        })?;
        self.heap.transact(|tx| tx.heap().blob(tx.get(obj)?))
    }

    /// The dict `name` (created empty if new). Keys and values through serde.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `name` holds another kind of object; [`Error::OutOfMemory`].
    pub fn dict<K, V>(&self, name: &str) -> Result<Dict<K, V>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.dict_with::<K, V, Serde>(name)
    }

    /// The dict `name` with `Pod` keys and values stored inline as raw bytes (no serialization).
    ///
    /// # Errors
    /// As [`Manager::dict`].
    pub fn pod_dict<K: Pod, V: Pod>(&self, name: &str) -> Result<Dict<K, V, Raw>> {
        self.dict_with::<K, V, Raw>(name)
    }

    fn dict_with<K, V, C: Codec<K> + Codec<V>>(&self, name: &str) -> Result<Dict<K, V, C>> {
        let kind = std::any::type_name::<Dict<K, V, C>>();
        let obj = self.object(name, kind, dict::HEADER_WORDS, Dict::<K, V, C>::init)?;
        Ok(Dict::attach(self.heap.clone(), obj))
    }

    /// The list `name` (created empty if new). Elements through serde.
    ///
    /// # Errors
    /// As [`Manager::dict`].
    pub fn list<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<List<T>> {
        self.list_with::<T, Serde>(name)
    }

    /// The list `name` of `Pod` elements stored as raw bytes.
    ///
    /// # Errors
    /// As [`Manager::dict`].
    pub fn pod_list<T: Pod>(&self, name: &str) -> Result<List<T, Raw>> {
        self.list_with::<T, Raw>(name)
    }

    fn list_with<T, C: Codec<T>>(&self, name: &str) -> Result<List<T, C>> {
        let kind = std::any::type_name::<List<T, C>>();
        let obj = self.object(name, kind, list::LIST_WORDS, List::<T, C>::init)?;
        Ok(List::attach(self.heap.clone(), obj))
    }

    /// The value `name`, created holding `initial` if new.
    ///
    /// # Errors
    /// As [`Manager::dict`]; [`Error::Encode`].
    pub fn value<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        initial: &T,
    ) -> Result<ManagedValue<T>> {
        let bytes = <Serde as Codec<T>>::with_bytes(initial, <[u8]>::to_vec)?;
        let kind = std::any::type_name::<ManagedValue<T>>();
        let obj = self.object(name, kind, 1, |tx, obj| {
            ManagedValue::<T>::init(tx, obj, &bytes)
        })?;
        Ok(ManagedValue::attach(self.heap.clone(), obj))
    }

    /// The namespace `name` (created empty if new).
    ///
    /// # Errors
    /// As [`Manager::dict`].
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        let kind = "mproc::manager::Namespace";
        let obj = self.object(
            name,
            kind,
            dict::HEADER_WORDS,
            Dict::<String, Vec<u8>>::init,
        )?;
        Ok(Namespace::new(Dict::attach(self.heap.clone(), obj)))
    }

    /// The names in the directory.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn names(&self) -> Result<Vec<String>> {
        self.heap.transact(|tx| {
            let mut out = Vec::new();
            for i in 0..DIR_CAP {
                let e = DIRECTORY + i * DIR_WORDS * 8;
                if tx.get(e)? != 0 {
                    if let Some(n) = read_name(tx, e)? {
                        out.push(String::from_utf8_lossy(&n).into_owned());
                    }
                }
            }
            Ok(out)
        })
    }
}

/// The directory's tag for a kind of object (never 0, which marks a free entry).
fn kind_hash(kind: &str) -> u64 {
    layout_hash(kind, 0, 0) | 1
}

/// What the directory holds under a name.
enum Found {
    /// The object's offset (checked to be far from overflowing: containers add small constants to it).
    Object(u64),
    /// Not there; the first free entry, if any.
    Free(Option<u64>),
}

/// Looks `name` up in the directory, checking that it holds a `kind`.
fn find_entry(tx: &Tx<'_>, name: &str, kind: &'static str) -> Result<Found> {
    let want = kind_hash(kind);
    let mut free = None;
    for i in 0..DIR_CAP {
        let e = DIRECTORY + i * DIR_WORDS * 8;
        let hash = tx.get(e)?;
        if hash == 0 {
            free.get_or_insert(e);
            continue;
        }
        if read_name(tx, e)?.as_deref() == Some(name.as_bytes()) {
            if hash != want {
                return Err(Error::TypeMismatch {
                    expected: kind.into(),
                    expected_hash: want,
                    found_hash: hash,
                });
            }
            let obj = tx.get(e + 8)?;
            if obj >= 1 << 62 {
                return Err(Error::Corrupted(format!(
                    "directory entry {name:?} points at {obj:#x}"
                )));
            }
            return Ok(Found::Object(obj));
        }
    }
    Ok(Found::Free(free))
}

/// The name bytes of directory entry `e`, or `None` if its length is garbage.
fn read_name(tx: &Tx<'_>, e: u64) -> Result<Option<Vec<u8>>> {
    let len = tx.get(e + 16)?;
    if len == 0 || len > DIR_NAME_MAX as u64 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(DIR_NAME_MAX);
    for i in 0..(DIR_NAME_MAX / 8) as u64 {
        bytes.extend_from_slice(&tx.get(e + 24 + i * 8)?.to_le_bytes());
    }
    bytes.truncate(len as usize);
    Ok(Some(bytes))
}

crate::region::shared::serde_as_handle!([] Manager);

#[cfg(test)]
mod tests;
