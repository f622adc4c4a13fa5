//! Huge blocks (above 4 MiB) keep their freed mappings for reuse: a freed
//! mapping serves the next request that fits (cleared when it asks for
//! zeroed memory), a block served from a longer mapping grows in place and
//! frees the whole mapping, the cache is bounded, and what it holds goes
//! back to the OS after the decay time and on `trim`.
//!
//! The tests share the process-wide cache, so they run one at a time.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use pcpalloc::PcpAlloc;

#[global_allocator]
static GLOBAL: PcpAlloc = PcpAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

/// Takes the lock and starts from an empty cache.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    pcpalloc::set_decay_ms(pcpalloc::DEFAULT_DECAY_MS);
    pcpalloc::trim();
    g
}

/// Writes one byte per page of `[p, p + len)`, derived from `seed`.
///
/// # Safety
/// `p` must be a live block of at least `len` bytes.
unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: the caller's block has `len` bytes.
        unsafe { p.add(off).write(seed ^ (off >> 12) as u8) };
    }
}

/// Checks what `fill` wrote.
///
/// # Safety
/// As for `fill`.
unsafe fn check(p: *const u8, len: usize, seed: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: as for `fill`.
        assert_eq!(unsafe { p.add(off).read() }, seed ^ (off >> 12) as u8, "byte at {off} of {len}");
    }
}

#[test]
fn a_freed_mapping_serves_the_next_request_and_is_cleared_for_a_zeroed_one() {
    let _g = serial();
    // SAFETY: every block is used within its size and freed once with its layout.
    unsafe {
        let p = GLOBAL.alloc(layout(8 * MIB));
        assert!(!p.is_null());
        fill(p, 8 * MIB, 1);
        GLOBAL.dealloc(p, layout(8 * MIB));
        let cached = pcpalloc::stats().cached;
        assert!(cached >= 8 * MIB, "a freed huge mapping is held: cached {cached}");

        let q = GLOBAL.alloc(layout(8 * MIB));
        assert_eq!(q, p, "the same size takes the cached mapping");
        GLOBAL.dealloc(q, layout(8 * MIB));

        let z = GLOBAL.alloc_zeroed(layout(8 * MIB - 100));
        assert_eq!(z, p, "a zeroed request takes it too");
        let bytes = std::slice::from_raw_parts(z, 8 * MIB - 100);
        assert!(bytes.iter().all(|&b| b == 0), "cached memory handed out for alloc_zeroed is zero");
        GLOBAL.dealloc(z, layout(8 * MIB - 100));

        // A bigger request cannot use it.
        let big = GLOBAL.alloc(layout(9 * MIB));
        assert!(!big.is_null());
        assert_ne!(big, p);
        fill(big, 9 * MIB, 2);
        check(big, 9 * MIB, 2);
        GLOBAL.dealloc(big, layout(9 * MIB));
    }
}

#[test]
fn a_block_from_a_longer_mapping_grows_in_place_and_frees_the_whole_mapping() {
    let _g = serial();
    // SAFETY: as above.
    unsafe {
        let first = GLOBAL.alloc(layout(64 * MIB));
        assert!(!first.is_null());
        fill(first, 64 * MIB, 3);
        GLOBAL.dealloc(first, layout(64 * MIB));

        // 8 MiB from the cached 64 MiB mapping, then doubling: in place.
        let mut size = 8 * MIB;
        let mut p = GLOBAL.alloc(layout(size));
        assert_eq!(p, first, "the only cached mapping serves a smaller request");
        fill(p, size, 4);
        let rss_start = rss();
        while size < 32 * MIB {
            let q = GLOBAL.realloc(p, layout(size), size * 2);
            assert_eq!(q, p, "growth inside the mapping stays in place");
            check(q, size, 4);
            fill(q, size * 2, 4);
            p = q;
            size *= 2;
        }
        let faulted = rss().saturating_sub(rss_start);
        assert!(faulted < 8 * MIB, "growing into the resident mapping faults nothing: rss +{} MiB", faulted / MIB);
        // Shrunk from 32 to 5 MiB (in place: the mapping keeps its length)
        // and freed at that size: the registry knows the mapping is 64 MiB,
        // so all of it goes back to the cache. (An exact block, one that
        // fills its mapping, shrinks for real with `mremap`.)
        let q = GLOBAL.realloc(p, layout(size), 5 * MIB);
        assert_eq!(q, p);
        check(q, 5 * MIB, 4);
        GLOBAL.dealloc(q, layout(5 * MIB));
        let again = GLOBAL.alloc(layout(64 * MIB));
        assert_eq!(again, first, "the whole 64 MiB mapping came back to the cache");
        fill(again, 64 * MIB, 6);
        check(again, 64 * MIB, 6);

        // Outgrowing a mapping moves into a cached one big enough (by copy),
        // or grows with mremap: the content survives either way.
        let other = GLOBAL.alloc(layout(96 * MIB));
        GLOBAL.dealloc(other, layout(96 * MIB));
        let grown = GLOBAL.realloc(again, layout(64 * MIB), 80 * MIB);
        assert_eq!(grown, other, "moved into the cached 96 MiB mapping");
        check(grown, 64 * MIB, 6);
        let grown2 = GLOBAL.realloc(grown, layout(80 * MIB), 200 * MIB);
        assert!(!grown2.is_null());
        check(grown2, 64 * MIB, 6);
        GLOBAL.dealloc(grown2, layout(200 * MIB));
    }
}

#[test]
fn the_cache_is_bounded_and_trim_and_the_decay_time_give_it_back() {
    let _g = serial();
    let mapped_before = pcpalloc::stats().mapped;
    // SAFETY: as above.
    let blocks: Vec<*mut u8> = (0..12).map(|_| unsafe { GLOBAL.alloc(layout(6 * MIB)) }).collect();
    for &b in &blocks {
        assert!(!b.is_null());
        // SAFETY: a live 6 MiB block.
        unsafe { fill(b, 6 * MIB, 7) };
    }
    for &b in &blocks {
        // SAFETY: freed once with its layout.
        unsafe { GLOBAL.dealloc(b, layout(6 * MIB)) };
    }
    let held = pcpalloc::stats().mapped.saturating_sub(mapped_before);
    assert!(held <= 8 * 6 * MIB + 4 * MIB, "at most 8 mappings are kept: {} MiB mapped more", held / MIB);
    assert!(held >= 6 * MIB, "freed mappings are kept: {} MiB", held / MIB);

    let rss_held = rss();
    pcpalloc::trim();
    let rss_trimmed = rss();
    assert!(
        rss_held.saturating_sub(rss_trimmed) >= 5 * 6 * MIB,
        "trim unmaps the cached mappings: rss {} -> {} MiB",
        rss_held / MIB,
        rss_trimmed / MIB
    );

    // Past the decay time, the next huge call's scan unmaps them.
    pcpalloc::set_decay_ms(20);
    // SAFETY: as above.
    unsafe {
        let p = GLOBAL.alloc(layout(6 * MIB));
        fill(p, 6 * MIB, 8);
        GLOBAL.dealloc(p, layout(6 * MIB));
    }
    let before = rss();
    thread::sleep(Duration::from_millis(60));
    // SAFETY: as above. The scan runs before the lookup, so the expired
    // mapping is unmapped and this one is mapped fresh.
    unsafe {
        let q = GLOBAL.alloc(layout(7 * MIB));
        GLOBAL.dealloc(q, layout(7 * MIB));
    }
    let after = rss();
    assert!(before.saturating_sub(after) >= 5 * MIB, "decayed: rss {} -> {} MiB", before / MIB, after / MIB);
    pcpalloc::set_decay_ms(pcpalloc::DEFAULT_DECAY_MS);
}

#[test]
fn unused_slack_is_purged_after_the_decay_time() {
    let _g = serial();
    // SAFETY: as above.
    unsafe {
        let p = GLOBAL.alloc(layout(64 * MIB));
        fill(p, 64 * MIB, 9);
        // Every page resident, then freed and taken back for 6 MiB: 58 MiB of
        // resident slack.
        let full = p;
        for off in (0..64 * MIB).step_by(4096) {
            full.add(off).write(1);
        }
        GLOBAL.dealloc(p, layout(64 * MIB));
        let q = GLOBAL.alloc(layout(6 * MIB));
        assert_eq!(q, p);
        pcpalloc::set_decay_ms(20);
        let before = rss();
        thread::sleep(Duration::from_millis(60));
        // Any huge call runs the scan.
        let r = GLOBAL.alloc(layout(5 * MIB));
        GLOBAL.dealloc(r, layout(5 * MIB));
        let after = rss();
        assert!(
            before.saturating_sub(after) >= 40 * MIB,
            "the slack went back: rss {} -> {} MiB",
            before / MIB,
            after / MIB
        );
        // The block itself is intact and can still grow into its mapping.
        let q2 = GLOBAL.realloc(q, layout(6 * MIB), 60 * MIB);
        assert_eq!(q2, q);
        assert_eq!(q2.read(), 1);
        GLOBAL.dealloc(q2, layout(60 * MIB));
        pcpalloc::set_decay_ms(pcpalloc::DEFAULT_DECAY_MS);
    }
}

#[test]
fn threads_share_the_cache_without_losing_bytes() {
    let _g = serial();
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..40usize {
                    let size = (5 + (i + t as usize) % 7) * MIB;
                    let mut v: Vec<u8> = Vec::with_capacity(size);
                    v.resize(size, t);
                    v.extend_from_slice(&[t; 4096]);
                    v.resize(size * 2, t ^ 0xff);
                    assert!(v[..size + 4096].iter().step_by(4093).all(|&b| b == t));
                    assert!(v[size + 4096..].iter().step_by(4093).all(|&b| b == t ^ 0xff));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}
