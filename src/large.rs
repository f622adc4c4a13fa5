//! Large and huge blocks: requests too big for a size class.
//!
//! *Large* requests (up to `LARGE_MAX_ORDER`, 512 KiB) take a buddy block and
//! keep only the pages they need, giving the tail back at once (the kernel's
//! `alloc_pages_exact`), so the waste is under one page. The pages kept are
//! recorded as the aligned blocks that tile them, each with a head
//! descriptor in state `Allocated`: freeing hands each block back to the
//! buddy, which merges them again. The tiling is a function of the first
//! page and the page count, so `dealloc` recomputes it from the `Layout`.
//!
//! *Huge* requests are mappings of their own (`vmalloc`'s role), kept for
//! reuse for the decay time once freed: see `huge`.

use core::ptr::NonNull;

use crate::os::PAGE_SIZE;
use crate::page::*;
use crate::page_alloc::{free_pages_prepare, Gfp, PageAllocator};
use crate::trace::{self, Fn as Event};

/// The aligned blocks that tile `[start, end)` (greedy from the left: at each
/// page the largest block aligned there that fits), as `(pfn, order)`.
pub(crate) fn tiling(mut start: usize, end: usize) -> impl Iterator<Item = (usize, u32)> {
    core::iter::from_fn(move || {
        if start >= end {
            return None;
        }
        let mut order = start.trailing_zeros().min(MAX_PAGE_ORDER);
        while start + (1 << order) > end {
            order -= 1;
        }
        let item = (start, order);
        start += 1 << order;
        Some(item)
    })
}

/// Pages needed for `size` bytes, or `None` when that overflows.
#[inline]
pub(crate) fn pages_for(size: usize) -> Option<usize> {
    Some(size.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE)
}

/// The largest buddy order a large block is served from: 128 pages, 512 KiB.
/// Bigger requests are huge blocks, mappings of their own.
///
/// The allocator cannot know how much of a block the program will touch
/// (a `Vec` reserved for 100 000 elements and filled with 10 000), and a
/// block served from dirty zone memory is resident in full from the start,
/// while one from a fresh mapping costs only the pages written. For blocks
/// the size of a max-order one the zone also needs a whole free aligned
/// 4 MiB block, which a single long-lived neighbour keeps from merging, so
/// each such request would split fresh memory while the zone holds
/// megabytes of freed pieces. mstress, whose threads each reserve an
/// 800 KB vector and use a tenth of it: peak RSS 11.1 MiB with large blocks
/// up to order 10, 8.3 MiB up to order 7 (jemalloc 7.8), the same time;
/// up to order 6 it is 0.5 MiB more again (more blocks that are touched in
/// full pay a mapping's page faults). 512 KiB is also where a mapping's
/// system calls and faults are small next to writing the block once.
///
/// A new request is a large block only up to this order; a large block that
/// `realloc` grows in place may go on up to `MAX_PAGE_ORDER` (see
/// `global::in_zone`).
pub(crate) const LARGE_MAX_ORDER: u32 = 7;

/// The buddy order that serves `npages` pages aligned to `align`, if it is
/// a large block's (at most `LARGE_MAX_ORDER`).
#[inline]
pub(crate) fn large_order(npages: usize, align: usize) -> Option<u32> {
    let order = npages.max(1).next_power_of_two().trailing_zeros().max((align / PAGE_SIZE).max(1).trailing_zeros());
    (order <= LARGE_MAX_ORDER).then_some(order)
}

/// Whether the tiling of `npages` pages at `start` is one block of at most
/// `max_order`: a power of two of pages at a start aligned to it. (A block
/// grown in place by `resize_large` from an over-aligned single page may
/// start at a lesser alignment and tile as several blocks.)
#[inline]
pub(crate) fn is_one_block(start: usize, npages: usize, max_order: u32) -> bool {
    npages.is_power_of_two() && npages <= 1 << max_order && start & (npages - 1) == 0
}

/// Marks each block of the tiling of `[start, end)` as an allocated head.
fn mark_tiling(start: usize, end: usize) {
    for (pfn, order) in tiling(start, end) {
        // SAFETY: the caller owns these pages, which lie in a live section.
        let d = unsafe { pfn_to_desc(pfn) };
        d.state.set(PageState::Allocated);
        d.order.set(order as u8);
        d.migratetype.set(MIGRATE_MOVABLE);
        d.flags.set(0);
    }
}

/// Gives the pages `[start, end)` (a tail cut off a block) straight back to
/// the zone under one hold of its lock, carrying `flags` (zeroed, purged).
/// Not through the PCP: a tail left free in the zone next to its block is
/// what lets `realloc` grow the block in place later.
fn free_tail(pages: &PageAllocator, start: usize, end: usize, flags: u8) {
    tiling_to_zone(pages, start, end, |d, _| d.flags.set(flags));
}

/// Puts the blocks that tile `[start, end)` straight into the zone under one
/// hold of its lock, `free_one_page` for each after `prepare`, so that they
/// merge with each other and their free neighbours at once.
fn tiling_to_zone(pages: &PageAllocator, start: usize, end: usize, prepare: impl Fn(&'static PageDesc, u32)) {
    let mut zone = pages.zone.lock();
    zone.ev.pgfree.add((end - start) as u64);
    for (pfn, order) in tiling(start, end) {
        // SAFETY: the caller owns these pages, which lie in a live section.
        let d = unsafe { pfn_to_desc(pfn) };
        prepare(d, order);
        zone.free_one_page(d, order);
    }
}

/// Turns the head marks of the tiling of `[start, end)` back into tails.
fn clear_tiling(start: usize, end: usize) {
    for (pfn, _) in tiling(start, end) {
        // SAFETY: the caller owns these pages, which lie in a live section.
        unsafe { pfn_to_desc(pfn) }.state.set(PageState::Tail);
    }
}

/// `alloc_pages_exact`: `npages` pages aligned to `2^order` pages; the tail of
/// the block is given back. Zeroed if `zero`, clearing only what is not
/// known to be zero already.
pub(crate) fn alloc_large(pages: &PageAllocator, npages: usize, order: u32, zero: bool) -> Option<NonNull<u8>> {
    let d = pages.alloc_block_keep_flags(Gfp::DEFAULT, order, MIGRATE_MOVABLE)?;
    let flags = d.flags.get();
    let zeroed = flags & PG_ZEROED != 0;
    let start = desc_to_pfn(d);
    let end = start + npages;
    d.state.set(PageState::Tail);
    mark_tiling(start, end);
    if end < start + (1 << order) {
        free_tail(pages, end, start + (1 << order), flags);
    }
    let ptr = pfn_to_addr(start);
    if zero && !zeroed {
        // SAFETY: the `npages` pages are ours.
        unsafe { ptr.write_bytes(0, npages * PAGE_SIZE) };
    } else if zero {
        // SAFETY: the `npages` pages are ours, mapped read-write.
        unsafe { crate::os::prefault_write(ptr, npages * PAGE_SIZE) };
    }
    NonNull::new(ptr)
}

/// Frees what `alloc_large` returned for `npages` pages.
///
/// # Safety
/// `ptr` must come from `alloc_large` with this `npages` (or be resized to
/// it by `resize_large`) and not be used again.
pub(crate) unsafe fn free_large(pages: &PageAllocator, ptr: NonNull<u8>, npages: usize) {
    let start = ptr.as_ptr() as usize >> PAGE_SHIFT;
    if is_one_block(start, npages, PAGE_ALLOC_COSTLY_ORDER) {
        // One block the PCP lists take: the fast path for 4 to 32 KiB.
        // SAFETY: such a block is its own tiling's only head.
        pages.free_block(unsafe { pfn_to_desc(start) }, npages.trailing_zeros());
        return;
    }
    // Several blocks (or one above the PCP's orders): all straight back to
    // the zone under one hold of its lock, where they merge with each other
    // and with the tail given back at allocation. Parking the small pieces
    // on a PCP list would keep the block from merging whole again until a
    // drain, and the next request of the same size would split (and touch)
    // fresh memory instead.
    tiling_to_zone(pages, start, start + npages, |d, order| {
        free_pages_prepare(d, order);
        trace::point(Event::MmPageFree, order, d.migratetype.get(), u32::MAX, 0, desc_to_pfn(d));
    });
    pages.maybe_purge();
}

/// Resizes a large block in place: shrinking gives back the tail; growing
/// takes the pages after the block if they are all free in the zone.
/// Returns whether it worked (if not, nothing changed).
///
/// # Safety
/// `ptr` must be a live block from `alloc_large` of `old` pages.
pub(crate) unsafe fn resize_large(pages: &PageAllocator, ptr: NonNull<u8>, old: usize, new: usize) -> bool {
    let start = ptr.as_ptr() as usize >> PAGE_SHIFT;
    if new == old {
        return true;
    }
    if new < old {
        clear_tiling(start, start + old);
        mark_tiling(start, start + new);
        free_tail(pages, start + new, start + old, 0);
        return true;
    }
    if !pages.zone.lock().take_free_range(start + old, start + new) {
        return false;
    }
    clear_tiling(start, start + old);
    mark_tiling(start, start + new);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_alloc::Config;

    #[test]
    fn a_power_of_two_grown_in_place_at_a_lesser_alignment_frees_as_its_tiling() {
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(4096, 1) });
        let warm = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
        pages.free_pages(warm, 0);
        pages.drain_all_pages();
        // An order-1 block first, so that the next one starts 2 pages past
        // an 8-page boundary.
        let before = pages.alloc_pages(Gfp::DEFAULT, 1).unwrap();
        // One page of an order-1 block (a 4 KiB request aligned to 8 KiB).
        let p = alloc_large(&pages, 1, 1, false).unwrap();
        let start = p.as_ptr() as usize >> PAGE_SHIFT;
        assert_ne!(start % 8, 0, "the block starts 8-page aligned: the case is not set up");
        // SAFETY: a live large block of one page, grown into free pages.
        assert!(unsafe { resize_large(&pages, p, 1, 8) }, "the pages after the block are free");
        assert!(!is_one_block(start, 8, PAGE_ALLOC_COSTLY_ORDER));
        pages.check().unwrap();
        // Its 8 pages tile as several blocks; the free must follow the tiling
        // (taking it for one order-3 block aborts in `bad_page`).
        // SAFETY: the block now has 8 pages.
        unsafe { free_large(&pages, p, 8) };
        pages.free_pages(before, 1);
        pages.drain_all_pages();
        pages.check().unwrap();
    }

    #[test]
    fn tiling_covers_exactly_with_aligned_blocks() {
        for start in [0usize, 1, 4, 6, 1024, 1536] {
            for n in 1..=70usize {
                let mut next = start;
                for (pfn, order) in tiling(start, start + n) {
                    assert_eq!(pfn, next);
                    assert_eq!(pfn % (1 << order), 0);
                    next += 1 << order;
                }
                assert_eq!(next, start + n);
            }
        }
        // 5 pages from an aligned start: 4 + 1; the tail 3 of 8: 1 + 2.
        assert_eq!(tiling(8, 13).collect::<Vec<_>>(), [(8, 2), (12, 0)]);
        assert_eq!(tiling(13, 16).collect::<Vec<_>>(), [(13, 0), (14, 1)]);
    }

    #[test]
    fn exact_blocks_give_back_their_tail_and_grow_and_shrink_in_place() {
        use crate::page_alloc::Config;
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(1024, 1) });
        let p = alloc_large(&pages, 5, 3, true).unwrap();
        pages.check().unwrap();
        // 5 pages kept of an order-3 block: 3 went back, as blocks of 1 and 2.
        let free_after_alloc = pages.zoneinfo().free_pages;
        // SAFETY: `p` is a live 5-page block.
        unsafe {
            assert!(resize_large(&pages, p, 5, 8));
            pages.check().unwrap();
            assert_eq!(pages.zoneinfo().free_pages, free_after_alloc - 3);
            assert!(resize_large(&pages, p, 8, 13));
            pages.check().unwrap();
            assert!(resize_large(&pages, p, 13, 2));
            pages.check().unwrap();
            free_large(&pages, p, 2);
        }
        pages.drain_all_pages();
        pages.check().unwrap();
        // Everything merged back: one max-order block is impossible in 1024
        // usable pages that start at an odd page, but no page may be missing.
        let z = pages.zoneinfo();
        assert_eq!(z.free_pages, z.managed_pages);
    }

    #[test]
    fn a_freed_exact_block_merges_whole_in_the_zone_at_once() {
        use crate::page_alloc::Config;
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(1023 + 1024, 1) });
        // 40 pages of an order-6 block: the tiling is 32 + 8, the tail 24.
        let p = alloc_large(&pages, 40, 6, false).unwrap();
        // SAFETY: `p` is a live 40-page block.
        unsafe { free_large(&pages, p, 40) };
        pages.check().unwrap();
        // No piece waits on a PCP list, unmerged: the block is whole again and
        // the next request of its size takes it without splitting another.
        let z = pages.zoneinfo();
        assert_eq!((z.pcp_pages, z.free_pages), (0, z.managed_pages));
        let q = alloc_large(&pages, 40, 6, false).unwrap();
        assert_eq!(q, p);
        // SAFETY: as above.
        unsafe { free_large(&pages, q, 40) };
        // A power-of-two block of up to 8 pages is one PCP-sized block: it
        // takes the PCP fast path.
        let r = alloc_large(&pages, 8, 3, false).unwrap();
        let before = pages.zoneinfo().pcp_pages;
        // SAFETY: `r` is a live 8-page block.
        unsafe { free_large(&pages, r, 8) };
        assert_eq!(pages.zoneinfo().pcp_pages, before + 8);
        pages.drain_all_pages();
        pages.check().unwrap();
    }

    #[test]
    fn large_orders() {
        assert_eq!(large_order(1, 8), Some(0));
        assert_eq!(large_order(5, 4096), Some(3));
        assert_eq!(large_order(1, 65536), Some(4));
        assert_eq!(large_order(128, 4096), Some(LARGE_MAX_ORDER));
        assert_eq!(large_order(129, 4096), None);
        assert_eq!(large_order(1, 1 << 20), None);
    }
}
