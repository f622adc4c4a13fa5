//! `alloc_zeroed` of a large block whose memory is known to be zero (purged
//! or never touched) makes it resident at once, in one call: read before it
//! is written, it would cost two faults a page, the second a copy-on-write
//! of the zero page with a TLB flush on every CPU.

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

fn resident_pages(p: *mut u8, len: usize) -> usize {
    let pages = len / 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: `p..p + len` is a mapped, page-aligned block of ours; `vec`
    // holds a byte per page.
    let r = unsafe { libc::mincore(p.cast(), len, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore failed");
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

#[test]
fn zeroed_large_blocks_from_purged_memory_are_resident_and_zero() {
    // 256 KiB: one whole block through the page cache; 200 KiB: a block
    // with its tail given back (`alloc_pages_exact`).
    for size in [256 * 1024, 200 * 1024] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // Dirty a block of this size, free it, purge everything free.
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: ours.
        unsafe { p.write_bytes(0xA5, size) };
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
        pcpalloc::trim();

        // SAFETY: non-zero size.
        let z = unsafe { GLOBAL.alloc_zeroed(layout) };
        assert!(!z.is_null());
        let len = size.div_ceil(4096) * 4096;
        assert_eq!(resident_pages(z, len), len / 4096, "{size} B: not resident after alloc_zeroed");
        // SAFETY: `size` bytes are ours.
        let bytes = unsafe { std::slice::from_raw_parts(z, size) };
        assert!(bytes.iter().all(|&b| b == 0), "{size} B: not zero");
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(z, layout) };
    }
}
