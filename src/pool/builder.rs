//! [`PoolBuilder`]: a pool's settings.

use super::dispatcher::PoolConfig;
use super::engine::Engine;
use super::worker::{self, FrameQueue};
use super::{Pool, FRAME_SIZE, MAX_MESSAGE_BYTES, RESULT_RING};
use crate::error::Result;
use crate::process::fnref::FnKey;

/// Configures a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    initializer: Option<fn()>,
    max_tasks_per_child: Option<u64>,
    retry: bool,
}

impl PoolBuilder {
    /// The number of worker processes (default: the available CPUs).
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n > 0, "a pool needs at least one worker");
        self.workers = Some(n);
        self
    }

    /// A function every worker runs once when it starts (Python's `initializer`).
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
        self
    }

    /// Replace each worker after it has run `n` tasks (Python's `maxtasksperchild`). A task is one chunk.
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        assert!(n > 0, "max_tasks_per_child must be at least 1");
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Run a task whose worker died once more on another worker before failing it with
    /// [`Error::WorkerDied`]. Only for tasks that are safe to run twice.
    pub fn retry_on_worker_death(mut self, yes: bool) -> Self {
        self.retry = yes;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`Error::Os`] if shared memory or a worker process cannot be created.
    ///
    /// # Panics
    /// If the initializer is not a function of the main executable.
    #[track_caller]
    pub fn build(self) -> Result<Pool> {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let key = FnKey::random();
        let initializer = self.initializer.map(|f| worker::init_fn(f).sign(&key));
        let cfg = PoolConfig {
            workers,
            key,
            initializer,
            max_tasks: self.max_tasks_per_child,
            retries: u8::from(self.retry),
            frame_size: FRAME_SIZE,
            max_body: MAX_MESSAGE_BYTES,
        };
        let results = FrameQueue::with_max_message(RESULT_RING, FRAME_SIZE)?;
        let (engine, background) = Engine::start(cfg, results)?;
        Ok(Pool {
            engine,
            key,
            workers,
            background: Some(background),
        })
    }
}
