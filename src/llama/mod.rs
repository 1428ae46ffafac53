//! Llama with LoRA-capable projections: HF `config.json`, RMSNorm, rotate-half RoPE (with
//! llama3 scaling), grouped-query attention, SwiGLU MLP and a KV cache.
//!
//! Reference: HF transformers `models/llama/modeling_llama.py`; tests compare logits with it.

mod cache;
mod config;
mod dtype;
mod load;
mod model;
mod projection;
mod rope;

pub use cache::{KvCache, LayerCache};
pub use config::{HfLlamaConfig, LlamaConfig, RopeScaling};
pub use dtype::{checkpoint_dtype, DtypeChoice, WeightDtype};
pub use load::unfreeze_all;
pub use model::{Attention, AttentionTables, DecoderLayer, ForwardOptions, Llama, Mlp, RmsNorm};
pub use projection::Projection;
pub use rope::{inverse_frequencies, RopeCache, RopeTables};
