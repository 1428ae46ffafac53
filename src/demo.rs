//! The bundled demo: the synthetic tasks, priors on the source skills, a small sweep of every
//! method on the arithmetic target, the table, the plot and a reading of it in words.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::curvature::{Estimator, FisherType};
use crate::error::{Error, Result};
use crate::io::read_json;
use crate::laplace::LaplaceConfig;
use crate::llama::Projection;
use crate::lora::{LoraConfig, LoraInit};
use crate::seeds::SeededSweep;
use crate::sweep::{sweep_files, ResultRow, SweepConfig, SweepFiles, SweepMethod, SweepPenalty};
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
    /// Training seeds: each runs the whole sweep with its own adapters, data order, dropout,
    /// Laplace batches and sampled labels; points are reported as mean +- s.e. over them.
    pub seeds: Vec<u64>,
    /// Seed of the invented world the tasks are drawn from. None: the model's pretraining seed
    /// (`pretrain.json`), the only world the bundled model knows; another value is refused.
    pub task_seed: Option<u64>,
    /// Batches of 16 sequences per source skill for the priors (the paper's two by default).
    pub laplace_batches: usize,
    /// Monte-Carlo label draws per token for the priors.
    pub laplace_samples: usize,
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
            seeds: vec![0],
            task_seed: None,
            laplace_batches: 2,
            laplace_samples: 1,
        }
    }
}

impl DemoConfig {
    /// The sweep the demo runs (for its first seed; [`sweep_files`] reseeds it for each):
    /// rank 8 on all seven projections, batch 16 x 128 tokens, cosine schedule with 20 warmup
    /// steps, priors on two batches of 16 per source skill (by default), plain LoRA evaluated at as many
    /// steps as there are lambdas.
    pub fn sweep(&self) -> SweepConfig {
        let seed = self.seeds.first().copied().unwrap_or(0);
        let lora =
            LoraConfig::new().with_rank(8).with_alpha(16.0).with_targets(Projection::ALL.to_vec()).with_init(self.init).with_seed(seed);
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
            .with_data(DataConfig::new().with_batch_size(16).with_grad_accum(1).with_max_len(max_len).with_seed(seed))
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
            .with_fisher(FisherType::Mc { samples: self.laplace_samples })
            .with_batches_per_source(self.laplace_batches)
            .with_batch_size(16)
            .with_max_len(max_len)
            .with_prior_precision(0.0)
            .with_seed(seed);
        SweepConfig { lora, methods, train, lora_eval_points: None, laplace, seed, progress: true }
    }

    /// The seed of the tasks' world: [`Self::task_seed`] checked against the model's
    /// pretraining seed, or that seed.
    ///
    /// # Errors
    /// [`Error::Mismatch`] when both are known and differ: the model was pretrained on another
    /// world, so its source scores would measure nothing.
    pub fn resolved_task_seed(&self) -> Result<u64> {
        let pretrained = pretraining_seed(&self.model)?;
        match (self.task_seed, pretrained) {
            (Some(asked), Some(known)) if asked != known => Err(Error::Mismatch {
                path: self.model.join("pretrain.json"),
                reason: format!(
                    "the model was pretrained on the world of task seed {known}; tasks from seed {asked} are another invented world \
                     it has never seen. Leave the task seed out (the training seed is --seed)"
                ),
            }),
            (Some(seed), _) | (None, Some(seed)) => Ok(seed),
            (None, None) => Ok(0),
        }
    }
}

/// The seed `model_dir/pretrain.json` records (`lalora pretrain` writes it): the world of
/// tasks the model was pretrained on. None when the file does not exist.
pub fn pretraining_seed(model_dir: &Path) -> Result<Option<u64>> {
    let path = model_dir.join("pretrain.json");
    if !path.exists() {
        return Ok(None);
    }
    let record: serde_json::Value = read_json(&path)?;
    match record.get("seed") {
        Some(seed) => seed.as_u64().map(Some).ok_or_else(|| Error::config(&path, "seed", "must be a non-negative integer")),
        None => Err(Error::config(&path, "seed", "is missing")),
    }
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The sweep of every seed (also written to the output directory).
    pub result: SeededSweep,
    /// The seed of the tasks' world.
    pub task_seed: u64,
    /// A paragraph that reads the plot from the numbers.
    pub reading: String,
    /// Wall time of the whole demo, task generation and loading included.
    pub seconds: f64,
}

/// Runs the demo: writes the tasks (of the model's world, [`DemoConfig::resolved_task_seed`]),
/// runs the sweep for every training seed (calling `on_row` for every point as it is scored)
/// and writes `results.csv`, `points.csv`, `results.json` and `pareto.svg`/`pareto.png`.
pub fn run_demo<B: KernelAutodiffBackend>(config: &DemoConfig, device: &B::Device, on_row: impl FnMut(&ResultRow)) -> Result<DemoOutcome> {
    let start = Instant::now();
    let task_seed = config.resolved_task_seed()?;
    let sizes = if config.quick { TaskSizes::tiny() } else { TaskSizes::default() };
    let tasks = write_tasks(&config.out.join("tasks"), task_seed, &sizes)?;
    let files = SweepFiles {
        model: config.model.clone(),
        train: tasks.target_train.clone(),
        laplace_data: tasks.sources.iter().map(|(_, train, _)| train.clone()).collect(),
        source_eval: tasks.sources.iter().map(|(_, _, eval)| eval.clone()).collect(),
        target_eval: vec![tasks.target_eval.clone()],
        fields: None,
    };
    let result = sweep_files::<B>(&files, &config.sweep(), &config.seeds, device, on_row)?;
    std::fs::create_dir_all(&config.out).map_err(|e| Error::io(&config.out, e))?;
    result.write(&config.out)?;
    Ok(DemoOutcome { reading: reading(&result), result, task_seed, seconds: start.elapsed().as_secs_f64() })
}

/// A paragraph that reads the plot from the numbers (means over the seeds; with several seeds
/// the frontier areas carry their standard error).
pub fn reading(result: &SeededSweep) -> String {
    let summary = result.summary();
    let pct = |e: &crate::seeds::Estimate| {
        if e.n < 2 {
            format!("{:.1}%", 100.0 * e.mean)
        } else {
            format!("{:.1} +- {:.1}%", 100.0 * e.mean, 100.0 * e.se)
        }
    };
    let base = result.point("base", None, 0);
    let seeds = result.seeds.len();
    let mut text = if seeds > 1 { format!("Means over {seeds} seeds (+- one standard error). ") } else { String::new() };
    text += &format!(
        "Before fine-tuning the model scores {:.1}% on the source skills and {:.1}% on the target.",
        100.0 * base.source.mean,
        100.0 * base.target.mean
    );
    if let Some(lora) = summary.iter().find(|s| s.method == "lora") {
        let last = result.method_points("lora").into_iter().last().expect("lora points");
        text += &format!(
            " Plain LoRA reaches {} on the target while source accuracy moves to {} (frontier area {}).",
            pct(&last.target),
            pct(&last.source),
            lora.hypervolume.display(3)
        );
    }
    let best = summary.iter().max_by(|a, b| a.hypervolume.mean.total_cmp(&b.hypervolume.mean));
    if let Some(best) = best {
        text += &format!(" The largest frontier area is {}'s ({}).", best.method, best.hypervolume.display(3));
    }
    for s in summary.iter().filter(|s| s.method.starts_with("lalora")) {
        let others: Vec<&str> = summary
            .iter()
            .filter(|o| !o.method.starts_with("lalora") && o.hypervolume.mean > s.hypervolume.mean)
            .map(|o| o.method.as_str())
            .collect();
        let mut points: Vec<_> = result.method_points(&s.method).into_iter().filter(|p| p.method != "base").collect();
        points.sort_by(|a, b| a.lambda.unwrap_or(0.0).total_cmp(&b.lambda.unwrap_or(0.0)));
        let monotone = points.windows(2).all(|w| w[1].source.mean >= w[0].source.mean - 1e-9);
        text += &format!(
            " {}: best trade-off {} source at {} target (lambda {}); {}; source accuracy {} as lambda grows.",
            s.method,
            pct(&s.best.source),
            pct(&s.best.target),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_seed_follows_the_model_and_a_mismatch_is_refused() {
        let dir = std::env::temp_dir().join(format!("lalora-demo-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = |task_seed| DemoConfig { model: dir.clone(), task_seed, seeds: vec![1, 2], ..DemoConfig::default() };
        // No pretrain.json: the asked seed, or 0.
        assert_eq!(config(None).resolved_task_seed().unwrap(), 0);
        assert_eq!(config(Some(4)).resolved_task_seed().unwrap(), 4);
        std::fs::write(dir.join("pretrain.json"), r#"{"seed": 7, "steps": 3}"#).unwrap();
        assert_eq!(config(None).resolved_task_seed().unwrap(), 7, "training seeds 1, 2 do not move the world");
        assert_eq!(config(Some(7)).resolved_task_seed().unwrap(), 7);
        let err = config(Some(1)).resolved_task_seed().unwrap_err().to_string();
        assert!(err.contains("pretrain.json") && err.contains("task seed 7") && err.contains("seed 1"), "{err}");
        std::fs::write(dir.join("pretrain.json"), r#"{"seed": "zero"}"#).unwrap();
        assert!(config(None).resolved_task_seed().unwrap_err().to_string().contains("seed"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_bundled_model_records_seed_zero() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        assert_eq!(pretraining_seed(&model).unwrap(), Some(0));
    }
}
