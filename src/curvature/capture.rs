//! Running a Llama with probes to feed an [`Accumulator`].
//!
//! One forward pass with [`AdapterTap`]s gives x and z of every adapter; each backward pass of
//! the summed per-token loss under some labels gives g and h through the probes. The LM head's
//! gradient is applied in closed form (see [`crate::loss`]), so labels can be drawn from the
//! model's own softmax without a second pass through the head.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::accumulate::{Accumulator, AdapterInfo, AdapterStats};
use crate::data::Batch;
use crate::llama::{ForwardOptions, Llama};
use crate::lora::AdapterTap;
use crate::loss::{head_forward, hidden_grad, HeadOutput};
use crate::KernelAutodiffBackend;

/// Which labels the Fisher is taken under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum FisherType {
    /// Labels drawn from the model's softmax, `samples` draws per token, averaged (the default,
    /// an unbiased estimate of the GGN).
    Mc {
        /// Draws per token.
        samples: usize,
    },
    /// The data's own next tokens (the "empirical Fisher").
    Empirical,
    /// Every label, weighted by its probability: the exact Fisher of the categorical output,
    /// one backward pass per vocabulary entry.
    ///
    /// # Limitations
    /// For tests and tiny vocabularies. Per-token terms are exact; when a sequence has several
    /// loss-carrying tokens, the enumerated passes also mix tokens through attention, so it is
    /// exact only with one loss-carrying token per sequence.
    Exhaustive,
}

impl FisherType {
    /// Name for reports and files.
    pub fn name(&self) -> &'static str {
        match self {
            FisherType::Mc { .. } => "mc",
            FisherType::Empirical => "empirical",
            FisherType::Exhaustive => "exhaustive",
        }
    }
}

/// What [`Accumulator::new`] needs to know about a model's adapters.
pub fn adapter_infos<B: Backend>(model: &Llama<B>) -> Vec<AdapterInfo> {
    model
        .adapters()
        .iter()
        .map(|a| AdapterInfo {
            path: a.path(),
            dims: [a.lora_b.dims()[0], a.lora_a.dims()[1]],
            rank: a.rank(),
            scale: a.scale,
            input: a.projection.input_group().module_path(a.layer),
        })
        .collect()
}

/// Reads `(x, z, g, h)` of every tap after `backward`: g and h are the probes' gradients.
///
/// # Panics
/// If a probe is not on the path of the loss that produced `grads`.
pub fn tap_stats<B: AutodiffBackend>(taps: &[AdapterTap<B>], grads: &B::Gradients) -> Vec<AdapterStats<B::InnerBackend>> {
    taps.iter()
        .map(|tap| AdapterStats {
            x: tap.x.clone().inner(),
            z: tap.z.clone().inner(),
            g: tap.probe_y.grad(grads).expect("every output probe is on the loss path"),
            h: tap.probe_z.grad(grads).expect("every z probe is on the loss path"),
        })
        .collect()
}

/// Labels and per-token loss weights of one backward pass.
struct Pass<B: Backend> {
    labels: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
    pass_weight: f64,
}

/// Captures one batch into `acc`: one forward pass per backward pass (burn's graph is consumed
/// by `backward`), inputs recorded once. Dropout is off.
pub fn capture_batch<B: KernelAutodiffBackend>(
    model: &Llama<B>,
    batch: &Batch<B>,
    fisher: FisherType,
    acc: &mut Accumulator<B::InnerBackend>,
) {
    let mask = batch.loss_mask.clone().inner();
    let head = model.head_weight().inner();
    let passes = match fisher {
        FisherType::Mc { samples } => samples.max(1),
        FisherType::Empirical => 1,
        FisherType::Exhaustive => model.config.vocab_size,
    };
    for pass_index in 0..passes {
        let mut taps: Vec<AdapterTap<B>> = Vec::new();
        let options = ForwardOptions { taps: Some(&mut taps), ..Default::default() };
        let hidden = model.hidden_states(batch.input_ids.clone(), Some(batch.key_mask.clone()), options);
        let out = head_forward(head.clone(), hidden.clone().inner());
        let pass = labels_for(fisher, pass_index, passes, &out, batch, &mask);
        let grad = hidden_grad(head.clone(), out.logit_grad(pass.labels, pass.weights));
        let grads = (hidden * Tensor::from_inner(grad)).sum().backward();
        let stats = tap_stats(&taps, &grads);
        if pass_index == 0 {
            acc.observe_inputs(&stats, &mask, batch.num_targets);
        }
        acc.observe_gradients(&stats, &mask, pass.pass_weight);
    }
}

fn labels_for<B: AutodiffBackend>(
    fisher: FisherType,
    pass_index: usize,
    passes: usize,
    out: &HeadOutput<B::InnerBackend>,
    batch: &Batch<B>,
    mask: &Tensor<B::InnerBackend, 2>,
) -> Pass<B::InnerBackend> {
    match fisher {
        FisherType::Empirical => Pass { labels: batch.targets.clone().inner(), weights: mask.clone(), pass_weight: 1.0 },
        FisherType::Mc { .. } => Pass { labels: sample_labels(&out.logits), weights: mask.clone(), pass_weight: 1.0 / passes as f64 },
        FisherType::Exhaustive => {
            let [b, t, _] = out.probs.dims();
            let device = out.probs.device();
            let labels = Tensor::<B::InnerBackend, 2, Int>::full([b, t], pass_index as i64, &device);
            // g scales with the weight, g g^T with its square: sqrt(p) weights give p g g^T.
            let p: Tensor<B::InnerBackend, 2> = out.probs.clone().narrow(2, pass_index, 1).squeeze_dim(2);
            Pass { labels, weights: p.sqrt() * mask.clone(), pass_weight: 1.0 }
        }
    }
}

/// One label per position drawn from `softmax(logits)` by the Gumbel-max trick, on the device,
/// with the backend's seeded generator.
pub fn sample_labels<B: Backend>(logits: &Tensor<B, 3>) -> Tensor<B, 2, Int> {
    let uniform = Tensor::<B, 3>::random(logits.shape(), Distribution::Uniform(1e-20, 1.0), &logits.device());
    let gumbel = uniform.log().neg().log().neg();
    (logits.clone() + gumbel).argmax(2).squeeze_dim(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = crate::test_support::TestBackend;

    /// The MC Fisher needs every position's label drawn independently from its own softmax: a
    /// draw that shared noise across positions (or rows) would still have the right marginals
    /// but correlated labels, and the estimate would lose its `1/n_tokens` variance.
    #[test]
    fn sampled_labels_follow_the_softmax_independently_per_position() {
        const ROWS: usize = 20_000;
        const POSITIONS: usize = 3;
        let row_logits = [0.0f32, 1.0, -0.5];
        let norm: f64 = row_logits.iter().map(|&l| (l as f64).exp()).sum();
        let p: Vec<f64> = row_logits.iter().map(|&l| (l as f64).exp() / norm).collect();
        let v = p.len();
        // Equal logits at every position, so shared noise would make the labels equal.
        let data: Vec<f32> = (0..ROWS * POSITIONS).flat_map(|_| row_logits).collect();
        let device = Default::default();
        B::seed(&device, 11);
        let logits = Tensor::<B, 3>::from_data(TensorData::new(data, [ROWS, POSITIONS, v]), &device);
        let labels: Vec<i64> = sample_labels(&logits).into_data().convert::<i64>().to_vec().unwrap();
        let label = |row: usize, pos: usize| labels[row * POSITIONS + pos] as usize;

        for pos in 0..POSITIONS {
            for (class, &pc) in p.iter().enumerate() {
                let freq = (0..ROWS).filter(|&r| label(r, pos) == class).count() as f64 / ROWS as f64;
                let se = (pc * (1.0 - pc) / ROWS as f64).sqrt();
                assert!((freq - pc).abs() < 5.0 * se, "position {pos}, class {class}: frequency {freq:.4}, softmax {pc:.4}");
            }
        }
        // Pearson's chi-square of each pair of positions against the product of the softmaxes
        // (8 degrees of freedom: 40 is a p-value of about 1e-5; shared noise gives thousands).
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let mut chi2 = 0.0;
            for i in 0..v {
                for j in 0..v {
                    let observed = (0..ROWS).filter(|&r| label(r, a) == i && label(r, b) == j).count() as f64;
                    let expected = ROWS as f64 * p[i] * p[j];
                    chi2 += (observed - expected).powi(2) / expected;
                }
            }
            assert!(chi2 < 40.0, "positions {a} and {b} are not independent: chi-square {chi2:.1}");
        }
    }
}
