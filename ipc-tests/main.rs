//! Multi-process tests. Run by `cargo test` (this is the `ipc` test target, with its own harness so that
//! it can check, after every test ran, that no shared segment and no child process was left behind).
//!
//! Each module exposes `tests() -> Vec<Trial>` and `ROLES`, the child programs its tests start: a child is
//! this same binary re-executed with `MPROC_TEST_ROLE` set (see `common::spawn_role`).

mod common;
mod ecosystem;
mod examples;
mod examples_run;
mod forkserver;
mod hostile;
mod locks;
mod manager;
mod manager_faults;
mod manager_grow;
mod pipe;
mod pool;
mod pool_faults;
mod process;
mod queue;
mod queue_anchor;
mod queue_batch;
mod queue_faults;
mod queue_unbounded;
mod region;
mod region_fuzz;
mod security_heap;
mod security_locks;
mod security_region;
mod security_spawn;
mod sync_faults;

use libtest_mimic::{Arguments, Trial};

fn main() {
    common::run_role_if_child(&[
        region::ROLES,
        region_fuzz::ROLES,
        security_region::ROLES,
        security_locks::ROLES,
        locks::ROLES,
        manager::ROLES,
        manager_faults::ROLES,
        manager_grow::ROLES,
        examples::ROLES,
        examples_run::ROLES,
        forkserver::ROLES,
        hostile::ROLES,
        sync_faults::ROLES,
        queue::ROLES,
        pipe::ROLES,
        queue_faults::ROLES,
        queue_unbounded::ROLES,
        queue_batch::ROLES,
        process::ROLES,
        pool::ROLES,
        pool_faults::ROLES,
        queue_anchor::ROLES,
        security_heap::ROLES,
        security_spawn::ROLES,
        ecosystem::ROLES,
    ]);
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = Vec::new();
    trials.extend(region::tests());
    trials.extend(region_fuzz::tests());
    trials.extend(security_region::tests());
    trials.extend(security_locks::tests());
    trials.extend(locks::tests());
    trials.extend(manager::tests());
    trials.extend(manager_faults::tests());
    trials.extend(manager_grow::tests());
    trials.extend(examples::tests());
    trials.extend(examples_run::tests());
    trials.extend(forkserver::tests());
    trials.extend(hostile::tests());
    trials.extend(sync_faults::tests());
    trials.extend(queue::tests());
    trials.extend(pipe::tests());
    trials.extend(queue_faults::tests());
    trials.extend(queue_unbounded::tests());
    trials.extend(queue_anchor::tests());
    trials.extend(queue_batch::tests());
    trials.extend(process::tests());
    trials.extend(pool::tests());
    trials.extend(pool_faults::tests());
    trials.extend(security_heap::tests());
    trials.extend(security_spawn::tests());
    trials.extend(ecosystem::tests());
    let before = common::shm_entries();
    let conclusion = libtest_mimic::run(&args, trials);
    // The suite-level invariants (DESIGN.md, invariant 6): nothing of ours left in /dev/shm, no zombie.
    let leaks = common::leftovers(&before);
    if !leaks.is_empty() {
        eprintln!("error: the suite left these behind: {leaks:?}");
        std::process::exit(101);
    }
    conclusion.exit();
}
