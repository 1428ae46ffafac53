//! The fine-tuning loop: lr -> forward and NLL -> `+ lambda/2 * penalty` -> backward -> clip ->
//! AdamW, with periodic evaluation, JSONL logs and resumable checkpoints.
//!
//! A run directory holds `config.json` (the [`RunConfig`], written before step 0 and checked
//! by a resume), `log.jsonl`, and `checkpoint/`: the adapters (PEFT layout), the optimiser
//! state, the step and the data position. The dropout generator is reseeded from (seed, step)
//! at every step, so a resumed run reaches the same final adapters as one that never stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use serde::{Deserialize, Serialize};

use super::config::{Penalty, RunConfig, TrainConfig};
use super::decay::DecayToward;
use super::step::{trainable_params, Step};
use crate::data::{Batch, DataPosition, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalScore, EvalSet};
use crate::io::{peft, read_json, write_json_atomic};
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
    /// Run directory for `config.json`, logs and checkpoints (None: nothing is written).
    pub run_dir: Option<PathBuf>,
    /// Continue from the run directory's newest checkpoint.
    pub resume: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    data: DataPosition,
}

/// A run directory: `config.json`, `log.jsonl`, `checkpoint/`.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn new(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Ok(RunDir { path: path.to_path_buf() })
    }

    fn log(&self, value: serde_json::Value) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))
    }

    /// Writes `config.json` for a fresh run; for a resumed one, checks that the saved config
    /// equals `config` and names the first setting that differs.
    fn config(&self, config: &RunConfig, resume: bool) -> Result<()> {
        let path = self.path.join("config.json");
        if !resume {
            return write_json_atomic(&path, config);
        }
        // Both sides go through the same serialisation, so f32 settings compare exactly.
        let as_json = |c: &RunConfig| serde_json::to_value(c).map_err(|source| Error::Json { path: path.clone(), source });
        let (saved, wanted) = (as_json(&read_json::<RunConfig>(&path)?)?, as_json(config)?);
        let differences = differences(&saved, &wanted, "");
        if differences.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = differences.iter().map(|(field, was, now)| format!("{field} was {was}, is now {now}")).collect();
        Err(Error::Mismatch {
            path,
            reason: format!("the run was made with other settings ({}); resume with the same settings", listed.join("; ")),
        })
    }

    /// Writes a checkpoint into `checkpoint.tmp/`, then swaps it in, so the previous
    /// checkpoint survives an interruption.
    fn save_checkpoint<B: KernelAutodiffBackend, O: Optimizer<Llama<B>, B>>(
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

    /// Loads the newest checkpoint into `model` and `optim`; returns its state.
    fn resume<B: KernelAutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &self,
        model: Llama<B>,
        optim: O,
    ) -> Result<(Llama<B>, O, CheckpointState)> {
        let dir = self.checkpoint_dir().ok_or_else(|| {
            Error::io(self.path.join("checkpoint"), std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume from"))
        })?;
        let state: CheckpointState = read_json(&dir.join("state.json"))?;
        let model = peft::load_adapter(model, &dir.join("adapter"))?.0;
        let device = model.embed_tokens.device();
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("optimizer"), &device)
            .map_err(|e| Error::io(dir.join("optimizer.bin"), std::io::Error::other(e.to_string())))?;
        Ok((model, optim.load_record(record), state))
    }
}

/// Every place where two JSON values differ, as (dotted path, saved, wanted).
fn differences(saved: &serde_json::Value, wanted: &serde_json::Value, at: &str) -> Vec<(String, String, String)> {
    use serde_json::Value;
    match (saved, wanted) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    differences(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), &path)
                })
                .collect()
        }
        _ if saved == wanted => Vec::new(),
        _ => vec![(at.to_string(), saved.to_string(), wanted.to_string())],
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
    let prior = match config.penalty {
        Penalty::None => None,
        Penalty::L2 { lambda } => Some((&start, lambda / 2.0)),
        Penalty::Laplace { lambda } => {
            let prior = prior.ok_or_else(|| Error::arg("laplace", "the laplace penalty needs a fitted or loaded prior"))?;
            Some((prior, lambda / 2.0))
        }
    };
    let run = control.run_dir.as_deref().map(RunDir::new).transpose()?;
    if control.resume && run.is_none() {
        return Err(Error::arg("resume", "needs a run directory"));
    }
    let device = model.embed_tokens.device();
    let mut model = model;
    // AdamW without its own decay: the step decays toward the starting adapters instead.
    let mut optim = config.optimizer.adamw().with_weight_decay(0.0).init::<B, Llama<B>>();
    let decay = DecayToward { anchors: &start.anchors, rate: config.optimizer.weight_decay as f64 };
    let mut step = 0;
    let mut position = DataPosition::default();
    if let Some(run) = &run {
        run.config(&RunConfig::new(lora.clone(), config.clone()), control.resume)?;
        if control.resume {
            let state;
            (model, optim, state) = run.resume(model, optim)?;
            step = state.step;
            position = state.data;
        }
    }

    let params = trainable_params(&model);
    let schedule = &config.schedule;
    let mut shuffler = Shuffler::new(data.sequences.len(), config.data.seed, position);
    let progress = Progress::new(control.progress, schedule.steps as u64, config.penalty.method_name());
    progress.start_at(step as u64);
    let eval_options =
        EvalOptions { batch_size: config.eval.batch_size, max_len: config.eval.max_len, max_new_tokens: config.eval.max_new_tokens };

    let mut report = TrainReport { evals: Vec::new(), last_loss: f64::NAN, train_seconds: 0.0, tokens: 0, steps_done: step };
    let last_step = control.stop_after.map_or(schedule.steps, |s| s.min(schedule.steps));
    while step < last_step {
        let start = Instant::now();
        // Dropout draws depend only on (seed, step): resuming replays them exactly.
        B::seed(&device, config.data.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let lr = schedule.lr_at(step);
        let micro_batches = (0..config.data.grad_accum)
            .map(|_| {
                let picked: Vec<&Sequence> = shuffler.next_batch(config.data.batch_size).into_iter().map(|i| &data.sequences[i]).collect();
                Batch::new(&picked, &device)
            })
            .collect();
        let one = Step { lr, clip: config.optimizer.clip, head_grad: false, penalty: prior, params: &params, decay: Some(decay) };
        let out;
        (model, out) = one.run(model, &mut optim, micro_batches).map_err(|e| {
            Error::Numerical(format!("step {}: {e}; stopped (the last checkpoint, if any, is kept). Lower --lr or --lambda.", step + 1))
        })?;
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
                let state = CheckpointState { step, data: shuffler.position() };
                run.save_checkpoint(&model, lora, &optim, &state)?;
            }
        }
    }
    progress.finish();
    Ok((model, report))
}

/// Scores every eval set on the model without autodiff.
fn evaluate_all<B: KernelAutodiffBackend>(model: &Llama<B>, data: &TrainData<'_>, options: &EvalOptions, step: usize) -> Result<EvalPoint> {
    let inner = model.valid();
    let scores =
        data.eval_sets.iter().map(|set| evaluate(&inner, data.tokenizer, set, options, &Progress::hidden())).collect::<Result<Vec<_>>>()?;
    Ok(EvalPoint { step, scores })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named_by_their_paths() {
        let a = serde_json::json!({"lora": {"rank": 8, "alpha": 16.0}, "train": {"lr": 1e-3}});
        let b = serde_json::json!({"lora": {"rank": 4, "alpha": 16.0}, "train": {"lr": 2e-3}});
        let found = differences(&a, &b, "");
        assert_eq!(found[0], ("lora.rank".to_string(), "8".to_string(), "4".to_string()));
        assert_eq!(found[1].0, "train.lr");
        assert!(differences(&a, &a, "").is_empty());
    }
}
