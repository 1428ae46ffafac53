//! The training loop: a resumed run ends where an uninterrupted one does, a non-finite loss
//! stops with the step and keeps the last checkpoint, and the penalty holds adapters near the
//! anchor.

mod common;

use common::*;
use lalora::data::Sequence;
use lalora::llama::Llama;
use lalora::train::{DataConfig, OptimizerConfig, ScheduleConfig};
use lalora::{AdapterSource, LaLoRA, LoraConfig, LoraInit, Penalty, Tokenizer, TrainConfig, TrainControl, TrainData};

type AB = TestAutodiff;

/// Dropout draws from the backend's process-wide generator: tests that train must not
/// interleave, or one would consume another's random numbers.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup() -> (LaLoRA<AB>, Vec<Sequence>, Tokenizer) {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let lora = LoraConfig { rank: 4, alpha: 8.0, init: LoraInit::Offset, dropout: 0.1, seed: 3, ..Default::default() };
    let base = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap();
    let model = LaLoRA::from_model(base, AdapterSource::Fresh(lora)).unwrap();
    let texts = [
        "The quick brown fox jumps.",
        "Numbers 12 and 34 add to 46.",
        "A cat sat on the mat.",
        "Hello there friend.",
        "One two three four.",
    ];
    let data = texts.iter().map(|t| Sequence::text(tokenizer.encode(t).unwrap())).collect();
    (model, data, tokenizer)
}

fn config() -> TrainConfig {
    TrainConfig::new()
        .with_schedule(ScheduleConfig::new().with_steps(6).with_lr(5e-3).with_warmup_steps(2))
        .with_data(DataConfig::new().with_batch_size(2).with_grad_accum(2).with_seed(11))
        .with_checkpoint_every(2)
}

fn in_dir(dir: &std::path::Path) -> TrainControl {
    TrainControl { run_dir: Some(dir.to_path_buf()), ..Default::default() }
}

fn adapter_values(model: &LaLoRA<AB>) -> Vec<f64> {
    model
        .model
        .adapters()
        .iter()
        .flat_map(|a| {
            let mut v = values(&a.lora_a.val());
            v.extend(values(&a.lora_b.val()));
            v
        })
        .collect()
}

#[test]
fn resumed_run_reaches_the_same_adapters_as_an_uninterrupted_one() {
    let _guard = serial();
    let (model, sequences, tokenizer) = setup();
    let data = TrainData { sequences: &sequences, eval_sets: &[], tokenizer: &tokenizer };
    let (straight, _) = model.clone().train(&data, &config(), &in_dir(&temp_dir("train-straight"))).unwrap();

    let split_dir = temp_dir("train-split");
    let stop = TrainControl { stop_after: Some(3), ..in_dir(&split_dir) };
    let (first, report) = model.clone().train(&data, &config(), &stop).unwrap();
    assert_eq!(report.steps_done, 3);
    assert_ne!(adapter_values(&first), adapter_values(&straight), "stopped early");
    // A fresh process would start from the base model again; the checkpoint supplies the rest.
    let resume = TrainControl { resume: true, ..in_dir(&split_dir) };
    let (resumed, report) = model.clone().train(&data, &config(), &resume).unwrap();
    assert!(report.finished(&config()));
    let (a, b) = (adapter_values(&resumed), adapter_values(&straight));
    assert_close_f64("resumed vs straight", &a, &b, 1e-6, 0.0);
    assert!(a.iter().zip(adapter_values(&model).iter()).any(|(x, y)| (x - y).abs() > 1e-4), "training moved the adapters");
}

#[test]
fn resume_with_other_settings_is_refused_naming_the_setting() {
    let _guard = serial();
    let (model, sequences, tokenizer) = setup();
    let data = TrainData { sequences: &sequences, eval_sets: &[], tokenizer: &tokenizer };
    let dir = temp_dir("train-other-options");
    model.clone().train(&data, &config(), &TrainControl { stop_after: Some(2), ..in_dir(&dir) }).unwrap();
    let other = config().with_schedule(ScheduleConfig::new().with_steps(6).with_lr(1e-3).with_warmup_steps(2));
    let resume = TrainControl { resume: true, ..in_dir(&dir) };
    let err = model.clone().train(&data, &other, &resume).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("train.schedule.lr"), "{err}");
    // Other adapters are refused too.
    let (other_model, ..) = setup();
    let other_model = LaLoRA::from_model(other_model.model, AdapterSource::Fresh(LoraConfig { rank: 2, ..Default::default() })).unwrap();
    let err = other_model.train(&data, &config(), &resume).err().unwrap().to_string();
    assert!(err.contains("lora.rank"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let _guard = serial();
    let (model, sequences, tokenizer) = setup();
    let data = TrainData { sequences: &sequences, eval_sets: &[], tokenizer: &tokenizer };
    let dir = temp_dir("train-nan");
    let blow_up = config()
        .with_schedule(ScheduleConfig::new().with_steps(6).with_lr(1e30).with_warmup_steps(0))
        .with_optimizer(OptimizerConfig::new().with_clip(None))
        .with_checkpoint_every(1);
    let err = model.train(&data, &blow_up, &in_dir(&dir)).expect_err("must fail").to_string();
    assert!(err.contains("step ") && (err.contains("NaN") || err.contains("inf")), "{err}");
    let failed_at: usize = err.split("step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    // Weights that give a non-finite loss are never checkpointed: at lr 1e30 the first step's are.
    let kept = std::fs::read_to_string(dir.join("checkpoint/state.json")).ok();
    let kept_step = kept.map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap()["step"].as_u64().unwrap() as usize).unwrap_or(0);
    assert_eq!(kept_step, failed_at - 1, "the checkpoint is the last good step: {err}");
}

#[test]
fn a_strong_penalty_keeps_the_adapters_at_the_anchor() {
    let _guard = serial();
    let (model, sequences, tokenizer) = setup();
    let data = TrainData { sequences: &sequences, eval_sets: &[], tokenizer: &tokenizer };
    let anchor = adapter_values(&model);
    let drift = |penalty: Penalty| {
        let config = config().with_penalty(penalty).with_checkpoint_every(0);
        let (out, _) = model.clone().train(&data, &config, &TrainControl::default()).unwrap();
        adapter_values(&out).iter().zip(&anchor).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
    };
    let (free, held) = (drift(Penalty::None), drift(Penalty::L2 { lambda: 1e4 }));
    assert!(held < 0.2 * free, "penalised drift {held} vs free {free}");
}
