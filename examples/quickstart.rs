//! The whole LaLoRA workflow (the paper's Figure 1) on the bundled model and data: fresh
//! adapters, a Laplace prior fitted on the source skills, fine-tuning on the target task with
//! the penalty, scores before and after, and the adapter saved in PEFT's layout.
//!
//! ```text
//! cargo run --release --example quickstart                    # CPU (flex)
//! cargo run --release --features wgpu --example quickstart    # Vulkan / Metal / DX12
//! cargo run --release --features cuda --example quickstart    # NVIDIA
//! ```
//! Flags: `--steps N` (default 40), `--out DIR` (default runs/quickstart).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use lalora::data::lm_sequences_with_eos;
use lalora::eval::{load_eval_set, EvalOptions};
use lalora::train::{DataConfig, ScheduleConfig};
use lalora::{AdapterSource, LaLoRA, LaplaceConfig, LoraConfig, LoraInit, Penalty, SourceData, Tokenizer};
use lalora::{TrainConfig, TrainControl, TrainData};

type B = lalora_backends::AutodiffBackend;

fn main() -> lalora::Result<()> {
    let (steps, out) =
        (flag("--steps").map_or(40, |s| s.parse().expect("--steps N")), PathBuf::from(flag("--out").unwrap_or("runs/quickstart".into())));
    let (model_dir, data) = (Path::new("models/tiny"), Path::new("models/tiny/data"));
    let device = lalora_backends::device();
    let tokenizer = Tokenizer::from_dir(model_dir)?;

    // 1. The base model with fresh adapters. The offset init starts B != 0, so the prior
    //    constrains A as well as B.
    let lora = LoraConfig::new().with_rank(4).with_alpha(8.0).with_init(LoraInit::Offset);
    let mut model = LaLoRA::<B>::load(model_dir, AdapterSource::Fresh(lora), &device)?;

    // 2. The Laplace prior: B-KFAC of the source NLL on two batches of each source skill.
    let sources: Vec<SourceData> = ["facts", "strings", "grammar"]
        .iter()
        .map(|s| SourceData::read(&data.join(format!("source-{s}.train.jsonl")), &tokenizer, 128))
        .collect::<lalora::Result<_>>()?;
    let fit = model.fit_prior(&sources, &LaplaceConfig::new().with_batch_size(8), false)?;
    println!("prior: kfac on {} source tokens", fit.tokens);

    // 3. Fine-tune on the target task with the penalty lambda/2 (theta - theta*)^T F (theta - theta*).
    let eos = model.model.config.eos_token_ids.first().copied();
    let target = lm_sequences_with_eos(&data.join("target-arithmetic.train.jsonl"), &tokenizer, 128, eos)?;
    let sets = ["source-facts.eval", "source-strings.eval", "source-grammar.eval", "target-arithmetic.test"]
        .iter()
        .map(|name| load_eval_set(&data.join(format!("{name}.jsonl")), &tokenizer, 128))
        .collect::<lalora::Result<Vec<_>>>()?;
    let before = model.valid().evaluate(&tokenizer, &sets, &EvalOptions { batch_size: 16, max_len: 128, max_new_tokens: 48 })?;
    let config = TrainConfig::new()
        .with_penalty(Penalty::Laplace { lambda: 10.0 })
        .with_schedule(ScheduleConfig::new().with_steps(steps).with_lr(2e-3).with_warmup_steps(2))
        .with_data(DataConfig::new().with_batch_size(8).with_max_len(128));
    let data = TrainData { sequences: &target, eval_sets: &sets, tokenizer: &tokenizer };
    let (model, report) = model.train(&data, &config, &TrainControl::default())?;

    // 4. Scores before and after, and the adapter for peft.
    println!("{:<24} {:>8} {:>8}", "set", "before", "after");
    for (b, a) in before.iter().zip(&report.evals.last().expect("scored at the end").scores) {
        println!("{:<24} {:>8.3} {:>8.3}", b.name, b.headline(), a.headline());
    }
    model.save_adapter(&out.join("adapter"))?;
    println!("{steps} steps, final nll {:.3}; adapter -> {}", report.last_loss, out.join("adapter").display());
    Ok(())
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
