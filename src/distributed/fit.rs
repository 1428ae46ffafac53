//! Data-parallel Laplace fits: the source batches are dealt round-robin to the peers, each
//! sums its statistics, and one all-reduce adds the peers' curvatures, each weighted by its
//! share of the tokens.
//!
//! The curvature is a per-token average of sums: with `N_p` tokens on peer p and `N` in all,
//! `F = S / N = sum_p (N_p / N) (S_p / N_p)`, so the weighted sum of the peers' finished
//! curvatures is one device's fit over the same batches (up to rounding) for every estimator.

use std::collections::HashMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};

use super::collective::Peer;
use crate::curvature::{adapter_infos, capture_batch, Accumulator, Curvature, FisherType};
use crate::error::{Error, Result};
use crate::laplace::{fit_meta, source_batches, stored_form, FitReport, LaplaceConfig, LaplacePrior, SourceData};
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::progress::Progress;
use crate::KernelAutodiffBackend;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// Fits the prior of `config` on `sources` at the model's adapters as one peer of a
/// data-parallel job; every peer must call it with the same arguments and gets the same
/// prior. The backend's generator is seeded with `config.seed` first (as
/// [`crate::LaLoRA::fit_prior`] does), and a peer draws (and drops) the Monte-Carlo labels of
/// the batches it does not capture, so with one peer per process the labels are the ones a
/// single device draws. Local peers share one generator, so their draws interleave.
pub fn fit_peer<B: KernelAutodiffBackend>(
    peer: &mut Peer<Inner<B>>,
    model: &Llama<B>,
    lora: &LoraConfig,
    sources: &[SourceData],
    config: &LaplaceConfig,
    progress: bool,
) -> Result<(LaplacePrior<B>, FitReport)> {
    config.validate()?;
    if model.adapters().is_empty() {
        return Err(Error::arg("adapter", "the model has no adapters to fit a prior for"));
    }
    if config.factor_sketch {
        // Each peer would compress its own share, and a sum of compressed factors is not the
        // compression of the sum (reducing the sketches themselves would work; not done).
        return Err(Error::arg("factor-sketch", "is not supported in data-parallel fits yet: fit on one device, or drop it"));
    }
    let start = Instant::now();
    let (rank, world) = (peer.rank(), peer.world());
    let device = model.embed_tokens.device();
    B::seed(&device, config.seed);
    let (batches, notes) = source_batches::<B>(sources, config, &device);
    let tokens: usize = batches.iter().map(|b| b.num_targets).sum();
    if tokens == 0 {
        return Err(Error::EmptyData { path: "<source data>".into(), reason: "no loss-carrying tokens to fit on".into() });
    }
    let infos = adapter_infos(model);
    let progress = Progress::new(progress && rank == 0, batches.len().div_ceil(world) as u64, &format!("fit {}", config.estimator.name()));
    let mut acc = Accumulator::<Inner<B>>::new(config.estimator, infos.clone());
    for (i, batch) in batches.iter().enumerate() {
        if i % world == rank {
            capture_batch(model, batch, config.fisher, &mut acc);
            progress.inc(1);
        } else if let FisherType::Mc { samples } = config.fisher {
            // Keep the generator where one device would have it after this batch.
            let [b, t] = batch.input_ids.dims();
            for _ in 0..samples.max(1) {
                let _ = Tensor::<Inner<B>, 3>::random([b, t, model.config.vocab_size], Distribution::Uniform(1e-20, 1.0), &device);
            }
        }
    }
    progress.finish();

    // This peer's curvature, weighted by its share of the tokens (zeros without any).
    let local_tokens = acc.tokens();
    let local: Vec<(String, Tensor<Inner<B>, 2>)> = if local_tokens > 0 {
        let share = local_tokens as f64 / tokens as f64;
        acc.finish().tensors().into_iter().map(|(n, t)| (n, t.mul_scalar(share))).collect()
    } else {
        Curvature::<Inner<B>>::from_tensors(config.estimator, &infos, |_, shape| Ok(Tensor::zeros(shape, &device)))?.tensors()
    };
    let shapes: Vec<(String, [usize; 2])> = local.iter().map(|(n, t)| (n.clone(), t.dims())).collect();
    let flat = Tensor::cat(local.into_iter().map(|(_, t)| t.reshape([-1])).collect(), 0);
    let reduced = peer.all_reduce_sum(flat)?;
    let mut offset = 0;
    let mut gathered: HashMap<String, Tensor<Inner<B>, 2>> = HashMap::new();
    for (name, [r, c]) in shapes {
        gathered.insert(name, reduced.clone().slice(offset..offset + r * c).reshape([r, c]));
        offset += r * c;
    }
    let curvature = Curvature::from_tensors(config.estimator, &infos, |name, _| {
        gathered.get(name).cloned().ok_or_else(|| Error::Numerical(format!("the gathered curvature misses `{name}`")))
    })?;

    // Compressed after the reduction (the sum of compressed factors is not compressed).
    let meta = fit_meta(lora, sources, config, tokens);
    let curvature = stored_form(curvature, &meta)?;

    let inner_model = model.valid();
    let inner = LaplacePrior {
        anchors: LaplacePrior::isotropic(&inner_model, config.prior_precision).anchors,
        curvature: Some(curvature),
        prior_precision: config.prior_precision,
        meta: Some(meta),
    };
    let report = FitReport { tokens, batches: batches.len(), seconds: start.elapsed().as_secs_f64(), notes };
    Ok((LaplacePrior::from_inner(inner), report))
}

/// Fits `lalora`'s prior data-parallel over `devices` (this process's local peers, one thread
/// each) and the cluster's other nodes, and keeps it (as [`crate::LaLoRA::fit_prior`] does).
pub fn fit_parallel<B: KernelAutodiffBackend>(
    cluster: &std::sync::Arc<super::Cluster>,
    devices: &[B::Device],
    lalora: &mut crate::LaLoRA<B>,
    sources: &[SourceData],
    config: &LaplaceConfig,
    progress: bool,
) -> Result<FitReport> {
    use burn::module::Module;
    if devices.len() != cluster.config().local_peers {
        return Err(Error::arg("devices", format!("{} devices for {} local peers", devices.len(), cluster.config().local_peers)));
    }
    config.validate()?;
    let home = lalora.model.embed_tokens.device();
    let (model, lora) = (&lalora.model, &lalora.lora);
    let results: Vec<super::PeerOutcome<(LaplacePrior<B>, FitReport)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let (model, device) = (model.clone().fork(device), device.clone());
                scope.spawn(move || -> super::PeerOutcome<(LaplacePrior<B>, FitReport)> {
                    let mut peer = cluster.peer::<Inner<B>>(i, device)?;
                    let out = fit_peer(&mut peer, &model, lora, sources, config, progress)?;
                    peer.finish()?;
                    Ok((i == 0).then_some(out))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Numerical("a data-parallel peer panicked".into())))).collect()
    });
    let (prior, report) = super::first_result(results)?;
    lalora.prior = Some(prior.to_device(&home));
    Ok(report)
}
