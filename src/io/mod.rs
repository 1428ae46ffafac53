//! Files in and out: safetensors checkpoints, PEFT adapters, JSON, atomic writes.

pub mod files;
pub mod hash;
pub mod hub;
pub mod lock;
pub mod merge;
pub mod peft;
pub mod safetensors;

pub use self::safetensors::{save_tensors, TensorFiles};
pub use files::{read_json, write_atomic, write_json_atomic};
