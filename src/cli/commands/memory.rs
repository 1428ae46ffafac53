//! `lalora memory`: how much memory each curvature takes for a model config (no weights needed).

use std::path::PathBuf;

use clap::Args;
use lalora::curvature::memory::curvature_memory;
use lalora::curvature::Estimator;
use lalora::llama::LlamaConfig;

use crate::cli::LoraArgs;

/// Flags of `lalora memory`.
#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// HF config.json; repeat for several models. Example: `--preset models/presets/llama-3.2-1b.json`.
    #[arg(long, required = true)]
    preset: Vec<PathBuf>,
    #[command(flatten)]
    lora: LoraArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// Runs `lalora memory`.
pub fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let lora = args.lora.config(0);
    lora.validate()?;
    if !args.json {
        println!("{:<24} {:>9} {:>12} {:>14} {:>14}", "model", "curvature", "LoRA params", "as stored", "shared X_A");
    }
    for path in &args.preset {
        let config = LlamaConfig::from_file(path)?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
            let m = curvature_memory(&config, &lora, estimator);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "model": name, "rank": lora.rank, "memory": m, "stored_bytes": m.stored_bytes(), "shared_bytes": m.shared_bytes() })
                );
            } else {
                println!(
                    "{:<24} {:>9} {:>12} {:>14} {:>14}",
                    name,
                    m.estimator,
                    m.lora_params,
                    gib(m.stored_bytes()),
                    gib(m.shared_bytes())
                );
            }
        }
    }
    Ok(())
}
