//! Which executable file a rank runs: its size and a hash of its bytes, compared across ranks at
//! [`Cluster::init`](super::Cluster::init).
//!
//! Function references are offsets in the executable file, so every rank must run the *same bytes*, not
//! just a file of the same name: on a cluster each node reads its own copy (from a shared file system, or
//! one copied by hand), and one stale copy would turn offsets into other code. Paths, inode numbers and
//! modification times differ between nodes for the same bytes, so the file's contents are compared.
//!
//! The hash detects a different file; it is not an authenticator (nobody outside the job can inject an
//! identity, see the trust notes in the [module docs](super)), so a fast non-cryptographic mix of 8-byte
//! words is enough: reading and hashing a 50 MB executable takes a few tens of milliseconds, once per job.

use crate::error::{Error, Result};

/// Size and content hash of an executable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExecutableFingerprint {
    size: u64,
    hash: u64,
}

impl ExecutableFingerprint {
    /// The identity of `bytes`.
    pub(super) fn of(bytes: &[u8]) -> ExecutableFingerprint {
        // Two lanes of multiply-rotate-xor over little-endian words, folded together with the length:
        // every byte, its position and the total length change the result.
        const K0: u64 = 0x9e37_79b9_7f4a_7c15;
        const K1: u64 = 0xc2b2_ae3d_27d4_eb4f;
        let (mut a, mut b) = (K0, K1);
        let mut words = bytes.chunks_exact(16);
        for w in &mut words {
            let x = u64::from_le_bytes(w[..8].try_into().expect("8 bytes"));
            let y = u64::from_le_bytes(w[8..].try_into().expect("8 bytes"));
            a = (a ^ x).wrapping_mul(K1).rotate_left(29);
            b = (b ^ y).wrapping_mul(K0).rotate_left(31);
        }
        let mut tail = [0u8; 16];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        a = (a ^ u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"))).wrapping_mul(K1);
        b = (b ^ u64::from_le_bytes(tail[8..].try_into().expect("8 bytes"))).wrapping_mul(K0);
        let mut h = a ^ b.rotate_left(17) ^ (bytes.len() as u64).wrapping_mul(K0);
        h ^= h >> 33;
        h = h.wrapping_mul(K1);
        h ^= h >> 29;
        ExecutableFingerprint {
            size: bytes.len() as u64,
            hash: h,
        }
    }

    /// As the two words ranks exchange.
    pub(super) fn words(self) -> [u64; 2] {
        [self.size, self.hash]
    }

    /// The exchanged words, for an error message.
    pub(super) fn describe(w: [u64; 2]) -> String {
        if w == [0; 2] {
            return "its executable could not be read".into();
        }
        format!("{} bytes, hash {:016x}", w[0], w[1])
    }
}

/// The identity of this process's executable (`/proc/self/exe`: the file that was executed, even if
/// its path was replaced since).
pub(super) fn executable() -> Result<ExecutableFingerprint> {
    let bytes = std::fs::read("/proc/self/exe").map_err(|e| Error::os("read /proc/self/exe", e))?;
    Ok(ExecutableFingerprint::of(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_and_the_length_count() {
        let base: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let id = ExecutableFingerprint::of(&base);
        assert_eq!(id, ExecutableFingerprint::of(&base.clone()));
        for at in [0, 8, 15, 16, 500, 999] {
            let mut other = base.clone();
            other[at] ^= 1;
            assert_ne!(ExecutableFingerprint::of(&other).hash, id.hash, "byte {at}");
        }
        let mut longer = base.clone();
        longer.push(0);
        assert_ne!(ExecutableFingerprint::of(&longer), id);
        assert_ne!(
            ExecutableFingerprint::of(&[]),
            ExecutableFingerprint::of(&[0])
        );
    }

    #[test]
    fn this_executable_has_an_identity() {
        let id = executable().unwrap();
        assert!(id.size > 0);
        assert_eq!(id, executable().unwrap());
    }
}
