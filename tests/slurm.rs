//! `muninn launch` and `muninn sweep` on a real SLURM: a single-node slurmctld + slurmd + munged
//! started for this test on 127.0.0.1 (tests/common/slurm.rs), the `local-slurm` profile, and the
//! jobs SLURM really runs: a chain of segments stopped by the time-limit signal, a run that finishes
//! and cancels what is queued behind it, a trainer that fails, a requeued job, a throttled job
//! array, and 2 ranks under `srun` against 2 under `mpirun`. The scenarios run side by side on one
//! SLURM (SLURM's smallest time limit is a minute); at the end the queue must be empty and the
//! daemons and their directory gone.
//!
//! Needs SLURM's Debian packages and root (scripts/setup.sh --with-slurm); without them the test
//! fails under CI and skips only with `MUNINN_SKIP=slurm`.

mod common;
use common::slurm::{slurm_out, LocalSlurm};
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shipped `local-slurm` profile, with `edit` applied to a copy in `dir`. The warning comes
/// 15 s before the limit, not 25: SLURM may send it up to 30 s early, and a trainer must have
/// started (and be listening for it) by then, on a machine busy with the rest of the suite.
fn profile(dir: &Path, edit: Option<(&str, &str)>) -> String {
    let mut text =
        std::fs::read_to_string(repo_root().join("configs/clusters/local-slurm.toml")).unwrap();
    assert!(text.contains("signal_s = 25"));
    text = text.replace("signal_s = 25", "signal_s = 15");
    if let Some((from, to)) = edit {
        assert!(text.contains(from), "{from} is not in local-slurm.toml");
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("slurm.toml"), text).unwrap();
    "slurm.toml".into()
}

/// The job ids a launch queued, in order (its jobs.txt).
fn job_ids(launch_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(launch_dir.join("jobs.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `scontrol show job ID`'s `KEY=value` fields.
fn job(conf: &Path, id: &str) -> std::collections::HashMap<String, String> {
    slurm_out(conf, "scontrol", &["show", "job", "-o", id])
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn state(conf: &Path, id: &str) -> String {
    job(conf, id).get("JobState").cloned().unwrap_or_default()
}

/// Waits until none of `ids` is pending or running.
fn wait_done(slurm: &LocalSlurm, ids: &[String], limit: Duration, mut each: impl FnMut()) {
    let start = Instant::now();
    loop {
        each();
        let queue = slurm.queue();
        let left: Vec<&str> = queue
            .lines()
            .filter(|l| {
                let id = l.split_whitespace().next().unwrap_or("");
                ids.iter()
                    .any(|j| id == j || id.starts_with(&format!("{j}_")))
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "jobs still queued after {limit:?}: {left:?}\n{}",
            slurm.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What every segment's log of a launch says, concatenated.
fn job_logs(launch_dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(launch_dir.join("logs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every logged step once, in order, 1..=N; returns N.
fn steps_once(p: &Path, run: &str) -> u64 {
    let steps: Vec<u64> = losses(p, run).iter().map(|(s, _)| *s).collect();
    assert_eq!(
        steps,
        (1..=steps.len() as u64).collect::<Vec<_>>(),
        "{run}: steps"
    );
    steps.len() as u64
}

fn single_rank_launch(p: &Path, cfg: &str, extra: &[&str]) -> PathBuf {
    let prof = profile(p, None);
    let mut args = vec![
        "launch",
        cfg,
        "--cluster",
        &prof,
        "--nodes",
        "1",
        "--ranks-per-node",
        "1",
        "--hours",
        "0.02",
    ];
    args.extend_from_slice(extra);
    muninn_ok(&args, p);
    let name = cfg.trim_end_matches(".toml");
    p.join("runs").join(name).join("launch/1")
}

/// Three one-minute segments: SLURM's USR1 stops each with a checkpoint, the next resumes.
fn chain(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "chain", 1_000_000, "");
    let launch = single_rank_launch(p, &cfg, &["--budget-hours", "0.06"]);
    let ids = job_ids(&launch);
    assert_eq!(ids.len(), 3, "{ids:?}");
    wait_done(slurm, &ids, Duration::from_secs(330), || {});
    let logs = job_logs(&launch);
    for id in &ids {
        let j = job(&slurm.conf, id);
        assert_eq!(j["JobState"], "COMPLETED", "{id}: {j:?}\n{logs}");
        assert_eq!(j["ExitCode"], "0:0", "{id}");
    }
    assert_eq!(logs.matches("USR1 received").count(), 3, "{logs}");
    assert_eq!(logs.matches("(Signal)").count(), 3, "{logs}");
    assert_eq!(logs.matches("resumed from").count(), 2, "{logs}");
    let ckpts = muninn_trainer::ckpt::list(&p.join("runs/chain")).unwrap();
    assert_eq!(ckpts.len(), 3, "a checkpoint per segment: {ckpts:?}");
    let last = steps_once(p, "chain");
    assert_eq!(last, ckpts.last().unwrap().0);
    assert!(!p.join("runs/chain/FINISHED").exists());
}

/// A run that reaches train.max_steps in its first segment writes FINISHED and cancels the two
/// segments queued behind it.
fn finish(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "finish", 20, "");
    let launch = single_rank_launch(p, &cfg, &["--budget-hours", "0.06"]);
    let ids = job_ids(&launch);
    assert_eq!(ids.len(), 3, "{ids:?}");
    wait_done(slurm, &ids, Duration::from_secs(120), || {});
    let logs = job_logs(&launch);
    assert_eq!(state(&slurm.conf, &ids[0]), "COMPLETED", "{logs}");
    for id in &ids[1..] {
        assert_eq!(state(&slurm.conf, id), "CANCELLED", "{id}\n{logs}");
    }
    assert!(p.join("runs/finish/FINISHED").exists());
    assert_eq!(steps_once(p, "finish"), 20);
    assert!(logs.contains("finished"), "{logs}");
}

/// The data disappears while the first segment trains: the segment that fails ends with the
/// trainer's exit status and cancels the segments after it.
fn failure(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "fails", 1_000_000, "");
    let launch = single_rank_launch(p, &cfg, &["--budget-hours", "0.06"]);
    let ids = job_ids(&launch);
    let metrics = p.join("runs/fails/metrics.jsonl");
    let mut removed = false;
    wait_done(slurm, &ids, Duration::from_secs(200), || {
        if !removed && std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0) {
            std::fs::remove_dir_all(p.join("ds")).unwrap();
            removed = true;
        }
    });
    assert!(removed, "the first segment never logged a step");
    let logs = job_logs(&launch);
    let states: Vec<String> = ids.iter().map(|id| state(&slurm.conf, id)).collect();
    let failed = states
        .iter()
        .position(|s| s == "FAILED")
        .unwrap_or_else(|| panic!("no segment failed: {states:?}\n{logs}"));
    assert!(
        states[..failed].iter().all(|s| s == "COMPLETED"),
        "{states:?}"
    );
    assert!(
        states[failed + 1..].iter().all(|s| s == "CANCELLED"),
        "{states:?}"
    );
    // muninn exits 1 on an error, and so does the job.
    assert_eq!(job(&slurm.conf, &ids[failed])["ExitCode"], "1:0", "{logs}");
    assert!(logs.contains("the trainer failed (exit 1)"), "{logs}");
}

/// `--requeue`: after the time-limit signal the job saves, requeues itself and resumes.
fn requeue(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "requeued", 1_000_000, "");
    let launch = single_rank_launch(p, &cfg, &["--requeue"]);
    let ids = job_ids(&launch);
    assert_eq!(ids.len(), 1);
    let mut cancelled = false;
    wait_done(slurm, &ids, Duration::from_secs(300), || {
        // Once the requeued job has resumed and trained on, stop it.
        if !cancelled && job_logs(&launch).contains("resumed from") {
            let metrics = std::fs::read_to_string(p.join("runs/requeued/metrics.jsonl"));
            let ckpt = muninn_trainer::ckpt::list(&p.join("runs/requeued")).unwrap_or_default();
            let trained_on = match (metrics, ckpt.first()) {
                (Ok(m), Some(c)) => m.lines().count() as u64 > c.0,
                _ => false,
            };
            if trained_on {
                slurm_out(&slurm.conf, "scancel", &[&ids[0]]);
                cancelled = true;
            }
        }
    });
    let logs = job_logs(&launch);
    assert!(
        cancelled,
        "the job never resumed after its requeue:\n{logs}"
    );
    assert!(logs.contains("requeueing"), "{logs}");
    let restarts: u32 = job(&slurm.conf, &ids[0])["Restarts"].parse().unwrap();
    assert!(restarts >= 1, "{logs}");
    assert!(launch
        .join(format!("segments/{}-0-1.txt", ids[0]))
        .is_file());
    steps_once(p, "requeued");
}

/// A sweep over k is one job array, at most `max_concurrent` = 1 task running at a time; then
/// `muninn compare` reads its points.
fn sweep(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "sw", 30, "");
    let prof = profile(p, Some(("max_concurrent = 2", "max_concurrent = 1")));
    muninn_ok(
        &[
            "sweep",
            &cfg,
            "--cluster",
            &prof,
            "--nodes",
            "1",
            "--ranks-per-node",
            "1",
            "--hours",
            "0.02",
            "--grid",
            "recurrence.mean_backprop_depth=1,2",
        ],
        p,
    );
    let launch = p.join("runs/sw-sweep/launch/1");
    let ids = job_ids(&launch);
    assert_eq!(ids.len(), 1, "one array: {ids:?}");
    let array = ids[0].clone();
    let mut most = 0;
    wait_done(slurm, &ids, Duration::from_secs(180), || {
        let running = slurm_out(&slurm.conf, "squeue", &["-h", "-r", "-o", "%i %T"])
            .lines()
            .filter(|l| l.starts_with(&format!("{array}_")) && l.ends_with(" RUNNING"))
            .count();
        most = most.max(running);
    });
    assert_eq!(most, 1, "the %1 throttle: tasks running at once");
    let runs = ["sw-mean_backprop_depth-1", "sw-mean_backprop_depth-2"];
    for r in runs {
        assert!(p.join("runs").join(r).join("FINISHED").exists(), "{r}");
    }
    let table = muninn_ok(
        &[
            "compare",
            "--plot",
            "cmp.png",
            "runs/sw-mean_backprop_depth-1",
            "runs/sw-mean_backprop_depth-2",
        ],
        p,
    );
    for (r, k) in runs.iter().zip(["1", "2"]) {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{r} ")))
            .unwrap_or_else(|| panic!("no row for {r}:\n{table}"));
        assert_eq!(row.split_whitespace().nth(1), Some(k), "{table}");
    }
}

/// 2 ranks started by `srun --mpi=pmix` train as 2 ranks under `mpirun` do.
fn srun_matches_mpirun(slurm: &LocalSlurm) {
    if !mpirun_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "srun2", 6, "");
    let prof = profile(p, None);
    muninn_ok(
        &[
            "launch",
            &cfg,
            "--cluster",
            &prof,
            "--nodes",
            "1",
            "--hours",
            "0.02",
        ],
        p,
    );
    let launch = p.join("runs/srun2/launch/1");
    let ids = job_ids(&launch);
    wait_done(slurm, &ids, Duration::from_secs(120), || {});
    let logs = job_logs(&launch);
    assert_eq!(state(&slurm.conf, &ids[0]), "COMPLETED", "{logs}");
    let twin = micro_config(p, "mpirun2", 6, "");
    let status = mpirun(2, &["train", &twin], p).status().unwrap();
    assert!(status.success());
    // Each step saw 2 ranks x 4 rows x 32 tokens.
    for run in ["srun2", "mpirun2"] {
        assert_eq!(metrics(p, run)[0]["tokens_seen"], 256, "{run}: two ranks");
    }
    let (a, b) = (losses(p, "srun2"), losses(p, "mpirun2"));
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6, "step {s}: srun {x}, mpirun {y}");
    }
}

/// One of two ranks is killed mid-training: `srun --kill-on-bad-exit=1` ends the step at once
/// (the other rank would otherwise wait in its all-reduce for `dist.timeout_s`, here 600 s).
fn a_killed_rank_ends_the_step(slurm: &LocalSlurm) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "crash", 1_000_000, "[dist]\ntimeout_s = 600\n");
    let prof = profile(p, None);
    muninn_ok(
        &[
            "launch",
            &cfg,
            "--cluster",
            &prof,
            "--nodes",
            "1",
            "--hours",
            "0.02",
        ],
        p,
    );
    let launch = p.join("runs/crash/launch/1");
    let ids = job_ids(&launch);
    let metrics = p.join("runs/crash/metrics.jsonl");
    let mut killed: Option<Instant> = None;
    wait_done(slurm, &ids, Duration::from_secs(120), || {
        if killed.is_none() && std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0) {
            let rank1 = rank_process(p, "1");
            if let Some(pid) = rank1 {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                killed = Some(Instant::now());
            }
        }
    });
    let killed = killed.expect("rank 1 never showed up");
    let logs = job_logs(&launch);
    assert!(
        killed.elapsed() < Duration::from_secs(40),
        "the step outlived its killed rank by {:?}:\n{logs}",
        killed.elapsed()
    );
    assert_eq!(state(&slurm.conf, &ids[0]), "FAILED", "{logs}");
    assert!(logs.contains("the trainer failed"), "{logs}");
}

/// The muninn process of rank `rank` whose working directory is `dir`.
fn rank_process(dir: &Path, rank: &str) -> Option<u32> {
    let want = format!("SLURM_PROCID={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
        let is_muninn = String::from_utf8_lossy(&cmd).contains("muninn\0train");
        let is_rank = env.split(|b| *b == 0).any(|v| v == want.as_bytes());
        (is_muninn && is_rank && Some(cwd) == std::fs::canonicalize(dir).ok()).then_some(pid)
    })
}

#[test]
fn on_a_real_slurm_launches_chain_finish_fail_requeue_sweep_and_match_mpirun() {
    let Some(slurm) = LocalSlurm::start() else {
        return;
    };
    // muninn launch → submit.sh → sbatch, and the jobs' srun and scancel, find this cluster.
    std::env::set_var("SLURM_CONF", &slurm.conf);
    let scenarios: [(&str, fn(&LocalSlurm)); 7] = [
        ("chain", chain),
        ("a_killed_rank_ends_the_step", a_killed_rank_ends_the_step),
        ("requeue", requeue),
        ("failure", failure),
        ("finish", finish),
        ("sweep", sweep),
        ("srun_matches_mpirun", srun_matches_mpirun),
    ];
    let start = Instant::now();
    let failed: Vec<&str> = std::thread::scope(|s| {
        let running: Vec<_> = scenarios
            .iter()
            .map(|(name, f)| {
                let slurm = &slurm;
                (
                    *name,
                    s.spawn(move || {
                        f(slurm);
                        eprintln!("{name}: ok after {:?}", start.elapsed());
                    }),
                )
            })
            .collect();
        running
            .into_iter()
            .filter_map(|(name, h)| h.join().is_err().then_some(name))
            .collect()
    });
    assert!(
        failed.is_empty(),
        "scenarios failed: {failed:?} (their messages are above)\n{}",
        slurm.logs()
    );
    slurm.stop();
}
