//! Frozen base weights in bf16 and f16 (`--dtype`): logits against transformers' own
//! half-precision forward (fixtures from scripts/make_half_references.py), gradients and
//! merges against the f32 model of the same rounded weights, and the choice of type.

mod common;

use burn::tensor::DType;
use common::*;
use lalora::data::{Batch, Sequence};
use lalora::io::TensorFiles;
use lalora::llama::{checkpoint_dtype, DtypeChoice, Llama, WeightDtype};
use lalora::train::lm_objective;
use lalora::{KernelBackend, LoraConfig, LoraInit};

/// Loads fixture `case` (weights stored in `dtype` on disk) in `dtype` and checks that
/// - every base weight is held in `dtype`;
/// - the logits are within transformers' own half-precision error of its half forward:
///   `max |ours - hf_half| <= 1.5 max |hf_half - hf_f32|` (the same weights computed in f32);
/// - on a backend that widens the weights (flex), the logits are the f32 function of the
///   rounded weights: within 1e-4 of `hf_f32` (DESIGN.md's f32 tolerance).
fn check_half_forward(case: &str, dtype: WeightDtype, file: &str) {
    let dir = fixture(&format!("llama/{case}"));
    let reference = Reference::load(&dir);
    let model = Llama::<TestBackend>::load_as(&dir, &device(), dtype).unwrap();
    assert_eq!(model.embed_tokens.val().dtype(), dtype.dtype());
    assert_eq!(model.layers[0].mlp.down_proj.weight.val().dtype(), dtype.dtype());
    assert_eq!(model.norm.weight.val().dtype(), dtype.dtype());

    let ours = real_logits(&model, &reference, &device());
    let hf_half = half_reference(case, file, "logits", &reference);
    let hf_f32 = half_reference(case, file, "logits_f32", &reference);
    let half_error = max_abs_diff(&hf_half, &hf_f32);
    let ours_vs_half = max_abs_diff(&ours, &hf_half);
    eprintln!("{case} {dtype}: max |ours - hf {dtype}| {ours_vs_half:.3e}, transformers' own {dtype} error {half_error:.3e}");
    assert!(half_error > 1e-4, "the {dtype} forward should differ from f32 ({half_error}): is the reference half precision?");
    assert!(ours_vs_half <= 1.5 * half_error, "{case}: {ours_vs_half} from transformers' {dtype} forward, its own error {half_error}");
    if <TestBackend as KernelBackend>::WIDENS_FROZEN_WEIGHTS {
        assert_close_report(&format!("{case} {dtype} vs f32 of the same weights"), &ours, &hf_f32, 1e-4);
    }
}

#[test]
fn bf16_weights_follow_transformers_bf16_forward() {
    check_half_forward("bf16_shards", WeightDtype::Bf16, "reference_bf16.safetensors");
}

#[test]
fn f16_weights_follow_transformers_f16_forward() {
    check_half_forward("head_dim", WeightDtype::F16, "reference_f16.safetensors");
}

#[test]
fn f32_weights_of_a_bf16_checkpoint_are_widened_exactly() {
    let dir = fixture("llama/bf16_shards");
    let model = Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::F32).unwrap();
    assert_eq!(model.embed_tokens.val().dtype(), DType::F32);
    let files = TensorFiles::open_dir(&dir).unwrap();
    let stored = files.read_f32_any("model.layers.1.self_attn.k_proj.weight").unwrap().to_vec::<f32>().unwrap();
    let loaded: Vec<f32> = model.layers[1].self_attn.k_proj.weight.val().into_data().to_vec().unwrap();
    assert_eq!(loaded, stored);
}

/// The gradients of every adapter (A then B, in forward order) after one objective backward.
fn adapter_gradients(model: &Llama<TestAutodiff>, batch: &Batch<TestAutodiff>) -> Vec<f64> {
    let grads = lm_objective(model, batch, false, false).surrogate.backward();
    let mut out = Vec::new();
    for adapter in model.adapters() {
        for param in [&adapter.lora_a, &adapter.lora_b] {
            let grad = param.val().grad(&grads).expect("adapters get gradients");
            assert_eq!(grad.dtype(), DType::F32, "adapter gradients stay f32");
            out.extend(values(&grad));
        }
    }
    out
}

fn reference_batch(case: &str) -> Batch<TestAutodiff> {
    let reference = Reference::load(&fixture(&format!("llama/{case}")));
    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
    Batch::new(&sequences.iter().collect::<Vec<_>>(), &device())
}

/// Training reads the same function in bf16 as in f32 of the rounded weights: on a widening
/// backend the LoRA gradients equal the f32 ones to float rounding, and they are f32.
#[test]
fn bf16_training_gradients_equal_f32_gradients_of_the_same_weights() {
    let dir = fixture("llama/bf16_shards");
    // Offset init: B != 0, so the A gradients are not zero either.
    let lora = LoraConfig { init: LoraInit::Offset, rank: 4, seed: 3, ..Default::default() };
    let f32_model = Llama::<TestAutodiff>::load_as(&dir, &device(), WeightDtype::F32).unwrap().with_adapters(&lora).unwrap();
    let bf16_model = Llama::<TestAutodiff>::load_as(&dir, &device(), WeightDtype::Bf16).unwrap().with_adapters(&lora).unwrap();
    assert_eq!(bf16_model.adapters()[0].lora_a.val().dtype(), DType::F32, "adapters stay f32");
    let batch = reference_batch("bf16_shards");
    let expected = adapter_gradients(&f32_model, &batch);
    let actual = adapter_gradients(&bf16_model, &batch);
    let norm = expected.iter().map(|g| g * g).sum::<f64>().sqrt();
    let diff = actual.iter().zip(&expected).map(|(a, e)| (a - e) * (a - e)).sum::<f64>().sqrt();
    eprintln!("bf16 vs f32 adapter gradients: relative difference {:.3e} (norm {norm:.3e})", diff / norm);
    assert!(norm > 1e-3, "gradients are not all zero");
    let bound = if <TestBackend as KernelBackend>::WIDENS_FROZEN_WEIGHTS { 1e-5 } else { 2e-2 };
    assert!(diff / norm < bound, "relative gradient difference {} above {bound}", diff / norm);
}

/// The curvature capture reads the same function too: a kfac fit (empirical Fisher, so no
/// label draws) on bf16 weights equals the fit on the f32 model of the same weights. In bf16
/// the taps go through the fused LoRA op (a plain product would keep widened copies of
/// every weight for the backward), in f32 through the unfused sum: this checks the one
/// against the other.
#[test]
fn bf16_curvature_equals_f32_curvature_of_the_same_weights() {
    use lalora::curvature::{Estimator, FisherType};
    use lalora::laplace::{fit, LaplaceConfig, SourceData};
    let dir = fixture("llama/bf16_shards");
    let lora = LoraConfig { init: LoraInit::Offset, rank: 4, seed: 3, ..Default::default() };
    let reference = Reference::load(&dir);
    let sources = vec![SourceData { name: "reference".into(), sequences: (0..3).map(|i| Sequence::text(reference.row(i))).collect() }];
    let config = LaplaceConfig::new()
        .with_estimator(Estimator::Kfac)
        .with_fisher(FisherType::Empirical)
        .with_batch_size(3)
        .with_batches_per_source(1);
    let fitted = |dtype| {
        let model = Llama::<TestAutodiff>::load_as(&dir, &device(), dtype).unwrap().with_adapters(&lora).unwrap();
        fit(&model, &lora, &sources, &config, false).unwrap().0.curvature.unwrap()
    };
    let (expected, actual) = (fitted(WeightDtype::F32), fitted(WeightDtype::Bf16));
    let bound = if <TestBackend as KernelBackend>::WIDENS_FROZEN_WEIGHTS { 1e-4 } else { 5e-2 };
    for ((name, e), (_, a)) in expected.tensors().into_iter().zip(actual.tensors()) {
        let (e, a) = (values(&e), values(&a));
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        let diff = a.iter().zip(&e).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{name} is zero");
        assert!(diff <= bound * norm, "{name}: bf16 vs f32 relative difference {:.3e} above {bound}", diff / norm);
    }
}

/// A merged bf16 model stays bf16, and its logits are the unmerged model's up to the bf16
/// rounding of the merged weights.
#[test]
fn merging_into_bf16_weights_keeps_bf16() {
    let dir = fixture("llama/bf16_shards");
    let lora = LoraConfig { init: LoraInit::Offset, rank: 4, seed: 5, ..Default::default() };
    let mut model = Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::Bf16).unwrap().with_adapters(&lora).unwrap();
    for adapter in model.adapters_mut() {
        // Move B off B0 so the merge changes the weights.
        adapter.lora_b = adapter.lora_b.clone().map(|b| b.mul_scalar(1.5));
    }
    let reference = Reference::load(&dir);
    let unmerged = real_logits(&model, &reference, &device());
    let base = real_logits(&Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::Bf16).unwrap(), &reference, &device());
    let merged = model.merge_adapters();
    assert_eq!(merged.layers[0].self_attn.q_proj.weight.val().dtype(), DType::BF16);
    let merged = real_logits(&merged, &reference, &device());
    let (update, rounding) = (max_abs_diff(&unmerged, &base), max_abs_diff(&merged, &unmerged));
    eprintln!("merge: the adapters move the logits by {update:.3e}; merged vs unmerged {rounding:.3e}");
    assert!(update > 1e-2, "the adapters should change the logits");
    assert!(rounding < 0.1 * update, "merged logits {rounding} from unmerged (update {update})");
}

#[test]
fn auto_follows_the_checkpoint_on_gpus_and_is_f32_on_cpus() {
    assert_eq!(checkpoint_dtype(&fixture("llama/bf16_shards")).unwrap(), Some(WeightDtype::Bf16));
    assert_eq!(checkpoint_dtype(&fixture("llama/gqa")).unwrap(), Some(WeightDtype::F32));
    let resolved = DtypeChoice::Auto.resolve::<TestBackend>(&fixture("llama/bf16_shards"), &device()).unwrap();
    let expected = if <TestBackend as KernelBackend>::GPU { WeightDtype::Bf16 } else { WeightDtype::F32 };
    assert_eq!(resolved, expected);
    let exact = DtypeChoice::Exact(WeightDtype::Bf16).resolve::<TestBackend>(&fixture("llama/gqa"), &device());
    assert_eq!(exact.unwrap(), WeightDtype::Bf16, "flex holds bf16");
    // A missing config.json is an error that names it.
    let missing = DtypeChoice::Auto.resolve::<TestBackend>(&fixture("llama/no-such-model"), &device());
    if <TestBackend as KernelBackend>::GPU {
        assert!(missing.unwrap_err().to_string().contains("config.json"));
    }
}

#[test]
fn half_model_memory_is_half() {
    let dir = fixture("llama/bf16_shards");
    let bytes = |model: &Llama<TestBackend>| -> usize { model.base_tensors().iter().map(|(_, t)| t.as_bytes().len()).sum() };
    let f32_bytes = bytes(&Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::F32).unwrap());
    let bf16_bytes = bytes(&Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::Bf16).unwrap());
    assert_eq!(2 * bf16_bytes, f32_bytes);
}

/// Greedy decoding (a merged, f32 decoding copy on flex) continues the same as the f32 model
/// of the same weights, with an adapter folded in.
#[test]
fn bf16_generation_equals_f32_generation_of_the_same_weights() {
    use lalora::generate::{generate, SamplingConfig};
    let dir = fixture("llama/bf16_shards");
    let lora = LoraConfig { init: LoraInit::Offset, rank: 4, seed: 9, ..Default::default() };
    let prompt = Reference::load(&dir).row(0)[..5].to_vec();
    let config = SamplingConfig { max_new_tokens: 8, temperature: 0.0, ..Default::default() };
    let continuation = |dtype: WeightDtype| {
        let mut model = Llama::<TestBackend>::load_as(&dir, &device(), dtype).unwrap().with_adapters(&lora).unwrap();
        for adapter in model.adapters_mut() {
            adapter.lora_b = adapter.lora_b.clone().map(|b| b.mul_scalar(1.5));
        }
        generate(&model, &prompt, &config, &[])
    };
    // The decoding copy evaluation uses: merged (in f32 on flex), logits as the model's.
    let mut model = Llama::<TestBackend>::load_as(&dir, &device(), WeightDtype::Bf16).unwrap().with_adapters(&lora).unwrap();
    for adapter in model.adapters_mut() {
        adapter.lora_b = adapter.lora_b.clone().map(|b| b.mul_scalar(1.5));
    }
    let reference = Reference::load(&dir);
    let decoding = lalora::generate::decoding_model(&model);
    let bound = if <TestBackend as KernelBackend>::WIDENS_FROZEN_WEIGHTS { 1e-4 } else { 0.1 };
    assert_close_report(
        "decoding copy",
        &real_logits(&decoding, &reference, &device()),
        &real_logits(&model, &reference, &device()),
        bound,
    );
    let f32_tokens = continuation(WeightDtype::F32);
    assert_eq!(f32_tokens.len(), 8);
    if <TestBackend as KernelBackend>::WIDENS_FROZEN_WEIGHTS {
        assert_eq!(continuation(WeightDtype::Bf16), f32_tokens);
    }
}
