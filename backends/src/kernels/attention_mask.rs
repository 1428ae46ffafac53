//! Which keys each query may attend to, described rather than materialised.

use std::sync::Arc;

/// Causal attention over a key sequence that may hold padding.
///
/// Query i of a forward pass over `seq` new tokens sits at position `past + i`, where `past`
/// is the number of positions already in the KV cache (0 without a cache), and sees key j
/// when `j <= past + i` and key j is a real token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionMask {
    /// Positions already cached before this forward's queries.
    pub past: usize,
    /// `[batch * keys]` row-major, true for a real token and false for padding; `None` when
    /// every key is real.
    pub key_valid: Option<Arc<[bool]>>,
}

impl AttentionMask {
    /// Causal attention with queries at positions `past ..`, no padding.
    pub fn causal(past: usize) -> Self {
        AttentionMask { past, key_valid: None }
    }

    /// Causal attention with queries at positions `past ..` and per-key padding
    /// (`[batch * keys]`, true = real token).
    pub fn with_padding(past: usize, key_valid: Vec<bool>) -> Self {
        AttentionMask { past, key_valid: Some(key_valid.into()) }
    }

    /// Whether query `i` of batch row `b` may see key `j`, with `keys` keys per row.
    #[inline]
    pub fn allows(&self, b: usize, i: usize, j: usize, keys: usize) -> bool {
        j <= self.past + i && self.key_valid.as_ref().is_none_or(|v| v[b * keys + j])
    }

    /// The real-token flags of batch row `b` (`keys` long), `None` when all keys are real.
    #[inline]
    pub fn row(&self, b: usize, keys: usize) -> Option<&[bool]> {
        self.key_valid.as_ref().map(|v| &v[b * keys..(b + 1) * keys])
    }

    /// One past the last key that query `i` can see causally (padding aside).
    #[inline]
    pub fn causal_end(&self, i: usize, keys: usize) -> usize {
        (self.past + i + 1).min(keys)
    }

    /// Panics unless the mask fits `batch` rows of `keys` keys and `seq` queries.
    pub(crate) fn check(&self, batch: usize, seq: usize, keys: usize) {
        assert!(self.past + seq <= keys, "attention: {} cached + {seq} new positions but only {keys} keys", self.past);
        if let Some(v) = &self.key_valid {
            assert_eq!(v.len(), batch * keys, "attention: key mask has {} entries, expected batch {batch} x keys {keys}", v.len());
        }
    }
}
