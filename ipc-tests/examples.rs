//! The example programs, run as a user would run them: several copies at once.
//!
//! These tests build nothing: `cargo test` builds the examples before it runs the tests. A plain
//! `cargo test --test ipc` does not, so the tests fail with a message saying how to build them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Value};

use crate::common::{self, Role};

const BOUND: Duration = Duration::from_secs(60);
const COPIES: u64 = 4;
const TIMES: u64 = 500;

pub const ROLES: &[Role] = &[];

pub fn tests() -> Vec<Trial> {
    vec![Trial::test(
        "examples::named_counter_from_concurrent_copies",
        || {
            named_counter_from_concurrent_copies();
            Ok(())
        },
    )]
}

fn run_to_end(bin: &PathBuf, args: &[&str]) -> Output {
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start example");
    bounded_output(child)
}

/// `wait_with_output`, bounded (kills the program if it overstays). The programs print a line or two,
/// far less than a pipe buffer, so they cannot block on a full pipe while we wait for them to exit.
fn bounded_output(mut child: std::process::Child) -> Output {
    use std::io::Read;
    let status = common::wait_bounded(&mut child, BOUND);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_end(&mut stderr)
        .expect("read stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

#[track_caller]
fn stdout_ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn named_counter_from_concurrent_copies() {
    let bin = common::example("named_counter");
    let name = common::unique_name("counter");
    let times = TIMES.to_string();
    let copies: Vec<_> = (0..COPIES)
        .map(|_| {
            Command::new(&bin)
                .args(["--name", &name, "--times", &times])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start example")
        })
        .collect();
    let mut finals: Vec<u64> = copies
        .into_iter()
        .map(|c| {
            let text = stdout_ok("a concurrent copy", &bounded_output(c));
            let prefix = format!("counter {name} = ");
            let v = text
                .trim()
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("unexpected output {text:?}"));
            v.parse().expect("a number")
        })
        .collect();
    finals.sort_unstable();
    // Each copy prints the value it left: the last one to finish saw every increment.
    assert_eq!(finals.last(), Some(&(COPIES * TIMES)), "finals: {finals:?}");
    assert!(
        finals.iter().all(|&v| v >= TIMES),
        "a copy saw fewer than its own increments: {finals:?}"
    );

    let get = stdout_ok("--get", &run_to_end(&bin, &["--name", &name, "--get"]));
    assert_eq!(get.trim(), format!("counter {name} = {}", COPIES * TIMES));
    // And directly, as another program using the library would see it.
    assert_eq!(
        Value::<u64>::open(&name)
            .expect("open the example's counter")
            .get(),
        COPIES * TIMES
    );

    let removed = stdout_ok(
        "--remove",
        &run_to_end(&bin, &["--name", &name, "--remove"]),
    );
    assert_eq!(removed.trim(), format!("counter {name} removed"));
    assert!(
        matches!(Value::<u64>::open(&name), Err(Error::NotFound { .. })),
        "--remove unlinked it"
    );
    let again = run_to_end(&bin, &["--name", &name, "--get"]);
    assert!(
        !again.status.success(),
        "--get of a removed counter must fail"
    );
}
