//! Purging must not cost the loops that reuse memory. Alone in its binary:
//! the purge counter it reads is process-wide.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

/// The Tokio pattern that made jemalloc call `madvise` 228,455 times: two
/// threads passing 16 KiB buffers back and forth. Blocks reused at once
/// never stay free for the decay time, so purging must (almost) never run.
#[test]
fn ping_pong_of_16k_buffers_makes_few_purge_calls() {
    let before = pcpalloc::stats().purge_calls;
    let (to_b, from_a) = mpsc::sync_channel::<Vec<u8>>(4);
    let (to_a, from_b) = mpsc::sync_channel::<Vec<u8>>(4);
    let deadline = Instant::now() + Duration::from_secs(3);
    let b = thread::spawn(move || {
        let mut n = 0u64;
        while let Ok(buf) = from_a.recv() {
            n += buf[100] as u64;
            drop(buf);
            if to_a.send(vec![2u8; 16 * 1024]).is_err() {
                break;
            }
        }
        n
    });
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        to_b.send(vec![1u8; 16 * 1024]).unwrap();
        let buf = from_b.recv().unwrap();
        assert_eq!(buf[16 * 1024 - 1], 2);
        rounds += 1;
    }
    drop(to_b);
    let n = b.join().unwrap();
    assert_eq!(n, rounds);
    let calls = pcpalloc::stats().purge_calls - before;
    eprintln!("{rounds} round trips, {calls} purge calls");
    assert!(rounds > 1000);
    assert!(calls < 100, "{calls} madvise calls on a reuse loop");
}
