//! Handles on work in flight: [`AsyncResult`], [`Imap`], [`ImapUnordered`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::engine::Engine;
use super::wire::{ItemFailure, ItemResults};
use crate::error::{Error, Result};

/// How one task (a chunk of items) ended.
#[derive(Debug, Clone)]
pub(crate) enum ChunkOutcome {
    Ran(std::result::Result<ItemResults, String>),
    WorkerDied {
        signal: Option<i32>,
        exit_code: Option<i32>,
    },
    Closed,
}

/// Rung whenever a job of the pool changes or the reader role is released: what a caller waits on
/// while another thread reads the results. Ringing costs a lock and, only if someone waits, a wake-up.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    /// (times rung, threads waiting)
    state: Mutex<(u64, usize)>,
    rung: Condvar,
}

impl Bell {
    fn lock(&self) -> MutexGuard<'_, (u64, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ring(&self) {
        let mut s = self.lock();
        s.0 = s.0.wrapping_add(1);
        if s.1 > 0 {
            self.rung.notify_all();
        }
    }

    /// Rings only if someone waits (the reader releasing its role: nobody to tell is the common case).
    pub(crate) fn ring_if_waited(&self) {
        let mut s = self.lock();
        if s.1 > 0 {
            s.0 = s.0.wrapping_add(1);
            self.rung.notify_all();
        }
    }

    /// How many times it has rung (to wait for the next ring without missing one).
    pub(crate) fn count(&self) -> u64 {
        self.lock().0
    }

    /// Waits at most `timeout` for a ring after the `seen`-th.
    pub(crate) fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut s = self.lock();
        s.1 += 1;
        let mut s = self
            .rung
            .wait_timeout_while(s, timeout, |s| s.0 == seen)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        s.1 -= 1;
    }
}

/// The shared record of one call (`map`, `apply`, …): its chunks' outcomes as they arrive.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) state: Mutex<JobState>,
    bell: Arc<Bell>,
    /// The engine that produces the outcomes: a waiter helps drive it (reads results) while it waits.
    engine: Weak<Engine>,
}

#[derive(Debug, Default)]
pub(crate) struct JobState {
    pub(crate) chunks: Vec<Option<ChunkOutcome>>,
    pub(crate) remaining: usize,
}

impl Job {
    pub(crate) fn new(chunks: usize, engine: &Arc<Engine>) -> Arc<Job> {
        Arc::new(Job {
            state: Mutex::new(JobState {
                chunks: vec![None; chunks],
                remaining: chunks,
            }),
            bell: engine.bell(),
            engine: Arc::downgrade(engine),
        })
    }

    pub(crate) fn finish(&self, chunk: usize, outcome: ChunkOutcome) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot @ None) = s.chunks.get_mut(chunk) {
            *slot = Some(outcome);
            s.remaining -= 1;
            drop(s);
            self.bell.ring();
        }
    }
}

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

/// Waits until `done(state)` or the deadline; returns the guard and whether `done` holds. While it
/// waits it helps: it takes the reader role of the pool's result ring when nobody holds it, so the
/// worker's answer wakes this very thread (see `engine`).
fn wait_for<'a>(
    job: &'a Job,
    deadline: Option<Instant>,
    done: impl Fn(&JobState) -> bool,
) -> (MutexGuard<'a, JobState>, bool) {
    loop {
        let seen = job.bell.count();
        let s = lock(job);
        if done(&s) {
            return (s, true);
        }
        drop(s);
        let slice = match deadline {
            None => super::dispatcher::LIVENESS_EVERY,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => left.min(super::dispatcher::LIVENESS_EVERY),
                None => return (lock(job), false),
            },
        };
        match job.engine.upgrade() {
            Some(engine) => engine.serve(seen, slice),
            // The pool is gone; it failed everything it had before it went, so this only waits for a
            // ring that already came (or gives the deadline its due).
            None => job.bell.wait_after(seen, slice),
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
