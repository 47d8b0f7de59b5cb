//! Queues of any size across processes (issue 13): an unbounded queue holding 100 MiB with no consumer
//! yet, drained in order by a consumer process; an 8 MiB message through a bounded queue from a producer
//! that exits before it is taken; producers SIGKILLed while they spill or grow the queue; garbage
//! written into a spill reference, the unbounded queue's control and a segment's record; and, after
//! every test, no block of the queue left in `/dev/shm`. The janitor (`cleanup_stale`) removes every
//! block of queues whose every user was SIGKILLed, none of a queue still attached in another process,
//! and leaves alone a group whose anchor is garbage.
//!
//! Every wait is bounded by [`BOUND`], generously: the bound proves "no hang" and never measures speed.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use libtest_mimic::Trial;
use mproc::codec::RawSlice;
use mproc::{Error, Queue};

use crate::common::{
    self, bounded, fields, handle_from_hex, handle_to_hex, next_random, say, shm_path, Kid, Role,
};
use crate::queue::BOUND;

/// Size of the region header in front of every payload (`src/region/header.rs`, `PAYLOAD_OFFSET`).
const REGION_HEADER: u64 = 128;

/// Raw bytes: no serialization, so that even a debug build moves megabytes quickly.
pub(crate) type Bytes = Queue<Vec<u8>, RawSlice<u8>>;

pub const ROLES: &[Role] = &[
    ("queue_unbounded_drain", drain),
    ("queue_unbounded_put_big", put_big),
    ("queue_unbounded_producer", producer),
    ("queue_unbounded_fill_and_hold", fill_and_hold),
    ("queue_unbounded_fill_wait_drain", fill_wait_drain),
];

pub fn tests() -> Vec<Trial> {
    let t = |name: &str, f: fn()| common::trial("queue_unbounded", name, f);
    vec![
        t(
            "hundred_mib_in_flight_then_a_child_drains_in_order",
            hundred_mib,
        ),
        t(
            "consumers_taking_turns_keep_no_finished_segment_mapped",
            consumers_taking_turns,
        ),
        t(
            "eight_mib_message_through_a_bounded_queue",
            eight_mib_bounded,
        ),
        t("producer_killed_mid_spill_bounded", || kill_storm(false)),
        t("producer_killed_mid_grow_unbounded", || kill_storm(true)),
        t(
            "garbage_spill_reference_is_a_typed_error",
            garbage_spill_ref,
        ),
        t(
            "sparse_messages_claiming_a_tebibyte_are_typed_errors",
            sparse_forgeries,
        ),
        t(
            "garbage_unbounded_control_is_a_typed_error",
            garbage_control,
        ),
        t(
            "every_user_killed_then_cleanup_stale_removes_all_blocks",
            all_users_killed,
        ),
        t(
            "cleanup_stale_keeps_the_blocks_of_a_queue_alive_elsewhere",
            alive_elsewhere,
        ),
        t(
            "cleanup_stale_leaves_a_group_with_a_garbage_anchor",
            garbage_anchor,
        ),
    ]
}

// ------------------------------------------------------------------------------------------ helpers

/// Message `id` of `len` bytes: the id in its first 8 bytes, every other byte a tag of the id.
pub(crate) fn message(id: u64, len: usize) -> Vec<u8> {
    let mut m = vec![(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8; len.max(8)];
    m[..8].copy_from_slice(&id.to_le_bytes());
    m
}

/// The id of an intact message, or what is wrong with it.
pub(crate) fn check(m: &[u8]) -> Result<u64, String> {
    let id = u64::from_le_bytes(m.get(..8).ok_or("short")?.try_into().expect("8"));
    let tag = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    if m[8..].iter().any(|&b| b != tag) {
        return Err(format!("message {id} is torn"));
    }
    Ok(id)
}

/// `/dev/shm` entries of the blocks of the queue with handle `h` (spilled messages, segments). The
/// queue's id is read from the handle's `Debug` form, the one public place it shows.
pub(crate) fn block_files(h: &mproc::RegionHandle) -> Vec<String> {
    group_files(queue_id(h))
}

/// The id of the queue with handle `h`, read from the handle's `Debug` form.
pub(crate) fn queue_id(h: &mproc::RegionHandle) -> u64 {
    let dbg = format!("{h:?}");
    dbg.split("id: ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {dbg}"))
}

/// Every `/dev/shm` entry of queue `id`'s group: its blocks and its anchor (`mproc.q<id>-*`).
pub(crate) fn group_files(id: u64) -> Vec<String> {
    let prefix = format!("mproc.q{id:016x}-");
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// What is left of queue `id`'s group once its last handle here is dropped: empty at once, unless a
/// child that another test of the suite forked meanwhile holds the queue (a forked child holds every
/// queue of its parent while it lives, and removes the group if it ends last). So it is polled for up
/// to half of `BOUND`: a group nobody removes stays, and is returned.
pub(crate) fn group_files_once_released(id: u64) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let left = group_files(id);
        if left.is_empty() || start.elapsed() > BOUND / 2 {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`group_files_once_released`] for the queue with handle `h`.
pub(crate) fn block_files_once_released(h: &mproc::RegionHandle) -> Vec<String> {
    group_files_once_released(queue_id(h))
}

// ------------------------------------------------------------------------- 1. 100 MiB, then a consumer

/// Child: opens the queue `name` and takes `count` messages, checking each one's id is the next.
fn drain(arg: &str) {
    let [name, count] = fields(arg, ',');
    let q = Bytes::open(name).expect("open queue");
    let count: u64 = count.parse().expect("count");
    for want in 0..count {
        let m = q.get_timeout(BOUND).expect("get");
        assert_eq!(check(&m), Ok(want), "out of order or torn");
    }
    say(&format!("drained {count}"));
}

/// 100 messages of 1 MiB go into an unbounded queue that nobody reads (no put waits), then a consumer
/// process opens it by name and takes all of them in order; dropping the queue leaves no block.
fn hundred_mib() {
    const N: u64 = 100;
    let name = common::unique_name("unb100");
    let q = Bytes::create_unbounded(&name).expect("create");
    let h = q.handle();
    let q = bounded("100 puts into an unbounded queue", BOUND, move || {
        for id in 0..N {
            q.try_put(&message(id, 1 << 20)).expect("put never waits");
        }
        q
    });
    assert_eq!(q.len(), N as usize);
    assert!(!block_files(&h).is_empty());
    let segments = segment_inodes(queue_id(&h));
    let mut kid = Kid::spawn("queue_unbounded_drain", &format!("{name},{N}"), BOUND);
    kid.expect_line(&format!("drained {N}"));
    kid.join_ok();
    assert!(q.is_empty());
    // The idle producer let go of the segments it was done with: it keeps at most the one that was
    // the head at its last put (until 2026-12-01 it mapped all seven until its next new segment, 63 MiB
    // the consumer had finished with and the system could not have back).
    assert!(
        mapped_unlinked(&segments) <= 1,
        "{}",
        mapped_unlinked(&segments)
    );
    drop(q);
    assert_eq!(block_files_once_released(&h), Vec::<String>::new());
}

/// The inodes of queue `id`'s segment files now in `/dev/shm`.
fn segment_inodes(id: u64) -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    group_files(id)
        .iter()
        .filter(|n| n.contains("-g"))
        .filter_map(|n| std::fs::metadata(format!("/dev/shm/{n}")).ok())
        .map(|m| m.ino())
        .collect()
}

/// How many of the files `inodes` this process still maps although they were unlinked: memory the
/// system cannot have back while the mapping lives. Read through `/proc/self/map_files`.
fn mapped_unlinked(inodes: &std::collections::BTreeSet<u64>) -> usize {
    use std::os::unix::fs::MetadataExt;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut seen = std::collections::BTreeSet::new();
    for line in maps.lines().filter(|l| l.contains("/dev/shm/")) {
        let range = line.split_whitespace().next().expect("an address range");
        let md = match std::fs::metadata(format!("/proc/self/map_files/{range}")) {
            Ok(md) => md,
            // Unmapped since `maps` was read (other tests of this process open and drop regions
            // meanwhile, and opening one maps its header before its payload): not mapped any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                panic!(
                    "stat /proc/self/map_files (needs CAP_SYS_ADMIN: the tests run as root): {e}"
                )
            }
        };
        if md.nlink() == 0 && inodes.contains(&md.ino()) {
            seen.insert(md.ino());
        }
    }
    seen.len()
}

/// Two consumers taking turns: each segment is finished by one of them; the other must not keep its
/// mapping of it (until 2026-12-01 a consumer never let go of a segment another one finished, so what
/// two consumers pinned grew with everything that went through the queue).
fn consumers_taking_turns() {
    const N: u64 = 100;
    let a = Bytes::unbounded().expect("create");
    let b = Bytes::from_handle(&a.handle()).expect("a second attachment");
    for id in 0..N {
        a.put(&message(id, 1 << 20)).expect("put");
    }
    let segments = segment_inodes(queue_id(&a.handle()));
    assert!(segments.len() >= 7, "{segments:?}");
    for id in 0..N {
        let c = if id % 2 == 0 { &a } else { &b };
        assert_eq!(check(&c.get_timeout(BOUND).expect("get")), Ok(id));
    }
    assert!(a.is_empty());
    assert_eq!(mapped_unlinked(&segments), 0);
}

// --------------------------------------------------------------------- 2. 8 MiB through a bounded queue

/// Child: attaches to the queue from its handle, puts one `size`-byte message and exits.
fn put_big(arg: &str) {
    let [hex, size] = fields(arg, ',');
    let q: Bytes = handle_from_hex(hex).expect("queue from handle");
    q.put(&message(7, size.parse().expect("size")))
        .expect("put");
    say("put");
}

/// A producer process puts an 8 MiB message into a bounded queue of 1 KiB slots and exits; the parent
/// takes it afterwards, whole: a spilled message outlives its producer.
fn eight_mib_bounded() {
    let q: Bytes = Queue::new(4).expect("create");
    let mut kid = Kid::spawn(
        "queue_unbounded_put_big",
        &format!("{},{}", handle_to_hex(&q), 8 << 20),
        BOUND,
    );
    kid.expect_line("put");
    kid.join_ok();
    let m = q.get_timeout(BOUND).expect("get");
    assert_eq!(m.len(), 8 << 20);
    assert_eq!(check(&m), Ok(7));
    let h = q.handle();
    drop(q);
    assert_eq!(block_files_once_released(&h), Vec::<String>::new());
}

// ------------------------------------------------------------------- 3. producers killed mid-spill/grow

/// Child: puts messages `base + i` of 100 KiB..3 MiB into the queue `name` for ever.
fn producer(arg: &str) {
    let [name, base] = fields(arg, ',');
    let q = Bytes::open(name).expect("open");
    let base: u64 = base.parse().expect("base");
    let mut rng = base | 1;
    say("ready");
    for i in 0.. {
        let len = 100 * 1024 + (next_random(&mut rng) % (3 << 20)) as usize;
        match q.put(&message(base + i, len)) {
            Ok(()) => {}
            Err(Error::Closed) => return,
            Err(e) => panic!("put: {e}"),
        }
    }
}

/// Producer processes putting large messages (spilled through a bounded queue of 64-byte slots, or
/// growing an unbounded queue segment by segment) are SIGKILLed at random moments, 20 times, while the
/// parent reads. Every message read is whole and each producer's come in order; afterwards the queue
/// works for the survivors, and once it is dropped none of its blocks remains in `/dev/shm`, orphans
/// of the killed producers included.
fn kill_storm(unbounded: bool) {
    const ROUNDS: u64 = 20;
    let seed = common::seed();
    let mut rng = seed;
    let name = common::unique_name(if unbounded { "kgrow" } else { "kspill" });
    let q = if unbounded {
        Bytes::create_unbounded(&name).expect("create")
    } else {
        Bytes::create(&name, 2, 64).expect("create")
    };
    let h = q.handle();
    let reader = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut last = std::collections::BTreeMap::new();
            let mut problems = Vec::new();
            let mut got = 0u64;
            loop {
                match q.get_timeout(BOUND) {
                    Ok(m) => match check(&m) {
                        Ok(id) => {
                            got += 1;
                            let (p, i) = (id >> 32, id & 0xffff_ffff);
                            if last.insert(p, i).is_some_and(|prev| prev >= i) {
                                problems.push(format!("producer {p}: {i} out of order"));
                            }
                        }
                        Err(e) => problems.push(e),
                    },
                    Err(Error::Closed) => return (got, problems),
                    Err(e) => problems.push(format!("get: {e}")),
                }
            }
        })
    };
    let spawn = |p: u64| {
        let mut k = Kid::spawn(
            "queue_unbounded_producer",
            &format!("{name},{}", p << 32),
            BOUND,
        );
        k.expect_line("ready");
        k
    };
    let mut kid = spawn(1);
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_micros(
            5_000 + next_random(&mut rng) % 75_000,
        ));
        kid.kill();
        kid = spawn(round + 2);
    }
    kid.kill();
    // The survivors go on: a message after the storm arrives whole.
    q.put(&message(u64::MAX >> 1, 5 << 20)).expect("put after");
    q.close();
    let (got, problems) = bounded("the reader ends", BOUND, move || {
        reader.join().expect("reader")
    });
    assert!(
        problems.is_empty(),
        "seed {seed:#x}: {} problems: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(got > 0, "seed {seed:#x}: nothing read");
    eprintln!("queue_unbounded::kill_storm(unbounded: {unbounded}): {got} messages read");
    drop(q);
    let left = block_files_once_released(&h);
    assert_eq!(
        left,
        Vec::<String>::new(),
        "seed {seed:#x}: blocks left after the last handle"
    );
    assert!(!shm_path(&name).exists());
}

// --------------------------------------------------------------------------------------- 4. garbage

fn rw(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .expect("open the segment's file")
}

/// The `/dev/shm` entry `entry` (a full file name), open for writing.
fn rw_entry(entry: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{entry}"))
        .expect("open the block's file")
}

/// Bytes written over a spill reference in a slot (as another process could) make `get` fail with a
/// typed error, at once; the queue goes on.
///
/// Layout used: a queue of 64-byte messages (raw bytes: the encoding is the message) has 65-byte slots (one byte more, so that a slot of exactly
/// 65 bytes is a reference), a 192-byte stride; slot 0's head is at 128 (region header) + 384 (ring
/// header) and its bytes 64 further: the reference is magic, nonce, length.
fn garbage_spill_ref() {
    const SLOT0_DATA: u64 = REGION_HEADER + 384 + 64;
    for (what, at, bytes) in [
        ("nonce", SLOT0_DATA + 8, 0x1234_5678_u64.to_le_bytes()),
        ("length", SLOT0_DATA + 16, (1u64 << 62).to_le_bytes()),
        ("magic", SLOT0_DATA, *b"garbage!"),
    ] {
        let name = common::unique_name("spillref");
        let q = Bytes::create(&name, 2, 64).expect("create");
        let h = q.handle();
        q.put(&message(1, 4096)).expect("put a spilled message");
        rw(&name).write_all_at(&bytes, at).expect("write garbage");
        let q = bounded("get with a garbage spill reference", BOUND, move || {
            let r = q.get_timeout(Duration::from_secs(5));
            assert!(matches!(r, Err(Error::Corrupted(_))), "{what}: {r:?}");
            q.put(&message(2, 4096)).expect("put after");
            assert_eq!(check(&q.get().expect("get after")), Ok(2));
            q
        });
        drop(q);
        assert_eq!(
            block_files_once_released(&h),
            Vec::<String>::new(),
            "{what}"
        );
    }
}

/// A peer makes a queued message's file a sparse 1 TiB one (truncated larger, costing it nothing) and
/// every size word claim all of it: a spilled message's block (header size, and the reference in the
/// slot), or an unbounded queue's segment (header size, `used`, the record's length). `get` fails with
/// a typed error instead of sizing its copy by those words (until 2026-12-01: "memory allocation of
/// 1099511627776 bytes failed", and the consumer aborted; found by review).
fn sparse_forgeries() {
    const SLOT0_DATA: u64 = REGION_HEADER + 384 + 64; // as in `garbage_spill_ref`
    const HDR_PAYLOAD_SIZE: u64 = 24; // the region header's payload size word
    const HUGE: u64 = 1 << 40;
    let name = common::unique_name("sparsespill");
    let q = Bytes::create(&name, 2, 64).expect("create");
    q.put(&message(1, 4096)).expect("put a spilled message");
    let block = group_files(queue_id(&q.handle()))
        .into_iter()
        .find(|n| n.contains("-s"))
        .expect("the spilled message's block");
    let f = rw_entry(&block);
    f.set_len(REGION_HEADER + HUGE).expect("ftruncate");
    f.write_all_at(&HUGE.to_le_bytes(), HDR_PAYLOAD_SIZE)
        .expect("size word");
    rw(&name)
        .write_all_at(&HUGE.to_le_bytes(), SLOT0_DATA + 16)
        .expect("reference length");
    let q = bounded("get of a sparse spilled message", BOUND, move || {
        let r = q.get_timeout(Duration::from_secs(5));
        assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
        q
    });
    drop(q);

    let name = common::unique_name("sparseseg");
    let q = Bytes::create_unbounded(&name).expect("create");
    q.put(&message(1, 100)).expect("put");
    let seg = group_files(queue_id(&q.handle()))
        .into_iter()
        .find(|n| n.ends_with("-g0000000000000001"))
        .expect("segment 1");
    let f = rw_entry(&seg);
    let payload = HUGE + 64 + 8;
    f.set_len(REGION_HEADER + payload).expect("ftruncate");
    f.write_all_at(&payload.to_le_bytes(), HDR_PAYLOAD_SIZE)
        .expect("size word");
    f.write_all_at(&(HUGE + 8).to_le_bytes(), REGION_HEADER + 8)
        .expect("used");
    f.write_all_at(&HUGE.to_le_bytes(), REGION_HEADER + 64)
        .expect("record length");
    let q = bounded("get of a sparse segment's record", BOUND, move || {
        let r = q.get_timeout(Duration::from_secs(5));
        assert!(matches!(r, Err(Error::Corrupted(_))), "{r:?}");
        q
    });
    drop(q);
}

/// Bytes written over the unbounded queue's control (its read offset, its head segment) and over a
/// record's length inside a segment make `get` fail with a typed error, within its timeout.
///
/// Layout used (`src/queue/unbounded.rs`, `LogControl`): after the 128-byte region header, a 16-byte
/// lock, `closed` and padding, then `head_seg` at 152 and `head_off` at 160. Segment 1 is
/// `q<id>-g0000000000000001`; its records start 64 bytes into its payload, a `u64` length first.
fn garbage_control() {
    const HEAD_SEG: u64 = REGION_HEADER + 24;
    const HEAD_OFF: u64 = REGION_HEADER + 32;
    for (what, at, word) in [
        ("head_off", Some(HEAD_OFF), 12_345u64),
        ("head_seg", Some(HEAD_SEG), 0xffff_ffff_0000),
        ("record length", None, u64::MAX - 3),
    ] {
        let name = common::unique_name("unbctl");
        let q = Bytes::create_unbounded(&name).expect("create");
        let h = q.handle();
        q.put(&message(1, 100)).expect("put");
        match at {
            Some(at) => rw(&name).write_all_at(&word.to_le_bytes(), at),
            None => {
                let seg = block_files(&h)
                    .into_iter()
                    .find(|n| n.ends_with("-g0000000000000001"))
                    .expect("segment 1");
                rw(seg.strip_prefix("mproc.").expect("prefix"))
                    .write_all_at(&word.to_le_bytes(), REGION_HEADER + 64)
            }
        }
        .expect("write garbage");
        let q = bounded("get with a garbage control", BOUND, move || {
            let r = q.get_timeout(Duration::from_secs(5));
            assert!(matches!(r, Err(Error::Corrupted(_))), "{what}: {r:?}");
            q
        });
        drop(q);
        assert_eq!(
            block_files_once_released(&h),
            Vec::<String>::new(),
            "{what}"
        );
    }
}

// ------------------------------------------------------------------- 5. the janitor and queue blocks

/// Spilled messages put into the bounded queue of the janitor tests (4 KiB each, slots of 64 bytes),
/// and 900 KiB messages put into the unbounded one (three segments: 1, 2 and 4 MiB).
const SPILLED: u64 = 4;
const GROWN: u64 = 4;

/// Creates (`create`) or opens the queues `bname` (bounded, 64-byte slots) and `uname` (unbounded)
/// and puts [`SPILLED`] spilled and [`GROWN`] large messages, ids starting at `base`.
fn fill(bname: &str, uname: &str, create: bool, base: u64) -> (Bytes, Bytes) {
    let (b, u) = if create {
        (
            Bytes::create(bname, 2 * SPILLED as usize, 64).expect("create bounded"),
            Bytes::create_unbounded(uname).expect("create unbounded"),
        )
    } else {
        (
            Bytes::open(bname).expect("open bounded"),
            Bytes::open(uname).expect("open unbounded"),
        )
    };
    for i in 0..SPILLED {
        b.put(&message(base + i, 4096)).expect("spill");
    }
    for i in 0..GROWN {
        u.put(&message(base + i, 900 << 10)).expect("grow");
    }
    (b, u)
}

/// Child: `fill`s the queues (`create` or `open`), says their ids and waits to be killed.
fn fill_and_hold(arg: &str) {
    let [bname, uname, mode, base] = fields(arg, ',');
    let (b, u) = fill(bname, uname, mode == "create", base.parse().expect("base"));
    say(&format!(
        "ready {} {}",
        queue_id(&b.handle()),
        queue_id(&u.handle())
    ));
    let _keep = (b, u);
    common::sleep_forever()
}

/// Child: creates and `fill`s the queues, says their ids, waits for a message on the queue `ctl`, then
/// takes every message of both, in order, and exits (its drop is the queues' last).
fn fill_wait_drain(arg: &str) {
    let [bname, uname, ctl] = fields(arg, ',');
    let (b, u) = fill(bname, uname, true, 0);
    say(&format!(
        "ready {} {}",
        queue_id(&b.handle()),
        queue_id(&u.handle())
    ));
    let ctl = Queue::<u32>::open(ctl).expect("open control queue");
    assert_eq!(ctl.get_timeout(BOUND).expect("go"), 1);
    for (q, n) in [(&b, SPILLED), (&u, GROWN)] {
        for want in 0..n {
            let m = q.get_timeout(BOUND).expect("get");
            assert_eq!(check(&m), Ok(want), "out of order or torn");
        }
        assert!(q.is_empty());
    }
    say("drained");
}

/// The two ids of a "ready <id> <id>" line.
fn ready_ids(line: &str) -> [u64; 2] {
    let [tag, b, u] = fields(line, ' ');
    assert_eq!(tag, "ready", "{line}");
    [b, u].map(|s| s.parse().expect("id"))
}

/// Both queues (one with spilled messages, one grown to three segments) are used by two processes,
/// one that created them and one that opened them by name; both are SIGKILLed, so no last user ever
/// cleans up. `cleanup_stale` then removes every `mproc.q<id>-*` file of both (blocks and anchors),
/// and reports them, and the queues' own regions (their creator is dead).
fn all_users_killed() {
    let (bname, uname) = (common::unique_name("jkb"), common::unique_name("jku"));
    let mut maker = Kid::spawn(
        "queue_unbounded_fill_and_hold",
        &format!("{bname},{uname},create,0"),
        BOUND,
    );
    let ids = ready_ids(&maker.next_line());
    let mut opener = Kid::spawn(
        "queue_unbounded_fill_and_hold",
        &format!("{bname},{uname},open,100"),
        BOUND,
    );
    assert_eq!(ready_ids(&opener.next_line()), ids);
    // Held from before the kills: another test's sweep between them and ours would take (and report)
    // these groups itself, once nobody is attached (it did, now and then, under `-- stale`).
    let _sweep = crate::region::sweep_lock();
    maker.kill();
    opener.kill();
    let before: Vec<String> = ids.iter().flat_map(|&id| group_files(id)).collect();
    // Spilled messages of both processes, at least two segments, and both anchors.
    assert!(before.len() >= 2 * SPILLED as usize + 2 + 2, "{before:?}");
    let removed = mproc::cleanup_stale().expect("cleanup_stale");
    for f in &before {
        let user = f.strip_prefix("mproc.").expect("prefix");
        assert!(
            removed.iter().any(|r| r == user),
            "{f} not reported: {removed:?}"
        );
    }
    for id in ids {
        assert_eq!(group_files(id), Vec::<String>::new(), "queue {id:#x}");
    }
    assert!(
        removed.contains(&bname) && removed.contains(&uname),
        "{removed:?}"
    );
    assert!(!shm_path(&bname).exists() && !shm_path(&uname).exists());
}

/// A child holds both queues (spilled messages, three segments); `cleanup_stale` in this process
/// removes none of their blocks; then the child takes every message, whole and in order.
fn alive_elsewhere() {
    let (bname, uname, ctl) = (
        common::unique_name("jab"),
        common::unique_name("jau"),
        common::unique_name("jactl"),
    );
    let go = Queue::<u32>::create(&ctl, 1, 16).expect("control queue");
    let mut kid = Kid::spawn(
        "queue_unbounded_fill_wait_drain",
        &format!("{bname},{uname},{ctl}"),
        BOUND,
    );
    let ids = ready_ids(&kid.next_line());
    let mut before: Vec<String> = ids.iter().flat_map(|&id| group_files(id)).collect();
    before.sort();
    assert!(before.len() >= SPILLED as usize + 2 + 2, "{before:?}");
    {
        let _sweep = crate::region::sweep_lock();
        let removed = mproc::cleanup_stale().expect("cleanup_stale");
        let ours: Vec<&String> = removed
            .iter()
            .filter(|r| ids.iter().any(|id| r.starts_with(&format!("q{id:016x}-"))))
            .collect();
        assert!(ours.is_empty(), "blocks of a live queue removed: {ours:?}");
    }
    let mut after: Vec<String> = ids.iter().flat_map(|&id| group_files(id)).collect();
    after.sort();
    assert_eq!(after, before);
    go.put(&1).expect("go");
    kid.expect_line("drained");
    kid.join_ok();
    for id in ids {
        assert_eq!(group_files(id), Vec::<String>::new(), "queue {id:#x}");
    }
}

/// The anchor of a group whose users were all killed is replaced by garbage: a symlink (to one of the
/// group's own blocks), a file with bytes in it, a file of another user (when the tests run as root).
/// `cleanup_stale` leaves the garbage and the group's blocks alone, without failing. Once the garbage
/// is gone, the group has no anchor: the janitor anchors it itself and removes it all.
fn garbage_anchor() {
    let mut kid = Kid::spawn(
        "queue_unbounded_fill_and_hold",
        &format!(
            "{},{},create,0",
            common::unique_name("jgb"),
            common::unique_name("jgu")
        ),
        BOUND,
    );
    let [id, uid_q] = ready_ids(&kid.next_line());
    kid.kill();
    let _sweep = crate::region::sweep_lock();
    let anchor = std::path::PathBuf::from(format!("/dev/shm/mproc.q{id:016x}-anchor"));
    let blocks: Vec<String> = group_files(id)
        .into_iter()
        .filter(|n| !n.ends_with("-anchor"))
        .collect();
    assert_eq!(blocks.len(), SPILLED as usize, "{blocks:?}");
    let block = std::path::PathBuf::from(format!("/dev/shm/{}", blocks[0]));
    let root = mproc_is_root();
    let kinds: &[&str] = if root {
        &["symlink", "bytes", "other user"]
    } else {
        eprintln!("garbage_anchor: not root, the other-user anchor is not tried");
        &["symlink", "bytes"]
    };
    for &kind in kinds {
        std::fs::remove_file(&anchor).expect("remove the anchor");
        match kind {
            "symlink" => std::os::unix::fs::symlink(&block, &anchor).expect("symlink"),
            "bytes" => std::fs::write(&anchor, b"not an anchor").expect("write"),
            _ => {
                std::fs::write(&anchor, b"").expect("write");
                std::os::unix::fs::chown(&anchor, Some(65534), Some(65534)).expect("chown");
            }
        }
        let removed = mproc::cleanup_stale().expect("cleanup_stale");
        let prefix = format!("q{id:016x}-");
        assert!(
            !removed.iter().any(|r| r.starts_with(&prefix)),
            "{kind}: {removed:?}"
        );
        assert!(
            anchor.symlink_metadata().is_ok(),
            "{kind}: the garbage went"
        );
        for b in &blocks {
            assert!(
                shm_path(b.strip_prefix("mproc.").expect("prefix")).exists(),
                "{kind}: {b}"
            );
        }
    }
    // No anchor at all: orphaned by construction.
    std::fs::remove_file(&anchor).expect("remove the garbage");
    let removed = mproc::cleanup_stale().expect("cleanup_stale");
    assert_eq!(group_files(id), Vec::<String>::new(), "{removed:?}");
    assert_eq!(group_files(uid_q), Vec::<String>::new(), "{removed:?}");
}

/// Whether this process runs as root (only root can give a file to another user).
fn mproc_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
