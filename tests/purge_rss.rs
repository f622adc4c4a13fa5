//! RSS follows the live set: after a 1 GiB burst, freeing 90% brings the
//! process's RSS back near the remaining live set, with `trim()` at once and
//! without it within twice the decay time. One test: RSS is per process.

use std::alloc::{GlobalAlloc, Layout};
use std::time::{Duration, Instant};

const DECAY_MS: u64 = 500;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new().with_decay_ms(DECAY_MS);

const MIB: usize = 1 << 20;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Builds a live set of `total` bytes in sizes from 64 B to 4 MiB, every
/// byte written, then frees 90% of the blocks in random order. Returns the
/// blocks left and their total size.
fn burst(rng: &mut XorShift, total: usize) -> (Vec<(*mut u8, Layout)>, usize) {
    let mut blocks = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        let size = (64usize << (rng.next() % 17)) + (rng.next() % 64) as usize;
        let size = size.min(4 * MIB);
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: `size` bytes are ours.
        unsafe { p.write_bytes(0x5A, size) };
        blocks.push((p, layout));
        bytes += size;
    }
    // Fisher-Yates, then free the first 90%.
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let keep = blocks.len() / 10;
    for (p, layout) in blocks.drain(keep..) {
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
    let live = blocks.iter().map(|(_, l)| l.size()).sum();
    (blocks, live)
}

fn release(blocks: Vec<(*mut u8, Layout)>) {
    for (p, layout) in blocks {
        // SAFETY: allocated by `burst` with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
}

/// RSS must be within 10% + 16 MiB of the live set, on top of what the
/// process held before the burst; and `stats().resident` must explain RSS.
fn check(what: &str, baseline: usize, other: usize, live: usize) {
    let rss = rss();
    let bound = baseline + live + live / 10 + 16 * MIB;
    let s = pcpalloc::stats();
    eprintln!(
        "{what}: rss {} MiB, live {} MiB, baseline {} MiB, bound {} MiB\n{s}",
        rss / MIB,
        live / MIB,
        baseline / MIB,
        bound / MIB
    );
    assert!(rss <= bound, "{what}: RSS {rss} above the live set's bound {bound}");
    let explained = other + s.resident;
    let slack = rss / 20 + 16 * MIB;
    assert!(
        explained.abs_diff(rss) <= slack,
        "{what}: stats().resident {} + other {other} = {explained} does not explain RSS {rss}",
        s.resident
    );
    assert!(
        s.allocated >= live && s.allocated <= live + live / 8 + 8 * MIB,
        "allocated {} vs live {live}",
        s.allocated
    );
}

#[test]
fn rss_follows_the_live_set() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    // Warm up so the baseline includes the allocator's first section.
    let warm: Vec<Vec<u8>> = (0..100).map(|i| vec![1u8; 100 * i + 1]).collect();
    drop(warm);
    pcpalloc::trim();
    let baseline = rss();
    // RSS that is not the allocator's: the binary, libraries, stacks.
    let other = baseline.saturating_sub(pcpalloc::stats().resident);

    // (b) Without trim(): wait twice the decay time, allocating now and then.
    let (kept, live) = burst(&mut rng, 1 << 30);
    let start = Instant::now();
    let mut small = Vec::new();
    while start.elapsed() < Duration::from_millis(2 * DECAY_MS + 100) {
        let n = (rng.next() % 100_000) as usize + 1;
        small.push(vec![3u8; n]);
        if small.len() > 8 {
            small.remove(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(small);
    check("after twice the decay time", baseline, other, live);
    let purged = pcpalloc::stats().purge_calls;
    assert!(purged > 0);
    release(kept);

    // (a) With trim(): at once.
    let (kept, live) = burst(&mut rng, 1 << 30);
    pcpalloc::trim();
    check("after trim()", baseline, other, live);
    release(kept);
    pcpalloc::trim();
    check("after freeing everything and trim()", baseline, other, 0);
}
