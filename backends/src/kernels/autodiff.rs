//! The kernels on `Autodiff<B>`: each op is one node of the autodiff graph whose backward step
//! calls the inner backend's backward kernel (burn-autodiff's custom-backward mechanism:
//! [`Backward`], `prepare`, [`OpsKind`]), instead of one node per elementary op.
//!
//! The state each node keeps is what the backward kernel needs and nothing else: attention
//! keeps q, k, v, its output and one log-sum-exp per query row (not the probabilities);
//! RMSNorm keeps x and one rms per row; SwiGLU keeps its two inputs; RoPE keeps the tables.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{AttentionMask, AttentionSaved, KernelBackend, LoraNeeds};

type AD<B, C> = Autodiff<B, C>;

/// The autodiff primitive of a tensor (its inner value plus its graph node).
fn primitive<B: Backend, C: CheckpointStrategy, const D: usize>(x: Tensor<AD<B, C>, D>) -> FloatTensor<AD<B, C>> {
    x.into_primitive().tensor()
}

/// An inner-backend tensor from a float primitive.
fn inner<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// An inner-backend tensor's float primitive.
fn raw<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn wrap<B: Backend, C: CheckpointStrategy, const D: usize>(x: FloatTensor<AD<B, C>>) -> Tensor<AD<B, C>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

// ---------------------------------------------------------------------------------------------
// Attention

#[derive(Debug)]
struct AttentionBackward;

/// q, k, v, output, log-sum-exp, mask, scale.
type AttentionState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, AttentionMask, f64);

impl<B: KernelBackend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, output, lse, mask, scale) = ops.state;
        let saved = AttentionSaved { output: inner(output), log_sum_exp: inner(lse) };
        let g = B::causal_attention_backward(inner(q), inner(k), inner(v), saved, inner(grad), &mask, scale);
        for (node, g) in [(node_q, g.q), (node_k, g.k), (node_v, g.v)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, raw(g));
            }
        }
    }
}

/// Attention on `Autodiff<B>`: the inner backend's forward, one graph node, and the inner
/// backend's backward.
pub fn attention<B: KernelBackend, C: CheckpointStrategy>(
    q: Tensor<AD<B, C>, 4>,
    k: Tensor<AD<B, C>, 4>,
    v: Tensor<AD<B, C>, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<AD<B, C>, 4> {
    let (q, k, v) = (primitive(q), primitive(k), primitive(v));
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let out = match AttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let saved = B::causal_attention_forward(
                inner(q.primitive.clone()),
                inner(k.primitive.clone()),
                inner(v.primitive.clone()),
                mask,
                scale,
            );
            let output = raw(saved.output);
            let state = (q.primitive, k.primitive, v.primitive, output.clone(), raw(saved.log_sum_exp), mask.clone(), scale);
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(raw(<B as KernelBackend>::causal_attention(
            inner(q.primitive),
            inner(k.primitive),
            inner(v.primitive),
            mask,
            scale,
        ))),
    };
    wrap(out)
}

// ---------------------------------------------------------------------------------------------
// LoRA projection

#[derive(Debug)]
struct LoraLinearBackward;

impl<B: KernelBackend> Backward<B, 4> for LoraLinearBackward {
    /// x, weight, a, b, z, scale.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, a, b, z, scale) = ops.state;
        let needs = LoraNeeds { x: node_x.is_some(), weight: node_w.is_some(), a: node_a.is_some(), b: node_b.is_some() };
        let g = B::lora_linear_backward(inner(x), inner(weight), inner(a), inner(b), inner(z), inner(grad), scale, needs);
        for (node, g) in [(node_x, g.x), (node_w, g.weight), (node_a, g.a), (node_b, g.b)] {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, raw(g));
            }
        }
    }
}

/// A LoRA projection on `Autodiff<B>` (see [`KernelBackend::lora_linear`]): one graph node
/// instead of the dozen a composed projection records.
pub fn lora_linear<B: KernelBackend, C: CheckpointStrategy>(
    x: Tensor<AD<B, C>, 2>,
    weight: Tensor<AD<B, C>, 2>,
    a: Tensor<AD<B, C>, 2>,
    b: Tensor<AD<B, C>, 2>,
    scale: f64,
) -> Tensor<AD<B, C>, 2> {
    let (x, w, a, b) = (primitive(x), primitive(weight), primitive(a), primitive(b));
    let nodes = [x.node.clone(), w.node.clone(), a.node.clone(), b.node.clone()];
    let out = match LoraLinearBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, z) = B::lora_linear_forward(
                inner(x.primitive.clone()),
                inner(w.primitive.clone()),
                inner(a.primitive.clone()),
                inner(b.primitive.clone()),
                scale,
            );
            prep.finish((x.primitive, w.primitive, a.primitive, b.primitive, raw(z), scale), raw(y))
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(raw(B::lora_linear(inner(x.primitive), inner(w.primitive), inner(a.primitive), inner(b.primitive), scale)))
        }
    };
    wrap(out)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

#[derive(Debug)]
struct RmsNormBackward<const D: usize>;

impl<B: KernelBackend, const D: usize> Backward<B, 2> for RmsNormBackward<D> {
    /// x, weight, rms.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, rms) = ops.state;
        let (dx, dw) = B::rms_norm_backward::<D>(inner(x), inner(weight), inner(rms), inner(grad), node_w.is_some());
        if let Some(node) = node_x {
            grads.register::<B>(node.id, raw(dx));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<B>(node.id, raw(dw));
        }
    }
}

/// RMSNorm on `Autodiff<B>` (see [`KernelBackend::rms_norm`]).
pub fn rms_norm<B: KernelBackend, C: CheckpointStrategy, const D: usize>(
    x: Tensor<AD<B, C>, D>,
    weight: Tensor<AD<B, C>, 1>,
    eps: f64,
) -> Tensor<AD<B, C>, D> {
    let (x, weight) = (primitive(x), primitive(weight));
    let out = match RmsNormBackward::<D>.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, rms) = B::rms_norm_forward::<D>(inner(x.primitive.clone()), inner(weight.primitive.clone()), eps);
            prep.finish((x.primitive, weight.primitive, raw(rms)), raw(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(raw(B::rms_norm::<D>(inner(x.primitive), inner(weight.primitive), eps))),
    };
    wrap(out)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

#[derive(Debug)]
struct SwigluBackward<const D: usize>;

impl<B: KernelBackend, const D: usize> Backward<B, 2> for SwigluBackward<D> {
    /// gate, up.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (dgate, dup) = B::swiglu_backward::<D>(inner(gate), inner(up), inner(grad));
        if let Some(node) = node_gate {
            grads.register::<B>(node.id, raw(dgate));
        }
        if let Some(node) = node_up {
            grads.register::<B>(node.id, raw(dup));
        }
    }
}

/// SwiGLU on `Autodiff<B>` (see [`KernelBackend::swiglu`]).
pub fn swiglu<B: KernelBackend, C: CheckpointStrategy, const D: usize>(
    gate: Tensor<AD<B, C>, D>,
    up: Tensor<AD<B, C>, D>,
) -> Tensor<AD<B, C>, D> {
    let (gate, up) = (primitive(gate), primitive(up));
    let out = match SwigluBackward::<D>.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = B::swiglu::<D>(inner(gate.primitive.clone()), inner(up.primitive.clone()));
            prep.finish((gate.primitive, up.primitive), raw(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(raw(B::swiglu::<D>(inner(gate.primitive), inner(up.primitive)))),
    };
    wrap(out)
}

// ---------------------------------------------------------------------------------------------
// RoPE

#[derive(Debug)]
struct RopeBackward;

impl<B: KernelBackend> Backward<B, 1> for RopeBackward {
    /// cos, sin (constants).
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = node_x {
            // The transpose of a rotation is the rotation by the opposite angle.
            let sin: Tensor<B, 3> = inner(sin);
            grads.register::<B>(node.id, raw(B::rope(inner(grad), inner(cos), sin.neg())));
        }
    }
}

/// RoPE on `Autodiff<B>` (see [`KernelBackend::rope`]). The tables get no gradient.
pub fn rope<B: KernelBackend, C: CheckpointStrategy>(
    x: Tensor<AD<B, C>, 4>,
    cos: Tensor<AD<B, C>, 3>,
    sin: Tensor<AD<B, C>, 3>,
) -> Tensor<AD<B, C>, 4> {
    let x = primitive(x);
    let (cos, sin) = (primitive(cos).primitive, primitive(sin).primitive);
    let out = match RopeBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = B::rope(inner(x.primitive), inner(cos.clone()), inner(sin.clone()));
            prep.finish((cos, sin), raw(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(raw(B::rope(inner(x.primitive), inner(cos), inner(sin)))),
    };
    wrap(out)
}
