//! How bytes move between ranks: the only place this module calls MPI's point-to-point and broadcast
//! operations.
//!
//! Three shapes of message, each with its own size rule:
//! - a **message** (one `MPI_Send`, matched with `MPI_Improbe`/`MPI_Mrecv`): the receiver learns the size
//!   from the probe and allocates only if it is at most the bound the caller names. Commands (rank 0 to
//!   every other rank) are messages too;
//! - **array bytes**: both sides know the exact size from the operation (a share's element count times
//!   the element size), the sender sends them in [`pieces`] of whole chunks (at most [`PIECE`] bytes:
//!   MPI counts are `int`), and the receiver receives them straight into shared memory, checking each
//!   piece's size — and may start on the chunks of a piece while the next is on the way.
//!
//! Bytes from another rank are trusted as far as MPI is (see the [module docs](super)), and no further:
//! a size that breaks these rules means the ranks no longer agree on where they are in the protocol,
//! which no error value can repair (the next message would be read as the wrong thing). That ends the job
//! through `MPI_Abort` with a message naming the rank and what was wrong ([`violation`]).

use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use std::ops::Range;
use std::time::Duration;

use mpi::traits::Equivalence;

/// Rank 0 to rank r: the description of r's share of a call.
pub(super) const TAG_SHARE: i32 = 0x6d70_0001;
/// Array bytes, either way.
pub(super) const TAG_DATA: i32 = 0x6d70_0002;
/// Rank r to rank 0: the outcome of r's share.
pub(super) const TAG_REPLY: i32 = 0x6d70_0003;
/// Rank r to rank 0: one item of `imap_unordered`, or the end of r's items.
pub(super) const TAG_ITEM: i32 = 0x6d70_0004;
/// Rank 0 to rank r: the next command.
pub(super) const TAG_COMMAND: i32 = 0x6d70_0005;

/// The largest command or message (one MPI message: its count is a C `int`).
pub(super) const MAX_MESSAGE: usize = i32::MAX as usize;
/// The largest piece of array bytes in one MPI message.
pub(super) const PIECE: usize = 1 << 30;

/// Ends the whole job: the ranks disagree about the protocol. Prints the reason on this rank's stderr
/// first (Open MPI's own message says only that a rank called `MPI_Abort`).
pub(super) fn violation(world: &SimpleCommunicator, what: &str) -> ! {
    eprintln!(
        "mproc cluster: rank {}: {what}; the ranks no longer agree on the protocol, aborting the MPI job",
        world.rank()
    );
    world.abort(70)
}

/// Rank 0: sends the command `bytes` to every other rank.
///
/// Point-to-point rather than `MPI_Bcast`: a serving rank waits for its next command by polling with a
/// growing sleep ([`wait_for`]), where a blocking broadcast would spin on a core its local pool's workers
/// need (Open MPI polls while it waits).
pub(super) fn broadcast_command(world: &SimpleCommunicator, bytes: &[u8]) {
    for r in 1..world.size() {
        send_message(world, r as usize, TAG_COMMAND, bytes);
    }
}

/// Any rank but 0: receives the next command.
pub(super) fn receive_command(world: &SimpleCommunicator) -> Vec<u8> {
    let (msg, status) = wait_for(world, Some(0), TAG_COMMAND);
    receive_probed(world, msg, status, MAX_MESSAGE)
}

/// Waits for the next message with `tag` from `from` (any rank if `None`), without keeping a core busy:
/// it polls (`MPI_Improbe`), sleeping between polls for a time that doubles from 20 µs up to 1 ms. A
/// message that is already there costs one poll; a rank idle between calls uses no CPU to speak of.
pub(super) fn wait_for(
    world: &SimpleCommunicator,
    from: Option<usize>,
    tag: i32,
) -> (mpi::point_to_point::Message, mpi::point_to_point::Status) {
    let mut nap = Duration::from_micros(20);
    loop {
        let found = match from {
            Some(r) => world
                .process_at_rank(r as i32)
                .immediate_matched_probe_with_tag(tag),
            None => world.any_process().immediate_matched_probe_with_tag(tag),
        };
        if let Some(x) = found {
            return x;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}

/// Sends one message of at most [`MAX_MESSAGE`] bytes (checked by the caller, who can still turn a
/// larger one into an error value).
pub(super) fn send_message(world: &SimpleCommunicator, to: usize, tag: i32, bytes: &[u8]) {
    assert!(
        bytes.len() <= MAX_MESSAGE,
        "a cluster message is larger than an MPI message"
    );
    world.process_at_rank(to as i32).send_with_tag(bytes, tag);
}

/// Receives the next message with `tag` from `from`, if it is at most `max` bytes; a larger one ends
/// the job.
pub(super) fn receive_message(
    world: &SimpleCommunicator,
    from: usize,
    tag: i32,
    max: usize,
) -> Vec<u8> {
    let (msg, status) = wait_for(world, Some(from), tag);
    receive_probed(world, msg, status, max)
}

/// Receives a message already matched by a probe, if it is at most `max` bytes.
pub(super) fn receive_probed(
    world: &SimpleCommunicator,
    msg: mpi::point_to_point::Message,
    status: mpi::point_to_point::Status,
    max: usize,
) -> Vec<u8> {
    let count = status.count(u8::equivalent_datatype());
    let Ok(len) = usize::try_from(count) else {
        violation(world, &format!("a message of {count} bytes was probed"));
    };
    if len > max {
        violation(
            world,
            &format!(
                "rank {} sent a message of {len} bytes where at most {max} fit (tag {:#x})",
                status.source_rank(),
                status.tag()
            ),
        );
    }
    let mut bytes = vec![0u8; len];
    msg.matched_receive_into(&mut bytes[..]);
    bytes
}

/// About how many bytes of an array travel in one MPI message: small enough that a receiver can start
/// working on the first chunks while the rest are on the way, large enough that per-message costs vanish.
pub(super) const PIPELINE_BYTES: usize = 8 << 20;

/// How `total` array bytes made of chunks of `unit` bytes are cut into MPI messages: whole chunks of
/// about [`PIPELINE_BYTES`] together, a chunk above [`PIECE`] bytes in pieces of `PIECE`. Sender and
/// receiver both compute it from the operation, so they agree without a word.
pub(super) fn pieces(total: usize, unit: usize) -> impl Iterator<Item = Range<usize>> {
    let unit = unit.max(1);
    let step = if unit >= PIECE {
        PIECE
    } else {
        unit * (PIPELINE_BYTES / unit).max(1)
    };
    (0..total.div_ceil(step)).map(move |i| i * step..((i + 1) * step).min(total))
}

/// Sends array bytes made of chunks of `unit` bytes, in [`pieces`].
pub(super) fn send_array(world: &SimpleCommunicator, to: usize, bytes: &[u8], unit: usize) {
    let p = world.process_at_rank(to as i32);
    for piece in pieces(bytes.len(), unit) {
        p.send_with_tag(&bytes[piece], TAG_DATA);
    }
}

/// Receives one piece of array bytes from `from` into `piece` (sent by [`send_array`]), checking its
/// size.
pub(super) fn receive_piece(world: &SimpleCommunicator, from: usize, piece: &mut [u8]) {
    let want = piece.len();
    // A longer message than the piece is MPI_ERR_TRUNCATE, fatal under MPI's default error handler; a
    // shorter one is caught here.
    let status = world
        .process_at_rank(from as i32)
        .receive_into_with_tag(piece, TAG_DATA);
    let got = status.count(u8::equivalent_datatype());
    if usize::try_from(got) != Ok(want) {
        violation(
            world,
            &format!("rank {from} sent {got} array bytes where {want} were due"),
        );
    }
}

/// Receives exactly `buf.len()` array bytes of chunks of `unit` bytes from `from`.
pub(super) fn receive_array(world: &SimpleCommunicator, from: usize, buf: &mut [u8], unit: usize) {
    for piece in pieces(buf.len(), unit) {
        receive_piece(world, from, &mut buf[piece]);
    }
}

/// Receives and drops `total` array bytes of chunks of `unit` bytes from `from`: the sender sends them
/// whatever became of the buffer they were meant for, and leaving them unreceived would put the ranks
/// out of step.
pub(super) fn discard_array(world: &SimpleCommunicator, from: usize, total: u64, unit: usize) {
    let Ok(total) = usize::try_from(total) else {
        violation(world, "an array larger than memory was announced");
    };
    let mut scratch = Vec::new();
    for piece in pieces(total, unit) {
        scratch.resize(piece.len(), 0);
        receive_piece(world, from, &mut scratch[..]);
    }
}

/// The bytes this rank exchanged with each other rank (point-to-point messages and array bytes; the
/// broadcast commands are not counted), and the transport calls that count them.
#[derive(Debug, Clone, Default)]
pub(super) struct Traffic {
    pub sent: Vec<u64>,
    pub received: Vec<u64>,
}

impl Traffic {
    pub(super) fn new(ranks: usize) -> Traffic {
        Traffic {
            sent: vec![0; ranks],
            received: vec![0; ranks],
        }
    }

    pub(super) fn send_message(
        &mut self,
        world: &SimpleCommunicator,
        to: usize,
        tag: i32,
        b: &[u8],
    ) {
        send_message(world, to, tag, b);
        self.sent[to] += b.len() as u64;
    }

    pub(super) fn receive_message(
        &mut self,
        world: &SimpleCommunicator,
        from: usize,
        tag: i32,
        max: usize,
    ) -> Vec<u8> {
        let b = receive_message(world, from, tag, max);
        self.received[from] += b.len() as u64;
        b
    }

    pub(super) fn received_probed(&mut self, from: usize, len: usize) {
        if let Some(r) = self.received.get_mut(from) {
            *r += len as u64;
        }
    }

    pub(super) fn send_array(
        &mut self,
        world: &SimpleCommunicator,
        to: usize,
        b: &[u8],
        unit: usize,
    ) {
        send_array(world, to, b, unit);
        self.sent[to] += b.len() as u64;
    }

    pub(super) fn receive_array(
        &mut self,
        world: &SimpleCommunicator,
        from: usize,
        b: &mut [u8],
        unit: usize,
    ) {
        receive_array(world, from, b, unit);
        self.received[from] += b.len() as u64;
    }

    pub(super) fn receive_piece(&mut self, world: &SimpleCommunicator, from: usize, b: &mut [u8]) {
        receive_piece(world, from, b);
        self.received[from] += b.len() as u64;
    }

    pub(super) fn discard_array(
        &mut self,
        world: &SimpleCommunicator,
        from: usize,
        total: u64,
        unit: usize,
    ) {
        discard_array(world, from, total, unit);
        self.received[from] += total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_chunks_of_about_the_pipeline_size_and_never_above_an_mpi_count() {
        let check = |total: usize, unit: usize| {
            let p: Vec<_> = pieces(total, unit).collect();
            assert_eq!(p.first().map_or(0, |r| r.start), 0);
            assert_eq!(p.last().map_or(0, |r| r.end), total);
            for w in p.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            for r in &p {
                assert!(r.len() <= PIECE && r.len() <= i32::MAX as usize);
                if unit < PIECE && r.end != total {
                    assert_eq!(r.len() % unit, 0, "a piece ends inside a chunk");
                }
            }
            p.len()
        };
        assert_eq!(check(0, 8), 0);
        assert_eq!(check(100, 8), 1);
        assert_eq!(check(24 << 20, 256 << 10), 3); // 8 MiB pieces of 32 chunks
        assert_eq!(check(30 << 20, 12 << 20), 3); // chunks above the pipeline size go one by one
        assert_eq!(check(5 << 30, 3 << 30), 5); // a chunk above PIECE is cut into PIECEs
        assert_eq!(check(1000, 0), 1); // a zero unit is taken as 1 byte
    }
}
