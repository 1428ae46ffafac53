//! Inference with a base model and a PEFT adapter: load both, generate an answer, and score a
//! file. Any PEFT LoRA adapter of a Llama model works; by default the one `quickstart` saves.
//!
//! ```text
//! cargo run --release --example quickstart        # writes runs/quickstart/adapter
//! cargo run --release --example inference         # add --features wgpu / cuda for a GPU
//! ```
//! Flags: `--adapter DIR` (default runs/quickstart/adapter), `--max-new-tokens N` (default 48).

use std::path::{Path, PathBuf};

use lalora::eval::{load_eval_set, EvalOptions};
use lalora::generate::SamplingConfig;
use lalora::{AdapterSource, LaLoRA, Tokenizer};

type B = lalora_backends::Backend;

fn main() -> lalora::Result<()> {
    let adapter = PathBuf::from(flag("--adapter").unwrap_or("runs/quickstart/adapter".into()));
    let max_new_tokens = flag("--max-new-tokens").map_or(48, |s| s.parse().expect("--max-new-tokens N"));
    let model_dir = Path::new("models/tiny");
    let device = lalora_backends::device();

    // The base model with the adapter applied (no autodiff: inference only).
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let model = LaLoRA::<B>::load(model_dir, AdapterSource::Peft(adapter.clone()), &device)?;
    println!(
        "{} with the adapter in {} (rank {}, {} targets)",
        model_dir.display(),
        adapter.display(),
        model.lora.rank,
        model.lora.targets.len()
    );

    // Greedy generation.
    let question = "Velmora has 12 coins. It gets 4 more. How many coins does Velmora have now?\nAnswer:";
    let new_tokens = model.generate(&tokenizer.encode(question)?, &SamplingConfig { max_new_tokens, ..Default::default() })?;
    println!("{question}{}", tokenizer.decode(&new_tokens)?);

    // Scores on the held-out target problems and one source skill.
    let data = Path::new("models/tiny/data");
    let sets = ["target-arithmetic.test", "source-facts.eval"]
        .iter()
        .map(|name| load_eval_set(&data.join(format!("{name}.jsonl")), &tokenizer, 128))
        .collect::<lalora::Result<Vec<_>>>()?;
    for score in model.evaluate(&tokenizer, &sets, &EvalOptions { batch_size: 16, max_len: 128, max_new_tokens })? {
        println!("{:<24} {:.3}", score.name, score.headline());
    }
    Ok(())
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
