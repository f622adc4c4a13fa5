//! Per-CPU page lists (`struct per_cpu_pages`): the page allocator's fast
//! path, refilled from and drained to the zone in batches.

use crate::page::*;
use crate::stats::PcpEvents;
use crate::sync::{Counter, SpinLock, UnsafeCell};
use crate::trace::{self, Fn};
use crate::zone::{Zone, ZoneInner};

/// One list per (order 0..=3, migratetype).
pub(crate) const NR_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER as usize + 1);

/// `order_to_pindex`.
#[inline]
pub(crate) const fn order_to_pindex(order: u32, mt: MigrateType) -> usize {
    order as usize * MIGRATE_PCPTYPES + mt as usize
}

#[inline]
const fn pindex_to_order(pindex: usize) -> u32 {
    (pindex / MIGRATE_PCPTYPES) as u32
}

/// A CPU's page lists and their bookkeeping, guarded by the PCP lock.
///
/// Invariants:
/// * every block on `lists[order_to_pindex(o, mt)]` has a head descriptor in
///   state `Pcp` with order `o` and migratetype `mt`;
/// * `count` is the number of *pages* on all lists (an order-2 block adds 4);
/// * after every free, `count < high` (a free that reaches `high` drains);
/// * `1 <= batch` and `4 * batch <= high` (the kernel's floor).
pub(crate) struct PcpInner {
    pub(crate) count: usize,
    pub(crate) high: usize,
    pub(crate) batch: usize,
    pub(crate) lists: [List; NR_PCP_LISTS],
    /// Where the next drain starts its round-robin over the lists.
    free_pindex: usize,
    /// Refills and drains so far: a caller that sees it change knows it
    /// went to the zone, a slow path where purging may run.
    pub(crate) zone_trips: u64,
    /// Set by every allocation and free; cleared by each purge tick, which
    /// counts the ticks that found it clear and drains a PCP idle for a
    /// whole decay time (the kernel's `decay_pcp_high` in spirit).
    pub(crate) used: bool,
    pub(crate) idle_ticks: u8,
    /// A refill found the zone asking for the PCPs to be sized again (see
    /// `ZoneInner::pcp_resize`); the caller does it once the lock is dropped.
    pub(crate) resize_wanted: bool,
    pub(crate) ev: PcpEvents,
}

/// `struct per_cpu_pages`: one per possible CPU, cache padded by its owner.
///
/// The lock is taken with `try_lock` on the allocation and free paths: a
/// failure means another thread running on this CPU (or one preempted while
/// holding it) has it, and the caller goes to the zone instead, as the
/// kernel's `rmqueue_pcplist` falls back to `rmqueue_buddy`. Only
/// `drain_all_pages`, `zone_pcp_update` and the fork handlers wait for it.
pub(crate) struct PerCpuPages {
    pub(crate) lock: SpinLock,
    inner: UnsafeCell<PcpInner>,
    /// Try-lock failures that fell back to the zone; counted without the lock.
    pub(crate) trylock_fail: Counter,
}

// SAFETY: `inner` is only reached while `lock` is held (see `locked`).
unsafe impl Sync for PerCpuPages {}
// SAFETY: nothing in a PCP is tied to a thread.
unsafe impl Send for PerCpuPages {}

crate::sync::maybe_const_fn! {
    pub(crate) fn pcp_new() -> PerCpuPages {
        PerCpuPages {
            lock: SpinLock::new(),
            inner: UnsafeCell::new(PcpInner {
                count: 0,
                high: 4,
                batch: 1,
                lists: [const { List::new() }; NR_PCP_LISTS],
                free_pindex: 0,
                zone_trips: 0,
                used: false,
                idle_ticks: 0,
                resize_wanted: false,
                ev: PcpEvents::new(),
            }),
            trylock_fail: Counter::new(),
        }
    }
}

impl PerCpuPages {
    /// The lists, for a caller that holds `self.lock`.
    ///
    /// # Safety
    /// The caller must hold `self.lock` for as long as it uses the result,
    /// and must not call this again while the result is alive.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn locked(&self) -> &mut PcpInner {
        debug_assert!(self.lock.is_locked());
        // SAFETY: the lock serialises all access to `inner`.
        unsafe { &mut *self.inner.get() }
    }

    /// Reads the bookkeeping without the lock, for statistics.
    ///
    /// # Safety
    /// Only plain integer fields may be read, and they may be stale.
    pub(crate) unsafe fn inner_unlocked(&self) -> &PcpInner {
        // SAFETY: forwarded.
        unsafe { &*self.inner.get_racy() }
    }
}

impl PcpInner {
    /// `nr_pcp_alloc`: how many blocks one refill takes: `batch` pages' worth,
    /// at least two blocks.
    #[inline]
    fn nr_pcp_alloc(&self, order: u32) -> usize {
        (self.batch >> order).max(2)
    }

    /// `nr_pcp_free`: how many pages a drain frees once `count` reached
    /// `high`: enough to bring `count` down to `high - batch`, and at least
    /// `batch`, so the next drain is at least `batch` frees away.
    #[inline]
    fn nr_pcp_free(&self) -> usize {
        (self.count + self.batch).saturating_sub(self.high).max(self.batch)
    }

    /// `__rmqueue_pcplist`: the first (hottest) block of the list for
    /// `(order, mt)`, refilling an empty list with one `rmqueue_bulk`.
    #[inline(always)]
    pub(crate) fn rmqueue_pcplist(&mut self, zone: &Zone, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::RmqueuePcplistInner, order, mt);
        let pindex = order_to_pindex(order, mt);
        self.used = true;
        if self.lists[pindex].is_empty() && !self.refill(zone, order, mt, pindex) {
            return None;
        }
        let d = self.lists[pindex].pop_front()?;
        self.count -= 1 << order;
        self.ev.pcp_alloc.inc();
        self.ev.pgalloc.add(1 << order);
        Some(d)
    }

    /// `__rmqueue_pcplist` for a bulk request: up to `want` blocks, handing
    /// each to `f`. A block whose turn finds the list empty goes through the
    /// whole `__rmqueue_pcplist` (refill included); the others are unlinked
    /// as one run, with the counters updated once per run.
    #[inline(always)]
    pub(crate) fn rmqueue_pcplist_many(
        &mut self,
        zone: &Zone,
        order: u32,
        mt: MigrateType,
        want: usize,
        mut f: impl FnMut(&'static PageDesc),
    ) -> usize {
        let pindex = order_to_pindex(order, mt);
        self.used = true;
        let mut got = 0;
        while got < want {
            // An empty list is refilled with what the request still needs
            // if that is more than a refill takes (one zone-lock hold for
            // the whole remainder, which is what a bulk call is for; on a
            // small zone `batch` is 1 or 3).
            let rest = want - got;
            if self.lists[pindex].is_empty()
                && rest > self.nr_pcp_alloc(order)
                && !self.refill_n(zone, order, mt, pindex, rest)
            {
                break;
            }
            if self.lists[pindex].is_empty() {
                match self.rmqueue_pcplist(zone, order, mt) {
                    Some(d) => {
                        f(d);
                        got += 1;
                        continue;
                    }
                    None => break,
                }
            }
            let n = self.lists[pindex].pop_front_run(want - got, |d| {
                trace::point(Fn::RmqueuePcplistInner, order, mt, u32::MAX, 0, 0);
                f(d)
            });
            got += n;
            self.count -= n << order;
            self.ev.pcp_alloc.add(n as u64);
            self.ev.pgalloc.add((n as u64) << order);
        }
        got
    }

    /// The refill of an empty list: one `rmqueue_bulk` of `nr_pcp_alloc`
    /// blocks. Whether any came.
    #[cold]
    #[inline]
    fn refill(&mut self, zone: &Zone, order: u32, mt: MigrateType, pindex: usize) -> bool {
        let want = self.nr_pcp_alloc(order);
        self.refill_n(zone, order, mt, pindex, want)
    }

    /// One `rmqueue_bulk` of `want` blocks onto an empty list. Whether any
    /// came.
    #[cold]
    #[inline(never)]
    fn refill_n(&mut self, zone: &Zone, order: u32, mt: MigrateType, pindex: usize, want: usize) -> bool {
        self.zone_trips += 1;
        // Broken on purpose (loom-tests): chooses each block under one hold
        // of the zone lock and takes it under the next.
        #[cfg(loom_broken = "refill_drops_zone_lock")]
        if crate::sync::broken("refill_drops_zone_lock") {
            let got = zone.rmqueue_bulk_dropping_lock(order, want, mt, &mut self.lists[pindex]);
            self.count += got << order;
            return got > 0;
        }
        let mut zone = zone.lock();
        let got = zone.rmqueue_bulk(order, want, mt, &mut self.lists[pindex]);
        self.resize_wanted |= zone.pcp_resize;
        drop(zone);
        self.count += got << order;
        got > 0
    }

    /// `free_unref_page_commit`: puts a block at the hot end of its list and
    /// drains a batch to the zone when `count` reaches `high`.
    #[inline(always)]
    pub(crate) fn free_unref_page_commit(&mut self, zone: &Zone, d: &PageDesc, order: u32) {
        let _t = trace::enter(Fn::FreeUnrefPageCommit, order, d.migratetype.get());
        d.state.set(PageState::Pcp);
        self.used = true;
        self.lists[order_to_pindex(order, d.migratetype.get())].push_front(d);
        self.count += 1 << order;
        self.ev.pcp_free.inc();
        self.ev.pgfree.add(1 << order);
        if self.count >= self.high {
            self.drain_high(zone);
        }
    }

    /// The drain of a free that made `count` reach `high`.
    #[cold]
    #[inline(never)]
    fn drain_high(&mut self, zone: &Zone) {
        let n = self.nr_pcp_free();
        // Broken on purpose (loom-tests): drains into the zone without
        // taking the zone lock.
        #[cfg(loom_broken = "drain_skips_zone_lock")]
        if crate::sync::broken("drain_skips_zone_lock") {
            // SAFETY: none: this is the bug the loom model must catch.
            self.free_pcppages_bulk(unsafe { zone.inner_without_lock() }, n);
            return;
        }
        self.free_pcppages_bulk(&mut zone.lock(), n);
    }

    /// `free_pcppages_bulk`: gives at least `count` pages back to the zone
    /// (or all there are) under the one hold of the zone lock the caller has,
    /// taking from the cold tails of the lists round-robin.
    pub(crate) fn free_pcppages_bulk(&mut self, zone: &mut ZoneInner, count: usize) -> usize {
        let t = trace::enter(Fn::FreePcppagesBulk, 0, 0);
        t.set_count(count);
        let mut freed = 0;
        self.zone_trips += 1;
        while freed < count && self.count > 0 {
            // Find the next non-empty list; `count > 0` guarantees one.
            let mut pindex = self.free_pindex;
            while self.lists[pindex].is_empty() {
                pindex = (pindex + 1) % NR_PCP_LISTS;
            }
            self.free_pindex = (pindex + 1) % NR_PCP_LISTS;
            let order = pindex_to_order(pindex);
            // Take a run from this list before moving on, as the kernel does,
            // so the lock hold walks few cache lines of list heads.
            while freed < count {
                let Some(d) = self.lists[pindex].pop_back() else { break };
                self.count -= 1 << order;
                freed += 1 << order;
                trace::point(Fn::MmPagePcpuDrain, order, d.migratetype.get(), u32::MAX, 0, desc_to_pfn(d));
                zone.free_one_page(d, order);
            }
        }
        self.ev.pcp_drain.inc();
        t.set_count(freed);
        freed
    }
}

/// `zone_batchsize`: about a quarter of a thousandth of the zone, at most
/// 1 MiB worth of pages before the quartering, then `b + b/2` rounded down to
/// a power of two, minus one (the kernel avoids power-of-two batches, which
/// alias in caches). A zone of 1 GiB or more gets 63.
pub(crate) fn zone_batchsize(managed_pages: usize) -> usize {
    let mut batch = (managed_pages >> 10).min((1 << 20) / crate::os::PAGE_SIZE);
    batch /= 4;
    batch = batch.max(1);
    let b = batch + batch / 2;
    let pow = 1usize << (usize::BITS - 1 - b.leading_zeros());
    (pow - 1).max(1)
}

/// `zone_highsize` with the default `percpu_pagelist_high_fraction` of 0:
/// the zone's low watermark split among the CPUs, and never below
/// `4 * batch`.
///
/// The watermark follows `init_per_zone_wmark_min` and
/// `__setup_per_zone_wmarks` for a single zone: `min_free_kbytes =
/// sqrt(16 × zone KiB)` clamped to [128, 262144]; `min` is that in pages;
/// `low = min + max(min / 4, managed × 10 / 10000)`
/// (`watermark_scale_factor` = 10). For a 1 GiB zone on two CPUs:
/// min = 1024, low = 1286, high = 643 pages (2.5 MiB per CPU).
pub(crate) fn zone_highsize(managed_pages: usize, batch: usize, nr_cpus: usize) -> usize {
    let kbytes = managed_pages * (crate::os::PAGE_SIZE / 1024);
    let min_free_kbytes = isqrt(kbytes * 16).clamp(128, 262_144);
    let min = min_free_kbytes / (crate::os::PAGE_SIZE / 1024);
    let low = min + (min / 4).max(managed_pages * 10 / 10_000);
    (low / nr_cpus.max(1)).max(4 * batch)
}

fn isqrt(n: usize) -> usize {
    if n < 2 {
        return n;
    }
    let mut x = (n as f64).sqrt() as usize;
    while x * x > n {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= n {
        x += 1;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_and_high_follow_the_kernel() {
        // A zone of 1 GiB or more: the kernel's familiar batch of 63.
        assert_eq!(zone_batchsize(262_144), 63);
        assert_eq!(zone_batchsize(4 << 20), 63);
        // Small zones get small batches, never zero.
        assert_eq!(zone_batchsize(0), 1);
        assert_eq!(zone_batchsize(16_384), 3);
        assert_eq!(zone_batchsize(65_536), 15);
        // high: the low watermark split among CPUs, at least 4 * batch.
        assert_eq!(zone_highsize(262_144, 63, 2), 643);
        assert_eq!(zone_highsize(1024, 1, 2), 40);
        assert!(zone_highsize(16_384, 3, 64) >= 12);
    }
}
