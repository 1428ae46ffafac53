//! How much memory a curvature takes, computed from the configs alone (no weights needed).

use serde::Serialize;

use super::low_rank::stored_values;
use super::sketch::sketch_width;
use super::Estimator;
use crate::llama::{LlamaConfig, Projection};
use crate::lora::LoraConfig;

/// f32 memory of one estimator's curvature for a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvatureMemory {
    /// Estimator name.
    pub estimator: &'static str,
    /// Kronecker factors larger than this are kept low-rank (absent: every factor full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor_rank: Option<usize>,
    /// Number of f32 values as stored in `curvature.safetensors` (every adapter its own X_A).
    pub stored_values: u64,
    /// Number of f32 values when q/k/v and gate/up share one X_A in memory.
    pub shared_values: u64,
    /// Trainable LoRA parameters, for scale.
    pub lora_params: u64,
    /// With a factor rank: f32 values a `--factor-sketch` fit holds while it sums (each
    /// factor larger than k as its `[d, 2k + 8]` sketch and diagonal, plus one test matrix per
    /// factor size; [`super::sketch`]). A fit without the sketch holds every factor full, as
    /// [`curvature_memory`] counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sketch_fit_values: Option<u64>,
}

impl CurvatureMemory {
    /// Bytes as stored.
    pub fn stored_bytes(&self) -> u64 {
        4 * self.stored_values
    }
    /// Bytes with shared inputs.
    pub fn shared_bytes(&self) -> u64 {
        4 * self.shared_values
    }
    /// Bytes a `--factor-sketch` fit holds.
    pub fn sketch_fit_bytes(&self) -> Option<u64> {
        self.sketch_fit_values.map(|v| 4 * v)
    }
}

/// Memory of `estimator` for `config` with adapters as `lora` says, every factor full.
pub fn curvature_memory(config: &LlamaConfig, lora: &LoraConfig, estimator: Estimator) -> CurvatureMemory {
    curvature_memory_at(config, lora, estimator, None)
}

/// Memory of `estimator` for `config` with adapters as `lora` says, the kfac / tri-kfac factors
/// larger than `factor_rank` kept as top-k eigenpairs plus a diagonal
/// ([`super::low_rank`]). A diagonal ignores `factor_rank`.
pub fn curvature_memory_at(config: &LlamaConfig, lora: &LoraConfig, estimator: Estimator, factor_rank: Option<usize>) -> CurvatureMemory {
    let factor_rank = if estimator == Estimator::Diag { None } else { factor_rank };
    let r = lora.rank as u64;
    let (mut stored, mut shared, mut params, mut sketch_fit) = (0u64, 0u64, 0u64, 0u64);
    // Sizes of the sketched factors: each has one test matrix.
    let mut sketched_sizes = std::collections::BTreeSet::new();
    let mut sketch_values = |d: u64, k: usize| {
        if d > k as u64 {
            sketched_sizes.insert(d);
            d * (sketch_width(d as usize, k) as u64 + 1)
        } else {
            d * d
        }
    };
    for projection in Projection::ALL.into_iter().filter(|&p| lora.wants(p)) {
        let [d_out, d_in] = projection.dims(config).map(|d| d as u64);
        params += r * (d_in + d_out);
        // The dense X_A and G_B replaced by what a compressed factor stores.
        let x_a = stored_values(d_in, factor_rank);
        let mut values = estimator.values_per_adapter(d_out, d_in, r);
        if estimator != Estimator::Diag {
            values = values - d_in * d_in - d_out * d_out + x_a + stored_values(d_out, factor_rank);
        }
        stored += values;
        if let Some(k) = factor_rank {
            let full = estimator.values_per_adapter(d_out, d_in, r);
            sketch_fit += full - d_in * d_in - d_out * d_out + sketch_values(d_in, k) + sketch_values(d_out, k);
        }
        // X_A is shared by the targets that read the same input: count it once per group.
        let group = projection.input_group();
        let first_of_group = !Projection::ALL.into_iter().any(|t| t < projection && t.input_group() == group && lora.wants(t));
        shared += if estimator != Estimator::Diag && !first_of_group { values - x_a } else { values };
    }
    let layers = config.num_hidden_layers as u64;
    let test_matrices: u64 = factor_rank.map_or(0, |k| sketched_sizes.iter().map(|&d| d * sketch_width(d as usize, k) as u64).sum());
    CurvatureMemory {
        estimator: estimator.name(),
        factor_rank,
        stored_values: stored * layers,
        shared_values: shared * layers,
        lora_params: params * layers,
        sketch_fit_values: factor_rank.map(|_| sketch_fit * layers + test_matrices),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfac_counts_factor_sizes() {
        let config: LlamaConfig = crate::llama::HfLlamaConfig::resolve(
            serde_json::from_str(
                r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "num_key_value_heads": 1}"#,
            )
            .unwrap(),
            std::path::Path::new("c.json"),
        )
        .unwrap();
        let lora = LoraConfig { rank: 2, targets: vec![Projection::Q, Projection::V], ..Default::default() };
        let m = curvature_memory(&config, &lora, Estimator::Kfac);
        // q: 8x8 in, 8x8 out; v: 8x8 in, 4x4 out; plus 2 r^2 each
        assert_eq!(m.stored_values, 2 * ((64 + 8 + 64) + (64 + 8 + 16)));
        assert_eq!(m.shared_values, m.stored_values - 2 * 64);
        assert_eq!(m.lora_params, 2 * (2 * (8 + 8) + 2 * (8 + 4)));
    }
}
