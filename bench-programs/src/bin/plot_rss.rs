//! plot_rss: draws the RSS-over-time chart from `rss_timeline`'s CSV files.
//!
//! `plot_rss OUT.svg NAME=FILE.csv [NAME=FILE.csv ...]`: one line per
//! allocator, RSS in MiB against seconds since that run's burst ended (each
//! allocator takes its own time to build the burst; what is compared is how
//! soon RSS comes back down).

use plotters::prelude::*;

/// `(seconds since the burst ended, RSS in MiB, phase)` samples.
type Samples = Vec<(f64, f64, String)>;

fn read(path: &str) -> Samples {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let samples = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let t: f64 = f.next()?.parse().ok()?;
            let rss: f64 = f.next()?.parse().ok()?;
            Some((t / 1000.0, rss / 1024.0, f.next()?.to_string()))
        })
        .collect();
    shift_to_idle(samples)
}

/// Time relative to the first sample of the idle phase (the burst's end).
fn shift_to_idle(v: Samples) -> Samples {
    let t0 = v.iter().find(|p| p.2 == "idle").map_or(0.0, |p| p.0);
    v.into_iter().map(|(t, r, p)| (t - t0, r, p)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: plot_rss OUT.svg NAME=FILE.csv ...")?;
    let series: Vec<(String, Samples)> = args
        .map(|a| {
            let (name, file) = a.split_once('=').expect("NAME=FILE.csv");
            (name.to_string(), read(file))
        })
        .collect();
    let t_max = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max);
    let t_min = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(0.0, f64::min);
    let rss_max = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(&out, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("RSS after a 1 GiB burst (90% freed at t = 0), then idle", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(t_min..t_max, 0.0..rss_max)?;
    chart.configure_mesh().x_desc("seconds since the burst ended").y_desc("RSS (MiB)").draw()?;
    // Shade the time before the burst ended.
    chart.draw_series(std::iter::once(Rectangle::new(
        [(t_min, 0.0), (0.0, rss_max)],
        RGBColor(235, 235, 235).filled(),
    )))?;
    let colours = [RGBColor(200, 30, 30), RGBColor(30, 90, 200), RGBColor(20, 150, 60), RGBColor(120, 120, 120)];
    for (i, (name, s)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(s.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
