//! The parameter list of a Huginn shape: one source of truth for names, shapes, init and grouping.
//!
//! Counting parameters and FLOPs, initialising, saving, loading and the HF key mapping all walk this
//! list, so none of them can disagree about what the model holds. Counting never allocates.

use anyhow::{ensure, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::HuginnConfig;

/// Which part of the model a parameter belongs to (for `model info` and telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Embedding,
    Prelude,
    Adapter,
    Core,
    Coda,
    FinalNorm,
    /// A plain transformer's stack of layers (GPT).
    Layers,
    /// An untied output head (GPT).
    Head,
}

impl Part {
    /// Huginn's parts, in `model info`'s order.
    pub const HUGINN: [Part; 6] = [
        Part::Embedding,
        Part::Prelude,
        Part::Adapter,
        Part::Core,
        Part::Coda,
        Part::FinalNorm,
    ];

    /// The GPT family's parts.
    pub const GPT: [Part; 4] = [Part::Embedding, Part::Layers, Part::FinalNorm, Part::Head];

    pub fn label(self) -> &'static str {
        match self {
            Part::Embedding => "embedding (tied head)",
            Part::Prelude => "prelude",
            Part::Adapter => "adapter",
            Part::Core => "core block",
            Part::Coda => "coda",
            Part::FinalNorm => "ln_f",
            Part::Layers => "layers",
            Part::Head => "lm_head (untied)",
        }
    }
}

/// How a parameter is initialised (`takase`, reference §1.8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std) truncated at ±3·std.
    TruncNormal {
        std: f64,
    },
    /// JAX's corrected truncated normal (TRM): Normal(0, σ′) clipped at ±2σ′ with
    /// σ′ = std / 0.8796, so that the truncated draw's std is `std` itself.
    JaxTruncNormal {
        std: f64,
    },
    /// Every element `value` (e.g. TRM's q-head bias, −5).
    Const(f64),
    Ones,
    Zeros,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Muninn's name, also the key in `model.safetensors`.
    pub name: String,
    pub shape: Vec<i64>,
    pub part: Part,
    pub init: Init,
}

impl ParamSpec {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// The names of one sandwich block's parameters under `prefix` (e.g. `core.2`).
pub struct BlockNames {
    pub norms: [String; 4],
    pub wqkv: String,
    pub qk_bias: String,
    pub attn_proj: String,
    pub fc: String,
    pub mlp_proj: String,
}

impl BlockNames {
    pub fn new(prefix: &str) -> Self {
        BlockNames {
            norms: [1, 2, 3, 4].map(|i| format!("{prefix}.norm_{i}.weight")),
            wqkv: format!("{prefix}.attn.Wqkv.weight"),
            qk_bias: format!("{prefix}.attn.qk_bias"),
            attn_proj: format!("{prefix}.attn.proj.weight"),
            fc: format!("{prefix}.mlp.fc.weight"),
            mlp_proj: format!("{prefix}.mlp.proj.weight"),
        }
    }
}

pub const WTE: &str = "wte.weight";
pub const ADAPTER: &str = "adapter.weight";
pub const LN_F: &str = "ln_f.weight";
/// An untied head (`tie_embeddings = false`).
pub const LM_HEAD: &str = "lm_head.weight";

/// The stacks of blocks, as (Muninn prefix, part, count).
pub fn stacks(cfg: &HuginnConfig) -> [(&'static str, Part, i64); 3] {
    [
        ("prelude", Part::Prelude, cfg.n_layers_in_prelude),
        ("core", Part::Core, cfg.n_layers_in_recurrent_block),
        ("coda", Part::Coda, cfg.n_layers_in_coda),
    ]
}

/// Every parameter of the shape, in a fixed order (embedding, prelude, adapter, core, coda, ln_f).
pub fn param_specs(cfg: &HuginnConfig) -> Vec<ParamSpec> {
    let (d, h, hd, i, v) = (
        cfg.n_embd,
        cfg.n_heads,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let std = Init::TruncNormal {
        std: cfg.init_std(),
    };
    let out = Init::TruncNormal {
        std: cfg.out_proj_std(),
    };
    let spec = |name: &str, shape: Vec<i64>, part, init| ParamSpec {
        name: name.to_string(),
        shape,
        part,
        init,
    };

    let mut specs = vec![spec(WTE, vec![v, d], Part::Embedding, std)];
    let block = |specs: &mut Vec<ParamSpec>, prefix: String, part: Part| {
        if let Some(shape) = cfg.layer_shape() {
            let names = crate::llama::LayerNames::new(&prefix, shape.norm);
            specs.extend(names.specs(&shape, part, std, out));
            return;
        }
        let n = BlockNames::new(&prefix);
        let [n1, n2, n3, n4] = &n.norms;
        specs.push(spec(n1, vec![d], part, Init::Ones));
        specs.push(spec(&n.wqkv, vec![3 * d, d], part, std));
        if cfg.qk_bias {
            specs.push(spec(&n.qk_bias, vec![2, 1, h, hd], part, Init::Zeros));
        }
        specs.push(spec(&n.attn_proj, vec![d, d], part, out));
        specs.push(spec(n2, vec![d], part, Init::Ones));
        // The training code initialises both halves of the fused fc with `std` (§1.8 note).
        specs.push(spec(&n.fc, vec![2 * i, d], part, std));
        specs.push(spec(&n.mlp_proj, vec![d, i], part, out));
        specs.push(spec(n3, vec![d], part, Init::Ones));
        specs.push(spec(n4, vec![d], part, Init::Ones));
    };
    let [prelude, core, coda] = stacks(cfg);
    let (prefix, part, count) = prelude;
    (0..count).for_each(|j| block(&mut specs, format!("{prefix}.{j}"), part));
    specs.push(spec(ADAPTER, vec![d, 2 * d], Part::Adapter, std));
    for (prefix, part, count) in [core, coda] {
        (0..count).for_each(|j| block(&mut specs, format!("{prefix}.{j}"), part));
    }
    specs.push(spec(LN_F, vec![d], Part::FinalNorm, Init::Ones));
    if !cfg.tie_embeddings {
        specs.push(spec(LM_HEAD, vec![v, d], Part::Head, std));
    }
    specs
}

/// The flat-buffer ranges whose gradients become final at each stage of
/// [`crate::huginn::Huginn::loss_backward`], in that order: coda + `ln_f`, then adapter + core, then
/// embedding (the tied head) + prelude. They are contiguous because of the order of [`param_specs`].
pub fn grad_regions(specs: &[ParamSpec]) -> [std::ops::Range<i64>; 3] {
    let offset_of = |pred: &dyn Fn(&ParamSpec) -> bool| {
        let i = specs.iter().position(pred).unwrap_or(specs.len());
        specs[..i].iter().map(ParamSpec::numel).sum::<i64>()
    };
    let adapter = offset_of(&|s| s.part == Part::Adapter);
    let coda = offset_of(&|s| matches!(s.part, Part::Coda | Part::FinalNorm));
    let total = specs.iter().map(ParamSpec::numel).sum();
    [coda..total, adapter..coda, 0..adapter]
}

/// Parameter counts by part, without allocating anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamCounts {
    pub by_part: Vec<(Part, i64)>,
    pub total: i64,
}

impl ParamCounts {
    pub fn of(cfg: &HuginnConfig) -> Self {
        let mut parts = Part::HUGINN.to_vec();
        if !cfg.tie_embeddings {
            parts.push(Part::Head);
        }
        Self::from_specs(&param_specs(cfg), &parts)
    }

    /// Counts of `parts` (in that order) over `specs`.
    pub fn from_specs(specs: &[ParamSpec], parts: &[Part]) -> Self {
        let by_part: Vec<(Part, i64)> = parts
            .iter()
            .map(|&p| {
                (
                    p,
                    specs
                        .iter()
                        .filter(|s| s.part == p)
                        .map(ParamSpec::numel)
                        .sum(),
                )
            })
            .collect();
        let total = by_part.iter().map(|(_, n)| n).sum();
        ParamCounts { by_part, total }
    }

    pub fn part(&self, part: Part) -> i64 {
        self.by_part
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(0, |(_, n)| *n)
    }

    /// Parameters "materialised" when the core runs `r` times: everything else once, the core block r
    /// times (the adapter counts as static, as in the reference's 52.6 B figure at r = 32).
    pub fn unrolled(&self, r: i64) -> i64 {
        self.total + (r - 1) * self.part(Part::Core)
    }
}

/// One draw of Normal(0, std) truncated at ±3·std, by rejection (0.27% of draws are redrawn).
fn sample_trunc_normal(rng: &mut ChaCha8Rng, std: f64) -> f64 {
    loop {
        let z: f64 = StandardNormal.sample(rng);
        if z.abs() <= 3.0 {
            return z * std;
        }
    }
}

/// The std of a standard normal truncated to ±2: JAX's `truncated_normal` divides by it.
pub const TRUNC2_STD: f64 = 0.879_626_29;

/// One draw of JAX's corrected truncated normal: Normal(0, σ′) clipped at ±2σ′, σ′ = std / 0.8796.
pub fn sample_jax_trunc_normal(rng: &mut ChaCha8Rng, std: f64) -> f64 {
    loop {
        let z: f64 = StandardNormal.sample(rng);
        if z.abs() <= 2.0 {
            return z * std / TRUNC2_STD;
        }
    }
}

/// Draws a ±3σ truncated normal in place from torch's RNG (on the tensor's device), the way `torch.nn.init.trunc_normal_` does: inverse-CDF sampling.
pub fn trunc_normal_(t: &mut Tensor, std: f64) {
    // u ~ U(2Φ(a)−1, 2Φ(b)−1) with a = −3, b = 3 in units of σ; then σ·√2·erfinv(u), clamped.
    let phi = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let (lo, hi) = (2.0 * phi(-3.0) - 1.0, 2.0 * phi(3.0) - 1.0);
    tch::no_grad(|| {
        let _ = t.uniform_(lo, hi);
        let _ = t.erfinv_();
        let _ = t.g_mul_scalar_(std * std::f64::consts::SQRT_2);
        let _ = t.clamp_(-3.0 * std, 3.0 * std);
    });
}

/// erf for the two constants above; Abramowitz–Stegun 7.1.26 is far more precise than needed.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// All parameters in one flat fp32 buffer, and their gradients in another, as Megatron-LM's
/// contiguous buffers and DDP's `gradient_as_bucket_view`: the optimizer, ZeRO-1, the chunked
/// all-reduce and checkpoints work on contiguous chunks, not hundreds of small tensors.
///
/// Each parameter is its own autograd leaf aliasing its range of the flat storage, and its `.grad`
/// aliases its range of the flat gradient, so autograd accumulates in place and a backward costs
/// O(size of the parameters it reaches). (A `narrow` view of one flat leaf, the obvious layout,
/// makes every backward call allocate, zero and add a gradient the size of the whole buffer for
/// every view: O(tensors × parameters), and writes into ranges already handed to communication.)
pub struct FlatParams {
    /// [N] fp32. A leaf that requires grad only so that its `.grad` is the flat gradient buffer;
    /// no forward computes with it.
    flat: Tensor,
    /// One leaf per spec, sharing `flat`'s storage (not an autograd view of it: in-place updates
    /// of `flat` keep them leaves).
    leaves: Vec<Tensor>,
    specs: Vec<ParamSpec>,
    offsets: Vec<i64>,
    /// Whether the gradient buffer exists and every leaf's `.grad` aliases it. Allocated on the
    /// first forward that records a graph, so inference never pays for it.
    grads_attached: std::sync::atomic::AtomicBool,
}

/// A tensor of `shape` over `base`'s storage from element `offset` on (contiguous), with no
/// autograd link to `base`.
fn alias(base: &Tensor, offset: i64, shape: &[i64]) -> Tensor {
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let base = base.detach();
    tch::no_grad(|| {
        Tensor::empty([0], (base.kind(), base.device())).set_source_tensor_storage_offset_(
            &base,
            offset,
            shape,
            strides.as_slice(),
        )
    })
}

impl FlatParams {
    /// Allocates zeros (call [`FlatParams::init`] or load a checkpoint afterwards).
    pub fn zeros(specs: Vec<ParamSpec>, device: Device) -> Self {
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for s in &specs {
            offsets.push(total);
            total += s.numel();
        }
        let flat = Tensor::zeros([total], (Kind::Float, device)).set_requires_grad(true);
        let leaves = specs
            .iter()
            .zip(&offsets)
            .map(|(s, &o)| alias(&flat, o, &s.shape).set_requires_grad(true))
            .collect();
        FlatParams {
            flat,
            leaves,
            specs,
            offsets,
            grads_attached: false.into(),
        }
    }

    /// Initialises every parameter from its spec. Parameter i draws from stream i of a ChaCha8
    /// generator seeded with `seed`: the result depends on nothing but the seed (not the device, the
    /// thread count, or torch's global RNG), so every rank builds identical weights.
    pub fn init(&self, seed: u64) {
        let values: Vec<Vec<f32>> = self
            .specs
            .par_iter()
            .enumerate()
            .map(|(i, spec)| {
                let n = spec.numel() as usize;
                match spec.init {
                    Init::TruncNormal { std } => {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        (0..n)
                            .map(|_| sample_trunc_normal(&mut rng, std) as f32)
                            .collect()
                    }
                    Init::JaxTruncNormal { std } => {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        (0..n)
                            .map(|_| sample_jax_trunc_normal(&mut rng, std) as f32)
                            .collect()
                    }
                    Init::Const(c) => vec![c as f32; n],
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                }
            })
            .collect();
        for ((spec, mut view), v) in self.specs.iter().zip(self.detached_views()).zip(values) {
            let cpu = Tensor::from_slice(&v).view(spec.shape.as_slice());
            tch::no_grad(|| view.copy_(&cpu));
        }
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn numel(&self) -> i64 {
        self.flat.size()[0]
    }

    pub fn device(&self) -> Device {
        self.flat.device()
    }

    /// The flat weights (update them in place under `no_grad`). Its `.grad()` is the flat gradient
    /// buffer, once a forward has recorded a graph.
    pub fn flat(&self) -> &Tensor {
        &self.flat
    }

    fn view_of(base: &Tensor, spec: &ParamSpec, offset: i64) -> Tensor {
        base.narrow(0, offset, spec.numel())
            .view(spec.shape.as_slice())
    }

    /// Allocates the flat gradient (zeros) and points every leaf's `.grad` at its range (a plain
    /// view: only the leaves must not be autograd views of their buffer); once.
    fn attach_grads(&self) {
        use std::sync::atomic::Ordering;
        if self.grads_attached.load(Ordering::Acquire) {
            return;
        }
        let grad = Tensor::zeros([self.numel()], (Kind::Float, self.device()));
        // Shapes, dtypes and devices match by construction: a failure is a bug.
        crate::shim::set_grad(&self.flat, &grad).expect("flat gradient");
        for ((leaf, spec), &o) in self.leaves.iter().zip(&self.specs).zip(&self.offsets) {
            crate::shim::set_grad(leaf, &Self::view_of(&grad, spec, o))
                .unwrap_or_else(|e| panic!("gradient of {}: {e}", spec.name));
        }
        self.grads_attached.store(true, Ordering::Release);
    }

    /// The parameters as autograd leaves, for a forward pass. When autograd is recording, their
    /// gradients accumulate into the flat gradient buffer.
    pub fn views(&self) -> Vec<(&str, Tensor)> {
        if crate::shim::grad_mode_enabled() {
            self.attach_grads();
        }
        self.specs
            .iter()
            .zip(&self.leaves)
            .map(|(s, l)| (s.name.as_str(), l.shallow_clone()))
            .collect()
    }

    /// Views without autograd history, for reading and in-place writes.
    pub fn detached_views(&self) -> Vec<Tensor> {
        let base = self.flat.detach();
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| Self::view_of(&base, s, o))
            .collect()
    }

    pub fn named_detached(&self) -> Vec<(String, Tensor)> {
        self.specs
            .iter()
            .map(|s| s.name.clone())
            .zip(self.detached_views())
            .collect()
    }

    /// Each parameter's view of `other`, a tensor laid out like the flat buffer (an average of the
    /// weights, say).
    pub fn named_of(&self, other: &Tensor) -> Vec<(String, Tensor)> {
        let base = other.detach();
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| (s.name.clone(), Self::view_of(&base, s, o)))
            .collect()
    }

    /// Gradient of each parameter (zeros where none has been computed yet).
    pub fn named_grads(&self) -> Vec<(String, Tensor)> {
        let g = self.flat.grad();
        let g = if g.defined() {
            g
        } else {
            self.flat.zeros_like()
        };
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| (s.name.clone(), Self::view_of(&g, s, o)))
            .collect()
    }

    pub fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

    /// Copies `value` into the parameter `name`, checking the shape.
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        let idx = self.specs.iter().position(|s| s.name == name);
        let idx =
            idx.ok_or_else(|| anyhow::anyhow!("no parameter named `{name}` in this shape"))?;
        let spec = &self.specs[idx];
        ensure!(
            value.size() == spec.shape,
            "parameter `{name}`: expected shape {:?}, found {:?}",
            spec.shape,
            value.size()
        );
        let mut view = Self::view_of(&self.flat.detach(), spec, self.offsets[idx]);
        tch::no_grad(|| view.copy_(&value.to_kind(Kind::Float)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
        assert!((erf(-3.0 / std::f64::consts::SQRT_2) + 0.997_300_2).abs() < 1e-6);
    }

    #[test]
    fn init_depends_only_on_the_seed_and_follows_the_spec() {
        let cfg = crate::HuginnConfig::preset("micro").unwrap();
        let a = FlatParams::zeros(param_specs(&cfg), Device::Cpu);
        let b = FlatParams::zeros(param_specs(&cfg), Device::Cpu);
        let c = FlatParams::zeros(param_specs(&cfg), Device::Cpu);
        a.init(5);
        b.init(5);
        c.init(6);
        assert!(a.flat().equal(b.flat()));
        assert!(!a.flat().equal(c.flat()));
        for (spec, t) in a.specs().iter().zip(a.detached_views()) {
            match spec.init {
                Init::Ones => assert!(t.eq(1.0).all().int64_value(&[]) == 1, "{}", spec.name),
                Init::JaxTruncNormal { .. } | Init::Const(_) => unreachable!("not in Huginn"),
                Init::Zeros => assert!(t.eq(0.0).all().int64_value(&[]) == 1, "{}", spec.name),
                Init::TruncNormal { std } => {
                    let max = t.abs().max().double_value(&[]);
                    let s = t.std(true).double_value(&[]);
                    assert!(
                        max <= 3.0 * std * (1.0 + 1e-6),
                        "{}: |w| {max} > 3σ",
                        spec.name
                    );
                    assert!(
                        (s / std - 0.9866).abs() < 0.05,
                        "{}: std {s} vs σ {std}",
                        spec.name
                    );
                }
            }
        }
    }

    #[test]
    fn trunc_normal_respects_bounds_and_std() {
        tch::manual_seed(0);
        let mut t = Tensor::zeros([200_000], (Kind::Float, Device::Cpu));
        trunc_normal_(&mut t, 0.02);
        let max = t.abs().max().double_value(&[]);
        let std = t.std(true).double_value(&[]);
        assert!(max <= 0.06 + 1e-7, "max {max}");
        // A ±3σ truncation shrinks the std by a factor 0.9866.
        assert!(
            (std / 0.02 - 0.9866).abs() < 0.01,
            "std ratio {}",
            std / 0.02
        );
    }
}
