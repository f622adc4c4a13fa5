//! fastpath: `PAIRS` allocate+free pairs of 64 bytes through the global
//! allocator and nothing else, for counting instructions under callgrind
//! (`benches/programs.py --only fastpath`): the count of a run with 0 pairs
//! is subtracted, which leaves the pairs' own instructions without timing
//! noise. One pair before the loop warms the allocator up in both runs.
//!
//! Usage: `fastpath [PAIRS] [--scale F] [--size BYTES]` (default 1,000,000
//! pairs, `--scale F` multiplies them; 64 bytes unless `--size` says).

use std::alloc::{self, Layout};
use std::hint::black_box;

fn main() {
    let mut pairs: u64 = 1_000_000;
    let mut size: usize = 64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => {
                let f: f64 = args.next().and_then(|v| v.parse().ok()).expect("--scale needs a number");
                pairs = (pairs as f64 * f).round() as u64;
            }
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("--size needs a byte count"),
            n => pairs = n.parse().expect("usage: fastpath [PAIRS] [--scale F] [--size BYTES]"),
        }
    }
    let layout = black_box(Layout::from_size_align(size, 8).expect("a valid layout"));
    let mut checksum = 0u64;
    for i in 0..pairs + 1 {
        // SAFETY: the layout has a non-zero size; the block is freed once with it.
        unsafe {
            let p = alloc::alloc(layout);
            if p.is_null() {
                alloc::handle_alloc_error(layout);
            }
            p.write(i as u8);
            checksum = checksum.wrapping_add(black_box(p).read() as u64);
            alloc::dealloc(p, layout);
        }
    }
    println!("fastpath: allocator={} size={size} pairs={pairs} checksum={checksum:016x}", bench_programs::ALLOCATOR);
}
