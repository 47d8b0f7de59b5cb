//! Several processes, each handling one item of a list, started and then joined.
//!
//! Run with `cargo run --release --example process_basics`.

use mproc::{Process, StartMethod};

/// The work for one item: runs in its own process.
fn describe(word: String) -> (String, u32, usize) {
    (word.to_uppercase(), std::process::id(), word.len())
}

fn main() -> Result<(), mproc::Error> {
    let words = ["alpha", "beta", "gamma", "delta", "epsilon"];

    // Start one spawned process per item, all running at once...
    let mut procs = words
        .iter()
        .map(|w| {
            let mut p = Process::builder()
                .name(format!("describe-{w}"))
                .target(describe, w.to_string())?;
            p.start()?;
            Ok(p)
        })
        .collect::<Result<Vec<_>, mproc::Error>>()?;

    // ...then join them in order and check each result.
    for (p, w) in procs.iter_mut().zip(words) {
        let pid = p.pid().expect("started");
        let (upper, child_pid, len) = p.join()?;
        assert_eq!(upper, w.to_uppercase());
        assert_eq!(len, w.len());
        assert_eq!(child_pid, pid, "the work ran in the child");
        assert_ne!(child_pid, std::process::id());
        println!(
            "{:<18} pid {child_pid:>7}: {w} -> {upper} ({len} letters), exit code {:?}",
            p.name(),
            p.exitcode()
        );
    }

    // The same with the fork start method and a closure that captures the list.
    let mut total = Process::builder().fork(move || words.iter().map(|w| w.len()).sum::<usize>());
    assert_eq!(total.start_method(), StartMethod::Fork);
    total.start()?;
    let n = total.join()?;
    assert_eq!(n, words.iter().map(|w| w.len()).sum::<usize>());
    println!("forked child counted {n} letters in all");
    Ok(())
}
