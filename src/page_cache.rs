//! A thread's page cache: a few blocks of each order 0..=7 (4 to 512 KiB) that
//! the thread freed, kept for its next allocation of that order.
//!
//! The kernel has no such layer: its per-CPU lists need no atomic
//! instruction, because the kernel can keep a task on its CPU for the few
//! instructions of a list operation (`pcp_spin_trylock` runs with
//! preemption off). In userspace a thread can be preempted or moved at any
//! instruction, so the PCP is a try-lock: a `lock cmpxchg` on each
//! allocation and on each free, about two thirds of a 15 ns page round
//! trip. A thread's own stack of blocks needs none. It sits where jemalloc's
//! tcache and SLUB's per-CPU slab sit: in front, small (32 KiB of each
//! PCP order, 128 KiB), and refilled from and flushed to the PCP in
//! batches, so the PCP still sees the traffic, a batch per lock, and its
//! `high`/`batch` bookkeeping works as before.
//!
//! Orders 4 to 7 (64 to 512 KiB, the global allocator's large blocks up to
//! `LARGE_MAX_ORDER`) have no PCP list, so without a bin each alloc+free
//! pair of one takes the zone lock twice and splits and merges: about 700
//! instructions for a 256 KiB block, where mimalloc serves it from the
//! thread's own pages. Their bins hold one block each, straight from and
//! back to the zone (the kernel, too, keeps a PCP list for the one costly
//! order THP uses). A thread can thus hold 128 + 960 = 1088 KiB, but fills
//! only the bins of the orders it uses, and gives them back with the rest
//! once per decay time.
//!
//! Only `MIGRATE_MOVABLE` blocks are cached: the page API's default and the
//! global allocator's large blocks. Other migratetypes go to the PCP.
//!
//! The cache belongs to the thread's [`ThreadCache`](crate::ThreadCache),
//! which opens it on its first slow path, gives its unused orders back once
//! per decay time, and empties it when the thread exits.

use core::ptr;
use core::sync::atomic::AtomicU32;
use core::sync::atomic::Ordering::Relaxed;

use crate::page::*;
use crate::page_alloc::{prep_new_page, Gfp, PageAllocator};

/// Orders with a bin: those with PCP lists, and orders 4 to
/// `LARGE_MAX_ORDER` (64 to 512 KiB), whose one cached block comes from and
/// goes back to the zone directly, as the kernel serves orders above
/// `PAGE_ALLOC_COSTLY_ORDER`.
pub(crate) const NR_PAGE_BINS: usize = crate::large::LARGE_MAX_ORDER as usize + 1;

/// Most blocks a bin holds: 32 KiB of each PCP order, one block of each
/// larger order.
pub(crate) const PAGE_BIN_MAX: [u32; NR_PAGE_BINS] = [8, 4, 2, 1, 1, 1, 1, 1];

const SLOTS: usize = 8;

/// The smallest order whose free waits for the thread's stores to drain
/// (32 pages, 128 KiB): see [`drain_store_buffer`].
const DRAIN_ORDER: u32 = 5;

/// A full fence on the free of a cached block of `DRAIN_ORDER` or more.
///
/// Why: a pass that writes one line per page of a block, the way a program
/// touches a fresh buffer or walks a column, puts every store in the same
/// L1 set (a page is a multiple of the set stride). With 32 or more such
/// stores in flight, more than any L1 has ways, the lines fetched for the
/// newest stores evict those the oldest still wait for. When the block is
/// freed and taken again at once, the next pass's stores enter the store
/// buffer behind the last pass's and the thrashing doubles: on this
/// project's AMD EPYC (Zen 5, 48 KiB 12-way L1d), 64 page-strided stores
/// and a free take 520 ns a round without a fence and 255 with one, and a
/// bare write loop behaves the same with `mfence` or any `lock`-prefixed
/// instruction between rounds (benches/results/store-drain-2026-12-04.md). The kernel's
/// free of such an order takes the zone lock, and jemalloc's and mimalloc's
/// take an atomic, so they get the drain for free; the thread's bin took
/// the lock away.
///
/// Cost: 3 to 5 ns a free when there is nothing to drain (a 256 KiB pair
/// with one store per page at a 4160-byte stride, each in its own set: 22
/// ns against 27), against the several microseconds it takes to write such
/// a block. Only x86-64 is measured, so only x86-64 fences.
#[inline(always)]
fn drain_store_buffer() {
    #[cfg(target_arch = "x86_64")]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// The migratetype the cache keeps.
pub(crate) const CACHED_MT: MigrateType = MIGRATE_MOVABLE;

/// One order's blocks, a stack with the hottest on top.
///
/// Invariants: `blocks[..count]` are distinct head descriptors of free
/// blocks of this bin's order and migratetype `CACHED_MT`, each in state
/// `Cached` (so that freeing one again is caught by `free_pages_prepare`);
/// `count <= max <= PAGE_BIN_MAX[order]`. Only the owning thread touches
/// the bin; `count` is atomic so that statistics may read it from others.
struct PageBin {
    blocks: [*const PageDesc; SLOTS],
    count: AtomicU32,
    /// 0 while the cache is closed (before its first slow path, once dead).
    max: u32,
}

/// The per-order bins of one thread (see the module's documentation).
pub(crate) struct PageCache {
    bins: [PageBin; NR_PAGE_BINS],
}

const _: () = {
    let mut o = 0;
    while o < NR_PAGE_BINS {
        assert!(PAGE_BIN_MAX[o] as usize <= SLOTS && PAGE_BIN_MAX[o] >= 1);
        o += 1;
    }
};

impl PageCache {
    /// A closed, empty cache.
    pub(crate) const fn new() -> Self {
        Self {
            bins: [const { PageBin { blocks: [ptr::null(); SLOTS], count: AtomicU32::new(0), max: 0 } }; NR_PAGE_BINS],
        }
    }

    /// Lets the bins fill up to their sizes.
    pub(crate) fn open(&mut self) {
        for (bin, &max) in self.bins.iter_mut().zip(PAGE_BIN_MAX.iter()) {
            bin.max = max;
        }
    }

    /// Empties the cache and keeps it closed: every free goes to the PCP.
    pub(crate) fn close(&mut self, pages: &PageAllocator) {
        self.flush_all(pages);
        for bin in &mut self.bins {
            bin.max = 0;
        }
    }

    /// Pages held, for statistics (any thread may ask; the answer may be
    /// stale).
    pub(crate) fn cached_pages(&self) -> usize {
        self.bins.iter().enumerate().map(|(o, b)| (b.count.load(Relaxed) as usize) << o).sum()
    }

    /// Blocks held of `order`.
    pub(crate) fn count(&self, order: u32) -> usize {
        self.bins[order as usize].count.load(Relaxed) as usize
    }

    /// The fast path: the hottest cached block of `order`, prepared for its
    /// new owner (marked allocated, cleared if `gfp` asks). `order` must be
    /// below `NR_PAGE_BINS`.
    #[inline(always)]
    pub(crate) fn pop(&mut self, order: u32, gfp: Gfp) -> Option<&'static PageDesc> {
        debug_assert!((order as usize) < NR_PAGE_BINS);
        let bin = &mut self.bins[order as usize];
        let n = bin.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        bin.count.store(n - 1, Relaxed);
        // SAFETY: `n - 1 < count <= SLOTS`, and `blocks[..count]` are live
        // descriptors of free blocks cached here (the bin's invariant).
        let d = unsafe { &*bin.blocks[n as usize - 1] };
        Some(prep_new_page(d, order, gfp))
    }

    /// The fast path of a free: a block that `free_pages_prepare` accepted
    /// (an allocated block of `order`, migratetype `CACHED_MT`) goes on top
    /// of its bin. False when the bin is full (or closed): the caller
    /// flushes and retries, or frees to the PCP.
    #[inline(always)]
    pub(crate) fn push(&mut self, d: &'static PageDesc, order: u32) -> bool {
        let bin = &mut self.bins[order as usize];
        let n = bin.count.load(Relaxed);
        if n >= bin.max {
            return false;
        }
        if order >= DRAIN_ORDER {
            drain_store_buffer();
        }
        d.state.set(PageState::Cached);
        bin.blocks[n as usize] = d;
        bin.count.store(n + 1, Relaxed);
        true
    }

    /// Refills an empty bin with half its size (at least one block) from
    /// this CPU's PCP under one try-lock; how many came (0 if the PCP was
    /// busy or had nothing and the zone had nothing either, and always for
    /// orders above 3, which have no PCP list: the caller takes that block
    /// from the zone itself).
    #[cold]
    pub(crate) fn refill(&mut self, pages: &PageAllocator, order: u32) -> usize {
        if order > PAGE_ALLOC_COSTLY_ORDER {
            return 0;
        }
        let bin = &mut self.bins[order as usize];
        debug_assert_eq!(bin.count.load(Relaxed), 0);
        let want = bin.max.div_ceil(2) as usize;
        let mut n = 0;
        let got = pages.pcp_take_many(order, CACHED_MT, want, |d| {
            d.state.set(PageState::Cached);
            bin.blocks[n] = d;
            n += 1;
        });
        debug_assert_eq!(got, n);
        bin.count.store(n as u32, Relaxed);
        n
    }

    /// Gives the colder half of a full bin of `order` back to the PCP (all
    /// of it for a bin of one), under one try-lock.
    #[cold]
    pub(crate) fn flush_half(&mut self, pages: &PageAllocator, order: u32) {
        let n = self.bins[order as usize].count.load(Relaxed);
        self.flush(pages, order, n.div_ceil(2));
    }

    /// Gives every cached block back to the PCP.
    pub(crate) fn flush_all(&mut self, pages: &PageAllocator) {
        for order in 0..NR_PAGE_BINS as u32 {
            self.flush_order(pages, order);
        }
    }

    /// Gives every cached block of `order` back to the PCP.
    pub(crate) fn flush_order(&mut self, pages: &PageAllocator, order: u32) {
        let n = self.bins[order as usize].count.load(Relaxed);
        self.flush(pages, order, n);
    }

    /// Gives the `n` coldest blocks of `order` (the bottom of the stack) back.
    fn flush(&mut self, pages: &PageAllocator, order: u32, n: u32) {
        let bin = &mut self.bins[order as usize];
        let count = bin.count.load(Relaxed);
        let n = n.min(count) as usize;
        if n == 0 {
            return;
        }
        // SAFETY: `blocks[..count]` are live descriptors of free blocks of
        // `order` cached here (the bin's invariant), and they leave the bin
        // below before anything else can see them.
        pages.pcp_give_many(order, bin.blocks[..n].iter().map(|&d| unsafe { &*d }));
        bin.blocks.copy_within(n..count as usize, 0);
        bin.count.store(count - n as u32, Relaxed);
    }
}
