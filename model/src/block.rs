//! The sandwich block and its parts: RMSNorm in fp32, fused-Wqkv attention with `qk_bias` and
//! interleaved-pair RoPE, SwiGLU with a fused `fc` (reference §1.3–1.5).

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::shim;

/// `x @ wᵀ` in the weight's dtype: fp32 weights give fp32 matmuls, bf16 weights bf16 matmuls.
pub fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    x.to_kind(w.kind()).linear::<Tensor>(w, None)
}

/// RMSNorm_llama: normalise in fp32, cast back to x's dtype, multiply by the fp32 weight. The product
/// promotes to fp32, which is why the residual stream and the recurrent state stay fp32 (§1.10).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    if shim::fused_kernels_take(x) && shim::fused_kernels_take(weight) && x.is_contiguous() {
        return shim::rms_norm(x, weight, eps).expect("fused RMSNorm on checked inputs");
    }
    let xf = x.to_kind(Kind::Float);
    let inv_rms = (xf.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt();
    (xf * inv_rms).to_kind(x.kind()) * weight
}

/// Rotary embedding cache: cos and sin of `pos · θ^(−2i/hd)`, [block_size, hd/2], fp32.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(head_dim: i64, block_size: i64, theta: f64, device: Device) -> Self {
        let exponents =
            Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, Device::Cpu)) / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponents).reciprocal();
        let t = Tensor::arange(block_size, (Kind::Float, Device::Cpu));
        let freqs = t.outer(&inv_freq); // [T, hd/2]
        Rope {
            cos: freqs.cos().to_device(device),
            sin: freqs.sin().to_device(device),
        }
    }

    /// The reference's persistent `freqs_cis` buffer: [1, block_size, 1, hd/2, 2] as (cos, sin).
    pub fn freqs_cis(&self) -> Tensor {
        Tensor::stack(&[&self.cos, &self.sin], -1)
            .unsqueeze(0)
            .unsqueeze(2)
    }

    /// x [B, T, H, hd] at positions 0..T → rotated, computed in fp32 and returned in x's dtype.
    /// Pairs are adjacent elements (x[2i], x[2i+1]): (a, b) → (a·cos − b·sin, b·cos + a·sin).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_at(x, &Positions::From(0))
    }

    /// As [`Rope::apply`] for tokens at `positions`.
    pub fn apply_at(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        let (b, t, h, hd) = x.size4()?;
        // cos, sin: [T, hd/2] shared by every row, or [B, T, hd/2].
        let (cos, sin) = (
            positions.rows(&self.cos, b, t)?,
            positions.rows(&self.sin, b, t)?,
        );
        if shim::fused_kernels_take(x) && x.stride()[3] == 1 {
            return shim::rope(x, &cos, &sin);
        }
        let rows = if cos.dim() == 3 { b } else { 1 };
        let cos = cos.view([rows, t, 1, hd / 2]);
        let sin = sin.view([rows, t, 1, hd / 2]);
        let pairs = x.to_kind(Kind::Float).view([b, t, h, hd / 2, 2]);
        let (a, bb) = (pairs.select(-1, 0), pairs.select(-1, 1));
        let rotated = Tensor::stack(&[&a * &cos - &bb * &sin, &bb * &cos + &a * &sin], -1);
        Ok(rotated.flatten(3, 4).to_kind(x.kind()))
    }
}

/// Positions of the new tokens, for RoPE.
#[derive(Debug)]
pub enum Positions {
    /// start, start + 1, …: a fresh sequence (0), or the tokens after a KV cache of `start`.
    From(i64),
    /// Explicit ids, [T] (the same for every row) or [B, T]; repeats allowed.
    Ids(Tensor),
}

impl Positions {
    /// The rows of a per-position table [max, w] (a RoPE cache) for T tokens of B sequences:
    /// [T, w] shared by every row, or [B, T, w] for per-row ids.
    pub fn rows(&self, table: &Tensor, b: i64, t: i64) -> Result<Tensor> {
        let max = table.size()[0];
        match self {
            Positions::From(start) => {
                anyhow::ensure!(
                    *start >= 0 && start + t <= max,
                    "positions {start}..{} are beyond the rotary cache of {max} (model.block_size)",
                    start + t
                );
                Ok(table.narrow(0, *start, t))
            }
            Positions::Ids(ids) => {
                let shape = ids.size();
                anyhow::ensure!(
                    shape == [t] || shape == [b, t],
                    "position ids have shape {shape:?}, expected [{t}] or [{b}, {t}]"
                );
                let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
                anyhow::ensure!(
                    lo >= 0 && hi < max,
                    "position ids {lo}..={hi} are beyond the rotary cache of {max} (model.block_size)"
                );
                let mut rows = shape.clone();
                rows.push(table.size()[1]);
                let flat = ids.flatten(0, -1).to_device(table.device());
                Ok(table.index_select(0, &flat).view(rows.as_slice()))
            }
        }
    }
}

/// Which of the L = past + T keys each new token may attend to.
#[derive(Debug)]
pub enum Mask {
    /// The whole past and the new tokens up to itself.
    Causal,
    /// Every key (bidirectional).
    Full,
    /// Boolean [T, L] or [B, T, L]; true = may attend.
    Dense(Tensor),
}

/// How the tokens of one forward pass attend: where they sit, what they see, which keys are real.
#[derive(Debug)]
pub struct Attend {
    pub positions: Positions,
    pub mask: Mask,
    /// [B, L] boolean, true = a real token; padding keys are never attended to.
    pub key_padding: Option<Tensor>,
}

impl Attend {
    /// Causal attention over a fresh sequence at positions 0..T: training and evaluation.
    pub fn causal() -> Self {
        Attend::causal_from(0)
    }

    /// Causal attention for tokens after `past` cached ones (decoding).
    pub fn causal_from(past: i64) -> Self {
        Attend {
            positions: Positions::From(past),
            mask: Mask::Causal,
            key_padding: None,
        }
    }

    /// SDPA's (boolean mask [B or 1, 1, T, L], is_causal) for T queries after `p` cached keys. The
    /// causal case without a past and without padding stays on SDPA's fused causal path.
    fn sdpa_mask(&self, b: i64, t: i64, p: i64, device: Device) -> Result<(Option<Tensor>, bool)> {
        let l = p + t;
        let plain = self.key_padding.is_none();
        let dense = match &self.mask {
            Mask::Causal if plain && p == 0 => return Ok((None, true)),
            // One new token sees everything before it.
            Mask::Causal if plain && t == 1 => return Ok((None, false)),
            Mask::Full if plain => return Ok((None, false)),
            // SDPA's `is_causal` aligns the triangle top-left, which is only right without a past.
            Mask::Causal => Tensor::ones([t, l], (Kind::Bool, device)).tril(p),
            Mask::Full => Tensor::ones([t, l], (Kind::Bool, device)),
            Mask::Dense(m) => {
                let shape = m.size();
                anyhow::ensure!(
                    m.kind() == Kind::Bool && (shape == [t, l] || shape == [b, t, l]),
                    "attention mask is {:?} of {shape:?}, expected Bool [{t}, {l}] or [{b}, {t}, {l}]",
                    m.kind()
                );
                m.to_device(device)
            }
        };
        let mut mask = match dense.dim() {
            2 => dense.view([1, 1, t, l]),
            _ => dense.view([b, 1, t, l]),
        };
        if let Some(keys) = &self.key_padding {
            anyhow::ensure!(
                keys.size() == [b, l] && keys.kind() == Kind::Bool,
                "key padding mask is {:?} of {:?}, expected Bool [{b}, {l}]",
                keys.kind(),
                keys.size()
            );
            mask = mask.logical_and(&keys.to_device(device).view([b, 1, 1, l]));
        }
        // A query that may see nothing (padding before any real token) would make SDPA's softmax
        // NaN; it sees everything instead, and its output is ignored by the loss like all padding.
        let blind = mask.any_dim(-1, true).logical_not();
        Ok((Some(mask.logical_or(&blind)), false))
    }
}

/// Scaled dot-product attention of q [B, H, T, hd] over k, v [B, H, L, hd] (the L − T cached keys
/// first, then the new tokens'), masked as `attend` says: libtorch's fused kernels.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, attend: &Attend) -> Result<Tensor> {
    let (b, _, t, _) = q.size4()?;
    let l = k.size()[2];
    let (mask, causal) = attend.sdpa_mask(b, t, l - t, q.device())?;
    Ok(Tensor::scaled_dot_product_attention(
        q,
        k,
        v,
        mask.as_ref(),
        0.0,
        causal,
        None,
        false,
    ))
}

/// One sandwich block's weights for a forward pass (matmul weights already in the compute dtype).
pub struct BlockWeights {
    /// norm_1 .. norm_4, fp32.
    pub norms: [Tensor; 4],
    /// [3d, d]: rows q | k | v.
    pub wqkv: Tensor,
    /// [2, 1, H, hd], fp32: added to q and k before RoPE.
    pub qk_bias: Option<Tensor>,
    pub attn_proj: Tensor,
    /// [2I, d]: rows gate | up.
    pub fc: Tensor,
    pub mlp_proj: Tensor,
}

/// Keys and values of one attention layer for the tokens seen so far, [B, H, T, hd] each, in the
/// compute dtype, RoPE already applied to the keys.
pub struct Kv {
    pub k: Tensor,
    pub v: Tensor,
}

impl Kv {
    pub fn shallow_clone(&self) -> Kv {
        Kv {
            k: self.k.shallow_clone(),
            v: self.v.shallow_clone(),
        }
    }

    pub fn len(&self) -> i64 {
        self.k.size()[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `len` tokens.
    pub fn prefix(&self, len: i64) -> Kv {
        Kv {
            k: self.k.narrow(2, 0, len),
            v: self.v.narrow(2, 0, len),
        }
    }

    /// `self` followed by `more` along the sequence.
    pub fn cat(&self, more: &Kv) -> Kv {
        Kv {
            k: Tensor::cat(&[&self.k, &more.k], 2),
            v: Tensor::cat(&[&self.v, &more.v], 2),
        }
    }
}

impl BlockWeights {
    /// x [B, T, d] → [B, T, d].
    ///   x ← norm_2(x + Attn(norm_1(x)));  x ← norm_4(x + MLP(norm_3(x)))
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        n_heads: i64,
        eps: f64,
        attend: &Attend,
    ) -> Result<Tensor> {
        Ok(self.forward_kv(x, rope, n_heads, eps, attend, None)?.0)
    }

    /// As [`BlockWeights::forward`] for T new tokens that follow the `past` ones (decoding): they
    /// attend to `past` and causally to each other. Also returns the new tokens' keys and values;
    /// the caller decides whether they join the cache.
    pub fn forward_kv(
        &self,
        x: &Tensor,
        rope: &Rope,
        n_heads: i64,
        eps: f64,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        let [n1, n2, n3, n4] = &self.norms;
        let (a, kv) = self.attention(&rms_norm(x, n1, eps), rope, n_heads, attend, past)?;
        let x = rms_norm(&(a + x), n2, eps);
        Ok((
            rms_norm(&(self.mlp(&rms_norm(&x, n3, eps)) + &x), n4, eps),
            kv,
        ))
    }

    fn attention(
        &self,
        x: &Tensor,
        rope: &Rope,
        n_heads: i64,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        let (b, t, d) = x.size3()?;
        let hd = d / n_heads;
        let p = past.map_or(0, Kv::len);
        let qkv = linear(x, &self.wqkv); // [B, T, 3d]
        let compute = qkv.kind();
        let split = |i: i64| qkv.narrow(2, i * d, d).view([b, t, n_heads, hd]); // [B, T, H, hd]
        let (mut q, mut k, v) = (split(0), split(1), split(2));
        if let Some(bias) = &self.qk_bias {
            q = (q + bias.get(0)).to_kind(compute);
            k = (k + bias.get(1)).to_kind(compute);
        }
        let q = rope.apply_at(&q, &attend.positions)?.transpose(1, 2); // [B, H, T, hd]
        let new = Kv {
            k: rope.apply_at(&k, &attend.positions)?.transpose(1, 2),
            v: v.transpose(1, 2),
        };
        let all = match past {
            Some(past) if p > 0 => past.cat(&new),
            _ => new.shallow_clone(),
        };
        let y = attention(&q, &all.k, &all.v, attend)?; // [B, H, T, hd]
        Ok((
            linear(&y.transpose(1, 2).reshape([b, t, d]), &self.attn_proj),
            new,
        ))
    }

    fn mlp(&self, x: &Tensor) -> Tensor {
        let h = linear(x, &self.fc).chunk(2, -1); // [gate | up], each [B, T, I]
        linear(&(h[0].silu() * &h[1]), &self.mlp_proj)
    }
}
