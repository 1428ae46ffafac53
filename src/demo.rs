//! The bundled demo: the synthetic tasks, priors on the source skills, a small sweep of every
//! method on the arithmetic target, the table, the plot and a reading of it in words.

use std::path::PathBuf;
use std::time::Instant;

use crate::curvature::{Estimator, FisherType};
use crate::error::{Error, Result};
use crate::laplace::LaplaceConfig;
use crate::llama::Projection;
use crate::lora::{LoraConfig, LoraInit};
use crate::sweep::{sweep_files, ResultRow, SweepConfig, SweepFiles, SweepMethod, SweepPenalty, SweepResult};
use crate::tasks::{write_tasks, TaskSizes};
use crate::train::{DataConfig, EvalConfig, OptimizerConfig, ScheduleConfig, ScheduleKind, TrainConfig};
use crate::KernelAutodiffBackend;

/// The demo's settings; [`DemoConfig::default`] is the bundled demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The bundled model (rebuilt by `lalora pretrain`).
    pub model: PathBuf,
    /// Output directory (tasks, results, plot).
    pub out: PathBuf,
    /// Four steps on a few records: checks the pipeline in seconds; the numbers mean nothing.
    pub quick: bool,
    /// Optimiser steps of every run.
    pub steps: usize,
    /// Peak learning rate (a model this small wants a large one).
    pub lr: f64,
    /// Adapter init (offset: A and B random, function unchanged; peft: B = 0).
    pub init: LoraInit,
    /// Methods to compare.
    pub methods: Vec<SweepPenalty>,
    /// Lambdas of the Laplace methods.
    pub lambdas: Vec<f64>,
    /// Lambdas of the l2 baseline.
    pub l2_lambdas: Vec<f64>,
    /// Seed of tasks, adapters, data order and label sampling.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            model: "models/tiny".into(),
            out: "runs/demo".into(),
            quick: false,
            steps: 300,
            lr: 5e-3,
            init: LoraInit::Offset,
            methods: vec![
                SweepPenalty::Lora,
                SweepPenalty::L2,
                SweepPenalty::Laplace(Estimator::Diag),
                SweepPenalty::Laplace(Estimator::Kfac),
            ],
            lambdas: vec![1.0, 10.0],
            l2_lambdas: vec![0.1, 1.0],
            seed: 0,
        }
    }
}

impl DemoConfig {
    /// The sweep the demo runs: rank 8 on all seven projections, batch 16 x 128 tokens,
    /// cosine schedule with 20 warmup steps, priors on two batches of 16 per source skill.
    pub fn sweep(&self) -> SweepConfig {
        let lora = LoraConfig::new()
            .with_rank(8)
            .with_alpha(16.0)
            .with_targets(Projection::ALL.to_vec())
            .with_init(self.init)
            .with_seed(self.seed);
        let max_len = 128;
        let train = TrainConfig::new()
            .with_optimizer(OptimizerConfig::new().with_weight_decay(0.01).with_clip(Some(1.0)))
            .with_schedule(
                ScheduleConfig::new()
                    .with_steps(if self.quick { 4 } else { self.steps })
                    .with_lr(self.lr)
                    .with_warmup_steps(20)
                    .with_kind(ScheduleKind::Cosine)
                    .with_min_lr_ratio(0.1),
            )
            .with_data(DataConfig::new().with_batch_size(16).with_grad_accum(1).with_max_len(max_len).with_seed(self.seed))
            .with_eval(EvalConfig::new().with_batch_size(32).with_max_len(max_len).with_max_new_tokens(48));
        let methods = self
            .methods
            .iter()
            .map(|&penalty| SweepMethod {
                penalty,
                lambdas: match penalty {
                    SweepPenalty::Lora => vec![],
                    SweepPenalty::L2 => self.l2_lambdas.clone(),
                    SweepPenalty::Laplace(_) => self.lambdas.clone(),
                },
            })
            .collect();
        let laplace = LaplaceConfig::new()
            .with_fisher(FisherType::Mc { samples: 1 })
            .with_batches_per_source(2)
            .with_batch_size(16)
            .with_max_len(max_len)
            .with_prior_precision(0.0)
            .with_seed(self.seed);
        SweepConfig { lora, methods, train, lora_eval_points: 3, laplace, seed: self.seed, progress: true }
    }
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The sweep's rows, stage times and summary (also written to the output directory).
    pub result: SweepResult,
    /// A paragraph that reads the plot from the numbers.
    pub reading: String,
    /// Wall time of the whole demo, task generation and loading included.
    pub seconds: f64,
}

/// Runs the demo: writes the tasks, runs the sweep (calling `on_row` for every point as it is
/// scored) and writes `results.csv`, `results.json` and `pareto.svg`/`pareto.png`.
pub fn run_demo<B: KernelAutodiffBackend>(config: &DemoConfig, device: &B::Device, on_row: impl FnMut(&ResultRow)) -> Result<DemoOutcome> {
    let start = Instant::now();
    let sizes = if config.quick { TaskSizes::tiny() } else { TaskSizes::default() };
    let tasks = write_tasks(&config.out.join("tasks"), config.seed, &sizes)?;
    let files = SweepFiles {
        model: config.model.clone(),
        train: tasks.target_train.clone(),
        laplace_data: tasks.sources.iter().map(|(_, train, _)| train.clone()).collect(),
        source_eval: tasks.sources.iter().map(|(_, _, eval)| eval.clone()).collect(),
        target_eval: vec![tasks.target_eval.clone()],
        fields: None,
    };
    let result = sweep_files::<B>(&files, &config.sweep(), device, on_row)?;
    std::fs::create_dir_all(&config.out).map_err(|e| Error::io(&config.out, e))?;
    result.write(&config.out)?;
    Ok(DemoOutcome { reading: reading(&result), result, seconds: start.elapsed().as_secs_f64() })
}

/// A paragraph that reads the plot from the numbers.
pub fn reading(result: &SweepResult) -> String {
    let summary = result.summary();
    let base = &result.rows[0];
    let mut text = format!(
        "Before fine-tuning the model scores {:.1}% on the source skills and {:.1}% on the target.",
        100.0 * base.source_score,
        100.0 * base.target_score
    );
    if let Some(lora) = summary.iter().find(|s| s.method == "lora") {
        let last = result.rows.iter().rev().find(|r| r.method == "lora" && r.diverged.is_none()).expect("lora rows");
        text += &format!(
            " Plain LoRA reaches {:.1}% on the target while source accuracy moves to {:.1}% (frontier area {:.3}).",
            100.0 * last.target_score,
            100.0 * last.source_score,
            lora.hypervolume
        );
    }
    let best = summary.iter().max_by(|a, b| a.hypervolume.total_cmp(&b.hypervolume));
    if let Some(best) = best {
        text += &format!(" The largest frontier area is {}'s ({:.3}).", best.method, best.hypervolume);
    }
    for s in summary.iter().filter(|s| s.method.starts_with("lalora")) {
        let others: Vec<&str> = summary
            .iter()
            .filter(|o| !o.method.starts_with("lalora") && o.hypervolume > s.hypervolume)
            .map(|o| o.method.as_str())
            .collect();
        let mut rows: Vec<_> = result.rows.iter().filter(|r| r.method == s.method && r.diverged.is_none()).collect();
        rows.sort_by(|a, b| a.lambda.unwrap_or(0.0).total_cmp(&b.lambda.unwrap_or(0.0)));
        let monotone = rows.windows(2).all(|w| w[1].source_score >= w[0].source_score - 1e-9);
        text += &format!(
            " {}: best trade-off {:.1}% source at {:.1}% target (lambda {}); {}; source accuracy {} as lambda grows.",
            s.method,
            100.0 * s.best.source_score,
            100.0 * s.best.target_score,
            s.best.lambda.map(|l| l.to_string()).unwrap_or_default(),
            if others.is_empty() {
                "its frontier is not below any baseline's".to_string()
            } else {
                format!("its frontier is below {}'s", others.join(" and "))
            },
            if monotone { "never falls" } else { "is not monotone" },
        );
    }
    text
}
