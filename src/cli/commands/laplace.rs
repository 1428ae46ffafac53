//! `lalora laplace`: fit the Laplace prior (curvature of the source NLL at the anchor adapters)
//! and write `curvature.safetensors`, `laplace.json` and `anchor/`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend as _;
use clap::Args;
use lalora::curvature::{Estimator, FisherType};
use lalora::data::{lm_sequences, permutation, Batch, Sequence};
use lalora::io::peft;
use lalora::laplace::{fit, has_zero_b, FitOptions, LaplaceMeta};
use lalora::llama::Llama;
use lalora::progress::Progress;
use lalora::Tokenizer;

use crate::cli::{LoraArgs, ModelArgs};

type AB = lalora_backends::AutodiffBackend;

/// Flags of `lalora laplace`.
#[derive(Args, Debug)]
pub struct LaplaceArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Source (or surrogate) data, JSONL; repeat for several sets: their tokens are averaged.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// `diag`, `kfac` (B-KFAC) or `tri-kfac` (B-Tri-KFAC).
    #[arg(long, default_value = "kfac", value_parser = ["diag", "kfac", "tri-kfac"])]
    curvature: String,
    /// `mc` (labels sampled from the model) or `empirical` (the data's labels).
    #[arg(long, default_value = "mc", value_parser = ["mc", "empirical"])]
    fisher: String,
    /// Monte-Carlo label draws per token (with --fisher mc).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Batches taken from each data file (the paper uses two).
    #[arg(long, default_value_t = 2)]
    batches: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Keep at most this many tokens per sequence.
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// delta in the prior precision F + delta I.
    #[arg(long, default_value_t = 0.0)]
    prior_precision: f64,
    /// Seed of the data order, the adapter init and the label sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `lalora laplace`.
pub fn run(args: LaplaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batches > 0 && args.batch_size > 0, "--batches and --batch-size must be at least 1");
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    let device = lalora_backends::device();
    AB::seed(&device, args.seed);
    let estimator = Estimator::parse(&args.curvature).expect("clap checked the value");
    let fisher = match args.fisher.as_str() {
        "empirical" => FisherType::Empirical,
        _ => FisherType::Mc { samples: args.samples },
    };
    let tokenizer = Tokenizer::from_dir(&args.model.model)?;
    let base = Llama::<AB>::load(&args.model.model, &device).with_context(|| format!("loading {}", args.model.model.display()))?;
    let (model, lora) = match &args.model.adapter {
        Some(dir) => {
            let (m, info) = peft::load_adapter(base, dir)?;
            (m, info.lora)
        }
        None => {
            let lora = args.lora.config(args.seed);
            (base.with_adapters(&lora)?, lora)
        }
    };
    if estimator != Estimator::Diag && has_zero_b(&model) {
        eprintln!(
            "warning: some adapters have B = 0 (PEFT's init): h = 0 there, so the A blocks of {} are zero and only B \
             is constrained (tri-kfac then equals kfac). Use --init offset to constrain A too.",
            estimator.name()
        );
    }

    let mut batches: Vec<Batch<AB>> = Vec::new();
    for path in &args.data {
        let sequences = lm_sequences(path, &tokenizer, args.max_len)?;
        let order = permutation(sequences.len(), args.seed, 0);
        let wanted = args.batches * args.batch_size;
        if sequences.len() < wanted {
            eprintln!("note: {} has {} sequences, fewer than {wanted}; using all", path.display(), sequences.len());
        }
        let picked: Vec<&Sequence> = order.iter().take(wanted).map(|&i| &sequences[i]).collect();
        for chunk in picked.chunks(args.batch_size) {
            batches.push(Batch::new(chunk, &device));
        }
    }

    let progress = Progress::new(true, batches.len() as u64, "laplace");
    let start = Instant::now();
    let options = FitOptions { estimator, fisher, prior_precision: args.prior_precision };
    let (prior, tokens) = fit(&model, &batches, &options, &progress)?;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();

    let meta = LaplaceMeta {
        curvature: estimator,
        fisher: fisher.name().to_string(),
        samples: if let FisherType::Mc { samples } = fisher { samples } else { 1 },
        tokens,
        prior_precision: args.prior_precision,
        scale: lora.scale(),
        rank: lora.rank,
        alpha: lora.alpha,
        rslora: lora.rslora,
        targets: lora.targets.clone(),
        init: lora.init,
        data: args.data.iter().map(|p| p.display().to_string()).collect(),
        batches_per_file: args.batches,
        batch_size: args.batch_size,
        max_len: args.max_len,
        seed: args.seed,
        lalora_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    use burn::module::AutodiffModule;
    prior.save(&args.out, &meta, &model.valid(), &lora)?;
    let size = std::fs::metadata(args.out.join("curvature.safetensors")).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({} Fisher) on {tokens} tokens from {} batches in {seconds:.1} s ({:.2} s/batch); curvature.safetensors {:.1} MiB -> {}",
        estimator.name(),
        fisher.name(),
        batches.len(),
        seconds / batches.len() as f64,
        size as f64 / (1024.0 * 1024.0),
        args.out.display()
    );
    Ok(())
}
