//! Copy-in: `SharedArray::from_slice` against a plain `memcpy` of the same bytes, measured in the same
//! run, for 1 MiB and 1 GiB of `f64`.
//!
//! The denominator of every `*_vs_memcpy_*` ratio is **memcpy**: `copy_from_slice` into a private
//! buffer written once before, i.e. this machine's copy bandwidth with no page to fault in. Against it:
//! - **from_slice, fresh**: the first `from_slice` of a process, into shared memory never used before
//!   (a new arena), measured in a spawned child per sample so that every sample is a first one. This is
//!   the headline `from_slice_vs_memcpy_*`: a program's first big array is the case that costs.
//! - **from_slice, reused**: a `from_slice` after the previous array was dropped; the heap hands the same
//!   block back, its pages already there. Like memcpy's, its timed call follows an untimed one (a loop's
//!   steady state: for 1 MiB the destination is then in the cache for both).
//! - **mmap copy, fresh**: what `from_slice` did before `Block::copy_in`, i.e. a `memcpy` through the
//!   mapping of a new memfd, page fault by page fault,
//! - **to_vec, fresh**: a copy into fresh *private* memory (`src.to_vec()`), for scale: what any copy to
//!   new memory costs on this machine, and
//! - **fallocate only**: `fallocate(2)` of the same size into a new memfd: the kernel providing fresh
//!   shared pages, with no copy at all. No fresh copy-in can beat it, so memcpy / floor
//!   (`fresh_shm_floor_vs_memcpy_1GiB`) is the most `from_slice_vs_memcpy_*` can reach on a machine. A
//!   generous bound: `fallocate` on shared memory does not even clear the pages (the kernel clears one
//!   at its first touch), so it leaves out touching the new memory at all, which any copy-in must do.
//!
//! The four fresh timings of a sample share one child, so they are comparable with each other (the
//! three copies in a rotating order, the floor last): where fresh pages come from moves these figures
//! more than anything `from_slice` does (see [`fallocate_fresh`]). Until 2026-12-01 the mmap copy and
//! `to_vec` ran in this process, on pages a child had just freed, while the child's `from_slice` came
//! after its own source had taken those: `from_slice_fresh_vs_mmap_copy_1GiB` read 0.37x; in one child
//! it read 1.43-3.06x in four quick runs the same day.
//!
//! Samples run round-robin so that a noisy period of the machine hits all variants alike.
//! `MPROC_BENCH_QUICK=1` takes fewer samples. Ends with the `result:` lines of the bench contract.

use std::hint::black_box;
use std::time::Instant;

use mproc::{Process, Region, SharedArray};

#[path = "common/mod.rs"]
mod common;

use common::Stats;

fn secs(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn gbps(bytes: usize, s: f64) -> f64 {
    bytes as f64 / s / 1e9
}

/// Copies `src` into a fresh shared array and checks both ends; returns the time and the array.
fn from_slice_kept(src: &[f64]) -> (f64, SharedArray<f64>) {
    let mut keep = None;
    let s = secs(|| keep = Some(SharedArray::from_slice(black_box(src)).expect("from_slice")));
    let a = keep.expect("set above");
    assert_eq!((a.first(), a.last()), (src.first(), src.last()));
    (s, a)
}

/// As [`from_slice_kept`], then drops the array (the block goes back to the heap).
fn from_slice_once(src: &[f64]) -> f64 {
    from_slice_kept(src).0
}

/// The three copies into fresh memory, each the first of its kind in a spawned child: `from_slice`
/// (whose heap has no arena yet), a `memcpy` through a new shared mapping, and `to_vec`. The child makes
/// its own source (untimed): a forked child would share this process's buffers copy-on-write, and every
/// later write to them here would fault. All three run in one child, in an order rotated by `turn`, and
/// each keeps its pages until the end: where fresh pages come from matters here more than how they are
/// filled (see [`fallocate_fresh`]), so no copy may hand another the pages it just freed, and none may
/// always come first. Then, in the same child and so under the same conditions, the kernel's floor
/// for the same amount of fresh shared memory. Returns seconds for from_slice, mmap copy, to_vec and
/// the floor.
fn fresh_in_child((n, turn): (usize, usize)) -> [f64; 4] {
    let src: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mut secs_of = [0.0; 3];
    let mut kept_array = None;
    let mut kept_region = None;
    let mut kept_vec = None;
    for k in 0..3 {
        let which = (k + turn) % 3;
        secs_of[which] = match which {
            0 => {
                let (s, a) = from_slice_kept(&src);
                kept_array = Some(a);
                s
            }
            1 => {
                let (s, r) = mmap_copy_fresh(&src);
                kept_region = Some(r);
                s
            }
            _ => {
                let mut v = Vec::new();
                let s = secs(|| v = black_box(&src).to_vec());
                assert_eq!(v.last(), src.last());
                kept_vec = Some(v);
                s
            }
        };
    }
    let floor = fallocate_fresh(std::mem::size_of_val(src.as_slice()));
    drop((kept_array, kept_region, kept_vec));
    [secs_of[0], secs_of[1], secs_of[2], floor]
}

fn fresh_copies(n: usize, turn: usize) -> [f64; 4] {
    let mut p = Process::new(fresh_in_child, (n, turn)).expect("process");
    p.start().expect("start");
    p.join().expect("the child's fresh copies")
}

/// The old way: a `memcpy` through the mapping of a brand-new shared segment. Returns the time and
/// the segment.
fn mmap_copy_fresh(src: &[f64]) -> (f64, Region) {
    let bytes = std::mem::size_of_val(src);
    let r = Region::anonymous(bytes).expect("region");
    // SAFETY: the payload is `bytes` long, freshly created, referenced by nothing else; `src` is a
    // private buffer, so the ranges cannot overlap.
    let s = secs(|| unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), r.as_ptr(), bytes)
    });
    (s, r)
}

/// The kernel's floor for fresh shared memory: `fallocate(2)` of `bytes` into a new memfd allocates
/// the pages a fresh `from_slice` must have, and copies nothing; it does not even clear them (shmem
/// clears a page at its first touch, and never one that a `pwrite` fills whole). No copy into fresh shared
/// memory can be faster, so `memcpy / this` is the best ratio a fresh `from_slice` could reach here.
///
/// Where fresh pages come from the hypervisor it is also what moves most between runs: this VM's kernel
/// reports freed memory to the host (virtio-balloon free page reporting), which takes it back, so a
/// page freed seconds ago costs a fault in the host when it is used again. That is why both figures
/// are measured in the same child, one after the other.
fn fallocate_fresh(bytes: usize) -> f64 {
    let fd = os::memfd("mproc-bench-floor");
    let s = secs(|| os::fallocate(&fd, bytes));
    drop(fd);
    s
}

struct Ratios {
    fresh: f64,
    reused: f64,
    fix: f64,
    floor: f64,
}

fn run(bytes: usize, reps: usize) -> Ratios {
    let n = bytes / 8;
    let src: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mut warm = vec![0.0f64; n];
    warm.copy_from_slice(&src);
    // Warm up the reused case: the heap's block exists from here on.
    from_slice_once(&src);
    let mut variants = [0u8, 1, 2];
    // The fresh child's other three timings, beside its from_slice (the round-robin's variant 1).
    let (mut mmaps, mut to_vecs, mut floors) = (vec![], vec![], vec![]);
    let mut turn = 0;
    let stats = common::round_robin(reps, &mut variants, |i, _| match i {
        0 => {
            // Untimed pass first: the spawn of the previous sample forked this process (std's
            // `Command` forks when a `pre_exec` hook is set), which write-protects every private page
            // here for copy-on-write; the first write to each would then fault.
            warm.copy_from_slice(&src);
            secs(|| warm.copy_from_slice(black_box(&src)))
        }
        1 => {
            let [fresh, mmap, to_vec, floor] = fresh_copies(n, turn);
            turn += 1;
            mmaps.push(mmap);
            to_vecs.push(to_vec);
            floors.push(floor);
            fresh
        }
        _ => {
            // As for memcpy: the timed call follows an untimed one, both in the steady state of a
            // loop (destination pages mapped, and cached for the small size).
            from_slice_once(&src);
            from_slice_once(&src)
        }
    });
    let [memcpy, fresh, reused]: [Stats; 3] = stats.try_into().expect("three variants");
    let (mmap, to_vec, floor) = (Stats::of(mmaps), Stats::of(to_vecs), Stats::of(floors));
    let size = if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    };
    println!("  {size}, median of {reps}, GB/s (min..max):");
    let line = |name: &str, s: Stats| {
        println!(
            "    {name:<26} {:>6.2}  ({:>5.2}..{:>5.2})   {:>5.2}x memcpy",
            gbps(bytes, s.median),
            gbps(bytes, s.max),
            gbps(bytes, s.min),
            memcpy.median / s.median
        );
    };
    line("memcpy (warm buffer)", memcpy);
    line("from_slice, fresh", fresh);
    line("from_slice, reused", reused);
    line("mmap copy, fresh (before)", mmap);
    line("to_vec, fresh private", to_vec);
    line("fallocate only (floor)", floor);
    println!(
        "    from_slice fresh vs mmap copy fresh: {:.2}x faster; fresh from_slice takes {:.2}x the \
         kernel's floor for fresh shared pages",
        mmap.median / fresh.median,
        fresh.median / floor.median
    );
    Ratios {
        fresh: memcpy.median / fresh.median,
        reused: memcpy.median / reused.median,
        fix: mmap.median / fresh.median,
        floor: memcpy.median / floor.median,
    }
}

fn main() {
    let quick = common::quick();
    let reps = if quick { 3 } else { 9 };
    println!(
        "mproc copy_in{}: SharedArray::from_slice vs memcpy of the same f64 data",
        if quick { " (quick)" } else { "" }
    );
    let small = run(1 << 20, reps * 10);
    let big = run(1 << 30, reps);
    common::result("from_slice_vs_memcpy_1MiB", small.fresh, 2, "x");
    common::result("from_slice_reused_vs_memcpy_1MiB", small.reused, 2, "x");
    common::result("from_slice_fresh_vs_mmap_copy_1MiB", small.fix, 2, "x");
    common::result("from_slice_vs_memcpy_1GiB", big.fresh, 2, "x");
    common::result("from_slice_reused_vs_memcpy_1GiB", big.reused, 2, "x");
    common::result("from_slice_fresh_vs_mmap_copy_1GiB", big.fix, 2, "x");
    common::result("fresh_shm_floor_vs_memcpy_1GiB", big.floor, 2, "x");
}

/// The unsafe code of this bench: a memfd and `fallocate(2)`, for the kernel's floor.
mod os {
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A new, empty memfd.
    pub fn memfd(name: &str) -> OwnedFd {
        let name = std::ffi::CString::new(name).expect("no NUL in the name");
        // SAFETY: `name` is a live NUL-terminated string; flags are valid.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Allocates `bytes` of pages in `fd` (mode 0: allocate and extend).
    pub fn fallocate(fd: &OwnedFd, bytes: usize) {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(bytes).expect("size fits off_t");
        // SAFETY: `fd` is a live descriptor owned by the caller; fallocate reads no memory of ours.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) };
        assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    }
}
