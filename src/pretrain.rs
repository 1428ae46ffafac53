//! Full-parameter pretraining of a small Llama from scratch: how the bundled `models/tiny` is
//! made. Texts are packed into fixed-length rows (each text keeps its BOS), and every weight
//! trains with AdamW; the LM head's gradient comes in closed form ([`crate::loss`]).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use serde::{Deserialize, Serialize};

use crate::data::{read_records, Batch, DataPosition, Record, Sequence, Shuffler};
use crate::error::{Error, Result};
use crate::eval::{evaluate, load_eval_set, EvalOptions, EvalScore};
use crate::io::write_json_atomic;
use crate::llama::{unfreeze_all, Llama, LlamaConfig, RopeScaling};
use crate::progress::Progress;
use crate::tasks::{write_tasks, TaskSizes};
use crate::tokenizer::{train_bpe, BOS, EOS};
use crate::train::{trainable_params, OptimizerConfig, ScheduleConfig, Step};
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
    /// Packed rows per step.
    pub batch_size: usize,
    /// Tokens per packed row.
    pub seq_len: usize,
    /// Steps, peak learning rate, warmup and cosine decay.
    pub schedule: ScheduleConfig,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Seed of the data order.
    pub seed: u64,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        PretrainOptions {
            batch_size: 16,
            seq_len: 128,
            schedule: ScheduleConfig::new().with_steps(1800).with_lr(3e-3).with_warmup_steps(100).with_min_lr_ratio(0.05),
            optimizer: OptimizerConfig::new().with_weight_decay(0.01).with_clip(Some(1.0)),
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

/// Trains every weight of `model` on `rows` with the same step as fine-tuning (plus the LM
/// head's gradient). `on_step(step, loss)` sees each step's loss.
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
    let mut optim = options.optimizer.adamw().init::<B, Llama<B>>();
    let mut shuffler = Shuffler::new(rows.len(), options.seed, DataPosition::default());
    for step in 0..options.schedule.steps {
        let picked = shuffler.next_batch(options.batch_size);
        let refs: Vec<&Sequence> = picked.iter().map(|&i| &rows[i]).collect();
        let batch = Batch::new(&refs, &device);
        let one = Step {
            lr: options.schedule.lr_at(step),
            clip: options.optimizer.clip,
            head_grad: true,
            penalty: None,
            params: &params,
            decay: None,
            checkpointing: false,
        };
        let out;
        (model, out) = one
            .run(model, &mut optim, vec![batch])
            .map_err(|e| Error::Numerical(format!("pretraining step {}: {e}; lower --lr", step + 1)))?;
        on_step(step + 1, out.loss);
        progress.inc(1);
        progress.message(format!("nll {:.3}", out.loss));
    }
    Ok(model)
}

/// What [`build_tiny_model`] needs: the model's shape, the tokenizer's size and pretraining.
#[derive(Debug, Clone)]
pub struct TinyModelConfig {
    /// Output model directory.
    pub out: PathBuf,
    /// Seed of the tasks, the weights and the data order.
    pub seed: u64,
    /// BPE vocabulary size.
    pub vocab_size: usize,
    /// The model's shape.
    pub shape: SmallModel,
    /// Pretraining settings.
    pub options: PretrainOptions,
    /// Use a few dozen records per task (quick checks; the model will be poor).
    pub tiny_tasks: bool,
}

/// What [`build_tiny_model`] made.
#[derive(Debug, Clone)]
pub struct TinyModelReport {
    /// Parameters of the model.
    pub parameters: usize,
    /// Texts in the corpus, and the rows they were packed into.
    pub texts: usize,
    /// Packed rows.
    pub rows: usize,
    /// Scores on the held-out source sets and the target test set after pretraining.
    pub scores: Vec<EvalScore>,
    /// Wall time.
    pub seconds: f64,
}

/// Builds the bundled tiny model from nothing: generates the tasks, trains a BPE tokenizer on
/// their text, pretrains a small Llama on the source skills (all weights), and writes an HF
/// model directory (`config.json`, `model.safetensors`, `tokenizer.json`, `pretrain.json`).
pub fn build_tiny_model<B: KernelAutodiffBackend>(
    config: &TinyModelConfig,
    device: &B::Device,
    show_progress: bool,
) -> Result<TinyModelReport> {
    B::seed(device, config.seed);
    let start = Instant::now();
    let sizes = if config.tiny_tasks { TaskSizes::tiny() } else { TaskSizes::default() };
    // The task files can always be regenerated from the seed; they do not belong in the model.
    let tasks_dir = std::env::temp_dir().join(format!("lalora-pretrain-tasks-{}", std::process::id()));
    let files = write_tasks(&tasks_dir, config.seed, &sizes)?;

    let tokenizer = train_bpe(&files.tokenizer_corpus, config.vocab_size)?;
    let (bos, eos) = (tokenizer.token_id(BOS), tokenizer.token_id(EOS));
    let (bos, eos) = (bos.expect("trained with BOS"), eos.expect("trained with EOS"));
    let model_config = config.shape.config(tokenizer.vocab_size(), bos, eos);
    let model = Llama::<B>::init_random(&model_config, config.seed, device);

    let texts: Vec<Vec<u32>> = read_records(&files.pretrain)?
        .iter()
        .map(|(_, r)| match r {
            Record::Text { text } => tokenizer.encode(text),
            _ => unreachable!("the pretraining corpus is text"),
        })
        .collect::<Result<_>>()?;
    let rows = pack(&texts, config.options.seq_len);
    let progress = Progress::new(show_progress, config.options.schedule.steps as u64, "pretrain");
    let mut losses = Vec::new();
    let model = pretrain(model, &rows, &config.options, &progress, |step, loss| {
        if step % 100 == 0 {
            losses.push((step, loss));
        }
    })?;
    progress.finish();
    let model = model.valid();

    std::fs::create_dir_all(&config.out).map_err(|e| Error::io(&config.out, e))?;
    model.save(&config.out)?;
    tokenizer.save(&config.out.join("tokenizer.json"))?;

    let seq_len = config.options.seq_len;
    let eval_options = EvalOptions { batch_size: 32, max_len: seq_len, max_new_tokens: 48 };
    let mut eval_files: Vec<PathBuf> = files.sources.iter().map(|(_, _, e)| e.clone()).collect();
    eval_files.push(files.target_eval.clone());
    let mut scores = Vec::new();
    for path in &eval_files {
        let set = load_eval_set(path, &tokenizer, seq_len)?;
        scores.push(evaluate(&model, &tokenizer, &set, &eval_options, &Progress::hidden())?);
    }
    let parameters = parameter_count(&model_config);
    write_json_atomic(
        &config.out.join("pretrain.json"),
        &serde_json::json!({
            "seed": config.seed, "shape": config.shape, "options": config.options, "vocab_size": tokenizer.vocab_size(),
            "rows": rows.len(), "loss_every_100_steps": losses, "scores": scores,
            "seconds": start.elapsed().as_secs_f64(),
        }),
    )?;
    let _ = std::fs::remove_dir_all(&tasks_dir);
    Ok(TinyModelReport { parameters, texts: texts.len(), rows: rows.len(), scores, seconds: start.elapsed().as_secs_f64() })
}

/// Parameters of a Llama with this configuration (tied or untied head counted once).
pub fn parameter_count(c: &LlamaConfig) -> usize {
    let attn = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads);
    let mlp = 3 * c.hidden_size * c.intermediate_size;
    let head = if c.tie_word_embeddings { 0 } else { c.vocab_size * c.hidden_size };
    c.vocab_size * c.hidden_size + head + c.num_hidden_layers * (attn + mlp + 2 * c.hidden_size) + c.hidden_size
}
