//! Model 2: two threads on different CPUs. One refills its PCP from the
//! zone (`rmqueue_bulk` splitting free blocks) while the other drains its
//! PCP into the zone (`free_pcppages_bulk` merging them), and the blocks
//! involved are buddies of each other: the drain merges two pages into the
//! very block the refill would take next, or, if the refill comes first,
//! merges next to the block the refill has just split. Either order of the
//! two zone-lock holds (and of the PCP work around them) must leave a
//! consistent zone that merges back completely.
#![cfg(loom)]

use std::sync::Arc;

use loom_tests::*;

const BATCH: usize = 2;
const HIGH: usize = 4;

fn model(cov: Arc<Coverage>) -> impl Fn() + Sync + Send + 'static {
    move || {
        let pages = Arc::new(PageAllocator::new(config(2, 16, BATCH, HIGH)));
        prime(&pages);
        let held = Held::new();
        // CPU 1 takes six single pages (three refills, splitting the zone's
        // smallest blocks). Two of them are buddies whose order-1 buddy is
        // still free in the zone: CPU 1 frees those two first, so they sit at
        // the cold tail of its list, then one more, leaving `count` one below
        // `high`; one page is the second thread's to free, two stay out.
        set_cpu(1);
        let mut setup: Vec<Page> = (0..6).map(|_| alloc(&pages, &held, Gfp::DEFAULT, 0).unwrap()).collect();
        setup.sort_by_key(Page::pfn);
        let i = (0..5)
            .find(|&i| setup[i].pfn() & 3 == 0 && setup[i + 1].pfn() == setup[i].pfn() + 1)
            .expect("two of the pages are buddies at the start of an order-2 block");
        let pair: Vec<Page> = setup.drain(i..i + 2).collect();
        let merged = pair[0].pfn();
        for p in pair {
            free(&pages, &held, p, 0);
        }
        free(&pages, &held, setup.pop().unwrap(), 0);
        let last = setup.pop().unwrap();
        let ballast = setup;
        set_cpu(0);
        assert_eq!(pages.zoneinfo().pcp[1].0, 3);
        let before = pages.vmstat();

        // CPU 0: a refill of two order-1 blocks, splitting what the zone has...
        let t1 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                let a = alloc(&pages, &held, Gfp::DEFAULT, 1).expect("memory is free");
                let pfn = a.pfn();
                free(&pages, &held, a, 1);
                pfn
            })
        };
        // ...while CPU 1's next free reaches `high` and drains the two
        // buddies from its cold tail into the zone, merging them.
        let t2 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(1);
                free(&pages, &held, last, 0);
            })
        };
        let got = t1.join().unwrap();
        t2.join().unwrap();

        let d = delta(&pages.vmstat(), &before);
        assert_eq!((d.pgalloc, d.pgfree), (2, 3), "{d:?}");
        // Different CPUs never contend for a PCP: every operation used its own.
        assert_eq!((d.pcp_alloc, d.pcp_free, d.pcp_trylock_fail, d.slowpath), (1, 2, 0, 0), "{d:?}");
        assert_eq!((d.pcp_refill, d.pcp_drain), (1, 2), "{d:?}");
        // Drain first: the two pages and their free order-1 buddy merged into
        // an order-2 block, which the refill split again. Refill first: it
        // took that buddy, so the drain merged the two pages to order 1 only.
        cov.saw("drain first: the refill split the block the drain had merged", got == merged);
        cov.saw("refill first: it took the buddy the drain would have merged with", got == merged ^ 2);
        for p in ballast {
            free(&pages, &held, p, 0);
        }
        assert!(held.is_empty());
        assert_all_back(&pages);
    }
}

const EVENTS: &[&str] = &[
    "drain first: the refill split the block the drain had merged",
    "refill first: it took the buddy the drain would have merged with",
];

#[test]
fn two_cpus_refill_splits_while_drain_merges() {
    let cov = Coverage::new(EVENTS);
    check("2 two CPUs", model(cov.clone()));
    cov.assert_all_seen("2 two CPUs");
}

/// A drain that merges into the zone without the zone lock.
#[cfg(loom_broken = "drain_skips_zone_lock")]
#[test]
fn broken_drain_skips_zone_lock_is_caught() {
    expect_caught("2 two CPUs", "drain_skips_zone_lock", &["Causality violation"], model(Coverage::new(EVENTS)));
}

/// A refill that chooses each block under one hold of the zone lock and
/// takes it under the next: the drain can merge the chosen block away in
/// between. Nothing here skips a lock, so only the model's own assertions
/// (no page held twice, a consistent zone that merges back) can catch it.
#[cfg(loom_broken = "refill_drops_zone_lock")]
#[test]
fn broken_refill_drops_zone_lock_is_caught() {
    expect_caught("2 two CPUs", "refill_drops_zone_lock", CORRUPTION, model(Coverage::new(EVENTS)));
}
