//! lalora: LoRA fine-tuning of Llama models without forgetting.
//!
//! Implements LaLoRA (Sliwa, Schneider, Hennig, Hernández-Lobato, "Mitigating Forgetting in
//! Low Rank Adaptation", arXiv 2512.17720) on burn: a Laplace approximation over the LoRA
//! weights, fitted on a little source data, becomes a quadratic penalty while training on the
//! target data. The library is generic over `B: Backend`; pick a backend with the
//! `lalora-backends` crate (cargo features `flex`, `ndarray`, `wgpu`, `cuda`).

#![warn(missing_docs)]

pub mod curvature;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod lalora;
pub mod laplace;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod plot;
pub mod pretrain;
pub mod progress;
pub mod sweep;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use lalora_backends::{AttentionMask, KernelAutodiffBackend, KernelBackend};
pub use lalora::LaLoRA;
pub use llama::{Llama, LlamaConfig};
pub use lora::{LoraConfig, LoraInit, LoraLinear};
pub use tokenizer::Tokenizer;

#[cfg(test)]
pub(crate) mod test_support {
    //! The backend unit tests run on: the selected one from `lalora-backends`.
    pub type TestBackend = lalora_backends::Backend;
}
