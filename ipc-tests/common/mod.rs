//! Helpers shared by the multi-process tests: child roles, unique names, bounded waits, leak checks.
//!
//! The parent side of a child process is [`Kid`]; what a child role uses to talk back is in [`role`];
//! `/proc` readers are in [`procfs`]; reproducible randomness is in [`random`].

mod kid;
mod procfs;
mod random;
mod role;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

pub use kid::Kid;
#[cfg(feature = "async")]
pub use procfs::start_time;
pub use procfs::{children, live_children, stat, stat_fields};
pub use random::{next_random, seed, Rng};
pub use role::{fields, handle_from_hex, handle_to_hex, say, sleep_forever, wait_for_start};

/// A child program: its name and the function it runs with its argument string.
pub type Role = (&'static str, fn(&str));

const ROLE_VAR: &str = "MPROC_TEST_ROLE";
const ARG_VAR: &str = "MPROC_TEST_ARG";
const RUN_VAR: &str = "MPROC_TEST_RUN";

/// If this process was started by [`spawn_role`], runs the role and exits.
pub fn run_role_if_child(tables: &[&[Role]]) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let arg = std::env::var(ARG_VAR).unwrap_or_default();
    for (name, f) in tables.iter().flat_map(|t| t.iter()) {
        if *name == role {
            f(&arg);
            std::process::exit(0);
        }
    }
    eprintln!("unknown test role {role:?}");
    std::process::exit(99);
}

/// Starts this test binary again as the child program `role`, with `arg`.
pub fn spawn_role(role: &str, arg: &str) -> Child {
    spawn_role_under(&[], role, arg)
}

/// As [`spawn_role`], through the program `wrapper` (its name and arguments, which end with this test
/// binary's path: `unshare ... <exe>`, say); none if empty.
pub fn spawn_role_under(wrapper: &[&str], role: &str, arg: &str) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(exe),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
    };
    cmd.env(ROLE_VAR, role)
        .env(ARG_VAR, arg)
        .env(RUN_VAR, run_tag())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn test child")
}

/// Runs `role` with `arg` in a child process, which must exit 0 within `bound`.
#[track_caller]
/// As [`run_role_ok`], with `env` added to the role's environment (names std's `set_var` would
/// refuse, like `=odd`, reach the role through `exec` all the same).
pub fn run_role_with_env_ok(role: &str, env: &[(&str, &str)], bound: Duration) {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(ROLE_VAR, role)
        .env(ARG_VAR, "")
        .env(RUN_VAR, run_tag())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn test child");
    let status = wait_bounded(&mut child, bound);
    assert!(status.success(), "role {role} failed: {status}");
}

pub fn run_role_ok(role: &str, arg: &str, bound: Duration) {
    let mut child = spawn_role(role, arg);
    let status = wait_bounded(&mut child, bound);
    assert!(status.success(), "role {role} failed: {status}");
}

/// A test named `module::name` that runs `f`.
pub fn trial(module: &str, name: &str, f: fn()) -> Trial {
    Trial::test(format!("{module}::{name}"), move || {
        f();
        Ok(())
    })
}

/// The tag every name made by this run carries, so the leak check finds exactly our leftovers.
pub fn run_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // Children inherit the tag of the test run that started them (spawn_role passes it on).
    TAG.get_or_init(|| {
        std::env::var(RUN_VAR).unwrap_or_else(|_| format!("ipc{}", std::process::id()))
    })
    .clone()
}

/// A fresh region name for a test, carrying the run tag.
pub fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{what}-{}", run_tag(), N.fetch_add(1, Ordering::Relaxed))
}

/// The file behind the named segment `name` (the library prefixes names with `mproc.`).
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/mproc.{name}"))
}

/// `target/<profile>/examples/<name>`, next to `target/<profile>/deps/` where this test binary lives,
/// or in `$MPROC_EXAMPLES_DIR` if set (CI runs the examples built with the `shipped` profile this way).
pub fn example(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MPROC_EXAMPLES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .expect("current_exe")
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in target/<profile>/deps")
            .join("examples"),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "example binary {} not found: build it with `cargo build --examples` (or run plain `cargo test`, \
         which builds examples before the tests)",
        path.display()
    );
    path
}

/// Waits for a child with a generous bound (proves "no hang", asserts no speed); kills it if it overstays.
pub fn wait_bounded(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not finish within {bound:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `f` on a thread and returns its result, panicking if it takes longer than `bound` (a hang).
#[track_caller]
pub fn bounded<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("{what}: no result within {bound:?}, it hangs"),
        Err(RecvTimeoutError::Disconnected) => match h.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

/// Polls `cond` until it holds or a generous bound expires; panics on expiry.
pub fn eventually(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The `mproc.` entries of `/dev/shm` now.
pub fn shm_entries() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("mproc."))
        .collect()
}

/// What this run left behind: `/dev/shm` entries with our tag; entries without it (the blocks and
/// anchors of queues, `mproc.q<id>-…`, are named by the queue, not the test) that were not there
/// before the run (`before`) and are still there after a grace for clean-ups that finish in other
/// processes; and zombie children.
pub fn leftovers(before: &std::collections::BTreeSet<String>) -> Vec<String> {
    // With its dash: `ipc123` alone would also match the names of a run `ipc1234` at the same time.
    let tag = format!("{}-", run_tag());
    let new_untagged = || -> Vec<String> {
        shm_entries()
            .into_iter()
            .filter(|n| !n.contains(&tag) && !before.contains(n))
            .collect()
    };
    let start = std::time::Instant::now();
    let mut untagged = new_untagged();
    while !untagged.is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        untagged = new_untagged();
    }
    let mut out: Vec<String> = shm_entries()
        .into_iter()
        .filter(|n| n.contains(&tag))
        .collect();
    out.extend(untagged);
    out.extend(
        procfs::child_pids()
            .into_iter()
            .map(|pid| format!("child process {pid}")),
    );
    out
}
