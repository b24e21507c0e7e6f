//! Depth sampling: (step, scheme) → (n, k), reference §2.1 and §2.4.
//!
//! A pure function of the step: every rank draws the same depth without communicating, and a resumed
//! run draws the same depths again.

use std::sync::Mutex;

use crate::Depth;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How the per-step depth is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Huginn: p = Poisson(LogNormal(ln r̄ − σ²/2, σ)) + 1, n = max(p − k̄, 0), k = min(k̄, p).
    PoissonLognormalFilling,
    /// (r̄ − k̄, k̄) every step.
    Fixed,
    /// (Poisson(r̄ − k̄), k̄).
    PoissonFill,
    /// (0, 1): the non-recurrent baseline.
    NonRecurrent,
}

/// The shape f(p) of the retrofit curriculum's ramp of r̄ (McLeish et al. 2025).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ramp {
    /// f(p) = p.
    #[serde(rename = "linear")]
    Linear,
    /// f(p) = 1 − √(1 − p): fast at first, slow near the top.
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// The retrofit curriculum: r̄ at step s is max(1, ⌈r̄_max · f(p)⌉) with p = (s − 1) / W, capped
/// at r̄_max from step W + 1 on, and k̄ is capped at that r̄ (the retrofit code's
/// warmup-stable-decay schedule stepped once per optimizer step: step 1 runs r̄ = 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCurriculum {
    pub ramp: Ramp,
    /// W: steps of the ramp.
    pub warmup_steps: u64,
}

/// A depth sampler: scheme, targets r̄ and k̄, σ, and an optional curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthSampler {
    pub scheme: Scheme,
    pub mean_recurrence: i64,
    pub mean_backprop_depth: i64,
    pub sigma: f64,
    /// Huginn's `curriculum-N`: ramp r̄ and k̄ linearly from 1 to their targets over this many
    /// steps (0: none).
    pub curriculum_steps: u64,
    /// The retrofit curriculum (exclusive with `curriculum_steps`).
    pub curriculum: Option<MeanCurriculum>,
}

// torch's CPU generator is process-global; the draw seeds it and must not interleave with another
// thread's draw (tests run in parallel).
static TORCH_RNG: Mutex<()> = Mutex::new(());

impl DepthSampler {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.mean_recurrence >= 1,
            "recurrence.mean_recurrence = {}: must be >= 1",
            self.mean_recurrence
        );
        ensure!(
            self.mean_backprop_depth >= 1,
            "recurrence.mean_backprop_depth = {}: must be >= 1",
            self.mean_backprop_depth
        );
        ensure!(
            self.mean_backprop_depth <= self.mean_recurrence,
            "recurrence.mean_backprop_depth = {} exceeds recurrence.mean_recurrence = {}",
            self.mean_backprop_depth,
            self.mean_recurrence
        );
        ensure!(
            self.sigma > 0.0 && self.sigma.is_finite(),
            "recurrence.sigma = {}: must be positive",
            self.sigma
        );
        ensure!(
            self.curriculum.is_none() || self.curriculum_steps == 0,
            "recurrence.curriculum and recurrence.curriculum_steps are two curricula: set one"
        );
        Ok(())
    }

    /// (r̄, k̄) in force at `step` (1-based), after the curriculum.
    pub fn targets(&self, step: u64) -> (i64, i64) {
        if let Some(c) = self.curriculum {
            let p = (step.saturating_sub(1) as f64 / c.warmup_steps.max(1) as f64).min(1.0);
            let f = match c.ramp {
                Ramp::Linear => p,
                Ramp::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
            };
            let mean =
                ((self.mean_recurrence as f64 * f).ceil() as i64).clamp(1, self.mean_recurrence);
            return (mean, self.mean_backprop_depth.min(mean));
        }
        if self.curriculum_steps == 0 || step >= self.curriculum_steps {
            return (self.mean_recurrence, self.mean_backprop_depth);
        }
        let f = step as f64 / self.curriculum_steps as f64;
        let ramp = |target: i64| (1.0 + f * (target - 1) as f64).round() as i64;
        (ramp(self.mean_recurrence), ramp(self.mean_backprop_depth))
    }

    /// The depth of training step `step` (1-based, as the reference's `microbatch_step`).
    pub fn draw(&self, step: u64) -> Depth {
        let (mean, k_bar) = self.targets(step);
        let t = (mean - k_bar).max(0);
        match self.scheme {
            Scheme::Fixed => Depth::new(t, k_bar),
            Scheme::NonRecurrent => Depth::new(0, 1),
            Scheme::PoissonFill => Depth::new(poisson(step, t as f64), k_bar),
            Scheme::PoissonLognormalFilling => {
                let mu = ((t + k_bar) as f64).ln() - self.sigma * self.sigma / 2.0;
                let p = lognormal_poisson(step, mu, self.sigma) + 1;
                Depth::new((p - k_bar).max(0), k_bar.min(p))
            }
        }
    }
}

fn seed_n(step: u64) -> i64 {
    ((514_229 + step) % ((1 << 31) - 1)) as i64
}

/// Poisson(LogNormal(μ, σ)) from torch's CPU generator seeded with 514229 + step: the reference's
/// exact draws (its test vectors for steps 1..12 are a test here).
fn lognormal_poisson(step: u64, mu: f64, sigma: f64) -> i64 {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed_n(step));
    let rate = Tensor::zeros([1], (Kind::Float, Device::Cpu)).log_normal_(mu, sigma);
    Tensor::poisson(&rate).int64_value(&[0])
}

fn poisson(step: u64, lambda: f64) -> i64 {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed_n(step));
    Tensor::poisson(&Tensor::from_slice(&[lambda as f32])).int64_value(&[0])
}
