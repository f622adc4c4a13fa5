//! A large block that `realloc` grows past 512 KiB (`LARGE_MAX_ORDER`) stays
//! in the zone while the pages after it are free, up to a max-order block
//! (4 MiB): a doubling vector does not copy itself into a mapping at
//! 512 KiB. Its layout then says huge and its address says zone; `realloc`
//! and `dealloc` must tell, or the zone loses pages (or `munmap` takes
//! them). One test alone in its binary, so that no other test takes the
//! pages after the block.

use std::alloc::{GlobalAlloc, Layout};

use pcpalloc::PcpAlloc;

#[global_allocator]
static GLOBAL: PcpAlloc = PcpAlloc::new();

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Writes a pattern over `[p, p + len)`, one word per page.
///
/// # Safety
/// `p` must be a live block of at least `len` bytes.
unsafe fn fill(p: *mut u8, len: usize, seed: usize) {
    for off in (0..len).step_by(4096) {
        // SAFETY: within the caller's block; page offsets are word-aligned.
        unsafe { (p.add(off) as *mut usize).write(seed ^ off) };
    }
}

/// Checks what `fill` wrote.
///
/// # Safety
/// As for `fill`.
unsafe fn check(p: *const u8, len: usize, seed: usize) {
    for off in (0..len).step_by(4096) {
        // SAFETY: as for `fill`.
        assert_eq!(unsafe { (p.add(off) as *const usize).read() }, seed ^ off, "word at {off} of {len}");
    }
}

fn zone_free_pages() -> usize {
    pcpalloc::zoneinfo().free_pages
}

#[test]
fn a_large_block_grows_past_512_kib_in_the_zone_and_goes_back_to_it() {
    // SAFETY: every block is used within its size, resized and freed with
    // its current layout.
    unsafe {
        // Warm up: the first section is mapped, the harness's objects made.
        let w = GLOBAL.alloc(layout(256 * KIB));
        GLOBAL.dealloc(w, layout(256 * KIB));
        // The warm-up block went to this thread's page cache; the zone's
        // count below must not depend on whether the next block comes from
        // there.
        pcpalloc::flush_thread_cache();

        let mapped = pcpalloc::stats().mapped;
        let free_before = zone_free_pages();
        let p = GLOBAL.alloc(layout(256 * KIB));
        fill(p, 256 * KIB, 1);
        // Grown through huge sizes in place: the pages after it are free.
        // (Not to 4 MiB: the block need not start at a 4 MiB boundary, and
        // the zone has not handed the next max-order block to its lists.)
        let mut size = 256 * KIB;
        for next in [MIB, 2 * MIB] {
            let q = GLOBAL.realloc(p, layout(size), next);
            assert_eq!(q, p, "{size} -> {next} grows in place in the zone");
            check(q, size, 1);
            fill(q, next, 1);
            size = next;
        }
        assert_eq!(pcpalloc::stats().mapped, mapped, "no mapping made: the block is in the zone");
        let held = free_before - zone_free_pages();
        assert!(held >= 512, "the zone holds the 2 MiB block's pages: {held} pages out");

        // Shrunk in place, to a huge size and then to a large one, and grown
        // again: still the zone's.
        let mut seed = 1;
        for next in [1536 * KIB, 300 * KIB, 2 * MIB] {
            let q = GLOBAL.realloc(p, layout(size), next);
            assert_eq!(q, p, "{size} -> {next} resizes in place");
            check(q, size.min(next), seed);
            seed += 1;
            fill(q, next, seed);
            size = next;
        }

        // Freed at a huge size: back to the zone, all of it.
        GLOBAL.dealloc(p, layout(size));
        assert_eq!(pcpalloc::stats().mapped, mapped, "nothing was unmapped either");
        let missing = free_before.saturating_sub(zone_free_pages());
        assert!(missing < 64, "the zone got its pages back: {missing} pages missing");

        // Past a max-order block it moves into a mapping, content intact;
        // the zone gets its pages back then too.
        let p = GLOBAL.alloc(layout(256 * KIB));
        fill(p, 256 * KIB, 3);
        let q = GLOBAL.realloc(p, layout(256 * KIB), 2 * MIB);
        assert_eq!(q, p);
        fill(q, 2 * MIB, 3);
        let r = GLOBAL.realloc(q, layout(2 * MIB), 6 * MIB);
        assert!(!r.is_null());
        assert_ne!(r, q, "6 MiB is past a max-order block: a mapping of its own");
        check(r, 2 * MIB, 3);
        assert!(pcpalloc::stats().mapped >= mapped + 6 * MIB);
        let missing = free_before.saturating_sub(zone_free_pages());
        assert!(missing < 64, "the zone got the moved block's pages back: {missing} pages missing");
        // And back down: from the mapping into the zone by copy.
        let s = GLOBAL.realloc(r, layout(6 * MIB), 100 * KIB);
        assert!(!s.is_null());
        check(s, 100 * KIB, 3);
        GLOBAL.dealloc(s, layout(100 * KIB));
    }
}
