//! `PCPALLOC_STATS=1` prints the allocator's state to standard error when
//! the process exits.

use std::process::Command;

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

/// The child: allocate a little through every layer, then exit normally.
#[test]
fn child_allocates_and_exits() {
    if std::env::var_os("PCPALLOC_TEST_CHILD").is_none() {
        return;
    }
    let v: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let big = vec![1u8; 1 << 20];
    let p = pcpalloc::alloc_page(pcpalloc::Gfp::DEFAULT).unwrap();
    pcpalloc::free_page(p);
    assert_eq!(v.len() + big.len(), 10_000 + (1 << 20));
}

#[test]
fn the_report_appears_on_stderr_at_exit_and_parses() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_allocates_and_exits", "--test-threads=1"])
        .env("PCPALLOC_STATS", "1")
        .env("PCPALLOC_TEST_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("pcpalloc statistics at exit"), "{err}");
    // /proc/buddyinfo: the zone line with one count per order.
    let buddy = err.lines().find(|l| l.starts_with("Node 0, zone   Normal ")).expect("a buddyinfo line");
    let counts: Vec<usize> =
        buddy["Node 0, zone   Normal".len()..].split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts.len(), pcpalloc::NR_PAGE_ORDERS);
    // /proc/vmstat: "name value" lines, with pages allocated and freed.
    let value = |name: &str| -> u64 {
        let line = err.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(value("pgalloc") > 0);
    assert!(value("pgfree") > 0);
    assert!(value("pcp_refill") > 0);
    assert!(value("resident") > 0);
    assert!(err.contains("/proc/zoneinfo") && err.contains("batch:"));
    assert!(err.contains("/proc/slabinfo") && err.contains("kmalloc-"));
    // Without the variable, nothing is printed.
    let quiet = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_allocates_and_exits", "--test-threads=1"])
        .env("PCPALLOC_TEST_CHILD", "1")
        .env_remove("PCPALLOC_STATS")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("pcpalloc statistics"));
}
