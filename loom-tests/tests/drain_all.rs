//! Model 4: `drain_all_pages`, the slow path's drain of every CPU's list,
//! racing with allocations on those CPUs. The arena has two pages and each
//! CPU's refill takes two, so whichever CPU refills first holds both on its
//! list; the other CPU's allocation finds the zone empty, enters the slow
//! path, and must get the spare page back by draining that list, even while
//! the refill that put it there is still in progress under the PCP lock.
#![cfg(loom)]

use std::sync::Arc;

use loom_tests::*;

const BATCH: usize = 2;
const HIGH: usize = 4;

const FAILED: &str = "an allocation failed while a page was free on another CPU's list";
const SLOWPATH: &str = "an allocation took the slow path and drained the other CPU";
const DRAIN_HELD: &str = "an operation found its PCP held by the other CPU's drain";
const EVENTS: &[&str] = &[SLOWPATH, DRAIN_HELD];

fn model(cov: Arc<Coverage>) -> impl Fn() + Sync + Send + 'static {
    move || {
        let pages = Arc::new(PageAllocator::new(config(2, 2, BATCH, HIGH)));
        prime(&pages);
        assert_eq!(pages.zoneinfo().free_pages, 2);
        let held = Held::new();
        let before = pages.vmstat();

        let on_cpu = |cpu: usize| {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(cpu);
                // NOWAIT: the slow path drains, but does not try to grow.
                let p = alloc(&pages, &held, Gfp::NOWAIT, 0).expect(FAILED);
                free(&pages, &held, p, 0);
            })
        };
        let t1 = on_cpu(0);
        let t2 = on_cpu(1);
        t1.join().unwrap();
        t2.join().unwrap();

        let d = delta(&pages.vmstat(), &before);
        assert_eq!((d.pgalloc, d.pgfree), (2, 2), "{d:?}");
        // Each slow path drained every CPU once. Every operation was served
        // by its PCP, or found it busy (held by the other CPU's drain), or
        // found it empty and went down the slow path.
        assert_eq!(d.slowpath, d.drain_all, "{d:?}");
        assert!(d.pcp_alloc + d.pcp_free + d.pcp_trylock_fail + d.slowpath >= 4, "{d:?}");
        assert!(d.pcp_alloc <= 2 && d.pcp_free <= 2, "{d:?}");
        cov.saw(SLOWPATH, d.slowpath >= 1);
        assert!(d.slowpath <= 1, "the first refill takes both pages: one slow path at most");
        cov.saw(DRAIN_HELD, d.pcp_trylock_fail > 0);
        assert!(held.is_empty());
        assert_all_back(&pages);
    }
}

#[test]
fn drain_all_pages_against_refills_on_other_cpus() {
    let cov = Coverage::new(EVENTS);
    check("4 drain_all", model(cov.clone()));
    cov.assert_all_seen("4 drain_all");
}

/// A `drain_all_pages` that skips a PCP whose `count`, read without its
/// lock, is zero (the race the kernel fixed in 2024).
#[cfg(loom_broken = "drain_all_racy_count")]
#[test]
fn broken_drain_all_racy_count_is_caught() {
    expect_caught(
        "4 drain_all",
        "drain_all_racy_count",
        &["Causality violation", FAILED],
        model(Coverage::new(EVENTS)),
    );
}
