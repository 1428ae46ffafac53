//! Per-layer activation checkpointing (`--gradient-checkpointing`): the training objective's
//! gradients with only each decoder layer's input kept from the forward, instead of every
//! activation of every layer.
//!
//! The forward runs without a graph (on the inner backend) and keeps the residual stream at
//! each layer's input. The backward then goes layer by layer from the top: the final norm and
//! the LM head's loss from a leaf at the last layer's output give `dL/dx_L`; each layer is
//! recomputed on the autodiff backend from a leaf holding its input, and one backward of
//! `sum(y * dL/dy)` gives its LoRA gradients and `dL/dx`, which the layer below receives.
//! Peak activation memory is one layer's graph plus the kept inputs (`layers x tokens x
//! hidden` floats), at the price of a second forward of every layer.
//!
//! burn's own `BalancedCheckpointing` recomputes only cheap element-wise ops (about 10% less
//! memory on a Llama-like model), and a custom autodiff op that recomputes a layer inside its
//! backward deadlocks in burn 0.21 (a nested `backward()` locks the running graph), hence this
//! loop over the public API.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{ElementConversion, Tensor};

use crate::data::Batch;
use crate::error::{Error, Result};
use crate::llama::Llama;
use crate::{KernelAutodiffBackend, KernelBackend};

/// Adds to `accumulator` the gradients of `share x` the token-mean NLL of `batch` w.r.t. every
/// trainable parameter of the decoder layers, computed layer by layer (see the module docs);
/// returns the token-mean NLL. The same gradients as differentiating
/// [`super::lm_objective`]'s surrogate, to float rounding.
///
/// # Errors
/// Adapter dropout is refused: the recomputation would draw other masks than the forward.
pub fn accumulate_checkpointed<B: KernelAutodiffBackend>(
    model: &Llama<B>,
    batch: &Batch<B>,
    share: f64,
    accumulator: &mut GradientsAccumulator<Llama<B>>,
) -> Result<f64> {
    if model.adapters().iter().any(|a| a.dropout > 0.0) {
        return Err(Error::arg("gradient-checkpointing", "does not support adapter dropout yet; use --dropout 0"));
    }
    let inner = model.valid();
    let [b, t] = batch.input_ids.dims();
    let device = batch.input_ids.device();
    let key_mask = batch.key_mask.clone();

    // Forward without a graph, keeping each layer's input.
    let inner_tables = inner.attention_tables(Some(&key_mask.clone().inner()), t, 0, &device);
    let mut x = inner.embed(batch.input_ids.clone().inner());
    let mut inputs = Vec::with_capacity(inner.layers.len());
    for layer in &inner.layers {
        inputs.push(x.clone());
        x = layer.forward(x, &inner_tables, None, false, None);
    }
    drop(inner_tables);

    // The head: final norm from a leaf, the loss and dL/dh in closed form.
    let top = Tensor::<B, 3>::from_inner(x).require_grad();
    let hidden = model.norm.forward(top.clone());
    let d = hidden.dims()[2];
    let weights = batch.loss_mask.clone().inner().div_scalar(batch.num_targets.max(1) as f64).reshape([b * t]);
    let targets = batch.targets.clone().inner().reshape([b * t]);
    let head = model.head_weight().inner();
    let out = B::InnerBackend::lm_head_loss(hidden.clone().inner().reshape([b * t, d]), head, targets, weights, false);
    let nll = out.nll.into_scalar().elem::<f64>();
    let hidden_grad = out.hidden_grad.reshape([b, t, d]).mul_scalar(share);
    let grads = (hidden * Tensor::from_inner(hidden_grad)).sum().backward();
    let mut output_grad = top.grad(&grads).expect("the top leaf is on the graph");

    // The layers from the top: recompute from the kept input, backward with dL/dy.
    let tables = model.attention_tables(Some(&key_mask), t, 0, &device);
    for (layer, input) in model.layers.iter().zip(inputs).rev() {
        let leaf = Tensor::<B, 3>::from_inner(input).require_grad();
        let y = layer.forward(leaf.clone(), &tables, None, true, None);
        let grads = (y * Tensor::from_inner(output_grad)).sum().backward();
        output_grad = leaf.grad(&grads).expect("the layer's input leaf is on the graph");
        accumulator.accumulate(model, GradientsParams::from_grads(grads, layer));
    }
    Ok(nll)
}
