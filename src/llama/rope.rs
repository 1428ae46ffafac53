//! Rotary position embedding, rotate-half convention (HF `LlamaRotaryEmbedding`), with linear
//! and Llama 3 frequency scaling.
//!
//! `q' = q * cos + rotate_half(q) * sin`, `rotate_half([x1, x2]) = [-x2, x1]` where x1 and x2
//! are the two halves of the head dimension; frequency i is shared by dims i and i + d/2. (burn's
//! own RoPE pairs adjacent dims instead, which would need permuted q/k rows.)

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::config::{LlamaConfig, RopeScaling};
use crate::KernelBackend;

/// Inverse frequencies `theta^(-2i/d)` for i < d/2, after scaling, in f64.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
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
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
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
    /// `[batch or 1, len, head_dim / 2]`
    pub cos: Tensor<B, 3>,
    /// `[batch or 1, len, head_dim / 2]`
    pub sin: Tensor<B, 3>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start .. start + len`. Angles are computed in f64 on the host and
    /// rounded once to f32.
    pub fn new(inv_freq: &[f64], start: usize, len: usize, device: &B::Device) -> Self {
        let (cos, sin) = cos_sin_rows(inv_freq, start..start + len);
        let shape = [1, len, inv_freq.len()];
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

/// cos and sin of `positions` x the frequencies, row-major (`[positions, head_dim / 2]`).
/// Angles in f64, rounded once to f32.
fn cos_sin_rows(inv_freq: &[f64], positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let angles = positions.flat_map(|pos| inv_freq.iter().map(move |f| pos as f64 * f));
    angles.map(|a| (a.cos() as f32, a.sin() as f32)).unzip()
}

/// cos and sin of every position below a bound, kept on the device: the [`RopeTables`] of any
/// set of positions (one per row and step when decoding a left-padded batch) are then two row
/// gathers instead of a rebuild on the host and an upload.
#[derive(Debug, Clone)]
pub struct RopeCache<B: Backend> {
    /// `[positions, head_dim / 2]`
    cos: Tensor<B, 2>,
    /// `[positions, head_dim / 2]`
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeCache<B> {
    /// Tables for positions `0 .. positions`, with the same values as [`RopeTables::new`].
    pub fn new(inv_freq: &[f64], positions: usize, device: &B::Device) -> Self {
        let (cos, sin) = cos_sin_rows(inv_freq, 0..positions);
        let shape = [positions, inv_freq.len()];
        RopeCache {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// The tables of `positions`, one per (row, step) in row-major order.
    ///
    /// # Shapes
    /// - positions: `[batch * seq]`, each below the bound given to [`Self::new`]
    /// - output tables: `[batch, seq, head_dim / 2]`
    pub fn tables(&self, positions: Tensor<B, 1, Int>, batch: usize, seq: usize) -> RopeTables<B> {
        let [_, half] = self.cos.dims();
        RopeTables {
            cos: self.cos.clone().select(0, positions.clone()).reshape([batch, seq, half]),
            sin: self.sin.clone().select(0, positions).reshape([batch, seq, half]),
        }
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

    #[test]
    fn gathered_tables_equal_the_tables_built_for_a_run_of_positions() {
        use crate::test_support::TestBackend;
        let inv_freq = inverse_frequencies(&config(RopeScaling::Default));
        let device = Default::default();
        let cache = RopeCache::<TestBackend>::new(&inv_freq, 12, &device);
        // Two rows, three steps each: row 0 at positions 4..7, row 1 at 9..12.
        let positions = Tensor::from_data(TensorData::new(vec![4i64, 5, 6, 9, 10, 11], [6]), &device);
        let gathered = cache.tables(positions, 2, 3);
        for (row, start) in [(0, 4), (1, 9)] {
            let built = RopeTables::<TestBackend>::new(&inv_freq, start, 3, &device);
            for (ours, theirs) in [(&gathered.cos, &built.cos), (&gathered.sin, &built.sin)] {
                ours.clone().narrow(0, row, 1).into_data().assert_eq(&theirs.clone().into_data(), true);
            }
        }
    }
}
