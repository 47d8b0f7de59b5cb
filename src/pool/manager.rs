//! The pool's manager thread: owns the workers, dispatches tasks, collects results, notices deaths.
//!
//! Every task in flight is recorded against the worker it was given to, so when a worker dies the
//! manager knows exactly which tasks died with it: it fails them with `WorkerDied` (or gives each one
//! more try, if the pool was built to), starts a replacement worker, and carries on. Before judging a
//! dead worker's tasks it drains the result ring: whatever the worker finished before dying was
//! published there and still counts.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::wire::{self, ItemResults, KIND_RESULT, KIND_TASK};
use super::worker::{worker_main, FrameQueue, WorkerArgs};
use crate::error::{Error, Result};
use crate::process::fnref::{FnKey, FnRef};
use crate::process::Process;

/// Tasks dispatched to one worker and not yet answered: one running, one waiting in its ring.
const IN_FLIGHT: usize = 2;
/// How often the manager looks at its workers' liveness when no result arrives.
const LIVENESS_EVERY: Duration = Duration::from_millis(10);
/// Frames a worker's task ring holds.
const TASK_RING: usize = 8;

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

/// The shared record of one call (`map`, `apply`, …): its chunks' outcomes as they arrive.
#[derive(Debug, Default)]
pub(crate) struct Job {
    pub(crate) state: Mutex<JobState>,
    pub(crate) changed: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct JobState {
    pub(crate) chunks: Vec<Option<ChunkOutcome>>,
    pub(crate) remaining: usize,
}

impl Job {
    pub(crate) fn new(chunks: usize) -> Arc<Job> {
        Arc::new(Job {
            state: Mutex::new(JobState {
                chunks: vec![None; chunks],
                remaining: chunks,
            }),
            changed: Condvar::new(),
        })
    }

    fn finish(&self, chunk: usize, outcome: ChunkOutcome) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot @ None) = s.chunks.get_mut(chunk) {
            *slot = Some(outcome);
            s.remaining -= 1;
            self.changed.notify_all();
        }
    }
}

/// One task to run: chunk `chunk` of `job`, whose encoded body (function reference and payload) is `body`.
pub(crate) struct TaskSpec {
    pub(crate) job: Arc<Job>,
    pub(crate) chunk: usize,
    pub(crate) body: Arc<Vec<u8>>,
}

pub(crate) enum Command {
    Submit(Vec<TaskSpec>),
    /// Finish the work submitted, then stop the workers and exit.
    Close,
    /// Kill the workers now; fail what is outstanding with `PoolClosed`.
    Terminate,
}

/// How the pool was configured: what a worker needs to be (re)started.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) key: FnKey,
    pub(crate) initializer: Option<FnRef>,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) retries: u8,
    pub(crate) frame_size: usize,
    /// The largest task or result body reassembled from fragments (see `wire`).
    pub(crate) max_body: u64,
}

struct Task {
    spec: TaskSpec,
    retries_left: u8,
}

struct Worker {
    process: Process<()>,
    tasks: FrameQueue,
    in_flight: VecDeque<u64>,
    /// A task whose frames are partly in the ring: its id and how many body bytes were sent.
    sending: Option<(u64, usize)>,
    dispatched: u64,
    /// False for a dead worker that could not be replaced yet: it takes no work.
    usable: bool,
}

pub(crate) struct Manager {
    cfg: Config,
    results: FrameQueue,
    commands: Receiver<Command>,
    workers: Vec<Worker>,
    tasks: HashMap<u64, Task>,
    pending: VecDeque<u64>,
    partial: wire::Reassembly,
    next_id: u64,
    closing: bool,
}

impl Manager {
    /// Starts the workers; the manager is then run on its own thread with [`Manager::run`].
    pub(crate) fn new(
        cfg: Config,
        results: FrameQueue,
        commands: Receiver<Command>,
    ) -> Result<Manager> {
        let max_body = cfg.max_body;
        let mut m = Manager {
            cfg,
            results,
            commands,
            workers: Vec::new(),
            tasks: HashMap::new(),
            pending: VecDeque::new(),
            partial: wire::Reassembly::new(max_body),
            next_id: 1,
            closing: false,
        };
        for wi in 0..m.cfg.workers {
            let w = m.start_worker(wi)?;
            m.workers.push(w);
        }
        Ok(m)
    }

    fn start_worker(&self, index: usize) -> Result<Worker> {
        let tasks = FrameQueue::with_max_message(TASK_RING, self.cfg.frame_size)?;
        let args = WorkerArgs {
            tasks: tasks.clone(),
            results: self.results.clone(),
            index: index as u32,
            initializer: self.cfg.initializer,
            max_tasks: self.cfg.max_tasks,
            max_body: self.cfg.max_body,
        };
        // The pool's key is the worker's spawn key: it reaches the worker over the spawn channel's
        // socket, never through a file or shared memory another process could open.
        let mut process = Process::builder()
            .name("mproc-pool-worker")
            .spawn_key(self.cfg.key)
            .target(worker_main, args)?;
        process.start()?;
        Ok(Worker {
            process,
            tasks,
            in_flight: VecDeque::new(),
            sending: None,
            dispatched: 0,
            usable: true,
        })
    }

    pub(crate) fn run(mut self) {
        let mut last_check = Instant::now();
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Submit(specs)) => self.submit(specs),
                    Ok(Command::Close) => self.closing = true,
                    Ok(Command::Terminate) | Err(TryRecvError::Disconnected) => {
                        return self.terminate()
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.dispatch();
            if self.closing && self.tasks.is_empty() {
                return self.shut_down();
            }
            match self.results.get_timeout(LIVENESS_EVERY) {
                Ok(frame) => {
                    self.on_frame(&frame);
                    // Take whatever else is there before doing anything slower.
                    while let Ok(frame) = self.results.try_get() {
                        self.on_frame(&frame);
                    }
                }
                Err(Error::Timeout) => {}
                Err(_) => {
                    // The result ring is broken (garbage written into it): nothing can come back.
                    return self.terminate();
                }
            }
            if last_check.elapsed() >= LIVENESS_EVERY {
                self.check_workers();
                last_check = Instant::now();
            }
        }
    }

    fn submit(&mut self, specs: Vec<TaskSpec>) {
        for spec in specs {
            let id = self.next_id;
            self.next_id += 1;
            self.tasks.insert(
                id,
                Task {
                    spec,
                    retries_left: self.cfg.retries,
                },
            );
            self.pending.push_back(id);
        }
    }

    /// Hands pending tasks to workers with room, never blocking: a full task ring is resumed later, so
    /// the manager always gets back to draining results (a worker blocked on a full result ring while we
    /// blocked on its full task ring would be a deadlock).
    fn dispatch(&mut self) {
        for wi in 0..self.workers.len() {
            loop {
                if self.workers[wi].sending.is_none() {
                    let w = &self.workers[wi];
                    let at_limit = self.cfg.max_tasks.is_some_and(|m| w.dispatched >= m);
                    if !w.usable || w.in_flight.len() >= IN_FLIGHT || at_limit {
                        break;
                    }
                    // Nothing left to hand out; later workers may still have a task half-sent.
                    let Some(id) = self.pending.pop_front() else {
                        break;
                    };
                    let w = &mut self.workers[wi];
                    w.in_flight.push_back(id);
                    w.dispatched += 1;
                    w.sending = Some((id, 0));
                }
                if !self.send_frames(wi) {
                    break;
                }
            }
        }
    }

    /// Sends the remaining frames of worker `wi`'s current task; true when all are in its ring.
    fn send_frames(&mut self, wi: usize) -> bool {
        let Some((id, mut sent)) = self.workers[wi].sending else {
            return true;
        };
        let Some(task) = self.tasks.get(&id) else {
            self.workers[wi].sending = None;
            return true;
        };
        let body = task.spec.body.clone();
        let w = &mut self.workers[wi];
        loop {
            let end = wire::part_end(sent, body.len(), self.cfg.frame_size);
            let frame = wire::frame(id, KIND_TASK, end == body.len(), 0, &body[sent..end]);
            match w.tasks.try_put(&frame) {
                Ok(()) => {}
                Err(_) => {
                    // Full (or the worker closed it by dying): resume from here later.
                    w.sending = Some((id, sent));
                    return false;
                }
            }
            sent = end;
            if sent >= body.len() {
                w.sending = None;
                return true;
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let Ok((head, body)) = wire::parse(frame) else {
            return;
        };
        if head.kind != KIND_RESULT {
            return; // a wake-up, or garbage
        }
        // Only the worker that was given the task may answer it: a frame naming another worker, or a
        // task that worker does not hold (garbage, or a task already failed when its worker was judged
        // dead), is dropped.
        let given = self
            .workers
            .get(head.worker as usize)
            .is_some_and(|w| w.in_flight.contains(&head.task));
        if !given || !self.tasks.contains_key(&head.task) {
            return;
        }
        let Some(body) = self.partial.push(head.task, head.last, body) else {
            return;
        };
        let outcome: std::result::Result<ItemResults, String> = body
            .map_err(|e| format!("the worker's answer is {e}"))
            .and_then(|bytes| {
                postcard::from_bytes(&bytes)
                    .unwrap_or_else(|e| Err(format!("the worker's answer did not decode: {e}")))
            });
        for w in &mut self.workers {
            w.in_flight.retain(|&t| t != head.task);
        }
        if let Some(task) = self.tasks.remove(&head.task) {
            task.spec
                .job
                .finish(task.spec.chunk, ChunkOutcome::Ran(outcome));
        }
    }

    fn check_workers(&mut self) {
        for wi in 0..self.workers.len() {
            if self.workers[wi].process.is_alive() {
                continue;
            }
            // Everything the dead worker finished is in the result ring: count it first.
            while let Ok(frame) = self.results.try_get() {
                self.on_frame(&frame);
            }
            let code = self.workers[wi].process.exitcode();
            let (signal, exit_code) = match code {
                Some(c) if c < 0 => (Some(-c), None),
                other => (None, other),
            };
            // A worker takes its tasks in order and answers each before taking the next, so of its
            // unanswered tasks only the oldest can have started: that one died with it. The others never
            // started; they go back to the front of the queue without using up a retry.
            let lost: Vec<u64> = self.workers[wi].in_flight.drain(..).collect();
            for &id in lost.iter().skip(1).rev() {
                self.partial.forget(id);
                if self.tasks.contains_key(&id) {
                    self.pending.push_front(id);
                }
            }
            if let Some(&id) = lost.first() {
                self.partial.forget(id);
                if let Some(task) = self.tasks.get_mut(&id) {
                    if task.retries_left > 0 {
                        task.retries_left -= 1;
                        self.pending.push_front(id);
                    } else if let Some(task) = self.tasks.remove(&id) {
                        let outcome = ChunkOutcome::WorkerDied { signal, exit_code };
                        task.spec.job.finish(task.spec.chunk, outcome);
                    }
                }
            }
            match self.start_worker(wi) {
                Ok(w) => self.workers[wi] = w,
                Err(_) => {
                    // Cannot start a replacement (out of processes or memory): keep the dead one in place
                    // and try again at the next check; its ring takes no new work meanwhile.
                    self.workers[wi].sending = None;
                    self.workers[wi].usable = false;
                }
            }
        }
    }

    fn shut_down(mut self) {
        for w in &self.workers {
            w.tasks.close();
        }
        for w in &mut self.workers {
            // A worker that does not notice the closed ring within a generous bound is killed: shutting
            // down must not hang on it.
            if w.process.join_timeout(Duration::from_secs(10)).is_err() && w.process.is_alive() {
                let _ = w.process.kill();
            }
        }
        self.workers.clear(); // dropping a Process reaps (and if needed kills) it
    }

    fn terminate(mut self) {
        for w in &self.workers {
            w.tasks.close();
            let _ = w.process.kill();
        }
        self.workers.clear();
        for (_, task) in self.tasks.drain() {
            task.spec.job.finish(task.spec.chunk, ChunkOutcome::Closed);
        }
    }
}

/// Encodes a task body: the function reference and the payload.
pub(crate) fn task_body(f: FnRef, payload: &[u8]) -> Arc<Vec<u8>> {
    Arc::new(wire::encode_task(f, payload))
}
