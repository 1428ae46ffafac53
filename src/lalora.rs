//! [`LaLoRA`]: a Llama with LoRA adapters and, once fitted or loaded, its Laplace prior. The
//! type users import; every workflow (fit the prior, train, evaluate, generate, save, merge)
//! is a method on it.
//!
//! ```text
//! let mut lalora = LaLoRA::<B>::load(model_dir, AdapterSource::Fresh(lora), &device)?;
//! lalora.fit_prior(&sources, &LaplaceConfig::new(), false)?;            // F at the anchor
//! let (lalora, report) = lalora.train(&data, &train_config, &control)?; // + lambda/2 penalty
//! lalora.save_adapter(out)?;                                            // PEFT layout
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, EvalScore, EvalSet};
use crate::generate::{generate, SamplingConfig};
use crate::io::peft;
use crate::laplace::{fit, FitReport, LaplaceConfig, LaplacePrior, SourceData};
use crate::llama::{DtypeChoice, Llama};
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::train::{train, TrainConfig, TrainControl, TrainData, TrainReport};
use crate::{KernelAutodiffBackend, KernelBackend};

/// Where a model's starting adapters come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterSource {
    /// No adapters: the base model alone (to evaluate or generate with it).
    None,
    /// Fresh adapters made as the config says (its init: peft, gaussian or offset).
    Fresh(LoraConfig),
    /// A PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    Peft(PathBuf),
    /// A saved prior (`lalora laplace --out DIR`): its anchor becomes the adapters and the
    /// prior is attached.
    Prior(PathBuf),
}

/// A Llama with LoRA adapters, the settings they were made with, and an optional Laplace prior
/// (anchor theta*, curvature F, precision delta).
#[derive(Module, Debug)]
pub struct LaLoRA<B: Backend> {
    /// The model; adapters live in its projections.
    pub model: Llama<B>,
    /// Rank, alpha, targets and init of the adapters.
    pub lora: LoraConfig,
    /// The prior fitted on source data (or loaded), if any.
    pub prior: Option<LaplacePrior<B>>,
}

impl<B: Backend> LaLoRA<B> {
    /// Loads an HF model directory (config.json and safetensors weights) with adapters from
    /// `adapters`.
    pub fn load(model_dir: &Path, adapters: AdapterSource, device: &B::Device) -> Result<Self> {
        Self::from_model(Llama::load(model_dir, device)?, adapters)
    }

    /// Adds adapters from `adapters` to a model (its own adapters, if any, are replaced).
    pub fn from_model(model: Llama<B>, adapters: AdapterSource) -> Result<Self> {
        match adapters {
            AdapterSource::None => Ok(LaLoRA { model, lora: LoraConfig::new().with_targets(vec![]), prior: None }),
            AdapterSource::Fresh(lora) => Ok(LaLoRA { model: model.with_adapters(&lora)?, lora, prior: None }),
            AdapterSource::Peft(dir) => {
                let (model, info) = peft::load_adapter(model, &dir)?;
                Ok(LaLoRA { model, lora: info.lora, prior: None })
            }
            AdapterSource::Prior(dir) => {
                let (model, info) = peft::load_adapter(model, &dir.join("anchor"))?;
                let prior = LaplacePrior::read(&dir, &model)?;
                Ok(LaLoRA { model, lora: info.lora, prior: Some(prior) })
            }
        }
    }

    /// Attaches the prior saved in `dir`; the adapters stay as they are (the prior's anchor is
    /// read from `dir/anchor`).
    pub fn load_prior(&mut self, dir: &Path) -> Result<()> {
        self.prior = Some(LaplacePrior::load(dir, &self.model)?);
        Ok(())
    }

    /// Saves the adapters in PEFT's layout.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        peft::save_adapter(&self.model, &self.lora, dir)
    }

    /// Saves the prior (`curvature.safetensors`, `laplace.json`, `anchor/`) to `dir`.
    pub fn save_prior(&self, dir: &Path) -> Result<()> {
        let prior = self.prior.as_ref().ok_or_else(|| Error::arg("laplace", "no prior to save: fit or load one first"))?;
        prior.save(dir, &self.model, &self.lora)
    }

    /// The model with every adapter folded into its base weight (`W0 + s (B A - B0 A0)`), for
    /// export as a plain checkpoint.
    pub fn merge(self) -> Llama<B> {
        self.model.merge_adapters()
    }
}

impl<B: KernelBackend> LaLoRA<B> {
    /// [`Self::load`] with the frozen base weights in the type `dtype` resolves to (`auto`:
    /// the checkpoint's own on GPU backends, f32 on CPU ones). Adapters, gradients and the
    /// prior stay f32. A type the backend cannot hold is an error naming the backend.
    pub fn load_with(model_dir: &Path, adapters: AdapterSource, dtype: DtypeChoice, device: &B::Device) -> Result<Self> {
        let dtype = dtype.resolve::<B>(model_dir, device)?;
        Self::from_model(Llama::load_as(model_dir, device, dtype)?, adapters)
    }

    /// Scores the model on each set (call it on `lalora.valid()` when `B` is an autodiff
    /// backend, to skip the graph).
    pub fn evaluate(&self, tokenizer: &Tokenizer, sets: &[EvalSet], options: &EvalOptions) -> Result<Vec<EvalScore>> {
        sets.iter().map(|set| evaluate(&self.model, tokenizer, set, options, &Progress::hidden())).collect()
    }

    /// Generates after `prompt` (token ids), stopping at the model's end-of-sequence tokens;
    /// returns the new tokens.
    pub fn generate(&self, prompt: &[u32], config: &SamplingConfig) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "is empty (no tokens to continue)"));
        }
        Ok(generate(&self.model, prompt, config, &self.model.config.eos_token_ids))
    }
}

impl<B: KernelAutodiffBackend> LaLoRA<B> {
    /// Fits the Laplace prior on source data at the current adapters (the anchor) and keeps
    /// it. The label sampler is seeded with `config.seed`, so a fit is reproducible.
    pub fn fit_prior(&mut self, sources: &[SourceData], config: &LaplaceConfig, progress: bool) -> Result<FitReport> {
        let (prior, report) = fit(&self.model, &self.lora, sources, config, progress)?;
        self.prior = Some(prior);
        Ok(report)
    }

    /// Trains the adapters on `data` with the penalty `config.penalty` (the Laplace penalty
    /// uses this model's prior). With a run directory in `control`, writes `config.json`,
    /// `log.jsonl` and checkpoints, and can resume.
    pub fn train(self, data: &TrainData<'_>, config: &TrainConfig, control: &TrainControl) -> Result<(Self, TrainReport)> {
        let LaLoRA { model, lora, prior } = self;
        let (model, report) = train(model, &lora, prior.as_ref(), data, config, control)?;
        Ok((LaLoRA { model, lora, prior }, report))
    }
}
