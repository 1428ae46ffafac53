//! Priors accumulated over tasks (continual LaLoRA): `gamma P_1 + P_2`, anchored at the newer
//! fit's adapters, equals the explicit quadratic form of the materialised matrices
//! `gamma (F_1 + delta_1 I) + F_2 + delta_2 I` for every estimator (diagonals added, B-KFAC and
//! B-Tri-KFAC kept as exact lists of Kronecker terms), through the penalty too, and survives
//! save -> load and a third accumulation.

mod common;

use burn::tensor::Tensor;
use common::*;
use lalora::curvature::{Curvature, Estimator, FisherType};
use lalora::laplace::{fit, LaplaceConfig, LaplacePrior};
use lalora::llama::Llama;
use lalora::lora::trainable_param;
use lalora::LoraConfig;

type AB = TestAutodiff;

fn fitted(model: &Llama<AB>, lora: &LoraConfig, estimator: Estimator, rows: &[usize], delta: f64) -> LaplacePrior<AB> {
    let config = LaplaceConfig::new()
        .with_estimator(estimator)
        .with_fisher(FisherType::Empirical)
        .with_prior_precision(delta)
        .with_batches_per_source(1)
        .with_batch_size(rows.len());
    fit(model, lora, &reference_rows(&format!("rows{:?}", rows), rows), &config, false).unwrap().0
}

/// Moves every adapter by a deterministic perturbation (`phase` picks which).
fn perturbed(model: &Llama<AB>, amount: f64, phase: f64) -> Llama<AB> {
    let mut m = model.clone();
    for (i, a) in m.adapters_mut().into_iter().enumerate() {
        let bump = |t: Tensor<AB, 2>, k: f64| {
            let [r, c] = t.dims();
            let ramp: Vec<f32> = (0..r * c).map(|j| j as f32).collect();
            let ramp = Tensor::<AB, 2>::from_data(burn::tensor::TensorData::new(ramp, [r, c]), &device());
            t + (ramp.mul_scalar(0.37 + k + phase).sin()).mul_scalar(amount)
        };
        a.lora_a = trainable_param(bump(a.lora_a.val(), i as f64), &format!("a{i}"));
        a.lora_b = trainable_param(bump(a.lora_b.val(), 0.5 + i as f64), &format!("b{i}"));
    }
    m
}

/// Adds `weight * F_i` (adapter i's block of a plain, fitted curvature) into the dense `p`,
/// with `na` A entries first.
fn add_block(p: &mut Mat, curvature: &Curvature<AB>, i: usize, na: usize, weight: f64) {
    let n = p.rows;
    let mut put = |r0: usize, c0: usize, m: &Mat, symmetric: bool| {
        for r in 0..m.rows {
            for c in 0..m.cols {
                p.data[(r0 + r) * n + c0 + c] += weight * m.at(r, c);
                if symmetric {
                    p.data[(c0 + c) * n + r0 + r] += weight * m.at(r, c);
                }
            }
        }
    };
    match curvature {
        Curvature::Diag(b) => {
            for (k, v) in values(&b[i].a).into_iter().chain(values(&b[i].b)).enumerate() {
                put(k, k, &Mat { rows: 1, cols: 1, data: vec![v] }, false);
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
        Curvature::Sum(_) => panic!("the reference is built from plain fits only"),
        Curvature::LowRank(_) => panic!("the reference is built from full factors only"),
    }
}

/// `sum_i d_i^T (sum_k w_k (F_k,i + delta_k I)) d_i` from materialised matrices of the plain
/// fits `parts = [(w_k, prior_k)]`, in f64, at the anchor `anchor`.
fn explicit_quadratic(parts: &[(f64, &LaplacePrior<AB>)], anchor: &LaplacePrior<AB>, model: &Llama<AB>) -> f64 {
    let mut total = 0.0;
    for (i, (adapter, anchor)) in model.adapters().iter().zip(&anchor.anchors).enumerate() {
        let mut d = values(&(adapter.lora_a.val() - anchor.a.clone()));
        let na = d.len();
        d.extend(values(&(adapter.lora_b.val() - anchor.b.clone())));
        let n = d.len();
        let mut p = Mat::zeros(n, n);
        for (w, prior) in parts {
            add_block(&mut p, prior.curvature.as_ref().unwrap(), i, na, *w);
            for k in 0..n {
                p.data[k * n + k] += w * prior.prior_precision;
            }
        }
        for r in 0..n {
            for c in 0..n {
                total += d[r] * p.at(r, c) * d[c];
            }
        }
    }
    total
}

fn assert_rel(what: &str, ours: f64, theirs: f64, tol: f64) {
    assert!(theirs > 0.0, "{what}: the reference is {theirs}");
    assert!((ours - theirs).abs() <= tol * theirs, "{what}: {ours} vs {theirs} (relative {:.2e})", (ours - theirs).abs() / theirs);
}

#[test]
fn accumulated_priors_equal_the_weighted_sum_of_the_materialised_matrices() {
    let gamma = 0.6;
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let name = estimator.name();
        let (model, lora) = gqa_with_all7_adapter();
        // Task 1's fit at the starting adapters; task 2's at moved adapters on other data.
        let first = fitted(&model, &lora, estimator, &[0, 1], 0.3);
        let later = perturbed(&model, 0.04, 0.0);
        let second = fitted(&later, &lora, estimator, &[2], 0.1);
        let combined = first.accumulate(&second, gamma).unwrap();

        // Diagonals are added into one diagonal; Kronecker factors are kept term by term.
        match (estimator, combined.curvature.as_ref().unwrap()) {
            (Estimator::Diag, Curvature::Diag(_)) => {}
            (Estimator::Kfac | Estimator::TriKfac, Curvature::Sum(sum)) => {
                assert_eq!(sum.weights, vec![gamma, 1.0], "{name}");
            }
            (_, other) => panic!("{name}: unexpected {:?}", other.estimator()),
        }
        assert!((combined.prior_precision - (gamma * 0.3 + 0.1)).abs() < 1e-12);
        let terms = &combined.meta.as_ref().unwrap().terms;
        assert_eq!(terms.iter().map(|t| t.weight).collect::<Vec<_>>(), vec![gamma, 1.0]);
        assert_eq!(terms.iter().map(|t| t.tokens).sum::<usize>(), combined.meta.as_ref().unwrap().tokens);

        // Anchored at the newer fit: zero there, the explicit form elsewhere.
        let at_anchor: f32 = combined.quadratic(&later).into_scalar();
        assert!(at_anchor.abs() < 1e-10, "{name}: zero at the new anchor, got {at_anchor}");
        let moved = perturbed(&model, 0.05, 1.3);
        let parts = [(gamma, &first), (1.0, &second)];
        let theirs = explicit_quadratic(&parts, &second, &moved);
        let ours: f32 = combined.quadratic(&moved).into_scalar();
        assert_rel(&format!("{name} quadratic"), ours as f64, theirs, 1e-4);
        // The penalty (the product form training uses) has the same value.
        let penalty: f32 = combined.penalty(&moved, 0.5).value.into_scalar();
        assert_rel(&format!("{name} penalty"), penalty as f64, 0.5 * theirs, 1e-4);
        // Not the newer fit alone: the older task's curvature really is in the sum.
        let newer_only = explicit_quadratic(&[(1.0, &second)], &second, &moved);
        assert!((theirs - newer_only).abs() > 1e-3 * theirs, "{name}: the older term is negligible in this test");

        // save -> load keeps the sum and its weights.
        let dir = temp_dir(&format!("continual-{name}"));
        combined.save(&dir, &moved, &lora).unwrap();
        let loaded = LaplacePrior::load(&dir, &moved).unwrap();
        // Loading adds the saved files' hashes; everything else is as saved.
        let mut loaded_meta = loaded.meta.clone().unwrap();
        assert!(!loaded_meta.files.is_empty(), "the saved prior records its files' hashes");
        loaded_meta.files.clear();
        assert_eq!(Some(loaded_meta), combined.meta);
        let reloaded: f32 = loaded.quadratic(&moved).into_scalar();
        assert_rel(&format!("{name} after load"), reloaded as f64, theirs, 1e-5);

        // A third task: gamma (gamma P1 + P2) + P3, the terms flattened.
        let third_at = perturbed(&model, 0.03, 2.1);
        let third = fitted(&third_at, &lora, estimator, &[1, 2], 0.0);
        let three = loaded.accumulate(&third, gamma).unwrap();
        if let Curvature::Sum(sum) = three.curvature.as_ref().unwrap() {
            assert_eq!(sum.terms.len(), 3, "{name}");
        }
        let parts = [(gamma * gamma, &first), (gamma, &second), (1.0, &third)];
        let theirs = explicit_quadratic(&parts, &third, &moved);
        let ours: f32 = three.quadratic(&moved).into_scalar();
        assert_rel(&format!("{name} three tasks"), ours as f64, theirs, 1e-4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn decay_zero_keeps_only_the_newest_fit_and_mismatches_are_refused() {
    let (model, lora) = gqa_with_all7_adapter();
    let first = fitted(&model, &lora, Estimator::Kfac, &[0, 1], 0.0);
    let later = perturbed(&model, 0.04, 0.0);
    let second = fitted(&later, &lora, Estimator::Kfac, &[2], 0.0);
    let only_new = first.accumulate(&second, 0.0).unwrap();
    assert!(matches!(only_new.curvature, Some(Curvature::Kfac(_))), "one term of weight 1 is a plain prior again");
    assert!(only_new.meta.as_ref().unwrap().terms.is_empty());
    let moved = perturbed(&model, 0.05, 1.3);
    let (a, b): (f32, f32) = (only_new.quadratic(&moved).into_scalar(), second.quadratic(&moved).into_scalar());
    assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");

    let diag = fitted(&later, &lora, Estimator::Diag, &[2], 0.0);
    let err = first.accumulate(&diag, 1.0).unwrap_err().to_string();
    assert!(err.contains("kfac") && err.contains("diag"), "{err}");
    let err = first.accumulate(&second, -1.0).unwrap_err().to_string();
    assert!(err.contains("decay"), "{err}");
    let isotropic = LaplacePrior::isotropic(&later, 1.0);
    let err = first.accumulate(&isotropic, 1.0).unwrap_err().to_string();
    assert!(err.contains("isotropic"), "{err}");
}
