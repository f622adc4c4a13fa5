//! Loaded by tests/dlopen.rs: four threads each build and drop `n`
//! strings through the library's own pcpalloc.

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

/// The total length of the strings built.
#[no_mangle]
pub extern "C" fn pcpalloc_dlopen_work(n: usize) -> usize {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let v: Vec<String> = (0..n).map(|i| format!("{t}-{i}")).collect();
                v.iter().map(String::len).sum::<usize>()
            })
        })
        .collect();
    threads.into_iter().map(|h| h.join().unwrap()).sum()
}
