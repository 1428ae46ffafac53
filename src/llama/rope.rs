//! Rotary position embedding, rotate-half convention (HF `LlamaRotaryEmbedding`), with linear
//! and Llama 3 frequency scaling.
//!
//! `q' = q * cos + rotate_half(q) * sin`, `rotate_half([x1, x2]) = [-x2, x1]` where x1 and x2
//! are the two halves of the head dimension; frequency i is shared by dims i and i + d/2. (burn's
//! own RoPE pairs adjacent dims instead, which would need permuted q/k rows.)

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::config::{LlamaConfig, RopeScaling};

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

/// cos and sin tables for a run of positions, materialised at the full `[batch, seq, heads,
/// head_dim]` shape (element-wise ops on equal shapes take the CPU backends' fast path, where
/// broadcasting falls back to strided iteration), plus the fixed matrix that computes
/// `rotate_half` as one small matmul.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `[batch, seq, heads, head_dim]`
    pub cos: Tensor<B, 4>,
    /// `[batch, seq, heads, head_dim]`
    pub sin: Tensor<B, 4>,
    /// `[head_dim, head_dim]` with `x R = rotate_half(x) = [-x2, x1]`.
    pub rotate_half: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start .. start + len`, repeated over `batch` and `heads`. Angles
    /// are computed in f64 on the host and rounded once to f32.
    pub fn new(inv_freq: &[f64], start: usize, len: usize, batch: usize, heads: usize, device: &B::Device) -> Self {
        let (cos, sin) = cos_sin_rows(inv_freq, start..start + len, heads);
        let shape = [batch, len, heads, 2 * inv_freq.len()];
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos.repeat(batch), shape), device),
            sin: Tensor::from_data(TensorData::new(sin.repeat(batch), shape), device),
            rotate_half: rotate_half_matrix(inv_freq.len(), device),
        }
    }

    /// Rotates `x`, shaped `[batch, seq, heads, head_dim]` (contiguous, as projections give it).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq, heads, head_dim] = x.dims();
        let rotated =
            x.clone().reshape([batch * seq * heads, head_dim]).matmul(self.rotate_half.clone()).reshape([batch, seq, heads, head_dim]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// cos and sin of `positions` x `heads` x both halves of the head dimension, row-major
/// (`[positions, heads, head_dim]`). Angles in f64, rounded once to f32.
fn cos_sin_rows(inv_freq: &[f64], positions: std::ops::Range<usize>, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len() * heads * 2 * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for pos in positions {
        let angles: Vec<f64> = inv_freq.iter().map(|f| pos as f64 * f).collect();
        let (c, s): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos() as f32, a.sin() as f32)).unzip();
        // Both halves of the head dimension use the same frequencies.
        for _ in 0..2 * heads {
            cos.extend_from_slice(&c);
            sin.extend_from_slice(&s);
        }
    }
    (cos, sin)
}

/// The `[head_dim, head_dim]` matrix R with `x R = rotate_half(x) = [-x2, x1]`.
fn rotate_half_matrix<B: Backend>(half: usize, device: &B::Device) -> Tensor<B, 2> {
    let head_dim = 2 * half;
    let mut rotate = vec![0f32; head_dim * head_dim];
    for i in 0..half {
        rotate[(i + half) * head_dim + i] = -1.0; // out[i] = -x[i + d/2]
        rotate[i * head_dim + i + half] = 1.0; // out[i + d/2] = x[i]
    }
    Tensor::from_data(TensorData::new(rotate, [head_dim, head_dim]), device)
}

/// cos and sin of every position below a bound, for every head, kept on the device: the
/// [`RopeTables`] of any set of positions (one per row and step when decoding a left-padded
/// batch) are then two row gathers instead of a rebuild on the host and an upload.
#[derive(Debug, Clone)]
pub struct RopeCache<B: Backend> {
    /// `[positions, heads * head_dim]`
    cos: Tensor<B, 2>,
    /// `[positions, heads * head_dim]`
    sin: Tensor<B, 2>,
    rotate_half: Tensor<B, 2>,
    heads: usize,
    head_dim: usize,
}

impl<B: Backend> RopeCache<B> {
    /// Tables for positions `0 .. positions`, with the same values as [`RopeTables::new`].
    pub fn new(inv_freq: &[f64], positions: usize, heads: usize, device: &B::Device) -> Self {
        let head_dim = 2 * inv_freq.len();
        let (cos, sin) = cos_sin_rows(inv_freq, 0..positions, heads);
        let shape = [positions, heads * head_dim];
        RopeCache {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            rotate_half: rotate_half_matrix(inv_freq.len(), device),
            heads,
            head_dim,
        }
    }

    /// The tables of `positions`, one per (row, step) in row-major order.
    ///
    /// # Shapes
    /// - positions: `[batch * seq]`, each below the bound given to [`Self::new`]
    /// - output tables: `[batch, seq, heads, head_dim]`
    pub fn tables(&self, positions: Tensor<B, 1, Int>, batch: usize, seq: usize) -> RopeTables<B> {
        let shape = [batch, seq, self.heads, self.head_dim];
        RopeTables {
            cos: self.cos.clone().select(0, positions.clone()).reshape(shape),
            sin: self.sin.clone().select(0, positions).reshape(shape),
            rotate_half: self.rotate_half.clone(),
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
        let cache = RopeCache::<TestBackend>::new(&inv_freq, 12, 3, &device);
        // Two rows, three steps each: row 0 at positions 4..7, row 1 at 9..12.
        let positions = Tensor::from_data(TensorData::new(vec![4i64, 5, 6, 9, 10, 11], [6]), &device);
        let gathered = cache.tables(positions, 2, 3);
        for (row, start) in [(0, 4), (1, 9)] {
            let built = RopeTables::<TestBackend>::new(&inv_freq, start, 3, 1, 3, &device);
            for (ours, theirs) in [(&gathered.cos, &built.cos), (&gathered.sin, &built.sin)] {
                ours.clone().narrow(0, row, 1).into_data().assert_eq(&theirs.clone().into_data(), true);
            }
        }
        gathered
            .rotate_half
            .into_data()
            .assert_eq(&RopeTables::<TestBackend>::new(&inv_freq, 0, 1, 1, 1, &device).rotate_half.into_data(), true);
    }
}
