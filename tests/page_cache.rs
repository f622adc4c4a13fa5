//! The thread page cache in front of the PCP lists and the zone (orders
//! 0..=7 of the process-wide page API and of the global allocator's
//! whole-block large allocations): what it serves, what it holds, and that it gives it back.
//! The tests read process-wide counters, so they run one at a time.

use std::sync::Mutex;
use std::thread;

use pcpalloc::{Gfp, Page, PAGE_SIZE};

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most a thread's page cache holds: 32 KiB of each order 0..=3 and
/// one block of each order 4..=7 (64 to 512 KiB).
const MAX_PER_THREAD: usize = 4 * (32 << 10) + (64 << 10) + (128 << 10) + (256 << 10) + (512 << 10);

#[test]
fn round_trips_stay_in_the_thread_page_cache() {
    let _s = serial();
    thread::spawn(|| {
        for order in 0..=3 {
            let p = pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap();
            pcpalloc::free_pages(p, order);
        }
        let before = pcpalloc::vmstat();
        for i in 0..10_000u32 {
            let order = i % 4;
            let p = pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap();
            // SAFETY: the block is ours and spans 2^order pages.
            unsafe { p.as_ptr().add((PAGE_SIZE << order) - 1).write(i as u8) };
            pcpalloc::free_pages(p, order);
        }
        let after = pcpalloc::vmstat();
        // Another thread may refill meanwhile (the harness allocates), but
        // 10 000 round trips through the PCP would show as 10 000.
        let pcp_allocs = after.pcp_alloc - before.pcp_alloc;
        assert!(pcp_allocs < 100, "{pcp_allocs} PCP allocations for 10 000 round trips");
        let held = pcpalloc::stats().page_cache;
        assert!(held >= 15 * PAGE_SIZE, "one block of each order at least is cached, page_cache = {held}");
    })
    .join()
    .unwrap();
}

#[test]
fn a_zeroed_page_from_the_cache_is_zero() {
    let _s = serial();
    thread::spawn(|| {
        for order in 0..=3u32 {
            let len = PAGE_SIZE << order;
            let p = pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap();
            // SAFETY: the block is ours and spans `len` bytes.
            unsafe { p.as_ptr().write_bytes(0xa5, len) };
            pcpalloc::free_pages(p, order);
            // The same block comes back from the cache, dirty: ZERO clears it.
            let z = pcpalloc::alloc_pages(Gfp::ZERO, order).unwrap();
            // SAFETY: as above.
            let bytes = unsafe { std::slice::from_raw_parts(z.as_ptr(), len) };
            assert!(bytes.iter().all(|&b| b == 0), "order {order}: Gfp::ZERO block not zero");
            pcpalloc::free_pages(z, order);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn the_cache_is_bounded_and_given_back_at_exit_and_by_drain() {
    let _s = serial();
    let base = pcpalloc::stats().page_cache;
    let inside = thread::spawn(|| {
        for order in 0..=7u32 {
            let blocks: Vec<Page> = (0..100).map(|_| pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap()).collect();
            for p in blocks {
                pcpalloc::free_pages(p, order);
            }
        }
        pcpalloc::stats().page_cache
    })
    .join()
    .unwrap();
    let grew = inside - base;
    assert!(grew > 0 && grew <= MAX_PER_THREAD, "a thread that freed 800 blocks caches {grew} bytes");
    assert_eq!(pcpalloc::stats().page_cache, base, "the exited thread's page cache was not given back");

    // This thread's cache, and drain_all_pages.
    let blocks: Vec<Page> = (0..8).map(|_| pcpalloc::alloc_page(Gfp::DEFAULT).unwrap()).collect();
    blocks.into_iter().for_each(pcpalloc::free_page);
    assert!(pcpalloc::stats().page_cache >= 8 * PAGE_SIZE);
    pcpalloc::drain_all_pages();
    assert_eq!(pcpalloc::stats().page_cache, 0);
    assert!(pcpalloc::zoneinfo().pcp.iter().all(|p| p.0 == 0), "drain left pages on a PCP list");
}

#[test]
fn blocks_move_between_threads_intact() {
    let _s = serial();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Page, u32, u64)>(64);
    let producer = thread::spawn(move || {
        for i in 0..20_000u64 {
            let order = (i % 4) as u32;
            let p = pcpalloc::alloc_pages(Gfp::DEFAULT, order).unwrap();
            let words = (PAGE_SIZE << order) / 8;
            // SAFETY: the block is ours, page aligned, `words` words long.
            unsafe { std::slice::from_raw_parts_mut(p.as_ptr().cast::<u64>(), words) }.fill(i);
            tx.send((p, order, i)).unwrap();
        }
    });
    let consumer = thread::spawn(move || {
        for (p, order, tag) in rx {
            let words = (PAGE_SIZE << order) / 8;
            // SAFETY: the block was handed to us whole.
            let w = unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<u64>(), words) };
            assert!(w.iter().all(|&x| x == tag), "block {tag} of order {order} changed while held");
            pcpalloc::free_pages(p, order);
        }
    });
    producer.join().unwrap();
    consumer.join().unwrap();
}

#[test]
fn large_whole_blocks_use_the_page_cache() {
    let _s = serial();
    thread::spawn(|| {
        for size in [4096usize, 8192, 16384, 32768, 65536, 262144] {
            let layout = std::alloc::Layout::from_size_align(size, size).unwrap();
            // SAFETY: a non-zero layout, freed once with the same layout.
            unsafe { std::alloc::dealloc(std::alloc::alloc(layout), layout) };
        }
        let before = pcpalloc::vmstat();
        for _ in 0..10_000 {
            let v: Vec<u8> = Vec::with_capacity(32768);
            std::hint::black_box(&v);
            let w: Vec<u8> = Vec::with_capacity(65536);
            std::hint::black_box(&w);
            let x: Vec<u8> = Vec::with_capacity(262144);
            std::hint::black_box(&x);
            let layout = std::alloc::Layout::from_size_align(8192, 8192).unwrap();
            // SAFETY: as above.
            unsafe { std::alloc::dealloc(std::hint::black_box(std::alloc::alloc(layout)), layout) };
        }
        let after = pcpalloc::vmstat();
        let pcp_allocs = after.pcp_alloc - before.pcp_alloc;
        assert!(pcp_allocs < 100, "{pcp_allocs} PCP allocations for 40 000 large round trips");
        // 64 and 256 KiB blocks have no PCP list: without the cache each
        // would take the zone lock twice.
        let zone_locks = after.zone_lock - before.zone_lock;
        assert!(zone_locks < 200, "{zone_locks} zone-lock holds for 20 000 64 and 256 KiB round trips");
    })
    .join()
    .unwrap();
}
