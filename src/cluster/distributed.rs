//! Arrays already spread over the ranks: [`DistributedArray`] and the calls that use it.

use std::ops::Range;

use bytemuck::Pod;
use mpi::traits::CommunicatorCollectives;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::pool::ClusterPool;
use super::serve::{self, ArrayArgs, ArrayShare, ClusterKind};
use super::transport::TAG_SHARE;
use crate::error::{Error, Result};
use crate::heap::SharedArray;
use crate::pool::worker::{self, TaskKind};
use crate::process::fnref::LocalFn;

impl ClusterPool<'_> {
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
    /// [`Error::RankFailed`](crate::Error::RankFailed) on every rank if the ranks' parts have different element sizes (different
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
        self.store.keep_part(
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
    /// as task indices; [`Error::RankFailed`](crate::Error::RankFailed) if a rank's program dropped its part.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or `array` was distributed by another pool; as [`map`](Self::map).
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
    /// As [`map_chunks_distributed`](Self::map_chunks_distributed); [`Error::Encode`](crate::Error::Encode) if `params` cannot
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
        // Ids count per pool: an array of another pool has an id this pool may use for its own part,
        // and the serving ranks would compute over that part (found by review: wrong results, no
        // error). This rank's record must be this very part.
        let ours = self
            .store
            .parts
            .get(&array.id)
            .is_some_and(|k| k.handle == array.part.block_handle());
        assert!(
            ours,
            "mproc: this DistributedArray was distributed by another ClusterPool: use it with the pool \
             that made it"
        );
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
}

/// An array split across the ranks of a job, each rank holding its own part in its own shared memory:
/// made collectively by [`ClusterPool::distribute`], used by rank 0 in
/// [`map_chunks_distributed`](ClusterPool::map_chunks_distributed). Every rank keeps its value while
/// rank 0 uses the array: a rank that drops its part makes the calls that need it fail with
/// [`Error::RankFailed`](crate::Error::RankFailed), never read freed memory.
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
