//! `lalora train`: LoRA fine-tuning with no penalty (`lora`), an isotropic one (`l2`) or the
//! Laplace prior (`lalora`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lalora::data::lm_sequences_with_eos;
use lalora::eval::{load_eval_set, EvalOptions};
use lalora::io::{peft, write_json_atomic};
use lalora::laplace::LaplacePrior;
use lalora::llama::Llama;
use lalora::train::{train, AdamWSettings, EvalPlan, Method, RunDir, ScheduleKind, TrainOptions};
use lalora::Tokenizer;

use crate::cli::{LoraArgs, ModelArgs};

type AB = lalora_backends::AutodiffBackend;

/// Optimiser, schedule and batching flags, shared by `train` and `sweep`.
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Decay after warmup: cosine, linear or constant.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "linear", "constant"])]
    pub schedule: String,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (PyTorch's default 0.01; betas 0.9/0.999, eps 1e-8).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Keep at most this many tokens per training sequence.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Evaluate every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
}

impl OptimArgs {
    /// Training options for `method` and `lambda`.
    pub fn options(&self, method: Method, lambda: f64, seed: u64, checkpoint_every: usize) -> TrainOptions {
        TrainOptions {
            method,
            lambda,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_steps: self.warmup,
            schedule: match self.schedule.as_str() {
                "linear" => ScheduleKind::Linear,
                "constant" => ScheduleKind::Constant,
                _ => ScheduleKind::Cosine,
            },
            min_lr_ratio: self.min_lr_ratio,
            adamw: AdamWSettings { weight_decay: self.weight_decay, ..Default::default() },
            clip: (self.clip > 0.0).then_some(self.clip),
            eval_every: self.eval_every,
            checkpoint_every,
            seed,
        }
    }
}

/// Flags of `lalora train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    lora: LoraArgs,
    #[command(flatten)]
    optim: OptimArgs,
    /// Training data (JSONL: `text`, or `prompt` + `completion` with the loss on the completion).
    #[arg(long)]
    data: PathBuf,
    /// `lora` (no penalty), `l2` (lambda/2 |theta - theta0|^2) or `lalora` (Laplace penalty from
    /// --laplace).
    #[arg(long, default_value = "lora", value_parser = ["lora", "l2", "lalora"])]
    method: String,
    /// A `lalora laplace` output directory; training starts from its anchor adapters.
    #[arg(long, required_if_eq("method", "lalora"))]
    laplace: Option<PathBuf>,
    /// Penalty strength lambda. Example: `--lambda 1000`.
    #[arg(long, default_value_t = 0.0)]
    lambda: f64,
    /// Evaluation file, scored during and after training; repeat for several.
    #[arg(long)]
    eval: Vec<PathBuf>,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue the run in --out from its last checkpoint (same flags required).
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in total (with a checkpoint), to continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Seed of the adapter init, data order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: adapter/, checkpoint/, log.jsonl, run.json, eval.json.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `lalora train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    let method = match args.method.as_str() {
        "l2" => Method::L2,
        "lalora" => Method::Lalora,
        _ => Method::Lora,
    };
    anyhow::ensure!(method == Method::Lora || args.lambda > 0.0, "--method {} needs --lambda > 0", args.method);
    let tokenizer = Tokenizer::from_dir(&args.model.model)?;
    let base = Llama::<AB>::load(&args.model.model, &device).with_context(|| format!("loading {}", args.model.model.display()))?;
    let eos = base.config.eos_token_ids.first().copied();

    // Starting adapters: the prior's anchor, a given adapter, or fresh ones.
    let (model, lora, prior) = match (&args.laplace, &args.model.adapter) {
        (Some(dir), _) if method == Method::Lalora => {
            let (model, info) = peft::load_adapter(base, &dir.join("anchor"))?;
            let (prior, meta) = LaplacePrior::load(dir, &model)?;
            eprintln!("prior: {} ({} Fisher) on {} tokens, delta {}", meta.curvature.name(), meta.fisher, meta.tokens, meta.prior_precision);
            (model, info.lora, Some(prior))
        }
        (_, Some(adapter)) => {
            let (model, info) = peft::load_adapter(base, adapter)?;
            (model, info.lora, None)
        }
        _ => {
            let lora = args.lora.config(args.seed);
            (base.with_adapters(&lora)?, lora, None)
        }
    };
    let prior = match method {
        Method::L2 => Some(LaplacePrior::isotropic(&model, 1.0)),
        _ => prior,
    };

    let data = lm_sequences_with_eos(&args.data, &tokenizer, args.optim.max_len, eos)?;
    let sets = args.eval.iter().map(|p| load_eval_set(p, &tokenizer, args.optim.max_len)).collect::<lalora::Result<Vec<_>>>()?;
    let options = args.optim.options(method, args.lambda, args.seed, args.checkpoint_every);
    let run_dir = RunDir::new(&args.out)?;
    write_json_atomic(
        &args.out.join("run.json"),
        &serde_json::json!({
            "model": args.model.model, "data": args.data, "laplace": args.laplace, "eval": args.eval,
            "lora": lora, "train": options, "backend": lalora_backends::NAME, "lalora_version": env!("CARGO_PKG_VERSION"),
        }),
    )?;
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &sets, options: EvalOptions { batch_size: args.optim.batch_size, max_len: args.optim.max_len, max_new_tokens: 64 } };
    let outcome = train(model, &lora, prior.as_ref(), &data, &plan, &options, Some(&run_dir), args.resume, args.stop_after, true)?;
    if args.stop_after.is_some_and(|s| s < options.steps) {
        println!("stopped after step {}; continue with --resume", args.stop_after.unwrap_or(0));
        return Ok(());
    }
    peft::save_adapter(&outcome.model, &lora, &args.out.join("adapter"))?;
    if let Some(last) = outcome.evals.last() {
        write_json_atomic(&args.out.join("eval.json"), last)?;
        for s in &last.scores {
            let metrics: Vec<String> = s.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("{:<28} {}", s.name, metrics.join(", "));
        }
    }
    println!(
        "{} steps, final nll {:.4}, {:.0} training tokens/s -> {}",
        options.steps,
        outcome.last_loss,
        outcome.tokens as f64 / outcome.train_seconds.max(1e-9),
        args.out.join("adapter").display()
    );
    Ok(())
}
