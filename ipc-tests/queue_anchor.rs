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
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libtest_mimic::Trial;
use mproc::{Event, Process};

use crate::common::{self, bounded};
use crate::queue::BOUND;
use crate::queue_unbounded::{block_files, check, message, Bytes};

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue_anchor", name, f);
    vec![
        t(
            "last_drop_removes_the_group_while_another_thread_spawns",
            drop_while_spawning,
        ),
        t(
            "forked_child_keeps_the_blocks_after_the_parent_lets_go",
            forked_child_keeps_blocks,
        ),
    ]
}

/// A message larger than the 64-byte slots of the queues below: it goes to a block of its own.
const SPILLED: usize = 100 * 1024;

fn drop_while_spawning() {
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
}

fn forked_child_keeps_blocks() {
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
}
