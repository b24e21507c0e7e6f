//! Model shapes: the named presets of the reference (§1.1, §9) and any shape from a TOML `[model]` table.
//!
//! Two types, as in candle: [`RawHuginnConfig`] mirrors the TOML table (every field optional, unknown
//! keys refused) and [`HuginnConfig`] is the fully resolved, validated shape the model is built from.

use std::fmt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// How the random initial latent state s0 is drawn (reference §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateInit {
    /// Truncated normal (±3σ, σ = sqrt(2/(5d))) scaled by sqrt(d): Huginn's choice.
    LikeInit,
    /// All zeros: deterministic runs and the HF converter's test.
    Zero,
}

impl fmt::Display for StateInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateInit::LikeInit => "like-init",
            StateInit::Zero => "zero",
        })
    }
}

/// Which transformer block the prelude, core and coda stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    /// Huginn's: four RMSNorms around attention and MLP, fused Wqkv with `qk_bias`,
    /// interleaved-pair RoPE; `ln_f` before and after the coda (reference §1.3–1.5, §8.1).
    #[default]
    Sandwich,
    /// The `gpt` family's Llama decoder layer (Llama, TinyLlama, Qwen2): pre-norm, grouped-query
    /// attention, rotate-half RoPE; `ln_f` after the coda only, as the retrofit paper's code.
    PreNorm,
    /// OLMo-2's post-norm layer (with `qk_norm`), otherwise as `pre-norm`.
    PostNorm,
}

impl BlockKind {
    /// The Llama layer's norm placement, `None` for the sandwich block.
    pub fn llama_norm(self) -> Option<crate::llama::NormPlacement> {
        match self {
            BlockKind::Sandwich => None,
            BlockKind::PreNorm => Some(crate::llama::NormPlacement::Pre),
            BlockKind::PostNorm => Some(crate::llama::NormPlacement::Post),
        }
    }
}

/// A resolved Huginn shape. Every field is known and consistent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HuginnConfig {
    pub name: String,
    /// Width d (`n_embd`).
    pub n_embd: i64,
    pub n_heads: i64,
    /// SwiGLU hidden size I; the fused `fc` is [2I, d].
    pub intermediate_size: i64,
    /// Vocabulary size, already padded (the reference pads to a multiple of `padding_multiple`).
    pub vocab_size: i64,
    pub padding_multiple: i64,
    /// Longest sequence; the RoPE cache has exactly this many positions.
    pub block_size: i64,
    pub n_layers_in_prelude: i64,
    pub n_layers_in_recurrent_block: i64,
    pub n_layers_in_coda: i64,
    /// r̄: enters the init (effective depth) and is the default test-time depth.
    pub mean_recurrence: i64,
    /// k̄: the truncation depth used for training.
    pub mean_backprop_depth: i64,
    pub norm_eps: f64,
    pub rope_base: f64,
    pub qk_bias: bool,
    pub state_init: StateInit,
    /// The block of prelude, core and coda (checkpoints from before this key are `sandwich`).
    #[serde(default)]
    pub block: BlockKind,
    /// Key/value heads (grouped-query attention, Llama-style blocks only).
    #[serde(default)]
    pub n_kv_heads: Option<i64>,
    /// The head is the embedding (Huginn); a retrofitted model has its source's own head.
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    /// Embeddings times sqrt(d) (Huginn), or as they are (a retrofitted Llama).
    #[serde(default = "yes")]
    pub scale_embeddings: bool,
    /// Biases on q, k and v (Qwen2; Llama-style blocks only).
    #[serde(default)]
    pub attention_bias: bool,
    /// RMSNorm over q and k before RoPE (OLMo-2; Llama-style blocks only).
    #[serde(default)]
    pub qk_norm: bool,
    /// Llama-3's RoPE scaling (Llama-style blocks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<crate::llama::RopeScaling>,
}

fn yes() -> bool {
    true
}

impl HuginnConfig {
    pub fn kv_heads(&self) -> i64 {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// The Llama layer's shape, for `pre-norm` and `post-norm` blocks.
    pub fn layer_shape(&self) -> Option<crate::llama::LayerShape> {
        Some(crate::llama::LayerShape {
            n_embd: self.n_embd,
            n_heads: self.n_heads,
            n_kv_heads: self.kv_heads(),
            intermediate_size: self.intermediate_size,
            norm_eps: self.norm_eps,
            attention_bias: self.attention_bias,
            qk_norm: self.qk_norm,
            norm: self.block.llama_norm()?,
        })
    }

    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_heads
    }

    /// L_eff = prelude + coda + core·r̄, which scales the out-projection init (§1.8).
    pub fn effective_expected_depth(&self) -> i64 {
        self.n_layers_in_prelude
            + self.n_layers_in_coda
            + self.n_layers_in_recurrent_block * self.mean_recurrence
    }

    /// σ = sqrt(2/(5d)) for embeddings, qkv, fc, adapter and s0.
    pub fn init_std(&self) -> f64 {
        (2.0 / (5.0 * self.n_embd as f64)).sqrt()
    }

    /// σ / sqrt(2·L_eff) for `attn.proj` and `mlp.proj`.
    pub fn out_proj_std(&self) -> f64 {
        self.init_std() / (2.0 * self.effective_expected_depth() as f64).sqrt()
    }

    pub fn embed_scale(&self) -> f64 {
        match self.scale_embeddings {
            true => (self.n_embd as f64).sqrt(),
            false => 1.0,
        }
    }

    /// A named preset, or `None` for an unknown name.
    pub fn preset(name: &str) -> Option<Self> {
        let small = |name: &str, d, heads, i, v, (p, r, c), (mean, k)| HuginnConfig {
            name: name.to_string(),
            n_embd: d,
            n_heads: heads,
            intermediate_size: i,
            vocab_size: v,
            padding_multiple: 64,
            block_size: 64,
            n_layers_in_prelude: p,
            n_layers_in_recurrent_block: r,
            n_layers_in_coda: c,
            mean_recurrence: mean,
            mean_backprop_depth: k,
            norm_eps: 1e-6,
            rope_base: 50_000.0,
            qk_bias: true,
            state_init: StateInit::LikeInit,
            block: BlockKind::Sandwich,
            n_kv_heads: None,
            tie_embeddings: true,
            scale_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            rope_scaling: None,
        };
        Some(match name {
            "nebel-raven-3.5b" => HuginnConfig {
                padding_multiple: 4096,
                block_size: 4096,
                ..small(name, 5280, 55, 17920, 65536, (2, 4, 2), (32, 8))
            },
            "micro" => small(name, 64, 2, 256, 256, (1, 2, 1), (4, 2)),
            "tiny" => small(name, 128, 4, 512, 512, (1, 2, 1), (4, 2)),
            "mini-huginn" => small(name, 128, 4, 512, 512, (2, 4, 2), (8, 4)),
            _ => return None,
        })
    }

    pub const PRESETS: [&'static str; 4] = ["nebel-raven-3.5b", "micro", "tiny", "mini-huginn"];

    /// `NAME` of a preset, or a TOML file with a `[model]` table.
    pub fn from_name_or_file(spec: &str) -> Result<Self> {
        if let Some(cfg) = Self::preset(spec) {
            return Ok(cfg);
        }
        let path = Path::new(spec);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            return Self::from_toml_file(path);
        }
        bail!(
            "`{spec}` is neither a named shape ({}) nor an existing TOML file",
            Self::PRESETS.join(", ")
        )
    }

    /// Reads the `[model]` table of a TOML file (a run config or a checkpoint's `config.toml`).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml_str(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).context("parsing TOML")?;
        let model = doc
            .remove("model")
            .context("no [model] table: a model shape needs one")?;
        let raw: RawHuginnConfig = model.try_into().context("reading [model]")?;
        raw.resolve()
    }

    /// The TOML form written into checkpoints: `[model]` with every field spelled out.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Doc<'a> {
            model: &'a HuginnConfig,
        }
        toml::to_string(&Doc { model: self }).expect("a resolved config always serialises")
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |key: &str, v: i64| -> Result<()> {
            ensure!(v > 0, "model.{key} = {v}: must be positive");
            Ok(())
        };
        pos("n_embd", self.n_embd)?;
        pos("n_heads", self.n_heads)?;
        pos("intermediate_size", self.intermediate_size)?;
        pos("vocab_size", self.vocab_size)?;
        pos("padding_multiple", self.padding_multiple)?;
        pos("block_size", self.block_size)?;
        pos(
            "n_layers_in_recurrent_block",
            self.n_layers_in_recurrent_block,
        )?;
        pos("mean_recurrence", self.mean_recurrence)?;
        pos("mean_backprop_depth", self.mean_backprop_depth)?;
        ensure!(
            self.n_layers_in_prelude >= 0,
            "model.n_layers_in_prelude must be >= 0"
        );
        ensure!(
            self.n_layers_in_coda >= 0,
            "model.n_layers_in_coda must be >= 0"
        );
        ensure!(
            self.n_embd % self.n_heads == 0,
            "model.n_embd = {} is not divisible by model.n_heads = {}",
            self.n_embd,
            self.n_heads
        );
        ensure!(
            self.head_dim() % 2 == 0,
            "head dim n_embd / n_heads = {} must be even for RoPE",
            self.head_dim()
        );
        ensure!(
            self.norm_eps > 0.0 && self.norm_eps.is_finite(),
            "model.norm_eps = {}: must be a positive number",
            self.norm_eps
        );
        ensure!(
            self.rope_base > 1.0 && self.rope_base.is_finite(),
            "model.rope_base = {}: must be > 1",
            self.rope_base
        );
        ensure!(
            self.mean_backprop_depth <= self.mean_recurrence,
            "model.mean_backprop_depth = {} exceeds model.mean_recurrence = {}",
            self.mean_backprop_depth,
            self.mean_recurrence
        );
        let kv = self.kv_heads();
        ensure!(
            kv > 0 && self.n_heads % kv == 0,
            "model.n_kv_heads = {kv} must divide model.n_heads = {}",
            self.n_heads
        );
        if self.block == BlockKind::Sandwich {
            for (key, set) in [
                ("n_kv_heads", kv != self.n_heads),
                ("attention_bias", self.attention_bias),
                ("qk_norm", self.qk_norm),
                ("rope_scaling", self.rope_scaling.is_some()),
            ] {
                ensure!(
                    !set,
                    "model.{key} belongs to Llama-style blocks: set model.block = \"pre-norm\" or \"post-norm\", or remove it"
                );
            }
        } else {
            ensure!(
                !self.qk_bias,
                "model.qk_bias is the sandwich block's: a {} block has model.attention_bias instead",
                self.block_name()
            );
        }
        Ok(())
    }

    pub fn block_name(&self) -> &'static str {
        match self.block {
            BlockKind::Sandwich => "sandwich",
            BlockKind::PreNorm => "pre-norm",
            BlockKind::PostNorm => "post-norm",
        }
    }
}

/// The `[model]` table as written by a user: start from `preset` (if given) and override any field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHuginnConfig {
    pub preset: Option<String>,
    pub name: Option<String>,
    pub n_embd: Option<i64>,
    pub n_heads: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub vocab_size: Option<i64>,
    pub padding_multiple: Option<i64>,
    pub block_size: Option<i64>,
    pub n_layers_in_prelude: Option<i64>,
    pub n_layers_in_recurrent_block: Option<i64>,
    pub n_layers_in_coda: Option<i64>,
    pub mean_recurrence: Option<i64>,
    pub mean_backprop_depth: Option<i64>,
    pub norm_eps: Option<f64>,
    pub rope_base: Option<f64>,
    pub qk_bias: Option<bool>,
    pub state_init: Option<StateInit>,
    pub block: Option<BlockKind>,
    pub n_kv_heads: Option<i64>,
    pub tie_embeddings: Option<bool>,
    pub scale_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub qk_norm: Option<bool>,
    pub rope_scaling: Option<crate::llama::RopeScaling>,
}

impl RawHuginnConfig {
    pub fn resolve(self) -> Result<HuginnConfig> {
        let base = match &self.preset {
            Some(p) => Some(HuginnConfig::preset(p).with_context(|| {
                format!(
                    "model.preset = \"{p}\" is not one of {}",
                    HuginnConfig::PRESETS.join(", ")
                )
            })?),
            None => None,
        };
        macro_rules! field {
            ($f:ident) => {
                match (self.$f, &base) {
                    (Some(v), _) => v,
                    (None, Some(b)) => b.$f.clone(),
                    (None, None) => bail!(concat!(
                        "model.",
                        stringify!($f),
                        " is missing (set it, or set model.preset to start from a named shape)"
                    )),
                }
            };
        }
        macro_rules! field_or {
            ($f:ident, $default:expr) => {
                match (self.$f, &base) {
                    (Some(v), _) => v,
                    (None, Some(b)) => b.$f.clone(),
                    (None, None) => $default,
                }
            };
        }
        let block = field_or!(block, BlockKind::Sandwich);
        let cfg = HuginnConfig {
            name: field_or!(name, "custom".to_string()),
            n_embd: field!(n_embd),
            n_heads: field!(n_heads),
            intermediate_size: field!(intermediate_size),
            vocab_size: field!(vocab_size),
            padding_multiple: field_or!(padding_multiple, 64),
            block_size: field!(block_size),
            n_layers_in_prelude: field!(n_layers_in_prelude),
            n_layers_in_recurrent_block: field!(n_layers_in_recurrent_block),
            n_layers_in_coda: field!(n_layers_in_coda),
            mean_recurrence: field!(mean_recurrence),
            mean_backprop_depth: field!(mean_backprop_depth),
            norm_eps: field_or!(norm_eps, 1e-6),
            rope_base: field_or!(rope_base, 50_000.0),
            // The sandwich block's q/k bias is on unless a Llama-style block is chosen.
            qk_bias: match (self.qk_bias, block) {
                (Some(v), _) => v,
                (None, BlockKind::Sandwich) => field_or!(qk_bias, true),
                (None, _) => false,
            },
            state_init: field_or!(state_init, StateInit::LikeInit),
            block,
            n_kv_heads: match (self.n_kv_heads, &base) {
                (Some(v), _) => Some(v),
                (None, Some(b)) => b.n_kv_heads,
                (None, None) => None,
            },
            tie_embeddings: field_or!(tie_embeddings, true),
            scale_embeddings: field_or!(scale_embeddings, true),
            attention_bias: field_or!(attention_bias, false),
            qk_norm: field_or!(qk_norm, false),
            rope_scaling: match (self.rope_scaling, &base) {
                (Some(v), _) => Some(v),
                (None, Some(b)) => b.rope_scaling.clone(),
                (None, None) => None,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_with_override_resolves() {
        let cfg = HuginnConfig::from_toml_str("[model]\npreset = \"tiny\"\nmean_recurrence = 8\n")
            .unwrap();
        assert_eq!(cfg.n_embd, 128);
        assert_eq!(cfg.mean_recurrence, 8);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err =
            HuginnConfig::from_toml_str("[model]\npreset = \"tiny\"\nn_embed = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("n_embed"), "{err:#}");
    }

    #[test]
    fn missing_field_without_preset_names_the_key() {
        let err = HuginnConfig::from_toml_str("[model]\nn_embd = 64\n").unwrap_err();
        assert!(format!("{err:#}").contains("model.n_heads"), "{err:#}");
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let err =
            HuginnConfig::from_toml_str("[model]\npreset = \"tiny\"\nn_heads = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("not divisible"), "{err:#}");
    }

    #[test]
    fn toml_round_trip_is_exact() {
        let cfg = HuginnConfig::preset("mini-huginn").unwrap();
        assert_eq!(HuginnConfig::from_toml_str(&cfg.to_toml()).unwrap(), cfg);
    }
}
