//! `lalora laplace`: fit the Laplace prior (curvature of the source NLL at the anchor adapters)
//! and write `curvature.safetensors`, `laplace.json` and `anchor/`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lalora::curvature::Estimator;
use lalora::io::lock::DirLock;
use lalora::io::write_json_atomic;
use lalora::laplace::has_zero_b;
use lalora::{AdapterSource, LaLoRA, LaplaceConfig, LaplacePrior, SourceData, Tokenizer};

use crate::cli::dist::{self, DistArgs};
use crate::cli::ranges::{at_least_one, non_negative, token_length};
use crate::cli::{max_len, DataArgs, FisherKind, Flags, LoraArgs, ModelArgs, AB};

/// Flags of `lalora laplace`.
#[derive(Args, Debug)]
pub struct LaplaceArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Source (or surrogate) data, JSONL or parquet; repeat for several sets: their tokens are
    /// averaged.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    fields: DataArgs,
    /// The curvature: `diag`, `kfac` (B-KFAC) or `tri-kfac` (B-Tri-KFAC).
    #[arg(long, value_enum, default_value_t = Estimator::Kfac)]
    curvature: Estimator,
    /// `mc` (labels sampled from the model) or `empirical` (the data's labels).
    #[arg(long, value_enum, default_value_t = FisherKind::Mc)]
    fisher: FisherKind,
    /// Monte-Carlo label draws per token (with --fisher mc).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    samples: usize,
    /// Batches taken from each data file (the paper uses two).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    batches: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    batch_size: usize,
    /// Keep at most this many tokens per sequence; at most the model's context. Default: 512,
    /// or the model's context if shorter.
    #[arg(long, value_parser = token_length)]
    max_len: Option<usize>,
    /// Keep every kfac / tri-kfac Kronecker factor larger than K (X_A is d_in x d_in, G_B is
    /// d_out x d_out) as its top-K eigenpairs plus a diagonal remainder: the prior and the
    /// penalty then need no d x d matrix (`lalora memory --factor-rank K` shows the sizes).
    /// 0 or absent: full factors.
    #[arg(long, value_name = "K")]
    factor_rank: Option<usize>,
    /// With --factor-rank: fit the compressed factors from a one-pass sketch (d x (2K+8) per
    /// factor) instead of compressing full ones at the end, so the fit never holds a d x d
    /// matrix either (needed at 8B; somewhat less accurate, see docs/precision.md).
    #[arg(long)]
    factor_sketch: bool,
    /// delta in the prior precision F + delta I.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    prior_precision: f64,
    /// Seed of the data order, the adapter init and the label sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add the new fit to the prior in this directory (continual learning): the result is
    /// `decay * that prior + the new fit`, anchored at the current adapters (`--adapter`, the
    /// adapters after the task just learnt). Same curvature, rank and targets required.
    #[arg(long)]
    accumulate: Option<PathBuf>,
    /// gamma: how much of the `--accumulate` prior is kept (1 keeps every task at full
    /// weight, as in EWC; below 1 older tasks fade, as in online EWC).
    #[arg(long, default_value_t = 1.0, requires = "accumulate")]
    decay: f64,
    /// Output directory: curvature.safetensors, laplace.json (with the other files' hashes),
    /// anchor/, and run.json (the resolved flags). Written as one unit and locked meanwhile;
    /// an existing prior there is replaced.
    #[arg(long)]
    out: PathBuf,
    /// Read flags from JSON or YAML files (keys are flag names); flags given here override
    /// them.
    #[arg(long)]
    config: Vec<PathBuf>,
    #[command(flatten)]
    dist: DistArgs,
}

/// Runs `lalora laplace`.
pub fn run(args: LaplaceArgs, flags: &Flags) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    let mut config = LaplaceConfig::new()
        .with_estimator(args.curvature)
        .with_fisher(args.fisher.fisher(args.samples))
        .with_batches_per_source(args.batches)
        .with_batch_size(args.batch_size)
        .with_prior_precision(args.prior_precision)
        .with_seed(args.seed)
        .with_factor_rank(args.factor_rank.filter(|&k| k > 0))
        .with_factor_sketch(args.factor_sketch);
    config.validate()?;
    if args.accumulate.is_some() && config.factor_rank.is_some() {
        // Refused before the fit rather than after it.
        return Err(lalora::curvature::low_rank::sum_unsupported().into());
    }
    let adapters = match &args.model.adapter {
        Some(dir) => AdapterSource::Peft(dir.clone()),
        None => AdapterSource::Fresh(args.lora.config(args.seed)),
    };
    // Held for the whole fit: a second `laplace --out` on the same directory is refused.
    let _lock = DirLock::prior_dir(&args.out)?;
    let model_dir = args.model.dir()?;
    let mut lalora = LaLoRA::<AB>::load_with(&model_dir, adapters, args.model.dtype, &device)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let tokenizer = Tokenizer::for_model(&model_dir, lalora.model.config.vocab_size)?;
    let chat = DataArgs::chat_template(&model_dir)?;
    config.max_len = max_len(args.max_len, 512, &lalora.model.config, &model_dir)?;
    if has_zero_b(&lalora.model) {
        eprintln!(
            "warning: some adapters have B = 0 (PEFT's init): h = 0 there, so the A entries of {} are zero and only B \
             is constrained (tri-kfac then equals kfac). Use --init offset to constrain A too.",
            args.curvature.name()
        );
    }
    let read = args.fields.options(config.max_len, None, chat.as_ref());
    let sources = args.data.iter().map(|p| SourceData::read_with(p, &tokenizer, &read)).collect::<lalora::Result<Vec<_>>>()?;
    let earlier = match &args.accumulate {
        Some(dir) => {
            Some(LaplacePrior::load(dir, &lalora.model).with_context(|| format!("reading the prior to accumulate, {}", dir.display()))?)
        }
        None => None,
    };
    let plan = args.dist.plan(&device, lalora_backends::NAME)?;
    let report = match &plan {
        None => lalora.fit_prior(&sources, &config, true)?,
        Some(plan) => dist::fit(plan, &mut lalora, &sources, &config)?,
    };
    if plan.as_ref().is_some_and(|p| !p.writes_outputs()) {
        println!("node {}: fit done ({} tokens in all)", plan.as_ref().map_or(0, |p| p.node_rank), report.tokens);
        return Ok(());
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if let (Some(earlier), Some(dir)) = (earlier, &args.accumulate) {
        let fitted = lalora.prior.take().expect("fit_prior keeps the prior");
        let combined = earlier.accumulate(&fitted, args.decay)?;
        let terms = combined.meta.as_ref().map_or(1, |m| m.terms.len().max(1));
        eprintln!("accumulated: {} x {} + the new fit ({terms} fits in the prior)", args.decay, dir.display());
        lalora.prior = Some(combined);
    }
    lalora.save_prior(&args.out)?;
    write_json_atomic(&args.out.join("run.json"), flags)?;
    let size = std::fs::metadata(args.out.join("curvature.safetensors")).map(|m| m.len()).unwrap_or(0);
    let factors = match config.factor_rank {
        Some(k) if args.curvature != Estimator::Diag => {
            let how = if config.factor_sketch { " (one-pass sketch)" } else { "" };
            format!(", factors above {k} x {k} kept at rank {k}{how}")
        }
        _ => String::new(),
    };
    println!(
        "{}{factors} ({} Fisher) on {} tokens from {} batches in {:.1} s ({:.2} s/batch); curvature.safetensors {:.1} MiB -> {}",
        args.curvature.name(),
        config.fisher.name(),
        report.tokens,
        report.batches,
        report.seconds,
        report.seconds / report.batches.max(1) as f64,
        size as f64 / (1024.0 * 1024.0),
        args.out.display()
    );
    Ok(())
}
