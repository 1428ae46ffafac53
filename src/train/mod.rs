//! LoRA training: the run's configuration, one optimiser step, and the loop with evaluation,
//! logs and checkpoints.

mod config;
mod decay;
mod run;
mod step;

pub use config::{DataConfig, EvalConfig, OptimizerConfig, Penalty, RunConfig, ScheduleConfig, ScheduleKind, TrainConfig};
pub use decay::DecayToward;
pub(crate) use run::train;
pub use run::{EvalPoint, TrainControl, TrainData, TrainReport};
pub use step::{clip_global_norm, lm_objective, trainable_params, LmObjective, ParamRef, Step, StepOutput};
