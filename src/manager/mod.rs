//! [`Manager`]: a managed shared heap with a directory of named objects — Python's `Manager` without
//! the server process.
//!
//! Python's manager keeps shared objects in a server process and proxies every call over a socket. Here
//! the objects live in one shared region: an allocator, an undo journal and a directory, and every
//! operation is a short transaction under the heap's
//! robust lock, run by the calling process itself. Any process of the same user that knows the name opens
//! the manager and works on the same objects; a process killed in the middle of `Dict::insert` or
//! `List::push` leaves every container as it was before that call, and the next caller rolls the half-done
//! change back before going on.
//!
//! Like Python's, a manager needs no size: [`Manager::new`] starts small (1 MiB) and the heap grows as
//! the containers fill, up to a limit (half the machine's memory unless
//! [`ManagerBuilder::max_size`] says otherwise). Growing is a transaction too: a process killed in the
//! middle of it leaves the manager as it was, and no file behind.
//!
//! Containers ([`Dict`], [`List`], [`ManagedValue`], [`Namespace`]) pass to a child process as
//! arguments, like every shared object: they travel as the manager's handle plus their name, and the
//! child re-opens both, validated.
//!
//! Named locks, events, semaphores, queues and arrays ([`Manager::lock`], [`Manager::queue`], …) live in
//! regions of their own, which another process opens through a process holding one. The directory lists
//! the processes that got the object by name (its creator, then each that attached, up to 64), so a
//! process asking for the name later attaches through any of them still alive: the object outlives its
//! creator. Once every listed process is gone (exited, or dropped its `Manager`), nobody can reach the
//! old object, and the next request for the name makes a new one. A process that received the object
//! some other way (as a task's argument) is not listed, and keeps the old one. With 64 live holders
//! listed, a 65th process asking for the name gets [`Error::OutOfMemory`] rather than an object the
//! directory could not vouch for.
//!
//! ```
//! let m = mproc::Manager::new()?;
//! let counts = m.dict::<String, u64>("counts")?;
//! counts.update(&"apples".to_string(), |n| n.unwrap_or(0) + 3)?;
//! assert_eq!(counts.get("apples")?, Some(3));
//! // Opening a name as another type is an error, not a reinterpretation:
//! assert!(m.list::<f64>("counts").is_err());
//! # Ok::<(), mproc::Error>(())
//! ```

mod builder;
mod dict;
mod handle;
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
pub use builder::ManagerBuilder;
pub use dict::{Dict, DictEntry};
use heap::{JournaledHeap, Tx, DIRECTORY, DIR_CAP, DIR_NAME_MAX, DIR_WORDS};
pub use list::List;
pub use namespace::Namespace;
pub use value::ManagedValue;

fn heap_layout(size: Option<usize>) -> Layout {
    Layout {
        type_name: "mproc::Manager",
        // Version 2: the heap grows (limit word, growable memfd); a version-1 manager is refused.
        // Version 3: a directory entry of an object in a region of its own lists its holders (see
        // `objects.rs`), where version 2 stored one handle.
        hash: layout_hash("mproc::Manager", 3, 8),
        size,
    }
}

/// A managed shared heap of named containers. See the [module docs](self).
///
/// # Examples
/// ```
/// fn count_words(counts: mproc::manager::Dict<String, u64>) {
///     for w in "to be or not to be".split(' ') {
///         counts.entry(w).and_modify(|n| *n += 1).or_insert(1).unwrap();
///     }
/// }
///
/// let m = mproc::Manager::new()?;
/// let counts = m.dict::<String, u64>("counts")?;
/// let mut child = mproc::Process::new(count_words, counts.clone())?; // a container is an argument
/// child.start()?;
/// child.join()?;
/// assert_eq!(counts.get("be")?, Some(2));
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Manager {
    heap: Arc<JournaledHeap>,
    /// Objects this process registered in the directory or attached through it, by name and type (see
    /// `objects.rs`): their regions stay reachable through this process while this manager lives.
    keep: Arc<std::sync::Mutex<KeptObjects>>,
}

/// The objects a [`Manager`] keeps alive, by (name, type name).
type KeptObjects = std::collections::HashMap<(String, &'static str), Box<dyn std::any::Any + Send>>;

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("region", &self.heap.region().handle())
            .finish()
    }
}

impl Manager {
    /// Creates a manager whose heap starts at `initial` bytes and may grow to `limit` (both already
    /// checked by the builder: `min_size <= initial <= limit`).
    fn create_in(
        name: Option<&str>,
        initial: usize,
        limit: u64,
        persistent: bool,
    ) -> Result<Manager> {
        let region = Region::create_growable(heap_layout(Some(initial)), name, persistent, |r| {
            JournaledHeap::init(r, limit)
        })?;
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

    /// An anonymous manager for a process and its children (pass it, or any of its containers, as an
    /// argument; or inherit it across fork). It starts at 1 MiB and grows as its containers fill, up to
    /// half the machine's memory; [`Manager::builder`] sets other sizes.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let d = m.pod_dict::<u64, u64>("squares")?;
    /// for i in 0..100_000 {
    ///     d.insert(&i, &(i * i))?; // far more than 1 MiB: the heap grows
    /// }
    /// assert_eq!(d.get(&300)?, Some(90_000));
    /// assert!(m.size()? > 1 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn new() -> Result<Manager> {
        Manager::builder().anonymous()
    }

    /// A builder for the initial size and the hard limit of a manager's heap, anonymous or named.
    ///
    /// # Examples
    /// ```
    /// // A manager that never takes more than 4 MiB of memory:
    /// let m = mproc::Manager::builder().max_size(4 << 20).anonymous()?;
    /// assert!(m.max_size()? <= 4 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// An anonymous manager whose heap starts at `size` bytes and grows as [`Manager::new`]'s does
    /// (a `size` below the minimum, about 37 KiB, means the minimum). For a hard limit, see
    /// [`ManagerBuilder::max_size`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::anonymous(64 << 10)?;
    /// m.list::<String>("lines")?.push(&"hello".to_string())?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory cannot be created.
    pub fn anonymous(size: usize) -> Result<Manager> {
        Manager::builder().initial_size(size).anonymous()
    }

    /// A manager under `name`, openable by any process of this user, starting at `size` bytes and
    /// growing as [`Manager::new`]'s does. It is removed when this handle is dropped (other processes
    /// that have it open keep using it).
    ///
    /// # Examples
    /// ```
    /// # let name = format!("doc-mgr-create-{}", std::process::id());
    /// let m = mproc::Manager::create(&name, 1 << 20)?;
    /// let other = mproc::Manager::open(&name)?; // what another process would do
    /// m.dict::<String, u32>("d")?.insert(&"x".to_string(), &1)?;
    /// assert_eq!(other.dict::<String, u32>("d")?.get("x")?, Some(1));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::Os`].
    pub fn create(name: &str, size: usize) -> Result<Manager> {
        Manager::builder().initial_size(size).create(name)
    }

    /// Opens the manager `name`, or creates a persistent one starting at `size` bytes (remove it with
    /// [`Region::unlink`]). Concurrent callers agree on one manager.
    ///
    /// # Examples
    /// ```
    /// # let name = format!("doc-mgr-ooc-{}", std::process::id());
    /// let m = mproc::Manager::open_or_create(&name, 1 << 20)?;
    /// let again = mproc::Manager::open_or_create(&name, 1 << 20)?; // opens the same one
    /// m.value("epoch", &1u32)?;
    /// assert_eq!(again.value("epoch", &0u32)?.get()?, 1);
    /// mproc::Region::unlink(&name)?; // persistent: removed explicitly
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::open`] and [`Manager::create`].
    pub fn open_or_create(name: &str, size: usize) -> Result<Manager> {
        Manager::builder().initial_size(size).open_or_create(name)
    }

    /// The bytes the heap holds now (its initial size plus what it grew by).
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the heap's size word is damaged.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let before = m.size()?;
    /// let blobs = m.list::<Vec<u8>>("blobs")?;
    /// for _ in 0..8 {
    ///     blobs.push(&vec![7u8; 512 << 10])?; // 4 MiB in all: more than the first 1 MiB
    /// }
    /// assert!(m.size()? > before);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn size(&self) -> Result<usize> {
        self.heap.size().map(|(now, _)| now as usize)
    }

    /// The limit the heap may grow to; allocations beyond it fail with [`Error::OutOfMemory`].
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the heap's size words are damaged.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::builder().initial_size(1 << 20).max_size(1 << 20).anonymous()?;
    /// assert_eq!(m.max_size()?, 1 << 20);
    /// let blobs = m.list::<Vec<u8>>("blobs")?;
    /// assert!(matches!(blobs.push(&vec![0u8; 2 << 20]), Err(mproc::Error::OutOfMemory { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_size(&self) -> Result<usize> {
        self.heap
            .size()
            .map(|(_, limit)| usize::try_from(limit).unwrap_or(usize::MAX))
    }

    /// Opens the manager `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::TypeMismatch`] if the name holds something else, or another
    /// validation error.
    ///
    /// # Examples
    /// ```
    /// let name = format!("doc-manager-open-{}", std::process::id());
    /// let made = mproc::Manager::create(&name, 1 << 20)?;
    /// made.value("answer", &42u32)?;
    /// let opened = mproc::Manager::open(&name)?; // what another process would do
    /// assert_eq!(opened.value("answer", &0u32)?.get()?, 42);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Manager> {
        Manager::wrap(Region::open_with(
            name,
            heap_layout(None),
            DEFAULT_OPEN_TIMEOUT,
        )?)
    }

    /// A handle another process can open with [`Manager::from_handle`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let again = mproc::Manager::from_handle(&m.handle())?;
    /// m.namespace("cfg")?.set("verbose", &true)?;
    /// assert_eq!(again.namespace("cfg")?.get::<bool>("verbose")?, Some(true));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn handle(&self) -> RegionHandle {
        self.heap.region().handle()
    }

    /// Re-attaches from a handle.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] or a validation error.
    ///
    /// # Examples
    /// ```
    /// fn read_total(h: mproc::RegionHandle) -> u64 {
    ///     let m = mproc::Manager::from_handle(&h).expect("the parent's manager");
    ///     m.value("total", &0u64).expect("value").get().expect("get")
    /// }
    ///
    /// let m = mproc::Manager::new()?;
    /// m.value("total", &99u64)?;
    /// let mut p = mproc::Process::new(read_total, m.handle())?;
    /// p.start()?;
    /// assert_eq!(p.join()?, 99);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_handle(handle: &RegionHandle) -> Result<Manager> {
        Manager::wrap(Region::open_handle_growable(handle, heap_layout(None))?)
    }

    /// The object `name` of `kind`, which must exist: [`Error::NotFound`] if it does not,
    /// [`Error::TypeMismatch`] if it is of another kind. What a container's handle re-opens.
    fn existing(&self, name: &str, kind: &'static str) -> Result<u64> {
        check_name(name)?;
        self.heap.transact(|tx| match find_entry(tx, name, kind)? {
            Found::Object(obj) => Ok(obj),
            Found::Free(_) => Err(Error::NotFound {
                name: name.to_owned(),
            }),
        })
    }

    /// Finds `name` in the directory, or creates it with `init` (`words` header words); checks the kind.
    fn object(
        &self,
        name: &str,
        kind: &'static str,
        words: u64,
        init: impl FnOnce(&mut Tx<'_>, u64) -> Result<()>,
    ) -> Result<u64> {
        check_name(name)?;
        self.heap.transact(|tx| match find_entry(tx, name, kind)? {
            Found::Object(obj) => Ok(obj),
            Found::Free(free) => insert_entry(tx, free, name, kind, words, init),
        })
    }

    /// The blob stored under `name` if it exists with this kind.
    fn lookup_blob(&self, name: &str, kind: &'static str) -> Result<Option<Vec<u8>>> {
        self.heap.transact(|tx| match find_entry(tx, name, kind)? {
            Found::Object(obj) => tx.heap().blob(tx.get(obj)?).map(Some),
            Found::Free(_) => Ok(None),
        })
    }

    /// Stores `bytes` under `name` if the entry still holds `expected` (`None`: the name is new), in one
    /// transaction; returns whether it did. The replaced blob is freed.
    fn swap_blob(
        &self,
        name: &str,
        kind: &'static str,
        expected: Option<&[u8]>,
        bytes: &[u8],
    ) -> Result<bool> {
        check_name(name)?;
        self.heap
            .transact(|tx| match (find_entry(tx, name, kind)?, expected) {
                (Found::Object(obj), Some(expected)) => {
                    let old = tx.get(obj)?;
                    if tx.heap().blob(old)? != expected {
                        return Ok(false);
                    }
                    let blob = tx.alloc_blob(bytes)?;
                    tx.set(obj, blob)?;
                    tx.free(old)?;
                    Ok(true)
                }
                (Found::Free(free), None) => {
                    insert_entry(tx, free, name, kind, 1, |tx, obj| {
                        let blob = tx.alloc_blob(bytes)?;
                        tx.init(obj, blob)
                    })?;
                    Ok(true)
                }
                _ => Ok(false),
            })
    }

    /// The dict `name` (created empty if new). Keys and values through serde.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `name` holds another kind of object; [`Error::OutOfMemory`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let ages = m.dict::<String, u32>("ages")?;
    /// assert_eq!(ages.insert(&"ada".to_owned(), &36)?, None);
    /// assert_eq!(ages.insert(&"ada".to_owned(), &37)?, Some(36)); // the value it replaced
    /// assert_eq!(ages.get("ada")?, Some(37));
    /// assert!(matches!(m.list::<u8>("ages"), Err(mproc::Error::TypeMismatch { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let hits = m.pod_dict::<u64, f32>("hits")?;
    /// hits.insert(&7, &0.5)?;
    /// assert_eq!(hits.get(&7)?, Some(0.5));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pod_dict<K: Pod, V: Pod>(&self, name: &str) -> Result<Dict<K, V, Raw>> {
        self.dict_with::<K, V, Raw>(name)
    }

    fn dict_with<K, V, C: Codec<K> + Codec<V>>(&self, name: &str) -> Result<Dict<K, V, C>> {
        let kind = std::any::type_name::<Dict<K, V, C>>();
        let obj = self.object(name, kind, dict::HEADER_WORDS, Dict::<K, V, C>::init)?;
        Ok(Dict::attach(self.heap.clone(), obj, name))
    }

    /// The list `name` (created empty if new). Elements through serde.
    ///
    /// # Errors
    /// As [`Manager::dict`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let log = m.list::<String>("log")?;
    /// log.push(&"started".to_owned())?;
    /// log.push(&"done".to_owned())?;
    /// assert_eq!(log.to_vec()?, ["started", "done"]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn list<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<List<T>> {
        self.list_with::<T, Serde>(name)
    }

    /// The list `name` of `Pod` elements stored as raw bytes.
    ///
    /// # Errors
    /// As [`Manager::dict`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let xs = m.pod_list::<[f64; 2]>("points")?;
    /// xs.push(&[1.0, 2.0])?;
    /// assert_eq!(xs.get(0)?, Some([1.0, 2.0]));
    /// assert_eq!(xs.len()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pod_list<T: Pod>(&self, name: &str) -> Result<List<T, Raw>> {
        self.list_with::<T, Raw>(name)
    }

    fn list_with<T, C: Codec<T>>(&self, name: &str) -> Result<List<T, C>> {
        let kind = std::any::type_name::<List<T, C>>();
        let obj = self.object(name, kind, list::LIST_WORDS, List::<T, C>::init)?;
        Ok(List::attach(self.heap.clone(), obj, name))
    }

    /// The value `name`, created holding `initial` if new.
    ///
    /// # Errors
    /// As [`Manager::dict`]; [`Error::Encode`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let best = m.value("best", &(0u32, String::new()))?;
    /// best.update(|(score, who)| if score < 9 { (9, "ada".into()) } else { (score, who) })?;
    /// assert_eq!(best.get()?, (9, "ada".to_owned()));
    /// assert_eq!(m.value("best", &(1u32, String::new()))?.get()?.0, 9); // `initial` only if new
    /// # Ok::<(), mproc::Error>(())
    /// ```
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
        Ok(ManagedValue::attach(self.heap.clone(), obj, name))
    }

    /// The namespace `name` (created empty if new).
    ///
    /// # Errors
    /// As [`Manager::dict`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let ns = m.namespace("settings")?;
    /// ns.set("threshold", &0.75f64)?;
    /// ns.set("label", &"cats")?;
    /// assert_eq!(ns.get::<f64>("threshold")?, Some(0.75));
    /// assert_eq!(ns.get::<String>("label")?.as_deref(), Some("cats"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        let obj = self.object(
            name,
            namespace::KIND,
            dict::HEADER_WORDS,
            Dict::<String, Vec<u8>>::init,
        )?;
        Ok(Namespace::new(Dict::attach(self.heap.clone(), obj, name)))
    }

    /// The names in the directory.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// m.dict::<u8, u8>("a")?;
    /// m.list::<u8>("b")?;
    /// let mut names = m.names()?;
    /// names.sort();
    /// assert_eq!(names, ["a", "b"]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
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

/// Checks that `name` fits a directory entry.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > DIR_NAME_MAX {
        return Err(Error::InvalidName {
            // A name may be huge: the error keeps its start.
            name: name.chars().take(DIR_NAME_MAX).collect(),
            reason: "names are 1 to 40 bytes".into(),
        });
    }
    Ok(())
}

/// Makes a `words`-word object of `kind`, initialised by `init`, and enters it as `name` in the free
/// directory entry `free`; returns its offset.
fn insert_entry(
    tx: &mut Tx<'_>,
    free: Option<u64>,
    name: &str,
    kind: &'static str,
    words: u64,
    init: impl FnOnce(&mut Tx<'_>, u64) -> Result<()>,
) -> Result<u64> {
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
    tx.set(e, kind_hash(kind))?;
    Ok(obj)
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
