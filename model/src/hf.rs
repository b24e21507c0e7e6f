//! Huginn's Hugging Face layout (reference §6.3): `transformer.*` keys, a copied `lm_head.weight`, the
//! `freqs_cis` buffer, a `config.json` and the two `trust_remote_code` modeling files.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, TensorFiles};
use crate::config::{BlockKind, HuginnConfig, StateInit};
use crate::huginn::{Huginn, Precision};
use crate::params;
use crate::st;

const MODELING_PY: &str = include_str!("../hf/raven_modeling_minimal.py");
const CONFIG_PY: &str = include_str!("../hf/raven_config_minimal.py");
pub const LM_HEAD: &str = "lm_head.weight";
pub const FREQS_CIS: &str = "freqs_cis";

/// Muninn name → HF key: `transformer.` prefix, and the core stack is called `core_block`.
pub fn hf_key(name: &str) -> String {
    match name.strip_prefix("core.") {
        Some(rest) => format!("transformer.core_block.{rest}"),
        None => format!("transformer.{name}"),
    }
}

/// dtype of exported weights. `freqs_cis` always stays fp32, as in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    Bf16,
}

impl std::str::FromStr for ExportDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(ExportDtype::F32),
            "bf16" | "bfloat16" => Ok(ExportDtype::Bf16),
            other => bail!("unknown dtype `{other}` (expected f32 or bf16)"),
        }
    }
}

impl ExportDtype {
    pub(crate) fn kind(self) -> Kind {
        match self {
            ExportDtype::F32 => Kind::Float,
            ExportDtype::Bf16 => Kind::BFloat16,
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
        }
    }
}

/// The `config.json` that `RavenConfig` reads.
pub fn config_json(cfg: &HuginnConfig, dtype: ExportDtype) -> Value {
    json!({
        "model_type": "huginn_raven",
        "architectures": ["RavenForCausalLM"],
        "auto_map": {
            "AutoConfig": "raven_config_minimal.RavenConfig",
            "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM"
        },
        "n_embd": cfg.n_embd,
        "n_heads": cfg.n_heads,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "n_layers": cfg.n_layers_in_prelude + cfg.n_layers_in_recurrent_block + cfg.n_layers_in_coda,
        "block_size": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "padding_multiple": cfg.padding_multiple,
        "tie_embeddings": cfg.tie_embeddings,
        "scale_embedding": cfg.scale_embeddings,
        "intermediate_size": cfg.intermediate_size,
        "bias": false,
        "architecture_class_name": "RecurrentGPT",
        "block_class_name": block_class_name(cfg.block),
        "norm_class_name": "RMSNorm_llama",
        "norm_eps": cfg.norm_eps,
        "mlp_class_name": "GatedMLP",
        "nonlin_name": "SiLU",
        "init_strategy": "takase",
        "init_orthogonal": false,
        "state_init": cfg.state_init.to_string(),
        "injection_type": "linear",
        "n_layers_in_prelude": cfg.n_layers_in_prelude,
        "n_layers_in_recurrent_block": cfg.n_layers_in_recurrent_block,
        "n_layers_in_coda": cfg.n_layers_in_coda,
        "mean_recurrence": cfg.mean_recurrence,
        "mean_backprop_depth": cfg.mean_backprop_depth,
        "sampling_scheme": "poisson-lognormal-filling",
        "qk_bias": cfg.qk_bias,
        "activation_checkpoint_impl": "per-iteration",
        "rope_base": cfg.rope_base,
        "rope_scaling": crate::llama_hf::rope_scaling_json(cfg.rope_scaling.as_ref()),
        "torch_dtype": dtype.torch_name(),
        "muninn_name": cfg.name,
    })
}

/// Reads an HF `config.json`; absent fields take `RavenConfig`'s defaults (the nebel shape).
pub fn config_from_json(path: &Path) -> Result<HuginnConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let nebel = HuginnConfig::preset("nebel-raven-3.5b").expect("preset exists");
    let int = |key: &str, default: i64| -> Result<i64> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_i64().with_context(|| {
                format!("{}: `{key}` must be an integer, found {x}", path.display())
            }),
        }
    };
    let float = |key: &str, default: f64| -> Result<f64> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().with_context(|| {
                format!("{}: `{key}` must be a number, found {x}", path.display())
            }),
        }
    };
    let require = |key: &str, want: Value, default: Value| -> Result<()> {
        let got = v.get(key).cloned().unwrap_or(default);
        ensure!(
            got == want,
            "{}: `{key}` = {got}, Muninn's Huginn supports only {want}",
            path.display()
        );
        Ok(())
    };
    require("injection_type", json!("linear"), json!("linear"))?;
    require("bias", json!(false), json!(false))?;
    let state_init = match v
        .get("state_init")
        .and_then(Value::as_str)
        .unwrap_or("like-init")
    {
        "like-init" => StateInit::LikeInit,
        "zero" => StateInit::Zero,
        other => bail!(
            "{}: state_init `{other}` is not supported (like-init or zero)",
            path.display()
        ),
    };
    let n_heads = int("n_heads", int("num_attention_heads", nebel.n_heads)?)?;
    let kv_heads = int("num_key_value_heads", n_heads)?;
    let block = match v
        .get("block_class_name")
        .and_then(Value::as_str)
        .unwrap_or("SandwichBlock")
    {
        "SandwichBlock" => BlockKind::Sandwich,
        "PreNormBlock" => BlockKind::PreNorm,
        other => bail!(
            "{}: block_class_name `{other}` is not supported (SandwichBlock or PreNormBlock)",
            path.display()
        ),
    };
    let flag = |key: &str| -> Result<bool> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(true),
            Some(x) => x.as_bool().with_context(|| {
                format!(
                    "{}: `{key}` must be true or false, found {x}",
                    path.display()
                )
            }),
        }
    };
    let cfg = HuginnConfig {
        name: v
            .get("muninn_name")
            .and_then(Value::as_str)
            .unwrap_or("huginn-hf")
            .to_string(),
        n_embd: int("n_embd", nebel.n_embd)?,
        n_heads,
        intermediate_size: int("intermediate_size", nebel.intermediate_size)?,
        vocab_size: int("vocab_size", nebel.vocab_size)?,
        padding_multiple: int("padding_multiple", nebel.padding_multiple)?,
        block_size: int("block_size", nebel.block_size)?,
        n_layers_in_prelude: int("n_layers_in_prelude", nebel.n_layers_in_prelude)?,
        n_layers_in_recurrent_block: int(
            "n_layers_in_recurrent_block",
            nebel.n_layers_in_recurrent_block,
        )?,
        n_layers_in_coda: int("n_layers_in_coda", nebel.n_layers_in_coda)?,
        mean_recurrence: int("mean_recurrence", nebel.mean_recurrence)?,
        mean_backprop_depth: int("mean_backprop_depth", nebel.mean_backprop_depth)?,
        norm_eps: float("norm_eps", nebel.norm_eps)?,
        rope_base: float("rope_base", nebel.rope_base)?,
        qk_bias: v.get("qk_bias").and_then(Value::as_bool).unwrap_or(true),
        state_init,
        block,
        n_kv_heads: (kv_heads != n_heads).then_some(kv_heads),
        tie_embeddings: flag("tie_embeddings")?,
        scale_embeddings: flag("scale_embedding")?,
        attention_bias: false,
        qk_norm: false,
        rope_scaling: crate::llama_hf::rope_scaling_from(
            v.get("rope_scaling"),
            &path.display().to_string(),
        )?,
    };
    cfg.validate()
        .with_context(|| format!("checking {}", path.display()))?;
    Ok(cfg)
}

/// The modeling file's block class for `block`.
fn block_class_name(block: BlockKind) -> &'static str {
    match block {
        BlockKind::Sandwich => "SandwichBlock",
        BlockKind::PreNorm => "PreNormBlock",
        BlockKind::PostNorm => "PostNormBlock",
    }
}

/// One tensor of the Raven files: the Muninn parameters it holds, stacked by rows. The Llama
/// blocks' q and k rows are reordered from rotate-half pairs (j, j + hd/2) to Raven's adjacent
/// pairs (2j, 2j + 1), which leaves every attention score as it was.
struct RavenTensor {
    key: String,
    pieces: Vec<Piece>,
}

struct Piece {
    name: String,
    /// The heads of a q or k projection whose rows move to adjacent RoPE pairs.
    rope_heads: Option<i64>,
}

impl Piece {
    fn plain(name: impl Into<String>) -> Self {
        Piece {
            name: name.into(),
            rope_heads: None,
        }
    }
}

/// rows [H·hd, d] from rotate-half order to adjacent pairs, or back (`inverse`).
fn reorder_rope_rows(w: &Tensor, heads: i64, inverse: bool) -> Tensor {
    let (rows, d) = (w.size()[0], w.size()[1]);
    let half = rows / heads / 2;
    let split = if inverse {
        [heads, half, 2, d]
    } else {
        [heads, 2, half, d]
    };
    w.view(split).transpose(1, 2).reshape([rows, d])
}

/// Every tensor of `cfg`'s Raven files (the tied head and `freqs_cis` aside), or why the layout
/// cannot hold this model.
fn raven_tensors(cfg: &HuginnConfig) -> Result<Vec<RavenTensor>> {
    let one = |name: &str| RavenTensor {
        key: if name == params::LM_HEAD {
            LM_HEAD.to_string()
        } else {
            hf_key(name)
        },
        pieces: vec![Piece::plain(name)],
    };
    let Some(shape) = cfg.layer_shape() else {
        return Ok(params::param_specs(cfg)
            .iter()
            .map(|s| one(&s.name))
            .collect());
    };
    ensure!(
        shape.norm == crate::llama::NormPlacement::Pre && !shape.attention_bias && !shape.qk_norm,
        "the Raven layout holds sandwich and pre-norm Llama blocks; this model's blocks are {}{}{} \
         (OLMo-2's post-norm q/k-norm layer and Qwen2's q/k/v biases have no place in it)",
        cfg.block_name(),
        if shape.attention_bias { " with attention biases" } else { "" },
        if shape.qk_norm { " with q/k norms" } else { "" },
    );
    let mut out = vec![one(params::WTE), one(params::ADAPTER), one(params::LN_F)];
    if !cfg.tie_embeddings {
        out.push(one(params::LM_HEAD));
    }
    for (stack, _, count) in params::stacks(cfg) {
        for j in 0..count {
            let n = crate::llama::LayerNames::new(&format!("{stack}.{j}"), shape.norm);
            let at = hf_key(&format!("{stack}.{j}"));
            let rope = |name: &str, heads| Piece {
                name: format!("{name}.weight"),
                rope_heads: Some(heads),
            };
            let fused = |key: &str, pieces| RavenTensor {
                key: format!("{at}.{key}"),
                pieces,
            };
            out.extend([
                fused("norm_1.weight", vec![Piece::plain(&n.attn_norm)]),
                fused(
                    "attn.Wqkv.weight",
                    vec![
                        rope(&n.q, shape.n_heads),
                        rope(&n.k, shape.n_kv_heads),
                        Piece::plain(format!("{}.weight", n.v)),
                    ],
                ),
                fused("attn.proj.weight", vec![Piece::plain(&n.o)]),
                fused("norm_2.weight", vec![Piece::plain(&n.mlp_norm)]),
                fused(
                    "mlp.fc.weight",
                    vec![Piece::plain(&n.gate), Piece::plain(&n.up)],
                ),
                fused("mlp.proj.weight", vec![Piece::plain(&n.down)]),
            ]);
        }
    }
    Ok(out)
}

/// Writes `model` in the HF layout into the new directory `out`.
pub fn export(model: &Huginn, out: &Path, dtype: ExportDtype) -> Result<()> {
    let cfg = model.config();
    let layout = raven_tensors(cfg)?;
    let kind = dtype.kind();
    let weights: std::collections::HashMap<String, Tensor> =
        model.params().named_detached().into_iter().collect();
    let mut tensors: Vec<(String, Tensor)> = layout
        .iter()
        .map(|t| {
            let rows: Vec<Tensor> = t
                .pieces
                .iter()
                .map(|p| {
                    let w = &weights[&p.name];
                    match p.rope_heads {
                        Some(heads) => reorder_rope_rows(w, heads, false),
                        None => w.shallow_clone(),
                    }
                })
                .collect();
            (t.key.clone(), Tensor::cat(&rows, 0).to_kind(kind))
        })
        .collect();
    if cfg.tie_embeddings {
        tensors.push((LM_HEAD.to_string(), weights[params::WTE].to_kind(kind)));
    }
    tensors.push((FREQS_CIS.to_string(), model.freqs_cis()));
    let config = serde_json::to_string_pretty(&config_json(model.config(), dtype))?;
    checkpoint::write_new_dir(out, |dir| {
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        st::write(&dir.join("model.safetensors"), &tensors, Some(meta))?;
        for (name, text) in [
            ("config.json", config.as_str()),
            ("raven_config_minimal.py", CONFIG_PY),
            ("raven_modeling_minimal.py", MODELING_PY),
        ] {
            std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    })
}

/// The safetensors files of an HF directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    ensure!(
        index_path.exists(),
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    );
    let text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("reading {}", index_path.display()))?;
    let index: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index_path.display()))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no `weight_map` object", index_path.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Reads an HF-layout directory (a Muninn export or the released huginn-0125) into a model on the CPU.
pub fn import(dir: &Path) -> Result<Huginn> {
    ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let cfg = config_from_json(&dir.join("config.json"))?;
    let model = Huginn::new(cfg, Device::Cpu, Precision::F32)?;
    let files = TensorFiles::open(&weight_files(dir)?)?;
    let layout = raven_tensors(model.config())?;
    let known: std::collections::BTreeSet<&str> = layout
        .iter()
        .map(|t| t.key.as_str())
        .chain([LM_HEAD, FREQS_CIS])
        .collect();
    if let Some(extra) = files.names().into_iter().find(|n| !known.contains(n)) {
        bail!(
            "{}: unexpected tensor `{extra}` (not a parameter of the `{}` shape)",
            files.describe(),
            model.config().name
        );
    }
    let specs: std::collections::HashMap<&str, &params::ParamSpec> = model
        .params()
        .specs()
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    for t in &layout {
        let shapes: Vec<&[i64]> = t
            .pieces
            .iter()
            .map(|p| &specs[p.name.as_str()].shape[..])
            .collect();
        let mut want = shapes[0].to_vec();
        want[0] = shapes.iter().map(|s| s[0]).sum();
        let stored = files
            .shape(&t.key)
            .with_context(|| format!("{}: missing tensor `{}`", files.describe(), t.key))?;
        ensure!(
            stored == want,
            "{}: tensor `{}` has shape {stored:?}, config.json implies {want:?}",
            files.describe(),
            t.key
        );
        let rows: Vec<i64> = shapes.iter().map(|s| s[0]).collect();
        let value = files.get(&t.key)?.to_kind(Kind::Float);
        for (piece, part) in t.pieces.iter().zip(value.split_with_sizes(&rows, 0)) {
            let part = match piece.rope_heads {
                Some(heads) => reorder_rope_rows(&part, heads, true),
                None => part,
            };
            model.params().set(&piece.name, &part)?;
        }
    }
    // A tied model's head is its embedding; refuse a checkpoint whose head was trained apart.
    if model.config().tie_embeddings && files.names().contains(LM_HEAD) {
        let head = files.get(LM_HEAD)?.to_kind(Kind::Float);
        let wte = model
            .params()
            .named_detached()
            .into_iter()
            .find(|(n, _)| n == params::WTE)
            .expect("wte")
            .1;
        ensure!(
            head.size() == wte.size() && head.equal(&wte.to_kind(head.kind())),
            "{}: `{LM_HEAD}` differs from `transformer.wte.weight` and config.json ties them",
            files.describe()
        );
    }
    if files.names().contains(FREQS_CIS) {
        let stored = files.get(FREQS_CIS)?.to_kind(Kind::Float);
        let ours = model.freqs_cis();
        ensure!(
            stored.size() == ours.size() && stored.allclose(&ours, 1e-4, 1e-5, false),
            "{}: `{FREQS_CIS}` does not match the RoPE of config.json (rope_base, rope_scaling, head dim, block_size)",
            files.describe()
        );
    }
    Ok(model)
}
