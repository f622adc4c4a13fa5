//! `PCPALLOC_THP`: the advice pcpalloc's mappings get, read back from the
//! kernel (`/proc/self/smaps`' `VmFlags`: `hg` for `MADV_HUGEPAGE`, `nh`
//! for `MADV_NOHUGEPAGE`). The mode is read on the first mapping, so each
//! case runs in a child process of its own, this binary started again with
//! `THP_CHILD` set.

use std::process::Command;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

/// The `VmFlags` of the mapping that holds `addr`.
fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// In the child: a small object (from a section) and a huge block (a
/// mapping of its own), and their mappings' flags.
fn child(expect: &str) {
    let small = Box::new([7u8; 64]);
    let huge = vec![1u8; 4 << 20];
    for (what, addr) in [("section", small.as_ptr() as usize), ("huge block", huge.as_ptr() as usize)] {
        let flags = vm_flags(addr);
        let (hg, nh) = (flags.iter().any(|f| f == "hg"), flags.iter().any(|f| f == "nh"));
        let ok = match expect {
            "always" => hg && !nh,
            "never" => nh && !hg,
            "default" => !hg && !nh,
            other => panic!("unknown expectation {other}"),
        };
        assert!(ok, "{what} mapping with PCPALLOC_THP case {expect}: VmFlags {flags:?}");
        assert_eq!(
            pcpalloc::thp_mode(),
            match expect {
                "always" => pcpalloc::ThpMode::Always,
                "never" => pcpalloc::ThpMode::Never,
                _ => pcpalloc::ThpMode::Default,
            }
        );
    }
    println!("thp child {expect}: ok");
}

fn main() {
    if let Ok(expect) = std::env::var("THP_CHILD") {
        child(&expect);
        return;
    }
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        // A kernel built without THP refuses the advice, and the flags never show.
        println!("test result: ignored: this kernel has no transparent huge pages");
        return;
    }
    let exe = std::env::current_exe().expect("this test's binary");
    // (value of PCPALLOC_THP or None, the advice expected)
    let cases = [(None, "never"), (Some("never"), "never"), (Some("always"), "always"), (Some("default"), "default")];
    for (value, expect) in cases {
        let mut cmd = Command::new(&exe);
        cmd.env("THP_CHILD", expect).env_remove("PCPALLOC_THP");
        if let Some(v) = value {
            cmd.env("PCPALLOC_THP", v);
        }
        let out = cmd.output().expect("the child runs");
        assert!(
            out.status.success(),
            "PCPALLOC_THP={value:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("PCPALLOC_THP={value:?}: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    println!("test result: ok. 4 cases passed");
}
