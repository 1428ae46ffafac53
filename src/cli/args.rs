//! Flag groups shared by several commands, and the typed values of enumerated flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lalora::chat::ChatTemplate;
use lalora::curvature::FisherType;
use lalora::data::{FieldMap, LmOptions};
use lalora::io::hub::resolve_model;
use lalora::train::{DataConfig, EvalConfig, OptimizerConfig, Penalty, ScheduleConfig, ScheduleKind, TrainConfig};
use lalora::{AdapterSource, DtypeChoice, LlamaConfig, LoraConfig, LoraInit, Projection};

use super::ranges::{at_least_one, dropout, fraction, non_negative, non_negative_f32, positive, token_length};

/// Which model (and adapter) to load.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// HF model directory (config.json, model.safetensors or shards, tokenizer.json), or a
    /// model id in the local Hugging Face cache, `org/name[@revision]`.
    /// Examples: `--model models/tiny`, `--model meta-llama/Llama-3.2-1B@main`.
    #[arg(long, env = "LALORA_MODEL")]
    pub model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Float type of the frozen base weights: auto (the checkpoint's `torch_dtype` on GPU
    /// backends, f32 on CPU ones), f32, bf16 or f16. Adapters, gradients, optimiser state
    /// and curvature stay f32. bf16 halves the weights' memory; on CPU backends the products
    /// still run in f32 (the weight is widened at each use), so it is not faster there.
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<DtypeChoice>())]
    pub dtype: DtypeChoice,
}

impl ModelArgs {
    /// The model directory: `--model` itself, or the HF cache's snapshot of a model id.
    pub fn dir(&self) -> lalora::Result<PathBuf> {
        resolve_model(&self.model)
    }

    /// The adapters these flags name: the `--adapter` directory, or none.
    pub fn adapters(&self) -> AdapterSource {
        self.adapter.clone().map_or(AdapterSource::None, AdapterSource::Peft)
    }
}

/// How data files (JSONL or parquet) are read.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Rename columns before the records are read, `record_field=column` pairs,
    /// comma-separated. Example (GSM8K): `--field prompt=question,completion=answer`.
    #[arg(long, value_parser = |s: &str| FieldMap::parse(s))]
    pub field: Option<FieldMap>,
}

impl DataArgs {
    /// Reading options for a model in `model_dir`: these renames, `max_len` tokens, `eos` after
    /// completions, and the model's chat template (for `messages` records) if it has one.
    pub fn chat_template(model_dir: &std::path::Path) -> lalora::Result<Option<ChatTemplate>> {
        ChatTemplate::from_model_dir(model_dir)
    }

    /// [`LmOptions`] over these renames and `chat`.
    pub fn options<'a>(&'a self, max_len: usize, eos: Option<u32>, chat: Option<&'a ChatTemplate>) -> LmOptions<'a> {
        LmOptions { max_len, eos, fields: self.field.as_ref(), chat }
    }
}

/// Shape, scale and init of fresh LoRA adapters.
#[derive(Args, Debug, Clone)]
pub struct LoraArgs {
    /// LoRA rank r (at most the smaller side of each adapted projection).
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub rank: usize,
    /// LoRA alpha; the scale is alpha / r (alpha / sqrt(r) with --rslora).
    #[arg(long, default_value_t = 16.0, value_parser = positive)]
    pub alpha: f64,
    /// Use rsLoRA's scale alpha / sqrt(r).
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the adapter input during training, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = dropout)]
    pub lora_dropout: f64,
    /// Projections to adapt, comma-separated. Example: `--targets q_proj,v_proj`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub targets: Vec<Projection>,
    /// `peft` (B = 0, PEFT's default), `offset` (A and B random, function unchanged; the
    /// A-blocks of the curvature do not vanish) or `gaussian` (PEFT's Gaussian A, B = 0).
    #[arg(long, value_enum, default_value_t = LoraInit::Peft)]
    pub init: LoraInit,
}

impl LoraArgs {
    /// The library's [`LoraConfig`] for these flags and `seed`.
    pub fn config(&self, seed: u64) -> LoraConfig {
        LoraConfig::new()
            .with_rank(self.rank)
            .with_alpha(self.alpha)
            .with_rslora(self.rslora)
            .with_dropout(self.lora_dropout)
            .with_targets(self.targets.clone())
            .with_init(self.init)
            .with_seed(seed)
    }
}

/// Which labels the Fisher is taken under.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FisherKind {
    /// Labels sampled from the model (`--samples` draws per token).
    Mc,
    /// The data's own labels.
    Empirical,
}

impl FisherKind {
    /// The library's [`FisherType`].
    pub fn fisher(self, samples: usize) -> FisherType {
        match self {
            FisherKind::Mc => FisherType::Mc { samples },
            FisherKind::Empirical => FisherType::Empirical,
        }
    }
}

/// Optimiser, schedule and batching flags, shared by `train` and `sweep`.
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Optimiser steps.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub steps: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4, value_parser = positive)]
    pub lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Cosine)]
    pub schedule: ScheduleKind,
    /// Final learning rate as a fraction of the peak, in [0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (PyTorch's default 0.01; betas 0.9/0.999, eps 1e-8),
    /// toward the starting adapters rather than toward zero (with `--init offset` zero is not
    /// the base model).
    #[arg(long, default_value_t = 0.01, value_parser = non_negative_f32)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub clip: f64,
    /// Keep at most this many tokens per training sequence; at most the model's context
    /// (`max_position_embeddings`). Default: 512, or the model's context if shorter.
    #[arg(long, value_parser = token_length)]
    pub max_len: Option<usize>,
    /// Evaluate every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
}

impl OptimArgs {
    /// The training config for `penalty` and sequences of at most `max_len` tokens (see
    /// [`max_len`]); evaluation scores `eval_batch_size` sequences per pass and generates at
    /// most `max_new_tokens`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_config(
        &self,
        penalty: Penalty,
        max_len: usize,
        seed: u64,
        checkpoint_every: usize,
        eval_batch_size: usize,
        max_new_tokens: usize,
    ) -> TrainConfig {
        TrainConfig::new()
            .with_penalty(penalty)
            .with_optimizer(OptimizerConfig::new().with_weight_decay(self.weight_decay).with_clip((self.clip != 0.0).then_some(self.clip)))
            .with_schedule(
                ScheduleConfig::new()
                    .with_steps(self.steps)
                    .with_lr(self.lr)
                    .with_warmup_steps(self.warmup)
                    .with_kind(self.schedule)
                    .with_min_lr_ratio(self.min_lr_ratio),
            )
            .with_data(
                DataConfig::new().with_batch_size(self.batch_size).with_grad_accum(self.grad_accum).with_max_len(max_len).with_seed(seed),
            )
            .with_eval(
                EvalConfig::new()
                    .with_every(self.eval_every)
                    .with_batch_size(eval_batch_size)
                    .with_max_len(max_len)
                    .with_max_new_tokens(max_new_tokens),
            )
            .with_checkpoint_every(checkpoint_every)
    }
}

/// The token limit for a model: `flag` if given (refused above the model's context, its
/// `max_position_embeddings`: past it RoPE positions were never trained and attention memory
/// grows with the square of the length), else `default` cut to the context.
pub fn max_len(flag: Option<usize>, default: usize, config: &LlamaConfig, model_dir: &std::path::Path) -> lalora::Result<usize> {
    let context = config.max_position_embeddings;
    match flag {
        Some(n) if n > context => Err(lalora::Error::arg(
            "max-len",
            format!(
                "{n} is above the model's context: max_position_embeddings is {context} in {}",
                model_dir.join("config.json").display()
            ),
        )),
        Some(n) => Ok(n),
        None => Ok(default.min(context)),
    }
}
