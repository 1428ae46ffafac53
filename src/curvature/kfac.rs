//! B-KFAC (arXiv 2512.17720): one Kronecker-factored block for A and one for B per adapter.
//!
//! Quadratic form: `<dA, G_A dA X_A> + <dB, G_B dB X_B>` (row-major vec), never materialising a
//! Kronecker product. Factors (token averages over loss-carrying positions, see
//! [`super::math`]): `X_A = E[x x^T]`, `G_A = E[h h^T]`, `X_B = E[z z^T]`, `G_B = s^2 E[g g^T]`.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::accumulate::{add, token_outer, AdapterInfo};
use super::inner;

/// The Kronecker factors of one adapter.
#[derive(Module, Debug)]
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

    /// Tensors as stored in `curvature.safetensors`: `{path}.lora_A.X`, `{path}.lora_A.G`,
    /// `{path}.lora_B.X`, `{path}.lora_B.G`.
    pub fn tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let p = &self.path;
        vec![
            (format!("{p}.lora_A.X"), self.x_a.clone()),
            (format!("{p}.lora_A.G"), self.g_a.clone()),
            (format!("{p}.lora_B.X"), self.x_b.clone()),
            (format!("{p}.lora_B.G"), self.g_b.clone()),
        ]
    }

    /// Reads the block of `info` back; `get(name, shape)` reads and checks one tensor.
    pub fn from_tensors(info: &AdapterInfo, get: &impl Fn(&str, [usize; 2]) -> crate::Result<Tensor<B, 2>>) -> crate::Result<Self> {
        let ([d_out, d_in], r, p) = (info.dims, info.rank, &info.path);
        Ok(KfacBlock {
            path: p.clone(),
            x_a: get(&format!("{p}.lora_A.X"), [d_in, d_in])?,
            g_a: get(&format!("{p}.lora_A.G"), [r, r])?,
            x_b: get(&format!("{p}.lora_B.X"), [r, r])?,
            g_b: get(&format!("{p}.lora_B.G"), [d_out, d_out])?,
        })
    }
}

/// Running sums of the Kronecker factors of one adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct KfacSums<B: Backend> {
    x_a: Option<Tensor<B, 2>>,
    g_a: Option<Tensor<B, 2>>,
    x_b: Option<Tensor<B, 2>>,
    g_b: Option<Tensor<B, 2>>,
}

/// `X_A` sums of one forward pass, keyed by [`AdapterInfo::input`]: adapters that read the same
/// tensor (q/k/v, gate/up) compute it once.
pub(crate) type SharedInputs<B> = HashMap<String, Tensor<B, 2>>;

impl<B: Backend> KfacSums<B> {
    /// Adds the input factors of one forward pass; `x`, `z` already masked to loss positions.
    pub fn observe_inputs(&mut self, info: &AdapterInfo, x: &Tensor<B, 3>, z: &Tensor<B, 3>, shared: &mut SharedInputs<B>) {
        let x_a = shared.entry(info.input.clone()).or_insert_with(|| token_outer(x, x)).clone();
        add(&mut self.x_a, x_a);
        add(&mut self.x_b, token_outer(z, z));
    }

    /// Adds the gradient factors of one backward pass, weighted; `g`, `h` already masked.
    pub fn observe_gradients(&mut self, g: &Tensor<B, 3>, h: &Tensor<B, 3>, weight: f64) {
        add(&mut self.g_a, token_outer(h, h).mul_scalar(weight));
        add(&mut self.g_b, token_outer(g, g).mul_scalar(weight));
    }

    /// The per-token averages, with `s^2` applied to `G_B`.
    pub fn finish(self, info: AdapterInfo, tokens: f64) -> KfacBlock<B> {
        let take = |t: Option<Tensor<B, 2>>, factor: f64| t.expect("statistic observed").mul_scalar(factor / tokens);
        KfacBlock {
            x_a: take(self.x_a, 1.0),
            g_a: take(self.g_a, 1.0),
            x_b: take(self.x_b, 1.0),
            g_b: take(self.g_b, info.scale * info.scale),
            path: info.path,
        }
    }
}

/// `f32` values stored per adapter of shape `[d_out, d_in]` and rank `r`.
pub(crate) fn values_per_adapter(d_out: u64, d_in: u64, r: u64) -> u64 {
    d_in * d_in + 2 * r * r + d_out * d_out
}
