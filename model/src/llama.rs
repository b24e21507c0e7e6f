//! The Llama decoder layer: pre-norm RMSNorm, grouped-query attention with rotate-half RoPE,
//! SwiGLU; with `attention_bias` Qwen2's, with `norm = "post"` + `qk_norm` OLMo-2's. The `gpt`
//! family stacks it; a Huginn model with `block = "pre-norm"` uses it for prelude, core and coda.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::block::{attention, linear, rms_norm, Attend, Kv, Positions};
use crate::params::{Init, ParamSpec, Part};

/// Where a layer's two RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormPlacement {
    /// x + Attn(norm(x)), x + MLP(norm(x)): Llama, Qwen2.
    Pre,
    /// x + norm(Attn(x)), x + norm(MLP(x)): OLMo-2.
    Post,
}

/// Llama-3's frequency-dependent RoPE scaling (`rope_scaling` with `rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: i64,
}

/// What a layer's forward needs of the model's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerShape {
    pub n_embd: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub intermediate_size: i64,
    pub norm_eps: f64,
    pub attention_bias: bool,
    pub qk_norm: bool,
    pub norm: NormPlacement,
}

impl LayerShape {
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_heads
    }
}

/// The names of one layer's parameters under `prefix` (`model.layers.{i}` in a GPT, Hugging
/// Face's own names).
pub struct LayerNames {
    pub attn_norm: String,
    pub mlp_norm: String,
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub q_norm: String,
    pub k_norm: String,
    pub gate: String,
    pub up: String,
    pub down: String,
}

impl LayerNames {
    pub fn new(prefix: &str, norm: NormPlacement) -> Self {
        let p = prefix;
        // OLMo-2 names its norms after what they follow; Llama after what they precede.
        let (attn_norm, mlp_norm) = match norm {
            NormPlacement::Pre => ("input_layernorm", "post_attention_layernorm"),
            NormPlacement::Post => ("post_attention_layernorm", "post_feedforward_layernorm"),
        };
        LayerNames {
            attn_norm: format!("{p}.{attn_norm}.weight"),
            mlp_norm: format!("{p}.{mlp_norm}.weight"),
            q: format!("{p}.self_attn.q_proj"),
            k: format!("{p}.self_attn.k_proj"),
            v: format!("{p}.self_attn.v_proj"),
            o: format!("{p}.self_attn.o_proj.weight"),
            q_norm: format!("{p}.self_attn.q_norm.weight"),
            k_norm: format!("{p}.self_attn.k_norm.weight"),
            gate: format!("{p}.mlp.gate_proj.weight"),
            up: format!("{p}.mlp.up_proj.weight"),
            down: format!("{p}.mlp.down_proj.weight"),
        }
    }

    /// The layer's parameters in a fixed order, in `part`, matrices drawn as `std` and the two
    /// output projections as `out`.
    pub fn specs(&self, shape: &LayerShape, part: Part, std: Init, out: Init) -> Vec<ParamSpec> {
        let (d, hd, i) = (shape.n_embd, shape.head_dim(), shape.intermediate_size);
        let (q_dim, kv_dim) = (shape.n_heads * hd, shape.n_kv_heads * hd);
        let spec = |name: String, shape: Vec<i64>, init| ParamSpec {
            name,
            shape,
            part,
            init,
        };
        let mut specs = vec![spec(self.attn_norm.clone(), vec![d], Init::Ones)];
        for (name, rows) in [(&self.q, q_dim), (&self.k, kv_dim), (&self.v, kv_dim)] {
            specs.push(spec(format!("{name}.weight"), vec![rows, d], std));
            if shape.attention_bias {
                specs.push(spec(format!("{name}.bias"), vec![rows], Init::Zeros));
            }
        }
        if shape.qk_norm {
            specs.push(spec(self.q_norm.clone(), vec![q_dim], Init::Ones));
            specs.push(spec(self.k_norm.clone(), vec![kv_dim], Init::Ones));
        }
        specs.push(spec(self.o.clone(), vec![d, q_dim], out));
        specs.push(spec(self.mlp_norm.clone(), vec![d], Init::Ones));
        specs.push(spec(self.gate.clone(), vec![i, d], std));
        specs.push(spec(self.up.clone(), vec![i, d], std));
        specs.push(spec(self.down.clone(), vec![d, i], out));
        specs
    }
}

/// Rotate-half RoPE (Hugging Face's `apply_rotary_pos_emb`): the pairs are (x[j], x[j + hd/2]).
/// cos and sin [block_size, hd], fp32, computed as `LlamaRotaryEmbedding` does.
pub struct RotaryHalf {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryHalf {
    pub fn new(
        head_dim: i64,
        block_size: i64,
        theta: f64,
        scaling: Option<&RopeScaling>,
        device: Device,
    ) -> Self {
        let hd = head_dim;
        let cpu = (Kind::Float, Device::Cpu);
        let exponents = Tensor::arange_start_step(0, hd, 2, cpu) / hd as f64;
        let mut inv_freq = Tensor::pow_scalar(theta, &exponents).reciprocal();
        if let Some(s) = scaling {
            // transformers' `_compute_llama3_parameters`: long wavelengths slow down by `factor`,
            // short ones stay, those between blend smoothly.
            let old = s.original_max_position_embeddings as f64;
            let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv_freq.where_self(&wavelen.le(low_wavelen), &(&inv_freq / s.factor));
            let smooth = ((wavelen.reciprocal() * old) - s.low_freq_factor)
                / (s.high_freq_factor - s.low_freq_factor);
            let smoothed: Tensor = (1.0 - &smooth) * &scaled / s.factor + &smooth * &scaled;
            let medium = wavelen
                .ge(high_wavelen)
                .logical_and(&wavelen.le(low_wavelen));
            inv_freq = smoothed.where_self(&medium, &scaled);
        }
        let t = Tensor::arange(block_size, cpu);
        let freqs = t.outer(&inv_freq); // [T, hd/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // [T, hd]
        RotaryHalf {
            cos: emb.cos().to_device(device),
            sin: emb.sin().to_device(device),
        }
    }

    /// The same frequencies as the Raven layout's `freqs_cis` buffer, [1, block_size, 1, hd/2, 2] as
    /// (cos, sin), for weights whose q and k rows are reordered into adjacent pairs.
    pub fn freqs_cis(&self) -> Tensor {
        let half = self.cos.size()[1] / 2;
        Tensor::stack(
            &[self.cos.narrow(1, 0, half), self.sin.narrow(1, 0, half)],
            -1,
        )
        .unsqueeze(0)
        .unsqueeze(2)
    }

    /// x [B, T, H, hd] at `positions` → rotated, in fp32, returned in x's dtype.
    pub fn apply(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        let (b, t, _, hd) = x.size4()?;
        let cos = positions.rows(&self.cos, b, t)?;
        let sin = positions.rows(&self.sin, b, t)?;
        let rows = if cos.dim() == 3 { b } else { 1 };
        let (cos, sin) = (cos.view([rows, t, 1, hd]), sin.view([rows, t, 1, hd]));
        let xf = x.to_kind(Kind::Float);
        let halves = xf.chunk(2, -1);
        let rotated = Tensor::cat(&[-&halves[1], halves[0].shallow_clone()], -1);
        Ok((xf * cos + rotated * sin).to_kind(x.kind()))
    }
}

/// One layer's weights for a forward pass (matmul weights in the compute dtype).
pub struct Layer {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    /// (weight, bias) of q, k and v.
    qkv: [(Tensor, Option<Tensor>); 3],
    qk_norm: Option<[Tensor; 2]>,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

impl Layer {
    /// The layer named `names`, each tensor from `take` (the model's fp32 views), matmul weights
    /// cast to `compute`.
    pub fn take(
        names: &LayerNames,
        shape: &LayerShape,
        compute: Kind,
        take: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<Self> {
        let mut proj = |name: &str| -> Result<(Tensor, Option<Tensor>)> {
            let w = take(&format!("{name}.weight"))?.to_kind(compute);
            let b = match shape.attention_bias {
                true => Some(take(&format!("{name}.bias"))?),
                false => None,
            };
            Ok((w, b))
        };
        let qkv = [proj(&names.q)?, proj(&names.k)?, proj(&names.v)?];
        let qk_norm = match shape.qk_norm {
            true => Some([take(&names.q_norm)?, take(&names.k_norm)?]),
            false => None,
        };
        Ok(Layer {
            attn_norm: take(&names.attn_norm)?,
            mlp_norm: take(&names.mlp_norm)?,
            qkv,
            qk_norm,
            o: take(&names.o)?.to_kind(compute),
            gate: take(&names.gate)?.to_kind(compute),
            up: take(&names.up)?.to_kind(compute),
            down: take(&names.down)?.to_kind(compute),
        })
    }

    /// x [B, T, d] → [B, T, d] and the new tokens' keys and values; the new tokens attend to
    /// `past` (decoding) and as `attend` says among themselves.
    pub fn forward_kv(
        &self,
        x: &Tensor,
        shape: &LayerShape,
        rope: &RotaryHalf,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        let eps = shape.norm_eps;
        Ok(match shape.norm {
            NormPlacement::Pre => {
                let (a, kv) = self.attention(
                    &rms_norm(x, &self.attn_norm, eps),
                    shape,
                    rope,
                    attend,
                    past,
                )?;
                let x = a + x;
                let m = self.mlp(&rms_norm(&x, &self.mlp_norm, eps));
                (m + x, kv)
            }
            NormPlacement::Post => {
                let (a, kv) = self.attention(x, shape, rope, attend, past)?;
                let x = rms_norm(&a, &self.attn_norm, eps) + x;
                let m = rms_norm(&self.mlp(&x), &self.mlp_norm, eps);
                (m + x, kv)
            }
        })
    }

    fn attention(
        &self,
        x: &Tensor,
        shape: &LayerShape,
        rope: &RotaryHalf,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        let (b, t, _) = x.size3()?;
        let (h, kv_h, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim());
        let [q, k, v] = self.qkv.each_ref().map(|(weight, bias)| {
            let y = linear(x, weight);
            match bias {
                Some(bias) => (y + bias).to_kind(weight.kind()),
                None => y,
            }
        });
        let (q, k) = match &self.qk_norm {
            Some([qn, kn]) => {
                let kind = q.kind();
                (
                    rms_norm(&q, qn, shape.norm_eps).to_kind(kind),
                    rms_norm(&k, kn, shape.norm_eps).to_kind(kind),
                )
            }
            None => (q, k),
        };
        let heads = |y: &Tensor, n: i64| y.view([b, t, n, hd]);
        let q = rope
            .apply(&heads(&q, h), &attend.positions)?
            .transpose(1, 2);
        let new = Kv {
            k: rope
                .apply(&heads(&k, kv_h), &attend.positions)?
                .transpose(1, 2),
            v: heads(&v, kv_h).transpose(1, 2),
        };
        let all = match past {
            Some(past) if !past.is_empty() => past.cat(&new),
            _ => new.shallow_clone(),
        };
        // Grouped-query attention: each key/value head serves h / kv_h consecutive query heads
        // (transformers' `repeat_kv`).
        let rep = h / kv_h;
        let (k_all, v_all) = match rep {
            1 => (all.k.shallow_clone(), all.v.shallow_clone()),
            _ => (
                all.k.repeat_interleave_self_int(rep, 1, None),
                all.v.repeat_interleave_self_int(rep, 1, None),
            ),
        };
        let y = attention(&q, &k_all, &v_all, attend)?; // [B, H, T, hd]
        let y = y.transpose(1, 2).reshape([b, t, h * hd]);
        Ok((linear(&y, &self.o), new))
    }

    fn mlp(&self, x: &Tensor) -> Tensor {
        linear(
            &(linear(x, &self.gate).silu() * linear(x, &self.up)),
            &self.down,
        )
    }
}

/// A `take` over a name → view map that names what is missing (a bug in a spec list, not input).
pub fn taker<'a>(
    views: &'a mut std::collections::HashMap<String, Tensor>,
    what: &'static str,
) -> impl FnMut(&str) -> Result<Tensor> + 'a {
    move |name: &str| {
        views
            .remove(name)
            .with_context(|| format!("no parameter `{name}` (a bug in the {what} spec)"))
    }
}
