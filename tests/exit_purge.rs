//! The purge at a phase's end: when a thread's exit leaves at most one
//! thread with a cache and the zone holds more free dirty memory than half
//! of what is in use, the largest dirty blocks go back to the OS at once.
//! Without the test harness (`harness = false`): the counts are process-wide,
//! and the harness's own thread would be a second live cache.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

const MIB: usize = 1 << 20;

/// Allocates `bytes` in 64 KiB large blocks (zone memory), writes them and
/// frees them: dirty free memory in the zone.
fn churn(bytes: usize) {
    let layout = Layout::from_size_align(64 * 1024, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..bytes / layout.size())
        .map(|_| {
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: the block is ours.
            unsafe { p.write_bytes(0x5A, layout.size()) };
            p
        })
        .collect();
    for p in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
}

fn exit_purges() -> u64 {
    pcpalloc::vmstat().exit_purges
}

fn main() {
    // The main thread's cache is registered (it allocates in `churn`).
    churn(MIB);

    // A worker leaves while another lives: no phase has ended.
    let (release, wait) = mpsc::channel::<()>();
    let (ready, is_ready) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        churn(MIB); // registers this thread's cache
        ready.send(()).unwrap();
        wait.recv().unwrap();
    });
    is_ready.recv().unwrap();
    let before = exit_purges();
    std::thread::spawn(|| churn(16 * MIB)).join().unwrap();
    assert_eq!(exit_purges(), before, "purged while another worker was alive");

    // The last worker leaves, 16 MiB is free and dirty, little is in use.
    let purged_before = pcpalloc::vmstat().purged_pages;
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(exit_purges(), before + 1, "the last worker's exit did not purge");
    let purged = pcpalloc::vmstat().purged_pages - purged_before;
    assert!(purged >= pcpalloc::EXIT_PURGE_PAGES as u64, "purged only {purged} pages");

    // The main thread keeps a live set far above what a worker frees: the
    // worker's pages would only be faulted back in by the next one.
    let layout = Layout::from_size_align(64 * 1024, 8).unwrap();
    let live: Vec<*mut u8> = (0..(64 * MIB) / layout.size())
        .map(|_| {
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: the block is ours.
            unsafe { p.write_bytes(0x33, layout.size()) };
            p
        })
        .collect();
    let before = exit_purges();
    std::thread::spawn(|| churn(4 * MIB)).join().unwrap();
    assert_eq!(exit_purges(), before, "purged with most memory still in use");
    for p in live {
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }

    // Decay set to "never" turns it off too.
    pcpalloc::set_decay_ms(u64::MAX);
    let before = exit_purges();
    std::thread::spawn(|| churn(16 * MIB)).join().unwrap();
    assert_eq!(exit_purges(), before, "purged with purging turned off");
    pcpalloc::set_decay_ms(pcpalloc::DEFAULT_DECAY_MS);
    println!("exit_purge: the last worker leaving purges, and nothing else does: ok");
}
