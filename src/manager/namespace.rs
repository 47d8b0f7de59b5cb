//! [`Namespace`]: named fields of any serde types, stored in a managed dict.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::dict::Dict;
use crate::error::{Error, Result};

/// Named fields holding serde values, like a Python manager's `Namespace()`: `ns.set("epoch", &3)`,
/// `ns.get::<u32>("epoch")`. Each field is stored encoded, so fields may have different types.
#[derive(Debug, Clone)]
pub struct Namespace {
    fields: Dict<String, Vec<u8>>,
}

impl Namespace {
    pub(crate) fn new(fields: Dict<String, Vec<u8>>) -> Self {
        Namespace { fields }
    }

    /// Sets field `name`.
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::OutOfMemory`], [`Error::Corrupted`].
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| Error::Encode(e.to_string()))?;
        self.fields.insert(&name.to_owned(), &bytes).map(drop)
    }

    /// Field `name` as a `T`, if set.
    ///
    /// # Errors
    /// [`Error::Decode`] if it holds another type, [`Error::Corrupted`].
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.fields
            .get(&name.to_owned())?
            .map(|b| {
                postcard::from_bytes(&b).map_err(|e| Error::Decode {
                    ty: std::any::type_name::<T>().into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Removes field `name`; returns whether it was set.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn remove(&self, name: &str) -> Result<bool> {
        Ok(self.fields.remove(&name.to_owned())?.is_some())
    }

    /// The names of the fields set.
    ///
    /// # Errors
    /// [`Error::Corrupted`].
    pub fn names(&self) -> Result<Vec<String>> {
        self.fields.keys()
    }
}
