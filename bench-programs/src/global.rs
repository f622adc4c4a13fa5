//! The `#[global_allocator]` of every benchmark program, picked by cargo
//! feature. When several are enabled the first of `jemalloc`, `mimalloc`,
//! `system`, `pcpalloc` wins (so `--features jemalloc` alone works on top of
//! the default); with none, Rust's default (the system allocator) is used.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "system", not(any(feature = "jemalloc", feature = "mimalloc"))))]
#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

#[cfg(all(feature = "pcpalloc", not(any(feature = "jemalloc", feature = "mimalloc", feature = "system"))))]
#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

/// The name of the allocator this build uses.
pub const ALLOCATOR: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(feature = "system") || !cfg!(feature = "pcpalloc") {
    "system"
} else {
    "pcpalloc"
};
