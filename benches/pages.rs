//! Whole pages: pcpalloc's page API (the process-wide page allocator) next
//! to jemalloc, mimalloc and the system allocator asked for the same thing,
//! page-sized blocks aligned to their size, through `GlobalAlloc` in this
//! one process. Figures only; nothing here asserts a timing.
//!
//! `cargo bench --bench pages`; every benchmark runs about 3 s.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use mimalloc::MiMalloc;
use pcpalloc::{Gfp, Page, PAGE_SIZE};
use tikv_jemallocator::Jemalloc;

/// Pages per batch in the bulk group.
const BULK: usize = 64;

/// The allocators compared with pcpalloc, by the name their rows carry.
fn others() -> [(&'static str, &'static dyn GlobalAlloc); 3] {
    [("jemalloc", &Jemalloc), ("mimalloc", &MiMalloc), ("system", &System)]
}

/// A block of `2^order` pages aligned to its size, as `alloc_pages` gives.
fn pages_layout(order: u32) -> Layout {
    Layout::from_size_align(PAGE_SIZE << order, PAGE_SIZE << order).unwrap()
}

/// One `alloc` + `dealloc` of `layout` on `a`.
fn round_trip(a: &dyn GlobalAlloc, layout: Layout) {
    // SAFETY: `layout` has a non-zero size; the block is freed with the same
    // layout by the allocator that made it, once, and never used otherwise.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        a.dealloc(black_box(p), layout);
    }
}

/// `alloc_page(GFP) + free_page` against a 4 KiB, 4 KiB-aligned round trip.
fn single_page(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_page+free_page");
    g.bench_function("pcpalloc", |b| {
        b.iter(|| {
            let p = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap();
            pcpalloc::free_page(black_box(p));
        })
    });
    for (name, a) in others() {
        g.bench_function(name, |b| b.iter(|| round_trip(a, pages_layout(0))));
    }
    g.finish();
}

/// Batches of 64 taken back to back in one timed stretch (so the timer's
/// own cost, tens of nanoseconds here, is spread over 256 pages), then
/// freed outside it. 256 pages stay below a PCP's `high` (639 here), so in
/// steady state the freed pages wait on the list and the next round finds
/// them there: this measures the per-call cost that bulk allocation exists
/// to save, not the zone's refill work, which both ways share.
const ROUNDS: usize = 4;

/// Times `ROUNDS` batches of 64 pages taken by `take` into fresh arrays; the
/// pages are freed after the clock stops.
fn time_batches(iters: u64, mut take: impl FnMut(&mut [Option<Page>; BULK])) -> Duration {
    let mut total = Duration::ZERO;
    let mut batches: [[Option<Page>; BULK]; ROUNDS] = [const { [const { None }; BULK] }; ROUNDS];
    for _ in 0..iters {
        let start = Instant::now();
        for batch in &mut batches {
            take(black_box(batch));
        }
        total += start.elapsed();
        for p in batches.iter_mut().flatten().filter_map(Option::take) {
            pcpalloc::free_page(p);
        }
    }
    total
}

/// Taking 64 pages: one `alloc_pages_bulk_array` call against 64
/// `alloc_page` calls (and the others' 64 page-aligned allocations). Only
/// the allocation is timed. Reported per page.
fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("64 pages");
    g.throughput(Throughput::Elements((BULK * ROUNDS) as u64));
    g.bench_function("pcpalloc alloc_pages_bulk_array", |b| {
        b.iter_custom(|iters| {
            time_batches(iters, |batch| {
                // The kernel's contract: a short count when the zone ran dry
                // part-way (the next call grows it); callers loop.
                while pcpalloc::alloc_pages_bulk_array(Gfp::DEFAULT, batch) < BULK {}
            })
        })
    });
    g.bench_function("pcpalloc alloc_page x64", |b| {
        b.iter_custom(|iters| {
            time_batches(iters, |batch| {
                for slot in batch.iter_mut() {
                    *slot = pcpalloc::alloc_page(Gfp::DEFAULT);
                }
            })
        })
    });
    for (name, a) in others() {
        g.bench_function(format!("{name} alloc x64"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut ptrs = [[std::ptr::null_mut::<u8>(); BULK]; ROUNDS];
                for _ in 0..iters {
                    let start = Instant::now();
                    for p in ptrs.iter_mut().flatten() {
                        // SAFETY: a non-zero-sized layout.
                        *p = unsafe { a.alloc(pages_layout(0)) };
                    }
                    total += start.elapsed();
                    for &p in ptrs.iter().flatten() {
                        assert!(!p.is_null());
                        // SAFETY: allocated just above with this layout, freed once.
                        unsafe { a.dealloc(p, pages_layout(0)) };
                    }
                }
                total
            })
        });
    }
    g.finish();
}

/// `alloc_pages(order) + free_pages` for the orders with PCP lists, against
/// aligned blocks of the same size.
fn orders(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_pages(order)+free_pages");
    for order in 0..=pcpalloc::PAGE_ALLOC_COSTLY_ORDER {
        g.bench_with_input(BenchmarkId::new("pcpalloc", order), &order, |b, &order| {
            b.iter(|| {
                let p = pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap();
                pcpalloc::free_pages(black_box(p), order);
            })
        });
        others_at(&mut g, order);
    }
    g.finish();
}

fn others_at(g: &mut BenchmarkGroup<'_, WallTime>, order: u32) {
    for (name, a) in others() {
        g.bench_with_input(BenchmarkId::new(name, order), &pages_layout(order), |b, &layout| {
            b.iter(|| round_trip(a, layout))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = single_page, bulk, orders
}
criterion_main!(benches);
