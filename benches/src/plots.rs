//! Plots of a run, as SVG files people open in a browser: latency distributions (one
//! chart per operation, a line per endpoint and outcome) and throughput over time (a line
//! per endpoint), and how soon writes are seen (a line per writing and reading edge).

use crate::driver::Measured;
use crate::ycsb::Op;
use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (960, 600);

/// A named line of (x, y) points, such as (latency ms, share at or under) on a latency chart.
pub type Line = (String, Vec<(f64, f64)>);

/// Writes `latency-<op>.svg` for each operation and `throughput.svg` into `dir`; returns
/// the files written.
pub fn write(m: &Measured, title: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut by_op: BTreeMap<Op, Vec<Line>> = BTreeMap::new();
    for ((endpoint, op, outcome), latency) in &m.groups {
        by_op.entry(*op).or_default().push((format!("{endpoint} {}", outcome.label()), latency.cdf()));
    }
    for (op, lines) in by_op {
        let path = dir.join(format!("latency-{}.svg", op.name()));
        written.push(latency(&path, &format!("{title}: {} latency", op.name()), &lines)?);
    }
    let path = dir.join("throughput.svg");
    throughput(&path, &format!("{title}: operations per second"), &m.timeline)
        .with_context(|| format!("drawing {}", path.display()))?;
    written.push(path);
    Ok(written)
}

/// Writes `visibility.svg` into `dir`: for each line, the share of reads issued t ms after
/// a write that returned it (points at t, on a logarithmic axis).
pub fn visibility(lines: &[Line], title: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("visibility.svg");
    let hi = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.0)).fold(1f64, f64::max) * 1.5;
    let axes = ("time since the write was acknowledged (ms)", "share of reads that return it");
    draw(&path, &format!("{title}: t-visibility"), axes, (0.3..hi).log_scale(), 0f64..1.02f64, lines)
        .with_context(|| format!("drawing {}", path.display()))?;
    Ok(path)
}

/// Writes to `path` the share of operations at or under each latency (lines of
/// `Latency::cdf`), on a logarithmic latency axis; returns the path.
pub fn latency(path: &Path, caption: &str, lines: &[Line]) -> anyhow::Result<PathBuf> {
    let points = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.0));
    let (lo, hi) = points.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if lo > hi { (0.01, 1.0) } else { ((lo / 1.5).max(0.001), hi * 1.5) };
    let axes = ("latency (ms)", "share of operations at or under");
    draw(path, caption, axes, (lo..hi).log_scale(), 0f64..1f64, lines)
        .with_context(|| format!("drawing {}", path.display()))?;
    Ok(path.to_owned())
}

/// Operations completed in each second from the start of the measured window, per endpoint.
fn throughput(path: &Path, caption: &str, timeline: &BTreeMap<String, Vec<u64>>) -> anyhow::Result<()> {
    let seconds = timeline.values().map(Vec::len).max().unwrap_or(1).max(1);
    let top = timeline.values().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let lines: Vec<Line> = timeline
        .iter()
        .map(|(endpoint, counts)| {
            (endpoint.clone(), counts.iter().enumerate().map(|(s, &c)| (s as f64 + 0.5, c as f64)).collect())
        })
        .collect();
    let axes = ("second of the measured window", "operations per second");
    draw(path, caption, axes, 0f64..seconds as f64, 0f64..top, &lines)
}

/// One chart of named lines, with its legend, as an SVG file.
fn draw<X>(
    path: &Path,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    x: X,
    y: std::ops::Range<f64>,
    lines: &[Line],
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
