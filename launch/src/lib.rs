//! Job rendering for clusters (SLURM on Frontier and CUDA clusters, `mpirun` locally), segment chains,
//! sweeps and their comparison. Knows configs and the CLI, never libtorch: the caller validates run
//! configs and hands over their resolved TOML.

pub mod compare;
pub mod data_job;
pub mod job;
pub mod profile;
pub mod provenance;
pub mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use job::{Job, Plan, Point, Request};
pub use profile::{Cluster, ClusterProfile, Scheduler};

/// `<base>/launch/<n>` for the next n: every launch of a run keeps its own scripts and records.
pub fn next_launch_dir(base: &Path) -> Result<PathBuf> {
    let root = base.join("launch");
    let mut last = 0u32;
    if root.is_dir() {
        for entry in
            std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))?
        {
            if let Some(n) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                last = last.max(n);
            }
        }
    }
    Ok(root.join((last + 1).to_string()))
}

/// Writes `files` (relative path, contents) into `dir`, which must not exist yet, all at once: they
/// go to a hidden sibling first, renamed into place when complete. Scripts (`.sh`, `.sbatch`) are
/// made executable. `logs/` is created for SLURM's output.
pub fn write_dir(dir: &Path, files: &[(String, String)]) -> Result<()> {
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let parent = dir.parent().context("a launch directory has a parent")?;
    let tmp = parent.join(format!(
        ".{}.partial",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(tmp.join("logs"))
        .with_context(|| format!("creating {}", tmp.display()))?;
    for (name, text) in files {
        let path = tmp.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if name.ends_with(".sh") || name.ends_with(".sbatch") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
}
