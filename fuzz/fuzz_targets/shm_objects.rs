//! Shared objects attached to a named region whose bytes a hostile same-user peer wrote.
//!
//! At start-up the target makes one genuine object of each kind under a template name (with some
//! state: messages queued, one spilled, an unbounded queue's segments, manager containers with entries)
//! and keeps a copy of its `/dev/shm` file and of its queue blocks. Each input then patches those bytes
//! (any byte of the header, the payload or the blocks), writes them as `/dev/shm/mproc.fz<pid>` (and the
//! blocks under the queue-id prefix the patched header names), re-attaches through the public
//! `from_handle` of the kind (a `RegionHandle` naming the file: opening from a handle never waits), and
//! runs a few bounded operations (`try_*`, `*_timeout`, reads). Everything is removed afterwards.
//!
//! Promise under test (DESIGN.md "Trust model", README "Trust model and security"): a typed error or a
//! bounded wait, never a panic, never an access outside the region, never an allocation or a wait sized
//! by what the peer wrote.
//!
//! Input: `[kind][ops][patch]*`, a patch being `[offset: 3 bytes LE][len: 1 byte][bytes]`; offsets
//! address the concatenation of the main file and its blocks (modulo its length). If bit 7 of `ops` is
//! set, the next two bytes resize the main file (a signed delta in bytes, before it is opened).
//!
//! One exclusion, documented behaviour and not a bug: an untimed lock (the manager's heap lock, a
//! `Value`'s or `Array`'s lock) whose word names a *live* thread waits for it, as for a hostile peer that
//! holds the lock (raw_lock.rs "Garbage"). For those kinds the harness clears such a word before
//! opening, so that a run does not simply wait for pid 1.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mproc::codec::Raw;
use mproc::{
    Array, Barrier, BoundedSemaphore, Condition, Event, JoinableQueue, Lock, Manager, Queue, RLock,
    Region, Semaphore, Value,
};
use mproc_fuzz::{
    header_region_id, list_shm, queue_group_prefix, read_shm, remove_shm_prefix, run, tid_alive,
    write_shm, Bytes, HandleMirror,
};

const KINDS: u8 = 16;
const T: Duration = Duration::from_millis(1);

struct Template {
    main: Vec<u8>,
    /// Blocks of a queue: (name after `q<id>-`, bytes).
    blocks: Vec<(String, Vec<u8>)>,
}

fn pid() -> u32 {
    std::process::id()
}

fn fuzz_name() -> String {
    format!("fz{}", pid())
}

/// Reads the template's file and its queue blocks, while `keep` (the genuine object) is alive.
fn capture<O>(name: &str, keep: O) -> Template {
    let main = read_shm(name);
    let prefix = queue_group_prefix(header_region_id(&main));
    let blocks = list_shm(&prefix)
        .into_iter()
        .filter(|n| !n.ends_with("anchor"))
        .map(|n| (n[prefix.len()..].to_owned(), read_shm(&n)))
        .collect();
    drop(keep);
    Template { main, blocks }
}

fn make(kind: u8) -> Template {
    let name = format!("fzt{}k{kind}", pid());
    let n = name.as_str();
    match kind {
        0 => {
            let r = Region::create(n, 4096, false).unwrap();
            // SAFETY: 4096 bytes of a region only this process uses yet.
            unsafe { std::ptr::write_bytes(r.as_ptr(), 0x5a, 64) };
            capture(n, r)
        }
        1 => {
            let q: Queue<Vec<u8>> = Queue::create(n, 4, 64).unwrap();
            q.put(&vec![1, 2, 3]).unwrap();
            q.put(&vec![7; 300]).unwrap(); // spilled to a block
            q.put(&vec![]).unwrap();
            capture(n, q)
        }
        2 => {
            let q: Queue<u64, Raw> = Queue::create(n, 8, 8).unwrap();
            for i in 0..3 {
                q.put(&(i * 1000 + 7)).unwrap();
            }
            capture(n, q)
        }
        3 => {
            let q: Queue<String> = Queue::create_unbounded(n).unwrap();
            q.put(&"a".to_owned()).unwrap();
            q.put(&"bb".repeat(50)).unwrap();
            q.put(&String::new()).unwrap();
            capture(n, q)
        }
        4 => {
            let q: Queue<u32> = Queue::create(n, 4, 16).unwrap();
            let j = JoinableQueue::from_queue(q);
            j.put(&5).unwrap();
            j.put(&6).unwrap();
            capture(n, j)
        }
        5 => capture(n, Lock::create(n).unwrap()),
        6 => capture(n, RLock::create(n).unwrap()),
        7 => {
            let e = Event::create(n).unwrap();
            e.set();
            capture(n, e)
        }
        8 => capture(n, Semaphore::create(n, 3).unwrap()),
        9 => capture(n, BoundedSemaphore::create(n, 2).unwrap()),
        10 => capture(n, Condition::create(n).unwrap()),
        11 => capture(n, Barrier::create(n, 3).unwrap()),
        12 => capture(n, Value::create(n, 0x1234_5678_u64).unwrap()),
        13 => {
            let a = Array::<u32>::create(n, 16).unwrap();
            a.set(3, 9);
            capture(n, a)
        }
        14 => {
            let m = Manager::create(n, 1 << 16).unwrap();
            let d = m.dict::<String, u64>("d").unwrap();
            for (i, k) in ["a", "bc", "def", "ghij"].iter().enumerate() {
                d.insert(&(*k).to_owned(), &(i as u64)).unwrap();
            }
            let l = m.list::<Vec<u8>>("l").unwrap();
            l.push(&vec![1, 2, 3]).unwrap();
            l.push(&vec![9; 40]).unwrap();
            m.value("v", &77u64).unwrap();
            let ns = m.namespace("ns").unwrap();
            ns.set("x", &"hello".to_owned()).unwrap();
            ns.set("y", &3.5f64).unwrap();
            let pd = m.pod_dict::<u32, u64>("pd").unwrap();
            pd.insert(&1, &2).unwrap();
            let pl = m.pod_list::<u16>("pl").unwrap();
            pl.push(&4).unwrap();
            drop((d, l, ns, pd, pl));
            capture(n, m)
        }
        _ => {
            // A bounded queue of strings whose slots are full (capacity 2): puts see a full ring.
            let q: Queue<String> = Queue::create(n, 2, 32).unwrap();
            q.put(&"x".to_owned()).unwrap();
            q.put(&"y".repeat(40)).unwrap(); // spilled
            capture(n, q)
        }
    }
}

fn templates() -> &'static Vec<Template> {
    static TPL: OnceLock<Vec<Template>> = OnceLock::new();
    TPL.get_or_init(|| {
        mproc_fuzz::install_panic_hook();
        let v: Vec<Template> = (0..KINDS).map(make).collect();
        remove_shm_prefix(&format!("fzt{}", pid()));
        v
    })
}

/// Clears a lock word (at `at` in the file) that names a live thread: see the module docs.
fn clear_live_lock(file: &mut [u8], at: usize) {
    if let Some(w) = file.get_mut(at..at + 4) {
        let tid = u32::from_le_bytes(w.try_into().unwrap()) & 0x3fff_ffff;
        if tid_alive(tid) {
            w.copy_from_slice(&[0; 4]);
        }
    }
}

fn queue_ops<T, C>(q: &Queue<T, C>, ops: u8, item: &T)
where
    C: mproc::codec::Codec<T>,
{
    std::hint::black_box((
        q.len(),
        q.is_empty(),
        q.capacity(),
        q.max_message_size(),
        q.is_closed(),
    ));
    for _ in 0..(1 + (ops & 3)) {
        let _ = q.try_get();
    }
    if ops & 4 != 0 {
        let _ = q.try_put(item);
    }
    if ops & 8 != 0 {
        let _ = q.get_timeout(T);
    }
    if ops & 16 != 0 {
        let _ = q.put_timeout(item, T);
        let _ = q.try_get();
    }
    if ops & 32 != 0 {
        q.close();
        let _ = q.try_get();
    }
}

fn exercise(kind: u8, ops: u8, handle: &mproc::RegionHandle) {
    match kind {
        0 => {
            if let Ok(r) = Region::from_handle(handle) {
                let mut acc = 0u8;
                for i in 0..r.len() {
                    // SAFETY: `len()` bytes from `as_ptr()` are the payload (the API's promise).
                    acc ^= unsafe { std::ptr::read_volatile(r.as_ptr().add(i)) };
                }
                std::hint::black_box((acc, r.name(), r.creator_pid(), r.is_persistent()));
            }
        }
        1 | 15 => {
            if let Ok(q) = Queue::<Vec<u8>>::from_handle(handle) {
                let big = if ops & 64 != 0 {
                    vec![3u8; 200]
                } else {
                    vec![4u8; 5]
                };
                queue_ops(&q, ops, &big);
            }
            if kind == 15 {
                if let Ok(q) = Queue::<String>::from_handle(handle) {
                    queue_ops(&q, ops, &"z".repeat(if ops & 64 != 0 { 100 } else { 3 }));
                }
            }
        }
        2 => {
            if let Ok(q) = Queue::<u64, Raw>::from_handle(handle) {
                queue_ops(&q, ops, &42);
            }
        }
        3 => {
            if let Ok(q) = Queue::<String>::from_handle(handle) {
                queue_ops(&q, ops, &"w".repeat(if ops & 64 != 0 { 2000 } else { 3 }));
            }
        }
        4 => {
            if let Ok(q) = Queue::<u32>::from_handle(handle) {
                let j = JoinableQueue::from_queue(q);
                let _ = j.get_timeout(T);
                let _ = j.task_done();
                let _ = j.join_timeout(T);
                std::hint::black_box(j.unfinished());
                if ops & 4 != 0 {
                    let _ = j.put_timeout(&1, T);
                }
            }
        }
        5 => {
            if let Ok(l) = Lock::from_handle(handle) {
                if let Ok(g) = l.try_lock() {
                    drop(g);
                }
                let _ = l.lock_timeout(T).map(drop);
            }
        }
        6 => {
            if let Ok(l) = RLock::from_handle(handle) {
                if let Ok(g) = l.try_lock() {
                    let _ = l.try_lock().map(drop);
                    drop(g);
                }
                let _ = l.lock_timeout(T).map(drop);
            }
        }
        7 => {
            if let Ok(e) = Event::from_handle(handle) {
                std::hint::black_box(e.is_set());
                std::hint::black_box(e.wait_timeout(T));
                if ops & 1 != 0 {
                    e.set();
                    e.clear();
                }
            }
        }
        8 => {
            if let Ok(s) = Semaphore::from_handle(handle) {
                std::hint::black_box(s.value());
                if let Some(g) = s.try_acquire() {
                    drop(g);
                }
                if let Some(g) = s.acquire_timeout(T) {
                    drop(g);
                }
                if ops & 1 != 0 {
                    let _ = s.release();
                }
            }
        }
        9 => {
            if let Ok(s) = BoundedSemaphore::from_handle(handle) {
                std::hint::black_box(s.value());
                if let Some(g) = s.try_acquire() {
                    drop(g);
                }
                if ops & 1 != 0 {
                    let _ = s.release();
                }
            }
        }
        10 => {
            if let Ok(c) = Condition::from_handle(handle) {
                c.notify(1);
                if let Ok(g) = c.try_lock() {
                    let _ = c.wait_timeout(g, T).map(drop);
                }
                c.notify_all();
            }
        }
        11 => {
            if let Ok(b) = Barrier::from_handle(handle) {
                std::hint::black_box((b.parties(), b.n_waiting(), b.broken()));
                let _ = b.wait_timeout(T);
                if ops & 1 != 0 {
                    b.reset();
                }
            }
        }
        12 => {
            if let Ok(v) = Value::<u64>::from_handle(handle) {
                std::hint::black_box(v.get());
                if ops & 1 != 0 {
                    v.set(5);
                }
            }
        }
        13 => {
            if let Ok(a) = Array::<u32>::from_handle(handle) {
                std::hint::black_box((a.len(), a.get(3), a.get(usize::from(ops))));
                std::hint::black_box(a.to_vec());
            }
        }
        _ => {
            if let Ok(m) = Manager::from_handle(handle) {
                manager_ops(&m, ops);
            }
        }
    }
}

fn manager_ops(m: &Manager, ops: u8) {
    let _ = m.size();
    let _ = m.max_size();
    let _ = m.names();
    if let Ok(d) = m.dict::<String, u64>("d") {
        let _ = d.get("bc");
        let _ = d.len();
        let _ = d.items();
        if ops & 1 != 0 {
            let _ = d.insert(&"zz".to_owned(), &1);
            let _ = d.remove("a");
        }
        if ops & 32 != 0 {
            let _ = d.clear();
        }
    }
    if let Ok(l) = m.list::<Vec<u8>>("l") {
        let _ = l.len();
        let _ = l.get(1);
        let _ = l.to_vec();
        if ops & 2 != 0 {
            let _ = l.push(&vec![5; 70]);
            let _ = l.pop();
            let _ = l.set(0, &vec![1]);
        }
    }
    if let Ok(v) = m.value("v", &0u64) {
        let _ = v.get();
        if ops & 4 != 0 {
            let _ = v.set(&8);
        }
    }
    if let Ok(ns) = m.namespace("ns") {
        let _ = ns.get::<String>("x");
        let _ = ns.get::<f64>("y");
        let _ = ns.names();
        if ops & 8 != 0 {
            let _ = ns.set("q", &vec![1u32; 20]);
            let _ = ns.remove("x");
        }
    }
    if let Ok(pd) = m.pod_dict::<u32, u64>("pd") {
        let _ = pd.get(&1);
        let _ = pd.items();
    }
    if let Ok(pl) = m.pod_list::<u16>("pl") {
        let _ = pl.to_vec();
        if ops & 16 != 0 {
            let _ = pl.push(&1);
        }
    }
    if ops & 64 != 0 {
        // A new container: allocation and directory insertion over the patched heap.
        let _ = m.list::<u64>("new").map(|l| l.push(&1));
    }
}

fuzz_target!(|data: &[u8]| {
    let tpl = templates();
    let mut b = Bytes::new(data);
    let kind = b.u8() % KINDS;
    let ops = b.u8();
    let t = &tpl[usize::from(kind)];
    let mut main = t.main.clone();
    let mut blocks: Vec<(String, Vec<u8>)> = t.blocks.clone();
    if ops & 0x80 != 0 {
        let delta = b.u16() as i16 as isize;
        let len = (main.len() as isize + delta).clamp(0, 1 << 20) as usize;
        main.resize(len, 0);
    }
    // Patches over main ++ blocks.
    let total = main.len() + blocks.iter().map(|(_, v)| v.len()).sum::<usize>();
    while !b.is_empty() && total > 0 {
        let off = (b.u16() as usize | (b.u8() as usize) << 16) % total;
        let n = usize::from(b.u8() & 0x1f);
        let bytes = b.take(n);
        for (i, &x) in bytes.iter().enumerate() {
            let mut at = (off + i) % total;
            if at < main.len() {
                main[at] = x;
                continue;
            }
            at -= main.len();
            for (_, v) in blocks.iter_mut() {
                if at < v.len() {
                    v[at] = x;
                    break;
                }
                at -= v.len();
            }
        }
    }
    if matches!(kind, 12..=14) {
        clear_live_lock(&mut main, 128);
    }
    let name = fuzz_name();
    let id = header_region_id(&main);
    let prefix = queue_group_prefix(id);
    write_shm(&name, &main).expect("write the fuzz region");
    for (suffix, bytes) in &blocks {
        write_shm(&format!("{prefix}{suffix}"), bytes).expect("write a fuzz block");
    }
    let handle = HandleMirror::named(id, &name).handle();
    if std::env::var_os("MPROC_FUZZ_DEBUG").is_some() {
        // What a bare attach gives for this input (a check that the harness reaches the objects).
        let r = Region::from_handle(&handle).map(|r| r.len());
        eprintln!(
            "kind {kind} ops {ops:#x}: region {r:?}, {} blocks",
            blocks.len()
        );
        let dbg =
            |what: &str, e: Option<String>| eprintln!("  {what}: {}", e.unwrap_or("ok".into()));
        match kind {
            1 | 15 => {
                if let Ok(q) = Queue::<Vec<u8>>::from_handle(&handle) {
                    for _ in 0..4 {
                        dbg("try_get", q.try_get().err().map(|e| e.to_string()));
                    }
                } else {
                    dbg(
                        "open",
                        Queue::<String>::from_handle(&handle)
                            .err()
                            .map(|e| e.to_string()),
                    );
                }
            }
            3 => match Queue::<String>::from_handle(&handle) {
                Ok(q) => {
                    (0..4).for_each(|_| dbg("try_get", q.try_get().err().map(|e| e.to_string())))
                }
                Err(e) => dbg("open", Some(e.to_string())),
            },
            14 => match Manager::from_handle(&handle) {
                Ok(m) => {
                    dbg("names", m.names().map(|n| format!("ok {n:?}")).ok());
                    let d = m.dict::<String, u64>("d").unwrap();
                    dbg(
                        "items",
                        d.items()
                            .map(|n| format!("ok {n:?}"))
                            .map_err(|e| e.to_string())
                            .err(),
                    );
                }
                Err(e) => dbg("open", Some(e.to_string())),
            },
            _ => {}
        }
    }
    run("attach and operate", || exercise(kind, ops, &handle));
    remove_shm_prefix(&name);
    remove_shm_prefix(&prefix);
});
