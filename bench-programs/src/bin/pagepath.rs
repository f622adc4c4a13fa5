//! pagepath: `PAIRS` `alloc_page` + `free_page` pairs through pcpalloc's
//! kernel page API and nothing else, for counting instructions under
//! callgrind (`benches/programs.py --only fastpath`), like `fastpath` for
//! the global allocator. Built twice, with pcpalloc's `trace` feature off
//! (the default) and compiled in but not recording (`--features
//! pcpalloc-trace`): the difference is what the trace hooks cost when they
//! exist; the first count is the page allocator's fast path with them
//! compiled out.
//!
//! Usage: `pagepath [PAIRS]` (default 1,000,000).

use std::hint::black_box;

use pcpalloc::{alloc_page, free_page, Gfp};

fn main() {
    let pairs: u64 = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().expect("usage: pagepath [PAIRS]"));
    let mut checksum = 0u64;
    for i in 0..pairs + 1 {
        let page = alloc_page(Gfp::DEFAULT).expect("a page");
        // SAFETY: the page is ours, 4 KiB long.
        unsafe {
            page.as_ptr().write(i as u8);
            checksum = checksum.wrapping_add(black_box(page.as_ptr()).read() as u64);
        }
        free_page(black_box(page));
    }
    println!(
        "pagepath: trace={} pairs={pairs} checksum={checksum:016x}",
        if cfg!(feature = "pcpalloc-trace") { "compiled-in" } else { "off" }
    );
}
