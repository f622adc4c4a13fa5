//! Shared machinery of the loom models in `tests/` (they run only under
//! `RUSTFLAGS="--cfg loom"`; see `run.sh` and the README's "Model checking
//! with loom").
//!
//! loom cannot model the global allocator, so every model builds **private
//! instances**: a [`PageAllocator`] over a tiny arena (and, for the slab
//! models, a [`SlabAllocator`] over it, see [`World`]) whose "current CPU"
//! is a loom thread-local set with [`set_cpu`]: two loom threads can then
//! share one CPU's PCP (and its try-lock) or use two.
//!
//! What every model asserts, besides what loom checks by itself (the cells
//! guarded by the PCP, zone and size-class locks report any two accesses the
//! lock does not order, and a wait that can never end exceeds loom's branch
//! bound):
//! * no page or object is handed out twice while held ([`Held`]);
//! * none is lost: after every thread has freed what it held and everything
//!   is drained, the zone's `check()` passes and every page is free again,
//!   merged ([`assert_all_back`]);
//! * the counters add up (per model, from `vmstat()` / `class_info()`).
#![cfg(loom)]

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use pcpalloc::{Config, Gfp, Page, PageAllocator, SlabAllocator, ThreadCache, VmStat};

/// What the models' own assertions (and `bad_page`, which panics under loom)
/// report when an allocator hands out, loses or corrupts a block or object.
pub const CORRUPTION: &[&str] = &[
    "handed out twice",
    "freed but not held",
    "page lost or corrupted",
    "pages lost",
    "objects lost",
    "lost or duplicated",
    "fatal inconsistency",
];

/// Preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set.
pub const DEFAULT_PREEMPTIONS: usize = 5;

/// Stack of every loom thread a model runs on. loom's default (32 KiB) is
/// too small to build a page allocator (its section table alone is 32 KiB).
pub const STACK: usize = 1 << 20;

/// `loom::thread::spawn` with a stack of [`STACK`] bytes.
pub fn spawn<F, T>(f: F) -> loom::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    loom::thread::Builder::new().stack_size(STACK).spawn(f).expect("loom spawns")
}

/// The body loom runs for each interleaving: counts it, then runs the model
/// on a loom thread with a big enough stack (the model's own first thread
/// has loom's default one).
fn body<F>(f: F, iterations: Arc<AtomicUsize>) -> impl Fn() + Sync + Send + 'static
where
    F: Fn() + Sync + Send + 'static,
{
    let f = Arc::new(f);
    move || {
        iterations.fetch_add(1, Relaxed);
        let f = f.clone();
        spawn(move || f()).join().unwrap();
    }
}

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// The "current CPU" of the calling loom thread (0 until [`set_cpu`]).
pub fn current_cpu() -> usize {
    CPU.with(Cell::get)
}

/// Puts the calling loom thread on `cpu`: from now on its page allocations
/// and frees use that CPU's PCP.
pub fn set_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

/// A private page allocator's configuration for a model: `nr_cpus` PCPs, the
/// CPU from [`current_cpu`], one section of `usable_pages` pages, the given
/// PCP `batch` and `high`, and purging off (it reads a clock and uses plain
/// atomics, and is not what these models check).
pub fn config(nr_cpus: usize, usable_pages: usize, batch: usize, high: usize) -> Config {
    Config {
        nr_cpus,
        cpu: Some(current_cpu),
        batch: Some(batch),
        high: Some(high),
        decay_ms: u64::MAX,
        ..Config::small(usable_pages, 1)
    }
}

/// Maps the arena (the first allocation grows the zone by its one section
/// and sets every PCP's `batch` and `high`), then gives everything back, so
/// that a model starts from a zone holding every page, merged.
pub fn prime(pages: &PageAllocator) {
    let p = pages.alloc_pages(Gfp::DEFAULT, 0).expect("the arena maps");
    pages.free_pages(p, 0);
    pages.drain_all_pages();
    assert_all_back(pages);
}

/// Every page is back: after draining every PCP, the zone's invariants hold
/// (no block lost, none overlapping, no free buddies left unmerged) and its
/// free pages are all its pages.
pub fn assert_all_back(pages: &PageAllocator) {
    pages.drain_all_pages();
    if let Err(e) = pages.check() {
        panic!("page lost or corrupted: zone check failed: {e:?}");
    }
    let z = pages.zoneinfo();
    assert_eq!(z.pcp_pages, 0, "pages left on a PCP after drain_all_pages");
    assert_eq!(z.free_pages, z.managed_pages, "pages lost: {} of {} free", z.free_pages, z.managed_pages);
}

/// A page allocator and a slab layer over it, shared by a model's threads.
pub struct World {
    // Declared first, so dropped first: it borrows `*pages`.
    slabs: SlabAllocator<'static>,
    pages: Box<PageAllocator>,
}

impl World {
    /// A primed page allocator with `config`, and a slab layer over it.
    pub fn new(config: Config) -> Arc<World> {
        let pages = Box::new(PageAllocator::new(config));
        prime(&pages);
        // SAFETY: the slab layer borrows the boxed page allocator, whose
        // address is stable and which the field order drops after it.
        let slabs = SlabAllocator::new(unsafe { &*(&*pages as *const PageAllocator) });
        Arc::new(World { slabs, pages })
    }

    /// The page allocator.
    pub fn pages(&self) -> &PageAllocator {
        &self.pages
    }

    /// The slab layer.
    pub fn slabs(&self) -> &SlabAllocator<'_> {
        &self.slabs
    }
}

/// The blocks and objects a model's threads hold right now: taking one that
/// is already held means the allocator handed it out twice.
///
/// A std `Mutex`, never held across a loom operation: loom runs all threads
/// of a model as coroutines on one OS thread, so it never blocks, and being
/// no loom object it creates no happens-before edge that could hide a race.
#[derive(Default)]
pub struct Held(Mutex<HashSet<usize>>);

/// A page's key in [`Held`]: odd, so it never equals an object's address.
fn page_key(pfn: usize) -> usize {
    pfn << 1 | 1
}

impl Held {
    /// A new, empty set.
    pub fn new() -> Arc<Held> {
        Arc::new(Held::default())
    }

    /// Records every page of a block of `order` just handed out.
    pub fn take_page(&self, page: &Page, order: u32) {
        let mut held = self.0.lock().unwrap();
        for pfn in page.pfn()..page.pfn() + (1 << order) {
            assert!(held.insert(page_key(pfn)), "page {pfn:#x} handed out twice while held");
        }
    }

    /// Records that a block is being freed.
    pub fn give_page(&self, page: &Page, order: u32) {
        let mut held = self.0.lock().unwrap();
        for pfn in page.pfn()..page.pfn() + (1 << order) {
            assert!(held.remove(&page_key(pfn)), "page {pfn:#x} freed but not held");
        }
    }

    /// Records an object just handed out (objects of one class never
    /// overlap unless they are the same object).
    pub fn take_obj(&self, obj: *mut u8) {
        assert!(!obj.is_null(), "object allocation failed");
        assert!(self.0.lock().unwrap().insert(obj as usize), "object {obj:p} handed out twice while held");
    }

    /// Records that an object is being freed.
    pub fn give_obj(&self, obj: *mut u8) {
        assert!(self.0.lock().unwrap().remove(&(obj as usize)), "object {obj:p} freed but not held");
    }

    /// How many blocks' pages and objects are held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Allocates a block through `pages`, recording it in `held`.
pub fn alloc(pages: &PageAllocator, held: &Held, gfp: Gfp, order: u32) -> Option<Page> {
    let p = pages.alloc_pages(gfp, order)?;
    held.take_page(&p, order);
    Some(p)
}

/// Frees a block through `pages`, recording it in `held`.
pub fn free(pages: &PageAllocator, held: &Held, p: Page, order: u32) {
    held.give_page(&p, order);
    pages.free_pages(p, order);
}

/// A raw object pointer moved to another loom thread with its ownership.
pub struct Obj(pub *mut u8);
// SAFETY: an object belongs to whichever thread holds its `Obj`.
unsafe impl Send for Obj {}

/// A thread cache moved to the loom thread that will own it.
pub struct SendCache(pub ThreadCache);
// SAFETY: the cache is used by one thread at a time: built in the model's
// main thread, then moved to and used only by the thread it is given to.
unsafe impl Send for SendCache {}

impl SendCache {
    /// The cache, in the thread it was moved to. (A method, so that a
    /// closure captures the whole wrapper, not just the non-`Send` field.)
    pub fn into_inner(self) -> ThreadCache {
        self.0
    }
}

/// Counters differences between two `vmstat()`s.
pub fn delta(after: &VmStat, before: &VmStat) -> VmStat {
    VmStat {
        pgalloc: after.pgalloc - before.pgalloc,
        pgfree: after.pgfree - before.pgfree,
        pcp_alloc: after.pcp_alloc - before.pcp_alloc,
        pcp_free: after.pcp_free - before.pcp_free,
        pcp_refill: after.pcp_refill - before.pcp_refill,
        pcp_drain: after.pcp_drain - before.pcp_drain,
        bulk_alloc: after.bulk_alloc - before.bulk_alloc,
        zone_lock: after.zone_lock - before.zone_lock,
        pcp_trylock_fail: after.pcp_trylock_fail - before.pcp_trylock_fail,
        fallback: after.fallback - before.fallback,
        slowpath: after.slowpath - before.slowpath,
        drain_all: after.drain_all - before.drain_all,
        slowpath_grow: after.slowpath_grow - before.slowpath_grow,
        purge_ticks: after.purge_ticks - before.purge_ticks,
        purge_calls: after.purge_calls - before.purge_calls,
        purged_pages: after.purged_pages - before.purged_pages,
        pcp_decay_drains: after.pcp_decay_drains - before.pcp_decay_drains,
        exit_purges: after.exit_purges - before.exit_purges,
    }
}

/// Named events a model wants to see in at least one interleaving (a
/// try-lock that failed, a refill, a drain...): proof that the model
/// reaches the paths it is there for, not only that they are correct when
/// reached.
#[derive(Default)]
pub struct Coverage(Mutex<Vec<(&'static str, bool)>>);

impl Coverage {
    /// Expects each of `names` to be seen.
    pub fn new(names: &[&'static str]) -> Arc<Coverage> {
        Arc::new(Coverage(Mutex::new(names.iter().map(|&n| (n, false)).collect())))
    }

    /// Records `name` as seen if `happened`.
    pub fn saw(&self, name: &'static str, happened: bool) {
        let mut v = self.0.lock().unwrap();
        let e = v.iter_mut().find(|(n, _)| *n == name).expect("a declared event");
        e.1 |= happened;
    }

    /// Panics naming every event no interleaving showed.
    pub fn assert_all_seen(&self, model: &str) {
        let missing: Vec<_> = self.0.lock().unwrap().iter().filter(|(_, s)| !s).map(|(n, _)| *n).collect();
        assert!(missing.is_empty(), "{model}: no interleaving reached {missing:?}");
    }
}

/// What one run of a model found.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Interleavings (loom iterations) explored.
    pub iterations: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// The preemption bound used.
    pub preemptions: usize,
}

/// Branch bound used when `LOOM_MAX_BRANCHES` is not set: loom's default
/// of 1000 is close to what one execution of the slab and fork models
/// takes with a waiter spinning; a deadlock still exceeds any bound.
pub const DEFAULT_MAX_BRANCHES: usize = 10_000;

fn builder() -> (loom::model::Builder, usize) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = DEFAULT_MAX_BRANCHES;
    }
    let bound = *b.preemption_bound.get_or_insert(DEFAULT_PREEMPTIONS);
    (b, bound)
}

/// Explores every interleaving of `f` (up to the preemption bound), and
/// prints how many there were and how long it took.
pub fn check<F>(name: &str, f: F) -> Report
where
    F: Fn() + Sync + Send + 'static,
{
    let (b, preemptions) = builder();
    let iterations = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    b.check(body(f, iterations.clone()));
    let r = Report { iterations: iterations.load(Relaxed), elapsed: start.elapsed(), preemptions };
    eprintln!(
        "loom model {name}: {} interleavings in {:.2} s (preemption bound {})",
        r.iterations,
        r.elapsed.as_secs_f64(),
        r.preemptions
    );
    r
}

static QUIET_HOOK: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// Set while this OS thread runs a model that is expected to fail.
    static EXPECTING_FAILURE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` under loom with the deliberately broken variant `variant`
/// switched on (its code is compiled in only with
/// `--cfg loom_broken="<variant>"`), and returns the failure loom reported.
/// Panics if loom explored every interleaving without one (the model cannot
/// catch that bug), or if the failure does not mention `expected`.
pub fn expect_caught<F>(name: &str, variant: &'static str, expected: &[&str], f: F) -> String
where
    F: Fn() + Sync + Send + 'static,
{
    if !QUIET_HOOK.swap(true, Relaxed) {
        // The expected panic is the point; print one line instead of loom's
        // and the panic hook's pages for it.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_FAILURE.with(Cell::get) {
                default(info)
            }
        }));
    }
    let (b, _) = builder();
    let iterations = Arc::new(AtomicUsize::new(0));
    let body = body(f, iterations.clone());
    pcpalloc::set_loom_broken(variant);
    let start = Instant::now();
    EXPECTING_FAILURE.with(|e| e.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| b.check(body)));
    EXPECTING_FAILURE.with(|e| e.set(false));
    pcpalloc::set_loom_broken("");
    let elapsed = start.elapsed();
    let n = iterations.load(Relaxed);
    let payload = match result {
        Ok(()) => panic!("{name}: loom explored {n} interleavings with `{variant}` and found nothing wrong"),
        Err(p) => p,
    };
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic>".into());
    assert!(
        expected.iter().any(|e| msg.contains(e)),
        "{name} with `{variant}`: loom failed, but not with any of {expected:?}: {msg}"
    );
    let first_line = msg.lines().next().unwrap_or("");
    eprintln!(
        "loom model {name} caught `{variant}` at interleaving {n} ({:.2} s): {first_line}",
        elapsed.as_secs_f64()
    );
    msg
}
