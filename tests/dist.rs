//! Data parallelism under a real `mpirun -np 2` (OpenMPI over loopback/shared memory): 2 ranks equal
//! 1 rank with 2 accumulation steps, ZeRO-1 equals plain data parallelism, resume across world sizes,
//! and a rank that dies or stops answering ends the job.
//!
//! Tolerance: on CPU the 2-rank sum g₀ + g₁ and the 1-rank accumulation differ only in the order in
//! which the head and prelude contributions of the second micro-batch are added, and ZeRO-1 sums
//! ELLIS-Adam's per-tensor statistics in two halves; after 6 steps every weight agrees to 1e-5 absolute
//! (weights are O(1); seen: 1.2e-7) and every loss to 1e-5.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The MPI tests share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const TOL: f64 = 1e-5;

/// What every MPI test starts with: mpirun (or an explicit MUNINN_SKIP=mpirun), the two cores to itself, and a
/// temporary directory with the GSM8K tokenizer and shards.
fn mpi_test() -> Option<(MutexGuard<'static, ()>, tempfile::TempDir)> {
    if !mpirun_available() {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    prepare_gsm8k(dir.path());
    Some((serial, dir))
}

fn mpirun_ok(np: usize, args: &[&str], cwd: &Path) -> String {
    let out: Output = mpirun(np, args, cwd).output().expect("running mpirun");
    assert!(
        out.status.success(),
        "mpirun -np {np} muninn {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A micro-shape config with the manual backward walk (three overlap points) and small messages, so
/// every region is cut into several chunks.
fn write_config(dir: &Path) -> &'static str {
    std::fs::write(
        dir.join("dp.toml"),
        r#"
[run]
name = "dp"
dir = "runs"
[model]
preset = "micro"
vocab_size = 512
[data]
dir = "ds"
tokenizer = "tok.json"
[recurrence]
mean_recurrence = 4
mean_backprop_depth = 2
activation_checkpointing = true
[optimizer]
kind = "ellis-adam"
lr = 1e-3
schedule = "constant"
warmup_steps = 2
[train]
seed = 7
max_steps = 6
micro_batch_size = 4
threads = 1
[checkpoint]
interval = 0
[log]
interval = 1
[eval]
interval = 3
depths = [1, 4]
max_rows = 16
[dist]
chunk_mb = 0.05
timeout_s = 120
"#,
    )
    .unwrap();
    "dp.toml"
}

fn ckpt(dir: &Path, run: &str, step: u64) -> PathBuf {
    dir.join(format!("runs/{run}/checkpoints/step-{step:08}"))
}

fn assert_same_run(p: &Path, a: &str, b: &str, step: u64) {
    let (la, lb) = (losses(p, a), losses(p, b));
    assert_eq!(la.len(), lb.len(), "{a}: {la:?}\n{b}: {lb:?}");
    for ((sx, x), (sy, y)) in la.iter().zip(&lb) {
        assert!(
            sx == sy && (x - y).abs() < TOL,
            "losses differ: {a} {la:?} vs {b} {lb:?}"
        );
    }
    assert_same_state(p, a, b, step);
}

/// The weights and the optimizer state of two runs at `step` agree.
fn assert_same_state(p: &Path, a: &str, b: &str, step: u64) {
    use muninn_model::checkpoint::{model_files, TensorFiles};
    // The weights, from one file or a rank's share each.
    let weights =
        |run: &str| TensorFiles::open(&model_files(&ckpt(p, run, step)).unwrap()).unwrap();
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.names(), wb.names(), "{a} and {b} hold other tensors");
    let mut numel = 0;
    for n in wa.names() {
        let (x, y) = (wa.get(n).unwrap(), wb.get(n).unwrap());
        numel += x.numel() as i64;
        let d = (x - y).abs().max().double_value(&[]);
        assert!(d < TOL, "weight {n} of {a} and {b} differs by {d}");
    }
    // The optimizer state over the whole flat buffer, from however many shards each run wrote.
    let full = |run: &str| {
        muninn_trainer::ckpt::read_optimizer(&ckpt(p, run, step), &[(0, numel)]).unwrap()
    };
    let ((ma, va), (mb, vb)) = (full(a), full(b));
    let d = (ma - mb)
        .abs()
        .max()
        .double_value(&[])
        .max((va - vb).abs().max().double_value(&[]));
    assert!(d < TOL, "the optimizer states of {a} and {b} differ by {d}");
}

#[test]
fn two_ranks_equal_one_rank_with_accumulation_with_and_without_zero1() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            "run.name=one",
            "--set",
            "train.grad_accum=2",
        ],
        p,
    );
    let out = mpirun_ok(2, &["train", cfg, "--set", "run.name=two"], p);
    assert!(out.contains("step 6 (Finished)"), "{out}");
    assert_eq!(
        out.matches("stopped at step").count(),
        1,
        "only rank 0 reports: {out}"
    );
    mpirun_ok(
        2,
        &[
            "train",
            cfg,
            "--set",
            "run.name=zero",
            "--set",
            "dist.zero1=true",
        ],
        p,
    );
    assert_same_run(p, "one", "two", 6);
    assert_same_run(p, "two", "zero", 6);

    // The 2-rank run reports communication and the mean validation loss over both ranks' rows.
    let last = metrics(p, "two").pop().unwrap();
    assert!(last["comm_wait_s"].as_f64().is_some(), "{last}");
    let one = metrics(p, "one").pop().unwrap();
    let (a, b) = (
        one["val_loss_r4"].as_f64().unwrap(),
        last["val_loss_r4"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < TOL, "validation differs: {a} vs {b}");
    // Rank 0 alone writes the run directory.
    assert!(p.join("runs/two/tb").is_dir());
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn muon_and_the_retrofit_curriculum_two_ranks_equal_one_rank_and_resume_exactly() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    // r̄ ramps 1, 2, 3, 4 over steps 1–4 (W = ⌈0.5·6⌉ = 3), k̄ capped at it.
    let muon = [
        "--set",
        "optimizer.kind=muon",
        "--set",
        "optimizer.lr=0.02",
        "--set",
        "optimizer.weight_decay=0.01",
        "--set",
        "optimizer.muon.adamw_lr=0.001",
        "--set",
        "recurrence.curriculum=linear",
        "--set",
        "recurrence.curriculum_warmup=0.5",
    ];
    let run = |name: &str, extra: &[&str]| {
        let name = format!("run.name={name}");
        [&["train", cfg, "--set", name.as_str()][..], &muon, extra]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<String>>()
    };
    let one = run("one", &["--set", "train.grad_accum=2"]);
    muninn_ok(&strs(&one), p);
    mpirun_ok(2, &strs(&run("two", &[])), p);
    mpirun_ok(2, &strs(&run("zero", &["--set", "dist.zero1=true"])), p);
    // ZeRO-1 stopped after 3 steps (each rank's momentum shard saved), resumed to the end.
    let out = mpirun_ok(
        2,
        &strs(&run(
            "half",
            &["--set", "dist.zero1=true", "--set", "train.exit_interval=3"],
        )),
        p,
    );
    assert!(out.contains("step 3 (ExitInterval)"), "{out}");
    mpirun_ok(
        2,
        &strs(&run(
            "half",
            &["--set", "dist.zero1=true", "--resume", "auto"],
        )),
        p,
    );
    assert_same_run(p, "one", "two", 6);
    assert_same_run(p, "two", "zero", 6);
    assert_same_run(p, "zero", "half", 6);

    // Every run drew the same depths, on the curriculum: k never above the ramped r̄.
    let depths = |run: &str| -> Vec<(i64, i64)> {
        metrics(p, run)
            .iter()
            .filter_map(|m| Some((m.get("n")?.as_i64()?, m.get("k")?.as_i64()?)))
            .collect()
    };
    let d = depths("one");
    assert_eq!(d.len(), 6, "{d:?}");
    for run in ["two", "zero", "half"] {
        assert_eq!(depths(run), d, "{run}");
    }
    for (step, &(_, k)) in d.iter().enumerate() {
        assert!(k <= (step as i64 + 1).min(2), "step {}: k = {k}", step + 1);
    }
    // The same run under AdamW parts ways at the first update: Muon is what moved the weights.
    muninn_ok(
        &strs(&run(
            "adamw",
            &[
                "--set",
                "train.grad_accum=2",
                "--set",
                "optimizer.kind=adamw",
            ],
        )),
        p,
    );
    let (a, m) = (losses(p, "adamw"), losses(p, "one"));
    assert!((a[1].1 - m[1].1).abs() > 1e-4, "adamw {a:?} vs muon {m:?}");
}

#[test]
fn uneven_targets_weight_the_step_by_tokens_over_micro_batches_and_ranks() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    // 200 of the 512 ids take no part in the loss, so micro-batches and ranks count different
    // numbers of targets; a zero s0 lets one big batch draw what two halves draw.
    let ignore = format!(
        "data.ignore_targets=[{}]",
        (100..300)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let common = ["--set", &ignore, "--set", "model.state_init=\"zero\""];
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec!["train", cfg, "--set"];
        let name = format!("run.name={name}");
        args.push(&name);
        args.extend(common);
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let big = run("big", &["--set", "train.micro_batch_size=8"]);
    muninn_ok(&big.iter().map(String::as_str).collect::<Vec<_>>(), p);
    let accum = run("accum", &["--set", "train.grad_accum=2"]);
    muninn_ok(&accum.iter().map(String::as_str).collect::<Vec<_>>(), p);
    let two = run("two", &[]);
    mpirun_ok(2, &two.iter().map(String::as_str).collect::<Vec<_>>(), p);
    assert_same_run(p, "big", "accum", 6);
    assert_same_run(p, "accum", "two", 6);
    // Some targets were left out, as many in each arrangement.
    let tokens = |run: &str| -> Vec<u64> {
        metrics(p, run)
            .iter()
            .map(|m| m["loss_tokens"].as_u64().unwrap())
            .collect()
    };
    let counted = tokens("big");
    assert!(counted.iter().all(|&c| c > 0 && c < 8 * 32), "{counted:?}");
    assert_eq!(counted, tokens("accum"));
    assert_eq!(counted, tokens("two"));
    let val = |run: &str| {
        metrics(p, run).pop().unwrap()["val_loss_r4"]
            .as_f64()
            .unwrap()
    };
    assert!((val("big") - val("two")).abs() < TOL);
}

#[test]
fn resume_moves_between_world_sizes_exactly() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            "run.name=one",
            "--set",
            "train.grad_accum=2",
        ],
        p,
    );

    // 2 ranks (ZeRO-1: sharded optimizer state) for 3 steps, then 1 rank to the end.
    let half = ["--set", "train.exit_interval=3"];
    let out = mpirun_ok(
        2,
        &[
            &[
                "train",
                cfg,
                "--set",
                "run.name=down",
                "--set",
                "dist.zero1=true",
            ][..],
            &half,
        ]
        .concat(),
        p,
    );
    assert!(out.contains("step 3 (ExitInterval)"), "{out}");
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            "run.name=down",
            "--set",
            "train.grad_accum=2",
            "--resume",
            "auto",
        ],
        p,
    );
    assert_same_run(p, "one", "down", 6);

    // And the reverse: 1 rank for 3 steps, then 2 ranks.
    muninn_ok(
        &[
            &[
                "train",
                cfg,
                "--set",
                "run.name=up",
                "--set",
                "train.grad_accum=2",
            ][..],
            &half,
        ]
        .concat(),
        p,
    );
    let out = mpirun_ok(
        2,
        &[
            "train",
            cfg,
            "--set",
            "run.name=up",
            "--set",
            "dist.zero1=true",
            "--resume",
            "auto",
        ],
        p,
    );
    assert!(out.contains("step 6 (Finished)"), "{out}");
    assert_same_run(p, "one", "up", 6);
}

/// The `dist.timeout_s` of the disturbed runs, and how much longer than it a job may take to end
/// before the test calls it a hang: the roll call's grace (2 s here) and MPI_Abort's teardown.
const TIMEOUT_S: f64 = 4.0;
const SLACK_S: f64 = 20.0;

/// Starts a long 2-rank run, waits for a checkpoint and a few more steps, then sends `signal` to
/// rank 1. Returns (exit status, stderr, seconds from the signal to the end).
fn disturb_rank_one(
    p: &Path,
    signal: &str,
    name: &str,
    mpirun_options: &[&str],
) -> (std::process::ExitStatus, String, f64) {
    let cfg = write_config(p);
    let tag = format!("{}-{name}", p.display());
    let mut child = mpirun_with(
        2,
        mpirun_options,
        &[
            "train",
            cfg,
            "--set",
            &format!("run.name={name}"),
            "--set",
            "train.max_steps=100000",
            "--set",
            "checkpoint.interval=2",
            "--set",
            &format!("dist.timeout_s={TIMEOUT_S}"),
            // Every other step saves, and a save waits under its own (default hour-long) bound: the
            // signal may land in one, so that bound is the same here.
            "--set",
            &format!("checkpoint.timeout_s={TIMEOUT_S}"),
        ],
        p,
    )
    .env("MUNINN_TEST_TAG", &tag)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let metrics = p.join(format!("runs/{name}/metrics.jsonl"));
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run never got going"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rank1 = find_rank(&tag, 1).expect("rank 1's process");
    let ok = Command::new("kill")
        .args([signal, &rank1.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let signalled = Instant::now();
    // A bound on how long the job may go on: the timeout is what ends it, not the test's patience.
    while child.try_wait().unwrap().is_none() {
        if signalled.elapsed().as_secs_f64() > TIMEOUT_S + SLACK_S {
            // Every rank first: a SIGKILLed mpirun cannot take its ranks down with it.
            for pid in [find_rank(&tag, 0), Some(rank1)].into_iter().flatten() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = child.kill();
            // What the ranks said, so a hang names the operation rank 0 was in.
            let said = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(30).collect();
            panic!(
                "the job still runs {} s after rank 1 got {signal} (dist.timeout_s = {TIMEOUT_S}); its stderr ended:\n{}",
                TIMEOUT_S + SLACK_S,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = signalled.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        secs,
    )
}

/// The pid of rank `rank` of the mpirun started with `MUNINN_TEST_TAG=tag`.
fn find_rank(tag: &str, rank: usize) -> Option<u32> {
    let want = [
        format!("MUNINN_TEST_TAG={tag}"),
        format!("OMPI_COMM_WORLD_RANK={rank}"),
    ];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        want.iter()
            .all(|w| vars.contains(&w.as_bytes()))
            .then_some(pid)
    })
}

/// Resuming on one rank from the newest checkpoint works: it was complete and intact.
fn assert_checkpoint_intact(p: &Path, name: &str) {
    let cfg = write_config(p);
    let (last, _) = muninn_trainer::ckpt::list(&p.join("runs").join(name))
        .unwrap()
        .pop()
        .expect("a complete checkpoint");
    let out = muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            &format!("run.name={name}"),
            "--set",
            "train.grad_accum=2",
            "--set",
            &format!("train.max_steps={}", last + 1),
            "--resume",
            "auto",
        ],
        p,
    );
    assert!(
        out.contains(&format!("step {} (Finished)", last + 1)),
        "{out}"
    );
}

#[test]
fn a_stopped_rank_ends_the_job_naming_it_and_the_checkpoint_survives() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let (status, err, secs) = disturb_rank_one(p, "-STOP", "stopped", &[]);
    assert!(!status.success(), "exit {status:?}");
    assert!(
        err.contains("rank(s) [1] stopped answering (dead, stopped or hung)"),
        "{err}"
    );
    assert!(
        err.contains("ending the job. The last complete checkpoint is intact."),
        "{err}"
    );
    eprintln!("job ended {secs:.1} s after SIGSTOP (dist.timeout_s = {TIMEOUT_S})");
    assert_checkpoint_intact(p, "stopped");
}

/// A dead rank. mpirun would end the job by itself the moment a rank dies (which proves nothing
/// about Muninn); srun without --kill-on-bad-exit, the SLURM default, leaves the other ranks
/// waiting in their collective. OpenMPI's `orte_enable_recovery` makes mpirun behave like that, so
/// the job must be ended by Muninn's own timeout and roll call, which names the rank.
#[test]
fn a_killed_rank_ends_the_job() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let recovery = ["--mca", "orte_enable_recovery", "1"];
    let (_status, err, secs) = disturb_rank_one(p, "-KILL", "killed", &recovery);
    // With recovery on, mpirun's own exit status is 0 whatever its ranks did (and its report of
    // rank 0's MPI_Abort is not always printed), so Muninn's words are what the test holds to.
    assert!(
        err.contains("rank 0: rank(s) [1] stopped answering (dead, stopped or hung) during "),
        "{err}"
    );
    assert!(
        err.contains("ending the job. The last complete checkpoint is intact."),
        "{err}"
    );
    eprintln!("job ended {secs:.1} s after SIGKILL (dist.timeout_s = {TIMEOUT_S})");
    assert_checkpoint_intact(p, "killed");
}

/// The GPT family through the same loop: 2 ranks equal 1 rank with 2 accumulation steps (ZeRO-1
/// too), and the mean validation loss agrees.
#[test]
fn gpt_two_ranks_equal_one_rank_with_accumulation() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    std::fs::write(
        p.join("gpt.toml"),
        r#"
[run]
name = "gpt"
dir = "runs"
[model]
family = "gpt"
preset = "gpt-micro"
vocab_size = 512
[data]
dir = "ds"
tokenizer = "tok.json"
[optimizer]
kind = "adamw"
lr = 1e-3
schedule = "constant"
warmup_steps = 2
[train]
seed = 7
max_steps = 6
micro_batch_size = 4
threads = 1
[checkpoint]
interval = 0
[log]
interval = 1
[eval]
interval = 3
max_rows = 16
[dist]
chunk_mb = 0.05
timeout_s = 120
"#,
    )
    .unwrap();
    let cfg = "gpt.toml";
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            "run.name=one",
            "--set",
            "train.grad_accum=2",
        ],
        p,
    );
    mpirun_ok(2, &["train", cfg, "--set", "run.name=two"], p);
    mpirun_ok(
        2,
        &[
            "train",
            cfg,
            "--set",
            "run.name=zero",
            "--set",
            "dist.zero1=true",
        ],
        p,
    );
    assert_same_run(p, "one", "two", 6);
    assert_same_run(p, "two", "zero", 6);
    let (one, two) = (
        metrics(p, "one").pop().unwrap(),
        metrics(p, "two").pop().unwrap(),
    );
    let (a, b) = (
        one["val_loss"].as_f64().unwrap(),
        two["val_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < TOL, "validation differs: {a} vs {b}");
    assert!(
        one.get("n").is_none() && one.get("val_loss_r1").is_none(),
        "{one}"
    );
}

/// A save slower than `dist.timeout_s` (a slow filesystem, injected) does not end a healthy job:
/// the ranks wait for it under `checkpoint.timeout_s`; with that bound shorter than the save, the
/// job ends naming the checkpoint.
#[test]
fn a_slow_save_waits_under_the_checkpoint_timeout() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    let run = |name: &str, ckpt_timeout: &str| {
        mpirun(
            2,
            &[
                "train",
                cfg,
                "--set",
                &format!("run.name={name}"),
                "--set",
                "train.max_steps=2",
                "--set",
                "dist.timeout_s=1",
                "--set",
                &format!("checkpoint.timeout_s={ckpt_timeout}"),
            ],
            p,
        )
        .env(muninn_trainer::ckpt::SAVE_DELAY_ENV, "3000")
        .output()
        .unwrap()
    };
    let ok = run("patient", "60");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ckpt(p, "patient", 2).join("model.safetensors").is_file());
    let short = run("hasty", "1");
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("checkpoint"), "{err}");
}

/// A checkpoint written by 2 ranks is one shard file per rank plus a manifest (written last); it
/// resumes on 3 ranks (with ZeRO-1: every rank reads only the pieces it owns) to the uninterrupted
/// run's weights and state; without its manifest it is not a checkpoint; `muninn checkpoint
/// consolidate` writes the single-file form, which resumes too.
#[test]
fn sharded_checkpoints_reshard_on_resume_and_consolidate() {
    let Some((_one_at_a_time, dir)) = mpi_test() else {
        return;
    };
    let p = dir.path();
    let cfg = write_config(p);
    let set = |name: &str| format!("run.name={name}");
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            &set("one"),
            "--set",
            "train.grad_accum=6",
        ],
        p,
    );
    // Same global batch on 2 and 3 ranks: micro-batch 4 × accumulation 3 × 2 ranks, 2 × 3 ranks.
    let two = [
        "train",
        cfg,
        "--set",
        "dist.zero1=true",
        "--set",
        "train.grad_accum=3",
    ];
    mpirun_ok(
        2,
        &[
            &two[..],
            &["--set", &set("re"), "--set", "train.exit_interval=3"],
        ]
        .concat(),
        p,
    );
    let step3 = ckpt(p, "re", 3);
    for f in [
        "manifest.json",
        "optimizer-00000-of-00002.safetensors",
        "optimizer-00001-of-00002.safetensors",
    ] {
        assert!(step3.join(f).is_file(), "{f}");
    }
    assert!(!step3.join("optimizer.safetensors").exists());
    let consolidated = p.join("consolidated");
    let out = muninn_ok(
        &[
            "checkpoint",
            "consolidate",
            step3.to_str().unwrap(),
            "--out",
            consolidated.to_str().unwrap(),
        ],
        p,
    );
    assert!(out.contains("consolidated"), "{out}");
    assert!(
        consolidated.join("optimizer.safetensors").is_file()
            && !consolidated.join("manifest.json").exists()
    );
    mpirun_ok(
        3,
        &[
            "train",
            cfg,
            "--set",
            &set("re"),
            "--set",
            "dist.zero1=true",
            "--set",
            "train.grad_accum=2",
            // Each of the 3 ranks also writes a share of the weights (HF-style shards, an index).
            "--set",
            "checkpoint.shard_weights_mb=0",
            "--resume",
            "auto",
        ],
        p,
    );
    let step6 = ckpt(p, "re", 6);
    for f in [
        "model-00001-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(step6.join(f).is_file(), "{f}");
    }
    assert!(!step6.join("model.safetensors").exists());
    // Inference reads sharded weights as they are.
    muninn_ok(
        &[
            "forward",
            step6.to_str().unwrap(),
            "--tokens",
            "1,2,3",
            "--depth",
            "2",
            "--out",
            "f.safetensors",
        ],
        p,
    );
    assert_same_run(p, "one", "re", 6);
    let single6 = p.join("single6");
    muninn_ok(
        &[
            "checkpoint",
            "consolidate",
            step6.to_str().unwrap(),
            "--out",
            single6.to_str().unwrap(),
        ],
        p,
    );
    assert!(
        single6.join("model.safetensors").is_file()
            && !single6.join("model.safetensors.index.json").exists()
    );

    // The single-file form resumes as well (one rank, the old layout's loader).
    muninn_ok(
        &[
            "train",
            cfg,
            "--set",
            &set("single"),
            "--set",
            "train.grad_accum=6",
            "--resume",
            consolidated.to_str().unwrap(),
        ],
        p,
    );
    assert_same_state(p, "one", "single", 6);

    // A step directory without its manifest is never taken for a checkpoint.
    std::fs::remove_file(ckpt(p, "re", 6).join("manifest.json")).unwrap();
    let listed: Vec<u64> = muninn_trainer::ckpt::list(&p.join("runs/re"))
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, vec![3]);
}
