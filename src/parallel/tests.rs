use super::arr::{WireIn, WireOut};
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn square(x: u64) -> u64 {
    x * x
}

fn cube(x: u64) -> u64 {
    x * x * x
}

fn fail_on_3(x: u64) -> u64 {
    assert!(x != 3, "three is right out");
    x
}

/// (sum, whether it arrived by handle)
fn sum_arr(a: Arr<'_, u64>) -> (u64, bool) {
    (a.iter().sum(), a.is_shared())
}

#[test]
fn results_in_order_across_functions() {
    let par = Parallel::new(2).batch_size(2);
    let tasks = (0..20u64).map(|i| delayed(if i % 3 == 0 { cube } else { square }, i));
    let got = par.run(tasks).unwrap();
    let want: Vec<u64> = (0..20u64)
        .map(|i| if i % 3 == 0 { i * i * i } else { i * i })
        .collect();
    assert_eq!(got, want);
    assert!(par
        .run(std::iter::empty::<Delayed<u64, u64>>())
        .unwrap()
        .is_empty());
}

#[test]
fn a_failing_task_fails_run_and_spares_the_others_in_run_each() {
    let par = Parallel::new(2).batch_size(1);
    let err = par.map(fail_on_3, 0..6).unwrap_err();
    assert!(
        matches!(&err, Error::TaskPanicked { task: 3, message, .. } if message.contains("right out")),
        "{err:?}"
    );
    let each = par.run_each((0..6).map(|i| delayed(fail_on_3, i))).unwrap();
    for (i, r) in each.iter().enumerate() {
        assert_eq!(r.is_ok(), i != 3, "task {i}: {r:?}");
    }
}

#[test]
fn small_arrays_travel_inline_and_big_ones_by_handle() {
    let small: Vec<u64> = (0..100).collect();
    let big: Vec<u64> = (0..300_000).collect(); // 2.4 MB
    let par = Parallel::new(2);
    let got = par
        .map(
            sum_arr,
            [Arr::from(&small), Arr::from(&big), Arr::from(big.clone())],
        )
        .unwrap();
    assert_eq!(got[0], (small.iter().sum(), false));
    assert_eq!(got[1], (big.iter().sum(), true));
    assert_eq!(got[2], (big.iter().sum(), true));
    let never = Parallel::new(1).max_nbytes(usize::MAX);
    assert!(!never.map(sum_arr, [Arr::from(&big)]).unwrap()[0].1);
}

#[test]
fn one_copy_per_slice_per_call_and_none_outside_a_call() {
    let big: Vec<u64> = vec![7; 1000];
    let owned = Arr::from(big.clone());
    let mut shared = CallCopies::default();
    let bytes = with_context(100, &mut shared, || {
        postcard::to_allocvec(&(
            Arr::from(&big),
            Arr::from(&big),
            owned.clone(),
            Arr::from(&big[1..]),
            Arr::from(&big[..10]),
        ))
        .unwrap()
    });
    assert_eq!(
        shared.arrays.len(),
        3,
        "big twice, owned, big[1..]; not the 80-byte one"
    );
    assert_eq!(shared.sources.len(), 1, "the owned array is kept alive");
    type FiveWire = (
        WireIn<u64>,
        WireIn<u64>,
        WireIn<u64>,
        WireIn<u64>,
        WireIn<u64>,
    );
    let wire: FiveWire = postcard::from_bytes(&bytes).unwrap();
    match (&wire.0, &wire.1, &wire.2, &wire.3, &wire.4) {
        (
            WireIn::Shared(a),
            WireIn::Shared(b),
            WireIn::Shared(c),
            WireIn::Shared(d),
            WireIn::Inline(e),
        ) => {
            assert_eq!(a, b, "the same slice twice: one copy");
            assert!(a != c && a != d && c != d);
            assert_eq!(e.0, &big[..10]);
        }
        _ => panic!("wrong wire forms"),
    }
    // Review S5 (gap 2): this process made those copies, so it cannot decode views of them.
    type Five<'a> = (
        Arr<'a, u64>,
        Arr<'a, u64>,
        Arr<'a, u64>,
        Arr<'a, u64>,
        Arr<'a, u64>,
    );
    assert!(postcard::from_bytes::<Five<'_>>(&bytes).is_err());
    // No context: always inline.
    let bytes = postcard::to_allocvec(&Arr::from(&big)).unwrap();
    let back: Arr<'_, u64> = postcard::from_bytes(&bytes).unwrap();
    assert!(!back.is_shared());
    assert_eq!(&*back, &big[..]);
}

#[test]
fn bytes_that_are_not_whole_elements_are_a_decode_error() {
    let bytes = postcard::to_allocvec(&Arr::from(vec![1u8, 2, 3])).unwrap();
    assert!(postcard::from_bytes::<Arr<'_, u64>>(&bytes).is_err());
    assert!(postcard::from_bytes::<Arr<'_, u8>>(&bytes).is_ok());
}

#[test]
fn progress_counts_up_to_total() {
    static SEEN: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let par = Parallel::new(2).batch_size(1).on_progress(|done, total| {
        CALLS.fetch_add(1, Ordering::Relaxed);
        SEEN.lock().unwrap().push((done, total));
    });
    par.map(square, 0..7).unwrap();
    let seen = SEEN.lock().unwrap();
    assert_eq!(CALLS.load(Ordering::Relaxed), 8);
    assert_eq!(seen.first(), Some(&(0, 7)));
    assert_eq!(seen.last(), Some(&(7, 7)));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
}

/// Review S5 (gap 2): a result forged by a worker, naming an array of the parent (here: one the
/// parent owns and mutates), is a decode error in the parent, never a view aliasing that array.
#[test]
fn a_forged_view_of_an_own_array_is_refused() {
    let mut mine = crate::SharedArray::from_slice(&[1u64; 512]).unwrap();
    let forged = postcard::to_allocvec(&WireOut::Shared(mine.block_handle())).unwrap();
    assert!(postcard::from_bytes::<Arr<'_, u64>>(&forged).is_err());
    mine[0] = 2; // still the only reference
    assert_eq!(mine[0], 2);
}

/// The lease protocol on a copy that looks like another process's: attaching counts in the word that
/// names this process, dropping the last clone uncounts and frees the word, and a handle with no room
/// for the lease words before it is refused.
#[test]
fn views_hold_a_lease_while_they_live() {
    use crate::heap::tests::{foreign_arena, handle_in};
    let r = foreign_arena(1 << 16);
    let h = handle_in(&r, lease::HEADER as u64, 64);
    let first_word = || {
        // SAFETY: the first 8 bytes of a live, page-aligned 64 KiB region, touched only atomically.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(r.as_ptr().cast::<u64>()) }
            .load(Ordering::Acquire)
    };
    let me = u64::from(std::process::id()) << 32;
    let bytes = postcard::to_allocvec(&WireOut::Shared(h.clone())).unwrap();
    let a: Arr<'_, u64> = postcard::from_bytes(&bytes).unwrap();
    assert!(a.is_shared() && a.len() == 8);
    let b = a.clone();
    let c: Arr<'_, u64> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(first_word(), me | 2);
    drop((a, c));
    assert_eq!(first_word(), me | 1, "b still holds the first view");
    drop(b);
    assert_eq!(first_word(), 0, "the word is free again");
    let no_room = postcard::to_allocvec(&WireOut::Shared(handle_in(&r, 8, 64))).unwrap();
    assert!(postcard::from_bytes::<Arr<'_, u64>>(&no_room).is_err());
}

/// A worker that dies while it holds a view (an abort in the middle of its task).
fn die_holding(a: Arr<'_, u64>) -> u64 {
    if a[0] == 42 {
        std::process::abort();
    }
    a.iter().sum()
}

/// Found by review: a worker that died holding a view never gave its lease back, and its copy stayed
/// quarantined until the `Parallel` was dropped, once per death. Its lease word names a dead pid now,
/// so the next call frees it.
#[test]
fn a_copy_lent_to_a_worker_that_died_is_freed_by_the_next_call() {
    let par = Parallel::new(1);
    let big: Vec<u64> = vec![42; 300_000]; // 2.4 MB: by handle
    for _ in 0..3 {
        assert!(matches!(
            par.map(die_holding, [Arr::from(&big)]),
            Err(Error::WorkerDied { .. })
        ));
    }
    let fine: Vec<u64> = vec![1; 300_000];
    assert_eq!(par.map(die_holding, [Arr::from(&fine)]).unwrap(), [300_000]);
    assert_eq!(
        lease::quarantined(par.id),
        0,
        "copies lent to dead workers are held"
    );
}

/// Holds its view until `n` views of its copy are counted (every task of the call holds one), then
/// dies holding it. Bounded: after a minute it dies anyway.
fn die_when_all_hold((a, n): (Arr<'_, u64>, u64)) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while a.views_counted().unwrap_or(0) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::process::abort();
}

/// Found by review: the lease header had words for 7 holder processes; the views of further
/// processes went to an anonymous overflow count, which a process that dies never decrements and
/// which names nobody whose death could be seen. With more than 7 workers reading one array (one
/// `Arr` passed to every task, the usual case) a crashed worker left its call's copy quarantined
/// until the `Parallel` was dropped, once per crash.
#[test]
fn a_copy_viewed_by_many_workers_that_died_is_freed() {
    const N: usize = 9;
    let par = Parallel::new(N).batch_size(1);
    let big: Vec<u64> = vec![1; 300_000]; // 2.4 MB: by handle, one copy for every task
    let each = par
        .run_each((0..N).map(|_| delayed(die_when_all_hold, (Arr::from(&big), N as u64))))
        .unwrap();
    assert!(
        each.iter()
            .all(|r| matches!(r, Err(Error::WorkerDied { .. }))),
        "{each:?}"
    );
    assert_eq!(
        lease::quarantined(par.id),
        0,
        "the copy read by {N} workers, all dead, is held"
    );
}

static KEPT: Mutex<Option<Arr<'static, u64>>> = Mutex::new(None);

/// A task that keeps its view past its call: what review S5 (gap 3) calls a footgun.
fn keep(a: Arr<'static, u64>) -> u64 {
    let sum = a.iter().sum();
    *KEPT.lock().unwrap() = Some(a);
    sum
}

/// What the kept view reads now (in whichever worker kept it).
fn kept_sum(_: u64) -> Option<u64> {
    KEPT.lock().unwrap().as_ref().map(|a| a.iter().sum())
}

/// Review S5 (gap 3): a task that keeps an `Arr<'static, T>` keeps reading its own call's data; the
/// parent does not reuse (and so does not overwrite) that copy for later calls while the view lives,
/// and frees it once the `Parallel` is dropped.
#[test]
fn a_kept_view_never_sees_reused_memory() {
    let _serial = crate::heap::tests::SERIAL
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let first: Vec<u64> = vec![1; 300_000]; // 2.4 MB: by handle
    let second: Vec<u64> = vec![2; 300_000];
    let par = Parallel::new(1);
    assert_eq!(par.map(keep, [Arr::from(first)]).unwrap(), [300_000]);
    assert_eq!(
        lease::quarantined(par.id),
        1,
        "the kept copy is quarantined"
    );
    let got = par.map(sum_arr, [Arr::from(&second)]).unwrap();
    assert_eq!(got, [(600_000, true)]);
    assert_eq!(lease::quarantined(par.id), 1, "the second copy was freed");
    assert_eq!(
        par.map(kept_sum, [0]).unwrap(),
        [Some(300_000)],
        "the kept view still reads the first call's data"
    );
    let id = par.id;
    drop(par);
    assert_eq!(lease::quarantined(id), 0, "freed once the workers are gone");
}

/// An argument whose `Serialize` makes a temporary array and sends it as an `Arr`: each temporary is
/// freed before the next is made, which may get the same address and length.
struct Scaled {
    src: Vec<u64>,
    k: u64,
    got: Option<Arr<'static, u64>>,
}

impl serde::Serialize for Scaled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let tmp: Vec<u64> = self.src.iter().map(|x| x * self.k).collect();
        Arr::from(&tmp).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Scaled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Scaled {
            src: Vec::new(),
            k: 0,
            got: Some(Arr::deserialize(d)?),
        })
    }
}

fn first_of(s: Scaled) -> u64 {
    s.got.expect("decoded")[0]
}

/// Found by review: copies were shared by (address, length, type) alone, so a temporary at a freed
/// temporary's address got the earlier one's copy, and its task read the wrong data without error.
#[test]
fn a_borrow_at_a_reused_address_gets_its_own_copy() {
    let par = Parallel::new(2);
    let items: Vec<Scaled> = (1..=4)
        .map(|k| Scaled {
            src: vec![1; 300_000], // 2.4 MB: by handle
            k,
            got: None,
        })
        .collect();
    assert_eq!(par.map(first_of, items).unwrap(), [1, 2, 3, 4]);
}

/// Review (parallel/dedupe): a copy made for a *borrowed* slice is shared with a later *owned* array
/// of the same address, length and type without comparing bytes (`Arr::serialize` skips the compare
/// whenever the array being sent is owned). The borrowed source is not kept alive, so its memory can
/// be freed and reused by the owned array's allocation during the same call: the owned array's task
/// then reads the borrowed temporary's data, without any error.
#[test]
fn an_owned_array_at_a_freed_borrows_address_gets_its_own_copy() {
    let mut shared = CallCopies::default();
    let n = 64; // 512 bytes: shared above max_nbytes = 100
    let (h1, h2, p1, p2) = with_context(100, &mut shared, || {
        let later = vec![2u64; n]; // the owned array's data, made before
        let tmp = vec![1u64; n + 2]; // a temporary; its [2..] is where an `Arc<[u64; n]>`'s data sits
        let a1 = Arr::from(&tmp[2..]);
        let p1 = a1.as_ptr() as usize;
        let h1 = postcard::to_allocvec(&a1).unwrap();
        drop(a1);
        drop(tmp);
        let a2 = Arr::from(later); // `Vec -> Arc<[T]>`: a new allocation of tmp's size
        let p2 = a2.as_ptr() as usize;
        let h2 = postcard::to_allocvec(&a2).unwrap();
        (h1, h2, p1, p2)
    });
    let w1: WireIn<u64> = postcard::from_bytes(&h1).unwrap();
    let w2: WireIn<u64> = postcard::from_bytes(&h2).unwrap();
    let (WireIn::Shared(c1), WireIn::Shared(c2)) = (w1, w2) else {
        panic!("both by handle")
    };
    assert!(
        c1 != c2,
        "the owned array [2; {n}] got the copy of the freed borrow [1; {n}] (same address: {})",
        p1 == p2
    );
}

/// Found by review: an `Arr` serialized while the thread's locals are being destroyed (in the `Drop` of
/// a user's thread-local at thread exit, after the serialization context's own destructor ran)
/// panicked in `LocalKey::with`, and a panic in a thread-local's destructor aborts the process. It now
/// travels inline, as with no `Parallel` call around it.
#[test]
fn an_arr_serializes_while_the_threads_locals_are_destroyed() {
    use crate::codec::{Codec, Serde};
    type Sent = std::thread::Result<crate::Result<Vec<u8>>>;
    struct SendsOnDrop(Option<std::sync::mpsc::Sender<Sent>>);
    impl Drop for SendsOnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let r = std::panic::catch_unwind(|| {
                    Serde::with_bytes(&Arr::from(vec![7u64; 3]), |b| b.to_vec())
                });
                let _ = tx.send(r);
            }
        }
    }
    thread_local! {
        static LAST: std::cell::RefCell<SendsOnDrop> =
            const { std::cell::RefCell::new(SendsOnDrop(None)) };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Registered before the context (first touched by the serialization below), so destroyed
        // after it.
        LAST.with(|l| l.borrow_mut().0 = Some(tx));
        Serde::with_bytes(&Arr::from(vec![1u64; 3]), |_| ()).unwrap();
    })
    .join()
    .unwrap();
    let bytes = rx.recv().unwrap().expect("serializing panicked").unwrap();
    let back: Arr<'static, u64> = <Serde as Codec<Arr<'static, u64>>>::decode(&bytes).unwrap();
    assert_eq!((&*back, back.is_shared()), (&[7u64, 7, 7][..], false));
}
