//! `lalora sweep` and `lalora demo`: train every (method, lambda) setting, score source and
//! target sets, and write `results.csv`, `results.json` and the Pareto plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend as _;
use clap::Args;
use lalora::curvature::{Estimator, FisherType};
use lalora::data::{lm_sequences, lm_sequences_with_eos, permutation, Sequence};
use lalora::eval::{load_eval_set, EvalOptions};
use lalora::llama::Llama;
use lalora::sweep::{run_sweep, SweepData, SweepMethod, SweepOptions, SweepResult};
use lalora::tasks::{write_tasks, TaskSizes};
use lalora::train::Method;
use lalora::Tokenizer;

use super::train::OptimArgs;
use crate::cli::LoraArgs;

type AB = lalora_backends::AutodiffBackend;

/// Which methods and lambdas to sweep, shared by `sweep` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Methods, comma-separated: `lora`, `l2`, `lalora-diag`, `lalora-kfac`, `lalora-tri-kfac`.
    #[arg(long, value_delimiter = ',', default_value = "lora,l2,lalora-diag,lalora-kfac")]
    pub methods: Vec<String>,
    /// Lambdas for the lalora methods. Example: `--lambda 1,10,100`.
    #[arg(long = "lambda", value_delimiter = ',', default_value = "1,10,100")]
    pub lambdas: Vec<f64>,
    /// Lambdas for the isotropic `l2` baseline (its penalty has another scale).
    #[arg(long = "l2-lambda", value_delimiter = ',', default_value = "0.1,1,10")]
    pub l2_lambdas: Vec<f64>,
    /// Evaluations along the plain-LoRA run (its early-stopping frontier).
    #[arg(long, default_value_t = 4)]
    pub lora_eval_points: usize,
    /// Fisher labels for the priors: `mc` or `empirical`.
    #[arg(long, default_value = "mc", value_parser = ["mc", "empirical"])]
    pub fisher: String,
    /// Batches per source set for the priors (the paper uses two).
    #[arg(long, default_value_t = 2)]
    pub laplace_batches: usize,
    /// Sequences per Laplace batch.
    #[arg(long, default_value_t = 16)]
    pub laplace_batch_size: usize,
    /// delta in the prior precision F + delta I.
    #[arg(long, default_value_t = 0.0)]
    pub prior_precision: f64,
}

impl MethodArgs {
    fn methods(&self) -> anyhow::Result<Vec<SweepMethod>> {
        self.methods
            .iter()
            .map(|m| {
                Ok(match m.as_str() {
                    "lora" => SweepMethod { method: Method::Lora, curvature: None, lambdas: vec![] },
                    "l2" => SweepMethod { method: Method::L2, curvature: None, lambdas: self.l2_lambdas.clone() },
                    other => {
                        let name = other.strip_prefix("lalora-").unwrap_or("");
                        let curvature = Estimator::parse(name).ok_or_else(|| {
                            anyhow::anyhow!("--methods: `{other}` is not lora, l2, lalora-diag, lalora-kfac or lalora-tri-kfac")
                        })?;
                        SweepMethod { method: Method::Lalora, curvature: Some(curvature), lambdas: self.lambdas.clone() }
                    }
                })
            })
            .collect()
    }
}

/// Flags of `lalora sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// HF model directory (with tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    lora: LoraArgs,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    methods: MethodArgs,
    /// Target training data (JSONL).
    #[arg(long)]
    train: PathBuf,
    /// Source data for the priors (JSONL text); repeat per source set.
    #[arg(long, required = true)]
    laplace_data: Vec<PathBuf>,
    /// Held-out source evaluation set; repeat.
    #[arg(long, required = true)]
    source_eval: Vec<PathBuf>,
    /// Held-out target evaluation set; repeat.
    #[arg(long, required = true)]
    target_eval: Vec<PathBuf>,
    /// Seed of adapters, data order, dropout and label sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

/// Everything a sweep reads, as files.
pub struct SweepFiles<'a> {
    pub model: &'a Path,
    pub train: &'a Path,
    pub laplace_data: &'a [PathBuf],
    pub source_eval: &'a [PathBuf],
    pub target_eval: &'a [PathBuf],
}

/// Loads everything and runs the sweep; returns the result (already written to `out`).
pub fn sweep(
    files: &SweepFiles<'_>,
    lora_args: &LoraArgs,
    optim: &OptimArgs,
    methods: &MethodArgs,
    seed: u64,
    out: &Path,
) -> anyhow::Result<SweepResult> {
    let device = lalora_backends::device();
    AB::seed(&device, seed);
    let tokenizer = Tokenizer::from_dir(files.model)?;
    let base = Llama::<AB>::load(files.model, &device).with_context(|| format!("loading {}", files.model.display()))?;
    let eos = base.config.eos_token_ids.first().copied();
    let lora = lora_args.config(seed);
    let model = base.with_adapters(&lora)?;
    let train = lm_sequences_with_eos(files.train, &tokenizer, optim.max_len, eos)?;
    let laplace_sources: Vec<Vec<Sequence>> = files
        .laplace_data
        .iter()
        .map(|p| {
            let seqs = lm_sequences(p, &tokenizer, optim.max_len)?;
            Ok(permutation(seqs.len(), seed, 0).into_iter().map(|i| seqs[i].clone()).collect())
        })
        .collect::<lalora::Result<_>>()?;
    let load = |paths: &[PathBuf]| paths.iter().map(|p| load_eval_set(p, &tokenizer, optim.max_len)).collect::<lalora::Result<Vec<_>>>();
    let (source_evals, target_evals) = (load(files.source_eval)?, load(files.target_eval)?);
    let data = SweepData { tokenizer: &tokenizer, train: &train, laplace_sources: &laplace_sources, source_evals: &source_evals, target_evals: &target_evals };
    let options = SweepOptions {
        methods: methods.methods()?,
        train: optim.options(Method::Lora, 0.0, seed, 0),
        lora_eval_points: methods.lora_eval_points,
        fisher: match methods.fisher.as_str() {
            "empirical" => FisherType::Empirical,
            _ => FisherType::Mc { samples: 1 },
        },
        laplace_batches: methods.laplace_batches,
        laplace_batch_size: methods.laplace_batch_size,
        prior_precision: methods.prior_precision,
        eval: EvalOptions { batch_size: 32, max_len: optim.max_len, max_new_tokens: 48 },
        progress: true,
    };
    std::fs::create_dir_all(out)?;
    println!("{:<18} {:>8} {:>6} {:>8} {:>8}", "method", "lambda", "step", "source", "target");
    let result = run_sweep(&model, &lora, &data, &options, |r| {
        let lambda = r.lambda.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        println!("{:<18} {:>8} {:>6} {:>8.3} {:>8.3}", r.method, lambda, r.step, r.source_score, r.target_score);
    })?;
    result.write(out)?;
    Ok(result)
}

/// Runs `lalora sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let files = SweepFiles {
        model: &args.model,
        train: &args.train,
        laplace_data: &args.laplace_data,
        source_eval: &args.source_eval,
        target_eval: &args.target_eval,
    };
    let result = sweep(&files, &args.lora, &args.optim, &args.methods, args.seed, &args.out)?;
    print_summary(&result, &args.out);
    Ok(())
}

/// The summary table and the plot's path.
pub fn print_summary(result: &SweepResult, out: &Path) {
    println!();
    println!("{:<18} {:>8} {:>6} {:>8} {:>8} {:>12}", "best trade-off", "lambda", "step", "source", "target", "hypervolume");
    for s in result.summary() {
        let lambda = s.best.lambda.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<18} {:>8} {:>6} {:>8.3} {:>8.3} {:>12.4}",
            s.method, lambda, s.best.step, s.best.source_score, s.best.target_score, s.hypervolume
        );
    }
    println!("\nplot: {} and {}", out.join("pareto.png").display(), out.join("pareto.svg").display());
}

/// Flags of `lalora demo`. The defaults are the bundled demo's settings.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The bundled model (rebuild it with `lalora pretrain`).
    #[arg(long, default_value = "models/tiny")]
    model: PathBuf,
    /// Output directory (tasks, results, plot).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Four steps on a few records: checks the pipeline in seconds; the numbers mean nothing.
    #[arg(long)]
    quick: bool,
    /// Optimiser steps of every run.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Peak learning rate (a model this small wants a large one).
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// Adapter init: `offset` (A and B random, function unchanged) or `peft` (B = 0, where the
    /// prior constrains B only).
    #[arg(long, default_value = "offset", value_parser = ["offset", "peft"])]
    init: String,
    /// Methods, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lora,l2,lalora-diag,lalora-kfac")]
    methods: Vec<String>,
    /// Lambdas of the lalora methods.
    #[arg(long = "lambda", value_delimiter = ',', default_value = "1,10")]
    lambdas: Vec<f64>,
    /// Lambdas of the l2 baseline.
    #[arg(long = "l2-lambda", value_delimiter = ',', default_value = "0.1,1")]
    l2_lambdas: Vec<f64>,
    /// Seed of tasks, adapters, data order and label sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `lalora demo`: tasks, priors, sweep, table, plot and a reading of the plot.
pub fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let sizes = if args.quick { TaskSizes::tiny() } else { TaskSizes::default() };
    let tasks = write_tasks(&args.out.join("tasks"), args.seed, &sizes)?;
    let laplace_data: Vec<PathBuf> = tasks.sources.iter().map(|(_, train, _)| train.clone()).collect();
    let source_eval: Vec<PathBuf> = tasks.sources.iter().map(|(_, _, eval)| eval.clone()).collect();
    let files = SweepFiles {
        model: &args.model,
        train: &tasks.target_train,
        laplace_data: &laplace_data,
        source_eval: &source_eval,
        target_eval: std::slice::from_ref(&tasks.target_eval),
    };
    let lora = LoraArgs {
        rank: 8,
        alpha: 16.0,
        rslora: false,
        lora_dropout: 0.0,
        targets: lalora::lora::ALL_TARGETS.iter().map(|t| t.to_string()).collect(),
        init: args.init.clone(),
    };
    let optim = OptimArgs {
        steps: if args.quick { 4 } else { args.steps },
        batch_size: 16,
        grad_accum: 1,
        lr: args.lr,
        warmup: 20,
        schedule: "cosine".into(),
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        clip: 1.0,
        max_len: 128,
        eval_every: 0,
    };
    let methods = MethodArgs {
        methods: args.methods.clone(),
        lambdas: args.lambdas.clone(),
        l2_lambdas: args.l2_lambdas.clone(),
        lora_eval_points: 3,
        fisher: "mc".into(),
        laplace_batches: 2,
        laplace_batch_size: 16,
        prior_precision: 0.0,
    };
    println!(
        "demo: {} steps per run, lr {}, rank 8 ({} init), methods {}, lambda {:?}, l2 lambda {:?}",
        optim.steps,
        optim.lr,
        args.init,
        args.methods.join(","),
        args.lambdas,
        args.l2_lambdas
    );
    let result = sweep(&files, &lora, &optim, &methods, args.seed, &args.out)?;
    print_summary(&result, &args.out);
    println!("\n{}", reading(&result));
    println!("\nwall time by stage:");
    for (stage, seconds) in &result.stage_seconds {
        println!("  {stage:<36} {seconds:>7.1} s");
    }
    println!("  {:<36} {:>7.1} s", "total (with task generation and loading)", start.elapsed().as_secs_f64());
    Ok(())
}

/// A paragraph that reads the plot from the numbers.
pub fn reading(result: &SweepResult) -> String {
    let summary = result.summary();
    let base = &result.rows[0];
    let mut text = format!(
        "Before fine-tuning the model scores {:.1}% on the source skills and {:.1}% on the target.",
        100.0 * base.source_score,
        100.0 * base.target_score
    );
    if let Some(lora) = summary.iter().find(|s| s.method == "lora") {
        let last = result.rows.iter().rev().find(|r| r.method == "lora").expect("lora rows");
        text += &format!(
            " Plain LoRA reaches {:.1}% on the target while source accuracy moves to {:.1}% (frontier area {:.3}).",
            100.0 * last.target_score,
            100.0 * last.source_score,
            lora.hypervolume
        );
    }
    let best = summary.iter().max_by(|a, b| a.hypervolume.total_cmp(&b.hypervolume));
    if let Some(best) = best {
        text += &format!(" The largest frontier area is {}'s ({:.3}).", best.method, best.hypervolume);
    }
    for s in summary.iter().filter(|s| s.method.starts_with("lalora")) {
        let others: Vec<&str> = summary.iter().filter(|o| !o.method.starts_with("lalora") && o.hypervolume > s.hypervolume).map(|o| o.method.as_str()).collect();
        let mut rows: Vec<_> = result.rows.iter().filter(|r| r.method == s.method).collect();
        rows.sort_by(|a, b| a.lambda.unwrap_or(0.0).total_cmp(&b.lambda.unwrap_or(0.0)));
        let monotone = rows.windows(2).all(|w| w[1].source_score >= w[0].source_score - 1e-9);
        text += &format!(
            " {}: best trade-off {:.1}% source at {:.1}% target (lambda {}); {}; source accuracy {} as lambda grows.",
            s.method,
            100.0 * s.best.source_score,
            100.0 * s.best.target_score,
            s.best.lambda.map(|l| l.to_string()).unwrap_or_default(),
            if others.is_empty() { "its frontier is not below any baseline's".to_string() } else { format!("its frontier is below {}'s", others.join(" and ")) },
            if monotone { "never falls" } else { "is not monotone" },
        );
    }
    text
}
