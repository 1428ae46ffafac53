//! Training curves of run directories: NLL, penalty, learning rate and eval scores over
//! steps, read from each run's `log.jsonl` and drawn with several runs overlaid (one colour per
//! run), as SVG and PNG like the Pareto plot of [`crate::plot`].
//!
//! `log.jsonl` holds one JSON object a line: training steps
//! `{"step", "nll", "penalty", "lr", ...}` and evaluations `{"step", "eval": [score, ...]}`
//! with scores as [`crate::eval::EvalScore`] serialises them. Each eval set is drawn with its
//! headline metric: `acc` (multiple choice) and `accuracy` (generation) in one panel,
//! `nll_per_token` (text) in another.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::plot::{padded_range, register_font, temporary_path, COLOURS, FONT_FAMILY};

/// One training step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPoint {
    /// Step number (1-based, as logged).
    pub step: f64,
    /// Training NLL per token.
    pub nll: f64,
    /// Penalty value, when logged.
    pub penalty: Option<f64>,
    /// Learning rate, when logged.
    pub lr: Option<f64>,
}

/// One eval score of a run at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPoint {
    /// Step number.
    pub step: f64,
    /// Eval set name.
    pub set: String,
    /// `acc`, `accuracy` or `nll_per_token`.
    pub metric: String,
    /// The value.
    pub value: f64,
}

/// What one run directory's `log.jsonl` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLog {
    /// Legend name: the directory's name.
    pub name: String,
    /// Training steps in order.
    pub steps: Vec<StepPoint>,
    /// Eval scores in order.
    pub evals: Vec<EvalPoint>,
}

impl RunLog {
    /// Reads `dir/log.jsonl`. Errors name the file and line (and field).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("log.jsonl");
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let mut run = RunLog { name, steps: Vec::new(), evals: Vec::new() };
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |reason: String| Error::BadRecord { path: path.clone(), line: i + 1, reason };
            let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("malformed JSON: {e}")))?;
            run.add_line(&value).map_err(bad)?;
        }
        if run.steps.is_empty() && run.evals.is_empty() {
            return Err(Error::EmptyData { path, reason: "holds no training or eval lines".into() });
        }
        Ok(run)
    }

    fn add_line(&mut self, value: &Value) -> std::result::Result<(), String> {
        let number = |v: &Value, key: &str| -> std::result::Result<Option<f64>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| format!("field `{key}` must be a number")),
            }
        };
        let step = value.get("step").and_then(Value::as_u64).ok_or("field `step` must be a non-negative integer")? as f64;
        if let Some(scores) = value.get("eval") {
            let scores = scores.as_array().ok_or("field `eval` must be a list of scores")?;
            for (k, score) in scores.iter().enumerate() {
                let set = score.get("name").and_then(Value::as_str).ok_or(format!("field `eval[{k}].name` must be a string"))?;
                let metric = match score.get("kind").and_then(Value::as_str) {
                    Some("text") => "nll_per_token",
                    Some("multiple-choice") => "acc",
                    Some("generation") => "accuracy",
                    other => return Err(format!("field `eval[{k}].kind` is {other:?}; expected text, multiple-choice or generation")),
                };
                let metrics = score.get("metrics").ok_or(format!("field `eval[{k}].metrics` is missing"))?;
                let value = number(metrics, metric)
                    .map_err(|_| format!("field `eval[{k}].metrics.{metric}` must be a number"))?
                    .ok_or(format!("field `eval[{k}].metrics.{metric}` is missing"))?;
                self.evals.push(EvalPoint { step, set: set.to_string(), metric: metric.to_string(), value });
            }
            return Ok(());
        }
        let nll = number(value, "nll")?.ok_or("a training line needs `nll` (or an `eval` list)")?;
        self.steps.push(StepPoint { step, nll, penalty: number(value, "penalty")?, lr: number(value, "lr")? });
        Ok(())
    }
}

/// One line of a panel: (step, value) points drawn in one colour under one label.
struct Series {
    /// Colour index: one per run, or one per set in the eval panels (a run has several).
    colour: usize,
    label: String,
    points: Vec<(f64, f64)>,
    /// Draw a marker at every point (sparse eval points) as well as the line.
    markers: bool,
}

/// One panel: a title and its series.
struct Panel {
    title: &'static str,
    series: Vec<Series>,
    scientific: bool,
}

fn panels(runs: &[RunLog]) -> Vec<Panel> {
    let mut nll = Panel { title: "training NLL per token", series: Vec::new(), scientific: false };
    let mut penalty = Panel { title: "penalty (lambda/2) d^T P d", series: Vec::new(), scientific: false };
    let mut lr = Panel { title: "learning rate", series: Vec::new(), scientific: true };
    let mut accuracy = Panel { title: "eval accuracy", series: Vec::new(), scientific: false };
    let mut eval_nll = Panel { title: "eval NLL per token", series: Vec::new(), scientific: false };
    for (r, run) in runs.iter().enumerate() {
        let steps = |f: &dyn Fn(&StepPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            run.steps.iter().filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (s.step, v))).collect()
        };
        nll.series.push(Series { colour: r, label: run.name.clone(), points: steps(&|s| Some(s.nll)), markers: false });
        let p = steps(&|s| s.penalty);
        if p.iter().any(|(_, v)| *v != 0.0) {
            penalty.series.push(Series { colour: r, label: run.name.clone(), points: p, markers: false });
        }
        lr.series.push(Series { colour: r, label: run.name.clone(), points: steps(&|s| s.lr), markers: false });
        let mut sets: Vec<&str> = run.evals.iter().map(|e| e.set.as_str()).collect();
        sets.sort();
        sets.dedup();
        for set in sets {
            let points: Vec<&EvalPoint> = run.evals.iter().filter(|e| e.set == set).collect();
            let xy: Vec<(f64, f64)> = points.iter().filter(|e| e.value.is_finite()).map(|e| (e.step, e.value)).collect();
            let label = if runs.len() > 1 { format!("{}: {set}", run.name) } else { set.to_string() };
            let panel = if points[0].metric == "nll_per_token" { &mut eval_nll } else { &mut accuracy };
            let colour = panel.series.len();
            panel.series.push(Series { colour, label, points: xy, markers: true });
        }
    }
    [nll, penalty, lr, accuracy, eval_nll].into_iter().filter(|p| p.series.iter().any(|s| !s.points.is_empty())).collect()
}

/// Draws the curves of `runs` (one colour per run) and writes `svg` and `png`, each through a
/// temporary file renamed into place. Panels without data are left out.
pub fn write_curves(runs: &[RunLog], svg: &Path, png: &Path) -> io::Result<()> {
    register_font()?;
    let panels = panels(runs);
    let rows = panels.len().div_ceil(2).max(1) as u32;
    let size = (1200, 380 * rows);

    let mut svg_text = String::new();
    draw(&panels, SVGBackend::with_string(&mut svg_text, size).into_drawing_area())?;
    let svg_tmp = temporary_path(svg);
    fs::write(&svg_tmp, svg_text).and_then(|()| fs::rename(&svg_tmp, svg)).inspect_err(|_| {
        let _ = fs::remove_file(&svg_tmp);
    })?;
    // The bitmap backend picks the encoder from the extension, so keep ".png" last.
    let png_tmp: PathBuf = png.with_extension("tmp.png");
    draw(&panels, BitMapBackend::new(&png_tmp, size).into_drawing_area()).and_then(|()| fs::rename(&png_tmp, png)).inspect_err(|_| {
        let _ = fs::remove_file(&png_tmp);
    })
}

fn draw<DB: DrawingBackend>(panels: &[Panel], root: DrawingArea<DB, Shift>) -> io::Result<()> {
    let result = (|| -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let rows = panels.len().div_ceil(2).max(1);
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, 2))) {
            draw_panel(panel, &area)?;
        }
        root.present()
    })();
    result.map_err(|e| io::Error::other(format!("drawing the curves: {e}")))
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let x_range = padded_range(points().map(|p| p.0));
    let y_range = padded_range(points().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    let scientific = panel.scientific;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .axis_desc_style((FONT_FAMILY, 15))
        .label_style((FONT_FAMILY, 12))
        .y_label_formatter(&|v| if scientific { format!("{v:.1e}") } else { format!("{v:.3}") })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for Series { colour, label, points: xy, markers } in &panel.series {
        let colour = COLOURS[colour % COLOURS.len()];
        let line = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(xy.iter().copied(), line))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
        if *markers {
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(name: &str, lines: &[String]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-curves-{}", std::process::id())).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("log.jsonl"), lines.join("\n") + "\n").unwrap();
        dir
    }

    fn log(steps: usize, penalty: f64) -> Vec<String> {
        let mut lines = Vec::new();
        for step in 1..=steps {
            let nll = 3.0 / (step as f64).sqrt();
            lines.push(serde_json::json!({"step": step, "nll": nll, "penalty": penalty * step as f64, "lr": 1e-3 * (1.0 - step as f64 / steps as f64), "grad_norm": 1.0, "ms": 5.0}).to_string());
            if step % 5 == 0 {
                lines.push(
                    serde_json::json!({"step": step, "eval": [
                        {"name": "arith", "kind": "generation", "items": 10, "metrics": {"accuracy": step as f64 / steps as f64}},
                        {"name": "facts", "kind": "multiple-choice", "items": 10, "metrics": {"acc": 0.9, "acc_norm": 0.8}},
                        {"name": "wiki", "kind": "text", "items": 3, "metrics": {"nll_per_token": 2.5, "perplexity": 12.2}},
                    ]})
                    .to_string(),
                );
            }
        }
        lines
    }

    #[test]
    fn reads_logs_and_draws_overlaid_runs() {
        let lora = RunLog::read(&run_dir("lora", &log(20, 0.0))).unwrap();
        let lalora = RunLog::read(&run_dir("lalora-kfac", &log(20, 0.01))).unwrap();
        assert_eq!((lora.name.as_str(), lora.steps.len(), lora.evals.len()), ("lora", 20, 12));
        assert_eq!(lora.evals[0], EvalPoint { step: 5.0, set: "arith".into(), metric: "accuracy".into(), value: 0.25 });
        assert_eq!(lora.evals[2].metric, "nll_per_token");
        let out = run_dir("out", &[]);
        let (svg, png) = (out.join("curves.svg"), out.join("curves.png"));
        write_curves(&[lora, lalora], &svg, &png).unwrap();
        let text = fs::read_to_string(&svg).unwrap();
        for needle in [
            "training NLL per token",
            "penalty",
            "learning rate",
            "eval accuracy",
            "eval NLL per token",
            "lora: arith",
            "lalora-kfac: facts",
        ] {
            assert!(text.contains(needle), "SVG lacks {needle}");
        }
        let bytes = fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "{} bytes", bytes.len());
        if let Ok(path) = std::env::var("CURVES_SAMPLE") {
            fs::copy(&png, path).unwrap();
        }
    }

    #[test]
    fn a_plain_run_has_no_penalty_panel() {
        let run = RunLog::read(&run_dir("plain", &log(6, 0.0))).unwrap();
        let titles: Vec<&str> = panels(&[run]).iter().map(|p| p.title).collect();
        assert_eq!(titles, ["training NLL per token", "learning rate", "eval accuracy", "eval NLL per token"]);
    }

    #[test]
    fn bad_logs_name_the_file_line_and_field() {
        let err = |name: &str, lines: &[&str]| {
            let dir = run_dir(name, &lines.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            RunLog::read(&dir).unwrap_err().to_string()
        };
        let e = err("nostep", &[r#"{"step": 1, "nll": 2.0}"#, r#"{"nll": 2.0}"#]);
        assert!(e.contains("nostep/log.jsonl:2: field `step`"), "{e}");
        let e = err("badnll", &[r#"{"step": 1, "nll": "x"}"#]);
        assert!(e.contains("log.jsonl:1: field `nll` must be a number"), "{e}");
        let e = err("badeval", &[r#"{"step": 1, "eval": [{"name": "a", "kind": "generation", "metrics": {}}]}"#]);
        assert!(e.contains("field `eval[0].metrics.accuracy` is missing"), "{e}");
        let e = err("json", &["{oops"]);
        assert!(e.contains("log.jsonl:1: malformed JSON"), "{e}");
        let e = err("empty", &[""]);
        assert!(e.contains("holds no training or eval lines"), "{e}");
        let missing = std::env::temp_dir().join("lalora-curves-no-such-run");
        assert!(RunLog::read(&missing).unwrap_err().to_string().contains("lalora-curves-no-such-run/log.jsonl"));
    }
}
