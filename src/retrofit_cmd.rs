//! `muninn retrofit`: a pretrained Llama-style model becomes a recurrent-depth (Huginn) checkpoint.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use muninn_model::retrofit::{self, AdapterInit, Split};
use muninn_model::{checkpoint, llama_hf, Model, Precision};
use tch::Device;

#[derive(Args)]
pub struct RetrofitArgs {
    /// A Hugging Face directory (Llama, TinyLlama, Llama-3.2, Qwen2 or OLMo-2 layout: config.json and
    /// safetensors, single or sharded) or a Muninn `gpt` checkpoint.
    src: PathBuf,
    /// Source layers of the prelude, half-open: 0..4 = layers 0–3.
    #[arg(long)]
    prelude: String,
    /// Source layers of the core (run r times).
    #[arg(long)]
    core: String,
    /// Source layers of the coda; the layers between core and coda ranges and outside them are dropped.
    #[arg(long)]
    coda: String,
    /// The new adapter: `random` (PyTorch's Linear init, as the paper) or `identity-e` (passes e
    /// through and ignores s, so r = 1 reproduces the kept layers).
    #[arg(long, default_value = "random")]
    adapter_init: AdapterInit,
    /// r̄ recorded in the model (its default test-time depth; training takes [recurrence]).
    #[arg(long, default_value_t = 32)]
    mean_recurrence: i64,
    /// k̄ recorded in the model [default: min(8, r̄)].
    #[arg(long)]
    backprop_depth: Option<i64>,
    /// Seed of the random adapter.
    #[arg(long, default_value_t = 233)]
    seed: u64,
    /// New checkpoint directory (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn retrofit(a: RetrofitArgs) -> Result<()> {
    let src = &a.src;
    let gpt = if src.join("config.json").is_file() {
        match llama_hf::model_type(src)?.as_deref() {
            Some(t) if llama_hf::Layout::from_model_type(t).is_some() => {
                llama_hf::import(src).with_context(|| format!("reading {}", src.display()))?
            }
            other => bail!(
                "{}: model_type {} is not a Llama-style layout muninn retrofit reads ({})",
                src.join("config.json").display(),
                other.map_or("(none)".to_string(), |t| format!("`{t}`")),
                llama_hf::Layout::MODEL_TYPES.join(", ")
            ),
        }
    } else {
        match checkpoint::load_any(src, Device::Cpu, Precision::F32)? {
            Model::Gpt(m) => m,
            m => bail!(
                "{} holds a {} model: muninn retrofit takes a gpt checkpoint or a Hugging Face Llama-style directory",
                src.display(),
                m.family().name()
            ),
        }
    };
    let split = Split {
        prelude: retrofit::parse_range("prelude", &a.prelude)?,
        core: retrofit::parse_range("core", &a.core)?,
        coda: retrofit::parse_range("coda", &a.coda)?,
    };
    let k = a.backprop_depth.unwrap_or(a.mean_recurrence.min(8));
    let cfg = retrofit::config(&gpt, &split, a.mean_recurrence, k)?;
    let block = cfg.block_name();
    let huginn = retrofit::retrofit(&gpt, &split, cfg, a.adapter_init, a.seed)?;
    let numel = huginn.params().numel();
    let model = Model::Huginn(huginn);
    checkpoint::save_new(&model, &a.out)?;
    let tokenizer = src.join("tokenizer.json");
    if tokenizer.is_file() {
        std::fs::copy(&tokenizer, a.out.join("tokenizer.json"))
            .with_context(|| format!("copying {} into {}", tokenizer.display(), a.out.display()))?;
    }
    let dropped = gpt.config().n_layers
        - (split.prelude.end - split.prelude.start)
        - (split.core.end - split.core.start)
        - (split.coda.end - split.coda.start);
    println!(
        "wrote {} (huginn, {} blocks: prelude {:?}, core {:?}, coda {:?}, {dropped} layers dropped; {} parameters)",
        a.out.display(),
        block,
        split.prelude,
        split.core,
        split.coda,
        numel
    );
    Ok(())
}
