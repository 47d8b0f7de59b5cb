//! The manager's `Dict` against a `std::sync::Mutex<HashMap>`, in one run: `cargo bench --bench manager`.
//!
//! | group | mproc | baseline |
//! |---|---|---|
//! | Pod keys and values | `Manager::pod_dict::<u64, u64>`, 2 processes (fork) | `Mutex<HashMap<u64, u64>>`, 2 threads |
//! | serde keys | `Manager::dict::<String, u64>`, 2 processes (fork) | `Mutex<HashMap<String, u64>>`, 2 threads |
//! | single participant | the same dicts from 1 process, op by op | the same maps from 1 thread |
//!
//! The op mix: each participant does N operations on keys drawn from a pre-filled key space of
//! [`KEYS`] keys, half `get`, half `insert` (overwrite), in a fixed pseudo-random order.
//!
//! Timing, for a noisy 2-vCPU VM: every variant is warmed up, then the variants are timed in round-robin
//! (A B C D, A B C D, ...) so that a slow period hits all of them alike; each figure is the median of the
//! repetitions, with min..max beside it. `MPROC_BENCH_QUICK=1` runs fewer operations and repetitions.
//! The last lines are `result: NAME VALUE UNIT` (DESIGN.md, "The benchmark contract");
//! `dict_vs_threaded_hashmap` is the time ratio for Pod keys and values (lower is better).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use mproc::codec::Raw;
use mproc::{Dict, Manager};

#[path = "common/mod.rs"]
mod common;

use common::{os, Stats};

/// The key space every variant works on.
const KEYS: u64 = 1024;

struct Config {
    reps: usize,
    /// Operations per participant in a timed repetition.
    ops: u64,
}

impl Config {
    fn from_env() -> (Config, bool) {
        let quick = common::quick();
        let cfg = if quick {
            Config {
                reps: 3,
                ops: 40_000,
            }
        } else {
            Config {
                reps: 9,
                ops: 400_000,
            }
        };
        (cfg, quick)
    }
}

/// The op sequence of participant `who`: (key index, is a get).
fn ops(who: u64, n: u64) -> Vec<(u64, bool)> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ (who + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (r % KEYS, (r >> 32) & 1 == 0)
        })
        .collect()
}

/// A map both kinds of participant drive through the same op sequence.
trait Map: Sync {
    fn op(&self, key: u64, get: bool, v: u64);
}

struct PodDict(Dict<u64, u64, Raw>);
impl Map for PodDict {
    #[inline]
    fn op(&self, key: u64, get: bool, v: u64) {
        if get {
            black_box(self.0.get(&key).expect("get"));
        } else {
            black_box(self.0.insert(&key, &v).expect("insert"));
        }
    }
}

struct SerdeDict(Dict<String, u64>, Vec<String>);
impl Map for SerdeDict {
    #[inline]
    fn op(&self, key: u64, get: bool, v: u64) {
        let k = &self.1[key as usize];
        if get {
            black_box(self.0.get(k).expect("get"));
        } else {
            black_box(self.0.insert(k, &v).expect("insert"));
        }
    }
}

struct PodMap(Mutex<HashMap<u64, u64>>);
impl Map for PodMap {
    #[inline]
    fn op(&self, key: u64, get: bool, v: u64) {
        let mut m = self.0.lock().unwrap();
        if get {
            black_box(m.get(&key).copied());
        } else {
            black_box(m.insert(key, v));
        }
    }
}

struct SerdeMap(Mutex<HashMap<String, u64>>, Vec<String>);
impl Map for SerdeMap {
    #[inline]
    fn op(&self, key: u64, get: bool, v: u64) {
        let k = &self.1[key as usize];
        let mut m = self.0.lock().unwrap();
        if get {
            black_box(m.get(k).copied());
        } else {
            // As the dict does: the caller's key is borrowed, the map keeps its own copy (a clone on
            // insert of an existing key is avoided by get_mut, as a HashMap user would write it).
            match m.get_mut(k) {
                Some(x) => *x = v,
                None => {
                    m.insert(k.clone(), v);
                }
            }
        }
    }
}

fn run_ops(map: &dyn Map, seq: &[(u64, bool)]) {
    for (i, &(k, get)) in seq.iter().enumerate() {
        map.op(k, get, i as u64);
    }
}

/// Start flags shared by the two participants (in a shared page, so that a forked child sees them).
struct Gate<'a> {
    ready: &'a AtomicU32,
    go: &'a AtomicU32,
    done: &'a AtomicU32,
}

impl Gate<'_> {
    fn reset(&self) {
        for a in [self.ready, self.go, self.done] {
            a.store(0, Ordering::SeqCst);
        }
    }

    fn worker(&self, map: &dyn Map, seq: &[(u64, bool)]) {
        self.ready.store(1, Ordering::Release);
        while self.go.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        run_ops(map, seq);
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// Returns the wall time in ns from the start signal until both finished.
    fn lead(&self, map: &dyn Map, seq: &[(u64, bool)]) -> f64 {
        while self.ready.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        self.go.store(1, Ordering::Release);
        run_ops(map, seq);
        self.done.fetch_add(1, Ordering::AcqRel);
        while self.done.load(Ordering::Acquire) < 2 {
            // Only 2 vCPUs: give the other participant the core rather than spin against it.
            std::thread::yield_now();
        }
        t.elapsed().as_nanos() as f64
    }
}

/// Two processes: the worker in a forked child. ns per operation (wall / total ops).
fn two_processes(gate: &Gate<'_>, map: &dyn Map, seqs: &[Vec<(u64, bool)>; 2]) -> f64 {
    gate.reset();
    let child = os::fork(|| gate.worker(map, &seqs[1]));
    let wall = gate.lead(map, &seqs[0]);
    assert!(child.wait(), "the forked participant failed");
    wall / (seqs[0].len() + seqs[1].len()) as f64
}

/// Two threads of this process.
fn two_threads(gate: &Gate<'_>, map: &dyn Map, seqs: &[Vec<(u64, bool)>; 2]) -> f64 {
    gate.reset();
    std::thread::scope(|s| {
        s.spawn(|| gate.worker(map, &seqs[1]));
        gate.lead(map, &seqs[0])
    }) / (seqs[0].len() + seqs[1].len()) as f64
}

/// One participant, ns per operation.
fn alone(map: &dyn Map, seq: &[(u64, bool)]) -> f64 {
    let t = Instant::now();
    run_ops(map, seq);
    t.elapsed().as_nanos() as f64 / seq.len() as f64
}

fn table(title: &str, rows: &[(&str, Stats)]) {
    println!("\n{title}");
    println!(
        "  {:<50} {:>9} {:>17} {:>13} {:>12}",
        "variant", "ns/op", "min..max", "Mops/s", "vs baseline"
    );
    for (i, (name, s)) in rows.iter().enumerate() {
        // Rows come in (mproc, baseline) pairs.
        let ratio = if i % 2 == 0 {
            format!("{:.2} x", s.median / rows[i + 1].1.median)
        } else {
            "-".into()
        };
        println!(
            "  {:<50} {:>9.1} {:>17} {:>13.2} {:>12}",
            name,
            s.median,
            format!("{:.1}..{:.1}", s.min, s.max),
            1e3 / s.median,
            ratio
        );
    }
}

fn main() {
    let (cfg, quick) = Config::from_env();
    println!(
        "manager bench: {} ops per participant, {} repetitions{}; key space {KEYS}, half get, half insert",
        cfg.ops,
        cfg.reps,
        if quick { " (quick)" } else { "" }
    );
    let names: Vec<String> = (0..KEYS).map(|k| format!("key-{k:06}")).collect();
    let m = Manager::anonymous(16 << 20).expect("anonymous manager");
    let pod = PodDict(m.pod_dict::<u64, u64>("pod").expect("pod dict"));
    let serde = SerdeDict(m.dict::<String, u64>("serde").expect("dict"), names.clone());
    let pod_map = PodMap(Mutex::new(HashMap::new()));
    let serde_map = SerdeMap(Mutex::new(HashMap::new()), names.clone());
    for k in 0..KEYS {
        pod.op(k, false, 0);
        serde.op(k, false, 0);
        pod_map.op(k, false, 0);
        serde_map.op(k, false, 0);
    }
    let seqs = [ops(0, cfg.ops), ops(1, cfg.ops)];
    let page = os::ShmPage::new();
    let gate = Gate {
        ready: page.atomic_u32(0),
        go: page.atomic_u32(64),
        done: page.atomic_u32(128),
    };
    let maps: [&dyn Map; 4] = [&pod, &pod_map, &serde, &serde_map];
    let warm = [ops(0, cfg.ops / 10 + 1), ops(1, cfg.ops / 10 + 1)];
    for (i, map) in maps.iter().enumerate() {
        if i % 2 == 0 {
            two_processes(&gate, *map, &warm);
        } else {
            two_threads(&gate, *map, &warm);
        }
        alone(*map, &warm[0]);
    }
    let mut two = vec![Vec::new(); 4];
    let mut one = vec![Vec::new(); 4];
    for _ in 0..cfg.reps {
        for (i, map) in maps.iter().enumerate() {
            two[i].push(if i % 2 == 0 {
                two_processes(&gate, *map, &seqs)
            } else {
                two_threads(&gate, *map, &seqs)
            });
        }
        for (i, map) in maps.iter().enumerate() {
            one[i].push(alone(*map, &seqs[0]));
        }
    }
    // The cost of a transaction that reads one word: the lock, the journal check, the commit.
    let mut empty_tx = Vec::new();
    for _ in 0..cfg.reps {
        let n = cfg.ops;
        let t = Instant::now();
        for _ in 0..n {
            black_box(pod.0.len().expect("len"));
        }
        empty_tx.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    // Where the time of one Pod op goes: gets alone, overwriting inserts alone.
    let (mut gets, mut inserts) = (Vec::new(), Vec::new());
    for _ in 0..cfg.reps {
        let t = Instant::now();
        for &(k, _) in &seqs[0] {
            black_box(pod.0.get(&k).expect("get"));
        }
        gets.push(t.elapsed().as_nanos() as f64 / seqs[0].len() as f64);
        let t = Instant::now();
        for (i, &(k, _)) in seqs[0].iter().enumerate() {
            black_box(pod.0.insert(&k, &(i as u64)).expect("insert"));
        }
        inserts.push(t.elapsed().as_nanos() as f64 / seqs[0].len() as f64);
    }
    let (gets, inserts) = (Stats::of(gets), Stats::of(inserts));
    let two: Vec<Stats> = two.into_iter().map(Stats::of).collect();
    let one: Vec<Stats> = one.into_iter().map(Stats::of).collect();
    let empty_tx = Stats::of(empty_tx);
    // The final counts agree with what the two participants did (every key present, none lost).
    assert_eq!(pod.0.len().unwrap(), KEYS as usize);
    assert_eq!(serde.0.len().unwrap(), KEYS as usize);
    table(
        "1. two participants, get/insert mix (ns per op, wall time / total ops)",
        &[
            ("Dict<u64, u64, Raw>, 2 processes (fork)", two[0]),
            ("Mutex<HashMap<u64, u64>>, 2 threads", two[1]),
            ("Dict<String, u64> (serde), 2 processes (fork)", two[2]),
            ("Mutex<HashMap<String, u64>>, 2 threads", two[3]),
        ],
    );
    table(
        "2. one participant, same mix (ns per op)",
        &[
            ("Dict<u64, u64, Raw>, 1 process", one[0]),
            ("Mutex<HashMap<u64, u64>>, 1 thread", one[1]),
            ("Dict<String, u64> (serde), 1 process", one[2]),
            ("Mutex<HashMap<String, u64>>, 1 thread", one[3]),
        ],
    );
    println!(
        "\n3. an almost empty transaction (Dict::len: lock, journal check, one read, commit, unlock): \
         {:.1} ns ({:.1}..{:.1})",
        empty_tx.median, empty_tx.min, empty_tx.max
    );
    println!(
        "4. Dict<u64, u64, Raw>, 1 process: get {:.1} ns ({:.1}..{:.1}), overwriting insert {:.1} ns \
         ({:.1}..{:.1})",
        gets.median, gets.min, gets.max, inserts.median, inserts.min, inserts.max
    );
    println!();
    common::result(
        "dict_vs_threaded_hashmap",
        two[0].median / two[1].median,
        2,
        "x",
    );
    common::result("dict_pod_2proc_ops_per_s", 1e9 / two[0].median, 0, "ops/s");
    common::result(
        "hashmap_pod_2threads_ops_per_s",
        1e9 / two[1].median,
        0,
        "ops/s",
    );
    common::result(
        "dict_serde_vs_threaded_hashmap",
        two[2].median / two[3].median,
        2,
        "x",
    );
    common::result("dict_pod_uncontended_ns", one[0].median, 1, "ns");
    common::result(
        "dict_pod_uncontended_vs_hashmap",
        one[0].median / one[1].median,
        2,
        "x",
    );
    common::result("dict_empty_tx_ns", empty_tx.median, 1, "ns");
    common::result("dict_pod_get_ns", gets.median, 1, "ns");
    common::result("dict_pod_insert_ns", inserts.median, 1, "ns");
}
