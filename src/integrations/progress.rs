//! Progress bars for the pool's calls, drawn by `indicatif` (feature `progress`).
//!
//! ```
//! fn slow_square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let bar = indicatif::ProgressBar::hidden(); // `ProgressBar::new(0)` draws on stderr
//! let pool = mproc::Pool::builder().workers(2).progress_bar(bar.clone()).build()?;
//! pool.map_chunksize(slow_square, 0..1000u64, 50)?;
//! assert_eq!((bar.position(), bar.length()), (20, Some(20))); // 20 tasks of 50 items
//! # Ok::<(), mproc::Error>(())
//! ```

use indicatif::ProgressBar;

use crate::pool::PoolBuilder;

impl PoolBuilder {
    /// Shows the progress of every call of the pool on `bar`, in tasks (chunks): its length is set to
    /// the call's number of tasks and its position to the tasks done, from the thread that waits for
    /// the results (see [`on_progress`](PoolBuilder::on_progress), which this is built on). The bar is
    /// reset when a new call starts and finished when a call's last task is done.
    ///
    /// # Examples
    /// ```
    /// let pool = mproc::Pool::builder()
    ///     .progress_bar(indicatif::ProgressBar::new(0))
    ///     .build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn progress_bar(self, bar: ProgressBar) -> Self {
        self.on_progress(move |done, total| {
            if done == 0 {
                bar.reset();
            }
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if done == total {
                bar.finish();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(x: u32) -> u32 {
        x + 1
    }

    #[test]
    fn the_bar_follows_every_call() {
        let bar = ProgressBar::hidden();
        let pool = PoolBuilder::default()
            .workers(2)
            .progress_bar(bar.clone())
            .build()
            .unwrap();
        pool.map_chunksize(inc, 0..30u32, 3).unwrap();
        assert_eq!((bar.position(), bar.length()), (10, Some(10)));
        assert!(bar.is_finished());
        pool.map_chunksize(inc, 0..4u32, 1).unwrap();
        assert_eq!((bar.position(), bar.length()), (4, Some(4)));
    }
}
