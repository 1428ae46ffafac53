//! Summing curvature statistics over batches and label draws.
//!
//! An [`Accumulator`] sees, per forward pass, the inputs `(x, z)` of every adapter once
//! ([`Accumulator::observe_inputs`]) and, per backward pass, the gradients `(g, h)` with the
//! pass's weight ([`Accumulator::observe_gradients`]). It keeps raw sums in f32 on the device;
//! [`Accumulator::finish`] divides by the token count once.

use std::collections::HashMap;

use burn::tensor::{backend::Backend, Tensor};

use super::{Curvature, DiagBlock, Estimator, KfacBlock, TriKfacBlock};

/// One adapter's tensors from one forward/backward pass.
#[derive(Debug, Clone)]
pub struct AdapterStats<B: Backend> {
    /// Layer input, `[batch, seq, d_in]`.
    pub x: Tensor<B, 3>,
    /// `A x`, `[batch, seq, r]`.
    pub z: Tensor<B, 3>,
    /// `dL/dy`, `[batch, seq, d_out]`.
    pub g: Tensor<B, 3>,
    /// `dL/dz`, `[batch, seq, r]`.
    pub h: Tensor<B, 3>,
}

/// Static facts about one adapter.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    /// HF module path.
    pub path: String,
    /// `[d_out, d_in]`.
    pub dims: [usize; 2],
    /// Rank r.
    pub rank: usize,
    /// Scale s.
    pub scale: f64,
}

#[derive(Debug, Clone, Default)]
struct Sums<B: Backend> {
    a_diag: Option<Tensor<B, 2>>,
    b_diag: Option<Tensor<B, 2>>,
    x_a: Option<Tensor<B, 2>>,
    g_a: Option<Tensor<B, 2>>,
    x_b: Option<Tensor<B, 2>>,
    g_b: Option<Tensor<B, 2>>,
    x_ab: Option<Tensor<B, 2>>,
    g_ab: Option<Tensor<B, 2>>,
}

fn add<B: Backend>(slot: &mut Option<Tensor<B, 2>>, value: Tensor<B, 2>) {
    *slot = Some(match slot.take() {
        Some(sum) => sum + value,
        None => value,
    });
}

/// `M^T N` over all tokens: `[.., .., m]`, `[.., .., n]` -> `[m, n]`.
fn token_outer<B: Backend>(m: &Tensor<B, 3>, n: &Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, t, dm] = m.dims();
    let dn = n.dims()[2];
    m.clone().reshape([b * t, dm]).transpose().matmul(n.clone().reshape([b * t, dn]))
}

/// Sums of per-token statistics for one estimator over all adapters.
#[derive(Debug)]
pub struct Accumulator<B: Backend> {
    estimator: Estimator,
    adapters: Vec<AdapterInfo>,
    sums: Vec<Sums<B>>,
    tokens: usize,
}

impl<B: Backend> Accumulator<B> {
    /// An empty accumulator for these adapters (in the order their stats will arrive).
    pub fn new(estimator: Estimator, adapters: Vec<AdapterInfo>) -> Self {
        let sums = vec![Sums::default(); adapters.len()];
        Accumulator { estimator, adapters, sums, tokens: 0 }
    }

    /// The adapters, in order.
    pub fn adapters(&self) -> &[AdapterInfo] {
        &self.adapters
    }

    /// Loss-carrying tokens seen so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Records the input-side statistics of one forward pass. `mask` is `[batch, seq]`, 1 on
    /// loss-carrying positions; `x`, `z` come from `stats` (g and h are not read).
    pub fn observe_inputs(&mut self, stats: &[AdapterStats<B>], mask: &Tensor<B, 2>, num_tokens: usize) {
        assert_eq!(stats.len(), self.sums.len(), "one stats entry per adapter");
        self.tokens += num_tokens;
        if self.estimator == Estimator::Diag {
            return;
        }
        let mask3 = mask.clone().unsqueeze_dim::<3>(2);
        // q/k/v (and gate/up) read the same input: compute their X_A once.
        let mut x_cache: HashMap<String, Tensor<B, 2>> = HashMap::new();
        for ((info, s), sums) in self.adapters.iter().zip(stats).zip(&mut self.sums) {
            let x = s.x.clone() * mask3.clone();
            let z = s.z.clone() * mask3.clone();
            let key = shared_input_key(&info.path);
            let x_a = x_cache.entry(key).or_insert_with(|| token_outer(&x, &x)).clone();
            add(&mut sums.x_a, x_a);
            add(&mut sums.x_b, token_outer(&z, &z));
            if self.estimator == Estimator::TriKfac {
                add(&mut sums.x_ab, token_outer(&x, &z));
            }
        }
    }

    /// Records the gradient-side statistics of one backward pass, weighted by `weight`
    /// (`1/K` for K Monte-Carlo draws). The diagonal uses every position (exact per-sequence
    /// gradients); the factors only loss-carrying positions (`mask`).
    pub fn observe_gradients(&mut self, stats: &[AdapterStats<B>], mask: &Tensor<B, 2>, weight: f64) {
        assert_eq!(stats.len(), self.sums.len(), "one stats entry per adapter");
        let mask3 = mask.clone().unsqueeze_dim::<3>(2);
        for ((info, s), sums) in self.adapters.iter().zip(stats).zip(&mut self.sums) {
            match self.estimator {
                Estimator::Diag => {
                    let [_, _, d_in] = s.x.dims();
                    let [_, _, d_out] = s.g.dims();
                    let r = info.rank;
                    // per-sequence gradients: dB_n = s g_n^T z_n, dA_n = h_n^T x_n
                    let d_b = s.g.clone().swap_dims(1, 2).matmul(s.z.clone()).mul_scalar(info.scale); // [batch, d_out, r]
                    let d_a = s.h.clone().swap_dims(1, 2).matmul(s.x.clone()); // [batch, r, d_in]
                    add(&mut sums.b_diag, d_b.square().sum_dim(0).reshape([d_out, r]).mul_scalar(weight));
                    add(&mut sums.a_diag, d_a.square().sum_dim(0).reshape([r, d_in]).mul_scalar(weight));
                }
                Estimator::Kfac | Estimator::TriKfac => {
                    let g = s.g.clone() * mask3.clone();
                    let h = s.h.clone() * mask3.clone();
                    add(&mut sums.g_a, token_outer(&h, &h).mul_scalar(weight));
                    add(&mut sums.g_b, token_outer(&g, &g).mul_scalar(weight));
                    if self.estimator == Estimator::TriKfac {
                        add(&mut sums.g_ab, token_outer(&h, &g).mul_scalar(weight));
                    }
                }
            }
        }
    }

    /// The per-token-average curvature: every sum divided by the token count, with the scale
    /// factors `s^2` (G_B) and `s` (G_AB) applied.
    ///
    /// # Panics
    /// If no tokens were observed.
    pub fn finish(self) -> Curvature<B> {
        assert!(self.tokens > 0, "no loss-carrying tokens were observed");
        let n = self.tokens as f64;
        let take = |t: Option<Tensor<B, 2>>, factor: f64| t.expect("statistic observed").mul_scalar(factor / n);
        let blocks = self.adapters.into_iter().zip(self.sums);
        match self.estimator {
            Estimator::Diag => Curvature::Diag(
                blocks.map(|(info, s)| DiagBlock { path: info.path, a: take(s.a_diag, 1.0), b: take(s.b_diag, 1.0) }).collect(),
            ),
            Estimator::Kfac | Estimator::TriKfac => {
                let tri = self.estimator == Estimator::TriKfac;
                let mut kfac = Vec::new();
                let mut tri_blocks = Vec::new();
                for (info, s) in blocks {
                    let k = KfacBlock {
                        path: info.path,
                        x_a: take(s.x_a, 1.0),
                        g_a: take(s.g_a, 1.0),
                        x_b: take(s.x_b, 1.0),
                        g_b: take(s.g_b, info.scale * info.scale),
                    };
                    if tri {
                        tri_blocks.push(TriKfacBlock { kfac: k, x_ab: take(s.x_ab, 1.0), g_ab: take(s.g_ab, info.scale) });
                    } else {
                        kfac.push(k);
                    }
                }
                if tri {
                    Curvature::TriKfac(tri_blocks)
                } else {
                    Curvature::Kfac(kfac)
                }
            }
        }
    }
}

/// Adapters whose layer reads the same tensor share a key: q/k/v, and gate/up.
fn shared_input_key(path: &str) -> String {
    for (names, shared) in [(&["q_proj", "k_proj", "v_proj"][..], "qkv_input"), (&["gate_proj", "up_proj"][..], "gate_up_input")] {
        for name in names {
            if let Some(prefix) = path.strip_suffix(name) {
                return format!("{prefix}{shared}");
            }
        }
    }
    path.to_string()
}
