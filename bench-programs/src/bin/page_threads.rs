//! page_threads: why per-CPU lists exist. 64 threads share 2 CPUs (the
//! process pins itself to the first two it may use); each allocates and
//! frees page-sized blocks (4, 8, 16 and 32 KiB, page-aligned: the kernel's
//! orders 0 to 3) in random order, touching every page. Then all 64 stop at
//! a barrier, holding nothing, and the program reads how much memory the
//! allocator keeps for reuse while they are all still alive (caches per
//! thread grow with the threads, caches per CPU with the CPUs), and again
//! after they have exited.
//!
//! Prints `before:`, `barrier:` and `exit:` lines of `key=value` figures
//! (`rss_kib`, `cached_kib`, `detail=...`) that
//! `benches/programs.py` turns into a table.

use std::mem;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use bench_programs::stats::{self, Held};
use bench_programs::{Args, Block, Rng};

const THREADS: usize = 64;
const CPUS: usize = 2;
const SIZES: [usize; 4] = [4096, 8192, 16384, 32768];
const HELD_PER_ROUND: usize = 8;
/// Rounds of HELD_PER_ROUND allocations per thread, at scale 1.
const ROUNDS: u64 = 12_000;

/// Pins the process to the first `n` CPUs it may run on; returns them.
fn pin(n: usize) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    let cpus: Vec<usize> =
        // SAFETY: every index is below CPU_SETSIZE, the set's size.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).take(n).collect();
    // SAFETY: as above.
    let mut pinned: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &c in &cpus {
        // SAFETY: `c` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut pinned) };
    }
    // SAFETY: `pinned` is a valid cpu_set_t of the size passed; 0 is this thread,
    // whose mask the threads it spawns inherit.
    unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &pinned) };
    cpus
}

fn report(when: &str, held: &Held) {
    let kib = |v: Option<u64>| v.map_or("-".to_string(), |b| (b / 1024).to_string());
    println!("{when}: rss_kib={} cached_kib={} detail={}", stats::rss_kib(), kib(held.cached), held.detail);
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let threads = args.threads_or(THREADS);
    let rounds = args.scaled(ROUNDS, 1);
    let cpus = pin(CPUS);
    println!("page_threads: threads={threads} cpus={cpus:?} rounds={rounds}");
    report("before", &stats::held());

    let ready = Barrier::new(threads + 1);
    let release = Barrier::new(threads + 1);
    let work = Instant::now();
    let checksum = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (ready, release) = (&ready, &release);
                thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn_scoped(s, move || {
                        let mut rng = Rng::new(t as u64);
                        let mut held: Vec<Block> = Vec::with_capacity(HELD_PER_ROUND);
                        let mut sum = 0u64;
                        for round in 0..rounds {
                            for _ in 0..HELD_PER_ROUND {
                                let size = SIZES[rng.below(SIZES.len() as u64) as usize];
                                let mut b = Block::new(size, 4096, round as u8);
                                sum += b.touch_pages(round as u8) as u64;
                                held.push(b);
                            }
                            while !held.is_empty() {
                                let b = held.swap_remove(rng.below(held.len() as u64) as usize);
                                sum += b.tag() as u64;
                            }
                        }
                        drop(held);
                        ready.wait();
                        release.wait();
                        sum
                    })
                    .expect("spawn a thread")
            })
            .collect();
        ready.wait();
        println!("work: seconds={:.3}", work.elapsed().as_secs_f64());
        report("barrier", &stats::held());
        release.wait();
        workers.into_iter().map(|w| w.join().expect("worker panicked")).sum::<u64>()
    });
    report("exit", &stats::held());
    bench_programs::finish("page_threads", checksum, started);
}
