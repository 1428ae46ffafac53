//! A copy of a model laid out for decoding, where each step multiplies a few rows by every
//! weight and per-call overheads dominate.

use burn::tensor::{FloatDType, Tensor};

use crate::llama::Llama;
use crate::lora::{frozen_param, LoraLinear};
use crate::KernelBackend;

/// A copy of `model` for greedy or sampled decoding, computing the same function:
///
/// - every adapter is folded into its base weight, `W = W0 + s (B A - B0 A0)` (one matmul per
///   projection instead of three to five);
/// - every projection weight `W: [d_out, d_in]` is stored as the transposed view of a
///   contiguous `[d_in, d_out]` matrix, the layout in which `x W^T` reads its right operand
///   row by row: on burn-flex a gemm with a few rows then skips repacking the weight
///   at every call (decoding steps at batch 8 on the bundled model: ~25% faster).
///
/// - on a backend that widens bf16/f16 weights at each product (flex), the copy is f32, so a
///   decoding step does not convert every weight again.
///
/// Logits differ from the unmerged model's by float rounding only. The copy holds a second
/// set of projection weights while it lives (the input model is left as it was). The LM head
/// keeps its layout and type: re-laying it out would copy the (often tied) embedding matrix for
/// a few percent.
pub fn decoding_model<B: KernelBackend>(model: &Llama<B>) -> Llama<B> {
    let mut model = model.clone();
    if B::WIDENS_FROZEN_WEIGHTS {
        // Widened before merging, so the merged weights are not rounded back to bf16/f16.
        for layer in &mut model.layers {
            for (_, projection) in layer.projections_mut() {
                projection.weight = frozen_param(B::widen_weight(projection.weight.val(), FloatDType::F32));
            }
        }
    }
    let mut model = model.merge_adapters();
    for layer in &mut model.layers {
        for (_, projection) in layer.projections_mut() {
            *projection = LoraLinear::frozen(row_major_transpose(projection.weight.val()));
        }
    }
    model
}

/// `weight` (`[rows, cols]`) as the transposed view of a contiguous `[cols, rows]` copy.
fn row_major_transpose<B: KernelBackend>(weight: Tensor<B, 2>) -> Tensor<B, 2> {
    let (device, dtype) = (weight.device(), weight.dtype());
    Tensor::<B, 2>::from_data(weight.transpose().into_data(), (&device, dtype)).transpose()
}
