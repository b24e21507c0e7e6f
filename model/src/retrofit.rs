//! Retrofitted recurrence (McLeish, Geiping et al. 2025, `mcleish7/retrofitting-recurrence`): a
//! pretrained Llama-style GPT becomes a Huginn model. Some early layers are the prelude, later ones
//! the core, the last ones the coda, the rest are dropped; a new adapter joins s and e; the blocks,
//! the final norm and the (untied) head are the source's.

use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};
use tch::{Device, Kind, Tensor};

use crate::config::{BlockKind, HuginnConfig, StateInit};
use crate::gpt::{NormPlacement, EMBED, LM_HEAD, NORM};
use crate::huginn::{Huginn, Precision};
use crate::{params, Gpt};

/// How the new adapter [d, 2d] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterInit {
    /// PyTorch's default `nn.Linear` init, U(±1/√(2d)): what the retrofit code leaves it at.
    Random,
    /// [0 | I]: e passes through and s is ignored, so one iteration reproduces the kept layers.
    IdentityE,
}

/// Which source layers (half-open ranges of indices) become prelude, core and coda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub prelude: Range<i64>,
    pub core: Range<i64>,
    pub coda: Range<i64>,
}

/// `a..b`, half-open.
pub fn parse_range(flag: &str, text: &str) -> Result<Range<i64>> {
    let (a, b) = text.split_once("..").with_context(|| {
        format!("--{flag} {text}: expected a half-open range START..END, e.g. 0..4")
    })?;
    let num = |s: &str| {
        s.trim()
            .parse::<i64>()
            .with_context(|| format!("--{flag} {text}: `{s}` is not a layer index"))
    };
    let r = num(a)?..num(b)?;
    ensure!(
        r.start >= 0 && r.start <= r.end,
        "--{flag} {text}: START must be >= 0 and <= END"
    );
    Ok(r)
}

impl Split {
    /// Refuses ranges outside the source's `layers`, out of order, overlapping, or an empty core.
    pub fn check(&self, layers: i64) -> Result<()> {
        for (flag, r) in [
            ("prelude", &self.prelude),
            ("core", &self.core),
            ("coda", &self.coda),
        ] {
            ensure!(
                r.end <= layers,
                "--{flag} {}..{}: the source has {layers} layers (0..{layers})",
                r.start,
                r.end
            );
        }
        ensure!(
            !self.core.is_empty(),
            "--core is empty: the core needs at least one layer"
        );
        ensure!(
            self.prelude.end <= self.core.start && self.core.end <= self.coda.start,
            "--prelude {:?}, --core {:?}, --coda {:?} must be in order and must not overlap",
            self.prelude,
            self.core,
            self.coda
        );
        Ok(())
    }
}

/// The Huginn shape of `src` split as `split`, with r̄ and k̄ for its training.
pub fn config(
    src: &Gpt,
    split: &Split,
    mean_recurrence: i64,
    mean_backprop_depth: i64,
) -> Result<HuginnConfig> {
    let g = src.config();
    split.check(g.n_layers)?;
    let len = |r: &Range<i64>| r.end - r.start;
    let cfg = HuginnConfig {
        name: format!("{}-retrofit", g.name),
        n_embd: g.n_embd,
        n_heads: g.n_heads,
        intermediate_size: g.intermediate_size,
        vocab_size: g.vocab_size,
        padding_multiple: 64,
        block_size: g.block_size,
        n_layers_in_prelude: len(&split.prelude),
        n_layers_in_recurrent_block: len(&split.core),
        n_layers_in_coda: len(&split.coda),
        mean_recurrence,
        mean_backprop_depth,
        norm_eps: g.norm_eps,
        rope_base: g.rope_theta,
        qk_bias: false,
        state_init: StateInit::LikeInit,
        block: match g.norm {
            NormPlacement::Pre => BlockKind::PreNorm,
            NormPlacement::Post => BlockKind::PostNorm,
        },
        n_kv_heads: Some(g.n_kv_heads),
        tie_embeddings: false,
        scale_embeddings: false,
        attention_bias: g.attention_bias,
        qk_norm: g.qk_norm,
        rope_scaling: g.rope_scaling.clone(),
    };
    cfg.validate()
        .context("the retrofitted shape (--mean-recurrence, --backprop-depth)")?;
    Ok(cfg)
}

/// The retrofitted model: `cfg` from [`config`], the source's weights where it has them, the
/// adapter as `adapter` says (`seed` draws the random one).
pub fn retrofit(
    src: &Gpt,
    split: &Split,
    cfg: HuginnConfig,
    adapter: AdapterInit,
    seed: u64,
) -> Result<Huginn> {
    let m = Huginn::new(cfg, Device::Cpu, Precision::F32)?;
    let weights: std::collections::HashMap<String, Tensor> =
        src.params().named_detached().into_iter().collect();
    let get = |name: &str| {
        weights
            .get(name)
            .with_context(|| format!("the source has no `{name}`"))
    };
    let head = match src.config().tie_embeddings {
        true => EMBED,
        false => LM_HEAD,
    };
    let mut copied = std::collections::HashSet::new();
    for (ours, theirs) in [
        (params::WTE, EMBED),
        (params::LN_F, NORM),
        (params::LM_HEAD, head),
    ] {
        m.params().set(ours, get(theirs)?)?;
        copied.insert(ours.to_string());
    }
    for (stack, range) in [
        ("prelude", &split.prelude),
        ("core", &split.core),
        ("coda", &split.coda),
    ] {
        for (j, layer) in range.clone().enumerate() {
            let from = format!("model.layers.{layer}.");
            let to = format!("{stack}.{j}.");
            for (name, t) in &weights {
                if let Some(rest) = name.strip_prefix(&from) {
                    let ours = format!("{to}{rest}");
                    m.params().set(&ours, t)?;
                    copied.insert(ours);
                }
            }
        }
    }
    // A block tensor the source lacks would silently keep its random init.
    if let Some(missing) = m
        .params()
        .specs()
        .iter()
        .find(|s| s.name != params::ADAPTER && !copied.contains(&s.name))
    {
        bail!(
            "the source has no tensor for `{}` of the retrofitted model",
            missing.name
        );
    }
    let d = m.config().n_embd;
    let a = match adapter {
        AdapterInit::IdentityE => {
            let eye = Tensor::eye(d, (Kind::Float, Device::Cpu));
            Tensor::cat(&[eye.zeros_like(), eye], 1)
        }
        AdapterInit::Random => {
            let bound = 1.0 / ((2 * d) as f64).sqrt();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let uniform = Uniform::new(-bound, bound).context("the adapter's init bound")?;
            let draws: Vec<f32> = (0..2 * d * d)
                .map(|_| uniform.sample(&mut rng) as f32)
                .collect();
            Tensor::from_slice(&draws).view([d, 2 * d])
        }
    };
    m.params().set(params::ADAPTER, &a)?;
    Ok(m)
}

/// `--adapter-init` by name.
impl std::str::FromStr for AdapterInit {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "random" => AdapterInit::Random,
            "identity-e" => AdapterInit::IdentityE,
            other => bail!("--adapter-init {other}: expected random or identity-e"),
        })
    }
}
