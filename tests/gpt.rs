//! The GPT family end to end through the CLI: `model info`, `init`, training by the same loop as
//! Huginn, exact resume, `eval`, cached `generate` against the uncached reference, and the config and
//! checkpoint errors that keep the two families apart.

mod common;
use common::*;

use std::path::Path;

fn gpt_config(dir: &Path, name: &str, extra: &str) -> String {
    let text = format!(
        r#"
[run]
name = "{name}"
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
lr = 3e-3
schedule = "constant"
warmup_steps = 2
[train]
seed = 7
max_steps = 8
micro_batch_size = 4
threads = 1
[checkpoint]
interval = 4
[log]
interval = 1
[eval]
interval = 4
max_rows = 8
{extra}"#
    );
    let file = format!("{name}.toml");
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

#[test]
fn model_info_and_init_know_the_gpt_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let info = muninn_ok(&["model", "info", "gpt-tiny"], p);
    assert!(
        info.contains("(gpt)") && info.contains("kv heads=2"),
        "{info}"
    );
    // 512·128 embedding + 4 layers of (128 + 2·128·128 + 2·64·128 + 3·128·512 + 128) + 128.
    let per_layer = 128 + 2 * 128 * 128 + 2 * 64 * 128 + 3 * 128 * 512 + 128;
    let total = 512 * 128 + 4 * per_layer + 128;
    let grouped = total
        .to_string()
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(",");
    assert!(info.contains(&grouped), "expected {grouped} in {info}");
    let err = muninn_err(&["model", "info", "gpt-tiny", "--k", "2"], p);
    assert!(err.contains("gpt"), "{err}");
    let out = muninn_ok(&["init", "gpt-micro", "--out", "ck"], p);
    assert!(out.contains("gpt-micro"), "{out}");
    let cfg = std::fs::read_to_string(p.join("ck/config.toml")).unwrap();
    assert!(cfg.contains("family = \"gpt\""), "{cfg}");
    // A Huginn-only command says what it needs.
    let err = muninn_err(&["export", "ck", "--format", "huginn-hf", "--out", "hf"], p);
    assert!(err.contains("gpt") && err.contains("llama-hf"), "{err}");
}

#[test]
fn gpt_trains_resumes_exactly_evaluates_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = gpt_config(p, "full", "");
    let out = muninn_ok(&["train", &cfg], p);
    assert!(out.contains("step 8 (Finished)"), "{out}");
    let full = losses(p, "full");
    assert_eq!(full.len(), 8);
    assert!(
        full.last().unwrap().1 < full[0].1 - 0.1,
        "the loss must fall: {full:?}"
    );
    let last = metrics(p, "full").pop().unwrap();
    assert!(last["val_loss"].as_f64().unwrap().is_finite(), "{last}");
    assert!(last.get("n").is_none(), "no depth fields: {last}");

    // Stopped at 4 and resumed: the same losses and the same weights, byte for byte.
    let half = gpt_config(p, "half", "");
    muninn_ok(&["train", &half, "--set", "train.max_steps=4"], p);
    muninn_ok(&["train", &half, "--resume", "auto"], p);
    assert_eq!(losses(p, "half"), full);
    let weights = |run: &str| {
        std::fs::read(p.join(format!(
            "runs/{run}/checkpoints/step-00000008/model.safetensors"
        )))
        .unwrap()
    };
    assert!(weights("half") == weights("full"), "resumed weights differ");

    // eval: one loss, the one training logged at the same rows.
    let ck = "runs/full/checkpoints/step-00000008";
    let out = muninn_ok(&["eval", ck, "--device", "cpu"], p);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("runs/full/eval/step-00000008/eval.json")).unwrap(),
    )
    .unwrap();
    let (ours, logged) = (
        report["loss"].as_f64().unwrap(),
        last["val_loss"].as_f64().unwrap(),
    );
    assert!((ours - logged).abs() < 1e-5, "{ours} vs {logged}: {out}");
    let err = muninn_err(&["eval", ck, "--depths", "1,2"], p);
    assert!(err.contains("no recurrence"), "{err}");

    // generate behind the KV cache gives the uncached greedy tokens.
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            ck,
            "--prompt",
            "Janet has",
            "--max-tokens",
            "12",
            "--json",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&muninn_ok(&args, p)).unwrap();
        v["tokens"].clone()
    };
    let cached = gen(&[]);
    assert!(!cached.as_array().unwrap().is_empty());
    assert_eq!(cached, gen(&["--no-kv-cache"]));
    let err = muninn_err(&["generate", ck, "--prompt", "x", "--depth", "4"], p);
    assert!(err.contains("gpt"), "{err}");

    // compare sets the GPT run beside a Huginn one, without depth columns for it.
    let huginn = micro_config(p, "huginn", 4, "");
    muninn_ok(&["train", &huginn, "--set", "eval.interval=4"], p);
    let out = muninn_ok(
        &["compare", "runs/full", "runs/huginn", "--plot", "cmp.png"],
        p,
    );
    let gpt_row = out.lines().find(|l| l.starts_with("full")).unwrap();
    assert!(
        gpt_row.trim_end().ends_with(" gpt") && gpt_row.split_whitespace().nth(1) == Some("-"),
        "{out}"
    );
    assert!(out.contains(&format!("{logged:.4}")), "{out}");
    assert!(out.contains("host GiB") && out.contains("GPU GiB"), "{out}");
    assert_series_drawn(&p.join("cmp.png"), 3);
}

#[test]
fn family_errors_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = gpt_config(p, "bad", "[recurrence]\nmean_recurrence = 4\n");
    let err = muninn_err(&["train", &cfg], p);
    assert!(err.contains("[recurrence]") && err.contains("gpt"), "{err}");
    let cfg = gpt_config(p, "bad2", "");
    let err = muninn_err(&["train", &cfg, "--set", "model.n_layer=3"], p);
    assert!(err.contains("n_layer"), "{err}");
    let err = muninn_err(&["train", &cfg, "--set", "model.family=mamba"], p);
    assert!(err.contains("model.family"), "{err}");
    let err = muninn_err(&["train", &cfg, "--set", "model.n_kv_heads=3"], p);
    assert!(err.contains("n_kv_heads"), "{err}");

    // A Huginn run's checkpoint does not resume as a GPT.
    let huginn = micro_config(p, "mixed", 2, "[checkpoint]\ninterval = 2\n");
    let text = std::fs::read_to_string(p.join(&huginn))
        .unwrap()
        .replace("[checkpoint]\ninterval = 0\n", "");
    std::fs::write(p.join(&huginn), text).unwrap();
    muninn_ok(&["train", &huginn], p);
    let gpt = gpt_config(p, "mixed", "");
    let err = muninn_err(&["train", &gpt, "--resume", "auto"], p);
    assert!(err.contains("huginn") && err.contains("gpt"), "{err}");
}
