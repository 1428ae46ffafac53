//! Weighted sums of curvatures, for priors accumulated over several tasks (continual
//! learning): `F = sum_k w_k F_k`.
//!
//! A sum of Kronecker products is not a Kronecker product, so B-KFAC and B-Tri-KFAC sums are
//! kept exactly, term by term: the quadratic form and the product are the weighted sums of
//! the terms' (each term costs what one fit costs, in memory and per penalty evaluation). A
//! diagonal is linear in its stored values, so diagonal sums are added into one diagonal
//! ([`weighted_sum`]).
//!
//! In `curvature.safetensors` a sum stores each term's tensors under `terms.{k}.` + the
//! term's own names; the weights live in `laplace.json` (see [`crate::laplace::LaplaceMeta`]).

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::{AdapterInfo, Curvature, Estimator, KfacBlock, TriKfacBlock};
use crate::error::{Error, Result};

/// One term of a [`CurvatureSum`]: a Kronecker-factored curvature (never a sum itself, and
/// never a diagonal, which adds into one diagonal instead). A type of its own because a
/// module cannot contain itself.
#[derive(Module, Debug)]
pub enum KroneckerTerm<B: Backend> {
    /// B-KFAC blocks, one per adapter.
    Kfac(Vec<KfacBlock<B>>),
    /// B-Tri-KFAC blocks, one per adapter.
    TriKfac(Vec<TriKfacBlock<B>>),
}

impl<B: Backend> KroneckerTerm<B> {
    /// The term of a plain B-KFAC or B-Tri-KFAC curvature; `None` for a diagonal or a sum.
    pub fn of(curvature: Curvature<B>) -> Option<Self> {
        match curvature {
            Curvature::Kfac(b) => Some(KroneckerTerm::Kfac(b)),
            Curvature::TriKfac(b) => Some(KroneckerTerm::TriKfac(b)),
            Curvature::Diag(_) | Curvature::Sum(_) | Curvature::LowRank(_) => None,
        }
    }

    /// The term as a plain curvature.
    pub fn into_curvature(self) -> Curvature<B> {
        match self {
            KroneckerTerm::Kfac(b) => Curvature::Kfac(b),
            KroneckerTerm::TriKfac(b) => Curvature::TriKfac(b),
        }
    }

    /// A plain curvature sharing this term's tensors (cheap: tensors are reference counted).
    pub fn curvature(&self) -> Curvature<B> {
        self.clone().into_curvature()
    }
}

/// `sum_k weights[k] * terms[k]`, terms of one Kronecker-factored estimator.
#[derive(Module, Debug)]
pub struct CurvatureSum<B: Backend> {
    /// The curvatures, oldest first.
    pub terms: Vec<KroneckerTerm<B>>,
    /// One weight per term (`gamma^(age)` after decay).
    pub weights: Vec<f64>,
}

impl<B: Backend> CurvatureSum<B> {
    /// The first term as a curvature (every term has the same estimator and adapters).
    pub fn first(&self) -> Curvature<B> {
        self.terms[0].curvature()
    }

    /// `sum_k w_k vec(dA, dB)^T F_k vec(dA, dB)` for adapter `i`.
    pub fn quadratic(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let parts: Vec<Tensor<B, 1>> = self
            .terms
            .iter()
            .zip(&self.weights)
            .map(|(t, &w)| t.curvature().quadratic(i, d_a.clone(), d_b.clone()).mul_scalar(w))
            .collect();
        Tensor::cat(parts, 0).sum()
    }

    /// `sum_k w_k F_k vec(dA, dB)` for adapter `i`, split into its `dA` and `dB` parts.
    pub fn product(&self, i: usize, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let mut out: Option<(Tensor<B, 2>, Tensor<B, 2>)> = None;
        for (term, &w) in self.terms.iter().zip(&self.weights) {
            let (a, b) = term.curvature().product(i, d_a.clone(), d_b.clone());
            let (a, b) = (a.mul_scalar(w), b.mul_scalar(w));
            out = Some(match out {
                Some((sa, sb)) => (sa + a, sb + b),
                None => (a, b),
            });
        }
        out.expect("a curvature sum has at least one term")
    }

    /// `sum_k w_k tr(F_k)`.
    pub fn trace(&self) -> f64 {
        self.terms.iter().zip(&self.weights).map(|(t, w)| w * t.curvature().trace()).sum()
    }

    /// Each term's tensors, named `terms.{k}.{name}`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        self.terms
            .iter()
            .enumerate()
            .flat_map(|(k, t)| t.curvature().tensors().into_iter().map(move |(n, x)| (format!("terms.{k}.{n}"), x)))
            .collect()
    }

    /// Reads a sum of `weights.len()` terms of `estimator` back; `get(name, shape)` reads and
    /// checks one tensor.
    ///
    /// # Errors
    /// [`Error::BadArgument`] for a diagonal estimator (diagonals are stored added up), and
    /// whatever `get` returns.
    pub fn from_tensors(
        estimator: Estimator,
        weights: &[f64],
        adapters: &[AdapterInfo],
        get: impl Fn(&str, [usize; 2]) -> Result<Tensor<B, 2>>,
    ) -> Result<Self> {
        let terms = (0..weights.len())
            .map(|k| {
                let curvature = Curvature::from_tensors(estimator, adapters, |name, shape| get(&format!("terms.{k}.{name}"), shape))?;
                KroneckerTerm::of(curvature).ok_or_else(|| Error::arg("curvature", "a diagonal curvature is not stored as a sum of terms"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CurvatureSum { terms, weights: weights.to_vec() })
    }
}

/// `sum_k weights[k] * curvatures[k]` over curvatures of one estimator for `adapters`.
///
/// Diagonals are added into one diagonal. Kronecker-factored curvatures become a
/// [`CurvatureSum`] (terms of a sum are spliced in with their weights multiplied), with terms
/// of weight 0 dropped; a single remaining term of weight 1 is returned as it is.
///
/// # Errors
/// [`Error::BadArgument`] when the list is empty, a weight is negative or
/// not finite, the curvatures differ in estimator or adapters, or one has low-rank factors.
pub fn weighted_sum<B: Backend>(curvatures: Vec<(f64, Curvature<B>)>, adapters: &[AdapterInfo]) -> Result<Curvature<B>> {
    let first = curvatures.first().ok_or_else(|| Error::arg("curvature", "no curvature to add up"))?;
    let estimator = first.1.estimator();
    let paths: Vec<&str> = adapters.iter().map(|a| a.path.as_str()).collect();
    for (w, c) in &curvatures {
        if matches!(c, Curvature::LowRank(_)) {
            return Err(super::low_rank::sum_unsupported());
        }
        if !(w.is_finite() && *w >= 0.0) {
            return Err(Error::arg("decay", format!("curvature weights must be non-negative numbers, got {w}")));
        }
        if c.estimator() != estimator {
            return Err(Error::arg(
                "curvature",
                format!("cannot add a {} curvature to a {} one: priors must use one estimator", c.estimator().name(), estimator.name()),
            ));
        }
        if c.paths() != paths {
            return Err(Error::arg("curvature", "the curvatures were fitted for different adapters"));
        }
    }
    // Flatten: every (weight, plain curvature) pair.
    let mut flat: Vec<(f64, Curvature<B>)> = Vec::new();
    for (w, c) in curvatures {
        match c {
            Curvature::Sum(sum) => {
                flat.extend(sum.weights.iter().map(|wk| wk * w).zip(sum.terms.into_iter().map(KroneckerTerm::into_curvature)))
            }
            plain => flat.push((w, plain)),
        }
    }
    flat.retain(|(w, _)| *w != 0.0);
    if flat.is_empty() {
        return Err(Error::arg("decay", "every curvature has weight 0"));
    }
    if estimator == Estimator::Diag {
        return add_diagonals(flat, adapters);
    }
    if flat.len() == 1 && flat[0].0 == 1.0 {
        return Ok(flat.pop().expect("one term").1);
    }
    let (weights, terms): (Vec<f64>, Vec<KroneckerTerm<B>>) =
        flat.into_iter().map(|(w, c)| (w, KroneckerTerm::of(c).expect("Kronecker-factored and flattened"))).unzip();
    Ok(Curvature::Sum(CurvatureSum { terms, weights }))
}

/// One diagonal `sum_k w_k D_k`: a diagonal's quadratic form is linear in its stored values,
/// so the stored tensors are added name by name and read back.
fn add_diagonals<B: Backend>(terms: Vec<(f64, Curvature<B>)>, adapters: &[AdapterInfo]) -> Result<Curvature<B>> {
    let mut total: Option<Vec<(String, Tensor<B, 2>)>> = None;
    for (w, c) in terms {
        let scaled: Vec<(String, Tensor<B, 2>)> = c.tensors().into_iter().map(|(n, t)| (n, t.mul_scalar(w))).collect();
        total = Some(match total {
            None => scaled,
            Some(sum) => sum.into_iter().zip(scaled).map(|((n, a), (_, b))| (n, a + b)).collect(),
        });
    }
    let tensors: HashMap<String, Tensor<B, 2>> = total.expect("at least one term").into_iter().collect();
    Curvature::from_tensors(Estimator::Diag, adapters, |name, shape| {
        let t = tensors.get(name).ok_or_else(|| Error::arg("curvature", format!("the diagonal has no tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(Error::arg("curvature", format!("`{name}` has shape {:?}, the adapter needs {shape:?}", t.dims())));
        }
        Ok(t.clone())
    })
}
