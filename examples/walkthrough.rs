//! lalora as a library, on whichever backend the cargo features select (the cross-GPU example):
//!
//! ```text
//! cargo run --release --example walkthrough                      # CPU (flex)
//! cargo run --release --features wgpu --example walkthrough      # Vulkan / Metal / DX12
//! cargo run --release --features cuda --example walkthrough      # NVIDIA
//! ```
//!
//! Loads the bundled model, fits a B-KFAC Laplace prior on source data, fine-tunes LoRA
//! adapters on the target task with the penalty, and compares scores before and after. The same
//! code runs on every backend: only `lalora_backends::Backend` changes.
//! Flags: `--model DIR` (default models/tiny), `--steps N` (default 40), `--tiny` (a few
//! records and steps, for CI).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use lalora::curvature::{Estimator, FisherType};
use lalora::data::{lm_sequences, lm_sequences_with_eos, Batch, Sequence};
use lalora::eval::{evaluate, load_eval_set, EvalOptions, EvalSet};
use lalora::laplace::{fit, FitOptions, LaplacePrior};
use lalora::llama::Llama;
use lalora::progress::Progress;
use lalora::tasks::{write_tasks, TaskSizes};
use lalora::train::{train, EvalPlan, Method, TrainOptions};
use lalora::{LoraConfig, LoraInit, Tokenizer};

type B = lalora_backends::Backend;
type AB = Autodiff<B>;

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn scores(model: &Llama<AB>, tokenizer: &Tokenizer, sets: &[EvalSet], options: &EvalOptions) -> anyhow::Result<Vec<(String, f64)>> {
    let inner = model.valid();
    sets.iter()
        .map(|s| Ok((s.name.clone(), evaluate(&inner, tokenizer, s, options, &Progress::hidden())?.headline())))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let model_dir = PathBuf::from(flag("--model").unwrap_or_else(|| "models/tiny".into()));
    let steps: usize = flag("--steps").map(|s| s.parse()).transpose()?.unwrap_or(if tiny { 3 } else { 40 });
    let device = lalora_backends::device();
    println!("backend: {}", lalora_backends::NAME);

    // Data: the bundled synthetic tasks, written to a temporary directory.
    let dir = std::env::temp_dir().join(format!("lalora-walkthrough-{}", std::process::id()));
    let tasks = write_tasks(&dir, 0, &if tiny { TaskSizes::tiny() } else { TaskSizes::default() })?;
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    let max_len = 128;

    // The model with fresh adapters (offset init: B != 0, so the prior constrains A too).
    let lora = LoraConfig { rank: 4, alpha: 8.0, init: LoraInit::Offset, ..Default::default() };
    let model = Llama::<AB>::load(&model_dir, &device)?.with_adapters(&lora)?;
    let eos = model.config.eos_token_ids.first().copied();

    // 1. The Laplace prior: B-KFAC on one batch of each source skill.
    let mut batches = Vec::new();
    for (_, train_file, _) in &tasks.sources {
        let sequences = lm_sequences(train_file, &tokenizer, max_len)?;
        let refs: Vec<&Sequence> = sequences.iter().take(8).collect();
        batches.push(Batch::<AB>::new(&refs, &device));
    }
    let options = FitOptions { estimator: Estimator::Kfac, fisher: FisherType::Mc { samples: 1 }, prior_precision: 0.0 };
    let (prior, tokens) = fit(&model, &batches, &options, &Progress::hidden())?;
    let prior = LaplacePrior::<AB>::from_inner(prior);
    println!("fitted kfac on {tokens} source tokens");

    // 2. Fine-tune on the target task with the penalty lambda/2 (theta - theta*)^T F (theta - theta*).
    let mut eval_files: Vec<PathBuf> = tasks.sources.iter().map(|(_, _, eval)| eval.clone()).collect();
    eval_files.push(tasks.target_eval.clone());
    let sets = eval_files.iter().map(|p| load_eval_set(p, &tokenizer, max_len)).collect::<lalora::Result<Vec<_>>>()?;
    let eval_options = EvalOptions { batch_size: 16, max_len, max_new_tokens: if tiny { 8 } else { 48 } };
    let before = scores(&model, &tokenizer, &sets, &eval_options)?;
    let target = lm_sequences_with_eos(&tasks.target_train, &tokenizer, max_len, eos)?;
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &[], options: eval_options.clone() };
    let train_options = TrainOptions { method: Method::Lalora, lambda: 10.0, steps, batch_size: 8, lr: 2e-3, warmup_steps: 2, ..Default::default() };
    let outcome = train(model, &lora, Some(&prior), &target, &plan, &train_options, None, false, None, false)?;
    println!("trained {steps} steps, final nll {:.3}", outcome.last_loss);

    // 3. Scores before and after.
    let after = scores(&outcome.model, &tokenizer, &sets, &eval_options)?;
    println!("{:<28} {:>8} {:>8}", "set", "before", "after");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        println!("{name:<28} {b:>8.3} {a:>8.3}");
    }
    anyhow::ensure!(outcome.last_loss.is_finite(), "training diverged");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
