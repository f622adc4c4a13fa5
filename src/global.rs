//! `PcpAlloc`, the `#[global_allocator]`: dispatch by size and alignment
//! (`kmalloc` / `kfree`), the per-thread cache, `realloc`, `alloc_zeroed`,
//! and the fork handlers.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::huge;
use crate::large::{self, large_order, pages_for};
use crate::os::PurgeMode;
use crate::page::{
    pfn_to_desc, section_of, PageDesc, MAX_PAGE_ORDER, MIGRATE_MOVABLE, PAGE_SHIFT, SECTION_SHIFT, SECTION_SIZE,
};
use crate::page_alloc::DEFAULT_DECAY_MS;
use crate::page_alloc::{desc_ptr, Gfp};
use crate::page_cache::NR_PAGE_BINS;
use crate::slab::{
    class_for, size_minus_one_to_class, size_to_class, slab_allocator_new, SlabAllocator, ThreadCache, MAX_SMALL,
};
use crate::trace::{self, Fn as TraceFn};
use crate::PAGES;

/// The process-wide slab layer, over the process-wide page allocator. No
/// exit hook: `cache_first` arms `EXIT_FLUSH` before it makes a cache, and
/// makes none once the thread is exiting.
pub(crate) static SLABS: SlabAllocator<'static> = slab_allocator_new(&PAGES, true, None);

thread_local! {
    /// Touched once per thread, by `cache_first`; its destructor kills the
    /// thread's cache and gives its block back when the thread exits. Since
    /// Rust 1.93 a `thread_local!` with a destructor never calls the global
    /// allocator (rust-lang/rust#144465), so the allocator may own one.
    static EXIT_FLUSH: ExitFlush = const { ExitFlush };
}

struct ExitFlush;

impl Drop for ExitFlush {
    fn drop(&mut self) {
        let cache = tls_slot::load();
        if cache.is_null() {
            return;
        }
        // From here on this thread's calls find the slot empty and, with
        // `EXIT_FLUSH` gone, take the locked paths (see `cache_first`).
        tls_slot::store(ptr::null_mut());
        // SAFETY: the cache is this thread's alone, no allocator call is
        // running on this thread while a TLS destructor runs, and nothing
        // reaches the cache once the slot is empty (the slab layer's
        // registry lets go of it in `kill`).
        unsafe {
            (*cache).kill(&SLABS);
            SLABS.free_thread_cache(cache);
        }
        // The last thread but one is leaving (usually the main thread stays):
        // what the others used is free now.
        if SLABS.nr_registered() <= 1 {
            PAGES.purge_after_exit();
        }
    }
}

/// Registers `EXIT_FLUSH`'s destructor; false if it already ran or is
/// running (the thread is exiting).
fn arm_exit_flush() -> bool {
    EXIT_FLUSH.try_with(|_| ()).is_ok()
}

/// A Rust global allocator built like the Linux kernel's page allocator.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();
/// // or, stating the purge settings in the same line:
/// static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new().with_decay_ms(5000);
/// ```
///
/// Every instance shares the process-wide page allocator and slab layer;
/// the settings of the one that serves the first allocation apply. The
/// environment variables `PCPALLOC_DECAY_MS` and `PCPALLOC_PURGE`
/// (`dontneed` or `free`) override them; [`set_decay_ms`] and
/// [`set_purge_mode`] change them at run time.
#[derive(Debug, Clone, Copy)]
pub struct PcpAlloc {
    decay_ms: u64,
    purge_mode: PurgeMode,
}

impl Default for PcpAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl PcpAlloc {
    /// The allocator with the default purge settings ([`DEFAULT_DECAY_MS`],
    /// `MADV_DONTNEED`); it maps nothing until the first allocation.
    pub const fn new() -> Self {
        Self { decay_ms: DEFAULT_DECAY_MS, purge_mode: PurgeMode::DontNeed }
    }

    /// Free memory goes back to the OS after `ms` milliseconds free
    /// (`u64::MAX`: only on [`trim`]).
    pub const fn with_decay_ms(self, ms: u64) -> Self {
        Self { decay_ms: ms, ..self }
    }

    /// How memory goes back to the OS.
    pub const fn with_purge_mode(self, mode: PurgeMode) -> Self {
        Self { purge_mode: mode, ..self }
    }

    /// Applies non-default settings once. The test folds away for
    /// `PcpAlloc::new()`: the `#[global_allocator]` static is immutable, so
    /// the compiler knows its fields.
    #[inline(always)]
    fn configure(&self) {
        if (self.decay_ms != DEFAULT_DECAY_MS || self.purge_mode != PurgeMode::DontNeed)
            && !CONFIGURED.load(Ordering::Relaxed)
        {
            self.configure_slow();
        }
    }

    #[cold]
    fn configure_slow(&self) {
        CONFIGURED.store(true, Ordering::Relaxed);
        PAGES.set_decay_ms(self.decay_ms);
        PAGES.set_purge_mode(self.purge_mode);
        apply_env_overrides();
    }
}

static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Bytes of live huge mappings (their `mmap` costs far more than this).
static HUGE_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Accounts a large or huge block's requested bytes and its pages (wrapping
/// deltas; pass the negation to subtract) for `stats()`: in the calling
/// thread's cache, so that a large allocation pays no locked instruction
/// (two `lock xadd`s each way cost a 32 KiB alloc+free pair about 20 ns).
#[inline]
fn account_large(requested: usize, pages: usize) {
    let cache = tls_slot::load();
    if cache.is_null() {
        return with_new_cache(
            |tc| tc.account_large(&SLABS, requested, pages),
            || SLABS.account_large(requested, pages),
        );
    }
    // SAFETY: the cache is this thread's alone; `account_large` only touches
    // its counters (and sets it up on its first call).
    unsafe { (*cache).account_large(&SLABS, requested, pages) }
}

/// Which layer serves a `(size, align)` request.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Kind {
    Small(usize),
    Large { npages: usize, order: u32 },
    Huge,
}

#[inline]
fn kind(size: usize, align: usize) -> Kind {
    if let Some(c) = class_for(size, align) {
        return Kind::Small(c);
    }
    // `Layout` keeps size + align - 1 within isize::MAX, so this cannot overflow.
    let npages = pages_for(size).unwrap_or(usize::MAX);
    match large_order(npages, align) {
        Some(order) => Kind::Large { npages, order },
        None => Kind::Huge,
    }
}

// ---- reaching the thread's cache ---------------------------------------------

/// A word of the static TLS block, reached with the *initial-exec* model:
/// this thread's cache, or null before the thread's first call that needs
/// it (`cache_first` sets it) and after its exit flush. The cache itself
/// lives in a page of its own (`SlabAllocator::new_thread_cache`); this
/// word is all the TLS the allocator's fast paths use.
///
/// Why not a `thread_local!` cache: the code that reaches it is inlined
/// into the crate with the `#[global_allocator]`, which reaches another
/// crate's `thread_local!` with the general-dynamic model, a call to
/// `__tls_get_addr` as far as the compiler knows (the linker turns it
/// into a load of `%fs:0` only afterwards). So `__rust_alloc` and
/// `__rust_dealloc` kept their arguments in callee-saved registers across
/// a call that never happens: a push and a pop of each, and a stack
/// adjustment, on every allocation and free. mimalloc and jemalloc build
/// their thread pointers with `tls_model("initial-exec")`; stable Rust has
/// no such attribute, so the slot is declared in assembly, with its offset
/// from the thread pointer in a GOT entry (`@GOTTPOFF`) that the linker
/// resolves to a constant in an executable.
///
/// Why a pointer and not the cache: a shared library with an initial-exec
/// access has all its TLS in the static TLS block, which a library opened
/// with `dlopen` must fit into the few hundred bytes glibc keeps spare.
/// With the 2.7 KiB cache in TLS, a cdylib using pcpalloc failed to load
/// from Python ("cannot allocate memory in static TLS block", as one
/// built on tikv-jemallocator does); mimalloc, which keeps only a pointer
/// there, loads. So the cache moved out.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
mod tls_slot {
    use crate::slab::ThreadCache;

    /// The slot's symbol: one per version of the crate, so that two
    /// versions linked into one program each have their own.
    macro_rules! slot {
        () => {
            concat!(
                "__pcpalloc_thread_cache_",
                env!("CARGO_PKG_VERSION_MAJOR"),
                "_",
                env!("CARGO_PKG_VERSION_MINOR"),
                "_",
                env!("CARGO_PKG_VERSION_PATCH")
            )
        };
    }

    core::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 3",
        concat!(".globl ", slot!()),
        concat!(".hidden ", slot!()),
        concat!(".type ", slot!(), ",@object"),
        concat!(".size ", slot!(), ",8"),
        concat!(slot!(), ":"),
        ".zero 8",
        ".popsection",
    );

    /// This thread's cache, or null if `store` has not run on this thread.
    ///
    /// `readonly`, not `nomem`: a load hoisted out of a loop before the
    /// thread's first allocation would hold null for the whole loop, and
    /// every pass would take the slow `*_first` path.
    #[inline(always)]
    pub(super) fn load() -> *mut ThreadCache {
        let p: *mut ThreadCache;
        // SAFETY: reads this thread's slot at the thread pointer plus the
        // slot's offset, which the GOT entry holds; nothing else is touched.
        unsafe {
            core::arch::asm!(
                concat!("mov {p}, qword ptr [rip + ", slot!(), "@GOTTPOFF]"),
                "mov {p}, qword ptr fs:[{p}]",
                p = out(reg) p,
                options(nostack, preserves_flags, readonly, pure),
            );
        }
        p
    }

    /// Sets this thread's slot.
    #[inline]
    pub(super) fn store(cache: *mut ThreadCache) {
        // SAFETY: writes this thread's slot, as `load` reads it.
        unsafe {
            core::arch::asm!(
                concat!("mov {t}, qword ptr [rip + ", slot!(), "@GOTTPOFF]"),
                "mov qword ptr fs:[{t}], {p}",
                t = out(reg) _,
                p = in(reg) cache,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Elsewhere, the same word in a `thread_local!`.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64", not(miri))))]
mod tls_slot {
    use core::cell::Cell;

    use crate::slab::ThreadCache;

    thread_local! {
        static SLOT: Cell<*mut ThreadCache> = const { Cell::new(core::ptr::null_mut()) };
    }

    #[inline(always)]
    pub(super) fn load() -> *mut ThreadCache {
        SLOT.try_with(Cell::get).unwrap_or(core::ptr::null_mut())
    }

    #[inline]
    pub(super) fn store(cache: *mut ThreadCache) {
        let _ = SLOT.try_with(|s| s.set(cache));
    }
}

/// The first call on this thread that needs its cache: makes one and
/// sets `tls_slot`. Null once the thread's exit flush has run (or is
/// running), or if no page can be had: then the callers take the slab
/// layer's and the page allocator's locked paths.
#[cold]
fn cache_first() -> *mut ThreadCache {
    if !arm_exit_flush() {
        return ptr::null_mut();
    }
    let cache = SLABS.new_thread_cache();
    if !cache.is_null() {
        tls_slot::store(cache);
    }
    cache
}

/// The body of every `*_first` function: `f` on the thread's new cache, or
/// `or` when `cache_first` has none to give.
#[inline(always)]
fn with_new_cache<R>(f: impl FnOnce(&mut ThreadCache) -> R, or: impl FnOnce() -> R) -> R {
    let cache = cache_first();
    if cache.is_null() {
        return or();
    }
    // SAFETY: the cache was just made for this thread and is its alone, and
    // nothing called from the allocator re-enters it on this thread.
    f(unsafe { &mut *cache })
}

// ---- the fast path: a size class through the thread cache ----------------
//
// Each fast path tail-calls a cold `*_first` function with its own
// arguments when the slot is still null, so that nothing is live across a
// call and the fast path saves no registers.

/// # Safety
/// `c < NR_CLASSES`: a class from `size_to_class` or `class_for`.
#[inline(always)]
unsafe fn small_alloc(c: usize) -> *mut u8 {
    let cache = tls_slot::load();
    if cache.is_null() {
        // SAFETY: forwarded.
        return unsafe { small_alloc_first(c) };
    }
    // SAFETY: the cache is this thread's alone, nothing called from `alloc`
    // re-enters the allocator on this thread, and `c` comes from
    // `size_to_class` / `class_for`, so it is below NR_CLASSES.
    unsafe { (*cache).alloc_unchecked(&SLABS, c) }
}

/// # Safety
/// As for `small_alloc`.
#[cold]
#[inline(never)]
unsafe fn small_alloc_first(c: usize) -> *mut u8 {
    // SAFETY: as in `small_alloc`.
    with_new_cache(|tc| unsafe { tc.alloc_unchecked(&SLABS, c) }, || SLABS.alloc_one(c))
}

/// # Safety
/// `ptr` must be a live object of class `c`.
#[inline(always)]
unsafe fn small_free(c: usize, ptr: *mut u8) {
    let cache = tls_slot::load();
    if cache.is_null() {
        // SAFETY: forwarded.
        return unsafe { small_free_first(c, ptr) };
    }
    // SAFETY: as in `small_alloc`; the caller gives us a live object.
    unsafe { (*cache).free(&SLABS, c, ptr) }
}

/// # Safety
/// As for `small_free`.
#[cold]
#[inline(never)]
unsafe fn small_free_first(c: usize, ptr: *mut u8) {
    // SAFETY (both closures): forwarded from the caller, a live object of
    // class `c`.
    with_new_cache(|tc| unsafe { tc.free(&SLABS, c, ptr) }, || unsafe { SLABS.free_one(c, ptr) })
}

// ---- blocks of orders 0..=7 through the thread's page cache ----------------

/// A block of `2^order` pages (`order < NR_PAGE_BINS`, migratetype
/// movable) from the thread's page cache, prepared as `alloc_pages` does.
#[inline(always)]
pub(crate) fn cached_alloc_block(order: u32, gfp: Gfp) -> Option<&'static PageDesc> {
    debug_assert!((order as usize) < NR_PAGE_BINS);
    let _t = trace::enter(TraceFn::PageCacheAlloc, order, MIGRATE_MOVABLE);
    let cache = tls_slot::load();
    if cache.is_null() {
        return cached_alloc_block_first(order, gfp);
    }
    // SAFETY: the cache is this thread's alone, and nothing called from here
    // re-enters the allocator on this thread.
    unsafe { (*cache).alloc_block(&SLABS, order, gfp) }
}

#[cold]
#[inline(never)]
fn cached_alloc_block_first(order: u32, gfp: Gfp) -> Option<&'static PageDesc> {
    with_new_cache(|tc| tc.alloc_block(&SLABS, order, gfp), || PAGES.alloc_block(gfp, order, MIGRATE_MOVABLE))
}

/// Frees a block of `2^order` pages (`order < NR_PAGE_BINS`)
/// through the thread's page cache; a block that is not an allocated block
/// of this order aborts with `bad_page`.
#[inline(always)]
pub(crate) fn cached_free_block(d: &'static PageDesc, order: u32) {
    debug_assert!((order as usize) < NR_PAGE_BINS);
    let _t = trace::enter(TraceFn::PageCacheFree, order, MIGRATE_MOVABLE);
    let cache = tls_slot::load();
    if cache.is_null() {
        return cached_free_block_first(d, order);
    }
    // SAFETY: as in `cached_alloc_block`.
    unsafe { (*cache).free_block(&SLABS, d, order) }
}

#[cold]
#[inline(never)]
fn cached_free_block_first(d: &'static PageDesc, order: u32) {
    with_new_cache(|tc| tc.free_block(&SLABS, d, order), || PAGES.free_block(d, order))
}

// ---- everything else ---------------------------------------------------------

#[cold]
#[inline(never)]
fn alloc_cold(size: usize, align: usize, zero: bool) -> *mut u8 {
    let block = match kind(size, align) {
        Kind::Small(c) => {
            // SAFETY: `class_for` returns classes below NR_CLASSES.
            let p = unsafe { small_alloc(c) };
            if zero && !p.is_null() {
                // SAFETY: the object has at least `size` bytes.
                unsafe { p.write_bytes(0, size) };
            }
            return p;
        }
        Kind::Large { npages, order } if npages == 1 << order && (order as usize) < NR_PAGE_BINS => {
            // One whole block of a page-cache order, nothing to give back.
            let gfp = if zero { Gfp::ZERO } else { Gfp::DEFAULT };
            let b = cached_alloc_block(order, gfp).map(desc_ptr);
            if b.is_some() {
                account_large(size, npages);
            }
            b
        }
        Kind::Large { npages, order } => {
            let b = large::alloc_large(&PAGES, npages, order, zero);
            if b.is_some() {
                account_large(size, npages);
            }
            b
        }
        Kind::Huge => {
            let b = huge_len(size).and_then(|len| huge::alloc(len, align, zero));
            if b.is_some() {
                HUGE_MAPPED.fetch_add(huge_len(size).unwrap_or(0), Ordering::Relaxed);
                account_large(size, 0);
            }
            b
        }
    };
    block.map_or(ptr::null_mut(), NonNull::as_ptr)
}

// ---- which addresses are the zone's ------------------------------------------

/// Words of [`ZONE_RANGES`]: one bit per section-sized range of the 47-bit
/// user address space.
const ZONE_RANGE_WORDS: usize = (1 << (47 - SECTION_SHIFT)) / 64;

/// Bit `i` is set once a section of the process-wide allocator starts at
/// `i << SECTION_SHIFT`. 16 KiB of zeroes, of which only the words for
/// ranges in use are ever written. The process-wide allocator never unmaps
/// a section, so a set bit never goes stale and the section's header, which
/// gives its length, can always be read.
///
/// It lets a block of a huge size live in the zone: a large block that
/// `realloc` grew in place past `LARGE_MAX_ORDER` (a doubling vector would
/// otherwise copy itself out of the zone at 512 KiB). Its layout says
/// huge; its address says zone.
static ZONE_RANGES: [AtomicU64; ZONE_RANGE_WORDS] = [const { AtomicU64::new(0) }; ZONE_RANGE_WORDS];

/// The page allocator's hook for a new section, before its pages are handed
/// out. A section above the 47-bit space is not recorded; its blocks then
/// never grow past `LARGE_MAX_ORDER` (see `in_zone`).
pub(crate) fn on_new_section(base: usize) {
    let i = base >> SECTION_SHIFT;
    if let Some(w) = ZONE_RANGES.get(i / 64) {
        w.fetch_or(1 << (i % 64), Ordering::Release);
    }
}

/// Whether `addr` lies in one of the process-wide allocator's sections
/// (and not in a huge mapping).
fn in_zone(addr: usize) -> bool {
    let i = addr >> SECTION_SHIFT;
    let Some(w) = ZONE_RANGES.get(i / 64) else { return false };
    if w.load(Ordering::Acquire) & (1 << (i % 64)) == 0 {
        return false;
    }
    // SAFETY: a section of the process-wide allocator starts at this
    // range's base (the bit says so) and is never unmapped. A short section
    // leaves the rest of its range to other mappings, so the length counts.
    let sec = unsafe { section_of(addr) };
    addr < (addr & !(SECTION_SIZE - 1)) + sec.nr_pages * crate::PAGE_SIZE
}

/// A huge block's length: its pages (`None` if that overflows).
fn huge_len(size: usize) -> Option<usize> {
    pages_for(size)?.checked_mul(crate::PAGE_SIZE)
}

/// # Safety
/// `ptr` must have been allocated by `PcpAlloc` with this size and alignment.
#[cold]
#[inline(never)]
unsafe fn dealloc_cold(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: GlobalAlloc never hands out null, so a live pointer is non-null.
    let nn = unsafe { NonNull::new_unchecked(ptr) };
    match kind(size, align) {
        // SAFETY: forwarded from the caller.
        Kind::Small(c) => unsafe { small_free(c, ptr) },
        Kind::Huge if !in_zone(ptr as usize) => {
            let len = huge_len(size).unwrap_or(0);
            HUGE_MAPPED.fetch_sub(len, Ordering::Relaxed);
            account_large(size.wrapping_neg(), 0);
            // SAFETY: a live huge block of this size.
            unsafe { huge::free(nn, len) }
        }
        // A large block, or one `realloc` grew past `LARGE_MAX_ORDER` in the
        // zone (its layout says huge, its address says zone).
        Kind::Large { .. } | Kind::Huge => {
            let npages = pages_for(size).unwrap_or(0);
            account_large(size.wrapping_neg(), npages.wrapping_neg());
            let start = ptr as usize >> PAGE_SHIFT;
            if large::is_one_block(start, npages, NR_PAGE_BINS as u32 - 1) {
                // One block of a page-cache order: through the page cache.
                // SAFETY: a live large block lies in a live section.
                let d = unsafe { pfn_to_desc(start) };
                return cached_free_block(d, npages.trailing_zeros());
            }
            // SAFETY: a zone block of `npages` pages (the caller's layout).
            unsafe { large::free_large(&PAGES, nn, npages) }
        }
    }
}

// SAFETY: every method returns memory that fits the layout or null, never
// unwinds (no panicking operation is reachable: arithmetic is checked or
// bounded by `Layout`'s invariants), and never allocates through the global
// allocator itself.
unsafe impl GlobalAlloc for PcpAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.configure();
        let (size, align) = (layout.size(), layout.align());
        // `1..=MAX_SMALL`; a zero size wraps past it to the cold path.
        let s1 = size.wrapping_sub(1);
        if align <= 8 && s1 < MAX_SMALL {
            // SAFETY: `size <= MAX_SMALL`, so its class is below NR_CLASSES.
            return unsafe { small_alloc(size_minus_one_to_class(s1)) };
        }
        alloc_cold(size, align, false)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (size, align) = (layout.size(), layout.align());
        let s1 = size.wrapping_sub(1);
        if align <= 8 && s1 < MAX_SMALL {
            // SAFETY: the caller frees a live pointer of this layout.
            return unsafe { small_free(size_minus_one_to_class(s1), ptr) };
        }
        // SAFETY: as above.
        unsafe { dealloc_cold(ptr, size, align) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.configure();
        alloc_cold(layout.size(), layout.align(), true)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let old_size = layout.size();
        if align <= 8 && old_size <= MAX_SMALL && new_size <= MAX_SMALL {
            // Small to small, the common case (a growing `String`): no
            // `kind` lookups, and the copy between two thread-cache pops.
            let (a, b) = (size_to_class(old_size), size_to_class(new_size));
            if a == b {
                return ptr;
            }
            // SAFETY: both sizes are at most MAX_SMALL, so their classes are
            // below NR_CLASSES; `ptr` is a live object of class `a`.
            unsafe {
                let new = small_alloc(b);
                if !new.is_null() {
                    ptr::copy_nonoverlapping(ptr, new, old_size.min(new_size));
                    small_free(a, ptr);
                }
                return new;
            }
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
            return ptr::null_mut();
        };
        // SAFETY: a live pointer from `alloc` is non-null.
        let nn = unsafe { NonNull::new_unchecked(ptr) };
        let (old_kind, new_kind) = (kind(old_size, align), kind(new_size, align));
        let zoned = matches!(old_kind, Kind::Large { .. } | Kind::Huge) && in_zone(ptr as usize);
        // A zone block, sized as huge or not: pages it has and will have.
        let zone_pages = match old_kind {
            Kind::Large { npages, .. } => Some(npages),
            Kind::Huge if zoned => pages_for(old_size),
            _ => None,
        };
        if let Some(old) = zone_pages {
            let new = match new_kind {
                Kind::Large { npages, .. } => Some(npages),
                // Past `LARGE_MAX_ORDER` only in place, up to a max-order
                // block, and in a section `in_zone` knows (so that `dealloc`
                // tells it from a mapping).
                Kind::Huge if zoned => pages_for(new_size).filter(|&n| n <= 1 << MAX_PAGE_ORDER),
                _ => None,
            };
            if let Some(new) = new {
                // SAFETY: `ptr` is a live zone block of `old` pages.
                if unsafe { large::resize_large(&PAGES, nn, old, new) } {
                    account_large(new_size.wrapping_sub(old_size), new.wrapping_sub(old));
                    return ptr;
                }
            }
        }
        match (old_kind, new_kind) {
            (Kind::Small(a), Kind::Small(b)) if a == b => return ptr,
            (Kind::Huge, Kind::Huge) if align <= crate::PAGE_SIZE && zone_pages.is_none() => {
                // SAFETY: `ptr` is a live huge mapping of the old size.
                return match unsafe { huge::realloc(nn, layout.size(), new_size) } {
                    Some(p) => {
                        let grown = huge_len(new_size).unwrap_or(0).wrapping_sub(huge_len(layout.size()).unwrap_or(0));
                        HUGE_MAPPED.fetch_add(grown, Ordering::Relaxed);
                        account_large(new_size.wrapping_sub(layout.size()), 0);
                        p.as_ptr()
                    }
                    None => ptr::null_mut(),
                };
            }
            _ => {}
        }
        // SAFETY: `new_layout` is valid and non-zero-sized unless the caller
        // passed zero, which `alloc` tolerates.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(feature = "nightly")]
// SAFETY: forwards to the `GlobalAlloc` implementation, whose blocks stay
// valid until deallocated and which reports failure as `AllocError`.
unsafe impl core::alloc::Allocator for PcpAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, core::alloc::AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout), 0));
        }
        // SAFETY: non-zero size.
        let p = unsafe { GlobalAlloc::alloc(self, layout) };
        NonNull::new(p).map(|p| NonNull::slice_from_raw_parts(p, layout.size())).ok_or(core::alloc::AllocError)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, core::alloc::AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout), 0));
        }
        // SAFETY: non-zero size.
        let p = unsafe { GlobalAlloc::alloc_zeroed(self, layout) };
        NonNull::new(p).map(|p| NonNull::slice_from_raw_parts(p, layout.size())).ok_or(core::alloc::AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller frees a block allocated with this layout.
            unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), layout) }
        }
    }
}

#[cfg(feature = "nightly")]
fn dangling(layout: Layout) -> NonNull<u8> {
    // SAFETY: alignments are non-zero.
    unsafe { NonNull::new_unchecked(layout.align() as *mut u8) }
}

// ---- fork ----------------------------------------------------------------------

/// Called once, when the process-wide page allocator maps its first section:
/// registers the fork handlers (before any lock of ours can be held across a
/// `fork`) and reads the environment's overrides.
pub(crate) fn on_first_grow() {
    // SAFETY: the handlers are plain functions that only take and release
    // our locks; glibc's pthread_atfork does not call back into us.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    apply_env_overrides();
    if crate::os::getenv(c"PCPALLOC_STATS") == Some(b"1") {
        // SAFETY: registering a plain function to run at `exit`.
        unsafe { libc::atexit(print_stats_at_exit) };
    }
}

/// `PCPALLOC_STATS=1`: the allocator's state, as `/proc` would show it, on
/// standard error when the process exits. Formats straight to the file
/// descriptor: nothing is allocated.
extern "C" fn print_stats_at_exit() {
    use core::fmt::Write;
    let mut w = crate::fmt::Stderr;
    let buddy = PAGES.buddyinfo();
    let _ = write!(
        w,
        "pcpalloc statistics at exit\n\n/proc/buddyinfo\n{buddy}\n/proc/pagetypeinfo\n{}\n/proc/zoneinfo\n{}\n/proc/vmstat\n{}\n/proc/slabinfo\n{}\nstats\n{}",
        buddy.pagetypeinfo(),
        PAGES.zoneinfo(),
        PAGES.vmstat(),
        slabinfo(),
        stats()
    );
}

/// The purge tick's hook: the slab layer decays its idle caches.
pub(crate) fn on_purge_tick() {
    SLABS.decay();
    huge::on_purge_tick();
}

/// `PCPALLOC_DECAY_MS=<ms>|never` and `PCPALLOC_PURGE=dontneed|free`, read
/// with `getenv` into no allocation. (`PCPALLOC_THP` is read by
/// `os::thp_mode`, on the first mapping.)
fn apply_env_overrides() {
    if let Some(v) = crate::os::getenv(c"PCPALLOC_DECAY_MS") {
        if v == b"never" {
            PAGES.set_decay_ms(u64::MAX);
        } else if let Some(ms) = parse_u64(v) {
            PAGES.set_decay_ms(ms);
        }
    }
    match crate::os::getenv(c"PCPALLOC_PURGE") {
        Some(b"free") => PAGES.set_purge_mode(PurgeMode::Free),
        Some(b"dontneed") => PAGES.set_purge_mode(PurgeMode::DontNeed),
        _ => {}
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter()
        .try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc.checked_mul(10)?.checked_add((b - b'0') as u64))?)
}

/// Takes every lock in the documented order (class locks, then the page
/// allocator's), so that no lock is held by a thread that will not exist in
/// the child.
extern "C" fn fork_prepare() {
    SLABS.lock_all_for_fork();
    huge::lock_for_fork();
}

extern "C" fn fork_parent() {
    huge::unlock_for_fork();
    SLABS.unlock_all_for_fork();
}

/// In the child only the forking thread exists: every lock it took in
/// `prepare` is released and the allocator works as before. The other
/// threads' caches are not there any more; their objects are leaked (as in
/// every allocator with thread caches).
extern "C" fn fork_child() {
    huge::unlock_for_fork();
    SLABS.unlock_all_for_fork();
}

/// `/proc/slabinfo` of the process-wide slab layer.
pub fn slabinfo() -> crate::stats::SlabInfo {
    crate::stats::SlabInfo::read(&SLABS)
}

/// Flushes the calling thread's caches: its objects back to the slab
/// layer, its page bins back to this CPU's PCP.
pub fn flush_thread_cache() {
    let cache = tls_slot::load();
    if !cache.is_null() {
        // SAFETY: the cache is this thread's alone.
        unsafe { (*cache).flush_all(&SLABS) }
    }
}

/// Gives the calling thread's page bins back to this CPU's PCP.
pub(crate) fn flush_page_cache() {
    let cache = tls_slot::load();
    if !cache.is_null() {
        // SAFETY: the cache is this thread's alone.
        unsafe { (*cache).flush_pages(&SLABS) }
    }
}

/// Gives back everything that can be given back now: flushes the calling
/// thread's object cache, releases every class's transfer batches and empty
/// slabs, drains every CPU's PCP lists, and purges every free block.
/// Afterwards the allocator's resident memory is its live set plus
/// metadata (and other threads' object caches, which only they can flush).
/// Safe to call from any thread at any time.
pub fn trim() {
    flush_thread_cache();
    SLABS.shrink();
    PAGES.trim();
    huge::trim();
}

/// Where the allocator's memory is, in bytes (see [`Stats`]). Takes each
/// lock briefly; allocates nothing.
///
/// [`Stats`]: crate::Stats
pub fn stats() -> crate::stats::Stats {
    let pc = PAGES.page_counts();
    let v = PAGES.vmstat();
    let (slab_pages, slab_objs) = SLABS.slab_bytes();
    // Free objects count as in use to their slabs; empty slabs do not.
    let (objs_cached, empty_slabs) = SLABS.cached_bytes();
    let slab_cached = objs_cached + empty_slabs;
    let ps = crate::PAGE_SIZE;
    let huge = HUGE_MAPPED.load(Ordering::Relaxed);
    let (large_requested, large_pages) = SLABS.large_totals();
    // Blocks in thread page caches: in use to the zone, free to programs.
    let page_cached = SLABS.cached_pages() * ps;
    // Page-API blocks: pages in use that are neither slabs nor large blocks
    // nor cached.
    // The slab layer's own arrays (thread caches' slot blocks, transfer
    // blocks) are zone pages too, but metadata.
    let slab_meta = SLABS.meta_bytes();
    let page_api = (pc.in_use() * ps).saturating_sub(
        slab_pages.saturating_add(large_pages.saturating_mul(ps)).saturating_add(page_cached).saturating_add(slab_meta),
    );
    let allocated = slab_objs.saturating_sub(objs_cached) + large_requested + page_api;
    let active = (pc.in_use() * ps).saturating_sub(slab_meta) + huge;
    let dirty = pc.free.saturating_sub(pc.purged) * ps;
    let metadata = pc.meta_resident * ps + slab_meta + core::mem::size_of_val(&PAGES) + core::mem::size_of_val(&SLABS);
    // Freed huge mappings kept for reuse, and the unused tails of huge
    // blocks served from longer ones: resident until purged.
    let (huge_cached, huge_slack, huge_held) = huge::held_bytes();
    crate::stats::Stats {
        allocated,
        active,
        resident: active + pc.pcp * ps + dirty + metadata + huge_cached + huge_slack,
        cached: pc.pcp * ps + dirty + slab_cached + page_cached + huge_cached + huge_slack,
        page_cache: page_cached,
        retained: pc.purged * ps,
        mapped: pc.mapped_pages * ps + huge + huge_held,
        metadata,
        purge_calls: v.purge_calls,
        purged_bytes: v.purged_pages * ps as u64,
        purge_ticks: v.purge_ticks,
    }
}

/// Sets how long free memory stays resident before it goes back to the OS.
pub fn set_decay_ms(ms: u64) {
    PAGES.set_decay_ms(ms)
}

/// Sets how memory goes back to the OS.
pub fn set_purge_mode(mode: PurgeMode) {
    PAGES.set_purge_mode(mode)
}

/// An opt-in background thread that runs the purge ticks on a timer, for
/// programs that go idle (without it, purging happens on allocator calls
/// that are slow anyway). Stops when dropped.
#[derive(Debug)]
pub struct PurgeThread {
    stop: std::sync::Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Starts the background purge thread, ticking every quarter of the decay
/// time (at least every 10 ms).
pub fn spawn_purge_thread() -> std::io::Result<PurgeThread> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new().name("pcpalloc-purge".into()).spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let decay = PAGES.decay_ms();
            let tick = if decay == u64::MAX { 1000 } else { (decay / 4).clamp(10, 1000) };
            std::thread::park_timeout(std::time::Duration::from_millis(tick));
            PAGES.maybe_purge();
        }
    })?;
    Ok(PurgeThread { stop, handle: Some(handle) })
}

impl Drop for PurgeThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}
