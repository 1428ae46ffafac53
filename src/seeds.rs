//! Sweeps repeated over seeds: every point of the learning-forgetting plane as the mean and
//! standard error over seeds, and each method's frontier area with an interval.
//!
//! A seed sets everything random in a run ([`crate::sweep::SweepConfig::with_seed`]): the
//! adapters' init, the order of the training data, dropout, the Laplace batches and the
//! sampled Fisher labels. The tasks are not reseeded: every seed scores the same held-out sets.
//! A point's standard error is `sd / sqrt(n)` over the n seeds (sample s.d., `n - 1` in the
//! denominator); a frontier area is computed per seed and then averaged, and its interval is
//! Student's t at 95% (`mean +- t_{0.975, n-1} se`), wide for few seeds: with 3 seeds t = 4.30.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::io::{write_atomic, write_json_atomic};
use crate::plot::{write_pareto, ParetoPoint, ParetoSeries};
use crate::sweep::{ResultRow, SweepResult};

/// Mean and standard error of one quantity over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Mean over the seeds.
    pub mean: f64,
    /// Standard error of the mean, `sd / sqrt(n)` (0 with one seed: no spread measured).
    pub se: f64,
    /// Number of seeds.
    pub n: usize,
}

impl Estimate {
    /// The mean and standard error of `values`.
    ///
    /// # Panics
    /// If `values` is empty.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        assert!(n > 0, "an estimate needs at least one value");
        let mean = values.iter().sum::<f64>() / n as f64;
        let se = if n < 2 {
            0.0
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        };
        Estimate { mean, se, n }
    }

    /// The 95% Student-t interval `mean +- t_{0.975, n-1} se` (the mean itself with one seed).
    pub fn interval95(&self) -> (f64, f64) {
        let half = if self.n < 2 { 0.0 } else { t975(self.n - 1) * self.se };
        (self.mean - half, self.mean + half)
    }

    /// `0.753 +- 0.012` (just the mean with one seed), with `digits` decimals.
    pub fn display(&self, digits: usize) -> String {
        if self.n < 2 {
            format!("{:.digits$}", self.mean)
        } else {
            format!("{:.digits$} +- {:.digits$}", self.mean, self.se)
        }
    }
}

/// The 0.975 quantile of Student's t with `dof` degrees of freedom.
fn t975(dof: usize) -> f64 {
    const TABLE: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
    match dof {
        0 => f64::INFINITY,
        1..=10 => TABLE[dof - 1],
        11..=20 => 2.086 + (2.228 - 2.086) * (20 - dof) as f64 / 10.0,
        21..=30 => 2.042 + (2.086 - 2.042) * (30 - dof) as f64 / 10.0,
        _ => 1.96 + 2.4 / dof as f64,
    }
}

/// One point of the plane (a method at one lambda or one step) over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointEstimate {
    /// `base`, `lora`, `l2`, `lalora-kfac`, ...
    pub method: String,
    /// Penalty strength (None for plain LoRA and the base).
    pub lambda: Option<f64>,
    /// Optimiser steps done at this evaluation.
    pub step: usize,
    /// Mean source score (higher: less forgetting).
    pub source: Estimate,
    /// Mean target score (higher: more learning).
    pub target: Estimate,
    /// Every set's headline score.
    pub scores: BTreeMap<String, Estimate>,
}

/// A method's frontier area and best point over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SeededSummary {
    /// Method label.
    pub method: String,
    /// Its frontier area (with the starting point), mean and s.e. over seeds.
    pub hypervolume: Estimate,
    /// The 95% t-interval of the frontier area.
    pub hypervolume_interval: (f64, f64),
    /// The frontier area of each seed, in seed order.
    pub per_seed: Vec<f64>,
    /// Its point with the highest mean source + target score.
    pub best: PointEstimate,
}

/// The same sweep run once per seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeededSweep {
    /// The seeds, in run order.
    pub seeds: Vec<u64>,
    /// One sweep per seed.
    pub runs: Vec<SweepResult>,
}

impl SeededSweep {
    /// Every row of every seed.
    pub fn rows(&self) -> impl Iterator<Item = &ResultRow> {
        self.runs.iter().flat_map(|r| r.rows.iter())
    }

    /// Method labels in first-seen order, `base` excluded.
    pub fn methods(&self) -> Vec<String> {
        self.runs.first().map(|r| r.methods()).unwrap_or_default()
    }

    /// The points of `method` (the `base` point first, then strongest to weakest penalty or by
    /// step, as [`SweepResult::method_rows`]), each averaged over the seeds that have it.
    pub fn method_points(&self, method: &str) -> Vec<PointEstimate> {
        let Some(first) = self.runs.first() else { return Vec::new() };
        first.method_rows(method).into_iter().map(|r| self.point(&r.method, r.lambda, r.step)).collect()
    }

    /// The point `(method, lambda, step)` over the seeds that have it.
    ///
    /// # Panics
    /// If no seed has it.
    pub fn point(&self, method: &str, lambda: Option<f64>, step: usize) -> PointEstimate {
        // Diverged runs have no scores: a point averages the seeds that finished.
        let same = |r: &&ResultRow| r.method == method && r.lambda == lambda && r.step == step && r.diverged.is_none();
        let rows: Vec<&ResultRow> = self.rows().filter(same).collect();
        assert!(!rows.is_empty(), "no seed has the point ({method}, {lambda:?}, step {step})");
        let of = |f: &dyn Fn(&ResultRow) -> f64| Estimate::of(&rows.iter().map(|r| f(r)).collect::<Vec<_>>());
        let sets: Vec<&String> = rows[0].scores.keys().collect();
        PointEstimate {
            method: method.to_string(),
            lambda,
            step,
            source: of(&|r| r.source_score),
            target: of(&|r| r.target_score),
            scores: sets.into_iter().map(|s| (s.clone(), of(&|r| r.scores.get(s).copied().unwrap_or(f64::NAN)))).collect(),
        }
    }

    /// Every point of the first seed's order (base, then each method's line), averaged.
    pub fn points(&self) -> Vec<PointEstimate> {
        let mut out = vec![];
        if let Some(first) = self.runs.first() {
            for r in first.rows.iter().filter(|r| r.diverged.is_none()) {
                if !out.iter().any(|p: &PointEstimate| p.method == r.method && p.lambda == r.lambda && p.step == r.step) {
                    out.push(self.point(&r.method, r.lambda, r.step));
                }
            }
        }
        out
    }

    /// Per method: its frontier area per seed, their mean, s.e. and t-interval, and its best
    /// mean point.
    pub fn summary(&self) -> Vec<SeededSummary> {
        let per_seed: Vec<_> = self.runs.iter().map(|r| r.summary()).collect();
        self.methods()
            .into_iter()
            .map(|m| {
                let areas: Vec<f64> = per_seed.iter().filter_map(|s| s.iter().find(|x| x.method == m).map(|x| x.hypervolume)).collect();
                let hypervolume = Estimate::of(&areas);
                let best = self
                    .method_points(&m)
                    .into_iter()
                    .filter(|p| p.method != "base")
                    .max_by(|a, b| (a.source.mean + a.target.mean).total_cmp(&(b.source.mean + b.target.mean)))
                    .expect("every method has a point");
                SeededSummary { method: m, hypervolume, hypervolume_interval: hypervolume.interval95(), per_seed: areas, best }
            })
            .collect()
    }

    /// Wall time of every stage of every seed, named with the seed when there are several.
    pub fn stage_seconds(&self) -> Vec<(String, f64)> {
        let several = self.runs.len() > 1;
        self.seeds
            .iter()
            .zip(&self.runs)
            .flat_map(|(seed, run)| {
                run.stage_seconds.iter().map(move |(stage, s)| (if several { format!("seed {seed}: {stage}") } else { stage.clone() }, *s))
            })
            .collect()
    }

    /// Writes to `dir`: `results.csv` (every row of every seed), `points.csv` (each point's
    /// mean and standard error over seeds), `results.json` (all of it with the summary), and
    /// `pareto.svg`/`pareto.png` (the mean points, with +-1 s.e. bars when there are several
    /// seeds).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let set_names: Vec<String> = self.rows().next().map(|r| r.scores.keys().cloned().collect()).unwrap_or_default();
        let lambda = |l: Option<f64>| l.map(|l| l.to_string()).unwrap_or_default();
        let mut csv = format!("method,seed,lambda,step,source_score,target_score,train_seconds,diverged,{}\n", set_names.join(","));
        for r in self.rows() {
            let sets: Vec<String> = set_names.iter().map(|n| format!("{:.6}", r.scores.get(n).copied().unwrap_or(f64::NAN))).collect();
            // The reason goes to results.json; the CSV only flags the row.
            csv += &format!(
                "{},{},{},{},{:.6},{:.6},{:.2},{},{}\n",
                r.method,
                r.seed,
                lambda(r.lambda),
                r.step,
                r.source_score,
                r.target_score,
                r.train_seconds,
                r.diverged.is_some(),
                sets.join(",")
            );
        }
        write_atomic(&dir.join("results.csv"), csv.as_bytes())?;

        let set_columns: Vec<String> = set_names.iter().flat_map(|n| [n.clone(), format!("{n}_se")]).collect();
        let mut points = format!("method,lambda,step,seeds,source,source_se,target,target_se,{}\n", set_columns.join(","));
        for p in self.points() {
            let sets: Vec<String> = set_names
                .iter()
                .flat_map(|n| {
                    let e = p.scores.get(n).copied().unwrap_or(Estimate { mean: f64::NAN, se: f64::NAN, n: 0 });
                    [format!("{:.6}", e.mean), format!("{:.6}", e.se)]
                })
                .collect();
            points += &format!(
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{}\n",
                p.method,
                lambda(p.lambda),
                p.step,
                p.source.n,
                p.source.mean,
                p.source.se,
                p.target.mean,
                p.target.se,
                sets.join(",")
            );
        }
        write_atomic(&dir.join("points.csv"), points.as_bytes())?;
        write_json_atomic(
            &dir.join("results.json"),
            &serde_json::json!({ "seeds": self.seeds, "sweeps": self.runs, "points": self.points(), "summary": self.summary() }),
        )?;

        let series: Vec<ParetoSeries> = self
            .methods()
            .into_iter()
            .map(|m| ParetoSeries {
                points: self
                    .method_points(&m)
                    .iter()
                    .map(|p| ParetoPoint {
                        source_score: p.source.mean,
                        target_score: p.target.mean,
                        source_err: p.source.se,
                        target_err: p.target.se,
                        label: match (p.method.as_str(), p.lambda) {
                            ("base", _) => "start".to_string(),
                            (_, Some(l)) => format!("lambda={l}"),
                            _ => format!("step {}", p.step),
                        },
                    })
                    .collect(),
                method: m,
            })
            .collect();
        let title = if self.seeds.len() > 1 {
            format!("Learning vs forgetting (mean +- s.e. over {} seeds)", self.seeds.len())
        } else {
            "Learning vs forgetting".to_string()
        };
        write_pareto(
            &series,
            &title,
            "target score (learning)",
            "source score (retained)",
            &dir.join("pareto.svg"),
            &dir.join("pareto.png"),
        )
        .map_err(|e| crate::Error::io(dir.join("pareto.png"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_standard_error_and_t_interval() {
        let e = Estimate::of(&[1.0, 2.0, 3.0]);
        assert_eq!((e.mean, e.n), (2.0, 3));
        // sample s.d. 1, so s.e. 1/sqrt(3); t_{0.975, 2} = 4.303
        assert!((e.se - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        let (lo, hi) = e.interval95();
        assert!((hi - 2.0 - 4.303 / 3f64.sqrt()).abs() < 1e-9 && (2.0 - lo - (hi - 2.0)).abs() < 1e-12);
        let one = Estimate::of(&[0.7]);
        assert_eq!((one.se, one.interval95()), (0.0, (0.7, 0.7)));
        assert_eq!(one.display(3), "0.700");
        assert_eq!(e.display(2), "2.00 +- 0.58");
    }

    fn row(method: &str, seed: u64, lambda: Option<f64>, step: usize, source: f64, target: f64) -> ResultRow {
        ResultRow {
            method: method.into(),
            seed,
            lambda,
            step,
            source_score: source,
            target_score: target,
            scores: [("src".to_string(), source), ("tgt".to_string(), target)].into_iter().collect(),
            train_seconds: 1.0,
            diverged: None,
        }
    }

    fn sweep(seed: u64, shift: f64) -> SweepResult {
        SweepResult {
            rows: vec![
                row("base", seed, None, 0, 0.9, 0.1),
                row("lora", seed, None, 5, 0.5, 0.4 + shift),
                row("lora", seed, None, 10, 0.3, 0.6 + shift),
                row("kfac", seed, Some(1.0), 10, 0.7 + shift, 0.5),
                row("kfac", seed, Some(10.0), 10, 0.85, 0.2),
            ],
            stage_seconds: vec![("fit kfac".into(), 0.5)],
            laplace_tokens: 10,
        }
    }

    #[test]
    fn points_average_the_seeds_and_areas_are_per_seed() {
        let seeded = SeededSweep { seeds: vec![0, 1], runs: vec![sweep(0, 0.0), sweep(1, 0.1)] };
        let p = seeded.point("kfac", Some(1.0), 10);
        assert!((p.source.mean - 0.75).abs() < 1e-12 && (p.source.se - 0.05).abs() < 1e-12, "{p:?}");
        assert_eq!(p.target.se, 0.0);
        assert!((p.scores["src"].mean - 0.75).abs() < 1e-12);
        let kfac: Vec<(Option<f64>, usize)> = seeded.method_points("kfac").iter().map(|p| (p.lambda, p.step)).collect();
        assert_eq!(kfac, vec![(None, 0), (Some(10.0), 10), (Some(1.0), 10)]);
        let summary = seeded.summary();
        let lora = summary.iter().find(|s| s.method == "lora").unwrap();
        let areas: Vec<f64> =
            seeded.runs.iter().map(|r| r.summary().into_iter().find(|s| s.method == "lora").unwrap().hypervolume).collect();
        assert_eq!(lora.per_seed, areas);
        assert!((lora.hypervolume.mean - (areas[0] + areas[1]) / 2.0).abs() < 1e-12);
        assert!(lora.hypervolume_interval.0 < lora.hypervolume.mean && lora.hypervolume.mean < lora.hypervolume_interval.1);
        assert_eq!(seeded.points().len(), 5);
        assert_eq!(seeded.stage_seconds()[1].0, "seed 1: fit kfac");
    }

    #[test]
    fn writes_rows_points_json_and_a_plot_with_error_bars() {
        let dir = std::env::temp_dir().join(format!("lalora-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let seeded = SeededSweep { seeds: vec![0, 1], runs: vec![sweep(0, 0.0), sweep(1, 0.1)] };
        seeded.write(&dir).unwrap();
        let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 11);
        assert!(csv.lines().any(|l| l.starts_with("kfac,1,1,10,0.800000,0.500000,")), "{csv}");
        let points = std::fs::read_to_string(dir.join("points.csv")).unwrap();
        assert!(points.lines().any(|l| l.starts_with("kfac,1,10,2,0.750000,0.050000,0.500000,0.000000,")), "{points}");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        assert_eq!(json["summary"].as_array().unwrap().len(), 2);
        let svg = std::fs::read_to_string(dir.join("pareto.svg")).unwrap();
        assert!(svg.contains("mean +- s.e. over 2 seeds"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
