//! A data-preparation job: `muninn data prepare --part i/N` for every i, as a SLURM job array (one
//! CPU task per part, at most the profile's `max_concurrent` at once), then `muninn data merge` in a
//! job that depends on the whole array. Locally the parts run one after another, then the merge.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::job::q;
use crate::profile::{Cluster, Scheduler};

#[derive(Debug, Clone)]
pub struct DataJob {
    pub cluster: Cluster,
    pub name: String,
    /// The launch directory: scripts and logs (absolute).
    pub dir: PathBuf,
    /// Where muninn runs, so that relative paths mean what they meant at launch.
    pub workdir: PathBuf,
    pub binary: PathBuf,
    pub parts: u32,
    /// Walltime of each part (SLURM).
    pub hours: f64,
    pub account: String,
    /// The `muninn data prepare` arguments, `--out` included, without `--part`.
    pub prepare: Vec<String>,
    /// The dataset directory `--out` names.
    pub out: PathBuf,
}

impl DataJob {
    fn slurm(&self) -> bool {
        self.cluster.profile.scheduler == Scheduler::Slurm
    }

    /// (file name, contents) of the scripts.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        match self.slurm() {
            true => vec![
                ("prepare.sbatch", self.prepare_script()),
                ("merge.sbatch", self.merge_script()),
                ("submit.sh", self.submit_script()),
            ],
            false => vec![
                ("prepare.sh", self.prepare_script()),
                ("submit.sh", self.submit_script()),
            ],
        }
    }

    fn header(&self, s: &mut String, what: &str, array: bool) {
        let p = &self.cluster.profile;
        s.push_str("#!/bin/bash\n");
        let _ = writeln!(
            s,
            "# muninn: {what} of {} in {} part(s) on `{}`. Rendered by `muninn launch-data`; edit freely before submit.sh.",
            self.out.display(),
            self.parts,
            self.cluster.name
        );
        if self.slurm() {
            let mut d = |opt: String| {
                let _ = writeln!(s, "#SBATCH {opt}");
            };
            d(format!("--job-name={}", self.name));
            d("--nodes=1".into());
            d("--ntasks=1".into());
            d(format!("--cpus-per-task={}", p.cores_per_node.max(1)));
            d(format!("--time={}", crate::job::hhmmss(self.hours)));
            let log = if array { "%x-%A_%a.out" } else { "%x-%j.out" };
            d(format!("--output={}/logs/{log}", self.dir.display()));
            for opt in crate::job::placement(p, &self.account) {
                d(opt);
            }
            if array {
                d(format!("--array=0-{}%{}", self.parts - 1, p.max_concurrent));
            }
        }
        s.push_str("set -eo pipefail\n\n");
        let _ = writeln!(s, "muninn={}", q(&self.binary));
        let _ = writeln!(s, "cd {}", q(&self.workdir));
        if !p.modules.is_empty() {
            let _ = writeln!(s, "module load {}", p.modules.join(" "));
        }
        s.push('\n');
    }

    fn prepare_line(&self, part: &str) -> String {
        let args: Vec<String> = self.prepare.iter().map(|a| q(Path::new(a))).collect();
        format!(
            "\"$muninn\" data prepare {} --part {part}/{}",
            args.join(" "),
            self.parts
        )
    }

    fn prepare_script(&self) -> String {
        let mut s = String::new();
        self.header(&mut s, "prepare", self.slurm());
        match self.slurm() {
            true => {
                let _ = writeln!(
                    s,
                    "# A part that is already complete (a rerun of the array) is skipped."
                );
                let _ = writeln!(
                    s,
                    "[ -f {}/parts/$SLURM_ARRAY_TASK_ID-of-{}/dataset.json ] && exit 0",
                    q(&self.out),
                    self.parts
                );
                let _ = writeln!(
                    s,
                    "{} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"",
                    self.prepare_line("$SLURM_ARRAY_TASK_ID")
                );
            }
            false => {
                let _ = writeln!(s, "for i in $(seq 0 {}); do", self.parts - 1);
                let _ = writeln!(
                    s,
                    "  [ -f {}/parts/$i-of-{}/dataset.json ] || {}",
                    q(&self.out),
                    self.parts,
                    self.prepare_line("$i")
                );
                s.push_str("done\n");
                let _ = writeln!(s, "\"$muninn\" data merge {}", q(&self.out));
            }
        }
        s
    }

    fn merge_script(&self) -> String {
        let mut s = String::new();
        self.header(&mut s, "merge", false);
        let _ = writeln!(s, "\"$muninn\" data merge {}", q(&self.out));
        s
    }

    fn submit_script(&self) -> String {
        let mut s = String::from("#!/bin/bash\nset -eo pipefail\n");
        let _ = writeln!(s, "cd {}", q(&self.dir));
        match self.slurm() {
            true => {
                s.push_str("array=$(sbatch --parsable prepare.sbatch)\n");
                s.push_str("echo \"submitted the parts: job $array\"\n");
                s.push_str(
                    "merge=$(sbatch --parsable --dependency=afterok:${array%%;*} merge.sbatch)\n",
                );
                s.push_str("echo \"submitted the merge: job $merge (after every part)\"\n");
            }
            false => s.push_str("bash prepare.sh\n"),
        }
        s
    }
}
