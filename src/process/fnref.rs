//! Function references: the one place where a function becomes an offset another process can send back,
//! and where an offset becomes a function again.
//!
//! A spawned child and a pool worker run the parent's executable file, so a function is named by its
//! offset from [`anchor`], a function of this crate: the same in every process of that file whatever
//! address ASLR loaded it at. Every reference is a *pair*: the user's function and the *adapter* that
//! knows its type (decodes the arguments, calls it, encodes the result). The pair is made in one typed
//! place per adapter kind ([`LocalFn::pair`], called only by the adapters' own constructors, generic over
//! the very types the adapter is instantiated for), so an adapter is never handed a function of another
//! type.
//!
//! ## Authentication
//! A reference that leaves the process ([`FnRef`]) carries a keyed MAC (SipHash-1-3, 128-bit key) over the
//! adapter kind and both offsets. The receiver turns offsets back into code only if the MAC verifies
//! under its key. Keys never touch a file or shared memory another process can open: a spawned child gets
//! its key over an inherited socket (`process::spawn`), and a pool's workers get the pool's key that way.
//! So the only pairs a receiver ever calls are pairs its parent made from real `fn` values with the typed
//! constructors: the *start* of a function the parent registered for this adapter kind, never an
//! arbitrary address, never a function with another signature, and never a spawn pair replayed as a pool
//! task (the kind is under the MAC).
//!
//! The MAC does not make a hostile *parent* harmless: a parent of our own uid can ptrace its child anyway.
//! What it rules out is every other writer: of a pool's rings, of the spawn task file, of the environment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sys::proc;
use crate::sys::process as psys;

/// The fixed point function offsets are measured from. Never called for its value; `inline(never)` and a
/// body that differs from every other function keep it one distinct symbol of the executable.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    0x6d70_726f_635f_616e // "mproc_an"
}

fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// The address of a function of this executable, as handed to an adapter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FnAddr(usize);

impl FnAddr {
    /// The function as a typed pointer.
    ///
    /// # Safety
    /// `F` must be the exact function-pointer type this address was taken from. That holds inside an
    /// adapter for the address it is called with: [`LocalFn::pair`]'s contract ties every adapter
    /// instantiation to functions of the type it was instantiated for, and a received pair is only
    /// resolved after its MAC proved the parent made it that way.
    pub(crate) unsafe fn get<F: Copy>(self) -> F {
        const {
            assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>());
        }
        // SAFETY: `F` is a function-pointer type of the size of `usize` (checked above at compile time),
        // and by the caller's contract the address is a function of exactly that type in this executable.
        unsafe { std::mem::transmute_copy::<usize, F>(&self.0) }
    }
}

/// A kind of adapter: the function-pointer type every adapter of this kind has, and the domain
/// separator mixed into the MAC so that a reference made for one kind never verifies as another.
pub(crate) trait AdapterKind {
    /// The adapter's function-pointer type (e.g. `fn(FnAddr, &[u8]) -> …`).
    type Adapter: Copy;
    /// Distinct for every kind.
    const DOMAIN: u64;
    /// Human-readable kind, for error messages.
    const NAME: &'static str;
}

/// A function paired with its adapter, in this process.
pub(crate) struct LocalFn<K: AdapterKind> {
    func: usize,
    adapter: K::Adapter,
}

impl<K: AdapterKind> Clone for LocalFn<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: AdapterKind> Copy for LocalFn<K> {}

impl<K: AdapterKind> fmt::Debug for LocalFn<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalFn<{}>({:#x})", K::NAME, self.func)
    }
}

fn adapter_addr<K: AdapterKind>(a: K::Adapter) -> usize {
    const {
        assert!(std::mem::size_of::<K::Adapter>() == std::mem::size_of::<usize>());
    }
    // SAFETY: every `AdapterKind::Adapter` is a function-pointer type, the size of a `usize` (checked at
    // compile time); reading a function pointer's bits as an integer is always defined.
    unsafe { std::mem::transmute_copy::<K::Adapter, usize>(&a) }
}

impl<K: AdapterKind> LocalFn<K> {
    /// Pairs the function at `func` with `adapter`.
    ///
    /// # Safety
    /// `adapter`, called with `func`, must use it as exactly the function type `func` was taken from.
    /// Call this only from a constructor generic over the function's types that names the adapter
    /// instantiated for those same types (`bootstrap::spawn_fn`, `pool::worker::*_fn`).
    pub(crate) unsafe fn pair(func: usize, adapter: K::Adapter) -> Self {
        LocalFn { func, adapter }
    }

    /// The function's address and its adapter, ready to call: `adapter(func, …)`.
    pub(crate) fn parts(self) -> (FnAddr, K::Adapter) {
        (FnAddr(self.func), self.adapter)
    }

    /// Whether both functions are code of the main executable: only those have the same offset in a
    /// re-executed child. A function of a shared library (or mproc itself linked into a `cdylib`, e.g.
    /// a Python extension) does not: the child execs `/proc/self/exe` and never loads that library.
    pub(crate) fn is_in_main_executable(self) -> bool {
        let main = psys::main_executable_base();
        main.is_some()
            && psys::object_base(anchor_addr()) == main
            && psys::object_base(self.func) == main
            && psys::object_base(adapter_addr::<K>(self.adapter)) == main
    }

    /// The reference to send, authenticated with `key`.
    ///
    /// # Panics
    /// If the functions are not code of the main executable (see
    /// [`is_in_main_executable`](Self::is_in_main_executable)): an offset would mean nothing in the
    /// receiver. A programmer error, caught where the function was handed in.
    #[track_caller]
    pub(crate) fn sign(self, key: &FnKey) -> FnRef {
        assert!(
            self.is_in_main_executable(),
            "mproc: only functions of the main executable can run in another process \
             (not a function of a shared library, and not mproc itself inside a cdylib)"
        );
        let anchor = anchor_addr() as i64;
        let func = self.func as i64 - anchor;
        let adapter = adapter_addr::<K>(self.adapter) as i64 - anchor;
        FnRef {
            func,
            adapter,
            mac: key.mac(K::DOMAIN, func, adapter),
        }
    }
}

/// Why a received [`FnRef`] was refused; nothing was called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FnRefError {
    /// The MAC does not verify: not made by our parent with our key, or made for another adapter kind.
    Unauthenticated,
    /// Authentic, but the offsets do not land in this executable's code (cannot happen for a pair the
    /// parent signed in the same file; reported rather than trusted).
    OutsideExecutable,
}

impl fmt::Display for FnRefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FnRefError::Unauthenticated => {
                "the function reference failed its authentication check (not made by this process's parent)"
            }
            FnRefError::OutsideExecutable => "the function reference points outside the executable",
        })
    }
}

/// A function reference as it travels: offsets from the anchor of a function and of its adapter, and
/// their MAC. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FnRef {
    pub(crate) func: i64,
    pub(crate) adapter: i64,
    pub(crate) mac: u64,
}

impl FnRef {
    /// Bytes of [`to_bytes`](Self::to_bytes).
    pub(crate) const LEN: usize = 24;

    /// Fixed-width little-endian encoding (for the pool's task frames).
    pub(crate) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[..8].copy_from_slice(&self.func.to_le_bytes());
        b[8..16].copy_from_slice(&self.adapter.to_le_bytes());
        b[16..].copy_from_slice(&self.mac.to_le_bytes());
        b
    }

    /// Splits a reference off the front of `bytes`.
    pub(crate) fn split_from(bytes: &[u8]) -> Option<(FnRef, &[u8])> {
        let (h, rest) = bytes.split_at_checked(Self::LEN)?;
        let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        Some((
            FnRef {
                func: word(0) as i64,
                adapter: word(8) as i64,
                mac: word(16),
            },
            rest,
        ))
    }

    /// Turns the reference back into code of this process, if `key` authenticates it for kind `K`.
    ///
    /// # Errors
    /// [`FnRefError`]: nothing is called and no address is formed from an unauthenticated offset.
    pub(crate) fn resolve<K: AdapterKind>(self, key: &FnKey) -> Result<LocalFn<K>, FnRefError> {
        if !key.verify(K::DOMAIN, self.func, self.adapter, self.mac) {
            return Err(FnRefError::Unauthenticated);
        }
        let anchor = anchor_addr();
        let func = anchor.wrapping_add_signed(self.func as isize);
        let adapter = anchor.wrapping_add_signed(self.adapter as isize);
        // Same file as the signer (the MAC says our parent made it, and we run its executable), so the
        // offsets are right; this guards against a broken invariant rather than an attacker. `None ==
        // None` (dladdr failing, e.g. a static binary) does not pass.
        let main = psys::main_executable_base();
        if main.is_none() || psys::object_base(func) != main || psys::object_base(adapter) != main {
            return Err(FnRefError::OutsideExecutable);
        }
        const {
            assert!(std::mem::size_of::<K::Adapter>() == std::mem::size_of::<usize>());
        }
        // SAFETY: the MAC proves our parent signed this pair with `LocalFn::sign` for kind `K`, from a
        // `K::Adapter` function pointer and the function it was paired with; both are code of the main
        // executable, which is the very file this process runs (a spawned child execs the parent's
        // `/proc/self/exe`), so the same offsets from the anchor are the same functions here. The
        // adapter's type is `K::Adapter` (a function pointer, the size of `usize`: checked above).
        let adapter = unsafe { std::mem::transmute_copy::<usize, K::Adapter>(&adapter) };
        Ok(LocalFn { func, adapter })
    }
}

/// A 128-bit key that authenticates function references. Random per pool and per spawning process;
/// never written to shared memory or to a file another process can open. `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FnKey([u64; 2]);

impl fmt::Debug for FnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnKey(..)")
    }
}

impl FnKey {
    /// A fresh key from the kernel's CSPRNG.
    pub(crate) fn random() -> FnKey {
        FnKey([proc::random_u64(), proc::random_u64()])
    }

    /// The key as 16 bytes (for the inherited key socket).
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.0[0].to_le_bytes());
        b[8..].copy_from_slice(&self.0[1].to_le_bytes());
        b
    }

    /// The key from its 16 bytes.
    pub(crate) fn from_bytes(b: [u8; 16]) -> FnKey {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        FnKey([word(0), word(8)])
    }

    fn mac(&self, domain: u64, a: i64, b: i64) -> u64 {
        siphash13(self.0, &[domain, a as u64, b as u64], &[])
    }

    /// The MAC of the bytes of a memfd a child is handed (`what` they are): sent beside them over a
    /// socket nobody else can open, so the receiver uses only the exact bytes the parent wrote. A memfd
    /// can be re-opened through `/proc/<pid>/fd` and written by any process of our uid until it is
    /// sealed, and sealing comes after writing.
    pub(crate) fn content_mac(&self, what: Content, bytes: &[u8]) -> u64 {
        siphash13(self.0, &[what.domain()], bytes)
    }

    fn verify(&self, domain: u64, a: i64, b: i64, mac: u64) -> bool {
        // Not constant-time: the receiver answers "refused" either way and an attacker learns nothing
        // from its timing that it could not learn by trying, since each try costs it a whole task round.
        self.mac(domain, a, b) == mac
    }
}

/// What the bytes a [`FnKey::content_mac`] covers are: each kind has a domain of its own, apart from
/// each other's and from every function reference's, so bytes made for one use never verify as another.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Content {
    /// A spawned child's whole task frame.
    SpawnTask,
    /// The argument of a fork-server request, when it is too large to travel inline.
    ServerArgs,
    /// The environment a fork-server child installs.
    ServerEnvironment,
}

impl Content {
    fn domain(self) -> u64 {
        u64::from_le_bytes(match self {
            Content::SpawnTask => *b"mprocTSK",
            Content::ServerArgs => *b"mprocFSA",
            Content::ServerEnvironment => *b"mprocFSE",
        })
    }
}

/// SipHash-1-3, under a 128-bit key, of the message `words` (as little-endian 8-byte blocks) followed
/// by `bytes`.
fn siphash13(key: [u64; 2], words: &[u64], bytes: &[u8]) -> u64 {
    let [k0, k1] = key;
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut compress = |m: u64| {
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
    };
    for &m in words {
        compress(m);
    }
    let mut blocks = bytes.chunks_exact(8);
    for b in &mut blocks {
        compress(u64::from_le_bytes(b.try_into().expect("chunks of 8")));
    }
    // The final block: the last bytes (fewer than 8), and the message length in bytes in its top byte
    // (SipHash's padding rule).
    let mut last = [0u8; 8];
    let tail = blocks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    let len = (words.len() as u64 * 8).wrapping_add(bytes.len() as u64);
    compress(u64::from_le_bytes(last) | ((len & 0xff) << 56));
    v[2] ^= 0xff;
    for _ in 0..3 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct KindA;
    impl AdapterKind for KindA {
        type Adapter = fn(FnAddr, u32) -> u64;
        const DOMAIN: u64 = 0xa;
        const NAME: &'static str = "test-a";
    }
    struct KindB;
    impl AdapterKind for KindB {
        type Adapter = fn(FnAddr, u32) -> u64;
        const DOMAIN: u64 = 0xb;
        const NAME: &'static str = "test-b";
    }

    fn triple(x: u32) -> u64 {
        u64::from(x) * 3
    }

    fn call_u32(f: FnAddr, x: u32) -> u64 {
        // SAFETY: paired only with `fn(u32) -> u64` in `typed` below.
        let f = unsafe { f.get::<fn(u32) -> u64>() };
        f(x)
    }

    fn typed<K: AdapterKind<Adapter = fn(FnAddr, u32) -> u64>>(f: fn(u32) -> u64) -> LocalFn<K> {
        // SAFETY: `call_u32` calls its address as a `fn(u32) -> u64`, which `f` is.
        unsafe { LocalFn::<K>::pair(f as usize, call_u32) }
    }

    #[test]
    fn signed_references_resolve_and_run() {
        let key = FnKey::random();
        let r = typed::<KindA>(triple).sign(&key);
        let (f, adapter) = r.resolve::<KindA>(&key).unwrap().parts();
        assert_eq!(adapter(f, 14), 42);
        let bytes = r.to_bytes();
        let (back, rest) = FnRef::split_from(&bytes).unwrap();
        assert_eq!((back, rest.len()), (r, 0));
    }

    #[test]
    fn another_key_or_kind_or_offset_is_refused() {
        let key = FnKey::random();
        let r = typed::<KindA>(triple).sign(&key);
        assert_eq!(
            r.resolve::<KindA>(&FnKey::random()).unwrap_err(),
            FnRefError::Unauthenticated
        );
        assert_eq!(
            r.resolve::<KindB>(&key).unwrap_err(),
            FnRefError::Unauthenticated
        );
        for forged in [
            FnRef {
                func: r.func + 1,
                ..r
            },
            FnRef {
                adapter: r.adapter + 3,
                ..r
            },
            FnRef {
                mac: r.mac ^ 1,
                ..r
            },
            FnRef {
                func: r.adapter,
                adapter: r.func,
                ..r
            },
        ] {
            assert_eq!(
                forged.resolve::<KindA>(&key).unwrap_err(),
                FnRefError::Unauthenticated
            );
        }
        assert!(FnRef::split_from(&[0; 23]).is_none());
    }

    #[test]
    fn the_key_round_trips_and_is_not_printed() {
        let k = FnKey::random();
        assert_eq!(FnKey::from_bytes(k.to_bytes()), k);
        assert_eq!(format!("{k:?}"), "FnKey(..)");
    }

    #[test]
    fn siphash_depends_on_every_word_their_order_and_count() {
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let a = siphash13(key, &[1, 2], &[]);
        assert_eq!(a, siphash13(key, &[1, 2], &[]));
        assert_ne!(a, siphash13(key, &[2, 1], &[]));
        assert_ne!(a, siphash13(key, &[1, 2, 0], &[]));
        assert_ne!(a, siphash13([key[0], key[1] ^ 1], &[1, 2], &[]));
    }

    #[test]
    fn siphash_of_bytes_is_siphash_1_3() {
        // Words are their little-endian bytes: the same message however it is split.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let bytes: Vec<u8> = (0..21u8).collect();
        let words = [
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        ];
        let whole = siphash13(key, &[], &bytes);
        assert_eq!(whole, siphash13(key, &words, &bytes[16..]));
        assert_eq!(whole, siphash13(key, &words[..1], &bytes[8..]));
        // std's `DefaultHasher` is SipHash-1-3 under the zero key, and `write` hashes exactly the bytes
        // given: a reference implementation for every length around a block boundary.
        for n in 0..=bytes.len() {
            let mut reference = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hasher::write(&mut reference, &bytes[..n]);
            let reference = std::hash::Hasher::finish(&reference);
            assert_eq!(siphash13([0, 0], &[], &bytes[..n]), reference, "{n} bytes");
        }
    }

    #[test]
    fn a_content_mac_covers_every_byte_and_what_they_are() {
        let key = FnKey::random();
        let frame = vec![7u8; 100];
        let mac = key.content_mac(Content::SpawnTask, &frame);
        for i in [0, 50, 99] {
            let mut changed = frame.clone();
            changed[i] ^= 1;
            assert_ne!(key.content_mac(Content::SpawnTask, &changed), mac);
        }
        assert_ne!(key.content_mac(Content::SpawnTask, &frame[..99]), mac);
        assert_ne!(key.content_mac(Content::ServerArgs, &frame), mac);
        assert_ne!(FnKey::random().content_mac(Content::SpawnTask, &frame), mac);
    }
}
