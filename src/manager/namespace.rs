//! [`Namespace`]: named fields of any serde types, stored in a managed dict.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::dict::Dict;
use crate::error::{Error, Result};

/// The directory's kind of a namespace (its fields are a `Dict<String, Vec<u8>>`, but a namespace is not
/// openable as that dict, nor the other way round).
pub(crate) const KIND: &str = "mproc::manager::Namespace";

/// Named fields holding serde values, like a Python manager's `Namespace()`: `ns.set("epoch", &3)`,
/// `ns.get::<u32>("epoch")`. Each field is stored encoded, so fields may have different types.
///
/// A namespace passes to a child process as an argument, like a [`Dict`](super::Dict):
///
/// ```
/// fn train(ns: mproc::Namespace) {
///     let epoch: u32 = ns.get("epoch").unwrap().unwrap_or(0);
///     ns.set("epoch", &(epoch + 1)).unwrap();
///     ns.set("status", &"done").unwrap();
/// }
///
/// let m = mproc::Manager::new()?;
/// let ns = m.namespace("run")?;
/// ns.set("epoch", &4u32)?;
/// let mut child = mproc::Process::new(train, ns.clone())?;
/// child.start()?;
/// child.join()?;
/// assert_eq!(ns.get::<u32>("epoch")?, Some(5));
/// assert_eq!(ns.get::<String>("status")?.as_deref(), Some("done"));
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Namespace {
    fields: Dict<String, Vec<u8>>,
}

impl Namespace {
    pub(crate) fn new(fields: Dict<String, Vec<u8>>) -> Self {
        Namespace { fields }
    }

    /// The dict holding the fields.
    pub(crate) fn fields(&self) -> &Dict<String, Vec<u8>> {
        &self.fields
    }

    /// Sets field `name`.
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::OutOfMemory`], [`Error::Corrupted`].
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| Error::Encode(e.to_string()))?;
        self.fields.set(&name.to_owned(), &bytes)
    }

    /// Field `name` as a `T`, if set.
    ///
    /// # Errors
    /// [`Error::Decode`] if it holds another type, [`Error::Corrupted`].
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.fields
            .get(&name.to_owned())?
            .map(|b| crate::codec::postcard_whole(&b))
            .transpose()
    }

    /// Removes field `name`; returns whether it was set.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn remove(&self, name: &str) -> Result<bool> {
        self.fields.discard(name)
    }

    /// The names of the fields set.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn names(&self) -> Result<Vec<String>> {
        self.fields.keys()
    }
}
