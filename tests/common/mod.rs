//! Helpers shared by the end-to-end tests: run the real `muninn` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn muninn(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args(args)
        .current_dir(cwd)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("running the muninn binary")
}

/// Runs muninn and returns stdout, failing the test with stderr if it exits non-zero.
pub fn muninn_ok(args: &[&str], cwd: &Path) -> String {
    let out = muninn(args, cwd);
    assert!(
        out.status.success(),
        "muninn {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs muninn expecting failure; returns stderr.
pub fn muninn_err(args: &[&str], cwd: &Path) -> String {
    let out = muninn(args, cwd);
    assert!(
        !out.status.success(),
        "muninn {args:?} should have failed, printed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "errors exit with code 1");
    String::from_utf8(out.stderr).expect("utf-8 output")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python that imports `modules`: `MUNINN_REFERENCE_PYTHON`, else `.venv/bin/python` (scripts/setup.sh
/// installs torch, transformers and tensorboard there). Without one the calling test reports itself
/// skipped, except under CI (`CI` set), where it fails.
pub fn reference_python(modules: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("MUNINN_REFERENCE_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([repo_root().join(".venv/bin/python")]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", &format!("import {modules}")])
            .output();
        if matches!(ok.map(|o| o.status.success()), Ok(true)) {
            return Some(py);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs a Python with {modules}: run scripts/setup.sh"
    );
    eprintln!("SKIPPED: no Python with {modules} (run scripts/setup.sh)");
    None
}

/// Tokenizer (512 ids, `tok.json`) and 32-token shards (`ds/`) from the GSM8K fixture in `dir`; returns
/// what the two commands printed.
pub fn prepare_gsm8k(dir: &Path) -> (String, String) {
    let g = repo_root().join("tests/fixtures/gsm8k/test.jsonl");
    let g = g.to_str().unwrap();
    let tokenizer = muninn_ok(
        &[
            "data",
            "tokenizer",
            "--input",
            g,
            "--text-field",
            "question",
            "--vocab-size",
            "512",
            "--out",
            "tok.json",
        ],
        dir,
    );
    let prepare = muninn_ok(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--input",
            g,
            "--text-field",
            "question",
            "--block-size",
            "32",
            "--out",
            "ds",
        ],
        dir,
    );
    (tokenizer, prepare)
}

/// Every record of `runs/<run>/metrics.jsonl` under `dir`.
pub fn metrics(dir: &Path, run: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs").join(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss) of every logged step of a run.
pub fn losses(dir: &Path, run: &str) -> Vec<(u64, f64)> {
    metrics(dir, run)
        .iter()
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// A micro-shape run config over that data; `extra` is appended (later keys may not repeat tables).
pub fn micro_config(dir: &Path, name: &str, max_steps: u64, extra: &str) -> String {
    let text = format!(
        r#"
[run]
name = "{name}"
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
[optimizer]
kind = "ellis-adam"
lr = 1e-3
schedule = "constant"
warmup_steps = 2
[train]
seed = 7
max_steps = {max_steps}
micro_batch_size = 4
threads = 1
[checkpoint]
interval = 0
[log]
interval = 1
[eval]
interval = 0
depths = [1, 4]
max_rows = 8
{extra}"#
    );
    let file = format!("{name}.toml");
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

/// Decodes a PNG completely (header, checksums, pixel data); returns (width, height, distinct
/// colours), so a test can tell a real chart from a blank image.
pub fn decode_png(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(file)
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    (info.width, info.height, colours.len())
}
