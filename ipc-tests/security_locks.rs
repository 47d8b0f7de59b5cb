//! Lock identity and pid namespaces (R3 and S6 of the 2026-11-30 security review, issue 11).
//!
//! - R3: a lock's holder is (tid, start time), not the tid alone. A lock word left by a dead thread whose
//!   tid was recycled to *this* thread must not make `RLock` re-enter a lock it never acquired, nor make
//!   `try_lock` refuse forever. The recycling is forged: the segment's bytes are rewritten to name this
//!   thread's tid with another start time, exactly what a dead holder with our recycled tid leaves.
//! - S6: a holder recorded in another pid namespace is never judged dead by our `/proc`. The holders here
//!   are real processes that died holding; only their recorded namespace is rewritten. Each test also
//!   runs the control: with the namespace put back, the same dead holder is recovered.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.
//! [`SHORT`] is how long we wait for something that must *not* happen.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::codec::Raw;
use mproc::{Barrier, Error, Lock, Queue, RLock, Semaphore, TryLockError};

use crate::common::{self, bounded, say, shm_path, sleep_forever, stat_fields, Kid, Role};

const BOUND: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
/// Where an object's payload starts in its segment (`src/region/header.rs`, `PAYLOAD_OFFSET`).
const PAYLOAD: u64 = 128;

pub const ROLES: &[Role] = &[
    ("security_locks_hold_and_exit", hold_and_exit),
    ("security_locks_barrier_party", barrier_party),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("security_locks", name, f);
    vec![
        t("rlock_recycled_tid_does_not_reenter", rlock_recycled_tid),
        t("lock_try_lock_recovers_recycled_tid", try_lock_recycled_tid),
        t(
            "lock_timeout_self_held_returns_at_once",
            lock_timeout_self_held,
        ),
        t(
            "lock_foreign_namespace_holder_not_judged_dead",
            lock_foreign_namespace,
        ),
        t(
            "semaphore_foreign_namespace_holder_keeps_permit",
            semaphore_foreign_namespace,
        ),
        t(
            "barrier_foreign_namespace_party_not_judged_dead",
            barrier_foreign_namespace,
        ),
        t(
            "queue_foreign_namespace_claimer_not_judged_dead",
            queue_foreign_namespace,
        ),
    ]
}

// ------------------------------------------------------------------------------------------------ helpers

/// This thread's tid and start time (low 32 bits, as locks record it), and our pid namespace's tag.
fn me() -> (u32, u32, u32) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    // stat_fields starts at field 3; starttime is field 22.
    let start: u64 = stat_fields(&stat)[19].parse().expect("starttime");
    (tid, start as u32, pid_ns())
}

fn pid_ns() -> u32 {
    let ino = std::fs::metadata("/proc/self/ns/pid")
        .expect("our pid namespace")
        .ino();
    u32::try_from(ino).expect("nsfs inode numbers fit in 32 bits")
}

fn segment(name: &str) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .expect("open the segment")
}

fn read_u32(f: &std::fs::File, at: u64) -> u32 {
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, at).expect("read");
    u32::from_ne_bytes(b)
}

fn read_u64(f: &std::fs::File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).expect("read");
    u64::from_ne_bytes(b)
}

fn write_u32(f: &std::fs::File, at: u64, v: u32) {
    f.write_all_at(&v.to_ne_bytes(), at).expect("write");
}

fn write_u64(f: &std::fs::File, at: u64, v: u64) {
    f.write_all_at(&v.to_ne_bytes(), at).expect("write");
}

/// Writes a robust lock's 16 bytes at `at`: word, holder namespace, holder (tid << 32 | start).
fn forge_lock(f: &std::fs::File, at: u64, word: u32, ns: u32, tid: u32, start: u32) {
    write_u32(f, at + 4, ns);
    write_u64(f, at + 8, (u64::from(tid) << 32) | u64::from(start));
    write_u32(f, at, word);
}

/// A pid that existed a moment ago and is now dead and reaped.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

// ------------------------------------------------------------------------------------------------ roles

/// Child: takes `kind` `name` (a Lock or a Semaphore permit) and exits without giving it back.
fn hold_and_exit(arg: &str) {
    let [kind, name] = common::fields(arg, ' ');
    match kind {
        "lock" => {
            let l = Lock::open(name).expect("open lock");
            std::mem::forget(l.lock().expect("a fresh lock"));
        }
        "semaphore" => {
            let s = Semaphore::open(name).expect("open semaphore");
            std::mem::forget(s.acquire());
        }
        other => panic!("unknown kind {other}"),
    }
    // Exiting ends every thread: the holder is dead.
}

/// Child: arrives at the barrier `name` and waits there until killed.
fn barrier_party(name: &str) {
    let b = Barrier::open(name).expect("open barrier");
    say("arriving");
    let _ = b.wait();
    sleep_forever();
}

// ------------------------------------------------------------------------------------------------ R3

/// A dead holder's word names our tid (recycled) with its own start time: RLock must take it over and
/// report the death, not "re-enter" a lock it never acquired.
fn rlock_recycled_tid() {
    let name = common::unique_name("rlock-tid");
    let r = RLock::create(&name).unwrap();
    let f = segment(&name);
    let (tid, start, ns) = me();
    forge_lock(&f, PAYLOAD, tid, ns, tid, start.wrapping_add(1));
    // The depth word right after the lock: garbage a re-entry would build on.
    write_u32(&f, PAYLOAD + 16, 7);
    let g = match r.lock() {
        Err(e) => {
            assert_eq!(e.dead_tid(), tid);
            e.into_inner()
        }
        Ok(_) => panic!("RLock re-entered a lock this thread never acquired (tid reuse)"),
    };
    assert_eq!(read_u32(&f, PAYLOAD + 16), 1, "depth reset to one");
    drop(g);
    // Released for real: another thread takes it cleanly.
    let r2 = r.clone();
    bounded("try_lock from another thread", BOUND, move || {
        assert!(r2.try_lock().is_ok());
    });
}

/// Same forged word on a plain Lock: `try_lock` must recover it, not refuse forever because the tid is
/// ours.
fn try_lock_recycled_tid() {
    let name = common::unique_name("lock-tid");
    let l = Lock::create(&name).unwrap();
    let f = segment(&name);
    let (tid, start, ns) = me();
    forge_lock(&f, PAYLOAD, tid, ns, tid, start.wrapping_add(1));
    match l.try_lock() {
        Err(TryLockError::OwnerDied(e)) => assert_eq!(e.dead_tid(), tid),
        other => panic!("try_lock on a recycled tid: expected OwnerDied, got {other:?}"),
    }
    assert!(l.try_lock().is_ok(), "usable again after the report");
}

/// This thread holds the lock: `lock_timeout` is a self-deadlock and says so at once, even with a
/// timeout far beyond the test's bound.
fn lock_timeout_self_held() {
    bounded("lock_timeout on a lock this thread holds", BOUND, || {
        let l = Lock::new().unwrap();
        let _held = l.lock().unwrap();
        let r = l.lock_timeout(Duration::from_secs(3600));
        assert!(matches!(r, Err(TryLockError::WouldBlock)), "{r:?}");
        assert!(matches!(l.try_lock(), Err(TryLockError::WouldBlock)));
    });
}

// ------------------------------------------------------------------------------------------------ S6

/// A process died holding a Lock. Recorded in another pid namespace, it cannot be judged from here: a
/// waiter times out instead of taking over. Recorded in ours, it is recovered.
fn lock_foreign_namespace() {
    let name = common::unique_name("lock-ns");
    let l = Lock::create(&name).unwrap();
    common::run_role_ok(
        "security_locks_hold_and_exit",
        &format!("lock {name}"),
        BOUND,
    );
    let f = segment(&name);
    let ns = read_u32(&f, PAYLOAD + 4);
    assert_eq!(ns, pid_ns(), "the holder recorded its namespace");
    write_u32(&f, PAYLOAD + 4, ns ^ 0x5a5a);
    assert!(
        matches!(l.lock_timeout(SHORT), Err(TryLockError::WouldBlock)),
        "a holder from another pid namespace was judged dead by our /proc"
    );
    assert!(matches!(l.try_lock(), Err(TryLockError::WouldBlock)));
    // Control: the same dead holder in our namespace is recovered.
    write_u32(&f, PAYLOAD + 4, ns);
    assert!(matches!(
        l.lock_timeout(BOUND),
        Err(TryLockError::OwnerDied(_))
    ));
}

/// `RawSemaphore` offsets (src/sync/semaphore.rs): holders start after lock, counters and journal.
const SEM_HOLDERS: u64 = 72;
const SEM_HOLDER_SLOTS: u64 = 64;

/// A process died holding a semaphore permit. Recorded in another namespace, the permit stays taken.
fn semaphore_foreign_namespace() {
    let name = common::unique_name("sem-ns");
    let s = Semaphore::create(&name, 1).unwrap();
    common::run_role_ok(
        "security_locks_hold_and_exit",
        &format!("semaphore {name}"),
        BOUND,
    );
    assert_eq!(s.value(), 0);
    let f = segment(&name);
    let slot = (0..SEM_HOLDER_SLOTS)
        .map(|i| PAYLOAD + SEM_HOLDERS + 16 * i)
        .find(|&at| read_u64(&f, at) != 0)
        .expect("the dead child's holder slot");
    assert_eq!(read_u32(&f, slot + 8), 1, "one permit recorded");
    let ns = read_u32(&f, slot + 12);
    assert_eq!(ns, pid_ns(), "the holder recorded its namespace");
    write_u32(&f, slot + 12, ns ^ 0x5a5a);
    assert!(
        s.acquire_timeout(SHORT).is_none(),
        "the permit of a holder in another pid namespace was reclaimed"
    );
    write_u32(&f, slot + 12, ns);
    assert!(s.acquire_timeout(BOUND).is_some(), "control: reclaimed");
}

/// `RawBarrier` offsets (src/sync/barrier.rs): the parties' namespaces follow the round word and the last
/// arrival's CPU (at 24 and 28) and 256 identities from 32.
const BARRIER_ARRIVED_NS: u64 = 32 + 256 * 8;

/// A party arrived and was killed. Recorded in another namespace, it is not judged dead: the barrier does
/// not break, and trips when the others arrive.
fn barrier_foreign_namespace() {
    let name = common::unique_name("barrier-ns");
    let b = Barrier::create(&name, 3).unwrap();
    let mut kid = Kid::spawn("security_locks_barrier_party", &name, BOUND);
    kid.expect_line("arriving");
    common::eventually("the party arrived", BOUND, || b.n_waiting() == 1);
    let f = segment(&name);
    let ns = read_u32(&f, PAYLOAD + BARRIER_ARRIVED_NS);
    assert_eq!(ns, pid_ns(), "the party recorded its namespace");
    write_u32(&f, PAYLOAD + BARRIER_ARRIVED_NS, ns ^ 0x5a5a);
    kid.kill();
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || b2.wait());
    std::thread::sleep(SHORT);
    assert!(
        !b.broken(),
        "a party from another pid namespace was judged dead by our /proc"
    );
    // The third party arrives: the barrier trips for both live waiters.
    let mine = bounded("the last party", BOUND, move || b.wait());
    assert!(mine.is_ok(), "{mine:?}");
    let theirs = waiter.join().unwrap();
    assert!(theirs.is_ok(), "{theirs:?}");
}

/// Ring offsets (src/queue/ring/mod.rs): config line (ns at 12), tail at 64, slots after a 384-byte header.
const RING_NS: u64 = 12;
const RING_TAIL: u64 = 64;
const RING_SLOTS: u64 = 384;

/// A producer claimed slot 0 and died before publishing; a later message sits in slot 1. In a ring that
/// a process of another pid namespace attached to, the dead claimer cannot be judged: `get` times out
/// rather than tombstoning the slot. In a ring of one namespace, the claim is abandoned and the later
/// message delivered.
fn queue_foreign_namespace() {
    let name = common::unique_name("queue-ns");
    let q = Queue::<u64, Raw>::create(&name, 4, 8).unwrap();
    let f = segment(&name);
    let ns = read_u32(&f, PAYLOAD + RING_NS);
    assert_eq!(ns, pid_ns(), "the creator recorded its namespace");
    // Slot 0: { seq 0, who = a dead tid } (a producer's claim); tail moved on to stamp 1.
    let dead = dead_pid();
    write_u64(&f, PAYLOAD + RING_SLOTS, u64::from(dead));
    write_u64(&f, PAYLOAD + RING_TAIL, 1);
    q.put(&42).unwrap();
    write_u32(&f, PAYLOAD + RING_NS, u32::MAX); // another namespace attached
    assert!(
        matches!(q.get_timeout(SHORT), Err(Error::Timeout)),
        "a claimer in a ring shared with another pid namespace was judged dead by our /proc"
    );
    write_u32(&f, PAYLOAD + RING_NS, ns);
    assert_eq!(
        q.get_timeout(BOUND).unwrap(),
        42,
        "control: claim abandoned"
    );
}
