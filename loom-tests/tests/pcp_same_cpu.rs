//! Model 1: two threads on the same CPU allocating and freeing through one
//! PCP. Whichever holds the PCP's lock makes the other's try-lock fail and
//! send it to the zone (`rmqueue_buddy`, or `free_one_page` straight into the
//! buddy lists); refills (`rmqueue_bulk`) and drains
//! (`free_pcppages_bulk`) run inside the model, under the PCP lock, while the
//! other thread goes to the zone.
#![cfg(loom)]

use std::sync::Arc;

use loom_tests::*;

/// PCP `batch` and `high`: a refill takes 2 blocks, a free that brings
/// `count` to 4 drains.
const BATCH: usize = 2;
const HIGH: usize = 4;

fn model(cov: Arc<Coverage>) -> impl Fn() + Sync + Send + 'static {
    move || {
        let pages = Arc::new(PageAllocator::new(config(1, 16, BATCH, HIGH)));
        prime(&pages);
        let held = Held::new();
        // CPU 0's movable list holds three pages (`count` is high - 1), and a
        // fourth page is out, for the second thread to free.
        let mut setup: Vec<Page> = (0..4).map(|_| alloc(&pages, &held, Gfp::DEFAULT, 0).unwrap()).collect();
        let last = setup.pop().unwrap();
        for p in setup {
            free(&pages, &held, p, 0);
        }
        assert_eq!(pages.zoneinfo().pcp[0].0, 3);
        let before = pages.vmstat();

        // Its reclaimable list is empty: this allocation refills it, and the
        // free brings `count` over `high` and drains.
        let t1 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                let p = alloc(&pages, &held, Gfp::RECLAIMABLE, 0).expect("memory is free");
                free(&pages, &held, p, 0);
            })
        };
        // A free that reaches `high`, then an allocation and a free from the
        // movable list, on the same CPU.
        let t2 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                free(&pages, &held, last, 0);
                let p = alloc(&pages, &held, Gfp::DEFAULT, 0).expect("memory is free");
                free(&pages, &held, p, 0);
            })
        };
        t1.join().unwrap();
        t2.join().unwrap();

        let d = delta(&pages.vmstat(), &before);
        assert_eq!((d.pgalloc, d.pgfree), (2, 3), "pages allocated and freed: {d:?}");
        // Each of the five operations went through the PCP or, when the other
        // thread held it, to the zone: never both, never neither.
        assert_eq!(d.pcp_alloc + d.pcp_free + d.pcp_trylock_fail, 5, "{d:?}");
        assert_eq!(d.slowpath, 0, "{d:?}");
        cov.saw("a try-lock failed and went to the zone", d.pcp_trylock_fail > 0);
        cov.saw("a refill (rmqueue_bulk)", d.pcp_refill > 0);
        cov.saw("a drain (free_pcppages_bulk)", d.pcp_drain > 0);
        cov.saw("a refill and a drain in one interleaving", d.pcp_refill > 0 && d.pcp_drain > 0);
        assert!(held.is_empty());
        assert_all_back(&pages);
    }
}

const EVENTS: &[&str] = &[
    "a try-lock failed and went to the zone",
    "a refill (rmqueue_bulk)",
    "a drain (free_pcppages_bulk)",
    "a refill and a drain in one interleaving",
];

#[test]
fn same_cpu_trylock_fallback_refill_and_drain() {
    let cov = Coverage::new(EVENTS);
    check("1 same CPU", model(cov.clone()));
    cov.assert_all_seen("1 same CPU");
}

/// A free that commits to the PCP without taking its lock.
#[cfg(loom_broken = "free_skips_trylock")]
#[test]
fn broken_free_skips_trylock_is_caught() {
    expect_caught("1 same CPU", "free_skips_trylock", &["Causality violation"], model(Coverage::new(EVENTS)));
}
