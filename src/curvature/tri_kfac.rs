//! B-Tri-KFAC (arXiv 2512.17720): B-KFAC plus the A-B cross block of each adapter.
//!
//! Quadratic form: `<dA, G_A dA X_A> + <dB, G_B dB X_B> + 2 <dA, G_AB dB X_AB^T>`.

use burn::tensor::{backend::Backend, Tensor};

use super::{inner, KfacBlock};

/// B-KFAC factors plus the cross factors of one adapter.
#[derive(Debug, Clone)]
pub struct TriKfacBlock<B: Backend> {
    /// The diagonal blocks.
    pub kfac: KfacBlock<B>,
    /// `s E[h g^T]`, `[r, d_out]`.
    pub g_ab: Tensor<B, 2>,
    /// `E[x z^T]`, `[d_in, r]`.
    pub x_ab: Tensor<B, 2>,
}

impl<B: Backend> TriKfacBlock<B> {
    /// The full quadratic form of the joint (A, B) block.
    pub fn quadratic(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> Tensor<B, 1> {
        let cross = inner(d_a.clone(), self.g_ab.clone().matmul(d_b.clone()).matmul(self.x_ab.clone().transpose()));
        self.kfac.quadratic(d_a, d_b) + cross.mul_scalar(2.0)
    }

    /// `F vec(dA, dB)`: the diagonal blocks' products plus the cross block acting each way,
    /// `G_AB dB X_AB^T` on the A side and `G_AB^T dA X_AB` on the B side.
    pub fn product(&self, d_a: Tensor<B, 2>, d_b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let cross_a = self.g_ab.clone().matmul(d_b.clone()).matmul(self.x_ab.clone().transpose());
        let cross_b = self.g_ab.clone().transpose().matmul(d_a.clone()).matmul(self.x_ab.clone());
        let (a, b) = self.kfac.product(d_a, d_b);
        (a + cross_a, b + cross_b)
    }

    /// Tensors as stored in `curvature.safetensors`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let mut out = self.kfac.tensors();
        out.push((format!("{}.cross.X", self.kfac.path), self.x_ab.clone()));
        out.push((format!("{}.cross.G", self.kfac.path), self.g_ab.clone()));
        out
    }
}
