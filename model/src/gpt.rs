//! A plain decoder-only transformer in the Llama layout: the non-recurrent baseline.
//!
//! Pre-norm RMSNorm, rotate-half RoPE (`rope_theta`, Llama-3's `rope_scaling`), SwiGLU, grouped-query
//! attention, tied or untied head; with `attention_bias` (Qwen2) and `norm = "post"` + `qk_norm`
//! (OLMo-2) the same code reads those checkpoints. Parameter names are Hugging Face's
//! (`model.layers.{i}.self_attn.q_proj.weight`, …), so the Llama export and import are the identity.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::block::{linear, rms_norm, Attend, Kv};
use crate::flops::TrainFlops;
use crate::huginn::{Input, Precision};
use crate::llama::{taker, Layer};
pub use crate::llama::{LayerNames, LayerShape, NormPlacement, RopeScaling, RotaryHalf};
use crate::loss::{LmLoss, LossValues};
use crate::params::{FlatParams, Init, ParamSpec, Part};
use crate::shim;

/// A resolved GPT shape (`[model] family = "gpt"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub name: String,
    /// Width d (`hidden_size`).
    pub n_embd: i64,
    pub n_layers: i64,
    /// Query heads; head dim = n_embd / n_heads.
    pub n_heads: i64,
    /// Key/value heads (`num_key_value_heads`): n_heads / n_kv_heads queries share each.
    pub n_kv_heads: i64,
    /// SwiGLU hidden size.
    pub intermediate_size: i64,
    pub vocab_size: i64,
    /// Longest sequence (`max_position_embeddings`).
    pub block_size: i64,
    pub norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// The head is the embedding (`tie_word_embeddings`).
    pub tie_embeddings: bool,
    /// Biases on q, k and v (Qwen2).
    pub attention_bias: bool,
    pub norm: NormPlacement,
    /// RMSNorm over the whole q and k projections before RoPE (OLMo-2).
    pub qk_norm: bool,
    /// σ of the normal init (`initializer_range`); the output projections take σ / sqrt(2·layers).
    pub init_std: f64,
}

impl GptConfig {
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_heads
    }

    pub fn layer_shape(&self) -> LayerShape {
        LayerShape {
            n_embd: self.n_embd,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            intermediate_size: self.intermediate_size,
            norm_eps: self.norm_eps,
            attention_bias: self.attention_bias,
            qk_norm: self.qk_norm,
            norm: self.norm,
        }
    }

    /// The names of layer i's parameters (Hugging Face's).
    pub fn layer_names(&self, i: i64) -> LayerNames {
        LayerNames::new(&format!("model.layers.{i}"), self.norm)
    }

    pub fn rope(&self, device: Device) -> RotaryHalf {
        RotaryHalf::new(
            self.head_dim(),
            self.block_size,
            self.rope_theta,
            self.rope_scaling.as_ref(),
            device,
        )
    }

    pub const PRESETS: [&'static str; 2] = ["gpt-micro", "gpt-tiny"];

    pub fn preset(name: &str) -> Option<Self> {
        let small = |name: &str, d, layers, heads, kv, i, v| GptConfig {
            name: name.to_string(),
            n_embd: d,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            intermediate_size: i,
            vocab_size: v,
            block_size: 64,
            norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_embeddings: true,
            attention_bias: false,
            norm: NormPlacement::Pre,
            qk_norm: false,
            init_std: 0.02,
        };
        Some(match name {
            "gpt-micro" => small(name, 64, 2, 4, 2, 256, 256),
            "gpt-tiny" => small(name, 128, 4, 4, 2, 512, 512),
            _ => return None,
        })
    }

    /// The `[model]` table (without `family`): `preset` (if given) overridden key by key. Unknown
    /// keys are refused by name, missing ones named.
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let cfg: GptConfig = crate::any::over_preset(table, "gpt", Self::preset, &Self::PRESETS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The TOML form written into checkpoints: `[model]` with the family and every field.
    pub fn to_toml(&self) -> String {
        crate::any::family_toml(self, "gpt")
    }

    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("n_embd", self.n_embd),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
        ] {
            ensure!(v > 0, "model.{key} = {v}: must be positive");
        }
        ensure!(
            self.n_embd % self.n_heads == 0,
            "model.n_embd = {} is not divisible by model.n_heads = {}",
            self.n_embd,
            self.n_heads
        );
        ensure!(
            self.n_heads % self.n_kv_heads == 0,
            "model.n_heads = {} is not a multiple of model.n_kv_heads = {}",
            self.n_heads,
            self.n_kv_heads
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
            self.rope_theta > 1.0 && self.rope_theta.is_finite(),
            "model.rope_theta = {}: must be > 1",
            self.rope_theta
        );
        ensure!(
            self.init_std > 0.0 && self.init_std.is_finite(),
            "model.init_std = {}: must be positive",
            self.init_std
        );
        if let Some(s) = &self.rope_scaling {
            ensure!(
                s.factor >= 1.0
                    && s.low_freq_factor > 0.0
                    && s.high_freq_factor > s.low_freq_factor
                    && s.original_max_position_embeddings > 0,
                "model.rope_scaling: need factor >= 1, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0"
            );
        }
        Ok(())
    }

    /// Matmul parameters of one layer.
    fn layer_matmul_params(&self) -> f64 {
        let (d, hd, i) = (
            self.n_embd as f64,
            self.head_dim() as f64,
            self.intermediate_size as f64,
        );
        let (h, kv) = (self.n_heads as f64, self.n_kv_heads as f64);
        2.0 * d * h * hd + 2.0 * d * kv * hd + 3.0 * d * i
    }

    /// Training FLOPs per token: 6·N (matmuls and the head) + 12·T·d per layer of attention,
    /// counted full T×T like Huginn's ([`crate::flops`]).
    pub fn train_flops_per_token(&self, seq_len: i64) -> TrainFlops {
        let (l, d, t) = (self.n_layers as f64, self.n_embd as f64, seq_len as f64);
        let n = l * self.layer_matmul_params() + self.vocab_size as f64 * d;
        let model = 6.0 * n + 12.0 * t * d * l;
        TrainFlops {
            model,
            hardware: model,
        }
    }

    pub fn inference_flops_per_token(&self, seq_len: i64) -> f64 {
        self.train_flops_per_token(seq_len).model / 3.0
    }
}

pub const EMBED: &str = "model.embed_tokens.weight";
pub const NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Every parameter, in a fixed order: embedding, layers, final norm, untied head.
pub fn param_specs(cfg: &GptConfig) -> Vec<ParamSpec> {
    let (d, v) = (cfg.n_embd, cfg.vocab_size);
    let std = Init::TruncNormal { std: cfg.init_std };
    let out = Init::TruncNormal {
        std: cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt(),
    };
    let spec = |name: &str, shape: Vec<i64>, part, init| ParamSpec {
        name: name.into(),
        shape,
        part,
        init,
    };
    let mut specs = vec![spec(EMBED, vec![v, d], Part::Embedding, std)];
    for l in 0..cfg.n_layers {
        specs.extend(
            cfg.layer_names(l)
                .specs(&cfg.layer_shape(), Part::Layers, std, out),
        );
    }
    specs.push(spec(NORM, vec![d], Part::FinalNorm, Init::Ones));
    if !cfg.tie_embeddings {
        specs.push(spec(LM_HEAD, vec![v, d], Part::Head, std));
    }
    specs
}

/// The weights of one forward pass.
struct Weights {
    embed: Tensor,
    /// The head in the compute dtype (the embedding's cast when tied).
    head: Tensor,
    /// The fp32 leaf whose `.grad` the head's gradient goes into.
    head_leaf: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
}

/// Logits and what the head reads.
pub struct GptForward {
    /// [B, T, V], fp32.
    pub logits: Tensor,
    /// The final norm's output, [B, T, d].
    pub hidden: Tensor,
}

pub struct Gpt {
    cfg: GptConfig,
    params: FlatParams,
    rope: RotaryHalf,
    precision: Precision,
}

impl Gpt {
    /// Allocates a model with zero weights; call [`Gpt::init`] or load a checkpoint.
    pub fn new(cfg: GptConfig, device: Device, precision: Precision) -> Result<Self> {
        cfg.validate()?;
        Ok(Gpt {
            params: FlatParams::zeros(param_specs(&cfg), device),
            rope: cfg.rope(device),
            cfg,
            precision,
        })
    }

    pub fn init(&self, seed: u64) {
        self.params.init(seed);
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    pub fn device(&self) -> Device {
        self.params.device()
    }

    fn weights(&self) -> Result<Weights> {
        let compute = match self.precision {
            Precision::F32 => Kind::Float,
            Precision::Bf16Mixed => Kind::BFloat16,
        };
        let mut by_name: std::collections::HashMap<String, Tensor> = self
            .params
            .views()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let mut take = taker(&mut by_name, "GPT");
        let embed = take(EMBED)?;
        let shape = self.cfg.layer_shape();
        let layers = (0..self.cfg.n_layers)
            .map(|l| Layer::take(&self.cfg.layer_names(l), &shape, compute, &mut take))
            .collect::<Result<Vec<_>>>()?;
        let head_leaf = match self.cfg.tie_embeddings {
            true => embed.shallow_clone(),
            false => take(LM_HEAD)?,
        };
        Ok(Weights {
            head: head_leaf.to_kind(compute),
            head_leaf,
            embed,
            layers,
            norm: take(NORM)?,
        })
    }

    /// The hidden state after the final norm, [B, T, d], and each layer's new keys and values.
    fn hidden(
        &self,
        w: &Weights,
        input: Input,
        attend: &Attend,
        mut cache: Option<&mut Vec<Kv>>,
    ) -> Result<Tensor> {
        let mut x = input.embed(&w.embed)?;
        let shape = self.cfg.layer_shape();
        for (l, layer) in w.layers.iter().enumerate() {
            let past = cache.as_deref().and_then(|c| c.get(l));
            let (y, new) = layer.forward_kv(&x, &shape, &self.rope, attend, past)?;
            if let Some(cache) = cache.as_deref_mut() {
                match cache.get_mut(l) {
                    Some(slot) => *slot = slot.cat(&new),
                    None => cache.push(new),
                }
            }
            x = y;
        }
        Ok(rms_norm(&x, &w.norm, self.cfg.norm_eps))
    }

    /// Logits [B, T, V] (fp32) of ids [B, T] under causal attention.
    pub fn forward(&self, ids: &Tensor) -> Result<GptForward> {
        self.forward_with(Input::Ids(ids), &Attend::causal())
    }

    /// [`Gpt::forward`] from ids or embeddings [B, T, d], with explicit positions and masks.
    pub fn forward_with(&self, input: Input, attend: &Attend) -> Result<GptForward> {
        let w = self.weights()?;
        let hidden = self.hidden(&w, input, attend, None)?;
        Ok(GptForward {
            logits: linear(&hidden, &w.head).to_kind(Kind::Float),
            hidden,
        })
    }

    /// Forward, L = scale · Σ cross-entropy over the targets that count, and backward of L into
    /// the flat gradient. Returns the detached L.
    pub fn loss_backward_scaled(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        let attend = Attend::causal();
        Ok(self
            .backward_lm(ids, &LmLoss::next_token(targets, scale, &attend))?
            .total)
    }

    /// Forward of ids [B, T] attending as `loss.attend` says, L = Σ w · cross-entropy, and
    /// backward of L into the flat gradient (the head's part fused with the loss, as Huginn's).
    /// Returns the detached L and each position's cross-entropy [B, T], unweighted.
    pub fn backward_lm(&self, ids: &Tensor, loss: &LmLoss) -> Result<LossValues> {
        let w = self.weights()?;
        let h = self.hidden(&w, Input::Ids(ids), loss.attend, None)?;
        let (values, grad_h) = loss.fused(&h, &w.head, &w.head_leaf.grad())?;
        shim::backward(&h, &grad_h)?;
        Ok(values)
    }

    /// (Σ cross-entropy, targets counted) of one batch, without a graph.
    pub fn val_loss_sums(&self, ids: &Tensor, targets: &Tensor) -> Result<(f64, f64)> {
        let (sum, count) = tch::no_grad(|| -> Result<_> {
            crate::loss::cross_entropy_sum(&self.forward(ids)?.logits, targets)
        })?;
        Ok((sum.double_value(&[]), count.int64_value(&[]) as f64))
    }

    /// Greedy or sampled decoding of up to `max_tokens` after `prompt`, behind a KV cache (one
    /// [`Kv`] per layer). Stops at `stop_token` or when the sequence fills `block_size`.
    pub fn generate(
        &self,
        prompt: &[i64],
        max_tokens: usize,
        sampling: &crate::decode::Sampling,
        stop_token: Option<i64>,
    ) -> Result<Vec<i64>> {
        ensure!(!prompt.is_empty(), "the prompt has no tokens");
        if prompt.len() as i64 > self.cfg.block_size {
            bail!(
                "the prompt has {} tokens, more than block_size {}",
                prompt.len(),
                self.cfg.block_size
            );
        }
        tch::no_grad(|| {
            let w = self.weights()?;
            let mut cache = Vec::new();
            let (mut past, mut chunk, mut out) = (0i64, prompt.to_vec(), Vec::new());
            loop {
                let ids = Tensor::from_slice(&chunk)
                    .view([1, -1])
                    .to_device(self.device());
                let h = self.hidden(
                    &w,
                    Input::Ids(&ids),
                    &Attend::causal_from(past),
                    Some(&mut cache),
                )?;
                past += chunk.len() as i64;
                let last = linear(&h.get(0).get(-1), &w.head).to_kind(Kind::Float);
                let next = sampling.sample(&last)?;
                out.push(next);
                if out.len() >= max_tokens
                    || Some(next) == stop_token
                    || past >= self.cfg.block_size
                {
                    return Ok(out);
                }
                chunk = vec![next];
            }
        })
    }
}

/// A GPT behind its KV cache, as TiDAR's decoder drives it.
pub struct GptLm<'m> {
    model: &'m Gpt,
    w: Weights,
    /// One per layer.
    cache: Vec<Kv>,
}

impl Gpt {
    pub fn cached(&self) -> Result<GptLm<'_>> {
        Ok(GptLm {
            model: self,
            w: self.weights()?,
            cache: Vec::new(),
        })
    }
}

impl crate::tidar::CachedLm for GptLm<'_> {
    fn block_size(&self) -> i64 {
        self.model.cfg.block_size
    }

    fn len(&self) -> i64 {
        self.cache.first().map_or(0, Kv::len)
    }

    fn extend(&mut self, ids: &[i64], positions: &[i64], mask: &[Vec<bool>]) -> Result<Tensor> {
        let device = self.model.device();
        let x = Tensor::from_slice(ids).view([1, -1]).to_device(device);
        let attend = crate::tidar::step_attend(positions, mask, device);
        tch::no_grad(|| {
            let h = self
                .model
                .hidden(&self.w, Input::Ids(&x), &attend, Some(&mut self.cache))?;
            Ok(linear(&h.get(0), &self.w.head).to_kind(Kind::Float))
        })
    }

    fn truncate(&mut self, len: i64) {
        for kv in &mut self.cache {
            *kv = kv.prefix(len);
        }
    }
}

/// A GPT as COCONUT's multi-pass forward drives it: its weights taken once, one [`Kv`] per layer
/// that keeps autograd history.
pub struct GptLatent<'m> {
    model: &'m Gpt,
    w: Weights,
}

impl Gpt {
    pub fn latent(&self) -> Result<GptLatent<'_>> {
        Ok(GptLatent {
            model: self,
            w: self.weights()?,
        })
    }
}

impl GptLatent<'_> {
    /// Logits [B, T, V] (fp32) of hidden states [B, T, d].
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.w.head).to_kind(Kind::Float)
    }

    /// L = Σ w · cross-entropy of the head over `hidden` (from [`crate::coconut::forward`]), and
    /// backward of L through every pass into the flat gradient.
    pub fn backward(&self, hidden: &Tensor, loss: &LmLoss) -> Result<LossValues> {
        let (values, grad_h) = loss.fused(hidden, &self.w.head, &self.w.head_leaf.grad())?;
        shim::backward(hidden, &grad_h)?;
        Ok(values)
    }
}

impl crate::coconut::LatentLm for GptLatent<'_> {
    type Cache = Vec<Kv>;

    fn new_cache(&self) -> Vec<Kv> {
        Vec::new()
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Input::Ids(ids).embed(&self.w.embed)
    }

    fn pass(&self, cache: &mut Vec<Kv>, x: &Tensor, attend: &Attend) -> Result<Tensor> {
        self.model
            .hidden(&self.w, Input::Embeds(x), attend, Some(cache))
    }
}
