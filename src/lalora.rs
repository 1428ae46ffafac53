//! [`LaLoRA`]: a Llama with LoRA adapters, the type users import.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::error::Result;
use crate::io::peft;
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::tokenizer::Tokenizer;

/// A Llama with its LoRA adapters and the settings they were made with.
#[derive(Debug)]
pub struct LaLoRA<B: Backend> {
    /// The model; adapters live in its projections.
    pub model: Llama<B>,
    /// Rank, alpha, targets and init of the adapters.
    pub lora: LoraConfig,
}

impl<B: Backend> LaLoRA<B> {
    /// Loads an HF model directory and adds fresh adapters as `lora` says.
    pub fn new(model_dir: &Path, lora: &LoraConfig, device: &B::Device) -> Result<Self> {
        let model = Llama::load(model_dir, device)?.with_adapters(lora)?;
        Ok(LaLoRA { model, lora: lora.clone() })
    }

    /// Loads an HF model directory and a PEFT adapter directory for it.
    pub fn with_adapter(model_dir: &Path, adapter_dir: &Path, device: &B::Device) -> Result<Self> {
        let model = Llama::load(model_dir, device)?;
        let (model, info) = peft::load_adapter(model, adapter_dir)?;
        Ok(LaLoRA { model, lora: info.lora })
    }

    /// Saves the adapters in PEFT's layout.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        peft::save_adapter(&self.model, &self.lora, dir)
    }
}

/// Loads `model_dir`, with the adapter in `adapter_dir` if one is given, and its tokenizer.
pub fn load_for_inference<B: Backend>(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    device: &B::Device,
) -> Result<(Llama<B>, Tokenizer)> {
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let model = match adapter_dir {
        Some(dir) => LaLoRA::with_adapter(model_dir, dir, device)?.model,
        None => Llama::load(model_dir, device)?,
    };
    Ok((model, tokenizer))
}
