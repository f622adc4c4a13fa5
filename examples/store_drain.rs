//! Why a free of a block of 32 pages or more fences (`page_cache.rs`,
//! `drain_store_buffer`): one store per page of a block puts every store in
//! the same L1 set, and the next pass's stores, let into the store buffer
//! before the last pass's have drained, make the set thrash twice as hard.
//!
//! Part 1 writes one byte per page of one 256 KiB buffer in a loop, with
//! nothing, `mfence`, a `lock`-prefixed add or 20 `pause`s between passes.
//! Part 2 is the `pair/<size>` benchmark's loop (alloc, one store per page,
//! free) for pcpalloc, jemalloc and mimalloc, at a 4096-byte stride (one L1
//! set) and at 4160 (a set per store). Best of 15 rounds of 2000 passes.
//!
//! Run: `cargo run --release --example store_drain` (pin it with
//! `taskset -c 1` on a shared machine).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::time::Instant;

static PCPALLOC: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 15;
const PASSES: usize = 2000;

/// Best time of one pass, in nanoseconds.
fn best(mut pass: impl FnMut(usize)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..PASSES {
            pass(i);
        }
        best = best.min(t.elapsed().as_nanos() as f64 / PASSES as f64);
    }
    best
}

/// Writes one byte every `stride` bytes of `p[..size]`.
///
/// # Safety
/// `p` must be valid for writes of `size` bytes.
#[inline(always)]
unsafe fn touch(p: *mut u8, size: usize, stride: usize, v: u8) {
    let mut off = 0;
    while off < size {
        // SAFETY: `off < size`, inside the caller's block.
        unsafe { p.add(off).write(v) };
        off += stride;
    }
}

fn bare_loop() {
    const SIZE: usize = 256 << 10;
    let layout = Layout::from_size_align(SIZE, 4096).expect("a valid layout");
    // SAFETY: a non-zero size.
    let p = unsafe { System.alloc(layout) };
    assert!(!p.is_null(), "out of memory");
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let between: [(&str, fn()); 4] = [
        ("nothing", || {}),
        ("mfence", || fence(Ordering::SeqCst)),
        ("lock add", || {
            COUNTER.fetch_add(1, Ordering::Relaxed);
        }),
        ("20 pause", || (0..20).for_each(|_| std::hint::spin_loop())),
    ];
    println!("one store per page of a 256 KiB buffer, then:");
    for (name, f) in between {
        // SAFETY: `p` is a live block of SIZE bytes.
        let ns = best(|i| unsafe {
            touch(black_box(p), SIZE, 4096, i as u8);
            f();
        });
        println!("  {name:10} {ns:7.1} ns a pass");
    }
    // SAFETY: allocated above with this layout.
    unsafe { System.dealloc(p, layout) };
}

fn pair<A: GlobalAlloc>(a: &A, size: usize, stride: usize) -> f64 {
    let layout = Layout::from_size_align(size, 8).expect("a valid layout");
    best(|i| {
        // SAFETY: a non-zero size; the block is freed with its layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "out of memory");
            touch(p, size, stride, i as u8);
            a.dealloc(black_box(p), layout);
        }
    })
}

fn main() {
    bare_loop();
    println!("alloc, one store every <stride> bytes, free (ns a pair):");
    println!("  {:>7} {:>6} {:>9} {:>9} {:>9}", "size", "stride", "pcpalloc", "jemalloc", "mimalloc");
    for size in [64 << 10, 128 << 10, 256 << 10, 512 << 10] {
        for stride in [4096, 4160] {
            let (p, j, m) =
                (pair(&PCPALLOC, size, stride), pair(&JEMALLOC, size, stride), pair(&MIMALLOC, size, stride));
            println!("  {:>6}K {stride:>6} {p:9.1} {j:9.1} {m:9.1}", size >> 10);
        }
    }
}
