//! Hugging Face `config.json` in, a resolved [`LlamaConfig`] out.
//!
//! [`HfLlamaConfig`] mirrors the file (every optional key an `Option`, both the transformers-4
//! keys `rope_theta` + `rope_scaling` and transformers-5's `rope_parameters`). [`LlamaConfig`]
//! has every default resolved once, with an explicit `head_dim`, and is what the model reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How RoPE frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear {
        /// The scaling factor.
        factor: f64,
    },
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 {
        /// Divisor for low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// A resolved Llama configuration: no structural options, `head_dim` explicit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width (need not equal `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Maximum context length.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: HfLlamaConfig = crate::io::read_json(path)?;
        raw.resolve(path)
    }

    /// Writes the configuration as an HF `config.json` (transformers-4 keys, which every
    /// transformers version reads).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => serde_json::Value::Null,
            other => serde_json::to_value(other).expect("rope scaling serialises"),
        };
        let eos: serde_json::Value = match self.eos_token_ids.as_slice() {
            [] => serde_json::Value::Null,
            [one] => (*one).into(),
            many => many.to_vec().into(),
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        })
    }

    /// Number of query heads that share one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// `eos_token_id` is a number in most configs and a list in Llama 3 instruct configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// `config.json` as Hugging Face writes it (Llama family), before defaults are resolved.
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    /// transformers <= 4: RoPE base at the top level.
    rope_theta: Option<f64>,
    /// transformers <= 4: scaling dictionary (or null).
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5: base and scaling in one dictionary.
    rope_parameters: Option<serde_json::Value>,
}

impl HfLlamaConfig {
    /// Resolves defaults and validates; `path` is only used in error messages.
    pub fn resolve(self, path: &Path) -> Result<LlamaConfig> {
        let need =
            |value: Option<usize>, field: &str| value.filter(|v| *v > 0).ok_or_else(|| Error::config(path, field, "missing or zero"));
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                path,
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => return Err(Error::config(path, "head_dim", "missing and hidden_size is not a multiple of the heads")),
        };
        if head_dim % 2 != 0 {
            return Err(Error::config(path, "head_dim", format!("{head_dim} is odd; RoPE needs an even width")));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::config(path, "hidden_act", format!("`{act}` is not supported (Llama uses silu)")));
            }
        }
        for (flag, name) in [(self.attention_bias, "attention_bias"), (self.mlp_bias, "mlp_bias")] {
            if flag == Some(true) {
                return Err(Error::config(path, name, "biases in projections are not supported"));
            }
        }
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let eos_token_ids = match self.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        Ok(LlamaConfig {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
        })
    }

    /// RoPE base and scaling from either key style. transformers 5 nests both in
    /// `rope_parameters`; older files have `rope_theta` plus an optional `rope_scaling`.
    fn rope(&self, path: &Path) -> Result<(f64, RopeScaling)> {
        let (field, dict) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", Some(p)),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        let theta_in_dict = dict.and_then(|d| d.get("rope_theta")).and_then(|v| v.as_f64());
        let theta = theta_in_dict.or(self.rope_theta).unwrap_or(10_000.0);
        let Some(dict) = dict else { return Ok((theta, RopeScaling::Default)) };
        let kind = dict.get("rope_type").or_else(|| dict.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        let number = |key: &str| {
            dict.get(key).and_then(|v| v.as_f64()).ok_or_else(|| Error::config(path, format!("{field}.{key}"), "missing or not a number"))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: number("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            },
            other => {
                return Err(Error::config(
                    path,
                    format!("{field}.rope_type"),
                    format!("`{other}` is not supported (default, linear, llama3 are)"),
                ))
            }
        };
        Ok((theta, scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<LlamaConfig> {
        let raw: HfLlamaConfig = serde_json::from_str(json).unwrap();
        raw.resolve(Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn old_and_new_rope_keys_resolve_alike() {
        let old = resolve(&format!(
            r#"{{{BASE}, "rope_theta": 500000.0, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        let new = resolve(&format!(
            r#"{{{BASE}, "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope_theta, 500000.0);
        assert!(matches!(old.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn defaults_fill_kv_heads_and_head_dim() {
        let c = resolve(&format!("{{{BASE}}}")).unwrap();
        assert_eq!((c.num_key_value_heads, c.head_dim, c.rope_theta), (2, 4, 10_000.0));
        assert_eq!(c.rope_scaling, RopeScaling::Default);
    }

    #[test]
    fn eos_may_be_a_list() {
        let c = resolve(&format!(r#"{{{BASE}, "eos_token_id": [3, 4]}}"#)).unwrap();
        assert_eq!(c.eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = resolve(&format!(r#"{{{BASE}, "num_key_value_heads": 3}}"#)).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = resolve(r#"{"vocab_size": 10}"#).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e = resolve(&format!(r#"{{{BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2.0}}}}"#)).unwrap_err();
        assert!(e.to_string().contains("rope_scaling.rope_type"), "{e}");
    }
}
