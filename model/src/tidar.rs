//! TiDAR (Liu, Dong et al. 2025, arXiv 2511.08923): one causal model drafts a block by one-step
//! diffusion from mask tokens and verifies the previous block's drafts with its next-token head, in
//! the same forward pass (`tidar-reference.md`).
//!
//! Training appends one fully masked copy of each window to it:
//!   ids = [x_0 … x_{S−1}, M … M],  positions = [0 … S−1, 0 … S−1],
//!   clean i → x_{i+1} (causal),  mask i → x_i (its block of b, plus every clean token before it),
//!   L = (α · mean CE_clean + mean CE_mask) / (1 + α).
//! Decoding feeds `[d_0 … d_{k−1}, B_1 … B_k]`, where block B_j drafts the continuation after
//! d_0 … d_{j−1}; the longest prefix of drafts the verification agrees with is kept, with its keys
//! and values, and the matching block supplies the next drafts.

use std::cell::RefCell;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::block::{Attend, Mask, Positions};
use crate::decode::Sampling;
use crate::family::Fields;
use crate::loss::{LmLoss, IGNORE};

/// The training objective of a causal language model (`[objective]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LmObjective {
    /// Next-token cross-entropy under the causal mask.
    #[default]
    NextToken,
    /// TiDAR: next-token loss on the clean half plus mask prediction on an appended masked copy.
    Tidar(TidarConfig),
    /// COCONUT: continuous thoughts on the stage curriculum, trained on a QA dataset.
    Coconut(muninn_data::coconut::CoconutConfig),
}

/// `[objective] kind = "tidar"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TidarConfig {
    /// Block size b: the masked half is cut into blocks of b, and decoding drafts b tokens by
    /// default. Must divide the training sequence length.
    pub block: i64,
    /// Weight of the next-token term: L = (α·L_AR + L_diff)/(1 + α).
    #[serde(default = "one")]
    pub alpha: f64,
    /// The `[MASK]` id: a reserved id of the tokenizer, or a row past its vocabulary
    /// (model.vocab_size one larger).
    pub mask_id: i64,
}

fn one() -> f64 {
    1.0
}

impl TidarConfig {
    /// Checks the keys against the model's vocabulary.
    pub fn validate(&self, vocab_size: i64) -> Result<()> {
        ensure!(
            self.block >= 1,
            "objective.block = {}: must be at least 1",
            self.block
        );
        ensure!(
            self.alpha >= 0.0 && self.alpha.is_finite(),
            "objective.alpha = {}: must be a number >= 0",
            self.alpha
        );
        ensure!(
            (0..vocab_size).contains(&self.mask_id),
            "objective.mask_id = {} is outside the model's vocabulary (model.vocab_size = {vocab_size}); \
             add a row for it (model.vocab_size = {}) or use a reserved id",
            self.mask_id,
            vocab_size.max(self.mask_id + 1)
        );
        Ok(())
    }
}

/// The training mask [2S, 2S] (true = may attend) for S clean tokens and blocks of b:
/// clean row i sees clean j ≤ i; mask row i of block g = ⌊i/b⌋ sees clean j < g·b and the b mask
/// columns of its own block.
pub fn training_mask(s: i64, b: i64) -> Vec<Vec<bool>> {
    let n = 2 * s;
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| match (i < s, j < s) {
                    (true, true) => j <= i,
                    (true, false) => false,
                    (false, true) => j < (i - s) / b * b,
                    (false, false) => (i - s) / b == (j - s) / b,
                })
                .collect()
        })
        .collect()
}

/// The rows and columns of a decoding forward after `cache` cached tokens: `n` new tokens at
/// positions cache … cache+n−1 (causal, seeing the whole cache), then one block of `k` masks per
/// entry c of `sees`, which sees the cache, the first c new tokens and its own block, at positions
/// cache+c … cache+c+k−1. Prefill is `n` = prompt, `sees` = [n]; a decode step is `n` = k drafts,
/// `sees` = [1, …, k]. Returns the positions and the mask [q, cache + q], q = n + k·|sees|.
pub fn step_layout(cache: i64, n: i64, sees: &[i64], k: i64) -> (Vec<i64>, Vec<Vec<bool>>) {
    let q = n + k * sees.len() as i64;
    let mut positions: Vec<i64> = (cache..cache + n).collect();
    let mut rows = Vec::with_capacity(q as usize);
    for i in 0..n {
        rows.push((0..cache + q).map(|j| j < cache + i + 1).collect());
    }
    for (g, &c) in sees.iter().enumerate() {
        let own = cache + n + g as i64 * k;
        for slot in 0..k {
            positions.push(cache + c + slot);
            rows.push(
                (0..cache + q)
                    .map(|j| j < cache + c || (own..own + k).contains(&j))
                    .collect(),
            );
        }
    }
    (positions, rows)
}

/// A boolean mask [rows, cols] on `device`.
pub fn mask_tensor(rows: &[Vec<bool>], device: Device) -> Tensor {
    let cols = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat)
        .view([rows.len() as i64, cols])
        .to_device(device)
}

/// One micro-batch laid out for the TiDAR loss.
pub struct TidarBatch {
    /// [B, 2S]: the clean tokens, then S mask ids.
    pub ids: Tensor,
    /// [B, 2S]: the next tokens, then the clean tokens themselves (x_0 … x_{S−1}).
    pub targets: Tensor,
    /// [2S] fp32: scale·α/(1+α) on the clean half, scale/(1+α) on the masked one.
    pub weights: Tensor,
    pub attend: Attend,
}

impl TidarBatch {
    pub fn loss(&self) -> LmLoss<'_> {
        LmLoss {
            targets: &self.targets,
            weights: self.weights.shallow_clone(),
            attend: &self.attend,
        }
    }
}

/// The TiDAR objective of a family: its layout, built once per sequence length, and the training
/// terms summed on the device until they are logged.
pub struct Tidar {
    pub cfg: TidarConfig,
    /// (S, positions [2S], mask [2S, 2S]) of the last sequence length seen.
    layout: RefCell<Option<(i64, Tensor, Tensor)>>,
    /// Σ CE and count of the clean half, then of the masked half, [4] f64; None after a log line.
    stats: RefCell<Option<Tensor>>,
}

impl Tidar {
    pub fn new(cfg: TidarConfig) -> Self {
        Tidar {
            cfg,
            layout: RefCell::new(None),
            stats: RefCell::new(None),
        }
    }

    /// The 2S attention of S clean tokens: repeated positions and the block mask.
    pub fn attend(&self, s: i64, device: Device) -> Result<Attend> {
        let b = self.cfg.block;
        ensure!(
            s % b == 0,
            "objective.block = {b} does not divide the sequence length {s}"
        );
        let mut layout = self.layout.borrow_mut();
        if layout
            .as_ref()
            .is_none_or(|(len, _, m)| *len != s || m.device() != device)
        {
            let half = Tensor::arange(s, (Kind::Int64, device));
            let positions = Tensor::cat(&[&half, &half], 0);
            *layout = Some((s, positions, mask_tensor(&training_mask(s, b), device)));
        }
        let (_, positions, mask) = layout.as_ref().expect("just built");
        Ok(Attend {
            positions: Positions::Ids(positions.shallow_clone()),
            mask: Mask::Dense(mask.shallow_clone()),
            key_padding: None,
        })
    }

    /// inputs and targets [B, S] → the 2S layout. `scale` weighs one target of the step as in
    /// next-token training. The masked half's target at i is x_i: x_0 and then targets[i − 1], so
    /// a target the data leaves out (`IGNORE`) is left out of both halves.
    pub fn batch(&self, inputs: &Tensor, targets: &Tensor, scale: f64) -> Result<TidarBatch> {
        let (b, s) = inputs.size2()?;
        ensure!(
            targets.size() == [b, s],
            "targets have shape {:?}, expected [{b}, {s}]",
            targets.size()
        );
        let device = inputs.device();
        let attend = self.attend(s, device)?;
        let masks = Tensor::full([b, s], self.cfg.mask_id, (Kind::Int64, device));
        let diff_targets = Tensor::cat(&[inputs.narrow(1, 0, 1), targets.narrow(1, 0, s - 1)], 1);
        let alpha = self.cfg.alpha;
        let w = |x: f64| Tensor::full([s], x * scale / (1.0 + alpha), (Kind::Float, device));
        Ok(TidarBatch {
            ids: Tensor::cat(&[inputs, &masks], 1),
            targets: Tensor::cat(&[targets, &diff_targets], 1),
            weights: Tensor::cat(&[w(alpha), w(1.0)], 0),
            attend,
        })
    }

    /// Adds a micro-batch's per-position cross-entropy [B, 2S] to the logged sums.
    pub fn record(&self, ce: &Tensor, targets: &Tensor) {
        let s = ce.size()[1] / 2;
        let counted = targets.ne(IGNORE).to_kind(Kind::Double);
        let ce = ce.to_kind(Kind::Double);
        let half = |t: &Tensor, i: i64| t.narrow(1, i * s, s).sum(Kind::Double);
        let sums = Tensor::stack(
            &[
                half(&ce, 0),
                half(&counted, 0),
                half(&ce, 1),
                half(&counted, 1),
            ],
            0,
        );
        let mut st = self.stats.borrow_mut();
        *st = Some(match st.take() {
            Some(acc) => acc + sums,
            None => sums,
        });
    }

    /// The training terms since the last call: `ar_loss`, `ar_ppl` and `diff_loss`.
    pub fn fields(&self) -> Fields {
        let v: Vec<f64> = match self.stats.borrow_mut().take() {
            Some(t) => Vec::try_from(t.to_device(Device::Cpu)).unwrap_or_default(),
            None => Vec::new(),
        };
        let (ar, diff) = match v.as_slice() {
            [a, na, d, nd] => (a / na.max(1.0), d / nd.max(1.0)),
            _ => (f64::NAN, f64::NAN),
        };
        vec![
            ("ar_loss", json!(ar)),
            ("ar_ppl", json!(ar.exp())),
            ("diff_loss", json!(diff)),
        ]
    }

    /// (Σ CE, count) of the masked half of logits [B, 2S, V] against a batch's targets.
    pub fn diff_sums(&self, logits: &Tensor, targets: &Tensor) -> Result<(f64, f64)> {
        let s = targets.size()[1] / 2;
        let (sum, n) =
            crate::loss::cross_entropy_sum(&logits.narrow(1, s, s), &targets.narrow(1, s, s))?;
        Ok((sum.double_value(&[]), n.double_value(&[])))
    }
}

/// A model as TiDAR's decoder drives it: a KV-cached forward of new tokens under any mask, and a
/// cache that keeps only a prefix of what it was given.
pub trait CachedLm {
    /// The longest sequence the positions cover.
    fn block_size(&self) -> i64;
    /// Tokens whose keys and values are cached.
    fn len(&self) -> i64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Logits [T, V] (fp32) of `ids` [T] after the cached tokens, at `positions`, attending as
    /// `mask` [T, len + T] allows; their keys and values join the cache.
    fn extend(&mut self, ids: &[i64], positions: &[i64], mask: &[Vec<bool>]) -> Result<Tensor>;
    /// Keeps the first `len` cached tokens.
    fn truncate(&mut self, len: i64);
}

/// The attention of [`CachedLm::extend`] for T new tokens on `device`.
pub fn step_attend(positions: &[i64], mask: &[Vec<bool>], device: Device) -> Attend {
    Attend {
        positions: Positions::Ids(Tensor::from_slice(positions).to_device(device)),
        mask: Mask::Dense(mask_tensor(mask, device)),
        key_padding: None,
    }
}

/// A plain forward over the whole sequence: logits [1, T, V] of ids [1, T] attending as told.
pub type FullForward<'a> = dyn Fn(&Tensor, &Attend) -> Result<Tensor> + 'a;

/// The reference decoder's model: no cache; every call runs the kept tokens (causally, at
/// positions 0 … len−1) and the new ones through the model's ordinary forward.
pub struct Recompute<'a> {
    forward: Box<FullForward<'a>>,
    block_size: i64,
    device: Device,
    kept: Vec<i64>,
}

impl<'a> Recompute<'a> {
    pub fn new(forward: Box<FullForward<'a>>, block_size: i64, device: Device) -> Self {
        Recompute {
            forward,
            block_size,
            device,
            kept: Vec::new(),
        }
    }
}

impl CachedLm for Recompute<'_> {
    fn block_size(&self) -> i64 {
        self.block_size
    }

    fn len(&self) -> i64 {
        self.kept.len() as i64
    }

    fn extend(&mut self, ids: &[i64], positions: &[i64], mask: &[Vec<bool>]) -> Result<Tensor> {
        let (l, t) = (self.kept.len(), ids.len());
        let mut all_ids = self.kept.clone();
        all_ids.extend_from_slice(ids);
        let mut all_pos: Vec<i64> = (0..l as i64).collect();
        all_pos.extend_from_slice(positions);
        let mut rows: Vec<Vec<bool>> = (0..l)
            .map(|i| (0..l + t).map(|j| j <= i).collect())
            .collect();
        rows.extend(mask.iter().cloned());
        let x = Tensor::from_slice(&all_ids)
            .view([1, -1])
            .to_device(self.device);
        let attend = step_attend(&all_pos, &rows, self.device);
        let logits = tch::no_grad(|| (self.forward)(&x, &attend))?;
        self.kept.extend_from_slice(ids);
        Ok(logits.get(0).narrow(0, l as i64, t as i64))
    }

    fn truncate(&mut self, len: i64) {
        self.kept.truncate(len as usize);
    }
}

/// How TiDAR decodes.
#[derive(Debug, Clone, Copy)]
pub struct TidarOptions {
    /// Draft length k (the training block size by default).
    pub draft: i64,
    /// Trust in the AR head: verification logits β·AR + (1−β)·diffusion. 1 decodes exactly as
    /// the model's own next-token head.
    pub beta: f64,
    pub sampling: Sampling,
    pub max_tokens: usize,
    pub stop_token: Option<i64>,
}

/// What a TiDAR decode produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TidarOutput {
    pub tokens: Vec<i64>,
    /// Forward passes, the prefill included.
    pub forwards: usize,
    /// Drafts kept by each decode step (1 ≤ a ≤ k): tokens per decode forward.
    pub accepted: Vec<i64>,
}

impl TidarOutput {
    pub fn tokens_per_forward(&self) -> f64 {
        self.tokens.len() as f64 / self.forwards.max(1) as f64
    }

    /// The mean number of tokens a decode step committed.
    pub fn mean_accepted(&self) -> f64 {
        self.accepted.iter().sum::<i64>() as f64 / self.accepted.len().max(1) as f64
    }
}

/// The verification logits of one position: β·AR + (1−β)·diffusion (the AR row alone without a
/// block, and exactly it at β = 1).
fn mix(ar: Tensor, diff: Option<Tensor>, beta: f64) -> Tensor {
    match diff {
        Some(d) if beta < 1.0 => ar * beta + d * (1.0 - beta),
        _ => ar,
    }
}

fn argmax(logits: &Tensor) -> i64 {
    logits.argmax(-1, false).int64_value(&[])
}

/// Speculative decoding with the model's own diffusion drafts (`tidar-reference.md` §4): prefill
/// with one mask block, then one forward per step over the drafts and their k outcome blocks.
/// Greedy acceptance at temperature 0; otherwise exact speculative sampling of the mixed
/// distribution p = sampling(v): the argmax draft d is kept with probability p(d), else the next
/// token is drawn from p without d. Near `block_size` the draft shrinks to fit, down to plain
/// next-token steps.
pub fn generate(
    lm: &mut dyn CachedLm,
    prompt: &[i64],
    mask_id: i64,
    o: &TidarOptions,
) -> Result<TidarOutput> {
    ensure!(!prompt.is_empty(), "the prompt has no tokens");
    ensure!(o.draft >= 1, "the draft length must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&o.beta),
        "beta = {} must be in [0, 1]",
        o.beta
    );
    let bs = lm.block_size();
    let n = prompt.len() as i64;
    ensure!(
        n <= bs,
        "the prompt has {n} tokens, more than block_size {bs}"
    );
    let masks = |count: i64| vec![mask_id; count as usize];

    // Prefill: the prompt, then one block that sees all of it; only the prompt's keys are kept.
    let k = o.draft.min(bs - n);
    let sees: &[i64] = if k > 0 { &[n] } else { &[] };
    let (positions, mask) = step_layout(0, n, sees, k);
    let mut ids = prompt.to_vec();
    ids.extend(masks(k));
    let logits = lm.extend(&ids, &positions, &mask)?;
    lm.truncate(n);
    let slot = |s: i64| logits.get(n + s);
    let v = mix(logits.get(n - 1), (k > 0).then(|| slot(0)), o.beta);
    let first = o.sampling.sample(&v)?;
    let mut drafts: Vec<i64> = std::iter::once(first)
        .chain((1..k).map(|s| argmax(&slot(s))))
        .collect();
    let mut out = TidarOutput {
        tokens: vec![first],
        forwards: 1,
        accepted: Vec::new(),
    };
    let done = |t: &[i64]| t.len() >= o.max_tokens || o.stop_token.is_some_and(|s| t.contains(&s));

    while !done(&out.tokens) && lm.len() < bs {
        // The cache holds everything before d_0, the token already chosen.
        let l = lm.len();
        let k = o.draft.min((bs - l) / 2).min(drafts.len() as i64).max(1);
        let blocks: Vec<i64> = match (bs - l) / 2 {
            0 => Vec::new(),
            _ => (1..=k).collect(),
        };
        let (positions, mask) = step_layout(l, k, &blocks, k);
        let mut ids = drafts[..k as usize].to_vec();
        ids.extend(masks(k * blocks.len() as i64));
        let logits = lm.extend(&ids, &positions, &mask)?;
        // Block j (1-based) drafts what follows d_0 … d_{j−1}; its slot 0 predicts what d_j's
        // AR row predicts.
        let block = |j: i64, s: i64| logits.get(k + (j - 1) * k + s);
        let has_blocks = !blocks.is_empty();
        let v = |i: i64| mix(logits.get(i), has_blocks.then(|| block(i + 1, 0)), o.beta);
        let (a, next) = accept(&drafts[..k as usize], &v, &o.sampling)?;
        lm.truncate(l + a);
        out.tokens.extend_from_slice(&drafts[1..a as usize]);
        out.tokens.push(next);
        out.forwards += 1;
        out.accepted.push(a);
        drafts = std::iter::once(next)
            .chain((1..k).filter(|_| has_blocks).map(|s| argmax(&block(a, s))))
            .collect();
    }
    if let Some(end) = o
        .stop_token
        .and_then(|s| out.tokens.iter().position(|&t| t == s))
    {
        out.tokens.truncate(end + 1);
    }
    out.tokens.truncate(o.max_tokens);
    Ok(out)
}

/// How many of the drafts d_0 … d_{k−1} a step keeps (d_0 always: it was chosen from verified
/// logits), and the token after them. `v(i)` are the verification logits of the position after
/// d_i.
fn accept(drafts: &[i64], v: &dyn Fn(i64) -> Tensor, sampling: &Sampling) -> Result<(i64, i64)> {
    let k = drafts.len() as i64;
    let mut a = 1;
    if sampling.temperature <= 0.0 {
        while a < k && drafts[a as usize] == argmax(&v(a - 1)) {
            a += 1;
        }
        return Ok((a, argmax(&v(a - 1))));
    }
    loop {
        let p = sampling.probs(&v(a - 1))?;
        if a == k {
            return Ok((a, sampling.draw(&p)?));
        }
        let d = drafts[a as usize];
        let p_d = p.double_value(&[d]);
        let u = Tensor::rand([], (Kind::Double, Device::Cpu)).double_value(&[]);
        if u < p_d {
            a += 1;
            continue;
        }
        // Rejected: the residual of a point-mass proposal is p without d, renormalised.
        let _ = p.get(d).fill_(0.0);
        return Ok((a, sampling.draw(&(&p / p.sum(Kind::Double)))?));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> Vec<Vec<bool>> {
        rows.iter()
            .map(|r| {
                r.chars()
                    .filter(|c| *c == '0' || *c == '1')
                    .map(|c| c == '1')
                    .collect()
            })
            .collect()
    }

    /// `tidar-reference.md` §2, S = 6, b = 3, as drawn there.
    #[test]
    fn the_training_mask_is_the_papers_grid() {
        let want = grid(&[
            "1 0 0 0 0 0 | 0 0 0 | 0 0 0",
            "1 1 0 0 0 0 | 0 0 0 | 0 0 0",
            "1 1 1 0 0 0 | 0 0 0 | 0 0 0",
            "1 1 1 1 0 0 | 0 0 0 | 0 0 0",
            "1 1 1 1 1 0 | 0 0 0 | 0 0 0",
            "1 1 1 1 1 1 | 0 0 0 | 0 0 0",
            "0 0 0 0 0 0 | 1 1 1 | 0 0 0",
            "0 0 0 0 0 0 | 1 1 1 | 0 0 0",
            "0 0 0 0 0 0 | 1 1 1 | 0 0 0",
            "1 1 1 0 0 0 | 0 0 0 | 1 1 1",
            "1 1 1 0 0 0 | 0 0 0 | 1 1 1",
            "1 1 1 0 0 0 | 0 0 0 | 1 1 1",
        ]);
        assert_eq!(training_mask(6, 3), want);
    }

    /// Appendix B's prefill: a prompt of 4 and one block of 3 masks.
    #[test]
    fn the_prefill_layout_is_the_papers_grid() {
        let (positions, mask) = step_layout(0, 4, &[4], 3);
        assert_eq!(positions, vec![0, 1, 2, 3, 4, 5, 6]);
        let want = grid(&[
            "1 0 0 0 | 0 0 0",
            "1 1 0 0 | 0 0 0",
            "1 1 1 0 | 0 0 0",
            "1 1 1 1 | 0 0 0",
            "1 1 1 1 | 1 1 1",
            "1 1 1 1 | 1 1 1",
            "1 1 1 1 | 1 1 1",
        ]);
        assert_eq!(mask, want);
    }

    /// A decode step, k = 3, three cached tokens: drafts at 3–5, B_j at 3+j … 5+j.
    #[test]
    fn the_decode_layout_is_the_papers_grid() {
        let (positions, mask) = step_layout(3, 3, &[1, 2, 3], 3);
        assert_eq!(positions, vec![3, 4, 5, 4, 5, 6, 5, 6, 7, 6, 7, 8]);
        let b = |own: &str, sees: &str| format!("111 | {sees} | {own}");
        let rows = [
            "111 | 1 0 0 | 000 000 000".to_string(),
            "111 | 1 1 0 | 000 000 000".to_string(),
            "111 | 1 1 1 | 000 000 000".to_string(),
            b("111 000 000", "1 0 0"),
            b("111 000 000", "1 0 0"),
            b("111 000 000", "1 0 0"),
            b("000 111 000", "1 1 0"),
            b("000 111 000", "1 1 0"),
            b("000 111 000", "1 1 0"),
            b("000 000 111", "1 1 1"),
            b("000 000 111", "1 1 1"),
            b("000 000 111", "1 1 1"),
        ];
        let want = grid(&rows.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(mask, want);
    }

    #[test]
    fn the_batch_pairs_masks_with_their_own_tokens() {
        let t = Tidar::new(TidarConfig {
            block: 2,
            alpha: 1.0,
            mask_id: 99,
        });
        let x = Tensor::from_slice(&[5i64, 6, 7, 8]).view([1, 4]);
        let y = Tensor::from_slice(&[6i64, IGNORE, 8, 9]).view([1, 4]);
        let b = t.batch(&x, &y, 0.5).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(b.ids.view([-1])).unwrap(),
            [5, 6, 7, 8, 99, 99, 99, 99]
        );
        assert_eq!(
            Vec::<i64>::try_from(b.targets.view([-1])).unwrap(),
            [6, IGNORE, 8, 9, 5, 6, IGNORE, 8]
        );
        assert_eq!(Vec::<f32>::try_from(b.weights).unwrap(), [0.25; 8]);
        let Positions::Ids(p) = &b.attend.positions else {
            panic!("explicit positions")
        };
        assert_eq!(Vec::<i64>::try_from(p).unwrap(), [0, 1, 2, 3, 0, 1, 2, 3]);
        assert!(t
            .batch(&x.narrow(1, 0, 3), &y.narrow(1, 0, 3), 1.0)
            .is_err());
    }
}
