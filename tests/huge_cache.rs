//! Huge blocks (above 512 KiB) keep their freed mappings for reuse: a freed
//! mapping serves the next request that fits (cleared when it asks for
//! zeroed memory), a block served from a longer range grows in place and
//! frees the whole range, a small block cuts a big range rather than
//! holding it, the cache is bounded, and what it holds goes back to the OS
//! after the decay time and on `trim`.
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

        // 8 MiB from the cached 64 MiB mapping (cut from its head, the rest
        // stays cached), then doubling: in place, taking the cached range
        // after the block each time.
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
        // Shrunk from 32 to 5 MiB: the 27 MiB tail goes to the cache and
        // joins the 32 MiB after it; freed, the block joins them too, so the
        // whole 64 MiB range serves a 64 MiB request again.
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
    let blocks: Vec<*mut u8> = (0..24).map(|_| unsafe { GLOBAL.alloc(layout(6 * MIB)) }).collect();
    for &b in &blocks {
        assert!(!b.is_null());
        // SAFETY: a live 6 MiB block.
        unsafe { fill(b, 6 * MIB, 7) };
    }
    // Every other block: twelve freed ranges, none touching another (a live
    // block lies between any two that the kernel placed side by side), so
    // none are joined and the eight slots are what holds them.
    for &b in blocks.iter().step_by(2) {
        // SAFETY: freed once with its layout.
        unsafe { GLOBAL.dealloc(b, layout(6 * MIB)) };
    }
    let held = pcpalloc::stats().mapped.saturating_sub(mapped_before + 12 * 6 * MIB);
    assert!(held <= 8 * 6 * MIB + 4 * MIB, "at most 8 ranges are kept: {} MiB mapped more", held / MIB);
    assert!(held >= 6 * MIB, "freed mappings are kept: {} MiB", held / MIB);
    for &b in blocks.iter().skip(1).step_by(2) {
        // SAFETY: the other half, freed once with its layout.
        unsafe { GLOBAL.dealloc(b, layout(6 * MIB)) };
    }

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
        // Every page resident, then freed and taken back for 40 MiB: the
        // rest, 24 MiB, is no bigger than the block, so it stays the block's
        // resident slack.
        fill(p, 64 * MIB, 9);
        GLOBAL.dealloc(p, layout(64 * MIB));
        let q = GLOBAL.alloc(layout(40 * MIB));
        assert_eq!(q, p);
        pcpalloc::set_decay_ms(20);
        let before = rss();
        thread::sleep(Duration::from_millis(60));
        // Any huge call runs the scan.
        let r = GLOBAL.alloc(layout(5 * MIB));
        GLOBAL.dealloc(r, layout(5 * MIB));
        let after = rss();
        assert!(
            before.saturating_sub(after) >= 20 * MIB,
            "the slack went back: rss {} -> {} MiB",
            before / MIB,
            after / MIB
        );
        // The block itself is intact and can still grow into its mapping.
        check(q, 40 * MIB, 9);
        let q2 = GLOBAL.realloc(q, layout(40 * MIB), 60 * MIB);
        assert_eq!(q2, q);
        check(q2, 40 * MIB, 9);
        GLOBAL.dealloc(q2, layout(60 * MIB));
        pcpalloc::set_decay_ms(pcpalloc::DEFAULT_DECAY_MS);
    }
}

#[test]
fn a_small_request_cuts_a_big_cached_range_instead_of_holding_all_of_it() {
    let _g = serial();
    // SAFETY: as above.
    unsafe {
        let p = GLOBAL.alloc(layout(64 * MIB));
        fill(p, 64 * MIB, 10);
        GLOBAL.dealloc(p, layout(64 * MIB));
        // 1 MiB takes the head; the other 63 MiB stay free for the next
        // request instead of being held as the small block's slack.
        let small = GLOBAL.alloc(layout(MIB));
        assert_eq!(small, p);
        let rss_start = rss();
        let rest = GLOBAL.alloc(layout(63 * MIB));
        assert_eq!(rest as usize, p as usize + MIB, "the rest of the range serves the next request");
        fill(rest, 63 * MIB, 11);
        let faulted = rss().saturating_sub(rss_start);
        assert!(faulted < 8 * MIB, "the rest was resident already: rss +{} MiB", faulted / MIB);
        check(small, MIB, 10);
        GLOBAL.dealloc(small, layout(MIB));
        GLOBAL.dealloc(rest, layout(63 * MIB));
        // Both freed, joined again: one 64 MiB range.
        let again = GLOBAL.alloc(layout(64 * MIB));
        assert_eq!(again, p);
        GLOBAL.dealloc(again, layout(64 * MIB));
    }
}

#[test]
fn a_range_that_spans_two_mappings_still_grows() {
    let _g = serial();
    // SAFETY: as above.
    unsafe {
        // Two faulted 6 MiB mappings side by side are two system mappings
        // (the kernel does not merge anonymous mappings faulted apart); the
        // kernel usually places a new mapping right below the last one.
        let mut held = Vec::new();
        let pair = (0..16).find_map(|_| {
            let a = GLOBAL.alloc(layout(6 * MIB));
            fill(a, 6 * MIB, 12);
            held.push(a);
            let n = held.len();
            (n >= 2 && (held[n - 2] as usize).abs_diff(a as usize) == 6 * MIB).then(|| (held[n - 2], a))
        });
        let (a, b) = pair.expect("no two huge mappings side by side: the case is not set up");
        for &h in &held {
            if h != a && h != b {
                GLOBAL.dealloc(h, layout(6 * MIB));
            }
        }
        pcpalloc::trim();
        GLOBAL.dealloc(a, layout(6 * MIB));
        GLOBAL.dealloc(b, layout(6 * MIB));
        // Joined in the cache: one 12 MiB range across both mappings.
        let low = a.min(b);
        let p = GLOBAL.alloc(layout(12 * MIB));
        assert_eq!(p, low, "the joined range serves 12 MiB");
        fill(p, 12 * MIB, 13);
        // Older kernels' `mremap` refuses a range across two mappings, and
        // the block then moves by copy; this one (6.18) moves it. Either
        // way the content survives.
        let q = GLOBAL.realloc(p, layout(12 * MIB), 40 * MIB);
        assert!(!q.is_null());
        check(q, 12 * MIB, 13);
        fill(q, 40 * MIB, 14);
        GLOBAL.dealloc(q, layout(40 * MIB));
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
