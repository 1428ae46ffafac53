//! The operations lalora's model runs through a backend-extension trait, so that a backend can
//! replace the composed burn ops by a fused kernel (forward and backward) without any change to
//! the model code.
//!
//! [`KernelBackend`]'s default methods are written in burn's portable tensor API and run
//! unchanged on every backend; a backend overrides a method where it has something faster.
//! `Autodiff<B>` implements the trait for every `B: KernelBackend`, so training uses the same
//! calls.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// A burn backend with lalora's model kernels.
pub trait KernelBackend: Backend {
    /// Scaled dot-product attention over grouped queries, with an additive bias.
    ///
    /// The `groups` query heads that share one key/value head are stacked along the query
    /// axis, so grouped-query attention needs no copy of k and v. The scale is already applied
    /// to `q`.
    ///
    /// # Shapes
    /// - q: `[batch, kv_heads, groups * seq, head_dim]`
    /// - k, v: `[batch, kv_heads, keys, head_dim]`
    /// - bias: `[batch, kv_heads, groups * seq, keys]`, 0 where a query may see a key and a
    ///   large negative number elsewhere
    /// - output: `[batch, kv_heads, groups * seq, head_dim]`
    fn grouped_attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, bias: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let scores = q.matmul(k.transpose()) + bias; // [batch, kv_heads, groups * seq, keys]
        softmax(scores, 3).matmul(v)
    }
}

impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {}

/// An autodiff backend whose inner backend has the kernels too (training runs on the former,
/// evaluation on the latter).
pub trait KernelAutodiffBackend: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend {}

impl<B: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend> KernelAutodiffBackend for B {}
