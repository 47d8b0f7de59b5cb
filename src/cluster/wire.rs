//! What travels between ranks for a call, and how a call's input is cut into one share per rank.
//!
//! Every message is postcard-encoded; its size was checked by `transport` before it was decoded, and
//! everything decoded is checked again where it is used (an index against its share, a handle by the
//! region layer when it is opened).

use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::heap::BlockHandle;
use crate::process::fnref::FnRef;

/// What rank 0 broadcasts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Command {
    /// `run` is over: serving ranks return.
    Stop,
    /// A call: the serving adapter and the user's function, and the call's arguments.
    Call { op: FnRef, args: Vec<u8> },
}

/// Why a rank's share (or one of its items) failed, as it travels to rank 0. Task indices are the
/// rank's own; rank 0 adds the share's first index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum RemoteFailure {
    Panicked {
        task: u64,
        message: String,
        location: String,
    },
    WorkerDied {
        task: u64,
        signal: Option<i32>,
        exit_code: Option<i32>,
    },
    Other(String),
}

impl From<Error> for RemoteFailure {
    fn from(e: Error) -> Self {
        match e {
            Error::TaskPanicked {
                task,
                message,
                location,
            } => RemoteFailure::Panicked {
                task: task as u64,
                message,
                location,
            },
            Error::WorkerDied {
                task,
                signal,
                exit_code,
            } => RemoteFailure::WorkerDied {
                task: task as u64,
                signal,
                exit_code,
            },
            other => RemoteFailure::Other(other.to_string()),
        }
    }
}

impl RemoteFailure {
    /// The error on rank 0, and the index in the whole input it belongs to (for "the lowest failing
    /// index" rule), for a share of `rank` that starts at `base`.
    pub(super) fn into_error(self, rank: usize, base: usize) -> (usize, Error) {
        // A task index outside the share is a broken invariant; it is clamped, not trusted.
        let at = |task: u64| base.saturating_add(usize::try_from(task).unwrap_or(usize::MAX));
        match self {
            RemoteFailure::Panicked {
                task,
                message,
                location,
            } => (
                at(task),
                Error::TaskPanicked {
                    task: at(task),
                    message,
                    location,
                },
            ),
            RemoteFailure::WorkerDied {
                task,
                signal,
                exit_code,
            } => (
                at(task),
                Error::WorkerDied {
                    task: at(task),
                    signal,
                    exit_code,
                },
            ),
            RemoteFailure::Other(message) => (base, Error::RankFailed { rank, message }),
        }
    }
}

/// One message of `imap_unordered` from a serving rank.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum StreamItem<R> {
    Item {
        index: u64,
        result: std::result::Result<R, RemoteFailure>,
    },
    /// The rank's last message; `failure` says why items are missing, if some are.
    End { failure: Option<String> },
}

/// Where a rank finds the elements of its share of an array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ArrayShare {
    /// How many elements.
    pub elems: u64,
    /// A handle to exactly those elements of rank 0's array (a rank on rank 0's node), or `None`: they
    /// travel as array bytes (unless `part` says where they are).
    pub shared: Option<BlockHandle>,
    /// The id of a distributed array: the elements are this rank's own part of it, and nothing travels.
    pub part: Option<u64>,
}

/// A `transform` share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TransformShare {
    pub input: ArrayShare,
    pub output: ArrayShare,
}

/// The reply of a `transform` share: whether it ran, and whether its output bytes follow.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TransformReply {
    pub outcome: std::result::Result<(), RemoteFailure>,
    pub data_follows: bool,
}

/// The arguments every rank gets for `map_chunks`/`transform`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ArrayArgs {
    pub chunk_len: u64,
    /// The user's parameters, already encoded (empty for the calls without).
    pub params: Vec<u8>,
}

pub(super) fn encode<X: Serialize + ?Sized>(x: &X) -> Result<Vec<u8>> {
    postcard::to_allocvec(x).map_err(|e| Error::Encode(e.to_string()))
}

pub(super) fn decode<X: DeserializeOwned>(bytes: &[u8]) -> Result<X> {
    crate::codec::postcard_whole(bytes)
}

/// Contiguous shares of `total` in proportion to `weights` (the ranks' worker counts).
pub(super) fn split(total: usize, weights: &[usize]) -> Vec<Range<usize>> {
    let sum: u128 = weights.iter().map(|&w| w as u128).sum::<u128>().max(1);
    let mut acc = 0u128;
    weights
        .iter()
        .map(|&w| {
            let lo = (total as u128 * acc / sum) as usize;
            acc += w as u128;
            let hi = (total as u128 * acc / sum) as usize;
            lo..hi
        })
        .collect()
}

/// The consecutive chunks of `chunk` elements of `0..len` (the last may be shorter).
pub(super) fn chunk_ranges(len: usize, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: bytes after a rank's message were ignored.
    #[test]
    fn a_message_with_bytes_left_over_is_a_decode_error() {
        let args = ArrayArgs {
            chunk_len: 4,
            params: vec![1, 2],
        };
        let mut bytes = encode(&args).unwrap();
        assert_eq!(decode::<ArrayArgs>(&bytes).unwrap().params, [1, 2]);
        bytes.push(0);
        let e = decode::<ArrayArgs>(&bytes).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
    }
}
