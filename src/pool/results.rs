//! Handles on work in flight: [`AsyncResult`], [`Imap`], [`ImapUnordered`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::manager::{ChunkOutcome, Job, JobState};
use super::wire::ItemFailure;
use crate::error::{Error, Result};

/// Item `k` of a finished chunk, whose first item has index `first` in the call's input.
fn item<R: DeserializeOwned>(outcome: &ChunkOutcome, k: usize, first: usize) -> Result<R> {
    let index = first + k;
    match outcome {
        ChunkOutcome::Ran(Ok(items)) => match items.get(k) {
            Some(Ok(bytes)) => postcard::from_bytes(bytes).map_err(|e| Error::Decode {
                ty: std::any::type_name::<R>(),
                reason: e.to_string(),
            }),
            Some(Err(ItemFailure::Panicked { message, location })) => Err(Error::TaskPanicked {
                task: index,
                message: message.clone(),
                location: location.clone(),
            }),
            Some(Err(ItemFailure::Failed(reason))) => Err(Error::Decode {
                ty: "a pool task",
                reason: reason.clone(),
            }),
            None => Err(Error::Corrupted(format!(
                "a worker returned no result for task {index}"
            ))),
        },
        ChunkOutcome::Ran(Err(reason)) => Err(Error::Corrupted(format!(
            "task {index} could not run: {reason}"
        ))),
        ChunkOutcome::WorkerDied { signal, exit_code } => Err(Error::WorkerDied {
            task: index,
            signal: *signal,
            exit_code: *exit_code,
        }),
        ChunkOutcome::Closed => Err(Error::PoolClosed),
    }
}

fn lock(job: &Job) -> MutexGuard<'_, JobState> {
    job.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `done(state)` or the deadline; returns the guard and whether `done` holds.
fn wait_for<'a>(
    job: &'a Job,
    deadline: Option<Instant>,
    done: impl Fn(&JobState) -> bool,
) -> (MutexGuard<'a, JobState>, bool) {
    let mut s = lock(job);
    loop {
        if done(&s) {
            return (s, true);
        }
        match deadline {
            None => s = job.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let Some(left) = d.checked_duration_since(Instant::now()) else {
                    return (s, false);
                };
                s = job
                    .changed
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// The result of work started with `map_async` or `apply_async`, like Python's `AsyncResult`.
pub struct AsyncResult<T> {
    job: Arc<Job>,
    /// Items per chunk.
    lens: Vec<usize>,
    decode: fn(&JobState, &[usize]) -> Result<T>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R: DeserializeOwned> AsyncResult<Vec<R>> {
    pub(crate) fn all_items(job: Arc<Job>, lens: Vec<usize>) -> Self {
        fn decode<R: DeserializeOwned>(s: &JobState, lens: &[usize]) -> Result<Vec<R>> {
            let mut out = Vec::with_capacity(lens.iter().sum());
            let mut first = 0;
            for (chunk, &len) in s.chunks.iter().zip(lens) {
                let outcome = chunk.as_ref().ok_or(Error::Timeout)?;
                for k in 0..len {
                    out.push(item(outcome, k, first)?);
                }
                first += len;
            }
            Ok(out)
        }
        AsyncResult {
            job,
            lens,
            decode: decode::<R>,
        }
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    pub(crate) fn one_item(job: Arc<Job>, lens: Vec<usize>) -> Self {
        fn decode<R: DeserializeOwned>(s: &JobState, _: &[usize]) -> Result<R> {
            item(
                s.chunks
                    .first()
                    .and_then(Option::as_ref)
                    .ok_or(Error::Timeout)?,
                0,
                0,
            )
        }
        AsyncResult {
            job,
            lens,
            decode: decode::<R>,
        }
    }
}

impl<T> AsyncResult<T> {
    /// Whether every task has finished.
    pub fn ready(&self) -> bool {
        lock(&self.job).remaining == 0
    }

    /// Waits until every task has finished.
    pub fn wait(&self) {
        drop(wait_for(&self.job, None, |s| s.remaining == 0));
    }

    /// Waits at most `timeout`; returns whether every task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        wait_for(&self.job, Some(Instant::now() + timeout), |s| {
            s.remaining == 0
        })
        .1
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// The error of the lowest-index item that failed (see [`Pool::map`](super::Pool::map)).
    pub fn get(&self) -> Result<T> {
        let (s, _) = wait_for(&self.job, None, |s| s.remaining == 0);
        (self.decode)(&s, &self.lens)
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not ready by then (the work goes on; ask again), otherwise as
    /// [`get`](AsyncResult::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let (s, done) = wait_for(&self.job, Some(Instant::now() + timeout), |s| {
            s.remaining == 0
        });
        if !done {
            return Err(Error::Timeout);
        }
        (self.decode)(&s, &self.lens)
    }
}

/// Results of [`Pool::imap`](super::Pool::imap), in input order, each as soon as it and every earlier
/// one is ready.
pub struct Imap<R> {
    job: Arc<Job>,
    lens: Vec<usize>,
    next_chunk: usize,
    first: usize,
    buffer: VecDeque<Result<R>>,
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> Imap<R> {
    pub(crate) fn new(job: Arc<Job>, lens: Vec<usize>) -> Self {
        Imap {
            job,
            lens,
            next_chunk: 0,
            first: 0,
            buffer: VecDeque::new(),
        }
    }
}

impl<R: DeserializeOwned> Iterator for Imap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        while self.buffer.is_empty() {
            let c = self.next_chunk;
            let len = *self.lens.get(c)?;
            let (s, _) = wait_for(&self.job, None, |s| s.chunks[c].is_some());
            let outcome = s.chunks[c].as_ref().expect("waited for it");
            self.buffer
                .extend((0..len).map(|k| item(outcome, k, self.first)));
            self.first += len;
            self.next_chunk += 1;
        }
        self.buffer.pop_front()
    }
}

/// Results of [`Pool::imap_unordered`](super::Pool::imap_unordered) as chunks finish, each with its item
/// index in the input.
pub struct ImapUnordered<R> {
    job: Arc<Job>,
    /// Per chunk: its first item's index, or `None` once yielded.
    firsts: Vec<Option<usize>>,
    lens: Vec<usize>,
    buffer: VecDeque<(usize, Result<R>)>,
    _r: PhantomData<R>,
}

impl<R> std::fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnordered").finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> ImapUnordered<R> {
    pub(crate) fn new(job: Arc<Job>, lens: Vec<usize>) -> Self {
        let mut first = 0;
        let firsts = lens
            .iter()
            .map(|&l| {
                let f = first;
                first += l;
                Some(f)
            })
            .collect();
        ImapUnordered {
            job,
            firsts,
            lens,
            buffer: VecDeque::new(),
            _r: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> Iterator for ImapUnordered<R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        while self.buffer.is_empty() {
            if self.firsts.iter().all(Option::is_none) {
                return None;
            }
            let firsts = &self.firsts;
            let (s, _) = wait_for(&self.job, None, |s| {
                s.chunks
                    .iter()
                    .zip(firsts)
                    .any(|(c, f)| c.is_some() && f.is_some())
            });
            for (c, outcome) in s.chunks.iter().enumerate() {
                let (Some(outcome), Some(first)) = (outcome, self.firsts[c]) else {
                    continue;
                };
                self.buffer
                    .extend((0..self.lens[c]).map(|k| (first + k, item(outcome, k, first))));
                self.firsts[c] = None;
            }
        }
        self.buffer.pop_front()
    }
}
