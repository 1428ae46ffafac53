//! `lalora bench`: speed and memory of one LoRA training step (the step `train` runs), a
//! Laplace capture per batch and the penalty, on a model preset with random weights.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lalora::bench::{Bench, BenchConfig};
use lalora::curvature::Estimator;
use lalora::DtypeChoice;
use lalora::LlamaConfig;
use serde_json::json;

use crate::cli::AB;

/// What `lalora bench` measures.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    /// One training step: forward, backward, clipping, AdamW.
    Train,
    /// Laplace capture per batch, for diag, kfac and tri-kfac.
    Laplace,
    /// The penalty's forward and backward, for diag, kfac and tri-kfac.
    Penalty,
}

/// Flags of `lalora bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HF config.json of the model to build with random weights.
    #[arg(long, default_value = "models/presets/small.json")]
    preset: PathBuf,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// LoRA rank (alpha = 2 r), on all seven projections.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (at least 1).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// What to measure, comma-separated. The training step is always timed: the other figures
    /// are given as shares of it.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "train")]
    what: Vec<BenchPart>,
    /// Float type of the frozen base weights: auto (the preset's `torch_dtype` on GPU
    /// backends, f32 on CPU ones), f32, bf16 or f16.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<DtypeChoice>())]
    dtype: DtypeChoice,
    /// Recompute each decoder layer in the backward instead of keeping its activations.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Estimators timed by `--what laplace,penalty`, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "diag,kfac,tri-kfac")]
    estimators: Vec<Estimator>,
    /// Compress the captured Kronecker factors to this rank (as `laplace --factor-rank`).
    #[arg(long)]
    factor_rank: Option<usize>,
    /// With --factor-rank: sketch the factors during the capture (as `laplace --factor-sketch`).
    #[arg(long, requires = "factor_rank")]
    factor_sketch: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `lalora bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = BenchConfig {
        model: LlamaConfig::from_file(&args.preset)?,
        batch_size: args.batch_size,
        seq: args.seq,
        rank: args.rank,
        warmup: args.warmup,
        steps: args.steps,
        dtype: args.dtype.resolve_with_config::<AB>(&args.preset, &lalora_backends::device())?,
        gradient_checkpointing: args.gradient_checkpointing,
        factor_rank: args.factor_rank,
        factor_sketch: args.factor_sketch,
    };
    let dtype = config.dtype;
    let checkpointing = if args.gradient_checkpointing { ", checkpointed" } else { "" };
    let mut bench = Bench::<AB>::new(config, &lalora_backends::device())?;
    let step = bench.train_step()?;
    let wants = |part: BenchPart| args.what.contains(&part);
    if wants(BenchPart::Laplace) || wants(BenchPart::Penalty) {
        for &estimator in &args.estimators {
            let c = bench.curvature(estimator, step.step_ms_mean / 1e3)?;
            if args.json {
                println!("{}", serde_json::to_string(&c)?);
                continue;
            }
            let mut line = format!("{:>8}:", c.estimator);
            if wants(BenchPart::Laplace) {
                line += &format!(
                    " laplace {:.3} s per batch ({:.2}x a train step), peak RSS {:.0} MiB, curvature file {:.1} MiB",
                    c.laplace_s_per_batch, c.ratio_to_train_step, c.peak_rss_mib, c.curvature_file_mib
                );
                if args.factor_sketch {
                    line += " (sketched during the capture)";
                } else if args.factor_rank.is_some() {
                    line += &format!(" (compressed in {:.1} s)", c.compress_s);
                }
            }
            if wants(BenchPart::Penalty) {
                line += &format!(" penalty {:.1} ms ({:.2}% of a step)", c.penalty_ms, 100.0 * c.penalty_share_of_step);
            }
            println!("{line}");
        }
    }
    if !wants(BenchPart::Train) {
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.json {
        let mut report = json!({
            "framework": "lalora", "backend": lalora_backends::NAME, "threads": threads,
            "batch": args.batch_size, "seq": args.seq, "rank": args.rank, "steps": args.steps,
            "dtype": dtype.name(), "gradient_checkpointing": args.gradient_checkpointing,
        });
        report.as_object_mut().expect("an object").extend(serde_json::to_value(&step)?.as_object().expect("an object").clone());
        println!("{report}");
    } else {
        println!(
            "train step ({} backend, {} weights{}, batch {} x seq {}, rank {}): {:.0} tokens/s, mean {:.0} ms, min {:.0} ms, peak RSS {:.0} MiB",
            lalora_backends::NAME,
            dtype,
            checkpointing,
            args.batch_size,
            args.seq,
            args.rank,
            step.tokens_per_s,
            step.step_ms_mean,
            step.step_ms_min,
            step.peak_rss_mib
        );
    }
    Ok(())
}
