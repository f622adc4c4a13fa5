//! Huge blocks (above `LARGE_MAX_ORDER`, 512 KiB): mappings of their own,
//! kept for reuse.
//!
//! Unmapping a huge block on free and mapping a fresh one for the next
//! request costs a page fault for every page the program touches again
//! (16 384 of them for 64 MiB, about 25 ms on this machine), while the
//! memory just freed was resident. So a freed mapping stays mapped, and
//! resident, for the decay time, like the zone's dirty blocks: in a cache
//! of eight ranges, the oldest unmapped first when it is full and every
//! one once it has been free for the decay time. A request takes the
//! smallest cached range that holds it and is aligned for it.
//!
//! The cache holds address ranges, not whole system mappings: a range may be
//! cut (a block takes its head, the rest stays cached, no system call) and
//! ranges that touch are joined when freed, so that blocks freed piecemeal
//! serve a bigger request again. A block served from a range at most twice
//! its size keeps the rest as *slack*, the range's tail past the block's
//! pages: recorded in a small table (address, range length, bytes in use),
//! so that `dealloc`, which only knows the layout, frees the whole range,
//! and so that `realloc` grows in place while the range holds the new size.
//! Slack that stays unused for the decay time is purged
//! (`MADV_DONTNEED`/`MADV_FREE`): its address space stays, its memory goes
//! back. A longer range is cut instead (slack as big as the block would be
//! resident memory no other request can use, a 64 MiB mapping held for a
//! 1 MiB block), and so is any range when the table is full; a block then
//! grows in place by taking the cached range that starts where it ends (a
//! vector doubling from 1 MiB in a cached 64 MiB range faults nothing and
//! never copies).
//!
//! With the decay time set to never, what the cache and the slack hold goes
//! back only on `trim()`; with it set to 0 a freed mapping is unmapped at
//! once, as before the cache existed.
//!
//! A `realloc` that outgrows its range and finds no cached range after it
//! moves into a cached range big enough if there is one (copying resident
//! memory is several times cheaper than faulting in fresh pages), else grows
//! with `mremap`, which moves page tables, not bytes (and if that fails, as
//! older kernels' does for a range that spans two system mappings, into a
//! fresh mapping). A block shrinking to less than half its range gives the
//! tail to the cache. Every operation takes one lock, never while holding
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

/// Invariants: `cached[..nr_cached]` are page-aligned ranges of our
/// mappings that no block uses, each `len` a nonzero multiple of the page
/// size, none overlapping another or touching another's end (touching
/// ranges are joined); `slack[..nr_slack]` are live huge blocks at `addr`
/// whose range is `len` bytes, of which they use the first `used`
/// (`used < len`, both page multiples); no address appears twice in either
/// table. Every huge block's range (its pages, or its slack record's `len`)
/// overlaps no cached range.
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
/// One operation dooms at most one range evicted by `put_cached` plus every
/// range a decay scan expires (cuts and `take_adjacent` put back only after
/// freeing a slot, so they evict nothing).
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
            // SAFETY: a range of our mappings, out of the cache: nobody
            // reaches it any more (`munmap` takes any page range, across
            // system mappings too).
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

    /// A block of `len` bytes aligned to `align` from the smallest cached
    /// range that holds it, its address. The rest of the range is the
    /// block's slack if it is no bigger than the block and the table has
    /// room, else it stays cached.
    fn take_fit(&mut self, len: usize, align: usize, now: u64, doomed: &mut Doomed) -> Option<usize> {
        let m = self.take_cached(len, align)?;
        let kept_as_slack = m.len - len <= len && (m.len == len || self.set_slack(m.addr, m.len, len, now));
        if !kept_as_slack {
            // One slot was just freed, so this evicts nothing.
            self.put_cached(Cached { addr: m.addr + len, len: m.len - len, since: m.since }, doomed);
        }
        Some(m.addr)
    }

    /// Takes `need` bytes from the cached range that starts at `end`, if
    /// there is one that long; the rest stays cached.
    fn take_adjacent(&mut self, end: usize, need: usize, doomed: &mut Doomed) -> bool {
        let Some(i) = (0..self.nr_cached).find(|&i| self.cached[i].addr == end && self.cached[i].len >= need) else {
            return false;
        };
        let m = self.cached[i];
        self.nr_cached -= 1;
        self.cached[i] = self.cached[self.nr_cached];
        if m.len > need {
            self.put_cached(Cached { addr: end + need, len: m.len - need, since: m.since }, doomed);
        }
        true
    }

    /// Gives a freed range to the cache, or to `doomed` when the decay time
    /// is 0.
    fn release(&mut self, m: Cached, doomed: &mut Doomed) {
        if PAGES.decay_ms() == 0 {
            doomed.push(m);
        } else {
            self.put_cached(m, doomed);
        }
    }

    /// Puts a freed range in the cache, joined with the cached ranges it
    /// touches (free since the older of their times, so that joining never
    /// makes old memory look young); when the cache is full, the oldest
    /// range goes to `doomed`.
    ///
    /// The slot count bounds how many pieces the cache keeps, not its bytes:
    /// like the zone's dirty blocks, what it holds is bounded by the decay
    /// time. A joined range may span two system mappings, which older
    /// kernels' `mremap` refuses to move; `realloc` then copies.
    fn put_cached(&mut self, mut m: Cached, doomed: &mut Doomed) {
        let mut i = 0;
        while i < self.nr_cached {
            let c = self.cached[i];
            if c.addr + c.len == m.addr || m.addr + m.len == c.addr {
                m = Cached { addr: c.addr.min(m.addr), len: c.len + m.len, since: c.since.min(m.since) };
                self.nr_cached -= 1;
                self.cached[i] = self.cached[self.nr_cached];
            } else {
                i += 1;
            }
        }
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
            t.take_fit(len, align, now, &mut doomed)
        });
        doomed.unmap();
        if let Some(addr) = got {
            if zero {
                // SAFETY: the first `len` bytes of the range are the block's.
                unsafe { ptr::write_bytes(addr as *mut u8, 0, len) };
            }
            return NonNull::new(addr as *mut u8);
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
        t.release(Cached { addr, len, since: now }, &mut doomed);
        maybe_decay(t, now, &mut doomed);
    });
    doomed.unmap();
}

/// Resizes a huge block (page alignment) from `old_size` to `new_size`
/// bytes: in place while its range holds the new size or the cached range
/// after it makes up the difference, else into a cached range that holds it
/// (copying `old_size` bytes), else with `mremap`, else into a fresh
/// mapping. `None` only when no memory can be had; the block is then as it
/// was.
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
        /// Into the cached range at this address, from the old range of the
        /// given length.
        Move(usize, usize),
        Remap(usize),
    }
    let plan = with(|t| {
        let map_len = t.slack_index(addr).map_or(old_len, |i| t.slack[i].len);
        if new_len == map_len {
            t.remove_slack(addr);
            return Plan::InPlace;
        }
        if new_len < map_len {
            // The rest of the range stays the block's, as when it was served
            // (`take_fit`), only while it is no bigger than the block.
            if map_len - new_len <= new_len && t.set_slack(addr, map_len, new_len, now) {
                return Plan::InPlace;
            }
            t.remove_slack(addr);
            t.release(Cached { addr: addr + new_len, len: map_len - new_len, since: now }, &mut doomed);
            return Plan::InPlace;
        }
        if t.take_adjacent(addr + map_len, new_len - map_len, &mut doomed) {
            t.remove_slack(addr);
            return Plan::InPlace;
        }
        if let Some(to) = t.take_fit(new_len, PAGE_SIZE, now, &mut doomed) {
            t.remove_slack(addr);
            return Plan::Move(to, map_len);
        }
        t.remove_slack(addr);
        Plan::Remap(map_len)
    });
    let copy_out = |to: usize, old_map_len: usize, doomed: &mut Doomed| {
        // SAFETY: the old block is still ours (it goes to the cache only
        // after the copy) and the new range is ours alone: distinct, and each
        // at least `min(old_size, new_size)` bytes.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), to as *mut u8, old_size.min(new_size)) };
        with(|t| t.release(Cached { addr, len: old_map_len, since: now }, doomed));
        NonNull::new(to as *mut u8)
    };
    let result = match plan {
        Plan::InPlace => Some(ptr),
        Plan::Move(to, old_map_len) => copy_out(to, old_map_len, &mut doomed),
        // SAFETY: `ptr..ptr + map_len` is the block's own range.
        Plan::Remap(map_len) => match unsafe { os::remap(ptr, map_len, new_len) } {
            Some(p) => Some(p),
            None => match os::map_aligned(new_len, PAGE_SIZE) {
                Some(p) => copy_out(p.as_ptr() as usize, map_len, &mut doomed),
                None => {
                    // The block stays as it was: keep its range's length known,
                    // or give the tail to the cache.
                    if map_len != old_len {
                        with(|t| {
                            if !t.set_slack(addr, map_len, old_len, now) {
                                let tail = Cached { addr: addr + old_len, len: map_len - old_len, since: now };
                                t.release(tail, &mut doomed);
                            }
                        });
                    }
                    None
                }
            },
        },
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
