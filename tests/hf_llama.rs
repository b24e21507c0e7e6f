//! The GPT family against `transformers`' own Llama, Qwen2 and OLMo-2 code, both directions: our
//! `--format llama-hf` export loaded there (no remote code), and tiny random models made and saved
//! by `transformers` imported here. Same weights and tokens give the same fp32 logits within 1e-4.
//!
//! Needs `.venv/bin/python` with torch and transformers (scripts/setup.sh), or
//! `MUNINN_REFERENCE_PYTHON`; without one the test fails, unless `MUNINN_SKIP=python` (outside CI).

mod common;
use common::*;

use std::path::Path;

use muninn_model::{checkpoint, Gpt, GptConfig, Precision};
use tch::{Device, Kind, Tensor};

const TOKENS: &str = "3,250,17,99,0,255,128,64,1,200,5,77";

/// `muninn forward` of `ck` against transformers' logits of `hf`.
fn assert_same_logits(py: &Path, ck: &str, hf: &str, cwd: &Path) -> String {
    let ours = format!("{ck}-ours.safetensors");
    let theirs = format!("{hf}-ref.safetensors");
    muninn_ok(
        &[
            "forward", ck, "--tokens", TOKENS, "--device", "cpu", "--out", &ours,
        ],
        cwd,
    );
    let class = llama_reference(
        py,
        &["logits", hf, "--tokens", TOKENS, "--out", &theirs],
        cwd,
    );
    let a = muninn_model::st::StFile::open(&cwd.join(&ours))
        .unwrap()
        .get("logits")
        .unwrap();
    let b = muninn_model::st::StFile::open(&cwd.join(&theirs))
        .unwrap()
        .get("logits")
        .unwrap();
    assert_eq!(a.size(), b.size(), "{hf}: logits shape");
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    assert!(scale > 0.1, "{hf}: degenerate logits");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{hf} ({class}): logits differ by {diff} (max |logit| {scale})"
    );
    class
}

#[test]
fn our_llama_export_gives_transformers_logits() {
    let Some(py) = reference_python("torch, transformers") else {
        return;
    };
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Untied head, GQA and Llama-3 RoPE scaling; every tensor moved away from its init.
    let cfg = GptConfig::from_table(
        toml::from_str(
            "preset = \"gpt-micro\"\ntie_embeddings = false\nrope_theta = 500000.0\n\
             rope_scaling = { factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_position_embeddings = 16 }\n",
        )
        .unwrap(),
    )
    .unwrap();
    let model = Gpt::new(cfg, Device::Cpu, Precision::F32).unwrap();
    model.init(3);
    for (i, (name, t)) in model.params().named_detached().into_iter().enumerate() {
        let n = t.numel() as i64;
        let wiggle = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + i as f64 * 0.01))
            .sin()
            .view(t.size().as_slice());
        let scale = if name.contains("norm") { 0.3 } else { 0.05 };
        model.params().set(&name, &(&t + wiggle * scale)).unwrap();
    }
    checkpoint::save_new(&model, &p.join("ck")).unwrap();
    muninn_ok(&["export", "ck", "--format", "llama-hf", "--out", "hf"], p);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert!(config.get("auto_map").is_none(), "no remote code");
    let class = assert_same_logits(&py, "ck", "hf", p);
    assert!(class.contains("LlamaForCausalLM"), "{class}");
}

#[test]
fn transformers_models_import_with_their_logits() {
    let Some(py) = reference_python("torch, transformers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (kind, class) in [
        ("llama", "LlamaForCausalLM"),
        ("qwen2", "Qwen2ForCausalLM"),
        ("olmo2", "Olmo2ForCausalLM"),
    ] {
        let hf = format!("{kind}-hf");
        llama_reference(&py, &["make", kind, &hf], p);
        let ck = format!("{kind}-ck");
        let out = muninn_ok(&["import-hf", &hf, "--out", &ck], p);
        assert!(out.contains("gpt"), "{out}");
        assert!(assert_same_logits(&py, &ck, &hf, p).contains(class));
        // And back out: the export of the import is the same model to transformers.
        let again = format!("{kind}-again");
        muninn_ok(&["export", &ck, "--format", "llama-hf", "--out", &again], p);
        assert_same_logits(&py, &ck, &again, p);
    }
}

#[test]
fn other_architectures_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("hf")).unwrap();
    std::fs::write(
        p.join("hf/config.json"),
        r#"{"model_type": "mistral", "hidden_size": 64}"#,
    )
    .unwrap();
    let err = muninn_err(&["import-hf", "hf", "--out", "ck"], p);
    assert!(err.contains("mistral") && err.contains("llama"), "{err}");
    assert!(!p.join("ck").exists());
    // A Llama config whose attention has an o_proj bias computes something else.
    std::fs::write(
        p.join("hf/config.json"),
        r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
            "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 64, "attention_bias": true}"#,
    )
    .unwrap();
    let err = muninn_err(&["import-hf", "hf", "--out", "ck"], p);
    assert!(err.contains("attention_bias"), "{err}");
}
