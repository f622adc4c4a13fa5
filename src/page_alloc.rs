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

use crate::os;
use crate::page::*;
use crate::pcp::{pcp_new, zone_batchsize, zone_highsize, PerCpuPages};
use crate::stats::{BuddyInfo, VmStat, ZoneInfo};
use crate::sync::{AtomicUsize, Counter, Ordering, RawLock};
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
}

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
            ev: NodeEvents { slowpath: Counter::new(), drain_all: Counter::new() },
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

    #[inline]
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
    #[inline]
    fn this_pcp(&self) -> &PerCpuPages {
        let cpu = match self.config.cpu {
            Some(f) => f(),
            None => os::current_cpu(),
        };
        let n = self.nr_cpus();
        let cpu = if cpu < n { cpu } else { cpu % n };
        &self.pcp[cpu]
    }

    // ---- allocation -------------------------------------------------------

    /// `__alloc_pages`: a block of `2^order` pages of migratetype `mt`.
    #[inline]
    pub(crate) fn alloc_block(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let d = self.alloc_block_keep_flags(gfp, order, mt)?;
        Some(prep_new_page(d, order, gfp))
    }

    /// `__alloc_pages` without `prep_new_page`'s clearing: the block is marked
    /// allocated and its `PG_ZEROED` flag is left for the caller to read (and
    /// clear), so a caller that keeps only part of it clears only that part.
    #[inline]
    pub(crate) fn alloc_block_keep_flags(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        if order > MAX_PAGE_ORDER {
            return None;
        }
        let d = match self.get_page_from_freelist(order, mt) {
            Some(d) => d,
            None => self.alloc_pages_slowpath(gfp, order, mt)?,
        };
        d.state.set(PageState::Allocated);
        d.order.set(order as u8);
        Some(d)
    }

    /// `get_page_from_freelist`: the first attempt, without the slow path.
    #[inline]
    fn get_page_from_freelist(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        self.rmqueue(order, mt)
    }

    /// `rmqueue`: the PCP for small orders, the buddy for the rest or when
    /// this CPU's PCP is busy.
    #[inline]
    fn rmqueue(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
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
    #[inline]
    fn rmqueue_pcplist(&self, order: u32, mt: MigrateType) -> PcpResult {
        let pcp = self.this_pcp();
        if !pcp.lock.try_lock() {
            pcp.trylock_fail.inc_shared();
            return PcpResult::Busy;
        }
        // SAFETY: we hold the PCP lock until the unlock below.
        let got = unsafe { pcp.locked() }.rmqueue_pcplist(&self.zone, order, mt);
        pcp.lock.unlock();
        match got {
            Some(d) => PcpResult::Got(d),
            None => PcpResult::Empty,
        }
    }

    /// `rmqueue_buddy`: one block straight from the zone.
    fn rmqueue_buddy(&self, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
        let mut zone = self.zone.lock();
        let d = zone.rmqueue(order, mt)?;
        zone.ev.pgalloc.add(1 << order);
        d.migratetype.set(mt);
        Some(d)
    }

    /// `__alloc_pages_slowpath`, userspace edition: nothing can be reclaimed
    /// or compacted, so drain every CPU's lists back into the zone (merging
    /// may make the order), then grow the zone by a section, then fail.
    #[cold]
    #[inline(never)]
    fn alloc_pages_slowpath(&self, gfp: Gfp, order: u32, mt: MigrateType) -> Option<&'static PageDesc> {
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
        let managed = {
            let mut zone = self.zone.lock();
            zone.add_section(sec);
            zone.ev.grow.inc();
            zone.managed_pages
        };
        self.zone_pcp_update(managed);
        if index == 0 {
            if let Some(f) = self.config.on_first_grow {
                f();
            }
        }
        true
    }

    /// Sets every PCP's `batch` and `high` from the zone's size.
    fn zone_pcp_update(&self, managed: usize) {
        let nr = self.nr_cpus();
        let batch = self.config.batch.unwrap_or_else(|| zone_batchsize(managed));
        let high = self.config.high.unwrap_or_else(|| zone_highsize(managed, batch, nr));
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
        self.ev.drain_all.inc_shared();
        for pcp in &self.pcp[..self.nr_cpus()] {
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

    // ---- free ---------------------------------------------------------------

    /// `free_unref_page`: back onto this CPU's list, or straight to the zone
    /// for costly orders or when this CPU's PCP is busy.
    #[inline]
    pub(crate) fn free_block(&self, d: &'static PageDesc, order: u32) {
        free_pages_prepare(d, order);
        if order <= PAGE_ALLOC_COSTLY_ORDER {
            let pcp = self.this_pcp();
            if pcp.lock.try_lock() {
                // SAFETY: we hold the PCP lock until the unlock below.
                unsafe { pcp.locked() }.free_unref_page_commit(&self.zone, d, order);
                pcp.lock.unlock();
                return;
            }
            pcp.trylock_fail.inc_shared();
        }
        let mut zone = self.zone.lock();
        zone.ev.pgfree.add(1 << order);
        zone.free_one_page(d, order);
    }

    // ---- the kernel's page API ----------------------------------------------

    /// `alloc_pages`: a block of `2^order` pages aligned to its size, or
    /// `None` if `order > MAX_PAGE_ORDER` or memory cannot be had.
    pub fn alloc_pages(&self, gfp: Gfp, order: u32) -> Option<Page> {
        let d = self.alloc_block(gfp, order, gfp.migratetype())?;
        Some(Page { ptr: desc_ptr(d) })
    }

    /// `free_pages`: frees a block allocated with the same `order`. A page
    /// that is not an allocated block of that order (a double free, a wrong
    /// order) aborts the process with a message naming it (`bad_page`).
    pub fn free_pages(&self, page: Page, order: u32) {
        let d = page_desc(&page);
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
        let mut got = 0;
        if to_fill > 1 {
            let pcp = self.this_pcp();
            if pcp.lock.try_lock() {
                // SAFETY: we hold the PCP lock until the unlock below.
                let inner = unsafe { pcp.locked() };
                for slot in pages[window].iter_mut().filter(|p| p.is_none()) {
                    let Some(d) = inner.rmqueue_pcplist(&self.zone, 0, mt) else { break };
                    d.migratetype.set(mt);
                    *slot = Some(Page { ptr: desc_ptr(prep_new_page(d, 0, gfp)) });
                    got += 1;
                }
                inner.ev.bulk.inc();
                pcp.lock.unlock();
            } else {
                pcp.trylock_fail.inc_shared();
            }
        }
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
        v
    }

    /// Free blocks per order (`/proc/buddyinfo`); print it with `{}`.
    pub fn buddyinfo(&self) -> BuddyInfo {
        let zone = self.zone.lock();
        let mut info = BuddyInfo::default();
        for (o, area) in zone.free_area.iter().enumerate() {
            info.nr_free[o] = area.nr_free;
            for (mt, list) in area.free_list.iter().enumerate() {
                info.per_type[mt][o] = list.iter().count();
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

#[inline]
fn desc_ptr(d: &PageDesc) -> NonNull<u8> {
    // SAFETY: page frame numbers of live descriptors are never zero.
    unsafe { NonNull::new_unchecked(pfn_to_addr(desc_to_pfn(d))) }
}

/// The head descriptor of a page handle's block.
#[inline]
pub(crate) fn page_desc(page: &Page) -> &'static PageDesc {
    // SAFETY: a `Page` is only made by this module, for a block in a section.
    unsafe { pfn_to_desc(page.pfn()) }
}

/// `post_alloc_hook` / `prep_new_page`: mark the block handed out and clear
/// it if asked to and not known to be zero already.
#[inline]
fn prep_new_page(d: &'static PageDesc, order: u32, gfp: Gfp) -> &'static PageDesc {
    d.state.set(PageState::Allocated);
    d.order.set(order as u8);
    if gfp.contains(Gfp::ZERO) && d.flags.get() & PG_ZEROED == 0 {
        // SAFETY: the block is ours now and spans 2^order pages.
        unsafe { core::ptr::write_bytes(desc_ptr(d).as_ptr(), 0, os::PAGE_SIZE << order) };
    }
    // From now on its owner may write to it.
    d.flags.set(0);
    d
}

/// `free_pages_prepare`: a block being freed must be an allocated block of
/// exactly this order; anything else is a double free or a bad pointer.
#[inline]
fn free_pages_prepare(d: &PageDesc, order: u32) {
    if d.state.get() != PageState::Allocated || d.order.get() as u32 != order {
        let addr = pfn_to_addr(desc_to_pfn(d)) as usize;
        crate::page::bad_page("free_pages", addr, d.state.get(), d.order.get(), "an allocated block of that order");
    }
}
