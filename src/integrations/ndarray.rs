//! `ndarray` in shared memory (feature `ndarray`): a [`SharedArray`] seen as an `ArrayView` of any
//! shape and back, a shared n-d array type ([`SharedNdArray`]), and pool maps over axis chunks that
//! hand each worker an `ArrayView` of its chunk, zero-copy.
//!
//! # Chunks
//! A chunk is a run of consecutive indices along the array's *outer axis in memory*: axis 0 of a
//! C-order (row-major) array, the last axis of a Fortran-order one. So a chunk is one contiguous range
//! of the shared buffer (only its offset travels) and a worker's view of it is an ordinary strided
//! `ArrayView` of the same dimensionality: the rows `start..end` of a C-order matrix, the columns
//! `start..end` of a Fortran-order one.
//!
//! # Functions
//! Workers are other processes, so the function handed to [`SharedNdArray::map_axis_chunks`] is a
//! function pointer, which travels to them signed as a pool task's does: a `fn` item or a closure that
//! captures nothing. A capturing closure does not coerce to one and fails to compile (a type mismatch:
//! "closures can only be coerced to `fn` types if they do not capture any variables"); see the
//! examples. Per-call parameters travel inside the data (or use [`Pool::map_chunks_with`]).
//!
//! # `Grid`
//! [`Grid`](crate::Grid) stays: it is the dependency-free 2-D view the default build offers (the
//! image example uses it); with this feature, `ArrayView2` does the same and more.

use ::ndarray::{ArrayBase, ArrayView, ArrayViewMut, Data, Dimension, IntoDimension, ShapeBuilder};
use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::heap::SharedArray;
use crate::pool::via::{chunk_via_fn, transform_via_fn, ChunkVia, TransformVia};
use crate::pool::Pool;

/// The memory order of an n-d array's elements.
///
/// # Examples
/// ```
/// use mproc::integrations::ndarray::{Order, SharedNdArray};
/// let f = SharedNdArray::<u8, _>::zeros((2, 3), Order::Fortran)?;
/// assert_eq!(f.view().strides(), &[1, 2]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Order {
    /// Row-major: the last index varies fastest (numpy's and ndarray's default).
    C,
    /// Column-major: the first index varies fastest.
    Fortran,
}

impl Order {
    /// `"C"` or `"Fortran"`.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::integrations::ndarray::Order::Fortran.name(), "Fortran");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Order::C => "C",
            Order::Fortran => "Fortran",
        }
    }
}

fn shape_err(e: impl std::fmt::Display) -> Error {
    Error::Shape(e.to_string())
}

/// A `D` of the given lengths, or `None` if `D` has a fixed number of axes and it is not `shape.len()`.
pub(crate) fn dim_of<D: Dimension>(shape: &[usize]) -> Option<D> {
    if D::NDIM.is_some_and(|n| n != shape.len()) {
        return None;
    }
    let mut d = D::zeros(shape.len());
    d.slice_mut().copy_from_slice(shape);
    Some(d)
}

/// A shape and order, as it travels to a worker with each chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NdLayout {
    pub(crate) shape: Vec<usize>,
    pub(crate) order: Order,
}

impl NdLayout {
    /// The axis chunks run along: the outer axis in memory (`None` for a 0-d array).
    pub(crate) fn axis(&self) -> Option<usize> {
        match self.order {
            _ if self.shape.is_empty() => None,
            Order::C => Some(0),
            Order::Fortran => Some(self.shape.len() - 1),
        }
    }

    /// Elements per index of the chunk axis (the product of the other lengths), checked.
    pub(crate) fn inner(&self) -> Option<usize> {
        let skip = self.axis();
        self.shape
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != skip)
            .try_fold(1usize, |acc, (_, &n)| acc.checked_mul(n))
    }

    /// The shape of a chunk of `len` elements: the chunk axis shortened to `len / inner`.
    fn chunk_shape(&self, len: usize) -> Result<Vec<usize>> {
        let mut shape = self.shape.clone();
        if let Some(axis) = self.axis() {
            let inner = self
                .inner()
                .ok_or_else(|| shape_err("the shape's size overflows"))?;
            if inner == 0 {
                // Another axis is empty, so the whole array has no elements: the only chunk there
                // can be is the whole (empty) array.
                return if len == 0 {
                    Ok(shape)
                } else {
                    Err(shape_err(format!("{len} elements in an array without any")))
                };
            }
            if !len.is_multiple_of(inner) {
                return Err(shape_err(format!(
                    "a chunk of {len} elements is not whole slices of {inner}"
                )));
            }
            shape[axis] = len / inner;
        }
        Ok(shape)
    }

    fn dim<D: Dimension>(&self, shape: &[usize]) -> Result<ShapeWithOrder<D>> {
        let d = dim_of::<D>(shape).ok_or_else(|| {
            shape_err(format!(
                "{} axes where the array type has {:?}",
                shape.len(),
                D::NDIM
            ))
        })?;
        Ok(ShapeWithOrder(d, self.order))
    }

    /// A view of `data` as a chunk of this layout (the whole array if `data` is all of it).
    pub(crate) fn view<'a, T, D: Dimension>(&self, data: &'a [T]) -> Result<ArrayView<'a, T, D>> {
        let sh = self.dim::<D>(&self.chunk_shape(data.len())?)?;
        ArrayView::from_shape(sh.0.set_f(sh.1 == Order::Fortran), data).map_err(shape_err)
    }

    /// A mutable view of `data` as a chunk of this layout.
    pub(crate) fn view_mut<'a, T, D: Dimension>(
        &self,
        data: &'a mut [T],
    ) -> Result<ArrayViewMut<'a, T, D>> {
        let sh = self.dim::<D>(&self.chunk_shape(data.len())?)?;
        ArrayViewMut::from_shape(sh.0.set_f(sh.1 == Order::Fortran), data).map_err(shape_err)
    }
}

struct ShapeWithOrder<D>(D, Order);

/// The number of elements of `dim`, if ndarray can view that many in that shape: the product of the
/// non-zero axis lengths must fit an `isize` too. A zero axis makes the size 0 whatever the others are,
/// and `SharedNdArray::view` then panicked on a shape `zeros` had accepted, `(0, usize::MAX)` (found by
/// review).
fn viewable_len<D: Dimension>(dim: &D) -> Option<usize> {
    let len = dim.size_checked()?;
    let nonzero = dim
        .slice()
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n.max(1)))?;
    (nonzero <= isize::MAX as usize).then_some(len)
}

/// The worker side of [`SharedNdArray::map_axis_chunks`]: the chunk as an `ArrayView` of the
/// layout the task carries.
struct AxisChunks<T, D, R>(std::marker::PhantomData<(T, D, R)>);

// SAFETY: `User` is a function-pointer type.
unsafe impl<T: Pod, D: Dimension, R> ChunkVia<T, NdLayout, R> for AxisChunks<T, D, R> {
    type User = fn(ArrayView<'_, T, D>) -> R;

    fn call(f: Self::User, layout: &NdLayout, chunk: &[T]) -> R {
        // A task's layout comes from a shared ring: a forged one fails this task (as a panic,
        // reported to the caller as `TaskPanicked`), it never makes a view outside `chunk`.
        let view = layout
            .view::<T, D>(chunk)
            .unwrap_or_else(|e| panic!("chunk does not fit its layout: {e}"));
        f(view)
    }
}

/// The worker side of [`SharedNdArray::transform_axis_chunks`]: input and output layouts travel as
/// the task's parameters.
struct AxisTransform<T, U, D>(std::marker::PhantomData<(T, U, D)>);

// SAFETY: `User` is a function-pointer type.
unsafe impl<T: Pod, U: Pod, D: Dimension> TransformVia<T, U, (NdLayout, NdLayout)>
    for AxisTransform<T, U, D>
{
    type User = fn(ArrayView<'_, T, D>, ArrayViewMut<'_, U, D>, usize);

    fn call(
        f: Self::User,
        (inl, outl): &(NdLayout, NdLayout),
        input: &[T],
        out: &mut [U],
        start: usize,
    ) {
        let input = inl
            .view::<T, D>(input)
            .unwrap_or_else(|e| panic!("input does not fit its layout: {e}"));
        let inner = outl.inner().filter(|&i| i > 0).unwrap_or(1);
        let out = outl
            .view_mut::<U, D>(out)
            .unwrap_or_else(|e| panic!("output chunk does not fit its layout: {e}"));
        f(input, out, start / inner)
    }
}

/// An n-dimensional array in shared memory: a [`SharedArray`] with a shape and a memory order.
///
/// # Examples
/// ```
/// use mproc::integrations::ndarray::{Order, SharedNdArray};
///
/// let a = ndarray::array![[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]];
/// let mut shared = SharedNdArray::from_ndarray(&a)?; // one copy into shared memory
/// shared.view_mut()[[1, 2]] = 60.0;
/// assert_eq!(shared.view().sum(), 75.0);
/// assert_eq!(shared.order(), Order::C);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct SharedNdArray<T: Pod, D: Dimension> {
    data: SharedArray<T>,
    dim: D,
    order: Order,
}

impl<T: Pod + std::fmt::Debug, D: Dimension> std::fmt::Debug for SharedNdArray<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedNdArray")
            .field("shape", &self.dim.slice())
            .field("order", &self.order)
            .field("data", &self.data)
            .finish()
    }
}

impl<T: Pod, D: Dimension> SharedNdArray<T, D> {
    /// An array of zeroes of `shape`, in `order`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the number of elements overflows; as [`SharedArray::zeroed`].
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    ///
    /// let m = SharedNdArray::<f32, _>::zeros((3, 4), Order::Fortran)?;
    /// assert_eq!(m.view().shape(), &[3, 4]);
    /// assert_eq!(m.view().strides(), &[1, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn zeros(shape: impl IntoDimension<Dim = D>, order: Order) -> Result<Self> {
        let dim = shape.into_dimension();
        let len = viewable_len(&dim)
            .ok_or_else(|| shape_err(format!("shape {:?} overflows", dim.slice())))?;
        Ok(SharedNdArray {
            data: SharedArray::zeroed(len)?,
            dim,
            order,
        })
    }

    /// A copy of `a` in shared memory (one pass). A C- or Fortran-contiguous array keeps its order;
    /// any other layout is copied in C order.
    ///
    /// # Errors
    /// As [`SharedArray::from_slice`].
    ///
    /// # Examples
    /// ```
    /// let f = ndarray::Array2::<u8>::zeros((2, 5).f());
    /// # use ndarray::ShapeBuilder;
    /// let shared = mproc::integrations::ndarray::SharedNdArray::from_ndarray(&f)?;
    /// assert_eq!(shared.order(), mproc::integrations::ndarray::Order::Fortran);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_ndarray<S: Data<Elem = T>>(a: &ArrayBase<S, D>) -> Result<Self> {
        let dim = a.raw_dim();
        if let Some(s) = a.as_slice() {
            return Self::from_shared(SharedArray::from_slice(s)?, dim, Order::C);
        }
        if a.view().reversed_axes().as_slice().is_some() {
            if let Some(s) = a.as_slice_memory_order() {
                return Self::from_shared(SharedArray::from_slice(s)?, dim, Order::Fortran);
            }
        }
        let mut data = SharedArray::zeroed(a.len())?;
        for (d, s) in data.iter_mut().zip(a.iter()) {
            *d = *s;
        }
        Self::from_shared(data, dim, Order::C)
    }

    /// `data` seen as an array of `shape` in `order` (no copy).
    ///
    /// # Errors
    /// [`Error::Shape`] unless `data.len()` is the number of elements of `shape`.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    ///
    /// let flat = mproc::SharedArray::from_slice(&[1u16, 2, 3, 4, 5, 6])?;
    /// let m = SharedNdArray::from_shared(flat, (2, 3), Order::C)?;
    /// assert_eq!(m.view()[[1, 0]], 4);
    /// let back: mproc::SharedArray<u16> = m.into_shared();
    /// assert_eq!(back.len(), 6);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_shared(
        data: SharedArray<T>,
        shape: impl IntoDimension<Dim = D>,
        order: Order,
    ) -> Result<Self> {
        let dim = shape.into_dimension();
        if viewable_len(&dim) != Some(data.len()) {
            return Err(shape_err(format!(
                "{} elements cannot have shape {:?}",
                data.len(),
                dim.slice()
            )));
        }
        Ok(SharedNdArray { data, dim, order })
    }

    /// The flat storage, in memory order.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::integrations::ndarray::SharedNdArray::from_ndarray(&ndarray::array![[1u8, 2], [3, 4]])?;
    /// assert_eq!(&m.as_shared()[..], &[1, 2, 3, 4]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_shared(&self) -> &SharedArray<T> {
        &self.data
    }

    /// The flat storage, giving up the shape.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::integrations::ndarray::SharedNdArray::from_ndarray(&ndarray::array![1u8, 2])?;
    /// assert_eq!(m.into_shared().len(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn into_shared(self) -> SharedArray<T> {
        self.data
    }

    /// The memory order.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    /// assert_eq!(SharedNdArray::<u8, _>::zeros(4, Order::C)?.order(), Order::C);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn order(&self) -> Order {
        self.order
    }

    /// The lengths of the axes.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    /// assert_eq!(SharedNdArray::<u8, _>::zeros((2, 7), Order::C)?.shape(), &[2, 7]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        self.dim.slice()
    }

    fn layout(&self) -> NdLayout {
        NdLayout {
            shape: self.dim.slice().to_vec(),
            order: self.order,
        }
    }

    /// A view of the whole array.
    ///
    /// # Examples
    /// ```
    /// let m = mproc::integrations::ndarray::SharedNdArray::from_ndarray(&ndarray::array![[1, 2], [3, 4]])?;
    /// assert_eq!(m.view().column(1).sum(), 6);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn view(&self) -> ArrayView<'_, T, D> {
        ArrayView::from_shape(
            self.dim.clone().set_f(self.order == Order::Fortran),
            &self.data,
        )
        .expect("the length was checked against the shape when the array was made")
    }

    /// A mutable view of the whole array.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    /// let mut m = SharedNdArray::<i32, _>::zeros((2, 2), Order::C)?;
    /// m.view_mut().fill(3);
    /// assert_eq!(m.view().sum(), 12);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        let sh = self.dim.clone().set_f(self.order == Order::Fortran);
        ArrayViewMut::from_shape(sh, &mut self.data)
            .expect("the length was checked against the shape when the array was made")
    }

    /// Index range of chunk-axis indices a task covers, in elements: `chunk` indices, capped to the
    /// whole array (a huge `chunk` is one task, not an overflow). `None` only for an array without
    /// elements, which has no chunks.
    fn chunk_elems(&self, chunk: usize) -> Option<usize> {
        let inner = self.layout().inner().filter(|&i| i > 0)?;
        // The length is a whole number of `inner`s (checked when the array was made), so the
        // product is at most the length.
        let outer = self.data.len() / inner;
        inner.checked_mul(chunk.min(outer)).filter(|&e| e > 0)
    }

    /// `f` on consecutive chunks of `chunk` indices along the outer axis in memory (rows of a C-order
    /// matrix, columns of a Fortran-order one; see the [module docs](self)), one result per chunk, in
    /// order. Each worker gets an `ArrayView` of its chunk, made over the shared memory in place:
    /// only (region, offset, range) and the shape travel. A `chunk` past the axis's length
    /// (`usize::MAX`, say) is one task over the whole array; an array without elements has no chunks.
    ///
    /// `f` is a function pointer: a `fn` item or a closure that captures nothing (a worker cannot
    /// have what a closure captured here).
    ///
    /// # Errors
    /// As [`Pool::map_chunks`].
    ///
    /// # Panics
    /// If `chunk` is 0.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::SharedNdArray;
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let m = SharedNdArray::from_ndarray(&ndarray::Array2::<f64>::ones((7, 3)))?;
    /// // Two rows per task; each worker sees an `ArrayView2` of its rows.
    /// let sums = m.map_axis_chunks(&pool, 2, |rows: ndarray::ArrayView2<f64>| rows.sum())?;
    /// assert_eq!(sums, [6.0, 6.0, 6.0, 3.0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// A closure that captures is refused when the program is built:
    /// ```compile_fail
    /// # use mproc::integrations::ndarray::SharedNdArray;
    /// # let pool = mproc::Pool::new()?;
    /// # let m = SharedNdArray::from_ndarray(&ndarray::Array2::<f64>::ones((7, 3)))?;
    /// let scale = 2.0;
    /// m.map_axis_chunks(&pool, 2, move |rows: ndarray::ArrayView2<f64>| rows.sum() * scale)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn map_axis_chunks<R>(
        &self,
        pool: &Pool,
        chunk: usize,
        f: fn(ArrayView<'_, T, D>) -> R,
    ) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        assert!(chunk > 0, "chunk must be at least 1");
        let task = chunk_via_fn::<T, NdLayout, R, AxisChunks<T, D, R>>(f);
        if self.data.is_empty() {
            return Ok(Vec::new());
        }
        let elems = self
            .chunk_elems(chunk)
            .ok_or_else(|| shape_err("the shape's size overflows"))?;
        pool.chunk_tasks(&self.data, elems, &self.layout(), task)
    }

    /// Fills `output` in parallel, chunk by chunk along its outer axis in memory:
    /// `f(input, out_chunk, first)` where `input` is a view of the whole input (a stencil may read
    /// around its chunk), `out_chunk` a mutable view of the chunk and `first` the chunk's first index
    /// along that axis. `f` must be a `fn` item or a closure that captures nothing.
    ///
    /// # Errors
    /// As [`Pool::transform`].
    ///
    /// # Panics
    /// If `chunk` is 0.
    ///
    /// # Examples
    /// ```
    /// use mproc::integrations::ndarray::{Order, SharedNdArray};
    /// use ndarray::{ArrayView2, ArrayViewMut2, Axis};
    ///
    /// // Each output row is the input row scaled by its index.
    /// fn scale_rows(input: ArrayView2<f32>, mut out: ArrayViewMut2<f32>, first: usize) {
    ///     for (k, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
    ///         let r = first + k;
    ///         row.assign(&input.row(r).mapv(|x| x * r as f32));
    ///     }
    /// }
    ///
    /// let pool = mproc::Pool::builder().workers(2).build()?;
    /// let input = SharedNdArray::from_ndarray(&ndarray::Array2::<f32>::ones((5, 4)))?;
    /// let mut out = SharedNdArray::zeros((5, 4), Order::C)?;
    /// input.transform_axis_chunks(&pool, &mut out, 2, scale_rows)?;
    /// assert_eq!(out.view().sum(), 4.0 * (0 + 1 + 2 + 3 + 4) as f32);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[track_caller]
    pub fn transform_axis_chunks<U: Pod>(
        &self,
        pool: &Pool,
        output: &mut SharedNdArray<U, D>,
        chunk: usize,
        f: fn(ArrayView<'_, T, D>, ArrayViewMut<'_, U, D>, usize),
    ) -> Result<()> {
        assert!(chunk > 0, "chunk must be at least 1");
        let task = transform_via_fn::<T, U, (NdLayout, NdLayout), AxisTransform<T, U, D>>(f);
        if output.data.is_empty() {
            return Ok(());
        }
        let elems = output
            .chunk_elems(chunk)
            .ok_or_else(|| shape_err("the shape's size overflows"))?;
        let layouts = (self.layout(), output.layout());
        pool.transform_tasks(&self.data, &mut output.data, elems, &layouts, task)
    }
}

/// Checks that a view of `elems` elements covers an array of `len`: ndarray accepts a shape of fewer
/// elements than the slice (a view of its start), which would silently leave the rest out.
fn whole(elems: usize, len: usize) -> Result<()> {
    if elems != len {
        return Err(shape_err(format!(
            "a shape of {elems} elements for an array of {len}"
        )));
    }
    Ok(())
}

impl<T: Pod> SharedArray<T> {
    /// The elements as an n-d view of `shape` (use `shape.f()` for Fortran order), no copy.
    ///
    /// # Errors
    /// [`Error::Shape`] unless the length is the number of elements of `shape`.
    ///
    /// # Examples
    /// ```
    /// use ndarray::ShapeBuilder;
    ///
    /// let a = mproc::SharedArray::from_slice(&[1u32, 2, 3, 4, 5, 6])?;
    /// let c = a.as_array((2, 3))?;
    /// assert_eq!(c[[1, 0]], 4);
    /// let f = a.as_array((2, 3).f())?;
    /// assert_eq!(f[[1, 0]], 2);
    /// assert!(a.as_array((4, 4)).is_err());
    /// assert!(a.as_array((2, 2)).is_err(), "a shape must cover every element");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_array<D, Sh>(&self, shape: Sh) -> Result<ArrayView<'_, T, D>>
    where
        D: Dimension,
        Sh: Into<::ndarray::StrideShape<D>>,
    {
        let view = ArrayView::from_shape(shape, self).map_err(shape_err)?;
        whole(view.len(), self.len())?;
        Ok(view)
    }

    /// The elements as a mutable n-d view of `shape`, no copy.
    ///
    /// # Errors
    /// [`Error::Shape`] unless the length is the number of elements of `shape`.
    ///
    /// # Examples
    /// ```
    /// let mut a = mproc::SharedArray::<u8>::zeroed(6)?;
    /// a.as_array_mut((3, 2))?.row_mut(2).fill(9);
    /// assert_eq!(&a[..], &[0, 0, 0, 0, 9, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_array_mut<D, Sh>(&mut self, shape: Sh) -> Result<ArrayViewMut<'_, T, D>>
    where
        D: Dimension,
        Sh: Into<::ndarray::StrideShape<D>>,
    {
        let len = self.len();
        let view = ArrayViewMut::from_shape(shape, self).map_err(shape_err)?;
        whole(view.len(), len)?;
        Ok(view)
    }

    /// A copy of `a`'s elements in logical (C) order; see [`SharedNdArray::from_ndarray`] to keep
    /// the shape and a Fortran order.
    ///
    /// # Errors
    /// As [`SharedArray::from_slice`].
    ///
    /// # Examples
    /// ```
    /// let a = mproc::SharedArray::from_ndarray(&ndarray::array![[1i64, 2], [3, 4]].t())?;
    /// assert_eq!(&a[..], &[1, 3, 2, 4]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_ndarray<S: Data<Elem = T>, D: Dimension>(a: &ArrayBase<S, D>) -> Result<Self> {
        if let Some(s) = a.as_slice() {
            return SharedArray::from_slice(s);
        }
        let mut data = SharedArray::zeroed(a.len())?;
        for (d, s) in data.iter_mut().zip(a.iter()) {
            *d = *s;
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use ::ndarray::{Array, Array2, ArrayView2, ArrayViewMut2, Axis, Ix2, Ix3, IxDyn};

    use super::*;

    /// Found by review: a zero axis makes the size 0 whatever the others are, so `zeros` accepted
    /// `(0, usize::MAX)`, and `view` panicked on it: ndarray also needs the other axes' product to fit
    /// an `isize`.
    #[test]
    fn a_shape_ndarray_cannot_view_is_refused() {
        let bad = SharedNdArray::<u8, _>::zeros((0, usize::MAX), Order::C);
        assert!(matches!(bad, Err(Error::Shape { .. })), "{bad:?}");
        let empty = SharedArray::<u8>::zeroed(0).unwrap();
        let bad = SharedNdArray::from_shared(empty, (usize::MAX, 0), Order::Fortran);
        assert!(matches!(bad, Err(Error::Shape { .. })), "{bad:?}");
        let ok = SharedNdArray::<u8, _>::zeros((0, 5), Order::C).unwrap();
        assert_eq!(ok.view().shape(), &[0, 5]);
    }

    fn col_sums(rows: ArrayView2<'_, i64>) -> Vec<i64> {
        rows.sum_axis(Axis(0)).to_vec()
    }

    fn row_sums(v: ArrayView2<'_, i64>) -> Vec<i64> {
        v.sum_axis(Axis(1)).to_vec()
    }

    fn sample(shape: (usize, usize), fortran: bool) -> Array2<i64> {
        let n = shape.0 * shape.1;
        let a = Array::from_shape_vec(shape, (0..n as i64).map(|x| x * 7 % 13).collect()).unwrap();
        if fortran {
            let mut f = Array2::zeros(shape.f());
            f.assign(&a);
            f
        } else {
            a
        }
    }

    #[test]
    fn round_trips_keep_values_and_order() {
        for fortran in [false, true] {
            for shape in [(0, 0), (0, 5), (5, 0), (1, 1), (7, 13), (13, 7)] {
                let a = sample(shape, fortran);
                let s = SharedNdArray::from_ndarray(&a).unwrap();
                assert_eq!(s.view(), a.view(), "{shape:?} fortran={fortran}");
                let expected = if fortran && shape.0 > 1 && shape.1 > 1 {
                    Order::Fortran
                } else {
                    s.order()
                };
                assert_eq!(s.order(), expected);
                let flat = SharedArray::from_ndarray(&a).unwrap();
                assert_eq!(flat.to_vec(), a.iter().copied().collect::<Vec<_>>());
            }
        }
        // Neither C nor F contiguous: copied in logical order.
        let a = sample((6, 4), false);
        let every_other = a.slice(::ndarray::s![..;2, ..]);
        let s = SharedNdArray::from_ndarray(&every_other).unwrap();
        assert_eq!((s.view(), s.order()), (every_other, Order::C));
    }

    #[test]
    fn views_of_a_shared_array_check_the_shape() {
        let mut a = SharedArray::from_slice(&[0u8; 24]).unwrap();
        assert!(a.as_array::<Ix3, _>((2, 3, 4)).is_ok());
        assert!(matches!(a.as_array::<Ix2, _>((5, 5)), Err(Error::Shape(_))));
        a.as_array_mut::<IxDyn, _>(IxDyn(&[4, 6])).unwrap().fill(1);
        assert_eq!(a.iter().map(|&x| u32::from(x)).sum::<u32>(), 24);
        let m = SharedNdArray::from_shared(a, (4, 6), Order::C).unwrap();
        assert!(SharedNdArray::<u8, _>::from_shared(m.into_shared(), (5, 5), Order::C).is_err());
    }

    #[test]
    fn layouts_refuse_what_does_not_fit() {
        let l = NdLayout {
            shape: vec![4, 3],
            order: Order::C,
        };
        assert_eq!(l.inner(), Some(3));
        assert!(l.view::<u8, Ix2>(&[0; 6]).is_ok());
        assert!(l.view::<u8, Ix2>(&[0; 7]).is_err(), "not whole rows");
        assert!(l.view::<u8, Ix3>(&[0; 6]).is_err(), "wrong number of axes");
        let empty_cols = NdLayout {
            shape: vec![3, 0],
            order: Order::C,
        };
        assert_eq!(empty_cols.view::<u8, Ix2>(&[]).unwrap().shape(), &[3, 0]);
        assert!(empty_cols.view::<u8, Ix2>(&[1]).is_err());
        let huge = NdLayout {
            shape: vec![2, usize::MAX, 3],
            order: Order::Fortran,
        };
        assert_eq!(huge.inner(), None);
        assert!(huge.view::<u8, IxDyn>(&[0; 6]).is_err());
    }

    /// Chunked maps give what a sequential pass gives, for C and Fortran order, prime and empty
    /// shapes, and chunk sizes that do and do not divide the chunk axis.
    #[test]
    fn chunked_maps_equal_a_sequential_pass() {
        let pool = Pool::builder().workers(2).build().unwrap();
        for shape in [(0, 3), (3, 0), (1, 1), (7, 13), (13, 7), (31, 2)] {
            for chunk in [1, 2, 5, 64] {
                let c = SharedNdArray::from_ndarray(&sample(shape, false)).unwrap();
                let got: Vec<i64> = c
                    .map_axis_chunks(&pool, chunk, col_sums)
                    .unwrap()
                    .into_iter()
                    .fold(vec![0; shape.1], |acc, part| {
                        acc.iter().zip(&part).map(|(a, b)| a + b).collect()
                    });
                let want = if shape.0 * shape.1 == 0 {
                    vec![0; shape.1]
                } else {
                    sample(shape, false).sum_axis(Axis(0)).to_vec()
                };
                assert_eq!(got, want, "C {shape:?} chunk {chunk}");

                // Fortran order: chunks are column ranges, so per-row sums add up across chunks.
                let f = SharedNdArray::from_ndarray(&sample(shape, true)).unwrap();
                if f.order() == Order::Fortran {
                    let parts = f.map_axis_chunks(&pool, chunk, row_sums).unwrap();
                    assert_eq!(parts.len(), shape.1.div_ceil(chunk));
                    let got = parts.into_iter().fold(vec![0; shape.0], |acc, part| {
                        acc.iter()
                            .zip(&part)
                            .map(|(a, b)| a + b)
                            .collect::<Vec<_>>()
                    });
                    assert_eq!(got, sample(shape, true).sum_axis(Axis(1)).to_vec());
                }
            }
        }
    }

    /// A chunk past the outer axis's length (up to `usize::MAX`, whose size in elements overflows)
    /// is one chunk of the whole array, in both orders and for both calls (it was a `Shape` error).
    #[test]
    fn huge_chunk_sizes_are_capped_to_the_whole_array() {
        let pool = Pool::builder().workers(1).build().unwrap();
        let a = sample((7, 13), false);
        let c = SharedNdArray::from_ndarray(&a).unwrap();
        let f = SharedNdArray::from_ndarray(&sample((7, 13), true)).unwrap();
        assert_eq!(f.order(), Order::Fortran);
        assert_eq!(c.chunk_elems(7), Some(91), "7 rows");
        for chunk in [13, 14, usize::MAX / 2, usize::MAX] {
            assert_eq!(c.chunk_elems(chunk), Some(91), "C, chunk {chunk}");
            assert_eq!(f.chunk_elems(chunk), Some(91), "Fortran, chunk {chunk}");
        }
        assert_eq!(c.chunk_elems(2), Some(26));
        assert_eq!(
            c.map_axis_chunks(&pool, usize::MAX, col_sums).unwrap(),
            [a.sum_axis(Axis(0)).to_vec()]
        );
        assert_eq!(
            f.map_axis_chunks(&pool, usize::MAX, row_sums).unwrap(),
            [a.sum_axis(Axis(1)).to_vec()]
        );
        let mut out = SharedNdArray::zeros((7, 13), Order::C).unwrap();
        c.transform_axis_chunks(&pool, &mut out, usize::MAX, negate_and_index)
            .unwrap();
        let mut want = Array2::zeros((7, 13));
        negate_and_index(a.view(), want.view_mut(), 0);
        assert_eq!(out.view(), want.view());
    }

    fn negate_and_index(input: ArrayView2<'_, i64>, mut out: ArrayViewMut2<'_, i64>, first: usize) {
        for (k, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
            let r = first + k;
            row.assign(&input.row(r).mapv(|x| -x + r as i64));
        }
    }

    #[test]
    fn transforms_equal_a_sequential_pass() {
        let pool = Pool::builder().workers(2).build().unwrap();
        for shape in [(0, 4), (1, 1), (11, 5)] {
            let a = sample(shape, false);
            let input = SharedNdArray::from_ndarray(&a).unwrap();
            let mut out = SharedNdArray::zeros(shape, Order::C).unwrap();
            input
                .transform_axis_chunks(&pool, &mut out, 3, negate_and_index)
                .unwrap();
            let mut want = Array2::zeros(shape);
            negate_and_index(a.view(), want.view_mut(), 0);
            assert_eq!(out.view(), want.view());
        }
    }
}
