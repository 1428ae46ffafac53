//! A continual run: learn a list of target tasks in order with each method and score every
//! source and target set after every stage.

use std::time::Instant;

use burn::module::AutodiffModule;
use serde::{Deserialize, Serialize};

use super::retention::RetentionMatrix;
use crate::data::Sequence;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalSet};
use crate::lalora::LaLoRA;
use crate::laplace::{LaplaceConfig, LaplacePrior, SourceData};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::train::{Penalty, TrainConfig, TrainControl, TrainData};
use crate::KernelAutodiffBackend;

/// How a method regularises each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ContinualMethod {
    /// Plain LoRA, stage after stage (sequential fine-tuning).
    Lora,
    /// LaLoRA with the prior fitted on the sources at the starting adapters, the same for
    /// every stage.
    LaloraSource,
    /// LaLoRA whose prior grows: after each stage a curvature is fitted on that stage's
    /// target at the new adapters and added to the prior (decayed by gamma), and the anchor
    /// moves to the new adapters.
    LaloraAccumulated,
}

impl ContinualMethod {
    /// `lora`, `lalora-source`, `lalora-accumulated`.
    pub fn label(&self) -> &'static str {
        match self {
            ContinualMethod::Lora => "lora",
            ContinualMethod::LaloraSource => "lalora-source",
            ContinualMethod::LaloraAccumulated => "lalora-accumulated",
        }
    }
}

/// One target task of the sequence.
#[derive(Debug, Clone)]
pub struct ContinualTarget {
    /// Its name (a column and a stage of the retention matrix).
    pub name: String,
    /// Training sequences (what the stage trains on, and what its curvature is fitted on).
    pub train: Vec<Sequence>,
    /// Held-out set scored after every stage.
    pub eval: EvalSet,
}

/// The data of a continual run, tokenised.
pub struct ContinualData<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Source data the source prior is fitted on.
    pub laplace_sources: &'a [SourceData],
    /// Held-out source sets.
    pub source_evals: &'a [EvalSet],
    /// The targets, in learning order.
    pub targets: &'a [ContinualTarget],
}

/// Settings of a continual run.
#[derive(Debug, Clone)]
pub struct ContinualConfig {
    /// Methods to run, each from the same starting adapters.
    pub methods: Vec<ContinualMethod>,
    /// Training settings of every stage (the penalty is set per method; the data seed is
    /// offset by the stage so each stage sees its own order).
    pub train: TrainConfig,
    /// lambda of the Laplace methods.
    pub lambda: f64,
    /// gamma: the accumulated prior's older part is multiplied by it after each stage.
    pub decay: f64,
    /// How every prior is fitted (the source prior and the targets' curvatures).
    pub laplace: LaplaceConfig,
    /// Show progress bars.
    pub progress: bool,
}

impl ContinualConfig {
    fn validate(&self, data: &ContinualData<'_>) -> Result<()> {
        self.train.validate()?;
        self.laplace.validate()?;
        if self.methods.is_empty() {
            return Err(Error::arg("method", "name at least one method"));
        }
        if data.targets.is_empty() {
            return Err(Error::arg("target", "a continual run needs at least one target task"));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::arg("lambda", "must be a non-negative number"));
        }
        if !(self.decay.is_finite() && self.decay >= 0.0) {
            return Err(Error::arg("decay", "must be a non-negative number"));
        }
        let needs_prior = self.methods.iter().any(|m| *m != ContinualMethod::Lora);
        if needs_prior && data.laplace_sources.iter().all(|s| s.sequences.is_empty()) {
            return Err(Error::arg("laplace-data", "the LaLoRA methods need source data to fit the source prior on"));
        }
        if let Some(t) = data.targets.iter().find(|t| t.train.is_empty()) {
            return Err(Error::EmptyData { path: t.eval.path.clone(), reason: format!("target `{}` has no training sequences", t.name) });
        }
        Ok(())
    }
}

/// What a continual run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContinualResult {
    /// One retention matrix per method, in the order of the config.
    pub matrices: Vec<RetentionMatrix>,
    /// Wall time of every stage (fits, training, evaluation).
    pub stage_seconds: Vec<(String, f64)>,
}

/// The model after one stage, kept to share between methods that agree up to there.
struct Stage<B: KernelAutodiffBackend> {
    lalora: LaLoRA<B>,
    scores: Vec<f64>,
}

/// Runs every method over the targets in order, starting each from `start`'s adapters;
/// `on_row(method, stage, scores)` sees each row of the matrices as it is scored.
///
/// Both LaLoRA methods train their first stage under the same source prior, so when both
/// run, the first stage is trained once and shared.
pub fn run_continual<B: KernelAutodiffBackend>(
    start: &LaLoRA<B>,
    data: &ContinualData<'_>,
    config: &ContinualConfig,
    mut on_row: impl FnMut(&str, &str, &[f64]),
) -> Result<ContinualResult> {
    config.validate(data)?;
    let sets: Vec<&EvalSet> = data.source_evals.iter().chain(data.targets.iter().map(|t| &t.eval)).collect();
    let eval_options = EvalOptions {
        batch_size: config.train.eval.batch_size,
        max_len: config.train.eval.max_len,
        max_new_tokens: config.train.eval.max_new_tokens,
    };
    let score_all = |lalora: &LaLoRA<B>| -> Result<Vec<f64>> {
        let model = lalora.model.valid();
        sets.iter().map(|s| evaluate(&model, data.tokenizer, s, &eval_options, &Progress::hidden()).map(|e| e.headline())).collect()
    };
    let source_names: Vec<String> = data.source_evals.iter().map(|s| s.name.clone()).collect();
    let target_names: Vec<String> = data.targets.iter().map(|t| t.name.clone()).collect();
    let mut stages: Vec<(String, f64)> = Vec::new();

    let clock = Instant::now();
    let base_scores = score_all(start)?;
    stages.push(("evaluate the starting model".into(), clock.elapsed().as_secs_f64()));

    let needs_prior = config.methods.iter().any(|m| *m != ContinualMethod::Lora);
    let source_prior: Option<LaplacePrior<B>> = if needs_prior {
        let clock = Instant::now();
        let mut fitted = LaLoRA { model: start.model.clone(), lora: start.lora.clone(), prior: None };
        fitted.fit_prior(data.laplace_sources, &config.laplace, config.progress)?;
        stages.push(("fit the source prior".into(), clock.elapsed().as_secs_f64()));
        fitted.prior
    } else {
        None
    };

    let mut shared_first_stage: Option<Stage<B>> = None;
    let mut matrices = Vec::with_capacity(config.methods.len());
    for &method in &config.methods {
        let label = method.label();
        let mut matrix = RetentionMatrix::new(label, &source_names, &target_names);
        matrix.push("start", base_scores.clone());
        on_row(label, "start", &base_scores);
        let mut lalora = LaLoRA { model: start.model.clone(), lora: start.lora.clone(), prior: source_prior.clone() };
        let penalty = match method {
            ContinualMethod::Lora => Penalty::None,
            _ => Penalty::Laplace { lambda: config.lambda },
        };
        for (index, target) in data.targets.iter().enumerate() {
            let clock = Instant::now();
            let reuse = index == 0 && method != ContinualMethod::Lora;
            let scores = match shared_first_stage.as_ref().filter(|_| reuse) {
                Some(stage) => {
                    lalora = LaLoRA { model: stage.lalora.model.clone(), lora: stage.lalora.lora.clone(), prior: lalora.prior };
                    stage.scores.clone()
                }
                None => {
                    let train = stage_config(&config.train, penalty, index);
                    let train_data = TrainData { sequences: &target.train, eval_sets: &[], tokenizer: data.tokenizer };
                    let control = TrainControl { progress: config.progress, ..Default::default() };
                    lalora = lalora.train(&train_data, &train, &control)?.0;
                    let scores = score_all(&lalora)?;
                    if reuse {
                        let prior = lalora.prior.clone();
                        shared_first_stage = Some(Stage {
                            lalora: LaLoRA { model: lalora.model.clone(), lora: lalora.lora.clone(), prior },
                            scores: scores.clone(),
                        });
                    }
                    scores
                }
            };
            matrix.push(&target.name, scores.clone());
            on_row(label, &target.name, &scores);
            if method == ContinualMethod::LaloraAccumulated && index + 1 < data.targets.len() {
                // The next stage's prior: this target's curvature at the new adapters, added.
                let fit_data = [SourceData { name: target.name.clone(), sequences: target.train.clone() }];
                let laplace = LaplaceConfig { seed: config.laplace.seed.wrapping_add(index as u64 + 1), ..config.laplace.clone() };
                lalora.fit_accumulated_prior(&fit_data, &laplace, config.decay, config.progress)?;
            }
            stages.push((format!("{label}: {}", target.name), clock.elapsed().as_secs_f64()));
        }
        matrices.push(matrix);
    }
    Ok(ContinualResult { matrices, stage_seconds: stages })
}

/// The training settings of stage `index`: `penalty`, and a data order of its own.
fn stage_config(train: &TrainConfig, penalty: Penalty, index: usize) -> TrainConfig {
    let mut config = train.clone().with_penalty(penalty);
    config.data.seed = train.data.seed.wrapping_add(index as u64);
    config.eval.every = 0;
    config
}
