//! The kernels on burn-flex: fused, multithreaded (rayon, the pool flex itself uses) loops over
//! flex's f32 buffers.
//!
//! A flex tensor (`FlexTensor`) is an `Arc`'d byte buffer with a layout; the kernels make
//! their inputs contiguous (free when they already are), read them as `&[f32]`, and build their
//! outputs from `Vec<f32>` without a copy. Frozen weights stored in bf16 or f16 are widened to
//! f32 at each call ([`KernelBackend::WIDENS_FROZEN_WEIGHTS`]: flex's own bf16 matmul widens
//! both operands anyway); any other tensor of another dtype takes the composed path.

use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::{composed, AttentionGrads, AttentionMask, AttentionSaved, HeadLoss, KernelBackend, LoraGrads, LoraNeeds};

pub mod attention;
mod elementwise;
mod gemm;
mod head;
mod linear;
pub(crate) mod simd;

/// A contiguous f32 flex buffer of `x`, or `None` when x holds another dtype.
fn buffer<const D: usize>(x: &Tensor<Flex, D>) -> Option<FlexTensor> {
    let t = x.clone().into_primitive().tensor();
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// The elements of a contiguous f32 buffer.
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 buffer")
}

/// A flex tensor owning `data` (no copy).
fn tensor<const D: usize>(data: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(data, shape))))
}

/// `weight` as f32, converted in parallel chunks when it is stored as bf16 or f16 (flex's own
/// cast goes through an f64 copy, three times the f32 size).
fn widen_to_f32<const D: usize>(weight: Tensor<Flex, D>) -> Tensor<Flex, D> {
    let Some(narrow) = narrow_buffer(&weight) else {
        return weight.cast(FloatDType::F32); // a no-op for f32
    };
    let n = weight.shape().num_elements();
    let mut out = vec![0f32; n];
    narrow.widen(0, n, &mut out);
    tensor(out, weight.shape())
}

/// A contiguous bf16 or f16 buffer.
struct NarrowBuffer(FlexTensor);

impl NarrowBuffer {
    /// Elements `start..end` widened into `out`.
    fn widen(&self, start: usize, end: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let t = &self.0;
        if t.dtype() == DType::BF16 {
            let src = &t.as_slice::<half::bf16>().expect("a contiguous bf16 buffer")[start..end];
            out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o));
        } else {
            let src = &t.as_slice::<half::f16>().expect("a contiguous f16 buffer")[start..end];
            out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o));
        }
    }
}

/// `x`'s buffer when it holds bf16 or f16, made contiguous.
fn narrow_buffer<const D: usize>(x: &Tensor<Flex, D>) -> Option<NarrowBuffer> {
    let t = x.clone().into_primitive().tensor();
    matches!(t.dtype(), DType::BF16 | DType::F16).then(|| NarrowBuffer(t.to_contiguous()))
}

fn attention_dims(q: &Tensor<Flex, 4>, k: &Tensor<Flex, 4>) -> attention::Dims {
    let [batch, seq, heads, head_dim] = q.dims();
    let [_, keys, kv_heads, _] = k.dims();
    assert_eq!(heads % kv_heads, 0, "attention: {heads} query heads are not a multiple of {kv_heads} kv heads");
    attention::Dims { batch, seq, keys, heads, kv_heads, head_dim }
}

fn lora_dims(x: &Tensor<Flex, 2>, weight: &Tensor<Flex, 2>, a: &Tensor<Flex, 2>) -> linear::LoraDims {
    let [tokens, d_in] = x.dims();
    let [d_out, w_in] = weight.dims();
    let [rank, a_in] = a.dims();
    assert!(w_in == d_in && a_in == d_in, "lora_linear: input width {d_in}, weight {w_in}, A {a_in}");
    linear::LoraDims { tokens, d_in, d_out, rank }
}

impl KernelBackend for Flex {
    const WIDENS_FROZEN_WEIGHTS: bool = true;

    fn widen_weight<const D: usize>(weight: Tensor<Self, D>, dtype: FloatDType) -> Tensor<Self, D> {
        match dtype {
            FloatDType::F32 => widen_to_f32(weight),
            other => weight.cast(other),
        }
    }

    fn causal_attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> AttentionSaved<Self> {
        let (Some(qb), Some(kb), Some(vb)) = (buffer(&q), buffer(&k), buffer(&v)) else {
            return composed::causal_attention_forward(q, k, v, mask, scale);
        };
        let dims = attention_dims(&q, &k);
        mask.check(dims.batch, dims.seq, dims.keys);
        let (out, lse) = attention::forward(values(&qb), values(&kb), values(&vb), dims, mask, scale as f32);
        AttentionSaved { output: tensor(out, q.dims()), log_sum_exp: tensor(lse, [dims.batch, dims.heads, dims.seq]) }
    }

    fn causal_attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        saved: AttentionSaved<Self>,
        grad: Tensor<Self, 4>,
        mask: &AttentionMask,
        scale: f64,
    ) -> AttentionGrads<Self> {
        let buffers = [buffer(&q), buffer(&k), buffer(&v), buffer(&saved.output), buffer(&saved.log_sum_exp), buffer(&grad)];
        let [Some(qb), Some(kb), Some(vb), Some(ob), Some(lb), Some(gb)] = buffers else {
            return composed::causal_attention_backward(q, k, v, saved, grad, mask, scale);
        };
        let dims = attention_dims(&q, &k);
        let inputs = attention::BackwardInputs {
            q: values(&qb),
            k: values(&kb),
            v: values(&vb),
            out: values(&ob),
            lse: values(&lb),
            grad: values(&gb),
        };
        let (dq, dk, dv) = attention::backward(inputs, dims, mask, scale as f32);
        AttentionGrads { q: tensor(dq, q.dims()), k: tensor(dk, k.dims()), v: tensor(dv, v.dims()) }
    }

    fn lora_linear_forward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 2>,
        scale: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let weight = widen_to_f32(weight);
        let [Some(xb), Some(wb), Some(ab), Some(bb)] = [buffer(&x), buffer(&weight), buffer(&a), buffer(&b)] else {
            return composed::lora_linear_forward(x, weight, a, b, scale);
        };
        let dims = lora_dims(&x, &weight, &a);
        let (y, z) = linear::forward(values(&xb), values(&wb), values(&ab), values(&bb), scale as f32, dims);
        (tensor(y, [dims.tokens, dims.d_out]), tensor(z, [dims.tokens, dims.rank]))
    }

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
        let weight = widen_to_f32(weight);
        let buffers = [buffer(&x), buffer(&weight), buffer(&a), buffer(&b), buffer(&z), buffer(&grad)];
        let [Some(xb), Some(wb), Some(ab), Some(bb), Some(zb), Some(gb)] = buffers else {
            return composed::lora_linear_backward(x, weight, a, b, z, grad, scale, needs);
        };
        let d = lora_dims(&x, &weight, &a);
        let flags = [needs.x, needs.weight, needs.a, needs.b];
        let [dx, dw, da, db] =
            linear::backward(values(&xb), values(&wb), values(&ab), values(&bb), values(&zb), values(&gb), scale as f32, d, flags);
        LoraGrads {
            x: dx.map(|g| tensor(g, [d.tokens, d.d_in])),
            weight: dw.map(|g| tensor(g, [d.d_out, d.d_in])),
            a: da.map(|g| tensor(g, [d.rank, d.d_in])),
            b: db.map(|g| tensor(g, [d.d_out, d.rank])),
        }
    }

    fn lm_head_loss(
        hidden: Tensor<Self, 2>,
        head: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        weights: Tensor<Self, 1>,
        head_grad: bool,
    ) -> HeadLoss<Self> {
        if let (Some(hb), Some(lb), Some(narrow), false) = (buffer(&hidden), buffer(&weights), narrow_buffer(&head), head_grad) {
            // A bf16/f16 head is widened a chunk of rows at a time, never whole.
            let targets: Vec<i64> = targets.into_data().convert::<i64>().to_vec().expect("integer targets");
            let [tokens, d] = hidden.dims();
            let vocab = head.dims()[0];
            let (nll, dh) =
                head::head_loss_chunked(values(&hb), vocab, |v0, v1, out| narrow.widen(v0 * d, v1 * d, out), &targets, values(&lb), d);
            return HeadLoss { nll: tensor(vec![nll as f32], [1]), hidden_grad: tensor(dh, [tokens, d]), head_grad: None };
        }
        let head = widen_to_f32(head);
        let [Some(hb), Some(wb), Some(lb)] = [buffer(&hidden), buffer(&head), buffer(&weights)] else {
            return composed::lm_head_loss(hidden, head, targets, weights, head_grad);
        };
        let targets: Vec<i64> = targets.into_data().convert::<i64>().to_vec().expect("integer targets");
        let [tokens, d] = hidden.dims();
        let (nll, dh, dw) = head::head_loss(values(&hb), values(&wb), &targets, values(&lb), d, head_grad);
        HeadLoss {
            nll: tensor(vec![nll as f32], [1]),
            hidden_grad: tensor(dh, [tokens, d]),
            head_grad: dw.map(|dw| tensor(dw, head.dims())),
        }
    }

    fn rms_norm_forward<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> (Tensor<Self, D>, Tensor<Self, D>) {
        let (Some(xb), Some(wb)) = (buffer(&x), buffer(&weight)) else {
            return composed::rms_norm_forward(x, weight, eps);
        };
        let (y, rms) = elementwise::rms_norm_forward(values(&xb), values(&wb), eps as f32);
        let mut rms_shape = x.dims();
        rms_shape[D - 1] = 1;
        (tensor(y, x.dims()), tensor(rms, rms_shape))
    }

    fn rms_norm_backward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        rms: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        weight_grad: bool,
    ) -> (Tensor<Self, D>, Option<Tensor<Self, 1>>) {
        let [Some(xb), Some(wb), Some(rb), Some(gb)] = [buffer(&x), buffer(&weight), buffer(&rms), buffer(&grad)] else {
            return composed::rms_norm_backward(x, weight, rms, grad, weight_grad);
        };
        let (dx, dw) = elementwise::rms_norm_backward(values(&xb), values(&wb), values(&rb), values(&gb), weight_grad);
        (tensor(dx, x.dims()), dw.map(|dw| tensor(dw, weight.dims())))
    }

    fn swiglu<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        let (Some(gb), Some(ub)) = (buffer(&gate), buffer(&up)) else {
            return composed::swiglu(gate, up);
        };
        tensor(elementwise::swiglu(values(&gb), values(&ub)), gate.dims())
    }

    fn swiglu_backward<const D: usize>(
        gate: Tensor<Self, D>,
        up: Tensor<Self, D>,
        grad: Tensor<Self, D>,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        let [Some(gb), Some(ub), Some(db)] = [buffer(&gate), buffer(&up), buffer(&grad)] else {
            return composed::swiglu_backward(gate, up, grad);
        };
        let (dgate, dup) = elementwise::swiglu_backward(values(&gb), values(&ub), values(&db));
        (tensor(dgate, gate.dims()), tensor(dup, up.dims()))
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 3>, sin: Tensor<Self, 3>) -> Tensor<Self, 4> {
        let [Some(xb), Some(cb), Some(sb)] = [buffer(&x), buffer(&cos), buffer(&sin)] else {
            return composed::rope(x, cos, sin);
        };
        let [batch, seq, heads, head_dim] = x.dims();
        let table_batch = cos.dims()[0];
        assert!(table_batch == 1 || table_batch == batch, "rope: tables for {table_batch} rows, input has {batch}");
        let shape = elementwise::RopeShape { batch, seq, heads, head_dim, per_row_tables: table_batch > 1 };
        tensor(elementwise::rope(values(&xb), values(&cb), values(&sb), shape), x.dims())
    }
}
