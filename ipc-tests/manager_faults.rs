//! The managed heap under faults (issue 7): SIGKILL in the middle of `Dict::insert` / `List::push`, an
//! insert or `List::extend` that runs out of memory half-way, garbage written into the heap's metadata
//! while another process works on it, and forged heap contents at open.
//!
//! Heap offsets below follow the layout documented in `src/manager/heap.rs` (payload offsets; the payload
//! starts 128 bytes into `/dev/shm/mproc.<name>`). Every wait is bounded by [`BOUND`], generously: the
//! bound proves "no hang" (DESIGN.md, invariant 4) and never measures speed.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use mproc::{Error, Manager};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use crate::common::{self, bounded, next_random, say, shm_path, Kid, Role};
use crate::manager::{die, BOUND};

/// Rounds of the kill storm.
const KILL_ROUNDS: u64 = 100;
/// The churning children cycle through keys `k_0 .. k_{KEYS-1}` (so later rounds overwrite, which frees
/// blocks and feeds the free lists).
const KEYS: u64 = 300;
/// Pushes a churner makes per round at most (then it keeps inserting and removing).
const PUSHES_PER_ROUND: u64 = 400;
/// Size (and hard cap) of the kill storm's manager.
const STORM_SIZE: usize = 4 << 20;

/// Heap layout (src/manager/heap.rs), as payload offsets.
const PAYLOAD: u64 = 128;
const LOCK_BYTES: u64 = 16;
const JOURNAL: u64 = 512;
const DIRECTORY: u64 = JOURNAL + 1024 * 16;
const ARENA: u64 = DIRECTORY + 256 * 64;

pub const ROLES: &[Role] = &[
    ("manager_churn", churn),
    ("manager_check", check_child),
    ("manager_scribble", scribble),
    ("manager_garbage_ops", garbage_ops),
    ("manager_fuzz_open", fuzz_open),
];

pub fn tests() -> Vec<Trial> {
    // Named `manager::…` as before the split of manager.rs, so that existing filters still select them.
    let t = |name: &str, f: fn()| common::trial("manager", name, f);
    vec![
        t(
            "kill_during_insert_and_push_keeps_containers_consistent",
            kill_storm,
        ),
        t(
            "oom_rollback_keeps_the_heap_consistent",
            oom_rollback_keeps_heap_consistent,
        ),
        t(
            "list_extend_that_runs_out_of_memory_changes_nothing",
            extend_oom_changes_nothing,
        ),
        t(
            "garbage_written_while_operating_gives_typed_errors",
            garbage_while_operating,
        ),
        t(
            "forged_heap_contents_at_open_give_typed_errors",
            fuzz_open_in_child,
        ),
    ]
}

// ------------------------------------------------------------------------------------------------ helpers

fn key(i: u64) -> String {
    format!("k_{i}")
}

/// The variant name of an error, for the "typed errors only" checks.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Corrupted(_) => "Corrupted",
        Error::Decode { .. } => "Decode",
        Error::OutOfMemory { .. } => "OutOfMemory",
        Error::TypeMismatch { .. } => "TypeMismatch",
        Error::InvalidName { .. } => "InvalidName",
        _ => "other",
    }
}

/// The errors garbage in a heap may justify.
fn typed(e: &Error) -> bool {
    kind(e) != "other"
}

// ------------------------------------------------------------------------------------ 1. kill storm

/// Child: inserts `k_i -> i` (cycling through [`KEYS`], so later rounds overwrite), removes now and
/// then, and pushes `(round << 32) | j` for j = 0, 1, 2, … as fast as it can, until it is killed.
fn churn(arg: &str) {
    let (name, round) = arg.split_once(' ').expect("name round");
    let round: u64 = round.parse().expect("round");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let d = m
        .dict::<String, u64>("d")
        .unwrap_or_else(|e| die(&format!("dict: {e:?}")));
    let l = m
        .list::<u64>("l")
        .unwrap_or_else(|e| die(&format!("list: {e:?}")));
    say("ready");
    for j in 0u64.. {
        let i = (j * 7 + round * 13) % KEYS;
        if let Err(e) = d.insert(&key(i), &i) {
            die(&format!("round {round}: insert {i}: {e:?}"));
        }
        // At most PUSHES_PER_ROUND per round, so the list's growth is bounded by the rounds, not by how
        // long a loaded machine lets a churner run before the kill lands (its item array is one heap
        // block: unbounded pushes filled the heap on a busy machine).
        if j < PUSHES_PER_ROUND {
            if let Err(e) = l.push(&((round << 32) | j)) {
                die(&format!("round {round}: push {j}: {e:?}"));
            }
        }
        if j % 5 == 4 {
            if let Err(e) = d.remove(&key((i * 31 + 5) % KEYS)) {
                die(&format!("round {round}: remove: {e:?}"));
            }
        }
        if j % 64 == 0 {
            say(&format!("at {j}"));
        }
    }
}

/// Checks what the churners leave: the dict's `len` equals its item count, every item is `k_i -> i`,
/// keys are unique and `get` agrees; the list's length matches its snapshot and it is the concatenation
/// of each round's pushes `0, 1, …, n` in order (nothing lost in the middle, nothing doubled).
/// Returns (dict len, list len).
fn check_state(m: &Manager) -> Result<(usize, usize), String> {
    let d = m
        .dict::<String, u64>("d")
        .map_err(|e| format!("dict: {e:?}"))?;
    let l = m.list::<u64>("l").map_err(|e| format!("list: {e:?}"))?;
    let len = d.len().map_err(|e| format!("dict len: {e:?}"))?;
    let items = d.items().map_err(|e| format!("dict items: {e:?}"))?;
    if len != items.len() {
        return Err(format!(
            "dict len() is {len} but items() has {}",
            items.len()
        ));
    }
    let mut seen = HashSet::new();
    for (k, v) in &items {
        if *v >= KEYS || *k != key(*v) {
            return Err(format!("dict item {k:?} -> {v} is not k_i -> i"));
        }
        if !seen.insert(k.clone()) {
            return Err(format!("dict key {k:?} appears twice"));
        }
    }
    let keys = d.keys().map_err(|e| format!("dict keys: {e:?}"))?;
    if keys.len() != len || keys.iter().collect::<HashSet<_>>().len() != len {
        return Err(format!("dict keys() {keys:?} disagree with len {len}"));
    }
    for (k, v) in items.iter().take(16) {
        match d.get(k) {
            Ok(Some(x)) if x == *v => {}
            other => return Err(format!("get({k:?}) = {other:?}, items() says {v}")),
        }
    }
    for i in 0..KEYS {
        let present = d
            .contains(&key(i))
            .map_err(|e| format!("contains: {e:?}"))?;
        if present != seen.contains(&key(i)) {
            return Err(format!("contains(k_{i}) = {present}, items() disagrees"));
        }
    }
    let n = l.len().map_err(|e| format!("list len: {e:?}"))?;
    let v = l.to_vec().map_err(|e| format!("list to_vec: {e:?}"))?;
    if n != v.len() {
        return Err(format!("list len() is {n} but to_vec() has {}", v.len()));
    }
    let mut prev: Option<(u64, u64)> = None;
    for (at, x) in v.iter().enumerate() {
        let (round, j) = (x >> 32, x & 0xffff_ffff);
        let ok = match prev {
            None => j == 0,
            Some((r, pj)) => (round == r && j == pj + 1) || (round > r && j == 0),
        };
        if !ok {
            return Err(format!(
                "list element {at} is (round {round}, {j}) after {prev:?}: not a sequence of \
                 complete prefixes"
            ));
        }
        prev = Some((round, j));
    }
    if n > 0 {
        let last = l.get(n - 1).map_err(|e| format!("list get: {e:?}"))?;
        if last != v.last().copied() {
            return Err(format!(
                "list get(last) = {last:?}, to_vec() ends in {:?}",
                v.last()
            ));
        }
    }
    Ok((len, n))
}

/// Child: a process that never saw the churners checks the same invariants.
fn check_child(name: &str) {
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    match check_state(&m) {
        Ok((len, n)) => say(&format!("ok {len} {n}")),
        Err(e) => die(&e),
    }
}

/// Inserts `f_0, f_1, …` until `OutOfMemory`; returns how many went in.
fn fill(d: &mproc::Dict<String, u64>) -> Result<u64, String> {
    for i in 0u64.. {
        match d.insert(&format!("f_{i}"), &i) {
            Ok(None) => {}
            Ok(Some(old)) => return Err(format!("f_{i} was already there (= {old})")),
            Err(Error::OutOfMemory { .. }) => return Ok(i),
            Err(e) => return Err(format!("insert f_{i}: {e:?}")),
        }
    }
    unreachable!()
}

/// Fills the heap until `OutOfMemory`, clears, fills again: the second fill must reach the first's count
/// (a leaked or cross-linked block would make it fall short or fail), and the dict must stay exact.
fn fill_clear_fill(m: &Manager, ctx: &str) -> Result<(u64, u64), String> {
    let f = m
        .dict::<String, u64>("fill")
        .map_err(|e| format!("{ctx}: fill dict: {e:?}"))?;
    let mut counts = Vec::new();
    for pass in 0..2 {
        let c = fill(&f).map_err(|e| format!("{ctx}: fill pass {pass}: {e}"))?;
        let len = f.len().map_err(|e| format!("{ctx}: len: {e:?}"))?;
        let items = f.items().map_err(|e| format!("{ctx}: items: {e:?}"))?;
        if len as u64 != c || items.len() as u64 != c {
            return Err(format!(
                "{ctx}: pass {pass}: {c} inserts succeeded but len() = {len}, items() has {}",
                items.len()
            ));
        }
        if let Some((k, v)) = items
            .iter()
            .find(|(k, v)| *k != format!("f_{v}") || *v >= c)
        {
            return Err(format!("{ctx}: pass {pass}: item {k:?} -> {v}"));
        }
        f.clear().map_err(|e| format!("{ctx}: clear: {e:?}"))?;
        if f.len().map_err(|e| format!("{ctx}: len: {e:?}"))? != 0 {
            return Err(format!("{ctx}: not empty after clear"));
        }
        counts.push(c);
    }
    if counts[1] < counts[0] {
        return Err(format!(
            "{ctx}: the second fill reached {} entries, the first {}: blocks leaked",
            counts[1], counts[0]
        ));
    }
    Ok((counts[0], counts[1]))
}

fn kill_storm() {
    let seed = common::seed();
    let mut rng = seed;
    let name = common::unique_name("mgr-storm");
    // A hard cap: the fills below run until `OutOfMemory` (kills in the middle of growth are in
    // manager_grow.rs).
    let m = Manager::builder()
        .initial_size(STORM_SIZE)
        .max_size(STORM_SIZE)
        .create(&name)
        .expect("create manager");
    m.dict::<String, u64>("d").expect("dict");
    m.list::<u64>("l").expect("list");
    let (mut last_len, mut last_n) = (0, 0);
    for round in 0..KILL_ROUNDS {
        let mut kid = Kid::spawn("manager_churn", &format!("{name} {round}"), BOUND);
        kid.expect_line("ready");
        std::thread::sleep(Duration::from_micros(next_random(&mut rng) % 3_000));
        let ctx = format!("round {round}, child {}, seed {seed:#x}", kid.pid());
        kid.kill();
        let m2 = m.clone();
        let (len, n) = bounded(&ctx, BOUND, move || check_state(&m2))
            .unwrap_or_else(|e| panic!("{ctx}: after the kill: {e}"));
        assert!(n >= last_n, "{ctx}: the list shrank from {last_n} to {n}");
        (last_len, last_n) = (len, n);
        let mut checker = Kid::spawn("manager_check", &name, BOUND);
        checker.join_ok();
        let out = checker.rest();
        assert_eq!(
            out,
            [format!("ok {len} {n}")],
            "{ctx}: a fresh process sees something else"
        );
    }
    eprintln!("manager kill storm: {KILL_ROUNDS} kills, dict {last_len} entries, list {last_n}");
    let m2 = m.clone();
    let counts = bounded("fill, clear, fill after the storm", BOUND, move || {
        fill_clear_fill(&m2, "after the storm")
    })
    .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    eprintln!("manager kill storm: fill counts {counts:?}");
    let m2 = m.clone();
    bounded("state after the fills", BOUND, move || check_state(&m2))
        .unwrap_or_else(|e| panic!("after the fills: {e}"));
}

/// The same fill/clear/fill on a fresh heap, no kills: an insert that fails with `OutOfMemory` half-way
/// (after it took blocks from a free list, or freed the dict's old table) must change nothing.
fn oom_rollback_keeps_heap_consistent() {
    let m = Manager::builder()
        .initial_size(256 << 10)
        .max_size(256 << 10)
        .anonymous()
        .expect("anonymous manager");
    let r = bounded("fill, clear, fill", BOUND, move || {
        // A list that grows and shrinks first, so that the free lists are not empty when the fills run.
        let l = m.list::<u64>("l").map_err(|e| format!("{e:?}"))?;
        for i in 0..200u64 {
            l.push(&i).map_err(|e| format!("push: {e:?}"))?;
        }
        for _ in 0..200 {
            l.pop().map_err(|e| format!("pop: {e:?}"))?;
        }
        fill_clear_fill(&m, "fresh heap")
    });
    let counts = r.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("manager oom rollback: fill counts {counts:?}");
}

/// Deterministic: `List::extend` is all or nothing, so one that runs out of memory half-way must leave
/// the list and the free lists exactly as they were. On the way it takes blocks from a free list (whose
/// next pointers the new blobs overwrite) and, when the list grows, frees the old item array (whose
/// first word the free-list link overwrites): the rollback must undo both.
fn extend_oom_changes_nothing() {
    // The smallest heap, which may not grow: its arena is a few KiB.
    let m = Manager::builder()
        .max_size(0)
        .anonymous()
        .expect("anonymous manager");
    let l = m.pod_list::<u64>("l").unwrap();
    for i in 0..6u64 {
        l.push(&i).unwrap();
    }
    // Two 32-byte blocks on the free list.
    assert_eq!(l.pop().unwrap(), Some(5));
    assert_eq!(l.pop().unwrap(), Some(4));
    let many: Vec<u64> = (100..10_100).collect();
    let r = l.extend(&many);
    assert!(
        matches!(r, Err(Error::OutOfMemory { .. })),
        "extend of 10000 into a few KiB: {r:?}"
    );
    match l.to_vec() {
        Ok(v) => assert_eq!(v, [0, 1, 2, 3], "a failed extend changed the list"),
        Err(e) => panic!("to_vec after a failed extend: {e:?}"),
    }
    for i in 10..20u64 {
        if let Err(e) = l.push(&i) {
            panic!("push {i} after a failed extend: {e:?}");
        }
    }
    let mut want: Vec<u64> = (0..4).collect();
    want.extend(10..20);
    match l.to_vec() {
        Ok(v) => assert_eq!(v, want),
        Err(e) => panic!("to_vec: {e:?}"),
    }
}

// ------------------------------------------------------------------------------------ 2. garbage

/// Child: writes random bytes at random offsets of the manager's file until killed: three in four in the
/// first 64 KiB (heap metadata, journal, directory, first blocks), the rest anywhere deeper. The lock's
/// own 16 bytes are spared: a lock word naming a live thread is a lock held by a live process, which
/// anyone who can write the region can arrange, and waiting for it is not a bug.
fn scribble(arg: &str) {
    let (name, seed) = arg.split_once(' ').expect("name seed");
    let mut rng: u64 = seed.parse().expect("seed");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .unwrap_or_else(|e| die(&format!("open file: {e}")));
    let payload = f.metadata().expect("stat").len() - PAYLOAD;
    say("ready");
    loop {
        let r = next_random(&mut rng);
        let off = if !r.is_multiple_of(4) {
            LOCK_BYTES + next_random(&mut rng) % (65536 - LOCK_BYTES)
        } else {
            65536 + next_random(&mut rng) % (payload - 65536)
        };
        let n = 1 + (next_random(&mut rng) % 16) as usize;
        let n = n.min((payload - off) as usize);
        let mut bytes = [0u8; 16];
        for b in &mut bytes[..n] {
            *b = next_random(&mut rng) as u8;
        }
        // Small values and offsets into the heap are nastier than random ones: they pass range checks.
        if r.is_multiple_of(3) && n >= 8 {
            let v = match r % 5 {
                0 => next_random(&mut rng) % 64,
                1 => ARENA + next_random(&mut rng) % (payload - ARENA),
                2 => u64::MAX - next_random(&mut rng) % 64,
                _ => next_random(&mut rng) % payload,
            };
            bytes[..8].copy_from_slice(&v.to_le_bytes());
        }
        f.write_all_at(&bytes[..n], PAYLOAD + off)
            .expect("scribble");
        if r.is_multiple_of(8) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Child: operates on the manager while `scribble` damages it. Only `Ok` or typed errors; prints the
/// tally. Runs in a child so that a crash (SIGSEGV, SIGBUS) fails this test instead of the suite.
fn garbage_ops(arg: &str) {
    let (name, seed) = arg.split_once(' ').expect("name seed");
    let mut rng: u64 = seed.parse().expect("seed");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let mut tally = std::collections::BTreeMap::<&'static str, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ops = 0u64;
    let mut note = |what: &str, r: Result<(), Error>| {
        let k = match &r {
            Ok(()) => "ok",
            Err(e) if typed(e) => kind(e),
            Err(e) => die(&format!("{what}: untyped error {e:?}")),
        };
        *tally.entry(k).or_default() += 1;
    };
    while Instant::now() < deadline && ops < 20_000 {
        ops += 1;
        let i = next_random(&mut rng) % 64;
        match next_random(&mut rng) % 14 {
            0 => note("names", m.names().map(drop)),
            1 => note("dict", m.dict::<String, u64>("d").map(drop)),
            2 => note(
                "insert",
                m.dict::<String, u64>("d")
                    .and_then(|d| d.insert(&key(i), &i).map(drop)),
            ),
            3 => note(
                "get",
                m.dict::<String, u64>("d")
                    .and_then(|d| d.get(&key(i)).map(drop)),
            ),
            4 => note(
                "remove",
                m.dict::<String, u64>("d")
                    .and_then(|d| d.remove(&key(i)).map(drop)),
            ),
            5 => note(
                "update",
                m.dict::<String, u64>("d")
                    .and_then(|d| d.update(&key(i), |v| v.unwrap_or(0) + 1)),
            ),
            6 => note(
                "items",
                m.dict::<String, u64>("d").and_then(|d| d.items().map(drop)),
            ),
            7 => note(
                "len",
                m.dict::<String, u64>("d").and_then(|d| d.len().map(drop)),
            ),
            8 => note("push", m.list::<u64>("l").and_then(|l| l.push(&i))),
            9 => note("pop", m.list::<u64>("l").and_then(|l| l.pop().map(drop))),
            10 => note(
                "to_vec",
                m.list::<u64>("l").and_then(|l| l.to_vec().map(drop)),
            ),
            11 => note("wrong kind", m.list::<f64>("d").map(drop)),
            12 => note(
                "new dict",
                m.pod_dict::<u64, u64>(&format!("x{i}"))
                    .and_then(|d| d.insert(&i, &i).map(drop)),
            ),
            _ => note("clear", m.dict::<String, u64>("d").and_then(|d| d.clear())),
        }
    }
    say(&format!("{ops} ops: {tally:?}"));
}

fn garbage_while_operating() {
    let seed = common::seed();
    let name = common::unique_name("mgr-garbage");
    let m = Manager::create(&name, 256 << 10).expect("create manager");
    let d = m.dict::<String, u64>("d").expect("dict");
    let l = m.list::<u64>("l").expect("list");
    for i in 0..64 {
        d.insert(&key(i), &i).unwrap();
        l.push(&i).unwrap();
    }
    let mut scribbler = Kid::spawn("manager_scribble", &format!("{name} {seed}"), BOUND);
    scribbler.expect_line("ready");
    let mut ops = Kid::spawn(
        "manager_garbage_ops",
        &format!("{name} {}", seed.rotate_left(17) | 1),
        BOUND,
    );
    ops.join_ok();
    let out = ops.rest();
    scribbler.kill();
    eprintln!("manager garbage (seed {seed:#x}): {out:?}");
}

/// Runs the open/lookup fuzzer in a child (a SIGBUS or SIGSEGV there is a failed exit, not a dead
/// suite), and removes what a crashed child may have left.
fn fuzz_open_in_child() {
    let mut kid = Kid::spawn("manager_fuzz_open", "", BOUND);
    let st = kid.wait();
    let prefix = format!("{}-mgrfz", common::run_tag());
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        if e.file_name().to_string_lossy().contains(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    assert!(
        st.success(),
        "manager_fuzz_open: {st} (a signal here, e.g. SIGBUS or SIGSEGV, means a crash)"
    );
}

/// Where a forged word goes.
#[derive(Debug, Clone)]
enum Target {
    /// Journal length, bump, end, free-list heads (payload words 2..64).
    Meta(u64),
    /// A word of the journal.
    Journal(u64),
    /// A word of the first directory entries.
    Directory(u64),
    /// A word of the real objects' headers (dict, list) and their first blocks.
    Objects(u64),
    /// Any word of the payload.
    Anywhere(u64),
}

/// What a forged word holds.
#[derive(Debug, Clone)]
enum Forged {
    Small(u64),
    /// An offset near a real block (so that it passes range checks).
    NearArena(u64),
    /// Near the end of the heap or of `u64`.
    High(u64),
    Random(u64),
}

fn forged_value(v: &Forged, len: u64) -> u64 {
    match *v {
        Forged::Small(x) => x % 70,
        Forged::NearArena(x) => ARENA + (x % (len - ARENA)) / 8 * 8,
        Forged::High(x) if x % 2 == 0 => len - x % 64,
        Forged::High(x) => u64::MAX - x % 64,
        Forged::Random(x) => x,
    }
}

/// Child role: forged heap contents behind a valid header — a real manager's file with metadata words
/// set to small numbers, plausible offsets, huge values or random bits, and random bytes anywhere —
/// opened with `Manager::open`, then looked up (`names`, `dict`, `list`) and used.
fn fuzz_open(_: &str) {
    let real = common::unique_name("mgrfz-real");
    let base: Vec<u8> = {
        let m = Manager::create(&real, 64 << 10).expect("create manager");
        let d = m.dict::<String, u64>("d").expect("dict");
        for i in 0..20 {
            d.insert(&key(i), &i).unwrap();
        }
        d.remove(&key(3)).unwrap();
        let l = m.list::<u64>("l").expect("list");
        l.extend(&(0..12).collect::<Vec<u64>>()).unwrap();
        l.pop().unwrap();
        m.value("v", &"hello".to_string()).unwrap();
        std::fs::read(shm_path(&real)).expect("read the real manager's file")
    };
    assert!(!shm_path(&real).exists(), "dropping the creator unlinks");
    let len = base.len() as u64 - PAYLOAD;
    let word = |off: u64| {
        let at = (PAYLOAD + off) as usize;
        u64::from_le_bytes(base[at..at + 8].try_into().unwrap())
    };
    // The objects' headers, as the directory names them.
    let objects: Vec<u64> = (0..3).map(|i| word(DIRECTORY + i * 64 + 8)).collect();
    let forged = common::unique_name("mgrfz");
    let path = shm_path(&forged);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("create forged file");
    let target = prop_oneof![
        3 => (2u64..64).prop_map(Target::Meta),
        1 => any::<u64>().prop_map(Target::Journal),
        2 => any::<u64>().prop_map(Target::Directory),
        4 => any::<u64>().prop_map(Target::Objects),
        2 => any::<u64>().prop_map(Target::Anywhere),
    ];
    let value = prop_oneof![
        3 => any::<u64>().prop_map(Forged::Small),
        3 => any::<u64>().prop_map(Forged::NearArena),
        2 => any::<u64>().prop_map(Forged::High),
        1 => any::<u64>().prop_map(Forged::Random),
    ];
    let words = proptest::collection::vec((target, value), 1..6);
    let bytes = proptest::collection::vec((any::<u64>(), any::<u8>()), 0..8);
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6d67_725f_667a),
        ..Config::default()
    });
    let result = runner.run(&(words, bytes), |(words, bytes)| {
        let mut img = base.clone();
        let mut put = |off: u64, v: u64| {
            let off = off / 8 * 8;
            if off >= LOCK_BYTES && off + 8 <= len {
                let at = (PAYLOAD + off) as usize;
                img[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        };
        for (t, v) in &words {
            let v = forged_value(v, len);
            match *t {
                Target::Meta(w) => put(w * 8, v),
                Target::Journal(x) => put(JOURNAL + (x % 64) * 8, v),
                Target::Directory(x) => put(DIRECTORY + (x % (3 * 64)), v),
                Target::Objects(x) => {
                    let obj = objects[(x % 3) as usize];
                    put(obj.wrapping_add((x >> 8) % 256), v)
                }
                Target::Anywhere(x) => put(x % len, v),
            }
        }
        for (at, b) in &bytes {
            let at = LOCK_BYTES + at % (len - LOCK_BYTES);
            img[(PAYLOAD + at) as usize] = *b;
        }
        file.write_all_at(&img, 0).expect("write forged file");
        let m = match Manager::open(&forged) {
            Ok(m) => m,
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "open of a valid header failed: {e:?}"
                )))
            }
        };
        let check = |what: &str, r: Result<(), Error>| match r {
            Err(e) if !typed(&e) => Err(TestCaseError::fail(format!("{what}: {e:?}"))),
            _ => Ok(()),
        };
        check("names", m.names().map(drop))?;
        check(
            "value",
            m.value("v", &String::new()).and_then(|v| v.get().map(drop)),
        )?;
        match m.dict::<String, u64>("d") {
            Ok(d) => {
                check("get", d.get(&key(5)).map(drop))?;
                check("contains", d.contains(&key(7)).map(drop))?;
                check("len", d.len().map(drop))?;
                check("items", d.items().map(drop))?;
                check("insert", d.insert(&key(40), &40).map(drop))?;
                check("update", d.update(&key(6), |v| v.unwrap_or(0) + 1))?;
                check("remove", d.remove(&key(8)).map(drop))?;
            }
            Err(e) => check("dict", Err(e))?,
        }
        match m.list::<u64>("l") {
            Ok(l) => {
                check("to_vec", l.to_vec().map(drop))?;
                check("push", l.push(&99))?;
                check("get", l.get(3).map(drop))?;
                check("pop", l.pop().map(drop))?;
            }
            Err(e) => check("list", Err(e))?,
        }
        check(
            "new dict",
            m.pod_dict::<u64, u64>("fresh")
                .and_then(|d| d.insert(&1, &2).map(drop)),
        )?;
        Ok(())
    });
    drop(file);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = result {
        die(&format!("forged heap contents: {e}"));
    }
}
