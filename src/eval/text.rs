//! Text sets: per-token negative log-likelihood and perplexity.
//!
//! The quantity is transformers' `model(input_ids, labels=input_ids).loss` per sequence: the
//! mean NLL over every predicted position. File-level figures average over all predicted
//! positions of the file.

use serde::Serialize;

use crate::data::{Batch, Sequence};
use crate::llama::{ForwardOptions, Llama};
use crate::loss::head_forward;
use crate::progress::Progress;
use crate::KernelBackend;

/// One sequence's score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SequenceScore {
    /// Predicted positions.
    pub tokens: usize,
    /// Mean NLL over them (`None` when there are none).
    pub nll: Option<f64>,
}

/// A file's score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TextScore {
    /// Predicted positions in the whole file.
    pub tokens: usize,
    /// Mean NLL over all of them.
    pub nll_per_token: f64,
    /// `exp(nll_per_token)`.
    pub perplexity: f64,
    /// Per sequence, in file order.
    pub sequences: Vec<SequenceScore>,
}

/// Summed NLL and predicted-token count of each sequence, scored `batch_size` at a time.
pub fn sequence_nll_sums<B: KernelBackend>(
    model: &Llama<B>,
    sequences: &[Sequence],
    batch_size: usize,
    progress: &Progress,
) -> Vec<(f64, usize)> {
    let device = model.embed_tokens.device();
    let mut out = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(batch_size.max(1)) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = Batch::<B>::new(&refs, &device);
        let hidden = model.hidden_states(batch.input_ids, Some(batch.key_mask), ForwardOptions::default());
        let nll = head_forward(model.head_weight(), hidden).masked_nll(batch.targets, batch.loss_mask);
        let sums: Vec<f32> = nll.sum_dim(1).into_data().convert::<f32>().to_vec().expect("f32 data");
        out.extend(chunk.iter().zip(sums).map(|(s, sum)| (sum as f64, s.num_targets())));
        progress.inc(chunk.len() as u64);
    }
    out
}

/// Scores every sequence and the file as a whole.
pub fn score_text<B: KernelBackend>(model: &Llama<B>, sequences: &[Sequence], batch_size: usize, progress: &Progress) -> TextScore {
    let sums = sequence_nll_sums(model, sequences, batch_size, progress);
    let tokens: usize = sums.iter().map(|(_, n)| n).sum();
    let total: f64 = sums.iter().map(|(s, _)| s).sum();
    let nll_per_token = if tokens > 0 { total / tokens as f64 } else { f64::NAN };
    TextScore {
        tokens,
        nll_per_token,
        perplexity: nll_per_token.exp(),
        sequences: sums.into_iter().map(|(sum, n)| SequenceScore { tokens: n, nll: (n > 0).then(|| sum / n as f64) }).collect(),
    }
}
