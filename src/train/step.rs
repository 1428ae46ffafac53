//! One optimiser step on a batch: forward with dropout, token-mean NLL plus an optional
//! penalty, backward, global-norm clipping, AdamW.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::cast::ToElement as _;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Batch;
use crate::laplace::PenaltyTerm;
use crate::llama::{ForwardOptions, Llama};
use crate::loss::head_forward;
use crate::{KernelAutodiffBackend, KernelBackend};

/// AdamW's hyper-parameters, with PyTorch's defaults written out (burn's differ: eps 1e-5,
/// weight decay 1e-4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// First-moment decay. PyTorch default 0.9.
    pub beta1: f32,
    /// Second-moment decay. PyTorch default 0.999.
    pub beta2: f32,
    /// Denominator epsilon. PyTorch default 1e-8.
    pub eps: f32,
    /// Decoupled weight decay. PyTorch default 0.01.
    pub weight_decay: f32,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWSettings {
    /// burn's AdamW configured with these values (clipping is done separately, by global norm).
    pub fn config(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
    }
}

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

/// Token-mean NLL of a batch without gradients (for evaluation on any backend).
pub fn lm_loss<B: KernelBackend>(model: &Llama<B>, batch: &Batch<B>) -> f64 {
    let hidden = model.hidden_states(batch.input_ids.clone(), Some(batch.key_mask.clone()), ForwardOptions::default());
    let out = head_forward(model.head_weight(), hidden);
    let nll = out.nll(batch.targets.clone()) * batch.loss_mask.clone();
    nll.sum().into_scalar().to_f64() / batch.num_targets.max(1) as f64
}

/// Figures of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// Token-mean NLL of the batch.
    pub loss: f64,
    /// Value of the penalty term added to the loss (0 without one).
    pub penalty: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
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

/// One training step: forward (dropout on), loss (+ `penalty(model)` if given), backward,
/// clip to `clip` by global norm, optimiser step with learning rate `lr`.
///
/// Returns the updated model and the step's figures. The loss is read back to the host, so
/// non-finite values can be caught by the caller.
pub fn train_step<B, O>(
    model: Llama<B>,
    optim: &mut O,
    batch: &Batch<B>,
    lr: f64,
    clip: Option<f64>,
    penalty: Option<&dyn Fn(&Llama<B>) -> PenaltyTerm<B>>,
) -> (Llama<B>, StepOutput)
where
    B: KernelAutodiffBackend,
    O: Optimizer<Llama<B>, B>,
    Llama<B>: AutodiffModule<B>,
{
    let LmObjective { surrogate, nll } = lm_objective(&model, batch, true, false);
    let (objective, penalty_value) = match penalty {
        Some(p) => {
            let term = p(&model);
            (surrogate + term.surrogate, Some(term.value))
        }
        None => (surrogate, None),
    };
    let grads = objective.backward();
    let mut grads = GradientsParams::from_grads(grads, &model);
    let grad_norm = clip_global_norm::<B>(&mut grads, &trainable_params(&model), clip);
    let loss = nll;
    let penalty = penalty_value.map_or(0.0, |p| p.into_scalar().to_f64());
    let model = optim.step(lr, model, grads);
    (model, StepOutput { loss, penalty, grad_norm })
}

