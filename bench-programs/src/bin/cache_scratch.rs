//! cache_scratch: Hoard's passive false-sharing test, shaped like
//! mimalloc-bench's `cache-scratchN` (`cache-scratch N 1000 1 2000000 N`).
//!
//! The main thread allocates one small object per worker, back to back (so
//! they share a cache line) and hands one to each worker. Each worker frees
//! the object it was given, then many times allocates an object of the same
//! size, writes and reads it in a tight loop, and frees it. An allocator that
//! gives a worker the object just freed (or its neighbours) puts two
//! workers' hot bytes in one cache line, and every write then bounces the
//! line between CPUs.

use std::thread;

use bench_programs::{Args, Block};

const OBJECT_SIZE: usize = 1;
const ITERATIONS: u64 = 1000;
/// Write loops per object, at scale 1 (the original's 2,000,000 takes
/// minutes when the line is shared).
const REPETITIONS: u64 = 800_000;

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let threads = args.threads_or(bench_programs::cpus().max(2));
    let iterations = args.scaled(ITERATIONS, 1).min(ITERATIONS);
    let repetitions = args.scaled(REPETITIONS * ITERATIONS, 1) / iterations;

    let given: Vec<Block> = (0..threads).map(|t| Block::new(OBJECT_SIZE, 1, t as u8)).collect();
    let workers: Vec<_> = given
        .into_iter()
        .map(|first| {
            thread::spawn(move || {
                let mut sum = first.tag() as u64;
                drop(first);
                for _ in 0..iterations {
                    let mut obj = Block::new(OBJECT_SIZE, 1, 0);
                    let p = obj.as_mut_ptr();
                    for _ in 0..repetitions {
                        for k in 0..OBJECT_SIZE {
                            // SAFETY: `k` is within the object, which is ours.
                            unsafe {
                                p.add(k).write_volatile(k as u8);
                                sum = sum.wrapping_add(p.add(k).read_volatile() as u64 + 1);
                            }
                        }
                    }
                    drop(obj);
                }
                sum
            })
        })
        .collect();
    let checksum = workers.into_iter().map(|w| w.join().expect("worker panicked")).fold(0u64, u64::wrapping_add);
    bench_programs::finish("cache_scratch", checksum, started);
}
