//! Thread exits give their caches back: 3000 short-lived threads leave the
//! process's RSS and the allocator's own counts where they were.
//!
//! One test in its own binary, because RSS is per process: beside the other
//! tests of `global_alloc.rs` (one grows a 128 MiB vector) the reading
//! moved by tens of MiB with whatever ran at the same moment.

use std::thread;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096
}

fn churn(n: usize) {
    for _ in 0..n / 8 {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    let v: Vec<Vec<u8>> = (0..200).map(|j| vec![i as u8; 16 + j * 8]).collect();
                    let s: String = (0..50).map(|j| format!("{j}")).collect();
                    v.len() + s.len()
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}

#[test]
fn thread_churn_keeps_rss_flat() {
    churn(400);
    let before = rss_bytes();
    let stats_before = pcpalloc::stats();
    churn(3000);
    let after = rss_bytes();
    let stats_after = pcpalloc::stats();
    // Each thread caches up to a few hundred KiB; if exits leaked them,
    // 3000 threads would add hundreds of MiB.
    assert!(after < before + (16 << 20), "RSS grew from {before} to {after} over 3000 threads");
    // Each thread's slot block (128 KiB) is metadata while the thread
    // lives; one kept per exit would add 375 MiB here.
    assert!(
        stats_after.metadata < stats_before.metadata + (4 << 20),
        "metadata grew from {} to {} over 3000 threads",
        stats_before.metadata,
        stats_after.metadata
    );
    // Objects the threads freed are not counted as live.
    assert!(
        stats_after.allocated < stats_before.allocated + (1 << 20),
        "allocated grew from {} to {} over 3000 threads",
        stats_before.allocated,
        stats_after.allocated
    );
}
