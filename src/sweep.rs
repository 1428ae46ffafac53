//! Learning-forgetting sweeps: fit each Laplace prior once, train every (method, lambda)
//! setting from the same starting adapters, score source and target sets, and compare the
//! methods' Pareto frontiers.
//!
//! Plain LoRA's frontier comes from evaluating one run at several points of training (early
//! stopping), so the Laplace methods are compared with the strongest cheap baseline.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::AutodiffModule;
use serde::Serialize;

use crate::curvature::{Estimator, FisherType};
use crate::data::{Batch, Sequence};
use crate::error::Result;
use crate::eval::{evaluate, EvalOptions, EvalScore, EvalSet};
use crate::io::{write_atomic, write_json_atomic};
use crate::laplace::{fit, FitOptions, LaplacePrior};
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::plot::{write_pareto, ParetoPoint, ParetoSeries};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::train::{train, EvalPlan, EvalPoint, Method, TrainOptions};
use crate::KernelAutodiffBackend;

/// One regulariser to sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepMethod {
    /// Which penalty.
    pub method: Method,
    /// The curvature (for `lalora`).
    pub curvature: Option<Estimator>,
    /// Penalty strengths to try (ignored for `lora`).
    pub lambdas: Vec<f64>,
}

impl SweepMethod {
    /// `lora`, `l2`, `lalora-kfac`, ...
    pub fn label(&self) -> String {
        match self.curvature {
            Some(c) => format!("{}-{}", self.method.name(), c.name()),
            None => self.method.name().to_string(),
        }
    }
}

/// The data of a sweep.
pub struct SweepData<'a> {
    /// Tokenizer of the model.
    pub tokenizer: &'a Tokenizer,
    /// Target training sequences.
    pub train: &'a [Sequence],
    /// Source sequences the priors are fitted on, one list per source set.
    pub laplace_sources: &'a [Vec<Sequence>],
    /// Held-out source sets (forgetting is measured on these).
    pub source_evals: &'a [EvalSet],
    /// Held-out target sets (learning is measured on these).
    pub target_evals: &'a [EvalSet],
}

/// Settings of a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Methods and their lambdas.
    pub methods: Vec<SweepMethod>,
    /// Training settings shared by every run (method and lambda are set per run).
    pub train: TrainOptions,
    /// Evaluations along the plain-LoRA run, for its early-stopping frontier.
    pub lora_eval_points: usize,
    /// Fisher labels for the priors.
    pub fisher: FisherType,
    /// Batches per source set for the priors.
    pub laplace_batches: usize,
    /// Sequences per Laplace batch.
    pub laplace_batch_size: usize,
    /// delta in `F + delta I`.
    pub prior_precision: f64,
    /// Scoring knobs.
    pub eval: EvalOptions,
    /// Show progress bars.
    pub progress: bool,
}

/// One point of the learning-forgetting plane.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultRow {
    /// `lora`, `l2`, `lalora-diag`, ... (`base` for the starting point).
    pub method: String,
    /// Penalty strength (None for plain LoRA and the base).
    pub lambda: Option<f64>,
    /// Optimiser steps done at this evaluation.
    pub step: usize,
    /// Mean headline score over the source sets (higher: less forgetting).
    pub source_score: f64,
    /// Mean headline score over the target sets (higher: more learning).
    pub target_score: f64,
    /// Every set's headline score.
    pub scores: BTreeMap<String, f64>,
    /// Wall time of this run's training steps in seconds.
    pub train_seconds: f64,
}

/// What a sweep produced.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    /// Every evaluated point.
    pub rows: Vec<ResultRow>,
    /// Wall time of every stage (base evaluation, each fit, each run with its evaluations).
    pub stage_seconds: Vec<(String, f64)>,
    /// Source tokens each prior averages over.
    pub laplace_tokens: usize,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn row(method: &str, lambda: Option<f64>, step: usize, scores: &[EvalScore], n_source: usize, seconds: f64) -> ResultRow {
    ResultRow {
        method: method.to_string(),
        lambda,
        step,
        source_score: mean(scores[..n_source].iter().map(EvalScore::headline)),
        target_score: mean(scores[n_source..].iter().map(EvalScore::headline)),
        scores: scores.iter().map(|s| (s.name.clone(), s.headline())).collect(),
        train_seconds: seconds,
    }
}

/// Runs the sweep from `model` (with its starting adapters, which are every prior's anchor).
pub fn run_sweep<B: KernelAutodiffBackend>(
    model: &Llama<B>,
    lora: &LoraConfig,
    data: &SweepData<'_>,
    options: &SweepOptions,
    mut on_row: impl FnMut(&ResultRow),
) -> Result<SweepResult> {
    let device = model.embed_tokens.device();
    let sets: Vec<EvalSet> = data.source_evals.iter().chain(data.target_evals).cloned().collect();
    let n_source = data.source_evals.len();
    let plan = EvalPlan { tokenizer: data.tokenizer, sets: &sets, options: options.eval.clone() };
    let score_all = |m: &Llama<B>| -> Result<Vec<EvalScore>> {
        let inner = m.valid();
        sets.iter().map(|s| evaluate(&inner, data.tokenizer, s, &options.eval, &Progress::hidden())).collect()
    };
    let mut stages: Vec<(String, f64)> = Vec::new();
    let clock = std::time::Instant::now();
    let mut rows = vec![row("base", None, 0, &score_all(model)?, n_source, 0.0)];
    stages.push(("evaluate the starting model".into(), clock.elapsed().as_secs_f64()));
    on_row(&rows[0]);

    // Fit each prior once, on two (or N) batches per source set, at the starting adapters.
    let mut batches: Vec<Batch<B>> = Vec::new();
    for source in data.laplace_sources {
        let picked: Vec<&Sequence> = source.iter().take(options.laplace_batches * options.laplace_batch_size).collect();
        batches.extend(picked.chunks(options.laplace_batch_size.max(1)).map(|c| Batch::new(c, &device)));
    }
    let mut priors: BTreeMap<Estimator, LaplacePrior<B>> = BTreeMap::new();
    let mut laplace_tokens = 0;
    for estimator in options.methods.iter().filter_map(|m| m.curvature) {
        if priors.contains_key(&estimator) {
            continue;
        }
        let start = std::time::Instant::now();
        let progress = Progress::new(options.progress, batches.len() as u64, &format!("fit {}", estimator.name()));
        let fit_options = FitOptions { estimator, fisher: options.fisher, prior_precision: options.prior_precision };
        let (prior, tokens) = fit(model, &batches, &fit_options, &progress)?;
        progress.finish();
        stages.push((format!("fit {}", estimator.name()), start.elapsed().as_secs_f64()));
        laplace_tokens = tokens;
        priors.insert(estimator, LaplacePrior::from_inner(prior));
    }
    let isotropic = LaplacePrior::isotropic(model, 1.0);

    for method in &options.methods {
        let label = method.label();
        if method.method == Method::Lora {
            let clock = std::time::Instant::now();
            let every = (options.train.steps / options.lora_eval_points.max(1)).max(1);
            let opts = TrainOptions { method: Method::Lora, lambda: 0.0, eval_every: every, ..options.train.clone() };
            let out = train(model.clone(), lora, None, data.train, &plan, &opts, None, false, None, options.progress)?;
            for EvalPoint { step, scores } in &out.evals {
                rows.push(row(&label, None, *step, scores, n_source, out.train_seconds));
                on_row(rows.last().expect("just pushed"));
            }
            stages.push((format!("{label} ({} evaluations)", out.evals.len()), clock.elapsed().as_secs_f64()));
            continue;
        }
        let prior = match method.curvature {
            Some(c) => &priors[&c],
            None => &isotropic,
        };
        for &lambda in &method.lambdas {
            let clock = std::time::Instant::now();
            let opts = TrainOptions { method: method.method, lambda, eval_every: 0, ..options.train.clone() };
            let out = train(model.clone(), lora, Some(prior), data.train, &plan, &opts, None, false, None, options.progress)?;
            let last = out.evals.last().expect("training evaluates at the end");
            rows.push(row(&label, Some(lambda), last.step, &last.scores, n_source, out.train_seconds));
            on_row(rows.last().expect("just pushed"));
            stages.push((format!("{label} lambda {lambda}"), clock.elapsed().as_secs_f64()));
        }
    }
    Ok(SweepResult { rows, stage_seconds: stages, laplace_tokens })
}

/// The points no other point of the same list beats on both axes.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut front: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| !points.iter().any(|q| q.0 >= p.0 && q.1 >= p.1 && (q.0 > p.0 || q.1 > p.1)))
        .cloned()
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    front.dedup();
    front
}

/// Area of the region a set of (target, source) points dominates above (0, 0): one number
/// that says how good a frontier is (higher is better).
pub fn hypervolume(points: &[(f64, f64)]) -> f64 {
    let mut front = pareto_front(points);
    front.sort_by(|a, b| b.0.total_cmp(&a.0)); // by target, descending: source ascends
    let mut area = 0.0;
    let mut prev_source = 0.0;
    for (target, source) in front {
        area += target.max(0.0) * (source - prev_source).max(0.0);
        prev_source = prev_source.max(source);
    }
    area
}

impl SweepResult {
    /// Points of one method in the order its line runs: the `base` point first (lambda =
    /// infinity, step 0), then the runs from strongest to weakest penalty or by step.
    pub fn method_rows(&self, method: &str) -> Vec<&ResultRow> {
        let mut rows: Vec<&ResultRow> = self.rows.iter().filter(|r| r.method == method || r.method == "base").collect();
        let lambda = |r: &ResultRow| r.lambda.unwrap_or(f64::INFINITY);
        rows.sort_by(|a, b| (b.method == "base").cmp(&(a.method == "base")).then(lambda(b).total_cmp(&lambda(a))).then(a.step.cmp(&b.step)));
        rows
    }

    /// Method labels in first-seen order, `base` excluded.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rows {
            if r.method != "base" && !out.contains(&r.method) {
                out.push(r.method.clone());
            }
        }
        out
    }

    /// Per method: its best trade-off (highest source + target) and its frontier's hypervolume.
    pub fn summary(&self) -> Vec<MethodSummary> {
        self.methods()
            .into_iter()
            .map(|m| {
                let rows = self.method_rows(&m);
                let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.target_score, r.source_score)).collect();
                let best = rows
                    .iter()
                    .filter(|r| r.method != "base")
                    .max_by(|a, b| (a.source_score + a.target_score).total_cmp(&(b.source_score + b.target_score)))
                    .map(|r| (*r).clone())
                    .expect("every method has a point");
                MethodSummary { method: m, best, hypervolume: hypervolume(&points) }
            })
            .collect()
    }

    /// Writes `results.csv`, `results.json`, `pareto.svg` and `pareto.png` to `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let set_names: Vec<String> = self.rows.first().map(|r| r.scores.keys().cloned().collect()).unwrap_or_default();
        let mut csv = format!("method,lambda,step,source_score,target_score,train_seconds,{}\n", set_names.join(","));
        for r in &self.rows {
            let lambda = r.lambda.map(|l| l.to_string()).unwrap_or_default();
            let sets: Vec<String> = set_names.iter().map(|n| format!("{:.6}", r.scores.get(n).copied().unwrap_or(f64::NAN))).collect();
            csv += &format!(
                "{},{lambda},{},{:.6},{:.6},{:.2},{}\n",
                r.method,
                r.step,
                r.source_score,
                r.target_score,
                r.train_seconds,
                sets.join(",")
            );
        }
        write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
        write_json_atomic(&dir.join("results.json"), &serde_json::json!({ "sweep": self, "summary": self.summary() }))?;
        let series: Vec<ParetoSeries> = self
            .methods()
            .into_iter()
            .map(|m| ParetoSeries {
                points: self
                    .method_rows(&m)
                    .iter()
                    .map(|r| ParetoPoint {
                        source_score: r.source_score,
                        target_score: r.target_score,
                        label: match (r.method.as_str(), r.lambda) {
                            ("base", _) => "start".to_string(),
                            (_, Some(l)) => format!("lambda={l}"),
                            _ => format!("step {}", r.step),
                        },
                    })
                    .collect(),
                method: m,
            })
            .collect();
        write_pareto(
            &series,
            "Learning vs forgetting",
            "target score (learning)",
            "source score (retained)",
            &dir.join("pareto.svg"),
            &dir.join("pareto.png"),
        )
        .map_err(|e| crate::Error::io(dir.join("pareto.png"), e))
    }
}

/// A method's headline figures.
#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    /// Method label.
    pub method: String,
    /// Its point with the highest source + target score.
    pub best: ResultRow,
    /// Area its frontier dominates (with the starting point).
    pub hypervolume: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_and_hypervolume_of_a_staircase() {
        let pts = [(0.2, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1)];
        assert_eq!(pareto_front(&pts), vec![(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)]);
        // 0.9*0.1 + 0.5*(0.5-0.1) + 0.2*(0.9-0.5)
        assert!((hypervolume(&pts) - (0.09 + 0.2 + 0.08)).abs() < 1e-12);
        assert!(hypervolume(&[(0.5, 0.5)]) < hypervolume(&[(0.6, 0.6)]));
    }

    #[test]
    fn a_methods_line_runs_from_the_start_through_decreasing_lambda() {
        let at = |method: &str, lambda: Option<f64>, step: usize| ResultRow {
            method: method.into(),
            lambda,
            step,
            source_score: 0.0,
            target_score: 0.0,
            scores: BTreeMap::new(),
            train_seconds: 0.0,
        };
        let rows = vec![
            at("base", None, 0),
            at("lora", None, 20),
            at("lora", None, 10),
            at("kfac", Some(1.0), 30),
            at("kfac", Some(10.0), 30),
            at("kfac", Some(0.1), 30),
        ];
        let result = SweepResult { rows, stage_seconds: vec![], laplace_tokens: 0 };
        let order = |m: &str| result.method_rows(m).iter().map(|r| (r.method.clone(), r.lambda, r.step)).collect::<Vec<_>>();
        assert_eq!(
            order("kfac"),
            vec![("base".into(), None, 0), ("kfac".into(), Some(10.0), 30), ("kfac".into(), Some(1.0), 30), ("kfac".into(), Some(0.1), 30)]
        );
        assert_eq!(order("lora"), vec![("base".into(), None, 0), ("lora".into(), None, 10), ("lora".into(), None, 20)]);
    }
}
