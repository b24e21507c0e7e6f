//! The GPT family in Hugging Face's layouts: `LlamaForCausalLM`, and the two that differ from it only
//! in biases and norm placement, `Qwen2ForCausalLM` and `Olmo2ForCausalLM`. Muninn's GPT parameter
//! names are the HF keys, so the weights map one to one; only `config.json` is translated.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::checkpoint::{self, TensorFiles};
use crate::gpt::{Gpt, GptConfig, NormPlacement, RopeScaling};
use crate::hf::ExportDtype;
use crate::huginn::Precision;
use crate::st;

/// The HF architectures a GPT shape can be written as and read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Llama,
    /// Llama plus biases on q, k and v.
    Qwen2,
    /// Norms after attention and MLP instead of before, plus q/k norms.
    Olmo2,
}

impl Layout {
    pub const MODEL_TYPES: [&'static str; 3] = ["llama", "qwen2", "olmo2"];

    pub fn from_model_type(t: &str) -> Option<Self> {
        Some(match t {
            "llama" => Layout::Llama,
            "qwen2" => Layout::Qwen2,
            "olmo2" => Layout::Olmo2,
            _ => return None,
        })
    }

    /// The layout whose modeling code computes what `cfg` does.
    pub fn of(cfg: &GptConfig) -> Result<Self> {
        Ok(match (cfg.norm, cfg.qk_norm, cfg.attention_bias) {
            (NormPlacement::Pre, false, false) => Layout::Llama,
            (NormPlacement::Pre, false, true) => Layout::Qwen2,
            (NormPlacement::Post, true, false) => Layout::Olmo2,
            (norm, qk_norm, bias) => bail!(
                "no Hugging Face layout has norm = {norm:?}, qk_norm = {qk_norm}, attention_bias = {bias} \
                 (llama: pre, false, false; qwen2: pre, false, true; olmo2: post, true, false)"
            ),
        })
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Layout::Llama => "llama",
            Layout::Qwen2 => "qwen2",
            Layout::Olmo2 => "olmo2",
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            Layout::Llama => "LlamaForCausalLM",
            Layout::Qwen2 => "Qwen2ForCausalLM",
            Layout::Olmo2 => "Olmo2ForCausalLM",
        }
    }
}

/// `config.json` for `cfg` in its layout.
pub fn config_json(cfg: &GptConfig, dtype: ExportDtype) -> Result<Value> {
    let layout = Layout::of(cfg)?;
    let mut v = json!({
        "architectures": [layout.architecture()],
        "model_type": layout.model_type(),
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim(),
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling_json(cfg.rope_scaling.as_ref()),
        "tie_word_embeddings": cfg.tie_embeddings,
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_std,
        "torch_dtype": match dtype { ExportDtype::F32 => "float32", ExportDtype::Bf16 => "bfloat16" },
        "muninn_name": cfg.name,
    });
    match layout {
        Layout::Llama => {
            v["attention_bias"] = json!(false);
            v["mlp_bias"] = json!(false);
        }
        Layout::Qwen2 => v["use_sliding_window"] = json!(false),
        Layout::Olmo2 => v["attention_bias"] = json!(false),
    }
    Ok(v)
}

/// Reads an HF `config.json` of a Llama, Qwen2 or OLMo-2 model; anything Muninn's GPT would compute
/// differently is refused by key.
pub fn config_from_json(path: &Path) -> Result<GptConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let at = path.display();
    let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let layout = Layout::from_model_type(model_type).with_context(|| {
        format!(
            "{at}: model_type `{model_type}` is not one of {}",
            Layout::MODEL_TYPES.join(", ")
        )
    })?;
    let present = |key: &str| v.get(key).is_some_and(|x| !x.is_null());
    let int = |key: &str| -> Result<i64> {
        v.get(key)
            .and_then(Value::as_i64)
            .with_context(|| format!("{at}: `{key}` must be an integer"))
    };
    let int_or = |key: &str, default: i64| if present(key) { int(key) } else { Ok(default) };
    let float_or = |key: &str, default: f64| -> Result<f64> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .with_context(|| format!("{at}: `{key}` must be a number, found {x}")),
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_bool()
                .with_context(|| format!("{at}: `{key}` must be true or false, found {x}")),
        }
    };
    let refuse_true = |key: &str, why: &str| -> Result<()> {
        ensure!(
            !flag(key, false)?,
            "{at}: `{key}` = true is not supported ({why})"
        );
        Ok(())
    };
    let (d, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    let kv = int_or("num_key_value_heads", heads)?;
    if present("head_dim") {
        let hd = int("head_dim")?;
        ensure!(
            hd * heads == d,
            "{at}: head_dim = {hd} with {heads} heads is not hidden_size = {d} (Muninn's GPT needs head_dim = hidden_size / num_attention_heads)"
        );
    }
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    ensure!(
        act == "silu",
        "{at}: hidden_act = `{act}`, Muninn's GPT computes SwiGLU with silu"
    );
    match layout {
        Layout::Llama => {
            refuse_true("attention_bias", "Llama's puts a bias on o_proj too")?;
            refuse_true("mlp_bias", "the MLP has no biases")?;
        }
        Layout::Qwen2 => refuse_true("use_sliding_window", "attention is full")?,
        Layout::Olmo2 => refuse_true("attention_bias", "OLMo-2 has none")?,
    }
    let rope_scaling = rope_scaling_from(v.get("rope_scaling"), &at.to_string())?;
    let name = v
        .get("muninn_name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("{model_type}-import"), String::from);
    let cfg = GptConfig {
        name,
        n_embd: d,
        n_layers: int("num_hidden_layers")?,
        n_heads: heads,
        n_kv_heads: kv,
        intermediate_size: int("intermediate_size")?,
        vocab_size: int("vocab_size")?,
        block_size: int("max_position_embeddings")?,
        norm_eps: float_or(
            "rms_norm_eps",
            if layout == Layout::Olmo2 { 1e-5 } else { 1e-6 },
        )?,
        rope_theta: float_or("rope_theta", 10_000.0)?,
        rope_scaling,
        tie_embeddings: flag("tie_word_embeddings", false)?,
        attention_bias: layout == Layout::Qwen2,
        norm: match layout {
            Layout::Olmo2 => NormPlacement::Post,
            _ => NormPlacement::Pre,
        },
        qk_norm: layout == Layout::Olmo2,
        init_std: float_or("initializer_range", 0.02)?,
    };
    cfg.validate().with_context(|| format!("checking {at}"))?;
    Ok(cfg)
}

/// Writes `model` as an HF directory `transformers` loads without remote code.
pub fn export(model: &Gpt, out: &Path, dtype: ExportDtype) -> Result<()> {
    let config = serde_json::to_string_pretty(&config_json(model.config(), dtype)?)?;
    let tensors: Vec<(String, Tensor)> = model
        .params()
        .named_detached()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(dtype.kind())))
        .collect();
    checkpoint::write_new_dir(out, |dir| {
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        st::write(&dir.join("model.safetensors"), &tensors, Some(meta))?;
        std::fs::write(dir.join("config.json"), &config).context("writing config.json")
    })
}

/// Reads an HF directory of a Llama, Qwen2 or OLMo-2 model into a GPT on the CPU. A tied model's
/// `lm_head.weight`, where stored, must equal the embedding.
pub fn import(dir: &Path) -> Result<Gpt> {
    ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let cfg = config_from_json(&dir.join("config.json"))?;
    let tied = cfg.tie_embeddings;
    let model = Gpt::new(cfg, Device::Cpu, Precision::F32)?;
    let files = TensorFiles::open(&crate::hf::weight_files(dir)?)?;
    let ignored: &[&str] = if tied { &[crate::gpt::LM_HEAD] } else { &[] };
    checkpoint::load_weights(&model, &files, str::to_string, ignored)?;
    if tied && files.names().contains(crate::gpt::LM_HEAD) {
        let head = files.get(crate::gpt::LM_HEAD)?;
        let embed = files.get(crate::gpt::EMBED)?;
        ensure!(
            head.equal(&embed),
            "{}: `lm_head.weight` differs from the embedding, but config.json ties them",
            files.describe()
        );
    }
    Ok(model)
}

/// The `model_type` of an HF directory's config.json, if any.
pub fn model_type(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(v.get("model_type")
        .and_then(Value::as_str)
        .map(String::from))
}

/// `rope_scaling` as transformers writes it (`null` without scaling).
pub(crate) fn rope_scaling_json(scaling: Option<&RopeScaling>) -> Value {
    scaling.map_or(Value::Null, |s| {
        json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })
    })
}

/// Reads a `rope_scaling` value of the file `at`: absent, `default` or `llama3`.
pub(crate) fn rope_scaling_from(value: Option<&Value>, at: &str) -> Result<Option<RopeScaling>> {
    let scaling = match value {
        None | Some(Value::Null) => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            ensure!(
                kind == "llama3" || kind == "default",
                "{at}: rope_scaling type `{kind}` is not supported (llama3 only)"
            );
            let num = |key: &str| -> Result<f64> {
                s.get(key)
                    .and_then(Value::as_f64)
                    .with_context(|| format!("{at}: rope_scaling.{key} must be a number"))
            };
            match kind {
                "default" => None,
                _ => Some(RopeScaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?
                        as i64,
                }),
            }
        }
    };
    Ok(scaling)
}
