//! The training loop on one process: config → (model, data, optimizer, checkpoints, metrics) → steps.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use muninn_data::{loader, Batch, Loader, TokenDataset, TokenizerInfo};
use muninn_model::flops::train_flops_per_token;
use muninn_model::{Depth, Huginn, InitState};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::ckpt::{self, TrainerState};
use crate::config::RunConfig;
use crate::metrics::Metrics;
use crate::optim::{clip_grad_norm, FlatOptimizer};

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

fn to_tensors(b: &Batch, device: Device) -> (Tensor, Tensor) {
    let shape = [b.rows as i64, b.block as i64];
    (
        Tensor::from_slice(&b.inputs).view(shape).to_device(device),
        Tensor::from_slice(&b.targets).view(shape).to_device(device),
    )
}

/// Seeds torch's RNG (s0 draws) from (seed, step, purpose): a resumed run draws the same states.
fn seed_torch(seed: u64, step: u64, purpose: u64) {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(step.to_le_bytes());
    h.update(purpose.to_le_bytes());
    let d = h.finalize();
    tch::manual_seed(i64::from_le_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX);
}

/// Mean validation loss at each depth, all iterations without a graph, from the same s0 each time.
/// `val` holds (inputs, targets) on the model's device, built once per run.
fn validate(
    model: &Huginn,
    val: &[(Tensor, Tensor)],
    depths: &[i64],
    seed: u64,
) -> Result<Vec<(i64, f64)>> {
    let rows: i64 = val.iter().map(|(x, _)| x.size()[0]).sum();
    depths
        .iter()
        .map(|&r| {
            seed_torch(seed, 0, 0xE7A1);
            let mut total = 0.0;
            for (x, y) in val {
                let out = tch::no_grad(|| model.forward(x, Depth::eval(r), &InitState::Config))?;
                total += muninn_model::cross_entropy(&out.logits, y)?.double_value(&[])
                    * x.size()[0] as f64;
            }
            Ok((r, total / rows as f64))
        })
        .collect()
}

pub fn train(cfg: &RunConfig, resume: Resume, stop_signal: Arc<AtomicBool>) -> Result<Outcome> {
    let (t, raw) = (&cfg.raw.train, &cfg.raw);
    if t.threads > 0 {
        tch::set_num_threads(t.threads);
    }
    let device = crate::parse_device(&t.device)?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

    // Data: the shards must come from the configured tokenizer.
    let tok = TokenizerInfo::load(&raw.data.tokenizer)?;
    let train_ds = TokenDataset::open(&raw.data.dir, "train", Some(&tok))?;
    let val_ds = TokenDataset::open(&raw.data.dir, "val", Some(&tok))?;
    anyhow::ensure!(
        tok.vocab_size as i64 <= cfg.model.vocab_size,
        "the tokenizer has {} ids but model.vocab_size = {}",
        tok.vocab_size,
        cfg.model.vocab_size
    );
    anyhow::ensure!(
        train_ds.block_size() as i64 <= cfg.model.block_size,
        "the shards hold {}-token sequences, longer than model.block_size = {}",
        train_ds.block_size(),
        cfg.model.block_size
    );
    let val_batches: Vec<(Tensor, Tensor)> =
        loader::val_batches(&val_ds, t.micro_batch_size, raw.eval.max_rows, 0, 1)
            .iter()
            .map(|b| to_tensors(b, device))
            .collect();

    // Model, optimizer, loader; then the checkpoint, if resuming.
    let model = Huginn::new(cfg.model.clone(), device, cfg.precision)?;
    model.init(t.seed);
    let mut opt = FlatOptimizer::new(
        cfg.optimizer.clone(),
        model.params().specs(),
        model.params().flat(),
    );
    let mut loader = Loader::new(&train_ds, t.seed);
    let model_sha256 = format!("{:x}", Sha256::digest(cfg.model.to_toml().as_bytes()));
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
    };
    if let Some(dir) = &from {
        state = ckpt::load(dir, &model, &mut opt, &model_sha256)?;
        loader
            .load_state(&state.loader)
            .with_context(|| format!("resuming the loader from {}", dir.display()))?;
        eprintln!("resumed from {} at step {}", dir.display(), state.step);
    }
    let config_path = run_dir.join("config.toml");
    std::fs::write(&config_path, cfg.to_toml())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut metrics = Metrics::open(&run_dir, raw.log.tensorboard)?;

    // A progress bar for a person at a terminal; plain lines in batch logs (SLURM), where indicatif
    // would draw nothing.
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(t.max_steps).with_position(state.step);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("static template"),
        );
        Some(bar)
    } else {
        None
    };
    let tokens_per_step = (t.micro_batch_size * t.grad_accum * train_ds.block_size()) as u64;
    let first_step = state.step;
    let mut last_loss = f64::NAN;
    // Since the last log line: (start, tokens, model FLOPs, hardware FLOPs), from each step's (n, k).
    let mut window = (Instant::now(), 0u64, 0.0f64, 0.0f64);
    let save = |state: &TrainerState, opt: &FlatOptimizer| {
        ckpt::save(&run_dir, &model, opt, state, raw.checkpoint.keep)
    };

    while state.step < t.max_steps {
        state.step += 1;
        let step = state.step;
        let depth = cfg.sampler.draw(step);
        seed_torch(t.seed, step, 0x50);

        // Forward and backward over the micro-batches; gradients accumulate in the flat buffer.
        let mut loss_sum = 0.0;
        let mut last_x = None;
        for _ in 0..t.grad_accum {
            let (x, y) = to_tensors(&loader.next_batch(0, 1, t.micro_batch_size), device);
            last_x = Some(x.shallow_clone());
            let loss = model.loss_backward(
                &x,
                &y,
                depth,
                &InitState::Config,
                raw.recurrence.activation_checkpointing,
            )?;
            loss_sum += loss.double_value(&[]);
        }
        let loss = loss_sum / t.grad_accum as f64;
        let grad = model.params().flat().grad();
        if t.grad_accum > 1 {
            tch::no_grad(|| {
                let _ = grad
                    .shallow_clone()
                    .g_mul_scalar_(1.0 / t.grad_accum as f64);
            });
        }
        let grad_norm = clip_grad_norm(&grad, raw.optimizer.grad_clip);
        let lr = cfg.schedule.at(step);
        let finite = loss.is_finite() && grad_norm.is_finite();
        if finite {
            state.consecutive_nonfinite = 0;
            let skip_first =
                raw.optimizer.skip_first_update && state.optimizer_steps == 0 && step == 1;
            if !skip_first {
                opt.step(model.params().flat(), &grad, lr);
                state.optimizer_steps = opt.steps();
            }
        } else {
            state.nonfinite_total += 1;
            state.consecutive_nonfinite += 1;
            eprintln!(
                "step {step}: non-finite loss {loss} or grad norm {grad_norm}; update skipped"
            );
            if !cfg.skip_nonfinite {
                bail!("step {step}: non-finite loss {loss} or grad norm {grad_norm} (train.nonfinite = \"abort\")");
            }
            if state.consecutive_nonfinite >= t.max_consecutive_nonfinite {
                bail!(
                    "{} non-finite steps in a row (train.max_consecutive_nonfinite); the last good checkpoint is intact",
                    state.consecutive_nonfinite
                );
            }
        }
        let _ = model.params().flat().grad().zero_();
        state.tokens_seen += tokens_per_step;
        state.loader = loader.state();
        last_loss = loss;
        let flops = train_flops_per_token(
            &cfg.model,
            depth.no_grad,
            depth.with_grad,
            train_ds.block_size() as i64,
            raw.recurrence.activation_checkpointing,
        );
        window.1 += tokens_per_step;
        window.2 += flops.model * tokens_per_step as f64;
        window.3 += flops.hardware * tokens_per_step as f64;

        if let Some(bar) = &bar {
            bar.set_position(step);
        }
        let last = step == t.max_steps;
        if step % raw.log.interval == 0 || last {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_s = window.1 as f64 / secs;
            let utilisation = |flops: f64| match raw.log.peak_flops > 0.0 {
                true => json!(flops / secs / raw.log.peak_flops),
                false => json!(null),
            };
            let mut rec = json!({
                "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "n": depth.no_grad, "k": depth.with_grad, "tokens_per_s": tokens_per_s,
                "mfu": utilisation(window.2), "hfu": utilisation(window.3),
                "tokens_seen": state.tokens_seen, "nonfinite_total": state.nonfinite_total,
            });
            if let Some(x) = &last_x {
                let tm = model.telemetry(x, depth.total().max(1), &InitState::Config)?;
                rec["recurrent_state_norm"] = json!(tm.state_norm);
                rec["recurrent_state_token_corr"] = json!(tm.token_corr);
                rec["rel_residual"] = json!(tm.rel_residual);
            }
            if raw.eval.interval > 0 && step % raw.eval.interval == 0 || last {
                for (r, v) in validate(&model, &val_batches, &raw.eval.depths, t.seed)? {
                    rec[format!("val_loss_r{r}")] = json!(v);
                }
            }
            metrics.log(&rec)?;
            let msg = format!(
                "loss {loss:.4} lr {lr:.2e} |g| {grad_norm:.3} (n,k)=({},{}) {tokens_per_s:.0} tok/s",
                depth.no_grad, depth.with_grad
            );
            match &bar {
                Some(bar) => bar.set_message(msg),
                None => eprintln!("step {step}/{} {msg}", t.max_steps),
            }
            window = (Instant::now(), 0, 0.0, 0.0);
        }

        // Save when due; stop on the last step, an exit interval, or a signal (SLURM's warning).
        let signalled = stop_signal.load(Ordering::SeqCst);
        let exit_interval = t.exit_interval > 0 && step - first_step >= t.exit_interval;
        if last
            || signalled
            || exit_interval
            || (raw.checkpoint.interval > 0 && step % raw.checkpoint.interval == 0)
        {
            let dir = save(&state, &opt)?;
            if last || signalled || exit_interval {
                if let Some(bar) = &bar {
                    bar.finish();
                }
                eprintln!("saved {} at step {step}", dir.display());
                let stop = if last {
                    Stop::Finished
                } else if signalled {
                    Stop::Signal
                } else {
                    Stop::ExitInterval
                };
                return Ok(Outcome {
                    step,
                    stop,
                    last_loss,
                });
            }
        }
    }
    Ok(Outcome {
        step: state.step,
        stop: Stop::Finished,
        last_loss,
    })
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
