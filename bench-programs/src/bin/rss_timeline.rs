//! rss_timeline: RSS over time through a burst and an idle phase, for the
//! "memory goes back to the OS" comparison (`benches/rss_timeline.py` runs
//! it once per allocator and draws the chart).
//!
//! A service-like workload: for 0.5 s it idles at a small live set; then a
//! burst builds about 1 GiB (at scale 1) of blocks from 64 B to 4 MiB, every
//! page written, and frees 90% of them in random order; then it idles for
//! 10 s (jemalloc's default decay time) at the remaining live set, doing a little work every 10 ms (a few
//! small allocations and frees, as a server between requests). A sampler
//! thread reads `/proc/self/statm` every 50 ms. Output: CSV lines
//! `t_ms,rss_kib,phase` on standard output, then the closing line.
//! Nothing in the program calls an allocator's own API: what is measured is
//! what each allocator does by default.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bench_programs::{Args, Block, Rng};

const PHASES: [&str; 3] = ["before", "burst", "idle"];

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 4
}

/// A little work between requests: a few short-lived small blocks.
fn tick(rng: &mut Rng, sum: &mut u64) {
    let blocks: Vec<Block> = (0..16).map(|i| Block::new(rng.range(16, 2048), 8, i as u8)).collect();
    *sum = sum.wrapping_add(blocks.iter().map(|b| b.tag() as u64).sum::<u64>());
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let total = args.scaled(1 << 30, 16 << 20) as usize;
    let idle = Duration::from_millis(args.scaled(10_000, 300));
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (phase, stop) = (phase.clone(), stop.clone());
        thread::spawn(move || {
            // Preallocated, so the sampler's own allocations stay out of the way.
            let mut samples: Vec<(u64, u64, u8)> = Vec::with_capacity(4096);
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && samples.len() < samples.capacity() {
                samples.push((t0.elapsed().as_millis() as u64, rss_kib(), phase.load(Ordering::Relaxed)));
                thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let mut rng = Rng::new(0x005e_ed0f_8a55);
    let mut sum = 0u64;
    let live_small: Vec<Block> = (0..2000).map(|i| Block::new(rng.range(16, 512), 8, i as u8)).collect();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        tick(&mut rng, &mut sum);
        thread::sleep(Duration::from_millis(10));
    }

    phase.store(1, Ordering::Relaxed);
    let mut blocks = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        let size = ((64usize << rng.below(17)) + rng.below(64) as usize).min(4 << 20);
        let tag = blocks.len() as u8;
        let mut b = Block::new(size, 8, tag);
        // The tag again, so both ends still hold it.
        b.touch_pages(tag);
        bytes += size;
        blocks.push(b);
    }
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let keep = blocks.len() / 10;
    for b in blocks.drain(keep..) {
        sum = sum.wrapping_add(b.tag() as u64);
    }

    phase.store(2, Ordering::Relaxed);
    let t = Instant::now();
    while t.elapsed() < idle {
        tick(&mut rng, &mut sum);
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");
    println!("t_ms,rss_kib,phase");
    for (t, rss, p) in samples {
        println!("{t},{rss},{}", PHASES[p as usize]);
    }
    sum = sum.wrapping_add(blocks.iter().chain(&live_small).map(|b| b.size() as u64).sum::<u64>());
    bench_programs::finish("rss_timeline", sum, started);
}
