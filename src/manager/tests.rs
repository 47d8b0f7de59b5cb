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
    let m = Manager::anonymous(0).unwrap(); // the minimum size
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
