//! Synchronization objects, queues and arrays registered in a manager's directory by name.
//!
//! The directory entry holds the object's serialized handle; the object itself lives in its own
//! anonymous region, created by the first process that asks for the name. That process's [`Manager`]
//! keeps it alive, so other processes can attach to it through the directory as long as the creating
//! process holds its manager (afterwards, processes that already attached keep using it; new ones get
//! [`Error::StaleHandle`]).

use std::any::Any;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Manager;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::sync::{Array, Event, Lock, RLock, Semaphore};

impl Manager {
    /// The object `name` of kind `T`: attached from the directory, or made by `make` and registered.
    fn shared<T>(&self, name: &str, make: impl FnOnce() -> Result<T>) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + 'static,
    {
        let kind = std::any::type_name::<T>();
        if let Some(bytes) = self.lookup_blob(name, kind)? {
            return decode(&bytes);
        }
        let ours = make()?;
        let bytes = postcard::to_allocvec(&ours).map_err(|e| Error::Encode(e.to_string()))?;
        let stored = self.register_blob(name, kind, &bytes)?;
        if stored == bytes {
            self.keep_alive(Box::new(ours.clone()));
            Ok(ours)
        } else {
            // Another process registered the name first: use its object, drop ours.
            decode(&stored)
        }
    }

    fn keep_alive(&self, object: Box<dyn Any + Send>) {
        self.keep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(object);
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
    /// [`Error::TypeMismatch`] if `name` holds something else; [`Error::StaleHandle`] if its creator is gone.
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

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| match e {
        // Deserializing re-attaches the region; its own errors come through serde as text.
        postcard::Error::SerdeDeCustom => {
            Error::StaleHandle("the object's region could not be opened".into())
        }
        e => Error::Decode {
            ty: std::any::type_name::<T>().into(),
            reason: e.to_string(),
        },
    })
}
