//! `lalora generate`: text from a prompt.

use anyhow::Context;
use clap::Args;
use lalora::generate::SamplingConfig;
use lalora::{LaLoRA, Tokenizer};

use crate::cli::{ModelArgs, B};

/// Flags of `lalora generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (BOS is added as the tokenizer's post-processor says).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy; otherwise sample from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass (with --temperature > 0). 1 = no truncation.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute every position at each step instead of using the KV cache (slow; for checks).
    #[arg(long)]
    no_cache: bool,
}

/// Runs `lalora generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.temperature >= 0.0, "--temperature must be >= 0");
    anyhow::ensure!(args.top_p > 0.0 && args.top_p <= 1.0, "--top-p must be in (0, 1]");
    let device = lalora_backends::device();
    let tokenizer = Tokenizer::from_dir(&args.model.model)?;
    let model = LaLoRA::<B>::load(&args.model.model, args.model.adapters(), &device)
        .with_context(|| format!("loading {}", args.model.model.display()))?;
    let prompt = tokenizer.encode(&args.prompt)?;
    let config = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        use_cache: !args.no_cache,
    };
    let new_tokens = model.generate(&prompt, &config)?;
    println!("{}{}", args.prompt, tokenizer.decode(&new_tokens)?);
    Ok(())
}
