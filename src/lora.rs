//! LoRA adapters in PEFT's convention (Hu et al. 2021, arXiv 2106.09685).
//!
//! `y = W0 x + s B (A x)`, with `A: [r, d_in]`, `B: [d_out, r]` and `s = alpha / r`
//! (`alpha / sqrt(r)` with rsLoRA). The base weight `W0` keeps HF's `[d_out, d_in]` layout and
//! gets no gradient; only `A` and `B` train. `z = A x` is computed explicitly because the
//! curvature code needs it (see [`AdapterTap`]).
//!
//! Inits: PEFT's default (Kaiming-uniform `A`, zero `B`), PEFT's Gaussian (`A ~ N(0, 1/r)`,
//! zero `B`), and the *offset* init, where `A` and `B` both start random and the frozen copy
//! `(A0, B0)` is subtracted, `y = W0 x + s (B A - B0 A0) x`, so the function is unchanged at
//! step 0 but `B != 0` (with `B = 0` the A-blocks of the curvature vanish; see DESIGN.md).

use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::tensor::{backend::Backend, Distribution, FloatDType, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::llama::Projection;
use crate::KernelBackend;

/// How adapters start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LoraInit {
    /// PEFT's default: `A ~ U(-1/sqrt(d_in), 1/sqrt(d_in))` (Kaiming-uniform, a = sqrt 5), `B = 0`.
    #[default]
    Peft,
    /// PEFT's `init_lora_weights="gaussian"`: `A ~ N(0, (1/r)^2)`, `B = 0`.
    Gaussian,
    /// `A` as in `Peft`, `B ~ U(-1/sqrt(r), 1/sqrt(r))`, and the frozen offset `-s B0 A0` keeps
    /// the model's function unchanged. Exported to PEFT as a rank-2r adapter.
    Offset,
}

/// Which projections get adapters and how they are shaped, scaled and initialised.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r. Default 8.
    #[config(default = 8)]
    pub rank: usize,
    /// alpha; the scale is alpha / r (alpha / sqrt(r) with rsLoRA). Default 16.
    #[config(default = 16.0)]
    pub alpha: f64,
    /// Use rsLoRA's scale alpha / sqrt(r). Default false.
    #[config(default = false)]
    pub rslora: bool,
    /// Dropout on the adapter's input during training. Default 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Projections to adapt. Default: all seven.
    #[config(default = "Projection::ALL.to_vec()")]
    pub targets: Vec<Projection>,
    /// Initialisation. Default [`LoraInit::Peft`].
    #[config(default = "LoraInit::Peft")]
    pub init: LoraInit,
    /// Seed for the random parts of the init. Default 0.
    #[config(default = 0)]
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig::new()
    }
}

impl LoraConfig {
    /// The scale s that multiplies `B A x`.
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.rank, self.rslora)
    }

    /// Whether this projection gets an adapter.
    pub fn wants(&self, projection: Projection) -> bool {
        self.targets.contains(&projection)
    }

    /// Checks ranges.
    pub fn validate(&self) -> crate::Result<()> {
        if self.rank == 0 {
            return Err(Error::arg("rank", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::arg("alpha", format!("must be a positive number, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::arg("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(Error::arg("targets", "names no projection"));
        }
        Ok(())
    }
}

/// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
pub fn lora_scale(alpha: f64, rank: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

/// The frozen starting point `(A0, B0)` of the offset init.
#[derive(Module, Debug)]
pub struct LoraOffset<B: Backend> {
    /// `[r, d_in]`, frozen.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[d_out, r]`, frozen.
    pub lora_b: Param<Tensor<B, 2>>,
}

/// The trainable part of one adapted projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// Decoder layer index.
    pub layer: usize,
    /// Which projection of the layer.
    pub projection: Projection,
    /// `A`, `[r, d_in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `B`, `[d_out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// Frozen `(A0, B0)` subtracted from the update (offset init only).
    pub offset: Option<LoraOffset<B>>,
    /// s = alpha / r (or alpha / sqrt r).
    pub scale: f64,
    /// Dropout probability on the adapter input during training.
    pub dropout: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn path(&self) -> String {
        self.projection.module_path(self.layer)
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// The dense update `s (B A - B0 A0)`, `[d_out, d_in]`.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let mut delta = self.lora_b.val().matmul(self.lora_a.val());
        if let Some(offset) = &self.offset {
            delta = delta - offset.lora_b.val().matmul(offset.lora_a.val());
        }
        delta.mul_scalar(self.scale)
    }
}

/// Tensors one adapted projection exposes for curvature capture, from one forward pass.
///
/// `probe_y` and `probe_z` are zero leaves that require grad, added to the output y and where
/// z enters it (`y + s B probe_z`): after `backward`, their gradients are exactly `g = dL/dy`
/// and `h = dL/dz`.
#[derive(Debug, Clone)]
pub struct AdapterTap<B: Backend> {
    /// HF module path of the projection.
    pub path: String,
    /// Layer input x, `[batch, seq, d_in]`.
    pub x: Tensor<B, 3>,
    /// `z = A x`, `[batch, seq, r]`.
    pub z: Tensor<B, 3>,
    /// Zero leaf added to the output, `[batch, seq, d_out]`.
    pub probe_y: Tensor<B, 3>,
    /// Zero leaf added where z enters the output, `[batch, seq, r]`.
    pub probe_z: Tensor<B, 3>,
}

/// A projection with a frozen base weight and, if it is a target, a LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Frozen base weight `W0`, HF layout `[d_out, d_in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// The adapter, when this projection is a target.
    pub adapter: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// A projection with no adapter. The weight is frozen.
    pub fn frozen(weight: Tensor<B, 2>) -> Self {
        LoraLinear { weight: frozen_param(weight), adapter: None }
    }

    /// `[d_out, d_in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// Folds the adapter into the base weight: `W = W0 + s (B A - B0 A0)`, no adapter left.
    pub fn merge(self) -> Self {
        match &self.adapter {
            None => self,
            Some(adapter) => {
                // A bf16/f16 base weight is merged in f32 and rounded back to its own type.
                let weight = self.weight.val();
                let dtype = weight.dtype();
                let merged = (weight.cast(FloatDType::F32) + adapter.delta_weight()).cast(dtype);
                LoraLinear::frozen(merged.detach())
            }
        }
    }
}

impl<B: KernelBackend> LoraLinear<B> {
    /// `y = W0 x + s B A x` (minus the offset term), no dropout, no capture.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_in]` -> `[batch, seq, d_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, false, None)
    }

    /// The forward pass with training-time dropout (`train`) and, when `taps` is given,
    /// capture of x, z and the probes (see [`AdapterTap`]). Dropout must be off for capture.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_in]` -> `[batch, seq, d_out]`
    pub fn forward_with(&self, x: Tensor<B, 3>, train: bool, taps: Option<&mut Vec<AdapterTap<B>>>) -> Tensor<B, 3> {
        let Some(adapter) = &self.adapter else { return frozen_linear(x, self.weight.val()) };
        let dropout = train && adapter.dropout > 0.0;
        assert!(!(dropout && taps.is_some()), "curvature capture runs without dropout");
        // Under autodiff, a plain product with a bf16/f16 W that the backend widens keeps the
        // widened f32 copy for the backward: every layer's at once, ~28 GiB at 8B. The fused op
        // widens again in its backward instead, so half weights always take it (but dropout,
        // whose adapter reads another x than W does). f32 weights take it in the common case
        // only: with taps or the offset init they keep the unfused sum, the same function with
        // the round-off the demo's figures were made with.
        let widens = B::WIDENS_FROZEN_WEIGHTS && self.weight.val().dtype() != x.dtype();
        let use_fused = !dropout && (widens || (taps.is_none() && adapter.offset.is_none()));
        // s is applied to the small B (and B0) rather than to the [batch, seq, d_out] update:
        // one fewer full-size pass forward and backward.
        let scaled_b = adapter.lora_b.val().mul_scalar(adapter.scale); // [d_out, r]
        let offset_term = |x_in: Tensor<B, 3>| {
            adapter.offset.as_ref().map(|o| linear(linear(x_in, o.lora_a.val()), o.lora_b.val().mul_scalar(adapter.scale)))
        };
        let y = if use_fused {
            // `x W^T + s B A x` as one op, forward and backward (`KernelBackend::lora_linear`).
            let [batch, seq, d_in] = x.dims();
            let (w, a, b) = (self.weight.val(), adapter.lora_a.val(), adapter.lora_b.val());
            let fused =
                B::lora_linear(x.clone().reshape([batch * seq, d_in]), w, a, b, adapter.scale).reshape([batch, seq, self.dims()[0]]);
            match offset_term(x.clone()) {
                Some(o) => fused - o,
                None => fused,
            }
        } else {
            let x_in = if dropout {
                let keep = 1.0 - adapter.dropout;
                let mask = Tensor::random(x.shape(), Distribution::Bernoulli(keep), &x.device());
                x.clone() * mask.div_scalar(keep)
            } else {
                x.clone()
            };
            let update = linear(linear(x_in.clone(), adapter.lora_a.val()), scaled_b.clone());
            let update = match offset_term(x_in) {
                Some(o) => update - o,
                None => update,
            };
            frozen_linear(x.clone(), self.weight.val()) + update
        };
        let Some(taps) = taps else { return y };
        // z enters y only through `s B z`, so the gradient of a zero probe added as
        // `s B probe_z` is dL/dz, as if z itself were probed (and y's value is unchanged).
        let z = linear(x.clone(), adapter.lora_a.val()); // [batch, seq, r]
        let probe_z = Tensor::zeros(z.shape(), &z.device()).require_grad();
        let y = y + linear(probe_z.clone(), scaled_b);
        let probe_y = Tensor::zeros(y.shape(), &y.device()).require_grad();
        taps.push(AdapterTap { path: adapter.path(), x: x.detach(), z: z.detach(), probe_y: probe_y.clone(), probe_z });
        y + probe_y
    }
}

/// `x W^T` for `x: [batch, seq, d_in]` and `w: [d_out, d_in]` (HF layout), as one 2-D matmul
/// over all tokens: a strided gemm that reads `w` transposed in place, with no copy of the
/// weight and no per-sequence batching.
pub fn linear<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let d_out = w.dims()[0];
    x.reshape([batch * seq, d_in]).matmul(w.transpose()).reshape([batch, seq, d_out])
}

/// [`linear`] for a frozen weight that may be stored in a narrower float type than `x` (bf16
/// or f16 base weights; see [`KernelBackend`] for how the backend multiplies it). The result
/// has `x`'s type.
pub fn frozen_linear<B: KernelBackend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let d_out = w.dims()[0];
    crate::frozen_matmul(x.reshape([batch * seq, d_in]), w, true).reshape([batch, seq, d_out])
}

/// A parameter that never receives a gradient (and so never gets optimiser state).
pub fn frozen_param<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), tensor.set_require_grad(false)).set_require_grad(false)
}

/// A trainable parameter with a stable id: ids derive from the adapter path, so optimiser
/// state saved in a checkpoint finds its tensor again after a restart.
pub fn trainable_param<B: Backend, const D: usize>(tensor: Tensor<B, D>, key: &str) -> Param<Tensor<B, D>> {
    // A parameter is a leaf: whatever computed `tensor` is not part of its history.
    Param::initialized(ParamId::from(stable_hash(key)), tensor.detach().require_grad())
}

/// FNV-1a: a hash that is the same on every run and platform (std's is randomised).
fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Host-side seeded random numbers, so an init is identical on every backend.
pub struct InitRng(rand::rngs::StdRng);

impl InitRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        InitRng(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// `n` values from `U(-bound, bound)`.
    pub fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n).map(|_| ((self.0.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect()
    }

    /// `n` values from `N(0, std^2)` (Box-Muller).
    pub fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - self.0.random::<f64>(); // (0, 1]
                let u2: f64 = self.0.random::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
            })
            .collect()
    }
}

fn tensor2<B: Backend>(values: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Creates an adapter for the `[d_out, d_in]` projection `projection` of layer `layer` as
/// `config` says.
pub fn init_adapter<B: Backend>(
    (layer, projection): (usize, Projection),
    [d_out, d_in]: [usize; 2],
    config: &LoraConfig,
    rng: &mut InitRng,
    device: &B::Device,
) -> LoraAdapter<B> {
    let r = config.rank;
    let kaiming_a = |rng: &mut InitRng| rng.uniform(r * d_in, 1.0 / (d_in as f64).sqrt());
    let (a, b, offset) = match config.init {
        LoraInit::Peft => (kaiming_a(rng), vec![0.0; d_out * r], None),
        LoraInit::Gaussian => (rng.normal(r * d_in, 1.0 / r as f64), vec![0.0; d_out * r], None),
        LoraInit::Offset => {
            let a = kaiming_a(rng);
            let b = rng.uniform(d_out * r, 1.0 / (r as f64).sqrt());
            let offset = LoraOffset {
                lora_a: frozen_param(tensor2::<B>(a.clone(), [r, d_in], device)),
                lora_b: frozen_param(tensor2::<B>(b.clone(), [d_out, r], device)),
            };
            (a, b, Some(offset))
        }
    };
    let path = projection.module_path(layer);
    LoraAdapter {
        layer,
        projection,
        lora_a: trainable_param(tensor2(a, [r, d_in], device), &format!("{path}.lora_A")),
        lora_b: trainable_param(tensor2(b, [d_out, r], device), &format!("{path}.lora_B")),
        offset,
        scale: config.scale(),
        dropout: config.dropout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestBackend;

    fn projection(d_out: usize, d_in: usize, config: &LoraConfig) -> LoraLinear<TestBackend> {
        let device = Default::default();
        let mut rng = InitRng::new(7);
        let w = tensor2::<TestBackend>(rng.normal(d_out * d_in, 0.5), [d_out, d_in], &device);
        LoraLinear { weight: frozen_param(w), adapter: Some(init_adapter((0, Projection::Q), [d_out, d_in], config, &mut rng, &device)) }
    }

    fn input(d_in: usize) -> Tensor<TestBackend, 3> {
        let mut rng = InitRng::new(3);
        Tensor::from_data(TensorData::new(rng.normal(2 * 3 * d_in, 1.0), [2, 3, d_in]), &Default::default())
    }

    fn max_abs_diff(a: Tensor<TestBackend, 3>, b: Tensor<TestBackend, 3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn lora_with_zero_b_equals_base() {
        let layer = projection(5, 4, &LoraConfig::default());
        let x = input(4);
        let base = LoraLinear::frozen(layer.weight.val()).forward(x.clone());
        assert!(max_abs_diff(layer.forward(x), base) < 1e-6);
    }

    #[test]
    fn offset_init_leaves_the_function_unchanged_with_b_nonzero() {
        let config = LoraConfig { init: LoraInit::Offset, ..Default::default() };
        let layer = projection(5, 4, &config);
        let adapter = layer.adapter.as_ref().unwrap();
        assert!(adapter.lora_b.val().abs().max().into_scalar() > 0.0);
        let x = input(4);
        let base = LoraLinear::frozen(layer.weight.val()).forward(x.clone());
        assert!(max_abs_diff(layer.forward(x), base) < 1e-5);
    }

    #[test]
    fn merged_weight_equals_adapter_forward() {
        let config = LoraConfig { init: LoraInit::Offset, rank: 2, alpha: 3.0, ..Default::default() };
        let mut layer = projection(5, 4, &config);
        // Move B away from B0 so the update is non-zero.
        let adapter = layer.adapter.as_mut().unwrap();
        adapter.lora_b = trainable_param(adapter.lora_b.val().mul_scalar(2.0), "model.layers.0.self_attn.q_proj.lora_B");
        let x = input(4);
        let weight_before = layer.weight.val();
        let with_adapter = layer.forward(x.clone());
        let merged = layer.merge();
        assert!(merged.adapter.is_none());
        assert!(max_abs_diff(merged.forward(x.clone()), with_adapter.clone()) < 1e-5);
        // The update is not a no-op, so the equality above says something.
        let base = LoraLinear::frozen(weight_before).forward(x);
        assert!(max_abs_diff(with_adapter, base) > 1e-2);
    }

    #[test]
    fn scale_follows_peft() {
        assert_eq!(lora_scale(16.0, 8, false), 2.0);
        assert_eq!(lora_scale(16.0, 4, true), 8.0);
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = LoraConfig { targets: vec![], ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("targets"));
        let bad = LoraConfig { rank: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("rank"));
    }
}
