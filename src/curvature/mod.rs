//! Curvature of the source NLL over the LoRA weights: Diag, B-KFAC and B-Tri-KFAC
//! (LaLoRA, arXiv 2512.17720).
//!
//! Gathering is kept apart from using (as in curvlinops): [`capture`] runs the model with
//! probes and hands per-adapter tensors `(x, z, g, h)` to an [`Accumulator`], which only sums
//! statistics; [`Curvature`] holds the finished per-token-average factors and evaluates the
//! quadratic form. The conventions every estimator follows are written once, in [`math`].

pub mod accumulate;
pub mod capture;
pub mod low_rank;
pub mod math;
pub mod memory;
pub mod sketch;

mod diag;
mod kfac;
pub mod sum;
mod tri_kfac;

pub use accumulate::{Accumulator, AdapterInfo, AdapterStats};
pub use capture::{adapter_infos, capture_batch, tap_stats, FisherType};
pub use diag::DiagBlock;
pub use kfac::KfacBlock;
pub use low_rank::{compress_curvature, Factor, LowRankBlock, LowRankFactor};
pub use sum::{CurvatureSum, KroneckerTerm};
pub use tri_kfac::TriKfacBlock;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// Which curvature approximation to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Estimator {
    /// Diagonal Fisher from per-sequence gradients.
    Diag,
    /// B-KFAC: a Kronecker-factored block for A and one for B, per adapter.
    Kfac,
    /// B-Tri-KFAC: B-KFAC plus the A-B cross block.
    TriKfac,
}

impl Estimator {
    /// The name used on the command line and in files (`diag`, `kfac`, `tri-kfac`).
    pub fn name(&self) -> &'static str {
        match self {
            Estimator::Diag => "diag",
            Estimator::Kfac => "kfac",
            Estimator::TriKfac => "tri-kfac",
        }
    }

    /// Parses [`Self::name`].
    pub fn parse(name: &str) -> Option<Self> {
        [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac].into_iter().find(|e| e.name() == name)
    }

    /// `f32` values this estimator stores for one adapter of shape `[d_out, d_in]`, rank `r`.
    pub fn values_per_adapter(&self, d_out: u64, d_in: u64, r: u64) -> u64 {
        match self {
            Estimator::Diag => diag::values_per_adapter(d_out, d_in, r),
            Estimator::Kfac => kfac::values_per_adapter(d_out, d_in, r),
            Estimator::TriKfac => tri_kfac::values_per_adapter(d_out, d_in, r),
        }
    }
}

/// A fitted curvature: one block per adapter, in the model's adapter order. Its tensors are
/// module constants, so it moves between backends with the module that holds it.
#[derive(Module, Debug)]
pub enum Curvature<B: Backend> {
    /// Diagonal.
    Diag(Vec<DiagBlock<B>>),
    /// B-KFAC.
    Kfac(Vec<KfacBlock<B>>),
    /// B-Tri-KFAC.
    TriKfac(Vec<TriKfacBlock<B>>),
    /// A weighted sum of B-KFAC or B-Tri-KFAC curvatures, kept term by term: a prior
    /// accumulated over tasks (see [`sum`]).
    Sum(CurvatureSum<B>),
    /// B-KFAC or B-Tri-KFAC with the large Kronecker factors kept low-rank (`--factor-rank`,
    /// see [`low_rank`]).
    LowRank(Vec<LowRankBlock<B>>),
}

impl<B: Backend> Curvature<B> {
    /// The estimator that produced it.
    pub fn estimator(&self) -> Estimator {
        match self {
            Curvature::Diag(_) => Estimator::Diag,
            Curvature::Kfac(_) => Estimator::Kfac,
            Curvature::TriKfac(_) => Estimator::TriKfac,
            Curvature::Sum(s) => match s.terms[0] {
                KroneckerTerm::Kfac(_) => Estimator::Kfac,
                KroneckerTerm::TriKfac(_) => Estimator::TriKfac,
            },
            Curvature::LowRank(b) => b.first().map_or(Estimator::Kfac, |x| x.estimator()),
        }
    }

    /// Number of adapter blocks.
    pub fn len(&self) -> usize {
        match self {
            Curvature::Diag(b) => b.len(),
            Curvature::Kfac(b) => b.len(),
            Curvature::TriKfac(b) => b.len(),
            Curvature::Sum(s) => s.first().len(),
            Curvature::LowRank(b) => b.len(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// HF module path of each block.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Curvature::Diag(b) => b.iter().map(|x| x.path.as_str()).collect(),
            Curvature::Kfac(b) => b.iter().map(|x| x.path.as_str()).collect(),
            Curvature::TriKfac(b) => b.iter().map(|x| x.kfac.path.as_str()).collect(),
            Curvature::Sum(s) => match &s.terms[0] {
                KroneckerTerm::Kfac(b) => b.iter().map(|x| x.path.as_str()).collect(),
                KroneckerTerm::TriKfac(b) => b.iter().map(|x| x.kfac.path.as_str()).collect(),
            },
            Curvature::LowRank(b) => b.iter().map(|x| x.path.as_str()).collect(),
        }
    }

    /// `vec(dA, dB)^T F vec(dA, dB)` for block `i`, with `dA: [r, d_in]`, `dB: [d_out, r]`.
    pub fn quadratic(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        match self {
            Curvature::Diag(b) => b[i].quadratic(d_a, d_b),
            Curvature::Kfac(b) => b[i].quadratic(d_a, d_b),
            Curvature::TriKfac(b) => b[i].quadratic(d_a, d_b),
            Curvature::Sum(s) => s.quadratic(i, d_a, d_b),
            Curvature::LowRank(b) => b[i].quadratic(d_a, d_b),
        }
    }

    /// `F vec(dA, dB)` for block `i`, split into its `dA` and `dB` parts.
    pub fn product(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        match self {
            Curvature::Diag(b) => b[i].product(d_a, d_b),
            Curvature::Kfac(b) => b[i].product(d_a, d_b),
            Curvature::TriKfac(b) => b[i].product(d_a, d_b),
            Curvature::Sum(s) => s.product(i, d_a, d_b),
            Curvature::LowRank(b) => b[i].product(d_a, d_b),
        }
    }

    /// Sum of the diagonal of F (a size measure for reports).
    pub fn trace(&self) -> f64 {
        match self {
            Curvature::Diag(b) => b.iter().map(|x| x.trace()).sum(),
            Curvature::Kfac(b) => b.iter().map(|x| x.trace()).sum(),
            Curvature::TriKfac(b) => b.iter().map(|x| x.kfac.trace()).sum(),
            Curvature::Sum(s) => s.trace(),
            Curvature::LowRank(b) => b.iter().map(|x| x.trace()).sum(),
        }
    }

    /// Named tensors for `curvature.safetensors` (names in [`math`]).
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        match self {
            Curvature::Diag(b) => b.iter().flat_map(|x| x.tensors()).collect(),
            Curvature::Kfac(b) => b.iter().flat_map(|x| x.tensors()).collect(),
            Curvature::TriKfac(b) => b.iter().flat_map(|x| x.tensors()).collect(),
            Curvature::Sum(s) => s.tensors(),
            Curvature::LowRank(b) => b.iter().flat_map(|x| x.tensors()).collect(),
        }
    }

    /// Rebuilds a curvature for `adapters` from named tensors; `get(name, shape)` reads and
    /// checks one.
    pub fn from_tensors(
        estimator: Estimator,
        adapters: &[AdapterInfo],
        get: impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>,
    ) -> crate::Result<Self> {
        Ok(match estimator {
            Estimator::Diag => Curvature::Diag(adapters.iter().map(|a| DiagBlock::from_tensors(a, &get)).collect::<crate::Result<_>>()?),
            Estimator::Kfac => Curvature::Kfac(adapters.iter().map(|a| KfacBlock::from_tensors(a, &get)).collect::<crate::Result<_>>()?),
            Estimator::TriKfac => {
                Curvature::TriKfac(adapters.iter().map(|a| TriKfacBlock::from_tensors(a, &get)).collect::<crate::Result<_>>()?)
            }
        })
    }

    /// [`Self::from_tensors`] for a curvature saved with `factor_rank` (`laplace.json`): with
    /// `Some(k)`, kfac and tri-kfac are read as [`Curvature::LowRank`] (factors larger than k
    /// compressed); a diagonal, or `None`, reads as [`Self::from_tensors`] does.
    pub fn from_tensors_at(
        estimator: Estimator,
        adapters: &[AdapterInfo],
        factor_rank: Option<usize>,
        get: impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>,
    ) -> crate::Result<Self> {
        match (estimator, factor_rank) {
            (Estimator::Kfac | Estimator::TriKfac, Some(k)) => Ok(Curvature::LowRank(
                adapters.iter().map(|a| LowRankBlock::from_tensors(a, estimator, k, &get)).collect::<crate::Result<_>>()?,
            )),
            _ => Self::from_tensors(estimator, adapters, get),
        }
    }
}

/// `<M, N>` = sum of the element-wise product, as a 1-element tensor.
pub(crate) fn inner<B: Backend>(m: Tensor<B, 2>, n: Tensor<B, 2>) -> Tensor<B, 1> {
    (m * n).sum()
}
