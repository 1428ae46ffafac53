//! The learning-forgetting (Pareto) plot: target score against retained source score.
//!
//! Each method (plain LoRA, LaLoRA, ...) is one coloured line through its points (one per
//! regularisation strength or checkpoint), every point annotated with its label and, when it
//! is a mean over seeds, crossed by error bars. The plot is written both as SVG and as PNG. Text in the PNG is rasterised with DejaVu Sans,
//! embedded in the binary, so no system font or font library is needed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family name the embedded font is registered under.
pub(crate) const FONT_FAMILY: &str = "sans-serif";
/// Image size in pixels.
const SIZE: (u32, u32) = (800, 600);
/// Line colours, one per method in turn (Okabe-Ito, readable with colour blindness).
pub(crate) const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// One model on the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct ParetoPoint {
    /// Retained knowledge, the y coordinate.
    pub source_score: f64,
    /// Learning, the x coordinate.
    pub target_score: f64,
    /// Half-length of the vertical error bar (a standard error; 0: none).
    pub source_err: f64,
    /// Half-length of the horizontal error bar (0: none).
    pub target_err: f64,
    /// Annotation next to the point, e.g. "lambda=10" or "step 200".
    pub label: String,
}

/// One method: its points, connected in the given order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParetoSeries {
    /// Legend entry, e.g. "LoRA" or "LaLoRA".
    pub method: String,
    /// The method's points.
    pub points: Vec<ParetoPoint>,
}

/// Draws the learning-forgetting plot of `series` and writes it to `svg` and `png`
/// (800x600 pixels), each through a temporary file renamed into place.
///
/// Points with a non-finite coordinate are left out. Errors are I/O errors; a drawing
/// failure is reported as [`io::ErrorKind::Other`].
pub fn write_pareto(series: &[ParetoSeries], title: &str, x_label: &str, y_label: &str, svg: &Path, png: &Path) -> io::Result<()> {
    register_font()?;
    let plot = Plot { series, title, x_label, y_label };

    let mut svg_text = String::new();
    plot.draw(SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area())?;
    let svg_tmp = temporary_path(svg);
    fs::write(&svg_tmp, svg_text).and_then(|()| fs::rename(&svg_tmp, svg)).inspect_err(|_| {
        let _ = fs::remove_file(&svg_tmp);
    })?;

    // The bitmap backend picks the encoder from the extension, so keep ".png" last.
    let png_tmp = png.with_extension("tmp.png");
    plot.draw(BitMapBackend::new(&png_tmp, SIZE).into_drawing_area()).and_then(|()| fs::rename(&png_tmp, png)).inspect_err(|_| {
        let _ = fs::remove_file(&png_tmp);
    })
}

/// `{path}.tmp`, a sibling of `path` to write before renaming.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Registers the embedded font with plotters, once per process.
pub(crate) fn register_font() -> io::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "the embedded plot font is not a valid TrueType font"))
    }
}

/// Everything needed to draw the plot on any backend.
struct Plot<'a> {
    series: &'a [ParetoSeries],
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

impl Plot<'_> {
    /// Draws the whole plot on `root` and presents it (for a file backend: saves it).
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> io::Result<()> {
        self.draw_chart(&root).and_then(|()| root.present()).map_err(|e| io::Error::other(format!("drawing the plot: {e}")))
    }

    /// The drawing itself, with plotters' error type.
    fn draw_chart<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let points = || self.series.iter().flat_map(finite_points);
        let x_range = padded_range(points().flat_map(|p| [p.target_score - p.target_err, p.target_score + p.target_err]));
        let y_range = padded_range(points().flat_map(|p| [p.source_score - p.source_err, p.source_score + p.source_err]));

        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT_FAMILY, 24))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .axis_desc_style((FONT_FAMILY, 18))
            .label_style((FONT_FAMILY, 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;

        for (index, series) in self.series.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let line = colour.stroke_width(2);
            let coordinates = || finite_points(series).map(|p| (p.target_score, p.source_score));
            chart
                .draw_series(LineSeries::new(coordinates(), line))?
                .label(series.method.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
            // +-1 s.e. in each direction, where the point is a mean over seeds.
            let bars = finite_points(series).filter(|p| p.source_err > 0.0 || p.target_err > 0.0).flat_map(|p| {
                let (x, y) = (p.target_score, p.source_score);
                [
                    PathElement::new(vec![(x - p.target_err, y), (x + p.target_err, y)], colour.stroke_width(1)),
                    PathElement::new(vec![(x, y - p.source_err), (x, y + p.source_err)], colour.stroke_width(1)),
                ]
            });
            chart.draw_series(bars)?;
            chart.draw_series(finite_points(series).map(|p| {
                EmptyElement::at((p.target_score, p.source_score))
                    + Circle::new((0, 0), 5, colour.filled())
                    + Text::new(p.label.clone(), (7, -16), (FONT_FAMILY, 13).into_font().color(&colour))
            }))?;
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
    }
}

/// The points of `series` whose coordinates (and error bars) are all finite.
fn finite_points(series: &ParetoSeries) -> impl Iterator<Item = &ParetoPoint> {
    series.points.iter().filter(|p| [p.source_score, p.target_score, p.source_err, p.target_err].iter().all(|v| v.is_finite()))
}

/// The range of `values` widened by a tenth of its span on each side (so markers and
/// labels stay inside the plot), or `0..1` when there are no values.
pub(crate) fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return 0.0..1.0;
    }
    let span = high - low;
    let pad = if span > 0.0 { span * 0.1 } else { (high.abs() * 0.1).max(0.05) };
    (low - pad)..(high + pad)
}

/// Draws one heat map per retention matrix (continual learning: rows are the stages, columns
/// the tasks, each cell the score after that stage, printed in it) side by side, and writes
/// the picture to `svg` and `png` through temporary files.
pub fn write_retention(matrices: &[crate::continual::RetentionMatrix], svg: &Path, png: &Path) -> io::Result<()> {
    register_font()?;
    let columns = matrices.iter().map(|m| m.tasks.len()).max().unwrap_or(1).max(1) as u32;
    let size = (
        (110 + 70 * columns) * (matrices.len().max(1) as u32),
        140 + 44 * matrices.iter().map(|m| m.stages.len()).max().unwrap_or(1) as u32,
    );
    let draw = |root: DrawingArea<_, Shift>| draw_retention(matrices, root);

    let mut svg_text = String::new();
    draw(SVGBackend::with_string(&mut svg_text, size).into_drawing_area())?;
    let svg_tmp = temporary_path(svg);
    fs::write(&svg_tmp, svg_text).and_then(|()| fs::rename(&svg_tmp, svg)).inspect_err(|_| {
        let _ = fs::remove_file(&svg_tmp);
    })?;
    let png_tmp = png.with_extension("tmp.png");
    draw_retention(matrices, BitMapBackend::new(&png_tmp, size).into_drawing_area()).and_then(|()| fs::rename(&png_tmp, png)).inspect_err(
        |_| {
            let _ = fs::remove_file(&png_tmp);
        },
    )
}

/// The heat maps on any backend.
fn draw_retention<DB: DrawingBackend>(matrices: &[crate::continual::RetentionMatrix], root: DrawingArea<DB, Shift>) -> io::Result<()> {
    let result = (|| -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, matrices.len().max(1)));
        // One colour scale for every panel: white at the lowest score, blue at the highest.
        let values = || matrices.iter().flat_map(|m| m.scores.iter().flatten().copied()).filter(|v| v.is_finite());
        let low = values().fold(0.0f64, f64::min);
        let high = values().fold(1.0f64, f64::max);
        for (matrix, panel) in matrices.iter().zip(panels) {
            let (rows, cols) = (matrix.stages.len(), matrix.tasks.len());
            let mut chart = ChartBuilder::on(&panel)
                .caption(&matrix.method, (FONT_FAMILY, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(90)
                .build_cartesian_2d(0.0..cols as f64, rows as f64..0.0)?;
            // Short column names: six or more columns share a third of the figure's width.
            let tasks: Vec<String> = matrix.tasks.iter().map(|t| t.strip_prefix("source-").unwrap_or(t).to_string()).collect();
            let stages = matrix.stages.clone();
            let name = |names: &[String], v: f64| {
                let i = v.floor() as usize;
                if (v - i as f64 - 0.5).abs() < 1e-6 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(2 * cols + 1)
                .y_labels(2 * rows + 1)
                .x_label_formatter(&|v| name(&tasks, *v))
                .y_label_formatter(&|v| name(&stages, *v))
                .label_style((FONT_FAMILY, 12))
                .x_desc("score on (sources, then targets)")
                .y_desc("after stage")
                .axis_desc_style((FONT_FAMILY, 13))
                .draw()?;
            for (r, row) in matrix.scores.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    let t = if v.is_finite() && high > low { ((v - low) / (high - low)).clamp(0.0, 1.0) } else { 0.0 };
                    let shade = |full: f64| (255.0 - t * (255.0 - full)) as u8;
                    let colour = RGBColor(shade(COLOURS[0].0 as f64), shade(COLOURS[0].1 as f64), shade(COLOURS[0].2 as f64));
                    let (x, y) = (c as f64, r as f64);
                    chart.draw_series(std::iter::once(Rectangle::new([(x, y), (x + 1.0, y + 1.0)], colour.filled())))?;
                    let ink = if t > 0.55 { WHITE } else { BLACK };
                    let text = if v.is_finite() { format!("{v:.2}") } else { "-".into() };
                    chart.draw_series(std::iter::once(Text::new(
                        text,
                        (x + 0.5, y + 0.5),
                        (FONT_FAMILY, 14).into_font().color(&ink).pos(plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        )),
                    )))?;
                }
            }
        }
        root.present()
    })();
    result.map_err(|e| io::Error::other(format!("drawing the retention plot: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-plot-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map(|()| dir).unwrap_or_else(|e| panic!("scratch dir: {e}"))
    }

    /// Two methods over four regularisation strengths, as the demo produces them.
    fn sample() -> Vec<ParetoSeries> {
        let series = |method: &str, scores: [(f64, f64); 4], labels: [&str; 4]| ParetoSeries {
            method: method.into(),
            points: scores
                .iter()
                .zip(labels)
                .map(|(&(target_score, source_score), label)| ParetoPoint {
                    source_score,
                    target_score,
                    source_err: 0.0,
                    target_err: 0.0,
                    label: label.into(),
                })
                .collect(),
        };
        vec![
            series("LoRA", [(0.05, 0.81), (0.32, 0.62), (0.48, 0.45), (0.55, 0.38)], ["step 0", "step 100", "step 200", "step 300"]),
            series("LaLoRA", [(0.20, 0.80), (0.38, 0.76), (0.47, 0.70), (0.52, 0.61)], ["λ=1000", "λ=100", "λ=10", "λ=1"]),
        ]
    }

    #[test]
    fn writes_an_svg_naming_every_method_and_label_and_a_png() {
        let dir = scratch("sample");
        let (svg, png) = (dir.join("pareto.svg"), dir.join("pareto.png"));
        write_pareto(&sample(), "Learning vs forgetting", "target accuracy", "source accuracy", &svg, &png)
            .unwrap_or_else(|e| panic!("write_pareto: {e}"));
        let svg_text = fs::read_to_string(&svg).unwrap_or_default();
        assert!(svg_text.starts_with("<svg"), "{}", &svg_text[..svg_text.len().min(80)]);
        for text in ["Learning vs forgetting", "target accuracy", "source accuracy", "LoRA", "LaLoRA", "λ=1000", "step 300"] {
            assert!(svg_text.contains(text), "SVG misses {text}");
        }
        let png_bytes = fs::read(&png).unwrap_or_default();
        assert!(png_bytes.len() > 10_000, "PNG has {} bytes", png_bytes.len());
        assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        let names: Vec<_> = fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
        assert_eq!(names.len(), 2, "temporary files left behind: {names:?}");
        if let Ok(path) = std::env::var("PARETO_SAMPLE") {
            fs::copy(&png, path).unwrap_or_else(|e| panic!("copy sample: {e}"));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_plot_and_odd_values_still_render() {
        let dir = scratch("edge");
        let (svg, png) = (dir.join("e.svg"), dir.join("e.png"));
        write_pareto(&[], "empty", "x", "y", &svg, &png).unwrap_or_else(|e| panic!("empty plot: {e}"));
        let odd = ParetoSeries {
            method: "odd <&>".into(),
            points: vec![
                ParetoPoint { source_score: 0.5, target_score: 0.5, source_err: 0.0, target_err: 0.0, label: "same".into() },
                ParetoPoint { source_score: f64::NAN, target_score: 0.1, source_err: 0.0, target_err: 0.0, label: "dropped".into() },
            ],
        };
        write_pareto(&[odd], "one point", "x", "y", &svg, &png).unwrap_or_else(|e| panic!("one point: {e}"));
        let svg_text = fs::read_to_string(&svg).unwrap_or_default();
        assert!(svg_text.contains("odd &lt;&amp;&gt;"));
        assert!(!svg_text.contains("dropped"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_bars_are_two_segments_per_point() {
        let dir = scratch("bars");
        let (svg, png) = (dir.join("b.svg"), dir.join("b.png"));
        let polylines = |series: &[ParetoSeries]| {
            write_pareto(series, "bars", "x", "y", &svg, &png).unwrap_or_else(|e| panic!("bars: {e}"));
            fs::read_to_string(&svg).unwrap_or_default().matches("<polyline").count()
        };
        let plain = sample();
        let mut with_bars = sample();
        for p in &mut with_bars[1].points {
            p.source_err = 0.02;
            p.target_err = 0.03;
        }
        assert_eq!(polylines(&with_bars), polylines(&plain) + 2 * with_bars[1].points.len());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = scratch("missing").join("no/such/dir");
        let result = write_pareto(&sample(), "t", "x", "y", &dir.join("p.svg"), &dir.join("p.png"));
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }

    #[test]
    fn retention_heat_maps_name_methods_tasks_and_stages() {
        let dir = scratch("retention");
        let mut lora = crate::continual::RetentionMatrix::new("lora", &["facts".into()], &["arithmetic".into(), "envoys".into()]);
        lora.push("start", vec![0.95, 0.05, 0.0]);
        lora.push("arithmetic", vec![0.6, 0.5, 0.02]);
        lora.push("envoys", vec![0.4, 0.2, 0.81]);
        let mut other = lora.clone();
        other.method = "lalora-accumulated".into();
        let (svg, png) = (dir.join("r.svg"), dir.join("r.png"));
        write_retention(&[lora, other], &svg, &png).unwrap_or_else(|e| panic!("write_retention: {e}"));
        let svg_text = fs::read_to_string(&svg).unwrap_or_default();
        for text in ["lora", "lalora-accumulated", "facts", "envoys", "arithmetic", "start", "0.81"] {
            assert!(svg_text.contains(text), "SVG misses {text}");
        }
        assert!(fs::read(&png).unwrap_or_default().starts_with(b"\x89PNG\r\n\x1a\n"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranges_pad_the_data() {
        let range = padded_range([0.2, 0.6, 0.4].into_iter());
        assert!((range.start - 0.16).abs() < 1e-12 && (range.end - 0.64).abs() < 1e-12, "{range:?}");
        assert_eq!(padded_range(std::iter::empty()), 0.0..1.0);
        let single = padded_range([0.0].into_iter());
        assert!(single.start < 0.0 && single.end > 0.0);
    }
}
