//! Key/value cache for incremental decoding: one preallocated buffer per layer, written in
//! place, so a decoding step copies only its new keys and values (concatenating the whole
//! cache at every step would copy O(n^2) over a generation).

use burn::tensor::{backend::Backend, Int, Tensor};

/// Keys and values of every layer for the positions seen so far, for a batch of rows.
///
/// Rows are independent sequences that share a column index: column `j` of every row was
/// written by the same forward pass. Rows that started shorter are left-padded by their
/// caller, who masks the padding columns in the attention bias.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` layers, with room for `capacity` positions
    /// (it grows, by copying, if a forward pass goes past that).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        KvCache { layers: (0..num_layers).map(|_| LayerCache::new(capacity)).collect() }
    }

    /// Number of cached positions (columns written).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.capacity)
    }

    /// Keeps only the rows `rows` (indices into the current batch, in the new order): the
    /// buffers are gathered once, so finished rows stop costing work in later steps.
    pub fn retain_rows(&mut self, rows: Tensor<B, 1, Int>) {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.buffers.take() {
                layer.buffers = Some((k.select(0, rows.clone()), v.select(0, rows.clone())));
            }
        }
    }

    /// Layer `i`'s cache.
    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut LayerCache<B> {
        &mut self.layers[i]
    }
}

/// One layer's keys (after RoPE) and values (before head repetition).
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `(keys, values)`, each `[batch, capacity, kv_heads, head_dim]`; `None` until the first write.
    buffers: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> LayerCache<B> {
    fn new(capacity: usize) -> Self {
        LayerCache { buffers: None, len: 0, capacity }
    }

    /// Writes `keys` and `values` at columns `len .. len + seq` and returns every written
    /// column, `len + seq` of them (views into the buffers).
    ///
    /// The write is in place on backends that write into a tensor nothing else holds (the
    /// returned views must be dropped before the next call, as a forward pass does); burn-flex
    /// 0.21 copies the whole buffer in `slice_assign`, so there a step still costs a copy.
    ///
    /// # Shapes
    /// - keys, values: `[batch, seq, kv_heads, head_dim]`
    /// - output: `([batch, len + seq, kv_heads, head_dim], same)`
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq, kv_heads, head_dim] = keys.dims();
        let end = self.len + seq;
        let (k_buf, v_buf) = match self.buffers.take() {
            Some((k_buf, v_buf)) if end <= self.capacity => {
                let span = [0..batch, self.len..end, 0..kv_heads, 0..head_dim];
                (k_buf.slice_assign(span.clone(), keys), v_buf.slice_assign(span, values))
            }
            old => {
                // First write, or past the capacity: a new buffer holding what was written
                // and the new columns (doubling when growing, so a cache made too small still
                // costs amortised O(1) copies per position).
                let grown = if old.is_some() { 2 * self.capacity } else { self.capacity };
                self.capacity = grown.max(end);
                let spare = Tensor::zeros([batch, self.capacity - end, kv_heads, head_dim], &keys.device());
                match old {
                    Some((k_old, v_old)) => (
                        Tensor::cat(vec![k_old.narrow(1, 0, self.len), keys, spare.clone()], 1),
                        Tensor::cat(vec![v_old.narrow(1, 0, self.len), values, spare], 1),
                    ),
                    None => (Tensor::cat(vec![keys, spare.clone()], 1), Tensor::cat(vec![values, spare], 1)),
                }
            }
        };
        self.len = end;
        self.buffers = Some((k_buf.clone(), v_buf.clone()));
        (k_buf.narrow(1, 0, end), v_buf.narrow(1, 0, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = crate::test_support::TestBackend;

    fn ramp(batch: usize, seq: usize, start: f32) -> Tensor<B, 4> {
        let n = batch * seq * 2;
        let data: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Tensor::from_data(TensorData::new(data, [batch, seq, 1, 2]), &Default::default())
    }

    #[test]
    fn appends_in_place_grow_and_keep_selected_rows() {
        let mut cache = KvCache::<B>::new(1, 3);
        let (a, b) = (ramp(2, 2, 0.0), ramp(2, 2, 100.0));
        cache.layer_mut(0).append(a.clone(), a.clone());
        // 2 + 2 > 3: the buffer grows and keeps the first two columns.
        let (k, v) = cache.layer_mut(0).append(b.clone(), b.clone());
        assert_eq!(cache.len(), 4);
        assert!(cache.capacity() >= 4);
        let expected = Tensor::cat(vec![a, b], 1);
        assert_eq!(k.dims(), [2, 4, 1, 2]);
        k.into_data().assert_eq(&expected.clone().into_data(), true);
        v.into_data().assert_eq(&expected.clone().into_data(), true);
        // Row 1 alone, then appending still lands at column 4.
        cache.retain_rows(Tensor::from_data(TensorData::new(vec![1i32], [1]), &Default::default()));
        let (k, _) = cache.layer_mut(0).append(ramp(1, 1, -5.0), ramp(1, 1, -5.0));
        k.clone().narrow(1, 0, 4).into_data().assert_eq(&expected.narrow(0, 1, 1).into_data(), true);
        k.narrow(1, 4, 1).into_data().assert_eq(&ramp(1, 1, -5.0).into_data(), true);
    }
}
