//! LoRA training: the optimiser settings, the learning-rate schedule and one training step.

mod run;
mod schedule;
mod step;

pub use run::{train, EvalPlan, EvalPoint, Method, RunDir, TrainOptions, TrainOutcome};
pub use schedule::{LrSchedule, ScheduleKind};
pub use step::{
    clip_global_norm, lm_loss, lm_objective, train_step, trainable_params, AdamWSettings, LmObjective, ParamRef, StepOutput,
};
