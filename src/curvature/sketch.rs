//! One-pass sketches of large Kronecker factors (`--factor-sketch`): the compressed form of
//! [`super::low_rank`] fitted without ever holding a `[d, d]` matrix, so that the fit itself
//! (not only the stored prior) fits in memory at 8B.
//!
//! **What the fit keeps.** For a factor `M = sum_t w_t v_t v_t^T` (`v_t` one token's input or
//! output gradient) it keeps `Y = M Omega` and `diag(M)`, both updated batch by batch:
//! `Y += V^T (V Omega)`, `diag += sum_t w_t v_t^2`. `Omega` is a fixed seeded Gaussian
//! `[d, s]`, `s = min(d, 2k + 8)` ([`sketch_width`]). Memory `d (s + 1)` instead of `d^2`; work
//! per batch `O(n d s)` instead of `O(n d^2)`.
//!
//! **The estimate** is the Nyström approximation `M_hat = Y W^+ Y^T`, `W = Omega^T Y` (Tropp,
//! Yurtsever, Udell, Cevher 2017, "Fixed-rank approximation of a positive-semidefinite matrix
//! from streaming data"), cut to its top k eigenpairs; the remainder keeps the diagonal exact,
//! as the dense compression's does. `M_hat = L M L^T` with `L = Y W^+ Omega^T`, and the cut
//! `P_k M_hat P_k` (`P_k` the projector of its top-k eigenspace) is `(P_k L) M (P_k L)^T <= M`
//! in the Loewner order. So the remainder is `>= 0`, and mapping tri-kfac's cross factors with
//! `P_k L` ([`Projection`]) keeps the joint block PSD, by the argument of [`super::low_rank`].
//! With `s = d` the sketch is exact and so is the estimate (the dense compression's, up to
//! round-off).
//!
//! **Accuracy.** One pass sees M only through `M Omega`, so the kept subspace is less accurate
//! than the dense compression's, which iterates with M; `examples/factor_rank_error.rs`
//! measures both against the full factors.

use burn::tensor::{backend::Backend, Tensor};
use nalgebra::DMatrix;

use super::accumulate::add;
use super::low_rank::{compress_factors_with, gaussian, is_compressed, low_rank, to_device, to_host, top_pairs, Factor, Projection};
use super::Curvature;
use crate::error::Result;

/// Columns of the test matrix of a `[d, d]` factor sketched for factor rank k.
pub fn sketch_width(d: usize, k: usize) -> usize {
    (2 * k + 8).min(d)
}

/// Eigenvalues of `W` below this fraction of its largest are dropped from `W^+`: the f32 sums
/// of Y leave such directions at round-off level, where inverting them would only amplify noise.
const PINV_TOLERANCE: f64 = 1e-6;

/// The seeded Gaussian test matrix `[d, sketch_width(d, k)]`: the same on every run and
/// backend, and shared by every factor of size d (the sketch is linear, so one matrix
/// independent of the data serves all of them).
pub(crate) fn test_matrix<B: Backend>(d: usize, k: usize, device: &B::Device) -> Tensor<B, 2> {
    to_device(&gaussian(d, sketch_width(d, k), 0x5ce7_c400 ^ d as u64), device)
}

/// One forward or backward pass's contribution to a sketch.
#[derive(Debug, Clone)]
pub(crate) struct SketchTerm<B: Backend> {
    y: Tensor<B, 2>,
    diag: Tensor<B, 2>,
}

impl<B: Backend> SketchTerm<B> {
    /// The term times `weight`.
    pub fn scaled(self, weight: f64) -> Self {
        SketchTerm { y: self.y.mul_scalar(weight), diag: self.diag.mul_scalar(weight) }
    }
}

/// The running sketch `(M Omega, diag(M))` of one factor.
#[derive(Debug, Clone)]
pub(crate) struct FactorSketch<B: Backend> {
    omega: Tensor<B, 2>,
    y: Option<Tensor<B, 2>>,
    diag: Option<Tensor<B, 2>>,
}

impl<B: Backend> FactorSketch<B> {
    /// An empty sketch with test matrix `omega` (`[d, s]`).
    pub fn new(omega: Tensor<B, 2>) -> Self {
        FactorSketch { omega, y: None, diag: None }
    }

    /// The term of `V^T V` for the tokens `v: [batch, seq, d]` (already masked).
    pub fn term(&self, v: &Tensor<B, 3>) -> SketchTerm<B> {
        let [b, t, d] = v.dims();
        let rows = v.clone().reshape([b * t, d]);
        let y = rows.clone().transpose().matmul(rows.clone().matmul(self.omega.clone()));
        SketchTerm { y, diag: rows.square().sum_dim(0) }
    }

    /// The sketch of a whole factor `m` (`[d, d]`) at rank k: what summing its terms gives.
    fn of_dense(m: Tensor<B, 2>, k: usize) -> Self {
        let d = m.dims()[0];
        let omega = test_matrix(d, k, &m.device());
        let diag = (m.clone() * Tensor::eye(d, &m.device())).sum_dim(0);
        FactorSketch { y: Some(m.matmul(omega.clone())), diag: Some(diag), omega }
    }

    /// Adds one term.
    pub fn add(&mut self, term: SketchTerm<B>) {
        add(&mut self.y, term.y);
        add(&mut self.diag, term.diag);
    }

    /// The compressed factor of `factor * M` at rank k (`k < d`), and the map it applies to
    /// tri-kfac's cross factors.
    ///
    /// # Panics
    /// If nothing was added.
    pub fn finish(self, factor: f64, k: usize) -> (Factor<B>, Projection) {
        let device = self.omega.device();
        let omega = to_host(self.omega);
        let y = to_host(self.y.expect("sketch observed")) * factor;
        let diag: Vec<f64> = to_host(self.diag.expect("sketch observed")).iter().map(|v| v * factor).collect();
        let (basis, values, coefficients) = nystrom(&omega, &y, k);
        (Factor::LowRank(low_rank(&basis, &values, &diag, &device)), Projection { basis, coefficients })
    }
}

/// The compressed curvature a `--factor-sketch` fit gives for the statistics of `curvature`
/// (full kfac or tri-kfac factors): each factor M larger than k sketched as
/// `(M Omega, diag(M))` at once instead of batch by batch. The sums are linear, so this is the
/// one-pass fit's result up to f32 summation order; it lets `examples/factor_rank_error.rs`
/// measure the sketch against the full factors of one fit.
///
/// # Errors
/// [`crate::Error::BadArgument`] for k = 0, a sum of curvatures or one compressed already.
pub fn sketch_curvature<B: Backend>(curvature: Curvature<B>, k: usize) -> Result<Curvature<B>> {
    compress_factors_with(curvature, k, |m| {
        if is_compressed(m.dims()[0], Some(k)) {
            let (f, map) = FactorSketch::of_dense(m, k).finish(1.0, k);
            (f, Some(map))
        } else {
            (Factor::Dense(m), None)
        }
    })
}

/// The top-k eigenpairs `(U, s)` of the Nyström estimate `Y W^+ Y^T` (`W = Omega^T Y`), padded
/// with zero pairs when it has fewer, and the coefficients R of `P_k L = U R` (module docs).
fn nystrom(omega: &DMatrix<f64>, y: &DMatrix<f64>, k: usize) -> (DMatrix<f64>, Vec<f64>, DMatrix<f64>) {
    let (d, s) = y.shape();
    let w = omega.transpose() * y;
    let eig = ((&w + w.transpose()) * 0.5).symmetric_eigen();
    let largest = eig.eigenvalues.iter().copied().fold(0.0, f64::max);
    let kept: Vec<usize> = (0..s).filter(|&j| eig.eigenvalues[j] > largest * PINV_TOLERANCE).collect();
    // C = V D^{-1/2} over the kept eigenpairs of W: W^+ = C C^T, so with F = Y C the estimate
    // is F F^T, whose eigenpairs come from the small Gram matrix F^T F = Q diag(sigma^2) Q^T.
    let c = DMatrix::from_fn(s, kept.len(), |i, j| eig.eigenvectors[(i, kept[j])] / eig.eigenvalues[kept[j]].sqrt());
    let f = y * &c;
    let gram = f.transpose() * &f;
    let gram_eig = ((&gram + gram.transpose()) * 0.5).symmetric_eigen();
    let found = k.min(kept.len());
    let (q, sigma2) = top_pairs(&gram_eig.eigenvectors, &gram_eig.eigenvalues, found);
    // U = F Q diag(1/sigma) and R = diag(sigma) Q^T C^T Omega^T (then P_k L = U R).
    let fq = &f * &q;
    let qco = q.transpose() * (c.transpose() * omega.transpose());
    let mut basis = DMatrix::zeros(d, k);
    let mut coefficients = DMatrix::zeros(k, d);
    let mut values = vec![0.0; k];
    let floor = sigma2.first().copied().unwrap_or(0.0) * 1e-12;
    for j in 0..found {
        if sigma2[j] > floor && sigma2[j] > 0.0 {
            let sigma = sigma2[j].sqrt();
            basis.set_column(j, &(fq.column(j) / sigma));
            coefficients.set_row(j, &(qco.row(j) * sigma));
            values[j] = sigma2[j];
        }
    }
    (basis, values, coefficients)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PSD `[d, d]` matrix of rank `rank` with decaying spectrum.
    fn psd(d: usize, rank: usize, seed: u64) -> DMatrix<f64> {
        let g = gaussian(d, rank, seed);
        let scales = DMatrix::from_fn(rank, rank, |i, j| if i == j { 0.7f64.powi(i as i32) } else { 0.0 });
        &g * scales * g.transpose()
    }

    fn estimate(u: &DMatrix<f64>, s: &[f64]) -> DMatrix<f64> {
        let k = s.len();
        u * DMatrix::from_fn(k, k, |i, j| if i == j { s[i] } else { 0.0 }) * u.transpose()
    }

    #[test]
    fn a_full_width_sketch_recovers_the_top_eigenpairs_exactly() {
        let (d, k) = (24, 6);
        let m = psd(d, 18, 3);
        let omega = gaussian(d, d, 9);
        let (u, s, r) = nystrom(&omega, &(&m * &omega), k);
        let eig = m.clone().symmetric_eigen();
        let (u_exact, s_exact) = top_pairs(&eig.eigenvectors, &eig.eigenvalues, k);
        let err = (estimate(&u, &s) - estimate(&u_exact, &s_exact)).norm() / m.norm();
        assert!(err < 1e-8, "rank-{k} estimate differs from the exact one by {err:e}");
        // On the range of M (where tri-kfac's cross factors live) the cross-factor map is the
        // orthogonal projector, as for the dense compression (L = I there for an exact sketch).
        let p = &u * &r;
        let err = (&p * &m - &u * u.transpose() * &m).norm() / m.norm();
        assert!(err < 1e-8, "P_k L M differs from U U^T M by {err:e}");
    }

    #[test]
    fn a_narrow_sketch_stays_below_the_matrix_and_is_its_compression() {
        let (d, k) = (64, 4);
        let m = psd(d, 40, 5);
        let omega = gaussian(d, sketch_width(d, k), 11);
        let (u, s, r) = nystrom(&omega, &(&m * &omega), k);
        let kept = estimate(&u, &s);
        // M - M_hat_k is PSD (so the remainder is >= 0) ...
        let gap = (&m - &kept).symmetric_eigen().eigenvalues.min();
        assert!(gap > -1e-9 * m.norm(), "M - M_hat has eigenvalue {gap:e}");
        // ... M_hat_k = (P_k L) M (P_k L)^T (what keeps tri-kfac PSD) ...
        let l = &u * &r;
        let err = (&l * &m * l.transpose() - &kept).norm() / m.norm();
        assert!(err < 1e-8, "(P_k L) M (P_k L)^T differs from the estimate by {err:e}");
        // ... and with a geometric spectrum it captures nearly all of the top-k energy.
        let eig = m.clone().symmetric_eigen();
        let (_, s_exact) = top_pairs(&eig.eigenvectors, &eig.eigenvalues, k);
        let captured: f64 = s.iter().sum::<f64>() / s_exact.iter().sum::<f64>();
        assert!(captured > 0.95, "the sketch keeps {captured} of the exact top-{k} trace");
    }
}
