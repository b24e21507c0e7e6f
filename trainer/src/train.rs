//! The training loop on one process: config → (model, data, optimizer, checkpoints, metrics) → steps.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use muninn_data::coconut::{CoconutConfig, Pieces, QaLoader, Special};
use muninn_data::loader::Source;
use muninn_data::puzzles::{Dataset, PuzzleData};
use muninn_data::qa::QaData;
use muninn_data::{loader, Batch, Loader, TokenDataset, TokenizerInfo};
use muninn_model::coconut::Coconut;
use muninn_model::gpt_family::GptFamily;
use muninn_model::huginn_family::HuginnFamily;
use muninn_model::tidar::{LmObjective, Tidar};
use muninn_model::trm::Trm;
use muninn_model::trm_family::{TableOptimizer, TrmFamily};
use muninn_model::{Family, Gpt, Huginn, LossMean, MicroBatch, ModelConfig, IGNORE};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::ckpt::{self, Extras, TrainerState};
use crate::config::RunConfig;
use crate::dist::{Comm, GradSync, Layout, Op};
use crate::eval::{
    ignore_targets, padding, puzzle_ids, seed_torch, to_tensors, validate, ValBatch,
};
use crate::metrics::Metrics;
use crate::optim::{clip_to_norm, Ema, FlatOptimizer};
use crate::DeviceSpec;

// Puzzle loaders mark ignored labels themselves.
const _: () = assert!(muninn_data::loader::IGNORE_TARGET == IGNORE);

/// Where to start from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// A fresh run (refused if the run directory already has checkpoints).
    No,
    /// The newest complete checkpoint of the run directory, or fresh if there is none.
    Auto,
    Path(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Finished,
    ExitInterval,
    Signal,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: u64,
    pub stop: Stop,
    pub last_loss: f64,
}

/// The device of this rank: `cuda` (or `auto` with GPUs) means the GPU of its local rank.
fn rank_device(spec: DeviceSpec, comm: &Comm) -> Result<Device> {
    let gpus = tch::Cuda::device_count() as usize;
    match spec {
        DeviceSpec::Cuda(None) | DeviceSpec::Auto if gpus > 0 && comm.world() > 1 => {
            Ok(Device::Cuda(comm.local_rank() % gpus))
        }
        _ => spec.resolve(),
    }
}

/// Trains the family the config names.
pub fn train(
    cfg: &RunConfig,
    resume: Resume,
    stop_signal: Arc<AtomicBool>,
    comm: &mut Comm,
) -> Result<Outcome> {
    let t = &cfg.raw.train;
    if t.threads > 0 {
        tch::set_num_threads(t.threads);
    }
    let device = rank_device(t.device, comm)?;
    let qa = open_qa(cfg, comm)?;
    // Huginn runs every COCONUT pass at r = objective.recurrence (default r̄), the last
    // min(k̄, r) iterations with a graph.
    let coconut = || {
        qa.as_ref().map(|q| {
            let rec = &cfg.raw.recurrence;
            let r = q.config.pass_iterations(rec.mean_recurrence);
            let k = rec.mean_backprop_depth.min(r);
            let latent = q.config.arm.continuous().then_some(q.special.latent);
            Coconut::new(latent, muninn_model::Depth::new(r - k, k))
        })
    };
    // The one place that names a family. Every rank builds the same weights (and rank 0's are
    // broadcast before training).
    match &cfg.model {
        ModelConfig::Huginn(shape) => {
            let family = HuginnFamily {
                model: Huginn::new(shape.clone(), device, cfg.precision)?,
                sampler: cfg.sampler.clone(),
                activation_checkpointing: cfg.raw.recurrence.activation_checkpointing,
                eval_depths: cfg.raw.eval.depths.clone(),
                seed: t.seed,
                tidar: tidar(cfg),
                coconut: coconut(),
            };
            family.model.init(t.seed);
            warm_start(cfg, &family.model, qa.as_ref())?;
            run(cfg, &family, device, resume, stop_signal, comm, qa.as_ref())
        }
        ModelConfig::Gpt(shape) => {
            let family = GptFamily {
                model: Gpt::new(shape.clone(), device, cfg.precision)?,
                tidar: tidar(cfg),
                coconut: coconut(),
            };
            family.model.init(t.seed);
            warm_start(cfg, &family.model, qa.as_ref())?;
            run(cfg, &family, device, resume, stop_signal, comm, qa.as_ref())
        }
        ModelConfig::Trm(shape) => {
            let table = cfg.raw.trm.clone().unwrap_or_default();
            let family = TrmFamily::new(
                Trm::new(shape.clone(), device, cfg.precision)?,
                TableOptimizer {
                    lr: table.puzzle_emb_lr,
                    weight_decay: table.puzzle_emb_weight_decay,
                },
                t.seed,
            );
            family.model.init(t.seed);
            run(cfg, &family, device, resume, stop_signal, comm, None)
        }
    }
}

/// `train.init_from`: the source checkpoint's weights, its vocabulary grown where COCONUT added
/// tokens (their rows copy `objective.init_token`'s). Every rank loads the same file; a resumed run
/// then overwrites them with its own checkpoint.
fn warm_start(
    cfg: &RunConfig,
    model: &impl muninn_model::checkpoint::Stored,
    qa: Option<&QaRun>,
) -> Result<()> {
    let Some(src) = &cfg.raw.train.init_from else {
        return Ok(());
    };
    let files =
        muninn_model::checkpoint::TensorFiles::open(&muninn_model::checkpoint::model_files(src)?)
            .with_context(|| format!("train.init_from = {}", src.display()))?;
    // Only needed where the source lacks rows; then it must be one token the source has.
    let init_row = match qa {
        Some(q) => {
            let tok = TokenizerInfo::load(&q.tokenizer)?;
            match tok.encode(&q.config.init_token)?[..] {
                [id] => Some(i64::from(id)),
                _ => None,
            }
        }
        None => None,
    };
    let added = muninn_model::checkpoint::load_weights_grown(model, &files, init_row)
        .with_context(|| {
            format!(
                "warm start from {} (new vocabulary rows copy objective.init_token, which must be one token)",
                src.display()
            )
        })?;
    eprintln!(
        "initialised from {}{}",
        src.display(),
        match added {
            0 => String::new(),
            n => format!(
                " ({n} new vocabulary rows from {:?})",
                qa.map_or("", |q| q.config.init_token.as_str())
            ),
        }
    );
    Ok(())
}

/// The run's TiDAR objective, if it trains with one.
fn tidar(cfg: &RunConfig) -> Option<Tidar> {
    match &cfg.raw.objective {
        LmObjective::Tidar(c) => Some(Tidar::new(c.clone())),
        LmObjective::NextToken | LmObjective::Coconut(_) => None,
    }
}

/// TiDAR's `[MASK]` must be an id the data never holds: a reserved special token of the
/// tokenizer, or a row past its vocabulary. Its blocks must tile the shards' rows.
fn check_tidar(cfg: &RunConfig, tok: &TokenizerInfo, rows: usize) -> Result<()> {
    let LmObjective::Tidar(c) = &cfg.raw.objective else {
        return Ok(());
    };
    anyhow::ensure!(
        rows as i64 % c.block == 0,
        "objective.block = {} does not divide the shards' {rows}-token rows ({})",
        c.block,
        cfg.raw.data.dir.display()
    );
    if c.mask_id >= tok.vocab_size as i64 {
        return Ok(());
    }
    let name = tok
        .tokenizer
        .id_to_token(c.mask_id as u32)
        .unwrap_or_default();
    let used = [
        muninn_data::tokenizer::BOS,
        muninn_data::tokenizer::EOS,
        muninn_data::tokenizer::PAD,
    ];
    anyhow::ensure!(
        muninn_data::tokenizer::special_tokens().contains(&name) && !used.contains(&name.as_str()),
        "objective.mask_id = {} is `{name}` in {}, a token the data can hold; use a reserved one ({} = {}) or a row past the tokenizer's {} ids",
        c.mask_id,
        cfg.raw.data.tokenizer.as_deref().unwrap_or(std::path::Path::new("the tokenizer")).display(),
        "<|reserved_0|>",
        tok.tokenizer.token_to_id("<|reserved_0|>").map_or("none".to_string(), |i| i.to_string()),
        tok.vocab_size
    );
    Ok(())
}

/// A COCONUT run's data: the QA dataset (rank 0 generates it first when `data.prosqa` says how
/// and it is missing), its tokenizer with COCONUT's tokens, and the examples as token pieces.
pub struct QaRun {
    pub config: CoconutConfig,
    pub special: Special,
    pub train: Vec<Pieces>,
    /// The held-out split validation reads (`valid`, else `test`).
    pub val: Vec<Pieces>,
    pub tokenizer: PathBuf,
    /// Ids of the tokenizer, its added tokens included.
    pub vocab_size: usize,
    /// The tokenizer's and the training split's sha256: what a resumed loader must find again.
    pub digest: String,
}

fn open_qa(cfg: &RunConfig, comm: &mut Comm) -> Result<Option<QaRun>> {
    let LmObjective::Coconut(config) = &cfg.raw.objective else {
        return Ok(None);
    };
    let d = &cfg.raw.data;
    let generated = match (&d.prosqa, comm.is_root()) {
        (Some(spec), true) => QaData::ensure(&d.dir, spec).map(|_| ()),
        _ => Ok(()),
    };
    let mut failed = [generated.is_err() as u8 as f64];
    comm.sum_f64(&mut failed, "preparing the QA dataset")?;
    generated?;
    anyhow::ensure!(
        failed[0] == 0.0,
        "rank 0 could not prepare {}",
        d.dir.display()
    );
    let data = match &d.prosqa {
        Some(spec) => QaData::ensure(&d.dir, spec)?,
        None => QaData::open(&d.dir)?,
    };
    let tokenizer = d
        .tokenizer
        .clone()
        .unwrap_or_else(|| d.dir.join("tokenizer.json"));
    let tok = TokenizerInfo::load(&tokenizer)?;
    let special =
        Special::of(&tok).with_context(|| format!("tokenizer {}", tokenizer.display()))?;
    let pieces = |split: &str| -> Result<Vec<Pieces>> {
        data.split(split)?
            .iter()
            .map(|e| muninn_data::coconut::pieces(e, &tok))
            .collect()
    };
    let val_split = match d.dir.join("valid.json").is_file() {
        true => "valid",
        false => "test",
    };
    let train_bytes = std::fs::read(d.dir.join("train.json"))
        .with_context(|| format!("reading {}/train.json", d.dir.display()))?;
    let digest = format!(
        "{:x}",
        Sha256::digest([tok.sha256.as_bytes(), &train_bytes].concat())
    );
    Ok(Some(QaRun {
        config: config.clone(),
        special,
        train: pieces("train")?,
        val: pieces(val_split)?,
        tokenizer,
        vocab_size: tok.vocab_size,
        digest,
    }))
}

/// The puzzle dataset of a TRM run: rank 0 generates it first when the config says how and it is
/// missing; then every rank opens and checks it.
fn open_puzzles(cfg: &RunConfig, comm: &mut Comm) -> Result<Dataset> {
    let d = &cfg.raw.data;
    let generated = match (&d.generate, comm.is_root()) {
        (Some(spec), true) => PuzzleData::ensure(&d.dir, spec).map(|_| ()),
        _ => Ok(()),
    };
    let mut failed = [generated.is_err() as u8 as f64];
    comm.sum_f64(&mut failed, "preparing the puzzle dataset")?;
    generated?;
    anyhow::ensure!(
        failed[0] == 0.0,
        "rank 0 could not prepare {}",
        d.dir.display()
    );
    Dataset::open(&d.dir)
}

/// The training loop, for any family: set up (or resume), then step, log and save until done.
fn run<F: Family>(
    cfg: &RunConfig,
    model: &F,
    device: Device,
    resume: Resume,
    stop_signal: Arc<AtomicBool>,
    comm: &mut Comm,
    qa: Option<&QaRun>,
) -> Result<Outcome> {
    let raw = &cfg.raw;
    let (t, rank, world) = (&raw.train, comm.rank(), comm.world());
    if let Some(qa) = qa {
        let shape = (model.vocab_size(), model.block_size());
        let source = qa_source(cfg, qa, shape, rank, world)?;
        return drive(cfg, model, device, source, resume, stop_signal, comm);
    }
    // The data outlives the trainer, whose loader reads it.
    if model.loss_mean() == LossMean::Rows {
        let data = open_puzzles(cfg, comm)?;
        let cells = data.seq_len();
        anyhow::ensure!(
            data.vocab_size() == model.vocab_size() && cells as i64 == model.block_size(),
            "{} holds {} (vocabulary {}, {cells} cells); the model has model.vocab_size = {}, model.seq_len = {}",
            raw.data.dir.display(),
            data.describe(),
            data.vocab_size(),
            model.vocab_size(),
            model.block_size()
        );
        if let ModelConfig::Trm(c) = &cfg.model {
            anyhow::ensure!(
                data.num_puzzle_identifiers() as i64 <= c.num_puzzle_identifiers,
                "{} needs {} puzzle identifiers; the model has model.num_puzzle_identifiers = {}",
                raw.data.dir.display(),
                data.num_puzzle_identifiers(),
                c.num_puzzle_identifiers
            );
        }
        let loader = data.loader(t.seed, raw.data.augment);
        let val = data.val_batches(t.micro_batch_size, raw.eval.max_rows, rank, world);
        let source: Data = (loader, val, cells, None);
        return drive(cfg, model, device, source, resume, stop_signal, comm);
    }
    // Token shards must come from the configured tokenizer.
    let tok_path = raw
        .data
        .tokenizer
        .as_deref()
        .context("data.tokenizer is missing")?;
    let tok = TokenizerInfo::load(tok_path)?;
    let train_ds = TokenDataset::open(&raw.data.dir, "train", Some(&tok))?;
    let val_ds = TokenDataset::open(&raw.data.dir, "val", Some(&tok))?;
    anyhow::ensure!(
        tok.vocab_size as i64 <= model.vocab_size(),
        "the tokenizer has {} ids but model.vocab_size = {}",
        tok.vocab_size,
        model.vocab_size()
    );
    anyhow::ensure!(
        train_ds.block_size() as i64 <= model.block_size(),
        "the shards hold {}-token sequences, longer than model.block_size = {}",
        train_ds.block_size(),
        model.block_size()
    );
    check_tidar(cfg, &tok, train_ds.block_size())?;
    let val = loader::val_batches(&val_ds, t.micro_batch_size, raw.eval.max_rows, rank, world)
        .into_iter()
        .map(|b| ignore_targets(b, &raw.data.ignore_targets))
        .collect();
    let source: Data = (
        Box::new(Loader::new(&train_ds, t.seed)),
        val,
        train_ds.block_size(),
        Some(tok_path),
    );
    drive(cfg, model, device, source, resume, stop_signal, comm)
}

/// COCONUT's loader and validation batches: the held-out examples in the layout the trained model
/// answers in (`CoconutConfig::answer_stage`), the first `eval.max_rows`, this rank's share.
fn qa_source<'a>(
    cfg: &RunConfig,
    qa: &'a QaRun,
    (vocab_size, block_size): (i64, i64),
    rank: usize,
    world: usize,
) -> Result<Data<'a>> {
    let (t, c) = (&cfg.raw.train, &qa.config);
    anyhow::ensure!(
        qa.vocab_size as i64 <= vocab_size,
        "the tokenizer {} has {} ids (COCONUT's tokens included) but model.vocab_size = {vocab_size}",
        qa.tokenizer.display(),
        qa.vocab_size
    );
    let layout = |p: &Pieces, stage| c.layout(stage, p.steps.len());
    let longest = qa
        .train
        .iter()
        .flat_map(|p| (0..=c.final_stage()).map(move |s| (p, s)))
        .map(|(p, s)| {
            muninn_data::coconut::row(p, layout(p, s), &qa.special, c.arm.markers())
                .ids
                .len()
        })
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        longest as i64 <= block_size,
        "the longest COCONUT row of {} has {longest} tokens, more than model.block_size = {block_size}",
        cfg.raw.data.dir.display()
    );
    let rows: Vec<_> = qa
        .val
        .iter()
        .take(cfg.raw.eval.max_rows as usize)
        .map(|p| {
            muninn_data::coconut::row(
                p,
                layout(p, c.answer_stage(None)),
                &qa.special,
                c.arm.markers(),
            )
        })
        .collect();
    let ids: Vec<u64> = (0..rows.len() as u64).collect();
    let val = loader::rank_chunks(&ids, t.micro_batch_size, rank, world)
        .map(|chunk| {
            let picked: Vec<_> = chunk.iter().map(|&i| rows[i as usize].clone()).collect();
            muninn_data::coconut::batch(
                muninn_data::coconut::align(&picked, &qa.special),
                chunk.to_vec(),
            )
        })
        .collect();
    let global = world * t.micro_batch_size * t.grad_accum;
    let loader = QaLoader::new(
        &qa.train,
        c.clone(),
        qa.special,
        t.seed,
        global,
        qa.digest.clone(),
    )
    .with_context(|| format!("COCONUT on {}", cfg.raw.data.dir.display()))?;
    // Throughput counts a row as the mean full chain-of-thought row (rows vary in length).
    let mean = qa
        .train
        .iter()
        .map(|p| p.question.len() + p.steps.iter().map(Vec::len).sum::<usize>() + p.answer.len())
        .sum::<usize>()
        / qa.train.len().max(1);
    Ok((
        Box::new(loader),
        val,
        mean.max(1),
        Some(qa.tokenizer.as_path()),
    ))
}

/// The training rows (a loader), the validation batches of this rank, the sequence length and the
/// tokenizer that checkpoints copy (token data only).
type Data<'a> = (
    Box<dyn Source + 'a>,
    Vec<Batch>,
    usize,
    Option<&'a std::path::Path>,
);

fn drive<F: Family>(
    cfg: &RunConfig,
    model: &F,
    device: Device,
    data: Data<'_>,
    resume: Resume,
    stop_signal: Arc<AtomicBool>,
    comm: &mut Comm,
) -> Result<Outcome> {
    let raw = &cfg.raw;
    let mut trainer = Trainer::new(cfg, model, device, data, resume, stop_signal, comm)?;
    while trainer.state.step < raw.train.max_steps {
        let report = trainer.step()?;
        trainer.log(&report)?;
        if let Some(outcome) = trainer.maybe_save(&report)? {
            return Ok(outcome);
        }
    }
    // Nothing left to train (a resumed run that had already finished).
    if trainer.root {
        mark_finished(&trainer.finished_marker, trainer.state.step)?;
    }
    Ok(Outcome {
        step: trainer.state.step,
        stop: Stop::Finished,
        last_loss: trainer.last_loss,
    })
}

/// One micro-batch on the device: inputs, targets, puzzle ids, positions and padding.
type MicroRows = (Tensor, Tensor, Option<Tensor>, Option<(Tensor, Tensor)>);

/// The loop's state between steps: the family, communication, optimizer, loader, counters and sinks.
struct Trainer<'a, F: Family> {
    cfg: &'a RunConfig,
    model: &'a F,
    comm: &'a mut Comm,
    device: Device,
    rank: usize,
    world: usize,
    root: bool,
    run_dir: PathBuf,
    finished_marker: PathBuf,
    loader: Box<dyn Source + 'a>,
    block_size: usize,
    tokenizer: Option<&'a std::path::Path>,
    /// The moving average of the weights (`optimizer.ema_decay`), the whole buffer on every rank.
    ema: Option<Ema>,
    val_batches: Vec<ValBatch>,
    opt: FlatOptimizer,
    /// Gradient reduction over ranks (None on one process).
    sync: Option<GradSync>,
    zero1: bool,
    state: TrainerState,
    metrics: Option<Metrics>,
    bar: Option<ProgressBar>,
    stop_signal: Arc<AtomicBool>,
    first_step: u64,
    last_loss: f64,
    tokens_per_step: u64,
    /// When this process began training (`elapsed_s` in the metrics).
    started: Instant,
    /// Since the last log line: (start, tokens, model FLOPs, hardware FLOPs), from each step's plan.
    window: (Instant, u64, f64, f64),
    /// With log.profile: seconds spent in each phase since the last log line.
    phases: Phases,
    /// The last micro-batch's inputs (telemetry reads them).
    last_x: Option<Tensor>,
    /// The loader's epoch of the last step (COCONUT logs it and its stage).
    epoch: u64,
}

/// What one step did, for its log line and the decision to save or stop.
struct StepReport<P> {
    step: u64,
    plan: P,
    loss: f64,
    grad_norm: f64,
    lr: f64,
    /// Targets that counted in the step, over all ranks.
    loss_tokens: u64,
    /// Some rank was sent SIGTERM/SIGUSR1 (the vote makes every rank agree).
    signalled: bool,
}

impl<'a, F: Family> Trainer<'a, F> {
    fn new(
        cfg: &'a RunConfig,
        model: &'a F,
        device: Device,
        (mut loader, val, block_size, tokenizer): Data<'a>,
        resume: Resume,
        stop_signal: Arc<AtomicBool>,
        comm: &'a mut Comm,
    ) -> Result<Self> {
        let (t, raw, d) = (&cfg.raw.train, &cfg.raw, &cfg.raw.dist);
        let (rank, world, root) = (comm.rank(), comm.world(), comm.is_root());
        comm.set_timeout(std::time::Duration::from_secs_f64(d.timeout_s));
        comm.check(d.chunk_elems())?;
        let run_dir = cfg.run_dir();
        if root {
            std::fs::create_dir_all(&run_dir)
                .with_context(|| format!("creating {}", run_dir.display()))?;
            let bound = std::time::Duration::from_secs_f64(raw.checkpoint.timeout_s);
            for stale in ckpt::remove_stale_temps(&run_dir, bound)? {
                eprintln!("removed {}, left by an interrupted save", stale.display());
            }
        }
        let val_batches: Vec<ValBatch> = val
            .iter()
            .enumerate()
            .map(|(j, b)| ValBatch::new(j * world + rank, b, device))
            .collect();

        // Optimizer over this rank's shard, loader.
        let specs = model.params().specs();
        let whole = crate::optim::whole_tensors(&cfg.optimizer, specs);
        let layout = Layout::owning(&model.grad_regions(), &whole, d.chunk_elems(), rank, world);
        let zero1 = d.zero1 && world > 1;
        let pieces = match zero1 {
            true => layout.pieces(),
            false => vec![(0, model.params().numel())],
        };
        let mut opt = FlatOptimizer::sharded(cfg.optimizer.clone(), specs, &pieces, device)?;
        let sync =
            (world > 1).then(|| GradSync::new(layout, zero1, d.overlap, d.transport, device));
        let mut ema = (raw.optimizer.ema_decay > 0.0)
            .then(|| Ema::new(&model.params().flat().detach(), raw.optimizer.ema_decay));
        let model_sha256 = format!("{:x}", Sha256::digest(model.config_toml().as_bytes()));
        let existing = ckpt::list(&run_dir)?;
        let from = match resume {
            Resume::No if !existing.is_empty() => bail!(
                "{} already has checkpoints; pass --resume auto to continue it, or choose another run.name",
                run_dir.display()
            ),
            Resume::No => None,
            Resume::Auto => existing.last().map(|(_, p)| p.clone()),
            Resume::Path(p) => Some(p),
        };
        let mut state = TrainerState {
            version: 1,
            step: 0,
            optimizer_steps: 0,
            loader: loader.state(),
            nonfinite_total: 0,
            consecutive_nonfinite: 0,
            tokens_seen: 0,
            model_sha256: model_sha256.clone(),
            family: cfg.model.family(),
        };
        if let Some(dir) = &from {
            let t0 = Instant::now();
            state = ckpt::load(dir, model, &mut opt, &model_sha256, cfg.model.family())?;
            if let Some(ema) = ema.as_mut() {
                ckpt::load_ema(dir, model, &ema.weights)?;
            }
            let owned: Vec<usize> = (0..t.grad_accum).map(|i| i * world + rank).collect();
            model.load_rank_state(ckpt::read_rank_state(dir)?, &owned)?;
            let secs = t0.elapsed().as_secs_f64();
            loader
                .load_state(&state.loader)
                .with_context(|| format!("resuming the loader from {}", dir.display()))?;
            if root {
                eprintln!(
                    "resumed from {} at step {} (rank 0 read it in {secs:.2} s)",
                    dir.display(),
                    state.step
                );
                if let Some((aside, steps)) = ckpt::supersede_newer(&run_dir, state.step)? {
                    eprintln!(
                        "moved the newer checkpoints of steps {steps:?} to {} (nothing deleted): this run continues from step {}",
                        aside.display(),
                        state.step
                    );
                }
            }
        }
        // Every rank must start from the same step: the run directory has to be shared storage.
        let mut steps = [state.step as f64, -(state.step as f64)];
        comm.allreduce_f64(&mut steps, Op::Max, "agreeing on the start step")?;
        anyhow::ensure!(
            steps[0] == -steps[1],
            "ranks resume from different steps ({} to {}): is {} on a filesystem every node sees?",
            -steps[1],
            steps[0],
            run_dir.display()
        );
        let finished_marker = run_dir.join(FINISHED);
        if root && state.step < t.max_steps && finished_marker.exists() {
            // A finished run continued with a larger train.max_steps.
            std::fs::remove_file(&finished_marker)
                .with_context(|| format!("removing {}", finished_marker.display()))?;
        }
        comm.broadcast(
            model.params().flat(),
            d.chunk_elems(),
            "the initial weights",
        )?;
        if let (Some(ema), None) = (ema.as_mut(), &from) {
            // A fresh run's average starts at the weights every rank now has.
            tch::no_grad(|| ema.weights.copy_(&model.params().flat().detach()));
        }
        let metrics = match root {
            true => {
                let config_path = run_dir.join("config.toml");
                std::fs::write(&config_path, cfg.to_toml_resolved()?)
                    .with_context(|| format!("writing {}", config_path.display()))?;
                Some(Metrics::open(&run_dir, raw.log.tensorboard)?)
            }
            false => None,
        };
        // A progress bar for a person at a terminal; plain lines in batch logs (SLURM), where
        // indicatif would draw nothing. Rank 0 speaks for the job.
        let bar = (root && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(t.max_steps).with_position(state.step);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("static template"),
            );
            bar
        });
        let tokens_per_step = (t.micro_batch_size * t.grad_accum * world * block_size) as u64;
        Ok(Trainer {
            cfg,
            model,
            comm,
            device,
            rank,
            world,
            root,
            run_dir,
            finished_marker,
            loader,
            block_size,
            tokenizer,
            ema,
            val_batches,
            opt,
            sync,
            zero1,
            first_step: state.step,
            state,
            metrics,
            bar,
            stop_signal,
            last_loss: f64::NAN,
            tokens_per_step,
            window: (Instant::now(), 0, 0.0, 0.0),
            started: Instant::now(),
            phases: Phases::new(raw.log.profile, device),
            last_x: None,
            epoch: 0,
        })
    }

    /// One optimizer step: the micro-batches' forward and backward (the gradient reduced during the
    /// last one), the vote, clipping and the update (or the non-finite policy).
    fn step(&mut self) -> Result<StepReport<F::Plan>> {
        let (t, raw) = (&self.cfg.raw.train, &self.cfg.raw);
        let (rank, world) = (self.rank, self.world);
        self.state.step += 1;
        let step = self.state.step;
        let plan = self.model.plan(step);
        let trace = self.root && step == raw.log.trace_step;
        if trace {
            muninn_model::shim::profiler_start()?;
        }
        self.phases.start();
        self.epoch = self.loader.epoch();
        if let (Some(e), LmObjective::Coconut(c)) = (self.loader.epoch_starts(), &raw.objective) {
            if c.resets_at(e) {
                self.opt.reset();
            }
        }
        let (batches, loss_tokens, scale) = self.micro_batches()?;
        self.phases.lap(Phase::Data);

        // Forward and backward over the micro-batches; gradients accumulate in the flat buffer and
        // are reduced over ranks once, during the last micro-batch's backward. The losses stay on
        // the device until the vote: no host sync per micro-batch.
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        let mut comm_err = Ok(());
        for (i, (x, y, ids, padded)) in batches.iter().enumerate() {
            // Each micro-batch draws its own s0, as the global micro-batch it is.
            seed_torch(t.seed, step, 0x50 + (i * world + rank) as u64);
            self.last_x = Some(x.shallow_clone());
            let reduce_here = i + 1 == t.grad_accum;
            let (comm, sync, model) = (&mut *self.comm, &mut self.sync, self.model);
            let mut on_grad = |event| {
                if let (true, Some(sync), Ok(())) = (reduce_here, sync.as_mut(), &comm_err) {
                    // Only defined once backward has written a gradient.
                    comm_err = sync.on_event(comm, &model.params().flat().grad(), event);
                }
            };
            let batch = MicroBatch {
                inputs: x,
                targets: y,
                scale,
                puzzle_ids: ids.as_ref(),
                padded: padded
                    .as_ref()
                    .map(|(positions, real)| muninn_model::family::Padding { positions, real }),
                global: i * world + rank,
            };
            let loss = model.micro_step(&batch, plan, &mut on_grad)?;
            loss_sum += loss.to_kind(Kind::Double);
            self.phases.lap(Phase::ForwardBackward);
        }
        comm_err?;
        let grad = self.model.params().flat().grad();
        let grad_scale = 1.0 / t.grad_accum as f64;
        let grad = match self.sync.as_mut() {
            Some(sync) => sync.finish(self.comm, &grad, grad_scale)?,
            None => {
                if t.grad_accum > 1 {
                    let _ = tch::no_grad(|| grad.shallow_clone().g_mul_scalar_(grad_scale));
                }
                grad
            }
        };

        // One vote: mean loss, global gradient norm (‖g‖² of each shard under ZeRO-1; every rank
        // holds the whole gradient otherwise), and whether any rank was signalled.
        // One fused reduction, no temporary (CPU accumulates in double).
        let local_sq = grad.norm().double_value(&[]).powi(2);
        let mut vote = [
            loss_sum.double_value(&[]) / t.grad_accum as f64,
            if self.zero1 { local_sq } else { 0.0 },
            self.stop_signal.load(Ordering::SeqCst) as u8 as f64,
        ];
        self.comm
            .sum_f64(&mut vote, "the step's loss, gradient norm and stop flag")?;
        let loss = vote[0] / world as f64;
        let grad_norm = if self.zero1 { vote[1] } else { local_sq }.sqrt();
        let signalled = vote[2] > 0.0;
        self.phases.lap(Phase::Reduce);
        clip_to_norm(&grad, grad_norm, raw.optimizer.grad_clip);
        let lr = self.cfg.schedule.at(step);
        self.update(&grad, loss, grad_norm, lr)?;
        let _ = self.model.params().flat().grad().zero_();
        self.phases.lap(Phase::Optimizer);
        if trace {
            let path = self.run_dir.join(format!("trace-step{step}.json"));
            muninn_model::shim::profiler_stop(&path)
                .with_context(|| format!("writing the profile {}", path.display()))?;
        }
        self.state.tokens_seen += self.tokens_per_step;
        self.state.loader = self.loader.state();
        self.last_loss = loss;
        // Throughput counts what the forward computed (TiDAR: twice the data).
        let computed = self.model.tokens_computed(self.block_size as i64);
        let flops = self.model.flops(plan, computed);
        let tokens = self.tokens_per_step * computed as u64 / self.block_size as u64;
        self.window.1 += tokens;
        self.window.2 += flops.model * tokens as f64;
        self.window.3 += flops.hardware * tokens as f64;
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
        Ok(StepReport {
            step,
            plan,
            loss,
            grad_norm,
            lr,
            loss_tokens,
            signalled,
        })
    }

    /// This rank's micro-batches of the step on the device, the step's counted targets over all
    /// ranks, and the scale of each micro-batch's loss sum. Micro-batch i of rank r is global
    /// micro-batch i·W + r: W ranks with one micro-batch each read what one rank with W
    /// accumulation steps would. The step's loss is the mean over every counted target: each
    /// micro-batch's sum is scaled by W·A / count, so that the accumulation (÷A) and the rank
    /// average (÷W) leave Σ loss / count. Counted on the host.
    #[allow(clippy::type_complexity)]
    fn micro_batches(&mut self) -> Result<(Vec<MicroRows>, u64, f64)> {
        let (t, raw) = (&self.cfg.raw.train, &self.cfg.raw);
        let rows: Vec<_> = (0..t.grad_accum)
            .map(|_| {
                self.loader
                    .next_batch(self.rank, self.world, t.micro_batch_size)
            })
            .map(|b| ignore_targets(b, &raw.data.ignore_targets))
            .collect();
        let rows_only = self.model.loss_mean() == LossMean::Rows;
        let mut counts = [rows
            .iter()
            .map(|b| match rows_only {
                true => b.rows as f64,
                false => b.targets.iter().filter(|&&y| y != IGNORE).count() as f64,
            })
            .sum::<f64>()];
        if self.world > 1 {
            self.comm
                .sum_f64(&mut counts, "counting the step's targets")?;
        }
        let units = (self.world * t.grad_accum) as f64;
        let scale = if counts[0] > 0.0 {
            units / counts[0]
        } else {
            0.0
        };
        let batches = rows
            .iter()
            .map(|b| {
                let (x, y) = to_tensors(b, self.device);
                (x, y, puzzle_ids(b, self.device), padding(b, self.device))
            })
            .collect();
        Ok((batches, counts[0] as u64, scale))
    }

    /// The (ZeRO-1) update with the clipped gradient, or the non-finite policy.
    fn update(&mut self, grad: &Tensor, loss: f64, grad_norm: f64, lr: f64) -> Result<()> {
        let (t, raw) = (&self.cfg.raw.train, &self.cfg.raw);
        let step = self.state.step;
        if loss.is_finite() && grad_norm.is_finite() {
            self.state.consecutive_nonfinite = 0;
            let skip_first =
                raw.optimizer.skip_first_update && self.state.optimizer_steps == 0 && step == 1;
            if !skip_first {
                let flat = self.model.params().flat();
                let comm = &mut *self.comm;
                match (self.zero1, self.sync.as_mut()) {
                    (true, Some(sync)) => {
                        let shard = self.opt.shard_of(&flat.detach());
                        self.opt.step_shard(&shard, grad, lr, &mut |sums| {
                            comm.sum_f64(sums, "per-tensor update norms")
                        })?;
                        sync.all_gather(comm, &shard, flat)?;
                    }
                    _ => self.opt.step(flat, grad, lr),
                }
                self.state.optimizer_steps = self.opt.steps();
                let units = t.grad_accum * self.world;
                let lr_factor = lr / raw.optimizer.lr;
                let comm = &mut *self.comm;
                self.model.update_extra(lr_factor, units, &mut |v| {
                    comm.sum_f64(v, "the family's own update")
                })?;
                if let Some(ema) = self.ema.as_mut() {
                    ema.update(&self.model.params().flat().detach());
                }
            }
            return Ok(());
        }
        // Nothing moves on a skipped step (every rank skips alike).
        let comm = &mut *self.comm;
        self.model
            .update_extra(0.0, t.grad_accum * self.world, &mut |v| {
                comm.sum_f64(v, "the family's own update")
            })?;
        self.state.nonfinite_total += 1;
        self.state.consecutive_nonfinite += 1;
        if self.root {
            eprintln!(
                "step {step}: non-finite loss {loss} or grad norm {grad_norm}; update skipped"
            );
        }
        if !self.cfg.skip_nonfinite {
            bail!("step {step}: non-finite loss {loss} or grad norm {grad_norm} (train.nonfinite = \"abort\")");
        }
        if self.state.consecutive_nonfinite >= t.max_consecutive_nonfinite {
            bail!(
                "{} non-finite steps in a row (train.max_consecutive_nonfinite); the last good checkpoint is intact",
                self.state.consecutive_nonfinite
            );
        }
        Ok(())
    }

    /// Every `log.interval` steps (and the last): one metrics record and one progress line.
    fn log(&mut self, r: &StepReport<F::Plan>) -> Result<()> {
        let (t, raw) = (&self.cfg.raw.train, &self.cfg.raw);
        let (step, world) = (r.step, self.world);
        let last = step == t.max_steps;
        if step % raw.log.interval != 0 && !last {
            return Ok(());
        }
        let window = self.window;
        let secs = window.0.elapsed().as_secs_f64().max(1e-9);
        // Steps since the last log line (fewer on the first line after a resume).
        let window_steps = raw.log.interval.min(step - self.first_step);
        let tokens_per_s = window.1 as f64 / secs;
        // Per device: the window's FLOPs are the whole job's.
        let utilisation = |flops: f64| match raw.log.peak_flops > 0.0 {
            true => json!(flops / secs / raw.log.peak_flops / world as f64),
            false => json!(null),
        };
        let mut rec = json!({
            "step": step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": utilisation(window.2), "hfu": utilisation(window.3),
            "tokens_seen": self.state.tokens_seen, "nonfinite_total": self.state.nonfinite_total,
            "flops_per_token": window.2 / window.1.max(1) as f64,
            "loss_tokens": r.loss_tokens,
            "elapsed_s": self.started.elapsed().as_secs_f64(),
        });
        let computed = self.model.tokens_computed(self.block_size as i64) as f64;
        if computed != self.block_size as f64 {
            rec["data_tokens_per_s"] = json!(tokens_per_s * self.block_size as f64 / computed);
        }
        let (plan_fields, plan_label) = self.model.plan_fields(r.plan);
        for (key, value) in plan_fields {
            rec[key] = value;
        }
        if let LmObjective::Coconut(c) = &raw.objective {
            rec["epoch"] = json!(self.epoch);
            rec["stage"] = json!(c.stage(self.epoch));
        }
        self.phases.record(&mut rec, window_steps);
        // Host RSS, and on a GPU its caching allocator's peaks; the largest over ranks.
        let gpu = match self.device {
            Device::Cuda(i) => muninn_model::shim::cuda_memory(i).ok(),
            _ => None,
        };
        let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
        let mut peak = [
            peak_rss_gib(),
            gpu.map_or(0.0, |m| gib(m.peak_allocated)),
            gpu.map_or(0.0, |m| gib(m.peak_reserved)),
        ];
        self.comm.allreduce_f64(&mut peak, Op::Max, "peak memory")?;
        rec["peak_mem_gib"] = json!(peak[0]);
        if gpu.is_some() {
            rec["gpu_peak_allocated_gib"] = json!(peak[1]);
            rec["gpu_peak_reserved_gib"] = json!(peak[2]);
        }
        if let Some(sync) = self.sync.as_mut() {
            // Seconds per step, the mean over ranks: issuing messages, and blocked on them.
            let st = sync.stats;
            let mut c = [st.launch_s, st.wait_s, st.elems, st.elems_done_in_backward];
            self.comm.sum_f64(&mut c, "communication timings")?;
            let per_step = (world as u64 * window_steps) as f64;
            rec["comm_launch_s"] = json!(c[0] / per_step);
            rec["comm_wait_s"] = json!(c[1] / per_step);
            // Share of gradient messages already complete when backward ended.
            rec["comm_overlap"] = json!(if c[2] > 0.0 { c[3] / c[2] } else { 0.0 });
            sync.stats = Default::default();
        }
        if let Some(x) = &self.last_x {
            // The family's diagnostics, the mean over ranks.
            let fields = self.model.telemetry(x, r.plan)?;
            let mut v: Vec<f64> = fields
                .iter()
                .map(|(_, v)| v.as_f64().unwrap_or(f64::NAN))
                .collect();
            self.comm.sum_f64(&mut v, "telemetry")?;
            for ((key, _), v) in fields.iter().zip(v) {
                rec[*key] = json!(v / world as f64);
            }
        }
        if raw.eval.interval > 0 && step % raw.eval.interval == 0 || last {
            let comm = &mut *self.comm;
            let flat = self.model.params().flat().detach();
            // With an average of the weights, validation measures the average.
            let trained = self.ema.as_ref().map(|ema| {
                let trained = flat.copy();
                tch::no_grad(|| flat.shallow_clone().copy_(&ema.weights));
                trained
            });
            let metrics = validate(self.model, &self.val_batches, &mut |sums| {
                comm.sum_f64(sums, "validation loss")
            });
            if let Some(trained) = trained {
                tch::no_grad(|| flat.shallow_clone().copy_(&trained));
            }
            let metrics = metrics?;
            for (name, v) in metrics {
                rec[name] = json!(v);
            }
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.log(&rec)?;
        }
        let (loss, lr, grad_norm) = (r.loss, r.lr, r.grad_norm);
        let msg = format!(
            "loss {loss:.4} lr {lr:.2e} |g| {grad_norm:.3} {plan_label} {tokens_per_s:.0} tok/s"
        );
        match (&self.bar, self.root) {
            (Some(bar), _) => bar.set_message(msg),
            (None, true) => eprintln!("step {step}/{} {msg}", t.max_steps),
            (None, false) => {}
        }
        self.window = (Instant::now(), 0, 0.0, 0.0);
        Ok(())
    }

    /// Saves when due; stops on the last step, an exit interval or a signal (SLURM's warning).
    /// Every input to this decision is the same on every rank.
    fn maybe_save(&mut self, r: &StepReport<F::Plan>) -> Result<Option<Outcome>> {
        let (t, raw) = (&self.cfg.raw.train, &self.cfg.raw);
        let step = r.step;
        let exit_interval = t.exit_interval > 0 && step - self.first_step >= t.exit_interval;
        let stop = if step == t.max_steps {
            Some(Stop::Finished)
        } else if r.signalled {
            Some(Stop::Signal)
        } else if exit_interval {
            Some(Stop::ExitInterval)
        } else {
            None
        };
        let due = raw.checkpoint.interval > 0 && step % raw.checkpoint.interval == 0;
        if stop.is_none() && !due {
            return Ok(None);
        }
        let t0 = Instant::now();
        let dir = save(
            self.comm,
            &raw.dist,
            &raw.checkpoint,
            Extras {
                tokenizer: self.tokenizer,
                ema: self.ema.as_ref().map(|e| &e.weights),
            },
            &self.run_dir,
            self.model,
            &self.opt,
            self.zero1,
            &self.state,
        )?;
        if self.root {
            let mb = ckpt::dir_bytes(&dir) as f64 / 1e6;
            let secs = t0.elapsed().as_secs_f64();
            let line = format!(
                "saved {} at step {step} ({mb:.1} MB in {secs:.2} s, {:.0} MB/s, {} writer(s))",
                dir.display(),
                mb / secs.max(1e-9),
                self.world
            );
            match &self.bar {
                Some(bar) if stop.is_none() => bar.println(line),
                _ => eprintln!("{line}"),
            }
        }
        let Some(stop) = stop else {
            return Ok(None);
        };
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        if self.root && stop == Stop::Finished {
            mark_finished(&self.finished_marker, step)?;
        }
        Ok(Some(Outcome {
            step,
            stop,
            last_loss: self.last_loss,
        }))
    }
}

#[derive(Clone, Copy)]
enum Phase {
    /// Reading the micro-batch and moving it to the device.
    Data,
    /// `loss_backward`, including the gradient messages started during it.
    ForwardBackward,
    /// Waiting for the gradient reduction, accumulation scaling, and the vote.
    Reduce,
    /// Clipping, the (ZeRO-1) update and zeroing the gradient.
    Optimizer,
}

/// Per-phase wall time of the steps since the last log line (`log.profile`). Each lap waits for
/// the device first, so that a GPU's queued work is charged to the phase that queued it.
struct Phases {
    on: bool,
    device: Device,
    last: Instant,
    secs: [f64; 4],
}

impl Phases {
    fn new(on: bool, device: Device) -> Self {
        Phases {
            on,
            device,
            last: Instant::now(),
            secs: [0.0; 4],
        }
    }

    fn sync(&self) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    fn start(&mut self) {
        if self.on {
            self.sync();
            self.last = Instant::now();
        }
    }

    fn lap(&mut self, phase: Phase) {
        if self.on {
            self.sync();
            let now = Instant::now();
            self.secs[phase as usize] += (now - self.last).as_secs_f64();
            self.last = now;
        }
    }

    /// Adds `time_{data,fwd_bwd,reduce,optimizer}_ms` (per step, over `steps` steps) and restarts.
    fn record(&mut self, rec: &mut serde_json::Value, steps: u64) {
        if !self.on {
            return;
        }
        let per_step = 1e3 / steps.max(1) as f64;
        for (key, s) in [
            "time_data_ms",
            "time_fwd_bwd_ms",
            "time_reduce_ms",
            "time_optimizer_ms",
        ]
        .iter()
        .zip(self.secs)
        {
            rec[*key] = json!(s * per_step);
        }
        self.secs = [0.0; 4];
    }
}

/// Written to the run directory when training reaches train.max_steps, so that job scripts can tell
/// a finished run from one stopped before its time limit.
pub const FINISHED: &str = "FINISHED";

fn mark_finished(path: &std::path::Path, step: u64) -> Result<()> {
    std::fs::write(path, format!("step {step}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// The largest resident set of this process so far, GiB. (Device memory is not included: libtorch's
/// allocator statistics are not reachable through tch.)
fn peak_rss_gib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: initialised by the successful call above.
    let kib = unsafe { usage.assume_init() }.ru_maxrss as f64;
    kib / (1024.0 * 1024.0)
}

/// A checkpoint, collectively: rank 0 prepares a staging directory, every rank writes its slice of
/// the optimizer state into it in parallel (its ZeRO-1 shard, or without ZeRO-1 the same slice of
/// the full state every rank holds), then rank 0 adds the model, the trainer state and last the
/// manifest and renames it into place. After each phase all ranks learn whether it worked, so none
/// trains on after a failed save. They wait under `checkpoint.timeout_s`, not the (shorter) bound
/// of the gradient messages.
#[allow(clippy::too_many_arguments)]
fn save<F: Family>(
    comm: &mut Comm,
    dist: &crate::config::DistSection,
    ckpt_cfg: &crate::config::CheckpointSection,
    extras: Extras,
    run_dir: &std::path::Path,
    model: &F,
    opt: &FlatOptimizer,
    zero1: bool,
    state: &TrainerState,
) -> Result<PathBuf> {
    use std::time::Duration;
    comm.set_timeout(Duration::from_secs_f64(ckpt_cfg.timeout_s));
    let shard_weights =
        comm.world() > 1 && model.params().numel() as f64 * 4.0 > ckpt_cfg.shard_weights_mb * 1e6;
    let saved = save_collectively(
        comm,
        dist,
        extras,
        run_dir,
        model,
        opt,
        zero1,
        state,
        ckpt_cfg.keep,
        shard_weights,
    );
    comm.set_timeout(Duration::from_secs_f64(dist.timeout_s));
    saved
}

#[allow(clippy::too_many_arguments)]
fn save_collectively<F: Family>(
    comm: &Comm,
    dist: &crate::config::DistSection,
    extras: Extras,
    run_dir: &std::path::Path,
    model: &F,
    opt: &FlatOptimizer,
    zero1: bool,
    state: &TrainerState,
    keep: usize,
    shard_weights: bool,
) -> Result<PathBuf> {
    let (rank, world, step) = (comm.rank(), comm.world(), state.step);
    let failed_anywhere = |failed: bool, what: &str| -> Result<bool> {
        let mut n = [failed as u8 as f64];
        comm.sum_f64(&mut n, what)?;
        Ok(n[0] > 0.0)
    };
    // Rank 0 prepares the staging directory, or finds the step saved already (interval and end
    // coincide).
    let begun = match comm.is_root() {
        true => ckpt::begin_save(run_dir, step),
        false => Ok(Some(PathBuf::new())),
    };
    let mut flags = [
        begun.is_err() as u8 as f64,
        matches!(begun, Ok(None)) as u8 as f64,
    ];
    comm.sum_f64(&mut flags, "starting the checkpoint")?;
    if flags[0] > 0.0 {
        begun?;
        bail!("rank 0 could not start the checkpoint of step {step}");
    }
    if flags[1] > 0.0 {
        return Ok(ckpt::step_dir(run_dir, step));
    }
    let layouts: Vec<Layout> = (0..world)
        .map(|r| {
            Layout::owning(
                &model.grad_regions(),
                opt.whole(),
                dist.chunk_elems(),
                r,
                world,
            )
        })
        .collect();
    let pieces = layouts[rank].pieces();
    let staging = ckpt::staging_dir(run_dir, step);
    let state_tensors = opt.state_tensors();
    let slice = |t: &Tensor| match zero1 {
        true => t.to_device(Device::Cpu),
        false => crate::optim::gather_pieces(t, &pieces).to_device(Device::Cpu),
    };
    let (m, v) = (slice(&state_tensors[0].1), slice(&state_tensors[1].1));
    let written = ckpt::write_optimizer_shard(&staging, rank, world, &m, &v, &pieces)
        .and_then(|()| match shard_weights {
            true => ckpt::write_weight_shard(&staging, model, rank, world),
            false => Ok(()),
        })
        .and_then(|()| ckpt::write_rank_state(&staging, &model.rank_state(), rank, world));
    if failed_anywhere(
        written.is_err(),
        "writing the optimizer shards of the checkpoint",
    )? {
        written?;
        bail!("another rank could not write its part of the checkpoint of step {step}");
    }
    let manifest = ckpt::Manifest {
        version: 1,
        step,
        world,
        numel: model.params().numel(),
        optimizer: layouts
            .iter()
            .enumerate()
            .map(|(r, l)| ckpt::OptimizerShard {
                file: ckpt::shard_file(r, world),
                pieces: l.pieces(),
            })
            .collect(),
        weights: match shard_weights {
            true => (0..world).map(|r| ckpt::weight_file(r, world)).collect(),
            false => Vec::new(),
        },
    };
    let committed = match comm.is_root() {
        true => ckpt::commit_save(run_dir, &staging, model, state, &manifest, keep, extras),
        false => Ok(ckpt::step_dir(run_dir, step)),
    };
    if failed_anywhere(
        committed.is_err(),
        "agreeing that the checkpoint was written",
    )? {
        committed?;
        bail!("rank 0 could not write the checkpoint of step {step}");
    }
    committed
}

/// Sets `flag` on SIGTERM and SIGUSR1, which SLURM sends before a time limit.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("installing signal handlers")?;
    }
    Ok(flag)
}
