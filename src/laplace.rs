//! The Laplace prior over the LoRA weights: anchor `theta*`, curvature F and prior precision
//! delta. Fine-tuning adds `(lambda / 2) (theta - theta*)^T (F + delta I) (theta - theta*)`.
//!
//! On disk (`lalora laplace --out DIR`): `DIR/curvature.safetensors` (names in
//! [`crate::curvature::math`]), `DIR/laplace.json` ([`LaplaceMeta`]) and the anchor adapter in
//! PEFT layout in `DIR/anchor/`.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::curvature::accumulate::Accumulator;
use crate::curvature::capture::{adapter_infos, capture_batch};
use crate::curvature::{inner, Curvature, Estimator, FisherType};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::io::{peft, read_json, save_tensors, write_json_atomic, TensorFiles};
use crate::llama::Llama;
use crate::lora::{LoraConfig, LoraInit};
use crate::progress::Progress;
use crate::KernelAutodiffBackend;

/// What `laplace.json` records about a fitted prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaplaceMeta {
    /// `diag`, `kfac` or `tri-kfac`.
    pub curvature: Estimator,
    /// `mc`, `empirical` or `exhaustive`.
    pub fisher: String,
    /// Monte-Carlo draws per token (1 for the others).
    pub samples: usize,
    /// Loss-carrying source tokens F averages over.
    pub tokens: usize,
    /// delta in `F + delta I`.
    pub prior_precision: f64,
    /// LoRA scale s.
    pub scale: f64,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// rsLoRA scaling.
    pub rslora: bool,
    /// Adapted projections.
    pub targets: Vec<String>,
    /// Init of the anchor adapters.
    pub init: LoraInit,
    /// Source data files.
    pub data: Vec<String>,
    /// Batches taken from each file.
    pub batches_per_file: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Token limit per sequence.
    pub max_len: usize,
    /// Seed of the label sampler.
    pub seed: u64,
    /// lalora version that wrote it.
    pub lalora_version: String,
}

/// One adapter's anchor `(A*, B*)`.
#[derive(Debug, Clone)]
pub struct Anchor<B: Backend> {
    /// HF module path.
    pub path: String,
    /// `A*`, `[r, d_in]`.
    pub a: Tensor<B, 2>,
    /// `B*`, `[d_out, r]`.
    pub b: Tensor<B, 2>,
}

/// The penalty's contribution to one training step.
pub struct PenaltyTerm<B: Backend> {
    /// A scalar whose gradient w.r.t. the adapters is the penalty's (its value is not).
    pub surrogate: Tensor<B, 1>,
    /// The penalty itself, detached.
    pub value: Tensor<B, 1>,
}

/// The prior `N(theta*, (F + delta I)^-1)` over the adapters.
#[derive(Debug, Clone)]
pub struct LaplacePrior<B: Backend> {
    /// `theta*`, one entry per adapter in model order.
    pub anchors: Vec<Anchor<B>>,
    /// F; `None` is the isotropic prior `delta I` (the `l2` baseline).
    pub curvature: Option<Curvature<B>>,
    /// delta.
    pub prior_precision: f64,
}

impl<B: Backend> LaplacePrior<B> {
    /// The isotropic prior `delta I` around the model's current adapters.
    pub fn isotropic(model: &Llama<B>, prior_precision: f64) -> Self {
        LaplacePrior { anchors: anchors_of(model), curvature: None, prior_precision }
    }

    /// `(theta - theta*)^T (F + delta I) (theta - theta*)` for the model's adapters;
    /// differentiable. The direct form of the quadratic; training uses [`Self::penalty`], which
    /// has the same value and gradient at less cost.
    ///
    /// # Panics
    /// If the model's adapters are not the ones the prior was made for (checked on load).
    pub fn quadratic(&self, model: &Llama<B>) -> Tensor<B, 1> {
        let adapters = model.adapters();
        assert_eq!(adapters.len(), self.anchors.len(), "prior and model have different adapters");
        let mut terms: Vec<Tensor<B, 1>> = Vec::with_capacity(2 * adapters.len());
        for (i, (adapter, anchor)) in adapters.iter().zip(&self.anchors).enumerate() {
            let d_a = adapter.lora_a.val() - anchor.a.clone();
            let d_b = adapter.lora_b.val() - anchor.b.clone();
            // delta = 0 is common (the curvature alone): skip its ops rather than multiply by 0.
            if self.prior_precision != 0.0 {
                terms.push((d_a.clone().square().sum() + d_b.clone().square().sum()).mul_scalar(self.prior_precision));
            }
            if let Some(curvature) = &self.curvature {
                terms.push(curvature.quadratic(i, d_a, d_b));
            }
        }
        assert!(!terms.is_empty(), "a prior needs a curvature or a positive prior precision");
        // One concatenation and one sum instead of a chain of additions.
        Tensor::cat(terms, 0).sum()
    }

    /// `scale * quadratic(model)` for the training objective, without differentiating through
    /// the curvature: `P (theta - theta*)` is computed once, detached, and the surrogate
    /// `sum theta . (2 scale P (theta - theta*))` carries exactly the penalty's gradient, so the
    /// backward pass costs one multiplication per adapter matrix instead of replaying every
    /// matmul of the quadratic form.
    pub fn penalty(&self, model: &Llama<B>, scale: f64) -> PenaltyTerm<B> {
        let adapters = model.adapters();
        assert_eq!(adapters.len(), self.anchors.len(), "prior and model have different adapters");
        assert!(self.curvature.is_some() || self.prior_precision != 0.0, "a prior needs a curvature or a positive prior precision");
        let mut values: Vec<Tensor<B, 1>> = Vec::with_capacity(adapters.len());
        let mut surrogates: Vec<Tensor<B, 1>> = Vec::with_capacity(adapters.len());
        for (i, (adapter, anchor)) in adapters.iter().zip(&self.anchors).enumerate() {
            let (a, b) = (adapter.lora_a.val(), adapter.lora_b.val());
            let d_a = (a.clone() - anchor.a.clone()).detach();
            let d_b = (b.clone() - anchor.b.clone()).detach();
            let (mut p_a, mut p_b) = match &self.curvature {
                Some(curvature) => curvature.product(i, d_a.clone(), d_b.clone()),
                None => (d_a.zeros_like(), d_b.zeros_like()),
            };
            if self.prior_precision != 0.0 {
                p_a = p_a + d_a.clone().mul_scalar(self.prior_precision);
                p_b = p_b + d_b.clone().mul_scalar(self.prior_precision);
            }
            values.push(inner(d_a, p_a.clone()) + inner(d_b, p_b.clone()));
            surrogates.push(inner(a, p_a.mul_scalar(2.0 * scale)) + inner(b, p_b.mul_scalar(2.0 * scale)));
        }
        PenaltyTerm { surrogate: Tensor::cat(surrogates, 0).sum(), value: Tensor::cat(values, 0).sum().mul_scalar(scale) }
    }

    /// Writes `curvature.safetensors`, `laplace.json` and `anchor/` to `dir`.
    pub fn save(&self, dir: &Path, meta: &LaplaceMeta, model: &Llama<B>, lora: &LoraConfig) -> Result<()> {
        let curvature = self.curvature.as_ref().ok_or_else(|| Error::arg("curvature", "an isotropic prior has no curvature file"))?;
        let tensors = curvature.tensors().into_iter().map(|(n, t)| (n, t.into_data())).collect();
        let metadata = [("format".to_string(), "lalora-curvature".to_string())].into_iter().collect();
        save_tensors(&dir.join("curvature.safetensors"), tensors, Some(metadata))?;
        write_json_atomic(&dir.join("laplace.json"), meta)?;
        // The anchor is the model's adapters at fit time.
        peft::save_adapter(model, lora, &dir.join("anchor"))
    }

    /// Loads a prior written by [`Self::save`] for `model`, checking that it fits the model's
    /// adapters (paths, shapes, rank, scale).
    pub fn load(dir: &Path, model: &Llama<B>) -> Result<(Self, LaplaceMeta)> {
        let meta_path = dir.join("laplace.json");
        let meta: LaplaceMeta = read_json(&meta_path)?;
        if !(meta.prior_precision.is_finite() && meta.prior_precision >= 0.0) {
            return Err(Error::config(&meta_path, "prior_precision", "must be a non-negative number"));
        }
        let adapters = model.adapters();
        if adapters.is_empty() {
            return Err(Error::Mismatch { path: dir.to_path_buf(), reason: "the model has no adapters to regularise".into() });
        }
        for a in &adapters {
            if a.rank() != meta.rank || (a.scale - meta.scale).abs() > 1e-9 * meta.scale.abs().max(1.0) {
                return Err(Error::Mismatch {
                    path: meta_path,
                    reason: format!(
                        "prior has rank {} and scale {}, adapter `{}` has rank {} and scale {}",
                        meta.rank, meta.scale, a.path, a.rank(), a.scale
                    ),
                });
            }
        }
        let (anchor_model, _) = peft::load_adapter(model.clone(), &dir.join("anchor"))?;
        let anchors = anchors_of(&anchor_model);
        let paths: Vec<&str> = adapters.iter().map(|a| a.path.as_str()).collect();
        let anchor_paths: Vec<&str> = anchors.iter().map(|a| a.path.as_str()).collect();
        if paths != anchor_paths {
            return Err(Error::Mismatch {
                path: dir.join("anchor"),
                reason: format!("anchor adapts {} modules, the model {}", anchor_paths.len(), paths.len()),
            });
        }
        let curvature_path = dir.join("curvature.safetensors");
        let files = TensorFiles::open_file(&curvature_path)?;
        let device = model.embed_tokens.device();
        let blocks: Vec<(String, [usize; 2], usize)> =
            adapters.iter().map(|a| (a.path.clone(), [a.lora_b.dims()[0], a.lora_a.dims()[1]], a.rank())).collect();
        let curvature = Curvature::from_tensors(meta.curvature, &blocks, |name, shape| {
            Ok(Tensor::from_data(files.read_f32(name, &shape)?, &device))
        })?;
        let expected: usize = curvature.tensors().len();
        if files.names().len() != expected {
            return Err(Error::Mismatch {
                path: curvature_path,
                reason: format!("holds {} tensors, the model's adapters need {expected}", files.names().len()),
            });
        }
        Ok((LaplacePrior { anchors, curvature: Some(curvature), prior_precision: meta.prior_precision }, meta))
    }
}

impl<B: AutodiffBackend> LaplacePrior<B> {
    /// Moves a prior fitted on the inner backend onto the autodiff backend (as constants).
    pub fn from_inner(prior: LaplacePrior<B::InnerBackend>) -> Self {
        LaplacePrior {
            anchors: prior
                .anchors
                .into_iter()
                .map(|a| Anchor { path: a.path, a: Tensor::from_inner(a.a), b: Tensor::from_inner(a.b) })
                .collect(),
            curvature: prior.curvature.map(|c| c.map(Tensor::from_inner)),
            prior_precision: prior.prior_precision,
        }
    }
}

fn anchors_of<B: Backend>(model: &Llama<B>) -> Vec<Anchor<B>> {
    model
        .adapters()
        .iter()
        .map(|a| Anchor { path: a.path.clone(), a: a.lora_a.val().detach(), b: a.lora_b.val().detach() })
        .collect()
}

/// Settings of a fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Which curvature.
    pub estimator: Estimator,
    /// Which labels.
    pub fisher: FisherType,
    /// delta.
    pub prior_precision: f64,
}

/// Fits the curvature on `batches` at the model's current adapters (the anchor) and returns
/// the prior and the number of tokens it averages over.
pub fn fit<B: KernelAutodiffBackend>(
    model: &Llama<B>,
    batches: &[Batch<B>],
    options: &FitOptions,
    progress: &Progress,
) -> Result<(LaplacePrior<B::InnerBackend>, usize)> {
    if model.adapters().is_empty() {
        return Err(Error::arg("adapter", "the model has no adapters to fit a prior for"));
    }
    if !(options.prior_precision.is_finite() && options.prior_precision >= 0.0) {
        return Err(Error::arg("prior-precision", "must be a non-negative number"));
    }
    let mut acc = Accumulator::new(options.estimator, adapter_infos(model));
    for batch in batches {
        capture_batch(model, batch, options.fisher, &mut acc);
        progress.inc(1);
        progress.message(format!("{} tokens", acc.tokens()));
    }
    let tokens = acc.tokens();
    if tokens == 0 {
        return Err(Error::EmptyData { path: "<source data>".into(), reason: "no loss-carrying tokens to fit on".into() });
    }
    let curvature = acc.finish();
    let model_inner = model.valid();
    let prior = LaplacePrior { anchors: anchors_of(&model_inner), curvature: Some(curvature), prior_precision: options.prior_precision };
    Ok((prior, tokens))
}

/// Whether any adapter has `B = 0` (PEFT's init), where the A-blocks of kfac/tri-kfac vanish.
pub fn has_zero_b<B: Backend>(model: &Llama<B>) -> bool {
    use burn::tensor::cast::ToElement;
    model.adapters().iter().any(|a| a.lora_b.val().abs().max().into_scalar().to_f64() == 0.0)
}
