//! Checkpoints on disk: Muninn's own layout and Huginn's HF layout.

use muninn_model::hf::{self, ExportDtype};
use muninn_model::{checkpoint, st, Huginn, HuginnConfig, Precision};
use tch::{Device, Kind, Tensor};

fn tiny(seed: u64) -> Huginn {
    tch::set_num_threads(1);
    let m = Huginn::new(
        HuginnConfig::preset("micro").unwrap(),
        Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    m.init(seed);
    m
}

fn flat(m: &Huginn) -> Tensor {
    m.params().flat().detach()
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(1);
    checkpoint::save_new(&m, &dir.path().join("ckpt")).unwrap();
    let back = checkpoint::load(&dir.path().join("ckpt"), Device::Cpu, Precision::F32).unwrap();
    assert!(flat(&back).equal(&flat(&m)));
    assert_eq!(back.config(), m.config());
}

#[test]
fn an_existing_checkpoint_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    checkpoint::save_new(&tiny(1), &out).unwrap();
    let before = std::fs::read(out.join(checkpoint::MODEL_FILE)).unwrap();
    let err = checkpoint::save_new(&tiny(2), &out).unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert_eq!(
        std::fs::read(out.join(checkpoint::MODEL_FILE)).unwrap(),
        before
    );
}

#[test]
fn hf_export_import_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(3);
    let out = dir.path().join("hf");
    hf::export(&m, &out, ExportDtype::F32).unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "raven_config_minimal.py",
        "raven_modeling_minimal.py",
    ] {
        assert!(out.join(f).exists(), "{f} missing from the export");
    }
    let back = hf::import(&out).unwrap();
    assert!(flat(&back).equal(&flat(&m)), "import(export(m)) != m");
    // The round trip alone passes a key swap or transpose made the same way both ways: the file
    // must hold each weight under the reference's own key, untransposed.
    let file = st::StFile::open(&out.join("model.safetensors")).unwrap();
    let named: std::collections::BTreeMap<String, Tensor> =
        m.params().named_detached().into_iter().collect();
    for (ours, theirs) in [
        (
            "core.0.attn.proj.weight",
            "transformer.core_block.0.attn.proj.weight",
        ),
        (
            "core.1.attn.proj.weight",
            "transformer.core_block.1.attn.proj.weight",
        ),
        (
            "core.1.mlp.fc.weight",
            "transformer.core_block.1.mlp.fc.weight",
        ),
        (
            "prelude.0.attn.Wqkv.weight",
            "transformer.prelude.0.attn.Wqkv.weight",
        ),
        ("wte.weight", "lm_head.weight"),
    ] {
        assert!(
            file.get(theirs).unwrap().equal(&named[ours]),
            "`{theirs}` does not hold Muninn's `{ours}`"
        );
    }
    assert_eq!(back.config().n_embd, m.config().n_embd);
    assert_eq!(back.config().mean_recurrence, m.config().mean_recurrence);
}

#[test]
fn hf_export_has_the_reference_keys_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(3);
    hf::export(&m, &dir.path().join("hf"), ExportDtype::Bf16).unwrap();
    let f = st::StFile::open(&dir.path().join("hf/model.safetensors")).unwrap();
    let shapes: std::collections::BTreeMap<String, Vec<i64>> = f.shapes().into_iter().collect();
    let (d, v) = (64, 256);
    assert_eq!(shapes["transformer.wte.weight"], [v, d]);
    assert_eq!(shapes["lm_head.weight"], [v, d]);
    assert_eq!(shapes["transformer.adapter.weight"], [d, 2 * d]);
    assert_eq!(
        shapes["transformer.core_block.1.attn.Wqkv.weight"],
        [3 * d, d]
    );
    assert_eq!(
        shapes["transformer.core_block.1.attn.qk_bias"],
        [2, 1, 2, 32]
    );
    assert_eq!(shapes["transformer.prelude.0.mlp.fc.weight"], [2 * 256, d]);
    assert_eq!(shapes["transformer.coda.0.mlp.proj.weight"], [d, 256]);
    assert_eq!(shapes["transformer.coda.0.norm_4.weight"], [d]);
    assert_eq!(shapes["transformer.ln_f.weight"], [d]);
    assert_eq!(shapes["freqs_cis"], [1, 64, 1, 16, 2]);
    // micro has 4 blocks: 4 × 9 block tensors + wte + adapter + ln_f + lm_head + freqs_cis.
    assert_eq!(shapes.len(), 4 * 9 + 5);
    assert_eq!(
        f.get("transformer.wte.weight").unwrap().kind(),
        Kind::BFloat16
    );
    assert_eq!(f.get("freqs_cis").unwrap().kind(), Kind::Float);
    assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("hf/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "huginn_raven");
    assert_eq!(
        cfg["auto_map"]["AutoModelForCausalLM"],
        "raven_modeling_minimal.RavenForCausalLM"
    );
    assert_eq!(cfg["n_layers"], 4);
}

/// Rewrites the export's safetensors with `edit` applied to its tensor list.
fn tamper(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let f = st::StFile::open(&path).unwrap();
    let mut tensors: Vec<(String, Tensor)> = f
        .shapes()
        .into_iter()
        .map(|(n, _)| (n.clone(), f.get(&n).unwrap()))
        .collect();
    drop(f);
    edit(&mut tensors);
    st::write(
        &path,
        &tensors,
        Some([("format".to_string(), "pt".to_string())].into()),
    )
    .unwrap();
}

#[test]
fn import_refuses_a_missing_key_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    hf::export(&tiny(4), &out, ExportDtype::F32).unwrap();
    tamper(&out, |t| {
        t.retain(|(n, _)| n != "transformer.core_block.0.attn.proj.weight")
    });
    let err = hf::import(&out).err().expect("import must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("missing tensor `transformer.core_block.0.attn.proj.weight`"),
        "{msg}"
    );
}

#[test]
fn import_refuses_a_wrong_shape_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    hf::export(&tiny(4), &out, ExportDtype::F32).unwrap();
    tamper(&out, |t| {
        let e = t
            .iter_mut()
            .find(|(n, _)| n == "transformer.adapter.weight")
            .unwrap();
        e.1 = Tensor::zeros([64, 64], (Kind::Float, Device::Cpu));
    });
    let msg = format!("{:#}", hf::import(&out).err().expect("import must fail"));
    assert!(
        msg.contains("`transformer.adapter.weight` has shape [64, 64]"),
        "{msg}"
    );
    assert!(msg.contains("[64, 128]"), "{msg}");
}

#[test]
fn import_refuses_an_unexpected_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    hf::export(&tiny(4), &out, ExportDtype::F32).unwrap();
    tamper(&out, |t| {
        t.push((
            "transformer.core_block.9.attn.proj.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let msg = format!("{:#}", hf::import(&out).err().expect("import must fail"));
    assert!(
        msg.contains("unexpected tensor `transformer.core_block.9.attn.proj.weight`"),
        "{msg}"
    );
}

#[test]
fn checkpoint_with_a_wrong_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    checkpoint::save_new(&tiny(5), &out).unwrap();
    // Claim a different width in config.toml: every tensor now has the wrong shape.
    let cfg = std::fs::read_to_string(out.join("config.toml"))
        .unwrap()
        .replace("n_embd = 64", "n_embd = 96");
    std::fs::write(out.join("config.toml"), cfg).unwrap();
    let msg = format!(
        "{:#}",
        checkpoint::load(&out, Device::Cpu, Precision::F32)
            .err()
            .expect("must fail")
    );
    assert!(msg.contains("wte.weight` has shape [256, 64]"), "{msg}");
}

#[test]
fn import_refuses_an_untied_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    hf::export(&tiny(4), &out, ExportDtype::F32).unwrap();
    tamper(&out, |t| {
        let e = t.iter_mut().find(|(n, _)| n == "lm_head.weight").unwrap();
        e.1 = &e.1 + 1.0;
    });
    let msg = format!("{:#}", hf::import(&out).err().expect("import must fail"));
    assert!(msg.contains("lm_head.weight` differs"), "{msg}");
}
