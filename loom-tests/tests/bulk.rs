//! Model 3: `alloc_pages_bulk_array` on one thread while another allocates
//! and frees single pages on the same CPU. The bulk call holds the PCP for
//! its whole batch (refilling the empty list with all it still needs, one
//! `rmqueue_bulk` inside); the other thread's try-lock
//! fails meanwhile and it goes to the zone. If the other thread holds the
//! PCP first, the bulk call gets one page the ordinary way instead.
#![cfg(loom)]

use std::sync::Arc;

use loom_tests::*;

const BATCH: usize = 2;
const HIGH: usize = 4;
const SLOTS: usize = 3;

const FILLED: &str = "the bulk call held the PCP and filled every slot";
const BUSY: &str = "the bulk call found the PCP busy and took one page";
const SINGLE_FELL_BACK: &str = "a single-page operation found the PCP held by the bulk call";
const EVENTS: &[&str] = &[FILLED, BUSY, SINGLE_FELL_BACK];

fn model(cov: Arc<Coverage>) -> impl Fn() + Sync + Send + 'static {
    move || {
        let pages = Arc::new(PageAllocator::new(config(1, 16, BATCH, HIGH)));
        prime(&pages);
        let held = Held::new();
        let before = pages.vmstat();

        let t1 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                let mut slots: [Option<Page>; SLOTS] = Default::default();
                let n = pages.alloc_pages_bulk_array(Gfp::DEFAULT, &mut slots);
                assert!(n >= 1, "the bulk call made no progress with memory free");
                assert!(slots[..n].iter().all(Option::is_some) && slots[n..].iter().all(Option::is_none));
                for p in slots.iter().flatten() {
                    held.take_page(p, 0);
                }
                for p in slots.into_iter().flatten() {
                    free(&pages, &held, p, 0);
                }
                n as u64
            })
        };
        let t2 = {
            let (pages, held) = (pages.clone(), held.clone());
            spawn(move || {
                set_cpu(0);
                let p = alloc(&pages, &held, Gfp::DEFAULT, 0).expect("memory is free");
                free(&pages, &held, p, 0);
            })
        };
        let n = t1.join().unwrap();
        t2.join().unwrap();

        let d = delta(&pages.vmstat(), &before);
        assert_eq!((d.pgalloc, d.pgfree), (n + 1, n + 1), "{d:?}");
        let bulk_ok = d.bulk_alloc == 1;
        // With memory free, a bulk call that has the PCP fills every slot; one
        // that does not takes exactly one page.
        assert_eq!(n, if bulk_ok { SLOTS as u64 } else { 1 }, "{d:?}");
        // Every single-page operation went through the PCP or fell back to
        // the zone; a bulk call that found the PCP busy counts one failure.
        assert_eq!(d.pcp_alloc + d.pcp_free + d.pcp_trylock_fail, 2 * (n + 1) + u64::from(!bulk_ok), "{d:?}");
        assert_eq!(d.slowpath, 0, "{d:?}");
        cov.saw(FILLED, bulk_ok);
        cov.saw(BUSY, !bulk_ok);
        cov.saw(SINGLE_FELL_BACK, bulk_ok && d.pcp_trylock_fail > 0);
        assert!(held.is_empty());
        assert_all_back(&pages);
    }
}

#[test]
fn bulk_array_against_single_pages_on_one_cpu() {
    let cov = Coverage::new(EVENTS);
    check("3 bulk", model(cov.clone()));
    cov.assert_all_seen("3 bulk");
}

/// A bulk call that goes on when its try-lock fails.
#[cfg(loom_broken = "bulk_ignores_trylock")]
#[test]
fn broken_bulk_ignores_trylock_is_caught() {
    expect_caught("3 bulk", "bulk_ignores_trylock", &["Causality violation"], model(Coverage::new(EVENTS)));
}
