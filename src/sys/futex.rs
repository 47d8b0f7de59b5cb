//! Futex wait and wake on process-shared memory.
//!
//! These are *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel keys them on the backing page, so
//! waiters in different processes that mapped the same segment at different addresses meet each other.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// How a [`wait`] ended. Every outcome may be spurious; callers re-check their condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// Woken by [`wake`] (or spuriously).
    Woken,
    /// The word did not hold `expected` when the kernel looked.
    ValueChanged,
    /// The timeout expired.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Sleeps while `*word == expected`, for at most `timeout` (forever if `None`).
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
    let ts = timeout.map(|d| libc::timespec {
        // Saturate absurd timeouts rather than overflow: a wait of 2^63 s is a wait forever.
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT only reads the 32-bit word at `word`, which is a valid, aligned AtomicU32 for
    // the duration of the call (we hold a reference to it); `ts_ptr` is null or points to a live timespec
    // on this stack frame. futex(2): "the timeout argument is interpreted as a relative value".
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return WaitOutcome::Woken;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => WaitOutcome::ValueChanged,
        Some(libc::ETIMEDOUT) => WaitOutcome::TimedOut,
        Some(libc::EINTR) => WaitOutcome::Interrupted,
        // EFAULT/EINVAL cannot happen for a valid aligned word; treat anything else as a spurious wake
        // so the caller re-checks its condition instead of sleeping on a broken word.
        _ => WaitOutcome::Woken,
    }
}

/// Wakes at most `n` waiters sleeping on `word`; returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32);
    // SAFETY: FUTEX_WAKE does not dereference the word at all; it only uses its address as a key.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    r.max(0) as usize
}

/// Wakes every waiter on `word`.
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_on_changed_value_returns_at_once() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 0, None), WaitOutcome::ValueChanged);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        assert_eq!(
            wait(&w, 0, Some(Duration::from_millis(1))),
            WaitOutcome::TimedOut
        );
    }

    #[test]
    fn wake_reaches_a_sleeper() {
        use std::sync::atomic::Ordering;
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Some(Duration::from_secs(10)));
            }
        });
        w.store(1, Ordering::Release);
        // Keep waking until the thread is seen to finish; no assumption on when it went to sleep.
        while !t.is_finished() {
            wake(&w, 1);
            std::thread::yield_now();
        }
        t.join().unwrap();
    }
}
