//! The training objective's scale, pinned exactly: two optimiser steps of `LaLoRA::train` equal
//! two AdamW steps computed here by hand, in f64, on
//!
//! `loss(theta) + (lambda/2) (theta - theta*)^T (F + delta I) (theta - theta*)`
//!
//! with `loss` the token mean over the step's sequences, F a curvature written down here (not
//! fitted), and AdamW's decoupled decay pulling toward the starting adapters `theta_0`. It runs
//! for l2, diag and kfac, with gradient accumulation 1 and 4 (one batch of 4 sequences, or four
//! micro-batches of one sequence of different lengths).
//!
//! Mutations it catches (each checked by hand when it was written): lambda instead of lambda/2;
//! the penalty added once per micro-batch; micro-batch losses averaged with equal weights
//! instead of per token; decay toward zero instead of toward the starting adapters.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use lalora::curvature::{Curvature, DiagBlock, KfacBlock};
use lalora::data::{Batch, Sequence};
use lalora::llama::Llama;
use lalora::train::{lm_objective, DataConfig, OptimizerConfig, ScheduleConfig, ScheduleKind};
use lalora::{AdapterSource, LaLoRA, LaplacePrior, LoraConfig, LoraInit, Penalty, Tokenizer, TrainConfig, TrainControl, TrainData};

type AB = TestAutodiff;

const LR: f64 = 0.01;
const EPS: f64 = 1e-3;
const WD: f64 = 0.5;
const LAMBDA: f64 = 3.0;
const DELTA: f64 = 0.25;
const STEPS: usize = 2;

/// Deterministic values in [-0.5, 0.5) (no random generator: the test must not depend on one).
fn pattern(n: usize, salt: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * 7919 + salt * 104_729) % 1000) as f64) / 1000.0 - 0.5).collect()
}

fn tensor(values: &[f64], shape: [usize; 2]) -> Tensor<AB, 2> {
    Tensor::from_data(TensorData::new(values.iter().map(|&v| v as f32).collect::<Vec<f32>>(), shape), &device())
}

/// A symmetric positive definite `n x n` matrix `M M^T / n + 0.1 I`, row-major.
fn spd(n: usize, salt: usize) -> Vec<f64> {
    let m = pattern(n * n, salt);
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>() / n as f64 + if i == j { 0.1 } else { 0.0 };
        }
    }
    out
}

/// `a [n, k] * b [k, m]`, row-major.
fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for l in 0..k {
            let x = a[i * k + l];
            for j in 0..m {
                out[i * m + j] += x * b[l * m + j];
            }
        }
    }
    out
}

/// The curvature the test writes down, per adapter, in f64.
#[derive(Clone)]
enum Known {
    /// The isotropic prior only (l2: delta = 1, centred on the starting adapters).
    None,
    /// `(F_A, F_B)` entry-wise, positive.
    Diag(Vec<(Vec<f64>, Vec<f64>)>),
    /// `(X_A, G_A, X_B, G_B)`.
    Kfac(Vec<[Vec<f64>; 4]>),
}

/// Shapes `(r, d_in, d_out)` of every adapter.
fn shapes(model: &Llama<AB>) -> Vec<(usize, usize, usize)> {
    model
        .adapters()
        .iter()
        .map(|a| {
            let [r, d_in] = a.lora_a.val().dims();
            (r, d_in, a.lora_b.val().dims()[0])
        })
        .collect()
}

fn known(kind: &str, shapes: &[(usize, usize, usize)]) -> Known {
    match kind {
        "l2" => Known::None,
        "diag" => Known::Diag(
            shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, d_in, d_out))| {
                    let positive = |n, salt| pattern(n, salt).iter().map(|v| v + 0.6).collect::<Vec<f64>>();
                    (positive(r * d_in, 2 * i + 1), positive(d_out * r, 2 * i + 2))
                })
                .collect(),
        ),
        "kfac" => Known::Kfac(
            shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, d_in, d_out))| [spd(d_in, 4 * i), spd(r, 4 * i + 1), spd(r, 4 * i + 2), spd(d_out, 4 * i + 3)])
                .collect(),
        ),
        _ => unreachable!(),
    }
}

/// `F (dA, dB)` of one adapter under the known curvature (`G dA X` for kfac's blocks).
fn curvature_product(known: &Known, i: usize, (r, d_in, d_out): (usize, usize, usize), d_a: &[f64], d_b: &[f64]) -> (Vec<f64>, Vec<f64>) {
    match known {
        Known::None => (vec![0.0; d_a.len()], vec![0.0; d_b.len()]),
        Known::Diag(blocks) => {
            let (f_a, f_b) = &blocks[i];
            (d_a.iter().zip(f_a).map(|(d, f)| d * f).collect(), d_b.iter().zip(f_b).map(|(d, f)| d * f).collect())
        }
        Known::Kfac(blocks) => {
            let [x_a, g_a, x_b, g_b] = &blocks[i];
            let p_a = matmul(&matmul(g_a, d_a, r, r, d_in), x_a, r, d_in, d_in);
            let p_b = matmul(&matmul(g_b, d_b, d_out, d_out, r), x_b, d_out, r, r);
            (p_a, p_b)
        }
    }
}

/// The prior the library trains with: the known curvature at `anchor`, precision `DELTA`.
fn library_prior(known: &Known, anchor: &Llama<AB>, shapes: &[(usize, usize, usize)]) -> LaplacePrior<AB> {
    let mut prior = LaplacePrior::isotropic(anchor, DELTA);
    let paths: Vec<String> = prior.anchors.iter().map(|a| a.path.clone()).collect();
    prior.curvature = match known {
        Known::None => None,
        Known::Diag(blocks) => Some(Curvature::Diag(
            blocks
                .iter()
                .zip(&paths)
                .zip(shapes)
                .map(|(((f_a, f_b), path), &(r, d_in, d_out))| DiagBlock {
                    path: path.clone(),
                    a: tensor(f_a, [r, d_in]),
                    b: tensor(f_b, [d_out, r]),
                })
                .collect(),
        )),
        Known::Kfac(blocks) => Some(Curvature::Kfac(
            blocks
                .iter()
                .zip(&paths)
                .zip(shapes)
                .map(|(([x_a, g_a, x_b, g_b], path), &(r, d_in, d_out))| KfacBlock {
                    path: path.clone(),
                    x_a: tensor(x_a, [d_in, d_in]),
                    g_a: tensor(g_a, [r, r]),
                    x_b: tensor(x_b, [r, r]),
                    g_b: tensor(g_b, [d_out, d_out]),
                })
                .collect(),
        )),
    };
    prior
}

/// Every adapter's `(A, B)` as flat f64 vectors.
fn adapters(model: &Llama<AB>) -> Vec<(Vec<f64>, Vec<f64>)> {
    model.adapters().iter().map(|a| (values(&a.lora_a.val()), values(&a.lora_b.val()))).collect()
}

/// Sets every adapter to `theta` (keeping the parameters' ids).
fn set_adapters(model: &mut Llama<AB>, theta: &[(Vec<f64>, Vec<f64>)]) {
    for (adapter, (a, b)) in model.adapters_mut().into_iter().zip(theta) {
        let (sa, sb) = (adapter.lora_a.val().dims(), adapter.lora_b.val().dims());
        adapter.lora_a = adapter.lora_a.clone().map(|_| tensor(a, sa).require_grad());
        adapter.lora_b = adapter.lora_b.clone().map(|_| tensor(b, sb).require_grad());
    }
}

/// The gradient of the token-mean NLL over all of `sequences` as ONE batch (dropout off).
fn loss_gradient(model: &Llama<AB>, sequences: &[Sequence]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let batch = Batch::new(&refs, &device());
    let grads = lm_objective(model, &batch, false, false).surrogate.backward();
    model
        .adapters()
        .iter()
        .map(|a| (values(&a.lora_a.val().grad(&grads).unwrap()), values(&a.lora_b.val().grad(&grads).unwrap())))
        .collect()
}

/// `STEPS` AdamW steps by hand from `theta_0` (the model's adapters) on the loss plus
/// `(lambda/2) d^T (F + delta I) d`, `d = theta - centre`; decay `theta - theta_0`.
fn reference(model: &Llama<AB>, sequences: &[Sequence], known: &Known, centre: &[(Vec<f64>, Vec<f64>)], delta: f64) -> Vec<f64> {
    let shapes = shapes(model);
    let theta0 = adapters(model);
    let mut theta = theta0.clone();
    let flat = |t: &[(Vec<f64>, Vec<f64>)]| t.iter().flat_map(|(a, b)| a.iter().chain(b).copied()).collect::<Vec<f64>>();
    let n = flat(&theta).len();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (b1, b2) = (0.9f64, 0.999f64);
    let mut model = model.clone();
    for t in 1..=STEPS {
        set_adapters(&mut model, &theta);
        let loss = loss_gradient(&model, sequences);
        let mut grad = Vec::with_capacity(n);
        for (i, ((a, b), (ca, cb))) in theta.iter().zip(centre).enumerate() {
            let d_a: Vec<f64> = a.iter().zip(ca).map(|(x, c)| x - c).collect();
            let d_b: Vec<f64> = b.iter().zip(cb).map(|(x, c)| x - c).collect();
            let (p_a, p_b) = curvature_product(known, i, shapes[i], &d_a, &d_b);
            // d/dtheta of (lambda/2) d^T (F + delta I) d = lambda (F d + delta d)
            for ((l, p), d) in loss[i].0.iter().zip(&p_a).zip(&d_a) {
                grad.push(l + LAMBDA * (p + delta * d));
            }
            for ((l, p), d) in loss[i].1.iter().zip(&p_b).zip(&d_b) {
                grad.push(l + LAMBDA * (p + delta * d));
            }
        }
        let (x, x0) = (flat(&theta), flat(&theta0));
        let mut next = Vec::with_capacity(n);
        for j in 0..n {
            m[j] = b1 * m[j] + (1.0 - b1) * grad[j];
            v[j] = b2 * v[j] + (1.0 - b2) * grad[j] * grad[j];
            let (m_hat, v_hat) = (m[j] / (1.0 - b1.powi(t as i32)), v[j] / (1.0 - b2.powi(t as i32)));
            next.push(x[j] - LR * WD * (x[j] - x0[j]) - LR * m_hat / (v_hat.sqrt() + EPS));
        }
        let mut k = 0;
        for (a, b) in theta.iter_mut() {
            for value in a.iter_mut().chain(b.iter_mut()) {
                *value = next[k];
                k += 1;
            }
        }
    }
    flat(&theta)
}

/// Four sequences of different lengths (so a per-micro-batch mean differs from the token mean).
fn sequences(tokenizer: &Tokenizer) -> Vec<Sequence> {
    ["A cat.", "Numbers 12 and 34 add to 46, said the fox.", "Hello there my good friend.", "One two three four five six seven."]
        .iter()
        .map(|t| Sequence::text(tokenizer.encode(t).unwrap()))
        .collect()
}

fn config(penalty: Penalty, batch_size: usize, grad_accum: usize) -> TrainConfig {
    TrainConfig::new()
        .with_penalty(penalty)
        .with_schedule(ScheduleConfig::new().with_steps(STEPS).with_lr(LR).with_warmup_steps(0).with_kind(ScheduleKind::Constant))
        .with_optimizer(OptimizerConfig::new().with_eps(EPS as f32).with_weight_decay(WD as f32).with_clip(None))
        .with_data(DataConfig::new().with_batch_size(batch_size).with_grad_accum(grad_accum).with_seed(5))
        .with_checkpoint_every(0)
}

/// Trains `kind` for `STEPS` steps with `grad_accum` micro-batches per step (4 sequences per
/// step either way) and returns (library, hand) adapters and how far the adapters moved.
fn run(kind: &str, grad_accum: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let data = sequences(&tokenizer);
    let lora = LoraConfig { rank: 4, alpha: 8.0, init: LoraInit::Offset, dropout: 0.0, seed: 3, ..Default::default() };
    let base = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap();
    let start = LaLoRA::from_model(base, AdapterSource::Fresh(lora)).unwrap();
    let shapes = shapes(&start.model);
    let known = known(kind, &shapes);
    // The prior's anchor theta* is the fresh adapters; training starts elsewhere, so the
    // Laplace penalty pulls from the first step. l2's centre is where training starts.
    let prior = library_prior(&known, &start.model, &shapes);
    let mut model = start.model.clone();
    let shifted: Vec<(Vec<f64>, Vec<f64>)> = adapters(&model)
        .into_iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let shift = |x: Vec<f64>, salt| x.iter().zip(pattern(x.len(), salt)).map(|(v, p)| v + 0.2 * p).collect::<Vec<f64>>();
            (shift(a, 100 + 2 * i), shift(b, 101 + 2 * i))
        })
        .collect();
    set_adapters(&mut model, &shifted);
    let (penalty, centre, delta) = match kind {
        "l2" => (Penalty::L2 { lambda: LAMBDA }, shifted.clone(), 1.0),
        _ => (Penalty::Laplace { lambda: LAMBDA }, adapters(&start.model), DELTA),
    };
    let expected = reference(&model, &data, &known, &centre, delta);
    let train = LaLoRA { model, lora: start.lora.clone(), prior: Some(prior) };
    let (batch_size, accum) = (4 / grad_accum, grad_accum);
    let td = TrainData { sequences: &data, eval_sets: &[], tokenizer: &tokenizer };
    let (out, report) = train.train(&td, &config(penalty, batch_size, accum), &TrainControl::default()).unwrap();
    assert_eq!(report.steps_done, STEPS);
    let actual: Vec<f64> = adapters(&out.model).into_iter().flat_map(|(a, b)| a.into_iter().chain(b)).collect();
    let begin: Vec<f64> = shifted.into_iter().flat_map(|(a, b)| a.into_iter().chain(b)).collect();
    let moved = actual.iter().zip(&begin).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    (actual, expected, moved)
}

fn check(kind: &str, grad_accum: usize) {
    let (actual, expected, moved) = run(kind, grad_accum);
    let worst = actual.iter().zip(&expected).map(|(a, e)| (a - e).abs()).fold(0.0, f64::max);
    eprintln!("{kind} accum {grad_accum}: adapters moved up to {moved:.3e}, library vs hand up to {worst:.3e}");
    // Two steps of lr 0.01 move entries by up to ~0.02; f32 arithmetic agrees to ~1e-6.
    assert!(moved > 5e-3, "{kind}: training must move the adapters ({moved})");
    assert_close_f64(&format!("{kind}, grad accumulation {grad_accum}"), &actual, &expected, 2e-5, 0.0);
}

#[test]
fn l2_steps_equal_hand_computed_adamw() {
    check("l2", 1);
    check("l2", 4);
}

#[test]
fn diag_steps_equal_hand_computed_adamw() {
    check("diag", 1);
    check("diag", 4);
}

#[test]
fn kfac_steps_equal_hand_computed_adamw() {
    check("kfac", 1);
    check("kfac", 4);
}
