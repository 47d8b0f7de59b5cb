//! The last user of a queue removes its blocks (spilled messages, segments) and anchor whatever other
//! threads of its process do meanwhile, and a child forked by this crate counts as a user of the queues
//! it inherited.
//!
//! - While another thread spawns processes without pause (each child holds a copy of every descriptor
//!   of ours until it execs), 200 queues in turn spill a message and are dropped: none leaves a file in
//!   `/dev/shm`. (Closing the last user's descriptor used to leave its lock to such a copy, and about
//!   one drop in twenty left the queue's anchor and blocks behind.)
//! - A child forked with a queue holding a spilled message reads it whole after the parent has dropped
//!   every handle of its own, and the child, the last user, removes the blocks when it ends.
//! - A child forked outside this crate (`fork(2)` itself) that drops its copy of the parent's queue
//!   leaves the parent's lock alone: the parent then reads its spilled message whole.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libtest_mimic::Trial;
use mproc::{Event, Process};

use crate::common::{self, bounded, say, Kid, Role};
use crate::queue::BOUND;
use crate::queue_unbounded::{block_files, check, message, Bytes};

pub const ROLES: &[Role] = &[
    ("queue_anchor_spawning", drop_while_spawning),
    ("queue_anchor_fork", forked_child_keeps_blocks),
    ("queue_anchor_raw_fork", raw_fork),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue_anchor", name, f);
    vec![
        t(
            "last_drop_removes_the_group_while_another_thread_spawns",
            || in_own_process("queue_anchor_spawning"),
        ),
        t(
            "forked_child_keeps_the_blocks_after_the_parent_lets_go",
            || in_own_process("queue_anchor_fork"),
        ),
        t(
            "child_forked_outside_the_crate_leaves_the_parents_lock",
            || in_own_process("queue_anchor_raw_fork"),
        ),
    ]
}

/// A message larger than the 64-byte slots of the queues below: it goes to a block of its own.
const SPILLED: usize = 100 * 1024;

/// Runs `role` in a process of its own and waits for its "done". Each scenario needs a process whose
/// only threads are its own: a child that another test of this process forks holds a lock on every
/// queue anchor of this process while it lives (that is the fork's contract), which would keep the
/// groups these tests watch in place for as long; and a raw `fork` is only safe in a single-threaded
/// parent.
fn in_own_process(role: &str) {
    let mut kid = Kid::spawn(role, "", BOUND);
    kid.expect_line("done");
    kid.join_ok();
}

/// Role: 200 spilling queues dropped in turn while another thread spawns `true` without pause.
fn drop_while_spawning(_: &str) {
    const QUEUES: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let status = std::process::Command::new("true")
                    .status()
                    .expect("spawn true");
                assert!(status.success());
                spawned += 1;
            }
            spawned
        })
    };
    let mut left = Vec::new();
    for i in 0..QUEUES {
        let q = Bytes::with_max_message(2, 64).expect("create");
        q.put(&message(i as u64, SPILLED)).expect("put");
        let h = q.handle();
        assert!(!block_files(&h).is_empty(), "the message was not spilled");
        drop(q);
        let files = crate::queue_unbounded::group_files(crate::queue_unbounded::queue_id(&h));
        if !files.is_empty() {
            left.push(files);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let spawned = bounded("the spawning thread ends", BOUND, move || {
        spawner.join().expect("spawner")
    });
    assert!(spawned > 0, "no process was spawned meanwhile");
    assert!(
        left.is_empty(),
        "{} of {QUEUES} queues left files after their last handle ({spawned} spawns meanwhile): {:?}",
        left.len(),
        &left[..left.len().min(3)]
    );
    say("done");
}

/// Role: a queue holding a spilled message, a `Process::fork` child with a clone of it, the parent's
/// handles dropped before the child reads.
fn forked_child_keeps_blocks(_: &str) {
    let q = Bytes::with_max_message(2, 64).expect("create");
    q.put(&message(7, SPILLED)).expect("put");
    let h = q.handle();
    let dropped = Event::new().expect("event");
    let mut child = {
        let (q, dropped) = (q.clone(), dropped.clone());
        Process::builder().fork(move || -> Result<u64, String> {
            if !dropped.wait_timeout(BOUND) {
                return Err("the parent never said it let go".into());
            }
            let m = q.get_timeout(BOUND).map_err(|e| e.to_string())?;
            check(&m)
        })
    };
    child.start().expect("fork");
    drop(q);
    // The child is attached: the parent's letting go must leave its block in place.
    assert!(
        !block_files(&h).is_empty(),
        "the parent removed the blocks of a queue its child holds"
    );
    dropped.set();
    let got = bounded("the child ends", BOUND, move || child.join().expect("join"));
    assert_eq!(got, Ok(7));
    let id = crate::queue_unbounded::queue_id(&h);
    assert_eq!(
        crate::queue_unbounded::group_files(id),
        Vec::<String>::new(),
        "the child, the last user, left the group behind"
    );
    say("done");
}

/// Role: a single-threaded process holds a queue with a spilled message, forks with `fork(2)`; the
/// child drops its copy and `_exit`s; then the parent takes the message.
fn raw_fork(_: &str) {
    let q = Bytes::with_max_message(2, 64).expect("create");
    q.put(&message(11, SPILLED)).expect("put");
    // SAFETY: this process (a role of its own) has one thread, so the child may take any lock; it
    // only drops its copy of the queue (closing its descriptors, as the drop does) and ends with
    // `_exit`, never returning.
    match unsafe { libc::fork() } {
        0 => {
            drop(q);
            // SAFETY: `_exit` ends the child without running the parent's destructors twice.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` outlives the call.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        _ => panic!("fork: {}", std::io::Error::last_os_error()),
    }
    let m = q.get_timeout(BOUND).expect("the spilled message");
    assert_eq!(check(&m), Ok(11));
    say("done");
}
