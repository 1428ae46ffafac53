//! Low-rank Kronecker factors (`factor_rank`, src/curvature/low_rank.rs).
//!
//! The reference is built here, in f64, from factors whose eigenvectors and eigenvalues are
//! known by construction (products of Householder reflections): the compressed factor must be
//! `V_k diag(l_k) V_k^T + diag(diag(M) - diag(V_k diag(l_k) V_k^T))`, the cross factors of
//! tri-kfac `G_AB Q` and `P X_AB`; the penalty must be the explicit quadratic form of the joint
//! matrix materialised from those, and its autodiff gradient twice that matrix times the
//! displacement. Also: a factor of rank <= k and k >= d give the full penalty; the compressed
//! tri-kfac of a fitted-like curvature is PSD; a fit with `factor_rank` survives save -> load.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use lalora::curvature::low_rank::compress_curvature;
use lalora::curvature::memory::{curvature_memory, curvature_memory_at};
use lalora::curvature::sketch::sketch_curvature;
use lalora::curvature::sum::weighted_sum;
use lalora::curvature::{adapter_infos, Curvature, Estimator, FisherType, KfacBlock, TriKfacBlock};
use lalora::laplace::{fit, LaplaceConfig, LaplacePrior};
use lalora::LoraConfig;

type AB = TestAutodiff;

/// Deterministic standard normals (xorshift + Box-Muller), so the test needs no generator crate.
struct Normals(u64);

impl Normals {
    fn next(&mut self) -> f64 {
        let mut uniform = || {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn mat(&mut self, rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: (0..rows * cols).map(|_| self.next()).collect() }
    }
}

fn mul(a: &Mat, b: &Mat) -> Mat {
    assert_eq!(a.cols, b.rows);
    let mut out = Mat::zeros(a.rows, b.cols);
    for i in 0..a.rows {
        for k in 0..a.cols {
            let x = a.at(i, k);
            for j in 0..b.cols {
                out.data[i * b.cols + j] += x * b.at(k, j);
            }
        }
    }
    out
}

fn transpose(a: &Mat) -> Mat {
    let mut out = Mat::zeros(a.cols, a.rows);
    for i in 0..a.rows {
        for j in 0..a.cols {
            out.data[j * a.rows + i] = a.at(i, j);
        }
    }
    out
}

fn add(a: &Mat, b: &Mat) -> Mat {
    Mat { rows: a.rows, cols: a.cols, data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect() }
}

fn diagonal(values: &[f64]) -> Mat {
    let n = values.len();
    let mut out = Mat::zeros(n, n);
    for (i, v) in values.iter().enumerate() {
        out.data[i * n + i] = *v;
    }
    out
}

fn tensor<B: burn::tensor::backend::Backend>(m: &Mat) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(m.data.iter().map(|&v| v as f32).collect::<Vec<_>>(), [m.rows, m.cols]), &Default::default())
}

/// An orthogonal `[d, d]` matrix: the product of three Householder reflections.
fn orthogonal(d: usize, rng: &mut Normals) -> Mat {
    let mut q = diagonal(&vec![1.0; d]);
    for _ in 0..3 {
        let w = rng.mat(d, 1);
        let norm2: f64 = w.data.iter().map(|v| v * v).sum();
        let mut h = diagonal(&vec![1.0; d]);
        for i in 0..d {
            for j in 0..d {
                h.data[i * d + j] -= 2.0 * w.data[i] * w.data[j] / norm2;
            }
        }
        q = mul(&q, &h);
    }
    q
}

/// `M = V diag(l) V^T` with distinct decaying eigenvalues `l_i = scale / (1 + i)^1.5`, and
/// the reference compression at rank k: `V_k diag(l_k) V_k^T + diag(diag(M) - diag(..))`,
/// and the projector `V_k V_k^T`.
struct Known {
    m: Mat,
    compressed: Mat,
    projector: Mat,
}

fn known(d: usize, k: usize, scale: f64, rng: &mut Normals) -> Known {
    let v = orthogonal(d, rng);
    let l: Vec<f64> = (0..d).map(|i| scale / (1.0 + i as f64).powf(1.5)).collect();
    let m = mul(&mul(&v, &diagonal(&l)), &transpose(&v));
    let v_k = v.block(0, 0, d, k.min(d));
    let top = mul(&mul(&v_k, &diagonal(&l[..k.min(d)])), &transpose(&v_k));
    let remainder: Vec<f64> = (0..d).map(|i| m.at(i, i) - top.at(i, i)).collect();
    Known { compressed: add(&top, &diagonal(&remainder)), projector: mul(&v_k, &transpose(&v_k)), m }
}

/// `[d, d]` Gram matrix of n random rows over d features, divided by n.
fn gram(n: usize, d: usize, rng: &mut Normals) -> Mat {
    let x = rng.mat(n, d);
    let g = mul(&transpose(&x), &x);
    Mat { rows: d, cols: d, data: g.data.iter().map(|v| v / n as f64).collect() }
}

/// The joint (A, B) matrix `[[G_A kron X_A, G_AB kron X_AB], [.., G_B kron X_B]]` in the
/// row-major vec convention (`vec(dA)` first), cross block only when given.
fn joint(x_a: &Mat, g_a: &Mat, x_b: &Mat, g_b: &Mat, cross: Option<(&Mat, &Mat)>) -> Mat {
    let (aa, bb) = (g_a.kron(x_a), g_b.kron(x_b));
    let (na, nb) = (aa.rows, bb.rows);
    let n = na + nb;
    let mut out = Mat::zeros(n, n);
    for i in 0..na {
        for j in 0..na {
            out.data[i * n + j] = aa.at(i, j);
        }
    }
    for i in 0..nb {
        for j in 0..nb {
            out.data[(na + i) * n + na + j] = bb.at(i, j);
        }
    }
    if let Some((g_ab, x_ab)) = cross {
        let ab = g_ab.kron(x_ab);
        for i in 0..na {
            for j in 0..nb {
                out.data[i * n + na + j] = ab.at(i, j);
                out.data[(na + j) * n + i] = ab.at(i, j);
            }
        }
    }
    out
}

/// Checks block 0 of `curvature` against the explicit matrix `reference`: the quadratic form
/// at a random `(dA, dB)`, `F vec(dA, dB)` (the product the training penalty uses) and the
/// autodiff gradient of the quadratic form (`2 F vec(dA, dB)`), each to `tol` relative.
fn assert_matches_matrix(what: &str, curvature: &Curvature<AB>, reference: &Mat, shapes: ([usize; 2], [usize; 2]), tol: f64, seed: u64) {
    let mut rng = Normals(seed);
    let ([r, d_in], [d_out, _]) = shapes;
    let (d_a, d_b) = (rng.mat(r, d_in), rng.mat(d_out, r));
    let v: Vec<f64> = d_a.data.iter().chain(&d_b.data).copied().collect();
    let fv = mul(reference, &Mat { rows: v.len(), cols: 1, data: v.clone() });
    let expected_value: f64 = v.iter().zip(&fv.data).map(|(a, b)| a * b).sum();

    let (t_a, t_b) = (tensor::<AB>(&d_a).require_grad(), tensor::<AB>(&d_b).require_grad());
    let value = curvature.quadratic(0, t_a.clone(), t_b.clone());
    let got_value = values(&value)[0];
    assert!((got_value - expected_value).abs() <= tol * expected_value.abs(), "{what}: quadratic {got_value} vs explicit {expected_value}");
    let grads = value.backward();
    let gradient: Vec<f64> = values(&t_a.grad(&grads).unwrap()).into_iter().chain(values(&t_b.grad(&grads).unwrap())).collect();
    let twice: Vec<f64> = fv.data.iter().map(|x| 2.0 * x).collect();
    let scale = twice.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert_close_f64(&format!("{what}: autodiff gradient vs 2 F v"), &gradient, &twice, tol * scale, 0.0);

    let (p_a, p_b) = curvature.product(0, tensor::<AB>(&d_a), tensor::<AB>(&d_b));
    let product: Vec<f64> = values(&p_a).into_iter().chain(values(&p_b)).collect();
    assert_close_f64(&format!("{what}: product vs F v"), &product, &fv.data, tol * scale / 2.0, 0.0);
}

fn kfac_block(path: &str, x_a: &Mat, g_a: &Mat, x_b: &Mat, g_b: &Mat) -> KfacBlock<AB> {
    KfacBlock { path: path.into(), x_a: tensor(x_a), g_a: tensor(g_a), x_b: tensor(x_b), g_b: tensor(g_b) }
}

#[test]
fn compressed_penalty_and_gradient_equal_the_explicit_compressed_matrix() {
    let (r, d_in, d_out, k) = (3, 12, 10, 4);
    let mut rng = Normals(0x1234_5678);
    let x_a = known(d_in, k, 2.0, &mut rng);
    let g_b = known(d_out, k, 0.7, &mut rng);
    let (g_a, x_b) = (gram(5, r, &mut rng), gram(7, r, &mut rng));
    let (g_ab, x_ab) = (rng.mat(r, d_out), rng.mat(d_in, r));
    let shapes = ([r, d_in], [d_out, r]);

    // kfac
    let kfac = compress_curvature(Curvature::Kfac(vec![kfac_block("m", &x_a.m, &g_a, &x_b, &g_b.m)]), k).unwrap();
    assert!(matches!(&kfac, Curvature::LowRank(_)), "compressed");
    assert_eq!(kfac.estimator(), Estimator::Kfac);
    let reference = joint(&x_a.compressed, &g_a, &x_b, &g_b.compressed, None);
    assert_matches_matrix("kfac k=4", &kfac, &reference, shapes, 2e-5, 1);
    // The diagonals, hence the trace, are the full factors'.
    let full_trace = joint(&x_a.m, &g_a, &x_b, &g_b.m, None);
    let trace = |m: &Mat| (0..m.rows).map(|i| m.at(i, i)).sum::<f64>();
    assert!((kfac.trace() - trace(&full_trace)).abs() <= 1e-5 * trace(&full_trace), "trace {} vs {}", kfac.trace(), trace(&full_trace));
    // What is stored: the top-k eigenvalues.
    let Curvature::LowRank(blocks) = &kfac else { unreachable!() };
    let lalora::curvature::Factor::LowRank(f) = &blocks[0].x_a else { panic!("X_A is compressed") };
    let expected: Vec<f64> = (0..k).map(|i| 2.0 / (1.0 + i as f64).powf(1.5)).collect();
    assert_close_f64("top eigenvalues of X_A", &values(&f.values), &expected, 1e-5, 0.0);

    // tri-kfac: the cross factors are mapped to G_AB Q and P X_AB.
    let tri = TriKfacBlock { kfac: kfac_block("m", &x_a.m, &g_a, &x_b, &g_b.m), g_ab: tensor(&g_ab), x_ab: tensor(&x_ab) };
    let tri = compress_curvature(Curvature::TriKfac(vec![tri]), k).unwrap();
    assert_eq!(tri.estimator(), Estimator::TriKfac);
    let (g_ab_q, p_x_ab) = (mul(&g_ab, &g_b.projector), mul(&x_a.projector, &x_ab));
    let reference = joint(&x_a.compressed, &g_a, &x_b, &g_b.compressed, Some((&g_ab_q, &p_x_ab)));
    assert_matches_matrix("tri-kfac k=4", &tri, &reference, shapes, 2e-5, 2);
}

#[test]
fn with_all_the_spectrum_kept_the_penalty_is_the_full_one() {
    let (r, d_in, d_out) = (3, 12, 10);
    let mut rng = Normals(0x9e37_79b9);
    let (g_a, x_b) = (gram(5, r, &mut rng), gram(7, r, &mut rng));
    let shapes = ([r, d_in], [d_out, r]);
    // k >= d: nothing is compressed.
    let (x_a, g_b) = (gram(30, d_in, &mut rng), gram(30, d_out, &mut rng));
    let full = joint(&x_a, &g_a, &x_b, &g_b, None);
    for k in [12, 64] {
        let c = compress_curvature(Curvature::Kfac(vec![kfac_block("m", &x_a, &g_a, &x_b, &g_b)]), k).unwrap();
        assert_matches_matrix(&format!("kfac k={k} >= d"), &c, &full, shapes, 1e-6, 3);
    }
    // k < d but the factors have rank <= k (fewer tokens than k): the low-rank form is exact.
    let (x_a, g_b) = (gram(4, d_in, &mut rng), gram(3, d_out, &mut rng));
    let c = compress_curvature(Curvature::Kfac(vec![kfac_block("m", &x_a, &g_a, &x_b, &g_b)]), 5).unwrap();
    let Curvature::LowRank(blocks) = &c else { panic!("compressed") };
    assert!(
        matches!(blocks[0].x_a, lalora::curvature::Factor::LowRank(_)) && matches!(blocks[0].g_b, lalora::curvature::Factor::LowRank(_))
    );
    assert_matches_matrix("kfac of rank <= k", &c, &joint(&x_a, &g_a, &x_b, &g_b, None), shapes, 1e-5, 4);
}

/// `U diag(s) U^T + diag(rem)` (or the dense factor) in f64.
fn materialise(f: &lalora::curvature::Factor<AB>) -> Mat {
    match f {
        lalora::curvature::Factor::Dense(m) => Mat::from_tensor(m),
        lalora::curvature::Factor::LowRank(f) => {
            let (u, s, rem) = (Mat::from_tensor(&f.vectors), values(&f.values), values(&f.remainder));
            add(&mul(&mul(&u, &diagonal(&s)), &transpose(&u)), &diagonal(&rem))
        }
    }
}

/// The joint (A, B) matrix of a compressed tri-kfac block, from its stored pieces, in f64.
fn tri_kfac_joint(b: &lalora::curvature::LowRankBlock<AB>) -> Mat {
    joint(
        &materialise(&b.x_a),
        &Mat::from_tensor(&b.g_a),
        &Mat::from_tensor(&b.x_b),
        &materialise(&b.g_b),
        Some((&Mat::from_tensor(b.g_ab.as_ref().unwrap()), &Mat::from_tensor(b.x_ab.as_ref().unwrap()))),
    )
}

#[test]
fn compressed_tri_kfac_of_token_statistics_stays_psd() {
    // Factors as a fit makes them, from one set of tokens (x, z, g, h), so the full joint
    // matrix is PSD; the compressed one must stay PSD at every k.
    let (r, d_in, d_out, n, s) = (2, 9, 8, 40, 1.5);
    let mut rng = Normals(0xdead_beef);
    let (x, z, g, h) = (rng.mat(n, d_in), rng.mat(n, r), rng.mat(n, d_out), rng.mat(n, r));
    let avg = |a: &Mat, b: &Mat, f: f64| {
        let m = mul(&transpose(a), b);
        Mat { rows: m.rows, cols: m.cols, data: m.data.iter().map(|v| v * f / n as f64).collect() }
    };
    let (x_a, g_a, x_b, g_b) = (avg(&x, &x, 1.0), avg(&h, &h, 1.0), avg(&z, &z, 1.0), avg(&g, &g, s * s));
    let (g_ab, x_ab) = (avg(&h, &g, s), avg(&x, &z, 1.0));
    let min_over_max = |m: &Mat| {
        let e = m.symmetric_eigenvalues();
        let max = e.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        e.iter().fold(f64::INFINITY, |a, &b| a.min(b)) / max
    };
    let full = joint(&x_a, &g_a, &x_b, &g_b, Some((&g_ab, &x_ab)));
    println!("full tri-kfac: min/max eigenvalue {:.2e}", min_over_max(&full));
    for k in [1, 2, 4, 7] {
        let tri = TriKfacBlock { kfac: kfac_block("m", &x_a, &g_a, &x_b, &g_b), g_ab: tensor(&g_ab), x_ab: tensor(&x_ab) };
        let Curvature::LowRank(blocks) = compress_curvature(Curvature::TriKfac(vec![tri]), k).unwrap() else { panic!("compressed") };
        // Materialise the stored pieces (U diag(s) U^T + diag(rem), and the mapped cross
        // factors) in f64 and check the joint matrix's spectrum.
        let ratio = min_over_max(&tri_kfac_joint(&blocks[0]));
        assert!(ratio >= -1e-5, "k={k}: compressed tri-kfac has min/max eigenvalue {ratio:.3e}");
    }
}

fn fit_with(estimator: Estimator, factor_rank: Option<usize>) -> LaplacePrior<AB> {
    fit_sketched(estimator, factor_rank, false)
}

fn fit_sketched(estimator: Estimator, factor_rank: Option<usize>, sketch: bool) -> LaplacePrior<AB> {
    let (model, lora) = gqa_with_all7_adapter();
    let config = LaplaceConfig::new()
        .with_estimator(estimator)
        .with_fisher(FisherType::Empirical)
        .with_prior_precision(0.1)
        .with_batches_per_source(1)
        .with_batch_size(3)
        .with_factor_rank(factor_rank)
        .with_factor_sketch(sketch);
    fit(&model, &lora, &reference_rows("reference", &[0, 1, 2]), &config, false).unwrap().0
}

#[test]
fn a_full_width_sketch_fits_the_compressed_full_fit() {
    // k = 60 on the gqa fixture: the 64- and 128-wide factors are compressed, and their
    // sketches are 2k + 8 >= d columns wide, i.e. exact; so the one-pass fit must give what
    // compressing the dense factors gives.
    let (model, _) = gqa_with_all7_adapter();
    for estimator in [Estimator::Kfac, Estimator::TriKfac] {
        let sketched = fit_sketched(estimator, Some(60), true);
        let dense = fit_sketched(estimator, Some(60), false);
        assert!(sketched.meta.as_ref().unwrap().factor_sketch && !dense.meta.as_ref().unwrap().factor_sketch);
        let (c, expected) = (sketched.curvature.as_ref().unwrap(), dense.curvature.as_ref().unwrap());
        assert!(matches!(c, Curvature::LowRank(_)));
        let mut rng = Normals(0x5ce7);
        for (i, a) in model.adapters().iter().enumerate() {
            let ([r, d_in], [d_out, _]) = (a.lora_a.val().dims(), a.lora_b.val().dims());
            let (d_a, d_b) = (tensor::<AB>(&rng.mat(r, d_in)), tensor::<AB>(&rng.mat(d_out, r)));
            let (x, y) = (values(&c.quadratic(i, d_a.clone(), d_b.clone()))[0], values(&expected.quadratic(i, d_a, d_b))[0]);
            println!("{} block {i}: sketched {x:.6e} vs dense-compressed {y:.6e}", estimator.name());
            assert!((x - y).abs() <= 1e-5 * y.abs(), "{}: block {i}: {x} vs {y}", estimator.name());
        }
    }
}

#[test]
fn a_narrow_sketch_keeps_the_trace_and_tri_kfac_psd() {
    // k = 4: sketches of 16 columns for 32..128-wide factors. The estimate is approximate,
    // but the diagonal is exact (so the trace is the full fit's) and tri-kfac stays PSD.
    let full = fit_sketched(Estimator::TriKfac, None, false);
    let low = fit_sketched(Estimator::TriKfac, Some(4), true);
    let (Curvature::TriKfac(full), Some(Curvature::LowRank(low))) = (full.curvature.unwrap(), low.curvature) else { panic!("kinds") };
    for (f, b) in full.iter().zip(&low) {
        let kfac = &f.kfac;
        let expected = kfac.trace();
        assert!((b.trace() - expected).abs() <= 1e-4 * expected, "{}: trace {} vs {expected}", b.path, b.trace());
        let m = tri_kfac_joint(b);
        // nalgebra's eigensolver: the joint blocks are up to 2048 wide, too slow for Jacobi.
        let e = nalgebra::DMatrix::from_row_slice(m.rows, m.cols, &m.data).symmetric_eigenvalues();
        let max = e.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let min = e.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        assert!(min >= -1e-5 * max, "{}: sketched tri-kfac has min/max eigenvalue {:.3e}", b.path, min / max);
    }
}

#[test]
fn sketching_the_full_factors_gives_the_one_pass_fit() {
    // examples/factor_rank_error.rs measures the sketch through `sketch_curvature` (the full
    // factors sketched at once); that must be what the batch-by-batch fit gives, at a k where
    // the sketch is narrow (16 columns for 32..128-wide factors).
    let (model, _) = gqa_with_all7_adapter();
    for estimator in [Estimator::Kfac, Estimator::TriKfac] {
        let one_pass = fit_sketched(estimator, Some(4), true).curvature.unwrap();
        let at_once = sketch_curvature(fit_sketched(estimator, None, false).curvature.unwrap(), 4).unwrap();
        let mut rng = Normals(0x0ce5);
        for (i, a) in model.adapters().iter().enumerate() {
            let ([r, d_in], [d_out, _]) = (a.lora_a.val().dims(), a.lora_b.val().dims());
            let (d_a, d_b) = (tensor::<AB>(&rng.mat(r, d_in)), tensor::<AB>(&rng.mat(d_out, r)));
            let (x, y) = (values(&one_pass.quadratic(i, d_a.clone(), d_b.clone()))[0], values(&at_once.quadratic(i, d_a, d_b))[0]);
            assert!((x - y).abs() <= 1e-4 * y.abs(), "{}: block {i}: one pass {x} vs at once {y}", estimator.name());
        }
    }
}

#[test]
fn a_sketch_needs_a_factor_rank() {
    let err = LaplaceConfig::new().with_factor_sketch(true).validate().unwrap_err();
    assert!(err.to_string().contains("factor-sketch") && err.to_string().contains("factor rank"), "{err}");
}

#[test]
fn a_fit_with_factor_rank_is_the_compressed_full_fit_and_survives_save_and_load() {
    let (model, lora) = gqa_with_all7_adapter();
    for estimator in [Estimator::Kfac, Estimator::TriKfac] {
        let full = fit_with(estimator, None);
        let low = fit_with(estimator, Some(16));
        assert_eq!(low.meta.as_ref().unwrap().factor_rank, Some(16));
        assert_eq!(full.meta.as_ref().unwrap().factor_rank, None);
        // The same statistics, compressed afterwards: equal penalties at a displacement.
        let expected = compress_curvature(full.curvature.clone().unwrap(), 16).unwrap();
        let curvature = low.curvature.as_ref().unwrap();
        assert!(matches!(curvature, Curvature::LowRank(_)));
        assert_eq!(curvature.estimator(), estimator);
        for (i, a) in model.adapters().iter().enumerate() {
            let (d_a, d_b) = (a.lora_a.val().ones_like(), a.lora_b.val().ones_like().mul_scalar(0.5));
            let (x, y) = (values(&curvature.quadratic(i, d_a.clone(), d_b.clone()))[0], values(&expected.quadratic(i, d_a, d_b))[0]);
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-12), "{}: block {i}: {x} vs {y}", estimator.name());
        }

        let dir = temp_dir(&format!("low_rank_{}", estimator.name()));
        low.save(&dir, &model, &lora).unwrap();
        let json = std::fs::read_to_string(dir.join("laplace.json")).unwrap();
        assert!(json.contains("\"factor_rank\": 16"), "laplace.json records the factor rank: {json}");
        let loaded = LaplacePrior::load(&dir, &model).unwrap();
        assert_eq!(
            loaded.meta,
            Some(lalora::laplace::LaplaceMeta { files: loaded.meta.as_ref().unwrap().files.clone(), ..low.meta.clone().unwrap() })
        );
        let (before, after) = (values(&low.penalty(&model, 1.0).value)[0], values(&loaded.penalty(&model, 1.0).value)[0]);
        assert_eq!(before, after, "{}: penalty after save -> load", estimator.name());
        let names: Vec<String> = loaded.curvature.as_ref().unwrap().tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().any(|n| n.ends_with(".lora_A.X.U")), "compressed X_A stored as U, S, D: {names:?}");

        // A full fit writes no factor_rank: files as before.
        let dir = temp_dir(&format!("low_rank_full_{}", estimator.name()));
        full.save(&dir, &model, &lora).unwrap();
        assert!(!std::fs::read_to_string(dir.join("laplace.json")).unwrap().contains("factor_rank"));

        // Sums of priors (continual learning) with compressed factors are refused.
        let infos = adapter_infos(&model);
        let err = weighted_sum(vec![(1.0, low.curvature.clone().unwrap()), (0.5, full.curvature.clone().unwrap())], &infos).unwrap_err();
        assert!(err.to_string().contains("low-rank"), "{err}");
    }
}

#[test]
fn memory_counts_compressed_factors() {
    let config: lalora::LlamaConfig = serde_json::from_str::<lalora::llama::HfLlamaConfig>(
        r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1}"#,
    )
    .map(|c| lalora::llama::HfLlamaConfig::resolve(c, std::path::Path::new("c.json")).unwrap())
    .unwrap();
    let lora = LoraConfig { rank: 2, targets: vec![lalora::Projection::Q, lalora::Projection::V], ..Default::default() };
    assert_eq!(curvature_memory_at(&config, &lora, Estimator::Kfac, None), curvature_memory(&config, &lora, Estimator::Kfac));
    // k = 6: X_A (8) and q's G_B (8) compressed to 8*6 + 6 + 8; v's G_B (4) stays 16.
    let m = curvature_memory_at(&config, &lora, Estimator::Kfac, Some(6));
    let c = 8 * 6 + 6 + 8;
    assert_eq!(m.stored_values, 2 * ((c + 8 + c) + (c + 8 + 16)));
    assert_eq!(m.shared_values, m.stored_values - 2 * c);
    // A sketched fit at k = 6: the 8-wide factors as [8, min(8, 2*6 + 8)] sketches plus their
    // diagonal (8 * 9), v's 4-wide G_B dense (16), 2 r^2 small factors, per adapter and layer;
    // plus one 8 x 8 test matrix.
    assert_eq!(m.sketch_fit_values, Some(2 * ((72 + 8 + 72) + (72 + 8 + 16)) + 64));
    assert_eq!(curvature_memory(&config, &lora, Estimator::Kfac).sketch_fit_values, None);
}

#[test]
fn randomized_eigenpairs_match_the_known_top_eigenspace() {
    use lalora::curvature::Factor;
    let mut rng = Normals(0x0bad_cafe);
    // Eigenvalues l_i = 3 (1 + i)^-1.5, block l = 2k + 8 = 18: the subspace error shrinks like
    // (l_18 / l_4)^(iterations + 1) = ((5/19)^1.5)^7 ~ 1e-6, so the kept part matches the known
    // compression to f32 accuracy.
    let (d, k) = (48, 5);
    let m = known(d, k, 3.0, &mut rng);
    let (f, u) = Factor::compress_randomized(tensor::<AB>(&m.m), k);
    assert_mat_close("randomized k=5 vs the known compression", &materialise(&f), &m.compressed, 1e-4);
    assert_eq!(u.unwrap().basis.shape(), (d, k));
    // A factor of rank <= k is recovered exactly.
    let low = gram(3, d, &mut rng);
    let (f, _) = Factor::compress_randomized(tensor::<AB>(&low), k);
    assert_mat_close("randomized, rank 3 <= k", &materialise(&f), &low, 1e-5);
}
