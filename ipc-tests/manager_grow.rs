//! The growing manager (issue 13): a million entries in a default-sized manager, containers passed to
//! a child as arguments (the child grows the heap, the parent maps the growth), SIGKILL in the middle
//! of growth (consistent afterwards, nothing left in `/dev/shm`), and garbage in the heap's size words.
//!
//! Heap offsets follow `src/manager/heap.rs` (payload offsets; the payload starts 128 bytes into the
//! file). Every wait is bounded by [`BOUND`], generously: it proves "no hang" and never measures speed.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Dict, Error, List, ManagedValue, Manager, Namespace, Process};

use crate::common::{self, bounded, next_random, say, shm_path, Kid, Role};
use crate::manager::{die, BOUND};

/// Payload offset in the file, and the heap's size words (payload offsets).
const PAYLOAD: u64 = 128;
const END: u64 = 32;
const MAX_END: u64 = 464;
/// Entries of the big dict.
const MILLION: u64 = 1_000_000;
/// Rounds of the mid-grow kill storm (a fresh manager each, so that every round grows from the
/// smallest heap), and keys its churner cycles through.
const GROW_ROUNDS: u64 = 30;
const GROW_KEYS: u64 = 200;

pub const ROLES: &[Role] = &[
    ("manager_grow_churn", churn),
    ("manager_grow_check", check_child),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("manager", name, f);
    vec![
        t("a_million_entries_in_a_default_manager", million),
        t(
            "containers_pass_to_a_child_as_arguments",
            containers_as_arguments,
        ),
        t(
            "kill_during_growth_keeps_the_manager_consistent",
            kill_mid_grow,
        ),
        t(
            "garbage_in_the_size_words_gives_typed_errors",
            size_word_garbage,
        ),
    ]
}

// ------------------------------------------------------------------------------------ 1. a million

/// Child: the dict arrives as its argument; returns its length and the sum of its values.
fn sum_dict(d: Dict<u64, u64>) -> (u64, u64) {
    let len = d.len().expect("len") as u64;
    let sum = d.values().expect("values").iter().sum();
    (len, sum)
}

fn million() {
    let m = Manager::new().expect("manager");
    let first = m.size().unwrap();
    let d = m.dict::<u64, u64>("big").expect("dict");
    let d2 = d.clone();
    bounded("a million inserts", BOUND * 5, move || {
        for i in 0..MILLION {
            d2.insert(&i, &(i * 2))
                .map_err(|e| format!("insert {i}: {e:?}"))?;
        }
        Ok::<(), String>(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.size().unwrap() > 16 * first,
        "the heap grew from {first} to {} bytes only",
        m.size().unwrap()
    );
    assert_eq!(d.len().unwrap() as u64, MILLION);
    for i in (0..MILLION).step_by(997) {
        assert_eq!(d.get(&i).unwrap(), Some(i * 2), "key {i}");
    }
    assert_eq!(d.get(&MILLION).unwrap(), None);
    // A process that never saw the heap small maps all of it, by the dict's handle.
    let mut p = Process::new(sum_dict, d.clone()).expect("process");
    p.start().expect("start");
    let (len, sum) = p.join().expect("join");
    assert_eq!(len, MILLION);
    assert_eq!(sum, MILLION * (MILLION - 1));
    eprintln!(
        "manager: a million entries in {} MiB of heap",
        m.size().unwrap() >> 20
    );
}

// ------------------------------------------------------------------------------------ 2. arguments

type Containers = (
    Dict<String, u64>,
    List<Vec<u8>>,
    ManagedValue<u64>,
    Namespace,
);

/// Child: gets all four containers as its argument, changes each, and grows the heap (a 4 MiB element
/// and 20 000 entries, in a manager that started at 1 MiB). Returns its pid.
fn mutate_all((d, l, v, ns): Containers) -> u32 {
    let pid = std::process::id();
    for i in 0..20_000u64 {
        d.insert(&format!("child_{i}"), &i).expect("insert");
    }
    d.entry("from_parent")
        .and_modify(|n| *n += 1)
        .or_insert(0)
        .expect("entry");
    l.push(&vec![7u8; 4 << 20]).expect("push");
    v.update(|x| x * 10).expect("update");
    ns.set("child_pid", &pid).expect("namespace set");
    pid
}

fn containers_as_arguments() {
    for named in [false, true] {
        let name = common::unique_name("mgr-args");
        let m = if named {
            Manager::create(&name, 1 << 20).expect("create")
        } else {
            Manager::new().expect("new")
        };
        let d = m.dict::<String, u64>("d").unwrap();
        d.insert(&"from_parent".to_string(), &41).unwrap();
        let l = m.list::<Vec<u8>>("l").unwrap();
        let v = m.value("v", &5u64).unwrap();
        let ns = m.namespace("ns").unwrap();
        let before = m.size().unwrap();
        let mut p = Process::new(mutate_all, (d.clone(), l.clone(), v.clone(), ns.clone()))
            .expect("process");
        p.start().expect("start");
        let pid = p.join().expect("join");
        assert!(m.size().unwrap() > before, "the child grew the heap");
        assert_eq!(d.len().unwrap(), 20_001);
        assert_eq!(d.get("from_parent").unwrap(), Some(42));
        assert_eq!(d.get("child_19999").unwrap(), Some(19_999));
        assert_eq!(l.len().unwrap(), 1);
        assert_eq!(
            l.get(0).unwrap().map(|b| (b.len(), b[100])),
            Some((4 << 20, 7))
        );
        assert_eq!(v.get().unwrap(), 50);
        assert_eq!(ns.get::<u32>("child_pid").unwrap(), Some(pid));
        drop((d, l, v, ns, m));
        assert!(!shm_path(&name).exists());
    }
}

// ------------------------------------------------------------------------------------ 3. kill mid-grow

/// The value stored under key `i`: its length varies (1 to 600 bytes) so that blocks of several size
/// classes are taken and freed, and the heap keeps growing.
fn value_of(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 1 + ((i * 7919) % 600) as usize]
}

/// Child: inserts `k_i -> value_of(i)` (cycling through the keys, so later rounds overwrite and free)
/// and pushes 0, 1, 2, … to the list, as fast as it can, until it is killed.
fn churn(arg: &str) {
    let (name, round) = arg.split_once(' ').expect("name round");
    let round: u64 = round.parse().expect("round");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let d = m
        .dict::<String, Vec<u8>>("d")
        .unwrap_or_else(|e| die(&format!("dict: {e:?}")));
    let l = m
        .pod_list::<u64>("l")
        .unwrap_or_else(|e| die(&format!("list: {e:?}")));
    let pages = m
        .pod_list::<[u64; 4096]>("pages")
        .unwrap_or_else(|e| die(&format!("pages: {e:?}")));
    say("ready");
    for j in 0u64.. {
        let i = (j * 7 + round * 13) % GROW_KEYS;
        if let Err(e) = d.insert(&format!("k_{i}"), &value_of(i)) {
            die(&format!("round {round}: insert {i}: {e:?}"));
        }
        if let Err(e) = l.push(&j) {
            die(&format!("round {round}: push {j}: {e:?}"));
        }
        // Fresh 32 KiB pages (in 64 KiB blocks), copied raw: much of this loop's time goes to growing the heap, so that
        // the kill lands in the middle of a grow now and then.
        for _ in 0..8 {
            if let Err(e) = pages.push(&[j; 4096]) {
                die(&format!("round {round}: page {j}: {e:?}"));
            }
        }
    }
}

/// What the churner leaves must be whole: every entry `k_i -> value_of(i)`, `len` equal to the item
/// count, and the list exactly `0, 1, …, n-1`. Returns (dict len, list len).
fn check_state(m: &Manager) -> Result<(usize, usize), String> {
    let d = m
        .dict::<String, Vec<u8>>("d")
        .map_err(|e| format!("dict: {e:?}"))?;
    let l = m.pod_list::<u64>("l").map_err(|e| format!("list: {e:?}"))?;
    let len = d.len().map_err(|e| format!("len: {e:?}"))?;
    let items = d.items().map_err(|e| format!("items: {e:?}"))?;
    if items.len() != len {
        return Err(format!("len() is {len}, items() has {}", items.len()));
    }
    for (k, v) in &items {
        let i: u64 = k
            .strip_prefix("k_")
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("key {k:?}"))?;
        if *v != value_of(i) {
            return Err(format!(
                "{k}: a value of {} bytes, not value_of({i})",
                v.len()
            ));
        }
    }
    let v = l.to_vec().map_err(|e| format!("to_vec: {e:?}"))?;
    if let Some((at, x)) = v.iter().enumerate().find(|&(at, x)| *x != at as u64) {
        return Err(format!("list element {at} is {x}: not 0, 1, 2, …"));
    }
    let pages = m
        .pod_list::<[u64; 4096]>("pages")
        .map_err(|e| format!("pages: {e:?}"))?
        .to_vec()
        .map_err(|e| format!("pages to_vec: {e:?}"))?;
    // Eight pages per step j, each filled with j; a kill may cut a step's eight short.
    if let Some((at, p)) = pages
        .iter()
        .enumerate()
        .find(|&(at, p)| p.iter().any(|&w| w != (at / 8) as u64))
    {
        return Err(format!("page {at} holds {}, not {}", p[0], at / 8));
    }
    Ok((len, v.len()))
}

/// Child: a process that never saw the churner checks the same, then grows the heap itself.
fn check_child(name: &str) {
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let (len, n) = check_state(&m).unwrap_or_else(|e| die(&e));
    let l = m
        .pod_list::<u64>("l")
        .unwrap_or_else(|e| die(&format!("list: {e:?}")));
    // In transactions of 500 pushes: one `extend` of all would journal a word per block it takes from
    // a free list, and the journal holds 1024.
    let more: Vec<u64> = (n as u64..n as u64 + 50_000).collect();
    for chunk in more.chunks(500) {
        l.extend(chunk)
            .unwrap_or_else(|e| die(&format!("extend: {e:?}")));
    }
    say(&format!("ok {len} {n}"));
}

fn kill_mid_grow() {
    let seed = common::seed();
    let mut rng = seed;
    let mut mid_grow = 0;
    for round in 0..GROW_ROUNDS {
        let name = common::unique_name("mgr-grow");
        // The smallest heap: the churner grows it from the first insert on.
        let m = Manager::create(&name, 0).expect("create manager");
        m.dict::<String, Vec<u8>>("d").expect("dict");
        m.pod_list::<u64>("l").expect("list");
        m.pod_list::<[u64; 4096]>("pages").expect("pages");
        let mut kid = Kid::spawn("manager_grow_churn", &format!("{name} {round}"), BOUND);
        kid.expect_line("ready");
        std::thread::sleep(Duration::from_micros(next_random(&mut rng) % 60_000));
        let ctx = format!("round {round}, child {}, seed {seed:#x}", kid.pid());
        kid.kill();
        // Killed between extending the file and committing the new end: the file is longer than the
        // heap says (counted, not asserted: where a kill lands is up to the scheduler).
        let file = std::fs::metadata(shm_path(&name)).expect("stat").len();
        let m2 = m.clone();
        let (len, n) = bounded(&ctx, BOUND, move || check_state(&m2))
            .unwrap_or_else(|e| panic!("{ctx}: after the kill: {e}"));
        if file > PAYLOAD + m.size().unwrap() as u64 {
            mid_grow += 1;
        }
        let mut checker = Kid::spawn("manager_grow_check", &name, BOUND);
        checker.join_ok();
        assert_eq!(
            checker.rest(),
            [format!("ok {len} {n}")],
            "{ctx}: a fresh process"
        );
        // The survivor's growth is visible here, and the list still counts up.
        let m2 = m.clone();
        let (_, n2) = bounded(&ctx, BOUND, move || check_state(&m2))
            .unwrap_or_else(|e| panic!("{ctx}: after the checker: {e}"));
        assert_eq!(n2, n + 50_000, "{ctx}");
        drop(m);
        assert!(
            !shm_path(&name).exists(),
            "{ctx}: the manager's file outlived it"
        );
    }
    let prefix = format!("mproc.{}-mgr-grow", common::run_tag());
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    eprintln!(
        "manager grow storm: {GROW_ROUNDS} kills, {mid_grow} between extending the file and committing"
    );
}

// ------------------------------------------------------------------------------------ 4. garbage

fn size_word_garbage() {
    let name = common::unique_name("mgr-sizeword");
    let m = Manager::builder()
        .initial_size(0)
        .create(&name)
        .expect("create");
    let d = m.pod_dict::<u64, u64>("d").unwrap();
    for i in 0..2_000 {
        d.insert(&i, &i).unwrap();
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .expect("open the file");
    let word = |off: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, PAYLOAD + off).unwrap();
        u64::from_le_bytes(b)
    };
    let set = |off: u64, v: u64| f.write_all_at(&v.to_le_bytes(), PAYLOAD + off).unwrap();
    let end = word(END);
    assert!(end > 64 << 10, "the heap grew: {end}");
    // An end beyond the file: every process says Corrupted, none maps it.
    for bad in [end + 4096, 1 << 41, u64::MAX] {
        set(END, bad);
        assert!(
            matches!(d.get(&5), Err(Error::Corrupted(_))),
            "end {bad:#x}"
        );
        let other = Manager::open(&name).expect("open: the header is intact");
        assert!(
            matches!(other.names(), Err(Error::Corrupted(_))),
            "end {bad:#x}"
        );
    }
    set(END, end);
    assert_eq!(d.get(&5).unwrap(), Some(5));
    // A limit below the end stops growth: OutOfMemory, and the dict is unchanged.
    set(MAX_END, 4096);
    let r = (2_000..200_000u64).try_for_each(|i| d.insert(&i, &i).map(drop));
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    let n = d.len().unwrap();
    assert_eq!(d.items().unwrap().len(), n);
    assert_eq!(word(END), end, "no growth past a garbage limit");
    drop((d, m));
    assert!(!shm_path(&name).exists());
}
