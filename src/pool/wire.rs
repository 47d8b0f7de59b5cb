//! What travels between a pool's parent and its workers, and how.
//!
//! Both directions use rings of byte frames (`Queue<Vec<u8>, RawSlice<u8>>`): each worker has its own
//! task ring, written only by the parent, and all workers share one result ring read only by the parent.
//! A message larger than a slot is cut into fragments; fragments of one message are consecutive in their
//! ring (one producer per task ring; per-producer order in the shared result ring), so reassembly needs
//! only the task id.
//!
//! Frame: `task id: u64 LE | kind: u8 | last: u8 | worker: u32 LE | 2 bytes reserved | body fragment`.
//! `worker` is the id of the worker that wrote a result frame (0 in task frames), new for each worker
//! the pool starts; the parent accepts a result only from the worker it gave the task to (not from a
//! dead one it replaced), and reassembles at most a capped number of bytes per task.
//!
//! A task body is a [`FnRef`](crate::process::fnref::FnRef) (function and adapter offsets and their MAC,
//! 24 bytes) followed by the payload. The worker calls the function only if the MAC verifies under the
//! pool's key, which no other process can read (see `process::fnref`): a process that scribbles on the
//! rings cannot make a worker call an arbitrary address, only a function this pool was asked to run.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::answer::LentBlock;
use super::item_wire::ValueFromWire;

use crate::error::{Error, Result};
use crate::heap::{BlockHandle, SharedArray};
use crate::process::fnref::FnRef;

pub(crate) const FRAME_HEAD: usize = 16;
pub(crate) const KIND_TASK: u8 = 0;
pub(crate) const KIND_RESULT: u8 = 1;
pub(crate) const KIND_WAKE: u8 = 2;
/// From a worker about to exit after answering its task (a panic under `panic = "abort"`).
pub(crate) const KIND_EXITING: u8 = 3;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub task: u64,
    pub kind: u8,
    pub last: bool,
    /// The worker that wrote a result frame.
    pub worker: u32,
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
            worker: u32::from_le_bytes(h[10..14].try_into().expect("4 bytes")),
        },
        body,
    ))
}

/// One frame: the header for (`task`, `kind`, `last`, `worker`) followed by `part`. The only place the
/// header's byte layout is written.
pub(crate) fn frame(task: u64, kind: u8, last: bool, worker: u32, part: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_HEAD + part.len());
    v.extend_from_slice(&task.to_le_bytes());
    v.push(kind);
    v.push(u8::from(last));
    v.extend_from_slice(&worker.to_le_bytes());
    v.extend_from_slice(&[0; 2]);
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
    worker: u32,
    body: &[u8],
    max_frame: usize,
    mut send: impl FnMut(&Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut from = 0;
    loop {
        let end = part_end(from, body.len(), max_frame);
        send(&frame(
            task,
            kind,
            end == body.len(),
            worker,
            &body[from..end],
        ))?;
        if end == body.len() {
            return Ok(());
        }
        from = end;
    }
}

/// Reassembles fragmented bodies, per task id, never past a cap: whoever writes a ring cannot grow the
/// reader's memory beyond `max` bytes per task it has a fragment of. Used by the parent for results and
/// by each worker for its tasks.
#[derive(Debug)]
pub(crate) struct Reassembly {
    parts: HashMap<u64, Part>,
    max: u64,
    /// At most one body open at a time (a worker's tasks: the parent sends one task at a time on a
    /// worker's ring, so a fragment of another task means the open one will never end).
    one_open: bool,
}

#[derive(Debug)]
enum Part {
    Growing(Vec<u8>),
    /// Went past the cap: the fragments still to come are dropped, and the body fails.
    Oversized,
}

impl Reassembly {
    pub(crate) fn new(max: u64) -> Reassembly {
        Reassembly {
            parts: HashMap::new(),
            max,
            one_open: false,
        }
    }

    /// For a reader whose writer sends one body at a time: a fragment of a new task drops the body
    /// left open, so the memory held stays under one `max`, however many task ids garbage invents.
    pub(crate) fn one_at_a_time(max: u64) -> Reassembly {
        Reassembly {
            one_open: true,
            ..Reassembly::new(max)
        }
    }

    /// Adds one fragment of `task`. On its last fragment, returns the whole body, or an error if the
    /// body went past the cap (nothing past the cap was ever kept).
    pub(crate) fn push(
        &mut self,
        task: u64,
        last: bool,
        fragment: &[u8],
    ) -> Option<std::result::Result<Vec<u8>, String>> {
        if self.one_open && !self.parts.contains_key(&task) {
            self.parts.clear();
        }
        let part = self
            .parts
            .entry(task)
            .or_insert_with(|| Part::Growing(Vec::new()));
        if let Part::Growing(buf) = part {
            let fits = (buf.len() as u64).saturating_add(fragment.len() as u64) <= self.max;
            if fits {
                // Grow as a `Vec` does (doubling), but never past the cap: capacity is memory held
                // too, and doubling alone takes a body just under the cap to nearly twice the cap.
                let need = buf.len() + fragment.len();
                if need > buf.capacity() {
                    let cap = usize::try_from(self.max).unwrap_or(usize::MAX);
                    let target = buf.capacity().saturating_mul(2).max(need).min(cap);
                    buf.reserve_exact(target - buf.len());
                }
                buf.extend_from_slice(fragment);
            } else {
                *part = Part::Oversized;
            }
        }
        if !last {
            return None;
        }
        Some(match self.parts.remove(&task) {
            Some(Part::Growing(body)) => Ok(body),
            _ => Err(format!("a message larger than {} bytes", self.max)),
        })
    }

    /// Drops whatever was gathered for `task` (its sender died).
    pub(crate) fn forget(&mut self, task: u64) {
        self.parts.remove(&task);
    }
}

/// Payloads from this size on are not copied into the task ring but encoded straight into a shared
/// block that the worker decodes in place (joblib's `max_nbytes`, 1 MB there too): a 64 MiB argument
/// costs one encoding and one decoding, no ring fragments, no reassembly buffer.
pub(crate) const SHARED_PAYLOAD_BYTES: usize = 1 << 20;

const PAYLOAD_INLINE: u8 = 0;
const PAYLOAD_SHARED: u8 = 1;

/// A task's encoded argument(s), as it is handed to a worker.
#[derive(Debug)]
pub(crate) enum Payload {
    /// In the task frame.
    Inline(Vec<u8>),
    /// In a block of the parent's heap, lent to the worker until the task is over.
    Shared(SharedArray<u8>),
}

impl Payload {
    /// `value` in postcard: inline if small, else straight into a shared block (one pass to size the
    /// encoding, one to write it in place: no intermediate buffer the size of the argument; a reused
    /// block is not zeroed first, see [`encode_into`]).
    pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Payload> {
        let size = postcard::experimental::serialized_size(value).map_err(encode_err)?;
        if size < SHARED_PAYLOAD_BYTES {
            return postcard::to_allocvec(value)
                .map(Payload::Inline)
                .map_err(encode_err);
        }
        encode_into(value, SharedArray::<u8>::for_overwrite(size)?).map(Payload::Shared)
    }

    /// The bytes that travel in the task ring for it.
    fn wire_len(&self) -> usize {
        match self {
            Payload::Inline(v) => v.len(),
            Payload::Shared(_) => 0,
        }
    }
}

fn encode_err(e: postcard::Error) -> Error {
    Error::Encode(e.to_string())
}

/// Encodes `value` over `block`, whatever it held, and zeroes what the encoding left of it: the block
/// was sized by a first pass over `value` and is not zeroed first (`SharedArray::for_overwrite`), so a
/// `Serialize` impl that writes fewer bytes the second time than it counted the first would otherwise
/// hand the worker stale bytes of an earlier block. On an error the block is dropped, never lent.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    mut block: SharedArray<u8>,
) -> Result<SharedArray<u8>> {
    let written = postcard::to_slice(value, &mut block)
        .map_err(encode_err)?
        .len();
    block[written..].fill(0);
    Ok(block)
}

/// Where a received task's payload is.
#[derive(Debug)]
pub(crate) enum PayloadRef<'a> {
    Inline(&'a [u8]),
    Shared(BlockHandle),
}

/// A task body: the function reference, the payload's kind, then the payload (or its block's handle).
pub(crate) fn encode_task(f: FnRef, payload: &Payload) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(FnRef::LEN + 1 + payload.wire_len());
    v.extend_from_slice(&f.to_bytes());
    match payload {
        Payload::Inline(p) => {
            v.push(PAYLOAD_INLINE);
            v.extend_from_slice(p);
        }
        Payload::Shared(block) => {
            v.push(PAYLOAD_SHARED);
            v = postcard::to_extend(&block.block_handle(), v)
                .map_err(|e| Error::Encode(e.to_string()))?;
        }
    }
    Ok(v)
}

/// Splits a task body into its function reference and where its payload is. `None`: garbage.
pub(crate) fn decode_task(body: &[u8]) -> Option<(FnRef, PayloadRef<'_>)> {
    let (f, rest) = FnRef::split_from(body)?;
    let (&kind, rest) = rest.split_first()?;
    match kind {
        PAYLOAD_INLINE => Some((f, PayloadRef::Inline(rest))),
        PAYLOAD_SHARED => {
            let h: BlockHandle = crate::codec::postcard_exact(rest).ok()?;
            Some((f, PayloadRef::Shared(h)))
        }
        _ => None,
    }
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
pub(crate) type ItemResults = Vec<Result<ItemBytes, ItemFailure>>;

/// One item's encoded result, inside [`ItemResults`]. On the wire it is bytes (a length and one copy),
/// not serde's sequence of `u8`s (a call per byte each way: 64 MiB of result took longer to frame than
/// to compute).
#[derive(Debug, Clone)]
pub(crate) enum ItemBytes {
    /// Bytes of its own: as the worker encodes them, or from an answer that came inline.
    Owned(Vec<u8>),
    /// Bytes `range` of a worker's answer block, mapped here until every item of it is gone
    /// (`answer`): decoded in place, never copied into a buffer of their own.
    Lent(Arc<LentBlock>, Range<usize>),
}

impl ItemBytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            ItemBytes::Owned(v) => v,
            // The range was taken from these bytes when the answer was read.
            ItemBytes::Lent(block, range) => block.bytes().get(range.clone()).unwrap_or_default(),
        }
    }
}

impl Serialize for ItemBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for ItemBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        ValueFromWire::<Vec<u8>>::deserialize(d).map(|v| ItemBytes::Owned(v.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble() {
        for len in [0usize, 1, 83, 84, 85, 1000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frames = Vec::new();
            fragments(7, KIND_TASK, 3, &body, 100, |f| {
                frames.push(f.clone());
                Ok(())
            })
            .unwrap();
            let mut joined = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                assert!(f.len() <= 100);
                let (h, b) = parse(f).unwrap();
                assert_eq!(
                    (h.task, h.kind, h.last, h.worker),
                    (7, KIND_TASK, i + 1 == frames.len(), 3)
                );
                joined.extend_from_slice(b);
            }
            assert_eq!(joined, body);
        }
    }

    #[test]
    fn reassembly_is_capped_per_task() {
        let mut r = Reassembly::new(10);
        assert_eq!(r.push(1, false, b"12345"), None);
        assert_eq!(r.push(2, false, b"abc"), None);
        assert_eq!(r.push(1, true, b"67890"), Some(Ok(b"1234567890".to_vec())));
        // Past the cap: nothing more is kept, and the body fails on its last fragment.
        assert_eq!(r.push(2, false, b"defghijk"), None);
        assert_eq!(r.push(2, false, &[0; 1 << 16]), None);
        assert!(matches!(r.parts.get(&2), Some(Part::Oversized)));
        assert!(r
            .push(2, true, b"z")
            .unwrap()
            .unwrap_err()
            .contains("larger than 10"));
        assert!(r.parts.is_empty());
        r.push(3, false, b"x");
        r.forget(3);
        assert!(r.parts.is_empty());
    }

    /// A worker's reassembly holds one open body: garbage that starts bodies under ever new task ids
    /// cannot make it hold one cap per id.
    #[test]
    fn a_workers_reassembly_holds_one_open_body() {
        let mut r = Reassembly::one_at_a_time(10);
        for task in 0..1000 {
            assert_eq!(r.push(task, false, b"123456789"), None);
            assert_eq!(r.parts.len(), 1);
        }
        // The open body still completes, and a body's own fragments never drop it.
        assert_eq!(r.push(999, true, b"0"), Some(Ok(b"1234567890".to_vec())));
        assert!(r.parts.is_empty());
    }

    /// Found by the `pool_wire` fuzz target: the buffer doubled past the cap (a body of 336 bytes
    /// under a cap of 512 grew to 672), so a body just under the default 256 MiB cap held 512 MiB.
    #[test]
    fn reassembly_capacity_stays_under_the_cap() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push(1, false, &[1; 60]), None);
        assert_eq!(r.push(1, false, &[2; 30]), None);
        assert!(matches!(r.parts.get(&1), Some(Part::Growing(b)) if b.capacity() <= 100));
        assert_eq!(r.push(1, false, &[3; 10]), None);
        let body = r.push(1, true, &[]).unwrap().unwrap();
        assert_eq!(body.len(), 100);
        assert!(body.capacity() <= 100, "capacity {}", body.capacity());
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert!(parse(&[0; 5]).is_err());
        assert!(decode_task(&[0; 24]).is_none());
        assert!(decode_task(&[[0; 24].as_slice(), &[7]].concat()).is_none());
        assert!(decode_task(&[[0; 24].as_slice(), &[PAYLOAD_SHARED, 0xff]].concat()).is_none());
    }

    /// Found by review: bytes after a lent payload's handle were ignored.
    #[test]
    fn a_block_handle_with_bytes_left_over_is_garbage() {
        let block = SharedArray::<u8>::from_slice(&[1, 2, 3]).unwrap();
        let mut body = [0; 24].to_vec();
        body.push(PAYLOAD_SHARED);
        let mut body = postcard::to_extend(&block.block_handle(), body).unwrap();
        assert!(matches!(
            decode_task(&body),
            Some((_, PayloadRef::Shared(h))) if h == block.block_handle()
        ));
        body.push(0);
        assert!(decode_task(&body).is_none());
    }
}
