//! lambda with its Bayesian meaning: the setting at which the penalised objective's minimum is
//! the MAP of the posterior after the source data and then the target data.
//!
//! F is a per-token average over the `N_src` source tokens the prior was fitted on, and the
//! target loss is a per-token mean over the `N_tgt` loss-carrying tokens of the training set.
//! The log posterior, up to constants, is
//!
//! `-N_tgt mean_nll(theta) - (N_src/2) (theta - theta*)^T (F + delta I) (theta - theta*)`
//!
//! (the Laplace approximation of the source posterior: its precision is `N_src F` plus the
//! prior's `N_src delta`, so delta is a prior precision *per source token*). Dividing by
//! `N_tgt` gives `mean_nll + (lambda/2) d^T (F + delta I) d` with
//!
//! `lambda = N_src / N_tgt`.
//!
//! Epochs do not change it: each training token is one observation however often it is seen.
//! Larger lambdas trust the source more than the data warrant (more retention), smaller ones
//! less; the Bayesian value is a reference point on the frontier, not its best point.

use std::fmt;
use std::str::FromStr;

use crate::data::Sequence;
use crate::error::{Error, Result};

/// `N_src / N_tgt`, the lambda whose minimiser is the posterior MAP.
///
/// # Errors
/// [`Error::BadArgument`] naming `lambda` when either count is zero.
pub fn posterior_lambda(source_tokens: usize, target_tokens: usize) -> Result<f64> {
    if source_tokens == 0 {
        return Err(Error::arg("lambda", "posterior: the prior records 0 source tokens"));
    }
    if target_tokens == 0 {
        return Err(Error::arg("lambda", "posterior: the training data has no loss-carrying tokens"));
    }
    Ok(source_tokens as f64 / target_tokens as f64)
}

/// The loss-carrying tokens of a training set, `N_tgt` (each sequence's `num_targets`).
pub fn target_tokens(sequences: &[Sequence]) -> usize {
    sequences.iter().map(Sequence::num_targets).sum()
}

/// How lambda is given: a number, or `posterior` (`N_src / N_tgt`, resolved once the prior and
/// the training data are read).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LambdaSetting {
    /// This value.
    Value(f64),
    /// [`posterior_lambda`] of the prior's source tokens and the training set's tokens.
    Posterior,
}

impl LambdaSetting {
    /// The value: itself, or `N_src / N_tgt` (see [`posterior_lambda`]).
    ///
    /// # Errors
    /// For `Posterior` when a count is zero or the source tokens are unknown (`None`: a prior
    /// without `laplace.json`, or a method without a prior).
    pub fn resolve(self, source_tokens: Option<usize>, target_tokens: usize) -> Result<f64> {
        match self {
            LambdaSetting::Value(v) => Ok(v),
            LambdaSetting::Posterior => {
                let source = source_tokens.ok_or_else(|| {
                    Error::arg("lambda", "posterior needs a Laplace prior that records its source tokens (--method lalora --laplace DIR)")
                })?;
                posterior_lambda(source, target_tokens)
            }
        }
    }
}

impl FromStr for LambdaSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("posterior") {
            return Ok(LambdaSetting::Posterior);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(LambdaSetting::Value(v)),
            Ok(v) => Err(format!("lambda must be finite and >= 0, got {v}")),
            Err(_) => Err(format!("lambda must be a number or `posterior`, got `{s}`")),
        }
    }
}

impl fmt::Display for LambdaSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LambdaSetting::Value(v) => write!(f, "{v}"),
            LambdaSetting::Posterior => write!(f, "posterior"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D Gaussian, where Laplace is exact: observations `~ N(mu, sigma^2)`, a prior
    /// `N(m0, 1/(N_src delta))` on mu, source data x (N_src points) and then target data y
    /// (N_tgt points). The exact posterior MAP is the conjugate mean
    /// `(N_src delta m0 + sum x / s2 + sum y / s2) / (N_src delta + (N_src + N_tgt) / s2)`.
    /// The penalised objective uses only what the library has: theta* = the source MAP, F = the
    /// per-token Fisher `E_yhat[(d nll / d mu)^2]` with `yhat` drawn from the model (computed
    /// here by quadrature, the limit of the MC estimator), the target's per-token mean NLL,
    /// and lambda from [`posterior_lambda`]. Its minimiser is found by Newton steps on the
    /// objective's numerical derivatives.
    #[test]
    fn posterior_lambda_gives_the_exact_map_of_a_gaussian_mean() {
        let s2 = 0.7f64; // sigma^2
        let (m0, delta) = (0.3f64, 0.05f64);
        let x: Vec<f64> = (0..37).map(|i| 1.0 + ((i * 17 % 11) as f64 - 5.0) * 0.13).collect();
        let y: Vec<f64> = (0..9).map(|i| -0.4 + ((i * 7 % 5) as f64 - 2.0) * 0.21).collect();
        let (n_src, n_tgt) = (x.len(), y.len());

        // The source posterior's MAP theta* (exact for a Gaussian).
        let theta_star = (n_src as f64 * delta * m0 + x.iter().sum::<f64>() / s2) / (n_src as f64 * delta + n_src as f64 / s2);
        // F: the per-token Fisher E_yhat[(d/dmu nll)^2] with yhat ~ N(theta*, s2), by the
        // midpoint rule on +-12 sigma.
        let fisher = {
            let (steps, width) = (20_000, 12.0);
            let h = 2.0 * width / steps as f64;
            (0..=steps)
                .map(|k| {
                    let u = -width + k as f64 * h; // in units of sigma
                    let density = (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    let score = u * s2.sqrt() / s2; // (yhat - mu) / s2
                    density * score * score * h
                })
                .sum::<f64>()
        };
        assert!((fisher - 1.0 / s2).abs() < 1e-9, "F = 1/sigma^2, got {fisher}");

        let map_of = |lambda: f64| {
            // objective: mean_j (mu - y_j)^2 / (2 s2) + (lambda/2) (F + delta) (mu - theta*)^2
            let objective = |mu: f64| {
                y.iter().map(|v| (mu - v).powi(2) / (2.0 * s2)).sum::<f64>() / n_tgt as f64
                    + 0.5 * lambda * (fisher + delta) * (mu - theta_star).powi(2)
            };
            let mut mu = 0.0;
            let h = 1e-4;
            for _ in 0..20 {
                let d1 = (objective(mu + h) - objective(mu - h)) / (2.0 * h);
                let d2 = (objective(mu + h) - 2.0 * objective(mu) + objective(mu - h)) / (h * h);
                mu -= d1 / d2;
            }
            mu
        };
        let exact = (n_src as f64 * delta * m0 + (x.iter().sum::<f64>() + y.iter().sum::<f64>()) / s2)
            / (n_src as f64 * delta + (n_src + n_tgt) as f64 / s2);
        let lambda = posterior_lambda(n_src, n_tgt).unwrap();
        assert!((lambda - 37.0 / 9.0).abs() < 1e-15);
        let found = map_of(lambda);
        assert!((found - exact).abs() < 1e-6, "posterior lambda: {found} vs exact MAP {exact}");
        // The setting the README used to give (lambda = N_src) is not the posterior.
        let old = map_of(n_src as f64);
        assert!((old - exact).abs() > 0.1, "lambda = N_src gives {old}, exact {exact}");
    }

    #[test]
    fn settings_parse_resolve_and_refuse_nonsense() {
        assert_eq!("posterior".parse::<LambdaSetting>(), Ok(LambdaSetting::Posterior));
        assert_eq!("2.5".parse::<LambdaSetting>(), Ok(LambdaSetting::Value(2.5)));
        assert!("-1".parse::<LambdaSetting>().is_err());
        assert!("lots".parse::<LambdaSetting>().unwrap_err().contains("posterior"));
        assert_eq!(LambdaSetting::Value(3.0).resolve(None, 0).unwrap(), 3.0);
        assert_eq!(LambdaSetting::Posterior.resolve(Some(1000), 250).unwrap(), 4.0);
        assert!(LambdaSetting::Posterior.resolve(None, 250).unwrap_err().to_string().contains("lambda"));
        assert!(LambdaSetting::Posterior.resolve(Some(1000), 0).is_err());
        let seqs = [Sequence::text(vec![1, 2, 3, 4]), Sequence::new(vec![1, 2, 3, 4, 5], 3)];
        assert_eq!(target_tokens(&seqs), 3 + 2);
    }
}
