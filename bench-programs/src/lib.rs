//! What the whole-program benchmarks (`src/bin/*.rs`) share: the global
//! allocator a cargo feature picks ([`ALLOCATOR`] names it), the command line
//! (`--scale`, `--threads`), a seeded xorshift generator, a raw heap block
//! that writes what it is given, and the closing line with the checksum.
//!
//! Every program does a fixed amount of work that depends only on its
//! arguments, so the same binary built against each allocator does the same
//! thing; `benches/programs.py` builds it once per allocator, runs each build
//! as its own process and compares time and peak RSS.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::time::Instant;

mod global;
pub mod stats;

pub use global::ALLOCATOR;

/// The command line every program takes: `[--scale F] [--threads N] [F]`.
///
/// `--scale` (or a bare number, or the environment variable `BENCH_SCALE`)
/// multiplies the amount of work: 1 is the benchmark, 0.01 a smoke test.
#[derive(Clone, Debug)]
pub struct Args {
    /// Work multiplier.
    pub scale: f64,
    /// Threads to use, when the program has a choice.
    pub threads: Option<usize>,
}

impl Args {
    /// Parses `std::env::args()`; prints usage and exits on anything else.
    pub fn parse() -> Args {
        let mut args = Args { scale: 1.0, threads: None };
        if let Ok(s) = std::env::var("BENCH_SCALE") {
            args.scale = s.parse().unwrap_or_else(|_| usage(&format!("BENCH_SCALE={s} is not a number")));
        }
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--scale" => args.scale = number(it.next(), "--scale"),
                "--threads" => args.threads = Some(number(it.next(), "--threads")),
                "-h" | "--help" => usage(""),
                _ => args.scale = a.parse().unwrap_or_else(|_| usage(&format!("unexpected argument {a:?}"))),
            }
        }
        if !(args.scale > 0.0 && args.scale.is_finite()) {
            usage("the scale must be a positive number");
        }
        args
    }

    /// `n` times the scale, at least `min`.
    pub fn scaled(&self, n: u64, min: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(min)
    }

    /// `--threads`, or `default`.
    pub fn threads_or(&self, default: usize) -> usize {
        self.threads.unwrap_or(default).max(1)
    }
}

fn number<T: std::str::FromStr>(v: Option<String>, flag: &str) -> T {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    v.parse().unwrap_or_else(|_| usage(&format!("{flag} {v:?} is not a number")))
}

fn usage(problem: &str) -> ! {
    let prog = std::env::args().next().unwrap_or_default();
    if !problem.is_empty() {
        eprintln!("{prog}: {problem}");
    }
    eprintln!("usage: {prog} [--scale F] [--threads N] [F]   (or BENCH_SCALE=F; 1 = benchmark, 0.01 = smoke test)");
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}

/// The number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// xorshift64* seeded through splitmix64: fast, deterministic, good enough
/// to pick sizes and slots.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }

    /// True with probability `percent` / 100.
    #[inline]
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One heap block of a given size and alignment from the global allocator,
/// with a tag byte written at both ends (so that the allocation is used and a
/// block handed out twice shows up as a wrong tag), freed on drop with the
/// same `Layout` (Rust's sized free).
#[derive(Debug)]
pub struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Block` owns its allocation alone; the global allocator lets any
// thread free what another allocated.
unsafe impl Send for Block {}

impl Block {
    /// Allocates `size` bytes (`size > 0`) aligned to `align` and writes `tag`
    /// into the first and last byte.
    #[inline]
    pub fn new(size: usize, align: usize, tag: u8) -> Block {
        let layout = Layout::from_size_align(size, align).expect("size and alignment make a Layout");
        assert!(size > 0, "Block needs a size");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        // SAFETY: both offsets are within the `size` bytes just allocated.
        unsafe {
            ptr.as_ptr().write(tag);
            ptr.as_ptr().add(size - 1).write(tag);
        }
        Block { ptr, layout }
    }

    /// The tag written at both ends; panics if they differ (the block was
    /// written by someone else).
    #[inline]
    pub fn tag(&self) -> u8 {
        // SAFETY: both offsets are within the block, which we own.
        let (first, last) = unsafe { (self.ptr.as_ptr().read(), self.ptr.as_ptr().add(self.layout.size() - 1).read()) };
        assert_eq!(first, last, "block of {} bytes at {:p} was overwritten", self.layout.size(), self.ptr);
        first
    }

    /// The block's size in bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.layout.size()
    }

    /// The block's address.
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Writes `v` into one byte of every 4 KiB of the block (so the OS has to
    /// back each page) and returns the number of bytes written.
    pub fn touch_pages(&mut self, v: u8) -> usize {
        let mut n = 0;
        for off in (0..self.layout.size()).step_by(4096) {
            // SAFETY: `off` is within the block, which we own.
            unsafe { self.ptr.as_ptr().add(off).write_volatile(v) };
            n += 1;
        }
        n
    }

    /// The block's bytes.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Block {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: allocated in `Block::new` with exactly this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Starts the clock a program reports with [`finish`].
pub fn start() -> Instant {
    Instant::now()
}

/// Prints the program's closing line: its name, the allocator, the checksum
/// (`benches/programs.py` checks that every allocator's run agrees), the
/// time measured inside the process and the process's peak RSS (`VmHWM`).
///
/// The runner reads the peak RSS from here because the `ru_maxrss` that
/// `wait4` reports for a child includes its parent's high-water mark: Linux
/// carries the forked copy's peak across `exec`, so a Python parent adds its
/// own ~16 MiB to every child. `VmHWM` belongs to the program's own address
/// space, created by `exec`.
pub fn finish(name: &str, checksum: u64, started: Instant) {
    println!(
        "{name}: allocator={ALLOCATOR} checksum={checksum:016x} elapsed={:.3}s peak_rss_kib={}",
        started.elapsed().as_secs_f64(),
        stats::peak_rss_kib()
    );
}

/// FNV-1a over `bytes`, continuing from `h`.
#[inline]
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
