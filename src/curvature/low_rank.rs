//! Large Kronecker factors kept as their top-k eigenpairs plus a diagonal remainder
//! (`--factor-rank k`), so that the B-KFAC / B-Tri-KFAC curvature of an 8B model fits in a few
//! GiB: `M ~ U diag(s) U^T + diag(rem)`, `U: [d, k]`, `s: [k]`, `rem: [d]`.
//!
//! **Which factors.** Every `[d, d]` factor with `d > k` (kfac's and tri-kfac's `X_A`, `d_in`,
//! and `G_B`, `d_out`) is compressed; the `[r, r]` factors and any factor with `d <= k` stay
//! dense (there the top-k eigenpairs are all of it, and the dense form is no larger).
//!
//! **The remainder** `rem = diag(M) - diag(U diag(s) U^T)` keeps the diagonal of M exact, so the
//! trace and the curvature along every coordinate direction are those of the full factor; what
//! is lost is the correlation outside the top-k eigenspace. `rem >= 0`: it is the diagonal of
//! the PSD tail `M - U diag(s) U^T`.
//!
//! **Tri-kfac stays PSD.** With `P = U_X U_X^T` (the projector of `X_A`'s top eigenspace) and
//! `Q = U_G U_G^T` (of `G_B`'s), the compressed diagonal blocks are
//! `G_A kron (P X_A P + diag(rem_X))` and `(Q G_B Q + diag(rem_G)) kron X_B`. Mapping the cross
//! factors the same way, `X_AB -> P X_AB` and `G_AB -> G_AB Q`, makes the joint matrix
//! `C F C^T + blockdiag(G_A kron diag(rem_X), diag(rem_G) kron X_B)` with
//! `C = blockdiag(I kron P, Q kron I)`: a congruence of the PSD F plus Kronecker products of
//! PSD matrices, hence PSD. (Compressing the diagonal blocks alone could make it indefinite.)
//!
//! **Cost.** Products at train time are `m U diag(s) U^T + m diag(rem)`: `O(c d k)` for a
//! `[c, d]` matrix; no `[d, d]` matrix is formed. The compression itself runs once, after the
//! fit: an exact symmetric eigendecomposition on the host in f64 (`O(d^3)`) for factors up to
//! [`EXACT_EIGEN_MAX_DIM`], randomized subspace iteration above it (`O(d^2 k)`, the products
//! with the factor on the device). This needs the dense factors once, at the end of the fit;
//! `--factor-sketch` ([`super::sketch`]) fits the compressed form from a one-pass sketch
//! instead, never holding a `[d, d]` matrix.
//!
//! **Files.** A compressed factor named `{n}` (e.g. `{m}.lora_A.X`) is stored as `{n}.U`
//! `[d, k]`, `{n}.S` `[1, k]`, `{n}.D` `[1, d]`; `laplace.json` records `factor_rank`, from
//! which a loader knows which factors are compressed.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use nalgebra::DMatrix;

use super::accumulate::AdapterInfo;
use super::{inner, Curvature, Estimator, KfacBlock, TriKfacBlock};
use crate::error::{Error, Result};

/// Whether a `[d, d]` factor is compressed at `factor_rank` (only when `d > k`).
pub fn is_compressed(d: usize, factor_rank: Option<usize>) -> bool {
    factor_rank.is_some_and(|k| d > k)
}

/// f32 values a `[d, d]` factor stores: `d^2`, or `d k + k + d` compressed.
pub fn stored_values(d: u64, factor_rank: Option<usize>) -> u64 {
    match factor_rank {
        Some(k) if d > k as u64 => d * k as u64 + k as u64 + d,
        _ => d * d,
    }
}

/// A factor `U diag(s) U^T + diag(rem)`.
///
/// # Shapes
/// `vectors` `[d, k]` (orthonormal columns), `values` `[1, k]` (descending, `>= 0`),
/// `remainder` `[1, d]` (`>= 0`): row vectors, so that they broadcast over rows.
#[derive(Module, Debug)]
pub struct LowRankFactor<B: Backend> {
    /// Eigenvectors `U`, `[d, k]`.
    pub vectors: Tensor<B, 2>,
    /// Eigenvalues `s`, `[1, k]`.
    pub values: Tensor<B, 2>,
    /// Diagonal remainder `rem`, `[1, d]`.
    pub remainder: Tensor<B, 2>,
}

/// One Kronecker factor, dense or compressed.
#[derive(Module, Debug)]
pub enum Factor<B: Backend> {
    /// The full `[d, d]` matrix.
    Dense(Tensor<B, 2>),
    /// Top-k eigenpairs plus a diagonal remainder.
    LowRank(LowRankFactor<B>),
}

impl<B: Backend> Factor<B> {
    /// `m F` for `m: [c, d]`.
    pub fn right_mul(&self, m: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Factor::Dense(f) => m.matmul(f.clone()),
            Factor::LowRank(f) => {
                let low = (m.clone().matmul(f.vectors.clone()) * f.values.clone()).matmul(f.vectors.clone().transpose());
                low + m * f.remainder.clone()
            }
        }
    }

    /// `F m` for `m: [d, c]`.
    pub fn left_mul(&self, m: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Factor::Dense(f) => f.clone().matmul(m),
            Factor::LowRank(f) => {
                let coefficients = f.vectors.clone().transpose().matmul(m.clone()) * f.values.clone().transpose();
                f.vectors.clone().matmul(coefficients) + m * f.remainder.clone().transpose()
            }
        }
    }

    /// `tr(F)`.
    pub fn trace(&self) -> f64 {
        use burn::tensor::cast::ToElement;
        match self {
            Factor::Dense(m) => {
                let n = m.dims()[0];
                (m.clone() * Tensor::eye(n, &m.device())).sum().into_scalar().to_f64()
            }
            // U has orthonormal columns: tr(U S U^T) = sum(s).
            Factor::LowRank(f) => (f.values.clone().sum() + f.remainder.clone().sum()).into_scalar().to_f64(),
        }
    }

    /// Tensors as stored: `{name}` dense, or `{name}.U`, `{name}.S`, `{name}.D` compressed.
    pub fn tensors(&self, name: &str) -> Vec<(String, Tensor<B, 2>)> {
        match self {
            Factor::Dense(m) => vec![(name.to_string(), m.clone())],
            Factor::LowRank(f) => vec![
                (format!("{name}.U"), f.vectors.clone()),
                (format!("{name}.S"), f.values.clone()),
                (format!("{name}.D"), f.remainder.clone()),
            ],
        }
    }

    /// Reads a `[d, d]` factor back: compressed iff [`is_compressed`]`(d, factor_rank)`.
    pub fn from_tensors(
        name: &str,
        d: usize,
        factor_rank: Option<usize>,
        get: &impl Fn(&str, [usize; 2]) -> Result<Tensor<B, 2>>,
    ) -> Result<Self> {
        match factor_rank {
            Some(k) if d > k => Ok(Factor::LowRank(LowRankFactor {
                vectors: get(&format!("{name}.U"), [d, k])?,
                values: get(&format!("{name}.S"), [1, k])?,
                remainder: get(&format!("{name}.D"), [1, d])?,
            })),
            _ => Ok(Factor::Dense(get(name, [d, d])?)),
        }
    }

    /// Compresses a dense symmetric PSD `[d, d]` matrix to its top-k eigenpairs plus the
    /// diagonal remainder; dense if `d <= k`. Up to [`EXACT_EIGEN_MAX_DIM`] the eigenpairs are
    /// exact (host, f64, `O(d^3)`), above it they come from [`Self::compress_randomized`].
    /// Also returns the projection onto the kept eigenspace (`None` when dense), for tri-kfac's
    /// cross factors.
    pub fn compress(m: Tensor<B, 2>, k: usize) -> (Self, Option<Projection>) {
        let d = m.dims()[0];
        if d <= k {
            return (Factor::Dense(m), None);
        }
        if d > EXACT_EIGEN_MAX_DIM {
            return Self::compress_randomized(m, k);
        }
        let device = m.device();
        let host = to_host(m);
        let diag: Vec<f64> = (0..d).map(|i| host[(i, i)]).collect();
        let eig = ((&host + host.transpose()) * 0.5).symmetric_eigen();
        let (u, s) = top_pairs(&eig.eigenvectors, &eig.eigenvalues, k);
        (Factor::LowRank(low_rank(&u, &s, &diag, &device)), Some(Projection::orthogonal(u)))
    }

    /// [`Self::compress`] with the top-k eigenpairs from randomized subspace iteration
    /// (Halko, Martinsson, Tropp 2011, Alg. 4.4 + Rayleigh-Ritz): `l = min(d, 2k + 8)` seeded
    /// Gaussian columns, [`POWER_ITERATIONS`] products with M on the device, each followed by a
    /// host QR of the `[d, l]` result, then the eigenpairs of `Q^T M Q` (`[l, l]`). `O(d^2 l)`
    /// instead of `O(d^3)`. The Ritz vectors U satisfy `U^T M U = diag(s)`, so the kept part is
    /// the projection `P M P` (`P = U U^T`) and the tri-kfac PSD argument of the module docs
    /// holds; the remainder is clamped at 0 (the diagonal of `M - P M P`, which is not PSD for
    /// an inexact subspace, may dip below 0 by round-off-sized amounts).
    pub fn compress_randomized(m: Tensor<B, 2>, k: usize) -> (Self, Option<Projection>) {
        let d = m.dims()[0];
        if d <= k {
            return (Factor::Dense(m), None);
        }
        let device = m.device();
        let l = (2 * k + 8).min(d);
        let diag: Vec<f64> = to_host((m.clone() * Tensor::eye(d, &device)).sum_dim(0)).row(0).iter().copied().collect();
        let mut q = orthonormal(gaussian(d, l, 0x5eed_1234 ^ d as u64));
        for _ in 0..POWER_ITERATIONS {
            q = orthonormal(to_host(m.clone().matmul(to_device(&q, &device))));
        }
        let mq = to_host(m.matmul(to_device(&q, &device)));
        let small = q.transpose() * mq;
        let eig = ((&small + small.transpose()) * 0.5).symmetric_eigen();
        let (w, s) = top_pairs(&eig.eigenvectors, &eig.eigenvalues, k);
        let u = q * w;
        (Factor::LowRank(low_rank(&u, &s, &diag, &device)), Some(Projection::orthogonal(u)))
    }
}

/// The linear map `c -> U (R c)` a compressed factor applies to tri-kfac's cross factors:
/// `R = U^T` (the orthogonal projector `U U^T`) for eigenpairs of the dense factor, the
/// Nyström map for a sketch ([`super::sketch`]). Either way the compressed diagonal block is
/// `L M L^T` for this map L, which keeps tri-kfac PSD (module docs).
#[derive(Debug, Clone)]
pub struct Projection {
    /// `U`, `[d, k]`.
    pub basis: DMatrix<f64>,
    /// `R`, `[k, d]`.
    pub coefficients: DMatrix<f64>,
}

impl Projection {
    /// `U U^T`.
    pub fn orthogonal(basis: DMatrix<f64>) -> Self {
        Projection { coefficients: basis.transpose(), basis }
    }

    /// `U (R c)` for `c: [d, r]`.
    fn apply<B: Backend>(&self, c: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = c.device();
        to_device(&(&self.basis * (&self.coefficients * to_host(c))), &device)
    }
}

/// Factors up to this size get exact eigenpairs in [`Factor::compress`]; larger ones
/// randomized subspace iteration.
pub const EXACT_EIGEN_MAX_DIM: usize = 1024;

/// Products with M in [`Factor::compress_randomized`] after the first.
pub const POWER_ITERATIONS: usize = 6;

/// The k eigenpairs of largest eigenvalue, eigenvalues clamped at 0 (round-off can leave tiny
/// negative eigenvalues of a PSD matrix).
pub(super) fn top_pairs(vectors: &DMatrix<f64>, values: &nalgebra::DVector<f64>, k: usize) -> (DMatrix<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let u = DMatrix::from_fn(vectors.nrows(), k, |i, j| vectors[(i, order[j])]);
    (u, order[..k].iter().map(|&j| values[j].max(0.0)).collect())
}

/// `U`, `s` and the remainder `max(diag - diag(U diag(s) U^T), 0)` as device tensors.
pub(super) fn low_rank<B: Backend>(u: &DMatrix<f64>, s: &[f64], diag: &[f64], device: &B::Device) -> LowRankFactor<B> {
    let (d, k) = u.shape();
    let remainder: Vec<f64> = (0..d).map(|i| (diag[i] - (0..k).map(|j| u[(i, j)].powi(2) * s[j]).sum::<f64>()).max(0.0)).collect();
    LowRankFactor {
        vectors: to_device(u, device),
        values: to_device(&DMatrix::from_row_slice(1, k, s), device),
        remainder: to_device(&DMatrix::from_row_slice(1, d, &remainder), device),
    }
}

/// The Q of a thin QR: orthonormal columns spanning those of `y` (`[d, l]`, `l <= d`).
fn orthonormal(y: DMatrix<f64>) -> DMatrix<f64> {
    y.qr().q()
}

/// `[d, l]` standard normals from a seeded xorshift generator (Box-Muller): every run and
/// backend starts the subspace iteration from the same matrix.
pub(super) fn gaussian(d: usize, l: usize, seed: u64) -> DMatrix<f64> {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    DMatrix::from_fn(d, l, |_, _| {
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    })
}

/// One adapter's B-KFAC (and, with the cross factors, B-Tri-KFAC) block with its large factors
/// compressed: `<dA, G_A dA X_A> + <dB, G_B dB X_B> [+ 2 <dA, G_AB dB X_AB^T>]`.
#[derive(Module, Debug)]
pub struct LowRankBlock<B: Backend> {
    /// HF module path.
    pub path: String,
    /// `X_A`, `[d_in, d_in]`, dense or compressed.
    pub x_a: Factor<B>,
    /// `G_A`, `[r, r]`.
    pub g_a: Tensor<B, 2>,
    /// `X_B`, `[r, r]`.
    pub x_b: Tensor<B, 2>,
    /// `G_B`, `[d_out, d_out]`, dense or compressed.
    pub g_b: Factor<B>,
    /// Tri-kfac only: `G_AB Q`, `[r, d_out]` (`Q` the projector of `G_B`'s kept eigenspace).
    pub g_ab: Option<Tensor<B, 2>>,
    /// Tri-kfac only: `P X_AB`, `[d_in, r]` (`P` the projector of `X_A`'s kept eigenspace).
    pub x_ab: Option<Tensor<B, 2>>,
}

impl<B: Backend> LowRankBlock<B> {
    /// Kfac or tri-kfac.
    pub fn estimator(&self) -> Estimator {
        if self.g_ab.is_some() {
            Estimator::TriKfac
        } else {
            Estimator::Kfac
        }
    }

    /// `vec(dA, dB)^T F vec(dA, dB)`, with `dA: [r, d_in]`, `dB: [d_out, r]`.
    pub fn quadratic(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let (p_a, p_b) = self.diagonal_products(d_a.clone(), d_b.clone());
        let mut value = inner(d_a.clone(), p_a) + inner(d_b.clone(), p_b);
        if let (Some(g_ab), Some(x_ab)) = (&self.g_ab, &self.x_ab) {
            value = value + inner(d_a, g_ab.clone().matmul(d_b).matmul(x_ab.clone().transpose())).mul_scalar(2.0);
        }
        value
    }

    /// `F vec(dA, dB)`, split into its `dA` and `dB` parts: the half-gradient of the quadratic.
    pub fn product(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (p_a, p_b) = self.diagonal_products(d_a.clone(), d_b.clone());
        match (&self.g_ab, &self.x_ab) {
            (Some(g_ab), Some(x_ab)) => {
                let cross_a = g_ab.clone().matmul(d_b).matmul(x_ab.clone().transpose());
                let cross_b = g_ab.clone().transpose().matmul(d_a).matmul(x_ab.clone());
                (p_a + cross_a, p_b + cross_b)
            }
            _ => (p_a, p_b),
        }
    }

    /// `(G_A dA X_A, G_B dB X_B)`, never forming a `[d, d]` matrix.
    fn diagonal_products(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.g_a.clone().matmul(self.x_a.right_mul(d_a)), self.g_b.left_mul(d_b.matmul(self.x_b.clone())))
    }

    /// `tr(G_A) tr(X_A) + tr(G_B) tr(X_B)` (equal to the full block's: the diagonals are kept).
    pub fn trace(&self) -> f64 {
        let dense = Factor::Dense;
        dense(self.g_a.clone()).trace() * self.x_a.trace() + self.g_b.trace() * dense(self.x_b.clone()).trace()
    }

    /// Tensors as stored: kfac's names (with `.U`, `.S`, `.D` for a compressed factor), plus
    /// `{path}.cross.X` and `{path}.cross.G` for tri-kfac.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let p = &self.path;
        let mut out = self.x_a.tensors(&format!("{p}.lora_A.X"));
        out.push((format!("{p}.lora_A.G"), self.g_a.clone()));
        out.push((format!("{p}.lora_B.X"), self.x_b.clone()));
        out.extend(self.g_b.tensors(&format!("{p}.lora_B.G")));
        if let (Some(g_ab), Some(x_ab)) = (&self.g_ab, &self.x_ab) {
            out.push((format!("{p}.cross.X"), x_ab.clone()));
            out.push((format!("{p}.cross.G"), g_ab.clone()));
        }
        out
    }

    /// Reads the block of `info` back (`estimator` kfac or tri-kfac); `get(name, shape)` reads
    /// and checks one tensor.
    pub fn from_tensors(
        info: &AdapterInfo,
        estimator: Estimator,
        factor_rank: usize,
        get: &impl Fn(&str, [usize; 2]) -> Result<Tensor<B, 2>>,
    ) -> Result<Self> {
        let ([d_out, d_in], r, p) = (info.dims, info.rank, &info.path);
        let tri = estimator == Estimator::TriKfac;
        Ok(LowRankBlock {
            path: p.clone(),
            x_a: Factor::from_tensors(&format!("{p}.lora_A.X"), d_in, Some(factor_rank), get)?,
            g_a: get(&format!("{p}.lora_A.G"), [r, r])?,
            x_b: get(&format!("{p}.lora_B.X"), [r, r])?,
            g_b: Factor::from_tensors(&format!("{p}.lora_B.G"), d_out, Some(factor_rank), get)?,
            x_ab: if tri { Some(get(&format!("{p}.cross.X"), [d_in, r])?) } else { None },
            g_ab: if tri { Some(get(&format!("{p}.cross.G"), [r, d_out])?) } else { None },
        })
    }

    /// Compresses a B-KFAC block (and tri-kfac's cross factors, when given) at rank k.
    pub fn compress(kfac: KfacBlock<B>, cross: Option<(Tensor<B, 2>, Tensor<B, 2>)>, k: usize) -> Self {
        let (x_a, p) = Factor::compress(kfac.x_a, k);
        let (g_b, q) = Factor::compress(kfac.g_b, k);
        Self::assemble(kfac.path, (x_a, p), kfac.g_a, kfac.x_b, (g_b, q), cross)
    }

    /// The block of compressed (or dense) `X_A` and `G_B`, each with the map it applies to the
    /// cross factors: `X_AB -> L_X X_AB`, `G_AB -> G_AB L_G^T` (module docs: this keeps
    /// tri-kfac PSD).
    pub(super) fn assemble(
        path: String,
        (x_a, l_x): (Factor<B>, Option<Projection>),
        g_a: Tensor<B, 2>,
        x_b: Tensor<B, 2>,
        (g_b, l_g): (Factor<B>, Option<Projection>),
        cross: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> Self {
        let map = |c: Tensor<B, 2>, l: &Option<Projection>| match l {
            Some(l) => l.apply(c),
            None => c,
        };
        let (g_ab, x_ab) = match cross {
            Some((g_ab, x_ab)) => (Some(map(g_ab.transpose(), &l_g).transpose()), Some(map(x_ab, &l_x))),
            None => (None, None),
        };
        LowRankBlock { path, x_a, g_a, x_b, g_b, g_ab, x_ab }
    }
}

/// The curvature with every kfac / tri-kfac factor larger than `factor_rank` compressed
/// (module docs). A diagonal is returned as it is (it has no Kronecker factors).
///
/// # Errors
/// [`Error::BadArgument`] for `factor_rank` 0, for a sum of curvatures (continual priors
/// cannot hold compressed factors yet) and for a curvature that is compressed already.
pub fn compress_curvature<B: Backend>(curvature: Curvature<B>, factor_rank: usize) -> Result<Curvature<B>> {
    compress_factors_with(curvature, factor_rank, |m| Factor::compress(m, factor_rank))
}

/// Every kfac / tri-kfac block of `curvature` with its `X_A` and `G_B` replaced by
/// `compress(factor)` (a compressed or dense factor and the map it applies to the cross
/// factors): the one walk over the curvature that [`compress_curvature`] and
/// [`super::sketch::sketch_curvature`] share. Errors as [`compress_curvature`]'s.
pub(super) fn compress_factors_with<B: Backend>(
    curvature: Curvature<B>,
    factor_rank: usize,
    compress: impl Fn(Tensor<B, 2>) -> (Factor<B>, Option<Projection>),
) -> Result<Curvature<B>> {
    if factor_rank == 0 {
        return Err(Error::arg("factor-rank", "must be at least 1 (0 means full factors: do not compress)"));
    }
    let block = |b: KfacBlock<B>, cross| LowRankBlock::assemble(b.path, compress(b.x_a), b.g_a, b.x_b, compress(b.g_b), cross);
    Ok(match curvature {
        Curvature::Diag(b) => Curvature::Diag(b),
        Curvature::Kfac(b) => Curvature::LowRank(b.into_iter().map(|x| block(x, None)).collect()),
        Curvature::TriKfac(b) => {
            Curvature::LowRank(b.into_iter().map(|x: TriKfacBlock<B>| block(x.kfac, Some((x.g_ab, x.x_ab)))).collect())
        }
        Curvature::Sum(_) => return Err(sum_unsupported()),
        Curvature::LowRank(_) => return Err(Error::arg("factor-rank", "the curvature is compressed already")),
    })
}

/// The error for a sum of priors (continual learning) with compressed factors.
pub fn sum_unsupported() -> Error {
    Error::arg(
        "factor-rank",
        "priors accumulated over tasks (continual learning) cannot hold low-rank factors yet: fit every prior \
         with full factors (no --factor-rank)",
    )
}

pub(super) fn to_host<B: Backend>(t: Tensor<B, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    let values: Vec<f64> = t.into_data().iter::<f64>().collect();
    DMatrix::from_row_slice(r, c, &values)
}

pub(super) fn to_device<B: Backend>(m: &DMatrix<f64>, device: &B::Device) -> Tensor<B, 2> {
    let (r, c) = m.shape();
    let values: Vec<f32> = (0..r).flat_map(|i| (0..c).map(move |j| m[(i, j)] as f32)).collect();
    Tensor::from_data(TensorData::new(values, [r, c]), device)
}
