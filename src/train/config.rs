//! What shapes a training run, as nested burn configs: the penalty, the optimiser, the
//! learning-rate schedule, the data order and evaluation. A run directory keeps them as
//! `config.json` (with the LoRA config), and `--resume` must match it.
//!
//! No `Result` alias is imported here: burn's `Config` derive writes `Result<..>` in its code.

use burn::config::Config;
use burn::optim::AdamWConfig;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::laplace::LaplacePrior;
use crate::lora::LoraConfig;

/// How the adapters are held near their start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Penalty {
    /// Plain LoRA.
    None,
    /// `lambda/2 |theta - theta_0|^2` around the starting adapters.
    L2 {
        /// Strength.
        lambda: f64,
    },
    /// `lambda/2 (theta - theta*)^T (F + delta I) (theta - theta*)` with the model's Laplace
    /// prior.
    Laplace {
        /// Strength.
        lambda: f64,
    },
}

impl Penalty {
    /// The prior and the factor (lambda / 2) a training step adds: `start` (the starting
    /// adapters, isotropic) for l2, `prior` for the Laplace penalty, nothing for plain LoRA.
    ///
    /// # Errors
    /// The Laplace penalty without a prior.
    pub(crate) fn term<'a, B: Backend>(
        self,
        start: &'a LaplacePrior<B>,
        prior: Option<&'a LaplacePrior<B>>,
    ) -> Result<Option<(&'a LaplacePrior<B>, f64)>, Error> {
        Ok(match self {
            Penalty::None => None,
            Penalty::L2 { lambda } => Some((start, lambda / 2.0)),
            Penalty::Laplace { lambda } => {
                let prior = prior.ok_or_else(|| Error::arg("laplace", "the laplace penalty needs a fitted or loaded prior"))?;
                Some((prior, lambda / 2.0))
            }
        })
    }

    /// `lora`, `l2` or `lalora`: the method's name in reports.
    pub fn method_name(&self) -> &'static str {
        match self {
            Penalty::None => "lora",
            Penalty::L2 { .. } => "l2",
            Penalty::Laplace { .. } => "lalora",
        }
    }

    /// lambda (0 for plain LoRA).
    pub fn lambda(&self) -> f64 {
        match *self {
            Penalty::None => 0.0,
            Penalty::L2 { lambda } | Penalty::Laplace { lambda } => lambda,
        }
    }
}

/// Shape of the learning-rate decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ScheduleKind {
    /// Half a cosine from the peak down to `min_lr_ratio * peak`.
    #[default]
    Cosine,
    /// A straight line from the peak down to `min_lr_ratio * peak`.
    Linear,
    /// The peak for every step after warmup.
    Constant,
}

/// AdamW with PyTorch's defaults written out (burn's differ: eps 1e-5, weight decay 1e-4),
/// and global-norm clipping.
#[derive(Config, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// First-moment decay. Default 0.9.
    #[config(default = 0.9)]
    pub beta1: f32,
    /// Second-moment decay. Default 0.999.
    #[config(default = 0.999)]
    pub beta2: f32,
    /// Denominator epsilon. Default 1e-8.
    #[config(default = 1e-8)]
    pub eps: f32,
    /// Decoupled weight decay. Default 0.01. Fine-tuning decays the adapters toward their
    /// starting values, not toward zero (with the offset init zero is not the base model; see
    /// [`super::DecayToward`]); full-parameter pretraining decays toward zero.
    #[config(default = 0.01)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping). Default 1.0.
    #[config(default = "Some(1.0)")]
    pub clip: Option<f64>,
}

impl OptimizerConfig {
    /// burn's AdamW with these values (clipping is done separately, by global norm).
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig::new().with_beta_1(self.beta1).with_beta_2(self.beta2).with_epsilon(self.eps).with_weight_decay(self.weight_decay)
    }
}

/// Steps and learning rate: linear warmup, then the decay.
#[derive(Config, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// Optimiser steps. Default 100.
    #[config(default = 100)]
    pub steps: usize,
    /// Peak learning rate. Default 2e-4.
    #[config(default = 2e-4)]
    pub lr: f64,
    /// Linear warmup steps from 0 to the peak. Default 10.
    #[config(default = 10)]
    pub warmup_steps: usize,
    /// Decay after warmup. Default cosine.
    #[config(default = "ScheduleKind::Cosine")]
    pub kind: ScheduleKind,
    /// Final learning rate as a fraction of the peak. Default 0.1.
    #[config(default = 0.1)]
    pub min_lr_ratio: f64,
}

impl ScheduleConfig {
    /// Learning rate of (0-based) step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)
    }
}

/// How training data is cut and ordered.
#[derive(Config, Debug, PartialEq)]
pub struct DataConfig {
    /// Sequences per micro-batch. Default 8.
    #[config(default = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation). Default 1.
    #[config(default = 1)]
    pub grad_accum: usize,
    /// Tokens kept per sequence when the data is read. Default 512.
    #[config(default = 512)]
    pub max_len: usize,
    /// Seed of the data order and of dropout. Default 0.
    #[config(default = 0)]
    pub seed: u64,
}

/// Evaluation during and after training.
#[derive(Config, Debug, PartialEq)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: only at the end). Default 0.
    #[config(default = 0)]
    pub every: usize,
    /// Sequences per forward pass (and prompts per generation batch). Default 8.
    #[config(default = 8)]
    pub batch_size: usize,
    /// Token limit per scored sequence. Default 512.
    #[config(default = 512)]
    pub max_len: usize,
    /// Tokens generated at most per generation item. Default 64.
    #[config(default = 64)]
    pub max_new_tokens: usize,
}

/// Everything that shapes a training run except the model, its adapters and the data.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The regulariser. Default none (plain LoRA).
    #[config(default = "Penalty::None")]
    pub penalty: Penalty,
    /// AdamW and clipping.
    #[config(default = "OptimizerConfig::new()")]
    pub optimizer: OptimizerConfig,
    /// Steps and learning rate.
    #[config(default = "ScheduleConfig::new()")]
    pub schedule: ScheduleConfig,
    /// Batching and data order.
    #[config(default = "DataConfig::new()")]
    pub data: DataConfig,
    /// Evaluation.
    #[config(default = "EvalConfig::new()")]
    pub eval: EvalConfig,
    /// Write a checkpoint every this many steps (0: only at the end). Default 0.
    #[config(default = 0)]
    pub checkpoint_every: usize,
    /// Recompute each decoder layer in the backward instead of keeping its activations:
    /// less memory, about one more forward of time (see [`super::accumulate_checkpointed`]).
    /// Default false.
    #[config(default = false)]
    pub gradient_checkpointing: bool,
}

impl TrainConfig {
    /// Checks every range; the error names the setting.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |field: &str, reason: &str| Err(Error::arg(field, reason));
        let s = &self.schedule;
        if s.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if !(s.lr.is_finite() && s.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if !(s.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&s.min_lr_ratio)) {
            return bad("min-lr-ratio", "must be in [0, 1]");
        }
        if self.data.batch_size == 0 {
            return bad("batch-size", "must be at least 1");
        }
        if self.data.grad_accum == 0 {
            return bad("grad-accum", "must be at least 1");
        }
        let lambda = self.penalty.lambda();
        if !(lambda.is_finite() && lambda >= 0.0) {
            return bad("lambda", "must be a non-negative number");
        }
        if self.penalty != Penalty::None && lambda == 0.0 {
            return bad("lambda", &format!("`{}` needs lambda > 0", self.penalty.method_name()));
        }
        let o = &self.optimizer;
        if o.clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip", "must be a positive number");
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad("weight-decay", "must be a non-negative number");
        }
        if self.eval.batch_size == 0 {
            return bad("eval-batch-size", "must be at least 1");
        }
        Ok(())
    }
}

/// What a run directory's `config.json` holds: the adapters' settings and the training config.
#[derive(Config, Debug, PartialEq)]
pub struct RunConfig {
    /// The LoRA adapters.
    pub lora: LoraConfig,
    /// The training run.
    pub train: TrainConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_the_floor() {
        let s = ScheduleConfig::new().with_lr(1.0).with_warmup_steps(4).with_steps(14).with_min_lr_ratio(0.1);
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(9) - 0.55).abs() < 1e-12, "half way: {}", s.lr_at(9));
        assert!((s.lr_at(14) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_decays_in_a_straight_line() {
        let s =
            ScheduleConfig::new().with_lr(2.0).with_warmup_steps(0).with_steps(10).with_kind(ScheduleKind::Linear).with_min_lr_ratio(0.0);
        assert_eq!(s.lr_at(0), 2.0);
        assert!((s.lr_at(5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn configs_round_trip_through_json() {
        let config = TrainConfig::new().with_penalty(Penalty::Laplace { lambda: 3.0 }).with_checkpoint_every(7);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert_eq!(serde_json::to_value(Penalty::L2 { lambda: 1.0 }).unwrap(), serde_json::json!({"kind": "l2", "lambda": 1.0}));
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let err = TrainConfig::new().with_penalty(Penalty::L2 { lambda: 0.0 }).validate().unwrap_err().to_string();
        assert!(err.contains("lambda"), "{err}");
        let err = TrainConfig::new().with_schedule(ScheduleConfig::new().with_lr(-1.0)).validate().unwrap_err().to_string();
        assert!(err.contains("lr"), "{err}");
    }
}
