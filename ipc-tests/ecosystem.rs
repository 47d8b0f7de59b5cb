//! The ecosystem integrations across processes (issue 14), each part behind its cargo feature so that
//! the default `cargo test` is unaffected: awaited results whose worker is killed (`async`), `.npy`
//! files generated here and read in place by workers in C and Fortran order (`npy`), and a worker
//! dying inside an n-d chunked map (`ndarray`).
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use libtest_mimic::Trial;

use crate::common::{self, Role};
#[allow(unused_imports)]
use crate::pool::BOUND;

pub const ROLES: &[Role] = &[
    #[cfg(feature = "npy")]
    ("ecosystem_npy_relative_path", npy::relative_path_role),
];

pub fn tests() -> Vec<Trial> {
    #[allow(unused_variables)]
    let t = |name: &str, f: fn()| common::trial("ecosystem", name, f);
    #[allow(unused_mut)]
    let mut trials = Vec::new();
    #[cfg(feature = "async")]
    trials.extend([
        t(
            "awaited_result_of_a_killed_worker_is_worker_died_under_tokio",
            awaited::under_tokio,
        ),
        t(
            "awaited_result_of_a_killed_worker_is_worker_died_minimal_executor",
            awaited::minimal,
        ),
        t(
            "stream_reports_the_killed_workers_items_and_the_rest",
            awaited::stream,
        ),
        t(
            "a_waker_that_polls_inline_may_submit_to_the_same_pool",
            awaited::inline_waker,
        ),
        t(
            "a_waker_that_polls_inline_may_call_the_same_pool_and_block",
            awaited::inline_waker_blocking,
        ),
        t(
            "a_waker_that_polls_inline_may_drop_the_last_pool_handle",
            awaited::inline_waker_drops_the_pool,
        ),
        t(
            "a_waker_that_panics_does_not_stop_the_pool",
            awaited::panicking_waker,
        ),
    ]);
    #[cfg(feature = "npy")]
    trials.extend([
        t(
            "npy_generated_64mib_read_in_place_by_workers",
            npy::generated_file,
        ),
        t(
            "npy_worker_killed_mid_map_fails_that_chunk",
            npy::killed_worker,
        ),
        t(
            "npy_worker_does_not_serve_a_cached_mapping_of_a_changed_file",
            npy::replaced_file,
        ),
        t(
            "npy_relative_path_is_resolved_when_opened",
            npy::relative_path,
        ),
    ]);
    // `extend`, like the groups above: with `ndarray` alone a lone `push` right after `Vec::new()`
    // trips clippy's `vec_init_then_push`.
    #[cfg(feature = "ndarray")]
    trials.extend([t(
        "ndarray_worker_killed_in_a_chunk_fails_that_chunk",
        nd::killed_worker,
    )]);
    trials
}

/// Ends this worker process with SIGKILL.
#[allow(dead_code)]
fn die() -> ! {
    // SAFETY: raising SIGKILL ends this process at once; no memory is involved.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    unreachable!("SIGKILL did not end the worker")
}

#[allow(dead_code)]
fn assert_killed<T: std::fmt::Debug>(r: &mproc::Result<T>) {
    assert!(
        matches!(
            r,
            Err(mproc::Error::WorkerDied {
                signal: Some(libc::SIGKILL),
                ..
            })
        ),
        "expected WorkerDied by SIGKILL, got {r:?}"
    );
}

#[cfg(feature = "async")]
mod awaited {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake};

    use futures_core::Stream;
    use mproc::Pool;

    use super::{assert_killed, die, BOUND};
    use crate::common;

    fn kill_self_at_3(x: u32) -> u32 {
        if x == 3 {
            die();
        }
        x + 100
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    pub fn under_tokio() {
        common::bounded("await under tokio", BOUND, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async {
                let pool = Pool::builder().workers(2).build().expect("pool");
                let victim = pool.apply_async(kill_self_at_3, 3).expect("submit");
                let fine = pool.apply_async(kill_self_at_3, 4).expect("submit");
                // The runtime stays responsive while the pool works: a timer fires meanwhile.
                let ticker = tokio::spawn(async {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    7
                });
                let (victim, fine, tick) = tokio::join!(victim, fine, ticker);
                assert_killed(&victim);
                assert_eq!(fine.expect("the other task"), 104);
                assert_eq!(tick.expect("the ticker"), 7);
                // The pool replaced its worker and goes on serving awaited work.
                let after = pool.apply_async(kill_self_at_3, 5).expect("submit").await;
                assert_eq!(after.expect("after the death"), 105);
            });
        });
    }

    pub fn minimal() {
        common::bounded("await under a minimal executor", BOUND, || {
            let pool = Pool::builder().workers(1).build().expect("pool");
            let all = pool
                .map_async(kill_self_at_3, 0..6u32, Some(2))
                .expect("submit");
            assert_killed(&block_on(all));
        });
    }

    type Task = Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>;

    /// An executor whose `wake` polls the task right there, on the waking thread (the `Waker`
    /// contract allows it). The pool wakes from its own threads, after a result arrives.
    struct PollsInline(Task);

    impl Wake for PollsInline {
        fn wake(self: Arc<Self>) {
            let waker = self.clone().into();
            let mut cx = Context::from_waker(&waker);
            let mut task = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = task.as_mut() {
                if f.as_mut().poll(&mut cx).is_ready() {
                    *task = None;
                }
            }
        }
    }

    fn double(x: u64) -> u64 {
        x * 2
    }

    /// A task for [`polled_inline`]: given the pool and where to send its answer.
    type MakeTask =
        fn(Arc<Pool>, std::sync::mpsc::Sender<u64>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Runs `task` under [`PollsInline`] and returns its answer: the task's calls after its first
    /// `await` run inside the pool's own wake-ups.
    fn polled_inline(task: MakeTask) -> u64 {
        let pool = Arc::new(Pool::builder().workers(1).build().expect("pool"));
        // Each worker by pid and start time: a pid reused by a new process once the worker is reaped
        // must not look like the worker still there.
        let workers: Vec<(u32, Option<u64>)> = pool
            .worker_pids()
            .into_iter()
            .map(|w| (w, common::start_time(w as i32)))
            .collect();
        assert!(
            workers.iter().all(|(_, start)| start.is_some()),
            "live workers"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let inline = Arc::new(PollsInline(Mutex::new(Some(task(pool.clone(), tx)))));
        // The task holds the other handle: the pool ends with the task, inside a wake-up.
        drop(pool);
        inline.wake();
        let got = rx
            .recv_timeout(BOUND)
            .expect("an answer from the inline-polled task");
        // Whichever thread let go of the pool last, its workers are stopped and reaped.
        common::eventually("the pool's workers are reaped", BOUND, || {
            workers
                .iter()
                .all(|&(w, start)| common::start_time(w as i32) != start)
        });
        got
    }

    /// From inside the wake-up, the task submits again (five chained calls). Woken while the pool's
    /// dispatcher lock was held, this deadlocked the pool for good.
    pub fn inline_waker() {
        common::bounded("a task submitting from its own wake-up", BOUND, || {
            let got = polled_inline(|p, tx| {
                Box::pin(async move {
                    let mut x = 1;
                    for _ in 0..5 {
                        x = p
                            .apply_async(double, x)
                            .expect("submit")
                            .await
                            .expect("result");
                    }
                    tx.send(x).expect("the test waits");
                    // The pool still answers blocking callers.
                    assert_eq!(p.worker_pids().len(), 1);
                })
            });
            assert_eq!(got, 32);
        });
    }

    /// From inside the wake-up, the task makes a blocking call on the same pool. Woken while its
    /// thread held the pool's reader role, the call waited for that role and hung.
    pub fn inline_waker_blocking() {
        common::bounded("a blocking call from a wake-up", BOUND, || {
            let got = polled_inline(|p, tx| {
                Box::pin(async move {
                    let x = p
                        .apply_async(double, 1)
                        .expect("submit")
                        .await
                        .expect("result");
                    tx.send(p.apply(double, x).expect("a blocking call"))
                        .expect("the test waits");
                })
            });
            assert_eq!(got, 4);
        });
    }

    /// The task holds the last handle of its pool and drops it inside a wake-up that may run on the
    /// pool's own background thread, whose drop joined that thread from itself and panicked.
    pub fn inline_waker_drops_the_pool() {
        common::bounded("the pool dropped from a wake-up", BOUND, || {
            for _ in 0..5 {
                let got = polled_inline(|p, tx| {
                    Box::pin(async move {
                        let x = p
                            .apply_async(double, 3)
                            .expect("submit")
                            .await
                            .expect("result");
                        drop(p);
                        tx.send(x).expect("the test waits");
                    })
                });
                assert_eq!(got, 6);
            }
        });
    }

    /// A waker that panics when the pool's background thread wakes it (an executor's bug). Before,
    /// the panic ended that thread, and every later asynchronous result waited for it forever.
    pub fn panicking_waker() {
        struct Panics;
        impl Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("an executor's bug: this waker panics");
            }
        }
        common::bounded("awaits after a waker panicked", BOUND, || {
            fn double_slowly(x: u64) -> u64 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                x * 2
            }
            let pool = Pool::builder().workers(1).build().expect("pool");
            let mut first = pool.apply_async(double_slowly, 1).expect("submit");
            let waker = Arc::new(Panics).into();
            let mut cx = Context::from_waker(&waker);
            // The task sleeps: this poll registers the panicking waker.
            assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
            // Nobody blocks on the pool here: its background thread reads the result and wakes.
            assert_eq!(block_on(first).expect("the first result"), 2);
            for x in 2..5u64 {
                let later = pool.apply_async(double, x).expect("submit");
                assert_eq!(block_on(later).expect("a later result"), x * 2);
            }
        });
    }

    pub fn stream() {
        common::bounded("a stream with a dead worker", BOUND, || {
            let pool = Pool::builder().workers(2).build().expect("pool");
            let mut s = pool
                .imap_unordered(kill_self_at_3, 0..8u32, Some(1))
                .expect("submit");
            let mut got = Vec::new();
            while let Some(item) =
                block_on(std::future::poll_fn(|cx| Pin::new(&mut s).poll_next(cx)))
            {
                got.push(item);
            }
            got.sort_by_key(|(i, _)| *i);
            assert_eq!(got.len(), 8);
            for (i, r) in &got {
                if *i == 3 {
                    assert_killed(r);
                } else {
                    assert_eq!(
                        r.as_ref().expect("a live worker's item"),
                        &(*i as u32 + 100)
                    );
                }
            }
        });
    }
}

#[cfg(feature = "npy")]
mod npy {
    use mproc::integrations::npy::{write_npy, MappedArray, NpyChunk};
    use mproc::{Error, Pool};
    use ndarray::{Array2, Axis, Ix2, ShapeBuilder};

    use super::{assert_killed, die};
    use crate::common;
    use crate::pool::BOUND;

    /// A file in the temporary directory, removed when dropped.
    struct Temp(std::path::PathBuf);

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp(what: &str) -> Temp {
        Temp(std::env::temp_dir().join(format!("{}.npy", common::unique_name(what))))
    }

    /// (first index along the chunked axis, the column sums of the chunk: partial sums of every
    /// column for a chunk of rows, whole sums of its columns for a chunk of columns).
    fn sums(c: NpyChunk<f64>) -> (usize, Vec<f64>) {
        let v = c.view().into_dimensionality::<Ix2>().expect("2-D");
        (c.first(), v.sum_axis(Axis(0)).to_vec())
    }

    pub fn generated_file() {
        let pool = Pool::builder().workers(2).build().expect("pool");
        // 64 MiB of f64, values exact in f64 so sums compare exactly.
        let (rows, cols) = (1 << 19, 16);
        let c = Array2::from_shape_fn((rows, cols), |(r, c)| ((r * 31 + c * 7) % 1001) as f64);
        for fortran in [false, true] {
            let file = temp("npy-gen");
            let a = if fortran {
                let mut f = Array2::zeros((rows, cols).f());
                f.assign(&c);
                f
            } else {
                c.clone()
            };
            write_npy(&file.0, &a).expect("write");
            let m = MappedArray::<f64>::open_npy(&file.0).expect("map");
            let chunk = if fortran { 3 } else { 10_007 };
            let parts = pool.map(sums, m.chunks(chunk)).expect("pool map");
            if fortran {
                // Column chunks: each part is whole columns' sums, in order.
                let firsts: Vec<usize> = parts.iter().map(|p| p.0).collect();
                assert_eq!(firsts, (0..cols).step_by(chunk).collect::<Vec<_>>());
                let got: Vec<f64> = parts.into_iter().flat_map(|(_, p)| p).collect();
                assert!(
                    got == c.sum_axis(Axis(0)).to_vec(),
                    "Fortran order: wrong sums"
                );
            } else {
                let mut got = vec![0.0; cols];
                for (_, p) in parts {
                    got.iter_mut().zip(p).for_each(|(g, x)| *g += x);
                }
                assert!(got == c.sum_axis(Axis(0)).to_vec(), "C order: wrong sums");
            }
        }
    }

    fn die_on_chunk_at_20(c: NpyChunk<f64>) -> f64 {
        if c.first() == 20 {
            die();
        }
        c.view().sum()
    }

    pub fn killed_worker() {
        let pool = Pool::builder().workers(2).build().expect("pool");
        let file = temp("npy-kill");
        write_npy(&file.0, &Array2::<f64>::ones((40, 4))).expect("write");
        let m = MappedArray::<f64>::open_npy(&file.0).expect("map");
        let results = pool
            .map_each(die_on_chunk_at_20, m.chunks(10))
            .expect("submit");
        for (i, r) in results.iter().enumerate() {
            if i == 2 {
                assert_killed(r);
            } else {
                assert_eq!(r.as_ref().expect("a live worker's chunk"), &40.0);
            }
        }
    }

    /// A worker keeps the mapping of a file it was lent; when the path is then given to another file
    /// (`write_npy` renames a new one over it), a chunk of the old array is refused as "changed" just
    /// as it is by a worker that never mapped it, instead of being served from the cached mapping.
    pub fn replaced_file() {
        // One worker: the second map goes to the worker whose cache holds the first's mapping.
        let pool = Pool::builder().workers(1).build().expect("pool");
        let file = temp("npy-replaced");
        write_npy(&file.0, &Array2::<f64>::ones((4, 2))).expect("write");
        let old = MappedArray::<f64>::open_npy(&file.0).expect("map");
        let parts = pool.map(sums, old.chunks(4)).expect("first map");
        assert_eq!(parts, [(0, vec![4.0, 4.0])]);
        // Same shape and length; another inode (the old one lives on under `old`'s mapping).
        write_npy(&file.0, &Array2::<f64>::from_elem((4, 2), 2.0)).expect("rewrite");
        let r = pool.map(sums, old.chunks(4));
        assert!(
            matches!(&r, Err(Error::TaskPanicked { message, .. }) if message.contains("changed")),
            "a chunk of the replaced file was served: {r:?}"
        );
        let new = MappedArray::<f64>::open_npy(&file.0).expect("map the new file");
        let parts = pool.map(sums, new.chunks(4)).expect("map of the new file");
        assert_eq!(parts, [(0, vec![8.0, 8.0])]);
    }

    /// Runs [`relative_path_role`] in a process of its own: it changes its working directory.
    pub fn relative_path() {
        common::run_role_ok("ecosystem_npy_relative_path", "", BOUND);
    }

    /// Opens `a.npy` by a relative path, then changes directory to one holding another `a.npy` before
    /// lending chunks: the chunks name the file that was opened (the path was made absolute at open).
    pub fn relative_path_role(_: &str) {
        let pool = Pool::builder().workers(1).build().expect("pool");
        let base = std::env::temp_dir().join(common::unique_name("npy-rel"));
        let (here, there) = (base.join("here"), base.join("there"));
        for dir in [&here, &there] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        write_npy(here.join("a.npy"), &Array2::<f64>::ones((4, 2))).expect("write");
        write_npy(there.join("a.npy"), &Array2::<f64>::from_elem((4, 2), 3.0)).expect("write");
        std::env::set_current_dir(&here).expect("chdir");
        let a = MappedArray::<f64>::open_npy("a.npy").expect("map");
        std::env::set_current_dir(&there).expect("chdir");
        let parts = pool.map(sums, a.chunks(2)).expect("map after chdir");
        assert_eq!(parts, [(0, vec![2.0, 2.0]), (2, vec![2.0, 2.0])]);
        drop(a);
        std::env::set_current_dir("/").expect("chdir");
        std::fs::remove_dir_all(&base).expect("clean up");
    }
}

#[cfg(feature = "ndarray")]
mod nd {
    use mproc::integrations::ndarray::SharedNdArray;
    use mproc::Pool;
    use ndarray::ArrayView2;

    use super::{assert_killed, die};

    fn die_on_row_6(rows: ArrayView2<u32>) -> u32 {
        if rows[[0, 0]] == 6 {
            die();
        }
        rows.sum()
    }

    pub fn killed_worker() {
        let pool = Pool::builder().workers(2).build().expect("pool");
        let a = ndarray::Array2::from_shape_fn((12, 3), |(r, _)| r as u32);
        let shared = SharedNdArray::from_ndarray(&a).expect("shared");
        let r = shared.map_axis_chunks(&pool, 2, die_on_row_6);
        assert_killed(&r);
        // The pool replaced the worker: the same map without the victim row succeeds.
        let sums = shared
            .map_axis_chunks(&pool, 5, |rows: ArrayView2<u32>| rows.sum())
            .expect("after the death");
        assert_eq!(sums.iter().sum::<u32>(), a.sum());
    }
}
