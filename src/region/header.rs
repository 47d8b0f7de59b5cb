//! The header at offset 0 of every region, and its validation.
//!
//! Layout (all little-endian native words, 64 bytes, payload starts at [`PAYLOAD_OFFSET`]):
//!
//! | offset | field           | meaning                                                        |
//! |-------:|-----------------|----------------------------------------------------------------|
//! | 0      | `magic`         | `b"MPROCRG1"` read as a `u64`                                  |
//! | 8      | `version`       | [`FORMAT_VERSION`]                                             |
//! | 12     | `header_size`   | `size_of::<Header>()`, so a future header can grow             |
//! | 16     | `type_hash`     | layout hash of the payload type ([`layout_hash`])              |
//! | 24     | `payload_size`  | bytes of payload after [`PAYLOAD_OFFSET`]                      |
//! | 32     | `region_id`     | random nonce; a handle must name the same id to open           |
//! | 40     | `creator_pid`   | pid that created the region                                    |
//! | 44     | `flags`         | [`FLAG_PERSISTENT`]                                            |
//! | 48     | `creator_start` | creator's start time (clock ticks since boot), against pid reuse |
//! | 56     | `ready`         | 0 while the creator initialises, [`READY`] once published      |
//! | 60     | `creator_pidns` | creator's pid namespace (inode of `/proc/self/ns/pid`), 0 = unknown |
//!
//! `creator_pidns` was a reserved word, always 0, in the first builds of this format. The layout did not
//! change, so [`FORMAT_VERSION`] did not either: 0 reads as "namespace unknown", the cautious meaning
//! (the creator is then never judged dead, see `creator_known_dead` in `mod.rs`), which is exactly right
//! for a region made by such an older build. Namespace inode numbers are 32-bit in the kernel
//! (`ns_common.inum` is an `unsigned int`); one that does not fit is recorded as 0, unknown.
//!
//! Every field is an atomic: another process may scribble on the header at any time, and an atomic load
//! of a garbage value is still a defined read. The creator writes all fields, then stores `ready` with
//! `Release`; an opener loads `ready` with `Acquire` before reading any other field.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Magic bytes at offset 0 of every region.
pub(crate) const MAGIC: [u8; 8] = *b"MPROCRG1";
/// Version of the on-memory format described above, and of every layout that lives in a region (it
/// feeds every type hash). 2: lock words record the holder's pid namespace and unlock clears the holder
/// record, and the header records the creator's namespace; a version-1 process sharing a lock with a
/// version-2 one could take a live holder for dead, so the two refuse each other's regions.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Where the payload starts: one cache line pair after the header, so payload atomics never share a
/// line with the header.
pub(crate) const PAYLOAD_OFFSET: usize = 128;
/// The region is not unlinked when its creator's handle is dropped, and the janitor leaves it alone.
pub(crate) const FLAG_PERSISTENT: u32 = 1;
/// Value of `ready` once the payload is initialised.
pub(crate) const READY: u32 = 0x5245_4459; // "REDY"

#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub header_size: AtomicU32,
    pub type_hash: AtomicU64,
    pub payload_size: AtomicU64,
    pub region_id: AtomicU64,
    pub creator_pid: AtomicU32,
    pub flags: AtomicU32,
    pub creator_start: AtomicU64,
    pub ready: AtomicU32,
    pub creator_pidns: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Header>() == 64);
const _: () = assert!(std::mem::size_of::<Header>() <= PAYLOAD_OFFSET);

/// A copy of the header's fields, taken once at open; nothing is re-read from shared memory afterwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderSnapshot {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub type_hash: u64,
    pub payload_size: u64,
    pub region_id: u64,
    pub creator_pid: u32,
    pub flags: u32,
    pub creator_start: u64,
    pub creator_pidns: u32,
}

impl HeaderSnapshot {
    /// The fields of a header read as plain bytes (by `pread`, from a file that may not be mapped),
    /// and its `ready` word.
    pub(crate) fn from_bytes(b: &[u8; 64]) -> (HeaderSnapshot, u32) {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| (u64::from(u32_at(o + 4)) << 32) | u64::from(u32_at(o));
        let snapshot = HeaderSnapshot {
            magic: u64_at(0).to_le_bytes(),
            version: u32_at(8),
            header_size: u32_at(12),
            type_hash: u64_at(16),
            payload_size: u64_at(24),
            region_id: u64_at(32),
            creator_pid: u32_at(40),
            flags: u32_at(44),
            creator_start: u64_at(48),
            creator_pidns: u32_at(60),
        };
        (snapshot, u32_at(56))
    }
}

impl Header {
    pub(crate) fn snapshot(&self) -> HeaderSnapshot {
        // Relaxed is enough: the caller already synchronised with the creator through `ready` (Acquire).
        HeaderSnapshot {
            magic: self.magic.load(Ordering::Relaxed).to_le_bytes(),
            version: self.version.load(Ordering::Relaxed),
            header_size: self.header_size.load(Ordering::Relaxed),
            type_hash: self.type_hash.load(Ordering::Relaxed),
            payload_size: self.payload_size.load(Ordering::Relaxed),
            region_id: self.region_id.load(Ordering::Relaxed),
            creator_pid: self.creator_pid.load(Ordering::Relaxed),
            flags: self.flags.load(Ordering::Relaxed),
            creator_start: self.creator_start.load(Ordering::Relaxed),
            creator_pidns: self.creator_pidns.load(Ordering::Relaxed),
        }
    }

    /// Writes every field but `ready` (the creator publishes that last, after initialising the payload).
    ///
    /// The magic goes last, with Release: whoever sees it (Acquire) sees every other field, in particular
    /// the creator's identity the janitor and openers judge the region by.
    pub(crate) fn write(&self, s: &HeaderSnapshot) {
        self.version.store(s.version, Ordering::Relaxed);
        self.header_size.store(s.header_size, Ordering::Relaxed);
        self.type_hash.store(s.type_hash, Ordering::Relaxed);
        self.payload_size.store(s.payload_size, Ordering::Relaxed);
        self.region_id.store(s.region_id, Ordering::Relaxed);
        self.creator_pid.store(s.creator_pid, Ordering::Relaxed);
        self.flags.store(s.flags, Ordering::Relaxed);
        self.creator_start.store(s.creator_start, Ordering::Relaxed);
        self.creator_pidns.store(s.creator_pidns, Ordering::Relaxed);
        self.magic
            .store(u64::from_le_bytes(s.magic), Ordering::Release);
    }

    /// The magic, loaded with Acquire (see [`Header::write`]).
    pub(crate) fn magic_acquire(&self) -> [u8; 8] {
        self.magic.load(Ordering::Acquire).to_le_bytes()
    }
}

/// FNV-1a over the type's name, size and alignment, and the format version: what a region's payload is.
///
/// Two builds of the same program agree on it; a different type, a resized struct or a new format do not.
pub(crate) fn layout_hash(type_name: &str, size: usize, align: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(type_name.as_bytes());
    eat(&(size as u64).to_le_bytes());
    eat(&(align as u64).to_le_bytes());
    eat(&FORMAT_VERSION.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_distinguishes_types_and_sizes() {
        let a = layout_hash("u64", 8, 8);
        assert_eq!(a, layout_hash("u64", 8, 8));
        assert_ne!(a, layout_hash("i64", 8, 8));
        assert_ne!(a, layout_hash("u64", 16, 8));
    }

    #[test]
    fn header_bytes_read_back_as_written() {
        let h = Header {
            magic: AtomicU64::new(0),
            version: AtomicU32::new(0),
            header_size: AtomicU32::new(0),
            type_hash: AtomicU64::new(0),
            payload_size: AtomicU64::new(0),
            region_id: AtomicU64::new(0),
            creator_pid: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            creator_start: AtomicU64::new(0),
            ready: AtomicU32::new(READY),
            creator_pidns: AtomicU32::new(0),
        };
        let written = HeaderSnapshot {
            magic: MAGIC,
            version: 0x0102_0304,
            header_size: 64,
            type_hash: 0x1112_1314_1516_1718,
            payload_size: 0x2122_2324_2526_2728,
            region_id: 0x3132_3334_3536_3738,
            creator_pid: 0x4142_4344,
            flags: 0x4546_4748,
            creator_start: 0x5152_5354_5556_5758,
            creator_pidns: 0x6162_6364,
        };
        h.write(&written);
        // SAFETY: `Header` is 64 bytes of atomics, with no padding (asserted above) and no other thread
        // writing it: its bytes are initialised and may be read as plain bytes.
        let bytes: [u8; 64] = unsafe { std::mem::transmute_copy(&h) };
        let (read, ready) = HeaderSnapshot::from_bytes(&bytes);
        assert_eq!(format!("{read:?}"), format!("{written:?}"));
        assert_eq!(ready, READY);
    }
}
