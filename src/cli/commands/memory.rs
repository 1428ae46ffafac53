//! `lalora memory`: how much memory each curvature takes for a model config (no weights needed).

use std::path::PathBuf;

use clap::Args;
use lalora::curvature::memory::curvature_memory_at;
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
    /// Also show kfac and tri-kfac with the factors larger than K kept as top-K eigenpairs
    /// plus a diagonal (`lalora laplace --factor-rank K`); repeat for several K. Their
    /// "sketched fit" column is what `laplace --factor-sketch` holds while it fits (a fit
    /// without it holds the full factors: the full rows' "as stored").
    #[arg(long, value_name = "K", value_parser = crate::cli::ranges::at_least_one)]
    factor_rank: Vec<usize>,
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
        println!(
            "{:<24} {:>14} {:>12} {:>14} {:>14} {:>16}",
            "model", "curvature", "LoRA params", "as stored", "shared X_A", "sketched fit"
        );
    }
    for path in &args.preset {
        let config = LlamaConfig::from_file(path)?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // Every estimator with full factors, then kfac and tri-kfac at each factor rank.
        let mut rows: Vec<(Estimator, Option<usize>)> = [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac].map(|e| (e, None)).to_vec();
        for &k in &args.factor_rank {
            rows.extend([Estimator::Kfac, Estimator::TriKfac].map(|e| (e, Some(k))));
        }
        for (estimator, factor_rank) in rows {
            let m = curvature_memory_at(&config, &lora, estimator, factor_rank);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "model": name, "rank": lora.rank, "memory": m, "stored_bytes": m.stored_bytes(), "shared_bytes": m.shared_bytes() })
                );
            } else {
                println!(
                    "{:<24} {:>14} {:>12} {:>14} {:>14} {:>16}",
                    name,
                    match m.factor_rank {
                        Some(k) => format!("{} k={k}", m.estimator),
                        None => m.estimator.to_string(),
                    },
                    m.lora_params,
                    gib(m.stored_bytes()),
                    gib(m.shared_bytes()),
                    m.sketch_fit_bytes().map_or("-".to_string(), gib)
                );
            }
        }
    }
    Ok(())
}
