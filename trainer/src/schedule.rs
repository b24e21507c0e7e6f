//! Learning-rate schedules as pure functions of the step (reference §3.3): nothing to checkpoint.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// Warmup, then constant.
    Constant,
    /// Warmup, constant, then a linear cooldown to `min_lr` over the last `cooldown_steps`.
    Trapezoid,
    /// Warmup, then cosine from `lr` to `min_lr` at `max_steps`.
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub cooldown_steps: u64,
    pub max_steps: u64,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "optimizer.lr = {}: must be positive",
            self.lr
        );
        ensure!(
            self.min_lr >= 0.0 && self.min_lr <= self.lr,
            "optimizer.min_lr = {} must be in [0, lr]",
            self.min_lr
        );
        if self.decay == Decay::Trapezoid {
            ensure!(
                self.warmup_steps + self.cooldown_steps <= self.max_steps,
                "optimizer.warmup_steps + optimizer.cooldown_steps = {} exceeds train.max_steps = {}",
                self.warmup_steps + self.cooldown_steps,
                self.max_steps
            );
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (1-based).
    pub fn at(&self, step: u64) -> f64 {
        let (w, s) = (self.warmup_steps, step);
        if s < w {
            return self.lr * s as f64 / w as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Trapezoid => {
                let start = self.max_steps.saturating_sub(self.cooldown_steps);
                if s > start && self.cooldown_steps > 0 {
                    let left = self.max_steps.saturating_sub(s) as f64 / self.cooldown_steps as f64;
                    (self.lr * left).max(self.min_lr)
                } else {
                    self.lr
                }
            }
            Decay::Cosine => {
                let span = self.max_steps.saturating_sub(w).max(1) as f64;
                let f = ((s - w) as f64 / span).min(1.0);
                self.min_lr
                    + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * f).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> LrSchedule {
        LrSchedule {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            cooldown_steps: 20,
            max_steps: 100,
            decay,
        }
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        let s = sched(Decay::Constant);
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(5) - 5e-4).abs() < 1e-15);
        assert_eq!(s.at(10), 1e-3);
        assert_eq!(s.at(99), 1e-3);
    }

    #[test]
    fn trapezoid_cools_down_linearly_to_min_lr() {
        let s = sched(Decay::Trapezoid);
        assert_eq!(s.at(80), 1e-3);
        assert!((s.at(90) - 5e-4).abs() < 1e-15); // (100 − 90) / 20 of the way
        assert_eq!(s.at(99), 1e-4); // 0.05·lr clipped at min_lr
        assert_eq!(s.at(100), 1e-4);
    }

    #[test]
    fn cosine_reaches_min_lr_at_max_steps() {
        let s = sched(Decay::Cosine);
        assert!((s.at(10) - 1e-3).abs() < 1e-15);
        assert!((s.at(55) - 5.5e-4).abs() < 1e-12); // halfway: (lr + min_lr) / 2
        assert!((s.at(100) - 1e-4).abs() < 1e-15);
        assert!((s.at(150) - 1e-4).abs() < 1e-15);
    }

    #[test]
    fn reference_run_never_left_the_plateau() {
        // §3.3: W = C = 4096, max_steps 238,418; at step 47,360 the lr is still lr0.
        let s = LrSchedule {
            lr: 4e-5,
            min_lr: 0.0,
            warmup_steps: 4096,
            cooldown_steps: 4096,
            max_steps: 238_418,
            decay: Decay::Trapezoid,
        };
        assert_eq!(s.at(47_360), 4e-5);
        assert!((s.at(2048) - 2e-5).abs() < 1e-18);
    }
}
