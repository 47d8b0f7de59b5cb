//! Process and thread identity, and liveness checks that are safe against pid reuse.
//!
//! A holder of a shared lock is recorded as its thread id (what the futex word holds, as in the kernel's
//! robust-futex format) plus the low 32 bits of its start time in clock ticks since boot (field 22 of
//! `/proc/<tid>/stat`). A waiter that suspects the holder is gone reads `/proc/<tid>/stat`: the thread is
//! alive only if that file exists, is not a zombie, and reports the recorded start time. A recycled tid
//! therefore never passes for the dead holder.

use std::cell::Cell;
use std::sync::Once;

/// Who holds something: a thread id and its start time (low 32 bits, clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub tid: u32,
    pub start: u32,
}

impl Identity {
    /// Packs into one word so it can be published with a single atomic store.
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.tid) << 32) | u64::from(self.start)
    }

    pub(crate) fn unpack(v: u64) -> Self {
        Identity {
            tid: (v >> 32) as u32,
            start: v as u32,
        }
    }
}

thread_local! {
    // 0 = not yet known in this thread (or reset by fork).
    static THREAD_ID: Cell<Identity> = const { Cell::new(Identity { tid: 0, start: 0 }) };
}

static ATFORK: Once = Once::new();

extern "C" fn reset_after_fork() {
    // In the child of fork(2) only the forking thread exists, and it has a new tid: forget the old one.
    // Only touches a thread-local Cell: async-signal-safe in practice (no allocation, no lock).
    let _ = THREAD_ID.try_with(|c| c.set(Identity { tid: 0, start: 0 }));
}

/// This thread's identity, cached per thread (two syscalls and a /proc read on first use only).
#[inline]
pub(crate) fn current() -> Identity {
    let id = THREAD_ID.with(Cell::get);
    if id.tid != 0 {
        return id;
    }
    current_slow()
}

#[cold]
fn current_slow() -> Identity {
    ATFORK.call_once(|| {
        // SAFETY: registering a fork handler has no preconditions; the handler is a plain extern "C" fn
        // with static lifetime.
        unsafe { libc::pthread_atfork(None, None, Some(reset_after_fork)) };
    });
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() } as u32;
    let start = stat_of(tid).map(|s| s.start as u32).unwrap_or(0);
    let id = Identity { tid, start };
    THREAD_ID.with(|c| c.set(id));
    id
}

/// The calling process's pid.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// A process's start time in clock ticks since boot, if it exists.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_of(pid).map(|s| s.start)
}

struct Stat {
    state: u8,
    start: u64,
}

fn stat_of(tid: u32) -> Option<Stat> {
    match probe(tid) {
        Probe::Found(s) => Some(s),
        Probe::Gone | Probe::Unknown => None,
    }
}

/// What `/proc/<tid>/stat` says about a thread.
enum Probe {
    Found(Stat),
    /// No such thread: the file does not exist (ENOENT, or ESRCH for a task exiting while we read).
    Gone,
    /// We could not tell (out of descriptors, /proc not mounted, an unparsable file). Judging a live
    /// holder dead would break mutual exclusion, so callers treat this as alive.
    Unknown,
}

fn probe(tid: u32) -> Probe {
    // /proc/<tid> resolves thread ids too, not only thread-group leaders (proc(5), "/proc/tid").
    match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Ok(text) => parse_stat(&text).map_or(Probe::Unknown, Probe::Found),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Probe::Gone
        }
        Err(_) => Probe::Unknown,
    }
}

/// Parses the fields we need from `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // `rest` starts at field 3 (state); starttime is field 22, i.e. 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether the thread `id` still runs. A zombie, a missing /proc entry or a different start time (the tid
/// was reused) all mean "dead"; a /proc read that fails for another reason means "alive" (we cannot tell,
/// and taking a live holder for dead would be the worse mistake). `id.start == 0` means the start time was never recorded: existence alone
/// decides then.
pub(crate) fn is_alive(id: Identity) -> bool {
    if id.tid == 0 || id.tid > libc::pid_t::MAX as u32 {
        return false;
    }
    match probe(id.tid) {
        Probe::Gone => false,
        Probe::Unknown => true,
        Probe::Found(s) if s.state == b'Z' || s.state == b'X' => false,
        Probe::Found(s) => id.start == 0 || s.start as u32 == id.start,
    }
}

/// Whether process `pid` with start time `start` (full width, 0 = unknown) still runs.
pub(crate) fn process_alive(pid: u32, start: u64) -> bool {
    if pid == 0 || pid > libc::pid_t::MAX as u32 {
        return false;
    }
    match probe(pid) {
        Probe::Gone => false,
        Probe::Unknown => true,
        Probe::Found(s) if s.state == b'Z' || s.state == b'X' => false,
        Probe::Found(s) => start == 0 || s.start == start,
    }
}

/// The pid namespace this process lives in: the inode number of `/proc/self/ns/pid` (namespaces(7)),
/// read once. Pids and tids recorded in shared memory mean something only inside the namespace of the
/// process that wrote them, so every recorded holder or creator carries this value beside its pid, and a
/// checker in another namespace never judges it by its own `/proc` (S6 of the 2026-11-30 review).
/// 0 if it cannot be read (no /proc): callers then cannot tell namespaces apart and must treat a
/// recorded 0 as "unknown", never as a match that licenses a liveness judgement.
#[allow(dead_code)] // used by the liveness checks of the sync, queue and region layers
pub(crate) fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino()))
}

/// Whether a holder recorded with pid namespace `ns` can be judged from this process's `/proc`: only if
/// both namespaces are known and equal.
#[allow(dead_code)] // as `pid_namespace`
pub(crate) fn same_pid_namespace(ns: u64) -> bool {
    let here = pid_namespace();
    here != 0 && ns == here
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process on the machine, so a timestamp written
/// into shared memory by one process means the same to another.
pub(crate) fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000
}

/// 64 random bits from the kernel's CSPRNG.
pub(crate) fn random_u64() -> u64 {
    let mut v = 0u64;
    loop {
        // SAFETY: getrandom writes at most 8 bytes into `v`, a live, writable u64 on this stack frame.
        let r = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
        if r == 8 {
            return v;
        }
        // EINTR, or a short read before the pool is initialised: try again (getrandom(2)).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_names() {
        let s = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.state, b'S');
        assert_eq!(st.start, 987654);
    }

    #[test]
    fn parse_stat_rejects_garbage() {
        assert!(parse_stat("").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn self_is_alive_and_bogus_is_dead() {
        let me = current();
        assert!(me.tid > 0 && me.start > 0);
        assert!(is_alive(me));
        assert!(!is_alive(Identity {
            tid: me.tid,
            start: me.start.wrapping_add(1)
        }));
        assert!(!is_alive(Identity { tid: 0, start: 0 }));
        assert!(process_alive(pid(), start_time(pid()).unwrap()));
    }

    #[test]
    fn pid_namespace_is_known_and_stable() {
        let ns = pid_namespace();
        assert_ne!(ns, 0);
        assert_eq!(ns, pid_namespace());
        assert!(same_pid_namespace(ns));
        assert!(!same_pid_namespace(ns ^ 1));
        assert!(!same_pid_namespace(0));
    }

    #[test]
    fn identity_packs() {
        let id = Identity {
            tid: 0xdead_beef,
            start: 0x1234_5678,
        };
        assert_eq!(Identity::unpack(id.pack()), id);
    }
}
