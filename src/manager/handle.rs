//! Containers travel to other processes as handles: the manager's [`RegionHandle`] and the container's
//! name. Deserializing re-opens the manager from its handle (validated as any region) and looks the name
//! up in its directory; the container must exist there with the very kind (type and codec) asked for,
//! or the error says what differs. Nothing is created on the receiving side.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{namespace, Dict, List, ManagedValue, Manager, Namespace};
use crate::codec::Codec;
use crate::region::RegionHandle;

/// What a container serializes as.
#[derive(Serialize, Deserialize)]
struct ContainerHandle {
    manager: RegionHandle,
    name: String,
}

fn write<S: Serializer>(s: S, manager: RegionHandle, name: &str) -> Result<S::Ok, S::Error> {
    ContainerHandle {
        manager,
        name: name.to_owned(),
    }
    .serialize(s)
}

/// Re-opens the manager of a handle and finds `kind` under its name, which must exist.
fn open<'de, D: Deserializer<'de>>(
    d: D,
    kind: &'static str,
) -> Result<(Manager, u64, String), D::Error> {
    let h = ContainerHandle::deserialize(d)?;
    let m = Manager::from_handle(&h.manager).map_err(D::Error::custom)?;
    let obj = m.existing(&h.name, kind).map_err(D::Error::custom)?;
    Ok((m, obj, h.name))
}

impl<K, V, C> Serialize for Dict<K, V, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write(s, self.manager_handle(), self.name())
    }
}

impl<'de, K, V, C: Codec<K> + Codec<V>> Deserialize<'de> for Dict<K, V, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (m, obj, name) = open(d, std::any::type_name::<Dict<K, V, C>>())?;
        Ok(Dict::attach(m.heap, obj, &name))
    }
}

impl<T, C> Serialize for List<T, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write(s, self.manager_handle(), self.name())
    }
}

impl<'de, T, C: Codec<T>> Deserialize<'de> for List<T, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (m, obj, name) = open(d, std::any::type_name::<List<T, C>>())?;
        Ok(List::attach(m.heap, obj, &name))
    }
}

impl<T, C> Serialize for ManagedValue<T, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write(s, self.manager_handle(), self.name())
    }
}

impl<'de, T, C: Codec<T>> Deserialize<'de> for ManagedValue<T, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (m, obj, name) = open(d, std::any::type_name::<ManagedValue<T, C>>())?;
        Ok(ManagedValue::attach(m.heap, obj, &name))
    }
}

impl Serialize for Namespace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write(s, self.fields().manager_handle(), self.fields().name())
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (m, obj, name) = open(d, namespace::KIND)?;
        Ok(Namespace::new(Dict::attach(m.heap, obj, &name)))
    }
}
