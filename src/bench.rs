//! Speed and memory of the work training does: one training step ([`crate::train::Step`], the
//! step `train` runs), a Laplace capture per batch, and the penalty.
//!
//! A model with random weights from an HF `config.json` preset, random token ids, rank-r
//! adapters (alpha = 2r) on all seven projections, AdamW. The figures are those
//! `scripts/bench_torch.py` prints for transformers + peft.

use std::time::Instant;

use burn::module::AutodiffModule;
use serde::Serialize;

use crate::curvature::{adapter_infos, capture_batch, compress_curvature, Accumulator, Estimator, FisherType};
use crate::data::{Batch, Sequence};
use crate::error::{Error, Result};
use crate::io::save_tensors;
use crate::laplace::LaplacePrior;
use crate::llama::{Llama, LlamaConfig, Projection, WeightDtype};
use crate::lora::{InitRng, LoraConfig};
use crate::train::{trainable_params, OptimizerConfig, Step};
use crate::KernelAutodiffBackend;

/// What to measure and on what.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The model's configuration (weights are random).
    pub model: LlamaConfig,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// LoRA rank (alpha = 2r), all seven projections.
    pub rank: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs.
    pub steps: usize,
    /// Float type of the frozen base weights.
    pub dtype: WeightDtype,
    /// Recompute each layer in the backward ([`crate::train::accumulate_checkpointed`]).
    pub gradient_checkpointing: bool,
    /// Compress the captured Kronecker factors to this rank, as `laplace --factor-rank` does.
    pub factor_rank: Option<usize>,
    /// With `factor_rank`: sketch the factors during the capture, as `laplace --factor-sketch`
    /// does (the capture's time then includes the sketch's eigenpairs).
    pub factor_sketch: bool,
}

/// Time of a training step.
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    /// Training tokens per second (batch x seq / mean step time).
    pub tokens_per_s: f64,
    /// Mean step time in milliseconds.
    pub step_ms_mean: f64,
    /// Fastest step in milliseconds.
    pub step_ms_min: f64,
    /// Peak resident memory of the process so far, MiB (Linux; NaN elsewhere).
    pub peak_rss_mib: f64,
}

/// Cost of one estimator: Laplace capture per batch, its file, and its penalty per step.
#[derive(Debug, Clone, Serialize)]
pub struct CurvatureBench {
    /// `diag`, `kfac` or `tri-kfac`.
    pub estimator: &'static str,
    /// Seconds per captured batch (one Monte-Carlo draw).
    pub laplace_s_per_batch: f64,
    /// That time over a training step's.
    pub ratio_to_train_step: f64,
    /// Seconds to compress the factors to `factor_rank` (0 without).
    pub compress_s: f64,
    /// Size of `curvature.safetensors`.
    pub curvature_file_mib: f64,
    /// Peak resident memory of the process after the capture, MiB.
    pub peak_rss_mib: f64,
    /// The penalty's forward and backward per step, milliseconds.
    pub penalty_ms: f64,
    /// That time over a training step's.
    pub penalty_share_of_step: f64,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), NaN where the OS does not
/// tell.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Times `f` `warmup + steps` times; returns (mean, min) of the timed runs in seconds.
fn time_it(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        f()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((mean, times.iter().cloned().fold(f64::INFINITY, f64::min)))
}

/// A bench's model and batch.
pub struct Bench<B: KernelAutodiffBackend> {
    config: BenchConfig,
    model: Llama<B>,
    batch: Batch<B>,
}

impl<B: KernelAutodiffBackend> Bench<B> {
    /// Builds the random model with adapters and a batch of random token ids.
    pub fn new(config: BenchConfig, device: &B::Device) -> Result<Self> {
        if config.steps == 0 || config.batch_size == 0 || config.seq < 2 || config.rank == 0 {
            return Err(Error::arg("steps", "steps, batch size and rank must be at least 1, seq at least 2"));
        }
        let lora = LoraConfig::new().with_rank(config.rank).with_alpha(2.0 * config.rank as f64).with_targets(Projection::ALL.to_vec());
        let model = Llama::<B>::init_random_as(&config.model, 0, device, config.dtype).with_adapters(&lora)?;
        let mut rng = InitRng::new(1);
        let vocab = config.model.vocab_size;
        let sequences: Vec<Sequence> = (0..config.batch_size)
            .map(|_| Sequence::text(rng.uniform(config.seq, 0.5).iter().map(|u| ((u + 0.5) * (vocab - 1) as f32) as u32).collect()))
            .collect();
        let refs: Vec<&Sequence> = sequences.iter().collect();
        let batch = Batch::new(&refs, device);
        Ok(Bench { config, model, batch })
    }

    /// Times the training step (forward, backward, clipping, AdamW) and leaves the model
    /// trained by those steps.
    pub fn train_step(&mut self) -> Result<StepTimes> {
        let mut optim = OptimizerConfig::new().adamw().init::<B, Llama<B>>();
        let params = trainable_params(&self.model);
        let step = Step {
            lr: 1e-4,
            clip: Some(1.0),
            head_grad: false,
            penalty: None,
            params: &params,
            decay: None,
            checkpointing: self.config.gradient_checkpointing,
        };
        let mut model = Some(self.model.clone());
        let (mean, min) = time_it(self.config.warmup, self.config.steps, || {
            let (next, _) = step.run(model.take().expect("put back after each step"), &mut optim, vec![self.batch.clone()])?;
            model = Some(next);
            Ok(())
        })?;
        self.model = model.expect("put back after each step");
        let tokens = (self.config.batch_size * self.config.seq) as f64;
        Ok(StepTimes { tokens_per_s: tokens / mean, step_ms_mean: mean * 1e3, step_ms_min: min * 1e3, peak_rss_mib: peak_rss_mib() })
    }

    /// Laplace capture per batch (one Monte-Carlo draw), the curvature file's size and the
    /// penalty's cost for `estimator`, against a training step of `step_s` seconds.
    pub fn curvature(&self, estimator: Estimator, step_s: f64) -> Result<CurvatureBench> {
        let mut curvature = None;
        let (capture_s, _) = time_it(self.config.warmup.min(1), self.config.steps, || {
            let infos = adapter_infos(&self.model);
            let mut acc = match (self.config.factor_sketch, self.config.factor_rank) {
                (true, Some(k)) => Accumulator::sketched(estimator, infos, k, &self.model.embed_tokens.device()),
                _ => Accumulator::new(estimator, infos),
            };
            capture_batch(&self.model, &self.batch, FisherType::Mc { samples: 1 }, &mut acc);
            curvature = Some(acc.finish());
            Ok(())
        })?;
        let mut curvature = curvature.expect("timed at least once");
        let peak_rss_mib = peak_rss_mib();
        let mut compress_s = 0.0;
        if let (Some(k), false) = (self.config.factor_rank, self.config.factor_sketch) {
            let start = Instant::now();
            curvature = compress_curvature(curvature, k)?;
            compress_s = start.elapsed().as_secs_f64();
        }
        let file = std::env::temp_dir().join(format!("lalora-bench-{}.safetensors", std::process::id()));
        save_tensors(&file, curvature.tensors().into_iter().map(|(n, t)| (n, t.into_data())).collect(), None)?;
        let file_mib = std::fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len() as f64 / (1024.0 * 1024.0);
        let _ = std::fs::remove_file(&file);

        let mut prior = LaplacePrior::isotropic(&self.model.valid(), 1e-3);
        prior.curvature = Some(curvature);
        let prior = LaplacePrior::<B>::from_inner(prior);
        // As in training: the detached value read back, the surrogate differentiated. The cost
        // does not depend on how far the adapters are from the anchor.
        let (penalty_s, _) = time_it(self.config.warmup, self.config.steps, || {
            let term = prior.penalty(&self.model, 0.5);
            let _ = term.value.into_scalar();
            drop(term.surrogate.backward());
            Ok(())
        })?;
        Ok(CurvatureBench {
            estimator: estimator.name(),
            laplace_s_per_batch: capture_s,
            ratio_to_train_step: capture_s / step_s,
            compress_s,
            curvature_file_mib: file_mib,
            peak_rss_mib,
            penalty_ms: penalty_s * 1e3,
            penalty_share_of_step: penalty_s / step_s,
        })
    }
}
