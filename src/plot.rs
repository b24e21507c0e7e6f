//! PNG charts for the reports (`compare`, `eval`, `latents`): side-by-side line panels,
//! each with its series, optionally on a log2 x axis. The font is built in, so plots need no system
//! fonts.

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;

const FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Depths double: plot log2(x) and label the ticks with x.
    pub log2_x: bool,
    pub series: Vec<Series>,
}

/// Pads a range that has no width (one point, or equal values).
fn span(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    match hi - lo > 1e-12 {
        true => (lo - pad * (hi - lo), hi + pad * (hi - lo)),
        false => (lo - 0.5 - lo.abs() * 0.05, hi + 0.5 + hi.abs() * 0.05),
    }
}

/// Makes the built-in font plotters' "sans-serif". Registering again replaces the same font.
fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the built-in font could not be read"))
}

/// The corner of the plot whose legend-sized box covers the fewest points.
fn legend_corner(pts: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let (fx, fy) = (
        |v: f64| (v - x.0) / (x.1 - x.0),
        |v: f64| (v - y.0) / (y.1 - y.0),
    );
    let covered = |left: bool, top: bool| {
        pts.iter()
            .filter(|&&(px, py)| {
                let (u, v) = (fx(px), fy(py));
                (if left { u < 0.4 } else { u > 0.6 }) && (if top { v > 0.65 } else { v < 0.35 })
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, false, true),
        (SeriesLabelPosition::UpperLeft, true, true),
        (SeriesLabelPosition::LowerRight, false, false),
        (SeriesLabelPosition::LowerLeft, true, false),
    ]
    .into_iter()
    .min_by_key(|&(_, left, top)| covered(left, top))
    .map(|(pos, _, _)| pos)
    .unwrap_or(SeriesLabelPosition::UpperRight)
}

/// Draws `panels` left to right into a `width`·panels × `height` PNG at `path`.
pub fn line_panels(path: &Path, panels: &[Panel], width: u32, height: u32) -> Result<()> {
    ensure!(!panels.is_empty(), "nothing to plot");
    register_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (width * panels.len() as u32, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len()));
    for (panel, area) in panels.iter().zip(areas) {
        let tx = |x: f64| if panel.log2_x { x.log2() } else { x };
        let pts: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            area.titled(&format!("{} (no data)", panel.title), ("sans-serif", 20))
                .map_err(|e| err(&e))?;
            continue;
        }
        let fold = |f: fn(f64, f64) -> f64, init: f64, get: fn(&(f64, f64)) -> f64| {
            pts.iter().map(get).fold(init, f)
        };
        let (x0, x1) = span(
            fold(f64::min, f64::INFINITY, |p| p.0),
            fold(f64::max, f64::NEG_INFINITY, |p| p.0),
            0.05,
        );
        let (y0, y1) = span(
            fold(f64::min, f64::INFINITY, |p| p.1),
            fold(f64::max, f64::NEG_INFINITY, |p| p.1),
            0.08,
        );
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        let log2 = panel.log2_x;
        let x_fmt = move |v: &f64| match log2 {
            // Ticks at whole powers of two only.
            true if (v - v.round()).abs() < 1e-3 => format!("{}", 2f64.powf(v.round())),
            true => String::new(),
            false => format!("{v}"),
        };
        // Enough decimals that neighbouring ticks differ.
        let decimals = ((-(y1 - y0).log10()).ceil() as i32 + 1).clamp(2, 8) as usize;
        let y_fmt = move |v: &f64| format!("{v:.decimals$}");
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .x_labels(if log2 {
                ((x1 - x0).ceil() as usize + 1) * 2
            } else {
                8
            })
            .x_label_formatter(&x_fmt)
            .y_labels(8)
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (tx(x), y)).collect();
            // Segment by segment: plotters joins a wide polyline with miters, which spike off the
            // chart where a trajectory turns back on itself.
            chart
                .draw_series(
                    line.windows(2)
                        .map(|w| PathElement::new(vec![w[0], w[1]], color.stroke_width(2))),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend_corner(&pts, (x0, x1), (y0, y1)))
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A grid of positive values (rows × columns), coloured on a log10 scale, with a colour bar.
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The label of column 0; columns count up from it (iterations start at 1).
    pub x_first: i32,
    /// One label per row, top to bottom.
    pub row_labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
    pub value_label: String,
}

pub fn heatmap(path: &Path, h: &Heatmap, width: u32, height: u32) -> Result<()> {
    use plotters::style::colors::colormaps::ViridisRGB;
    let rows = h.values.len() as i32;
    let cols = h.values.first().map_or(0, Vec::len) as i32;
    ensure!(rows > 0 && cols > 0, "nothing to plot");
    ensure!(
        h.values.iter().all(|r| r.len() == cols as usize) && h.row_labels.len() == rows as usize,
        "heatmap rows differ in length"
    );
    register_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let logs: Vec<Vec<f64>> = h
        .values
        .iter()
        .map(|r| r.iter().map(|v| v.max(1e-12).log10()).collect())
        .collect();
    let (lo, hi) = logs
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let colour = |v: f64| ViridisRGB::get_color((v - lo) / (hi - lo));

    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (main, bar) = root.split_horizontally(width.saturating_sub(110));
    let mut chart = ChartBuilder::on(&main)
        .caption(&h.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(140)
        // A segmented range a..b has the segments a..=b.
        .build_cartesian_2d(
            (0..cols - 1).into_segmented(),
            (0..rows - 1).into_segmented(),
        )
        .map_err(|e| err(&e))?;
    let x_first = h.x_first;
    let x_fmt = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(c) => format!("{}", c + x_first),
        _ => String::new(),
    };
    // Row 0 is drawn at the top.
    let labels = h.row_labels.clone();
    let y_fmt = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(r) if (0..rows).contains(r) => {
            labels[(rows - 1 - r) as usize].clone()
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(h.x_label.as_str())
        .y_desc(h.y_label.as_str())
        .x_labels(cols.min(32) as usize)
        .y_labels(rows.min(48) as usize)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(logs.iter().enumerate().flat_map(|(r, row)| {
            let y = rows - 1 - r as i32;
            row.iter().enumerate().map(move |(c, &v)| {
                let c = c as i32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    colour(v).filled(),
                )
            })
        }))
        .map_err(|e| err(&e))?;

    // The colour bar: log10 of the value, labelled with the value.
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(44)
        .margin_bottom(52)
        .margin_right(8)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(|e| err(&e))?;
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(h.value_label.as_str())
        .y_labels(6)
        .y_label_formatter(&|v: &f64| format!("{:.0e}", 10f64.powf(*v)))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    let steps = 64;
    scale
        .draw_series((0..steps).map(|i| {
            let a = lo + (hi - lo) * i as f64 / steps as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], colour((a + b) / 2.0).filled())
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
