//! The operations lalora's model runs through a backend-extension trait, so that a backend can
//! replace the composed burn ops by a fused kernel (forward and backward) without any change to
//! the model code.
//!
//! [`KernelBackend`]'s default methods are written in burn's portable tensor API ([`composed`])
//! and run unchanged on every backend; a backend overrides a method where it has something
//! faster (flex: [`flex`]; wgpu and cuda: burn's fused attention for inference). `Autodiff<B>`
//! implements the trait for every `B: KernelBackend` with one custom backward step per op
//! ([`autodiff`]), so training runs the inner backend's forward and backward kernels instead of
//! recording every elementary op.
//!
//! Each differentiable op comes as a triple: `op` (the value), `op_forward` (the value plus what
//! the backward needs, e.g. attention's per-row log-sum-exp) and `op_backward` (the gradients
//! from that saved state). A backend overrides the forward and backward together.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Int, Tensor};

mod attention_mask;
pub mod autodiff;
pub mod composed;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cubecl;
#[cfg(feature = "flex")]
pub mod flex;

pub use attention_mask::AttentionMask;

/// What the attention backward needs from the forward: the output and each query row's
/// log-sum-exp of its (scaled, masked) scores.
#[derive(Debug, Clone)]
pub struct AttentionSaved<B: Backend> {
    /// `[batch, seq, heads, head_dim]`, the attention output.
    pub output: Tensor<B, 4>,
    /// `[batch, heads, seq]`, `log sum_j exp(scale q_i . k_j)` over the keys row i may see. A
    /// row that sees no key has `+inf` here (its probabilities are all zero).
    pub log_sum_exp: Tensor<B, 3>,
}

/// Gradients of attention w.r.t. its three inputs, in the inputs' shapes.
#[derive(Debug, Clone)]
pub struct AttentionGrads<B: Backend> {
    /// `[batch, seq, heads, head_dim]`
    pub q: Tensor<B, 4>,
    /// `[batch, keys, kv_heads, head_dim]`
    pub k: Tensor<B, 4>,
    /// `[batch, keys, kv_heads, head_dim]`
    pub v: Tensor<B, 4>,
}

/// Which inputs of a LoRA projection need a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraNeeds {
    /// The projection's input.
    pub x: bool,
    /// The base weight (frozen in LoRA training, trained in full pretraining).
    pub weight: bool,
    /// The adapter's A.
    pub a: bool,
    /// The adapter's B.
    pub b: bool,
}

/// Gradients of a LoRA projection, `None` where [`LoraNeeds`] did not ask.
#[derive(Debug, Clone)]
pub struct LoraGrads<B: Backend> {
    /// `[tokens, d_in]`
    pub x: Option<Tensor<B, 2>>,
    /// `[d_out, d_in]`
    pub weight: Option<Tensor<B, 2>>,
    /// `[r, d_in]`
    pub a: Option<Tensor<B, 2>>,
    /// `[d_out, r]`
    pub b: Option<Tensor<B, 2>>,
}

/// The language-model head's loss and gradients (see [`KernelBackend::lm_head_loss`]).
#[derive(Debug, Clone)]
pub struct HeadLoss<B: Backend> {
    /// `[1]`: `sum_t w_t (-log softmax(o_t)[y_t])`.
    pub nll: Tensor<B, 1>,
    /// `[tokens, hidden]`: dL/dh.
    pub hidden_grad: Tensor<B, 2>,
    /// `[vocab, hidden]`: dL/dW, when asked for.
    pub head_grad: Option<Tensor<B, 2>>,
}

/// A burn backend with lalora's model kernels.
///
/// # Frozen weights in a narrower float type
/// The frozen base weights (projections, LM head) may be stored in bf16 or f16 while
/// activations, adapters and gradients stay f32. [`frozen_matmul`] multiplies such a weight in
/// one of two ways, chosen by [`Self::WIDENS_FROZEN_WEIGHTS`]: autocast's (the activations are
/// rounded to the weight's type and the product runs there, as on GPUs with bf16 units) or
/// widening (the weight is converted to f32 at the call and the product runs in f32, for CPU
/// backends that have no bf16 arithmetic of their own).
///
/// # Attention layout
/// Queries come as `[batch, seq, heads, head_dim]` and keys/values as
/// `[batch, keys, kv_heads, head_dim]`, the layouts the projections produce, so no transpose
/// is needed on either side. Query head `h` reads key/value head `h / (heads / kv_heads)`
/// (HF's `repeat_kv` order); k and v are never repeated. Which keys a query may see is given
/// by an [`AttentionMask`] (causal with a cache offset, and key padding).
pub trait KernelBackend: Backend {
    /// Whether [`frozen_matmul`] widens a narrower frozen weight to the activations' type (true)
    /// or rounds the activations to the weight's type (false, autocast's way).
    const WIDENS_FROZEN_WEIGHTS: bool = false;

    /// Whether the backend runs on a GPU: `--dtype auto` then keeps a checkpoint's own float type.
    const GPU: bool = false;

    /// A frozen weight (never requiring a gradient) converted to `dtype`; a no-op when it already
    /// has it. A backend may override this with a faster conversion than its `cast`.
    fn widen_weight<const D: usize>(weight: Tensor<Self, D>, dtype: FloatDType) -> Tensor<Self, D> {
        weight.cast(dtype)
    }

    /// Scaled dot-product attention: `o_i = sum_j softmax_j(scale q_i . k_j) v_j` over the keys
    /// j that query i may see (`mask`). A query that sees no key gets a zero output.
    ///
    /// # Shapes
    /// - q: `[batch, seq, heads, head_dim]`
    /// - k, v: `[batch, keys, kv_heads, head_dim]`, `heads` a multiple of `kv_heads`
    /// - output: `[batch, seq, heads, head_dim]`
    fn causal_attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &AttentionMask, scale: f64) -> Tensor<Self, 4> {
        Self::causal_attention_forward(q, k, v, mask, scale).output
    }

    /// [`Self::causal_attention`], also returning the per-row log-sum-exp that
    /// [`Self::causal_attention_backward`] needs. The default works on query blocks, so its scratch
    /// memory is O(block x keys) per head, never O(seq x keys).
    fn causal_attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> AttentionSaved<Self> {
        composed::causal_attention_forward(q, k, v, mask, scale)
    }

    /// Gradients of [`Self::causal_attention`] given the output gradient `grad`
    /// (`[batch, seq, heads, head_dim]`). The probabilities are recomputed block by block from
    /// `saved.log_sum_exp`, so memory stays O(block x keys) per head.
    fn causal_attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        saved: AttentionSaved<Self>,
        grad: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> AttentionGrads<Self> {
        composed::causal_attention_backward(q, k, v, saved, grad, mask, scale)
    }

    /// A LoRA projection as one op: `y = x W^T + scale z B^T` with `z = x A^T`.
    ///
    /// # Shapes
    /// - x: `[tokens, d_in]`, weight: `[d_out, d_in]`, a: `[r, d_in]`, b: `[d_out, r]`
    /// - output: `[tokens, d_out]`
    fn lora_linear(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, a: Tensor<Self, 2>, b: Tensor<Self, 2>, scale: f64) -> Tensor<Self, 2> {
        Self::lora_linear_forward(x, weight, a, b, scale).0
    }

    /// [`Self::lora_linear`], also returning `z = x A^T` (`[tokens, r]`) for the backward.
    fn lora_linear_forward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 2>,
        scale: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        composed::lora_linear_forward(x, weight, a, b, scale)
    }

    /// Gradients of [`Self::lora_linear`] given `grad = dL/dy`: with `h = scale grad B`,
    /// `dx = grad W + h A`, `dW = grad^T x`, `dA = h^T x`, `dB = scale grad^T z`.
    #[allow(clippy::too_many_arguments)]
    fn lora_linear_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 2>,
        z: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
        scale: f64,
        needs: LoraNeeds,
    ) -> LoraGrads<Self> {
        composed::lora_linear_backward(x, weight, a, b, z, grad, scale, needs)
    }

    /// The LM head and its cross-entropy with closed-form gradients, no autodiff: for logits
    /// `o_t = W h_t`, labels `y_t` and weights `w_t`, `L = sum_t w_t CE(o_t, y_t)`,
    /// `dL/do_t = w_t (softmax(o_t) - e_{y_t})`, `dL/dh = (dL/do) W` and `dL/dW = (dL/do)^T h`.
    /// A backend may work through the tokens in blocks so the `[tokens, vocab]` logits never
    /// exist at once.
    ///
    /// # Shapes
    /// - hidden: `[tokens, hidden]`, head: `[vocab, hidden]`
    /// - targets, weights: `[tokens]` (a target is only read where its weight is not 0)
    fn lm_head_loss(
        hidden: Tensor<Self, 2>,
        head: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        weights: Tensor<Self, 1>,
        head_grad: bool,
    ) -> HeadLoss<Self> {
        composed::lm_head_loss(hidden, head, targets, weights, head_grad)
    }

    /// RMSNorm over the last axis: `y = x / rms * weight`, `rms = sqrt(mean(x^2) + eps)`.
    ///
    /// # Shapes
    /// - x: `[..., hidden]`, weight: `[hidden]` -> `[..., hidden]`
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        Self::rms_norm_forward(x, weight, eps).0
    }

    /// [`Self::rms_norm`], also returning `rms = sqrt(mean(x^2) + eps)` (`[..., 1]`) for the
    /// backward.
    fn rms_norm_forward<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> (Tensor<Self, D>, Tensor<Self, D>) {
        composed::rms_norm_forward(x, weight, eps)
    }

    /// Gradients of [`Self::rms_norm`] w.r.t. x and weight, given `grad = dL/dy`:
    /// `dx = (w*g - xhat * mean(xhat * w*g)) / rms` with `xhat = x / rms`, and
    /// `dweight = sum over rows of g * xhat` (only computed when `weight_grad`).
    fn rms_norm_backward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        rms: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        weight_grad: bool,
    ) -> (Tensor<Self, D>, Option<Tensor<Self, 1>>) {
        composed::rms_norm_backward(x, weight, rms, grad, weight_grad)
    }

    /// SwiGLU's gate: `silu(gate) * up`, element-wise.
    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        composed::swiglu(gate, up)
    }

    /// Gradients of [`Self::swiglu`] w.r.t. gate and up: with `s = sigmoid(gate)`,
    /// `dgate = grad * up * s * (1 + gate * (1 - s))` and `dup = grad * gate * s`.
    fn swiglu_backward<const D: usize>(
        gate: Tensor<Self, D>,
        up: Tensor<Self, D>,
        grad: Tensor<Self, D>,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        composed::swiglu_backward(gate, up, grad)
    }

    /// Rotate-half RoPE: with `x = [x1, x2]` (the two halves of the head dimension),
    /// `y = [x1 cos - x2 sin, x2 cos + x1 sin]`. Its backward is the same rotation with `-sin`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, heads, head_dim]`
    /// - cos, sin: `[batch or 1, seq, head_dim / 2]`
    /// - output: `[batch, seq, heads, head_dim]`
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 3>, sin: Tensor<Self, 3>) -> Tensor<Self, 4> {
        composed::rope(x, cos, sin)
    }
}

/// Rows of a bf16/f16 LM head widened to f32 at a time where a backend widens frozen weights
/// ([`KernelBackend::WIDENS_FROZEN_WEIGHTS`]): the whole head would be 2 GiB of f32 at 8B,
/// 8192 x 4096 f32 is 128 MiB. flex's training loss kernel and lalora's eval and capture head
/// products use the same blocks.
pub const HEAD_ROWS_PER_WIDENING: usize = 8192;

/// `lhs W^T` (`transpose`) or `lhs W` for a frozen weight `W` that may be stored in a narrower
/// float type than `lhs`; the result has `lhs`'s type. See [`KernelBackend`] for the two ways.
pub fn frozen_matmul<B: KernelBackend>(lhs: Tensor<B, 2>, weight: Tensor<B, 2>, transpose: bool) -> Tensor<B, 2> {
    let orient = |w: Tensor<B, 2>| if transpose { w.transpose() } else { w };
    let (lhs_dtype, weight_dtype) = (lhs.dtype(), weight.dtype());
    if lhs_dtype == weight_dtype {
        lhs.matmul(orient(weight))
    } else if B::WIDENS_FROZEN_WEIGHTS {
        lhs.matmul(orient(B::widen_weight(weight, float_dtype(lhs_dtype))))
    } else {
        lhs.cast(weight_dtype).matmul(orient(weight)).cast(lhs_dtype)
    }
}

/// The float variant of a tensor's dtype.
fn float_dtype(dtype: DType) -> FloatDType {
    dtype.into()
}

impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    const WIDENS_FROZEN_WEIGHTS: bool = B::WIDENS_FROZEN_WEIGHTS;
    const GPU: bool = B::GPU;

    fn widen_weight<const D: usize>(weight: Tensor<Self, D>, dtype: FloatDType) -> Tensor<Self, D> {
        // A trained weight converts through the graph; a frozen one with the inner kernel.
        if weight.is_require_grad() {
            weight.cast(dtype)
        } else {
            Tensor::from_inner(B::widen_weight(weight.inner(), dtype))
        }
    }

    fn causal_attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: &AttentionMask, scale: f64) -> Tensor<Self, 4> {
        autodiff::attention::<B, C>(q, k, v, mask, scale)
    }

    fn lora_linear(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, a: Tensor<Self, 2>, b: Tensor<Self, 2>, scale: f64) -> Tensor<Self, 2> {
        autodiff::lora_linear::<B, C>(x, weight, a, b, scale)
    }

    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        autodiff::rms_norm::<B, C, D>(x, weight, eps)
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        autodiff::swiglu::<B, C, D>(gate, up)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 3>, sin: Tensor<Self, 3>) -> Tensor<Self, 4> {
        autodiff::rope::<B, C>(x, cos, sin)
    }
}

/// An autodiff backend whose inner backend has the kernels too (training runs on the former,
/// evaluation on the latter).
pub trait KernelAutodiffBackend: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend {}

impl<B: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend> KernelAutodiffBackend for B {}
