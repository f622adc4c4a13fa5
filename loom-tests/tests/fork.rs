//! Model 6: the fork handlers' lock ordering. `fork`'s prepare handler
//! (`SlabAllocator::lock_all_for_fork`, which `pthread_atfork` calls) takes
//! every lock of the slab layer and the page allocator: the class locks and
//! the registry lock, then `grow_lock`, every PCP lock and the zone lock. It
//! races with a thread whose slab refill holds a class lock while it maps a
//! new slab through the page allocator (PCP try-lock, zone lock), and whose
//! page allocation holds a PCP while it refills from the zone. In no
//! interleaving may they deadlock; loom reports a wait that never ends as
//! a model exceeding its branch bound.
#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use loom_tests::*;
use pcpalloc::{size_to_class, SLOT_BLOCK_PAGES};

const PAGE_WAITED: &str = "a page allocation found its PCP held by the fork handler";
const FORK_FIRST: &str = "the fork handler took every lock before the slab refill";
const REFILL_FIRST: &str = "the slab refill mapped its slab before the fork handler";
const EVENTS: &[&str] = &[PAGE_WAITED, FORK_FIRST, REFILL_FIRST];

fn model(cov: Arc<Coverage>) -> impl Fn() + Sync + Send + 'static {
    move || {
        let c = size_to_class(2048);
        let world = World::new(config(1, 128, 2, 4));
        let held = Held::new();
        let before = world.pages().vmstat();
        // Set once the slab refill has its slab (a std atomic: bookkeeping
        // for the coverage check, no loom synchronisation).
        let mapped = Arc::new(AtomicBool::new(false));

        // fork(): prepare, then the parent's handler.
        let t1 = {
            let (world, mapped) = (world.clone(), mapped.clone());
            spawn(move || {
                set_cpu(0);
                world.slabs().lock_all_for_fork();
                let refill_first = mapped.load(Relaxed);
                world.slabs().unlock_all_for_fork();
                refill_first
            })
        };
        // A slab refill that maps a slab (class lock, then PCP and zone), and
        // a page allocation that refills its PCP (PCP lock, then zone lock).
        let t2 = {
            let (world, held) = (world.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                let slabs = world.slabs();
                let mut cache = ThreadCache::new();
                let o = cache.alloc(slabs, c);
                mapped.store(true, Relaxed);
                held.take_obj(o);
                held.give_obj(o);
                // SAFETY: a live object of class `c` from `slabs`.
                unsafe { cache.free(slabs, c, o) };
                cache.kill(slabs);
                let p = alloc(world.pages(), &held, Gfp::RECLAIMABLE, 0).expect("memory is free");
                free(world.pages(), &held, p, 0);
            })
        };
        let refill_first = t1.join().unwrap();
        t2.join().unwrap();

        let d = delta(&world.pages().vmstat(), &before);
        // The cache's slot block comes and goes with it; its exit flush
        // gives every object back to its slab (the emptied slab is kept as
        // the class's one empty slab), so no transfer block is taken.
        assert_eq!(
            (d.pgalloc, d.pgfree),
            (4 + 1 + SLOT_BLOCK_PAGES as u64, 1 + SLOT_BLOCK_PAGES as u64),
            "a 4-page slab, a page and a slot block: {d:?}"
        );
        cov.saw(PAGE_WAITED, d.pcp_trylock_fail > 0);
        cov.saw(FORK_FIRST, !refill_first);
        cov.saw(REFILL_FIRST, refill_first);
        assert!(held.is_empty());
        let slabs = world.slabs();
        slabs.shrink();
        assert_eq!(slabs.class_info(c).num_slabs, 0);
        assert_all_back(world.pages());
    }
}

#[test]
fn fork_prepare_against_slab_and_page_paths() {
    let cov = Coverage::new(EVENTS);
    check("6 fork", model(cov.clone()));
    cov.assert_all_seen("6 fork");
}

/// A prepare handler that takes the page allocator's locks before the slab
/// layer's: it holds the zone lock while it waits for a class lock that a
/// refill holds while it waits for the zone lock.
#[cfg(loom_broken = "fork_pages_before_slabs")]
#[test]
fn broken_fork_pages_before_slabs_is_caught() {
    expect_caught(
        "6 fork",
        "fork_pages_before_slabs",
        &["maximum number of branches", "deadlock"],
        model(Coverage::new(EVENTS)),
    );
}
