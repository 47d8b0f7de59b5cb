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
    let mut shared = Shared::default();
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

