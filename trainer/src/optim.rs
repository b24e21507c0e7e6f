//! Optimizers over the flat fp32 parameter buffer: ELLIS-Adam exactly as the reference (§3.4),
//! AdamW, AdamATan2 and Muon (with AdamW for what is not a hidden matrix). Their whole state is two
//! flat tensors and a step counter, so it checkpoints as safetensors (tch's own optimizers hide
//! their state).

use anyhow::{ensure, Result};
use muninn_model::params::ParamSpec;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    EllisAdam,
    Adamw,
    /// TRM's AdamATan2 (`trm-reference.md` §3): no eps, every tensor decays by lr_t·wd.
    AdamAtan2,
    /// Muon on the hidden matrices ([`is_hidden_matrix`]), AdamW on the rest (`[optimizer.muon]`).
    Muon,
}

/// How Muon scales an orthogonalised update of a [rows, cols] matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MuonScale {
    /// max(1, rows/cols)^½ (Jordan's Muon, which the retrofit paper's code uses): the update's
    /// spectral norm is about 1, so its lr is not AdamW's.
    Shape,
    /// 0.2·max(rows, cols)^½ (Moonlight): the update's RMS is about AdamW's, so one lr serves both.
    MatchAdamw,
}

/// Muon's settings (`[optimizer.muon]`, used with `kind = "muon"`); `optimizer.lr` is the Muon
/// group's peak rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MuonConfig {
    pub momentum: f64,
    pub nesterov: bool,
    /// Quintic Newton–Schulz iterations.
    pub ns_steps: u32,
    pub scale: MuonScale,
    /// Peak lr of the AdamW group (embeddings, head, norms, biases); unset: `optimizer.lr`. Both
    /// groups follow the same schedule.
    pub adamw_lr: Option<f64>,
}

impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            scale: MuonScale::Shape,
            adamw_lr: None,
        }
    }
}

/// Whether Muon updates this parameter: a 2-D tensor of the body (attention, MLP, adapter), not
/// the embedding or a head, which — like norms, biases and every other shape — AdamW keeps.
pub fn is_hidden_matrix(spec: &ParamSpec) -> bool {
    use muninn_model::params::Part;
    spec.shape.len() == 2 && !matches!(spec.part, Part::Embedding | Part::Head)
}

/// The flat ranges an optimizer needs whole in one shard: Muon's matrices, nothing for the others.
pub fn whole_tensors(cfg: &OptimizerConfig, specs: &[ParamSpec]) -> Vec<std::ops::Range<i64>> {
    let mut offset = 0;
    let mut ranges = Vec::new();
    for s in specs {
        if cfg.kind == OptimizerKind::Muon && is_hidden_matrix(s) {
            ranges.push(offset..offset + s.numel());
        }
        offset += s.numel();
    }
    ranges
}

/// The orthogonal factor U·Vᵀ of G = U·S·Vᵀ, approximately: `steps` quintic Newton–Schulz
/// iterations with Jordan's coefficients, which push every singular value into about [0.7, 1.2]
/// quickly rather than converge to 1. fp32 (the reference runs bf16 on GPUs); a tall G is
/// transposed so the Gram matrix is the small one.
pub fn orthogonalize(g: &Tensor, steps: u32) -> Tensor {
    let (a, b, c) = (3.4445, -4.7750, 2.0315);
    let tall = g.size()[0] > g.size()[1];
    let g = g.to_kind(Kind::Float);
    let x = if tall { g.tr() } else { g };
    let mut x = &x / (x.norm() + 1e-7);
    for _ in 0..steps {
        let gram = x.matmul(&x.tr());
        let poly = &gram * b + gram.matmul(&gram) * c;
        x = &x * a + poly.matmul(&x);
    }
    if tall {
        x.tr()
    } else {
        x
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
    pub muon: MuonConfig,
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
        let m = &self.muon;
        ensure!(
            (0.0..1.0).contains(&m.momentum),
            "optimizer.muon.momentum = {} must be in [0, 1)",
            m.momentum
        );
        ensure!(
            m.ns_steps >= 1,
            "optimizer.muon.ns_steps = 0: at least one Newton–Schulz iteration"
        );
        if let Some(lr) = m.adamw_lr {
            ensure!(
                lr > 0.0 && lr.is_finite(),
                "optimizer.muon.adamw_lr = {lr}: must be positive"
            );
        }
        Ok(())
    }
}

/// Whether a parameter decays, by the reference's name rules (§3.4): norms, `ln_f` and biases
/// (`qk_bias`) do not; the tied embedding/head and every weight matrix do.
pub fn decays(name: &str) -> bool {
    let n = name.to_lowercase();
    !(n.contains("norm") || n.contains("ln_f") || n.contains("bias"))
}

/// One parameter tensor of the flat buffer.
struct Segment {
    numel: i64,
    decay: bool,
    /// [rows, cols] when Muon updates it.
    matrix: Option<(i64, i64)>,
}

/// The part of one segment that lies in this optimizer's shard.
struct Run {
    /// Offset in the shard (the compact tensors this optimizer updates).
    offset: i64,
    numel: i64,
    segment: usize,
}

/// An optimizer over a shard of the flat buffer: the whole buffer on one process or with plain data
/// parallelism, 1/W of it under ZeRO-1. The shard is a list of pieces (flat offset, length) laid end
/// to end; `m` and `v` cover just the shard.
pub struct FlatOptimizer {
    cfg: OptimizerConfig,
    segments: Vec<Segment>,
    runs: Vec<Run>,
    pieces: Vec<(i64, i64)>,
    m: Tensor,
    v: Tensor,
    /// Muon's matrices in this shard: (segment, shard offset), each whole and contiguous.
    matrices: Vec<(usize, i64)>,
    /// Every Muon matrix's flat range, in any shard.
    whole: Vec<std::ops::Range<i64>>,
    /// Updates applied so far (t in the bias corrections).
    steps: u64,
}

impl FlatOptimizer {
    /// State for all parameters laid out as `specs` in a flat buffer like `flat`.
    pub fn new(cfg: OptimizerConfig, specs: &[ParamSpec], flat: &Tensor) -> Self {
        Self::sharded(cfg, specs, &[(0, flat.numel() as i64)], flat.device())
            .expect("the whole buffer holds every matrix whole")
    }

    /// State for the pieces (flat offset, length) of a shard, in shard order. Muon needs each
    /// matrix whole in one shard ([`crate::dist::Layout::owning`]); a shard that cuts one is refused.
    pub fn sharded(
        cfg: OptimizerConfig,
        specs: &[ParamSpec],
        pieces: &[(i64, i64)],
        device: tch::Device,
    ) -> Result<Self> {
        let mut starts = Vec::with_capacity(specs.len());
        let mut offset = 0;
        for s in specs {
            starts.push(offset);
            offset += s.numel();
        }
        let segments: Vec<Segment> = specs
            .iter()
            .map(|s| Segment {
                numel: s.numel(),
                decay: decays(&s.name),
                matrix: (cfg.kind == OptimizerKind::Muon && is_hidden_matrix(s))
                    .then(|| (s.shape[0], s.shape[1])),
            })
            .collect();
        let mut runs = Vec::new();
        let mut shard_offset = 0;
        for &(p_off, p_len) in pieces {
            for (i, (&start, seg)) in starts.iter().zip(&segments).enumerate() {
                let (lo, hi) = (start.max(p_off), (start + seg.numel).min(p_off + p_len));
                if lo < hi {
                    runs.push(Run {
                        offset: shard_offset + lo - p_off,
                        numel: hi - lo,
                        segment: i,
                    });
                }
            }
            shard_offset += p_len;
        }
        // Muon's matrices: the runs of one segment must be the whole of it, end to end.
        let mut matrices: Vec<(usize, i64)> = Vec::new();
        let mut covered: Vec<(usize, i64, i64)> = Vec::new(); // (segment, start, next offset)
        for r in &runs {
            if segments[r.segment].matrix.is_none() {
                continue;
            }
            match covered.last_mut() {
                Some(last) if last.0 == r.segment && last.2 == r.offset => last.2 += r.numel,
                _ => covered.push((r.segment, r.offset, r.offset + r.numel)),
            }
        }
        for (seg, start, end) in covered {
            ensure!(
                end - start == segments[seg].numel,
                "Muon needs {} whole in one optimizer shard, this shard holds {} of its {} elements",
                specs[seg].name,
                end - start,
                segments[seg].numel
            );
            matrices.push((seg, start));
        }
        let zeros = || Tensor::zeros([shard_offset], (Kind::Float, device));
        Ok(FlatOptimizer {
            whole: whole_tensors(&cfg, specs),
            cfg,
            segments,
            runs,
            pieces: pieces.to_vec(),
            m: zeros(),
            v: zeros(),
            matrices,
            steps: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The flat ranges this optimizer keeps whole in one shard ([`whole_tensors`]).
    pub fn whole(&self) -> &[std::ops::Range<i64>] {
        &self.whole
    }

    /// Forgets the moments and the update count: a fresh optimizer over the same shard (COCONUT's
    /// reset at an epoch or stage).
    pub fn reset(&mut self) {
        let _ = self.m.zero_();
        let _ = self.v.zero_();
        self.steps = 0;
    }

    /// This optimizer's shard of `full`, a tensor laid out like the flat buffer.
    pub fn shard_of(&self, full: &Tensor) -> Tensor {
        gather_pieces(full, &self.pieces)
    }

    /// One update of `params` (the flat leaf, updated in place without autograd) from `grads` at the
    /// scheduled learning rate `lr_t`, on one process.
    pub fn step(&mut self, params: &Tensor, grads: &Tensor, lr_t: f64) {
        self.step_shard(params, grads, lr_t, &mut |_| Ok(()))
            .expect("no communication on one process");
    }

    /// One update of a shard: `params` and `grads` hold the shard's elements. ELLIS-Adam's update
    /// clipping needs each tensor's RMS over all of its elements; `sum_over_ranks` adds the
    /// per-tensor partial sums of the other shards (identity when this shard is everything).
    pub fn step_shard(
        &mut self,
        params: &Tensor,
        grads: &Tensor,
        lr_t: f64,
        sum_over_ranks: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let c = self.cfg.clone();
        let t = (self.steps + 1) as f64;
        let (bc1, bc2) = (1.0 - c.beta1.powf(t), 1.0 - c.beta2.powf(t));
        let first = self.steps == 0;
        let p_all = params.detach();
        let slices = |r: &Run| {
            (
                p_all.narrow(0, r.offset, r.numel),
                grads.narrow(0, r.offset, r.numel),
                self.m.narrow(0, r.offset, r.numel),
                self.v.narrow(0, r.offset, r.numel),
            )
        };
        tch::no_grad(|| -> Result<()> {
            match c.kind {
                OptimizerKind::EllisAdam => {
                    // Pass 1: moments, and each run's share of its tensor's Σ g²/v.
                    let mut partial = Vec::with_capacity(self.runs.len());
                    for r in &self.runs {
                        let (_, g, mut m, mut v) = slices(r);
                        if first {
                            // running_init: state starts at the first gradient, not at zero.
                            m.copy_(&g);
                            v.copy_(&(&g * &g));
                        }
                        let _ = m.lerp_(&g, 1.0 - c.beta1);
                        let _ = v.g_mul_scalar_(c.beta2);
                        let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                        if c.update_clipping {
                            let _ = v.clamp_min_(c.eps * c.eps); // persistent, as in the reference
                            partial.push(g.square().g_div_(&v).sum(Kind::Double));
                        }
                    }
                    // η per tensor: lr / max(RMS(g/√v), 1) / bc1, from sums over every shard.
                    let mut sums = vec![0.0; self.segments.len()];
                    if c.update_clipping && !partial.is_empty() {
                        let host = Vec::<f64>::try_from(Tensor::stack(&partial, 0))?;
                        for (r, x) in self.runs.iter().zip(host) {
                            sums[r.segment] += x;
                        }
                    }
                    if c.update_clipping {
                        sum_over_ranks(&mut sums)?;
                    }
                    // Pass 2: decay and the atan2 update.
                    for r in &self.runs {
                        let (mut p, _, m, v) = slices(r);
                        let seg = &self.segments[r.segment];
                        let eta = match c.update_clipping {
                            true => {
                                let rms = (sums[r.segment] / seg.numel as f64).sqrt();
                                lr_t / rms.max(1.0) / bc1
                            }
                            false => lr_t / bc1,
                        };
                        if seg.decay && c.weight_decay > 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - (lr_t / c.lr) * c.weight_decay);
                        }
                        let mut update = m.atan2(&v.sqrt().g_div_scalar_(bc2.sqrt()));
                        let _ = p.g_sub_(&update.g_mul_scalar_(eta));
                    }
                }
                OptimizerKind::AdamAtan2 => {
                    for r in &self.runs {
                        let (mut p, g, mut m, mut v) = slices(r);
                        let betas = (c.beta1, c.beta2);
                        let step = self.steps + 1;
                        adam_atan2_(
                            &mut p,
                            &g,
                            &mut m,
                            &mut v,
                            step,
                            lr_t,
                            betas,
                            c.weight_decay,
                        );
                    }
                }
                OptimizerKind::Adamw | OptimizerKind::Muon => {
                    // torch.optim.AdamW(fused=True)'s kernel: one pass over (p, g, m, v) per
                    // weight-decay group, every run of the shard in one call. Under Muon, at the
                    // AdamW group's rate, for what is not a matrix.
                    let lr_t = match (c.kind, c.muon.adamw_lr) {
                        (OptimizerKind::Muon, Some(lr)) => lr_t * lr / c.lr,
                        _ => lr_t,
                    };
                    let mut groups: [[Vec<Tensor>; 4]; 2] = Default::default();
                    for r in &self.runs {
                        if self.segments[r.segment].matrix.is_some() {
                            continue;
                        }
                        let (p, g, m, v) = slices(r);
                        let group = &mut groups[self.segments[r.segment].decay as usize];
                        for (list, t) in group.iter_mut().zip([p, g, m, v]) {
                            list.push(t);
                        }
                    }
                    for (decay, [p, g, m, v]) in groups.iter().enumerate() {
                        if p.is_empty() {
                            continue;
                        }
                        let wd = if decay == 1 { c.weight_decay } else { 0.0 };
                        let step = self.steps + 1;
                        muninn_model::shim::fused_adamw(
                            p,
                            g,
                            m,
                            v,
                            lr_t,
                            (c.beta1, c.beta2),
                            wd,
                            c.eps,
                            step,
                        )?;
                    }
                }
            }
            if c.kind == OptimizerKind::Muon {
                self.muon_matrices(&p_all, grads, lr_t);
            }
            Ok(())
        })?;
        self.steps += 1;
        Ok(())
    }

    /// Muon on this shard's matrices: m ← βm + (1−β)g; u = (1−β)g + βm (Nesterov) or m;
    /// p ← p·(1 − lr·wd) − lr·scale·orthogonalize(u).
    fn muon_matrices(&self, params: &Tensor, grads: &Tensor, lr_t: f64) {
        let (c, mu) = (&self.cfg, &self.cfg.muon);
        for &(seg, offset) in &self.matrices {
            let s = &self.segments[seg];
            let Some((rows, cols)) = s.matrix else {
                continue;
            };
            let mut p = params.narrow(0, offset, s.numel);
            let g = grads.narrow(0, offset, s.numel);
            let mut m = self.m.narrow(0, offset, s.numel);
            let _ = m.lerp_(&g, 1.0 - mu.momentum);
            let u = match mu.nesterov {
                true => g.lerp(&m, mu.momentum),
                false => m.shallow_clone(),
            };
            let scale = match mu.scale {
                MuonScale::Shape => (rows as f64 / cols as f64).max(1.0).sqrt(),
                MuonScale::MatchAdamw => 0.2 * (rows.max(cols) as f64).sqrt(),
            };
            let update = orthogonalize(&u.view([rows, cols]), mu.ns_steps).reshape([-1]);
            if s.decay && c.weight_decay > 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr_t * c.weight_decay);
            }
            let _ = p.g_sub_(&(update * (lr_t * scale)));
        }
    }

    /// (name, tensor) pairs of this shard's state.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("exp_avg".into(), self.m.shallow_clone()),
            ("exp_avg_sq".into(), self.v.shallow_clone()),
        ]
    }

    /// This shard's (offset, length) pieces of the flat buffer.
    pub fn pieces(&self) -> &[(i64, i64)] {
        &self.pieces
    }

    /// Loads this shard's state: `m`, `v` hold exactly [`FlatOptimizer::pieces`], end to end.
    pub fn load_shard_state(&mut self, m: &Tensor, v: &Tensor, steps: u64) -> Result<()> {
        let len: i64 = self.pieces.iter().map(|p| p.1).sum();
        ensure!(
            m.size() == [len] && v.size() == [len],
            "optimizer shard state has {:?} elements, this shard {len}",
            m.size()
        );
        tch::no_grad(|| {
            self.m.copy_(m);
            self.v.copy_(v);
        });
        self.steps = steps;
        Ok(())
    }

    /// Loads state saved for the whole flat buffer (`m`, `v` in flat order), keeping this shard's
    /// pieces: a checkpoint from any world size loads into any other.
    pub fn load_state(&mut self, m: &Tensor, v: &Tensor, steps: u64) -> Result<()> {
        let total: i64 = self.segments.iter().map(|s| s.numel).sum();
        ensure!(
            m.size() == [total] && v.size() == [total],
            "optimizer state has {:?} elements, the model [{total}]",
            m.size()
        );
        let (ms, vs) = (self.shard_of(m), self.shard_of(v));
        tch::no_grad(|| {
            self.m.copy_(&ms);
            self.v.copy_(&vs);
        });
        self.steps = steps;
        Ok(())
    }
}

/// The pieces (flat offset, length) of `full`, laid end to end: one rank's shard of a flat tensor.
pub fn gather_pieces(full: &Tensor, pieces: &[(i64, i64)]) -> Tensor {
    let parts: Vec<Tensor> = pieces
        .iter()
        .map(|&(off, len)| full.narrow(0, off, len))
        .collect();
    match parts.is_empty() {
        true => full.narrow(0, 0, 0).copy(),
        false => Tensor::cat(&parts, 0),
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm` (when `max_norm` > 0), as
/// `clip_grad_norm_` does: factor min(1, max_norm / (‖g‖ + 1e-6)). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &Tensor, max_norm: f64) -> f64 {
    let norm = grads.norm().double_value(&[]);
    clip_to_norm(grads, norm, max_norm);
    norm
}

/// Clips as [`clip_grad_norm`] given the norm, which under data parallelism or ZeRO-1 is computed
/// over all ranks and so cannot come from `grads` alone.
pub fn clip_to_norm(grads: &Tensor, norm: f64, max_norm: f64) {
    if max_norm > 0.0 && norm.is_finite() {
        let factor = (max_norm / (norm + 1e-6)).min(1.0);
        if factor < 1.0 {
            tch::no_grad(|| {
                let _ = grads.shallow_clone().g_mul_scalar_(factor);
            });
        }
    }
}

/// AdamATan2 (TRM's optimizer, `trm-reference.md` §3) on flat tensors in place, step `t` (1-based):
/// p ← p·(1 − lr·wd); m ← lerp(m, g, 1 − β1); v ← lerp(v, g², 1 − β2);
/// p ← p − lr / (1 − β1^t) · atan2(m, √v / √(1 − β2^t)). No eps: atan2 is bounded.
#[allow(clippy::too_many_arguments)]
pub fn adam_atan2_(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    t: u64,
    lr: f64,
    (beta1, beta2): (f64, f64),
    weight_decay: f64,
) {
    tch::no_grad(|| {
        let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
        let _ = m.lerp_(g, 1.0 - beta1);
        let _ = v.lerp_(&g.square(), 1.0 - beta2);
        let (c1, c2) = (1.0 - beta1.powi(t as i32), 1.0 - beta2.powi(t as i32));
        let step = m.atan2(&(v.sqrt() / c2.sqrt())) * (lr / c1);
        let _ = p.g_sub_(&step);
    });
}

/// An exponential moving average of the weights (TRM: 0.999; evaluation and exports use it):
/// ema ← (1 − μ)·p + μ·ema after every update, from a copy of the weights at the start.
pub struct Ema {
    pub weights: Tensor,
    pub decay: f64,
}

impl Ema {
    pub fn new(params: &Tensor, decay: f64) -> Self {
        Ema {
            weights: params.detach().copy(),
            decay,
        }
    }

    pub fn update(&mut self, params: &Tensor) {
        tch::no_grad(|| {
            let _ = self.weights.lerp_(&params.detach(), 1.0 - self.decay);
        });
    }
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
            muon: MuonConfig::default(),
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
            (got[1] as f64 - (-(1.0 - 1e-3) + 1e-2)).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn newton_schulz_gives_singular_values_near_one_and_the_polar_factor() {
        tch::manual_seed(0);
        for (rows, cols) in [(32, 64), (64, 32), (48, 48)] {
            let g = Tensor::randn([rows, cols], (Kind::Float, Device::Cpu));
            let x = orthogonalize(&g, 5);
            assert_eq!(x.size(), [rows, cols]);
            // Jordan's coefficients trade exactness for speed: every singular value in about
            // [0.7, 1.2] (a square Gaussian's smallest ones come out lower, still far from 0).
            let (u, _, v) = g.svd(true, true); // g = U·diag(S)·Vᵀ
            let got = x.svd(true, true).1;
            let (lo, hi) = (got.min().double_value(&[]), got.max().double_value(&[]));
            let floor = if rows == cols { 0.3 } else { 0.6 };
            assert!(
                lo > floor && hi < 1.25,
                "{rows}x{cols}: singular values in [{lo}, {hi}]"
            );
            // And it points where U·Vᵀ does.
            let polar = u.matmul(&v.tr());
            let cos = (&x * &polar).sum(Kind::Double).double_value(&[])
                / (x.norm().double_value(&[]) * polar.norm().double_value(&[]));
            assert!(cos > 0.97, "{rows}x{cols}: cosine to U·Vᵀ {cos}");
        }
    }

    /// X ← aX + (bA + cA²)X with A = XXᵀ, in f64 on plain arrays: the hand computation.
    fn newton_schulz_by_hand(g: &[[f64; 3]; 2], steps: usize) -> [[f64; 3]; 2] {
        let (a, b, c) = (3.4445, -4.7750, 2.0315);
        let norm = g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        let mut x = g.map(|row| row.map(|v| v / (norm + 1e-7)));
        for _ in 0..steps {
            let mut gram = [[0.0; 2]; 2];
            for i in 0..2 {
                for j in 0..2 {
                    gram[i][j] = (0..3).map(|k| x[i][k] * x[j][k]).sum();
                }
            }
            let mut poly = [[0.0; 2]; 2];
            for i in 0..2 {
                for j in 0..2 {
                    let sq: f64 = (0..2).map(|k| gram[i][k] * gram[k][j]).sum();
                    poly[i][j] = b * gram[i][j] + c * sq;
                }
            }
            let mut next = [[0.0; 3]; 2];
            for i in 0..2 {
                for j in 0..3 {
                    next[i][j] = a * x[i][j] + (0..2).map(|k| poly[i][k] * x[k][j]).sum::<f64>();
                }
            }
            x = next;
        }
        x
    }

    #[test]
    fn muon_step_matches_a_hand_computation() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Muon,
            lr: 0.02,
            weight_decay: 0.1,
            eps: 1e-8,
            muon: MuonConfig {
                adamw_lr: Some(1e-3),
                ..MuonConfig::default()
            },
            ..ellis()
        };
        // A [3, 2] body matrix (tall: Muon orthogonalises its transpose) and a norm (AdamW).
        let specs = [
            ParamSpec {
                name: "layers.0.attn.o_proj.weight".into(),
                shape: vec![3, 2],
                part: Part::Layers,
                init: Init::Zeros,
            },
            spec("layers.0.input_norm.weight", 2),
        ];
        let w0 = [1.0f32, -0.5, 0.25, 2.0, 0.0, 1.5];
        let mut p0 = w0.to_vec();
        p0.extend([1.0f32, 1.0]);
        let p = Tensor::from_slice(&p0);
        let g: Vec<f32> = vec![0.3, -0.1, 0.7, 0.2, -0.4, 0.5, 0.5, -0.25];
        let mut opt = FlatOptimizer::new(cfg, &specs, &p);
        opt.step(&p, &Tensor::from_slice(&g), 0.02);
        let got = Vec::<f32>::try_from(&p).unwrap();
        // Momentum from zero: m = (1−β)g; Nesterov u = (1−β)g + βm = (1−β²)g, orthogonalised
        // through its [2, 3] transpose, scaled by max(1, 3/2)^½; decay p·(1 − lr·wd).
        let beta = 0.95f64;
        let u: Vec<f64> = g[..6]
            .iter()
            .map(|&v| (1.0 - beta) * v as f64 * (1.0 + beta))
            .collect();
        let ut = [[u[0], u[2], u[4]], [u[1], u[3], u[5]]];
        let o = newton_schulz_by_hand(&ut, 5);
        let scale = 1.5f64.sqrt();
        for i in 0..3 {
            for j in 0..2 {
                let want = w0[i * 2 + j] as f64 * (1.0 - 0.02 * 0.1) - 0.02 * scale * o[j][i];
                let have = got[i * 2 + j] as f64;
                assert!((have - want).abs() < 1e-6, "[{i}, {j}]: {have} vs {want}");
            }
        }
        // The norm: AdamW's first step at the AdamW group's lr, ≈ lr·sign(g), no decay.
        assert!((got[6] as f64 - (1.0 - 1e-3)).abs() < 1e-6, "{got:?}");
        assert!((got[7] as f64 - (1.0 + 1e-3)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn muon_refuses_a_shard_that_cuts_a_matrix() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Muon,
            ..ellis()
        };
        let specs = [ParamSpec {
            name: "core.0.attn.Wqkv".into(),
            shape: vec![4, 4],
            part: Part::Core,
            init: Init::Zeros,
        }];
        let err = FlatOptimizer::sharded(cfg.clone(), &specs, &[(0, 8)], Device::Cpu)
            .err()
            .expect("half a matrix refused")
            .to_string();
        assert!(
            err.contains("core.0.attn.Wqkv") && err.contains("8 of its 16"),
            "{err}"
        );
        assert!(FlatOptimizer::sharded(cfg, &specs, &[(0, 16)], Device::Cpu).is_ok());
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

    #[test]
    fn adam_atan2_matches_the_formula() {
        let mut p = Tensor::from_slice(&[1.0f64, -2.0, 0.5]);
        let g = Tensor::from_slice(&[0.1f64, -0.3, 0.0]);
        let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
        let (lr, b1, b2, wd) = (1e-2, 0.9, 0.95, 0.1);
        let (p0, g0) = ([1.0f64, -2.0, 0.5], [0.1f64, -0.3, 0.0]);
        adam_atan2_(&mut p, &g, &mut m, &mut v, 1, lr, (b1, b2), wd);
        for i in 0..3 {
            let (mi, vi) = ((1.0 - b1) * g0[i], (1.0 - b2) * g0[i] * g0[i]);
            let want =
                p0[i] * (1.0 - lr * wd) - lr / (1.0 - b1) * mi.atan2(vi.sqrt() / (1.0 - b2).sqrt());
            assert!((p.double_value(&[i as i64]) - want).abs() < 1e-12, "{i}");
        }
    }

    #[test]
    fn sign_sgd_updates_only_touched_rows_and_sums_repeats() {
        let table = Tensor::ones([4, 2], (tch::Kind::Double, tch::Device::Cpu));
        let ids = Tensor::from_slice(&[2i64, 0, 2]);
        let grads = Tensor::from_slice(&[1.0f64, -1.0, -0.5, 0.0, -2.0, 0.5]).view([3, 2]);
        muninn_model::trm_family::sign_sgd_rows_(&table, &ids, &grads, 0.1, 1.0);
        let row = |r: i64| (table.double_value(&[r, 0]), table.double_value(&[r, 1]));
        // Row 2: Σ grad = (−1, −0.5) → 0.9 + 0.1; row 0: (−0.5, 0) → sign 0 on the second.
        assert_eq!(row(2), (0.9 + 0.1, 0.9 + 0.1));
        assert_eq!(row(0), (0.9 + 0.1, 0.9));
        assert_eq!(row(1), (1.0, 1.0));
        assert_eq!(row(3), (1.0, 1.0));
    }

    #[test]
    fn ema_follows_the_weights_at_its_rate() {
        let p = Tensor::from_slice(&[0.0f64, 10.0]);
        let mut ema = Ema::new(&p, 0.9);
        let q = Tensor::from_slice(&[1.0f64, 0.0]);
        ema.update(&q);
        assert!((ema.weights.double_value(&[0]) - 0.1).abs() < 1e-12);
        assert!((ema.weights.double_value(&[1]) - 9.0).abs() < 1e-12);
    }
}
