//! `lalora train`: LoRA fine-tuning with no penalty (`lora`), an isotropic one (`l2`) or the
//! Laplace prior (`lalora`).

use std::path::PathBuf;

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, ValueEnum};
use lalora::data::lm_sequences_with;
use lalora::eval::load_eval_set_with;
use lalora::io::hash::hash_file;
use lalora::io::write_json_atomic;
use lalora::posterior::{target_tokens, LambdaSetting};
use lalora::train::{open_run_dir, Penalty, TrainControl, TrainData};
use lalora::{AdapterSource, LaLoRA, Tokenizer};

use crate::cli::dist::{self, DistArgs};
use crate::cli::ranges::at_least_one;
use crate::cli::{max_len, DataArgs, Flags, LoraArgs, ModelArgs, OptimArgs, AB};

/// How the adapters are regularised.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Plain LoRA, no penalty.
    Lora,
    /// `lambda/2 |theta - theta0|^2` around the starting adapters.
    L2,
    /// The Laplace penalty of the prior in `--laplace`.
    Lalora,
}

/// A setting `--resume --allow-change` may change.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changeable {
    /// `--lr`, the peak learning rate (the rest of the schedule scales with it).
    Lr,
    /// `--lambda`, the penalty strength.
    Lambda,
}

impl Changeable {
    /// The setting's path in the run's `config.json`.
    fn path(self) -> &'static str {
        match self {
            Changeable::Lr => "train.schedule.lr",
            Changeable::Lambda => "train.penalty.lambda",
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
    /// Training data, JSONL or parquet: `text`, `prompt` + `completion` (loss on the
    /// completion), or `messages` rendered with the model's chat template (loss on the
    /// assistant turns).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    fields: DataArgs,
    /// The regulariser.
    #[arg(long, value_enum, default_value_t = Method::Lora)]
    method: Method,
    /// A `lalora laplace` output directory; training starts from its anchor adapters.
    #[arg(long, required_if_eq("method", "lalora"), conflicts_with = "adapter")]
    laplace: Option<PathBuf>,
    /// Penalty strength lambda (needed by l2 and lalora). Example: `--lambda 1000`. With
    /// `--method lalora`, `--lambda posterior` sets the Bayesian value N_src / N_tgt (the
    /// prior's source tokens over the training set's loss tokens; README "How to read lambda").
    #[arg(long, default_value = "0")]
    lambda: LambdaSetting,
    /// Evaluation file, scored during and after training; repeat for several.
    #[arg(long)]
    eval: Vec<PathBuf>,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Recompute each decoder layer in the backward instead of keeping its activations:
    /// activation memory of one layer plus each layer's input, about 1.3-1.5x the step time.
    /// Not with adapter dropout.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Continue the run in --out from its last checkpoint (same settings and inputs required).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Start over in an --out that already holds a run, deleting that run's files.
    #[arg(long)]
    force: bool,
    /// With --resume: let this setting differ from the run's (`lr` or `lambda`, repeatable),
    /// to continue a stopped run from its last good checkpoint with a new value.
    #[arg(long, value_enum, requires = "resume")]
    allow_change: Vec<Changeable>,
    /// Stop after this many steps in total (with a checkpoint), to continue later with --resume.
    #[arg(long, value_parser = at_least_one)]
    stop_after: Option<usize>,
    /// Seed of the adapter init, data order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: adapter/, checkpoint/, config.json (settings and input hashes, checked
    /// by --resume), log.jsonl, run.json (the resolved flags: `--config RUN/run.json` repeats
    /// the run), eval.json. Locked while the run writes it; a fresh run refuses a directory
    /// that holds one (see --resume, --force).
    #[arg(long)]
    out: PathBuf,
    /// Read flags from JSON or YAML files (keys are flag names); flags given here override
    /// them. Repeat for several, later files override earlier ones.
    #[arg(long)]
    config: Vec<PathBuf>,
    #[command(flatten)]
    dist: DistArgs,
}

/// Runs `lalora train`.
pub fn run(args: TrainArgs, flags: &Flags) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    anyhow::ensure!(
        args.lambda != LambdaSetting::Posterior || args.method == Method::Lalora,
        "--lambda posterior needs --method lalora (the prior's source tokens define it)"
    );
    anyhow::ensure!(args.laplace.is_none() || args.method == Method::Lalora, "--laplace is only used by --method lalora");
    anyhow::ensure!(
        args.method != Method::Lora || args.lambda == LambdaSetting::Value(0.0),
        "--lambda is only used by --method l2 or lalora"
    );
    // The directory is locked (and a fresh run refused in an existing one) before anything
    // is loaded; the lock is held until the adapter and eval.json are written.
    let _lock = open_run_dir(&args.out, args.resume, args.force)?;
    let adapters = match (&args.laplace, &args.model.adapter) {
        (Some(prior), _) => AdapterSource::Prior(prior.clone()),
        (None, Some(adapter)) => AdapterSource::Peft(adapter.clone()),
        (None, None) => AdapterSource::Fresh(args.lora.config(args.seed)),
    };
    let plan = args.dist.plan(&device, lalora_backends::NAME)?;
    if plan.is_some() {
        anyhow::ensure!(!args.resume && args.stop_after.is_none(), "--resume and --stop-after are single-device only for now");
    }
    let writes = plan.as_ref().is_none_or(|p| p.writes_outputs());
    let model_dir = args.model.dir()?;
    let lalora = LaLoRA::<AB>::load_with(&model_dir, adapters, args.model.dtype, &device)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let tokenizer = Tokenizer::for_model(&model_dir, lalora.model.config.vocab_size)?;
    let chat = DataArgs::chat_template(&model_dir)?;
    if let Some(meta) = lalora.prior.as_ref().and_then(|p| p.meta.as_ref()) {
        eprintln!("prior: {} ({} Fisher) on {} tokens, delta {}", meta.curvature.name(), meta.fisher, meta.tokens, meta.prior_precision);
    }
    let max_len = max_len(args.optim.max_len, 512, &lalora.model.config, &model_dir)?;
    let eos = lalora.model.config.eos_token_ids.first().copied();
    let read = args.fields.options(max_len, eos, chat.as_ref());
    let sequences = lm_sequences_with(&args.data, &tokenizer, &read)?;
    let lambda = match args.lambda {
        LambdaSetting::Value(v) => v,
        LambdaSetting::Posterior => {
            let source = lalora.prior.as_ref().and_then(|p| p.meta.as_ref()).map(|m| m.tokens);
            let target = target_tokens(&sequences);
            let lambda = args.lambda.resolve(source, target)?;
            eprintln!("lambda posterior = N_src / N_tgt = {} source tokens / {target} target tokens = {lambda:.6}", source.unwrap_or(0));
            lambda
        }
    };
    let penalty = match args.method {
        Method::Lora => Penalty::None,
        Method::L2 => Penalty::L2 { lambda },
        Method::Lalora => Penalty::Laplace { lambda },
    };
    let eval_sets = args.eval.iter().map(|p| load_eval_set_with(p, &tokenizer, &read)).collect::<lalora::Result<Vec<_>>>()?;
    let config = args
        .optim
        .train_config(penalty, max_len, args.seed, args.checkpoint_every, args.optim.batch_size, 64)
        .with_gradient_checkpointing(args.gradient_checkpointing);
    config.validate()?;
    // The files the run reads, by content, so a resume with another file is refused.
    let mut input_files = BTreeMap::from([("data".to_string(), hash_file(&args.data)?)]);
    if let Some(prior) = &args.laplace {
        input_files.insert("laplace".into(), hash_file(&prior.join("laplace.json"))?);
    }
    if let Some(adapter) = &args.model.adapter {
        input_files.insert("adapter".into(), hash_file(&adapter.join("adapter_model.safetensors"))?);
    }
    let data = TrainData { sequences: &sequences, eval_sets: &eval_sets, tokenizer: &tokenizer };
    let control = TrainControl {
        run_dir: Some(args.out.clone()),
        resume: args.resume,
        force: args.force,
        allow_changes: args.allow_change.iter().map(|c| c.path().to_string()).collect(),
        input_files,
        run_files: vec![("run.json".into(), serde_json::Value::Object(flags.clone()))],
        stop_after: args.stop_after,
        progress: true,
    };
    let (lalora, report) = match &plan {
        None => lalora.train(&data, &config, &control)?,
        Some(plan) => {
            eprintln!(
                "data parallel: {} peer(s) here, {} node(s), node rank {}{}",
                plan.devices.len(),
                plan.nodes,
                plan.node_rank,
                if plan.writes_outputs() { "" } else { " (node 0 writes the outputs)" }
            );
            if writes {
                write_json_atomic(&args.out.join("run.json"), flags)?;
            }
            dist::train(plan, lalora, &data, &config, &args.out)?
        }
    };
    if !writes {
        println!("node {}: {} steps done, final nll {:.4}", plan.as_ref().map_or(0, |p| p.node_rank), report.steps_done, report.last_loss);
        return Ok(());
    }
    if !report.finished(&config) {
        println!("stopped after step {}; continue with --resume", report.steps_done);
        return Ok(());
    }
    lalora.save_adapter(&args.out.join("adapter"))?;
    if let Some(last) = report.evals.last() {
        write_json_atomic(&args.out.join("eval.json"), last)?;
        for s in &last.scores {
            let metrics: Vec<String> = s.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("{:<28} {}", s.name, metrics.join(", "));
        }
    }
    let adapter = args.out.join("adapter");
    if report.tokens == 0 {
        // Resumed at its last step: nothing was left to train.
        println!(
            "the run had already finished its {} steps (final nll {:.4}) -> {}",
            config.schedule.steps,
            report.last_loss,
            adapter.display()
        );
        return Ok(());
    }
    println!(
        "{} steps, final nll {:.4}, {:.0} training tokens/s -> {}",
        config.schedule.steps,
        report.last_loss,
        report.tokens as f64 / report.train_seconds.max(1e-9),
        adapter.display()
    );
    Ok(())
}
