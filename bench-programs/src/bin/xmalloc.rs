//! xmalloc: an extreme producer/consumer, shaped like mimalloc-bench's
//! `xmalloc-testN` (`xmalloc-test -w N -t 5 -s 64`): half the threads only
//! allocate 64-byte objects, the other half only free them.
//!
//! Producers fill batches of objects and pass each batch through a bounded
//! multi-consumer channel; consumers check and free every object of the
//! batches they receive. Every object is freed by a thread that never
//! allocates one of its size, so an allocator that caches frees per thread
//! must send them back to the producers' side somehow.

use std::thread;

use bench_programs::{Args, Block, Rng};

const OBJECT_SIZE: usize = 64;
const BATCH: usize = 256;
/// Objects allocated over the whole run, at scale 1.
const OBJECTS: u64 = 40_000_000;

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let pairs = (args.threads_or(bench_programs::cpus().max(2)) / 2).max(1);
    let batches_per_producer = args.scaled(OBJECTS / BATCH as u64, 1) / pairs as u64;
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Block>>(64);

    let producers: Vec<_> = (0..pairs)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(p as u64);
                for _ in 0..batches_per_producer {
                    let batch: Vec<Block> =
                        (0..BATCH).map(|_| Block::new(OBJECT_SIZE, 8, rng.next_u64() as u8)).collect();
                    tx.send(batch).expect("consumers gone");
                }
            })
        })
        .collect();
    drop(tx);
    let consumers: Vec<_> = (0..pairs)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut sum = 0u64;
                for batch in rx {
                    for b in batch {
                        sum = sum.wrapping_add(b.tag() as u64 + 1);
                    }
                }
                sum
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer panicked");
    }
    let checksum = consumers.into_iter().map(|c| c.join().expect("consumer panicked")).fold(0u64, u64::wrapping_add);
    bench_programs::finish("xmalloc", checksum, started);
}
