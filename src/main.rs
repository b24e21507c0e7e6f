//! `muninn`: the command line. Thin glue over the crates; every error is printed once, with its
//! chain, and turns into exit code 1.

mod coconut_cmd;
mod data_cmd;
mod eval_cmd;
mod launch_cmd;
mod plot;
mod retrofit_cmd;
mod trm_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use muninn_model::checkpoint::Stored;
use muninn_model::flops::{inference_flops_per_token, train_flops_per_token};
use muninn_model::{
    checkpoint, hf, llama_hf, Depth, GptConfig, HuginnConfig, InitState, Model, ModelConfig,
    ParamCounts, Part, Precision,
};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "muninn",
    version,
    about = "Pretraining framework for recurrent-depth transformers (Huginn) and other latent-reasoning models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect model shapes.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Tokenizer training, shard preparation and verification.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Train a model from a run config (TOML).
    Train {
        config: PathBuf,
        /// Override a config key, e.g. --set train.max_steps=100 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// `auto`: continue from the newest complete checkpoint of the run, if any; or a checkpoint dir.
        #[arg(long)]
        resume: Option<String>,
        /// Start a fresh run from this checkpoint's weights (the same as --set train.init_from=CKPT).
        #[arg(long, value_name = "CKPT")]
        init_from: Option<PathBuf>,
    },
    /// Training checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Write a freshly initialised checkpoint (model.safetensors + config.toml).
    Init {
        /// A named shape (nebel-raven-3.5b, micro, tiny, mini-huginn, gpt-micro, gpt-tiny) or a TOML
        /// file with a [model] table.
        shape: String,
        /// Seed of the initialisation (`takase` for Huginn).
        #[arg(long, default_value_t = 233)]
        seed: u64,
        /// New checkpoint directory (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a Muninn checkpoint to another layout.
    Export {
        checkpoint: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// New output directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// dtype of the exported weights: f32 (as released) or bf16.
        #[arg(long, default_value = "f32")]
        dtype: hf::ExportDtype,
    },
    /// Read a Hugging Face directory into a Muninn checkpoint: Huginn (e.g. huginn-0125), or a Llama,
    /// Qwen2 or OLMo-2 model as the GPT family, by config.json's model_type.
    ImportHf {
        dir: PathBuf,
        /// New checkpoint directory (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Retrofit recurrence into a pretrained Llama-style model (McLeish et al. 2025): its layers
    /// split into prelude, core and coda (the rest dropped), a new adapter, a Huginn checkpoint out.
    Retrofit(retrofit_cmd::RetrofitArgs),
    /// Read a reference TRM state dict (TinyRecursiveModels; keys with or without `_orig_mod.model.` /
    /// `model.`) and its model config dict into a Muninn checkpoint.
    ImportTrm {
        weights: PathBuf,
        /// The reference's model config as JSON (TinyRecursiveReasoningModel_ACTV1Config keys).
        #[arg(long)]
        arch: PathBuf,
        /// New checkpoint directory (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one forward pass and write logits and the final latent state as safetensors.
    Forward(ForwardArgs),
    /// Validation loss and perplexity at several test-time depths: a table, eval.json and eval.png.
    Eval(eval_cmd::EvalArgs),
    /// Sample from a checkpoint behind a KV cache, at a fixed depth or with per-token adaptive exit.
    Generate(eval_cmd::GenerateArgs),
    /// How the latent state converges over iterations: a per-token heatmap and PCA trajectories.
    Latents(eval_cmd::LatentsArgs),
    /// Write a batch job for a cluster (SLURM or this machine) and submit it, in resuming segments.
    Launch(launch_cmd::LaunchArgs),
    /// Prepare a corpus in N parts as a job (a SLURM array, or one after another here), then merge.
    LaunchData(launch_cmd::LaunchDataArgs),
    /// One run per point of a grid of config values (e.g. truncation depths k), as one job.
    Sweep(launch_cmd::SweepArgs),
    /// Compare finished runs: validation loss by k and test-time depth, throughput, memory; a PNG plot.
    Compare(launch_cmd::CompareArgs),
    /// Plot metrics of a run's metrics.jsonl against the step and against wall time (`elapsed_s`).
    Curve(launch_cmd::CurveArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Parameters by part, unrolled count and training FLOPs per token. Allocates no weights.
    Info {
        /// A named shape or a TOML file with a [model] table.
        shape: String,
        /// No-grad iterations n for the FLOP count [default: mean_recurrence - mean_backprop_depth].
        #[arg(long)]
        n: Option<i64>,
        /// Grad iterations k for the FLOP count [default: mean_backprop_depth].
        #[arg(long)]
        k: Option<i64>,
        /// Sequence length for the attention FLOPs [default: block_size].
        #[arg(long)]
        seq_len: Option<i64>,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Write a training checkpoint in the single-file form: one optimizer.safetensors over the
    /// whole flat buffer instead of one shard per rank (for tools; training resumes from either).
    Consolidate {
        checkpoint: PathBuf,
        /// New checkpoint directory (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// safetensors with the keys of recpre/raven_modeling_minimal.py, config.json and modeling files.
    HuginnHf,
    /// A GPT checkpoint as `LlamaForCausalLM` (or Qwen2/OLMo-2 where the shape has their biases or
    /// norm placement): transformers loads it without remote code.
    LlamaHf,
    /// A TRM checkpoint as the reference's state dict (weights.safetensors) and config dict
    /// (arch.json), the EMA weights where the checkpoint has them.
    TrmReference,
}

#[derive(Clone, Copy, ValueEnum)]
enum InitStateArg {
    Zero,
    Random,
}

#[derive(Args)]
struct ForwardArgs {
    checkpoint: PathBuf,
    /// Comma-separated token ids.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present_any = ["text", "batch"],
        conflicts_with = "text"
    )]
    tokens: Vec<i64>,
    /// TRM: a JSON batch (`inputs` [B][seq_len], optional `labels`, −100 = ignore, and
    /// `puzzle_identifiers` [B]), run from the initial carry for --steps supervision steps in eval
    /// mode; OUT holds `logits` [K, B, L, V], `q_halt_logits`, `q_continue_logits` [K, B], `z_H`,
    /// `z_L` [K, B, P+L, D] (fp32).
    #[arg(long, conflicts_with_all = ["text", "tokens"])]
    batch: Option<PathBuf>,
    /// TRM: supervision steps of --batch.
    #[arg(long, default_value_t = 1, requires = "batch")]
    steps: i64,
    /// TRM: also write the first training-mode supervision step (every row from the reset carry,
    /// loss ÷ B before backward): `loss`, `lm_loss`, `q_halt_loss` (f64 [1]) and `grad.<key>` of
    /// every parameter and of the puzzle table.
    #[arg(long, requires = "batch")]
    grads: Option<PathBuf>,
    /// Text to encode (wrapped as <|begin_text|> text), instead of --tokens.
    #[arg(long)]
    text: Option<String>,
    /// tokenizer.json for --text [default: the checkpoint's own, else its run's].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Recurrent iterations r [default: the checkpoint's mean_recurrence]; Huginn only.
    #[arg(long)]
    depth: Option<i64>,
    #[arg(long, value_enum, default_value = "zero")]
    init_state: InitStateArg,
    /// Seed for a random initial state.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// f32 or bf16-mixed.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output safetensors file with `logits` [1, T, V] and `state` [1, T, d] (Huginn's latent state;
    /// GPT's final hidden state), both fp32.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("muninn: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// libtorch takes CPU tensors from glibc's malloc, which returns every block above its mmap
/// threshold to the kernel on free: each training step then page-faults its activations and
/// gradients back in, pages the kernel zeroes first (about 6,000 faults a step at the tiny shape,
/// 8 % of its time). Keeping freed memory in the process for reuse is what a caching allocator does
/// (PyTorch's on GPUs, jemalloc or tcmalloc in its CPU performance guide).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold; larger blocks still go straight to the kernel.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Model(ModelCommand::Info {
            shape,
            n,
            k,
            seq_len,
        }) => model_info(&shape, n, k, seq_len),
        Command::Data(cmd) => data_cmd::run(cmd),
        Command::Train {
            config,
            mut set,
            resume,
            init_from,
        } => {
            if let Some(src) = init_from {
                set.push(format!("train.init_from={}", src.display()));
            }
            use muninn_trainer::train::{self, Resume};
            // Before anything slow: a time-limit signal that arrives during start-up must not kill
            // the process but stop it at its first step.
            let stop = train::stop_on_signals()?;
            // MPI first: a GPU-aware MPI must be initialised before libtorch touches a GPU.
            let mut comm = muninn_trainer::dist::Comm::from_env()?;
            let cfg = muninn_trainer::config::RunConfig::load(&config, &set)?;
            let resume = match resume.as_deref() {
                None => Resume::No,
                Some("auto") => Resume::Auto,
                Some(p) => Resume::Path(PathBuf::from(p)),
            };
            let out = match train::train(&cfg, resume, stop, &mut comm) {
                Ok(out) => out,
                Err(err) if comm.world() > 1 => {
                    // The other ranks would otherwise wait in a collective until the timeout.
                    eprintln!("muninn: rank {}: {err:#}", comm.rank());
                    comm.abort(1);
                    return Err(err);
                }
                Err(err) => return Err(err),
            };
            if !comm.is_root() {
                return Ok(());
            }
            if out.last_loss.is_nan() {
                println!(
                    "{}: already at step {} of {}; nothing to do",
                    cfg.run_dir().display(),
                    out.step,
                    cfg.raw.train.max_steps
                );
            } else {
                println!(
                    "{}: stopped at step {} ({:?}), loss {:.4}",
                    cfg.run_dir().display(),
                    out.step,
                    out.stop,
                    out.last_loss
                );
            }
            Ok(())
        }
        Command::Init { shape, seed, out } => init(&shape, seed, &out),
        Command::Checkpoint(CheckpointCommand::Consolidate { checkpoint, out }) => {
            muninn_trainer::ckpt::consolidate(&checkpoint, &out)
                .with_context(|| format!("consolidating {}", checkpoint.display()))?;
            println!(
                "wrote {} (consolidated from {})",
                out.display(),
                checkpoint.display()
            );
            Ok(())
        }
        Command::Export {
            checkpoint,
            format,
            out,
            dtype,
        } => {
            let model = checkpoint::load_any(&checkpoint, Device::Cpu, Precision::F32)?;
            let written = match (format, &model) {
                (ExportFormat::HuginnHf, Model::Huginn(m)) => {
                    hf::export(m, &out, dtype).map(|()| "huginn-hf")
                }
                (ExportFormat::TrmReference, Model::Trm(m)) => {
                    trm_cmd::export(m, &out, 768).map(|()| "trm-reference")
                }
                (ExportFormat::LlamaHf, Model::Gpt(m)) => {
                    llama_hf::export(m, &out, dtype).map(|()| {
                        llama_hf::Layout::of(m.config()).map_or("llama-hf", |l| l.model_type())
                    })
                }
                (_, m) => anyhow::bail!(
                    "{} holds a {} model: export it with --format {}",
                    checkpoint.display(),
                    m.family().name(),
                    match m {
                        Model::Huginn(_) => "huginn-hf",
                        Model::Gpt(_) => "llama-hf",
                        Model::Trm(_) => "trm-reference",
                    }
                ),
            }
            .with_context(|| format!("exporting to {}", out.display()))?;
            println!("wrote {} ({written}, {dtype:?})", out.display());
            Ok(())
        }
        Command::ImportHf { dir, out } => {
            let model_type = llama_hf::model_type(&dir)?;
            let model = match model_type.as_deref() {
                Some(t) if llama_hf::Layout::from_model_type(t).is_some() => Model::Gpt(
                    llama_hf::import(&dir)
                        .with_context(|| format!("importing {}", dir.display()))?,
                ),
                None | Some("huginn_raven") => Model::Huginn(
                    hf::import(&dir).with_context(|| format!("importing {}", dir.display()))?,
                ),
                Some(other) => anyhow::bail!(
                    "{}: model_type `{other}` is not one Muninn reads (huginn_raven, {})",
                    dir.join("config.json").display(),
                    llama_hf::Layout::MODEL_TYPES.join(", ")
                ),
            };
            checkpoint::save_new(&model, &out)?;
            println!(
                "wrote {} ({}, {} parameters)",
                out.display(),
                model.family().name(),
                model.params().numel()
            );
            Ok(())
        }
        Command::ImportTrm { weights, arch, out } => trm_cmd::import(&weights, &arch, &out),
        Command::Retrofit(args) => retrofit_cmd::retrofit(args),
        Command::Forward(args) => forward(args),
        Command::Eval(args) => eval_cmd::eval(args),
        Command::Generate(args) => eval_cmd::generate(args),
        Command::Latents(args) => eval_cmd::latents(args),
        Command::Launch(args) => launch_cmd::launch(args),
        Command::Sweep(args) => launch_cmd::sweep(args),
        Command::LaunchData(args) => launch_cmd::launch_data(args),
        Command::Compare(args) => launch_cmd::compare(args),
        Command::Curve(args) => launch_cmd::curve(args),
    }
}

fn model_info(shape: &str, n: Option<i64>, k: Option<i64>, seq_len: Option<i64>) -> Result<()> {
    match ModelConfig::from_name_or_file(shape)? {
        ModelConfig::Huginn(cfg) => huginn_info(&cfg, n, k, seq_len),
        ModelConfig::Gpt(cfg) => {
            ensure!(
                n.is_none() && k.is_none(),
                "--n and --k are recurrence depths; the gpt family has none"
            );
            gpt_info(&cfg, seq_len)
        }
        ModelConfig::Trm(cfg) => {
            ensure!(
                n.is_none() && k.is_none() && seq_len.is_none(),
                "--n, --k and --seq-len are for language models; a trm shape fixes its puzzle size"
            );
            let specs = muninn_model::trm::param_specs(&cfg);
            let total: i64 = specs.iter().map(|s| s.numel()).sum();
            println!("model {} (trm)", cfg.name);
            println!(
                "  D={} layers={} heads={} {} V={} L={} P={} T={} n={} N_sup={}",
                cfg.hidden_size,
                cfg.layers,
                cfg.num_heads,
                if cfg.mlp_t { "mlp-t" } else { "attention" },
                cfg.vocab_size,
                cfg.seq_len,
                cfg.puzzle_emb_len,
                cfg.h_cycles,
                cfg.l_cycles,
                cfg.halt_max_steps
            );
            println!(
                "  parameters: {total} (puzzle table {} × {} beside them)",
                cfg.num_puzzle_identifiers, cfg.hidden_size
            );
            Ok(())
        }
    }
}

fn gpt_info(cfg: &GptConfig, seq_len: Option<i64>) -> Result<()> {
    let t = seq_len.unwrap_or(cfg.block_size);
    ensure!(t >= 1, "--seq-len must be positive");
    let counts = ParamCounts::from_specs(&muninn_model::gpt::param_specs(cfg), &Part::GPT);
    println!("model {} (gpt)", cfg.name);
    println!(
        "  d={} layers={} heads={} kv heads={} (head dim {}) I={} V={} block_size={} rope_theta={}{} {}",
        cfg.n_embd,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.block_size,
        cfg.rope_theta,
        if cfg.rope_scaling.is_some() { " (llama3 scaling)" } else { "" },
        if cfg.tie_embeddings { "tied head" } else { "untied head" }
    );
    println!("parameters");
    for part in Part::GPT {
        if part == Part::Head && cfg.tie_embeddings {
            continue;
        }
        let label = match part {
            Part::FinalNorm => "model.norm",
            Part::Embedding if !cfg.tie_embeddings => "embedding",
            p => p.label(),
        };
        println!("  {:<24}{:>18}", label, group_digits(counts.part(part)));
    }
    println!("  {:<24}{:>18}", "total", group_digits(counts.total));
    println!("training FLOPs per token at T = {t}");
    println!(
        "  {:<24}{:>18.4e}",
        "model (MFU)",
        cfg.train_flops_per_token(t).model
    );
    println!(
        "inference FLOPs per token: {:.4e}",
        cfg.inference_flops_per_token(t)
    );
    Ok(())
}

fn huginn_info(
    cfg: &HuginnConfig,
    n: Option<i64>,
    k: Option<i64>,
    seq_len: Option<i64>,
) -> Result<()> {
    let k = k.unwrap_or(cfg.mean_backprop_depth);
    let n = n.unwrap_or((cfg.mean_recurrence - k).max(0));
    let t = seq_len.unwrap_or(cfg.block_size);
    ensure!(
        n >= 0 && k >= 0 && n + k >= 1,
        "--n {n} --k {k}: need n, k >= 0 and n + k >= 1"
    );
    ensure!(t >= 1, "--seq-len must be positive");
    let counts = ParamCounts::of(cfg);
    println!("model {}", cfg.name);
    println!(
        "  d={} heads={} (head dim {}) I={} V={} block_size={} layers prelude/core/coda={}/{}/{} r̄={} k̄={}",
        cfg.n_embd,
        cfg.n_heads,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.block_size,
        cfg.n_layers_in_prelude,
        cfg.n_layers_in_recurrent_block,
        cfg.n_layers_in_coda,
        cfg.mean_recurrence,
        cfg.mean_backprop_depth
    );
    println!("parameters ({} blocks)", cfg.block_name());
    for &(part, n) in &counts.by_part {
        let label = match (part, cfg.tie_embeddings) {
            (Part::Embedding, false) => "embedding",
            _ => part.label(),
        };
        println!("  {:<24}{:>18}", label, group_digits(n));
    }
    let total = if cfg.tie_embeddings {
        "total (tied)"
    } else {
        "total"
    };
    println!("  {:<24}{:>18}", total, group_digits(counts.total));
    println!(
        "  {:<24}{:>18}",
        format!("unrolled at r={}", cfg.mean_recurrence),
        group_digits(counts.unrolled(cfg.mean_recurrence))
    );
    let ckpt = train_flops_per_token(cfg, n, k, t, true);
    let plain = train_flops_per_token(cfg, n, k, t, false);
    println!("training FLOPs per token at (n, k) = ({n}, {k}), T = {t}");
    println!("  {:<24}{:>18.4e}", "model (MFU)", plain.model);
    println!("  {:<24}{:>18.4e}", "hardware, checkpointed", ckpt.hardware);
    println!(
        "inference FLOPs per token at r = {}: {:.4e}",
        cfg.mean_recurrence,
        inference_flops_per_token(cfg, cfg.mean_recurrence, t)
    );
    Ok(())
}

fn group_digits(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn init(shape: &str, seed: u64, out: &Path) -> Result<()> {
    let cfg = ModelConfig::from_name_or_file(shape)?;
    let model = Model::new(cfg.clone(), Device::Cpu, Precision::F32)?;
    model.init(seed);
    checkpoint::save_new(&model, out)?;
    println!(
        "wrote {} ({}, {} parameters, seed {seed})",
        out.display(),
        cfg.name(),
        model.params().numel()
    );
    Ok(())
}

fn forward(a: ForwardArgs) -> Result<()> {
    let device = muninn_trainer::parse_device(&a.device)?;
    let model = checkpoint::load_any(&a.checkpoint, device, a.precision)?;
    if let Model::Trm(m) = &model {
        let batch = a.batch.as_ref().with_context(|| {
            format!(
                "{} is a trm model: give its puzzles with --batch BATCH.json",
                a.checkpoint.display()
            )
        })?;
        return trm_cmd::forward(m, batch, a.steps, &a.out, a.grads.as_ref());
    }
    ensure!(
        a.batch.is_none(),
        "--batch is for trm checkpoints; {} is a {} model",
        a.checkpoint.display(),
        model.family().name()
    );
    let vocab = model.config().vocab_size();
    let tokens = match (&a.text, &a.tokenizer) {
        (Some(text), Some(path)) => muninn_data::TokenizerInfo::load(path)?.encode_prompt(text)?,
        (Some(text), None) => {
            let path = eval_cmd::checkpoint_tokenizer(&a.checkpoint)?;
            muninn_data::TokenizerInfo::load(&path)?.encode_prompt(text)?
        }
        (None, _) => a.tokens.clone(),
    };
    ensure!(
        !tokens.is_empty(),
        "no tokens to run: give --tokens or --text"
    );
    if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= vocab) {
        anyhow::bail!("token id {bad} is outside the model's vocabulary [0, {vocab})");
    }
    let ids = Tensor::from_slice(&tokens).view([1, -1]).to_device(device);
    let (logits, state, label) = match &model {
        Model::Huginn(m) => {
            let depth = a.depth.unwrap_or(m.config().mean_recurrence);
            ensure!(depth >= 0, "--depth must be >= 0");
            tch::manual_seed(a.seed);
            let init = match a.init_state {
                InitStateArg::Zero => InitState::Zero,
                InitStateArg::Random => InitState::Random,
            };
            let out = tch::no_grad(|| m.forward(&ids, Depth::eval(depth), &init))?;
            (out.logits, out.state, format!("depth {depth}"))
        }
        Model::Gpt(m) => {
            ensure!(
                a.depth.is_none(),
                "--depth: {} is a gpt model, which has no recurrence",
                a.checkpoint.display()
            );
            let out = tch::no_grad(|| m.forward(&ids))?;
            (out.logits, out.hidden, "gpt".to_string())
        }
        Model::Trm(_) => anyhow::bail!(
            "{} is a trm model: give its puzzles with --batch BATCH.json",
            a.checkpoint.display()
        ),
    };
    let tensors = [
        ("logits".to_string(), logits.to_kind(Kind::Float)),
        ("state".to_string(), state.to_kind(Kind::Float)),
    ];
    muninn_model::st::write(&a.out, &tensors, None)?;
    println!(
        "wrote {} (logits {:?}, state {:?}, {label})",
        a.out.display(),
        logits.size(),
        state.size()
    );
    Ok(())
}
