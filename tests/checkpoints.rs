//! Checkpoints at their edges: resuming an older checkpoint while newer ones exist, leftovers of
//! interrupted saves, a checkpoint used from another directory or machine, and a save slower than
//! the gradient messages' timeout.

mod common;
use common::*;

use std::path::Path;

/// micro_config with checkpoints every `interval` steps.
fn config(p: &Path, name: &str, steps: u64, interval: u64) -> String {
    let cfg = micro_config(p, name, steps, "");
    let text = std::fs::read_to_string(p.join(&cfg)).unwrap().replace(
        "[checkpoint]\ninterval = 0\n",
        &format!("[checkpoint]\ninterval = {interval}\nkeep = 10\n"),
    );
    std::fs::write(p.join(&cfg), text).unwrap();
    cfg
}

fn step_dir(p: &Path, run: &str, step: u64) -> std::path::PathBuf {
    p.join(format!("runs/{run}/checkpoints/step-{step:08}"))
}

#[test]
fn resuming_an_older_checkpoint_moves_the_newer_ones_aside() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = config(p, "old", 8, 2);
    muninn_ok(&["train", &cfg], p);
    let first = std::fs::read(step_dir(p, "old", 8).join("model.safetensors")).unwrap();
    let from = step_dir(p, "old", 4);
    let out = muninn(&["train", &cfg, "--resume", from.to_str().unwrap()], p);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("moved the newer checkpoints of steps [6, 8]"),
        "{err}"
    );
    // Nothing deleted: the old trajectory's checkpoints sit in one superseded-* directory.
    let aside: Vec<_> = std::fs::read_dir(p.join("runs/old/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|e| {
            e.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("superseded-00000004-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let moved = std::fs::read(aside[0].join("step-00000008/model.safetensors")).unwrap();
    assert!(moved == first);
    // The continued run wrote its own steps 6 and 8, the same as before (exact resume).
    let again = std::fs::read(step_dir(p, "old", 8).join("model.safetensors")).unwrap();
    assert!(again == first, "the resumed trajectory differs");
    assert!(step_dir(p, "old", 6).is_dir());
}

#[test]
fn leftovers_of_interrupted_saves_are_removed_on_start_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = config(p, "tmp", 2, 2);
    let ckpts = p.join("runs/tmp/checkpoints");
    let host = muninn_data::atomic::host_name();
    // A dead writer of this host (pid beyond pid_max), a live one (this test), another host's
    // fresh one, an older Muninn's, and something that is not Muninn's.
    let dead = ckpts.join(format!(".muninn-tmp-{host}-99999999-abc"));
    let live = ckpts.join(format!(".muninn-tmp-{host}-{}-def", std::process::id()));
    let other = ckpts.join(".muninn-tmp-node-b-17-ghi");
    let older = ckpts.join(".muninn-tmp-XyZ12");
    let unrelated = ckpts.join("notes");
    for d in [&dead, &live, &other, &older, &unrelated] {
        std::fs::create_dir_all(d.join("inner")).unwrap();
    }
    let out = muninn(&["train", &cfg, "--resume", "auto"], p);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!dead.exists(), "a dead writer's leftover stays: {err}");
    assert!(err.contains("left by an interrupted save"), "{err}");
    for kept in [&live, &other, &older, &unrelated] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    // Another host's leftover older than checkpoint.timeout_s is stale too.
    let out = muninn(
        &[
            "train",
            &cfg,
            "--resume",
            "auto",
            "--set",
            "train.max_steps=4",
            "--set",
            "checkpoint.timeout_s=0.001",
        ],
        p,
    );
    assert!(out.status.success());
    assert!(!other.exists() && !older.exists());
    assert!(live.exists() && unrelated.exists());
}

#[test]
fn a_checkpoint_works_from_any_directory_and_copied_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = config(p, "here", 4, 4);
    muninn_ok(&["train", &cfg], p);
    let ck = step_dir(p, "here", 4);
    assert!(
        ck.join("tokenizer.json").is_file(),
        "the checkpoint carries its tokenizer"
    );
    let frozen = std::fs::read_to_string(p.join("runs/here/config.toml")).unwrap();
    assert!(
        frozen.contains(&p.join("ds").display().to_string()),
        "{frozen}"
    );

    // From another directory, the checkpoint inside its run: eval finds the recorded data.
    let elsewhere = tempfile::tempdir().unwrap();
    let e = elsewhere.path();
    let ck_s = ck.to_str().unwrap();
    let out = muninn_ok(&["eval", ck_s, "--depths", "1", "--out", "ev"], e);
    assert!(out.contains("val loss"), "{out}");
    let gen = muninn_ok(
        &["generate", ck_s, "--prompt", "hi", "--max-tokens", "4"],
        e,
    );
    assert!(gen.starts_with("hi"), "{gen}");

    // Copied to another machine (no run around it, no data): inference needs nothing else.
    let copy = e.join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(&ck).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    muninn_ok(
        &["generate", "copy", "--prompt", "hi", "--max-tokens", "4"],
        e,
    );
    muninn_ok(
        &[
            "forward",
            "copy",
            "--text",
            "hi there",
            "--out",
            "f.safetensors",
        ],
        e,
    );
    muninn_ok(
        &[
            "latents", "copy", "--prompt", "hi there", "--depth", "3", "--out", "lat",
        ],
        e,
    );
    muninn_ok(
        &["export", "copy", "--format", "huginn-hf", "--out", "hf"],
        e,
    );
    let err = muninn_err(&["eval", "copy"], e);
    assert!(err.contains("--data"), "{err}");
    let ds = p.join("ds");
    muninn_ok(
        &[
            "eval",
            "copy",
            "--data",
            ds.to_str().unwrap(),
            "--depths",
            "1",
            "--out",
            "ev2",
        ],
        e,
    );
    // The run's data gone: --data still overrides it.
    std::fs::rename(&ds, p.join("ds-moved")).unwrap();
    let err = muninn_err(&["eval", ck_s, "--depths", "1", "--out", "ev3"], e);
    assert!(err.contains("pass --data"), "{err}");
    let moved = p.join("ds-moved");
    muninn_ok(
        &[
            "eval",
            ck_s,
            "--data",
            moved.to_str().unwrap(),
            "--depths",
            "1",
            "--out",
            "ev3",
        ],
        e,
    );
}
