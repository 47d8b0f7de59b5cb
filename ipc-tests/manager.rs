//! The managed heap across processes (issue 7): objects shared by name and by serialized handle,
//! concurrent `update`s from several processes, the janitor, and the lifecycle of a named manager.
//! SIGKILL in the middle of `Dict::insert` / `List::push`, out-of-memory rollback, garbage written into
//! the heap's metadata while another process works on it, and forged heap contents at open are in
//! `manager_faults.rs`.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" (DESIGN.md, invariant 4) and
//! never measures speed.

use std::time::Duration;

use libtest_mimic::Trial;
use mproc::{Error, Event, Manager};

use crate::common::{
    self, handle_from_hex, handle_to_hex, say, shm_path, sleep_forever, Kid, Role,
};

/// How long anything may take before we call it a hang (shared with manager_faults.rs).
pub(crate) const BOUND: Duration = Duration::from_secs(60);
/// Processes in the concurrent-update test, and updates each makes.
const UPDATERS: usize = 4;
const UPDATES: u64 = 3_000;
const SHARED_KEYS: [&str; 3] = ["apples", "pears", "plums"];

pub const ROLES: &[Role] = &[
    ("manager_update", update_child),
    ("manager_linger", linger),
    ("manager_visible", visible),
    ("manager_by_handle", by_handle),
    ("manager_object_holder", object_holder),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("manager", name, f);
    vec![
        t("concurrent_updates_lose_nothing", concurrent_updates),
        t("janitor_reclaims_killed_creators_manager", janitor_reclaims),
        t("dropped_creator_handle_unlinks_the_name", drop_unlinks),
        t("dict_and_list_shared_by_name", shared_by_name),
        t("anonymous_manager_passed_as_handle", anonymous_by_handle),
        t(
            "named_objects_outlive_their_creator_until_every_holder_is_gone",
            named_objects_outlive_their_creator,
        ),
    ]
}

// ------------------------------------------------------------------------------------------------ helpers

/// A child's failure: the message goes to stderr (shown by the harness), the exit code to the parent.
/// Shared with manager_faults.rs.
pub(crate) fn die(what: &str) -> ! {
    eprintln!("manager test child {}: {what}", std::process::id());
    std::process::exit(3)
}

// ------------------------------------------------------------------------------------ 1. lost updates

/// Child: `UPDATES` increments spread over [`SHARED_KEYS`], in a serde dict and a Pod dict.
fn update_child(arg: &str) {
    let (name, go) = arg.split_once(' ').expect("name event");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let d = m
        .dict::<String, u64>("counts")
        .unwrap_or_else(|e| die(&format!("dict: {e:?}")));
    let p = m
        .pod_dict::<u64, u64>("pod")
        .unwrap_or_else(|e| die(&format!("pod dict: {e:?}")));
    let go = Event::open(go).unwrap_or_else(|e| die(&format!("event: {e:?}")));
    if !go.wait_timeout(BOUND) {
        die("start signal did not come");
    }
    for i in 0..UPDATES {
        let k = (i % SHARED_KEYS.len() as u64) as usize;
        if let Err(e) = d.update(&SHARED_KEYS[k].to_owned(), |v| v.unwrap_or(0) + 1) {
            die(&format!("update: {e:?}"));
        }
        if let Err(e) = p.update(&(k as u64), |v| v.unwrap_or(0) + 1) {
            die(&format!("pod update: {e:?}"));
        }
    }
}

fn concurrent_updates() {
    let name = common::unique_name("mgr-upd");
    let go_name = common::unique_name("mgr-go");
    let m = Manager::create(&name, 1 << 20).expect("create manager");
    let go = Event::create(&go_name).expect("event");
    let mut kids: Vec<Kid> = (0..UPDATERS)
        .map(|_| Kid::spawn("manager_update", &format!("{name} {go_name}"), BOUND))
        .collect();
    go.set();
    for k in &mut kids {
        k.join_ok();
    }
    let per_key = UPDATERS as u64 * UPDATES / SHARED_KEYS.len() as u64;
    let d = m.dict::<String, u64>("counts").expect("dict");
    let p = m.pod_dict::<u64, u64>("pod").expect("pod dict");
    for (i, k) in SHARED_KEYS.iter().enumerate() {
        assert_eq!(
            d.get(&k.to_string()).unwrap(),
            Some(per_key),
            "{k}: an update was lost or doubled"
        );
        assert_eq!(
            p.get(&(i as u64)).unwrap(),
            Some(per_key),
            "pod key {i}: an update was lost or doubled"
        );
    }
    assert_eq!(d.len().unwrap(), SHARED_KEYS.len());
    assert_eq!(p.len().unwrap(), SHARED_KEYS.len());
}

// ------------------------------------------------------------------------------------ 2. reclamation

/// Child: creates a named manager (not persistent), puts a value in it, and waits to be killed.
fn linger(name: &str) {
    let m = Manager::create(name, 64 << 10).unwrap_or_else(|e| die(&format!("create: {e:?}")));
    m.dict::<String, u64>("d")
        .and_then(|d| d.insert(&"pid".to_owned(), &u64::from(std::process::id())))
        .unwrap_or_else(|e| die(&format!("insert: {e:?}")));
    say("ready");
    sleep_forever()
}

fn janitor_reclaims() {
    let name = common::unique_name("mgr-jan");
    let mut kid = Kid::spawn("manager_linger", &name, BOUND);
    kid.expect_line("ready");
    {
        let m = Manager::open(&name).expect("open the child's manager");
        let d = m.dict::<String, u64>("d").expect("dict");
        assert_eq!(
            d.get(&"pid".to_owned()).unwrap(),
            Some(u64::from(kid.pid()))
        );
    }
    // One sweep at a time in the suite (see `region::sweep_lock`): each judges what it removed.
    let _sweep = crate::region::sweep_lock();
    let removed = mproc::cleanup_stale().unwrap();
    assert!(!removed.contains(&name), "swept while its creator lives");
    assert!(shm_path(&name).exists());
    kid.kill();
    assert!(
        shm_path(&name).exists(),
        "SIGKILL runs no destructor: the name stays until a sweep"
    );
    let removed = mproc::cleanup_stale().unwrap();
    // Gone whoever swept it: only "not there any more" is asserted, not this sweep's list.
    assert!(
        !shm_path(&name).exists(),
        "the killed creator's manager survived a sweep: {removed:?}"
    );
    assert!(matches!(Manager::open(&name), Err(Error::NotFound { .. })));
}

fn drop_unlinks() {
    let name = common::unique_name("mgr-drop");
    let m = Manager::create(&name, 64 << 10).expect("create");
    m.dict::<String, u64>("d")
        .unwrap()
        .insert(&"x".into(), &1)
        .unwrap();
    let opened = Manager::open(&name).expect("open");
    assert!(shm_path(&name).exists());
    drop(m);
    assert!(!shm_path(&name).exists(), "dropping the creator unlinks");
    // A process that had it open keeps using it.
    let d = opened.dict::<String, u64>("d").unwrap();
    assert_eq!(d.get("x").unwrap(), Some(1));
    assert!(matches!(Manager::open(&name), Err(Error::NotFound { .. })));
}

// ------------------------------------------------------------------------------------ 3. visibility

/// Child `idx`: sees the parent's entries, adds its own, and bumps a shared total.
fn visible(arg: &str) {
    let (name, idx) = arg.split_once(' ').expect("name idx");
    let idx: u64 = idx.parse().expect("idx");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let d = m.dict::<String, u64>("shared").expect("dict");
    let l = m.list::<String>("lines").expect("list");
    if d.get("from_parent").unwrap() != Some(7) {
        die("the parent's entry is not visible");
    }
    if l.get(0).unwrap().as_deref() != Some("parent") {
        die("the parent's line is not visible");
    }
    d.insert(&format!("child_{idx}"), &(idx * 10)).unwrap();
    d.update(&"total".into(), |v| v.unwrap_or(0) + idx + 1)
        .unwrap();
    l.push(&format!("child {idx}")).unwrap();
    // A wrong type under a taken name is refused, in any process.
    match m.list::<f64>("shared") {
        Err(Error::TypeMismatch { .. }) => {}
        other => die(&format!("list::<f64>(\"shared\") gave {other:?}")),
    }
}

fn shared_by_name() {
    let name = common::unique_name("mgr-vis");
    let m = Manager::create(&name, 256 << 10).expect("create");
    let d = m.dict::<String, u64>("shared").unwrap();
    let l = m.list::<String>("lines").unwrap();
    d.insert(&"from_parent".into(), &7).unwrap();
    l.push(&"parent".into()).unwrap();
    let mut kids: Vec<Kid> = (0..3)
        .map(|i| Kid::spawn("manager_visible", &format!("{name} {i}"), BOUND))
        .collect();
    for k in &mut kids {
        k.join_ok();
    }
    for i in 0..3u64 {
        assert_eq!(d.get(&format!("child_{i}")).unwrap(), Some(i * 10));
    }
    assert_eq!(d.get("total").unwrap(), Some(1 + 2 + 3));
    assert_eq!(d.len().unwrap(), 5);
    let mut lines = l.to_vec().unwrap();
    assert_eq!(lines.remove(0), "parent");
    lines.sort();
    assert_eq!(lines, ["child 0", "child 1", "child 2"]);
    let mut names = m.names().unwrap();
    names.sort();
    assert_eq!(names, ["lines", "shared"]);
}

/// Child: the anonymous manager arrives as a serialized handle.
fn by_handle(hex: &str) {
    let m: Manager = handle_from_hex(hex).unwrap_or_else(|e| die(&format!("handle: {e}")));
    let p = m.pod_dict::<u64, u64>("squares").expect("pod dict");
    if p.get(&7).unwrap() != Some(49) {
        die("the parent's entry is not visible");
    }
    p.insert(&8, &64).unwrap();
    m.pod_list::<u32>("seen")
        .unwrap()
        .push(&std::process::id())
        .unwrap();
}

fn anonymous_by_handle() {
    let m = Manager::anonymous(128 << 10).expect("anonymous");
    let p = m.pod_dict::<u64, u64>("squares").unwrap();
    p.insert(&7, &49).unwrap();
    let hex = handle_to_hex(&m);
    let mut kid = Kid::spawn("manager_by_handle", &hex, BOUND);
    let pid = kid.pid();
    kid.join_ok();
    assert_eq!(p.get(&8).unwrap(), Some(64));
    assert_eq!(m.pod_list::<u32>("seen").unwrap().to_vec().unwrap(), [pid]);
}

// ------------------------------------------------------------------- 5. named objects and their holders

/// Child: attaches to (or makes) the queue `jobs` of the manager `name`, then by `mode`: `make` puts a
/// message and waits to be killed; `take` prints the message it gets; `empty` prints `empty` if the
/// queue holds nothing.
fn object_holder(arg: &str) {
    let (name, mode) = arg.split_once(' ').expect("name mode");
    let m = Manager::open(name).unwrap_or_else(|e| die(&format!("open: {e:?}")));
    let q = m
        .queue::<String, mproc::codec::Serde>("jobs", 4, 64)
        .unwrap_or_else(|e| die(&format!("queue: {e:?}")));
    match mode {
        "make" => {
            q.put(&"from the maker".to_owned())
                .unwrap_or_else(|e| die(&format!("put: {e:?}")));
            say("ready");
            sleep_forever()
        }
        "take" => match q.get_timeout(BOUND) {
            Ok(msg) => say(&msg),
            Err(e) => die(&format!("get: {e:?}")),
        },
        "empty" => match q.try_get() {
            Err(Error::Empty) => say("empty"),
            other => die(&format!("a new queue should be empty: {other:?}")),
        },
        _ => die("unknown mode"),
    }
}

/// A named queue stays reachable after its creator is SIGKILLed, through a process that attached to it
/// by name; once every such process is gone, the name gets a new queue instead of failing for good
/// (until 2026-12-01 it was `StaleHandle` forever once the creator was gone).
fn named_objects_outlive_their_creator() {
    let name = common::unique_name("mgr-holders");
    let m = Manager::create(&name, 256 << 10).expect("create");
    let mut maker = Kid::spawn("manager_object_holder", &format!("{name} make"), BOUND);
    maker.expect_line("ready");
    // This process attaches through the maker, and is listed as a holder.
    let ours = Manager::open(&name).expect("open");
    let q = ours
        .queue::<String, mproc::codec::Serde>("jobs", 4, 64)
        .expect("attach while the maker lives");
    maker.kill_and_wait();

    let mut taker = Kid::spawn("manager_object_holder", &format!("{name} take"), BOUND);
    taker.expect_line("from the maker");
    taker.join_ok();
    q.put(&"left behind".to_owned()).unwrap();

    // Every process that got the queue by name is gone or let go of it: the old queue is unreachable,
    // and asking for the name makes a new, empty one.
    drop((q, ours));
    let mut remaker = Kid::spawn("manager_object_holder", &format!("{name} empty"), BOUND);
    remaker.expect_line("empty");
    remaker.join_ok();

    // A manager hands out the object it holds: the same lock twice, the same queue.
    let a = m.lock("l").unwrap();
    let b = m.lock("l").unwrap();
    let held = a.lock().unwrap();
    assert!(b.try_lock().is_err());
    drop(held);
    assert!(m.names().unwrap().contains(&"jobs".to_owned()));
}
