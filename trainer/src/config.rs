//! The run config: a TOML file plus `--set section.key=value` overrides, checked in full before any
//! work starts. Unknown keys, wrong types and impossible values are refused by name.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use muninn_model::config::RawHuginnConfig;
use muninn_model::tidar::LmObjective;
pub use muninn_model::FamilyKind;
use muninn_model::{GptConfig, ModelConfig, Precision};
use serde::{Deserialize, Serialize};

use crate::optim::{MuonConfig, OptimizerConfig, OptimizerKind};
use crate::sampler::{DepthSampler, MeanCurriculum, Ramp, Scheme};
use crate::schedule::{Decay, LrSchedule};
use crate::DeviceSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run name; the run directory is `dir/name`.
    pub name: String,
    pub dir: PathBuf,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "run".into(),
            dir: "runs".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A directory written by `muninn data prepare` (token shards), or a puzzle dataset (TRM).
    pub dir: PathBuf,
    /// The tokenizer the shards must have been prepared with (token shards only).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Target ids that take no part in the loss (e.g. the document separator): their positions are
    /// left out of training and validation losses, which are means over the targets that count.
    #[serde(default)]
    pub ignore_targets: Vec<i64>,
    /// Puzzles: generate the dataset into `dir` on first use (an existing one is checked against
    /// this spec, never overwritten), e.g. `{ sudoku = "2x3", train = 1000, test = 500, seed = 0 }`
    /// or `{ maze = 11, ... }`.
    #[serde(default)]
    pub generate: Option<muninn_data::puzzles::GenerateSpec>,
    /// COCONUT: generate a ProsQA-style QA dataset (and its tokenizer) into `dir` on first use,
    /// e.g. `{ train = 8000, test = 300, seed = 0, vocab_size = 512 }`.
    #[serde(default)]
    pub prosqa: Option<muninn_data::qa::ProsQaGenerate>,
    /// Sudoku and maze: draw a fresh augmentation of every training sample (sudoku: digit
    /// permutation, band and stack shuffles, transposition, as the reference's 1000 pre-made copies
    /// per puzzle; maze: one of the 8 dihedral symmetries, the reference's `--aug`). ARC's copies
    /// are fixed when its dataset is built.
    #[serde(default = "yes")]
    pub augment: bool,
}

fn yes() -> bool {
    true
}

/// TRM's puzzle table optimizer (`[trm]`, family trm only): sign-SGD on the rows a step touched,
/// on the trainer's lr schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrmSection {
    pub puzzle_emb_lr: f64,
    pub puzzle_emb_weight_decay: f64,
}

impl Default for TrmSection {
    fn default() -> Self {
        // The reference's Sudoku and Maze settings (§3).
        TrmSection {
            puzzle_emb_lr: 1e-4,
            puzzle_emb_weight_decay: 1.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecurrenceSection {
    pub scheme: Scheme,
    /// r̄; also sets model.mean_recurrence (which enters the init).
    pub mean_recurrence: i64,
    /// k̄, the truncation depth: sweeping k means changing this key.
    pub mean_backprop_depth: i64,
    pub sigma: f64,
    /// Huginn's curriculum: r̄ and k̄ ramp linearly from 1 over this many steps (0: none).
    pub curriculum_steps: u64,
    /// The retrofit curriculum's ramp of r̄ ("linear" or "1-sqrt"), k̄ capped at the current r̄.
    pub curriculum: Option<Ramp>,
    /// The retrofit curriculum ramps over this fraction of train.max_steps.
    pub curriculum_warmup: f64,
    pub activation_checkpointing: bool,
}

impl Default for RecurrenceSection {
    fn default() -> Self {
        RecurrenceSection {
            scheme: Scheme::PoissonLognormalFilling,
            mean_recurrence: 32,
            mean_backprop_depth: 8,
            sigma: 0.5,
            curriculum_steps: 0,
            curriculum: None,
            curriculum_warmup: 0.0,
            activation_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub min_lr: f64,
    pub schedule: Decay,
    pub warmup_steps: u64,
    pub cooldown_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub update_clipping: bool,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// Skip the first update of a fresh run, as the reference does.
    pub skip_first_update: bool,
    /// Keep an exponential moving average of the weights with this decay (0: none; TRM 0.999).
    /// Validation, `muninn eval` and exports then use the average; checkpoints keep both.
    pub ema_decay: f64,
    /// Muon's settings (`kind = "muon"`).
    pub muon: MuonConfig,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        // The reference's production settings (§3.1), but with a schedule that reaches every group.
        OptimizerSection {
            kind: OptimizerKind::EllisAdam,
            lr: 4e-5,
            min_lr: 0.0,
            schedule: Decay::Trapezoid,
            warmup_steps: 4096,
            cooldown_steps: 4096,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 4e-5,
            update_clipping: true,
            grad_clip: 1.0,
            skip_first_update: false,
            ema_decay: 0.0,
            muon: MuonConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub seed: u64,
    pub max_steps: u64,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    /// f32 or bf16-mixed.
    pub precision: Precision,
    /// auto, cpu, cuda, cuda:N.
    pub device: DeviceSpec,
    /// Save and exit cleanly after this many steps of this process (0: never).
    pub exit_interval: u64,
    /// What a non-finite loss or gradient norm does: skip the update, or abort.
    pub nonfinite: NonFinite,
    /// Abort after this many non-finite steps in a row.
    pub max_consecutive_nonfinite: u64,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: i32,
    /// A fresh run starts from this checkpoint's weights (a warm start, e.g. COCONUT from a CoT
    /// run; `muninn train --init-from`); a resumed run ignores it. Vocabulary rows the source lacks
    /// copy the row of `objective.init_token` (COCONUT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            seed: 233,
            max_steps: 1000,
            micro_batch_size: 8,
            grad_accum: 1,
            precision: Precision::F32,
            device: DeviceSpec::Auto,
            exit_interval: 0,
            nonfinite: NonFinite::Skip,
            max_consecutive_nonfinite: 10,
            threads: 0,
            init_from: None,
        }
    }
}

/// What a step with a non-finite loss or gradient norm does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinite {
    /// Skip the update and count it (up to `train.max_consecutive_nonfinite` in a row).
    Skip,
    Abort,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (0: only at the end and on a signal).
    pub interval: u64,
    /// Keep the newest this many checkpoints.
    pub keep: usize,
    /// How long every rank waits for a checkpoint to be written, in seconds: a bound of its own,
    /// longer than `dist.timeout_s`, so that a slow filesystem does not end a healthy job.
    pub timeout_s: f64,
    /// Weights larger than this (fp32 MB) are written by every rank of a multi-rank job, a share
    /// of the parameter tensors each (`model-RRRRR-of-WWWWW.safetensors` and an HF index), instead
    /// of by rank 0 alone.
    pub shard_weights_mb: f64,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            interval: 100,
            keep: 3,
            timeout_s: 3600.0,
            shard_weights_mb: 1024.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Write metrics every this many steps.
    pub interval: u64,
    /// Peak FLOP/s of one device for MFU/HFU (e.g. 989e12 for an H100, 191.5e12 for an MI250X GCD);
    /// 0 leaves MFU out.
    pub peak_flops: f64,
    pub tensorboard: bool,
    /// Time each step's phases (data, forward + backward, gradient reduction, optimizer) and log
    /// them as `time_*_ms`. On a GPU every phase boundary then waits for the device.
    pub profile: bool,
    /// Record libtorch's operator profile of this step (0: none) into `trace-step<N>.json` in the
    /// run directory (rank 0; a Chrome trace, opens in Perfetto).
    pub trace_step: u64,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            interval: 10,
            peak_flops: 0.0,
            tensorboard: true,
            profile: false,
            trace_step: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Validate every this many steps (0: only at the end).
    pub interval: u64,
    pub depths: Vec<i64>,
    /// Validation rows per evaluation (the first rows of the val split, the same every time).
    pub max_rows: u64,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            interval: 100,
            depths: vec![1, 4, 8, 16, 32, 64],
            max_rows: 256,
        }
    }
}

/// How gradients travel between ranks (ignored on one process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Copy to host memory, reduce there, copy back: works with any MPI.
    Host,
    /// Hand device pointers to MPI (Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1, CUDA-aware OpenMPI).
    GpuAware,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// Size of each gradient message in MiB of fp32 (the reference's fix for collective hangs).
    pub chunk_mb: f64,
    /// Start reducing each part of the model as soon as its gradients are final (else after backward).
    pub overlap: bool,
    /// Shard the optimizer state over ranks (ZeRO-1): reduce-scatter, update 1/W, all-gather.
    pub zero1: bool,
    pub transport: Transport,
    /// A collective that has not completed after this many seconds ends the job.
    pub timeout_s: f64,
}

impl Default for DistSection {
    fn default() -> Self {
        DistSection {
            chunk_mb: 64.0,
            overlap: true,
            zero1: false,
            transport: Transport::Host,
            timeout_s: 600.0,
        }
    }
}

impl DistSection {
    /// fp32 elements per message.
    pub fn chunk_elems(&self) -> i64 {
        (self.chunk_mb * 1024.0 * 1024.0 / 4.0).round() as i64
    }
}

/// The file as written: every section optional except [model] and [data].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunConfig {
    #[serde(default)]
    pub run: RunSection,
    pub model: toml::Table,
    pub data: DataSection,
    #[serde(default)]
    pub recurrence: RecurrenceSection,
    #[serde(default)]
    pub optimizer: OptimizerSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub dist: DistSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trm: Option<TrmSection>,
    /// What a language model learns (`gpt` and `huginn`): next-token prediction, or TiDAR.
    #[serde(default)]
    pub objective: LmObjective,
}

/// A checked config, with the typed pieces the loop uses.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub raw: RawRunConfig,
    pub model: ModelConfig,
    pub sampler: DepthSampler,
    pub optimizer: OptimizerConfig,
    pub schedule: LrSchedule,
    pub precision: Precision,
    pub skip_nonfinite: bool,
}

/// Applies one `section.key=value` override; the value is read as TOML (numbers, booleans, arrays),
/// else taken as a string.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (path, value) = assignment
        .split_once('=')
        .with_context(|| format!("--set {assignment}: expected section.key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut keys: Vec<&str> = path.trim().split('.').collect();
    let last = keys
        .pop()
        .filter(|k| !k.is_empty())
        .with_context(|| format!("--set {assignment}: empty key"))?;
    ensure!(
        !keys.is_empty(),
        "--set {assignment}: name the section too, e.g. train.max_steps=100"
    );
    let mut table = doc;
    for k in keys {
        table = table
            .entry(k)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .with_context(|| format!("--set {assignment}: `{k}` is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

impl RawRunConfig {
    /// Parses a run config without checking it against this machine (its data may live elsewhere):
    /// what inference reads from the config of the run that wrote a checkpoint.
    pub fn parse_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading run config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// A run that starts from `train.init_from` and has no `[model]` table takes the checkpoint's shape
/// (as litgpt's finetuning takes the checkpoint's config): a retrofitted model trains without
/// restating it. Huginn's r̄ and k̄ then come from `[recurrence]`, as for any run.
fn model_from_init(doc: &mut toml::Table) -> Result<()> {
    if doc.contains_key("model") {
        return Ok(());
    }
    let Some(src) = doc
        .get("train")
        .and_then(|t| t.get("init_from"))
        .and_then(toml::Value::as_str)
    else {
        return Ok(());
    };
    let path = Path::new(src).join(muninn_model::checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no [model] table, so the shape comes from train.init_from: reading {}",
            path.display()
        )
    })?;
    let mut stored: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut model = match stored.remove("model") {
        Some(toml::Value::Table(t)) => t,
        _ => bail!("{}: expected a [model] table", path.display()),
    };
    model.remove("mean_recurrence");
    model.remove("mean_backprop_depth");
    doc.insert("model".into(), toml::Value::Table(model));
    Ok(())
}

impl RunConfig {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading run config {}", path.display()))?;
        Self::from_str(&text, overrides).with_context(|| format!("in {}", path.display()))
    }

    /// Relative paths in the config are relative to where muninn runs, like every path on the command
    /// line.
    pub fn from_str(text: &str, overrides: &[String]) -> Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).context("parsing TOML")?;
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        model_from_init(&mut doc)?;
        let family = doc
            .get("model")
            .and_then(|m| m.get("family"))
            .and_then(toml::Value::as_str);
        if let Some(f @ ("gpt" | "trm")) = family {
            ensure!(
                !doc.contains_key("recurrence"),
                "[recurrence] is set, but model.family = \"{f}\" has no Huginn recurrence: remove the section"
            );
            ensure!(
                doc.get("eval").and_then(|e| e.get("depths")).is_none(),
                "eval.depths is set, but model.family = \"{f}\" has no test-time depth: remove it"
            );
        }
        ensure!(
            family == Some("trm") || !doc.contains_key("trm"),
            "[trm] is set, but model.family is not \"trm\": remove the section"
        );
        let raw: RawRunConfig = toml::Value::Table(doc)
            .try_into()
            .context("reading the run config")?;
        Self::resolve(raw)
    }

    pub fn resolve(raw: RawRunConfig) -> Result<Self> {
        let r = &raw.recurrence;
        let curriculum = match r.curriculum {
            None => None,
            Some(ramp) => {
                let w = r.curriculum_warmup;
                ensure!(
                    w > 0.0 && w <= 1.0,
                    "recurrence.curriculum_warmup = {w}: the ramp's share of train.max_steps, in (0, 1]"
                );
                Some(MeanCurriculum {
                    ramp,
                    warmup_steps: (w * raw.train.max_steps as f64).ceil() as u64,
                })
            }
        };
        let sampler = DepthSampler {
            scheme: r.scheme,
            mean_recurrence: r.mean_recurrence,
            mean_backprop_depth: r.mean_backprop_depth,
            sigma: r.sigma,
            curriculum_steps: r.curriculum_steps,
            curriculum,
        };
        sampler.validate()?;
        let mut model_table = raw.model.clone();
        let family: FamilyKind = match model_table.remove("family") {
            Some(v) => v
                .try_into()
                .context("reading model.family (expected \"huginn\", \"gpt\" or \"trm\")")?,
            None => FamilyKind::default(),
        };
        let model = match family {
            FamilyKind::Huginn => {
                for (key, value) in [
                    ("mean_recurrence", r.mean_recurrence),
                    ("mean_backprop_depth", r.mean_backprop_depth),
                ] {
                    if let Some(v) = model_table.get(key).and_then(toml::Value::as_integer) {
                        ensure!(v == value, "model.{key} = {v} disagrees with recurrence.{key} = {value}: set it in [recurrence] only");
                    }
                    model_table.insert(key.into(), toml::Value::Integer(value));
                }
                let model: RawHuginnConfig = toml::Value::Table(model_table)
                    .try_into()
                    .context("reading [model]")?;
                ModelConfig::Huginn(model.resolve()?)
            }
            FamilyKind::Gpt => ModelConfig::Gpt(GptConfig::from_table(model_table)?),
            FamilyKind::Trm => {
                ModelConfig::Trm(muninn_model::trm::TrmConfig::from_table(model_table)?)
            }
        };
        if let LmObjective::Tidar(tidar) = &raw.objective {
            ensure!(
                family != FamilyKind::Trm,
                "objective.kind = \"tidar\" trains a language model; model.family = \"trm\" solves puzzles: remove [objective]"
            );
            tidar.validate(model.vocab_size())?;
        }
        if let LmObjective::Coconut(c) = &raw.objective {
            ensure!(
                family != FamilyKind::Trm,
                "objective.kind = \"coconut\" trains a language model; model.family = \"trm\" solves puzzles: remove [objective]"
            );
            c.validate().context("in [objective]")?;
            if let Some(r) = c.recurrence {
                ensure!(
                    family == FamilyKind::Huginn && r >= 1,
                    "objective.recurrence = {r}: the core iterations of a Huginn model's passes (>= 1; gpt has no core)"
                );
            }
        }
        ensure!(
            raw.data.prosqa.is_none() || matches!(raw.objective, LmObjective::Coconut(_)),
            "data.prosqa generates COCONUT's QA data: set [objective] kind = \"coconut\" or remove it"
        );
        let o = &raw.optimizer;
        let optimizer = OptimizerConfig {
            kind: o.kind,
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            update_clipping: o.update_clipping,
            muon: o.muon.clone(),
        };
        optimizer.validate()?;
        let t = &raw.train;
        let schedule = LrSchedule {
            lr: o.lr,
            min_lr: o.min_lr,
            warmup_steps: o.warmup_steps,
            cooldown_steps: o.cooldown_steps,
            max_steps: t.max_steps,
            decay: o.schedule,
        };
        schedule.validate()?;
        ensure!(
            o.grad_clip >= 0.0,
            "optimizer.grad_clip = {} must be >= 0",
            o.grad_clip
        );
        ensure!(t.max_steps >= 1, "train.max_steps must be at least 1");
        ensure!(
            t.micro_batch_size >= 1,
            "train.micro_batch_size = 0: a batch needs at least one sequence"
        );
        ensure!(
            t.grad_accum >= 1,
            "train.grad_accum = 0: must be at least 1"
        );
        ensure!(t.threads >= 0, "train.threads = {} must be >= 0", t.threads);
        let (precision, skip_nonfinite) = (t.precision, t.nonfinite == NonFinite::Skip);
        ensure!(
            t.max_consecutive_nonfinite >= 1,
            "train.max_consecutive_nonfinite must be at least 1"
        );
        ensure!(
            raw.checkpoint.keep >= 1,
            "checkpoint.keep must be at least 1"
        );
        ensure!(
            raw.checkpoint.shard_weights_mb >= 0.0,
            "checkpoint.shard_weights_mb = {} must be >= 0",
            raw.checkpoint.shard_weights_mb
        );
        ensure!(
            raw.checkpoint.timeout_s > 0.0 && raw.checkpoint.timeout_s.is_finite(),
            "checkpoint.timeout_s = {} must be positive",
            raw.checkpoint.timeout_s
        );
        ensure!(raw.log.interval >= 1, "log.interval must be at least 1");
        ensure!(raw.log.peak_flops >= 0.0, "log.peak_flops must be >= 0");
        ensure!(!raw.eval.depths.is_empty(), "eval.depths is empty");
        ensure!(
            raw.eval.depths.iter().all(|&d| d >= 1),
            "eval.depths must all be >= 1"
        );
        ensure!(raw.eval.max_rows >= 1, "eval.max_rows must be at least 1");
        let d = &raw.dist;
        ensure!(
            d.chunk_elems() >= 1 && d.chunk_mb <= 8192.0,
            "dist.chunk_mb = {} must be in (0, 8192] (MPI counts are 32-bit)",
            d.chunk_mb
        );
        ensure!(
            d.timeout_s > 0.0 && d.timeout_s.is_finite(),
            "dist.timeout_s = {} must be positive",
            d.timeout_s
        );
        ensure!(
            !raw.run.name.is_empty() && !raw.run.name.contains('/'),
            "run.name `{}` must be a plain name",
            raw.run.name
        );
        ensure!(
            (0.0..1.0).contains(&o.ema_decay),
            "optimizer.ema_decay = {} must be in [0, 1)",
            o.ema_decay
        );
        let data = &raw.data;
        match family {
            FamilyKind::Trm => {
                ensure!(
                    data.tokenizer.is_none() && data.ignore_targets.is_empty(),
                    "data.tokenizer and data.ignore_targets are for token shards; family trm reads puzzles: remove them"
                );
                ensure!(
                    data.dir.is_dir() || data.generate.is_some(),
                    "data.dir = {}: no such directory (write one with `muninn data sudoku|maze|arc`, or set data.generate)",
                    data.dir.display()
                );
            }
            _ if matches!(raw.objective, LmObjective::Coconut(_)) => {
                ensure!(
                    data.generate.is_none() && data.ignore_targets.is_empty(),
                    "data.generate and data.ignore_targets are for puzzles and token shards; COCONUT reads a QA dataset: remove them"
                );
                ensure!(
                    data.dir.is_dir() || data.prosqa.is_some(),
                    "data.dir = {}: no such directory (write one with `muninn data gsm8k|prosqa`, or set data.prosqa)",
                    data.dir.display()
                );
                if let Some(tok) = &data.tokenizer {
                    ensure!(
                        tok.is_file(),
                        "data.tokenizer = {}: no such file",
                        tok.display()
                    );
                }
            }
            _ => {
                ensure!(
                    data.generate.is_none(),
                    "data.generate makes puzzles, which only family trm reads: remove it"
                );
                ensure!(
                    data.dir.is_dir(),
                    "data.dir = {}: no such directory (run `muninn data prepare`)",
                    data.dir.display()
                );
                let tok = data
                    .tokenizer
                    .as_ref()
                    .context("data.tokenizer is missing: token shards need the tokenizer they were prepared with")?;
                ensure!(
                    tok.is_file(),
                    "data.tokenizer = {}: no such file",
                    tok.display()
                );
            }
        }
        Ok(RunConfig {
            raw,
            model,
            sampler,
            optimizer,
            schedule,
            precision,
            skip_nonfinite,
        })
    }

    pub fn run_dir(&self) -> PathBuf {
        self.raw.run.dir.join(&self.raw.run.name)
    }

    /// [`RunConfig::to_toml`] with absolute paths (`run.dir`, `data.dir`, `data.tokenizer`): the
    /// frozen config of a run, which evaluation may read from any directory.
    pub fn to_toml_resolved(&self) -> Result<String> {
        let mut cfg = self.clone();
        let abs =
            |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
        cfg.raw.run.dir = abs(&self.raw.run.dir)?;
        cfg.raw.data.dir = abs(&self.raw.data.dir)?;
        if let Some(tok) = &self.raw.data.tokenizer {
            cfg.raw.data.tokenizer = Some(abs(tok)?);
        }
        Ok(cfg.to_toml())
    }

    /// The resolved config as TOML (written to the run directory and into checkpoints).
    pub fn to_toml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.model = self.model.to_table();
        if self.model.family() == FamilyKind::Huginn {
            return toml::to_string(&raw).expect("a resolved config serialises");
        }
        // Only Huginn reads [recurrence] and eval.depths; written, they would be refused when the
        // config is read back.
        if self.model.family() == FamilyKind::Trm {
            raw.trm.get_or_insert_with(Default::default);
        }
        let mut doc = toml::Table::try_from(&raw).expect("a resolved config serialises");
        doc.remove("recurrence");
        if let Some(toml::Value::Table(eval)) = doc.get_mut("eval") {
            eval.remove("depths");
        }
        toml::to_string(&doc).expect("a table serialises")
    }
}
