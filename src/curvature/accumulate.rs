//! Summing curvature statistics over batches and label draws.
//!
//! An [`Accumulator`] sees, per forward pass, the inputs `(x, z)` of every adapter once
//! ([`Accumulator::observe_inputs`]) and, per backward pass, the gradients `(g, h)` with the
//! pass's weight ([`Accumulator::observe_gradients`]). It counts tokens and hands the tensors to
//! the chosen estimator's running sums (which live with the estimator, in `diag.rs`, `kfac.rs`
//! and `tri_kfac.rs`); [`Accumulator::finish`] divides by the token count once.

use std::collections::HashMap;

use burn::tensor::{backend::Backend, Tensor};

use super::diag::DiagSums;
use super::kfac::{KfacSums, SharedInputs};
use super::sketch::test_matrix;
use super::tri_kfac::TriKfacSums;
use super::{Curvature, Estimator};

/// One adapter's tensors from one forward/backward pass.
#[derive(Debug, Clone)]
pub struct AdapterStats<B: Backend> {
    /// Layer input, `[batch, seq, d_in]`.
    pub x: Tensor<B, 3>,
    /// `A x`, `[batch, seq, r]`.
    pub z: Tensor<B, 3>,
    /// `dL/dy`, `[batch, seq, d_out]`.
    pub g: Tensor<B, 3>,
    /// `dL/dz`, `[batch, seq, r]`.
    pub h: Tensor<B, 3>,
}

/// Static facts about one adapter.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    /// HF module path (names its tensors in `curvature.safetensors`).
    pub path: String,
    /// `[d_out, d_in]`.
    pub dims: [usize; 2],
    /// Rank r.
    pub rank: usize,
    /// Scale s.
    pub scale: f64,
    /// Names the tensor the adapter reads: adapters with the same `input` (q/k/v, gate/up of
    /// one layer) share one `X_A`.
    pub input: String,
}

/// `*slot += value`, where an empty slot is zero.
pub(crate) fn add<B: Backend>(slot: &mut Option<Tensor<B, 2>>, value: Tensor<B, 2>) {
    *slot = Some(match slot.take() {
        Some(sum) => sum + value,
        None => value,
    });
}

/// `M^T N` over all tokens: `[.., .., m]`, `[.., .., n]` -> `[m, n]`.
pub(crate) fn token_outer<B: Backend>(m: &Tensor<B, 3>, n: &Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, t, dm] = m.dims();
    let dn = n.dims()[2];
    m.clone().reshape([b * t, dm]).transpose().matmul(n.clone().reshape([b * t, dn]))
}

/// The running sums of one estimator, one entry per adapter.
#[derive(Debug)]
enum Sums<B: Backend> {
    Diag(Vec<DiagSums<B>>),
    Kfac(Vec<KfacSums<B>>),
    TriKfac(Vec<TriKfacSums<B>>),
}

/// Sums of per-token statistics for one estimator over all adapters.
#[derive(Debug)]
pub struct Accumulator<B: Backend> {
    adapters: Vec<AdapterInfo>,
    sums: Sums<B>,
    tokens: usize,
    /// Set by [`Self::sketched`]: the factor rank the sums finish compressed at.
    sketch_rank: Option<usize>,
}

impl<B: Backend> Accumulator<B> {
    /// An empty accumulator for these adapters (in the order their stats will arrive).
    pub fn new(estimator: Estimator, adapters: Vec<AdapterInfo>) -> Self {
        let n = adapters.len();
        let sums = match estimator {
            Estimator::Diag => Sums::Diag(vec![DiagSums::default(); n]),
            Estimator::Kfac => Sums::Kfac(vec![KfacSums::default(); n]),
            Estimator::TriKfac => Sums::TriKfac(vec![TriKfacSums::default(); n]),
        };
        Accumulator { adapters, sums, tokens: 0, sketch_rank: None }
    }

    /// An accumulator that keeps every kfac / tri-kfac factor larger than `factor_rank` as a
    /// one-pass sketch ([`super::sketch`]), never a `[d, d]` matrix; [`Self::finish`] then
    /// returns the compressed curvature (as [`super::compress_curvature`] would return it for
    /// the dense sums, up to the sketch's error). A diagonal has no factors to sketch and is
    /// summed as [`Self::new`] sums it.
    pub fn sketched(estimator: Estimator, adapters: Vec<AdapterInfo>, factor_rank: usize, device: &B::Device) -> Self {
        // One test matrix per factor size, shared by every factor of that size.
        let mut matrices: HashMap<usize, Tensor<B, 2>> = HashMap::new();
        let mut matrix_for = |d: usize| matrices.entry(d).or_insert_with(|| test_matrix(d, factor_rank, device)).clone();
        let sums = match estimator {
            Estimator::Diag => return Self::new(estimator, adapters),
            Estimator::Kfac => Sums::Kfac(adapters.iter().map(|a| KfacSums::sketched(a, factor_rank, &mut matrix_for)).collect()),
            Estimator::TriKfac => Sums::TriKfac(adapters.iter().map(|a| TriKfacSums::sketched(a, factor_rank, &mut matrix_for)).collect()),
        };
        Accumulator { adapters, sums, tokens: 0, sketch_rank: Some(factor_rank) }
    }

    /// The adapters, in order.
    pub fn adapters(&self) -> &[AdapterInfo] {
        &self.adapters
    }

    /// Loss-carrying tokens seen so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Records the input-side statistics of one forward pass. `mask` is `[batch, seq]`, 1 on
    /// loss-carrying positions; `x`, `z` come from `stats` (g and h are not read).
    pub fn observe_inputs(&mut self, stats: &[AdapterStats<B>], mask: &Tensor<B, 2>, num_tokens: usize) {
        assert_eq!(stats.len(), self.adapters.len(), "one stats entry per adapter");
        self.tokens += num_tokens;
        let mask3 = mask.clone().unsqueeze_dim::<3>(2);
        let masked = |s: &AdapterStats<B>| (s.x.clone() * mask3.clone(), s.z.clone() * mask3.clone());
        let mut shared = SharedInputs::new();
        match &mut self.sums {
            // The diagonal reads x and z with the gradients, in `observe_gradients`.
            Sums::Diag(_) => {}
            Sums::Kfac(sums) => {
                for ((info, s), sums) in self.adapters.iter().zip(stats).zip(sums) {
                    let (x, z) = masked(s);
                    sums.observe_inputs(info, &x, &z, &mut shared);
                }
            }
            Sums::TriKfac(sums) => {
                for ((info, s), sums) in self.adapters.iter().zip(stats).zip(sums) {
                    let (x, z) = masked(s);
                    sums.observe_inputs(info, &x, &z, &mut shared);
                }
            }
        }
    }

    /// Records the gradient-side statistics of one backward pass, weighted by `weight`
    /// (`1/K` for K Monte-Carlo draws). Every estimator reads only loss-carrying positions
    /// (`mask`): the same tokens for diag, kfac and tri-kfac.
    pub fn observe_gradients(&mut self, stats: &[AdapterStats<B>], mask: &Tensor<B, 2>, weight: f64) {
        assert_eq!(stats.len(), self.adapters.len(), "one stats entry per adapter");
        let mask3 = mask.clone().unsqueeze_dim::<3>(2);
        let masked = |s: &AdapterStats<B>| (s.g.clone() * mask3.clone(), s.h.clone() * mask3.clone());
        match &mut self.sums {
            Sums::Diag(sums) => {
                for ((info, s), sums) in self.adapters.iter().zip(stats).zip(sums) {
                    let (g, h) = masked(s);
                    sums.observe_gradients(info, s, &g, &h, weight);
                }
            }
            Sums::Kfac(sums) => {
                for (s, sums) in stats.iter().zip(sums) {
                    let (g, h) = masked(s);
                    sums.observe_gradients(&g, &h, weight);
                }
            }
            Sums::TriKfac(sums) => {
                for (s, sums) in stats.iter().zip(sums) {
                    let (g, h) = masked(s);
                    sums.observe_gradients(&g, &h, weight);
                }
            }
        }
    }

    /// The per-token-average curvature: every sum divided by the token count (with the scale
    /// factors each estimator applies); compressed ([`Curvature::LowRank`]) for a
    /// [`Self::sketched`] kfac or tri-kfac accumulator.
    ///
    /// # Panics
    /// If no tokens were observed.
    pub fn finish(self) -> Curvature<B> {
        assert!(self.tokens > 0, "no loss-carrying tokens were observed");
        let n = self.tokens as f64;
        let infos = self.adapters.into_iter();
        if let Some(k) = self.sketch_rank {
            match self.sums {
                Sums::Kfac(sums) => {
                    return Curvature::LowRank(infos.zip(sums).map(|(info, s)| s.finish_compressed(info, n, k, None)).collect())
                }
                Sums::TriKfac(sums) => {
                    return Curvature::LowRank(infos.zip(sums).map(|(info, s)| s.finish_compressed(info, n, k)).collect())
                }
                Sums::Diag(_) => unreachable!("a diagonal accumulator is never sketched"),
            }
        }
        match self.sums {
            Sums::Diag(sums) => Curvature::Diag(infos.zip(sums).map(|(info, s)| s.finish(info, n)).collect()),
            Sums::Kfac(sums) => Curvature::Kfac(infos.zip(sums).map(|(info, s)| s.finish(info, n)).collect()),
            Sums::TriKfac(sums) => Curvature::TriKfac(infos.zip(sums).map(|(info, s)| s.finish(info, n)).collect()),
        }
    }
}
