//! How much memory a curvature takes, computed from the configs alone (no weights needed).

use serde::Serialize;

use super::Estimator;
use crate::llama::LlamaConfig;
use crate::lora::LoraConfig;

/// f32 memory of one estimator's curvature for a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvatureMemory {
    /// Estimator name.
    pub estimator: &'static str,
    /// Number of f32 values as stored in `curvature.safetensors` (every adapter its own X_A).
    pub stored_values: u64,
    /// Number of f32 values when q/k/v and gate/up share one X_A in memory.
    pub shared_values: u64,
    /// Trainable LoRA parameters, for scale.
    pub lora_params: u64,
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
}

/// `(name, d_out, d_in)` of the seven projections of one layer.
fn projections(c: &LlamaConfig) -> [(&'static str, u64, u64); 7] {
    let (hidden, inter) = (c.hidden_size as u64, c.intermediate_size as u64);
    let q = (c.num_attention_heads * c.head_dim) as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    [
        ("q_proj", q, hidden),
        ("k_proj", kv, hidden),
        ("v_proj", kv, hidden),
        ("o_proj", hidden, q),
        ("gate_proj", inter, hidden),
        ("up_proj", inter, hidden),
        ("down_proj", hidden, inter),
    ]
}

/// Memory of `estimator` for `config` with adapters as `lora` says.
pub fn curvature_memory(config: &LlamaConfig, lora: &LoraConfig, estimator: Estimator) -> CurvatureMemory {
    let r = lora.rank as u64;
    let (mut stored, mut shared, mut params) = (0u64, 0u64, 0u64);
    let targets: Vec<_> = projections(config).into_iter().filter(|(n, ..)| lora.wants(n)).collect();
    for &(name, d_out, d_in) in &targets {
        params += r * (d_in + d_out);
        let values = match estimator {
            Estimator::Diag => r * (d_in + d_out),
            Estimator::Kfac => d_in * d_in + 2 * r * r + d_out * d_out,
            // the cross factors: X_AB is [d_in, r], G_AB is [r, d_out]
            Estimator::TriKfac => d_in * d_in + 2 * r * r + d_out * d_out + r * (d_in + d_out),
        };
        stored += values;
        // X_A is shared by the targets that read the same input: count it once per group.
        let first_of_group = match name {
            "k_proj" => !lora.wants("q_proj"),
            "v_proj" => !lora.wants("q_proj") && !lora.wants("k_proj"),
            "up_proj" => !lora.wants("gate_proj"),
            _ => true,
        };
        shared += if estimator != Estimator::Diag && !first_of_group { values - d_in * d_in } else { values };
    }
    let layers = config.num_hidden_layers as u64;
    CurvatureMemory { estimator: estimator.name(), stored_values: stored * layers, shared_values: shared * layers, lora_params: params * layers }
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
        let lora = LoraConfig { rank: 2, targets: vec!["q_proj".into(), "v_proj".into()], ..Default::default() };
        let m = curvature_memory(&config, &lora, Estimator::Kfac);
        // q: 8x8 in, 8x8 out; v: 8x8 in, 4x4 out; plus 2 r^2 each
        assert_eq!(m.stored_values, 2 * ((64 + 8 + 64) + (64 + 8 + 16)));
        assert_eq!(m.shared_values, m.stored_values - 2 * 64);
        assert_eq!(m.lora_params, 2 * (2 * (8 + 8) + 2 * (8 + 4)));
    }
}
