//! `muninn retrofit`: a pretrained Llama-style model (a tiny random one made by `transformers`, or a
//! Muninn `gpt` checkpoint) becomes a Huginn checkpoint. With every layer kept and the `identity-e`
//! adapter, one iteration from a zero state is the source model: same fp32 logits within 1e-4. The
//! result trains (with the curriculum and Muon), resumes, decodes with adaptive exit and evaluates.
//!
//! Needs `.venv/bin/python` with torch and transformers (scripts/setup.sh), or
//! `MUNINN_REFERENCE_PYTHON`; without one the transformers test fails, unless `MUNINN_SKIP=python`.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use muninn_model::st::StFile;

const TOKENS: &str = "3,250,17,99,0,255,128,64,1,200,5,77";

fn logits(file: &Path) -> tch::Tensor {
    StFile::open(file).unwrap().get("logits").unwrap()
}

/// `muninn forward` of `ck` with `extra` flags, its logits.
fn forward(ck: &str, extra: &[&str], cwd: &Path) -> tch::Tensor {
    let out = format!("{ck}-{}.safetensors", extra.join("").replace('-', ""));
    let mut args = vec![
        "forward", ck, "--tokens", TOKENS, "--device", "cpu", "--out", &out,
    ];
    args.extend_from_slice(extra);
    muninn_ok(&args, cwd);
    logits(&cwd.join(&out))
}

fn assert_close(a: &tch::Tensor, b: &tch::Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: logits shape");
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    assert!(scale > 0.1, "{what}: degenerate logits");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{what}: logits differ by {diff} (max |logit| {scale})"
    );
}

const AT_DEPTH_ONE: [&str; 4] = ["--depth", "1", "--init-state", "zero"];

#[test]
fn every_layer_kept_with_identity_e_is_the_transformers_model_at_depth_one() {
    let Some(py) = reference_python("torch, transformers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Llama (untied, Llama-3 RoPE scaling, GQA), Qwen2 (tied, q/k/v biases), OLMo-2 (norms after
    // attention and MLP, q/k norms): each of the 2 layers a stack of one, the coda empty.
    for kind in ["llama", "qwen2", "olmo2"] {
        let hf = format!("{kind}-hf");
        llama_reference(&py, &["make", kind, &hf], p);
        std::fs::write(p.join(&hf).join("tokenizer.json"), "{}").unwrap();
        let rf = format!("{kind}-rf");
        let out = muninn_ok(
            &[
                "retrofit",
                &hf,
                "--prelude",
                "0..1",
                "--core",
                "1..2",
                "--coda",
                "2..2",
                "--adapter-init",
                "identity-e",
                "--mean-recurrence",
                "4",
                "--out",
                &rf,
            ],
            p,
        );
        assert!(out.contains("0 layers dropped"), "{out}");
        assert!(
            p.join(&rf).join("tokenizer.json").is_file(),
            "the tokenizer travels"
        );
        let theirs = format!("{kind}-ref.safetensors");
        llama_reference(
            &py,
            &["logits", &hf, "--tokens", TOKENS, "--out", &theirs],
            p,
        );
        let b = logits(&p.join(&theirs));
        assert_close(&forward(&rf, &AT_DEPTH_ONE, p), &b, kind);
        // identity-e ignores s, so every iteration maps e alike: depth changes nothing until
        // training moves the adapter.
        let deeper = forward(&rf, &["--depth", "3", "--init-state", "zero"], p);
        assert_close(&deeper, &b, &format!("{kind} at depth 3"));
        if kind != "llama" {
            // Raven's modeling file has no q/k/v biases and no post-norm q/k-norm block.
            let e = muninn_err(
                &["export", &rf, "--format", "huginn-hf", "--out", "rf-hf"],
                p,
            );
            let named = if kind == "qwen2" { "Qwen2" } else { "OLMo-2" };
            assert!(
                e.contains("Raven layout") && e.contains(named),
                "{kind}: {e}"
            );
            assert!(
                !p.join("rf-hf").exists(),
                "{kind}: a refused export writes nothing"
            );
        }
    }
}

/// The Raven checkpoint of a retrofitted Llama (pre-norm blocks, untied head, Llama-3 RoPE
/// scaling, GQA) loads in Huginn's own modeling file, as a user of huginn-0125 would load it,
/// and gives `muninn forward`'s logits at depth 1 and 4; imported back, it is the same model.
#[test]
fn a_retrofitted_llama_exports_to_the_raven_layout_and_runs_in_its_modeling_file() {
    let Some(py) = reference_python("torch, transformers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    llama_reference(&py, &["make", "llama", "hf"], p);
    muninn_ok(
        &[
            "retrofit",
            "hf",
            "--prelude",
            "0..1",
            "--core",
            "1..2",
            "--coda",
            "2..2",
            "--adapter-init",
            "random",
            "--mean-recurrence",
            "4",
            "--out",
            "rf",
        ],
        p,
    );
    muninn_ok(
        &["export", "rf", "--format", "huginn-hf", "--out", "rf-hf"],
        p,
    );
    let mut at_depth = Vec::new();
    for depth in ["1", "4"] {
        let ours = forward("rf", &["--depth", depth, "--init-state", "zero"], p);
        let out = format!("ref-{depth}.safetensors");
        let status = Command::new(&py)
            .arg(repo_root().join("tests/reference/huginn_hf_logits.py"))
            .args(["rf-hf", "--tokens", TOKENS, "--depth", depth, "--out", &out])
            .current_dir(p)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_MODULES_CACHE", p.join("hf_modules"))
            .status()
            .unwrap();
        assert!(status.success(), "the Raven reference script failed");
        assert_close(
            &ours,
            &logits(&p.join(&out)),
            &format!("Raven, depth {depth}"),
        );
        at_depth.push(ours);
    }
    // A random adapter reads s, so the depth must matter, or the comparison above proves little.
    let moved = (&at_depth[0] - &at_depth[1]).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "depth 1 and 4 give the same logits ({moved})");
    muninn_ok(&["import-hf", "rf-hf", "--out", "rf2"], p);
    let back = forward("rf2", &["--depth", "4", "--init-state", "zero"], p);
    assert_close(&back, &at_depth[1], "imported back");
}

#[test]
fn a_gpt_checkpoint_retrofits_and_the_result_trains_with_the_curriculum_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    muninn_ok(&["init", "gpt-micro", "--seed", "5", "--out", "gpt"], p);
    let gpt = forward("gpt", &[], p);
    muninn_ok(
        &[
            "retrofit",
            "gpt",
            "--prelude",
            "0..1",
            "--core",
            "1..2",
            "--coda",
            "2..2",
            "--adapter-init",
            "identity-e",
            "--out",
            "same",
        ],
        p,
    );
    assert_close(&forward("same", &AT_DEPTH_ONE, p), &gpt, "gpt-micro");

    // The paper's shape on a 4-layer model: layer 1 dropped, the adapter random and seeded.
    prepare_gsm8k(p);
    std::fs::write(
        p.join("tiny.toml"),
        "[model]\nfamily = \"gpt\"\npreset = \"gpt-tiny\"\nvocab_size = 512\nblock_size = 32\n",
    )
    .unwrap();
    muninn_ok(&["init", "tiny.toml", "--out", "tiny"], p);
    for out in ["rf", "rf-again"] {
        let said = muninn_ok(
            &[
                "retrofit",
                "tiny",
                "--prelude",
                "0..1",
                "--core",
                "2..3",
                "--coda",
                "3..4",
                "--seed",
                "7",
                "--out",
                out,
            ],
            p,
        );
        assert!(said.contains("1 layers dropped"), "{said}");
    }
    let adapter = |ck: &str| {
        StFile::open(&p.join(ck).join("model.safetensors"))
            .unwrap()
            .get("adapter.weight")
            .unwrap()
    };
    let w = adapter("rf");
    let d = w.size()[0];
    assert_eq!(w.size(), vec![d, 2 * d]);
    assert!(
        w.equal(&adapter("rf-again")),
        "the random adapter is seeded"
    );
    let bound = 1.0 / ((2 * d) as f64).sqrt();
    let max = w.abs().max().double_value(&[]);
    assert!(
        max > 0.9 * bound && max <= bound,
        "U(±1/√(2d)): max |w| {max}"
    );

    // Trains from the retrofitted weights with the 1-sqrt curriculum and Muon, its shape taken from
    // the checkpoint (no [model] table); a run stopped after 4 steps resumes to the same 8 steps.
    let config = |name: &str| {
        let cfg = format!("{name}.toml");
        std::fs::write(
            p.join(&cfg),
            format!(
                "[run]\nname = \"{name}\"\ndir = \"runs\"\n[data]\ndir = \"ds\"\ntokenizer = \"tok.json\"\n\
                 [recurrence]\nmean_recurrence = 8\nmean_backprop_depth = 2\ncurriculum = \"1-sqrt\"\n\
                 curriculum_warmup = 0.5\n[optimizer]\nkind = \"muon\"\nlr = 0.01\nschedule = \"constant\"\n\
                 warmup_steps = 1\n[train]\nseed = 3\nmax_steps = 8\nmicro_batch_size = 4\nthreads = 1\n\
                 init_from = \"rf\"\n[checkpoint]\ninterval = 4\n[log]\ninterval = 1\n\
                 [eval]\ninterval = 0\ndepths = [1, 8]\nmax_rows = 8\n"
            ),
        )
        .unwrap();
        cfg
    };
    muninn_ok(&["train", &config("whole")], p);
    let split = config("split");
    muninn_ok(&["train", &split, "--set", "train.exit_interval=4"], p);
    muninn_ok(&["train", &split, "--resume", "auto"], p);
    let col = |run: &str, key: &str| -> Vec<f64> {
        metrics(p, run)
            .iter()
            .filter_map(|r| r.get(key)?.as_f64())
            .collect()
    };
    for key in ["loss", "n", "k"] {
        let whole = col("whole", key);
        assert_eq!(whole.len(), 8, "{key}: {whole:?}");
        assert_eq!(whole, col("split", key), "{key}: the resumed run differs");
    }
    // r̄ = ⌈8 · (1 − √(1 − (s − 1)/4))⌉ at step s (W = ⌈0.5 · 8⌉ = 4): 1, 2, 3, 8, 8, …; k ≤ min(2, r̄).
    for (s, k) in (1u32..).zip(col("whole", "k")) {
        let f = 1.0 - (1.0 - (f64::from(s - 1) / 4.0).min(1.0)).sqrt();
        let mean = (8.0 * f).ceil().clamp(1.0, 8.0);
        assert!(
            k <= mean.min(2.0),
            "step {s}: k = {k} above min(2, r̄ = {mean})"
        );
    }
    assert_eq!(col("whole", "k")[0], 1.0, "step 1 runs at r̄ = 1");
    // The retrofitted run decodes with adaptive exit like any Huginn checkpoint.
    let last = "runs/whole/checkpoints/step-00000008";
    let out = muninn_ok(
        &[
            "generate",
            last,
            "--prompt",
            "How many",
            "--exit",
            "kl:0.001",
            "--depth",
            "8",
            "--max-tokens",
            "4",
            "--json",
        ],
        p,
    );
    assert!(out.contains("\"tokens\""), "{out}");
}

#[test]
fn bad_ranges_and_other_sources_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    muninn_ok(&["init", "gpt-micro", "--out", "gpt"], p);
    for (prelude, core, coda, expect) in [
        (
            "0..1",
            "1..3",
            "3..3",
            "--core 1..3: the source has 2 layers (0..2)",
        ),
        (
            "0..2",
            "1..2",
            "2..2",
            "must be in order and must not overlap",
        ),
        ("0..1", "1..1", "1..2", "--core is empty"),
        (
            "1..0",
            "1..2",
            "2..2",
            "--prelude 1..0: START must be >= 0 and <= END",
        ),
        (
            "0-1",
            "1..2",
            "2..2",
            "--prelude 0-1: expected a half-open range",
        ),
    ] {
        let e = muninn_err(
            &[
                "retrofit",
                "gpt",
                "--prelude",
                prelude,
                "--core",
                core,
                "--coda",
                coda,
                "--out",
                "rf",
            ],
            p,
        );
        assert!(e.contains(expect), "{prelude} {core} {coda}: {e}");
        assert!(!p.join("rf").exists());
    }
    muninn_ok(&["init", "micro", "--out", "huginn"], p);
    let e = muninn_err(
        &[
            "retrofit",
            "huginn",
            "--prelude",
            "0..1",
            "--core",
            "1..2",
            "--coda",
            "2..2",
            "--out",
            "rf",
        ],
        p,
    );
    assert!(e.contains("holds a huginn model"), "{e}");
    std::fs::create_dir(p.join("hf")).unwrap();
    std::fs::write(p.join("hf/config.json"), r#"{"model_type": "mistral"}"#).unwrap();
    let e = muninn_err(
        &[
            "retrofit",
            "hf",
            "--prelude",
            "0..1",
            "--core",
            "1..2",
            "--coda",
            "2..2",
            "--out",
            "rf",
        ],
        p,
    );
    assert!(e.contains("`mistral` is not a Llama-style layout"), "{e}");
    let out = muninn(
        &[
            "retrofit",
            "gpt",
            "--prelude",
            "0..1",
            "--core",
            "1..2",
            "--coda",
            "2..2",
            "--adapter-init",
            "zeros",
            "--out",
            "rf",
        ],
        p,
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("expected random or identity-e"),
        "{e}"
    );
}
