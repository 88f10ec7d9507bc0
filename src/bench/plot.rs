//! `flotilla bench --plot FILE.svg`: throughput over time and the latency
//! distribution, for Flotilla and (when compared) etcd, in one SVG.

use std::path::Path;

use plotters::prelude::*;

use super::Report;
use crate::error::{Error, Result};

/// Quantiles drawn on the latency chart, evenly spaced on its x axis.
const QUANTILES: [(f64, &str); 8] = [
    (0.5, "p50"),
    (0.75, "p75"),
    (0.9, "p90"),
    (0.95, "p95"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

const COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot draw the plot: {e}"))
}

/// Draws `runs` (name, report) into an SVG at `path`.
pub fn draw(path: &Path, title: &str, runs: &[(&str, &Report)]) -> Result<()> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(340);

    let secs = runs
        .iter()
        .map(|(_, r)| r.per_second.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let peak = runs
        .iter()
        .flat_map(|(_, r)| r.per_second.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&top)
        .caption("throughput (ops per second)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..secs, 0u64..peak + peak / 10)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .draw()
        .map_err(plot_err)?;
    for (i, (name, r)) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                r.per_second.iter().enumerate().map(|(s, n)| (s, *n)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    let worst = runs
        .iter()
        .map(|(_, r)| r.max_ms())
        .fold(0.0f64, f64::max)
        .max(0.001);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency distribution (ms)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0usize..QUANTILES.len() - 1,
            (0.001f64..worst * 1.2).log_scale(),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|i| QUANTILES.get(*i).map_or(String::new(), |q| q.1.to_string()))
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    for (i, (name, r)) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                QUANTILES
                    .iter()
                    .enumerate()
                    .map(|(x, (q, _))| (x, r.quantile_ms(*q).max(0.001))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
