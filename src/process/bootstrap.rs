//! The child's side: the pre-main constructor, the task and outcome wire format, the spawn adapter, the
//! panic hook, and the death-with-parent watcher.
//!
//! ## The environment contract
//! A program that links mproc behaves exactly as without it unless its own parent spawned it. The
//! constructor looks at one variable, `MPROC_SPAWN_CHILD=<parent pid>:<task fd>:<key fd>:<result fd>`:
//! - absent: return; `main` runs.
//! - present in a process with `AT_SECURE` (setuid, setgid, file capabilities): ignored entirely, as if
//!   absent; such a program must not let its caller's environment choose what it runs.
//! - present, but its key descriptor is not a socket made by the process it names with our uid, gid
//!   and supplementary groups (a stray or forged value, or credentials changed on the way, by a
//!   setgid wrapper or one that grants a group, say: no spawning parent made it for us): it is
//!   removed, and `main` runs as without mproc.
//! - present otherwise: it is removed, and the child accepts a task only if *all* of these hold, else it
//!   prints one line to stderr and exits with code 126, having written to no file:
//!   the pid is `getppid()`; the key descriptor is a socket whose peer (`SO_PEERCRED`) is that parent
//!   with our uid, gid and groups and holds a 16-byte key and the task's MAC under it; the task descriptor is
//!   a memfd of our uid sealed against writes, shrinking and growing, of at most [`MAX_TASK_BYTES`],
//!   whose bytes verify under that MAC (the memfd was writable by others until sealed); the task
//!   decodes; its function reference verifies under the key (see [`fnref`](super::fnref)); the result
//!   descriptor is an empty unsealed memfd of our uid. Only then is anything written: one byte back on
//!   the key socket (the ack a parent of a child that may outlive it waits for,
//!   `channel::wait_for_ack`), then the result memfd.
//!
//! ## Wire format
//! The task memfd holds one frame: `b"MPRCTSK2"`, the body length as a little-endian `u64`, then the
//! [`SpawnTask`] in postcard. The child writes one frame `b"MPRCOUT1"`, length, [`Outcome`] into the result
//! memfd. A child that dies half-way through writing leaves a short frame, which the parent rejects on its
//! length, then reports how the child ended instead. A memfd never blocks a writer, so a result of any
//! size cannot deadlock parent and child the way a full pipe can; the parent reads at most
//! [`MAX_RESULT_BYTES`] of it.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::arg::ProcessArg;
use super::fnref::{AdapterKind, Content, FnAddr, FnKey, FnRef, LocalFn};
use crate::sys::channel;
use crate::sys::process::{self as psys, ExeId};

/// The environment variable that marks a spawned child (see the module docs for its contract).
pub(crate) const ENV_VAR: &str = "MPROC_SPAWN_CHILD";
pub(crate) const TASK_MAGIC: [u8; 8] = *b"MPRCTSK2";
const OUT_MAGIC: [u8; 8] = *b"MPRCOUT1";

/// The largest task file a child reads (the encoded argument of a spawned function).
pub(crate) const MAX_TASK_BYTES: u64 = 1 << 30;
/// The largest outcome a parent reads back (the encoded result of a spawned function).
pub(crate) const MAX_RESULT_BYTES: u64 = 1 << 30;

/// Exit code of a child whose parent died while it ran (death-with-parent).
pub(crate) const EXIT_ORPHANED: i32 = 125;
/// Exit code of a child that could not read (or refused) its task: there is nobody to tell.
const EXIT_NO_TASK: i32 = 126;
/// Exit code after a panic, as Rust's own runtime uses.
pub(crate) const EXIT_PANIC: i32 = 101;

/// What a spawned child is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SpawnTask {
    /// The parent's executable: the child must be running the same file.
    pub exe: ExeId,
    /// The user's `fn(A) -> R` and its adapter, authenticated with the key of the key socket.
    pub func: FnRef,
    /// The postcard-encoded argument.
    pub args: Vec<u8>,
    /// The parent's pid, for the death-with-parent watcher.
    pub parent_pid: u32,
    /// Whether the child exits when its parent dies.
    pub die_with_parent: bool,
}

/// Why a child could not run or report its function, short of a panic.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The argument bytes did not decode as `A` (type name, reason).
    ArgDecode(String, String),
    /// The result could not be encoded.
    ResultEncode(String),
    /// The child runs a different executable file than its parent.
    ExeMismatch(String),
    /// The child could not set itself up (a thread that did not start, ...).
    Setup(String),
}

/// What a child reports back.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The function returned; its postcard-encoded result.
    Value(Vec<u8>),
    /// The function panicked.
    Panic { message: String, location: String },
    /// The function could not be run or its result not reported.
    Failed(Failure),
}

/// The adapter kind of spawn targets: decodes `A`, calls the `fn(A) -> R`, encodes `R`.
///
/// The argument bytes are `&'static`: a child runs one call and exits, so its caller hands over bytes
/// it never frees (`Vec::leak`), and a borrowed argument (`&str` decoded in place, `&T` leaked by
/// `arg::Decode`) lives until the process ends, whatever the function keeps of it.
pub(crate) struct SpawnKind;

impl AdapterKind for SpawnKind {
    type Adapter = fn(FnAddr, &'static [u8]) -> Result<Vec<u8>, Failure>;
    const DOMAIN: u64 = 0x6d70_7370_6177_6e01; // "mpspawn" 1
    const NAME: &'static str = "spawn";
}

/// A spawn target: `f` paired with the adapter for its types.
pub(crate) fn spawn_fn<A: ProcessArg<M>, M, R: Serialize>(f: fn(A) -> R) -> LocalFn<SpawnKind> {
    // SAFETY: `spawn_adapter::<A, M, R>` calls its address as a `fn(A) -> R`, which `f` is.
    unsafe { LocalFn::<SpawnKind>::pair(f as usize, spawn_adapter::<A, M, R>) }
}

/// Decodes `A`, calls the `fn(A) -> R` at `func`, encodes `R`.
///
/// `A` may borrow (`&'a str`, `&'a T`) with any `'a`, and `f` need not accept every lifetime (a
/// `fn(&'static str)` is a valid `fn(A) -> R`): what `A` borrows is never freed in this process (see
/// [`SpawnKind`]), so it outlives `'a` whatever `'a` is.
fn spawn_adapter<A: ProcessArg<M>, M, R: Serialize>(
    func: FnAddr,
    args: &'static [u8],
) -> Result<Vec<u8>, Failure> {
    // SAFETY: this adapter is paired only with a `fn(A) -> R` for these `A` and `R` (`spawn_fn`).
    let f = unsafe { func.get::<fn(A) -> R>() };
    let a: A = A::decode_kept(args)
        .map_err(|e| Failure::ArgDecode(std::any::type_name::<A>().to_owned(), e.to_string()))?;
    let r = f(a);
    postcard::to_allocvec(&r).map_err(|e| Failure::ResultEncode(e.to_string()))
}

pub(crate) fn spawn_frame(magic: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&magic);
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// The body of a complete frame with this magic, or `None`.
pub(crate) fn spawn_unframe(magic: [u8; 8], bytes: &[u8]) -> Option<&[u8]> {
    let (head, body) = bytes.split_at_checked(16)?;
    let len = u64::from_le_bytes(head[8..16].try_into().ok()?);
    (head[..8] == magic && body.len() as u64 == len).then_some(body)
}

/// The length a frame header announces, if the magic is right (to cap a read before making it).
pub(crate) fn announced_len(magic: [u8; 8], head: &[u8; 16]) -> Option<u64> {
    (head[..8] == magic).then(|| u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")))
}

pub(crate) fn encode_spawn_task(task: &SpawnTask) -> Vec<u8> {
    // Encoding a struct of integers and byte vectors into a Vec cannot fail.
    spawn_frame(
        TASK_MAGIC,
        &postcard::to_allocvec(task).expect("a task always encodes"),
    )
}

/// The magic of an outcome frame.
pub(crate) const OUTCOME_MAGIC: [u8; 8] = OUT_MAGIC;

/// Reads a child's outcome from the bytes of its result file; `None` if it left no complete report.
/// The body must be exactly one outcome: the child writes nothing else, so bytes left over mean
/// someone else wrote the frame (`postcard::from_bytes` ignored them).
pub(crate) fn decode_outcome(bytes: &[u8]) -> Option<Outcome> {
    crate::codec::postcard_exact(spawn_unframe(OUT_MAGIC, bytes)?).ok()
}

// ------------------------------------------------------------------------------------------- the child

/// The descriptor the child publishes its outcome into (-1: this process is not an mproc child).
static RESULT_FD: AtomicI32 = AtomicI32::new(-1);
/// Whether the panic hook already published a panic (so the unwinding path does not overwrite it).
static PANIC_PUBLISHED: AtomicBool = AtomicBool::new(false);
/// The thread that runs the child's task (0 before [`run_child`]): only its panics are the task's.
static TASK_TID: AtomicU32 = AtomicU32::new(0);

fn publish(outcome: &Outcome) -> bool {
    let fd = RESULT_FD.load(Ordering::Acquire);
    if fd < 0 {
        return false;
    }
    let Ok(body) = postcard::to_allocvec(outcome) else {
        return false;
    };
    psys::replace_contents(fd, &spawn_frame(OUT_MAGIC, &body)).is_ok()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => (*s).to_owned(),
        (None, Some(s)) => s.clone(),
        (None, None) => "Box<dyn Any>".to_owned(),
    }
}

/// Installs, once per process, the hook that reports a child's panic. In an mproc child it publishes the
/// panic (message and location) before anything else, so that it is reported even when the program is
/// built with `panic = "abort"` (the parent then sees the report and a SIGABRT; the report wins). In any
/// other process it hands the panic to the hook that was installed before it.
///
/// Called by a spawned child at start (a fresh, single-threaded process) and by a parent *before* it
/// forks, never in a forked child: `set_hook` takes a lock that another thread of the parent may hold
/// at the moment of a fork (review H4).
pub(crate) fn install_child_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if RESULT_FD.load(Ordering::Acquire) < 0 {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let location = info.location().map_or_else(
                || "<unknown>".to_owned(),
                |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
            );
            // Another thread's panic is the task's outcome only if it ends the process (abort); with
            // unwinding, the task may catch it (a joined thread's `Err`) and go on to return a value.
            let tid = crate::sys::proc::tid();
            let the_task_s = cfg!(panic = "abort") || TASK_TID.load(Ordering::Acquire) == tid;
            let text = format!(
                "mproc: child process {}{} panicked at {location}:\n{message}\n",
                std::process::id(),
                if the_task_s {
                    String::new()
                } else {
                    format!(", thread {tid}")
                }
            );
            psys::write_stderr_raw(text.as_bytes());
            if the_task_s && publish(&Outcome::Panic { message, location }) {
                PANIC_PUBLISHED.store(true, Ordering::Release);
            }
        }));
    });
}

/// The result descriptor [`run_child`] reports to in this process (-1 before it runs): in a child the
/// fork server forked, still the *server's* until the child's own `run_child` replaces it.
pub(crate) fn result_fd() -> RawFd {
    RESULT_FD.load(Ordering::Acquire)
}

/// Runs a child's function and returns the exit code; the outcome is published into `result_fd`.
/// Shared by spawned and forked children. Takes no lock that the parent's other threads could have held
/// at a fork: the hook was installed before the fork, and publishes with raw `write(2)` calls.
pub(crate) fn run_child(result_fd: RawFd, body: impl FnOnce() -> Result<Vec<u8>, Failure>) -> i32 {
    RESULT_FD.store(result_fd, Ordering::Release);
    TASK_TID.store(crate::sys::proc::tid(), Ordering::Release);
    let outcome = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Outcome::Value(value),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(payload) => {
            // The hook published message and location, unless someone replaced it: then report what
            // the payload says.
            if !PANIC_PUBLISHED.load(Ordering::Acquire) {
                publish(&Outcome::Panic {
                    message: panic_message(&*payload),
                    location: "<unknown: the panic hook was replaced>".to_owned(),
                });
            }
            // Dropping a panic payload can itself panic; we are about to exit anyway.
            std::mem::forget(payload);
            return EXIT_PANIC;
        }
    };
    let ok = matches!(outcome, Outcome::Value(_));
    match (publish(&outcome), ok) {
        (true, true) => 0,
        (true, false) => 1,
        // The result could not be written (out of memory for the memfd): the parent sees this code and
        // no report, and says the child exited without a result.
        (false, _) => 3,
    }
}

/// Makes this child exit (code [`EXIT_ORPHANED`]) as soon as the process `parent` has terminated.
/// Process-level, not thread-level: see `sys::process::exit_with_parent`.
pub(crate) fn watch_parent(parent: u32) -> Result<(), Failure> {
    psys::exit_with_parent(parent, EXIT_ORPHANED)
        .map_err(|e| Failure::Setup(format!("cannot arm death with the parent: {e}")))
}

/// The key this spawned child received from its parent over the key socket. A pool worker uses it to
/// authenticate its tasks: the pool spawns its workers with the pool's key.
static SPAWN_KEY: OnceLock<FnKey> = OnceLock::new();

/// The key this process was spawned with, if it is a spawned child.
pub(crate) fn spawn_key() -> Option<FnKey> {
    SPAWN_KEY.get().copied()
}

/// A task accepted from the real parent, with everything checked.
#[derive(Debug)]
struct Accepted {
    task: SpawnTask,
    func: LocalFn<SpawnKind>,
    result: File,
}

/// If this process is a spawned child, runs its task and exits; otherwise returns at once. See the
/// module docs for the environment contract.
pub(crate) fn child_main_if_spawned() {
    let Some(value) = std::env::var_os(ENV_VAR) else {
        return;
    };
    if channel::at_secure() {
        // Privileged by exec (setuid & co.): the environment is the caller's, not our parent's.
        return;
    }
    // Remove it so that programs this child starts are not mistaken for spawned children. Before `main`
    // (from the constructor) the process has a single thread, so nothing reads the environment
    // concurrently; `init()` documents the same requirement.
    std::env::remove_var(ENV_VAR);
    let value = value.to_str().unwrap_or("");
    if !claims_this_process(value) {
        // Not made for us by a spawning parent (a stray or forged variable): behave exactly as without
        // mproc, `main` runs.
        return;
    }
    let accepted = match accept(value) {
        Ok(a) => a,
        Err(why) => {
            psys::write_stderr_raw(
                format!("mproc: refusing the {ENV_VAR} task: {why}\n").as_bytes(),
            );
            std::process::exit(EXIT_NO_TASK);
        }
    };
    install_child_panic_hook();
    // What `main` would have had (SIGPIPE ignored, fds 0-2 open); the fork server's children inherit it.
    channel::prepare_as_rust_main();
    let Accepted {
        mut task,
        func,
        result,
    } = accepted;
    // Kept until `exit`: the argument may borrow from these bytes (see `SpawnKind`).
    let args: &'static [u8] = Vec::leak(std::mem::take(&mut task.args));
    let code = run_child(result.as_raw_fd(), move || {
        if task.die_with_parent {
            watch_parent(task.parent_pid)?;
        }
        let (f, adapter) = func.parts();
        adapter(f, args)
    });
    // `exit` (not `_exit`): this is a fresh process, and its stdout buffer deserves a flush.
    std::process::exit(code);
}

/// Whether the environment value was made for a spawned child at all: its key descriptor is a socket
/// that the process it names made, with our uid, gid and groups (`channel::made_by`). A spawning parent always hands one; a stray or forged
/// value (another program's environment copied, garbage) names none, and then the program must run as
/// if the variable were not there. A value that passes is then checked in full ([`accept`]), and a
/// failure there is a refusal (exit 126): a real child must never fall through to `main`, even when its
/// parent has died since (the socket's credentials still name it).
fn claims_this_process(value: &str) -> bool {
    match parse_env_value(value) {
        Ok([pid, _, key_fd, _]) => {
            u32::try_from(pid).is_ok_and(|pid| pid > 0 && channel::is_socket_of(key_fd, pid))
        }
        Err(_) => false,
    }
}

/// The four numbers of the environment value, `<parent pid>:<task fd>:<key fd>:<result fd>`: the pure
/// parse, which touches no descriptor (`accept` checks what they name).
pub(crate) fn parse_env_value(value: &str) -> Result<[i32; 4], String> {
    let nums: Vec<&str> = value.split(':').collect();
    let [pid, task_fd, key_fd, result_fd] = nums[..] else {
        return Err("malformed value".into());
    };
    let num = |s: &str| {
        s.parse::<i32>()
            .map_err(|_| format!("malformed number {s:?}"))
    };
    Ok([num(pid)?, num(task_fd)?, num(key_fd)?, num(result_fd)?])
}

/// The task in the bytes of a task file, if they are one complete task frame whose body is exactly
/// one task (nothing left over).
pub(crate) fn decode_spawn_task(bytes: &[u8]) -> Option<SpawnTask> {
    crate::codec::postcard_exact(spawn_unframe(TASK_MAGIC, bytes)?).ok()
}

/// Checks everything the environment names (see the module docs) and reads the task. Writes nothing.
fn accept(value: &str) -> Result<Accepted, String> {
    let [pid, task_fd, key_fd, result_fd] = parse_env_value(value)?;
    let parent = channel::parent_pid();
    if pid <= 0 || pid as u32 != parent {
        return Err(format!(
            "it names process {pid}, but this process's parent is {parent}"
        ));
    }
    let packet = channel::read_key(key_fd, parent)?;
    let key = FnKey::from_bytes(packet.key);
    let bytes = channel::read_task(task_fd, MAX_TASK_BYTES)?;
    if key.content_mac(Content::SpawnTask, &bytes) != packet.task_mac {
        return Err("the task is not the one the parent wrote (its MAC does not verify)".into());
    }
    let task = decode_spawn_task(&bytes).ok_or("the task does not decode")?;
    let func = task
        .func
        .resolve::<SpawnKind>(&key)
        .map_err(|e| e.to_string())?;
    let result = channel::adopt_result(result_fd)?;
    // Set once, before any user code of this process runs.
    let _ = SPAWN_KEY.set(key);
    let here = psys::current_exe_id().map_err(|e| e.to_string())?;
    if !same_executable(&here, &task.exe) {
        // Authentic, but another file (cannot happen when we exec'd our parent's /proc/self/exe): say so
        // through the result channel, which is now known to be our parent's.
        RESULT_FD.store(result.as_raw_fd(), Ordering::Release);
        publish(&Outcome::Failed(Failure::ExeMismatch(format!(
            "parent ran {:?}, child runs {here:?}",
            task.exe
        ))));
        std::process::exit(1);
    }
    // Every check passed: a parent that lets us outlive it may go now.
    channel::send_ack(&packet);
    Ok(Accepted { task, func, result })
}

/// Whether `here` (this child's executable) is the file `parent` (its parent's, when it first spawned)
/// names: same device, inode and size. The times are not compared: `touch`, `cp -p` onto the file or
/// a backup tool restoring times change them while the program runs, and the parent caches its
/// identity at its first spawn, so comparing them failed every later spawn of the process with
/// `ExecutableMismatch` (found by review) though the child runs the very file its parent runs. Device
/// and inode are that file for as long as the parent runs it (a running executable's inode cannot be
/// freed and reused), and its bytes cannot change meanwhile: writing to or truncating a file that is
/// being executed fails with `ETXTBSY`.
fn same_executable(here: &ExeId, parent: &ExeId) -> bool {
    here.dev == parent.dev && here.ino == parent.ino && here.size == parent.size
}

/// The pre-main constructor: the dynamic loader calls every function pointer in `.init_array` before
/// `main`, in every executable that links this object. `Process::start` refers to this static, so the
/// linker always keeps it in programs that can spawn.
#[used]
#[link_section = ".init_array"]
pub(crate) static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn constructor() {
    // Unwinding out of an `extern "C"` function aborts; `run_child` catches every panic of the task.
    child_main_if_spawned();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u64 {
        u64::from(x) * 2
    }

    #[test]
    fn a_spawn_target_runs_through_its_adapter() {
        let key = FnKey::random();
        let r = spawn_fn(double).sign(&key);
        let (f, adapter) = r.resolve::<SpawnKind>(&key).unwrap().parts();
        let out = adapter(f, Vec::leak(postcard::to_allocvec(&21u32).unwrap())).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 42);
    }

    fn shout(name: &str) -> String {
        name.to_uppercase()
    }

    /// Not higher-ranked: it demands a `'static` borrow, and keeps it.
    fn keep(word: &'static str) -> usize {
        static KEPT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let mut kept = KEPT.lock().unwrap();
        kept.push(word);
        kept.iter().map(|w| w.len()).sum()
    }

    fn first(v: &(u32, String)) -> u32 {
        v.0
    }

    #[test]
    fn borrowed_arguments_run_through_the_adapter() {
        let run = |func: LocalFn<SpawnKind>, args: Vec<u8>| {
            let (f, adapter) = func.parts();
            adapter(f, Vec::leak(args)).unwrap()
        };
        let out = run(spawn_fn(shout), postcard::to_allocvec("bob").unwrap());
        assert_eq!(postcard::from_bytes::<String>(&out).unwrap(), "BOB");
        // The reference `keep` stores stays valid: the bytes it borrows from are never freed.
        let out = run(spawn_fn(keep), postcard::to_allocvec("kept").unwrap());
        assert_eq!(postcard::from_bytes::<usize>(&out).unwrap(), 4);
        let out = run(
            spawn_fn(first),
            postcard::to_allocvec(&(7u32, "x")).unwrap(),
        );
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 7);
    }

    #[test]
    fn frames_check_magic_and_length() {
        let f = spawn_frame(OUT_MAGIC, b"abc");
        assert_eq!(spawn_unframe(OUT_MAGIC, &f), Some(&b"abc"[..]));
        assert_eq!(spawn_unframe(TASK_MAGIC, &f), None);
        assert_eq!(spawn_unframe(OUT_MAGIC, &f[..f.len() - 1]), None);
        assert_eq!(spawn_unframe(OUT_MAGIC, b"short"), None);
        let head: [u8; 16] = f[..16].try_into().unwrap();
        assert_eq!(announced_len(OUT_MAGIC, &head), Some(3));
        assert_eq!(announced_len(TASK_MAGIC, &head), None);
    }

    /// A frame whose body is a valid encoding plus one byte: refused, as a message with a remainder
    /// is everywhere else (found by review: `postcard::from_bytes` ignored the remainder).
    #[test]
    fn an_outcome_or_task_with_a_byte_left_over_is_refused() {
        let with_extra = |magic, body: Vec<u8>| {
            let good = spawn_frame(magic, &body);
            let mut longer = body;
            longer.push(0);
            (good, spawn_frame(magic, &longer))
        };
        let outcome = postcard::to_allocvec(&Outcome::Value(vec![1, 2, 3])).unwrap();
        let (good, bad) = with_extra(OUT_MAGIC, outcome);
        assert!(matches!(decode_outcome(&good), Some(Outcome::Value(v)) if v == [1, 2, 3]));
        assert!(decode_outcome(&bad).is_none());

        let task = SpawnTask {
            exe: crate::sys::process::current_exe_id().unwrap(),
            func: spawn_fn(double).sign(&FnKey::random()),
            args: vec![7],
            parent_pid: 1,
            die_with_parent: true,
        };
        let task = postcard::to_allocvec(&task).unwrap();
        let (good, bad) = with_extra(TASK_MAGIC, task);
        assert!(decode_spawn_task(&good).is_some_and(|t| t.args == [7]));
        assert!(decode_spawn_task(&bad).is_none());
    }

    #[test]
    fn bad_argument_bytes_are_a_decode_failure() {
        let (f, adapter) = spawn_fn(double).parts();
        assert!(matches!(
            adapter(f, &[0xff; 9]), // a `'static` array: nothing to keep alive
            Err(Failure::ArgDecode(..))
        ));
    }

    #[test]
    fn an_executable_is_the_same_file_whatever_its_times() {
        let id = psys::current_exe_id().unwrap();
        let touched = ExeId {
            mtime: id.mtime - 1000,
            mtime_nsec: (id.mtime_nsec + 1) % 1_000_000_000,
            ..id
        };
        assert!(same_executable(&touched, &id));
        let other_files = [
            ExeId {
                ino: id.ino + 1,
                ..id
            },
            ExeId {
                dev: id.dev + 1,
                ..id
            },
            ExeId {
                size: id.size + 1,
                ..id
            },
        ];
        for other in other_files {
            assert!(!same_executable(&other, &id), "{other:?}");
        }
    }

    #[test]
    fn malformed_or_foreign_environments_are_refused_without_writing() {
        for v in ["", "1", "1:2:3", "x:3:4:5", "1:3:4:5:6"] {
            assert!(accept(v).is_err(), "{v:?}");
        }
        // Right shape, but this process's parent did not set it.
        let me = std::process::id();
        assert!(accept(&format!("{me}:3:4:5"))
            .unwrap_err()
            .contains("parent"));
    }
}
