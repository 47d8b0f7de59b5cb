//! The array calls of [`ClusterPool`]: `map_chunks` and `transform` over rank 0's [`SharedArray`](crate::SharedArray).

use std::ops::Range;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::pool::{ClusterPool, FirstFailure};
use super::serve::{self, ArrayArgs, ArrayShare, ClusterKind, TransformReply, TransformShare};
use super::transport::{self, MAX_MESSAGE, PIECE, TAG_REPLY, TAG_SHARE};
use crate::error::Result;
use crate::heap::SharedArray;
use crate::pool::worker::{self, TaskKind};
use crate::process::fnref::LocalFn;

impl ClusterPool<'_> {
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
    /// As [`map_chunks`](Self::map_chunks); [`Error::Encode`](crate::Error::Encode) if `params` cannot be serialized.
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
                // Saturating, as the receiving rank computes it (`serve.rs`): both must cut the same
                // pieces, and a chunk longer than the array is legal (it overflowed in debug builds).
                let unit = chunk_len.saturating_mul(std::mem::size_of::<T>());
                self.traffic
                    .send_array(world, r, bytemuck::cast_slice(part), unit);
            }
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
    /// This is [`Pool::transform`](crate::Pool::transform)'s contract with the rank's block in place of the whole array: a
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
    /// written; on a rank of another node, a failed share is not written at all.
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
    /// As [`transform`](Self::transform); [`Error::Encode`](crate::Error::Encode) if `params` cannot be serialized.
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
