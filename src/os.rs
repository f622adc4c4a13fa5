//! The only module that talks to the operating system: address space
//! (`mmap`, `munmap`, `mremap`, `madvise`), the current CPU and the machine's
//! size. Everything above works on the addresses this module hands out.

use core::ptr::{self, NonNull};

pub(crate) const PAGE_SIZE: usize = 4096;

/// Whether the memory pcpalloc maps asks the kernel for transparent huge
/// pages (`PCPALLOC_THP`, or [`set_thp_mode`]), as jemalloc's `thp` option
/// and mimalloc's `allow_thp` do.
///
/// The default is `Never`. pcpalloc's zone hands out and purges memory in
/// 4 KiB pages, so a huge page behind it is resident whole from its first
/// byte and split by the first purge inside it. Measured on this project's
/// machine: with `Always` (THP `madvise` system-wide), mstress and
/// pair/262144 run no faster and mstress holds 2.2 MiB more; with THP
/// `always` system-wide and no advice (`Default`), json runs 1.39 times
/// slower (1.178 s against 0.848, five runs each) and glibc_simple, larson
/// and mstress hold 30-75% more RSS (8.5 MiB against 4.9, 16.9 against
/// 12.6, 12.8 against 9.9). `Default` leaves the decision to
/// `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThpMode {
    /// No advice: the system's setting decides.
    Default,
    /// `MADV_HUGEPAGE` on every mapping made from now on.
    Always,
    /// `MADV_NOHUGEPAGE` on every mapping made from now on.
    Never,
}

/// The mode as `ThpMode as u8`, or `THP_UNSET` until the first mapping (or
/// `set_thp_mode`) settles it.
static THP_MODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(THP_UNSET);
const THP_UNSET: u8 = u8::MAX;

/// Sets whether mappings made from now on ask for transparent huge pages
/// (mappings already made keep their advice); overrides `PCPALLOC_THP`.
pub fn set_thp_mode(mode: ThpMode) {
    THP_MODE.store(mode as u8, core::sync::atomic::Ordering::Relaxed);
}

/// The current [`ThpMode`]: what `set_thp_mode` set, else what
/// `PCPALLOC_THP=always|never|default` says, else `Never`. The environment
/// is read here, on the first mapping, not with the other settings on the
/// first section's hook: the first section's advice has to be right when
/// it is mapped, since `Default` (no flag) cannot be restored on a mapping
/// once advised.
pub fn thp_mode() -> ThpMode {
    use core::sync::atomic::Ordering::Relaxed;
    let mut v = THP_MODE.load(Relaxed);
    if v == THP_UNSET {
        let mode = match getenv(c"PCPALLOC_THP") {
            Some(b"always") => ThpMode::Always,
            Some(b"default") => ThpMode::Default,
            _ => ThpMode::Never,
        };
        // A racing `set_thp_mode` wins.
        v = match THP_MODE.compare_exchange(THP_UNSET, mode as u8, Relaxed, Relaxed) {
            Ok(_) => mode as u8,
            Err(now) => now,
        };
    }
    match v {
        x if x == ThpMode::Always as u8 => ThpMode::Always,
        x if x == ThpMode::Default as u8 => ThpMode::Default,
        _ => ThpMode::Never,
    }
}

/// An environment variable's value, read with `getenv` into no allocation.
pub(crate) fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; the returned string lives in the
    // environment block, which we only read, and nobody calls `setenv`
    // concurrently with an allocator's start-up in a sound program.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| core::ffi::CStr::from_ptr(p).to_bytes())
    }
}

/// Maps `size` bytes of fresh, zero-filled, read-write memory whose address is
/// a multiple of `align` (a power of two, at least a page). The mapping is
/// `MAP_NORESERVE`: physical memory is committed by the kernel on first touch,
/// so a large section costs address space, not RAM, and is not refused by the
/// overcommit heuristic. Returns `None` when the OS refuses.
pub(crate) fn map_aligned(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE && size.is_multiple_of(PAGE_SIZE));
    let span = if align > PAGE_SIZE { size.checked_add(align)? } else { size };
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = span - head - size;
    // SAFETY: both trimmed ranges lie inside the mapping just made and outside
    // the `size` bytes we keep.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: the mapping just made, ours.
    unsafe { advise_thp(aligned as *mut u8, size) };
    NonNull::new(aligned as *mut u8)
}

/// Gives `ptr..ptr + size` the current [`ThpMode`]'s advice (none for
/// `Default`). A kernel without THP refuses it, and the memory works the
/// same.
///
/// # Safety
/// The range must be a page-aligned part of a mapping of ours.
unsafe fn advise_thp(ptr: *mut u8, size: usize) {
    let advice = match thp_mode() {
        ThpMode::Default => return,
        ThpMode::Always => libc::MADV_HUGEPAGE,
        ThpMode::Never => libc::MADV_NOHUGEPAGE,
    };
    // SAFETY: advice only, on memory of ours (the caller's promise).
    unsafe { libc::madvise(ptr.cast(), size, advice) };
}

/// Returns a mapping made by [`map_aligned`] (or [`remap`]) to the OS.
///
/// # Safety
/// `ptr..ptr+size` must be exactly a mapping (or a page-aligned part of one)
/// that this crate made and that nobody uses any more.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, size: usize) {
    // SAFETY: the caller guarantees the range is ours and unused.
    unsafe {
        libc::munmap(ptr.as_ptr().cast(), size);
    }
}

/// Grows or shrinks a mapping, moving it if needed, without copying the pages.
///
/// # Safety
/// `ptr..ptr+old` must be a mapping made by this crate; on success it must no
/// longer be used through `ptr` unless the returned address equals it.
pub(crate) unsafe fn remap(ptr: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
    // SAFETY: the caller guarantees the range is one of our mappings.
    let raw = unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
    if raw == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(raw.cast())
    }
}

/// How freed memory is given back to the OS.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PurgeMode {
    /// `MADV_DONTNEED`: the pages leave RSS at once and read as zero after.
    DontNeed,
    /// `MADV_FREE`: the kernel takes the pages only under memory pressure;
    /// cheaper, but RSS does not drop until then, and the content is not
    /// known to be zero.
    Free,
}

/// Gives the physical pages of `ptr..ptr+size` back to the OS; the range
/// stays mapped. Returns whether the OS accepted.
///
/// # Safety
/// The range must be ours and hold nothing anybody still needs.
pub(crate) unsafe fn purge(ptr: *mut u8, size: usize, mode: PurgeMode) -> bool {
    let advice = match mode {
        PurgeMode::DontNeed => libc::MADV_DONTNEED,
        PurgeMode::Free => libc::MADV_FREE,
    };
    // SAFETY: the caller guarantees the range is ours and unused.
    unsafe { libc::madvise(ptr.cast(), size, advice) == 0 }
}

/// Makes `size` bytes from `ptr` resident and writable now, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14): for a block known to be zero that
/// the caller asked for zeroed and is about to write. Left to fault in, a
/// page read before it is written (a `vec![0; n]` that is searched, a
/// calloc'd table) costs two faults, the second a copy-on-write of the
/// shared zero page whose TLB flush interrupts every other CPU the process
/// runs on; mstress's threads spent half their time there after a purge.
/// A kernel without it (or short of memory) refuses, and the pages fault in
/// as before: the memory reads as zero either way.
///
/// # Safety
/// `ptr..ptr + size` must be page-aligned memory of ours, mapped read-write.
pub(crate) unsafe fn prefault_write(ptr: *mut u8, size: usize) {
    // SAFETY: the caller guarantees the range is ours; populating changes no
    // byte of it (the pages are zero before and after).
    unsafe { libc::madvise(ptr.cast(), size, libc::MADV_POPULATE_WRITE) };
}

/// How many of the `pages` pages from `ptr` are resident (`mincore`), or
/// `None` if the OS will not say. Counts in chunks through a stack buffer:
/// nothing is allocated.
///
/// # Safety
/// `ptr..ptr + pages * PAGE_SIZE` must be mapped and page-aligned.
pub(crate) unsafe fn resident_pages(ptr: *const u8, pages: usize) -> Option<usize> {
    let mut buf = [0u8; 1024];
    let mut resident = 0;
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(buf.len());
        // SAFETY: the caller guarantees the range is mapped; `buf` holds `n`
        // bytes.
        let r =
            unsafe { libc::mincore(ptr.add(done * PAGE_SIZE) as *mut libc::c_void, n * PAGE_SIZE, buf.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        resident += buf[..n].iter().filter(|&&b| b & 1 != 0).count();
        done += n;
    }
    Some(resident)
}

/// Coarse monotonic time in milliseconds (`CLOCK_MONOTONIC_COARSE`, served
/// by the vDSO without a syscall, a few nanoseconds, ticking every few ms).
#[inline]
pub(crate) fn coarse_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Where glibc keeps this thread's rseq area, as an offset from the thread
/// pointer: `usize::MAX` until looked up, `usize::MAX - 1` when rseq is not
/// available (glibc before 2.35, or `glibc.pthread.rseq=0`).
static RSEQ_OFFSET: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);
const RSEQ_UNKNOWN: usize = usize::MAX;
const RSEQ_NONE: usize = usize::MAX - 1;

/// The CPU this thread is running on now (it may be another one a moment
/// later: callers rely on the PCP's own lock for correctness, never on
/// staying put).
///
/// glibc ≥ 2.35 registers an rseq area for every thread, in which the
/// kernel keeps `cpu_id` current; reading it is two loads. `sched_getcpu()`
/// costs about thirty instructions (a vDSO call) and is the fallback.
#[inline]
pub(crate) fn current_cpu() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom)))]
    {
        let off = RSEQ_OFFSET.load(core::sync::atomic::Ordering::Relaxed);
        if off < RSEQ_NONE {
            let tp: usize;
            // SAFETY: on x86-64 Linux, %fs:0 holds the thread pointer (the
            // TCB's self pointer); reading it has no side effects.
            unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
            // SAFETY: glibc placed this thread's `struct rseq` at `tp + off`;
            // `cpu_id` is the u32 at offset 4, written by the kernel on
            // migration. A volatile read: it changes under us.
            let cpu = unsafe { core::ptr::read_volatile((tp.wrapping_add(off) + 4) as *const u32) };
            if (cpu as i32) >= 0 {
                return cpu as usize;
            }
        } else if off == RSEQ_UNKNOWN {
            lookup_rseq();
        }
    }
    sched_getcpu()
}

fn sched_getcpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
    }
}

/// Finds glibc's `__rseq_offset` and `__rseq_size` with `dlsym`, so that a
/// glibc without them still links and runs (on `sched_getcpu`).
#[cold]
fn lookup_rseq() {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols,
    // when present, are glibc's read-only `ptrdiff_t` and `unsigned int`.
    let off = unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if off.is_null() || size.is_null() || *size < 8 {
            RSEQ_NONE
        } else {
            *off as usize
        }
    };
    RSEQ_OFFSET.store(off, core::sync::atomic::Ordering::Relaxed);
}

/// CPUs that may ever run (configured, not just online): CPU ids can be
/// sparse and go up to this bound.
pub(crate) fn possible_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}

/// Writes a message to standard error without allocating.
pub(crate) fn write_stderr(bytes: &[u8]) {
    // SAFETY: the buffer is valid for its length.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

/// Ends the process at once after a fatal inconsistency. Never unwinds.
#[cfg(not(loom))]
pub(crate) fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Under loom a fatal inconsistency (a `bad_page`) panics instead, so that
/// loom reports the interleaving that led to it rather than the test
/// process dying without a word.
#[cfg(loom)]
pub(crate) fn abort() -> ! {
    panic!("pcpalloc: fatal inconsistency (bad page state, see the message above)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn current_cpu_agrees_with_sched_getcpu() {
        // The thread may migrate between the two reads; most reads agree.
        let agree = (0..1000).filter(|_| super::current_cpu() == super::sched_getcpu()).count();
        assert!(agree > 900, "{agree} of 1000 reads agreed");
        assert!(super::RSEQ_OFFSET.load(core::sync::atomic::Ordering::Relaxed) != super::RSEQ_UNKNOWN);
    }
}
