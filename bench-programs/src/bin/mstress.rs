//! mstress: mimalloc's stress test (`test/test-stress.c`), as mimalloc-bench
//! runs it (`mstress N 50 25`): threads allocate objects of power-of-two
//! sizes with a long tail (1% are 100x larger, a tenth of those 1000x, a
//! hundredth 10000x), keep half of them to the end (long-lived), free most of
//! the others at random, and swap objects with a shared transfer array, so
//! objects are freed by other threads, by the next round's threads or by the
//! main thread. The threads are created anew each round, with survivors in
//! the transfer array.
//!
//! With `MSTRESS_ROUNDS=1` in the environment it also prints, after each
//! round, the process's RSS and the round's peak of live bytes (the words
//! the program holds, counted by the program itself): where an allocator's
//! footprint grows from round to round while the live peak does not, it is
//! failing to reuse what it holds. Without it the count is one relaxed load
//! per allocation and free, the same in every allocator's build.

use std::alloc::{self, Layout};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::thread;

use bench_programs::{Args, Rng};

const SCALE: usize = 50;
const ROUNDS: u64 = 200;
const TRANSFERS: usize = 1000;
const COOKIE: usize = 0xbf58_476d_1ce4_e5b9;

/// `MSTRESS_ROUNDS` is set: count live bytes (`LIVE`, and its peak in the
/// round so far, `PEAK`, which `main` resets as each round starts).
static REPORT: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

static TRANSFER: [AtomicPtr<usize>; TRANSFERS] = [const { AtomicPtr::new(ptr::null_mut()) }; TRANSFERS];

fn items_layout(items: usize) -> Layout {
    Layout::array::<usize>(items).expect("items fit a Layout")
}

/// Allocates `items` words (sometimes many more), zeroed, then filled with a
/// pattern `free_items` checks; adds the word count to `sum`.
fn alloc_items(mut items: usize, r: &mut Rng, sum: &mut u64) -> *mut usize {
    if r.chance(1) {
        if r.chance(1) {
            items *= 10_000;
        } else if r.chance(10) {
            items *= 1000;
        } else {
            items *= 100;
        }
    }
    if items == 40 {
        items += 1; // as the original: glibc's pthreads uses that size
    }
    let layout = items_layout(items);
    // SAFETY: the layout is at least one word.
    let p = unsafe { alloc::alloc_zeroed(layout) } as *mut usize;
    if p.is_null() {
        alloc::handle_alloc_error(layout);
    }
    for i in 0..items {
        // SAFETY: `i < items`, within the block.
        unsafe {
            assert_eq!(*p.add(i), 0, "alloc_zeroed returned a dirty word");
            p.add(i).write((items - i) ^ COOKIE);
        }
    }
    *sum = sum.wrapping_add(items as u64);
    if REPORT.load(Ordering::Relaxed) {
        let bytes = layout.size() as u64;
        PEAK.fetch_max(LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes, Ordering::Relaxed);
    }
    p
}

/// Checks the pattern and frees a block from `alloc_items` (null is a no-op).
fn free_items(p: *mut usize) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` came from `alloc_items`, whose first word is `items ^ COOKIE`
    // and whose last is `1 ^ COOKIE`; nobody else holds it.
    unsafe {
        let items = *p ^ COOKIE;
        assert_eq!(*p.add(items - 1), 1 ^ COOKIE, "block of {items} words corrupted");
        let layout = items_layout(items);
        alloc::dealloc(p as *mut u8, layout);
        if REPORT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        }
    }
}

fn stress(tid: usize) -> u64 {
    let mut r = Rng::new((tid as u64 + 1) * 43);
    let mut sum = 0u64;
    let mut allocs = 100 * SCALE * (tid % 8 + 1);
    let mut retain = allocs / 2;
    let mut data: Vec<*mut usize> = Vec::new();
    let mut retained: Vec<*mut usize> = Vec::with_capacity(retain);
    while allocs > 0 || retain > 0 {
        if retain == 0 || (r.chance(50) && allocs > 0) {
            allocs -= 1;
            if data.len() == data.capacity() {
                data.reserve_exact(100_000); // the original reallocs by this step
            }
            data.push(alloc_items(1 << r.below(5), &mut r, &mut sum));
        } else {
            retained.push(alloc_items(1 << r.below(7), &mut r, &mut sum));
            retain -= 1;
        }
        if r.chance(66) && !data.is_empty() {
            let idx = r.below(data.len() as u64) as usize;
            free_items(std::mem::replace(&mut data[idx], ptr::null_mut()));
        }
        if r.chance(25) && !data.is_empty() {
            let idx = r.below(data.len() as u64) as usize;
            let t = r.below(TRANSFERS as u64) as usize;
            data[idx] = TRANSFER[t].swap(data[idx], Ordering::AcqRel);
        }
    }
    retained.into_iter().for_each(free_items);
    data.into_iter().for_each(free_items);
    sum
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let threads = args.threads_or(bench_programs::cpus().max(2));
    let rounds = args.scaled(ROUNDS, 1);
    let report = std::env::var_os("MSTRESS_ROUNDS").is_some_and(|v| v != "0");
    REPORT.store(report, Ordering::Relaxed);
    let mut r = Rng::new(0);
    let mut checksum = 0u64;
    for n in 0..rounds {
        // The round's peak starts from what the last round left live, after
        // the main thread's frees of transfer slots.
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        let workers: Vec<_> = (0..threads).map(|t| thread::spawn(move || stress(t))).collect();
        for w in workers {
            checksum = checksum.wrapping_add(w.join().expect("worker panicked"));
        }
        if report {
            let peak = PEAK.load(Ordering::Relaxed);
            eprintln!(
                "mstress: round {n:3}: rss {:6} KiB, live peak {:6} KiB, live at end {:6} KiB",
                bench_programs::stats::rss_kib(),
                peak / 1024,
                LIVE.load(Ordering::Relaxed) / 1024
            );
        }
        for slot in TRANSFER.iter() {
            if r.chance(50) || n + 1 == rounds {
                free_items(slot.swap(ptr::null_mut(), Ordering::AcqRel));
            }
        }
    }
    bench_programs::finish("mstress", checksum, started);
}
