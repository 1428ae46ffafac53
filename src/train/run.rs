//! The fine-tuning loop: lr -> forward and NLL -> `+ lambda/2 * penalty` -> backward -> clip ->
//! AdamW, with periodic evaluation, JSONL logs and resumable checkpoints.
//!
//! A run directory (see [`super::run_dir`]) holds `config.json` (settings and inputs, checked
//! by a resume), `log.jsonl` and `checkpoint/`. The dropout generator is reseeded from (seed,
//! step) at every step, so a resumed run reaches the same final adapters as one that never
//! stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::cast::ToElement as _;
use serde::Serialize;

use super::config::{Penalty, TrainConfig};
use super::decay::DecayToward;
use super::fingerprint::RunInputs;
use super::run_dir::{CheckpointState, RunDir, RunRecord};
use super::step::{lm_objective, trainable_params, Step};
use crate::data::{Batch, DataPosition, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalScore, EvalSet};
use crate::laplace::LaplacePrior;
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelAutodiffBackend;

/// The data of a run: training sequences, and the sets scored during and after training.
pub struct TrainData<'a> {
    /// Training sequences (tokenised; see [`crate::data::lm_sequences_with_eos`]).
    pub sequences: &'a [Sequence],
    /// Evaluation sets (may be empty).
    pub eval_sets: &'a [EvalSet],
    /// The tokenizer (generation sets decode with it).
    pub tokenizer: &'a Tokenizer,
}

/// How a run is driven, apart from what it computes.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Run directory for `config.json`, logs and checkpoints (None: nothing is written). It
    /// is locked while the run writes it.
    pub run_dir: Option<PathBuf>,
    /// Continue from the run directory's newest checkpoint (from step 0 if it has none yet);
    /// the settings and inputs must match its `config.json`.
    pub resume: bool,
    /// Start a fresh run in a directory that already holds one, removing that run's files.
    pub force: bool,
    /// Settings a resume may change, as `config.json` paths (`train.schedule.lr`,
    /// `train.penalty.lambda`): to continue a stopped run from its last good checkpoint with a
    /// lower learning rate, say. The new values replace the recorded ones.
    pub allow_changes: Vec<String>,
    /// Content hashes of files the run reads, recorded with its inputs and checked on resume
    /// (the command line hashes `--data`, `--laplace` and `--adapter`).
    pub input_files: BTreeMap<String, String>,
    /// JSON files written into a fresh run's directory once its checks have passed (the
    /// command line's `run.json`); a resume leaves them as they are.
    pub run_files: Vec<(String, serde_json::Value)>,
    /// End this call after this many steps in total, with a checkpoint (to split a long run).
    pub stop_after: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Scores of all eval sets at one step.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPoint {
    /// Optimiser steps done.
    pub step: usize,
    /// One score per eval set.
    pub scores: Vec<EvalScore>,
}

/// What a run returns besides the trained model.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Every evaluation, in step order.
    pub evals: Vec<EvalPoint>,
    /// Token-mean NLL of the last step.
    pub last_loss: f64,
    /// Wall time of the training steps (evaluation excluded).
    pub train_seconds: f64,
    /// Training tokens processed in this call (loss-carrying).
    pub tokens: usize,
    /// Optimiser steps done in total (less than the configured steps after `stop_after`).
    pub steps_done: usize,
}

impl TrainReport {
    /// Whether the run reached its configured number of steps.
    pub fn finished(&self, config: &TrainConfig) -> bool {
        self.steps_done == config.schedule.steps
    }
}

/// Trains the adapters of `model` on `data` (see [`crate::LaLoRA::train`]). `prior` is the
/// model's Laplace prior, required by [`Penalty::Laplace`]; the `l2` penalty and AdamW's weight
/// decay are taken around the starting adapters (see [`super::decay`]).
///
/// A non-finite loss or penalty stops the run with an error naming the step; the last good
/// checkpoint is kept.
pub(crate) fn train<B: KernelAutodiffBackend>(
    model: Llama<B>,
    lora: &LoraConfig,
    prior: Option<&LaplacePrior<B>>,
    data: &TrainData<'_>,
    config: &TrainConfig,
    control: &TrainControl,
) -> Result<(Llama<B>, TrainReport)> {
    config.validate()?;
    if data.sequences.is_empty() {
        return Err(Error::EmptyData { path: "<training data>".into(), reason: "no training sequences".into() });
    }
    // The starting adapters: the centre of the l2 penalty and of the weight decay.
    let start = LaplacePrior::isotropic(&model, 1.0);
    let prior = config.penalty.term(&start, prior)?;
    check_sequences(&model, data.sequences)?;
    if control.resume && control.run_dir.is_none() {
        return Err(Error::arg("resume", "needs a run directory"));
    }
    let run = control.run_dir.as_deref().map(|dir| RunDir::open(dir, control.resume, control.force)).transpose()?;
    let device = model.embed_tokens.device();
    let mut model = model;
    // AdamW without its own decay: the step decays toward the starting adapters instead.
    let mut optim = config.optimizer.adamw().with_weight_decay(0.0).init::<B, Llama<B>>();
    let decay = DecayToward { anchors: &start.anchors, rate: config.optimizer.weight_decay as f64 };
    let mut step = 0;
    let mut position = DataPosition::default();
    let mut last_loss = f64::NAN;
    if let Some(run) = &run {
        let laplace = if let Penalty::Laplace { .. } = config.penalty { prior.map(|(p, _)| p) } else { None };
        let inputs = RunInputs::of(&model, data.sequences, laplace, &control.input_files);
        let record = RunRecord { lora: lora.clone(), train: config.clone(), inputs };
        // Checkpointing computes the same gradients: a resume may turn it on or off (and a run
        // recorded before the setting existed resumes).
        let mut allowed = control.allow_changes.clone();
        allowed.push("train.gradient_checkpointing".into());
        run.begin(&record, control.resume, &allowed, &control.run_files)?;
        if control.resume {
            let state;
            (model, optim, state) = run.resume(model, optim)?;
            if let Some(state) = state {
                (step, position) = (state.step, state.data);
                last_loss = state.loss.unwrap_or(f64::NAN);
            }
            run.rewind_log(step)?;
        }
    }

    let params = trainable_params(&model);
    let schedule = &config.schedule;
    let mut shuffler = Shuffler::new(data.sequences.len(), config.data.seed, position);
    let progress = Progress::new(control.progress, schedule.steps as u64, config.penalty.method_name());
    progress.start_at(step as u64);
    let eval_options =
        EvalOptions { batch_size: config.eval.batch_size, max_len: config.eval.max_len, max_new_tokens: config.eval.max_new_tokens };

    let mut report = TrainReport { evals: Vec::new(), last_loss, train_seconds: 0.0, tokens: 0, steps_done: step };
    let last_step = control.stop_after.map_or(schedule.steps, |s| s.min(schedule.steps));
    while step < last_step {
        let start = Instant::now();
        // Dropout draws depend only on (seed, step): resuming replays them exactly.
        B::seed(&device, config.data.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let lr = schedule.lr_at(step);
        let micro_batches: Vec<Batch<B>> = (0..config.data.grad_accum)
            .map(|_| {
                let picked: Vec<&Sequence> = shuffler.next_batch(config.data.batch_size).into_iter().map(|i| &data.sequences[i]).collect();
                Batch::new(&picked, &device)
            })
            .collect();
        let first_batch = micro_batches[0].clone();
        let one = Step {
            lr,
            clip: config.optimizer.clip,
            head_grad: false,
            penalty: prior,
            params: &params,
            decay: Some(decay),
            checkpointing: config.gradient_checkpointing,
        };
        let out;
        (model, out) = one.run(model, &mut optim, micro_batches).map_err(|e| stopped(step + 1, &e.to_string(), run.is_some()))?;
        step += 1;
        report.tokens += out.tokens;
        report.last_loss = out.loss;
        report.steps_done = step;
        let elapsed = start.elapsed().as_secs_f64();
        report.train_seconds += elapsed;
        progress.inc(1);
        progress.message(format!("nll {:.3}, penalty {:.4}, lr {lr:.1e}", out.loss, out.penalty));
        if let Some(run) = &run {
            run.log(serde_json::json!({
                "step": step, "nll": out.loss, "penalty": out.penalty, "lr": lr, "grad_norm": out.grad_norm, "ms": elapsed * 1e3,
            }))?;
        }

        let at_end = step == schedule.steps;
        if (config.eval.every > 0 && step % config.eval.every == 0) || at_end {
            let point = evaluate_all(&model, data, &eval_options, step)?;
            let line = point.scores.iter().map(|s| format!("{} {:.3}", s.name, s.headline())).collect::<Vec<_>>().join(", ");
            if !line.is_empty() {
                progress.println(format!("step {step}: nll {:.3}, penalty {:.4}, lr {lr:.1e} | {line}", out.loss, out.penalty));
            }
            if let Some(run) = &run {
                run.log(serde_json::json!({ "step": step, "eval": point.scores }))?;
            }
            report.evals.push(point);
        }
        if let Some(run) = &run {
            let periodic = config.checkpoint_every > 0 && step % config.checkpoint_every == 0;
            if periodic || at_end || step == last_step {
                check_checkpointable(&model, &first_batch).map_err(|reason| stopped(step, &reason, true))?;
                let state = CheckpointState { step, data: shuffler.position(), loss: Some(out.loss) };
                run.save_checkpoint(&model, lora, &optim, &state)?;
            }
        }
    }
    progress.finish();
    Ok((model, report))
}

/// The error that stops a run at `step`, with advice a user can follow.
fn stopped(step: usize, reason: &str, with_run_dir: bool) -> Error {
    let advice = if with_run_dir {
        "The last good checkpoint is kept. Lower --lr (or --lambda): start over with --force, or continue from the \
         checkpoint with the new value and --resume --allow-change lr (or lambda)"
    } else {
        "Lower the learning rate (or lambda) and start again"
    };
    Error::Numerical(format!("step {step}: {reason}; stopped. {advice}."))
}

/// Whether the model may be checkpointed: every adapter value is finite and the model gives a
/// finite loss on `batch` (weights can be finite yet so large that the forward overflows).
/// The optimiser's moments need no check of their own: they average gradients and their
/// squares, and a step whose squared gradients overflow has a non-finite gradient norm and is
/// refused before the optimiser sees it ([`Step::run`]).
fn check_checkpointable<B: KernelAutodiffBackend>(model: &Llama<B>, batch: &Batch<B>) -> std::result::Result<(), String> {
    for adapter in model.adapters() {
        for (name, tensor) in [("lora_A", adapter.lora_a.val()), ("lora_B", adapter.lora_b.val())] {
            let largest = tensor.abs().max().into_scalar().to_f64();
            if !largest.is_finite() {
                return Err(format!("the updated adapter `{}.{name}` holds non-finite values", adapter.path()));
            }
        }
    }
    let nll = lm_objective(model, batch, false, false).nll;
    if !nll.is_finite() {
        return Err(format!("the updated weights give a loss of {nll} on the step's batch"));
    }
    Ok(())
}

/// Every token id has an embedding and no sequence is longer than the model's context.
fn check_sequences<B: KernelAutodiffBackend>(model: &Llama<B>, sequences: &[Sequence]) -> Result<()> {
    let (vocab, context) = (model.config.vocab_size, model.config.max_position_embeddings);
    for (i, s) in sequences.iter().enumerate() {
        if let Some(&id) = s.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::BadRecord {
                path: "<training data>".into(),
                line: i + 1,
                reason: format!("token id {id} is not below the model's vocab_size {vocab}"),
            });
        }
        if s.ids.len() > context {
            return Err(Error::BadRecord {
                path: "<training data>".into(),
                line: i + 1,
                reason: format!("{} tokens, more than the model's context (max_position_embeddings {context}): lower max_len", s.ids.len()),
            });
        }
    }
    Ok(())
}

/// Scores every eval set on the model without autodiff.
fn evaluate_all<B: KernelAutodiffBackend>(model: &Llama<B>, data: &TrainData<'_>, options: &EvalOptions, step: usize) -> Result<EvalPoint> {
    let inner = model.valid();
    let scores =
        data.eval_sets.iter().map(|set| evaluate(&inner, data.tokenizer, set, options, &Progress::hidden())).collect::<Result<Vec<_>>>()?;
    Ok(EvalPoint { step, scores })
}
