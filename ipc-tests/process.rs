//! Processes: results, panics, signals and exit codes reported precisely; no deadlock, zombie, fd leak or
//! orphan; large results; shared regions as arguments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Process, RegionHandle, StartMethod};

use crate::common::{self, stat_fields, Kid, Role};

pub const ROLES: &[Role] = &[
    ("process_many_no_leak", process_many_no_leak),
    ("process_parent_of_sleeper", process_parent_of_sleeper),
    ("process_launcher_exits_at_once", launcher_exits_at_once),
    ("process_borrowed_forkserver", |_| {
        borrowed_arguments(StartMethod::ForkServer)
    }),
    ("process_broken_pipe_forkserver", |_| {
        broken_pipe_is_an_error_not_a_signal(StartMethod::ForkServer)
    }),
    (
        "process_spawn_without_standard_fds",
        spawn_without_standard_fds,
    ),
    (
        "process_start_with_sigchld_ignored",
        start_with_sigchld_ignored,
    ),
    ("process_spawn_after_touching_exe", spawn_after_touching_exe),
    (
        "process_parent_with_signals_blocked",
        parent_with_signals_blocked,
    ),
    ("process_fork_after_partial_line", fork_after_partial_line),
];

const METHODS: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::Fork];
/// How long a role may take before we call it a hang (proves "no hang", asserts no speed).
const BOUND: Duration = Duration::from_secs(300);

pub fn tests() -> Vec<Trial> {
    let mut t = Vec::new();
    for m in METHODS {
        let tag = format!("{m:?}").to_lowercase();
        let trial = |name: &str, f: fn(StartMethod)| {
            Trial::test(format!("process::{tag}::{name}"), move || {
                f(m);
                Ok(())
            })
        };
        t.push(trial("returns_value", returns_value));
        t.push(trial(
            "panic_reports_message_and_line",
            panic_reports_message_and_line,
        ));
        t.push(trial("abort_reports_sigabrt", abort_reports_sigabrt));
        t.push(trial("segfault_reports_sigsegv", segfault_reports_sigsegv));
        t.push(trial("sigkill_reported", sigkill_reported));
        t.push(trial("exit_code_reported", exit_code_reported));
        t.push(trial(
            "a_panic_the_task_handled_is_not_its_outcome",
            a_panic_the_task_handled_is_not_its_outcome,
        ));
        t.push(trial(
            "no_deadlock_on_locks_held_by_other_threads",
            no_deadlock_on_locks_held_by_other_threads,
        ));
        t.push(trial("large_result_round_trips", large_result_round_trips));
        t.push(trial(
            "region_handle_argument_reattaches",
            region_handle_argument_reattaches,
        ));
        t.push(trial(
            "join_timeout_then_terminate",
            join_timeout_then_terminate,
        ));
        t.push(trial("many_processes_no_zombie_no_fd_leak", |m| {
            run_role_ok("process_many_no_leak", m)
        }));
        t.push(trial("children_die_with_parent", children_die_with_parent));
        t.push(trial(
            "children_that_may_outlive_a_parent_exiting_at_once_run",
            children_outlive_a_parent_exiting_at_once,
        ));
        t.push(trial(
            "dropped_non_daemon_is_waited_for",
            dropped_non_daemon_is_waited_for,
        ));
        t.push(trial(
            "broken_pipe_is_an_error_not_a_signal",
            broken_pipe_is_an_error_not_a_signal,
        ));
    }
    t.push(Trial::test(
        "process::forkserver::broken_pipe_is_an_error_not_a_signal",
        || {
            common::run_role_ok("process_broken_pipe_forkserver", "", BOUND);
            Ok(())
        },
    ));
    t.push(Trial::test(
        "process::spawn_from_a_parent_with_its_standard_descriptors_closed",
        || {
            common::run_role_ok("process_spawn_without_standard_fds", "", BOUND);
            Ok(())
        },
    ));
    t.push(Trial::test(
        "process::fork_and_spawn_refuse_to_start_while_sigchld_is_ignored",
        || {
            common::run_role_ok("process_start_with_sigchld_ignored", "", BOUND);
            Ok(())
        },
    ));
    t.push(Trial::test(
        "process::spawn::still_works_after_the_executable_file_was_touched",
        || {
            spawn_from_a_touched_copy();
            Ok(())
        },
    ));
    t.push(Trial::test(
        "process::fork::dies_with_a_parent_that_blocks_every_signal",
        || {
            dies_with_a_parent_that_blocks_every_signal();
            Ok(())
        },
    ));
    t.push(Trial::test("process::spawn::grandchild_spawns", || {
        grandchild_spawns();
        Ok(())
    }));
    t.push(Trial::test(
        "process::fork::a_partial_line_printed_before_the_fork_is_printed_once",
        || {
            a_partial_line_is_printed_once();
            Ok(())
        },
    ));
    t.push(Trial::test("process::fork::closure_captures", || {
        fork_closure_captures();
        Ok(())
    }));
    t.push(Trial::test("process::state_errors", || {
        state_errors();
        Ok(())
    }));
    for m in METHODS {
        let tag = format!("{m:?}").to_lowercase();
        t.push(Trial::test(
            format!("process::{tag}::borrowed_arguments"),
            move || {
                borrowed_arguments(m);
                Ok(())
            },
        ));
    }
    // In a role: the fork server lives as long as the process that started it.
    t.push(Trial::test(
        "process::forkserver::borrowed_arguments",
        || {
            common::run_role_ok("process_borrowed_forkserver", "", BOUND);
            Ok(())
        },
    ));
    t.push(Trial::test(
        "process::borrowed_argument_diagnostics_name_the_type_and_the_fix",
        || {
            borrowed_argument_diagnostics();
            Ok(())
        },
    ));
    t
}

fn start<A, R>(m: StartMethod, f: fn(A) -> R, a: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut p = Process::builder()
        .start_method(m)
        .target(f, a)
        .expect("target");
    p.start().expect("start");
    p
}

/// Writes to a pipe whose reader is gone: what the write returned, or that it returned.
fn write_to_a_closed_pipe(_: ()) -> String {
    use std::io::Write;
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    match writer.write_all(b"x") {
        Ok(()) => "written".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// A child (and a pool worker) whose task writes to a closed pipe gets `Err(BrokenPipe)`, as the same
/// code gets in the parent: a spawned child's task runs before `main`, so it missed what Rust's
/// runtime sets up there (SIGPIPE ignored) and died of SIGPIPE, and so did the fork server's children.
fn broken_pipe_is_an_error_not_a_signal(m: StartMethod) {
    assert_eq!(write_to_a_closed_pipe(()), "BrokenPipe", "in the parent");
    let mut p = start(m, write_to_a_closed_pipe, ());
    assert_eq!(p.join().expect("no signal"), "BrokenPipe", "{m:?} child");
    if m == StartMethod::Fork {
        return; // pools start workers by spawn or through the fork server only
    }
    let pool = mproc::Pool::builder()
        .workers(1)
        .start_method(m)
        .build()
        .expect("pool");
    assert_eq!(
        pool.apply(write_to_a_closed_pipe, ())
            .expect("the worker lives"),
        "BrokenPipe",
        "{m:?} pool worker"
    );
}

fn returns_value(m: StartMethod) {
    let mut p = start(
        m,
        |(a, b): (u64, String)| format!("{b}{}", a * 2),
        (21, "x".to_owned()),
    );
    assert!(p.pid().is_some());
    assert_eq!(p.join().unwrap(), "x42");
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    assert!(matches!(p.join(), Err(Error::ProcessState(_))));
}

const PANIC_LINE: u32 = line!() + 3;
fn panics(x: u32) -> u32 {
    if x > 0 {
        panic!("boom {x}");
    }
    x
}

fn panic_reports_message_and_line(m: StartMethod) {
    let mut p = start(m, panics, 7);
    match p.join() {
        Err(Error::ProcessPanicked { message, location }) => {
            assert_eq!(message, "boom 7");
            let want = format!("{}:{PANIC_LINE}:", file!());
            assert!(
                location.starts_with(&want),
                "location {location:?}, expected {want}<col>"
            );
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert_eq!(p.exitcode(), Some(101));
}

fn abort_reports_sigabrt(m: StartMethod) {
    let mut p = start(m, |()| -> u32 { std::process::abort() }, ());
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGABRT,
            ..
        })
    ));
    assert_eq!(p.exitcode(), Some(-libc::SIGABRT));
}

fn segfault(_: ()) -> u32 {
    // SAFETY: restoring the default action of SIGSEGV and raising it only ends this (child) process. The
    // default action matters: a forked child inherits std's stack-overflow handler, which would return.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV with the default action kills the process")
}

fn segfault_reports_sigsegv(m: StartMethod) {
    let mut p = start(m, segfault, ());
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGSEGV,
            ..
        })
    ));
    assert_eq!(p.exitcode(), Some(-libc::SIGSEGV));
}

fn sleep_secs(s: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(s));
    s
}

fn sigkill_reported(m: StartMethod) {
    let mut p = start(m, sleep_secs, 600);
    assert!(p.is_alive());
    p.kill().unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGKILL,
            ..
        })
    ));
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
    p.kill().unwrap(); // already reaped: a no-op, never a signal to a recycled pid
}

fn exit_code_reported(m: StartMethod) {
    let mut p = start(m, |code: i32| -> u32 { std::process::exit(code) }, 3);
    assert!(matches!(
        p.join(),
        Err(Error::ProcessExited { code: 3, .. })
    ));
    assert_eq!(p.exitcode(), Some(3));
}

/// A task whose helper thread panics, and which handles that (the join's `Err`) and returns a value,
/// returned that value; one that catches its own panic and then exits with a code of its own exited
/// with it. Until 2026-12-01 both were reported as `ProcessPanicked` (the panic hook published every
/// panic of every thread as the task's outcome; found by review).
fn a_panic_the_task_handled_is_not_its_outcome(m: StartMethod) {
    let mut p = start(
        m,
        |x: u32| -> u32 {
            let helper = std::thread::spawn(|| panic!("a helper's panic, handled"));
            assert!(helper.join().is_err());
            x + 1
        },
        41,
    );
    assert_eq!(p.join().ok(), Some(42));
    let mut p = start(
        m,
        |code: i32| -> u32 {
            let caught = std::panic::catch_unwind(|| panic!("caught by the task itself"));
            assert!(caught.is_err());
            std::process::exit(code)
        },
        3,
    );
    let r = p.join();
    assert!(
        matches!(r, Err(Error::ProcessExited { code: 3, .. })),
        "{r:?}"
    );
}

fn prints_and_returns(x: u32) -> u32 {
    println!(
        "child {} can print while its parent's stdout is locked",
        std::process::id()
    );
    x + 1
}

fn no_deadlock_on_locks_held_by_other_threads(m: StartMethod) {
    static SHARED: Mutex<u32> = Mutex::new(0);
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _out = std::io::stdout().lock();
        let _g = SHARED.lock().unwrap();
        held_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    held_rx.recv().unwrap();
    // A forked child must not touch the locks (the documented caveat); a spawned one may, it has its own.
    let f: fn(u32) -> u32 = match m {
        StartMethod::Spawn | StartMethod::ForkServer => prints_and_returns,
        StartMethod::Fork => |x| x + 1,
    };
    let mut p = start(m, f, 1);
    let r = p.join_timeout(Duration::from_secs(60));
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(r.unwrap(), 2);
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn large_result_round_trips(m: StartMethod) {
    let n = 3 << 20;
    let mut p = start(m, big, n);
    let v = p.join().unwrap();
    assert_eq!(v.len(), n);
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

fn add_in_region(h: RegionHandle) -> u64 {
    let r = mproc::Region::from_handle(&h).expect("child re-attaches the region");
    // SAFETY: the region is 8 bytes, 8-aligned (payloads are page-aligned past the header), and only
    // accessed through this atomic.
    let a = unsafe { &*(r.as_ptr() as *const AtomicU64) };
    a.fetch_add(5, Ordering::SeqCst) + 5
}

fn region_handle_argument_reattaches(m: StartMethod) {
    let r = mproc::Region::anonymous(8).unwrap();
    // SAFETY: as in `add_in_region`.
    let a = unsafe { &*(r.as_ptr() as *const AtomicU64) };
    a.store(10, Ordering::SeqCst);
    let mut p = start(m, add_in_region, r.handle());
    assert_eq!(p.join().unwrap(), 15);
    assert_eq!(a.load(Ordering::SeqCst), 15);
}

fn join_timeout_then_terminate(m: StartMethod) {
    let mut p = start(m, sleep_secs, 600);
    assert!(matches!(
        p.join_timeout(Duration::from_millis(1)),
        Err(Error::Timeout)
    ));
    p.terminate().unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGTERM,
            ..
        })
    ));
}

fn run_role_ok(role: &str, m: StartMethod) {
    common::run_role_ok(role, &format!("{m:?}"), BOUND);
}

fn method_of(arg: &str) -> StartMethod {
    if arg == "Fork" {
        StartMethod::Fork
    } else {
        StartMethod::Spawn
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Role: 200 processes started and joined one after the other, in a process of its own so that the fd
/// count is not disturbed by tests running concurrently.
fn process_many_no_leak(arg: &str) {
    let m = method_of(arg);
    // Warm up once: lazily opened descriptors (none today) would otherwise count as leaks.
    assert_eq!(start(m, |x: u32| x, 0).join().unwrap(), 0);
    let before = fd_count();
    for i in 0..200u32 {
        let mut p = start(m, |x: u32| x * 3, i);
        assert_eq!(p.join().unwrap(), i * 3);
    }
    // And daemons dropped unjoined, running: killed and reaped.
    for _ in 0..10 {
        let mut p = Process::builder()
            .start_method(m)
            .daemon(true)
            .target(sleep_secs, 600)
            .expect("target");
        p.start().expect("start");
        drop(p);
    }
    assert_eq!(fd_count(), before, "descriptors leaked");
    assert_eq!(
        common::children(),
        Vec::<(i32, char)>::new(),
        "children left behind"
    );
}

/// Role: starts a long sleeper from a thread that then exits, prints its pid, then waits to be killed.
fn process_parent_of_sleeper(arg: &str) {
    // Started from a short-lived thread on purpose: death-with-parent must follow the process, not the
    // thread that started the child (the thread's exit re-parents the child and sends it the signal).
    let m = method_of(arg);
    let mut p = std::thread::spawn(move || start(m, sleep_secs, 600))
        .join()
        .unwrap();
    // Give a wrong implementation (one that exits on the thread's death) time to show itself; the test
    // checks the child is still running before it kills us. A pass does not depend on this delay.
    std::thread::sleep(Duration::from_millis(100));
    println!("{}", p.pid().unwrap());
    let _ = p.join();
    unreachable!("the test kills this process first");
}

/// How many children [`launcher_exits_at_once`] starts.
const OUTLIVING: usize = 8;

/// Writes "ran" into `path`.
fn write_ran(path: String) {
    std::fs::write(path, b"ran").expect("write");
}

/// Role: starts [`OUTLIVING`] children that may outlive it, each to write a file into the directory
/// named by the argument (after the method); stops each (SIGSTOP) the moment its `start` returns and
/// prints its pid; exits once all are started. The stop makes the race deterministic: a child that
/// `start` did not wait for is stopped before it checks who its parent is, and checks only after the
/// test lets it go on, with this process long gone.
fn launcher_exits_at_once(arg: &str) {
    let (m, dir) = arg.split_once(' ').expect("method and directory");
    let m = method_of(m);
    for i in 0..OUTLIVING {
        let mut p = Process::builder()
            .start_method(m)
            .die_with_parent(false)
            .target(write_ran, format!("{dir}/{i}"))
            .expect("target");
        p.start().expect("start");
        let pid = p.pid().expect("started");
        // SAFETY: kill(2) on our own unreaped child: its pid cannot have been reused.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        println!("{pid}");
        // Not dropped: a dropped `Process` waits for its child, and the point is not to.
        std::mem::forget(p);
    }
    std::process::exit(0);
}

/// A launcher starts children that may outlive it and exits at once: every child runs its task.
/// Found by review: a spawned child checks that the pid its task names is its parent's before it
/// reads its key, and a parent gone by then (the child reparented) made it refuse its task (about
/// one child in three, for a parent that exits right after `start`). `start` now waits for the child
/// to be past that check.
fn children_outlive_a_parent_exiting_at_once(m: StartMethod) {
    let dir = std::env::temp_dir().join(common::unique_name("outlive"));
    std::fs::create_dir(&dir).unwrap();
    let mut launcher = Kid::spawn(
        "process_launcher_exits_at_once",
        &format!("{m:?} {}", dir.display()),
        BOUND,
    );
    let pids: Vec<i32> = (0..OUTLIVING)
        .map(|_| launcher.next_line().trim().parse().expect("a child's pid"))
        .collect();
    launcher.join_ok();
    for pid in &pids {
        // SAFETY: kill(2) with SIGCONT on a pid the launcher just printed; reparented to init (or
        // a subreaper) when the launcher exited, and stopped, so it has not exited and its pid
        // cannot have been reused.
        assert_eq!(unsafe { libc::kill(*pid, libc::SIGCONT) }, 0);
    }
    let ran = || {
        (0..OUTLIVING).all(|i| std::fs::read(dir.join(i.to_string())).is_ok_and(|b| b == b"ran"))
    };
    // Bounded generously: proves each child ran, asserts no speed. A refused child never writes.
    common::eventually(
        "every child that may outlive its parent ran",
        Duration::from_secs(60),
        ran,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn children_die_with_parent(m: StartMethod) {
    let mut parent = Kid::spawn("process_parent_of_sleeper", &format!("{m:?}"), BOUND);
    let line = parent.next_line();
    let child: u32 = line
        .trim()
        .parse()
        .expect("the role prints its child's pid");
    let start = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    assert_ne!(
        stat_state(&start),
        Some('Z'),
        "the child died with the thread that started it"
    );
    parent.kill_and_wait();
    // Gone = no such process, a zombie (its new parent may not have reaped it yet), or another process
    // that took the pid (different stat line start time). Bounded generously: proves it, asserts no speed.
    let gone = || match std::fs::read_to_string(format!("/proc/{child}/stat")) {
        Err(_) => true,
        Ok(s) => stat_state(&s) == Some('Z') || stat_start(&s) != stat_start(&start),
    };
    common::eventually("orphaned child exits", Duration::from_secs(10), gone);
}

fn stat_state(s: &str) -> Option<char> {
    stat_fields(s).first()?.chars().next()
}

fn stat_start(s: &str) -> Option<String> {
    stat_fields(s).get(19).map(|x| (*x).to_owned())
}

fn spawn_nested(x: u32) -> u32 {
    let mut p = Process::new(|y: u32| y * 10, x).unwrap();
    p.start().unwrap();
    p.join().unwrap() + 1
}

fn grandchild_spawns() {
    let mut p = start(StartMethod::Spawn, spawn_nested, 4);
    assert_eq!(p.join().unwrap(), 41);
}

fn fork_closure_captures() {
    let data: Vec<u64> = (1..=100).collect();
    let mut p = Process::builder()
        .name("summer")
        .fork(move || data.iter().sum::<u64>());
    assert_eq!(p.name(), "summer");
    assert_eq!(p.start_method(), StartMethod::Fork);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 5050);
}

/// Role: prints a line's start without its newline (it stays in stdout's buffer), forks a child that
/// prints a line of its own and exits, then ends the line.
fn fork_after_partial_line(_: &str) {
    print!("partial");
    let mut p = Process::builder().fork(|| println!("child"));
    p.start().expect("start");
    p.join().expect("join");
    println!();
}

/// Found by review: a forked child started with a copy of the parent's stdout buffer, and its own
/// first line flushed the parent's unfinished one a second time. Python flushes before it forks;
/// so does `start` now.
fn a_partial_line_is_printed_once() {
    let mut kid = Kid::spawn("process_fork_after_partial_line", "", BOUND);
    let out = kid.rest().join("\n");
    kid.join_ok();
    assert_eq!(out.matches("partial").count(), 1, "{out:?}");
    assert_eq!(out.matches("child").count(), 1, "{out:?}");
}

fn state_errors() {
    let mut p = Process::new(|x: u32| x, 1).unwrap();
    assert!(p.name().starts_with("Process-"));
    assert!(!p.is_alive());
    assert_eq!(p.exitcode(), None);
    assert!(matches!(p.join(), Err(Error::ProcessState(_))));
    assert!(matches!(p.kill(), Err(Error::ProcessState(_))));
    p.start().unwrap();
    assert!(matches!(p.start(), Err(Error::ProcessState(_))));
    assert_eq!(p.join().unwrap(), 1);
}

/// Writes `path` after a pause: a side effect the parent must not lose by dropping the handle.
fn write_later(path: String) {
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(path, b"done").expect("write the side effect");
}

/// Issue 13: like Python's non-daemon processes, a child whose `Process` is dropped unjoined is waited
/// for, so its work happens; only a daemon is killed.
fn dropped_non_daemon_is_waited_for(m: StartMethod) {
    let path = std::env::temp_dir().join(common::unique_name("side-effect"));
    let p = start(m, write_later, path.display().to_string());
    drop(p);
    let found = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        found.expect("the child's file exists once drop returned"),
        b"done"
    );
}

fn greet(name: &str) -> String {
    format!("hello, {name}")
}

fn checksum(bytes: &[u8]) -> (usize, u64) {
    (bytes.len(), bytes.iter().map(|&b| u64::from(b)).sum())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Settings {
    name: String,
    factors: Vec<u32>,
}

fn describe(s: &Settings) -> String {
    format!("{}:{}", s.name, s.factors.iter().product::<u32>())
}

/// Borrows from the argument bytes in place (`#[serde(borrow)]`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Record<'a> {
    id: u32,
    #[serde(borrow)]
    tag: std::borrow::Cow<'a, str>,
}

fn label(r: Record<'_>) -> String {
    format!("{}#{}", r.tag, r.id)
}

/// Not higher-ranked: demands a `'static` borrow and hands it to a thread that reads it after this
/// function has returned, while the child reports its result and exits. Sound only because the child
/// never frees what its argument borrows.
fn keep_and_read_later(word: &'static str) -> usize {
    std::thread::spawn(move || loop {
        assert!(word.starts_with("kept"));
        std::thread::yield_now();
    });
    word.len()
}

fn run_to_end<A, M, R>(m: StartMethod, f: fn(A) -> R, a: A) -> R
where
    A: mproc::process::ProcessArg<M>,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut p = Process::builder()
        .start_method(m)
        .target(f, a)
        .expect("target");
    p.start().expect("start");
    p.join_timeout(BOUND).expect("join")
}

/// Issue 13: `fn(&str)`, `fn(&[u8])`, `fn(&T)` and borrowing structs run in a child, with every start
/// method, and get exactly what the parent passed.
fn borrowed_arguments(m: StartMethod) {
    assert_eq!(run_to_end(m, greet, "Bob"), "hello, Bob");
    let owned_name = String::from("Alice");
    assert_eq!(run_to_end(m, greet, &owned_name), "hello, Alice");
    // 3 MiB: decoded in place from the child's copy, not limited by any small buffer.
    let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want = (bytes.len(), bytes.iter().map(|&b| u64::from(b)).sum());
    assert_eq!(run_to_end(m, checksum, &bytes), want);
    let settings = Settings {
        name: "s".into(),
        factors: vec![2, 3, 7],
    };
    assert_eq!(run_to_end(m, describe, &settings), "s:42");
    let record = Record {
        id: 9,
        tag: "rec".into(),
    };
    assert_eq!(run_to_end(m, label, record), "rec#9");
    assert_eq!(run_to_end(m, keep_and_read_later, "kept word"), 9);
}

/// Issue 13: the rejected forms fail with mproc's own message, which names the argument type and the
/// fix. Compiles a small program against the mproc library this test binary was built with (rustc
/// only type-checks it: about a second).
fn borrowed_argument_diagnostics() {
    let deps = std::env::current_exe()
        .expect("current exe")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let me = std::fs::metadata(std::env::current_exe().unwrap())
        .and_then(|m| m.modified())
        .expect("mtime");
    // The library this binary linked: the newest `libmproc-*.rlib` not newer than the binary (another
    // feature set may have left others beside it).
    let rlib = std::fs::read_dir(&deps)
        .expect("read deps")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?;
            let t = std::fs::metadata(&p).ok()?.modified().ok()?;
            (name.starts_with("libmproc-") && name.ends_with(".rlib") && t <= me).then_some((t, p))
        })
        .max()
        .map(|(_, p)| p)
        .expect("the mproc rlib beside the test binary");
    let dir = std::env::temp_dir().join(common::unique_name("diagnostics"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("rejected.rs");
    std::fs::write(
        &src,
        r#"
fn square(x: &u64) -> u64 { x * x }
fn total(v: &[f64]) -> f64 { v.iter().sum() }
fn bump(x: &mut u64) { *x += 1 }
fn main() {
    let pool = mproc::Pool::new().unwrap();
    let _ = pool.map(square, &[1, 2, 3]);
    let _ = pool.apply_async(square, &7);
    let v = vec![1.0, 2.0];
    let _ = mproc::Process::new(total, &v);
    let _ = mproc::Process::new(bump, &mut 1);
}
"#,
    )
    .expect("write the program");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--emit=metadata",
        ])
        .arg("--out-dir")
        .arg(&dir)
        .arg("--extern")
        .arg(format!("mproc={}", rlib.display()))
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg(&src)
        .output()
        .expect("run rustc");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the rejected forms compiled");
    for expected in [
        "error[E0277]: `&u64` cannot be the argument of a pool task",
        "the function takes `&u64`",
        "write `fn f(x: T)`, not `fn f(x: &T)`",
        "use `map_with(f, &param, items)`",
        "error[E0277]: `&[f64]` cannot be the argument of a spawned function",
        "for `&[T]` take `Vec<T>`",
        "error[E0277]: `&mut u64` cannot be the argument of a spawned function",
        "for `&mut T` take `T` and return the new value",
    ] {
        assert!(
            stderr.contains(expected),
            "rustc did not say {expected:?}:\n{stderr}"
        );
    }
    // Both pool calls are reported (the message is on the bound every method of the family shares).
    assert_eq!(
        stderr
            .matches("cannot be the argument of a pool task")
            .count(),
        2,
        "{stderr}"
    );
}

/// Role: closes its descriptors 0, 1 and 2, then starts a process of every method and a pool. The
/// channel descriptors it makes next get those numbers; until 2026-12-01 a spawned child found its
/// task descriptor overwritten by `/dev/null` and refused it (exit 126). Exit code 0 on success
/// (nothing can be printed: stdout is closed).
fn spawn_without_standard_fds(_: &str) {
    for fd in 0..3 {
        // SAFETY: closes a standard descriptor of this role's process, which never uses it again (it
        // reports by its exit code only).
        unsafe { libc::close(fd) };
    }
    for m in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ] {
        let mut p = Process::builder()
            .start_method(m)
            .target(double, 21)
            .expect("target");
        p.start().expect("start");
        if p.join().ok() != Some(42) {
            std::process::exit(10);
        }
    }
    let pool = mproc::Pool::builder().workers(1).build().expect("pool");
    if pool.apply(double, 21).ok() != Some(42) {
        std::process::exit(11);
    }
}

/// Role: ignores SIGCHLD (the kernel then reaps children unasked), then tries to start a child by
/// fork and by spawn: both are refused (exit 0). Found by review: fork started one, whose end the
/// kernel reaped, so `is_alive` said true for good and `join` failed with ECHILD.
fn start_with_sigchld_ignored(_: &str) {
    // SAFETY: sets a signal disposition in this role's own process, which starts no child that
    // relies on it (the starts below are expected to be refused).
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let mut p = Process::builder()
            .start_method(m)
            .target(double, 21)
            .expect("target");
        if p.start().is_ok() {
            std::process::exit(20);
        }
    }
}

fn double(x: u32) -> u32 {
    x * 2
}

/// Runs [`spawn_after_touching_exe`] in a private copy of this test binary, whose times it may
/// change without disturbing the tests that run from the original.
fn spawn_from_a_touched_copy() {
    let dir = std::env::temp_dir().join(format!("mproc-touched-exe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("ipc-copy");
    // By `cp`: a descriptor of ours open for writing the copy would be inherited by children other
    // tests' threads fork meanwhile, and running the copy could then fail with ETXTBSY.
    let copied = std::process::Command::new("cp")
        .arg(std::env::current_exe().expect("current_exe"))
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp of the binary failed: {copied}");
    let mut child = std::process::Command::new(&copy)
        .env("MPROC_TEST_ROLE", "process_spawn_after_touching_exe")
        .env("MPROC_TEST_RUN", common::run_tag())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("run the copy");
    let status = common::wait_bounded(&mut child, BOUND);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "role failed: {status}");
}

/// Role (in a copy of the test binary): spawns, changes the modification time of its own executable
/// file (as `touch`, `cp -p` onto it or a backup tool restoring times do), and spawns again. Found by
/// review: the parent kept the mtime it saw at its first spawn, every child compared it with the
/// file's new one and refused with `ExecutableMismatch`, for the rest of the parent's life, though
/// the child runs the very same file (its parent's `/proc/self/exe`).
fn spawn_after_touching_exe(_: &str) {
    let run = |x: u32| {
        let mut p = Process::new(double, x).expect("target");
        p.start().expect("start");
        p.join()
    };
    assert_eq!(run(1).expect("before the touch"), 2);
    let exe = std::env::current_exe().expect("current_exe");
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::open(&exe)
        .expect("open the executable")
        .set_modified(when)
        .expect("set its mtime");
    assert_eq!(run(2).expect("after the touch"), 4);
}

/// Role: blocks every signal (as a program does that takes them with `sigwait` or a `signalfd`),
/// then forks a long sleeper that dies with its parent and waits to be killed. The child prints its
/// pid once its function runs, i.e. once its death with the parent is armed.
fn parent_with_signals_blocked(_: &str) {
    // SAFETY: `set` is a local sigset_t filled by sigfillset before pthread_sigmask reads it; this
    // role's process only forks a child and waits to be killed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut p = start(StartMethod::Fork, announce_and_sleep, 600);
    let _ = p.join();
    unreachable!("the test kills this process first");
}

/// Prints this process's pid, then sleeps `s` seconds.
fn announce_and_sleep(s: u64) -> u64 {
    println!("{}", std::process::id());
    std::thread::sleep(Duration::from_secs(s));
    s
}

/// A forked child inherits the signal mask of the thread that forked it. Found by review: with every
/// signal blocked there, the death-with-parent signal stayed pending in the child, which went on
/// running after its parent was killed.
fn dies_with_a_parent_that_blocks_every_signal() {
    let mut parent = Kid::spawn("process_parent_with_signals_blocked", "", BOUND);
    let child: i32 = parent
        .next_line()
        .trim()
        .parse()
        .expect("the child prints its pid");
    let start = std::fs::read_to_string(format!("/proc/{child}/stat")).expect("the child runs");
    parent.kill_and_wait();
    let gone = || match std::fs::read_to_string(format!("/proc/{child}/stat")) {
        Err(_) => true,
        Ok(s) => stat_state(&s) == Some('Z') || stat_start(&s) != stat_start(&start),
    };
    // Generous: proves it, asserts no speed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !gone() {
        // Leave no process behind: the orphan would sleep for ten minutes. Same start time: the pid
        // still names our orphan.
        // SAFETY: kill(2) has no memory-safety preconditions; the pid names the orphan (checked by
        // its start time just above).
        unsafe { libc::kill(child, libc::SIGKILL) };
        panic!("the forked child {child} outlived its killed parent");
    }
}
