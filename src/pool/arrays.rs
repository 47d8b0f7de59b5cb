//! The map family over shared arrays, lent by offset: `map_chunks`, `transform` and their `_with` forms.

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::results::AsyncResult;
use super::wire::Payload;
use super::worker::{self, TaskKind};
use super::Pool;
use crate::error::Result;
use crate::heap::SharedArray;
use crate::process::fnref::LocalFn;

impl Pool {
    /// `f` on consecutive chunks of `chunk_len` elements of `array` (the last may be shorter), one result
    /// per chunk, in order. The elements are read in place by the workers: only (region, offset, range)
    /// travels.
    ///
    /// # Examples
    /// ```
    /// fn total(chunk: &[f64]) -> f64 {
    ///     chunk.iter().sum()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let data = mproc::SharedArray::from_slice(&vec![0.5f64; 1000])?;
    /// let parts = pool.map_chunks(&data, 300, total)?; // chunks of 300, 300, 300 and 100
    /// assert_eq!(parts, [150.0, 150.0, 150.0, 50.0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map), with chunk indices as task indices.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or `f` is not a function of the main executable.
    #[track_caller]
    pub fn map_chunks<T, R>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        f: fn(&[T]) -> R,
    ) -> Result<Vec<R>>
    where
        T: Pod,
        R: Serialize + DeserializeOwned,
    {
        self.chunk_tasks(array, chunk_len, &(), worker::chunk_fn(f))
    }

    /// Like [`map_chunks`](Pool::map_chunks), with parameters every task receives (an image's width, a
    /// histogram's range): `f(&params, chunk)`. The parameters travel serialized, once per task.
    ///
    /// # Examples
    /// ```
    /// fn count_in_range(&(lo, hi): &(f64, f64), chunk: &[f64]) -> usize {
    ///     chunk.iter().filter(|&&x| lo <= x && x < hi).count()
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let data = mproc::SharedArray::from_slice(&(0..1000).map(f64::from).collect::<Vec<_>>())?;
    /// let counts = pool.map_chunks_with(&data, 300, &(100.0, 200.0), count_in_range)?;
    /// assert_eq!(counts.iter().sum::<usize>(), 100);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_chunks`](Pool::map_chunks); [`Error::Encode`](crate::Error::Encode) if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`map_chunks`](Pool::map_chunks).
    #[track_caller]
    pub fn map_chunks_with<T, P, R>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T]) -> R,
    ) -> Result<Vec<R>>
    where
        T: Pod,
        P: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.chunk_tasks(array, chunk_len, params, worker::chunk_with_fn(f))
    }

    /// One task per chunk of `array`, each carrying its part and `extra`; waits for all of them.
    #[track_caller]
    pub(crate) fn chunk_tasks<T: Pod, X: Serialize, R: DeserializeOwned>(
        &self,
        array: &SharedArray<T>,
        chunk_len: usize,
        extra: &X,
        func: LocalFn<TaskKind>,
    ) -> Result<Vec<R>> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let block = array.block_handle();
        let payloads = ranges(array.len(), chunk_len)
            .map(|(start, end)| {
                let part = worker::ArrayPart {
                    block: block.clone(),
                    start: start as u64,
                    end: end as u64,
                };
                Payload::encode(&(&part, extra))
            })
            .collect::<Result<Vec<_>>>()?;
        let lens = vec![1; payloads.len()];
        let job = self.submit(func, payloads)?;
        // `array` stays borrowed until every task has finished: `get` waits for all of them.
        AsyncResult::all_items(job, lens).get()
    }

    /// Fills `output` in parallel: each task calls `f(input, out_chunk, start)` where `out_chunk` is
    /// `output[start..start + chunk_len]` (the last may be shorter) and `input` is the whole input, so a
    /// task may read around its own range (a blur reading neighbouring rows). Nothing but handles travels.
    ///
    /// # Examples
    /// ```
    /// // A moving average over three neighbours, clamped at the ends.
    /// fn smooth(input: &[f32], out: &mut [f32], start: usize) {
    ///     for (k, o) in out.iter_mut().enumerate() {
    ///         let i = start + k;
    ///         let (lo, hi) = (i.saturating_sub(1), (i + 1).min(input.len() - 1));
    ///         *o = input[lo..=hi].iter().sum::<f32>() / (hi - lo + 1) as f32;
    ///     }
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let signal = mproc::SharedArray::from_slice(&[0.0f32, 3.0, 0.0, 3.0, 0.0])?;
    /// let mut smoothed = mproc::SharedArray::<f32>::zeroed(5)?;
    /// pool.transform(&signal, &mut smoothed, 2, smooth)?;
    /// assert_eq!(&smoothed[..], &[1.5, 1.0, 2.0, 1.0, 1.5]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map), with chunk indices as task indices. Chunks whose task failed may be partly
    /// written.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or `f` is not a function of the main executable.
    #[track_caller]
    pub fn transform<T: Pod, U: Pod>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        f: fn(&[T], &mut [U], usize),
    ) -> Result<()> {
        self.transform_tasks(input, output, chunk_len, &(), worker::transform_fn(f))
    }

    /// Like [`transform`](Pool::transform), with parameters every task receives:
    /// `f(&params, input, out_chunk, start)` (say, the image's width and height for a blur over rows).
    ///
    /// # Examples
    /// ```
    /// // Each output element is the sum of its row in a `width`-wide matrix.
    /// fn row_sums(&width: &usize, input: &[u32], out: &mut [u32], start: usize) {
    ///     for (k, o) in out.iter_mut().enumerate() {
    ///         let row = start + k;
    ///         *o = input[row * width..(row + 1) * width].iter().sum();
    ///     }
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let (width, rows) = (4, 10);
    /// let matrix = mproc::SharedArray::from_slice(&vec![1u32; width * rows])?;
    /// let mut sums = mproc::SharedArray::<u32>::zeroed(rows)?;
    /// pool.transform_with(&matrix, &mut sums, 3, &width, row_sums)?;
    /// assert!(sums.iter().all(|&s| s == 4));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`transform`](Pool::transform); [`Error::Encode`](crate::Error::Encode) if `params` cannot be serialized.
    ///
    /// # Panics
    /// As [`transform`](Pool::transform).
    #[track_caller]
    pub fn transform_with<T: Pod, U: Pod, P: Serialize + DeserializeOwned>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        params: &P,
        f: fn(&P, &[T], &mut [U], usize),
    ) -> Result<()> {
        self.transform_tasks(
            input,
            output,
            chunk_len,
            params,
            worker::transform_with_fn(f),
        )
    }

    /// One task per output chunk, each carrying the whole input, its output part and `extra`.
    #[track_caller]
    pub(crate) fn transform_tasks<T: Pod, U: Pod, X: Serialize>(
        &self,
        input: &SharedArray<T>,
        output: &mut SharedArray<U>,
        chunk_len: usize,
        extra: &X,
        func: LocalFn<TaskKind>,
    ) -> Result<()> {
        assert!(chunk_len > 0, "chunk_len must be at least 1");
        let whole = worker::ArrayPart {
            block: input.block_handle(),
            start: 0,
            end: input.len() as u64,
        };
        let out = output.block_handle();
        let payloads = ranges(output.len(), chunk_len)
            .map(|(start, end)| {
                let part = worker::ArrayPart {
                    block: out.clone(),
                    start: start as u64,
                    end: end as u64,
                };
                Payload::encode(&(&whole, &part, extra))
            })
            .collect::<Result<Vec<_>>>()?;
        let lens = vec![1; payloads.len()];
        let job = self.submit(func, payloads)?;
        // Both borrows stay held until every task has finished: `get` waits for all of them.
        AsyncResult::<Vec<()>>::all_items(job, lens).get().map(drop)
    }
}

/// The element ranges of the chunks of `chunk` elements (the last may be shorter) of an array of
/// `len`. `chunk` is the caller's: the end of the last chunk may lie past `usize::MAX` (found by
/// review: `(i + 1) * chunk` overflowed, a panic in a debug build, for a zero-sized element type whose
/// arrays may be `usize::MAX` long), so it is clamped to `len` without being computed.
fn ranges(len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    // `i < len.div_ceil(chunk)`, so `i * chunk < len`: the start never overflows.
    (0..len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        (start, start.saturating_add(chunk).min(len))
    })
}

#[cfg(test)]
mod tests {
    use super::ranges;

    /// The chunks cover `0..len` in order, each `chunk` long but the last, for lengths and chunk sizes
    /// up to `usize::MAX` (an array of a zero-sized type can be that long).
    #[test]
    fn ranges_cover_the_array_without_overflow() {
        let huge = usize::MAX;
        let cases = [
            (0, 1),
            (10, 3),
            (10, 10),
            (10, huge),
            (huge, huge),
            (huge, huge / 2 + 1),
            (huge, huge / 3 + 1),
        ];
        for (len, chunk) in cases {
            let got: Vec<_> = ranges(len, chunk).collect();
            assert_eq!(got.len(), len.div_ceil(chunk), "{len}/{chunk}");
            let mut next = 0;
            for (k, &(start, end)) in got.iter().enumerate() {
                assert_eq!(start, next, "{len}/{chunk}: chunk {k}");
                assert!(start < end && end <= len, "{len}/{chunk}: chunk {k}");
                assert!(
                    end - start == chunk || end == len,
                    "{len}/{chunk}: chunk {k}"
                );
                next = end;
            }
            assert_eq!(next, len, "{len}/{chunk}");
        }
    }
}
