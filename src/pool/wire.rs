//! What travels between a pool's parent and its workers, and how.
//!
//! Both directions use rings of byte frames (`Queue<Vec<u8>, RawSlice<u8>>`): each worker has its own
//! task ring, written only by the parent, and all workers share one result ring read only by the parent.
//! A message larger than a slot is cut into fragments; fragments of one message are consecutive in their
//! ring (one producer per task ring; per-producer order in the shared result ring), so reassembly needs
//! only the task id.
//!
//! Frame: `task id: u64 LE | kind: u8 | last: u8 | 6 bytes reserved | body fragment`.
//!
//! A task body is `func: i64 | trampoline: i64 | mac: u64 | payload`. The two offsets locate a function
//! and its adapter in the executable (see `process::bootstrap`); the worker jumps to them only if `mac`
//! is the pool's keyed SipHash of the pair — a process that scribbles on the shared ring cannot make a
//! worker call an arbitrary address, only a function this pool was already asked to run.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub(crate) const FRAME_HEAD: usize = 16;
pub(crate) const KIND_TASK: u8 = 0;
pub(crate) const KIND_RESULT: u8 = 1;
pub(crate) const KIND_WAKE: u8 = 2;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub task: u64,
    pub kind: u8,
    pub last: bool,
}

pub(crate) fn parse(frame: &[u8]) -> Result<(Head, &[u8])> {
    let (h, body) = frame.split_at_checked(FRAME_HEAD).ok_or_else(|| {
        Error::Corrupted(format!(
            "a pool frame of {} bytes has no header",
            frame.len()
        ))
    })?;
    let task = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    Ok((
        Head {
            task,
            kind: h[8],
            last: h[9] != 0,
        },
        body,
    ))
}

/// One frame: the header for (`task`, `kind`, `last`) followed by `part`. The only place the header's
/// byte layout is written.
pub(crate) fn frame(task: u64, kind: u8, last: bool, part: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_HEAD + part.len());
    v.extend_from_slice(&task.to_le_bytes());
    v.push(kind);
    v.push(u8::from(last));
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(part);
    v
}

/// Where the part of a `body_len`-byte body that starts at `from` ends, when a frame holds at most
/// `max_frame` bytes (header included).
pub(crate) fn part_end(from: usize, body_len: usize, max_frame: usize) -> usize {
    let room = max_frame.saturating_sub(FRAME_HEAD).max(1);
    from.saturating_add(room).min(body_len)
}

/// Cuts `body` into frames of at most `max_frame` bytes and hands each to `send`.
pub(crate) fn fragments(
    task: u64,
    kind: u8,
    body: &[u8],
    max_frame: usize,
    mut send: impl FnMut(&Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut from = 0;
    loop {
        let end = part_end(from, body.len(), max_frame);
        send(&frame(task, kind, end == body.len(), &body[from..end]))?;
        if end == body.len() {
            return Ok(());
        }
        from = end;
    }
}

/// A function reference: offsets from the anchor, and their MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FnRef {
    pub func: i64,
    pub tramp: i64,
    pub mac: u64,
}

pub(crate) fn encode_task(f: FnRef, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + payload.len());
    v.extend_from_slice(&f.func.to_le_bytes());
    v.extend_from_slice(&f.tramp.to_le_bytes());
    v.extend_from_slice(&f.mac.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

pub(crate) fn decode_task(body: &[u8]) -> Option<(FnRef, &[u8])> {
    let (h, payload) = body.split_at_checked(24)?;
    let word = |i: usize| i64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    Some((
        FnRef {
            func: word(0),
            tramp: word(8),
            mac: word(16) as u64,
        },
        payload,
    ))
}

/// How one item of a task failed in the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ItemFailure {
    Panicked {
        message: String,
        location: String,
    },
    /// The payload or the result did not (de)serialize, or the task could not be run at all.
    Failed(String),
}

/// The result body of a task: per item, its encoded value or how it failed.
pub(crate) type ItemResults = Vec<Result<Vec<u8>, ItemFailure>>;

/// SipHash-1-3 of two words under a 128-bit key (the pool's secret, never written to shared memory).
pub(crate) fn mac(key: (u64, u64), a: i64, b: i64) -> u64 {
    let (k0, k1) = key;
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
    for m in [a as u64, b as u64, 16u64 << 56] {
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
    }
    v[2] ^= 0xff;
    for _ in 0..3 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble() {
        for len in [0usize, 1, 83, 84, 85, 1000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frames = Vec::new();
            fragments(7, KIND_TASK, &body, 100, |f| {
                frames.push(f.clone());
                Ok(())
            })
            .unwrap();
            let mut joined = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                assert!(f.len() <= 100);
                let (h, b) = parse(f).unwrap();
                assert_eq!(
                    (h.task, h.kind, h.last),
                    (7, KIND_TASK, i + 1 == frames.len())
                );
                joined.extend_from_slice(b);
            }
            assert_eq!(joined, body);
        }
    }

    #[test]
    fn mac_depends_on_key_and_both_words() {
        let k = (1, 2);
        let m = mac(k, 10, 20);
        assert_eq!(m, mac(k, 10, 20));
        assert_ne!(m, mac(k, 11, 20));
        assert_ne!(m, mac(k, 10, 21));
        assert_ne!(m, mac((1, 3), 10, 20));
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert!(parse(&[0; 5]).is_err());
        assert!(decode_task(&[0; 10]).is_none());
    }
}
