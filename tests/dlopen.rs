//! A shared library that uses pcpalloc loads with `dlopen` and allocates
//! from threads. A library whose code reaches TLS with the initial-exec
//! model has all its TLS in the static TLS block, and a library opened
//! after start-up must fit into the little of it glibc keeps spare: with
//! the thread cache itself in TLS (2.7 KiB) the load failed with "cannot
//! allocate memory in static TLS block". The fast path's TLS is one word.
#![cfg(target_os = "linux")]

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_cdylib_using_pcpalloc_loads_with_dlopen_and_allocates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("tests/dlopen-lib/Cargo.toml");
    let target = root.join("target/dlopen-lib");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the cdylib failed");
    let lib = CString::new(target.join("release/libpcpalloc_dlopen_lib.so").into_os_string().into_encoded_bytes())
        .expect("a path without NUL");
    // SAFETY: a plain dlopen of a library whose initialisers are Rust's.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a C string describing the failure.
        let why = unsafe { CStr::from_ptr(libc::dlerror()) };
        panic!("dlopen failed: {}", why.to_string_lossy());
    }
    // SAFETY: looking up a symbol of the library just loaded.
    let sym = unsafe { libc::dlsym(handle, c"pcpalloc_dlopen_work".as_ptr()) };
    assert!(!sym.is_null(), "the library exports its entry point");
    // SAFETY: the symbol is `extern "C" fn(usize) -> usize` (tests/dlopen-lib/lib.rs).
    let work: extern "C" fn(usize) -> usize = unsafe { std::mem::transmute(sym) };
    // Four threads, strings "t-i": each thread's lengths sum the same way.
    let per_thread = |n: usize| (0..n).map(|i| 2 + i.to_string().len()).sum::<usize>();
    assert_eq!(work(10_000), 4 * per_thread(10_000));
    assert_eq!(work(100), 4 * per_thread(100));
}
