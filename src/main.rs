//! The `lalora` command line: expand `--config` files, parse, pick the backend, dispatch.

mod cli;

use clap::{CommandFactory, FromArgMatches};

fn main() -> anyhow::Result<()> {
    let args = lalora::run_config::expand_config_args(&cli::Cli::command(), std::env::args_os().collect())?;
    let matches = cli::Cli::command().get_matches_from(args);
    let parsed = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::run(parsed, cli::resolved_flags(&matches))
}
