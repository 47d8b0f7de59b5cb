//! The spawn channel against forgery (security review 2026-11-30: S1, S2, R1; the environment contract in
//! `src/process/bootstrap.rs`). Every test starts this test binary (which links mproc, so its pre-main
//! constructor runs) with a forged `MPROC_SPAWN_CHILD` and descriptors of our choosing, and checks what
//! the child did: its exit code, the reason it printed, that it never reached `main` (our role), and
//! that no file it was handed changed. No test asserts timing; every wait is bounded by [`BOUND`].
//!
//! The setuid (`AT_SECURE`) and other-uid tests need root and `setpriv(1)`: they copy this binary into a
//! fresh 0755 directory under the temporary directory (setuid root for the first) and run the copy as
//! uid 65534. Without root or `setpriv` they print why on stderr and check nothing.
//!
//! Never forged here, on purpose: the old `<pid>:<fd>` format naming a process other than this one
//! (pid 1 included). Code from before commit 541522f re-opened `/proc/<pid>/fd/<fd>` read-write and
//! truncated it, so running this suite against such a build would damage that process's file. Pid 1
//! appears only in the four-field format, which that code could not parse.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Pool, Process, StartMethod};
use serde::Serialize;

use crate::common::{self, next_random, say, Role};

/// How long a child may take before we call it a hang (proves "no hang", never measures speed).
const BOUND: Duration = Duration::from_secs(60);
/// The variable the constructor reads (bootstrap.rs, "The environment contract").
const SPAWN_VAR: &str = "MPROC_SPAWN_CHILD";
/// Exit code of a child that refused its task (bootstrap.rs `EXIT_NO_TASK`).
const REFUSED: i32 = 126;
/// Descriptor numbers that are closed in a forged child (it holds only what it inherits, and 0-2).
const CLOSED: [RawFd; 3] = [999, 998, 997];
/// What every refusal on stderr starts with.
const REFUSING: &str = "refusing";
/// The role the forged children are started as: if it runs, the constructor let `main` run.
const MAIN_ROLE: &str = "security_spawn_main";
/// What that role prints first.
const MAIN_RAN: &str = "security_spawn: main ran";
/// A file's content that no forged environment may change.
const PRECIOUS: &[u8] =
    b"precious data: a forged MPROC_SPAWN_CHILD must not truncate or overwrite this\n";

pub const ROLES: &[Role] = &[(MAIN_ROLE, main_role), (SPAWNER_ROLE, setuid_spawner_role)];

/// A program that spawns one process and says what it got (see [`setuid_program_cannot_spawn`]).
const SPAWNER_ROLE: &str = "security_spawn_spawner";
/// What that role prints.
const SPAWNER: &str = "security_spawn: spawner";

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("security_spawn", name, f);
    vec![
        t(
            "forged_environment_leaves_the_named_file_untouched",
            forged_environment_leaves_the_file_untouched,
        ),
        t(
            "real_parent_with_wrong_descriptors_is_refused",
            real_parent_wrong_descriptors,
        ),
        t(
            "well_formed_task_with_a_mac_of_another_key_is_refused",
            mac_of_another_key_is_refused,
        ),
        t(
            "grown_result_memfd_is_an_error_not_an_abort",
            grown_result_memfd,
        ),
        t(
            "at_secure_ignores_the_variable_and_runs_main",
            at_secure_runs_main,
        ),
        t(
            "a_parent_of_another_uid_is_not_obeyed",
            parent_of_another_uid_is_refused,
        ),
        t(
            "a_parent_of_another_gid_is_not_obeyed",
            parent_of_another_gid_is_refused,
        ),
        t(
            "a_parent_of_other_supplementary_groups_is_not_obeyed",
            parent_of_other_groups_is_refused,
        ),
        t(
            "a_setuid_program_cannot_spawn_and_says_so",
            setuid_program_cannot_spawn,
        ),
        t(
            "a_program_with_file_capabilities_cannot_spawn_and_says_so",
            file_capabilities_program_cannot_spawn,
        ),
        t(
            "a_program_with_file_capabilities_cannot_spawn_under_no_new_privs",
            file_capabilities_program_cannot_spawn_under_no_new_privs,
        ),
        t(
            "a_program_started_through_the_loader_cannot_spawn_and_says_so",
            program_started_through_the_loader_cannot_spawn,
        ),
        t("process_and_pool_still_work", process_and_pool_still_work),
    ]
}

/// The program a forged child runs if the constructor lets it reach `main`: says so, and whether the
/// kernel marked it `AT_SECURE`.
fn main_role(_: &str) {
    let var = if std::env::var_os(SPAWN_VAR).is_some() {
        "present"
    } else {
        "absent"
    };
    say(&format!("{MAIN_RAN} at_secure={} var={var}", at_secure()));
}

/// Spawns `square(3)` and prints what came back. In a process whose `main` runs with
/// `MPROC_SPAWN_CHILD` set it spawns nothing: that is a child that ignored its task (`AT_SECURE`) and
/// ran `main` instead, which would spawn again, and so on without end.
fn setuid_spawner_role(_: &str) {
    if std::env::var_os(SPAWN_VAR).is_some() {
        say(&format!("{SPAWNER}: main ran in a spawned child"));
        return;
    }
    let got = Process::new(square, 3).and_then(|mut p| {
        p.start()?;
        p.join()
    });
    match got {
        Ok(v) => say(&format!("{SPAWNER}: value {v}")),
        Err(e) => say(&format!("{SPAWNER}: error {e}")),
    }
}

fn at_secure() -> libc::c_ulong {
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not supply.
    unsafe { libc::getauxval(libc::AT_SECURE) }
}

// ------------------------------------------------------------------------------------ descriptors

/// A memfd of ours, close-on-exec (it reaches a child only through [`run_child`]'s `inherit`).
fn memfd(name: &str) -> File {
    let c = CString::new(name).expect("no NUL in the name");
    // SAFETY: `c` is a NUL-terminated string that outlives the call, and the flags are valid;
    // memfd_create only reads the name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn add_seals(file: &File, seals: i32) {
    // SAFETY: F_ADD_SEALS takes an int argument and changes only the seal set of the open file `file`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(r, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
}

/// Everything a file holds, and its length: what must not change.
fn contents(file: &File) -> Vec<u8> {
    let len = file.metadata().expect("fstat").len();
    let mut v = vec![0u8; usize::try_from(len).expect("a small test file")];
    file.read_exact_at(&mut v, 0).expect("read a test file");
    v
}

/// Asserts a file's bytes are still `want`; shows both as text if not.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], case: &str) {
    assert!(
        got == want,
        "{case}: the file changed: it holds {} bytes {:?}, it held {} bytes {:?}",
        got.len(),
        text(got),
        want.len(),
        text(want)
    );
}

/// A file under the temporary directory, removed when dropped.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn new(what: &str, content: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(common::unique_name(&format!("security-spawn-{what}")));
        std::fs::write(&path, content).expect("write a temp file");
        // Read-write, to give a child every chance to write to it; std opens with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open a temp file");
        TempFile { path, file }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Asserts the file still holds exactly `want`, through the descriptor and through its path.
    #[track_caller]
    fn assert_holds(&self, want: &[u8], case: &str) {
        assert_same(&contents(&self.file), want, case);
        assert_same(&std::fs::read(&self.path).expect("read back"), want, case);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------- a forged task frame

/// Mirrors `sys::process::ExeId`.
#[derive(Serialize)]
struct ExeId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// Mirrors `process::fnref::FnRef`.
#[derive(Serialize)]
struct FnRef {
    func: i64,
    adapter: i64,
    mac: u64,
}

/// Mirrors `process::bootstrap::SpawnTask`.
#[derive(Serialize)]
struct SpawnTask {
    exe: ExeId,
    func: FnRef,
    args: Vec<u8>,
    parent_pid: u32,
    die_with_parent: bool,
}

/// A task frame exactly as a parent writes one, naming this very executable, with arbitrary offsets
/// and a MAC that no key of a real parent made.
fn forged_task_frame(rng: &mut u64) -> Vec<u8> {
    let m = std::fs::metadata("/proc/self/exe").expect("stat our executable");
    let task = SpawnTask {
        exe: ExeId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        },
        func: FnRef {
            func: 0x40,
            adapter: -0x1000,
            mac: next_random(rng),
        },
        args: postcard::to_allocvec(&7u32).expect("encode"),
        parent_pid: std::process::id(),
        die_with_parent: false,
    };
    let body = postcard::to_allocvec(&task).expect("encode a task");
    let mut frame = b"MPRCTSK2".to_vec();
    frame.extend_from_slice(&(body.len() as u64).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The key socket's packet of a forged channel: the zero key, and the MAC of `frame` under it, made as
/// `FnKey::content_mac(Content::SpawnTask, ..)` makes it: SipHash-1-3 of the domain `b"mprocTSK"` and
/// the frame. Under the zero key that is what std's `DefaultHasher` computes, so the test needs no copy
/// of the crate's code. The task's MAC then verifies, and the checks after it are reached.
fn key_packet_for(frame: &[u8]) -> [u8; 24] {
    use std::hash::Hasher;
    let mut mac = std::collections::hash_map::DefaultHasher::new();
    mac.write(b"mprocTSK");
    mac.write(frame);
    let mut packet = [0u8; 24];
    packet[16..].copy_from_slice(&mac.finish().to_le_bytes());
    packet
}

/// A spawn channel as a real parent builds one (sealed task memfd, key socketpair made by this process
/// with one packet queued: a key and the task's MAC under it, empty result memfd), holding a forged
/// task: every check but the function reference's MAC passes. Tests swap one part for a wrong one.
struct Channel {
    task: File,
    task_frame: Vec<u8>,
    /// Our end of the key socketpair: whatever the child sends would arrive here.
    key_ours: UnixDatagram,
    key_theirs: UnixDatagram,
    result: File,
}

impl Channel {
    fn forged(rng: &mut u64) -> Channel {
        let task_frame = forged_task_frame(rng);
        let task = memfd("security-spawn-task");
        task.write_all_at(&task_frame, 0).expect("write the task");
        add_seals(
            &task,
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        );
        let (key_ours, key_theirs) = UnixDatagram::pair().expect("socketpair");
        key_ours
            .send(&key_packet_for(&task_frame))
            .expect("queue the key");
        Channel {
            task,
            task_frame,
            key_ours,
            key_theirs,
            result: memfd("security-spawn-result"),
        }
    }

    fn fds(&self) -> [RawFd; 3] {
        [
            self.task.as_raw_fd(),
            self.key_theirs.as_raw_fd(),
            self.result.as_raw_fd(),
        ]
    }

    /// Asserts that the child wrote to none of the channel's descriptors.
    #[track_caller]
    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            self.result.metadata().expect("fstat").len(),
            0,
            "{case}: the result memfd was written"
        );
        assert_eq!(
            contents(&self.task),
            self.task_frame,
            "{case}: the task changed"
        );
        self.key_ours.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        match self.key_ours.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("{case}: the child sent on the key socket: {other:?}"),
        }
    }
}

/// `MPROC_SPAWN_CHILD` naming this process and the three descriptors.
fn value(fds: [RawFd; 3]) -> String {
    format!("{}:{}:{}:{}", std::process::id(), fds[0], fds[1], fds[2])
}

// --------------------------------------------------------------------------------- the forged child

/// Runs `cmd` (this test binary, or a wrapper that execs it) as the role [`MAIN_ROLE`] with
/// `MPROC_SPAWN_CHILD=spawn_value`; `inherit` are made inheritable in the child only. Bounded.
fn run_child(mut cmd: Command, spawn_value: &str, inherit: &[RawFd]) -> Output {
    cmd.env("MPROC_TEST_ROLE", MAIN_ROLE)
        .env("MPROC_TEST_RUN", common::run_tag())
        .env(SPAWN_VAR, spawn_value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fds = inherit.to_vec();
    let hook = move || {
        for &fd in &fds {
            // SAFETY: F_SETFD with 0 clears FD_CLOEXEC on a descriptor of this forked child's table;
            // it touches no memory.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only reads a Vec that was allocated
    // before the fork and calls fcntl, which is async-signal-safe (signal-safety(7)); it allocates
    // nothing and takes no lock, so no lock held by another thread of ours at the fork can block it.
    unsafe { cmd.pre_exec(hook) };
    common::bounded("a forged child", BOUND, move || {
        cmd.output().expect("run the test binary")
    })
}

fn this_binary() -> Command {
    Command::new(std::env::current_exe().expect("current_exe"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the child refused with exit code 126, said why (`reason` is part of the message), and never
/// reached `main`.
#[track_caller]
fn assert_refused(out: &Output, reason: &str, case: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(REFUSED),
        "{case}: child ended with {}; stderr {stderr:?}, stdout {stdout:?}",
        out.status
    );
    assert!(
        stderr.contains(REFUSING) && stderr.contains(reason),
        "{case}: stderr should say it refused because {reason:?}: {stderr:?}"
    );
    assert!(
        stdout.is_empty(),
        "{case}: the child ran main: stdout {stdout:?}"
    );
}

// ---------------------------------------------------------------------------------------- the tests

/// S1, the "no gadget" variant: `MPROC_SPAWN_CHILD` naming an ordinary file (old format, new format, a
/// process that is not our parent, garbage) leaves the file's content and length as they were, and,
/// since no spawning parent made it (its key descriptor is no socket of the process it names), the
/// program runs `main` as it would without mproc, with the variable removed. Before 541522f the old
/// format truncated the file and wrote an outcome frame into it; until 2026-12-01 such a value made
/// the program exit 126 without running `main` (review F5: "behaves exactly as without it").
fn forged_environment_leaves_the_file_untouched() {
    let f = TempFile::new("precious", PRECIOUS);
    let (me, fd) = (std::process::id(), f.fd());
    let cases: [String; 9] = [
        format!("{me}:{fd}"),
        format!("{me}:{fd}:{fd}:{fd}"),
        format!("1:{fd}:{fd}:{fd}"),
        format!("0:{fd}:{fd}:{fd}"),
        format!("-{me}:{fd}:{fd}:{fd}"),
        format!("{me}:{fd}:x:{fd}"),
        format!("{me}:{fd}:{fd}:{fd}:{fd}"),
        "garbage".to_owned(),
        String::new(),
    ];
    for v in &cases {
        let out = run_child(this_binary(), v, &[fd]);
        let case = format!("{SPAWN_VAR}={v:?}");
        // What matters most first: the file (before 541522f the old format overwrote it).
        f.assert_holds(PRECIOUS, &case);
        assert_main_ran(&out, &case);
    }
}

/// Asserts the child ran `main` (our role) as a program without mproc would, with the variable gone
/// from its environment, and refused nothing.
#[track_caller]
fn assert_main_ran(out: &Output, case: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.starts_with(MAIN_RAN) && stdout.contains("var=absent"),
        "{case}: main should have run, without the variable: {}; stdout {stdout:?}, stderr \
         {stderr:?}",
        out.status
    );
    assert!(!stderr.contains(REFUSING), "{case}: {stderr:?}");
}

/// S1: the real parent (this process, the child's `getppid()`) names descriptors of the wrong kind in
/// an otherwise genuine channel: an unsealed or partly sealed memfd as the task, a regular file as the
/// task, the key or the result, a key socket with no key or a packet of the wrong size, and numbers of
/// closed or standard descriptors. Nothing is written to any of them. With the parent's key socket,
/// each is refused with exit 126; without it (no socket of the parent as the key), the variable is not
/// a spawning parent's at all and `main` runs. Before 541522f none of these descriptors was checked
/// (and the four-field format did not exist).
fn real_parent_wrong_descriptors() {
    let mut rng = common::seed();
    // (case, what to swap in, expected reason)
    type Swap = fn(&mut Channel, &TempFile) -> [RawFd; 3];
    let cases: Vec<(&str, Swap, &str)> = vec![
        (
            "unsealed memfd as the task",
            |ch, _| {
                let t = memfd("security-spawn-unsealed");
                t.write_all_at(&ch.task_frame, 0).expect("write");
                ch.task = t;
                ch.fds()
            },
            "not a sealed memfd",
        ),
        (
            "memfd sealed against writes and shrinking but not growing",
            |ch, _| {
                let t = memfd("security-spawn-growable");
                t.write_all_at(&ch.task_frame, 0).expect("write");
                add_seals(&t, libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK);
                ch.task = t;
                ch.fds()
            },
            "not a sealed memfd",
        ),
        (
            "regular file holding the task",
            |ch, file| {
                file.file.write_all_at(&ch.task_frame, 0).expect("write");
                ch.task = file.file.try_clone().expect("dup");
                ch.fds()
            },
            "not a sealed memfd",
        ),
        (
            "regular file as the key",
            |ch, file| [ch.task.as_raw_fd(), file.fd(), ch.result.as_raw_fd()],
            NOT_CLAIMED,
        ),
        (
            "regular file as the result (refused at the task's MAC, before the result is used)",
            |ch, file| [ch.task.as_raw_fd(), ch.key_theirs.as_raw_fd(), file.fd()],
            "authentication",
        ),
        (
            "key socket with no key queued",
            |ch, _| {
                let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
                ch.key_ours = ours;
                ch.key_theirs = theirs;
                ch.fds()
            },
            "did not hold a key",
        ),
        (
            "key socket holding a key without the task's MAC (16 bytes)",
            |ch, _| {
                let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
                ours.send(&[0; 16]).expect("queue");
                ch.key_ours = ours;
                ch.key_theirs = theirs;
                ch.fds()
            },
            "did not hold a key",
        ),
        (
            "task rewritten after the parent made its MAC (before it was sealed)",
            |ch, _| {
                let mut frame = ch.task_frame.clone();
                let last = frame.len() - 1;
                frame[last] ^= 1; // the argument's last byte
                let rewritten = memfd("security-spawn-task");
                rewritten.write_all_at(&frame, 0).expect("write the task");
                add_seals(
                    &rewritten,
                    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                );
                ch.task = rewritten;
                ch.task_frame = frame;
                ch.fds()
            },
            "MAC does not verify",
        ),
        (
            "key socket holding a 32-byte packet",
            |ch, _| {
                let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
                ours.send(&[0x5a; 32]).expect("queue");
                ch.key_ours = ours;
                ch.key_theirs = theirs;
                ch.fds()
            },
            "did not hold a key",
        ),
        (
            "closed descriptor as the task",
            |ch, _| [CLOSED[0], ch.key_theirs.as_raw_fd(), ch.result.as_raw_fd()],
            "not open",
        ),
        (
            "closed descriptor as the key",
            |ch, _| [ch.task.as_raw_fd(), CLOSED[0], ch.result.as_raw_fd()],
            NOT_CLAIMED,
        ),
        ("closed descriptors everywhere", |_, _| CLOSED, NOT_CLAIMED),
        ("standard descriptors", |_, _| [0, 1, 2], NOT_CLAIMED),
        ("negative descriptors", |_, _| [-1, -1, -1], NOT_CLAIMED),
    ];
    for (case, swap, reason) in cases {
        let file = TempFile::new("wrong-descriptor", b"");
        let mut ch = Channel::forged(&mut rng);
        let fds = swap(&mut ch, &file);
        let before = contents(&file.file);
        let mut inherit = ch.fds().to_vec();
        inherit.push(file.fd());
        // The child holds only what it inherits (and 0-2), so these numbers are closed there.
        assert!(
            !inherit.iter().any(|fd| CLOSED.contains(fd)),
            "{case}: a descriptor we pass has a number of CLOSED: pick others"
        );
        let out = run_child(this_binary(), &value(fds), &inherit);
        ch.assert_untouched(case);
        file.assert_holds(&before, case);
        if reason == NOT_CLAIMED {
            assert_main_ran(&out, case);
        } else {
            assert_refused(&out, reason, case);
        }
    }
}

/// The expected "reason" of a case whose key descriptor is no socket of the parent: then no spawning
/// parent made the variable, and the program runs `main` (see `assert_main_ran`).
const NOT_CLAIMED: &str = "(not claimed: main runs)";

/// S2: a task frame that is well-formed in every respect (sealed memfd, right magic and length, a
/// `SpawnTask` that decodes, this very executable's identity, the real parent, a key socket made by it)
/// but whose function reference carries a MAC made without the key in the key socket: refused as
/// unauthenticated (so it did decode), exit 126, result memfd still empty. Before 541522f the spawn
/// task had no MAC at all, and any offsets inside the executable were called.
fn mac_of_another_key_is_refused() {
    let seed = common::seed();
    let mut rng = seed;
    for round in 0..4 {
        let ch = Channel::forged(&mut rng);
        let fds = ch.fds();
        let out = run_child(this_binary(), &value(fds), &fds);
        let case = format!("forged MAC, round {round} (seed {seed:#x})");
        ch.assert_untouched(&case);
        assert_refused(&out, "failed its authentication check", &case);
    }
}

/// The path of this child's own result memfd, through `/proc/self/fd` (a spawned child holds exactly
/// one). `mproc-process` is its name before 541522f, so that this test reproduces R1 there.
fn own_result_memfd() -> PathBuf {
    let hits: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let target = std::fs::read_link(&p).ok()?;
            let t = target.to_string_lossy();
            (t.contains("memfd:mproc-result") || t.contains("memfd:mproc-process")).then_some(p)
        })
        .collect();
    match &hits[..] {
        [one] => one.clone(),
        _ => panic!("expected one result memfd in /proc/self/fd, found {hits:?}"),
    }
}

/// Grows the result memfd to 16 TiB (sparse) and exits without a report.
fn grow_result_then_exit(_: ()) -> u32 {
    let f = OpenOptions::new()
        .write(true)
        .open(own_result_memfd())
        .expect("re-open the result memfd");
    f.set_len(1 << 44).expect("ftruncate the result memfd");
    std::process::exit(0)
}

/// Writes an outcome header that announces a 1 TiB body, and exits without a report.
fn announce_huge_result_then_exit(_: ()) -> u32 {
    let f = OpenOptions::new()
        .write(true)
        .open(own_result_memfd())
        .expect("re-open the result memfd");
    let mut head = b"MPRCOUT1".to_vec();
    head.extend_from_slice(&(1u64 << 40).to_le_bytes());
    f.write_all_at(&head, 0).expect("write a header");
    std::process::exit(0)
}

/// R1: a child that grows its result memfd to 2^44 bytes, or announces a 2^40-byte outcome, makes
/// `join` return a typed error; the parent does not abort. Before 541522f `join` allocated the file's
/// size and aborted with "memory allocation of 17592186044416 bytes failed" (taking this whole test
/// binary down).
fn grown_result_memfd() {
    let mut p = Process::builder()
        .start_method(StartMethod::Spawn)
        .target(grow_result_then_exit, ())
        .expect("target");
    p.start().expect("start");
    let r = p.join();
    eprintln!("security_spawn: a result memfd grown to 2^44 bytes: join -> {r:?}");
    // A sparse file reads as zeros: no outcome magic, so no report, and the child exited 0.
    assert!(
        matches!(r, Err(Error::ProcessExited { code: 0, .. })),
        "grown result: {r:?}"
    );

    let mut p = Process::builder()
        .start_method(StartMethod::Spawn)
        .target(announce_huge_result_then_exit, ())
        .expect("target");
    p.start().expect("start");
    let r = p.join();
    eprintln!("security_spawn: an outcome header announcing 2^40 bytes: join -> {r:?}");
    assert!(
        matches!(r, Err(Error::MessageTooLarge { size, .. }) if size as u64 == 1 << 40),
        "announced huge result: {r:?}"
    );
}

/// Whether we can make an `AT_SECURE` process: root (to make a setuid-root copy) and `setpriv` (to run
/// it as another user). `Err(why not)` otherwise.
fn setuid_feasible() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: cannot make a setuid-root copy".into());
    }
    match Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("no usable setpriv: {other:?}")),
    }
}

/// A directory under the temporary directory, removed (with its content) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory that uid 65534 can search (mode 0755).
    fn new(what: &str) -> TempDir {
        let dir = TempDir(
            std::env::temp_dir().join(common::unique_name(&format!("security-spawn-{what}"))),
        );
        std::fs::create_dir(&dir.0).expect("mkdir");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        dir
    }

    /// A copy of this test binary in the directory, with `mode` (0o4755: setuid to us, root).
    fn copy_of_this_binary(&self, name: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        // Copied by `cp`, not by this process: a descriptor of ours open for writing the copy would
        // be inherited, until its exec, by every child another test's thread forks meanwhile, and an
        // exec of the copy in that window fails with ETXTBSY ("Text file busy", seen in CI).
        let copied = Command::new("cp")
            .arg(std::env::current_exe().expect("current_exe"))
            .arg(&path)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cp of the binary failed: {copied}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

/// `program` run as uid and gid 65534 with no supplementary groups; `setpriv` execs it directly, so
/// its parent is still this process.
fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    cmd
}

/// S1 across users: the parent (this process, root) hands a complete, genuine-looking channel to a
/// child running as uid 65534 (a plain copy of this binary, so no `AT_SECURE`): the key socket was made
/// by the parent but with another uid, so the child refuses (exit 126, nothing written, `main` never
/// ran). This is the check that stops a parent of one user from feeding tasks to a program running as
/// another (a wrapper that drops or changes privileges and execs an mproc program). Before 541522f
/// nothing compared users.
///
/// Needs root and `setpriv`; without them it says so on stderr and checks nothing.
fn parent_of_another_uid_is_refused() {
    if let Err(why) = setuid_feasible() {
        eprintln!("security_spawn::a_parent_of_another_uid_is_not_obeyed: skipped: {why}");
        return;
    }
    let dir = TempDir::new("other-uid");
    let child = dir.copy_of_this_binary("child", 0o755);
    let mut rng = common::seed();
    let ch = Channel::forged(&mut rng);
    let out = run_child(as_nobody(&child), &value(ch.fds()), &ch.fds());
    let case = "a root parent's channel in a uid 65534 child";
    ch.assert_untouched(case);
    // A socket of another uid's process is no channel of ours: the variable is not this process's.
    assert_main_ran(&out, case);
}

/// As [`parent_of_another_uid_is_refused`], with the group changed and the user kept: the child runs
/// as uid 0 (like this process) but gid 65534. The pair's creator had another gid, so the variable is
/// not this process's: `main` runs, nothing is written. Found by review: only the uid was compared,
/// so a program exec'd through a setgid wrapper that kept the environment and descriptors accepted
/// the channel of the process that ran the wrapper, which chose the key and so the offsets called
/// with the wrapper's group (here the channel's MAC is forged and the child refused it with 126
/// instead of running `main`).
///
/// Needs root and `setpriv`; without them it says so on stderr and checks nothing.
fn parent_of_another_gid_is_refused() {
    if let Err(why) = setuid_feasible() {
        eprintln!("security_spawn::a_parent_of_another_gid_is_not_obeyed: skipped: {why}");
        return;
    }
    let mut rng = common::seed();
    let ch = Channel::forged(&mut rng);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().expect("current_exe"));
    let out = run_child(cmd, &value(ch.fds()), &ch.fds());
    let case = "a gid 0 parent's channel in a gid 65534 child of the same uid";
    ch.assert_untouched(case);
    assert_main_ran(&out, case);
}

/// As [`parent_of_another_gid_is_refused`], with uid and gid kept and a supplementary group added:
/// the child runs as uid 0 and gid 0 (like this process) with the groups 0 and 65534. The pair's
/// creator had other groups, so the variable is not this process's: `main` runs, nothing is written.
/// Found by review: only uid and gid were compared, so a program exec'd through a wrapper that grants
/// a group and keeps the environment and descriptors (here `setpriv --groups`) accepted the channel
/// of the process that ran the wrapper, whose key chose the offsets called with that group (here the
/// channel's MAC is forged and the child refused it with 126 instead of running `main`).
///
/// Needs root and `setpriv`; without them it says so on stderr and checks nothing.
fn parent_of_other_groups_is_refused() {
    if let Err(why) = setuid_feasible() {
        eprintln!(
            "security_spawn::a_parent_of_other_supplementary_groups_is_not_obeyed: skipped: {why}"
        );
        return;
    }
    let mut rng = common::seed();
    let ch = Channel::forged(&mut rng);
    // Groups unlike ours whatever ours are: ours plus one we do not have.
    // SAFETY: with a size of 0, getgroups only returns the number of groups and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut ours = vec![0 as libc::gid_t; usize::try_from(n).expect("getgroups")];
    // SAFETY: getgroups writes at most `n` gids into `ours`, a live vector of `n` of them.
    let got = unsafe { libc::getgroups(n, ours.as_mut_ptr()) };
    ours.truncate(usize::try_from(got).expect("getgroups"));
    let extra = if ours.contains(&65534) { 65533 } else { 65534 };
    let groups: Vec<String> = ours.iter().chain([&extra]).map(|g| g.to_string()).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--groups={}", groups.join(",")))
        .arg(std::env::current_exe().expect("current_exe"));
    let out = run_child(cmd, &value(ch.fds()), &ch.fds());
    let case = "a parent's channel in a child of the same uid and gid with one more group";
    ch.assert_untouched(case);
    assert_main_ran(&out, case);
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// S1, setuid: a setuid-root copy of this binary, run as uid 65534 (so the kernel sets `AT_SECURE`),
/// ignores `MPROC_SPAWN_CHILD` entirely, as if absent: it runs `main` (our role, which reports
/// `AT_SECURE` = 1, so the premise is checked, not assumed), prints no refusal, and writes nothing,
/// neither to a root-owned 0644 file it inherited read-only (the review's `exec 3<rootfile`) nor to a
/// complete forged channel. Before 541522f the old format made such a copy, as euid 0, re-open that
/// file read-write and overwrite it, and no format ever reached `main`.
///
/// Needs root and `setpriv`; without them it says so on stderr and checks nothing.
fn at_secure_runs_main() {
    if let Err(why) = setuid_feasible() {
        eprintln!("security_spawn::at_secure_ignores_the_variable_and_runs_main: skipped: {why}");
        return;
    }
    let dir = TempDir::new("setuid");
    let victim = dir.copy_of_this_binary("victim", 0o4755);

    let rootfile = dir.0.join("rootfile");
    std::fs::write(&rootfile, PRECIOUS).expect("write rootfile");
    std::fs::set_permissions(&rootfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let ro = File::open(&rootfile).expect("open rootfile read-only");

    let mut rng = common::seed();
    let ch = Channel::forged(&mut rng);
    let me = std::process::id();
    let fd = ro.as_raw_fd();
    let cases = [
        format!("{me}:{fd}"),
        format!("{me}:{fd}:{fd}:{fd}"),
        value(ch.fds()),
    ];
    let mut inherit = ch.fds().to_vec();
    inherit.push(fd);
    for v in &cases {
        let out = run_child(as_nobody(&victim), v, &inherit);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let case = format!("setuid copy as uid 65534 with {SPAWN_VAR}={v:?}");
        assert_same(
            &std::fs::read(&rootfile).expect("read rootfile"),
            PRECIOUS,
            &format!("{case}: rootfile"),
        );
        ch.assert_untouched(&case);
        assert!(
            out.status.success(),
            "{case}: ended with {}; stderr {stderr:?}, stdout {stdout:?}",
            out.status
        );
        assert_eq!(
            stdout.lines().next(),
            Some(format!("{MAIN_RAN} at_secure=1 var=present").as_str()),
            "{case}: main did not run with AT_SECURE set; stderr {stderr:?}"
        );
        assert!(
            !stderr.contains(REFUSING),
            "{case}: the variable was not ignored: {stderr:?}"
        );
    }
    // The copy must be gone before the suite ends: a setuid-root copy of a test binary is a hazard.
    drop(dir);
    assert!(!victim.exists(), "the setuid copy was not removed");
}

/// A setuid-root copy of this binary run as uid 65534 spawns: its child, exec'd from the same setuid
/// file, is `AT_SECURE` too and ignores the channel (as it must: see `at_secure_runs_main`), so it
/// runs `main` instead of the task. Found by review: `start` succeeded, and the child's `main`, being
/// this program's, spawned again, each generation waiting for the next: a chain of processes without
/// end (the role here stops it at the first generation), and no task ever ran. Now `start` says at once
/// that the spawn start method cannot work there, and nothing is started.
///
/// Needs root and `setpriv`; without them it says so on stderr and checks nothing.
fn setuid_program_cannot_spawn() {
    if let Err(why) = setuid_feasible() {
        eprintln!("security_spawn::a_setuid_program_cannot_spawn_and_says_so: skipped: {why}");
        return;
    }
    let dir = TempDir::new("setuid-spawner");
    let spawner = dir.copy_of_this_binary("spawner", 0o4755);
    assert_spawner_refuses(as_nobody(&spawner), "a setuid-root copy run as uid 65534");
    drop(dir);
    assert!(!spawner.exists(), "the setuid copy was not removed");
}

/// As [`setuid_program_cannot_spawn`], for a copy with file capabilities (`setcap`), run as uid
/// 65534: its child gains them again at the exec, so it is `AT_SECURE` as well.
///
/// Needs root, `setpriv` and `setcap`; without them it says so on stderr and checks nothing.
fn file_capabilities_program_cannot_spawn() {
    file_capabilities_spawner_refuses(
        "security_spawn::a_program_with_file_capabilities_cannot_spawn_and_says_so",
        false,
    );
}

/// As [`file_capabilities_program_cannot_spawn`], run under `no_new_privs`. That keeps the exec from
/// granting the file's capabilities, but not from being `AT_SECURE` (the kernel still marks an exec
/// of a capability-bearing file by a non-root process secure), so the child still ignores its task.
/// Found by review: `no_new_privs` was taken to cancel file capabilities like set-id bits, `start`
/// succeeded, and the child ran `main` instead of its task.
fn file_capabilities_program_cannot_spawn_under_no_new_privs() {
    file_capabilities_spawner_refuses(
        "security_spawn::a_program_with_file_capabilities_cannot_spawn_under_no_new_privs",
        true,
    );
}

/// A copy of this binary with file capabilities (`setcap`) run as uid 65534 (under `no_new_privs`
/// if `nnp`) must refuse to spawn. Needs root, `setpriv` and `setcap`; without them it says so on
/// stderr and checks nothing.
fn file_capabilities_spawner_refuses(name: &str, nnp: bool) {
    if let Err(why) = setuid_feasible() {
        eprintln!("{name}: skipped: {why}");
        return;
    }
    let dir = TempDir::new("setcap-spawner");
    let spawner = dir.copy_of_this_binary("spawner", 0o755);
    match Command::new("setcap")
        .arg("cap_net_bind_service+ep")
        .arg(&spawner)
        .output()
    {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("{name}: skipped: setcap failed: {other:?}");
            return;
        }
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if nnp {
        cmd.arg("--no-new-privs");
    }
    cmd.arg(&spawner);
    assert_spawner_refuses(cmd, "a copy with file capabilities run as uid 65534");
}

/// The dynamic loader this process was started by (`AT_BASE`), as a path; `None` without one.
fn dynamic_loader() -> Option<PathBuf> {
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry the kernel did not supply.
    let base = unsafe { libc::getauxval(libc::AT_BASE) } as usize;
    if base == 0 {
        return None;
    }
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only looks the address up (it is not dereferenced) and fills `info`, a live
    // local; zeroed is a valid bit pattern for it.
    if unsafe { libc::dladdr(base as *const libc::c_void, info.as_mut_ptr()) } == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded and filled `info`.
    let name = unsafe { info.assume_init() }.dli_fname;
    if name.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string of the loader's, alive for the process.
    let path = unsafe { std::ffi::CStr::from_ptr(name) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()))).filter(|p| p.is_file())
}

/// This binary run through its dynamic loader explicitly (`ld.so PROGRAM`, as on systems where a
/// program's interpreter is not at the path it names, or in a packaging wrapper) spawns: the kernel
/// exec'd the loader, so `/proc/self/exe` names the loader, not the program. Found by review: `start`
/// succeeded and the child exec'd the loader alone, which printed "missing program name" and exited,
/// so every `Process` failed with `ProcessExited { code: 1 }` and every pool with `WorkerDied`,
/// saying nothing of why. Now `start` says at once that spawning cannot work there, and starts
/// nothing. Skipped (with a word on stderr) where this binary has no dynamic loader.
fn program_started_through_the_loader_cannot_spawn() {
    let Some(loader) = dynamic_loader() else {
        eprintln!("security_spawn::a_program_started_through_the_loader_cannot_spawn: skipped");
        return;
    };
    let mut cmd = Command::new(loader);
    cmd.arg(std::env::current_exe().expect("current_exe"));
    assert_spawner_refuses_naming(cmd, "this binary run through ld.so", "dynamic loader");
}

/// Runs `cmd` (a copy of this binary, as uid 65534) in the role [`SPAWNER_ROLE`] and asserts that
/// its spawn was refused with an error naming `AT_SECURE`, and that no child ran `main` in its place.
fn assert_spawner_refuses(cmd: Command, case: &str) {
    assert_spawner_refuses_naming(cmd, case, "AT_SECURE");
}

/// As [`assert_spawner_refuses`], for an error that names `why`.
fn assert_spawner_refuses_naming(mut cmd: Command, case: &str, why: &str) {
    cmd.env("MPROC_TEST_ROLE", SPAWNER_ROLE)
        .env("MPROC_TEST_RUN", common::run_tag())
        .env_remove(SPAWN_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = common::bounded("a privileged spawner", BOUND, move || {
        cmd.output().expect("run the privileged copy")
    });
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{case}: ended with {}; stdout {stdout:?}, stderr {stderr:?}",
        out.status
    );
    assert!(
        !stdout.contains("main ran in a spawned child"),
        "{case}: the spawned child ran main instead of its task: stdout {stdout:?}"
    );
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{SPAWNER}: error")) && line.contains(why),
        "{case}: spawn should refuse, naming {why}: stdout {stdout:?}, stderr {stderr:?}"
    );
}

fn square(x: u64) -> u64 {
    x * x
}

/// After all of the above, spawning for real still works: a `Process` returns its value and a `Pool`
/// maps (the harness then checks that nothing is left in /dev/shm and no child is unreaped).
fn process_and_pool_still_work() {
    for m in [StartMethod::Spawn, StartMethod::Fork] {
        let mut p = Process::builder()
            .start_method(m)
            .target(square, 12)
            .expect("target");
        p.start().expect("start");
        assert_eq!(p.join().expect("join"), 144, "{m:?}");
    }
    let mut pool = Pool::builder().workers(2).build().expect("pool");
    let got = pool.map(square, 0..100u64).expect("map");
    assert_eq!(got, (0..100u64).map(square).collect::<Vec<_>>());
    pool.close();
    pool.join().expect("pool join");
}
