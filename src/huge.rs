//! Huge blocks (above a max-order block, 4 MiB): mappings of their own,
//! kept for reuse.
//!
//! Unmapping a huge block on free and mapping a fresh one for the next
//! request costs a page fault for every page the program touches again
//! (16 384 of them for 64 MiB, about 25 ms on this machine), while the
//! memory just freed was resident. So a freed mapping stays mapped, and
//! resident, for the decay time, like the zone's dirty blocks: in a cache
//! of a few mappings, the oldest unmapped first when it is full and every
//! one once it has been free for the decay time. A request takes the
//! smallest cached mapping that holds it and is aligned for it.
//!
//! A block served from a longer mapping has *slack*, the mapping's tail
//! past the block's pages: recorded in a small table (address, mapping
//! length, bytes in use), so that `dealloc`, which only knows the layout,
//! frees the whole mapping, and so that `realloc` grows in place while the
//! mapping holds the new size (a vector doubling to 64 MiB from a cached
//! 64 MiB mapping faults nothing and copies once). Slack that stays unused
//! for the decay time is purged (`MADV_DONTNEED`/`MADV_FREE`): its address
//! space stays, its memory goes back. When the table is full the tail is
//! unmapped instead and the block is exact.
//!
//! With the decay time set to never, what the cache and the slack hold goes
//! back only on `trim()`; with it set to 0 a freed mapping is unmapped at
//! once, as before the cache existed.
//!
//! A `realloc` that outgrows its mapping moves into a cached mapping big
//! enough if there is one (copying resident memory is several times cheaper
//! than faulting in fresh pages), else grows with `mremap`, which moves page
//! tables, not bytes. Every operation takes one lock, never while holding
//! another of the allocator's; system calls on memory nobody else can reach
//! (a mapping taken out of the cache) are made after releasing it.

use core::ptr::{self, NonNull};

use crate::os::{self, PAGE_SIZE};
use crate::sync::{RawLock, UnsafeCell};
use crate::PAGES;

/// Freed mappings kept.
const CACHE_SLOTS: usize = 8;
/// Live blocks with slack that can be recorded.
const SLACK_SLOTS: usize = 64;

#[derive(Clone, Copy)]
struct Cached {
    addr: usize,
    len: usize,
    /// When it was freed (ms).
    since: u64,
}

#[derive(Clone, Copy)]
struct Slack {
    addr: usize,
    /// The mapping's length.
    len: usize,
    /// Bytes of the mapping the block uses (pages).
    used: usize,
    /// When the slack last changed (ms).
    since: u64,
    /// Whether `[addr + used, addr + len)` was purged since.
    purged: bool,
}

/// Invariants: `cached[..nr_cached]` are whole mappings of ours that no
/// block uses, each `len` a multiple of the page size; `slack[..nr_slack]`
/// are live huge blocks at `addr` whose mapping is `len` bytes, of which
/// they use the first `used` (`used < len`, both page multiples); no
/// address appears twice in either table.
struct Tables {
    cached: [Cached; CACHE_SLOTS],
    nr_cached: usize,
    slack: [Slack; SLACK_SLOTS],
    nr_slack: usize,
    /// When the last decay scan ran (ms).
    last_scan: u64,
}

struct HugeCache {
    lock: RawLock,
    tables: UnsafeCell<Tables>,
}

// SAFETY: `tables` is only reached under `lock` (see `with`).
unsafe impl Sync for HugeCache {}

static HUGE: HugeCache = HugeCache {
    lock: RawLock::new(),
    tables: UnsafeCell::new(Tables {
        cached: [Cached { addr: 0, len: 0, since: 0 }; CACHE_SLOTS],
        nr_cached: 0,
        slack: [Slack { addr: 0, len: 0, used: 0, since: 0, purged: false }; SLACK_SLOTS],
        nr_slack: 0,
        last_scan: 0,
    }),
};

/// Runs `f` on the tables under the lock.
fn with<R>(f: impl FnOnce(&mut Tables) -> R) -> R {
    HUGE.lock.lock();
    // SAFETY: we hold the lock, which guards `tables`.
    let r = f(unsafe { &mut *HUGE.tables.get() });
    HUGE.lock.unlock();
    r
}

/// Mappings taken out of the cache to be unmapped once the lock is released.
struct Doomed {
    list: [(usize, usize); CACHE_SLOTS + 1],
    n: usize,
}

impl Doomed {
    const fn new() -> Self {
        Self { list: [(0, 0); CACHE_SLOTS + 1], n: 0 }
    }
    fn push(&mut self, m: Cached) {
        if self.n < self.list.len() {
            self.list[self.n] = (m.addr, m.len);
            self.n += 1;
        }
    }
    fn unmap(self) {
        for &(addr, len) in &self.list[..self.n] {
            // SAFETY: a whole mapping of ours, out of the cache: nobody
            // reaches it any more.
            unsafe { os::unmap(NonNull::new_unchecked(addr as *mut u8), len) };
        }
    }
}

impl Tables {
    /// The smallest cached mapping of at least `len` bytes at an address
    /// aligned to `align`, taken out of the cache.
    fn take_cached(&mut self, len: usize, align: usize) -> Option<Cached> {
        let i = (0..self.nr_cached)
            .filter(|&i| self.cached[i].len >= len && self.cached[i].addr.is_multiple_of(align))
            .min_by_key(|&i| self.cached[i].len)?;
        let m = self.cached[i];
        self.nr_cached -= 1;
        self.cached[i] = self.cached[self.nr_cached];
        Some(m)
    }

    /// Puts a freed mapping in the cache; when it is full, the oldest
    /// mapping goes to `doomed`.
    fn put_cached(&mut self, m: Cached, doomed: &mut Doomed) {
        if self.nr_cached == CACHE_SLOTS {
            let oldest = (0..CACHE_SLOTS).min_by_key(|&i| self.cached[i].since).unwrap_or(0);
            doomed.push(self.cached[oldest]);
            self.cached[oldest] = m;
        } else {
            self.cached[self.nr_cached] = m;
            self.nr_cached += 1;
        }
    }

    fn slack_index(&self, addr: usize) -> Option<usize> {
        (0..self.nr_slack).find(|&i| self.slack[i].addr == addr)
    }

    /// Removes `addr`'s slack record, returning its mapping's length.
    fn remove_slack(&mut self, addr: usize) -> Option<usize> {
        let i = self.slack_index(addr)?;
        let len = self.slack[i].len;
        self.nr_slack -= 1;
        self.slack[i] = self.slack[self.nr_slack];
        Some(len)
    }

    /// Records that the block at `addr` uses `used` bytes of its `len`-byte
    /// mapping (`used < len`); false when the table is full.
    fn set_slack(&mut self, addr: usize, len: usize, used: usize, now: u64) -> bool {
        let s = Slack { addr, len, used, since: now, purged: false };
        if let Some(i) = self.slack_index(addr) {
            self.slack[i] = s;
        } else if self.nr_slack < SLACK_SLOTS {
            self.slack[self.nr_slack] = s;
            self.nr_slack += 1;
        } else {
            return false;
        }
        true
    }

    /// The decay scan: cached mappings free for `decay` ms go to `doomed`;
    /// slack unused for `decay` ms is purged (under the lock, so that a
    /// `realloc` growing into it cannot race with the purge).
    fn decay(&mut self, now: u64, decay: u64, doomed: &mut Doomed) {
        let mut i = 0;
        while i < self.nr_cached {
            if now.saturating_sub(self.cached[i].since) >= decay {
                doomed.push(self.cached[i]);
                self.nr_cached -= 1;
                self.cached[i] = self.cached[self.nr_cached];
            } else {
                i += 1;
            }
        }
        for s in &mut self.slack[..self.nr_slack] {
            if !s.purged && now.saturating_sub(s.since) >= decay {
                // SAFETY: the slack is part of a live block's mapping that the
                // block does not use (its owner's `realloc` takes this lock
                // before growing into it).
                s.purged = unsafe { os::purge((s.addr + s.used) as *mut u8, s.len - s.used, PAGES.purge_mode()) };
            }
        }
    }
}

/// Scans for expired mappings and slack at most every quarter of the
/// decay time (the caller holds the lock through `with`).
fn maybe_decay(t: &mut Tables, now: u64, doomed: &mut Doomed) {
    let decay = PAGES.decay_ms();
    if decay != u64::MAX && now.saturating_sub(t.last_scan) >= (decay / 4).max(1) {
        t.last_scan = now;
        t.decay(now, decay, doomed);
    }
}

/// A huge block of `len` bytes (a page multiple) aligned to `align`:
/// from the cache if a mapping there holds it (cleared if `zero`: the
/// memory is resident, and writing it is cheaper than faulting in a fresh
/// mapping's zero pages), else a fresh mapping.
pub(crate) fn alloc(len: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
    let align = align.max(PAGE_SIZE);
    {
        let now = PAGES.now_ms();
        let mut doomed = Doomed::new();
        let got = with(|t| {
            maybe_decay(t, now, &mut doomed);
            let m = t.take_cached(len, align)?;
            // Slack recorded, or the tail to unmap.
            let exact = m.len == len || t.set_slack(m.addr, m.len, len, now);
            Some((m, exact))
        });
        doomed.unmap();
        if let Some((m, recorded)) = got {
            if !recorded {
                // SAFETY: the tail of a mapping we just took out of the cache.
                unsafe { os::unmap(NonNull::new_unchecked((m.addr + len) as *mut u8), m.len - len) };
            }
            if zero {
                // SAFETY: the first `len` bytes of the mapping are the block's.
                unsafe { ptr::write_bytes(m.addr as *mut u8, 0, len) };
            }
            return NonNull::new(m.addr as *mut u8);
        }
    }
    os::map_aligned(len, align)
}

/// Frees a huge block of `len` bytes (its pages, as its layout gives them)
/// into the cache, with its slack.
///
/// # Safety
/// `ptr` must be a live huge block from [`alloc`] (or [`realloc`]) of `len`
/// bytes, not used again.
pub(crate) unsafe fn free(ptr: NonNull<u8>, len: usize) {
    let now = PAGES.now_ms();
    let addr = ptr.as_ptr() as usize;
    let mut doomed = Doomed::new();
    with(|t| {
        let len = t.remove_slack(addr).unwrap_or(len);
        let m = Cached { addr, len, since: now };
        if PAGES.decay_ms() == 0 {
            doomed.push(m);
        } else {
            t.put_cached(m, &mut doomed);
        }
        maybe_decay(t, now, &mut doomed);
    });
    doomed.unmap();
}

/// Resizes a huge block (page alignment) from `old_size` to `new_size`
/// bytes: in place while its mapping holds the new size, else into a cached
/// mapping that does (copying `old_size` bytes), else with `mremap`.
///
/// # Safety
/// `ptr` must be a live huge block from [`alloc`] with page alignment, of
/// `old_size` bytes; on success it is used only through the result.
pub(crate) unsafe fn realloc(ptr: NonNull<u8>, old_size: usize, new_size: usize) -> Option<NonNull<u8>> {
    let (old_len, new_len) = (len_for(old_size)?, len_for(new_size)?);
    let addr = ptr.as_ptr() as usize;
    let now = PAGES.now_ms();
    let mut doomed = Doomed::new();
    enum Plan {
        InPlace,
        /// Into a cached mapping (taken out, with whether its length is
        /// recorded) from the old one of the given length.
        Move(Cached, bool, usize),
        Remap(usize),
    }
    let plan = with(|t| {
        let map_len = t.slack_index(addr).map_or(old_len, |i| t.slack[i].len);
        if new_len == map_len {
            t.remove_slack(addr);
            return Plan::InPlace;
        }
        if new_len < map_len {
            if map_len != old_len && t.set_slack(addr, map_len, new_len, now) {
                return Plan::InPlace;
            }
            // An exact block shrinks for real; so does one whose record
            // cannot be kept.
            t.remove_slack(addr);
            return Plan::Remap(map_len);
        }
        if let Some(m) = t.take_cached(new_len, PAGE_SIZE) {
            let exact = m.len == new_len || t.set_slack(m.addr, m.len, new_len, now);
            t.remove_slack(addr);
            return Plan::Move(m, exact, map_len);
        }
        t.remove_slack(addr);
        Plan::Remap(map_len)
    });
    let result = match plan {
        Plan::InPlace => Some(ptr),
        Plan::Move(m, recorded, old_map_len) => {
            if !recorded {
                // SAFETY: the tail of a mapping we took out of the cache.
                unsafe { os::unmap(NonNull::new_unchecked((m.addr + new_len) as *mut u8), m.len - new_len) };
            }
            // SAFETY: the old block is still ours (it goes to the cache only
            // after the copy) and the new mapping was taken out of the cache
            // for us: distinct, and each at least `old_size` bytes.
            unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), m.addr as *mut u8, old_size.min(new_size)) };
            with(|t| t.put_cached(Cached { addr, len: old_map_len, since: now }, &mut doomed));
            NonNull::new(m.addr as *mut u8)
        }
        Plan::Remap(map_len) => {
            // SAFETY: `ptr` is a whole mapping of `map_len` bytes of ours.
            let r = unsafe { os::remap(ptr, map_len, new_len) };
            if r.is_none() && map_len != old_len {
                // The block stays as it was: keep its mapping's length known
                // (if the table filled meanwhile, the tail is unmapped).
                if !with(|t| t.set_slack(addr, map_len, old_len, now)) {
                    // SAFETY: the unused tail of the block's own mapping.
                    unsafe { os::unmap(NonNull::new_unchecked((addr + old_len) as *mut u8), map_len - old_len) };
                }
            }
            r
        }
    };
    doomed.unmap();
    result
}

/// Bytes of a huge block of `size` bytes: its pages.
fn len_for(size: usize) -> Option<usize> {
    Some(crate::large::pages_for(size)? * PAGE_SIZE)
}

/// The decay scan, from the page allocator's purge tick.
pub(crate) fn on_purge_tick() {
    let now = PAGES.now_ms();
    let mut doomed = Doomed::new();
    with(|t| maybe_decay(t, now, &mut doomed));
    doomed.unmap();
}

/// Unmaps every cached mapping and purges all slack (`trim`).
pub(crate) fn trim() {
    let mut doomed = Doomed::new();
    let now = PAGES.now_ms();
    with(|t| t.decay(now, 0, &mut doomed));
    doomed.unmap();
}

/// `(cached, slack, mapped)`: bytes of cached mappings, of slack not
/// purged, and of address space both hold (all slack, purged or not).
pub(crate) fn held_bytes() -> (usize, usize, usize) {
    with(|t| {
        let cached: usize = t.cached[..t.nr_cached].iter().map(|m| m.len).sum();
        let slack = t.slack[..t.nr_slack].iter().filter(|s| !s.purged).map(|s| s.len - s.used).sum();
        let all_slack: usize = t.slack[..t.nr_slack].iter().map(|s| s.len - s.used).sum();
        (cached, slack, cached + all_slack)
    })
}

/// `fork`: the lock across it (see `global::fork_prepare`).
pub(crate) fn lock_for_fork() {
    HUGE.lock.lock();
}

pub(crate) fn unlock_for_fork() {
    HUGE.lock.unlock();
}
