//! Writes the seeds of `pool_wire`, `spawn_handshake` and `cluster_wire` into `seeds/<target>/`:
//! genuine messages made by the crate's own encoders (`mproc::fuzz_hooks::*::samples`), framed the way
//! each target reads its input. Needs `--cfg fuzzing` (the hooks exist only then):
//!
//! `RUSTFLAGS="--cfg fuzzing" cargo +nightly run --example gen_seeds -- seeds` (from `fuzz/`).

#[cfg(not(fuzzing))]
fn main() {
    eprintln!("gen_seeds needs the hooks: RUSTFLAGS=\"--cfg fuzzing\" cargo +nightly run --example gen_seeds -- seeds");
    std::process::exit(2);
}

#[cfg(fuzzing)]
fn main() {
    use mproc::fuzz_hooks::{cluster, pool, spawn};
    use std::path::PathBuf;

    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    let write = |target: &str, name: String, bytes: Vec<u8>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let cat = |mode: u8, parts: &[&[u8]]| {
        let mut v = vec![mode];
        parts.iter().for_each(|p| v.extend_from_slice(p));
        v
    };

    // pool_wire (modes: see the target's docs).
    let samples = pool::samples().expect("pool samples");
    for (i, (is_task, body)) in samples.iter().enumerate() {
        let kind = if *is_task {
            pool::KIND_TASK
        } else {
            pool::KIND_RESULT
        };
        let (worker, task) = (if *is_task { 0 } else { 1 }, 7 + i as u64);
        // 0: one whole frame.
        write(
            "pool_wire",
            format!("m0-{i}"),
            cat(0, &[&pool::frame(task, kind, true, worker, body)]),
        );
        // 2/3: the body alone.
        let mode = if *is_task { 2 } else { 3 };
        write("pool_wire", format!("m{mode}-{i}"), cat(mode, &[body]));
        // 4/5: the reader's loop over the body cut into frames of at most 40 bytes (and a wake-up),
        // with a cap of 4096.
        let mut seq = cat(if *is_task { 5 } else { 4 }, &[&4096u16.to_le_bytes()]);
        let mut frames = pool::fragments(task, kind, worker, body, 40);
        frames.insert(0, pool::frame(0, pool::KIND_WAKE, true, 0, &[]));
        for f in &frames {
            seq.extend_from_slice(&(f.len() as u16).to_le_bytes());
            seq.extend_from_slice(f);
        }
        write("pool_wire", format!("m{}-frames-{i}", seq[0]), seq);
        // 1: pushes of the body's fragments into a reassembly capped at the body's size (so it
        // fits), interleaved with another task's, then the same capped one byte short.
        for (tag, max) in [("fits", body.len()), ("over", body.len().saturating_sub(1))] {
            let mut ops = cat(1, &[&(max as u16).to_le_bytes()]);
            let chunks: Vec<&[u8]> = body.chunks(16).collect();
            for (k, c) in chunks.iter().enumerate() {
                let last = k + 1 == chunks.len();
                ops.push(if last { 8 } else { 0 });
                ops.push(3); // task 3
                ops.extend_from_slice(&(c.len() as u16).to_le_bytes());
                ops.push(0); // once
                ops.extend_from_slice(c);
                // Another task's fragment, and a forget of a third.
                ops.extend_from_slice(&[0, 5, 2, 0, 0, b'x', b'y', 7, 9]);
            }
            write("pool_wire", format!("m1-{tag}-{i}"), ops);
        }
    }

    // spawn_handshake.
    write("spawn_handshake", "m0-env".into(), cat(0, &[b"4242:3:4:5"]));
    for (i, (what, bytes)) in spawn::samples().into_iter().enumerate() {
        write(
            "spawn_handshake",
            format!("m1-{what}-{i}"),
            cat(1, &[&bytes]),
        );
        let mode = match what {
            "outcome" => 2,
            "task" => 3,
            "request" => 4,
            _ => 5,
        };
        write(
            "spawn_handshake",
            format!("m{mode}-{what}-{i}"),
            cat(mode, &[&bytes]),
        );
    }
    let mut resolve = vec![6u8];
    resolve.extend_from_slice(&[0; 40]);
    write("spawn_handshake", "m6-zero".into(), resolve);

    // cluster_wire: `[kind][rank][base: u16][message]`.
    for (i, (kind, bytes)) in cluster::samples()
        .expect("cluster samples")
        .into_iter()
        .enumerate()
    {
        write(
            "cluster_wire",
            format!("k{kind}-{i}"),
            cat(kind, &[&[1, 0, 4], &bytes]),
        );
    }
    println!("seeds written under {}", root.display());
}
