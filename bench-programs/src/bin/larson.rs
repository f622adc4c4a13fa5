//! larson: the Larson–Krishnan server simulation, shaped like
//! mimalloc-bench's `larsonN-sized` (`larson 5 8 1000 5000 100 4141 N`:
//! sizes 8..1000 B, 5000 slots per thread, seed 4141, one thread per CPU).
//!
//! Each thread owns an array of slots holding blocks; it repeatedly picks a
//! random slot, frees the block there and puts a new block of random size in
//! its place. After a generation every thread's array is handed to the next
//! thread (`(i + 1) % T`), whose first frees are then of objects another
//! thread allocated ("bleeding"), as when larson's worker threads exit and
//! pass their arrays to their successors. Rust frees are sized, so this is
//! the `-sized` variant.

use std::thread;

use bench_programs::{Args, Block, Rng};

const MIN_SIZE: usize = 8;
const MAX_SIZE: usize = 1000;
const SLOTS: u64 = 5000;
const GENERATIONS: u64 = 10;
/// Slot replacements per thread over the whole run, at scale 1.
const OPS_PER_THREAD: u64 = 10_000_000;

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let threads = args.threads_or(bench_programs::cpus().max(2));
    let slots = args.scaled(SLOTS, 16).min(SLOTS) as usize;
    let ops = args.scaled(OPS_PER_THREAD / GENERATIONS, 1);

    // Generation 0's arrays are filled by the main thread, so they are
    // freed by the workers of the first generation.
    let mut fill = Rng::new(4141);
    let mut arrays: Vec<Vec<Block>> =
        (0..threads).map(|_| (0..slots).map(|_| Block::new(fill.range(MIN_SIZE, MAX_SIZE), 8, 0)).collect()).collect();

    let mut checksum = 0u64;
    for generation in 0..GENERATIONS {
        let workers: Vec<_> = arrays
            .into_iter()
            .enumerate()
            .map(|(t, mut slots)| {
                thread::spawn(move || {
                    let mut rng = Rng::new(generation << 32 | t as u64);
                    let mut sum = 0u64;
                    for _ in 0..ops {
                        let victim = rng.below(slots.len() as u64) as usize;
                        let size = rng.range(MIN_SIZE, MAX_SIZE);
                        sum = sum.wrapping_add(slots[victim].tag() as u64);
                        slots[victim] = Block::new(size, 8, size as u8);
                        sum = sum.wrapping_add(size as u64);
                    }
                    (slots, sum)
                })
            })
            .collect();
        let mut next = Vec::with_capacity(threads);
        for w in workers {
            let (slots, sum) = w.join().expect("worker panicked");
            checksum = checksum.wrapping_add(sum);
            next.push(slots);
        }
        next.rotate_left(1);
        arrays = next;
    }
    for a in &arrays {
        checksum = a.iter().fold(checksum, |c, b| c.wrapping_add(b.size() as u64));
    }
    drop(arrays);
    bench_programs::finish("larson", checksum, started);
}
