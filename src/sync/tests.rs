//! The three ways a sync object reaches another process, end to end.

use crate::{Array, Event, Lock, Process, Value};

const ROUNDS: u64 = 2000;

fn add_under_lock(lock: &Lock, value: &Value<u64>) {
    for _ in 0..ROUNDS {
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        // A read, then a write: only correct under mutual exclusion.
        let v = value.get();
        value.set(v + 1);
    }
}

fn spawned((lock, value, go): (Lock, Value<u64>, Event)) -> u64 {
    go.wait();
    add_under_lock(&lock, &value);
    ROUNDS
}

#[test]
fn inherited_across_fork() {
    let (lock, value) = (Lock::new().unwrap(), Value::new(0u64).unwrap());
    let (l2, v2) = (lock.clone(), value.clone());
    let mut child = Process::builder().fork(move || add_under_lock(&l2, &v2));
    child.start().unwrap();
    add_under_lock(&lock, &value);
    child.join().unwrap();
    assert_eq!(value.get(), 2 * ROUNDS);
}

/// A child forked while its parent's thread holds guards of a `Value` and an `Array` does not hold
/// them: it waits for the parent to let go, as it did before `Value`/`Array` told "held by me" from a
/// per-thread list of guards. Found by review: the child inherited the forking thread's list, and its
/// `get` panicked ("already holds its lock") while the parent held the lock.
#[test]
fn a_fork_child_of_a_guard_holder_waits_for_the_release() {
    let (v, a) = (Value::new(1u64).unwrap(), Array::<u8>::new(2).unwrap());
    let (v2, a2) = (v.clone(), a.clone());
    let mut gv = v.lock().unwrap();
    let mut ga = a.lock().unwrap();
    let mut child = Process::builder().fork(move || (v2.get(), a2.get(0)));
    child.start().unwrap();
    // The child cannot read before these are released: it sees the values written under the guards.
    *gv = 5;
    ga[0] = 7;
    drop((gv, ga));
    assert_eq!(child.join().unwrap(), (5, Some(7)));
}

/// A thread-local whose drop writes a `Value` (a per-thread tally flushed at thread exit) still
/// works when the thread-locals of `Value`'s own bookkeeping are gone: thread-locals are destroyed in
/// the reverse order of their first use, so a `Value` first locked after the tally was made has its
/// list of held guards destroyed before the tally's drop runs. Found by review: `get` panicked there
/// ("cannot access a Thread Local Storage value during or after destruction"), and a panic in a
/// thread-local's destructor aborts the process. Run in a forked child, which the abort would kill.
#[test]
fn a_value_set_from_a_thread_local_destructor_works() {
    struct Tally(Value<u64>);
    impl Drop for Tally {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }
    thread_local! {
        static TALLY: std::cell::RefCell<Option<Tally>> = const { std::cell::RefCell::new(None) };
    }
    let v = Value::new(0u64).unwrap();
    let v2 = v.clone();
    let mut child = Process::builder().fork(move || {
        std::thread::spawn(move || {
            // The tally first, then the value's first lock in this thread.
            TALLY.with(|t| *t.borrow_mut() = Some(Tally(v2.clone())));
            v2.set(v2.get() + 1);
        })
        .join()
        .is_ok()
    });
    child.start().unwrap();
    let got = child.join();
    assert!(
        matches!(got, Ok(true)),
        "the child did not end well: {got:?}"
    );
    assert_eq!(v.get(), 3);
}

#[test]
fn passed_to_a_spawned_process_as_an_argument() {
    let (lock, value, go) = (
        Lock::new().unwrap(),
        Value::new(0u64).unwrap(),
        Event::new().unwrap(),
    );
    let mut child = Process::new(spawned, (lock.clone(), value.clone(), go.clone())).unwrap();
    child.start().unwrap();
    go.set();
    add_under_lock(&lock, &value);
    assert_eq!(child.join().unwrap(), ROUNDS);
    assert_eq!(value.get(), 2 * ROUNDS);
}

#[test]
fn opened_by_name() {
    let name = crate::region::tests::unique("sync");
    let created = Value::create(&name, 5u32).unwrap();
    let opened = Value::<u32>::open(&name).unwrap();
    opened.set(6);
    assert_eq!(created.get(), 6);
    assert!(matches!(
        Value::<u64>::open(&name),
        Err(crate::Error::TypeMismatch { .. })
    ));
}

fn seven(_: ()) -> u32 {
    7
}

/// Found by review: a timeout past the clock's range (`Duration::MAX`) panicked ("overflow when
/// adding duration to instant") in every timed call, even one that had nothing to wait for; it is
/// no deadline.
#[test]
fn the_longest_timeouts_do_not_panic() {
    let max = std::time::Duration::MAX;
    let lock = Lock::new().unwrap();
    drop(lock.lock_timeout(max).unwrap());
    let event = Event::new().unwrap();
    event.set();
    assert!(event.wait_timeout(max));
    let sem = crate::Semaphore::new(1).unwrap();
    assert!(sem.acquire_timeout(max).is_some());
    assert_eq!(
        crate::Barrier::new(1).unwrap().wait_timeout(max).unwrap(),
        0
    );
    let q: crate::Queue<u8> = crate::Queue::new(1).unwrap();
    q.put_timeout(&1, max).unwrap();
    assert_eq!(q.get_timeout(max).unwrap(), 1);
    let c = crate::Condition::new().unwrap();
    drop(c.lock_timeout(max).unwrap());
    let mut p = Process::builder().target(seven, ()).unwrap();
    p.start().unwrap();
    assert_eq!(p.join_timeout(max).unwrap(), 7);
}

/// Interrupts the calling thread with a signal (whose handler does nothing) every `period`, until
/// dropped: a thread of a program that takes periodic signals (a profiler's, a timer's, a stream of
/// `SIGCHLD`s). A kernel timer aimed at this thread (`SIGEV_THREAD_ID`), so the signals keep coming
/// whatever the scheduler does with the test's other threads.
pub(crate) struct Interrupter {
    timer: libc::timer_t,
}

/// The signal [`Interrupter`] sends: a real-time one the crate does not use (it uses `SIGRTMIN + 3`).
fn interrupt_signal() -> i32 {
    libc::SIGRTMIN() + 6
}

extern "C" fn ignore_signal(_: libc::c_int) {}

impl Interrupter {
    pub(crate) fn every(period: std::time::Duration) -> Interrupter {
        let sig = interrupt_signal();
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is an
        // `extern "C" fn(c_int)` that does nothing (async-signal-safe). SA_RESTART as a careful
        // program would set it: a timed futex wait returns EINTR all the same.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        assert_eq!(r, 0, "sigaction: {}", std::io::Error::last_os_error());
        // SAFETY: a zeroed sigevent is valid; we fill in the fields SIGEV_THREAD_ID reads.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = sig;
        ev.sigev_notify_thread_id = crate::sys::proc::tid() as libc::c_int;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `ev` and `timer` are live locals; the timer targets this thread of this process.
        let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) };
        assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `timer` was just created; `spec` is a live local.
        let r = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
        assert_eq!(r, 0, "timer_settime: {}", std::io::Error::last_os_error());
        Interrupter { timer }
    }
}

impl Drop for Interrupter {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `every` and is deleted once. A signal already pending
        // stays harmless: its handler does nothing.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Found by review: a waiter judged a lock's holder only when a whole sleep slice passed without an
/// early return, and a signal ends a timed futex sleep early (EINTR, whatever SA_RESTART says). A
/// thread that took signals more often than its slice (a profiler's, a timer's, `SIGCHLD`s) seldom or
/// never judged: a holder that died kept it waiting until its deadline, or for good. Slices are
/// measured by the clock now (see `wait::Sleeper`).
#[test]
fn a_waiter_taking_signals_still_recovers_a_dead_holders_lock() {
    use crate::sync::raw_lock::{Acquired, Nesting, RawLock};
    use std::time::{Duration, Instant};
    let l = RawLock::default();
    let (took_tx, took_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // The holder: alive for a while, so the waiter's slices grow to their longest, then it exits
        // holding the lock.
        let l = &l;
        s.spawn(move || {
            assert_eq!(l.try_lock(), Some(Acquired::Clean));
            took_tx.send(()).unwrap();
            let _ = die_rx.recv();
        });
        took_rx.recv().unwrap();
        let waiter = s.spawn(move || {
            let _signals = Interrupter::every(Duration::from_micros(100));
            // A far deadline: a wait whose last slice, cut short by the deadline, ends with no signal
            // in it recovers then, which would pass for a recovery if nothing measured it.
            let start = Instant::now();
            let got = l.lock_as(Some(start + Duration::from_secs(60)), Nesting::MayHold);
            if got.is_ok() {
                // SAFETY: taken just above by this thread.
                unsafe { l.unlock() };
            }
            (got, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(die_tx);
        let (got, took) = waiter.join().unwrap();
        // Generous, to prove no hang: recovery takes about `MAX_CHECK` after the death.
        assert!(
            took < Duration::from_secs(30),
            "recovered only after {took:?}"
        );
        assert!(matches!(got, Ok(Acquired::OwnerDied(_))), "{got:?}");
    });
}
