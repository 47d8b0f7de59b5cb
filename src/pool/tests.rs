//! Pool tests that need the crate's internals (the multi-process suites live in `ipc-tests/`).

use std::os::unix::fs::OpenOptionsExt;

use super::Pool;

fn double(x: u32) -> u32 {
    x * 2
}

/// The pids of this process's children (every thread's `children` file).
fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// Every regular file that another process of our uid could re-open through `/proc/<pid>/fd` of the
/// processes `pids`, read up to 256 MiB each.
fn reopenable_contents(pids: &[u32]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            let path = fd.path();
            // `metadata` follows the magic link: only regular files (memfds, shm, plain files) count;
            // sockets cannot be opened this way at all, and pipes would block or steal data.
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            else {
                continue;
            };
            let mut bytes = Vec::new();
            let _ =
                std::io::Read::read_to_end(&mut std::io::Read::take(&file, 256 << 20), &mut bytes);
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

/// Review S2: the pool's key used to sit in the spawn memfd the parent kept open for each worker's
/// whole life, so any process of our uid could read it through `/proc/<parent>/fd` and forge tasks.
/// Now no file of the parent or of a worker that can be re-opened holds it.
#[test]
fn the_pool_key_is_in_no_file_another_process_can_open() {
    let pool = Pool::builder().workers(1).build().unwrap();
    // One round trip: the worker has read its spawn task and key and is serving tasks.
    assert_eq!(pool.map(double, [1u32, 2]).unwrap(), vec![2, 4]);
    // Both the raw bytes and the serialized form (postcard varints, how the key once travelled).
    let forms = [
        pool.key.to_bytes().to_vec(),
        postcard::to_allocvec(&pool.key).unwrap(),
    ];
    let mut pids = vec![std::process::id()];
    pids.extend(children());
    assert!(pids.len() >= 2, "the worker is a child of this process");
    let files = reopenable_contents(&pids);
    assert!(
        files.iter().any(|(_, b)| !b.is_empty()),
        "the scan saw the pool's rings"
    );
    for (path, bytes) in &files {
        for key in &forms {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "the pool key is readable through {path}"
            );
        }
    }
}

/// Review S2 as the attacker ran it: a frame written into a worker's task ring with a function
/// reference MAC'd under any other key runs nothing; the task fails with an authentication error.
#[test]
fn a_task_signed_with_another_key_is_refused() {
    use crate::process::fnref::FnKey;
    let pool = Pool::builder().workers(1).build().unwrap();
    let forged = super::worker::map_fn(double).sign(&FnKey::random());
    let payload = postcard::to_allocvec(&vec![1u32]).unwrap();
    let job = super::results::Job::new(1, &pool.engine);
    let spec = super::dispatcher::task_spec(
        job.clone(),
        0,
        forged,
        super::wire::Payload::Inline(payload),
    )
    .unwrap();
    pool.engine.submit(vec![spec]).unwrap();
    let r = super::results::AsyncResult::<Vec<u32>>::all_items(job, vec![1]).get();
    let err = r.unwrap_err().to_string();
    assert!(err.contains("authentication"), "{err}");
    // The pool still works.
    assert_eq!(pool.map(double, [5u32]).unwrap(), vec![10]);
}

fn total_len(v: Vec<f64>) -> (usize, f64) {
    (v.len(), v.iter().sum())
}

/// Issue 12: an argument past the inline limit is encoded straight into a shared block the worker
/// decodes in place; the block stays lent (not freed, not reused) until the task is over.
#[test]
fn large_arguments_travel_in_a_shared_block() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let big: Vec<f64> = (0..(super::wire::SHARED_PAYLOAD_BYTES / 8 + 1000))
        .map(|i| i as f64)
        .collect();
    let want = (big.len(), big.iter().sum::<f64>());
    let payload = super::wire::Payload::encode(&vec![&big]).unwrap();
    assert!(matches!(payload, super::wire::Payload::Shared(_)));
    let small = super::wire::Payload::encode(&vec![vec![1.0f64]]).unwrap();
    assert!(matches!(small, super::wire::Payload::Inline(_)));
    assert_eq!(pool.map(total_len, [&big, &big]).unwrap(), vec![want, want]);
}

fn scaled(v: Vec<f32>) -> Vec<f32> {
    v.iter().map(|x| x * 2.0).collect()
}

fn byte_sum(b: Vec<u8>) -> (u64, Vec<u8>) {
    (b.iter().map(|&x| u64::from(x)).sum(), b[..3].to_vec())
}

fn weighted(w: Vec<i64>, name: String) -> (i64, String) {
    (w.iter().sum(), name)
}

/// Issue 12: `Vec`s of numbers travel as their bytes (`item_wire`), as arguments and as results, in a
/// block or inline, alone, in a result tuple, and as one argument of `starmap`: the worker gets
/// exactly the vector that was sent, and the caller exactly the one returned.
#[test]
fn vectors_of_numbers_cross_the_pool_unchanged() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let big: Vec<f32> = (0..(super::wire::SHARED_PAYLOAD_BYTES / 4 + 777))
        .map(|i| i as f32 * 0.25 - 9.0)
        .collect();
    let small = vec![1.5f32, -2.0, f32::MAX, f32::MIN_POSITIVE];
    let got = pool.map(scaled, [&big, &small, &Vec::new()]).unwrap();
    assert_eq!(got, vec![scaled(big.clone()), scaled(small), Vec::new()]);

    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        pool.apply(byte_sum, &bytes).unwrap(),
        byte_sum(bytes.clone())
    );

    let pairs = vec![
        (vec![1i64, -5, 7], "a".to_owned()),
        (vec![], "b".to_owned()),
    ];
    assert_eq!(
        pool.starmap(weighted, &pairs).unwrap(),
        vec![(3, "a".to_owned()), (0, "b".to_owned())]
    );
}

fn eight_mib(n: u32) -> Vec<u8> {
    vec![n as u8; 8 << 20]
}

/// The heap arenas (memfds of at least `ARENA_MIN` bytes) that process `pid` holds open.
fn arenas_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("memfd:"))
                && std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.len() >= crate::heap::ARENA_MIN as u64)
        })
        .count()
}

/// Issue 12: a large answer comes back in a block of the worker's heap (`answer`), which the parent
/// releases once the caller has its value: a worker answering 8 MiB, 40 times, reuses its blocks
/// rather than holding all 320 MiB of them (which would take five more 64 MiB arenas).
#[test]
fn answer_blocks_are_released_and_reused() {
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.apply(eight_mib, 1).unwrap(), eight_mib(1));
    let pid = pool.worker_pids()[0];
    let before = arenas_of(pid);
    assert!(
        before >= 1,
        "the answer was not in a block of the worker's heap"
    );
    for n in 0..40u32 {
        let got = pool.apply(eight_mib, n).unwrap();
        assert!(got.len() == 8 << 20 && got.iter().all(|&b| b == n as u8));
    }
    // A job's answers are also released when they are dropped undecoded.
    let pending: Vec<_> = (0..6)
        .map(|n| pool.apply_async(eight_mib, n).unwrap())
        .collect();
    drop(pending);
    for n in 0..10u32 {
        assert_eq!(pool.apply(eight_mib, n).unwrap()[0], n as u8);
    }
    assert_eq!(pool.worker_pids(), vec![pid], "the worker was replaced");
    assert!(
        arenas_of(pid) <= before + 1,
        "the worker holds {} arenas, {before} after its first answer",
        arenas_of(pid)
    );
}

/// Found by review: the parent's cache of other processes' arenas kept a pool's worker arenas
/// (descriptor and mapping) after the pool was dropped, for the life of the process. A worker's are
/// let go of once it stops.
#[test]
fn a_dropped_pools_arenas_leave_the_cache() {
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.apply(eight_mib, 3).unwrap(), eight_mib(3));
    let pid = pool.worker_pids()[0];
    assert!(crate::heap::cached_foreign_owners().contains(&Some(pid)));
    drop(pool);
    assert!(!crate::heap::cached_foreign_owners().contains(&Some(pid)));
}

fn bytes_of_len(n: usize) -> Vec<u8> {
    let mut v = vec![5u8; n];
    v[n - 1] = 9;
    v
}

/// A block answer is not held to the ring's reassembly cap (`MAX_MESSAGE_BYTES`), as a block argument
/// is not: a result past it arrives whole, where through ring frames it failed its task.
#[test]
fn an_answer_past_the_ring_limit_arrives_in_its_block() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let n = super::MAX_MESSAGE_BYTES as usize + (1 << 20);
    let got = pool.apply(bytes_of_len, n).unwrap();
    assert_eq!((got.len(), got[0], got[n - 1]), (n, 5, 9));
}

/// A value that encodes shorter the second time it is serialized than the first: the payload
/// encoder sizes its block with one pass and writes it with another.
struct ShrinksOnSecondPass(std::cell::Cell<usize>);

impl serde::Serialize for ShrinksOnSecondPass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pass = self.0.get();
        self.0.set(pass + 1);
        let len = if pass == 0 { 3 << 20 } else { 2 << 20 };
        s.serialize_bytes(&vec![7u8; len])
    }
}

/// Issue 12: a large payload's block is not zeroed before it is encoded into (the encoding writes
/// it all), yet no stale byte of an earlier block reaches a worker, even from a `Serialize` impl that
/// writes less than it counted.
#[test]
fn a_payload_block_holds_the_encoding_and_zeroes_only_the_tail() {
    let value = ShrinksOnSecondPass(0.into());
    // The encoder's first pass, which sizes the block.
    let size = postcard::experimental::serialized_size(&value).unwrap();
    // A block full of an earlier array's bytes, as the heap may hand out for it.
    let stale = crate::SharedArray::from_slice(&vec![0xAAu8; size]).unwrap();
    let block = super::wire::encode_into(&value, stale).unwrap();
    assert_eq!(block.len(), size);
    let (head, tail) = block.split_at(size - (1 << 20));
    assert!(head[8..].iter().all(|&b| b == 7));
    assert!(!tail.contains(&0xAA), "a stale byte of the earlier array");
    assert!(tail.iter().all(|&b| b == 0));
    // And through the encoder itself, from the first pass on.
    let payload = super::wire::Payload::encode(&ShrinksOnSecondPass(0.into())).unwrap();
    let super::wire::Payload::Shared(block) = payload else {
        panic!("a 3 MiB payload is shared");
    };
    assert_eq!(block.len(), size);
    assert!(block[size - (1 << 20)..].iter().all(|&b| b == 0));
}

/// FNV-1a of `bytes`: how the key scan below recognizes the key's tail without holding it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Child: counts the places in its own writable memory that hold the encoded key whose first 8 bytes
/// are `head` and whose `rest` bytes after them hash to `hash` (it is not given the key itself).
fn copies_of_key((head, rest, hash): (u64, usize, u64)) -> u32 {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut found = 0;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        // A fork-server child's writable mappings are small; a huge one (reserved, not touched)
        // holds nothing the server wrote, and would cost its size to read.
        let len = end.saturating_sub(start);
        if len > 256 << 20 {
            continue;
        }
        let mut bytes = vec![0u8; len as usize];
        if mem.read_exact_at(&mut bytes, start).is_err() {
            continue; // a mapping that cannot be read (a guard page)
        }
        let head = head.to_ne_bytes();
        for at in 0..bytes.len().saturating_sub(8 + rest) {
            if bytes[at..at + 8] == head && fnv1a(&bytes[at + 8..at + 8 + rest]) == hash {
                found += 1;
            }
        }
    }
    found
}

/// Found by review: the fork server read every request into one buffer it never cleared, and every
/// child it forked got a copy: a pool worker's request carries the pool's key, and a later, shorter
/// request left it in place for any later child to read (then sign tasks for that pool's workers).
#[test]
fn a_fork_server_child_finds_no_pools_key_in_its_memory() {
    use crate::process::{Process, StartMethod};
    let pool = Pool::builder()
        .workers(1)
        .start_method(StartMethod::ForkServer)
        .build()
        .unwrap();
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    let enc = postcard::to_allocvec(&pool.key).unwrap();
    assert!(enc.len() > 8);
    let arg = (
        u64::from_ne_bytes(enc[..8].try_into().unwrap()),
        enc.len() - 8,
        fnv1a(&enc[8..]),
    );
    let mut spy = Process::builder()
        .start_method(StartMethod::ForkServer)
        .target(copies_of_key, arg)
        .unwrap();
    spy.start().unwrap();
    assert_eq!(spy.join().unwrap(), 0, "copies of the pool's key");
}

/// A fresh directory for the files by which a test and its tasks signal each other.
struct Signals(std::path::PathBuf);

impl Signals {
    fn new(what: &str) -> Signals {
        let dir = std::env::temp_dir().join(format!("mproc-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Signals(dir)
    }

    fn dir(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (at most a generous bound) until file `name` exists in `dir`.
fn wait_for_file(dir: &str, name: &str) {
    let path = std::path::Path::new(dir).join(name);
    let deadline = std::time::Instant::now() + BOUND;
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{name} never came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// How long anything may take before we call it a hang.
const BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// In a worker: claims a slot of the shared result ring, says so in `dir`, and dies holding it
/// (SIGKILL: a worker killed in the middle of a put).
fn claim_and_die(dir: String) -> u32 {
    let ring = super::worker::result_ring_for_tests().expect("runs in a worker");
    let batch = ring.ring().claim_push(1, None).expect("claim a slot");
    std::fs::write(std::path::Path::new(&dir).join("claimed"), b"").unwrap();
    std::mem::forget(batch);
    // SAFETY: raising SIGKILL ends this process; no memory is involved.
    unsafe { libc::raise(libc::SIGKILL) };
    unreachable!("SIGKILL ends the worker")
}

/// Answers once the other worker holds its claim, so that the answer lies behind it in the ring.
fn after_the_claim(dir: String) -> u32 {
    wait_for_file(&dir, "claimed");
    7
}

/// Found by review: the result ring was only ever read with `try_get` when no caller blocked on a
/// result (async results, `ready()` polled), and a `try_get` never recovers the slot of a producer
/// that died in the middle of a put. Worker 0 dies holding a claimed slot; worker 1's answer, behind
/// it, never arrived. Nothing here blocks on a result: only the pool's background thread reads.
#[test]
fn a_worker_killed_in_a_put_does_not_stall_results_nobody_blocks_on() {
    let signals = Signals::new("claim-die");
    let pool = Pool::builder().workers(2).build().unwrap();
    let dies = pool.apply_async(claim_and_die, signals.dir()).unwrap();
    let answers = pool.apply_async(after_the_claim, signals.dir()).unwrap();
    let deadline = std::time::Instant::now() + BOUND;
    while !(answers.ready() && dies.ready()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the answer behind the dead worker's slot never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(matches!(
        dies.get(),
        Err(crate::Error::WorkerDied {
            signal: Some(libc::SIGKILL),
            ..
        })
    ));
    assert_eq!(answers.get().unwrap(), 7);
}

/// The items of [`an_answer_behind_another_producers_claim_still_counts`] (one per chunk; worker 0
/// runs items 0 and 2, worker 1 items 1 and 3).
fn behind_a_claim((what, dir): (u8, String)) -> u8 {
    match what {
        // A producer stalled in the middle of a put (preempted, say): a claimed slot, held until told.
        0 => {
            let ring = super::worker::result_ring_for_tests().expect("runs in a worker");
            let batch = ring.ring().claim_push(1, None).expect("claim a slot");
            std::fs::write(std::path::Path::new(&dir).join("held"), b"").unwrap();
            wait_for_file(&dir, "release");
            drop(batch); // published as a tombstone: no message
            0
        }
        // Answered behind that slot...
        1 => {
            wait_for_file(&dir, "held");
            1
        }
        2 => 2,
        // ...by a worker that then dies.
        _ => {
            // SAFETY: raising SIGKILL ends this process; no memory is involved.
            unsafe { libc::raise(libc::SIGKILL) };
            unreachable!("SIGKILL ends the worker")
        }
    }
}

/// Found by review: a dead worker's tasks were judged as soon as a `try_get` found nothing to take,
/// though a frame it published before dying could wait behind a slot another producer held. Item 1
/// was answered; its worker then died running item 3. Item 1 failed as if it had died with its
/// worker (and item 3, taken for one that never started, ran again on the replacement).
#[test]
fn an_answer_behind_another_producers_claim_still_counts() {
    let signals = Signals::new("claim-held");
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.worker_pids();
    let items: Vec<(u8, String)> = (0..4).map(|i| (i, signals.dir())).collect();
    let all = pool.map_async(behind_a_claim, &items, Some(1)).unwrap();
    wait_for_file(&signals.dir(), "held");
    let deadline = std::time::Instant::now() + BOUND;
    while pool.worker_pids().contains(&pids[1]) {
        assert!(std::time::Instant::now() < deadline, "worker 1 never died");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::fs::write(signals.0.join("release"), b"").unwrap();
    match all.get() {
        Err(crate::Error::WorkerDied {
            task: 3,
            signal: Some(libc::SIGKILL),
            ..
        }) => {}
        other => panic!("only item 3 died with its worker: {other:?}"),
    }
}

/// A pool of `n` workers that have served once and are then stopped (SIGSTOP): they never notice
/// that their rings were closed. Their pids.
fn pool_of_stuck_workers(n: usize) -> (Pool, Vec<u32>) {
    let pool = Pool::builder().workers(n).build().unwrap();
    let items: Vec<u32> = (0..n as u32).collect();
    assert_eq!(pool.map(double, &items).unwrap().len(), n);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), n);
    for &pid in &pids {
        // SAFETY: kill(2) of our own child worker, not reaped yet; no memory involved.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    }
    (pool, pids)
}

/// Found by review: shutting a closed pool down gave each worker that did not notice its closed ring
/// (stopped, or stuck before it reads its ring) up to 10 s of its own, one after the other, so three
/// stuck workers held `join` (and a pool dropped after `close`) for 30 s. They share one deadline now.
#[test]
fn stuck_workers_share_one_shutdown_deadline() {
    const WORKERS: usize = 3;
    let (mut pool, pids) = pool_of_stuck_workers(WORKERS);
    let start = std::time::Instant::now();
    pool.close();
    pool.join().unwrap();
    let took = start.elapsed();
    let patience = super::dispatcher::SHUTDOWN_PATIENCE;
    // One deadline for all, plus a generous margin; one each would be `WORKERS` times the patience.
    assert!(
        took < patience * 2,
        "joining {WORKERS} stuck workers took {took:?} (patience {patience:?})"
    );
    assert!(pool.worker_pids().is_empty());
    assert!(
        children().iter().all(|p| !pids.contains(p)),
        "the stuck workers were killed and reaped"
    );
}

/// Found by review: the shutdown of a closed pool waited for its workers under the engine's lock, so
/// `terminate` (and dropping the pool) during it waited as long (10 s per stuck worker) before it could
/// kill them. It kills them now.
#[test]
fn terminate_during_the_shutdown_of_stuck_workers_kills_them_now() {
    let (mut pool, pids) = pool_of_stuck_workers(2);
    pool.close();
    // Let the background thread begin the shutdown (it ticks every 10 ms): on a slow machine it may
    // not have, and then `terminate` is quick whatever the code; it never makes this test fail.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let start = std::time::Instant::now();
    pool.terminate();
    let took = start.elapsed();
    let patience = super::dispatcher::SHUTDOWN_PATIENCE;
    assert!(
        took < patience / 2,
        "terminate took {took:?} (the shutdown's patience is {patience:?})"
    );
    assert!(pool.worker_pids().is_empty());
    assert!(
        children().iter().all(|p| !pids.contains(p)),
        "the stuck workers were killed and reaped"
    );
}

/// In a worker: records its run in `dir`, answers its own task with a block answer that cannot be
/// attached (a real block of this worker, with a range past its arena), and dies before anything else.
fn unattachable_answer_then_die(dir: String) -> u32 {
    let runs = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(std::path::Path::new(&dir).join(format!("run-{runs}")), b"").unwrap();
    let (task, worker, ring) = super::worker::running_task_for_tests().expect("runs in a task");
    let block = crate::SharedArray::<u8>::for_overwrite(64).unwrap();
    let mut handle = block.block_handle();
    handle.offset = u64::MAX / 2;
    let body = super::answer::block_body(&handle);
    super::wire::fragments(
        task,
        super::wire::KIND_RESULT,
        worker,
        &body,
        ring.max_message_size(),
        |f| ring.put(f),
    )
    .unwrap();
    // SAFETY: raising SIGKILL ends this process; no memory is involved.
    unsafe { libc::raise(libc::SIGKILL) };
    unreachable!("SIGKILL ends the worker")
}

/// Found by review: an answer whose block could not be attached, from a worker found dead meanwhile,
/// gave its task its retry at once, while the dead worker still took work (it was not judged dead yet):
/// the retry went into the dead worker's ring and was failed with it, `WorkerDied` after one run
/// though the pool was built to run a task once more. Whether the death was judged before the next
/// dispatch depended on the liveness clock, so several rounds.
#[test]
fn a_retry_after_an_unattachable_answer_of_a_dead_worker_runs_again() {
    let pool = Pool::builder()
        .workers(1)
        .retry_on_worker_death(true)
        .build()
        .unwrap();
    for round in 0..8 {
        let signals = Signals::new(&format!("unattached-{round}"));
        let r = pool
            .apply_async(unattachable_answer_then_die, signals.dir())
            .unwrap();
        assert!(r.wait_timeout(BOUND), "round {round} hung");
        assert!(
            matches!(r.get(), Err(crate::Error::WorkerDied { .. })),
            "{:?}",
            r.get()
        );
        let runs = std::fs::read_dir(signals.dir()).unwrap().count();
        assert_eq!(
            runs, 2,
            "round {round}: the task ran {runs} times, not twice"
        );
    }
}

/// In a worker: answers its own task with the result `x` followed by one byte more, and dies before
/// anything else (its real answer never comes).
fn answer_with_a_byte_over_then_die(x: u32) -> u32 {
    let (task, worker, ring) = super::worker::running_task_for_tests().expect("runs in a task");
    let mut item = postcard::to_allocvec(&super::item_wire::ValueToWire(&x)).unwrap();
    item.push(0);
    let body = super::answer::inline(&Ok(vec![Ok(super::wire::ItemBytes::Owned(item))]));
    super::wire::fragments(
        task,
        super::wire::KIND_RESULT,
        worker,
        &body,
        ring.max_message_size(),
        |f| ring.put(f),
    )
    .unwrap();
    // SAFETY: raising SIGKILL ends this process; no memory is involved.
    unsafe { libc::raise(libc::SIGKILL) };
    unreachable!("SIGKILL ends the worker")
}

/// Found by review: a worker's result with bytes left over after the value decoded as the value.
#[test]
fn a_result_with_bytes_left_over_is_a_decode_error() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let e = pool.apply(answer_with_a_byte_over_then_die, 7).unwrap_err();
    assert!(matches!(e, crate::Error::Decode { .. }), "{e}");
}

/// A dispatcher of `workers` spawned workers, without the engine around it.
fn bare_dispatcher(workers: usize) -> super::dispatcher::Dispatcher {
    bare_dispatcher_with_key(workers, crate::process::fnref::FnKey::random())
}

/// As [`bare_dispatcher`], its workers running tasks signed with `key`.
fn bare_dispatcher_with_key(
    workers: usize,
    key: crate::process::fnref::FnKey,
) -> super::dispatcher::Dispatcher {
    let cfg = super::dispatcher::PoolConfig {
        workers,
        key,
        initializer: None,
        max_tasks: None,
        retries: 0,
        frame_size: super::FRAME_SIZE,
        max_body: super::MAX_MESSAGE_BYTES,
        start_method: crate::process::StartMethod::Spawn,
        retain_memory: true,
    };
    let results =
        super::worker::FrameQueue::with_max_message(super::RESULT_RING, super::FRAME_SIZE).unwrap();
    super::dispatcher::Dispatcher::new(cfg, results).unwrap()
}

/// Whether `pid` is still a process of ours not reaped (running, or a zombie).
fn unreaped(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Found by review: terminating a pool, and ending a closed one, reaped its workers inside the
/// dispatcher, under the engine's lock, where every caller of the pool waits: a worker of a dead fork
/// server is reaped only when its new parent has reaped it (seconds on some inits), each in turn. They
/// go to `dead`, which the engine drops once it let go of the lock.
#[test]
fn a_finished_dispatcher_leaves_its_workers_to_be_reaped_outside_the_lock() {
    let mut d = bare_dispatcher(2);
    let pids = d.worker_pids();
    assert_eq!(pids.len(), 2);
    d.terminate();
    assert!(d.finished);
    assert_eq!(d.dead.len(), 2);
    assert!(pids.iter().all(|&p| unreaped(p)), "reaped under the lock");
    drop(std::mem::take(&mut d.dead));
    assert!(!pids.iter().any(|&p| unreaped(p)), "killed and reaped");

    // Closed with nothing to do: the workers see their rings closed and exit.
    let mut d = bare_dispatcher(2);
    let pids = d.worker_pids();
    d.closing = true;
    let start = std::time::Instant::now();
    while !d.finished && start.elapsed() < BOUND {
        d.tick(false);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(d.finished, "the closed dispatcher did not finish");
    assert_eq!(d.dead.len(), 2);
    drop(std::mem::take(&mut d.dead));
    assert!(!pids.iter().any(|&p| unreaped(p)));
}

/// A result just past the size from which a worker answers in a block of its heap.
fn a_block_answer(x: u32) -> Vec<u8> {
    vec![x as u8; super::wire::SHARED_PAYLOAD_BYTES + 64]
}

/// Found by review: a pool with `max_tasks_per_child` starts a worker every few tasks, and every answer
/// kept in a block of a worker's heap kept that worker's arena mapped here for as long as the caller
/// kept the result, the worker long gone. Past the heap's cap on arenas of other processes mapped at
/// once (256), every further block answer failed to attach ("the worker's answer block could not be
/// attached"), and its worker waited 10 s for an attachment that never came before it left.
#[test]
fn answers_of_workers_that_leave_on_their_own_keep_no_arena_of_theirs_mapped() {
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    // Each result kept (as an `AsyncResult` keeps its answer), each from a worker of its own.
    let pending: Vec<_> = (0..300u32)
        .map(|x| pool.apply_async(a_block_answer, x).unwrap())
        .collect();
    for (x, r) in pending.iter().enumerate() {
        let v = r.get().unwrap_or_else(|e| panic!("answer {x}: {e}"));
        assert!(
            v.len() == super::wire::SHARED_PAYLOAD_BYTES + 64 && v.iter().all(|&b| b == x as u8)
        );
    }
}

fn byte_count(v: Vec<u8>) -> usize {
    v.len()
}

/// Found by review: a task too large for its worker's ring at once (its frames are sent as the worker
/// takes them) was judged to have started when the worker died before its last frame was sent, and
/// failed with `WorkerDied` (or used up its retry) though the worker never had the whole of it. It
/// runs on the replacement, as a task still waiting in a dead worker's ring does.
#[test]
fn a_task_not_wholly_sent_to_a_worker_that_died_runs_on_its_replacement() {
    let key = crate::process::fnref::FnKey::random();
    let mut d = bare_dispatcher_with_key(1, key);
    let victim = d.worker_pids()[0];
    // A pool only for the job's engine: its own workers take no part.
    let pool = Pool::builder().workers(1).build().unwrap();
    let job = super::Job::new(1, &pool.engine);
    // Inline (under the size that goes in a shared block), and more frames than a task ring holds.
    let len = super::wire::SHARED_PAYLOAD_BYTES - 4096;
    let items = [vec![7u8; len]];
    let payload =
        postcard::to_allocvec(&super::item_wire::ArgsToWire::<Vec<u8>, _>::new(&items)).unwrap();
    let f = super::worker::map_fn(byte_count).sign(&key);
    // First a task the worker answers: it is past its initializer (see `Dispatcher::judge_death`).
    let first = super::Job::new(1, &pool.engine);
    let small = postcard::to_allocvec(&super::item_wire::ArgsToWire::<Vec<u8>, _>::new(&[vec![
        1u8,
    ]]))
    .unwrap();
    let spec =
        super::dispatcher::task_spec(first.clone(), 0, f, super::wire::Payload::Inline(small));
    d.submit(vec![spec.unwrap()]);
    let start = std::time::Instant::now();
    while first.state.lock().unwrap().remaining > 0 && start.elapsed() < BOUND {
        d.tick(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(matches!(
        first.state.lock().unwrap().chunks[0],
        Some(super::results::ChunkOutcome::Ran(Ok(_)))
    ));
    // Stopped, the worker takes no frame: the ring fills and the rest of the task waits to be sent
    // (nothing ticks meanwhile) when it dies.
    // SAFETY: kill has no memory preconditions; `victim` is a worker of this test.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGSTOP) }, 0);
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{victim}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    let start = std::time::Instant::now();
    while !stopped() && start.elapsed() < BOUND {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(stopped(), "the worker did not stop");
    let spec =
        super::dispatcher::task_spec(job.clone(), 0, f, super::wire::Payload::Inline(payload))
            .unwrap();
    d.submit(vec![spec]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let start = std::time::Instant::now();
    while job.state.lock().unwrap().remaining > 0 && start.elapsed() < BOUND {
        d.tick(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let outcome = job.state.lock().unwrap().chunks[0].take();
    match outcome {
        Some(super::results::ChunkOutcome::Ran(Ok(items))) => {
            let n = postcard::from_bytes::<super::item_wire::ValueFromWire<usize>>(
                items[0].as_ref().unwrap().as_slice(),
            )
            .unwrap()
            .0;
            assert_eq!(n, len);
        }
        other => panic!("the task never started, yet: {other:?}"),
    }
    assert!(!d.worker_pids().contains(&victim));
    d.terminate();
    drop(std::mem::take(&mut d.dead));
}
