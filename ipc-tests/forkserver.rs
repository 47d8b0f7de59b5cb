//! The fork server start method: results, panics with their line, signals, exit codes, big arguments;
//! a parent running four extra threads (two of them holding locks); a server killed mid-way (a typed
//! error, then a restart, never a hang); children dying with the requesting process; no leaked
//! process, descriptor or `/dev/shm` segment.
//!
//! Every test runs in a role, a process of its own: the fork server lives as long as the process that
//! started it, and the suite's own leak check (no child of the test binary left) must not see it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Process, RegionHandle, StartMethod};

use crate::common::{self, Kid, Role};

pub const ROLES: &[Role] = &[
    ("forkserver_reports", forkserver_reports),
    ("forkserver_threads", forkserver_threads),
    ("forkserver_killed", forkserver_killed),
    ("forkserver_no_leak", forkserver_no_leak),
    ("forkserver_requester", forkserver_requester),
    ("forkserver_environment", forkserver_environment),
    ("forkserver_orphan_unreaped", forkserver_orphan_unreaped),
    ("forkserver_odd_environment", forkserver_odd_environment),
    ("forkserver_stopped", forkserver_stopped),
    ("forkserver_stopped_together", forkserver_stopped_together),
    (
        "forkserver_stopped_child_ended",
        forkserver_stopped_child_ended,
    ),
    (
        "forkserver_stopped_drops_in_turn",
        forkserver_stopped_drops_in_turn,
    ),
];

/// How long a role may take before we call it a hang (proves "no hang", asserts no speed).
const BOUND: Duration = Duration::from_secs(300);

pub fn tests() -> Vec<Trial> {
    let role = |name: &'static str, role: &'static str| {
        Trial::test(format!("forkserver::{name}"), move || {
            common::run_role_ok(role, "", BOUND);
            Ok(())
        })
    };
    vec![
        role("reports_values_panics_signals_exits", "forkserver_reports"),
        role("parent_with_four_threads", "forkserver_threads"),
        role("server_killed_midway_then_restarted", "forkserver_killed"),
        role(
            "a_stopped_server_is_an_error_not_a_hang",
            "forkserver_stopped",
        ),
        role(
            "a_start_stopped_with_its_server_succeeds_once_both_continue",
            "forkserver_stopped_together",
        ),
        role(
            "a_stopped_server_hangs_no_join_or_drop_of_an_ended_child",
            "forkserver_stopped_child_ended",
        ),
        role(
            "drops_of_ended_children_of_a_stopped_server_wait_out_its_bound_once",
            "forkserver_stopped_drops_in_turn",
        ),
        role("many_processes_no_leak", "forkserver_no_leak"),
        role(
            "children_get_the_parents_current_environment_and_directory",
            "forkserver_environment",
        ),
        role(
            "join_of_an_orphan_reparented_to_this_subreaper_reaps_it",
            "forkserver_orphan_unreaped",
        ),
        Trial::test(
            "forkserver::a_variable_named_with_an_equals_sign_breaks_no_child",
            || {
                common::run_role_with_env_ok(
                    "forkserver_odd_environment",
                    &[("=odd", "x"), ("MPROC_TEST_PLAIN", "y")],
                    BOUND,
                );
                Ok(())
            },
        ),
        Trial::test("forkserver::children_die_with_the_requester", || {
            children_die_with_the_requester();
            Ok(())
        }),
    ]
}

fn start<A, R>(f: fn(A) -> R, a: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    start_with(false, f, a)
}

/// A daemon: killed when dropped unjoined (a non-daemon would be waited for).
fn start_daemon<A, R>(f: fn(A) -> R, a: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    start_with(true, f, a)
}

fn start_with<A, R>(daemon: bool, f: fn(A) -> R, a: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .daemon(daemon)
        .target(f, a)
        .expect("target");
    p.start().expect("start");
    p
}

/// The fork server of this role process: its only child.
fn server_pid() -> i32 {
    let kids = common::live_children();
    assert_eq!(kids.len(), 1, "expected the fork server only: {kids:?}");
    kids[0]
}

/// The children of `pid` (its grandchildren, from this process's view).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn gone(pid: u32) -> bool {
    !matches!(common::stat(pid as i32), Some((s, _)) if s != 'Z')
}

const PANIC_LINE: u32 = line!() + 3;
fn panics(x: u32) -> u32 {
    if x > 0 {
        panic!("boom {x}");
    }
    x
}

fn segfault(_: ()) -> u32 {
    // SAFETY: restoring the default action of SIGSEGV and raising it only ends this (child) process.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV with the default action kills the process")
}

fn sleep_secs(s: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(s));
    s
}

fn add_in_region(h: RegionHandle) -> u64 {
    let r = mproc::Region::from_handle(&h).expect("child re-attaches the region");
    // SAFETY: the region is 8 bytes, 8-aligned (payloads are page-aligned past the header), and only
    // accessed through this atomic.
    let a = unsafe { &*(r.as_ptr() as *const AtomicU64) };
    a.fetch_add(5, Ordering::SeqCst) + 5
}

fn checksum(v: Vec<u8>) -> (usize, u64) {
    (v.len(), v.iter().map(|&b| u64::from(b)).sum())
}

/// Role: everything `Process` reports, as spawn and fork report it.
fn forkserver_reports(_: &str) {
    // A value, and the process's state afterwards.
    let mut p = start(
        |(a, b): (u64, String)| format!("{b}{}", a * 2),
        (21, "x".into()),
    );
    assert_eq!(p.start_method(), StartMethod::ForkServer);
    assert!(p.pid().is_some());
    assert_eq!(p.join().unwrap(), "x42");
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    assert!(matches!(p.join(), Err(Error::ProcessState(_))));

    // A panic, with its message and line.
    let mut p = start(panics, 7);
    match p.join() {
        Err(Error::ProcessPanicked { message, location }) => {
            assert_eq!(message, "boom 7");
            let want = format!("{}:{PANIC_LINE}:", file!());
            assert!(location.starts_with(&want), "{location:?} vs {want}");
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert_eq!(p.exitcode(), Some(101));

    // Signals: raised by the child, and sent by the parent through the pidfd the server handed over.
    let mut p = start(segfault, ());
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGSEGV,
            ..
        })
    ));
    assert_eq!(p.exitcode(), Some(-libc::SIGSEGV));
    let mut p = start(|()| -> u32 { std::process::abort() }, ());
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGABRT,
            ..
        })
    ));
    let mut p = start(sleep_secs, 600);
    assert!(p.is_alive());
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
    p.kill().unwrap(); // reaped by the server already: a no-op through the pidfd, never a stray signal
    let mut p = start(sleep_secs, 600);
    p.kill().unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::ProcessKilled {
            signal: libc::SIGKILL,
            ..
        })
    ));
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));

    // An exit code.
    let mut p = start(|code: i32| -> u32 { std::process::exit(code) }, 3);
    assert!(matches!(
        p.join(),
        Err(Error::ProcessExited { code: 3, .. })
    ));
    assert_eq!(p.exitcode(), Some(3));

    // Arguments above the inline limit (a sealed memfd) and a large result.
    let big: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
    let want = checksum(big.clone());
    assert_eq!(start(checksum, big).join().unwrap(), want);
    let mut p = start(
        |n: usize| (0..n).map(|i| (i % 7) as u8).collect::<Vec<u8>>(),
        3 << 20,
    );
    let v = p.join().unwrap();
    assert_eq!(v.len(), 3 << 20);
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 7) as u8));

    // A shared region as an argument.
    let r = mproc::Region::anonymous(8).unwrap();
    // SAFETY: as in `add_in_region`.
    let a = unsafe { &*(r.as_ptr() as *const AtomicU64) };
    a.store(10, Ordering::SeqCst);
    assert_eq!(start(add_in_region, r.handle()).join().unwrap(), 15);
    assert_eq!(a.load(Ordering::SeqCst), 15);

    // A daemon dropped unjoined while running: killed, and reaped by the server.
    let p = start_daemon(sleep_secs, 600);
    let pid = p.pid().unwrap();
    drop(p);
    common::eventually("a dropped child is gone", BOUND, || gone(pid));
    let server = server_pid();
    common::eventually("the server has no child left", BOUND, || {
        children_of(server).is_empty()
    });
}

/// Role: a parent running four extra threads, two of which hold a mutex and the stdout lock for the
/// whole test, starts processes from two threads at once; the children print, which a child forked
/// from this parent could not do (stdout's lock would be held forever in it).
fn forkserver_threads(_: &str) {
    static SHARED: Mutex<u32> = Mutex::new(0);
    let stop = Arc::new(AtomicBool::new(false));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let mut extra = Vec::new();
    for i in 0..4 {
        let stop = stop.clone();
        let held = held_tx.clone();
        extra.push(std::thread::spawn(move || match i {
            0 => {
                let _out = std::io::stdout().lock();
                held.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            1 => {
                let _g = SHARED.lock().unwrap();
                held.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            _ => {
                held.send(()).unwrap();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                    std::thread::yield_now();
                }
            }
        }));
    }
    for _ in 0..4 {
        held_rx.recv().unwrap();
    }
    let starters: Vec<_> = (0..2u32)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25u32 {
                    let mut p = start(
                        |x: u32| {
                            println!("child {} prints", std::process::id());
                            x * 2
                        },
                        t * 100 + i,
                    );
                    let r = p.join_timeout(Duration::from_secs(120));
                    assert_eq!(r.unwrap(), (t * 100 + i) * 2);
                }
            })
        })
        .collect();
    for s in starters {
        s.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in extra {
        t.join().unwrap();
    }
}

/// Role: the server is killed while a child runs: the child dies with it, its join is a typed error
/// (never a hang), and the next start restarts the server.
fn forkserver_killed(_: &str) {
    assert_eq!(start(|x: u32| x + 1, 1).join().unwrap(), 2);
    let server = server_pid();
    let mut p = start(sleep_secs, 600);
    let child = p.pid().unwrap();
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    // The child exits with code 125 (death with its parent, the server). Nobody reports it now: where
    // the kernel keeps statuses for pidfds (6.15+) it is read from there, else the loss is an error.
    match p.join() {
        Err(Error::ForkServer(m)) => assert!(m.contains("died"), "{m}"),
        Err(Error::ProcessExited { code: 125, .. }) => assert_eq!(p.exitcode(), Some(125)),
        other => panic!("expected a fork server error or exit code 125, got {other:?}"),
    }
    common::eventually("the child died with its server", BOUND, || gone(child));
    // The join saw the server's death, and let go of it: reaped now, not left a zombie until the
    // next start.
    assert!(
        !std::path::Path::new(&format!("/proc/{server}")).exists(),
        "the dead server {server} was not reaped"
    );
    // Restarted on demand, with a new pid; the dead one is reaped.
    assert_eq!(start(|x: u32| x + 1, 41).join().unwrap(), 42);
    let again = server_pid();
    assert_ne!(again, server);
    // A running child survives nothing of this: kill the new server while a request is pending or
    // right after; whatever the timing, a typed error or a result, never a hang.
    let mut q = start(sleep_secs, 600);
    // SAFETY: as above; `again` is our unreaped child.
    assert_eq!(unsafe { libc::kill(again, libc::SIGKILL) }, 0);
    let mut results = Vec::new();
    for i in 0..20u32 {
        let r = Process::builder()
            .start_method(StartMethod::ForkServer)
            .target(|x: u32| x, i)
            .and_then(|mut p| p.start().and_then(|()| p.join()));
        results.push(r);
    }
    assert!(matches!(
        q.join(),
        Err(Error::ForkServer(_) | Error::ProcessExited { code: 125, .. })
    ));
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(Error::ForkServer(_))),
            "unexpected {r:?}"
        );
    }
    assert!(results.iter().any(|r| r.is_ok()), "never restarted");
}

/// What a child sees of where it runs: its working directory, two variables, and how many result
/// memfds it holds (its own only).
type Surroundings = (
    Result<std::path::PathBuf, String>,
    Option<String>,
    Option<String>,
    usize,
);

fn surroundings(_: ()) -> Surroundings {
    let results = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|l| l.to_string_lossy().contains("mproc-result"))
        .count();
    (
        std::env::current_dir().map_err(|e| format!("{:?}", e.kind())),
        std::env::var("MPROC_TEST_EARLY").ok(),
        std::env::var("MPROC_TEST_LATE").ok(),
        results,
    )
}

/// Role: the server starts with one environment and directory; the parent then changes both. Its
/// next child starts where the parent is and with what it has now, as a spawned child would; before,
/// it got the server's (those of the server's start).
fn forkserver_environment(_: &str) {
    std::env::set_var("MPROC_TEST_EARLY", "before");
    let (_, early, late, results) = start(surroundings, ()).join().unwrap();
    assert_eq!((early.as_deref(), late), (Some("before"), None));
    assert_eq!(results, 1, "a child holds its own result memfd only");
    let dir = std::env::temp_dir().join(common::unique_name("forkserver-cwd"));
    std::fs::create_dir(&dir).unwrap();
    std::env::set_current_dir(&dir).unwrap();
    std::env::remove_var("MPROC_TEST_EARLY");
    std::env::set_var("MPROC_TEST_LATE", "after");
    let (cwd, early, late, results) = start(surroundings, ()).join().unwrap();
    assert_eq!(cwd, Ok(dir.canonicalize().unwrap()));
    assert_eq!((early, late.as_deref()), (None, Some("after")));
    assert_eq!(results, 1);
    // A directory removed since: the child starts in it all the same, as a spawned child does.
    let gone_dir = dir.join("removed");
    std::fs::create_dir(&gone_dir).unwrap();
    std::env::set_current_dir(&gone_dir).unwrap();
    std::fs::remove_dir(&gone_dir).unwrap();
    let mut spawned = Process::new(surroundings, ()).unwrap();
    spawned.start().unwrap();
    let spawned = spawned.join().unwrap();
    assert!(
        spawned.0.is_err(),
        "a removed directory has no path: {spawned:?}"
    );
    assert_eq!(start(surroundings, ()).join().unwrap(), spawned);
    std::env::set_current_dir(std::env::temp_dir()).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

/// Role: a child outlives its dead server and is reparented to this process, a subreaper. Joins with
/// short timeouts end with the child's own value: `join` reaps it, since nobody else will. Before,
/// each timed join started the orphan's reaping wait afresh and answered `Timeout` forever; then
/// (found by review) they ended in a "the fork server died" error, the child left a zombie and its
/// value lost.
fn forkserver_orphan_unreaped(_: &str) {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) changes only this process's orphan handling.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    let mut p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .die_with_parent(false)
        .target(sleep_secs, 1)
        .expect("target");
    p.start().expect("start");
    let server = server_pid();
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    let child = p.pid().expect("started") as i32;
    let end = std::time::Instant::now() + BOUND;
    loop {
        match p.join_timeout(Duration::from_millis(200)) {
            Err(Error::Timeout) => assert!(std::time::Instant::now() < end, "Timeout for good"),
            Ok(v) => {
                assert_eq!(v, 1, "the orphan's own value");
                break;
            }
            other => panic!("the orphan is ours to reap: {other:?}"),
        }
    }
    // It was reaped: no zombie under its pid among our children.
    // SAFETY: waitpid on a pid, WNOHANG: reaps nothing that is not our child; status unused.
    let r = unsafe { libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1, "the orphan was left for someone else to reap");
    // Reap what this process was given, so the role leaves nothing behind.
    // SAFETY: waitpid(-1) reaps our own children (the dead server); status unused.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

/// Role, run with `=odd=x` in its environment (a name `unsetenv` refuses): fork-server children and
/// pool workers run, with the rest of the environment. Before, each child panicked removing it.
fn forkserver_odd_environment(_: &str) {
    assert!(
        std::env::vars_os().any(|(k, _)| k == "=odd"),
        "the odd name reached the role"
    );
    let (cwd, ..) = start(surroundings, ()).join().expect("a child");
    assert!(cwd.is_ok());
    let plain = start(|_: ()| std::env::var("MPROC_TEST_PLAIN").ok(), ()).join();
    assert_eq!(plain.expect("a child").as_deref(), Some("y"));
    let pool = mproc::Pool::builder()
        .workers(1)
        .start_method(StartMethod::ForkServer)
        .build()
        .expect("pool");
    assert_eq!(pool.apply(|x: u32| x + 1, 1).expect("a worker"), 2);
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Role: 200 processes started and joined, 10 dropped running: no descriptor, process or segment left.
fn forkserver_no_leak(_: &str) {
    assert_eq!(start(|x: u32| x, 0).join().unwrap(), 0);
    let server = server_pid();
    let before = fd_count();
    for i in 0..200u32 {
        let mut p = start(|x: u32| x * 3, i);
        assert_eq!(p.join().unwrap(), i * 3);
    }
    for _ in 0..10 {
        drop(start_daemon(sleep_secs, 600));
    }
    assert_eq!(fd_count(), before, "descriptors leaked");
    common::eventually("the server has no child left", BOUND, || {
        children_of(server).is_empty()
    });
    assert_eq!(common::live_children(), vec![server], "only the server");
    let server_fds = std::fs::read_dir(format!("/proc/{server}/fd"))
        .unwrap()
        .count();
    assert!(server_fds < 16, "the server holds {server_fds} descriptors");
}

/// Role: starts a sleeper through the fork server from a thread that then exits, prints its pid and the
/// server's, then waits to be killed.
fn forkserver_requester(_: &str) {
    let mut p = std::thread::spawn(|| start(sleep_secs, 600))
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    common::say(&format!("{} {}", p.pid().unwrap(), server_pid()));
    let _ = p.join();
    unreachable!("the test kills this process first");
}

fn children_die_with_the_requester() {
    let mut parent = Kid::spawn("forkserver_requester", "", BOUND);
    let line = parent.next_line();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|x| x.parse().expect("two pids"))
        .collect();
    let [child, server] = pids[..] else {
        panic!("expected two pids, got {line:?}")
    };
    assert!(
        !gone(child),
        "the child died with the thread that started it"
    );
    parent.kill_and_wait();
    common::eventually("the server exits with its parent", BOUND, || gone(server));
    common::eventually("the child exits with its requester", BOUND, || gone(child));
}

/// Writes the file `path`: the side effect a task given up on must never have.
fn touch(path: String) {
    std::fs::write(path, b"ran").expect("write the marker");
}

/// Role: found by review: a server that is alive but stopped (or stuck) never closes its sockets, and
/// a start waited for its answer for good (a pool's dispatcher with it, under its lock). The start is
/// a typed error after its bound; the server, continued, serves again, and the request it took late
/// runs none of the task and leaves no child behind: its requester's status socket is closed, so the
/// server drops it without forking (found by review: it forked the child first and killed it only
/// once its answer failed, so part of the task could run).
fn forkserver_stopped(_: &str) {
    assert_eq!(start(|x: u32| x + 1, 1).join().unwrap(), 2);
    let server = server_pid();
    let marker = std::env::temp_dir().join(common::unique_name("forkserver-given-up"));
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    let r = Process::builder()
        .start_method(StartMethod::ForkServer)
        .target(touch, marker.to_str().expect("a UTF-8 temp dir").to_owned())
        .and_then(|mut p| p.start());
    match r {
        Err(Error::ForkServer(m)) => assert!(m.contains("stopped or stuck"), "{m}"),
        other => panic!("expected a fork server error, got {other:?}"),
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGCONT) }, 0);
    // The server takes requests in order: this one is served after the late one was.
    assert_eq!(start(|x: u32| x + 1, 41).join().unwrap(), 42);
    assert_eq!(server_pid(), server, "the server was replaced");
    common::eventually("the late request's child is gone", BOUND, || {
        children_of(server).is_empty()
    });
    let ran = std::fs::remove_file(&marker).is_ok();
    assert!(!ran, "the task of a start given up on ran");
}

/// Role: a start in flight when its process and the server are both stopped (job control's Ctrl-Z, a
/// batch scheduler's suspend, a cgroup freezer) for longer than the start's bound succeeds once both
/// are continued. Found by review: the bound counted the time this process was stopped as the
/// server's, so the start failed ("stopped or stuck") as soon as this process ran again, before the
/// server, continued with it, had its turn. Here the server is stopped first (so the request waits
/// for it), this process 1 s later for 22 s (past the 20 s bound), and the server continued 0.5 s
/// after this process: it was unresponsive for 0.5 s of this process's time.
fn forkserver_stopped_together(_: &str) {
    assert_eq!(start(|x: u32| x + 1, 1).join().unwrap(), 2);
    let server = server_pid();
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    let me = std::process::id();
    let mut stopper = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 1; kill -STOP {me}; sleep 22; kill -CONT {me}; sleep 0.5; kill -CONT {server}"
        ))
        .spawn()
        .expect("run sh");
    let r = Process::builder()
        .start_method(StartMethod::ForkServer)
        .target(|x: u32| x + 1, 2)
        .and_then(|mut p| {
            p.start()?;
            p.join()
        });
    // Whatever the start did, the server runs again once the stopper is done.
    let done = stopper.wait().expect("wait for sh");
    assert!(done.success(), "the stopper failed: {done}");
    assert_eq!(r.unwrap(), 3);
}

/// Role: found by review: a join (or the drop of a `Process`, which a pool's background thread does
/// for its dead workers) of a child whose server is alive but stopped waited for the server's report
/// for good, although the child had ended. Now, once the child's pidfd says it ended, the report is
/// waited for within the same bound as a start's answer: a typed error, and a drop that returns. The
/// child ends here by a kill while the server is stopped; continued, the server reaps both children,
/// and a second join of the first reports how it really ended.
fn forkserver_stopped_child_ended(_: &str) {
    assert_eq!(start(|x: u32| x + 1, 1).join().unwrap(), 2);
    let server = server_pid();
    let mut joined = start(sleep_secs, 3600);
    let dropped = start_daemon(sleep_secs, 3600);
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    joined.kill().expect("kill through the pidfd");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    // Concurrently: each waits out the bound (20 s of running time) once.
    let dropper = std::thread::spawn(move || {
        drop(dropped);
        tx2.send(None).expect("the test waits");
    });
    let joiner = std::thread::spawn(move || {
        let r = joined.join();
        tx.send(Some(r.map(drop))).expect("the test waits");
        joined
    });
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        // Generous: only a hang takes this long.
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(o) => outcomes.push(o),
            Err(_) => {
                // SAFETY: as above; let the server go so that the role's process can end.
                unsafe { libc::kill(server, libc::SIGCONT) };
                panic!("a join or drop hung on a stopped server (got {outcomes:?})");
            }
        }
    }
    dropper.join().expect("dropper");
    let mut joined = joiner.join().expect("joiner");
    match outcomes.into_iter().flatten().next() {
        Some(Err(Error::ForkServer(m))) => assert!(m.contains("stopped or stuck"), "{m}"),
        other => panic!("expected a fork server error, got {other:?}"),
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGCONT) }, 0);
    // A start's answer tells that the server runs again (the waits above marked it unresponsive, and
    // a wait for a marked server's report gives up after one slice).
    assert_eq!(start(|x: u32| x + 1, 41).join().unwrap(), 42);
    // The report comes once the server runs: the join was not spent.
    match joined.join() {
        Err(Error::ProcessKilled { signal, .. }) => assert_eq!(signal, libc::SIGKILL),
        other => panic!("expected the child killed, got {other:?}"),
    }
    assert_eq!(server_pid(), server, "the server was replaced");
    common::eventually("the server reaped every child", BOUND, || {
        children_of(server).is_empty()
    });
}

/// Role: found by review: a pool torn down while its server is stopped drops its dead workers one
/// after another, and each drop waited the whole bound (20 s of running time) for its report: three
/// took a minute, bounded but like a hang. Now the first drop finds the server unresponsive and the
/// next ones give up after one short slice. Continued, the server serves again (a start's answer
/// clears the mark) and reaps every child.
fn forkserver_stopped_drops_in_turn(_: &str) {
    assert_eq!(start(|x: u32| x + 1, 1).join().unwrap(), 2);
    let server = server_pid();
    let mut ended: Vec<_> = (0..3).map(|_| start_daemon(sleep_secs, 3600)).collect();
    // SAFETY: kill(2) on our own unreaped child (the server): its pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    for p in &mut ended {
        p.kill().expect("kill through the pidfd");
    }
    let began = std::time::Instant::now();
    for p in ended {
        drop(p);
    }
    let took = began.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGCONT) }, 0);
    // One bound (20 s) and two short slices; generous: three bounds would be 60 s.
    assert!(
        took < Duration::from_secs(45),
        "three drops waited {took:?}: each waited out the bound"
    );
    assert_eq!(start(|x: u32| x + 1, 41).join().unwrap(), 42);
    assert_eq!(server_pid(), server, "the server was replaced");
    common::eventually("the server reaped every child", BOUND, || {
        children_of(server).is_empty()
    });
}
