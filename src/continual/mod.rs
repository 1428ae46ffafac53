//! Continual LaLoRA: learning a sequence of target tasks while keeping the sources and the
//! earlier targets.
//!
//! The Laplace recipe (online EWC's, with LaLoRA's curvatures): after task t, fit the
//! curvature `F_t` of task t's loss at the new adapters `theta_t`, and make the prior for the
//! next task
//! `P_t = gamma P_{t-1} + F_t + delta_t I`, anchored at `theta_t`,
//! so task t+1 trains under `lambda/2 (theta - theta_t)^T P_t (theta - theta_t)`. `P_0` is the
//! usual source prior. [`crate::LaplacePrior::accumulate`] does one such update (diagonals add;
//! B-KFAC and B-Tri-KFAC sums of Kronecker products are kept exactly, term by term, see
//! [`crate::curvature::sum`]); [`crate::LaLoRA::fit_accumulated_prior`] fits and adds in one
//! call. [`run_continual`] runs a list of targets with several methods and fills one
//! [`RetentionMatrix`] per method: the score on every source and target set after every stage.

mod accumulate;
mod retention;
mod run;

pub(crate) use accumulate::term_weights;
pub use accumulate::PriorTerm;
pub use retention::{RetentionMatrix, RetentionSummary, SeedStatistics, TaskKind};
pub use run::{run_continual, ContinualConfig, ContinualData, ContinualMethod, ContinualResult, ContinualTarget};

use std::path::Path;

use crate::error::Result;
use crate::io::{write_atomic, write_json_atomic};

impl ContinualResult {
    /// Each method's headline figures.
    pub fn summaries(&self) -> Vec<RetentionSummary> {
        self.matrices.iter().map(RetentionMatrix::summary).collect()
    }

    /// Writes `retention.csv` (every matrix, one line per method and stage), `retention.json`
    /// (matrices, summaries, stage times) and, with the `cli` feature, `retention.svg` and
    /// `retention.png` (one heat map per method) to `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        write_matrices(&self.matrices, dir, "retention")?;
        write_json_atomic(&dir.join("retention.json"), &serde_json::json!({ "result": self, "summary": self.summaries() }))
    }
}

/// Writes `{stem}.csv` and, with the `cli` feature, the heat maps `{stem}.svg`/`{stem}.png`.
pub fn write_matrices(matrices: &[RetentionMatrix], dir: &Path, stem: &str) -> Result<()> {
    let mut csv = String::new();
    for (i, m) in matrices.iter().enumerate() {
        csv += &m.to_csv(i == 0);
    }
    write_atomic(&dir.join(format!("{stem}.csv")), csv.as_bytes())?;
    #[cfg(feature = "cli")]
    crate::plot::write_retention(matrices, &dir.join(format!("{stem}.svg")), &dir.join(format!("{stem}.png")))
        .map_err(|e| crate::Error::io(dir.join(format!("{stem}.png")), e))?;
    Ok(())
}

/// Means over seeds: one mean matrix per method and each method's summary statistics.
/// `runs` holds one result per seed, each with the same methods in the same order.
pub fn aggregate(runs: &[ContinualResult]) -> (Vec<RetentionMatrix>, Vec<SeedStatistics>) {
    let Some(first) = runs.first() else { return (Vec::new(), Vec::new()) };
    first
        .matrices
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let same: Vec<&RetentionMatrix> = runs.iter().map(|r| &r.matrices[i]).collect();
            let summaries: Vec<RetentionSummary> = same.iter().map(|m| m.summary()).collect();
            (RetentionMatrix::mean_of(&same), SeedStatistics::of(&m.method, &summaries))
        })
        .unzip()
}
