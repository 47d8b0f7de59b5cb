//! The process pool (DESIGN.md, "Pool model"; issue 6): every method of the map family equals a
//! sequential computation, for empty, single-item, prime-length and huge inputs; panics come back with
//! their item, message and line; thousands of tiny tasks and 1 GiB arrays; the lifecycle (initializer,
//! max tasks per child, close/join/terminate, drop); arrays created after the workers started.
//!
//! Worker deaths (signals, out of memory, SIGKILL storms) are in `pool_faults`.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.
//! Tests that count child processes run in a role (a process of their own), where every child is a
//! worker of the pool under test.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use mproc::{Error, Event, Pool, Process, Semaphore, SharedArray, Value};

use crate::common::{self, children, live_children, Role};

/// How long anything may take before we call it a hang.
pub const BOUND: Duration = Duration::from_secs(60);
/// Input lengths of the equality tests: empty, one, and primes (no chunk size divides them).
const SIZES: [usize; 5] = [0, 1, 7, 997, 10_007];
/// Workers of most pools here (the machine has 2 CPUs).
const WORKERS: usize = 2;
/// The environment variable naming the counter the initializer increments (set by the role).
const INIT_COUNTER_VAR: &str = "MPROC_POOL_TEST_INIT_COUNTER";

pub const ROLES: &[Role] = &[
    ("pool_initializer_and_drop", initializer_and_drop_role),
    ("pool_array_after_start", array_after_start_role),
    ("pool_on_one_cpu", one_cpu_role),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("pool", name, f);
    let mut v: Vec<Trial> = SIZES
        .iter()
        .map(|&n| {
            Trial::test(
                format!("pool::every_method_equals_sequential_n{n}"),
                move || {
                    every_method_equals_sequential(n);
                    Ok(())
                },
            )
        })
        .collect();
    v.extend([
        t("async_result_get_timeout_ready_wait", async_result_api),
        t("worker_pids_name_the_workers", worker_pids_name_the_workers),
        t(
            "workers_reuse_the_memory_their_tasks_freed",
            workers_reuse_freed_memory,
        ),
        t(
            "map_with_and_borrowed_items_equal_sequential",
            map_with_and_borrowed_items,
        ),
        t(
            "owned_parameters_take_borrowed_items_everywhere",
            owned_parameters_take_borrowed_items,
        ),
        t("large_items_and_results_cross_in_fragments", large_messages),
        t(
            "large_task_behind_a_busy_worker_is_delivered",
            large_task_behind_busy_worker,
        ),
        t("map_chunks_1e8_f64_exact_sum", map_chunks_1e8),
        t("empty_arrays_are_lent_like_any_other", empty_arrays),
        t("panic_reports_item_message_and_line", panic_reports),
        t("twenty_thousand_tiny_tasks", tiny_tasks),
        t("one_gib_array_tasks", one_gib_array),
        t("max_tasks_per_child_replaces_workers", max_tasks_per_child),
        t(
            "max_tasks_per_child_loses_no_block_answer",
            max_tasks_per_child_with_block_answers,
        ),
        t("close_join_finishes_submitted_work", close_then_join),
        t("join_without_close_and_submit_after_close", closed_errors),
        t(
            "terminate_fails_work_in_flight_promptly",
            terminate_in_flight,
        ),
        t(
            "pool_outlives_the_thread_that_built_it",
            built_on_exited_thread,
        ),
        t(
            "initializer_runs_in_every_worker_and_drop_leaves_no_child",
            || run_role("pool_initializer_and_drop"),
        ),
        t("array_created_after_workers_started_is_reachable", || {
            run_role("pool_array_after_start")
        }),
        t("a_pool_confined_to_one_cpu_finishes_its_work", || {
            run_role("pool_on_one_cpu")
        }),
    ]);
    v
}

/// Runs `role` in a child process with a fresh name as its argument; it must exit 0.
fn run_role(role: &str) {
    common::run_role_ok(role, &common::unique_name(role), BOUND * 2);
}

fn pool() -> Pool {
    Pool::builder()
        .workers(WORKERS)
        .build()
        .expect("build pool")
}

// ------------------------------------------------------------------------------------- task functions

fn square_plus(x: u64) -> u64 {
    x * x + 1
}

fn mul_add(a: u64, b: u32) -> u64 {
    a * u64::from(b) + a
}

/// A summary of a chunk that pins down its boundaries, not only its contents.
fn chunk_summary(c: &[u64]) -> (usize, u64, Option<u64>, Option<u64>) {
    (
        c.len(),
        c.iter().sum(),
        c.first().copied(),
        c.last().copied(),
    )
}

fn sum_f64(c: &[f64]) -> f64 {
    c.iter().sum()
}

/// A 1-D 3-tap blur that reads one element of halo on each side of its own range (clamped at the ends).
fn blur3(input: &[i64], out: &mut [i64], start: usize) {
    let last = input.len() - 1;
    for (k, o) in out.iter_mut().enumerate() {
        let i = start + k;
        *o = input[i.saturating_sub(1)] + input[i] + input[(i + 1).min(last)];
    }
}

fn blur3_sequential(input: &[i64]) -> Vec<i64> {
    let mut out = vec![0; input.len()];
    if !input.is_empty() {
        blur3(input, &mut out, 0);
    }
    out
}

/// The input of the equality tests: irregular, so that a misplaced item shows.
fn input(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| (i * 7919) % 1009 + i).collect()
}

// ------------------------------------------------------------------------------- results = sequential

/// Every method of the map family, with chunk sizes that do not divide `n`, equals the sequential
/// computation.
fn every_method_equals_sequential(n: usize) {
    let pool = pool();
    let xs = input(n);
    let expected: Vec<u64> = xs.iter().map(|&x| square_plus(x)).collect();

    assert_eq!(pool.map(square_plus, xs.clone()).unwrap(), expected, "map");
    let mut sizes = vec![3, 64, n + 5];
    if n <= 1000 {
        sizes.push(1);
    }
    for &cs in &sizes {
        assert_eq!(
            pool.map_chunksize(square_plus, xs.clone(), cs).unwrap(),
            expected,
            "map_chunksize {cs}"
        );
    }
    let each: Vec<u64> = pool
        .map_each(square_plus, xs.clone())
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(each, expected, "map_each");

    for cs in [None, Some(10)] {
        let r = pool.map_async(square_plus, xs.clone(), cs).unwrap();
        r.wait();
        assert!(r.ready(), "ready after wait");
        assert!(r.wait_timeout(BOUND));
        assert_eq!(r.get().unwrap(), expected, "map_async get {cs:?}");
        assert_eq!(r.get_timeout(BOUND).unwrap(), expected, "get_timeout");

        let ordered: Vec<u64> = pool
            .imap(square_plus, xs.clone(), cs)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ordered, expected, "imap {cs:?}");

        let mut unordered: Vec<(usize, u64)> = pool
            .imap_unordered(square_plus, xs.clone(), cs.map(|c| c - 5))
            .unwrap()
            .map(|(i, r)| (i, r.unwrap()))
            .collect();
        unordered.sort_unstable();
        let indices: Vec<usize> = unordered.iter().map(|&(i, _)| i).collect();
        assert_eq!(
            indices,
            (0..n).collect::<Vec<_>>(),
            "each index exactly once"
        );
        let values: Vec<u64> = unordered.into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, expected, "imap_unordered {cs:?}");
    }

    let pairs: Vec<(u64, u32)> = xs.iter().map(|&x| (x, (x % 13) as u32)).collect();
    let star_expected: Vec<u64> = pairs.iter().map(|&(a, b)| mul_add(a, b)).collect();
    assert_eq!(
        pool.starmap(mul_add, pairs).unwrap(),
        star_expected,
        "starmap"
    );

    let arg = n as u64 + 3;
    assert_eq!(pool.apply(square_plus, arg).unwrap(), square_plus(arg));
    let r = pool.apply_async(square_plus, arg).unwrap();
    assert_eq!(
        r.get_timeout(BOUND).unwrap(),
        square_plus(arg),
        "apply_async"
    );
    assert!(r.ready());

    // Arrays by offset.
    let array = SharedArray::from_slice(&xs).unwrap();
    let floats =
        SharedArray::from_slice(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap();
    let mut lens = vec![3, 100, n.max(1), n + 1];
    if n <= 1000 {
        lens.push(1);
    }
    for &len in &lens {
        let seq: Vec<_> = xs.chunks(len).map(chunk_summary).collect();
        assert_eq!(
            pool.map_chunks(&array, len, chunk_summary).unwrap(),
            seq,
            "map_chunks {len}"
        );
        let seq: Vec<f64> = floats.chunks(len).map(sum_f64).collect();
        assert_eq!(pool.map_chunks(&floats, len, sum_f64).unwrap(), seq);
    }

    let signal: Vec<i64> = xs.iter().map(|&x| (x % 201) as i64 - 100).collect();
    let input = SharedArray::from_slice(&signal).unwrap();
    let expected = blur3_sequential(&signal);
    for &len in &lens {
        // Pre-filled with a marker, so that an element no task wrote shows.
        let mut out = SharedArray::from_slice(&vec![i64::MIN; n]).unwrap();
        pool.transform(&input, &mut out, len, blur3).unwrap();
        assert_eq!(&out[..], &expected[..], "transform chunk_len {len}");
    }
}

/// Writes the input's length into every output element: a task that only reads its input's shape.
fn input_len_into(input: &[f64], out: &mut [u32], _start: usize) {
    out.fill(input.len() as u32);
}

/// An empty array is an array: lent as a task's input it reads as an empty slice, and an empty output
/// needs no task. (Until 2026-12-01 an empty array of elements wider than a byte was refused by every
/// worker as `Corrupted`: its block was one byte long, not a whole number of elements.)
fn empty_arrays() {
    let pool = pool();
    let empty = SharedArray::<f64>::zeroed(0).unwrap();
    let mut out = SharedArray::from_slice(&[7u32; 5]).unwrap();
    pool.transform(&empty, &mut out, 2, input_len_into).unwrap();
    assert_eq!(&out[..], &[0; 5]);
    let mut none = SharedArray::<u32>::zeroed(0).unwrap();
    let input = SharedArray::from_slice(&[1.0f64; 3]).unwrap();
    pool.transform(&input, &mut none, 2, input_len_into)
        .unwrap();
    assert_eq!(
        pool.map_chunks(&empty, 4, sum_f64).unwrap(),
        Vec::<f64>::new()
    );
}

/// A byte vector reversed and tagged with its length: a result as large as the item.
fn reverse(mut v: Vec<u8>) -> (usize, Vec<u8>) {
    v.reverse();
    (v.len(), v)
}

/// Items and results larger than a ring frame (64 KiB) and than a whole task ring (8 frames) travel in
/// fragments, around the frame boundaries too. Waits are bounded (generously: the calls take about a
/// second in a debug build) so that a stuck transfer fails the test instead of hanging the suite.
fn large_messages() {
    const LARGE_BOUND: Duration = Duration::from_secs(30);
    let pool = pool();
    let items: Vec<Vec<u8>> = [0, 1, 65_500, 65_536, 65_600, 300_007, 1 << 20, 1_500_000]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 31 + n) as u8).collect())
        .collect();
    let expected: Vec<(usize, Vec<u8>)> = items.iter().cloned().map(reverse).collect();
    for cs in [1, 3] {
        let r = pool.map_async(reverse, items.clone(), Some(cs)).unwrap();
        match r.get_timeout(LARGE_BOUND) {
            Ok(v) => assert!(v == expected, "chunksize {cs}: wrong results"),
            Err(e) => panic!("chunksize {cs}: {e:?} (not done within {LARGE_BOUND:?})"),
        }
    }
}

/// A task whose body needs several fillings of a worker's task ring (1.5 MiB; the ring holds 8 frames
/// of 64 KiB), handed to worker 1 while it is busy, so that only the first 8 frames fit; then worker 0
/// becomes idle with nothing left to dispatch. The rest of the body must still be sent.
fn large_task_behind_busy_worker() {
    const LARGE_BOUND: Duration = Duration::from_secs(30);
    let pool = pool();
    let name = common::unique_name("pool-busy");
    let gate = Event::create(&name).unwrap();
    // Three blocked tasks: two fill worker 0 (two in flight per worker), one occupies worker 1.
    let blocked = pool
        .map_async(wait_for_event, (0..3).map(|x| (name.clone(), x)), Some(1))
        .unwrap();
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let r = pool.apply_async(reverse, big.clone()).unwrap();
    // Lets the manager start sending the big task (coverage only: the outcome must be the same).
    std::thread::sleep(Duration::from_millis(100));
    gate.set();
    assert_eq!(blocked.get_timeout(LARGE_BOUND).unwrap(), vec![0, 1, 2]);
    match r.get_timeout(LARGE_BOUND) {
        Ok(v) => assert!(v == reverse(big), "wrong result"),
        Err(e) => panic!("{e:?}: the big task was not done within {LARGE_BOUND:?}"),
    }
}

/// A task that waits (boundedly) for the named event, then returns `x`.
fn wait_for_event((name, x): (String, u32)) -> u32 {
    let e = Event::open(&name).expect("open event in the worker");
    assert!(e.wait_timeout(BOUND), "the test never set the event");
    x
}

/// `get_timeout`, `ready` and `wait_timeout` before the work can have finished (it waits for an event
/// only the test sets), then `get` after.
fn async_result_api() {
    let pool = pool();
    let name = common::unique_name("pool-gate");
    let gate = Event::create(&name).unwrap();
    let items: Vec<(String, u32)> = (0..5).map(|x| (name.clone(), x)).collect();
    let r = pool.map_async(wait_for_event, items, Some(2)).unwrap();
    let one = pool
        .apply_async(wait_for_event, (name.clone(), 42))
        .unwrap();
    assert!(matches!(
        r.get_timeout(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    assert!(!r.ready());
    assert!(!r.wait_timeout(Duration::from_millis(20)));
    assert!(matches!(
        one.get_timeout(Duration::from_millis(1)),
        Err(Error::Timeout)
    ));
    gate.set();
    assert_eq!(r.get().unwrap(), vec![0, 1, 2, 3, 4]);
    assert!(r.ready());
    assert_eq!(one.get().unwrap(), 42);
    // The result can be asked for again.
    assert_eq!(r.get_timeout(Duration::ZERO).unwrap(), vec![0, 1, 2, 3, 4]);
}

/// 1e8 `f64` (800 MB) summed by chunks, exactly: every element is `i % 1024`, an integer, so every
/// partial sum is exact and the total must equal the closed form.
fn map_chunks_1e8() {
    const N: usize = 100_000_000;
    let pool = pool();
    let mut a = SharedArray::<f64>::zeroed(N).unwrap();
    let pattern: Vec<f64> = (0..1024).map(|i| i as f64).collect();
    for block in a.chunks_mut(1024) {
        block.copy_from_slice(&pattern[..block.len()]);
    }
    let (full, rem) = ((N / 1024) as u64, (N % 1024) as u64);
    let expected = (full * (1023 * 1024 / 2) + rem * rem.saturating_sub(1) / 2) as f64;
    // 4_000_037 does not divide 1e8: the last chunk is short.
    let sums = pool.map_chunks(&a, 4_000_037, sum_f64).unwrap();
    assert_eq!(sums.len(), N.div_ceil(4_000_037));
    assert_eq!(sums.iter().sum::<f64>(), expected);
}

// ------------------------------------------------------------------------------------------- panics

fn fail_some(x: u64) -> u64 {
    if x % 7 == 3 {
        panic!("item {x} fails on purpose at line {}", line!());
    }
    x + 1
}

fn fail_chunk(c: &[u64]) -> u64 {
    if c.first() == Some(&20) {
        panic!("chunk at 20 fails on purpose at line {}", line!());
    }
    c.iter().sum()
}

fn fail_transform(input: &[u64], out: &mut [u64], start: usize) {
    if start == 10 {
        panic!("transform at 10 fails on purpose at line {}", line!());
    }
    out.copy_from_slice(&input[start..start + out.len()]);
}

/// Checks `e` is the panic of item `task` whose message starts with `prefix`, located at the line the
/// message names, in this file.
#[track_caller]
fn assert_panicked(e: &Error, task: usize, prefix: &str) {
    let Error::TaskPanicked {
        task: t,
        message,
        location,
    } = e
    else {
        panic!("expected TaskPanicked for item {task}, got {e:?}");
    };
    assert_eq!(*t, task, "{e}");
    assert!(message.starts_with(prefix), "message {message:?}");
    let line = message.rsplit(' ').next().unwrap();
    let file = concat!(file!(), ":");
    assert!(
        location.starts_with(&format!("{file}{line}:")),
        "location {location:?} should be {file}{line}:<column>"
    );
}

/// A panicking item fails with its index, message and location; `map` reports the lowest failing index,
/// `map_each` keeps every other result; the workers survive and the pool goes on.
fn panic_reports() {
    let pool = pool();
    let xs: Vec<u64> = (0..50).collect();
    let failing = |x: u64| x % 7 == 3;

    let e = pool.map(fail_some, xs.clone()).unwrap_err();
    assert_panicked(&e, 3, "item 3 fails on purpose");
    for cs in [1, 4, 9] {
        let e = pool.map_chunksize(fail_some, xs.clone(), cs).unwrap_err();
        assert_panicked(&e, 3, "item 3 fails on purpose");
    }
    let each = pool.map_each(fail_some, xs.clone()).unwrap();
    assert_eq!(each.len(), xs.len());
    for (x, r) in xs.iter().zip(&each) {
        match r {
            Ok(v) => assert!(!failing(*x) && *v == x + 1, "item {x}: {v}"),
            Err(e) => {
                assert!(failing(*x), "item {x} failed: {e}");
                assert_panicked(e, *x as usize, &format!("item {x} fails on purpose"));
            }
        }
    }
    let mut seen = 0;
    for (i, r) in pool.imap_unordered(fail_some, xs.clone(), Some(4)).unwrap() {
        match r {
            Ok(v) => assert_eq!(v, i as u64 + 1),
            Err(e) => assert_panicked(&e, i, &format!("item {i} fails on purpose")),
        }
        seen += 1;
    }
    assert_eq!(seen, xs.len());

    let e = pool.apply(fail_some, 10).unwrap_err();
    assert_panicked(&e, 0, "item 10 fails on purpose");
    let e = pool.apply_async(fail_some, 17).unwrap().get().unwrap_err();
    assert_panicked(&e, 0, "item 17 fails on purpose");

    // Array tasks: the task index is the chunk index.
    let a = SharedArray::from_slice(&xs).unwrap();
    let e = pool.map_chunks(&a, 10, fail_chunk).unwrap_err();
    assert_panicked(&e, 2, "chunk at 20 fails on purpose");
    let mut out = SharedArray::<u64>::zeroed(xs.len()).unwrap();
    let e = pool.transform(&a, &mut out, 5, fail_transform).unwrap_err();
    assert_panicked(&e, 2, "transform at 10 fails on purpose");
    // The other chunks were written.
    assert_eq!(&out[..10], &xs[..10]);
    assert_eq!(&out[15..], &xs[15..]);

    // Still serving.
    let ok: Vec<u64> = xs.iter().map(|x| x * x + 1).collect();
    assert_eq!(pool.map(square_plus, xs).unwrap(), ok);
}

// ------------------------------------------------------------------------------- many and large tasks

fn tiny_tasks() {
    let pool = pool();
    let xs: Vec<u64> = (0..20_000).collect();
    let expected: Vec<u64> = xs.iter().map(|&x| square_plus(x)).collect();
    assert_eq!(pool.map(square_plus, xs.clone()).unwrap(), expected);
    let small = &xs[..2000];
    assert_eq!(
        pool.map_chunksize(square_plus, small.to_vec(), 1).unwrap(),
        expected[..2000]
    );
    let mut unordered: Vec<(usize, u64)> = pool
        .imap_unordered(square_plus, small.to_vec(), Some(1))
        .unwrap()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort_unstable();
    assert!(unordered
        .iter()
        .enumerate()
        .all(|(k, &(i, v))| k == i && v == expected[i]));
    assert_eq!(unordered.len(), 2000);
    // Many concurrent small calls from several threads.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for k in 0..50u64 {
                    let x = t * 1000 + k;
                    assert_eq!(pool.apply(square_plus, x).unwrap(), square_plus(x));
                }
            });
        }
    });
}

/// A position-sensitive checksum of 8-byte words (the chunks here are multiples of 8 bytes, aligned).
fn checksum(c: &[u8]) -> u64 {
    let words: &[u64] = bytemuck::cast_slice(c);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(7);
    }
    h
}

/// A 1 GiB array, checksummed in four 256 MiB tasks; then one byte is changed by the owner between two
/// calls and exactly that chunk's checksum follows (the workers read the array in place).
fn one_gib_array() {
    const GIB: usize = 1 << 30;
    const CHUNK: usize = 256 << 20;
    let pool = pool();
    let mut a = SharedArray::<u8>::zeroed(GIB).unwrap();
    let base: Vec<u64> = (0..(1u64 << 17))
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    for (k, block) in a.chunks_mut(1 << 20).enumerate() {
        let words: &mut [u64] = bytemuck::cast_slice_mut(block);
        words.copy_from_slice(&base);
        words[0] ^= k as u64;
    }
    let seq: Vec<u64> = a.chunks(CHUNK).map(checksum).collect();
    assert_eq!(seq.len(), 4);
    assert_eq!(pool.map_chunks(&a, CHUNK, checksum).unwrap(), seq);

    a[2 * CHUNK + 12_345] ^= 0x5a;
    let mut changed = seq.clone();
    changed[2] = checksum(&a[2 * CHUNK..3 * CHUNK]);
    assert_ne!(changed[2], seq[2]);
    assert_eq!(pool.map_chunks(&a, CHUNK, checksum).unwrap(), changed);
}

// ------------------------------------------------------------------------------------------ lifecycle

fn pid_of(x: u32) -> (u32, u32) {
    (x * 2, std::process::id())
}

/// Workers are replaced after two tasks (chunks) each; results stay right.
fn max_tasks_per_child() {
    let pool = Pool::builder()
        .workers(WORKERS)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let out = pool.map_chunksize(pid_of, 0..40, 2).unwrap();
    assert!(out.iter().enumerate().all(|(i, &(v, _))| v == 2 * i as u32));
    let pids: HashSet<u32> = out.iter().map(|&(_, p)| p).collect();
    // 20 tasks, at most 2 per worker: at least 10 workers took part.
    assert!(pids.len() >= 10, "{} distinct workers", pids.len());
    assert!(!pids.contains(&std::process::id()));
    // And again, on the replacements.
    let out = pool.map_chunksize(pid_of, 0..9, 1).unwrap();
    assert_eq!(
        out.iter().map(|&(v, _)| v).collect::<Vec<_>>(),
        (0..9).map(|x| x * 2).collect::<Vec<_>>()
    );
}

fn four_mib_of(x: u32) -> Vec<u8> {
    vec![x as u8; 4 << 20]
}

/// Issue 12: a large answer is a block of the worker's heap that the parent attaches through the
/// worker (`pool::answer`). A worker that leaves after its last task (`max_tasks_per_child`) waits until
/// the parent has attached its answers, so no answer is lost to the planned exit.
fn max_tasks_per_child_with_block_answers() {
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    for round in 0..3u32 {
        let items: Vec<u32> = (0..8).map(|i| round * 8 + i).collect();
        let out = pool.map_chunksize(four_mib_of, &items, 1).unwrap();
        for (x, v) in items.iter().zip(&out) {
            assert!(
                v.len() == 4 << 20 && v.iter().all(|&b| b == *x as u8),
                "item {x}"
            );
        }
    }
}

fn sleep_then(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    x + 100
}

/// `close` then `join` finishes what was submitted before.
fn close_then_join() {
    let mut pool = pool();
    let r = pool.map_async(sleep_then, 0..12, Some(1)).unwrap();
    let one = pool.apply_async(sleep_then, 7).unwrap();
    pool.close();
    pool.join().unwrap();
    assert!(
        r.ready() && one.ready(),
        "join returned before the work was done"
    );
    assert_eq!(r.get().unwrap(), (100..112).collect::<Vec<_>>());
    assert_eq!(one.get().unwrap(), 107);
}

/// `join` on an open pool is a state error; anything submitted after `close` is `PoolClosed`.
fn closed_errors() {
    let mut pool = pool();
    assert!(matches!(pool.join(), Err(Error::ProcessState(_))));
    // The failed join did not break the pool.
    assert_eq!(pool.map(square_plus, [2, 3]).unwrap(), vec![5, 10]);
    pool.close();
    assert!(matches!(pool.map(square_plus, [1]), Err(Error::PoolClosed)));
    assert!(matches!(
        pool.map_async(square_plus, [1], None),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.map_each(square_plus, [1]),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.imap(square_plus, [1], None),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(pool.apply(square_plus, 1), Err(Error::PoolClosed)));
    assert!(matches!(
        pool.apply_async(square_plus, 1),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.starmap(mul_add, [(1, 2)]),
        Err(Error::PoolClosed)
    ));
    let a = SharedArray::from_slice(&[1u64, 2, 3]).unwrap();
    assert!(matches!(
        pool.map_chunks(&a, 1, chunk_summary),
        Err(Error::PoolClosed)
    ));
    pool.join().unwrap();
    // After join too.
    assert!(matches!(pool.map(square_plus, [1]), Err(Error::PoolClosed)));
}

/// `terminate` with tasks blocked in the workers: it returns promptly (well within the tasks' own wait)
/// and every outstanding item fails with `PoolClosed`.
fn terminate_in_flight() {
    let mut pool = pool();
    let name = common::unique_name("pool-never");
    let _never = Event::create(&name).unwrap();
    let items: Vec<(String, u32)> = (0..6).map(|x| (name.clone(), x)).collect();
    let r = pool
        .map_async(wait_for_event, items.clone(), Some(1))
        .unwrap();
    let it = pool.imap(wait_for_event, items, Some(2)).unwrap();
    // Let the tasks reach the workers (coverage only: the outcome is the same either way).
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    pool.terminate();
    assert!(
        start.elapsed() < BOUND / 2,
        "terminate waited for the tasks"
    );
    assert!(r.ready());
    assert!(matches!(r.get(), Err(Error::PoolClosed)));
    let rest: Vec<_> = it.collect();
    assert_eq!(rest.len(), 6);
    assert!(
        rest.iter().all(|r| matches!(r, Err(Error::PoolClosed))),
        "{rest:?}"
    );
    assert!(matches!(pool.map(square_plus, [1]), Err(Error::PoolClosed)));
    assert!(pool.join().is_ok(), "join after terminate");
}

/// A pool built on a thread that then exits keeps its workers (death-with-parent follows the process,
/// not the thread that started the workers).
fn built_on_exited_thread() {
    let pool = std::thread::spawn(pool).join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let xs: Vec<u64> = (0..100).collect();
    let expected: Vec<u64> = xs.iter().map(|&x| square_plus(x)).collect();
    assert_eq!(pool.map_chunksize(square_plus, xs, 5).unwrap(), expected);
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The initializer: counts itself in the named counter and marks this worker initialized.
fn init_worker() {
    let name = std::env::var(INIT_COUNTER_VAR).expect("the role sets the counter's name");
    let counter = Value::<u32>::open(&name).expect("open the counter in the worker");
    *counter.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    INITIALIZED.store(true, Ordering::SeqCst);
}

/// Whether this worker ran the initializer before this task, and its pid.
fn initialized(_: u32) -> (bool, u32) {
    (INITIALIZED.load(Ordering::SeqCst), std::process::id())
}

/// Role: the initializer runs once in every worker (replacements included) before any task; dropping a
/// pool with work in flight returns, fails the work with `PoolClosed`, and leaves no child.
fn initializer_and_drop_role(name: &str) {
    // This process has a single thread here, so setting the environment races with no reader; the
    // workers inherit it.
    std::env::set_var(INIT_COUNTER_VAR, name);
    let counter = Value::<u32>::create(name, 0).unwrap();

    let pool = Pool::builder()
        .workers(3)
        .initializer(init_worker)
        .build()
        .unwrap();
    let out = pool.map_chunksize(initialized, 0..30, 1).unwrap();
    assert!(
        out.iter().all(|&(init, _)| init),
        "a task ran before the initializer"
    );
    common::eventually("every worker ran the initializer", BOUND, || {
        counter.get() == 3
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        counter.get(),
        3,
        "the initializer ran more than once per worker"
    );
    assert_eq!(live_children().len(), 3);
    drop(pool);
    assert_eq!(
        children(),
        Vec::<(i32, char)>::new(),
        "workers left after drop"
    );

    // Replacements run it too.
    counter.set(0);
    let pool = Pool::builder()
        .workers(2)
        .initializer(init_worker)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let out = pool.map_chunksize(initialized, 0..10, 1).unwrap();
    assert!(
        out.iter().all(|&(init, _)| init),
        "a replacement skipped the initializer"
    );
    let pids: HashSet<u32> = out.iter().map(|&(_, p)| p).collect();
    assert_eq!(pids.len(), 10, "one task per worker");
    assert!(counter.get() >= 10);
    drop(pool);
    assert_eq!(
        children(),
        Vec::<(i32, char)>::new(),
        "workers left after drop"
    );

    // Dropped with work in flight.
    let gate_name = format!("{name}-gate");
    let _never = Event::create(&gate_name).unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let items: Vec<(String, u32)> = (0..8).map(|x| (gate_name.clone(), x)).collect();
    let r = pool.map_async(wait_for_event, items, Some(1)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    drop(pool);
    assert!(start.elapsed() < BOUND / 2, "drop waited for the tasks");
    assert!(matches!(r.get_timeout(BOUND), Err(Error::PoolClosed)));
    assert_eq!(
        children(),
        Vec::<(i32, char)>::new(),
        "workers left after drop"
    );
}

fn sum_u64(c: &[u64]) -> u64 {
    c.iter().sum()
}

/// Role: arrays created after the workers started — in an arena the workers already mapped, and in a
/// fresh arena made after they mapped the first — are reachable from them.
fn array_after_start_role(_: &str) {
    let pool = pool();
    let n = 100_003u64;
    let small = SharedArray::from_slice(&(0..n).collect::<Vec<_>>()).unwrap();
    assert_eq!(
        pool.map_chunks(&small, 10_000, sum_u64)
            .unwrap()
            .iter()
            .sum::<u64>(),
        n * (n - 1) / 2
    );
    // Larger than the smallest arena (64 MiB): it needs a new one, created now.
    let big_len = (80 << 20) / 8;
    let mut big = SharedArray::<u64>::zeroed(big_len).unwrap();
    for (i, x) in big.iter_mut().enumerate().step_by(4096) {
        *x = i as u64;
    }
    let expected: u64 = (0..big_len as u64).step_by(4096).sum();
    let sums = pool.map_chunks(&big, 1 << 20, sum_u64).unwrap();
    assert_eq!(sums.iter().sum::<u64>(), expected);
    let later = SharedArray::from_slice(&[5u64, 6, 7]).unwrap();
    assert_eq!(pool.map_chunks(&later, 2, sum_u64).unwrap(), vec![11, 7]);
    drop(pool);
    common::eventually("workers gone after drop", BOUND, || children().is_empty());
}

fn own_pid(_: u32) -> u32 {
    std::process::id()
}

/// Issue 13: `worker_pids` names exactly the processes that run the tasks; killing one of them is a
/// death the pool survives, and the list then names its replacement.
fn worker_pids_name_the_workers() {
    let pool = Pool::builder().workers(2).build().expect("pool");
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    let ran_in: HashSet<u32> = pool
        .map_chunksize(own_pid, 0..64u32, 1)
        .expect("map")
        .into_iter()
        .collect();
    assert!(
        ran_in.iter().all(|p| pids.contains(p)),
        "tasks ran in {ran_in:?}, workers are {pids:?}"
    );
    // SAFETY: kill(2) with a pid that is our pool's live worker (an unreaped child of this process).
    assert_eq!(unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) }, 0);
    common::eventually(
        "the killed worker is replaced",
        Duration::from_secs(30),
        || {
            let _ = pool.map(own_pid, [0u32]);
            let now = pool.worker_pids();
            now.len() == 2 && !now.contains(&pids[0])
        },
    );
    assert_eq!(
        pool.map(square_plus, [3u64]).expect("map after"),
        vec![square_plus(3)]
    );
}

fn weighted(weights: &Vec<u64>, xs: Vec<u64>) -> u64 {
    xs.iter().zip(weights).map(|(x, w)| x * w).sum()
}

/// Issue 13: `map_with` passes one parameter to every call; borrowed items arrive owned.
fn map_with_and_borrowed_items() {
    let pool = pool();
    let weights = vec![1u64, 10, 100];
    let rows: Vec<Vec<u64>> = (0..50).map(|i| vec![i, i + 1, i + 2]).collect();
    let want: Vec<u64> = rows.iter().map(|r| weighted(&weights, r.clone())).collect();
    assert_eq!(
        pool.map_with(weighted, &weights, &rows).expect("map_with"),
        want
    );
    let unordered: HashSet<(usize, u64)> = pool
        .imap_unordered_with(weighted, &weights, rows.iter(), Some(7))
        .expect("imap_unordered_with")
        .map(|(i, r)| (i, r.expect("item")))
        .collect();
    assert_eq!(unordered, want.iter().copied().enumerate().collect());
    let xs = input(40);
    let squares: Vec<u64> = pool.map(square_plus, &xs).expect("borrowed map");
    // `xs` is still ours after the borrowed map.
    assert_eq!(
        squares,
        xs.iter().copied().map(square_plus).collect::<Vec<_>>()
    );
}

fn shout(name: String) -> String {
    name.to_uppercase()
}

fn greet_with(greeting: &String, name: String) -> String {
    format!("{greeting}, {name}")
}

fn area(w: u32, h: u32) -> u32 {
    w * h
}

/// Issue 13: the fix rustc suggests for a borrowed parameter (`fn f(x: T)`, items still borrowed, a
/// shared value through `map_with`) works for every call shape: map, apply, apply_async, starmap.
fn owned_parameters_take_borrowed_items() {
    let pool = pool();
    let names: Vec<String> = ["bob", "alice", "eve"].map(String::from).to_vec();
    assert_eq!(
        pool.map(shout, &names).expect("map"),
        vec!["BOB", "ALICE", "EVE"]
    );
    assert_eq!(pool.apply(shout, &names[1]).expect("apply"), "ALICE");
    let pending = pool.apply_async(shout, &names[2]).expect("apply_async");
    assert_eq!(pending.get().expect("get"), "EVE");
    let hello = String::from("hello");
    assert_eq!(
        pool.map_with(greet_with, &hello, &names).expect("map_with"),
        vec!["hello, bob", "hello, alice", "hello, eve"]
    );
    let sizes = vec![(2, 3), (4, 5)];
    assert_eq!(pool.starmap(area, &sizes).expect("starmap"), vec![6, 20]);
    // Every borrowed input is still ours.
    assert_eq!((names.len(), sizes.len()), (3, 2));
}

/// This process's minor page faults so far (field 10 of `/proc/self/stat`, counted after the command
/// name, which may hold spaces but ends at the last `)`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    after_name
        .split(' ')
        .nth(7) // fields from 3 (state) on: minflt is field 10
        .and_then(|f| f.parse().ok())
        .expect("minflt")
}

/// In a worker: builds and drops a 64 MiB vector (as decoding a large argument does), then counts the
/// page faults of building another.
fn faults_of_a_second_big_vec(_: ()) -> u64 {
    const BYTES: usize = 64 << 20;
    drop(std::hint::black_box(vec![1u8; BYTES]));
    let before = minor_faults();
    let v = std::hint::black_box(vec![2u8; BYTES]);
    let after = minor_faults();
    assert_eq!(v[BYTES - 1], 2);
    after - before
}

/// Issue 12: a worker keeps what its tasks free (`retain_worker_memory`, on by default), so a second
/// 64 MiB vector is made of pages already mapped instead of 16 384 fresh ones, each a page fault.
fn workers_reuse_freed_memory() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let faults = pool.apply(faults_of_a_second_big_vec, ()).unwrap();
    assert!(
        faults < 1024,
        "a retaining worker faulted {faults} times building 64 MiB it had just freed"
    );
    // The switch is honoured (no count asserted: with transparent huge pages a fresh mapping takes
    // few faults too).
    let releasing = Pool::builder()
        .workers(1)
        .retain_worker_memory(false)
        .build()
        .unwrap();
    releasing.apply(faults_of_a_second_big_vec, ()).unwrap();
}

/// The CPUs the calling thread may run on, from `/proc/self/status` (`Cpus_allowed_list`, e.g. "0-1,3").
fn allowed_cpu_list(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .expect("Cpus_allowed_list")
}

/// Confines this (so far single-threaded) role process to one CPU, which its pool's workers inherit,
/// then runs back-to-back round trips, a map and array tasks, and semaphore hand-offs with a child
/// process: both ends of every wait share the CPU, so a waiter that spun for its peer would wait for a
/// peer that cannot run (waiters confined to one CPU give it up instead). Only completion is asserted,
/// within the role's generous bound.
fn one_cpu_role(name: &str) {
    let cpu = {
        // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 = this thread.
        let r =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(r, 0, "sched_getaffinity");
        // SAFETY: CPU_ISSET reads a bit of `set`; every index below CPU_SETSIZE is inside it.
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .expect("some CPU is allowed");
        // SAFETY: as above; CPU_ZERO and CPU_SET write bits of `set`, `first` < CPU_SETSIZE.
        unsafe {
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(first, &mut set);
        }
        // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 = this thread, the only one.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        assert_eq!(r, 0, "sched_setaffinity");
        first
    };
    let pool = pool();
    for pid in pool.worker_pids() {
        assert_eq!(
            allowed_cpu_list(pid),
            cpu.to_string(),
            "worker {pid} is confined too"
        );
    }
    for i in 0..2_000u64 {
        assert_eq!(pool.apply(square_plus, i).expect("apply"), i * i + 1);
    }
    let items = input(5_000);
    let expect: Vec<u64> = items.iter().map(|&x| square_plus(x)).collect();
    assert_eq!(pool.map(square_plus, items).expect("map"), expect);
    let array = SharedArray::from_slice(&vec![0.5f64; 1 << 16]).expect("array");
    for _ in 0..200 {
        let sums = pool
            .map_chunks(&array, 1 << 15, sum_f64)
            .expect("map_chunks");
        assert_eq!(sums.iter().sum::<f64>(), (1 << 15) as f64);
    }
    // Hand-offs between this process and a child on the same CPU: semaphore ping-pong, each side
    // waiting for the other (the child inherits the mask).
    let (ping, pong) = (format!("{name}-ping"), format!("{name}-pong"));
    let ping_sem = Semaphore::create(&ping, 0).expect("ping");
    let pong_sem = Semaphore::create(&pong, 0).expect("pong");
    let mut child = Process::new(pong_on_one_cpu, (ping, pong)).expect("process");
    child.start().expect("start");
    for _ in 0..ONE_CPU_ROUNDS {
        ping_sem.release().expect("release");
        pong_sem
            .acquire_timeout(BOUND)
            .expect("the child answers")
            .forget();
    }
    assert_eq!(child.join().expect("join"), ONE_CPU_ROUNDS);
}

/// Hand-offs in [`one_cpu_role`].
const ONE_CPU_ROUNDS: u32 = 2_000;

/// The other side of [`one_cpu_role`]'s ping-pong: answers every ping with a pong.
fn pong_on_one_cpu((ping, pong): (String, String)) -> u32 {
    let ping = Semaphore::open(&ping).expect("ping");
    let pong = Semaphore::open(&pong).expect("pong");
    for _ in 0..ONE_CPU_ROUNDS {
        ping.acquire_timeout(BOUND).expect("a ping").forget();
        pong.release().expect("release");
    }
    ONE_CPU_ROUNDS
}
