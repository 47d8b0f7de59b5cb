//! The spawn and fork-server handshakes (`src/process/bootstrap.rs`, `src/process/forkserver/mod.rs`),
//! through `mproc::fuzz_hooks::spawn`: the pure decoding steps only. What `accept` does with the
//! numbers of `MPROC_SPAWN_CHILD` (read a key from a socket, a task from a memfd, adopt a result memfd:
//! syscalls on descriptors the value names) and what the fork server's `handle` does after decoding a
//! request (adopt descriptors, fork) are not run here: no descriptor is touched, no process forked.
//!
//! Input: `[mode][rest]`, mode % 8:
//! - 0 `parse_env_value` of the environment value (as `accept` gets it: UTF-8 or nothing); what it
//!   parsed prints back to a value that parses the same.
//! - 1 `spawn_unframe` and `announced_len` under every magic: they agree with each other, and
//!   `spawn_frame` of an unframed body gives the input back.
//! - 2 `decode_outcome` (the parent reading a child's result file); round trip through the child's
//!   encoding.
//! - 3 the spawn task a child decodes (`decode_spawn_task`); re-encoding is stable.
//! - 4 a fork server request (`decode_request`); round trip through `encode_request`.
//! - 5 the fork server's answers, `decode_answer` and `decode_ended`: typed errors
//!   (`Error::ForkServer`); round trips through their encodings.
//! - 6 `FnRef::resolve` of a spawn reference under a key, both from the input (nothing is called).
//! - 7 the environment a fork-server request carries (`decode_environment`): every variable it
//!   accepts is one `std::env::set_var` could set (it panics otherwise); round trip through
//!   `encode_environment`.
//!
//! Every decode's largest allocation is checked against a cap derived from its input size (serde
//! preallocates at most 1 MiB for an announced length; beyond that, what the input holds).
//!
//! Needs `--cfg fuzzing` (cargo-fuzz sets it): a plain build, as `cargo test` makes of every binary,
//! is an empty program.
#![cfg_attr(fuzzing, no_main)]

#[cfg(not(fuzzing))]
fn main() {
    eprintln!("spawn_handshake: build and run it with cargo fuzz (it needs --cfg fuzzing)");
    std::process::exit(2);
}

#[cfg(fuzzing)]
mod target {
    use libfuzzer_sys::fuzz_target;
    use mproc::fuzz_hooks::spawn as s;
    use mproc_fuzz::{check, record, Bytes, Record};

    #[global_allocator]
    static A: mproc_fuzz::Recording = mproc_fuzz::Recording;

    const MAGICS: [[u8; 8]; 6] = [
        s::TASK_MAGIC,
        s::OUTCOME_MAGIC,
        s::REQUEST_MAGIC,
        s::STARTED_MAGIC,
        s::REFUSED_MAGIC,
        s::ENDED_MAGIC,
    ];

    fn check_alloc(what: &str, rec: Record, len: usize) {
        let cap = (1 << 20) + 128 * len + 4096;
        check(rec.largest <= cap, || {
            format!(
                "{what}: a {}-byte allocation from {len} input bytes (cap {cap})",
                rec.largest
            )
        });
    }

    fn env_value(data: &[u8]) {
        let value = std::str::from_utf8(data).unwrap_or("");
        let (r, rec) = record("parse_env_value", || s::parse_env_value(value));
        check_alloc("parse_env_value", rec, data.len());
        if let Ok([a, b, c, d]) = r {
            check(
                s::parse_env_value(&format!("{a}:{b}:{c}:{d}")) == Ok([a, b, c, d]),
                || "the parsed numbers do not print back".into(),
            );
            check(value.split(':').count() == 4, || "not four fields".into());
        }
    }

    fn frames(data: &[u8]) {
        for magic in MAGICS {
            let (body, rec) = record("spawn_unframe", || s::spawn_unframe(magic, data));
            check(rec.largest == 0, || "spawn_unframe allocated".into());
            let head: Option<[u8; 16]> = data.get(..16).map(|h| h.try_into().unwrap());
            let announced = head.and_then(|h| s::announced_len(magic, &h));
            match body {
                Some(b) => {
                    check(announced == Some(b.len() as u64), || {
                        format!("announced {announced:?}, body {}", b.len())
                    });
                    check(s::spawn_frame(magic, b) == data, || {
                        "frame(unframe(x)) != x".into()
                    });
                }
                None => check(
                    announced.is_none_or(|n| n != (data.len() - 16) as u64),
                    || "a frame of the announced length was refused".into(),
                ),
            }
        }
    }

    fn outcome(data: &[u8]) {
        let (r, rec) = record("decode_outcome", || s::decode_outcome(data));
        check_alloc("decode_outcome", rec, data.len());
        if let Some(o) = r {
            let again = s::encode_outcome(&o);
            check(s::decode_outcome(&again) == Some(o), || {
                "outcome round trip".into()
            });
        }
    }

    fn task(data: &[u8]) {
        let (r, rec) = record("decode_spawn_task", || s::reencode_spawn_task(data));
        check_alloc("decode_spawn_task", rec, data.len());
        if let Some(e) = r {
            check(
                s::reencode_spawn_task(&e).as_deref() == Some(&e[..]),
                || "the spawn task's encoding is not stable".into(),
            );
        }
    }

    fn request(data: &[u8]) {
        let (r, rec) = record("decode_request", || s::decode_request(data));
        check_alloc("decode_request", rec, data.len());
        if let Some(req) = r {
            let again = s::encode_request(&req);
            check(s::decode_request(&again) == Some(req), || {
                "request round trip".into()
            });
        }
    }

    fn answers(data: &[u8]) {
        let (r, rec) = record("decode_answer", || s::decode_answer(data));
        check_alloc("decode_answer", rec, data.len());
        match r {
            Ok(pid) => {
                check(data.len() == 20, || {
                    "a pid from a frame that is not 4 bytes long".into()
                });
                let again = s::spawn_frame(s::STARTED_MAGIC, &pid.to_le_bytes());
                check(s::decode_answer(&again).ok() == Some(pid), || {
                    "answer round trip".into()
                });
            }
            Err(e) => check(matches!(e, mproc::Error::ForkServer(_)), || {
                format!("untyped: {e:?}")
            }),
        }
        let (r, rec) = record("decode_ended", || s::decode_ended(data));
        check_alloc("decode_ended", rec, data.len());
        match r {
            Ok((kind, value)) => {
                check(kind <= 1, || format!("kind {kind}"));
                check(s::encode_ended(kind, value) == data, || {
                    "ended round trip".into()
                });
            }
            Err(e) => check(matches!(e, mproc::Error::ForkServer(_)), || {
                format!("untyped: {e:?}")
            }),
        }
    }

    fn environment(data: &[u8]) {
        let (r, rec) = record("decode_environment", || s::decode_environment(data));
        check_alloc("decode_environment", rec, data.len());
        let Ok(vars) = r else { return };
        for (k, v) in &vars {
            check(
                !k.is_empty() && !k.contains(&b'=') && !k.contains(&0) && !v.contains(&0),
                || format!("an unsettable variable accepted: {k:?}={v:?}"),
            );
        }
        let again = s::encode_environment(&vars);
        check(s::decode_environment(&again).as_ref() == Ok(&vars), || {
            "environment round trip".into()
        });
    }

    fn resolve(mut b: Bytes<'_>) {
        let f = (b.u64() as i64, b.u64() as i64, b.u64());
        let mut key = [0u8; 16];
        key.iter_mut().for_each(|k| *k = b.u8());
        let _ = record("FnRef::resolve", || s::resolve_spawn(f, key));
    }

    fuzz_target!(|data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        match mode % 8 {
            0 => env_value(rest),
            1 => frames(rest),
            2 => outcome(rest),
            3 => task(rest),
            4 => request(rest),
            5 => answers(rest),
            6 => resolve(Bytes::new(rest)),
            _ => environment(rest),
        }
    });
}
