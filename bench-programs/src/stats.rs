//! Memory figures read inside a program: the process's resident set from
//! `/proc/self/status`, and how much memory the allocator holds for reuse,
//! from the allocator's own statistics where they can be reached.

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`), 0 if unreadable.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process's resident set now, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// The process's peak resident set so far, in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

/// What the allocator holds for reuse: memory it has taken from the OS and
/// keeps in caches (per thread, per CPU, in slabs) rather than in use.
#[derive(Clone, Debug)]
pub struct Held {
    /// Bytes held in caches, when the allocator's statistics tell; includes
    /// the program's few live objects where they cannot be told apart.
    pub cached: Option<u64>,
    /// The figures as the allocator names them.
    pub detail: String,
}

#[cfg_attr(all(feature = "jemalloc", not(feature = "jemalloc-stats")), allow(dead_code))]
const KIB: u64 = 1024;

/// Reads the allocator's statistics: `zoneinfo().pcp_pages`, the threads'
/// page caches (`stats().page_cache`) and the slab pages of `slabinfo()`
/// (thread caches, transfer batches and free objects all live in slab
/// pages).
#[cfg(all(feature = "pcpalloc", not(any(feature = "jemalloc", feature = "mimalloc", feature = "system"))))]
pub fn held() -> Held {
    let page = pcpalloc::PAGE_SIZE as u64;
    let zone = pcpalloc::zoneinfo();
    let slabs = pcpalloc::slabinfo();
    let all = pcpalloc::stats();
    let pcp = zone.pcp_pages as u64 * page;
    let mut slab_bytes = 0u64;
    let mut out_of_slabs = 0u64;
    let mut transfer = 0u64;
    for c in slabs.classes.iter() {
        slab_bytes += (c.num_slabs * c.pagesperslab) as u64 * page;
        out_of_slabs += (c.active_objs * c.objsize) as u64;
        transfer += (c.transfer_objs * c.objsize) as u64;
    }
    let page_cache = all.page_cache as u64;
    Held {
        cached: Some(pcp + page_cache + slab_bytes),
        detail: format!(
            "pcp_pages {} KiB + page caches {} KiB + slab pages {} KiB (objects out of slabs, in thread caches or live: {} KiB; \
             in transfer batches: {} KiB); stats(): cached {} KiB, resident {} KiB, buddy free {} KiB",
            pcp / KIB,
            page_cache / KIB,
            slab_bytes / KIB,
            out_of_slabs / KIB,
            transfer / KIB,
            all.cached as u64 / KIB,
            all.resident as u64 / KIB,
            zone.free_pages as u64 * page / KIB,
        ),
    }
}

/// Reads the allocator's statistics (`mallctl`, jemalloc built with stats).
#[cfg(all(feature = "jemalloc", feature = "jemalloc-stats"))]
pub fn held() -> Held {
    use std::ffi::{c_char, c_void, CStr};

    fn read(name: &CStr) -> Option<u64> {
        let mut v: usize = 0;
        let mut len = std::mem::size_of::<usize>();
        // SAFETY: `name` is NUL-terminated; every name read here is a size_t
        // mallctl, and `v` has room for the `len` bytes jemalloc writes.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr() as *const c_char,
                &mut v as *mut usize as *mut c_void,
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == std::mem::size_of::<usize>()).then_some(v as u64)
    }
    let mut epoch: u64 = 1;
    // SAFETY: "epoch" takes a uint64_t; writing it refreshes the statistics.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"epoch".as_ptr() as *const c_char,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut epoch as *mut u64 as *mut c_void,
            std::mem::size_of::<u64>(),
        );
    }
    let page = read(c"arenas.page").unwrap_or(4096);
    let (Some(allocated), Some(active), Some(tcache)) =
        (read(c"stats.allocated"), read(c"stats.active"), read(c"stats.arenas.4096.tcache_bytes"))
    else {
        return Held { cached: None, detail: "jemalloc statistics not readable".into() };
    };
    let dirty = read(c"stats.arenas.4096.pdirty").unwrap_or(0) * page;
    let muzzy = read(c"stats.arenas.4096.pmuzzy").unwrap_or(0) * page;
    let resident = read(c"stats.resident").unwrap_or(0);
    // `stats.allocated` counts the objects in thread caches as allocated;
    // what active pages hold beyond that is free space in slabs.
    let slack = active.saturating_sub(allocated);
    Held {
        cached: Some(tcache + slack),
        detail: format!(
            "tcache_bytes {} KiB + active-allocated {} KiB; dirty {} KiB, muzzy {} KiB, allocated {} KiB, \
             resident {} KiB",
            tcache / KIB,
            slack / KIB,
            dirty / KIB,
            muzzy / KIB,
            allocated / KIB,
            resident / KIB
        ),
    }
}

/// jemalloc's statistics are compiled out of the default build.
#[cfg(all(feature = "jemalloc", not(feature = "jemalloc-stats")))]
pub fn held() -> Held {
    Held { cached: None, detail: "jemalloc built without statistics (build with --features jemalloc-stats)".into() }
}

/// mimalloc reports no cache figure; what it has committed is the closest.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
pub fn held() -> Held {
    let (mut rss, mut commit) = (0usize, 0usize);
    // SAFETY: every out-parameter is either null (not wanted) or a valid usize.
    unsafe {
        libmimalloc_sys::mi_process_info(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut rss,
            std::ptr::null_mut(),
            &mut commit,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
    Held {
        cached: None,
        detail: format!(
            "no cache figure in mimalloc's API; committed {} KiB (mi_process_info: all its memory, live data included)",
            commit as u64 / KIB
        ),
    }
}

/// glibc tells free bytes in its arenas, but counts its tcache as in use.
#[cfg(all(not(any(feature = "jemalloc", feature = "mimalloc")), any(feature = "system", not(feature = "pcpalloc"))))]
pub fn held() -> Held {
    // SAFETY: mallinfo2 only reads glibc's arena statistics.
    let mi = unsafe { libc::mallinfo2() };
    Held {
        cached: None,
        detail: format!(
            "glibc mallinfo2: free in arenas {} KiB, in use {} KiB (tcache entries count as in use), mmapped {} KiB",
            mi.fordblks as u64 / KIB,
            mi.uordblks as u64 / KIB,
            mi.hblkhd as u64 / KIB
        ),
    }
}
