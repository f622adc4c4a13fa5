//! Sections and page descriptors: the `struct page` / SPARSEMEM analogue.
//!
//! Address space comes from the OS in sections of [`SECTION_SIZE`] bytes,
//! each aligned to its size. A section starts with its header and its array
//! of page descriptors (the section's `mem_map`), so the descriptor of any
//! address inside a section is found by masking the address down to the
//! section and indexing by page number: O(1), no search, no table.
//!
//! Free lists link through the descriptors, never through the free pages'
//! own memory, so free memory is never touched by the allocator and can be
//! given back to the OS (or never faulted in at all).

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicU8;

use crate::os::PAGE_SIZE;

pub(crate) const PAGE_SHIFT: usize = 12;

/// Largest buddy order: blocks of 2^10 pages = 4 MiB, as the kernel's
/// `MAX_PAGE_ORDER` on x86-64.
pub const MAX_PAGE_ORDER: u32 = 10;
/// Number of orders, the size of `free_area[]`.
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER as usize + 1;
/// Orders above this are "costly" and have no PCP list.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// The unit whose migratetype is recorded: 2^9 pages = 2 MiB, an x86
/// transparent huge page.
pub const PAGEBLOCK_ORDER: u32 = 9;

/// log2 of the section size: 1 GiB of address space per section.
pub(crate) const SECTION_SHIFT: usize = 30;
pub(crate) const SECTION_SIZE: usize = 1 << SECTION_SHIFT;
pub(crate) const SECTION_PAGES: usize = SECTION_SIZE / PAGE_SIZE;
const PAGEBLOCKS_PER_SECTION: usize = SECTION_PAGES >> PAGEBLOCK_ORDER;

/// Migratetypes, with their userspace meaning.
///
/// The kernel groups pages by how they can be reclaimed so that one
/// unmovable page does not pin a whole 2 MiB pageblock that could otherwise
/// be compacted. Userspace cannot move live memory at all, so the grouping is
/// by *how a block is pinned*:
///
/// * `UNMOVABLE`: slab pages of the small-object layer. One live object of
///   any thread pins the whole slab; these are the blocks that fragment.
/// * `MOVABLE`: whole blocks handed out as such (large allocations, the page
///   API). They come back whole, as one unit, when their owner frees them.
/// * `RECLAIMABLE`: page-API blocks the program marks with
///   [`Gfp::RECLAIMABLE`](crate::Gfp::RECLAIMABLE): buffers and caches it
///   expects to drop soon.
///
/// Keeping slabs in their own pageblocks keeps the other pageblocks whole
/// once their blocks are freed, so they merge up to 4 MiB and can be returned
/// to the OS.
pub type MigrateType = u8;
/// Slab pages: pinned by any one live object.
pub const MIGRATE_UNMOVABLE: MigrateType = 0;
/// Whole blocks handed out as a unit (large allocations, the page API).
pub const MIGRATE_MOVABLE: MigrateType = 1;
/// Page-API blocks marked `Gfp::RECLAIMABLE`: buffers dropped soon.
pub const MIGRATE_RECLAIMABLE: MigrateType = 2;
/// Migratetypes that have PCP lists (all of ours).
pub const MIGRATE_PCPTYPES: usize = 3;
/// Number of migratetypes.
pub const MIGRATE_TYPES: usize = 3;

pub(crate) const MIGRATETYPE_NAMES: [&str; MIGRATE_TYPES] = ["Unmovable", "Movable", "Reclaimable"];

/// What a page descriptor says about its page.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum PageState {
    /// Not the head of a block: a tail page, or a page no block covers yet.
    /// Zero, so that the never-touched descriptors of a fresh section read
    /// as this without being written.
    Tail = 0,
    /// Head of a free block on `free_area[order].free_list[mt]` (`PageBuddy`).
    Buddy = 1,
    /// Head of a free block on a per-CPU list.
    Pcp = 2,
    /// Head of a block handed out by the page allocator.
    Allocated = 3,
    /// Head of a free block taken off the free lists while it is being
    /// purged outside the zone lock (the kernel's page reporting isolates
    /// blocks the same way); nothing merges with it meanwhile.
    Isolated = 5,
    /// Section header and descriptor array; never allocatable.
    Reserved = 4,
    /// Head of a free block held in a thread's page cache (`page_cache`);
    /// to the zone it is in use, to a second free it is free.
    Cached = 6,
}

/// Flag: the block's memory is known to be zero (fresh from `mmap`, or purged
/// with `MADV_DONTNEED`) so `Gfp::ZERO` need not clear it.
pub(crate) const PG_ZEROED: u8 = 1;
/// Flag: the block's memory is not resident: never touched since `mmap`, or
/// given back to the OS with `madvise` (purged). A free block without it is
/// *dirty*: free but still backed by physical memory.
pub(crate) const PG_PURGED: u8 = 2;

/// The descriptor of one 4 KiB page (`struct page`). 32 bytes.
///
/// Invariants:
/// * Only the head page of a block has a state other than `Tail`; its
///   `order` is the block's order.
/// * `next`/`prev` are meaningful only while the block is on a list (a zone
///   free list, a PCP list, or a slab layer list); the list's owner lock
///   guards them, and the block's state says which kind of list it is on.
/// * `migratetype` of a `Buddy` or `Pcp` head names the list it is on.
/// * The `slab_*` fields belong to the slab layer while the block is a slab
///   (state `Allocated`, `migratetype` `UNMOVABLE`), guarded by that size
///   class's lock; `private` is then the slab's free-object list.
/// * For a dirty `Buddy` head, `private` is the time (coarse monotonic
///   milliseconds) the block became free, which purging ages from, and
///   `slab_inuse` counts its pages that are not resident (see `purged_pages`).
///
/// `Cell` fields: a descriptor is shared memory reached through raw
/// pointers; every access happens under the lock that owns the block (or by
/// the single owner of an allocated block), which is what makes the
/// unsynchronised `Cell` accesses sound.
#[repr(C)]
pub(crate) struct PageDesc {
    pub(crate) next: Cell<*mut PageDesc>,
    pub(crate) prev: Cell<*mut PageDesc>,
    pub(crate) state: Cell<PageState>,
    pub(crate) order: Cell<u8>,
    pub(crate) migratetype: Cell<MigrateType>,
    pub(crate) flags: Cell<u8>,
    pub(crate) slab_class: Cell<u8>,
    /// On every page of a slab: the tag of the thread cache that took the
    /// slab's first object, when it was new or empty (`SlabAllocator::gather`). A free compares it
    /// with its own cache's tag to tell its own objects from other threads'
    /// (SLUB's `slab == c->slab` test); read and written without a common
    /// lock, so atomic, and only a hint: a stale value sends an object down
    /// the other of two correct paths.
    pub(crate) slab_owner: AtomicU8,
    pub(crate) slab_inuse: Cell<u16>,
    /// The kernel's `page->private`: the slab's free list, or a free block's
    /// free-since time.
    pub(crate) private: Cell<usize>,
}

const _: () = assert!(core::mem::size_of::<PageDesc>() == 32);

impl PageDesc {
    /// The entry before this one on its list (towards the head).
    #[inline]
    pub(crate) fn prev_entry(&self) -> Option<&'static PageDesc> {
        // SAFETY: list neighbours are live descriptors.
        unsafe { self.prev.get().as_ref() }
    }

    /// For the head of a free block, how many of its pages are not resident:
    /// all of them if it is `PG_PURGED`; for a dirty block, the pages it
    /// merged from purged buddies (kept in `slab_inuse`, unused while the
    /// block is free). Statistics only: a dirty block is purged whole.
    #[inline]
    pub(crate) fn purged_pages(&self, order: u32) -> usize {
        if self.flags.get() & PG_PURGED != 0 {
            1 << order
        } else {
            self.slab_inuse.get() as usize
        }
    }

    #[inline]
    pub(crate) fn set_purged_within(&self, n: usize) {
        self.slab_inuse.set(n as u16)
    }

    /// A slab's list of free objects.
    #[inline]
    pub(crate) fn slab_free(&self) -> *mut u8 {
        self.private.get() as *mut u8
    }

    #[inline]
    pub(crate) fn set_slab_free(&self, p: *mut u8) {
        self.private.set(p as usize)
    }
}

/// The header at the start of every section.
///
/// Invariants: `magic == SECTION_MAGIC`; pages `[0, first_pfn_offset)` hold
/// this header and the descriptor array and have state `Reserved` (only their
/// first descriptor is written); pages `[first_pfn_offset, nr_pages)` are
/// managed by the zone; pages past `nr_pages` are never used.
#[repr(C)]
pub(crate) struct Section {
    magic: u64,
    /// Index in the zone's section table.
    pub(crate) index: usize,
    /// Pages of this section the zone may use (a short section when the OS
    /// refused a whole one, or a test instance's small arena).
    pub(crate) nr_pages: usize,
    pub(crate) first_pfn_offset: usize,
    /// `[deferred_pfn, deferred_end)`: the max-order blocks not yet handed
    /// to the free lists (deferred struct page initialisation), taken one by
    /// one by `deferred_grow_zone`; guarded by the zone lock. Their
    /// descriptors are never written before then, so a fresh section costs
    /// no resident metadata beyond its header.
    pub(crate) deferred_pfn: Cell<usize>,
    pub(crate) deferred_end: Cell<usize>,
    /// Migratetype owning each pageblock; guarded by the zone lock.
    pub(crate) pageblock_mt: [Cell<MigrateType>; PAGEBLOCKS_PER_SECTION],
}

const SECTION_MAGIC: u64 = 0x7063_7061_6c6c_6f63; // "pcpalloc"
const DESC_OFFSET: usize = (core::mem::size_of::<Section>() + 63) & !63;
/// Pages at the start of each section that hold the header and descriptors.
pub(crate) const SECTION_META_PAGES: usize =
    (DESC_OFFSET + SECTION_PAGES * core::mem::size_of::<PageDesc>()).div_ceil(PAGE_SIZE);

impl Section {
    /// Formats a freshly mapped section.
    ///
    /// # Safety
    /// `base` must be a fresh zero-filled mapping of at least
    /// `max(nr_pages, SECTION_META_PAGES)` pages, aligned to `SECTION_SIZE`,
    /// that nobody else uses.
    pub(crate) unsafe fn init(base: NonNull<u8>, index: usize, nr_pages: usize) -> &'static Section {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(SECTION_SIZE));
        let sec = base.as_ptr().cast::<Section>();
        // SAFETY: the mapping is ours, aligned, large enough and zero-filled
        // (all-zero `Cell<u8>`s are valid, as is `MIGRATE_UNMOVABLE` = 0).
        unsafe {
            ptr::addr_of_mut!((*sec).magic).write(SECTION_MAGIC);
            ptr::addr_of_mut!((*sec).index).write(index);
            ptr::addr_of_mut!((*sec).nr_pages).write(nr_pages);
            ptr::addr_of_mut!((*sec).first_pfn_offset).write(SECTION_META_PAGES);
            let sec = &*sec;
            for pb in sec.pageblock_mt.iter() {
                pb.set(MIGRATE_MOVABLE);
            }
            let meta = sec.desc_at(0);
            meta.state.set(PageState::Reserved);
            meta.order.set(0);
            sec
        }
    }

    #[inline]
    pub(crate) fn base_pfn(&self) -> usize {
        self as *const Section as usize >> PAGE_SHIFT
    }

    /// The descriptor of page `idx` of this section.
    #[inline]
    pub(crate) fn desc_at(&self, idx: usize) -> &PageDesc {
        debug_assert!(idx < SECTION_PAGES);
        // SAFETY: the descriptor array covers all SECTION_PAGES pages and lives
        // in this section's mapping as long as the section does (forever).
        unsafe { &*((self as *const Section as *const u8).add(DESC_OFFSET) as *const PageDesc).add(idx) }
    }

    pub(crate) fn pageblock_migratetype(&self, pfn: usize) -> MigrateType {
        self.pageblock_mt[(pfn - self.base_pfn()) >> PAGEBLOCK_ORDER].get()
    }

    pub(crate) fn set_pageblock_migratetype(&self, pfn: usize, mt: MigrateType) {
        self.pageblock_mt[(pfn - self.base_pfn()) >> PAGEBLOCK_ORDER].set(mt)
    }
}

/// The section that contains `addr`.
///
/// # Safety
/// `addr` must lie inside a section this crate mapped (every section lives
/// until the process ends).
#[inline]
pub(crate) unsafe fn section_of(addr: usize) -> &'static Section {
    let sec = (addr & !(SECTION_SIZE - 1)) as *const Section;
    // SAFETY: the caller guarantees a live section starts at the masked address.
    let sec = unsafe { &*sec };
    debug_assert_eq!(sec.magic, SECTION_MAGIC);
    sec
}

/// The descriptor of the page frame `pfn` (`pfn_to_page`).
///
/// # Safety
/// `pfn` must be a page inside a section this crate mapped.
#[inline]
pub(crate) unsafe fn pfn_to_desc(pfn: usize) -> &'static PageDesc {
    // SAFETY: forwarded from the caller.
    let sec = unsafe { section_of(pfn << PAGE_SHIFT) };
    sec.desc_at(pfn & (SECTION_PAGES - 1))
}

/// The page frame number of a descriptor (`page_to_pfn`).
#[inline]
pub(crate) fn desc_to_pfn(desc: &PageDesc) -> usize {
    let addr = desc as *const PageDesc as usize;
    let sec = addr & !(SECTION_SIZE - 1);
    let idx = (addr - sec - DESC_OFFSET) / core::mem::size_of::<PageDesc>();
    (sec >> PAGE_SHIFT) + idx
}

#[inline]
pub(crate) fn pfn_to_addr(pfn: usize) -> *mut u8 {
    (pfn << PAGE_SHIFT) as *mut u8
}

/// A doubly linked list of blocks threaded through their head descriptors,
/// with the first entry the "hot" end. Used for the zone's free lists, the
/// PCP lists and the slab layer's partial lists.
///
/// Invariant: `head` is null iff `tail` is null iff the list is empty; the
/// entries' `prev`/`next` form a chain from `head` to `tail`. The list's
/// owner lock guards all of it.
pub(crate) struct List {
    head: *mut PageDesc,
    tail: *mut PageDesc,
}

impl List {
    pub(crate) const fn new() -> Self {
        Self { head: ptr::null_mut(), tail: ptr::null_mut() }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    #[inline]
    pub(crate) fn first(&self) -> Option<&'static PageDesc> {
        // SAFETY: list entries are descriptors in live sections.
        unsafe { self.head.as_ref() }
    }

    #[inline]
    pub(crate) fn last(&self) -> Option<&'static PageDesc> {
        // SAFETY: as above.
        unsafe { self.tail.as_ref() }
    }

    #[inline]
    pub(crate) fn push_front(&mut self, d: &PageDesc) {
        let p = d as *const PageDesc as *mut PageDesc;
        d.prev.set(ptr::null_mut());
        d.next.set(self.head);
        // SAFETY: entries are live descriptors.
        match unsafe { self.head.as_ref() } {
            Some(h) => h.prev.set(p),
            None => self.tail = p,
        }
        self.head = p;
    }

    #[inline]
    pub(crate) fn push_back(&mut self, d: &PageDesc) {
        let p = d as *const PageDesc as *mut PageDesc;
        d.next.set(ptr::null_mut());
        d.prev.set(self.tail);
        // SAFETY: entries are live descriptors.
        match unsafe { self.tail.as_ref() } {
            Some(t) => t.next.set(p),
            None => self.head = p,
        }
        self.tail = p;
    }

    /// Unlinks `d`, which must be on this list.
    #[inline]
    pub(crate) fn remove(&mut self, d: &PageDesc) {
        let (prev, next) = (d.prev.get(), d.next.get());
        // SAFETY: neighbours of a list entry are live descriptors.
        unsafe {
            match prev.as_ref() {
                Some(p) => p.next.set(next),
                None => self.head = next,
            }
            match next.as_ref() {
                Some(n) => n.prev.set(prev),
                None => self.tail = prev,
            }
        }
        d.next.set(ptr::null_mut());
        d.prev.set(ptr::null_mut());
    }

    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<&'static PageDesc> {
        let d = self.first()?;
        self.remove(d);
        Some(d)
    }

    #[inline]
    pub(crate) fn pop_back(&mut self) -> Option<&'static PageDesc> {
        let d = self.last()?;
        self.remove(d);
        Some(d)
    }

    /// Unlinks up to `max` entries from the hot end in one splice, calling
    /// `f` on each in order; returns how many. The entries' own links are
    /// left stale: they are on no list afterwards.
    #[inline(always)]
    pub(crate) fn pop_front_run(&mut self, max: usize, mut f: impl FnMut(&'static PageDesc)) -> usize {
        let mut n = 0;
        let mut cur = self.head;
        // SAFETY: list entries are live descriptors.
        while let Some(d) = unsafe { cur.as_ref() } {
            if n == max {
                break;
            }
            cur = d.next.get();
            f(d);
            n += 1;
        }
        self.head = cur;
        // SAFETY: as above.
        match unsafe { cur.as_ref() } {
            Some(c) => c.prev.set(ptr::null_mut()),
            None => self.tail = ptr::null_mut(),
        }
        n
    }

    /// Iterates from the hot end. The list must not change meanwhile.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'static PageDesc> {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            // SAFETY: entries are live descriptors.
            let d = unsafe { cur.as_ref()? };
            cur = d.next.get();
            Some(d)
        })
    }
}

/// Reports a page whose descriptor is not in the state an operation needs,
/// and ends the process rather than corrupt the free lists (the kernel's
/// `bad_page`, which leaks the page; we cannot continue safely in a
/// `dealloc` that must not unwind, so we abort).
#[cold]
#[inline(never)]
pub(crate) fn bad_page(what: &str, addr: usize, found: PageState, found_order: u8, expected: &str) -> ! {
    let mut buf = crate::fmt::StackBuf::<256>::new();
    let _ = core::fmt::write(
        &mut buf,
        format_args!(
            "pcpalloc: Bad page state in {what}: page {addr:#x} is {found:?} (order {found_order}), expected {expected}\n"
        ),
    );
    crate::os::write_stderr(buf.as_bytes());
    crate::os::abort()
}
