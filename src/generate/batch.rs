//! Batched decoding: several prompts advance together, one forward pass per step.
//!
//! Prompts are left-padded to the longest. Each row keeps its own RoPE positions, counted from
//! its first real token, so it computes what it would alone; a per-row key mask hides its
//! padding. Keys and values go to one [`KvCache`] whose columns the rows share (column `j`
//! holds every row's token fed at pass `j`); attention reads the written columns only. Per
//! step, only the new token ids (greedy: the argmax on the device) come back to the host; the
//! RoPE tables are row gathers from a table built once per batch, and the key mask grows by one
//! real column. A row stops at a stop token; once half of the rows present have stopped,
//! they leave the batch (cache, key mask and positions gathered once), so finished rows stop
//! costing work.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::SeedableRng;

use super::{pick, SamplingConfig};
use crate::llama::{inverse_frequencies, AttentionTables, ForwardOptions, KvCache, Llama, RopeCache};
use crate::{AttentionMask, KernelBackend};

/// Generates up to `config.max_new_tokens` after each prompt, decoding all prompts as one
/// batch, and stops each row after the first token in `stop`. Returns, per prompt and in
/// order, the new tokens only (a stop token, if reached, included).
///
/// Greedy results equal [`super::generate`] on each prompt alone, up to float rounding of
/// near-ties. With sampling, row `i` draws from its own generator seeded `config.seed + i`, so
/// a row's draws do not depend on the other rows. `config.use_cache` is ignored (always on).
///
/// # Panics
/// If a prompt is empty.
pub fn generate_batch<B: KernelBackend>(model: &Llama<B>, prompts: &[&[u32]], config: &SamplingConfig, stop: &[u32]) -> Vec<Vec<u32>> {
    assert!(prompts.iter().all(|p| !p.is_empty()), "generation needs non-empty prompts");
    let mut outputs = vec![Vec::new(); prompts.len()];
    if prompts.is_empty() || config.max_new_tokens == 0 {
        return outputs;
    }
    let mut rngs: Vec<rand::rngs::StdRng> =
        (0..prompts.len()).map(|i| rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(i as u64))).collect();
    let mut done = vec![false; prompts.len()];
    let (mut decoder, mut logits) = Decoder::prefill(model, prompts, config.max_new_tokens);
    for step in 0..config.max_new_tokens {
        let (next, tokens) = choose(logits, &decoder.rows, config, &mut rngs, &done);
        for (&row, &token) in decoder.rows.iter().zip(&tokens) {
            if !done[row] {
                outputs[row].push(token);
                done[row] = stop.contains(&token);
            }
        }
        if step + 1 == config.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        let next = decoder.drop_finished(next, &done);
        logits = decoder.step(model, next);
    }
    outputs
}

/// Cache columns reserved past the prompt before the cache first grows.
const INITIAL_ROOM: usize = 16;

/// The state of a batch between steps.
struct Decoder<B: Backend> {
    /// Original index of each row present, in batch order.
    rows: Vec<usize>,
    cache: KvCache<B>,
    rope: RopeCache<B>,
    /// Which of the columns written so far are real tokens, one `Vec` per row present (false
    /// on a row's left padding).
    real: Vec<Vec<bool>>,
    /// Position of each row's next token, `[rows]`.
    positions: Tensor<B, 1, Int>,
}

impl<B: KernelBackend> Decoder<B> {
    /// Runs the left-padded prompts through the model, filling the cache; returns the decoder
    /// and the logits of each prompt's last token, `[rows, 1, vocab]`.
    fn prefill(model: &Llama<B>, prompts: &[&[u32]], max_new_tokens: usize) -> (Self, Tensor<B, 3>) {
        let c = &model.config;
        let device = model.embed_tokens.device();
        let (rows, longest) = (prompts.len(), prompts.iter().map(|p| p.len()).max().unwrap_or(0));
        // Every generated token but the last is fed back, one column each.
        let columns = longest + max_new_tokens - 1;
        let inv_freq = inverse_frequencies(c);
        let rope = RopeCache::new(&inv_freq, columns, &device);

        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut ids = Vec::with_capacity(rows * longest);
        let mut positions = Vec::with_capacity(rows * longest);
        for (prompt, &pad) in prompts.iter().zip(&pads) {
            ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().map(|&t| t as i64)));
            positions.extend((0..longest).map(|j| j.saturating_sub(pad) as i64));
        }
        let real: Vec<Vec<bool>> = pads.iter().map(|&pad| (0..longest).map(|j| j >= pad).collect()).collect();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [rows * longest]), &device);
        let tables = AttentionTables { rope: rope.tables(positions, rows, longest), mask: key_mask(&real, 0) };
        // Room for a short answer; a longer one grows the cache (doubling). Most eval answers
        // stop early, and a cache write costs a copy of the buffer on burn-flex.
        let mut cache = KvCache::new(model.layers.len(), columns.min(longest + INITIAL_ROOM));
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, longest]), &device);
        let options = ForwardOptions { cache: Some(&mut cache), tables: Some(&tables), ..Default::default() };
        let hidden = model.hidden_states(ids, None, options);
        let logits = model.logits(hidden.narrow(1, longest - 1, 1));

        let decoder = Decoder {
            rows: (0..rows).collect(),
            cache,
            rope,
            real,
            positions: Tensor::from_data(TensorData::new(prompts.iter().map(|p| p.len() as i64).collect(), [rows]), &device),
        };
        (decoder, logits)
    }

    /// Feeds one token per row, `next: [rows, 1]`; returns the logits `[rows, 1, vocab]`.
    fn step(&mut self, model: &Llama<B>, next: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let rows = self.rows.len();
        // The column this step writes is real for every row.
        let past = self.cache.len();
        self.real.iter_mut().for_each(|row| row.push(true));
        let tables = AttentionTables { rope: self.rope.tables(self.positions.clone(), rows, 1), mask: key_mask(&self.real, past) };
        let options = ForwardOptions { cache: Some(&mut self.cache), tables: Some(&tables), ..Default::default() };
        let hidden = model.hidden_states(next, None, options);
        self.positions = self.positions.clone().add_scalar(1);
        model.logits(hidden)
    }

    /// Drops the finished rows once they are half the batch or more (gathering the cache costs
    /// a copy of it, so it is done a logarithmic number of times); returns `next` for the rows
    /// that remain.
    fn drop_finished(&mut self, next: Tensor<B, 2, Int>, done: &[bool]) -> Tensor<B, 2, Int> {
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&i| !done[self.rows[i]]).collect();
        if 2 * keep.len() > self.rows.len() {
            return next;
        }
        let device = next.device();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]), &device);
        self.cache.retain_rows(index.clone());
        self.real = keep.iter().map(|&i| std::mem::take(&mut self.real[i])).collect();
        self.positions = self.positions.clone().select(0, index.clone());
        self.rows = keep.iter().map(|&i| self.rows[i]).collect();
        next.select(0, index)
    }
}

/// The attention mask of a forward whose queries follow `past` cached columns, over the
/// columns' real-token flags (one `Vec` per row, all of one length).
fn key_mask(real: &[Vec<bool>], past: usize) -> AttentionMask {
    AttentionMask::with_padding(past, real.concat())
}

/// The next token of each row present: greedy on the device (only the ids come back), or
/// sampled on the host from the row's own generator. Finished rows get a token too (they
/// are still in the batch) but draw nothing. Returns the ids as `[rows, 1]` and on the host.
fn choose<B: Backend>(
    logits: Tensor<B, 3>,
    rows: &[usize],
    config: &SamplingConfig,
    rngs: &mut [rand::rngs::StdRng],
    done: &[bool],
) -> (Tensor<B, 2, Int>, Vec<u32>) {
    let [batch, _, vocab] = logits.dims();
    if config.temperature <= 0.0 {
        let ids = logits.argmax(2).reshape([batch, 1]);
        let host: Vec<i64> = ids.clone().into_data().convert::<i64>().to_vec().expect("int data");
        return (ids, host.into_iter().map(|t| t as u32).collect());
    }
    let device = logits.device();
    let values: Vec<f32> = logits.into_data().convert::<f32>().to_vec().expect("f32 data");
    let tokens: Vec<u32> = rows
        .iter()
        .zip(values.chunks(vocab))
        .map(|(&row, row_logits)| if done[row] { 0 } else { pick(row_logits, config, &mut rngs[row]) })
        .collect();
    let ids = Tensor::from_data(TensorData::new(tokens.iter().map(|&t| t as i64).collect(), [batch, 1]), &device);
    (ids, tokens)
}
