//! [`ClusterPool`]: the map family over the ranks of an MPI job.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use bytemuck::Pod;
use mpi::point_to_point::Source;
use mpi::topology::Communicator;
use mpi::traits::CommunicatorCollectives;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::serve::{self, ArrayArgs, ArrayShare, ClusterKind, Command, RankStore, RemoteFailure};
use super::serve::{StreamItem, TransformReply, TransformShare};
use super::transport::{self, Traffic, MAX_MESSAGE, PIECE, TAG_ITEM, TAG_REPLY, TAG_SHARE};
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

    /// Workers of this rank's local pool (default: the node's CPUs divided among the ranks on it, at
    /// least 1). Ranks may differ: shares are in proportion to the workers.
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
    /// This rank's [`PoolBuilder::build`] error if its pool cannot start; [`Error::RankFailed`] naming the
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
    cluster: &'c Cluster,
    local: Pool,
    /// Workers of each rank's pool: the weights of the shares.
    workers: Vec<usize>,
    /// Which ranks read and write rank 0's arrays in place.
    shared: Vec<bool>,
    traffic: Traffic,
    /// What this rank keeps across calls: buffers for the elements it is sent, its parts of distributed
    /// arrays.
    store: RankStore,
    /// The id the next distributed array gets (the same on every rank: they are made collectively).
    next_array: u64,
    /// Inside `run`, on rank 0.
    driving: bool,
    /// In the middle of a call's messages: a panic now cannot stop the serving ranks cleanly.
    in_call: bool,
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
struct FirstFailure(Option<(usize, Error)>);

impl FirstFailure {
    fn note(&mut self, (at, e): (usize, Error)) {
        if self.0.as_ref().is_none_or(|(i, _)| at < *i) {
            self.0 = Some((at, e));
        }
    }

    /// The index in the input an error of rank 0's own share (which starts at 0) belongs to.
    fn local((base, e): (usize, Error)) -> (usize, Error) {
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
                        world,
                        &self.local,
                        &args,
                        &mut self.traffic,
                        &mut self.store,
                    );
                }
            }
        }
    }

    #[track_caller]
    fn begin(&mut self, op: LocalFn<ClusterKind>, args: Vec<u8>) -> Result<()> {
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

    fn size(&self) -> usize {
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
    /// The error of the lowest-index item that failed ([`Error::TaskPanicked`], [`Error::WorkerDied`]
    /// with the item's index in `items`, or [`Error::RankFailed`]), after every rank has finished;
    /// [`Error::Encode`] if an item cannot be serialized; [`Error::MessageTooLarge`] if a rank's share of
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
    /// [`Error::Encode`], [`Error::MessageTooLarge`] for the call; each item's own error
    /// ([`Error::TaskPanicked`], [`Error::WorkerDied`], [`Error::RankFailed`]) comes from the iterator.
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

    /// `f` on consecutive chunks of `chunk_len` elements of `array` (the last may be shorter), one result
    /// per chunk, in order. Each rank gets a contiguous run of chunks: in place if it shares rank 0's
    /// memory, else as elements sent over MPI (only its own).
    ///
    /// # Examples
    /// ```no_run
    /// fn sum(chunk: &[f64]) -> f64 {
    ///     chunk.iter().sum()
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = mproc::SharedArray::from_slice(&vec![1.0; 1 << 20])?;
    /// if let Some(sums) = pool.run(|pool| pool.map_chunks(&data, 1 << 16, sum)) {
    ///     assert_eq!(sums?.iter().sum::<f64>(), (1 << 20) as f64);
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map), with chunk indices as task indices.
    ///
    /// # Panics
    /// If `chunk_len` is 0; as [`map`](Self::map).
    #[track_caller]
    pub fn map_chunks<T: Pod, R>(
        &mut self,
        array: &SharedArray<T>,
        chunk_len: usize,
        f: fn(&[T]) -> R,
    ) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        self.chunks_call(
            array,
            chunk_len,
            Vec::new(),
            serve::chunks_op(f),
            worker::chunk_fn(f),
        )
    }

    /// Like [`map_chunks`](Self::map_chunks), with parameters every task receives: `f(&params, chunk)`.
    ///
    /// # Examples
    /// ```no_run
    /// fn count_above(&limit: &f64, chunk: &[f64]) -> usize {
    ///     chunk.iter().filter(|&&x| x > limit).count()
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = mproc::SharedArray::from_slice(&(0..1000).map(f64::from).collect::<Vec<_>>())?;
    /// if let Some(counts) = pool.run(|pool| pool.map_chunks_with(&data, 100, &499.5, count_above)) {
    ///     assert_eq!(counts?.iter().sum::<usize>(), 500);
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_chunks`](Self::map_chunks); [`Error::Encode`] if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`map_chunks`](Self::map_chunks).
    #[track_caller]
    pub fn map_chunks_with<T: Pod, P, R>(
        &mut self,
        array: &SharedArray<T>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T]) -> R,
    ) -> Result<Vec<R>>
    where
        P: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let params = serve::encode(params)?;
        self.chunks_call(
            array,
            chunk_len,
            params,
            serve::chunks_with_op(f),
            worker::chunk_with_fn(f),
        )
    }

    /// Each rank's run of chunks of `len` elements, as element ranges.
    fn chunk_shares(&self, len: usize, chunk_len: usize) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
        let chunks = serve::split(len.div_ceil(chunk_len), &self.workers);
        let elems = chunks
            .iter()
            .map(|c| (c.start * chunk_len).min(len)..(c.end * chunk_len).min(len))
            .collect();
        (chunks, elems)
    }

    #[track_caller]
    fn chunks_call<T: Pod, R: DeserializeOwned>(
        &mut self,
        array: &SharedArray<T>,
        chunk_len: usize,
        params: Vec<u8>,
        op: LocalFn<ClusterKind>,
        task: LocalFn<TaskKind>,
    ) -> Result<Vec<R>> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let (chunks, elems) = self.chunk_shares(array.len(), chunk_len);
        let args = ArrayArgs {
            chunk_len: chunk_len as u64,
            params,
        };
        let shares = (0..self.size())
            .map(|r| {
                serve::encode(&ArrayShare {
                    elems: elems[r].len() as u64,
                    shared: self.shared[r].then(|| serve::lend(array, elems[r].clone())),
                    part: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.begin(op, serve::encode(&args)?)?;
        let world = self.cluster.world();
        let local = serve::submit_chunks::<R>(
            &self.local,
            task,
            &serve::lend(array, elems[0].clone()),
            elems[0].len(),
            0..chunks[0].len(),
            &args,
        );
        for r in 1..self.size() {
            self.traffic.send_message(world, r, TAG_SHARE, &shares[r]);
            if !self.shared[r] && !elems[r].is_empty() {
                let part = array
                    .range(elems[r].clone())
                    .expect("a share is inside the array");
                let unit = chunk_len * std::mem::size_of::<T>();
                self.traffic
                    .send_array(world, r, bytemuck::cast_slice(part), unit);
            }
        }
        self.gather(local, &chunks, "chunks")
    }

    /// Rank 0's own results and every other rank's reply, in rank order; the error of the lowest failing
    /// index if any failed. `shares[r]` is rank r's range of the call's indices (items or chunks).
    fn gather<R: DeserializeOwned>(
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

    /// Makes an array whose parts already live on the ranks — each rank loaded or generated its own
    /// `part` (say, its rows of a file) — into one [`DistributedArray`] that rank 0's calls can use, with
    /// no element moving between ranks. Collective: every rank calls it with its part (empty parts are
    /// fine), outside [`run`](Self::run), in the same order as the other ranks.
    ///
    /// # Examples
    /// ```no_run
    /// fn sum(chunk: &[u64]) -> u64 {
    ///     chunk.iter().sum()
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// // Each rank's own part: here 1000 elements, all equal to its rank.
    /// let part = mproc::SharedArray::from_slice(&vec![cluster.rank() as u64; 1000])?;
    /// let data = pool.distribute(part)?;
    /// if let Some(sums) = pool.run(|pool| pool.map_chunks_distributed(&data, 100, sum)) {
    ///     let total: u64 = sums?.iter().sum();
    ///     assert_eq!(total, (0..cluster.size() as u64).map(|r| 1000 * r).sum::<u64>());
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::RankFailed`] on every rank if the ranks' parts have different element sizes (different
    /// types).
    ///
    /// # Panics
    /// Inside [`run`](Self::run).
    #[track_caller]
    pub fn distribute<T: Pod>(&mut self, part: SharedArray<T>) -> Result<DistributedArray<T>> {
        assert!(
            !self.driving,
            "mproc: ClusterPool::distribute is collective: call it on every rank, outside run"
        );
        let world = self.cluster.world();
        let mine = [part.len() as u64, std::mem::size_of::<T>() as u64];
        let mut flat = vec![0u64; 2 * self.size()];
        world.all_gather_into(&mine[..], &mut flat[..]);
        let id = self.next_array;
        self.next_array += 1;
        if let Some(r) = flat.chunks_exact(2).position(|w| w[1] != mine[1]) {
            return Err(Error::RankFailed {
                rank: r,
                message: format!(
                    "its part of distributed array {id} has elements of {} bytes, not {}",
                    flat[2 * r + 1],
                    mine[1]
                ),
            });
        }
        let part = std::rc::Rc::new(part);
        let alive: std::rc::Rc<dyn std::any::Any> = part.clone();
        self.store.parts.insert(
            id,
            serve::KeptPart {
                handle: part.block_handle(),
                bytes: mine[0] * mine[1],
                alive: std::rc::Rc::downgrade(&alive),
            },
        );
        Ok(DistributedArray {
            id,
            lens: flat.chunks_exact(2).map(|w| w[0] as usize).collect(),
            part,
        })
    }

    /// [`map_chunks`](Self::map_chunks) over a [`DistributedArray`]: each rank runs `f` on consecutive
    /// chunks of `chunk_len` elements of its own part (a chunk never spans two parts; each part's last
    /// may be shorter), and no element travels. One result per chunk, in rank order, then chunk order.
    ///
    /// # Examples
    /// See [`distribute`](Self::distribute).
    ///
    /// # Errors
    /// As [`map_chunks`](Self::map_chunks), with chunk indices (counted across the parts in rank order)
    /// as task indices; [`Error::RankFailed`] if a rank's program dropped its part.
    ///
    /// # Panics
    /// If `chunk_len` is 0; as [`map`](Self::map).
    #[track_caller]
    pub fn map_chunks_distributed<T: Pod, R>(
        &mut self,
        array: &DistributedArray<T>,
        chunk_len: usize,
        f: fn(&[T]) -> R,
    ) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        self.distributed_call(
            array,
            chunk_len,
            Vec::new(),
            serve::chunks_op(f),
            worker::chunk_fn(f),
        )
    }

    /// [`map_chunks_distributed`](Self::map_chunks_distributed) with parameters every task receives:
    /// `f(&params, chunk)`.
    ///
    /// # Examples
    /// ```no_run
    /// fn count_below(&limit: &f32, chunk: &[f32]) -> usize {
    ///     chunk.iter().filter(|&&x| x < limit).count()
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let part = mproc::SharedArray::from_slice(&vec![0.5f32; 100])?;
    /// let data = pool.distribute(part)?;
    /// if let Some(counts) = pool.run(|pool| pool.map_chunks_distributed_with(&data, 10, &1.0, count_below)) {
    ///     assert_eq!(counts?.iter().sum::<usize>(), 100 * cluster.size());
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_chunks_distributed`](Self::map_chunks_distributed); [`Error::Encode`] if `params` cannot
    /// be serialized.
    ///
    /// # Panics
    /// As [`map_chunks_distributed`](Self::map_chunks_distributed).
    #[track_caller]
    pub fn map_chunks_distributed_with<T: Pod, P, R>(
        &mut self,
        array: &DistributedArray<T>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T]) -> R,
    ) -> Result<Vec<R>>
    where
        P: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let params = serve::encode(params)?;
        self.distributed_call(
            array,
            chunk_len,
            params,
            serve::chunks_with_op(f),
            worker::chunk_with_fn(f),
        )
    }

    #[track_caller]
    fn distributed_call<T: Pod, R: DeserializeOwned>(
        &mut self,
        array: &DistributedArray<T>,
        chunk_len: usize,
        params: Vec<u8>,
        op: LocalFn<ClusterKind>,
        task: LocalFn<TaskKind>,
    ) -> Result<Vec<R>> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let mut first = 0;
        let chunks: Vec<Range<usize>> = array
            .lens
            .iter()
            .map(|l| {
                let c = first..first + l.div_ceil(chunk_len);
                first = c.end;
                c
            })
            .collect();
        let args = ArrayArgs {
            chunk_len: chunk_len as u64,
            params,
        };
        let shares = (0..self.size())
            .map(|r| {
                serve::encode(&ArrayShare {
                    elems: array.lens[r] as u64,
                    shared: None,
                    part: Some(array.id),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.begin(op, serve::encode(&args)?)?;
        let world = self.cluster.world();
        let local = serve::submit_chunks::<R>(
            &self.local,
            task,
            &array.part.block_handle(),
            array.part.len(),
            0..chunks[0].len(),
            &args,
        );
        for (r, share) in shares.iter().enumerate().skip(1) {
            self.traffic.send_message(world, r, TAG_SHARE, share);
        }
        self.gather(local, &chunks, "chunks")
    }

    /// Fills `output` in parallel from `input`, where every output element has the same number `k` of
    /// input elements (`input.len() == k * output.len()`: `k` = 1 for an element-wise map, the row
    /// width for a reduction of rows). Each task calls `f(input_block, out_chunk, start)`:
    /// `out_chunk` is `chunk_len` elements of its rank's block of the output (the last may be
    /// shorter), `input_block` the input elements of that whole block, and `start` the index of
    /// `out_chunk[0]` in the block — so output element `start + j` reads
    /// `input_block[(start + j) * k..(start + j + 1) * k]`.
    ///
    /// This is [`Pool::transform`]'s contract with the rank's block in place of the whole array: a
    /// function that reads only the input rows of its own outputs gives the same result with either
    /// pool. A rank sees only its block of the input (no halo across ranks), and `out_chunk` does not
    /// start with the output's old contents on a rank of another node: `f` must write all of it.
    ///
    /// # Examples
    /// ```no_run
    /// // Each output element is the sum of its row in a `WIDTH`-wide matrix.
    /// const WIDTH: usize = 4;
    /// fn row_sums(input: &[u32], out: &mut [u32], start: usize) {
    ///     for (j, o) in out.iter_mut().enumerate() {
    ///         let row = start + j;
    ///         *o = input[row * WIDTH..(row + 1) * WIDTH].iter().sum();
    ///     }
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let matrix = mproc::SharedArray::from_slice(&vec![1u32; WIDTH * 100])?;
    /// let mut sums = mproc::SharedArray::<u32>::zeroed(100)?;
    /// if let Some(done) = pool.run(|pool| pool.transform(&matrix, &mut sums, 16, row_sums)) {
    ///     done?;
    ///     assert!(sums.iter().all(|&s| s == 4));
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map), with chunk indices as task indices. Chunks whose task failed may be partly
    /// written.
    ///
    /// # Panics
    /// If `chunk_len` is 0 or `input.len()` is not a whole multiple of a non-empty `output.len()`; as
    /// [`map`](Self::map).
    #[track_caller]
    pub fn transform<T: Pod, U: Pod>(
        &mut self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        f: fn(&[T], &mut [U], usize),
    ) -> Result<()> {
        self.transform_call(
            input,
            output,
            chunk_len,
            Vec::new(),
            serve::transform_op(f),
            worker::transform_fn(f),
        )
    }

    /// Like [`transform`](Self::transform), with parameters every task receives:
    /// `f(&params, input_block, out_chunk, start)`.
    ///
    /// # Examples
    /// ```no_run
    /// fn scale(&by: &f32, input: &[f32], out: &mut [f32], start: usize) {
    ///     for (j, o) in out.iter_mut().enumerate() {
    ///         *o = input[start + j] * by;
    ///     }
    /// }
    ///
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let x = mproc::SharedArray::from_slice(&vec![2.0f32; 1000])?;
    /// let mut y = mproc::SharedArray::<f32>::zeroed(1000)?;
    /// if let Some(done) = pool.run(|pool| pool.transform_with(&x, &mut y, 100, &1.5, scale)) {
    ///     done?;
    ///     assert!(y.iter().all(|&v| v == 3.0));
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`transform`](Self::transform); [`Error::Encode`] if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`transform`](Self::transform).
    #[track_caller]
    pub fn transform_with<T: Pod, U: Pod, P>(
        &mut self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T], &mut [U], usize),
    ) -> Result<()>
    where
        P: Serialize + DeserializeOwned,
    {
        let params = serve::encode(params)?;
        self.transform_call(
            input,
            output,
            chunk_len,
            params,
            serve::transform_with_op(f),
            worker::transform_with_fn(f),
        )
    }

    #[track_caller]
    fn transform_call<T: Pod, U: Pod>(
        &mut self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        params: Vec<u8>,
        op: LocalFn<ClusterKind>,
        task: LocalFn<TaskKind>,
    ) -> Result<()> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        if output.is_empty() {
            return Ok(());
        }
        assert!(
            input.len().is_multiple_of(output.len()),
            "a cluster transform needs input.len() ({}) to be a whole multiple of output.len() ({})",
            input.len(),
            output.len()
        );
        let k = input.len() / output.len();
        let (chunks, outs) = self.chunk_shares(output.len(), chunk_len);
        let ins: Vec<Range<usize>> = outs.iter().map(|o| o.start * k..o.end * k).collect();
        let args = ArrayArgs {
            chunk_len: chunk_len as u64,
            params,
        };
        let shares = (0..self.size())
            .map(|r| {
                let shared = self.shared[r];
                serve::encode(&TransformShare {
                    input: ArrayShare {
                        elems: ins[r].len() as u64,
                        shared: shared.then(|| serve::lend(input, ins[r].clone())),
                        part: None,
                    },
                    output: ArrayShare {
                        elems: outs[r].len() as u64,
                        shared: shared.then(|| serve::lend(output, outs[r].clone())),
                        part: None,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.begin(op, serve::encode(&args)?)?;
        let world = self.cluster.world();
        let local = serve::submit_transform(
            &self.local,
            task,
            (&serve::lend(input, ins[0].clone()), ins[0].len()),
            (&serve::lend(output, outs[0].clone()), outs[0].len()),
            &args,
        );
        for r in 1..self.size() {
            self.traffic.send_message(world, r, TAG_SHARE, &shares[r]);
            if !self.shared[r] && !ins[r].is_empty() {
                let part = input
                    .range(ins[r].clone())
                    .expect("a share is inside the input");
                self.traffic
                    .send_array(world, r, bytemuck::cast_slice(part), PIECE);
            }
        }
        let mut failure = FirstFailure::default();
        if let Err(e) = local.and_then(|p| p.get()) {
            failure.note(FirstFailure::local((0, e)));
        }
        // The ranks that write `output` in place first: once they have replied, no other process writes
        // it, and the sent outputs can be received into it.
        let order = (1..self.size())
            .filter(|&r| self.shared[r])
            .chain((1..self.size()).filter(|&r| !self.shared[r]));
        for r in order {
            let bytes = self
                .traffic
                .receive_message(world, r, TAG_REPLY, MAX_MESSAGE);
            let reply: TransformReply = match serve::decode(&bytes) {
                Ok(reply) => reply,
                // Whether output bytes follow is unknown: the protocol cannot go on.
                Err(e) => {
                    transport::violation(world, &format!("an undecodable transform reply: {e}"))
                }
            };
            if reply.data_follows {
                if self.shared[r] {
                    transport::violation(world, "output bytes from a rank that wrote in place");
                }
                let part = output
                    .range_mut(outs[r].clone())
                    .expect("a share is inside the output");
                self.traffic
                    .receive_array(world, r, bytemuck::cast_slice_mut(part), PIECE);
            }
            if let Err(f) = reply.outcome {
                failure.note(f.into_error(r, chunks[r].start));
            }
        }
        self.in_call = false;
        match failure.0 {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

fn rank_failed(rank: usize, message: String) -> Error {
    Error::RankFailed { rank, message }
}

/// Results of [`ClusterPool::imap_unordered`] as they finish on any rank, each with its item index.
pub struct ClusterImapUnordered<'p, 'c, R> {
    pool: &'p mut ClusterPool<'c>,
    shares: Vec<Range<usize>>,
    /// Rank 0's own results, from the thread that waits for them; `None` once all arrived.
    local: Option<Receiver<(usize, Result<R>)>>,
    /// Per rank: whether its end marker arrived (rank 0's entry is unused).
    ended: Vec<bool>,
    /// Per item: whether its result was yielded (or is pending).
    seen: Vec<bool>,
    pending: VecDeque<(usize, Result<R>)>,
    /// How long the iterator has found nothing new: the back-off of its polling.
    idle: Duration,
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

/// An array split across the ranks of a job, each rank holding its own part in its own shared memory:
/// made collectively by [`ClusterPool::distribute`], used by rank 0 in
/// [`map_chunks_distributed`](ClusterPool::map_chunks_distributed). Every rank keeps its value while
/// rank 0 uses the array: a rank that drops its part makes the calls that need it fail with
/// [`Error::RankFailed`], never read freed memory.
pub struct DistributedArray<T: Pod> {
    id: u64,
    /// The length of every rank's part.
    lens: Vec<usize>,
    /// This rank's part; the pool's record of it is a weak reference.
    part: std::rc::Rc<SharedArray<T>>,
}

impl<T: Pod> std::fmt::Debug for DistributedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedArray")
            .field("id", &self.id)
            .field("lens", &self.lens)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> DistributedArray<T> {
    /// The number of elements of all parts together.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = pool.distribute(mproc::SharedArray::<u8>::zeroed(10)?)?;
    /// assert_eq!(data.len(), 10 * cluster.size());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Whether every part is empty.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = pool.distribute(mproc::SharedArray::<u8>::zeroed(1)?)?;
    /// assert!(!data.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length of `rank`'s part.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = pool.distribute(mproc::SharedArray::<u8>::zeroed(cluster.rank() + 1)?)?;
    /// assert_eq!(data.part_len(0), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank` is not a rank of the job.
    #[track_caller]
    pub fn part_len(&self, rank: usize) -> usize {
        self.lens[rank]
    }

    /// This rank's part.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
    /// let data = pool.distribute(mproc::SharedArray::from_slice(&[1u32, 2, 3])?)?;
    /// assert_eq!(&data.part()[..], &[1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn part(&self) -> &SharedArray<T> {
        &self.part
    }
}
