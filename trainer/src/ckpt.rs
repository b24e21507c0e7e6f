//! Training checkpoints: `checkpoints/step-XXXXXXXX/` with the model (model.safetensors +
//! config.toml), the tokenizer, one optimizer shard per rank (`optimizer-RRRRR-of-WWWWW.safetensors`,
//! written by every rank in parallel), the trainer state (trainer_state.json) and, last, a manifest.
//! Everything is written into a staging directory renamed into place by rank 0, so a checkpoint
//! directory exists only once complete; resume takes the newest one, on any world size. Older
//! single-file checkpoints (`optimizer.safetensors`, no manifest) still load.

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
            // Complete: a manifest (written last), or an older single-file checkpoint.
            let sharded = path.join(MANIFEST_FILE).is_file();
            let single = path.join(OPTIMIZER_FILE).is_file() && path.join(STATE_FILE).is_file();
            if sharded || single {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What makes a checkpoint complete, written last: the world size that wrote it and each
/// optimizer shard file with the ranges of the flat buffer it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub step: u64,
    pub world: usize,
    /// Elements of the flat parameter (and optimizer-state) buffer.
    pub numel: i64,
    pub optimizer: Vec<OptimizerShard>,
    /// The weight shard files, when every rank wrote a share of the weights (else `model.safetensors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<String>,
}

/// Rank r's weight shard of `world` (HF's 1-based `model-00001-of-00002.safetensors`).
pub fn weight_file(rank: usize, world: usize) -> String {
    format!("model-{:05}-of-{world:05}.safetensors", rank + 1)
}

/// Which rank writes each parameter tensor when the weights are sharded: the largest first, each
/// to the rank with the fewest bytes so far (deterministic; every rank computes the same).
pub fn weight_owners(specs: &[muninn_model::params::ParamSpec], world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(specs[i].numel()), i));
    let (mut load, mut owner) = (vec![0i64; world], vec![0usize; specs.len()]);
    for i in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).expect("a rank");
        owner[i] = r;
        load[r] += specs[i].numel();
    }
    owner
}

/// Every rank, when the weights are sharded: its share of the parameter tensors.
pub fn write_weight_shard<F: Family>(
    staging: &Path,
    model: &F,
    rank: usize,
    world: usize,
) -> Result<()> {
    let owners = weight_owners(model.params().specs(), world);
    let mut mine: Vec<(String, Tensor)> = model
        .params()
        .named_detached()
        .into_iter()
        .zip(owners)
        .filter(|(_, o)| *o == rank)
        .map(|((n, t), _)| (n, t.to_device(tch::Device::Cpu)))
        .collect();
    if rank == 0 {
        // The family's buffers (TRM's puzzle table) travel with rank 0's share.
        mine.extend(
            model
                .buffers()
                .into_iter()
                .map(|(n, t)| (n.to_string(), t.detach().to_device(tch::Device::Cpu))),
        );
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "muninn".to_string())]);
    st::write(&staging.join(weight_file(rank, world)), &mine, Some(meta))
}

/// Rank 0, when the weights are sharded: `config.toml` and the HF index naming each tensor's file.
fn write_weight_index<F: Family>(staging: &Path, model: &F, world: usize) -> Result<()> {
    let owners = weight_owners(model.params().specs(), world);
    let mut map: serde_json::Map<String, serde_json::Value> = model
        .params()
        .specs()
        .iter()
        .zip(owners)
        .map(|(s, o)| (s.name.clone(), weight_file(o, world).into()))
        .collect();
    for (name, _) in model.buffers() {
        map.insert(name.to_string(), weight_file(0, world).into());
    }
    let index = serde_json::json!({
        "metadata": {"total_size": model.params().numel() * 4},
        "weight_map": map,
    });
    write_synced(
        &staging.join("model.safetensors.index.json"),
        &serde_json::to_string_pretty(&index)?,
    )?;
    write_synced(&staging.join(checkpoint::CONFIG_FILE), &model.config_toml())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerShard {
    pub file: String,
    /// (offset, length) ranges of the flat buffer, laid end to end in the file's tensors.
    pub pieces: Vec<(i64, i64)>,
}

pub const MANIFEST_FILE: &str = "manifest.json";

/// Rank r's optimizer shard file of a checkpoint written by `world` ranks.
pub fn shard_file(rank: usize, world: usize) -> String {
    format!("optimizer-{rank:05}-of-{world:05}.safetensors")
}

/// Where every rank writes its part of step `step`'s checkpoint before rank 0 renames it into place.
pub fn staging_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir
        .join("checkpoints")
        .join(format!("{}step-{step:08}", muninn_data::atomic::TMP_PREFIX))
}

/// Rank 0, before a save: None when step `step` is already saved (interval and end coincide), else
/// an empty staging directory (a leftover of an interrupted save of the same step is replaced).
pub fn begin_save(run_dir: &Path, step: u64) -> Result<Option<PathBuf>> {
    if step_dir(run_dir, step).exists() {
        return Ok(None);
    }
    let staging = staging_dir(run_dir, step);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    Ok(Some(staging))
}

/// Every rank: writes its optimizer state over `pieces` of the flat buffer (`m`, `v` hold exactly
/// those elements, end to end) into the staging directory, in parallel with the others.
pub fn write_optimizer_shard(
    staging: &Path,
    rank: usize,
    world: usize,
    m: &Tensor,
    v: &Tensor,
    pieces: &[(i64, i64)],
) -> Result<()> {
    let meta =
        std::collections::HashMap::from([("pieces".to_string(), serde_json::to_string(pieces)?)]);
    let tensors = [
        ("exp_avg".to_string(), m.shallow_clone()),
        ("exp_avg_sq".to_string(), v.shallow_clone()),
    ];
    st::write(&staging.join(shard_file(rank, world)), &tensors, Some(meta))
}

/// Rank 0, once every shard is written: the model files, the tokenizer, the trainer state and last
/// the manifest into the staging directory, which is then renamed to `step-N` (durably); then the
/// oldest checkpoints beyond `keep` are removed.
/// What a checkpoint holds besides weights, optimizer and trainer state, where the run has it.
#[derive(Clone, Copy)]
pub struct Extras<'a> {
    /// The tokenizer of token data, copied in.
    pub tokenizer: Option<&'a Path>,
    /// The moving average of the weights, laid out like the flat buffer.
    pub ema: Option<&'a Tensor>,
}

pub fn commit_save<F: Family>(
    run_dir: &Path,
    staging: &Path,
    model: &F,
    state: &TrainerState,
    manifest: &Manifest,
    keep: usize,
    extras: Extras,
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
    if let Some(ms) = std::env::var(SAVE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    match manifest.weights.is_empty() {
        true => model.save_model(staging)?,
        false => write_weight_index(staging, model, manifest.world)?,
    }
    if let Some(tokenizer) = extras.tokenizer {
        std::fs::copy(tokenizer, staging.join(TOKENIZER_FILE))
            .with_context(|| format!("copying {} into the checkpoint", tokenizer.display()))?;
    }
    if let Some(ema) = extras.ema {
        checkpoint::write_ema_file(model.params(), model.buffers(), ema, staging)?;
    }
    write_synced(
        &staging.join(STATE_FILE),
        &serde_json::to_string_pretty(state)?,
    )?;
    write_synced(
        &staging.join(MANIFEST_FILE),
        &serde_json::to_string_pretty(manifest)?,
    )?;
    std::fs::File::open(staging)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", staging.display()))?;
    let out = step_dir(run_dir, state.step);
    std::fs::rename(staging, &out)
        .with_context(|| format!("renaming {} to {}", staging.display(), out.display()))?;
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

fn write_synced(path: &Path, text: &str) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The optimizer state (m, v) of a checkpoint over `want`, ranges of the flat buffer laid end to
/// end, on the host: from the shard files of a sharded checkpoint (reading only the files that
/// overlap `want`, one at a time), or from an older checkpoint's single `optimizer.safetensors`.
pub fn read_optimizer(dir: &Path, want: &[(i64, i64)]) -> Result<(Tensor, Tensor)> {
    let len: i64 = want.iter().map(|p| p.1).sum();
    let manifest_path = dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        let o = st::StFile::open(&dir.join(OPTIMIZER_FILE))?;
        let (m, v) = (o.get("exp_avg")?, o.get("exp_avg_sq")?);
        let pick = |t: &Tensor| crate::optim::gather_pieces(t, want);
        return Ok((pick(&m), pick(&v)));
    }
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let (m, v) = (
        Tensor::zeros([len], (tch::Kind::Float, tch::Device::Cpu)),
        Tensor::zeros([len], (tch::Kind::Float, tch::Device::Cpu)),
    );
    let mut covered = 0i64;
    for shard in &manifest.optimizer {
        // (file position, want position, length) of every overlap.
        let mut copies = Vec::new();
        let mut fpos = 0;
        for &(fo, fl) in &shard.pieces {
            let mut wpos = 0;
            for &(wo, wl) in want {
                let (lo, hi) = (fo.max(wo), (fo + fl).min(wo + wl));
                if lo < hi {
                    copies.push((fpos + lo - fo, wpos + lo - wo, hi - lo));
                }
                wpos += wl;
            }
            fpos += fl;
        }
        if copies.is_empty() {
            continue;
        }
        let path = dir.join(&shard.file);
        let f = st::StFile::open(&path)?;
        let (fm, fv) = (f.get("exp_avg")?, f.get("exp_avg_sq")?);
        ensure!(
            fm.size() == [fpos] && fv.size() == [fpos],
            "{}: {:?} elements, the manifest says {fpos}",
            path.display(),
            fm.size()
        );
        tch::no_grad(|| {
            for &(src, dst, n) in &copies {
                m.narrow(0, dst, n).copy_(&fm.narrow(0, src, n));
                v.narrow(0, dst, n).copy_(&fv.narrow(0, src, n));
                covered += n;
            }
        });
    }
    ensure!(
        covered == len,
        "{}: the optimizer shards cover {covered} of the {len} elements this rank needs",
        manifest_path.display()
    );
    Ok((m, v))
}

/// Writes checkpoint `dir` in the single-file form (one `optimizer.safetensors` over the whole
/// flat buffer, no manifest) into the new directory `out`, for tools that read one file.
pub fn consolidate(dir: &Path, out: &Path) -> Result<()> {
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .with_context(|| format!("reading {}", dir.join(STATE_FILE).display()))?,
    )?;
    let weights = checkpoint::TensorFiles::open(&checkpoint::model_files(dir)?)?;
    let names: Vec<String> = weights.names().into_iter().map(String::from).collect();
    let numel: i64 = names
        .iter()
        .map(|n| weights.shape(n).map_or(0, |s| s.iter().product::<i64>()))
        .sum();
    let (m, v) = read_optimizer(dir, &[(0, numel)])?;
    let sharded_weights = !dir.join(checkpoint::MODEL_FILE).is_file();
    checkpoint::write_new_dir(out, |o| {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let weight_shard = name.starts_with("model-") || name == "model.safetensors.index.json";
            if name == MANIFEST_FILE
                || name.starts_with("optimizer-")
                || weight_shard
                || !path.is_file()
            {
                continue;
            }
            std::fs::copy(&path, o.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
        if sharded_weights {
            let tensors = names
                .iter()
                .map(|n| Ok((n.clone(), weights.get(n)?)))
                .collect::<Result<Vec<_>>>()?;
            let meta =
                std::collections::HashMap::from([("format".to_string(), "muninn".to_string())]);
            st::write(&o.join(checkpoint::MODEL_FILE), &tensors, Some(meta))?;
        }
        st::write(
            &o.join(OPTIMIZER_FILE),
            &[("exp_avg".into(), m), ("exp_avg_sq".into(), v)],
            None,
        )?;
        write_synced(&o.join(STATE_FILE), &serde_json::to_string_pretty(&state)?)
    })
}

/// A rank's file of the family's own state ([`Family::rank_state`]).
pub fn rank_state_file(rank: usize, world: usize) -> String {
    format!("family-state-{rank:05}-of-{world:05}.safetensors")
}

/// Writes this rank's family state into the staging directory (nothing when it has none).
pub fn write_rank_state(
    staging: &Path,
    tensors: &[(String, Tensor)],
    rank: usize,
    world: usize,
) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    st::write(&staging.join(rank_state_file(rank, world)), tensors, None)
}

/// Every rank's family state in a checkpoint, as one list of named tensors.
pub fn read_rank_state(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("family-state-") && name.ends_with(".safetensors") {
            let f = st::StFile::open(&path)?;
            for (n, _) in f.shapes() {
                let t = f.get(&n)?;
                out.push((n, t));
            }
        }
    }
    Ok(out)
}

/// Loads a checkpoint's average of the weights into `ema` (laid out like the flat buffer).
pub fn load_ema<F: Family>(dir: &Path, model: &F, ema: &Tensor) -> Result<()> {
    let path = dir.join(checkpoint::EMA_FILE);
    let f = st::StFile::open(&path).with_context(|| {
        format!(
            "the run keeps an average of the weights (optimizer.ema_decay), but {} is missing",
            path.display()
        )
    })?;
    for (name, view) in model.params().named_of(ema) {
        let t = f
            .get(&name)
            .with_context(|| format!("{}: no `{name}`", path.display()))?;
        ensure!(
            t.size() == view.size(),
            "{}: `{name}` has shape {:?}, expected {:?}",
            path.display(),
            t.size(),
            view.size()
        );
        tch::no_grad(|| view.shallow_clone().copy_(&t.to_device(view.device())));
    }
    Ok(())
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
    // Only this rank's pieces, on the host; the optimizer copies them to its device.
    let (m, v) = read_optimizer(dir, opt.pieces())
        .with_context(|| format!("loading the optimizer state of {}", dir.display()))?;
    opt.load_shard_state(&m, &v, state.optimizer_steps)?;
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

/// Bytes of the files in a checkpoint directory.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
