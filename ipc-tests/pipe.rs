//! `Pipe` ends whose other end is gone (DESIGN.md, invariant 4): like Python's `Connection.recv()`,
//! which raises `EOFError` once the other end is closed, a `recv` whose peer dropped its last handle or
//! died drains what was sent and then returns `Err(Closed)`, and a `send` to a dead receiver returns
//! `Err(Closed)` instead of blocking on a full buffer.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use mproc::codec::Serde;
use mproc::{Connection, Error, Event, Pipe, Process};

use crate::common::{self, bounded, fields, handle_from_hex, handle_to_hex, say, Kid, Role};
use crate::queue::BOUND;

pub const ROLES: &[Role] = &[
    ("pipe_sender_then_drop", sender_then_drop),
    ("pipe_sender_then_sleep", sender_then_sleep),
    ("pipe_idle_receiver", idle_receiver),
    ("pipe_hand_over_both_ends", hand_over_both_ends),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("pipe", name, f);
    vec![
        t(
            "peer_dropped_recv_drains_then_closed",
            peer_dropped_recv_drains_then_closed,
        ),
        t(
            "peer_killed_sleeping_recv_returns_closed",
            peer_killed_sleeping_recv_returns_closed,
        ),
        t(
            "send_to_killed_receiver_with_full_buffer_is_closed",
            send_to_killed_receiver_with_full_buffer_is_closed,
        ),
        t(
            "fork_child_counts_as_a_holder",
            fork_child_counts_as_a_holder,
        ),
        t(
            "an_end_whose_holders_keep_dying_still_closes",
            an_end_whose_holders_keep_dying_still_closes,
        ),
        t(
            "short_waits_notice_a_killed_peer",
            short_waits_notice_a_killed_peer,
        ),
        t(
            "a_copy_in_flight_from_another_time_namespace_keeps_its_end",
            a_copy_in_flight_from_another_time_namespace_keeps_its_end,
        ),
    ]
}

/// Forks a child that holds `end` until it is killed; kills and reaps it.
fn fork_holder_and_kill(end: &Connection<u64>) {
    let held = end.clone();
    let mut p = Process::builder().fork(move || -> u8 {
        let _held = held;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    p.start().expect("fork");
    p.kill().expect("kill");
    assert!(p.join_timeout(BOUND).is_err(), "killed");
}

/// More holders die over a pipe's life than its table has slots (32): their slots are reused, so when
/// the last holder dies too, the other end still gets `Closed` (until 2026-12-01 dead holders' slots
/// were never reused, attachments past the 32nd were counted where nobody could judge them, and `recv`
/// waited forever; found by review).
fn an_end_whose_holders_keep_dying_still_closes() {
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    for _ in 0..40 {
        fork_holder_and_kill(&theirs);
    }
    let last = theirs.clone();
    let mut p = Process::builder().fork(move || -> u8 {
        let _held = last;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    p.start().expect("fork");
    drop(theirs);
    p.kill().expect("kill");
    assert!(p.join_timeout(BOUND).is_err(), "killed");
    let r = mine.recv_timeout(BOUND);
    assert!(
        matches!(r, Err(Error::Closed)),
        "every holder is dead: {r:?}"
    );
}

/// Child: attaches to its end (after the parent already dropped its own copy of it), sends 1, 2, 3,
/// then drops the end and says so.
fn sender_then_drop(hex: &str) {
    let c: Connection<u64> = handle_from_hex(hex).expect("attach");
    for x in [1, 2, 3] {
        c.send(&x).expect("send");
    }
    drop(c);
    say("dropped");
}

/// Child: attaches, sends `count` messages, says "sent", and waits to be killed.
fn sender_then_sleep(arg: &str) {
    let [hex, count] = fields(arg, ',');
    let c: Connection<u64> = handle_from_hex(hex).expect("attach");
    for x in 0..count.parse::<u64>().expect("count") {
        c.send(&x).expect("send");
    }
    say("sent");
    common::sleep_forever();
}

/// Child: attaches and never reads; waits to be killed.
fn idle_receiver(hex: &str) {
    let c: Connection<u64> = handle_from_hex(hex).expect("attach");
    say("attached");
    let _keep = c;
    common::sleep_forever();
}

/// Child: makes a pipe, prints both ends serialized (one line each), drops its handle of the second
/// (its serialized copy now holds it alone), says "dropped", and waits to be killed, holding the first
/// (which keeps the pipe's memory reachable for the parent to attach).
fn hand_over_both_ends(_: &str) {
    let (a, b) = Pipe::duplex::<u64>().expect("pipe");
    say(&handle_to_hex(&a));
    say(&handle_to_hex(&b));
    drop(b);
    say("dropped");
    let _keep = a;
    common::sleep_forever();
}

/// A process whose CLOCK_MONOTONIC is 100000 s ahead (a time namespace: `unshare --time`, a restored
/// container) hands us both ends of a pipe as serialized copies, keeping only the first. We attach the
/// first and wait on it: the other end is held by its copy in flight, so the wait times out, and once
/// we attach that end too, what it sends arrives. Found by review: the copy's token carried the
/// writer's clock, 100000 s "in the future" here: garbage, so the end was gone and the pipe `Closed`.
/// Skipped where namespaces cannot be made (the wrapper then fails before the role starts).
fn a_copy_in_flight_from_another_time_namespace_keeps_its_end() {
    let wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "--time",
        "--monotonic",
        "100000",
    ];
    let mut kid = Kid::spawn_under(&wrapper, "pipe_hand_over_both_ends", "", BOUND);
    let Ok(first) = kid.line_within(BOUND) else {
        let st = kid.wait();
        eprintln!("skipped: no time namespace ({st})");
        return;
    };
    let second = kid.next_line();
    kid.expect_line("dropped");
    let a: Connection<u64> = handle_from_hex(&first).expect("attach the first end");
    let r = a.recv_timeout(Duration::from_millis(200));
    assert!(
        matches!(r, Err(Error::Timeout)),
        "the other end's copy is in flight: {r:?}"
    );
    let b: Connection<u64> = handle_from_hex(&second).expect("attach the second end");
    b.send(&7).expect("send");
    assert_eq!(a.recv_timeout(BOUND).expect("recv"), 7);
    kid.kill();
}

/// The other end travels to a child as a serialized handle, and the parent drops its own copy right
/// after spawning (before the child attached: the serialized copy must keep the end alive until then).
/// The child sends three messages and drops its end: `recv` returns them, then `Closed` (Python's
/// `EOFError`); `send` is `Closed` too.
fn peer_dropped_recv_drains_then_closed() {
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let mut kid = Kid::spawn("pipe_sender_then_drop", &handle_to_hex(&theirs), BOUND);
    drop(theirs);
    kid.expect_line("dropped");
    kid.join_ok();
    let r = bounded("recv after the peer dropped its end", BOUND, move || {
        let got: Vec<_> = (0..3).map(|_| mine.recv()).collect();
        let after = mine.recv();
        let send = mine.send(&9);
        (got, after, send)
    });
    let (got, after, send) = r;
    let got: Vec<u64> = got
        .into_iter()
        .map(|m| m.expect("a message sent before the drop"))
        .collect();
    assert_eq!(got, [1, 2, 3], "what was sent is received first");
    assert!(
        matches!(after, Err(Error::Closed)),
        "then Closed: {after:?}"
    );
    assert!(
        matches!(send, Err(Error::Closed)),
        "send to a dropped end: {send:?}"
    );
}

/// A child holding the other end is SIGKILLed while our `recv` sleeps: the `recv` returns the
/// messages sent before, then `Err(Closed)` (within [`BOUND`]; not a speed assertion).
fn peer_killed_sleeping_recv_returns_closed() {
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let mut kid = Kid::spawn(
        "pipe_sender_then_sleep",
        &format!("{},2", handle_to_hex(&theirs)),
        BOUND,
    );
    drop(theirs);
    kid.expect_line("sent");
    assert_eq!(mine.recv_timeout(BOUND).expect("first"), 0);
    assert_eq!(mine.recv_timeout(BOUND).expect("second"), 1);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let _ = tx.send((mine.recv(), t0.elapsed()));
    });
    // Let the recv go to sleep, then kill the peer under it.
    std::thread::sleep(Duration::from_millis(200));
    kid.kill();
    let (r, waited) = rx.recv_timeout(BOUND).unwrap_or_else(|_| {
        panic!("recv() after the peer was SIGKILLed: no result within {BOUND:?}")
    });
    waiter.join().expect("recv thread");
    eprintln!("recv() returned {r:?} after {waited:?} (the kill came after ~200 ms)");
    assert!(
        matches!(r, Err(Error::Closed)),
        "recv after the peer died: {r:?}"
    );
}

/// Found by review: each `recv_timeout` first looked at the other end 5 ms into its wait, and `poll`
/// never did, so a loop of short waits never noticed a SIGKILLed peer (about 1300 rounds of
/// `Timeout` in 3 s). The looks now add up across calls: `poll` turns true (a closed pipe: `recv`
/// would return at once) and `recv` returns `Closed`, each within [`BOUND`] of 1 ms calls.
fn short_waits_notice_a_killed_peer() {
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let mut kid = Kid::spawn(
        "pipe_sender_then_sleep",
        &format!("{},1", handle_to_hex(&theirs)),
        BOUND,
    );
    drop(theirs);
    kid.expect_line("sent");
    kid.kill();
    assert_eq!(mine.recv_timeout(BOUND).expect("the message sent"), 0);
    let r = bounded("short polls after the peer was killed", BOUND, move || {
        let end = Instant::now() + BOUND;
        while !mine.poll(Duration::from_millis(1)) {
            assert!(Instant::now() < end, "poll never turned true");
        }
        loop {
            match mine.recv_timeout(Duration::from_millis(1)) {
                Err(Error::Timeout) => assert!(Instant::now() < end, "recv never saw it"),
                r => return r,
            }
        }
    });
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

/// A receiver that never reads is SIGKILLed while our `send` waits for space in the full buffer:
/// the `send` returns `Err(Closed)` instead of blocking forever.
fn send_to_killed_receiver_with_full_buffer_is_closed() {
    let (mine, theirs) = Pipe::duplex_with::<u64, Serde>(4, 64).expect("pipe");
    let mut kid = Kid::spawn("pipe_idle_receiver", &handle_to_hex(&theirs), BOUND);
    drop(theirs);
    kid.expect_line("attached");
    for x in 0..4 {
        mine.send(&x).expect("room in the buffer");
    }
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(mine.send(&4));
    });
    std::thread::sleep(Duration::from_millis(200));
    kid.kill();
    let r = rx
        .recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("send() to a SIGKILLed receiver: no result within {BOUND:?}"));
    waiter.join().expect("send thread");
    assert!(
        matches!(r, Err(Error::Closed)),
        "send to a dead receiver: {r:?}"
    );
}

/// A `Process::fork` child inherits a handle of the other end, and the parent lets go of its own at
/// once: the child counts as a holder (no false `Closed` while it lives), and its end closes when it
/// exits.
fn fork_child_counts_as_a_holder() {
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let go = Event::new().expect("event");
    let mut child = {
        let go = go.clone();
        Process::builder().fork(move || -> Result<(), String> {
            if !go.wait_timeout(BOUND) {
                return Err("no go from the parent".into());
            }
            theirs.send(&41).map_err(|e| e.to_string())?;
            theirs.send(&42).map_err(|e| e.to_string())
        })
    };
    child.start().expect("fork");
    // The closure (and the parent's copy of `theirs` in it) is gone from the parent now.
    assert!(
        matches!(
            mine.recv_timeout(Duration::from_millis(300)),
            Err(Error::Timeout)
        ),
        "the forked child holds the other end: no Closed while it lives"
    );
    go.set();
    let r = bounded("recv from a forked child, then Closed", BOUND, move || {
        let a = mine.recv();
        let b = mine.recv();
        let c = mine.recv();
        (a, b, c)
    });
    assert_eq!(r.0.expect("first"), 41);
    assert_eq!(r.1.expect("second"), 42);
    assert!(
        matches!(r.2, Err(Error::Closed)),
        "the child ended: {:?}",
        r.2
    );
    child.join().expect("join").expect("the child's sends");
}
