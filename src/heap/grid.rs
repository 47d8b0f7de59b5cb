//! [`Grid`] and [`GridMut`]: a row-major 2-D view of a slice, for images and matrices in a
//! [`SharedArray`](super::SharedArray) or in the chunk a pool task receives.

use std::ops::{Index, IndexMut, Range};

/// The flat index of (`r`, `c`) in rows of `cols`, if `c < cols` and it does not overflow. Checked, so a
/// huge `r` is out of range in release builds too instead of wrapping onto another element.
fn flat(r: usize, c: usize, cols: usize) -> Option<usize> {
    (c < cols).then_some(())?;
    r.checked_mul(cols)?.checked_add(c)
}

/// The flat range of row `r` in rows of `cols`, if it does not overflow.
fn row_range(r: usize, cols: usize) -> Option<Range<usize>> {
    let start = r.checked_mul(cols)?;
    Some(start..start.checked_add(cols)?)
}

/// A read-only `rows × cols` view of a row-major slice.
///
/// # Examples
/// ```
/// let image = mproc::SharedArray::from_slice(&[1u8, 2, 3, 4, 5, 6])?;
/// let g = image.grid(3).expect("6 is a whole number of 3-wide rows");
/// assert_eq!((g.rows(), g.cols()), (2, 3));
/// assert_eq!(g[(1, 2)], 6);
/// assert_eq!(g.row(0), &[1, 2, 3]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Grid<'a, T> {
    data: &'a [T],
    cols: usize,
}

impl<'a, T> Grid<'a, T> {
    /// A view of `data` as rows of `cols` elements, or `None` unless `data.len()` is a whole number of
    /// rows (`cols` > 0).
    pub fn new(data: &'a [T], cols: usize) -> Option<Self> {
        (cols > 0 && data.len().is_multiple_of(cols)).then_some(Grid { data, cols })
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.cols
    }

    /// The number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`.
    ///
    /// # Panics
    /// If `r >= rows()`.
    #[track_caller]
    pub fn row(&self, r: usize) -> &'a [T] {
        row_range(r, self.cols)
            .and_then(|range| self.data.get(range))
            .expect("grid row out of range")
    }

    /// The element at (`r`, `c`), or `None` outside the grid.
    pub fn get(&self, r: usize, c: usize) -> Option<&'a T> {
        self.data.get(flat(r, c, self.cols)?)
    }

    /// The rows, top to bottom.
    pub fn iter_rows(&self) -> std::slice::ChunksExact<'a, T> {
        self.data.chunks_exact(self.cols)
    }
}

impl<T> Index<(usize, usize)> for Grid<'_, T> {
    type Output = T;
    #[track_caller]
    fn index(&self, (r, c): (usize, usize)) -> &T {
        self.get(r, c).expect("grid index out of range")
    }
}

/// A mutable `rows × cols` view of a row-major slice (see [`Grid`]).
#[derive(Debug)]
pub struct GridMut<'a, T> {
    data: &'a mut [T],
    cols: usize,
}

impl<'a, T> GridMut<'a, T> {
    /// A mutable view of `data` as rows of `cols` elements, or `None` unless `data.len()` is a whole
    /// number of rows (`cols` > 0).
    pub fn new(data: &'a mut [T], cols: usize) -> Option<Self> {
        (cols > 0 && data.len().is_multiple_of(cols)).then_some(GridMut { data, cols })
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.cols
    }

    /// The number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`, mutably.
    ///
    /// # Panics
    /// If `r >= rows()`.
    #[track_caller]
    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        let cols = self.cols;
        row_range(r, cols)
            .and_then(|range| self.data.get_mut(range))
            .expect("grid row out of range")
    }

    /// A read-only view of the same grid.
    pub fn as_grid(&self) -> Grid<'_, T> {
        Grid {
            data: self.data,
            cols: self.cols,
        }
    }
}

impl<T> Index<(usize, usize)> for GridMut<'_, T> {
    type Output = T;
    #[track_caller]
    fn index(&self, (r, c): (usize, usize)) -> &T {
        flat(r, c, self.cols)
            .and_then(|i| self.data.get(i))
            .expect("grid index out of range")
    }
}

impl<T> IndexMut<(usize, usize)> for GridMut<'_, T> {
    #[track_caller]
    fn index_mut(&mut self, (r, c): (usize, usize)) -> &mut T {
        let cols = self.cols;
        flat(r, c, cols)
            .and_then(|i| self.data.get_mut(i))
            .expect("grid index out of range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_indexing() {
        let mut v: Vec<u32> = (0..12).collect();
        assert!(Grid::new(&v, 5).is_none() && Grid::new(&v, 0).is_none());
        let g = Grid::new(&v, 4).unwrap();
        assert_eq!((g.rows(), g.cols(), g[(2, 1)]), (3, 4, 9));
        assert_eq!(g.get(0, 4), None);
        assert_eq!(g.iter_rows().count(), 3);
        let mut m = GridMut::new(&mut v, 3).unwrap();
        m[(3, 2)] = 100;
        m.row_mut(0).fill(7);
        assert_eq!(m.as_grid().row(3), &[9, 10, 100]);
        assert_eq!(&v[..3], &[7, 7, 7]);
    }

    /// Indices whose products overflow are out of range in release builds too (they used to wrap onto
    /// a real element there).
    #[test]
    fn huge_indices_do_not_wrap() {
        let mut v = vec![0u8; 8];
        let half = usize::MAX / 2 + 1; // half * 2 wraps to 0
        let g = Grid::new(&v, 2).unwrap();
        assert_eq!(g.get(half, 0), None);
        assert!(std::panic::catch_unwind(|| g.row(half).len()).is_err());
        let mut m = GridMut::new(&mut v, 2).unwrap();
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m[(half, 1)])).is_err());
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.row_mut(half).len()))
                .is_err()
        );
    }
}
