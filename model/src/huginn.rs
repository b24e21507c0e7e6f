//! Huginn, the recurrent-depth transformer of Geiping et al. 2025 (arXiv 2502.05171), following
//! `recpre/model_dynamic.py` and `raven_modeling_minimal.py` of seal-rg/recurrent-pretraining @59e0b69.
//!
//! ids → wte·sqrt(d) → prelude → e;  s ← s0;  s ← Core(Adapter(cat[s, e])) n times without a graph,
//! then k times with one;  ln_f(s) → coda → ln_f → tied head.  Every block is a sandwich block, or
//! (`block = "pre-norm"` / `"post-norm"`, a retrofitted Llama) the `gpt` family's layer, with
//! ln_f after the coda only and the source's own head.

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use crate::block::{linear, rms_norm, Attend, BlockWeights, Kv, Rope};
use crate::config::{HuginnConfig, StateInit};
use crate::family::GradEvent;
use crate::llama::RotaryHalf;
use crate::loss::{LmLoss, LossValues};
use crate::params::{self, trunc_normal_, FlatParams};
use crate::shim;

/// Number of core iterations without and with a gradient graph: (n, k).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub no_grad: i64,
    pub with_grad: i64,
}

impl Depth {
    pub fn new(no_grad: i64, with_grad: i64) -> Self {
        Depth { no_grad, with_grad }
    }

    /// r iterations, all without a graph (evaluation and inference).
    pub fn eval(r: i64) -> Self {
        Depth {
            no_grad: r,
            with_grad: 0,
        }
    }

    pub fn total(&self) -> i64 {
        self.no_grad + self.with_grad
    }
}

/// Compute precision. Parameters, gradients and the recurrent state are fp32 in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    #[serde(rename = "f32", alias = "fp32")]
    F32,
    /// Matmuls and attention in bf16; norms, RoPE, residual stream and state in fp32 (§1.10). Done
    /// explicitly rather than through autocast: tch's autocast is CUDA-only, and its weight cache is the
    /// no-grad/grad trap of `hpc-and-ecosystem.md` §3.6. Here each forward casts every weight once, with
    /// its graph, and both phases share that cast.
    #[serde(rename = "bf16-mixed", alias = "bf16")]
    Bf16Mixed,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16-mixed" | "bf16" => Ok(Precision::Bf16Mixed),
            other => anyhow::bail!("unknown precision `{other}` (expected f32 or bf16-mixed)"),
        }
    }
}

/// Where the recurrence starts.
pub enum InitState {
    /// The config's `state_init` (like-init or zero), drawn from the torch RNG.
    Config,
    Random,
    Zero,
    /// A given state, e.g. the previous token's final latent (continuous compute). [B, T, d].
    Given(Tensor),
}

/// Core layer j on x in one iteration: `(j, weights, x) → y`.
pub(crate) type CoreBlocks<'a> = dyn FnMut(usize, &Block, &Tensor) -> Result<Tensor> + 'a;

/// One layer of the prelude, the core or the coda.
pub(crate) enum Block {
    Sandwich(BlockWeights),
    Llama(crate::llama::Layer),
}

/// What a run of [`Huginn::recur`] iterates over: the weights, the prelude's output e, the depth, and
/// whether the grad iterations are checkpointed.
pub(crate) struct Run<'a> {
    pub w: &'a Weights,
    pub e: &'a Tensor,
    pub depth: Depth,
    pub checkpointed: bool,
}

impl<'a> Run<'a> {
    pub fn new(w: &'a Weights, e: &'a Tensor, depth: Depth) -> Self {
        Run {
            w,
            e,
            depth,
            checkpointed: false,
        }
    }
}

/// One iteration of [`Huginn::recur`], as its observer sees it.
pub(crate) struct Iteration<'a> {
    /// 0-based.
    pub index: i64,
    pub input: &'a Tensor,
    pub output: &'a Tensor,
    /// One of the last k iterations, the ones gradients flow through.
    pub grad_phase: bool,
}

/// Whether [`Huginn::recur`] goes on after an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Logits and the final latent state.
pub struct Forward {
    /// [B, T, V], fp32.
    pub logits: Tensor,
    /// The last recurrent state before `ln_f`, [B, T, d], fp32.
    pub state: Tensor,
    /// What the head reads: the coda's output after the final `ln_f`, [B, T, d] (COCONUT feeds it
    /// back as the next input embedding).
    pub hidden: Tensor,
}

/// What a forward pass reads: token ids [B, T], or embeddings [B, T, d] in place of `wte(ids)`
/// (before the embedding scale, as the reference's `input_embeds`).
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Ids(&'a Tensor),
    Embeds(&'a Tensor),
}

impl Input<'_> {
    /// [B, T, d] fp32: the rows of `table` [V, d] for ids [B, T], or the given embeddings, checked.
    pub fn embed(self, table: &Tensor) -> Result<Tensor> {
        match self {
            Input::Ids(ids) => {
                ensure!(
                    ids.dim() == 2,
                    "token ids have shape {:?}, expected [B, T]",
                    ids.size()
                );
                Ok(Tensor::embedding(table, ids, -1, false, false))
            }
            Input::Embeds(x) => {
                let d = table.size()[1];
                ensure!(
                    x.dim() == 3 && x.size()[2] == d,
                    "input embeddings have shape {:?}, expected [B, T, {d}]",
                    x.size()
                );
                Ok(x.to_kind(Kind::Float))
            }
        }
    }
}

/// The weights one forward pass computes with: views of the flat fp32 parameters, matmul weights
/// cast to the compute dtype once.
pub(crate) struct Weights {
    pub(crate) wte: Tensor,
    /// The head in the compute dtype (the embedding's cast when tied).
    pub(crate) head: Tensor,
    /// The fp32 leaf whose `.grad` the head's gradient goes into (wte when tied).
    pub(crate) head_leaf: Tensor,
    pub(crate) prelude: Vec<Block>,
    pub(crate) adapter: Tensor,
    pub(crate) core: Vec<Block>,
    pub(crate) coda: Vec<Block>,
    pub(crate) ln_f: Tensor,
}

pub struct Huginn {
    cfg: HuginnConfig,
    params: FlatParams,
    /// The sandwich block's interleaved-pair RoPE (also what an export writes as `freqs_cis`).
    rope: Rope,
    /// Llama-style blocks' rotate-half RoPE.
    rope_half: Option<RotaryHalf>,
    precision: Precision,
}

impl Huginn {
    /// Allocates a model with zero weights; call [`Huginn::init`] or load a checkpoint.
    pub fn new(cfg: HuginnConfig, device: Device, precision: Precision) -> Result<Self> {
        cfg.validate()?;
        let params = FlatParams::zeros(params::param_specs(&cfg), device);
        let rope = Rope::new(cfg.head_dim(), cfg.block_size, cfg.rope_base, device);
        let rope_half = cfg.layer_shape().map(|_| {
            let scaling = cfg.rope_scaling.as_ref();
            RotaryHalf::new(
                cfg.head_dim(),
                cfg.block_size,
                cfg.rope_base,
                scaling,
                device,
            )
        });
        Ok(Huginn {
            cfg,
            params,
            rope,
            rope_half,
            precision,
        })
    }

    /// `takase` initialisation from `seed`: the same seed gives the same weights on every device and
    /// every rank, without touching torch's global RNG.
    pub fn init(&self, seed: u64) {
        self.params.init(seed);
    }

    pub fn config(&self) -> &HuginnConfig {
        &self.cfg
    }

    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut FlatParams {
        &mut self.params
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The Raven layout's `freqs_cis` buffer for this model's RoPE (the Llama blocks' own
    /// frequencies, `rope_scaling` included, where it has them).
    pub fn freqs_cis(&self) -> Tensor {
        match &self.rope_half {
            Some(half) => half.freqs_cis().to_device(Device::Cpu),
            None => self.rope.freqs_cis().to_device(Device::Cpu),
        }
    }

    pub fn device(&self) -> Device {
        self.params.device()
    }

    pub(crate) fn weights(&self) -> Weights {
        let mut views: std::collections::HashMap<String, Tensor> = self
            .params
            .views()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let compute = match self.precision {
            Precision::F32 => Kind::Float,
            Precision::Bf16Mixed => Kind::BFloat16,
        };
        let cast = |t: Tensor| t.to_kind(compute);
        // Names come from the same spec list as the views, so a miss is a bug, not bad input.
        let mut take = crate::llama::taker(&mut views, "Huginn");
        let mut take = move |name: &str| take(name).unwrap_or_else(|e| panic!("{e}"));
        let mut stack = |prefix: &str, count: i64| -> Vec<Block> {
            (0..count)
                .map(|j| {
                    let prefix = format!("{prefix}.{j}");
                    if let Some(shape) = self.cfg.layer_shape() {
                        let names = crate::llama::LayerNames::new(&prefix, shape.norm);
                        let mut take = |name: &str| Ok(take(name));
                        let layer = crate::llama::Layer::take(&names, &shape, compute, &mut take);
                        return Block::Llama(layer.expect("every name is in the spec list"));
                    }
                    let n = params::BlockNames::new(&prefix);
                    Block::Sandwich(BlockWeights {
                        norms: n.norms.each_ref().map(|name| take(name)),
                        wqkv: cast(take(&n.wqkv)),
                        qk_bias: self.cfg.qk_bias.then(|| take(&n.qk_bias)),
                        attn_proj: cast(take(&n.attn_proj)),
                        fc: cast(take(&n.fc)),
                        mlp_proj: cast(take(&n.mlp_proj)),
                    })
                })
                .collect()
        };
        let prelude = stack("prelude", self.cfg.n_layers_in_prelude);
        let core = stack("core", self.cfg.n_layers_in_recurrent_block);
        let coda = stack("coda", self.cfg.n_layers_in_coda);
        let wte = take(params::WTE);
        let head_leaf = match self.cfg.tie_embeddings {
            true => wte.shallow_clone(),
            false => take(params::LM_HEAD),
        };
        Weights {
            head: cast(head_leaf.shallow_clone()),
            head_leaf,
            wte,
            prelude,
            adapter: cast(take(params::ADAPTER)),
            core,
            coda,
            ln_f: take(params::LN_F),
        }
    }

    /// Layer `b` on new tokens x [B, T, d] that follow `past` (decoding) and attend as `attend`
    /// says → [B, T, d] and the new tokens' keys and values.
    pub(crate) fn block_kv(
        &self,
        b: &Block,
        x: &Tensor,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        let cfg = &self.cfg;
        match (b, cfg.layer_shape(), &self.rope_half) {
            (Block::Sandwich(b), _, _) => {
                b.forward_kv(x, &self.rope, cfg.n_heads, cfg.norm_eps, attend, past)
            }
            (Block::Llama(l), Some(shape), Some(rope)) => {
                l.forward_kv(x, &shape, rope, attend, past)
            }
            _ => unreachable!("Llama layers are built only with a layer shape and its RoPE"),
        }
    }

    /// [`Huginn::block_kv`] without a cache.
    pub(crate) fn block(&self, b: &Block, x: &Tensor, attend: &Attend) -> Result<Tensor> {
        Ok(self.block_kv(b, x, attend, None)?.0)
    }

    /// What the coda reads of the last state: ln_f(s) between sandwich blocks (§8.1), s itself
    /// between Llama-style ones (the retrofit code norms only after the coda).
    pub(crate) fn coda_input(&self, w: &Weights, s: &Tensor) -> Tensor {
        match self.cfg.block {
            crate::config::BlockKind::Sandwich => rms_norm(s, &w.ln_f, self.cfg.norm_eps),
            _ => s.shallow_clone(),
        }
    }

    /// ids [B, T] (or their embeddings [B, T, d]) → e [B, T, d], fp32.
    fn prelude(&self, w: &Weights, input: Input, attend: &Attend) -> Result<Tensor> {
        let embedded = input.embed(&w.wte)?;
        let t = embedded.size()[1];
        ensure!(
            t <= self.cfg.block_size,
            "sequence of {t} tokens is longer than model.block_size = {}",
            self.cfg.block_size
        );
        let mut x = embedded * self.cfg.embed_scale();
        for b in &w.prelude {
            x = self.block(b, &x, attend)?;
        }
        Ok(x)
    }

    /// One iteration: s ← Core(Adapter(cat[s, e])). State first, then e (§8.2). `blocks` runs core
    /// layer j on x: plainly ([`Huginn::plain_blocks`]) or behind the decoder's KV cache.
    pub(crate) fn iteration(
        &self,
        w: &Weights,
        s: &Tensor,
        e: &Tensor,
        blocks: &mut CoreBlocks,
    ) -> Result<Tensor> {
        let mut x = linear(&Tensor::cat(&[s, e], -1), &w.adapter);
        for (j, b) in w.core.iter().enumerate() {
            x = blocks(j, b, &x)?;
        }
        Ok(x)
    }

    /// Core layers without a cache, attending as `attend` says.
    pub(crate) fn plain_blocks<'a>(
        &'a self,
        attend: &'a Attend,
    ) -> impl FnMut(usize, &Block, &Tensor) -> Result<Tensor> + 'a {
        move |_, b, x| self.block(b, x, attend)
    }

    /// The recurrence, written once:
    ///   s_{i+1} = Core(Adapter(cat[s_i, e])),  i = 0 .. n + k,
    /// the first n iterations without a graph and the last k with one, or, `checkpointed`, without
    /// one either (their inputs are the observer's to keep for the backward walk). `blocks(i, j, ..)`
    /// runs core layer j in iteration i; `observe` hears every iteration and may end the loop early
    /// (the decoder's exit criteria). Returns the last state.
    pub(crate) fn recur(
        &self,
        run: &Run,
        s0: Tensor,
        blocks: &mut dyn FnMut(i64, usize, &Block, &Tensor) -> Result<Tensor>,
        observe: &mut dyn FnMut(&Iteration) -> Result<Flow>,
    ) -> Result<Tensor> {
        let (w, e, depth) = (run.w, run.e, run.depth);
        let mut s = s0;
        for i in 0..depth.total() {
            let with_grad = i >= depth.no_grad && !run.checkpointed;
            let mut layer = |j: usize, b: &Block, x: &Tensor| blocks(i, j, b, x);
            let next = match with_grad {
                true => self.iteration(w, &s, e, &mut layer)?,
                false => tch::no_grad(|| self.iteration(w, &s, e, &mut layer))?,
            };
            let flow = observe(&Iteration {
                index: i,
                input: &s,
                output: &next,
                grad_phase: i >= depth.no_grad,
            })?;
            s = next;
            if flow == Flow::Stop {
                break;
            }
        }
        Ok(s)
    }

    /// [`Huginn::recur`] with plain blocks.
    fn recur_plain(
        &self,
        run: &Run,
        s0: Tensor,
        attend: &Attend,
        observe: &mut dyn FnMut(&Iteration) -> Result<Flow>,
    ) -> Result<Tensor> {
        let mut plain = self.plain_blocks(attend);
        self.recur(run, s0, &mut |_, j, b, x| plain(j, b, x), observe)
    }

    /// s [B, T, d] → the head's input [B, T, d]: [`Huginn::coda_input`], the coda, `ln_f`.
    fn coda_hidden(&self, w: &Weights, s: &Tensor, attend: &Attend) -> Result<Tensor> {
        let mut x = self.coda_input(w, s);
        for b in &w.coda {
            x = self.block(b, &x, attend)?;
        }
        Ok(rms_norm(&x, &w.ln_f, self.cfg.norm_eps))
    }

    /// s0 shaped like `e`: Huginn's like-init is a ±3σ truncated normal scaled by sqrt(d) (§1.6).
    pub fn initial_state(&self, e: &Tensor, init: &InitState) -> Result<Tensor> {
        let random = match init {
            InitState::Config => self.cfg.state_init == StateInit::LikeInit,
            InitState::Random => true,
            InitState::Zero => false,
            InitState::Given(s) => {
                ensure!(
                    s.size() == e.size(),
                    "initial state has shape {:?}, expected {:?}",
                    s.size(),
                    e.size()
                );
                return Ok(s.to_kind(Kind::Float).to_device(e.device()).detach());
            }
        };
        let s = Tensor::zeros(e.size(), (Kind::Float, e.device()));
        if random {
            let mut s = s;
            trunc_normal_(&mut s, self.cfg.init_std());
            return Ok(s * self.cfg.embed_scale());
        }
        Ok(s)
    }

    /// The forward pass: n iterations without a graph, then k with one.
    ///
    /// Called under `tch::no_grad` this is evaluation; `Depth::eval(r)` runs all r iterations without
    /// a graph. With the same s0 the logits do not depend on how r splits into (n, k).
    pub fn forward(&self, ids: &Tensor, depth: Depth, init: &InitState) -> Result<Forward> {
        self.forward_with(Input::Ids(ids), &Attend::causal(), depth, init)
    }

    /// [`Huginn::forward`] from ids or embeddings, with explicit positions and masks: every block
    /// of the prelude, of the core at every iteration, and of the coda attends as `attend` says.
    pub fn forward_with(
        &self,
        input: Input,
        attend: &Attend,
        depth: Depth,
        init: &InitState,
    ) -> Result<Forward> {
        let w = self.weights();
        let e = self.prelude(&w, input, attend)?;
        let s0 = self.initial_state(&e, init)?;
        let run = Run::new(&w, &e, depth);
        let s = self.recur_plain(&run, s0, attend, &mut |_| Ok(Flow::Continue))?;
        let hidden = self.coda_hidden(&w, &s, attend)?;
        Ok(Forward {
            logits: linear(&hidden, &w.head).to_kind(Kind::Float),
            state: s,
            hidden,
        })
    }

    /// Forward, mean cross-entropy against `targets` [B, T] over the targets that count (not
    /// [`crate::loss::IGNORE`]; zero when none does), and backward into the flat gradient. Returns
    /// the detached loss. A trainer weighting micro-batches by their tokens calls
    /// [`Huginn::loss_backward_scaled`].
    pub fn loss_backward(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        depth: Depth,
        init: &InitState,
        activation_checkpointing: bool,
        on_grads: &mut dyn FnMut(GradStage),
    ) -> Result<Tensor> {
        let valid = crate::loss::valid_targets(targets).int64_value(&[]);
        let scale = if valid > 0 { 1.0 / valid as f64 } else { 0.0 };
        let attend = Attend::causal();
        let objective = Objective {
            loss: LmLoss::next_token(targets, scale, &attend),
            activation_checkpointing,
        };
        Ok(self
            .loss_backward_scaled(ids, &objective, depth, init, on_grads)?
            .total)
    }

    /// Forward, L = Σ w · cross-entropy over the targets that count (`objective.loss`, whose
    /// attention every block of the prelude, of the core at every iteration, and of the coda
    /// follows), and backward of L into the flat gradient. Returns the detached L and each
    /// position's cross-entropy [B, T], unweighted.
    ///
    /// The backward runs in three stages so that a data-parallel trainer can reduce each part of the
    /// model while the next is still being computed (`hpc-and-ecosystem.md` §3.4): `on_grads` hears
    /// [`GradStage::Coda`] once the coda and `ln_f` gradients are final, [`GradStage::CoreIteration`]
    /// after each recomputed iteration (a chance to progress communication), [`GradStage::Core`] once
    /// the core and adapter are final, and [`GradStage::Prelude`] once everything is.
    ///
    /// With `activation_checkpointing`, each grad iteration keeps only its input state and is
    /// recomputed during the backward walk, so activation memory grows with k, not with n:
    /// forward stores x_0..x_{k-1}; the coda's backward yields g = ∂L/∂s_k; then for i = k-1..0,
    /// recompute y = f(x_i) with a graph, backpropagate g through it (accumulating parameter
    /// gradients and ∂L/∂e) and continue with g = ∂L/∂x_i. Last, ∂L/∂e flows into the prelude.
    /// Without it the k iterations keep their graph and one backward call walks them.
    pub fn loss_backward_scaled(
        &self,
        ids: &Tensor,
        objective: &Objective,
        depth: Depth,
        init: &InitState,
        on_grads: &mut dyn FnMut(GradStage),
    ) -> Result<LossValues> {
        let activation_checkpointing = objective.activation_checkpointing;
        let (w, attend) = (self.weights(), objective.loss.attend);
        let e = self.prelude(&w, Input::Ids(ids), attend)?;
        // Every iteration reads e through this leaf; its gradient is summed over iterations.
        let e_leaf = e.detach().set_requires_grad(true);
        let s0 = tch::no_grad(|| self.initial_state(&e, init))?;
        // Checkpointed, the grad iterations run without a graph and keep only their inputs.
        let mut inputs = Vec::new();
        let run = Run {
            checkpointed: activation_checkpointing,
            ..Run::new(&w, &e_leaf, depth)
        };
        let s = self.recur_plain(&run, s0, attend, &mut |it| {
            if activation_checkpointing && it.grad_phase {
                inputs.push(it.input.shallow_clone());
            }
            Ok(Flow::Continue)
        })?;
        // The coda's backward stops at s_k, a leaf. The loss and its gradient come fused, chunk by
        // chunk, without the [B, T, V] logits; the head's part goes straight into wte's gradient.
        let s_k = s.detach().set_requires_grad(true);
        let h = self.coda_hidden(&w, &s_k, attend)?; // [B, T, d]
        let (values, grad_h) = objective.loss.fused(&h, &w.head, &w.head_leaf.grad())?;
        shim::backward(&h, &grad_h)?;
        on_grads(GradStage::Coda);
        let mut g = s_k.grad();
        if activation_checkpointing {
            let mut plain = self.plain_blocks(attend);
            for x in inputs.iter().rev() {
                let x = x.detach().set_requires_grad(true);
                let y = self.iteration(&w, &x, &e_leaf, &mut plain)?;
                shim::backward(&y, &g)?;
                g = x.grad();
                on_grads(GradStage::CoreIteration);
            }
        } else if depth.with_grad > 0 {
            shim::backward(&s, &g)?;
        }
        on_grads(GradStage::Core);
        if depth.with_grad > 0 {
            shim::backward(&e, &e_leaf.grad())?;
        }
        on_grads(GradStage::Prelude);
        Ok(values)
    }
}

/// What [`Huginn::loss_backward_scaled`] differentiates: the weighted cross-entropy of `loss`, with
/// or without activation checkpointing.
pub struct Objective<'a> {
    pub loss: LmLoss<'a>,
    pub activation_checkpointing: bool,
}

/// How far [`Huginn::loss_backward`] has come; see [`crate::params::grad_regions`] for which
/// parameters each stage completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradStage {
    /// Coda and `ln_f` are final.
    Coda,
    /// One recomputed core iteration is done (nothing new is final).
    CoreIteration,
    /// Core block and adapter are final.
    Core,
    /// Prelude and embedding (which is also the head) are final: the whole gradient.
    Prelude,
}

impl From<GradStage> for GradEvent {
    /// Huginn's stages as the trainer's events: its regions ([`crate::params::grad_regions`]) are
    /// coda (0), core (1) and prelude (2).
    fn from(stage: GradStage) -> GradEvent {
        match stage {
            GradStage::Coda => GradEvent::Final(0),
            GradStage::CoreIteration => GradEvent::Progress,
            GradStage::Core => GradEvent::Final(1),
            GradStage::Prelude => GradEvent::Final(2),
        }
    }
}

/// Recurrence telemetry of the reference's `monitor_module` (§3.8), from one no-grad forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Telemetry {
    /// mean over tokens of ‖ln_f(s_r)‖.
    pub state_norm: f64,
    /// Mean pairwise cosine of centred token states minus 1/T: near 1 means representation collapse.
    pub token_corr: f64,
    /// mean of ‖ln_f(s_r) − s_{r−1}‖ / ‖ln_f(s_r)‖.
    pub rel_residual: f64,
}

impl Huginn {
    /// The latent states s_0, s_1, …, s_r of a no-grad forward, each [B, T, d] fp32 (diagnostics).
    pub fn trajectory(&self, ids: &Tensor, r: i64, init: &InitState) -> Result<Vec<Tensor>> {
        ensure!(r >= 0, "a trajectory of {r} iterations");
        tch::no_grad(|| {
            let (w, attend) = (self.weights(), Attend::causal());
            let e = self.prelude(&w, Input::Ids(ids), &attend)?;
            let mut states = vec![self.initial_state(&e, init)?];
            let s0 = states[0].shallow_clone();
            let run = Run::new(&w, &e, Depth::eval(r));
            let _last = self.recur_plain(&run, s0, &attend, &mut |it| {
                states.push(it.output.shallow_clone());
                Ok(Flow::Continue)
            })?;
            Ok(states)
        })
    }

    /// Validation of one batch at depth r, every iteration without a graph: (Σ cross-entropy over
    /// the counted targets, their count). The batch's s0 comes from (seed, index), so it is the same
    /// at every depth, in every evaluation and at every world size.
    pub fn val_loss_sums(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        r: i64,
        seed: u64,
        index: u64,
    ) -> Result<(f64, f64)> {
        crate::family::seed_torch(seed, index, 0xE7A1);
        let out = tch::no_grad(|| self.forward(ids, Depth::eval(r), &InitState::Config))?;
        let (loss, count) = crate::loss::cross_entropy_sum(&out.logits, targets)?;
        Ok((loss.double_value(&[]), count.double_value(&[])))
    }

    pub fn telemetry(&self, ids: &Tensor, r: i64, init: &InitState) -> Result<Telemetry> {
        ensure!(r >= 1, "telemetry needs at least one iteration");
        tch::no_grad(|| {
            let (w, attend) = (self.weights(), Attend::causal());
            let e = self.prelude(&w, Input::Ids(ids), &attend)?;
            let s0 = self.initial_state(&e, init)?;
            let mut prev = s0.shallow_clone();
            let run = Run::new(&w, &e, Depth::eval(r));
            let s = self.recur_plain(&run, s0, &attend, &mut |it| {
                prev = it.input.shallow_clone();
                Ok(Flow::Continue)
            })?;
            let x = rms_norm(&s, &w.ln_f, self.cfg.norm_eps); // [B, T, d]
            let norms = x.norm_scalaropt_dim(2.0, [-1], false); // [B, T]
            let (_, t, _) = x.size3()?;
            let centred = &x - x.mean_dim(-1, true, Kind::Float);
            let unit = &centred / (centred.norm_scalaropt_dim(2.0, [-1], true) + 1e-8);
            let cos = unit.matmul(&unit.transpose(1, 2)); // [B, T, T]
            let residual = (&x - &prev).norm_scalaropt_dim(2.0, [-1], false) / (&norms + 1e-8);
            Ok(Telemetry {
                state_norm: norms.mean(Kind::Float).double_value(&[]),
                token_corr: cos.mean(Kind::Float).double_value(&[]) - 1.0 / t as f64,
                rel_residual: residual.mean(Kind::Float).double_value(&[]),
            })
        })
    }
}

/// Huginn as COCONUT's multi-pass forward drives it: every pass runs the prelude, `depth` core
/// iterations from `init` (the last k of them with a graph) and the coda, each layer behind its
/// own cache slot (per iteration for the core) that keeps autograd history. A thought is the head's
/// input, after the coda's final norm.
pub struct HuginnLatent<'m> {
    model: &'m Huginn,
    w: Weights,
    depth: Depth,
    init: InitState,
}

/// The caches of one multi-pass forward: prelude and coda layers, and core layers per iteration.
#[derive(Default)]
pub struct LatentCache {
    prelude: Vec<Kv>,
    core: Vec<Vec<Kv>>,
    coda: Vec<Kv>,
}

impl Huginn {
    /// `init` must be reproducible across passes (zero, or the config's, drawn per pass).
    pub fn latent(&self, depth: Depth, init: InitState) -> HuginnLatent<'_> {
        HuginnLatent {
            model: self,
            w: self.weights(),
            depth,
            init,
        }
    }
}

impl HuginnLatent<'_> {
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.w.head).to_kind(Kind::Float)
    }

    /// L = Σ w · cross-entropy of the head over `hidden`, and backward of L through every pass into
    /// the flat gradient.
    pub fn backward(&self, hidden: &Tensor, loss: &LmLoss) -> Result<LossValues> {
        let (values, grad_h) = loss.fused(hidden, &self.w.head, &self.w.head_leaf.grad())?;
        shim::backward(hidden, &grad_h)?;
        Ok(values)
    }

    fn layer(
        &self,
        b: &Block,
        x: &Tensor,
        attend: &Attend,
        slot: &mut Vec<Kv>,
        j: usize,
    ) -> Result<Tensor> {
        let (y, kv) = self.model.block_kv(b, x, attend, slot.get(j))?;
        match slot.get_mut(j) {
            Some(past) => *past = past.cat(&kv),
            None => slot.push(kv),
        }
        Ok(y)
    }
}

impl crate::coconut::LatentLm for HuginnLatent<'_> {
    type Cache = LatentCache;

    fn new_cache(&self) -> LatentCache {
        LatentCache::default()
    }

    /// The token embeddings before the embedding scale, as [`Input::Embeds`] takes them.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Input::Ids(ids).embed(&self.w.wte)
    }

    fn pass(&self, cache: &mut LatentCache, x: &Tensor, attend: &Attend) -> Result<Tensor> {
        let cfg = self.model.config();
        let mut h = Input::Embeds(x).embed(&self.w.wte)? * cfg.embed_scale();
        for (j, b) in self.w.prelude.iter().enumerate() {
            h = self.layer(b, &h, attend, &mut cache.prelude, j)?;
        }
        let e = h;
        let init = match &self.init {
            InitState::Config => InitState::Config,
            InitState::Random => InitState::Random,
            InitState::Zero => InitState::Zero,
            InitState::Given(s) => InitState::Given(s.shallow_clone()),
        };
        let mut s = tch::no_grad(|| self.model.initial_state(&e, &init))?;
        for i in 0..self.depth.total() {
            if cache.core.len() <= i as usize {
                cache.core.push(Vec::new());
            }
            let slot = &mut cache.core[i as usize];
            let mut blocks = |j: usize, b: &Block, x: &Tensor| self.layer(b, x, attend, slot, j);
            s = match i >= self.depth.no_grad {
                true => self.model.iteration(&self.w, &s, &e, &mut blocks)?,
                false => tch::no_grad(|| self.model.iteration(&self.w, &s, &e, &mut blocks))?,
            };
        }
        let mut x = self.model.coda_input(&self.w, &s);
        for (j, b) in self.w.coda.iter().enumerate() {
            x = self.layer(b, &x, attend, &mut cache.coda, j)?;
        }
        Ok(rms_norm(&x, &self.w.ln_f, cfg.norm_eps))
    }
}
