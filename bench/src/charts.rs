//! Line charts of benchmark results, drawn with plotters as PNG and SVG on
//! logarithmic axes (batch sizes, lengths and rates span decades).

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChartFormat {
    Png,
    Svg,
}

impl ChartFormat {
    fn extension(self) -> &'static str {
        match self {
            ChartFormat::Png => "png",
            ChartFormat::Svg => "svg",
        }
    }
}

pub struct Series {
    pub name: String,
    /// Points in x order; each coordinate positive (the axes are logarithmic).
    pub points: Vec<(f64, f64)>,
    pub thin: bool,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (1000, 640);
const FONT: &str = "sans-serif";

/// Draws `chart` to `{stem}.png` and/or `{stem}.svg`; the paths written.
pub fn draw(
    chart: &LineChart,
    stem: &Path,
    formats: &[ChartFormat],
) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    for &format in formats {
        let path = stem.with_extension(format.extension());
        match format {
            ChartFormat::Png => {
                let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
                plot(&root, chart)?;
                root.present()?;
            }
            ChartFormat::Svg => {
                let root = SVGBackend::new(&path, SIZE).into_drawing_area();
                plot(&root, chart)?;
                root.present()?;
            }
        }
        written.push(path);
    }
    Ok(written)
}

/// plotters finds fonts by name; the DejaVu font is compiled in so that a
/// machine without fonts draws the same chart.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded DejaVu Sans font did not load"))
}

fn plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &LineChart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let points = || chart.series.iter().flat_map(|s| s.points.iter().copied());
    let bounds = |values: Vec<f64>| {
        let positive: Vec<f64> = values.into_iter().filter(|v| *v > 0.0).collect();
        let low = positive.iter().copied().fold(f64::INFINITY, f64::min);
        let high = positive.iter().copied().fold(0.0, f64::max);
        if positive.is_empty() {
            1.0..10.0
        } else {
            low / 1.5..high * 1.5
        }
    };
    let x_range = bounds(points().map(|p| p.0).collect());
    // Label the measured x values (batch sizes, lengths) rather than decades.
    let mut x_ticks: Vec<f64> = points().map(|p| p.0).filter(|x| *x > 0.0).collect();
    x_ticks.sort_by(f64::total_cmp);
    x_ticks.dedup();
    let y_range = bounds(points().map(|p| p.1).collect());

    root.fill(&WHITE)?;
    let mut grid = ChartBuilder::on(root)
        .caption(chart.title, (FONT, 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_range.log_scale().with_key_points(x_ticks),
            y_range.log_scale(),
        )?;
    grid.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&|x| short_number(*x))
        .y_label_formatter(&|y| short_number(*y))
        .label_style((FONT, 14))
        .draw()?;
    for (i, series) in chart.series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let width = if series.thin { 1 } else { 2 };
        grid.draw_series(LineSeries::new(
            series.points.iter().copied(),
            colour.stroke_width(width),
        ))?
        .label(series.name.as_str())
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(width))
        });
        grid.draw_series(
            series
                .points
                .iter()
                .map(|&p| Circle::new(p, 3, colour.filled())),
        )?;
    }
    grid.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn short_number(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let digits = format!("{scaled:.2}");
    let trimmed = digits.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_png_and_svg_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let chart = LineChart {
            title: "tokens per second",
            x_label: "sequence length",
            y_label: "tokens/s",
            series: vec![
                Series {
                    name: "batch 1".into(),
                    points: vec![(16.0, 900.0), (64.0, 2500.0), (256.0, 3100.0)],
                    thin: false,
                },
                Series {
                    name: "batch 32".into(),
                    points: vec![(16.0, 4000.0)],
                    thin: true,
                },
            ],
        };
        let written = draw(
            &chart,
            &dir.path().join("chart"),
            &[ChartFormat::Png, ChartFormat::Svg],
        )
        .unwrap();
        assert_eq!(written.len(), 2);
        let png = std::fs::read(&written[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("batch 32") && svg.contains("sequence length")
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short_number(2500.0), "2.5k");
        assert_eq!(short_number(1_000_000.0), "1M");
        assert_eq!(short_number(16.0), "16");
        assert_eq!(short_number(0.25), "0.25");
    }
}
