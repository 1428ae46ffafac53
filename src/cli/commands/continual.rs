//! `lalora continual`: learn a list of target tasks in order with sequential LoRA and the two
//! LaLoRA variants, and write the retention matrix (score on every source and target after
//! every stage) per seed and averaged over seeds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use lalora::continual::{
    aggregate, run_continual, write_matrices, ContinualConfig, ContinualData, ContinualMethod, ContinualResult, ContinualTarget,
};
use lalora::curvature::Estimator;
use lalora::data::lm_sequences_with;
use lalora::eval::load_eval_set_with;
use lalora::io::hub::resolve_model;
use lalora::io::{read_json, write_json_atomic};
use lalora::tasks::{write_tasks, TaskSizes};
use lalora::train::Penalty;
use lalora::{AdapterSource, LaLoRA, LaplaceConfig, SourceData, Tokenizer};

use crate::cli::{max_len, DataArgs, FisherKind, Flags, LoraArgs, OptimArgs, AB};

/// Flags of `lalora continual`.
#[derive(Args, Debug)]
pub struct ContinualArgs {
    /// HF model directory (with tokenizer.json), or a model id in the HF cache.
    #[arg(long, default_value = "models/tiny")]
    model: String,
    #[command(flatten)]
    lora: LoraArgs,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    fields: DataArgs,
    /// A directory in `lalora tasks` layout to take the bundled tasks from. Without it (and
    /// without --target), the bundled tasks are generated into OUT/tasks (seed 0, the world the
    /// bundled model was pretrained on).
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Bundled targets to learn, in order (from the tasks directory). (Not `--targets`: that
    /// flag names the adapted projections.)
    #[arg(long, value_delimiter = ',', default_value = "arithmetic,envoys,trade")]
    sequence: Vec<String>,
    /// Bundled source skills (their `.train` files fit the source prior, their `.eval` files
    /// measure forgetting).
    #[arg(long, value_delimiter = ',', default_value = "facts,strings,grammar")]
    sources: Vec<String>,
    /// A target of your own instead of the bundled ones: `TRAIN_FILE,EVAL_FILE`; repeat, in
    /// learning order.
    #[arg(long = "target", value_name = "TRAIN,EVAL")]
    target_files: Vec<String>,
    /// Source data for the source prior (with --target); repeat.
    #[arg(long)]
    laplace_data: Vec<PathBuf>,
    /// Held-out source evaluation set (with --target); repeat.
    #[arg(long)]
    source_eval: Vec<PathBuf>,
    /// Methods, comma-separated: sequential LoRA, LaLoRA with the source prior only, LaLoRA
    /// with the prior accumulated over the targets.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lora,lalora-source,lalora-accumulated")]
    methods: Vec<ContinualMethod>,
    /// lambda of both LaLoRA methods.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// gamma: after each stage the accumulated prior's older part is multiplied by it.
    #[arg(long, default_value_t = 1.0)]
    decay: f64,
    /// The curvature of every prior.
    #[arg(long, value_enum, default_value_t = Estimator::Kfac)]
    curvature: Estimator,
    /// Fisher labels of every prior.
    #[arg(long, value_enum, default_value_t = FisherKind::Mc)]
    fisher: FisherKind,
    /// Batches per data set for every prior.
    #[arg(long, default_value_t = 2)]
    laplace_batches: usize,
    /// Sequences per Laplace batch.
    #[arg(long, default_value_t = 16)]
    laplace_batch_size: usize,
    /// delta in each fit's F + delta I.
    #[arg(long, default_value_t = 0.0)]
    prior_precision: f64,
    /// Seeds (adapter init, data order, label sampling); one run per seed, then the means.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Generation tokens at most per evaluation item.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Keep the results of seeds already in OUT (seed-N/retention.json) instead of rerunning
    /// them; the settings must be the same (run.json is compared).
    #[arg(long)]
    resume: bool,
    /// Output directory: seed-N/retention.{csv,json,svg,png} per seed, retention-mean.{csv,svg,png}
    /// and summary.json over seeds, run.json (the resolved flags).
    #[arg(long)]
    out: PathBuf,
    /// Read flags from JSON or YAML files (keys are flag names); flags given here override
    /// them.
    #[arg(long)]
    config: Vec<PathBuf>,
}

/// The files a run reads: per target (name, train, eval), Laplace sources, source evals.
struct Files {
    targets: Vec<(String, PathBuf, PathBuf)>,
    laplace_data: Vec<PathBuf>,
    source_eval: Vec<PathBuf>,
}

fn files(args: &ContinualArgs) -> anyhow::Result<Files> {
    if !args.target_files.is_empty() {
        let targets = args
            .target_files
            .iter()
            .map(|spec| {
                let (train, eval) = spec.split_once(',').with_context(|| format!("--target {spec}: expected TRAIN_FILE,EVAL_FILE"))?;
                let name = Path::new(eval).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let name = name.strip_suffix(".eval").or_else(|| name.strip_suffix(".test")).unwrap_or(&name).to_string();
                Ok((name, PathBuf::from(train), PathBuf::from(eval)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Files { targets, laplace_data: args.laplace_data.clone(), source_eval: args.source_eval.clone() });
    }
    let dir = match &args.tasks {
        Some(dir) => dir.clone(),
        None => {
            let dir = args.out.join("tasks");
            write_tasks(&dir, 0, &TaskSizes::default())?;
            dir
        }
    };
    let file = |name: String| {
        let path = dir.join(name);
        anyhow::ensure!(path.exists(), "{} does not exist (write the bundled tasks with `lalora tasks --out DIR`)", path.display());
        Ok(path)
    };
    let targets = args
        .sequence
        .iter()
        .map(|t| Ok((t.clone(), file(format!("target-{t}.train.jsonl"))?, file(format!("target-{t}.test.jsonl"))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let laplace_data = args.sources.iter().map(|s| file(format!("source-{s}.train.jsonl"))).collect::<anyhow::Result<Vec<_>>>()?;
    let source_eval = args.sources.iter().map(|s| file(format!("source-{s}.eval.jsonl"))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Files { targets, laplace_data, source_eval })
}

/// Runs `lalora continual`.
pub fn run(args: ContinualArgs, flags: &Flags) -> anyhow::Result<()> {
    let clock = Instant::now();
    let device = lalora_backends::device();
    let model_dir = resolve_model(&args.model)?;
    std::fs::create_dir_all(&args.out).map_err(|e| lalora::Error::io(&args.out, e))?;
    let run_json = args.out.join("run.json");
    if args.resume && run_json.exists() {
        let mut saved: Flags = read_json(&run_json)?;
        let mut now = flags.clone();
        for f in [&mut saved, &mut now] {
            f.remove("seeds");
            f.remove("resume");
        }
        anyhow::ensure!(saved == now, "--resume: {} was written with other settings; use another --out", run_json.display());
    }
    write_json_atomic(&run_json, flags)?;

    let files = files(&args)?;
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    let chat = DataArgs::chat_template(&model_dir)?;
    let base = LaLoRA::<AB>::load(&model_dir, AdapterSource::None, &device).with_context(|| format!("loading {}", model_dir.display()))?;
    let eos = base.model.config.eos_token_ids.first().copied();
    let max_len = max_len(args.optim.max_len, 512, &base.model.config, &model_dir)?;
    let read = args.fields.options(max_len, eos, chat.as_ref());
    let laplace_sources =
        files.laplace_data.iter().map(|p| SourceData::read_with(p, &tokenizer, &read)).collect::<lalora::Result<Vec<_>>>()?;
    let source_evals = files.source_eval.iter().map(|p| load_eval_set_with(p, &tokenizer, &read)).collect::<lalora::Result<Vec<_>>>()?;
    let targets = files
        .targets
        .iter()
        .map(|(name, train, eval)| {
            Ok(ContinualTarget {
                name: name.clone(),
                train: lm_sequences_with(train, &tokenizer, &read)?,
                eval: load_eval_set_with(eval, &tokenizer, &read)?,
            })
        })
        .collect::<lalora::Result<Vec<_>>>()?;
    let data = ContinualData { tokenizer: &tokenizer, laplace_sources: &laplace_sources, source_evals: &source_evals, targets: &targets };

    println!(
        "continual: targets {}, methods {}, lambda {}, decay {}, {} prior, {} steps per stage, seeds {:?}",
        targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(" -> "),
        args.methods.iter().map(|m| m.label()).collect::<Vec<_>>().join(","),
        args.lambda,
        args.decay,
        args.curvature.name(),
        args.optim.steps,
        args.seeds
    );
    let task_names: Vec<String> = source_evals.iter().map(|s| s.name.clone()).chain(targets.iter().map(|t| t.name.clone())).collect();
    let mut runs: Vec<ContinualResult> = Vec::new();
    for &seed in &args.seeds {
        let dir = args.out.join(format!("seed-{seed}"));
        let saved = dir.join("retention.json");
        if args.resume && saved.exists() {
            let value: serde_json::Value = read_json(&saved)?;
            let result: ContinualResult =
                serde_json::from_value(value["result"].clone()).map_err(|source| lalora::Error::Json { path: saved.clone(), source })?;
            println!("seed {seed}: kept from {}", saved.display());
            runs.push(result);
            continue;
        }
        let config = ContinualConfig {
            methods: args.methods.clone(),
            train: args.optim.train_config(Penalty::None, max_len, seed, 0, 32, args.max_new_tokens),
            lambda: args.lambda,
            decay: args.decay,
            laplace: LaplaceConfig::new()
                .with_estimator(args.curvature)
                .with_fisher(args.fisher.fisher(1))
                .with_batches_per_source(args.laplace_batches)
                .with_batch_size(args.laplace_batch_size)
                .with_max_len(max_len)
                .with_prior_precision(args.prior_precision)
                .with_seed(seed),
            progress: true,
        };
        let start = LaLoRA::from_model(base.model.clone(), AdapterSource::Fresh(args.lora.config(seed)))?;
        println!("\nseed {seed}");
        println!("{:<20} {:<12} {}", "method", "after", task_names.iter().map(|n| format!("{n:>18}")).collect::<String>());
        let result = run_continual(&start, &data, &config, |method, stage, scores| {
            println!("{method:<20} {stage:<12} {}", scores.iter().map(|s| format!("{s:>18.3}")).collect::<String>());
        })?;
        result.write(&dir)?;
        runs.push(result);
    }

    let (means, stats) = aggregate(&runs);
    write_matrices(&means, &args.out, "retention-mean")?;
    write_json_atomic(
        &args.out.join("summary.json"),
        &serde_json::json!({ "seeds": args.seeds, "mean_matrices": means, "statistics": stats }),
    )?;
    println!("\nover {} seed(s): mean (std) of the final row", runs.len());
    println!("{:<20} {:>16} {:>16} {:>16} {:>18}", "method", "average final", "targets", "sources", "target forgetting");
    for s in &stats {
        let cell = |m: f64, d: f64| format!("{m:.3} ({d:.3})");
        println!(
            "{:<20} {:>16} {:>16} {:>16} {:>18}",
            s.method,
            cell(s.mean.average_final, s.std.average_final),
            cell(s.mean.average_final_targets, s.std.average_final_targets),
            cell(s.mean.average_final_sources, s.std.average_final_sources),
            cell(s.mean.target_forgetting, s.std.target_forgetting)
        );
    }
    println!(
        "\nplot: {} (per seed: {}/seed-N/retention.png); {:.1} min",
        args.out.join("retention-mean.png").display(),
        args.out.display(),
        clock.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
