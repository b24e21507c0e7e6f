//! Huginn with the `gpt` family's Llama layer (`block = "pre-norm"` / `"post-norm"`): what a
//! retrofitted model is built from.

use muninn_model::decode::{Budget, Decoder};
use muninn_model::{Depth, Gpt, GptConfig, Huginn, HuginnConfig, InitState, Precision};
use tch::{Device, Kind, Tensor};

fn setup() {
    tch::set_num_threads(1);
}

/// A small Llama-style Huginn: GQA (4 query, 2 key/value heads), untied head, no embedding scale;
/// post-norm adds OLMo-2's q/k norm.
fn shape(block: &str) -> HuginnConfig {
    let qk_norm = block == "post-norm";
    HuginnConfig::from_toml_str(&format!(
        "[model]\npreset = \"micro\"\nblock = \"{block}\"\nn_heads = 4\nn_kv_heads = 2\n\
         tie_embeddings = false\nscale_embeddings = false\nqk_norm = {qk_norm}\n\
         n_layers_in_prelude = 1\nn_layers_in_recurrent_block = 2\nn_layers_in_coda = 1\n"
    ))
    .unwrap()
}

fn model(cfg: HuginnConfig, seed: u64) -> Huginn {
    let m = Huginn::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(seed);
    m
}

fn ids(b: i64, t: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [b, t], (Kind::Int64, Device::Cpu))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn at_one_iteration_with_an_identity_adapter_it_is_its_gpt_stack() {
    setup();
    for block in ["pre-norm", "post-norm"] {
        let cfg = shape(block);
        let m = model(cfg.clone(), 3);
        // Adapter [0 | I]: s ignored, e passed on, so r = 1 from any state runs
        // prelude → core → coda once: a 4-layer GPT.
        let d = cfg.n_embd;
        let eye = Tensor::eye(d, (Kind::Float, Device::Cpu));
        let adapter = Tensor::cat(&[eye.zeros_like(), eye], 1);
        m.params().set("adapter.weight", &adapter).unwrap();
        let gpt_cfg = GptConfig::from_table(
            toml::from_str(&format!(
                "preset = \"gpt-micro\"\nn_layers = 4\nn_heads = 4\nn_kv_heads = 2\n\
                 tie_embeddings = false\nnorm = \"{}\"\nqk_norm = {}\nrope_theta = {:?}\n\
                 norm_eps = {:?}\nblock_size = {}\n",
                if block == "pre-norm" { "pre" } else { "post" },
                block == "post-norm",
                cfg.rope_base,
                cfg.norm_eps,
                cfg.block_size,
            ))
            .unwrap(),
        )
        .unwrap();
        let gpt = Gpt::new(gpt_cfg, Device::Cpu, Precision::F32).unwrap();
        let layer_of = |name: &str| -> String {
            let (stack, rest) = name.split_once('.').unwrap();
            let (j, rest) = rest.split_once('.').unwrap();
            let j: i64 = j.parse().unwrap();
            let l = match stack {
                "prelude" => j,
                "core" => 1 + j,
                "coda" => 3 + j,
                other => panic!("{other}"),
            };
            format!("model.layers.{l}.{rest}")
        };
        for (name, t) in m.params().named_detached() {
            let target = match name.as_str() {
                "wte.weight" => "model.embed_tokens.weight".to_string(),
                "lm_head.weight" => "lm_head.weight".to_string(),
                "ln_f.weight" => "model.norm.weight".to_string(),
                "adapter.weight" => continue,
                other => layer_of(other),
            };
            gpt.params().set(&target, &t).unwrap();
        }
        let x = ids(2, 12, 1);
        let (a, b) = tch::no_grad(|| {
            (
                m.forward(&x, Depth::eval(1), &InitState::Random)
                    .unwrap()
                    .logits,
                gpt.forward(&x).unwrap().logits,
            )
        });
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-4, "{block}: logits differ by {diff}");
        assert!(
            a.abs().max().double_value(&[]) > 1e-2,
            "{block}: trivial logits"
        );
    }
}

#[test]
fn checkpointed_gradients_equal_plain_ones_and_reach_the_untied_head() {
    setup();
    let mut m = model(shape("pre-norm"), 5);
    let x = ids(2, 10, 2);
    let targets = ids(2, 10, 3);
    let depth = Depth::new(1, 2);
    let mut grads = Vec::new();
    for checkpointed in [false, true] {
        m.params_mut().zero_grad();
        let loss = m
            .loss_backward(
                &x,
                &targets,
                depth,
                &InitState::Zero,
                checkpointed,
                &mut |_| {},
            )
            .unwrap();
        assert!(loss.double_value(&[]).is_finite());
        grads.push(m.params().flat().grad().copy());
    }
    let diff = max_abs_diff(&grads[0], &grads[1]);
    assert!(diff < 1e-5, "checkpointed gradients differ by {diff}");
    for (name, g) in m.params().named_grads() {
        let n = g.abs().sum(Kind::Float).double_value(&[]);
        assert!(n > 0.0, "`{name}` has no gradient");
    }
}

#[test]
fn cached_decoding_gives_the_logits_of_a_full_forward() {
    setup();
    let m = model(shape("post-norm"), 7);
    let seq: Vec<i64> = (0..10).map(|i| (i * 37 + 5) % 256).collect();
    let row = |s: &[i64]| Tensor::from_slice(s).view([1, -1]);
    for depth in [1, 3] {
        let full = tch::no_grad(|| m.forward(&row(&seq), Depth::eval(depth), &InitState::Zero))
            .unwrap()
            .logits;
        let mut dec = Decoder::new(&m);
        let mut got = Vec::new();
        for (a, b) in [(0, 4), (4, 7), (7, 8), (8, 9), (9, 10)] {
            let c = dec
                .step(&row(&seq[a..b]), &InitState::Zero, &Budget::fixed(depth))
                .unwrap();
            got.push(c.logits);
        }
        let diff = max_abs_diff(&Tensor::cat(&got, 1), &full);
        assert!(diff < 1e-4, "depth {depth}: cached logits differ by {diff}");
    }
}

#[test]
fn sandwich_only_keys_are_refused_on_llama_blocks_and_the_reverse() {
    let err =
        HuginnConfig::from_toml_str("[model]\npreset = \"micro\"\nn_kv_heads = 1\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("model.n_kv_heads belongs to Llama-style blocks"),
        "{err:#}"
    );
    let err = HuginnConfig::from_toml_str(
        "[model]\npreset = \"micro\"\nblock = \"pre-norm\"\nqk_bias = true\n",
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("model.qk_bias is the sandwich block's"),
        "{err:#}"
    );
    // A preset's own qk_bias gives way to the chosen block.
    let cfg =
        HuginnConfig::from_toml_str("[model]\npreset = \"micro\"\nblock = \"pre-norm\"\n").unwrap();
    assert!(!cfg.qk_bias);
}
