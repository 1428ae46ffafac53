//! The core reference cases on every enabled backend: `cargo test --features ndarray,wgpu
//! --test backends` runs them on flex, ndarray and wgpu in one binary.
//!
//! A backend whose device is missing (wgpu without a Vulkan driver, say) is skipped with a
//! message, except under CI (`CI=true`), where a missing device fails the run, so no backend
//! goes untested unnoticed.

mod common;

use common::*;

/// Whether to run on a backend, given whether its device answers.
fn should_run(name: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "backend `{name}` has no usable device, and CI=true requires every enabled backend to run");
    eprintln!("SKIPPED: backend `{name}` has no usable device on this machine");
    false
}

macro_rules! backend_cases {
    ($backend:ident) => {
        mod $backend {
            use super::*;
            use burn::backend::Autodiff;
            use lalora::data::{Batch, Sequence};
            use lalora::eval::score_text;
            use lalora::generate::{generate, SamplingConfig};
            use lalora::io::peft;
            use lalora::llama::Llama;
            use lalora::progress::Progress;
            use lalora::train::lm_objective;

            type B = lalora_backends::$backend::Backend;

            fn device() -> <B as burn::tensor::backend::BackendTypes>::Device {
                lalora_backends::$backend::device()
            }

            fn run() -> bool {
                should_run(stringify!($backend), lalora_backends::$backend::available())
            }

            #[test]
            fn llama_logits_equal_transformers() {
                if !run() {
                    return;
                }
                for case in ["gqa", "tied_llama3", "head_dim"] {
                    let dir = fixture(&format!("llama/{case}"));
                    let reference = Reference::load(&dir);
                    let model = Llama::<B>::load(&dir, &device()).unwrap();
                    reference.assert_logits_equal(&model, &device(), &format!("{} {case}", stringify!($backend)), 1e-4);
                }
            }

            /// bf16 and f16 base weights run within transformers' own half-precision error of
            /// its half forward, or are refused with an error naming the type (ndarray has
            /// neither; wgpu has no bf16, and f16 only with `SHADER_F16`).
            #[test]
            fn half_precision_weights_follow_transformers_or_are_refused() {
                use lalora::llama::WeightDtype;
                if !run() {
                    return;
                }
                let backend = stringify!($backend);
                for (case, dtype, file) in [
                    ("bf16_shards", WeightDtype::Bf16, "reference_bf16.safetensors"),
                    ("head_dim", WeightDtype::F16, "reference_f16.safetensors"),
                ] {
                    if let Err(e) = dtype.check_backend::<B>(&device()) {
                        let message = e.to_string();
                        eprintln!("{backend}: {dtype} refused: {message}");
                        assert!(!matches!(backend, "flex" | "cuda"), "{backend} should hold {dtype}: {message}");
                        assert!(message.contains(dtype.name()) && message.contains("--dtype f32"), "{message}");
                        continue;
                    }
                    let dir = fixture(&format!("llama/{case}"));
                    let reference = Reference::load(&dir);
                    let model = Llama::<B>::load_as(&dir, &device(), dtype).unwrap();
                    let ours = real_logits(&model, &reference, &device());
                    let hf_half = half_reference(case, file, "logits", &reference);
                    let own_error = max_abs_diff(&hf_half, &half_reference(case, file, "logits_f32", &reference));
                    let error = max_abs_diff(&ours, &hf_half);
                    eprintln!("{backend} {dtype}: {error:.3e} from transformers' {dtype} forward (its own error {own_error:.3e})");
                    assert!(error <= 1.5 * own_error, "{backend} {dtype}: {error} vs {own_error}");
                }
            }

            #[test]
            fn peft_logits_equal_peft() {
                if !run() {
                    return;
                }
                let dir = fixture("peft/all7");
                let reference = Reference::load(&dir);
                let base = Llama::<B>::load(&fixture("llama/gqa"), &device()).unwrap();
                let (model, _) = peft::load_adapter(base, &dir).unwrap();
                reference.assert_logits_equal(&model, &device(), &format!("{} peft", stringify!($backend)), 1e-4);
            }

            #[test]
            fn nll_and_cached_generation_equal_transformers() {
                if !run() {
                    return;
                }
                let model = Llama::<B>::load(&fixture("llama/gqa"), &device()).unwrap();
                let reference = Reference::load(&fixture("llama/gqa"));
                let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
                let score = score_text(&model, &sequences, 3, &Progress::hidden());
                let expected: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(fixture("llama/gqa/nll.json")).unwrap()).unwrap();
                for (ours, row) in score.sequences.iter().zip(expected["rows"].as_array().unwrap()) {
                    let theirs = row["loss"].as_f64().unwrap();
                    assert!((ours.nll.unwrap() - theirs).abs() < 1e-4, "{:?} vs {theirs}", ours.nll);
                }
                let expected: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(fixture("llama/gqa/generate.json")).unwrap()).unwrap();
                let ids =
                    |key: &str| -> Vec<u32> { expected[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
                let config = SamplingConfig { max_new_tokens: 8, ..Default::default() };
                assert_eq!(generate(&model, &ids("prompt_ids"), &config, &[]), ids("generated_ids"));
            }

            /// The training objective's adapter gradients agree with the CPU test backend's.
            #[test]
            fn lora_gradients_match_the_test_backend() {
                if !run() {
                    return;
                }
                fn grads<BB: lalora::KernelBackend>(device: &BB::Device) -> Vec<Vec<f32>> {
                    let base = Llama::<Autodiff<BB>>::load(&fixture("llama/gqa"), device).unwrap();
                    let (model, _) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
                    let reference = Reference::load(&fixture("llama/gqa"));
                    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
                    let refs: Vec<&Sequence> = sequences.iter().collect();
                    let batch = Batch::new(&refs, device);
                    let grads = lm_objective(&model, &batch, false, false).surrogate.backward();
                    model
                        .adapters()
                        .iter()
                        .flat_map(|a| [a.lora_a.grad(&grads).unwrap(), a.lora_b.grad(&grads).unwrap()])
                        .map(|g| g.into_data().convert::<f32>().to_vec().unwrap())
                        .collect()
                }
                let ours = grads::<B>(&device());
                let reference = grads::<TestBackend>(&common::device());
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    let what = format!("{} adapter tensor {i}", stringify!($backend));
                    assert_close_report(&what, a, b, 1e-4);
                }
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_cases!(flex);
#[cfg(feature = "ndarray")]
backend_cases!(ndarray);
#[cfg(feature = "wgpu")]
backend_cases!(wgpu);
#[cfg(feature = "cuda")]
backend_cases!(cuda);
