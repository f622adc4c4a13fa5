//! The small-object layer: size classes, slabs carved from page blocks, a
//! per-thread cache of free objects per class, and the locked per-class
//! lists the caches refill from and flush to in batches: the PCP pattern,
//! one level up (SLUB's per-cpu slab and partial lists are the kernel's
//! version of it).
//!
//! ```text
//!  ThreadCache (no lock, no atomic)   bins[class]: an array of free objects
//!        | refill: one batch            ^ flush: one batch (the oldest)
//!        v                              |
//!  SlabClass (class lock)   transfer[]: whole batches, arrays copied in
//!                                       and out (tcmalloc's transfer cache)
//!                           partial:    slabs with free objects
//!        | new_slab: alloc_block(order, UNMOVABLE)   ^ empty slab: free_block
//!        v                                           |
//!  PageAllocator (PCP try-lock, zone lock)
//! ```

use core::ptr;

use crossbeam_utils::CachePadded;

use crate::os::PAGE_SIZE;
use crate::page::*;
use crate::page_alloc::{Gfp, PageAllocator};
use crate::page_cache::{PageCache, CACHED_MT, NR_PAGE_BINS};
use crate::sync::{Counter, RawLock, UnsafeCell};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicPtr, AtomicU32};

/// The largest size served by a size class: 16 KiB. Above it a request
/// takes whole pages, where rounding wastes under one page (at most 20% at
/// 16 KiB + 1, falling with size); below it page rounding would waste up to
/// half. jemalloc's small classes stop at 14 KiB for the same reason.
pub const MAX_SMALL: usize = 16384;

/// 16 classes 8 bytes apart up to 128, then 8 classes per doubling up to
/// 16 KiB: rounding up wastes less than 12.5% of any request above 64
/// bytes (a step is an eighth of the doubling's lower bound), and at most 7
/// bytes below.
pub const NR_CLASSES: usize = 16 + 7 * 8;

/// The size of class `c`.
pub const fn class_size(c: usize) -> usize {
    if c < 16 {
        (c + 1) * 8
    } else {
        let j = c - 16;
        let k = 7 + j / 8;
        (1 << k) + ((j % 8) + 1) * (1 << (k - 3))
    }
}

/// The smallest class whose size is at least `size` (`1..=MAX_SMALL`).
///
/// One load from `CLASS_LOOKUP`, as jemalloc's `sz_size2index_tab` does up
/// to 4 KiB: the arithmetic (`size_to_class_arith`) is a chain of ten
/// dependent instructions (`bsr`, two shifts by a computed count) in front
/// of the bin's load, and cost the 256- and 512-byte pairs about a
/// nanosecond over the 64-byte ones when the size is not a compile-time
/// constant.
#[inline]
pub const fn size_to_class(size: usize) -> usize {
    size_minus_one_to_class(size.saturating_sub(1))
}

/// `size_to_class(s1 + 1)`, for callers that already hold `size - 1`: the
/// allocator's entry points test `size.wrapping_sub(1) < MAX_SMALL`, one
/// comparison that sends both a zero size (which wraps) and a size past
/// `MAX_SMALL` to the cold path, and then need no saturation here, an
/// instruction less on each of `alloc` and `dealloc`.
#[inline]
pub const fn size_minus_one_to_class(s1: usize) -> usize {
    // The mask keeps the index in bounds (no panic branch) for sizes past
    // MAX_SMALL, which have no class; after the entry points' test the
    // compiler drops it.
    CLASS_LOOKUP[(s1 >> 3) & (CLASS_LOOKUP.len() - 1)] as usize
}

/// `CLASS_LOOKUP[(size - 1) >> 3]` is the class of `size` for `1 <= size
/// <= MAX_SMALL`. Every class boundary is a multiple of 8, so the sizes
/// `8i + 1 ..= 8i + 8` share one class, the class of `8i + 8`. One table
/// for every small size (2 KiB, of which a program's sizes touch a few
/// lines: everything to 1 KiB is the first two) rather than a shift below
/// 128 bytes and two coarser tables above: the three-way branch was four
/// instructions of every `alloc` and `dealloc`.
const CLASS_LOOKUP: [u8; MAX_SMALL / 8] = class_table();
const _: () = assert!((MAX_SMALL / 8).is_power_of_two());
const _: () = assert!(NR_CLASSES <= 256);

/// `CLASS_LOOKUP`'s entries: entry `i` is the class of `8 * (i + 1)`.
const fn class_table<const N: usize>() -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        // Fits: there are fewer than 256 classes (checked above).
        t[i] = size_to_class_arith(8 * i + 8) as u8;
        i += 1;
    }
    t
}

/// `size_to_class` for `1 <= size <= MAX_SMALL`, by arithmetic (what the
/// table is built from).
#[inline]
const fn size_to_class_arith(size: usize) -> usize {
    if size <= 128 {
        return (size - 1) >> 3;
    }
    let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    16 + (k - 7) * 8 + ((size - 1 - (1 << k)) >> (k - 3))
}

/// The class serving a `size`/`align` request, or `None` if pages must.
/// Objects of a class sit at multiples of its size from a slab aligned to
/// the slab's size, so an object is aligned to the lowest set bit of the
/// class size: the class must be a multiple of `align`.
#[inline]
pub const fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 8 {
        if size > MAX_SMALL {
            return None;
        }
        return Some(size_to_class(size));
    }
    if align > PAGE_SIZE {
        return None;
    }
    let rounded = (size + align - 1) & !(align - 1);
    if rounded > MAX_SMALL {
        return None;
    }
    let mut c = size_to_class(rounded);
    while !class_size(c).is_multiple_of(align) {
        c += 1;
        if c == NR_CLASSES {
            return None;
        }
    }
    Some(c)
}

/// The fixed shape of a size class.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SizeClass {
    /// Object size in bytes.
    pub size: u32,
    /// Order of the page block a slab takes (0..=3).
    pub slab_order: u8,
    /// Objects in one slab.
    pub objs: u16,
    /// Objects moved by one refill or flush between a thread cache and the
    /// class's lists (the PCP `batch` one level up).
    pub batch: u16,
    /// Most objects a thread cache holds for this class.
    pub max_cached: u16,
    /// Objects a free that finds the cache full hands back first, the
    /// oldest ones, and the most a refill takes from waiting transfer
    /// batches: half of `max_cached`, a whole number of batches. Half, as
    /// jemalloc's tcache flushes: a free-heavy stream (glibc_simple's runs
    /// of 400 and 1600 frees) then takes one flush per two batches, and the
    /// objects kept move down once per flush, one pointer copy per object
    /// handed back rather than three with a batch of a quarter.
    pub overflow: u16,
}

/// Smallest slab order (≤ 3) whose tail waste is at most an eighth and that
/// holds at least 8 objects; for big objects that no order gives 8 of, the
/// largest order with waste at most an eighth (most objects per slab, so
/// fewer slabs per batch); failing both, the order with the least waste.
const fn slab_order_for(size: usize) -> u8 {
    const fn ok(size: usize, o: usize) -> bool {
        let bytes = PAGE_SIZE << o;
        bytes >= size && (bytes % size) * 8 <= bytes
    }
    let mut o = 0;
    while o <= 3 {
        if ok(size, o) && (PAGE_SIZE << o) / size >= 8 {
            return o as u8;
        }
        o += 1;
    }
    let mut o = 3;
    loop {
        if ok(size, o) {
            return o as u8;
        }
        if o == 0 {
            break;
        }
        o -= 1;
    }
    let (mut best, mut best_waste_permille) = (3, usize::MAX);
    let mut o = 0;
    while o <= 3 {
        let bytes = PAGE_SIZE << o;
        if bytes >= size {
            let w = (bytes % size) * 1000 / bytes;
            if w <= best_waste_permille {
                best = o;
                best_waste_permille = w;
            }
        }
        o += 1;
    }
    best as u8
}

const fn make_classes() -> [SizeClass; NR_CLASSES] {
    let mut t = [SizeClass { size: 0, slab_order: 0, objs: 0, batch: 0, max_cached: 0, overflow: 0 }; NR_CLASSES];
    let mut c = 0;
    while c < NR_CLASSES {
        let size = class_size(c);
        let order = slab_order_for(size);
        // About 16 KiB per batch: 64 objects for the smallest classes, 4 for
        // the largest; a cache holds four batches, at most 64 KiB per class
        // (and never below two batches).
        let batch = clamp(16384 / size, 4, 64);
        let max = clamp(65536 / size, 2 * batch, 4 * batch);
        t[c] = SizeClass {
            size: size as u32,
            slab_order: order,
            objs: ((PAGE_SIZE << order) / size) as u16,
            batch: batch as u16,
            max_cached: max as u16,
            overflow: (max / 2 / batch * batch) as u16,
        };
        c += 1;
    }
    t
}

const fn clamp(v: usize, lo: usize, hi: usize) -> usize {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Every size class's shape.
pub static CLASSES: [SizeClass; NR_CLASSES] = make_classes();

/// Bytes in a cache line.
const CACHE_LINE: usize = 64;

/// The classes smaller than a cache line: several of their objects share a
/// line, so a thread that reuses another thread's object writes into a line
/// that thread is using (false sharing, Hoard's "passive" case), and every
/// write then moves the line between CPUs. Their frees check whose slab the
/// object came from and give other threads' objects back instead of keeping
/// them. Objects of a line or more share a line only at their edges (not at
/// all when the size is a multiple of 64): there, checking every free would
/// cost more than it saves, since with slabs shared between threads most
/// frees would then count as remote and go back a batch at a time.
pub const NR_SUBLINE_CLASSES: usize = size_to_class(CACHE_LINE);
const _: () = assert!(class_size(NR_SUBLINE_CLASSES) == CACHE_LINE && class_size(NR_SUBLINE_CLASSES - 1) < CACHE_LINE);

/// Bytes of objects a class's transfer batches hold at most (but never
/// fewer than `MIN_TRANSFER_SLOTS` or more than `MAX_TRANSFER_SLOTS`
/// batches).
///
/// A batch is about 16 KiB of objects from 256 bytes up but only 64
/// objects below, so a fixed count of 16 slots held 256 KiB of 1 KiB
/// objects and 8 KiB of 8-byte ones. A class handed from thread to thread
/// (pipeline: workers make the uppercased words, the sink frees them) then
/// overflowed its slots whenever the sink ran for a time slice: the 8-byte
/// class's transfer hits were 60% of its refills, and the other 40% walked
/// slab free lists written by the other CPU (`gather`, 5.3% of pipeline's
/// samples, 90% of them on the load of the next link). tcmalloc's transfer
/// cache holds up to 64 batches for the same reason.
const TRANSFER_BYTES: usize = 256 * 1024;
const MIN_TRANSFER_SLOTS: usize = 16;
const MAX_TRANSFER_SLOTS: usize = 64;

/// Full batches class `c` keeps for O(1) hand-over between threads.
pub(crate) const fn transfer_slots(c: usize) -> usize {
    let batch_bytes = CLASSES[c].batch as usize * CLASSES[c].size as usize;
    clamp(TRANSFER_BYTES / batch_bytes, MIN_TRANSFER_SLOTS, MAX_TRANSFER_SLOTS)
}
/// Tags every page of the slab of `slab_pages` pages at `first_pfn` as
/// `tag`'s (`slab_owner`: a hint read without a lock, see `ThreadCache::free`).
///
/// # Safety
/// `first_pfn..first_pfn + slab_pages` must be the pages of one slab of
/// this layer (so they lie in a live section).
unsafe fn set_slab_owner(first_pfn: usize, slab_pages: usize, tag: u8) {
    for pfn in first_pfn..first_pfn + slab_pages {
        // SAFETY: the caller's promise: a slab's pages lie in a live section,
        // and sections are never unmapped.
        unsafe { pfn_to_desc(pfn) }.slab_owner.store(tag, Relaxed);
    }
}

/// How long a cache must have taken no slow path before another thread
/// takes its slabs over (`ThreadCache::adopt_idle`): a few ticks of the
/// coarse clock, far longer than a working cache goes between refills.
const IDLE_OWNER_MS: u64 = 10;

/// Empty slabs a class keeps before giving them back to the page layer
/// (SLUB's `min_partial`): a class whose live count hovers at a slab
/// boundary must not allocate and free a slab on every batch.
const MAX_EMPTY_SLABS: usize = 1;

/// The smallest page order whose block holds `bytes`.
const fn order_for_bytes(bytes: usize) -> u32 {
    let mut o = 0;
    while PAGE_SIZE << o < bytes {
        o += 1;
    }
    o
}

/// Order of the block holding class `c`'s transfer arrays, taken from the
/// page allocator when the class first keeps a batch and given back with
/// the last one (`release_cached`): 32 KiB for the classes to 120 bytes
/// (64 slots of 64 pointers), 16 KiB to 240, 8 KiB or less above. Only the
/// slots a class fills are ever written, so only those pages are resident.
const fn transfer_order(c: usize) -> u32 {
    order_for_bytes(transfer_slots(c) * CLASSES[c].batch as usize * core::mem::size_of::<*mut u8>())
}

/// Where each class's arrays sit in a thread cache's slot block, in words:
/// `bin[c]` is a sentinel word (null, so that the pop's look at the next
/// object never reads outside the block) followed by `max_cached` slots;
/// `remote[c]`, for the classes below a cache line only, `batch` slots.
struct SlotLayout {
    bin: [u32; NR_CLASSES],
    remote: [u32; NR_CLASSES],
    words: usize,
}

const fn slot_layout() -> SlotLayout {
    let mut l = SlotLayout { bin: [0; NR_CLASSES], remote: [0; NR_CLASSES], words: 0 };
    let mut c = 0;
    while c < NR_CLASSES {
        l.bin[c] = l.words as u32;
        l.words += 1 + CLASSES[c].max_cached as usize;
        c += 1;
    }
    let mut c = 0;
    while c < NR_SUBLINE_CLASSES {
        l.remote[c] = l.words as u32;
        l.words += CLASSES[c].batch as usize;
        c += 1;
    }
    l
}

const SLOTS: SlotLayout = slot_layout();

/// Order of a thread cache's slot block (about 73 KiB of pointers, so 128
/// KiB of address space; only the slots a thread uses are ever written, so
/// only those pages become resident).
const SLOT_BLOCK_ORDER: u32 = order_for_bytes(SLOTS.words * core::mem::size_of::<*mut u8>());

/// Pages of a thread cache's slot block, taken from the page allocator on
/// the cache's first slow path and given back by [`ThreadCache::kill`].
pub const SLOT_BLOCK_PAGES: usize = 1 << SLOT_BLOCK_ORDER;

/// A class's shared state, guarded by its lock.
///
/// Invariants:
/// * every slab of this class with at least one free object is on
///   `partial`; full slabs are on no list; empty ones (at most
///   `MAX_EMPTY_SLABS`, counted by `nr_empty`) are on `partial` too;
/// * a slab's head descriptor has state `Allocated`, migratetype
///   `UNMOVABLE`, `slab_class` = this class, `slab_inuse` = objects not on
///   its own free list, and `slab_free` = that free list (linked through the
///   objects' first word);
/// * `transfer` is null (then `nr_transfer` is 0) or a block of order
///   `transfer_order(c)` from the page allocator holding `transfer_slots(c)`
///   arrays of `batch` object pointers; the first `nr_transfer` are full
///   batches, whose objects count as in use in their slabs.
struct ClassInner {
    partial: List,
    nr_slabs: usize,
    nr_empty: usize,
    transfer: *mut *mut u8,
    nr_transfer: usize,
    /// Σ slab_inuse over this class's slabs.
    inuse: usize,
    /// Set by refills and flushes, cleared by purge ticks; a class idle for
    /// four ticks (a decay time) gives back its transfer batches and empty
    /// slabs.
    used: bool,
    idle_ticks: u8,
}

struct ClassEvents {
    refill: Counter,
    flush: Counter,
    transfer_hit: Counter,
    slab_alloc: Counter,
    slab_free: Counter,
}

/// One size class's lock, lists and counters.
struct SlabClass {
    lock: RawLock,
    inner: UnsafeCell<ClassInner>,
    ev: ClassEvents,
}

crate::sync::maybe_const_fn! {
    fn slab_class_new() -> SlabClass {
        SlabClass {
            lock: RawLock::new(),
            inner: UnsafeCell::new(ClassInner {
                partial: List::new(),
                nr_slabs: 0,
                nr_empty: 0,
                transfer: ptr::null_mut(),
                nr_transfer: 0,
                inuse: 0,
                used: false,
                idle_ticks: 0,
            }),
            ev: ClassEvents {
                refill: Counter::new(),
                flush: Counter::new(),
                transfer_hit: Counter::new(),
                slab_alloc: Counter::new(),
                slab_free: Counter::new(),
            },
        }
    }
}

/// The slab layer over one page allocator.
///
/// When `track_caches` is set (the process-wide instance), thread caches
/// register themselves on their first refill so that statistics can count
/// the objects they hold; `registry` links them, guarded by `registry_lock`,
/// and `exited_*` keeps what exited threads' caches counted.
pub struct SlabAllocator<'a> {
    pub(crate) pages: &'a PageAllocator,
    classes: [CachePadded<SlabClass>; NR_CLASSES],
    track_caches: bool,
    /// Called when a cache registers (its first slow path): arranges for the
    /// cache to be given back when its thread exits, and says whether that
    /// will happen (false during the thread's teardown, too late for it).
    exit_hook: Option<fn() -> bool>,
    /// The last tag handed to a thread cache (tags 1..=255 cycle; 0 is no
    /// cache). Two caches may share a tag once more than 255 exist: then
    /// each takes the other's objects for its own, as if there were no tags.
    last_tag: core::sync::atomic::AtomicU8,
    /// When the cache holding each tag last took a slow path (coarse ms;
    /// 0: no live cache holds it). A thread whose remote array fills reads
    /// the owners' entries to tell idle and dead caches from working ones
    /// (`ThreadCache::adopt_idle`). Each entry has a line of its own: a
    /// cache writes its own once a clock tick and must not pull another
    /// cache's line to do it.
    tag_seen_ms: [CachePadded<core::sync::atomic::AtomicU64>; 256],
    /// Large blocks' requested bytes and pages (wrapping sums of signed
    /// deltas) accounted by no live registered cache: those of exited
    /// threads' caches, and of calls made without a cache. The live caches
    /// keep their own (see `ThreadCache::account_large`); statistics add
    /// both, under the registry lock.
    large_requested: core::sync::atomic::AtomicUsize,
    large_pages: core::sync::atomic::AtomicUsize,
    registry_lock: RawLock,
    registry: UnsafeCell<*mut ThreadCache>,
    /// How many caches `registry` holds (changed under `registry_lock`,
    /// read without it): an exiting thread that leaves at most one tells
    /// the page allocator that a phase of the program has ended.
    nr_registered: core::sync::atomic::AtomicUsize,
    /// Pages this layer took from the page allocator for its own arrays
    /// (classes' transfer blocks, thread caches' slot blocks): metadata to
    /// statistics, not allocated memory.
    meta_pages: core::sync::atomic::AtomicUsize,
}

// SAFETY: each class's state is reached only under its lock; the page
// allocator is itself Sync.
unsafe impl Sync for SlabAllocator<'_> {}
// SAFETY: nothing is tied to a thread.
unsafe impl Send for SlabAllocator<'_> {}

#[cfg(not(loom))]
const fn class_array() -> [CachePadded<SlabClass>; NR_CLASSES] {
    [const { CachePadded::new(slab_class_new()) }; NR_CLASSES]
}
#[cfg(loom)]
fn class_array() -> [CachePadded<SlabClass>; NR_CLASSES] {
    core::array::from_fn(|_| CachePadded::new(slab_class_new()))
}

crate::sync::maybe_const_fn! {
    pub(crate) fn slab_allocator_new(pages: &PageAllocator, track_caches: bool, exit_hook: Option<fn() -> bool>) -> SlabAllocator<'_> {
        SlabAllocator {
            pages,
            classes: class_array(),
            track_caches,
            exit_hook,
            last_tag: core::sync::atomic::AtomicU8::new(0),
            tag_seen_ms: [const { CachePadded::new(core::sync::atomic::AtomicU64::new(0)) }; 256],
            large_requested: core::sync::atomic::AtomicUsize::new(0),
            large_pages: core::sync::atomic::AtomicUsize::new(0),
            registry_lock: RawLock::new(),
            registry: UnsafeCell::new(ptr::null_mut()),
            nr_registered: core::sync::atomic::AtomicUsize::new(0),
            meta_pages: core::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// A class's counters and occupancy, like a line of `/proc/slabinfo`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SlabClassInfo {
    /// Object size.
    pub objsize: usize,
    /// Objects out of their slabs: held by the program, a thread cache, or a
    /// transfer batch (`active_objs`).
    pub active_objs: usize,
    /// Objects in all slabs (`num_objs`).
    pub num_objs: usize,
    /// Objects per slab.
    pub objperslab: usize,
    /// Pages per slab.
    pub pagesperslab: usize,
    /// Slabs.
    pub num_slabs: usize,
    /// Objects waiting in full transfer batches.
    pub transfer_objs: usize,
    /// Thread-cache refills from this class.
    pub refills: u64,
    /// Thread-cache flushes into this class.
    pub flushes: u64,
    /// Refills served by a whole transfer batch.
    pub transfer_hits: u64,
    /// Slabs taken from the page allocator.
    pub slabs_allocated: u64,
    /// Empty slabs given back to it.
    pub slabs_freed: u64,
}

/// Reads the free-list link stored in a free object.
///
/// # Safety
/// `obj` must be a free object of this layer (its first word is a link).
#[inline]
unsafe fn next_of(obj: *mut u8) -> *mut u8 {
    // SAFETY: free objects are at least 8 bytes, 8-aligned, and hold a link.
    unsafe { obj.cast::<*mut u8>().read() }
}

/// Starts taking the cache line of the next object to pop, the way
/// tcmalloc's `FreeList::Pop` does. Objects freed by other threads, or long
/// ago, are cold in this CPU's cache, and a program writes what it
/// allocates before anything else: `prefetchw` asks for the line in
/// exclusive state at once. `prefetcht0` fetched it shared, and the
/// program's first store then had to invalidate the freeing CPU's copy,
/// a second trip: xmalloc (64-byte objects made by producers, freed by
/// consumers) ran 11% faster with `prefetchw` (medians of 10 paired runs),
/// larson 4%, pipeline 2%.
///
/// `prefetchw` is x86-64's since AMD's first processors; Intel's decode
/// its opcode (`0F 0D /1`) as a no-op where they lack the feature (before
/// Broadwell), which is why 64-bit Windows 8.1 could require it. A
/// prefetch of null or of any address never faults.
#[inline(always)]
fn prefetch(p: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetchw` only hints the cache; it reads nothing the
    // program can see and never faults, whatever the address.
    unsafe {
        core::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Stores the free-list link in a free object.
///
/// # Safety
/// `obj` must be an object of this layer that nobody else uses.
#[inline]
unsafe fn set_next(obj: *mut u8, next: *mut u8) {
    // SAFETY: objects are at least 8 bytes and 8-aligned.
    unsafe { obj.cast::<*mut u8>().write(next) }
}

impl<'a> SlabAllocator<'a> {
    /// A slab layer over `pages`.
    pub fn new(pages: &'a PageAllocator) -> Self {
        slab_allocator_new(pages, false, None)
    }

    /// Runs `f` with class `c`'s lock held.
    #[inline]
    fn with_class<R>(&self, c: usize, f: impl FnOnce(&mut ClassInner, &SlabClass) -> R) -> R {
        let class = &*self.classes[c];
        class.lock.lock();
        // SAFETY: we hold the class lock until the unlock below, and `f`
        // cannot reach `inner` another way.
        let r = f(unsafe { &mut *class.inner.get() }, class);
        class.lock.unlock();
        r
    }

    /// Refills a thread cache: whole transfer batches if any are waiting
    /// (up to `overflow` objects, what one overflowing cache handed back, in
    /// one copy), else `batch` objects gathered from partial slabs, taking
    /// new slabs from the page allocator as needed. Writes them to `dst` and
    /// returns how many (0 when memory ran out).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `CLASSES[c].overflow` pointers.
    unsafe fn refill(&self, c: usize, tag: u8, dst: *mut *mut u8) -> usize {
        let batch = CLASSES[c].batch as usize;
        // Broken on purpose (loom-tests): looks for a transfer batch under one
        // hold of the class lock and takes the one it saw under a second.
        #[cfg(loom_broken = "refill_stale_transfer")]
        if crate::sync::broken("refill_stale_transfer") {
            let seen = self.with_class(c, |inner, _| inner.nr_transfer);
            if seen > 0 {
                return self.with_class(c, |inner, class| {
                    class.ev.refill.inc();
                    class.ev.transfer_hit.inc();
                    inner.nr_transfer = seen - 1;
                    // SAFETY: none: this is the bug the loom model must catch.
                    unsafe { ptr::copy_nonoverlapping(inner.transfer.add((seen - 1) * batch), dst, batch) };
                    batch
                });
            }
        }
        self.with_class(c, |inner, class| {
            class.ev.refill.inc();
            inner.used = true;
            if inner.nr_transfer > 0 {
                let k = inner.nr_transfer.min(CLASSES[c].overflow as usize / batch);
                inner.nr_transfer -= k;
                class.ev.transfer_hit.inc();
                // SAFETY: slots `nr_transfer..nr_transfer + k` of the class's
                // transfer block hold full batches (the struct's invariant),
                // now ours; the caller gives room for `overflow >= k * batch`
                // pointers.
                unsafe { ptr::copy_nonoverlapping(inner.transfer.add(inner.nr_transfer * batch), dst, k * batch) };
                return k * batch;
            }
            // SAFETY: forwarded.
            unsafe { self.gather(inner, class, c, batch, tag, dst) }
        })
    }

    /// Takes up to `want` objects from partial slabs (and new ones) into
    /// `dst`. A slab whose first object it takes (a new or an empty one)
    /// becomes `tag`'s: that cache's frees of objects from it stay in the
    /// cache; everyone else's go back in batches (for the classes below a
    /// cache line). A slab shared with other caches stays its first
    /// taker's, so a thread never reuses an object whose line neighbours
    /// another thread may hold. Called under the class lock.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `want` pointers.
    unsafe fn gather(
        &self,
        inner: &mut ClassInner,
        class: &SlabClass,
        c: usize,
        want: usize,
        tag: u8,
        dst: *mut *mut u8,
    ) -> usize {
        let slab_pages = 1usize << CLASSES[c].slab_order;
        // Runs cut off the front of each slab's free list: objects keep
        // their slab's order (address order in a new slab), and the cache
        // hands out the array's last first, so the batch is stored in
        // reverse and the program walks memory forward.
        let mut n = 0;
        while n < want {
            let slab = match inner.partial.first() {
                Some(s) => s,
                None => match self.new_slab(inner, class, c) {
                    Some(s) => s,
                    None => break,
                },
            };
            if slab.slab_inuse.get() == 0 {
                inner.nr_empty -= 1;
                // An empty slab belongs to whoever takes its first object.
                // SAFETY: `slab` heads a slab of class `c`, of `slab_pages` pages.
                unsafe { set_slab_owner(desc_to_pfn(slab), slab_pages, tag) };
            }
            // A slab on the partial list has at least one free object.
            let mut free = slab.slab_free();
            debug_assert!(!free.is_null());
            let mut taken = 0;
            while n + taken < want && !free.is_null() {
                // SAFETY: the caller gives room for `want` pointers; `free`
                // is on the slab's free list, so its first word is a link.
                unsafe {
                    dst.add(want - 1 - (n + taken)).write(free);
                    free = next_of(free);
                }
                taken += 1;
            }
            n += taken;
            slab.set_slab_free(free);
            slab.slab_inuse.set(slab.slab_inuse.get() + taken as u16);
            inner.inuse += taken;
            if free.is_null() {
                inner.partial.remove(slab);
            }
        }
        if n < want && n > 0 {
            // Out of memory part way: close the gap the reversed stores
            // left at the front.
            // SAFETY: both ranges lie in the `want` pointers given.
            unsafe { ptr::copy(dst.add(want - n), dst, n) };
        }
        n
    }

    /// A new slab for class `c` on the partial list, all objects free.
    fn new_slab(&self, inner: &mut ClassInner, class: &SlabClass, c: usize) -> Option<&'static PageDesc> {
        let sc = CLASSES[c];
        let d = self.pages.alloc_block(Gfp::DEFAULT, sc.slab_order as u32, MIGRATE_UNMOVABLE)?;
        let base = pfn_to_addr(desc_to_pfn(d));
        let size = sc.size as usize;
        // Link the objects in address order, so a batch walks memory forward.
        let mut free = ptr::null_mut();
        for i in (0..sc.objs as usize).rev() {
            // SAFETY: object `i` lies inside the block we were just given.
            let obj = unsafe { base.add(i * size) };
            // SAFETY: as above; the block is ours.
            unsafe { set_next(obj, free) };
            free = obj;
        }
        d.slab_class.set(c as u8);
        d.slab_inuse.set(0);
        d.set_slab_free(free);
        inner.partial.push_front(d);
        inner.nr_slabs += 1;
        inner.nr_empty += 1;
        class.ev.slab_alloc.inc();
        Some(d)
    }

    /// Takes `n` objects from a thread cache back. With `to_transfer` and
    /// `n` a whole number of batches, each batch is kept whole in a transfer
    /// slot while one is free (the next refill of any thread copies it out);
    /// every other object goes back to its slab (what a cache giving back
    /// memory wants: a slab emptied so goes back to the page allocator).
    ///
    /// # Safety
    /// `src` must be valid for reads of `n` pointers, each a live object of
    /// class `c` from this layer, freed.
    unsafe fn flush(&self, c: usize, src: *const *mut u8, n: usize, to_transfer: bool) {
        let flush = |inner: &mut ClassInner, class: &SlabClass| {
            class.ev.flush.inc();
            inner.used = true;
            let batch = CLASSES[c].batch as usize;
            let mut done = 0;
            if to_transfer && n.is_multiple_of(batch) {
                while done < n && inner.nr_transfer < transfer_slots(c) && self.transfer_block(inner, c) {
                    // SAFETY: slot `nr_transfer` of the transfer block is
                    // free and holds `batch` pointers; the caller gives `n`
                    // of them, `done + batch <= n`.
                    unsafe {
                        ptr::copy_nonoverlapping(src.add(done), inner.transfer.add(inner.nr_transfer * batch), batch)
                    };
                    inner.nr_transfer += 1;
                    done += batch;
                }
            }
            if done < n {
                // SAFETY: forwarded: the objects not put in a slot.
                unsafe { self.release(inner, class, c, src.add(done), n - done) };
            }
        };
        // Broken on purpose (loom-tests): flushes without the class lock.
        #[cfg(loom_broken = "flush_skips_class_lock")]
        if crate::sync::broken("flush_skips_class_lock") {
            let class = &*self.classes[c];
            // SAFETY: none: this is the bug the loom model must catch.
            return flush(unsafe { &mut *class.inner.get() }, class);
        }
        self.with_class(c, flush)
    }

    /// A block of `2^order` pages for this layer's own arrays, counted in
    /// `meta_pages`; null if the page allocator has none.
    fn alloc_meta(&self, order: u32) -> *mut *mut u8 {
        match self.pages.alloc_block(Gfp::DEFAULT, order, MIGRATE_UNMOVABLE) {
            Some(d) => {
                self.meta_pages.fetch_add(1 << order, Relaxed);
                pfn_to_addr(desc_to_pfn(d)).cast()
            }
            None => ptr::null_mut(),
        }
    }

    /// Gives back a block from `alloc_meta`.
    ///
    /// # Safety
    /// `block` came from `alloc_meta(order)` and nothing uses it any more.
    unsafe fn free_meta(&self, block: *mut *mut u8, order: u32) {
        // SAFETY: the block lies in a live section (the caller's promise),
        // so its head descriptor is found by its page frame number.
        let d = unsafe { pfn_to_desc(block as usize >> PAGE_SHIFT) };
        self.meta_pages.fetch_sub(1 << order, Relaxed);
        self.pages.free_block(d, order);
    }

    /// A new thread cache in a block of its own from the page allocator
    /// (counted in `meta_pages`), or null if there is none. The caller makes
    /// it its thread's and gives it back with `free_thread_cache`.
    pub(crate) fn new_thread_cache(&self) -> *mut ThreadCache {
        let p = self.alloc_meta(THREAD_CACHE_ORDER).cast::<ThreadCache>();
        if !p.is_null() {
            // SAFETY: the block is ours, large and aligned enough (checked
            // below `THREAD_CACHE_ORDER`).
            unsafe { p.write(ThreadCache::new()) };
        }
        p
    }

    /// Gives back a cache from `new_thread_cache`, which must be dead
    /// (`kill`ed: unregistered, holding nothing).
    ///
    /// # Safety
    /// `cache` came from `new_thread_cache` and nothing uses it any more.
    pub(crate) unsafe fn free_thread_cache(&self, cache: *mut ThreadCache) {
        // SAFETY: the caller's promise; a dead cache owns nothing that a
        // drop would give back (ThreadCache has no destructor).
        unsafe { self.free_meta(cache.cast(), THREAD_CACHE_ORDER) }
    }

    /// Whether class `c` has its transfer block, taking one from the page
    /// allocator if not (false when that fails: the batch then goes back to
    /// its slabs). Called under the class lock.
    fn transfer_block(&self, inner: &mut ClassInner, c: usize) -> bool {
        if inner.transfer.is_null() {
            inner.transfer = self.alloc_meta(transfer_order(c));
        }
        !inner.transfer.is_null()
    }

    /// Puts `n` objects back on their slabs; gives slabs that become empty
    /// back to the page allocator, beyond the few kept. Called under the
    /// class lock.
    ///
    /// # Safety
    /// As for `flush`.
    unsafe fn release(&self, inner: &mut ClassInner, class: &SlabClass, c: usize, src: *const *mut u8, n: usize) {
        let sc = CLASSES[c];
        let slab_mask = !((PAGE_SIZE << sc.slab_order) - 1);
        for i in 0..n {
            // SAFETY: the caller gives `n` readable pointers.
            let obj = unsafe { src.add(i).read() };
            // SAFETY: a slab object lies in a slab block of a live section;
            // slabs are aligned to their size, so masking finds the head.
            let slab = unsafe { pfn_to_desc((obj as usize & slab_mask) >> PAGE_SHIFT) };
            debug_assert_eq!(slab.slab_class.get() as usize, c);
            let free = slab.slab_free();
            // SAFETY: the object is free now and ours to link.
            unsafe { set_next(obj, free) };
            slab.set_slab_free(obj);
            if free.is_null() {
                inner.partial.push_front(slab);
            }
            let inuse = slab.slab_inuse.get() - 1;
            slab.slab_inuse.set(inuse);
            inner.inuse -= 1;
            if inuse == 0 {
                inner.partial.remove(slab);
                if inner.nr_empty < MAX_EMPTY_SLABS {
                    // Keep it, behind the partly used slabs so those fill first.
                    inner.nr_empty += 1;
                    inner.partial.push_back(slab);
                } else {
                    inner.nr_slabs -= 1;
                    slab.set_slab_free(ptr::null_mut());
                    class.ev.slab_free.inc();
                    self.pages.free_block(slab, sc.slab_order as u32);
                }
            }
        }
    }

    /// Bytes of pages holding this layer's own arrays (see `meta_pages`).
    pub(crate) fn meta_bytes(&self) -> usize {
        self.meta_pages.load(Relaxed) * PAGE_SIZE
    }

    /// Adds large-block deltas to the layer's own sums (no cache).
    pub(crate) fn account_large(&self, requested: usize, pages: usize) {
        self.large_requested.fetch_add(requested, Relaxed);
        self.large_pages.fetch_add(pages, Relaxed);
    }

    /// A tag for a new thread cache: 1..=255, round robin.
    fn next_tag(&self) -> u8 {
        let t = self.last_tag.fetch_add(1, Relaxed).wrapping_add(1);
        if t == 0 {
            self.last_tag.fetch_add(1, Relaxed).wrapping_add(1)
        } else {
            t
        }
    }

    /// One object without a thread cache (after the thread's cache is torn
    /// down). Null when memory ran out.
    pub(crate) fn alloc_one(&self, c: usize) -> *mut u8 {
        let mut obj = ptr::null_mut();
        // SAFETY: room for the one pointer asked for; null if none came.
        self.with_class(c, |inner, class| unsafe { self.gather(inner, class, c, 1, 0, &mut obj) });
        obj
    }

    /// Frees one object without a thread cache.
    ///
    /// # Safety
    /// `obj` must be a live object of class `c` from this slab layer.
    pub(crate) unsafe fn free_one(&self, c: usize, obj: *mut u8) {
        // SAFETY: the caller gives us a live object of class `c`, now free.
        self.with_class(c, |inner, class| unsafe { self.release(inner, class, c, &obj, 1) })
    }

    /// Gives every transfer batch's objects back to their slabs and every
    /// empty slab back to the page allocator.
    pub fn shrink(&self) {
        for c in 0..NR_CLASSES {
            self.with_class(c, |inner, class| self.release_cached(inner, class, c));
        }
    }

    /// The purge tick's share: a class nobody refilled from or flushed to
    /// for a whole decay time (four ticks) gives back its transfer batches
    /// and empty slabs. Classes whose lock is busy are skipped, never waited
    /// for: the tick may run under another class's lock.
    pub fn decay(&self) {
        for c in 0..NR_CLASSES {
            let class = &*self.classes[c];
            if !class.lock.try_lock() {
                continue;
            }
            // SAFETY: we hold the class lock until the unlock below.
            let inner = unsafe { &mut *class.inner.get() };
            if inner.used {
                inner.used = false;
                inner.idle_ticks = 0;
            } else if inner.nr_transfer > 0 || inner.nr_empty > 0 || !inner.transfer.is_null() {
                inner.idle_ticks = inner.idle_ticks.saturating_add(1);
                if inner.idle_ticks >= 4 {
                    self.release_cached(inner, class, c);
                }
            }
            class.lock.unlock();
        }
    }

    /// Releases a class's transfer batches to their slabs and its empty
    /// slabs to the page allocator. Called under the class lock.
    fn release_cached(&self, inner: &mut ClassInner, class: &SlabClass, c: usize) {
        let sc = CLASSES[c];
        while inner.nr_transfer > 0 {
            inner.nr_transfer -= 1;
            let batch = sc.batch as usize;
            // SAFETY: slot `nr_transfer` holds a full batch of this class.
            unsafe { self.release(inner, class, c, inner.transfer.add(inner.nr_transfer * batch), batch) };
        }
        if !inner.transfer.is_null() {
            // SAFETY: the block came from `transfer_block`, and its slots
            // are all free now.
            unsafe { self.free_meta(inner.transfer, transfer_order(c)) };
            inner.transfer = ptr::null_mut();
        }
        while inner.nr_empty > 0 {
            let slab = inner.partial.pop_back().expect("empty slabs sit at the tail");
            debug_assert_eq!(slab.slab_inuse.get(), 0);
            inner.nr_empty -= 1;
            inner.nr_slabs -= 1;
            slab.set_slab_free(ptr::null_mut());
            class.ev.slab_free.inc();
            self.pages.free_block(slab, sc.slab_order as u32);
        }
    }

    /// Bytes of slab pages, and bytes of objects out of their slabs (held
    /// by the program, thread caches or transfer batches), over all classes.
    pub(crate) fn slab_bytes(&self) -> (usize, usize) {
        let (mut pages, mut objs) = (0, 0);
        for (c, sc) in CLASSES.iter().enumerate() {
            let (p, o) = self.with_class(c, |inner, _| (inner.nr_slabs << sc.slab_order, inner.inuse));
            pages += p * PAGE_SIZE;
            objs += o * sc.size as usize;
        }
        (pages, objs)
    }

    /// Folds `f` over every registered thread cache, starting from `init()`,
    /// all under the registry lock (so that a cache unregistering meanwhile,
    /// handing its sums to the layer, is counted exactly once).
    fn fold_caches<A>(&self, init: impl FnOnce() -> A, mut f: impl FnMut(A, &ThreadCache) -> A) -> A {
        self.registry_lock.lock();
        let mut acc = init();
        // SAFETY: the registry is guarded by its lock; registered caches stay
        // alive until they unregister, which takes the same lock.
        let mut tc = unsafe { *self.registry.get() };
        // SAFETY (loop condition): as above, `tc` is null or a registered,
        // live cache.
        while let Some(cache) = unsafe { tc.as_ref() } {
            acc = f(acc, cache);
            tc = cache.reg_next;
        }
        self.registry_lock.unlock();
        acc
    }

    /// Pages held by registered thread caches' page bins.
    pub fn cached_pages(&self) -> usize {
        self.fold_caches(|| 0, |pages, cache| pages + cache.cached_pages())
    }

    /// Memory that is resident but free, as `(objects, empty slabs)`: bytes
    /// of free objects held by registered thread caches and transfer batches
    /// (counted in `inuse`, so `slab_bytes().1` includes them), and bytes of
    /// empty slabs (whose objects `inuse` does not count).
    pub fn cached_bytes(&self) -> (usize, usize) {
        let (mut objs, mut empty) = (0, 0);
        for (c, sc) in CLASSES.iter().enumerate() {
            let slab_bytes = PAGE_SIZE << sc.slab_order;
            let (t, e) = self.with_class(c, |inner, _| {
                (inner.nr_transfer * sc.batch as usize * sc.size as usize, inner.nr_empty * slab_bytes)
            });
            objs += t;
            empty += e;
        }
        (self.fold_caches(|| objs, |objs, cache| objs + cache.cached_bytes()), empty)
    }

    /// Adds a thread cache to the registry.
    ///
    /// # Safety
    /// `tc` must not move or be freed before `unregister(tc)`.
    unsafe fn register(&self, tc: &mut ThreadCache) {
        self.registry_lock.lock();
        // SAFETY: guarded by the registry lock.
        let head = unsafe { &mut *self.registry.get() };
        tc.reg_prev = ptr::null_mut();
        tc.reg_next = *head;
        // SAFETY: registered caches are alive.
        if let Some(h) = unsafe { head.as_mut() } {
            h.reg_prev = tc;
        }
        *head = tc;
        tc.registered = true;
        self.nr_registered.fetch_add(1, Relaxed);
        self.registry_lock.unlock();
    }

    /// The large-block sums over every cache, live or gone: (requested
    /// bytes, pages). Takes the registry lock.
    pub(crate) fn large_totals(&self) -> (usize, usize) {
        self.fold_caches(
            || (self.large_requested.load(Relaxed), self.large_pages.load(Relaxed)),
            |(req, pages), cache| {
                (
                    req.wrapping_add(cache.large_requested.load(Relaxed)),
                    pages.wrapping_add(cache.large_pages.load(Relaxed)),
                )
            },
        )
    }

    /// How many thread caches are registered: live threads that have
    /// allocated or freed through their cache.
    pub(crate) fn nr_registered(&self) -> usize {
        self.nr_registered.load(Relaxed)
    }

    /// Removes a thread cache from the registry (thread exit), handing its
    /// large-block sums to the layer's.
    pub(crate) fn unregister(&self, tc: &mut ThreadCache) {
        if !tc.registered {
            return;
        }
        self.registry_lock.lock();
        self.large_requested.fetch_add(tc.large_requested.swap(0, Relaxed), Relaxed);
        self.large_pages.fetch_add(tc.large_pages.swap(0, Relaxed), Relaxed);
        // SAFETY: guarded by the registry lock; neighbours are registered,
        // hence alive.
        unsafe {
            match tc.reg_prev.as_mut() {
                Some(p) => p.reg_next = tc.reg_next,
                None => *self.registry.get() = tc.reg_next,
            }
            if let Some(n) = tc.reg_next.as_mut() {
                n.reg_prev = tc.reg_prev;
            }
        }
        tc.registered = false;
        self.nr_registered.fetch_sub(1, Relaxed);
        self.registry_lock.unlock();
    }

    /// `/proc/slabinfo`'s line for class `c`.
    pub fn class_info(&self, c: usize) -> SlabClassInfo {
        let sc = CLASSES[c];
        self.with_class(c, |inner, class| SlabClassInfo {
            objsize: sc.size as usize,
            active_objs: inner.inuse,
            num_objs: inner.nr_slabs * sc.objs as usize,
            objperslab: sc.objs as usize,
            pagesperslab: 1 << sc.slab_order,
            num_slabs: inner.nr_slabs,
            transfer_objs: inner.nr_transfer * sc.batch as usize,
            refills: class.ev.refill.get(),
            flushes: class.ev.flush.get(),
            transfer_hits: class.ev.transfer_hit.get(),
            slabs_allocated: class.ev.slab_alloc.get(),
            slabs_freed: class.ev.slab_free.get(),
        })
    }

    /// Verifies each class's invariants: every partial slab's free list
    /// length plus its in-use count is its object count, objects on free
    /// lists lie inside their slab at object boundaries, and the counts add up.
    pub fn check(&self) -> Result<(), crate::CheckError> {
        for (c, &sc) in CLASSES.iter().enumerate() {
            let bytes = PAGE_SIZE << sc.slab_order;
            let r = self.with_class(c, |inner, _| {
                let (mut empty, mut free_objs) = (0, 0);
                for slab in inner.partial.iter() {
                    let pfn = desc_to_pfn(slab);
                    let bad = |what| Err(crate::CheckError { what, pfn });
                    if slab.state.get() != PageState::Allocated
                        || slab.slab_class.get() as usize != c
                        || slab.order.get() != sc.slab_order
                    {
                        return bad("slab on a partial list with a wrong descriptor");
                    }
                    let base = pfn_to_addr(pfn) as usize;
                    let mut n = 0;
                    let mut o = slab.slab_free();
                    while !o.is_null() {
                        let off = (o as usize).wrapping_sub(base);
                        if off >= bytes || !off.is_multiple_of(sc.size as usize) || n > sc.objs as usize {
                            return bad("slab free list leaves its slab");
                        }
                        n += 1;
                        // SAFETY: `o` is on this slab's free list.
                        o = unsafe { next_of(o) };
                    }
                    if n == 0 || n + slab.slab_inuse.get() as usize != sc.objs as usize {
                        return bad("slab free count and in-use count disagree");
                    }
                    if slab.slab_inuse.get() == 0 {
                        empty += 1;
                    }
                    free_objs += n;
                }
                if empty != inner.nr_empty || empty > MAX_EMPTY_SLABS {
                    return Err(crate::CheckError { what: "empty slab count wrong", pfn: c });
                }
                if inner.inuse + free_objs > inner.nr_slabs * sc.objs as usize {
                    return Err(crate::CheckError { what: "class object counts do not add up", pfn: c });
                }
                Ok(())
            });
            r?;
        }
        Ok(())
    }

    /// Takes every class lock (for `fork`), in class order.
    pub(crate) fn lock_all(&self) {
        for class in &self.classes {
            class.lock.lock();
        }
        self.registry_lock.lock();
    }

    /// Releases what `lock_all` took.
    pub(crate) fn unlock_all(&self) {
        self.registry_lock.unlock();
        for class in self.classes.iter().rev() {
            class.lock.unlock();
        }
    }

    /// `fork`'s prepare handler for this slab layer and the page allocator
    /// under it: every lock of both, in the documented order (class locks
    /// and the registry lock, then `PageAllocator::lock_all`), so that no
    /// lock is held by a thread that will not exist in the child. Public
    /// only for the loom model of `fork`.
    #[doc(hidden)]
    pub fn lock_all_for_fork(&self) {
        // Broken on purpose (loom-tests): the page allocator's locks first.
        #[cfg(loom_broken = "fork_pages_before_slabs")]
        if crate::sync::broken("fork_pages_before_slabs") {
            self.pages.lock_all();
            self.lock_all();
            return;
        }
        self.lock_all();
        self.pages.lock_all();
    }

    /// Releases what `lock_all_for_fork` took (`fork`'s parent and child
    /// handlers).
    #[doc(hidden)]
    pub fn unlock_all_for_fork(&self) {
        self.pages.unlock_all();
        self.unlock_all();
    }
}

/// Allocations a thread cache serves between two ticks. A tick costs a
/// coarse-clock read (a few nanoseconds) unless a purge tick is due, so
/// 128 allocations pay a few hundredths of a nanosecond each.
const TICK_ALLOCS: u32 = 128;

/// One free-object stack of a thread cache, an array in the cache's slot
/// block (jemalloc's and tcmalloc's shape, not a list through the objects):
/// a pop reads the array, not the object, so handing out an object that
/// another thread freed (cold in this CPU's cache) does not stall on it,
/// a push writes nothing into the freed object, and a batch moves by
/// copying pointers instead of walking links. `count` is an atomic only so
/// that statistics may read it from another thread; its owner reads and
/// writes it with plain relaxed loads and stores (ordinary `mov`s, no
/// locked instruction).
struct Bin {
    /// The newest object's slot, or the stack's sentinel (a null word just
    /// below its first slot) when it is empty; a closed bin's points at
    /// `NO_SLOTS`. A pop reads `*top`: null means empty, so the fast path
    /// needs no count. Atomic only so that statistics may read it from
    /// another thread; the owner loads and stores it relaxed (plain `mov`s).
    top: AtomicPtr<*mut u8>,
    /// The stack's last slot (`max_cached` above the sentinel), or
    /// `NO_SLOTS` when closed: a free that finds `top` here is the slow
    /// path's. Kept beside `top`, so that a free compares two words of one
    /// cache line and reads no table.
    limit: *mut *mut u8,
    /// Objects of this class freed by this thread from slabs another cache
    /// took them from: never handed out again here (reusing another
    /// thread's object puts this thread's writes in cache lines that thread
    /// is using: false sharing), but given back a batch at a time, like
    /// snmalloc's remote-free batches, unless the other cache is idle or
    /// dead when the array fills (`ThreadCache::adopt_idle`). An array of `batch` slots (classes
    /// below a cache line only); `nr_remote` is atomic for statistics only,
    /// like `top`.
    remote: *mut *mut u8,
    nr_remote: AtomicU32,
}

/// What a closed bin's `top` and `limit` point at: a word of zeros, read as
/// a null slot (empty), never written (a free finds `top == limit`).
static NO_SLOTS: usize = 0;

/// `NO_SLOTS`' address as a slot pointer.
const fn no_slots() -> *mut *mut u8 {
    ptr::addr_of!(NO_SLOTS) as *mut *mut u8
}

impl Bin {
    /// Pushes a free object above `top` (the bin's `top`, already loaded).
    ///
    /// # Safety
    /// `obj` is a free object of this bin's class that nobody else uses,
    /// and the stack has room (`top < limit`).
    #[inline(always)]
    unsafe fn push(&mut self, top: *mut *mut u8, obj: *mut u8) {
        // SAFETY: below the limit, so the next slot lies in the open stack.
        let top = unsafe { top.add(1) };
        // SAFETY: as above.
        unsafe { top.write(obj) };
        self.top.store(top, Relaxed);
    }
}

/// A thread's cache of free objects, one stack per class. Owned by one
/// thread, so alloc and free touch no atomic read-modify-write and take no
/// lock while a stack has objects (alloc) or room (free).
///
/// Invariant: bin `c` is closed (`top == limit == NO_SLOTS`) or open; an
/// open bin's cache is live with its slot block (`block` not null), and its
/// stack is at `base = block + SLOTS.bin[c]`: `base[0]` is null (the
/// sentinel), `base[1..=count]` are free objects of class `c` (non-null;
/// `count = top - base`, at most `CLASSES[c].max_cached`, and `limit =
/// base + max_cached`), and `remote` (classes below a cache line) is
/// `block + SLOTS.remote[c]` with `remote[..nr_remote]` objects (fewer than
/// `CLASSES[c].batch`), set whenever `block` is and null whenever it is
/// null (so a non-null `remote` says the cache is open and live); each
/// counts as in use in
/// its slab. A bin opens on its first slow path (`open_bin`). Before the
/// cache's first slow path and once `dead` (its thread is exiting, see
/// [`ThreadCache::kill`], or the slot block could not be had) every bin is
/// closed, so both fast paths fall through to slow paths, which for a dead
/// cache use the slab layer's locked one-object calls.
/// `reg_*` link the registered caches of a tracking slab layer, under its
/// registry lock.
pub struct ThreadCache {
    bins: [Bin; NR_CLASSES],
    /// The slot block (order `SLOT_BLOCK_ORDER`, from the page allocator)
    /// holding every bin's array, or null. Atomic (relaxed) only for
    /// statistics, like the bins' `top`.
    block: AtomicPtr<*mut u8>,
    /// Blocks of orders 0..=7 in front of the PCP and the zone (see
    /// `page_cache`).
    pages: PageCache,
    /// This cache's tag in the slabs it takes objects from (0 until its
    /// first slow path).
    tag: u8,
    dead: bool,
    /// This thread's share of the large blocks' requested bytes and pages
    /// (wrapping sums of signed deltas: a block freed here that another
    /// thread allocated subtracts). Atomic only so that statistics may read
    /// them; the owner updates them with a plain load and store, so a large
    /// allocation pays no locked instruction for its accounting.
    large_requested: core::sync::atomic::AtomicUsize,
    large_pages: core::sync::atomic::AtomicUsize,
    /// When this cache last gave back the lists it was not using (ms).
    last_gc_ms: u64,
    /// Allocations from the cache until the next tick (see `on_tick`).
    ticks_left: u32,
    registered: bool,
    reg_next: *mut ThreadCache,
    reg_prev: *mut ThreadCache,
}

/// The page order of the block `SlabAllocator::new_thread_cache` puts a
/// cache in.
const THREAD_CACHE_ORDER: u32 = order_for_bytes(core::mem::size_of::<ThreadCache>());
const _: () = assert!(core::mem::align_of::<ThreadCache>() <= PAGE_SIZE);

/// A new cache's lists: empty and closed (`max` 0), so that its first
/// allocation and its first free both take a slow path, which gives the
/// cache its tag, registers it and arms its exit flush before opening them.
const fn new_bins() -> [Bin; NR_CLASSES] {
    [const {
        Bin {
            top: AtomicPtr::new(no_slots()),
            limit: no_slots(),
            remote: ptr::null_mut(),
            nr_remote: AtomicU32::new(0),
        }
    }; NR_CLASSES]
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            bins: new_bins(),
            block: AtomicPtr::new(ptr::null_mut()),
            pages: PageCache::new(),
            tag: 0,
            dead: false,
            large_requested: core::sync::atomic::AtomicUsize::new(0),
            large_pages: core::sync::atomic::AtomicUsize::new(0),
            last_gc_ms: 0,
            ticks_left: TICK_ALLOCS,
            registered: false,
            reg_next: ptr::null_mut(),
            reg_prev: ptr::null_mut(),
        }
    }

    /// Objects cached for class `c`.
    pub fn cached(&self, c: usize) -> usize {
        if self.dead {
            return 0;
        }
        self.count(c)
    }

    /// Bin `c`'s stack: its sentinel's address, or null when closed.
    #[inline]
    fn base(&self, c: usize) -> *mut *mut u8 {
        let block = self.block.load(Relaxed);
        if block.is_null() {
            return block;
        }
        block.wrapping_add(SLOTS.bin[c] as usize)
    }

    /// Objects on bin `c`'s stack. Another thread's reading may race with
    /// the owner opening or closing the bins: then the figure is clamped,
    /// never out of range.
    fn count(&self, c: usize) -> usize {
        let base = self.base(c);
        let top = self.bins[c].top.load(Relaxed);
        if base.is_null() || top == no_slots() {
            return 0;
        }
        ((top as usize).wrapping_sub(base as usize) / core::mem::size_of::<*mut u8>())
            .min(CLASSES[c].max_cached as usize)
    }

    /// Bytes of free objects this cache holds.
    pub fn cached_bytes(&self) -> usize {
        if self.dead {
            return 0;
        }
        (0..NR_CLASSES)
            .map(|c| (self.count(c) + self.bins[c].nr_remote.load(Relaxed) as usize) * CLASSES[c].size as usize)
            .sum()
    }

    /// Pages this cache's page bins hold.
    pub fn cached_pages(&self) -> usize {
        if self.dead {
            return 0;
        }
        self.pages.cached_pages()
    }

    /// Blocks of `order` (0..=7) this cache's page bin holds.
    pub fn cached_blocks(&self, order: u32) -> usize {
        if self.dead || order as usize >= NR_PAGE_BINS {
            return 0;
        }
        self.pages.count(order)
    }

    /// Objects of class `c` freed here from other caches' slabs, waiting to
    /// go back as a batch.
    pub fn remote(&self, c: usize) -> usize {
        if self.dead {
            return 0;
        }
        self.bins[c].nr_remote.load(Relaxed) as usize
    }

    /// Whether the cache was killed.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Adds a large block's requested bytes and pages (wrapping deltas, so
    /// a free passes their negation) to this cache's sums, or to the slab
    /// layer's when the cache is not registered (or is dead) and statistics
    /// would not see it.
    #[inline]
    pub(crate) fn account_large(&mut self, slabs: &SlabAllocator<'_>, requested: usize, pages: usize) {
        if self.tag == 0 {
            // A thread whose first allocation is a large one: set the cache
            // up (tag, registration, exit flush) as a small one would.
            self.on_slow_path(slabs, 0);
        }
        if self.registered && !self.dead {
            self.large_requested.store(self.large_requested.load(Relaxed).wrapping_add(requested), Relaxed);
            self.large_pages.store(self.large_pages.load(Relaxed).wrapping_add(pages), Relaxed);
        } else {
            slabs.account_large(requested, pages);
        }
    }

    /// Gives every cached object back and stops caching: from now on every
    /// allocation and free of this cache takes the slab layer's locked
    /// one-object path. For a thread's exit, when the cache's memory lives on
    /// but nothing would flush it again.
    pub fn kill(&mut self, slabs: &SlabAllocator<'_>) {
        if self.dead {
            return;
        }
        self.flush_all(slabs);
        self.pages.close(slabs.pages);
        slabs.unregister(self);
        self.dead = true;
        if self.tag != 0 {
            // Its slabs are anyone's now (see `adopt_idle`).
            slabs.tag_seen_ms[self.tag as usize].store(0, Relaxed);
        }
        for bin in &mut self.bins {
            bin.top.store(no_slots(), Relaxed);
            bin.limit = no_slots();
            bin.remote = ptr::null_mut();
        }
        let block = self.block.swap(ptr::null_mut(), Relaxed);
        if !block.is_null() {
            // SAFETY: the block came from `open_bins`; no bin points into it
            // any more.
            unsafe { slabs.free_meta(block, SLOT_BLOCK_ORDER) };
        }
    }

    /// An object of class `c` (panics if `c >= NR_CLASSES`).
    #[inline(always)]
    pub fn alloc(&mut self, slabs: &SlabAllocator<'_>, c: usize) -> *mut u8 {
        assert!(c < NR_CLASSES, "no size class {c}");
        // SAFETY: checked just above.
        unsafe { self.alloc_unchecked(slabs, c) }
    }

    /// An object of class `c`: the fast path pops the cache's list.
    ///
    /// # Safety
    /// `c < NR_CLASSES` (as every index from `size_to_class` / `class_for`
    /// is); the global allocator's fast path saves the bounds check.
    #[inline(always)]
    pub(crate) unsafe fn alloc_unchecked(&mut self, slabs: &SlabAllocator<'_>, c: usize) -> *mut u8 {
        debug_assert!(c < NR_CLASSES);
        // SAFETY: the caller guarantees `c < NR_CLASSES`.
        let bin = unsafe { self.bins.get_unchecked_mut(c) };
        let top = bin.top.load(Relaxed);
        // SAFETY: `top` always points at a readable word: a slot of an open
        // stack, its sentinel, or `NO_SLOTS`.
        let obj = unsafe { top.read() };
        if !obj.is_null() {
            // SAFETY: a non-null word is a slot above the sentinel, so the
            // word below it is a slot or the sentinel.
            let below = unsafe { top.sub(1) };
            // SAFETY: as above.
            prefetch(unsafe { below.read() });
            bin.top.store(below, Relaxed);
            self.ticks_left -= 1;
            if self.ticks_left == 0 {
                // A tail call, so that the fast path saves no registers.
                return self.on_tick(slabs, c, obj);
            }
            return obj;
        }
        self.refill(slabs, c)
    }

    /// A block of `2^order` pages (`order < NR_PAGE_BINS`) of
    /// migratetype `MIGRATE_MOVABLE`, prepared as `alloc_pages` prepares it:
    /// the fast path pops the page bin; an empty bin refills from this
    /// CPU's PCP, half a bin under one try-lock.
    #[inline(always)]
    pub(crate) fn alloc_block(&mut self, slabs: &SlabAllocator<'_>, order: u32, gfp: Gfp) -> Option<&'static PageDesc> {
        if let Some(d) = self.pages.pop(order, gfp) {
            self.ticks_left -= 1;
            if self.ticks_left == 0 {
                self.tick(slabs, NR_CLASSES + order as usize);
            }
            return Some(d);
        }
        self.refill_block(slabs, order, gfp)
    }

    #[cold]
    #[inline(never)]
    fn refill_block(&mut self, slabs: &SlabAllocator<'_>, order: u32, gfp: Gfp) -> Option<&'static PageDesc> {
        if !self.dead {
            self.on_slow_path(slabs, NR_CLASSES + order as usize);
        }
        if !self.dead && self.pages.refill(slabs.pages, order) > 0 {
            return self.pages.pop(order, gfp);
        }
        // Dead, or the PCP was busy or dry: one block the ordinary way,
        // slow path included.
        slabs.pages.alloc_block(gfp, order, CACHED_MT)
    }

    /// Frees a block of `2^order` pages (`order < NR_PAGE_BINS`)
    /// that `alloc_block` (or the page allocator) handed out: onto the page
    /// bin, or, when it is full, after half the bin went back to the PCP.
    /// A block that is not an allocated block of this order aborts with
    /// `bad_page`, as `free_pages` does.
    #[inline(always)]
    pub(crate) fn free_block(&mut self, slabs: &SlabAllocator<'_>, d: &'static PageDesc, order: u32) {
        crate::page_alloc::free_pages_prepare(d, order);
        if d.migratetype.get() != CACHED_MT || !self.pages.push(d, order) {
            self.free_block_slow(slabs, d, order);
        }
    }

    #[cold]
    #[inline(never)]
    fn free_block_slow(&mut self, slabs: &SlabAllocator<'_>, d: &'static PageDesc, order: u32) {
        if d.migratetype.get() == CACHED_MT && !self.dead {
            self.on_slow_path(slabs, NR_CLASSES + order as usize);
            if !self.dead {
                if self.pages.push(d, order) {
                    return;
                }
                self.pages.flush_half(slabs.pages, order);
                if self.pages.push(d, order) {
                    return;
                }
            }
        }
        slabs.pages.free_block_prepared(d, order);
    }

    /// Every `TICK_ALLOCS` allocations served from the cache, one becomes a
    /// slow call (jemalloc's tcache ticker): a thread whose allocations all
    /// hit its cache still runs the purge tick and its own cache's decay now
    /// and then, without which an idle service that only makes small
    /// allocations would never give its burst back.
    #[cold]
    #[inline(never)]
    fn on_tick(&mut self, slabs: &SlabAllocator<'_>, c: usize, obj: *mut u8) -> *mut u8 {
        self.tick(slabs, c);
        obj
    }

    /// The tick itself, for the object and the page-block fast paths (`c`
    /// as for `on_slow_path`).
    #[cold]
    fn tick(&mut self, slabs: &SlabAllocator<'_>, c: usize) {
        self.ticks_left = TICK_ALLOCS;
        self.on_slow_path(slabs, c);
    }

    #[cold]
    #[inline(never)]
    fn refill(&mut self, slabs: &SlabAllocator<'_>, c: usize) -> *mut u8 {
        if self.dead {
            return slabs.alloc_one(c);
        }
        debug_assert_eq!(self.count(c), 0, "class {c}: refill of a stack that is not empty");
        self.on_slow_path(slabs, c);
        if self.dead {
            // Registering found the thread already exiting.
            return slabs.alloc_one(c);
        }
        self.open_bin(c);
        let base = self.base(c);
        // SAFETY: the cache is open, so `base` is the stack's sentinel; the
        // stack is empty and holds `max_cached >= overflow` slots above it.
        let n = unsafe { slabs.refill(c, self.tag, base.add(1)) };
        if n == 0 {
            return ptr::null_mut();
        }
        // SAFETY: slots `1..=n` hold the objects written; the newest is the
        // caller's, the rest stay.
        unsafe {
            self.bins[c].top.store(base.add(n - 1), Relaxed);
            base.add(n).read()
        }
    }

    /// Frees an object of class `c`: the fast path pushes it on the list.
    ///
    /// # Safety
    /// `obj` must be a live object of class `c` from `slabs`, not used again.
    #[inline(always)]
    pub unsafe fn free(&mut self, slabs: &SlabAllocator<'_>, c: usize, obj: *mut u8) {
        debug_assert!(c < NR_CLASSES);
        if c < NR_SUBLINE_CLASSES {
            // SAFETY: the caller gives a live object of this layer, which
            // lies in a slab of a live section.
            let owner = unsafe { pfn_to_desc(obj as usize >> PAGE_SHIFT) }.slab_owner.load(Relaxed);
            if owner != self.tag {
                // SAFETY: forwarded.
                return unsafe { self.free_remote(slabs, c, obj) };
            }
        }
        // SAFETY: a live object of class `c` means `c < NR_CLASSES`.
        let bin = unsafe { self.bins.get_unchecked_mut(c) };
        let top = bin.top.load(Relaxed);
        if top >= bin.limit {
            // SAFETY: forwarded.
            return unsafe { self.free_slow(slabs, c, obj) };
        }
        // SAFETY: below the limit; the object is free now and ours to keep.
        unsafe { bin.push(top, obj) }
    }

    /// A free of an object from a slab another cache took it from: onto the
    /// remote list, which goes back to the class a whole batch at a time (a
    /// transfer slot takes it in O(1), and the next refill of any thread
    /// takes it from there).
    ///
    /// # Safety
    /// As for `free`.
    #[inline(never)]
    unsafe fn free_remote(&mut self, slabs: &SlabAllocator<'_>, c: usize, obj: *mut u8) {
        // The common case, an opened live cache (its remote arrays exist:
        // `remote` is set by `open_bins` and cleared by `kill`) with room in
        // the array, is a push and nothing else. A thread that took over a class from a live thread
        // (glibc_simple's second thread, on the main thread's objects)
        // frees every object this way; with the rest of this path in one
        // function, its prologue and epilogue were twenty instructions a free.
        // SAFETY: a live object of class `c` means `c < NR_CLASSES`.
        let bin = unsafe { self.bins.get_unchecked_mut(c) };
        let n = bin.nr_remote.load(Relaxed);
        // SAFETY: as above.
        let batch = unsafe { CLASSES.get_unchecked(c) }.batch as u32;
        if !bin.remote.is_null() && n + 1 < batch {
            // SAFETY: a live cache's remote array holds `batch` slots, and
            // `n + 1 < batch`.
            unsafe { bin.remote.add(n as usize).write(obj) };
            bin.nr_remote.store(n + 1, Relaxed);
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.free_remote_slow(slabs, c, obj) }
    }

    /// The rest of `free_remote`: a cache's first slow path, a dead cache,
    /// a full remote array.
    ///
    /// # Safety
    /// As for `free`.
    #[cold]
    #[inline(never)]
    unsafe fn free_remote_slow(&mut self, slabs: &SlabAllocator<'_>, c: usize, obj: *mut u8) {
        if self.tag == 0 && !self.dead {
            // The first slow path of a thread that frees before it allocates.
            self.on_slow_path(slabs, c);
        }
        if self.dead {
            // SAFETY: forwarded.
            return unsafe { slabs.free_one(c, obj) };
        }
        let bin = &mut self.bins[c];
        let n = bin.nr_remote.load(Relaxed);
        // SAFETY: a live cache's remote array holds `batch` slots and is
        // flushed when full, so slot `n < batch` is free.
        unsafe { bin.remote.add(n as usize).write(obj) };
        let n = n + 1;
        bin.nr_remote.store(n, Relaxed);
        if n >= CLASSES[c].batch as u32 {
            self.on_slow_path(slabs, c);
            if self.dead || self.adopt_idle(slabs, c) == 0 {
                self.flush_remote(slabs, c);
            }
        }
    }

    /// Takes for this cache's own the objects in class `c`'s full remote
    /// array whose slabs belong to a cache that has taken no slow path for
    /// `IDLE_OWNER_MS` or is dead: each such slab is tagged as this cache's,
    /// so the object goes on this cache's stack and later frees of objects
    /// from it stay here. Returns how many it took.
    ///
    /// Why: a thread that takes over another's work (glibc_simple's second
    /// thread, on the objects the main thread flushed before it waited)
    /// refills with the other's objects, frees each one remotely and hands
    /// the batch back, and the next refill brings the same objects back:
    /// a remote free and a class-lock round trip per batch, for as long as
    /// it runs, with no owner there to share a cache line with. A cache in
    /// use takes a slow path every few batches, so its slabs stay its own.
    fn adopt_idle(&mut self, slabs: &SlabAllocator<'_>, c: usize) -> usize {
        let tag = self.tag;
        // This cache's own entry: the time its latest slow path read (0,
        // so nothing counts as idle, if a cache sharing the tag just died).
        let now = slabs.tag_seen_ms[tag as usize].load(Relaxed);
        let slab_pages = 1usize << CLASSES[c].slab_order;
        self.open_bin(c);
        let bin = &mut self.bins[c];
        let n = bin.nr_remote.load(Relaxed) as usize;
        let (mut kept, mut adopted) = (0, 0);
        // The previous object's owner and verdict: a batch is mostly a few
        // slabs, so most objects need no look at another cache's line.
        let mut last: Option<(u8, bool)> = None;
        for i in 0..n {
            // SAFETY: the remote array's first `n` slots hold freed objects.
            let obj = unsafe { bin.remote.add(i).read() };
            let pfn = obj as usize >> PAGE_SHIFT;
            // SAFETY: an object of this layer lies in a slab of a live
            // section.
            let owner = unsafe { pfn_to_desc(pfn) }.slab_owner.load(Relaxed);
            let idle = match last {
                // A slab this loop has just taken.
                _ if owner == tag => true,
                Some((o, idle)) if o == owner => idle,
                _ => now.saturating_sub(slabs.tag_seen_ms[owner as usize].load(Relaxed)) >= IDLE_OWNER_MS,
            };
            last = Some((owner, idle));
            let top = bin.top.load(Relaxed);
            if idle && top < bin.limit {
                if owner != tag {
                    // SAFETY: `obj` lies in a slab of class `c`, a block of
                    // `slab_pages` pages aligned to its size, so masking its
                    // page number gives the slab's first page.
                    unsafe { set_slab_owner(pfn & !(slab_pages - 1), slab_pages, tag) };
                }
                // SAFETY: below the limit; the object is free and, with its
                // slab, this cache's now.
                unsafe { bin.push(top, obj) };
                adopted += 1;
            } else {
                // SAFETY: `kept <= i`, a slot already read.
                unsafe { bin.remote.add(kept).write(obj) };
                kept += 1;
            }
        }
        bin.nr_remote.store(kept as u32, Relaxed);
        adopted
    }

    /// Hands class `c`'s remote list back to the slab layer.
    fn flush_remote(&mut self, slabs: &SlabAllocator<'_>, c: usize) {
        let bin = &mut self.bins[c];
        let n = bin.nr_remote.load(Relaxed) as usize;
        if n == 0 || self.dead {
            return;
        }
        bin.nr_remote.store(0, Relaxed);
        // SAFETY: the remote array's first `n` slots hold freed objects of
        // class `c`, now the layer's.
        unsafe { slabs.flush(c, bin.remote, n, true) };
    }

    /// A free that finds the list full: hands its oldest `overflow` objects
    /// of class `c` back to the slab layer first (or, for a dead cache,
    /// frees the object alone).
    ///
    /// # Safety
    /// As for `free`.
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(&mut self, slabs: &SlabAllocator<'_>, c: usize, obj: *mut u8) {
        if !self.dead {
            self.on_slow_path(slabs, c);
        }
        if self.dead {
            // SAFETY: forwarded.
            return unsafe { slabs.free_one(c, obj) };
        }
        self.open_bin(c);
        if self.bins[c].top.load(Relaxed) >= self.bins[c].limit {
            self.flush_batch(slabs, c, CLASSES[c].overflow as u32, true);
        }
        let bin = &mut self.bins[c];
        // SAFETY: the stack has room now (opened, or just flushed); the
        // object is free now and ours to keep.
        unsafe { bin.push(bin.top.load(Relaxed), obj) }
    }

    /// Hands the `n` oldest objects of class `c`'s stack (all, if fewer)
    /// back to the slab layer, whole batches into transfer slots if
    /// `to_transfer` (see `SlabAllocator::flush`).
    fn flush_batch(&mut self, slabs: &SlabAllocator<'_>, c: usize, n: u32, to_transfer: bool) {
        let count = self.count(c);
        let n = (n as usize).min(count);
        if n == 0 {
            return;
        }
        let base = self.base(c);
        // The oldest objects go (the bottom of the stack, coldest in this
        // CPU's cache); the newest stay for the next allocations.
        // SAFETY: a count above 0 means an open stack whose slots
        // `1..=count` hold objects: the first `n` go to the layer, and the
        // rest move down over them, inside the stack.
        unsafe {
            slabs.flush(c, base.add(1), n, to_transfer);
            ptr::copy(base.add(1 + n), base.add(1), count - n);
            self.bins[c].top.store(base.add(count - n), Relaxed);
        }
    }

    /// What a refill or flush does besides its own work, being on a slow
    /// path anyway (`c`: the class, or `NR_CLASSES + order` for a page bin,
    /// whose list is kept): register the cache (first time), give back every
    /// other class's list and page bin once per decay time (a list in steady use costs one
    /// refill per decay time to rebuild; an idle one stops pinning memory),
    /// and run a purge tick of the page allocator if one is due.
    #[inline]
    fn on_slow_path(&mut self, slabs: &SlabAllocator<'_>, c: usize) {
        if self.tag == 0 {
            // The first slow path: tag, register, arm, open.
            self.tag = slabs.next_tag();
            if slabs.track_caches {
                // SAFETY: only the process-wide slab layer tracks caches, and
                // its caches live in pages of their own from
                // `new_thread_cache`, which do not move and are freed only
                // after `kill` has unregistered them (`global::ExitFlush`).
                unsafe { slabs.register(self) };
            }
            if let Some(hook) = slabs.exit_hook {
                if !hook() {
                    // Too late: the thread is exiting and nothing would
                    // flush this cache again. Serve it uncached.
                    self.kill(slabs);
                    return;
                }
            }
            if !self.open_bins(slabs) {
                // No page for the slot block: serve this thread uncached.
                self.kill(slabs);
                return;
            }
            self.pages.open();
        }
        let now = slabs.pages.now_ms();
        let seen = &slabs.tag_seen_ms[self.tag as usize];
        if seen.load(Relaxed) != now {
            seen.store(now, Relaxed);
        }
        if now.saturating_sub(self.last_gc_ms) >= slabs.pages.decay_ms() {
            self.last_gc_ms = now;
            for other in (0..NR_CLASSES).filter(|&o| o != c) {
                self.flush_batch(slabs, other, u32::MAX, false);
                self.flush_remote(slabs, other);
            }
            for order in (0..NR_PAGE_BINS).filter(|&o| o + NR_CLASSES != c) {
                self.pages.flush_order(slabs.pages, order as u32);
            }
        }
        slabs.pages.maybe_purge_at(now);
    }

    /// Opens bin `c`'s stack in the slot block, if it is still closed: its
    /// first slow path does this, not `open_bins`, so that a thread writes
    /// (and makes resident) only the pages of the stacks it uses; the whole
    /// layout is 19 pages. Call only while the cache is open.
    #[inline]
    fn open_bin(&mut self, c: usize) {
        let bin = &mut self.bins[c];
        if bin.limit != no_slots() {
            return;
        }
        let block = self.block.load(Relaxed);
        debug_assert!(!block.is_null());
        // SAFETY: the layout's offsets lie inside the block, which is ours.
        unsafe {
            let base = block.add(SLOTS.bin[c] as usize);
            base.write(ptr::null_mut());
            bin.top.store(base, Relaxed);
            bin.limit = base.add(CLASSES[c].max_cached as usize);
        }
    }

    /// Takes the slot block (every stack in it stays closed until its first
    /// slow path, see `open_bin`) and points the remote arrays into it;
    /// false if the page allocator had no block.
    fn open_bins(&mut self, slabs: &SlabAllocator<'_>) -> bool {
        let block = slabs.alloc_meta(SLOT_BLOCK_ORDER);
        if block.is_null() {
            return false;
        }
        for (c, bin) in self.bins.iter_mut().enumerate().take(NR_SUBLINE_CLASSES) {
            // SAFETY: the layout's offsets lie inside the block
            // (`SLOT_BLOCK_ORDER` is sized from it), which is ours.
            bin.remote = unsafe { block.add(SLOTS.remote[c] as usize) };
        }
        self.block.store(block, Relaxed);
        true
    }

    /// Gives every cached page block back to the PCP.
    pub fn flush_pages(&mut self, slabs: &SlabAllocator<'_>) {
        if !self.dead {
            self.pages.flush_all(slabs.pages);
        }
    }

    /// Gives every cached object back (`trim`, and `kill` at thread exit).
    pub fn flush_all(&mut self, slabs: &SlabAllocator<'_>) {
        if self.dead {
            return;
        }
        for c in 0..NR_CLASSES {
            self.flush_batch(slabs, c, u32::MAX, false);
            self.flush_remote(slabs, c);
        }
        self.pages.flush_all(slabs.pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_alloc::Config;

    fn private_pages() -> &'static PageAllocator {
        Box::leak(Box::new(PageAllocator::new(Config { nr_cpus: 1, ..Config::small(4096, 4) })))
    }

    /// `private_pages` with its first section mapped, so that refills find
    /// the zone stocked.
    fn mapped_private_pages() -> &'static PageAllocator {
        let pages = private_pages();
        let warm = pages.alloc_pages(Gfp::DEFAULT, 0).unwrap();
        pages.free_pages(warm, 0);
        pages
    }

    #[test]
    fn page_bins_refill_by_half_flush_by_half_and_die_empty() {
        use crate::page_cache::PAGE_BIN_MAX;
        let pages = mapped_private_pages();
        let slabs = SlabAllocator::new(pages);
        let mut tc = ThreadCache::new();
        for order in 0..NR_PAGE_BINS as u32 {
            let max = PAGE_BIN_MAX[order as usize] as usize;
            // The first allocation opens the cache and takes half a bin.
            let first = tc.alloc_block(&slabs, order, Gfp::DEFAULT).unwrap();
            assert_eq!(tc.cached_blocks(order), max.div_ceil(2) - 1, "order {order}");
            let mut held = vec![first];
            held.extend((0..3 * max).map(|_| tc.alloc_block(&slabs, order, Gfp::DEFAULT).unwrap()));
            let mut seen: Vec<usize> = held.iter().map(|d| desc_to_pfn(d)).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), held.len(), "order {order}: a block handed out twice");
            pages.check().unwrap();
            for d in held {
                tc.free_block(&slabs, d, order);
                assert!(tc.cached_blocks(order) <= max);
                assert_eq!(d.state.get(), PageState::Cached, "the freed block is the bin's top");
                pages.check().unwrap();
            }
            assert!(tc.cached_blocks(order) > max / 2, "order {order}: a full bin flushes only half");
        }
        assert_eq!(tc.cached_pages(), (0..NR_PAGE_BINS).map(|o| (PAGE_BIN_MAX[o] as usize) << o).sum::<usize>());
        tc.kill(&slabs);
        assert_eq!(tc.cached_pages(), 0);
        // Dead: blocks go straight to the PCP and come from it.
        let d = tc.alloc_block(&slabs, 0, Gfp::DEFAULT).unwrap();
        tc.free_block(&slabs, d, 0);
        assert_eq!(d.state.get(), PageState::Pcp);
        pages.drain_all_pages();
        pages.check().unwrap();
        let (free, managed) = {
            let zone = pages.zone.lock();
            (zone.free_pages, zone.managed_pages)
        };
        assert_eq!(free, managed, "pages lost");
    }

    #[test]
    fn slab_lifecycle_partial_full_empty_and_back_to_pages() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let c = size_to_class(256);
        let objs = CLASSES[c].objs as usize;
        // Fill one slab exactly: it leaves the partial list when full.
        let first: Vec<*mut u8> = (0..objs).map(|_| slabs.alloc_one(c)).collect();
        assert!(first.iter().all(|p| !p.is_null()));
        let info = slabs.class_info(c);
        assert_eq!((info.num_slabs, info.active_objs, info.slabs_allocated), (1, objs, 1));
        slabs.check().unwrap();
        // One more object needs a second slab.
        let extra = slabs.alloc_one(c);
        assert_eq!(slabs.class_info(c).num_slabs, 2);
        // Emptying the first slab keeps it (one empty slab is kept)...
        for &p in &first {
            // SAFETY: live objects of class `c`.
            unsafe { slabs.free_one(c, p) };
            slabs.check().unwrap();
        }
        let info = slabs.class_info(c);
        assert_eq!((info.num_slabs, info.active_objs, info.slabs_freed), (2, 1, 0));
        // ...emptying the second gives one back to the page allocator.
        // SAFETY: a live object of class `c`.
        unsafe { slabs.free_one(c, extra) };
        let info = slabs.class_info(c);
        assert_eq!((info.num_slabs, info.active_objs, info.slabs_freed), (1, 0, 1));
        slabs.shrink();
        assert_eq!(slabs.class_info(c).num_slabs, 0);
        slabs.check().unwrap();
        pages.drain_all_pages();
        pages.check().unwrap();
        let z = pages.zoneinfo();
        assert_eq!(z.free_pages, z.managed_pages, "a slab page was lost");
    }

    #[test]
    fn thread_cache_refills_and_flushes_in_batches() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let mut tc = ThreadCache::new();
        let c = size_to_class(64);
        let SizeClass { batch, max_cached, .. } = CLASSES[c];
        let (batch, max_cached) = (batch as usize, max_cached as usize);
        // The first allocation refills one batch; the next batch-1 come from it.
        let mut held: Vec<*mut u8> = (0..batch).map(|_| tc.alloc(&slabs, c)).collect();
        assert_eq!(slabs.class_info(c).refills, 1);
        assert_eq!(tc.cached(c), 0);
        held.push(tc.alloc(&slabs, c));
        assert_eq!(slabs.class_info(c).refills, 2);
        assert_eq!(tc.cached(c), batch - 1);
        // Distinct, 64-byte objects.
        let mut sorted = held.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), held.len());
        // Fill the cache to its bound by freeing more than it holds: each
        // flush hands back `overflow` objects, whole batches that go into
        // transfer slots.
        let more: Vec<*mut u8> = (0..max_cached).map(|_| tc.alloc(&slabs, c)).collect();
        held.extend(more);
        let refills = slabs.class_info(c).refills;
        let to_free = tc.cached(c) + held.len();
        for &p in &held {
            // SAFETY: live objects of class `c` from `slabs`.
            unsafe { tc.free(&slabs, c, p) };
            assert!(tc.cached(c) <= max_cached);
        }
        held.clear();
        let info = slabs.class_info(c);
        let overflow = CLASSES[c].overflow as usize;
        let expected_flushes = (to_free - max_cached).div_ceil(overflow);
        assert_eq!(info.flushes as usize, expected_flushes);
        assert_eq!(info.transfer_objs, expected_flushes * overflow);
        // A refill now takes whole transfer batches, up to `overflow`
        // objects, under one lock.
        for _ in 0..tc.cached(c) + 1 {
            held.push(tc.alloc(&slabs, c));
        }
        let info = slabs.class_info(c);
        assert_eq!(info.refills, refills + 1);
        assert_eq!(info.transfer_hits, 1);
        assert_eq!(info.transfer_objs, (expected_flushes - 1) * overflow);
        assert_eq!(tc.cached(c), overflow - 1);
        // Everything back: no object lost.
        for p in held.drain(..) {
            // SAFETY: as above.
            unsafe { tc.free(&slabs, c, p) };
        }
        tc.flush_all(&slabs);
        slabs.shrink();
        slabs.check().unwrap();
        let info = slabs.class_info(c);
        assert_eq!((info.active_objs, info.num_slabs), (0, 0));
    }

    #[test]
    fn transfer_slots_hold_about_the_same_bytes_for_every_class() {
        for (c, sc) in CLASSES.iter().enumerate() {
            let (slots, batch, size) = (transfer_slots(c), sc.batch as usize, sc.size as usize);
            assert!((MIN_TRANSFER_SLOTS..=MAX_TRANSFER_SLOTS).contains(&slots), "class {c}");
            let bytes = slots * batch * size;
            assert!(bytes <= TRANSFER_BYTES || slots == MIN_TRANSFER_SLOTS, "class {c}: {bytes} bytes held");
            assert!(bytes > TRANSFER_BYTES / 2 || slots == MAX_TRANSFER_SLOTS, "class {c}: only {bytes} bytes held");
            let block = PAGE_SIZE << transfer_order(c);
            assert!(slots * batch * size_of::<*mut u8>() <= block, "class {c}: the slots overrun their block");
        }
        // The 8-byte class's 64-object batches get four times the slots of
        // the 1 KiB class's 16-object ones, and still hold far fewer bytes.
        assert_eq!((transfer_slots(0), transfer_slots(size_to_class(1024))), (MAX_TRANSFER_SLOTS, MIN_TRANSFER_SLOTS));
    }

    #[test]
    fn a_small_class_keeps_every_slot_it_has_then_releases_to_its_slabs() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let c = size_to_class(8);
        let (slots, batch) = (transfer_slots(c), CLASSES[c].batch as usize);
        assert!(slots > 16, "the small classes have more slots than the 16 every class had");
        let objs: Vec<*mut u8> = (0..(slots + 1) * batch).map(|_| slabs.alloc_one(c)).collect();
        assert!(objs.iter().all(|p| !p.is_null()));
        for (i, chunk) in objs.chunks(batch).enumerate() {
            // SAFETY: `batch` live objects of class `c` from `slabs`, freed.
            unsafe { slabs.flush(c, chunk.as_ptr(), batch, true) };
            let info = slabs.class_info(c);
            assert_eq!(info.transfer_objs, (i + 1).min(slots) * batch, "after flush {i}");
            assert_eq!(info.active_objs, objs.len() - i.saturating_sub(slots - 1) * batch, "after flush {i}");
        }
        slabs.check().unwrap();
        slabs.shrink();
        let info = slabs.class_info(c);
        assert_eq!((info.active_objs, info.transfer_objs, info.num_slabs), (0, 0, 0));
        assert_eq!(slabs.meta_bytes(), 0, "the transfer block went back with its batches");
        slabs.check().unwrap();
    }

    #[test]
    fn a_killed_cache_holds_nothing_and_serves_through_the_locked_path() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let mut tc = ThreadCache::new();
        let c = size_to_class(48);
        let p = tc.alloc(&slabs, c);
        assert!(tc.cached(c) > 0);
        // Thread exit: everything cached goes back.
        tc.kill(&slabs);
        assert!(tc.is_dead());
        assert_eq!((tc.cached(c), tc.cached_bytes()), (0, 0));
        assert_eq!(slabs.class_info(c).active_objs, 1, "only the live object is out");
        // Later allocations and frees (other TLS destructors) work and cache
        // nothing: each object goes straight back to its slab.
        let q = tc.alloc(&slabs, c);
        assert!(!q.is_null() && q != p);
        assert_eq!(slabs.class_info(c).active_objs, 2);
        // SAFETY: live objects of class `c` from `slabs`.
        unsafe {
            tc.free(&slabs, c, q);
            tc.free(&slabs, c, p);
        }
        assert_eq!(tc.cached(c), 0);
        assert_eq!(slabs.class_info(c).active_objs, 0);
        slabs.check().unwrap();
    }

    #[test]
    fn a_cache_first_used_during_thread_exit_is_never_armed() {
        let pages = private_pages();
        // The exit hook says the thread is already exiting.
        let slabs = slab_allocator_new(pages, true, Some(|| false));
        let mut tc = ThreadCache::new();
        let c = size_to_class(100);
        let p = tc.alloc(&slabs, c);
        assert!(!p.is_null());
        assert!(tc.is_dead(), "nothing would flush it: it must not cache");
        assert_eq!(slabs.class_info(c).active_objs, 1);
        // SAFETY: a live object of class `c`.
        unsafe { tc.free(&slabs, c, p) };
        assert_eq!(slabs.class_info(c).active_objs, 0);
        slabs.check().unwrap();
    }

    /// `private_pages` on a clock that moves only when the test says, so
    /// that no pause of the test makes a cache look idle (`adopt_idle`).
    fn pages_on_clock(clock: fn() -> u64) -> &'static PageAllocator {
        Box::leak(Box::new(PageAllocator::new(Config { nr_cpus: 1, clock: Some(clock), ..Config::small(4096, 4) })))
    }

    #[test]
    fn small_objects_of_another_threads_slabs_go_back_in_batches_and_are_not_reused() {
        fn clock() -> u64 {
            1000
        }
        let pages = pages_on_clock(clock);
        let slabs = SlabAllocator::new(pages);
        let (mut owner, mut other) = (ThreadCache::new(), ThreadCache::new());
        let c = size_to_class(16);
        assert!(c < NR_SUBLINE_CLASSES);
        let batch = CLASSES[c].batch as usize;
        // The owner's objects sit side by side, several to a cache line.
        let mine: Vec<*mut u8> = (0..batch).map(|_| owner.alloc(&slabs, c)).collect();
        // The other thread frees one: it is kept apart, not handed out again.
        // SAFETY: live objects of class `c` from `slabs`.
        unsafe { other.free(&slabs, c, mine[0]) };
        assert_eq!((other.cached(c), other.remote(c)), (0, 1));
        let its_own = other.alloc(&slabs, c);
        assert_ne!(its_own, mine[0]);
        let line = |p: *mut u8| p as usize / CACHE_LINE;
        assert!(mine.iter().all(|&p| line(p) != line(its_own)), "a fresh batch shares no line with the owner's");
        // That batch came from the owner's slab, which stays the owner's: the
        // other thread gives back even the objects it took from it.
        // SAFETY: as above.
        unsafe { other.free(&slabs, c, its_own) };
        assert_eq!(other.remote(c), 2);
        // They go back as one batch, once there is a batch of them.
        let flushes = slabs.class_info(c).flushes;
        for &p in &mine[1..] {
            // SAFETY: as above.
            unsafe { other.free(&slabs, c, p) };
        }
        let info = slabs.class_info(c);
        assert_eq!(info.flushes, flushes + 1);
        assert_eq!(info.transfer_objs, batch);
        assert_eq!(other.remote(c), 1);
        // The owner's own frees stay in its cache.
        let o = owner.alloc(&slabs, c);
        let cached = owner.cached(c);
        // SAFETY: as above.
        unsafe { owner.free(&slabs, c, o) };
        assert_eq!((owner.cached(c), owner.remote(c)), (cached + 1, 0));
        // A slab the other thread starts is its own.
        let c2 = size_to_class(32);
        let q = other.alloc(&slabs, c2);
        let cached = other.cached(c2);
        // SAFETY: a live object of class `c2`.
        unsafe { other.free(&slabs, c2, q) };
        assert_eq!((other.cached(c2), other.remote(c2)), (cached + 1, 0));
        // Objects of a line or more are not checked: the free keeps them.
        let big = size_to_class(64);
        let b = owner.alloc(&slabs, big);
        // SAFETY: a live object of class `big`.
        unsafe { other.free(&slabs, big, b) };
        assert_eq!((other.cached(big), other.remote(big)), (1, 0));
        owner.flush_all(&slabs);
        other.flush_all(&slabs);
        slabs.shrink();
        slabs.check().unwrap();
        assert_eq!(slabs.class_info(c).active_objs, 0);
        assert_eq!(slabs.class_info(big).active_objs, 0);
    }

    #[test]
    fn the_slabs_of_an_idle_or_dead_cache_are_taken_over_by_the_thread_freeing_their_objects() {
        use core::sync::atomic::AtomicU64;
        static NOW: AtomicU64 = AtomicU64::new(1000);
        fn clock() -> u64 {
            NOW.load(Relaxed)
        }
        let pages = pages_on_clock(clock);
        let slabs = SlabAllocator::new(pages);
        let (mut owner, mut other) = (ThreadCache::new(), ThreadCache::new());
        let c = size_to_class(16);
        let batch = CLASSES[c].batch as usize;
        let take = |tc: &mut ThreadCache| (0..batch).map(|_| tc.alloc(&slabs, c)).collect::<Vec<_>>();
        // A working owner: a full remote array goes back as a batch.
        let first = take(&mut owner);
        let flushes = slabs.class_info(c).flushes;
        for &p in &first {
            // SAFETY: live objects of class `c` from `slabs`.
            unsafe { other.free(&slabs, c, p) };
        }
        assert_eq!(slabs.class_info(c).flushes, flushes + 1);
        assert_eq!((other.cached(c), other.remote(c)), (0, 0));
        // The owner takes no slow path for the idle time: the next full
        // array stays with the thread that freed it, and so do its slabs.
        let second = take(&mut owner);
        NOW.fetch_add(IDLE_OWNER_MS, Relaxed);
        let flushes = slabs.class_info(c).flushes;
        for &p in &second {
            // SAFETY: as above.
            unsafe { other.free(&slabs, c, p) };
        }
        assert_eq!(slabs.class_info(c).flushes, flushes, "nothing went back to the class");
        assert_eq!((other.cached(c), other.remote(c)), (batch, 0));
        let reused = other.alloc(&slabs, c);
        assert!(second.contains(&reused), "the objects are handed out again where they were freed");
        // SAFETY: as above.
        unsafe { other.free(&slabs, c, reused) };
        assert_eq!((other.cached(c), other.remote(c)), (batch, 0), "its slab is the freeing thread's now");
        // The owner's slabs it still has objects in, freed by the owner
        // itself, are no longer its own: they go to its remote array.
        let o = owner.alloc(&slabs, c);
        let slab_taken = second.iter().any(|&p| p as usize >> PAGE_SHIFT == o as usize >> PAGE_SHIFT);
        // SAFETY: as above.
        unsafe { owner.free(&slabs, c, o) };
        assert_eq!(owner.remote(c), slab_taken as usize);
        // A dead cache's slabs are taken at once, with no wait (another
        // class, whose slabs are all the owner's).
        let c2 = size_to_class(32);
        let batch2 = CLASSES[c2].batch as usize;
        let third: Vec<_> = (0..batch2).map(|_| owner.alloc(&slabs, c2)).collect();
        owner.kill(&slabs);
        let mut third_freer = ThreadCache::new();
        let flushes = slabs.class_info(c2).flushes;
        for &p in &third {
            // SAFETY: live objects of class `c2` from `slabs`.
            unsafe { third_freer.free(&slabs, c2, p) };
        }
        assert_eq!(slabs.class_info(c2).flushes, flushes);
        assert_eq!((third_freer.cached(c2), third_freer.remote(c2)), (batch2, 0));
        other.flush_all(&slabs);
        third_freer.flush_all(&slabs);
        slabs.shrink();
        slabs.check().unwrap();
        assert_eq!(slabs.class_info(c).active_objs, 0);
        assert_eq!(slabs.class_info(c2).active_objs, 0);
    }

    #[test]
    fn a_refill_hands_out_a_new_slab_in_address_order() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let mut tc = ThreadCache::new();
        for size in [8usize, 48, 640] {
            let c = size_to_class(size);
            let n = 3 * CLASSES[c].batch as usize;
            let got: Vec<usize> = (0..n).map(|_| tc.alloc(&slabs, c) as usize).collect();
            // Within each slab, each object is the next one up: the program
            // walks memory forward, which is what hardware prefetchers follow.
            let slab_bytes = PAGE_SIZE << CLASSES[c].slab_order;
            for w in got.windows(2) {
                if w[0] / slab_bytes == w[1] / slab_bytes {
                    assert_eq!(w[1], w[0] + class_size(c), "class {}: {:#x} then {:#x}", class_size(c), w[0], w[1]);
                }
            }
            for p in got {
                // SAFETY: live objects of class `c`.
                unsafe { tc.free(&slabs, c, p as *mut u8) };
            }
        }
        tc.flush_all(&slabs);
        slabs.check().unwrap();
    }

    #[test]
    fn every_size_maps_to_the_smallest_class_that_fits() {
        for size in 1..=MAX_SMALL {
            let c = size_to_class(size);
            assert!(class_size(c) >= size, "size {size} class {c}");
            if c > 0 {
                assert!(class_size(c - 1) < size, "size {size} could use class {}", c - 1);
            }
            if size > 64 {
                let waste = class_size(c) - size;
                assert!(waste * 8 < size, "size {size} wastes {waste} in class {}", class_size(c));
            }
        }
        assert_eq!(class_size(NR_CLASSES - 1), MAX_SMALL);
        assert_eq!(class_for(MAX_SMALL + 1, 8), None);
    }

    #[test]
    fn aligned_requests_get_aligned_classes() {
        for align in [16usize, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in (1..=MAX_SMALL).step_by(7) {
                match class_for(size, align) {
                    Some(c) => {
                        let s = class_size(c);
                        assert!(s >= size && s.is_multiple_of(align), "size {size} align {align} -> {s}");
                        // Smallest such class.
                        for smaller in 0..c {
                            let t = class_size(smaller);
                            assert!(!(t >= size && t.is_multiple_of(align)), "size {size} align {align}: {t} fits too");
                        }
                    }
                    None => assert!(size.next_multiple_of(align) > MAX_SMALL),
                }
            }
        }
        assert_eq!(class_for(8, 8192), None);
    }

    #[test]
    fn class_shapes_are_sane() {
        for (c, sc) in CLASSES.iter().enumerate() {
            assert!(sc.slab_order <= 3, "class {c}");
            assert!(sc.objs >= 2, "class {c} has {} objects per slab", sc.objs);
            if sc.size <= 2048 {
                assert!(sc.objs >= 8, "class {c} has {} objects per slab", sc.objs);
            }
            assert!(sc.batch >= 4 && sc.max_cached >= 2 * sc.batch);
            assert!(
                sc.overflow >= sc.batch && sc.overflow.is_multiple_of(sc.batch) && 2 * sc.overflow <= sc.max_cached,
                "class {c}"
            );
            let bytes = PAGE_SIZE << sc.slab_order;
            // Tail waste of a slab: at most a fifth up to 8 KiB; the few classes
            // above, with two or three objects in an order-3 slab, up to a third.
            let limit = if sc.size <= 8192 { 5 } else { 3 };
            assert!((bytes % sc.size as usize) * limit <= bytes, "class {c} ({}) wastes too much of its slab", sc.size);
        }
    }

    /// Pages the zone holds free, after every PCP is drained.
    fn zone_free(pages: &PageAllocator) -> usize {
        pages.drain_all_pages();
        pages.zoneinfo().free_pages
    }

    #[test]
    fn slot_and_transfer_blocks_come_and_go_with_their_users() {
        let pages = mapped_private_pages();
        let slabs = SlabAllocator::new(pages);
        let free0 = zone_free(pages);
        let c = size_to_class(64);
        let batch = CLASSES[c].batch as usize;
        let mut tc = ThreadCache::new();
        let held: Vec<*mut u8> = (0..2 * batch).map(|_| tc.alloc(&slabs, c)).collect();
        let slab_pages = slabs.class_info(c).num_slabs << CLASSES[c].slab_order;
        assert_eq!(slabs.meta_bytes(), SLOT_BLOCK_PAGES * PAGE_SIZE, "the cache's slot block, no transfer block yet");
        assert_eq!(free0 - zone_free(pages), SLOT_BLOCK_PAGES + slab_pages);
        // A full stack's flush keeps whole batches: the class takes its
        // transfer block then.
        for &p in &held {
            // SAFETY: live objects of class `c` from `slabs`.
            unsafe { tc.free(&slabs, c, p) };
        }
        for _ in 0..CLASSES[c].max_cached as usize {
            let p = tc.alloc(&slabs, c);
            // SAFETY: as above.
            unsafe { tc.free(&slabs, c, p) };
        }
        let extra: Vec<*mut u8> = (0..CLASSES[c].max_cached as usize + 1).map(|_| tc.alloc(&slabs, c)).collect();
        for &p in &extra {
            // SAFETY: as above.
            unsafe { tc.free(&slabs, c, p) };
        }
        assert_eq!(slabs.class_info(c).transfer_objs, CLASSES[c].overflow as usize);
        let transfer_pages = 1 << transfer_order(c);
        assert_eq!(slabs.meta_bytes(), (SLOT_BLOCK_PAGES + transfer_pages) * PAGE_SIZE);
        // Thread exit gives the slot block back; shrink the transfer block
        // and the slabs: the zone has every page again.
        tc.kill(&slabs);
        slabs.shrink();
        assert_eq!(slabs.meta_bytes(), 0);
        assert_eq!(zone_free(pages), free0, "a slot or transfer block was lost");
        slabs.check().unwrap();
        pages.check().unwrap();
    }

    #[test]
    fn a_full_stack_flushes_its_oldest_half_and_keeps_the_newest() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let c = size_to_class(32);
        let SizeClass { batch, max_cached, overflow, .. } = CLASSES[c];
        let (batch, max, overflow) = (batch as usize, max_cached as usize, overflow as usize);
        assert_eq!(overflow, 2 * batch, "the 32-byte class hands back two batches");
        let mut tc = ThreadCache::new();
        let objs: Vec<*mut u8> = (0..max + 1).map(|_| tc.alloc(&slabs, c)).collect();
        tc.flush_all(&slabs);
        assert_eq!(tc.cached(c), 0);
        let before = slabs.class_info(c);
        // Free in order: the stack fills with objs[0..max]; the next free
        // sends objs[0..overflow] (the oldest half) to the class.
        for &p in &objs {
            // SAFETY: live objects of class `c` from `slabs`.
            unsafe { tc.free(&slabs, c, p) };
        }
        assert_eq!(tc.cached(c), max + 1 - overflow);
        let info = slabs.class_info(c);
        assert_eq!((info.flushes - before.flushes, info.transfer_objs), (1, overflow));
        // Allocations pop newest first: objs[max], objs[max-1], ... down
        // to objs[overflow], then the next comes from the transfer batches.
        for i in (overflow..=max).rev() {
            assert_eq!(tc.alloc(&slabs, c), objs[i], "stack order broken at {i}");
        }
        assert_eq!(tc.cached(c), 0);
        let p = tc.alloc(&slabs, c);
        assert_eq!(p, objs[overflow - 1], "the refill takes both flushed batches back, in stack order");
        let info = slabs.class_info(c);
        assert_eq!((info.transfer_hits - before.transfer_hits, info.transfer_objs), (1, 0));
        assert_eq!(tc.cached(c), overflow - 1);
        for i in (0..overflow - 1).rev() {
            assert_eq!(tc.alloc(&slabs, c), objs[i], "stack order broken at {i}");
        }
        tc.kill(&slabs);
        slabs.check().unwrap();
    }

    #[test]
    fn a_cache_giving_memory_back_fills_no_transfer_slot() {
        let pages = private_pages();
        let slabs = SlabAllocator::new(pages);
        let c = size_to_class(64);
        let SizeClass { batch, objs, .. } = CLASSES[c];
        let (batch, objs) = (batch as usize, objs as usize);
        let mut tc = ThreadCache::new();
        // Exactly two whole batches on the stack, from slabs of this cache.
        let held: Vec<*mut u8> = (0..2 * batch).map(|_| tc.alloc(&slabs, c)).collect();
        for &p in &held {
            // SAFETY: live objects of class `c` from `slabs`.
            unsafe { tc.free(&slabs, c, p) };
        }
        assert_eq!(tc.cached(c), 2 * batch, "the refills were used up, then every object came back");
        // The exit flush sends every object to its slab: the emptied slabs
        // go back to the page layer, but for the one empty slab kept.
        tc.kill(&slabs);
        let info = slabs.class_info(c);
        assert_eq!((info.transfer_objs, info.active_objs), (0, 0), "{info:?}");
        assert_eq!(info.num_slabs, 1, "one empty slab kept of {} ({objs} objects each)", info.slabs_allocated);
        slabs.check().unwrap();
    }

    #[test]
    fn a_cache_without_a_slot_block_runs_uncached() {
        // A zone smaller than a slot block: the first slow path cannot
        // open the cache, which then serves every call through the locked
        // one-object path, as a dead one does.
        let pages: &'static PageAllocator =
            Box::leak(Box::new(PageAllocator::new(Config { nr_cpus: 1, ..Config::small(SLOT_BLOCK_PAGES / 2, 1) })));
        let slabs = SlabAllocator::new(pages);
        let c = size_to_class(16);
        let mut tc = ThreadCache::new();
        let a = tc.alloc(&slabs, c);
        let b = tc.alloc(&slabs, c);
        assert!(!a.is_null() && !b.is_null() && a != b);
        assert!(tc.is_dead());
        assert_eq!((tc.cached(c), slabs.meta_bytes()), (0, 0));
        assert_eq!(slabs.class_info(c).active_objs, 2);
        // SAFETY: live objects of class `c` from `slabs`.
        unsafe {
            tc.free(&slabs, c, a);
            tc.free(&slabs, c, b);
        }
        assert_eq!(slabs.class_info(c).active_objs, 0);
        slabs.check().unwrap();
    }
}
