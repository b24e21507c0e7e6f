//! The `muninn` binary end to end: model info, init, forward, export/import, and its errors.

mod common;
use common::*;

use muninn_model::st::StFile;

/// Runs muninn to the end; returns its stdout and the peak resident memory of that one process
/// (wait4's rusage: other tests' children do not count).
// The child is reaped by wait4 below, not by Child::wait (which would discard its rusage).
#[allow(clippy::zombie_processes)]
fn muninn_peak_rss(args: &[&str], cwd: &std::path::Path) -> (String, u64) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args(args)
        .current_dir(cwd)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the pid is our own unreaped child; wait4 fills `status` and `usage`.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(rc, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "muninn {args:?} failed: {status}"
    );
    // SAFETY: filled by the successful wait4 above. ru_maxrss is in KiB on Linux.
    let kib = unsafe { usage.assume_init() }.ru_maxrss as u64;
    (stdout, kib * 1024)
}

#[test]
fn model_info_answers_the_3_5b_shape_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (out, peak) = muninn_peak_rss(&["model", "info", "nebel-raven-3.5b"], dir.path());
    // Its weights alone are 14 GB in fp32 (7 GB in bf16); loading libtorch is a few hundred MB.
    let gib = peak as f64 / (1u64 << 30) as f64;
    eprintln!("model info nebel-raven-3.5b: peak RSS {gib:.3} GiB");
    assert!(gib < 1.5, "peak RSS {gib:.2} GiB: the shape was allocated");
    assert!(out.contains("3,564,976,800"), "{out}");
    assert!(out.contains("1,581,592,320"), "{out}");
    assert!(out.contains("52,594,338,720"), "{out}");
    assert!(out.contains("2.1535e11"), "{out}");
}

#[test]
fn model_info_reads_a_toml_shape() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[model]\npreset = \"tiny\"\nn_layers_in_coda = 2\n",
    )
    .unwrap();
    let out = muninn_ok(
        &["model", "info", "m.toml", "--n", "3", "--k", "1"],
        dir.path(),
    );
    // tiny with one more coda block: 1,150,080 + 262,912.
    assert!(out.contains("1,412,992"), "{out}");
    assert!(out.contains("(n, k) = (3, 1)"), "{out}");
}

#[test]
fn init_then_forward_writes_logits_and_state() {
    let dir = tempfile::tempdir().unwrap();
    muninn_ok(&["init", "micro", "--seed", "1", "--out", "ck"], dir.path());
    let out = muninn_ok(
        &[
            "forward",
            "ck",
            "--tokens",
            "1,2,3,4",
            "--depth",
            "3",
            "--device",
            "cpu",
            "--out",
            "f.safetensors",
        ],
        dir.path(),
    );
    assert!(out.contains("depth 3"), "{out}");
    let f = StFile::open(&dir.path().join("f.safetensors")).unwrap();
    let shapes: std::collections::BTreeMap<_, _> = f.shapes().into_iter().collect();
    assert_eq!(shapes["logits"], [1, 4, 256]);
    assert_eq!(shapes["state"], [1, 4, 64]);
    let logits = f.get("logits").unwrap();
    assert_eq!(logits.kind(), tch::Kind::Float);
    assert!(logits.isfinite().all().int64_value(&[]) == 1);
    // Deeper recurrence changes the prediction.
    muninn_ok(
        &[
            "forward",
            "ck",
            "--tokens",
            "1,2,3,4",
            "--depth",
            "6",
            "--device",
            "cpu",
            "--out",
            "g.safetensors",
        ],
        dir.path(),
    );
    let deeper = StFile::open(&dir.path().join("g.safetensors"))
        .unwrap()
        .get("logits")
        .unwrap();
    assert!((&deeper - &logits).abs().max().double_value(&[]) > 1e-6);
}

#[test]
fn export_then_import_reproduces_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    muninn_ok(&["init", "micro", "--seed", "2", "--out", "ck"], dir.path());
    muninn_ok(
        &["export", "ck", "--format", "huginn-hf", "--out", "hf"],
        dir.path(),
    );
    muninn_ok(&["import-hf", "hf", "--out", "back"], dir.path());
    let a = std::fs::read(dir.path().join("ck/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("back/model.safetensors")).unwrap();
    assert_eq!(a, b, "import(export(ck)) is not byte-identical");
    // A swap or transpose done the same way both ways survives the round trip; the export itself
    // must hold each tensor under the reference's key and shape (micro: d 64, I 256, V 256).
    let ours = StFile::open(&dir.path().join("ck/model.safetensors")).unwrap();
    let hf = StFile::open(&dir.path().join("hf/model.safetensors")).unwrap();
    for (muninn_key, hf_key, shape) in [
        ("wte.weight", "transformer.wte.weight", [256, 64]),
        ("wte.weight", "lm_head.weight", [256, 64]),
        ("adapter.weight", "transformer.adapter.weight", [64, 128]),
        (
            "prelude.0.mlp.fc.weight",
            "transformer.prelude.0.mlp.fc.weight",
            [512, 64],
        ),
        (
            "core.0.attn.proj.weight",
            "transformer.core_block.0.attn.proj.weight",
            [64, 64],
        ),
        (
            "core.1.attn.Wqkv.weight",
            "transformer.core_block.1.attn.Wqkv.weight",
            [192, 64],
        ),
        (
            "coda.0.mlp.proj.weight",
            "transformer.coda.0.mlp.proj.weight",
            [64, 256],
        ),
    ] {
        let (x, y) = (ours.get(muninn_key).unwrap(), hf.get(hf_key).unwrap());
        assert_eq!(y.size(), shape, "{hf_key}");
        assert!(x.equal(&y), "{hf_key} does not hold {muninn_key}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let e = muninn_err(&["model", "info", "no-such-shape"], p);
    assert!(e.contains("no-such-shape") && e.contains("tiny"), "{e}");
    let e = muninn_err(
        &[
            "forward",
            "missing-ckpt",
            "--tokens",
            "1",
            "--out",
            "x.safetensors",
        ],
        p,
    );
    assert!(e.contains("missing-ckpt"), "{e}");
    muninn_ok(&["init", "micro", "--out", "ck"], p);
    let e = muninn_err(&["init", "micro", "--out", "ck"], p);
    assert!(e.contains("already exists"), "{e}");
    let e = muninn_err(
        &[
            "forward",
            "ck",
            "--tokens",
            "1,999",
            "--out",
            "x.safetensors",
        ],
        p,
    );
    assert!(e.contains("999") && e.contains("vocabulary"), "{e}");
    std::fs::write(
        p.join("bad.toml"),
        "[model]\npreset = \"tiny\"\nmean_backprop_depth = 9\n",
    )
    .unwrap();
    let e = muninn_err(&["init", "bad.toml", "--out", "ck2"], p);
    assert!(
        e.contains("bad.toml") && e.contains("mean_backprop_depth = 9"),
        "{e}"
    );
    assert!(
        !p.join("ck2").exists(),
        "a failed init must leave nothing behind"
    );
    let e = muninn_err(&["import-hf", "ck", "--out", "ck3"], p);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn data_commands_prepare_and_verify_real_text_and_refuse_a_foreign_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (out, prepared) = prepare_gsm8k(p);
    assert!(out.contains("512 ids") && out.contains("bos 480"), "{out}");
    assert!(prepared.contains("1319 documents"), "{prepared}");
    let gsm8k = repo_root().join("tests/fixtures/gsm8k/test.jsonl");
    let g = gsm8k.to_str().unwrap();
    let out = muninn_ok(&["data", "verify", "ds", "--tokenizer", "tok.json"], p);
    assert!(
        out.contains("train:") && out.contains("val:") && out.contains("rows/s"),
        "{out}"
    );
    // A forward pass on text through the trained tokenizer.
    muninn_ok(&["init", "micro", "--out", "ck"], p); // micro: V = 256 < 512
    let e = muninn_err(
        &[
            "forward",
            "ck",
            "--tokenizer",
            "tok.json",
            "--text",
            "How many eggs?",
            "--out",
            "f.safetensors",
        ],
        p,
    );
    assert!(e.contains("outside the model's vocabulary"), "{e}");
    std::fs::write(
        p.join("m.toml"),
        "[model]\npreset = \"micro\"\nvocab_size = 512\n",
    )
    .unwrap();
    muninn_ok(&["init", "m.toml", "--out", "ck512"], p);
    muninn_ok(
        &[
            "forward",
            "ck512",
            "--tokenizer",
            "tok.json",
            "--text",
            "How many eggs?",
            "--depth",
            "2",
            "--device",
            "cpu",
            "--out",
            "f.safetensors",
        ],
        p,
    );
    // Shards made with one tokenizer are refused under another.
    muninn_ok(
        &[
            "data",
            "tokenizer",
            "--input",
            g,
            "--text-field",
            "answer",
            "--vocab-size",
            "512",
            "--out",
            "other.json",
        ],
        p,
    );
    let e = muninn_err(&["data", "verify", "ds", "--tokenizer", "other.json"], p);
    assert!(e.contains("another tokenizer"), "{e}");
    let e = muninn_err(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--input",
            "missing.txt",
            "--block-size",
            "32",
            "--out",
            "ds2",
        ],
        p,
    );
    assert!(e.contains("missing.txt"), "{e}");
    let e = muninn_err(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "tok.json",
            "--input",
            g,
            "--block-size",
            "32",
            "--out",
            "ds3",
        ],
        p,
    );
    assert!(e.contains("no `text` field"), "{e}");
}
