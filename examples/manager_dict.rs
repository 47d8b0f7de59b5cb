//! Word counts from three processes into one shared `Dict`, with a `List` of progress lines: Python's
//! `Manager().dict()` / `Manager().list()`, without the manager's server process.
//!
//! ```text
//! cargo run --release --example manager_dict
//! ```
//!
//! The parent makes a [`Manager`] (a shared heap that grows as it fills; no size to choose), starts
//! three child processes with [`Process::new`], and hands each one the shared `Dict<String, u64>` and
//! `List<String>` themselves, as arguments, with a part of a built-in text. Each child counts the words
//! of its part into the dict with `Dict::entry` (`and_modify(+1).or_insert(1)` in one transaction:
//! concurrent updates of the same word lose nothing) and pushes a summary line into the list; it
//! returns an `mproc::Result`, whose error (if any) crosses back to the parent as it was. The parent
//! joins them, prints the top words, and checks every count against a sequential count of the whole
//! text (it fails loudly if one differs). Nothing is left in `/dev/shm` afterwards.
//!
//! # Two unrelated programs
//! Processes need not be parent and child: any two programs of the same user that agree on a name share
//! the same objects. Each one calls
//!
//! ```no_run
//! let m = mproc::Manager::open_or_create("wordcount-demo", 1 << 20)?;
//! let counts = m.dict::<String, u64>("counts")?; // created empty by whoever comes first
//! counts.update(&"hello".to_string(), |n| n.unwrap_or(0) + 1)?;
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! `open_or_create` makes the manager if the name is free and opens it otherwise (concurrent callers
//! agree on one); `dict`/`list` create the named object on first use and check its type on every later
//! one (asking for `"counts"` as a `List<f64>` is `Error::TypeMismatch`). A manager made by
//! `open_or_create` is persistent: it outlives the programs until one of them removes it with
//! `mproc::Region::unlink("wordcount-demo")`.

use std::collections::HashMap;
use std::process::ExitCode;

use mproc::manager::{Dict, List};
use mproc::{Manager, Process};

const TEXT: &str = "\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of \
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, \
it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had \
everything before us, we had nothing before us, we were all going direct to Heaven, we were all going \
direct the other way - in short, the period was so far like the present period, that some of its \
noisiest authorities insisted on its being received, for good or for evil, in the superlative degree \
of comparison only. There were a king with a large jaw and a queen with a plain face, on the throne of \
England; there were a king with a large jaw and a queen with a fair face, on the throne of France. In \
both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes, \
that things in general were settled for ever.";

const WORKERS: usize = 3;

/// The words of a text, lowercased, without punctuation.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A child: counts the words of its part into the shared dict and reports in the shared list.
fn worker(
    (counts, log, index, part): (Dict<String, u64>, List<String>, usize, String),
) -> mproc::Result<u64> {
    let mut n = 0;
    for w in words(&part) {
        counts.entry(&w).and_modify(|c| *c += 1).or_insert(1)?;
        n += 1;
    }
    log.push(&format!(
        "worker {index} (pid {}) counted {n} words",
        std::process::id()
    ))?;
    Ok(n)
}

/// Splits `text` into `n` parts at word boundaries.
fn split(text: &str, n: usize) -> Vec<String> {
    let all: Vec<&str> = text.split_whitespace().collect();
    all.chunks(all.len().div_ceil(n))
        .map(|c| c.join(" "))
        .collect()
}

fn run() -> Result<(), String> {
    let m = Manager::new().map_err(|e| format!("create manager: {e}"))?;
    let counts = m.dict::<String, u64>("counts").map_err(|e| e.to_string())?;
    let log = m.list::<String>("log").map_err(|e| e.to_string())?;

    let mut children = Vec::new();
    for (i, part) in split(TEXT, WORKERS).into_iter().enumerate() {
        let mut p = Process::new(worker, (counts.clone(), log.clone(), i, part))
            .map_err(|e| format!("worker {i}: {e}"))?;
        p.start().map_err(|e| format!("start worker {i}: {e}"))?;
        children.push(p);
    }
    let mut counted = 0;
    for (i, mut p) in children.into_iter().enumerate() {
        counted += p
            .join()
            .map_err(|e| format!("worker {i}: {e}"))?
            .map_err(|e| format!("worker {i} failed: {e}"))?;
    }

    for line in log.to_vec().map_err(|e| e.to_string())? {
        println!("{line}");
    }
    let mut items = counts.items().map_err(|e| e.to_string())?;
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!("top words:");
    for (w, c) in items.iter().take(8) {
        println!("  {c:>3}  {w}");
    }

    // The check: the shared counts equal a sequential count of the whole text.
    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in words(TEXT) {
        *expected.entry(w).or_default() += 1;
    }
    let total: u64 = expected.values().sum();
    let got: HashMap<String, u64> = items.into_iter().collect();
    if got != expected || counted != total {
        return Err(format!(
            "shared counts differ from the sequential count: {} distinct words shared vs {} expected, \
             workers counted {counted} words, the text has {total}",
            got.len(),
            expected.len()
        ));
    }
    if log.len().map_err(|e| e.to_string())? != WORKERS {
        return Err("a worker's log line is missing".into());
    }
    println!(
        "ok: {total} words, {} distinct, counted by {WORKERS} processes",
        got.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manager_dict: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
