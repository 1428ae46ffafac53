//! Flag groups shared by several commands.

use std::path::PathBuf;

use clap::Args;

/// Which model (and adapter) to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// HF model directory: config.json, model.safetensors (or shards) and tokenizer.json.
    /// Example: `--model models/tiny`.
    #[arg(long, env = "LALORA_MODEL")]
    pub model: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// Shape, scale and init of fresh LoRA adapters.
#[derive(Args, Debug, Clone)]
pub struct LoraArgs {
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha; the scale is alpha / r (alpha / sqrt(r) with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Use rsLoRA's scale alpha / sqrt(r).
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the adapter input during training.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt, comma-separated. Example: `--targets q_proj,v_proj`.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub targets: Vec<String>,
    /// `peft` (B = 0, PEFT's default) or `offset` (A and B random, function unchanged; the
    /// A-blocks of kfac/tri-kfac do not vanish). `gaussian` is PEFT's Gaussian A with B = 0.
    #[arg(long, default_value = "peft", value_parser = ["peft", "offset", "gaussian"])]
    pub init: String,
}

impl LoraArgs {
    /// The library's [`lalora::LoraConfig`] for these flags and `seed`.
    pub fn config(&self, seed: u64) -> lalora::LoraConfig {
        let init = match self.init.as_str() {
            "offset" => lalora::LoraInit::Offset,
            "gaussian" => lalora::LoraInit::Gaussian,
            _ => lalora::LoraInit::Peft,
        };
        lalora::LoraConfig {
            rank: self.rank,
            alpha: self.alpha,
            rslora: self.rslora,
            dropout: self.lora_dropout,
            targets: self.targets.clone(),
            init,
            seed,
        }
    }
}
