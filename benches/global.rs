//! `PcpAlloc` against jemalloc, mimalloc and the system allocator, side by
//! side: every case is one criterion group and every allocator one function
//! in it (`pcpalloc`, `jemalloc`, `mimalloc`, `system`).
//!
//! The allocators are called through the `GlobalAlloc` trait on statics of
//! their own types (each case is generic over the allocator, so every call is
//! monomorphized and may be inlined as it would be behind
//! `#[global_allocator]`). The program's own global allocator stays the
//! default one, so the harness's allocations favour nobody (they do share
//! `System`'s heap with the `system` runs).
//!
//! Cases:
//! - `pair/<size>`: `alloc` + `dealloc` of one block, 1000 pairs per iteration,
//!   for size classes from 8 B to 32 KiB and page sizes from 4 KiB to 4 MiB
//!   (blocks of a page or more are touched once per page, as a program would).
//! - `batch1000x64`: 1000 allocations of 64 B, then the 1000 frees in the same order.
//! - `n_then_free/<N>_<order>`: N allocations of 8 B..1 KiB (a fixed
//!   pseudo-random size each), then the N frees, in allocation order or in a
//!   fixed random order; N = 100 and 10 000.
//! - `realloc_doubling`: one block grown from 8 B to 1 MiB by doubling, then freed.
//! - `realloc_doubling_64m`: the same to 64 MiB.
//! - `realloc_step_1k`: one block grown from 8 B to 64 MiB in steps of 1 KiB
//!   (65 536 reallocs), each step writing its new KiB.
//! - `producer_consumer`: one thread allocates 64 B objects, another frees them.
//! - `mixed_random`: random allocs and frees of 8 B..8 KiB over 1024 slots.
//! - `threads/<T>`: T threads, each pinned to a CPU of its own (as far as
//!   there are CPUs), each running `mixed_random`'s operations on slots of its
//!   own; throughput is all threads' operations per second of wall time.
//!
//! Every case writes into the blocks it gets and checks, where it is cheap,
//! that what it wrote is still there when it reads or frees the block, so a
//! block handed out twice or a `realloc` that loses bytes panics with the
//! allocator's name instead of producing a number.
//!
//! `python3 benches/table.py` turns the results into a Markdown table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

static PCPALLOC: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static SYSTEM: System = System;

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Runs `$case(group, name, allocator, extra args...)` for each allocator, in
/// the same order in every group.
macro_rules! each_allocator {
    ($case:ident, $group:expr $(, $arg:expr)*) => {{
        let group: &mut Group = $group;
        $case(group, "pcpalloc", &PCPALLOC $(, $arg)*);
        $case(group, "jemalloc", &JEMALLOC $(, $arg)*);
        $case(group, "mimalloc", &MIMALLOC $(, $arg)*);
        $case(group, "system", &SYSTEM $(, $arg)*);
    }};
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// `a.alloc(layout)`, panicking (naming the allocator) on null.
#[inline(always)]
fn alloc<A: GlobalAlloc>(name: &str, a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: every layout used here has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        null_alloc(name, layout);
    }
    p
}

#[cold]
#[inline(never)]
fn null_alloc(name: &str, layout: Layout) -> ! {
    panic!("{name}: alloc({layout:?}) returned null");
}

#[cold]
#[inline(never)]
fn corrupted(name: &str, case: &str, what: &str) -> ! {
    panic!("{name}: {case}: {what}");
}

// ---- pair/<size> ---------------------------------------------------------------

const PAIRS: usize = 1000;

fn pair<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A, size: usize) {
    let layout = layout(size);
    g.bench_function(name, |b| {
        b.iter(|| {
            for i in 0..PAIRS {
                let p = alloc(name, a, layout);
                // SAFETY: `p` is a live block of `size >= 1` bytes; every
                // offset written is below `size`.
                unsafe {
                    let mut off = 0;
                    while off < size {
                        p.add(off).write(i as u8);
                        off += 4096;
                    }
                }
                // SAFETY: `p` was allocated just above by `a` with `layout`.
                unsafe { a.dealloc(black_box(p), layout) };
            }
        })
    });
}

// ---- n_then_free/<N>_<order> -------------------------------------------------------

/// Sizes (8 B..1 KiB, log-uniform) and a free order for `n` blocks, the same
/// for every allocator: `(sizes, order)`; `order` is a permutation of `0..n`,
/// the identity unless `random`.
fn n_then_free_plan(n: usize, random: bool) -> (Vec<usize>, Vec<usize>) {
    let mut rng = XorShift(SEED ^ n as u64);
    let sizes = (0..n)
        .map(|_| {
            let r = rng.next();
            let base = 8usize << (r % 7);
            base + ((r >> 8) as usize) % (base + 1)
        })
        .map(|s| s.min(1024))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    if random {
        for i in (1..n).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
    }
    (sizes, order)
}

fn n_then_free<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A, n: usize, random: bool) {
    let (sizes, order) = n_then_free_plan(n, random);
    let mut held: Vec<*mut u8> = vec![std::ptr::null_mut(); n];
    g.bench_function(name, |b| {
        b.iter(|| {
            for (i, &size) in sizes.iter().enumerate() {
                let p = alloc(name, a, layout(size));
                // SAFETY: `p` is a live block of `size >= 8` bytes.
                unsafe { p.write(i as u8) };
                held[i] = p;
            }
            for &i in &order {
                let p = held[i];
                // SAFETY: `p` is live (allocated above, freed only here) and
                // was written at offset 0.
                if unsafe { p.read() } != i as u8 {
                    corrupted(name, "n_then_free", "a held block was overwritten (handed out twice?)");
                }
                // SAFETY: `p` was allocated above by `a` with `layout(sizes[i])`.
                unsafe { a.dealloc(p, layout(sizes[i])) };
            }
        })
    });
}

// ---- batch1000x64 ----------------------------------------------------------------

const BATCH: usize = 1000;

fn batch<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A) {
    let layout = layout(64);
    let mut held: Vec<*mut u8> = Vec::with_capacity(BATCH);
    g.bench_function(name, |b| {
        b.iter(|| {
            for i in 0..BATCH {
                let p = alloc(name, a, layout);
                // SAFETY: `p` is a live block of 64 bytes.
                unsafe { p.write(i as u8) };
                held.push(p);
            }
            for (i, p) in held.drain(..).enumerate() {
                // SAFETY: `p` is live (allocated above, freed only here) and
                // was written at offset 0.
                if unsafe { p.read() } != i as u8 {
                    corrupted(name, "batch1000x64", "a held block was overwritten (handed out twice?)");
                }
                // SAFETY: `p` was allocated above by `a` with `layout`.
                unsafe { a.dealloc(p, layout) };
            }
        })
    });
}

// ---- realloc_doubling -------------------------------------------------------------

const REALLOC_FROM: usize = 8;

fn realloc_doubling<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A, to: usize) {
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut size = REALLOC_FROM;
            let mut p = alloc(name, a, layout(size));
            // SAFETY: `p` is a live block of `size` bytes.
            unsafe {
                p.write(0xA5);
                p.add(size - 1).write(size.trailing_zeros() as u8);
            }
            while size < to {
                let new_size = size * 2;
                // SAFETY: `p` is live, allocated by `a` with `layout(size)`;
                // `new_size` is non-zero and fits `isize` once aligned.
                let q = unsafe { a.realloc(p, layout(size), new_size) };
                if q.is_null() {
                    null_alloc(name, layout(new_size));
                }
                // SAFETY: `q` is a live block of `new_size` bytes whose first
                // `size` bytes are the old block's, which wrote offsets 0 and
                // `size - 1`.
                unsafe {
                    if q.read() != 0xA5 || q.add(size - 1).read() != size.trailing_zeros() as u8 {
                        corrupted(name, "realloc_doubling", "realloc lost the old contents");
                    }
                    // Touch every page of the new half, as filling it would.
                    let mut off = size;
                    while off < new_size {
                        q.add(off).write(1);
                        off += 4096;
                    }
                    q.add(new_size - 1).write(new_size.trailing_zeros() as u8);
                }
                p = q;
                size = new_size;
            }
            // SAFETY: `p` is live, allocated (by `realloc`) with `layout(size)`.
            unsafe { a.dealloc(black_box(p), layout(size)) };
        })
    });
}

// ---- realloc_step_1k ------------------------------------------------------------

const STEP: usize = 1024;
const STEP_TO: usize = 64 << 20;

fn realloc_step<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A) {
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut size = REALLOC_FROM;
            let mut p = alloc(name, a, layout(size));
            // SAFETY: `p` is a live block of `size` bytes.
            unsafe { p.write(0x5A) };
            while size < STEP_TO {
                let new_size = if size < STEP { STEP } else { size + STEP };
                // SAFETY: `p` is live, allocated by `a` with `layout(size)`.
                let q = unsafe { a.realloc(p, layout(size), new_size) };
                if q.is_null() {
                    null_alloc(name, layout(new_size));
                }
                // SAFETY: `q` is a live block of `new_size` bytes that kept the
                // old block's bytes, offset 0 included.
                unsafe {
                    if q.read() != 0x5A {
                        corrupted(name, "realloc_step_1k", "realloc lost the old contents");
                    }
                    q.add(size).write_bytes(1, new_size - size);
                }
                p = q;
                size = new_size;
            }
            // SAFETY: `p` is live, allocated (by `realloc`) with `layout(size)`.
            unsafe { a.dealloc(black_box(p), layout(size)) };
        })
    });
}

// ---- producer_consumer ------------------------------------------------------------

/// Pointers per message.
const PC_BATCH: usize = 1000;
/// Messages per criterion iteration: 20,000 objects.
const PC_BATCHES_PER_ITER: u64 = 20;
/// Messages the channel holds before the producer blocks.
const PC_QUEUE: usize = 4;

/// A batch of 64 B blocks moving from the producer to the consumer (or an
/// empty vector going back to be refilled).
struct Ptrs(Vec<*mut u8>);

// SAFETY: the blocks are owned by whoever holds the batch: the producer gives
// them up when it sends it and never touches them again; every allocator
// benchmarked here allows a block to be freed on another thread than the one
// that allocated it.
unsafe impl Send for Ptrs {}

enum Msg {
    Batch(Ptrs),
    /// Every batch of the current command has been sent.
    Done,
}

fn producer<A: GlobalAlloc>(name: &str, a: &A, cmd: Receiver<u64>, data: SyncSender<Msg>, recycled: Receiver<Ptrs>) {
    let layout = layout(64);
    while let Ok(batches) = cmd.recv() {
        for _ in 0..batches {
            let mut v = match recycled.try_recv() {
                Ok(Ptrs(v)) => v,
                Err(_) => Vec::with_capacity(PC_BATCH),
            };
            for i in 0..PC_BATCH {
                let p = alloc(name, a, layout);
                // SAFETY: `p` is a live block of 64 bytes.
                unsafe { p.write(i as u8) };
                v.push(p);
            }
            data.send(Msg::Batch(Ptrs(v))).expect("consumer is gone");
        }
        data.send(Msg::Done).expect("consumer is gone");
    }
}

fn consumer<A: GlobalAlloc>(name: &str, a: &A, data: Receiver<Msg>, recycle: SyncSender<Ptrs>, done: SyncSender<()>) {
    let layout = layout(64);
    while let Ok(msg) = data.recv() {
        match msg {
            Msg::Batch(Ptrs(mut v)) => {
                for (i, p) in v.drain(..).enumerate() {
                    // SAFETY: the producer allocated `p` with `layout`, wrote
                    // offset 0 and gave the block up when it sent the batch.
                    unsafe {
                        if p.read() != i as u8 {
                            corrupted(name, "producer_consumer", "a block was overwritten (handed out twice?)");
                        }
                        a.dealloc(p, layout);
                    }
                }
                // If the producer has enough spare vectors this one is dropped.
                let _ = recycle.try_send(Ptrs(v));
            }
            Msg::Done => done.send(()).expect("benchmark is gone"),
        }
    }
}

/// The producer and the consumer are spawned once per allocator and serve
/// every iteration of its warm-up and measurement; each runs pinned to a core
/// of its own when there are two.
fn producer_consumer<A: GlobalAlloc + Sync>(g: &mut Group, name: &'static str, a: &'static A) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (core_p, core_c) = match cores.as_slice() {
        [c0, c1, ..] => (Some(*c0), Some(*c1)),
        _ => (None, None),
    };
    let (cmd_tx, cmd_rx) = sync_channel::<u64>(1);
    let (data_tx, data_rx) = sync_channel::<Msg>(PC_QUEUE);
    let (recycle_tx, recycle_rx) = sync_channel::<Ptrs>(PC_QUEUE + 4);
    let (done_tx, done_rx) = sync_channel::<()>(1);
    thread::scope(|s| {
        s.spawn(move || {
            if let Some(c) = core_p {
                core_affinity::set_for_current(c);
            }
            producer(name, a, cmd_rx, data_tx, recycle_rx)
        });
        s.spawn(move || {
            if let Some(c) = core_c {
                core_affinity::set_for_current(c);
            }
            consumer(name, a, data_rx, recycle_tx, done_tx)
        });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                cmd_tx.send(iters * PC_BATCHES_PER_ITER).expect("producer thread died");
                done_rx.recv().expect("producer or consumer thread died");
                start.elapsed()
            })
        });
        // Closing the command channel stops the producer, which closes the
        // data channel and so stops the consumer.
        drop(cmd_tx);
    });
}

// ---- mixed_random -------------------------------------------------------------------

const SLOTS: usize = 1024;
const MIXED_OPS: usize = 10_000;
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

struct XorShift(u64);

impl XorShift {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The slot a random word picks (its top 10 bits).
#[inline(always)]
fn slot_of(r: u64) -> usize {
    (r >> 54) as usize % SLOTS
}

/// The size a random word picks: log-uniform over 8 B..=8 KiB (a doubling
/// `[8 << k, 16 << k]`, k in 0..10, then a uniform size within it).
#[inline(always)]
fn size_of(r: u64) -> usize {
    let base = 8usize << (r % 10);
    base + ((r >> 8) as usize) % (base + 1)
}

/// Allocations plus frees in one iteration of `mixed_random` (the random
/// operations and the final frees of what is left), found by replaying the
/// random sequence without allocating.
fn mixed_ops() -> u64 {
    let mut rng = XorShift(SEED);
    let mut full = [false; SLOTS];
    let mut allocs = 0;
    for _ in 0..MIXED_OPS {
        let i = slot_of(rng.next());
        if !full[i] {
            allocs += 1;
        }
        full[i] = !full[i];
    }
    2 * allocs
}

/// Each iteration starts from empty slots and the same seed, so every
/// allocator (and every iteration) does the same sequence of operations; the
/// blocks still held at the end are freed in slot order.
fn mixed_random<A: GlobalAlloc>(g: &mut Group, name: &str, a: &'static A) {
    let mut slots: Box<[(*mut u8, usize); SLOTS]> = Box::new([(std::ptr::null_mut(), 0); SLOTS]);
    g.bench_function(name, |b| {
        b.iter(|| {
            mixed_sequence(name, a, &mut slots[..], SEED);
            free_slots(name, a, &mut slots[..]);
        })
    });
}

/// `MIXED_OPS` random operations from `seed` over `slots`: an empty slot
/// gets a block of a random size, a full one is checked and freed.
#[inline(always)]
fn mixed_sequence<A: GlobalAlloc>(name: &str, a: &A, slots: &mut [(*mut u8, usize)], seed: u64) {
    let mut rng = XorShift(seed);
    for _ in 0..MIXED_OPS {
        let r = rng.next();
        let i = slot_of(r);
        let (p, size) = slots[i];
        if p.is_null() {
            let size = size_of(r);
            let p = alloc(name, a, layout(size));
            // SAFETY: `p` is a live block of `size >= 8` bytes.
            unsafe {
                p.write(i as u8);
                p.add(size - 1).write(i as u8);
            }
            slots[i] = (p, size);
        } else {
            // SAFETY: `p` is a live block of `size` bytes allocated by `a`
            // with `layout(size)`, written at both ends.
            unsafe { free_slot(name, a, i, p, size) };
            slots[i] = (std::ptr::null_mut(), 0);
        }
    }
}

/// Frees what `mixed_sequence` left in `slots`, in slot order.
fn free_slots<A: GlobalAlloc>(name: &str, a: &A, slots: &mut [(*mut u8, usize)]) {
    for (i, slot) in slots.iter_mut().enumerate() {
        let (p, size) = std::mem::replace(slot, (std::ptr::null_mut(), 0));
        if !p.is_null() {
            // SAFETY: a live block from `mixed_sequence`, written at both ends.
            unsafe { free_slot(name, a, i, p, size) };
        }
    }
}

/// # Safety
/// `p` is a live block of `size` bytes allocated by `a` with `layout(size)`,
/// with `i as u8` written at both ends.
#[inline(always)]
unsafe fn free_slot<A: GlobalAlloc>(name: &str, a: &A, i: usize, p: *mut u8, size: usize) {
    // SAFETY: the caller passes a live block of `size` bytes.
    let ends = unsafe { (p.read(), p.add(size - 1).read()) };
    if ends != (i as u8, i as u8) {
        corrupted(name, "mixed_random", "a held block was overwritten (handed out twice?)");
    }
    // SAFETY: forwarded from the caller.
    unsafe { a.dealloc(p, layout(size)) };
}

// ---- threads/<T> -------------------------------------------------------------------

/// One thread's share of `threads/<T>`: `rounds` times `mixed_random`'s
/// operation sequence (its own seed) over slots of its own.
fn mixed_rounds<A: GlobalAlloc>(name: &str, a: &A, seed: u64, rounds: u64) {
    let mut slots: Vec<(*mut u8, usize)> = vec![(std::ptr::null_mut(), 0); SLOTS];
    for _ in 0..rounds {
        mixed_sequence(name, a, &mut slots, seed);
    }
    free_slots(name, a, &mut slots);
}

fn threads<A: GlobalAlloc + Sync>(g: &mut Group, name: &str, a: &'static A, nthreads: usize) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = std::sync::Barrier::new(nthreads + 1);
            thread::scope(|s| {
                for t in 0..nthreads {
                    let (barrier, core) = (&barrier, cores.get(t % cores.len().max(1)).copied());
                    s.spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        barrier.wait();
                        mixed_rounds(name, a, SEED ^ (t as u64 + 1), iters);
                        barrier.wait();
                    });
                }
                barrier.wait();
                let start = Instant::now();
                barrier.wait();
                start.elapsed()
            })
        })
    });
}

// ---- groups -------------------------------------------------------------------------

fn benches(c: &mut Criterion) {
    // Size classes 8 B..32 KiB, then page sizes 4 KiB..4 MiB.
    let sizes = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262_144, 1 << 20, 4 << 20];
    for size in sizes {
        let mut g = c.benchmark_group(format!("pair/{size}"));
        g.throughput(Throughput::Elements(PAIRS as u64));
        each_allocator!(pair, &mut g, size);
        g.finish();
    }

    let mut g = c.benchmark_group("batch1000x64");
    g.throughput(Throughput::Elements(BATCH as u64));
    each_allocator!(batch, &mut g);
    g.finish();

    for n in [100, 10_000] {
        for (order, random) in [("inorder", false), ("random", true)] {
            let mut g = c.benchmark_group(format!("n_then_free/{n}_{order}"));
            g.throughput(Throughput::Elements(n as u64));
            each_allocator!(n_then_free, &mut g, n, random);
            g.finish();
        }
    }

    // One element is the whole chain, 8 B -> 1 MiB (17 reallocs).
    let mut g = c.benchmark_group("realloc_doubling");
    each_allocator!(realloc_doubling, &mut g, 1 << 20);
    g.finish();

    // 8 B -> 64 MiB (23 reallocs), every page of the grown block touched.
    let mut g = c.benchmark_group("realloc_doubling_64m");
    g.sample_size(10);
    each_allocator!(realloc_doubling, &mut g, 64 << 20);
    g.finish();

    // 8 B -> 64 MiB in 65 536 steps of 1 KiB.
    let mut g = c.benchmark_group("realloc_step_1k");
    g.sample_size(10);
    each_allocator!(realloc_step, &mut g);
    g.finish();

    let mut g = c.benchmark_group("producer_consumer");
    g.throughput(Throughput::Elements(PC_BATCHES_PER_ITER * PC_BATCH as u64));
    each_allocator!(producer_consumer, &mut g);
    g.finish();

    let mut g = c.benchmark_group("mixed_random");
    g.throughput(Throughput::Elements(mixed_ops()));
    each_allocator!(mixed_random, &mut g);
    g.finish();

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts: Vec<usize> =
        std::iter::successors(Some(1usize), |t| Some(t * 2)).take_while(|&t| t < cpus).collect();
    counts.push(cpus);
    for t in counts {
        let mut g = c.benchmark_group(format!("threads/{t}"));
        g.throughput(Throughput::Elements(mixed_ops() * t as u64));
        each_allocator!(threads, &mut g, t);
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = global;
    config = config();
    targets = benches
}
criterion_main!(global);
