//! `PcpAlloc`, the `#[global_allocator]`: dispatch by size and alignment
//! (`kmalloc` / `kfree`), the per-thread cache, `realloc`, `alloc_zeroed`,
//! and the fork handlers.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};

use crate::large::{self, large_order, pages_for};
use crate::slab::{class_for, size_to_class, slab_allocator_new, SlabAllocator, ThreadCache, MAX_SMALL};
use crate::PAGES;

/// The process-wide slab layer, over the process-wide page allocator.
pub(crate) static SLABS: SlabAllocator<'static> = slab_allocator_new(&PAGES);

/// The thread's object cache. The holder's destructor gives the cached
/// objects back when the thread exits; from then on (and during other TLS
/// destructors) `try_with` fails and allocations take the locked path.
struct CacheHolder(UnsafeCell<ThreadCache>);

impl Drop for CacheHolder {
    fn drop(&mut self) {
        self.0.get_mut().flush_all(&SLABS);
    }
}

thread_local! {
    // Since Rust 1.93 a `thread_local!` with a destructor never calls the
    // global allocator (rust-lang/rust#144465), so the allocator may own one.
    static CACHE: CacheHolder = const { CacheHolder(UnsafeCell::new(ThreadCache::new())) };
}

/// A Rust global allocator built like the Linux kernel's page allocator.
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();
/// ```
///
/// Every instance shares the process-wide page allocator and slab layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct PcpAlloc {
    _private: (),
}

impl PcpAlloc {
    /// The allocator; it maps nothing until the first allocation.
    pub const fn new() -> Self {
        Self { _private: () }
    }
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

// ---- the fast path: a size class through the thread cache ----------------

#[inline(always)]
fn small_alloc(c: usize) -> *mut u8 {
    // SAFETY: the cache is this thread's alone, and nothing called from
    // `alloc` re-enters the allocator on this thread.
    match CACHE.try_with(|h| unsafe { (*h.0.get()).alloc(&SLABS, c) }) {
        Ok(p) => p,
        Err(_) => SLABS.alloc_one(c),
    }
}

/// # Safety
/// `ptr` must be a live object of class `c`.
#[inline(always)]
unsafe fn small_free(c: usize, ptr: *mut u8) {
    // SAFETY: as in `small_alloc`; the caller gives us a live object.
    if CACHE.try_with(|h| unsafe { (*h.0.get()).free(&SLABS, c, ptr) }).is_err() {
        // SAFETY: forwarded.
        unsafe { SLABS.free_one(c, ptr) }
    }
}

// ---- everything else ---------------------------------------------------------

#[cold]
#[inline(never)]
fn alloc_cold(size: usize, align: usize, zero: bool) -> *mut u8 {
    let block = match kind(size, align) {
        Kind::Small(c) => {
            let p = small_alloc(c);
            if zero && !p.is_null() {
                // SAFETY: the object has at least `size` bytes.
                unsafe { p.write_bytes(0, size) };
            }
            return p;
        }
        Kind::Large { npages, order } => large::alloc_large(&PAGES, npages, order, zero),
        Kind::Huge => large::alloc_huge(size, align),
    };
    block.map_or(ptr::null_mut(), NonNull::as_ptr)
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
        // SAFETY: a large block of `npages` pages (the caller's layout).
        Kind::Large { npages, .. } => unsafe { large::free_large(&PAGES, nn, npages) },
        // SAFETY: a huge mapping of this size.
        Kind::Huge => unsafe { large::free_huge(nn, size) },
    }
}

// SAFETY: every method returns memory that fits the layout or null, never
// unwinds (no panicking operation is reachable: arithmetic is checked or
// bounded by `Layout`'s invariants), and never allocates through the global
// allocator itself.
unsafe impl GlobalAlloc for PcpAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if align <= 8 && size <= MAX_SMALL {
            return small_alloc(size_to_class(size));
        }
        alloc_cold(size, align, false)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (size, align) = (layout.size(), layout.align());
        if align <= 8 && size <= MAX_SMALL {
            // SAFETY: the caller frees a live pointer of this layout.
            return unsafe { small_free(size_to_class(size), ptr) };
        }
        // SAFETY: as above.
        unsafe { dealloc_cold(ptr, size, align) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        alloc_cold(layout.size(), layout.align(), true)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
            return ptr::null_mut();
        };
        // SAFETY: a live pointer from `alloc` is non-null.
        let nn = unsafe { NonNull::new_unchecked(ptr) };
        match (kind(layout.size(), align), kind(new_size, align)) {
            (Kind::Small(a), Kind::Small(b)) if a == b => return ptr,
            (Kind::Large { npages: old, .. }, Kind::Large { npages: new, .. })
                // SAFETY: `ptr` is a live large block of `old` pages.
                if unsafe { large::resize_large(&PAGES, nn, old, new) } => {
                    return ptr;
                }
            (Kind::Huge, Kind::Huge) if align <= crate::PAGE_SIZE => {
                // SAFETY: `ptr` is a live huge mapping of the old size.
                return match unsafe { large::realloc_huge(nn, layout.size(), new_size) } {
                    Some(p) => p.as_ptr(),
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

/// Registers the fork handlers; called once, when the process-wide page
/// allocator maps its first section (before any lock of ours can be held
/// across a `fork`).
pub(crate) fn register_fork_handlers() {
    // SAFETY: the handlers are plain functions that only take and release
    // our locks; glibc's pthread_atfork does not call back into us.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
}

/// Takes every lock in the documented order (class locks, then the page
/// allocator's), so that no lock is held by a thread that will not exist in
/// the child.
extern "C" fn fork_prepare() {
    SLABS.lock_all();
    PAGES.lock_all();
}

extern "C" fn fork_parent() {
    PAGES.unlock_all();
    SLABS.unlock_all();
}

/// In the child only the forking thread exists: every lock it took in
/// `prepare` is released and the allocator works as before. The other
/// threads' caches are not there any more; their objects are leaked (as in
/// every allocator with thread caches).
extern "C" fn fork_child() {
    PAGES.unlock_all();
    SLABS.unlock_all();
}

/// `/proc/slabinfo` of the process-wide slab layer.
pub fn slabinfo() -> crate::stats::SlabInfo {
    crate::stats::SlabInfo::read(&SLABS)
}

/// Flushes the calling thread's object cache back to the slab layer.
pub fn flush_thread_cache() {
    let _ = CACHE.try_with(|h| {
        // SAFETY: the cache is this thread's alone.
        unsafe { (*h.0.get()).flush_all(&SLABS) }
    });
}
