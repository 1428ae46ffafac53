//! Data-parallel fine-tuning: every peer computes the gradient of its share of each batch,
//! one all-reduce sums the shares, and every peer takes the same optimiser step.
//!
//! # Why the sum equals one device's gradient
//! One device's step minimises `(1/N) sum_m sum_{t in m} nll_t` over its micro-batches (N
//! loss-carrying tokens in the whole step) plus the penalty. Every peer builds the same
//! micro-batches (same shuffler, same seed) and takes a contiguous share of each one's
//! sequences; its objective is `(1/N) sum_m sum_{t in its share of m} nll_t`, the penalty
//! being added by peer 0 only. Summing the peers' gradients gives one device's
//! gradient exactly (up to float rounding); a mean of per-peer means would not. Clipping and
//! AdamW then act on identical gradients, so the adapters stay identical on every peer
//! without a broadcast.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::cast::ToElement;
use burn::tensor::Tensor;

use super::collective::{Cluster, Peer};
use super::eval::evaluate_sets;
use super::shard::share;
use crate::data::{Batch, DataPosition, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::io::write_json_atomic;
use crate::lalora::LaLoRA;
use crate::laplace::LaplacePrior;
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::train::{
    clip_global_norm, lm_objective, trainable_params, DecayToward, EvalPoint, RunConfig, TrainConfig, TrainData, TrainReport,
};
use crate::KernelAutodiffBackend;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// Every trainable parameter's id and shape, in module order (the layout of the flat
/// gradient vector every peer all-reduces).
fn trainable_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, Vec<usize>)> {
    struct Collect(Vec<(ParamId, Vec<usize>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0.push((param.id, param.val().dims().to_vec()));
            }
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// `[every gradient flattened, extras...]`: missing gradients (a peer without data in this
/// step) count as zeros.
fn flatten<B: Backend>(grads: &mut GradientsParams, shapes: &[(ParamId, Vec<usize>)], extras: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let mut parts: Vec<Tensor<B, 1>> = Vec::with_capacity(shapes.len() + 1);
    for (id, dims) in shapes {
        let n: usize = dims.iter().product();
        let flat = match dims.len() {
            1 => grads.remove::<B, 1>(*id).map(|g| g.reshape([n])),
            2 => grads.remove::<B, 2>(*id).map(|g| g.reshape([n])),
            other => panic!("data-parallel training supports rank-1 and rank-2 parameters, not rank {other}"),
        };
        parts.push(flat.unwrap_or_else(|| Tensor::zeros([n], device)));
    }
    let extras: Vec<f32> = extras.iter().map(|&v| v as f32).collect();
    parts.push(Tensor::from_floats(extras.as_slice(), device));
    Tensor::cat(parts, 0)
}

/// The inverse of [`flatten`]: the gradients, and the extras.
fn unflatten<B: Backend>(flat: Tensor<B, 1>, shapes: &[(ParamId, Vec<usize>)]) -> (GradientsParams, Vec<f64>) {
    let mut grads = GradientsParams::new();
    let mut offset = 0;
    for (id, dims) in shapes {
        let n: usize = dims.iter().product();
        let part = flat.clone().slice(offset..offset + n);
        match dims.len() {
            1 => grads.register::<B, 1>(*id, part),
            _ => grads.register::<B, 2>(*id, part.reshape([dims[0], dims[1]])),
        }
        offset += n;
    }
    let total = flat.dims()[0];
    let extras: Vec<f32> = flat.slice(offset..total).into_data().convert::<f32>().to_vec().expect("f32 data");
    (grads, extras.into_iter().map(f64::from).collect())
}

/// A run directory written by peer 0 only: `config.json` and `log.jsonl` (no checkpoints).
struct RunLog {
    path: PathBuf,
}

impl RunLog {
    fn new(dir: &Path, config: &RunConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_json_atomic(&dir.join("config.json"), config)?;
        let path = dir.join("log.jsonl");
        std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))?;
        Ok(RunLog { path })
    }

    fn log(&self, value: serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Trains `model` as one peer of a data-parallel job (see the module docs); every peer must
/// call it with the same model, data and config. Peer 0 writes `config.json` and `log.jsonl`
/// to `run_dir` and shows progress. Returns the trained model (the same on every peer) and the
/// report (evaluation scores gathered over the peers).
#[allow(clippy::too_many_arguments)]
pub fn train_peer<B: KernelAutodiffBackend>(
    peer: &mut Peer<Inner<B>>,
    model: Llama<B>,
    lora: &LoraConfig,
    prior: Option<&LaplacePrior<B>>,
    data: &TrainData<'_>,
    config: &TrainConfig,
    run_dir: Option<&Path>,
    progress: bool,
) -> Result<(Llama<B>, TrainReport)> {
    config.validate()?;
    if config.gradient_checkpointing {
        return Err(Error::arg("gradient-checkpointing", "is not supported with data parallelism yet; train on one device"));
    }
    if data.sequences.is_empty() {
        return Err(Error::EmptyData { path: "<training data>".into(), reason: "no training sequences".into() });
    }
    let (rank, world) = (peer.rank(), peer.world());
    // The starting adapters: the centre of the l2 penalty and of the weight decay.
    let start = LaplacePrior::isotropic(&model, 1.0);
    let penalty = config.penalty.term(&start, prior)?;
    let run = match run_dir.filter(|_| rank == 0) {
        Some(dir) => Some(RunLog::new(dir, &RunConfig::new(lora.clone(), config.clone()))?),
        None => None,
    };
    let device = model.embed_tokens.device();
    let mut model = model;
    // As on one device: AdamW without its own decay, the step decays toward the start instead.
    let mut optim = config.optimizer.adamw().with_weight_decay(0.0).init::<B, Llama<B>>();
    let decay = DecayToward { anchors: &start.anchors, rate: config.optimizer.weight_decay as f64 };
    let params = trainable_params(&model);
    let shapes = trainable_shapes(&model);
    let schedule = &config.schedule;
    let mut shuffler = Shuffler::new(data.sequences.len(), config.data.seed, DataPosition::default());
    let progress = Progress::new(progress && rank == 0, schedule.steps as u64, config.penalty.method_name());
    let eval_options =
        EvalOptions { batch_size: config.eval.batch_size, max_len: config.eval.max_len, max_new_tokens: config.eval.max_new_tokens };
    let mut report = TrainReport { evals: Vec::new(), last_loss: f64::NAN, train_seconds: 0.0, tokens: 0, steps_done: 0 };
    let micro = config.data.grad_accum;

    for step in 0..schedule.steps {
        let start = Instant::now();
        // As on one device: dropout draws depend on (seed, step) (each peer draws its own).
        B::seed(&device, config.data.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let lr = schedule.lr_at(step);
        let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
        let (mut loss_part, mut penalty_value) = (0.0, 0.0);
        let mut penalty_pending = rank == 0 && penalty.is_some();
        // Every peer picks the same micro-batches; the step's loss is the token mean over all
        // of them (as on one device), so each share is weighted by its tokens over the step's.
        let picked: Vec<Vec<&Sequence>> =
            (0..micro).map(|_| shuffler.next_batch(config.data.batch_size).into_iter().map(|i| &data.sequences[i]).collect()).collect();
        let step_tokens: usize = picked.iter().flatten().map(|s| s.num_targets()).sum();
        for picked in &picked {
            let mine = &picked[share(picked.len(), rank, world)];
            if mine.is_empty() {
                continue;
            }
            let batch = Batch::<B>::new(mine, &device);
            let objective = lm_objective(&model, &batch, true, false);
            let weight = if step_tokens == 0 {
                mine.len() as f64 / picked.len() as f64 / micro as f64
            } else {
                batch.num_targets as f64 / step_tokens as f64
            };
            let mut objective_total = objective.surrogate.mul_scalar(weight);
            loss_part += objective.nll * weight;
            if let (true, Some((prior, scale))) = (penalty_pending, penalty) {
                let term = prior.penalty(&model, scale);
                penalty_value = term.value.into_scalar().to_f64();
                objective_total = objective_total + term.surrogate;
                penalty_pending = false;
            }
            accumulator.accumulate(&model, GradientsParams::from_grads(objective_total.backward(), &model));
        }
        if let (true, Some((prior, scale))) = (penalty_pending, penalty) {
            // Peer 0 had no sequence in this step: the penalty alone.
            let term = prior.penalty(&model, scale);
            penalty_value = term.value.into_scalar().to_f64();
            accumulator.accumulate(&model, GradientsParams::from_grads(term.surrogate.backward(), &model));
        }
        let mut local = accumulator.grads();
        let flat = flatten::<Inner<B>>(&mut local, &shapes, &[loss_part, penalty_value], &device);
        let (mut grads, extras) = unflatten::<Inner<B>>(peer.all_reduce_sum(flat)?, &shapes);
        let (loss, penalty_total) = (extras[0], extras[1]);
        if !loss.is_finite() || !penalty_total.is_finite() {
            let what = if loss.is_finite() { format!("penalty is {penalty_total}") } else { format!("loss is {loss}") };
            return Err(Error::Numerical(format!("step {}: {what}; stopped. Lower --lr or --lambda.", step + 1)));
        }
        let grad_norm = clip_global_norm::<B>(&mut grads, &params, config.optimizer.clip);
        // As on one device: a non-finite gradient would poison the optimiser's moments.
        if !grad_norm.is_finite() {
            return Err(Error::Numerical(format!("step {}: gradient norm is {grad_norm}; stopped. Lower --lr or --lambda.", step + 1)));
        }
        let offsets = decay.offsets(&model);
        model = optim.step(lr, model, grads);
        model = decay.apply(model, lr, offsets);

        let done = step + 1;
        report.tokens += step_tokens;
        report.last_loss = loss;
        report.steps_done = done;
        let elapsed = start.elapsed().as_secs_f64();
        report.train_seconds += elapsed;
        progress.inc(1);
        progress.message(format!("nll {loss:.3}, penalty {penalty_total:.4}, lr {lr:.1e}"));
        if let Some(run) = &run {
            run.log(serde_json::json!({
                "step": done, "nll": loss, "penalty": penalty_total, "lr": lr, "grad_norm": grad_norm, "ms": elapsed * 1e3, "peers": world,
            }))?;
        }
        if (config.eval.every > 0 && done % config.eval.every == 0) || done == schedule.steps {
            let scores = evaluate_sets(peer, &model.valid(), data.tokenizer, data.eval_sets, &eval_options)?;
            let line = scores.iter().map(|s| format!("{} {:.3}", s.name, s.headline())).collect::<Vec<_>>().join(", ");
            if !line.is_empty() {
                progress.println(format!("step {done}: nll {loss:.3}, penalty {penalty_total:.4}, lr {lr:.1e} | {line}"));
            }
            if let Some(run) = &run {
                run.log(serde_json::json!({ "step": done, "eval": scores }))?;
            }
            report.evals.push(EvalPoint { step: done, scores });
        }
    }
    progress.finish();
    Ok((model, report))
}

/// Trains `lalora` data-parallel over `devices` (this process's local peers, one thread
/// each) and, when `cluster` has several nodes, over the other processes. Returns the trained
/// model and report on the process's first thread (the model is the same on every peer).
///
/// # Errors
/// Any peer's error; a peer that fails makes the others fail within the cluster's timeout.
pub fn train_parallel<B: KernelAutodiffBackend>(
    cluster: &Arc<Cluster>,
    devices: &[B::Device],
    lalora: LaLoRA<B>,
    data: &TrainData<'_>,
    config: &TrainConfig,
    run_dir: Option<&Path>,
    progress: bool,
) -> Result<(LaLoRA<B>, TrainReport)> {
    if devices.len() != cluster.config().local_peers {
        return Err(Error::arg("devices", format!("{} devices for {} local peers", devices.len(), cluster.config().local_peers)));
    }
    config.validate()?;
    if config.gradient_checkpointing {
        return Err(Error::arg("gradient-checkpointing", "is not supported with data parallelism yet; train on one device"));
    }
    let LaLoRA { model, lora, prior } = lalora;
    let results: Vec<super::PeerOutcome<(Llama<B>, TrainReport)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let (model, prior, lora) = (model.clone().fork(device), prior.clone().map(|p| p.to_device(device)), &lora);
                let device = device.clone();
                scope.spawn(move || -> super::PeerOutcome<(Llama<B>, TrainReport)> {
                    let mut peer = cluster.peer::<Inner<B>>(i, device)?;
                    let out = train_peer(&mut peer, model, lora, prior.as_ref(), data, config, run_dir, progress)?;
                    peer.finish()?;
                    Ok((i == 0).then_some(out))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Numerical("a data-parallel peer panicked".into())))).collect()
    });
    let (model, report) = super::first_result(results)?;
    Ok((LaLoRA { model, lora, prior }, report))
}
