//! The retention matrix of a continual run: the score on every task (sources and targets)
//! after every stage, as in the forgetting plots of the continual-learning literature.

use serde::{Deserialize, Serialize};

/// Whether a column is a source skill (kept from pretraining) or a target task (learnt in a
/// stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Knowledge to keep.
    Source,
    /// A task learnt in one of the stages.
    Target,
}

/// Scores of one method: row 0 is the starting model, row t the model after stage t (the
/// t-th target); one column per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionMatrix {
    /// `lora`, `lalora-source`, `lalora-accumulated`, ...
    pub method: String,
    /// Column names: the source sets, then the target sets in learning order.
    pub tasks: Vec<String>,
    /// Kind of each column.
    pub kinds: Vec<TaskKind>,
    /// Row names: `start`, then the target learnt in each stage.
    pub stages: Vec<String>,
    /// `scores[row][column]`, each set's headline score (higher is better).
    pub scores: Vec<Vec<f64>>,
}

/// A method's headline figures, from the last row of its matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionSummary {
    /// The method.
    pub method: String,
    /// Mean final score over every task, sources and targets (the "average accuracy").
    pub average_final: f64,
    /// Mean final score over the targets.
    pub average_final_targets: f64,
    /// Mean final score over the sources.
    pub average_final_sources: f64,
    /// Mean over the targets learnt before the last stage of (score right after its own stage
    /// minus final score): how much of what was learnt was lost again.
    pub target_forgetting: f64,
    /// Mean over the sources of (starting score minus final score).
    pub source_forgetting: f64,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

impl RetentionMatrix {
    /// An empty matrix (no rows yet) over these columns.
    pub fn new(method: &str, sources: &[String], targets: &[String]) -> Self {
        let tasks: Vec<String> = sources.iter().chain(targets).cloned().collect();
        let kinds = sources.iter().map(|_| TaskKind::Source).chain(targets.iter().map(|_| TaskKind::Target)).collect();
        RetentionMatrix { method: method.to_string(), tasks, kinds, stages: Vec::new(), scores: Vec::new() }
    }

    /// Appends the scores after stage `stage`.
    ///
    /// # Panics
    /// If `scores` does not have one entry per column.
    pub fn push(&mut self, stage: &str, scores: Vec<f64>) {
        assert_eq!(scores.len(), self.tasks.len(), "one score per task");
        self.stages.push(stage.to_string());
        self.scores.push(scores);
    }

    fn columns(&self, kind: TaskKind) -> impl Iterator<Item = usize> + '_ {
        self.kinds.iter().enumerate().filter(move |(_, k)| **k == kind).map(|(i, _)| i)
    }

    /// The headline figures of the last row.
    pub fn summary(&self) -> RetentionSummary {
        let last = self.scores.last().cloned().unwrap_or_else(|| vec![f64::NAN; self.tasks.len()]);
        let first = self.scores.first().cloned().unwrap_or_else(|| vec![f64::NAN; self.tasks.len()]);
        // Target j is learnt in the stage whose row is named after it.
        let learnt_at = |j: usize| self.stages.iter().position(|s| *s == self.tasks[j]);
        let forgotten_targets = self.columns(TaskKind::Target).filter_map(|j| {
            let row = learnt_at(j)?;
            (row + 1 < self.scores.len()).then(|| self.scores[row][j] - last[j])
        });
        RetentionSummary {
            method: self.method.clone(),
            average_final: mean(last.iter().copied()),
            average_final_targets: mean(self.columns(TaskKind::Target).map(|j| last[j])),
            average_final_sources: mean(self.columns(TaskKind::Source).map(|j| last[j])),
            target_forgetting: mean(forgotten_targets),
            source_forgetting: mean(self.columns(TaskKind::Source).map(|j| first[j] - last[j])),
        }
    }

    /// The matrix as CSV: `method,stage,<task>...`, one line per row.
    pub fn to_csv(&self, with_header: bool) -> String {
        let mut csv = String::new();
        if with_header {
            csv += &format!("method,stage,{}\n", self.tasks.join(","));
        }
        for (stage, row) in self.stages.iter().zip(&self.scores) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            csv += &format!("{},{stage},{}\n", self.method, cells.join(","));
        }
        csv
    }

    /// Element-wise mean of matrices of one method over seeds (same rows and columns).
    ///
    /// # Panics
    /// If the list is empty or the matrices' shapes differ.
    pub fn mean_of(matrices: &[&RetentionMatrix]) -> RetentionMatrix {
        let first = matrices.first().expect("at least one matrix");
        let mut out = (*first).clone();
        for (r, row) in out.scores.iter_mut().enumerate() {
            for (c, cell) in row.iter_mut().enumerate() {
                *cell = mean(matrices.iter().map(|m| m.scores[r][c]));
            }
        }
        out
    }
}

/// Mean and sample standard deviation of summaries of one method over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedStatistics {
    /// The method.
    pub method: String,
    /// Seeds aggregated.
    pub seeds: usize,
    /// Mean of each summary figure.
    pub mean: RetentionSummary,
    /// Sample standard deviation of each figure (0 for one seed).
    pub std: RetentionSummary,
}

impl SeedStatistics {
    /// Aggregates `summaries` (one per seed) of `method`.
    pub fn of(method: &str, summaries: &[RetentionSummary]) -> Self {
        let figures = |s: &RetentionSummary| {
            [s.average_final, s.average_final_targets, s.average_final_sources, s.target_forgetting, s.source_forgetting]
        };
        let n = summaries.len();
        let mut mean_v = [0.0; 5];
        let mut std_v = [0.0; 5];
        for k in 0..5 {
            let values: Vec<f64> = summaries.iter().map(|s| figures(s)[k]).collect();
            let m = mean(values.iter().copied());
            mean_v[k] = m;
            std_v[k] = if n > 1 { (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        }
        let build = |v: [f64; 5]| RetentionSummary {
            method: method.to_string(),
            average_final: v[0],
            average_final_targets: v[1],
            average_final_sources: v[2],
            target_forgetting: v[3],
            source_forgetting: v[4],
        };
        SeedStatistics { method: method.to_string(), seeds: n, mean: build(mean_v), std: build(std_v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> RetentionMatrix {
        let mut m = RetentionMatrix::new("lora", &["facts".into()], &["a".into(), "b".into()]);
        m.push("start", vec![0.9, 0.0, 0.1]);
        m.push("a", vec![0.7, 0.8, 0.1]);
        m.push("b", vec![0.5, 0.4, 0.6]);
        m
    }

    #[test]
    fn summary_reads_the_last_row_and_the_drops() {
        let s = matrix().summary();
        assert!((s.average_final - 0.5).abs() < 1e-12);
        assert!((s.average_final_targets - 0.5).abs() < 1e-12);
        assert!((s.average_final_sources - 0.5).abs() < 1e-12);
        // a: 0.8 after its stage, 0.4 at the end; b is learnt last and does not count.
        assert!((s.target_forgetting - 0.4).abs() < 1e-12);
        assert!((s.source_forgetting - 0.4).abs() < 1e-12);
    }

    #[test]
    fn csv_has_one_line_per_row_and_means_average_cells() {
        let m = matrix();
        let csv = m.to_csv(true);
        assert_eq!(csv.lines().next(), Some("method,stage,facts,a,b"));
        assert_eq!(csv.lines().nth(2), Some("lora,a,0.700000,0.800000,0.100000"));
        let mut other = m.clone();
        other.scores[2][0] = 0.7;
        let mean = RetentionMatrix::mean_of(&[&m, &other]);
        assert!((mean.scores[2][0] - 0.6).abs() < 1e-12);
        let stats = SeedStatistics::of("lora", &[m.summary(), other.summary()]);
        assert!((stats.mean.average_final_sources - 0.6).abs() < 1e-12);
        assert!((stats.std.average_final_sources - (0.02f64).sqrt()).abs() < 1e-12);
    }
}
