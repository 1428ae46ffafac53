//! `lalora tasks`: write the bundled synthetic source skills and the target tasks (arithmetic,
//! and envoys and trade for continual learning) as JSONL files.

use std::path::PathBuf;

use clap::Args;
use lalora::tasks::{write_tasks, TaskSizes};

/// Flags of `lalora tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed of every generator (the same seed writes byte-identical files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A few dozen records per file, for quick checks and CI.
    #[arg(long)]
    tiny: bool,
}

/// Runs `lalora tasks`.
pub fn run(args: TasksArgs) -> anyhow::Result<()> {
    let sizes = if args.tiny { TaskSizes::tiny() } else { TaskSizes::default() };
    let files = write_tasks(&args.out, args.seed, &sizes)?;
    println!("pretraining corpus  {}", files.pretrain.display());
    for (name, train, eval) in &files.sources {
        println!("source {name:<12} {} (Laplace data), {} (held-out eval)", train.display(), eval.display());
    }
    for (name, train, test) in &files.targets {
        println!("target {name:<12} {} (train), {} (test)", train.display(), test.display());
    }
    Ok(())
}
