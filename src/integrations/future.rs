//! Awaiting pool results and processes (feature `async`), with no runtime of our own.
//!
//! - [`AsyncResult`](crate::AsyncResult) is a `Future` (of what [`get`](crate::AsyncResult::get)
//!   returns); [`Imap`](crate::pool::Imap) and [`ImapUnordered`](crate::pool::ImapUnordered) are
//!   `futures_core::Stream`s. They are woken by the pool itself, not by polling:
//!   at most about 10 ms after a worker answers, and a worker that dies fails the awaited tasks with
//!   [`Error::WorkerDied`] on the same tick — an `await` never hangs on a
//!   dead worker.
//! - [`join`] turns a started [`Process`] into a [`JoinFuture`].
//!
//! Works under any executor (tokio, async-std, smol, `futures::executor`): wakers are plain
//! `std::task::Waker`s. **Dropping a pool future cancels nothing**: submitted pool tasks run to the
//! end and their results are discarded; to stop them, terminate the pool. A dropped [`JoinFuture`]
//! does to its process what dropping the [`Process`] would: a [daemon](crate::ProcessBuilder::daemon)
//! is killed, any other child runs to its end; either way it is reaped.
//! [`JoinFuture::kill`] and [`JoinFuture::terminate`] stop it while it is awaited.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::process::{Process, Signaller};

#[derive(Debug)]
struct Slot<R> {
    /// What the helper's `Process::join` gave, or its panic (resumed in the awaiting task, as the
    /// blocking `join` would have panicked in its caller).
    result: Option<std::thread::Result<Result<R>>>,
    waker: Option<Waker>,
}

/// The outcome of a [`Process`], to `.await`: what [`Process::join`] returns. Made by [`join`].
///
/// # Examples
/// ```
/// fn answer(_: ()) -> u32 {
///     42
/// }
///
/// let mut p = mproc::Process::new(answer, ())?;
/// p.start()?;
/// let fut: mproc::integrations::future::JoinFuture<u32> = mproc::integrations::future::join(p)?;
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(rt.block_on(fut)?, 42);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct JoinFuture<R> {
    slot: Arc<Mutex<Slot<R>>>,
    pid: Option<u32>,
    /// The child's own pidfd (a duplicate): signals reach it or, once reaped, nobody.
    signaller: Signaller,
    /// Killed when the future is dropped, as its `Process` would have been.
    daemon: bool,
}

impl<R> std::fmt::Debug for JoinFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinFuture")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Awaits a started process: a helper thread blocks in [`Process::join`] (which sleeps on the child's
/// pidfd, so it learns of the exit at once) and wakes the awaiting task. One thread per joined
/// process, never per poll.
///
/// Dropping the future does to the child what dropping the `Process` would: a daemon is killed, any
/// other child runs on; the helper thread reaps it and ends when it does.
///
/// # Errors
/// [`Error::ProcessState`] if the process was not started; [`Error::Os`] if the helper thread cannot be
/// created. The future itself gives what [`Process::join`] gives.
///
/// # Examples
/// ```
/// fn add((a, b): (u64, u64)) -> u64 {
///     a + b
/// }
///
/// let mut p = mproc::Process::new(add, (2, 3))?;
/// p.start()?;
/// let done = mproc::integrations::future::join(p)?;
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     struct Unpark(std::thread::Thread);
/// #     impl std::task::Wake for Unpark {
/// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
/// #     }
/// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #         std::thread::park();
/// #     }
/// # }
/// assert_eq!(block_on(done)?, 5);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn join<R>(mut process: Process<R>) -> Result<JoinFuture<R>>
where
    R: DeserializeOwned + Send + 'static,
{
    let pid = process.pid();
    let Some((signaller, daemon)) = process.signaller()? else {
        return Err(Error::ProcessState("the process was not started".into()));
    };
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waker: None,
    }));
    let theirs = slot.clone();
    std::thread::Builder::new()
        .name("mproc-join".into())
        .spawn(move || {
            // A panic in `join` (the result's `Deserialize`, say) must still fill the slot and wake
            // the task: otherwise the future is pending forever (found by review).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process.join()));
            let waker = {
                let mut s = theirs.lock().unwrap_or_else(|e| e.into_inner());
                s.result = Some(result);
                s.waker.take()
            };
            // Outside the lock: a waker may poll the future inline.
            if let Some(w) = waker {
                w.wake();
            }
        })
        .map_err(|e| Error::os("spawn a process-join thread", e))?;
    Ok(JoinFuture {
        slot,
        pid,
        signaller,
        daemon,
    })
}

impl<R> JoinFuture<R> {
    /// The child's pid.
    ///
    /// # Examples
    /// ```
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let mut p = mproc::Process::new(id, 1)?;
    /// p.start()?;
    /// let pid = p.pid();
    /// let done = mproc::integrations::future::join(p)?;
    /// assert_eq!(Some(done.pid()), pid);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pid(&self) -> u32 {
        // `join` refuses processes without a pid.
        self.pid.unwrap_or(0)
    }

    /// Sends `SIGKILL` to the child, as [`Process::kill`]; the future then gives
    /// [`Error::ProcessKilled`]. Nothing if the child has already ended: the signal goes through the
    /// child's pidfd, so it can never reach a process that inherited the pid.
    ///
    /// # Errors
    /// [`Error::Os`] if the kernel refuses the signal.
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::new(forever, ())?;
    /// p.start()?;
    /// let done = mproc::integrations::future::join(p)?;
    /// done.kill()?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert!(matches!(rt.block_on(done), Err(mproc::Error::ProcessKilled { signal: 9, .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn kill(&self) -> Result<()> {
        self.signaller.kill()
    }

    /// Sends `SIGTERM` to the child, as [`Process::terminate`]. Nothing if it has already ended.
    ///
    /// # Errors
    /// [`Error::Os`] if the kernel refuses the signal.
    ///
    /// # Examples
    /// ```
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let mut p = mproc::Process::new(forever, ())?;
    /// p.start()?;
    /// let done = mproc::integrations::future::join(p)?;
    /// done.terminate()?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert!(matches!(rt.block_on(done), Err(mproc::Error::ProcessKilled { signal: 15, .. })));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&self) -> Result<()> {
        self.signaller.terminate()
    }
}

#[cfg(test)]
impl<R> JoinFuture<R> {
    /// A second signaller of the child, to reach it after the future is dropped.
    fn signaller_for_test(&self) -> Signaller {
        Signaller::duplicate_for_test(&self.signaller)
    }
}

impl<R> Drop for JoinFuture<R> {
    fn drop(&mut self) {
        // As `Process`'s drop: a daemon is killed (nothing if it has ended), the helper thread reaps it.
        if self.daemon {
            let _ = self.signaller.kill();
        }
    }
}

impl<R> Future for JoinFuture<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match s.result.take() {
            Some(Ok(r)) => Poll::Ready(r),
            Some(Err(panic)) => {
                drop(s);
                std::panic::resume_unwind(panic)
            }
            None => {
                // Registered under the lock the helper stores the result under: no lost wake-up.
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::task::Wake;
    use std::time::{Duration, Instant};

    use futures_core::Stream;

    use super::*;
    use crate::Pool;

    /// The smallest executor: polls on the calling thread, parks between wake-ups. What the tests use
    /// to show that no runtime is needed.
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
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

    fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        block_on(std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)))
    }

    fn slow_square(x: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(20));
        x * x
    }

    fn add((a, b): (u64, u64)) -> u64 {
        a + b
    }

    fn boom(_: u32) -> u32 {
        panic!("boom in a task")
    }

    #[test]
    fn async_result_under_a_minimal_executor() {
        let pool = Pool::builder().workers(2).build().unwrap();
        let r = pool.map_async(slow_square, 0..8u64, Some(1)).unwrap();
        assert_eq!(
            block_on(r).unwrap(),
            (0..8u64).map(|x| x * x).collect::<Vec<_>>()
        );
        let failing = pool.apply_async(boom, 1).unwrap();
        assert!(matches!(
            block_on(failing),
            Err(Error::TaskPanicked { message, .. }) if message.contains("boom")
        ));
    }

    #[tokio::test]
    async fn async_result_under_tokio() {
        let pool = Pool::builder().workers(2).build().unwrap();
        let a = pool.apply_async(slow_square, 3).unwrap();
        let b = pool.apply_async(slow_square, 4).unwrap();
        let (a, b) = tokio::join!(a, b);
        assert_eq!((a.unwrap(), b.unwrap()), (9, 16));
    }

    #[test]
    fn streams_yield_what_the_iterators_yield() {
        let pool = Pool::builder().workers(2).build().unwrap();
        let mut ordered = pool.imap(slow_square, 0..6u64, Some(2)).unwrap();
        assert_eq!(Stream::size_hint(&ordered), (6, Some(6)));
        let mut got = Vec::new();
        while let Some(r) = next(&mut ordered) {
            got.push(r.unwrap());
        }
        assert_eq!(got, [0, 1, 4, 9, 16, 25]);
        let mut unordered = pool.imap_unordered(slow_square, 0..6u64, Some(1)).unwrap();
        let mut got = Vec::new();
        while let Some((i, r)) = next(&mut unordered) {
            got.push((i, r.unwrap()));
        }
        got.sort();
        assert_eq!(
            got,
            (0..6u64).map(|x| (x as usize, x * x)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_process_is_awaited() {
        let mut p = Process::new(add, (40, 2)).unwrap();
        p.start().unwrap();
        assert_eq!(block_on(join(p).unwrap()).unwrap(), 42);
        let unstarted = Process::new(add, (1, 1)).unwrap();
        assert!(matches!(join(unstarted), Err(Error::ProcessState(_))));
    }

    fn forever(_: ()) {
        loop {
            std::thread::park();
        }
    }

    /// Whether `pid` names a process that has not been reaped (a zombie still counts).
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A daemon whose join future is dropped is killed and reaped, as when its `Process` is dropped;
    /// before, it ran on for good and the helper thread with it. A non-daemon runs on.
    #[test]
    fn a_dropped_join_future_kills_a_daemon_and_leaves_other_children_running() {
        let bound = Instant::now() + Duration::from_secs(60);
        let mut daemon = Process::builder().daemon(true).target(forever, ()).unwrap();
        daemon.start().unwrap();
        let fut = join(daemon).unwrap();
        let pid = fut.pid();
        drop(fut);
        while exists(pid) {
            assert!(
                Instant::now() < bound,
                "the daemon {pid} outlived its dropped join future"
            );
            std::thread::sleep(Duration::from_millis(5));
        }

        let mut plain = Process::new(forever, ()).unwrap();
        plain.start().unwrap();
        let fut = join(plain).unwrap();
        let pid = fut.pid();
        let kill = fut.signaller_for_test();
        drop(fut);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            exists(pid),
            "a non-daemon was killed by dropping its join future"
        );
        kill.kill().unwrap(); // the helper thread reaps it and ends
        while exists(pid) {
            assert!(
                Instant::now() < bound,
                "{pid} was not reaped after its kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_awaited_process_is_killed_or_terminated_through_its_future() {
        for (signal, stop) in [(9, true), (15, false)] {
            let mut p = Process::new(forever, ()).unwrap();
            p.start().unwrap();
            let done = join(p).unwrap();
            if stop {
                done.kill().unwrap();
            } else {
                done.terminate().unwrap();
            }
            let r = block_on(done);
            assert!(
                matches!(r, Err(Error::ProcessKilled { signal: s, .. }) if s == signal),
                "{r:?}"
            );
        }
        // After the end, a signal reaches nobody and is no error.
        let mut p = Process::new(add, (1, 2)).unwrap();
        p.start().unwrap();
        let mut done = join(p).unwrap();
        assert_eq!(block_on(&mut done).unwrap(), 3);
        done.kill().unwrap();
    }

    fn park_forever(_: u8) -> u8 {
        loop {
            std::thread::park();
        }
    }

    /// A pool dropped (terminated) while one of its results is awaited: the await ends with
    /// `PoolClosed`, it does not hang. Bounded, to prove "no hang" only.
    #[test]
    fn a_result_awaited_when_its_pool_is_dropped_is_pool_closed() {
        let pool = Pool::builder().workers(1).build().unwrap();
        let pending = pool.apply_async(park_forever, 1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || tx.send(block_on(pending)));
        drop(pool);
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the await hangs after its pool was dropped");
        assert!(matches!(r, Err(Error::PoolClosed)), "{r:?}");
        waiter.join().unwrap().unwrap();
    }

    /// A result type whose `Deserialize` panics on 7 (say, a `NonZero`-like check with an `unwrap`).
    #[derive(Debug)]
    struct Picky(u32);

    impl serde::Serialize for Picky {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_u32(self.0)
        }
    }

    impl<'de> serde::Deserialize<'de> for Picky {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let v = <u32 as serde::Deserialize>::deserialize(d)?;
            assert!(v != 7, "Picky refuses 7");
            Ok(Picky(v))
        }
    }

    fn seven(_: ()) -> Picky {
        Picky(7)
    }

    /// Review: a panic in the helper thread's `Process::join` (here the result's `Deserialize`)
    /// ends the thread without filling the slot or waking the waker: the future is pending forever,
    /// where the blocking `join` would have panicked in its caller.
    #[test]
    fn a_join_that_panics_does_not_leave_the_future_pending_forever() {
        let mut p = Process::new(seven, ()).unwrap();
        p.start().unwrap();
        let fut = join(p).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block_on(fut)));
            let _ = tx.send(r.is_err());
        });
        let panicked = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the join future hangs after its helper thread panicked");
        assert!(panicked, "the helper's panic reaches the awaiting task");
    }

    /// Review: each poll with a waker that would not wake the ones already registered added it to
    /// the job's list, kept until a task of the job finished: a future re-polled with new wakers (moved
    /// between tasks, a `select!` loop) held every one of them, memory growing with the polls. A future
    /// keeps only its latest waker. Shown by counting the wakers still alive after each poll.
    #[test]
    fn a_pending_future_keeps_only_its_latest_waker() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counted(Arc<AtomicUsize>);
        impl Wake for Counted {
            fn wake(self: Arc<Self>) {}
        }
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let pool = Pool::builder().workers(1).build().unwrap();
        let mut pending = pool.apply_async(park_forever, 1).unwrap();
        let live = Arc::new(AtomicUsize::new(0));
        for _ in 0..1000 {
            live.fetch_add(1, Ordering::Relaxed);
            let waker = Arc::new(Counted(live.clone())).into();
            let polled = Pin::new(&mut pending).poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending());
            drop(waker);
            assert!(
                live.load(Ordering::Relaxed) <= 1,
                "{} wakers kept by one pending future",
                live.load(Ordering::Relaxed)
            );
        }
        drop(pool); // fails the task (`PoolClosed`) and lets go of its waker
        drop(pending);
        assert_eq!(live.load(Ordering::Relaxed), 0);
    }

    /// A future dropped before its result arrives cancels nothing and breaks nothing: the pool goes
    /// on serving the next awaited call.
    #[test]
    fn dropping_a_future_cancels_nothing() {
        let pool = Pool::builder().workers(1).build().unwrap();
        let dropped = pool.apply_async(slow_square, 5).unwrap();
        drop(dropped);
        let r = pool.apply_async(slow_square, 6).unwrap();
        assert_eq!(block_on(r).unwrap(), 36);
    }
}
