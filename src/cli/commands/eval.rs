//! `lalora eval`: NLL per token and perplexity of JSONL text.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lalora::data::lm_sequences;
use lalora::eval::score_text;
use lalora::lalora::load_for_inference;
use lalora::progress::Progress;

use crate::cli::{ModelArgs, B};

/// Flags of `lalora eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file; each line has a `text` field (or `prompt` + `completion`: completion scored).
    #[arg(long)]
    data: PathBuf,
    /// Sequences per forward pass. Padding does not change the numbers.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Keep at most this many tokens of each text (BOS included).
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `lalora eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(args.max_len > 1, "--max-len must be at least 2 (one token predicts the next)");
    let device = lalora_backends::device();
    let (model, tokenizer) = load_for_inference::<B>(&args.model.model, args.model.adapter.as_deref(), &device)
        .with_context(|| format!("loading {}", args.model.model.display()))?;
    let sequences = lm_sequences(&args.data, &tokenizer, args.max_len)?;
    let progress = Progress::new(!args.json, sequences.len() as u64, "eval");
    let score = score_text(&model, &sequences, args.batch_size, &progress);
    progress.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&score)?);
    } else {
        println!("data         {}", args.data.display());
        println!("sequences    {}", score.sequences.len());
        println!("tokens       {}", score.tokens);
        println!("nll/token    {:.4}", score.nll_per_token);
        println!("perplexity   {:.3}", score.perplexity);
    }
    Ok(())
}
