//! pcpalloc: a Rust global allocator built like the Linux kernel's page
//! allocator: per-CPU page lists (PCP) in front of a locked buddy zone,
//! refilled and drained in batches, with a small-object layer on top.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();
//! ```
//!
//! Layers, bottom up (one module each): [`os`](crate) talks to the kernel;
//! `page` holds sections and page descriptors; `zone` is the buddy
//! allocator; `pcp` the per-CPU page lists; `page_alloc` the page allocator
//! and the kernel's page API; `stats` the `/proc`-shaped views.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// Under loom only the model checks use the crate, not the global allocator.
#![cfg_attr(loom, allow(dead_code, missing_docs))]
#![cfg_attr(feature = "nightly", feature(allocator_api))]

mod fmt;
#[cfg(not(loom))]
mod global;
#[cfg(not(loom))]
mod huge;
mod large;
mod os;
mod page;
mod page_alloc;
mod page_cache;
mod pcp;
mod slab;
mod stats;
mod sync;
pub mod trace;
mod zone;

#[cfg(not(loom))]
pub use global::{
    flush_thread_cache, set_decay_ms, set_purge_mode, slabinfo, spawn_purge_thread, stats, trim, PcpAlloc, PurgeThread,
};
pub use os::{set_thp_mode, thp_mode, PurgeMode, ThpMode};
pub use page::{
    MigrateType, MAX_PAGE_ORDER, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_TYPES, MIGRATE_UNMOVABLE,
    NR_PAGE_ORDERS, PAGEBLOCK_ORDER, PAGE_ALLOC_COSTLY_ORDER,
};
pub use page_alloc::{
    Config, Gfp, Page, PageAllocator, DEFAULT_DECAY_MS, EXIT_PURGE_MIN_PAGES, EXIT_PURGE_PAGES, MAX_BULK, MAX_CPUS,
    PURGE_STEP_PAGES,
};
pub use slab::{
    class_for, class_size, size_to_class, SizeClass, SlabAllocator, SlabClassInfo, ThreadCache, CLASSES, MAX_SMALL,
    NR_CLASSES, SLOT_BLOCK_PAGES,
};
pub use stats::{BuddyInfo, PageTypeInfo, VmStat, ZoneInfo, ZONEINFO_CPUS};
pub use stats::{SlabInfo, Stats};
pub use zone::CheckError;

/// Selects a deliberately broken variant for the loom models (loom-tests only).
#[cfg(loom)]
#[doc(hidden)]
pub use sync::set_loom_broken;

/// The page size: 4 KiB.
pub const PAGE_SIZE: usize = os::PAGE_SIZE;

/// The process-wide page allocator, shared by the page API and `PcpAlloc`.
#[cfg(not(loom))]
pub(crate) static PAGES: PageAllocator = page_alloc::page_allocator_new(Config {
    on_first_grow: Some(global::on_first_grow),
    on_purge_tick: Some(global::on_purge_tick),
    on_new_section: Some(global::on_new_section),
    ..Config::DEFAULT
});

/// `alloc_page`: one page from the process-wide page allocator.
///
/// Orders 0..=7 of the default migratetype are served first from the
/// calling thread's page cache, a few blocks it freed, kept in front of
/// this CPU's PCP lists and refilled from them in batches (see
/// `ARCHITECTURE.md`); everything else goes to the PCP or the zone.
#[cfg(not(loom))]
#[inline]
pub fn alloc_page(gfp: Gfp) -> Option<Page> {
    alloc_pages(gfp, 0)
}

/// `alloc_pages`: a block of `2^order` pages, aligned to its size.
#[cfg(not(loom))]
#[inline]
pub fn alloc_pages(gfp: Gfp, order: u32) -> Option<Page> {
    if (order as usize) < page_cache::NR_PAGE_BINS && gfp.migratetype() == MIGRATE_MOVABLE {
        let _t = trace::enter(trace::Fn::AllocPages, order, MIGRATE_MOVABLE);
        return global::cached_alloc_block(order, gfp).map(page_alloc::page_of);
    }
    PAGES.alloc_pages(gfp, order)
}

/// `alloc_pages_bulk_array`: fills the `None` slots with single pages and
/// returns how many leading slots are populated.
#[cfg(not(loom))]
#[inline]
pub fn alloc_pages_bulk_array(gfp: Gfp, pages: &mut [Option<Page>]) -> usize {
    PAGES.alloc_pages_bulk_array(gfp, pages)
}

/// `free_page`: frees a single page.
#[cfg(not(loom))]
#[inline]
pub fn free_page(page: Page) {
    free_pages(page, 0)
}

/// `free_pages`: frees a block allocated with the same order.
#[cfg(not(loom))]
#[inline]
pub fn free_pages(page: Page, order: u32) {
    if (order as usize) < page_cache::NR_PAGE_BINS {
        let _t = trace::enter(trace::Fn::FreePages, order, MIGRATE_MOVABLE);
        return global::cached_free_block(page_alloc::page_desc(&page), order);
    }
    PAGES.free_pages(page, order)
}

/// `drain_all_pages`: gives the calling thread's page cache and every CPU's
/// PCP lists back to the zone. (Other threads' page caches, at most 1088 KiB
/// each, only their threads can empty: they do on their slow paths once
/// per decay time, and at exit.)
#[cfg(not(loom))]
pub fn drain_all_pages() {
    global::flush_page_cache();
    PAGES.drain_all_pages()
}

/// `/proc/buddyinfo` of the process-wide zone.
#[cfg(not(loom))]
pub fn buddyinfo() -> BuddyInfo {
    PAGES.buddyinfo()
}

/// `/proc/pagetypeinfo` of the process-wide zone: free blocks per order for
/// each migratetype.
#[cfg(not(loom))]
pub fn pagetypeinfo() -> PageTypeInfo {
    PAGES.buddyinfo().pagetypeinfo()
}

/// `/proc/zoneinfo` of the process-wide zone.
#[cfg(not(loom))]
pub fn zoneinfo() -> ZoneInfo {
    PAGES.zoneinfo()
}

/// `/proc/vmstat` of the process-wide page allocator.
#[cfg(not(loom))]
pub fn vmstat() -> VmStat {
    PAGES.vmstat()
}
