//! Token-level cross-entropy for causal language modelling.

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor};

/// Negative log-likelihood of each position's target, zero where `loss_mask` is zero.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - targets, loss_mask: `[batch, seq]`
/// - output: `[batch, seq]`
pub fn token_nll<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>, loss_mask: Tensor<B, 2>) -> Tensor<B, 2> {
    let log_probs = log_softmax(logits, 2);
    let picked: Tensor<B, 2> = log_probs.gather(2, targets.unsqueeze_dim(2)).squeeze_dim(2);
    picked.neg() * loss_mask
}
