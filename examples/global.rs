//! A small multithreaded program with `PcpAlloc` as its global allocator:
//! collections, strings, threads handing heap data to each other. At the end
//! it prints the allocator's state the way `/proc` shows the kernel's.
//!
//! Run: `cargo run --release --example global`

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

fn main() {
    let start = Instant::now();

    // Producers build heap messages; one consumer indexes and drops them, so
    // most objects are freed by a thread other than the one that made them.
    let (tx, rx) = mpsc::channel::<(usize, String, Vec<u64>)>();
    let producers: Vec<_> = (0..3)
        .map(|id| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..60_000usize {
                    let text = format!("producer {id} message {i} {}", "x".repeat(i % 200));
                    let payload: Vec<u64> = (0..(i % 64) as u64).collect();
                    tx.send((id, text, payload)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);

    let mut words: HashMap<String, usize> = HashMap::new();
    let mut lengths: BTreeMap<usize, usize> = BTreeMap::new();
    let mut total = 0u64;
    for (id, text, payload) in rx {
        *words.entry(format!("p{id}-{}", text.len() % 17)).or_default() += 1;
        *lengths.entry(text.len()).or_default() += 1;
        total += payload.iter().sum::<u64>();
    }
    for p in producers {
        p.join().unwrap();
    }

    // A large buffer grown by doubling (page blocks, then a huge mapping).
    let mut big: Vec<u8> = Vec::new();
    for i in 0..(24 << 20) {
        big.push(i as u8);
    }
    let checksum: u64 = big.iter().step_by(4096).map(|&b| b as u64).sum();
    drop(big);

    // Short-lived threads whose caches go back when they exit.
    let handles: Vec<_> = (0..64)
        .map(|i| thread::spawn(move || (0..1000).map(|j| vec![i as u8; j % 300]).map(|v| v.len()).sum::<usize>()))
        .collect();
    let made: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();

    println!(
        "{} keys, {} distinct lengths, payload sum {total}, checksum {checksum}, {made} bytes in short-lived threads' vectors, {:.1} ms",
        words.len(),
        lengths.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    println!("\n/proc/buddyinfo");
    print!("{}", pcpalloc::buddyinfo());
    println!("\n/proc/pagetypeinfo");
    print!("{}", pcpalloc::pagetypeinfo());
    println!("\n/proc/zoneinfo");
    print!("{}", pcpalloc::zoneinfo());
    println!("\n/proc/vmstat");
    print!("{}", pcpalloc::vmstat());
    println!("\n/proc/slabinfo");
    print!("{}", pcpalloc::slabinfo());
}
