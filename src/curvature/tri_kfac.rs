//! B-Tri-KFAC (arXiv 2512.17720): B-KFAC plus the A-B cross block of each adapter.
//!
//! Quadratic form: `<dA, G_A dA X_A> + <dB, G_B dB X_B> + 2 <dA, G_AB dB X_AB^T>`, with the cross
//! factors `G_AB = s E[h g^T]` and `X_AB = E[x z^T]` from the same tokens and labels as the
//! diagonal blocks (which keeps the joint matrix PSD).

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::accumulate::{add, token_outer, AdapterInfo};
use super::kfac::{KfacSums, SharedInputs};
use super::low_rank::LowRankBlock;
use super::{inner, KfacBlock};

/// B-KFAC factors plus the cross factors of one adapter.
#[derive(Module, Debug)]
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

    /// Tensors as stored in `curvature.safetensors`: kfac's, plus `{path}.cross.X` and
    /// `{path}.cross.G`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let mut out = self.kfac.tensors();
        out.push((format!("{}.cross.X", self.kfac.path), self.x_ab.clone()));
        out.push((format!("{}.cross.G", self.kfac.path), self.g_ab.clone()));
        out
    }

    /// Reads the block of `info` back; `get(name, shape)` reads and checks one tensor.
    pub fn from_tensors(info: &AdapterInfo, get: &impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>) -> crate::Result<Self> {
        let ([d_out, d_in], r, p) = (info.dims, info.rank, &info.path);
        Ok(TriKfacBlock {
            kfac: KfacBlock::from_tensors(info, get)?,
            x_ab: get(&format!("{p}.cross.X"), [d_in, r])?,
            g_ab: get(&format!("{p}.cross.G"), [r, d_out])?,
        })
    }
}

/// Running sums of the B-KFAC factors and the cross factors of one adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct TriKfacSums<B: Backend> {
    kfac: KfacSums<B>,
    x_ab: Option<Tensor<B, 2>>,
    g_ab: Option<Tensor<B, 2>>,
}

impl<B: Backend> TriKfacSums<B> {
    /// Adds the input factors of one forward pass; `x`, `z` already masked to loss positions.
    pub fn observe_inputs(&mut self, info: &AdapterInfo, x: &Tensor<B, 3>, z: &Tensor<B, 3>, shared: &mut SharedInputs<B>) {
        self.kfac.observe_inputs(info, x, z, shared);
        add(&mut self.x_ab, token_outer(x, z));
    }

    /// Adds the gradient factors of one backward pass, weighted; `g`, `h` already masked.
    pub fn observe_gradients(&mut self, g: &Tensor<B, 3>, h: &Tensor<B, 3>, weight: f64) {
        self.kfac.observe_gradients(g, h, weight);
        add(&mut self.g_ab, token_outer(h, g).mul_scalar(weight));
    }

    /// Sums that sketch the large factors ([`KfacSums::sketched`]); the cross factors are
    /// `[d, r]` and summed exactly.
    pub fn sketched(info: &AdapterInfo, k: usize, test_matrix: &mut impl FnMut(usize) -> Tensor<B, 2>) -> Self {
        TriKfacSums { kfac: KfacSums::sketched(info, k, test_matrix), x_ab: None, g_ab: None }
    }

    /// The per-token averages, with `s` applied to `G_AB`.
    pub fn finish(self, info: AdapterInfo, tokens: f64) -> TriKfacBlock<B> {
        let take = |t: Option<Tensor<B, 2>>, factor: f64| t.expect("statistic observed").mul_scalar(factor / tokens);
        TriKfacBlock { x_ab: take(self.x_ab, 1.0), g_ab: take(self.g_ab, info.scale), kfac: self.kfac.finish(info, tokens) }
    }

    /// [`Self::finish`] with the factors larger than k compressed and the cross factors mapped
    /// to match ([`KfacSums::finish_compressed`]).
    pub fn finish_compressed(self, info: AdapterInfo, tokens: f64, k: usize) -> LowRankBlock<B> {
        let take = |t: Option<Tensor<B, 2>>, factor: f64| t.expect("statistic observed").mul_scalar(factor / tokens);
        let cross = (take(self.g_ab, info.scale), take(self.x_ab, 1.0));
        self.kfac.finish_compressed(info, tokens, k, Some(cross))
    }
}

/// `f32` values stored per adapter of shape `[d_out, d_in]` and rank `r`.
pub(crate) fn values_per_adapter(d_out: u64, d_in: u64, r: u64) -> u64 {
    // the cross factors: X_AB is [d_in, r], G_AB is [r, d_out]
    super::kfac::values_per_adapter(d_out, d_in, r) + r * (d_in + d_out)
}
