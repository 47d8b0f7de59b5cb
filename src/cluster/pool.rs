//! [`ClusterPool`]: the map family over the ranks of an MPI job.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use mpi::traits::CommunicatorCollectives;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::imap::ClusterImapUnordered;
use super::serve::{self, ClusterKind, Command, RankStore, RemoteFailure};
use super::transport::{self, Traffic, MAX_MESSAGE, TAG_REPLY, TAG_SHARE};
use super::Cluster;
use crate::error::{Error, Result};
use crate::heap::SharedArray;
use crate::pool::worker::{self, TaskKind};
use crate::pool::{AsyncResult, Pool, PoolBuilder};
use crate::process::fnref::LocalFn;

/// Configures a [`ClusterPool`].
#[derive(Debug, Clone)]
pub struct ClusterPoolBuilder {
    local: PoolBuilder,
    workers: Option<usize>,
    share_node_memory: bool,
}

impl Default for ClusterPoolBuilder {
    fn default() -> Self {
        ClusterPoolBuilder {
            local: PoolBuilder::default(),
            workers: None,
            share_node_memory: true,
        }
    }
}

impl ClusterPoolBuilder {
    /// The settings of every rank's local pool (initializer, retry on worker death, max tasks per
    /// child). Its worker count is replaced by [`workers`](Self::workers).
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let local = mproc::Pool::builder().retry_on_worker_death(true);
    /// let pool = mproc::cluster::ClusterPool::builder().local(local).build(&cluster)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn local(mut self, builder: PoolBuilder) -> Self {
        self.local = builder;
        self
    }

    /// Workers of this rank's local pool (default: the CPUs this rank may run on — its binding, see the
    /// [module docs](super) — divided among the ranks on its node, at least 1). Ranks may differ: shares
    /// are in proportion to the workers.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::builder().workers(1).build(&cluster)?;
    /// assert_eq!(pool.workers_of(cluster.rank()), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n > 0, "a rank's pool needs at least one worker");
        self.workers = Some(n);
        self
    }

    /// Whether ranks on rank 0's node read and write rank 0's arrays in place (default) rather than be
    /// sent their elements over MPI like ranks of other nodes. Rank 0's setting decides.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::builder().share_node_memory(false).build(&cluster)?;
    /// assert!((1..cluster.size()).all(|r| !pool.shares_memory_with(r)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn share_node_memory(mut self, yes: bool) -> Self {
        self.share_node_memory = yes;
        self
    }

    /// Starts every rank's local pool. Collective: every rank calls it.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::builder().build(&cluster)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// This rank's [`PoolBuilder::build`] error if its pool cannot start; [`Error::RankFailed`](crate::Error::RankFailed) naming the
    /// first rank whose pool could not start, on the other ranks.
    pub fn build(self, cluster: &Cluster) -> Result<ClusterPool<'_>> {
        let world = cluster.world();
        let workers = self.workers.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus / cluster.ranks_on_my_node()).max(1)
        });
        let local = self.local.workers(workers).build();

        // Every rank learns whether every pool started, so that no rank goes on into a collective the
        // others have left.
        let mine = if local.is_ok() { workers as u64 } else { 0 };
        let mut all = vec![0u64; cluster.size()];
        world.all_gather_into(&mine, &mut all[..]);
        let local = local?;
        if let Some(r) = all.iter().position(|&w| w == 0) {
            return Err(Error::RankFailed {
                rank: r,
                message: "its local pool could not start".into(),
            });
        }

        let shared = probe_node_memory(cluster, self.share_node_memory);
        Ok(ClusterPool {
            cluster,
            local,
            workers: all.iter().map(|&w| w as usize).collect(),
            shared,
            traffic: Traffic::new(cluster.size()),
            store: RankStore::default(),
            next_array: 0,
            driving: false,
            in_call: false,
        })
    }
}

/// Which ranks can open rank 0's shared memory: rank 0 lends a small array with a random value, and
/// each rank on its node tries to read it. Collective.
fn probe_node_memory(cluster: &Cluster, wanted: bool) -> Vec<bool> {
    let world = cluster.world();
    let nonce = crate::sys::proc::random_u64();
    let probe = (cluster.rank() == 0 && wanted)
        .then(|| SharedArray::from_slice(&[PROBE_MAGIC, nonce]).ok())
        .flatten();
    // Rank 0 broadcasts the handle and the value (nothing if it does not share), as a command would.
    let offer = probe
        .as_ref()
        .and_then(|p| serve::encode(&(serve::lend(p, 0..2), nonce)).ok());
    let offer = if cluster.rank() == 0 {
        let bytes = offer.unwrap_or_default();
        transport::broadcast_command(world, &bytes);
        bytes
    } else {
        transport::receive_command(world)
    };
    let can = cluster.rank() != 0
        && cluster.node() == cluster.node_of(0)
        && !offer.is_empty()
        && serve::decode::<(crate::heap::BlockHandle, u64)>(&offer)
            .ok()
            .and_then(|(h, nonce)| {
                let a = SharedArray::<u64>::view(&h).ok()?;
                Some(a.len() == 2 && a[0] == PROBE_MAGIC && a[1] == nonce)
            })
            .unwrap_or(false);
    let mut all = vec![0u8; cluster.size()];
    world.all_gather_into(&u8::from(can), &mut all[..]);
    drop(probe);
    all.iter().map(|&c| c == 1).collect()
}

const PROBE_MAGIC: u64 = 0x6d70_726f_6265_0001;

/// A process pool spanning the ranks of an MPI job: a local [`Pool`] on every rank, driven by rank 0.
/// See the [module docs](super).
pub struct ClusterPool<'c> {
    pub(super) cluster: &'c Cluster,
    pub(super) local: Pool,
    /// Workers of each rank's pool: the weights of the shares.
    pub(super) workers: Vec<usize>,
    /// Which ranks read and write rank 0's arrays in place.
    pub(super) shared: Vec<bool>,
    pub(super) traffic: Traffic,
    /// What this rank keeps across calls: buffers for the elements it is sent, its parts of distributed
    /// arrays.
    pub(super) store: RankStore,
    /// The id the next distributed array gets (the same on every rank: they are made collectively).
    pub(super) next_array: u64,
    /// Inside `run`, on rank 0.
    pub(super) driving: bool,
    /// In the middle of a call's messages: a panic now cannot stop the serving ranks cleanly.
    pub(super) in_call: bool,
}

impl std::fmt::Debug for ClusterPool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("rank", &self.cluster.rank())
            .field("workers", &self.workers)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Keeps the first failure in input order.
#[derive(Default)]
pub(super) struct FirstFailure(pub(super) Option<(usize, Error)>);

impl FirstFailure {
    pub(super) fn note(&mut self, (at, e): (usize, Error)) {
        if self.0.as_ref().is_none_or(|(i, _)| at < *i) {
            self.0 = Some((at, e));
        }
    }

    /// The index in the input an error of rank 0's own share (which starts at 0) belongs to.
    pub(super) fn local((base, e): (usize, Error)) -> (usize, Error) {
        let at = match &e {
            Error::TaskPanicked { task, .. } | Error::WorkerDied { task, .. } => base + *task,
            _ => base,
        };
        (at, e)
    }
}

impl<'c> ClusterPool<'c> {
    /// A cluster pool with the default settings (see [`ClusterPoolBuilder`]). Collective.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ClusterPoolBuilder::build`].
    pub fn new(cluster: &'c Cluster) -> Result<ClusterPool<'c>> {
        ClusterPoolBuilder::default().build(cluster)
    }

    /// A builder for other settings.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::builder().workers(2).build(&cluster)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> ClusterPoolBuilder {
        ClusterPoolBuilder::default()
    }

    /// The workers of `rank`'s local pool.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let total: usize = (0..cluster.size()).map(|r| pool.workers_of(r)).sum();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank` is not a rank of the job.
    #[track_caller]
    pub fn workers_of(&self, rank: usize) -> usize {
        self.workers[rank]
    }

    /// Whether `rank` reads and writes rank 0's arrays in place (it is on rank 0's node, could open
    /// its shared memory, and sharing was not turned off), rather than being sent their elements.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// assert!(!pool.shares_memory_with(0)); // rank 0 owns the arrays
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank` is not a rank of the job.
    #[track_caller]
    pub fn shares_memory_with(&self, rank: usize) -> bool {
        self.shared[rank]
    }

    /// Bytes this rank sent to `rank` over MPI point-to-point (shares, array elements, results; not
    /// the small broadcast commands), since the pool started.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// assert_eq!(pool.bytes_sent_to(0), 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank` is not a rank of the job.
    #[track_caller]
    pub fn bytes_sent_to(&self, rank: usize) -> u64 {
        self.traffic.sent[rank]
    }

    /// Bytes this rank received from `rank` over MPI point-to-point, since the pool started.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// assert_eq!(pool.bytes_received_from(0), 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank` is not a rank of the job.
    #[track_caller]
    pub fn bytes_received_from(&self, rank: usize) -> u64 {
        self.traffic.received[rank]
    }

    /// Rank 0 runs `body` with this pool, calling its map family; every other rank serves those calls
    /// until `body` returns. Collective: every rank calls `run`, as many times as rank 0 does.
    ///
    /// Returns `Some(body's value)` on rank 0 and `None` on the others. If `body` panics on rank 0 between
    /// calls, the serving ranks are released and the panic goes on; a panic in the middle of a call's
    /// messages ends the job instead (the serving ranks cannot be brought back in step).
    ///
    /// # Panics
    /// If called inside `body` (runs do not nest).
    ///
    /// # Examples
    /// ```no_run
    /// fn double(x: i32) -> i32 {
    ///     2 * x
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// if let Some(doubled) = pool.run(|pool| pool.map(double, 0..10)) {
    ///     assert_eq!(doubled?, (0..10).map(double).collect::<Vec<_>>());
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn run<T>(&mut self, body: impl FnOnce(&mut ClusterPool<'c>) -> T) -> Option<T> {
        assert!(
            !self.driving,
            "mproc: ClusterPool::run inside run: its stop would release the serving ranks too early"
        );
        if self.cluster.rank() != 0 {
            self.serve();
            return None;
        }
        self.driving = true;
        let out = panic::catch_unwind(AssertUnwindSafe(|| body(self)));
        self.driving = false;
        if self.in_call {
            transport::violation(
                self.cluster.world(),
                "rank 0 panicked in the middle of a cluster call",
            );
        }
        let stop = serve::encode(&Command::Stop).expect("a stop command encodes");
        transport::broadcast_command(self.cluster.world(), &stop);
        match out {
            Ok(v) => Some(v),
            Err(p) => panic::resume_unwind(p),
        }
    }

    /// A serving rank's loop: one call after another, until rank 0 says stop.
    fn serve(&mut self) {
        let world = self.cluster.world();
        loop {
            let bytes = transport::receive_command(world);
            let command: Command = match serve::decode(&bytes) {
                Ok(c) => c,
                Err(e) => transport::violation(world, &format!("an undecodable command: {e}")),
            };
            match command {
                Command::Stop => return,
                Command::Call { op, args } => {
                    let call = match op.resolve::<ClusterKind>(self.cluster.key()) {
                        Ok(call) => call,
                        Err(e) => transport::violation(world, &format!("a refused call: {e}")),
                    };
                    let (func, adapter) = call.parts();
                    adapter(
                        func,
                        &mut serve::Serving {
                            world,
                            pool: &self.local,
                            args: &args,
                            traffic: &mut self.traffic,
                            store: &mut self.store,
                        },
                    );
                }
            }
        }
    }

    #[track_caller]
    pub(super) fn begin(&mut self, op: LocalFn<ClusterKind>, args: Vec<u8>) -> Result<()> {
        assert!(
            self.driving,
            "mproc: a ClusterPool's map family is called inside ClusterPool::run, on rank 0"
        );
        assert!(
            !self.in_call,
            "mproc: the previous ClusterImapUnordered of this pool was leaked before it finished"
        );
        let command = serve::encode(&Command::Call {
            op: op.sign(self.cluster.key()),
            args,
        })?;
        if command.len() > MAX_MESSAGE {
            return Err(Error::MessageTooLarge {
                size: command.len(),
                max: MAX_MESSAGE,
            });
        }
        self.in_call = true;
        transport::broadcast_command(self.cluster.world(), &command);
        Ok(())
    }

    pub(super) fn size(&self) -> usize {
        self.cluster.size()
    }

    /// `f` applied to every item, in order, on the workers of every rank (Python's `Pool.map`).
    ///
    /// # Examples
    /// ```no_run
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// if let Some(squares) = pool.run(|pool| pool.map(square, 1..=4)) {
    ///     assert_eq!(squares?, [1, 4, 9, 16]);
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The error of the lowest-index item that failed ([`Error::TaskPanicked`](crate::Error::TaskPanicked), [`Error::WorkerDied`](crate::Error::WorkerDied)
    /// with the item's index in `items`, or [`Error::RankFailed`](crate::Error::RankFailed)), after every rank has finished;
    /// [`Error::Encode`](crate::Error::Encode) if an item cannot be serialized; [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) if a rank's share of
    /// the items does not fit one MPI message.
    ///
    /// # Panics
    /// Outside [`run`](Self::run) on rank 0, or if `f` is not a function of the main executable.
    #[track_caller]
    pub fn map<A, R>(&mut self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.items_call(serve::map_op(f), worker::map_fn(f), &items, None)
    }

    /// `f(a, b)` for every pair, in order (Python's `starmap`).
    ///
    /// # Examples
    /// ```no_run
    /// fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// if let Some(sums) = pool.run(|pool| pool.starmap(add, [(1, 2), (3, 4)])) {
    ///     assert_eq!(sums?, [3, 7]);
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    ///
    /// # Panics
    /// As [`map`](Self::map).
    #[track_caller]
    pub fn starmap<A, B, R>(
        &mut self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        B: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let items: Vec<(A, B)> = items.into_iter().collect();
        self.items_call(serve::star_op(f), worker::star_fn(f), &items, None)
    }

    #[track_caller]
    fn items_call<A: Serialize, R: DeserializeOwned>(
        &mut self,
        op: LocalFn<ClusterKind>,
        task: LocalFn<TaskKind>,
        items: &[A],
        chunksize: Option<usize>,
    ) -> Result<Vec<R>> {
        let shares = serve::split(items.len(), &self.workers);
        let encoded = self.encode_shares(items, &shares)?;
        self.begin(op, serve::encode(&chunksize.map(|c| c as u64))?)?;
        let world = self.cluster.world();
        let local =
            serve::submit_items::<A, R>(&self.local, task, &items[shares[0].clone()], chunksize);
        for (r, bytes) in encoded.iter().enumerate().skip(1) {
            self.traffic.send_message(world, r, TAG_SHARE, bytes);
        }
        self.gather(local, &shares, "items")
    }

    /// Each rank's share of `items`, serialized (rank 0's is left empty: it stays here).
    fn encode_shares<A: Serialize>(
        &self,
        items: &[A],
        shares: &[Range<usize>],
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = vec![Vec::new()];
        for share in &shares[1..] {
            let bytes = serve::encode(&items[share.clone()])?;
            if bytes.len() > MAX_MESSAGE {
                return Err(Error::MessageTooLarge {
                    size: bytes.len(),
                    max: MAX_MESSAGE,
                });
            }
            out.push(bytes);
        }
        Ok(out)
    }

    /// Results as they finish on any rank, in any order, each with its item index (Python's
    /// `imap_unordered`). Items go to the ranks in chunks of `chunksize` (default: about four per
    /// worker).
    ///
    /// The iterator borrows the pool: no other call can start until it is done. Dropping it early waits
    /// for (and drops) the remaining results, so that every rank is done with the call.
    ///
    /// # Examples
    /// ```no_run
    /// fn cube(x: u64) -> u64 {
    ///     x * x * x
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let total = pool.run(|pool| -> mproc::Result<u64> {
    ///     let mut sum = 0;
    ///     for (_index, cube) in pool.imap_unordered(cube, 0..100, None)? {
    ///         sum += cube?;
    ///     }
    ///     Ok(sum)
    /// });
    /// if let Some(total) = total {
    ///     assert_eq!(total?, (0..100u64).map(cube).sum());
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) for the call; each item's own error
    /// ([`Error::TaskPanicked`](crate::Error::TaskPanicked), [`Error::WorkerDied`](crate::Error::WorkerDied), [`Error::RankFailed`](crate::Error::RankFailed)) comes from the iterator.
    ///
    /// # Panics
    /// As [`map`](Self::map).
    #[track_caller]
    pub fn imap_unordered<A, R>(
        &mut self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<ClusterImapUnordered<'_, 'c, R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut items: Vec<A> = items.into_iter().collect();
        let total = items.len();
        let shares = serve::split(total, &self.workers);
        let encoded = self.encode_shares(&items, &shares)?;
        self.begin(
            serve::imap_unordered_op(f),
            serve::encode(&chunksize.map(|c| c as u64))?,
        )?;
        items.truncate(shares[0].end);
        let mut pending = VecDeque::new();
        let local = match self.local.imap_unordered(f, items, chunksize) {
            Ok(results) => {
                let (tx, rx) = mpsc::channel();
                // The local results arrive on a thread of their own, so that the caller's thread can
                // watch for the other ranks' results (MPI) and for these at once; it never calls MPI.
                std::thread::spawn(move || {
                    for x in results {
                        if tx.send(x).is_err() {
                            return;
                        }
                    }
                });
                Some(rx)
            }
            Err(e) => {
                let message = e.to_string();
                pending.extend(
                    shares[0]
                        .clone()
                        .map(|i| (i, Err(rank_failed(0, message.clone())))),
                );
                None
            }
        };
        let world = self.cluster.world();
        for (r, bytes) in encoded.iter().enumerate().skip(1) {
            self.traffic.send_message(world, r, TAG_SHARE, bytes);
        }
        let mut ended = vec![false; self.size()];
        ended[0] = true;
        Ok(ClusterImapUnordered {
            pool: self,
            shares,
            local,
            ended,
            seen: vec![false; total],
            pending,
            idle: Duration::ZERO,
        })
    }

    /// Rank 0's own results and every other rank's reply, in rank order; the error of the lowest failing
    /// index if any failed. `shares[r]` is rank r's range of the call's indices (items or chunks).
    pub(super) fn gather<R: DeserializeOwned>(
        &mut self,
        local: Result<AsyncResult<Vec<R>>>,
        shares: &[Range<usize>],
        what: &str,
    ) -> Result<Vec<R>> {
        let world = self.cluster.world();
        let mut failure = FirstFailure::default();
        let mut out = Vec::with_capacity(shares.iter().map(Range::len).sum());
        match local.and_then(|p| p.get()) {
            Ok(v) if v.len() == shares[0].len() => out.extend(v),
            Ok(v) => failure.note((
                shares[0].start,
                rank_failed(
                    0,
                    format!("{} results for {} {what}", v.len(), shares[0].len()),
                ),
            )),
            Err(e) => failure.note(FirstFailure::local((shares[0].start, e))),
        }
        for (r, share) in shares.iter().enumerate().skip(1) {
            let bytes = self
                .traffic
                .receive_message(world, r, TAG_REPLY, MAX_MESSAGE);
            match serve::decode::<std::result::Result<Vec<R>, RemoteFailure>>(&bytes) {
                Ok(Ok(v)) if v.len() == share.len() => out.extend(v),
                Ok(Ok(v)) => failure.note((
                    share.start,
                    rank_failed(r, format!("{} results for {} {what}", v.len(), share.len())),
                )),
                Ok(Err(f)) => failure.note(f.into_error(r, share.start)),
                Err(e) => failure.note((share.start, rank_failed(r, e.to_string()))),
            }
        }
        self.in_call = false;
        match failure.0 {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }
}

pub(super) fn rank_failed(rank: usize, message: String) -> Error {
    Error::RankFailed { rank, message }
}
