//! A worker's answer to a task (its outcome: every item's encoded result, or why the task could not
//! run), as it crosses the result ring: inline, cut into frames, or, from [`SHARED_PAYLOAD_BYTES`] on,
//! encoded straight into a block of the worker's own heap, of which only the handle travels.
//!
//! Large answers went through ring fragments before (issue 12): a 64 MiB `Vec<f64>` result was encoded,
//! cut into frames, reassembled in a buffer of the parent, copied out per item and decoded, each buffer
//! in fresh pages of the parent: 130–150 ms, six times what the same vector costs as an argument. A
//! block answer is written once by the worker, and each item is decoded from the block, in place, when
//! the caller asks for it ([`ItemBytes::Lent`]).
//!
//! # The block
//! `release: AtomicU64 | the outcome in postcard`. The worker zeroes `release`, encodes the outcome
//! after it, sends the handle and keeps the block ([`LentAnswers`]). The parent maps it (its arena stays
//! mapped for the next answers, see `heap`) and keeps it while any item still refers to it; when the
//! last reference goes ([`LentBlock`]'s `Drop`), it stores 1 into `release`. Before it allocates its
//! next answer block, the worker frees every block whose `release` reads 1. A worker thus holds the
//! blocks of the answers the parent still holds, and reuses the same memory when the parent keeps up.
//!
//! # Trust
//! The handle in a result frame is untrusted like every byte of the ring. Attaching checks it
//! (`SharedArray::view`: an anonymous arena of another process, the range inside its real size), and
//! every item is a range checked to lie in the block. Its size is not capped: the parent allocates
//! nothing for it but the values the caller decodes, each from bytes that are there, since a block
//! with holes (a sparse file's pages nobody wrote, which a read through the mapping would allocate
//! here) is refused before it is read. The worker can still write the block while the parent decodes it: the parent then
//! decodes garbage into a decode error, as it would from garbage frames. A parent that stores
//! `release` early only corrupts its own answers.
//!
//! # Deaths
//! The parent attaches to a block through the worker (`/proc/<pid>/fd`), so a block whose worker is
//! gone cannot be attached unless its arena is still mapped from an earlier answer. An answer the
//! parent cannot attach, from a worker that is dead, counts as no answer: the task stays in flight and
//! fails with `WorkerDied` (or runs again) as every task of a dead worker does. From a worker that lives
//! on, it fails the task: a garbage handle never leaves a caller waiting.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{ItemBytes, ItemFailure, ItemResults, SHARED_PAYLOAD_BYTES};
use crate::heap::{BlockHandle, SharedArray};

/// What a task came to in the worker: its items' results, or why it could not run.
pub(crate) type Outcome = Result<ItemResults, String>;

const ANSWER_INLINE: u8 = 0;
const ANSWER_SHARED: u8 = 1;
/// Bytes before the outcome in a block: the `release` word.
const RELEASE_WORD: usize = 8;
/// `release` values: sent and not yet attached; attached (mapped by the parent, readable whatever
/// becomes of the worker); released (the parent is done: the worker may free and reuse the block).
const LENT: u64 = 0;
const ATTACHED: u64 = 2;
const RELEASED: u64 = 1;
/// How long a worker about to leave on its own (`max_tasks_per_child`) waits for the parent to attach
/// its last answers: the parent does so as soon as its dispatcher reads the frame, so this bounds only
/// a parent that is gone or stuck.
const ATTACH_BOUND: Duration = Duration::from_secs(10);

/// `outcome` as an inline answer body: the tag, then the outcome in postcard.
pub(crate) fn inline(outcome: &Outcome) -> Vec<u8> {
    postcard::to_extend(outcome, vec![ANSWER_INLINE]).unwrap_or_else(|e| {
        // Only a user `Serialize` can fail, and item results are encoded before this; keep the
        // answer well-formed all the same.
        postcard::to_extend(
            &Err::<ItemResults, String>(e.to_string()),
            vec![ANSWER_INLINE],
        )
        .unwrap_or_default()
    })
}

/// The `release` word at the start of `block`, if it has one (a foreign block may be too short or
/// misaligned: its handle came from the ring).
fn release_word(block: &SharedArray<u8>) -> Option<&AtomicU64> {
    block.head_word()
}

/// The answer blocks a worker lent the parent, until the parent releases them.
#[derive(Debug, Default)]
pub(crate) struct LentAnswers {
    blocks: Vec<SharedArray<u8>>,
}

impl LentAnswers {
    /// The answer body for `outcome`: inline when small, else the handle of a block of this process
    /// that holds it (kept here until released). Frees the blocks the parent released first.
    pub(crate) fn answer(&mut self, outcome: &Outcome) -> Vec<u8> {
        self.blocks
            .retain(|b| release_word(b).is_none_or(|w| w.load(Ordering::Acquire) != RELEASED));
        let size = match postcard::experimental::serialized_size(outcome) {
            Ok(size) if size >= SHARED_PAYLOAD_BYTES => size,
            _ => return inline(outcome),
        };
        match self.in_block(outcome, size) {
            Ok(body) => body,
            // No shared memory for it (or it did not encode): the ring still carries it.
            Err(_) => inline(outcome),
        }
    }

    /// Waits (at most [`ATTACH_BOUND`]) until the parent has attached every block lent to it: a worker
    /// leaving on its own calls this last, since a block still unattached when its process is gone
    /// could no longer be (see "Deaths").
    pub(crate) fn wait_attached(&self) {
        let until = Instant::now() + ATTACH_BOUND;
        let unattached = |b: &SharedArray<u8>| {
            release_word(b).is_some_and(|w| w.load(Ordering::Acquire) == LENT)
        };
        while self.blocks.iter().any(unattached) && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn in_block(&mut self, outcome: &Outcome, size: usize) -> crate::Result<Vec<u8>> {
        let len = size
            .checked_add(RELEASE_WORD)
            .ok_or_else(|| crate::Error::Encode("an answer too large to address".into()))?;
        let mut block = SharedArray::<u8>::for_overwrite(len)?;
        release_word(&block)
            .ok_or_else(|| crate::Error::Encode("an answer block without its word".into()))?
            .store(LENT, Ordering::Relaxed);
        let out = block
            .range_mut(RELEASE_WORD..len)
            .ok_or_else(|| crate::Error::Encode("an answer block shorter than asked".into()))?;
        let written = postcard::to_slice(outcome, out)
            .map_err(|e| crate::Error::Encode(e.to_string()))?
            .len();
        if written != size {
            return Err(crate::Error::Encode(
                "the answer encoded to another size than it was measured at".into(),
            ));
        }
        let body = postcard::to_extend(&block.block_handle(), vec![ANSWER_SHARED])
            .map_err(|e| crate::Error::Encode(e.to_string()))?;
        self.blocks.push(block);
        Ok(body)
    }
}

/// A worker's answer block mapped in the parent, released to the worker when the last item that
/// refers to it is dropped.
#[derive(Debug)]
pub(crate) struct LentBlock {
    block: SharedArray<u8>,
}

impl LentBlock {
    /// The outcome's bytes (all of the block after its word, which `read` checked is there).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.block
            .range(RELEASE_WORD..self.block.len())
            .unwrap_or_default()
    }
}

impl Drop for LentBlock {
    fn drop(&mut self) {
        // Release: our reads of the block happen-before the worker's Acquire load and its reuse.
        if let Some(word) = release_word(&self.block) {
            word.store(RELEASED, Ordering::Release);
        }
    }
}

/// An answer body as the parent reads it.
#[derive(Debug)]
pub(crate) enum Read {
    /// The outcome (or why the answer is not one: garbage decodes to an `Err`).
    Outcome(Outcome),
    /// A block answer whose block could not be attached: no answer if its worker is dead, a failed
    /// task if it lives (see "Deaths").
    Unattached(String),
}

/// Whether `body` is a block answer (whose reading attaches a block of another process).
#[cfg(fuzzing)]
pub(crate) fn names_a_block(body: &[u8]) -> bool {
    body.first() == Some(&ANSWER_SHARED)
}

/// The body of a block answer naming `handle` (for tests that forge one).
#[cfg(test)]
pub(crate) fn block_body(handle: &BlockHandle) -> Vec<u8> {
    postcard::to_extend(handle, vec![ANSWER_SHARED]).expect("a handle encodes")
}

/// Reads an answer body. A block answer has no size cap, as a block argument has none: the cap on
/// reassembled bodies bounds the memory a ring's writer can make the reader allocate, and a block is
/// the worker's memory, mapped, with every item read in place.
pub(crate) fn read(body: &[u8]) -> Read {
    let garbage = |what: String| Read::Outcome(Err(format!("the worker's answer {what}")));
    match body.split_first() {
        Some((&ANSWER_INLINE, rest)) => Read::Outcome(
            crate::codec::postcard_exact(rest)
                .unwrap_or_else(|e| Err(format!("the worker's answer did not decode: {e}"))),
        ),
        Some((&ANSWER_SHARED, rest)) => {
            let Ok(handle) = crate::codec::postcard_exact::<BlockHandle>(rest) else {
                return garbage("names no block".into());
            };
            let block = match SharedArray::<u8>::view(&handle) {
                // Decoding walks the whole block through the mapping, and a read fault on a hole
                // allocates a page: a forger's free sparse block of terabytes would cost us that
                // much (found by review). Every byte of an honest answer was written by its worker.
                Ok(b) if !b.holds_memory().unwrap_or(false) => {
                    return garbage("lies in a block with holes (bytes nobody wrote)".into())
                }
                Ok(b) => match release_word(&b) {
                    Some(word) => {
                        // Mapped here now: the worker may leave without taking the answer along.
                        word.store(ATTACHED, Ordering::Release);
                        b
                    }
                    None => {
                        return garbage("is a block too short or misaligned to hold one".into())
                    }
                },
                Err(e) => return Read::Unattached(e.to_string()),
            };
            Read::Outcome(lent_outcome(Arc::new(LentBlock { block })))
        }
        _ => garbage("has no known form".into()),
    }
}

/// `outcome` with every item's bytes copied into a buffer of its own: the answer block (if any) is
/// released at once. For the answers of a worker that leaves on its own (`max_tasks_per_child`): an
/// item lent from its block keeps the worker's arena mapped here for as long as the caller keeps the
/// result, long after the worker is gone, one arena per worker the pool started. Found by review: past
/// the heap's cap on arenas of other processes mapped at once (256, see `heap`), every further block
/// answer failed to attach (an `Error::Corrupted` with no garbage written anywhere), and its worker
/// waited 10 s ([`ATTACH_BOUND`]) for an attachment that never came. One copy of the answer costs less
/// than the worker start it comes with.
pub(crate) fn owned(outcome: Outcome) -> Outcome {
    outcome.map(|items| {
        items
            .into_iter()
            .map(|item| {
                item.map(|bytes| match bytes {
                    ItemBytes::Lent(..) => ItemBytes::Owned(bytes.as_slice().to_vec()),
                    owned @ ItemBytes::Owned(_) => owned,
                })
            })
            .collect()
    })
}

/// The outcome in `lent`, its items referring to their bytes in the block.
fn lent_outcome(lent: Arc<LentBlock>) -> Outcome {
    let bytes = lent.bytes();
    // The block is exactly the word and the outcome (`LentAnswers::in_block` checks the size written).
    let outcome: Result<Vec<Result<&[u8], ItemFailure>>, String> =
        crate::codec::postcard_exact(bytes)
            .unwrap_or_else(|e| Err(format!("the worker's answer did not decode: {e}")));
    let base = bytes.as_ptr() as usize;
    let items = outcome?;
    Ok(items
        .into_iter()
        .map(|item| {
            item.map(|b| {
                // `b` was borrowed from `bytes`, so it starts inside it.
                let start = b.as_ptr() as usize - base;
                let range: Range<usize> = start..start + b.len();
                ItemBytes::Lent(Arc::clone(&lent), range)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Ok(vec![Ok(ItemBytes::Owned(vec![1, 2, 3]))])
    }

    fn refused(body: &[u8]) -> String {
        match read(body) {
            Read::Outcome(Err(why)) => why,
            Read::Outcome(Ok(items)) => panic!("read {} items", items.len()),
            Read::Unattached(why) => panic!("unattached: {why}"),
        }
    }

    /// Found by review: a block answer is decoded in place, and every byte the decoder walks is read
    /// through the mapping, where a read fault on a hole of a memfd allocates a page (shmem maps no
    /// zero page). A forged answer of a dozen bytes at the start of a sparse block (an outcome of as
    /// many empty items as the block has pairs of bytes, each item two zero bytes) was decoded: the
    /// parent allocated the whole block in pages, and 32 bytes of items per two bytes of it. A forger
    /// made a block of terabytes for free and the parent ran out of memory. The bytes of an honest
    /// answer were all written by its worker: a block with holes is garbage, read no further.
    #[test]
    fn a_block_answer_with_holes_is_garbage() {
        use crate::heap::tests::{foreign_arena, handle_in};
        use std::os::unix::fs::MetadataExt;
        const LEN: usize = 4 << 20;
        let r = foreign_arena(LEN);
        // The release word, `Ok`, the count of items (a varint of 3 bytes), then the items: holes.
        let items = (LEN - RELEASE_WORD - 1 - 3) / 2;
        let head = postcard::to_extend(&(items as u64), vec![0u8; RELEASE_WORD + 1]).unwrap();
        assert_eq!(head.len(), RELEASE_WORD + 1 + 3);
        r.write_payload_at(0, &head).unwrap();
        let written = r.file().metadata().unwrap().blocks() * 512;
        let len = head.len() + 2 * items;
        let got = read(&block_body(&handle_in(&r, 0, len as u64)));
        let now = r.file().metadata().unwrap().blocks() * 512;
        let decoded = match &got {
            Read::Outcome(Ok(items)) => Some(items.len()),
            _ => None,
        };
        drop(got);
        assert_eq!(decoded, None, "the holes were decoded as items");
        assert_eq!(now, written, "reading the answer allocated its holes");
    }

    /// Found by review: bytes after an answer's outcome, or after its block's handle, were ignored.
    #[test]
    fn answers_with_bytes_left_over_are_garbage() {
        let mut body = inline(&outcome());
        assert!(matches!(read(&body), Read::Outcome(Ok(items)) if items.len() == 1));
        body.push(0);
        let why = refused(&body);
        assert!(why.contains("left over"), "{why}");

        // A block answer: the handle (a block of this process, which only another can attach: its
        // handle decoded, then)...
        let mut lent = LentAnswers::default();
        let big = Ok(vec![Ok(ItemBytes::Owned(vec![5; SHARED_PAYLOAD_BYTES]))]);
        let mut body = lent.answer(&big);
        assert_eq!(body.first(), Some(&ANSWER_SHARED));
        assert!(matches!(read(&body), Read::Unattached(_)));
        body.push(0);
        assert!(refused(&body).contains("names no block"));

        // ... and the outcome in the block, of exactly its size there.
        let size = postcard::experimental::serialized_size(&outcome()).unwrap();
        let read_block = |extra: usize| {
            let mut block =
                SharedArray::<u8>::from_slice(&vec![0; RELEASE_WORD + size + extra]).unwrap();
            postcard::to_slice(&outcome(), &mut block[RELEASE_WORD..]).unwrap();
            lent_outcome(Arc::new(LentBlock { block }))
        };
        assert!(matches!(read_block(0), Ok(items) if items.len() == 1));
        let why = read_block(1).unwrap_err();
        assert!(why.contains("left over"), "{why}");
    }
}
