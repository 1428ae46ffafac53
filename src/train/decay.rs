//! Decoupled weight decay toward the starting adapters instead of toward zero.
//!
//! AdamW's decay `theta <- theta - lr wd theta` pulls the adapters toward `A = B = 0`. With
//! PEFT's init that is a base-model function (B = 0), but with the offset init
//! (`Delta W = s (B A - B0 A0)`) zero is *not* the base model: `Delta W = -s B0 A0` there, so
//! decay toward zero pushes every method, the Laplace ones included, away from the model the
//! prior is centred on. Fine-tuning therefore decays toward the starting adapters `theta_0`:
//!
//! `theta <- theta - lr wd (theta - theta_0) - lr * adam_update`,
//!
//! which is PyTorch's AdamW with theta measured from `theta_0` (an isotropic decoupled prior at
//! the anchor, like the `l2` penalty but outside Adam's normalisation). With PEFT's init
//! (`B0 = 0`) B decays exactly as in PyTorch; only A decays toward `A0` rather than toward 0,
//! and with B = 0 both are the base model. The optimiser is built without decay and
//! [`DecayToward::apply`] adds it after the optimiser's update, from the values before it.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::laplace::Anchor;
use crate::llama::Llama;

/// Decoupled weight decay toward fixed adapter values.
#[derive(Debug)]
pub struct DecayToward<'a, B: Backend> {
    /// `theta_0`, one entry per adapter in model order (the starting adapters).
    pub anchors: &'a [Anchor<B>],
    /// The decay rate wd (AdamW's `weight_decay`).
    pub rate: f64,
}

// Not derived: the derive would ask `B: Copy`.
impl<B: Backend> Clone for DecayToward<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for DecayToward<'_, B> {}

impl<B: Backend> DecayToward<'_, B> {
    /// `theta - theta_0` of every adapter, detached: taken before the optimiser's update.
    ///
    /// # Panics
    /// If the model has other adapters than the anchors.
    pub fn offsets(&self, model: &Llama<B>) -> Vec<(Tensor<B, 2>, Tensor<B, 2>)> {
        let adapters = model.adapters();
        assert_eq!(adapters.len(), self.anchors.len(), "decay anchors and model have different adapters");
        adapters
            .iter()
            .zip(self.anchors)
            .map(|(a, anchor)| ((a.lora_a.val() - anchor.a.clone()).detach(), (a.lora_b.val() - anchor.b.clone()).detach()))
            .collect()
    }

    /// `theta <- theta - lr wd offsets` on every adapter, keeping each parameter's id (the
    /// optimiser's state is keyed by it) and leaving it a leaf that requires grad.
    pub fn apply(&self, mut model: Llama<B>, lr: f64, offsets: Vec<(Tensor<B, 2>, Tensor<B, 2>)>) -> Llama<B> {
        let factor = lr * self.rate;
        if factor == 0.0 {
            return model;
        }
        for (adapter, (d_a, d_b)) in model.adapters_mut().into_iter().zip(offsets) {
            let shrink = |t: Tensor<B, 2>, d: Tensor<B, 2>| (t - d.mul_scalar(factor)).detach().require_grad();
            adapter.lora_a = adapter.lora_a.clone().map(|t| shrink(t, d_a));
            adapter.lora_b = adapter.lora_b.clone().map(|t| shrink(t, d_b));
        }
        model
    }
}
