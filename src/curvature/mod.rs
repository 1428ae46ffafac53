//! Curvature of the source NLL over the LoRA weights: Diag, B-KFAC and B-Tri-KFAC
//! (LaLoRA, arXiv 2512.17720).
//!
//! Gathering is kept apart from using (as in curvlinops): [`capture`] runs the model with
//! probes and hands per-adapter tensors `(x, z, g, h)` to an [`Accumulator`], which only sums
//! statistics; [`Curvature`] holds the finished per-token-average factors and evaluates the
//! quadratic form. The conventions every estimator follows are written once, in [`math`].

pub mod accumulate;
pub mod capture;
pub mod math;
pub mod memory;

mod diag;
mod kfac;
mod tri_kfac;

pub use accumulate::{Accumulator, AdapterInfo, AdapterStats};
pub use capture::{adapter_infos, capture_batch, tap_stats, FisherType};
pub use diag::DiagBlock;
pub use kfac::KfacBlock;
pub use tri_kfac::TriKfacBlock;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// Which curvature approximation to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
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
}

/// A fitted curvature: one block per adapter, in the model's adapter order.
#[derive(Debug, Clone)]
pub enum Curvature<B: Backend> {
    /// Diagonal.
    Diag(Vec<DiagBlock<B>>),
    /// B-KFAC.
    Kfac(Vec<KfacBlock<B>>),
    /// B-Tri-KFAC.
    TriKfac(Vec<TriKfacBlock<B>>),
}

impl<B: Backend> Curvature<B> {
    /// The estimator that produced it.
    pub fn estimator(&self) -> Estimator {
        match self {
            Curvature::Diag(_) => Estimator::Diag,
            Curvature::Kfac(_) => Estimator::Kfac,
            Curvature::TriKfac(_) => Estimator::TriKfac,
        }
    }

    /// Number of adapter blocks.
    pub fn len(&self) -> usize {
        match self {
            Curvature::Diag(b) => b.len(),
            Curvature::Kfac(b) => b.len(),
            Curvature::TriKfac(b) => b.len(),
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
        }
    }

    /// `vec(dA, dB)^T F vec(dA, dB)` for block `i`, with `dA: [r, d_in]`, `dB: [d_out, r]`.
    pub fn quadratic(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        match self {
            Curvature::Diag(b) => b[i].quadratic(d_a, d_b),
            Curvature::Kfac(b) => b[i].quadratic(d_a, d_b),
            Curvature::TriKfac(b) => b[i].quadratic(d_a, d_b),
        }
    }

    /// `F vec(dA, dB)` for block `i`, split into its `dA` and `dB` parts.
    pub fn product(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        match self {
            Curvature::Diag(b) => b[i].product(d_a, d_b),
            Curvature::Kfac(b) => b[i].product(d_a, d_b),
            Curvature::TriKfac(b) => b[i].product(d_a, d_b),
        }
    }

    /// Sum of the diagonal of F (a size measure for reports).
    pub fn trace(&self) -> f64 {
        match self {
            Curvature::Diag(b) => b.iter().map(|x| x.trace()).sum(),
            Curvature::Kfac(b) => b.iter().map(|x| x.trace()).sum(),
            Curvature::TriKfac(b) => b.iter().map(|x| x.kfac.trace()).sum(),
        }
    }

    /// Named tensors for `curvature.safetensors` (names in [`math`]).
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        match self {
            Curvature::Diag(b) => b.iter().flat_map(|x| x.tensors()).collect(),
            Curvature::Kfac(b) => b.iter().flat_map(|x| x.tensors()).collect(),
            Curvature::TriKfac(b) => b.iter().flat_map(|x| x.tensors()).collect(),
        }
    }

    /// The same curvature with every tensor passed through `f` (to move it to another backend,
    /// for example `Tensor::from_inner` onto the autodiff backend).
    pub fn map<B2: Backend>(self, f: impl Fn(Tensor<B, 2>) -> Tensor<B2, 2>) -> Curvature<B2> {
        let kfac = |k: KfacBlock<B>| KfacBlock { path: k.path, x_a: f(k.x_a), g_a: f(k.g_a), x_b: f(k.x_b), g_b: f(k.g_b) };
        match self {
            Curvature::Diag(b) => Curvature::Diag(b.into_iter().map(|d| DiagBlock { path: d.path, a: f(d.a), b: f(d.b) }).collect()),
            Curvature::Kfac(b) => Curvature::Kfac(b.into_iter().map(kfac).collect()),
            Curvature::TriKfac(b) => Curvature::TriKfac(
                b.into_iter().map(|t| TriKfacBlock { x_ab: f(t.x_ab), g_ab: f(t.g_ab), kfac: kfac(t.kfac) }).collect(),
            ),
        }
    }

    /// Rebuilds a curvature from named tensors; `get(name, shape)` reads and checks one.
    pub fn from_tensors(
        estimator: Estimator,
        blocks: &[(String, [usize; 2], usize)],
        get: impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>,
    ) -> crate::Result<Self> {
        let kfac = |path: &str, [d_out, d_in]: [usize; 2], r: usize| -> crate::Result<KfacBlock<B>> {
            Ok(KfacBlock {
                path: path.to_string(),
                x_a: get(&format!("{path}.lora_A.X"), [d_in, d_in])?,
                g_a: get(&format!("{path}.lora_A.G"), [r, r])?,
                x_b: get(&format!("{path}.lora_B.X"), [r, r])?,
                g_b: get(&format!("{path}.lora_B.G"), [d_out, d_out])?,
            })
        };
        Ok(match estimator {
            Estimator::Kfac => {
                Curvature::Kfac(blocks.iter().map(|(p, dims, r)| kfac(p, *dims, *r)).collect::<crate::Result<_>>()?)
            }
            Estimator::TriKfac => {
                let mut out = Vec::with_capacity(blocks.len());
                for (p, [d_out, d_in], r) in blocks {
                    let k = kfac(p, [*d_out, *d_in], *r)?;
                    out.push(TriKfacBlock {
                        kfac: k,
                        x_ab: get(&format!("{p}.cross.X"), [*d_in, *r])?,
                        g_ab: get(&format!("{p}.cross.G"), [*r, *d_out])?,
                    });
                }
                Curvature::TriKfac(out)
            }
            Estimator::Diag => {
                let mut out = Vec::with_capacity(blocks.len());
                for (p, [d_out, d_in], r) in blocks {
                    out.push(DiagBlock {
                        path: p.clone(),
                        a: get(&format!("{p}.lora_A.diag"), [*r, *d_in])?,
                        b: get(&format!("{p}.lora_B.diag"), [*d_out, *r])?,
                    });
                }
                Curvature::Diag(out)
            }
        })
    }
}

/// `<M, N>` = sum of the element-wise product, as a 1-element tensor.
pub(crate) fn inner<B: Backend>(m: Tensor<B, 2>, n: Tensor<B, 2>) -> Tensor<B, 1> {
    (m * n).sum()
}
