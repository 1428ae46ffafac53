//! The Laplace prior over the LoRA weights: anchor `theta*`, curvature F and prior precision
//! delta. Fine-tuning adds `(lambda / 2) (theta - theta*)^T (F + delta I) (theta - theta*)`.
//!
//! On disk (`lalora laplace --out DIR`): `DIR/curvature.safetensors` (names in
//! [`crate::curvature::math`]), `DIR/laplace.json` ([`LaplaceMeta`]) and the anchor adapter in
//! PEFT layout in `DIR/anchor/`. A prior is written as one unit: into a temporary directory
//! that then replaces `DIR`.
//!
//! No `Result` alias is imported here: burn's `Config` derive writes `Result<..>` in its code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::continual::{term_weights, PriorTerm};
use crate::curvature::accumulate::Accumulator;
use crate::curvature::capture::{adapter_infos, capture_batch};
use crate::curvature::low_rank::compress_curvature;
use crate::curvature::{inner, Curvature, CurvatureSum, Estimator, FisherType};
use crate::data::{lm_sequences_with, permutation, Batch, LmOptions, Sequence};
use crate::error::Error;
use crate::io::lock::DirLock;
use crate::io::{peft, read_json, save_tensors, write_json_atomic, TensorFiles};
use crate::llama::{Llama, Projection};
use crate::lora::{trainable_param, LoraConfig, LoraInit};
use crate::prior_check::{check_file_hashes, check_meta_values, check_psd, check_targets, file_hashes};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelAutodiffBackend;

/// How to fit a prior: the estimator, the labels, and which source data.
#[derive(Config, Debug, PartialEq)]
pub struct LaplaceConfig {
    /// The curvature. Default kfac (B-KFAC).
    #[config(default = "Estimator::Kfac")]
    pub estimator: Estimator,
    /// Which labels the Fisher is taken under. Default one Monte-Carlo draw per token.
    #[config(default = "FisherType::Mc { samples: 1 }")]
    pub fisher: FisherType,
    /// Batches taken from each source (the paper uses two). Default 2.
    #[config(default = 2)]
    pub batches_per_source: usize,
    /// Sequences per batch. Default 8.
    #[config(default = 8)]
    pub batch_size: usize,
    /// Tokens kept per sequence when the data is read. Default 512.
    #[config(default = 512)]
    pub max_len: usize,
    /// delta in `F + delta I`. Default 0.
    #[config(default = 0.0)]
    pub prior_precision: f64,
    /// Seed of the data order and of the label sampler. Default 0.
    #[config(default = 0)]
    pub seed: u64,
    /// Keep every kfac / tri-kfac Kronecker factor larger than k as its top-k eigenpairs plus
    /// a diagonal remainder (see [`crate::curvature::low_rank`]): the stored prior and the
    /// penalty then need no `[d, d]` matrix. Default `None`: every factor full.
    #[config(default = "None")]
    pub factor_rank: Option<usize>,
    /// Fit the compressed factors from one-pass sketches ([`crate::curvature::sketch`])
    /// instead of compressing dense ones at the end: the fit then never holds a `[d, d]`
    /// matrix (kfac of an 8B model in a few GiB instead of ~92), at some accuracy. Needs
    /// `factor_rank`. Default false.
    #[config(default = false)]
    pub factor_sketch: bool,
}

impl LaplaceConfig {
    /// Checks every range; the error names the setting.
    pub fn validate(&self) -> crate::Result<()> {
        if self.batches_per_source == 0 {
            return Err(Error::arg("batches", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::arg("batch-size", "must be at least 1"));
        }
        if let FisherType::Mc { samples: 0 } = self.fisher {
            return Err(Error::arg("samples", "must be at least 1"));
        }
        if !(self.prior_precision.is_finite() && self.prior_precision >= 0.0) {
            return Err(Error::arg("prior-precision", "must be a non-negative number"));
        }
        if self.factor_rank == Some(0) {
            return Err(Error::arg("factor-rank", "must be at least 1 (None means full factors)"));
        }
        if self.factor_sketch && self.factor_rank.is_none() {
            return Err(Error::arg("factor-sketch", "sketches the factors for --factor-rank K: give a factor rank too"));
        }
        Ok(())
    }
}

/// One source data set for a fit: its name (for reports and `laplace.json`) and sequences.
#[derive(Debug, Clone)]
pub struct SourceData {
    /// Usually the file it came from.
    pub name: String,
    /// Tokenised sequences.
    pub sequences: Vec<Sequence>,
}

impl SourceData {
    /// Reads and tokenises a language-modelling file (`text`, or `prompt` + `completion`),
    /// keeping `max_len` tokens per sequence; the name is the path.
    pub fn read(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> crate::Result<Self> {
        Self::read_with(path, tokenizer, &LmOptions { max_len, ..Default::default() })
    }

    /// [`Self::read`] with column renames and the chat template of `options` (no EOS is added:
    /// source text is scored as it is).
    pub fn read_with(path: &Path, tokenizer: &Tokenizer, options: &LmOptions<'_>) -> crate::Result<Self> {
        let sequences = lm_sequences_with(path, tokenizer, &LmOptions { eos: None, ..*options })?;
        Ok(SourceData { name: path.display().to_string(), sequences })
    }
}

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
    pub targets: Vec<Projection>,
    /// Init of the anchor adapters.
    pub init: LoraInit,
    /// Source data sets.
    pub data: Vec<String>,
    /// Batches taken from each source.
    pub batches_per_file: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Token limit per sequence.
    pub max_len: usize,
    /// Seed of the data order and the label sampler.
    pub seed: u64,
    /// lalora version that wrote it.
    pub lalora_version: String,
    /// kfac / tri-kfac factors larger than this are stored low-rank
    /// ([`crate::curvature::low_rank`]); absent: every factor full (as in files written before
    /// low-rank factors existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor_rank: Option<usize>,
    /// The compressed factors were fitted from one-pass sketches ([`crate::curvature::sketch`]),
    /// not from the dense factors; absent: from the dense factors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub factor_sketch: bool,
    /// For a prior accumulated over several fits (continual learning, see
    /// [`crate::continual`]): each fit and its weight in the curvature, oldest first. Empty for
    /// a single fit. When `curvature.safetensors` holds a sum (`terms.{k}.` names), entry k
    /// is its term k.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<PriorTerm>,
    /// Content hashes of the prior's files (`curvature.safetensors` and the anchor's), by
    /// their path in the prior directory; loading checks them, so a prior that mixes files
    /// of different fits is refused. Empty for a prior not yet saved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// One adapter's anchor `(A*, B*)`.
#[derive(Module, Debug)]
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

/// What a fit reports besides the prior.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Loss-carrying source tokens F averages over.
    pub tokens: usize,
    /// Batches captured.
    pub batches: usize,
    /// Wall time of the capture.
    pub seconds: f64,
    /// Remarks a user should see (a source with fewer sequences than asked for, ...).
    pub notes: Vec<String>,
}

/// The prior `N(theta*, (F + delta I)^-1)` over the adapters. Its tensors are constants of
/// the module (no parameters), so it travels with a [`crate::LaLoRA`] between backends.
#[derive(Module, Debug)]
pub struct LaplacePrior<B: Backend> {
    /// `theta*`, one entry per adapter in model order.
    pub anchors: Vec<Anchor<B>>,
    /// F; `None` is the isotropic prior `delta I` (the `l2` baseline).
    pub curvature: Option<Curvature<B>>,
    /// delta.
    pub prior_precision: f64,
    /// How it was fitted (`None` for an isotropic prior).
    pub meta: Option<LaplaceMeta>,
}

impl<B: Backend> LaplacePrior<B> {
    /// The isotropic prior `delta I` around the model's current adapters.
    pub fn isotropic(model: &Llama<B>, prior_precision: f64) -> Self {
        LaplacePrior { anchors: anchors_of(model), curvature: None, prior_precision, meta: None }
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

    /// Writes `curvature.safetensors`, `laplace.json` and `anchor/` to `dir`, as one unit: the
    /// files go to a temporary sibling directory, which then replaces `dir`; `laplace.json`,
    /// written last, records the other files' hashes. The prior directory is locked meanwhile
    /// (see [`DirLock::prior_dir`]). `model` supplies the adapters' structure (and the offset
    /// of an offset init); the anchor values are the prior's own.
    pub fn save(&self, dir: &Path, model: &Llama<B>, lora: &LoraConfig) -> crate::Result<()> {
        let curvature = self.curvature.as_ref().ok_or_else(|| Error::arg("curvature", "an isotropic prior has no curvature file"))?;
        let meta = self.meta.as_ref().ok_or_else(|| Error::arg("curvature", "the prior has no fit metadata to save"))?;
        let _lock = DirLock::prior_dir(dir)?;
        let tmp = sibling(dir, "tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let written = (|| {
            let tensors = curvature.tensors().into_iter().map(|(n, t)| (n, t.into_data())).collect();
            let metadata = [("format".to_string(), "lalora-curvature".to_string())].into_iter().collect();
            save_tensors(&tmp.join("curvature.safetensors"), tensors, Some(metadata))?;
            peft::save_adapter(&self.at_anchor(model.clone()), lora, &tmp.join("anchor"))?;
            let meta = LaplaceMeta { files: file_hashes(&tmp)?, ..meta.clone() };
            write_json_atomic(&tmp.join("laplace.json"), &meta)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        replace_dir(&tmp, dir)
    }

    /// `model` with its adapters set to the anchor values.
    fn at_anchor(&self, mut model: Llama<B>) -> Llama<B> {
        for (adapter, anchor) in model.adapters_mut().into_iter().zip(&self.anchors) {
            let path = adapter.path();
            adapter.lora_a = trainable_param(anchor.a.clone(), &format!("{path}.lora_A"));
            adapter.lora_b = trainable_param(anchor.b.clone(), &format!("{path}.lora_B"));
        }
        model
    }

    /// Reads the prior in `dir` for a model whose adapters are already the prior's anchor
    /// (loaded from `dir/anchor`): `laplace.json` and `curvature.safetensors` are read and
    /// checked against those adapters (paths, shapes, rank, scale).
    pub fn read(dir: &Path, anchor_model: &Llama<B>) -> crate::Result<Self> {
        Self::read_with(dir, read_meta(dir)?, anchor_model)
    }

    /// Loads the prior in `dir` for `model`, whose adapters need not be at the anchor but must
    /// have the prior's shapes: the anchor is read from `dir/anchor` (once) and must adapt the
    /// same modules.
    pub fn load(dir: &Path, model: &Llama<B>) -> crate::Result<Self> {
        let meta = read_meta(dir)?;
        check_adapters(&meta, dir, model)?;
        let (anchor_model, _) = peft::load_adapter(model.clone(), &dir.join("anchor"))?;
        let paths: Vec<String> = model.adapters().iter().map(|a| a.path()).collect();
        let anchor_paths: Vec<String> = anchor_model.adapters().iter().map(|a| a.path()).collect();
        if paths != anchor_paths {
            return Err(Error::Mismatch {
                path: dir.join("anchor"),
                reason: format!("anchor adapts {} modules, the model {}", anchor_paths.len(), paths.len()),
            });
        }
        Self::read_with(dir, meta, &anchor_model)
    }

    fn read_with(dir: &Path, meta: LaplaceMeta, anchor_model: &Llama<B>) -> crate::Result<Self> {
        check_adapters(&meta, dir, anchor_model)?;
        let curvature_path = dir.join("curvature.safetensors");
        let files = TensorFiles::open_file(&curvature_path)?;
        let device = anchor_model.embed_tokens.device();
        let read = |name: &str, shape: [usize; 2]| Ok(Tensor::from_data(files.read_f32(name, &shape)?, &device));
        let curvature = if files.names().iter().any(|n| n.starts_with("terms.")) {
            if meta.factor_rank.is_some() {
                return Err(Error::Mismatch {
                    path: dir.join("laplace.json"),
                    reason: crate::curvature::low_rank::sum_unsupported().to_string(),
                });
            }
            // A curvature accumulated over tasks, kept as a sum of terms (see `curvature::sum`).
            let weights = term_weights(&meta, &dir.join("laplace.json"))?;
            Curvature::Sum(CurvatureSum::from_tensors(meta.curvature, &weights, &adapter_infos(anchor_model), read)?)
        } else {
            Curvature::from_tensors_at(meta.curvature, &adapter_infos(anchor_model), meta.factor_rank, read)?
        };
        let expected: usize = curvature.tensors().len();
        if files.names().len() != expected {
            return Err(Error::Mismatch {
                path: curvature_path,
                reason: format!("holds {} tensors, the model's adapters need {expected}", files.names().len()),
            });
        }
        check_psd(&curvature_path, &curvature, anchor_model)?;
        Ok(LaplacePrior {
            anchors: anchors_of(anchor_model),
            curvature: Some(curvature),
            prior_precision: meta.prior_precision,
            meta: Some(meta),
        })
    }
}

/// `dir/laplace.json`, with its values checked and the files it records checked against
/// their hashes.
fn read_meta(dir: &Path) -> crate::Result<LaplaceMeta> {
    let path = dir.join("laplace.json");
    let meta: LaplaceMeta = read_json(&path)?;
    check_meta_values(&path, &meta)?;
    check_file_hashes(dir, &meta)?;
    Ok(meta)
}

/// The model adapts the projections the prior covers, each with the prior's rank and scale.
fn check_adapters<B: Backend>(meta: &LaplaceMeta, dir: &Path, model: &Llama<B>) -> crate::Result<()> {
    let adapters = model.adapters();
    if adapters.is_empty() {
        return Err(Error::Mismatch { path: dir.to_path_buf(), reason: "the model has no adapters to regularise".into() });
    }
    check_targets(&dir.join("laplace.json"), meta, model)?;
    for a in &adapters {
        if a.rank() != meta.rank || (a.scale - meta.scale).abs() > 1e-9 * meta.scale.abs().max(1.0) {
            return Err(Error::Mismatch {
                path: dir.join("laplace.json"),
                reason: format!(
                    "prior has rank {} and scale {}, adapter `{}` has rank {} and scale {}",
                    meta.rank,
                    meta.scale,
                    a.path(),
                    a.rank(),
                    a.scale
                ),
            });
        }
    }
    Ok(())
}

/// `dir` with `.{tag}-{pid}` appended to its name, in the same parent directory.
fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "prior".into());
    dir.with_file_name(format!("{name}.{tag}-{}", std::process::id()))
}

/// Moves the finished directory `new` to `dir`, replacing what was there.
fn replace_dir(new: &Path, dir: &Path) -> crate::Result<()> {
    let old = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(new, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

fn anchors_of<B: Backend>(model: &Llama<B>) -> Vec<Anchor<B>> {
    model.adapters().iter().map(|a| Anchor { path: a.path(), a: a.lora_a.val().detach(), b: a.lora_b.val().detach() }).collect()
}

/// The batches a fit captures: from each source, `batches_per_source` batches of
/// `batch_size` sequences in a seeded order (all of a source that has fewer, with a note).
pub fn source_batches<B: Backend>(sources: &[SourceData], config: &LaplaceConfig, device: &B::Device) -> (Vec<Batch<B>>, Vec<String>) {
    let wanted = config.batches_per_source * config.batch_size;
    let mut batches = Vec::new();
    let mut notes = Vec::new();
    for source in sources {
        let n = source.sequences.len();
        if n < wanted {
            notes.push(format!("{} has {n} sequences, fewer than {wanted}; using all", source.name));
        }
        let picked: Vec<&Sequence> = permutation(n, config.seed, 0).into_iter().take(wanted).map(|i| &source.sequences[i]).collect();
        batches.extend(picked.chunks(config.batch_size.max(1)).map(|chunk| Batch::new(chunk, device)));
    }
    (batches, notes)
}

/// Fits the prior of `config` on `sources` at the model's current adapters (the anchor).
///
/// Labels of the Monte-Carlo Fisher come from the backend's generator, which this function
/// seeds with `config.seed` first: a fit depends on its config alone, not on what drew random
/// numbers before it (in a sweep, diag and kfac see the same labels whatever the method list).
pub fn fit<B: KernelAutodiffBackend>(
    model: &Llama<B>,
    lora: &LoraConfig,
    sources: &[SourceData],
    config: &LaplaceConfig,
    progress: bool,
) -> crate::Result<(LaplacePrior<B>, FitReport)> {
    config.validate()?;
    if model.adapters().is_empty() {
        return Err(Error::arg("adapter", "the model has no adapters to fit a prior for"));
    }
    let start = Instant::now();
    let device = model.embed_tokens.device();
    B::seed(&device, config.seed);
    let (batches, notes) = source_batches(sources, config, &device);
    let progress = Progress::new(progress, batches.len() as u64, &format!("fit {}", config.estimator.name()));
    let mut acc = match (config.factor_sketch, config.factor_rank) {
        (true, Some(k)) => Accumulator::sketched(config.estimator, adapter_infos(model), k, &device),
        _ => Accumulator::new(config.estimator, adapter_infos(model)),
    };
    for batch in &batches {
        capture_batch(model, batch, config.fisher, &mut acc);
        progress.inc(1);
        progress.message(format!("{} tokens", acc.tokens()));
    }
    progress.finish();
    let tokens = acc.tokens();
    if tokens == 0 {
        return Err(Error::EmptyData { path: "<source data>".into(), reason: "no loss-carrying tokens to fit on".into() });
    }
    let meta = fit_meta(lora, sources, config, tokens);
    let curvature = stored_form(acc.finish(), &meta)?;
    // Statistics were summed on the inner backend (no graph); the prior lives on the model's.
    let inner = LaplacePrior {
        anchors: anchors_of(&model.valid()),
        curvature: Some(curvature),
        prior_precision: config.prior_precision,
        meta: Some(meta),
    };
    let report = FitReport { tokens, batches: batches.len(), seconds: start.elapsed().as_secs_f64(), notes };
    Ok((LaplacePrior::from_inner(inner), report))
}

/// A fit's summed curvature in the form `meta` records: its large Kronecker factors compressed
/// when `meta.factor_rank` is set (after every sum, so single-device and data-parallel fits
/// store the same thing), as summed otherwise. A sketched fit comes compressed already.
pub(crate) fn stored_form<B: Backend>(curvature: Curvature<B>, meta: &LaplaceMeta) -> crate::Result<Curvature<B>> {
    match (meta.factor_rank, curvature) {
        (Some(_), c @ Curvature::LowRank(_)) if meta.factor_sketch => Ok(c),
        (Some(k), c) => compress_curvature(c, k),
        (None, c) => Ok(c),
    }
}

/// What `laplace.json` records about a fit of `config` on `sources` over `tokens` tokens.
pub(crate) fn fit_meta(lora: &LoraConfig, sources: &[SourceData], config: &LaplaceConfig, tokens: usize) -> LaplaceMeta {
    LaplaceMeta {
        curvature: config.estimator,
        fisher: config.fisher.name().to_string(),
        samples: if let FisherType::Mc { samples } = config.fisher { samples } else { 1 },
        tokens,
        prior_precision: config.prior_precision,
        scale: lora.scale(),
        rank: lora.rank,
        alpha: lora.alpha,
        rslora: lora.rslora,
        targets: lora.targets.clone(),
        init: lora.init,
        data: sources.iter().map(|s| s.name.clone()).collect(),
        batches_per_file: config.batches_per_source,
        batch_size: config.batch_size,
        max_len: config.max_len,
        seed: config.seed,
        lalora_version: env!("CARGO_PKG_VERSION").to_string(),
        // The diagonal has no Kronecker factors: a factor rank means nothing there.
        factor_rank: if config.estimator == Estimator::Diag { None } else { config.factor_rank },
        factor_sketch: config.estimator != Estimator::Diag && config.factor_sketch,
        terms: Vec::new(),
        files: BTreeMap::new(),
    }
}

/// Whether an adapter's `B = 0` (PEFT's init), where h = 0: the A entries of every estimator
/// (diag's A diagonal, kfac's G_A, tri-kfac's cross block) are then exactly zero and only B is
/// constrained.
pub fn has_zero_b<B: Backend>(model: &Llama<B>) -> bool {
    use burn::tensor::cast::ToElement;
    model.adapters().iter().any(|a| a.lora_b.val().abs().max().into_scalar().to_f64() == 0.0)
}
