//! `muninn`: the command line. Thin glue over the crates; every error is printed once, with its
//! chain, and turns into exit code 1.

mod data_cmd;
mod eval_cmd;
mod launch_cmd;
mod plot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use muninn_model::flops::{inference_flops_per_token, train_flops_per_token};
use muninn_model::{checkpoint, hf, Depth, HuginnConfig, InitState, ParamCounts, Part, Precision};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "muninn",
    version,
    about = "Pretraining framework for recurrent-depth transformers (Huginn)"
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
    },
    /// Write a freshly initialised checkpoint (model.safetensors + config.toml).
    Init {
        /// A named shape (nebel-raven-3.5b, micro, tiny, mini-huginn) or a TOML file with a [model] table.
        shape: String,
        /// Seed of the `takase` initialisation.
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
    /// Read a Huginn Hugging Face directory (e.g. huginn-0125) into a Muninn checkpoint.
    ImportHf {
        dir: PathBuf,
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
    /// One run per point of a grid of config values (e.g. truncation depths k), as one job.
    Sweep(launch_cmd::SweepArgs),
    /// Compare finished runs: validation loss by k and test-time depth, throughput, memory; a PNG plot.
    Compare(launch_cmd::CompareArgs),
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

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// safetensors with the keys of recpre/raven_modeling_minimal.py, config.json and modeling files.
    HuginnHf,
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
        required_unless_present = "text",
        conflicts_with = "text"
    )]
    tokens: Vec<i64>,
    /// Text to encode with --tokenizer (wrapped as <|begin_text|> text), instead of --tokens.
    #[arg(long, requires = "tokenizer")]
    text: Option<String>,
    /// tokenizer.json for --text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Recurrent iterations r [default: the checkpoint's mean_recurrence].
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
    /// Output safetensors file with `logits` [1, T, V] and `state` [1, T, d], both fp32.
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
            set,
            resume,
        } => {
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
        Command::Export {
            checkpoint,
            format: ExportFormat::HuginnHf,
            out,
            dtype,
        } => {
            let model = checkpoint::load(&checkpoint, Device::Cpu, Precision::F32)?;
            hf::export(&model, &out, dtype)
                .with_context(|| format!("exporting to {}", out.display()))?;
            println!("wrote {} (huginn-hf, {dtype:?})", out.display());
            Ok(())
        }
        Command::ImportHf { dir, out } => {
            let model = hf::import(&dir).with_context(|| format!("importing {}", dir.display()))?;
            checkpoint::save_new(&model, &out)?;
            println!(
                "wrote {} ({} parameters)",
                out.display(),
                model.params().numel()
            );
            Ok(())
        }
        Command::Forward(args) => forward(args),
        Command::Eval(args) => eval_cmd::eval(args),
        Command::Generate(args) => eval_cmd::generate(args),
        Command::Latents(args) => eval_cmd::latents(args),
        Command::Launch(args) => launch_cmd::launch(args),
        Command::Sweep(args) => launch_cmd::sweep(args),
        Command::Compare(args) => launch_cmd::compare(args),
    }
}

fn model_info(shape: &str, n: Option<i64>, k: Option<i64>, seq_len: Option<i64>) -> Result<()> {
    let cfg = HuginnConfig::from_name_or_file(shape)?;
    let k = k.unwrap_or(cfg.mean_backprop_depth);
    let n = n.unwrap_or((cfg.mean_recurrence - k).max(0));
    let t = seq_len.unwrap_or(cfg.block_size);
    ensure!(
        n >= 0 && k >= 0 && n + k >= 1,
        "--n {n} --k {k}: need n, k >= 0 and n + k >= 1"
    );
    ensure!(t >= 1, "--seq-len must be positive");
    let counts = ParamCounts::of(&cfg);
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
    println!("parameters");
    for part in Part::ALL {
        println!(
            "  {:<24}{:>18}",
            part.label(),
            group_digits(counts.part(part))
        );
    }
    println!("  {:<24}{:>18}", "total (tied)", group_digits(counts.total));
    println!(
        "  {:<24}{:>18}",
        format!("unrolled at r={}", cfg.mean_recurrence),
        group_digits(counts.unrolled(cfg.mean_recurrence))
    );
    let ckpt = train_flops_per_token(&cfg, n, k, t, true);
    let plain = train_flops_per_token(&cfg, n, k, t, false);
    println!("training FLOPs per token at (n, k) = ({n}, {k}), T = {t}");
    println!("  {:<24}{:>18.4e}", "model (MFU)", plain.model);
    println!("  {:<24}{:>18.4e}", "hardware, checkpointed", ckpt.hardware);
    println!(
        "inference FLOPs per token at r = {}: {:.4e}",
        cfg.mean_recurrence,
        inference_flops_per_token(&cfg, cfg.mean_recurrence, t)
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
    let cfg = HuginnConfig::from_name_or_file(shape)?;
    let model = muninn_model::Huginn::new(cfg, Device::Cpu, Precision::F32)?;
    model.init(seed);
    checkpoint::save_new(&model, out)?;
    println!(
        "wrote {} ({}, {} parameters, seed {seed})",
        out.display(),
        model.config().name,
        model.params().numel()
    );
    Ok(())
}

fn forward(a: ForwardArgs) -> Result<()> {
    let device = muninn_trainer::parse_device(&a.device)?;
    let model = checkpoint::load(&a.checkpoint, device, a.precision)?;
    let cfg = model.config();
    let depth = a.depth.unwrap_or(cfg.mean_recurrence);
    ensure!(depth >= 0, "--depth must be >= 0");
    let tokens = match (&a.text, &a.tokenizer) {
        (Some(text), Some(path)) => muninn_data::TokenizerInfo::load(path)?.encode_prompt(text)?,
        _ => a.tokens.clone(),
    };
    ensure!(
        !tokens.is_empty(),
        "no tokens to run: give --tokens or --text"
    );
    if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= cfg.vocab_size) {
        anyhow::bail!(
            "token id {bad} is outside the model's vocabulary [0, {})",
            cfg.vocab_size
        );
    }
    let ids = Tensor::from_slice(&tokens).view([1, -1]).to_device(device);
    tch::manual_seed(a.seed);
    let init = match a.init_state {
        InitStateArg::Zero => InitState::Zero,
        InitStateArg::Random => InitState::Random,
    };
    let out = tch::no_grad(|| model.forward(&ids, Depth::eval(depth), &init))?;
    let tensors = [
        ("logits".to_string(), out.logits.to_kind(Kind::Float)),
        ("state".to_string(), out.state.to_kind(Kind::Float)),
    ];
    muninn_model::st::write(&a.out, &tensors, None)?;
    println!(
        "wrote {} (logits {:?}, state {:?}, depth {depth})",
        a.out.display(),
        out.logits.size(),
        out.state.size()
    );
    Ok(())
}
