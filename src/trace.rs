//! Tracing the page allocator's call path, the way the tutorial in
//! `shared/seeds/` traces the kernel's (`trace` cargo feature).
//!
//! With the feature on, each step of the page allocator records an event in
//! a fixed per-thread buffer while recording is on for that thread: the
//! function it is in, named as the kernel names it, with the order,
//! migratetype, CPU and, where it matters, a count (blocks a refill took,
//! pages a drain gave back) or a frame number. The kernel's tracepoints
//! (`mm_page_alloc`, `mm_page_free`, `mm_page_alloc_zone_locked`,
//! `mm_page_pcpu_drain`, `mm_page_alloc_extfrag`) are events too. Recording
//! allocates nothing. With the feature off every hook below is an empty
//! `#[inline(always)]` function and a zero-sized guard: the code compiles to
//! nothing.
//!
//! ```ignore
//! pcpalloc::trace::start();
//! let page = pcpalloc::alloc_page(pcpalloc::Gfp::DEFAULT);
//! let trace = pcpalloc::trace::take();
//! print!("{}", trace.tree());
//! ```

use crate::page::MIGRATETYPE_NAMES;

/// A step of the page allocator, named as in `mm/page_alloc.c` (and the
/// thread page cache in front of it, which the kernel does not have).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Fn {
    AllocPages,
    AllocPagesInternal,
    GetPageFromFreelist,
    Rmqueue,
    RmqueuePcplist,
    RmqueuePcplistInner,
    RmqueueBulk,
    RmqueueInner,
    RmqueueSmallest,
    GetPageFromFreeArea,
    Expand,
    RmqueueFallback,
    DeferredGrowZone,
    RmqueueBuddy,
    AllocPagesBulk,
    AllocPagesSlowpath,
    DrainAllPages,
    FreePages,
    FreeUnrefPage,
    FreeUnrefPageCommit,
    FreePcppagesBulk,
    FreeOnePage,
    MmPageAlloc,
    MmPageFree,
    MmPageAllocZoneLocked,
    MmPagePcpuDrain,
    MmPageAllocExtfrag,
    PageCacheAlloc,
    PageCacheFree,
}

impl Fn {
    /// The kernel's name for this step.
    pub const fn name(self) -> &'static str {
        match self {
            Fn::AllocPages => "alloc_pages",
            Fn::AllocPagesInternal => "__alloc_pages",
            Fn::GetPageFromFreelist => "get_page_from_freelist",
            Fn::Rmqueue => "rmqueue",
            Fn::RmqueuePcplist => "rmqueue_pcplist",
            Fn::RmqueuePcplistInner => "__rmqueue_pcplist",
            Fn::RmqueueBulk => "rmqueue_bulk",
            Fn::RmqueueInner => "__rmqueue",
            Fn::RmqueueSmallest => "__rmqueue_smallest",
            Fn::GetPageFromFreeArea => "get_page_from_free_area",
            Fn::Expand => "expand",
            Fn::RmqueueFallback => "__rmqueue_fallback",
            Fn::DeferredGrowZone => "deferred_grow_zone",
            Fn::RmqueueBuddy => "rmqueue_buddy",
            Fn::AllocPagesBulk => "__alloc_pages_bulk",
            Fn::AllocPagesSlowpath => "__alloc_pages_slowpath",
            Fn::DrainAllPages => "drain_all_pages",
            Fn::FreePages => "free_pages",
            Fn::FreeUnrefPage => "free_unref_page",
            Fn::FreeUnrefPageCommit => "free_unref_page_commit",
            Fn::FreePcppagesBulk => "free_pcppages_bulk",
            Fn::FreeOnePage => "__free_one_page",
            Fn::MmPageAlloc => "mm_page_alloc",
            Fn::MmPageFree => "mm_page_free",
            Fn::MmPageAllocZoneLocked => "mm_page_alloc_zone_locked",
            Fn::MmPagePcpuDrain => "mm_page_pcpu_drain",
            Fn::MmPageAllocExtfrag => "mm_page_alloc_extfrag",
            Fn::PageCacheAlloc => "page_cache_alloc",
            Fn::PageCacheFree => "page_cache_free",
        }
    }

    /// Whether this is one of the kernel's tracepoints rather than a function.
    pub const fn is_tracepoint(self) -> bool {
        matches!(
            self,
            Fn::MmPageAlloc | Fn::MmPageFree | Fn::MmPageAllocZoneLocked | Fn::MmPagePcpuDrain | Fn::MmPageAllocExtfrag
        )
    }
}

/// One recorded step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The function or tracepoint.
    pub func: Fn,
    /// Nesting depth: how many traced functions were running around it.
    pub depth: u8,
    /// The block order it works on.
    pub order: u8,
    /// The migratetype it works on.
    pub migratetype: u8,
    /// The CPU the thread was on.
    pub cpu: u16,
    /// A count where it matters: blocks asked for / taken by a refill, pages
    /// a drain gave back, whether `get_page_from_free_area` found a block,
    /// buddy merges done by `__free_one_page`. `u32::MAX` when not set.
    pub count: u32,
    /// A second value where it matters: the order a block was split from
    /// (`expand`), merged up to (`__free_one_page`), or taken from
    /// (`mm_page_alloc_extfrag`, with the fallback migratetype in `count`).
    pub extra: u32,
    /// The page frame number involved, 0 if none.
    pub pfn: usize,
}

impl Event {
    #[cfg_attr(not(feature = "trace"), allow(dead_code))]
    const EMPTY: Event =
        Event { func: Fn::AllocPages, depth: 0, order: 0, migratetype: 0, cpu: 0, count: u32::MAX, extra: 0, pfn: 0 };
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mt = MIGRATETYPE_NAMES.get(self.migratetype as usize).copied().unwrap_or("?");
        match self.func {
            // These work on every list of a CPU, or of every CPU.
            Fn::FreePcppagesBulk | Fn::DrainAllPages => write!(f, "{}(cpu={}", self.func.name(), self.cpu)?,
            _ => write!(f, "{}(order={}, migratetype={}, cpu={}", self.func.name(), self.order, mt, self.cpu)?,
        }
        match self.func {
            Fn::RmqueueBulk | Fn::AllocPagesBulk => write!(f, ", count={}", self.count)?,
            Fn::FreePcppagesBulk => write!(f, ", pages={}", self.count)?,
            Fn::GetPageFromFreeArea => write!(f, ", found={}", self.count == 1)?,
            Fn::Expand => write!(f, ", from_order={}", self.extra)?,
            Fn::FreeOnePage => write!(f, ", merges={}, to_order={}", self.count, self.extra)?,
            Fn::MmPageAllocExtfrag => write!(
                f,
                ", fallback_order={}, fallback_migratetype={}",
                self.extra,
                MIGRATETYPE_NAMES.get(self.count as usize).copied().unwrap_or("?")
            )?,
            Fn::MmPageAllocZoneLocked => write!(f, ", percpu_refill={}", self.count)?,
            _ => {}
        }
        if self.pfn != 0 {
            write!(f, ", pfn={:#x}", self.pfn)?;
        }
        write!(f, ")")
    }
}

/// The events recorded on one thread, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events.
    pub events: Vec<Event>,
    /// Events that did not fit in the buffer.
    pub dropped: usize,
}

impl Trace {
    /// The function names, in order (tracepoints included).
    pub fn names(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.func.name()).collect()
    }

    /// The call tree, indented by depth, the way the tutorial writes it.
    pub fn tree(&self) -> Tree<'_> {
        Tree(self)
    }
}

impl core::fmt::Display for Trace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for e in &self.events {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// An indented rendering of a [`Trace`].
pub struct Tree<'a>(&'a Trace);

impl core::fmt::Display for Tree<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for e in &self.0.events {
            let mark = if e.func.is_tracepoint() { "# " } else { "" };
            writeln!(f, "{:indent$}{mark}{e}", "", indent = 2 * e.depth as usize)?;
        }
        if self.0.dropped > 0 {
            writeln!(f, "... {} more events did not fit", self.0.dropped)?;
        }
        Ok(())
    }
}

pub(crate) use imp::{enter, point};
pub use imp::{start, stop, take};

#[cfg(feature = "trace")]
mod imp {
    use super::{Event, Fn, Trace};
    use core::cell::Cell;

    /// Events one thread can hold; the rest are counted as dropped.
    const CAPACITY: usize = 8192;

    struct Buffer {
        on: Cell<bool>,
        depth: Cell<u8>,
        len: Cell<usize>,
        dropped: Cell<usize>,
        events: [Cell<Event>; CAPACITY],
    }

    thread_local! {
        // No destructor and a const initialiser: touching it never allocates.
        static BUF: Buffer = const {
            Buffer {
                on: Cell::new(false),
                depth: Cell::new(0),
                len: Cell::new(0),
                dropped: Cell::new(0),
                events: [const { Cell::new(Event::EMPTY) }; CAPACITY],
            }
        };
    }

    /// Starts recording on this thread (dropping what was recorded before).
    pub fn start() {
        let _ = BUF.try_with(|b| {
            b.len.set(0);
            b.dropped.set(0);
            b.depth.set(0);
            b.on.set(true);
        });
    }

    /// Stops recording on this thread.
    pub fn stop() {
        let _ = BUF.try_with(|b| b.on.set(false));
    }

    /// Stops recording and returns (and forgets) what this thread recorded.
    pub fn take() -> Trace {
        stop();
        BUF.try_with(|b| {
            let t = Trace { events: b.events[..b.len.get()].iter().map(Cell::get).collect(), dropped: b.dropped.get() };
            b.len.set(0);
            b.dropped.set(0);
            t
        })
        .unwrap_or_default()
    }

    fn record(mut e: Event) -> Option<usize> {
        BUF.try_with(|b| {
            if !b.on.get() {
                return None;
            }
            e.depth = b.depth.get();
            e.cpu = crate::os::current_cpu() as u16;
            let i = b.len.get();
            if i == CAPACITY {
                b.dropped.set(b.dropped.get() + 1);
                return None;
            }
            b.events[i].set(e);
            b.len.set(i + 1);
            Some(i)
        })
        .ok()
        .flatten()
    }

    /// A traced function's activation: nested events are indented under it
    /// until it is dropped.
    pub(crate) struct Scope {
        index: Option<usize>,
    }

    impl Scope {
        /// Sets the count of this function's event (known only at its end).
        pub(crate) fn set_count(&self, count: usize) {
            self.update(|e| e.count = count as u32);
        }

        /// Sets the second value of this function's event.
        pub(crate) fn set_extra(&self, extra: u32) {
            self.update(|e| e.extra = extra);
        }

        /// Sets the frame number of this function's event.
        pub(crate) fn set_pfn(&self, pfn: usize) {
            self.update(|e| e.pfn = pfn);
        }

        fn update(&self, f: impl FnOnce(&mut Event)) {
            if let Some(i) = self.index {
                let _ = BUF.try_with(|b| {
                    let mut e = b.events[i].get();
                    f(&mut e);
                    b.events[i].set(e);
                });
            }
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            if self.index.is_some() {
                let _ = BUF.try_with(|b| b.depth.set(b.depth.get().saturating_sub(1)));
            }
        }
    }

    /// Records entry into `func` and returns the guard that ends it.
    #[inline]
    pub(crate) fn enter(func: Fn, order: u32, mt: u8) -> Scope {
        let index = record(Event { func, order: order as u8, migratetype: mt, ..Event::EMPTY });
        if index.is_some() {
            let _ = BUF.try_with(|b| b.depth.set(b.depth.get().saturating_add(1)));
        }
        Scope { index }
    }

    /// Records a single event (a tracepoint, or a step with no callees).
    #[inline]
    pub(crate) fn point(func: Fn, order: u32, mt: u8, count: u32, extra: u32, pfn: usize) {
        record(Event { func, order: order as u8, migratetype: mt, count, extra, pfn, ..Event::EMPTY });
    }
}

#[cfg(not(feature = "trace"))]
mod imp {
    use super::{Fn, Trace};

    /// Starts recording on this thread (the `trace` feature is off: nothing
    /// is recorded).
    pub fn start() {}

    /// Stops recording on this thread.
    pub fn stop() {}

    /// Returns what this thread recorded: nothing without the `trace` feature.
    pub fn take() -> Trace {
        Trace::default()
    }

    /// Zero-sized: with the feature off a traced function carries nothing.
    pub(crate) struct Scope;

    impl Scope {
        #[inline(always)]
        pub(crate) fn set_count(&self, _count: usize) {}
        #[inline(always)]
        pub(crate) fn set_extra(&self, _extra: u32) {}
        #[inline(always)]
        pub(crate) fn set_pfn(&self, _pfn: usize) {}
    }

    #[inline(always)]
    pub(crate) fn enter(_func: Fn, _order: u32, _mt: u8) -> Scope {
        Scope
    }

    #[inline(always)]
    pub(crate) fn point(_func: Fn, _order: u32, _mt: u8, _count: u32, _extra: u32, _pfn: usize) {}
}
