//! The page allocator: one zone with its per-CPU page lists, the slow path
//! that drains and grows it, and the kernel's page API (`alloc_pages`,
//! `alloc_pages_bulk_array`, `free_pages`).
//!
//! Lock order (outermost first): slab class locks, `grow_lock`, PCP locks,
//! `zone->lock`. The fast paths only ever *try* a PCP lock, so a thread never
//! waits on a PCP while holding one; only `drain_all_pages`,
//! `zone_pcp_update` and the fork handlers wait on PCP locks, and they hold
//! nothing but `grow_lock` (or, from the slab layer, class locks) when they do.

use core::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::os::{self, PurgeMode};
use crate::page::*;
use crate::pcp::{pcp_new, zone_batchsize, zone_highsize, PcpInner, PerCpuPages};
use crate::stats::{BuddyInfo, VmStat, ZoneInfo};
use crate::sync::{AtomicUsize, Counter, Ordering, RawLock};
use crate::trace::{self, Fn};
use crate::zone::{map_section, zone_new, CheckError, Zone, MAX_SECTIONS};

/// Most CPUs with a PCP of their own; CPU ids beyond wrap around (correct,
/// since every PCP is locked, only less local).
#[cfg(not(loom))]
pub const MAX_CPUS: usize = 256;
#[cfg(loom)]
pub const MAX_CPUS: usize = 4;

/// Most slots one `alloc_pages_bulk_array` call fills.
pub const MAX_BULK: usize = 1024;

/// Allocation flags, in the spirit of the kernel's `gfp_t`. Combine with `|`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Gfp(u32);

impl Gfp {
    /// Nothing special: may grow the heap, memory content unspecified.
    pub const DEFAULT: Gfp = Gfp(0);
    /// Zeroed memory (`__GFP_ZERO`); free when the block is known untouched.
    pub const ZERO: Gfp = Gfp(1);
    /// Never take the slow path's growth step (`GFP_NOWAIT`): the request
    /// fails rather than map a new section. The PCPs are still drained.
    pub const NOWAIT: Gfp = Gfp(2);
    /// The block backs a buffer or cache the program will drop soon: it is
    /// grouped with other such blocks (`MIGRATE_RECLAIMABLE`).
    pub const RECLAIMABLE: Gfp = Gfp(4);

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Gfp) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) const fn migratetype(self) -> MigrateType {
        if self.contains(Gfp::RECLAIMABLE) {
            MIGRATE_RECLAIMABLE
        } else {
            MIGRATE_MOVABLE
        }
    }
}

impl core::ops::BitOr for Gfp {
    type Output = Gfp;
    fn bitor(self, rhs: Gfp) -> Gfp {
        Gfp(self.0 | rhs.0)
    }
}

/// A block of `2^order` pages handed out by the page allocator, naturally
/// aligned to its size. It is freed with the order it was allocated with.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    ptr: NonNull<u8>,
}

// SAFETY: a `Page` is the unique handle to its block; moving it to another
// thread moves the ownership of the memory, which any thread may free.
unsafe impl Send for Page {}
// SAFETY: `&Page` only exposes the address.
unsafe impl Sync for Page {}

impl Page {
    /// The first byte of the block.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The page frame number: the address divided by the page size.
    pub fn pfn(&self) -> usize {
        self.ptr.as_ptr() as usize >> PAGE_SHIFT
    }

    /// Gives up the handle, returning the block's address.
    pub fn into_raw(self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Rebuilds a handle from [`Page::into_raw`].
    ///
    /// # Safety
    /// `ptr` must come from `into_raw` of a page that has not been freed since,
    /// and no other handle to it may exist.
    pub unsafe fn from_raw(ptr: *mut u8) -> Page {
        // SAFETY: the caller guarantees `ptr` came from a live `Page`.
        Page { ptr: unsafe { NonNull::new_unchecked(ptr) } }
    }
}

/// How a page allocator instance is sized. The process-wide one uses
/// [`Config::DEFAULT`]; tests and model checks make small private instances.
#[derive(Copy, Clone, Debug)]
pub struct Config {
    /// Pages per section, metadata included (at most 2^18 = 1 GiB).
    pub section_pages: usize,
    /// Most sections the zone may map; past that, allocation fails.
    pub max_sections: usize,
    /// PCPs in use; 0 means the machine's possible CPUs.
    pub nr_cpus: usize,
    /// Where the current CPU comes from; `None` means `sched_getcpu()`.
    pub cpu: Option<fn() -> usize>,
    /// Overrides the kernel's `batch` formula (tests only).
    pub batch: Option<usize>,
    /// Overrides the kernel's `high` formula (tests only).
    pub high: Option<usize>,
    /// Called once, after the first section is mapped (the process-wide
    /// instance registers its fork handlers there).
    pub on_first_grow: Option<fn()>,
    /// How long a free block stays resident before it is purged, in ms
    /// (`u64::MAX`: never). Changeable at run time with `set_decay_ms`.
    pub decay_ms: u64,
    /// How purged memory goes back to the OS.
    pub purge_mode: PurgeMode,
    /// Where the time comes from, in ms; `None` means the coarse monotonic
    /// clock. Tests inject their own.
    pub clock: Option<fn() -> u64>,
    /// Called on every purge tick, outside every lock (the process-wide
    /// instance decays the slab layer's caches there).
    pub on_purge_tick: Option<fn()>,
    /// Called with each new section's address (its header gives its
    /// length), after it is mapped and before any of its pages is handed
    /// out (the process-wide instance records which addresses are its own
    /// there).
    pub on_new_section: Option<fn(usize)>,
}

/// Default purge delay: a block free for a second goes back to the OS.
///
/// mimalloc v3 waits 1 s (v2 10 ms), jemalloc decays dirty pages over 10 s.
/// A second keeps a program that frees and reallocates in a loop (the 16 KiB
/// ping-pong, a request/response cycle) from `madvise`-ing anything, since
/// blocks in such loops never stay free that long, while an idle service is
/// back to its live set within about two seconds.
pub const DEFAULT_DECAY_MS: u64 = 1000;

/// Resident pages one purge tick gives back (64 MiB, a few milliseconds of
/// `madvise`), or a quarter of the dirty backlog if that is more: a bounded
/// step on an allocation that happens to run it. A tick that hits its
/// budget re-arms at once, so a backlog drains over the next few slow-path
/// calls.
pub const PURGE_STEP_PAGES: usize = 16384;

/// Below this much dirty free memory (1 MiB) the purge at a phase's end
/// (`purge_after_exit`) is not worth its system calls.
pub const EXIT_PURGE_MIN_PAGES: usize = 256;

/// How much the purge at a phase's end gives back (512 KiB, in whole
/// blocks, largest first, so at least the largest dirty block): bounded, so
/// that a program that starts and joins one thread per job pays at most
/// that much refaulting per job.
pub const EXIT_PURGE_PAGES: usize = 128;

/// Blocks isolated per zone-lock hold while purging.
const PURGE_BATCH: usize = 32;

impl Config {
    /// Whole 1 GiB sections, up to the zone's limit, one PCP per CPU.
    pub const DEFAULT: Config = Config {
        section_pages: SECTION_PAGES,
        max_sections: MAX_SECTIONS,
        nr_cpus: 0,
        cpu: None,
        batch: None,
        high: None,
        on_first_grow: None,
        decay_ms: DEFAULT_DECAY_MS,
        purge_mode: PurgeMode::DontNeed,
        clock: None,
        on_purge_tick: None,
        on_new_section: None,
    };

    /// A small instance: sections of `usable_pages` usable pages (after the
    /// metadata), at most `max_sections` of them.
    pub const fn small(usable_pages: usize, max_sections: usize) -> Config {
        Config { section_pages: SECTION_META_PAGES + usable_pages, max_sections, ..Config::DEFAULT }
    }
}

/// Events counted outside both the PCP and the zone locks.
struct NodeEvents {
    slowpath: Counter,
    drain_all: Counter,
    purge_ticks: Counter,
    /// Purges at a phase's end (`purge_after_exit`) that found enough to do.
    exit_purges: Counter,
    purge_calls: Counter,
    purged_pages: Counter,
    pcp_decay_drains: Counter,
}

/// Purge bookkeeping: settings changeable at run time and the next tick's
/// time. Plain `core` atomics: purging is not part of what loom models.
struct PurgeState {
    decay_ms: core::sync::atomic::AtomicU64,
    /// 0 = `MADV_DONTNEED`, 1 = `MADV_FREE`.
    mode: core::sync::atomic::AtomicU32,
    next_ms: core::sync::atomic::AtomicU64,
}

/// Page counts behind `stats()`.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct PageCounts {
    pub(crate) managed: usize,
    pub(crate) free: usize,
    pub(crate) purged: usize,
    pub(crate) isolated: usize,
    pub(crate) pcp: usize,
    pub(crate) nr_sections: usize,
    /// Pages mapped for sections, metadata included.
    pub(crate) mapped_pages: usize,
    /// Section header and descriptor pages that are resident (`mincore`).
    pub(crate) meta_resident: usize,
}

impl PageCounts {
    /// Pages handed out: slabs, large blocks, page-API blocks.
    pub(crate) fn in_use(&self) -> usize {
        self.managed.saturating_sub(self.free + self.pcp + self.isolated)
    }
}

/// A page allocator: the zone, one PCP per CPU, and the growth lock.
///
/// Invariants: `nr_cpus` is 0 until first use, then fixed in
/// `1..=MAX_CPUS`; only `pcp[..nr_cpus]` are used. Every block is, at any
/// time, on exactly one of: a zone free list, one PCP list, or handed out.
pub struct PageAllocator {
    pub(crate) zone: Zone,
    pcp: [CachePadded<PerCpuPages>; MAX_CPUS],
    /// Serialises `grow` so that two threads that find the zone empty map
    /// one section, not two.
    grow_lock: RawLock,
    nr_cpus: AtomicUsize,
    config: Config,
    ev: NodeEvents,
    purge: PurgeState,
}

#[cfg(not(loom))]
const fn pcp_array() -> [CachePadded<PerCpuPages>; MAX_CPUS] {
    [const { CachePadded::new(pcp_new()) }; MAX_CPUS]
}
#[cfg(loom)]
fn pcp_array() -> [CachePadded<PerCpuPages>; MAX_CPUS] {
    core::array::from_fn(|_| CachePadded::new(pcp_new()))
}

crate::sync::maybe_const_fn! {
    /// A page allocator that maps nothing until its first allocation.
    pub fn page_allocator_new(config: Config) -> PageAllocator {
        PageAllocator {
            zone: zone_new(),
            pcp: pcp_array(),
            grow_lock: RawLock::new(),
            nr_cpus: AtomicUsize::new(0),
            config,
            ev: NodeEvents {
                slowpath: Counter::new(),
                drain_all: Counter::new(),
                purge_ticks: Counter::new(),
                exit_purges: Counter::new(),
                purge_calls: Counter::new(),
                purged_pages: Counter::new(),
                pcp_decay_drains: Counter::new(),
            },
            purge: PurgeState {
                decay_ms: core::sync::atomic::AtomicU64::new(config.decay_ms),
                mode: core::sync::atomic::AtomicU32::new(match config.purge_mode {
                    PurgeMode::DontNeed => 0,
                    PurgeMode::Free => 1,
                }),
                next_ms: core::sync::atomic::AtomicU64::new(0),
            },
        }
    }
}

enum PcpResult {
    Got(&'static PageDesc),
    /// The PCP was ours but the zone had nothing to refill it with.
    Empty,
    /// Another thread holds this CPU's PCP.
    Busy,
}

impl PageAllocator {
    /// A private page allocator with its own sections (freed on drop).
    pub fn new(config: Config) -> PageAllocator {
        page_allocator_new(config)
    }

    #[inline(always)]
    fn nr_cpus(&self) -> usize {
        match self.nr_cpus.load(Ordering::Relaxed) {
            0 => self.init_nr_cpus(),
            n => n,
        }
    }

    #[cold]
    fn init_nr_cpus(&self) -> usize {
        let n = match self.config.nr_cpus {
            0 => os::possible_cpus(),
            n => n,
        }
        .clamp(1, MAX_CPUS);
        // Racing initialisers compute the same value.
        self.nr_cpus.store(n, Ordering::Relaxed);
        n
    }

    /// This CPU's PCP (`this_cpu_ptr(zone->per_cpu_pageset)`). The thread may
    /// be elsewhere by the time it uses it; the PCP's lock keeps that correct.
    #[inline(always)]
    fn this_pcp(&self) -> &PerCpuPages {
        let cpu = match self.config.cpu {
            Some(f) => f(),
            None => os::current_cpu(),
        };
        let n = self.nr_cpus();
        let cpu = if cpu < n { cpu } else { cpu % n };
        debug_assert!(n <= MAX_CPUS);
        // SAFETY: `cpu < n <= MAX_CPUS`, the array's length.
        unsafe { self.pcp.get_unchecked(cpu) }
    }

    // ---- allocation -------------------------------------------------------

    /// `__alloc_pages`: a block of `2^order` pages of migratetype `mt`.
    #[inline(always)]
    pub(crate) fn alloc_block(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let d = self.alloc_block_keep_flags(gfp, order, mt)?;
        Some(prep_new_page(d, order, gfp))
    }

    /// `__alloc_pages` without `prep_new_page`'s clearing: the block is marked
    /// allocated and its `PG_ZEROED` flag is left for the caller to read (and
    /// clear), so a caller that keeps only part of it clears only that part.
    #[inline(always)]
    pub(crate) fn alloc_block_keep_flags(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        if order > MAX_PAGE_ORDER {
            return None;
        }
        let _t = trace::enter(Fn::AllocPagesInternal, order, mt);
        let d = match self.get_page_from_freelist(order, mt) {
            Some(d) => d,
            None => self.alloc_pages_slowpath(gfp, order, mt)?,
        };
        d.state.set(PageState::Allocated);
        d.order.set(order as u8);
        trace::point(Fn::MmPageAlloc, order, mt, u32::MAX, 0, desc_to_pfn(d));
        Some(d)
    }

    /// `get_page_from_freelist`: the first attempt, without the slow path.
    #[inline(always)]
    fn get_page_from_freelist(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::GetPageFromFreelist, order, mt);
        self.rmqueue(order, mt)
    }

    /// `rmqueue`: the PCP for small orders, the buddy for the rest or when
    /// this CPU's PCP is busy.
    #[inline(always)]
    fn rmqueue(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::Rmqueue, order, mt);
        if order <= PAGE_ALLOC_COSTLY_ORDER {
            match self.rmqueue_pcplist(order, mt) {
                PcpResult::Got(d) => return Some(d),
                PcpResult::Empty => return None,
                PcpResult::Busy => {}
            }
        }
        self.rmqueue_buddy(order, mt)
    }

    /// `rmqueue_pcplist`: try-lock this CPU's PCP and take from its list.
    #[inline(always)]
    fn rmqueue_pcplist(&self, order: u32, mt: MigrateType) -> PcpResult {
        let _t = trace::enter(Fn::RmqueuePcplist, order, mt);
        match self.with_this_pcp(|inner| inner.rmqueue_pcplist(&self.zone, order, mt)) {
            Some(Some(d)) => PcpResult::Got(d),
            Some(None) => PcpResult::Empty,
            None => PcpResult::Busy,
        }
    }

    /// Runs `f` on this CPU's PCP under a try-lock (`None`, counted as a
    /// try-lock failure, if another thread holds it); once the lock is
    /// dropped, does what a trip to the zone inside `f` calls for
    /// (`after_zone_trip`).
    #[inline(always)]
    fn with_this_pcp<R>(&self, f: impl FnOnce(&mut PcpInner) -> R) -> Option<R> {
        let pcp = self.this_pcp();
        if !pcp.lock.try_lock() {
            pcp.trylock_fail.inc_shared();
            return None;
        }
        // SAFETY: we hold the PCP lock until the unlock below, and `inner`
        // is not used after it.
        let inner = unsafe { pcp.locked() };
        let trips = inner.zone_trips;
        let r = f(inner);
        let went_to_zone = inner.zone_trips != trips;
        let resize = core::mem::take(&mut inner.resize_wanted);
        pcp.lock.unlock();
        if went_to_zone {
            self.after_zone_trip(resize);
        }
        Some(r)
    }

    /// `rmqueue_buddy`: one block straight from the zone.
    fn rmqueue_buddy(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::RmqueueBuddy, order, mt);
        let (d, resize) = {
            let mut zone = self.zone.lock();
            let d = zone.rmqueue(order, mt)?;
            zone.ev.pgalloc.add(1 << order);
            d.migratetype.set(mt);
            (d, zone.pcp_resize)
        };
        self.after_zone_trip(resize);
        Some(d)
    }

    /// What a call that went to the zone does once it holds no lock: resize
    /// the PCPs if the zone said (under its lock) that enough deferred
    /// blocks came into service, and run a purge tick if one is due.
    #[inline]
    fn after_zone_trip(&self, resize: bool) {
        if resize {
            self.zone_pcp_update();
        }
        self.maybe_purge();
    }

    /// `__alloc_pages_slowpath`, userspace edition: nothing can be reclaimed
    /// or compacted, so drain every CPU's lists back into the zone (merging
    /// may make the order), then grow the zone by a section, then fail.
    #[cold]
    #[inline(never)]
    fn alloc_pages_slowpath(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let _t = trace::enter(Fn::AllocPagesSlowpath, order, mt);
        self.ev.slowpath.inc_shared();
        self.drain_all_pages();
        if let Some(d) = self.rmqueue_buddy(order, mt) {
            return Some(d);
        }
        if gfp.contains(Gfp::NOWAIT) {
            return None;
        }
        loop {
            self.grow_lock.lock();
            // Another thread may have grown the zone while we waited.
            let got = match self.rmqueue_buddy(order, mt) {
                Some(d) => Some(Some(d)),
                None if self.grow() => None,
                None => Some(None),
            };
            self.grow_lock.unlock();
            if let Some(result) = got {
                return result;
            }
            if let Some(d) = self.rmqueue_buddy(order, mt) {
                return Some(d);
            }
        }
    }

    /// Maps one more section and hands it to the zone; then resizes every
    /// PCP's `batch` and `high` for the bigger zone (`zone_pcp_update`, as
    /// after memory hotplug). Called with `grow_lock` held.
    fn grow(&self) -> bool {
        let index = self.zone.lock().nr_sections;
        if index >= self.config.max_sections.min(MAX_SECTIONS) {
            return false;
        }
        // mmap outside the zone lock: it can take long.
        let Some(sec) = map_section(index, self.config.section_pages) else { return false };
        if let Some(f) = self.config.on_new_section {
            f(sec as *const Section as usize);
        }
        {
            let mut zone = self.zone.lock();
            zone.add_section(sec);
            zone.ev.grow.inc();
        }
        self.zone_pcp_update();
        if index == 0 {
            if let Some(f) = self.config.on_first_grow {
                f();
            }
        }
        true
    }

    /// Sets every PCP's `batch` and `high` from the zone's size.
    ///
    /// The size that counts is the zone's pages *in service*: a section's
    /// deferred blocks are address space until `deferred_grow_zone` hands
    /// them over, and sizing the lists for a whole 1 GiB section let a
    /// program with a few MiB live keep 2.5 MiB per CPU on its lists. As
    /// blocks come into service (each doubling), the PCPs are sized again.
    fn zone_pcp_update(&self) {
        let in_service = {
            let mut zone = self.zone.lock();
            zone.pcp_resize = false;
            zone.pcp_sized_for = zone.in_service();
            zone.pcp_sized_for
        };
        let nr = self.nr_cpus();
        let batch = self.config.batch.unwrap_or_else(|| zone_batchsize(in_service));
        let high = self.config.high.unwrap_or_else(|| zone_highsize(in_service, batch, nr));
        for pcp in &self.pcp[..nr] {
            pcp.lock.lock();
            // SAFETY: we hold the PCP lock.
            let inner = unsafe { pcp.locked() };
            inner.batch = batch;
            inner.high = high;
            pcp.lock.unlock();
        }
    }

    /// `drain_all_pages`: gives every CPU's listed pages back to the zone, a
    /// batch per hold of the zone lock so that other CPUs are not kept out
    /// for long. Called with no PCP lock held.
    pub fn drain_all_pages(&self) {
        let _t = trace::enter(Fn::DrainAllPages, 0, 0);
        self.ev.drain_all.inc_shared();
        for pcp in &self.pcp[..self.nr_cpus()] {
            // Broken on purpose (loom-tests): skips a PCP that looks empty
            // without its lock.
            #[cfg(loom_broken = "drain_all_racy_count")]
            // SAFETY: a racy read of a plain integer (the bug to catch).
            if crate::sync::broken("drain_all_racy_count") && unsafe { pcp.inner_unlocked() }.count == 0 {
                continue;
            }
            pcp.lock.lock();
            // SAFETY: we hold the PCP lock.
            let inner = unsafe { pcp.locked() };
            // Read `count` under the lock: a racy emptiness check would miss
            // a concurrent free (the kernel's 2024 fix).
            while inner.count > 0 {
                let n = inner.batch.max(1);
                inner.free_pcppages_bulk(&mut self.zone.lock(), n);
            }
            pcp.lock.unlock();
        }
    }

    /// Up to `want` blocks of `order` (at most `PAGE_ALLOC_COSTLY_ORDER`)
    /// for a thread's page cache, taken under one try-lock of this CPU's
    /// PCP and handed to `f` still marked free; a refill of the list on the
    /// way is one `rmqueue_bulk`. 0 when the PCP is busy or the zone is dry:
    /// the caller then takes one block the ordinary way (`alloc_block`,
    /// slow path included).
    pub(crate) fn pcp_take_many(
        &self,
        order: u32,
        mt: MigrateType,
        want: usize,
        mut f: impl FnMut(&'static PageDesc),
    ) -> usize {
        debug_assert!(order <= PAGE_ALLOC_COSTLY_ORDER);
        let _t = trace::enter(Fn::RmqueuePcplist, order, mt);
        self.with_this_pcp(|inner| {
            inner.rmqueue_pcplist_many(&self.zone, order, mt, want, |d| {
                trace::point(Fn::MmPageAlloc, order, mt, u32::MAX, 0, desc_to_pfn(d));
                f(d)
            })
        })
        .unwrap_or(0)
    }

    /// Gives blocks of `order` from a thread's page cache back: see
    /// `free_blocks`.
    pub(crate) fn pcp_give_many(&self, order: u32, blocks: impl Iterator<Item = &'static PageDesc>) {
        self.free_blocks(order, MIGRATE_MOVABLE, blocks)
    }

    // ---- free ---------------------------------------------------------------

    /// `free_unref_page`: back onto this CPU's list, or straight to the zone
    /// for costly orders or when this CPU's PCP is busy.
    #[inline(always)]
    pub(crate) fn free_block(&self, d: &'static PageDesc, order: u32) {
        free_pages_prepare(d, order);
        self.free_block_prepared(d, order)
    }

    /// `free_block` of a block `free_pages_prepare` has checked.
    #[inline(always)]
    pub(crate) fn free_block_prepared(&self, d: &'static PageDesc, order: u32) {
        #[cfg(loom_broken = "free_skips_trylock")]
        if order <= PAGE_ALLOC_COSTLY_ORDER && crate::sync::broken("free_skips_trylock") {
            // Broken on purpose (loom-tests): commits to this CPU's list
            // without taking the PCP lock.
            // SAFETY: none: this is the bug the loom model must catch.
            unsafe { self.this_pcp().locked() }.free_unref_page_commit(&self.zone, d, order);
            return;
        }
        self.free_blocks(order, d.migratetype.get(), core::iter::once(d))
    }

    /// `free_unref_page` for allocated blocks of `order` (one, or a page
    /// cache's flush): onto this CPU's list under one try-lock, each as
    /// `free_unref_page_commit` (a drain when `count` reaches `high`), or,
    /// for costly orders or when this CPU's PCP is busy, to the zone under
    /// one hold of its lock.
    #[inline(always)]
    fn free_blocks(&self, order: u32, mt: MigrateType, mut blocks: impl Iterator<Item = &'static PageDesc>) {
        let _t = trace::enter(Fn::FreeUnrefPage, order, mt);
        if order <= PAGE_ALLOC_COSTLY_ORDER {
            let listed = self.with_this_pcp(|inner| {
                for d in blocks.by_ref() {
                    trace::point(Fn::MmPageFree, order, d.migratetype.get(), u32::MAX, 0, desc_to_pfn(d));
                    inner.free_unref_page_commit(&self.zone, d, order);
                }
            });
            if listed.is_some() {
                return;
            }
        }
        {
            let mut zone = self.zone.lock();
            for d in blocks {
                trace::point(Fn::MmPageFree, order, d.migratetype.get(), u32::MAX, 0, desc_to_pfn(d));
                zone.ev.pgfree.add(1 << order);
                zone.free_one_page(d, order);
            }
        }
        self.maybe_purge();
    }

    // ---- giving memory back -------------------------------------------------

    /// The time in ms, from the configured clock.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        match self.config.clock {
            Some(f) => f(),
            None => os::coarse_ms(),
        }
    }

    /// How long a free block stays resident before it is purged (ms).
    pub fn decay_ms(&self) -> u64 {
        self.purge.decay_ms.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the purge delay (`u64::MAX`: never purge on the way).
    pub fn set_decay_ms(&self, ms: u64) {
        self.purge.decay_ms.store(ms, core::sync::atomic::Ordering::Relaxed);
        self.purge.next_ms.store(0, core::sync::atomic::Ordering::Relaxed);
    }

    /// How purged memory is given back.
    pub fn purge_mode(&self) -> PurgeMode {
        match self.purge.mode.load(core::sync::atomic::Ordering::Relaxed) {
            0 => PurgeMode::DontNeed,
            _ => PurgeMode::Free,
        }
    }

    /// Sets how purged memory is given back.
    pub fn set_purge_mode(&self, mode: PurgeMode) {
        let v = match mode {
            PurgeMode::DontNeed => 0,
            PurgeMode::Free => 1,
        };
        self.purge.mode.store(v, core::sync::atomic::Ordering::Relaxed);
    }

    /// Runs a purge tick if one is due. Called on paths that are already
    /// slow (a PCP refill or drain, the zone path, the slab layer's refills
    /// and flushes), never on a fast path: reading the coarse clock is the
    /// whole cost when no tick is due.
    #[inline]
    pub(crate) fn maybe_purge(&self) {
        self.maybe_purge_at(self.now_ms())
    }

    /// `maybe_purge` for a caller that has just read the clock (`now_ms`).
    ///
    /// The zone's copy of the clock is written only when the time has
    /// moved (once a tick, every few ms): every thread's slow paths come
    /// here, and a store on each of them kept the line, which the zone
    /// lock's counter shares, moving between CPUs.
    #[inline]
    pub(crate) fn maybe_purge_at(&self, now: u64) {
        use core::sync::atomic::Ordering::Relaxed;
        if self.zone.clock_ms.load(Relaxed) != now {
            self.zone.clock_ms.store(now, Relaxed);
        }
        if now >= self.purge.next_ms.load(Relaxed) {
            self.purge_tick(now);
        }
    }

    /// One bounded step of purging, at most every quarter of the decay time
    /// (one thread wins the tick): drain PCPs idle for a whole decay time,
    /// let the layer above decay its caches, and purge the dirty blocks free
    /// for longer than the decay time, largest and oldest first.
    #[cold]
    #[inline(never)]
    pub(crate) fn purge_tick(&self, now: u64) {
        use core::sync::atomic::Ordering::Relaxed;
        let next = self.purge.next_ms.load(Relaxed);
        let decay = self.decay_ms();
        if now < next || decay == u64::MAX {
            return;
        }
        let interval = (decay / 4).max(1);
        if self.purge.next_ms.compare_exchange(next, now.saturating_add(interval), Relaxed, Relaxed).is_err() {
            return;
        }
        self.ev.purge_ticks.inc_shared();
        self.decay_pcps();
        if let Some(f) = self.config.on_purge_tick {
            f();
        }
        // A big backlog (a burst just freed) drains in at most four steps;
        // a small one in steps of `PURGE_STEP_PAGES`.
        let dirty = {
            let zone = self.zone.lock();
            zone.free_pages - zone.purged_pages
        };
        let budget = PURGE_STEP_PAGES.max(dirty / 4);
        if self.purge_older_than(now, decay, budget) >= budget {
            // More is waiting: let the next slow-path call go on.
            self.purge.next_ms.store(now, Relaxed);
        }
    }

    /// The end of a phase: the last thread but one has just exited (see
    /// `global::ExitFlush`). When the zone's dirty free memory is at least
    /// half of what is still in use and at least `EXIT_PURGE_MIN_PAGES`,
    /// `EXIT_PURGE_PAGES` of it, largest blocks first, go back to the OS now
    /// rather than after the decay time. A program made of rounds of threads
    /// otherwise keeps the union of every round's pages resident (mstress:
    /// 8.6 MiB against jemalloc's 7.9; jemalloc purges all of an arena its
    /// last thread leaves). Purging all of it here gave 8.05 MiB at 1.7
    /// times the run time, since the next round faults most of it back in;
    /// the largest free blocks are the ones the next round is least likely
    /// to need whole, and purging only them gave 8.1 MiB at 1.17 times. "In use" counts the slab pages that hold cached free objects
    /// too, which is why half: at mstress's round ends the two are about
    /// equal. A process still holding far more than it just freed (a server
    /// whose main thread keeps its data) purges nothing here: the next
    /// worker would only fault the pages back in. Returns the pages purged.
    pub(crate) fn purge_after_exit(&self) -> usize {
        if self.decay_ms() == u64::MAX {
            return 0;
        }
        let (dirty, in_use) = {
            let zone = self.zone.lock();
            (zone.free_pages - zone.purged_pages, zone.managed_pages - zone.free_pages)
        };
        if dirty < EXIT_PURGE_MIN_PAGES || dirty < in_use / 2 {
            return 0;
        }
        self.ev.exit_purges.inc_shared();
        self.purge_older_than(self.now_ms(), 0, EXIT_PURGE_PAGES)
    }

    /// Drains the PCPs that nobody used for a whole decay time (four ticks).
    fn decay_pcps(&self) {
        for pcp in &self.pcp[..self.nr_cpus()] {
            if !pcp.lock.try_lock() {
                continue;
            }
            // SAFETY: we hold the PCP lock until the unlock below.
            let inner = unsafe { pcp.locked() };
            if inner.used {
                inner.used = false;
                inner.idle_ticks = 0;
            } else if inner.count > 0 {
                inner.idle_ticks = inner.idle_ticks.saturating_add(1);
                if inner.idle_ticks >= 4 {
                    self.ev.pcp_decay_drains.inc_shared();
                    while inner.count > 0 {
                        let n = inner.batch.max(1);
                        inner.free_pcppages_bulk(&mut self.zone.lock(), n);
                    }
                }
            }
            pcp.lock.unlock();
        }
    }

    /// Gives back the memory of dirty free blocks that have been free for at
    /// least `decay_ms`, up to `max_pages`, a few blocks per zone-lock hold
    /// and never `madvise` under the lock. Returns the pages purged.
    pub fn purge_older_than(&self, now: u64, decay_ms: u64, max_pages: usize) -> usize {
        let mode = self.purge_mode();
        let mut total = 0;
        while total < max_pages {
            let mut blocks: [Option<(&'static PageDesc, u32)>; PURGE_BATCH] = [None; PURGE_BATCH];
            let n = self.zone.lock().isolate_for_purge(now, decay_ms, max_pages - total, &mut blocks);
            if n == 0 {
                break;
            }
            let mut ok = [false; PURGE_BATCH];
            for (i, &(d, order)) in blocks[..n].iter().flatten().enumerate() {
                // SAFETY: the block is isolated: free, on no list, and nobody
                // may hand it out or merge it until we put it back.
                ok[i] = unsafe { os::purge(desc_ptr(d).as_ptr(), os::PAGE_SIZE << order, mode) };
                self.ev.purge_calls.inc_shared();
                total += ((1 << order) - d.purged_pages(order)).max(1);
            }
            let mut zone = self.zone.lock();
            for (i, &(d, order)) in blocks[..n].iter().flatten().enumerate() {
                if ok[i] {
                    self.ev.purged_pages.add_shared(1 << order);
                }
                zone.putback_purged(d, order, ok[i], ok[i] && mode == PurgeMode::DontNeed);
            }
        }
        total
    }

    /// Page-level byte counts for `stats()`; takes the zone lock and each
    /// PCP's lock in turn, allocates nothing.
    pub(crate) fn page_counts(&self) -> PageCounts {
        let mut c = PageCounts::default();
        {
            let zone = self.zone.lock();
            c.managed = zone.managed_pages;
            c.free = zone.free_pages;
            c.purged = zone.purged_pages;
            c.isolated = zone.isolated_pages;
            c.nr_sections = zone.nr_sections;
            c.mapped_pages = zone.sections().map(|s| s.nr_pages).sum();
            for sec in zone.sections() {
                let meta = sec.first_pfn_offset.min(sec.nr_pages);
                // SAFETY: a section's metadata pages are mapped for its life.
                c.meta_resident += unsafe { os::resident_pages((sec as *const Section).cast(), meta) }.unwrap_or(meta);
            }
        }
        for pcp in &self.pcp[..self.nr_cpus()] {
            pcp.lock.lock();
            // SAFETY: we hold the PCP lock.
            c.pcp += unsafe { pcp.locked() }.count;
            pcp.lock.unlock();
        }
        c
    }

    /// Drains every PCP and purges every dirty free block now (`trim`).
    pub fn trim(&self) {
        self.drain_all_pages();
        let now = self.now_ms();
        self.purge_older_than(now, 0, usize::MAX);
    }

    // ---- the kernel's page API ----------------------------------------------

    /// `alloc_pages`: a block of `2^order` pages aligned to its size, or
    /// `None` if `order > MAX_PAGE_ORDER` or memory cannot be had.
    #[inline]
    pub fn alloc_pages(&self, gfp: Gfp, order: u32) -> Option<Page> {
        let _t = trace::enter(Fn::AllocPages, order, gfp.migratetype());
        let d = self.alloc_block(gfp, order, gfp.migratetype())?;
        Some(Page { ptr: desc_ptr(d) })
    }

    /// `free_pages`: frees a block allocated with the same `order`. A page
    /// that is not an allocated block of that order (a double free, a wrong
    /// order) aborts the process with a message naming it (`bad_page`).
    #[inline]
    pub fn free_pages(&self, page: Page, order: u32) {
        let d = page_desc(&page);
        let _t = trace::enter(Fn::FreePages, order, d.migratetype.get());
        self.free_block(d, order);
    }

    /// `alloc_pages_bulk_array`: fills the `None` slots of `pages` with
    /// single pages, skipping populated ones, and returns how many leading
    /// slots are populated afterwards. It takes this CPU's PCP once for the
    /// whole batch; it looks at most [`MAX_BULK`] slots from the first empty
    /// one, so a caller that loops until the array is full gets through an
    /// array of any length.
    pub fn alloc_pages_bulk_array(&self, gfp: Gfp, pages: &mut [Option<Page>]) -> usize {
        let prefix = |pages: &[Option<Page>]| pages.iter().take_while(|p| p.is_some()).count();
        let first_empty = prefix(pages);
        // The window starts at the first hole: one fixed at the array's start
        // would stay full once filled and a caller's loop would never end.
        let window = first_empty..pages.len().min(first_empty + MAX_BULK);
        let to_fill = pages[window.clone()].iter().filter(|p| p.is_none()).count();
        if to_fill == 0 {
            return pages.len();
        }
        let mt = gfp.migratetype();
        let t = trace::enter(Fn::AllocPagesBulk, 0, mt);
        t.set_count(to_fill);
        let mut got = 0;
        // Slots (from the window's start) whose page is zero but not
        // resident: `prep_new_page` would prefault each with its own
        // `madvise`, under the PCP lock. They are prefaulted after the
        // unlock instead, one call per run of adjacent pages.
        let mut prefault = [0u64; MAX_BULK / 64];
        if to_fill > 1 {
            let pcp = self.this_pcp();
            let locked = pcp.lock.try_lock();
            // Broken on purpose (loom-tests): goes on as if the try-lock had
            // succeeded when another thread holds this CPU's PCP.
            #[cfg(loom_broken = "bulk_ignores_trylock")]
            let locked = locked || crate::sync::broken("bulk_ignores_trylock");
            if locked {
                // SAFETY: we hold the PCP lock until the unlock below.
                let inner = unsafe { pcp.locked() };
                let trips = inner.zone_trips;
                let mut slots = pages[window.clone()].iter_mut().enumerate().filter(|(_, p)| p.is_none());
                let zero = gfp.contains(Gfp::ZERO);
                got = inner.rmqueue_pcplist_many(&self.zone, 0, mt, to_fill, |d| {
                    d.migratetype.set(mt);
                    trace::point(Fn::MmPageAlloc, 0, mt, u32::MAX, 0, desc_to_pfn(d));
                    if let Some((i, slot)) = slots.next() {
                        let mut g = gfp;
                        if zero && d.flags.get() & PG_ZEROED != 0 {
                            prefault[i / 64] |= 1 << (i % 64);
                            g = Gfp(gfp.0 & !Gfp::ZERO.0);
                        }
                        *slot = Some(Page { ptr: desc_ptr(prep_new_page(d, 0, g)) });
                    }
                });
                inner.ev.bulk.inc();
                let went_to_zone = inner.zone_trips != trips;
                let resize = core::mem::take(&mut inner.resize_wanted);
                pcp.lock.unlock();
                if went_to_zone {
                    self.after_zone_trip(resize);
                }
            } else {
                pcp.trylock_fail.inc_shared();
            }
        }
        prefault_runs(&pages[window], &prefault);
        if got == 0 {
            // One page the ordinary way, slow path included, so the caller
            // makes progress whenever memory exists.
            if let Some(p) = self.alloc_pages(gfp, 0) {
                pages[first_empty] = Some(p);
            }
        }
        prefix(pages)
    }

    // ---- seeing inside -------------------------------------------------------

    /// Verifies the zone's invariants (see `ZoneInner`) and every PCP's.
    pub fn check(&self) -> Result<(), CheckError> {
        for pcp in &self.pcp[..self.nr_cpus()] {
            pcp.lock.lock();
            // SAFETY: we hold the PCP lock.
            let inner = unsafe { pcp.locked() };
            let mut pages = 0;
            let mut bad = None;
            for (pindex, list) in inner.lists.iter().enumerate() {
                for d in list.iter() {
                    let (order, mt) = ((pindex / MIGRATE_PCPTYPES) as u8, (pindex % MIGRATE_PCPTYPES) as u8);
                    if d.state.get() != PageState::Pcp || d.order.get() != order || d.migratetype.get() != mt {
                        bad = Some(CheckError { what: "block on a PCP list in the wrong state", pfn: desc_to_pfn(d) });
                    }
                    pages += 1 << order;
                }
            }
            if bad.is_none() && pages != inner.count {
                bad = Some(CheckError { what: "PCP count does not match its lists", pfn: pages });
            }
            pcp.lock.unlock();
            if let Some(e) = bad {
                return Err(e);
            }
        }
        self.zone.lock().check()
    }

    /// The event counters, summed over CPUs (`/proc/vmstat`).
    pub fn vmstat(&self) -> VmStat {
        let mut v = VmStat::default();
        for pcp in &self.pcp[..self.nr_cpus()] {
            // SAFETY: the events are counters, readable without the lock.
            let inner = unsafe { pcp.inner_unlocked() };
            inner.ev.add_to(&mut v);
            v.pcp_trylock_fail += pcp.trylock_fail.get();
        }
        // SAFETY: as above.
        unsafe { self.zone.inner_unlocked() }.ev.add_to(&mut v);
        v.zone_lock = self.zone.lock_count.get();
        v.slowpath = self.ev.slowpath.get();
        v.drain_all = self.ev.drain_all.get();
        v.purge_ticks = self.ev.purge_ticks.get();
        v.exit_purges = self.ev.exit_purges.get();
        v.purge_calls = self.ev.purge_calls.get();
        v.purged_pages = self.ev.purged_pages.get();
        v.pcp_decay_drains = self.ev.pcp_decay_drains.get();
        v
    }

    /// Free blocks per order (`/proc/buddyinfo`); print it with `{}`.
    pub fn buddyinfo(&self) -> BuddyInfo {
        let zone = self.zone.lock();
        let mut info = BuddyInfo::default();
        for (o, area) in zone.free_area.iter().enumerate() {
            info.nr_free[o] = area.nr_free;
            // Purged blocks are free blocks too: count both lists.
            for mt in 0..MIGRATE_TYPES {
                info.per_type[mt][o] = area.free_list[mt].iter().count() + area.purged_list[mt].iter().count();
            }
            if o == MAX_PAGE_ORDER as usize {
                // Deferred blocks sit in pageblocks still marked Movable.
                info.per_type[MIGRATE_MOVABLE as usize][o] += zone.deferred_pages >> MAX_PAGE_ORDER;
            }
        }
        info
    }

    /// The zone's size and every CPU's `count`, `high` and `batch`
    /// (`/proc/zoneinfo`'s pagesets); print it with `{}`.
    pub fn zoneinfo(&self) -> ZoneInfo {
        let mut info = ZoneInfo::default();
        {
            let zone = self.zone.lock();
            info.free_pages = zone.free_pages;
            info.managed_pages = zone.managed_pages;
            info.nr_sections = zone.nr_sections;
        }
        info.nr_cpus = self.nr_cpus();
        for (cpu, pcp) in self.pcp[..info.nr_cpus].iter().enumerate() {
            pcp.lock.lock();
            // SAFETY: we hold the PCP lock.
            let inner = unsafe { pcp.locked() };
            if cpu < info.pcp.len() {
                info.pcp[cpu] = (inner.count, inner.high, inner.batch);
            }
            info.pcp_pages += inner.count;
            pcp.lock.unlock();
        }
        info
    }

    /// Takes every lock in the documented order (for `fork`).
    pub(crate) fn lock_all(&self) {
        self.grow_lock.lock();
        for pcp in &self.pcp[..self.nr_cpus()] {
            pcp.lock.lock();
        }
        self.zone.lock.lock();
    }

    /// Releases what `lock_all` took.
    pub(crate) fn unlock_all(&self) {
        self.zone.lock.unlock();
        for pcp in &self.pcp[..self.nr_cpus()] {
            pcp.lock.unlock();
        }
        self.grow_lock.unlock();
    }
}

impl Drop for PageAllocator {
    fn drop(&mut self) {
        let zone = self.zone.lock();
        for sec in zone.sections() {
            // SAFETY: the allocator is being dropped, so nothing allocated from
            // it may be used any more (private instances document this).
            unsafe { os::unmap(NonNull::from(sec).cast(), sec.nr_pages * os::PAGE_SIZE) };
        }
    }
}

/// A block's address, from its head descriptor.
#[inline(always)]
pub(crate) fn desc_ptr(d: &PageDesc) -> NonNull<u8> {
    // SAFETY: page frame numbers of live descriptors are never zero.
    unsafe { NonNull::new_unchecked(pfn_to_addr(desc_to_pfn(d))) }
}

/// The handle of the block `d` heads.
#[inline(always)]
pub(crate) fn page_of(d: &'static PageDesc) -> Page {
    Page { ptr: desc_ptr(d) }
}

/// The head descriptor of a page handle's block.
#[inline(always)]
pub(crate) fn page_desc(page: &Page) -> &'static PageDesc {
    // SAFETY: a `Page` is only made by this module, for a block in a section.
    unsafe { pfn_to_desc(page.pfn()) }
}

/// `post_alloc_hook` / `prep_new_page`: mark the block handed out and clear
/// it if asked to and not known to be zero already.
#[inline(always)]
pub(crate) fn prep_new_page(d: &'static PageDesc, order: u32, gfp: Gfp) -> &'static PageDesc {
    d.state.set(PageState::Allocated);
    d.order.set(order as u8);
    if gfp.contains(Gfp::ZERO) {
        if d.flags.get() & PG_ZEROED == 0 {
            // SAFETY: the block is ours now and spans 2^order pages.
            unsafe { core::ptr::write_bytes(desc_ptr(d).as_ptr(), 0, os::PAGE_SIZE << order) };
        } else {
            // Zero already, but not resident: as the kernel's zeroed pages
            // are, so that reading it first does not cost two faults each.
            // SAFETY: the block is ours now, mapped read-write, 2^order pages.
            unsafe { os::prefault_write(desc_ptr(d).as_ptr(), os::PAGE_SIZE << order) };
        }
    }
    // From now on its owner may write to it.
    d.flags.set(0);
    d
}

/// Prefaults the pages of `slots` whose bit is set in `marked` (zero but
/// not resident, see `prep_new_page`), one `madvise` per run of pages
/// adjacent in memory, in either direction (a PCP list hands out a split
/// block's pages in one order or the other).
fn prefault_runs(slots: &[Option<Page>], marked: &[u64; MAX_BULK / 64]) {
    let flush = |run: Option<(usize, usize)>| {
        if let Some((start, pages)) = run {
            // SAFETY: the run's pages were handed out by this call, are
            // mapped read-write and page-aligned, and nobody has seen them
            // yet.
            unsafe { os::prefault_write(start as *mut u8, pages * os::PAGE_SIZE) };
        }
    };
    let mut run: Option<(usize, usize)> = None;
    for (i, slot) in slots.iter().enumerate().take(MAX_BULK) {
        if marked[i / 64] >> (i % 64) & 1 == 0 {
            continue;
        }
        let Some(page) = slot else { continue };
        let addr = page.as_ptr() as usize;
        run = match run {
            Some((start, n)) if addr == start + n * os::PAGE_SIZE => Some((start, n + 1)),
            Some((start, n)) if addr + os::PAGE_SIZE == start => Some((addr, n + 1)),
            other => {
                flush(other);
                Some((addr, 1))
            }
        };
    }
    flush(run);
}

/// `free_pages_prepare`: a block being freed must be an allocated block of
/// exactly this order; anything else is a double free or a bad pointer.
#[inline(always)]
pub(crate) fn free_pages_prepare(d: &PageDesc, order: u32) {
    if d.state.get() != PageState::Allocated || d.order.get() as u32 != order {
        let addr = pfn_to_addr(desc_to_pfn(d)) as usize;
        crate::page::bad_page("free_pages", addr, d.state.get(), d.order.get(), "an allocated block of that order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    static CLOCK: AtomicU64 = AtomicU64::new(1_000_000);
    fn clock() -> u64 {
        CLOCK.load(Relaxed)
    }

    fn resident(p: *mut u8, len: usize) -> usize {
        let mut vec = [0u8; 64];
        let pages = len / os::PAGE_SIZE;
        assert!(pages <= vec.len());
        // SAFETY: `p..p+len` is a page-aligned range of ours; `vec` has room.
        assert_eq!(unsafe { libc::mincore(p.cast(), len, vec.as_mut_ptr()) }, 0);
        vec[..pages].iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn a_zeroed_bulk_is_zero_and_its_untouched_pages_are_prefaulted() {
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(4096, 1) });
        // Some pages written and freed (dirty: cleared by hand), the rest
        // never touched (zero already: prefaulted in runs after the unlock).
        let dirty: Vec<Page> = (0..8).map(|_| pages.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
        for p in &dirty {
            // SAFETY: a page of ours.
            unsafe { p.as_ptr().write_bytes(0xCD, os::PAGE_SIZE) };
        }
        for p in dirty {
            pages.free_pages(p, 0);
        }
        let mut arr: Vec<Option<Page>> = (0..200).map(|_| None).collect();
        let mut filled = 0;
        while filled < arr.len() {
            filled = pages.alloc_pages_bulk_array(Gfp::ZERO, &mut arr);
        }
        // Residency first: reading an untouched page would map it.
        let resident_pages = arr.iter().flatten().filter(|p| resident(p.as_ptr(), os::PAGE_SIZE) == 1).count();
        assert_eq!(resident_pages, arr.len(), "every page of a zeroed bulk is resident when handed out");
        for p in arr.iter().flatten() {
            // SAFETY: a page of ours, handed out zeroed.
            let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), os::PAGE_SIZE) };
            assert!(bytes.iter().all(|&b| b == 0), "page {:p} not zero", p.as_ptr());
        }
        for p in arr.into_iter().flatten() {
            pages.free_pages(p, 0);
        }
        pages.check().unwrap();
    }

    #[test]
    fn blocks_free_longer_than_the_decay_time_go_back_to_the_os() {
        let pages =
            PageAllocator::new(Config { nr_cpus: 1, clock: Some(clock), decay_ms: 1000, ..Config::small(4096, 1) });
        // Touch 64 pages in blocks of 4, free them, drain to the zone.
        let blocks: Vec<Page> = (0..16).map(|_| pages.alloc_pages(Gfp::DEFAULT, 2).unwrap()).collect();
        for b in &blocks {
            // SAFETY: 16 KiB are ours.
            unsafe { b.as_ptr().write_bytes(0xAB, 4 * os::PAGE_SIZE) };
        }
        let ptrs: Vec<*mut u8> = blocks.iter().map(|b| b.as_ptr()).collect();
        for b in blocks {
            pages.free_pages(b, 2);
        }
        pages.drain_all_pages();
        assert!(ptrs.iter().all(|&p| resident(p, 4 * os::PAGE_SIZE) == 4));
        let retained_before = pages.page_counts().purged;

        // Not yet old enough: a tick purges nothing.
        CLOCK.fetch_add(500, Relaxed);
        pages.maybe_purge();
        assert_eq!(pages.vmstat().purged_pages, 0);
        assert!(ptrs.iter().all(|&p| resident(p, 4 * os::PAGE_SIZE) == 4));

        // Past the decay time: the next tick gives them back.
        CLOCK.fetch_add(600, Relaxed);
        pages.maybe_purge();
        let v = pages.vmstat();
        assert!(v.purged_pages >= 64, "{v:?}");
        assert!(v.purge_calls >= 1 && v.purge_calls <= 16);
        assert!(ptrs.iter().all(|&p| resident(p, 4 * os::PAGE_SIZE) == 0));
        assert!(pages.page_counts().purged >= retained_before + 64);
        pages.check().unwrap();

        // Purged memory reads as zero, so Gfp::ZERO need not clear it, and
        // handing it out makes it count as resident again.
        let again: Vec<Page> = (0..16).map(|_| pages.alloc_pages(Gfp::ZERO, 2).unwrap()).collect();
        for b in &again {
            // SAFETY: 16 KiB are ours.
            let s = unsafe { core::slice::from_raw_parts(b.as_ptr(), 4 * os::PAGE_SIZE) };
            assert!(s.iter().all(|&x| x == 0));
        }
        for b in again {
            pages.free_pages(b, 2);
        }
        pages.trim();
        pages.check().unwrap();
        let c = pages.page_counts();
        assert_eq!(c.purged, c.free, "trim purges every free page");
        assert_eq!(c.pcp, 0);
    }

    #[test]
    fn an_idle_pcp_drains_after_a_decay_time_and_a_busy_one_does_not() {
        static T: AtomicU64 = AtomicU64::new(5_000_000);
        fn t() -> u64 {
            T.load(Relaxed)
        }
        let pages = PageAllocator::new(Config { nr_cpus: 1, clock: Some(t), decay_ms: 400, ..Config::small(4096, 1) });
        let p = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
        pages.free_pages(p, 0);
        assert!(pages.zoneinfo().pcp_pages > 0);
        // Busy: each tick finds it used.
        for _ in 0..6 {
            T.fetch_add(100, Relaxed);
            let p = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
            pages.free_pages(p, 0);
            pages.maybe_purge();
        }
        assert!(pages.zoneinfo().pcp_pages > 0);
        // Idle for four ticks: drained.
        for _ in 0..5 {
            T.fetch_add(100, Relaxed);
            pages.maybe_purge();
        }
        assert_eq!(pages.zoneinfo().pcp_pages, 0);
        assert_eq!(pages.vmstat().pcp_decay_drains, 1);
        pages.check().unwrap();
    }

    #[test]
    fn a_section_defers_its_max_order_blocks_until_the_lists_run_dry() {
        // 64 max-order blocks after the unaligned head of the section.
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(1023 + 64 * 1024, 1) });
        let p = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
        let (head_pages, deferred) = {
            let zone = pages.zone.lock();
            let sec = zone.sections().next().unwrap();
            let head = sec.deferred_pfn.get() - (sec.base_pfn() + sec.first_pfn_offset);
            (head, zone.deferred_pages)
        };
        assert_eq!(head_pages, 1023, "the pages before the first 4 MiB boundary go on the lists at once");
        assert_eq!(deferred, 64 << MAX_PAGE_ORDER, "the max-order blocks wait");
        pages.check().unwrap();
        // Deferred blocks count as free, purged, max-order blocks.
        let b = pages.buddyinfo();
        assert_eq!(b.nr_free[MAX_PAGE_ORDER as usize], 64);
        let z = pages.zoneinfo();
        assert_eq!(z.free_pages + 1, z.managed_pages);
        // Their descriptors are untouched: the descriptor array past the head's
        // few pages is not resident.
        {
            let zone = pages.zone.lock();
            let sec = zone.sections().next().unwrap();
            let first_deferred = sec.desc_at(sec.deferred_pfn.get() - sec.base_pfn()) as *const PageDesc as usize;
            let page = (first_deferred & !(os::PAGE_SIZE - 1)) + os::PAGE_SIZE;
            assert_eq!(resident(page as *mut u8, 64 * os::PAGE_SIZE), 0);
        }
        // A max-order allocation takes one deferred block (the lists hold
        // nothing that big), and only then.
        pages.free_pages(p, 0);
        let big = pages.alloc_pages(Gfp::DEFAULT, MAX_PAGE_ORDER).unwrap();
        assert_eq!(pages.zone.lock().deferred_pages, 63 << MAX_PAGE_ORDER);
        assert_eq!(big.pfn() % (1 << MAX_PAGE_ORDER), 0);
        pages.check().unwrap();
        // Taking every page initialises every block; freeing them all merges
        // them back to max-order blocks on the lists.
        let mut held = vec![big];
        while let Some(q) = pages.alloc_pages(Gfp::NOWAIT, MAX_PAGE_ORDER) {
            held.push(q);
        }
        assert_eq!(held.len(), 64);
        assert_eq!(pages.zone.lock().deferred_pages, 0);
        pages.check().unwrap();
        for q in held {
            pages.free_pages(q, MAX_PAGE_ORDER);
        }
        pages.drain_all_pages();
        pages.check().unwrap();
        assert_eq!(pages.buddyinfo().nr_free[MAX_PAGE_ORDER as usize], 64);
        let z = pages.zoneinfo();
        assert_eq!(z.free_pages, z.managed_pages);
    }

    #[test]
    fn resident_memory_is_reused_before_untouched_memory_of_any_order() {
        let pages = PageAllocator::new(Config { nr_cpus: 1, ..Config::small(1023 + 1024, 1) });
        // The section's head is on the lists as untouched blocks of orders
        // 0..=9; take the order-9 one, write it, and free it: a dirty block.
        let big = pages.alloc_pages(Gfp::DEFAULT, 9).unwrap();
        // SAFETY: 2 MiB are ours.
        unsafe { big.as_ptr().write_bytes(0x11, os::PAGE_SIZE << 9) };
        let dirty = big.pfn()..big.pfn() + (1 << 9);
        pages.free_pages(big, 9);
        pages.check().unwrap();
        // An order-0 page could come from an untouched exact fit; it comes
        // from the dirty block instead, which costs no new RSS.
        let p = pages.alloc_pages(Gfp::NOWAIT, 0).unwrap();
        assert!(dirty.contains(&p.pfn()), "page {:#x} is not from the dirty block {dirty:#x?}", p.pfn());
        pages.free_pages(p, 0);
        pages.drain_all_pages();
        pages.check().unwrap();
    }

    #[test]
    fn pcp_lists_are_sized_for_the_pages_in_service_and_grow_with_them() {
        use crate::pcp::{zone_batchsize, zone_highsize};
        let pages = PageAllocator::new(Config { nr_cpus: 2, ..Config::small(1023 + 64 * 1024, 1) });
        let p = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
        // Only the section's 1023-page head is in service: the kernel's
        // formulas for a 4 MiB zone, not for the 260 MiB section.
        let (_, high, batch) = pages.zoneinfo().pcp[0];
        assert_eq!((batch, high), (zone_batchsize(1023), zone_highsize(1023, zone_batchsize(1023), 2)));
        assert!(high < zone_highsize(1023 + 64 * 1024, zone_batchsize(1023 + 64 * 1024), 2));
        // Bring 31 max-order blocks into service (32 MiB): sized again.
        let held: Vec<Page> = (0..31).map(|_| pages.alloc_pages(Gfp::NOWAIT, MAX_PAGE_ORDER).unwrap()).collect();
        let in_service = 1023 + 31 * 1024;
        // One more zone trip (a PCP refill) applies it.
        let q: Vec<Page> = (0..200).map(|_| pages.alloc_pages(Gfp::DEFAULT, 0).unwrap()).collect();
        let (_, high2, batch2) = pages.zoneinfo().pcp[0];
        assert_eq!(batch2, zone_batchsize(in_service));
        assert_eq!(high2, zone_highsize(in_service, batch2, 2));
        assert!(high2 > high);
        for b in held {
            pages.free_pages(b, MAX_PAGE_ORDER);
        }
        for b in q {
            pages.free_pages(b, 0);
        }
        pages.free_pages(p, 0);
        pages.drain_all_pages();
        pages.check().unwrap();
    }
}
