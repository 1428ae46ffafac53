//! The seven linear projections of a Llama decoder layer: their HF names, where they sit, their
//! shapes, and which of them read the same input. Written once here, for the model, the LoRA
//! targets, PEFT files, curvature and memory estimates.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;

/// A projection of a decoder layer, named as in HF checkpoints (`q_proj`, ..., `down_proj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Projection {
    /// Attention queries, `[heads * head_dim, hidden]`.
    #[serde(rename = "q_proj")]
    #[cfg_attr(feature = "cli", value(name = "q_proj"))]
    Q,
    /// Attention keys, `[kv_heads * head_dim, hidden]`.
    #[serde(rename = "k_proj")]
    #[cfg_attr(feature = "cli", value(name = "k_proj"))]
    K,
    /// Attention values, `[kv_heads * head_dim, hidden]`.
    #[serde(rename = "v_proj")]
    #[cfg_attr(feature = "cli", value(name = "v_proj"))]
    V,
    /// Attention output, `[hidden, heads * head_dim]`.
    #[serde(rename = "o_proj")]
    #[cfg_attr(feature = "cli", value(name = "o_proj"))]
    O,
    /// MLP gate, `[intermediate, hidden]`.
    #[serde(rename = "gate_proj")]
    #[cfg_attr(feature = "cli", value(name = "gate_proj"))]
    Gate,
    /// MLP up, `[intermediate, hidden]`.
    #[serde(rename = "up_proj")]
    #[cfg_attr(feature = "cli", value(name = "up_proj"))]
    Up,
    /// MLP down, `[hidden, intermediate]`.
    #[serde(rename = "down_proj")]
    #[cfg_attr(feature = "cli", value(name = "down_proj"))]
    Down,
}

impl Projection {
    /// All seven, in forward order.
    pub const ALL: [Projection; 7] =
        [Projection::Q, Projection::K, Projection::V, Projection::O, Projection::Gate, Projection::Up, Projection::Down];

    /// The HF module name: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The block that holds it: `self_attn` or `mlp`.
    pub fn block(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            Projection::Gate | Projection::Up | Projection::Down => "mlp",
        }
    }

    /// HF module path in layer `layer`, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.block(), self.hf_name())
    }

    /// The weight's shape `[d_out, d_in]` (HF layout) for a model.
    pub fn dims(self, c: &LlamaConfig) -> [usize; 2] {
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        match self {
            Projection::Q => [q, c.hidden_size],
            Projection::K | Projection::V => [kv, c.hidden_size],
            Projection::O => [c.hidden_size, q],
            Projection::Gate | Projection::Up => [c.intermediate_size, c.hidden_size],
            Projection::Down => [c.hidden_size, c.intermediate_size],
        }
    }

    /// The first projection that reads the same input tensor: q, k and v read the attention's
    /// input, gate and up the MLP's. Curvature factors of the input (`X_A`) can be shared
    /// within such a group.
    pub fn input_group(self) -> Projection {
        match self {
            Projection::Q | Projection::K | Projection::V => Projection::Q,
            Projection::Gate | Projection::Up => Projection::Gate,
            other => other,
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}

impl FromStr for Projection {
    type Err = String;

    /// Parses an HF name (`q_proj`, ...).
    fn from_str(name: &str) -> Result<Self, String> {
        Projection::ALL.into_iter().find(|p| p.hf_name() == name).ok_or_else(|| {
            let names: Vec<&str> = Projection::ALL.iter().map(|p| p.hf_name()).collect();
            format!("`{name}` is not one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_groups() {
        assert_eq!(Projection::Gate.module_path(3), "model.layers.3.mlp.gate_proj");
        assert_eq!(Projection::O.module_path(0), "model.layers.0.self_attn.o_proj");
        assert_eq!("down_proj".parse::<Projection>(), Ok(Projection::Down));
        assert!("qproj".parse::<Projection>().unwrap_err().contains("q_proj"));
        assert_eq!(Projection::V.input_group(), Projection::Q);
        assert_eq!(Projection::Up.input_group(), Projection::Gate);
        assert_eq!(Projection::Down.input_group(), Projection::Down);
        assert_eq!(serde_json::to_string(&Projection::Up).unwrap(), "\"up_proj\"");
    }
}
