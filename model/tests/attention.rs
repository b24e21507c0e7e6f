//! Masks and positions: libtorch's SDPA under every mask kind against attention written out (an
//! explicit softmax over a dense masked score matrix); padding after a sequence, or before it with
//! per-row positions, leaves its logits alone; repeated position ids rotate as the formula says.

use muninn_model::block::{attention, Attend, Mask, Positions, Rope};
use muninn_model::{Depth, Huginn, HuginnConfig, InitState, Input, Precision};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// softmax(q kᵀ / √hd, −∞ where not allowed) v; `allowed` [B or 1, T, L].
fn written_out(q: &Tensor, k: &Tensor, v: &Tensor, allowed: &Tensor) -> Tensor {
    let hd = q.size()[3] as f64;
    let scores = q.matmul(&k.transpose(-2, -1)) / hd.sqrt(); // [B, H, T, L]
    let scores = scores.masked_fill(&allowed.unsqueeze(1).logical_not(), f64::NEG_INFINITY);
    scores.softmax(-1, Kind::Float).matmul(v)
}

fn attend(mask: Mask, key_padding: Option<Tensor>) -> Attend {
    Attend {
        positions: Positions::From(0),
        mask,
        key_padding,
    }
}

#[test]
fn every_mask_kind_matches_attention_written_out() {
    tch::set_num_threads(1);
    tch::manual_seed(11);
    let (b, h, t, hd) = (2, 3, 5, 8);
    for past in [0, 3] {
        let l = past + t;
        let q = Tensor::randn([b, h, t, hd], CPU);
        let k = Tensor::randn([b, h, l, hd], CPU);
        let v = Tensor::randn([b, h, l, hd], CPU);
        let ones = Tensor::ones([t, l], (Kind::Bool, Device::Cpu));
        let causal = ones.tril(past);
        // Every query keeps its own key, so no row is blind.
        let own = Tensor::eye_m(t, l, (Kind::Bool, Device::Cpu)).roll([past], [1]);
        let random = Tensor::rand([b, t, l], CPU).gt(0.5).logical_or(&own);
        let padding = Tensor::ones([b, l], (Kind::Bool, Device::Cpu));
        let _ = padding.get(1).narrow(0, l - 2, 2).fill_(0); // row 1's last two keys are padding
        let cases = [
            ("causal", attend(Mask::Causal, None), causal.unsqueeze(0)),
            ("full", attend(Mask::Full, None), ones.unsqueeze(0)),
            (
                "dense [T, L]",
                attend(Mask::Dense(random.get(0)), None),
                random.get(0).unsqueeze(0),
            ),
            (
                "dense [B, T, L]",
                attend(Mask::Dense(random.shallow_clone()), None),
                random.shallow_clone(),
            ),
            (
                "causal + key padding",
                attend(Mask::Causal, Some(padding.shallow_clone())),
                causal.unsqueeze(0).logical_and(&padding.unsqueeze(1)),
            ),
            (
                "full + key padding",
                attend(Mask::Full, Some(padding.shallow_clone())),
                padding.unsqueeze(1).expand([b, t, l], false),
            ),
        ];
        for (name, a, allowed) in cases {
            let got = attention(&q, &k, &v, &a).unwrap();
            let want = written_out(&q, &k, &v, &allowed);
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "{name}, past {past}: differs by {diff:e}");
        }
    }
}

#[test]
fn a_query_that_may_see_nothing_sees_everything_instead_of_nan() {
    tch::manual_seed(12);
    let (q, k, v) = (
        Tensor::randn([1, 2, 3, 4], CPU),
        Tensor::randn([1, 2, 3, 4], CPU),
        Tensor::randn([1, 2, 3, 4], CPU),
    );
    let mask = Tensor::ones([3, 3], (Kind::Bool, Device::Cpu)).tril(0);
    let _ = mask.get(0).fill_(0);
    let got = attention(&q, &k, &v, &attend(Mask::Dense(mask.copy()), None)).unwrap();
    assert_eq!(
        got.isnan().any().int64_value(&[]),
        0,
        "a blind row became NaN"
    );
    let _ = mask.get(0).fill_(1);
    let want = written_out(&q, &k, &v, &mask.unsqueeze(0));
    assert!(max_diff(&got, &want) < 1e-5);
}

#[test]
fn bad_masks_are_refused_by_shape() {
    let (q, k) = (
        Tensor::zeros([1, 1, 3, 4], CPU),
        Tensor::zeros([1, 1, 3, 4], CPU),
    );
    let wrong = attend(
        Mask::Dense(Tensor::ones([3, 4], (Kind::Bool, Device::Cpu))),
        None,
    );
    let err = attention(&q, &k, &k, &wrong).unwrap_err().to_string();
    assert!(err.contains("expected Bool [3, 3]"), "{err}");
    let float = attend(Mask::Dense(Tensor::ones([3, 3], CPU)), None);
    assert!(attention(&q, &k, &k, &float).is_err());
    let pad = attend(
        Mask::Causal,
        Some(Tensor::ones([1, 2], (Kind::Bool, Device::Cpu))),
    );
    let err = attention(&q, &k, &k, &pad).unwrap_err().to_string();
    assert!(err.contains("key padding mask"), "{err}");
}

#[test]
fn repeated_position_ids_rotate_as_the_formula_says() {
    let (hd, theta) = (8, 10_000.0f64);
    let rope = Rope::new(hd, 16, theta, Device::Cpu);
    tch::manual_seed(13);
    let x = Tensor::randn([2, 4, 3, hd], CPU);
    let rows = [[0i64, 2, 2, 5], [7, 7, 0, 1]];
    let ids = Tensor::from_slice2(&rows);
    for (name, positions) in [
        ("[T]", Positions::Ids(Tensor::from_slice(&rows[0]))),
        ("[B, T]", Positions::Ids(ids.shallow_clone())),
    ] {
        let got = rope.apply_at(&x, &positions).unwrap();
        for (bi, row) in rows.iter().enumerate() {
            let row = if name == "[T]" { &rows[0] } else { row };
            for (t, &pos) in row.iter().enumerate() {
                for i in 0..hd / 2 {
                    let angle = pos as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                    let (c, s) = (angle.cos(), angle.sin());
                    for head in 0..3 {
                        let at = |j: i64| x.double_value(&[bi as i64, t as i64, head, j]);
                        let (a, b) = (at(2 * i), at(2 * i + 1));
                        let g = |j: i64| got.double_value(&[bi as i64, t as i64, head, j]);
                        assert!((g(2 * i) - (a * c - b * s)).abs() < 1e-5, "{name}");
                        assert!((g(2 * i + 1) - (b * c + a * s)).abs() < 1e-5, "{name}");
                    }
                }
            }
        }
    }
    let err = rope
        .apply_at(&x, &Positions::Ids(Tensor::from_slice(&[0i64, 1, 2, 16])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("beyond the rotary cache"), "{err}");
}

fn micro() -> Huginn {
    let m = Huginn::new(
        HuginnConfig::preset("micro").unwrap(),
        Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    m.init(3);
    m
}

#[test]
fn padding_after_or_before_a_sequence_leaves_its_logits_alone() {
    tch::set_num_threads(1);
    let m = micro();
    let depth = Depth::eval(3);
    let clean: Vec<i64> = vec![5, 17, 3, 99, 42, 7, 8, 1];
    let alone = tch::no_grad(|| {
        m.forward(
            &Tensor::from_slice(&clean).view([1, 8]),
            depth,
            &InitState::Zero,
        )
    })
    .unwrap();

    // After: three padding tokens appended, causal; the clean tokens' logits do not move.
    let mut after = clean.clone();
    after.extend([0, 0, 0]);
    let out = tch::no_grad(|| {
        m.forward(
            &Tensor::from_slice(&after).view([1, 11]),
            depth,
            &InitState::Zero,
        )
    })
    .unwrap();
    let diff = max_diff(&out.logits.narrow(1, 0, 8), &alone.logits);
    assert!(diff < 1e-5, "appended padding moved the logits by {diff:e}");

    // Before, in a batch: row 0 is left-padded by three with positions starting at its first real
    // token; row 1 is another sequence. Row 0's real tokens must match the sequence alone.
    let mut before = vec![0i64, 0, 0];
    before.extend(&clean);
    let other: Vec<i64> = (10..21).collect();
    let ids = Tensor::from_slice(&[before, other].concat()).view([2, 11]);
    let mut pos = vec![0i64, 0, 0];
    pos.extend(0..8);
    pos.extend(0..11);
    let real: Vec<bool> = [vec![false; 3], vec![true; 8], vec![true; 11]].concat();
    let a = Attend {
        positions: Positions::Ids(Tensor::from_slice(&pos).view([2, 11])),
        mask: Mask::Causal,
        key_padding: Some(Tensor::from_slice(&real).view([2, 11])),
    };
    let out =
        tch::no_grad(|| m.forward_with(Input::Ids(&ids), &a, depth, &InitState::Zero)).unwrap();
    let diff = max_diff(&out.logits.get(0).narrow(0, 3, 8), &alone.logits.get(0));
    assert!(diff < 1e-4, "left padding moved the logits by {diff:e}");
    assert_eq!(out.logits.isnan().any().int64_value(&[]), 0);
    // And without the padding mask the padded row does differ (the mask is doing the work).
    let unmasked = Attend {
        key_padding: None,
        ..a
    };
    let out = tch::no_grad(|| m.forward_with(Input::Ids(&ids), &unmasked, depth, &InitState::Zero))
        .unwrap();
    assert!(max_diff(&out.logits.get(0).narrow(0, 3, 8), &alone.logits.get(0)) > 1e-3);
}

#[test]
fn embeddings_in_place_of_ids_give_the_same_forward_and_the_head_input() {
    let m = micro();
    let ids = Tensor::from_slice(&[4i64, 8, 15, 16, 23, 42]).view([1, 6]);
    let by_ids = tch::no_grad(|| m.forward(&ids, Depth::eval(2), &InitState::Zero)).unwrap();
    let wte = m
        .params()
        .named_detached()
        .into_iter()
        .find(|(n, _)| n == muninn_model::params::WTE)
        .expect("the embedding")
        .1;
    let embeds = wte.index_select(0, &ids.view([-1])).view([1, 6, -1]);
    let by_embeds = tch::no_grad(|| {
        m.forward_with(
            Input::Embeds(&embeds),
            &Attend::causal(),
            Depth::eval(2),
            &InitState::Zero,
        )
    })
    .unwrap();
    assert!(max_diff(&by_ids.logits, &by_embeds.logits) < 1e-6);
    // `hidden` is exactly what the tied head reads.
    let logits = by_embeds.hidden.matmul(&wte.tr());
    assert!(max_diff(&logits, &by_embeds.logits) < 1e-4);
}
