//! LoRA training: the run's configuration, one optimiser step, and the loop with evaluation,
//! logs and checkpoints, in a locked run directory whose resume is checked against the
//! settings and inputs it was started with.

mod checkpoint;
mod config;
mod decay;
mod fingerprint;
mod run;
mod run_dir;
mod step;

pub use checkpoint::accumulate_checkpointed;
pub use config::{DataConfig, EvalConfig, OptimizerConfig, Penalty, RunConfig, ScheduleConfig, ScheduleKind, TrainConfig};
pub use decay::DecayToward;
pub use fingerprint::RunInputs;
pub(crate) use run::train;
pub use run::{EvalPoint, TrainControl, TrainData, TrainReport};
pub use run_dir::{open_run_dir, RUN_FILES};
pub use step::{clip_global_norm, lm_objective, trainable_params, LmObjective, ParamRef, Step, StepOutput};
