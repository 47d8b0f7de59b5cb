//! Synchronization objects, queues and arrays registered in a manager's directory by name.
//!
//! Each object lives in an anonymous region of its own, which another process opens through a process
//! holding it (`/proc/<pid>/fd/<n>`). The directory entry therefore lists **holders**: the serialized
//! handle of the process that made the object, then of every process that attached to it through the
//! directory (up to [`HOLDERS_MAX`]), each kept reachable while that process's [`Manager`] lives. A
//! newcomer attaches through the first holder still alive, and adds itself. So the object outlives its
//! creator as long as any process that got it by name lives; once every listed holder is gone, nobody can
//! reach the old object any more, and the next request for the name makes a new one (an object received
//! otherwise, say as a task's argument, does not count: such a process keeps the old one).
//!
//! The entry is changed by compare-and-swap (in one heap transaction: the blob must still be the one
//! read), so two processes replacing a dead entry at once agree on one new object, and a process that
//! attached to an old object while another replaced it attaches again.

use std::any::Any;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::Manager;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::region::shared::ByHandle;
use crate::region::RegionHandle;
use crate::sync::{Array, Event, Lock, RLock, Semaphore};

/// How many processes an entry lists as able to hand its object out. A process that finds the list
/// full of live holders gets an error rather than the object: unlisted, it could outlive every listed
/// holder, and the name would then get a second object while it still used the first.
pub(super) const HOLDERS_MAX: usize = 64;

/// How long [`Manager::shared`] keeps re-reading an entry that other processes change under it (each
/// change is another process's attach or replacement, so honest peers settle it in a few rounds).
const SETTLE_BUDGET: Duration = Duration::from_secs(10);

impl Manager {
    /// The object `name` of kind `T`: attached through a live holder listed in the directory, or made
    /// by `make` and registered when the name is new or every holder is gone.
    fn shared<T>(&self, name: &str, make: impl FnOnce() -> Result<T>) -> Result<T>
    where
        T: ByHandle + Clone + Send + 'static,
    {
        let kind = std::any::type_name::<T>();
        if let Some(kept) = self.kept::<T>(name) {
            return Ok(kept);
        }
        let mut make = Some(make);
        // The object we made, kept while a round that failed to register it is retried: the process
        // that registered first may be gone by the next read, and then ours is the one to register
        // (found by review: it was dropped, and the call failed with `StaleHandle`).
        let mut made: Option<T> = None;
        let start = Instant::now();
        while start.elapsed() < SETTLE_BUDGET {
            let stored = self.lookup_blob(name, kind)?;
            let holders = match &stored {
                Some(bytes) => decode_holders(bytes)?,
                None => Vec::new(),
            };
            let (object, mut list, ours_made) = match attach_first_live::<T>(&holders)? {
                Some((object, live)) => (object, holders[live..].to_vec(), false),
                None => {
                    let object = match made.take() {
                        Some(object) => object,
                        None => {
                            // Runs once: a round that fails to register what it made keeps it in
                            // `made` (below), so this is never reached again.
                            let make = make.take().ok_or_else(|| {
                                Error::StaleHandle(format!("{name:?}: the object made was lost"))
                            })?;
                            make()?
                        }
                    };
                    (object, Vec::new(), true)
                }
            };
            let ours = object.by_handle();
            if !list.contains(&ours) {
                if list.len() >= HOLDERS_MAX {
                    // Full: keep only the holders that can still hand the object out.
                    list.retain(|h| holder_is_live::<T>(h));
                }
                if list.len() >= HOLDERS_MAX {
                    // Attaching unlisted would let the name be replaced while we hold the old object
                    // (once every listed holder is gone): two live objects under one name.
                    return Err(Error::OutOfMemory {
                        requested: 1,
                        available: 0,
                    });
                }
                list.push(ours);
            }
            let blob = postcard::to_allocvec(&list).map_err(|e| Error::Encode(e.to_string()))?;
            if stored.as_deref() == Some(&blob[..])
                || self.swap_blob(name, kind, stored.as_deref(), &blob)?
            {
                self.keep_alive(name, object.clone());
                return Ok(object);
            }
            // Another process changed the entry since we read it: read it again, keeping what we made.
            if ours_made {
                made = Some(object);
            }
        }
        Err(Error::Timeout)
    }

    /// The object `name` of kind `T` this manager already holds, if any.
    fn kept<T: Clone + 'static>(&self, name: &str) -> Option<T> {
        let keep = self.keep.lock().unwrap_or_else(|e| e.into_inner());
        keep.get(&(name.to_owned(), std::any::type_name::<T>()))
            .and_then(|o| o.downcast_ref::<T>())
            .cloned()
    }

    /// Keeps `object` (and so its region, reachable through this process) while this manager lives.
    fn keep_alive<T: Any + Send>(&self, name: &str, object: T) {
        let kind = std::any::type_name::<T>();
        self.keep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_owned(), kind), Box::new(object));
    }

    /// The [`Lock`] `name`, created if new.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let a = m.lock("files")?;
    /// let b = m.lock("files")?; // the same lock, as another process would get it by name
    /// let held = a.lock().unwrap();
    /// assert!(b.try_lock().is_err());
    /// drop(held);
    /// assert!(b.try_lock().is_ok());
    /// // A name holds one kind of object.
    /// assert!(matches!(m.event("files"), Err(mproc::Error::TypeMismatch { .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `name` holds something else; [`Error::OutOfMemory`] if 64 live
    /// processes hold it by name already; the errors of creating the object, or of attaching to it
    /// through a live holder. The object outlives its creator while any process that
    /// got it by name (and still holds its manager) lives; once all of them are gone the name gets a new
    /// object (see the [module docs](crate::manager)).
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.shared(name, Lock::new)
    }

    /// The [`RLock`] `name`, created if new.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let r = m.rlock("config")?;
    /// let outer = r.lock().unwrap();
    /// let same = m.rlock("config")?;
    /// let inner = same.lock().unwrap(); // the same thread may take it again
    /// drop((inner, outer));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::lock`].
    pub fn rlock(&self, name: &str) -> Result<RLock> {
        self.shared(name, RLock::new)
    }

    /// The [`Event`] `name`, created (cleared) if new.
    ///
    /// # Examples
    /// ```
    /// fn announce(h: mproc::RegionHandle) {
    ///     let m = mproc::Manager::from_handle(&h).expect("the parent's manager");
    ///     m.event("ready").expect("event").set();
    /// }
    ///
    /// let m = mproc::Manager::new()?;
    /// let ready = m.event("ready")?;
    /// let mut child = mproc::Process::new(announce, m.handle())?;
    /// child.start()?;
    /// ready.wait();
    /// child.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::lock`].
    pub fn event(&self, name: &str) -> Result<Event> {
        self.shared(name, Event::new)
    }

    /// The [`Semaphore`] `name`, created with `value` permits if new.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let slots = m.semaphore("gpu", 2)?;
    /// let again = m.semaphore("gpu", 99)?; // exists: keeps its own count
    /// let _one = slots.acquire();
    /// assert_eq!(again.value(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::lock`].
    pub fn semaphore(&self, name: &str, value: u32) -> Result<Semaphore> {
        self.shared(name, || Semaphore::new(value))
    }

    /// The [`Queue`] `name`, created with `capacity` messages of at most `max_message` bytes if new.
    ///
    /// # Examples
    /// ```
    /// use mproc::codec::Serde;
    ///
    /// fn produce(h: mproc::RegionHandle) {
    ///     let m = mproc::Manager::from_handle(&h).expect("the parent's manager");
    ///     let jobs = m.queue::<String, Serde>("jobs", 16, 256).expect("queue");
    ///     jobs.put(&"resize a.png".to_string()).expect("put");
    /// }
    ///
    /// let m = mproc::Manager::new()?;
    /// let jobs = m.queue::<String, Serde>("jobs", 16, 256)?;
    /// let mut child = mproc::Process::new(produce, m.handle())?;
    /// child.start()?;
    /// assert_eq!(jobs.get()?, "resize a.png");
    /// child.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::lock`].
    ///
    /// # Panics
    /// As [`Queue::with_max_message`], when it is created.
    pub fn queue<T, C>(
        &self,
        name: &str,
        capacity: usize,
        max_message: usize,
    ) -> Result<Queue<T, C>>
    where
        T: 'static,
        C: Codec<T>,
    {
        self.shared(name, || Queue::with_max_message(capacity, max_message))
    }

    /// The [`Array`] `name` of `len` zeroes, created if new (an existing one keeps its own length).
    ///
    /// # Examples
    /// ```
    /// let m = mproc::Manager::new()?;
    /// let hist = m.array::<u64>("histogram", 4)?;
    /// hist.set(2, 7);
    /// let same = m.array::<u64>("histogram", 100)?; // exists: keeps its length of 4
    /// assert_eq!(same.to_vec(), [0, 0, 7, 0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Manager::lock`].
    pub fn array<T: Pod + Send>(&self, name: &str, len: usize) -> Result<Array<T>> {
        self.shared(name, || Array::new(len))
    }
}

/// The holders an entry lists (a handle of the object in each), checked against [`HOLDERS_MAX`].
pub(super) fn decode_holders(bytes: &[u8]) -> Result<Vec<RegionHandle>> {
    let holders: Vec<RegionHandle> =
        crate::codec::postcard_exact(bytes).map_err(|reason| Error::Decode {
            ty: "the holders of a manager object".into(),
            reason,
        })?;
    if holders.len() > HOLDERS_MAX {
        return Err(Error::Corrupted(format!(
            "a manager object lists {} holders, more than {HOLDERS_MAX}",
            holders.len()
        )));
    }
    Ok(holders)
}

/// The object, attached through the first holder still alive, and that holder's index; `None` if every
/// holder is gone (or there are none).
///
/// A holder that exited leaves a descriptor number that names nothing, or (reused) another file or
/// another region: every such failure means "not through this holder". Only running out of descriptors
/// or memory ourselves says nothing about the holder, and is returned rather than taken as its death
/// (which would replace a live object).
fn attach_first_live<T: ByHandle>(holders: &[RegionHandle]) -> Result<Option<(T, usize)>> {
    for (i, h) in holders.iter().enumerate() {
        if !h.is_anonymous() {
            // Every object of a directory lives in an anonymous (sealed) region: a named file here was
            // written by a forger, who could truncate it under our mapping (SIGBUS).
            continue;
        }
        match T::attach_handle(h) {
            Ok(object) => return Ok(Some((object, i))),
            Err(Error::Os { op, source }) if crate::sys::shm::is_out_of_resources(&source) => {
                return Err(Error::Os { op, source })
            }
            Err(_) => continue,
        }
    }
    Ok(None)
}

/// Whether holder `h` can still hand its object out (tried: attached, then let go). Running out of
/// descriptors or memory ourselves says nothing about it: counted as live.
fn holder_is_live<T: ByHandle>(h: &RegionHandle) -> bool {
    if !h.is_anonymous() {
        return false;
    }
    match T::attach_handle(h) {
        Ok(_) => true,
        Err(Error::Os { source, .. }) => crate::sys::shm::is_out_of_resources(&source),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: two processes asking for a new name at once both make an object, and one
    /// registers first. If that one is gone by the time the other reads the entry again (it exited, or
    /// dropped its manager, at once), every holder is gone: the other had dropped the object it made
    /// and failed with `StaleHandle`, where its own object, still unseen by anyone, was the answer.
    #[test]
    fn a_name_whose_new_holder_is_gone_at_once_gets_the_object_we_made() {
        let m = Manager::anonymous(1 << 20).unwrap();
        // Another process's view of the same heap, with objects of its own.
        let other = Manager::from_handle(&m.handle()).unwrap();
        let got = m.shared("l", move || {
            // While we make ours, the other registers its own lock and goes away.
            other.lock("l")?;
            drop(other);
            Lock::new()
        });
        let got = got.unwrap_or_else(|e| panic!("{e:?}"));
        let kind = std::any::type_name::<Lock>();
        let holders = decode_holders(&m.lookup_blob("l", kind).unwrap().unwrap()).unwrap();
        assert_eq!(holders, [got.handle()]);
        // A third view attaches to it, not to yet another lock.
        let third = Manager::from_handle(&m.handle()).unwrap();
        let same = third.lock("l").unwrap();
        let held = got.lock().unwrap();
        assert!(same.try_lock().is_err());
        drop(held);
    }
}
