//! The tutorial's traces, from the live allocator: what `alloc_page()`,
//! `alloc_pages_bulk_array()`, a PCP refill and a draining free go through,
//! recorded as they happen and printed as call trees.
//!
//! Run: `cargo run --example trace --features trace`

use pcpalloc::{trace, Gfp, Page};

#[global_allocator]
static GLOBAL: pcpalloc::PcpAlloc = pcpalloc::PcpAlloc::new();

fn show(title: &str, tutorial: &str, t: &trace::Trace, note: &str) {
    println!("=== {title}");
    println!("tutorial: {tutorial}");
    print!("{}", t.tree());
    if !note.is_empty() {
        println!("{note}");
    }
    println!();
}

/// Shortens a refill's repeated block-by-block steps to the first block, so
/// the tree stays readable (`rmqueue_bulk` takes `batch` blocks), and says
/// how many were left out.
fn first_block_of_each_refill(t: &trace::Trace) -> (trace::Trace, String) {
    let mut note = String::new();
    let mut out = trace::Trace::default();
    let mut in_bulk: Option<u8> = None;
    let mut seen_one = false;
    let mut skipped = 0;
    for e in &t.events {
        match in_bulk {
            Some(d) if e.depth > d => {
                if e.depth == d + 1 && e.func == trace::Fn::RmqueueInner {
                    if seen_one {
                        skipped += 1;
                    }
                    seen_one = true;
                }
                if skipped == 0 {
                    out.events.push(*e);
                }
                continue;
            }
            Some(_) => {
                if skipped > 0 {
                    note = format!(
                        "(the refill's {skipped} further take(s) repeat __rmqueue → __rmqueue_smallest; not shown)"
                    );
                }
                in_bulk = None;
            }
            None => {}
        }
        if e.func == trace::Fn::RmqueueBulk {
            in_bulk = Some(e.depth);
            seen_one = false;
            skipped = 0;
        }
        out.events.push(*e);
    }
    (out, note)
}

fn main() {
    // Warm up: map the first section, so that traces below show steady state.
    let warm = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap();
    pcpalloc::free_page(warm);

    // (3) An empty PCP list: drain every CPU's lists first.
    pcpalloc::drain_all_pages();
    trace::start();
    let refilled = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap();
    let refill_trace = trace::take();

    // (0) The thread's page cache now holds the rest of that refill's share:
    // the next allocation never reaches the PCP.
    trace::start();
    let cached = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap();
    let t = trace::take();
    show(
        "(0) alloc_page() from the thread's page cache",
        "(not in the kernel, whose PCP needs no atomic instruction) pcpalloc's per-thread bins in front of the \
         PCP: a pop, no lock.",
        &t,
        "",
    );

    // (1) Give the page cache (filled up first) back to the PCP: the next
    // allocation takes the PCP fast path, half a page bin under one try-lock.
    let fill: Vec<Page> = (0..8).filter_map(|_| pcpalloc::alloc_page(Gfp::DEFAULT)).collect();
    fill.into_iter().for_each(pcpalloc::free_page);
    pcpalloc::flush_thread_cache();
    trace::start();
    let fast = pcpalloc::alloc_page(Gfp::DEFAULT).unwrap();
    let t = trace::take();
    show(
        "(1) alloc_page() on the PCP fast path",
        "alloc_page → alloc_pages → __alloc_pages → get_page_from_freelist → rmqueue → rmqueue_pcplist → \
         __rmqueue_pcplist, which returns the first entry of this CPU's list. (pcpalloc: an empty page cache \
         refills from rmqueue_pcplist, taking the list's first entries.)",
        &t,
        "",
    );

    // (2) A bulk allocation: the PCP is taken once for the whole array.
    let mut batch: [Option<Page>; 8] = Default::default();
    trace::start();
    let n = pcpalloc::alloc_pages_bulk_array(Gfp::DEFAULT, &mut batch);
    let t = trace::take();
    let (short, note) = first_block_of_each_refill(&t);
    show(
        "(2) alloc_pages_bulk_array() of 8 pages",
        "__alloc_pages_bulk locks this CPU's PCP once and calls __rmqueue_pcplist for every empty slot; it \
         returns how many slots are populated.",
        &short,
        &note,
    );
    assert_eq!(n, 8);

    let (short, note) = first_block_of_each_refill(&refill_trace);
    show(
        "(3) alloc_page() with the PCP list empty: refill through rmqueue_bulk (recorded before (1))",
        "__rmqueue_pcplist finds the list empty and calls rmqueue_bulk, which takes `batch` pages from the \
         buddy allocator under one hold of zone->lock: __rmqueue → __rmqueue_smallest → get_page_from_free_area, \
         splitting larger blocks with expand.",
        &short,
        &note,
    );

    // (4) Free pages until one free crosses `high`: it drains a batch to the
    // buddy allocator, where __free_one_page merges buddies.
    let info = pcpalloc::zoneinfo();
    let high = info.pcp.iter().take(info.nr_cpus).map(|p| p.1).max().unwrap_or(0);
    let mut pages: Vec<Page> = (0..2 * high + 64).filter_map(|_| pcpalloc::alloc_page(Gfp::DEFAULT)).collect();
    pages.reverse();
    pcpalloc::drain_all_pages();
    let mut shown = false;
    while let Some(p) = pages.pop() {
        trace::start();
        pcpalloc::free_page(p);
        let t = trace::take();
        if !shown && t.names().contains(&"free_pcppages_bulk") {
            let merged: Vec<_> =
                t.events.iter().filter(|e| e.func == trace::Fn::FreeOnePage && e.extra > e.order as u32).collect();
            let mut short = trace::Trace::default();
            let mut frees = 0;
            for e in &t.events {
                if e.func == trace::Fn::MmPagePcpuDrain {
                    frees += 1;
                }
                if frees <= 3 {
                    short.events.push(*e);
                }
            }
            show(
                "(4) free_page() that crosses `high`: free_pcppages_bulk and buddy merging",
                "free_unref_page puts the page on this CPU's list (free_unref_page_commit); when count reaches high, \
                 free_pcppages_bulk returns a batch to the buddy allocator under one zone->lock hold, and \
                 __free_one_page merges each page with its free buddy, raising the order.",
                &short,
                &format!(
                    "(the drain freed {frees} pages; the first 3 are shown; {} of them merged with a buddy)",
                    merged.len()
                ),
            );
            shown = true;
        }
    }
    for p in batch.into_iter().flatten() {
        pcpalloc::free_page(p);
    }
    pcpalloc::free_page(fast);
    pcpalloc::free_page(cached);
    pcpalloc::free_page(refilled);
}
