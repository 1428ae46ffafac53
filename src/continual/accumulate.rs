//! Accumulating Laplace priors over tasks: `P_t = gamma P_{t-1} + F_t + delta_t I`, anchored at
//! the adapters after task t (online EWC's recursion, with LaLoRA's curvatures).

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::curvature::{sum::weighted_sum, AdapterInfo, Curvature};
use crate::error::{Error, Result};
use crate::lalora::LaLoRA;
use crate::laplace::{FitReport, LaplaceConfig, LaplaceMeta, LaplacePrior, SourceData};
use crate::KernelAutodiffBackend;

/// One fit that went into an accumulated prior, and its weight there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorTerm {
    /// The fit's weight in the curvature sum: `gamma^(fits after it)`.
    pub weight: f64,
    /// `mc`, `empirical` or `exhaustive`.
    pub fisher: String,
    /// Monte-Carlo draws per token.
    pub samples: usize,
    /// Loss-carrying tokens the fit averaged over.
    pub tokens: usize,
    /// The fit's data sets.
    pub data: Vec<String>,
    /// The fit's seed.
    pub seed: u64,
}

impl PriorTerm {
    /// The single fit `meta` describes, with weight `weight`.
    fn of_fit(meta: &LaplaceMeta, weight: f64) -> Self {
        PriorTerm {
            weight,
            fisher: meta.fisher.clone(),
            samples: meta.samples,
            tokens: meta.tokens,
            data: meta.data.clone(),
            seed: meta.seed,
        }
    }

    /// The fits behind `meta` (one for a plain fit), weights scaled by `scale`.
    fn of_meta(meta: &LaplaceMeta, scale: f64) -> Vec<Self> {
        if meta.terms.is_empty() {
            return vec![PriorTerm::of_fit(meta, scale)];
        }
        meta.terms.iter().map(|t| PriorTerm { weight: t.weight * scale, ..t.clone() }).collect()
    }
}

/// The term weights `laplace.json` records for a curvature stored as a sum.
pub(crate) fn term_weights(meta: &LaplaceMeta, path: &Path) -> Result<Vec<f64>> {
    if meta.terms.len() < 2 && meta.terms.first().is_none_or(|t| t.weight == 1.0) {
        return Err(Error::config(path, "terms", "the curvature file holds a sum of terms, but no term weights are listed"));
    }
    let weights: Vec<f64> = meta.terms.iter().map(|t| t.weight).collect();
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(Error::config(path, "terms", format!("term weights must be positive numbers, found {w}")));
    }
    Ok(weights)
}

/// Adapter facts of a prior's anchors (paths and shapes; what reading a curvature needs).
fn anchor_infos<B: Backend>(prior: &LaplacePrior<B>, scale: f64) -> Vec<AdapterInfo> {
    prior
        .anchors
        .iter()
        .map(|a| {
            let [r, d_in] = a.a.dims();
            let d_out = a.b.dims()[0];
            AdapterInfo { path: a.path.clone(), dims: [d_out, d_in], rank: r, scale, input: String::new() }
        })
        .collect()
}

impl<B: Backend> LaplacePrior<B> {
    /// `decay * self + newer`: the prior after one more task. The curvatures add (the older
    /// one scaled by `decay`, gamma in online EWC; 1 keeps every task at full weight, 0 forgets
    /// all but `newer`), so do the prior precisions, and the anchor is `newer`'s (the adapters
    /// the newest curvature was fitted at).
    ///
    /// Both priors must be fitted ones (with a curvature and its metadata) of the same
    /// estimator, for the same adapters (paths, shapes, rank and scale). Diagonals are added
    /// into one diagonal; B-KFAC and B-Tri-KFAC curvatures become an exact sum of their terms
    /// ([`crate::curvature::CurvatureSum`]), so memory and penalty cost grow with the number
    /// of tasks (terms of weight 0 are dropped).
    ///
    /// Each curvature is a per-token average over its own data, so every task enters with the
    /// same weight whatever its size; lambda scales the sum.
    ///
    /// # Errors
    /// [`Error::BadArgument`] naming what differs, or a negative or non-finite decay.
    pub fn accumulate(&self, newer: &LaplacePrior<B>, decay: f64) -> Result<LaplacePrior<B>> {
        if !(decay.is_finite() && decay >= 0.0) {
            return Err(Error::arg("decay", format!("must be a non-negative number, got {decay}")));
        }
        let fitted = |p: &LaplacePrior<B>, which: &str| -> Result<(Curvature<B>, LaplaceMeta)> {
            match (&p.curvature, &p.meta) {
                (Some(c), Some(m)) => Ok((c.clone(), m.clone())),
                _ => Err(Error::arg(
                    "accumulate",
                    format!("the {which} prior has no fitted curvature (an isotropic prior cannot be accumulated)"),
                )),
            }
        };
        let (old_curvature, old_meta) = fitted(self, "earlier")?;
        let (new_curvature, new_meta) = fitted(newer, "new")?;
        if old_meta.curvature != new_meta.curvature {
            return Err(Error::arg(
                "accumulate",
                format!(
                    "the earlier prior uses {}, the new fit {}: use one estimator",
                    old_meta.curvature.name(),
                    new_meta.curvature.name()
                ),
            ));
        }
        if old_meta.rank != new_meta.rank || (old_meta.scale - new_meta.scale).abs() > 1e-9 * new_meta.scale.abs().max(1.0) {
            return Err(Error::arg(
                "accumulate",
                format!(
                    "the earlier prior has rank {} and scale {}, the new fit rank {} and scale {}",
                    old_meta.rank, old_meta.scale, new_meta.rank, new_meta.scale
                ),
            ));
        }
        let shapes = |p: &LaplacePrior<B>| p.anchors.iter().map(|a| (a.path.clone(), a.a.dims(), a.b.dims())).collect::<Vec<_>>();
        if shapes(self) != shapes(newer) {
            return Err(Error::arg("accumulate", "the earlier prior and the new fit are for different adapters (paths or shapes differ)"));
        }

        // Every fit behind each prior with its weight in the result, and the curvature terms.
        let mut provenance: Vec<PriorTerm> = Vec::new();
        let mut curvatures: Vec<(f64, Curvature<B>)> = Vec::new();
        for (scale, curvature, meta) in [(decay, old_curvature, &old_meta), (1.0, new_curvature, &new_meta)] {
            let fits = PriorTerm::of_meta(meta, scale);
            match curvature {
                // Kept term by term: term k is fit k.
                Curvature::Sum(sum) => {
                    if sum.terms.len() != fits.len() {
                        return Err(Error::arg(
                            "accumulate",
                            format!("a prior's curvature has {} terms but its metadata lists {} fits", sum.terms.len(), fits.len()),
                        ));
                    }
                    curvatures.extend(sum.terms.into_iter().zip(&fits).map(|(c, fit)| (fit.weight, c.into_curvature())));
                }
                // One fit, or diagonals already added into one (their weights are in the values).
                plain => curvatures.push((scale, plain)),
            }
            provenance.extend(fits.into_iter().filter(|fit| fit.weight != 0.0));
        }
        let infos = anchor_infos(newer, new_meta.scale);
        let curvature = weighted_sum(curvatures, &infos)?;
        let prior_precision = decay * self.prior_precision + newer.prior_precision;
        let meta = LaplaceMeta {
            tokens: provenance.iter().map(|t| t.tokens).sum(),
            data: provenance.iter().flat_map(|t| t.data.clone()).collect(),
            prior_precision,
            // A single kept fit at full weight is a plain prior again.
            terms: if provenance.len() == 1 && provenance[0].weight == 1.0 { Vec::new() } else { provenance },
            // Hashes of saved files: written again when the combined prior is saved.
            files: Default::default(),
            ..new_meta
        };
        Ok(LaplacePrior { anchors: newer.anchors.clone(), curvature: Some(curvature), prior_precision, meta: Some(meta) })
    }
}

impl<B: KernelAutodiffBackend> LaLoRA<B> {
    /// Fits a prior on `data` at the current adapters and adds it to the model's prior with
    /// [`LaplacePrior::accumulate`] (`decay` times the old one); without a prior yet, the fit
    /// becomes the prior. The continual-learning step after each task: `data` is the task
    /// just learnt (its training data), `config` as for [`LaLoRA::fit_prior`].
    pub fn fit_accumulated_prior(&mut self, data: &[SourceData], config: &LaplaceConfig, decay: f64, progress: bool) -> Result<FitReport> {
        let previous = self.prior.take();
        let report = self.fit_prior(data, config, progress);
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                self.prior = previous;
                return Err(e);
            }
        };
        if let Some(previous) = previous {
            let fitted = self.prior.take().expect("fit_prior keeps the prior");
            match previous.accumulate(&fitted, decay) {
                Ok(combined) => self.prior = Some(combined),
                Err(e) => {
                    self.prior = Some(previous);
                    return Err(e);
                }
            }
        }
        Ok(report)
    }
}
