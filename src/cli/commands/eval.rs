//! `lalora eval`: score a model (and adapter) on evaluation files of any kind.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lalora::eval::{evaluate, load_eval_set_with, EvalOptions, EvalScore};
use lalora::progress::Progress;
use lalora::{LaLoRA, Tokenizer};
use serde_json::{json, Value};

use crate::cli::ranges::{at_least_one, token_length};
use crate::cli::{max_len, DataArgs, ModelArgs, B};

/// Flags of `lalora eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Evaluation file (JSONL); repeat for several. The records decide the kind: `text` (or
    /// `prompt` + `completion`, completion scored) -> NLL and perplexity; `context` + `choices`
    /// + `label` -> acc and acc_norm; `prompt` + `answer` -> accuracy of greedy generation.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    fields: DataArgs,
    /// Sequences per forward pass (generation: prompts decoded together). Padding does not
    /// change the numbers.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    batch_size: usize,
    /// Keep at most this many tokens of each text (BOS included); at most the model's context
    /// (`max_position_embeddings`). Default: 1024, or the model's context if shorter.
    #[arg(long, value_parser = token_length)]
    max_len: Option<usize>,
    /// Tokens generated at most per generation item; below --max-len, as prompt and answer
    /// share it (the prompt keeps its last --max-len minus this many tokens). Default: 64, or
    /// half the token limit if that is less.
    #[arg(long, value_parser = at_least_one)]
    max_new_tokens: Option<usize>,
    /// Print JSON instead of a table: for one file, that set's object (for text: `tokens`,
    /// `nll_per_token`, `perplexity`, `sequences`); for several, `{"sets": [...]}`.
    #[arg(long)]
    json: bool,
}

/// JSON for one set; text sets carry their figures at the top level.
fn set_json(score: &EvalScore) -> Value {
    let mut obj = json!({ "name": score.name, "kind": score.kind, "items": score.items, "metrics": score.metrics });
    if let Some(text) = &score.text {
        let detail = serde_json::to_value(text).expect("serialisable");
        for (k, v) in detail.as_object().expect("an object") {
            obj[k] = v.clone();
        }
    }
    obj
}

/// Runs `lalora eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    let model_dir = args.model.dir()?;
    let model = LaLoRA::<B>::load_with(&model_dir, args.model.adapters(), args.model.dtype, &device)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let tokenizer = Tokenizer::for_model(&model_dir, model.model.config.vocab_size)?;
    let chat = DataArgs::chat_template(&model_dir)?;
    let max_len = max_len(args.max_len, 1024, &model.model.config, &model_dir)?;
    let max_new_tokens = args.max_new_tokens.unwrap_or(64.min(max_len / 2));
    anyhow::ensure!(
        max_new_tokens < max_len,
        "--max-new-tokens {max_new_tokens} must be below the token limit {max_len} (--max-len, at most the model's context): \
         the prompt and the generated answer share it"
    );
    let options = EvalOptions { batch_size: args.batch_size, max_len, max_new_tokens };
    let mut scores = Vec::new();
    for path in &args.data {
        let set = load_eval_set_with(path, &tokenizer, &args.fields.options(max_len, None, chat.as_ref()))?;
        let progress = Progress::new(!args.json, set.len() as u64, &set.name);
        scores.push(evaluate(&model.model, &tokenizer, &set, &options, &progress)?);
        progress.finish();
    }
    if args.json {
        let out = match scores.as_slice() {
            [one] => set_json(one),
            many => json!({ "sets": many.iter().map(set_json).collect::<Vec<_>>() }),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<28} {:<16} {:>6}  metrics", "set", "kind", "items");
    for s in &scores {
        let metrics: Vec<String> = s.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let tokens = s.text.as_ref().map(|t| format!(" ({} tokens)", t.tokens)).unwrap_or_default();
        println!("{:<28} {:<16} {:>6}  {}{tokens}", s.name, s.kind, s.items, metrics.join(", "));
    }
    Ok(())
}
