//! The zone: a buddy allocator over the sections, behind `zone->lock`.
//!
//! Every function on [`ZoneInner`] runs with the zone lock held; the only
//! way to reach a `ZoneInner` is [`Zone::lock`], whose guard releases it.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::page::*;
use crate::stats::{Counter, ZoneEvents};
use crate::sync::{RawLock, UnsafeCell};
use crate::trace::{self, Fn};

/// Most sections one zone can hold: 4096 × 1 GiB = 4 TiB of address space.
pub(crate) const MAX_SECTIONS: usize = 4096;

/// One `free_area[order]`: a free list per migratetype and the count of
/// free blocks of this order over all of them.
///
/// Each migratetype has two lists: `free_list` holds *dirty* blocks (free
/// but resident), newest at the head, so its tail is the block that has been
/// free longest; `purged_list` holds blocks whose memory is not resident
/// (never touched, or given back with `madvise`). The kernel keeps reported
/// pages at the tail of one list; two lists make the boundary explicit, so
/// allocation prefers resident memory and purging finds the oldest dirty
/// block at a list's tail in O(1).
pub(crate) struct FreeArea {
    pub(crate) free_list: [List; MIGRATE_TYPES],
    pub(crate) purged_list: [List; MIGRATE_TYPES],
    pub(crate) nr_free: usize,
}

/// The zone's state, guarded by the zone lock.
///
/// Invariants (checked by [`ZoneInner::check`]):
/// * every block on `free_area[o].free_list[mt]` has a head descriptor in
///   state `Buddy` with order `o` and migratetype `mt`, is aligned to `2^o`
///   pages and lies wholly inside the usable pages of one section;
/// * `free_area[o].nr_free` is the length of its lists together, and
///   `free_pages` is `Σ nr_free[o] << o`;
/// * free blocks never overlap each other or a block handed out, and no two
///   free buddies of the same order below `MAX_PAGE_ORDER` are left unmerged;
/// * `sections[..nr_sections]` are the sections added by `grow`, in order;
/// * a block is on a `purged_list` iff its head has `PG_PURGED`, and
///   `purged_pages` counts their pages; a dirty block's `private` is the
///   time it became free;
/// * `Isolated` blocks (being purged outside the lock) are on no list and
///   counted nowhere but `isolated_pages`;
/// * a section's deferred range is aligned to `MAX_PAGE_ORDER` blocks, its
///   descriptors are all zero (`Tail`), and its pages are counted in
///   `deferred_pages` (and so as free, purged, max-order blocks) and on no
///   list. Being max-order aligned, it is never any block's buddy below it.
pub(crate) struct ZoneInner {
    pub(crate) free_area: [FreeArea; NR_PAGE_ORDERS],
    pub(crate) free_pages: usize,
    /// Free pages whose memory is not resident.
    pub(crate) purged_pages: usize,
    /// Pages taken off the lists by a purge in progress.
    pub(crate) isolated_pages: usize,
    /// The time stamped on blocks freed now (coarse ms, set by the caller
    /// that took the lock: reading the clock is not free).
    pub(crate) now_ms: u64,
    /// Inside `rmqueue_bulk` (for the `mm_page_alloc_zone_locked` tracepoint).
    in_bulk: bool,
    /// Free pages in the sections' deferred ranges (see `Section`), counted
    /// in `free_pages`, `purged_pages` and `free_area[MAX_PAGE_ORDER].nr_free`
    /// as the free, never-touched max-order blocks they are, but on no list.
    pub(crate) deferred_pages: usize,
    /// Pages of all sections handed to the buddy allocator.
    pub(crate) managed_pages: usize,
    /// The pages in service (`managed_pages - deferred_pages`) the PCPs'
    /// `batch` and `high` were last sized for, and whether enough have come
    /// into service since (twice as many) that they should be sized again.
    pub(crate) pcp_sized_for: usize,
    pub(crate) pcp_resize: bool,
    pub(crate) sections: [*const Section; MAX_SECTIONS],
    pub(crate) nr_sections: usize,
    pub(crate) ev: ZoneEvents,
}

/// The zone: its lock and the state the lock guards.
pub(crate) struct Zone {
    pub(crate) lock: RawLock,
    inner: UnsafeCell<ZoneInner>,
    /// Zone-lock acquisitions; counted outside the lock so it can count them.
    pub(crate) lock_count: Counter,
    /// The latest coarse time read by any allocator path (ms); copied into
    /// `ZoneInner::now_ms` when the lock is taken, to stamp freed blocks.
    pub(crate) clock_ms: core::sync::atomic::AtomicU64,
}

// SAFETY: `inner` is only reached through `Zone::lock`, which serialises
// access; the raw pointers inside point into sections that live forever.
unsafe impl Sync for Zone {}
// SAFETY: as above; nothing in the zone is tied to a thread.
unsafe impl Send for Zone {}

/// Proof that the zone lock is held; releases it on drop.
pub(crate) struct ZoneGuard<'a> {
    zone: &'a Zone,
}

impl Deref for ZoneGuard<'_> {
    type Target = ZoneInner;
    fn deref(&self) -> &ZoneInner {
        // SAFETY: the guard exists only while the lock is held.
        unsafe { &*self.zone.inner.get() }
    }
}

impl DerefMut for ZoneGuard<'_> {
    fn deref_mut(&mut self) -> &mut ZoneInner {
        // SAFETY: the guard exists only while the lock is held, and it is
        // borrowed mutably, so this is the only reference.
        unsafe { &mut *self.zone.inner.get() }
    }
}

impl Drop for ZoneGuard<'_> {
    fn drop(&mut self) {
        self.zone.lock.unlock();
    }
}

crate::sync::maybe_const_fn! {
    pub(crate) fn zone_new() -> Zone {
        Zone {
            lock: RawLock::new(),
            inner: UnsafeCell::new(ZoneInner {
                free_area: [const {
                    FreeArea {
                        free_list: [const { List::new() }; MIGRATE_TYPES],
                        purged_list: [const { List::new() }; MIGRATE_TYPES],
                        nr_free: 0,
                    }
                }; NR_PAGE_ORDERS],
                free_pages: 0,
                purged_pages: 0,
                isolated_pages: 0,
                now_ms: 0,
                in_bulk: false,
                deferred_pages: 0,
                managed_pages: 0,
                pcp_sized_for: 0,
                pcp_resize: false,
                sections: [core::ptr::null(); MAX_SECTIONS],
                nr_sections: 0,
                ev: ZoneEvents::new(),
            }),
            lock_count: Counter::new(),
            clock_ms: core::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Zone {
    /// Takes `zone->lock`.
    #[inline]
    pub(crate) fn lock(&self) -> ZoneGuard<'_> {
        self.lock.lock();
        self.lock_count.inc();
        let mut guard = ZoneGuard { zone: self };
        guard.now_ms = self.clock_ms.load(core::sync::atomic::Ordering::Relaxed);
        guard
    }

    /// Reads the zone without its lock, for statistics only: the values may
    /// be torn between fields but each is a plain word read.
    ///
    /// # Safety
    /// The caller must hold the zone lock, or accept racy values and only
    /// read plain integer fields.
    pub(crate) unsafe fn inner_unlocked(&self) -> &ZoneInner {
        // SAFETY: forwarded.
        unsafe { &*self.inner.get_racy() }
    }

    /// Broken on purpose (loom-tests): the zone for writing, without its lock.
    ///
    /// # Safety
    /// None: this is the bug the loom model must catch.
    #[cfg(loom_broken = "drain_skips_zone_lock")]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn inner_without_lock(&self) -> &mut ZoneInner {
        // SAFETY: none (see above).
        unsafe { &mut *self.inner.get() }
    }

    /// Broken on purpose (loom-tests): `rmqueue_bulk` choosing each block
    /// under one hold of the zone lock and unlinking and splitting it under
    /// the next, trusting that it is still free and still that block.
    #[cfg(loom_broken = "refill_drops_zone_lock")]
    pub(crate) fn rmqueue_bulk_dropping_lock(
        &self,
        order: u32,
        count: usize,
        mt: MigrateType,
        list: &mut List,
    ) -> usize {
        let mut taken = 0;
        while taken < count {
            let chosen = {
                let zone = self.lock();
                (order..=MAX_PAGE_ORDER).find_map(|o| zone.get_page_from_free_area(o, mt).map(|d| (d, o)))
            };
            let Some((d, o)) = chosen else { break };
            let mut zone = self.lock();
            zone.del_from_free_list(d);
            zone.expand(d, order, o, mt);
            d.order.set(order as u8);
            d.state.set(PageState::Pcp);
            d.migratetype.set(mt);
            list.push_back(d);
            taken += 1;
        }
        self.lock().ev.pcp_refill.inc();
        taken
    }
}

/// Blocks younger than the decay time a purge scan looks past, per list.
const PURGE_SCAN_YOUNG: usize = 16;

/// Fallback order when a migratetype's lists are empty (`fallbacks[]`).
const FALLBACKS: [[MigrateType; 2]; MIGRATE_TYPES] = [
    [MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE],   // UNMOVABLE
    [MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE], // MOVABLE
    [MIGRATE_UNMOVABLE, MIGRATE_MOVABLE],     // RECLAIMABLE
];

/// What an invariant check found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckError {
    /// The invariant that does not hold.
    pub what: &'static str,
    /// The page frame number where it was found (0 when not about one page).
    pub pfn: usize,
}

impl ZoneInner {
    /// Puts a free block on its list: `purged_list` if its `PG_PURGED` flag
    /// says it is not resident, else `free_list` (the caller has set its
    /// free-since time in `private`).
    #[inline]
    fn add_to_free_list(&mut self, d: &PageDesc, order: u32, mt: MigrateType, tail: bool) {
        d.state.set(PageState::Buddy);
        d.order.set(order as u8);
        d.migratetype.set(mt);
        self.purged_pages += d.purged_pages(order);
        let area = &mut self.free_area[order as usize];
        let list = if d.flags.get() & PG_PURGED != 0 {
            &mut area.purged_list[mt as usize]
        } else {
            &mut area.free_list[mt as usize]
        };
        if tail {
            list.push_back(d);
        } else {
            list.push_front(d);
        }
        area.nr_free += 1;
        self.free_pages += 1 << order;
    }

    #[inline]
    fn del_from_free_list(&mut self, d: &PageDesc) {
        let order = d.order.get() as usize;
        self.purged_pages -= d.purged_pages(order as u32);
        let area = &mut self.free_area[order];
        if d.flags.get() & PG_PURGED != 0 {
            area.purged_list[d.migratetype.get() as usize].remove(d);
        } else {
            area.free_list[d.migratetype.get() as usize].remove(d);
        }
        area.nr_free -= 1;
        self.free_pages -= 1 << order;
        d.state.set(PageState::Tail);
    }

    /// The first block of `free_area[order]` for `mt`: resident memory first.
    #[inline]
    fn get_page_from_free_area(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let area = &self.free_area[order as usize];
        let d = area.free_list[mt as usize].first().or_else(|| area.purged_list[mt as usize].first());
        trace::point(Fn::GetPageFromFreeArea, order, mt, d.is_some() as u32, 0, d.map_or(0, desc_to_pfn));
        d
    }

    /// Splits a block of order `high` down to order `low`, putting each upper
    /// half on the free list of its order; the caller keeps the lowest
    /// `2^low` pages.
    fn expand(&mut self, d: &PageDesc, low: u32, mut high: u32, mt: MigrateType) {
        let pfn = desc_to_pfn(d);
        if high > low {
            trace::point(Fn::Expand, low, mt, u32::MAX, high, pfn);
        }
        let (flags, since) = (d.flags.get(), d.private.get());
        // A dirty block's non-resident pages are somewhere in it: give each
        // half its share.
        let mut purged_within = if flags & PG_PURGED == 0 { d.purged_pages(high) } else { 0 };
        while high > low {
            high -= 1;
            // SAFETY: the upper half lies inside the block being split, which
            // is inside a live section.
            let half = unsafe { pfn_to_desc(pfn + (1 << high)) };
            half.flags.set(flags);
            half.private.set(since);
            half.set_purged_within(purged_within / 2);
            purged_within -= purged_within / 2;
            self.add_to_free_list(half, high, mt, false);
        }
    }

    /// Takes the smallest free *resident* block of at least `order` from
    /// `mt`'s lists, or if there is none, the smallest free block.
    ///
    /// Resident (dirty) memory comes first at any order, as jemalloc takes
    /// dirty extents before muzzy and retained ones: an exact-fit block that
    /// was purged or never touched costs RSS the moment it is written, while
    /// splitting a dirty one costs nothing. Smallest order first among the
    /// dirty blocks, as the kernel does, to keep large blocks whole.
    /// (Preferring the exact fit grew mstress's peak RSS, since every split
    /// of a fresh 4 MiB block leaves untouched halves that then beat the
    /// program's own freed memory.)
    fn rmqueue_smallest(&mut self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        self.rmqueue_smallest_whole(order, mt, order).map(|(d, _)| d)
    }

    /// `rmqueue_smallest`, for a caller that can take a whole block of up to
    /// `whole` (>= `order`): a block found at such an order is not split
    /// but returned whole, with its order (the caller cuts it into blocks of
    /// `order`; see `rmqueue_bulk`).
    fn rmqueue_smallest_whole(&mut self, order: u32, mt: MigrateType, whole: u32) -> Option<(&'static PageDesc, u32)> {
        let _t = trace::enter(Fn::RmqueueSmallest, order, mt);
        let start = (order..=MAX_PAGE_ORDER)
            .find(|&o| !self.free_area[o as usize].free_list[mt as usize].is_empty())
            .unwrap_or(order);
        for o in start..=MAX_PAGE_ORDER {
            if let Some(d) = self.get_page_from_free_area(o, mt) {
                self.del_from_free_list(d);
                if o > order && o <= whole {
                    return Some((d, o));
                }
                self.expand(d, order, o, mt);
                d.order.set(order as u8);
                trace::point(Fn::MmPageAllocZoneLocked, order, mt, self.in_bulk as u32, 0, desc_to_pfn(d));
                return Some((d, order));
            }
        }
        None
    }

    /// Moves every free block inside the pageblock of `pfn` to `mt`'s lists
    /// and returns how many free pages the pageblock has
    /// (`move_freepages_block`).
    fn move_freepages_block(&mut self, sec: &Section, pfn: usize, mt: MigrateType) -> usize {
        let start = pfn & !((1 << PAGEBLOCK_ORDER) - 1);
        let end = start + (1 << PAGEBLOCK_ORDER);
        let mut p = start;
        let mut moved = 0;
        while p < end {
            let d = sec.desc_at(p - sec.base_pfn());
            if d.state.get() == PageState::Buddy {
                let order = d.order.get() as u32;
                if d.migratetype.get() != mt {
                    self.del_from_free_list(d);
                    self.add_to_free_list(d, order, mt, false);
                }
                moved += 1 << order;
                p += 1 << order;
            } else {
                p += 1;
            }
        }
        moved
    }

    /// Steals from another migratetype when `mt`'s lists are empty
    /// (`__rmqueue_fallback`): search the fallback types from the largest
    /// order down, so that mixing types costs one big block, and claim the
    /// whole pageblock for `mt` when the block is big or most of the
    /// pageblock is free, so later allocations of `mt` group there too.
    fn rmqueue_fallback(&mut self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::RmqueueFallback, order, mt);
        for o in (order..=MAX_PAGE_ORDER).rev() {
            for &fmt in &FALLBACKS[mt as usize] {
                let Some(d) = self.get_page_from_free_area(o, fmt) else { continue };
                let pfn = desc_to_pfn(d);
                // SAFETY: `d` is a free block inside a live section.
                let sec = unsafe { section_of(pfn << PAGE_SHIFT) };
                self.ev.fallback.inc();
                trace::point(Fn::MmPageAllocExtfrag, order, mt, fmt as u32, o, pfn);
                if o >= PAGEBLOCK_ORDER {
                    // The block spans whole pageblocks: claim them all.
                    self.del_from_free_list(d);
                    let mut pb = pfn;
                    while pb < pfn + (1 << o) {
                        sec.set_pageblock_migratetype(pb, mt);
                        pb += 1 << PAGEBLOCK_ORDER;
                    }
                    self.add_to_free_list(d, o, mt, false);
                } else if o >= PAGEBLOCK_ORDER / 2 || mt == MIGRATE_UNMOVABLE {
                    let free = self.move_freepages_block(sec, pfn, mt);
                    if free >= (1 << (PAGEBLOCK_ORDER - 1)) {
                        sec.set_pageblock_migratetype(pfn, mt);
                    }
                } else {
                    // Too small to claim: steal just this block.
                    return self.rmqueue_smallest(order, fmt);
                }
                return self.rmqueue_smallest(order, mt);
            }
        }
        None
    }

    /// `__rmqueue`: the requested migratetype first, then a max-order block
    /// not yet initialised, then a fallback. Fresh memory comes before
    /// stealing: a new block costs no resident memory until it is touched,
    /// and it keeps the migratetypes in pageblocks of their own.
    #[inline]
    pub(crate) fn rmqueue(&mut self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        self.rmqueue_whole(order, mt, order).map(|(d, _)| d)
    }

    /// `__rmqueue` that may return a whole block of up to order `whole` (see
    /// `rmqueue_smallest_whole`); stolen blocks come one at a time.
    fn rmqueue_whole(&mut self, order: u32, mt: MigrateType, whole: u32) -> Option<(&'static PageDesc, u32)> {
        let _t = trace::enter(Fn::RmqueueInner, order, mt);
        if let Some(got) = self.rmqueue_smallest_whole(order, mt, whole) {
            return Some(got);
        }
        if self.deferred_grow_zone(mt) {
            return self.rmqueue_smallest_whole(order, mt, whole);
        }
        self.rmqueue_fallback(order, mt).map(|d| (d, order))
    }

    /// `deferred_grow_zone`: hands the next max-order block of a section's
    /// deferred range to `mt`'s purged list (never touched: zero and not
    /// resident), claiming its pageblocks for `mt`. False when every
    /// section is fully initialised.
    #[cold]
    fn deferred_grow_zone(&mut self, mt: MigrateType) -> bool {
        if self.deferred_pages == 0 {
            return false;
        }
        let Some(sec) = self.sections().find(|s| s.deferred_pfn.get() < s.deferred_end.get()) else {
            return false;
        };
        let pfn = sec.deferred_pfn.get();
        let _t = trace::enter(Fn::DeferredGrowZone, MAX_PAGE_ORDER, mt);
        sec.deferred_pfn.set(pfn + (1 << MAX_PAGE_ORDER));
        self.deferred_pages -= 1 << MAX_PAGE_ORDER;
        self.free_pages -= 1 << MAX_PAGE_ORDER;
        self.purged_pages -= 1 << MAX_PAGE_ORDER;
        self.free_area[MAX_PAGE_ORDER as usize].nr_free -= 1;
        let mut pb = pfn;
        while pb < pfn + (1 << MAX_PAGE_ORDER) {
            sec.set_pageblock_migratetype(pb, mt);
            pb += 1 << PAGEBLOCK_ORDER;
        }
        let d = sec.desc_at(pfn - sec.base_pfn());
        d.flags.set(PG_ZEROED | PG_PURGED);
        self.add_to_free_list(d, MAX_PAGE_ORDER, mt, true);
        if self.in_service() >= 2 * self.pcp_sized_for {
            self.pcp_resize = true;
        }
        true
    }

    /// Pages the zone has put in service: managed, less the deferred ones
    /// (the kernel's `managed_pages` grows the same way as deferred struct
    /// pages are initialised).
    pub(crate) fn in_service(&self) -> usize {
        self.managed_pages - self.deferred_pages
    }

    /// `rmqueue_bulk`: takes up to `count` blocks of `order` onto the tail of
    /// `list`, all under the one hold of the lock the caller has, and marks
    /// them as PCP blocks. Returns how many it took.
    pub(crate) fn rmqueue_bulk(&mut self, order: u32, count: usize, mt: MigrateType, list: &mut List) -> usize {
        let t = trace::enter(Fn::RmqueueBulk, order, mt);
        t.set_count(count);
        self.in_bulk = true;
        let mut taken = 0;
        while taken < count {
            // A free block no bigger than what the batch still needs is
            // taken whole and cut into `order` blocks in one pass, rather
            // than split by `expand` into halves that the next `__rmqueue`s
            // take straight back off the free lists: the same blocks, in
            // the same (ascending) order, without the free-list traffic.
            let room = count - taken;
            let whole = order + (usize::BITS - 1 - room.leading_zeros()).min(MAX_PAGE_ORDER - order);
            let Some((d, got)) = self.rmqueue_whole(order, mt, whole) else { break };
            if got == order {
                d.state.set(PageState::Pcp);
                d.migratetype.set(mt);
                list.push_back(d);
                taken += 1;
                continue;
            }
            let (pfn, flags, n) = (desc_to_pfn(d), d.flags.get(), 1usize << (got - order));
            trace::point(Fn::Expand, order, mt, n as u32, got, pfn);
            for i in 0..n {
                // SAFETY: the block of order `got` at `pfn` is ours now and
                // lies in a live section.
                let b = unsafe { pfn_to_desc(pfn + (i << order)) };
                b.flags.set(flags);
                b.set_purged_within(0);
                b.order.set(order as u8);
                b.migratetype.set(mt);
                b.state.set(PageState::Pcp);
                trace::point(Fn::MmPageAllocZoneLocked, order, mt, 1, 0, pfn + (i << order));
                list.push_back(b);
            }
            taken += n;
        }
        self.in_bulk = false;
        self.ev.pcp_refill.inc();
        t.set_count(taken);
        taken
    }

    /// `__free_one_page`: puts a block back, merging it with its buddy (found
    /// by XOR of the frame number) for as long as the buddy is free and of the
    /// same order. `d.flags` says whether the block is zero and resident; the
    /// merged block is zero (or purged) only if every part was, and a dirty
    /// result counts as free since its *oldest* dirty part (the block just
    /// freed counts from now): a merge must not make old dirty memory look
    /// young, or purging a block next to a busy one would never finish.
    pub(crate) fn free_one_page(&mut self, d: &'static PageDesc, mut order: u32) {
        let mut pfn = desc_to_pfn(d);
        // SAFETY: `d` is the head of a block inside a live section.
        let sec = unsafe { section_of(pfn << PAGE_SHIFT) };
        let mt = sec.pageblock_migratetype(pfn);
        let mut flags = d.flags.get();
        let mut since = if flags & PG_PURGED == 0 { self.now_ms } else { u64::MAX };
        // A block coming in is either purged whole (a purge putting it back)
        // or resident whole (its owner freed it).
        let mut purged = if flags & PG_PURGED != 0 { 1usize << order } else { 0 };
        d.state.set(PageState::Tail);
        let t = trace::enter(Fn::FreeOnePage, order, mt);
        t.set_pfn(pfn);
        let first_order = order;
        while order < MAX_PAGE_ORDER {
            let buddy_pfn = pfn ^ (1 << order);
            // Descriptors past the usable pages and of the metadata pages are
            // never `Buddy`, so the check below also keeps merges inside the
            // section's usable range.
            let buddy = sec.desc_at(buddy_pfn - sec.base_pfn());
            if buddy.state.get() != PageState::Buddy || buddy.order.get() as u32 != order {
                break;
            }
            flags &= buddy.flags.get();
            if buddy.flags.get() & PG_PURGED == 0 {
                since = since.min(buddy.private.get() as u64);
            }
            purged += buddy.purged_pages(order);
            self.del_from_free_list(buddy);
            if order >= PAGEBLOCK_ORDER {
                // Merging whole pageblocks: the merged block is one type.
                let mut pb = buddy_pfn;
                while pb < buddy_pfn + (1 << order) {
                    sec.set_pageblock_migratetype(pb, mt);
                    pb += 1 << PAGEBLOCK_ORDER;
                }
            }
            pfn &= buddy_pfn;
            order += 1;
        }
        t.set_count((order - first_order) as usize);
        t.set_extra(order);
        let head = sec.desc_at(pfn - sec.base_pfn());
        head.flags.set(flags);
        head.private.set(if since == u64::MAX { self.now_ms } else { since } as usize);
        head.set_purged_within(if flags & PG_PURGED != 0 { 0 } else { purged });
        // `buddy_merge_likely`: if the next-higher buddy is free, this block
        // is likely to merge soon; put it at the tail so it is not handed out
        // first.
        let to_tail = order < MAX_PAGE_ORDER - 1 && {
            let higher = (pfn & !(1 << order)) ^ (1 << (order + 1));
            let hd = sec.desc_at(higher - sec.base_pfn());
            hd.state.get() == PageState::Buddy && hd.order.get() as u32 == order + 1
        };
        self.add_to_free_list(head, order, mt, to_tail);
    }

    /// Hands the usable pages of a new section to the buddy allocator as the
    /// largest aligned blocks, at the tails of the lists so that memory that
    /// is already resident is reused first (`FPI_TO_TAIL`).
    ///
    /// Only the pages before the first max-order boundary and after the last
    /// go on the lists now; the max-order blocks between are deferred (the
    /// kernel's `DEFERRED_STRUCT_PAGE_INIT`) and taken one at a time by
    /// `deferred_grow_zone` when the lists run dry. Putting them all on the
    /// lists at once would write one head descriptor per 4 MiB, each on a
    /// page of its own: 1 MiB of resident metadata for an idle 1 GiB section.
    pub(crate) fn add_section(&mut self, sec: &'static Section) {
        self.sections[self.nr_sections] = sec;
        self.nr_sections += 1;
        let base = sec.base_pfn();
        let (start, end) = (base + sec.first_pfn_offset, base + sec.nr_pages);
        let max = 1usize << MAX_PAGE_ORDER;
        let deferred_start = start.next_multiple_of(max).min(end);
        let deferred_end = deferred_start + (end - deferred_start) / max * max;
        self.add_range(sec, start, deferred_start, PG_ZEROED | PG_PURGED, true);
        self.add_range(sec, deferred_end, end, PG_ZEROED | PG_PURGED, true);
        sec.deferred_pfn.set(deferred_start);
        sec.deferred_end.set(deferred_end);
        let deferred = deferred_end - deferred_start;
        self.deferred_pages += deferred;
        self.free_pages += deferred;
        self.purged_pages += deferred;
        self.free_area[MAX_PAGE_ORDER as usize].nr_free += deferred / max;
        self.managed_pages += end - start;
    }

    /// Puts `[start, end)` on the free lists as maximal aligned blocks without
    /// merging (the caller knows none of them has a free buddy outside).
    fn add_range(&mut self, sec: &Section, mut start: usize, end: usize, flags: u8, tail: bool) {
        while start < end {
            let mut order = (start.trailing_zeros()).min(MAX_PAGE_ORDER);
            while start + (1 << order) > end {
                order -= 1;
            }
            let d = sec.desc_at(start - sec.base_pfn());
            d.flags.set(flags);
            let mt = sec.pageblock_migratetype(start);
            self.add_to_free_list(d, order, mt, tail);
            start += 1 << order;
        }
    }

    /// Takes the pages `[start, end)` out of the free lists if every one of
    /// them is free, splitting the free blocks at the range's edges and
    /// leaving what lies outside it free. Used to grow a block in place.
    /// Returns whether the range was taken (nothing changes if not).
    pub(crate) fn take_free_range(&mut self, start: usize, end: usize) -> bool {
        // SAFETY: `start` is the page after a live block, inside its section
        // (callers check `end` against the section's usable pages).
        let sec = unsafe { section_of(start << PAGE_SHIFT) };
        let base = sec.base_pfn();
        if end > base + sec.nr_pages || start < base + sec.first_pfn_offset {
            return false;
        }
        let containing = |p: usize| -> Option<(usize, u32)> {
            (0..=MAX_PAGE_ORDER).find_map(|o| {
                let h = p & !((1 << o) - 1);
                let d = sec.desc_at(h - base);
                (d.state.get() == PageState::Buddy && d.order.get() as u32 == o && h >= base).then_some((h, o))
            })
        };
        let mut p = start;
        while p < end {
            match containing(p) {
                Some((h, o)) => p = h + (1 << o),
                None => return false,
            }
        }
        let mut p = start;
        while p < end {
            let (h, o) = containing(p).expect("checked above");
            let d = sec.desc_at(h - base);
            let (flags, since) = (d.flags.get(), d.private.get());
            // Statistics: pieces of a dirty block share its non-resident pages
            // in proportion to their size.
            let per_page = d.purged_pages(o) as f64 / (1u64 << o) as f64;
            let mt = d.migratetype.get();
            self.del_from_free_list(d);
            let block_end = h + (1 << o);
            if h < start {
                self.add_range_mt(sec, h, start, flags, since, per_page, mt);
            }
            if block_end > end {
                self.add_range_mt(sec, end, block_end, flags, since, per_page, mt);
            }
            p = block_end;
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn add_range_mt(
        &mut self,
        sec: &Section,
        mut start: usize,
        end: usize,
        flags: u8,
        since: usize,
        purged_per_page: f64,
        mt: MigrateType,
    ) {
        while start < end {
            let mut order = start.trailing_zeros().min(MAX_PAGE_ORDER);
            while start + (1 << order) > end {
                order -= 1;
            }
            let d = sec.desc_at(start - sec.base_pfn());
            d.flags.set(flags);
            d.private.set(since);
            d.set_purged_within(if flags & PG_PURGED != 0 {
                0
            } else {
                (purged_per_page * (1 << order) as f64) as usize
            });
            self.add_to_free_list(d, order, mt, false);
            start += 1 << order;
        }
    }

    /// Takes the dirty blocks that have been free for at least `decay_ms` off
    /// the free lists for purging, largest orders first and oldest first
    /// within a list, up to `max_pages` pages or `out.len()` blocks. They are
    /// marked `Isolated` so that nothing allocates or merges them while the
    /// caller gives their memory back without the lock. Returns how many.
    pub(crate) fn isolate_for_purge(
        &mut self,
        now: u64,
        decay_ms: u64,
        max_pages: usize,
        out: &mut [Option<(&'static PageDesc, u32)>],
    ) -> usize {
        let (mut n, mut pages) = (0, 0);
        for order in (0..=MAX_PAGE_ORDER).rev() {
            for mt in 0..MIGRATE_TYPES {
                // Oldest at the tail, but a merge can put an old block nearer
                // the head: look past a few young ones.
                let mut cursor = self.free_area[order as usize].free_list[mt].last();
                let mut young = 0;
                while n < out.len() && pages < max_pages && young < PURGE_SCAN_YOUNG {
                    let Some(d) = cursor else { break };
                    cursor = d.prev_entry();
                    if now.saturating_sub(d.private.get() as u64) < decay_ms {
                        young += 1;
                        continue;
                    }
                    self.del_from_free_list(d);
                    d.state.set(PageState::Isolated);
                    d.order.set(order as u8);
                    self.isolated_pages += 1 << order;
                    out[n] = Some((d, order));
                    n += 1;
                    // Count the work: pages already purged inside a merged
                    // dirty block cost nothing to purge again.
                    pages += (1 << order) - d.purged_pages(order);
                }
            }
        }
        n
    }

    /// Puts an isolated block back after its memory was given to the OS: it
    /// is no longer resident, and zero if `zeroed` (`MADV_DONTNEED`).
    /// If the OS refused (`purged` false) the block goes back dirty.
    pub(crate) fn putback_purged(&mut self, d: &'static PageDesc, order: u32, purged: bool, zeroed: bool) {
        debug_assert_eq!(d.state.get(), PageState::Isolated);
        self.isolated_pages -= 1 << order;
        let flags = if purged { PG_PURGED } else { 0 } | if zeroed { PG_ZEROED } else { 0 };
        d.flags.set(flags);
        self.free_one_page(d, order);
    }

    /// Verifies every invariant listed on [`ZoneInner`], by walking the free
    /// lists and then every section's pages block by block. Blocks on PCP
    /// lists, handed out or isolated for purging must have head descriptors;
    /// a page that no block head covers is reported as lost.
    pub(crate) fn check(&self) -> Result<(), CheckError> {
        let (mut pages, mut purged) = (0, 0);
        for (o, area) in self.free_area.iter().enumerate() {
            let mut n = 0;
            let lists = area
                .free_list
                .iter()
                .enumerate()
                .map(|(mt, l)| (mt, l, 0))
                .chain(area.purged_list.iter().enumerate().map(|(mt, l)| (mt, l, PG_PURGED)));
            for (mt, list, want_purged) in lists {
                let mut prev: *const PageDesc = core::ptr::null();
                for d in list.iter() {
                    let pfn = desc_to_pfn(d);
                    if !std::ptr::eq(d.prev.get(), prev) {
                        return Err(CheckError { what: "free list back link broken", pfn });
                    }
                    prev = d;
                    if d.state.get() != PageState::Buddy {
                        return Err(CheckError { what: "block on a free list is not Buddy", pfn });
                    }
                    if d.order.get() as usize != o || d.migratetype.get() as usize != mt {
                        return Err(CheckError { what: "block on the free list of another order or type", pfn });
                    }
                    if pfn & ((1 << o) - 1) != 0 {
                        return Err(CheckError { what: "free block not aligned to its order", pfn });
                    }
                    if d.flags.get() & PG_PURGED != want_purged {
                        return Err(CheckError { what: "purged and dirty blocks on the wrong lists", pfn });
                    }
                    purged += d.purged_pages(o as u32);
                    if d.purged_pages(o as u32) > 1 << o {
                        return Err(CheckError { what: "a free block has more purged pages than pages", pfn });
                    }
                    n += 1;
                }
                if list.last().map(|l| l as *const PageDesc) != (!prev.is_null()).then_some(prev) {
                    return Err(CheckError { what: "free list tail pointer wrong", pfn: 0 });
                }
            }
            if o == MAX_PAGE_ORDER as usize {
                n += self.deferred_pages >> MAX_PAGE_ORDER;
            }
            if n != area.nr_free {
                return Err(CheckError { what: "nr_free does not match the free lists", pfn: o });
            }
            pages += n << o;
        }
        purged += self.deferred_pages;
        let deferred: usize = self.sections().map(|s| s.deferred_end.get() - s.deferred_pfn.get()).sum();
        if deferred != self.deferred_pages {
            return Err(CheckError { what: "deferred_pages does not match the sections", pfn: deferred });
        }
        if pages != self.free_pages {
            return Err(CheckError { what: "free_pages does not match the free lists", pfn: pages });
        }
        if purged != self.purged_pages {
            return Err(CheckError { what: "purged_pages does not match the free blocks", pfn: purged });
        }
        let mut walked_free = 0;
        for &sec in &self.sections[..self.nr_sections] {
            // SAFETY: sections in the table live forever.
            let sec = unsafe { &*sec };
            let base = sec.base_pfn();
            let (mut p, end) = (base + sec.first_pfn_offset, base + sec.nr_pages);
            let (deferred_pfn, deferred_end) = (sec.deferred_pfn.get(), sec.deferred_end.get());
            if deferred_pfn < deferred_end
                && (!deferred_pfn.is_multiple_of(1 << MAX_PAGE_ORDER)
                    || !deferred_end.is_multiple_of(1 << MAX_PAGE_ORDER))
            {
                return Err(CheckError { what: "deferred range not aligned to max-order blocks", pfn: deferred_pfn });
            }
            while p < end {
                if p == deferred_pfn && p < deferred_end {
                    walked_free += deferred_end - deferred_pfn;
                    p = deferred_end;
                    continue;
                }
                let d = sec.desc_at(p - base);
                let order = d.order.get() as u32;
                match d.state.get() {
                    PageState::Tail | PageState::Reserved => {
                        return Err(CheckError { what: "page covered by no block (lost)", pfn: p })
                    }
                    state => {
                        if order > MAX_PAGE_ORDER || p & ((1 << order) - 1) != 0 || p + (1 << order) > end {
                            return Err(CheckError { what: "block misaligned or past its section", pfn: p });
                        }
                        if state == PageState::Buddy {
                            walked_free += 1 << order;
                            if order < MAX_PAGE_ORDER {
                                let b = p ^ (1 << order);
                                if b >= base + sec.first_pfn_offset && b < end {
                                    let bd = sec.desc_at(b - base);
                                    if bd.state.get() == PageState::Buddy && bd.order.get() as u32 == order {
                                        return Err(CheckError { what: "free buddies left unmerged", pfn: p });
                                    }
                                }
                            }
                        }
                        // Interior pages of small blocks must be tails: a head
                        // inside another block means overlap. (Large blocks are
                        // not scanned, to keep their descriptors untouched.)
                        if order <= PAGE_ALLOC_COSTLY_ORDER {
                            for i in 1..(1 << order) {
                                if sec.desc_at(p + i - base).state.get() != PageState::Tail {
                                    return Err(CheckError { what: "block overlaps another block", pfn: p + i });
                                }
                            }
                        }
                        p += 1 << order;
                    }
                }
            }
        }
        if walked_free != self.free_pages {
            return Err(CheckError { what: "free pages in sections differ from the free lists", pfn: walked_free });
        }
        Ok(())
    }

    /// Pages handed out or on PCP lists, for statistics.
    pub(crate) fn sections(&self) -> impl Iterator<Item = &'static Section> + '_ {
        // SAFETY: sections in the table live forever.
        self.sections[..self.nr_sections].iter().map(|&s| unsafe { &*s })
    }
}

/// Maps a new section of `nr_pages` pages (metadata included) for zone
/// section number `index`. Never called under the zone lock.
pub(crate) fn map_section(index: usize, nr_pages: usize) -> Option<&'static Section> {
    let pages = nr_pages.clamp(SECTION_META_PAGES + 1, SECTION_PAGES);
    let base: NonNull<u8> = crate::os::map_aligned(pages * crate::os::PAGE_SIZE, SECTION_SIZE)?;
    // SAFETY: a fresh, zero-filled, SECTION_SIZE-aligned mapping of `pages`
    // pages that nobody else knows about.
    Some(unsafe { Section::init(base, index, pages) })
}
