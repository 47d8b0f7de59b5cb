//! Entry points for the fuzz targets in `fuzz/`, compiled only under `--cfg fuzzing` (which cargo-fuzz
//! passes to every crate it builds): never part of a normal build, never public API.
//!
//! Why it exists: the wire formats a worker, a spawned child or the fork server decode from bytes
//! another process wrote (`pool/wire.rs`, `process/bootstrap.rs`, `process/forkserver/mod.rs`,
//! `cluster/wire.rs`) are `pub(crate)`, so the fuzz targets cannot reach them through the public API.
//! Each function here is a thin call of the crate's own decoder or encoder, with its result turned into
//! plain public data; none decides anything itself. Nothing here touches a descriptor, a region or a
//! process: only the pure decoding steps are exposed (see `fuzz/README.md` for what is not fuzzed).

use crate::error::Result;

/// `pool/wire.rs`: frames, reassembly, task bodies, and the result body the parent decodes.
pub mod pool {
    use super::Result;
    use crate::pool::wire::{self, ItemFailure, ItemResults, PayloadRef};
    use crate::process::fnref::FnRef;

    /// `wire::FRAME_HEAD`.
    pub const FRAME_HEAD: usize = wire::FRAME_HEAD;
    /// `wire::KIND_TASK`.
    pub const KIND_TASK: u8 = wire::KIND_TASK;
    /// `wire::KIND_RESULT`.
    pub const KIND_RESULT: u8 = wire::KIND_RESULT;
    /// `wire::KIND_WAKE`.
    pub const KIND_WAKE: u8 = wire::KIND_WAKE;
    /// `wire::KIND_EXITING`.
    pub const KIND_EXITING: u8 = wire::KIND_EXITING;

    /// A frame header: (task, kind, last, worker).
    pub type Head = (u64, u8, bool, u32);

    /// `wire::parse`.
    pub fn parse(frame: &[u8]) -> Result<(Head, &[u8])> {
        wire::parse(frame).map(|(h, b)| ((h.task, h.kind, h.last, h.worker), b))
    }

    /// `wire::frame`.
    pub fn frame(task: u64, kind: u8, last: bool, worker: u32, part: &[u8]) -> Vec<u8> {
        wire::frame(task, kind, last, worker, part)
    }

    /// `wire::fragments`, collected.
    pub fn fragments(
        task: u64,
        kind: u8,
        worker: u32,
        body: &[u8],
        max_frame: usize,
    ) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let _ = wire::fragments(task, kind, worker, body, max_frame, |f| {
            v.push(f.clone());
            Ok(())
        });
        v
    }

    /// `wire::Reassembly`.
    #[derive(Debug)]
    pub struct Reassembly(wire::Reassembly);

    impl Reassembly {
        /// `Reassembly::new`.
        pub fn new(max: u64) -> Self {
            Reassembly(wire::Reassembly::new(max))
        }
        /// `Reassembly::push`.
        pub fn push(
            &mut self,
            task: u64,
            last: bool,
            fragment: &[u8],
        ) -> Option<std::result::Result<Vec<u8>, String>> {
            self.0.push(task, last, fragment)
        }
        /// `Reassembly::forget`.
        pub fn forget(&mut self, task: u64) {
            self.0.forget(task)
        }
    }

    /// A function reference as its three words (func, adapter, mac).
    pub type FnWords = (i64, i64, u64);

    /// Where a decoded task's payload is.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Payload {
        /// The inline payload bytes.
        Inline(Vec<u8>),
        /// A shared block's handle, re-encoded (postcard) as the parent encodes it.
        Shared(Vec<u8>),
    }

    /// `wire::decode_task`.
    pub fn decode_task(body: &[u8]) -> Option<(FnWords, Payload)> {
        let (f, p) = wire::decode_task(body)?;
        let p = match p {
            PayloadRef::Inline(b) => Payload::Inline(b.to_vec()),
            PayloadRef::Shared(h) => Payload::Shared(postcard::to_allocvec(&h).ok()?),
        };
        Some(((f.func, f.adapter, f.mac), p))
    }

    /// `wire::encode_task` with an inline payload.
    pub fn encode_task_inline(f: FnWords, payload: &[u8]) -> Vec<u8> {
        let f = FnRef {
            func: f.0,
            adapter: f.1,
            mac: f.2,
        };
        wire::encode_task(f, &wire::Payload::Inline(payload.to_vec())).expect("inline encodes")
    }

    /// One item of a result body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Item {
        /// The item's encoded value.
        Value(Vec<u8>),
        /// `ItemFailure::Panicked`.
        Panicked(String, String),
        /// `ItemFailure::Failed`.
        Failed(String),
    }

    /// A whole result body: the items, or why the task could not run.
    pub type Outcome = std::result::Result<Vec<Item>, String>;

    /// What the parent makes of a reassembled result body (`Dispatcher::on_frame`): `Err` when it does
    /// not decode.
    pub fn decode_result(bytes: &[u8]) -> std::result::Result<Outcome, String> {
        // A block answer attaches a block of another process through /proc: not from fuzz bytes.
        if crate::pool::answer::names_a_block(bytes) {
            return Err("a block answer".into());
        }
        let r = match crate::pool::answer::read(bytes) {
            crate::pool::answer::Read::Outcome(r) => r,
            crate::pool::answer::Read::Unattached(why) => return Err(why),
        };
        Ok(r.map(|items| {
            items
                .into_iter()
                .map(|i| match i {
                    Ok(v) => Item::Value(v.as_slice().to_vec()),
                    Err(ItemFailure::Panicked { message, location }) => {
                        Item::Panicked(message, location)
                    }
                    Err(ItemFailure::Failed(m)) => Item::Failed(m),
                })
                .collect()
        }))
    }

    fn double(x: u64) -> u64 {
        x * 2
    }

    /// Genuine messages for the fuzzer's seeds, made by the crate's own encoders: task bodies (`true`)
    /// of a signed pool function with an inline and a shared payload, and result bodies (`false`).
    pub fn samples() -> Result<Vec<(bool, Vec<u8>)>> {
        use crate::pool::worker::map_fn;
        use crate::process::fnref::FnKey;
        let f = map_fn(double).sign(&FnKey::from_bytes([7; 16]));
        let inline = wire::Payload::encode(&vec![1u64, 2, 3])?;
        let shared = wire::Payload::Shared(crate::SharedArray::<u8>::zeroed(64)?);
        let value = |x: u64| postcard::to_allocvec(&x).expect("encodes");
        Ok(vec![
            (true, wire::encode_task(f, &inline)?),
            (
                true,
                wire::encode_task(f, &wire::Payload::Inline(Vec::new()))?,
            ),
            (true, wire::encode_task(f, &shared)?),
            (
                false,
                encode_result(&Ok(vec![Item::Value(value(2)), Item::Value(value(4))])),
            ),
            (
                false,
                encode_result(&Ok(vec![
                    Item::Value(value(6)),
                    Item::Panicked("boom".into(), "src/main.rs:3:5".into()),
                    Item::Failed("cannot decode the task".into()),
                ])),
            ),
            (
                false,
                encode_result(&Err("a message larger than 268435456 bytes".into())),
            ),
        ])
    }

    /// A result body as a worker encodes it (`worker::worker_main`).
    pub fn encode_result(outcome: &Outcome) -> Vec<u8> {
        let r: std::result::Result<ItemResults, String> = outcome.clone().map(|items| {
            items
                .into_iter()
                .map(|i| match i {
                    Item::Value(v) => Ok(wire::ItemBytes::Owned(v)),
                    Item::Panicked(message, location) => {
                        Err(ItemFailure::Panicked { message, location })
                    }
                    Item::Failed(m) => Err(ItemFailure::Failed(m)),
                })
                .collect()
        });
        crate::pool::answer::inline(&r)
    }
}

/// `process/bootstrap.rs` and `process/forkserver/mod.rs`: the spawn environment value, spawn frames, the
/// spawn task and outcome, the fork server's request and answers.
pub mod spawn {
    use super::Result;
    use crate::process::bootstrap::{self, Failure, Outcome};
    use crate::process::fnref::{FnKey, FnRef};
    use crate::process::forkserver;
    use crate::sys::process::WaitStatus;

    /// The spawn task frame's magic.
    pub const TASK_MAGIC: [u8; 8] = bootstrap::TASK_MAGIC;
    /// The outcome frame's magic.
    pub const OUTCOME_MAGIC: [u8; 8] = bootstrap::OUTCOME_MAGIC;
    /// The fork server request's magic.
    pub const REQUEST_MAGIC: [u8; 8] = forkserver::REQUEST_MAGIC;
    /// The fork server's "started" answer's magic.
    pub const STARTED_MAGIC: [u8; 8] = forkserver::STARTED_MAGIC;
    /// The fork server's "refused" answer's magic.
    pub const REFUSED_MAGIC: [u8; 8] = forkserver::REFUSED_MAGIC;
    /// The fork server's "ended" report's magic.
    pub const ENDED_MAGIC: [u8; 8] = forkserver::ENDED_MAGIC;

    /// `bootstrap::parse_env_value`.
    pub fn parse_env_value(value: &str) -> std::result::Result<[i32; 4], String> {
        bootstrap::parse_env_value(value)
    }

    /// `bootstrap::spawn_frame`.
    pub fn spawn_frame(magic: [u8; 8], body: &[u8]) -> Vec<u8> {
        bootstrap::spawn_frame(magic, body)
    }

    /// `bootstrap::spawn_unframe`.
    pub fn spawn_unframe(magic: [u8; 8], bytes: &[u8]) -> Option<&[u8]> {
        bootstrap::spawn_unframe(magic, bytes)
    }

    /// `bootstrap::announced_len`.
    pub fn announced_len(magic: [u8; 8], head: &[u8; 16]) -> Option<u64> {
        bootstrap::announced_len(magic, head)
    }

    /// A child's outcome, as plain data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum OutcomeData {
        /// `Outcome::Value`.
        Value(Vec<u8>),
        /// `Outcome::Panic`.
        Panic(String, String),
        /// `Outcome::Failed`: the failure's variant (0..=3) and its strings.
        Failed(u8, String, String),
    }

    /// `bootstrap::decode_outcome`.
    pub fn decode_outcome(bytes: &[u8]) -> Option<OutcomeData> {
        Some(match bootstrap::decode_outcome(bytes)? {
            Outcome::Value(v) => OutcomeData::Value(v),
            Outcome::Panic { message, location } => OutcomeData::Panic(message, location),
            Outcome::Failed(Failure::ArgDecode(a, b)) => OutcomeData::Failed(0, a, b),
            Outcome::Failed(Failure::ResultEncode(a)) => OutcomeData::Failed(1, a, String::new()),
            Outcome::Failed(Failure::ExeMismatch(a)) => OutcomeData::Failed(2, a, String::new()),
            Outcome::Failed(Failure::Setup(a)) => OutcomeData::Failed(3, a, String::new()),
        })
    }

    /// An outcome frame as a child writes it (`bootstrap::publish`, minus the write).
    pub fn encode_outcome(o: &OutcomeData) -> Vec<u8> {
        let o = match o.clone() {
            OutcomeData::Value(v) => Outcome::Value(v),
            OutcomeData::Panic(message, location) => Outcome::Panic { message, location },
            OutcomeData::Failed(k, a, b) => Outcome::Failed(match k % 4 {
                0 => Failure::ArgDecode(a, b),
                1 => Failure::ResultEncode(a),
                2 => Failure::ExeMismatch(a),
                _ => Failure::Setup(a),
            }),
        };
        bootstrap::spawn_frame(
            OUTCOME_MAGIC,
            &postcard::to_allocvec(&o).expect("an outcome encodes"),
        )
    }

    /// `bootstrap::decode_spawn_task`, then `encode_spawn_task` of what it decoded (`None`: it did not
    /// decode). The re-encoding is what a parent would have sent for the same task.
    pub fn reencode_spawn_task(bytes: &[u8]) -> Option<Vec<u8>> {
        bootstrap::decode_spawn_task(bytes).map(|t| bootstrap::encode_spawn_task(&t))
    }

    /// `FnRef::resolve` of a spawn target under `key`: whether the reference authenticates and lands in
    /// this executable. Nothing is called.
    pub fn resolve_spawn(f: (i64, i64, u64), key: [u8; 16]) -> bool {
        FnRef {
            func: f.0,
            adapter: f.1,
            mac: f.2,
        }
        .resolve::<bootstrap::SpawnKind>(&FnKey::from_bytes(key))
        .is_ok()
    }

    /// A fork server request, as plain data: function words, die-with-parent, inline args, child key.
    pub type RequestData = (
        (i64, i64, u64),
        bool,
        Option<Vec<u8>>,
        Option<[u8; 16]>,
        (u64, Option<u64>),
    );

    /// `forkserver::decode_environment`, as bytes.
    pub fn decode_environment(
        bytes: &[u8],
    ) -> std::result::Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
        use std::os::unix::ffi::OsStringExt;
        forkserver::decode_environment(bytes).map(|vars| {
            vars.into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect()
        })
    }

    /// `forkserver::encode_environment`.
    pub fn encode_environment(vars: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt;
        forkserver::encode_environment(vars.iter().map(|(k, v)| {
            (
                std::ffi::OsString::from_vec(k.clone()),
                std::ffi::OsString::from_vec(v.clone()),
            )
        }))
    }

    /// `forkserver::decode_request`.
    pub fn decode_request(bytes: &[u8]) -> Option<RequestData> {
        let r = forkserver::decode_request(bytes)?;
        Some((
            (r.func.func, r.func.adapter, r.func.mac),
            r.die_with_parent,
            r.args,
            r.child_key.map(FnKey::to_bytes),
            (r.env_mac, r.args_mac),
        ))
    }

    /// `forkserver::encode_request`.
    pub fn encode_request(r: &RequestData) -> Vec<u8> {
        forkserver::encode_request(&forkserver::Request {
            func: FnRef {
                func: r.0 .0,
                adapter: r.0 .1,
                mac: r.0 .2,
            },
            die_with_parent: r.1,
            args: r.2.clone(),
            child_key: r.3.map(FnKey::from_bytes),
            env_mac: r.4 .0,
            args_mac: r.4 .1,
        })
        .expect("a request encodes")
    }

    /// `forkserver::decode_answer`: the started child's pid.
    pub fn decode_answer(bytes: &[u8]) -> Result<u32> {
        forkserver::decode_answer(bytes)
    }

    /// `forkserver::decode_ended`: (0 exited | 1 signalled, code or signal).
    pub fn decode_ended(bytes: &[u8]) -> Result<(u8, i32)> {
        forkserver::decode_ended(bytes).map(|s| match s {
            WaitStatus::Exited(c) => (0, c),
            WaitStatus::Signaled(s) => (1, s),
        })
    }

    fn greet(name: String) -> String {
        name
    }

    /// Genuine messages for the fuzzer's seeds, made by the crate's own encoders, each named by what
    /// it is: `task` (a spawn task file), `outcome` (a result file), `request` (to the fork server),
    /// `answer` (the server's answers and end reports).
    pub fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let key = FnKey::from_bytes([7; 16]);
        let func = bootstrap::spawn_fn(greet).sign(&key);
        let args = postcard::to_allocvec("bob").expect("encodes");
        let exe = crate::sys::process::ExeId {
            dev: 2049,
            ino: 1_234_567,
            size: 9_876_543,
            mtime: 1_790_000_000,
            mtime_nsec: 123_456_789,
        };
        let task = |die_with_parent| {
            bootstrap::encode_spawn_task(&bootstrap::SpawnTask {
                exe,
                func,
                args: args.clone(),
                parent_pid: 4242,
                die_with_parent,
            })
        };
        let words = (func.func, func.adapter, func.mac);
        let mut v = vec![
            ("task", task(true)),
            ("task", task(false)),
            ("outcome", encode_outcome(&OutcomeData::Value(args.clone()))),
            (
                "outcome",
                encode_outcome(&OutcomeData::Panic("boom".into(), "a.rs:1:2".into())),
            ),
            (
                "request",
                encode_request(&(words, true, Some(args.clone()), Some([9; 16]), (7, None))),
            ),
            (
                "request",
                encode_request(&(words, false, None, None, (7, Some(8)))),
            ),
            ("answer", spawn_frame(STARTED_MAGIC, &4243u32.to_le_bytes())),
            (
                "answer",
                spawn_frame(REFUSED_MAGIC, b"the request does not decode"),
            ),
            ("answer", encode_ended(0, 0)),
            ("answer", encode_ended(1, 9)),
        ];
        for k in 0..4 {
            v.push((
                "outcome",
                encode_outcome(&OutcomeData::Failed(
                    k,
                    "u64".into(),
                    "unexpected end".into(),
                )),
            ));
        }
        v
    }

    /// `forkserver::encode_ended`.
    pub fn encode_ended(kind: u8, value: i32) -> Vec<u8> {
        forkserver::encode_ended(if kind == 0 {
            WaitStatus::Exited(value)
        } else {
            WaitStatus::Signaled(value)
        })
    }
}

/// `cluster/wire.rs`, compiled a second time from the same source file (its items are private to the
/// `cluster` module, and it needs nothing of MPI): what is fuzzed is that file's decoders and serde
/// derives, without feature `mpi`.
#[path = "cluster/wire.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod cluster_wire;

/// `cluster/wire.rs`: `decode` of every message type a rank receives, re-encoded with `encode`.
pub mod cluster {
    use super::cluster_wire as w;
    use super::Result;

    /// The message types rank 0 and the serving ranks decode (`cluster/pool.rs`, `serve.rs`,
    /// `imap.rs`, `arrays.rs`), by number.
    pub const KINDS: u8 = 11;

    fn again<X: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>> {
        let x: X = w::decode(bytes)?;
        w::encode(&x)
    }

    /// `decode` of `bytes` as the message type `kind` (mod [`KINDS`]), then `encode` of the value.
    pub fn reencode(kind: u8, bytes: &[u8]) -> Result<Vec<u8>> {
        match kind % KINDS {
            0 => again::<w::Command>(bytes),
            1 => again::<w::StreamItem<u64>>(bytes),
            2 => again::<w::StreamItem<String>>(bytes),
            3 => again::<w::ArrayShare>(bytes),
            4 => again::<w::TransformShare>(bytes),
            5 => again::<w::TransformReply>(bytes),
            6 => again::<w::ArrayArgs>(bytes),
            7 => again::<std::result::Result<Vec<u64>, w::RemoteFailure>>(bytes),
            8 => again::<std::result::Result<Vec<Vec<u8>>, w::RemoteFailure>>(bytes),
            9 => again::<(crate::heap::BlockHandle, u64)>(bytes),
            _ => again::<Option<u64>>(bytes),
        }
    }

    /// Decodes a `RemoteFailure` and turns it into rank 0's error (`RemoteFailure::into_error`), as
    /// rank 0 does for a failed share of `rank` starting at `base`: (index, error text).
    pub fn failure_into_error(bytes: &[u8], rank: usize, base: usize) -> Result<(usize, String)> {
        let f: w::RemoteFailure = w::decode(bytes)?;
        let (at, e) = f.into_error(rank, base);
        Ok((at, e.to_string()))
    }

    /// Genuine messages for the fuzzer's seeds, made with `encode` from the real types: (kind for
    /// [`reencode`], bytes).
    pub fn samples() -> Result<Vec<(u8, Vec<u8>)>> {
        use crate::process::fnref::FnRef;
        let f = FnRef {
            func: -4096,
            adapter: 81_920,
            mac: 0x0123_4567_89ab_cdef,
        };
        let block = crate::SharedArray::<u64>::zeroed(8)?;
        let handle = block.block_handle();
        let share = |shared: bool, part| w::ArrayShare {
            elems: 1000,
            shared: shared.then(|| handle.clone()),
            part,
        };
        let failure = w::RemoteFailure::Panicked {
            task: 3,
            message: "boom".into(),
            location: "src/main.rs:1:1".into(),
        };
        let died = w::RemoteFailure::WorkerDied {
            task: 1,
            signal: Some(9),
            exit_code: None,
        };
        Ok(vec![
            (0, w::encode(&w::Command::Stop)?),
            (
                0,
                w::encode(&w::Command::Call {
                    op: f,
                    args: vec![1, 2, 3],
                })?,
            ),
            (
                1,
                w::encode(&w::StreamItem::<u64>::Item {
                    index: 5,
                    result: Ok(25),
                })?,
            ),
            (
                1,
                w::encode(&w::StreamItem::<u64>::Item {
                    index: 6,
                    result: Err(failure.clone()),
                })?,
            ),
            (
                2,
                w::encode(&w::StreamItem::<String>::End {
                    failure: Some("rank 1 lost a worker".into()),
                })?,
            ),
            (3, w::encode(&share(true, None))?),
            (3, w::encode(&share(false, Some(77)))?),
            (
                4,
                w::encode(&w::TransformShare {
                    input: share(true, None),
                    output: share(false, None),
                })?,
            ),
            (
                5,
                w::encode(&w::TransformReply {
                    outcome: Err(died),
                    data_follows: false,
                })?,
            ),
            (
                6,
                w::encode(&w::ArrayArgs {
                    chunk_len: 4096,
                    params: vec![0, 1],
                })?,
            ),
            (
                7,
                w::encode(&Ok::<Vec<u64>, w::RemoteFailure>(vec![1, 4, 9]))?,
            ),
            (
                8,
                w::encode(&Err::<Vec<Vec<u8>>, _>(w::RemoteFailure::Other("x".into())))?,
            ),
            (9, w::encode(&(handle.clone(), 0x5eed_u64))?),
            (10, w::encode(&Some(64u64))?),
        ])
    }

    /// `wire::split` of `total` by `weights`.
    pub fn split(total: usize, weights: &[usize]) -> Vec<std::ops::Range<usize>> {
        w::split(total, weights)
    }
}
