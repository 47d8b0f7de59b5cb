//! `Shared<T>`: a typed object living at the start of its own region.
//!
//! Every shared primitive (`Lock`, `Event`, `Value<T>`, …) is a thin handle around one of these. It keeps
//! the region mapped (an `Arc<Region>`, so clones in one process share one mapping) and a pointer to the
//! payload, validated once at creation or open. It serializes as the region's [`RegionHandle`], which is how
//! objects travel to spawned processes as arguments.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use super::{Layout, Region, RegionHandle, ShmSafe, DEFAULT_OPEN_TIMEOUT};
use crate::error::Result;

pub(crate) struct Shared<T: ShmSafe> {
    region: Arc<Region>,
    ptr: NonNull<T>,
    _t: PhantomData<T>,
}

// SAFETY: the payload is only reached through `&T`, T: ShmSafe mutates only through atomics or UnsafeCell
// guarded by the object's own protocol, and the mapping it points into is kept alive by the Arc<Region>
// that travels with the pointer. Sending or sharing the handle across threads is then like sharing &T
// across processes, which every ShmSafe type is designed for.
unsafe impl<T: ShmSafe> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe> Sync for Shared<T> {}

impl<T: ShmSafe> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            region: self.region.clone(),
            ptr: self.ptr,
            _t: PhantomData,
        }
    }
}

impl<T: ShmSafe> Shared<T> {
    /// The layout of a fixed-size `T` called `type_name`.
    pub(crate) fn layout(type_name: &'static str) -> Layout {
        Layout {
            type_name,
            hash: super::layout_hash(
                type_name,
                std::mem::size_of::<T>(),
                std::mem::align_of::<T>(),
            ),
            size: Some(std::mem::size_of::<T>()),
        }
    }

    /// Creates the region (anonymous when `name` is `None`), lets `init` set up the zeroed payload, then
    /// publishes it.
    pub(crate) fn create(
        layout: Layout,
        name: Option<&str>,
        persistent: bool,
        init: impl FnOnce(&T),
    ) -> Result<Self> {
        let region = Region::create_with(layout, name, persistent, |r| {
            init(r.payload_ref::<T>(0)?);
            Ok(())
        })?;
        Shared::wrap(region)
    }

    pub(crate) fn open(name: &str, layout: Layout) -> Result<Self> {
        Shared::wrap(Region::open_with(name, layout, DEFAULT_OPEN_TIMEOUT)?)
    }

    /// Opens `name`, or creates it with `init` if it does not exist. Safe against a concurrent creator:
    /// exactly one process creates, the others open (and wait for it to be published).
    pub(crate) fn open_or_create(
        name: &str,
        layout: Layout,
        persistent: bool,
        init: impl Fn(&T),
    ) -> Result<Self> {
        super::create_or_open(
            name,
            || Shared::create(layout, Some(name), persistent, &init),
            || Shared::open(name, layout),
        )
    }

    pub(crate) fn from_handle(handle: &RegionHandle, layout: Layout) -> Result<Self> {
        Shared::wrap(Region::open_handle(handle, layout)?)
    }

    /// Wraps a region already created or opened (and validated) by the caller.
    pub(crate) fn wrap_region(region: Region) -> Result<Self> {
        Shared::wrap(region)
    }

    fn wrap(region: Region) -> Result<Self> {
        let ptr = NonNull::from(region.payload_ref::<T>(0)?);
        Ok(Shared {
            region: Arc::new(region),
            ptr,
            _t: PhantomData,
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn handle(&self) -> RegionHandle {
        self.region.handle()
    }
}

impl<T: ShmSafe> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` came from `payload_ref` (bounds- and alignment-checked) on the region this handle
        // keeps alive through its Arc; T: ShmSafe tolerates concurrent writes by other processes.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmSafe> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("region", &self.region.handle())
            .finish()
    }
}

/// Implements, for a handle type `$ty` wrapping `Shared<$raw>` in a field `shared`:
/// `open`, `handle`, `from_handle`, serde (as a [`RegionHandle`]) and `Debug`.
macro_rules! impl_shared_object {
    ($ty:ident, $raw:ty, $type_name:literal) => {
        impl $ty {
            fn layout() -> $crate::region::Layout {
                $crate::region::shared::Shared::<$raw>::layout($type_name)
            }

            /// Opens the object created under `name` by any process of this user.
            ///
            /// # Errors
            /// [`Error::NotFound`](crate::Error::NotFound), [`Error::TypeMismatch`](crate::Error::TypeMismatch)
            /// if the name holds another kind of object, or another validation error.
            pub fn open(name: &str) -> $crate::Result<Self> {
                Ok($ty {
                    shared: $crate::region::shared::Shared::open(name, Self::layout())?,
                })
            }

            /// A handle that another process can open with [`from_handle`](Self::from_handle).
            pub fn handle(&self) -> $crate::RegionHandle {
                self.shared.handle()
            }

            /// Re-attaches to an object from its handle, validating the region.
            ///
            /// # Errors
            /// [`Error::StaleHandle`](crate::Error::StaleHandle) if the object is gone, or a validation error.
            pub fn from_handle(handle: &$crate::RegionHandle) -> $crate::Result<Self> {
                Ok($ty {
                    shared: $crate::region::shared::Shared::from_handle(handle, Self::layout())?,
                })
            }
        }

        $crate::region::shared::serde_as_handle!([] $ty);

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("region", &self.shared.handle())
                    .finish()
            }
        }
    };
}
pub(crate) use impl_shared_object;

/// A shared object that is, to other processes, its [`RegionHandle`] (implemented by
/// [`serde_as_handle!`]): what code that stores handles itself (the manager's directory) uses, to keep
/// the typed error of a failed attach that serde would turn into text.
pub(crate) trait ByHandle: Sized {
    /// This process's handle of the object.
    fn by_handle(&self) -> RegionHandle;
    /// Attaches to the object `handle` names, validated.
    fn attach_handle(handle: &RegionHandle) -> crate::Result<Self>;
}

/// Implements serde for a shared object as its [`RegionHandle`]: serializing writes the handle,
/// deserializing re-attaches (and re-validates) the region; and [`ByHandle`]. The type needs `handle()`
/// and `from_handle(&RegionHandle)`. Generic parameters go in the brackets: `serde_as_handle!([T: Pod] Value<T>)`.
macro_rules! serde_as_handle {
    ([$($gen:tt)*] $ty:ty) => {
        impl<$($gen)*> $crate::region::shared::ByHandle for $ty {
            fn by_handle(&self) -> $crate::RegionHandle {
                self.handle()
            }
            fn attach_handle(handle: &$crate::RegionHandle) -> $crate::Result<Self> {
                <$ty>::from_handle(handle)
            }
        }

        impl<$($gen)*> serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.handle().serialize(s)
            }
        }

        impl<'de, $($gen)*> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let h = <$crate::RegionHandle as serde::Deserialize>::deserialize(d)?;
                <$ty>::from_handle(&h).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_handle;
