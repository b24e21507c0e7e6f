//! Helpers shared by the end-to-end tests: run the real `muninn` binary.

#![allow(dead_code)]

pub mod slurm;

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

/// Decides for a test whose real component `what` (`mpirun`, `python`) is missing: under CI (`CI`
/// set) the test fails; a developer may skip it only by saying so, `MUNINN_SKIP=mpirun,python` (or
/// `all`), and the test then prints `SKIPPED` and returns. Without either it fails, naming the fix, so
/// that a machine missing a component never passes the tests that need it in silence.
pub fn skip_without(what: &str, fix: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs {what} ({fix}); MUNINN_SKIP does not apply under CI"
    );
    let skip = std::env::var("MUNINN_SKIP").unwrap_or_default();
    let allowed = skip
        .split(',')
        .any(|s| s.trim() == what || s.trim() == "all");
    assert!(
        allowed,
        "this test needs {what}: {fix}, or set MUNINN_SKIP={what} to skip the tests that need it"
    );
    eprintln!("SKIPPED: no {what} (MUNINN_SKIP={skip})");
}

/// A Python that imports `modules`: `MUNINN_REFERENCE_PYTHON`, else `.venv/bin/python` (scripts/setup.sh
/// installs torch, transformers and tensorboard there). Without one the calling test fails, unless
/// `MUNINN_SKIP` names `python` outside CI (see [`skip_without`]), where it returns None.
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
    skip_without(
        "python",
        &format!("a Python with {modules} (run scripts/setup.sh, or point MUNINN_REFERENCE_PYTHON at one)"),
    );
    None
}

/// Runs `tests/reference/llama_hf_logits.py ARGS` (make a tiny transformers model, or write its
/// logits) offline under `py`, its stdout; a failure is the test's.
pub fn llama_reference(py: &Path, args: &[&str], cwd: &Path) -> String {
    let out = std::process::Command::new(py)
        .arg(repo_root().join("tests/reference/llama_hf_logits.py"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the reference script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Decodes a PNG completely (header, checksums, pixel data): (width, height, RGB of each pixel).
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(file)
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let px = info.color_type.samples();
    assert!(px >= 3, "{}: not an RGB image", path.display());
    let pixels = buf[..info.buffer_size()]
        .chunks(px)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

/// A PNG's (width, height), after decoding it completely; what it shows is checked by
/// [`assert_series_drawn`] and [`assert_heatmap_cells`].
pub fn decode_png(path: &Path) -> (u32, u32) {
    let (w, h, _) = decode(path);
    (w, h)
}

/// How many pixels of each RGB colour a PNG has.
pub fn colour_counts(path: &Path) -> std::collections::HashMap<[u8; 3], usize> {
    let mut counts = std::collections::HashMap::new();
    for p in decode(path).2 {
        *counts.entry(p).or_insert(0) += 1;
    }
    counts
}

/// Each of a line chart's first `series` series (drawn in `Palette99::pick(i)`, src/plot.rs) covers
/// more pixels than its legend swatch and markers alone could: axes, text and an empty frame
/// never reach it.
pub fn assert_series_drawn(path: &Path, series: usize) {
    use plotters::style::{Color, Palette, Palette99};
    let counts = colour_counts(path);
    for i in 0..series {
        let c = Palette99::pick(i).to_rgba();
        let n = counts.get(&[c.0, c.1, c.2]).copied().unwrap_or(0);
        assert!(
            n >= 300,
            "{}: series {i} ({c:?}) covers only {n} pixels",
            path.display()
        );
    }
}

/// Every cell of a heatmap of `values` (rows × columns, coloured by log10 on the viridis map from
/// the smallest to the largest value, src/plot.rs) is there: its colour covers at least a cell's
/// worth of pixels.
pub fn assert_heatmap_cells(path: &Path, values: &[Vec<f64>]) {
    use plotters::style::colors::colormaps::ViridisRGB;
    let logs: Vec<f64> = values
        .iter()
        .flatten()
        .map(|v| v.max(1e-12).log10())
        .collect();
    let lo = logs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(hi - lo > 1e-9, "a heatmap of one value says nothing");
    let counts = colour_counts(path);
    let cols = values[0].len();
    for (i, v) in logs.iter().enumerate() {
        let c = ViridisRGB::get_color((v - lo) / (hi - lo));
        let n = counts.get(&[c.0, c.1, c.2]).copied().unwrap_or(0);
        assert!(
            n >= 150,
            "{}: the cell of row {}, column {} ({c:?}) covers only {n} pixels",
            path.display(),
            i / cols,
            i % cols
        );
    }
}

/// Whether `mpirun` is here; without it the MPI tests fail (or skip under MUNINN_SKIP=mpirun).
pub fn mpirun_available() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_without("mpirun", "run scripts/setup.sh (it installs OpenMPI)");
    }
    found
}

/// `mpirun -np N --oversubscribe muninn ARGS` in `cwd`, one libtorch thread per rank.
pub fn mpirun(np: usize, args: &[&str], cwd: &Path) -> Command {
    mpirun_with(np, &[], args, cwd)
}

/// mpirun with extra options of its own (before the program).
pub fn mpirun_with(np: usize, options: &[&str], args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .args(options)
        .arg(env!("CARGO_BIN_EXE_muninn"))
        .args(args)
        .current_dir(cwd)
        .env("OMP_NUM_THREADS", "1")
        // Harmless when not root; OpenMPI refuses root without them.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}
