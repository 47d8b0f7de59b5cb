use super::*;
use std::collections::HashMap;

fn mgr() -> Manager {
    Manager::anonymous(4 << 20).unwrap()
}

#[test]
fn dict_matches_a_hashmap() {
    let m = mgr();
    let d = m.dict::<String, u64>("d").unwrap();
    let mut model = HashMap::new();
    for i in 0..3000u64 {
        let k = format!("key{}", i % 1000);
        match i % 5 {
            0..=2 => assert_eq!(d.insert(&k, &i).unwrap(), model.insert(k, i)),
            3 => assert_eq!(d.remove(&k).unwrap(), model.remove(&k)),
            _ => assert_eq!(d.get(&k).unwrap(), model.get(&k).copied()),
        }
    }
    assert_eq!(d.len().unwrap(), model.len());
    let mut items = d.items().unwrap();
    items.sort();
    let mut expected: Vec<_> = model.into_iter().collect();
    expected.sort();
    assert_eq!(items, expected);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());
}

#[test]
fn pod_dict_and_update() {
    let m = mgr();
    let d = m.pod_dict::<u32, f64>("p").unwrap();
    for i in 0..100 {
        d.update(&(i % 10), |v| v.unwrap_or(0.0) + 1.0).unwrap();
    }
    assert_eq!(d.get(&3).unwrap(), Some(10.0));
    assert!(d.contains(&9).unwrap() && !d.contains(&10).unwrap());
}

#[test]
fn list_value_namespace() {
    let m = mgr();
    let l = m.list::<String>("l").unwrap();
    for i in 0..100 {
        l.push(&i.to_string()).unwrap();
    }
    l.set(5, &"five".into()).unwrap();
    assert_eq!(l.get(5).unwrap().as_deref(), Some("five"));
    assert_eq!(l.pop().unwrap().as_deref(), Some("99"));
    assert_eq!(l.len().unwrap(), 99);
    assert!(l.set(500, &"x".into()).is_err());
    l.extend(&["a".to_string(), "b".to_string()]).unwrap();
    assert_eq!(l.to_vec().unwrap().len(), 101);

    let v = m.value("v", &vec![1u8, 2]).unwrap();
    v.update(|mut x| {
        x.push(3);
        x
    })
    .unwrap();
    assert_eq!(v.get().unwrap(), vec![1, 2, 3]);

    let ns = m.namespace("ns").unwrap();
    ns.set("epoch", &7u32).unwrap();
    ns.set("name", &"run-1").unwrap();
    assert_eq!(ns.get::<u32>("epoch").unwrap(), Some(7));
    assert_eq!(ns.get::<String>("name").unwrap().as_deref(), Some("run-1"));
    let mut names = ns.names().unwrap();
    names.sort();
    assert_eq!(names, vec!["epoch", "name"]);
    let mut all = m.names().unwrap();
    all.sort();
    assert_eq!(all, vec!["l", "ns", "v"]);
}

#[test]
fn reopening_checks_the_kind() {
    let m = mgr();
    m.dict::<String, u64>("counts").unwrap();
    assert!(matches!(
        m.list::<f64>("counts"),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        m.dict::<String, u32>("counts"),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(m.dict::<String, u64>("counts").is_ok());
    assert!(matches!(
        m.dict::<u8, u8>(&"x".repeat(41)),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn out_of_memory_is_an_error_and_changes_nothing() {
    // The minimum size, and no growth.
    let m = Manager::builder().max_size(0).anonymous().unwrap();
    assert_eq!(m.size().unwrap(), m.max_size().unwrap());
    let l = m.list::<Vec<u8>>("big").unwrap();
    let mut pushed = 0;
    loop {
        match l.push(&vec![7u8; 1000]) {
            Ok(()) => pushed += 1,
            Err(Error::OutOfMemory { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(l.len().unwrap(), pushed);
    // Freed space is reused.
    l.pop().unwrap();
    l.push(&vec![8u8; 1000]).unwrap();
    assert_eq!(l.len().unwrap(), pushed);
}

#[test]
fn a_panic_inside_a_transaction_is_rolled_back() {
    let m = mgr();
    let d = m.dict::<u32, u32>("d").unwrap();
    d.insert(&1, &1).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        d.update(&1, |_| panic!("half-way")).unwrap();
    }));
    assert!(r.is_err());
    // A transaction that did change words and then failed is undone too.
    let obj = m
        .object(
            "d",
            std::any::type_name::<Dict<u32, u32, Serde>>(),
            4,
            |_, _| Ok(()),
        )
        .unwrap();
    let r = m.heap.transact(|tx| {
        tx.set(obj, 999)?; // the dict's len
        Err::<(), _>(Error::Timeout)
    });
    assert!(r.is_err());
    assert_eq!(d.len().unwrap(), 1);
    assert_eq!(d.get(&1).unwrap(), Some(1));
}

#[test]
fn named_objects_through_the_directory() {
    let m = mgr();
    let other = Manager::from_handle(&m.handle()).unwrap();
    let lock = m.lock("l").unwrap();
    let held = lock.lock().unwrap();
    let same = other.lock("l").unwrap();
    assert!(same.try_lock().is_err(), "both names must reach one lock");
    drop(held);
    assert!(same.try_lock().is_ok());

    let q = m.queue::<String, Serde>("q", 4, 64).unwrap();
    q.put(&"hi".to_string()).unwrap();
    assert_eq!(
        other
            .queue::<String, Serde>("q", 4, 64)
            .unwrap()
            .get()
            .unwrap(),
        "hi"
    );

    let a = m.array::<u32>("a", 3).unwrap();
    a.set(1, 7);
    assert_eq!(other.array::<u32>("a", 99).unwrap().to_vec(), vec![0, 7, 0]);

    other.event("e").unwrap().set();
    assert!(m.event("e").unwrap().is_set());
    assert_eq!(m.semaphore("s", 2).unwrap().value(), 2);
    assert!(matches!(m.event("l"), Err(Error::TypeMismatch { .. })));
    assert!(matches!(
        m.dict::<u8, u8>("q"),
        Err(Error::TypeMismatch { .. })
    ));
}

/// Review R4: a dict whose every slot points at one big entry made `items` copy that entry once per
/// slot (heap² bytes for a full table); the copies are now bounded by the heap's size and such a dict
/// is `Corrupted`.
#[test]
fn items_of_a_damaged_dict_are_bounded() {
    let m = Manager::anonymous(1 << 20).unwrap();
    let d = m.dict::<String, Vec<u8>>("d").unwrap();
    d.insert(&"big".to_string(), &vec![7; 200_000]).unwrap();
    for i in 0..20 {
        d.insert(&format!("k{i}"), &vec![]).unwrap();
    }
    let obj = d.offset();
    // Header words: len, cap, table, tombstones. Point every slot at the big entry.
    m.heap
        .transact(|tx| {
            let (cap, table) = (tx.get(obj + 8)?, tx.get(obj + 16)?);
            let mut big = None;
            for i in 0..cap {
                let e = tx.get(heap::at(table, i, 16)? + 8)?;
                if tx.get(heap::at(table, i, 16)?)? > 1 && tx.get(e)? > 100_000 {
                    big = Some(e);
                }
            }
            let big = big.expect("the big entry");
            for i in 0..cap {
                tx.set(heap::at(table, i, 16)?, 6)?;
                tx.set(heap::at(table, i, 16)? + 8, big)?;
            }
            Ok(())
        })
        .unwrap();
    assert!(matches!(d.items(), Err(Error::Corrupted(_))));
    assert!(matches!(d.keys(), Err(Error::Corrupted(_))));
    assert!(matches!(d.values(), Err(Error::Corrupted(_))));
}

/// Review R4: a blob length is checked against its own block, not only against the end of the heap.
#[test]
fn a_blob_longer_than_its_block_is_corrupted() {
    let m = Manager::anonymous(1 << 20).unwrap();
    let l = m.list::<String>("l").unwrap();
    l.push(&"short".to_string()).unwrap();
    let obj = l.offset();
    m.heap
        .transact(|tx| {
            let blob = tx.get(heap::at(tx.get(obj + 16)?, 0, 8)?)?;
            tx.set(blob, 1000) // the block holds 32 bytes
        })
        .unwrap();
    assert!(matches!(l.get(0), Err(Error::Corrupted(_))));
    assert!(matches!(l.to_vec(), Err(Error::Corrupted(_))));
}

/// Review R4: a list whose items all point at one big element, with a length as large as its
/// capacity word claims, is `Corrupted` after copying at most the heap's size.
#[test]
fn to_vec_of_a_damaged_list_is_bounded() {
    let m = Manager::anonymous(1 << 20).unwrap();
    let l = m.list::<Vec<u8>>("l").unwrap();
    l.push(&vec![1; 200_000]).unwrap();
    for _ in 0..15 {
        l.push(&vec![]).unwrap();
    }
    let obj = l.offset();
    // Header words: len, cap, items.
    m.heap
        .transact(|tx| {
            let (cap, items) = (tx.get(obj + 8)?, tx.get(obj + 16)?);
            let big = tx.get(heap::at(items, 0, 8)?)?;
            for i in 0..cap {
                tx.set(heap::at(items, i, 8)?, big)?;
            }
            tx.set(obj, cap)?;
            // A length beyond the heap is refused before any copy.
            Ok(())
        })
        .unwrap();
    assert!(matches!(l.to_vec(), Err(Error::Corrupted(_))));
    m.heap
        .transact(|tx| {
            tx.set(obj + 8, u64::MAX / 8)?;
            tx.set(obj, u64::MAX / 8)
        })
        .unwrap();
    assert!(matches!(l.to_vec(), Err(Error::Corrupted(_))));
}

/// The heap grows past its initial size, and a second attachment (its own mappings, as another process
/// would have) maps the growth lazily at its next transaction.
#[test]
fn the_heap_grows_and_other_handles_follow() {
    let m = Manager::anonymous(0).unwrap();
    let first = m.size().unwrap();
    let other = Manager::from_handle(&m.handle()).unwrap();
    let d = m.pod_dict::<u64, u64>("d").unwrap();
    let seen = other.pod_dict::<u64, u64>("d").unwrap();
    for i in 0..20_000u64 {
        d.insert(&i, &(i * 3)).unwrap();
        if i % 5000 == 0 {
            assert_eq!(seen.get(&i).unwrap(), Some(i * 3));
        }
    }
    assert!(
        m.size().unwrap() > 4 * first,
        "{} after {first}",
        m.size().unwrap()
    );
    assert_eq!(other.size().unwrap(), m.size().unwrap());
    assert_eq!(seen.len().unwrap(), 20_000);
    assert_eq!(seen.get(&19_999).unwrap(), Some(59_997));
    // A large value in one go: one grow to at least its size.
    let l = other.list::<Vec<u8>>("big").unwrap();
    l.push(&vec![5u8; 3 << 20]).unwrap();
    assert_eq!(
        m.list::<Vec<u8>>("big")
            .unwrap()
            .get(0)
            .unwrap()
            .unwrap()
            .len(),
        3 << 20
    );
}

#[test]
fn the_limit_is_a_hard_cap() {
    let m = Manager::builder()
        .initial_size(64 << 10)
        .max_size(1 << 20)
        .anonymous()
        .unwrap();
    assert_eq!(m.max_size().unwrap(), 1 << 20);
    let l = m.list::<Vec<u8>>("l").unwrap();
    let mut n = 0;
    let err = loop {
        match l.push(&vec![1u8; 10_000]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
    assert!(n > 40, "only {n} pushes of 10 KB fit in 1 MiB");
    assert!(m.size().unwrap() <= 1 << 20);
    assert_eq!(l.len().unwrap(), n);
}

/// Garbage in the size words: an end beyond the file is `Corrupted` (every transaction says so, none
/// maps it); a limit below the end stops growth with `OutOfMemory`.
#[test]
fn garbage_in_the_size_words_is_a_typed_error() {
    let m = Manager::anonymous(0).unwrap();
    let d = m.pod_dict::<u64, u64>("d").unwrap();
    d.insert(&1, &1).unwrap();
    let (end, _) = m.heap.size().unwrap();
    m.heap.transact(|tx| tx.set(heap::MAX_END, 0)).unwrap();
    let r = (0..100_000u64).try_for_each(|i| d.insert(&i, &i).map(drop));
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    assert_eq!(m.size().unwrap() as u64, end, "no growth past a zero limit");
    // Every transaction checks the end word against the file before mapping anything.
    let other = Manager::from_handle(&m.handle()).unwrap();
    for bad in [end + (1 << 30), u64::MAX, heap::HEAP_LIMIT + 4096] {
        // Written outside any transaction, as a hostile peer would.
        m.heap
            .region()
            .payload_ref::<std::sync::atomic::AtomicU64>(32)
            .unwrap()
            .store(bad, std::sync::atomic::Ordering::Release);
        assert!(
            matches!(d.get(&1), Err(Error::Corrupted(_))),
            "end {bad:#x}"
        );
        assert!(
            matches!(other.names(), Err(Error::Corrupted(_))),
            "end {bad:#x}"
        );
    }
    m.heap
        .region()
        .payload_ref::<std::sync::atomic::AtomicU64>(32)
        .unwrap()
        .store(end, std::sync::atomic::Ordering::Release);
    assert_eq!(d.get(&1).unwrap(), Some(1));
}

#[test]
fn entry_is_a_read_modify_write() {
    let m = mgr();
    let d = m.dict::<String, u64>("d").unwrap();
    assert_eq!(
        d.entry("a").and_modify(|n| *n += 1).or_insert(1).unwrap(),
        1
    );
    assert_eq!(
        d.entry("a")
            .and_modify(|n| *n += 1)
            .and_modify(|n| *n *= 10)
            .or_insert(1)
            .unwrap(),
        20
    );
    assert_eq!(d.entry("b").or_default().unwrap(), 0);
    assert_eq!(
        d.entry("a").or_insert_with(|| panic!("present")).unwrap(),
        20
    );
    assert_eq!(d.len().unwrap(), 2);
    // A panic in the closure changes nothing.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = d.entry("a").and_modify(|_| panic!("half-way")).or_insert(0);
    }));
    assert!(r.is_err());
    assert_eq!(d.get("a").unwrap(), Some(20));
}

/// Containers serialize as (manager handle, name) and re-open by name, checking the kind; nothing is
/// created on the receiving side.
#[test]
fn containers_travel_as_handles() {
    let m = mgr();
    let d = m.dict::<String, u64>("d").unwrap();
    d.insert(&"x".to_string(), &1).unwrap();
    let l = m.pod_list::<u32>("l").unwrap();
    let v = m.value("v", &1.5f64).unwrap();
    let ns = m.namespace("ns").unwrap();
    ns.set("k", &"v").unwrap();

    let d2: Dict<String, u64> = postcard::from_bytes(&postcard::to_allocvec(&d).unwrap()).unwrap();
    d2.insert(&"y".to_string(), &2).unwrap();
    assert_eq!(d.len().unwrap(), 2);
    let l2: List<u32, Raw> = postcard::from_bytes(&postcard::to_allocvec(&l).unwrap()).unwrap();
    l2.push(&9).unwrap();
    assert_eq!(l.to_vec().unwrap(), [9]);
    let v2: ManagedValue<f64> = postcard::from_bytes(&postcard::to_allocvec(&v).unwrap()).unwrap();
    v2.set(&2.5).unwrap();
    assert_eq!(v.get().unwrap(), 2.5);
    let ns2: Namespace = postcard::from_bytes(&postcard::to_allocvec(&ns).unwrap()).unwrap();
    assert_eq!(ns2.get::<String>("k").unwrap().as_deref(), Some("v"));

    // The kind must match, and the name must exist.
    let bytes = postcard::to_allocvec(&d).unwrap();
    assert!(postcard::from_bytes::<Dict<String, u32>>(&bytes).is_err());
    assert!(postcard::from_bytes::<Namespace>(&bytes).is_err());
    assert!(postcard::from_bytes::<List<String>>(&postcard::to_allocvec(&ns).unwrap()).is_err());
    let gone = m.dict::<String, u64>("gone").unwrap();
    let forged = postcard::to_allocvec(&gone).unwrap();
    let other = Manager::anonymous(0).unwrap();
    let elsewhere = postcard::to_allocvec(&other.dict::<String, u64>("gone").unwrap()).unwrap();
    drop(other);
    assert!(
        postcard::from_bytes::<Dict<String, u64>>(&elsewhere).is_err(),
        "manager gone"
    );
    assert!(postcard::from_bytes::<Dict<String, u64>>(&forged).is_ok());
    assert!(matches!(
        m.existing("nope", "x"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(m.names().unwrap().len(), 5, "decoding created nothing");
}

/// The state a grower killed part-way leaves, made deterministically: the file extended and the new end
/// journaled, but never committed (a panic leaves the journal as a death does). The next transaction
/// rolls the end back; the longer file is harmless, and the next grow reuses its pages.
#[test]
fn a_grow_cut_short_is_rolled_back() {
    let m = Manager::anonymous(0).unwrap();
    let l = m.list::<u64>("l").unwrap();
    l.push(&1).unwrap();
    let (end, _) = m.heap.size().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.heap.transact(|tx| {
            tx.alloc(end)?; // more than the heap holds: it grows
            panic!("killed in the middle of a grow");
            #[allow(unreachable_code)]
            Ok(())
        })
    }));
    assert!(r.is_err());
    let file = m.heap.region().file().metadata().unwrap().len();
    let other = Manager::from_handle(&m.handle()).unwrap();
    assert_eq!(other.heap.size().unwrap().0, end, "the end is rolled back");
    assert!(file > end + 128, "the file was extended ({file} bytes)");
    assert_eq!(l.to_vec().unwrap(), [1]);
    // Growing again uses the pages already there, and everything is still whole.
    let big = other.list::<Vec<u8>>("big").unwrap();
    big.push(&vec![3u8; end as usize]).unwrap();
    assert!(m.size().unwrap() as u64 > end);
    assert_eq!(l.to_vec().unwrap(), [1]);
    assert_eq!(big.get(0).unwrap().map(|b| b.len()), Some(end as usize));
}

/// Found by review: a closure run under the manager's lock (`update`) that called the manager took the
/// lock over as garbage and released it on its way out, so two threads' updates interleaved and
/// corrupted the heap for good. The inner call is now refused, and nothing is corrupted.
#[test]
fn a_manager_call_inside_an_update_closure_is_refused_and_corrupts_nothing() {
    let m = mgr();
    let d = m.pod_dict::<u32, u64>("counter").unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..500 {
                    d.update(&0, |v| {
                        assert!(matches!(d.len(), Err(Error::ManagerReentered)));
                        // Another handle of the same heap is the same manager.
                        let again = Manager::from_handle(&m.handle()).unwrap();
                        assert!(matches!(again.names(), Err(Error::ManagerReentered)));
                        v.unwrap_or(0) + 1
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(d.get(&0).unwrap(), Some(1000));
    assert_eq!(d.items().unwrap(), vec![(0, 1000)]);
    // Another manager's calls inside the closure are fine.
    let other = mgr();
    let o = other.pod_dict::<u32, u64>("o").unwrap();
    d.update(&0, |v| {
        o.insert(&1, &2).unwrap();
        v.unwrap_or(0) + 1
    })
    .unwrap();
    assert_eq!(
        (d.get(&0).unwrap(), o.get(&1).unwrap()),
        (Some(1001), Some(2))
    );
}

/// Found by review: the thread's record of the transactions it is inside was a `Vec` in a
/// thread-local, destroyed at thread exit before a user's thread-local registered earlier. A manager
/// operation from that user's `Drop` (a per-thread tally flushed at exit) panicked in
/// `LocalKey::with`, and a panic in a thread-local's destructor aborts the process. The thread exits
/// here once with a call made first (the record exists, and is destroyed first), the tally's `Drop`
/// adding to the manager; the add is then there.
#[test]
fn a_manager_call_from_a_thread_locals_drop_at_thread_exit_works() {
    struct FlushOnExit(
        Option<(
            Manager,
            std::sync::mpsc::Sender<std::thread::Result<Result<()>>>,
        )>,
    );
    impl Drop for FlushOnExit {
        fn drop(&mut self) {
            if let Some((m, tx)) = self.0.take() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.pod_dict::<u32, u64>("exits")?
                        .update(&0, |v| v.unwrap_or(0) + 1)
                }));
                let _ = tx.send(r);
            }
        }
    }
    thread_local! {
        static TALLY: std::cell::RefCell<FlushOnExit> =
            const { std::cell::RefCell::new(FlushOnExit(None)) };
    }
    let m = mgr();
    let (tx, rx) = std::sync::mpsc::channel();
    let theirs = m.clone();
    std::thread::spawn(move || {
        // Registered before the manager's own thread-locals, so destroyed after them.
        TALLY.with(|t| t.borrow_mut().0 = Some((theirs.clone(), tx)));
        theirs
            .pod_dict::<u32, u64>("exits")
            .unwrap()
            .insert(&0, &10)
            .unwrap();
    })
    .join()
    .unwrap();
    let flushed = rx.recv().unwrap();
    flushed.expect("the manager call panicked").unwrap();
    assert_eq!(
        m.pod_dict::<u32, u64>("exits").unwrap().get(&0).unwrap(),
        Some(11)
    );
}

/// Transactions of many managers nested in one another's closures are fine up to the documented
/// depth, and the next one is refused with a typed error, not a panic or a corrupted heap.
#[test]
fn nested_transactions_of_distinct_managers_stop_at_the_documented_depth() {
    fn nest(dicts: &[crate::Dict<u32, u64, crate::codec::Raw>], depth: &mut usize) -> Result<()> {
        let Some((d, rest)) = dicts.split_first() else {
            return Ok(());
        };
        let mut inner = Ok(());
        d.update(&0, |v| {
            *depth += 1;
            inner = nest(rest, depth);
            v.unwrap_or(0) + 1
        })?;
        inner
    }
    let managers: Vec<Manager> = (0..33).map(|_| mgr()).collect();
    let dicts: Vec<_> = managers
        .iter()
        .map(|m| m.pod_dict::<u32, u64>("d").unwrap())
        .collect();
    let mut depth = 0;
    assert!(matches!(nest(&dicts[..32], &mut depth), Ok(())));
    assert_eq!(depth, 32);
    let mut depth = 0;
    assert!(matches!(
        nest(&dicts, &mut depth),
        Err(Error::ManagerReentered)
    ));
    assert_eq!(depth, 32, "the 33rd transaction never started");
    // The 32 that ran committed twice; the refused one changed nothing; no lock is left held.
    for d in &dicts[..32] {
        assert_eq!(d.get(&0).unwrap(), Some(2));
    }
    assert_eq!(dicts[32].get(&0).unwrap(), None);
}

/// Found by review: an extend of two thousand values after as many pops (so every block is reused,
/// one journal entry each) failed as `Corrupted`, on a healthy heap. It is a typed error that says to
/// split the call, nothing is changed, and extending in parts works.
#[test]
fn an_extend_too_large_for_one_transaction_is_a_typed_error_and_changes_nothing() {
    let m = mgr();
    let l = m.pod_list::<u64>("l").unwrap();
    let v: Vec<u64> = (0..2000).collect();
    l.extend(&v).unwrap();
    for _ in 0..2000 {
        l.pop().unwrap();
    }
    assert!(matches!(
        l.extend(&v),
        Err(Error::ManagerTransactionTooLarge { limit: 1024 })
    ));
    assert_eq!(l.len().unwrap(), 0, "all or nothing");
    for part in v.chunks(500) {
        l.extend(part).unwrap();
    }
    assert_eq!(l.len().unwrap(), 2000);
    assert_eq!(l.get(1999).unwrap(), Some(1999));
}

/// Writes `holders` as the directory entry of the lock `name` (what another process, or garbage, left).
fn list_lock_holders(m: &Manager, name: &str, holders: &[RegionHandle]) {
    let kind = std::any::type_name::<crate::sync::Lock>();
    let blob = postcard::to_allocvec(holders).unwrap();
    assert!(m.swap_blob(name, kind, None, &blob).unwrap());
}

fn lock_holders(m: &Manager, name: &str) -> Vec<RegionHandle> {
    let kind = std::any::type_name::<crate::sync::Lock>();
    objects::decode_holders(&m.lookup_blob(name, kind).unwrap().unwrap()).unwrap()
}

#[test]
fn a_named_object_is_attached_through_its_first_live_holder() {
    let m = mgr();
    let live = crate::sync::Lock::new().unwrap();
    let gone = crate::sync::Lock::new().unwrap().handle(); // its only holder dropped it at once
    list_lock_holders(&m, "l", &[gone.clone(), live.handle()]);
    let got = m.lock("l").unwrap();
    let held = live.lock().unwrap();
    assert!(
        got.try_lock().is_err(),
        "the live holder's lock, not a new one"
    );
    drop(held);
    let holders = lock_holders(&m, "l");
    assert_eq!(
        holders,
        [live.handle(), got.handle()],
        "the gone holder is dropped, we are added"
    );
}

#[test]
fn a_named_object_whose_holders_are_all_gone_is_made_anew() {
    let m = mgr();
    let gone = [
        crate::sync::Lock::new().unwrap().handle(),
        crate::sync::Lock::new().unwrap().handle(),
    ];
    list_lock_holders(&m, "l", &gone);
    let new = m.lock("l").unwrap();
    assert_eq!(lock_holders(&m, "l"), [new.handle()]);
    // Another manager of the same heap (another process's view) attaches to it, not to a third lock.
    let other = Manager::from_handle(&m.handle()).unwrap();
    let same = other.lock("l").unwrap();
    let held = new.lock().unwrap();
    assert!(same.try_lock().is_err());
    drop(held);
}

#[test]
fn a_full_holder_list_makes_room_from_the_dead_or_refuses() {
    let m = mgr();
    let live = crate::sync::Lock::new().unwrap();
    let gone = crate::sync::Lock::new().unwrap().handle();
    // Dead holders after the first live one: pruned when the list is full, and we are listed.
    let mut list = vec![live.handle()];
    list.resize(objects::HOLDERS_MAX, gone);
    list_lock_holders(&m, "l", &list);
    let got = m.lock("l").unwrap();
    let held = got.lock().unwrap();
    assert!(live.try_lock().is_err(), "the live holder's lock");
    drop(held);
    assert_eq!(lock_holders(&m, "l"), [live.handle(), got.handle()]);
    // A list full of live holders: an error, not an unlisted attachment (which could outlive every
    // listed holder, and the name would then get a second, different lock; found by review).
    let full = vec![live.handle(); objects::HOLDERS_MAX];
    list_lock_holders(&m, "f", &full);
    assert!(matches!(m.lock("f"), Err(Error::OutOfMemory { .. })));
    assert_eq!(lock_holders(&m, "f"), full);
}

#[test]
fn a_named_file_in_a_holder_list_is_never_mapped() {
    let m = mgr();
    let name = format!("mgr-forged-holder-{}", std::process::id());
    let forged = crate::sync::Lock::create(&name).unwrap();
    let live = crate::sync::Lock::new().unwrap();
    // A peer's forgery: first a named lock it could truncate under our mapping, then the real one.
    list_lock_holders(&m, "l", &[forged.handle(), live.handle()]);
    let got = m.lock("l").unwrap();
    let held = live.lock().unwrap();
    assert!(
        got.try_lock().is_err(),
        "attached through the real holder, not the named file"
    );
    drop(held);
}

#[test]
fn garbage_holder_lists_are_typed_errors() {
    let m = mgr();
    let kind = std::any::type_name::<crate::sync::Lock>();
    assert!(m.swap_blob("g", kind, None, &[0xff; 9]).unwrap());
    assert!(
        matches!(m.lock("g"), Err(Error::Decode { .. })),
        "{:?}",
        m.lock("g")
    );
    let live = crate::sync::Lock::new().unwrap();
    list_lock_holders(&m, "many", &vec![live.handle(); objects::HOLDERS_MAX + 1]);
    assert!(matches!(m.lock("many"), Err(Error::Corrupted(_))));
}

/// Found by review: a block freed by a transaction went on its free list at once, so a later
/// allocation of the same transaction could take it and write it unjournaled; undoing the transaction
/// made the old block reachable again, holding the new bytes. Here a push grows the list's item array
/// (freeing the old one, of the same class as the first element's blob), then the second element
/// does not fit: the list must be as it was.
#[test]
fn an_undone_transaction_leaves_the_blocks_it_freed_as_they_were() {
    let m = Manager::builder()
        .initial_size(1 << 20)
        .max_size(1 << 20)
        .anonymous()
        .unwrap();
    let l = m.list::<Vec<u8>>("l").unwrap();
    for i in 0..8u8 {
        l.push(&vec![i; 60]).unwrap();
    }
    let before = l.to_vec().unwrap();
    let r = l.extend(&[vec![0xAB; 60], vec![0; 2 << 20]]);
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    assert_eq!(l.to_vec().unwrap(), before);
}

/// Found by review: a list's capacity word, garbage, sized the array an honest push grew to (the heap
/// grew to hold twice it) before anything checked that the array it described was in the heap.
#[test]
fn a_garbage_capacity_does_not_size_a_push() {
    let m = Manager::anonymous(1 << 20).unwrap();
    let l = m.list::<u64>("l").unwrap();
    l.push(&1).unwrap();
    let obj = l.offset();
    m.heap
        .transact(|tx| {
            tx.set(obj + 8, 1 << 23)?; // cap
            tx.set(obj, 1 << 23) // len
        })
        .unwrap();
    let (end_before, _) = m.heap.size().unwrap();
    assert!(matches!(l.push(&2), Err(Error::Corrupted(_))));
    assert_eq!(m.heap.size().unwrap().0, end_before, "the heap grew");
}

/// Found by review: `Dict::get` (and `entry`) decode the value where the heap holds it, and that
/// range was checked against the mapping only, not against the entry's block nor for holes, as every
/// copy out of the heap is. A peer grows the heap's file sparse (for free: no page is allocated),
/// moves the end word there and points an entry at a blob claiming a string as long as the holes:
/// `get` built that string, an allocation sized by the peer's words (here 32 MiB; with the file grown
/// to the 1 TiB limit, an abort or the OOM killer).
#[test]
fn get_refuses_a_value_over_holes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const END_WORD: usize = 32;
    let m = Manager::anonymous(1 << 20).unwrap();
    let d = m.dict::<String, String>("d").unwrap();
    d.insert(&"k".to_string(), &"v".to_string()).unwrap();
    // The peer grows the file by 128 MiB, sparse, and says so in the end word.
    let end = m.heap.size().unwrap().0 + (128 << 20);
    let file = m.heap.region().file();
    file.set_len(end + crate::region::PAYLOAD_OFFSET as u64)
        .unwrap();
    m.heap
        .region()
        .payload_ref::<AtomicU64>(END_WORD)
        .unwrap()
        .store(end, Ordering::Release);
    let obj = d.offset();
    let len = 1u64 << 25;
    m.heap
        .transact(|tx| {
            // A block of 64 MiB (class 26) in the holes; its blob: length, key length, the key
            // "k" and a string of `len` bytes (postcard: LEB128 length, then the bytes: holes).
            let block = 64 << 20;
            let p = block + 8;
            tx.set(block, 26)?;
            tx.set(p, 8 + 2 + 4 + len)?;
            tx.set(p + 8, 2)?;
            tx.set(
                p + 16,
                u64::from_le_bytes([1, b'k', 0x80, 0x80, 0x80, 0x10, 0, 0]),
            )?;
            let (cap, table) = (tx.get(obj + 8)?, tx.get(obj + 16)?);
            for i in 0..cap {
                if tx.get(heap::at(table, i, 16)?)? > 1 {
                    tx.set(heap::at(table, i, 16)? + 8, p)?;
                }
            }
            Ok(())
        })
        .unwrap();
    let r = d.get("k");
    assert!(
        matches!(r, Err(Error::Corrupted(_))),
        "{:?}",
        r.map(|v| v.map(|s| s.len()))
    );
    let r = d.entry("k").or_default();
    assert!(
        matches!(r, Err(Error::Corrupted(_))),
        "{:?}",
        r.map(|s| s.len())
    );
}

/// Found by review: the loops over a dict's table (`items`, the rebuild of an insert, the freeing
/// of a cleared table) were bounded by the mapping, which a peer makes as large as it likes for
/// free by growing the heap's file sparse. Reading a hole of a shared mapping allocates its page,
/// so a forged table over the holes made this process fault in (and be charged for) as much memory
/// as the forged words said: here 64 MiB, up to the 1 TiB limit. A table must be memory first.
#[test]
fn a_table_over_holes_is_not_faulted_in() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    const END_WORD: usize = 32;
    let m = Manager::anonymous(1 << 20).unwrap();
    let d = m.pod_dict::<u64, u64>("d").unwrap();
    d.insert(&1, &1).unwrap();
    let old_end = m.heap.size().unwrap().0;
    let holes = 64u64 << 20;
    let file = m.heap.region().file();
    file.set_len(old_end + holes + crate::region::PAYLOAD_OFFSET as u64)
        .unwrap();
    m.heap
        .region()
        .payload_ref::<AtomicU64>(END_WORD)
        .unwrap()
        .store(old_end + holes, Ordering::Release);
    let obj = d.offset();
    m.heap
        .transact(|tx| {
            // len, cap, table, tombstones: a table of the holes, and a count that asks for a rebuild.
            tx.set(obj, 1)?;
            tx.set(obj + 8, holes / 16)?;
            tx.set(obj + 16, old_end)?;
            tx.set(obj + 24, holes / 16)
        })
        .unwrap();
    let allocated = || file.metadata().unwrap().blocks() * 512;
    let before = allocated();
    let r = d.items();
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
    let r = d.insert(&2, &2);
    assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
    let grew = allocated() - before;
    assert!(grew < 8 << 20, "{} MiB faulted in", grew >> 20);
}

/// Found by review: `Namespace::set` and `remove` read the value they replaced or removed, as the
/// dict's `Vec<u8>`, after committing; a field holding bytes that do not decode so (another process's
/// garbage, or a dict of another type under the namespace) made them report an error for a change
/// that had happened. `Dict::clear` likewise returned the error of its second transaction.
#[test]
fn namespace_changes_report_errors_only_when_nothing_changed() {
    let m = Manager::anonymous(1 << 20).unwrap();
    let ns = m.namespace("ns").unwrap();
    // A u32 of 300 stored where the namespace keeps a Vec<u8>: varint 300 claims 300 bytes it lacks.
    let garbage = ns.fields().retyped_for_test::<u32>();
    garbage.insert(&"a".to_owned(), &300).unwrap();
    garbage.insert(&"b".to_owned(), &300).unwrap();
    assert!(ns.get::<u32>("a").is_err());
    ns.set("a", &5u32).unwrap();
    assert_eq!(ns.get::<u32>("a").unwrap(), Some(5));
    assert!(ns.remove("b").unwrap());
    assert!(!ns.remove("b").unwrap());
    assert_eq!(ns.names().unwrap(), ["a"]);
    // A field of another type: `get` refuses bytes left over, as every decode does.
    ns.set("c", &(1u32, 2u32)).unwrap();
    assert!(ns.get::<u32>("c").is_err());
    assert_eq!(ns.get::<(u32, u32)>("c").unwrap(), Some((1, 2)));
}

/// Found by review: the holders of a named object decoded with bytes left over after the list (what
/// another process, or garbage, wrote), where every other message must be its value whole.
#[test]
fn holders_with_bytes_left_over_are_a_decode_error() {
    let m = mgr();
    let live = crate::sync::Lock::new().unwrap();
    let mut blob = postcard::to_allocvec(&vec![live.handle()]).unwrap();
    blob.push(0);
    let kind = std::any::type_name::<crate::sync::Lock>();
    assert!(m.swap_blob("l", kind, None, &blob).unwrap());
    let e = m.lock("l").unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e}");
    // The same list, whole, attaches.
    blob.pop();
    assert!(objects::decode_holders(&blob).is_ok());
}

/// Found by review: a container stored as a value of a dict of the same manager (nested containers,
/// as Python's managers allow) decodes by looking its name up, a transaction of its own. `Dict::get`
/// decoded values in place, under the heap's lock, so that lookup was refused and `get` failed with a
/// `Decode` error for every such value, while `items`, `List::get` and `ManagedValue::get` (which
/// decode after their transaction) returned it.
#[test]
fn a_container_stored_in_a_dict_of_its_manager_is_read_back() {
    let m = mgr();
    let inner = m.dict::<String, u64>("inner").unwrap();
    inner.insert(&"x".to_string(), &1).unwrap();
    let outer = m.dict::<String, Dict<String, u64>>("outer").unwrap();
    outer.insert(&"a".to_string(), &inner).unwrap();
    let got = outer.get("a");
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
    assert_eq!(got.unwrap().unwrap().get("x").unwrap(), Some(1));
    assert_eq!(outer.get("b").unwrap().map(|d| d.name().to_owned()), None);
    // A value that is not a `V` is still a `Decode` error.
    let wrong = m.dict::<String, String>("wrong").unwrap();
    wrong.insert(&"a".to_string(), &"x".repeat(3)).unwrap();
    let r = wrong.retyped_for_test::<Dict<String, u64>>().get("a");
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
}
