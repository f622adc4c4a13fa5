//! `core::alloc::Allocator` (the `nightly` feature):
//! `cargo +nightly test --features nightly --test nightly_allocator`.
#![cfg(feature = "nightly")]
#![feature(allocator_api)]

use std::alloc::{Allocator, Layout};

#[test]
fn collections_in_pcpalloc() {
    let mut v: Vec<u64, _> = Vec::new_in(pcpalloc::PcpAlloc::new());
    for i in 0..100_000 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 100_000 * 99_999 / 2);
    let b = Box::new_in([7u8; 5000], pcpalloc::PcpAlloc::new());
    assert!(b.iter().all(|&x| x == 7));
}

#[test]
fn zero_sized_and_zeroed() {
    let a = pcpalloc::PcpAlloc::new();
    let z = a.allocate(Layout::from_size_align(0, 64).unwrap()).unwrap();
    assert_eq!(z.len(), 0);
    assert_eq!(z.cast::<u8>().as_ptr() as usize % 64, 0);
    let layout = Layout::from_size_align(100_000, 4096).unwrap();
    let p = a.allocate_zeroed(layout).unwrap();
    // SAFETY: 100 000 bytes just allocated.
    unsafe {
        assert!(p.as_ref().iter().all(|&x| x == 0));
        a.deallocate(p.cast(), layout);
    }
}
