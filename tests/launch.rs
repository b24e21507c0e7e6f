//! `muninn launch`, `sweep` and `compare` end to end: golden SLURM scripts for Frontier and a generic
//! CUDA cluster, the segment chain, real local segments stopped by their time limit and resumed, a
//! real local sweep over k compared afterwards, and every refused input.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A run config whose data paths exist (enough for launching, which never reads the data).
fn launch_config(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("ds")).unwrap();
    std::fs::write(dir.join("tok.json"), "{}").unwrap();
    micro_config(dir, "golden", 1000, "")
}

/// A rendered file with this machine's paths replaced, so that goldens compare anywhere.
fn normalised(path: &Path, dir: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let root = dir.canonicalize().unwrap();
    text.replace(env!("CARGO_BIN_EXE_muninn"), "/opt/muninn/bin/muninn")
        .replace(root.to_str().unwrap(), "/work/project")
        .replace(dir.to_str().unwrap(), "/work/project")
}

fn bash_syntax_ok(path: &Path) {
    let out = Command::new("bash").arg("-n").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This process's PATH without the directories that hold `program`.
fn path_without(program: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| !d.join(program).exists())
        .collect();
    std::env::join_paths(kept).unwrap().into_string().unwrap()
}

/// No launch directory anywhere under `dir/runs`.
fn nothing_written(dir: &Path) {
    let runs = dir.join("runs");
    assert!(
        !runs.exists(),
        "{} was written: {:?}",
        runs.display(),
        std::fs::read_dir(&runs).map(|d| d.count())
    );
}

#[test]
fn rendered_slurm_scripts_match_the_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = launch_config(p);
    let golden_root = repo_root().join("tests/golden/launch");
    // Rewriting the goldens is a developer's act, reviewed in the diff; CI only compares.
    let update = std::env::var_os("MUNINN_UPDATE_GOLDEN").is_some();
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "MUNINN_UPDATE_GOLDEN is refused under CI: CI compares against the committed goldens"
    );
    let cases: [(&str, &str, &[&str]); 5] = [
        ("frontier", "2", &[]),
        // 512 nodes: the 12 h bin; a 36 h budget is a chain of three segments.
        ("frontier", "512", &["--budget-hours", "36"]),
        ("slurm-cuda", "2", &[]),
        ("slurm-cuda", "512", &["--requeue"]),
        ("local-slurm", "1", &["--hours", "0.5"]),
    ];
    for (cluster, nodes, extra) in cases {
        let case = format!("{cluster}-{nodes}");
        let run = format!("run.name={case}");
        let mut args = vec![
            "launch",
            &cfg,
            "--cluster",
            cluster,
            "--nodes",
            nodes,
            "--account",
            "PRJ001",
            "--set",
            &run,
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        let out = muninn_ok(&args, p);
        let launch = p.join(format!("runs/{case}/launch/1"));
        assert!(out.contains("dry run: nothing submitted"), "{out}");
        for file in ["job.sbatch", "runner.sh", "submit.sh"] {
            let path = launch.join(file);
            bash_syntax_ok(&path);
            let got = normalised(&path, p);
            let golden = golden_root.join(&case).join(file);
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &got).unwrap();
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
                panic!(
                    "{} missing: run with MUNINN_UPDATE_GOLDEN=1",
                    golden.display()
                )
            });
            assert_eq!(
                got,
                want,
                "{case}/{file} differs from {} (MUNINN_UPDATE_GOLDEN=1 rewrites it)",
                golden.display()
            );
        }
        // The header asks for what the launcher line starts, so that a partition handing out CPUs
        // rather than whole nodes allocates enough for srun.
        let header = std::fs::read_to_string(launch.join("job.sbatch")).unwrap();
        let (tasks, cpus, gpus) = match cluster {
            "frontier" => ("8", "7", Some("8")),
            "slurm-cuda" => ("8", "12", Some("8")),
            _ => ("2", "1", None),
        };
        assert!(
            header.contains(&format!("#SBATCH --ntasks-per-node={tasks}\n")),
            "{header}"
        );
        assert!(
            header.contains(&format!("#SBATCH --cpus-per-task={cpus}\n")),
            "{header}"
        );
        match gpus {
            Some(g) => assert!(header.contains(&format!("#SBATCH --gpus-per-node={g}\n"))),
            None => assert!(!header.contains("--gpus-per-node"), "{header}"),
        }
        assert_eq!(
            header.matches("--gpus-per-node").count(),
            gpus.is_some() as usize
        );
        assert!(header.contains("--kill-on-bad-exit=1 "), "{header}");
        // The records beside the scripts: the frozen config, the profile, the provenance.
        let frozen = std::fs::read_to_string(launch.join("config.toml")).unwrap();
        assert!(frozen.contains(&format!("name = \"{case}\"")), "{frozen}");
        let profile = std::fs::read_to_string(launch.join("cluster.toml")).unwrap();
        assert!(profile.contains("[[walltime]]"));
        let prov: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(launch.join("provenance.json")).unwrap())
                .unwrap();
        assert_eq!(prov["cluster"], cluster);
        assert_eq!(prov["binary_sha256"].as_str().unwrap().len(), 64);
        assert!(!prov["git_commit"].as_str().unwrap().is_empty());
    }
    // The profile's peak FLOP/s fills log.peak_flops for MFU.
    let frozen = std::fs::read_to_string(p.join("runs/frontier-2/launch/1/config.toml")).unwrap();
    assert!(
        frozen.contains("peak_flops = 191500000000000.0"),
        "{frozen}"
    );
}

/// `sbatch` is SLURM's; here a stand-in on PATH records its arguments and answers job ids, so that
/// the chain submit.sh builds can be checked.
#[test]
fn a_budget_of_three_walltimes_submits_three_chained_segments() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = launch_config(p);
    let bin = p.join("fake-slurm");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("sbatch"),
        "#!/bin/bash\n[ \"$1\" = --version ] && { echo 'slurm 24.05 (test stand-in)'; exit 0; }\n\
         n=$(( $(wc -l < \"$SBATCH_LOG\" 2>/dev/null || echo 0) + 1 ))\n\
         echo \"$*\" >> \"$SBATCH_LOG\"\necho \"$((1000 + n));cluster\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x", bin.join("sbatch").to_str().unwrap()])
        .status()
        .unwrap();
    let log = p.join("sbatch.log");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args([
            "launch",
            &cfg,
            "--cluster",
            "frontier",
            "--account",
            "PRJ001",
            "--nodes",
            "2",
            "--hours",
            "2",
            "--budget-hours",
            "6",
        ])
        .current_dir(p)
        .env("PATH", path)
        .env("SBATCH_LOG", &log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        calls,
        [
            "--parsable job.sbatch",
            "--parsable --dependency=afterany:1001 job.sbatch",
            "--parsable --dependency=afterany:1002 job.sbatch",
        ]
    );
    assert!(stdout.contains("segment 3/3: job 1003"), "{stdout}");
    let jobs = std::fs::read_to_string(p.join("runs/golden/launch/1/jobs.txt")).unwrap();
    assert_eq!(jobs, "1001\n1002\n1003\n");
    let sbatch = std::fs::read_to_string(p.join("runs/golden/launch/1/job.sbatch")).unwrap();
    assert!(sbatch.contains("#SBATCH --time=02:00:00"), "{sbatch}");
    assert!(sbatch.contains("#SBATCH --signal=B:USR1@300"), "{sbatch}");
    assert!(
        std::fs::read_to_string(p.join("runs/golden/launch/1/runner.sh"))
            .unwrap()
            .contains("--resume auto")
    );

    // The first segment's trainer crashes (not a time limit): the segment cancels the two queued
    // behind it instead of letting each crash in turn. Stand-ins: `module` loads nothing, `srun`
    // fails for the ranks, `scancel` records its arguments.
    std::fs::write(bin.join("module"), "#!/bin/bash\nexit 0\n").unwrap();
    std::fs::write(
        bin.join("srun"),
        "#!/bin/bash\ncase \"$*\" in *runner.sh*) exit 3;; *) exit 0;; esac\n",
    )
    .unwrap();
    std::fs::write(
        bin.join("scancel"),
        "#!/bin/bash\necho \"$*\" >> \"$SCANCEL_LOG\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .args([
            "+x",
            bin.join("module").to_str().unwrap(),
            bin.join("srun").to_str().unwrap(),
            bin.join("scancel").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    let cancelled = p.join("scancel.log");
    let out = Command::new("bash")
        .arg(p.join("runs/golden/launch/1/job.sbatch"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("SLURM_JOB_ID", "1001")
        .env("SCANCEL_LOG", &cancelled)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("failed (exit 3)"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&cancelled).unwrap(), "1002\n1003\n");
}

/// A local profile with a short save warning, so that a segment of a few seconds is possible.
fn quick_local_profile(dir: &Path) -> String {
    let text = std::fs::read_to_string(repo_root().join("configs/clusters/local.toml")).unwrap();
    let text = text.replace("signal_s = 60", "signal_s = 4");
    assert!(text.contains("signal_s = 4"));
    std::fs::write(dir.join("quick.toml"), text).unwrap();
    "quick.toml".into()
}

#[test]
fn local_segments_stop_at_their_time_limit_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "segments", 1_000_000, "");
    let profile = quick_local_profile(p);
    // Three segments of 11 s: USR1 at 7 s, each saves and exits, the next resumes.
    let out = muninn(
        &[
            "launch",
            &cfg,
            "--cluster",
            &profile,
            "--hours",
            "0.003",
            "--budget-hours",
            "0.009",
        ],
        p,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for seg in 1..=3 {
        assert!(
            stdout.contains(&format!("segment {seg}/3")),
            "{stdout}\n{stderr}"
        );
    }
    assert_eq!(stdout.matches("(Signal)").count(), 3, "{stdout}\n{stderr}");
    assert_eq!(stderr.matches("resumed from").count(), 2, "{stderr}");
    let ckpts = muninn_trainer::ckpt::list(&p.join("runs/segments")).unwrap();
    assert_eq!(ckpts.len(), 3, "one checkpoint per segment: {ckpts:?}");
    // The metrics continue across segments: every step once, in order.
    let steps: Vec<u64> = losses(p, "segments").iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    assert_eq!(*steps.last().unwrap(), ckpts.last().unwrap().0);
    assert!(!p.join("runs/segments/FINISHED").exists());
    // Each segment recorded its environment and the binary it ran.
    let segments = std::fs::read_dir(p.join("runs/segments/launch/1/segments"))
        .unwrap()
        .count();
    assert_eq!(segments, 3);
}

#[test]
fn a_local_sweep_over_k_trains_every_point_and_compare_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "sweep", 6, "");
    let out = muninn_ok(
        &[
            "sweep",
            &cfg,
            "--cluster",
            "local",
            "--grid",
            "recurrence.mean_backprop_depth=1,2",
            "--seeds",
            "per-point",
        ],
        p,
    );
    assert!(out.contains("point 1, segment 1/1"), "{out}");
    let runs: Vec<PathBuf> = ["sweep-mean_backprop_depth-1", "sweep-mean_backprop_depth-2"]
        .iter()
        .map(|r| p.join("runs").join(r))
        .collect();
    for (i, run) in runs.iter().enumerate() {
        assert!(
            run.join("FINISHED").exists(),
            "{} did not finish",
            run.display()
        );
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("mean_backprop_depth = {}", i + 1)));
        assert!(config.contains(&format!("seed = {}", 7 + i)), "{config}");
    }
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("runs/sweep-sweep/launch/1/sweep.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["points"].as_array().unwrap().len(), 2);

    let run_args: Vec<&str> = runs.iter().map(|r| r.to_str().unwrap()).collect();
    let mut args = vec!["compare", "--plot", "cmp.png", "--json", "cmp.json"];
    args.extend(&run_args);
    let table = muninn_ok(&args, p);
    let row = |k: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("sweep-mean_backprop_depth-{k} ")))
            .unwrap_or_else(|| panic!("no row for k={k}:\n{table}"))
            .to_string()
    };
    assert!(row("1").split_whitespace().nth(1) == Some("1"), "{table}");
    assert!(row("2").split_whitespace().nth(1) == Some("2"), "{table}");
    assert!(table.contains("r=1") && table.contains("r=4"), "{table}");
    let summaries: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("cmp.json")).unwrap()).unwrap();
    for (s, k) in summaries.as_array().unwrap().iter().zip([1, 2]) {
        assert_eq!(s["k"], k);
        assert_eq!(s["steps"], 6);
        for depth in ["1", "4"] {
            let v = s["final_val"][depth].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{s}");
        }
        assert!(s["flops_per_token"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["peak_mem_gib"].as_f64().unwrap() > 0.0, "{s}");
    }
    // A real PNG of two 640x480 panels.
    let (width, height) = decode_png(&p.join("cmp.png"));
    assert_eq!((width, height), (1280, 480));
    assert_series_drawn(&p.join("cmp.png"), 2);
}

#[test]
fn bad_launch_inputs_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = launch_config(p);
    let base = ["launch", cfg.as_str(), "--account", "PRJ001"];
    let cases: [(&[&str], &str); 12] = [
        (
            &["--cluster", "nowhere", "--dry-run"],
            "unknown cluster `nowhere`: expected one of frontier, slurm-cuda, local, local-slurm",
        ),
        (
            &["--cluster", "frontier", "--ranks-per-node", "16", "--dry-run"],
            "--ranks-per-node 16: cluster `frontier` has 8 GPUs per node, one per rank",
        ),
        // 0.2 h segments for a 30 h budget: 150 jobs, over the batch QOS's 100 queued per user.
        (
            &[
                "--cluster",
                "frontier",
                "--hours",
                "0.2",
                "--budget-hours",
                "30",
                "--dry-run",
            ],
            "would queue 150 jobs (150 segment(s)), but cluster `frontier` lets one user queue at most 100",
        ),
        (
            &["--cluster", "local-slurm", "--ranks-per-node", "3", "--dry-run"],
            "--ranks-per-node 3: cluster `local-slurm` has 2 cores per node",
        ),
        (
            &["--cluster", "frontier", "--nodes", "10000", "--dry-run"],
            "--nodes 10000: cluster `frontier` has at most 9408 nodes",
        ),
        (
            &[
                "--cluster",
                "frontier",
                "--nodes",
                "100",
                "--hours",
                "12",
                "--dry-run",
            ],
            "--hours 12: cluster `frontier` allows at most 6 h for a job of 100 nodes",
        ),
        (
            &["--cluster", "local", "--nodes", "2", "--dry-run"],
            "cluster `local` has at most 1 node",
        ),
        (
            &["--cluster", "local", "--budget-hours", "3", "--dry-run"],
            "--budget-hours needs --hours",
        ),
        (
            &[
                "--cluster",
                "frontier",
                "--set",
                "train.max_steps=0",
                "--dry-run",
            ],
            "train.max_steps must be at least 1",
        ),
        (
            &[
                "--cluster",
                "frontier",
                "--set",
                "train.bogus=1",
                "--dry-run",
            ],
            "unknown field `bogus`",
        ),
        (
            &[
                "--cluster",
                "slurm-cuda",
                "--budget-hours",
                "48",
                "--requeue",
                "--dry-run",
            ],
            "use one or the other",
        ),
        (
            &["--cluster", "bad-profile.toml", "--dry-run"],
            "bad-profile.toml",
        ),
    ];
    std::fs::write(
        p.join("bad-profile.toml"),
        "scheduler = \"slurm\"\nmax_nodes = 4\ngpus_per_node = 1\ncores_per_node = 8\n\
         ranks_per_node = 1\nlauncher = \"srun\"\nwaltime = []\n",
    )
    .unwrap();
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let err = muninn_err(&args, p);
        assert!(err.contains(want), "{args:?}: expected `{want}` in:\n{err}");
        nothing_written(p);
    }
    // Frontier charges every job to a project: without --account (or one in the profile) nothing
    // is written, for a launch, a sweep and a data job alike.
    for args in [
        &["launch", cfg.as_str(), "--cluster", "frontier", "--dry-run"][..],
        &[
            "sweep",
            cfg.as_str(),
            "--cluster",
            "frontier",
            "--grid",
            "train.seed=1,2",
            "--dry-run",
        ],
        &[
            "launch-data",
            "--cluster",
            "frontier",
            "--parts",
            "2",
            "--hours",
            "1",
            "--dry-run",
            "--",
            "--out",
            "lustre-ds",
        ],
    ] {
        let err = muninn_err(args, p);
        assert!(
            err.contains(
                "cluster `frontier` charges every job to a project allocation: pass --account"
            ),
            "{args:?}: {err}"
        );
        nothing_written(p);
        assert!(!p.join("lustre-ds").exists());
    }
    // A sweep queues one job per point and segment: 8 points x 13 segments = 104 > 100.
    let err = muninn_err(
        &[
            "sweep",
            cfg.as_str(),
            "--cluster",
            "frontier",
            "--account",
            "PRJ001",
            "--grid",
            "train.seed=1,2,3,4,5,6,7,8",
            "--hours",
            "1",
            "--budget-hours",
            "13",
            "--dry-run",
        ],
        p,
    );
    assert!(
        err.contains("would queue 104 jobs (13 segment(s) x 8 sweep points)"),
        "{err}"
    );
    nothing_written(p);
    // Submitting needs SLURM: with no `sbatch` on PATH (as on a laptop; a login node has one, so the
    // case runs with every PATH entry that holds an `sbatch` left out) it is refused by name.
    let out = Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args([
            "launch",
            cfg.as_str(),
            "--cluster",
            "frontier",
            "--account",
            "PRJ001",
        ])
        .current_dir(p)
        .env("PATH", path_without("sbatch"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sbatch not found"), "{err}");
    nothing_written(p);
    // Sweeps: a grid key without its section, and a point that fails validation (k > r̄).
    // (A malformed argument is a usage error: clap's exit code 2.)
    let out = muninn(
        &[
            "sweep",
            &cfg,
            "--cluster",
            "local",
            "--grid",
            "mean_backprop_depth=1,2",
            "--dry-run",
        ],
        p,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("name the section too"), "{err}");
    let err = muninn_err(
        &[
            "sweep",
            &cfg,
            "--cluster",
            "local",
            "--grid",
            "recurrence.mean_backprop_depth=2,8",
            "--dry-run",
        ],
        p,
    );
    assert!(
        err.contains("sweep point 1 (recurrence.mean_backprop_depth=8)")
            && err.contains("exceeds recurrence.mean_recurrence = 4"),
        "{err}"
    );
    nothing_written(p);
    // Repeated values would put two points in one run directory.
    let err = muninn_err(
        &[
            "sweep",
            &cfg,
            "--cluster",
            "local",
            "--grid",
            "train.seed=3,3",
            "--dry-run",
        ],
        p,
    );
    assert!(err.contains("sweep points 0 and 1 would share"), "{err}");
    nothing_written(p);
    // compare on something that is not a run directory.
    let err = muninn_err(&["compare", "ds"], p);
    assert!(err.contains("is ds a run directory?"), "{err}");
}

#[test]
fn a_frontier_sweep_is_one_throttled_job_array() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = launch_config(p);
    muninn_ok(
        &[
            "sweep",
            &cfg,
            "--cluster",
            "frontier",
            "--account",
            "PRJ001",
            "--nodes",
            "4",
            "--grid",
            "recurrence.mean_backprop_depth=1,2,3,4",
            "--grid",
            "optimizer.lr=1e-3,2e-3",
            "--dry-run",
        ],
        p,
    );
    let launch = p.join("runs/golden-sweep/launch/1");
    let sbatch = std::fs::read_to_string(launch.join("job.sbatch")).unwrap();
    // 8 points, at most 4 at once (the batch QOS's eligible-job limit).
    assert!(sbatch.contains("#SBATCH --array=0-7%4"), "{sbatch}");
    assert!(sbatch.contains("%x-%A_%a.out"), "{sbatch}");
    assert!(sbatch.contains("scancel \"${j}_$point\""), "{sbatch}");
    bash_syntax_ok(&launch.join("job.sbatch"));
    for i in 0..8 {
        let point = std::fs::read_to_string(launch.join(format!("points/{i}.toml"))).unwrap();
        let k = i / 2 + 1;
        let lr = if i % 2 == 0 { "0.001" } else { "0.002" };
        assert!(
            point.contains(&format!("mean_backprop_depth = {k}")),
            "{point}"
        );
        assert!(point.contains(&format!("lr = {lr}")), "{point}");
        let name = format!(
            "golden-mean_backprop_depth-{k}-lr-{}e-3",
            if i % 2 == 0 { 1 } else { 2 }
        );
        assert!(point.contains(&format!("name = \"{name}\"")), "{point}");
        assert!(sbatch.contains(&format!("runs/{name}")), "{sbatch}");
    }
}

/// The job script skips a run with a FINISHED marker: launching one is refused, unless max_steps
/// was raised, in which case the marker goes (after a dry run says so, and only when submitting) and
/// the run trains on from its last checkpoint.
#[test]
fn a_finished_run_is_refused_or_continued_with_more_steps() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "golden", 4, "");
    muninn_ok(&["train", &cfg], p);
    let run = p.join("runs/golden");
    assert_eq!(
        std::fs::read_to_string(run.join("FINISHED")).unwrap(),
        "step 4\n"
    );
    let err = muninn_err(&["launch", &cfg, "--cluster", "local", "--dry-run"], p);
    assert!(err.contains("already finished at step 4"), "{err}");
    assert!(!run.join("launch").exists());
    let more = [
        "launch",
        &cfg,
        "--cluster",
        "local",
        "--set",
        "train.max_steps=6",
    ];
    let dry: Vec<&str> = more.iter().copied().chain(["--dry-run"]).collect();
    let out = muninn_ok(&dry, p);
    assert!(out.contains("would continue it to step 6"), "{out}");
    assert!(run.join("FINISHED").exists(), "a dry run changes nothing");
    // Submitting removes the marker and the local job resumes the run at step 4.
    let out = muninn(&more, p);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("resumed from") && stderr.contains("at step 4"),
        "{stderr}"
    );
    let steps: Vec<u64> = losses(p, "golden").iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6], "every step once, in order");
    let ckpts: Vec<u64> = muninn_trainer::ckpt::list(&run)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(ckpts, [4, 6]);
    assert_eq!(
        std::fs::read_to_string(run.join("FINISHED")).unwrap(),
        "step 6\n"
    );
}

/// `muninn launch-data`: locally the parts run one after another and merge into one dataset; for
/// SLURM it renders a job array of parts and a merge that waits for all of them.
#[test]
fn launch_data_prepares_parts_and_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    // Three input files to share between two parts.
    let src = std::fs::read_to_string(repo_root().join("tests/fixtures/gsm8k/test.jsonl")).unwrap();
    let lines: Vec<&str> = src.lines().collect();
    std::fs::create_dir(p.join("in")).unwrap();
    for (i, chunk) in lines.chunks(lines.len() / 3 + 1).enumerate() {
        std::fs::write(p.join(format!("in/{i}.jsonl")), chunk.join("\n") + "\n").unwrap();
    }
    let prepare = [
        "--",
        "--tokenizer",
        "tok.json",
        "--input",
        "in",
        "--text-field",
        "question",
        "--block-size",
        "32",
        "--out",
        "big",
    ];
    let out = muninn_ok(
        &[
            &["launch-data", "--cluster", "local", "--parts", "2"][..],
            &prepare,
        ]
        .concat(),
        p,
    );
    assert!(out.contains("prepare.sh"), "{out}");
    for part in ["big/parts/0-of-2", "big/parts/1-of-2"] {
        assert!(p.join(part).join("dataset.json").is_file(), "{part}");
    }
    let verify = muninn_ok(&["data", "verify", "big", "--tokenizer", "tok.json"], p);
    assert!(
        verify.contains("train:") && verify.contains("val:"),
        "{verify}"
    );

    let out = muninn_ok(
        &[
            &[
                "launch-data",
                "--cluster",
                "frontier",
                "--account",
                "PRJ001",
                "--parts",
                "64",
                "--hours",
                "1.5",
                "--dry-run",
            ][..],
            &prepare[..prepare.len() - 1],
            &["lustre-ds"],
        ]
        .concat(),
        p,
    );
    assert!(out.contains("dry run"), "{out}");
    let launch = p.join("lustre-ds/launch/1");
    let array = std::fs::read_to_string(launch.join("prepare.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --array=0-63%"), "{array}");
    assert!(
        array.contains("--time=01:30:00") && array.contains("--part $SLURM_ARRAY_TASK_ID/64"),
        "{array}"
    );
    let submit = std::fs::read_to_string(launch.join("submit.sh")).unwrap();
    assert!(submit.contains("--dependency=afterok:"), "{submit}");
    for f in ["prepare.sbatch", "merge.sbatch", "submit.sh"] {
        let ok = std::process::Command::new("bash")
            .args(["-n"])
            .arg(launch.join(f))
            .status()
            .unwrap();
        assert!(ok.success(), "{f} is not valid bash");
    }
    let err = muninn_err(
        &[
            &["launch-data", "--cluster", "local", "--parts", "2"][..],
            &prepare[..prepare.len() - 2],
        ]
        .concat(),
        p,
    );
    assert!(err.contains("--out"), "{err}");
}
