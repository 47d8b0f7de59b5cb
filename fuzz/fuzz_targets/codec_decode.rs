//! `mproc::codec` decoding of arbitrary bytes: `Serde` (postcard) for the kinds of types messages
//! carry, `Raw` and `RawSlice` for `Pod` types, and the serde form of `RegionHandle` (decode only: the
//! handle is not opened here, see `handle_decode`). Promise (codec.rs docs): bytes that do not parse are
//! `Error::Decode`, never a panic, and nothing is allocated beyond what the input can justify.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use mproc::codec::{Codec, Raw, RawSlice, Serde};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Job {
    id: u32,
    path: String,
    weights: Vec<f64>,
    tag: Option<char>,
    kind: Kind,
    extra: HashMap<String, Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug)]
enum Kind {
    A,
    B(u64, i8),
    C { x: f32, y: (u16, bool) },
    D(Vec<String>),
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Debug)]
#[repr(C)]
struct Px {
    r: u8,
    g: u8,
    b: u8,
    a: u8,
    v: f32,
}

fn all<T>(bytes: &[u8]) -> Option<mproc::Result<T>>
where
    Serde: Codec<T>,
{
    mproc_fuzz::run(std::any::type_name::<T>(), || {
        <Serde as Codec<T>>::decode(bytes)
    })
}

fn check_err<T>(r: Option<mproc::Result<T>>) {
    if let Some(Err(e)) = r {
        // The documented error of a decode is `Decode`; anything else would be a surprise worth a look.
        assert!(
            matches!(e, mproc::Error::Decode { .. }),
            "unexpected error kind: {e:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 16 {
        0 => check_err(all::<Vec<u8>>(bytes)),
        1 => check_err(all::<String>(bytes)),
        2 => check_err(all::<Vec<f64>>(bytes)),
        3 => check_err(all::<Job>(bytes)),
        4 => check_err(all::<(u8, String, Vec<u64>)>(bytes)),
        5 => check_err(all::<HashMap<String, u32>>(bytes)),
        6 => check_err(all::<BTreeMap<u64, Vec<String>>>(bytes)),
        7 => check_err(all::<Option<Vec<Option<i128>>>>(bytes)),
        8 => check_err(all::<Vec<Vec<Vec<u8>>>>(bytes)),
        9 => check_err(all::<Kind>(bytes)),
        10 => check_err(mproc_fuzz::run("Raw<u64>", || {
            <Raw as Codec<u64>>::decode(bytes)
        })),
        11 => check_err(mproc_fuzz::run("Raw<Px>", || {
            <Raw as Codec<Px>>::decode(bytes)
        })),
        12 => check_err(mproc_fuzz::run("RawSlice<f64>", || {
            <RawSlice<f64> as Codec<Vec<f64>>>::decode(bytes)
        })),
        13 => check_err(mproc_fuzz::run("RawSlice<Px>", || {
            <RawSlice<Px> as Codec<Vec<Px>>>::decode(bytes)
        })),
        14 => {
            // A handle is decoded from peer bytes before it is opened; decoding alone must not panic.
            let _ = mproc_fuzz::run("RegionHandle", || {
                postcard::from_bytes::<mproc::RegionHandle>(bytes)
            });
            check_err(all::<Vec<(String, char, bool)>>(bytes));
        }
        _ => check_err(all::<Box<[u16]>>(bytes)),
    }
});
