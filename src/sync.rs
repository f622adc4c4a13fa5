//! The one place `src` takes its atomics, locks, spin hints and lock-guarded
//! cells from.
//!
//! Normally these are `core`'s atomics and cells and a futex lock; under
//! `--cfg loom` they are loom's (and the cells report unordered accesses to
//! loom), so that `loom-tests/` can model-check every interleaving of the
//! code that runs under the PCP try-lock, the zone lock and the slab layer's
//! locks. Besides this module, `#[cfg(loom)]` only swaps `const` array
//! builders and shrinks `MAX_CPUS`; `#[cfg(loom_broken = "...")]` marks the
//! deliberately broken variants the loom tests prove they catch.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// A hint that this thread is spinning on a lock another thread holds.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and at least one thread may be sleeping in `futex_wait`.
const CONTENDED: u32 = 2;

/// A lock without a guard, so that a `pthread_atfork` handler can take it in
/// `prepare` and release it in `parent`/`child`, and so that a PCP can be
/// taken with `try_lock` on the fast path exactly as the kernel's
/// `pcp_spin_trylock`.
///
/// It spins briefly, then sleeps on a futex: a holder that is descheduled
/// (which userspace cannot forbid, unlike the kernel with preemption
/// disabled) must not make waiters burn a whole timeslice. It never
/// allocates and is `const`-constructible.
///
/// Invariant: `state` is `UNLOCKED`, `LOCKED` or `CONTENDED`; only the holder
/// stores `UNLOCKED`.
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self { state: AtomicU32::new(UNLOCKED) }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self { state: AtomicU32::new(UNLOCKED) }
    }

    /// Takes the lock if it is free; never waits.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Takes the lock, waiting as long as it takes.
    #[inline]
    pub(crate) fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    /// Under loom a waiter just retries and yields: loom runs the holder
    /// meanwhile, and a hundred spins per wait would multiply the
    /// interleavings it has to explore without modelling anything new.
    #[cfg(loom)]
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        while !self.try_lock() {
            loom::thread::yield_now();
        }
    }

    #[cfg(not(loom))]
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        // Spin a little first: zone-lock hold times are a list splice or a
        // batch of `batch` blocks, far shorter than a sleep and wake-up.
        for _ in 0..100 {
            if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_lock() {
                return;
            }
            spin_hint();
        }
        // Drepper's "futexes are tricky" mutex, take 3: once we mark the lock
        // contended, the unlocker knows to wake someone.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Releases the lock.
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state);
        }
    }
}

#[cfg(not(loom))]
fn futex_wait(state: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT reads the u32 at `state`, which lives as long as the
    // lock; it returns at once if the value is no longer `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

#[cfg(not(loom))]
fn futex_wake(state: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, state.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

// Under loom a waiter never sleeps (see `lock_contended`), so there is no one
// to wake: loom explores the interleavings, the futex only saves CPU time.
#[cfg(loom)]
fn futex_wake(_state: &AtomicU32) {}

/// `core::cell::UnsafeCell` for the state a lock guards (a PCP's lists, the
/// zone, a size class), with one addition under loom: every [`get`] records
/// a write access in a loom cell, and every [`get_racy`] a read, so loom
/// reports any two accesses that the lock does not order (a path that
/// skipped the lock, or a lock-free peek racing with a writer) as a
/// causality violation in whichever interleaving they occur, not only when
/// they happen to corrupt something.
///
/// [`get`]: UnsafeCell::get
/// [`get_racy`]: UnsafeCell::get_racy
pub(crate) struct UnsafeCell<T> {
    data: core::cell::UnsafeCell<T>,
    #[cfg(loom)]
    access: loom::cell::UnsafeCell<()>,
}

impl<T> UnsafeCell<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(data: T) -> Self {
        Self { data: core::cell::UnsafeCell::new(data) }
    }
    #[cfg(loom)]
    pub(crate) fn new(data: T) -> Self {
        Self { data: core::cell::UnsafeCell::new(data), access: loom::cell::UnsafeCell::new(()) }
    }

    /// The contents, for a caller that holds the guarding lock.
    #[inline(always)]
    pub(crate) fn get(&self) -> *mut T {
        #[cfg(loom)]
        self.access.with_mut(|_| ());
        self.data.get()
    }

    /// The contents, for reads without the lock (statistics, which accept
    /// stale values). Under loom a read access: models that read statistics
    /// do so only when no thread can be writing.
    #[inline(always)]
    pub(crate) fn get_racy(&self) -> *mut T {
        #[cfg(loom)]
        self.access.with(|_| ());
        self.data.get()
    }
}

/// Whether the deliberately broken variant `name` is switched on for the
/// models running on this OS thread (loom runs all threads of a model on
/// the OS thread that called `loom::model`). A variant's code is compiled
/// only with `--cfg loom_broken="<name>"`, and runs only when a test has
/// also selected it with [`set_loom_broken`]: one build can then hold every
/// variant while each model runs with exactly one of them, or none.
#[cfg(loom)]
#[allow(dead_code)]
pub(crate) fn broken(name: &str) -> bool {
    BROKEN.with(|b| b.get() == name)
}

#[cfg(loom)]
std::thread_local! {
    static BROKEN: core::cell::Cell<&'static str> = const { core::cell::Cell::new("") };
}

/// Selects the broken variant that [`broken`] reports for models run on this
/// OS thread from now on; `""` selects none. For `loom-tests` only.
#[cfg(loom)]
#[doc(hidden)]
pub fn set_loom_broken(name: &'static str) {
    BROKEN.with(|b| b.set(name));
}

/// Defines a function that is `const` normally and plain under loom, whose
/// atomics cannot be built in a const context.
macro_rules! maybe_const_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$m])* $vis const fn $name($($arg: $ty),*) -> $ret $body
        #[cfg(loom)]
        $(#[$m])* $vis fn $name($($arg: $ty),*) -> $ret $body
    };
}
pub(crate) use maybe_const_fn;

/// An event counter that is written only under the lock that guards the
/// event (so a plain load and store cannot lose an update) and read without
/// it. It is a `core` atomic even under loom: counters are bookkeeping, not
/// part of the protocol loom checks, and reading them must not be a data race.
pub(crate) struct Counter(core::sync::atomic::AtomicU64);

impl Counter {
    pub(crate) const fn new() -> Self {
        Self(core::sync::atomic::AtomicU64::new(0))
    }
    /// Adds one. The caller holds the lock that guards this counter.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        use core::sync::atomic::Ordering::Relaxed;
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Adds one from any thread, without a lock (rare events only: this is a
    /// locked read-modify-write).
    #[inline]
    pub(crate) fn inc_shared(&self) {
        self.add_shared(1)
    }
    /// Adds `n` from any thread, without a lock.
    #[inline]
    pub(crate) fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    }
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// The per-CPU lists' lock (`pcp_spin_trylock`): taken with `try_lock` on
/// every page allocation and free, so it is built for that: one
/// compare-and-swap to take it and a plain release store to drop it (no
/// read-modify-write, no futex wake check). Nobody ever sleeps on it: the
/// few paths that must wait for it (`drain_all_pages`, `zone_pcp_update`, the
/// purge tick's decay, the fork handlers, statistics) spin briefly and then
/// yield the CPU, since its holder only ever does a list splice or one
/// batch's worth of buddy work.
///
/// Invariant: `state` is 0 (free) or 1 (held); only the holder stores 0.
pub(crate) struct SpinLock {
    state: AtomicU32,
}

impl SpinLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self { state: AtomicU32::new(0) }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self { state: AtomicU32::new(0) }
    }

    /// Takes the lock if it is free; never waits.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> bool {
        self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Takes the lock, waiting as long as it takes.
    #[inline]
    pub(crate) fn lock(&self) {
        while !self.try_lock() {
            self.wait();
        }
    }

    #[cold]
    #[inline(never)]
    fn wait(&self) {
        #[cfg(not(loom))]
        {
            for _ in 0..64 {
                if self.state.load(Ordering::Relaxed) == 0 {
                    return;
                }
                core::hint::spin_loop();
            }
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        #[cfg(loom)]
        loom::thread::yield_now();
    }

    /// Releases the lock.
    #[inline(always)]
    pub(crate) fn unlock(&self) {
        self.state.store(0, Ordering::Release);
    }

    /// Whether some thread holds the lock (for assertions).
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }
}
