//! Pool workers that die (DESIGN.md, "Pool model" and invariant 4; issue 6): a task that SIGKILLs,
//! aborts or segfaults its worker, a task that runs out of address space, and SIGKILLs from outside at
//! random moments of a long map. Each time exactly the items of the dead worker's task fail with
//! `WorkerDied` and the signal, the others succeed, and the pool goes on serving; with
//! `retry_on_worker_death` a task runs once more instead.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Array, Error, Pool, SharedArray, StartMethod, Value};

use crate::common::{self, children, live_children, stat, Rng, Role};
use crate::pool::BOUND;

/// The item whose call kills its worker.
const VICTIM: u32 = 9;
/// Items per chunk in the crash tests: the victim's chunk is items 8..12.
const CHUNK: usize = 4;
/// Items of the crash tests.
const ITEMS: u32 = 24;
/// SIGKILL rounds of the storm, items per round, and items per chunk.
const STORM_ROUNDS: usize = 50;
const STORM_ITEMS: u32 = 16;
const STORM_CHUNK: usize = 2;
/// The address-space limit of the task that allocates until it fails.
const RLIMIT_AS: u64 = 512 << 20;

pub const ROLES: &[Role] = &[
    ("pool_faults_kill_storm", kill_storm_role),
    (
        "pool_faults_forkserver_worker_killed",
        forkserver_worker_killed,
    ),
    (
        "pool_faults_forkserver_server_killed",
        forkserver_server_killed,
    ),
    (
        "pool_faults_no_replacement_can_start",
        no_replacement_can_start_role,
    ),
    ("pool_faults_failing_initializer", failing_initializer_role),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("pool_faults", name, f);
    vec![
        t("sigkill_fails_exactly_that_chunk", || {
            crash_fails_that_chunk(Crash::Kill)
        }),
        t("abort_fails_exactly_that_chunk", || {
            crash_fails_that_chunk(Crash::Abort)
        }),
        t("segfault_fails_exactly_that_chunk", || {
            crash_fails_that_chunk(Crash::Segv)
        }),
        t(
            "queued_chunk_that_never_started_is_not_failed",
            queued_chunk_never_started_is_not_failed,
        ),
        t("retry_on_worker_death_runs_a_task_once_more", retry_once),
        t(
            "worker_sigkilled_after_a_block_answer_delivers_or_fails_it_once",
            block_answer_then_sigkill,
        ),
        t(
            "rlimit_as_out_of_memory_kills_only_the_worker",
            out_of_memory,
        ),
        t("random_sigkill_storm_50_rounds", || {
            let name = common::unique_name("pool-storm");
            common::run_role_ok("pool_faults_kill_storm", &name, BOUND * 2);
        }),
        // Roles: the fork server lives as long as the process that started it.
        t(
            "forkserver_worker_sigkilled_mid_task_is_replaced_through_the_server",
            || {
                let name = common::unique_name("pool-fs-kill");
                common::run_role_ok("pool_faults_forkserver_worker_killed", &name, BOUND * 2);
            },
        ),
        t(
            "a_task_with_no_worker_that_can_start_fails_never_hangs",
            || {
                let name = common::unique_name("pool-no-start");
                common::run_role_ok("pool_faults_no_replacement_can_start", &name, BOUND * 2);
            },
        ),
        t(
            "workers_whose_initializer_fails_are_not_restarted_forever",
            || {
                let name = common::unique_name("pool-bad-init");
                common::run_role_ok("pool_faults_failing_initializer", &name, BOUND * 2);
            },
        ),
        t("forkserver_killed_fails_or_restarts_never_hangs", || {
            let name = common::unique_name("pool-fs-server");
            common::run_role_ok("pool_faults_forkserver_server_killed", &name, BOUND * 2);
        }),
    ]
}

// ------------------------------------------------------------------------------------------- helpers

/// SIGKILLs our child `pid` and waits until it has terminated. False if it was gone already or is no
/// longer our child (the pid was reaped and reused after we listed it).
fn kill_child(pid: i32) -> bool {
    kill_child_of(pid, std::process::id() as i32)
}

/// SIGKILLs `pid`, a child of `parent`, and waits until it has terminated. False if it was gone
/// already or is no longer `parent`'s child.
fn kill_child_of(pid: i32, parent: i32) -> bool {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    use std::os::fd::AsRawFd;
    // From here the descriptor names one process, whatever happens to the pid; check whose it is.
    if stat(pid).map(|(_, ppid)| ppid) != Some(parent) {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a null siginfo (as kill(2) would send) and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    if sent {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a pidfd polls readable once its process has terminated.
        let r = unsafe { libc::poll(&mut p, 1, BOUND.as_millis() as i32) };
        assert_eq!(r, 1, "worker {pid} did not die of SIGKILL within {BOUND:?}");
    }
    sent
}

// ----------------------------------------------------------------------------------- crash by a task

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Crash {
    Kill,
    Abort,
    Segv,
}

impl Crash {
    fn signal(self) -> i32 {
        match self {
            Crash::Kill => libc::SIGKILL,
            Crash::Abort => libc::SIGABRT,
            Crash::Segv => libc::SIGSEGV,
        }
    }
}

/// Ends this worker process the way `how` says.
fn crash(how: Crash) -> ! {
    match how {
        // SAFETY: raising SIGKILL ends this process; no memory is involved.
        Crash::Kill => unsafe {
            libc::raise(libc::SIGKILL);
        },
        Crash::Abort => std::process::abort(),
        Crash::Segv => {
            // Not the null pointer itself: in a debug build `write_volatile` checks its pointer for null
            // and aborts (SIGABRT) before writing. Page 0 is never mapped, so address 8 faults the same.
            let p = std::ptr::null_mut::<u8>().wrapping_add(8);
            // SAFETY: not sound, on purpose: the write faults and the kernel ends this process with
            // SIGSEGV before anything could observe it. The process is a worker made to die here.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    }
    unreachable!("{how:?} did not end the worker")
}

/// Item 0 answers 4 MiB (a block of the worker's heap, `pool::answer`); item 1 kills its worker.
fn answer_then_die((round, x): (u32, u32)) -> Vec<u8> {
    if x == 1 {
        crash(Crash::Kill);
    }
    vec![round as u8; 4 << 20]
}

/// Issue 12: a large answer travels as a block of the worker's heap, which the parent attaches through
/// the worker; a worker SIGKILLed just after answering may be gone before the parent reads the answer.
/// Item 0 then arrives whole, or, if its block could no longer be attached, fails with `WorkerDied`
/// like a task that died with its worker; item 1, which killed it, fails with `WorkerDied` too, having
/// run only once per worker it killed (no retries asked for); no call hangs and the pool goes on.
fn block_answer_then_sigkill() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let (mut arrived, mut lost) = (0, 0);
    for round in 0..12u32 {
        let r = pool
            .map_each(answer_then_die, [(round, 0u32), (round, 1)])
            .unwrap();
        match &r[0] {
            Ok(v) => {
                assert!(v.len() == 4 << 20 && v.iter().all(|&b| b == round as u8));
                arrived += 1;
            }
            Err(_) => {
                assert_died(&r[0], 0, libc::SIGKILL);
                lost += 1;
            }
        }
        assert_died(&r[1], 1, libc::SIGKILL);
    }
    eprintln!("block answers: {arrived} arrived, {lost} died with their worker");
    assert_eq!(
        pool.apply(answer_then_die, (3, 0)).unwrap(),
        vec![3; 4 << 20]
    );
}

fn crash_at_victim((how, x): (Crash, u32)) -> u32 {
    if x == VICTIM {
        crash(how);
    }
    x * 3
}

fn crash_on_chunk_2(c: &[u32]) -> u32 {
    if c.first() == Some(&(2 * CHUNK as u32)) {
        crash(Crash::Kill);
    }
    c.iter().sum()
}

/// Checks `r` is item `i`'s `WorkerDied` with `signal`.
#[track_caller]
fn assert_died<T: std::fmt::Debug>(r: &mproc::Result<T>, i: usize, signal: i32) {
    match r {
        Err(Error::WorkerDied {
            task,
            signal: s,
            exit_code,
        }) => {
            assert_eq!((*task, *s, *exit_code), (i, Some(signal), None), "item {i}");
        }
        other => panic!("item {i}: expected WorkerDied by signal {signal}, got {other:?}"),
    }
}

/// Checks the results of a call over `0..ITEMS` in chunks of [`CHUNK`] whose victim chunk (2) died by
/// `signal`: its items fail with `WorkerDied`, every other chunk gives `3 * i` — except that one later
/// chunk may have failed whole with it: the one queued behind the victim in the dead worker's ring
/// (`queued_chunk_that_never_started_is_not_failed` holds that to be a bug of its own).
#[track_caller]
fn check_victim_chunk(results: &[mproc::Result<u32>], signal: i32) {
    assert_eq!(results.len(), ITEMS as usize);
    let mut queued_behind = 0;
    for (c, chunk) in results.chunks(CHUNK).enumerate() {
        let first = c * CHUNK;
        if c == 2 || (c > 2 && chunk.iter().all(Result::is_err)) {
            for (k, r) in chunk.iter().enumerate() {
                assert_died(r, first + k, signal);
            }
            queued_behind += usize::from(c != 2);
        } else {
            for (k, r) in chunk.iter().enumerate() {
                let i = first + k;
                assert!(matches!(r, Ok(v) if *v == 3 * i as u32), "item {i}: {r:?}");
            }
        }
    }
    assert!(
        queued_behind <= 1,
        "{queued_behind} chunks died besides the victim's"
    );
}

/// A task that kills its worker: the items of that task (chunk) fail with `WorkerDied` and the signal,
/// the other items succeed (see [`check_victim_chunk`]), `map` reports the lowest index, `apply` item 0,
/// `map_chunks` the chunk index, and the pool serves the next calls on replacement workers.
fn crash_fails_that_chunk(how: Crash) {
    let sig = how.signal();
    let pool = Pool::builder().workers(2).build().unwrap();
    let items: Vec<(Crash, u32)> = (0..ITEMS).map(|x| (how, x)).collect();

    let results: Vec<_> = pool
        .imap(crash_at_victim, items.clone(), Some(CHUNK))
        .unwrap()
        .collect();
    check_victim_chunk(&results, sig);

    // `map` reports the lowest failing index.
    let e = pool.map_chunksize(crash_at_victim, items, CHUNK);
    assert_died(&e, 8, sig);
    // `apply`: item 0.
    assert_died(&pool.apply(crash_at_victim, (how, VICTIM)), 0, sig);
    // An array task: the chunk index.
    if matches!(how, Crash::Kill) {
        let a = SharedArray::from_slice(&(0..ITEMS).collect::<Vec<_>>()).unwrap();
        assert_died(&pool.map_chunks(&a, CHUNK, crash_on_chunk_2), 2, sig);
    }

    // Still serving, on replacement workers.
    let fine: Vec<(Crash, u32)> = (100..140).map(|x| (how, x)).collect();
    let expected: Vec<u32> = (100..140).map(|x| x * 3).collect();
    assert_eq!(
        pool.map_chunksize(crash_at_victim, fine, 3).unwrap(),
        expected
    );
}

/// Records that this worker started item `x` (in the array `<name>-started`), then runs
/// [`die_first_times`].
fn record_and_die((name, limit, x): (String, u32, u32)) -> u32 {
    Array::<u32>::open(&format!("{name}-started"))
        .expect("open the start record")
        .set(x as usize, std::process::id());
    die_first_times((name, limit, x))
}

/// A chunk that was only queued behind the victim in the dead worker's ring — it never started, as the
/// start record shows — is not a task the worker was running: it must run (on the replacement), not
/// fail with `WorkerDied`, and it must not use up the one retry of `retry_on_worker_death`. With one
/// worker, the next chunk is (almost always) queued behind the running one when it dies.
fn queued_chunk_never_started_is_not_failed() {
    let name = common::unique_name("pool-queued");
    let runs = Value::<u32>::create(&name, 0).unwrap();
    let started = Array::<u32>::create(&format!("{name}-started"), ITEMS as usize).unwrap();
    let mut wrong = Vec::new();
    for retry in [false, true] {
        runs.set(0);
        started.lock().unwrap_or_else(|e| e.into_inner()).fill(0);
        let pool = Pool::builder()
            .workers(1)
            .retry_on_worker_death(retry)
            .build()
            .unwrap();
        let items: Vec<_> = (0..ITEMS).map(|x| (name.clone(), u32::MAX, x)).collect();
        let results: Vec<_> = pool
            .imap(record_and_die, items, Some(CHUNK))
            .unwrap()
            .collect();
        let record = started.to_vec();
        for (c, chunk) in results.chunks(CHUNK).enumerate() {
            let range = c * CHUNK..(c + 1) * CHUNK;
            if c == 2 {
                for (k, r) in chunk.iter().enumerate() {
                    assert_died(r, range.start + k, libc::SIGKILL);
                }
            } else if !chunk
                .iter()
                .zip(range.clone())
                .all(|(r, i)| matches!(r, Ok(v) if *v == 3 * i as u32))
            {
                wrong.push(format!(
                    "retry {retry}: items {range:?} gave {chunk:?}, started by workers {:?} \
                     (0 = never started)",
                    &record[range.clone()]
                ));
            }
        }
        assert_eq!(
            runs.get(),
            1 + u32::from(retry),
            "retry {retry}: victim runs"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Kills its worker at the victim item, the first `limit` times it gets there (counted in the named
/// value `name`).
fn die_first_times((name, limit, x): (String, u32, u32)) -> u32 {
    if x == VICTIM {
        let runs = Value::<u32>::open(&name).expect("open the run counter");
        let run = {
            let mut g = runs.lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
            *g
        };
        if run <= limit {
            crash(Crash::Kill);
        }
    }
    x * 3
}

/// With `retry_on_worker_death`, a task whose worker died runs once more: a task that kills its worker
/// only the first time succeeds; one that always does fails after exactly two runs.
fn retry_once() {
    let pool = Pool::builder()
        .workers(2)
        .retry_on_worker_death(true)
        .build()
        .unwrap();
    let expected: Vec<u32> = (0..ITEMS).map(|x| x * 3).collect();

    let name = common::unique_name("pool-runs");
    let runs = Value::<u32>::create(&name, 0).unwrap();
    let items: Vec<_> = (0..ITEMS).map(|x| (name.clone(), 1, x)).collect();
    assert_eq!(
        pool.map_chunksize(die_first_times, items, CHUNK).unwrap(),
        expected
    );
    assert_eq!(
        runs.get(),
        2,
        "the victim ran once, died, and ran once more"
    );

    runs.set(0);
    let items: Vec<_> = (0..ITEMS).map(|x| (name.clone(), u32::MAX, x)).collect();
    let results: Vec<_> = pool
        .imap(die_first_times, items, Some(CHUNK))
        .unwrap()
        .collect();
    check_victim_chunk(&results, libc::SIGKILL);
    assert_eq!(runs.get(), 2, "retried exactly once");
    assert_eq!(
        pool.map_chunksize(die_first_times, (0..ITEMS).map(|x| (name.clone(), 0, x)), 5)
            .unwrap(),
        expected
    );
}

// ------------------------------------------------------------------------------------- out of memory

/// Limits this worker's address space to [`RLIMIT_AS`] and allocates (and touches) 16 MiB blocks until
/// an allocation fails, which aborts the process. Returns (failing the test) if 2 GiB fit anyway.
fn eat_memory(x: u64) -> u64 {
    if x != 3 {
        return x;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut lim), 0);
        lim.rlim_cur = RLIMIT_AS.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &lim), 0);
    }
    let mut hoard: Vec<Vec<u8>> = Vec::with_capacity(128);
    for _ in 0..128 {
        hoard.push(vec![1u8; 16 << 20]);
    }
    hoard.len() as u64
}

/// A task that runs out of address space kills its worker with SIGABRT (Rust aborts on allocation
/// failure); the parent gets `WorkerDied` and the pool goes on.
fn out_of_memory() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let results: Vec<_> = pool.imap(eat_memory, 0..8u64, Some(2)).unwrap().collect();
    for (i, r) in results.iter().enumerate() {
        if (2..4).contains(&i) {
            assert_died(r, i, libc::SIGABRT);
        } else {
            assert!(matches!(r, Ok(v) if *v == i as u64), "item {i}: {r:?}");
        }
    }
    assert_died(&pool.apply(eat_memory, 3), 0, libc::SIGABRT);
    assert_eq!(
        pool.map(eat_memory, (10..30).collect::<Vec<_>>()).unwrap(),
        (10..30).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------------------------------- storm

/// Records which worker started item `x` (in the named array), works a little, returns `x² + 7`.
fn slow_item((name, x): (String, u32)) -> u32 {
    let started = Array::<u32>::open(&name).expect("open the start record");
    started.set(x as usize, std::process::id());
    std::thread::sleep(Duration::from_millis(2));
    x * x + 7
}

fn square(x: u32) -> u32 {
    x * x
}

/// Role: 50 rounds of a map of slow-ish tasks while a thread SIGKILLs one worker (a child of this
/// process, where every child is a worker of the pool) at a random moment. Every call returns; an item
/// fails only with `WorkerDied` by SIGKILL, together with its whole chunk, and only if the killed worker
/// is the one that started it (or it never started); every `Ok` is right; after each round the victim
/// is reaped and replaced and a map succeeds; after the drop no child is left.
fn kill_storm_role(name: &str) {
    let started = Array::<u32>::create(name, STORM_ITEMS as usize).unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let seed = common::seed();
    let mut rng = Rng(seed);
    let (mut kills, mut failed_chunks, mut unstarted_chunks) = (0, 0, 0);
    for round in 0..STORM_ROUNDS {
        started.lock().unwrap_or_else(|e| e.into_inner()).fill(0);
        let items: Vec<(String, u32)> = (0..STORM_ITEMS).map(|x| (name.to_owned(), x)).collect();
        let delay = Duration::from_micros(rng.next() % 20_000);
        let pick = rng.next() as usize;
        let (results, victim) = std::thread::scope(|s| {
            let killer = s.spawn(move || {
                std::thread::sleep(delay);
                let live = live_children();
                let pid = *live.get(pick % live.len().max(1))?;
                kill_child(pid).then_some(pid)
            });
            let results: Vec<_> = pool
                .imap(slow_item, items, Some(STORM_CHUNK))
                .unwrap()
                .collect();
            (results, killer.join().unwrap())
        });
        let ctx = format!("seed {seed}, round {round}, victim {victim:?}");
        kills += usize::from(victim.is_some());
        let record = started.to_vec();
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, (i * i + 7) as u32, "{ctx}: item {i}"),
                Err(_) => {
                    assert_died(r, i, libc::SIGKILL);
                    let v = victim.unwrap_or_else(|| panic!("{ctx}: item {i} died, nobody killed"));
                    assert!(
                        record[i] == 0 || record[i] == v as u32,
                        "{ctx}: item {i} was started by {}, which was not killed",
                        record[i]
                    );
                }
            }
        }
        for (c, chunk) in results.chunks(STORM_CHUNK).enumerate() {
            let failed = chunk.iter().filter(|r| r.is_err()).count();
            assert!(
                failed == 0 || failed == chunk.len(),
                "{ctx}: chunk {c} partly failed"
            );
            if failed > 0 {
                failed_chunks += 1;
                let first = c * STORM_CHUNK;
                unstarted_chunks +=
                    usize::from(record[first..first + chunk.len()].iter().all(|&p| p == 0));
            }
        }
        // The victim is reaped and replaced: two live workers, no zombie, the victim gone.
        common::eventually(&format!("{ctx}: victim replaced"), BOUND, || {
            let c = children();
            c.len() == 2 && c.iter().all(|&(p, s)| s != 'Z' && Some(p) != victim)
        });
        assert_eq!(
            pool.map(square, 0..10u32).unwrap(),
            (0..10).map(square).collect::<Vec<_>>(),
            "{ctx}: the pool serves after the kill"
        );
    }
    assert!(kills > 0, "seed {seed}: no kill landed");
    eprintln!(
        "pool kill storm: seed {seed}, {kills} kills, {failed_chunks} failed chunks, \
         {unstarted_chunks} of them never started"
    );
    drop(pool);
    common::eventually("no child after the pool's drop", BOUND, || {
        children().is_empty()
    });
}

// ------------------------------------------------------------------------------- through the fork server

/// A pool whose workers (and their replacements) the fork server starts.
fn forkserver_pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .start_method(StartMethod::ForkServer)
        .build()
        .unwrap()
}

/// The fork server of this role process: its only live child (the workers are the server's children).
fn the_server() -> i32 {
    let kids = live_children();
    assert_eq!(kids.len(), 1, "expected the fork server only: {kids:?}");
    kids[0]
}

/// The children of `pid`, zombies included, with their states.
fn children_of(pid: i32) -> Vec<(i32, char)> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter_map(|p| Some((p, stat(p)?.0)))
        .collect()
}

/// Whether the pool's workers are `n` live children of `server`, none of them in `not`.
fn workers_of(pool: &Pool, server: i32, n: usize, not: &[u32]) -> bool {
    let pids = pool.worker_pids();
    pids.len() == n
        && pids.iter().all(|&p| {
            !not.contains(&p) && matches!(stat(p as i32), Some((s, pp)) if pp == server && s != 'Z')
        })
}

/// Records this worker's pid in the named value, then sleeps until it is killed.
fn sleep_until_killed(name: String) -> u32 {
    Value::<u32>::open(&name)
        .expect("open the pid record")
        .set(std::process::id());
    std::thread::sleep(BOUND * 4);
    0
}

/// Role: through the fork server, a task that SIGKILLs its worker and a worker SIGKILLed from outside
/// in the middle of a task fail exactly as with spawned workers (`WorkerDied` with the signal, for
/// exactly those items); the replacements are forked by the same server, the pool serves on, and after
/// the drop the server has no child left.
fn forkserver_worker_killed(name: &str) {
    let pool = forkserver_pool(2);
    let server = the_server();
    assert!(
        workers_of(&pool, server, 2, &[]),
        "the workers are the server's children"
    );
    let how = Crash::Kill;
    let items: Vec<(Crash, u32)> = (0..ITEMS).map(|x| (how, x)).collect();
    let results: Vec<_> = pool
        .imap(crash_at_victim, items.clone(), Some(CHUNK))
        .unwrap()
        .collect();
    check_victim_chunk(&results, libc::SIGKILL);
    assert_died(
        &pool.map_chunksize(crash_at_victim, items, CHUNK),
        8,
        libc::SIGKILL,
    );
    assert_died(
        &pool.apply(crash_at_victim, (how, VICTIM)),
        0,
        libc::SIGKILL,
    );
    let a = SharedArray::from_slice(&(0..ITEMS).collect::<Vec<_>>()).unwrap();
    assert_died(
        &pool.map_chunks(&a, CHUNK, crash_on_chunk_2),
        2,
        libc::SIGKILL,
    );

    // From outside, while the task runs.
    let record = Value::<u32>::create(name, 0).unwrap();
    let r = pool
        .apply_async(sleep_until_killed, name.to_owned())
        .unwrap();
    common::eventually("the sleeper started", BOUND, || record.get() != 0);
    let victim = record.get();
    assert!(
        kill_child_of(victim as i32, server),
        "worker {victim} is not the server's child"
    );
    assert_died(&r.get(), 0, libc::SIGKILL);
    common::eventually("the victim replaced through the server", BOUND, || {
        workers_of(&pool, server, 2, &[victim])
    });
    assert_eq!(the_server(), server, "the server itself was not restarted");
    let fine: Vec<(Crash, u32)> = (100..140).map(|x| (how, x)).collect();
    assert_eq!(
        pool.map_chunksize(crash_at_victim, fine, 3).unwrap(),
        (100..140).map(|x| x * 3).collect::<Vec<_>>()
    );
    drop(pool);
    common::eventually("the server has no child left", BOUND, || {
        children_of(server).is_empty()
    });
}

/// Role: the fork server is SIGKILLed, once with a task running and once between calls. Its workers
/// die with it; every call returns, each item with its value or `WorkerDied` (never a hang); the
/// workers are replaced through a new server and the pool serves on; after the drop no process is
/// left.
fn forkserver_server_killed(name: &str) {
    let pool = forkserver_pool(2);
    assert_eq!(
        pool.map(square, 0..10u32).unwrap(),
        (0..10).map(square).collect::<Vec<_>>()
    );
    let server = the_server();
    let record = Value::<u32>::create(name, 0).unwrap();
    let r = pool
        .apply_async(sleep_until_killed, name.to_owned())
        .unwrap();
    common::eventually("the sleeper started", BOUND, || record.get() != 0);
    let old = pool.worker_pids();
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    match r.get() {
        Err(Error::WorkerDied { task: 0, .. }) => {}
        other => panic!("expected WorkerDied for the running task, got {other:?}"),
    }
    common::eventually("the workers replaced through a new server", BOUND, || {
        let kids = live_children();
        kids.len() == 1 && kids[0] != server && workers_of(&pool, kids[0], 2, &old)
    });
    let again = the_server();
    assert_eq!(
        pool.map(square, 0..10u32).unwrap(),
        (0..10).map(square).collect::<Vec<_>>()
    );

    // Between calls, then a call at once: whatever the timing, values or `WorkerDied`.
    let old = pool.worker_pids();
    // SAFETY: as above; `again` is our unreaped child.
    assert_eq!(unsafe { libc::kill(again, libc::SIGKILL) }, 0);
    let each = pool.map_each(square, 0..40u32).unwrap();
    for (i, r) in each.iter().enumerate() {
        assert!(
            matches!(r, Ok(v) if *v == square(i as u32))
                || matches!(r, Err(Error::WorkerDied { .. })),
            "item {i}: {r:?}"
        );
    }
    common::eventually("the workers replaced once more", BOUND, || {
        let kids = live_children();
        kids.len() == 1 && kids[0] != again && workers_of(&pool, kids[0], 2, &old)
    });
    assert_eq!(
        pool.map(square, 0..10u32).unwrap(),
        (0..10).map(square).collect::<Vec<_>>()
    );
    let last = the_server();
    drop(pool);
    common::eventually("the server has no child left", BOUND, || {
        children_of(last).is_empty()
    });
}

// --------------------------------------------------------------------- a replacement that cannot start

/// The soft limit on open descriptors, set to `n`.
fn set_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = n.min(lim.rlim_max);
    // SAFETY: setrlimit(2) reads one `rlimit` from the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// Role: the only worker is SIGKILLed while this process can open no descriptor, so no replacement
/// can start (its rings and its spawn need descriptors). A task submitted then must not wait for a
/// worker that may never come: it fails within the bound. Once descriptors can be opened again, a
/// replacement starts and the pool serves again.
fn no_replacement_can_start_role(_: &str) {
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let worker = pool.worker_pids()[0];
    // The lowest free descriptor number: with the soft limit there, no new descriptor can be opened.
    // SAFETY: dup(2) of stdin returns a new descriptor (or -1); we close it at once.
    let lowest = unsafe { libc::dup(0) };
    assert!(lowest > 0);
    // SAFETY: closes the descriptor dup just returned, which nothing else owns.
    unsafe { libc::close(lowest) };
    set_nofile(lowest as u64);
    // SAFETY: kill(2) of our own child worker (not reaped, so the pid is still its); no memory involved.
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGKILL) }, 0);
    // The death is noticed and the replacement fails: no live worker is listed.
    common::eventually("the dead worker is no longer listed", BOUND, || {
        pool.worker_pids().is_empty()
    });
    let pending = pool.apply_async(square, 4).unwrap();
    assert!(
        pending.wait_timeout(BOUND),
        "a task waited {BOUND:?} for a worker that cannot start"
    );
    let r = pending.get();
    assert!(
        matches!(r, Err(Error::Os { .. })),
        "fails with the error the start met: {r:?}"
    );
    set_nofile(4096);
    common::eventually("a replacement starts once it can", BOUND, || {
        pool.worker_pids().len() == 1
    });
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

// ------------------------------------------------------------------------- an initializer that fails

/// The environment variable naming the counter of initializer runs (set by the role).
const BAD_INIT_COUNTER_VAR: &str = "MPROC_POOL_FAULTS_BAD_INIT_COUNTER";

/// An initializer that counts its run, then fails its worker (it exits before serving any task).
fn count_and_fail() {
    let name = std::env::var(BAD_INIT_COUNTER_VAR).expect("the role names the counter");
    let runs = Value::<u32>::open(&name).expect("open the counter in the worker");
    *runs.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    std::process::exit(7);
}

/// Role: a pool whose initializer fails in every worker. Its calls fail (never hang), its close and
/// join end, and it does not start a new worker on every liveness check forever: over [`IDLE`], an
/// idle pool starts only a few.
/// The bound is far above what the restart delays allow (2 workers x (3 at once + 7 doublings to 1 s +
/// 1 a second)), and far below the ~150 a second that restarting at every check reached here.
fn failing_initializer_role(name: &str) {
    const IDLE: Duration = Duration::from_secs(3);
    let runs = Value::<u32>::create(name, 0).unwrap();
    std::env::set_var(BAD_INIT_COUNTER_VAR, name);
    let mut pool = Pool::builder()
        .workers(2)
        .initializer(count_and_fail)
        .build()
        .unwrap();
    let results = pool.map_each(square, 0..40u32).unwrap();
    assert!(results.iter().all(Result::is_err), "{results:?}");
    let before = *runs.lock().unwrap();
    std::thread::sleep(IDLE);
    let started = *runs.lock().unwrap() - before;
    eprintln!("an idle pool whose initializer fails started {started} workers in {IDLE:?}");
    assert!(
        started <= 40,
        "{started} workers started (and failed) in {IDLE:?} of an idle pool"
    );
    // Still no hang: a call fails with how the workers ended.
    let r = pool.apply_async(square, 3).unwrap();
    assert!(r.wait_timeout(BOUND), "a call hung");
    assert!(r.get().is_err());
    // Nor does closing: no worker is waited for that is not there.
    pool.close();
    pool.join().unwrap();
    assert!(pool.worker_pids().is_empty());
}
