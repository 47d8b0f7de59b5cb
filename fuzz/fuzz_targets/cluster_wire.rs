//! The cluster's messages (`src/cluster/wire.rs`), through `mproc::fuzz_hooks::cluster`: `decode` of
//! every message type a rank decodes from another rank's bytes (commands, shares, replies, stream
//! items, array arguments, the shared-memory probe offer), then `encode` of what it decoded.
//!
//! `fuzz_hooks` compiles `cluster/wire.rs` a second time, from the same file, outside the `cluster`
//! module (whose items are private to it): the decoders and serde derives fuzzed are that file's, built
//! without feature `mpi` and so without Open MPI. The transport (`cluster/transport.rs`: the size checks
//! before a message is received) is MPI calls and is not fuzzed.
//!
//! Input: `[kind][rank: u8][base: u16][message]`. Checks: no panic; a refused message is
//! `Error::Decode`; a decoded message re-encodes to bytes that re-encode to themselves; a decoded
//! `RemoteFailure` turns into rank 0's error without panicking whatever task index it names; the
//! largest allocation stays under a cap derived from the message's size.
//!
//! Needs `--cfg fuzzing` (cargo-fuzz sets it): a plain build, as `cargo test` makes of every binary,
//! is an empty program.
#![cfg_attr(fuzzing, no_main)]

#[cfg(not(fuzzing))]
fn main() {
    eprintln!("cluster_wire: build and run it with cargo fuzz (it needs --cfg fuzzing)");
    std::process::exit(2);
}

#[cfg(fuzzing)]
mod target {
    use libfuzzer_sys::fuzz_target;
    use mproc::fuzz_hooks::cluster as c;
    use mproc_fuzz::{check, record};

    #[global_allocator]
    static A: mproc_fuzz::Recording = mproc_fuzz::Recording;

    fuzz_target!(|data: &[u8]| {
        let [kind, rank, b0, b1, msg @ ..] = data else {
            return;
        };
        let cap = (1 << 20) + 128 * msg.len() + 4096;
        let (r, rec) = record("cluster decode", || c::reencode(*kind, msg));
        check(rec.largest <= cap, || {
            format!("a {}-byte allocation from {} bytes", rec.largest, msg.len())
        });
        match r {
            Ok(e) => {
                let again = c::reencode(*kind, &e);
                check(again.as_deref().ok() == Some(&e[..]), || {
                    format!(
                        "kind {}: the re-encoding is not stable: {again:?}",
                        kind % c::KINDS
                    )
                });
            }
            Err(e) => check(matches!(e, mproc::Error::Decode { .. }), || {
                format!("untyped: {e:?}")
            }),
        }
        let base = usize::from(u16::from_le_bytes([*b0, *b1])) << (rank % 64);
        let (r, rec) = record("RemoteFailure::into_error", || {
            c::failure_into_error(msg, usize::from(*rank), base)
        });
        check(rec.largest <= cap, || {
            format!("into_error: {}", rec.largest)
        });
        if let Err(e) = r {
            check(matches!(e, mproc::Error::Decode { .. }), || {
                format!("untyped: {e:?}")
            });
        }
    });
}
