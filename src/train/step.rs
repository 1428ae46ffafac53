//! One optimiser step on a batch: forward with dropout, token-mean NLL plus an optional
//! penalty, backward, global-norm clipping, AdamW (with its decay toward the starting adapters
//! when fine-tuning, see [`super::decay`]).
//!
//! The objective of a step over micro-batches `k = 1..n` with `N_k` loss tokens each is
//! `sum_k sum_t nll_kt / sum_k N_k + (lambda/2) d^T P d`: the token mean over the whole step,
//! so `n` micro-batches of `b` sequences give the gradient of one batch of `n b`, and the
//! penalty counts once per step whatever `n` is.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::cast::ToElement as _;
use burn::tensor::Tensor;

use super::checkpoint::accumulate_checkpointed;
use super::decay::DecayToward;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::laplace::LaplacePrior;
use crate::llama::{ForwardOptions, Llama};
use crate::{KernelAutodiffBackend, KernelBackend};

/// The training objective of a batch, ready for `backward`.
pub struct LmObjective<B: AutodiffBackend> {
    /// `sum(h * dL/dh)` over the final hidden states h, with `dL/dh` detached: its gradient
    /// w.r.t. every parameter equals that of the token-mean NLL (see [`crate::loss`]).
    pub surrogate: Tensor<B, 1>,
    /// The token-mean NLL itself.
    pub nll: f64,
}

/// Token-mean NLL of a batch (`sum_t nll_t / num_targets`, dropout on when `train`), with the
/// head's gradient in closed form. With `head_grad` the surrogate also carries the gradient of
/// the head weight (`dL/dW = (dL/dlogits)^T h`), for full-parameter training.
pub fn lm_objective<B: KernelAutodiffBackend>(model: &Llama<B>, batch: &Batch<B>, train: bool, head_grad: bool) -> LmObjective<B> {
    let options = ForwardOptions { train, ..Default::default() };
    let hidden = model.hidden_states(batch.input_ids.clone(), Some(batch.key_mask.clone()), options);
    let head = model.head_weight();
    let [b, t, d] = hidden.dims();
    let weights = batch.loss_mask.clone().inner().div_scalar(batch.num_targets.max(1) as f64).reshape([b * t]);
    let targets = batch.targets.clone().inner().reshape([b * t]);
    // The head's loss and gradients in closed form, by the backend's kernel.
    let out = B::InnerBackend::lm_head_loss(hidden.clone().inner().reshape([b * t, d]), head.clone().inner(), targets, weights, head_grad);
    let nll = out.nll.into_scalar().to_f64();
    let mut surrogate = (hidden * Tensor::from_inner(out.hidden_grad.reshape([b, t, d]))).sum();
    if let Some(weight_grad) = out.head_grad {
        surrogate = surrogate + (head * Tensor::from_inner(weight_grad)).sum(); // [vocab, hidden]
    }
    LmObjective { surrogate, nll }
}

/// Figures of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// Token-mean NLL of the step's micro-batches.
    pub loss: f64,
    /// Value of the penalty term added to the loss (0 without one).
    pub penalty: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Loss-carrying tokens of the step.
    pub tokens: usize,
}

/// A parameter's id and rank, so its gradient can be read back with the right type.
pub type ParamRef = (ParamId, usize);

/// Every parameter that requires a gradient, with its rank.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamRef> {
    struct Collect(Vec<ParamRef>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0.push((param.id, D));
            }
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// Rescales all gradients so their joint L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping. Parameters of rank 1 and 2 (norm
/// gains and matrices) are supported.
pub fn clip_global_norm<B: AutodiffBackend>(grads: &mut GradientsParams, params: &[ParamRef], max_norm: Option<f64>) -> f64 {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    let mut squares: Vec<Tensor<Inner<B>, 1>> = Vec::new();
    for &(id, rank) in params {
        match rank {
            1 => squares.extend(grads.get::<Inner<B>, 1>(id).map(|g| g.square().sum())),
            2 => squares.extend(grads.get::<Inner<B>, 2>(id).map(|g| g.square().sum())),
            other => panic!("clip_global_norm: rank-{other} parameters are not supported"),
        }
    }
    let norm = if squares.is_empty() { 0.0 } else { Tensor::cat(squares, 0).sum().into_scalar().to_f64().sqrt() };
    if let Some(max) = max_norm {
        if norm > max {
            let factor = max / (norm + 1e-6);
            for &(id, rank) in params {
                if rank == 1 {
                    if let Some(g) = grads.remove::<Inner<B>, 1>(id) {
                        grads.register::<Inner<B>, 1>(id, g.mul_scalar(factor));
                    }
                } else if let Some(g) = grads.remove::<Inner<B>, 2>(id) {
                    grads.register::<Inner<B>, 2>(id, g.mul_scalar(factor));
                }
            }
        }
    }
    norm
}

/// One optimiser step, the same for fine-tuning, pretraining and the benchmark.
pub struct Step<'a, B: KernelAutodiffBackend> {
    /// Learning rate of this step.
    pub lr: f64,
    /// Global-norm clip (None: no clipping).
    pub clip: Option<f64>,
    /// Also train the LM head (full-parameter pretraining); its gradient is added in closed form.
    pub head_grad: bool,
    /// The prior and the factor (lambda / 2) of its penalty, added once per step.
    pub penalty: Option<(&'a LaplacePrior<B>, f64)>,
    /// The trainable parameters (for clipping), from [`trainable_params`].
    pub params: &'a [ParamRef],
    /// Decoupled weight decay toward the starting adapters, applied after the optimiser's
    /// update (whose own decay must then be 0); `None` leaves decay to the optimiser.
    pub decay: Option<DecayToward<'a, B>>,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    /// ([`super::accumulate_checkpointed`]); not with `head_grad` or adapter dropout.
    pub checkpointing: bool,
}

impl<B: KernelAutodiffBackend> Step<'_, B> {
    /// Runs the step over `micro_batches` (gradient accumulation): each micro-batch's forward
    /// (dropout on) and token-mean NLL, weighted by its share `N_k / sum_k N_k` of the step's
    /// loss tokens, the penalty with the first one, backward and accumulate; then, if the loss
    /// and the penalty are finite, global-norm clipping, AdamW and the decay toward the
    /// starting adapters.
    ///
    /// # Errors
    /// [`Error::Numerical`] naming the cause when the loss, the penalty or the gradient norm
    /// is not finite; the optimiser has not stepped then.
    pub fn run<O: Optimizer<Llama<B>, B>>(
        &self,
        model: Llama<B>,
        optim: &mut O,
        micro_batches: Vec<Batch<B>>,
    ) -> Result<(Llama<B>, StepOutput)> {
        let n = micro_batches.len();
        assert!(n > 0, "a step needs at least one micro-batch");
        let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
        let tokens: usize = micro_batches.iter().map(|b| b.num_targets).sum();
        let (mut loss, mut penalty) = (0.0, 0.0);
        for (micro, batch) in micro_batches.iter().enumerate() {
            // The token mean over the whole step (equal shares when no micro-batch has tokens).
            let share = if tokens == 0 { 1.0 / n as f64 } else { batch.num_targets as f64 / tokens as f64 };
            let penalty_term = match (micro, self.penalty) {
                (0, Some((prior, scale))) => Some(prior.penalty(&model, scale)),
                _ => None,
            };
            if let Some(term) = &penalty_term {
                penalty = term.value.clone().into_scalar().to_f64();
            }
            if self.checkpointing {
                if self.head_grad {
                    return Err(Error::arg("gradient-checkpointing", "is for LoRA training; full-parameter training is not supported"));
                }
                loss += accumulate_checkpointed(&model, batch, share, &mut accumulator)? * share;
                if let Some(term) = penalty_term {
                    accumulator.accumulate(&model, GradientsParams::from_grads(term.surrogate.backward(), &model));
                }
                continue;
            }
            let objective = lm_objective(&model, batch, true, self.head_grad);
            let mut total = objective.surrogate.mul_scalar(share);
            loss += objective.nll * share;
            if let Some(term) = penalty_term {
                total = total + term.surrogate;
            }
            accumulator.accumulate(&model, GradientsParams::from_grads(total.backward(), &model));
        }
        if !loss.is_finite() {
            return Err(Error::Numerical(format!("loss is {loss}")));
        }
        if !penalty.is_finite() {
            return Err(Error::Numerical(format!("penalty is {penalty}")));
        }
        let mut grads = accumulator.grads();
        let grad_norm = clip_global_norm::<B>(&mut grads, self.params, self.clip);
        // A non-finite gradient would make the optimiser's moments non-finite for good.
        if !grad_norm.is_finite() {
            return Err(Error::Numerical(format!("gradient norm is {grad_norm}")));
        }
        let offsets = self.decay.as_ref().map(|d| d.offsets(&model));
        let mut model = optim.step(self.lr, model, grads);
        if let (Some(decay), Some(offsets)) = (&self.decay, offsets) {
            model = decay.apply(model, self.lr, offsets);
        }
        Ok((model, StepOutput { loss, penalty, grad_norm, tokens }))
    }
}
