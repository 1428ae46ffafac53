//! Curvature exactness against brute-force GGN/Fisher matrices built here, in f64 (DESIGN.md,
//! "What correctness means"), and against the float64 torch-hook reference of
//! scripts/curvature_reference.py.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use lalora::curvature::{adapter_infos, capture_batch, tap_stats, Accumulator, AdapterInfo, Curvature, Estimator, FisherType};
use lalora::data::{Batch, Sequence};
use lalora::io::peft;
use lalora::llama::{Llama, Projection};
use lalora::lora::{frozen_param, trainable_param, AdapterTap, InitRng, LoraAdapter, LoraLinear};

type AB = TestAutodiff;

/// f32 against f64 brute force: relative to the largest entry.
const EXACT_TOL: f64 = 2e-5;

fn tensor2(rng: &mut InitRng, shape: [usize; 2], std: f64) -> Tensor<AB, 2> {
    Tensor::from_data(TensorData::new(rng.normal(shape[0] * shape[1], std), shape), &device())
}

// ---------------------------------------------------------------------------------------------
// Deep linear stack of LoRA layers with square loss: KFAC-expand is exact.

struct Stack {
    layers: Vec<LoraLinear<AB>>,
}

impl Stack {
    /// `dims = [d0, d1, ...]`: layer l maps d_l -> d_{l+1}, rank r, scale s.
    fn new(dims: &[usize], r: usize, scale: f64, seed: u64, zero_b: bool) -> Self {
        let mut rng = InitRng::new(seed);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let (d_in, d_out) = (w[0], w[1]);
                // Each layer of the stack plays a q_proj of its own layer: every adapter reads its
                // own input.
                let path = Projection::Q.module_path(l);
                let b = if zero_b { Tensor::zeros([d_out, r], &device()) } else { tensor2(&mut rng, [d_out, r], 0.7) };
                LoraLinear {
                    weight: frozen_param(tensor2(&mut rng, [d_out, d_in], 0.5)),
                    adapter: Some(LoraAdapter {
                        layer: l,
                        projection: Projection::Q,
                        lora_a: trainable_param(tensor2(&mut rng, [r, d_in], 0.6), &format!("{path}.A")),
                        lora_b: trainable_param(b, &format!("{path}.B")),
                        offset: None,
                        scale,
                        dropout: 0.0,
                    }),
                }
            })
            .collect();
        Stack { layers }
    }

    fn forward(&self, x: Tensor<AB, 3>, mut taps: Option<&mut Vec<AdapterTap<AB>>>) -> Tensor<AB, 3> {
        self.layers.iter().fold(x, |h, layer| layer.forward_with(h, false, taps.as_deref_mut()))
    }

    fn infos(&self) -> Vec<AdapterInfo> {
        self.layers
            .iter()
            .map(|l| {
                let a = l.adapter.as_ref().unwrap();
                AdapterInfo { path: a.path(), dims: l.dims(), rank: a.rank(), scale: a.scale, input: a.path() }
            })
            .collect()
    }

    /// Gradient of `loss` w.r.t. every (A, B), flattened row-major in layer order.
    fn flat_grad(&self, loss: Tensor<AB, 1>) -> Vec<f64> {
        let grads = loss.backward();
        self.layers
            .iter()
            .flat_map(|l| {
                let a = l.adapter.as_ref().unwrap();
                let mut v = values(&a.lora_a.grad(&grads).unwrap());
                v.extend(values(&a.lora_b.grad(&grads).unwrap()));
                v
            })
            .collect()
    }
}

fn random_input(shape: [usize; 3], seed: u64) -> Tensor<AB, 3> {
    let mut rng = InitRng::new(seed);
    Tensor::from_data(TensorData::new(rng.normal(shape.iter().product(), 1.0), shape), &device())
}

/// Exact GGN of `sum_tokens 1/2 |f - y|^2` (H = I), per-token average: `sum_{n,k} j j^T / N`.
fn exact_ggn_square_loss(stack: &Stack, x: &Tensor<AB, 3>) -> Mat {
    let [b, t, _] = x.dims();
    let d_out = stack.layers.last().unwrap().dims()[0];
    let mut ggn: Option<Mat> = None;
    for n in 0..b {
        for s in 0..t {
            for k in 0..d_out {
                let f = stack.forward(x.clone(), None);
                let j = stack.flat_grad(f.slice([n..n + 1, s..s + 1, k..k + 1]).sum());
                let p = j.len();
                let m = ggn.get_or_insert_with(|| Mat::zeros(p, p));
                for (i, ji) in j.iter().enumerate() {
                    for (l, jl) in j.iter().enumerate() {
                        m.data[i * p + l] += ji * jl;
                    }
                }
            }
        }
    }
    let mut m = ggn.unwrap();
    m.data.iter_mut().for_each(|v| *v /= (b * t) as f64);
    m
}

/// KFAC statistics of the stack under exact type-2 labels for H = I: one backward per output
/// unit vector.
fn stack_curvature(stack: &Stack, x: &Tensor<AB, 3>, estimator: Estimator) -> Curvature<TestBackend> {
    let [b, t, _] = x.dims();
    let d_out = stack.layers.last().unwrap().dims()[0];
    let mask = Tensor::<TestBackend, 2>::ones([b, t], &device());
    let mut acc = Accumulator::new(estimator, stack.infos());
    for k in 0..d_out {
        let mut taps = Vec::new();
        let f = stack.forward(x.clone(), Some(&mut taps));
        let grads = f.narrow(2, k, 1).sum().backward();
        let stats = tap_stats(&taps, &grads);
        if k == 0 {
            acc.observe_inputs(&stats, &mask, b * t);
        }
        acc.observe_gradients(&stats, &mask, 1.0);
    }
    acc.finish()
}

/// Offsets of adapter i's A and B in the flat parameter vector.
fn offsets(infos: &[AdapterInfo]) -> Vec<(usize, usize, usize, usize)> {
    let mut at = 0;
    infos
        .iter()
        .map(|info| {
            let [d_out, d_in] = info.dims;
            let (na, nb) = (info.rank * d_in, d_out * info.rank);
            let o = (at, na, at + na, nb);
            at += na + nb;
            o
        })
        .collect()
}

#[test]
fn kfac_and_tri_kfac_equal_the_exact_ggn_blocks_of_a_deep_linear_lora_stack() {
    let stack = Stack::new(&[5, 4, 3], 2, 1.5, 1, false);
    let x = random_input([2, 3, 5], 2);
    let ggn = exact_ggn_square_loss(&stack, &x);
    let infos = stack.infos();
    let Curvature::TriKfac(tri) = stack_curvature(&stack, &x, Estimator::TriKfac) else { panic!() };
    let Curvature::Kfac(kfac) = stack_curvature(&stack, &x, Estimator::Kfac) else { panic!() };
    for (i, (oa, na, ob, nb)) in offsets(&infos).into_iter().enumerate() {
        let k = &kfac[i];
        // The A block is G_A kron X_A, not X_A kron G_A: this pins the factor convention.
        let aa = Mat::from_tensor(&k.g_a).kron(&Mat::from_tensor(&k.x_a));
        let bb = Mat::from_tensor(&k.g_b).kron(&Mat::from_tensor(&k.x_b));
        let ab = Mat::from_tensor(&tri[i].g_ab).kron(&Mat::from_tensor(&tri[i].x_ab));
        assert_mat_close(&format!("layer {i} A-A"), &aa, &ggn.block(oa, oa, na, na), EXACT_TOL);
        assert_mat_close(&format!("layer {i} B-B"), &bb, &ggn.block(ob, ob, nb, nb), EXACT_TOL);
        assert_mat_close(&format!("layer {i} A-B"), &ab, &ggn.block(oa, ob, na, nb), EXACT_TOL);
        // tri-kfac's own A and B blocks against the exact GGN too (not against kfac's, which
        // come from the same code).
        let (ta, tb) = (&tri[i].kfac, &tri[i].kfac);
        let tri_aa = Mat::from_tensor(&ta.g_a).kron(&Mat::from_tensor(&ta.x_a));
        let tri_bb = Mat::from_tensor(&tb.g_b).kron(&Mat::from_tensor(&tb.x_b));
        assert_mat_close(&format!("layer {i} tri-kfac A-A"), &tri_aa, &ggn.block(oa, oa, na, na), EXACT_TOL);
        assert_mat_close(&format!("layer {i} tri-kfac B-B"), &tri_bb, &ggn.block(ob, ob, nb, nb), EXACT_TOL);
        // diag is the exact diagonal of the same matrix (one example per token here).
        let Curvature::Diag(diag) = stack_curvature(&stack, &x, Estimator::Diag) else { panic!() };
        let mut ours = values(&diag[i].a);
        ours.extend(values(&diag[i].b));
        let exact: Vec<f64> = (oa..oa + na).chain(ob..ob + nb).map(|j| ggn.at(j, j)).collect();
        assert_close_f64(&format!("layer {i} diag"), &ours, &exact, EXACT_TOL, 0.0);
        assert!(ggn.block(oa, oa, na, na).max_abs() > 1e-3, "the A block is not trivially zero");
    }
}

// ---------------------------------------------------------------------------------------------
// The Llama fixture with a non-zero-B peft adapter and cross-entropy.

fn llama_all7() -> Llama<AB> {
    let base = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap();
    peft::load_adapter(base, &fixture("peft/all7")).unwrap().0
}

fn batch(sequences: &[Sequence]) -> Batch<AB> {
    let refs: Vec<&Sequence> = sequences.iter().collect();
    Batch::new(&refs, &device())
}

/// Flattened (A, B) gradients of every adapter of the model.
fn model_flat_grad(model: &Llama<AB>, loss: Tensor<AB, 1>) -> Vec<f64> {
    let grads = loss.backward();
    model
        .adapters()
        .iter()
        .flat_map(|a| {
            let mut v = values(&a.lora_a.grad(&grads).unwrap());
            v.extend(values(&a.lora_b.grad(&grads).unwrap()));
            v
        })
        .collect()
}

/// Exact GGN (= type-2 Fisher for softmax cross-entropy) of one sequence's last position,
/// restricted to the entries `keep`: `J^T (diag p - p p^T) J` with J from one backward pass per
/// logit, through autodiff of the full model (head and log-softmax included).
fn exact_ggn_last_position(model: &Llama<AB>, seq: &Sequence, keep: &[usize]) -> Mat {
    let b = batch(std::slice::from_ref(seq));
    let pos = seq.ids.len() - 2; // the position that predicts the last token
    let logits = model.forward(b.input_ids.clone(), Some(b.key_mask.clone()));
    let vocab = logits.dims()[2];
    let p = values(&burn::tensor::activation::softmax(logits.inner().narrow(1, pos, 1), 2));
    let jac: Vec<Vec<f64>> = (0..vocab)
        .map(|k| {
            let logits = model.forward(b.input_ids.clone(), Some(b.key_mask.clone()));
            let full = model_flat_grad(model, logits.slice([0..1, pos..pos + 1, k..k + 1]).sum());
            keep.iter().map(|&i| full[i]).collect()
        })
        .collect();
    let n = keep.len();
    let mut ggn = Mat::zeros(n, n);
    // J^T diag(p) J - (J^T p)(J^T p)^T
    let jtp: Vec<f64> = (0..n).map(|i| (0..vocab).map(|k| jac[k][i] * p[k]).sum()).collect();
    for i in 0..n {
        for l in 0..n {
            let d: f64 = (0..vocab).map(|k| p[k] * jac[k][i] * jac[k][l]).sum();
            ggn.data[i * n + l] = d - jtp[i] * jtp[l];
        }
    }
    ggn
}

fn fitted(model: &Llama<AB>, sequences: &[Sequence], estimator: Estimator, fisher: FisherType) -> Curvature<TestBackend> {
    let mut acc = Accumulator::new(estimator, adapter_infos(model));
    capture_batch(model, &batch(sequences), fisher, &mut acc);
    acc.finish()
}

#[test]
fn kfac_equals_the_exact_block_for_one_datum_one_token_with_cross_entropy() {
    let model = llama_all7();
    let seq = Sequence::text(vec![297, 51]); // one predicted token
    let infos = adapter_infos(&model);
    let Curvature::TriKfac(tri) = fitted(&model, std::slice::from_ref(&seq), Estimator::TriKfac, FisherType::Exhaustive) else { panic!() };
    // Two adapters are enough to pin every block type without a 300 x 8192 Jacobian in memory.
    // Not q_proj or k_proj of layer 0: with one query position, attention there is a softmax
    // over a single key, so their exact blocks are zero and both sides hold rounding noise.
    for i in [2usize, 13] {
        let (oa, na, ob, nb) = offsets(&infos)[i];
        let keep: Vec<usize> = (oa..oa + na).chain(ob..ob + nb).collect();
        let exact = exact_ggn_last_position(&model, &seq, &keep);
        let k = &tri[i].kfac;
        let aa = Mat::from_tensor(&k.g_a).kron(&Mat::from_tensor(&k.x_a));
        let bb = Mat::from_tensor(&k.g_b).kron(&Mat::from_tensor(&k.x_b));
        let ab = Mat::from_tensor(&tri[i].g_ab).kron(&Mat::from_tensor(&tri[i].x_ab));
        let path = &infos[i].path;
        assert_mat_close(&format!("{path} A-A"), &aa, &exact.block(0, 0, na, na), 1e-4);
        assert_mat_close(&format!("{path} B-B"), &bb, &exact.block(na, na, nb, nb), 1e-4);
        assert_mat_close(&format!("{path} A-B"), &ab, &exact.block(0, na, na, nb), 1e-4);
    }
}

#[test]
fn diag_equals_the_exact_ggn_diagonal_with_labels_enumerated() {
    let model = llama_all7();
    // One loss position per sequence, at position 0: there no other position reaches it
    // through attention, so the per-token diagonal is the exact GGN diagonal (with longer
    // prompts the GGN also has the cross-position terms every per-token estimator drops; see
    // curvature::math).
    let sequences = vec![Sequence::new(vec![297, 51], 1), Sequence::new(vec![288, 290], 1)];
    let Curvature::Diag(diag) = fitted(&model, &sequences, Estimator::Diag, FisherType::Exhaustive) else { panic!() };
    let infos = adapter_infos(&model);
    for i in [2usize, 11] {
        let (oa, na, ob, nb) = offsets(&infos)[i];
        let keep: Vec<usize> = (oa..oa + na).chain(ob..ob + nb).collect();
        let mut exact = vec![0.0; keep.len()];
        for seq in &sequences {
            let g = exact_ggn_last_position(&model, seq, &keep);
            for (j, e) in exact.iter_mut().enumerate() {
                *e += g.at(j, j) / sequences.len() as f64; // N_tok = one token per sequence
            }
        }
        let mut ours = values(&diag[i].a);
        ours.extend(values(&diag[i].b));
        let scale = exact.iter().cloned().fold(0.0, f64::max);
        assert!(scale > 0.0);
        assert_close_f64(&format!("{} diag", infos[i].path), &ours, &exact, 1e-4 * scale, 0.0);
    }
}

fn relative_error(a: &Curvature<TestBackend>, b: &Curvature<TestBackend>) -> f64 {
    let (ta, tb) = (a.tensors(), b.tensors());
    let (mut num, mut den) = (0.0, 0.0);
    for ((_, x), (_, y)) in ta.iter().zip(&tb) {
        for (u, v) in values(x).iter().zip(values(y)) {
            num += (u - v).powi(2);
            den += v * v;
        }
    }
    (num / den).sqrt()
}

#[test]
fn mc_fisher_converges_to_the_exact_fisher_as_samples_grow() {
    const FEW: usize = 8;
    const MANY: usize = 512;
    use burn::tensor::backend::Backend;
    let model = llama_all7();
    let sequences = vec![Sequence::text(vec![297, 51, 257]), Sequence::text(vec![297, 32, 220])];
    // One loss token per sequence keeps the enumerated reference exact.
    let sequences: Vec<Sequence> = sequences.into_iter().map(|s| Sequence { first_target: 2, ..s }).collect();
    // kfac and the (per-token) MC diagonal alike.
    for estimator in [Estimator::Kfac, Estimator::Diag] {
        let exact = fitted(&model, &sequences, estimator, FisherType::Exhaustive);
        TestBackend::seed(&device(), 7);
        let few = fitted(&model, &sequences, estimator, FisherType::Mc { samples: FEW });
        let many = fitted(&model, &sequences, estimator, FisherType::Mc { samples: MANY });
        let (e_few, e_many) = (relative_error(&few, &exact), relative_error(&many, &exact));
        let name = estimator.name();
        eprintln!("{name} relative error: {FEW} samples {e_few:.4}, {MANY} samples {e_many:.4}");
        assert!(e_many < 0.1, "{name}: {MANY} samples still {e_many:.3} away");
        assert!(e_many < 0.5 * e_few, "{name}: error did not shrink: {e_few:.4} -> {e_many:.4}");
    }
}

#[test]
fn tri_kfac_is_psd() {
    let model = llama_all7();
    let reference = Reference::load(&fixture("llama/gqa"));
    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
    let Curvature::TriKfac(tri) = fitted(&model, &sequences, Estimator::TriKfac, FisherType::Mc { samples: 1 }) else { panic!() };
    for block in [&tri[0], &tri[6], &tri[13]] {
        let k = &block.kfac;
        let aa = Mat::from_tensor(&k.g_a).kron(&Mat::from_tensor(&k.x_a));
        let bb = Mat::from_tensor(&k.g_b).kron(&Mat::from_tensor(&k.x_b));
        let ab = Mat::from_tensor(&block.g_ab).kron(&Mat::from_tensor(&block.x_ab));
        let (na, nb) = (aa.rows, bb.rows);
        let mut joint = Mat::zeros(na + nb, na + nb);
        for i in 0..na + nb {
            for j in 0..na + nb {
                joint.data[i * (na + nb) + j] = match (i < na, j < na) {
                    (true, true) => aa.at(i, j),
                    (false, false) => bb.at(i - na, j - na),
                    (true, false) => ab.at(i, j - na),
                    (false, true) => ab.at(j, i - na),
                };
            }
        }
        let eig = joint.symmetric_eigenvalues();
        let min = eig.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = eig.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(max > 0.0);
        assert!(min >= -1e-5 * max, "{}: smallest eigenvalue {min:e}, largest {max:e}", k.path);
    }
}

#[test]
fn at_b_zero_the_a_and_cross_blocks_vanish() {
    let stack = Stack::new(&[4, 3, 2], 2, 2.0, 5, true);
    let x = random_input([2, 2, 4], 6);
    let Curvature::TriKfac(tri) = stack_curvature(&stack, &x, Estimator::TriKfac) else { panic!() };
    for block in &tri {
        assert_eq!(Mat::from_tensor(&block.kfac.g_a).max_abs(), 0.0, "G_A");
        assert_eq!(Mat::from_tensor(&block.g_ab).max_abs(), 0.0, "G_AB");
        assert!(Mat::from_tensor(&block.kfac.g_b).max_abs() > 0.0, "B is still constrained");
    }
    // On the Llama too, with PEFT's init.
    let model = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap().with_adapters(&Default::default()).unwrap();
    let Curvature::TriKfac(tri) = fitted(&model, &[Sequence::text(vec![297, 51, 257, 220])], Estimator::TriKfac, FisherType::Empirical)
    else {
        panic!()
    };
    assert!(tri.iter().all(|b| Mat::from_tensor(&b.kfac.g_a).max_abs() == 0.0 && Mat::from_tensor(&b.g_ab).max_abs() == 0.0));
    // diag's A entries too (the B = 0 warning names every curvature).
    let Curvature::Diag(diag) = fitted(&model, &[Sequence::text(vec![297, 51, 257, 220])], Estimator::Diag, FisherType::Empirical) else {
        panic!()
    };
    assert!(diag.iter().all(|b| Mat::from_tensor(&b.a).max_abs() == 0.0 && Mat::from_tensor(&b.b).max_abs() > 0.0));
}

#[test]
fn factors_equal_the_float64_torch_hook_reference() {
    let model = llama_all7();
    let reference = Reference::load(&fixture("llama/gqa"));
    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
    let expected = lalora::io::TensorFiles::open_file(&fixture("curvature/empirical.safetensors")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("curvature/meta.json")).unwrap()).unwrap();
    let mut checked = 0;
    for estimator in [Estimator::Diag, Estimator::TriKfac] {
        let mut acc = Accumulator::new(estimator, adapter_infos(&model));
        capture_batch(&model, &batch(&sequences), FisherType::Empirical, &mut acc);
        assert_eq!(acc.tokens() as u64, meta["N_tok"].as_u64().unwrap());
        for (name, tensor) in acc.finish().tensors() {
            let (_, theirs) = expected.read_f64_any(&name).unwrap();
            let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert_close_f64(&name, &values(&tensor), &theirs, 1e-5 * scale + 1e-9, 1e-3);
            checked += 1;
        }
    }
    assert_eq!(checked, expected.names().len(), "every reference tensor compared");
}

#[test]
fn batched_capture_equals_one_by_one() {
    let model = llama_all7();
    let reference = Reference::load(&fixture("llama/gqa"));
    let sequences: Vec<Sequence> = (0..3).map(|i| Sequence::text(reference.row(i))).collect();
    for estimator in [Estimator::Diag, Estimator::TriKfac] {
        let together = fitted(&model, &sequences, estimator, FisherType::Empirical);
        let mut acc = Accumulator::new(estimator, adapter_infos(&model));
        for s in &sequences {
            capture_batch(&model, &batch(std::slice::from_ref(s)), FisherType::Empirical, &mut acc);
        }
        let apart = acc.finish();
        for ((name, a), (_, b)) in together.tensors().iter().zip(apart.tensors()) {
            let (a, b) = (values(a), values(&b));
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert_close_f64(name, &a, &b, 1e-5 * scale, 0.0);
        }
    }
}
