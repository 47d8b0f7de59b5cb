//! Past one machine: the pool's map family over the ranks of an MPI job, with shared memory inside each
//! node (feature `mpi`).
//!
//! MPI is the engine: any launcher (`mpirun`, Slurm's `srun`, PBS) starts the same executable as a
//! number of *ranks*, usually one per node. [`Cluster::init`] starts MPI in each of them; a
//! [`ClusterPool`] starts a local [`Pool`](crate::Pool) on every rank, over that node's cores; and
//! [`ClusterPool::run`] lets rank 0 *drive* — call [`map`](ClusterPool::map),
//! [`imap_unordered`](ClusterPool::imap_unordered), [`starmap`](ClusterPool::starmap),
//! [`map_chunks`](ClusterPool::map_chunks), [`transform`](ClusterPool::transform) — while every other
//! rank *serves* until rank 0's closure returns.
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mproc::Error> {
//!     let cluster = mproc::cluster::Cluster::init()?;
//!     let mut pool = mproc::cluster::ClusterPool::new(&cluster)?;
//!     // Some(..) on rank 0, None on the ranks that served.
//!     if let Some(squares) = pool.run(|pool| pool.map(square, 0..1000)) {
//!         assert_eq!(squares?[999], 999 * 999);
//!     }
//!     Ok(())
//! }
//! ```
//! Run it with one rank per node, each free to use its node's cores:
//! `mpirun --map-by ppr:1:node --bind-to none target/release/my_program` (with a hostfile), or
//! `srun -N 4 --ntasks-per-node=1 --cpus-per-task=$CORES target/release/my_program` under Slurm. A
//! rank's workers inherit its CPU binding, and Open MPI binds each rank to a single core by default
//! (for up to 2 ranks): without `--bind-to none` a rank's whole pool shares that one core. The default
//! worker count ([`ClusterPoolBuilder::workers`]) is the CPUs this rank may use, divided among the ranks
//! of its node.
//!
//! # Hierarchical by design
//! A call splits its input into one contiguous *share* per rank, in proportion to each rank's workers.
//! Inside a rank everything is the local pool's: tasks are chunks, arrays move by offset, a worker's death
//! is [`Error::WorkerDied`] for exactly its tasks (or a retry, if the local pool was built with
//! [`PoolBuilder::retry_on_worker_death`](crate::PoolBuilder::retry_on_worker_death)). Across ranks, MPI
//! moves only what a rank needs:
//! - `map`, `starmap`, `imap_unordered`: each rank receives its share of the items (serialized) and
//!   sends back its share of the results;
//! - `map_chunks`, `transform`: rank 0 holds the [`SharedArray`](crate::SharedArray); a rank on **another node** receives the
//!   elements of its share (and, for `transform`, sends back its share of the output), never the whole
//!   array; a rank on **rank 0's node** (`MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)` says which) receives
//!   only a handle to its part of rank 0's shared memory, and its workers read and write there in place —
//!   unless that memory cannot be opened from it (a rank in its own container), which
//!   [`ClusterPool::new`] finds out once by trying;
//! - an array that is **already distributed** — each rank loaded or generated its own part, e.g. its
//!   rows of a `.npy` file — becomes a [`DistributedArray`] with [`ClusterPool::distribute`], and
//!   [`map_chunks_distributed`](ClusterPool::map_chunks_distributed) runs every rank on its own part:
//!   no element moves at all, only the results.
//!
//! # Tasks: the same checked function references
//! A call travels as the local pool's kind of function reference — an offset from a fixed function of
//! this crate, paired with the adapter that knows its types, under a SipHash MAC — here made for the
//! cluster's own adapter kind and keyed with a key rank 0 draws at [`Cluster::init`] and broadcasts. Offsets
//! mean the same code only in the same executable file, so [`Cluster::init`] compares the executable of
//! every rank with rank 0's (size and a hash of its bytes) and refuses to start, on every rank, with
//! [`Error::RankExecutableMismatch`] if one differs.
//!
//! # Trust: MPI is the channel
//! The key is sent over MPI, and so are the commands it authenticates. That is the trust boundary of
//! every MPI program: only the processes the launcher started for this job are in its communicator, and
//! the job's fabric (shared memory on a node, the cluster's network between nodes) is assumed not to carry
//! messages from outside the job — MPI itself has no authentication to offer beyond that. Within it, the
//! MAC still guarantees that a serving rank calls only pairs rank 0 made from real `fn` values with this
//! module's typed constructors, for the cluster's adapter kind, never a local pool's or a spawn's. Bytes
//! from another rank are trusted as far as MPI is and no further: every size is checked before anything
//! is allocated or received, and everything decoded from them is checked as the local
//! pool checks its rings (array handles are validated by the region layer when opened).
//!
//! # Failures
//! - **A rank dies** (killed, out of memory, its node lost): Open MPI (4.1, Debian's) has no fault
//!   tolerance by default, so the launcher ends the whole job and prints which rank died and how (e.g.
//!   `mpirun noticed that process rank 1 with PID … on node … exited on signal 9 (Killed)`); every other
//!   rank is killed with it, so nothing hangs waiting for it, and the job's exit status is non-zero.
//!   Re-run it; results written by earlier calls survive only where the program saved them.
//!   This relies on the launcher's default: a launcher told to keep the job running when a rank dies
//!   (`mpirun --enable-recovery`, `srun --no-kill`) leaves rank 0 waiting for the dead rank's answer
//!   for good, since MPI without fault tolerance gives no way to notice it. Do not use those options
//!   with mproc's cluster.
//! - **Ranks disagree about the protocol** (a bug; cannot happen between ranks running the same
//!   executable): the rank that notices prints why and calls `MPI_Abort`, which ends the job the same way.
//! - **Below a rank, mproc's guarantees hold**: a task's panic is [`Error::TaskPanicked`], a worker's
//!   death [`Error::WorkerDied`] (or a retry), each with the index of the item (or chunk) in the *whole*
//!   input, reported to rank 0; the other items still run; the local pools stay usable.
//! - Anything else a rank cannot do (its shared memory cannot be created, a result too large for one MPI
//!   message) is [`Error::RankFailed`] naming the rank.
//!
//! # Threads
//! MPI is started with `MPI_THREAD_FUNNELED`: only the thread that called [`Cluster::init`] calls MPI, and
//! [`Cluster`] is neither `Send` nor `Sync`, so the compiler keeps it there:
//! ```compile_fail
//! let cluster = mproc::cluster::Cluster::init().unwrap();
//! std::thread::spawn(move || cluster.barrier()); // `Cluster` cannot be sent to another thread
//! ```

mod arrays;
mod distributed;
mod identity;
mod imap;
mod pool;
mod serve;
mod transport;
mod wire;

pub use distributed::DistributedArray;
pub use imap::ClusterImapUnordered;
pub use pool::{ClusterPool, ClusterPoolBuilder};

use std::marker::PhantomData;

use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;

use crate::error::{Error, Result};
use crate::process::fnref::FnKey;

/// The MPI job this process is one rank of. See the [module docs](self).
///
/// Dropping it finalizes MPI (`MPI_Finalize`), which waits for every rank to get there. Dropped while
/// a panic unwinds (a rank whose code panicked, in a call or between calls), it aborts the whole job
/// instead (`MPI_Abort`), with a message naming the rank: the other ranks wait for this one, and
/// finalizing would hang them all. A rank that returns from `main` early, without a panic, while
/// the others still call it, is waited for by `MPI_Finalize` all the same: end such a rank with an
/// error (a panic) rather than a return.
///
/// # Examples
/// ```no_run
/// // Under `mpirun -n 4 target/release/my_program`: every rank runs this.
/// let cluster = mproc::cluster::Cluster::init()?;
/// println!("rank {} of {}", cluster.rank(), cluster.size());
/// cluster.barrier(); // every rank gets here before any goes on
/// drop(cluster); // MPI_Finalize
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Cluster {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// The node index of every rank: nodes are numbered 0.. in order of their lowest rank.
    nodes: Vec<usize>,
    key: FnKey,
    /// MPI runs funneled: only the thread that started it may call it, so a `Cluster` stays on that
    /// thread (a raw pointer is neither `Send` nor `Sync`).
    _funneled: PhantomData<*const ()>,
    /// Last, so that MPI is finalized after the communicators above are freed.
    _universe: Universe,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Unwinding from a panic: `MPI_Finalize` would wait for every rank, and the others wait for
        // this one (in a call, or for its next command), so the job would hang for good. End it.
        if std::thread::panicking() {
            eprintln!(
                "mproc cluster: rank {} panicked; aborting the MPI job (finalizing would wait for \
                 ranks that wait for this one)",
                self.rank
            );
            self.world.abort(70);
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts MPI (`MPI_Init_thread`, funneled) and learns the job: this rank, the number of ranks, and
    /// the node of each rank. Collective: every rank of the job must call it. Also checks that every rank
    /// runs the same executable, and shares rank 0's key for function references.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// println!("rank {} of {} on node {}", cluster.rank(), cluster.size(), cluster.node());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::Mpi`] if MPI was already started in this process (once per process, by MPI's rules),
    ///   or cannot give even funneled threading;
    /// - [`Error::RankExecutableMismatch`] if some rank runs a different executable file (every rank
    ///   gets it);
    /// - [`Error::Os`] if this process's executable cannot be read.
    pub fn init() -> Result<Cluster> {
        // A rank shares its node's cores with its pool's workers, which is oversubscription as MPI sees
        // it: a rank that waits by spinning takes a core from a worker (over TCP on 2 cores, plain MPI
        // messages ran at 0.5 GB/s spinning and 1.9 GB/s yielding). Open MPI yields when it knows the
        // node is oversubscribed, which it cannot know here; say so, unless the user chose.
        // `set_var` runs before MPI starts any thread; a program that reads its environment on other
        // threads while calling `init` should set this variable itself.
        const YIELD: &str = "OMPI_MCA_mpi_yield_when_idle";
        if std::env::var_os(YIELD).is_none() {
            std::env::set_var(YIELD, "1");
        }
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Funneled)
        else {
            return Err(Error::Mpi(
                "MPI was already initialized in this process (Cluster::init runs once)".into(),
            ));
        };
        if threading < Threading::Funneled {
            return Err(Error::Mpi(format!(
                "the MPI library offers only {threading:?} threading; mproc needs funneled"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);

        // Which ranks share a node: the lowest world rank of each shared-memory communicator names it.
        let node_comm = world.split_shared(world.rank());
        let mut leader = world.rank();
        node_comm.process_at_rank(0).broadcast_into(&mut leader);
        let mut leaders = vec![0i32; size];
        world.all_gather_into(&leader, &mut leaders[..]);
        let mut seen: Vec<i32> = Vec::new();
        let nodes = leaders
            .iter()
            .map(|l| {
                seen.iter().position(|s| s == l).unwrap_or_else(|| {
                    seen.push(*l);
                    seen.len() - 1
                })
            })
            .collect();

        // Same executable everywhere, or nobody starts. Every rank sees every identity, so every rank
        // reaches the same verdict without another message. The I/O error, if any, is reported after
        // the collective, so that no rank is left waiting in it.
        let own = identity::executable();
        let mine = own.as_ref().map_or([0; 2], |i| i.words());
        let mut flat = vec![0u64; 2 * size];
        world.all_gather_into(&mine[..], &mut flat[..]);
        let all: Vec<[u64; 2]> = flat.chunks_exact(2).map(|w| [w[0], w[1]]).collect();
        own?;
        // A rank that could not read its own file sent zeros: name it, not the first rank that
        // differs from it (found by review: rank 0's failure was blamed on rank 1).
        if let Some(r) = all.iter().position(|w| *w == [0; 2]) {
            return Err(Error::RankExecutableMismatch {
                rank: r,
                detail: format!("rank {r} could not read its own executable"),
            });
        }
        if let Some(r) = all.iter().position(|w| *w != all[0]) {
            return Err(Error::RankExecutableMismatch {
                rank: r,
                detail: format!(
                    "rank 0: {}; rank {r}: {}",
                    identity::ExecutableFingerprint::describe(all[0]),
                    identity::ExecutableFingerprint::describe(all[r])
                ),
            });
        }

        // The key for function references, from rank 0 (see the module docs on trust).
        let mut key = if rank == 0 {
            FnKey::random().to_bytes()
        } else {
            [0; 16]
        };
        world.process_at_rank(0).broadcast_into(&mut key[..]);

        Ok(Cluster {
            world,
            rank,
            size,
            nodes,
            key: FnKey::from_bytes(key),
            _funneled: PhantomData,
            _universe: universe,
        })
    }

    /// This process's rank, `0..size()`.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// if cluster.rank() == 0 {
    ///     println!("I drive");
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks in the job.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// assert!(cluster.size() >= 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn size(&self) -> usize {
        self.size
    }

    /// The node this rank runs on (nodes are numbered `0..nodes()` in order of their lowest rank).
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// assert_eq!(cluster.node(), cluster.node_of(cluster.rank()));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn node(&self) -> usize {
        self.nodes[self.rank]
    }

    /// The node `rank` runs on: ranks with the same node share memory (`MPI_COMM_TYPE_SHARED`).
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// let on_my_node = (0..cluster.size()).filter(|&r| cluster.node_of(r) == cluster.node()).count();
    /// println!("{on_my_node} ranks share this node");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `rank >= size()`.
    #[track_caller]
    pub fn node_of(&self, rank: usize) -> usize {
        assert!(
            rank < self.size,
            "rank {rank} is not in a job of {}",
            self.size
        );
        self.nodes[rank]
    }

    /// The number of distinct nodes in the job.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// assert!(cluster.nodes() <= cluster.size());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn nodes(&self) -> usize {
        self.nodes.iter().max().map_or(0, |m| m + 1)
    }

    /// Ranks on this rank's node (this one included).
    fn ranks_on_my_node(&self) -> usize {
        self.nodes.iter().filter(|&&n| n == self.node()).count()
    }

    /// Waits until every rank gets here (`MPI_Barrier`).
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// cluster.barrier();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Ends the whole job now (`MPI_Abort`) with exit code `code`, after printing `why` on stderr: what a
    /// rank does when it cannot go on and must not leave the others waiting for it.
    ///
    /// # Examples
    /// ```no_run
    /// let cluster = mproc::cluster::Cluster::init()?;
    /// if std::env::var_os("INPUT").is_none() {
    ///     cluster.abort(2, "INPUT is not set");
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn abort(&self, code: i32, why: &str) -> ! {
        eprintln!("mproc cluster: rank {}: {why}", self.rank);
        self.world.abort(code)
    }

    pub(crate) fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    pub(crate) fn key(&self) -> &FnKey {
        &self.key
    }
}
