//! A job: one or more runs (sweep points) on a cluster, with a walltime per segment and a number of
//! segments. `Job::plan` checks the request against the cluster profile; `Job::files` renders the
//! batch script, the per-rank runner and the submit script.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use crate::profile::{fill, Cluster, Scheduler};

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub nodes: u32,
    pub ranks_per_node: Option<u32>,
    pub hours: Option<f64>,
    pub budget_hours: Option<f64>,
    pub requeue: bool,
    pub account: Option<String>,
}

/// One run of the job: its frozen config and its run directory (as the config names it, relative
/// to the job's working directory).
#[derive(Debug, Clone)]
pub struct Point {
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub cluster: Cluster,
    /// SLURM job name.
    pub name: String,
    /// The launch directory: scripts, frozen configs, logs, segment records (absolute).
    pub dir: PathBuf,
    /// Where muninn runs, so that relative paths in the configs mean what they meant at launch.
    pub workdir: PathBuf,
    pub binary: PathBuf,
    pub points: Vec<Point>,
    pub nodes: u32,
    pub ranks_per_node: u32,
    /// Walltime of each segment; None only on a local cluster without --hours.
    pub hours: Option<f64>,
    pub segments: u32,
    pub requeue: bool,
    pub account: String,
}

impl Job {
    /// Checks `req` against the cluster: node count, walltime bin, segments of the budget.
    pub fn plan(cluster: &Cluster, req: &Request) -> Result<Plan> {
        let p = &cluster.profile;
        let name = &cluster.name;
        ensure!(req.nodes >= 1, "--nodes must be at least 1");
        ensure!(
            req.nodes <= p.max_nodes,
            "--nodes {}: cluster `{name}` has at most {} node{}",
            req.nodes,
            p.max_nodes,
            if p.max_nodes == 1 { "" } else { "s" }
        );
        let ranks_per_node = req.ranks_per_node.unwrap_or(p.ranks_per_node);
        ensure!(ranks_per_node >= 1, "--ranks-per-node must be at least 1");
        ensure!(
            p.gpus_per_node == 0 || ranks_per_node <= p.gpus_per_node,
            "--ranks-per-node {ranks_per_node}: cluster `{name}` has {} GPUs per node, one per rank",
            p.gpus_per_node
        );
        ensure!(
            ranks_per_node <= p.cores_per_node,
            "--ranks-per-node {ranks_per_node}: cluster `{name}` has {} cores per node",
            p.cores_per_node
        );
        let account = req.account.clone().unwrap_or_else(|| p.account.clone());
        p.check_account(name, &account)?;
        let limit = p.max_hours(req.nodes);
        let mut hours = match (req.hours, limit) {
            (Some(h), Some(max)) => {
                ensure!(
                    h <= max,
                    "--hours {h}: cluster `{name}` allows at most {max} h for a job of {} nodes",
                    req.nodes
                );
                Some(h)
            }
            (Some(h), None) => Some(h),
            (None, max) => max,
        };
        if let Some(h) = hours {
            ensure!(
                p.fits_signal(h),
                "--hours {h}: a segment must last more than twice the {} s save warning of cluster `{name}`",
                p.signal_s
            );
        }
        let segments = match (req.budget_hours, hours) {
            (None, _) => 1,
            (Some(b), _) if !(b > 0.0 && b.is_finite()) => {
                anyhow::bail!("--budget-hours {b} must be positive")
            }
            (Some(_), None) => anyhow::bail!(
                "--budget-hours needs --hours on cluster `{name}`, which has no walltime limit"
            ),
            (Some(b), Some(h)) if b <= h => {
                hours = Some(b);
                1
            }
            // A budget a hair over a whole number of walltimes is rounding, not another segment.
            (Some(b), Some(h)) => (b / h - 1e-6).ceil() as u32,
        };
        ensure!(
            !req.requeue || p.scheduler == Scheduler::Slurm,
            "--requeue needs a SLURM cluster; `{name}` runs locally"
        );
        ensure!(
            !req.requeue || segments == 1,
            "--requeue continues a run by requeueing its job until it finishes, and --budget-hours \
             would also chain {segments} segments: use one or the other"
        );
        Ok(Plan {
            nodes: req.nodes,
            ranks_per_node,
            hours,
            segments,
            requeue: req.requeue,
            account,
        })
    }

    /// Refuses a job of `points` runs that would queue more jobs than the cluster lets one user:
    /// each segment is one submission, an array of `points` tasks for a sweep.
    pub fn check_queue(cluster: &Cluster, plan: &Plan, points: usize) -> Result<()> {
        if cluster.profile.scheduler != Scheduler::Slurm {
            return Ok(());
        }
        let jobs = u64::from(plan.segments) * points as u64;
        let what = match points {
            1 => format!("{} segment(s)", plan.segments),
            n => format!("{} segment(s) x {n} sweep points", plan.segments),
        };
        cluster.profile.check_queued(&cluster.name, jobs, &what)
    }

    pub fn new(
        cluster: Cluster,
        plan: Plan,
        name: String,
        dir: PathBuf,
        workdir: PathBuf,
        binary: PathBuf,
        points: Vec<Point>,
    ) -> Job {
        Job {
            cluster,
            name,
            dir,
            workdir,
            binary,
            points,
            nodes: plan.nodes,
            ranks_per_node: plan.ranks_per_node,
            hours: plan.hours,
            segments: plan.segments,
            requeue: plan.requeue,
            account: plan.account,
        }
    }

    pub fn ranks(&self) -> u32 {
        self.nodes * self.ranks_per_node
    }

    fn scheduler(&self) -> Scheduler {
        self.cluster.profile.scheduler
    }

    /// The batch script's file name.
    pub fn script_name(&self) -> &'static str {
        match self.scheduler() {
            Scheduler::Slurm => "job.sbatch",
            Scheduler::Local => "job.sh",
        }
    }

    /// (file name, contents) of the scripts, all executable.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        vec![
            (self.script_name(), self.batch_script()),
            ("runner.sh", self.runner()),
            ("submit.sh", self.submit_script()),
        ]
    }

    fn fill(&self, line: &str) -> String {
        fill(line, self.nodes, self.ranks_per_node, &self.cluster.profile)
    }

    fn summary(&self) -> String {
        let runs = match self.points.len() {
            1 => format!("{}", self.points[0].run_dir.display()),
            n => format!("{n} sweep points"),
        };
        let time = match self.hours {
            Some(h) => format!(", {} segment(s) of {}", self.segments, hhmmss(h)),
            None => String::new(),
        };
        format!(
            "{runs} on `{}`: {} node(s) x {} rank(s){time}",
            self.cluster.name, self.nodes, self.ranks_per_node
        )
    }

    fn batch_script(&self) -> String {
        let p = &self.cluster.profile;
        let slurm = self.scheduler() == Scheduler::Slurm;
        let array = self.points.len() > 1;
        let mut s = String::from("#!/bin/bash\n");
        let _ = writeln!(s, "# muninn: {}.", self.summary());
        let _ = writeln!(
            s,
            "# Rendered by `muninn launch`/`muninn sweep` from the cluster profile; edit freely before submit.sh."
        );
        if slurm {
            let mut d = |opt: String| {
                let _ = writeln!(s, "#SBATCH {opt}");
            };
            d(format!("--job-name={}", self.name));
            d(format!("--nodes={}", self.nodes));
            // What the launcher line uses, so that a partition that hands out CPUs rather than
            // whole nodes allocates enough of them (srun cannot start more than the job holds).
            d(format!("--ntasks-per-node={}", self.ranks_per_node));
            d(format!(
                "--cpus-per-task={}",
                p.cpus_per_rank(self.ranks_per_node)
            ));
            if p.gpus_per_node > 0 {
                d(format!("--gpus-per-node={}", p.gpus_per_node));
            }
            d(format!(
                "--time={}",
                hhmmss(self.hours.expect("SLURM jobs have a walltime"))
            ));
            // The batch shell gets USR1 before the limit and passes it to the trainer (see below).
            d(format!("--signal=B:USR1@{}", p.signal_s));
            let log = if array { "%x-%A_%a.out" } else { "%x-%j.out" };
            d(format!("--output={}/logs/{log}", self.dir.display()));
            d("--open-mode=append".into());
            for opt in placement(p, &self.account) {
                d(opt);
            }
            if array {
                d(format!(
                    "--array=0-{}%{}",
                    self.points.len() - 1,
                    p.max_concurrent
                ));
            }
            if self.requeue {
                d("--requeue".into());
            }
            for extra in &p.sbatch {
                d(self.fill(extra));
            }
        }
        // No `set -u`: module scripts and profile lines may read unset variables.
        s.push_str("set -o pipefail\n\n");
        let _ = writeln!(s, "launch_dir={}", q(&self.dir));
        let _ = writeln!(s, "muninn={}", q(&self.binary));
        let _ = writeln!(s, "cd {}\n", q(&self.workdir));
        let _ = writeln!(s, "# Cluster profile `{}`.", self.cluster.name);
        if !p.modules.is_empty() {
            let _ = writeln!(
                s,
                "module load {} || {{ echo \"muninn job: module load failed\" >&2; exit 1; }}",
                p.modules.join(" ")
            );
        }
        for (k, v) in &p.env {
            let _ = writeln!(s, "export {k}=\"{}\"", dq(&self.fill(v)));
        }
        for line in &p.setup {
            let _ = writeln!(s, "{}", self.fill(line));
        }
        s.push('\n');
        let list =
            |f: &dyn Fn(&Point) -> String| self.points.iter().map(f).collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            s,
            "# Sweep point of this job (0 for a single run): the array task on SLURM, MUNINN_POINT locally."
        );
        s.push_str("point=${SLURM_ARRAY_TASK_ID:-${MUNINN_POINT:-0}}\n");
        let _ = writeln!(s, "configs=({})", list(&|pt| q(&pt.config)));
        let _ = writeln!(s, "run_dirs=({})", list(&|pt| q(&pt.run_dir)));
        s.push_str(
            r#"config=${configs[$point]}
run_dir=${run_dirs[$point]}
job=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local-$(date +%s)}}

if [ -e "$run_dir/FINISHED" ]; then
  echo "muninn job: $run_dir has finished; nothing to do"
  exit 0
fi

# What this segment ran with, to reproduce and debug it.
mkdir -p "$launch_dir/segments"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  echo "job: $job point: $point config: $config"
  echo "binary: $(sha256sum "$muninn")"
  command -v module >/dev/null && module list 2>&1
"#,
        );
        let pattern = crate::provenance::ENV_PREFIXES.join("|");
        let _ = writeln!(s, "  env | grep -E '^({pattern})' | sort");
        // A requeued job keeps its id: the restart count keeps its records apart.
        s.push_str(
            "} > \"$launch_dir/segments/$job-$point-${SLURM_RESTART_COUNT:-0}.txt\" 2>&1\n\n",
        );
        let launcher = match (slurm, self.ranks()) {
            (false, 1) => String::new(),
            _ => self.fill(&p.launcher) + " ",
        };
        s.push_str(
            r#"# Before the time limit the trainer is told to save and stop: it finishes its step, writes a
# checkpoint and exits 0, and the next segment resumes from it.
pid=
signalled=0
signal=
forward() {
  signalled=1
  signal=$1
  echo "muninn job: $1 received; the trainer saves and stops"
  [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
"#,
        );
        let _ = writeln!(s, "{launcher}bash \"$launch_dir/runner.sh\" \"$config\" &");
        s.push_str(
            r#"pid=$!
# A signal that came while the ranks were starting.
[ "$signalled" -eq 1 ] && kill -USR1 "$pid" 2>/dev/null
wait "$pid"; rc=$?
# A trapped signal interrupts `wait` (status > 128); wait again for the trainer's own exit status,
# which bash also keeps when the trainer exited in between.
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
if [ "$signalled" -eq 1 ] && [ "$rc" -gt 128 ]; then
  wait "$pid"; r=$?
  [ "$r" -ne 127 ] && rc=$r
fi

"#,
        );
        if slurm {
            let cancel = if array { "\"${j}_$point\"" } else { "\"$j\"" };
            let _ = writeln!(
                s,
                "# The later segments of this run, still queued behind this one.\n\
                 cancel_later() {{\n  \
                 for j in $(awk -v me=\"$job\" 'found {{print $1}} $1 == me {{found = 1}}' \"$launch_dir/jobs.txt\" 2>/dev/null); do\n    \
                 scancel {cancel} 2>/dev/null\n  done\n}}\n"
            );
        }
        s.push_str(
            r#"if [ -e "$run_dir/FINISHED" ]; then
  echo "muninn job: $run_dir finished"
"#,
        );
        if slurm {
            s.push_str("  cancel_later\n");
            // A crash would only crash again in every later segment: stop the chain instead.
            s.push_str(
                "elif [ \"$rc\" -ne 0 ] && [ \"$signalled\" -eq 0 ]; then\n  \
                 echo \"muninn job: the trainer failed (exit $rc) without a time-limit signal; cancelling the later segments\"\n  \
                 cancel_later\n",
            );
            if self.requeue {
                s.push_str(
                    "elif [ \"$rc\" -eq 0 ] && [ \"$signal\" = USR1 ]; then\n  \
                     echo \"muninn job: requeueing $SLURM_JOB_ID\"\n  \
                     scontrol requeue \"$SLURM_JOB_ID\"\n",
                );
            }
        }
        s.push_str("fi\nexit \"$rc\"\n");
        s
    }

    fn runner(&self) -> String {
        format!(
            "#!/bin/bash\n\
             # One rank of the job: the launcher starts one of these per rank. Per-rank settings go here.\n\
             # Every segment resumes from the run's newest complete checkpoint (or starts it).\n\
             exec {} train \"$1\" --resume auto\n",
            q(&self.binary)
        )
    }

    fn submit_script(&self) -> String {
        let p = &self.cluster.profile;
        let n = self.segments;
        let mut s = String::from("#!/bin/bash\n");
        match self.scheduler() {
            Scheduler::Slurm => {
                let _ = writeln!(
                    s,
                    "# Submits {}.\n# Each segment starts when the one before it ends (afterany) and resumes from the newest\n\
                     # checkpoint; job ids are appended to jobs.txt.",
                    self.summary()
                );
                let _ = writeln!(s, "set -euo pipefail\ncd {}", q(&self.dir));
                let _ = writeln!(
                    s,
                    r#"dep=()
for seg in $(seq 1 {n}); do
  id=$(sbatch --parsable ${{dep[@]+"${{dep[@]}}"}} {script})
  id=${{id%%;*}}
  echo "$id" >> jobs.txt
  echo "segment $seg/{n}: job $id"
  dep=(--dependency=afterany:$id)
done"#,
                    script = self.script_name()
                );
            }
            Scheduler::Local => {
                let _ = writeln!(
                    s,
                    "# Runs {} here, one point and segment after another.",
                    self.summary()
                );
                let _ = writeln!(s, "set -uo pipefail\ncd {}\nfailed=0", q(&self.dir));
                // The local analogue of SLURM's warning and limit: USR1 `signal_s` before the end,
                // KILL at the end.
                let timeout = match self.hours {
                    Some(h) => {
                        let total = (h * 3600.0).round() as u64;
                        let warn = u64::from(p.signal_s);
                        format!(
                            "timeout --preserve-status --signal=USR1 --kill-after={warn}s {}s ",
                            total - warn
                        )
                    }
                    None => String::new(),
                };
                let _ = writeln!(
                    s,
                    r#"for point in $(seq 0 {last}); do
  for seg in $(seq 1 {n}); do
    echo "muninn: point $point, segment $seg/{n}"
    MUNINN_POINT=$point {timeout}bash {script}
    rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "muninn: point $point, segment $seg failed (exit $rc)" >&2
      failed=1
      break
    fi
  done
done
exit "$failed""#,
                    last = self.points.len() - 1,
                    script = self.script_name()
                );
            }
        }
        s
    }
}

/// A checked request: what `Job` needs besides the runs and paths.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: u32,
    pub ranks_per_node: u32,
    pub hours: Option<f64>,
    pub segments: u32,
    pub requeue: bool,
    pub account: String,
}

/// The `--account`, `--partition`, `--qos` and `--constraint` options the profile (and the
/// account) set, for every batch script of a cluster.
pub(crate) fn placement(p: &crate::profile::ClusterProfile, account: &str) -> Vec<String> {
    [
        ("account", account),
        ("partition", p.partition.as_str()),
        ("qos", p.qos.as_str()),
        ("constraint", p.constraint.as_str()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(opt, v)| format!("--{opt}={v}"))
    .collect()
}

/// SLURM's HH:MM:SS, whole minutes.
pub fn hhmmss(hours: f64) -> String {
    let minutes = (hours * 60.0).round() as u64;
    format!("{:02}:{:02}:00", minutes / 60, minutes % 60)
}

/// A path as one shell word.
pub(crate) fn q(p: &Path) -> String {
    let s = p.to_string_lossy();
    shlex::try_quote(&s)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| s.into_owned())
}

/// Escapes text for the inside of double quotes, keeping `$VAR` expansion.
pub(crate) fn dq(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('`', "\\`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontier() -> Cluster {
        Cluster::find("frontier").unwrap()
    }

    fn req(nodes: u32, hours: Option<f64>, budget: Option<f64>) -> Request {
        Request {
            nodes,
            hours,
            budget_hours: budget,
            account: Some("PRJ001".into()),
            ..Default::default()
        }
    }

    #[test]
    fn walltime_bins_and_segments() {
        let c = frontier();
        let p = Job::plan(&c, &req(2, None, None)).unwrap();
        assert_eq!((p.hours, p.segments), (Some(2.0), 1));
        let p = Job::plan(&c, &req(512, None, Some(36.0))).unwrap();
        assert_eq!((p.hours, p.segments), (Some(12.0), 3));
        let p = Job::plan(&c, &req(512, None, Some(36.5))).unwrap();
        assert_eq!(p.segments, 4);
        let p = Job::plan(&c, &req(512, Some(6.0), Some(3.0))).unwrap();
        assert_eq!((p.hours, p.segments), (Some(3.0), 1));
        let err = Job::plan(&c, &req(100, Some(12.0), None)).unwrap_err();
        assert!(err.to_string().contains("at most 6 h"), "{err}");
        let err = Job::plan(&c, &req(10000, None, None)).unwrap_err();
        assert!(err.to_string().contains("at most 9408 nodes"), "{err}");
        let err = Job::plan(&c, &req(2, Some(0.1), None)).unwrap_err();
        assert!(err.to_string().contains("save warning"), "{err}");
    }

    #[test]
    fn time_format() {
        assert_eq!(hhmmss(2.0), "02:00:00");
        assert_eq!(hhmmss(0.25), "00:15:00");
        assert_eq!(hhmmss(12.0), "12:00:00");
    }
}
