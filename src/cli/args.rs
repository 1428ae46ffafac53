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
