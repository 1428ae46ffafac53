//! Text generation: greedy decoding or temperature/top-p sampling, with or without KV cache,
//! one prompt or a batch.

mod batch;
mod prepare;

use burn::tensor::{Int, Tensor, TensorData};
use rand::{RngExt, SeedableRng};

pub use batch::generate_batch;
pub use prepare::decoding_model;

use crate::llama::{ForwardOptions, Llama};
use crate::KernelBackend;

/// How to pick the next token.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// 0 means greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability. 1 = all.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Reuse keys and values of earlier positions (one forward over one token per step).
    pub use_cache: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { max_new_tokens: 32, temperature: 0.0, top_p: 1.0, seed: 0, use_cache: true }
    }
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after any token in `stop`.
/// Returns the new tokens only (a stop token, if reached, included).
///
/// With the cache this is [`generate_batch`] on one prompt; without it, every step runs the
/// whole sequence again (slow; a check on the cache).
///
/// # Panics
/// If `prompt` is empty.
pub fn generate<B: KernelBackend>(model: &Llama<B>, prompt: &[u32], config: &SamplingConfig, stop: &[u32]) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generation needs a non-empty prompt");
    if config.use_cache {
        return generate_batch(model, &[prompt], config, stop).pop().expect("one row");
    }
    let device = model.embed_tokens.device();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    let mut generated = Vec::new();
    for _ in 0..config.max_new_tokens {
        let input: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let len = input.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, len]), &device);
        let hidden = model.hidden_states(ids, None, ForwardOptions::default());
        let last = hidden.narrow(1, len - 1, 1); // [1, 1, hidden]
        let logits: Vec<f32> = model.logits(last).into_data().convert::<f32>().to_vec().expect("f32 data");
        let next = pick(&logits, config, &mut rng);
        tokens.push(next);
        generated.push(next);
        if stop.contains(&next) {
            break;
        }
    }
    generated
}

fn pick(logits: &[f32], config: &SamplingConfig, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
    if config.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &v)| (i, ((v as f64 - max) / config.temperature).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    let mut mass = 0.0;
    let keep = probs
        .iter()
        .position(|p| {
            mass += p.1;
            mass >= config.top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let kept = &probs[..keep];
    let kept_mass: f64 = kept.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * kept_mass;
    for &(i, p) in kept {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    kept[kept.len() - 1].0 as u32
}
