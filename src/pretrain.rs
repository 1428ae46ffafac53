//! Full-parameter pretraining of a small Llama from scratch: how the bundled `models/tiny` is
//! made. Texts are packed into fixed-length rows (each text keeps its BOS), and every weight
//! trains with AdamW; the LM head's gradient comes in closed form ([`crate::loss`]).

use burn::optim::{GradientsParams, Optimizer};
use serde::{Deserialize, Serialize};

use crate::data::{Batch, DataPosition, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::llama::{unfreeze_all, Llama, LlamaConfig, RopeScaling};
use crate::progress::Progress;
use crate::train::{clip_global_norm, lm_objective, trainable_params, AdamWSettings, LrSchedule, ScheduleKind};
use crate::KernelAutodiffBackend;

/// The shape of a small model, the rest of its config derived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmallModel {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Context length.
    pub max_position_embeddings: usize,
}

impl Default for SmallModel {
    /// About 0.9M parameters with a 1024-token vocabulary: small enough to pretrain on two CPU
    /// cores in minutes and ship in under 4 MB, large enough to learn the bundled skills.
    fn default() -> Self {
        SmallModel {
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 256,
        }
    }
}

impl SmallModel {
    /// A full config: tied embeddings, plain RoPE, the tokenizer's vocabulary and specials.
    pub fn config(&self, vocab_size: usize, bos: u32, eos: u32) -> LlamaConfig {
        LlamaConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.hidden_size / self.num_attention_heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: true,
            bos_token_id: Some(bos),
            eos_token_ids: vec![eos],
        }
    }
}

/// Optimisation settings of pretraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Packed rows per step.
    pub batch_size: usize,
    /// Tokens per packed row.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// AdamW settings.
    pub adamw: AdamWSettings,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Seed of the data order.
    pub seed: u64,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        PretrainOptions {
            steps: 1800,
            batch_size: 16,
            seq_len: 128,
            lr: 3e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            adamw: AdamWSettings { weight_decay: 0.01, ..Default::default() },
            clip: 1.0,
            seed: 0,
        }
    }
}

/// Packs tokenised texts greedily into rows of at most `seq_len` tokens, never splitting a
/// text (a longer text is cut to `seq_len`). Every token after a row's first is predicted.
pub fn pack(texts: &[Vec<u32>], seq_len: usize) -> Vec<Sequence> {
    let mut rows = Vec::new();
    let mut row: Vec<u32> = Vec::with_capacity(seq_len);
    for text in texts {
        let text = &text[..text.len().min(seq_len)];
        if row.len() + text.len() > seq_len && !row.is_empty() {
            rows.push(Sequence::text(std::mem::take(&mut row)));
        }
        row.extend_from_slice(text);
    }
    if row.len() > 1 {
        rows.push(Sequence::text(row));
    }
    rows
}

/// Trains every weight of `model` on `rows`. `on_step(step, loss)` sees each step's loss.
pub fn pretrain<B: KernelAutodiffBackend>(
    model: Llama<B>,
    rows: &[Sequence],
    options: &PretrainOptions,
    progress: &Progress,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Llama<B>> {
    if rows.is_empty() {
        return Err(Error::EmptyData { path: "<pretraining corpus>".into(), reason: "no rows to train on".into() });
    }
    let device = model.embed_tokens.device();
    let mut model = unfreeze_all(model);
    let params = trainable_params(&model);
    let mut optim = options.adamw.config().init::<B, Llama<B>>();
    let schedule = LrSchedule {
        peak: options.lr,
        warmup_steps: options.warmup_steps,
        total_steps: options.steps,
        kind: ScheduleKind::Cosine,
        min_ratio: options.min_lr_ratio,
    };
    let mut shuffler = Shuffler::new(rows.len(), options.seed, DataPosition::default());
    for step in 0..options.steps {
        let picked = shuffler.next_batch(options.batch_size);
        let refs: Vec<&Sequence> = picked.iter().map(|&i| &rows[i]).collect();
        let batch = Batch::new(&refs, &device);
        let objective = lm_objective(&model, &batch, true, true);
        if !objective.nll.is_finite() {
            return Err(Error::Numerical(format!("pretraining step {}: loss is {}; lower --lr", step + 1, objective.nll)));
        }
        let mut grads = GradientsParams::from_grads(objective.surrogate.backward(), &model);
        clip_global_norm::<B>(&mut grads, &params, Some(options.clip));
        model = optim.step(schedule.lr_at(step), model, grads);
        on_step(step + 1, objective.nll);
        progress.inc(1);
        progress.message(format!("nll {:.3}", objective.nll));
    }
    Ok(model)
}
