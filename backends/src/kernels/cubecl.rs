//! The kernels on the cubecl backends (wgpu, cuda).
//!
//! Inference attention goes to burn's own fused attention (`burn::tensor::module::attention`,
//! cubecl's flash-attention kernels, autotuned against burn's composed fallback). That op
//! wants one key/value head per query head and a boolean mask, so k and v are repeated and the
//! mask is materialised; it returns no log-sum-exp, so training (`Autodiff<B>`) keeps the
//! composed block-wise forward and backward of [`super::composed`].

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};

use super::{AttentionMask, KernelBackend};

/// Attention through burn's fused op; same contract as [`KernelBackend::causal_attention`].
pub fn fused_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &AttentionMask, scale: f64) -> Tensor<B, 4> {
    let [batch, seq, heads, head_dim] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    mask.check(batch, seq, keys);
    let groups = heads / kv_heads;
    let repeat = |x: Tensor<B, 4>| -> Tensor<B, 4> {
        let x = x.swap_dims(1, 2); // [batch, kv_heads, keys, d]
        if groups == 1 {
            return x;
        }
        x.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, keys, head_dim]).reshape([batch, heads, keys, head_dim])
    };
    // Plain causal attention is the kernel's own `is_causal`; a cache offset or padding needs
    // an explicit mask (true = hidden).
    let plain_causal = mask.key_valid.is_none() && seq == keys;
    let bool_mask = (!plain_causal).then(|| {
        let mut hidden = Vec::with_capacity(batch * heads * seq * keys);
        for b in 0..batch {
            let rows: Vec<bool> = (0..seq).flat_map(|i| (0..keys).map(move |j| (i, j))).map(|(i, j)| !mask.allows(b, i, j, keys)).collect();
            for _ in 0..heads {
                hidden.extend_from_slice(&rows);
            }
        }
        Tensor::<B, 4, Bool>::from_data(TensorData::new(hidden, [batch, heads, seq, keys]), &q.device())
    });
    // The kernel's default scale is 1/sqrt(d); passing any scale sends it to the fallback.
    let default_scale = (scale - 1.0 / (head_dim as f64).sqrt()).abs() < 1e-12;
    let options = AttentionModuleOptions { scale: (!default_scale).then_some(scale), softcap: None, is_causal: plain_causal };
    let out = attention(q.swap_dims(1, 2), repeat(k), repeat(v), bool_mask, None, options); // [batch, heads, seq, d]
    out.swap_dims(1, 2)
}

#[cfg(feature = "wgpu")]
impl KernelBackend for burn_wgpu::Wgpu<f32, i32> {
    const GPU: bool = true;

    fn causal_attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &AttentionMask, scale: f64) -> Tensor<Self, 4> {
        fused_attention(q, k, v, mask, scale)
    }
}

#[cfg(feature = "cuda")]
impl KernelBackend for burn_cuda::Cuda<f32, i32> {
    const GPU: bool = true;

    fn causal_attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &AttentionMask, scale: f64) -> Tensor<Self, 4> {
        fused_attention(q, k, v, mask, scale)
    }
}
