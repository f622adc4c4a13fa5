//! Counters and state in the kernel's shapes: `/proc/vmstat`,
//! `/proc/buddyinfo`, `/proc/zoneinfo`, `/proc/pagetypeinfo`.
//!
//! Counters live where the event happens and are written under the lock
//! that is already held there (the PCP's, the zone's), so the fast path
//! touches no shared cache line; reading sums them, like the kernel's
//! `vm_event_states`.

use core::fmt;

use crate::page::{MIGRATETYPE_NAMES, MIGRATE_TYPES, NR_PAGE_ORDERS};
pub(crate) use crate::sync::Counter;

/// Events counted under a PCP lock.
pub(crate) struct PcpEvents {
    pub(crate) pgalloc: Counter,
    pub(crate) pgfree: Counter,
    pub(crate) pcp_alloc: Counter,
    pub(crate) pcp_free: Counter,
    pub(crate) pcp_drain: Counter,
    pub(crate) bulk: Counter,
}

impl PcpEvents {
    pub(crate) const fn new() -> Self {
        Self {
            pgalloc: Counter::new(),
            pgfree: Counter::new(),
            pcp_alloc: Counter::new(),
            pcp_free: Counter::new(),
            pcp_drain: Counter::new(),
            bulk: Counter::new(),
        }
    }

    pub(crate) fn add_to(&self, v: &mut VmStat) {
        v.pgalloc += self.pgalloc.get();
        v.pgfree += self.pgfree.get();
        v.pcp_alloc += self.pcp_alloc.get();
        v.pcp_free += self.pcp_free.get();
        v.pcp_drain += self.pcp_drain.get();
        v.bulk_alloc += self.bulk.get();
    }
}

/// Events counted under the zone lock.
pub(crate) struct ZoneEvents {
    pub(crate) pgalloc: Counter,
    pub(crate) pgfree: Counter,
    pub(crate) pcp_refill: Counter,
    pub(crate) fallback: Counter,
    pub(crate) grow: Counter,
}

impl ZoneEvents {
    pub(crate) const fn new() -> Self {
        Self {
            pgalloc: Counter::new(),
            pgfree: Counter::new(),
            pcp_refill: Counter::new(),
            fallback: Counter::new(),
            grow: Counter::new(),
        }
    }

    pub(crate) fn add_to(&self, v: &mut VmStat) {
        v.pgalloc += self.pgalloc.get();
        v.pgfree += self.pgfree.get();
        v.pcp_refill += self.pcp_refill.get();
        v.fallback += self.fallback.get();
        v.slowpath_grow += self.grow.get();
    }
}

/// The page allocator's event counters, summed over CPUs (`/proc/vmstat`).
/// Page counts are in pages (an order-2 block counts 4), event counts in
/// events.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStat {
    /// Pages allocated, through a PCP or straight from the zone (`pgalloc`).
    pub pgalloc: u64,
    /// Pages freed (`pgfree`).
    pub pgfree: u64,
    /// Allocations served from a PCP list.
    pub pcp_alloc: u64,
    /// Frees that went onto a PCP list.
    pub pcp_free: u64,
    /// PCP refills: `rmqueue_bulk` calls.
    pub pcp_refill: u64,
    /// PCP drains: `free_pcppages_bulk` calls.
    pub pcp_drain: u64,
    /// `alloc_pages_bulk_array` calls that took a PCP.
    pub bulk_alloc: u64,
    /// Zone-lock acquisitions.
    pub zone_lock: u64,
    /// PCP try-lock failures that fell back to the zone.
    pub pcp_trylock_fail: u64,
    /// Allocations that stole from another migratetype (`mm_page_alloc_extfrag`).
    pub fallback: u64,
    /// Entries into the slow path.
    pub slowpath: u64,
    /// `drain_all_pages` calls.
    pub drain_all: u64,
    /// Sections mapped by the slow path's growth step.
    pub slowpath_grow: u64,
    /// Purge ticks run (at most one per quarter of the decay time).
    pub purge_ticks: u64,
    /// Purges run when a thread's exit left at most one thread with a cache
    /// and more memory free than in use.
    pub exit_purges: u64,
    /// `madvise` calls made to give memory back.
    pub purge_calls: u64,
    /// Pages given back to the OS.
    pub purged_pages: u64,
    /// PCPs drained because nobody used them for a whole decay time.
    pub pcp_decay_drains: u64,
}

impl fmt::Display for VmStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("pgalloc", self.pgalloc),
            ("pgfree", self.pgfree),
            ("pcp_alloc", self.pcp_alloc),
            ("pcp_free", self.pcp_free),
            ("pcp_refill", self.pcp_refill),
            ("pcp_drain", self.pcp_drain),
            ("bulk_alloc", self.bulk_alloc),
            ("zone_lock", self.zone_lock),
            ("pcp_trylock_fail", self.pcp_trylock_fail),
            ("fallback", self.fallback),
            ("slowpath", self.slowpath),
            ("drain_all", self.drain_all),
            ("slowpath_grow", self.slowpath_grow),
            ("purge_ticks", self.purge_ticks),
            ("exit_purges", self.exit_purges),
            ("purge_calls", self.purge_calls),
            ("purged_pages", self.purged_pages),
            ("pcp_decay_drains", self.pcp_decay_drains),
        ];
        for (name, value) in rows {
            writeln!(f, "{name} {value}")?;
        }
        Ok(())
    }
}

/// Free blocks per order, and per migratetype (`/proc/buddyinfo`, with
/// `/proc/pagetypeinfo`'s breakdown). `Display` prints the buddyinfo line.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BuddyInfo {
    /// Free blocks of each order, all migratetypes.
    pub nr_free: [usize; NR_PAGE_ORDERS],
    /// Free blocks of each order for each migratetype.
    pub per_type: [[usize; NR_PAGE_ORDERS]; MIGRATE_TYPES],
}

impl BuddyInfo {
    /// Free pages in all blocks.
    pub fn free_pages(&self) -> usize {
        self.nr_free.iter().enumerate().map(|(o, n)| n << o).sum()
    }

    /// The `/proc/pagetypeinfo` table: free blocks per order per migratetype.
    pub fn pagetypeinfo(&self) -> PageTypeInfo {
        PageTypeInfo(*self)
    }
}

impl fmt::Display for BuddyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node 0, zone   Normal")?;
        for n in self.nr_free {
            write!(f, " {n:6}")?;
        }
        writeln!(f)
    }
}

/// `/proc/pagetypeinfo`'s free-block table: free blocks per order for each
/// migratetype. Print it with `{}`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageTypeInfo(pub BuddyInfo);

impl fmt::Display for PageTypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Free pages count per migrate type at order      ")?;
        for o in 0..NR_PAGE_ORDERS {
            write!(f, " {o:6}")?;
        }
        writeln!(f)?;
        for (mt, row) in self.0.per_type.iter().enumerate() {
            write!(f, "Node    0, zone   Normal, type {:>12}", MIGRATETYPE_NAMES[mt])?;
            for n in row {
                write!(f, " {n:6}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// How many CPUs [`ZoneInfo`] reports one by one.
pub const ZONEINFO_CPUS: usize = 64;

/// The zone's size and its per-CPU pagesets (`/proc/zoneinfo`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ZoneInfo {
    /// Free pages in the buddy free lists (PCP pages not included, as in the kernel).
    pub free_pages: usize,
    /// Pages of all sections handed to the zone.
    pub managed_pages: usize,
    /// Sections mapped.
    pub nr_sections: usize,
    /// CPUs with a PCP.
    pub nr_cpus: usize,
    /// Pages on all PCP lists.
    pub pcp_pages: usize,
    /// `(count, high, batch)` of the first [`ZONEINFO_CPUS`] CPUs.
    pub pcp: [(usize, usize, usize); ZONEINFO_CPUS],
}

impl Default for ZoneInfo {
    fn default() -> Self {
        Self {
            free_pages: 0,
            managed_pages: 0,
            nr_sections: 0,
            nr_cpus: 0,
            pcp_pages: 0,
            pcp: [(0, 0, 0); ZONEINFO_CPUS],
        }
    }
}

impl fmt::Display for ZoneInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Node 0, zone   Normal")?;
        writeln!(f, "  pages free     {}", self.free_pages)?;
        writeln!(f, "        managed  {}", self.managed_pages)?;
        writeln!(f, "        sections {}", self.nr_sections)?;
        writeln!(f, "        pcp      {}", self.pcp_pages)?;
        writeln!(f, "  pagesets")?;
        for (cpu, (count, high, batch)) in self.pcp.iter().take(self.nr_cpus).enumerate() {
            writeln!(f, "    cpu: {cpu}")?;
            writeln!(f, "              count: {count}")?;
            writeln!(f, "              high:  {high}")?;
            writeln!(f, "              batch: {batch}")?;
        }
        Ok(())
    }
}

/// Every size class's line of `/proc/slabinfo`; print it with `{}`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlabInfo {
    /// One entry per size class, smallest first.
    pub classes: [crate::slab::SlabClassInfo; crate::slab::NR_CLASSES],
}

impl SlabInfo {
    /// Reads every class of a slab layer (takes each class lock in turn).
    pub fn read(slabs: &crate::slab::SlabAllocator<'_>) -> SlabInfo {
        let mut classes = [crate::slab::SlabClassInfo::default(); crate::slab::NR_CLASSES];
        for (c, info) in classes.iter_mut().enumerate() {
            *info = slabs.class_info(c);
        }
        SlabInfo { classes }
    }
}

impl fmt::Display for SlabInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# name        <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : slabdata <num_slabs> : batches <refills> <flushes> <transfer_hits>"
        )?;
        for c in self.classes.iter().filter(|c| c.num_slabs > 0 || c.refills > 0) {
            writeln!(
                f,
                "kmalloc-{:<6} {:>10} {:>10} {:>9} {:>12} {:>14} : slabdata {:>6} : batches {:>8} {:>8} {:>8}",
                c.objsize,
                c.active_objs,
                c.num_objs,
                c.objsize,
                c.objperslab,
                c.pagesperslab,
                c.num_slabs,
                c.refills,
                c.flushes,
                c.transfer_hits
            )?;
        }
        Ok(())
    }
}

/// Where the allocator's memory is, in bytes. Reading it allocates nothing.
///
/// `resident ≈ active + cached + metadata` (the slab layer's free objects are
/// inside `active`, so they are counted once, in `cached`, only when they sit
/// in thread caches, transfer batches or empty slabs), and
/// `mapped = resident + retained` up to untouched metadata and huge-block
/// pages the program never touched.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in live objects and live page blocks: small objects in their
    /// size class's size, large and huge blocks as requested, page-API
    /// blocks in whole pages.
    pub allocated: usize,
    /// Bytes in pages that hold live data: slabs, large blocks, page-API
    /// blocks, huge mappings.
    pub active: usize,
    /// Bytes the allocator holds that are backed by physical memory: its
    /// share of the process's RSS. An upper bound, as jemalloc's
    /// `stats.resident` is: pages handed out and never written (a slab's
    /// unused tail, a reserved `Vec`'s far end) and free blocks cut from
    /// them count as resident, though the OS has not backed them yet.
    pub resident: usize,
    /// Bytes resident but free: PCP lists, thread caches, transfer batches,
    /// empty slabs, and free blocks not purged yet.
    pub cached: usize,
    /// Bytes of free page blocks (orders 0..=7) in threads' page caches, in
    /// front of the PCP lists and the zone; part of `cached`.
    pub page_cache: usize,
    /// Bytes mapped but given back to the OS (purged, or never touched).
    pub retained: usize,
    /// Bytes of address space mapped: sections (metadata included) and huge blocks.
    pub mapped: usize,
    /// Bytes of resident section headers and page descriptors (asked of
    /// the OS with `mincore`), the allocator's static tables, and the slab
    /// layer's arrays: each size class's transfer block and each thread
    /// cache's slot block (counted whole, though a thread writes, and so
    /// makes resident, only the pages of the classes it uses).
    pub metadata: usize,
    /// `madvise` calls made to give memory back.
    pub purge_calls: u64,
    /// Bytes given back to the OS by purging so far.
    pub purged_bytes: u64,
    /// Purge ticks run.
    pub purge_ticks: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("allocated", self.allocated as u64),
            ("active", self.active as u64),
            ("resident", self.resident as u64),
            ("cached", self.cached as u64),
            ("page_cache", self.page_cache as u64),
            ("retained", self.retained as u64),
            ("mapped", self.mapped as u64),
            ("metadata", self.metadata as u64),
            ("purge_calls", self.purge_calls),
            ("purged_bytes", self.purged_bytes),
            ("purge_ticks", self.purge_ticks),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<13} {value}")?;
        }
        Ok(())
    }
}
