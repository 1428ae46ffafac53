//! Your own training loop with LaLoRA's penalty: what `LaLoRA::train` does, written out, for
//! users who keep their own loop (their data pipeline, optimiser or logging). The prior is
//! fitted by the library; the loop adds `lambda/2 (theta - theta*)^T F (theta - theta*)` to its
//! loss and steps AdamW on the adapters.
//!
//! ```text
//! cargo run --release --example walkthrough                      # CPU (flex)
//! cargo run --release --features wgpu --example walkthrough      # Vulkan / Metal / DX12
//! cargo run --release --features cuda --example walkthrough      # NVIDIA
//! ```
//! Flags: `--steps N` (default 40).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::cast::ToElement;
use lalora::curvature::Estimator;
use lalora::data::{lm_sequences_with_eos, Batch, Sequence};
use lalora::eval::{load_eval_set, EvalOptions};
use lalora::llama::Llama;
use lalora::train::{lm_objective, OptimizerConfig};
use lalora::{AdapterSource, LaLoRA, LaplaceConfig, LoraConfig, LoraInit, SourceData, Tokenizer};

type B = lalora_backends::AutodiffBackend;

fn main() -> lalora::Result<()> {
    let steps: usize = flag("--steps").map_or(40, |s| s.parse().expect("--steps N"));
    let (model_dir, data) = (Path::new("models/tiny"), Path::new("models/tiny/data"));
    let device = lalora_backends::device();
    println!("backend: {}", lalora_backends::NAME);
    let tokenizer = Tokenizer::from_dir(model_dir)?;

    // The model, fresh adapters and a diagonal prior on the source skills.
    let lora = LoraConfig::new().with_rank(4).with_alpha(8.0).with_init(LoraInit::Offset);
    let mut lalora = LaLoRA::<B>::load(model_dir, AdapterSource::Fresh(lora), &device)?;
    let sources: Vec<SourceData> = ["facts", "strings", "grammar"]
        .iter()
        .map(|s| SourceData::read(&data.join(format!("source-{s}.train.jsonl")), &tokenizer, 128))
        .collect::<lalora::Result<_>>()?;
    lalora.fit_prior(&sources, &LaplaceConfig::new().with_estimator(Estimator::Diag).with_batch_size(8), false)?;
    let LaLoRA { model, prior, .. } = lalora;
    let prior = prior.expect("just fitted");

    // Your loop: batches of target sequences, token-mean NLL + lambda/2 * penalty, AdamW.
    let eos = model.config.eos_token_ids.first().copied();
    let target = lm_sequences_with_eos(&data.join("target-arithmetic.train.jsonl"), &tokenizer, 128, eos)?;
    let (lambda, lr) = (10.0, 2e-3);
    let mut optim = OptimizerConfig::new().adamw().init::<B, Llama<B>>();
    let mut model = model;
    for (step, chunk) in target.chunks(8).cycle().take(steps).enumerate() {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = Batch::<B>::new(&refs, &device);
        // `surrogate` has the NLL's gradient (the LM head's part in closed form); `nll` its value.
        let objective = lm_objective(&model, &batch, true, false);
        let penalty = prior.penalty(&model, lambda / 2.0);
        let penalty_value = penalty.value.into_scalar().to_f64();
        let grads = GradientsParams::from_grads((objective.surrogate + penalty.surrogate).backward(), &model);
        model = optim.step(lr, model, grads);
        if step % 10 == 0 || step + 1 == steps {
            println!("step {:>3}: nll {:.3}, penalty {penalty_value:.4}", step + 1, objective.nll);
        }
    }

    // Scores after training, without the autodiff graph.
    let sets = ["source-facts.eval", "target-arithmetic.test"]
        .iter()
        .map(|name| load_eval_set(&data.join(format!("{name}.jsonl")), &tokenizer, 128))
        .collect::<lalora::Result<Vec<_>>>()?;
    let trained = LaLoRA { model: model.valid(), lora: LoraConfig::new(), prior: None };
    for score in trained.evaluate(&tokenizer, &sets, &EvalOptions { batch_size: 16, max_len: 128, max_new_tokens: 48 })? {
        println!("{:<24} {:.3}", score.name, score.headline());
    }
    Ok(())
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
