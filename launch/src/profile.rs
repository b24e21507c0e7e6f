//! Cluster profiles: TOML files that say how a job runs on one cluster (modules, environment, the
//! launcher line, node shape, walltime limits). Three ship with Muninn; users copy and edit them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The profiles that ship in `configs/clusters/`, built in so that `--cluster frontier` works from
/// any directory.
const BUILT_IN: [(&str, &str); 4] = [
    (
        "frontier",
        include_str!("../../configs/clusters/frontier.toml"),
    ),
    (
        "slurm-cuda",
        include_str!("../../configs/clusters/slurm-cuda.toml"),
    ),
    ("local", include_str!("../../configs/clusters/local.toml")),
    (
        "local-slurm",
        include_str!("../../configs/clusters/local-slurm.toml"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// sbatch scripts, submitted as a chain of segments (or a job array for sweeps).
    Slurm,
    /// This machine: the segments and sweep points run one after another in the foreground.
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalltimeBin {
    /// The bin covers jobs of up to this many nodes (and more than the previous bin's).
    pub max_nodes: u32,
    pub hours: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterProfile {
    #[serde(default)]
    pub description: String,
    pub scheduler: Scheduler,
    pub max_nodes: u32,
    pub gpus_per_node: u32,
    /// Cores a job may use per node; each rank gets cores_per_node / ranks_per_node.
    pub cores_per_node: u32,
    pub ranks_per_node: u32,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub qos: String,
    #[serde(default)]
    pub account: String,
    /// The site charges every job to an allocation: an empty account is refused before anything
    /// is written (sbatch would reject the job only once it is submitted).
    #[serde(default)]
    pub account_required: bool,
    #[serde(default)]
    pub constraint: String,
    /// Extra `#SBATCH` options, e.g. "--exclusive".
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Seconds before the time limit at which the trainer is told to save and stop.
    #[serde(default = "default_signal_s")]
    pub signal_s: u32,
    /// Peak FLOP/s of one device, copied into `log.peak_flops` when the run config leaves it 0.
    #[serde(default)]
    pub peak_flops: f64,
    /// Sweep points that may run at once (the job array's `%` throttle).
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// Jobs one user may have queued (SLURM's MaxSubmitJobs; every job-array task counts): a launch
    /// that would queue more is refused. None: no limit known.
    #[serde(default)]
    pub max_queued: Option<u32>,
    #[serde(default)]
    pub modules: Vec<String>,
    /// The launcher command before the per-rank runner, with {nodes}, {ranks}, {ranks_per_node},
    /// {cpus_per_rank} and {gpus_per_node} filled in.
    pub launcher: String,
    /// Shell lines run once per segment after the modules and environment (placeholders as above).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Exported before the job starts (placeholders as above).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Walltime limits by node count, smallest first. Required for SLURM.
    #[serde(default)]
    pub walltime: Vec<WalltimeBin>,
}

fn default_signal_s() -> u32 {
    300
}

fn one() -> u32 {
    1
}

/// A profile and where it came from.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// The profile file's text, copied into the launch directory.
    pub text: String,
    /// None for a built-in profile.
    pub path: Option<PathBuf>,
    pub profile: ClusterProfile,
}

impl Cluster {
    /// `name` is a TOML file, else `configs/clusters/<name>.toml` under the current directory (an
    /// edited copy wins), else a built-in profile.
    pub fn find(name: &str) -> Result<Cluster> {
        let as_file = Path::new(name);
        let local = Path::new("configs/clusters").join(format!("{name}.toml"));
        let path = if name.ends_with(".toml") || as_file.is_file() {
            Some(as_file.to_path_buf())
        } else {
            local.is_file().then_some(local)
        };
        let (text, path) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading cluster profile {}", p.display()))?;
                (text, Some(p))
            }
            None => match BUILT_IN.iter().find(|(n, _)| *n == name) {
                Some((_, text)) => (text.to_string(), None),
                None => bail!(
                    "unknown cluster `{name}`: expected one of {} or a profile file (configs/clusters/*.toml)",
                    BUILT_IN.map(|(n, _)| n).join(", ")
                ),
            },
        };
        let stem = path
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let origin = match &path {
            Some(p) => p.display().to_string(),
            None => format!("built-in profile `{name}`"),
        };
        let profile: ClusterProfile =
            toml::from_str(&text).with_context(|| format!("reading cluster profile {origin}"))?;
        profile
            .validate()
            .with_context(|| format!("in cluster profile {origin}"))?;
        Ok(Cluster {
            name: stem,
            text,
            path,
            profile,
        })
    }
}

impl ClusterProfile {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_nodes >= 1, "max_nodes must be at least 1");
        ensure!(
            self.ranks_per_node >= 1,
            "ranks_per_node must be at least 1"
        );
        ensure!(
            self.cores_per_node >= self.ranks_per_node,
            "cores_per_node = {} is fewer than ranks_per_node = {}",
            self.cores_per_node,
            self.ranks_per_node
        );
        ensure!(
            self.peak_flops >= 0.0 && self.peak_flops.is_finite(),
            "peak_flops must be >= 0"
        );
        ensure!(
            self.max_concurrent >= 1,
            "max_concurrent must be at least 1"
        );
        ensure!(
            self.gpus_per_node == 0 || self.ranks_per_node <= self.gpus_per_node,
            "ranks_per_node = {} is more than gpus_per_node = {}: each rank drives one GPU",
            self.ranks_per_node,
            self.gpus_per_node
        );
        ensure!(
            self.max_queued != Some(0),
            "max_queued must be at least 1 (or left out: no limit)"
        );
        ensure!(!self.launcher.trim().is_empty(), "launcher is empty");
        let mut last = 0;
        for bin in &self.walltime {
            ensure!(
                bin.max_nodes > last,
                "walltime bins must be in increasing max_nodes order ({} after {last})",
                bin.max_nodes
            );
            ensure!(
                self.fits_signal(bin.hours),
                "walltime bin up to {} nodes: {} h leaves no time before the {} s save warning",
                bin.max_nodes,
                bin.hours,
                self.signal_s
            );
            last = bin.max_nodes;
        }
        match self.scheduler {
            Scheduler::Slurm => ensure!(
                last >= self.max_nodes,
                "walltime bins cover up to {last} nodes but max_nodes = {}: add a [[walltime]] bin",
                self.max_nodes
            ),
            Scheduler::Local => ensure!(
                self.max_nodes == 1,
                "a local profile runs on this machine only: max_nodes must be 1"
            ),
        }
        Ok(())
    }

    /// Whether a segment of `hours` leaves time to work before the save warning (twice the warning).
    pub fn fits_signal(&self, hours: f64) -> bool {
        hours > 0.0 && hours * 3600.0 > 2.0 * f64::from(self.signal_s)
    }

    /// The longest walltime a job of `nodes` nodes may ask for (None: no limit).
    pub fn max_hours(&self, nodes: u32) -> Option<f64> {
        self.walltime
            .iter()
            .find(|b| nodes <= b.max_nodes)
            .map(|b| b.hours)
    }

    /// Refuses an empty account on a cluster that charges every job to one.
    pub fn check_account(&self, cluster: &str, account: &str) -> Result<()> {
        ensure!(
            !self.account_required || !account.trim().is_empty(),
            "cluster `{cluster}` charges every job to a project allocation: pass --account PROJECT \
             (e.g. --account ABC123) or set `account` in the profile"
        );
        Ok(())
    }

    /// Refuses a launch that would queue more jobs than one user may (`what` says how they add up).
    pub fn check_queued(&self, cluster: &str, jobs: u64, what: &str) -> Result<()> {
        if let Some(max) = self.max_queued {
            ensure!(
                jobs <= u64::from(max),
                "this launch would queue {jobs} jobs ({what}), but cluster `{cluster}` lets one user \
                 queue at most {max} (max_queued): use fewer segments (longer --hours or a smaller \
                 --budget-hours) or fewer sweep points"
            );
        }
        Ok(())
    }

    pub fn cpus_per_rank(&self, ranks_per_node: u32) -> u32 {
        (self.cores_per_node / ranks_per_node).max(1)
    }
}

/// Fills the {placeholders} of a profile line. `${SHELL_VARS}` are left alone: their names are not
/// among the placeholders.
pub fn fill(line: &str, nodes: u32, ranks_per_node: u32, profile: &ClusterProfile) -> String {
    line.replace("{nodes}", &nodes.to_string())
        .replace("{ranks}", &(nodes * ranks_per_node).to_string())
        .replace("{ranks_per_node}", &ranks_per_node.to_string())
        .replace(
            "{cpus_per_rank}",
            &profile.cpus_per_rank(ranks_per_node).to_string(),
        )
        .replace("{gpus_per_node}", &profile.gpus_per_node.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_are_valid() {
        // Each name finds its own built-in file (the shipped configs/clusters/NAME.toml), not
        // another's: the node shapes differ.
        for (name, scheduler, gpus, ranks, max_nodes) in [
            ("frontier", Scheduler::Slurm, 8, 8, 9408),
            ("slurm-cuda", Scheduler::Slurm, 8, 8, 1024),
            ("local", Scheduler::Local, 0, 1, 1),
            ("local-slurm", Scheduler::Slurm, 0, 2, 1),
        ] {
            let c = Cluster::find(name).unwrap();
            assert!(c.path.is_none(), "{name}: built in, not read from a file");
            let shipped = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("../configs/clusters/{name}.toml")),
            )
            .unwrap();
            assert_eq!(
                c.text, shipped,
                "{name}: built-in text is not the shipped file"
            );
            let p = &c.profile;
            assert_eq!(
                (p.scheduler, p.gpus_per_node, p.ranks_per_node, p.max_nodes),
                (scheduler, gpus, ranks, max_nodes),
                "{name}"
            );
        }
        let f = Cluster::find("frontier").unwrap().profile;
        assert_eq!(f.max_hours(2), Some(2.0));
        assert_eq!(f.max_hours(92), Some(6.0));
        assert_eq!(f.max_hours(512), Some(12.0));
        assert_eq!(
            fill(&f.launcher, 2, 8, &f),
            "srun --kill-on-bad-exit=1 -N 2 -n 16 -c7 --gpus-per-task=1 --gpu-bind=closest"
        );
        assert_eq!(fill("${SLURM_JOB_ID}", 2, 8, &f), "${SLURM_JOB_ID}");
    }

    #[test]
    fn broken_copies_of_a_profile_are_refused_by_field() {
        let frontier = BUILT_IN[0].1;
        let local = BUILT_IN[2].1;
        for (text, edit, want) in [
            (
                frontier,
                ("max_nodes = 9408\ngpus", "max_nodes = 9999\ngpus"),
                "add a [[walltime]] bin",
            ),
            (
                frontier,
                ("max_nodes = 91\n", "max_nodes = 200\n"),
                "increasing max_nodes order",
            ),
            (
                frontier,
                ("cores_per_node = 56", "cores_per_node = 4"),
                "is fewer than ranks_per_node",
            ),
            (
                local,
                ("max_nodes = 1", "max_nodes = 2"),
                "max_nodes must be 1",
            ),
            (
                frontier,
                ("ranks_per_node = 8", "ranks_per_node = 16"),
                "is more than gpus_per_node = 8",
            ),
            (
                frontier,
                ("max_queued = 100", "max_queued = 0"),
                "max_queued must be at least 1",
            ),
            (
                local,
                (
                    "launcher = \"mpirun -np {ranks} --oversubscribe\"",
                    "launcher = \" \"",
                ),
                "launcher is empty",
            ),
            (
                local,
                ("max_nodes = 1", "max_nodes = 1\nwaltime = []"),
                "unknown field `waltime`",
            ),
        ] {
            assert!(text.contains(edit.0), "{edit:?} no longer applies");
            let broken = text.replacen(edit.0, edit.1, 1);
            let err = toml::from_str::<ClusterProfile>(&broken)
                .map_err(anyhow::Error::from)
                .and_then(|p| p.validate());
            let msg = format!("{:#}", err.expect_err(want));
            assert!(msg.contains(want), "{edit:?}: {msg}");
        }
    }
}
