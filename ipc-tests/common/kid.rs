//! [`Kid`]: the parent's handle on a child role, with every wait bounded.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A child started by [`super::spawn_role`], its stdout read line by line on a helper thread so that
/// every read can be bounded. Dropping it kills and reaps the child if the test did not, so that a
/// failing test does not also leave a process behind.
pub struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// How long any wait on this child may take before we call it a hang (proves "no hang", never
    /// measures speed).
    bound: Duration,
}

impl Kid {
    /// Starts the role `role` with `arg`; every wait on it is bounded by `bound`.
    pub fn spawn(role: &str, arg: &str, bound: Duration) -> Kid {
        Kid::spawn_under(&[], role, arg, bound)
    }

    /// As [`Kid::spawn`], through `wrapper` (see [`super::spawn_role_under`]).
    pub fn spawn_under(wrapper: &[&str], role: &str, arg: &str, bound: Duration) -> Kid {
        let mut child = super::spawn_role_under(wrapper, role, arg);
        let out = child.stdout.take().expect("spawn_role pipes stdout");
        let (tx, lines) = mpsc::channel();
        // Ends at EOF, i.e. when the child exits or is killed.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Kid {
            child,
            lines,
            bound,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child prints, if it prints one within `limit`.
    pub fn line_within(&mut self, limit: Duration) -> Result<String, RecvTimeoutError> {
        self.lines.recv_timeout(limit)
    }

    /// The next line the child prints (bounded).
    #[track_caller]
    pub fn next_line(&mut self) -> String {
        match self.line_within(self.bound) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "child {} printed nothing within {:?}",
                    self.pid(),
                    self.bound
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.wait();
                panic!("child {} exited ({st}) without printing", self.pid())
            }
        }
    }

    /// Waits (bounded) for the child to print `want` as its next line.
    #[track_caller]
    pub fn expect_line(&mut self, want: &str) {
        let line = self.next_line();
        assert_eq!(line, want, "child {} printed something else", self.pid());
    }

    /// Every line the child printed that was not read yet, up to its end (call after it ended).
    #[track_caller]
    pub fn rest(&mut self) -> Vec<String> {
        let deadline = Instant::now() + self.bound;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "child {}: stdout not closed within {:?}",
                        self.pid(),
                        self.bound
                    )
                }
            }
        }
    }

    #[track_caller]
    pub fn assert_running(&mut self) {
        let st = self.child.try_wait().expect("try_wait");
        assert!(st.is_none(), "child {} exited early: {st:?}", self.pid());
    }

    /// Sends SIGKILL without reaping: the child becomes a zombie until [`Kid::wait`].
    pub fn signal_kill(&mut self) {
        self.child.kill().expect("SIGKILL a child");
    }

    /// SIGKILL, then reap (bounded); how the child ended, whether or not by this signal.
    pub fn kill_and_wait(&mut self) -> ExitStatus {
        self.signal_kill();
        self.wait()
    }

    /// SIGKILL, then reap. Panics if the child had already ended by itself (it failed on its own).
    #[track_caller]
    pub fn kill(&mut self) {
        let st = self.kill_and_wait();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "child {} ended by itself: {st}",
            self.pid()
        );
    }

    /// Reaps the child (bounded).
    pub fn wait(&mut self) -> ExitStatus {
        super::wait_bounded(&mut self.child, self.bound)
    }

    /// Waits (bounded) and asserts a clean exit.
    #[track_caller]
    pub fn join_ok(&mut self) {
        let st = self.wait();
        assert!(st.success(), "child {} failed: {st}", self.pid());
    }

    /// Reaps the child, which must have exited with `code`.
    #[track_caller]
    pub fn expect_exit(&mut self, code: i32) {
        let st = self.wait();
        assert_eq!(
            st.code(),
            Some(code),
            "child {} ended with {st}",
            self.pid()
        );
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        // Only a child still running here means the test already failed; errors would hide its message.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
