//! What a caller learns when a task panics, in a `Pool` and in a `Process`: the message and the
//! `file:line:column` of the panic, whatever the program's panic strategy. Built with `panic = "abort"`
//! (the `shipped` profile: `cargo run --profile shipped --example task_panic`), the worker process dies
//! of the panic and is replaced, yet its hook reported the panic first, so the caller still gets
//! `TaskPanicked`/`ProcessPanicked` rather than a bare `WorkerDied { signal: Some(6) }`.
//!
//! Exits non-zero if anything arrives other than what is expected.

use mproc::{Error, Pool, Process};

/// The line of the `panic!` below, to check the reported location against.
const PANIC_LINE: u32 = line!() + 4;

fn checked_sqrt(x: i64) -> f64 {
    if x < 0 {
        panic!("negative input {x}");
    }
    (x as f64).sqrt()
}

fn expect_panic(what: &str, message: &str, location: &str, want: &str) {
    let want_location = format!("{}:{PANIC_LINE}:", file!());
    println!("{what}: panicked at {location}: {message}");
    assert_eq!(message, want, "{what}: the panic message");
    assert!(
        location.starts_with(&want_location),
        "{what}: location {location}, want {want_location}…"
    );
}

fn main() -> Result<(), Error> {
    println!(
        "panic strategy: {}",
        if cfg!(panic = "abort") {
            "abort"
        } else {
            "unwind"
        }
    );
    let pool = Pool::builder().workers(2).build()?;
    match pool.map(checked_sqrt, [4, 9, -1, 16]) {
        Err(Error::TaskPanicked {
            task,
            message,
            location,
        }) => {
            assert_eq!(task, 2, "the failing item");
            expect_panic("pool task", &message, &location, "negative input -1");
        }
        other => panic!("pool: expected TaskPanicked, got {other:?}"),
    }
    // The pool replaced whatever died and goes on.
    assert_eq!(pool.map(checked_sqrt, [25, 36])?, vec![5.0, 6.0]);

    let mut p = Process::new(checked_sqrt, -7)?;
    p.start()?;
    match p.join() {
        Err(Error::ProcessPanicked { message, location }) => {
            expect_panic("process", &message, &location, "negative input -7");
        }
        other => panic!("process: expected ProcessPanicked, got {other:?}"),
    }
    println!("ok: both panics arrived with their message and location");
    Ok(())
}
