//! The pool's wire format (`src/pool/wire.rs`), through `mproc::fuzz_hooks::pool`: what a worker
//! decodes from its task ring and the parent from the shared result ring. Any process that can write a
//! ring is hostile (DESIGN.md, trust model): its frames may come out of order, duplicated, cut, with
//! any task id, kind, `last` flag or worker index.
//!
//! Input: `[mode][rest]`, mode % 6:
//! - 0 `parse` of one frame; `frame` of what it parsed gives the same bytes (bar the 2 reserved
//!   ones); `fragments` of its body, re-parsed and reassembled, give the body back.
//! - 1 a sequence of pushes and forgets into `Reassembly::new(max)` (`[max: u16][op]*`, see [`ops`]),
//!   checked against a model: each completed body is exactly its fragments if they fit in `max`, else
//!   an error; no byte buffer larger than `max` is ever allocated, and the memory held never exceeds
//!   `max` per open task (plus the table).
//! - 2 `decode_task` of a task body; what it decoded re-encodes to the same body (`encode_task`).
//! - 3 `decode_result` of a result body (what the parent does with a reassembled answer); what it
//!   decoded re-encodes (as a worker encodes it) to bytes that decode to the same value.
//! - 4 and 5: the parent's and a worker's loop: `[max: u16]` then length-prefixed frames (`[len: u16]
//!   [frame]`), each parsed, filtered on kind, reassembled, and a complete body decoded as a result
//!   (4) or a task (5).
//!
//! Every decode's largest allocation is checked against a cap derived from its input: serde
//! preallocates at most 1 MiB for a sequence whatever length it announces, and beyond that only what
//! the input's bytes hold (an element takes at least one byte).
//!
//! Needs `--cfg fuzzing` (cargo-fuzz sets it): a plain build, as `cargo test` makes of every binary,
//! is an empty program.
#![cfg_attr(fuzzing, no_main)]

#[cfg(not(fuzzing))]
fn main() {
    eprintln!("pool_wire: build and run it with cargo fuzz (it needs --cfg fuzzing)");
    std::process::exit(2);
}

#[cfg(fuzzing)]
mod target {
    use std::collections::{HashMap, HashSet};

    use libfuzzer_sys::fuzz_target;
    use mproc::fuzz_hooks::pool as w;
    use mproc_fuzz::{check, record, Bytes, Record};

    #[global_allocator]
    static A: mproc_fuzz::Recording = mproc_fuzz::Recording;

    /// What a decode of `len` input bytes may allocate at most at once.
    fn decode_cap(len: usize) -> usize {
        (1 << 20) + 128 * len + 4096
    }

    fn debug() -> bool {
        std::env::var_os("MPROC_FUZZ_DEBUG").is_some()
    }

    fn check_decode_alloc(what: &str, rec: Record, len: usize) {
        check(rec.largest <= decode_cap(len), || {
            format!(
                "{what}: a {}-byte allocation from {len} input bytes",
                rec.largest
            )
        });
    }

    fn parse_one(data: &[u8]) {
        let (r, rec) = record("pool parse", || {
            w::parse(data).map(|(h, b)| (h, b.to_vec()))
        });
        check(rec.largest <= data.len() + 256, || {
            format!("parse allocated {}", rec.largest)
        });
        let ((task, kind, last, worker), body) = match r {
            Ok(x) => x,
            Err(e) => {
                check(matches!(e, mproc::Error::Corrupted(_)), || {
                    format!("untyped: {e:?}")
                });
                check(data.len() < w::FRAME_HEAD, || "a long frame refused".into());
                return;
            }
        };
        let again = w::frame(task, kind, last, worker, &body);
        check(again.len() == data.len(), || "frame length differs".into());
        check(
            again[..9] == data[..9]
                && again[9] == u8::from(data[9] != 0)
                && again[10..14] == data[10..14]
                && again[14..16] == [0, 0]
                && again[16..] == data[16..],
            || "frame(parse(x)) differs from x".into(),
        );
        // Cut the body again, in frames of at most `max_frame` bytes, and put it back together.
        let max_frame = usize::from(data[8]) + usize::from(data[13] % 64);
        let frames = w::fragments(task, w::KIND_RESULT, worker, &body, max_frame);
        let mut r = w::Reassembly::new(body.len() as u64);
        let mut out = None;
        for (i, f) in frames.iter().enumerate() {
            check(f.len() <= max_frame.max(w::FRAME_HEAD + 1), || {
                format!("a {}-byte fragment for max_frame {max_frame}", f.len())
            });
            let ((t, k, l, wk), b) = w::parse(f).expect("a fragment parses");
            check(
                (t, k, l, wk) == (task, w::KIND_RESULT, i + 1 == frames.len(), worker),
                || "fragment header".into(),
            );
            out = r.push(t, l, b);
        }
        check(out == Some(Ok(body.clone())), || {
            "fragments do not reassemble to the body".into()
        });
    }

    /// One task's state in the model of `Reassembly`.
    #[derive(Default)]
    struct ModelPart {
        bytes: Vec<u8>,
        oversized: bool,
    }

    /// Mode 1: `[max: u16][op]*`, op = `[code][...]`:
    /// - code % 8 == 7: `[task]` forget it;
    /// - else a push: `[task][len: u16][repeat]` then `len` bytes taken from the input (fewer if it ends),
    ///   repeated `repeat % 64 + 1` times (up to 4 MiB: fragments far past any cap), `last` = bit 3 of code.
    ///
    /// A task byte < 0xf0 names one of 16 ids (`byte % 16`, so frames of one task collide often); else the
    /// next 8 bytes are a task id.
    fn ops(mut b: Bytes<'_>) {
        let max = u64::from(b.u16());
        let mut r = record("Reassembly::new", || w::Reassembly::new(max)).0;
        let mut model: HashMap<u64, ModelPart> = HashMap::new();
        // Net bytes the reassembly holds (allocated inside its calls, minus what it handed back).
        let mut held: isize = 0;
        let mut peak_open = 0usize;
        let task_of = |b: &mut Bytes<'_>| {
            let t = b.u8();
            if t < 0xf0 {
                u64::from(t % 16)
            } else {
                b.u64()
            }
        };
        while !b.is_empty() {
            let code = b.u8();
            if code % 8 == 7 {
                let task = task_of(&mut b);
                let ((), rec) = record("Reassembly::forget", || r.forget(task));
                held += rec.net;
                model.remove(&task);
                continue;
            }
            let last = code & 8 != 0;
            let task = task_of(&mut b);
            let len = usize::from(b.u16());
            let repeat = usize::from(b.u8() % 64) + 1;
            let part = b.take(len);
            let fragment = part.repeat(repeat);
            let (out, rec) = record("Reassembly::push", || r.push(task, last, &fragment));
            held += rec.net;
            // Never a byte buffer past the cap (an error message is a few dozen bytes).
            check(rec.largest_bytes as u64 <= max.max(256), || {
                format!(
                    "push of {} bytes to task {task} (cap {max}) allocated a {}-byte buffer",
                    fragment.len(),
                    rec.largest_bytes
                )
            });
            // The model.
            let m = model.entry(task).or_default();
            if !m.oversized {
                if (m.bytes.len() + fragment.len()) as u64 <= max {
                    m.bytes.extend_from_slice(&fragment);
                } else {
                    m.oversized = true;
                    m.bytes = Vec::new();
                }
            }
            match (&out, last) {
                (None, false) => {}
                (Some(got), true) => {
                    let m = model.remove(&task).expect("in the model");
                    match got {
                        Ok(body) => {
                            check(!m.oversized && *body == m.bytes, || {
                                format!(
                                    "task {task}: a body of {} bytes, not the model's",
                                    body.len()
                                )
                            });
                            held -= body.capacity() as isize;
                        }
                        Err(e) => {
                            check(m.oversized, || format!("task {task} failed: {e}"));
                            held -= e.capacity() as isize;
                        }
                    }
                }
                _ => check(false, || format!("push(last = {last}) returned {out:?}")),
            }
            peak_open = peak_open.max(model.len());
            // Per open task at most `max` bytes; the table (buckets of ~40 bytes, up to 8/7 of the peak
            // rounded up to a power of two) is the rest.
            let bound = model.len() as isize * max as isize + 128 * (peak_open as isize + 8);
            check(held <= bound, || {
                format!(
                    "the reassembly holds {held} bytes for {} open tasks (cap {max} each, bound {bound})",
                    model.len()
                )
            });
            if debug() {
                eprintln!(
                    "task {task} last {last} len {} held {held} bound {bound}",
                    fragment.len()
                );
            }
        }
    }

    fn task_body(body: &[u8]) {
        let (r, rec) = record("decode_task", || w::decode_task(body));
        check_decode_alloc("decode_task", rec, body.len());
        match r {
            Some((f, w::Payload::Inline(p))) => {
                check(w::encode_task_inline(f, &p) == body, || {
                    "encode_task(decode_task(x)) != x".into()
                });
            }
            Some((f, w::Payload::Shared(h))) => {
                // The handle's bytes may have a tail postcard ignores; the decoded handle re-encodes to
                // bytes that decode to the same handle.
                let mut again = w::encode_task_inline(f, &[]);
                *again.last_mut().unwrap() = 1;
                again.extend_from_slice(&h);
                check(
                    w::decode_task(&again) == Some((f, w::Payload::Shared(h.clone()))),
                    || "a shared payload's handle does not round-trip".into(),
                );
            }
            None => {}
        }
    }

    fn result_body(body: &[u8]) {
        let (r, rec) = record("decode_result", || w::decode_result(body));
        check_decode_alloc("decode_result", rec, body.len());
        if let Ok(o) = r {
            let again = w::encode_result(&o);
            check(w::decode_result(&again) == Ok(o), || {
                "decode(encode(decode(x))) != decode(x)".into()
            });
        }
    }

    /// Modes 4 and 5: a reader's loop over frames.
    fn reader(mut b: Bytes<'_>, parent: bool) {
        let max = u64::from(b.u16());
        let mut r = w::Reassembly::new(max);
        let mut open = HashSet::new();
        while !b.is_empty() {
            let len = usize::from(b.u16() % 2048);
            let frame = b.take(len);
            let Ok(((task, kind, last, _worker), body)) = w::parse(frame) else {
                continue;
            };
            let want = if parent { w::KIND_RESULT } else { w::KIND_TASK };
            if kind != want {
                continue;
            }
            let (out, rec) = record("Reassembly::push", || r.push(task, last, body));
            check(rec.largest_bytes as u64 <= max.max(256), || {
                format!("a {}-byte buffer past the cap {max}", rec.largest_bytes)
            });
            open.insert(task);
            let Some(out) = out else { continue };
            open.remove(&task);
            if let Ok(body) = out {
                check(body.len() as u64 <= max, || "a body past the cap".into());
                if parent {
                    result_body(&body);
                } else {
                    task_body(&body);
                }
            }
        }
    }

    fuzz_target!(|data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        match mode % 6 {
            0 => parse_one(rest),
            1 => ops(Bytes::new(rest)),
            2 => task_body(rest),
            3 => result_body(rest),
            4 => reader(Bytes::new(rest), true),
            _ => reader(Bytes::new(rest), false),
        }
    });
}
