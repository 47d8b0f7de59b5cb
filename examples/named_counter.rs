//! A counter in named shared memory that any number of programs increment at once, without losing a
//! single increment.
//!
//! Each run opens the persistent named `Value<u64>` (creating it, at 0, if it does not exist yet), adds to
//! it under its robust lock, and prints the value it left. Because the read-modify-write happens under the
//! lock, copies started at the same time never lose an increment; and if one is killed while holding the
//! lock, the next one is told (`OwnerDied`) and carries on instead of hanging.
//!
//! ```text
//! named_counter [--name NAME] [--add N] [--times K]   add N, K times (defaults: mproc-example-counter, 1, 1)
//! named_counter [--name NAME] --get                    print the current value
//! named_counter [--name NAME] --remove                 remove the counter's name from /dev/shm
//! ```
//!
//! Try it from several terminals at once:
//!
//! ```text
//! cargo build --example named_counter
//! # in terminals 1, 2 and 3, at the same time:
//! target/debug/examples/named_counter --times 100000
//! # afterwards, anywhere:
//! target/debug/examples/named_counter --get       # counter mproc-example-counter = 300000
//! target/debug/examples/named_counter --remove
//! ```
//!
//! The counter lives in `/dev/shm/mproc.<NAME>` and outlives the programs (it is persistent) until
//! `--remove`, or a reboot.

use std::process::ExitCode;

use mproc::{Error, Region, Value};

const DEFAULT_NAME: &str = "mproc-example-counter";
const USAGE: &str = "usage: named_counter [--name NAME] [--add N] [--times K] [--get] [--remove]";

enum Action {
    Add { add: u64, times: u64 },
    Get,
    Remove,
}

struct Args {
    name: String,
    action: Action,
}

fn parse_args() -> Result<Args, String> {
    let mut name = DEFAULT_NAME.to_owned();
    let (mut add, mut times) = (1u64, 1u64);
    let (mut get, mut remove) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--name" => name = value("--name")?,
            "--add" => add = value("--add")?.parse().map_err(|e| format!("--add: {e}"))?,
            "--times" => {
                times = value("--times")?
                    .parse()
                    .map_err(|e| format!("--times: {e}"))?
            }
            "--get" => get = true,
            "--remove" => remove = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let action = match (get, remove) {
        (true, true) => return Err("--get and --remove exclude each other".into()),
        (true, false) => Action::Get,
        (false, true) => Action::Remove,
        (false, false) => Action::Add { add, times },
    };
    Ok(Args { name, action })
}

fn run(args: Args) -> Result<(), Error> {
    let name = &args.name;
    match args.action {
        Action::Get => {
            let counter = Value::<u64>::open(name)?;
            println!("counter {name} = {}", counter.get());
        }
        Action::Remove => {
            Region::unlink(name)?;
            println!("counter {name} removed");
        }
        Action::Add { add, times } => {
            let counter = Value::<u64>::open_or_create(name, 0)?;
            let mut last = None;
            for _ in 0..times {
                let mut guard = counter.lock().unwrap_or_else(|died| {
                    // A previous program was killed while holding the lock. An add is a single store,
                    // so there is nothing half-done to repair: go on with the value it left.
                    eprintln!("note: {died}; continuing");
                    died.into_inner()
                });
                *guard = guard.wrapping_add(add);
                last = Some(*guard);
            }
            let value = last.unwrap_or_else(|| counter.get());
            println!("counter {name} = {value}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        // `--help` asks for the usage (on stdout, success); anything else is a mistake (stderr, code 2).
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
