//! `Pipe`: who holds an end, drops, copies never attached, dead holders, forged connections.

use super::*;

// ---- Pipe: who holds an end (pipe.rs, "Who holds an end") ----

const SHORT: Duration = Duration::from_millis(30);
/// Generous: proves "no hang", never measures speed.
const LONG: Duration = Duration::from_secs(20);

#[test]
fn pipe_drop_of_the_last_handle_closes_after_draining() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    b.send(&1).unwrap();
    b.send(&2).unwrap();
    let b2 = b.clone();
    drop(b);
    // A clone still holds the end.
    a.send(&5).unwrap();
    assert!(matches!(a.recv_timeout(SHORT), Ok(1)));
    assert_eq!(b2.recv().unwrap(), 5);
    drop(b2);
    assert_eq!(a.recv_timeout(LONG).unwrap(), 2, "sent before the drop");
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    assert!(matches!(a.recv(), Err(Error::Closed)));
    assert!(matches!(a.send(&3), Err(Error::Closed)));

    let (r, s) = Pipe::one_way::<u64>().unwrap();
    s.send(&9).unwrap();
    drop(s);
    assert_eq!(r.recv().unwrap(), 9);
    assert!(matches!(r.recv(), Err(Error::Closed)));
}

#[test]
fn pipe_serialized_copy_holds_the_end_until_it_attaches() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let bytes = postcard::to_allocvec(&b).unwrap();
    drop(b);
    assert!(!a.peer_gone_for_test(), "the copy in flight holds the end");
    assert!(matches!(a.recv_timeout(SHORT), Err(Error::Timeout)));
    let b: Connection<u64> = postcard::from_bytes(&bytes).unwrap();
    b.send(&7).unwrap();
    assert_eq!(a.recv().unwrap(), 7);
    assert!(!a.peer_gone_for_test());
    drop(b);
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
}

#[test]
fn pipe_copy_never_attached_holds_the_end_only_for_the_grace() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let bytes = postcard::to_allocvec(&b).unwrap();
    drop(b);
    assert!(!a.peer_gone_for_test());
    a.age_peer_tokens_for_test();
    assert!(a.peer_gone_for_test(), "an expired token holds nothing");
    // A waiting recv notices it and closes the pipe.
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    // Attached too late: a closed connection, not an error.
    let late: Connection<u64> = postcard::from_bytes(&bytes).unwrap();
    assert!(matches!(late.recv_timeout(LONG), Err(Error::Closed)));
    assert!(matches!(late.send(&1), Err(Error::Closed)));
}

/// Found by review: a loop of short `recv_timeout`s (each looked at the other end only 5 ms into its
/// own wait) never noticed a gone peer. The looks add up across calls now.
#[test]
fn pipe_short_recvs_notice_a_gone_peer() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    let _bytes = postcard::to_allocvec(&b).unwrap(); // a copy never attached: a token
    drop(b);
    a.age_peer_tokens_for_test();
    // Bounded, to prove no hang.
    let end = Instant::now() + LONG;
    let r = loop {
        match a.recv_timeout(Duration::from_millis(1)) {
            Err(Error::Timeout) => assert!(Instant::now() < end, "never noticed"),
            r => break r,
        }
    };
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[test]
fn pipe_dead_holders_do_not_hold_and_live_ones_do() {
    let pid = crate::sys::proc::pid();
    let start = crate::sys::proc::start_time(pid).unwrap();
    // A recorded holder with our pid and another start time: a process that died, its pid reused.
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.add_peer_holder_for_test(pid, start + 1);
    b.send(&1).unwrap();
    drop(b);
    assert_eq!(a.recv_timeout(LONG).unwrap(), 1);
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
    // A live one (ourselves, recorded again) keeps the end.
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.add_peer_holder_for_test(pid, start);
    drop(b);
    assert!(!a.peer_gone_for_test());
    assert!(matches!(a.recv_timeout(SHORT), Err(Error::Timeout)));
}

#[test]
fn pipe_full_table_falls_back_without_a_false_close() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    // More copies than slots: the last ones hold the end by the lease.
    let copies: Vec<Vec<u8>> = (0..pipe::SLOTS + 8)
        .map(|_| postcard::to_allocvec(&b).unwrap())
        .collect();
    drop(b);
    // More attachments than slots: some are unrecorded, counted exactly.
    let ends: Vec<Connection<u64>> = copies
        .iter()
        .map(|c| postcard::from_bytes(c).unwrap())
        .collect();
    ends[ends.len() - 1].send(&3).unwrap();
    drop(ends);
    assert!(
        !a.peer_gone_for_test(),
        "the lease of the unrecorded copies"
    );
    assert_eq!(a.recv_timeout(LONG).unwrap(), 3);
    a.age_peer_tokens_for_test();
    assert!(
        a.peer_gone_for_test(),
        "every attachment let go, the lease over"
    );
    assert!(matches!(a.recv_timeout(LONG), Err(Error::Closed)));
}

#[test]
fn pipe_connection_refuses_queues_of_another_pipe() {
    let (a, _b) = Pipe::duplex::<u64>().unwrap();
    let (c, _d) = Pipe::duplex::<u64>().unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Wire {
        rx: Option<RegionHandle>,
        tx: Option<RegionHandle>,
        control: RegionHandle,
        end: u8,
        token: u64,
    }
    let mut w: Wire = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
    let theirs: Wire = postcard::from_bytes(&postcard::to_allocvec(&c).unwrap()).unwrap();
    w.rx = theirs.rx;
    let forged = postcard::to_allocvec(&w).unwrap();
    assert!(postcard::from_bytes::<Connection<u64>>(&forged).is_err());
    w.end = 2;
    let forged = postcard::to_allocvec(&w).unwrap();
    assert!(postcard::from_bytes::<Connection<u64>>(&forged).is_err());
}
