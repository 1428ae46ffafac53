//! Command-line front end. The library computes; this module parses flags, picks the backend
//! chosen at compile time (`lalora_backends::Backend`) and renders reports.

mod args;
mod commands;
mod ranges;

use clap::{ArgMatches, CommandFactory, Parser, Subcommand};

pub use args::*;

/// The flags a subcommand settled on (defaults included), as `--config` files read them:
/// written to run directories so a run can be repeated from its own `run.json`.
pub type Flags = serde_json::Map<String, serde_json::Value>;

/// The resolved flags of the subcommand in `matches`.
pub fn resolved_flags(matches: &ArgMatches) -> Flags {
    let Some((name, sub_matches)) = matches.subcommand() else { return Flags::new() };
    let command = Cli::command();
    let sub = command.find_subcommand(name).expect("clap matched this subcommand");
    lalora::run_config::resolved_config(sub, sub_matches)
}

/// The backend this binary was built for (cargo features `flex`, `ndarray`, `wgpu`, `cuda`).
pub type B = lalora_backends::Backend;
/// The same backend with autodiff, for training and fitting.
pub type AB = lalora_backends::AutodiffBackend;

/// LoRA fine-tuning of Llama models without forgetting (LaLoRA, arXiv 2512.17720).
#[derive(Parser, Debug)]
#[command(name = "lalora", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score JSONL text with a model (and adapter): NLL per token and perplexity.
    #[command(allow_negative_numbers = true)]
    Eval(commands::eval::EvalArgs),
    /// Generate text from a prompt, greedily or by sampling, with the KV cache.
    #[command(allow_negative_numbers = true)]
    Generate(commands::generate::GenerateArgs),
    /// Fit the Laplace prior over the LoRA weights on source data (Diag, B-KFAC, B-Tri-KFAC).
    #[command(allow_negative_numbers = true)]
    Laplace(commands::laplace::LaplaceArgs),
    /// Write the bundled synthetic source skills and arithmetic target task as JSONL.
    #[command(allow_negative_numbers = true)]
    Tasks(commands::tasks::TasksArgs),
    /// Build the bundled tiny model: tasks, BPE tokenizer, full-parameter pretraining.
    #[command(allow_negative_numbers = true)]
    Pretrain(commands::pretrain::PretrainArgs),
    /// Fine-tune LoRA adapters: plain, with an isotropic penalty, or with the Laplace prior.
    #[command(allow_negative_numbers = true)]
    Train(commands::train::TrainArgs),
    /// Train every (method, lambda) setting and compare learning and forgetting (CSV, JSON, plot).
    #[command(allow_negative_numbers = true)]
    Sweep(commands::sweep::SweepArgs),
    /// The bundled end-to-end run: tasks, priors, a small sweep, table, plot and its reading.
    #[command(allow_negative_numbers = true)]
    Demo(commands::sweep::DemoArgs),
    /// Memory each curvature needs for a model config and LoRA shape.
    #[command(allow_negative_numbers = true)]
    Memory(commands::memory::MemoryArgs),
    /// Measure one LoRA training step (tokens/s, peak memory) on a model preset.
    #[command(allow_negative_numbers = true)]
    Bench(commands::bench::BenchArgs),
    /// Fold a PEFT adapter into its base model and write a plain HF checkpoint (sharded safetensors).
    Merge(commands::merge::MergeArgs),
    /// Draw training curves (loss, penalty, learning rate, eval scores) of run directories.
    Plot(commands::plot::PlotArgs),
}

/// Runs the parsed command; `flags` are its resolved flags (see [`resolved_flags`]).
pub fn run(cli: Cli, flags: Flags) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Laplace(args) => commands::laplace::run(args, &flags),
        Command::Tasks(args) => commands::tasks::run(args),
        Command::Pretrain(args) => commands::pretrain::run(args),
        Command::Train(args) => commands::train::run(args, &flags),
        Command::Sweep(args) => commands::sweep::run(args, &flags),
        Command::Demo(args) => commands::sweep::run_demo_command(args),
        Command::Memory(args) => commands::memory::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Plot(args) => commands::plot::run(args),
    }
}
