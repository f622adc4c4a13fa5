//! Checks of the page allocator through its public API, on private instances
//! (`PageAllocator::new`), never the process-wide one: this binary keeps the
//! system allocator as its global allocator.
//!
//! Every test calls `check()` (the zone's and every PCP's invariants) after
//! the steps it takes, and ends by freeing everything, draining the PCPs and
//! asserting that the zone is whole again: every page free and merged into
//! the largest blocks its sections allow.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Barrier;

use pcpalloc::{
    BuddyInfo, Config, Gfp, Page, PageAllocator, PurgeMode, VmStat, MAX_BULK, MAX_PAGE_ORDER, MIGRATE_MOVABLE,
    NR_PAGE_ORDERS, PAGE_SIZE,
};

// ---- helpers ------------------------------------------------------------------

/// Fails the test with the zone's state if an invariant does not hold.
#[track_caller]
fn ok(pa: &PageAllocator) {
    if let Err(e) = pa.check() {
        panic!("check() failed: {} (pfn {:#x})\n{}{}", e.what, e.pfn, pa.buddyinfo(), pa.zoneinfo());
    }
}

fn cpu0() -> usize {
    0
}

thread_local! {
    /// The CPU this thread claims to run on, for `Config::cpu`.
    static FAKE_CPU: Cell<usize> = const { Cell::new(0) };
}

fn fake_cpu() -> usize {
    FAKE_CPU.with(Cell::get)
}

fn set_fake_cpu(cpu: usize) {
    FAKE_CPU.with(|c| c.set(cpu));
}

/// A small instance with one PCP and no purging, so that every step is
/// deterministic.
fn one_cpu(usable: usize, max_sections: usize) -> Config {
    Config { nr_cpus: 1, cpu: Some(cpu0), decay_ms: u64::MAX, ..Config::small(usable, max_sections) }
}

thread_local! {
    /// The time this thread's allocator sees, for `Config::clock`.
    static FAKE_MS: Cell<u64> = const { Cell::new(1_000_000) };
}

fn fake_clock() -> u64 {
    FAKE_MS.with(Cell::get)
}

fn advance_fake_clock(ms: u64) {
    FAKE_MS.with(|c| c.set(c.get() + ms));
}

/// `buddyinfo`, checked to be consistent with itself: the per-migratetype
/// counts add up to the per-order ones.
#[track_caller]
fn buddyinfo(pa: &PageAllocator) -> BuddyInfo {
    let bi = pa.buddyinfo();
    for o in 0..NR_PAGE_ORDERS {
        let by_type: usize = bi.per_type.iter().map(|t| t[o]).sum();
        assert_eq!(by_type, bi.nr_free[o], "order {o}: per-type counts do not add up\n{bi}{}", bi.pagetypeinfo());
    }
    bi
}

/// Pages at the start of each section that hold its header and descriptors.
fn meta_pages() -> usize {
    Config::small(0, 1).section_pages
}

/// `buddyinfo` of a zone whose every page is free and fully merged: the
/// usable pages of each section, `[meta, meta + usable)` from the section's
/// 1 GiB-aligned start, cut into the largest aligned blocks.
fn fully_merged(usable: usize, sections: usize) -> [usize; NR_PAGE_ORDERS] {
    let mut nr = [0; NR_PAGE_ORDERS];
    let (mut p, end) = (meta_pages(), meta_pages() + usable);
    while p < end {
        let mut o = p.trailing_zeros().min(MAX_PAGE_ORDER);
        while p + (1 << o) > end {
            o -= 1;
        }
        nr[o as usize] += sections;
        p += 1 << o;
    }
    nr
}

/// Drains, checks, and asserts that no page is in use or cached and that
/// the free pages are merged as far as they can be.
#[track_caller]
fn assert_whole(pa: &PageAllocator, usable: usize) {
    pa.drain_all_pages();
    ok(pa);
    let zi = pa.zoneinfo();
    assert_eq!(zi.pcp_pages, 0, "pages left on PCP lists after a drain\n{zi}");
    assert_eq!(zi.free_pages, zi.managed_pages, "pages still in use\n{zi}");
    assert_eq!(zi.managed_pages, usable * zi.nr_sections);
    let bi = buddyinfo(pa);
    assert_eq!(bi.free_pages(), zi.managed_pages);
    assert_eq!(bi.nr_free, fully_merged(usable, zi.nr_sections), "free pages not fully merged\n{bi}");
}

/// A fresh instance whose first section is mapped and entirely free.
fn grown(cfg: Config, usable: usize) -> PageAllocator {
    let pa = PageAllocator::new(cfg);
    ok(&pa);
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).expect("the first allocation maps a section");
    ok(&pa);
    pa.free_pages(p, 0);
    assert_whole(&pa, usable);
    pa
}

fn block_bytes(order: u32) -> usize {
    PAGE_SIZE << order
}

/// Writes `tag` into the first and last 8 bytes of a block.
fn write_tag(p: &Page, order: u32, tag: u64) {
    let base = p.as_ptr();
    // SAFETY: the block is ours (allocated and not yet freed), page aligned
    // and `PAGE_SIZE << order` bytes long, so both words lie inside it and
    // are 8-byte aligned.
    unsafe {
        base.cast::<u64>().write(tag);
        base.add(block_bytes(order) - 8).cast::<u64>().write(tag);
    }
}

/// Reads back the first and last 8 bytes of a block.
fn read_tag(p: &Page, order: u32) -> (u64, u64) {
    let base = p.as_ptr();
    // SAFETY: as in `write_tag`: both words lie inside a block we own.
    unsafe { (base.cast::<u64>().read(), base.add(block_bytes(order) - 8).cast::<u64>().read()) }
}

#[track_caller]
fn assert_tag(p: &Page, order: u32, tag: u64) {
    assert_eq!(read_tag(p, order), (tag, tag), "block {:p} (order {order}) lost its pattern", p.as_ptr());
}

/// The whole block as bytes.
fn bytes_mut(p: &mut Page, order: u32) -> &mut [u8] {
    // SAFETY: the block is ours for as long as `p` is borrowed (the handle is
    // unique and freeing it takes it by value), page aligned and
    // `PAGE_SIZE << order` bytes long.
    unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), block_bytes(order)) }
}

#[track_caller]
fn assert_aligned(p: &Page, order: u32) {
    let addr = p.as_ptr() as usize;
    assert_eq!(addr % block_bytes(order), 0, "order-{order} block at {addr:#x} not aligned to its size");
    assert_eq!(p.pfn(), addr / PAGE_SIZE);
}

/// A seeded xorshift64* generator: reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---- 1. unit-style: orders, merging, splitting -----------------------------------

#[test]
fn every_order_allocates_and_frees() {
    let usable = 4096;
    let pa = grown(one_cpu(usable, 1), usable);
    for gfp in [Gfp::DEFAULT, Gfp::RECLAIMABLE, Gfp::ZERO] {
        for order in 0..=MAX_PAGE_ORDER {
            let p = pa.alloc_pages(gfp, order).unwrap_or_else(|| panic!("order {order} with {gfp:?}"));
            ok(&pa);
            assert_aligned(&p, order);
            if gfp.contains(Gfp::ZERO) {
                assert_eq!(read_tag(&p, order), (0, 0));
            }
            write_tag(&p, order, 0xa110c + order as u64);
            assert_tag(&p, order, 0xa110c + order as u64);
            pa.free_pages(p, order);
            ok(&pa);
        }
        assert_whole(&pa, usable);
    }

    // Every order live at once: 2047 pages, disjoint.
    let mut live: Vec<(Page, u32)> = Vec::new();
    for order in (0..=MAX_PAGE_ORDER).rev() {
        let p = pa.alloc_pages(Gfp::DEFAULT, order).expect("room for one block of every order");
        ok(&pa);
        assert_aligned(&p, order);
        write_tag(&p, order, order as u64 + 1);
        live.push((p, order));
    }
    let mut spans: Vec<(usize, usize)> =
        live.iter().map(|(p, o)| (p.as_ptr() as usize, p.as_ptr() as usize + block_bytes(*o))).collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "live blocks overlap: {spans:x?}");
    let zi = pa.zoneinfo();
    assert_eq!(zi.free_pages + zi.pcp_pages + 2047, zi.managed_pages);
    for (p, order) in live {
        assert_tag(&p, order, order as u64 + 1);
        pa.free_pages(p, order);
        ok(&pa);
    }
    assert_whole(&pa, usable);
}

#[test]
fn freed_buddies_merge() {
    let usable = 1024;
    let pa = grown(one_cpu(usable, 1), usable);
    // Take order-0 pages until two of them are buddies (frame numbers that
    // differ only in bit 0), then give back all the others.
    let mut pages: Vec<Page> = Vec::new();
    let (a, b) = loop {
        let p = pa.alloc_pages(Gfp::DEFAULT, 0).expect("zone has room");
        ok(&pa);
        if let Some(i) = pages.iter().position(|q| q.pfn() == p.pfn() ^ 1) {
            let q = pages.swap_remove(i);
            break if q.pfn() < p.pfn() { (q, p) } else { (p, q) };
        }
        pages.push(p);
    };
    assert_eq!(a.pfn() % 2, 0);
    for p in pages {
        pa.free_pages(p, 0);
        ok(&pa);
    }
    pa.drain_all_pages();
    ok(&pa);
    let both_out = buddyinfo(&pa);
    assert_eq!(both_out.free_pages(), usable - 2);

    // One back: it cannot merge, its buddy is in use.
    pa.free_pages(a, 0);
    ok(&pa);
    pa.drain_all_pages();
    ok(&pa);
    let one_back = buddyinfo(&pa);
    assert_eq!(one_back.nr_free[0], both_out.nr_free[0] + 1, "the lone page is an order-0 block\n{one_back}");
    assert_eq!(one_back.nr_free[1..], both_out.nr_free[1..]);

    // Both back: they merge into an order-1 block (and on up as far as their
    // neighbours allow), so the order-0 block is gone and higher ones appear.
    pa.free_pages(b, 0);
    ok(&pa);
    pa.drain_all_pages();
    ok(&pa);
    let merged = buddyinfo(&pa);
    assert_eq!(merged.nr_free[0], one_back.nr_free[0] - 1, "the pair merged\n{one_back}{merged}");
    assert!(
        (1..NR_PAGE_ORDERS).any(|o| merged.nr_free[o] > one_back.nr_free[o]),
        "no higher-order block appeared\n{one_back}{merged}"
    );
    assert_eq!(merged.nr_free, fully_merged(usable, 1));
    assert_whole(&pa, usable);
}

/// `expand`: taking order `k` when the smallest free block of the movable
/// type has order `o > k` leaves one free block of each order `k..o` and one
/// fewer of order `o`.
#[test]
fn expand_splits_the_smallest_larger_block() {
    let usable = 4096;
    let pa = grown(one_cpu(usable, 1), usable);
    let mut live = Vec::new();
    // Orders above PAGE_ALLOC_COSTLY_ORDER bypass the PCP lists and come
    // straight from the buddy, one block per call.
    for &order in &[4u32, 4, 5, 4, 6, 7, 4, 8, 9, 10, 5, 4] {
        let before = buddyinfo(&pa);
        let Some(from) = (order as usize..NR_PAGE_ORDERS).find(|&o| before.per_type[MIGRATE_MOVABLE as usize][o] > 0)
        else {
            panic!("no movable block of order >= {order}\n{before}")
        };
        let p = pa.alloc_pages(Gfp::DEFAULT, order).expect("a block exists");
        ok(&pa);
        assert_aligned(&p, order);
        let after = buddyinfo(&pa);
        let mut want = before.nr_free;
        want[from] -= 1;
        for w in &mut want[order as usize..from] {
            *w += 1;
        }
        assert_eq!(after.nr_free, want, "order {order} taken from an order-{from} block\n{before}{after}");
        live.push((p, order));
    }
    for (p, order) in live {
        pa.free_pages(p, order);
        ok(&pa);
    }
    assert_whole(&pa, usable);
}

// ---- 2. kernel semantics ---------------------------------------------------------

#[test]
fn bulk_fills_only_the_empty_slots() {
    let usable = 4096;
    let pa = grown(one_cpu(usable, 1), usable);
    let mut arr: Vec<Option<Page>> = (0..32).map(|_| None).collect();
    for i in [0usize, 1, 5, 17, 31] {
        arr[i] = pa.alloc_pages(Gfp::DEFAULT, 0);
        write_tag(arr[i].as_ref().unwrap(), 0, 0xbeef + i as u64);
    }
    let before: Vec<Option<usize>> = arr.iter().map(|p| p.as_ref().map(|p| p.as_ptr() as usize)).collect();
    let bulk_before = pa.vmstat().bulk_alloc;
    let n = pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr);
    ok(&pa);
    assert_eq!(n, arr.len());
    assert_eq!(pa.vmstat().bulk_alloc, bulk_before + 1, "one PCP hold for the whole batch");
    for (i, (slot, was)) in arr.iter().zip(&before).enumerate() {
        let p = slot.as_ref().expect("every slot populated");
        assert_aligned(p, 0);
        if let Some(addr) = was {
            assert_eq!(p.as_ptr() as usize, *addr, "populated slot {i} was overwritten");
            assert_tag(p, 0, 0xbeef + i as u64);
        }
    }
    let mut addrs: Vec<usize> = arr.iter().map(|p| p.as_ref().unwrap().as_ptr() as usize).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), arr.len(), "a page handed out twice");

    // An all-populated array: nothing allocated, its length returned.
    let v = pa.vmstat();
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr), arr.len());
    assert_eq!(pa.vmstat().pgalloc, v.pgalloc);
    // An empty array.
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut []), 0);
    // One hole in the middle: filled, and the whole prefix counted.
    let hole = arr[9].take().unwrap();
    pa.free_pages(hole, 0);
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::ZERO, &mut arr), arr.len());
    assert_eq!(read_tag(arr[9].as_ref().unwrap(), 0), (0, 0));
    ok(&pa);

    for p in arr.into_iter().flatten() {
        pa.free_pages(p, 0);
    }
    assert_whole(&pa, usable);
}

#[test]
fn bulk_longer_than_max_bulk() {
    let usable = 4096;
    let pa = grown(one_cpu(usable, 1), usable);
    let len = MAX_BULK + 100;
    let mut arr: Vec<Option<Page>> = (0..len).map(|_| None).collect();
    let first = pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr);
    ok(&pa);
    assert!(first > 0 && first <= MAX_BULK, "one call fills at most MAX_BULK slots, got {first}");
    assert!(arr[..first].iter().all(Option::is_some));
    assert!(arr[first..].iter().all(Option::is_none));
    // A caller that loops until the array is full must make progress.
    let mut filled = first;
    for _ in 0..4 {
        if filled == len {
            break;
        }
        let n = pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr);
        ok(&pa);
        assert!(n > filled, "no progress past slot {filled} of {len}");
        filled = n;
    }
    assert_eq!(filled, len);
    assert!(arr.iter().all(Option::is_some));
    // All populated and longer than MAX_BULK: the whole length.
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr), len);
    for p in arr.into_iter().flatten() {
        pa.free_pages(p, 0);
    }
    assert_whole(&pa, usable);
}

#[test]
fn bulk_stops_when_the_zone_runs_dry() {
    let usable = 64;
    let pa = grown(one_cpu(usable, 1), usable);
    let mut arr: Vec<Option<Page>> = (0..100).map(|_| None).collect();
    let n = pa.alloc_pages_bulk_array(Gfp::NOWAIT, &mut arr);
    ok(&pa);
    assert_eq!(n, usable, "every page of the zone, then a short count");
    assert!(arr[..n].iter().all(Option::is_some));
    assert!(arr[n..].iter().all(Option::is_none));
    // Dry: nothing more, with NOWAIT or without (the zone may not grow).
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::NOWAIT, &mut arr), n);
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr), n);
    assert_eq!(pa.zoneinfo().nr_sections, 1);
    ok(&pa);
    // One page back: the next call fills exactly the first hole.
    let p = arr[10].take().unwrap();
    pa.free_pages(p, 0);
    assert_eq!(pa.alloc_pages_bulk_array(Gfp::NOWAIT, &mut arr), n);
    assert!(arr[10].is_some());
    ok(&pa);
    for p in arr.into_iter().flatten() {
        pa.free_pages(p, 0);
    }
    assert_whole(&pa, usable);
}

#[test]
fn empty_pcp_list_is_refilled_by_one_batch() {
    let (usable, batch, high) = (4096, 8, 64);
    let pa = grown(Config { batch: Some(batch), high: Some(high), ..one_cpu(usable, 1) }, usable);
    assert_eq!(pa.zoneinfo().pcp[0], (0, high, batch));

    let v0 = pa.vmstat();
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).unwrap();
    ok(&pa);
    let v1 = pa.vmstat();
    assert_eq!(v1.pcp_refill, v0.pcp_refill + 1, "one rmqueue_bulk for an empty list");
    assert_eq!(v1.pcp_alloc, v0.pcp_alloc + 1);
    assert_eq!(pa.zoneinfo().pcp[0].0, batch - 1, "a batch came in, one page went out");
    assert_eq!(pa.zoneinfo().free_pages, usable - batch);

    // The rest of the batch comes from the list without touching the zone.
    let mut pages = vec![p];
    for _ in 1..batch {
        pages.push(pa.alloc_pages(Gfp::DEFAULT, 0).unwrap());
    }
    ok(&pa);
    assert_eq!(pa.vmstat().pcp_refill, v1.pcp_refill);
    assert_eq!(pa.zoneinfo().pcp[0].0, 0);
    pages.push(pa.alloc_pages(Gfp::DEFAULT, 0).unwrap());
    assert_eq!(pa.vmstat().pcp_refill, v1.pcp_refill + 1);
    assert_eq!(pa.zoneinfo().pcp[0].0, batch - 1);

    // Order 1: `batch >> 1` blocks, counted in pages.
    let q = pa.alloc_pages(Gfp::DEFAULT, 1).unwrap();
    ok(&pa);
    assert_eq!(pa.vmstat().pcp_refill, v1.pcp_refill + 2);
    assert_eq!(pa.zoneinfo().pcp[0].0, batch - 1 + (batch / 2 - 1) * 2);
    // A separate list per migratetype: RECLAIMABLE does not use MOVABLE's pages.
    let r = pa.alloc_pages(Gfp::RECLAIMABLE, 0).unwrap();
    assert_eq!(pa.vmstat().pcp_refill, v1.pcp_refill + 3);
    ok(&pa);

    pa.free_pages(q, 1);
    pa.free_pages(r, 0);
    for p in pages {
        pa.free_pages(p, 0);
    }
    assert_whole(&pa, usable);
}

#[test]
fn freeing_up_to_high_drains_a_batch() {
    let (usable, batch, high) = (4096, 8, 32);
    let pa = grown(Config { batch: Some(batch), high: Some(high), ..one_cpu(usable, 1) }, usable);
    let pages: Vec<Page> = (0..3 * high).map(|_| pa.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
    pa.drain_all_pages();
    ok(&pa);
    let mut drains = 0;
    for p in pages {
        let before = (pa.vmstat().pcp_drain, pa.zoneinfo().pcp[0].0);
        pa.free_pages(p, 0);
        ok(&pa);
        let after = (pa.vmstat().pcp_drain, pa.zoneinfo().pcp[0].0);
        assert!(after.1 < high, "count {} reached high {high} and stayed", after.1);
        if before.1 + 1 >= high {
            assert_eq!(after.0, before.0 + 1, "the free that reached high drained");
            assert!(after.1 <= high - batch, "a drain frees at least a batch: count {}", after.1);
            drains += 1;
        } else {
            assert_eq!(after, (before.0, before.1 + 1), "a free below high only lists the page");
        }
    }
    assert!(drains >= 2);
    assert_whole(&pa, usable);
}

#[test]
fn order_above_max_fails_cleanly() {
    let pa = PageAllocator::new(one_cpu(1024, 1));
    for order in [MAX_PAGE_ORDER + 1, 20, u32::MAX] {
        assert!(pa.alloc_pages(Gfp::DEFAULT, order).is_none());
        assert!(pa.alloc_pages(Gfp::ZERO | Gfp::RECLAIMABLE, order).is_none());
        ok(&pa);
    }
    assert_eq!(pa.zoneinfo().nr_sections, 0, "a refused order maps nothing");
    assert_eq!(pa.vmstat().slowpath, 0);
}

#[test]
fn nowait_fails_where_default_grows() {
    let usable = 64;
    let pa = grown(one_cpu(usable, 3), usable);
    let mut pages: Vec<Page> = (0..usable).map(|_| pa.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
    ok(&pa);
    let zi = pa.zoneinfo();
    assert_eq!((zi.nr_sections, zi.free_pages, zi.pcp_pages), (1, 0, 0));

    let v = pa.vmstat();
    assert!(pa.alloc_pages(Gfp::NOWAIT, 0).is_none(), "NOWAIT may not grow an exhausted zone");
    assert!(pa.alloc_pages(Gfp::NOWAIT | Gfp::ZERO, 3).is_none());
    ok(&pa);
    assert_eq!(pa.zoneinfo().nr_sections, 1);
    assert_eq!(pa.vmstat().slowpath_grow, v.slowpath_grow);
    assert!(pa.vmstat().slowpath > v.slowpath);

    // Without NOWAIT the slow path maps a second section.
    let p = pa.alloc_pages(Gfp::DEFAULT, 0).expect("grows");
    ok(&pa);
    assert_eq!(pa.vmstat().slowpath_grow, v.slowpath_grow + 1);
    let zi = pa.zoneinfo();
    assert_eq!((zi.nr_sections, zi.managed_pages), (2, 2 * usable));
    pages.push(p);
    // Fill the second and third sections; past max_sections DEFAULT fails too.
    while let Some(p) = pa.alloc_pages(Gfp::DEFAULT, 0) {
        pages.push(p);
    }
    ok(&pa);
    assert_eq!(pages.len(), 3 * usable);
    assert_eq!(pa.zoneinfo().nr_sections, 3);
    assert_eq!(pa.vmstat().slowpath_grow, v.slowpath_grow + 2);

    for p in pages {
        pa.free_pages(p, 0);
    }
    assert_whole(&pa, usable);
}

/// The slow path drains the PCPs even for NOWAIT: pages cached on a list
/// merge back in the zone and make the order asked for.
#[test]
fn nowait_drains_the_pcp_lists() {
    let usable = 64;
    let pa = grown(one_cpu(usable, 1), usable);
    let pages: Vec<Page> = (0..usable).map(|_| pa.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
    for p in pages {
        pa.free_pages(p, 0);
    }
    ok(&pa);
    let zi = pa.zoneinfo();
    assert!(zi.pcp_pages > 0, "some pages wait on the PCP list\n{zi}");
    let v = pa.vmstat();
    let p = pa.alloc_pages(Gfp::NOWAIT, 4).expect("the drained pages merge to order 4");
    ok(&pa);
    assert!(pa.vmstat().drain_all > v.drain_all);
    assert_eq!(pa.zoneinfo().nr_sections, 1);
    pa.free_pages(p, 4);
    assert_whole(&pa, usable);
}

// ---- 3. randomized, against a model ---------------------------------------------

/// What the test knows about the blocks it holds.
struct Model {
    /// Live blocks, for random picks.
    live: Vec<(Page, u32, u64)>,
    /// Start → end of every live block, to find overlaps.
    spans: BTreeMap<usize, usize>,
    pages: usize,
    next_tag: u64,
}

impl Model {
    fn new() -> Model {
        Model { live: Vec::new(), spans: BTreeMap::new(), pages: 0, next_tag: 1 }
    }

    /// Records a block just handed out: aligned, overlapping nothing live,
    /// zeroed if asked; then tags it.
    #[track_caller]
    fn add(&mut self, p: Page, order: u32, gfp: Gfp) {
        assert_aligned(&p, order);
        let (start, end) = (p.as_ptr() as usize, p.as_ptr() as usize + block_bytes(order));
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            assert!(e <= start, "new block {start:#x}..{end:#x} overlaps live {s:#x}..{e:#x}");
        }
        if gfp.contains(Gfp::ZERO) {
            assert_eq!(read_tag(&p, order), (0, 0), "Gfp::ZERO block {start:#x} not zeroed");
        }
        self.spans.insert(start, end);
        let tag = self.next_tag ^ 0x5a5a_0000_0000_0000;
        self.next_tag += 1;
        write_tag(&p, order, tag);
        self.pages += 1 << order;
        self.live.push((p, order, tag));
    }

    /// Takes the block at `i` out, checking its pattern.
    #[track_caller]
    fn take(&mut self, i: usize) -> (Page, u32) {
        let (p, order, tag) = self.live.swap_remove(i);
        assert_tag(&p, order, tag);
        self.spans.remove(&(p.as_ptr() as usize));
        self.pages -= 1 << order;
        (p, order)
    }
}

fn random_gfp(rng: &mut Rng) -> Gfp {
    match rng.below(8) {
        0..=2 => Gfp::DEFAULT,
        3 => Gfp::RECLAIMABLE,
        4 => Gfp::ZERO,
        5 => Gfp::ZERO | Gfp::RECLAIMABLE,
        6 => Gfp::NOWAIT,
        _ => Gfp::NOWAIT | Gfp::RECLAIMABLE | Gfp::ZERO,
    }
}

/// After every operation: invariants, and every page accounted for.
#[track_caller]
fn consistent(pa: &PageAllocator, m: &Model, usable: usize) {
    ok(pa);
    let zi = pa.zoneinfo();
    assert_eq!(zi.managed_pages, usable * zi.nr_sections);
    assert_eq!(zi.free_pages + zi.pcp_pages + m.pages, zi.managed_pages, "pages unaccounted for\n{zi}");
    let v = pa.vmstat();
    assert_eq!(v.pgalloc - v.pgfree, m.pages as u64, "pgalloc - pgfree != live pages\n{v}");
    assert_eq!(buddyinfo(pa).free_pages(), zi.free_pages);
}

/// Runs `ops` random operations; returns how often each kind ran, the most
/// pages live at once and the allocator's counters at the end.
fn random_run(seed: u64, ops: usize, cfg: Config, usable: usize) -> (BTreeMap<&'static str, usize>, usize, VmStat) {
    let mut rng = Rng::new(seed);
    let pa = PageAllocator::new(cfg);
    let mut m = Model::new();
    let cap = usable * cfg.max_sections;
    let (mut counts, mut peak) = (BTreeMap::new(), 0);
    for step in 0..ops {
        set_fake_cpu(rng.below(cfg.nr_cpus + 1)); // ids past nr_cpus wrap around
                                                  // Time passes, so that blocks free for longer than the decay time
                                                  // are purged on the slow paths (`Config::clock` is `fake_clock`).
        advance_fake_clock(rng.below(4) as u64);
        let sections = pa.zoneinfo().nr_sections;
        let gfp = random_gfp(&mut rng);
        let roll = rng.below(100);
        let op;
        if roll < 45 && m.pages < cap / 2 {
            op = "alloc";
            let order = rng.below(6) as u32;
            match pa.alloc_pages(gfp, order) {
                Some(p) => m.add(p, order, gfp),
                None if gfp.contains(Gfp::NOWAIT) => {}
                None => assert_eq!(
                    pa.zoneinfo().nr_sections,
                    cfg.max_sections,
                    "seed {seed} step {step}: order {order} failed while the zone could grow"
                ),
            }
        } else if roll < 82 && !m.live.is_empty() {
            op = "free";
            let (p, order) = m.take(rng.below(m.live.len()));
            pa.free_pages(p, order);
        } else if roll < 93 {
            op = "bulk";
            let len = rng.below(40);
            let mut arr: Vec<Option<Page>> = (0..len).map(|_| None).collect();
            // Some slots hold pages already; they must come back untouched.
            let mut held = Vec::new();
            for (i, slot) in arr.iter_mut().enumerate() {
                if rng.below(4) == 0 {
                    if let Some(j) = m.live.iter().position(|l| l.1 == 0) {
                        let tag = m.live[j].2;
                        let (p, _) = m.take(j);
                        held.push((i, p.as_ptr() as usize, tag));
                        *slot = Some(p);
                    }
                }
            }
            let before = arr.iter().filter(|s| s.is_some()).count();
            let n = pa.alloc_pages_bulk_array(gfp, &mut arr);
            assert!(n <= len);
            assert!(arr[..n].iter().all(Option::is_some), "seed {seed} step {step}: hole in the prefix");
            assert!(n == len || arr[n].is_none(), "seed {seed} step {step}: prefix {n} too short");
            for &(i, addr, tag) in &held {
                let p = arr[i].as_ref().expect("populated slot emptied");
                assert_eq!(p.as_ptr() as usize, addr, "populated slot {i} overwritten");
                assert_tag(p, 0, tag);
            }
            let after = arr.iter().filter(|s| s.is_some()).count();
            if before < len && !gfp.contains(Gfp::NOWAIT) && pa.zoneinfo().nr_sections < cfg.max_sections {
                assert!(after > before, "seed {seed} step {step}: bulk made no progress");
            }
            let held_at: Vec<usize> = held.iter().map(|h| h.0).collect();
            for (i, slot) in arr.into_iter().enumerate() {
                if let Some(p) = slot {
                    // Pages that were there keep their tag; new ones get one.
                    m.add(p, 0, if held_at.contains(&i) { Gfp::DEFAULT } else { gfp });
                }
            }
        } else if roll < 96 {
            op = "drain";
            pa.drain_all_pages();
            assert_eq!(pa.zoneinfo().pcp_pages, 0);
        } else if roll < 97 {
            op = "trim";
            pa.trim();
            assert_eq!(pa.zoneinfo().pcp_pages, 0);
            // Every dirty free block went back: a second trim finds none.
            let purged = pa.vmstat().purged_pages;
            pa.trim();
            assert_eq!(pa.vmstat().purged_pages, purged, "seed {seed} step {step}: trim left dirty blocks");
        } else {
            op = "free half";
            for _ in 0..m.live.len() / 2 {
                let (p, order) = m.take(rng.below(m.live.len()));
                pa.free_pages(p, order);
            }
        }
        if gfp.contains(Gfp::NOWAIT) && (op == "alloc" || op == "bulk") {
            assert_eq!(pa.zoneinfo().nr_sections, sections, "seed {seed} step {step}: NOWAIT grew the zone");
        }
        consistent(&pa, &m, usable);
        *counts.entry(op).or_insert(0) += 1;
        peak = peak.max(m.pages);
    }
    while let Some(i) = m.live.len().checked_sub(1) {
        let (p, order) = m.take(i);
        pa.free_pages(p, order);
    }
    consistent(&pa, &m, usable);
    assert_whole(&pa, usable);
    (counts, peak, pa.vmstat())
}

#[test]
fn randomized_against_a_model() {
    let usable = 1024;
    let mut total = (0, 0, 0, 0, 0);
    for seed in 1..=8 {
        // Kernel-sized batch and high on several PCPs, and small ones that
        // refill and drain often; whole-order and odd-sized sections.
        let cfg = match seed % 4 {
            0 => Config { nr_cpus: 3, cpu: Some(fake_cpu), ..Config::small(usable, 3) },
            1 => Config { nr_cpus: 2, cpu: Some(fake_cpu), batch: Some(4), high: Some(16), ..Config::small(usable, 3) },
            2 => Config { nr_cpus: 1, cpu: Some(cpu0), batch: Some(7), high: Some(28), ..Config::small(usable, 2) },
            _ => Config { nr_cpus: 2, cpu: Some(fake_cpu), ..Config::small(200, 4) },
        };
        // Purging on a clock the test drives: MADV_DONTNEED (purged blocks
        // read as zero) or MADV_FREE (they do not, Gfp::ZERO must clear them).
        let purge_mode = if seed % 2 == 0 { PurgeMode::DontNeed } else { PurgeMode::Free };
        let cfg = Config { clock: Some(fake_clock), decay_ms: 30, purge_mode, ..cfg };
        let usable = cfg.section_pages - meta_pages();
        let (counts, peak, v) = random_run(seed, 4000, cfg, usable);
        println!("seed {seed}: {counts:?}, peak {peak} pages live\n{v}");
        total.0 += v.fallback;
        total.1 += v.slowpath_grow;
        total.2 += v.pcp_drain;
        total.3 += v.bulk_alloc;
        total.4 += v.purged_pages;
    }
    // The seeds are fixed: make sure they still reach the interesting paths.
    let (fallback, grow, drain, bulk, purged) = total;
    assert!(fallback > 0 && grow > 8 && drain > 0 && bulk > 0 && purged > 0, "{total:?}");
}

// ---- 4. threads ------------------------------------------------------------------

/// A block in flight from one thread to another.
type Msg = (Page, u32, u64);

/// Allocates, tags, verifies and frees blocks on `pa`; hands some to the
/// next thread through `tx` and frees what the previous thread sends on `rx`.
fn thread_workload(pa: &PageAllocator, me: usize, ops: usize, tx: mpsc::Sender<Msg>, rx: mpsc::Receiver<Msg>) {
    let mut rng = Rng::new(0x1000 + me as u64);
    let mut live: Vec<Msg> = Vec::new();
    let mut seq = 0u64;
    let mut tag = || {
        seq += 1;
        ((me as u64 + 1) << 48) | seq
    };
    let free = |(p, order, tag): Msg| {
        assert_tag(&p, order, tag);
        pa.free_pages(p, order);
    };
    for _ in 0..ops {
        match rng.below(100) {
            0..=44 if live.len() < 48 => {
                let order = if rng.below(8) == 0 { 4 + rng.below(2) } else { rng.below(4) } as u32;
                let gfp = [Gfp::DEFAULT, Gfp::RECLAIMABLE, Gfp::ZERO][rng.below(3)];
                let p = pa.alloc_pages(gfp, order).expect("room for every thread's blocks");
                assert_aligned(&p, order);
                if gfp.contains(Gfp::ZERO) {
                    assert_eq!(read_tag(&p, order), (0, 0));
                }
                let t = tag();
                write_tag(&p, order, t);
                live.push((p, order, t));
            }
            0..=69 if !live.is_empty() => free(live.swap_remove(rng.below(live.len()))),
            70..=84 if !live.is_empty() => tx.send(live.swap_remove(rng.below(live.len()))).unwrap(),
            85..=94 => {
                while let Ok(msg) = rx.try_recv() {
                    free(msg);
                }
            }
            95..=98 if live.len() < 48 => {
                let mut arr: Vec<Option<Page>> = (0..8 + rng.below(24)).map(|_| None).collect();
                let n = pa.alloc_pages_bulk_array(Gfp::DEFAULT, &mut arr);
                assert!(n > 0);
                for p in arr.into_iter().flatten() {
                    let t = tag();
                    write_tag(&p, 0, t);
                    live.push((p, 0, t));
                }
            }
            99 => pa.drain_all_pages(),
            _ => {}
        }
    }
    for msg in live {
        free(msg);
    }
    drop(tx);
    // Closed once the previous thread has finished and dropped its sender.
    for msg in rx {
        free(msg);
    }
}

/// Runs `threads` workloads on `pa`, each after `setup(i)`, handing blocks
/// around a ring of channels.
fn run_threads(pa: &PageAllocator, threads: usize, ops: usize, setup: &(dyn Fn(usize) + Sync)) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Msg>()).unzip();
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        for (i, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(i + 1) % threads].clone();
            let barrier = &barrier;
            s.spawn(move || {
                setup(i);
                barrier.wait();
                thread_workload(pa, i, ops, tx, rx);
            });
        }
        drop(txs);
    });
}

#[test]
fn threads_sharing_a_pcp() {
    let usable = 8192;
    // A short decay time: blocks are purged (isolated, madvised outside the
    // lock, put back) while the other threads allocate and free.
    let cfg = Config { nr_cpus: 2, cpu: Some(fake_cpu), decay_ms: 2, ..Config::small(usable, 4) };
    let pa = PageAllocator::new(cfg);
    // Four threads on two PCPs: two threads contend for each PCP's try-lock.
    run_threads(&pa, 4, 100_000, &|i| set_fake_cpu(i % 2));
    let v = pa.vmstat();
    println!("threads_sharing_a_pcp: pcp_trylock_fail = {}\n{v}", v.pcp_trylock_fail);
    assert_eq!(v.pgalloc, v.pgfree, "every page allocated was freed\n{v}");
    assert_whole(&pa, usable);
}

#[test]
fn threads_pinned_to_cpus() {
    let usable = 8192;
    let cores = core_affinity::get_core_ids().expect("the CPUs this process may run on");
    assert!(!cores.is_empty());
    // Two threads per CPU, so each PCP is shared by two threads (at most 32
    // threads on a big machine, with the work split among them).
    let threads = (2 * cores.len()).min(32);
    // A thread holds at most ~80 blocks of up to 32 pages: a section each.
    let pa = PageAllocator::new(Config::small(usable, threads + 2)); // sched_getcpu, every possible CPU
    run_threads(&pa, threads, 200_000 / threads, &|i| {
        let core = cores[i % cores.len()];
        assert!(core_affinity::set_for_current(core), "pinning to {core:?}");
    });
    let v = pa.vmstat();
    println!(
        "threads_pinned_to_cpus ({threads} threads on {} CPUs): pcp_trylock_fail = {}\n{v}",
        cores.len(),
        v.pcp_trylock_fail
    );
    assert_eq!(v.pgalloc, v.pgfree, "every page allocated was freed\n{v}");
    assert_whole(&pa, usable);
}

// ---- 5. bad input ----------------------------------------------------------------

#[test]
fn zero_clears_recycled_pages() {
    let usable = 64;
    let pa = grown(one_cpu(usable, 1), usable);
    // Dirty every page of the zone.
    let mut pages: Vec<Page> = (0..usable).map(|_| pa.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
    for p in &mut pages {
        bytes_mut(p, 0).fill(0xa5);
    }
    let hot = pages.last().unwrap().as_ptr() as usize;
    for p in pages {
        pa.free_pages(p, 0);
    }
    ok(&pa);
    // The hottest PCP page comes back first: the same, now zeroed.
    let mut p = pa.alloc_pages(Gfp::ZERO, 0).unwrap();
    assert_eq!(p.as_ptr() as usize, hot, "the page just freed is reused");
    assert!(bytes_mut(&mut p, 0).iter().all(|&b| b == 0), "recycled PCP page not zeroed");
    pa.free_pages(p, 0);

    // Through the PCP lists, then the bulk path and the zone after a drain
    // (which merges the dirty pages: a merged block is dirty if any part is).
    // The bulk path stops short when the zone runs dry rather than drain, so
    // it starts from a drained zone to get every page.
    for round in 0..3 {
        if round > 0 {
            pa.drain_all_pages();
        }
        let mut held: Vec<(Page, u32)> = Vec::new();
        if round == 1 {
            let mut arr: Vec<Option<Page>> = (0..usable).map(|_| None).collect();
            assert_eq!(pa.alloc_pages_bulk_array(Gfp::ZERO | Gfp::NOWAIT, &mut arr), usable);
            held.extend(arr.into_iter().map(|p| (p.unwrap(), 0)));
        } else {
            for order in [4, 3, 2, 1, 0, 0, 5] {
                if let Some(p) = pa.alloc_pages(Gfp::ZERO | Gfp::NOWAIT, order) {
                    held.push((p, order));
                }
            }
            assert!(held.len() >= 5);
        }
        ok(&pa);
        for (p, order) in &mut held {
            assert!(bytes_mut(p, *order).iter().all(|&b| b == 0), "round {round}: order {order} not zeroed");
            bytes_mut(p, *order).fill(0x5a);
        }
        for (p, order) in held {
            pa.free_pages(p, order);
        }
        ok(&pa);
    }
    assert_whole(&pa, usable);
}

const BAD_FREE_ENV: &str = "PCPALLOC_TEST_BAD_FREE";

/// The child half of `bad_frees_abort`: does nothing unless the parent set
/// the environment variable, then frees a block the wrong way.
#[test]
fn bad_free_child() {
    let Ok(mode) = std::env::var(BAD_FREE_ENV) else { return };
    // The abort is expected: leave no core file behind.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct we pass and changes only this
    // (child) process's limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    if mode == "double_free_cached" {
        // The process-wide page API: the first free puts the page in this
        // thread's page cache, where the second must still be caught.
        let raw = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap().into_raw();
        // SAFETY: `raw` comes from `into_raw` of a live page, no other handle.
        pcpalloc::free_page(unsafe { Page::from_raw(raw) });
        // SAFETY: deliberately breaks `from_raw`'s contract, as below.
        pcpalloc::free_page(unsafe { Page::from_raw(raw) });
        eprintln!("bad free of mode {mode} was not caught");
        std::process::exit(0);
    }
    let pa = grown(one_cpu(1024, 1), 1024);
    let order = match mode.as_str() {
        "double_free_pcp" | "wrong_order" => 1,
        "double_free_buddy" => 5,
        other => panic!("unknown mode {other}"),
    };
    let raw = pa.alloc_pages(Gfp::DEFAULT, order).unwrap().into_raw();
    // SAFETY: `raw` comes from `into_raw` of a live page and no other handle exists.
    let p = unsafe { Page::from_raw(raw) };
    if mode == "wrong_order" {
        pa.free_pages(p, 0);
    } else {
        pa.free_pages(p, order);
        // SAFETY: deliberately breaks `from_raw`'s contract (the block was
        // just freed) to test the allocator's defence: `free_pages` only reads
        // the block's descriptor, which lives as long as `pa`, finds it not
        // allocated and aborts before touching any list or the memory.
        let again = unsafe { Page::from_raw(raw) };
        pa.free_pages(again, order);
    }
    eprintln!("bad free of mode {mode} was not caught");
    std::process::exit(0);
}

#[test]
fn bad_frees_abort() {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().unwrap();
    for mode in ["double_free_pcp", "double_free_buddy", "wrong_order", "double_free_cached"] {
        let out = std::process::Command::new(&exe)
            .args(["bad_free_child", "--exact", "--nocapture", "--test-threads", "1"])
            .env(BAD_FREE_ENV, mode)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{mode}: child status {:?}\n{stderr}", out.status);
        assert!(stderr.contains("Bad page state"), "{mode}: no report on stderr:\n{stderr}");
        assert!(stderr.contains("free_pages"), "{mode}: the report names the operation:\n{stderr}");
    }
}

#[test]
fn views_print_in_the_kernel_shapes() {
    let pa = grown(one_cpu(1024, 1), 1024);
    let line = buddyinfo(&pa).to_string();
    assert!(line.starts_with("Node 0, zone   Normal"));
    assert_eq!(line.split_whitespace().count(), 4 + NR_PAGE_ORDERS, "{line}");
    let table = buddyinfo(&pa).pagetypeinfo().to_string();
    assert_eq!(table.lines().count(), 1 + pcpalloc::MIGRATE_TYPES, "{table}");
    let zi = pa.zoneinfo().to_string();
    assert!(zi.contains("managed  1024") && zi.contains("cpu: 0") && !zi.contains("cpu: 1"), "{zi}");
    assert!(pa.vmstat().to_string().contains("slowpath_grow 1"));
}
