//! The pool's bookkeeping: the workers, the tasks in flight per worker, what is pending, and what to do
//! with each result frame and each death. It runs under the engine's lock, driven by whoever holds it
//! (see `engine`): a caller submitting, a caller reading results, or the background thread.
//!
//! Every task in flight is recorded against the worker it was given to, so when a worker dies the
//! dispatcher knows exactly which tasks died with it: it fails them with `WorkerDied` (or gives each one
//! more try, if the pool was built to), starts a replacement worker, and carries on. Before judging a
//! dead worker's tasks it drains the result ring: whatever the worker finished before dying was
//! published there and still counts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answer;
use super::results::{ChunkOutcome, Job, Wakeups};
use super::wire::{self, Payload, KIND_RESULT, KIND_TASK};
use super::worker::{worker_main, FrameQueue, WorkerArgs};
use crate::error::{Error, Result};
use crate::heap::SharedArray;
use crate::process::fnref::{FnKey, FnRef};
use crate::process::{Process, StartMethod};

/// Tasks dispatched to one worker and not yet answered: one running, one waiting in its ring.
const IN_FLIGHT: usize = 2;
/// How often the workers' liveness is checked while results are read.
pub(crate) const LIVENESS_EVERY: Duration = Duration::from_millis(10);
/// Frames a worker's task ring holds.
const TASK_RING: usize = 8;

/// One task to run: chunk `chunk` of `job`, whose encoded body (function reference and payload) is `body`.
pub(crate) struct TaskSpec {
    pub(crate) job: Arc<Job>,
    pub(crate) chunk: usize,
    pub(crate) body: Arc<Vec<u8>>,
    /// The shared block holding the payload, if it did not travel in the body: kept (and so not
    /// reused) until the task is over, retries included.
    pub(crate) _lent: Option<SharedArray<u8>>,
}

/// How the pool was configured: what a worker needs to be (re)started.
#[derive(Clone)]
pub(crate) struct PoolConfig {
    pub(crate) workers: usize,
    pub(crate) key: FnKey,
    pub(crate) initializer: Option<FnRef>,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) retries: u8,
    pub(crate) frame_size: usize,
    /// The largest task or result body reassembled from fragments (see `wire`).
    pub(crate) max_body: u64,
    /// How workers are started, the first ones and their replacements: spawn or the fork server.
    pub(crate) start_method: StartMethod,
    /// Whether workers keep the memory their tasks free (see `PoolBuilder::retain_worker_memory`).
    pub(crate) retain_memory: bool,
}

struct TaskEntry {
    spec: TaskSpec,
    retries_left: u8,
}

struct Worker {
    /// Its id in result frames (see `WorkerArgs::id`): new for every worker started.
    id: u32,
    process: Process<()>,
    tasks: FrameQueue,
    in_flight: VecDeque<u64>,
    /// A task whose frames are partly in the ring: its id and how many body bytes were sent. Kept
    /// once the worker is dead, until its tasks are judged: a task not wholly sent never started.
    sending: Option<(u64, usize)>,
    dispatched: u64,
    /// False for a dead worker not replaced yet (its replacement could not start, or waits for its
    /// `restart_delay`): it takes no work.
    usable: bool,
    /// When the worker announced it is about to exit (a panic under `panic = "abort"`, after answering
    /// its task): it takes no work meanwhile, and its unanswered tasks never started.
    exiting_since: Option<Instant>,
    /// How many workers in a row died in this place without ever being given a task (an initializer
    /// that fails in an idle pool), this one included once it is dead.
    idle_deaths: u32,
    /// Set once it was seen dead and its tasks were judged: when a replacement may start.
    replace_at: Option<Instant>,
    /// Since when its replacements fail to start (it is dead).
    start_failing_since: Option<Instant>,
    /// When it was first seen dead.
    dead_since: Option<Instant>,
}

/// How long the tasks of a dead worker may wait to be judged while the result ring still holds a slot
/// that another producer claimed (a frame of the dead worker may be behind it). A live producer holds
/// one for microseconds, or as long as it is preempted; a dead one's is recovered within milliseconds
/// (see `engine::CLAIMED_PATIENCE`).
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// How long replacements may fail to start, with no worker left, before the work not yet handed out
/// fails rather than wait for one.
const START_GRACE: Duration = Duration::from_secs(1);

/// Workers in a row that may die in one place without being given a task and still be replaced at once.
const IDLE_DEATHS_TOLERATED: u32 = 3;
/// The longest a replacement waits (see [`restart_delay`]).
const RESTART_DELAY_MAX: Duration = Duration::from_secs(1);

/// How long to wait, while no work is pending, before replacing a worker that died after `idle_deaths`
/// workers in a row died in its place without being given a task. None for the first few; then from
/// [`LIVENESS_EVERY`], doubling, up to [`RESTART_DELAY_MAX`]. Found by review: a pool whose initializer
/// fails started a new process at every liveness check, forever, also with no work at all (about 150
/// a second with 2 workers). Work that waits is never delayed: each death then fails (or retries) one
/// of its tasks, so the restarts end with the work.
fn restart_delay(idle_deaths: u32) -> Duration {
    let Some(doublings) = idle_deaths.checked_sub(IDLE_DEATHS_TOLERATED) else {
        return Duration::ZERO;
    };
    LIVENESS_EVERY
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .map_or(RESTART_DELAY_MAX, |d| d.min(RESTART_DELAY_MAX))
}

/// Lets go of the cached mappings of `worker`'s heap arenas: it answers no more (see
/// [`crate::heap::forget_foreign_arenas_of`]).
fn forget_arenas_of(worker: &Process<()>) {
    if let Some(pid) = worker.pid() {
        crate::heap::forget_foreign_arenas_of(pid);
    }
}

/// How long an announced exit is believed. The announcement is a frame on the shared result ring, which
/// any writer of the ring could forge: a worker still alive this long after it was sent takes work again.
const EXITING_BELIEVED: Duration = Duration::from_secs(1);

/// How long the workers of a closed pool, all together, are given to exit on their own before they
/// are killed (see [`Dispatcher::shut_down`]).
pub(crate) const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// How long a worker whose answer block could not be attached is given to be seen dead (see
/// [`Dispatcher::worker_lives_on`]).
const EXIT_SETTLES: Duration = Duration::from_millis(200);

pub(crate) struct Dispatcher {
    cfg: PoolConfig,
    results: FrameQueue,
    workers: Vec<Worker>,
    tasks: HashMap<u64, TaskEntry>,
    pending: VecDeque<u64>,
    partial: wire::Reassembly,
    next_id: u64,
    /// The id of the next worker started (wrapping: a frame would have to wait in the result ring
    /// through 2^32 worker starts to be taken for another worker's).
    next_worker_id: u32,
    /// No more submissions; once the work in flight is done the workers are stopped.
    pub(crate) closing: bool,
    /// The workers were stopped: nothing runs any more.
    pub(crate) finished: bool,
    /// Set once the workers of a closed pool were told to stop (see [`Dispatcher::shut_down`]): when
    /// those still running are killed. Workers that exit meanwhile are not replaced.
    stopping_by: Option<Instant>,
    /// When the workers' liveness was last checked.
    last_check: Instant,
    /// Dead workers already replaced (and, once the pool is finished, every worker), for the background
    /// thread to reap outside the engine's lock: reaping a fork-server worker whose server died can
    /// wait until init has reaped it (see `process::forkserver`), and no caller should wait on that.
    pub(crate) dead: Vec<Process<()>>,
    /// Awaiting tasks of jobs finished under the lock, for the engine to wake once it released it.
    pub(crate) wake_later: Wakeups,
}

impl Dispatcher {
    /// Starts the workers.
    pub(crate) fn new(cfg: PoolConfig, results: FrameQueue) -> Result<Dispatcher> {
        let max_body = cfg.max_body;
        let mut m = Dispatcher {
            cfg,
            results,
            workers: Vec::new(),
            tasks: HashMap::new(),
            pending: VecDeque::new(),
            partial: wire::Reassembly::new(max_body),
            next_id: 1,
            next_worker_id: 0,
            closing: false,
            finished: false,
            stopping_by: None,
            last_check: Instant::now(),
            dead: Vec::new(),
            wake_later: Wakeups::default(),
        };
        for _ in 0..m.cfg.workers {
            let w = m.start_worker()?;
            m.workers.push(w);
        }
        Ok(m)
    }

    fn start_worker(&mut self) -> Result<Worker> {
        let id = self.next_worker_id;
        self.next_worker_id = id.wrapping_add(1);
        let tasks = FrameQueue::with_max_message(TASK_RING, self.cfg.frame_size)?;
        let args = WorkerArgs {
            tasks: tasks.clone(),
            results: self.results.clone(),
            id,
            initializer: self.cfg.initializer,
            max_tasks: self.cfg.max_tasks,
            max_body: self.cfg.max_body,
            retain_memory: self.cfg.retain_memory,
        };
        // The pool's key is the worker's spawn key: it reaches the worker over the spawn channel's
        // socket (or the fork server's request socket), never through a file or shared memory another
        // process could open.
        // A daemon: dropping the handle (terminate, a pool dropped unjoined) kills the worker.
        let mut process = Process::builder()
            .name("mproc-pool-worker")
            .daemon(true)
            .start_method(self.cfg.start_method)
            .spawn_key(self.cfg.key)
            .target(worker_main, args)?;
        process.start()?;
        Ok(Worker {
            id,
            process,
            tasks,
            in_flight: VecDeque::new(),
            sending: None,
            dispatched: 0,
            usable: true,
            exiting_since: None,
            idle_deaths: 0,
            replace_at: None,
            start_failing_since: None,
            dead_since: None,
        })
    }

    /// The pids of the live workers, in worker order.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|w| w.usable)
            .filter_map(|w| w.process.pid())
            .collect()
    }

    /// Takes whatever the result ring holds right now, without waiting.
    pub(crate) fn drain_results(&mut self) -> Result<()> {
        loop {
            match self.results.try_get() {
                Ok(frame) => self.on_frame(&frame),
                Err(Error::Empty) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of background duty: results, deaths, dispatch, and the end of a closing pool.
    /// `read` says whether this caller may take frames off the result ring (it holds the reader role).
    pub(crate) fn tick(&mut self, read: bool) {
        if read && self.drain_results().is_err() {
            // The result ring is broken (garbage written into it): nothing can come back.
            return self.terminate();
        }
        // A liveness check is a `waitpid` per worker: at most every `LIVENESS_EVERY`, not per result.
        if read && self.last_check.elapsed() >= LIVENESS_EVERY {
            self.check_workers();
            self.last_check = Instant::now();
        }
        self.dispatch();
        if self.closing && self.tasks.is_empty() && !self.finished {
            self.shut_down();
        }
    }

    /// Takes new tasks and hands out what fits.
    pub(crate) fn submit(&mut self, specs: Vec<TaskSpec>) {
        for spec in specs {
            let id = self.next_id;
            self.next_id += 1;
            self.tasks.insert(
                id,
                TaskEntry {
                    spec,
                    retries_left: self.cfg.retries,
                },
            );
            self.pending.push_back(id);
        }
        self.dispatch();
    }

    /// Hands pending tasks to workers with room, never blocking: a full task ring is resumed later, so
    /// the manager always gets back to draining results (a worker blocked on a full result ring while we
    /// blocked on its full task ring would be a deadlock).
    ///
    /// In rounds: every worker is given its first task before any is given a second (the one that waits
    /// in its ring). Filling worker 0 to [`IN_FLIGHT`] first would queue a call of exactly as many tasks
    /// as workers (`map_chunks` in halves on two workers) behind one worker while the other idles.
    pub(crate) fn dispatch(&mut self) {
        for depth in 1..=IN_FLIGHT {
            for wi in 0..self.workers.len() {
                self.feed(wi, depth);
            }
        }
    }

    /// Gives worker `wi` pending tasks until it holds `depth` of them (or its ring is full).
    fn feed(&mut self, wi: usize, depth: usize) {
        loop {
            // Nothing more for a dead worker, not even the rest of a task half-sent (see `sending`).
            if !self.workers[wi].usable {
                return;
            }
            if self.workers[wi].sending.is_none() {
                let w = &self.workers[wi];
                let at_limit = self.cfg.max_tasks.is_some_and(|m| w.dispatched >= m);
                let exiting = w
                    .exiting_since
                    .is_some_and(|t| t.elapsed() < EXITING_BELIEVED);
                if !w.usable || exiting || w.in_flight.len() >= depth || at_limit {
                    return;
                }
                // Nothing left to hand out; later workers may still have a task half-sent.
                let Some(id) = self.pending.pop_front() else {
                    return;
                };
                let w = &mut self.workers[wi];
                w.in_flight.push_back(id);
                w.dispatched += 1;
                w.sending = Some((id, 0));
            }
            if !self.send_frames(wi) {
                return;
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

    /// Handles one frame taken off the result ring.
    pub(crate) fn on_frame(&mut self, frame: &[u8]) {
        let Ok((head, body)) = wire::parse(frame) else {
            return;
        };
        // The worker that wrote it, by id: a frame of a worker that is gone (left in the ring when it
        // died, read after its replacement took its place and its tasks) names none. Found by review:
        // frames named a worker by its place in the pool, and a dead worker's fragment of a task retried
        // on its replacement was joined to the replacement's answer, a wrong value returned as `Ok`.
        let Some(wi) = self.workers.iter().position(|w| w.id == head.worker) else {
            return;
        };
        if head.kind == wire::KIND_EXITING {
            self.workers[wi].exiting_since = Some(Instant::now());
            return;
        }
        if head.kind != KIND_RESULT {
            return; // a wake-up, or garbage
        }
        // Only the worker that was given the task may answer it: a task that worker does not hold
        // (garbage, or a task already failed when its worker was judged dead) is dropped.
        let given = self.workers[wi].in_flight.contains(&head.task);
        if !given || !self.tasks.contains_key(&head.task) {
            return;
        }
        let Some(body) = self.partial.push(head.task, head.last, body) else {
            return;
        };
        let outcome = match body {
            Err(e) => Err(format!("the worker's answer is {e}")),
            Ok(bytes) => match answer::read(&bytes) {
                // A worker that leaves after `max_tasks` must not leave its arena mapped here behind
                // the results it answered (see `answer::owned`).
                answer::Read::Outcome(outcome) if self.cfg.max_tasks.is_some() => {
                    answer::owned(outcome)
                }
                answer::Read::Outcome(outcome) => outcome,
                // A block we cannot attach: its worker is gone, or lied (see `answer`, "Deaths").
                answer::Read::Unattached(why) => {
                    if self.worker_lives_on(wi) {
                        Err(format!(
                            "the worker's answer block could not be attached: {why}"
                        ))
                    } else {
                        // The task ran, and its answer died with the worker: as a task that died with
                        // its worker (not the next in its ring, which is then the one that started).
                        // The worker is dead: it takes no more work from now on, as once a liveness
                        // check finds it so (found by review: the retry given just below went into
                        // its ring before that check, and failed with it without running again).
                        let w = &mut self.workers[wi];
                        w.usable = false;
                        w.in_flight.retain(|&t| t != head.task);
                        let (signal, exit_code) = self.how_it_died(wi);
                        self.died_with_its_worker(head.task, signal, exit_code);
                        return;
                    }
                }
            },
        };
        for w in &mut self.workers {
            w.in_flight.retain(|&t| t != head.task);
        }
        if let Some(task) = self.tasks.remove(&head.task) {
            let owed = task
                .spec
                .job
                .finish(task.spec.chunk, ChunkOutcome::Ran(outcome));
            self.wake_later.absorb(owed);
        }
    }

    /// Whether worker `wi` is alive and stays so for a moment: a worker's descriptors close while it
    /// exits, a little before it is seen dead, so an answer block that cannot be attached is believed
    /// to come from a death only if the worker is dead within [`EXIT_SETTLES`]. Waited only then.
    fn worker_lives_on(&self, wi: usize) -> bool {
        self.workers
            .get(wi)
            .is_some_and(|w| w.process.alive_after(EXIT_SETTLES))
    }

    /// The signal or exit code of dead worker `wi`.
    fn how_it_died(&self, wi: usize) -> (Option<i32>, Option<i32>) {
        match self.workers.get(wi).and_then(|w| w.process.exitcode()) {
            Some(c) if c < 0 => (Some(-c), None),
            other => (None, other),
        }
    }

    /// Task `id` started on a worker that died: it runs once more if it has a retry left, else it
    /// fails with `WorkerDied`.
    fn died_with_its_worker(&mut self, id: u64, signal: Option<i32>, exit_code: Option<i32>) {
        self.partial.forget(id);
        if let Some(task) = self.tasks.get_mut(&id) {
            if task.retries_left > 0 {
                task.retries_left -= 1;
                self.pending.push_front(id);
            } else if let Some(task) = self.tasks.remove(&id) {
                let outcome = ChunkOutcome::WorkerDied { signal, exit_code };
                let owed = task.spec.job.finish(task.spec.chunk, outcome);
                self.wake_later.absorb(owed);
            }
        }
    }

    /// Notices dead workers; fails (or requeues) their tasks and replaces them. Only with the reader
    /// role: it first takes what a dead worker published before dying.
    fn check_workers(&mut self) {
        if self.stopping_by.is_some() {
            return; // the workers are exiting: see `shut_down`
        }
        let mut failed_any = false;
        for wi in 0..self.workers.len() {
            if self.workers[wi].process.is_alive() {
                let w = &mut self.workers[wi];
                if w.exiting_since
                    .is_some_and(|t| t.elapsed() >= EXITING_BELIEVED)
                {
                    w.exiting_since = None; // it did not exit: the announcement was not its own
                }
                continue;
            }
            if self.workers[wi].replace_at.is_none() {
                // Seen dead, not judged yet: it takes no more work from now on.
                let w = &mut self.workers[wi];
                w.usable = false;
                let since = *w.dead_since.get_or_insert_with(Instant::now);
                // Everything the dead worker finished is in the result ring: count it first. A frame it
                // published may wait behind a slot another producer still holds (found by review: its
                // answered task was failed as if it had died with it, or run again); judged once the
                // ring is drained, or after `DRAIN_PATIENCE` whatever the ring says.
                let _ = self.drain_results();
                if !self.results.is_empty() && since.elapsed() < DRAIN_PATIENCE {
                    continue;
                }
                self.judge_death(wi);
                failed_any = true;
            }
            let waiting = self.workers[wi]
                .replace_at
                .is_some_and(|t| t > Instant::now());
            if waiting && self.pending.is_empty() {
                continue; // not replaced yet: see `restart_delay`
            }
            match self.start_worker() {
                Ok(mut w) => {
                    w.idle_deaths = self.workers[wi].idle_deaths;
                    let old = std::mem::replace(&mut self.workers[wi], w);
                    forget_arenas_of(&old.process);
                    self.dead.push(old.process);
                }
                Err(e) => {
                    // Cannot start a replacement (out of processes, descriptors or memory): keep the dead
                    // one in place and try again at the next check; its ring takes no new work meanwhile.
                    // With no usable worker left, what is pending would wait for a worker that may never
                    // start (found by review: a call hung for good once descriptors ran out). Once starts
                    // have failed for `START_GRACE` (a passing shortage gets its chance), it fails with
                    // the reason; work submitted later is judged again at the next check, after one more
                    // start was tried.
                    let since = *self.workers[wi]
                        .start_failing_since
                        .get_or_insert_with(Instant::now);
                    if since.elapsed() >= START_GRACE && !self.workers.iter().any(|w| w.usable) {
                        self.fail_pending(&e);
                    }
                }
            }
        }
        if failed_any {
            // Wake whoever sleeps on the result ring, so a waiter whose task just failed sees it now.
            let _ = self
                .results
                .try_put(&wire::frame(0, wire::KIND_WAKE, true, 0, &[]));
        }
    }

    /// Dead worker `wi`, whose published frames were taken: fails (or requeues) exactly its tasks and
    /// says when it may be replaced.
    fn judge_death(&mut self, wi: usize) {
        let (signal, exit_code) = self.how_it_died(wi);
        // A worker takes its tasks in order and answers each before taking the next, so of its
        // unanswered tasks only the oldest can have started: that one died with it. The others never
        // started; they go back to the front of the queue without using up a retry. A worker that
        // announced its exit had answered its last task: none of the rest started.
        let lost: Vec<u64> = self.workers[wi].in_flight.drain(..).collect();
        let announced = self.workers[wi].exiting_since.is_some();
        // Nor did a task whose last frames were never sent (found by review: it failed with
        // `WorkerDied`, or used up its retry, though the worker never had the whole of it) -- if the
        // worker had answered a task before, that is, got past its initializer: a worker that dies
        // before answering anything fails (or retries) one task per death, so that the restarts of
        // a failing initializer end with the work.
        let half_sent = self.workers[wi].sending.take().map(|(id, _)| id);
        let answered_any = self.workers[wi].dispatched > lost.len() as u64;
        let never_had_it = answered_any && lost.first().is_some_and(|&id| Some(id) == half_sent);
        let started = if announced || never_had_it { 0 } else { 1 };
        for &id in lost.iter().skip(started).rev() {
            self.partial.forget(id);
            if self.tasks.contains_key(&id) {
                self.pending.push_front(id);
            }
        }
        if let Some(&id) = lost.first().filter(|_| started == 1) {
            self.died_with_its_worker(id, signal, exit_code);
        }
        let w = &mut self.workers[wi];
        w.idle_deaths = if w.dispatched == 0 {
            w.idle_deaths.saturating_add(1)
        } else {
            0
        };
        w.replace_at = Some(Instant::now() + restart_delay(w.idle_deaths));
    }

    /// Fails every task not yet given to a worker with `why`, the error a worker's start met (see
    /// [`ChunkOutcome::NoWorker`]).
    fn fail_pending(&mut self, why: &Error) {
        // An `Error` is not `Clone`, but crosses processes as bytes: every task gets its own copy.
        let encoded = postcard::to_allocvec(why).unwrap_or_default();
        for id in std::mem::take(&mut self.pending) {
            if let Some(task) = self.tasks.remove(&id) {
                let outcome = ChunkOutcome::NoWorker(encoded.clone());
                let owed = task.spec.job.finish(task.spec.chunk, outcome);
                self.wake_later.absorb(owed);
            }
        }
    }

    /// Stops the workers of a closed pool whose work is done, without waiting: the first call closes
    /// their rings, and each call (every tick) ends the pool once they have all exited, killing those
    /// still running at [`SHUTDOWN_PATIENCE`]. Found by review: it waited for each worker in turn, up
    /// to 10 s each, under the engine's lock, so N stuck workers (stopped, or busy in a slow
    /// initializer) held `join` for N x 10 s, `terminate` (and dropping the pool) as long instead of
    /// killing them now, and a caller whose reading of the last answer began the shutdown as long
    /// before it got that answer.
    fn shut_down(&mut self) {
        let now = Instant::now();
        let by = match self.stopping_by {
            Some(by) => by,
            None => {
                for w in &self.workers {
                    w.tasks.close();
                }
                let by = now + SHUTDOWN_PATIENCE;
                self.stopping_by = Some(by);
                by
            }
        };
        if now < by && self.workers.iter().any(|w| w.process.is_alive()) {
            return;
        }
        for w in &self.workers {
            // A worker that did not notice its closed ring in time is killed: shutting down must not
            // hang on it.
            if w.process.is_alive() {
                let _ = w.process.kill();
            }
            forget_arenas_of(&w.process);
        }
        // Reaped by the engine once it let go of the lock, as the dead are (see `dead`).
        self.dead.extend(self.workers.drain(..).map(|w| w.process));
        self.finished = true;
    }

    /// Kills the workers now; fails what is outstanding with `Closed`.
    pub(crate) fn terminate(&mut self) {
        for w in &self.workers {
            w.tasks.close();
            let _ = w.process.kill();
            forget_arenas_of(&w.process);
        }
        // Killed, and reaped by the engine once it let go of the lock (see `dead`): a worker of a dead
        // fork server takes as long as its new parent to reap it, for each worker in turn.
        self.dead.extend(self.workers.drain(..).map(|w| w.process));
        for (_, task) in self.tasks.drain() {
            let owed = task.spec.job.finish(task.spec.chunk, ChunkOutcome::Closed);
            self.wake_later.absorb(owed);
        }
        self.pending.clear();
        self.closing = true;
        self.finished = true;
    }
}

/// A task: the function reference and the payload, which stays lent while the task lives.
pub(crate) fn task_spec(
    job: Arc<Job>,
    chunk: usize,
    f: FnRef,
    payload: Payload,
) -> Result<TaskSpec> {
    let body = Arc::new(wire::encode_task(f, &payload)?);
    let lent = match payload {
        Payload::Inline(_) => None,
        Payload::Shared(block) => Some(block),
    };
    Ok(TaskSpec {
        job,
        chunk,
        body,
        _lent: lent,
    })
}
