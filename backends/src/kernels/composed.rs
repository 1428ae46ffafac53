//! The kernels written in burn's portable tensor ops: [`KernelBackend`](super::KernelBackend)'s
//! defaults, which run on every backend, and the reference the fused kernels are tested
//! against.
//!
//! Attention works on blocks of [`QUERY_BLOCK`] queries: each block's scores are
//! `[batch, kv_heads, groups * block, keys seen]`, so the scratch memory is O(block x keys)
//! per head. The backward recomputes each block's probabilities from the saved log-sum-exp
//! (FlashAttention's recomputation, at block rather than tile granularity).

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::{frozen_matmul, AttentionGrads, AttentionMask, AttentionSaved, HeadLoss, KernelBackend, LoraGrads, LoraNeeds};

/// Queries per block in the composed attention.
pub const QUERY_BLOCK: usize = 128;

/// Added to the scores of keys a query may not see, so the row maximum is taken over the
/// visible keys; their probabilities are then zeroed exactly by the 0/1 mask.
const MASKED: f64 = -1e9;

/// Below this a row's exponential sum counts as zero (the row sees no key).
const TINY: f64 = 1e-30;

/// `[batch, seq, heads, d]` -> `[batch, kv_heads, groups * seq, d]`: the query heads that share a
/// key/value head stacked along the row axis (group-major), so one matmul serves the group.
fn group_queries<B: Backend>(x: Tensor<B, 4>, kv_heads: usize) -> Tensor<B, 4> {
    let [batch, seq, heads, d] = x.dims();
    let groups = heads / kv_heads;
    x.reshape([batch, seq, kv_heads, groups, d]).permute([0, 2, 3, 1, 4]).reshape([batch, kv_heads, groups * seq, d])
}

/// Inverse of [`group_queries`].
fn ungroup_queries<B: Backend>(x: Tensor<B, 4>, seq: usize) -> Tensor<B, 4> {
    let [batch, kv_heads, rows, d] = x.dims();
    let groups = rows / seq;
    x.reshape([batch, kv_heads, groups, seq, d]).permute([0, 3, 1, 2, 4]).reshape([batch, seq, kv_heads * groups, d])
}

/// One block of queries `i0..i1` and the keys `0..keys_seen` they can see causally.
struct QueryBlock<B: Backend> {
    i0: usize,
    i1: usize,
    keys_seen: usize,
    /// `[batch, 1, groups * (i1 - i0), keys_seen]`: 1 where the query sees the key, else 0.
    visible: Tensor<B, 4>,
}

impl<B: Backend> QueryBlock<B> {
    fn new(mask: &AttentionMask, [batch, groups, keys]: [usize; 3], i0: usize, i1: usize, device: &B::Device) -> Self {
        let keys_seen = mask.causal_end(i1 - 1, keys);
        let rows = groups * (i1 - i0);
        let mut visible = Vec::with_capacity(batch * rows * keys_seen);
        for b in 0..batch {
            for _ in 0..groups {
                for i in i0..i1 {
                    visible.extend((0..keys_seen).map(|j| if mask.allows(b, i, j, keys) { 1f32 } else { 0.0 }));
                }
            }
        }
        let visible = Tensor::from_data(TensorData::new(visible, [batch, 1, rows, keys_seen]), device);
        QueryBlock { i0, i1, keys_seen, visible }
    }

    /// Scaled scores with [`MASKED`] added where a key is not visible,
    /// `[batch, kv_heads, rows, keys_seen]`.
    fn scores(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, scale: f64) -> Tensor<B, 4> {
        let bias = self.visible.clone().sub_scalar(1.0).mul_scalar(-MASKED);
        q.matmul(k.transpose()).mul_scalar(scale) + bias
    }

    /// Keys (or values) `0..keys_seen`, `[batch, keys, kv_heads, d]` -> `[batch, kv_heads, keys_seen, d]`.
    fn keys(&self, x: &Tensor<B, 4>) -> Tensor<B, 4> {
        x.clone().narrow(1, 0, self.keys_seen).swap_dims(1, 2)
    }

    /// This block's rows of a `[batch, seq, heads, d]` tensor, grouped.
    fn queries(&self, x: &Tensor<B, 4>, kv_heads: usize) -> Tensor<B, 4> {
        group_queries(x.clone().narrow(1, self.i0, self.i1 - self.i0), kv_heads)
    }

    /// This block's rows of the `[batch, heads, seq]` log-sum-exp, as `[batch, kv_heads, rows, 1]`.
    fn rows_of(&self, lse: &Tensor<B, 3>, kv_heads: usize) -> Tensor<B, 4> {
        let [batch, heads, _] = lse.dims();
        let rows = (heads / kv_heads) * (self.i1 - self.i0);
        lse.clone().narrow(2, self.i0, self.i1 - self.i0).reshape([batch, kv_heads, rows, 1])
    }
}

fn blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..seq).step_by(QUERY_BLOCK).map(move |i0| (i0, (i0 + QUERY_BLOCK).min(seq)))
}

/// Composed attention forward; see [`KernelBackend::causal_attention_forward`](super::KernelBackend::causal_attention_forward).
pub fn causal_attention_forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> AttentionSaved<B> {
    let [batch, seq, heads, _] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    mask.check(batch, seq, keys);
    let groups = heads / kv_heads;
    let device = q.device();
    let (mut outputs, mut lses) = (Vec::new(), Vec::new());
    for (i0, i1) in blocks(seq) {
        let block = QueryBlock::<B>::new(mask, [batch, groups, keys], i0, i1, &device);
        let scores = block.scores(block.queries(&q, kv_heads), block.keys(&k), scale); // [batch, kv_heads, rows, keys_seen]
        let max = scores.clone().max_dim(3);
        let exp = (scores - max.clone()).exp() * block.visible.clone();
        // The output is divided by the row sum, not multiplied by sum^-1: burn-ndarray's powf
        // is approximate (with it the ndarray logits drift 1.3e-4 from transformers').
        let sum = exp.clone().sum_dim(3); // [batch, kv_heads, rows, 1]
        let out = exp.matmul(block.keys(&v)) / sum.clone().clamp_min(TINY);
        let empty = sum.clone().lower_equal_elem(0.0);
        let lse = (max + sum.clamp_min(TINY).log()).mask_fill(empty, f32::INFINITY);
        outputs.push(ungroup_queries(out, i1 - i0));
        lses.push(lse.reshape([batch, heads, i1 - i0]));
    }
    AttentionSaved { output: Tensor::cat(outputs, 1), log_sum_exp: Tensor::cat(lses, 2) }
}

/// Composed attention backward; see [`KernelBackend::causal_attention_backward`](super::KernelBackend::causal_attention_backward).
pub fn causal_attention_backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    saved: AttentionSaved<B>,
    grad: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> AttentionGrads<B> {
    let [batch, seq, heads, d] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    let groups = heads / kv_heads;
    let device = q.device();
    let mut dq = Vec::new();
    let mut dk = Tensor::<B, 4>::zeros([batch, kv_heads, keys, d], &device);
    let mut dv = Tensor::<B, 4>::zeros([batch, kv_heads, keys, d], &device);
    for (i0, i1) in blocks(seq) {
        let block = QueryBlock::<B>::new(mask, [batch, groups, keys], i0, i1, &device);
        let (qb, kb, vb) = (block.queries(&q, kv_heads), block.keys(&k), block.keys(&v));
        let grad_out = block.queries(&grad, kv_heads); // [batch, kv_heads, rows, d]
        let out = block.queries(&saved.output, kv_heads);
        let scores = block.scores(qb.clone(), kb.clone(), scale);
        let probs = (scores - block.rows_of(&saved.log_sum_exp, kv_heads)).exp() * block.visible.clone();
        // dS = P * (dP - rowsum(dO * O)), dP = dO V^T.
        let delta = (grad_out.clone() * out).sum_dim(3);
        let dscores = probs.clone() * (grad_out.clone().matmul(vb.transpose()) - delta);
        dq.push(ungroup_queries(dscores.clone().matmul(kb).mul_scalar(scale), i1 - i0));
        let seen = [0..batch, 0..kv_heads, 0..block.keys_seen, 0..d];
        let dk_block = dscores.transpose().matmul(qb).mul_scalar(scale);
        dk = dk.clone().slice_assign(seen.clone(), dk.slice(seen.clone()) + dk_block);
        let dv_block = probs.transpose().matmul(grad_out);
        dv = dv.clone().slice_assign(seen.clone(), dv.slice(seen) + dv_block);
    }
    AttentionGrads { q: Tensor::cat(dq, 1), k: dk.swap_dims(1, 2), v: dv.swap_dims(1, 2) }
}

/// Composed LoRA projection forward: `(y, z)`.
pub fn lora_linear_forward<B: KernelBackend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let z = x.clone().matmul(a.transpose());
    // The scale goes on the small B rather than on the [tokens, d_out] update.
    let y = frozen_matmul(x, weight, true) + z.clone().matmul(b.mul_scalar(scale).transpose());
    (y, z)
}

/// Composed LoRA projection backward.
#[allow(clippy::too_many_arguments)]
pub fn lora_linear_backward<B: KernelBackend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    z: Tensor<B, 2>,
    grad: Tensor<B, 2>,
    scale: f64,
    needs: LoraNeeds,
) -> LoraGrads<B> {
    let h = grad.clone().matmul(b.mul_scalar(scale)); // [tokens, r]
    LoraGrads {
        x: needs.x.then(|| frozen_matmul(grad.clone(), weight, false) + h.clone().matmul(a)),
        weight: needs.weight.then(|| grad.clone().transpose().matmul(x.clone())),
        a: needs.a.then(|| h.transpose().matmul(x)),
        b: needs.b.then(|| grad.transpose().matmul(z).mul_scalar(scale)),
    }
}

/// Composed LM head loss: the whole `[tokens, vocab]` softmax at once.
pub fn lm_head_loss<B: KernelBackend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
    head_grad: bool,
) -> HeadLoss<B> {
    let logits = frozen_matmul(hidden.clone(), head.clone(), true); // [tokens, vocab]
    let probs = burn::tensor::activation::softmax(logits.clone(), 1);
    // log-sum-exp from the most likely token: lse = max o - log(max p), and max p >= 1/vocab.
    let lse = logits.clone().max_dim(1) - probs.clone().max_dim(1).log(); // [tokens, 1]
                                                                          // Targets of weight-0 tokens (padding) may be anything: read index 0 there instead.
    let targets = targets.mask_fill(weights.clone().equal_elem(0.0), 0).unsqueeze_dim::<2>(1); // [tokens, 1]
    let picked = logits.gather(1, targets.clone());
    let w = weights.unsqueeze_dim::<2>(1); // [tokens, 1]
    let nll = ((lse - picked) * w.clone()).sum();
    let logit_grad = (probs * w.clone()).scatter(1, targets, w.neg(), IndexingUpdateOp::Add);
    let head_grad = head_grad.then(|| logit_grad.clone().transpose().matmul(hidden));
    HeadLoss { nll, hidden_grad: frozen_matmul(logit_grad, head, false), head_grad }
}

/// Composed RMSNorm forward: `(y, rms)` with `rms = sqrt(mean(x^2) + eps)`, `[..., 1]`.
///
/// A division by `rms`, not a multiplication by its reciprocal: ndarray's SIMD reciprocal is
/// approximate (~1e-4 relative).
pub fn rms_norm_forward<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> (Tensor<B, D>, Tensor<B, D>) {
    let rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt();
    (x / rms.clone() * weight.unsqueeze(), rms)
}

/// Composed RMSNorm backward, from the `rms` of [`rms_norm_forward`].
pub fn rms_norm_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    rms: Tensor<B, D>,
    grad: Tensor<B, D>,
    weight_grad: bool,
) -> (Tensor<B, D>, Option<Tensor<B, 1>>) {
    let hidden = x.dims()[D - 1];
    let normed = x / rms.clone(); // xhat
    let dweight = weight_grad.then(|| (grad.clone() * normed.clone()).reshape([-1, hidden as i64]).sum_dim(0).reshape([hidden]));
    let weighted = grad * weight.unsqueeze();
    let dot = (normed.clone() * weighted.clone()).mean_dim(D - 1);
    ((weighted - normed * dot) / rms, dweight)
}

/// Composed SwiGLU: `silu(gate) * up`.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::silu(gate) * up
}

/// Composed SwiGLU backward.
pub fn swiglu_backward<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let sig = burn::tensor::activation::sigmoid(gate.clone());
    let silu = gate.clone() * sig.clone();
    // d silu / d gate = s + gate s (1 - s) = s (1 + gate (1 - s))
    let dsilu = sig.clone() * (gate * sig.neg().add_scalar(1.0)).add_scalar(1.0);
    (grad.clone() * up * dsilu, grad * silu)
}

/// Composed rotate-half RoPE.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 3>, sin: Tensor<B, 3>) -> Tensor<B, 4> {
    let [_, _, _, d] = x.dims();
    let half = d / 2;
    let (cos, sin) = (cos.unsqueeze_dim::<4>(2), sin.unsqueeze_dim::<4>(2)); // [batch or 1, seq, 1, half]
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let y1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let y2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![y1, y2], 3)
}
