//! Cache hints: prefetching the lines a ring operation is about to claim or read.
//!
//! A batch claims its slots one compare-and-swap at a time, and a locked instruction lets no later
//! load start before it completes, so the cache misses on consecutive slots (each line last written by
//! the other process) would be taken one after another. A prefetch is not held back that way: issued a
//! few slots ahead, the misses overlap. Hints only: they never fault, whatever the address, and change
//! nothing but which lines the cache holds.

/// Asks for the line holding `p` in a state this CPU can write (`prefetchw` on x86-64, `prfm pstl1keep`
/// on AArch64; nothing elsewhere). On an x86-64 CPU without the instruction it decodes as a no-op.
#[inline(always)]
pub(crate) fn prefetch_for_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetchw` is a hint: it does not fault on any address, reads or writes no memory as
    // far as the program can tell, and leaves registers, flags and the stack alone (the options say so).
    unsafe {
        std::arch::asm!("prefetchw [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above: `prfm` is a hint that never faults and has no architectural effect.
    unsafe {
        std::arch::asm!("prfm pstl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// Asks for the line holding `p` for reading (`prefetcht0` / `prfm pldl1keep`; nothing elsewhere).
#[inline(always)]
pub(crate) fn prefetch_for_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `prefetch_for_write`: a hint with no architectural effect, never a fault.
    unsafe {
        std::arch::asm!("prefetcht0 [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}
