//! The reference TRM's model config dict (`TinyRecursiveReasoningModel_ACTV1Config`,
//! SamsungSAILMontreal/TinyRecursiveModels): what `import-trm` reads and `export --format
//! trm-reference` writes beside the state dict, whose keys are already ours.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use crate::trm::{PosEncoding, TrmConfig};

/// The reference's model config dict (`TinyRecursiveReasoningModel_ACTV1Config`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceArch {
    pub batch_size: i64,
    pub seq_len: i64,
    pub puzzle_emb_ndim: i64,
    pub num_puzzle_identifiers: i64,
    pub vocab_size: i64,
    #[serde(rename = "H_cycles")]
    pub h_cycles: i64,
    #[serde(rename = "L_cycles")]
    pub l_cycles: i64,
    #[serde(rename = "H_layers", default)]
    pub h_layers: i64,
    #[serde(rename = "L_layers")]
    pub l_layers: i64,
    pub hidden_size: i64,
    pub expansion: f64,
    pub num_heads: i64,
    pub pos_encodings: String,
    pub halt_max_steps: i64,
    pub halt_exploration_prob: f64,
    #[serde(default = "float32")]
    pub forward_dtype: String,
    #[serde(default)]
    pub mlp_t: bool,
    #[serde(default = "sixteen")]
    pub puzzle_emb_len: i64,
    #[serde(rename = "no_ACT_continue", default = "yes")]
    pub no_act_continue: bool,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
}

fn float32() -> String {
    "float32".into()
}
fn sixteen() -> i64 {
    16
}
fn yes() -> bool {
    true
}
fn eps() -> f64 {
    1e-5
}
fn theta() -> f64 {
    10_000.0
}

impl ReferenceArch {
    /// Our shape, refusing what the reference could run but we would compute differently.
    pub fn to_config(&self, name: &str) -> Result<TrmConfig> {
        ensure!(
            self.no_act_continue,
            "no_ACT_continue = false: the continue-Q loss is not implemented (the reference's own path for it is broken)"
        );
        ensure!(
            self.puzzle_emb_ndim == self.hidden_size,
            "puzzle_emb_ndim = {} (hidden_size {}): Muninn's puzzle embedding is one D-wide row at prefix position 0",
            self.puzzle_emb_ndim,
            self.hidden_size
        );
        let pos = match self.pos_encodings.as_str() {
            "rope" => PosEncoding::Rope,
            "none" => PosEncoding::None,
            other => bail!("pos_encodings = \"{other}\": Muninn has rope and none"),
        };
        ensure!(
            matches!(self.forward_dtype.as_str(), "float32" | "bfloat16"),
            "forward_dtype = \"{}\": expected float32 or bfloat16",
            self.forward_dtype
        );
        let cfg = TrmConfig {
            name: name.to_string(),
            hidden_size: self.hidden_size,
            layers: self.l_layers,
            num_heads: self.num_heads,
            expansion: self.expansion,
            vocab_size: self.vocab_size,
            seq_len: self.seq_len,
            puzzle_emb_len: self.puzzle_emb_len,
            num_puzzle_identifiers: self.num_puzzle_identifiers,
            h_cycles: self.h_cycles,
            l_cycles: self.l_cycles,
            halt_max_steps: self.halt_max_steps,
            halt_exploration_prob: self.halt_exploration_prob,
            mlp_t: self.mlp_t,
            pos_encodings: pos,
            rope_theta: self.rope_theta,
            norm_eps: self.rms_norm_eps,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn of(cfg: &TrmConfig, batch_size: i64) -> Self {
        ReferenceArch {
            batch_size,
            seq_len: cfg.seq_len,
            puzzle_emb_ndim: cfg.hidden_size,
            num_puzzle_identifiers: cfg.num_puzzle_identifiers,
            vocab_size: cfg.vocab_size,
            h_cycles: cfg.h_cycles,
            l_cycles: cfg.l_cycles,
            h_layers: 0,
            l_layers: cfg.layers,
            hidden_size: cfg.hidden_size,
            expansion: cfg.expansion,
            num_heads: cfg.num_heads,
            pos_encodings: match cfg.pos_encodings {
                PosEncoding::Rope => "rope".into(),
                PosEncoding::None => "none".into(),
            },
            halt_max_steps: cfg.halt_max_steps,
            halt_exploration_prob: cfg.halt_exploration_prob,
            forward_dtype: "float32".into(),
            mlp_t: cfg.mlp_t,
            puzzle_emb_len: cfg.puzzle_emb_len,
            no_act_continue: true,
            rms_norm_eps: cfg.norm_eps,
            rope_theta: cfg.rope_theta,
        }
    }
}
