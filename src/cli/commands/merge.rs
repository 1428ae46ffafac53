//! `lalora merge`: fold a PEFT adapter into its base model and write a plain HF checkpoint.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lalora::io::hub::resolve_model;
use lalora::io::merge::{parse_size, save_merged, ExportDtype, MergeOptions};
use lalora::LaLoRA;

use crate::cli::B;

/// Flags of `lalora merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a directory, or a Hugging Face id in the local cache (`org/name[@revision]`).
    #[arg(long, env = "LALORA_MODEL")]
    model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory for the merged checkpoint (must not be the base model's directory).
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the written weights: f32, bf16 or f16 (rounded to nearest even, as torch does).
    #[arg(long, value_enum, default_value_t = ExportDtype::F32)]
    dtype: ExportDtype,
    /// Largest weight file; bigger checkpoints are sharded with model.safetensors.index.json.
    /// Units as transformers reads them: 2GB = 2*10^9 bytes, 2GiB = 2*2^30.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
}

/// Runs `lalora merge`.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let options = MergeOptions { dtype: args.dtype, max_shard_bytes: parse_size(&args.max_shard_size)? };
    let model_dir = resolve_model(&args.model)?;
    let device = lalora_backends::device();
    let lalora = LaLoRA::<B>::load(&model_dir, lalora::AdapterSource::Peft(args.adapter.clone()), &device)
        .with_context(|| format!("loading {} with the adapter {}", model_dir.display(), args.adapter.display()))?;
    let adapters = lalora.model.adapters().len();
    let summary = save_merged(lalora.model, &model_dir, &args.out, &options)?;
    println!(
        "merged {adapters} adapters into {} ({} parameters, {:.1} MB as {}) in {} file(s){}",
        args.out.display(),
        summary.parameters,
        summary.total_bytes as f64 / 1e6,
        options.dtype.torch_name(),
        summary.shards.len(),
        if summary.shards.len() > 1 { " with model.safetensors.index.json" } else { "" },
    );
    if !summary.copied.is_empty() {
        println!("copied {}", summary.copied.join(", "));
    }
    Ok(())
}
