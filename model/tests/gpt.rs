//! The GPT family's model: the fused loss-backward against autograd, masks and positions, mixed
//! precision.

use muninn_model::block::{Attend, Mask, Positions};
use muninn_model::{cross_entropy, Gpt, GptConfig, Input, Precision, IGNORE};
use tch::{Device, Kind, Tensor};

fn shape(extra: &str) -> GptConfig {
    GptConfig::from_table(toml::from_str(&format!("preset = \"gpt-micro\"\n{extra}")).unwrap())
        .unwrap()
}

fn model(extra: &str, precision: Precision) -> Gpt {
    tch::set_num_threads(1);
    let m = Gpt::new(shape(extra), Device::Cpu, precision).unwrap();
    m.init(5);
    m
}

fn ids(b: i64, t: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [b, t], (Kind::Int64, Device::Cpu))
}

#[test]
fn fused_loss_backward_equals_autograd_tied_and_untied() {
    for extra in [
        "",
        "tie_embeddings = false\n",
        "attention_bias = true\n",
        "norm = \"post\"\nqk_norm = true\n",
    ] {
        let m = model(extra, Precision::F32);
        let (x, y) = (ids(2, 16, 1), ids(2, 16, 2));
        let _ = y.narrow(1, 0, 3).fill_(IGNORE);
        let valid = y.ne(IGNORE).sum(Kind::Int64).int64_value(&[]) as f64;
        let loss = m.loss_backward_scaled(&x, &y, 1.0 / valid).unwrap();
        let fused = m.params().flat().grad().copy();
        let _ = m.params().flat().grad().zero_();
        let reference = cross_entropy(&m.forward(&x).unwrap().logits, &y).unwrap();
        reference.backward();
        let autograd = m.params().flat().grad();
        assert!(
            (loss.double_value(&[]) - reference.double_value(&[])).abs() < 1e-5,
            "{extra}: loss"
        );
        let diff = (&fused - &autograd).abs().max().double_value(&[]);
        let scale = autograd.abs().max().double_value(&[]);
        assert!(
            scale > 0.0 && diff < 1e-5 * scale.max(1.0),
            "{extra}: gradients differ by {diff}"
        );
        // Every parameter got a gradient.
        for (name, g) in m.params().named_grads() {
            assert!(
                g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{extra}: {name} has no gradient"
            );
        }
    }
}

#[test]
fn appended_padding_leaves_the_clean_logits_unchanged() {
    let m = model("", Precision::F32);
    let clean = ids(1, 10, 3);
    let junk = ids(1, 6, 4);
    let alone = tch::no_grad(|| m.forward(&clean).unwrap().logits);
    let both = Tensor::cat(&[&clean, &junk], 1);
    let padding = Tensor::cat(
        &[
            Tensor::ones([1, 10], (Kind::Bool, Device::Cpu)),
            Tensor::zeros([1, 6], (Kind::Bool, Device::Cpu)),
        ],
        1,
    );
    let attend = Attend {
        positions: Positions::From(0),
        mask: Mask::Causal,
        key_padding: Some(padding),
    };
    let out = tch::no_grad(|| m.forward_with(Input::Ids(&both), &attend).unwrap());
    let diff = (out.logits.narrow(1, 0, 10) - alone)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "clean logits moved by {diff}");
    // A full (bidirectional) mask lets the later tokens change the earlier ones.
    let full = Attend {
        positions: Positions::From(0),
        mask: Mask::Full,
        key_padding: None,
    };
    let out = tch::no_grad(|| m.forward_with(Input::Ids(&both), &full).unwrap());
    let moved = (out.logits.narrow(1, 0, 10) - m.forward(&clean).unwrap().logits)
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-3, "a full mask must see the later tokens");
}

#[test]
fn rotate_half_rope_at_repeated_positions_follows_the_formula() {
    let cfg = shape("");
    let rope = cfg.rope(Device::Cpu);
    let hd = cfg.head_dim();
    tch::manual_seed(0);
    let x = Tensor::randn([1, 4, 2, hd], (Kind::Float, Device::Cpu));
    let pos = [0i64, 3, 3, 7];
    let got = rope
        .apply(&x, &Positions::Ids(Tensor::from_slice(&pos)))
        .unwrap();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..2 {
            for j in 0..hd / 2 {
                let f = p as f64 / cfg.rope_theta.powf(2.0 * j as f64 / hd as f64);
                let (a, b) = (
                    x.double_value(&[0, t as i64, h, j]),
                    x.double_value(&[0, t as i64, h, j + hd / 2]),
                );
                let want = [a * f.cos() - b * f.sin(), b * f.cos() + a * f.sin()];
                let have = [
                    got.double_value(&[0, t as i64, h, j]),
                    got.double_value(&[0, t as i64, h, j + hd / 2]),
                ];
                for (w, g) in want.iter().zip(have) {
                    assert!((w - g).abs() < 1e-4, "t {t} h {h} j {j}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn bf16_mixed_loss_is_within_a_percent_of_f32() {
    let (a, b) = (model("", Precision::F32), model("", Precision::Bf16Mixed));
    let (x, y) = (ids(2, 32, 6), ids(2, 32, 7));
    let la = cross_entropy(&tch::no_grad(|| a.forward(&x).unwrap().logits), &y).unwrap();
    let lb = cross_entropy(&tch::no_grad(|| b.forward(&x).unwrap().logits), &y).unwrap();
    let (la, lb) = (la.double_value(&[]), lb.double_value(&[]));
    assert!((la - lb).abs() / la < 0.01, "{la} vs {lb}");
}
