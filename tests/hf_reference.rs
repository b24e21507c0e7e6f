//! Muninn's forward against Huginn's own modeling file (`raven_modeling_minimal.py`, loaded through
//! `transformers` with trust_remote_code, as users load huginn-0125): same weights, tokens, depth and
//! initial state must give the same logits and the same final latent state.
//!
//! Needs a Python with torch and transformers: `.venv/bin/python` (installed by scripts/setup.sh) or
//! `MUNINN_REFERENCE_PYTHON`. Without one the test fails, unless `MUNINN_SKIP=python` (outside CI).

mod common;
use common::*;

use muninn_model::{checkpoint, Huginn, HuginnConfig, Precision};
use std::process::Command;
use tch::{Device, Kind, Tensor};

#[test]
fn exported_weights_give_the_reference_logits() {
    let Some(python) = reference_python("torch, transformers") else {
        return;
    };
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    // A shape with two blocks per stack, and every parameter (norm weights and qk_bias included) moved
    // away from its init, so a swapped or ignored tensor shows up in the logits.
    let cfg = HuginnConfig::from_toml_str(
        "[model]\npreset = \"micro\"\nn_layers_in_prelude = 2\nn_layers_in_coda = 2\n",
    )
    .unwrap();
    let model = Huginn::new(cfg, Device::Cpu, Precision::F32).unwrap();
    model.init(11);
    for (i, (name, t)) in model.params().named_detached().into_iter().enumerate() {
        let n = t.numel() as i64;
        let wiggle = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + i as f64 * 0.01))
            .sin()
            .view(t.size().as_slice());
        let moved = if name.contains("norm") || name.contains("ln_f") {
            &t + wiggle * 0.3
        } else {
            &t + wiggle * 0.05
        };
        model.params().set(&name, &moved).unwrap();
    }
    checkpoint::save_new(&model, &dir.path().join("ck")).unwrap();
    let cfg_eps = model.config().norm_eps;
    let (_, ln_f) = model
        .params()
        .named_detached()
        .into_iter()
        .find(|(n, _)| n == "ln_f.weight")
        .expect("an ln_f weight");
    let p = dir.path();
    muninn_ok(&["export", "ck", "--format", "huginn-hf", "--out", "hf"], p);
    let tokens = "3,250,17,99,0,255,128,64,1,200";
    for depth in ["1", "5"] {
        muninn_ok(
            &[
                "forward",
                "ck",
                "--tokens",
                tokens,
                "--depth",
                depth,
                "--init-state",
                "zero",
                "--device",
                "cpu",
                "--out",
                "ours.safetensors",
            ],
            p,
        );
        let status = Command::new(&python)
            .arg(repo_root().join("tests/reference/huginn_hf_logits.py"))
            .args([
                "hf",
                "--tokens",
                tokens,
                "--depth",
                depth,
                "--out",
                "ref.safetensors",
            ])
            .current_dir(p)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_MODULES_CACHE", p.join("hf_modules"))
            .status()
            .unwrap();
        assert!(status.success(), "the reference script failed");
        let ours = muninn_model::st::StFile::open(&p.join("ours.safetensors")).unwrap();
        let theirs = muninn_model::st::StFile::open(&p.join("ref.safetensors")).unwrap();
        let close = |what: &str, a: &Tensor, b: &Tensor| {
            assert_eq!(a.size(), b.size(), "depth {depth}: {what}");
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "depth {depth}: {what} differs by {diff} (max |value| {scale})"
            );
        };
        close(
            "logits",
            &ours.get("logits").unwrap(),
            &theirs.get("logits").unwrap(),
        );
        // The reference's latent_states is ln_f(s_R); ours is s_R itself, so apply the exported
        // ln_f here, written out as the reference's RMSNorm.
        let state = ours.get("state").unwrap();
        let normed =
            &state * (state.square().mean_dim(-1, true, Kind::Float) + cfg_eps).rsqrt() * &ln_f;
        close(
            "the final latent state",
            &normed,
            &theirs.get("latent_ln_f").unwrap(),
        );
    }
}
