//! Command-line front end. The library computes; this module parses flags, picks the backend
//! chosen at compile time (`lalora_backends::Backend`) and renders reports.

mod args;
mod commands;

use clap::{Parser, Subcommand};

pub use args::*;

/// The backend this binary was built for (cargo features `flex`, `ndarray`, `wgpu`, `cuda`).
pub type B = lalora_backends::Backend;

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
    Eval(commands::eval::EvalArgs),
    /// Generate text from a prompt, greedily or by sampling, with the KV cache.
    Generate(commands::generate::GenerateArgs),
    /// Fit the Laplace prior over the LoRA weights on source data (Diag, B-KFAC, B-Tri-KFAC).
    Laplace(commands::laplace::LaplaceArgs),
    /// Measure one LoRA training step (tokens/s, peak memory) on a model preset.
    Bench(commands::bench::BenchArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Laplace(args) => commands::laplace::run(args),
        Command::Bench(args) => commands::bench::run(args),
    }
}
