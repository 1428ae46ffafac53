//! `lalora pretrain`: build the bundled tiny model from nothing: generate the tasks, train a BPE
//! tokenizer on their text, pretrain a small Llama on the source skills (all weights), and
//! write an HF model directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend as _;
use clap::Args;
use lalora::data::read_records;
use lalora::eval::{evaluate, load_eval_set, EvalOptions};
use lalora::io::write_json_atomic;
use lalora::llama::Llama;
use lalora::pretrain::{pack, pretrain, PretrainOptions, SmallModel};
use lalora::progress::Progress;
use lalora::tasks::{write_tasks, TaskSizes};
use lalora::tokenizer::{train_bpe, EOS};
use lalora::train::AdamWSettings;

type AB = lalora_backends::AutodiffBackend;

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
    let device = lalora_backends::device();
    AB::seed(&device, args.seed);
    let start = Instant::now();
    let sizes = if args.tiny_tasks { TaskSizes::tiny() } else { TaskSizes::default() };
    // The task files can always be regenerated from the seed; they do not belong in the model.
    let tasks_dir = std::env::temp_dir().join(format!("lalora-pretrain-tasks-{}", std::process::id()));
    let files = write_tasks(&tasks_dir, args.seed, &sizes).with_context(|| format!("writing tasks to {}", tasks_dir.display()))?;

    let tokenizer = train_bpe(&files.tokenizer_corpus, args.vocab_size)?;
    let (bos, eos) = (tokenizer.token_id(lalora::tokenizer::BOS), tokenizer.token_id(EOS));
    let (bos, eos) = (bos.expect("trained with BOS"), eos.expect("trained with EOS"));
    let shape = SmallModel {
        hidden_size: args.hidden,
        intermediate_size: args.intermediate,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        num_key_value_heads: args.kv_heads,
        max_position_embeddings: args.seq_len.max(256),
    };
    let config = shape.config(tokenizer.vocab_size(), bos, eos);
    let model = Llama::<AB>::init_random(&config, args.seed, &device);

    let texts: Vec<Vec<u32>> = read_records(&files.pretrain)?
        .iter()
        .map(|(_, r)| match r {
            lalora::data::Record::Text { text } => tokenizer.encode(text),
            _ => unreachable!("the pretraining corpus is text"),
        })
        .collect::<lalora::Result<_>>()?;
    let rows = pack(&texts, args.seq_len);
    let options = PretrainOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        adamw: AdamWSettings { weight_decay: 0.01, ..Default::default() },
        seed: args.seed,
        ..Default::default()
    };
    let epochs = (args.steps * args.batch_size) as f64 / rows.len() as f64;
    eprintln!(
        "pretraining {} parameters on {} texts packed into {} rows of <= {} tokens ({epochs:.1} epochs)",
        config_params(&config),
        texts.len(),
        rows.len(),
        args.seq_len
    );
    let progress = Progress::new(true, args.steps as u64, "pretrain");
    let mut losses = Vec::new();
    let model = pretrain(model, &rows, &options, &progress, |step, loss| {
        if step % 100 == 0 {
            losses.push((step, loss));
        }
    })?;
    progress.finish();
    let model = model.valid();

    std::fs::create_dir_all(&args.out)?;
    model.save(&args.out)?;
    tokenizer.save(&args.out.join("tokenizer.json"))?;

    let eval_options = EvalOptions { batch_size: 32, max_len: args.seq_len, max_new_tokens: 48 };
    let mut scores = Vec::new();
    let mut eval_files: Vec<PathBuf> = files.sources.iter().map(|(_, _, e)| e.clone()).collect();
    eval_files.push(files.target_eval.clone());
    for path in &eval_files {
        let set = load_eval_set(path, &tokenizer, args.seq_len)?;
        let score = evaluate(&model, &tokenizer, &set, &eval_options, &Progress::hidden())?;
        println!("{:<28} {}", score.name, score.metrics.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "));
        scores.push(score);
    }
    write_json_atomic(
        &args.out.join("pretrain.json"),
        &serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "seed": args.seed, "shape": shape, "options": options, "vocab_size": tokenizer.vocab_size(),
            "rows": rows.len(), "loss_every_100_steps": losses, "scores": scores,
            "seconds": start.elapsed().as_secs_f64(), "backend": lalora_backends::NAME,
        }),
    )?;
    let _ = std::fs::remove_dir_all(&tasks_dir);
    println!("wrote {} in {:.0} s", args.out.display(), start.elapsed().as_secs_f64());
    Ok(())
}

fn config_params(c: &lalora::LlamaConfig) -> usize {
    let attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads);
    let mlp = 3 * c.hidden_size * c.intermediate_size;
    c.vocab_size * c.hidden_size + c.num_hidden_layers * (attn + mlp + 2 * c.hidden_size) + c.hidden_size
}
