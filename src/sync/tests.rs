//! The three ways a sync object reaches another process, end to end.

use crate::{Event, Lock, Process, Value};

const ROUNDS: u64 = 2000;

fn add_under_lock(lock: &Lock, value: &Value<u64>) {
    for _ in 0..ROUNDS {
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        // A read, then a write: only correct under mutual exclusion.
        let v = value.get();
        value.set(v + 1);
    }
}

fn spawned((lock, value, go): (Lock, Value<u64>, Event)) -> u64 {
    go.wait();
    add_under_lock(&lock, &value);
    ROUNDS
}

#[test]
fn inherited_across_fork() {
    let (lock, value) = (Lock::new().unwrap(), Value::new(0u64).unwrap());
    let (l2, v2) = (lock.clone(), value.clone());
    let mut child = Process::builder().fork(move || add_under_lock(&l2, &v2));
    child.start().unwrap();
    add_under_lock(&lock, &value);
    child.join().unwrap();
    assert_eq!(value.get(), 2 * ROUNDS);
}

#[test]
fn passed_to_a_spawned_process_as_an_argument() {
    let (lock, value, go) = (
        Lock::new().unwrap(),
        Value::new(0u64).unwrap(),
        Event::new().unwrap(),
    );
    let mut child = Process::new(spawned, (lock.clone(), value.clone(), go.clone())).unwrap();
    child.start().unwrap();
    go.set();
    add_under_lock(&lock, &value);
    assert_eq!(child.join().unwrap(), ROUNDS);
    assert_eq!(value.get(), 2 * ROUNDS);
}

#[test]
fn opened_by_name() {
    let name = crate::region::tests::unique("sync");
    let created = Value::create(&name, 5u32).unwrap();
    let opened = Value::<u32>::open(&name).unwrap();
    opened.set(6);
    assert_eq!(created.get(), 6);
    assert!(matches!(
        Value::<u64>::open(&name),
        Err(crate::Error::TypeMismatch { .. })
    ));
}

fn seven(_: ()) -> u32 {
    7
}

/// Found by review: a timeout past the clock's range (`Duration::MAX`) panicked ("overflow when
/// adding duration to instant") in every timed call, even one that had nothing to wait for; it is
/// no deadline.
#[test]
fn the_longest_timeouts_do_not_panic() {
    let max = std::time::Duration::MAX;
    let lock = Lock::new().unwrap();
    drop(lock.lock_timeout(max).unwrap());
    let event = Event::new().unwrap();
    event.set();
    assert!(event.wait_timeout(max));
    let sem = crate::Semaphore::new(1).unwrap();
    assert!(sem.acquire_timeout(max).is_some());
    assert_eq!(
        crate::Barrier::new(1).unwrap().wait_timeout(max).unwrap(),
        0
    );
    let q: crate::Queue<u8> = crate::Queue::new(1).unwrap();
    q.put_timeout(&1, max).unwrap();
    assert_eq!(q.get_timeout(max).unwrap(), 1);
    let c = crate::Condition::new().unwrap();
    drop(c.lock_timeout(max).unwrap());
    let mut p = Process::builder().target(seven, ()).unwrap();
    p.start().unwrap();
    assert_eq!(p.join_timeout(max).unwrap(), 7);
}
