//! [`ClusterImapUnordered`]: the results of [`ClusterPool::imap_unordered`] as they arrive from any rank.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use mpi::point_to_point::Source;
use mpi::topology::Communicator;
use serde::de::DeserializeOwned;

use super::pool::{rank_failed, ClusterPool};
use super::serve::{self, StreamItem};
use super::transport::{self, MAX_MESSAGE, TAG_ITEM};
use crate::error::Result;

/// Results of [`ClusterPool::imap_unordered`] as they finish on any rank, each with its item index.
pub struct ClusterImapUnordered<'p, 'c, R> {
    pub(super) pool: &'p mut ClusterPool<'c>,
    pub(super) shares: Vec<Range<usize>>,
    /// Rank 0's own results, from the thread that waits for them; `None` once all arrived.
    pub(super) local: Option<Receiver<(usize, Result<R>)>>,
    /// Per rank: whether its end marker arrived (rank 0's entry is unused).
    pub(super) ended: Vec<bool>,
    /// Per item: whether its result was yielded (or is pending).
    pub(super) seen: Vec<bool>,
    pub(super) pending: VecDeque<(usize, Result<R>)>,
    /// How long the iterator has found nothing new: the back-off of its polling.
    pub(super) idle: Duration,
}

impl<R> std::fmt::Debug for ClusterImapUnordered<'_, '_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterImapUnordered")
            .field("shares", &self.shares)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> ClusterImapUnordered<'_, '_, R> {
    /// One step of polling: a result if one is there, `Ok(false)` if nothing was, `Err(())` when every
    /// result has been delivered.
    fn poll(&mut self) -> std::result::Result<Option<(usize, Result<R>)>, ()> {
        if let Some(x) = self.pending.pop_front() {
            return Ok(Some(x));
        }
        if let Some(rx) = &self.local {
            match rx.try_recv() {
                Ok((i, r)) => {
                    if let Some(s) = self.seen.get_mut(i) {
                        *s = true;
                    }
                    return Ok(Some((i, r)));
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.local = None,
            }
        }
        if self.ended.iter().all(|&e| e) {
            return if self.local.is_none() {
                Err(())
            } else {
                Ok(None)
            };
        }
        let world = self.pool.cluster.world();
        let Some((msg, status)) = world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_ITEM)
        else {
            return Ok(None);
        };
        let from = status.source_rank() as usize;
        let bytes = transport::receive_probed(world, msg, status, MAX_MESSAGE);
        self.pool.traffic.received_probed(from, bytes.len());
        if from == 0 || from >= self.ended.len() || self.ended[from] {
            transport::violation(
                world,
                &format!("an item message from rank {from}, which has none"),
            );
        }
        let share = self.shares[from].clone();
        match serve::decode::<StreamItem<R>>(&bytes) {
            Ok(StreamItem::Item { index, result }) => {
                let at = usize::try_from(index)
                    .ok()
                    .filter(|&i| i < share.len())
                    .map(|i| share.start + i);
                let Some(at) = at.filter(|&at| !self.seen[at]) else {
                    transport::violation(
                        world,
                        &format!("rank {from} sent item {index} twice or out of its share"),
                    );
                };
                self.seen[at] = true;
                Ok(Some((
                    at,
                    result.map_err(|f| f.into_error(from, share.start).1),
                )))
            }
            Ok(StreamItem::End { failure }) => {
                self.ended[from] = true;
                let why = failure.unwrap_or_else(|| "it ended without this item's result".into());
                for at in share {
                    if !self.seen[at] {
                        self.seen[at] = true;
                        self.pending
                            .push_back((at, Err(rank_failed(from, why.clone()))));
                    }
                }
                Ok(None)
            }
            Err(e) => {
                transport::violation(world, &format!("an undecodable item from rank {from}: {e}"))
            }
        }
    }
}

impl<R: DeserializeOwned> Iterator for ClusterImapUnordered<'_, '_, R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        loop {
            match self.poll() {
                Ok(Some(x)) => {
                    self.idle = Duration::ZERO;
                    return Some(x);
                }
                Ok(None) => {
                    // Back off in time, not in iterations: a result is usually microseconds away
                    // while tasks are short, and milliseconds when they are long.
                    self.idle =
                        (self.idle * 2).clamp(Duration::from_micros(20), Duration::from_millis(1));
                    std::thread::sleep(self.idle);
                }
                Err(()) => {
                    self.pool.in_call = false;
                    return None;
                }
            }
        }
    }
}

impl<R> Drop for ClusterImapUnordered<'_, '_, R> {
    fn drop(&mut self) {
        // Every rank must finish the call before the next one starts: wait for and drop the rest. With
        // no decodable `R` bound here, the remaining messages are received as bytes.
        let world = self.pool.cluster.world();
        while !self.ended.iter().all(|&e| e) {
            let (msg, status) = transport::wait_for(world, None, TAG_ITEM);
            let from = status.source_rank() as usize;
            let bytes = transport::receive_probed(world, msg, status, MAX_MESSAGE);
            self.pool.traffic.received_probed(from, bytes.len());
            if from == 0 || from >= self.ended.len() {
                transport::violation(world, &format!("an item message from rank {from}"));
            }
            // An end marker is the only message whose encoding starts with variant 1 (postcard
            // writes an enum's variant index first, as a varint).
            if bytes.first() == Some(&1) {
                self.ended[from] = true;
            }
        }
        // Rank 0's own results: the waiting thread stops at its next send once the receiver is gone.
        self.local = None;
        self.pool.in_call = false;
    }
}
