//! Training checkpoints: `checkpoints/step-XXXXXXXX/` with the model (model.safetensors +
//! config.toml), the optimizer (optimizer.safetensors) and the trainer state (trainer_state.json).
//! Each is written into a temporary directory and renamed into place, so a checkpoint directory
//! exists only once complete; resume takes the newest one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use muninn_data::LoaderState;
use muninn_model::checkpoint;
use muninn_model::{st, Family};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::FamilyKind;
use crate::optim::FlatOptimizer;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
/// The run's tokenizer, copied into every checkpoint: inference needs nothing outside it.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Fault injection for tests: milliseconds every save sleeps before writing (a slow filesystem).
pub const SAVE_DELAY_ENV: &str = "MUNINN_FAULT_SAVE_DELAY_MS";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub version: u32,
    /// Optimizer steps completed (the next step is step + 1).
    pub step: u64,
    pub optimizer_steps: u64,
    pub loader: LoaderState,
    pub nonfinite_total: u64,
    pub consecutive_nonfinite: u64,
    pub tokens_seen: u64,
    /// sha256 of the resolved model shape: a checkpoint of another shape is refused.
    pub model_sha256: String,
    /// The model family (checkpoints from before families were recorded are Huginn's).
    #[serde(default)]
    pub family: FamilyKind,
}

pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// The run directory of a checkpoint laid out as `RUN/checkpoints/step-N/` with `RUN/config.toml`
/// (the resolved config the run wrote), or None for a checkpoint elsewhere.
pub fn run_of(checkpoint: &Path) -> Option<PathBuf> {
    let parent = checkpoint.parent()?;
    if parent.file_name() != Some("checkpoints".as_ref()) {
        return None;
    }
    let run_dir = parent.parent()?;
    run_dir
        .join("config.toml")
        .is_file()
        .then(|| run_dir.to_path_buf())
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if path.join(STATE_FILE).is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a checkpoint; `optimizer` is the optimizer state over the whole flat buffer (gathered
/// from every rank's shard under ZeRO-1, so any world size can resume it), `tokenizer` the run's
/// tokenizer, copied in.
pub fn save<F: Family>(
    run_dir: &Path,
    model: &F,
    optimizer: &[(String, Tensor)],
    state: &TrainerState,
    keep: usize,
    tokenizer: &Path,
) -> Result<PathBuf> {
    let finite = model
        .params()
        .flat()
        .detach()
        .isfinite()
        .all()
        .int64_value(&[])
        == 1;
    ensure!(
        finite,
        "refusing to save step {}: the weights are not finite",
        state.step
    );
    let out = step_dir(run_dir, state.step);
    if out.exists() {
        return Ok(out); // already saved at this step (e.g. interval and end coincide)
    }
    if let Some(ms) = std::env::var(SAVE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    checkpoint::write_new_dir(&out, |dir| {
        model.save_model(dir)?;
        std::fs::copy(tokenizer, dir.join(TOKENIZER_FILE))
            .with_context(|| format!("copying {} into the checkpoint", tokenizer.display()))?;
        st::write(&dir.join(OPTIMIZER_FILE), optimizer, None)?;
        let path = dir.join(STATE_FILE);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(serde_json::to_string_pretty(state)?.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    })?;
    // The rename is durable once the parent directory is synced.
    if let Some(parent) = out.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", parent.display()))?;
    }
    let all = list(run_dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(out)
}

/// Loads a checkpoint into `model` and `opt`; returns its trainer state.
pub fn load<F: Family>(
    dir: &Path,
    model: &F,
    opt: &mut FlatOptimizer,
    model_sha256: &str,
    family: FamilyKind,
) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (not a complete checkpoint?)", path.display()))?;
    let state: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(
        state.version == 1,
        "{}: trainer state version {} is unknown",
        path.display(),
        state.version
    );
    ensure!(
        state.family == family,
        "checkpoint {} is of the {} family, the config trains {} (model.family)",
        dir.display(),
        state.family.name(),
        family.name()
    );
    if state.model_sha256 != model_sha256 {
        let theirs = std::fs::read_to_string(dir.join(checkpoint::CONFIG_FILE)).unwrap_or_default();
        bail!(
            "checkpoint {} holds a different model shape than the config:\n--- checkpoint\n{theirs}--- config\n{}",
            dir.display(),
            model.config_toml()
        );
    }
    model.load_model(dir)?;
    let o = st::StFile::open(&dir.join(OPTIMIZER_FILE))?;
    // Host tensors: the optimizer copies only its own shard to its device.
    opt.load_state(
        &o.get("exp_avg")?,
        &o.get("exp_avg_sq")?,
        state.optimizer_steps,
    )
    .with_context(|| format!("loading {}", dir.join(OPTIMIZER_FILE).display()))?;
    Ok(state)
}

/// Resuming from step `step` of `run_dir` while newer checkpoints exist would mix two trajectories
/// (a later save skips a step that exists; pruning deletes the newest first). Moves every newer
/// checkpoint into `checkpoints/superseded-<step>-<unix seconds>/` (nothing is deleted) and returns
/// that directory and the steps moved, or None when there were none.
pub fn supersede_newer(run_dir: &Path, step: u64) -> Result<Option<(PathBuf, Vec<u64>)>> {
    let newer: Vec<(u64, PathBuf)> = list(run_dir)?
        .into_iter()
        .filter(|(s, _)| *s > step)
        .collect();
    if newer.is_empty() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = run_dir
        .join("checkpoints")
        .join(format!("superseded-{step:08}-{secs}"));
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for (_, path) in &newer {
        let to = aside.join(path.file_name().expect("step-N"));
        std::fs::rename(path, &to)
            .with_context(|| format!("moving {} to {}", path.display(), to.display()))?;
    }
    Ok(Some((aside, newer.into_iter().map(|(s, _)| s).collect())))
}

/// Removes the temporary directories interrupted saves left in `run_dir/checkpoints`
/// (`.muninn-tmp-HOST-PID-*`): those of this host whose process is gone, and, since a process on
/// another node cannot be asked, those older than `max_age` (no live save takes longer than its
/// bound). Returns what it removed.
pub fn remove_stale_temps(run_dir: &Path, max_age: std::time::Duration) -> Result<Vec<PathBuf>> {
    use muninn_data::atomic::{host_name, tmp_owner, TMP_PREFIX};
    let dir = run_dir.join("checkpoints");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let host = host_name();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(TMP_PREFIX) || !path.is_dir() {
            continue;
        }
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        let stale = match tmp_owner(name) {
            Some((h, pid)) if h == host => !process_alive(pid),
            _ => old,
        };
        if stale {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether a process with this id runs on this machine.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}
