//! One module per subcommand, each with its flags and a `run`.

pub mod bench;
pub mod continual;
pub mod eval;
pub mod generate;
pub mod laplace;
pub mod memory;
pub mod merge;
pub mod plot;
pub mod pretrain;
pub mod sweep;
pub mod tasks;
pub mod train;
