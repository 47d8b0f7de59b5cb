//! Locks across processes: a holder killed by SIGKILL (before and while someone waits), mutual exclusion
//! between processes, events, objects passed as serialized handles, and kills at random points of a
//! critical section.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" (DESIGN.md, invariant 4) and
//! never measures speed.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Array, Event, Lock, RLock, TryLockError, Value};

use crate::common::{
    self, bounded, handle_from_hex, handle_to_hex, next_random, say, sleep_forever, wait_for_start,
    Kid, Role,
};

/// How long anything may take before we call it a hang.
const BOUND: Duration = Duration::from_secs(30);
/// What a child writes into a `Value` before it is killed holding its lock.
const CHILD_MARK: u64 = 0xdead_beef;
/// Increments each counting child makes.
const INCREMENTS: u64 = 20_000;
/// Counting children.
const COUNTERS: usize = 4;
/// Rounds of the kill-at-a-random-point test.
const KILL_ROUNDS: usize = 20;

pub const ROLES: &[Role] = &[
    ("locks_hold_lock", hold_forever::<Lock>),
    ("locks_hold_rlock", hold_forever::<RLock>),
    ("locks_hold_value", hold_forever::<Value<u64>>),
    ("locks_count_value", count_value),
    ("locks_count_array", count_array),
    ("locks_event_wait", event_wait),
    ("locks_event_timeout", event_timeout),
    ("locks_event_pong", event_pong),
    ("locks_by_handle", by_handle),
    ("locks_churn", churn),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("locks", name, f);
    vec![
        t("lock_owner_killed", owner_killed::<Lock>),
        t(
            "lock_owner_killed_while_waiting",
            owner_killed_while_waiting::<Lock>,
        ),
        t("rlock_owner_killed_at_depth_3", owner_killed::<RLock>),
        t(
            "rlock_owner_killed_at_depth_3_while_waiting",
            owner_killed_while_waiting::<RLock>,
        ),
        t("value_owner_killed", owner_killed::<Value<u64>>),
        t(
            "value_owner_killed_while_waiting",
            owner_killed_while_waiting::<Value<u64>>,
        ),
        t(
            "value_mutual_exclusion_between_processes",
            value_mutual_exclusion,
        ),
        t(
            "array_mutual_exclusion_between_processes",
            array_mutual_exclusion,
        ),
        t(
            "event_wakes_waiting_processes",
            event_wakes_waiting_processes,
        ),
        t(
            "event_wait_timeout_when_never_set",
            event_wait_timeout_when_never_set,
        ),
        t(
            "event_ping_pong_between_processes_loses_no_turn",
            event_ping_pong,
        ),
        t(
            "objects_passed_as_serialized_handles",
            objects_passed_as_serialized_handles,
        ),
        t(
            "kill_at_random_points_of_critical_section",
            kill_at_random_points,
        ),
    ]
}

// ------------------------------------------------------------------------------------------------ helpers

/// The kernel thread id of the calling thread (`/proc/thread-self` links to `<pid>/task/<tid>`).
fn this_tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("read /proc/thread-self");
    link.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("tid in /proc/thread-self")
}

/// Whether thread `tid` of this process is inside a `futex` system call, i.e. asleep in a lock (proc(5),
/// `/proc/pid/syscall`: the first field is the syscall number, or `running`).
fn in_futex_wait(tid: u32) -> bool {
    let text =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        == Some(libc::SYS_futex)
}

// ------------------------------------------------------------------------------------ killed holders

/// A robust lockable object, for one generic test of "holder killed → `OwnerDied` once → usable".
trait Robust: Clone + Send + 'static {
    const KIND: &'static str;
    const ROLE: &'static str;
    fn create(name: &str) -> Self;
    fn open(name: &str) -> Self;
    /// In the child: acquires (as deep as the object allows) and never releases.
    fn hold(&self) -> !;
    /// In the parent, after the holder `dead` died: the next `lock` reports it once, the guard excludes
    /// others, and the lock after that is clean.
    fn recover(&self, dead: u32);
}

/// Whether another thread of this process would be refused the lock right now.
fn refused_to_other_thread(f: impl FnOnce() -> bool + Send) -> bool {
    std::thread::scope(|s| s.spawn(f).join().expect("probe thread"))
}

impl Robust for Lock {
    const KIND: &'static str = "lock";
    const ROLE: &'static str = "locks_hold_lock";
    fn create(name: &str) -> Self {
        Lock::create(name).expect("create lock")
    }
    fn open(name: &str) -> Self {
        Lock::open(name).expect("open lock")
    }
    fn hold(&self) -> ! {
        let _g = self.lock().expect("fresh lock in child");
        say("held");
        sleep_forever()
    }
    fn recover(&self, dead: u32) {
        let e = self
            .lock()
            .expect_err("holder was killed: lock() must report OwnerDied");
        assert_eq!(e.dead_tid(), dead, "OwnerDied names the killed child");
        let g = e.into_inner();
        assert!(refused_to_other_thread(|| matches!(
            self.try_lock(),
            Err(TryLockError::WouldBlock)
        )));
        drop(g);
        let g = self
            .lock()
            .expect("OwnerDied is reported once: the next lock is clean");
        drop(g);
        assert!(
            !refused_to_other_thread(|| self.try_lock().is_err()),
            "free after unlock"
        );
    }
}

impl Robust for RLock {
    const KIND: &'static str = "rlock";
    const ROLE: &'static str = "locks_hold_rlock";
    fn create(name: &str) -> Self {
        RLock::create(name).expect("create rlock")
    }
    fn open(name: &str) -> Self {
        RLock::open(name).expect("open rlock")
    }
    fn hold(&self) -> ! {
        let _a = self.lock().expect("fresh rlock in child");
        let _b = self.lock().expect("depth 2");
        let _c = self.lock().expect("depth 3");
        say("held");
        sleep_forever()
    }
    fn recover(&self, dead: u32) {
        let e = self
            .lock()
            .expect_err("holder was killed at depth 3: lock() must report OwnerDied");
        assert_eq!(e.dead_tid(), dead, "OwnerDied names the killed child");
        let outer = e.into_inner();
        let inner = self
            .lock()
            .expect("reentrant acquisition by the new holder is clean");
        assert!(refused_to_other_thread(|| matches!(
            self.try_lock(),
            Err(TryLockError::WouldBlock)
        )));
        drop(inner);
        assert!(
            refused_to_other_thread(|| matches!(self.try_lock(), Err(TryLockError::WouldBlock))),
            "still held at depth 1"
        );
        // The dead holder's depth of 3 must not survive: one release frees the lock.
        drop(outer);
        assert!(
            !refused_to_other_thread(|| self.try_lock().is_err()),
            "depth reset to 1 on takeover"
        );
        drop(
            self.lock()
                .expect("OwnerDied is reported once: the next lock is clean"),
        );
    }
}

impl Robust for Value<u64> {
    const KIND: &'static str = "value";
    const ROLE: &'static str = "locks_hold_value";
    fn create(name: &str) -> Self {
        Value::create(name, 0u64).expect("create value")
    }
    fn open(name: &str) -> Self {
        Value::open(name).expect("open value")
    }
    fn hold(&self) -> ! {
        let mut g = self.lock().expect("fresh value in child");
        *g = CHILD_MARK;
        say("held");
        let _keep = g;
        sleep_forever()
    }
    fn recover(&self, dead: u32) {
        let e = self
            .lock()
            .expect_err("holder was killed: lock() must report OwnerDied");
        assert_eq!(e.dead_tid(), dead, "OwnerDied names the killed child");
        assert_eq!(
            **e.get_ref(),
            CHILD_MARK,
            "the guard shows what the dead holder wrote"
        );
        let mut g = e.into_inner();
        *g = 7;
        drop(g);
        let g = self
            .lock()
            .expect("OwnerDied is reported once: the next lock is clean");
        assert_eq!(*g, 7);
        drop(g);
        assert_eq!(self.get(), 7);
    }
}

fn hold_forever<T: Robust>(name: &str) {
    T::open(name).hold()
}

/// The child locks and is SIGKILLed; then the parent locks.
fn owner_killed<T: Robust>() {
    let name = common::unique_name(T::KIND);
    let obj = T::create(&name);
    let mut kid = Kid::spawn(T::ROLE, &name, BOUND);
    kid.expect_line("held");
    let dead = kid.pid();
    kid.kill();
    bounded("recover after the holder was killed", BOUND, move || {
        obj.recover(dead)
    });
}

/// The parent is already asleep in `lock()` when the holder is SIGKILLed.
fn owner_killed_while_waiting<T: Robust>() {
    let name = common::unique_name(T::KIND);
    let obj = T::create(&name);
    let mut kid = Kid::spawn(T::ROLE, &name, BOUND);
    kid.expect_line("held");
    let dead = kid.pid();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tid_tx.send(this_tid()).expect("send tid");
        obj.recover(dead);
        let _ = done_tx.send(());
    });
    let tid = tid_rx.recv_timeout(BOUND).expect("waiter thread starts");
    common::eventually("waiter asleep on the futex", BOUND, || in_futex_wait(tid));
    // It is blocked and cannot have acquired: the holder lives.
    assert!(
        matches!(done_rx.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "acquired a held lock"
    );
    kid.assert_running();
    kid.kill();
    match done_rx.recv_timeout(BOUND) {
        Ok(()) => waiter.join().expect("waiter"),
        Err(RecvTimeoutError::Timeout) => {
            panic!("the waiter was not told of the death within {BOUND:?}")
        }
        Err(RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(waiter.join().expect_err("waiter ended without reporting"))
        }
    }
}

// ------------------------------------------------------------------------------------ mutual exclusion

/// Child: `INCREMENTS` non-atomic increments of a `Value<u64>` under its lock.
fn count_value(arg: &str) {
    let (value, go) = arg.split_once(',').expect("value,event");
    let v = Value::<u64>::open(value).expect("open value");
    wait_for_start(go, BOUND);
    for _ in 0..INCREMENTS {
        let mut g = v.lock().expect("no holder dies in this test");
        // A read, then a separate write: only correct under mutual exclusion.
        let x = std::hint::black_box(*g);
        *g = x + 1;
    }
}

/// Child: the same through element 3 of an `Array<u64>`.
fn count_array(arg: &str) {
    let (array, go) = arg.split_once(',').expect("array,event");
    let a = Array::<u64>::open(array).expect("open array");
    assert_eq!(a.len(), 8, "length taken from the region");
    wait_for_start(go, BOUND);
    for _ in 0..INCREMENTS {
        let mut g = a.lock().expect("no holder dies in this test");
        let x = std::hint::black_box(g[3]);
        g[3] = x + 1;
    }
}

fn run_counters(role: &str, object: &str) {
    let go_name = common::unique_name("go");
    let go = Event::create(&go_name).expect("create start event");
    let mut kids: Vec<Kid> = (0..COUNTERS)
        .map(|_| Kid::spawn(role, &format!("{object},{go_name}"), BOUND))
        .collect();
    go.set();
    for k in &mut kids {
        k.join_ok();
    }
}

fn value_mutual_exclusion() {
    let name = common::unique_name("count");
    let v = Value::create(&name, 0u64).expect("create value");
    run_counters("locks_count_value", &name);
    assert_eq!(
        v.get(),
        COUNTERS as u64 * INCREMENTS,
        "an increment was lost: no mutual exclusion"
    );
    assert!(v.lock().is_ok(), "nobody died holding it");
}

fn array_mutual_exclusion() {
    let name = common::unique_name("count");
    let a = Array::<u64>::create(&name, 8).expect("create array");
    run_counters("locks_count_array", &name);
    let mut want = vec![0u64; 8];
    want[3] = COUNTERS as u64 * INCREMENTS;
    assert_eq!(
        a.to_vec(),
        want,
        "an increment was lost, or another element was touched"
    );
}

// ---------------------------------------------------------------------------------------------- events

fn event_wait(name: &str) {
    let e = Event::open(name).expect("open event");
    say("waiting");
    e.wait();
    assert!(e.is_set());
}

fn event_timeout(name: &str) {
    let e = Event::open(name).expect("open event");
    assert!(!e.is_set(), "the parent cleared it");
    assert!(
        !e.wait_timeout(Duration::from_millis(100)),
        "never set: wait_timeout must return false"
    );
    assert!(!e.wait_timeout(Duration::ZERO));
    say("timed out");
    assert!(
        e.wait_timeout(BOUND),
        "set by the parent: wait_timeout must return true"
    );
}

fn event_wakes_waiting_processes() {
    let name = common::unique_name("event");
    let e = Event::create(&name).expect("create event");
    let mut kids: Vec<Kid> = (0..3)
        .map(|_| Kid::spawn("locks_event_wait", &name, BOUND))
        .collect();
    for k in &mut kids {
        k.expect_line("waiting");
    }
    // Give them time to fall asleep (not needed for correctness: set wakes sleepers and spinners alike).
    std::thread::sleep(Duration::from_millis(50));
    for k in &mut kids {
        k.assert_running();
    }
    e.set();
    for k in &mut kids {
        k.join_ok();
    }
}

fn event_wait_timeout_when_never_set() {
    let name = common::unique_name("event");
    let e = Event::create(&name).expect("create event");
    assert!(!e.wait_timeout(Duration::from_millis(10)));
    // Set then cleared before the child looks: it must see "clear".
    e.set();
    e.clear();
    let mut kid = Kid::spawn("locks_event_timeout", &name, BOUND);
    kid.expect_line("timed out");
    e.set();
    kid.join_ok();
}

/// Round trips of the event ping-pong. A lost turn showed within a few thousand (about one in 5 000).
const PING_PONGS: u64 = 50_000;

/// Waits for `e` to be set by the other side, and checks that it was (see `event_ping_pong`).
fn await_turn(e: &Event, side: &str, round: u64) {
    assert!(e.wait_timeout(BOUND), "{side}: no turn in round {round}");
    assert!(
        e.is_set(),
        "{side}: wait returned in round {round} with the flag clear: a set already answered ended it"
    );
    e.clear();
}

fn event_pong(names: &str) {
    let (there, back) = names.split_once(',').expect("two names");
    let (there, back) = (
        Event::open(there).expect("open"),
        Event::open(back).expect("open"),
    );
    for round in 0..PING_PONGS {
        await_turn(&there, "child", round);
        back.set();
    }
}

/// Two processes hand a turn back and forth over two events (set, then wait + clear). Only the side
/// that waits on an event clears it, so a wait must return with the flag set. Found by the sync bench:
/// `set` stored the flag and then bumped a counter, and a waiter that had already answered the flag
/// could start its next wait before the bump, which then ended that wait at once; a turn was lost and
/// both sides waited for good.
fn event_ping_pong() {
    let there_name = common::unique_name("event-there");
    let back_name = common::unique_name("event-back");
    let there = Event::create(&there_name).expect("create event");
    let back = Event::create(&back_name).expect("create event");
    let mut kid = Kid::spawn(
        "locks_event_pong",
        &format!("{there_name},{back_name}"),
        BOUND,
    );
    for round in 0..PING_PONGS {
        there.set();
        await_turn(&back, "parent", round);
    }
    kid.join_ok();
}

// ------------------------------------------------------------------------------------ handles as arguments

type Passed = (Lock, Event, Value<u64>);

fn by_handle(hex: &str) {
    let (lock, release, v): Passed = handle_from_hex(hex).expect("deserialize handles");
    let g = lock.lock().expect("clean lock in child");
    v.set(41);
    say("locked");
    assert!(release.wait_timeout(BOUND), "parent did not release us");
    drop(g);
    // Exit normally while holding it: the parent must hear of it too.
    let g = lock.lock().expect("clean lock in child");
    v.set(42);
    std::mem::forget(g);
}

fn objects_passed_as_serialized_handles() {
    // Anonymous objects: the child reaches them only through the handles (via /proc/<our pid>/fd/<fd>).
    let lock = Lock::new().expect("lock");
    let release = Event::new().expect("event");
    let v = Value::new(0u64).expect("value");
    let hex = handle_to_hex(&(lock.clone(), release.clone(), v.clone()));
    let mut kid = Kid::spawn("locks_by_handle", &hex, BOUND);
    kid.expect_line("locked");
    assert!(
        matches!(lock.try_lock(), Err(TryLockError::WouldBlock)),
        "the child holds the same lock"
    );
    assert_eq!(
        bounded("read value", BOUND, {
            let v = v.clone();
            move || v.get()
        }),
        41
    );
    release.set();
    let dead = kid.pid();
    kid.join_ok();
    bounded("recover after the holder exited", BOUND, move || {
        let e = lock.lock().expect_err("the child exited holding the lock");
        assert_eq!(e.dead_tid(), dead);
        drop(e.into_inner());
        drop(lock.lock().expect("reported once"));
        assert_eq!(v.get(), 42);
    });
}

// ------------------------------------------------------------------------------------ kills at random points

/// Child: keeps the value even outside the critical section, odd halfway through it.
fn churn(name: &str) {
    let v = Value::<u64>::open(name).expect("open value");
    say("ready");
    loop {
        let mut g = v
            .lock()
            .expect("the parent repairs the lock before starting us");
        let x = *g;
        if !x.is_multiple_of(2) {
            // Cannot happen: we got the lock cleanly, so the last holder finished its section.
            eprintln!("churn child saw odd value {x} after a clean lock");
            std::process::exit(3);
        }
        *g = std::hint::black_box(x + 1);
        for _ in 0..std::hint::black_box(50) {
            std::hint::spin_loop();
        }
        *g = x + 2;
    }
}

fn kill_at_random_points() {
    let seed = common::seed();
    let mut rng = seed;
    let name = common::unique_name("churn");
    let v = Value::create(&name, 0u64).expect("create value");
    let mut last = 0u64;
    for round in 0..KILL_ROUNDS {
        let mut kid = Kid::spawn("locks_churn", &name, BOUND);
        kid.expect_line("ready");
        std::thread::sleep(Duration::from_micros(next_random(&mut rng) % 5_000));
        let pid = kid.pid();
        let ctx = format!("round {round}, child {pid}, seed {seed:#x}");
        // Panics if the child ended by itself, e.g. because it saw a torn value after a clean lock.
        kid.kill();
        let v2 = v.clone();
        let ctx2 = ctx.clone();
        let (seen, owner_died) = bounded(&ctx, BOUND, move || {
            let (seen, owner_died) = match v2.lock() {
                Ok(g) => (*g, false),
                Err(e) => {
                    assert_eq!(
                        e.dead_tid(),
                        pid,
                        "{ctx2}: OwnerDied names the killed child"
                    );
                    let mut g = e.into_inner();
                    let seen = *g;
                    // Repair: finish the dead holder's half-done step.
                    if seen % 2 != 0 {
                        *g = seen + 1;
                    }
                    (seen, true)
                }
            };
            let g = v2
                .lock()
                .expect("OwnerDied is reported once; the lock is clean again");
            assert_eq!(*g % 2, 0, "{ctx2}: consistent after repair");
            (seen, owner_died)
        });
        assert!(
            seen >= last,
            "{ctx}: the counter went back from {last} to {seen}"
        );
        assert!(
            seen % 2 == 0 || owner_died,
            "{ctx}: saw the torn value {seen} but lock() did not report OwnerDied"
        );
        last = seen;
    }
    assert!(v.lock().is_ok(), "usable after {KILL_ROUNDS} kills");
}
