//! `lalora pretrain`: build the bundled tiny model from nothing: generate the tasks, train a BPE
//! tokenizer on their text, pretrain a small Llama on the source skills (all weights), and
//! write an HF model directory.

use std::path::PathBuf;

use clap::Args;
use lalora::pretrain::{build_tiny_model, PretrainOptions, SmallModel, TinyModelConfig};

use crate::cli::AB;

/// Flags of `lalora pretrain`.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Output model directory (config.json, model.safetensors, tokenizer.json, pretrain.json).
    #[arg(long, default_value = "models/tiny")]
    out: PathBuf,
    /// Seed of the tasks, the weights and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// BPE vocabulary size.
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// Residual width.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// MLP width.
    #[arg(long, default_value_t = 352)]
    intermediate: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Optimiser steps (1800 x 16 rows of 128 tokens: about 8 passes over the corpus).
    #[arg(long, default_value_t = 1800)]
    steps: usize,
    /// Packed rows per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Peak learning rate (cosine decay to 5%).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Use a few dozen records per task (for quick checks; the model will be poor).
    #[arg(long)]
    tiny_tasks: bool,
}

/// Runs `lalora pretrain`.
pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let defaults = PretrainOptions::default();
    let config = TinyModelConfig {
        out: args.out.clone(),
        seed: args.seed,
        vocab_size: args.vocab_size,
        shape: SmallModel {
            hidden_size: args.hidden,
            intermediate_size: args.intermediate,
            num_hidden_layers: args.layers,
            num_attention_heads: args.heads,
            num_key_value_heads: args.kv_heads,
            max_position_embeddings: args.seq_len.max(256),
        },
        options: PretrainOptions {
            batch_size: args.batch_size,
            seq_len: args.seq_len,
            schedule: defaults.schedule.clone().with_steps(args.steps).with_lr(args.lr),
            seed: args.seed,
            ..defaults
        },
        tiny_tasks: args.tiny_tasks,
    };
    let report = build_tiny_model::<AB>(&config, &lalora_backends::device(), true)?;
    println!("pretrained {} parameters on {} texts packed into {} rows", report.parameters, report.texts, report.rows);
    for score in &report.scores {
        println!("{:<28} {}", score.name, score.metrics.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "));
    }
    println!("wrote {} in {:.0} s", args.out.display(), report.seconds);
    Ok(())
}
