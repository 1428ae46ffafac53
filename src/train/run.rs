//! The fine-tuning loop: lr -> forward and NLL -> `+ lambda/2 * penalty` -> backward -> clip ->
//! AdamW, with periodic evaluation, JSONL logs and resumable checkpoints.
//!
//! A checkpoint (`RUN/checkpoint/`) holds the adapters (PEFT layout), the optimiser state, the
//! step and the data position; the dropout generator is reseeded from (seed, step) at every
//! step, so a resumed run reaches the same final adapters as one that never stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::cast::ToElement;
use serde::{Deserialize, Serialize};

use super::schedule::{LrSchedule, ScheduleKind};
use super::step::{clip_global_norm, lm_objective, trainable_params, AdamWSettings};
use crate::data::{Batch, DataPosition, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalScore, EvalSet};
use crate::io::{peft, read_json, write_json_atomic};
use crate::laplace::LaplacePrior;
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;

/// How the adapters are regularised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Plain LoRA, no penalty.
    Lora,
    /// Isotropic penalty `lambda/2 |theta - theta*|^2` around the starting adapters.
    L2,
    /// Laplace penalty `lambda/2 (theta - theta*)^T (F + delta I) (theta - theta*)`.
    Lalora,
}

impl Method {
    /// `lora`, `l2` or `lalora`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::L2 => "l2",
            Method::Lalora => "lalora",
        }
    }
}

/// Everything that shapes a run except the data and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Regulariser.
    pub method: Method,
    /// Penalty strength lambda (ignored for `lora`).
    pub lambda: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decay after warmup.
    pub schedule: ScheduleKind,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// AdamW hyper-parameters.
    pub adamw: AdamWSettings,
    /// Global gradient-norm clip (None: no clipping).
    pub clip: Option<f64>,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Seed of the data order and of dropout.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            method: Method::Lora,
            lambda: 0.0,
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: 2e-4,
            warmup_steps: 10,
            schedule: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
            adamw: AdamWSettings::default(),
            clip: Some(1.0),
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(Error::arg(field, reason));
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch-size", "batch size and gradient accumulation must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad("lambda", "must be a non-negative number");
        }
        if self.clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip", "must be a positive number");
        }
        Ok(())
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            kind: self.schedule,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// Evaluation sets and how to score them during training.
pub struct EvalPlan<'a> {
    /// Tokenizer (generation sets decode with it).
    pub tokenizer: &'a Tokenizer,
    /// The sets.
    pub sets: &'a [EvalSet],
    /// Scoring knobs.
    pub options: EvalOptions,
}

/// Scores of all eval sets at one step.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPoint {
    /// Optimiser steps done.
    pub step: usize,
    /// One score per eval set.
    pub scores: Vec<EvalScore>,
}

/// What a run returns.
pub struct TrainOutcome<B: AutodiffBackend> {
    /// The trained model.
    pub model: Llama<B>,
    /// Every evaluation, in step order.
    pub evals: Vec<EvalPoint>,
    /// Token-mean NLL of the last step.
    pub last_loss: f64,
    /// Wall time of the training steps (evaluation excluded).
    pub train_seconds: f64,
    /// Training tokens processed (non-padding).
    pub tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    data: DataPosition,
    options: TrainOptions,
}

/// A run directory: `log.jsonl`, `checkpoint/`, and the final `adapter/`.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Uses (and creates) `path`.
    pub fn new(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Ok(RunDir { path: path.to_path_buf() })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn log(&self, value: serde_json::Value) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))
    }

    /// Writes a checkpoint into `checkpoint.tmp/`, then swaps it in, so the previous
    /// checkpoint survives an interruption.
    fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &self,
        model: &Llama<B>,
        lora: &LoraConfig,
        optim: &O,
        state: &CheckpointState,
    ) -> Result<()> {
        let tmp = self.path.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        peft::save_adapter(model, lora, &tmp.join("adapter"))?;
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(optim.to_record(), tmp.join("optimizer"))
            .map_err(|e| Error::io(tmp.join("optimizer.bin"), std::io::Error::other(e.to_string())))?;
        write_json_atomic(&tmp.join("state.json"), state)?;
        let current = self.path.join("checkpoint");
        let old = self.path.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if current.exists() {
            std::fs::rename(&current, &old).map_err(|e| Error::io(&current, e))?;
        }
        std::fs::rename(&tmp, &current).map_err(|e| Error::io(&current, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The newest complete checkpoint directory, if any.
    fn checkpoint_dir(&self) -> Option<PathBuf> {
        ["checkpoint", "checkpoint.old"].iter().map(|n| self.path.join(n)).find(|p| p.join("state.json").exists())
    }
}

/// Trains the model's adapters on `data`.
///
/// With `resume`, the newest checkpoint in `run` is loaded (adapters, optimiser, step, data
/// position) and training continues to `options.steps`. `stop_after` ends this call early after
/// that many steps in total, with a checkpoint (to split a long run into sessions). A
/// non-finite loss or penalty stops the run with an error naming the step; the last good
/// checkpoint is kept.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    model: Llama<B>,
    lora: &LoraConfig,
    prior: Option<&LaplacePrior<B>>,
    data: &[Sequence],
    eval: &EvalPlan<'_>,
    options: &TrainOptions,
    run: Option<&RunDir>,
    resume: bool,
    stop_after: Option<usize>,
    show_progress: bool,
) -> Result<TrainOutcome<B>> {
    options.validate()?;
    if data.is_empty() {
        return Err(Error::EmptyData { path: "<training data>".into(), reason: "no training sequences".into() });
    }
    if options.method != Method::Lora && prior.is_none() {
        return Err(Error::arg("method", format!("`{}` needs a prior", options.method.name())));
    }
    let device = model.embed_tokens.device();
    let mut model = model;
    let mut optim = options.adamw.config().init::<B, Llama<B>>();
    let mut step = 0;
    let mut position = DataPosition::default();

    if resume {
        let run = run.ok_or_else(|| Error::arg("resume", "needs a run directory"))?;
        let dir = run.checkpoint_dir().ok_or_else(|| {
            Error::io(run.path().join("checkpoint"), std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume from"))
        })?;
        let state: CheckpointState = read_json(&dir.join("state.json"))?;
        if state.options != *options {
            return Err(Error::Mismatch {
                path: dir.join("state.json"),
                reason: "the checkpoint was made with other training options; resume with the same flags".into(),
            });
        }
        model = peft::load_adapter(model, &dir.join("adapter"))?.0;
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("optimizer"), &device)
            .map_err(|e| Error::io(dir.join("optimizer.bin"), std::io::Error::other(e.to_string())))?;
        optim = optim.load_record(record);
        step = state.step;
        position = state.data;
    }

    let penalty_scale = options.lambda / 2.0;
    let penalty = |m: &Llama<B>| prior.expect("checked above").penalty(m, penalty_scale);
    let use_penalty = options.method != Method::Lora && options.lambda > 0.0;
    let params = trainable_params(&model);
    let schedule = options.schedule();
    let mut shuffler = Shuffler::new(data.len(), options.seed, position);
    let progress = Progress::new(show_progress, options.steps as u64, options.method.name());
    progress.start_at(step as u64);

    let mut evals = Vec::new();
    let mut last_loss = f64::NAN;
    let mut tokens = 0usize;
    let mut train_seconds = 0.0;
    let last_step = stop_after.map_or(options.steps, |s| s.min(options.steps));
    while step < last_step {
        let start = Instant::now();
        // Dropout draws depend only on (seed, step): resuming replays them exactly.
        B::seed(&device, options.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let lr = schedule.lr_at(step);
        let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
        let (mut loss, mut penalty_value) = (0.0, 0.0);
        for micro in 0..options.grad_accum {
            let indices = shuffler.next_batch(options.batch_size);
            let refs: Vec<&Sequence> = indices.iter().map(|&i| &data[i]).collect();
            let batch = Batch::new(&refs, &device);
            tokens += batch.num_targets;
            let objective = lm_objective(&model, &batch, true, false);
            let mut total = objective.surrogate.div_scalar(options.grad_accum as f64);
            loss += objective.nll / options.grad_accum as f64;
            if micro == 0 && use_penalty {
                let term = penalty(&model);
                penalty_value = term.value.into_scalar().to_f64();
                total = total + term.surrogate;
            }
            let grads = GradientsParams::from_grads(total.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        if !loss.is_finite() || !penalty_value.is_finite() {
            let cause = if !loss.is_finite() { format!("loss is {loss}") } else { format!("penalty is {penalty_value}") };
            return Err(Error::Numerical(format!(
                "step {}: {cause}; stopped (the last checkpoint, if any, is kept). Lower --lr or --lambda.",
                step + 1
            )));
        }
        let mut grads = accumulator.grads();
        let grad_norm = clip_global_norm::<B>(&mut grads, &params, options.clip);
        model = optim.step(lr, model, grads);
        step += 1;
        last_loss = loss;
        let elapsed = start.elapsed().as_secs_f64();
        train_seconds += elapsed;
        progress.inc(1);
        progress.message(format!("nll {loss:.3}, penalty {penalty_value:.4}, lr {lr:.1e}"));
        if let Some(run) = run {
            run.log(serde_json::json!({
                "step": step, "nll": loss, "penalty": penalty_value, "lr": lr, "grad_norm": grad_norm, "ms": elapsed * 1e3,
            }))?;
        }

        let at_end = step == options.steps;
        if (options.eval_every > 0 && step % options.eval_every == 0) || at_end {
            let point = evaluate_all(&model, eval, step)?;
            let line = point.scores.iter().map(|s| format!("{} {:.3}", s.name, s.headline())).collect::<Vec<_>>().join(", ");
            if !line.is_empty() {
                progress.println(format!("step {step}: nll {loss:.3}, penalty {penalty_value:.4}, lr {lr:.1e} | {line}"));
            }
            if let Some(run) = run {
                run.log(serde_json::json!({ "step": step, "eval": point.scores }))?;
            }
            evals.push(point);
        }
        if let Some(run) = run {
            let periodic = options.checkpoint_every > 0 && step % options.checkpoint_every == 0;
            if periodic || at_end || step == last_step {
                let state = CheckpointState { step, data: shuffler.position(), options: options.clone() };
                run.save_checkpoint(&model, lora, &optim, &state)?;
            }
        }
    }
    progress.finish();
    Ok(TrainOutcome { model, evals, last_loss, train_seconds, tokens })
}

/// Scores every eval set on the model without autodiff.
fn evaluate_all<B: AutodiffBackend>(model: &Llama<B>, eval: &EvalPlan<'_>, step: usize) -> Result<EvalPoint> {
    let inner = model.valid();
    let scores = eval
        .sets
        .iter()
        .map(|set| evaluate::<B::InnerBackend>(&inner, eval.tokenizer, set, &eval.options, &Progress::hidden()))
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalPoint { step, scores })
}
