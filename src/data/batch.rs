//! Tokenised sequences and right-padded batches.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// A tokenised sequence and which of its tokens are predicted (carry a loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Tokens `ids[first_target..]` carry a loss (each predicted from the position before it).
    /// Plain text: 1. Prompt + completion: the prompt's length.
    pub first_target: usize,
    /// When set, `[ids.len()]` flags that replace `first_target`: token t carries a loss where
    /// `target_mask[t]` (t >= 1). For scored tokens that are not one suffix, such as the
    /// assistant turns of a chat.
    pub target_mask: Option<Vec<bool>>,
}

impl Sequence {
    /// A text sequence: every token after the first is predicted.
    pub fn text(ids: Vec<u32>) -> Self {
        Sequence { ids, first_target: 1, target_mask: None }
    }

    /// A sequence whose tokens from `first_target` on carry a loss.
    pub fn new(ids: Vec<u32>, first_target: usize) -> Self {
        Sequence { ids, first_target, target_mask: None }
    }

    /// Keeps the first `max_len` tokens.
    pub fn truncated(mut self, max_len: usize) -> Self {
        self.ids.truncate(max_len);
        if let Some(mask) = &mut self.target_mask {
            mask.truncate(max_len);
        }
        self
    }

    /// Whether token `t` is predicted and scored.
    pub fn is_target(&self, t: usize) -> bool {
        t >= 1
            && t < self.ids.len()
            && match &self.target_mask {
                Some(mask) => mask.get(t).copied().unwrap_or(false),
                None => t >= self.first_target,
            }
    }

    /// Number of predicted tokens.
    pub fn num_targets(&self) -> usize {
        match &self.target_mask {
            Some(_) => (1..self.ids.len()).filter(|&t| self.is_target(t)).count(),
            None => self.ids.len().saturating_sub(self.first_target.max(1)),
        }
    }
}

/// A right-padded batch.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// `[batch, seq]`, padding filled with 0.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, true for real tokens.
    pub key_mask: Tensor<B, 2, Bool>,
    /// `[batch, seq]`: the token position t predicts (`ids[t + 1]`), 0 where there is none.
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, seq]`: 1 where position t carries a loss, else 0.
    pub loss_mask: Tensor<B, 2>,
    /// Predicted tokens in the batch.
    pub num_targets: usize,
}

impl<B: Backend> Batch<B> {
    /// Pads `sequences` on the right to the longest one.
    ///
    /// # Panics
    /// If `sequences` is empty or a sequence is empty.
    pub fn new(sequences: &[&Sequence], device: &B::Device) -> Self {
        assert!(!sequences.is_empty(), "a batch needs at least one sequence");
        let width = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        assert!(width > 0, "a batch needs at least one token");
        let n = sequences.len();
        let mut ids = vec![0i64; n * width];
        let mut mask = vec![false; n * width];
        let mut targets = vec![0i64; n * width];
        let mut loss = vec![0f32; n * width];
        let mut num_targets = 0;
        for (row, s) in sequences.iter().enumerate() {
            let base = row * width;
            for (t, &id) in s.ids.iter().enumerate() {
                ids[base + t] = id as i64;
                mask[base + t] = true;
                if t + 1 < s.ids.len() {
                    targets[base + t] = s.ids[t + 1] as i64;
                    if s.is_target(t + 1) {
                        loss[base + t] = 1.0;
                        num_targets += 1;
                    }
                }
            }
        }
        let shape = [n, width];
        Batch {
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            key_mask: Tensor::from_data(TensorData::new(mask, shape), device),
            targets: Tensor::from_data(TensorData::new(targets, shape), device),
            loss_mask: Tensor::from_data(TensorData::new(loss, shape), device),
            num_targets,
        }
    }
}
