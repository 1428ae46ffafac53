//! lalora: LoRA fine-tuning of Llama models without forgetting.
//!
//! Implements LaLoRA (Sliwa, Schneider, Hennig, Hernández-Lobato, "Mitigating Forgetting in
//! Low Rank Adaptation", arXiv 2512.17720) on burn: a Laplace approximation over the LoRA
//! weights, fitted on a little source data, becomes a quadratic penalty while training on the
//! target data. The library is generic over `B: Backend`; pick a backend with the
//! `lalora-backends` crate (cargo features `flex`, `ndarray`, `wgpu`, `cuda`).

#![deny(missing_docs)]

pub mod bench;
pub mod chat;
pub mod continual;
pub mod curvature;
pub mod data;
#[cfg(feature = "distributed")]
pub mod distributed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod lalora;
pub mod laplace;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod posterior;
mod prior_check;
pub mod progress;
pub mod tokenizer;
pub mod train;

// The command line's own workflows: the bundled tasks, pretraining of the bundled model,
// sweeps, plots, run config files and the demo.
#[cfg(feature = "cli")]
pub mod curves;
#[cfg(feature = "cli")]
pub mod demo;
#[cfg(feature = "cli")]
pub mod plot;
#[cfg(feature = "cli")]
pub mod pretrain;
#[cfg(feature = "cli")]
pub mod run_config;
#[cfg(feature = "cli")]
pub mod seeds;
#[cfg(feature = "cli")]
pub mod sweep;
#[cfg(feature = "cli")]
pub mod tasks;

pub use error::{Error, Result};
pub use lalora::{AdapterSource, LaLoRA};
pub use lalora_backends::{frozen_matmul, AttentionMask, KernelAutodiffBackend, KernelBackend};
pub use laplace::{LaplaceConfig, LaplacePrior, SourceData};
pub use llama::{DtypeChoice, Llama, LlamaConfig, Projection, WeightDtype};
pub use lora::{LoraConfig, LoraInit, LoraLinear};
pub use tokenizer::Tokenizer;
pub use train::{Penalty, TrainConfig, TrainControl, TrainData};

// The README's Rust blocks are compiled as doctests, so its library example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
pub(crate) mod test_support {
    //! The backend unit tests run on: the selected one from `lalora-backends`.
    pub type TestBackend = lalora_backends::Backend;
}
