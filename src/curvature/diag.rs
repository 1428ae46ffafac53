//! Diagonal curvature: `F_ii` for every entry of A and B.
//!
//! Quadratic form: `sum F_A * dA^2 + sum F_B * dB^2`.

use burn::tensor::{backend::Backend, Tensor};

use super::inner;

/// The diagonal of F for one adapter.
#[derive(Debug, Clone)]
pub struct DiagBlock<B: Backend> {
    /// HF module path.
    pub path: String,
    /// `[r, d_in]`, F's diagonal for the entries of A.
    pub a: Tensor<B, 2>,
    /// `[d_out, r]`, F's diagonal for the entries of B.
    pub b: Tensor<B, 2>,
}

impl<B: Backend> DiagBlock<B> {
    /// `vec(dA, dB)^T diag(F) vec(dA, dB)`.
    pub fn quadratic(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        inner(self.a.clone(), d_a.square()) + inner(self.b.clone(), d_b.square())
    }

    /// `F vec(dA, dB)` as `(dA-part, dB-part)`: the half-gradient of the quadratic form.
    pub fn product(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.a.clone() * d_a, self.b.clone() * d_b)
    }

    /// Sum of the diagonal.
    pub fn trace(&self) -> f64 {
        use burn::tensor::cast::ToElement;
        (self.a.clone().sum() + self.b.clone().sum()).into_scalar().to_f64()
    }

    /// Tensors as stored in `curvature.safetensors`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        vec![(format!("{}.lora_A.diag", self.path), self.a.clone()), (format!("{}.lora_B.diag", self.path), self.b.clone())]
    }
}
