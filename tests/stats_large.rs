//! `stats().allocated` follows large and huge blocks allocated on one thread
//! and freed on another, across those threads' exits (each thread keeps its
//! own share of the sums; an exiting thread hands its share over).

use std::sync::mpsc::channel;
use std::thread;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

fn allocated() -> isize {
    pcpalloc::stats().allocated as isize
}

#[test]
fn allocated_counts_large_blocks_across_threads_and_exits() {
    // Small objects made by the test harness come and go: allow for them.
    const SLACK: isize = 256 << 10;
    let sizes = [20_000usize, 100_000, 1 << 20, 3 << 20, 9 << 20];
    let total: usize = sizes.iter().sum();
    let before = allocated();

    // Allocated on one thread, which exits; held by the main thread.
    let blocks: Vec<Vec<u8>> = thread::spawn(move || sizes.iter().map(|&n| vec![1u8; n]).collect()).join().unwrap();
    let held = allocated() - before;
    assert!((held - total as isize).abs() < SLACK, "holding {total} bytes of large blocks, allocated grew by {held}");

    // Freed on a third thread, which exits too.
    let (tx, rx) = channel::<Vec<Vec<u8>>>();
    let freer = thread::spawn(move || drop(rx.recv().unwrap()));
    tx.send(blocks).unwrap();
    freer.join().unwrap();
    let after = allocated() - before;
    assert!(after.abs() < SLACK, "all freed, yet allocated is {after} bytes off");

    // A thread whose only allocation is a large one is counted too, while it
    // is alive.
    let (ready_tx, ready_rx) = channel();
    let (done_tx, done_rx) = channel::<()>();
    let t = thread::spawn(move || {
        let v = vec![7u8; 500_000];
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(v);
    });
    ready_rx.recv().unwrap();
    let live = allocated() - before;
    assert!((live - 500_000).abs() < SLACK, "a live thread's 500 kB block shows as {live}");
    done_tx.send(()).unwrap();
    t.join().unwrap();
    assert!((allocated() - before).abs() < SLACK);
}
