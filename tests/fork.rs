//! `fork()` from a multithreaded parent whose threads are allocating: the
//! child's allocator must work (no lock left held by a thread that does not
//! exist in the child).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

#[test]
fn fork_from_a_multithreaded_parent() {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Box<[u8]>> = (0..64).map(|i| vec![t as u8; 8 + i * 61].into_boxed_slice()).collect();
                    let big = vec![1u8; 300_000];
                    n += v.len() + big.len();
                }
                n
            })
        })
        .collect();
    for round in 0..20 {
        // SAFETY: fork in a test; the child only allocates and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // Child: allocate through every layer, then leave without running
            // the parent's atexit handlers or test harness.
            let mut ok = true;
            let v: Vec<String> = (0..10_000).map(|i| format!("child {round} {i}")).collect();
            ok &= v[9999].ends_with("9999");
            let big = vec![7u8; 3 << 20];
            ok &= big[big.len() - 1] == 7;
            let huge = vec![9u8; 9 << 20];
            ok &= huge[0] == 9;
            let page = pcpalloc::alloc_page(pcpalloc::Gfp::ZERO);
            ok &= page.is_some();
            if let Some(p) = page {
                pcpalloc::free_page(p);
            }
            let h = thread::spawn(|| (0..1000).map(|i| vec![i as u8; 100]).filter(|v| v.len() == 100).count());
            ok &= h.join().map(|n| n == 1000).unwrap_or(false);
            // SAFETY: `_exit` is always safe to call.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {round} failed: status {status:#x}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}
