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
use super::low_rank::{is_compressed, Factor, LowRankBlock, Projection};
use super::sketch::{FactorSketch, SketchTerm};

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

/// The running sum of one large Kronecker factor (`X_A` or `G_B`): dense, or a one-pass
/// sketch ([`super::sketch`]) when the fit compresses it as it goes.
#[derive(Debug, Clone)]
pub(crate) enum FactorSum<B: Backend> {
    /// `sum_t v_t v_t^T`.
    Dense(Option<Tensor<B, 2>>),
    /// `(M Omega, diag(M))`.
    Sketch(FactorSketch<B>),
}

impl<B: Backend> Default for FactorSum<B> {
    fn default() -> Self {
        FactorSum::Dense(None)
    }
}

/// One pass's contribution to a [`FactorSum`].
#[derive(Debug, Clone)]
pub(crate) enum FactorTerm<B: Backend> {
    Dense(Tensor<B, 2>),
    Sketch(SketchTerm<B>),
}

impl<B: Backend> FactorSum<B> {
    /// The term of `V^T V` for the tokens `v: [batch, seq, d]`, times `weight`.
    fn term(&self, v: &Tensor<B, 3>, weight: f64) -> FactorTerm<B> {
        match self {
            FactorSum::Dense(_) => FactorTerm::Dense(token_outer(v, v).mul_scalar(weight)),
            FactorSum::Sketch(sketch) => FactorTerm::Sketch(sketch.term(v).scaled(weight)),
        }
    }

    fn add(&mut self, term: FactorTerm<B>) {
        match (self, term) {
            (FactorSum::Dense(sum), FactorTerm::Dense(t)) => add(sum, t),
            (FactorSum::Sketch(sketch), FactorTerm::Sketch(t)) => sketch.add(t),
            _ => unreachable!("a factor's terms have its own kind (adapters sharing an input share its size)"),
        }
    }

    /// The dense average `factor * sum`.
    fn finish_dense(self, factor: f64) -> Tensor<B, 2> {
        match self {
            FactorSum::Dense(sum) => sum.expect("statistic observed").mul_scalar(factor),
            FactorSum::Sketch(_) => unreachable!("a sketched fit finishes compressed"),
        }
    }

    /// `factor * sum` compressed at rank k, with its cross-factor map (`None` when dense).
    fn finish_compressed(self, factor: f64, k: usize) -> (Factor<B>, Option<Projection>) {
        match self {
            FactorSum::Dense(sum) => Factor::compress(sum.expect("statistic observed").mul_scalar(factor), k),
            FactorSum::Sketch(sketch) => {
                let (f, map) = sketch.finish(factor, k);
                (f, Some(map))
            }
        }
    }
}

/// Running sums of the Kronecker factors of one adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct KfacSums<B: Backend> {
    x_a: FactorSum<B>,
    g_a: Option<Tensor<B, 2>>,
    x_b: Option<Tensor<B, 2>>,
    g_b: FactorSum<B>,
}

/// `X_A` terms of one forward pass, keyed by [`AdapterInfo::input`]: adapters that read the same
/// tensor (q/k/v, gate/up) compute it once.
pub(crate) type SharedInputs<B> = HashMap<String, FactorTerm<B>>;

impl<B: Backend> KfacSums<B> {
    /// Sums that sketch `X_A` and `G_B` where they are larger than `k` ([`super::sketch`]);
    /// `test_matrix(d)` gives the sketch's test matrix for size d.
    pub fn sketched(info: &AdapterInfo, k: usize, test_matrix: &mut impl FnMut(usize) -> Tensor<B, 2>) -> Self {
        let [d_out, d_in] = info.dims;
        let mut factor = |d: usize| {
            if is_compressed(d, Some(k)) {
                FactorSum::Sketch(FactorSketch::new(test_matrix(d)))
            } else {
                FactorSum::Dense(None)
            }
        };
        KfacSums { x_a: factor(d_in), g_a: None, x_b: None, g_b: factor(d_out) }
    }

    /// Adds the input factors of one forward pass; `x`, `z` already masked to loss positions.
    pub fn observe_inputs(&mut self, info: &AdapterInfo, x: &Tensor<B, 3>, z: &Tensor<B, 3>, shared: &mut SharedInputs<B>) {
        let x_a = shared.entry(info.input.clone()).or_insert_with(|| self.x_a.term(x, 1.0)).clone();
        self.x_a.add(x_a);
        add(&mut self.x_b, token_outer(z, z));
    }

    /// Adds the gradient factors of one backward pass, weighted; `g`, `h` already masked.
    pub fn observe_gradients(&mut self, g: &Tensor<B, 3>, h: &Tensor<B, 3>, weight: f64) {
        add(&mut self.g_a, token_outer(h, h).mul_scalar(weight));
        let g_b = self.g_b.term(g, weight);
        self.g_b.add(g_b);
    }

    /// The per-token averages, with `s^2` applied to `G_B`.
    pub fn finish(self, info: AdapterInfo, tokens: f64) -> KfacBlock<B> {
        let take = |t: Option<Tensor<B, 2>>| t.expect("statistic observed").mul_scalar(1.0 / tokens);
        KfacBlock {
            x_a: self.x_a.finish_dense(1.0 / tokens),
            g_a: take(self.g_a),
            x_b: take(self.x_b),
            g_b: self.g_b.finish_dense(info.scale * info.scale / tokens),
            path: info.path,
        }
    }

    /// [`Self::finish`] with the factors larger than k compressed (from their sketches, or
    /// from the dense sums), and tri-kfac's `cross = (G_AB, X_AB)` mapped to match.
    pub fn finish_compressed(
        self,
        info: AdapterInfo,
        tokens: f64,
        k: usize,
        cross: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> LowRankBlock<B> {
        let take = |t: Option<Tensor<B, 2>>| t.expect("statistic observed").mul_scalar(1.0 / tokens);
        let x_a = self.x_a.finish_compressed(1.0 / tokens, k);
        let g_b = self.g_b.finish_compressed(info.scale * info.scale / tokens, k);
        LowRankBlock::assemble(info.path, x_a, take(self.g_a), take(self.x_b), g_b, cross)
    }
}

/// `f32` values stored per adapter of shape `[d_out, d_in]` and rank `r`.
pub(crate) fn values_per_adapter(d_out: u64, d_in: u64, r: u64) -> u64 {
    d_in * d_in + 2 * r * r + d_out * d_out
}
