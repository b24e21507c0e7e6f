//! COCONUT through the real binary on tiny generated ProsQA graphs (gpt-micro): the stage follows
//! the epoch, a run resumed in the middle of a stage continues bit for bit, the optimizer reset
//! changes training exactly from the epoch it happens at, every arm trains, and 2 MPI ranks equal
//! 1 rank with 2 accumulation steps.

mod common;
use common::*;

use std::path::Path;
use std::sync::Mutex;

/// The tests that train share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// 64 training graphs and micro-batches of 8: an epoch is 8 steps, a stage 1 epoch.
fn config(p: &Path, name: &str, max_steps: u64, extra: &str) -> String {
    let text = format!(
        r#"
[run]
name = "{name}"
dir = "runs"
[model]
family = "gpt"
preset = "gpt-micro"
vocab_size = 320
block_size = 256
[objective]
kind = "coconut"
arm = "coconut"
c_thought = 1
max_latent_stage = 2
epochs_per_stage = 1
reset_optimizer = "epoch"
[data]
dir = "prosqa"
prosqa = {{ train = 64, test = 16, seed = 0, vocab_size = 317, graph = {{ nodes = [6, 8], hops = [2, 3], concepts = 10, persons = 4 }} }}
[optimizer]
kind = "adamw"
lr = 3e-3
schedule = "constant"
warmup_steps = 0
weight_decay = 0.01
grad_clip = 1.0
[train]
seed = 3
max_steps = {max_steps}
micro_batch_size = 8
threads = 1
[checkpoint]
interval = 0
[log]
interval = 1
tensorboard = false
[eval]
interval = 6
max_rows = 16
[dist]
timeout_s = 120
{extra}"#
    );
    let path = p.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn records(p: &Path, run: &str) -> Vec<serde_json::Value> {
    metrics(p, run)
        .into_iter()
        .map(|mut m| {
            for k in ["tokens_per_s", "peak_mem_gib", "elapsed_s"] {
                m.as_object_mut().unwrap().remove(k);
            }
            m
        })
        .collect()
}

#[test]
fn stages_follow_epochs_and_a_resume_mid_stage_is_bit_exact() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let straight = config(p, "straight", 20, "");
    let out = muninn(&["train", &straight], p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("generated prosqa"));
    let all = records(p, "straight");
    assert_eq!(all.len(), 20);
    for r in &all {
        let step = r["step"].as_u64().unwrap();
        let epoch = (step - 1) / 8;
        assert_eq!(r["epoch"].as_u64(), Some(epoch), "{r}");
        assert_eq!(r["stage"].as_u64(), Some(epoch), "{r}");
        // Thoughts from stage 1 on, far larger than token embeddings.
        let thought = r["thought_norm"].as_f64();
        assert_eq!(thought.is_some(), epoch >= 1, "{r}");
        if let Some(t) = thought {
            assert!(t > r["embed_norm"].as_f64().unwrap(), "{r}");
        }
    }
    // Stopped at step 12 (epoch 1 of 8 steps, stage 1), then resumed to 20.
    let part = config(p, "part", 12, "");
    muninn_ok(&["train", &part], p);
    muninn_ok(
        &[
            "train",
            &part,
            "--resume",
            "auto",
            "--set",
            "train.max_steps=20",
        ],
        p,
    );
    let resumed: Vec<String> = records(p, "part").iter().map(|r| r.to_string()).collect();
    let want: Vec<String> = all.iter().map(|r| r.to_string()).collect();
    assert_eq!(resumed, want, "every logged metric, bit for bit");

    // Without the reset at epoch 1 (step 9) training is the same up to step 8 and differs after.
    let never = config(p, "never", 10, "");
    let text = std::fs::read_to_string(&never)
        .unwrap()
        .replace("reset_optimizer = \"epoch\"", "reset_optimizer = \"never\"");
    std::fs::write(&never, text).unwrap();
    muninn_ok(&["train", &never], p);
    let other = records(p, "never");
    for (a, b) in all.iter().zip(&other).take(9) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
    }
    assert_ne!(
        all[9]["loss"], other[9]["loss"],
        "the reset at step 9 changes step 10"
    );
}

#[test]
fn every_arm_trains() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for arm in [
        "coconut",
        "cot",
        "no-cot",
        "pause-as-thought",
        "no-thought",
        "no-curriculum",
    ] {
        let cfg = config(p, arm, 2, "");
        let set = format!("objective.arm={arm}");
        muninn_ok(
            &["train", &cfg, "--set", &set, "--set", "eval.interval=2"],
            p,
        );
        let last = records(p, arm).pop().unwrap();
        assert!(last["loss"].as_f64().unwrap().is_finite(), "{arm}: {last}");
        assert!(
            last["val_loss"].as_f64().unwrap().is_finite(),
            "{arm}: {last}"
        );
        // Thoughts are continuous only where the arm says so; no-curriculum starts in the
        // final stage.
        let continuous = arm == "no-curriculum";
        assert_eq!(
            last["thought_norm"].is_number(),
            continuous,
            "{arm}: {last}"
        );
        assert_eq!(
            last["stage"].as_u64() == Some(3),
            continuous,
            "{arm}: {last}"
        );
        // Every arm's checkpoint answers the held-out questions: its prompts hold the final
        // stage's thoughts (max_latent_stage · c = 2) where the arm thinks.
        let ck = format!("runs/{arm}/checkpoints/step-00000002");
        let out = muninn_ok(
            &[
                "eval",
                &ck,
                "--qa",
                "prosqa/test.json",
                "--max-new-tokens",
                "8",
                "--threads",
                "1",
            ],
            p,
        );
        assert!(out.contains("accuracy"), "{out}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(p.join(format!("runs/{arm}/eval/step-00000002/eval.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(report["questions"], 16, "{report}");
        let acc = report["accuracy"].as_f64().unwrap();
        let correct = report["correct"].as_f64().unwrap();
        assert!((acc - correct / 16.0).abs() < 1e-12, "{report}");
        assert!(
            report["mean_generated_tokens"].as_f64().unwrap() <= 8.0,
            "{report}"
        );
        let thinks = matches!(arm, "coconut" | "pause-as-thought" | "no-curriculum");
        let want = if thinks { 2.0 } else { 0.0 };
        assert_eq!(
            report["thoughts_per_question"].as_f64(),
            Some(want),
            "{arm}: {report}"
        );
        // Pause tokens fill thought columns too, but as ordinary tokens: no hidden state fills them.
        let filled = matches!(arm, "coconut" | "no-curriculum");
        assert_eq!(
            report["thought_norm"].is_number(),
            filled,
            "{arm}: {report}"
        );
        // `generate` prompts the same way, the thoughts after the question.
        let out = muninn_ok(
            &[
                "generate",
                &ck,
                "--prompt",
                "Is Tom a wumpus or lempus?",
                "--max-tokens",
                "4",
                "--json",
                "--threads",
                "1",
            ],
            p,
        );
        let g: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(g["thoughts"].as_f64(), Some(want), "{arm}: {g}");
        assert!(g["tokens"].as_array().unwrap().len() <= 4, "{arm}: {g}");
    }
    let e = muninn_err(
        &[
            "train",
            &config(p, "bad", 2, ""),
            "--set",
            "objective.arm=thinking",
        ],
        p,
    );
    assert!(e.contains("objective") || e.contains("arm"), "{e}");
}

#[test]
fn two_ranks_equal_one_rank_with_two_accumulation_steps() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !mpirun_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Micro-batches of 4: a global batch of 8 either way, stages 0 and 1 on the way.
    let cfg = config(p, "dp", 12, "");
    let small = "train.micro_batch_size=4";
    muninn_ok(
        &[
            "train",
            &cfg,
            "--set",
            "run.name=one",
            "--set",
            "train.grad_accum=2",
            "--set",
            small,
        ],
        p,
    );
    let out = mpirun(
        2,
        &["train", &cfg, "--set", "run.name=two", "--set", small],
        p,
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (records(p, "one"), records(p, "two"));
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for key in ["loss", "grad_norm"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() < 1e-5,
                "{key} at step {}: {u} vs {v}",
                x["step"]
            );
        }
    }
    assert!(a[11]["thought_norm"].is_number(), "stage 1 has thoughts");
}

#[test]
fn a_coconut_run_starts_from_a_cot_checkpoint() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cot = config(p, "cot", 6, "");
    muninn_ok(&["train", &cot, "--set", "objective.arm=cot"], p);
    let fresh = config(p, "fresh", 1, "");
    muninn_ok(&["train", &fresh], p);
    let warm = config(p, "warm", 1, "");
    let out = muninn(
        &[
            "train",
            &warm,
            "--init-from",
            "runs/cot/checkpoints/step-00000006",
        ],
        p,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("initialised from"));
    // Six CoT steps already taught the layout: the warm start's first loss is far below a fresh one's.
    let first = |run: &str| records(p, run)[0]["loss"].as_f64().unwrap();
    assert!(
        first("warm") < first("fresh") - 0.5,
        "{} vs {}",
        first("warm"),
        first("fresh")
    );
    let e = muninn_err(
        &[
            "train",
            &config(p, "bad", 1, ""),
            "--init-from",
            "runs/nowhere",
        ],
        p,
    );
    assert!(e.contains("runs/nowhere"), "{e}");
}

#[test]
fn the_shipped_config_generates_its_data_and_saves_on_sigterm() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = repo_root().join("configs/coconut-prosqa.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args(["train", cfg.to_str().unwrap()])
        .args([
            "--set",
            "run.dir=runs",
            "--set",
            "data.dir=prosqa",
            "--set",
            "train.micro_batch_size=2",
        ])
        .args(["--set", "model.preset=gpt-micro", "--set", "log.interval=1"])
        .current_dir(p)
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics_file = p.join("runs/coconut-prosqa/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics_file).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGTERM must end the run cleanly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(Signal)"));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("generated prosqa (40000 training and 300 test graphs"));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("prosqa/qa.json")).unwrap()).unwrap();
    assert_eq!(
        info["splits"],
        serde_json::json!([["train", 40000], ["test", 300]])
    );
    let saved = std::fs::read_dir(p.join("runs/coconut-prosqa/checkpoints"))
        .unwrap()
        .count();
    assert!(saved >= 1, "a checkpoint was saved");
}

#[test]
fn gsm8k_is_rebuilt_from_the_openai_files() {
    let src = repo_root().join("../shared/data/gsm8k");
    if !src.join("train.jsonl").is_file() {
        skip_without(
            "shared-data",
            "the project's ../shared/data/gsm8k (openai train.jsonl, test.jsonl)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let out = muninn_ok(
        &[
            "data",
            "gsm8k",
            "--input",
            src.to_str().unwrap(),
            "--out",
            "gsm8k",
        ],
        p,
    );
    assert!(
        out.contains("6973") && out.contains("500") && out.contains("1319"),
        "{out}"
    );
    let read = |s: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p.join(format!("gsm8k/{s}.json"))).unwrap())
            .unwrap()
    };
    let (valid, test) = (read("valid"), read("test"));
    // iCoT's first validation row, and the test rows without an annotation (one empty step).
    assert!(valid[0]["question"]
        .as_str()
        .unwrap()
        .starts_with("John cuts his grass to 2 inches."));
    assert_eq!(
        valid[0]["steps"],
        serde_json::json!(["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"])
    );
    assert_eq!(valid[0]["answer"], "300");
    let empty = test
        .iter()
        .filter(|r| r["steps"] == serde_json::json!([""]))
        .count();
    assert_eq!(empty, 18);
    // An existing output is never overwritten.
    let e = muninn_err(
        &[
            "data",
            "gsm8k",
            "--input",
            src.to_str().unwrap(),
            "--out",
            "gsm8k",
        ],
        p,
    );
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn a_huginn_model_thinks_with_a_fixed_depth_per_pass() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = config(
        p,
        "hug",
        10,
        "[recurrence]\nmean_recurrence = 3\nmean_backprop_depth = 1\n",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "family = \"gpt\"\npreset = \"gpt-micro\"",
            "family = \"huginn\"\npreset = \"micro\"",
        )
        .replace("[eval]\n", "[eval]\ndepths = [3]\n");
    std::fs::write(&cfg, text).unwrap();
    muninn_ok(&["train", &cfg, "--set", "objective.recurrence=2"], p);
    let all = records(p, "hug");
    let last = all.last().unwrap();
    // Every pass at r = objective.recurrence = 2, the last min(k̄, r) = 1 with a graph.
    assert_eq!(
        (last["n"].as_i64(), last["k"].as_i64()),
        (Some(1), Some(1)),
        "{last}"
    );
    assert!(last["thought_norm"].is_number(), "stage 1 thinks: {last}");
    assert!(all.iter().any(|r| r["val_loss_r3"].is_number()));
    muninn_ok(
        &[
            "eval",
            "runs/hug/checkpoints/step-00000010",
            "--qa",
            "prosqa/test.json",
            "--max-new-tokens",
            "4",
        ],
        p,
    );
    let e = muninn_err(
        &[
            "train",
            &config(p, "g", 1, ""),
            "--set",
            "objective.recurrence=2",
        ],
        p,
    );
    assert!(e.contains("objective.recurrence"), "{e}");
}
