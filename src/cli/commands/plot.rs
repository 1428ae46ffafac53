//! `lalora plot`: training curves of one or more run directories.

use std::path::PathBuf;

use clap::Args;
use lalora::curves::{write_curves, RunLog};

/// Flags of `lalora plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with the log.jsonl that `lalora train --out DIR` writes); several
    /// are overlaid, one colour per run.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output path without extension; PREFIX.png and PREFIX.svg are written.
    /// Default: RUN_DIR/curves for one run, ./curves for several.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `lalora plot`.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let runs = args.runs.iter().map(|dir| RunLog::read(dir)).collect::<lalora::Result<Vec<_>>>()?;
    let prefix = args.out.unwrap_or_else(|| match args.runs.as_slice() {
        [one] => one.join("curves"),
        _ => PathBuf::from("curves"),
    });
    let (png, svg) = (prefix.with_extension("png"), prefix.with_extension("svg"));
    write_curves(&runs, &svg, &png).map_err(|e| anyhow::anyhow!("{}: {e}", svg.display()))?;
    for run in &runs {
        println!("{}: {} steps, {} eval scores", run.name, run.steps.len(), run.evals.len());
    }
    println!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
