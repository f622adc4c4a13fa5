//! `trim()`, `stats()` and the purge thread are safe from any thread at any
//! time, including during thread exit.

use std::thread;
use std::time::Duration;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

#[test]
fn trim_and_stats_from_many_threads_and_during_thread_exit() {
    struct TrimOnExit;
    impl Drop for TrimOnExit {
        fn drop(&mut self) {
            pcpalloc::trim();
            let s = pcpalloc::stats();
            assert!(s.mapped >= s.retained);
        }
    }
    thread_local! {
        static EXIT: std::cell::RefCell<Option<TrimOnExit>> = const { std::cell::RefCell::new(None) };
    }
    let handles: Vec<_> = (0..6)
        .map(|t| {
            thread::spawn(move || {
                EXIT.with(|e| *e.borrow_mut() = Some(TrimOnExit));
                for i in 0..300 {
                    let v: Vec<Vec<u8>> = (0..50).map(|j| vec![t as u8; (i * 37 + j * 101) % 70_000 + 1]).collect();
                    if i % 7 == t % 7 {
                        pcpalloc::trim();
                    }
                    if i % 5 == 0 {
                        let s = pcpalloc::stats();
                        assert!(s.resident >= s.metadata);
                        assert!(s.mapped >= s.retained);
                    }
                    assert!(v.iter().all(|x| x.first() == Some(&(t as u8))));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn background_purge_thread_starts_and_stops() {
    let t = pcpalloc::spawn_purge_thread().unwrap();
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![0u8; i * 1000]).collect();
    drop(v);
    thread::sleep(Duration::from_millis(50));
    drop(t);
}
