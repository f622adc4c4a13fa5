//! The tutorial's four situations on a private page allocator, with the
//! exact sequence of kernel functions recorded:
//! `cargo test --features trace --test trace`.
#![cfg(feature = "trace")]

use pcpalloc::trace::{self, Fn};
use pcpalloc::{Config, Gfp, PageAllocator};

const BATCH: usize = 4;
const HIGH: usize = 16;

fn cpu0() -> usize {
    0
}

/// One CPU, `batch` 4, `high` 16; the zone already grown and drained, so
/// every trace below is steady state.
fn instance() -> PageAllocator {
    let pa = PageAllocator::new(Config {
        nr_cpus: 1,
        cpu: Some(cpu0),
        batch: Some(BATCH),
        high: Some(HIGH),
        decay_ms: u64::MAX,
        ..Config::small(4096, 1)
    });
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    pa.free_pages(p, 0);
    pa.drain_all_pages();
    pa
}

const ALLOC_PREFIX: [&str; 6] =
    ["alloc_pages", "__alloc_pages", "get_page_from_freelist", "rmqueue", "rmqueue_pcplist", "__rmqueue_pcplist"];

#[test]
fn a_single_page_on_the_pcp_fast_path() {
    let pa = instance();
    let first = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap(); // refills the list
    trace::start();
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    let t = trace::take();
    let mut want = ALLOC_PREFIX.to_vec();
    want.push("mm_page_alloc");
    assert_eq!(t.names(), want, "\n{}", t.tree());
    // Each function is nested in the one before it.
    for (i, e) in t.events[..6].iter().enumerate() {
        assert_eq!(e.depth as usize, i);
    }
    assert_eq!(t.events[6].pfn, p.pfn());
    pa.free_pages(p, 0);
    pa.free_pages(first, 0);
}

#[test]
fn an_empty_pcp_list_is_refilled_by_one_rmqueue_bulk_of_batch_blocks() {
    let pa = instance();
    trace::start();
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    let t = trace::take();
    let names = t.names();
    assert_eq!(names[..6], ALLOC_PREFIX, "\n{}", t.tree());
    assert_eq!(names[6], "rmqueue_bulk");
    assert_eq!(*names.last().unwrap(), "mm_page_alloc");
    let bulk = t.events[6];
    assert_eq!(bulk.count as usize, BATCH, "rmqueue_bulk took batch blocks");
    assert_eq!(names.iter().filter(|&&n| n == "rmqueue_bulk").count(), 1);
    // Inside it, one take per __rmqueue → __rmqueue_smallest →
    // get_page_from_free_area, then either [expand →] one
    // mm_page_alloc_zone_locked (percpu_refill=1), or, for a free block no
    // bigger than what the batch still needs, an expand that cuts the whole
    // block (its count: the blocks) and one mm_page_alloc_zone_locked each.
    let inside: Vec<_> = t.events[7..t.events.len() - 1].to_vec();
    assert!(inside.iter().all(|e| e.depth > bulk.depth));
    let count = |f: Fn| inside.iter().filter(|e| e.func == f).count();
    let takes = count(Fn::RmqueueInner);
    assert_eq!(count(Fn::RmqueueSmallest), takes);
    assert_eq!(count(Fn::MmPageAllocZoneLocked), BATCH, "one tracepoint per block taken");
    assert!(inside.iter().filter(|e| e.func == Fn::MmPageAllocZoneLocked).all(|e| e.count == 1));
    let whole: Vec<_> = inside.iter().filter(|e| e.func == Fn::Expand && e.count != u32::MAX).collect();
    let cut: usize = whole.iter().map(|e| e.count as usize).sum();
    assert_eq!(takes - whole.len() + cut, BATCH, "the takes add up to batch blocks\n{}", t.tree());
    assert!(!whole.is_empty(), "a refill of {BATCH} after warm-up takes a whole block\n{}", t.tree());
    for e in &whole {
        assert_eq!(e.count, 1 << (e.extra - e.order as u32), "a whole block of order {} is cut in 2^k", e.extra);
    }
    let found = inside.iter().filter(|e| e.func == Fn::GetPageFromFreeArea && e.count == 1).count();
    assert_eq!(found, takes, "each __rmqueue_smallest stops at the first free area with a block");
    // The order sequence per take: rmqueue, smallest, areas..., [expand], zone_locked.
    for w in inside.windows(2) {
        if w[0].func == Fn::RmqueueInner {
            assert_eq!(w[1].func, Fn::RmqueueSmallest);
        }
        if w[1].func == Fn::Expand {
            assert_eq!(w[0].func, Fn::GetPageFromFreeArea);
            assert_eq!(w[0].count, 1);
            assert!(w[1].extra > w[1].order as u32, "expand splits from a larger order");
        }
    }
    assert_eq!(pa.vmstat().pcp_refill, 2, "one refill while warming up, one here");
    pa.free_pages(p, 0);
}

#[test]
fn a_bulk_allocation_takes_the_pcp_once() {
    let pa = instance();
    let warm = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap(); // refill: 3 pages left on the list
    let mut pages: [Option<pcpalloc::Page>; 3] = Default::default();
    trace::start();
    let n = pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut pages);
    let t = trace::take();
    assert_eq!(n, 3);
    assert_eq!(
        t.names(),
        [
            "__alloc_pages_bulk",
            "__rmqueue_pcplist",
            "mm_page_alloc",
            "__rmqueue_pcplist",
            "mm_page_alloc",
            "__rmqueue_pcplist",
            "mm_page_alloc"
        ],
        "\n{}",
        t.tree()
    );
    assert_eq!(t.events[0].count, 3);
    assert!(t.events[1..].iter().all(|e| e.depth == 1));
    for p in pages.into_iter().flatten() {
        pa.free_pages(p, 0);
    }
    pa.free_pages(warm, 0);
}

#[test]
fn a_free_that_reaches_high_drains_a_batch_and_merges_buddies() {
    let pa = instance();
    let pages: Vec<_> = (0..HIGH).map(|_| pa.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
    pa.drain_all_pages();
    let mut pages = pages.into_iter();
    for p in pages.by_ref().take(HIGH - 1) {
        pa.free_pages(p, 0);
    }
    assert_eq!(pa.zoneinfo().pcp[0].0, HIGH - 1);
    trace::start();
    pa.free_pages(pages.next().unwrap(), 0);
    let t = trace::take();
    let names = t.names();
    assert_eq!(
        names[..5],
        ["free_pages", "free_unref_page", "mm_page_free", "free_unref_page_commit", "free_pcppages_bulk"],
        "\n{}",
        t.tree()
    );
    // nr_pcp_free: count reached high (16), so max(batch, count + batch - high) = 4.
    let drain = t.events[4];
    assert_eq!(drain.count as usize, BATCH);
    let rest: Vec<_> = t.events[5..].to_vec();
    assert_eq!(rest.len(), 2 * BATCH);
    for pair in rest.chunks(2) {
        assert_eq!(pair[0].func, Fn::MmPagePcpuDrain);
        assert_eq!(pair[1].func, Fn::FreeOnePage);
        assert_eq!(pair[0].pfn, pair[1].pfn);
        assert_eq!(pair[1].extra, pair[1].order as u32 + pair[1].count, "each merge raises the order by one");
    }
    // The coldest pages go first; consecutive pages from one refill are
    // buddies, so some of them merge.
    assert!(rest.iter().any(|e| e.func == Fn::FreeOnePage && e.extra > e.order as u32), "\n{}", t.tree());
    assert_eq!(pa.zoneinfo().pcp[0].0, HIGH - BATCH);
    pa.check().unwrap();
}

#[test]
fn nothing_is_recorded_unless_started_and_take_stops() {
    let pa = instance();
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    assert!(trace::take().events.is_empty());
    trace::start();
    pa.free_pages(p, 0);
    let t = trace::take();
    assert!(!t.events.is_empty());
    let q = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    assert!(trace::take().events.is_empty());
    pa.free_pages(q, 0);
    // Every event prints as one line.
    assert!(t.to_string().lines().count() == t.events.len());
}
