//! The Laplace prior: its penalty equals the explicit quadratic form of the materialised matrix
//! `F + delta I`, its gradient matches finite differences, and it survives save -> load.

mod common;

use burn::tensor::Tensor;
use common::*;
use lalora::curvature::memory::curvature_memory;
use lalora::curvature::{Curvature, Estimator, FisherType};
use lalora::laplace::{fit, LaplaceConfig, LaplacePrior};
use lalora::llama::Llama;
use lalora::lora::trainable_param;
use lalora::LoraConfig;

type AB = TestAutodiff;

fn fitted(estimator: Estimator, delta: f64) -> (Llama<AB>, LoraConfig, LaplacePrior<AB>) {
    let (model, lora) = gqa_with_all7_adapter();
    let config = LaplaceConfig::new()
        .with_estimator(estimator)
        .with_fisher(FisherType::Empirical)
        .with_prior_precision(delta)
        .with_batches_per_source(1)
        .with_batch_size(3);
    let (prior, report) = fit(&model, &lora, &reference_rows("reference", &[0, 1, 2]), &config, false).unwrap();
    assert_eq!(report.batches, 1);
    (model, lora, prior)
}

/// Moves every adapter away from the anchor by a deterministic perturbation.
fn perturbed(model: &Llama<AB>, amount: f64) -> Llama<AB> {
    let mut m = model.clone();
    for (i, a) in m.adapters_mut().into_iter().enumerate() {
        let bump = |t: Tensor<AB, 2>, k: f64| {
            let [r, c] = t.dims();
            let ramp: Vec<f32> = (0..r * c).map(|j| j as f32).collect();
            let ramp = Tensor::<AB, 2>::from_data(burn::tensor::TensorData::new(ramp, [r, c]), &device());
            t + (ramp.mul_scalar(0.37 + k).sin()).mul_scalar(amount)
        };
        a.lora_a = trainable_param(bump(a.lora_a.val(), i as f64), &format!("a{i}"));
        a.lora_b = trainable_param(bump(a.lora_b.val(), 0.5 + i as f64), &format!("b{i}"));
    }
    m
}

/// `sum_i d_i^T (F_i + delta I) d_i` from materialised per-adapter matrices, in f64.
fn explicit_quadratic(prior: &LaplacePrior<AB>, model: &Llama<AB>) -> f64 {
    let curvature = prior.curvature.as_ref().unwrap();
    let mut total = 0.0;
    for (i, (adapter, anchor)) in model.adapters().iter().zip(&prior.anchors).enumerate() {
        let mut d = values(&(adapter.lora_a.val() - anchor.a.clone()));
        let na = d.len();
        d.extend(values(&(adapter.lora_b.val() - anchor.b.clone())));
        let n = d.len();
        let mut p = Mat::zeros(n, n);
        let mut put = |r0: usize, c0: usize, m: &Mat, symmetric: bool| {
            for i in 0..m.rows {
                for j in 0..m.cols {
                    p.data[(r0 + i) * n + c0 + j] += m.at(i, j);
                    if symmetric {
                        p.data[(c0 + j) * n + r0 + i] += m.at(i, j);
                    }
                }
            }
        };
        match curvature {
            Curvature::Diag(b) => {
                for (k, v) in values(&b[i].a).into_iter().chain(values(&b[i].b)).enumerate() {
                    p.data[k * n + k] += v;
                }
            }
            Curvature::Kfac(b) => {
                put(0, 0, &Mat::from_tensor(&b[i].g_a).kron(&Mat::from_tensor(&b[i].x_a)), false);
                put(na, na, &Mat::from_tensor(&b[i].g_b).kron(&Mat::from_tensor(&b[i].x_b)), false);
            }
            Curvature::TriKfac(b) => {
                let k = &b[i].kfac;
                put(0, 0, &Mat::from_tensor(&k.g_a).kron(&Mat::from_tensor(&k.x_a)), false);
                put(na, na, &Mat::from_tensor(&k.g_b).kron(&Mat::from_tensor(&k.x_b)), false);
                put(0, na, &Mat::from_tensor(&b[i].g_ab).kron(&Mat::from_tensor(&b[i].x_ab)), true);
            }
            // Sums over tasks are tested in tests/continual.rs.
            Curvature::Sum(_) => panic!("a single fit is never a sum"),
            // Low-rank factors are tested in tests/low_rank.rs.
            Curvature::LowRank(_) => panic!("these fits use full factors"),
        }
        for k in 0..n {
            p.data[k * n + k] += prior.prior_precision;
        }
        for r in 0..n {
            for c in 0..n {
                total += d[r] * p.at(r, c) * d[c];
            }
        }
    }
    total
}

#[test]
fn penalty_equals_the_explicit_quadratic_form_of_the_materialised_matrix() {
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let (model, _, prior) = fitted(estimator, 0.3);
        let moved = perturbed(&model, 0.05);
        let ours: f32 = prior.quadratic(&moved).into_scalar();
        let theirs = explicit_quadratic(&prior, &moved);
        assert!(theirs > 0.0);
        assert!(((ours as f64) - theirs).abs() <= 1e-4 * theirs, "{}: {ours} vs {theirs}", estimator.name());
        // A quadratic form: twice the displacement gives four times the value (a linear term,
        // a constant or |d| instead of d^2 would not).
        let twice: f32 = prior.quadratic(&perturbed(&model, 0.1)).into_scalar();
        assert!(((twice as f64) - 4.0 * theirs).abs() <= 1e-4 * theirs, "{}: {twice} vs 4 x {theirs}", estimator.name());
    }
}

/// Central differences of `quadratic` along entry `k` of adapter 4's A (`b = false`) or B.
fn finite_difference(prior: &LaplacePrior<AB>, moved: &Llama<AB>, b: bool, k: usize) -> f64 {
    // The penalty is quadratic, so central differences are exact up to rounding even with a
    // large step.
    let eps = 0.05;
    let shift = |sign: f64| {
        let mut m = moved.clone();
        let adapter = &mut m.adapters_mut()[4]; // gate_proj of layer 0
        let param = if b { &mut adapter.lora_b } else { &mut adapter.lora_a };
        let dims = param.dims();
        let mut v = values(&param.val());
        v[k] += sign * eps;
        let data = burn::tensor::TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), dims);
        *param = trainable_param(Tensor::from_data(data, &device()), "fd");
        prior.quadratic(&m).into_scalar() as f64
    };
    (shift(1.0) - shift(-1.0)) / (2.0 * eps)
}

#[test]
fn penalty_gradient_matches_finite_differences() {
    // The fixture's B is not zero, so neither are the A blocks and tri-kfac's cross block.
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let (model, _, prior) = fitted(estimator, 0.1);
        let moved = perturbed(&model, 0.05);
        // Both routes: autodiff through the quadratic form, and the training surrogate built
        // from the curvature-vector product. `penalty(model, scale)` is `scale * quadratic`, so
        // scale 1 has the quadratic's gradient `2 (F + delta I) d` (training passes lambda/2,
        // giving `lambda (F + delta I) d`; tests/objective.rs pins that end to end).
        let through_quadratic = prior.quadratic(&moved).backward();
        let term = prior.penalty(&moved, 1.0);
        let value: f32 = term.value.into_scalar();
        let direct: f32 = prior.quadratic(&moved).into_scalar();
        assert!((value - direct).abs() <= 1e-5 * direct.abs(), "{}: penalty value {value} vs quadratic {direct}", estimator.name());
        let half: f32 = prior.penalty(&moved, 0.5).value.into_scalar();
        assert!((half - 0.5 * direct).abs() <= 1e-5 * direct.abs(), "{}: scale 0.5 gives {half}, quadratic {direct}", estimator.name());
        let through_product = term.surrogate.backward();
        let adapter = &moved.adapters()[4];
        for b in [false, true] {
            let param = if b { &adapter.lora_b } else { &adapter.lora_a };
            let [rows, cols] = param.dims();
            for grads in [&through_quadratic, &through_product] {
                let analytic = values(&param.grad(grads).unwrap());
                let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{}: zero gradient", estimator.name());
                for &k in &[0usize, 7, rows * cols / 2, rows * cols - 1] {
                    let fd = finite_difference(&prior, &moved, b, k);
                    let what = if b { "B" } else { "A" };
                    assert!((fd - analytic[k]).abs() <= 2e-3 * scale, "{} {what}[{k}]: fd {fd} vs {}", estimator.name(), analytic[k]);
                }
            }
        }
    }
}

#[test]
fn save_then_load_gives_the_same_prior() {
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let (model, lora, prior) = fitted(estimator, 0.2);
        let dir = temp_dir(&format!("prior-{}", estimator.name()));
        prior.save(&dir, &model, &lora).unwrap();
        let loaded = LaplacePrior::load(&dir, &model).unwrap();
        let meta = loaded.meta.clone().unwrap();
        // The saved record adds the hashes of the files written beside it.
        assert_eq!(meta.files.len(), 3, "{:?}", meta.files);
        assert_eq!(Some(lalora::laplace::LaplaceMeta { files: Default::default(), ..meta.clone() }), prior.meta);
        assert_eq!((meta.curvature, meta.prior_precision, meta.rank, meta.tokens), (estimator, 0.2, 4, 25));
        let moved = perturbed(&model, 0.05);
        let (a, b): (f32, f32) = (prior.quadratic(&moved).into_scalar(), loaded.quadratic(&moved).into_scalar());
        assert_eq!(a, b, "{}", estimator.name());
        for ((n1, t1), (n2, t2)) in prior.curvature.as_ref().unwrap().tensors().iter().zip(loaded.curvature.unwrap().tensors()) {
            assert_eq!(n1, &n2);
            assert_eq!(values(t1), values(&t2), "{n1}");
        }
    }
}

#[test]
fn a_prior_for_other_adapters_is_refused_with_the_reason() {
    let (model, lora, prior) = fitted(Estimator::Kfac, 0.0);
    let dir = temp_dir("prior-mismatch");
    prior.save(&dir, &model, &lora).unwrap();
    let other = Llama::<AB>::load(&fixture("llama/gqa"), &device())
        .unwrap()
        .with_adapters(&LoraConfig { rank: 2, alpha: 4.0, ..Default::default() })
        .unwrap();
    let err = LaplacePrior::load(&dir, &other).unwrap_err().to_string();
    assert!(err.contains("laplace.json") && err.contains("rank 4") && err.contains("rank 2"), "{err}");
    // A curvature file missing a tensor names it.
    let files = lalora::io::TensorFiles::open_file(&dir.join("curvature.safetensors")).unwrap();
    let mut tensors: Vec<(String, burn::tensor::TensorData)> = files
        .names()
        .into_iter()
        .filter(|n| !n.ends_with("layers.1.mlp.up_proj.lora_B.G"))
        .map(|n| (n.clone(), files.read_f32_any(&n).unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    drop(files);
    lalora::io::save_tensors(&dir.join("curvature.safetensors"), tensors, None).unwrap();
    // The edited file no longer has the hash laplace.json records (that is refused first);
    // without the record, as in a prior written before hashes were kept, the shape check names it.
    let err = LaplacePrior::load(&dir, &model).unwrap_err().to_string();
    assert!(err.contains("curvature.safetensors") && err.contains("does not match the hash"), "{err}");
    let meta_path = dir.join("laplace.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("files");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = LaplacePrior::load(&dir, &model).unwrap_err().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.lora_B.G") && err.contains("missing"), "{err}");
}

#[test]
fn the_memory_estimate_counts_exactly_the_values_a_fit_stores() {
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let (model, lora, prior) = fitted(estimator, 0.0);
        let stored: usize = prior.curvature.as_ref().unwrap().tensors().iter().map(|(_, t)| t.shape().num_elements()).sum();
        let estimate = curvature_memory(&model.config, &lora, estimator);
        assert_eq!(stored as u64, estimate.stored_values, "{}", estimator.name());
    }
}
