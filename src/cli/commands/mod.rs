//! One module per subcommand, each with its flags and a `run`.

pub mod eval;
pub mod generate;
