//! Learning-forgetting sweeps: fit each Laplace prior once, train every (method, lambda)
//! setting from the same starting adapters, score source and target sets, and compare the
//! methods' Pareto frontiers.
//!
//! Plain LoRA's frontier comes from evaluating one run at several points of training (early
//! stopping), so the Laplace methods are compared with the strongest cheap baseline; by default
//! it gets as many points as the largest lambda grid, so no frontier wins by having more.
//! [`sweep_files`] repeats the whole sweep over several seeds ([`crate::seeds`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::curvature::Estimator;
use crate::data::{lm_sequences_with, FieldMap, LmOptions, Sequence};
use crate::error::Result;
use crate::eval::{evaluate, load_eval_set_with, EvalScore, EvalSet};
use crate::lalora::{AdapterSource, LaLoRA};
use crate::laplace::{fit, LaplaceConfig, LaplacePrior, SourceData};
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::seeds::SeededSweep;
use crate::tokenizer::Tokenizer;
use crate::train::{EvalPoint, Penalty, TrainConfig, TrainControl, TrainData};
use crate::KernelAutodiffBackend;

/// The regulariser of a sweep's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepPenalty {
    /// Plain LoRA, evaluated at several points along one run (its early-stopping frontier).
    Lora,
    /// The isotropic penalty around the starting adapters.
    L2,
    /// The Laplace penalty with this curvature.
    Laplace(Estimator),
}

/// One regulariser to sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepMethod {
    /// Which penalty.
    pub penalty: SweepPenalty,
    /// Penalty strengths to try (ignored for plain LoRA).
    pub lambdas: Vec<f64>,
}

impl SweepMethod {
    /// `lora`, `l2`, `lalora-kfac`, ...
    pub fn label(&self) -> String {
        match self.penalty {
            SweepPenalty::Lora => "lora".to_string(),
            SweepPenalty::L2 => "l2".to_string(),
            SweepPenalty::Laplace(c) => format!("lalora-{}", c.name()),
        }
    }

    fn train_penalty(&self, lambda: f64) -> Penalty {
        match self.penalty {
            SweepPenalty::Lora => Penalty::None,
            SweepPenalty::L2 => Penalty::L2 { lambda },
            SweepPenalty::Laplace(_) => Penalty::Laplace { lambda },
        }
    }
}

/// The files a sweep reads.
#[derive(Debug, Clone)]
pub struct SweepFiles {
    /// HF model directory (with `tokenizer.json`).
    pub model: PathBuf,
    /// Target training data.
    pub train: PathBuf,
    /// Source data the priors are fitted on, one file per source set.
    pub laplace_data: Vec<PathBuf>,
    /// Held-out source sets (forgetting is measured on these).
    pub source_eval: Vec<PathBuf>,
    /// Held-out target sets (learning is measured on these).
    pub target_eval: Vec<PathBuf>,
    /// Column renames applied to every file.
    pub fields: Option<FieldMap>,
}

/// The data of a sweep, tokenised.
pub struct SweepData<'a> {
    /// Tokenizer of the model.
    pub tokenizer: &'a Tokenizer,
    /// Target training sequences.
    pub train: &'a [Sequence],
    /// Source sets the priors are fitted on.
    pub laplace_sources: &'a [SourceData],
    /// Held-out source sets.
    pub source_evals: &'a [EvalSet],
    /// Held-out target sets.
    pub target_evals: &'a [EvalSet],
}

/// Settings of a sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The starting adapters of every run (every prior's anchor).
    pub lora: LoraConfig,
    /// Methods and their lambdas.
    pub methods: Vec<SweepMethod>,
    /// Training settings shared by every run (the penalty is set per run).
    pub train: TrainConfig,
    /// Evaluations along the plain-LoRA run, for its early-stopping frontier (None: as many
    /// as the largest lambda grid of the other methods).
    pub lora_eval_points: Option<usize>,
    /// How the priors are fitted (the estimator is set per method).
    pub laplace: LaplaceConfig,
    /// Seed of the backend's generator (label sampling, dropout) at the start.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

impl SweepConfig {
    /// The same sweep with every seed set to `seed`: the adapters' init, the data order and
    /// dropout, the Laplace batches and label sampling, and the backend's generator.
    pub fn with_seed(&self, seed: u64) -> SweepConfig {
        let mut config = self.clone();
        config.lora.seed = seed;
        config.train.data.seed = seed;
        config.laplace.seed = seed;
        config.seed = seed;
        config
    }

    /// Evaluations along the plain-LoRA run: [`Self::lora_eval_points`], or the size of the
    /// largest lambda grid (at least 1).
    pub fn lora_points(&self) -> usize {
        self.lora_eval_points
            .unwrap_or_else(|| self.methods.iter().filter(|m| m.penalty != SweepPenalty::Lora).map(|m| m.lambdas.len()).max().unwrap_or(1))
            .max(1)
    }
}

/// One point of the learning-forgetting plane.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultRow {
    /// `lora`, `l2`, `lalora-diag`, ... (`base` for the starting point).
    pub method: String,
    /// The seed of this sweep ([`SweepConfig::with_seed`]).
    pub seed: u64,
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
    /// Why the run stopped early (a non-finite loss, say); its scores are then NaN and it is
    /// left out of frontiers, summaries and plots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
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

fn row(method: &str, seed: u64, lambda: Option<f64>, step: usize, scores: &[EvalScore], n_source: usize, seconds: f64) -> ResultRow {
    ResultRow {
        method: method.to_string(),
        seed,
        lambda,
        step,
        source_score: mean(scores[..n_source].iter().map(EvalScore::headline)),
        target_score: mean(scores[n_source..].iter().map(EvalScore::headline)),
        scores: scores.iter().map(|s| (s.name.clone(), s.headline())).collect(),
        train_seconds: seconds,
        diverged: None,
    }
}

/// The row of a run that stopped with a numerical error: kept, marked, and scored NaN.
fn diverged_row(method: &str, seed: u64, lambda: Option<f64>, reason: String) -> ResultRow {
    ResultRow {
        method: method.to_string(),
        seed,
        lambda,
        step: 0,
        source_score: f64::NAN,
        target_score: f64::NAN,
        scores: BTreeMap::new(),
        train_seconds: 0.0,
        diverged: Some(reason),
    }
}

/// The data of a sweep, read and tokenised once for every seed.
pub struct SweepInputs {
    /// Tokenizer of the model.
    pub tokenizer: Tokenizer,
    /// Target training sequences.
    pub train: Vec<Sequence>,
    /// Source sets the priors are fitted on.
    pub laplace_sources: Vec<SourceData>,
    /// Held-out source sets.
    pub source_evals: Vec<EvalSet>,
    /// Held-out target sets.
    pub target_evals: Vec<EvalSet>,
}

impl SweepInputs {
    /// Reads and tokenises the files of `files` (`max_len` tokens per sequence, the model's
    /// EOS after completions, its chat template for `messages` records).
    /// The tokenizer's ids must fit the model's `vocab_size`.
    pub fn read(files: &SweepFiles, max_len: usize, eos: Option<u32>, vocab_size: usize) -> Result<Self> {
        let tokenizer = Tokenizer::for_model(&files.model, vocab_size)?;
        let chat = ChatTemplate::from_model_dir(&files.model)?;
        let read = LmOptions { max_len, eos, fields: files.fields.as_ref(), chat: chat.as_ref() };
        let train = lm_sequences_with(&files.train, &tokenizer, &read)?;
        let laplace_sources = files.laplace_data.iter().map(|p| SourceData::read_with(p, &tokenizer, &read)).collect::<Result<Vec<_>>>()?;
        let load = |paths: &[PathBuf]| paths.iter().map(|p| load_eval_set_with(p, &tokenizer, &read)).collect::<Result<Vec<_>>>();
        let (source_evals, target_evals) = (load(&files.source_eval)?, load(&files.target_eval)?);
        Ok(SweepInputs { tokenizer, train, laplace_sources, source_evals, target_evals })
    }

    /// The borrowed view [`run_sweep`] takes.
    pub fn data(&self) -> SweepData<'_> {
        SweepData {
            tokenizer: &self.tokenizer,
            train: &self.train,
            laplace_sources: &self.laplace_sources,
            source_evals: &self.source_evals,
            target_evals: &self.target_evals,
        }
    }
}

/// Reads the files once, then for every seed in `seeds`: seeds the backend, adds that seed's
/// starting adapters and runs the sweep ([`SweepConfig::with_seed`]). `on_row` sees every
/// point of every seed as it is scored.
///
/// # Errors
/// An empty `seeds`, and every error of reading or training.
pub fn sweep_files<B: KernelAutodiffBackend>(
    files: &SweepFiles,
    config: &SweepConfig,
    seeds: &[u64],
    device: &B::Device,
    mut on_row: impl FnMut(&ResultRow),
) -> Result<SeededSweep> {
    if seeds.is_empty() {
        return Err(crate::Error::arg("seeds", "needs at least one seed"));
    }
    let base = Llama::<B>::load(&files.model, device)?;
    let eos = base.config.eos_token_ids.first().copied();
    let inputs = SweepInputs::read(files, config.train.data.max_len, eos, base.config.vocab_size)?;
    let mut runs = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let config = config.with_seed(seed);
        B::seed(device, seed);
        let start = LaLoRA::<B>::from_model(base.clone(), AdapterSource::Fresh(config.lora.clone()))?;
        runs.push(run_sweep(&start, &inputs.data(), &config, &mut on_row)?);
    }
    Ok(SeededSweep { seeds: seeds.to_vec(), runs })
}

/// Runs the sweep from `start` (with its starting adapters, which are every prior's anchor).
///
/// Every prior is fitted once, at the starting adapters, with the Laplace seed: a method's
/// prior (and so its points) does not depend on the other methods in the sweep.
pub fn run_sweep<B: KernelAutodiffBackend>(
    start: &LaLoRA<B>,
    data: &SweepData<'_>,
    config: &SweepConfig,
    mut on_row: impl FnMut(&ResultRow),
) -> Result<SweepResult> {
    let sets: Vec<EvalSet> = data.source_evals.iter().chain(data.target_evals).cloned().collect();
    let n_source = data.source_evals.len();
    let train_data = TrainData { sequences: data.train, eval_sets: &sets, tokenizer: data.tokenizer };
    let eval_options = crate::eval::EvalOptions {
        batch_size: config.train.eval.batch_size,
        max_len: config.train.eval.max_len,
        max_new_tokens: config.train.eval.max_new_tokens,
    };
    let score_all = |m: &Llama<B>| -> Result<Vec<EvalScore>> {
        let inner = m.valid();
        sets.iter().map(|s| evaluate(&inner, data.tokenizer, s, &eval_options, &Progress::hidden())).collect()
    };
    let mut stages: Vec<(String, f64)> = Vec::new();
    let clock = Instant::now();
    let seed = config.seed;
    let mut rows = vec![row("base", seed, None, 0, &score_all(&start.model)?, n_source, 0.0)];
    stages.push(("evaluate the starting model".into(), clock.elapsed().as_secs_f64()));
    on_row(&rows[0]);

    // Fit each prior once, at the starting adapters.
    let mut priors: BTreeMap<Estimator, LaplacePrior<B>> = BTreeMap::new();
    let mut laplace_tokens = 0;
    for method in &config.methods {
        let SweepPenalty::Laplace(estimator) = method.penalty else { continue };
        if priors.contains_key(&estimator) {
            continue;
        }
        let clock = Instant::now();
        let laplace = LaplaceConfig { estimator, ..config.laplace.clone() };
        let (prior, report) = fit(&start.model, &start.lora, data.laplace_sources, &laplace, config.progress)?;
        stages.push((format!("fit {}", estimator.name()), clock.elapsed().as_secs_f64()));
        laplace_tokens = report.tokens;
        priors.insert(estimator, prior);
    }

    let control = TrainControl { progress: config.progress, ..Default::default() };
    for method in &config.methods {
        let label = method.label();
        let from_start =
            |prior: Option<&LaplacePrior<B>>| LaLoRA { model: start.model.clone(), lora: start.lora.clone(), prior: prior.cloned() };
        if method.penalty == SweepPenalty::Lora {
            let clock = Instant::now();
            let every = (config.train.schedule.steps / config.lora_points()).max(1);
            let mut train = config.train.clone().with_penalty(Penalty::None);
            train.eval.every = every;
            let report = match from_start(None).train(&train_data, &train, &control) {
                Ok((_, report)) => report,
                Err(crate::Error::Numerical(reason)) => {
                    rows.push(diverged_row(&label, seed, None, reason));
                    on_row(rows.last().expect("just pushed"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for EvalPoint { step, scores } in &report.evals {
                rows.push(row(&label, seed, None, *step, scores, n_source, report.train_seconds));
                on_row(rows.last().expect("just pushed"));
            }
            stages.push((format!("{label} ({} evaluations)", report.evals.len()), clock.elapsed().as_secs_f64()));
            continue;
        }
        let prior = match method.penalty {
            SweepPenalty::Laplace(c) => Some(&priors[&c]),
            _ => None,
        };
        for &lambda in &method.lambdas {
            let clock = Instant::now();
            let mut train = config.train.clone().with_penalty(method.train_penalty(lambda));
            train.eval.every = 0;
            match from_start(prior).train(&train_data, &train, &control) {
                Ok((_, report)) => {
                    let last = report.evals.last().expect("training evaluates at the end");
                    rows.push(row(&label, seed, Some(lambda), last.step, &last.scores, n_source, report.train_seconds));
                }
                // A setting that diverges is recorded; the others still run.
                Err(crate::Error::Numerical(reason)) => rows.push(diverged_row(&label, seed, Some(lambda), reason)),
                Err(e) => return Err(e),
            }
            on_row(rows.last().expect("just pushed"));
            stages.push((format!("{label} lambda {lambda}"), clock.elapsed().as_secs_f64()));
        }
    }
    Ok(SweepResult { rows, stage_seconds: stages, laplace_tokens })
}

/// The points no other point of the same list beats on both axes.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut front: Vec<(f64, f64)> =
        points.iter().filter(|p| !points.iter().any(|q| q.0 >= p.0 && q.1 >= p.1 && (q.0 > p.0 || q.1 > p.1))).cloned().collect();
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
    /// infinity, step 0), then the runs from strongest to weakest penalty or by step. Diverged
    /// runs are left out.
    pub fn method_rows(&self, method: &str) -> Vec<&ResultRow> {
        let mut rows: Vec<&ResultRow> =
            self.rows.iter().filter(|r| (r.method == method || r.method == "base") && r.diverged.is_none()).collect();
        let lambda = |r: &ResultRow| r.lambda.unwrap_or(f64::INFINITY);
        rows.sort_by(|a, b| {
            (b.method == "base").cmp(&(a.method == "base")).then(lambda(b).total_cmp(&lambda(a))).then(a.step.cmp(&b.step))
        });
        rows
    }

    /// Method labels in first-seen order, `base` excluded, and so are methods whose every run
    /// diverged.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.rows.iter().filter(|r| r.diverged.is_none()) {
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
            seed: 0,
            lambda,
            step,
            source_score: 0.0,
            target_score: 0.0,
            scores: BTreeMap::new(),
            train_seconds: 0.0,
            diverged: None,
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
