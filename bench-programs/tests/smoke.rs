//! Every benchmark program, built with the default allocator feature
//! (pcpalloc), runs at a tiny scale and exits 0 with its closing line. This
//! is what CI runs; the benchmark itself is `benches/programs.py`.

use std::process::Command;

fn run(exe: &str, args: &[&str]) {
    let started = std::time::Instant::now();
    let out = Command::new(exe).args(args).env_remove("BENCH_SCALE").output().expect("start the program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{exe} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("allocator=pcpalloc") && stdout.contains("checksum="), "{exe}: no closing line:\n{stdout}");
    eprintln!("{exe}: {:.2} s", started.elapsed().as_secs_f64());
}

macro_rules! smoke {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run(env!(concat!("CARGO_BIN_EXE_", stringify!($name))), &["--scale", "0.01"]);
        }
    )*};
}

smoke!(larson, xmalloc, cache_scratch, mstress, glibc_simple, json, syn_parse, pipeline, page_threads);

#[test]
fn fastpath() {
    run(env!("CARGO_BIN_EXE_fastpath"), &["1000"]);
}

#[test]
fn rss_timeline_and_its_chart() {
    let exe = env!("CARGO_BIN_EXE_rss_timeline");
    let out = Command::new(exe).args(["--scale", "0.02"]).output().expect("start rss_timeline");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("t_ms,rss_kib,phase\n"), "{stdout}");
    // At this scale the burst is over between two samples; the idle phase is not.
    assert!(stdout.contains(",before\n") && stdout.contains(",idle\n"), "{stdout}");
    let dir = std::env::temp_dir().join(format!("rss-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("pcpalloc.csv");
    std::fs::write(&csv, stdout.lines().filter(|l| l.contains(',')).collect::<Vec<_>>().join("\n")).unwrap();
    let svg = dir.join("chart.svg");
    let plot = Command::new(env!("CARGO_BIN_EXE_plot_rss"))
        .arg(&svg)
        .arg(format!("pcpalloc={}", csv.display()))
        .status()
        .expect("start plot_rss");
    assert!(plot.success());
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}
