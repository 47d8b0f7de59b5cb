//! The child's side: the pre-main constructor, the task and outcome wire format, function references,
//! the panic hook, and the death-with-parent watcher.
//!
//! ## Wire format
//! The parent writes one frame into a fresh memfd: `b"MPRCTSK1"`, the body length as a little-endian
//! `u64`, then the [`Task`] in postcard. The child replaces the file's contents with one frame
//! `b"MPRCOUT1"`, length, [`Outcome`]. A child that dies half-way through writing leaves a short frame,
//! which the parent rejects on its length, then reports how the child ended instead. A memfd never blocks
//! a writer, so a result of any size cannot deadlock parent and child the way a full pipe can.
//!
//! ## Function references
//! A `fn(A) -> R` is sent as its offset from [`anchor`], a function of this crate, together with the
//! offset of [`trampoline::<A, R>`], the monomorphized adapter that decodes `A`, calls the function and
//! encodes `R`. Offsets between two functions of one executable are the same in every process running
//! that executable file, whatever address ASLR loaded it at. The child checks that it runs the same file
//! as its parent (device, inode, size and modification time of `/proc/self/exe`) before it turns an
//! offset back into a pointer; a mismatch is [`Error::ExecutableMismatch`](crate::Error), never a jump.

use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sys::process::{self as psys, ExeId};
use crate::sys::shm;

/// The environment variable that marks a spawned child: `<parent pid>:<memfd number in the parent>`.
pub(crate) const ENV_VAR: &str = "MPROC_SPAWN_CHILD";
const TASK_MAGIC: [u8; 8] = *b"MPRCTSK1";
const OUT_MAGIC: [u8; 8] = *b"MPRCOUT1";

/// Exit code of a child whose parent died while it ran (death-with-parent).
pub(crate) const EXIT_ORPHANED: i32 = 125;
/// Exit code of a child that could not even read its task: there is nobody to tell.
const EXIT_NO_TASK: i32 = 126;
/// Exit code after a panic, as Rust's own runtime uses.
const EXIT_PANIC: i32 = 101;

/// What a spawned child is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Task {
    /// The parent's executable: the child must be running the same file.
    pub exe: ExeId,
    /// Offset of the user's `fn(A) -> R` from [`anchor`].
    pub func: i64,
    /// Offset of `trampoline::<A, R>` from [`anchor`].
    pub trampoline: i64,
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
    /// The child could not set itself up (bad task, a thread that did not start, ...).
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

/// The monomorphized adapter of a spawn target: `func` is the address of a `fn(A) -> R`.
pub(crate) type Trampoline = fn(usize, &[u8]) -> Result<Vec<u8>, Failure>;

/// The fixed point function offsets are measured from. Never called; `inline(never)` and a body that
/// differs from every other function keep it one distinct symbol of the executable.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    0x6d70_726f_635f_616e // "mproc_an"
}

pub(crate) fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// Decodes `A`, calls the `fn(A) -> R` at `func`, encodes `R`.
pub(crate) fn trampoline<A: DeserializeOwned, R: Serialize>(
    func: usize,
    args: &[u8],
) -> Result<Vec<u8>, Failure> {
    // SAFETY: `func` is the address of a `fn(A) -> R` for exactly these `A` and `R`: `Target::function`
    // takes the address of the user's `fn(A) -> R` and of `trampoline::<A, R>` together, and the child
    // relocates both by the same anchor only after checking it runs the very executable file they came
    // from. A fn pointer and a usize have the same size on every platform Rust supports.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let a: A = postcard::from_bytes(args)
        .map_err(|e| Failure::ArgDecode(std::any::type_name::<A>().to_owned(), e.to_string()))?;
    let r = f(a);
    postcard::to_allocvec(&r).map_err(|e| Failure::ResultEncode(e.to_string()))
}

pub(crate) fn frame(magic: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&magic);
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// The body of a complete frame with this magic, or `None`.
pub(crate) fn unframe(magic: [u8; 8], bytes: &[u8]) -> Option<&[u8]> {
    let (head, body) = bytes.split_at_checked(16)?;
    let len = u64::from_le_bytes(head[8..16].try_into().ok()?);
    (head[..8] == magic && body.len() as u64 == len).then_some(body)
}

pub(crate) fn encode_task(task: &Task) -> Vec<u8> {
    // Encoding a struct of integers and byte vectors into a Vec cannot fail.
    frame(
        TASK_MAGIC,
        &postcard::to_allocvec(task).expect("a task always encodes"),
    )
}

/// Reads a child's outcome from the bytes of its result file; `None` if it left no complete report.
pub(crate) fn decode_outcome(bytes: &[u8]) -> Option<Outcome> {
    postcard::from_bytes(unframe(OUT_MAGIC, bytes)?).ok()
}

// ------------------------------------------------------------------------------------------- the child

/// The descriptor the child publishes its outcome into (-1 before the child is set up).
static RESULT_FD: AtomicI32 = AtomicI32::new(-1);

fn publish(outcome: &Outcome) -> bool {
    let fd = RESULT_FD.load(Ordering::Acquire);
    if fd < 0 {
        return false;
    }
    let Ok(body) = postcard::to_allocvec(outcome) else {
        return false;
    };
    psys::replace_contents(fd, &frame(OUT_MAGIC, &body)).is_ok()
}

/// Runs a child's function and returns the exit code; the outcome is published into `result_fd`.
/// Shared by spawned and forked children. Takes no lock that the parent's other threads could have held
/// at a fork: the hook writes with raw `write(2)` calls.
pub(crate) fn run_child(result_fd: RawFd, body: impl FnOnce() -> Result<Vec<u8>, Failure>) -> i32 {
    RESULT_FD.store(result_fd, Ordering::Release);
    // The hook publishes the panic itself, so that a panic is reported even if the program is built with
    // `panic = "abort"` (the parent then sees the report and a SIGABRT; the report wins). If the function
    // catches a panic and returns normally, the later `Value` replaces the report.
    panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = match (
            payload.downcast_ref::<&str>(),
            payload.downcast_ref::<String>(),
        ) {
            (Some(s), _) => (*s).to_owned(),
            (None, Some(s)) => s.clone(),
            (None, None) => "Box<dyn Any>".to_owned(),
        };
        let location = info.location().map_or_else(
            || "<unknown>".to_owned(),
            |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
        );
        let text = format!(
            "mproc: child process {} panicked at {location}:\n{message}\n",
            std::process::id()
        );
        psys::write_stderr_raw(text.as_bytes());
        publish(&Outcome::Panic { message, location });
    }));
    let outcome = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Outcome::Value(value),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(payload) => {
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

/// Turns the task's offsets back into addresses, after checking the executable and that both land in it.
pub(crate) fn resolve(task: &Task) -> Result<(usize, Trampoline), Failure> {
    let here = psys::current_exe_id().map_err(|e| Failure::Setup(e.to_string()))?;
    if here != task.exe {
        return Err(Failure::ExeMismatch(format!(
            "parent ran {:?}, child runs {here:?}",
            task.exe
        )));
    }
    let anchor = anchor_addr();
    let func = anchor.wrapping_add_signed(task.func as isize);
    let tramp = anchor.wrapping_add_signed(task.trampoline as isize);
    // Same file, so the offsets are right; this only guards against a corrupted task.
    let base = psys::object_base(anchor);
    if psys::object_base(func) != base || psys::object_base(tramp) != base {
        return Err(Failure::Setup(
            "function offsets point outside the executable".into(),
        ));
    }
    // SAFETY: `tramp` is the address of a `Trampoline` of this executable: the parent computed the
    // offset from `trampoline::<A, R> as Trampoline` in the same file (checked above), whose code is
    // mapped at the same offset from `anchor` here.
    let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(tramp) };
    Ok((func, tramp))
}

/// If this process is a spawned child (the environment variable is set), runs the task and exits;
/// otherwise returns at once.
pub(crate) fn child_main_if_spawned() {
    let Some(value) = std::env::var_os(ENV_VAR) else {
        return;
    };
    // Remove it so that programs this child starts are not mistaken for spawned children. Before `main`
    // (from the constructor) the process has a single thread, so nothing reads the environment
    // concurrently; `init()` documents the same requirement.
    std::env::remove_var(ENV_VAR);
    let code = run_spawned(value.to_str().unwrap_or(""));
    // `exit` (not `_exit`): this is a fresh process, and its stdout buffer deserves a flush.
    std::process::exit(code);
}

fn run_spawned(value: &str) -> i32 {
    let Some((pid, fd)) = value.split_once(':') else {
        return EXIT_NO_TASK;
    };
    let (Ok(pid), Ok(fd)) = (pid.parse::<u32>(), fd.parse::<i32>()) else {
        return EXIT_NO_TASK;
    };
    let Ok(file) = shm::open_proc_fd(pid, fd) else {
        return EXIT_NO_TASK;
    };
    let mut bytes = Vec::new();
    if std::io::Read::read_to_end(&mut &file, &mut bytes).is_err() {
        return EXIT_NO_TASK;
    }
    let task: Option<Task> = unframe(TASK_MAGIC, &bytes).and_then(|b| postcard::from_bytes(b).ok());
    run_child(file.as_raw_fd(), move || {
        let task = task.ok_or_else(|| Failure::Setup("the task could not be decoded".into()))?;
        let (func, tramp) = resolve(&task)?;
        if task.die_with_parent {
            watch_parent(task.parent_pid)?;
        }
        tramp(func, &task.args)
    })
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

    fn task_for(exe: ExeId) -> Task {
        let anchor = anchor_addr() as i64;
        Task {
            exe,
            func: double as fn(u32) -> u64 as usize as i64 - anchor,
            trampoline: trampoline::<u32, u64> as Trampoline as usize as i64 - anchor,
            args: postcard::to_allocvec(&21u32).unwrap(),
            parent_pid: 1,
            die_with_parent: false,
        }
    }

    #[test]
    fn resolves_and_calls_in_the_same_executable() {
        let task = task_for(psys::current_exe_id().unwrap());
        let (f, t) = resolve(&task).unwrap();
        let out = t(f, &task.args).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 42);
    }

    #[test]
    fn another_executable_is_refused_before_any_jump() {
        let mut exe = psys::current_exe_id().unwrap();
        exe.mtime += 1;
        assert!(matches!(
            resolve(&task_for(exe)),
            Err(Failure::ExeMismatch(_))
        ));
    }

    #[test]
    fn offsets_outside_the_executable_are_refused() {
        let mut task = task_for(psys::current_exe_id().unwrap());
        task.func = i64::MIN / 2;
        assert!(matches!(resolve(&task), Err(Failure::Setup(_))));
    }

    #[test]
    fn frames_check_magic_and_length() {
        let f = frame(OUT_MAGIC, b"abc");
        assert_eq!(unframe(OUT_MAGIC, &f), Some(&b"abc"[..]));
        assert_eq!(unframe(TASK_MAGIC, &f), None);
        assert_eq!(unframe(OUT_MAGIC, &f[..f.len() - 1]), None);
        assert_eq!(unframe(OUT_MAGIC, b"short"), None);
    }

    #[test]
    fn bad_argument_bytes_are_a_decode_failure() {
        let f = double as fn(u32) -> u64 as usize;
        assert!(matches!(
            trampoline::<u32, u64>(f, &[0xff; 9]),
            Err(Failure::ArgDecode(..))
        ));
    }
}
