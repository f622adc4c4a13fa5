//! glibc_simple: glibc's `bench-malloc-simple` as mimalloc-bench runs it
//! (`glibc-simple`): one thread in a tight loop allocates a run of blocks of
//! one size, fills each, and frees them in allocation order; runs of 25,
//! 100, 400 and 1600 blocks, sizes 16, 32 and 64 B, first on the main
//! thread, then on a second thread, then on the main thread again (glibc's
//! main arena, a thread arena, and the main arena once the process has been
//! multithreaded). Nothing else happens between the calls: this is the fast
//! path plus the refill and flush when a run outgrows the thread's cache.

use std::hint::black_box;
use std::thread;

use bench_programs::{Args, Block};

const SIZES: [usize; 3] = [16, 32, 64];
const RUNS: [usize; 4] = [25, 100, 400, 1600];
/// Allocate+free pairs per (size, run length, phase), at scale 1 (the
/// original's 2,000,000).
const PAIRS: u64 = 1_500_000;

/// One (size, run length) cell: `pairs` pairs in runs of `run`.
fn cell(size: usize, run: usize, pairs: u64, held: &mut Vec<Block>) -> u64 {
    let mut sum = 0u64;
    for _ in 0..(pairs / run as u64).max(1) {
        for _ in 0..run {
            let mut b = Block::new(size, 8, 0);
            let words = b.as_mut_ptr() as *mut u32;
            for g in 0..size / 4 {
                // SAFETY: `g < size / 4`, within the block, which is 8-aligned.
                unsafe { words.add(g).write(g as u32) };
            }
            held.push(b);
        }
        // `drain` drops the blocks in allocation order, as the original frees.
        for b in held.drain(..) {
            sum = sum.wrapping_add(black_box(&b).size() as u64);
        }
    }
    sum
}

/// Every run length for one size.
fn phase(size: usize, pairs: u64) -> u64 {
    let mut held = Vec::with_capacity(RUNS[RUNS.len() - 1]);
    RUNS.iter().map(|&run| cell(size, run, pairs, &mut held)).fold(0, u64::wrapping_add)
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let pairs = args.scaled(PAIRS, 1);
    let mut checksum = 0u64;
    for size in SIZES {
        let t = std::time::Instant::now();
        checksum = checksum.wrapping_add(phase(size, pairs));
        checksum = checksum.wrapping_add(thread::spawn(move || phase(size, pairs)).join().expect("thread panicked"));
        checksum = checksum.wrapping_add(phase(size, pairs));
        let ns = t.elapsed().as_nanos() as f64 / (3 * RUNS.len() as u64 * pairs) as f64;
        eprintln!("glibc_simple: size {size:3}: {ns:5.1} ns per pair");
    }
    bench_programs::finish("glibc_simple", checksum, started);
}
