//! Rotary position embedding, rotate-half convention (HF `LlamaRotaryEmbedding`), with linear
//! and Llama 3 frequency scaling.
//!
//! `q' = q * cos + rotate_half(q) * sin`, `rotate_half([x1, x2]) = [-x2, x1]` where x1 and x2
//! are the two halves of the head dimension; frequency i is shared by dims i and i + d/2. (burn's
//! own RoPE pairs adjacent dims instead, which would need permuted q/k rows.)

use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::config::{LlamaConfig, RopeScaling};
use crate::KernelBackend;

/// Inverse frequencies `theta^(-2i/d)` for i < d/2, after scaling, in f64.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match config.rope_scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            // transformers' `_compute_llama3_parameters`: long wavelengths are divided by
            // `factor`, short ones kept, and the band between is interpolated smoothly.
            let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables for a run of positions, `[1, len, head_dim / 2]` (both halves of the head
/// dimension share a frequency), applied by the backend's fused RoPE kernel
/// ([`KernelBackend::rope`]).
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `[1, len, head_dim / 2]`
    pub cos: Tensor<B, 3>,
    /// `[1, len, head_dim / 2]`
    pub sin: Tensor<B, 3>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start .. start + len`. Angles are computed in f64 on the host and
    /// rounded once to f32.
    pub fn new(inv_freq: &[f64], start: usize, len: usize, device: &B::Device) -> Self {
        let half = inv_freq.len();
        let angles = (start..start + len).flat_map(|pos| inv_freq.iter().map(move |f| pos as f64 * f));
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.map(|a| (a.cos() as f32, a.sin() as f32)).unzip();
        let shape = [1, len, half];
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }
}

impl<B: KernelBackend> RopeTables<B> {
    /// Rotates `x`, shaped `[batch, seq, heads, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        B::rope(x, self.cos.clone(), self.sin.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scaling: RopeScaling) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: scaling,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = inverse_frequencies(&config(RopeScaling::Default));
        let scaled = inverse_frequencies(&config(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }));
        // Highest frequency (wavelength 2*pi) is untouched; the lowest is divided by 8.
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
        // Scaling never raises a frequency.
        assert!(plain.iter().zip(&scaled).all(|(p, s)| s <= p));
    }
}
