//! Key/value cache for incremental decoding.

use burn::tensor::{backend::Backend, Tensor};

/// Per-layer keys and values of the positions seen so far (keys after RoPE; grouped-query
/// attention never repeats them).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<(Option<Tensor<B, 4>>, Option<Tensor<B, 4>>)>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![(None, None); num_layers], len: 0 }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `i`'s `(keys, values)`, each `[batch, len, kv_heads, head_dim]`.
    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut (Option<Tensor<B, 4>>, Option<Tensor<B, 4>>) {
        &mut self.layers[i]
    }

    /// Records that `n` more positions were appended by a forward pass.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
