//! Huginn's training, pinned: the loss of every step and the sha256 of the weights after 8 steps of
//! `configs/tiny.toml`'s recipe, in three arrangements (one rank; two ranks under mpirun; activation
//! checkpointing with two accumulation steps). Recorded before the family seam was cut, so that
//! refactors of the trainer and the model provably leave Huginn's training as it was: the same
//! losses and the same bytes. The data is the GSM8K fixture (the default corpus is a download the
//! tests do not make); everything else is the shipped config.
//!
//! `MUNINN_UPDATE_GOLDEN=1` rewrites `tests/golden/huginn-train.json` (refused under CI). A change
//! that moves these numbers on purpose says why in its commit.
//!
//! The same code rounds differently on another CPU (libtorch and MKL pick kernels by instruction set):
//! `other_cpus` holds, per run, what the unchanged code gave on other machines, each labelled with the
//! CPU and the commit it was recorded from. A run must match its primary record or one of those, bit
//! for bit. Rewriting the goldens drops them.

mod common;
use common::*;

use std::path::Path;

use sha2::{Digest, Sha256};

const STEPS: i64 = 8;

/// configs/tiny.toml with the fixture's data, 8 steps, a checkpoint at the end, every step logged.
fn tiny_config(dir: &Path, name: &str, extra: &[(&str, &str, toml::Value)]) -> String {
    let text = std::fs::read_to_string(repo_root().join("configs/tiny.toml")).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    let mut set = |table: &str, key: &str, value: toml::Value| {
        cfg.get_mut(table)
            .and_then(|t| t.as_table_mut())
            .unwrap_or_else(|| panic!("configs/tiny.toml has no [{table}]"))
            .insert(key.into(), value);
    };
    set("run", "name", name.into());
    set("data", "dir", "ds".into());
    set("data", "tokenizer", "tok.json".into());
    set("train", "max_steps", STEPS.into());
    set("checkpoint", "interval", STEPS.into());
    set("log", "interval", 1.into());
    set("log", "tensorboard", false.into());
    set("eval", "interval", 0.into());
    set("eval", "max_rows", 8.into());
    for (table, key, value) in extra {
        set(table, key, value.clone());
    }
    let file = format!("{name}.toml");
    std::fs::write(dir.join(&file), toml::to_string(&cfg).unwrap()).unwrap();
    file
}

/// {"losses": [...], "sha256": "..."} of a finished run.
fn record(dir: &Path, name: &str) -> serde_json::Value {
    let losses: Vec<f64> = losses(dir, name).into_iter().map(|(_, l)| l).collect();
    assert_eq!(losses.len(), STEPS as usize, "{name}: one loss per step");
    let weights = dir.join(format!(
        "runs/{name}/checkpoints/step-{STEPS:08}/model.safetensors"
    ));
    let bytes = std::fs::read(&weights).unwrap_or_else(|e| panic!("{}: {e}", weights.display()));
    serde_json::json!({
        "losses": losses,
        "sha256": format!("{:x}", Sha256::digest(&bytes)),
    })
}

#[test]
fn huginn_training_matches_the_recorded_losses_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare_gsm8k(d);
    let mut got = serde_json::Map::new();

    let cfg = tiny_config(d, "one-rank", &[]);
    muninn_ok(&["train", &cfg], d);
    got.insert("one-rank".into(), record(d, "one-rank"));

    let cfg = tiny_config(
        d,
        "checkpointed-accum2",
        &[
            ("recurrence", "activation_checkpointing", true.into()),
            ("train", "grad_accum", 2.into()),
        ],
    );
    muninn_ok(&["train", &cfg], d);
    got.insert(
        "checkpointed-accum2".into(),
        record(d, "checkpointed-accum2"),
    );

    if mpirun_available() {
        let cfg = tiny_config(d, "two-ranks", &[]);
        let out = mpirun(2, &["train", &cfg], d)
            .output()
            .expect("running mpirun");
        assert!(
            out.status.success(),
            "mpirun -np 2 muninn train failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        got.insert("two-ranks".into(), record(d, "two-ranks"));
    }

    let golden = repo_root().join("tests/golden/huginn-train.json");
    let got = serde_json::Value::Object(got);
    if std::env::var_os("MUNINN_UPDATE_GOLDEN").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "MUNINN_UPDATE_GOLDEN is refused under CI: CI compares against the committed goldens"
        );
        let mut doc = got.as_object().unwrap().clone();
        doc.insert(
            "cpu".into(),
            "the machine that ran MUNINN_UPDATE_GOLDEN=1".into(),
        );
        std::fs::write(&golden, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        return;
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "{} missing: run with MUNINN_UPDATE_GOLDEN=1",
                golden.display()
            )
        }))
        .unwrap();
    for (run, record) in got.as_object().unwrap() {
        let same = |w: &serde_json::Value| {
            w["losses"] == record["losses"] && w["sha256"] == record["sha256"]
        };
        let elsewhere = want["other_cpus"][run]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            same(&want[run]) || elsewhere.iter().any(same),
            "{run}: the losses or the weights moved from {} (MUNINN_UPDATE_GOLDEN=1 rewrites it)\n got: {record}\nwant: {} (or one of {} from other CPUs)",
            golden.display(),
            want[run],
            elsewhere.len()
        );
    }
}
