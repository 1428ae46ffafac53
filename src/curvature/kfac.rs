//! B-KFAC (arXiv 2512.17720): one Kronecker-factored block for A and one for B per adapter.
//!
//! Quadratic form: `<dA, G_A dA X_A> + <dB, G_B dB X_B>` (row-major vec), never materialising a
//! Kronecker product.

use burn::tensor::{backend::Backend, Tensor};

use super::inner;

/// The Kronecker factors of one adapter (see [`super::math`] for their definitions).
#[derive(Debug, Clone)]
pub struct KfacBlock<B: Backend> {
    /// HF module path.
    pub path: String,
    /// `E[x x^T]`, `[d_in, d_in]`.
    pub x_a: Tensor<B, 2>,
    /// `E[h h^T]`, `[r, r]`.
    pub g_a: Tensor<B, 2>,
    /// `E[z z^T]`, `[r, r]`.
    pub x_b: Tensor<B, 2>,
    /// `s^2 E[g g^T]`, `[d_out, d_out]`.
    pub g_b: Tensor<B, 2>,
}

impl<B: Backend> KfacBlock<B> {
    /// `<dA, G_A dA X_A> + <dB, G_B dB X_B>`.
    pub fn quadratic(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let a = inner(d_a.clone(), self.g_a.clone().matmul(d_a).matmul(self.x_a.clone()));
        let b = inner(d_b.clone(), self.g_b.clone().matmul(d_b).matmul(self.x_b.clone()));
        a + b
    }

    /// `F vec(dA, dB)` as `(G_A dA X_A, G_B dB X_B)`: the half-gradient of the quadratic form.
    pub fn product(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.g_a.clone().matmul(d_a).matmul(self.x_a.clone()), self.g_b.clone().matmul(d_b).matmul(self.x_b.clone()))
    }

    /// `tr(G_A) tr(X_A) + tr(G_B) tr(X_B)`: the trace of the Kronecker blocks.
    pub fn trace(&self) -> f64 {
        use burn::tensor::cast::ToElement;
        let tr = |t: &Tensor<B, 2>| {
            let n = t.dims()[0];
            (t.clone() * Tensor::eye(n, &t.device())).sum().into_scalar().to_f64()
        };
        tr(&self.g_a) * tr(&self.x_a) + tr(&self.g_b) * tr(&self.x_b)
    }

    /// Tensors as stored in `curvature.safetensors`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let p = &self.path;
        vec![
            (format!("{p}.lora_A.X"), self.x_a.clone()),
            (format!("{p}.lora_A.G"), self.g_a.clone()),
            (format!("{p}.lora_B.X"), self.x_b.clone()),
            (format!("{p}.lora_B.G"), self.g_b.clone()),
        ]
    }
}
