//! Per-token adaptive exit (reference §2.5, `raven_modeling_minimal.py`'s exit evaluators): after
//! each core iteration a criterion compares the new latent state, or the next-token distribution
//! the coda reads from it, with the previous iteration's, and the token stops iterating once the
//! change is small enough. Before the first iteration the "previous" values are s0, a uniform
//! distribution, an entropy of 100 and no argmax, as in the reference.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use tch::{Kind, Tensor};

/// When a token stops iterating. Thresholds default to the reference's `"auto"` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExitCriterion {
    /// KL(p_{i−1} ‖ p_i) of successive next-token distributions below the threshold. (The reference
    /// calls `F.kl_div(log p_i, log p_{i−1}, log_target=True)`, which is this direction.)
    Kl(f64),
    /// ‖s_i − s_{i−1}‖ / ‖s_i‖ below the threshold (mean over the tokens of a chunk).
    LatentDiff(f64),
    /// |H(p_i) − H(p_{i−1})| below the threshold.
    EntropyDiff(f64),
    /// The same argmax for this many consecutive iterations.
    Argmax(u32),
}

impl ExitCriterion {
    /// Whether the criterion reads the coda's output (so each check costs a coda pass).
    pub fn needs_logits(&self) -> bool {
        !matches!(self, ExitCriterion::LatentDiff(_))
    }

    /// A tracker that starts from the initial state `s0` [B, T, d].
    pub fn tracker(&self, s0: &Tensor) -> ExitTracker {
        ExitTracker {
            criterion: *self,
            prev_state: s0.detach(),
            prev_log_probs: None,
            prev_entropy: 100.0,
            prev_argmax: -1,
            stable: 0,
        }
    }
}

impl FromStr for ExitCriterion {
    type Err = anyhow::Error;

    /// `NAME` or `NAME:VALUE`, e.g. `kl:1e-3`, `latent-diff`, `argmax:5`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let threshold = |default: f64| -> Result<f64> {
            let Some(v) = value else { return Ok(default) };
            let t: f64 = v
                .parse()
                .with_context(|| format!("exit criterion `{s}`: `{v}` is not a number"))?;
            ensure!(
                t.is_finite() && t > 0.0,
                "exit criterion `{s}`: the threshold must be a positive number"
            );
            Ok(t)
        };
        Ok(match name {
            "kl" => ExitCriterion::Kl(threshold(1e-3)?),
            "latent-diff" => ExitCriterion::LatentDiff(threshold(0.03)?),
            "entropy-diff" => ExitCriterion::EntropyDiff(threshold(1e-3)?),
            "argmax" | "argmax-stability" => {
                let n = match value {
                    None => 5,
                    Some(v) => v.parse::<u32>().ok().filter(|&n| n > 0).with_context(|| {
                        format!("exit criterion `{s}`: `{v}` is not a positive whole number of iterations")
                    })?,
                };
                ExitCriterion::Argmax(n)
            }
            other => bail!(
                "unknown exit criterion `{other}` (expected kl, latent-diff, entropy-diff or argmax, \
                 optionally with :THRESHOLD)"
            ),
        })
    }
}

impl fmt::Display for ExitCriterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCriterion::Kl(t) => write!(f, "kl:{t}"),
            ExitCriterion::LatentDiff(t) => write!(f, "latent-diff:{t}"),
            ExitCriterion::EntropyDiff(t) => write!(f, "entropy-diff:{t}"),
            ExitCriterion::Argmax(n) => write!(f, "argmax:{n}"),
        }
    }
}

/// The criterion's value after one iteration, and whether it says stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    pub value: f64,
    pub exit: bool,
}

/// Remembers the previous iteration's state and distribution for one chunk of tokens.
pub struct ExitTracker {
    criterion: ExitCriterion,
    prev_state: Tensor,
    prev_log_probs: Option<Tensor>,
    prev_entropy: f64,
    prev_argmax: i64,
    stable: u32,
}

impl ExitTracker {
    /// Observes iteration i: `state` [B, T, d] and, for criteria that need it, `logits` [V], the
    /// next-token logits of the chunk's last position.
    pub fn observe(&mut self, state: &Tensor, logits: Option<&Tensor>) -> Result<Check> {
        let logits = || -> Result<Tensor> {
            let l = logits.context("this exit criterion needs the coda's logits")?;
            ensure!(
                l.dim() == 1,
                "exit check: logits must be [V], got {:?}",
                l.size()
            );
            Ok(l.to_kind(Kind::Float))
        };
        let check = match self.criterion {
            ExitCriterion::LatentDiff(t) => {
                let s = state.to_kind(Kind::Float);
                let diff = (&s - &self.prev_state).norm_scalaropt_dim(2.0, [-1], false);
                let value = (diff / s.norm_scalaropt_dim(2.0, [-1], false))
                    .mean(Kind::Float)
                    .double_value(&[]);
                self.prev_state = s.detach();
                Check {
                    value,
                    exit: value < t,
                }
            }
            ExitCriterion::Kl(t) => {
                let log_p = logits()?.log_softmax(-1, Kind::Float);
                let value = match &self.prev_log_probs {
                    // KL(q ‖ p) = Σ q (log q − log p), q the previous distribution.
                    Some(log_q) => (log_q.exp() * (log_q - &log_p)).sum(Kind::Float),
                    // The reference starts from the uniform distribution: KL(u ‖ p).
                    None => {
                        let v = log_p.size()[0] as f64;
                        (-log_p.mean(Kind::Float)) - v.ln()
                    }
                }
                .double_value(&[]);
                self.prev_log_probs = Some(log_p);
                Check {
                    value,
                    exit: value < t,
                }
            }
            ExitCriterion::EntropyDiff(t) => {
                let p = logits()?.softmax(-1, Kind::Float);
                let entropy = -(&p * (&p + 1e-10).log()).sum(Kind::Float).double_value(&[]);
                let value = (entropy - self.prev_entropy).abs();
                self.prev_entropy = entropy;
                Check {
                    value,
                    exit: value < t,
                }
            }
            ExitCriterion::Argmax(n) => {
                let top = logits()?.argmax(-1, false).int64_value(&[]);
                self.stable = if top == self.prev_argmax {
                    self.stable + 1
                } else {
                    0
                };
                self.prev_argmax = top;
                Check {
                    value: f64::from(self.stable),
                    exit: self.stable >= n,
                }
            }
        };
        Ok(check)
    }
}
