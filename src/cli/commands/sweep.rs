//! `lalora sweep` and `lalora demo`: train every (method, lambda) setting, score source and
//! target sets, and write `results.csv`, `results.json` and the Pareto plot.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use lalora::curvature::Estimator;
use lalora::demo::{run_demo, DemoConfig};
use lalora::io::hub::resolve_model;
use lalora::io::write_json_atomic;
use lalora::seeds::SeededSweep;
use lalora::sweep::{sweep_files, ResultRow, SweepConfig, SweepFiles, SweepMethod, SweepPenalty};
use lalora::train::Penalty;
use lalora::LaplaceConfig;

use crate::cli::ranges::{at_least_one, non_negative, positive};
use crate::cli::{max_len, DataArgs, FisherKind, Flags, LoraArgs, OptimArgs, AB};

/// A method of a sweep.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodName {
    /// Plain LoRA (evaluated at several steps: its early-stopping frontier).
    Lora,
    /// Isotropic penalty around the starting adapters.
    L2,
    /// Laplace penalty, diagonal curvature.
    LaloraDiag,
    /// Laplace penalty, B-KFAC.
    LaloraKfac,
    /// Laplace penalty, B-Tri-KFAC.
    LaloraTriKfac,
}

impl MethodName {
    fn penalty(self) -> SweepPenalty {
        match self {
            MethodName::Lora => SweepPenalty::Lora,
            MethodName::L2 => SweepPenalty::L2,
            MethodName::LaloraDiag => SweepPenalty::Laplace(Estimator::Diag),
            MethodName::LaloraKfac => SweepPenalty::Laplace(Estimator::Kfac),
            MethodName::LaloraTriKfac => SweepPenalty::Laplace(Estimator::TriKfac),
        }
    }
}

/// Which methods and lambdas to sweep.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Methods, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lora,l2,lalora-diag,lalora-kfac")]
    pub methods: Vec<MethodName>,
    /// Lambdas for the lalora methods. Example: `--lambda 1,10,100`.
    #[arg(long = "lambda", value_delimiter = ',', default_value = "1,10,100", value_parser = positive)]
    pub lambdas: Vec<f64>,
    /// Lambdas for the isotropic `l2` baseline (its penalty has another scale).
    #[arg(long = "l2-lambda", value_delimiter = ',', default_value = "0.1,1,10", value_parser = positive)]
    pub l2_lambdas: Vec<f64>,
    /// Evaluations along the plain-LoRA run (its early-stopping frontier). Default: as many as
    /// the largest lambda grid, so every frontier has as many points.
    #[arg(long, value_parser = at_least_one)]
    pub lora_eval_points: Option<usize>,
    /// Fisher labels for the priors.
    #[arg(long, value_enum, default_value_t = FisherKind::Mc)]
    pub fisher: FisherKind,
    /// Monte-Carlo label draws per token for the priors (with --fisher mc).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub laplace_samples: usize,
    /// Batches per source set for the priors (the paper uses two).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    pub laplace_batches: usize,
    /// Sequences per Laplace batch.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub laplace_batch_size: usize,
    /// delta in the prior precision F + delta I.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub prior_precision: f64,
}

impl MethodArgs {
    fn methods(&self) -> Vec<SweepMethod> {
        self.methods
            .iter()
            .map(|m| {
                let penalty = m.penalty();
                let lambdas = match penalty {
                    SweepPenalty::Lora => vec![],
                    SweepPenalty::L2 => self.l2_lambdas.clone(),
                    SweepPenalty::Laplace(_) => self.lambdas.clone(),
                };
                SweepMethod { penalty, lambdas }
            })
            .collect()
    }
}

/// Flags of `lalora sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// HF model directory (with tokenizer.json), or a model id in the HF cache.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    lora: LoraArgs,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    methods: MethodArgs,
    /// Target training data (JSONL or parquet).
    #[arg(long)]
    train: PathBuf,
    #[command(flatten)]
    fields: DataArgs,
    /// Source data for the priors (JSONL text); repeat per source set.
    #[arg(long, required = true)]
    laplace_data: Vec<PathBuf>,
    /// Held-out source evaluation set; repeat.
    #[arg(long, required = true)]
    source_eval: Vec<PathBuf>,
    /// Held-out target evaluation set; repeat.
    #[arg(long, required = true)]
    target_eval: Vec<PathBuf>,
    /// Seeds, comma-separated: each runs the whole sweep with its own adapter init, data order,
    /// dropout, Laplace batches and label sampling; every point is reported as mean +- standard
    /// error over them. Example: `--seeds 0,1,2`.
    #[arg(long, alias = "seed", value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Output directory: results.csv (every seed), points.csv (mean and s.e. per point),
    /// results.json, pareto.svg/png, and run.json (the resolved flags). A setting that diverges
    /// is kept in the results, marked `diverged`.
    #[arg(long)]
    out: PathBuf,
    /// Read flags from JSON or YAML files (keys are flag names); flags given here override
    /// them.
    #[arg(long)]
    config: Vec<PathBuf>,
}

/// Prints one row of the running table.
fn print_row(r: &ResultRow) {
    let lambda = r.lambda.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
    if let Some(reason) = &r.diverged {
        println!("{:<18} {:>5} {:>8} diverged: {reason}", r.method, r.seed, lambda);
        return;
    }
    println!("{:<18} {:>5} {:>8} {:>6} {:>8.3} {:>8.3}", r.method, r.seed, lambda, r.step, r.source_score, r.target_score);
}

fn print_header() {
    println!("{:<18} {:>5} {:>8} {:>6} {:>8} {:>8}", "method", "seed", "lambda", "step", "source", "target");
}

/// Runs `lalora sweep`.
pub fn run(args: SweepArgs, flags: &Flags) -> anyhow::Result<()> {
    let model = resolve_model(&args.model)?;
    let model_config = lalora::LlamaConfig::from_file(&model.join("config.json"))?;
    let max_len = max_len(args.optim.max_len, 512, &model_config, &model)?;
    let files = SweepFiles {
        model,
        train: args.train.clone(),
        laplace_data: args.laplace_data.clone(),
        source_eval: args.source_eval.clone(),
        target_eval: args.target_eval.clone(),
        fields: args.fields.field.clone(),
    };
    let m = &args.methods;
    let seed = args.seeds.first().copied().unwrap_or(0);
    let config = SweepConfig {
        lora: args.lora.config(seed),
        methods: m.methods(),
        train: args.optim.train_config(Penalty::None, max_len, seed, 0, 32, 48),
        lora_eval_points: m.lora_eval_points,
        laplace: LaplaceConfig::new()
            .with_fisher(m.fisher.fisher(m.laplace_samples))
            .with_batches_per_source(m.laplace_batches)
            .with_batch_size(m.laplace_batch_size)
            .with_max_len(max_len)
            .with_prior_precision(m.prior_precision)
            .with_seed(seed),
        seed,
        progress: true,
    };
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds needs at least one seed");
    config.train.validate()?;
    config.laplace.validate()?;
    std::fs::create_dir_all(&args.out).map_err(|e| lalora::Error::io(&args.out, e))?;
    write_json_atomic(&args.out.join("run.json"), flags)?;
    print_header();
    let result = sweep_files::<AB>(&files, &config, &args.seeds, &lalora_backends::device(), print_row)?;
    result.write(&args.out)?;
    print_summary(&result, &args.out);
    Ok(())
}

/// The points over seeds (when there are several), the summary table and the plot's path.
fn print_summary(result: &SeededSweep, out: &Path) {
    let seeds = result.seeds.len();
    if seeds > 1 {
        println!("\nmean +- standard error over {seeds} seeds {:?}:", result.seeds);
        println!("{:<18} {:>8} {:>6} {:>16} {:>16}", "method", "lambda", "step", "source", "target");
        for p in result.points() {
            let lambda = p.lambda.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
            println!("{:<18} {:>8} {:>6} {:>16} {:>16}", p.method, lambda, p.step, p.source.display(3), p.target.display(3));
        }
    }
    println!();
    println!(
        "{:<18} {:>8} {:>6} {:>16} {:>16} {:>16} {:>18}",
        "best trade-off", "lambda", "step", "source", "target", "frontier area", "95% interval"
    );
    for s in result.summary() {
        let lambda = s.best.lambda.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        let interval = if seeds > 1 { format!("[{:.3}, {:.3}]", s.hypervolume_interval.0, s.hypervolume_interval.1) } else { "-".into() };
        println!(
            "{:<18} {:>8} {:>6} {:>16} {:>16} {:>16} {:>18}",
            s.method,
            lambda,
            s.best.step,
            s.best.source.display(3),
            s.best.target.display(3),
            s.hypervolume.display(4),
            interval
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
    #[arg(long, default_value_t = 300, value_parser = at_least_one)]
    steps: usize,
    /// Peak learning rate (a model this small wants a large one).
    #[arg(long, default_value_t = 5e-3, value_parser = positive)]
    lr: f64,
    /// Adapter init: `offset` (A and B random, function unchanged) or `peft` (B = 0, where the
    /// prior constrains B only).
    #[arg(long, value_enum, default_value_t = lalora::LoraInit::Offset)]
    init: lalora::LoraInit,
    /// Methods, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lora,l2,lalora-diag,lalora-kfac")]
    methods: Vec<MethodName>,
    /// Lambdas of the lalora methods.
    #[arg(long = "lambda", value_delimiter = ',', default_value = "1,10", value_parser = positive)]
    lambdas: Vec<f64>,
    /// Lambdas of the l2 baseline.
    #[arg(long = "l2-lambda", value_delimiter = ',', default_value = "0.1,1", value_parser = positive)]
    l2_lambdas: Vec<f64>,
    /// Training seeds, comma-separated (adapter init, data order, dropout, Laplace batches,
    /// label sampling); several give mean +- standard error. The tasks do not change.
    #[arg(long, alias = "seed", value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Seed of the tasks' invented world. Default: the model's pretraining seed
    /// (`pretrain.json`); any other is refused, since the model knows only that world.
    #[arg(long)]
    task_seed: Option<u64>,
    /// Batches of 16 sequences per source skill for the priors (the paper uses two).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    laplace_batches: usize,
    /// Monte-Carlo label draws per token for the priors.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    laplace_samples: usize,
}

/// Runs `lalora demo`: tasks, priors, sweep, table, plot and a reading of the plot.
pub fn run_demo_command(args: DemoArgs) -> anyhow::Result<()> {
    let config = DemoConfig {
        model: args.model,
        out: args.out,
        quick: args.quick,
        steps: args.steps,
        lr: args.lr,
        init: args.init,
        methods: args.methods.iter().map(|m| m.penalty()).collect(),
        lambdas: args.lambdas,
        l2_lambdas: args.l2_lambdas,
        seeds: args.seeds,
        task_seed: args.task_seed,
        laplace_batches: args.laplace_batches,
        laplace_samples: args.laplace_samples,
    };
    anyhow::ensure!(!config.seeds.is_empty(), "--seeds needs at least one seed");
    let sweep = config.sweep();
    println!(
        "demo: tasks from seed {}, training seeds {:?}, {} steps per run, lr {}, rank {} ({:?} init), methods {}, lambda {:?}, l2 lambda {:?}",
        config.resolved_task_seed()?,
        config.seeds,
        sweep.train.schedule.steps,
        config.lr,
        sweep.lora.rank,
        config.init,
        sweep.methods.iter().map(SweepMethod::label).collect::<Vec<_>>().join(","),
        config.lambdas,
        config.l2_lambdas
    );
    print_header();
    let outcome = run_demo::<AB>(&config, &lalora_backends::device(), print_row)?;
    print_summary(&outcome.result, &config.out);
    println!("\n{}", outcome.reading);
    println!("\nwall time by stage:");
    for (stage, seconds) in &outcome.result.stage_seconds() {
        println!("  {stage:<36} {seconds:>7.1} s");
    }
    println!("  {:<36} {:>7.1} s", "total (with task generation and loading)", outcome.seconds);
    Ok(())
}
