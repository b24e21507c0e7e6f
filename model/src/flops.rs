//! Training FLOPs per token of a recurrent-depth model (`hpc-and-ecosystem.md` §2.5).
//!
//! Matmul and attention FLOPs only, attention counted as full T×T (not causal-halved), as
//! `torch.utils.flop_counter` and the reference's MFU do.

use crate::config::HuginnConfig;

/// FLOPs per token of one training step with `n` no-grad and `k` grad iterations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainFlops {
    /// Model FLOPs (the MFU numerator): no recomputation counted.
    pub model: f64,
    /// Hardware FLOPs (the HFU numerator): adds the recompute forward of checkpointed iterations.
    pub hardware: f64,
}

/// The quantities of §2.5, per token, as floats.
struct Terms {
    /// N_P + N_C: matmul parameters of prelude and coda.
    n_pc: f64,
    /// N_R: matmul parameters run per core iteration, the adapter included.
    n_r: f64,
    /// N_H: the head.
    n_h: f64,
    /// T·d
    td: f64,
    /// l_P + l_C
    l_pc: f64,
    /// l_R
    l_r: f64,
}

impl Terms {
    fn new(cfg: &HuginnConfig, seq_len: i64) -> Self {
        let (d, i) = (cfg.n_embd as f64, cfg.intermediate_size as f64);
        // q and o d² each, k and v d²·kv/h each (grouped-query), fc 2dI, mlp.proj dI.
        let kv = cfg.kv_heads() as f64 / cfg.n_heads as f64;
        let block = (2.0 + 2.0 * kv) * d * d + 3.0 * d * i;
        let l_pc = (cfg.n_layers_in_prelude + cfg.n_layers_in_coda) as f64;
        let l_r = cfg.n_layers_in_recurrent_block as f64;
        Terms {
            n_pc: l_pc * block,
            n_r: l_r * block + 2.0 * d * d,
            n_h: cfg.vocab_size as f64 * d,
            td: seq_len as f64 * d,
            l_pc,
            l_r,
        }
    }
}

/// F(r, k) = 6(N_P + N_C + N_H) + (2r + 4k)·N_R + 12·T·d·(l_P + l_C) + (4r + 8k)·T·d·l_R,
/// with r = n + k. Per-iteration activation checkpointing adds 2k·N_R + 4k·T·d·l_R of recompute.
pub fn train_flops_per_token(
    cfg: &HuginnConfig,
    n: i64,
    k: i64,
    seq_len: i64,
    activation_checkpointing: bool,
) -> TrainFlops {
    let x = Terms::new(cfg, seq_len);
    let (r, k) = ((n + k) as f64, k as f64);
    let model = 6.0 * (x.n_pc + x.n_h)
        + (2.0 * r + 4.0 * k) * x.n_r
        + 12.0 * x.td * x.l_pc
        + (4.0 * r + 8.0 * k) * x.td * x.l_r;
    let recompute = if activation_checkpointing {
        2.0 * k * x.n_r + 4.0 * k * x.td * x.l_r
    } else {
        0.0
    };
    TrainFlops {
        model,
        hardware: model + recompute,
    }
}

/// Forward-only FLOPs per token at depth r (inference).
pub fn inference_flops_per_token(cfg: &HuginnConfig, r: i64, seq_len: i64) -> f64 {
    let x = Terms::new(cfg, seq_len);
    let r = r as f64;
    2.0 * (x.n_pc + x.n_h) + 2.0 * r * x.n_r + 4.0 * x.td * (x.l_pc + r * x.l_r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nebel() -> HuginnConfig {
        HuginnConfig::preset("nebel-raven-3.5b").unwrap()
    }

    #[test]
    fn reference_flops_at_24_8() {
        // huginn-reference.md §7.1: 2.1535e11 with per-iteration checkpointing, 1.8639e11 without.
        let f = train_flops_per_token(&nebel(), 24, 8, 4096, true);
        assert!(
            (f.hardware / 2.1535e11 - 1.0).abs() < 1e-4,
            "{}",
            f.hardware
        );
        assert!((f.model / 1.8639e11 - 1.0).abs() < 1e-4, "{}", f.model);
    }

    #[test]
    fn reduces_to_6n_plus_attention_at_depth_one() {
        let cfg = nebel();
        let f = train_flops_per_token(&cfg, 0, 1, 4096, false);
        let d = cfg.n_embd as f64;
        let nb = 4.0 * d * d + 3.0 * d * cfg.intermediate_size as f64;
        let n = 8.0 * nb + 2.0 * d * d + cfg.vocab_size as f64 * d;
        let expect = 6.0 * n + 12.0 * 4096.0 * d * 8.0;
        assert!((f.model / expect - 1.0).abs() < 1e-12);
    }

    #[test]
    fn inference_at_32_is_about_1_2e11() {
        let f = inference_flops_per_token(&nebel(), 32, 4096);
        assert!((f / 1.20e11 - 1.0).abs() < 0.01, "{f}");
    }
}
