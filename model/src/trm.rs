//! TRM, the Tiny Recursive Model (Jolicoeur-Martineau 2025; `../shared/docs/trm-reference.md`):
//! one small network f recursing on an answer state y and a latent z. This module is the network
//! and one supervision step; deep supervision, halting and the recipe build on it.
//!
//! Parameter names are the reference's state-dict keys (§7), so import and export map one to one.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::block::linear;
use crate::params::{FlatParams, Init, ParamSpec, Part};

/// Positions for the attention variant; the MLP-t variant mixes tokens without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosEncoding {
    /// Rotate-half RoPE over positions 0..P+L (the prefix first).
    Rope,
    None,
}

/// A resolved TRM shape (`[model] family = "trm"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrmConfig {
    pub name: String,
    /// Width D (`hidden_size`).
    pub hidden_size: i64,
    /// Blocks of f (`L_layers`).
    pub layers: i64,
    pub num_heads: i64,
    pub expansion: f64,
    /// Token ids (`vocab_size`), PAD = 0 included.
    pub vocab_size: i64,
    /// Cells of a puzzle (`seq_len`), L.
    pub seq_len: i64,
    /// Prefix positions P (`puzzle_emb_len`); position 0 holds the learned puzzle embedding.
    pub puzzle_emb_len: i64,
    /// Rows of the puzzle-embedding table (`num_puzzle_identifiers`).
    pub num_puzzle_identifiers: i64,
    /// T (`H_cycles`): T−1 cycles without a graph, then one with.
    pub h_cycles: i64,
    /// n (`L_cycles`): latent updates per cycle.
    pub l_cycles: i64,
    /// N_sup (`halt_max_steps`).
    pub halt_max_steps: i64,
    pub halt_exploration_prob: f64,
    /// Token-mixing SwiGLU over the sequence instead of attention (`mlp_t`).
    pub mlp_t: bool,
    pub pos_encodings: PosEncoding,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl TrmConfig {
    pub const PRESETS: [&'static str; 4] = [
        "trm-sudoku4",
        "trm-sudoku6",
        "trm-sudoku-mlp",
        "trm-sudoku-att",
    ];

    pub fn preset(name: &str) -> Option<Self> {
        let tiny = |name: &str, vocab, seq| TrmConfig {
            name: name.to_string(),
            hidden_size: 64,
            layers: 2,
            num_heads: 2,
            expansion: 4.0,
            vocab_size: vocab,
            seq_len: seq,
            puzzle_emb_len: 4,
            num_puzzle_identifiers: 1,
            h_cycles: 2,
            l_cycles: 2,
            halt_max_steps: 6,
            halt_exploration_prob: 0.1,
            mlp_t: true,
            pos_encodings: PosEncoding::None,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        };
        // The paper's Sudoku-Extreme shapes (§1, §3).
        let paper = |name: &str, mlp_t: bool| TrmConfig {
            hidden_size: 512,
            num_heads: 8,
            puzzle_emb_len: 16,
            h_cycles: 3,
            l_cycles: 6,
            halt_max_steps: 16,
            mlp_t,
            pos_encodings: if mlp_t {
                PosEncoding::None
            } else {
                PosEncoding::Rope
            },
            ..tiny(name, 11, 81)
        };
        Some(match name {
            "trm-sudoku4" => tiny(name, 6, 16),
            "trm-sudoku6" => tiny(name, 8, 36),
            "trm-sudoku-mlp" => paper(name, true),
            "trm-sudoku-att" => paper(name, false),
            _ => return None,
        })
    }

    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("layers", self.layers),
            ("num_heads", self.num_heads),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("puzzle_emb_len", self.puzzle_emb_len),
            ("num_puzzle_identifiers", self.num_puzzle_identifiers),
            ("h_cycles", self.h_cycles),
            ("l_cycles", self.l_cycles),
            ("halt_max_steps", self.halt_max_steps),
        ] {
            ensure!(v > 0, "model.{key} = {v}: must be positive");
        }
        ensure!(
            self.hidden_size % self.num_heads == 0 && self.head_dim() % 2 == 0,
            "model.hidden_size = {} must split into model.num_heads = {} heads of even width",
            self.hidden_size,
            self.num_heads
        );
        ensure!(
            (0.0..=1.0).contains(&self.halt_exploration_prob),
            "model.halt_exploration_prob = {} must be in [0, 1]",
            self.halt_exploration_prob
        );
        ensure!(
            self.expansion > 0.0 && self.norm_eps > 0.0 && self.rope_theta > 1.0,
            "model.expansion and model.norm_eps must be positive, model.rope_theta > 1"
        );
        ensure!(
            !(self.mlp_t && self.pos_encodings == PosEncoding::Rope),
            "model.mlp_t mixes tokens without attention: set model.pos_encodings = \"none\""
        );
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    /// A `[model]` table of family trm: optionally `preset = NAME`, then any field over it.
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let cfg: TrmConfig = crate::any::over_preset(table, "trm", Self::preset, &Self::PRESETS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `[model]` with the family and every field, as checkpoints store it.
    pub fn to_toml(&self) -> String {
        crate::any::family_toml(self, "trm")
    }

    /// S = P + L: the positions every state holds.
    pub fn positions(&self) -> i64 {
        self.puzzle_emb_len + self.seq_len
    }
}

/// The SwiGLU inner width of the reference: 256·ceil(round(expansion·n·2/3) / 256).
pub fn swiglu_width(expansion: f64, n: i64) -> i64 {
    let inner = (expansion * n as f64 * 2.0 / 3.0).round() as i64;
    256 * ((inner + 255) / 256)
}

/// Layer i's parameter names (reference keys).
fn layer_key(i: i64, what: &str) -> String {
    format!("inner.L_level.layers.{i}.{what}.weight")
}

pub const H_INIT: &str = "inner.H_init";
pub const L_INIT: &str = "inner.L_init";
pub const PUZZLE_EMB: &str = "inner.puzzle_emb.weights";
pub const EMBED: &str = "inner.embed_tokens.embedding_weight";
pub const LM_HEAD: &str = "inner.lm_head.weight";
pub const Q_WEIGHT: &str = "inner.q_head.weight";
pub const Q_BIAS: &str = "inner.q_head.bias";

/// The trained parameters (the reference's nn.Parameters; the puzzle table and the init states are
/// buffers kept beside them).
pub fn param_specs(cfg: &TrmConfig) -> Vec<ParamSpec> {
    let (d, v, s) = (cfg.hidden_size, cfg.vocab_size, cfg.positions());
    let lin = |fan_in: i64| Init::JaxTruncNormal {
        std: 1.0 / (fan_in as f64).sqrt(),
    };
    let spec = |name: String, shape: Vec<i64>, part, init| ParamSpec {
        name,
        shape,
        part,
        init,
    };
    let mut specs = vec![spec(EMBED.into(), vec![v, d], Part::Embedding, lin(d))];
    let (i_d, i_s) = (
        swiglu_width(cfg.expansion, d),
        swiglu_width(cfg.expansion, s),
    );
    for l in 0..cfg.layers {
        let layer = Part::Layers;
        if cfg.mlp_t {
            specs.push(spec(
                layer_key(l, "mlp_t.gate_up_proj"),
                vec![2 * i_s, s],
                layer,
                lin(s),
            ));
            specs.push(spec(
                layer_key(l, "mlp_t.down_proj"),
                vec![s, i_s],
                layer,
                lin(i_s),
            ));
        } else {
            specs.push(spec(
                layer_key(l, "self_attn.qkv_proj"),
                vec![3 * d, d],
                layer,
                lin(d),
            ));
            specs.push(spec(
                layer_key(l, "self_attn.o_proj"),
                vec![d, d],
                layer,
                lin(d),
            ));
        }
        specs.push(spec(
            layer_key(l, "mlp.gate_up_proj"),
            vec![2 * i_d, d],
            layer,
            lin(d),
        ));
        specs.push(spec(
            layer_key(l, "mlp.down_proj"),
            vec![d, i_d],
            layer,
            lin(i_d),
        ));
    }
    specs.push(spec(LM_HEAD.into(), vec![v, d], Part::Head, lin(d)));
    specs.push(spec(Q_WEIGHT.into(), vec![2, d], Part::Head, Init::Zeros));
    specs.push(spec(Q_BIAS.into(), vec![2], Part::Head, Init::Const(-5.0)));
    specs
}

/// rms(x) = x·rsqrt(mean(x²) + eps) over the last axis, in fp32, cast back; no weight.
fn rms(x: &Tensor, eps: f64) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    (&xf * (xf.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt()).to_kind(x.kind())
}

/// down(silu(gate)·up) with the fused [gate | up] projection.
fn swiglu(x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Tensor {
    let h = linear(x, gate_up).chunk(2, -1);
    linear(&(h[0].silu() * &h[1]), down)
}

enum Mixer {
    /// (qkv [3D, D], o [D, D]).
    Attention(Tensor, Tensor),
    /// (gate_up [2·I_S, S], down [S, I_S]) over the sequence axis.
    Tokens(Tensor, Tensor),
}

struct Layer {
    mixer: Mixer,
    gate_up: Tensor,
    down: Tensor,
}

/// The states one supervision step carries: y (`z_H`) and z (`z_L`), [B, P+L, D].
pub struct Carry {
    pub y: Tensor,
    pub z: Tensor,
}

/// What a supervision step returns.
pub struct Step {
    /// [B, L, V] in fp32.
    pub logits: Tensor,
    /// [B] fp32: halt and continue logits from prefix position 0.
    pub q_halt: Tensor,
    pub q_continue: Tensor,
    /// The next step's states, detached.
    pub carry: Carry,
}

pub struct Trm {
    cfg: TrmConfig,
    params: FlatParams,
    /// The fixed reset states (`H_init`, `L_init`), [D] each.
    pub h_init: Tensor,
    pub l_init: Tensor,
    /// The puzzle-embedding table (`puzzle_emb.weights`), [ids, D]; zero-initialised.
    pub puzzle_table: Tensor,
    /// Rotate-half cos/sin [S, hd] (attention with RoPE only).
    rope: Option<(Tensor, Tensor)>,
    /// bf16-mixed: the forward (and the carried states) in bf16 with weights cast at use; norms,
    /// RoPE and the q head in fp32, the loss in fp64, as the reference's `forward_dtype=bfloat16`.
    precision: crate::huginn::Precision,
}

impl Trm {
    pub fn new(
        cfg: TrmConfig,
        device: Device,
        precision: crate::huginn::Precision,
    ) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let rope = (cfg.pos_encodings == PosEncoding::Rope).then(|| {
            let hd = cfg.head_dim();
            let cpu = (Kind::Float, Device::Cpu);
            let inv = Tensor::pow_scalar(
                cfg.rope_theta,
                &(Tensor::arange_start_step(0, hd, 2, cpu) / hd as f64),
            )
            .reciprocal();
            let f = Tensor::arange(cfg.positions(), cpu).outer(&inv);
            let emb = Tensor::cat(&[&f, &f], -1);
            (emb.cos().to_device(device), emb.sin().to_device(device))
        });
        Ok(Trm {
            params: FlatParams::zeros(param_specs(&cfg), device),
            h_init: Tensor::zeros([d], (Kind::Float, device)),
            l_init: Tensor::zeros([d], (Kind::Float, device)),
            puzzle_table: Tensor::zeros([cfg.num_puzzle_identifiers, d], (Kind::Float, device)),
            rope,
            cfg,
            precision,
        })
    }

    /// The trained parameters from `seed`, and the fixed init states (truncated normal, std 1).
    pub fn init(&self, seed: u64) {
        use rand_chacha::rand_core::SeedableRng;
        self.params.init(seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::MAX);
        for t in [&self.h_init, &self.l_init] {
            let v: Vec<f32> = (0..self.cfg.hidden_size)
                .map(|_| crate::params::sample_jax_trunc_normal(&mut rng, 1.0) as f32)
                .collect();
            tch::no_grad(|| {
                t.shallow_clone()
                    .copy_(&Tensor::from_slice(&v).to_device(t.device()))
            });
        }
    }

    pub fn config(&self) -> &TrmConfig {
        &self.cfg
    }

    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    /// The kind of the forward and of the carried states.
    pub fn dtype(&self) -> Kind {
        match self.precision {
            crate::huginn::Precision::F32 => Kind::Float,
            crate::huginn::Precision::Bf16Mixed => Kind::BFloat16,
        }
    }

    /// The buffers beside the parameters, under their reference keys (fp32 here; the reference keeps
    /// the init states in the forward dtype).
    pub fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        vec![
            (H_INIT, self.h_init.shallow_clone()),
            (L_INIT, self.l_init.shallow_clone()),
            (PUZZLE_EMB, self.puzzle_table.shallow_clone()),
        ]
    }

    /// √D · concat(prefix, E[tokens]): inputs [B, L] i64, the puzzles' table rows [B, D] →
    /// [B, P+L, D].
    pub fn embed(&self, embed: &Tensor, inputs: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, l) = inputs.size2()?;
        ensure!(
            l == c.seq_len,
            "inputs have {l} cells, model.seq_len is {}",
            c.seq_len
        );
        let tokens = Tensor::embedding(embed, inputs, -1, false, false); // [B, L, D]
                                                                         // Only prefix position 0 holds the puzzle's row; the rest of the prefix is zero padding.
        let rows = rows.unsqueeze(1); // [B, 1, D]
        let pad = Tensor::zeros(
            [b, c.puzzle_emb_len - 1, c.hidden_size],
            (Kind::Float, embed.device()),
        );
        let x = Tensor::cat(&[rows, pad, tokens], 1);
        Ok((x * (c.hidden_size as f64).sqrt()).to_kind(self.dtype()))
    }

    /// The reset states for a batch of `b`: H_init and L_init broadcast over batch and positions.
    pub fn initial_carry(&self, b: i64) -> Carry {
        let shape = [b, self.cfg.positions(), self.cfg.hidden_size];
        let kind = self.dtype();
        Carry {
            y: self.h_init.to_kind(kind).expand(shape, false).copy(),
            z: self.l_init.to_kind(kind).expand(shape, false).copy(),
        }
    }

    fn layers(&self) -> Result<(Vec<Layer>, std::collections::HashMap<String, Tensor>)> {
        let mut by: std::collections::HashMap<String, Tensor> = self
            .params
            .views()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.to_kind(self.dtype())))
            .collect();
        let mut take = |n: String| by.remove(&n).with_context(|| format!("no parameter `{n}`"));
        let mut layers = Vec::new();
        for l in 0..self.cfg.layers {
            let mixer = match self.cfg.mlp_t {
                true => Mixer::Tokens(
                    take(layer_key(l, "mlp_t.gate_up_proj"))?,
                    take(layer_key(l, "mlp_t.down_proj"))?,
                ),
                false => Mixer::Attention(
                    take(layer_key(l, "self_attn.qkv_proj"))?,
                    take(layer_key(l, "self_attn.o_proj"))?,
                ),
            };
            layers.push(Layer {
                mixer,
                gate_up: take(layer_key(l, "mlp.gate_up_proj"))?,
                down: take(layer_key(l, "mlp.down_proj"))?,
            });
        }
        Ok((layers, by))
    }

    /// f(h, inj): h + inj through every block.
    fn f(&self, layers: &[Layer], h: &Tensor, inj: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.norm_eps;
        let mut h = h + inj;
        for layer in layers {
            h = match &layer.mixer {
                // Post-norm token mixing over the sequence axis: [B, D, S], normed over S.
                Mixer::Tokens(gate_up, down) => {
                    let t = h.transpose(1, 2);
                    rms(&(&t + swiglu(&t, gate_up, down)), eps).transpose(1, 2)
                }
                Mixer::Attention(qkv, o) => rms(&(&h + self.attention(&h, qkv, o)?), eps),
            };
            h = rms(&(&h + swiglu(&h, &layer.gate_up, &layer.down)), eps);
        }
        Ok(h)
    }

    /// Non-causal multi-head attention, rotate-half RoPE when configured.
    fn attention(&self, x: &Tensor, qkv: &Tensor, o: &Tensor) -> Result<Tensor> {
        let (b, s, d) = x.size3()?;
        let (h, hd) = (self.cfg.num_heads, self.cfg.head_dim());
        let y = linear(x, qkv).view([b, s, 3, h, hd]);
        let (mut q, mut k, v) = (y.select(2, 0), y.select(2, 1), y.select(2, 2)); // [B, S, H, hd]
        if let Some((cos, sin)) = &self.rope {
            let rot = |t: &Tensor| {
                let tf = t.to_kind(Kind::Float);
                let halves = tf.chunk(2, -1);
                let r = Tensor::cat(&[-&halves[1], halves[0].shallow_clone()], -1);
                (tf * cos.view([1, s, 1, hd]) + r * sin.view([1, s, 1, hd])).to_kind(t.kind())
            };
            (q, k) = (rot(&q), rot(&k));
        }
        let t = |t: Tensor| t.transpose(1, 2); // [B, H, S, hd]
        let a = Tensor::scaled_dot_product_attention(
            &t(q),
            &t(k),
            &t(v),
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        );
        Ok(linear(&a.transpose(1, 2).reshape([b, s, d]), o))
    }

    /// One supervision step from `carry`: T−1 cycles without a graph, then one with (n latent
    /// updates z ← f(z, y + x), then y ← f(y, z), each cycle); the answer's logits and the q head.
    pub fn step(&self, carry: &Carry, inputs: &Tensor, puzzle_ids: &Tensor) -> Result<Step> {
        let rows = self.puzzle_table.index_select(0, puzzle_ids);
        self.step_with_rows(carry, inputs, &rows)
    }

    /// [`Trm::step`] given the puzzles' table rows [B, D]: training passes a leaf of them, whose
    /// gradient the sign-SGD of the table reads.
    pub fn step_with_rows(&self, carry: &Carry, inputs: &Tensor, rows: &Tensor) -> Result<Step> {
        let (layers, rest) = self.layers()?;
        let get = |n: &str| rest.get(n).with_context(|| format!("no parameter `{n}`"));
        let x = self.embed(get(EMBED)?, inputs, rows)?;
        let (mut y, mut z) = (carry.y.shallow_clone(), carry.z.shallow_clone());
        let cycle = |y: &mut Tensor, z: &mut Tensor| -> Result<()> {
            for _ in 0..self.cfg.l_cycles {
                *z = self.f(&layers, z, &(&*y + &x))?;
            }
            *y = self.f(&layers, y, z)?;
            Ok(())
        };
        tch::no_grad(|| -> Result<()> {
            for _ in 0..self.cfg.h_cycles - 1 {
                cycle(&mut y, &mut z)?;
            }
            Ok(())
        })?;
        cycle(&mut y, &mut z)?;
        let p = self.cfg.puzzle_emb_len;
        let logits = linear(&y, get(LM_HEAD)?)
            .narrow(1, p, self.cfg.seq_len)
            .to_kind(Kind::Float);
        let q = y
            .select(1, 0)
            .linear(get(Q_WEIGHT)?, Some(get(Q_BIAS)?))
            .to_kind(Kind::Float);
        Ok(Step {
            logits,
            q_halt: q.select(1, 0),
            q_continue: q.select(1, 1),
            carry: Carry {
                y: y.detach(),
                z: z.detach(),
            },
        })
    }
}

/// log stablemax in fp64 (§2): s(v) = v + 1 for v ≥ 0, 1 / (1 − v) below; log p = log(s / Σ s).
/// The reference adds 1e-30 inside the reciprocal, which keeps the unused branch finite.
pub fn log_stablemax(logits: &Tensor) -> Tensor {
    let v = logits.to_kind(Kind::Double);
    let below: Tensor = (1.0 - &v) + 1e-30;
    let s = (&v + 1.0).where_self(&v.ge(0.0), &below.reciprocal());
    let total = s.sum_dim_intlist(-1, true, Kind::Double);
    (s / total).log()
}

/// One supervision step's loss and correctness (the reference's `ACTLossHead`, §2), summed over the
/// rows of the batch; the trainer divides by the global batch.
pub struct Loss {
    /// lm + 0.5 · q_halt, fp64 scalar.
    pub total: Tensor,
    /// Σ_b mean over row b's valid cells of −log stablemax(logits)[label], fp64.
    pub lm: Tensor,
    /// Σ_b BCEWithLogits(q_halt_b, 1[row b fully correct]).
    pub q_halt: Tensor,
    /// [B] bool: every valid cell predicted right (argmax).
    pub row_correct: Tensor,
    /// [B] fp32: the share of row b's valid cells predicted right.
    pub cell_accuracy: Tensor,
    /// [B] i64: valid cells per row.
    pub counts: Tensor,
}

/// The loss of `step` against `labels` [B, L] ([`crate::IGNORE`] where a cell does not count).
pub fn loss(step: &Step, labels: &Tensor) -> Result<Loss> {
    let (b, l, _) = step.logits.size3()?;
    ensure!(
        labels.size() == [b, l],
        "labels have shape {:?}, expected [{b}, {l}]",
        labels.size()
    );
    let mask = labels.ne(crate::IGNORE);
    let counts = mask.sum_dim_intlist(-1, false, Kind::Int64);
    let divisor = counts.clamp_min(1).unsqueeze(-1).to_kind(Kind::Double);
    let (correct, row_correct) = tch::no_grad(|| {
        let correct = mask.logical_and(&step.logits.argmax(-1, false).eq_tensor(labels));
        let row = correct
            .sum_dim_intlist(-1, false, Kind::Int64)
            .eq_tensor(&counts);
        (correct, row)
    });
    let logp = log_stablemax(&step.logits);
    let target = labels.where_self(&mask, &labels.zeros_like()).unsqueeze(-1);
    let picked = logp.gather(-1, &target, false).squeeze_dim(-1);
    let ce = -picked.where_self(&mask, &picked.zeros_like());
    let lm = (ce / &divisor).sum(Kind::Double);
    let q_halt = step.q_halt.binary_cross_entropy_with_logits(
        &row_correct.to_kind(step.q_halt.kind()),
        None::<Tensor>,
        None::<Tensor>,
        tch::Reduction::Sum,
    );
    let cell_accuracy = (correct.to_kind(Kind::Float) / divisor.to_kind(Kind::Float))
        .sum_dim_intlist(-1, false, Kind::Float);
    Ok(Loss {
        total: &lm + q_halt.to_kind(Kind::Double) * 0.5,
        lm,
        q_halt,
        row_correct,
        cell_accuracy,
        counts,
    })
}

/// Deep supervision's persistent slots (carry batching, §2): each optimizer step runs one
/// supervision step over B slots; a slot that halted takes the fresh batch's row in its place and
/// restarts from the init states, the others keep theirs (and the fresh row is dropped).
pub struct Slots {
    pub carry: Carry,
    /// [B] i64: supervision steps the slot's puzzle has run.
    pub steps: Tensor,
    /// [B] bool: the slot's puzzle is done; it takes a fresh row at the next refill.
    pub halted: Tensor,
    /// The rows the slots hold: inputs and labels [B, L], puzzle ids [B].
    pub inputs: Tensor,
    pub labels: Tensor,
    pub puzzle_ids: Tensor,
}

impl Slots {
    /// B empty slots, all halted (the first refill fills every one).
    pub fn new(trm: &Trm, b: i64) -> Self {
        let (l, dev) = (trm.cfg.seq_len, trm.h_init.device());
        Slots {
            carry: trm.initial_carry(b),
            steps: Tensor::zeros([b], (Kind::Int64, dev)),
            halted: Tensor::ones([b], (Kind::Bool, dev)),
            inputs: Tensor::zeros([b, l], (Kind::Int64, dev)),
            labels: Tensor::full([b, l], crate::IGNORE, (Kind::Int64, dev)),
            puzzle_ids: Tensor::zeros([b], (Kind::Int64, dev)),
        }
    }

    /// Halted slots take the fresh rows (same positions) and the init states; steps restart at 0.
    pub fn refill(&mut self, trm: &Trm, inputs: &Tensor, labels: &Tensor, puzzle_ids: &Tensor) {
        let h = &self.halted;
        let rows = h.view([-1, 1]);
        let states = h.view([-1, 1, 1]);
        let fresh = trm.initial_carry(h.size()[0]);
        self.carry = Carry {
            y: fresh.y.where_self(&states, &self.carry.y),
            z: fresh.z.where_self(&states, &self.carry.z),
        };
        self.inputs = inputs.where_self(&rows, &self.inputs);
        self.labels = labels.where_self(&rows, &self.labels);
        self.puzzle_ids = puzzle_ids.where_self(h, &self.puzzle_ids);
        self.steps = self.steps.zeros_like().where_self(h, &self.steps);
    }

    /// After a supervision step: steps + 1; a slot halts at N_sup, and in training also once
    /// q_halt > 0, but never before its exploration floor `min_steps` ([B] i64, 0 = none).
    pub fn advance(&mut self, trm: &Trm, step: &Step, training: bool, min_steps: &Tensor) {
        self.carry = Carry {
            y: step.carry.y.shallow_clone(),
            z: step.carry.z.shallow_clone(),
        };
        self.steps = &self.steps + 1;
        let last = self.steps.ge(trm.cfg.halt_max_steps);
        self.halted = match training && trm.cfg.halt_max_steps > 1 {
            true => last
                .logical_or(&step.q_halt.gt(0.0))
                .logical_and(&self.steps.ge_tensor(min_steps)),
            false => last,
        };
    }
}

/// The exploration floors of global rows `rows` at optimizer step `step`: with probability `prob`
/// a row may not halt before k ~ U{2..=n_sup} steps, else 0. A pure function of (seed, step, global
/// row), so any split of the rows over ranks draws the same.
pub fn exploration_floors(
    seed: u64,
    step: u64,
    rows: std::ops::Range<u64>,
    prob: f64,
    n_sup: i64,
) -> Vec<i64> {
    use rand_chacha::rand_core::{Rng, SeedableRng};
    rows.map(|r| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7472_6d2d_6578_706c);
        rng.set_stream(step.wrapping_mul(1 << 32).wrapping_add(r));
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        match u < prob && n_sup >= 2 {
            true => 2 + (rng.next_u64() % (n_sup as u64 - 1)) as i64,
            false => 0,
        }
    })
    .collect()
}
