//! Deadlines under garbage (issue 17): whatever another process writes into an object's segment, every
//! `try_*` call returns without waiting, every `*_timeout` call returns by its deadline (plus a small
//! bound), and opening stays a typed answer. Forged ring hints heal: put and get go on working.
//!
//! The victim is this process; the hostile writer writes the segment's file, as any process of the user
//! can. For every kind: every field of its shared layout × nasty values (0, 1, the calling thread's tid,
//! a live foreign tid, a dead tid, 2^31, 2^32, u64::MAX, the segment's size ± 8), hand-made forgeries of
//! whole lock records, and seeded random garbage (bytes and bit flips) — then each call runs under a
//! watchdog. The watchdog's bounds are generous ([`TRY_BOUND`], [`TIMED_SLACK`]): they prove "no hang"
//! and measure nothing. What a call *returns* under garbage is not asserted — garbage that changes a
//! counter changes the outcome — only that it returns, without a panic.
//!
//! Not covered, by decision: truncating a named segment kills its users with SIGBUS (named segments
//! cannot be sealed; see the README's trust model).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use mproc::codec::Raw;
use mproc::{
    Barrier, BoundedSemaphore, Condition, Event, JoinableQueue, Lock, Queue, RLock, Semaphore,
    Value,
};

use crate::common::{self, say, seed, shm_path, sleep_forever, Kid, Rng, Role};

/// A `try_*` call must return within this (it is "a few milliseconds" at most; the rest is slack for a
/// loaded 2-core machine where a thread can be descheduled for seconds, which a hang still exceeds).
/// Calls with an internal bound of their own (`release`, a guard's drop: 2 s) get it added.
const TRY_BOUND: Duration = Duration::from_secs(15);
/// What a timed call may take beyond its timeout before we call it a hang.
const TIMED_SLACK: Duration = Duration::from_secs(15);
/// The timeout given to timed calls.
const T: Duration = Duration::from_millis(20);
/// The internal bound of `release`, a guard's drop and `forget` (src/sync/raw_lock.rs).
const INTERNAL: Duration = Duration::from_secs(2);
/// Where the payload starts in a segment (`src/region/header.rs`, `PAYLOAD_OFFSET`).
const PAYLOAD: u64 = 128;
/// Seeds of random garbage per kind.
const SEEDS: u64 = 40;

pub const ROLES: &[Role] = &[("hostile_live", live)];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("hostile", name, f);
    vec![
        t("lock_fields_x_nasty_values", || fields(Kind::Lock)),
        t("rlock_fields_x_nasty_values", || fields(Kind::RLock)),
        t("semaphore_fields_x_nasty_values", || {
            fields(Kind::Semaphore)
        }),
        t("bounded_semaphore_fields_x_nasty_values", || {
            fields(Kind::Bounded)
        }),
        t("condition_fields_x_nasty_values", || {
            fields(Kind::Condition)
        }),
        t("barrier_fields_x_nasty_values", || fields(Kind::Barrier)),
        t("event_fields_x_nasty_values", || fields(Kind::Event)),
        t("value_fields_x_nasty_values", || fields(Kind::Value)),
        t("queue_fields_x_nasty_values", || fields(Kind::Queue)),
        t("lock_records_forged", forged_records),
        t("ring_hints_forged_then_put_get_succeed", ring_hints),
        t("random_garbage_many_seeds", random_garbage),
    ]
}

/// Child: a live process in our namespace whose pid the garbage can name.
fn live(_: &str) {
    say("up");
    sleep_forever();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lock,
    RLock,
    Semaphore,
    Bounded,
    Condition,
    Barrier,
    Event,
    Value,
    Queue,
}

/// A field of a shared layout: offset in the payload and width in bytes.
type Field = (&'static str, u64, usize);

/// The fields of each kind's shared layout (`#[repr(C)]` structs in src/sync and src/queue/ring/mod.rs).
fn layout(kind: Kind) -> Vec<Field> {
    let lock: [Field; 3] = [("lock.word", 0, 4), ("lock.ns", 4, 4), ("lock.owner", 8, 8)];
    let mut f: Vec<Field> = Vec::new();
    match kind {
        Kind::Lock | Kind::Value => f.extend(lock),
        Kind::RLock => {
            f.extend(lock);
            f.push(("depth", 16, 4));
        }
        Kind::Semaphore | Kind::Bounded => {
            f.extend(lock);
            f.extend([
                ("value", 16, 4),
                ("max", 20, 4),
                ("sleepers", 24, 4),
                ("releaser_cpu", 28, 4),
                ("last_scan_ms", 32, 8),
                ("journal.active", 40, 4),
                ("journal.value", 44, 4),
                ("journal.slot", 48, 4),
                ("journal.slot_count", 52, 4),
                ("journal.slot_owner", 56, 8),
                ("journal.slot_ns", 64, 4),
                ("holders[0].owner", 72, 8),
                ("holders[0].count", 80, 4),
                ("holders[0].ns", 84, 4),
                ("holders[63].owner", 72 + 63 * 16, 8),
                ("holders[63].count", 80 + 63 * 16, 4),
            ]);
        }
        Kind::Condition => {
            f.extend(lock);
            f.extend([("seq", 16, 4), ("sleepers", 20, 4)]);
        }
        Kind::Barrier => {
            f.extend(lock);
            f.extend([
                ("parties", 16, 4),
                ("count", 20, 4),
                ("round", 24, 4),
                ("last_cpu", 28, 4),
                ("arrived[0]", 32, 8),
                ("arrived[255]", 32 + 255 * 8, 8),
                ("arrived_ns[0]", 2080, 4),
                ("arrived_ns[255]", 2080 + 255 * 4, 4),
            ]);
        }
        Kind::Event => f.extend([("state", 0, 4), ("sleepers", 4, 4), ("setter_cpu", 8, 4)]),
        Kind::Queue => f.extend([
            ("capacity", 0, 4),
            ("slot_size", 4, 4),
            ("closed", 8, 4),
            ("ns", 12, 4),
            ("unfinished", 16, 8),
            ("tail", 64, 8),
            ("head", 128, 8),
            ("items", 192, 4),
            ("space", 256, 4),
            ("done", 320, 4),
            ("slot[0].state", 384, 8),
            ("slot[0].len", 392, 4),
            ("slot[1].state", 384 + 128, 8),
        ]),
    }
    f
}

/// The object under attack, created by name so that its segment's file can be written.
enum Obj {
    Lock(Lock),
    RLock(RLock),
    Semaphore(Semaphore),
    Bounded(BoundedSemaphore),
    Condition(Condition),
    Barrier(Barrier),
    Event(Event),
    Value(Value<u64>),
    Queue(JoinableQueue<u64, Raw>),
}

fn create(kind: Kind, name: &str) -> Obj {
    match kind {
        Kind::Lock => Obj::Lock(Lock::create(name).unwrap()),
        Kind::RLock => Obj::RLock(RLock::create(name).unwrap()),
        Kind::Semaphore => Obj::Semaphore(Semaphore::create(name, 2).unwrap()),
        Kind::Bounded => Obj::Bounded(BoundedSemaphore::create(name, 2).unwrap()),
        Kind::Condition => Obj::Condition(Condition::create(name).unwrap()),
        Kind::Barrier => Obj::Barrier(Barrier::create(name, 2).unwrap()),
        Kind::Event => Obj::Event(Event::create(name).unwrap()),
        Kind::Value => Obj::Value(Value::create(name, 7u64).unwrap()),
        Kind::Queue => {
            // Capacity 4, 8-byte slots: a slot's stride is 128 bytes (the layout above relies on it).
            let q = Queue::<u64, Raw>::create(name, 4, 8).unwrap();
            q.put(&1).unwrap();
            q.put(&2).unwrap();
            Obj::Queue(JoinableQueue::from_queue(q))
        }
    }
}

/// Opens the object again by name (a typed answer, any answer, is fine) and drops what it opened.
fn reopen(kind: Kind, name: &str) {
    let _ = match kind {
        Kind::Lock => Lock::open(name).map(drop),
        Kind::RLock => RLock::open(name).map(drop),
        Kind::Semaphore => Semaphore::open(name).map(drop),
        Kind::Bounded => BoundedSemaphore::open(name).map(drop),
        Kind::Condition => Condition::open(name).map(drop),
        Kind::Barrier => Barrier::open(name).map(drop),
        Kind::Event => Event::open(name).map(drop),
        Kind::Value => Value::<u64>::open(name).map(drop),
        Kind::Queue => Queue::<u64, Raw>::open(name).map(drop),
    };
}

/// Runs `f` (a `try_*` call if `timeout` is `None`) and fails the test if it takes longer than its
/// generous bound. `extra` is an internal bound the call documents (e.g. `release`).
fn watch<R>(what: &str, timeout: Option<Duration>, extra: Duration, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    let bound = match timeout {
        None => TRY_BOUND + extra,
        Some(t) => t + TIMED_SLACK + extra,
    };
    assert!(
        start.elapsed() <= bound,
        "{what}: took {:?}, more than its bound {bound:?} (a hang, or close to one)",
        start.elapsed()
    );
    r
}

/// Every non-blocking, timed and open call of `obj`, each under the watchdog. Guards are dropped at
/// once (their drop is bounded too).
fn exercise(obj: &Obj, kind: Kind, name: &str, what: &str) {
    let w = |call: &str| format!("{what}: {call}");
    match obj {
        Obj::Lock(l) => {
            drop(watch(&w("try_lock"), None, INTERNAL, || l.try_lock()));
            drop(watch(&w("lock_timeout"), Some(T), INTERNAL, || {
                l.lock_timeout(T)
            }));
        }
        Obj::RLock(l) => {
            drop(watch(&w("try_lock"), None, INTERNAL, || l.try_lock()));
            drop(watch(&w("lock_timeout"), Some(T), INTERNAL, || {
                l.lock_timeout(T)
            }));
        }
        Obj::Semaphore(s) => semaphore(s, &w),
        Obj::Bounded(s) => semaphore(s, &w),
        Obj::Condition(c) => {
            drop(watch(&w("try_lock"), None, INTERNAL, || c.try_lock()));
            let g = watch(&w("lock_timeout"), Some(T), INTERNAL, || c.lock_timeout(T));
            let g = match g {
                Ok(g) => Some(g),
                Err(mproc::TryLockError::OwnerDied(e)) => Some(e.into_inner()),
                Err(mproc::TryLockError::WouldBlock) => None,
            };
            if let Some(g) = g {
                let r = watch(&w("wait_timeout"), Some(T), INTERNAL, || {
                    c.wait_timeout(g, T)
                });
                drop(r);
            }
            c.notify_all();
        }
        Obj::Barrier(b) => {
            let _ = watch(&w("wait_timeout"), Some(T), INTERNAL, || b.wait_timeout(T));
            watch(&w("abort"), None, INTERNAL, || b.abort());
            watch(&w("reset"), None, INTERNAL, || b.reset());
            let _ = (b.parties(), b.n_waiting(), b.broken());
        }
        Obj::Event(e) => {
            let _ = watch(&w("wait_timeout"), Some(T), Duration::ZERO, || {
                e.wait_timeout(T)
            });
            let _ = e.is_set();
        }
        // Only blocking calls (lock, get, set): allowed to wait, like behind a live holder.
        Obj::Value(v) => drop(v.handle()),
        Obj::Queue(q) => {
            let inner = q.queue();
            let _ = watch(&w("try_put"), None, Duration::ZERO, || inner.try_put(&9));
            let _ = watch(&w("try_get"), None, Duration::ZERO, || inner.try_get());
            let _ = watch(&w("put_timeout"), Some(T), Duration::ZERO, || {
                q.put_timeout(&10, T)
            });
            let _ = watch(&w("get_timeout"), Some(T), Duration::ZERO, || {
                q.get_timeout(T)
            });
            let _ = watch(&w("join_timeout"), Some(T), Duration::ZERO, || {
                q.join_timeout(T)
            });
            let _ = (inner.len(), inner.is_closed());
        }
    }
    watch(
        &w("open"),
        Some(Duration::from_secs(10)),
        Duration::ZERO,
        || reopen(kind, name),
    );
}

fn semaphore(s: &Semaphore, w: &dyn Fn(&str) -> String) {
    let g = watch(&w("try_acquire"), None, Duration::ZERO, || s.try_acquire());
    watch(&w("drop a permit"), None, INTERNAL, || drop(g));
    let g = watch(&w("acquire_timeout"), Some(T), Duration::ZERO, || {
        s.acquire_timeout(T)
    });
    watch(&w("drop a permit"), None, INTERNAL, || drop(g));
    let _ = watch(&w("release"), None, INTERNAL, || s.release());
    let _ = s.value();
}

fn segment(name: &str) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .expect("open the segment")
}

fn write_field(f: &std::fs::File, (_, at, width): Field, v: u64) {
    let bytes = v.to_ne_bytes();
    f.write_all_at(&bytes[..width], PAYLOAD + at)
        .expect("write garbage");
}

/// This thread's tid.
fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    u64::from(unsafe { libc::gettid() } as u32)
}

fn dead_pid() -> u64 {
    let mut c = std::process::Command::new("true").spawn().expect("spawn");
    let pid = c.id();
    c.wait().expect("wait");
    u64::from(pid)
}

/// Every field of `kind` × the nasty values, each on a fresh object, each call under the watchdog. Runs
/// on its own thread so that a hang fails the test (after a bound) instead of stalling the suite.
fn fields(kind: Kind) {
    let mut kid = Kid::spawn("hostile_live", "", Duration::from_secs(600));
    kid.expect_line("up");
    let live = u64::from(kid.pid());
    let dead = dead_pid();
    common::bounded(
        &format!("{kind:?} fields"),
        Duration::from_secs(600),
        move || {
            let me = gettid();
            for field in layout(kind) {
                let size = {
                    let name = common::unique_name("hostile");
                    let obj = create(kind, &name);
                    let size = std::fs::metadata(shm_path(&name)).expect("segment").len();
                    drop(obj);
                    size
                };
                let nasty = [
                    ("0", 0),
                    ("1", 1),
                    ("own tid", me),
                    ("live tid", live),
                    ("pid 1", 1),
                    ("dead tid", dead),
                    ("2^31", 1 << 31),
                    ("2^32", 1 << 32),
                    ("u64::MAX", u64::MAX),
                    ("size-8", size - 8),
                    ("size+8", size + 8),
                ];
                for (label, v) in nasty {
                    let name = common::unique_name("hostile");
                    let obj = create(kind, &name);
                    let f = segment(&name);
                    write_field(&f, field, v);
                    let what = format!("{kind:?}.{} = {label} ({v:#x})", field.0);
                    exercise(&obj, kind, &name, &what);
                }
            }
        },
    );
    kid.kill();
}

/// Whole lock records forged: the calling thread itself (word, namespace and start time), a live
/// process recorded in our namespace, a dead one recorded in a foreign namespace, a live one with no
/// record. Applied to the lock of every kind that has one.
fn forged_records() {
    common::bounded("forged records", Duration::from_secs(600), || {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let start: u64 = common::stat_fields(&stat)[19].parse().expect("starttime");
        let ns = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self/ns/pid").unwrap().ino() as u32
        };
        let me = gettid() as u32;
        let dead = dead_pid() as u32;
        let records: [(&str, u32, u32, u32, u32); 4] = [
            ("this thread", me, ns, me, start as u32),
            ("pid 1, recorded", 1, ns, 1, 0),
            ("dead, foreign namespace", dead, ns ^ 0x5a5a, dead, 1),
            ("pid 1, no record", 1, 0, 0, 0),
        ];
        for kind in [
            Kind::Lock,
            Kind::RLock,
            Kind::Semaphore,
            Kind::Bounded,
            Kind::Condition,
            Kind::Barrier,
        ] {
            for (label, word, rns, tid, st) in records {
                for waiters in [0, 0x8000_0000u32] {
                    let name = common::unique_name("hostile");
                    let obj = create(kind, &name);
                    let f = segment(&name);
                    f.write_all_at(&rns.to_ne_bytes(), PAYLOAD + 4).unwrap();
                    let owner = (u64::from(tid) << 32) | u64::from(st);
                    f.write_all_at(&owner.to_ne_bytes(), PAYLOAD + 8).unwrap();
                    f.write_all_at(&(word | waiters).to_ne_bytes(), PAYLOAD)
                        .unwrap();
                    let what = format!("{kind:?} lock held by {label} (waiters {waiters:#x})");
                    exercise(&obj, kind, &name, &what);
                }
            }
        }
    });
}

/// Forged `head`/`tail` of a queue holding messages: after the heal, a put succeeds and every message
/// comes out exactly once.
fn ring_hints() {
    common::bounded("ring hints", Duration::from_secs(600), || {
        let me = gettid();
        for (hint, at) in [("tail", 64u64), ("head", 128)] {
            for v in [
                0,
                1,
                3,
                4,
                8,
                0xff,
                me,
                1 << 31,
                (1 << 31) + 64,
                1 << 32,
                u64::MAX,
                1024 - 8,
                1024 + 8,
            ] {
                let what = format!("{hint} = {v:#x}");
                let name = common::unique_name("hostile-ring");
                let q = Queue::<u64, Raw>::create(&name, 4, 8).unwrap();
                for i in 0..3 {
                    q.put(&i).unwrap();
                }
                segment(&name)
                    .write_all_at(&v.to_ne_bytes(), PAYLOAD + at)
                    .unwrap();
                watch(&format!("{what}: try_put"), None, Duration::ZERO, || {
                    q.try_put(&3)
                })
                .unwrap_or_else(|e| panic!("{what}: try_put after the heal: {e}"));
                let mut got = Vec::new();
                for _ in 0..4 {
                    let x = watch(
                        &format!("{what}: get_timeout"),
                        Some(T),
                        Duration::ZERO,
                        || q.get_timeout(Duration::from_secs(5)),
                    );
                    got.push(x.unwrap_or_else(|e| panic!("{what}: get after the heal: {e}")));
                }
                got.sort_unstable();
                assert_eq!(got, [0, 1, 2, 3], "{what}");
                assert!(q.try_get().is_err(), "{what}: a message came out twice");
                q.put(&5).unwrap();
                assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 5, "{what}");
            }
        }
    });
}

/// Seeded random garbage over each kind's payload: random bytes over the whole state, and single bit
/// flips; every call returns under the watchdog and nothing panics. The seed is in every failure message.
fn random_garbage() {
    let base = seed();
    common::bounded("random garbage", Duration::from_secs(900), move || {
        for kind in [
            Kind::Lock,
            Kind::RLock,
            Kind::Semaphore,
            Kind::Bounded,
            Kind::Condition,
            Kind::Barrier,
            Kind::Event,
            Kind::Queue,
        ] {
            let span = layout(kind)
                .iter()
                .map(|&(_, at, width)| at + width as u64)
                .max()
                .unwrap_or(16);
            for n in 0..SEEDS {
                let s = base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                let mut rng = Rng(s);
                let name = common::unique_name("hostile-rnd");
                let obj = create(kind, &name);
                let f = segment(&name);
                if n % 2 == 0 {
                    // Random bytes over the whole state.
                    let bytes: Vec<u8> = (0..span).map(|_| rng.next() as u8).collect();
                    f.write_all_at(&bytes, PAYLOAD).unwrap();
                } else {
                    // One flipped bit.
                    let bit = rng.below(span * 8);
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, PAYLOAD + bit / 8).unwrap();
                    b[0] ^= 1 << (bit % 8);
                    f.write_all_at(&b, PAYLOAD + bit / 8).unwrap();
                }
                let what = format!("{kind:?}, random garbage, seed {s:#x} (base {base:#x})");
                exercise(&obj, kind, &name, &what);
            }
        }
    });
}
