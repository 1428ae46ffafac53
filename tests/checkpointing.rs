//! Per-layer activation checkpointing (`--gradient-checkpointing`) gives the gradients of the
//! ordinary backward: on the gqa fixture with every projection adapted (PEFT adapter, B != 0),
//! a padded batch of three rows, in f32 and with bf16 base weights, and through a whole
//! optimiser step with the Laplace penalty.

mod common;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use common::*;
use lalora::data::{Batch, Sequence};
use lalora::io::peft;
use lalora::laplace::LaplacePrior;
use lalora::llama::{Llama, WeightDtype};
use lalora::lora::trainable_param;
use lalora::train::{accumulate_checkpointed, lm_objective, trainable_params, OptimizerConfig, Step};

type Inner = <TestAutodiff as AutodiffBackend>::InnerBackend;

fn batch() -> Batch<TestAutodiff> {
    let reference = Reference::load(&fixture("llama/gqa"));
    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
    Batch::new(&sequences.iter().collect::<Vec<_>>(), &device())
}

fn model(dtype: WeightDtype) -> Llama<TestAutodiff> {
    let base = Llama::<TestAutodiff>::load_as(&fixture("llama/gqa"), &device(), dtype).unwrap();
    peft::load_adapter(base, &fixture("peft/all7")).unwrap().0
}

/// Every adapter's A and B gradient, in forward order.
fn adapter_grads(model: &Llama<TestAutodiff>, grads: &GradientsParams) -> Vec<f64> {
    let mut out = Vec::new();
    for adapter in model.adapters() {
        for param in [&adapter.lora_a, &adapter.lora_b] {
            out.extend(values(&grads.get::<Inner, 2>(param.id).expect("every adapter has a gradient")));
        }
    }
    out
}

/// max |a - e| over the largest |e|.
fn relative_max_diff(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let largest = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(largest > 1e-3, "the gradients should not vanish ({largest})");
    actual.iter().zip(expected).map(|(a, e)| (a - e).abs()).fold(0.0, f64::max) / largest
}

fn check_gradients(dtype: WeightDtype) {
    let (model, batch, share) = (model(dtype), batch(), 0.7);
    let objective = lm_objective(&model, &batch, true, false);
    let expected = adapter_grads(&model, &GradientsParams::from_grads(objective.surrogate.mul_scalar(share).backward(), &model));
    let mut accumulator = GradientsAccumulator::new();
    let nll = accumulate_checkpointed(&model, &batch, share, &mut accumulator).unwrap();
    let actual = adapter_grads(&model, &accumulator.grads());
    let diff = relative_max_diff(&actual, &expected);
    eprintln!("{dtype}: checkpointed vs plain adapter gradients, max |diff| / max |g| = {diff:.2e}; nll {nll} vs {}", objective.nll);
    assert!((nll - objective.nll).abs() < 1e-6 * objective.nll.abs().max(1.0));
    assert!(diff < 1e-6, "{dtype}: relative difference {diff}");
}

#[test]
fn checkpointed_gradients_equal_plain_ones_in_f32() {
    check_gradients(WeightDtype::F32);
}

#[test]
fn checkpointed_gradients_equal_plain_ones_with_bf16_weights() {
    check_gradients(WeightDtype::Bf16);
}

/// A whole step (penalty with the first micro-batch, two micro-batches, clipping, AdamW) lands
/// on the same adapters with and without checkpointing.
#[test]
fn a_step_with_the_penalty_is_the_same_with_checkpointing() {
    let anchored = model(WeightDtype::F32);
    let prior = LaplacePrior::<TestAutodiff>::from_inner(LaplacePrior::isotropic(&anchored.valid(), 1e-3));
    // Start off the anchor, so the penalty has a gradient.
    let mut start = anchored;
    for adapter in start.adapters_mut() {
        adapter.lora_b = trainable_param(adapter.lora_b.val().mul_scalar(1.5), &format!("{}.lora_B", adapter.path()));
    }
    let params = trainable_params(&start);
    let run = |checkpointing: bool| {
        let step =
            Step { lr: 1e-2, clip: Some(1.0), head_grad: false, penalty: Some((&prior, 2.0)), params: &params, decay: None, checkpointing };
        let mut optim = OptimizerConfig::new().adamw().init::<TestAutodiff, Llama<TestAutodiff>>();
        let (model, out) = step.run(start.clone(), &mut optim, vec![batch(), batch()]).unwrap();
        let adapters: Vec<f64> =
            model.adapters().iter().flat_map(|a| [values(&a.lora_a.val()), values(&a.lora_b.val())].concat()).collect();
        (adapters, out)
    };
    let (plain, plain_out) = run(false);
    let (checkpointed, out) = run(true);
    assert!(plain_out.penalty > 0.0, "the penalty is active");
    assert!((out.loss - plain_out.loss).abs() < 1e-6 && (out.penalty - plain_out.penalty).abs() < 1e-9);
    assert!((out.grad_norm - plain_out.grad_norm).abs() < 1e-6 * plain_out.grad_norm, "{} vs {}", out.grad_norm, plain_out.grad_norm);
    let moved = plain.iter().zip(values_of(&start)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let diff = plain.iter().zip(&checkpointed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("step: adapters moved by up to {moved:.2e}; checkpointed vs plain {diff:.2e}");
    assert!(moved > 1e-3 && diff < 1e-6, "moved {moved}, differ by {diff}");
}

fn values_of(model: &Llama<TestAutodiff>) -> Vec<f64> {
    model.adapters().iter().flat_map(|a| [values(&a.lora_a.val()), values(&a.lora_b.val())].concat()).collect()
}

#[test]
fn adapter_dropout_is_refused() {
    let mut model = model(WeightDtype::F32);
    for adapter in model.adapters_mut() {
        adapter.dropout = 0.1;
    }
    let err = accumulate_checkpointed(&model, &batch(), 1.0, &mut GradientsAccumulator::new()).unwrap_err().to_string();
    assert!(err.contains("dropout") && err.contains("gradient-checkpointing"), "{err}");
}
