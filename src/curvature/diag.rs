//! Diagonal curvature: `F_ii` for every entry of A and B, from per-token gradients.
//!
//! Quadratic form: `sum F_A * dA^2 + sum F_B * dB^2`. Statistics: each loss-carrying position
//! t contributes `dB_t = s g_t z_t^T` and `dA_t = h_t x_t^T` (its share of the gradient, the
//! same per-token terms kfac factorises), squared entry-wise and summed:
//! `F_B = s^2 sum_t (g_t^2)(z_t^2)^T / N_tok`, `F_A = sum_t (h_t^2)(x_t^2)^T / N_tok`. So diag
//! is the exact diagonal of the matrix kfac approximates (see [`super::math`]).

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::accumulate::{add, token_outer, AdapterInfo, AdapterStats};
use super::inner;

/// The diagonal of F for one adapter.
#[derive(Module, Debug)]
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

    /// Tensors as stored in `curvature.safetensors`: `{path}.lora_A.diag`, `{path}.lora_B.diag`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        vec![(format!("{}.lora_A.diag", self.path), self.a.clone()), (format!("{}.lora_B.diag", self.path), self.b.clone())]
    }

    /// Reads the block of `info` back; `get(name, shape)` reads and checks one tensor.
    pub fn from_tensors(info: &AdapterInfo, get: &impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>) -> crate::Result<Self> {
        let ([d_out, d_in], r, path) = (info.dims, info.rank, &info.path);
        Ok(DiagBlock {
            path: path.clone(),
            a: get(&format!("{path}.lora_A.diag"), [r, d_in])?,
            b: get(&format!("{path}.lora_B.diag"), [d_out, r])?,
        })
    }
}

/// Running sums of squared per-token gradients for one adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct DiagSums<B: Backend> {
    a: Option<Tensor<B, 2>>,
    b: Option<Tensor<B, 2>>,
}

impl<B: Backend> DiagSums<B> {
    /// Adds one backward pass, weighted by `weight` (`1/K` for K Monte-Carlo draws); `g` and
    /// `h` already masked to loss-carrying positions.
    ///
    /// The square of `dB_t = s g_t z_t^T` is `s^2 (g_t^2)(z_t^2)^T`, so the sum over tokens is
    /// one product of the squared statistics, `[d_out, r]` (and `[r, d_in]` for A).
    pub fn observe_gradients(&mut self, info: &AdapterInfo, s: &AdapterStats<B>, g: &Tensor<B, 3>, h: &Tensor<B, 3>, weight: f64) {
        let b = token_outer(&g.clone().square(), &s.z.clone().square()).mul_scalar(weight * info.scale * info.scale); // [d_out, r]
        let a = token_outer(&h.clone().square(), &s.x.clone().square()).mul_scalar(weight); // [r, d_in]
        add(&mut self.b, b);
        add(&mut self.a, a);
    }

    /// The per-token average: the sums divided by `tokens`.
    pub fn finish(self, info: AdapterInfo, tokens: f64) -> DiagBlock<B> {
        let take = |t: Option<Tensor<B, 2>>| t.expect("statistic observed").mul_scalar(1.0 / tokens);
        DiagBlock { path: info.path, a: take(self.a), b: take(self.b) }
    }
}

/// `f32` values stored per adapter of shape `[d_out, d_in]` and rank `r`.
pub(crate) fn values_per_adapter(d_out: u64, d_in: u64, r: u64) -> u64 {
    r * (d_in + d_out)
}
