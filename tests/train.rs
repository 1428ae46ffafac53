//! The training loop: a resumed run ends where an uninterrupted one does, a non-finite loss
//! stops with the step and keeps the last checkpoint, and the penalty holds adapters near the
//! anchor.

mod common;

use common::*;
use lalora::data::Sequence;
use lalora::eval::EvalOptions;
use lalora::laplace::LaplacePrior;
use lalora::llama::Llama;
use lalora::train::{train, EvalPlan, Method, RunDir, TrainOptions};
use lalora::{LoraConfig, LoraInit, Tokenizer};

type AB = TestAutodiff;

/// Dropout draws from the backend's process-wide generator: tests that train must not
/// interleave, or one would consume another's random numbers.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup() -> (Llama<AB>, LoraConfig, Vec<Sequence>, Tokenizer) {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let lora = LoraConfig { rank: 4, alpha: 8.0, init: LoraInit::Offset, dropout: 0.1, seed: 3, ..Default::default() };
    let model = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap().with_adapters(&lora).unwrap();
    let texts = ["The quick brown fox jumps.", "Numbers 12 and 34 add to 46.", "A cat sat on the mat.", "Hello there friend.", "One two three four."];
    let data = texts.iter().map(|t| Sequence::text(tokenizer.encode(t).unwrap())).collect();
    (model, lora, data, tokenizer)
}

fn options() -> TrainOptions {
    TrainOptions { steps: 6, batch_size: 2, grad_accum: 2, lr: 5e-3, warmup_steps: 2, checkpoint_every: 2, seed: 11, ..Default::default() }
}

fn adapter_values(model: &Llama<AB>) -> Vec<f64> {
    model.adapters().iter().flat_map(|a| {
        let mut v = values(&a.lora_a.val());
        v.extend(values(&a.lora_b.val()));
        v
    }).collect()
}

#[test]
fn resumed_run_reaches_the_same_adapters_as_an_uninterrupted_one() {
    let _guard = serial();
    let (model, lora, data, tokenizer) = setup();
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &[], options: EvalOptions::default() };
    let straight_dir = RunDir::new(&temp_dir("train-straight")).unwrap();
    let straight = train(model.clone(), &lora, None, &data, &plan, &options(), Some(&straight_dir), false, None, false).unwrap();

    let split_dir = RunDir::new(&temp_dir("train-split")).unwrap();
    let first = train(model.clone(), &lora, None, &data, &plan, &options(), Some(&split_dir), false, Some(3), false).unwrap();
    assert_ne!(adapter_values(&first.model), adapter_values(&straight.model), "stopped early");
    // A fresh process would start from the base model again; the checkpoint supplies the rest.
    let resumed = train(model.clone(), &lora, None, &data, &plan, &options(), Some(&split_dir), true, None, false).unwrap();
    let (a, b) = (adapter_values(&resumed.model), adapter_values(&straight.model));
    assert_close_f64("resumed vs straight", &a, &b, 1e-6, 0.0);
    assert!(a.iter().zip(adapter_values(&model).iter()).any(|(x, y)| (x - y).abs() > 1e-4), "training moved the adapters");
}

#[test]
fn resume_with_other_options_is_refused() {
    let _guard = serial();
    let (model, lora, data, tokenizer) = setup();
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &[], options: EvalOptions::default() };
    let dir = RunDir::new(&temp_dir("train-other-options")).unwrap();
    train(model.clone(), &lora, None, &data, &plan, &options(), Some(&dir), false, Some(2), false).unwrap();
    let other = TrainOptions { lr: 1e-3, ..options() };
    let err = train(model, &lora, None, &data, &plan, &other, Some(&dir), true, None, false).err().unwrap().to_string();
    assert!(err.contains("state.json") && err.contains("other training options"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let _guard = serial();
    let (model, lora, data, tokenizer) = setup();
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &[], options: EvalOptions::default() };
    let dir = RunDir::new(&temp_dir("train-nan")).unwrap();
    let blow_up = TrainOptions { lr: 1e30, clip: None, warmup_steps: 0, checkpoint_every: 1, ..options() };
    let err = train(model, &lora, None, &data, &plan, &blow_up, Some(&dir), false, None, false).err().expect("must fail").to_string();
    assert!(err.contains("step ") && (err.contains("NaN") || err.contains("inf")), "{err}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("checkpoint/state.json")).unwrap()).unwrap();
    let failed_at: usize = err.split("step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, failed_at - 1, "the checkpoint is the last good step");
}

#[test]
fn a_strong_penalty_keeps_the_adapters_at_the_anchor() {
    let _guard = serial();
    let (model, lora, data, tokenizer) = setup();
    let plan = EvalPlan { tokenizer: &tokenizer, sets: &[], options: EvalOptions::default() };
    let anchor = adapter_values(&model);
    let prior = LaplacePrior::isotropic(&model, 1.0);
    let drift = |method: Method, lambda: f64| {
        let opts = TrainOptions { method, lambda, checkpoint_every: 0, ..options() };
        let out = train(model.clone(), &lora, Some(&prior), &data, &plan, &opts, None, false, None, false).unwrap();
        adapter_values(&out.model).iter().zip(&anchor).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
    };
    let (free, held) = (drift(Method::Lora, 0.0), drift(Method::L2, 1e4));
    assert!(held < 0.2 * free, "penalised drift {held} vs free {free}");
}
