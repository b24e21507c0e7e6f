//! Optimizers over the flat fp32 parameter buffer: ELLIS-Adam exactly as the reference (§3.4) and
//! AdamW. Their whole state is two flat tensors and a step counter, so it checkpoints as safetensors
//! (tch's own optimizers hide their state).

use anyhow::{bail, ensure, Result};
use muninn_model::params::ParamSpec;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    EllisAdam,
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ellis-adam" => OptimizerKind::EllisAdam,
            "adamw" => OptimizerKind::Adamw,
            other => bail!("unknown optimizer `{other}` (ellis-adam or adamw)"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// The constructor lr (lr_init); ELLIS-Adam scales weight decay by lr_t / lr_init.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// ELLIS-Adam's per-tensor update clipping: v ← max(v, ε²), η = lr / max(RMS(g/√v), 1).
    pub update_clipping: bool,
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.beta1),
            "optimizer.beta1 = {} must be in [0, 1)",
            self.beta1
        );
        ensure!(
            (0.0..1.0).contains(&self.beta2),
            "optimizer.beta2 = {} must be in [0, 1)",
            self.beta2
        );
        ensure!(
            self.eps > 0.0,
            "optimizer.eps = {} must be positive",
            self.eps
        );
        ensure!(
            self.weight_decay >= 0.0,
            "optimizer.weight_decay = {} must be >= 0",
            self.weight_decay
        );
        Ok(())
    }
}

/// Whether a parameter decays, by the reference's name rules (§3.4): norms, `ln_f` and biases
/// (`qk_bias`) do not; the tied embedding/head and every weight matrix do.
pub fn decays(name: &str) -> bool {
    let n = name.to_lowercase();
    !(n.contains("norm") || n.contains("ln_f") || n.contains("bias"))
}

struct Segment {
    offset: i64,
    numel: i64,
    decay: bool,
}

pub struct FlatOptimizer {
    cfg: OptimizerConfig,
    segments: Vec<Segment>,
    m: Tensor,
    v: Tensor,
    /// Updates applied so far (t in the bias corrections).
    steps: u64,
}

impl FlatOptimizer {
    /// State for parameters laid out as `specs` in a flat buffer like `flat`.
    pub fn new(cfg: OptimizerConfig, specs: &[ParamSpec], flat: &Tensor) -> Self {
        let mut offset = 0;
        let segments = specs
            .iter()
            .map(|s| {
                let seg = Segment {
                    offset,
                    numel: s.numel(),
                    decay: decays(&s.name),
                };
                offset += s.numel();
                seg
            })
            .collect();
        let zeros = || flat.detach().zeros_like().to_kind(Kind::Float);
        FlatOptimizer {
            cfg,
            segments,
            m: zeros(),
            v: zeros(),
            steps: 0,
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of `params` (the flat leaf, updated in place without autograd) from `grads` at the
    /// scheduled learning rate `lr_t`.
    pub fn step(&mut self, params: &Tensor, grads: &Tensor, lr_t: f64) {
        let c = &self.cfg;
        let t = (self.steps + 1) as f64;
        let (bc1, bc2) = (1.0 - c.beta1.powf(t), 1.0 - c.beta2.powf(t));
        tch::no_grad(|| {
            let p_all = params.detach();
            for s in &self.segments {
                let mut p = p_all.narrow(0, s.offset, s.numel);
                let g = grads.narrow(0, s.offset, s.numel);
                let mut m = self.m.narrow(0, s.offset, s.numel);
                let mut v = self.v.narrow(0, s.offset, s.numel);
                let wd = if s.decay { c.weight_decay } else { 0.0 };
                match c.kind {
                    OptimizerKind::EllisAdam => {
                        if self.steps == 0 {
                            // running_init: state starts at the first gradient, not at zero.
                            m.copy_(&g);
                            v.copy_(&(&g * &g));
                        }
                        let _ = m.lerp_(&g, 1.0 - c.beta1);
                        let _ = v.g_mul_scalar_(c.beta2);
                        let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                        // η as a 0-dim tensor: no device sync per parameter.
                        let eta = if c.update_clipping {
                            let _ = v.clamp_min_(c.eps * c.eps); // persistent, as in the reference
                            let rms = (&g * &g / &v).mean(Kind::Float).sqrt().clamp_min(1.0);
                            rms.reciprocal() * (lr_t / bc1)
                        } else {
                            Tensor::from(lr_t / bc1).to_device(p.device())
                        };
                        let _ = p.g_mul_scalar_(1.0 - (lr_t / c.lr) * wd);
                        let update = m.atan2(&(v.sqrt() / bc2.sqrt()));
                        let _ = p.g_sub_(&(update * eta));
                    }
                    OptimizerKind::Adamw => {
                        let _ = m.lerp_(&g, 1.0 - c.beta1);
                        let _ = v.g_mul_scalar_(c.beta2);
                        let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                        let _ = p.g_mul_scalar_(1.0 - lr_t * wd);
                        let denom = (&v / bc2).sqrt() + c.eps;
                        let _ = p.g_sub_(&(&m / denom * (lr_t / bc1)));
                    }
                }
            }
        });
        self.steps += 1;
    }

    /// (name, tensor) pairs for a checkpoint's optimizer file.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("exp_avg".into(), self.m.shallow_clone()),
            ("exp_avg_sq".into(), self.v.shallow_clone()),
        ]
    }

    pub fn load_state(&mut self, m: &Tensor, v: &Tensor, steps: u64) -> Result<()> {
        ensure!(
            m.size() == self.m.size() && v.size() == self.v.size(),
            "optimizer state has {:?} elements, the model {:?}",
            m.size(),
            self.m.size()
        );
        tch::no_grad(|| {
            self.m.copy_(m);
            self.v.copy_(v);
        });
        self.steps = steps;
        Ok(())
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm` (when `max_norm` > 0), as
/// `clip_grad_norm_` does: factor min(1, max_norm / (‖g‖ + 1e-6)). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &Tensor, max_norm: f64) -> f64 {
    let norm = grads.norm().double_value(&[]);
    if max_norm > 0.0 && norm.is_finite() {
        let factor = (max_norm / (norm + 1e-6)).min(1.0);
        if factor < 1.0 {
            tch::no_grad(|| {
                let _ = grads.shallow_clone().g_mul_scalar_(factor);
            });
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use muninn_model::params::{Init, Part};
    use tch::Device;

    fn spec(name: &str, n: i64) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            shape: vec![n],
            part: Part::Core,
            init: Init::Zeros,
        }
    }

    fn ellis() -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::EllisAdam,
            lr: 4e-5,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 4e-5,
            update_clipping: true,
        }
    }

    #[test]
    fn ellis_adam_first_two_steps_match_a_hand_computation() {
        let specs = [
            spec("core.0.attn.Wqkv.weight", 2),
            spec("core.0.norm_1.weight", 1),
        ];
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let mut opt = FlatOptimizer::new(ellis(), &specs, &p);
        let (lr0, lr_t) = (4e-5f64, 2e-5f64);
        let g1 = [0.3f64, -0.1, 2.0];
        opt.step(&p, &Tensor::from_slice(&g1.map(|x| x as f32)), lr_t);

        // Step 1 by hand: running init m = g, v = g², so after the EMA m = g, v = g².
        // rms(g²/v) = 1 → η = lr_t / 1 / bc1 with bc1 = 0.1; bc2 = 0.05.
        // update = atan2(g, |g| / sqrt(0.05)) = sign(g)·atan(sqrt(0.05)).
        let atan = 0.05f64.sqrt().atan();
        let expect = |p0: f64, g: f64, decay: bool| {
            let wd = if decay { 4e-5 } else { 0.0 };
            p0 * (1.0 - lr_t / lr0 * wd) - (lr_t / 0.1) * g.signum() * atan
        };
        let want = [
            expect(1.0, g1[0], true),
            expect(-2.0, g1[1], true),
            expect(0.5, g1[2], false),
        ];
        let got: Vec<f64> = Vec::<f32>::try_from(&p)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        for i in 0..3 {
            assert!(
                (got[i] - want[i]).abs() < 1e-6,
                "param {i}: {} vs {}",
                got[i],
                want[i]
            );
        }

        // Step 2 with another gradient, by hand for the first tensor.
        let g2 = [0.1f64, 0.2];
        opt.step(&p, &Tensor::from_slice(&[0.1f32, 0.2, 0.0]), lr_t);
        let m: Vec<f64> = (0..2).map(|i| g1[i] + 0.1 * (g2[i] - g1[i])).collect();
        let v: Vec<f64> = (0..2)
            .map(|i| (0.95 * g1[i] * g1[i] + 0.05 * g2[i] * g2[i]).max(1e-12))
            .collect();
        let rms = ((0..2).map(|i| g2[i] * g2[i] / v[i]).sum::<f64>() / 2.0).sqrt();
        let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.95f64.powi(2));
        let eta = lr_t / rms.max(1.0) / bc1;
        let got2: Vec<f64> = Vec::<f32>::try_from(&p)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        for i in 0..2 {
            let want =
                got[i] * (1.0 - lr_t / lr0 * 4e-5) - eta * m[i].atan2(v[i].sqrt() / bc2.sqrt());
            assert!(
                (got2[i] - want).abs() < 1e-6,
                "step 2 param {i}: {} vs {want}",
                got2[i]
            );
        }
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn adamw_step_matches_a_hand_computation() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adamw,
            lr: 1e-2,
            weight_decay: 0.1,
            eps: 1e-8,
            ..ellis()
        };
        let specs = [spec("wte.weight", 2)];
        let p = Tensor::from_slice(&[1.0f32, -1.0]);
        let mut opt = FlatOptimizer::new(cfg, &specs, &p);
        opt.step(&p, &Tensor::from_slice(&[0.5f32, -0.25]), 1e-2);
        // Zero-initialised moments: m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε) ≈ lr·sign(g).
        let got = Vec::<f32>::try_from(&p).unwrap();
        assert!(
            (got[0] as f64 - (1.0 * (1.0 - 1e-3) - 1e-2)).abs() < 1e-6,
            "{got:?}"
        );
        assert!(
            (got[1] as f64 - (-1.0 * (1.0 - 1e-3) + 1e-2)).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_raw_norm() {
        let g = Tensor::from_slice(&[3.0f32, 4.0]).to_device(Device::Cpu);
        let norm = clip_grad_norm(&g, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((g.norm().double_value(&[]) - 1.0).abs() < 1e-5);
        assert!(
            decays("wte.weight") && decays("core.0.attn.Wqkv.weight") && decays("adapter.weight")
        );
        assert!(
            !decays("core.0.norm_1.weight")
                && !decays("ln_f.weight")
                && !decays("prelude.0.attn.qk_bias")
        );
    }
}
