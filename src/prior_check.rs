//! Checks of a prior read from disk: `laplace.json`'s values against the adapters it is used
//! with, its files against the hashes it records, and its curvature against the one property
//! every estimator guarantees (positive semi-definite), so that a mixed, edited or foreign
//! prior is refused with the file named instead of giving a penalty that can go negative.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::cast::ToElement as _;
use burn::tensor::{Tensor, TensorData};
use rand::{RngExt, SeedableRng};

use crate::curvature::{Curvature, Estimator};
use crate::error::{Error, Result};
use crate::io::hash::hash_file;
use crate::laplace::LaplaceMeta;
use crate::llama::{Llama, Projection};
use crate::lora::lora_scale;

/// The files of a prior directory whose hashes `laplace.json` records (those present).
pub(crate) const HASHED_FILES: [&str; 4] =
    ["curvature.safetensors", "anchor/adapter_model.safetensors", "anchor/adapter_config.json", "anchor/lalora_adapter.json"];

/// Hashes of the prior files present in `dir`, keyed by their path inside it.
pub(crate) fn file_hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    HASHED_FILES.iter().filter(|f| dir.join(f).exists()).map(|f| Ok((f.to_string(), hash_file(&dir.join(f))?))).collect()
}

/// Every file `laplace.json` records still has its hash, and none of them is missing. A
/// prior written before hashes were recorded has none to check.
pub(crate) fn check_file_hashes(dir: &Path, meta: &LaplaceMeta) -> Result<()> {
    for (name, recorded) in &meta.files {
        let path = dir.join(name);
        if !path.exists() {
            return Err(Error::io(&path, std::io::Error::new(std::io::ErrorKind::NotFound, "laplace.json records it, but it is missing")));
        }
        if hash_file(&path)? != *recorded {
            return Err(Error::Mismatch {
                path,
                reason: format!(
                    "does not match the hash laplace.json records for it: the prior in {} mixes files of different fits; \
                     fit it again with `lalora laplace`",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// `laplace.json`'s own values: token count, rank, alpha and scale agree with each other.
pub(crate) fn check_meta_values(path: &Path, meta: &LaplaceMeta) -> Result<()> {
    if !(meta.prior_precision.is_finite() && meta.prior_precision >= 0.0) {
        return Err(Error::config(path, "prior_precision", "must be a non-negative number"));
    }
    if meta.tokens == 0 {
        return Err(Error::config(path, "tokens", "is 0: a prior averages over at least one source token"));
    }
    if meta.rank == 0 {
        return Err(Error::config(path, "rank", "must be at least 1"));
    }
    if meta.factor_rank == Some(0) {
        return Err(Error::config(path, "factor_rank", "must be at least 1 (leave it out for full factors)"));
    }
    if !(meta.alpha.is_finite() && meta.alpha > 0.0) {
        return Err(Error::config(path, "alpha", "must be a positive number"));
    }
    let implied = lora_scale(meta.alpha, meta.rank, meta.rslora);
    if (implied - meta.scale).abs() > 1e-9 * implied.abs().max(1.0) {
        return Err(Error::config(
            path,
            "alpha",
            format!(
                "alpha {} with rank {} ({}) gives scale {implied}, but the file's scale is {}",
                meta.alpha,
                meta.rank,
                if meta.rslora { "rsLoRA" } else { "alpha / r" },
                meta.scale
            ),
        ));
    }
    Ok(())
}

/// The projections `laplace.json` lists are the ones the model adapts.
pub(crate) fn check_targets<B: Backend>(path: &Path, meta: &LaplaceMeta, model: &Llama<B>) -> Result<()> {
    let sorted = |mut v: Vec<Projection>| {
        v.sort_by_key(|p| p.hf_name());
        v.dedup();
        v
    };
    let adapted = sorted(model.adapters().iter().map(|a| a.projection).collect());
    let listed = sorted(meta.targets.clone());
    if adapted != listed {
        let names = |v: &[Projection]| v.iter().map(|p| p.hf_name()).collect::<Vec<_>>().join(", ");
        return Err(Error::config(
            path,
            "targets",
            format!("the prior covers [{}], the adapters adapt [{}]", names(&listed), names(&adapted)),
        ));
    }
    Ok(())
}

/// Probes that the curvature is positive semi-definite: for each block, random directions in
/// the A part, the B part and both must give `d^T F d >= 0` (up to rounding, measured
/// against `|d| |F d|`). This catches a curvature that is negative in bulk (a sign error, a
/// factor edited or taken from elsewhere); a single negative direction among many can pass.
pub(crate) fn check_psd<B: Backend>(path: &Path, curvature: &Curvature<B>, model: &Llama<B>) -> Result<()> {
    let device = model.embed_tokens.device();
    // Host-side draws: the backend's generator (dropout, label sampling) is left alone.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut normal = |dims: [usize; 2]| {
        let values: Vec<f32> = (0..dims[0] * dims[1])
            .map(|_| {
                // Box-Muller from two uniforms.
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        Tensor::<B, 2>::from_data(TensorData::new(values, dims), &device)
    };
    for (i, adapter) in model.adapters().iter().enumerate() {
        let (a_dims, b_dims) = (adapter.lora_a.dims(), adapter.lora_b.dims());
        for probe in 0..3 {
            let d_a = if probe == 1 { Tensor::zeros(a_dims, &device) } else { normal(a_dims) };
            let d_b = if probe == 0 { Tensor::zeros(b_dims, &device) } else { normal(b_dims) };
            let (p_a, p_b) = curvature.product(i, d_a.clone(), d_b.clone());
            let value = ((d_a.clone() * p_a.clone()).sum() + (d_b.clone() * p_b.clone()).sum()).into_scalar().to_f64();
            let norm = |t: Tensor<B, 2>| t.square().sum().into_scalar().to_f64();
            let bound = ((norm(d_a) + norm(d_b)) * (norm(p_a) + norm(p_b))).sqrt();
            if !value.is_finite() || value < -1e-4 * bound {
                let what = match curvature.estimator() {
                    Estimator::Diag => "diagonal",
                    Estimator::Kfac | Estimator::TriKfac => "Kronecker factors",
                };
                return Err(Error::Mismatch {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the curvature of `{}` is not positive semi-definite (d^T F d = {value:.3e} for a random d): its {what} \
                         are not a fitted curvature; fit the prior again with `lalora laplace`",
                        adapter.path()
                    ),
                });
            }
        }
    }
    Ok(())
}
