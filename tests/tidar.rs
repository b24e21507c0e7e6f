//! TiDAR end to end through the CLI: training a GPT and a Huginn with `[objective] kind = "tidar"`
//! (both losses logged, 2S throughput, validation), `muninn generate --tidar` equal to plain greedy
//! decoding at β = 1 and to the re-running reference, and the config errors.

mod common;
use common::*;

use std::path::Path;

/// `<|reserved_0|>` of the 512-id fixture tokenizer (the 32 specials take the top ids).
const MASK: i64 = 499;

fn tidar_config(dir: &Path, name: &str, family: &str, extra: &str) -> String {
    let model = match family {
        "gpt" => "family = \"gpt\"\npreset = \"gpt-micro\"",
        _ => "preset = \"micro\"",
    };
    let recurrence = match family {
        "gpt" => "",
        _ => "[recurrence]\nmean_recurrence = 2\nmean_backprop_depth = 1\n[eval]\ninterval = 0\ndepths = [2]\nmax_rows = 8\n",
    };
    let eval = match family {
        "gpt" => "[eval]\ninterval = 0\nmax_rows = 8\n",
        _ => "",
    };
    let text = format!(
        r#"
[run]
name = "{name}"
dir = "runs"
[model]
{model}
vocab_size = 512
block_size = 256
[objective]
kind = "tidar"
block = 8
mask_id = {MASK}
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
max_steps = 12
micro_batch_size = 4
threads = 1
[checkpoint]
interval = 0
[log]
interval = 4
{eval}{recurrence}{extra}"#
    );
    let file = format!("{name}.toml");
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

fn generate(p: &Path, ckpt: &str, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "generate",
        ckpt,
        "--prompt",
        prompt,
        "--max-tokens",
        "100",
        "--threads",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = muninn_ok(&args, p);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn tokens(v: &serde_json::Value) -> Vec<i64> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

const PROMPTS: [&str; 3] = ["Natalia sold clips", "How many", "A robe takes 2 bolts"];

#[test]
fn a_tidar_gpt_trains_and_decodes_as_greedy_ar_at_beta_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = tidar_config(p, "td", "gpt", "");
    let out = muninn_ok(&["train", &cfg], p);
    assert!(out.contains("step 12 (Finished)"), "{out}");
    let last = metrics(p, "td").pop().unwrap();
    for key in [
        "ar_loss",
        "diff_loss",
        "ar_ppl",
        "val_loss",
        "val_diff_loss",
    ] {
        assert!(
            last[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {last}"
        );
    }
    let (ar, ppl) = (
        last["ar_loss"].as_f64().unwrap(),
        last["ar_ppl"].as_f64().unwrap(),
    );
    assert!((ppl - ar.exp()).abs() < 1e-6 * ppl);
    // Throughput counts the 2S tokens computed, data progress the S consumed (12 steps · 4 · 32).
    let (tps, dps) = (
        last["tokens_per_s"].as_f64().unwrap(),
        last["data_tokens_per_s"].as_f64().unwrap(),
    );
    assert!((tps / dps - 2.0).abs() < 1e-9, "{last}");
    assert_eq!(last["tokens_seen"].as_u64(), Some(12 * 4 * 32));

    let ckpt = "runs/td/checkpoints/step-00000012";
    let mut accepted = 0.0;
    for prompt in PROMPTS {
        let plain = generate(p, ckpt, prompt, &[]);
        let fast = generate(p, ckpt, prompt, &["--tidar"]);
        assert_eq!(
            tokens(&fast),
            tokens(&plain),
            "β = 1 equals greedy AR for {prompt:?}"
        );
        assert_eq!(
            plain["forwards"].as_u64(),
            Some(tokens(&plain).len() as u64)
        );
        let f = fast["forwards"].as_f64().unwrap();
        let tpf = fast["tokens_per_forward"].as_f64().unwrap();
        assert!(
            (tpf - tokens(&fast).len() as f64 / f).abs() < 1e-9,
            "{fast}"
        );
        accepted += fast["mean_accepted"].as_f64().unwrap();
        for beta in ["0", "1"] {
            let args = ["--tidar", "--draft", "4", "--beta", beta];
            let cached = generate(p, ckpt, prompt, &args);
            let mut slow_args = args.to_vec();
            slow_args.push("--no-kv-cache");
            let slow = generate(p, ckpt, prompt, &slow_args);
            assert_eq!(tokens(&cached), tokens(&slow), "β = {beta}, {prompt:?}");
            assert_eq!(cached["accepted"], slow["accepted"]);
        }
    }
    assert!(accepted / 3.0 >= 1.0);

    // A mask id the data can hold, or none of the model's rows, is refused by name.
    let err = muninn_err(
        &[
            "train",
            &cfg,
            "--set",
            "objective.mask_id=5",
            "--set",
            "run.name=x",
        ],
        p,
    );
    assert!(
        err.contains("objective.mask_id = 5") && err.contains("reserved"),
        "{err}"
    );
    let err = muninn_err(
        &[
            "train",
            &cfg,
            "--set",
            "objective.mask_id=512",
            "--set",
            "run.name=x",
        ],
        p,
    );
    assert!(
        err.contains("objective.mask_id = 512") && err.contains("vocab_size"),
        "{err}"
    );
    let err = muninn_err(
        &[
            "train",
            &cfg,
            "--set",
            "objective.block=5",
            "--set",
            "run.name=x",
        ],
        p,
    );
    assert!(
        err.contains("objective.block = 5") && err.contains("32-token"),
        "{err}"
    );
    // A next-token checkpoint has no drafts to decode with.
    let ar = tidar_config(p, "ar", "gpt", "");
    let text = std::fs::read_to_string(p.join(&ar)).unwrap();
    let text = text.replace(
        &format!("[objective]\nkind = \"tidar\"\nblock = 8\nmask_id = {MASK}\n"),
        "",
    );
    std::fs::write(p.join(&ar), text).unwrap();
    muninn_ok(&["train", &ar, "--set", "train.max_steps=1"], p);
    let err = muninn_err(
        &[
            "generate",
            "runs/ar/checkpoints/step-00000001",
            "--prompt",
            "x",
            "--tidar",
        ],
        p,
    );
    assert!(err.contains("next-token"), "{err}");
}

#[test]
fn a_tidar_huginn_trains_and_decodes_as_greedy_ar_at_beta_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = tidar_config(p, "th", "huginn", "");
    muninn_ok(&["train", &cfg], p);
    let last = metrics(p, "th").pop().unwrap();
    for key in ["ar_loss", "diff_loss", "val_loss_r2", "val_diff_loss_r2"] {
        assert!(
            last[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {last}"
        );
    }
    let ckpt = "runs/th/checkpoints/step-00000012";
    let fixed = ["--depth", "2", "--init-state", "zero"];
    for prompt in PROMPTS {
        let plain = generate(p, ckpt, prompt, &fixed);
        let mut args = fixed.to_vec();
        args.push("--tidar");
        let fast = generate(p, ckpt, prompt, &args);
        assert_eq!(
            tokens(&fast),
            tokens(&plain),
            "β = 1 equals greedy AR for {prompt:?}"
        );
        args.push("--no-kv-cache");
        let slow = generate(p, ckpt, prompt, &args);
        assert_eq!(
            tokens(&slow),
            tokens(&fast),
            "cached equals re-run for {prompt:?}"
        );
    }
}
