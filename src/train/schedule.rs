//! Learning-rate schedules: linear warmup, then cosine or linear decay (or constant).

use serde::{Deserialize, Serialize};

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half a cosine from the peak down to `min_ratio * peak`.
    #[default]
    Cosine,
    /// A straight line from the peak down to `min_ratio * peak`.
    Linear,
    /// The peak for every step after warmup.
    Constant,
}

/// `lr_at(step)` for a run of `total_steps` optimiser steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warmup from 0 to the peak.
    pub warmup_steps: usize,
    /// Optimiser steps in the run.
    pub total_steps: usize,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Final learning rate as a fraction of the peak.
    pub min_ratio: f64,
}

impl LrSchedule {
    /// Learning rate of (0-based) step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_the_floor() {
        let s = LrSchedule { peak: 1.0, warmup_steps: 4, total_steps: 14, kind: ScheduleKind::Cosine, min_ratio: 0.1 };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(9) - 0.55).abs() < 1e-12, "half way: {}", s.lr_at(9));
        assert!((s.lr_at(14) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_decays_in_a_straight_line() {
        let s = LrSchedule { peak: 2.0, warmup_steps: 0, total_steps: 10, kind: ScheduleKind::Linear, min_ratio: 0.0 };
        assert_eq!(s.lr_at(0), 2.0);
        assert!((s.lr_at(5) - 1.0).abs() < 1e-12);
    }
}
